"""Docker Engine API: containers. Create translates Docker's ``Config``,
``HostConfig`` and ``NetworkingConfig`` into lamina's run options (the CLI's and the
daemon's ``prepare_run``); a field set that lamina does not support is a 400 naming
it. The rest calls the engine and words its answer as Docker does (``_shapes``)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

from lamina.daemon._api import Held, engine, frame, plain
from lamina.daemon._http import HttpError, Request, Response, json_response
from lamina.dockerapi import _shapes
from lamina.dockerapi._router import filters_arg, route
from lamina.errors import LaminaError

_ID = "id"
_RAW = "application/vnd.docker.raw-stream"
_MULTIPLEXED = "application/vnd.docker.multiplexed-stream"


# -- create ------------------------------------------------------------------------------

# Fields that carry no request when they hold what a client sends by default.
_IGNORED_CONFIG = frozenset({"AttachStdin", "AttachStdout", "AttachStderr", "StdinOnce",
                             "ArgsEscaped", "OnBuild", "Shell", "NetworkDisabled"})  # fmt: skip
_IGNORED_HOST = frozenset({"ConsoleSize", "IpcMode", "CgroupnsMode", "MemorySwappiness",
                           "OomKillDisable"})  # fmt: skip
# Values of ignored fields that ask for nothing lamina does not do.
_HARMLESS = {"IpcMode": ("", "private", "shareable"), "CgroupnsMode": ("", "private"),
             "MemorySwappiness": (-1,), "OomKillDisable": (False,)}  # fmt: skip


def _is_set(value: Any) -> bool:
    return value not in (None, "", 0, False, [], {})


class _Body:
    """Docker's create body, its fields taken one by one: what is left set at the end
    is what lamina cannot do."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        if not isinstance(data, dict):
            raise HttpError(400, "request body: expected a JSON object")
        self.config = dict(data)
        self.host = self._section("HostConfig")
        self.networking = self._section("NetworkingConfig")

    def _section(self, key: str) -> dict[str, Any]:
        value = self.config.pop(key, None) or {}
        if not isinstance(value, dict):
            raise HttpError(400, f"{key}: expected a JSON object")
        return dict(value)

    def take(self, key: str, kind: type | tuple[type, ...], default: Any = None,
             *, host: bool = False) -> Any:  # fmt: skip
        section = self.host if host else self.config
        value = section.pop(key, None)
        if value is None:
            return default
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            where = f"HostConfig.{key}" if host else key
            raise HttpError(400, f"{where}: expected {_kind_name(kind)}, not {value!r}")
        return value

    def strings(self, key: str, *, host: bool = False) -> list[str]:
        value = self.take(key, (list, str), [], host=host)
        if isinstance(value, str):
            return [value]
        if not all(isinstance(v, str) for v in value):
            where = f"HostConfig.{key}" if host else key
            raise HttpError(400, f"{where}: expected a list of strings")
        return list(value)

    def unsupported(self) -> list[str]:
        """The fields set that lamina does not support (None when all are taken)."""
        left = [k for k, v in self.config.items() if k not in _IGNORED_CONFIG and _is_set(v)]
        for key, value in self.host.items():
            if key in _IGNORED_HOST and (key not in _HARMLESS or value in _HARMLESS[key]):
                continue
            if _is_set(value) or (key in _HARMLESS and value is not None):
                left.append(f"HostConfig.{key}")
        return left


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", list: "a list",
             dict: "an object", float: "a number"}  # fmt: skip
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def create_options(data: Mapping[str, Any]) -> dict[str, Any]:
    """Docker's create body as ``prepare_run``'s arguments and what lamina lays over
    its config after: ``{"options": RunOptions, "image", "command", "entrypoint",
    "healthcheck", "endpoints"}``. HttpError 400 for a bad or unsupported field."""
    from lamina.engine._options import RunOptions

    b = _Body(data)
    image = b.take("Image", str, "")
    if not image:
        raise HttpError(400, "Image: required (the image to create the container from)")
    opts = RunOptions()
    opts.hostname = b.take("Hostname", str) or None
    domain = b.take("Domainname", str, "")
    if domain:
        raise HttpError(400, "Domainname: not supported by lamina")
    opts.user = b.take("User", str) or None
    opts.env = b.strings("Env")
    command = b.strings("Cmd") or None
    entrypoint = b.config.get("Entrypoint")
    b.config.pop("Entrypoint", None)
    if entrypoint is not None and not isinstance(entrypoint, list | str):
        raise HttpError(400, "Entrypoint: expected a list of strings")
    if isinstance(entrypoint, str):
        entrypoint = [entrypoint]
    opts.workdir = b.take("WorkingDir", str) or None
    labels = b.take("Labels", dict, {})
    if not all(isinstance(v, str) for v in labels.values()):
        raise HttpError(400, "Labels: expected an object of strings")
    opts.labels = [f"{k}={v}" for k, v in labels.items()]
    opts.tty = b.take("Tty", bool, False)
    opts.interactive = b.take("OpenStdin", bool, False)
    opts.expose = list(b.take("ExposedPorts", dict, {}))
    opts.volumes = list(b.take("Volumes", dict, {}))
    opts.stop_signal = b.take("StopSignal", str) or None
    opts.stop_timeout = b.take("StopTimeout", int)
    opts.mac_address = b.take("MacAddress", str) or None
    if b.config.get("NetworkDisabled"):
        b.host["NetworkMode"] = "none"
    healthcheck = _healthcheck(b.take("Healthcheck", dict))

    binds = b.strings("Binds", host=True)
    mounts = b.take("Mounts", list, [], host=True)
    opts.mounts = [_mount(m) for m in mounts]
    tmpfs = b.take("Tmpfs", dict, {}, host=True)
    opts.tmpfs = [f"{path}:{o}" if o else path for path, o in tmpfs.items()]
    # Config.Volumes lists every volume path, those a bind or mount fills too (Compose).
    covered = {_bind_target(v) for v in binds} | {m.get("Target") for m in mounts} | set(tmpfs)
    opts.volumes = [v for v in opts.volumes if v not in covered] + binds
    opts.publish = _port_bindings(b.take("PortBindings", dict, {}, host=True))
    opts.publish_all = b.take("PublishAllPorts", bool, False, host=True)
    mode = b.take("NetworkMode", str, "", host=True)
    restart = b.take("RestartPolicy", dict, {}, host=True)
    name = restart.get("Name") or ""
    if name not in ("", "no"):
        retries = restart.get("MaximumRetryCount") or 0
        opts.restart = f"{name}:{retries}" if name == "on-failure" and retries else name
    opts.auto_remove = b.take("AutoRemove", bool, False, host=True)
    memory = b.take("Memory", int, 0, host=True)
    opts.memory = str(memory) if memory else None
    swap = b.take("MemorySwap", int, 0, host=True)
    opts.memory_swap = str(swap) if swap else None
    nano = b.take("NanoCpus", int, 0, host=True)
    opts.cpus = repr(nano / 1e9) if nano else None
    opts.cpu_shares = b.take("CpuShares", int, 0, host=True) or None
    opts.cpuset_cpus = b.take("CpusetCpus", str, "", host=True) or None
    pids = b.take("PidsLimit", int, 0, host=True)
    opts.pids_limit = pids if pids and pids > 0 else None
    opts.cap_add = b.strings("CapAdd", host=True)
    opts.cap_drop = b.strings("CapDrop", host=True)
    opts.privileged = b.take("Privileged", bool, False, host=True)
    opts.read_only = b.take("ReadonlyRootfs", bool, False, host=True)
    opts.security_opt = b.strings("SecurityOpt", host=True)
    sysctls = b.take("Sysctls", dict, {}, host=True)
    opts.sysctls = [f"{k}={v}" for k, v in sysctls.items()]
    opts.ulimits = [_ulimit(u) for u in b.take("Ulimits", list, [], host=True)]
    opts.add_hosts = b.strings("ExtraHosts", host=True)
    opts.dns = b.strings("Dns", host=True)
    opts.dns_search = b.strings("DnsSearch", host=True)
    opts.dns_options = b.strings("DnsOptions", host=True)
    opts.init = b.take("Init", bool, False, host=True)
    log = b.take("LogConfig", dict, {}, host=True)
    if log.get("Type"):
        opts.log_driver = str(log["Type"])
    opts.log_opts = [f"{k}={v}" for k, v in (log.get("Config") or {}).items()]
    isolation = b.take("Isolation", str, "", host=True)
    opts.isolation = "process" if isolation in ("", "default") else isolation

    endpoints = b.networking.pop("EndpointsConfig", None) or {}
    if not isinstance(endpoints, dict) or not all(
        isinstance(v, dict | None) for v in endpoints.values()
    ):
        raise HttpError(400, "NetworkingConfig.EndpointsConfig: expected an object of objects")
    networks = [mode] if mode and mode != "default" else []
    networks += [n for n in endpoints if n not in networks and n != mode]
    if mode == "default" and endpoints:
        networks = list(endpoints)
    opts.network = networks or None
    first = endpoints.get(networks[0]) if networks else None
    if first:
        opts.network_aliases = list(first.get("Aliases") or [])
        ipam = first.get("IPAMConfig") or {}
        opts.ip = ipam.get("IPv4Address") or None
        opts.ip6 = ipam.get("IPv6Address") or None
        opts.mac_address = first.get("MacAddress") or opts.mac_address
    left = b.unsupported() + [f"NetworkingConfig.{k}" for k, v in b.networking.items() if v]
    if left:
        raise HttpError(400, f"{', '.join(left)}: not supported by lamina")
    later = {n: e for n, e in endpoints.items() if n != (networks or [""])[0]}
    return {"options": opts, "image": image, "command": command, "entrypoint": entrypoint,
            "healthcheck": healthcheck, "endpoints": later}  # fmt: skip


