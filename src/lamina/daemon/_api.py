"""The ``/v1`` API: each handler translates one request into engine calls and the
engine's answer into JSON (or a stream). Nothing is decided here that the engine
or the run options (``engine._options``, shared with the CLI) do not decide.

Errors: NotFound is 404, a conflict with an object's state 409, bad input 400, a
registry's failure 502, a full disk 507; anything else is a bug, 500. Each answer
is one JSON object ``{"message": "<one line>"}``.

Streams: logs and exec output are Docker's multiplexed frames (an 8-byte header:
stream 1 stdout / 2 stderr, three zero bytes, the big-endian length); events,
stats and pull/push progress are JSON lines; cp, save and export are tar streams.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import enum
import json
import os
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina._fsutil import write_all
from lamina.daemon import _models as m
from lamina.daemon._http import (
    HttpError,
    Request,
    Response,
    drain_json_lines,
    error_response,
    internal_error,
    json_response,
)
from lamina.daemon._routes import MULTIPLEXED, NDJSON, TAR, Param, Router
from lamina.errors import (
    AlreadyExists,
    DigestMismatch,
    InUse,
    InvalidLayer,
    InvalidManifest,
    LaminaError,
    NotFound,
    RegistryError,
    StorageError,
)

if TYPE_CHECKING:
    from lamina.engine import Engine

router = Router()
route = router.add

_JSON_OBJECT: dict[str, Any] = {"type": "object"}
_JSON_LIST: dict[str, Any] = {"type": "array", "items": {"type": "object"}}
_PROGRESS = "progress events, then {status: complete, result} or {error, code}"


# -- engines ---------------------------------------------------------------------------


class Engines:
    """Engines on the daemon's root, one per request at a time (an Engine keeps
    connections and caches that are not shared between threads), reused."""

    def __init__(self, root: Path, oci_runtime: str, *, insecure_registries: tuple[str, ...] = (),
                 registries_config: str | None = None, registry_mirrors: tuple[str, ...] = (),
                 say: Any = None) -> None:  # fmt: skip
        self.root = root
        self.oci_runtime = oci_runtime
        self._insecure = insecure_registries
        self._registries_config = registries_config
        self._mirrors = registry_mirrors
        self._say = say
        self._free: list[Engine] = []
        self._lock = threading.Lock()

    def registry_config(self) -> Any:
        from lamina.registry import RegistryConfig

        return RegistryConfig.load(self._registries_config, insecure_registries=self._insecure,
                                   registry_mirrors=self._mirrors)  # fmt: skip

    def open(self) -> Engine:
        from lamina.engine import open_engine

        return open_engine(self.root, oci_runtime=self.oci_runtime, report=self._say,
                           registry_config=self.registry_config)  # fmt: skip

    @contextlib.contextmanager
    def engine(self) -> Iterator[Engine]:
        with self._lock:
            engine = self._free.pop() if self._free else None
        if engine is None:
            engine = self.open()
        try:
            yield engine
        finally:
            engine.notices.clear()
            with self._lock:
                if len(self._free) < 32:
                    self._free.append(engine)
                    engine = None
            if engine is not None:
                engine.close()

    def close(self) -> None:
        with self._lock:
            free, self._free = self._free, []
        for engine in free:
            engine.close()


class Api:
    """What the handlers share: the engines, execs made and not yet inspected."""

    def __init__(self, engines: Engines) -> None:
        self.engines = engines
        self.execs: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()


API: Api | None = None  # set by the daemon before it serves


def _api() -> Api:
    assert API is not None, "the daemon sets lamina.daemon._api.API before serving"
    return API


def engine() -> contextlib.AbstractContextManager[Engine]:
    return _api().engines.engine()


# -- dispatch ----------------------------------------------------------------------------


def dispatch(request: Request) -> Response:
    return route_request(router, request, request.path)


def route_request(routes: Router, request: Request, path: str) -> Response:
    """``request`` answered by the handler ``routes`` has for ``path``; errors as one
    line with their status (the Docker API's dispatch too)."""
    try:
        found, params = routes.find(request.method, path)
        request.params = params
        return found.handler(request)
    except HttpError as e:
        return error_response(e.status, e.message)
    except LaminaError as e:
        return error_response(status_of(e), str(e))
    except OSError as e:
        from lamina.errors import describe_os_error

        return error_response(500, describe_os_error(e))
    except Exception as e:  # a bug: answered, and its traceback in the daemon's log
        import traceback

        traceback.print_exc()
        return error_response(500, internal_error(e))


def status_of(e: LaminaError) -> int:
    """The HTTP status of an engine error (see the module docstring)."""
    if isinstance(e, NotFound):
        return 404
    if isinstance(e, AlreadyExists | InUse):
        return 409
    if isinstance(e, ValueError | InvalidManifest | InvalidLayer | DigestMismatch):
        return 400  # bad input: a parameter, a body, an archive sent
    if isinstance(e, RegistryError):
        return 502
    if isinstance(e, StorageError):
        return 507
    if isinstance(e, TimeoutError):
        return 408
    return 409  # the engine refused for the object's state (not running, paused...)


_SCALARS = (str, int, float, bool, type(None))
_FIELDS: dict[type, tuple[str, ...]] = {}


def plain(value: Any) -> Any:
    """Engine data as JSON values: dataclasses as objects, enums as their values.
    (Hot: a 100-container list is ~6,000 values; scalars are tested first, each
    dataclass's field names looked up once.)"""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if kind is list or kind is tuple:
        return [plain(v) for v in value]
    if kind is dict or isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    names = _FIELDS.get(kind)
    if names is None and dataclasses.is_dataclass(value):
        names = _FIELDS[kind] = tuple(f.name for f in dataclasses.fields(value))
    if names is not None:
        return {n: plain(getattr(value, n)) for n in names}
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def filters_arg(request: Request) -> dict[str, list[str]] | None:
    """``filters``: Docker's JSON map of key to values (``{"status": ["exited"]}``)."""
    raw = request.arg("filters")
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        raise HttpError(400, "query parameter filters: expected a JSON object of lists")
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in data.values()
    ):
        raise HttpError(400, "query parameter filters: expected a JSON object of lists")
    return data


def _time_arg(request: Request, name: str) -> float | None:
    """A time: Unix seconds, RFC 3339, or a duration ago (10m), as the CLI takes it."""
    raw = request.arg(name)
    if raw is None or raw == "":
        return None
    return _time_arg_value(raw, name)


def _time_arg_value(raw: str, name: str) -> float:
    from lamina.engine._options import parse_time

    try:
        return parse_time(raw, time.time(), name)
    except LaminaError as e:
        raise HttpError(400, f"query parameter {name}: {e}")


_FILTERS = Param("filters", "string", 'JSON map of filter to values: {"status": ["exited"]}')


# -- system ----------------------------------------------------------------------------------


@route("GET", "/v1/_ping", "Is the daemon up (answers OK)", "system",
       answer="OK", answer_type="text/plain")  # fmt: skip
def ping(_request: Request) -> Response:
    return Response(body=b"OK", content_type="text/plain")


@route("GET", "/health", "Health of the daemon and its root", "system", answer=_JSON_OBJECT)
def health(_request: Request) -> Response:
    api = _api()
    with api.engines.engine() as e:
        e.store  # noqa: B018 - the store opens: the root is usable
    return json_response({"Status": "healthy", "Root": str(api.engines.root)})


@route("GET", "/v1/version", "Version of the daemon", "system", answer=_JSON_OBJECT)
def version(_request: Request) -> Response:
    from lamina.engine import version_info

    return json_response(version_info(context="daemon")["Server"])


@route("GET", "/v1/info", "System-wide information", "system", answer=_JSON_OBJECT)
def info(_request: Request) -> Response:
    from lamina.engine import system_info

    engines = _api().engines
    return json_response(system_info(engines.root, engines.oci_runtime, probe_vm=False))


@route("GET", "/v1/system/df", "Disk usage of images, containers, volumes", "system",
       answer=_JSON_OBJECT)  # fmt: skip
def system_df(_request: Request) -> Response:
    from lamina.engine import disk_usage

    with engine() as e:
        usage = disk_usage(e)
    data = plain(usage)
    for image, record in zip(data["images"], (u.record for u in usage.images), strict=True):
        image["record"]["id"] = record.id  # a property: not among the fields
    return json_response(data)


@route("POST", "/v1/system/prune", "Remove stopped containers, unused images, the build "
       "cache and (with volumes) anonymous volumes: lamina system prune", "system",
       query=(Param("all", "boolean", "every unused image, not only dangling ones"),
              Param("volumes", "boolean", "anonymous volumes no container uses"),
              _FILTERS), answer=_JSON_OBJECT)  # fmt: skip
def system_prune(request: Request) -> Response:
    from lamina.engine import prune_system

    selector = _prune_selector(request)
    with engine() as e:
        report = prune_system(e, all_images=request.flag("all"),
                              volumes=request.flag("volumes"), select=selector)  # fmt: skip
    return json_response(plain(report))


@route("GET", "/v1/events", "Events: the journal's from since, then new ones (a stream)",
       "system", query=(
           Param("since", "string", "Unix seconds, RFC 3339 or a duration ago"),
           Param("until", "string", "end of the stream (same forms)"), _FILTERS),
       answer="one event (Docker's JSON) a line", answer_type=NDJSON)  # fmt: skip
def events(request: Request) -> Response:
    from lamina.engine._events import EventFilter, Follower

    since_ns, until_ns = _time_ns_arg(request, "since"), _time_ns_arg(request, "until")
    if since_ns is not None and until_ns is not None and until_ns < since_ns:
        raise HttpError(400, "query parameter since: after until")
    try:
        selected = EventFilter(filters_arg(request) or {})
    except ValueError as e:
        raise HttpError(400, f"query parameter filters: {e}")
    if until_ns is not None and since_ns is None:
        since_ns = 0  # Docker: an end alone shows the journal's events up to it
    root = _api().engines.root
    follower = Follower(root, from_start=since_ns is not None, since_ns=since_ns,
                        until_ns=until_ns, filters=selected)  # fmt: skip

    held = contextlib.ExitStack()
    held.callback(follower.close)

    def stream() -> Iterator[bytes]:
        while True:
            over = until_ns is not None and time.time_ns() > until_ns
            batch = [json.dumps(ev.message()).encode() + b"\n" for ev in follower.events()]
            if batch:
                yield b"".join(batch)
            if over:
                return
            timeout = 1.0
            if until_ns is not None:
                timeout = min(timeout, max(0.0, (until_ns - time.time_ns()) / 1e9) + 0.001)
            if _wait(request, follower.fileno(), timeout):
                return  # the client went away
            follower.wait(0)

    return Response(body=Held(stream(), held), content_type=NDJSON)


def _time_ns_arg(request: Request, name: str) -> int | None:
    """A time in Unix nanoseconds: Unix seconds kept to the nanosecond (an event's own
    time must select that event, as in-process), else the forms of ``_time_arg``."""
    raw = request.arg(name)
    if raw is None or raw == "":
        return None
    whole, dot, fraction = raw.strip().partition(".")
    if whole.isdigit() and (not dot or (fraction.isdigit() and len(fraction) <= 9)):
        return int(whole) * 10**9 + int(fraction.ljust(9, "0") if dot else 0)
    return round(_time_arg_value(raw, name) * 1e9)


def _wait(request: Request, fd: int | None, timeout: float) -> bool:
    """Sleep until ``fd`` is readable or ``timeout``; True when the client went away."""
    if fd is None:
        return request.gone(timeout)
    sock = request._sock
    watched: list[Any] = [fd] if sock is None else [fd, sock]
    r, _, _ = select.select(watched, [], [], timeout)
    if sock is None or sock not in r:
        return False
    if request.gone():
        return True
    if fd not in r:  # the client sent more (pipelined): wait on the journal alone
        select.select([fd], [], [], timeout)
    return False


