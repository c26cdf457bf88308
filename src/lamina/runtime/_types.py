"""Plain data shared by the engine and the task backends: what to run, and what
came of it.

``ContainerConfig`` is the isolation-neutral description of a container, built by a
front end (the CLI's flags, the builder's RUN step) and settled by the engine;
``Record`` is a container as the engine's store keeps it, with ``task``, the part
its backend owns; ``ProcessSpec`` is what the workload runs, merged once from image
config and run options. The other dataclasses are what operations return.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    EXITED = "exited"
    FAILED = "failed"  # never ran properly: runtime or monitor error, with a reason
    REMOVING = "removing"
    # Exited, and waiting for its restart policy to start it again (Docker's state of
    # that name: ``ps`` lists it, ``stop``/``kill``/``rm -f`` end the wait).
    RESTARTING = "restarting"


class WaitCondition(StrEnum):
    NOT_RUNNING = "not-running"
    NEXT_EXIT = "next-exit"
    REMOVED = "removed"


class ExitReason(StrEnum):
    EXITED = "exited"
    SIGNAL = "signal"
    OOM_KILLED = "oom_killed"
    RUNTIME_ERROR = "runtime_error"


@dataclass
class Mount:
    """A bind mount, named or anonymous volume, or tmpfs."""

    type: str  # "bind" | "volume" | "tmpfs"
    target: str
    source: str = ""  # host path (bind) or volume name (volume; empty = anonymous)
    read_only: bool = False
    options: list[str] = field(default_factory=list)  # e.g. tmpfs size=64m,mode=1777


@dataclass
class Resources:
    """cgroup limits; None leaves a limit unset (or unchanged, for ``update``)."""

    cpus: float | None = None  # --cpus: quota/period
    cpu_shares: int | None = None
    cpuset_cpus: str | None = None
    memory: int | None = None  # bytes
    memory_swap: int | None = None  # bytes, -1 = unlimited
    pids_limit: int | None = None


@dataclass
class Ulimit:
    """One rlimit of the container's processes."""

    name: str  # "nofile", "nproc", ... (without RLIMIT_)
    soft: int
    hard: int


@dataclass
class Security:
    """What the container may do: capabilities, seccomp, privileges, root mode."""

    privileged: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    seccomp: str | None = None  # None = default profile, "unconfined", or a JSON file path
    no_new_privileges: bool = True
    read_only_rootfs: bool = False


@dataclass
class PortMapping:
    """One published port (``-p [IP:][HOSTPORT:]PORT[/PROTO]``): connections to the host's
    ``host_ip:host_port`` reach the container's ``container_port``. In a config,
    ``host_port`` 0 asks for a free port, chosen at each start; ``Container.ports``
    holds the ports of the current run, resolved."""

    container_port: int
    protocol: str = "tcp"  # "tcp" | "udp"
    host_ip: str = ""  # "" = every interface (0.0.0.0)
    host_port: int = 0

    @property
    def private(self) -> str:
        """Docker's key for the container's side: ``80/tcp``."""
        return f"{self.container_port}/{self.protocol}"

    @property
    def public(self) -> str:
        """The host's side: ``0.0.0.0:8080``."""
        return f"{self.host_ip or '0.0.0.0'}:{self.host_port}"

    def __str__(self) -> str:  # docker ps's PORTS column: 0.0.0.0:8080->80/tcp
        return f"{self.public}->{self.private}"


@dataclass
class NetworkRequest:
    """A bridge network a container asks to join (``--network NAME`` and what goes with
    it: ``--network-alias``, ``--ip``, ``--ip6``, ``--mac-address``, or the keys of
    ``--network name=NAME,alias=A,ip=IP,...``). ``name`` "" is the isolation's default
    network, named by the engine."""

    name: str
    aliases: list[str] = field(default_factory=list)
    ip: str = ""  # a static IPv4 address; "" = one the engine leases
    ip6: str = ""
    mac: str = ""  # "" = a random one


@dataclass
class Endpoint:
    """One attachment of a container to a bridge network: what the engine leased for it
    (addresses, MAC, DNS names), realised by the isolation for each run (a veth by
    netavark in a process container's namespace; a tap for a VM)."""

    network: str  # the network's name
    network_id: str
    endpoint_id: str
    interface: str  # inside the container: eth0, eth1, ...
    ipv4: str = ""
    prefix: int = 0
    gateway: str = ""
    ipv6: str = ""
    prefix6: int = 0
    gateway6: str = ""
    mac: str = ""
    aliases: list[str] = field(default_factory=list)  # as asked (``--network-alias``)
    dns: bool = False  # the network resolves its containers' names (aardvark-dns)
    internal: bool = False
    requested: dict[str, str] = field(default_factory=dict)  # the static addresses asked


@dataclass
class NetworkRun:
    """What the engine's network layer made for one run of a container, given to its
    task backend's ``start``: the network namespace to join (process containers), the
    endpoints as realised, the published ports with their host ports chosen, and
    sockets bound to those host ports, which the monitor keeps open for the run (so
    no other process takes them)."""

    netns: str = ""
    endpoints: list[Endpoint] = field(default_factory=list)
    ports: list[PortMapping] = field(default_factory=list)
    port_fds: list[int] = field(default_factory=list)