def _bind_target(spec: str) -> str:
    """The container path of a ``Binds`` entry (``SRC:DEST[:MODE]``, or ``DEST``)."""
    parts = spec.split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _healthcheck(check: dict[str, Any] | None) -> dict[str, Any] | None:
    """Docker's HealthConfig, checked; None when it asks for nothing (the image's)."""
    if not check:
        return None
    test = check.get("Test") or []
    if not isinstance(test, list) or not all(isinstance(t, str) for t in test):
        raise HttpError(400, "Healthcheck.Test: expected a list of strings")
    if test and test[0] not in ("NONE", "CMD", "CMD-SHELL"):
        raise HttpError(400, f"Healthcheck.Test: {test[0]!r} is not NONE, CMD or CMD-SHELL")
    out: dict[str, Any] = {"Test": test} if test else {}
    for key in ("Interval", "Timeout", "StartPeriod", "StartInterval", "Retries"):
        value = check.get(key) or 0
        if not isinstance(value, int) or value < 0:
            raise HttpError(400, f"Healthcheck.{key}: expected a non-negative integer")
        if value:
            out[key] = value
    return out or None


def _mount(m: Any) -> str:
    """A ``HostConfig.Mounts`` entry as ``--mount``'s CSV."""
    if not isinstance(m, dict):
        raise HttpError(400, "HostConfig.Mounts: expected a list of objects")
    parts = [f"type={m.get('Type') or 'volume'}"]
    if m.get("Source"):
        parts.append(f"source={m['Source']}")
    if not m.get("Target"):
        raise HttpError(400, "HostConfig.Mounts: Target is required")
    parts.append(f"target={m['Target']}")
    if m.get("ReadOnly"):
        parts.append("readonly")
    propagation = (m.get("BindOptions") or {}).get("Propagation")
    if propagation:
        parts.append(f"bind-propagation={propagation}")
    tmpfs = m.get("TmpfsOptions") or {}
    if tmpfs.get("SizeBytes"):
        parts.append(f"tmpfs-size={tmpfs['SizeBytes']}")
    if tmpfs.get("Mode"):
        parts.append(f"tmpfs-mode={tmpfs['Mode']:o}")
    volume = m.get("VolumeOptions") or {}
    if volume.get("NoCopy"):
        parts.append("volume-nocopy")
    for key in ("Labels", "DriverConfig"):
        if volume.get(key):
            raise HttpError(400, f"HostConfig.Mounts.VolumeOptions.{key}: not supported by lamina")
    return ",".join(parts)


