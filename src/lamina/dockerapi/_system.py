"""Docker Engine API: _ping, version, info, events, auth, system df, and clear
refusals of what lamina does not serve (swarm, plugins, BuildKit's session)."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from typing import Any

from lamina.daemon import _api as lamina_api
from lamina.daemon._http import HttpError, Request, Response, error_response, json_response
from lamina.dockerapi._router import API_VERSION, MIN_API_VERSION, route


@route("GET", "/_ping", "Docker's ping: OK", "system", answer_type="text/plain")
def ping(request: Request) -> Response:
    return Response(
        body=b"OK" if request.method != "HEAD" else b"",
        content_type="text/plain; charset=utf-8",
        headers=[("Builder-Version", "1"), ("Cache-Control", "no-cache, no-store, must-revalidate"),
                 ("Pragma", "no-cache")],
    )  # fmt: skip


@route("GET", "/version", "Version of the engine (Docker's shape)", "system")
def version(_request: Request) -> Response:
    from lamina.engine import version_info

    server = version_info(context="daemon")["Server"]
    details = {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
               "Os": server["Os"], "Arch": server["Arch"],
               "KernelVersion": server["KernelVersion"], "GitCommit": "",
               "GoVersion": f"python{platform.python_version()}", "BuildTime": "",
               "Experimental": "false"}  # fmt: skip
    return json_response({
        "Platform": {"Name": "lamina"},
        "Components": [{"Name": "Engine", "Version": server["Version"], "Details": details}],
        "Version": server["Version"],
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": details["GoVersion"],
        "Os": server["Os"],
        "Arch": server["Arch"],
        "KernelVersion": server["KernelVersion"],
        "BuildTime": "",
    })  # fmt: skip


def _architecture(machine: str) -> str:
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


@route("GET", "/info", "System-wide information (Docker's shape)", "system")
def info(_request: Request) -> Response:
    from lamina.engine import system_info

    engines = lamina_api._api().engines
    data = system_info(engines.root, engines.oci_runtime, probe_vm=False)
    registry = engines.registry_config()
    runtimes = {name: {"path": path} for name, path in data["Runtimes"].items()
                if not str(path).startswith("unusable")}  # fmt: skip
    return json_response({
        "ID": _engine_id(engines.root),
        "Containers": data["Containers"],
        "ContainersRunning": data["ContainersRunning"],
        "ContainersPaused": data["ContainersPaused"],
        "ContainersStopped": data["ContainersStopped"],
        "Images": data["Images"],
        "Driver": data["Driver"],
        "DriverStatus": [["Backing Filesystem", "overlayfs"]],
        "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "none"],
                    "Authorization": [], "Log": ["json-file", "k8s-file", "local", "none"]},
        "MemoryLimit": True, "SwapLimit": True, "CpuCfsPeriod": True, "CpuCfsQuota": True,
        "CPUShares": True, "CPUSet": True, "PidsLimit": True, "IPv4Forwarding": True,
        "OomKillDisable": False, "Debug": False, "NFd": 0, "NGoroutines": 0,
        "SystemTime": _now(), "LoggingDriver": "k8s-file",
        "CgroupDriver": data["CgroupDriver"],
        "CgroupVersion": "2" if data["CgroupVersion"] == "v2" else "1",
        "NEventsListener": 0,
        "KernelVersion": data["KernelVersion"],
        "OperatingSystem": data["OperatingSystem"],
        "OSVersion": platform.release(),
        "OSType": data["OSType"],
        "Architecture": _architecture(data["Architecture"]),
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": _registry_config(registry),
        "NCPU": data["NCPU"],
        "MemTotal": data["MemTotal"],
        "DockerRootDir": data["DockerRootDir"],
        "Name": data["Name"],
        "Labels": [],
        "ExperimentalBuild": False,
        "ServerVersion": data["ServerVersion"],
        "Runtimes": runtimes,
        "DefaultRuntime": "runc",
        "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive",
                  "ControlAvailable": False, "Error": "", "RemoteManagers": None},
        "LiveRestoreEnabled": True,
        "Isolation": "process",
        "InitBinary": "",
        "SecurityOptions": ["name=seccomp,profile=builtin"],
        "Warnings": [],
        "MicroVM": data.get("MicroVM"),
    })  # fmt: skip


def _now() -> str:
    import time

    from lamina.engine._inspect import iso_time

    return iso_time(time.time())


def _engine_id(root: Any) -> str:
    """A stable ID of this engine: of its root's path (Docker's is a key's)."""
    import hashlib

    return hashlib.sha256(str(root).encode()).hexdigest()[:32].upper()


def _registry_config(registry: Any) -> dict[str, Any]:
    insecure = list(getattr(registry, "insecure_registries", None) or ())
    mirrors = list(getattr(registry, "mirrors", None) or ())
    return {"AllowNondistributableArtifactsCIDRs": [],
            "AllowNondistributableArtifactsHostnames": [],
            "InsecureRegistryCIDRs": ["127.0.0.0/8"], "IndexConfigs": {
                name: {"Name": name, "Mirrors": [], "Secure": False, "Official": False}
                for name in insecure}, "Mirrors": mirrors}  # fmt: skip


@route("GET", "/events", "Events: the journal's from since, then new ones", "system")
def events(request: Request) -> Response:
    """The journal is Docker's JSON already: lamina's own handler serves it, less the
    container actions of lamina's own that Docker never sends."""
    import contextlib

    from lamina.dockerapi._containers import _lamina_filters

    response = lamina_api.events(_lamina_filters(request))
    journal = response.body
    assert isinstance(journal, lamina_api.Held)
    held = contextlib.ExitStack()
    held.callback(journal.close)
    response.body = lamina_api.Held(_docker_events(journal), held)
    return response


def _docker_events(chunks: Iterator[bytes]) -> Iterator[bytes]:
    from lamina.engine._events import LAMINA_ACTIONS, docker_sends, parse_line

    marks = [a.encode() for a in LAMINA_ACTIONS]  # parsed only when it may be one
    for chunk in chunks:
        lines = chunk.splitlines(keepends=True)
        kept = [line for line in lines if not any(m in line for m in marks)
                or (e := parse_line(line)) is None or docker_sends(e)]  # fmt: skip
        if kept:
            yield b"".join(kept)


@route("GET", "/system/df", "Disk usage (Docker's shape)", "system")
def system_df(_request: Request) -> Response:
    import time

    from lamina.dockerapi._shapes import list_entry
    from lamina.engine import disk_usage

    with lamina_api.engine() as e:
        usage = disk_usage(e)
    now = time.time()
    images = [{
        "Id": u.record.id, "ParentId": "", "RepoTags": u.record.tags,
        "RepoDigests": u.record.repo_digests, "Created": _created(u.record.created),
        "Size": u.size, "SharedSize": u.shared, "VirtualSize": u.size, "Labels": {},
        "Containers": u.containers,
    } for u in usage.images]  # fmt: skip
    containers = [{**list_entry(u.container, now, size=u.size), "SizeRootFs": u.size}
                  for u in usage.containers]  # fmt: skip
    volumes = [{"Name": v.name, "Driver": "local", "Mountpoint": "", "Labels": {},
                "Scope": "local", "Options": {},
                "UsageData": {"Size": v.size, "RefCount": v.links}}
               for v in usage.volumes]  # fmt: skip
    cache = [{"ID": c.id, "Type": c.kind, "Size": c.size, "InUse": False, "Shared": False,
              "Description": "", "UsageCount": 0} for c in usage.build_cache]  # fmt: skip
    return json_response({"LayersSize": sum(u.size - u.shared for u in usage.images),
                          "Images": images, "Containers": containers, "Volumes": volumes,
                          "BuildCache": cache})  # fmt: skip


def _created(created: str | None) -> int:
    if not created:
        return 0
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


@route("POST", "/auth", "Check credentials against a registry", "system")
def auth(request: Request) -> Response:
    from lamina.errors import AuthenticationRequired, LaminaError
    from lamina.registry._credentials import registry_host_key
    from lamina.registry._login import verify_login

    body = request.json()
    if not isinstance(body, dict):
        raise HttpError(400, "request body: expected a JSON object")
    username, password = body.get("username") or "", body.get("password") or ""
    # Docker's CLI sends an address (``https://index.docker.io/v1/``); none is Docker Hub.
    server = registry_host_key(str(body.get("serveraddress") or "")) or "docker.io"
    engines = lamina_api._api().engines
    try:
        verify_login(server, username, password, config=engines.registry_config())
    except AuthenticationRequired as e:
        raise HttpError(401, str(e)) from None
    except LaminaError as e:
        raise HttpError(500, str(e)) from None
    return json_response({"Status": "Login Succeeded", "IdentityToken": ""})


# -- refusals: what a dockerd without swarm (or without plugins) answers -----------------

_SWARM = ("This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" "
          "to connect this node to swarm and try again.")  # fmt: skip


def _refusal(status: int, message: str) -> Any:
    def refuse(_request: Request) -> Response:
        return error_response(status, message)

    return refuse


def _refuse_under(prefix: str, status: int, message: str) -> None:
    handler = _refusal(status, message)
    for path in (prefix, f"{prefix}/{{a}}", f"{prefix}/{{a}}/{{b}}", f"{prefix}/{{a}}/{{b}}/{{c}}"):
        for method in ("GET", "POST", "PUT", "DELETE"):
            route(method, path, f"refused: {message}", "system")(handler)


for _prefix in ("/swarm", "/nodes", "/services", "/tasks", "/secrets", "/configs"):
    _refuse_under(_prefix, 503, _SWARM)
_refuse_under("/session", 501, "BuildKit sessions are not supported by lamina: use the classic "
              "builder (DOCKER_BUILDKIT=0)")  # fmt: skip
_refuse_under("/grpc", 501, "BuildKit's gRPC is not supported by lamina: use the classic "
              "builder (DOCKER_BUILDKIT=0)")  # fmt: skip
_refuse_under("/distribution", 501, "distribution inspect is not supported by lamina")


@route("GET", "/plugins", "Plugins: none (lamina has no plugin system)", "system")
def plugins(_request: Request) -> Response:
    return json_response([])


for _path in ("/plugins/{a}", "/plugins/{a}/{b}", "/plugins/{a}/{b}/{c}"):
    for _method in ("GET", "POST", "DELETE"):
        route(_method, _path, "refused: no plugins", "system")(
            _refusal(501, "plugins are not supported by lamina"))  # fmt: skip
