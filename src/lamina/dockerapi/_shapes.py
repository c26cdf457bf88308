"""Docker's JSON shapes of containers, from the engine's data: a ``/containers/json``
entry, what differs in ``inspect`` (the engine's is already Docker's), a ``stats``
sample. Pure functions: no engine calls."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lamina.engine import Container, Stats


def state_word(status: str, started: bool) -> str:
    """Docker's State.Status: lamina's ``failed`` is ``created`` when it never ran
    (a first start that failed), else ``exited``."""
    if status == "failed":
        return "exited" if started else "created"
    return status


def network_names(c: Container) -> list[str]:
    """The networks a container is on (its bridge networks, else its mode)."""
    return [n.name for n in c.config.networks] or [c.config.network]


def list_entry(c: Container, now: float, *, size: int | None = None) -> dict[str, Any]:
    """One container of ``GET /containers/json``."""
    from lamina.cli._common import status_text
    from lamina.engine._filters import state_word as ps_state

    cfg = c.config
    ports = [{"IP": p.host_ip or "0.0.0.0", "PrivatePort": p.container_port,
              "PublicPort": p.host_port, "Type": p.protocol} for p in c.ports]  # fmt: skip
    from lamina.dockerapi._networks import docker_name

    networks = {
        docker_name(name): {"NetworkID": "", "IPAddress": c.ip_address if i == 0 else "",
                            "Aliases": []}
        for i, name in enumerate(network_names(c))
    }  # fmt: skip
    entry: dict[str, Any] = {
        "Id": c.id,
        "Names": ["/" + c.name],
        "Image": cfg.image_ref or cfg.image,
        "ImageID": cfg.image,
        "Command": " ".join(c.command),
        "Created": int(c.created),
        "Ports": ports,
        "Labels": dict(cfg.labels),
        "State": ps_state(c),
        "Status": status_text(c, now),
        "HostConfig": {"NetworkMode": docker_name(cfg.network)},
        "NetworkSettings": {"Networks": networks},
        "Mounts": [_mount(m.type, m.source, m.target, not m.read_only) for m in cfg.mounts],
    }
    if size is not None:
        entry["SizeRw"] = size
    return entry


def _mount(kind: str, source: str, target: str, rw: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"Type": kind, "Source": source, "Destination": target, "RW": rw,
                           "Mode": "", "Propagation": ""}  # fmt: skip
    if kind == "volume":
        out.update(Name=source, Driver="local")
    return out


def inspect(found: dict[str, Any]) -> dict[str, Any]:
    """The engine's inspect with what Docker's has and it lacks (or words otherwise)."""
    state = found["State"]
    state["Status"] = state_word(state["Status"], state["StartedAt"] != _ZERO_TIME)
    state.setdefault("Dead", False)
    config = found.setdefault("Config", {})
    exposed: dict[str, Any] = {p: {} for p in found.get("NetworkSettings", {}).get("Ports") or {}}
    mounts = found.get("Mounts", [])
    volumes: dict[str, Any] = {m["Destination"]: {} for m in mounts if m.get("Type") == "volume"}
    for key, value in (("Domainname", ""), ("AttachStdin", False), ("AttachStdout", False),
                       ("AttachStderr", False), ("StdinOnce", False), ("ExposedPorts", exposed),
                       ("Volumes", volumes)):  # fmt: skip
        config.setdefault(key, value)
    if config.get("Entrypoint") is None:
        config["Entrypoint"] = []
    if config.get("Cmd") is None:  # the image's, as Docker shows it: what runs, less the entrypoint
        ran = [found.get("Path") or "", *(found.get("Args") or [])] if found.get("Path") else []
        entry = config["Entrypoint"]
        config["Cmd"] = ran[len(entry) :] if ran[: len(entry)] == entry else ran
    host = found.setdefault("HostConfig", {})
    if host.get("ExtraHosts") is None:
        host["ExtraHosts"] = []
    log = host.get("LogConfig") or {}
    if log.get("Type") in ("k8s-file", "local"):  # lamina's file log: Docker's json-file
        log["Type"] = "json-file"
    from lamina.dockerapi._networks import docker_name

    settings = found.get("NetworkSettings") or {}
    if isinstance(settings.get("Networks"), dict):  # lamina's default network is Docker's bridge
        settings["Networks"] = {docker_name(k): v for k, v in settings["Networks"].items()}
    if isinstance(found.get("HostConfig", {}).get("NetworkMode"), str):
        found["HostConfig"]["NetworkMode"] = docker_name(found["HostConfig"]["NetworkMode"])
    for network in settings.get("Networks", {}).values():
        for key in ("Links", "Aliases", "DNSNames"):
            if key in network and network[key] is None:
                network[key] = []
    host["Isolation"] = "vm" if found.get("Isolation") == "vm" else ""
    host.setdefault("Mounts", [])
    found.setdefault("Driver", "overlay")
    found.setdefault("MountLabel", "")
    found.setdefault("ProcessLabel", "")
    found.setdefault("AppArmorProfile", "")
    found.setdefault("ExecIDs", None)
    found.setdefault("ResolvConfPath", "")
    found.setdefault("HostnamePath", "")
    found.setdefault("HostsPath", "")
    return found


_ZERO_TIME = "0001-01-01T00:00:00Z"


def rfc3339(ts: float) -> str:
    from lamina.engine._inspect import iso_time

    return iso_time(ts) if ts else _ZERO_TIME


def stats(
    sample: Stats, previous: Stats | None, *, name: str, cid: str, ncpu: int
) -> dict[str, Any]:
    """Docker's stats JSON (cgroup v1 keys) of ``sample``, ``previous`` as its
    ``precpu_stats`` (zeros for the first)."""
    before = previous
    return {
        "read": rfc3339(sample.timestamp or time.time()),
        "preread": rfc3339(before.timestamp) if before else _ZERO_TIME,
        "name": "/" + name,
        "id": cid,
        "num_procs": 0,
        "pids_stats": {"current": sample.pids},
        "cpu_stats": _cpu(sample, ncpu),
        "precpu_stats": _cpu(before, ncpu) if before else {
            "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}},
        "memory_stats": {"usage": sample.memory_used, "limit": sample.memory_limit,
                         "stats": {}},
        "blkio_stats": {"io_service_bytes_recursive": [
            {"major": 0, "minor": 0, "op": "read", "value": sample.block_read},
            {"major": 0, "minor": 0, "op": "write", "value": sample.block_write}]},
        "networks": {"eth0": {"rx_bytes": sample.net_rx, "tx_bytes": sample.net_tx,
                              "rx_packets": 0, "tx_packets": 0, "rx_errors": 0,
                              "tx_errors": 0, "rx_dropped": 0, "tx_dropped": 0}},
        "storage_stats": {},
    }  # fmt: skip


def _cpu(s: Stats, ncpu: int) -> dict[str, Any]:
    return {
        "cpu_usage": {"total_usage": s.cpu_usage_ns, "usage_in_kernelmode": 0,
                      "usage_in_usermode": 0},
        "system_cpu_usage": s.system_cpu_ns,
        "online_cpus": ncpu,
        "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    }  # fmt: skip