def _port_bindings(bindings: dict[str, Any]) -> list[str]:
    """``{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}`` as ``-p`` specs."""
    out = []
    for private, hosts in bindings.items():
        if not isinstance(hosts, list | None) or not all(isinstance(h, dict) for h in hosts or []):
            raise HttpError(400, f"HostConfig.PortBindings.{private}: expected a list of objects")
        for h in hosts or [{}]:
            ip, port = str(h.get("HostIp") or ""), str(h.get("HostPort") or "")
            if ip:
                out.append(f"{ip}:{port}:{private}")
            elif port:
                out.append(f"{port}:{private}")
            else:
                out.append(private)
    return out


def _ulimit(u: Any) -> str:
    if not isinstance(u, dict) or not u.get("Name"):
        raise HttpError(400, "HostConfig.Ulimits: expected objects with Name, Soft and Hard")
    return f"{u['Name']}={u.get('Soft', 0)}:{u.get('Hard', u.get('Soft', 0))}"


@route("POST", "/containers/create", "Create a container", "containers")
def containers_create(request: Request) -> Response:
    from lamina.engine._options import prepare_run

    made = create_options(request.json())
    opts = made["options"]
    opts.name = request.arg("name") or None
    with engine() as e:
        try:
            config, warnings = prepare_run(e, opts, image=made["image"],
                                           command=made["command"], pull="never",
                                           platform=request.arg("platform") or None,
                                           environ={})  # fmt: skip
        except LaminaError as err:
            if type(err).__name__ == "ImageNotFound" or "no such image" in str(err).lower():
                raise HttpError(404, f"No such image: {made['image']}") from None
            raise
        if made["entrypoint"] is not None:
            config.entrypoint = list(made["entrypoint"])
        if made["healthcheck"] is not None:
            config.healthcheck = made["healthcheck"]
        _lay_endpoints(config, made["endpoints"])
        created = e.create(config)
    return json_response({"Id": created.id, "Warnings": warnings}, 201)


