"""The deployment routes (``/v1/deployments...``), the secret store's
(``/v1/secrets``) and the ingress's (``/v1/ingress...``): each translates one request
into a call of the daemon's ``lamina.deploy.Deployments`` (or ``SecretStore``, or the
root's ``lamina.ingress.Ingress``) and its answer into JSON.

The daemon makes one ``Deployments`` on its root and starts it before it serves
(``start``) and closes it after (``stop``); nothing is decided here.

A deploy with ``wait=1`` answers JSON lines: ``{"status": STATUS}`` each time the
deployment's status changes while ``Deployments.wait`` runs, then
``{"result": STATUS}`` or ``{"error": "...", "code": N}``. Secret values go in
(base64 in the body) and never come out: the listing has names, times and sizes.
"""

from __future__ import annotations

import base64
import binascii
import json
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lamina.daemon import _api as api
from lamina.daemon import _models as m
from lamina.daemon._api import route
from lamina.daemon._http import HttpError, Request, Response, internal_error, json_response
from lamina.daemon._routes import NDJSON, Param
from lamina.errors import LaminaError

_JSON_OBJECT: dict[str, Any] = {"type": "object"}
_JSON_LIST: dict[str, Any] = {"type": "array", "items": {"type": "object"}}
_STRICT = ConfigDict(extra="forbid", strict=True)
_STATUS_POLL = 0.25  # seconds between status reads while a deploy is waited for

DEPLOYMENTS: Any = None  # lamina.deploy.Deployments, set by start()
_ROOT: Path | None = None


def start(root: Path, oci_runtime: str, say: Callable[[str], None], ingress: Any = None) -> None:
    """Make the root's ``Deployments`` and start its converge thread (the daemon,
    before it serves); ``ingress``: its ``IngressOptions`` (the daemon's flags)."""
    global DEPLOYMENTS, _ROOT
    from lamina.deploy import Deployments

    _ROOT = root
    DEPLOYMENTS = Deployments(root, oci_runtime, say, ingress)
    DEPLOYMENTS.start()


def stop() -> None:
    """Stop the converge thread (the daemon, after serving)."""
    global DEPLOYMENTS
    deployments, DEPLOYMENTS = DEPLOYMENTS, None
    if deployments is not None:
        deployments.close()


def _deployments() -> Any:
    if DEPLOYMENTS is None:
        raise HttpError(503, "deployments are not served by this daemon")
    return DEPLOYMENTS


def jsonable(value: Any) -> Any:
    """What the deployment library returns as JSON values: its status classes'
    ``to_json()``, pydantic models' dumps, dataclasses through ``plain``."""
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        return to_json()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return api.plain(value)


def _name(request: Request) -> str:
    """The path's deployment name, checked as the spec checks it (a name that could
    never be a deployment's, ``..%2Fx`` say, is refused before the store is asked)."""
    from lamina.deploy._spec import Problems, check_deployment_name

    name = request.params["name"]
    problems = Problems()
    check_deployment_name(name, "", problems)
    if problems.items:
        raise HttpError(400, problems.items[0])
    return name


def _spec(request: Request) -> Any:
    from lamina.deploy._model import DeploymentSpec

    return m.parse(DeploymentSpec, request.json(limit=16 << 20))


def _spec_model() -> Any:
    """The body's model for the OpenAPI document (the spec's, once it is there)."""
    try:
        from lamina.deploy._model import DeploymentSpec
    except ImportError:
        return _JSON_OBJECT
    return DeploymentSpec


# -- deployments ----------------------------------------------------------------------------


@route("GET", "/v1/deployments", "List deployments with their status", "deployments",
       answer=_JSON_LIST)  # fmt: skip
def deployments_list(_request: Request) -> Response:
    return json_response(jsonable(_deployments().list()))


@route("POST", "/v1/deployments", "Deploy a spec (the parsed model): its plan with dry_run; "
       "with wait, JSON lines of its status until all replicas are ready", "deployments",
       query=(Param("dry_run", "boolean", "only say what would be done (the plan)"),
              Param("wait", "boolean", "stream the status until ready (JSON lines)"),
              Param("timeout", "number", "seconds to wait (with wait)")),
       body=_spec_model(), answer=_JSON_OBJECT)  # fmt: skip
