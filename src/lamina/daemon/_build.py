"""``POST /v1/build``: ``lamina build`` served (``lamina --host ... build``).

The body is the tar ``lamina.builder._upload.pack_context`` writes (the context as
the client's build sees it under ``context/``, the Dockerfile under
``dockerfile/``, ``--secret``'s values under ``secrets/``, read by the build from
the private scratch; gzip and zstd accepted), extracted under a lease. The answer is
JSON lines: the builder's progress calls as they happen (``{"progress": "start",
"step": 2}``, ``{"progress": "output", "step": 2, "data": "..."}``, ...), which the
client replays into its own display, so that it prints what the local build
prints; then ``{"result": {...}}`` or ``{"error": "...", "code": STATUS,
"exit_code": N}`` with, for a ``BuildError``, ``"build": {"step": ..., "tail": [...]}``
(the failed step and its last output lines). A client that goes away cancels the build:
its step containers are killed and removed, its scratch dropped.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from lamina.builder._progress import Progress, Step
from lamina.daemon import _api as api
from lamina.daemon._api import route
from lamina.daemon._http import HttpError, Request, Response, drain_json_lines, internal_error
from lamina.daemon._routes import NDJSON, TAR, Param
from lamina.errors import LaminaError

_NETWORKS = ("default", "host", "none")
_COMPRESSIONS = ("gzip", "zstd")


class _RelayProgress(Progress):
    """The builder's progress calls as events for the client's display."""

    def __init__(self, put: Any) -> None:
        super().__init__()
        self._put = put

    def add(self, name: str) -> Step:
        with self.lock:
            step = super().add(name)
            self._put({"progress": "add", "step": step.number, "name": name})
            return step

    def start(self, step: Step) -> None:
        with self.lock:
            super().start(step)
            self._put({"progress": "start", "step": step.number})

    def cached(self, step: Step) -> None:
        with self.lock:
            super().cached(step)
            self._put({"progress": "cached", "step": step.number})

    def output(self, step: Step, data: bytes) -> None:
        with self.lock:
            super().output(step, data)
            text = data.decode("utf-8", "surrogateescape")
            self._put({"progress": "output", "step": step.number, "data": text})

    def done(self, step: Step) -> None:
        with self.lock:
            super().done(step)
            self._put({"progress": "done", "step": step.number})

    def fail(self, step: Step, message: str) -> None:
        with self.lock:
            super().fail(step, message)
            self._put({"progress": "fail", "step": step.number, "message": message})

    def warn(self, message: str) -> None:
        with self.lock:
            super().warn(message)
            self._put({"progress": "warn", "message": message})


def _pairs(request: Request, name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in request.query.get(name, []):
        key, eq, value = item.partition("=")
        if not key or not eq:
            raise HttpError(400, f"query parameter {name}: want KEY=VALUE, not {item!r}")
        out[key] = value
    return out


def _choice(request: Request, name: str, allowed: tuple[str, ...]) -> str:
    value = request.arg(name) or allowed[0]
    if value not in allowed:
        raise HttpError(400, f"query parameter {name}: expected one of {', '.join(allowed)}, "
                        f"not {value!r}")  # fmt: skip
    return value


def _options(request: Request) -> dict[str, Any]:
    """The build's options from the query, checked before the body is read."""
    dockerfile = request.arg("dockerfile") or "Dockerfile"
    if "/" in dockerfile or dockerfile in (".", ".."):
        raise HttpError(400, f"query parameter dockerfile: a file name, not {dockerfile!r}")
    return {
        "dockerfile": dockerfile,
        "stdin": request.flag("dockerfile_stdin"),
        "tags": [t for t in request.query.get("t", []) if t],
        "build_args": _pairs(request, "build_arg"),
        "target": request.arg("target") or None,
        "no_cache": request.flag("no_cache"),
        "pull": request.flag("pull"),
        "labels": _pairs(request, "label"),
        "platform": request.arg("platform") or None,
        "network": _choice(request, "network", _NETWORKS),
        "compression": _choice(request, "compression", _COMPRESSIONS),
        "source_date_epoch": request.integer("source_date_epoch"),
    }