def _lay_endpoints(config: Any, endpoints: dict[str, Any]) -> None:
    """Aliases and addresses of the networks after the first (EndpointsConfig)."""
    from lamina.engine._options import parse_network

    for name, spec in endpoints.items():
        if not spec:
            continue
        wanted = parse_network(name)
        for request in config.networks:
            if request.name == wanted:
                ipam = spec.get("IPAMConfig") or {}
                request.aliases = list(spec.get("Aliases") or [])
                request.ip = ipam.get("IPv4Address") or ""
                request.ip6 = ipam.get("IPv6Address") or ""


# -- list and inspect ----------------------------------------------------------------------

_ENGINE_FILTERS = ("status", "name", "id", "label", "exited", "ancestor", "isolation",
                   "health")  # fmt: skip


@route("GET", "/containers/json", "List containers", "containers")
def containers_list(request: Request) -> Response:
    filters = filters_arg(request) or {}
    unknown = [k for k in filters if k not in (*_ENGINE_FILTERS, "network")]
    if unknown:
        raise HttpError(400, f"invalid filter '{unknown[0]}'")
    from lamina.dockerapi._networks import lamina_name

    networks = [lamina_name(n) for n in filters.pop("network", [])]  # bridge: lamina's default
    limit = request.integer("limit")
    with_size = request.flag("size")
    everything = request.flag("all") or (limit is not None and limit > 0)
    now = time.time()
    with engine() as e:
        found = e.list(all=everything, filters=filters)
        if networks:
            found = [c for c in found if set(_shapes.network_names(c)) & set(networks)]
        if limit is not None and limit > 0:
            found = found[:limit]
        out = [_shapes.list_entry(c, now, size=e.disk_usage(c.id) if with_size else None)
               for c in found]  # fmt: skip
    return json_response(out)