def deployments_apply(request: Request) -> Response:
    spec = _spec(request)
    deployments = _deployments()
    if request.flag("dry_run"):
        return json_response(jsonable(deployments.plan(spec)))
    wait = request.flag("wait")
    timeout = _seconds(request, "timeout")
    plan = deployments.apply(spec)
    if not wait:
        return json_response(jsonable(plan))
    return _waited(request, deployments, spec.deployment, timeout, plan)


def _seconds(request: Request, name: str) -> float | None:
    value = request.arg(name)
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise HttpError(400, f"query parameter {name}: expected seconds, not {value!r}")
    if not seconds >= 0:
        raise HttpError(400, f"query parameter {name}: must be >= 0")
    return seconds


def _waited(request: Request, deployments: Any, name: str, timeout: float | None,
            plan: Any) -> Response:  # fmt: skip
    """``Deployments.wait`` in a thread; the status each time it changes, then the
    result or the error, as JSON lines. A client that goes away stops reading; the
    deployment converges on regardless."""
    done: queue.Queue[dict[str, Any]] = queue.Queue()

    def run() -> None:
        try:
            status = deployments.wait(name) if timeout is None else deployments.wait(name, timeout)
            done.put({"result": jsonable(status)})
        except LaminaError as e:
            done.put({"error": " ".join(str(e).split()), "code": api.status_of(e)})
        except Exception as e:  # a bug: said, not hidden
            done.put({"error": internal_error(e), "code": 500})

    threading.Thread(target=run, daemon=True, name=f"deploy-wait-{name}").start()

    def stream() -> Iterator[bytes]:
        yield _line({"plan": jsonable(plan)})
        last: Any = None
        while True:
            try:
                end = done.get(timeout=_STATUS_POLL)
            except queue.Empty:
                if request.gone():
                    return
                try:
                    status = jsonable(deployments.status(name))
                except LaminaError:
                    continue
                if status != last:
                    last = status
                    yield _line({"status": status})
                continue
            yield _line(end)
            return

    return Response(body=stream(), content_type=NDJSON)


def _line(value: Any) -> bytes:
    return json.dumps(value).encode() + b"\n"


@route("GET", "/v1/deployments/{name}", "Inspect a deployment: its spec and state",
       "deployments", answer=_JSON_OBJECT)  # fmt: skip
def deployments_inspect(request: Request) -> Response:
    return json_response(jsonable(_deployments().inspect(_name(request))))


@route("GET", "/v1/deployments/{name}/status", "A deployment's status: per service the "
       "desired, ready and running replicas, health, rollout", "deployments",
       answer=_JSON_OBJECT)  # fmt: skip
def deployments_status(request: Request) -> Response:
    return json_response(jsonable(_deployments().status(_name(request))))


@route("DELETE", "/v1/deployments/{name}", "Remove a deployment: its replicas, jobs, network "
       "(named volumes too with volumes); what was removed, one a line", "deployments",
       query=(Param("volumes", "boolean", "remove its named volumes too"),),
       answer={"type": "array", "items": {"type": "string"}})  # fmt: skip
def deployments_down(request: Request) -> Response:
    return json_response(_deployments().down(_name(request), volumes=request.flag("volumes")))


@route("GET", "/v1/deployments/{name}/services", "A deployment's services and their state",
       "deployments", answer=_JSON_LIST)  # fmt: skip
def services_list(request: Request) -> Response:
    status = jsonable(_deployments().status(_name(request)))
    services = status.get("services", []) if isinstance(status, dict) else []
    if isinstance(services, dict):
        services = [{"name": k, **v} for k, v in services.items()]
    return json_response(services)


@route("GET", "/v1/deployments/{name}/services/{service}/replicas",
       "A service's replica containers", "deployments", answer=_JSON_LIST)  # fmt: skip
def services_replicas(request: Request) -> Response:
    p = {**request.params, "name": _name(request)}
    return json_response(jsonable(_deployments().replicas(p["name"], p["service"])))


class ServiceScale(BaseModel):
    """``lamina service scale DEPLOYMENT/SERVICE N``."""

    model_config = _STRICT
    replicas: int = Field(ge=0, description="the replicas wanted")


@route("POST", "/v1/deployments/{name}/services/{service}/scale", "Scale a service",
       "deployments", body=ServiceScale, answer=_JSON_OBJECT)  # fmt: skip
def services_scale(request: Request) -> Response:
    body = m.parse(ServiceScale, request.json())
    p = {**request.params, "name": _name(request)}
    result = _deployments().scale(p["name"], p["service"], body.replicas)
    return json_response(jsonable(result) if result is not None else {})