@route("GET", "/openapi.json", "This API's OpenAPI 3 document", "system", answer=_JSON_OBJECT)
def openapi_document(_request: Request) -> Response:
    return json_response(document())


def document() -> dict[str, Any]:
    from lamina import __version__
    from lamina.daemon._routes import openapi

    return openapi(router, __version__)


# -- containers ------------------------------------------------------------------------------

_ID = "id"


@route("GET", "/v1/containers", "List containers", "containers",
       query=(Param("all", "boolean", "every container, not only running ones"), _FILTERS),
       answer=_JSON_LIST)  # fmt: skip
def containers_list(request: Request) -> Response:
    with engine() as e:
        found = e.list(all=request.flag("all"), filters=filters_arg(request))
        return json_response([plain(c) for c in found])


@route("POST", "/v1/containers", "Create a container (lamina create's flags)", "containers",
       body=m.ContainerCreate, status=201, answer=m.ContainerCreated)  # fmt: skip
def containers_create(request: Request) -> Response:
    from lamina.engine._options import RunOptions, prepare_run

    body = m.parse(m.ContainerCreate, request.json())
    fields = body.model_dump()
    image, command = fields.pop("image"), fields.pop("command")
    pull, platform = fields.pop("pull"), fields.pop("platform")
    opts = RunOptions(**fields)
    with engine() as e:
        config, warnings = prepare_run(e, opts, image=image, command=command, pull=pull,
                                       platform=platform, environ={})  # fmt: skip
        created = e.create(config)
    return json_response({"Id": created.id, "Warnings": warnings, "Container": plain(created)}, 201)


@route("GET", "/v1/containers/{id}", "Inspect a container (Docker's inspect)", "containers",
       answer=_JSON_OBJECT)  # fmt: skip
def containers_inspect(request: Request) -> Response:
    with engine() as e:
        return json_response(plain(e.inspect(request.params[_ID])))


@route("GET", "/v1/containers/{id}/record", "A container as the engine describes it "
       "(lamina's Container: config, state, ports), for lamina's own clients", "containers",
       answer=_JSON_OBJECT)  # fmt: skip
def containers_record(request: Request) -> Response:
    with engine() as e:
        return json_response(plain(e.get(request.params[_ID])))


def _simple(action: str) -> Any:
    def handler(request: Request) -> Response:
        with engine() as e:
            getattr(e, action)(request.params[_ID])
        return Response(status=204)

    handler.__name__ = f"containers_{action}"
    return handler


route("POST", "/v1/containers/{id}/start", "Start a container", "containers", status=204)(
    _simple("start"))  # fmt: skip
route("POST", "/v1/containers/{id}/pause", "Pause a container", "containers", status=204)(
    _simple("pause"))  # fmt: skip
route("POST", "/v1/containers/{id}/unpause", "Unpause a container", "containers", status=204)(
    _simple("unpause"))  # fmt: skip

_STOP_QUERY = (
    Param("t", "integer", "seconds to wait before the kill (default: the container's)"),
    Param("signal", "string", "signal to stop with (default: the container's)"),
)


@route("POST", "/v1/containers/{id}/stop", "Stop a container", "containers",
       query=_STOP_QUERY, status=204)  # fmt: skip
def containers_stop(request: Request) -> Response:
    with engine() as e:
        e.stop(request.params[_ID], timeout=request.integer("t"), signal=request.arg("signal"))
    return Response(status=204)


@route("POST", "/v1/containers/{id}/restart", "Restart a container", "containers",
       query=_STOP_QUERY, status=204)  # fmt: skip
def containers_restart(request: Request) -> Response:
    with engine() as e:
        e.restart(request.params[_ID], timeout=request.integer("t"),
                  signal=request.arg("signal"))  # fmt: skip
    return Response(status=204)


@route("POST", "/v1/containers/{id}/kill", "Send a signal to a container", "containers",
       query=(Param("signal", "string", "default SIGKILL"),), status=204)  # fmt: skip
def containers_kill(request: Request) -> Response:
    with engine() as e:
        e.kill(request.params[_ID], request.arg("signal") or "SIGKILL")
    return Response(status=204)


@route("POST", "/v1/containers/{id}/rename", "Rename a container", "containers",
       query=(Param("name", "string", "the new name", required=True),), status=204)  # fmt: skip
def containers_rename(request: Request) -> Response:
    name = request.arg("name")
    if not name:
        raise HttpError(400, "query parameter name: required")
    with engine() as e:
        e.rename(request.params[_ID], name)
    return Response(status=204)


@route("DELETE", "/v1/containers/{id}", "Remove a container", "containers", query=(
    Param("force", "boolean", "kill it first if it runs"),
    Param("volumes", "boolean", "remove its anonymous volumes")), status=204)  # fmt: skip
def containers_remove(request: Request) -> Response:
    with engine() as e:
        e.remove(request.params[_ID], force=request.flag("force"), volumes=request.flag("volumes"))
    return Response(status=204)


@route("POST", "/v1/containers/prune", "Remove stopped containers", "containers",
       query=(_FILTERS,), answer=_JSON_OBJECT)  # fmt: skip
def containers_prune(request: Request) -> Response:
    from lamina.engine import prune_containers

    selector = _prune_selector(request)
    with engine() as e:
        result = prune_containers(e, selector)
    return json_response(plain(result))


def _prune_selector(request: Request) -> Any:
    """The prune filters (label, label!, until) as a ``lamina.engine.Selector``."""
    from lamina.engine import Selector

    selector = Selector()
    for key, values in (filters_arg(request) or {}).items():
        for value in values:
            if key == "until":
                selector.until = _time_arg_value(value, "filters.until")
            elif key == "label":
                selector.labels.append(value)
            elif key == "label!":
                selector.not_labels.append(value)
            else:
                raise HttpError(400, f"query parameter filters: invalid filter {key!r} "
                                "(supported: label, label!, until)")  # fmt: skip
    return selector


