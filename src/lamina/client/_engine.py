"""``RemoteEngine``: what the CLI takes from ``lamina.engine.Engine``, served by a
lamina daemon. The same method names and arguments, the same data back (the
engine's dataclasses, rebuilt from the daemon's JSON), the same errors (the
daemon's status as the exception class, its one-line message as the message), so
that the CLI does not know which of the two it has.

A method the daemon does not serve yet raises one line naming the command.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import struct
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, BinaryIO

from lamina.client._decode import decode
from lamina.client._transport import Answer, Transport, segment
from lamina.errors import (
    AlreadyExists,
    LaminaError,
    NotFound,
    RegistryError,
    StorageError,
)

if TYPE_CHECKING:
    from lamina.engine._options import RunOptions
    from lamina.runtime._term import DetachKeys
    from lamina.runtime._types import (
        ChangeEntry,
        Container,
        ExecResult,
        LogEntry,
        PathStat,
        Resources,
        RestartPolicy,
        Stats,
        WaitOutcome,
    )
    from lamina.runtime._volumes import Volume


class BadRequest(LaminaError, ValueError):
    """The daemon refused a parameter or body (400)."""


class NotServed(LaminaError):
    """What the daemon does not serve yet (run the command without --host)."""

    exit_code = 125


def error_of(
    status: int, message: str, *, bad_input: type[LaminaError] = BadRequest
) -> LaminaError:
    """The engine's exception for a daemon's status (see lamina.daemon._api.status_of)."""
    if status == 404:
        return NotFound(message)
    if status == 400:
        return bad_input(message)
    if status == 409 and ("already" in message or "in use" in message):
        return AlreadyExists(message)
    if status == 502:
        return RegistryError(message)
    if status == 507:
        return StorageError(message)
    return LaminaError(message)


def _checked(answer: Answer, *, bad_input: type[LaminaError] = BadRequest) -> Answer:
    if answer.status < 400:
        return answer
    data = answer.read()
    try:
        message = str(json.loads(data)["message"])
    except (ValueError, KeyError, TypeError):
        message = data.decode("utf-8", "replace").strip() or f"HTTP {answer.status}"
    raise error_of(answer.status, message, bad_input=bad_input)


def _frames(chunks: Iterator[bytes]) -> Iterator[tuple[int, bytes]]:
    """Docker's multiplexed stream as (stream, payload) pairs, as they arrive."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        while len(buf) >= 8:
            kind, size = struct.unpack(">BxxxI", buf[:8])
            if len(buf) < 8 + size:
                break
            yield kind, buf[8 : 8 + size]
            buf = buf[8 + size :]


# How the daemon says, in a stream, that the command could not run (attach, exec).
_ERROR_LINE = b"lamina: error: "


def _start_failure(message: str) -> LaminaError:
    """A container that could not start, as attach reports it: Docker's CLI reads the
    exit code from the message (127 not found, 126 not executable), as we do."""
    from lamina.runtime.common import error_exit_code

    error = LaminaError(message.strip())
    error.exit_code = error_exit_code(message)
    return error


