"""Docker's attach and exec (the connection hijacked), resize, archive and export.

The relays are the daemon's own (``lamina.daemon._api``: ``_FrameWriter``,
``_SocketReader``, ``_exec_relayed`` with its ``ExecSink``); this module translates
Docker's parameters and shapes. Docker's clients attach to a *created* container and
start it with a separate request (``docker run``: attach, wait, start): the attach
waits for that start and performs it itself (the engine's ``attach(start=True)``:
connected before the workload runs, so no output is lost); the start request hands
over to it (``start_attached``)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from lamina.daemon import _api as lapi
from lamina.daemon._http import HttpError, Request, Response, json_response
from lamina.daemon._routes import MULTIPLEXED, TAR
from lamina.dockerapi._router import api_version, route
from lamina.errors import LaminaError

RAW_STREAM = "application/vnd.docker.raw-stream"
_STAT_HEADER = "X-Docker-Container-Path-Stat"


def stream_type(request: Request, tty: bool) -> str:
    """Docker's media type of a hijacked stream: raw before 1.42 and with a terminal."""
    version = tuple(int(p) for p in api_version(request).split("."))
    return RAW_STREAM if tty or version < (1, 42) else MULTIPLEXED


def wants_upgrade(request: Request) -> bool:
    return lapi._wants_upgrade(request)


# -- attach ---------------------------------------------------------------------------------


@dataclass
class _PendingAttach:
    """An attach to a container that is not running: it waits for the start request,
    which it then performs (``start_attached``)."""

    start: threading.Event = field(default_factory=threading.Event)
    launched: threading.Event = field(default_factory=threading.Event)
    error: LaminaError | None = None


_pending: dict[str, _PendingAttach] = {}
_pending_lock = threading.Lock()


def start_attached(container_id: str) -> bool:
    """Hand the start of ``container_id`` to an attach waiting for it, and wait until it
    has launched (or failed: its error is raised). False: no attach waits."""
    with _pending_lock:
        pending = _pending.pop(container_id, None)
    if pending is None:
        return False
    pending.start.set()
    with lapi.engine() as e:
        while not pending.launched.wait(0.01):
            if pending.error is None and not _still_created(e, container_id):
                break
    if pending.error is not None:
        raise pending.error
    return True


def _still_created(e: Any, container_id: str) -> bool:
    """Whether the container has not been launched yet; one that ran and is gone
    already (``--rm`` of a short command) has been."""
    from lamina.errors import NotFound

    try:
        return bool(e.get(container_id).state.status.value == "created")
    except NotFound:
        return False


@route("POST", "/containers/{id}/attach", "Attach to a container's stdio", "containers")
def attach(request: Request) -> Response:
    with lapi.engine() as e:
        ctr = e.get(request.params["id"])
    tty = ctr.config.tty
    with_stdin, stream = request.flag("stdin"), request.flag("stream")
    outputs = {1: request.flag("stdout"), 2: request.flag("stderr")}
    logs = request.flag("logs")
    keys = lapi.detach_keys_arg(request.arg("detachKeys"))
    media = stream_type(request, tty)
    if not stream:
        return Response(body=_logs(ctr.id, outputs, tty) if logs else b"", content_type=media)
    pending: _PendingAttach | None = None
    if ctr.state.status.value not in ("running", "paused", "restarting"):
        pending = _PendingAttach()
        with _pending_lock:
            _pending[ctr.id] = pending

    def relay(stdin: Any, write: Any, gone: Any) -> None:
        writers = {n: _Filtered(write, n, outputs[n]) for n in (1, 2)}
        if pending is not None:
            while not pending.start.wait(0.5):
                if gone():
                    with _pending_lock:
                        _pending.pop(ctr.id, None)
                    return
        with lapi.engine() as e:
            try:
                e.attach(ctr.id, stdin=stdin if with_stdin else None, stdout=writers[1],  # type: ignore[arg-type]
                         stderr=writers[2], tty=tty, start=pending is not None,  # type: ignore[arg-type]
                         detach_keys=keys)  # fmt: skip
            except LaminaError as err:
                if pending is not None and not pending.launched.is_set():
                    pending.error = err
                    pending.launched.set()
                    return
                with contextlib.suppress(OSError):
                    writers[2].write(f"lamina: error: {err}\n".encode())
            except OSError:
                return  # the client went away: the container goes on (detached)
            finally:
                if pending is not None:
                    pending.launched.set()

    headers = [("Content-Type", media)]
    if wants_upgrade(request):

        def takeover(sock: Any, early: bytes) -> None:
            frames = {n: lapi._FrameWriter(sock, n, tty) for n in (1, 2)}
            try:
                relay(lapi._SocketReader(sock, early), lambda n, d: frames[n].write(d),
                      lambda: lapi._hung_up(sock, peek=not with_stdin))  # fmt: skip
            finally:
                # Wakes the stdin reader still blocked in recv (it holds the socket:
                # closing alone would not end the connection) and tells the client.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        return Response(status=101, content_type=media, takeover=takeover,
                        headers=[("Connection", "Upgrade"), ("Upgrade", "tcp")])  # fmt: skip
    del headers
    return Response(body=_relayed_body(request, relay, tty), content_type=media)


