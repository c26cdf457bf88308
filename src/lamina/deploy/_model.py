"""The one deployment model: what a ZLayer v1 spec and a Compose file both become.

Field names are ZLayer's YAML keys (snake_case; ``with`` is ``with_``, alias "with");
Compose-only things are fields too (``build``, service ``networks`` and ``secrets``,
``expose``, top-level ``networks``/``volumes``/``secrets``). Durations are float
seconds and sizes int bytes: the unit strings of the files are parsed on the way in,
and plain numbers pass unchanged, so ``model_dump(mode="json")`` ->
``DeploymentSpec.model_validate(...)`` round-trips (the client sends the parsed model
to the daemon as JSON). Checks across fields (dependencies, cycles, cron, host
ports) are ``_spec.check_services``', which both formats pass.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue

from lamina.deploy._units import parse_duration, parse_size

# -- units: strings of the files parsed, numbers (the JSON form) taken as they are

Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
Port = Annotated[int, Field(ge=1, le=65535)]

SECRET_PREFIX = "$S:"  # env value naming a secret of lamina's store, kept as a reference
HOST_ENV_PREFIX = "$E:"  # env value taken from the deployer's environment by load_spec


class _Model(BaseModel):
    # numbers where text is expected are their text (args: [sleep, 10]), as YAML writes them
    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, serialize_by_alias=True, coerce_numbers_to_str=True
    )


# -- image, command, resources


class ImageSpec(_Model):
    name: str = Field(min_length=1)
    # newer: pull when the registry's digest differs from the local one (a rollout follows)
    pull_policy: Literal["always", "newer", "if_not_present", "never"] = "if_not_present"


class BuildSpec(_Model):
    """Compose ``build``: built by lamina's builder and tagged ``image.name``."""

    context: str  # absolute (relative paths are made so against the file's directory)
    dockerfile: str | None = None  # relative to context, as Compose has it
    args: dict[str, str] = {}
    target: str | None = None


class CommandSpec(_Model):
    entrypoint: list[str] | None = None  # None: the image's ENTRYPOINT
    args: list[str] | None = None  # None: the image's CMD
    workdir: str | None = None


class ResourcesSpec(_Model):
    cpu: float | None = Field(default=None, gt=0)  # cores, e.g. 0.5
    memory: Size | None = None
    pids_limit: int | None = Field(default=None, ge=1)


# -- scale: tagged by mode


class FixedScale(_Model):
    mode: Literal["fixed"] = "fixed"
    replicas: int = Field(ge=0)


class ManualScale(_Model):
    """Replicas set by ``lamina service scale`` only; one until then."""

    mode: Literal["manual"] = "manual"


class ScaleTargets(_Model):
    cpu: int | None = Field(default=None, ge=1, le=100)  # percent of the CPU limit
    memory: int | None = Field(default=None, ge=1, le=100)  # percent of the memory limit
    rps: int | None = Field(default=None, ge=1)  # accepted from ZLayer, not acted on


class AdaptiveScale(_Model):
    mode: Literal["adaptive"] = "adaptive"
    min: int = Field(ge=0)
    max: int = Field(ge=1)
    cooldown: Duration = 30.0
    targets: ScaleTargets = ScaleTargets()


ScaleSpec = Annotated[FixedScale | ManualScale | AdaptiveScale, Field(discriminator="mode")]


def default_scale() -> AdaptiveScale:
    """ZLayer's default when a service names no scale: adaptive 1..10, 30 s cooldown."""
    return AdaptiveScale(min=1, max=10)


# -- endpoints, ports


class EndpointSpec(_Model):
    name: str = Field(min_length=1)
    protocol: Literal["http", "https", "tcp", "udp", "websocket"]
    port: Port  # the port the proxy (ingress) listens on
    target_port: Port | None = None  # the container's port; None: same as port
    path: str | None = None  # URL prefix (http, https, websocket)
    host: str | None = None  # virtual host the ingress routes by
    expose: Literal["public", "internal"] = "internal"

    def container_port(self) -> int:
        return self.target_port if self.target_port is not None else self.port


class PortMapping(_Model):
    """A host port published to a replica (Compose ``ports``, one entry a port)."""

    host_port: Port | None = None  # None: an ephemeral host port
    container_port: Port
    protocol: Literal["tcp", "udp"] = "tcp"
    host_ip: str | None = None  # None: all addresses