@route("GET", "/containers/{id}/json", "Inspect a container", "containers")
def containers_inspect(request: Request) -> Response:
    with engine() as e:
        found = plain(e.inspect(request.params[_ID]))
        if request.flag("size"):
            found["SizeRw"] = e.disk_usage(request.params[_ID])
    return json_response(_shapes.inspect(found))


# -- lifecycle -----------------------------------------------------------------------------


def _not_modified(e: Any, ref: str, running: bool) -> bool:
    """Docker answers 304 to a start of a running or a stop of a stopped container."""
    status = str(e.get(ref).state.status)
    return (status in ("running", "paused", "restarting")) == running


@route("POST", "/containers/{id}/start", "Start a container", "containers")
def containers_start(request: Request) -> Response:
    from lamina.dockerapi._streams import start_attached

    ref = request.params[_ID]
    with engine() as e:
        cid = e.get(ref).id
    if start_attached(cid):  # ``docker run``'s attach is waiting: it starts and relays
        return Response(status=204)
    with engine() as e:
        if _not_modified(e, ref, running=True):
            return Response(status=304)
        e.start(ref)
    return Response(status=204)


def _signal_arg(request: Request) -> str | None:
    return request.arg("signal") or None


@route("POST", "/containers/{id}/stop", "Stop a container", "containers")
def containers_stop(request: Request) -> Response:
    ref = request.params[_ID]
    with engine() as e:
        if _not_modified(e, ref, running=False):
            return Response(status=304)
        e.stop(ref, timeout=request.integer("t"), signal=_signal_arg(request))
    return Response(status=204)


@route("POST", "/containers/{id}/restart", "Restart a container", "containers")
def containers_restart(request: Request) -> Response:
    with engine() as e:
        e.restart(request.params[_ID], timeout=request.integer("t"), signal=_signal_arg(request))
    return Response(status=204)


@route("POST", "/containers/{id}/kill", "Send a signal to a container", "containers")
def containers_kill(request: Request) -> Response:
    ref = request.params[_ID]
    with engine() as e:
        if str(e.get(ref).state.status) not in ("running", "paused", "restarting"):
            raise HttpError(409, f"Cannot kill container: {ref}: container is not running")
        e.kill(ref, _signal_arg(request) or "SIGKILL")
    return Response(status=204)


def _simple(action: str, summary: str) -> None:
    def handler(request: Request) -> Response:
        with engine() as e:
            getattr(e, action)(request.params[_ID])
        return Response(status=204)

    handler.__name__ = f"containers_{action}"
    route("POST", f"/containers/{{id}}/{action}", summary, "containers")(handler)


_simple("pause", "Pause a container")
_simple("unpause", "Unpause a container")


@route("POST", "/containers/{id}/rename", "Rename a container", "containers")
def containers_rename(request: Request) -> Response:
    name = request.arg("name")
    if not name:
        raise HttpError(400, "query parameter name: required")
    with engine() as e:
        e.rename(request.params[_ID], name)
    return Response(status=204)


@route("DELETE", "/containers/{id}", "Remove a container", "containers")
def containers_remove(request: Request) -> Response:
    if request.flag("link"):
        raise HttpError(400, "query parameter link: links are not supported by lamina")
    with engine() as e:
        e.remove(request.params[_ID], force=request.flag("force"), volumes=request.flag("v"))
    return Response(status=204)


@route("POST", "/containers/prune", "Remove stopped containers", "containers")
def containers_prune(request: Request) -> Response:
    from lamina.daemon._api import containers_prune as lamina_prune

    answer = lamina_prune(_lamina_filters(request))
    result = json.loads(bytes(answer.body))  # type: ignore[arg-type]
    return json_response({"ContainersDeleted": result.get("deleted") or [],
                          "SpaceReclaimed": result.get("reclaimed") or 0})  # fmt: skip


def _lamina_filters(request: Request) -> Request:
    """``request`` with its filters in lamina's encoding (lists), for a handler of
    lamina's API that serves Docker's as it is."""
    filters = filters_arg(request)
    if filters is not None:
        request.query["filters"] = [json.dumps(filters)]
    return request


