"""``inspect`` of a container, shaped as Docker's: what the record says (state,
config, host config, mounts), over which the backend lays its own part (paths of its
bundle, its graph driver, a VM's shape and network) with ``merge``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lamina.runtime._signals import signal_name, stop_signal
from lamina.runtime._types import ContainerConfig, Record, Status

# What Docker calls running: a container waiting for its restart policy is.
_UP = (Status.RUNNING, Status.PAUSED, Status.RESTARTING)
# Where containers made before the engine kept why a process container got its isolation.
REASON_LABEL = "lamina.isolation.reason"


def inspect_record(rec: Record, *, root: Path, log_path: Path, backend: str) -> dict[str, Any]:
    cfg = rec.config
    st = rec.state
    process = rec.process
    found = {
        "Id": rec.id,
        "Name": "/" + rec.name,
        "Created": iso_time(rec.created),
        "Path": (process.args or [""])[0],
        "Args": process.args[1:],
        "State": {
            "Status": rec.status.value,
            "Running": rec.status in _UP,
            "Paused": rec.status == Status.PAUSED,
            "Restarting": rec.status == Status.RESTARTING,
            "OOMKilled": st.oom_killed,
            "Dead": False,
            "Pid": st.pid,
            "ExitCode": st.exit_code or 0,
            "Error": st.error,
            "StartedAt": iso_time(st.started_at),
            "FinishedAt": iso_time(st.finished_at),
        },
        "Image": rec.extra.get("image_id", ""),
        "ImageDigest": rec.image_digest,
        "RestartCount": restart_count(rec),
        "LogPath": str(log_path) if cfg.log_driver != "none" else "",
        "Platform": "linux",
        "Config": {
            "Hostname": process.hostname,
            "User": cfg.user or "",
            "Tty": cfg.tty,
            "OpenStdin": cfg.stdin_open,
            "Env": list(process.env),
            "Cmd": cfg.command,
            "Entrypoint": cfg.entrypoint,
            "Image": cfg.image_ref or cfg.image,
            "WorkingDir": process.cwd,
            "Labels": dict(cfg.labels),
            "StopSignal": signal_name(stop_signal(cfg.stop_signal, rec.extra.get("stop_signal"))),
            "StopTimeout": cfg.stop_timeout,
        },
        "HostConfig": {
            "AutoRemove": cfg.auto_remove,
            "RestartPolicy": {
                "Name": cfg.restart.name,
                "MaximumRetryCount": cfg.restart.max_retries,
            },
            "NetworkMode": cfg.network,
            "Privileged": cfg.security.privileged,
            "ReadonlyRootfs": cfg.security.read_only_rootfs,
            "CapAdd": list(cfg.security.cap_add),
            "CapDrop": list(cfg.security.cap_drop),
            "SecurityOpt": _security_opts(cfg),
            "Memory": cfg.resources.memory or 0,
            "MemorySwap": cfg.resources.memory_swap or 0,
            "NanoCpus": int((cfg.resources.cpus or 0) * 1e9),
            "CpuShares": cfg.resources.cpu_shares or 0,
            "CpusetCpus": cfg.resources.cpuset_cpus or "",
            "PidsLimit": cfg.resources.pids_limit,
            "Ulimits": [{"Name": u.name, "Soft": u.soft, "Hard": u.hard} for u in cfg.ulimits],
            "Sysctls": dict(cfg.sysctls),
            "Tmpfs": dict(cfg.tmpfs),
            "Init": cfg.init,
            "Binds": [
                f"{m.source}:{m.target}{':ro' if m.read_only else ''}"
                for m in cfg.mounts
                if m.type == "bind"
            ],
            "LogConfig": {"Type": cfg.log_driver, "Config": dict(cfg.log_options)},
        },
        "Mounts": _mounts(rec, root),
        "NetworkSettings": {"IPAddress": "", "Networks": {cfg.network: {}}},
        "Isolation": rec.isolation,
        "IsolationReason": isolation_reason(rec),
        "Backend": backend,
    }
    if cfg.healthcheck:  # Docker's: the merged check in Config, its state in State
        from lamina.engine._health import inspect_health

        found["Config"]["Healthcheck"] = dict(cfg.healthcheck)
        health = inspect_health(rec)
        if health is not None:
            found["State"]["Health"] = health
    return found


def restart_count(rec: Record) -> int:
    """Restarts by the restart policy since the last start by a user (RestartCount)."""
    from lamina.engine._restart import RestartState

    return RestartState.of(rec).count


def isolation_reason(rec: Record) -> str:
    cfg = rec.config
    return (
        cfg.isolation_reason
        or cfg.labels.get(REASON_LABEL)
        or ("--isolation vm" if rec.isolation == "vm" else "--isolation process (default)")
    )


def merge(base: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``part`` laid over it: mappings merged key by key, the rest
    replaced."""
    for key, value in part.items():
        mine = base.get(key)
        if isinstance(mine, dict) and isinstance(value, dict):
            merge(mine, value)
        else:
            base[key] = value
    return base


def _mounts(rec: Record, root: Path) -> list[dict[str, object]]:
    cfg = rec.config
    volumes = rec.extra.get("volumes") or {}
    mounts: list[dict[str, object]] = []
    for m in cfg.mounts:
        entry: dict[str, object] = {
            "Type": m.type,
            "Destination": m.target,
            "RW": not m.read_only,
            "Mode": ",".join(m.options),
        }
        if m.type == "volume":
            name = volumes.get(m.target, m.source)
            entry["Name"] = name
            entry["Driver"] = "local"
            entry["Source"] = str(root / "volumes" / name / "_data")
        else:
            entry["Source"] = m.source
        mounts.append(entry)
    for path, opts in cfg.tmpfs.items():
        mounts.append({"Type": "tmpfs", "Destination": path, "Source": "", "RW": True,
                       "Mode": opts})  # fmt: skip
    return mounts


def _security_opts(cfg: ContainerConfig) -> list[str]:
    out = []
    if cfg.security.seccomp:
        out.append(f"seccomp={cfg.security.seccomp}")
    if cfg.security.no_new_privileges:
        out.append("no-new-privileges")
    return out


def iso_time(ts: float | None) -> str:
    """Docker's time format (RFC 3339 with nanoseconds); the zero time for none."""
    if not ts:
        return "0001-01-01T00:00:00Z"
    secs = int(ts)
    frac = round((ts - secs) * 1e9)
    if frac >= 1_000_000_000:
        secs, frac = secs + 1, frac - 1_000_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"