@route("POST", "/v1/deployments/{name}/services/{service}/restart",
       "Restart a service's replicas, one by one (a rolling restart)", "deployments",
       answer=_JSON_OBJECT)  # fmt: skip
def services_restart(request: Request) -> Response:
    p = {**request.params, "name": _name(request)}
    result = _deployments().restart(p["name"], p["service"])
    return json_response(jsonable(result) if result is not None else {})


@route("POST", "/v1/deployments/{name}/services/{service}/jobs", "Start a run of a job",
       "deployments", status=201, answer=_JSON_OBJECT)  # fmt: skip
def jobs_run(request: Request) -> Response:
    p = {**request.params, "name": _name(request)}
    run = jsonable(_deployments().run_job(p["name"], p["service"]))
    return json_response(run if isinstance(run, dict) else {"container": run}, 201)


@route("GET", "/v1/deployments/{name}/services/{service}/jobs", "A job's runs (its history)",
       "deployments", answer=_JSON_LIST)  # fmt: skip
def jobs_list(request: Request) -> Response:
    p = {**request.params, "name": _name(request)}
    return json_response(jsonable(_deployments().jobs(p["name"], p["service"])))


# -- secrets ------------------------------------------------------------------------------------


class SecretCreate(BaseModel):
    """A secret's name and value (base64): the value is stored encrypted, never shown."""

    model_config = _STRICT
    name: str = Field(description="[a-zA-Z0-9][a-zA-Z0-9_.-]* (the store checks it)")
    data: str = Field(description="the value, base64")


def _secrets() -> Any:
    from lamina.deploy._secrets import SecretStore

    root = _ROOT if _ROOT is not None else api._api().engines.root
    return SecretStore(root)


@route("GET", "/v1/secrets", "List secrets (names, times and sizes; never values)", "secrets",
       answer=_JSON_LIST)  # fmt: skip
def secrets_list(_request: Request) -> Response:
    return json_response(jsonable(_secrets().list()))


@route("POST", "/v1/secrets", "Create a secret", "secrets", body=SecretCreate, status=201,
       answer=_JSON_OBJECT)  # fmt: skip
def secrets_create(request: Request) -> Response:
    body = m.parse(SecretCreate, request.json())
    try:
        data = base64.b64decode(body.data, validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(400, "invalid field data: not base64")
    _secrets().create(body.name, data)
    return json_response({"name": body.name}, 201)


@route("DELETE", "/v1/secrets/{name}", "Remove a secret", "secrets", status=204)
def secrets_remove(request: Request) -> Response:
    _secrets().remove(request.params["name"])
    return Response(status=204)


# -- the ingress ----------------------------------------------------------------------------


class CertificateAdd(BaseModel):
    """A certificate (chain) and its private key, PEM, for one host."""

    model_config = _STRICT
    cert: str = Field(description="PEM certificate (chain)")
    key: str = Field(description="PEM private key")


def _ingress() -> Any:
    from lamina.ingress import Ingress

    return Ingress(_ROOT if _ROOT is not None else api._api().engines.root)


@route("GET", "/v1/ingress", "The ingress: whether HAProxy runs, its routes, backends and "
       "servers (with their health) and certificates", "ingress", answer=_JSON_OBJECT)  # fmt: skip
def ingress_inspect(_request: Request) -> Response:
    return json_response(_ingress().inspect())


@route("GET", "/v1/ingress/certificates", "The certificates served by SNI, with their expiry",
       "ingress", answer=_JSON_LIST)  # fmt: skip
def ingress_certificates(_request: Request) -> Response:
    return json_response(jsonable(_ingress().list_certs()))


@route("PUT", "/v1/ingress/certificates/{host}", "Serve a certificate for a host (exact or "
       "*.domain); replaces the host's", "ingress", body=CertificateAdd,
       answer=_JSON_OBJECT)  # fmt: skip
def ingress_certificate_add(request: Request) -> Response:
    body = m.parse(CertificateAdd, request.json())
    info = _ingress().add_cert(request.params["host"], body.cert.encode(), body.key.encode())
    return json_response(jsonable(info))


@route("DELETE", "/v1/ingress/certificates/{host}", "Stop serving a host's certificate",
       "ingress", status=204)  # fmt: skip
def ingress_certificate_remove(request: Request) -> Response:
    _ingress().remove_cert(request.params["host"])
    return Response(status=204)
