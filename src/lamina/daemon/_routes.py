"""Routes: each one a method, a path template, a handler and what the OpenAPI
document says of it (query parameters, the body's pydantic model, the answer). The
OpenAPI 3 document is generated from these declarations (``openapi``), so it cannot
drift from what is served."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from lamina.daemon._http import HttpError, Request, Response

# What a stream's chunks are.
NDJSON = "application/x-ndjson"  # one JSON object a line
MULTIPLEXED = "application/vnd.docker.multiplexed-stream"  # Docker's 8-byte frame headers
TAR = "application/x-tar"


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # string | integer | boolean
    description: str
    required: bool = False


@dataclass
class Route:
    method: str
    path: str  # /v1/containers/{id}/start
    handler: Callable[[Request], Response]
    summary: str
    tag: str
    query: tuple[Param, ...] = ()
    body: Any = None  # a pydantic model class, or a media type of a raw body
    status: int = 200
    answer: Any = None  # a pydantic model class, a JSON schema, or None: no body
    answer_type: str = "application/json"
    pattern: re.Pattern[str] = field(init=False)
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        # {name}: one path segment; {name:path}: the rest, slashes included (an image
        # name as Docker's clients send it).
        self.names = tuple(re.findall(r"{(\w+)(?::path)?}", self.path))
        regex = re.sub(r"{(\w+):path}", r"(?P<\1>.+)", self.path)
        regex = re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", regex)
        self.pattern = re.compile(f"^{regex}$")


H = Callable[[Request], Response]


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, path: str, summary: str, tag: str, **kw: Any) -> Callable[[H], H]:
        def register(handler: H) -> H:
            self.routes.append(Route(method, path, handler, summary, tag, **kw))
            return handler

        return register

    def find(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route of ``path`` (as sent: a parameter may hold an escaped ``/``, as an
        image name does); literal paths before templates (``/v1/images/pull``)."""
        allowed = False
        for route in sorted(self.routes, key=lambda r: len(r.names)):
            m = route.pattern.match(path)
            if m is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route, {k: unquote(v) for k, v in m.groupdict().items()}
            allowed = True
        if allowed:
            raise HttpError(405, f"method {method} not allowed on {path}")
        raise HttpError(404, f"no such endpoint: {method} {unquote(path)}")


_ERROR = {"$ref": "#/components/schemas/Error"}


def openapi(router: Router, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route (its pydantic models as components)."""
    from pydantic import BaseModel

    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "properties": {"message": {"type": "string"}},
            "required": ["message"],
        }
    }

    def model_ref(model: type[BaseModel]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    for route in router.routes:
        op: dict[str, Any] = {
            "summary": route.summary,
            "tags": [route.tag],
            "operationId": route.handler.__name__.strip("_"),
        }
        params = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in route.names
        ]
        params += [
            {
                "name": p.name,
                "in": "query",
                "required": p.required,
                "description": p.description,
                "schema": {"type": p.type},
            }
            for p in route.query
        ]
        if params:
            op["parameters"] = params
        if isinstance(route.body, str):
            op["requestBody"] = {
                "required": True,
                "content": {route.body: {"schema": {"type": "string", "format": "binary"}}},
            }
        elif route.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": model_ref(route.body)}},
            }
        ok: dict[str, Any] = {"description": "success"}
        if route.answer is not None:
            if isinstance(route.answer, type) and issubclass(route.answer, BaseModel):
                schema = model_ref(route.answer)
            elif route.answer_type == "application/json":
                schema = route.answer
            else:
                schema = {"type": "string", "format": "binary", "description": route.answer}
            ok["content"] = {route.answer_type: {"schema": schema}}
        errors = {
            "400": "bad parameter or body",
            "401": "credentials missing or wrong",
            "404": "no such object",
            "409": "conflict with the object's state",
            "500": "server error (a bug)",
        }
        op["responses"] = {
            str(route.status): ok,
            **{
                code: {"description": text, "content": {"application/json": {"schema": _ERROR}}}
                for code, text in errors.items()
            },
        }
        openapi_path = re.sub(r"{(\w+)}", r"{\1}", route.path)
        paths.setdefault(openapi_path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "lamina daemon API",
            "version": version,
            "description": "lamina's native REST API over the engine (docs/DAEMON.md).",
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }
