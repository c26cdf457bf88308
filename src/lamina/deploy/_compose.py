"""Compose files -> the deployment model (``DeploymentSpec`` with source "compose").

The document is interpolated first (``_interpolate``: the process environment wins
over ``.env`` beside the file), then each service is converted key by key into the
model's shape and validated like a ZLayer service. Errors name Compose's paths
(``services.web.ports[0]``). A key lamina does not support is an error naming it;
``x-`` keys are ignored anywhere. Compose's own semantics kept: a service without
``deploy.replicas`` runs one replica; ``depends_on`` as a list waits for
``service_started``; relative paths are relative to the file's directory; services
with ``profiles`` run only when one of them is active (``COMPOSE_PROFILES`` too).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina.deploy._interpolate import chain, interpolate_tree, parse_env_file
from lamina.deploy._model import DeploymentSpec, file_secret_name
from lamina.deploy._spec import (
    InvalidSpec,
    Problems,
    build_spec,
    check_deployment_name,
    join,
    read_capped,
)
from lamina.errors import LaminaError

# converts the value of one Compose key of a service into the model's shape (``out``)
_Converter = Callable[["_Service", Any], None]

_TOP_KEYS = {"version", "name", "services", "networks", "volumes", "secrets"}
_PULL_POLICIES = {
    "always": "always",
    "never": "never",
    "missing": "if_not_present",
    "if_not_present": "if_not_present",
}
_RESTART = {"no": "no", "always": "always", "unless-stopped": "unless_stopped"}
_CONDITIONS = {
    "service_started": "started",
    "service_healthy": "healthy",
    "service_completed_successfully": "completed",
}
MAX_ENV_FILE_BYTES = 1 << 20
MAX_PORT_RANGE = 4096  # ports of one range; each becomes a mapping of its own
MAX_PORTS = 65536  # of a file
_PORT = re.compile(r"(\d+)(?:-(\d+))?")
_TMPFS_OPTION = re.compile(r"(size|mode)=(.+)")


def _is_extension(key: Any) -> bool:
    return isinstance(key, str) and key.startswith("x-")


class _Service:
    """One Compose service being converted: its path, the model-shaped result and
    what it needs from the rest of the file."""

    def __init__(self, name: str, ctx: _Context) -> None:
        self.name = name
        self.path = join("services", name)
        self.ctx = ctx
        self.out: dict[str, Any] = {}

    def problem(self, key: str | int, message: str) -> None:
        self.ctx.problems.add(join(self.path, key) if key != "" else self.path, message)

    def sub(self, *keys: str | int) -> str:
        path = self.path
        for key in keys:
            path = join(path, key)
        return path


@dataclass
class _Context:
    base_dir: Path
    environ: Mapping[str, str]
    lookup: Callable[[str], str | None]
    problems: Problems
    top: dict[Any, Any]  # the interpolated document
    project: str  # the deployment's name
    ports_left: int = MAX_PORTS  # ports and exposed ports of the file, ranges expanded

    _defined: dict[str, set[str]] = field(default_factory=dict)

    def defined(self, section: str) -> set[str]:
        """The names a top-level section defines (none if it is not a mapping)."""
        if section not in self._defined:
            entries = self.top.get(section)
            self._defined[section] = set(map(str, entries)) if isinstance(entries, dict) else set()
        return self._defined[section]

    def spend_ports(self, count: int) -> None:
        self.ports_left -= count
        if self.ports_left < 0:
            raise _Bad(f"too many ports: more than {MAX_PORTS} in the file, ranges expanded")

    def host_path(self, path: str) -> str:
        """A bind source or build context made absolute against the file's directory."""
        if path == "~" or path.startswith("~/"):
            home = self.environ.get("HOME") or os.path.expanduser("~")
            path = home + path[1:]
        return os.path.normpath(self.base_dir / path)


def parse_compose(
    data: dict[Any, Any],
    filename: str,
    environ: Mapping[str, str],
    base_dir: Path,
    profiles: tuple[str, ...] = (),
) -> DeploymentSpec:
    problems = Problems(rename=_compose_path)
    dotenv = _read_dotenv(base_dir, environ, problems)
    lookup = chain(environ, dotenv)
    errors: list[tuple[str, str]] = []
    doc = interpolate_tree(data, "", lookup, errors)
    for path, message in errors:
        problems.add(path, message)
    problems.raise_if_any()  # what follows would read the templates left unexpanded
    for key in doc:
        if not _is_extension(key) and key not in _TOP_KEYS:
            problems.add(str(key), "unknown key" + _unsupported_hint(key))
    project = _project_name(doc, base_dir, lookup, problems)
    ctx = _Context(base_dir, environ, lookup, problems, doc, project)
    active = set(profiles) | {p for p in (lookup("COMPOSE_PROFILES") or "").split(",") if p}
    top: dict[str, Any] = {
        "deployment": project,
        "networks": _top_section(doc, "networks", _network_def, ctx),
        "volumes": _top_section(doc, "volumes", _volume_def, ctx),
        "secrets": _top_section(doc, "secrets", _secret_def, ctx),
        "source": "compose",
    }
    raw_services = doc.get("services")
    services: Any = raw_services
    if isinstance(raw_services, dict):
        selected = {
            name: raw
            for name, raw in raw_services.items()
            if not _is_extension(name) and _profile_active(raw, active)
        }
        names = set(map(str, selected))
        services = {
            name: _convert_service(str(name), raw, ctx, names) for name, raw in selected.items()
        }
    elif raw_services is None:
        problems.add("services", "required: a Compose file has at least one service")
    spec = build_spec(top, services, problems)
    problems.raise_if_any()
    assert spec is not None
    return spec


# the model's keys of a service -> Compose's, for the errors found after conversion
_MODEL_TO_COMPOSE = [
    (re.compile(r"^health\.start_grace"), "healthcheck.start_period"),
    (re.compile(r"^health\.check(\.command)?"), "healthcheck.test"),
    (re.compile(r"^health\b"), "healthcheck"),
    (re.compile(r"^port_mappings\b"), "ports"),
    (re.compile(r"^depends(\[\d+\])?(\.\w+)?$"), "depends_on"),
    (re.compile(r"^storage(\[\d+\])?"), "volumes"),
    (re.compile(r"^scale\.replicas$"), "deploy.replicas"),
    (re.compile(r"^resources\.cpu$"), "deploy.resources.limits.cpus"),
    (re.compile(r"^resources\.memory$"), "deploy.resources.limits.memory"),
    (re.compile(r"^resources\.pids_limit$"), "deploy.resources.limits.pids"),
    (re.compile(r"^command\.args\b"), "command"),
    (re.compile(r"^command\.entrypoint\b"), "entrypoint"),
    (re.compile(r"^command\.workdir$"), "working_dir"),
    (re.compile(r"^env\b"), "environment"),
    (re.compile(r"^restart_policy\b.*"), "restart"),
    (re.compile(r"^image\.name$"), "image"),
    (re.compile(r"^image\.pull_policy$"), "pull_policy"),
]
_SERVICE_PATH = re.compile(r"^(services\.[^.\[]+)\.(.+)$")


def _compose_path(path: str) -> str:
    m = _SERVICE_PATH.match(path)
    if m is None:
        return path
    for pattern, compose_key in _MODEL_TO_COMPOSE:
        rest, n = pattern.subn(compose_key, m.group(2), count=1)
        if n:
            return f"{m.group(1)}.{rest}"
    return path


def _read_dotenv(
    base_dir: Path, environ: Mapping[str, str], problems: Problems
) -> dict[str, str | None]:
    path = base_dir / ".env"
    try:
        text = _read_env_text(path)
    except _Bad as exc:
        problems.add("", exc.message)
        return {}
    if text is None:
        return {}
    values, errors = parse_env_file(text, chain(environ))
    for line, message in errors:
        problems.add(f"{path}:{line}", message)
    return values


def _project_name(
    doc: dict[Any, Any], base_dir: Path, lookup: Callable[[str], str | None], problems: Problems
) -> str:
    """COMPOSE_PROJECT_NAME, else ``name:``, else the directory's name normalised as
    Compose does (lowercase, only [a-z0-9_-], no leading '_' or '-')."""
    name = lookup("COMPOSE_PROJECT_NAME") or doc.get("name")
    path = "name"
    if name is None:
        directory = Path(os.path.abspath(base_dir)).name
        name = "".join(re.findall(r"[a-z0-9_-]", directory.lower())).lstrip("_-")
        path = f"name (from the directory {directory!r})"
    if not isinstance(name, str):
        problems.add("name", "must be a string")
        return "invalid-name"
    check_deployment_name(name, path, problems)
    return name


def _profile_active(raw: Any, active: set[str]) -> bool:
    if not isinstance(raw, dict) or not raw.get("profiles"):
        return True
    listed = raw["profiles"]
    return not isinstance(listed, list) or bool(active & set(map(str, listed)))


def _unsupported_hint(key: Any) -> str:
    return f" (lamina does not support {key!r})"


# -- top-level sections


def _top_section(
    doc: dict[Any, Any],
    section: str,
    convert: Callable[[str, Any, _Context], dict[str, Any]],
    ctx: _Context,
) -> dict[str, Any]:
    raw = doc.get(section)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        ctx.problems.add(section, "must be a mapping")
        return {}
    return {
        str(name): convert(join(section, str(name)), value if value is not None else {}, ctx)
        for name, value in raw.items()
        if not _is_extension(name)
    }


def _known_keys(path: str, raw: Any, known: set[str], problems: Problems) -> dict[str, Any]:
    """``raw`` without its ``x-`` keys; every other key not in ``known`` an error."""
    out: dict[str, Any] = {}
    if raw is None:  # "key:" with nothing after it
        return out
    if not isinstance(raw, dict):
        problems.add(path, "must be a mapping")
        return out
    for key, value in raw.items():
        if _is_extension(key):
            continue
        if key not in known:
            problems.add(join(path, str(key)), "unknown key" + _unsupported_hint(key))
            continue
        out[str(key)] = value
    return out


def _mapping(path: str, raw: Any, problems: Problems) -> dict[Any, Any] | None:
    if isinstance(raw, dict):
        return raw
    problems.add(path, "must be a mapping")
    return None


def _network_def(path: str, raw: Any, ctx: _Context) -> dict[str, Any]:
    raw = _mapping(path, raw, ctx.problems)
    if raw is None:
        return {}
    keys = {"name", "driver", "external", "internal", "labels", "ipam", "enable_ipv6", "attachable"}
    fields = _known_keys(path, raw, keys, ctx.problems)
    if fields.pop("enable_ipv6", False):
        ctx.problems.add(join(path, "enable_ipv6"), "IPv6 networks are not supported")
    fields.pop("attachable", None)  # every lamina network is
    _external(path, fields, ctx.problems)
    if "labels" in fields:
        fields["labels"] = _labels(join(path, "labels"), fields["labels"], ctx.problems)
    ipam = fields.pop("ipam", None)
    if ipam is not None:
        ipam_path = join(path, "ipam")
        ipam = _known_keys(ipam_path, ipam, {"driver", "config"}, ctx.problems)
        if ipam.get("driver") not in (None, "default"):
            ctx.problems.add(join(ipam_path, "driver"), "only the default IPAM driver is supported")
        configs = ipam.get("config") or []
        if not isinstance(configs, list) or len(configs) > 1:
            ctx.problems.add(join(ipam_path, "config"), "must be a list of at most one subnet")
        elif configs:
            cfg_path = join(join(ipam_path, "config"), 0)
            cfg = _known_keys(cfg_path, configs[0], {"subnet", "gateway"}, ctx.problems)
            fields.update(cfg)
    return fields


def _external(path: str, fields: dict[str, Any], problems: Problems) -> None:
    """Compose 2's ``external: {name: x}`` as ``external: true`` + ``name: x``."""
    external = fields.get("external")
    if isinstance(external, dict):
        ext = _known_keys(join(path, "external"), external, {"name"}, problems)
        fields["external"] = True
        if "name" in ext:
            fields["name"] = ext["name"]


def _volume_def(path: str, raw: Any, ctx: _Context) -> dict[str, Any]:
    raw = _mapping(path, raw, ctx.problems)
    if raw is None:
        return {}
    fields = _known_keys(
        path, raw, {"name", "driver", "driver_opts", "external", "labels"}, ctx.problems
    )
    _external(path, fields, ctx.problems)
    if "labels" in fields:
        fields["labels"] = _labels(join(path, "labels"), fields["labels"], ctx.problems)
    if isinstance(fields.get("driver_opts"), dict):
        fields["driver_opts"] = {str(k): _scalar_text(v) for k, v in fields["driver_opts"].items()}
    return fields


def _secret_def(path: str, raw: Any, ctx: _Context) -> dict[str, Any]:
    raw = _mapping(path, raw, ctx.problems)
    if raw is None:
        return {}
    from lamina.deploy._secrets import check_name

    fields = _known_keys(path, raw, {"file"}, ctx.problems)
    try:  # the client stores the file under this name
        check_name(file_secret_name(ctx.project, path.removeprefix("secrets.")))
    except LaminaError as exc:
        ctx.problems.add(path, f"the store cannot hold it: {exc}")
    file = fields.get("file")
    if not isinstance(file, str) or not file:
        ctx.problems.add(join(path, "file"), "required: lamina's Compose secrets come from files")
        return {"file": "/"}
    return {"file": ctx.host_path(file)}


# -- services


def _convert_service(name: str, raw: Any, ctx: _Context, names: set[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return raw  # build_spec reports it
    service = _Service(name, ctx)
    service.out["scale"] = {"mode": "fixed", "replicas": 1}
    for key, value in raw.items():
        if _is_extension(key):
            continue
        convert = _CONVERTERS.get(str(key))
        if convert is None:
            service.problem(str(key), "unknown key" + _unsupported_hint(key))
            continue
        service_key = str(key)
        try:
            convert(service, value)
        except _Bad as exc:
            service.problem(exc.key if exc.key is not None else service_key, exc.message)
    _finish(service, raw, names)
    return service.out


class _Bad(Exception):
    """A value a converter cannot take; ``key`` is the path below the service
    (None: the key being converted)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        self.message, self.key = message, key


def _finish(service: _Service, raw: dict[Any, Any], names: set[str]) -> None:
    out = service.out
    if "image" not in out:
        if "build" not in raw and "image" not in raw:
            service.problem("", "needs image or build")
            out["image"] = {"name": "invalid"}
        else:  # Compose's name for a built image (or a placeholder: image had an error)
            out["image"] = {"name": f"{service.ctx.project}-{service.name}"}
    if "pull_policy" in out:
        out["image"]["pull_policy"] = out.pop("pull_policy")
    if "network_mode" in out and out.get("networks"):
        service.problem("network_mode", "cannot be combined with networks")
    if "depends" in out:  # an optional dependency not in this run: Compose skips it
        out["depends"] = [
            {k: v for k, v in dep.items() if k != "required"}
            for dep in out["depends"]
            if dep["service"] in names or dep.get("required", True)
        ]
    for i, net in enumerate(out.get("networks", [])):
        if net["name"] != "default" and net["name"] not in service.ctx.defined("networks"):
            service.problem(
                f"networks[{i}]"
                if isinstance(raw.get("networks"), list)
                else f"networks.{net['name']}",
                f"undefined network {net['name']!r}",
            )
    for i, volume in enumerate(out.get("storage", [])):
        if volume.get("type") == "named" and volume["name"] not in service.ctx.defined("volumes"):
            service.problem(f"volumes[{i}]", f"undefined volume {volume['name']!r}")


def _scalar_text(value: Any) -> str:
    """A YAML scalar as the text Compose passes on (true -> "true", 8080 -> "8080")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, int | float | str):
        return str(value)
    raise _Bad(f"must be a string, not {type(value).__name__}")


def _string(value: Any) -> str:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise _Bad("must be a string")


def _strings(value: Any) -> list[str]:
    """A string or a list of strings (cap_add, dns, profiles)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [_string(v) for v in value]
    raise _Bad("must be a string or a list of strings")


def _words(value: Any) -> list[str]:
    """``command``/``entrypoint``: a list as it is, a string split as a shell would."""
    if isinstance(value, list):
        return [_string(v) for v in value]
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise _Bad(f"cannot split {value!r}: {exc}") from None
    raise _Bad("must be a string or a list")


def _labels(path: str, value: Any, problems: Problems) -> dict[str, str]:
    """``labels``: a mapping, or a list of ``key=value``."""
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            try:
                out[str(key)] = _scalar_text(item)
            except _Bad as exc:
                problems.add(join(path, str(key)), exc.message)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            key, _, text = str(item).partition("=")
            out[key] = text
            if not key:
                problems.add(join(path, i), "must be key=value")
    else:
        problems.add(path, "must be a mapping or a list of key=value")
    return out


def _duration(value: Any) -> float:
    from lamina.deploy._units import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def _memory(value: Any) -> int:
    """Docker's sizes (``512m`` binary, as ``docker run --memory``), or bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    from lamina.engine._options import parse_memory

    try:
        return parse_memory(_string(value), "size")
    except LaminaError as exc:
        raise _Bad(str(exc)) from None


# -- the converters, one a Compose key


def _image(s: _Service, value: Any) -> None:
    s.out["image"] = {"name": _string(value)}


def _pull_policy(s: _Service, value: Any) -> None:
    policy = _PULL_POLICIES.get(str(value))
    if policy is None:
        raise _Bad(f"must be one of {', '.join(_PULL_POLICIES)} (not {value!r})")
    s.out["pull_policy"] = policy


def _build(s: _Service, value: Any) -> None:
    if isinstance(value, str):
        value = {"context": value}
    if not isinstance(value, dict):
        raise _Bad("must be a path or a mapping")
    fields = _known_keys(
        s.sub("build"), value, {"context", "dockerfile", "args", "target"}, s.ctx.problems
    )
    context = _string(fields.get("context", "."))
    if "://" in context or context.startswith("git@"):
        raise _Bad("remote build contexts are not supported", "build.context")
    build: dict[str, Any] = {"context": s.ctx.host_path(context)}
    if "dockerfile" in fields:
        build["dockerfile"] = _string(fields["dockerfile"])
    if "target" in fields:
        build["target"] = _string(fields["target"])
    if "args" in fields:
        build["args"] = _environment_values(s, "build.args", fields["args"])
    s.out["build"] = build


def _command(s: _Service, value: Any) -> None:
    s.out.setdefault("command", {})["args"] = _words(value) if value is not None else None


def _entrypoint(s: _Service, value: Any) -> None:
    s.out.setdefault("command", {})["entrypoint"] = _words(value) if value is not None else None


def _working_dir(s: _Service, value: Any) -> None:
    s.out.setdefault("command", {})["workdir"] = _string(value)


def _environment_values(s: _Service, key: str, value: Any) -> dict[str, str]:
    """``environment`` (or ``build.args``): a mapping or a list of ``K=V``; a bare
    ``K`` (or ``K:`` with no value) takes the deployer's value, and is left out
    when that is unset, as in Compose."""
    items: list[tuple[str, Any, bool]] = []  # name, value, bare
    if isinstance(value, dict):
        items = [(str(k), v, v is None) for k, v in value.items()]
    elif isinstance(value, list):
        for item in value:
            name, eq, text = _string(item).partition("=")
            items.append((name, text, not eq))
    else:
        raise _Bad("must be a mapping or a list of KEY=VALUE", key)
    out: dict[str, str] = {}
    for name, item, bare in items:
        if bare:
            found = s.ctx.lookup(name)
            if found is not None:
                out[name] = found
            continue
        try:
            out[name] = _scalar_text(item)
        except _Bad as exc:
            s.problem(f"{key}.{name}", exc.message)
    return out


def _environment(s: _Service, value: Any) -> None:
    s.out.setdefault("env", {}).update(_environment_values(s, "environment", value))


def _env_file(s: _Service, value: Any) -> None:
    """Files in Compose's env format, relative to the file's directory; their
    values come before ``environment``'s, later files win over earlier ones."""
    entries = value if isinstance(value, list) else [value]
    merged: dict[str, str] = {}
    for i, entry in enumerate(entries):
        key = f"env_file[{i}]" if isinstance(value, list) else "env_file"
        required = True
        if isinstance(entry, dict):
            fields = _known_keys(s.sub(key), entry, {"path", "required", "format"}, s.ctx.problems)
            required = fields.get("required", True) is not False
            if fields.get("format") not in (None, "dotenv"):
                s.problem(f"{key}.format", "only dotenv is supported")
            entry = fields.get("path")
        path = Path(s.ctx.host_path(_string(entry)))
        try:
            text = _read_env_text(path)
        except _Bad as exc:
            s.problem(key, exc.message)
            continue
        if text is None:
            if required:
                s.problem(key, f"{path}: no such file")
            continue
        values, errors = parse_env_file(text, s.ctx.lookup)
        for line, message in errors:
            s.problem(key, f"{path}:{line}: {message}")
        for name, item in values.items():
            found = item if item is not None else s.ctx.lookup(name)
            if found is not None:
                merged[name] = found
    env = s.out.setdefault("env", {})
    s.out["env"] = {**merged, **env}


def _read_env_text(path: Path) -> str | None:
    """An env file's text; None if there is no such file."""
    if not path.exists():
        return None
    try:
        data = read_capped(path, MAX_ENV_FILE_BYTES)
    except InvalidSpec as exc:
        raise _Bad(str(exc)) from None
    if data is None:
        raise _Bad(f"{path}: too large (more than {MAX_ENV_FILE_BYTES} bytes)")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise _Bad(f"{path}: not UTF-8 text") from None


def _labels_key(s: _Service, value: Any) -> None:
    s.out["labels"] = _labels(s.sub("labels"), value, s.ctx.problems)


def _ports(s: _Service, value: Any) -> None:
    if not isinstance(value, list):
        raise _Bad("must be a list")
    mappings: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        try:
            mappings += _port_long(s, i, item) if isinstance(item, dict) else _port_short(item)
        except _Bad as exc:
            s.problem(f"ports[{i}]", exc.message)
    s.ctx.spend_ports(len(mappings))
    s.out["port_mappings"] = mappings


def _port_range(text: str) -> list[int]:
    m = _PORT.fullmatch(text.strip())
    if m is None:
        raise _Bad(f"invalid port {text!r}")
    low, high = int(m.group(1)), int(m.group(2) or m.group(1))
    if not (1 <= low <= high <= 65535):
        raise _Bad(f"invalid port range {text!r}: ports are 1-65535, low to high")
    if high - low >= MAX_PORT_RANGE:
        raise _Bad(f"port range {text!r} too large: at most {MAX_PORT_RANGE} ports")
    return list(range(low, high + 1))


def _pair_ports(
    host: list[int] | None, container: list[int], text: str
) -> list[tuple[int | None, int]]:
    if host is None:
        return [(None, c) for c in container]
    if len(host) != len(container):
        raise _Bad(f"{text!r}: the host and container ranges differ in length")
    return list(zip(host, container, strict=True))


def _port_short(item: Any) -> list[dict[str, Any]]:
    """``[HOST_IP:][HOST_PORT[-END]:]PORT[-END][/PROTOCOL]``; IPv6 in brackets."""
    text = _string(item)
    spec, _, protocol = text.partition("/")
    protocol = protocol or "tcp"
    if protocol not in ("tcp", "udp"):
        raise _Bad(f"{text!r}: protocol must be tcp or udp")
    host_ip = None
    if spec.startswith("["):
        end = spec.find("]:")
        if end < 0:
            raise _Bad(f"invalid port {text!r}")
        host_ip, spec = spec[1:end], spec[end + 2 :]
    parts = spec.split(":")
    if len(parts) == 3 and host_ip is None:
        host_ip, host, container = parts
    elif len(parts) == 2:
        host, container = parts
    elif len(parts) == 1:
        host, container = "", parts[0]
    else:
        raise _Bad(f"invalid port {text!r}")
    pairs = _pair_ports(_port_range(host) if host else None, _port_range(container), text)
    return [
        {"host_port": h, "container_port": c, "protocol": protocol, "host_ip": host_ip or None}
        for h, c in pairs
    ]


def _port_long(s: _Service, i: int, item: dict[Any, Any]) -> list[dict[str, Any]]:
    keys = {"target", "published", "host_ip", "protocol", "mode", "name", "app_protocol"}
    fields = _known_keys(s.sub("ports", i), item, keys, s.ctx.problems)
    if "target" not in fields:
        raise _Bad("target is required")
    container = _port_range(_string(fields["target"]))
    published = fields.get("published")
    host = _port_range(_string(published)) if published not in (None, "") else None
    protocol = str(fields.get("protocol", "tcp"))
    if protocol not in ("tcp", "udp"):
        raise _Bad("protocol must be tcp or udp")
    if fields.get("mode", "ingress") not in ("ingress", "host"):
        raise _Bad("mode must be ingress or host")
    host_ip = fields.get("host_ip")
    return [
        {
            "host_port": h,
            "container_port": c,
            "protocol": protocol,
            "host_ip": _string(host_ip) if host_ip else None,
        }
        for h, c in _pair_ports(host, container, str(fields["target"]))
    ]


def _expose(s: _Service, value: Any) -> None:
    if not isinstance(value, list):
        raise _Bad("must be a list")
    exposed: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        text = _string(item)
        port, _, protocol = text.partition("/")
        try:
            if (protocol or "tcp") not in ("tcp", "udp"):
                raise _Bad(f"{text!r}: protocol must be tcp or udp")
            exposed += [{"port": p, "protocol": protocol or "tcp"} for p in _port_range(port)]
        except _Bad as exc:
            s.problem(f"expose[{i}]", exc.message)
    s.ctx.spend_ports(len(exposed))
    s.out["expose"] = exposed


def _volumes(s: _Service, value: Any) -> None:
    if not isinstance(value, list):
        raise _Bad("must be a list")
    storage = s.out.setdefault("storage", [])
    for i, item in enumerate(value):
        try:
            storage.append(
                _volume_long(s, i, item) if isinstance(item, dict) else _volume_short(s, item)
            )
        except _Bad as exc:
            s.problem(f"volumes[{i}]", exc.message)


def _is_path(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def _volume_short(s: _Service, item: Any) -> dict[str, Any]:
    """``[SOURCE:]TARGET[:MODE]``: a source that is a path binds it, another names a
    volume; no source is an anonymous volume."""
    text = _string(item)
    parts = text.split(":")
    if len(parts) > 3 or not all(parts):
        raise _Bad(f"invalid volume {text!r}: expected [SOURCE:]TARGET[:ro|rw]")
    mode = parts.pop() if len(parts) == 3 else "rw"
    readonly = _access_mode(mode, text)
    if len(parts) == 1:
        if not parts[0].startswith("/"):
            raise _Bad(f"invalid volume {text!r}: the container path must be absolute")
        return {"type": "anonymous", "target": parts[0]}
    source, target = parts
    if not target.startswith("/"):
        raise _Bad(f"invalid volume {text!r}: the container path must be absolute")
    if _is_path(source):
        return {
            "type": "bind",
            "source": s.ctx.host_path(source),
            "target": target,
            "readonly": readonly,
        }
    return {"type": "named", "name": source, "target": target, "readonly": readonly}


def _access_mode(mode: str, text: str) -> bool:
    options = set(mode.split(","))
    unsupported = options - {"ro", "rw"}
    if unsupported:
        raise _Bad(f"invalid volume {text!r}: unsupported mode {','.join(sorted(unsupported))}")
    return "ro" in options


def _volume_long(s: _Service, i: int, item: dict[Any, Any]) -> dict[str, Any]:
    path = s.sub("volumes", i)
    keys = {"type", "source", "target", "read_only", "tmpfs", "bind", "volume"}
    fields = _known_keys(path, item, keys, s.ctx.problems)
    kind = fields.get("type", "volume")
    target = fields.get("target")
    if not isinstance(target, str) or not target.startswith("/"):
        raise _Bad("target must be an absolute path")
    readonly = fields.get("read_only", False) is True
    source = fields.get("source")
    for sub in ("bind", "volume", "tmpfs"):
        if sub in fields and sub != kind:
            raise _Bad(f"{sub} options need type {sub}")
    if kind == "bind":
        if not isinstance(source, str) or not source:
            raise _Bad("a bind needs a source")
        _known_keys(
            join(path, "bind"), fields.get("bind") or {}, {"create_host_path"}, s.ctx.problems
        )
        return {
            "type": "bind",
            "source": s.ctx.host_path(source),
            "target": target,
            "readonly": readonly,
        }
    if kind == "volume":
        _known_keys(join(path, "volume"), fields.get("volume") or {}, set(), s.ctx.problems)
        if not source:
            return {"type": "anonymous", "target": target}
        return {"type": "named", "name": _string(source), "target": target, "readonly": readonly}
    if kind == "tmpfs":
        opts = _known_keys(
            join(path, "tmpfs"), fields.get("tmpfs") or {}, {"size", "mode"}, s.ctx.problems
        )
        out: dict[str, Any] = {"type": "tmpfs", "target": target}
        if "size" in opts:
            out["size"] = _memory(opts["size"])
        if "mode" in opts:
            out["mode"] = opts["mode"]
        return out
    raise _Bad(f"type must be volume, bind or tmpfs (not {kind!r})")


def _tmpfs(s: _Service, value: Any) -> None:
    storage = s.out.setdefault("storage", [])
    for item in _strings(value):
        target, _, options = item.partition(":")
        entry: dict[str, Any] = {"type": "tmpfs", "target": target}
        for option in filter(None, options.split(",")):
            m = _TMPFS_OPTION.fullmatch(option)
            if m is None:
                raise _Bad(f"{item!r}: unsupported tmpfs option {option!r} (size= and mode= are)")
            if m.group(1) == "size":
                entry["size"] = _memory(m.group(2))
            else:
                try:
                    entry["mode"] = int(m.group(2), 8)
                except ValueError:
                    raise _Bad(f"{item!r}: mode must be octal") from None
        storage.append(entry)


def _networks(s: _Service, value: Any) -> None:
    nets: list[dict[str, Any]] = []
    if isinstance(value, list):
        nets = [{"name": _string(v)} for v in value]
    elif isinstance(value, dict):
        for name, opts in value.items():
            path = s.sub("networks", str(name))
            fields = _known_keys(path, opts, {"aliases", "ipv4_address"}, s.ctx.problems)
            net: dict[str, Any] = {"name": str(name)}
            if "aliases" in fields:
                net["aliases"] = _strings(fields["aliases"])
            if "ipv4_address" in fields:
                net["ipv4_address"] = _string(fields["ipv4_address"])
            nets.append(net)
    else:
        raise _Bad("must be a list or a mapping")
    s.out["networks"] = nets


def _network_mode(s: _Service, value: Any) -> None:
    mode = _string(value)
    if mode not in ("bridge", "host", "none"):
        raise _Bad(f"must be bridge, host or none (not {mode!r})")
    s.out["network_mode"] = mode


def _depends_on(s: _Service, value: Any) -> None:
    deps: list[dict[str, Any]] = []
    if isinstance(value, list):
        deps = [{"service": _string(v), "condition": "started"} for v in value]
    elif isinstance(value, dict):
        for name, opts in value.items():
            path = s.sub("depends_on", str(name))
            fields = _known_keys(path, opts, {"condition", "required", "restart"}, s.ctx.problems)
            condition = _CONDITIONS.get(str(fields.get("condition", "service_started")))
            if condition is None:
                s.problem(
                    f"depends_on.{name}.condition", f"must be one of {', '.join(_CONDITIONS)}"
                )
                condition = "started"
            if fields.get("restart", False) is not False:
                s.problem(
                    f"depends_on.{name}.restart",
                    "restarting a service with its dependency is not supported",
                )
            dep: dict[str, Any] = {"service": str(name), "condition": condition}
            if fields.get("required") is False:
                dep["required"] = False
                dep["on_timeout"] = "warn"
            deps.append(dep)
    else:
        raise _Bad("must be a list or a mapping")
    s.out["depends"] = deps


def _healthcheck(s: _Service, value: Any) -> None:
    if not isinstance(value, dict):
        raise _Bad("must be a mapping")
    keys = {"test", "interval", "timeout", "retries", "start_period", "disable"}
    fields = _known_keys(s.sub("healthcheck"), value, keys, s.ctx.problems)
    if fields.get("disable") is True:
        s.out["health"] = {"check": {"type": "none"}}
        return
    test = fields.get("test")
    if test is None:
        raise _Bad(
            "required: lamina needs the test (the image's with new timings is not supported)",
            "healthcheck.test",
        )
    if isinstance(test, str):
        check: dict[str, Any] = {"type": "command", "command": test}
    elif isinstance(test, list) and test and test[0] == "NONE":
        check = {"type": "none"}
    elif isinstance(test, list) and len(test) >= 2 and test[0] == "CMD":
        check = {"type": "command", "command": [_string(v) for v in test[1:]]}
    elif isinstance(test, list) and len(test) == 2 and test[0] == "CMD-SHELL":
        check = {"type": "command", "command": _string(test[1])}
    else:
        raise _Bad(
            'must be a string, ["CMD", ...], ["CMD-SHELL", "..."] or ["NONE"]', "healthcheck.test"
        )
    health: dict[str, Any] = {"check": check, "start_grace": 0.0}
    for compose_key, key in (
        ("interval", "interval"),
        ("timeout", "timeout"),
        ("start_period", "start_grace"),
    ):
        if compose_key in fields:
            try:
                health[key] = _duration(fields[compose_key])
            except _Bad as exc:
                s.problem(f"healthcheck.{compose_key}", exc.message)
    if "retries" in fields:
        health["retries"] = fields["retries"]
    s.out["health"] = health


def _restart(s: _Service, value: Any) -> None:
    text = "no" if value is False else _string(value)
    if text.startswith("on-failure"):
        _, colon, count = text.partition(":")
        policy: dict[str, Any] = {"kind": "on_failure"}
        if colon:
            if not count.isdigit():
                raise _Bad(f"{text!r}: on-failure:N needs a number")
            policy["max_attempts"] = int(count)
        s.out["restart_policy"] = policy
    elif text in _RESTART:
        s.out["restart_policy"] = {"kind": _RESTART[text]}
    else:
        raise _Bad(f"must be no, always, on-failure[:N] or unless-stopped (not {text!r})")


def _deploy(s: _Service, value: Any) -> None:
    if not isinstance(value, dict):
        raise _Bad("must be a mapping")
    path = s.sub("deploy")
    fields = _known_keys(
        path, value, {"mode", "replicas", "resources", "restart_policy"}, s.ctx.problems
    )
    if fields.get("mode", "replicated") != "replicated":
        s.problem("deploy.mode", "only replicated is supported")
    if "replicas" in fields:
        s.out["scale"] = {"mode": "fixed", "replicas": fields["replicas"]}
    if "resources" in fields:
        res_path = join(path, "resources")
        res = _known_keys(res_path, fields["resources"], {"limits"}, s.ctx.problems)
        limits_path = join(res_path, "limits")

        limits = _known_keys(
            limits_path,
            res.get("limits"),
            {"cpus", "memory", "pids"},
            s.ctx.problems,
        )
        _limits(s, "deploy.resources.limits", limits)
    if "restart_policy" in fields:
        _deploy_restart(s, fields["restart_policy"])


def _limits(s: _Service, key: str, limits: dict[str, Any]) -> None:
    resources = s.out.setdefault("resources", {})
    for name, model_key in (
        ("cpus", "cpu"),
        ("memory", "memory"),
        ("pids", "pids_limit"),
        ("mem_limit", "memory"),
        ("pids_limit", "pids_limit"),
    ):
        if name not in limits:
            continue
        try:
            if model_key == "memory":
                resources[model_key] = _memory(limits[name])
            elif model_key == "cpu":
                resources[model_key] = float(_string(limits[name]))
            else:
                resources[model_key] = limits[name]
        except (_Bad, ValueError) as exc:
            s.problem(
                f"{key}.{name}" if key else name,
                exc.message if isinstance(exc, _Bad) else "must be a number",
            )


def _deploy_restart(s: _Service, value: Any) -> None:
    path = s.sub("deploy", "restart_policy")
    fields = _known_keys(path, value, {"condition", "max_attempts", "delay"}, s.ctx.problems)
    kinds = {"none": "no", "on-failure": "on_failure", "any": "always"}
    condition = str(fields.get("condition", "any"))
    if condition not in kinds:
        s.problem("deploy.restart_policy.condition", "must be none, on-failure or any")
        return
    policy: dict[str, Any] = {"kind": kinds[condition]}
    if "max_attempts" in fields:
        policy["max_attempts"] = fields["max_attempts"]
    if "delay" in fields:
        policy["delay"] = _duration(fields["delay"])
    s.out["restart_policy"] = policy


def _service_limit(name: str) -> _Converter:
    """The service-level ``cpus``, ``mem_limit`` and ``pids_limit`` of Compose."""

    def convert(s: _Service, value: Any) -> None:
        _limits(s, "", {name: value})

    return convert


def _scale(s: _Service, value: Any) -> None:
    s.out["scale"] = {"mode": "fixed", "replicas": value}


def _platform(s: _Service, value: Any) -> None:
    parts = _string(value).split("/")
    if len(parts) > 3 or not all(parts):
        raise _Bad(f"{value!r}: expected os/arch[/variant]")
    s.out["platform"] = dict(zip(("os", "arch", "variant"), parts, strict=False))


def _extra_hosts(s: _Service, value: Any) -> None:
    if isinstance(value, dict):
        hosts = [f"{k}:{_scalar_text(v)}" for k, v in value.items()]
    else:
        hosts = []
        for item in _strings(value):
            name, sep, address = item.partition("=")  # Compose 2 accepts host=ip too
            hosts.append(f"{name}:{address}" if sep else item)
    s.out["extra_hosts"] = hosts


def _secrets(s: _Service, value: Any) -> None:
    if not isinstance(value, list):
        raise _Bad("must be a list")
    secrets: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        fields: dict[str, Any] = (
            {"source": item}
            if isinstance(item, str)
            else _known_keys(
                s.sub("secrets", i),
                item,
                {"source", "target", "mode"},
                s.ctx.problems,
            )
        )
        if "source" not in fields:
            s.problem(f"secrets[{i}].source", "required")
            continue
        key = _string(fields["source"])
        if key not in s.ctx.defined("secrets"):
            s.problem(f"secrets[{i}]", f"undefined secret {key!r}")
        target = _string(fields.get("target", key))
        entry: dict[str, Any] = {
            "source": file_secret_name(s.ctx.project, key),
            "target": target if target.startswith("/") else f"/run/secrets/{target}",
        }
        if "mode" in fields:
            entry["mode"] = fields["mode"]
        secrets.append(entry)
    s.out["secrets"] = secrets


def _copy(key: str, convert: Callable[[Any], Any] = lambda v: v) -> _Converter:
    """A key the model has under the same name (or ``key``), converted by ``convert``."""

    def copy(s: _Service, value: Any) -> None:
        s.out[key] = convert(value)

    return copy


def _profiles(s: _Service, value: Any) -> None:
    _strings(value)  # selection happened before; this checks the shape


_CONVERTERS: dict[str, _Converter] = {
    "image": _image,
    "pull_policy": _pull_policy,
    "build": _build,
    "command": _command,
    "entrypoint": _entrypoint,
    "working_dir": _working_dir,
    "environment": _environment,
    "env_file": _env_file,
    "labels": _labels_key,
    "ports": _ports,
    "expose": _expose,
    "volumes": _volumes,
    "tmpfs": _tmpfs,
    "networks": _networks,
    "network_mode": _network_mode,
    "depends_on": _depends_on,
    "healthcheck": _healthcheck,
    "restart": _restart,
    "deploy": _deploy,
    "scale": _scale,
    "cpus": _service_limit("cpus"),
    "mem_limit": _service_limit("mem_limit"),
    "pids_limit": _service_limit("pids_limit"),
    "user": _copy("user", _string),
    "hostname": _copy("hostname", _string),
    "cap_add": _copy("cap_add", _strings),
    "cap_drop": _copy("cap_drop", _strings),
    "dns": _copy("dns", _strings),
    "extra_hosts": _extra_hosts,
    "privileged": _copy("privileged"),
    "stop_signal": _copy("stop_signal", _string),
    "stop_grace_period": _copy("stop_grace_period", _duration),
    "platform": _platform,
    "isolation": _copy("isolation"),
    "secrets": _secrets,
    "profiles": _profiles,
}