def _error_line(err: LaminaError) -> dict[str, Any]:
    from lamina.builder import BuildError

    line: dict[str, Any] = {"error": str(err), "code": api.status_of(err),
                            "exit_code": err.exit_code}  # fmt: skip
    if isinstance(err, BuildError):
        line["build"] = {"step": err.step, "tail": err.output_tail}
    return line


@route("POST", "/v1/build", "Build an image from a context tar (progress as JSON lines)",
       "images", query=(
           Param("t", "string", "name the image; repeat for more"),
           Param("dockerfile", "string", "the Dockerfile's name under dockerfile/ in the tar"),
           Param("dockerfile_stdin", "boolean", "the Dockerfile was given on stdin (-f -)"),
           Param("build_arg", "string", "KEY=VALUE; repeat for more"),
           Param("target", "string", "build this stage"),
           Param("no_cache", "boolean", "ignore the build cache"),
           Param("pull", "boolean", "always pull base images"),
           Param("label", "string", "KEY=VALUE; repeat for more"),
           Param("platform", "string", "OS/ARCH (only the native one)"),
           Param("network", "string", "default, host or none (for RUN)"),
           Param("compression", "string", "gzip or zstd"),
           Param("source_date_epoch", "integer", "timestamps of the image")),
       body=TAR, answer="progress events, then {result} or {error, code, exit_code}",
       answer_type=NDJSON)  # fmt: skip
def build(request: Request) -> Response:
    from lamina.builder._upload import (
        CONTEXT_DIR,
        DOCKERFILE_DIR,
        receive_context,
        received_secrets,
    )

    options = _options(request)
    upload = receive_context(api._api().engines.root, request.stream(), "build-context")
    if not (upload.scratch / DOCKERFILE_DIR / options["dockerfile"]).is_file():
        upload.drop()
        raise HttpError(400, f"the build context sent has no {DOCKERFILE_DIR}/"
                        f"{options['dockerfile']} (the Dockerfile)")  # fmt: skip
    try:  # kept in the upload's scratch: dropped with it, swept with its lease
        options["secrets"] = received_secrets(upload)
    except ValueError as e:
        upload.drop()
        raise HttpError(400, f"the build context sent: {e}") from None
    events: queue.Queue[dict[str, Any] | None] = queue.Queue()
    cancel = threading.Event()

    def run() -> None:
        from lamina.builder import BuildOptions

        try:
            (upload.scratch / CONTEXT_DIR).mkdir(exist_ok=True)
            dockerfile = upload.scratch / DOCKERFILE_DIR / options.pop("dockerfile")
            stdin = options.pop("stdin")
            opts = BuildOptions(context=upload.scratch / CONTEXT_DIR, cancel=cancel, **options)
            if stdin:
                opts.dockerfile_text = dockerfile.read_text("utf-8", "surrogateescape")
            else:
                opts.dockerfile = dockerfile
            with api.engine() as e:
                result = e.build(opts, _RelayProgress(events.put))
            done = {"image_id": result.image_id, "digest": result.digest, "tags": result.tags,
                    "steps": result.steps, "cached": result.cached,
                    "warnings": result.warnings}  # fmt: skip
            events.put({"result": done})
        except LaminaError as err:
            events.put(_error_line(err))
        except Exception as err:  # a bug: said, not hidden
            events.put({"error": internal_error(err), "code": 500})
        finally:
            upload.drop()
            events.put(None)

    threading.Thread(target=run, name="lamina-build", daemon=True).start()

    def stream() -> Iterator[bytes]:
        try:
            yield from drain_json_lines(events, request, poll=0.5)
        finally:  # the end, or a client gone (a write failed, or it hung up)
            cancel.set()

    return Response(body=stream(), content_type=NDJSON)
