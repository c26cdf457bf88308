"""Answers of Docker's read endpoints validated against Docker's own definition of the
Engine API 1.44 (Swagger 2.0, /work/shared/docker-api/engine-api-v1.44.yaml) with
openapi-schema-validator: a client generated from that definition reads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dockerapi_fixtures import docker_endpoint
from openapi_schema_validator import OAS30Validator

SPEC = Path("/work/shared/docker-api/engine-api-v1.44.yaml")


def _nullable(node: Any) -> Any:
    """Swagger 2.0's ``x-nullable`` as OpenAPI 3.0's ``nullable`` (nothing else is
    nullable: an answer's null where Docker's definition has a list is an error)."""
    if isinstance(node, dict):
        out = {k: _nullable(v) for k, v in node.items()}
        if out.pop("x-nullable", False) is True:
            out["nullable"] = True
        return out
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    if not SPEC.is_file():
        pytest.skip(f"{SPEC} is not on this machine")
    return _nullable(yaml.safe_load(SPEC.read_text()))  # type: ignore[no-any-return]


def problems(spec: dict[str, Any], template: str, answer: Any) -> list[str]:
    """Where ``answer`` breaks the 200 schema of ``GET template`` (with the whole
    definitions section at hand for its $refs)."""
    responses = spec["paths"][template]["get"]["responses"]
    schema = (responses.get(200) or responses["200"])["schema"]  # YAML reads 200 as a number
    validator = OAS30Validator({**schema, "definitions": spec["definitions"]})
    return [f"{template}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(answer)]  # fmt: skip


def test_read_answers_match_dockers_schema(tmp_path: Path, spec: dict[str, Any]) -> None:
    from runtime_fixtures import IMAGE_REF, import_busybox

    import_busybox(tmp_path / "root", tmp_path)
    with docker_endpoint(tmp_path / "root") as ep:
        ep.docker_ok("network", "create", "--label", "a=b", "--subnet", "10.236.0.0/24", "sn")
        ep.docker_ok("volume", "create", "--label", "a=b", "sv")
        ep.docker_ok("volume", "create", "plain")
        ep.docker_ok("run", "--name", "ran", "-v", "sv:/data", "--label", "a=b", IMAGE_REF,
                     "true")  # fmt: skip
        ep.docker_ok("create", "--name", "made", "--network", "sn", "-p", "8080:80", IMAGE_REF,
                     "sleep", "1")  # fmt: skip
        transport = httpx.HTTPTransport(uds=str(ep.socket))
        with httpx.Client(transport=transport, base_url="http://docker/v1.44") as http:

            def get(path: str) -> Any:
                r = http.get(path)
                assert r.status_code == 200, (path, r.text)
                return json.loads(r.text)

            found = [
                *problems(spec, "/version", get("/version")),
                *problems(spec, "/info", get("/info")),
                *problems(spec, "/system/df", get("/system/df")),
                *problems(spec, "/containers/json", get("/containers/json?all=1")),
                *problems(spec, "/containers/{id}/json", get("/containers/ran/json")),
                *problems(spec, "/containers/{id}/json", get("/containers/made/json")),
                *problems(spec, "/networks", get("/networks")),
                *problems(spec, "/networks/{id}", get("/networks/sn")),
                *problems(spec, "/networks/{id}", get("/networks/bridge")),
                *problems(spec, "/volumes", get("/volumes")),
                *problems(spec, "/volumes/{name}", get("/volumes/sv")),
                *problems(spec, "/volumes/{name}", get("/volumes/plain")),
                *problems(spec, "/images/json", get("/images/json")),
                *problems(spec, "/images/{name}/json", get(f"/images/{IMAGE_REF}/json")),
                *problems(spec, "/images/{name}/history", get(f"/images/{IMAGE_REF}/history")),
            ]
    assert not found, "\n".join(found)
