"""Dispatch of Docker Engine API requests: the version prefix (``/v1.24`` ...
``/v1.50``, or none), the route, Docker's response headers and errors.

A route is registered on ``router`` without the version prefix (``/containers/json``);
its handler gets the daemon's ``Request`` (``request.params``: path parameters;
``request.version``-like needs: ``api_version(request)``) and returns a ``Response``.
Errors: raise ``HttpError(status, message)`` or let a LaminaError out; either becomes
Docker's ``{"message": "..."}`` with the status lamina's API gives it (``route_request``)."""

from __future__ import annotations

import re

from lamina.daemon._http import HttpError, Request, Response, error_response
from lamina.daemon._routes import Router

API_VERSION = "1.44"  # what lamina reports (``version``, the Api-Version header)
MIN_API_VERSION = "1.24"
MAX_API_VERSION = "1.50"  # the newest accepted in a path (the docker CLI 28 speaks it)

router = Router()
route = router.add

_MODULES = ("_system", "_containers", "_streams", "_images", "_build", "_networks", "_volumes")
_VERSIONED = re.compile(r"^/v(\d+)\.(\d+)(/.*)$")
_loaded = False


def _load() -> None:
    """Import the route modules once (each registers its routes on ``router``)."""
    global _loaded
    if _loaded:
        return
    import importlib

    for name in _MODULES:
        importlib.import_module(f"lamina.dockerapi.{name}")
    _loaded = True


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def api_version(request: Request) -> str:
    """The API version the client asked for in its path, else the one lamina reports."""
    return request.headers.get("x-lamina-api-version", API_VERSION)


def headers() -> list[tuple[str, str]]:
    """What dockerd sends on every answer."""
    from lamina import __version__

    return [
        ("Api-Version", API_VERSION),
        ("Docker-Experimental", "false"),
        ("Ostype", "linux"),
        ("Server", f"lamina/{__version__} (linux)"),
    ]


def dispatch(request: Request) -> Response:
    _load()
    response = _dispatch(request)
    response.headers = [*headers(), *response.headers]
    return response


def _dispatch(request: Request) -> Response:
    path = request.path.split("?", 1)[0]
    m = _VERSIONED.match(path)
    if m:
        asked = f"{m.group(1)}.{m.group(2)}"
        if _version_tuple(asked) < _version_tuple(MIN_API_VERSION):
            return error_response(
                400,
                f"client version {asked} is too old. Minimum supported API version is "
                f"{MIN_API_VERSION}, please upgrade your client to a newer version",
            )
        if _version_tuple(asked) > _version_tuple(MAX_API_VERSION):
            return error_response(
                400,
                f"client version {asked} is too new. Maximum supported API version is "
                f"{MAX_API_VERSION}",
            )
        request.headers["x-lamina-api-version"] = asked
        path = m.group(3)
    from lamina.daemon._api import route_request

    return route_request(router, request, path)


def filters_arg(request: Request) -> dict[str, list[str]] | None:
    """``filters`` in either of Docker's encodings: ``{"label": ["a=b"]}`` (docker-py,
    Compose) or ``{"label": {"a=b": true}}`` (the docker CLI); as key -> values."""
    import json

    raw = request.arg("filters")
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        raise HttpError(400, "invalid filter: filters is not a JSON object") from None
    if not isinstance(data, dict):
        raise HttpError(400, "invalid filter: filters is not a JSON object")
    out: dict[str, list[str]] = {}
    for key, values in data.items():
        if isinstance(values, dict) and all(v is True for v in values.values()):
            values = list(values)
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise HttpError(400, f"invalid filter {key!r}: expected a list of strings")
        out[str(key)] = values
    return out