@route("POST", "/v1/containers/{id}/wait", "Wait for a container to stop", "containers",
       query=(Param("condition", "string", "not-running (default), next-exit or removed"),),
       answer=m.WaitResponse)  # fmt: skip
def containers_wait(request: Request) -> Response:
    from lamina.engine import WaitCondition, WaitTimeout

    try:
        condition = WaitCondition(request.arg("condition") or "not-running")
    except ValueError:
        raise HttpError(400, "query parameter condition: expected not-running, next-exit or "
                        "removed")  # fmt: skip
    ref = request.params[_ID]
    with engine() as e:
        # In slices, so that a client that went away ends the wait (next-exit waits in
        # one piece: a slice would count from its own start).
        slice_s = None if condition == WaitCondition.NEXT_EXIT else 1.0
        while True:
            try:
                outcome = e.wait(ref, condition, timeout=slice_s)
                break
            except WaitTimeout:
                if request.gone():
                    return Response(status=499)
    return json_response({"StatusCode": outcome.exit_code, "Reason": str(outcome.reason),
                          "Signal": outcome.signal, "Error": outcome.error})  # fmt: skip


class Held:
    """A response stream and what it holds (an engine, a stopped container's lock):
    freed when the stream is closed, also when it never started (a client gone
    before the status line was sent)."""

    def __init__(self, chunks: Iterator[bytes], held: contextlib.ExitStack) -> None:
        self._chunks = chunks
        self._held = held

    def __iter__(self) -> Held:
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)

    def close(self) -> None:
        try:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        finally:
            self._held.close()


def frame(stream: str, data: bytes) -> bytes:
    """One frame of Docker's multiplexed stream."""
    return struct.pack(">BxxxI", 2 if stream == "stderr" else 1, len(data)) + data


@route("GET", "/v1/containers/{id}/logs", "The container's logs (a stream)", "containers",
       query=(Param("follow", "boolean", "go on while it runs"),
              Param("since", "string", "Unix seconds, RFC 3339 or a duration ago"),
              Param("until", "string", "same forms"),
              Param("tail", "string", "lines from the end (a number or all)"),
              Param("timestamps", "boolean", "prefix each line with its RFC 3339 time"),
              Param("stdout", "boolean", "default true"),
              Param("stderr", "boolean", "default true")),
       answer="Docker's multiplexed frames", answer_type=MULTIPLEXED)  # fmt: skip
def containers_logs(request: Request) -> Response:
    tail_arg = request.arg("tail")
    tail = None
    if tail_arg not in (None, "", "all"):
        tail = request.integer("tail")
    follow = request.flag("follow")
    timestamps = request.flag("timestamps")
    since, until = _time_arg(request, "since"), _time_arg(request, "until")
    held = contextlib.ExitStack()
    e = held.enter_context(engine())
    try:
        entries = e.logs(request.params[_ID], follow=follow, tail=tail, since=since, until=until,
                         stdout=request.flag("stdout", True), stderr=request.flag("stderr", True),
                         stop=request.gone)  # fmt: skip
    except BaseException:
        held.close()
        raise

    def stream() -> Iterator[bytes]:
        try:
            for entry in entries:
                data = entry.data
                if timestamps:
                    data = _rfc3339(entry.timestamp).encode() + b" " + data
                yield frame(entry.stream, data)
        finally:
            close = getattr(entries, "close", None)
            if close is not None:
                close()  # the log reader's files

    return Response(body=Held(stream(), held), content_type=MULTIPLEXED)