@route("POST", "/containers/{id}/wait", "Wait for a container", "containers")
def containers_wait(request: Request) -> Response:
    """Docker's wait answers its headers at once (the CLI starts the container once
    it has them), then the body when the condition is met."""
    from lamina.engine import WaitCondition, WaitTimeout

    try:
        condition = WaitCondition(request.arg("condition") or "not-running")
    except ValueError:
        raise HttpError(400, "query parameter condition: expected not-running, next-exit or "
                        "removed")  # fmt: skip
    ref = request.params[_ID]
    held = contextlib.ExitStack()
    e = held.enter_context(engine())
    try:
        cid = e.get(ref).id  # a 404 before the headers
        seen = e.store.resolve(cid).exits
    except BaseException:
        held.close()
        raise

    def body() -> Iterator[bytes]:
        while True:  # in slices: a client gone ends the wait
            try:
                outcome = e.wait(cid, condition, timeout=1.0, exits_seen=seen)
                break
            except WaitTimeout:
                if request.gone():
                    return
            except LaminaError as err:
                yield json.dumps({"StatusCode": -1, "Error": {"Message": str(err)}}).encode()
                return
        error = {"Message": outcome.error} if outcome.error else None
        yield json.dumps({"StatusCode": outcome.exit_code, "Error": error}).encode() + b"\n"

    return Response(body=Held(body(), held))


# -- logs, stats, top, changes, update --------------------------------------------------------


def _since(request: Request, name: str) -> float | None:
    from lamina.daemon._api import _time_arg

    value = _time_arg(request, name)
    return value if value else None  # Docker: 0 is no bound


@route("GET", "/containers/{id}/logs", "A container's logs", "containers")
def containers_logs(request: Request) -> Response:
    from lamina.daemon._api import _rfc3339

    ref = request.params[_ID]
    tail_arg = request.arg("tail")
    tail = None if tail_arg in (None, "", "all") else request.integer("tail")
    if tail is not None and tail < 0:
        tail = None
    stdout, stderr = request.flag("stdout"), request.flag("stderr")
    if not (stdout or stderr):
        raise HttpError(400, "Bad parameters: you must choose at least one stream")
    timestamps = request.flag("timestamps")
    held = contextlib.ExitStack()
    e = held.enter_context(engine())
    try:
        raw = e.get(ref).config.tty
        entries = e.logs(ref, follow=request.flag("follow"), tail=tail,
                         since=_since(request, "since"), until=_since(request, "until"),
                         stdout=stdout, stderr=stderr, stop=request.gone)  # fmt: skip
    except BaseException:
        held.close()
        raise

    def stream() -> Iterator[bytes]:
        try:
            for entry in entries:
                data = entry.data
                if timestamps:
                    data = _rfc3339(entry.timestamp).encode() + b" " + data
                yield data if raw else frame(entry.stream, data)
        finally:
            close = getattr(entries, "close", None)
            if close is not None:
                close()

    return Response(body=Held(stream(), held), content_type=_stream_type(request, raw))


def _stream_type(request: Request, raw: bool) -> str:
    """Docker's content type of a log stream: the multiplexed one from API 1.42."""
    from lamina.dockerapi._router import api_version

    if raw:
        return _RAW
    major, minor = (int(p) for p in api_version(request).split(".")[:2])
    return _MULTIPLEXED if (major, minor) >= (1, 42) else _RAW


@route("GET", "/containers/{id}/stats", "Resource usage: a stream or one sample", "containers")
def containers_stats(request: Request) -> Response:
    ref = request.params[_ID]
    ncpu = os.cpu_count() or 1
    held = contextlib.ExitStack()
    e = held.enter_context(engine())
    try:
        ctr = e.get(ref)
        first = e.stats(ctr.id)
    except BaseException:
        held.close()
        raise

    def shape(sample: Any, before: Any) -> bytes:
        return json.dumps(_shapes.stats(sample, before, name=ctr.name, cid=ctr.id,
                                        ncpu=ncpu)).encode() + b"\n"  # fmt: skip

    if not request.flag("stream", True):
        try:
            if request.flag("one-shot"):
                return json_response(json.loads(shape(first, None)))
            # Docker's: a second sample, so the CPU use has a before (precpu_stats).
            request.gone(0.5)
            return json_response(json.loads(shape(e.stats(ctr.id), first)))
        finally:
            held.close()

    def stream() -> Iterator[bytes]:
        before, sample = None, first
        while True:
            yield shape(sample, before)
            if request.gone(1.0):
                return
            try:
                before, sample = sample, e.stats(ctr.id)
            except LaminaError:
                return  # removed meanwhile: the stream ends

    return Response(body=Held(stream(), held))


