"""Reading deployment files: ZLayer's v1 spec here, Compose files in ``_compose``; both
become ``DeploymentSpec`` and pass the same checks.

Public: ``load_spec(path, environ, profiles=())``, ``parse_spec(text, filename, environ,
base_dir, profiles=())`` and ``InvalidSpec``, whose message lists every problem of
the file, one a line, each by its path (``services.web.scale.replicas: must be >= 0``);
``check_spec(spec)`` runs the checks across fields on a model received as JSON.

YAML is read as YAML 1.2 reads it (``no``, ``on`` and ``22:22`` stay strings, as
Compose's Go reader has them), with a size cap, duplicate keys refused, and the
expanded document counted so that alias bombs are refused instead of walked.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from lamina.deploy._model import (
    HOST_ENV_PREFIX,
    SECRET_PREFIX,
    DeploymentSpec,
    HealthSpec,
    ServiceSpec,
    TcpCheck,
)
from lamina.errors import LaminaError

MAX_FILE_BYTES = 4 << 20  # no deployment file comes near; a bigger one is a mistake or hostile
MAX_NODES = 200_000  # values of the document with aliases expanded
MAX_DEPTH = 64  # levels of nesting; the model's deepest path has 8
COMPOSE_FILE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")

ModelT = TypeVar("ModelT", bound=BaseModel)

_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_DEPLOYMENT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{2,62}")
_SECRET_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


MAX_PROBLEMS = 500  # lines of a message; a file with more has one mistake repeated


class InvalidSpec(LaminaError, ValueError):
    """A deployment file that cannot be deployed; one problem a line, each by its path
    (``problems``; the message shows the first MAX_PROBLEMS and counts the rest)."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        lines = self.problems[:MAX_PROBLEMS]
        if len(self.problems) > MAX_PROBLEMS:
            lines.append(f"({len(self.problems) - MAX_PROBLEMS} more problems)")
        super().__init__("\n".join(lines))


@dataclass
class Problems:
    """Every problem found in one file, collected so that all are reported at once."""

    items: list[str] = field(default_factory=list)
    # the file's path of a path of the model (Compose's keys are not the model's)
    rename: Callable[[str], str] | None = None
    _seen: set[str] = field(default_factory=set)

    def add(self, path: str, message: str) -> None:
        if self.rename is not None:
            path = self.rename(path)
        line = f"{path}: {message}" if path else message
        if line not in self._seen:
            self._seen.add(line)
            self.items.append(line)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidSpec(self.items)


def join(path: str, key: str | int) -> str:
    """``services.web`` + ``port`` -> ``services.web.port``; list indices as ``[0]``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


# -- YAML


class _Loader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader with YAML 1.2's plain scalars (only true/false are booleans; no
    sexagesimal ints, no timestamps) and duplicate keys refused."""

    yaml_implicit_resolvers: dict[str, list[tuple[str, re.Pattern[str]]]] = {}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # the file's own keys only: merged ones (<<: *defaults) may be overridden
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key (a list): the constructor reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)  # type: ignore[no-any-return]


def _add_resolver(tag: str, pattern: str, first: str | list[str]) -> None:
    _Loader.add_implicit_resolver(tag, re.compile(pattern, re.X), list(first))


_add_resolver("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF")
_add_resolver("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""])
_add_resolver("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789")
_add_resolver(
    "tag:yaml.org,2002:float",
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
    "-+0123456789.",
)
_add_resolver("tag:yaml.org,2002:merge", r"^(?:<<)$", "<")


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    if digits.startswith("0o"):
        return sign * int(digits[2:], 8)
    if digits.startswith("0x"):
        return sign * int(digits[2:], 16)
    if len(digits) > 1 and digits.startswith("0"):  # 0755: octal, as file modes are written
        return sign * int(digits, 8) if set(digits) <= set("01234567") else sign * int(digits)
    return sign * int(digits)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def load_yaml(text: str | bytes, filename: str) -> Any:
    """The document of ``text``; InvalidSpec (one line, with the file and line) if it is
    not YAML, too large, or expands (aliases) beyond MAX_NODES values."""
    if len(text) > MAX_FILE_BYTES:
        raise InvalidSpec(
            [f"{filename}: too large ({len(text)} bytes; at most {MAX_FILE_BYTES} are read)"]
        )
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{filename}:{mark.line + 1}" if mark is not None else filename
        what = exc.problem or exc.context or "invalid YAML"
        raise InvalidSpec([f"{where}: invalid YAML: {what}"]) from None
    except yaml.reader.ReaderError as exc:  # bytes that are not text
        raise InvalidSpec(
            [f"{filename}: invalid YAML: {exc.reason} (byte {exc.position})"]
        ) from None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise InvalidSpec([f"{filename}: invalid YAML: {' '.join(str(exc).split())}"]) from None
    _count_nodes(data, filename)
    return data


def _count_nodes(data: Any, filename: str) -> None:
    """Walk the document as a reader would, aliases expanded, and stop at MAX_NODES
    values or MAX_DEPTH levels: a few anchors can stand for billions of values (or a
    cycle), and deep nesting would exhaust the stack of what reads it next."""
    budget = MAX_NODES
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        budget -= 1
        if budget < 0 or depth > MAX_DEPTH:
            limit = f"more than {MAX_NODES} values" if budget < 0 else f"deeper than {MAX_DEPTH}"
            raise InvalidSpec(
                [f"{filename}: document too large: {limit} once its aliases are expanded"]
            )
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for pair in value.items() for item in pair)
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)


# -- pydantic errors by path


def _error_message(err: Mapping[str, Any]) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    simple = {
        "missing": "required",
        "extra_forbidden": "unknown key",
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "string_type": "must be a string",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "dict_type": "must be a mapping",
        "model_type": "must be a mapping",
        "model_attributes_type": "must be a mapping",
        "list_type": "must be a list",
        "string_too_short": "must not be empty",
        "union_tag_not_found": "required",
        "invalid-json-value": "must be plain YAML: text, numbers, lists and mappings",
    }
    if kind in simple:
        return simple[kind]
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<="}
    if kind in bounds or kind == "less_than":
        bound = next(iter(ctx.values()))
        return f"must be {bounds.get(kind, '<')} {bound:g}"
    if kind == "literal_error":
        expected = str(ctx["expected"]).replace("'", "").replace(" or ", ", ")
        return f"must be one of {expected} (not {err['input']!r})"
    if kind == "union_tag_invalid":
        expected = str(ctx["expected_tags"]).replace("'", "")
        return f"must be one of {expected} (not {ctx['tag']!r})"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return str(err["msg"])


def _error_path(prefix: str, loc: tuple[Any, ...], data: Any) -> str:
    """pydantic's loc as the file's path: tags of discriminated unions (which pydantic
    puts in loc) are left out by following the input data alongside."""
    path, node = prefix, data
    for i, key in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, list) and isinstance(key, int):
            path, node = join(path, key), node[key] if key < len(node) else None
        elif isinstance(node, dict) and key in node:
            path, node = join(path, key), node[key]
        elif (last or not isinstance(key, str)) and not _UNION_MEMBER.fullmatch(str(key)):
            path, node = join(path, key), None
        # else: a union's tag or member type, not a key of the file
    return path


# how pydantic names the member of a union (str | list[str]) an error is about
_UNION_MEMBER = re.compile(r"str|int|float|bool|list\[.*\]|dict\[.*\]|[a-z-]+\[.*\]")


def add_validation_errors(problems: Problems, exc: ValidationError, prefix: str, data: Any) -> None:
    by_path: dict[str, list[str]] = {}
    for err in exc.errors():
        path = _error_path(prefix, tuple(err["loc"]), data)
        hint = _zlayer_hint(err["loc"][-1]) if err["type"] == "extra_forbidden" else ""
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):  # at the tag's key
            path = join(path, str(err["ctx"]["discriminator"]).strip("'"))
        by_path.setdefault(path, []).append(_error_message(err) + hint)
    for path, messages in by_path.items():
        if len(messages) > 1 and all(m.startswith("must be a") for m in messages):
            # each member of a union failed: "must be a string or a list"
            messages = ["must be " + " or ".join(m.removeprefix("must be ") for m in messages)]
        for message in messages:
            problems.add(path, message)


def validate_model(
    model: type[ModelT], data: Any, prefix: str, problems: Problems
) -> ModelT | None:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        add_validation_errors(problems, exc, prefix, data)
        return None


# -- checks both formats run


def check_deployment_name(name: Any, path: str, problems: Problems) -> None:
    if not isinstance(name, str) or not _DEPLOYMENT_NAME.fullmatch(name):
        problems.add(
            path,
            f"{name!r} is not a valid deployment name: 3-63 characters, lowercase letters, "
            "digits and '-', starting with a letter or digit",
        )


def build_spec(top: dict[str, Any], raw_services: Any, problems: Problems) -> DeploymentSpec | None:
    """The model of an already-shaped document (ZLayer's, or Compose's converted):
    each service validated alone so that the errors of all of them are reported,
    then the checks across fields and services (on what could be read of a service
    with errors too)."""
    if not isinstance(raw_services, dict):
        if raw_services is not None:
            problems.add("services", "must be a mapping of service names to services")
        raw_services = {}
    services: dict[str, ServiceSpec] = {}
    checked: dict[str, ServiceSpec] = {}
    for name, raw in raw_services.items():
        path = join("services", str(name))
        if not isinstance(name, str) or not _DNS_LABEL.fullmatch(name):
            problems.add(
                path,
                "not a valid service name: 1-63 lowercase letters, digits and '-' "
                "(a DNS label), starting and ending with a letter or digit",
            )
        service = validate_model(ServiceSpec, raw if raw is not None else {}, path, problems)
        if service is not None:
            services[str(name)] = checked[str(name)] = service
        elif isinstance(raw, dict):
            checked[str(name)] = _partial_service(raw)
    spec = validate_model(DeploymentSpec, {**top, "services": {}}, "", problems)
    if spec is not None:
        spec.services = services
    check_services(checked, set(map(str, raw_services)), problems)
    return spec


def check_spec(spec: DeploymentSpec) -> None:
    """The checks across fields, on a model that did not come from ``load_spec`` (the
    daemon's, from a client's JSON): InvalidSpec as the file's reader would raise."""
    problems = Problems()
    check_deployment_name(spec.deployment, "deployment", problems)
    check_services(spec.services, set(spec.services), problems)
    problems.raise_if_any()


def _partial_service(raw: dict[Any, Any]) -> ServiceSpec:
    """The fields of a service with errors that are valid alone (defaults for the
    rest): enough for the checks across fields, never deployed."""
    service = ServiceSpec.model_construct()
    for key, value in raw.items():
        try:
            ServiceSpec.__pydantic_validator__.validate_assignment(service, key, value)
        except (ValidationError, TypeError):
            pass
    return service


def check_services(
    services: Mapping[str, ServiceSpec], service_names: set[str], problems: Problems
) -> None:
    """Checks across fields and services: those a field's own type cannot make."""
    for name, service in services.items():
        _check_service(f"services.{name}", service, service_names, problems)
    cycle = dependency_cycle({n: [d.service for d in s.depends] for n, s in services.items()})
    if cycle:
        problems.add("services", "dependency cycle: " + " -> ".join(cycle))
    _check_host_ports(services, problems)


def _check_host_ports(services: Mapping[str, ServiceSpec], problems: Problems) -> None:
    """A host port is bound by one container: not by two services (on the same
    address, or one of them on all), nor by a service starting more than one replica."""
    bound: dict[tuple[int, str], list[tuple[str, str]]] = {}  # -> (address, service)
    for name, service in services.items():
        scale = service.scale
        starts = {"fixed": getattr(scale, "replicas", 1), "adaptive": getattr(scale, "min", 1)}
        replicas = starts.get(scale.mode, 1)
        for i, mapping in enumerate(service.port_mappings):
            if mapping.host_port is None:
                continue
            path = f"services.{name}.port_mappings[{i}]"
            port, protocol = mapping.host_port, mapping.protocol
            address = "" if mapping.host_ip in (None, "0.0.0.0", "::") else mapping.host_ip
            if replicas > 1:
                problems.add(
                    path,
                    f"host port {port} can be published by one replica only, and the "
                    f"service starts {replicas}",
                )
            others = bound.setdefault((port, protocol), [])
            owner = next((o for a, o in others if not a or not address or a == address), None)
            if owner is not None:
                whom = "this service" if owner == name else f"service {owner}"
                problems.add(path, f"host port {port}/{protocol} is published by {whom} too")
            others.append((address or "", name))


def _check_service(
    path: str, service: ServiceSpec, service_names: set[str], problems: Problems
) -> None:
    from datetime import UTC, datetime

    from lamina.deploy._units import cron_schedule
    from lamina.image._reference import parse_reference

    image = getattr(service, "image", None)  # absent from a partial service
    try:
        if image is not None:
            parse_reference(image.name)
    except LaminaError as exc:
        problems.add(join(path, "image.name"), str(exc))
    if service.rtype == "cron" and service.schedule is None:
        problems.add(join(path, "schedule"), "required when rtype is cron")
    elif service.rtype != "cron" and service.schedule is not None:
        problems.add(join(path, "schedule"), f"only for rtype cron (rtype is {service.rtype})")
    elif service.schedule is not None:
        try:
            cron_schedule(service.schedule, datetime.now(UTC))
        except ValueError as exc:
            problems.add(join(path, "schedule"), str(exc))
    for i, dep in enumerate(service.depends):
        if dep.service not in service_names:
            problems.add(f"{path}.depends[{i}]", f"no service named {dep.service!r}")
    seen: set[str] = set()
    for i, endpoint in enumerate(service.endpoints):
        if endpoint.name in seen:
            problems.add(
                join(join(path, "endpoints"), i), f"endpoint name {endpoint.name!r} used twice"
            )
        seen.add(endpoint.name)
    if service.scale.mode == "adaptive" and service.scale.min > service.scale.max:
        problems.add(
            join(path, "scale"),
            f"min ({service.scale.min}) must be <= max ({service.scale.max})",
        )
    if service.health is not None:
        _check_health(join(path, "health"), service.health, problems)
    _check_init(join(path, "init.steps"), service, problems)
    for key, value in service.env.items():
        _check_env_value(join(join(path, "env"), key), key, value, problems)


def _check_health(path: str, health: HealthSpec, problems: Problems) -> None:
    check = health.check
    if check.type == "http" and not check.url.startswith(("http://", "https://")):
        problems.add(join(path, "check.url"), f"{check.url!r} is not an http:// or https:// URL")
    if check.type == "command" and not (
        check.command if isinstance(check.command, list) else check.command.strip()
    ):
        problems.add(join(path, "check.command"), "must not be empty")


def _check_init(path: str, service: ServiceSpec, problems: Problems) -> None:
    from lamina.deploy._init import step_errors  # what the runner of the steps needs

    ids: set[str] = set()
    for i, step in enumerate(service.init.steps):
        step_path = join(path, i)
        if step.id in ids:
            problems.add(join(step_path, "id"), f"step id {step.id!r} used twice")
        ids.add(step.id)
        for key, message in step_errors(step):
            problems.add(join(step_path, key), message)


def _check_env_value(path: str, key: str, value: str, problems: Problems) -> None:
    if not key or "=" in key or "\0" in key:
        problems.add(path, "not a valid variable name (empty, or with '=')")
    if "\0" in value:
        problems.add(path, "a value cannot hold a NUL byte")
    if value.startswith(SECRET_PREFIX):
        ref = value[len(SECRET_PREFIX) :]
        service, slash, name = ref[1:].partition("/") if ref.startswith("@") else ("", "/", ref)
        if not slash or (ref.startswith("@") and not _DNS_LABEL.fullmatch(service)):
            problems.add(path, f"{value!r}: a cross-service reference is $S:@service/name")
        elif not _SECRET_NAME.fullmatch(name):
            problems.add(
                path,
                f"{value!r}: a secret name starts with a letter and has only letters, "
                "digits, '-' and '_'",
            )


def dependency_cycle(graph: Mapping[str, list[str]]) -> list[str]:
    """The first dependency cycle found, as ``[a, b, a]``; empty if there is none.
    Services are visited in name order so that the same file names the same cycle;
    depth first without recursion (a chain of thousands of services is a file too)."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = [start]  # the services being visited, each waiting for its deps
        on_path = {start}
        pending = [iter(sorted(set(graph[start])))]
        while pending:
            dep = next(pending[-1], None)
            if dep is None:  # all of path[-1]'s dependencies visited
                pending.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif dep in on_path:
                return [*path[path.index(dep) :], dep]
            elif dep in graph and dep not in done:
                path.append(dep)
                on_path.add(dep)
                pending.append(iter(sorted(set(graph[dep]))))
    return []


# -- ZLayer v1

_ZLAYER_TOP = {"version", "deployment", "services"}
# ZLayer's keys lamina does not implement (cluster placement, overlays, WASM, GPUs):
# refused like unknown ones, but said to be ZLayer's
_ZLAYER_UNSUPPORTED = {
    "tunnels", "api", "network", "errors", "devices", "capabilities", "node_mode",
    "node_selector", "service_type", "wasm_http", "gpu", "stream", "tunnel",
}  # fmt: skip
# Compose-only fields of the model: not keys of a ZLayer file
_COMPOSE_ONLY = {"build", "networks", "secrets", "expose"}


def parse_zlayer(data: dict[Any, Any], environ: Mapping[str, str]) -> DeploymentSpec:
    problems = Problems()
    top: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _ZLAYER_TOP:
            problems.add(str(key), "unknown key" + _zlayer_hint(key))
        elif key != "services":
            top[key] = value
    if "version" not in top:
        problems.add("version", "required (version: v1)")
    elif top["version"] != "v1":
        problems.add("version", f"must be v1 (not {top['version']!r})")
        del top["version"]
    raw_services = data.get("services")
    services: Any = raw_services
    if isinstance(raw_services, dict):
        services = {
            name: _zlayer_service(join("services", str(name)), raw, environ, problems)
            for name, raw in raw_services.items()
        }
    if "deployment" in top:
        check_deployment_name(top["deployment"], "deployment", problems)
    spec = build_spec(top, services, problems)
    problems.raise_if_any()
    assert spec is not None
    return spec.model_copy(update={"source": "zlayer"})


def _zlayer_hint(key: Any) -> str:
    return " (a ZLayer key lamina does not support)" if key in _ZLAYER_UNSUPPORTED else ""


def _zlayer_service(path: str, raw: Any, environ: Mapping[str, str], problems: Problems) -> Any:
    """The service's document with ZLayer's conventions applied: ``$E:`` resolved,
    scalars of env as strings, the default health check, port 0 resolved."""
    if not isinstance(raw, dict):
        return raw
    out = dict(raw)
    for key in _COMPOSE_ONLY & out.keys():
        problems.add(join(path, key), "unknown key")
        del out[key]
    if isinstance(out.get("env"), dict):
        out["env"] = {
            key: resolve_env_value(join(join(path, "env"), str(key)), value, environ, problems)
            for key, value in out["env"].items()
        }
    first_port = _first_endpoint_port(out.get("endpoints"))
    health = out.get("health")
    if health is None and "health" not in out and first_port is not None:
        out["health"] = HealthSpec(check=TcpCheck(port=first_port)).model_dump()
    elif isinstance(health, dict) and isinstance(health.get("check"), dict):
        check = health["check"]
        if check.get("type") == "tcp" and check.get("port") == 0:
            if first_port is None:
                problems.add(
                    join(path, "health.check.port"),
                    "0 means the first endpoint's port, and the service has no endpoint",
                )
            out["health"] = {**health, "check": {**check, "port": first_port or 1}}
    return out


def _first_endpoint_port(endpoints: Any) -> int | None:
    if not isinstance(endpoints, list) or not endpoints or not isinstance(endpoints[0], dict):
        return None
    first = endpoints[0]
    if first.get("protocol") == "udp":
        return None
    port = first.get("target_port", first.get("port"))
    return (
        port if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536 else None
    )


def resolve_env_value(path: str, value: Any, environ: Mapping[str, str], problems: Problems) -> Any:
    """An env value as the container gets it: ``$E:VAR`` from the deployer's
    environment, numbers and booleans as their text; ``$S:`` left for the daemon."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str) and value.startswith(HOST_ENV_PREFIX):
        name = value[len(HOST_ENV_PREFIX) :]
        if not _ENV_NAME.fullmatch(name):
            problems.add(path, f"{value!r}: not a valid variable name after $E:")
            return ""
        if name not in environ:
            problems.add(path, f"{value}: the variable {name} is not set")
            return ""
        return environ[name]
    return value


# -- entry points


def parse_spec(
    text: str | bytes,
    filename: str,
    environ: Mapping[str, str],
    base_dir: str | os.PathLike[str],
    profiles: Iterable[str] = (),
) -> DeploymentSpec:
    """The model of one deployment file's text. ``filename`` names it in errors and
    picks the format with the document (``version: v1`` + ``deployment:`` is ZLayer's;
    a Compose file name or a ``services:`` document without them is Compose);
    ``base_dir`` is what Compose's relative paths are relative to."""
    data = load_yaml(text, filename)
    if data is None:
        raise InvalidSpec([f"{filename}: not a deployment file: it is empty"])
    if not isinstance(data, dict):
        raise InvalidSpec([f"{filename}: not a deployment file: the document is not a mapping"])
    if "deployment" in data:
        return parse_zlayer(data, environ)
    if "services" in data or Path(filename).name in COMPOSE_FILE_NAMES:
        from lamina.deploy._compose import parse_compose

        return parse_compose(data, filename, environ, Path(base_dir), tuple(profiles))
    raise InvalidSpec(
        [
            f"{filename}: neither a ZLayer spec (version: v1, deployment:) nor a Compose file "
            "(services:)"
        ]
    )


def read_capped(path: Path, limit: int) -> bytes | None:
    """The bytes of the regular file ``path``, None if it has more than ``limit``.
    Never blocks on a FIFO or reads a device endlessly; InvalidSpec if unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidSpec([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidSpec([f"{path}: cannot read: not a regular file"])
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise InvalidSpec([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    return data if len(data) <= limit else None


def find_spec_file(path: Path) -> Path:
    """``path`` itself, or for a directory its Compose file (Compose's order of names)."""
    if not path.is_dir():
        return path
    for name in COMPOSE_FILE_NAMES:
        if (path / name).is_file():
            return path / name
    raise InvalidSpec([f"{path}: no {', '.join(COMPOSE_FILE_NAMES)} in this directory"])


def load_spec(
    path: str | os.PathLike[str], environ: Mapping[str, str], profiles: Iterable[str] = ()
) -> DeploymentSpec:
    """The model of the deployment file at ``path`` (a directory: its Compose file),
    ``$E:`` and Compose's variables resolved from ``environ``. The secrets of the
    store it names are ``spec.secret_refs()``. InvalidSpec lists what is wrong."""
    file = find_spec_file(Path(path))
    text = read_capped(file, MAX_FILE_BYTES)
    if text is None:
        raise InvalidSpec([f"{file}: too large (more than {MAX_FILE_BYTES} bytes)"])
    # the file's directory as given, links not followed, as Compose has it
    return parse_spec(text, str(file), environ, os.path.abspath(file.parent), profiles)