def _rfc3339(ts: float) -> str:
    whole = int(ts)
    fraction = int((ts - whole) * 1e9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{fraction:09d}Z"


@route("GET", "/v1/containers/{id}/top", "Processes in the container", "containers",
       answer=_JSON_OBJECT)  # fmt: skip
def containers_top(request: Request) -> Response:
    with engine() as e:
        titles, rows = e.top(request.params[_ID])
    return json_response({"Titles": titles, "Processes": rows})


@route("GET", "/v1/containers/{id}/stats", "Resource usage: one sample or a stream",
       "containers", query=(Param("stream", "boolean", "a sample a second (default true)"),),
       answer="one Stats object a line", answer_type=NDJSON)  # fmt: skip
def containers_stats(request: Request) -> Response:
    ref = request.params[_ID]
    if not request.flag("stream", True):
        with engine() as e:
            return json_response(plain(e.stats(ref)))
    held = contextlib.ExitStack()
    e = held.enter_context(engine())
    try:
        first = e.stats(ref)  # a missing container is a 404, not an empty stream
    except BaseException:
        held.close()
        raise

    def stream() -> Iterator[bytes]:
        sample = first
        while True:
            yield json.dumps(plain(sample)).encode() + b"\n"
            if request.gone(1.0):
                return
            try:
                sample = e.stats(ref)
            except LaminaError:
                return  # removed meanwhile: the stream ends

    return Response(body=Held(stream(), held), content_type=NDJSON)


@route("GET", "/v1/containers/{id}/changes", "Filesystem changes (diff)", "containers",
       answer=_JSON_LIST)  # fmt: skip
def containers_changes(request: Request) -> Response:
    with engine() as e:
        return json_response([plain(c) for c in e.diff(request.params[_ID])])


@route("POST", "/v1/containers/{id}/commit", "An image of the container's changes",
       "containers", body=m.ContainerCommit, status=201, answer=_JSON_OBJECT)  # fmt: skip
def containers_commit(request: Request) -> Response:
    body = m.parse(m.ContainerCommit, request.json())
    with engine() as e:
        image_id = e.commit(request.params[_ID], body.reference, changes=body.changes,
                            message=body.message, author=body.author, pause=body.pause)  # fmt: skip
    return json_response({"Id": image_id}, 201)


@route("POST", "/v1/containers/{id}/update", "New resource limits", "containers",
       body=m.ContainerUpdate, status=204)  # fmt: skip
def containers_update(request: Request) -> Response:
    from lamina.engine._options import parse_resources, parse_restart

    body = m.parse(m.ContainerUpdate, request.json())
    limits = body.model_dump(exclude={"restart"})
    resources = None
    if any(v is not None for v in limits.values()) or body.restart is None:
        resources = parse_resources(**limits, cpu_count=os.cpu_count(), for_update=True)
    policy = parse_restart(body.restart) if body.restart is not None else None
    with engine() as e:
        e.update(request.params[_ID], resources, restart=policy)
    return Response(status=204)


# -- attach: the connection taken over ---------------------------------------------------


class _FrameWriter:
    """A container's output stream to the client: Docker's frames, or raw bytes for a
    container with a terminal (one stream, as Docker's)."""

    def __init__(self, sock: Any, stream: int, raw: bool) -> None:
        self._sock = sock
        self._header = struct.pack(">B", stream) + b"\0\0\0"
        self._raw = raw

    def write(self, data: bytes) -> int:
        if data:
            payload = data if self._raw else self._header + struct.pack(">I", len(data)) + data
            self._sock.sendall(payload)
        return len(data)

    def flush(self) -> None:
        pass


class _SocketReader:
    """The client's bytes after its request (what it sent early first) as the
    container's stdin; its half-close is the container's EOF."""

    def __init__(self, sock: Any, early: bytes) -> None:
        self._sock = sock
        self._early = early

    def read(self, size: int = 8192) -> bytes:
        if self._early:
            out, self._early = self._early[:size], self._early[size:]
            return out
        try:
            return bytes(self._sock.recv(size))
        except OSError:
            return b""


@route("POST", "/v1/containers/{id}/attach",
       "Attach to the container's stdio (HTTP upgrade, then raw bytes both ways)",
       "containers", query=(
           Param("stdin", "boolean", "the client's bytes to the container's stdin"),
           Param("start", "boolean", "start it once attached (run, start -a): no output lost"),
           Param("detach_keys", "string", "with a TTY, the keys (Docker's notation, default "
                 "ctrl-p,ctrl-q) that end the stream and leave the container running")),
       status=101, answer="Docker's multiplexed frames (raw bytes with a TTY)",
       answer_type=MULTIPLEXED)  # fmt: skip
def containers_attach(request: Request) -> Response:
    ref = request.params[_ID]
    if "upgrade" not in request.headers.get("connection", "").lower() or not request.headers.get(
        "upgrade"
    ):
        raise HttpError(400, "attach needs an upgrade: Connection: Upgrade and Upgrade: tcp")
    with_stdin, start = request.flag("stdin"), request.flag("start")
    keys = detach_keys_arg(request.arg("detach_keys"))
    with engine() as e:
        ctr = e.get(ref)  # 404 before the upgrade
    raw = ctr.config.tty

    def takeover(sock: Any, early: bytes) -> None:
        stdin = _SocketReader(sock, early) if with_stdin else None
        with engine() as e:
            try:
                e.attach(ctr.id, stdin=stdin, stdout=_FrameWriter(sock, 1, raw),  # type: ignore[arg-type]
                         stderr=_FrameWriter(sock, 2, raw), tty=raw, start=start,  # type: ignore[arg-type]
                         detach_keys=keys)  # fmt: skip
            except LaminaError as err:
                with contextlib.suppress(OSError):
                    _FrameWriter(sock, 2, raw).write(f"lamina: error: {err}\n".encode())
            except OSError:
                return  # the client went away: the container goes on (detached)
            finally:
                # Wakes our reader of its stdin, still blocked in recv (closing alone
                # would not end the connection) and tells the client: the end (or a detach).
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    return Response(status=101, content_type=MULTIPLEXED, takeover=takeover,
                    headers=[("Connection", "Upgrade"), ("Upgrade", "tcp")])  # fmt: skip


def detach_keys_arg(value: str | None) -> bytes | None:
    """Detach keys given in Docker's notation (None: not given), or a 400 naming them."""
    if value is None:
        return None
    from lamina.runtime._term import parse_detach_keys

    try:
        return parse_detach_keys(value)
    except LaminaError as e:
        raise HttpError(400, str(e)) from None


@route("POST", "/v1/containers/{id}/resize", "Resize the container's terminal", "containers",
       query=(Param("h", "integer", "rows", required=True),
              Param("w", "integer", "columns", required=True)), status=204)  # fmt: skip
def containers_resize(request: Request) -> Response:
    rows, cols = request.integer("h"), request.integer("w")
    if rows is None or cols is None or rows <= 0 or cols <= 0:
        raise HttpError(400, "query parameters h and w: positive integers required")
    with engine() as e:
        e.resize(request.params[_ID], rows, cols)
    return Response(status=204)


# -- cp: the archive API -----------------------------------------------------------------------

_PATH = Param("path", "string", "a path in the container", required=True)
_STAT_HEADER = "X-Lamina-Path-Stat"


def _path_arg(request: Request) -> str:
    path = request.arg("path")
    if not path:
        raise HttpError(400, "query parameter path: required")
    return path


@route("GET", "/v1/containers/{id}/archive", "A tar stream of a path in the container",
       "containers", query=(_PATH, Param("follow_link", "boolean", "archive a symlink's target")),
       answer="a tar stream", answer_type=TAR)  # fmt: skip
def containers_archive_get(request: Request) -> Response:
    ref, path = request.params[_ID], _path_arg(request)
    held = contextlib.ExitStack()
    e = held.enter_context(engine())
    try:
        stat = e.stat_path(ref, path)
        header = base64.b64encode(json.dumps(plain(stat)).encode()).decode()
        if request.method == "HEAD":
            held.close()
            return Response(status=200, content_type=TAR, headers=[(_STAT_HEADER, header)])
        chunks = e.copy_out(ref, path, follow_link=request.flag("follow_link"))
    except BaseException:
        held.close()
        raise

    return Response(body=Held(chunks, held), content_type=TAR, headers=[(_STAT_HEADER, header)])


@route("PUT", "/v1/containers/{id}/archive", "Extract a tar stream into a directory",
       "containers", query=(_PATH,), body=TAR, status=204)  # fmt: skip
def containers_archive_put(request: Request) -> Response:
    with engine() as e:
        e.copy_in(request.params[_ID], _path_arg(request), request.stream())
    return Response(status=204)


# -- exec ---------------------------------------------------------------------------------------


@route("POST", "/v1/containers/{id}/exec", "Make an exec (run it with /v1/exec/{id}/start)",
       "exec", body=m.ExecCreate, status=201, answer=m.IdResponse)  # fmt: skip
def exec_create(request: Request) -> Response:
    body = m.parse(m.ExecCreate, request.json())
    detach_keys_arg(body.detach_keys)  # checked now: its start has no answer for it
    with engine() as e:
        ctr = e.get(request.params[_ID])
    exec_id = os.urandom(32).hex()
    api = _api()
    with api.lock:
        api.execs[exec_id] = {"container": ctr.id, "spec": body, "running": False,
                              "exit_code": None, "made": time.monotonic()}  # fmt: skip
        _forget_old_execs(api)
    return json_response({"Id": exec_id}, 201)


def _forget_old_execs(api: Api) -> None:
    """Execs ended an hour ago or more are forgotten (the daemon keeps no other state)."""
    old = time.monotonic() - 3600
    for key in [k for k, v in api.execs.items() if not v["running"] and v["made"] < old]:
        del api.execs[key]


def _exec_entry(exec_id: str) -> dict[str, Any]:
    with _api().lock:
        entry = _api().execs.get(exec_id)
    if entry is None:
        raise HttpError(404, f"no such exec: {exec_id}")
    return entry


@route("POST", "/v1/exec/{id}/start",
       "Run an exec: its output as multiplexed frames (raw bytes with a TTY); with an "
       "upgrade (Connection: Upgrade, Upgrade: tcp) as it comes, and the client's bytes "
       "as its stdin (a half-close is its EOF)", "exec",
       query=(Param("stdin", "boolean", "the client's bytes to the exec's stdin (upgrade)"),
              Param("h", "integer", "the terminal's first rows"),
              Param("w", "integer", "the terminal's first columns")),
       answer="Docker's multiplexed frames (raw bytes with a TTY)",
       answer_type=MULTIPLEXED)  # fmt: skip
def exec_start(request: Request) -> Response:
    exec_id = request.params[_ID]
    entry = _exec_entry(exec_id)
    upgrade = _wants_upgrade(request)
    size = _terminal_size(request)
    with _api().lock:
        if entry["running"] or entry["exit_code"] is not None:
            raise HttpError(409, f"exec {exec_id} has been started already")
        entry["running"] = True
    if upgrade:
        return Response(status=101, content_type=MULTIPLEXED,
                        takeover=lambda sock, early: _exec_relayed(
                            entry, sock, early, with_stdin=request.flag("stdin"), size=size),
                        headers=[("Connection", "Upgrade"), ("Upgrade", "tcp")])  # fmt: skip
    spec: m.ExecCreate = entry["spec"]
    try:
        with engine() as e:
            result = e.exec(entry["container"], spec.cmd, env=spec.env, user=spec.user,
                            workdir=spec.workdir, tty=spec.tty)  # fmt: skip
    except LaminaError as err:
        if err.exit_code not in (126, 127):
            raise
        entry["exit_code"] = err.exit_code
        return Response(body=frame("stderr", _exec_error_line(err)), content_type=MULTIPLEXED)
    finally:
        entry["running"] = False
    entry["exit_code"] = result.exit_code
    body = b""
    if result.stdout:
        body += frame("stdout", result.stdout)
    if result.stderr:
        body += frame("stderr", result.stderr)
    return Response(body=body, content_type=MULTIPLEXED)


def _wants_upgrade(request: Request) -> bool:
    connection = request.headers.get("connection", "").lower()
    return "upgrade" in connection and bool(request.headers.get("upgrade"))


def _terminal_size(request: Request) -> tuple[int, int] | None:
    rows, cols = request.integer("h"), request.integer("w")
    if rows is None and cols is None:
        return None
    if rows is None or cols is None or rows <= 0 or cols <= 0:
        raise HttpError(400, "query parameters h and w: positive integers required")
    return rows, cols


def _exec_error_line(err: LaminaError) -> bytes:
    """The command could not be run (not found, not executable): as Docker, the exec
    ends with 126/127 and the reason on its stderr."""
    return ("lamina: error: " + " ".join(str(err).split()) + "\n").encode()


def _exec_relayed(entry: dict[str, Any], sock: Any, early: bytes, *, with_stdin: bool,
                  size: tuple[int, int] | None, gone_detaches: bool = False) -> None:  # fmt: skip
    """An exec over the taken-over connection: its output to the client as it comes
    (frames, raw with a TTY), the client's bytes to its stdin through a pipe (TLS
    sockets cannot be handed to a process). A client gone kills the exec's process
    (``ExecSink``), unless ``gone_detaches`` (Docker's API with a terminal: the docker
    CLI reads the detach keys itself and just leaves, and dockerd's exec runs on):
    then its output is dropped. The connection is shut down once the exit code (or
    the error that kept it from running) is recorded, so the client's ``/json`` after
    the end of the stream finds it."""
    from lamina.runtime._types import ExecSink

    spec: m.ExecCreate = entry["spec"]
    stdin_fd = feeder = None
    if with_stdin:
        stdin_fd, write_end = os.pipe2(os.O_CLOEXEC)
        feeder = threading.Thread(target=_feed_stdin, args=(sock, early, write_end),
                                  daemon=True)  # fmt: skip
        feeder.start()
    writers = {1: _FrameWriter(sock, 1, spec.tty), 2: _FrameWriter(sock, 2, spec.tty)}

    client_gone = False

    def write(stream: int, data: bytes) -> None:
        nonlocal client_gone
        if client_gone:
            return
        try:
            writers[stream].write(data)
        except OSError:
            if not gone_detaches:
                raise
            client_gone = True

    def gone() -> bool:
        return not gone_detaches and _hung_up(sock, peek=not with_stdin)

    def detached() -> None:  # the detach keys: the exec runs on, the client's stream ends
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    sink = ExecSink(write=write, gone=gone, stdin_fd=stdin_fd, size=size,
                    detached=detached)  # fmt: skip
    entry["sink"] = sink
    try:
        with engine() as e:
            result = e.exec(entry["container"], spec.cmd, env=spec.env, user=spec.user,
                            workdir=spec.workdir, tty=spec.tty, sink=sink,
                            detach_keys=detach_keys_arg(spec.detach_keys))  # fmt: skip
        entry["exit_code"] = result.exit_code
    except LaminaError as err:  # it could not run (or the container is not running)
        entry["exit_code"], entry["error"] = err.exit_code, " ".join(str(err).split())
    finally:
        entry["running"] = False
        entry.pop("sink", None)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the feeder; the client sees the end
        if feeder is not None:
            feeder.join()
        if stdin_fd is not None:
            os.close(stdin_fd)


def _feed_stdin(sock: Any, early: bytes, write_end: int) -> None:
    """The client's bytes (those sent with its request first) into the exec's stdin
    pipe, until the client's half-close, the end of the exec or its detach (the
    runtime watches a terminal's input for the keys: ``ExecSink.detached``)."""
    reader = _SocketReader(sock, early)
    try:
        while data := reader.read(65536):
            write_all(write_end, data)
    except OSError:
        pass  # the exec has ended (its stdin closed)
    finally:
        os.close(write_end)


def _hung_up(sock: Any, *, peek: bool) -> bool:
    """Whether the client has gone: a hang-up (a unix socket closed whole), or, when it
    sends no stdin, any end of its side. (Over TCP, a client that half-closed its stdin
    and then went away is noticed at the exec's next output.)"""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
        events = dict(poller.poll(0)).get(sock.fileno(), 0)
    except (OSError, ValueError):
        return True
    if events & (select.POLLHUP | select.POLLERR):
        return True
    if peek and events & select.POLLIN:
        from lamina.daemon._http import _peek_closed

        return _peek_closed(sock)
    return False


@route("POST", "/v1/exec/{id}/resize", "Resize a running exec's terminal", "exec",
       query=(Param("h", "integer", "rows", required=True),
              Param("w", "integer", "columns", required=True)), status=204)  # fmt: skip
def exec_resize(request: Request) -> Response:
    entry = _exec_entry(request.params[_ID])
    size = _terminal_size(request)
    if size is None:
        raise HttpError(400, "query parameters h and w: positive integers required")
    sink = entry.get("sink")
    resize = sink.resize if sink is not None else None
    if resize is None:
        raise HttpError(409, f"exec {request.params[_ID]} has no running terminal to resize")
    resize(*size)
    return Response(status=204)


@route("GET", "/v1/exec/{id}/json", "An exec's state and exit code", "exec",
       answer=m.ExecInspect)  # fmt: skip
def exec_inspect(request: Request) -> Response:
    entry = _exec_entry(request.params[_ID])
    return json_response({"Id": request.params[_ID], "ContainerId": entry["container"],
                          "Running": entry["running"], "ExitCode": entry["exit_code"],
                          "Error": entry.get("error")})  # fmt: skip


# -- images --------------------------------------------------------------------------------------


@route("GET", "/v1/images", "List images", "images", answer=_JSON_LIST)
def images_list(_request: Request) -> Response:
    with engine() as e:
        records = e.images.images.list()
    return json_response([{**plain(r), "id": r.id, "tags": r.tags, "repo_digests": r.repo_digests}
                          for r in records])  # fmt: skip


@route("GET", "/v1/images/{name}", "Inspect an image", "images", answer=_JSON_OBJECT)
def images_inspect(request: Request) -> Response:
    with engine() as e:
        return json_response(e.inspect_image(request.params["name"]))


@route("POST", "/v1/images/{name}/tag", "Tag an image", "images", body=m.ImageTag, status=201)
def images_tag(request: Request) -> Response:
    body = m.parse(m.ImageTag, request.json())
    with engine() as e:
        e.tag_image(request.params["name"], body.target)
    return Response(status=201)


@route("DELETE", "/v1/images/{name}", "Remove an image (rmi)", "images",
       query=(Param("force", "boolean", "untag and remove even if tagged twice"),),
       answer=_JSON_OBJECT)  # fmt: skip
def images_remove(request: Request) -> Response:
    with engine() as e:
        result = e.remove_image(request.params["name"], force=request.flag("force"))
    return json_response(plain(result))


@route("POST", "/v1/images/prune", "Remove dangling (or all unused) images", "images",
       query=(Param("all", "boolean", "every unused image"),), answer=_JSON_OBJECT)  # fmt: skip
def images_prune(request: Request) -> Response:
    with engine() as e:
        result = e.prune_images(all_unused=request.flag("all"))
    return json_response(plain(result))


class _QueueProgress:
    """A registry progress sink that hands events to the response stream."""

    def __init__(self) -> None:
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def event(self, ev: Any) -> None:
        # advance too (about once per MiB): a client's bars move as in-process
        self.events.put({"status": ev.kind, "id": ev.digest, "what": ev.what, "size": ev.size,
                         "advance": ev.advance, "message": ev.message})  # fmt: skip


def _transfer(request: Request, work: Any) -> Response:
    """Run ``work(progress)`` (a pull or push) in a thread of its own; its progress
    events, then its result or error line, as JSON lines. A client that goes away stops
    reading; the transfer finishes (its leases keep the store consistent either way)."""
    sink = _QueueProgress()

    def run() -> None:
        try:
            result = work(sink)
            sink.events.put({"status": "complete", "result": result})
        except LaminaError as e:
            sink.events.put({"error": " ".join(str(e).split()), "code": status_of(e)})
        except Exception as e:  # a bug: said, not hidden
            sink.events.put({"error": internal_error(e), "code": 500})
        finally:
            sink.events.put(None)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()

    return Response(body=drain_json_lines(sink.events, request), content_type=NDJSON)


@route("POST", "/v1/images/pull", "Pull an image (progress as JSON lines)", "images",
       query=(Param("reference", "string", "what to pull", required=True),
              Param("platform", "string", "OS/ARCH[/VARIANT]")),
       answer=_PROGRESS, answer_type=NDJSON)  # fmt: skip
def images_pull(request: Request) -> Response:
    reference = request.arg("reference")
    if not reference:
        raise HttpError(400, "query parameter reference: required")
    from lamina.image import parse_reference

    try:
        parse_reference(reference)
    except ValueError as e:
        raise HttpError(400, f"query parameter reference: {e}")
    platform = request.arg("platform")

    def work(progress: Any) -> Any:
        with engine() as e:
            rec = e.pull_image(reference, platform=platform, progress=progress)
            return {"id": rec.id, "digest": rec.digest}

    return _transfer(request, work)


@route("POST", "/v1/images/{name}/push", "Push an image (progress as JSON lines)", "images",
       query=(Param("destination", "string", "push under this name"),),
       answer=_PROGRESS, answer_type=NDJSON)  # fmt: skip
def images_push(request: Request) -> Response:
    name, destination = request.params["name"], request.arg("destination")
    with engine() as e:
        e.images.images.resolve(name)  # 404 before the stream starts

    def work(progress: Any) -> Any:
        with engine() as e:
            return {"digest": e.push_image(name, destination, progress=progress)}

    return _transfer(request, work)


@route("GET", "/v1/images/save", "Images as one archive (a tar stream)", "images",
       query=(Param("names", "string", "an image; repeat for more", required=True),
              Param("format", "string", "oci-archive (default) or docker-archive")),
       answer="a tar stream", answer_type=TAR)  # fmt: skip
def images_save(request: Request) -> Response:
    names = request.query.get("names") or []
    if not names:
        raise HttpError(400, "query parameter names: required")
    fmt = request.arg("format") or "oci-archive"
    if fmt not in ("oci-archive", "docker-archive"):
        raise HttpError(400, f"query parameter format: expected oci-archive or docker-archive, "
                        f"not {fmt!r}")  # fmt: skip
    reader, writer = os.pipe()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with os.fdopen(writer, "wb") as out, engine() as e:
                e.save_images(names, out, format=fmt)  # type: ignore[arg-type]
        except BaseException as ex:  # the stream ends short: the client sees a cut tar
            failure.append(ex)

    with engine() as e:
        for n in names:
            e.images.images.resolve(n)  # 404 before the stream starts
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    out = os.fdopen(reader, "rb")  # closed with the stream: the save's writes fail, it ends
    held = contextlib.ExitStack()
    held.callback(out.close)

    def stream() -> Iterator[bytes]:
        while chunk := out.read(65536):
            yield chunk

    return Response(body=Held(stream(), held), content_type=TAR)


@route("POST", "/v1/images/load", "Load images from an archive (the body)", "images",
       body=TAR, answer=_JSON_LIST)  # fmt: skip
def images_load(request: Request) -> Response:
    with engine() as e:
        records = e.load_images(request.stream())
    return json_response([{"id": r.id, "tags": r.tags} for r in records])


@route("POST", "/v1/images/import", "An image from a root filesystem tarball (the body)",
       "images", query=(Param("reference", "string", "name it"),
                        Param("message", "string", "commit message"),
                        Param("platform", "string", "OS/ARCH")),
       body=TAR, status=201, answer=_JSON_OBJECT)  # fmt: skip
def images_import(request: Request) -> Response:
    changes = request.query.get("changes") or []
    with engine() as e:
        rec = e.import_image(
            request.stream(), reference=request.arg("reference"), changes=changes,
            message=request.arg("message"), platform=request.arg("platform"),
        )  # fmt: skip
    return json_response({"id": rec.id, "tags": rec.tags}, 201)


# -- volumes -------------------------------------------------------------------------------------


@route("GET", "/v1/volumes", "List volumes", "volumes", query=(_FILTERS,), answer=_JSON_LIST)
def volumes_list(request: Request) -> Response:
    with engine() as e:
        return json_response([plain(v) for v in e.list_volumes(filters=filters_arg(request))])


@route("POST", "/v1/volumes", "Create a volume", "volumes", body=m.VolumeCreate, status=201,
       answer=_JSON_OBJECT)  # fmt: skip
def volumes_create(request: Request) -> Response:
    body = m.parse(m.VolumeCreate, request.json())
    with engine() as e:
        return json_response(plain(e.create_volume(body.name, body.labels)), 201)


@route("GET", "/v1/volumes/{name}", "Inspect a volume", "volumes", answer=_JSON_OBJECT)
def volumes_inspect(request: Request) -> Response:
    with engine() as e:
        return json_response(plain(e.volume(request.params["name"])))


@route("DELETE", "/v1/volumes/{name}", "Remove a volume", "volumes",
       query=(Param("force", "boolean", "no error if it is missing"),), status=204)  # fmt: skip
def volumes_remove(request: Request) -> Response:
    with engine() as e:
        e.remove_volume(request.params["name"], force=request.flag("force"))
    return Response(status=204)


@route("POST", "/v1/volumes/prune", "Remove unused volumes", "volumes",
       query=(Param("all", "boolean", "named ones too"), _FILTERS),
       answer=_JSON_OBJECT)  # fmt: skip
def volumes_prune(request: Request) -> Response:
    with engine() as e:
        result = e.prune_volumes(all=request.flag("all"), filters=filters_arg(request))
    return json_response(plain(result))


# ``POST /v1/build`` lives in its own module; importing it registers its route.
from lamina.daemon import _build as _build  # noqa: E402
from lamina.daemon import _deploy as _deploy  # noqa: E402  (/v1/deployments, /v1/secrets)