class ExposedPort(_Model):
    """Compose ``expose``: a port other services reach, published to no host port."""

    port: Port
    protocol: Literal["tcp", "udp"] = "tcp"


# -- health: check tagged by type


class TcpCheck(_Model):
    type: Literal["tcp"] = "tcp"
    port: Port  # ZLayer's 0 ("the first endpoint") is resolved by the parser


class HttpCheck(_Model):
    type: Literal["http"] = "http"
    url: str = Field(min_length=1)  # http://localhost:PORT/path, fetched in the replica's netns
    expect_status: int = Field(default=200, ge=100, le=599)


class CommandCheck(_Model):
    type: Literal["command"] = "command"
    # a string runs under /bin/sh -c (ZLayer's and Compose's CMD-SHELL), a list is
    # executed as it is (Compose's CMD)
    command: str | list[str]


class NoCheck(_Model):
    """Compose's ``test: ["NONE"]`` / ``disable: true``: also the image's HEALTHCHECK off."""

    type: Literal["none"] = "none"


HealthCheck = Annotated[TcpCheck | HttpCheck | CommandCheck | NoCheck, Field(discriminator="type")]


class HealthSpec(_Model):
    start_grace: Duration = 5.0  # failures in this time after start do not count
    interval: Duration = 30.0
    timeout: Duration = 30.0
    retries: int = Field(default=3, ge=1)
    check: HealthCheck


# -- dependencies, init, restart


class DependsSpec(_Model):
    service: str
    # completed: Compose's service_completed_successfully (exited 0)
    condition: Literal["started", "healthy", "ready", "completed"] = "healthy"
    timeout: Duration = 300.0
    on_timeout: Literal["fail", "warn", "continue"] = "fail"


class InitStep(_Model):
    id: str = Field(min_length=1)
    uses: Literal["init.wait_tcp", "init.wait_http", "init.run"]
    # wait_tcp: {host, port}; wait_http: {url, expect_status}; run: {command}; checked
    # by deploy._init, which runs them
    with_: dict[str, JsonValue] = Field(default={}, alias="with")  # JSON: the daemon gets it
    retry: int | None = Field(default=None, ge=0)
    timeout: Duration | None = None
    on_failure: Literal["fail", "warn", "continue"] = "fail"


class InitSpec(_Model):
    steps: list[InitStep] = []


class RestartPolicySpec(_Model):
    kind: Literal["no", "always", "unless_stopped", "on_failure"] = "always"
    max_attempts: int | None = Field(default=None, ge=0)  # on_failure only; None: no limit
    delay: Duration | None = None


# -- storage: tagged by type


class BindStorage(_Model):
    type: Literal["bind"] = "bind"
    source: str  # absolute host path
    target: str
    readonly: bool = False


class NamedStorage(_Model):
    type: Literal["named"] = "named"
    name: str = Field(min_length=1)  # a key of DeploymentSpec.volumes for Compose files
    target: str
    readonly: bool = False
    tier: Literal["local", "cached", "network"] = "local"  # ZLayer's; all are local here
    size: Size | None = None


class AnonymousStorage(_Model):
    type: Literal["anonymous"] = "anonymous"
    target: str
    tier: Literal["local", "cached", "network"] = "local"


class TmpfsStorage(_Model):
    type: Literal["tmpfs"] = "tmpfs"
    target: str
    size: Size | None = None
    mode: int | None = Field(default=None, ge=0, le=0o7777)


StorageSpec = Annotated[
    BindStorage | NamedStorage | AnonymousStorage | TmpfsStorage, Field(discriminator="type")
]


class PlatformSpec(_Model):
    os: str = "linux"
    arch: str | None = None  # amd64, arm64, ...; None: the host's
    variant: str | None = None


# -- Compose-only per service


class ServiceNetwork(_Model):
    name: str  # a key of DeploymentSpec.networks
    aliases: list[str] = []
    ipv4_address: str | None = None


class ServiceSecret(_Model):
    """A secret of lamina's store as a file in the replicas."""

    # the store's name: for a Compose file's secret KEY, file_secret_name(deployment, KEY),
    # the name the client stores the file under before it deploys
    source: str
    target: str  # absolute path in the container (Compose's default /run/secrets/KEY)
    mode: int | None = Field(default=None, ge=0, le=0o7777)