@dataclass
class RestartPolicy:
    """Docker's ``HostConfig.RestartPolicy`` (``--restart``): ``name`` no, always,
    on-failure or unless-stopped; ``max_retries`` (on-failure only) the most restarts
    of one start, 0 for no limit."""

    name: str = "no"
    max_retries: int = 0


@dataclass
class ContainerConfig:
    """Everything needed to create a container, independent of the backend."""

    image: str  # image ID (config digest) in the local store
    image_ref: str = ""  # what the user typed, for listings
    name: str | None = None
    entrypoint: list[str] | None = None  # None = image's; [] = cleared
    command: list[str] | None = None  # None = image's
    env: list[str] = field(default_factory=list)  # user's KEY=VALUE, applied last
    working_dir: str | None = None
    user: str | None = None  # "uid[:gid]" or names
    hostname: str | None = None
    tty: bool = False
    stdin_open: bool = False
    # Docker's NetworkMode: "none" | "host" | "container:<id>" | a bridge network's name
    # (process; ``networks`` holds each one joined, this one first); "nat" | "none" (VM:
    # QEMU's user-mode NAT). A config made here has none; ``run`` and ``create``
    # settle it to the default network (``lamina``) unless told otherwise.
    network: str = "none"
    networks: list[NetworkRequest] = field(default_factory=list)
    ports: list[PortMapping] = field(default_factory=list)  # -p: host port 0 = a free one
    publish_all: bool = False  # -P: the image's EXPOSEd ports (and ``expose``) too
    expose: list[str] = field(default_factory=list)  # --expose PORT[/PROTO]
    dns: list[str] = field(default_factory=list)  # --dns servers
    dns_search: list[str] = field(default_factory=list)
    dns_options: list[str] = field(default_factory=list)
    extra_hosts: list[str] = field(default_factory=list)  # --add-host NAME:IP
    mounts: list[Mount] = field(default_factory=list)
    tmpfs: dict[str, str] = field(default_factory=dict)  # path -> options
    sysctls: dict[str, str] = field(default_factory=dict)
    ulimits: list[Ulimit] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)
    security: Security = field(default_factory=Security)
    stop_signal: str | None = None  # None = image's or SIGTERM
    stop_timeout: int = 10
    init: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    auto_remove: bool = False
    isolation: str = "process"
    isolation_reason: str = ""  # why the engine chose ``isolation`` (inspect's IsolationReason)
    vm_base: str | None = None  # --vm-base: a VM base bundle directory or reference
    # A lamina._leases lease id: the container is disposable work of that process (a
    # build's RUN step); once the lease is not alive, the runtime removes it.
    owner: str = ""
    # --log-driver: json-file, k8s-file and local are lamina's file log, none keeps
    # none; --log-opt KEY=VALUE (max-size, max-file). Checked by runtime._logs.
    log_driver: str = "k8s-file"
    log_options: dict[str, str] = field(default_factory=dict)
    restart: RestartPolicy = field(default_factory=RestartPolicy)  # --restart
    # Docker's HealthConfig with Docker's keys (Test, Interval, Timeout, StartPeriod,
    # StartInterval in ns, Retries): the run flags' before ``create``, merged with the
    # image's HEALTHCHECK by it (``engine._health``). None: the image's, or none.
    healthcheck: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # Configs read back from JSON hold plain dicts.
        self.ports = [PortMapping(**p) if isinstance(p, dict) else p for p in self.ports]
        self.networks = [NetworkRequest(**n) if isinstance(n, dict) else n for n in self.networks]
        if isinstance(self.restart, dict):
            self.restart = RestartPolicy(**self.restart)


@dataclass
class ContainerState:
    """The state of a container's current or last run."""

    status: Status
    pid: int = 0
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""
    started_at: float | None = None
    finished_at: float | None = None


@dataclass
class WaitOutcome:
    """How a run ended, as ``wait`` reports it."""

    exit_code: int
    reason: ExitReason
    signal: str | None = None  # "SIGKILL" when exit_code > 128 by a signal
    finished_at: float | None = None
    error: str = ""