class RemoteEngine:
    """The engine of the root a daemon serves, over its API (``/v1``)."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    # -- plumbing

    def _call(self, method: str, path: str, query: Mapping[str, Any] | None = None, *,
              bad_input: type[LaminaError] = BadRequest, **kw: Any) -> Answer:  # fmt: skip
        return _checked(self._t.request(method, "/v1" + path, query, **kw), bad_input=bad_input)

    def _json(self, method: str, path: str, query: Mapping[str, Any] | None = None,
              **kw: Any) -> Any:  # fmt: skip
        return self._call(method, path, query, **kw).json()

    def _done(self, method: str, path: str, query: Mapping[str, Any] | None = None,
              **kw: Any) -> None:  # fmt: skip
        self._call(method, path, query, **kw).read()

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise NotServed(f"{name.replace('_', ' ')} is not served by the lamina daemon yet: "
                        "run it without --host")  # fmt: skip

    # -- containers

    def create_from_options(
        self,
        opts: RunOptions,
        *,
        image: str,
        command: Sequence[str] | None,
        pull: str = "missing",
        platform: str | None = None,
        progress: Any = None,
    ) -> tuple[Container, list[str]]:
        """``run``/``create``: the flags to the daemon, which decides as the CLI does
        in-process (``prepare_run``). What only this side can read (``--env-file``,
        ``--label-file``, ``-e KEY`` from our environment) is resolved here first."""
        from lamina.engine._options import parse_env, parse_env_file, parse_labels

        environ = os.environ
        fields = asdict(opts)
        env = [e for f in opts.env_files for e in parse_env_file(f, environ)]
        fields["env"] = env + parse_env(opts.env, environ)
        if opts.label_files:
            labels = parse_labels(opts.labels, opts.label_files)
            fields["labels"] = [f"{k}={v}" for k, v in labels.items()]
        del fields["env_files"], fields["label_files"]
        body = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
        here = self._pulls_here(image, pull, platform, progress)
        if here and pull == "always":
            self.pull_image(image, progress=progress())
        body.update(image=image, command=list(command) if command else None,
                    pull="never" if here else pull, platform=platform)  # fmt: skip
        try:  # a present image costs no request more than the create
            created = self._json("POST", "/containers", json_body=body)
        except NotFound as e:
            if not here or pull != "missing" or not str(e).startswith(f"no such image: {image} "):
                raise
            print(f"Unable to find image '{image}' locally", file=sys.stderr)
            self.pull_image(image, progress=progress())
            body["pull"] = "missing"
            created = self._json("POST", "/containers", json_body=body)
        from lamina.runtime._types import Container

        return decode(Container, created["Container"]), list(created.get("Warnings") or [])

    def get(self, ref: str) -> Container:
        from lamina.runtime._types import Container

        return decode(Container, self._json("GET", f"/containers/{segment(ref)}/record"))

    def list(self, *, all: bool = False,
             filters: Mapping[str, Sequence[str]] | None = None) -> list[Container]:  # fmt: skip
        from lamina.runtime._types import Container

        query = {"all": all, "filters": json.dumps(dict(filters)) if filters else None}
        found = self._json("GET", "/containers", query, bad_input=_invalid_filter())
        return [decode(Container, c) for c in found]

    def inspect(self, ref: str) -> dict[str, object]:
        return dict(self._json("GET", f"/containers/{segment(ref)}"))

    def start(self, ref: str) -> None:
        self._done("POST", f"/containers/{segment(ref)}/start")

    def stop(self, ref: str, *, timeout: int | None = None, signal: str | None = None) -> None:
        self._done("POST", f"/containers/{segment(ref)}/stop", {"t": timeout, "signal": signal})

    def restart(self, ref: str, *, timeout: int | None = None, signal: str | None = None) -> None:
        query = {"t": timeout, "signal": signal}
        self._done("POST", f"/containers/{segment(ref)}/restart", query)

    def kill(self, ref: str, signal: str = "SIGKILL") -> None:
        self._done("POST", f"/containers/{segment(ref)}/kill", {"signal": signal})

    def pause(self, ref: str) -> None:
        self._done("POST", f"/containers/{segment(ref)}/pause")

    def unpause(self, ref: str) -> None:
        self._done("POST", f"/containers/{segment(ref)}/unpause")

    def remove(self, ref: str, *, force: bool = False, volumes: bool = False) -> None:
        self._done("DELETE", f"/containers/{segment(ref)}", {"force": force, "volumes": volumes})

    def rename(self, ref: str, new_name: str) -> None:
        self._done("POST", f"/containers/{segment(ref)}/rename", {"name": new_name})

    def wait(self, ref: str, condition: Any = "not-running",
             timeout: float | None = None) -> WaitOutcome:  # fmt: skip
        from lamina.runtime._types import ExitReason, WaitOutcome

        data = self._json("POST", f"/containers/{segment(ref)}/wait",
                          {"condition": str(condition)})  # fmt: skip
        return WaitOutcome(exit_code=data["StatusCode"], reason=ExitReason(data["Reason"]),
                           signal=data.get("Signal"), error=data.get("Error") or "")  # fmt: skip

    def logs(
        self,
        ref: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> Iterator[LogEntry]:
        from lamina.runtime._types import LogEntry

        query = {"follow": follow, "tail": tail, "since": since, "until": until,
                 "timestamps": True}  # fmt: skip
        answer = self._call("GET", f"/containers/{segment(ref)}/logs", query)
        for kind, payload in _frames(answer.chunks()):
            stamp, _, data = payload.partition(b" ")
            yield LogEntry(timestamp=_parse_rfc3339(stamp.decode()),
                           stream="stderr" if kind == 2 else "stdout", data=data)  # fmt: skip

    def top(self, ref: str) -> tuple[list[str], list[list[str]]]:
        data = self._json("GET", f"/containers/{segment(ref)}/top")
        return data["Titles"], data["Processes"]

    def stats(self, ref: str) -> Stats:
        from lamina.runtime._types import Stats

        return decode(Stats, self._json("GET", f"/containers/{segment(ref)}/stats",
                                        {"stream": False}))  # fmt: skip

    def stats_stream(self, ref: str) -> Iterator[Stats]:
        """The daemon's stream of ``ref``'s samples (one a second, one connection),
        until the container is gone or the iteration is abandoned (which closes it)."""
        from lamina.runtime._types import Stats

        for line in self._call("GET", f"/containers/{segment(ref)}/stats",
                               {"stream": True}).lines():  # fmt: skip
            yield decode(Stats, json.loads(line))

    def diff(self, ref: str) -> list[ChangeEntry]:
        from lamina.runtime._types import ChangeEntry

        found = self._json("GET", f"/containers/{segment(ref)}/changes")
        return [decode(ChangeEntry, c) for c in found]

    def update(self, ref: str, resources: Resources | None = None, *,
               restart: RestartPolicy | None = None) -> None:  # fmt: skip
        """The limits as ``update``'s flags (the daemon parses them as the CLI does)."""
        body: dict[str, Any] = {}
        if resources is not None:
            for name, value in asdict(resources).items():
                if value is not None:
                    body[name] = value if isinstance(value, int) and not isinstance(
                        value, bool) and name in ("cpu_shares", "pids_limit") else str(value)
        if restart is not None:
            body["restart"] = restart.name + (
                f":{restart.max_retries}" if restart.max_retries else "")
        self._done("POST", f"/containers/{segment(ref)}/update", json_body=body)

    def commit(self, ref: str, reference: str | None = None, *,
               changes: Sequence[str] | None = None, message: str | None = None,
               author: str | None = None, pause: bool = True) -> str:  # fmt: skip
        body = {"reference": reference, "changes": list(changes or []), "message": message,
                "author": author, "pause": pause}  # fmt: skip
        return str(self._json("POST", f"/containers/{segment(ref)}/commit", json_body=body)["Id"])

    def exec(self, ref: str, argv: list[str], *, env: list[str] | None = None,
             user: str | None = None, workdir: str | None = None, tty: bool = False,
             stdin: BinaryIO | None = None, detach: bool = False,
             stream: bool = False, detach_keys: bytes | None = None) -> ExecResult:  # fmt: skip
        """``stream``: through the daemon's upgrade, as it comes (``_exec_streamed``);
        else captured, the output sent at its end."""
        from lamina.runtime._term import format_detach_keys
        from lamina.runtime._types import ExecResult

        if not argv:
            raise LaminaError("exec needs a command")
        body = {"cmd": list(argv), "env": list(env or []), "user": user, "workdir": workdir,
                "tty": tty}  # fmt: skip
        if detach_keys is not None:
            body["detach_keys"] = format_detach_keys(detach_keys)
        exec_id = self._json("POST", f"/containers/{segment(ref)}/exec", json_body=body)["Id"]
        if stream and not detach:
            interactive = stdin is not None and _is_our_stdin(stdin)
            return self._exec_streamed(exec_id, tty, stdin if interactive else None, detach_keys)
        answer = self._call("POST", f"/exec/{exec_id}/start")
        out, err = bytearray(), bytearray()
        failure = b""  # the daemon's line for a command that could not run
        for kind, payload in _frames(answer.chunks()):
            if kind == 2 and payload.startswith(_ERROR_LINE):
                failure += payload
            else:
                (err if kind == 2 else out).extend(payload)
        code = self._json("GET", f"/exec/{exec_id}/json")["ExitCode"]
        if failure and code in (126, 127):
            error = LaminaError(failure[len(_ERROR_LINE) :].decode(errors="replace").strip())
            error.exit_code = code
            raise error
        err.extend(failure)
        return ExecResult(exit_code=code if code is not None else 0, stdout=bytes(out),
                          stderr=bytes(err))  # fmt: skip

    def _exec_streamed(self, exec_id: str, tty: bool, stdin: BinaryIO | None,
                       detach_keys: bytes | None) -> ExecResult:  # fmt: skip
        """The exec's output here as it comes (raw with a TTY), ``stdin`` there (its end
        a half-close), our terminal raw and its size followed (``-it``); its exit code,
        or the error that kept it from running, read once the daemon ends the stream
        (early when it saw the detach keys: the exec runs on, ``detached``)."""
        from lamina.runtime._term import DetachKeys
        from lamina.runtime._types import ExecResult

        term = 0 if tty and stdin is not None and os.isatty(0) else None
        watch = DetachKeys(detach_keys) if tty and stdin is not None else None
        query: dict[str, Any] = {"stdin": stdin is not None}
        if term is not None:
            from lamina.runtime._term import window_size

            size = window_size(term)  # None for a terminal of no size yet
            if size is not None:
                query["h"], query["w"] = size
        answer = self._t.request("POST", f"/v1/exec/{exec_id}/start", query,
                                 headers={"Connection": "Upgrade", "Upgrade": "tcp"})  # fmt: skip
        if answer.status != 101:
            _checked(answer)
            answer.close()
            raise LaminaError(f"the lamina daemon did not start the exec (HTTP {answer.status})")
        reader = answer.resp.fp  # buffered: may hold the first bytes after the 101
        with contextlib.ExitStack() as stack:
            stack.callback(answer.close)
            if term is not None:
                from lamina.runtime._term import follow_window_size, raw_terminal

                stack.enter_context(raw_terminal(term))
                stack.enter_context(follow_window_size(term, functools.partial(
                    self._resize_exec, exec_id)))  # fmt: skip
            if stdin is not None:
                threading.Thread(target=_pump_stdin, args=(stdin, answer.conn.sock, watch),
                                 daemon=True).start()  # fmt: skip
            chunks = iter(lambda: reader.read1(65536), b"")
            if tty:
                for data in chunks:
                    if watch is not None and watch.detached:
                        break  # nothing more of the exec once the keys are typed
                    sys.stdout.buffer.write(data)
                    sys.stdout.buffer.flush()
            else:
                for kind, payload in _frames(chunks):
                    target = sys.stderr.buffer if kind == 2 else sys.stdout.buffer
                    target.write(payload)
                    target.flush()
        info = self._json("GET", f"/exec/{exec_id}/json")
        if info.get("Running") and watch is not None and watch.detached:
            return ExecResult(0, b"", b"", detached=True)  # the daemon saw them too
        if info.get("Error"):
            error = LaminaError(str(info["Error"]))
            error.exit_code = int(info["ExitCode"] or 1)
            raise error
        return ExecResult(int(info["ExitCode"] if info["ExitCode"] is not None else 0), b"", b"")

    def _resize_exec(self, exec_id: str, rows: int, cols: int) -> None:
        with contextlib.suppress(OSError, LaminaError):
            self._done("POST", f"/exec/{exec_id}/resize", {"h": rows, "w": cols})

    def attach(self, ref: str, *, stdin: BinaryIO | None, stdout: BinaryIO, stderr: BinaryIO,
               tty: bool = False, start: bool = False,
               detach_keys: bytes | None = None) -> bool:  # fmt: skip
        """The daemon's attach upgrade: its output here as it comes, our stdin there
        (its end a half-close), until the container's output closes, or the daemon
        saw the detach keys (a terminal's): then True."""
        from lamina.runtime._term import DetachKeys, format_detach_keys

        query: dict[str, Any] = {"stdin": stdin is not None, "start": start}
        if detach_keys is not None:
            query["detach_keys"] = format_detach_keys(detach_keys)
        # The daemon's copy of the keys ends the stream; ours says why it ended.
        watch = DetachKeys(detach_keys) if tty and stdin is not None else None
        answer = self._t.request(
            "POST", f"/v1/containers/{segment(ref)}/attach", query,
            headers={"Connection": "Upgrade", "Upgrade": "tcp"},
        )  # fmt: skip
        if answer.status != 101:
            _checked(answer)
            answer.close()
            raise LaminaError(f"the lamina daemon did not attach (HTTP {answer.status})")
        sock = answer.conn.sock
        reader = answer.resp.fp  # buffered: may hold the first bytes after the 101
        try:
            if stdin is not None:
                threading.Thread(target=_pump_stdin, args=(stdin, sock, watch),
                                 daemon=True).start()  # fmt: skip
            if tty:
                self._follow_terminal(ref)
                while (data := reader.read1(65536)) and not (watch and watch.detached):
                    stdout.write(data)
                    stdout.flush()
                return watch is not None and watch.detached
            chunks = iter(lambda: reader.read1(65536), b"")
            for kind, payload in _frames(chunks):
                if kind == 2 and payload.startswith(_ERROR_LINE):
                    raise _start_failure(payload[len(_ERROR_LINE) :].decode(errors="replace"))
                target = stderr if kind == 2 else stdout
                target.write(payload)
                target.flush()
            return False
        finally:
            answer.close()

    def _follow_terminal(self, ref: str) -> None:
        """Our terminal's size to the container's, now and on SIGWINCH."""
        import signal

        def resize(*_: object) -> None:
            with contextlib.suppress(OSError, LaminaError):
                cols, rows = os.get_terminal_size(sys.stdin.fileno())
                self.resize(ref, rows, cols)

        if not sys.stdin.isatty():
            return
        resize()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGWINCH, resize)

    def resize(self, ref: str, height: int, width: int) -> None:
        self._done("POST", f"/containers/{segment(ref)}/resize", {"h": height, "w": width})

    # -- cp: the archive API (tar streams both ways)

    def stat_path(self, ref: str, path: str) -> PathStat:
        import base64

        from lamina.runtime._types import PathStat

        answer = self._call("HEAD", f"/containers/{segment(ref)}/archive", {"path": path})
        answer.close()
        header = answer.header("X-Lamina-Path-Stat") or ""
        return decode(PathStat, json.loads(base64.b64decode(header)))

    def copy_out(self, ref: str, path: str, *, follow_link: bool = False) -> Iterator[bytes]:
        query = {"path": path, "follow_link": follow_link}
        return self._call("GET", f"/containers/{segment(ref)}/archive", query).chunks()

    def copy_in(self, ref: str, path: str, tar_stream: BinaryIO) -> None:
        chunks = iter(lambda: tar_stream.read(65536), b"")
        self._done("PUT", f"/containers/{segment(ref)}/archive", {"path": path}, body=chunks,
                   headers={"Content-Type": "application/x-tar"})  # fmt: skip

    # -- images

    def pull_image(self, reference: str, *, policy: str = "always", platform: str | None = None,
                   progress: Any = None, registry_config: Any = None) -> Any:  # fmt: skip
        """The daemon pulls; its progress events go to ``progress`` as they come."""
        from types import SimpleNamespace

        query = {"reference": reference, "platform": platform}
        result = self._transfer("/images/pull", query, progress)
        return SimpleNamespace(id=result["id"], digest=result["digest"])

    def push_image(self, source: str, destination: str | None = None, *, progress: Any = None,
                   registry_config: Any = None, chunk_size: int | None = None) -> str:  # fmt: skip
        result = self._transfer(f"/images/{segment(source)}/push", {"destination": destination},
                                progress)  # fmt: skip
        return str(result["digest"])

    def _transfer(self, path: str, query: Mapping[str, Any], progress: Any = None) -> Any:
        answer = self._call("POST", path, query)
        event_class = None
        if progress is not None:
            from lamina.registry._progress import ProgressEvent as event_class
        for line in answer.lines():
            event = json.loads(line)
            if "error" in event:
                if event_class is not None:  # a live display stops as in-process
                    progress.event(event_class("failed", message=str(event["error"])))
                raise error_of(int(event.get("code") or 500), str(event["error"]))
            if event.get("status") == "complete":
                return event["result"]
            if event_class is not None:
                progress.event(event_class(
                    event["status"], digest=event.get("id") or "", size=event.get("size") or 0,
                    advance=event.get("advance") or 0, message=event.get("message") or "",
                    what=event.get("what") or "layer"))  # fmt: skip
        raise LaminaError("the lamina daemon ended the transfer without a result")

    def _pulls_here(self, image: str, pull: str, platform: str | None,
                    progress: Any) -> bool:  # fmt: skip
        """Whether ``run``/``create``'s pull is done from here, its progress shown as
        in-process ("always", or "missing" and the daemon has no such image). With
        ``--platform`` or an image ID the daemon decides alone."""
        hexpart = image.removeprefix("sha256:")
        is_id = len(hexpart) == 64 and all(c in "0123456789abcdef" for c in hexpart)
        return not (progress is None or platform is not None or is_id
                    or pull not in ("always", "missing"))  # fmt: skip

    def save_images(self, names: Sequence[str], dest: Any, *, format: str) -> None:
        """The daemon's archive to ``dest`` (a path: written whole or not at all, as
        in-process; a stream: as it comes)."""
        import tempfile
        from pathlib import Path

        if format not in ("oci-archive", "docker-archive"):
            raise BadRequest(f"--format {format} is not served by the lamina daemon: save to "
                             "an archive (oci-archive, docker-archive)")  # fmt: skip
        answer = self._call("GET", "/images/save", {"names": list(names), "format": format})
        if not isinstance(dest, Path):
            for chunk in answer.chunks():
                dest.write(chunk)
            return
        fd, partial = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.absolute().parent)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in answer.chunks():
                    out.write(chunk)
            _check_tar_end(partial)
            os.replace(partial, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise

    def load_images(self, source: Any) -> list[Any]:
        from types import SimpleNamespace

        with _tar_source(source) as chunks:
            found = self._json("POST", "/images/load", body=chunks,
                               headers={"Content-Type": "application/x-tar"})  # fmt: skip
        return [SimpleNamespace(**r) for r in found]

    def import_image(self, source: Any, *, reference: str | None = None,
                     changes: Sequence[str] = (), message: str | None = None,
                     platform: str | None = None) -> Any:  # fmt: skip
        from types import SimpleNamespace

        query = {"reference": reference, "changes": list(changes), "message": message,
                 "platform": platform}  # fmt: skip
        with _tar_source(source) as chunks:
            rec = self._json("POST", "/images/import", query, body=chunks,
                             headers={"Content-Type": "application/x-tar"})  # fmt: skip
        return SimpleNamespace(**rec)

    def prune_images(self, *, all_unused: bool = False) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(**self._json("POST", "/images/prune", {"all": all_unused}))

    def build(self, options: Any, progress: Any) -> Any:
        """``lamina build`` by the daemon (``POST /v1/build``): the context sent as the
        local build sees it, the daemon's progress replayed into ``progress``."""
        import tempfile
        from types import SimpleNamespace

        from lamina.builder._upload import pack_context

        query = {"t": list(options.tags), "target": options.target,
                 "no_cache": options.no_cache, "pull": options.pull,
                 "build_arg": [f"{k}={v}" for k, v in options.build_args.items()],
                 "label": [f"{k}={v}" for k, v in options.labels.items()],
                 "platform": options.platform, "network": options.network,
                 "compression": options.compression,
                 "source_date_epoch": options.source_date_epoch}  # fmt: skip
        with tempfile.TemporaryFile() as spool:
            query["dockerfile"] = pack_context(options.context, options.dockerfile,
                                               options.dockerfile_text, spool,
                                               _secret_values(options.secrets))  # fmt: skip
            query["dockerfile_stdin"] = options.dockerfile_text is not None
            spool.seek(0)
            answer = self._call("POST", "/build", query, body=iter(lambda: spool.read(65536), b""),
                                headers={"Content-Type": "application/x-tar"})  # fmt: skip
        steps: dict[int, Any] = {}
        for line in answer.lines():
            event = json.loads(line)
            if "progress" in event:
                _replay(progress, steps, event)
            elif "result" in event:
                return SimpleNamespace(**event["result"])
            elif "error" in event:
                raise _build_error(event)
        raise LaminaError("the lamina daemon ended the build without a result")

    # -- housekeeping: what lamina.engine's module functions do in-process

    def server_version(self) -> dict[str, Any]:
        return dict(self._json("GET", "/version"))

    def server_info(self) -> dict[str, Any]:
        return dict(self._json("GET", "/info"))

    def prune_containers(self, select: Any = None) -> Any:
        from lamina.engine._system import ContainerPrune

        query = {"filters": _selector_filters(select)}
        return decode(ContainerPrune, self._json("POST", "/containers/prune", query))

    def prune_system(self, *, all_images: bool = False, volumes: bool = False,
                     select: Any = None) -> Any:  # fmt: skip
        from lamina.engine._system import SystemPrune

        query = {"all": all_images, "volumes": volumes, "filters": _selector_filters(select)}
        return decode(SystemPrune, self._json("POST", "/system/prune", query))

    def system_df(self) -> Any:
        """``system df``'s data (``lamina.engine.DiskUsage``), image records as the
        fields it prints."""
        from types import SimpleNamespace

        from lamina.engine import _system as s
        from lamina.runtime._types import Container

        data = self._json("GET", "/system/df")
        images = [s.ImageUsage(SimpleNamespace(**u["record"]), u["size"], u["shared"],
                               u["containers"]) for u in data["images"]]  # fmt: skip
        containers = [s.ContainerUsage(decode(Container, u["container"]), u["size"],
                                       u["volumes"]) for u in data["containers"]]  # fmt: skip
        return s.DiskUsage(
            rows=[decode(s.UsageRow, r) for r in data["rows"]],
            images=images,  # type: ignore[arg-type]
            containers=containers,
            volumes=[decode(s.VolumeUsage, v) for v in data["volumes"]],
            build_cache=[decode(s.CacheUsage, c) for c in data["build_cache"]],
        )

    def events(self, since_ns: int | None, until_ns: int | None,
               filters: Mapping[str, Sequence[str]]) -> Iterator[Any]:  # fmt: skip
        """The daemon's journal (``lamina.engine._events.Event``s) from ``since_ns`` to
        ``until_ns`` (Unix nanoseconds), as they come."""
        from lamina.engine._events import Event

        def stamp(ns: int | None) -> str | None:
            return None if ns is None else f"{ns // 10**9}.{ns % 10**9:09d}"

        query = {"since": stamp(since_ns), "until": stamp(until_ns),
                 "filters": json.dumps(dict(filters)) if filters else None}  # fmt: skip
        for line in self._call("GET", "/events", query).lines():
            m = json.loads(line)
            actor = m.get("Actor") or {}
            yield Event(m["Type"], m["Action"], actor.get("ID", ""),
                        dict(actor.get("Attributes") or {}), m.get("scope", "local"),
                        int(m.get("timeNano", 0)))  # fmt: skip

    @property
    def images(self) -> _RemoteImages:
        """What ``images``/``rmi`` read of the image store (``engine.images.images``)."""
        return _RemoteImages(self)

    def tag_image(self, source: str, target: str) -> None:
        self._done("POST", f"/images/{segment(source)}/tag", json_body={"target": target})

    def inspect_image(self, name: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/images/{segment(name)}"))

    def remove_image(self, name: str, *, force: bool = False) -> Any:
        from types import SimpleNamespace

        data = self._json("DELETE", f"/images/{segment(name)}", {"force": force})
        return SimpleNamespace(**data)

    # -- volumes

    def create_volume(self, name: str | None = None,
                      labels: Mapping[str, str] | None = None) -> Volume:  # fmt: skip
        from lamina.runtime._volumes import Volume

        body = {"name": name, "labels": dict(labels or {})}
        return decode(Volume, self._json("POST", "/volumes", json_body=body))

    def volume(self, name: str) -> Volume:
        from lamina.runtime._volumes import Volume

        return decode(Volume, self._json("GET", f"/volumes/{segment(name)}"))

    def list_volumes(self, *, filters: Mapping[str, Sequence[str]] | None = None) -> list[Volume]:
        from lamina.runtime._volumes import Volume

        query = {"filters": json.dumps(dict(filters)) if filters else None}
        found = self._json("GET", "/volumes", query, bad_input=_invalid_filter())
        return [decode(Volume, v) for v in found]

    def remove_volume(self, name: str, *, force: bool = False) -> None:
        self._done("DELETE", f"/volumes/{segment(name)}", {"force": force})

    def prune_volumes(self, *, all: bool = False,
                      filters: Mapping[str, Sequence[str]] | None = None) -> Any:  # fmt: skip
        from lamina.runtime._volumes import PruneResult

        query = {"all": all, "filters": json.dumps(dict(filters)) if filters else None}
        return decode(PruneResult, self._json("POST", "/volumes/prune", query,
                                              bad_input=_invalid_filter()))  # fmt: skip


class _RemoteImages:
    """The image store's listing as the daemon serves it: records with the fields the
    CLI prints (``ImageRecord``'s), holders unknown (the daemon lists no build cache)."""

    def __init__(self, engine: RemoteEngine) -> None:
        self.images = self
        self._engine = engine

    def list(self) -> list[Any]:
        from types import SimpleNamespace

        return [SimpleNamespace(**r) for r in self._engine._json("GET", "/images")]

    def holders(self, digest: str) -> list[str]:
        return []

    def reap(self) -> None:
        """The daemon's own store reaps dead leases."""


def _selector_filters(select: Any) -> str | None:
    """A ``lamina.engine.Selector`` as the prune endpoints' filters (JSON)."""
    if not select:
        return None
    filters: dict[str, list[str]] = {}
    if select.until is not None:
        filters["until"] = [repr(select.until)]
    if select.labels:
        filters["label"] = list(select.labels)
    if select.not_labels:
        filters["label!"] = list(select.not_labels)
    return json.dumps(filters)


def _replay(progress: Any, steps: dict[int, Any], event: dict[str, Any]) -> None:
    """One of the daemon builder's progress calls, made on the local display."""
    kind = event["progress"]
    if kind == "add":
        step = progress.add(event["name"])
        steps[int(event.get("step") or step.number)] = step  # the daemon's number
    elif kind == "warn":
        progress.warn(event["message"])
    elif kind == "output":
        progress.output(steps[event["step"]], event["data"].encode("utf-8", "surrogateescape"))
    elif kind == "fail":
        progress.fail(steps[event["step"]], event["message"])
    elif kind in ("start", "cached", "done"):
        getattr(progress, kind)(steps[event["step"]])


def _build_error(event: dict[str, Any]) -> LaminaError:
    """The build's failure as in-process: a ``BuildError`` (its step and last output
    lines) for what the builder raised, else the status's exception."""
    from lamina.builder._dockerfile import BuildError

    error: LaminaError
    failed = event.get("build")
    if isinstance(failed, dict):
        error = BuildError(str(event["error"]), list(failed.get("tail") or []),
                           str(failed.get("step") or ""))  # fmt: skip
    else:
        error = error_of(int(event.get("code") or 500), str(event["error"]))
    error.exit_code = int(event.get("exit_code") or 1)
    return error


def _secret_values(secrets: Mapping[str, tuple[str, str]]) -> dict[str, bytes]:
    """``--secret``'s values as the build reads them (sent in the context upload)."""
    from lamina.builder._upload import secret_bytes

    return {sid: secret_bytes(sid, kind, value) for sid, (kind, value) in secrets.items()}


@contextlib.contextmanager
def _tar_source(source: Any) -> Iterator[Iterator[bytes]]:
    """What load and import read, as a body: a stream or a file as it is, a directory
    (an OCI layout, a root filesystem) as a tar of its contents."""
    from pathlib import Path

    if not isinstance(source, Path):
        yield iter(lambda: source.read(65536), b"")
        return
    if not source.is_dir():
        try:
            f = open(source, "rb")  # noqa: SIM115 - closed below, after the request
        except OSError as e:
            from lamina.errors import NotFound, describe_os_error

            raise NotFound(f"cannot read {source}: {describe_os_error(e)}") from None
        with f:
            yield iter(lambda: f.read(65536), b"")
        return
    import tarfile
    import tempfile

    with tempfile.TemporaryFile() as spool:
        with tarfile.open(fileobj=spool, mode="w") as tar:
            tar.add(str(source), arcname=".")
        spool.seek(0)
        yield iter(lambda: spool.read(65536), b"")


def _check_tar_end(path: str) -> None:
    """A tar cut short (the daemon failed in the middle) is not written out."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - 1024))
        if size < 1024 or f.read(1024) != bytes(1024):
            raise LaminaError("the lamina daemon ended the archive short")


def _invalid_filter() -> type[LaminaError]:
    """A refused filter is the engine's InvalidFilter (the CLI says it as a flag error)."""
    from lamina.engine._filters import InvalidFilter

    return InvalidFilter


def _is_our_stdin(stream: BinaryIO) -> bool:
    """``exec -i``: the CLI hands our stdin over (else /dev/null, which has nothing)."""
    try:
        return os.path.samestat(os.fstat(stream.fileno()), os.fstat(0)) and not _is_devnull(0)
    except (OSError, ValueError, AttributeError):
        return True


def _is_devnull(fd: int) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(os.devnull))
    except OSError:
        return False


def _pump_stdin(stdin: BinaryIO, sock: socket.socket, watch: DetachKeys | None = None) -> None:
    """Our stdin to the container's; its end is a half-close (the container's EOF).
    ``watch`` follows it for the detach keys: sent on as typed (the daemon acts on
    them), and then nothing more."""
    with contextlib.suppress(OSError, ValueError):
        try:
            fd = stdin.fileno()
        except (OSError, AttributeError):
            fd = None  # a Python stream (tests, an embedding program)
        while data := (os.read(fd, 65536) if fd is not None else stdin.read(65536)):
            if watch is not None:
                watch.feed(data)
            sock.sendall(data)
            if watch is not None and watch.detached:
                return
        sock.shutdown(socket.SHUT_WR)


def _parse_rfc3339(text: str) -> float:
    """The daemon's log timestamps: ``2024-01-02T15:04:05.123456789Z``."""
    import calendar
    import time

    whole, _, fraction = text.rstrip("Z").partition(".")
    try:
        seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0.0
    return seconds + (int(fraction) / 10 ** len(fraction) if fraction.isdigit() else 0.0)