# -- the service and the deployment


class ServiceSpec(_Model):
    rtype: Literal["service", "job", "cron"] = "service"
    schedule: str | None = None  # cron; exactly when rtype is cron
    image: ImageSpec
    build: BuildSpec | None = None
    command: CommandSpec = CommandSpec()
    # values: literal, or "$S:name" (a secret of the store, resolved by the daemon);
    # "$E:VAR" never reaches the model (load_spec resolves it)
    env: dict[str, str] = {}
    resources: ResourcesSpec = ResourcesSpec()
    scale: ScaleSpec = Field(default_factory=default_scale)
    endpoints: list[EndpointSpec] = []
    health: HealthSpec | None = None  # None: no check of lamina's (the image's applies)
    depends: list[DependsSpec] = []
    init: InitSpec = InitSpec()
    restart_policy: RestartPolicySpec | None = None  # None: replicas are kept by the converger
    storage: list[StorageSpec] = []
    port_mappings: list[PortMapping] = []
    expose: list[ExposedPort] = []
    networks: list[ServiceNetwork] = []  # empty: the deployment's default network
    secrets: list[ServiceSecret] = []
    network_mode: str | None = None  # bridge (default), host, none
    hostname: str | None = None
    dns: list[str] = []
    extra_hosts: list[str] = []  # "host:ip", as Docker's --add-host
    cap_add: list[str] = []
    cap_drop: list[str] = []
    privileged: bool = False
    user: str | None = None
    labels: dict[str, str] = {}
    stop_signal: str | None = None
    stop_grace_period: Duration | None = None  # None: the engine's default (10 s)
    platform: PlatformSpec | None = None
    isolation: Literal["process", "vm", "auto"] = "process"

    def secret_refs(self) -> set[str]:
        """Names of the store's secrets this service uses: its env's (``$S:name``) and
        its secret files'."""
        refs = {
            secret_name(value) for value in self.env.values() if value.startswith(SECRET_PREFIX)
        }
        return refs | {secret.source for secret in self.secrets}


class NetworkDef(_Model):
    """Compose top-level ``networks`` entry."""

    name: str | None = None  # the network's real name; None: "{deployment}_{key}"
    driver: Literal["bridge"] | None = None
    external: bool = False
    internal: bool = False
    labels: dict[str, str] = {}
    subnet: str | None = None  # from ipam.config[0].subnet
    gateway: str | None = None


class VolumeDef(_Model):
    """Compose top-level ``volumes`` entry."""

    name: str | None = None  # the volume's real name; None: "{deployment}_{key}"
    driver: Literal["local"] | None = None
    driver_opts: dict[str, str] = {}
    external: bool = False
    labels: dict[str, str] = {}


class SecretDef(_Model):
    """Compose top-level ``secrets`` entry: a file on the deploying host, which the
    client puts in the store as ``file_secret_name(deployment, key)`` before deploying."""

    file: str  # absolute


class DeploymentSpec(_Model):
    version: Literal["v1"] = "v1"
    deployment: str
    services: dict[str, ServiceSpec] = {}
    networks: dict[str, NetworkDef] = {}
    volumes: dict[str, VolumeDef] = {}
    secrets: dict[str, SecretDef] = {}
    source: Literal["zlayer", "compose"] = "zlayer"

    def secret_refs(self) -> set[str]:
        """Names of the store's secrets the deployment refers to; the daemon checks
        they exist before it deploys."""
        refs: set[str] = set()
        for service in self.services.values():
            refs |= service.secret_refs()
        return refs


def file_secret_name(deployment: str, key: str) -> str:
    """The store's name of a Compose file's secret ``key``: ``{deployment}_{key}``, as
    Compose names the secrets of a project."""
    return f"{deployment}_{key}"


def secret_name(value: str) -> str:
    """The store's name in a ``$S:`` reference: ``$S:db-pass`` and ZLayer's cross-service
    ``$S:@svc/db-pass`` both name ``db-pass``."""
    ref = value[len(SECRET_PREFIX) :]
    if ref.startswith("@"):
        return ref.partition("/")[2]
    return ref