@dataclass
class ExecResult:
    """The exit status of an exec, with its captured output (empty when streamed)."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False  # killed after the exec's ``timeout`` (exit_code is then -1)
    truncated: bool = False  # more output came than the exec's ``output_limit`` kept
    detached: bool = False  # left running by the detach keys (exit_code 0: not its own)


@dataclass
class ExecSink:
    """A streamed exec's stdio when it is not the caller's own (the daemon relays it to
    its client). ``write(stream, data)`` takes the output as it comes (1 stdout, 2
    stderr; 1 alone with a terminal) and raises OSError once its reader has gone;
    ``stdin_fd`` is read to its end (None: no input); ``gone()`` is polled while the
    exec is silent. A reader gone ends the exec: its process is killed, the
    container is not touched. ``size`` is the terminal's first (rows, cols); while a
    terminal exec runs, the backend sets ``resize`` to follow later sizes. A terminal
    exec whose stdin brings the detach keys calls ``detached()`` and runs on: from
    then its output is dropped and neither ``write`` nor ``gone`` is called."""

    write: Callable[[int, bytes], None]
    gone: Callable[[], bool]
    stdin_fd: int | None = None
    size: tuple[int, int] | None = None
    resize: Callable[[int, int], None] | None = None
    detached: Callable[[], None] | None = None


@dataclass
class Stats:
    """One resource usage sample of a container."""

    cpu_usage_ns: int = 0
    system_cpu_ns: int = 0  # host CPU time at the sample, for cpu_percent
    cpu_percent: float = 0.0
    memory_used: int = 0
    memory_limit: int = 0
    pids: int = 0
    block_read: int = 0
    block_write: int = 0
    net_rx: int = 0
    net_tx: int = 0
    timestamp: float = 0.0


@dataclass
class Container:
    """A container as listed and inspected."""

    id: str
    name: str
    config: ContainerConfig
    state: ContainerState
    created: float
    backend: str  # "oci" | "vm"
    isolation_reason: str = ""
    ip_address: str = ""
    ports: list[PortMapping] = field(default_factory=list)  # published now (resolved)
    command: list[str] = field(default_factory=list)  # what it runs: entrypoint + command
    health: str = ""  # its health check's status: starting, healthy, unhealthy; "" none


@dataclass
class ProcessSpec:
    """The workload's process: Docker's precedence of run options over image config,
    applied once by the engine. The user is resolved by the backend, in the
    container's own files (its ``/etc/passwd``), which also gives ``HOME`` when
    ``env`` has none."""

    args: list[str]
    env: list[str]
    cwd: str = "/"
    user: str = ""  # --user, else the image's User ("" = root)
    hostname: str = ""


@dataclass
class Record:
    """A container in the engine's store, from ``create`` until ``remove``. ``extra``
    is the engine's bookkeeping (the image it holds, its volumes, its process, marks
    of work in flight); ``task`` belongs to the backend of its ``isolation``
    (runtime binary and lower dirs, a VM's shape and shares...), written by the
    engine from what the backend returns. ``pid`` is the workload as the host sees
    it, ``monitor_pid`` the process that outlives every lamina command to record its
    exit (conmon; a VM's supervisor); both with their start times (``/proc`` stat),
    which tell a live process from a reused pid."""

    id: str
    name: str
    created: float
    image_digest: str
    config: ContainerConfig
    isolation: str = "process"
    extra: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    status: Status = Status.CREATED
    pid: int = 0
    pid_start: int = 0
    monitor_pid: int = 0
    monitor_start: int = 0
    exit_code: int | None = None
    reason: str = ""
    oom_killed: bool = False
    error: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    exits: int = 0  # runs ended so far: next-exit waits for a change

    @property
    def state(self) -> ContainerState:
        return ContainerState(
            status=self.status,
            pid=self.pid if self.status in (Status.RUNNING, Status.PAUSED) else 0,
            exit_code=self.exit_code,
            oom_killed=self.oom_killed,
            error=self.error,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )

    @property
    def exit_reason(self) -> ExitReason:
        try:
            return ExitReason(self.reason)
        except ValueError:
            return ExitReason.EXITED

    @property
    def process(self) -> ProcessSpec:
        return ProcessSpec(**self.extra.get("process") or {"args": [], "env": []})

    @property
    def endpoints(self) -> list[Endpoint]:
        """The bridge networks the container is attached to (the engine's leases)."""
        return [Endpoint(**e) for e in self.extra.get("endpoints") or []]


@dataclass
class Started:
    """What a backend's ``start`` launched: the workload and its monitor (PIDs with
    their start times), and what it changed of its ``task`` part."""

    pid: int
    pid_start: int
    monitor_pid: int
    monitor_start: int
    task: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExitStatus:
    """How a run ended, as its monitor wrote it down (the exit file). ``failed``: the
    workload never ran (a VM that did not boot); ``error`` says why, when something
    other than the workload decided the code."""

    code: int
    signaled: bool = False
    error: str = ""
    failed: bool = False


@dataclass
class Signalled:
    """What sending a signal did: ``error`` is the runtime's refusal ("" when it was
    delivered); ``direct`` names what got it when the runtime could not act and the
    backend reached the processes itself, ``where`` where they are (said in one line
    by the engine)."""

    error: str = ""
    direct: str = ""
    where: str = ""


@dataclass
class LogEntry:
    """One line (or the unterminated rest) of a container's stdout or stderr."""

    stream: str  # "stdout" | "stderr"
    timestamp: float
    data: bytes


@dataclass
class ChangeEntry:
    """One ``docker diff`` line."""

    kind: str  # "A" added, "C" changed, "D" deleted (docker diff)
    path: str


@dataclass(frozen=True)
class PathStat:
    """What ``stat_path`` finds at a path in a container (Docker's ContainerPathStat)."""

    name: str  # the path's last component
    size: int
    mode: int  # st_mode: file type and permission bits
    mtime: float
    link_target: str = ""  # a symlink's target, resolved inside the container; else ""

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)