class _Filtered:
    """One of the container's output streams to the client (or dropped when the client
    did not ask for it)."""

    def __init__(self, write: Any, stream: int, wanted: bool) -> None:
        self._write, self._stream, self._wanted = write, stream, wanted

    def write(self, data: bytes) -> int:
        if self._wanted and data:
            self._write(self._stream, data)
        return len(data)

    def flush(self) -> None:
        pass


def _relayed_body(request: Request, relay: Any, tty: bool) -> Iterator[bytes]:
    """A relay without an upgrade: the output as a streamed answer (no stdin)."""
    import queue

    chunks: queue.Queue[bytes | None] = queue.Queue()

    def write(stream: int, data: bytes) -> None:
        chunks.put(data if tty else lapi.frame("stderr" if stream == 2 else "stdout", data))

    def run() -> None:
        try:
            relay(None, write, request.gone)
        finally:
            chunks.put(None)

    threading.Thread(target=run, daemon=True).start()
    while (chunk := chunks.get()) is not None:
        yield chunk


def _logs(cid: str, outputs: dict[int, bool], tty: bool) -> bytes:
    with lapi.engine() as e:
        entries = list(e.logs(cid, follow=False, stdout=outputs[1], stderr=outputs[2]))
    if tty:
        return b"".join(entry.data for entry in entries)
    return b"".join(lapi.frame(entry.stream, entry.data) for entry in entries)


def _size(request: Request) -> tuple[int, int]:
    rows, cols = request.integer("h"), request.integer("w")
    if rows is None or cols is None or rows <= 0 or cols <= 0:
        raise HttpError(400, "query parameters h and w: positive integers required")
    return rows, cols


@route("POST", "/containers/{id}/resize", "Resize a container's terminal", "containers")
def resize(request: Request) -> Response:
    rows, cols = _size(request)
    with lapi.engine() as e:
        e.resize(request.params["id"], rows, cols)
    return Response(status=200, body=b"", content_type="text/plain")


# -- exec ---------------------------------------------------------------------------------------

_EXEC_FIELDS = {"AttachStdin", "AttachStdout", "AttachStderr", "Tty", "Cmd", "Env", "WorkingDir",
                "User", "Privileged", "DetachKeys", "ConsoleSize", "Container",
                "Detach"}  # fmt: skip  # Detach: docker-py sends it at create; start decides


def _body(request: Request) -> dict[str, Any]:
    body = request.json()
    if not isinstance(body, dict):
        raise HttpError(400, "request body: expected a JSON object")
    return body


