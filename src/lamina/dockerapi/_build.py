"""Docker's classic builder protocol (``POST /build``) on lamina's builder.

The body is the context as a tar (plain or compressed), extracted into a scratch
directory registered on a lease (a daemon killed mid-build leaves nothing the next
sweep does not remove); the answer is Docker's JSON-lines stream: ``stream`` lines
(``Step 1/3 : FROM ...``, the steps' output), ``{"aux": {"ID": ...}}`` and, on
failure, ``{"errorDetail": {"message", "code"}, "error"}``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lamina.builder._progress import Progress, Step
from lamina.daemon import _api as lapi
from lamina.daemon._http import HttpError, Request, Response
from lamina.dockerapi._images import Put, build_credentials, json_lines
from lamina.dockerapi._router import route
from lamina.errors import LaminaError

# Query parameters the docker CLI sends with empty or zero values: an error when set.
_UNSUPPORTED = ("cpusetcpus", "cpusetmems", "cpushares", "cpuquota", "cpuperiod", "memory",
                "memswap", "cgroupparent", "shmsize", "squash", "isolation", "extrahosts",
                "securityopt", "remote", "ulimits", "outputs")  # fmt: skip
_UNSET = ("", "0", "null", "[]", "{}", "false", "default")


class _StreamProgress(Progress):
    """The builder's steps as Docker's ``stream`` lines."""

    def __init__(self, put: Put, quiet: bool) -> None:
        super().__init__()
        self._put = put
        self._quiet = quiet
        self.failed_code = 0  # a failed RUN's exit code (Docker's errorDetail code)

    def _say(self, text: str) -> None:
        if not self._quiet:
            self._put({"stream": text})

    def _started(self, step: Step) -> None:
        self._say(_step_line(step))

    def _cached(self, step: Step) -> None:
        self._say(_step_line(step) + " ---> Using cache\n")

    def _failed(self, step: Step, message: str) -> None:
        found = re.search(r"exit code: (\d+)$", message)
        if found:
            self.failed_code = int(found.group(1))

    def _line(self, step: Step, line: str) -> None:
        self._say(line + "\n")

    def _done(self, step: Step) -> None:
        self._say(f" ---> done in {step.elapsed():.1f}s\n")

    def _warn(self, message: str) -> None:
        self._say(f"[WARNING]: {message}\n")


def _step_line(step: Step) -> str:
    """Docker's ``Step 2/5 : RUN make`` of the builder's ``[stage 2/5] RUN make``."""
    found = re.match(r"\[(?:\S+ )?(\d+/\d+)\] (.*)$", step.name, re.S)
    if found:
        return f"Step {found.group(1)} : {found.group(2)}\n"
    return f"Step {step.number} : {step.name}\n"


def _json_map(request: Request, name: str) -> dict[str, str]:
    raw = request.arg(name)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise HttpError(400, f"query parameter {name}: expected a JSON object")
    # A build arg given without a value (``--build-arg X`` with X unset) is null.
    return {str(k): str(v) for k, v in data.items() if v is not None}


def _options(request: Request, context: Path) -> dict[str, Any]:
    for name in _UNSUPPORTED:
        value = request.arg(name)
        if value is not None and value.lower() not in _UNSET:
            raise HttpError(400, f"build option {name} is not supported by lamina")
    version = request.arg("version") or "1"
    if version != "1":
        raise HttpError(400, f"builder version {version} is not supported: use the classic one (1)")
    network = request.arg("networkmode") or "default"
    if network not in ("default", "host", "none", "bridge"):
        raise HttpError(400, f"query parameter networkmode: {network!r} is not supported")
    dockerfile = request.arg("dockerfile") or "Dockerfile"
    path = (context / dockerfile).resolve()
    if not path.is_relative_to(context.resolve()):
        raise HttpError(400, f"query parameter dockerfile: {dockerfile!r} is outside the context")
    request.flag("rm", True)  # step containers are always removed
    request.flag("forcerm")
    return {
        "context": context,
        "dockerfile": path,
        "tags": [t for t in request.query.get("t", []) if t],
        "build_args": _json_map(request, "buildargs"),
        "target": request.arg("target") or None,
        "no_cache": request.flag("nocache"),
        "pull": request.flag("pull"),
        "labels": _json_map(request, "labels"),
        "platform": request.arg("platform") or None,
        "network": "default" if network == "bridge" else network,
    }


@route("POST", "/build", "Build an image (the classic builder protocol)", "images")
def build(request: Request) -> Response:
    from lamina.builder._upload import receive_context

    quiet = request.flag("q")
    upload = receive_context(lapi._api().engines.root, request.stream(), "docker-build-context",
                             "context")  # fmt: skip
    try:
        options = _options(request, upload.scratch / "context")
        credentials = build_credentials(request)  # its FROM pulls' (X-Registry-Config)
    except BaseException:
        upload.drop()
        raise

    def work(put: Put) -> None:
        from lamina.builder import BuildOptions

        progress = _StreamProgress(put, quiet)
        try:
            with lapi.engine() as e:
                config = e.registry_config().with_credentials(credentials)
                result = e.build(BuildOptions(**options, registry_config=config), progress)
            put({"aux": {"ID": result.image_id}})
            if quiet:
                put({"stream": result.image_id + "\n"})
                return
            put({"stream": f"Successfully built {result.image_id.split(':')[-1][:12]}\n"})
            for tag in options["tags"]:
                put({"stream": f"Successfully tagged {tag}\n"})
        except LaminaError as err:
            text = " ".join(str(err).split())
            code = progress.failed_code or err.exit_code or 1
            put({"errorDetail": {"message": text, "code": code}, "error": text})
        finally:
            upload.drop()

    return json_lines(request, work)