@route("GET", "/containers/{id}/top", "Processes in a container", "containers")
def containers_top(request: Request) -> Response:
    ps_args = request.arg("ps_args") or ""
    with engine() as e:
        titles, rows = e.top(request.params[_ID])
        backend = e.get(request.params[_ID]).backend
    if ps_args and ps_args != "-ef":
        if backend != "oci":
            raise HttpError(400, "query parameter ps_args: a micro-VM's processes are shown "
                            "as ps -ef only")  # fmt: skip
        titles, rows = _host_ps(ps_args, {row[titles.index("PID")] for row in rows})
    return json_response({"Titles": titles, "Processes": rows})


def _host_ps(ps_args: str, pids: set[str]) -> tuple[list[str], list[list[str]]]:
    """dockerd's ``top`` with ps arguments: the host's ``ps`` with them (no shell),
    its rows of the container's processes, split into its columns (the last takes
    the rest of the line)."""
    import shlex
    import subprocess

    try:
        argv = ["ps", *shlex.split(ps_args)]
    except ValueError as err:
        raise HttpError(400, f"query parameter ps_args: {err}")
    ran = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if ran.returncode != 0:
        raise HttpError(500, f"ps {ps_args}: {' '.join(ran.stderr.split()) or 'failed'}")
    lines = ran.stdout.splitlines()
    titles = lines[0].split() if lines else []
    if "PID" not in titles:
        raise HttpError(500, "Couldn't find PID field in ps output")
    at = titles.index("PID")
    rows = []
    for line in lines[1:]:
        fields = line.split(None, len(titles) - 1)
        if len(fields) > at and fields[at] in pids:
            rows.append(fields)
    return titles, rows


_KINDS = {"C": 0, "A": 1, "D": 2}


@route("GET", "/containers/{id}/changes", "Filesystem changes", "containers")
def containers_changes(request: Request) -> Response:
    with engine() as e:
        changes = e.diff(request.params[_ID])
    return json_response([{"Path": c.path, "Kind": _KINDS[c.kind]} for c in changes] or None)


@route("POST", "/containers/{id}/update", "New resource limits or restart policy",
       "containers")  # fmt: skip
def containers_update(request: Request) -> Response:
    from lamina.engine._options import parse_resources, parse_restart

    data = request.json()
    if not isinstance(data, dict):
        raise HttpError(400, "request body: expected a JSON object")
    b = _Body({"HostConfig": data})
    memory = b.take("Memory", int, 0, host=True)
    swap = b.take("MemorySwap", int, 0, host=True)
    nano = b.take("NanoCpus", int, 0, host=True)
    pids = b.take("PidsLimit", int, 0, host=True)
    resources = parse_resources(
        cpus=repr(nano / 1e9) if nano else None,
        cpu_shares=b.take("CpuShares", int, 0, host=True) or None,
        cpuset_cpus=b.take("CpusetCpus", str, "", host=True) or None,
        memory=str(memory) if memory else None,
        memory_swap=str(swap) if swap else None,
        pids_limit=pids if pids > 0 else None,
        cpu_count=os.cpu_count(), for_update=True,
    )  # fmt: skip
    restart = b.take("RestartPolicy", dict, {}, host=True)
    policy = None
    if restart.get("Name"):
        retries = restart.get("MaximumRetryCount") or 0
        name = restart["Name"]
        policy = parse_restart(f"{name}:{retries}" if name == "on-failure" and retries else name)
    left = b.unsupported()
    if left:
        raise HttpError(400, f"{', '.join(left)}: not supported by lamina")
    with engine() as e:
        e.update(request.params[_ID], resources, restart=policy)
    return json_response({"Warnings": []})