def _typed(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise HttpError(400, f"invalid field {name}: expected {kind.__name__}")
    return value


def _strings(body: dict[str, Any], name: str) -> list[str]:
    value = _typed(body, name, list, [])
    if not all(isinstance(v, str) for v in value):
        raise HttpError(400, f"invalid field {name}: expected a list of strings")
    return list(value)


@route("POST", "/containers/{id}/exec", "Create an exec", "exec")
def exec_create(request: Request) -> Response:
    from lamina.daemon import _models as m

    body = _body(request)
    unknown = sorted(set(body) - _EXEC_FIELDS)
    if unknown:
        raise HttpError(400, f"invalid field {unknown[0]}: not an exec option")
    cmd = _strings(body, "Cmd")
    if not cmd:
        raise HttpError(400, "No exec command specified")
    if _typed(body, "Privileged", bool, False):
        raise HttpError(400, "invalid field Privileged: privileged execs are not supported")
    detach_keys = _typed(body, "DetachKeys", str, "") or None
    lapi.detach_keys_arg(detach_keys)  # a 400 now, as Docker's
    spec = m.ExecCreate(cmd=cmd, env=_strings(body, "Env"),
                        user=_typed(body, "User", str, "") or None,
                        workdir=_typed(body, "WorkingDir", str, "") or None,
                        tty=_typed(body, "Tty", bool, False), detach_keys=detach_keys)  # fmt: skip
    with lapi.engine() as e:
        ctr = e.get(request.params["id"])
        if ctr.state.status.value != "running":
            raise HttpError(409, f"container {ctr.id} is not running")
    exec_id = os.urandom(32).hex()
    api = lapi._api()
    docker = {"stdin": _typed(body, "AttachStdin", bool, False),
              "stdout": _typed(body, "AttachStdout", bool, False),
              "stderr": _typed(body, "AttachStderr", bool, False),
              "detach_keys": _typed(body, "DetachKeys", str, "")}  # fmt: skip
    with api.lock:
        api.execs[exec_id] = {"container": ctr.id, "spec": spec, "running": False,
                              "exit_code": None, "made": time.monotonic(),
                              "docker": docker}  # fmt: skip
        lapi._forget_old_execs(api)
    return json_response({"Id": exec_id}, 201)


@route("POST", "/exec/{id}/start", "Start an exec (hijacked)", "exec")
def exec_start(request: Request) -> Response:
    exec_id = request.params["id"]
    entry = lapi._exec_entry(exec_id)
    body = _body(request)
    detach = _typed(body, "Detach", bool, False)
    size = _typed(body, "ConsoleSize", list, None)
    if size is not None and (len(size) != 2 or not all(isinstance(n, int) and n > 0 for n in size)):
        size = None  # Docker's clients send [0, 0] when they have no terminal
    spec = entry["spec"]
    with lapi._api().lock:
        if entry["running"] or entry["exit_code"] is not None:
            raise HttpError(409, f"exec {exec_id} has been started already")
        entry["running"] = True
    if detach:
        try:
            with lapi.engine() as e:
                e.exec(entry["container"], spec.cmd, env=spec.env, user=spec.user,
                       workdir=spec.workdir, tty=spec.tty, detach=True)  # fmt: skip
        finally:
            entry["running"] = False
        return Response(status=200, body=b"", content_type="text/plain")
    media = stream_type(request, spec.tty)
    with_stdin = bool(entry.get("docker", {}).get("stdin"))
    if wants_upgrade(request):
        return Response(status=101, content_type=media,
                        takeover=lambda sock, early: lapi._exec_relayed(
                            entry, sock, early, with_stdin=with_stdin,
                            size=(size[0], size[1]) if size else None, gone_detaches=spec.tty),
                        headers=[("Connection", "Upgrade"), ("Upgrade", "tcp")])  # fmt: skip
    with lapi._api().lock:
        entry["running"] = False  # the daemon's own start runs it whole
    answer = lapi.exec_start(request)
    answer.content_type = media
    return answer


@route("POST", "/exec/{id}/resize", "Resize an exec's terminal", "exec")
def exec_resize(request: Request) -> Response:
    entry = lapi._exec_entry(request.params["id"])
    rows, cols = _size(request)
    sink = entry.get("sink")
    if sink is None or sink.resize is None:
        raise HttpError(409, f"exec {request.params['id']} has no running terminal to resize")
    sink.resize(rows, cols)
    return Response(status=200, body=b"", content_type="text/plain")


@route("GET", "/exec/{id}/json", "Inspect an exec", "exec")
def exec_inspect(request: Request) -> Response:
    exec_id = request.params["id"]
    entry = lapi._exec_entry(exec_id)
    spec = entry["spec"]
    docker = entry.get("docker", {})
    return json_response({
        "CanRemove": False, "ContainerID": entry["container"],
        "DetachKeys": docker.get("detach_keys", ""), "ExitCode": entry["exit_code"],
        "ID": exec_id, "OpenStderr": bool(docker.get("stderr")),
        "OpenStdin": bool(docker.get("stdin")), "OpenStdout": bool(docker.get("stdout")),
        "ProcessConfig": {"arguments": spec.cmd[1:], "entrypoint": spec.cmd[0],
                          "privileged": False, "tty": spec.tty, "user": spec.user or ""},
        "Running": entry["running"], "Pid": 0,
    })  # fmt: skip


# -- archive and export ---------------------------------------------------------------------

# Go's os.FileMode bits, which Docker's path stat carries (not st_mode).
_GO_DIR, _GO_SYMLINK, _GO_DEVICE, _GO_PIPE, _GO_SOCKET = 1 << 31, 1 << 27, 1 << 26, 1 << 25, 1 << 24
_GO_SETUID, _GO_SETGID, _GO_CHARDEV, _GO_STICKY = 1 << 23, 1 << 22, 1 << 21, 1 << 20


def go_file_mode(st_mode: int) -> int:
    import stat as st

    mode = st_mode & 0o777
    kinds = ((st.S_ISDIR, _GO_DIR), (st.S_ISLNK, _GO_SYMLINK), (st.S_ISFIFO, _GO_PIPE),
             (st.S_ISSOCK, _GO_SOCKET), (st.S_ISBLK, _GO_DEVICE),
             (st.S_ISCHR, _GO_DEVICE | _GO_CHARDEV))  # fmt: skip
    for test, bit in kinds:
        if test(st_mode):
            mode |= bit
    for flag, bit in ((st.S_ISUID, _GO_SETUID), (st.S_ISGID, _GO_SETGID), (st.S_ISVTX, _GO_STICKY)):
        if st_mode & flag:
            mode |= bit
    return mode


def path_stat_header(stat: Any) -> str:
    """Docker's ``X-Docker-Container-Path-Stat``: base64 of its ContainerPathStat."""
    mtime = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stat.mtime))
    fraction = int((stat.mtime % 1) * 1e9)
    value = {"name": stat.name, "size": stat.size, "mode": go_file_mode(stat.mode),
             "mtime": f"{mtime}.{fraction:09d}Z", "linkTarget": stat.link_target}  # fmt: skip
    return base64.b64encode(json.dumps(value).encode()).decode()


def _path(request: Request) -> str:
    path = request.arg("path")
    if not path:
        raise HttpError(400, "query parameter path: required")
    return path


@route("GET", "/containers/{id}/archive", "A tar of a path in a container", "containers")
def archive_get(request: Request) -> Response:
    ref, path = request.params["id"], _path(request)
    held = contextlib.ExitStack()
    e = held.enter_context(lapi.engine())
    try:
        header = path_stat_header(e.stat_path(ref, path))
        if request.method == "HEAD":
            held.close()
            return Response(content_type=TAR, headers=[(_STAT_HEADER, header)])
        chunks = e.copy_out(ref, path)
    except BaseException:
        held.close()
        raise
    return Response(body=lapi.Held(chunks, held), content_type=TAR,
                    headers=[(_STAT_HEADER, header)])  # fmt: skip


@route("PUT", "/containers/{id}/archive", "Extract a tar into a path in a container",
       "containers")  # fmt: skip
def archive_put(request: Request) -> Response:
    ref, path = request.params["id"], _path(request)
    request.flag("noOverwriteDirNonDir")  # validated; the engine's extraction decides
    request.flag("copyUIDGID")
    with lapi.engine() as e:
        e.copy_in(ref, path, request.stream())
    return Response(status=200, body=b"", content_type="text/plain")


@route("GET", "/containers/{id}/export", "The container's filesystem as a tar", "containers")
def export(request: Request) -> Response:
    held = contextlib.ExitStack()
    e = held.enter_context(lapi.engine())
    try:
        chunks = e.copy_out(request.params["id"], "/")
    except BaseException:
        held.close()
        raise
    return Response(body=lapi.Held(chunks, held), content_type=TAR)


