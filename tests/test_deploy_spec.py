"""ZLayer v1 deployment specs read into lamina's deployment model (pure Python, fast).

What a user sees of a spec before anything runs: the model it becomes (the daemon
gets it as JSON), ZLayer's defaults, and every validation error by its path, all of
them at once. Also the units, the YAML reader's limits and load_spec's file handling.
"""

from __future__ import annotations

import os
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lamina.deploy._model import (
    AdaptiveScale,
    BindStorage,
    CommandCheck,
    DeploymentSpec,
    FixedScale,
    HttpCheck,
    ManualScale,
    NamedStorage,
    TcpCheck,
    TmpfsStorage,
)
from lamina.deploy._spec import (
    InvalidSpec,
    check_spec,
    dependency_cycle,
    load_spec,
    parse_spec,
)
from lamina.deploy._units import cron_schedule, parse_duration, parse_size
from lamina.errors import LaminaError

FULL = """\
version: v1
deployment: shop
services:
  api:
    rtype: service
    image: {name: "registry.local/api:1.2", pull_policy: newer}
    command: {entrypoint: [/bin/api], args: [--port, 8080], workdir: /srv}
    env:
      PLAIN: hello
      NUMBER: 42
      FROM_HOST: $E:API_TOKEN
      DB_PASS: $S:db-pass
      CROSS: $S:@auth/jwt_key
    resources: {cpu: 0.5, memory: 512Mi, pids_limit: 200}
    scale: {mode: adaptive, min: 1, max: 6, cooldown: 1m30s, targets: {cpu: 70, memory: 80}}
    endpoints:
      - {name: http, protocol: http, port: 80, target_port: 8080, path: /api, host: shop.test,
         expose: public}
      - {name: admin, protocol: tcp, port: 9000}
    health:
      start_grace: 2s
      interval: 500ms
      timeout: 1s
      retries: 5
      check: {type: http, url: "http://localhost:8080/healthz", expect_status: 204}
    depends:
      - {service: db, condition: healthy, timeout: 2m, on_timeout: warn}
      - {service: cache, condition: started}
    init:
      steps:
        - {id: wait-db, uses: init.wait_tcp, with: {host: db, port: 5432}, retry: 3,
           timeout: 30s, on_failure: continue}
        - {id: migrate, uses: init.run, with: {command: [/bin/api, migrate]}}
    restart_policy: {kind: on_failure, max_attempts: 4, delay: 2s}
    storage:
      - {type: bind, source: /srv/conf, target: /conf, readonly: true}
      - {type: named, name: uploads, target: /uploads, size: 1Gi}
      - {type: anonymous, target: /cache}
      - {type: tmpfs, target: /tmp, size: 64Mi, mode: 0o1777}
    port_mappings:
      - {host_port: 18080, container_port: 8080, protocol: tcp, host_ip: 127.0.0.1}
    network_mode: bridge
    hostname: api
    dns: [10.0.0.53]
    extra_hosts: ["gw:10.0.0.1"]
    cap_add: [NET_ADMIN]
    cap_drop: [MKNOD]
    privileged: false
    user: "1000:1000"
    labels: {tier: backend}
    stop_signal: SIGINT
    stop_grace_period: 20s
    platform: {os: linux, arch: amd64}
    isolation: vm
  db:
    image: {name: postgres}
    scale: {mode: fixed, replicas: 1}
    health: {check: {type: command, command: "pg_isready -U app"}}
  cache:
    image: {name: redis}
    scale: {mode: manual}
  nightly:
    rtype: cron
    schedule: "0 3 * * *"
    image: {name: busybox}
  once:
    rtype: job
    image: {name: busybox}
"""


def parse(text: str, environ: dict[str, str] | None = None) -> DeploymentSpec:
    return parse_spec(textwrap.dedent(text), "spec.yaml", environ or {}, "/")


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(InvalidSpec) as info:
        parse(text, environ)
    return str(info.value).splitlines()


def service_problems(service_yaml: str, others: str = "") -> list[str]:
    """The problems of one service ``web`` (and ``others``) in a valid deployment."""
    if "image:" not in service_yaml:
        service_yaml = "image: {name: busybox}\n" + service_yaml
    body = textwrap.indent(textwrap.dedent(service_yaml), "    ")
    return problems(
        "version: v1\ndeployment: shop\nservices:\n  web:\n"
        + body
        + textwrap.indent(textwrap.dedent(others), "  ")
    )


def test_every_field_of_a_full_spec_reaches_the_model() -> None:
    spec = parse(FULL, {"API_TOKEN": "t0ken"})
    assert spec.source == "zlayer" and spec.deployment == "shop" and spec.version == "v1"
    api = spec.services["api"]
    assert api.image.name == "registry.local/api:1.2" and api.image.pull_policy == "newer"
    assert api.command.entrypoint == ["/bin/api"]
    assert api.command.args == ["--port", "8080"] and api.command.workdir == "/srv"
    assert api.env == {
        "PLAIN": "hello",
        "NUMBER": "42",
        "FROM_HOST": "t0ken",
        "DB_PASS": "$S:db-pass",
        "CROSS": "$S:@auth/jwt_key",
    }
    assert (api.resources.cpu, api.resources.memory, api.resources.pids_limit) == (
        0.5,
        512 * 1024**2,
        200,
    )
    assert api.scale == AdaptiveScale(
        min=1, max=6, cooldown=90.0, targets={"cpu": 70, "memory": 80}
    )
    http, admin = api.endpoints
    assert (http.port, http.container_port(), http.path, http.host, http.expose) == (
        80,
        8080,
        "/api",
        "shop.test",
        "public",
    )
    assert admin.container_port() == 9000 and admin.expose == "internal"
    assert api.health is not None
    assert (api.health.start_grace, api.health.interval, api.health.timeout) == (2.0, 0.5, 1.0)
    assert api.health.retries == 5
    assert api.health.check == HttpCheck(url="http://localhost:8080/healthz", expect_status=204)
    assert [(d.service, d.condition, d.timeout, d.on_timeout) for d in api.depends] == [
        ("db", "healthy", 120.0, "warn"),
        ("cache", "started", 300.0, "fail"),
    ]
    wait, migrate = api.init.steps
    assert (wait.uses, wait.with_, wait.retry, wait.timeout, wait.on_failure) == (
        "init.wait_tcp",
        {"host": "db", "port": 5432},
        3,
        30.0,
        "continue",
    )
    assert migrate.with_ == {"command": ["/bin/api", "migrate"]} and migrate.on_failure == "fail"
    assert api.restart_policy is not None
    assert (api.restart_policy.kind, api.restart_policy.max_attempts) == ("on_failure", 4)
    assert api.restart_policy.delay == 2.0
    bind, named, anonymous, tmpfs = api.storage
    assert bind == BindStorage(source="/srv/conf", target="/conf", readonly=True)
    assert named == NamedStorage(name="uploads", target="/uploads", size=1024**3)
    assert anonymous.type == "anonymous" and anonymous.target == "/cache"
    assert tmpfs == TmpfsStorage(target="/tmp", size=64 * 1024**2, mode=0o1777)
    (mapping,) = api.port_mappings
    assert (mapping.host_port, mapping.container_port, mapping.host_ip) == (
        18080,
        8080,
        "127.0.0.1",
    )
    assert (api.network_mode, api.hostname, api.dns, api.extra_hosts) == (
        "bridge",
        "api",
        ["10.0.0.53"],
        ["gw:10.0.0.1"],
    )
    assert (api.cap_add, api.cap_drop, api.privileged, api.user) == (
        ["NET_ADMIN"],
        ["MKNOD"],
        False,
        "1000:1000",
    )
    assert (api.labels, api.stop_signal, api.stop_grace_period) == (
        {"tier": "backend"},
        "SIGINT",
        20.0,
    )
    assert api.platform is not None and (api.platform.os, api.platform.arch) == ("linux", "amd64")
    assert api.isolation == "vm"
    assert spec.services["db"].scale == FixedScale(replicas=1)
    assert spec.services["db"].health is not None
    assert spec.services["db"].health.check == CommandCheck(command="pg_isready -U app")
    assert spec.services["cache"].scale == ManualScale()
    assert spec.services["nightly"].rtype == "cron"
    assert spec.services["nightly"].schedule == "0 3 * * *"
    assert spec.services["once"].rtype == "job"


def test_the_json_form_round_trips() -> None:
    """The client sends model_dump(mode="json") to the daemon, which validates it again."""
    spec = parse(FULL, {"API_TOKEN": "t"})
    dumped = spec.model_dump(mode="json")
    assert DeploymentSpec.model_validate(dumped) == spec
    assert DeploymentSpec.model_validate_json(spec.model_dump_json()) == spec
    step = dumped["services"]["api"]["init"]["steps"][0]
    assert "with" in step and "with_" not in step  # ZLayer's key, as the user wrote it
    assert dumped["services"]["api"]["health"]["interval"] == 0.5  # seconds
    assert dumped["services"]["api"]["resources"]["memory"] == 512 * 1024**2  # bytes


def test_a_model_received_as_json_passes_the_same_checks() -> None:
    """The daemon validates the client's JSON with the model, then check_spec: what a
    client could send without load_spec (a cycle, a missing dependency) is refused."""
    dumped = parse(FULL, {"API_TOKEN": "t"}).model_dump(mode="json")
    check_spec(DeploymentSpec.model_validate(dumped))  # a file's model passes
    dumped["services"]["db"]["depends"] = [{"service": "api"}, {"service": "ghost"}]
    dumped["services"]["db"]["endpoints"] = [{"name": "a", "protocol": "tcp", "port": 1}] * 2
    with pytest.raises(InvalidSpec) as info:
        check_spec(DeploymentSpec.model_validate(dumped))
    assert info.value.problems == [
        "services.db.depends[1]: no service named 'ghost'",
        "services.db.endpoints[1]: endpoint name 'a' used twice",
        "services: dependency cycle: api -> db -> api",
    ]


def test_zlayer_defaults() -> None:
    spec = parse(
        """\
        version: v1
        deployment: shop
        services:
          web:
            image: {name: busybox}
            endpoints: [{name: http, protocol: http, port: 80, target_port: 8080}]
          worker:
            image: {name: busybox}
          probe:
            image: {name: busybox}
            endpoints: [{name: http, protocol: http, port: 81}]
            health: {check: {type: tcp, port: 0}}
        """
    )
    web = spec.services["web"]
    assert web.rtype == "service" and web.image.pull_policy == "if_not_present"
    assert web.scale == AdaptiveScale(min=1, max=10, cooldown=30.0)
    # no health: ZLayer's default, a TCP check of the first endpoint after 5 s
    assert web.health is not None and web.health.check == TcpCheck(port=8080)
    assert (web.health.start_grace, web.health.retries) == (5.0, 3)
    assert spec.services["worker"].health is None  # nothing to check without an endpoint
    probe = spec.services["probe"].health
    assert probe is not None and probe.check == TcpCheck(port=81)  # port 0: the first endpoint
    assert web.isolation == "process" and web.restart_policy is None


def test_secret_refs_are_the_store_names_the_env_uses() -> None:
    spec = parse(FULL, {"API_TOKEN": "t"})
    assert spec.secret_refs() == {"db-pass", "jwt_key"}
    assert parse("version: v1\ndeployment: shop\nservices: {}\n").secret_refs() == set()


def test_host_environment_comes_from_the_given_environ_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ONLY_IN_PROCESS", "x")
    spec_text = """\
        version: v1
        deployment: shop
        services:
          web:
            image: {name: busybox}
            env: {A: $E:ONLY_IN_PROCESS, B: $E:GIVEN}
        """
    assert problems(spec_text, {"GIVEN": "1"}) == [
        "services.web.env.A: $E:ONLY_IN_PROCESS: the variable ONLY_IN_PROCESS is not set"
    ]
    monkeypatch.delenv("ONLY_IN_PROCESS")
    env = parse(spec_text, {"ONLY_IN_PROCESS": "a", "GIVEN": ""}).services["web"].env
    assert env == {"A": "a", "B": ""}


SERVICE_ERRORS = [
    ("bogus: 1", "services.web.bogus: unknown key"),
    (
        "node_mode: dedicated",
        "services.web.node_mode: unknown key (a ZLayer key lamina does not support)",
    ),
    (
        "resources: {gpu: {count: 1}}",
        "services.web.resources.gpu: unknown key (a ZLayer key lamina does not support)",
    ),
    ("scale: {mode: fixed, replicas: -1}", "services.web.scale.replicas: must be >= 0"),
    ("scale: {mode: fixed}", "services.web.scale.replicas: required"),
    ("scale: {mode: fixed, replicas: 2, max: 3}", "services.web.scale.max: unknown key"),
    (
        "scale: {mode: elastic}",
        "services.web.scale.mode: must be one of fixed, manual, adaptive (not 'elastic')",
    ),
    ("scale: {replicas: 2}", "services.web.scale.mode: required"),
    (
        "scale: {mode: adaptive, min: 5, max: 2}",
        "services.web.scale: min (5) must be <= max (2)",
    ),
    (
        "scale: {mode: adaptive, min: 1, max: 2, targets: {cpu: 150}}",
        "services.web.scale.targets.cpu: must be <= 100",
    ),
    (
        "scale: {mode: adaptive, min: 1, max: 2, cooldown: soon}",
        "services.web.scale.cooldown: invalid duration 'soon': expected e.g. 10s, 1m30s, "
        "500ms or 1h",
    ),
    (
        "rtype: daemon",
        "services.web.rtype: must be one of service, job, cron (not 'daemon')",
    ),
    ("rtype: cron", "services.web.schedule: required when rtype is cron"),
    ('schedule: "* * * * *"', "services.web.schedule: only for rtype cron (rtype is service)"),
    (
        'rtype: cron\nschedule: "61 * * * *"',
        "services.web.schedule: invalid cron schedule '61 * * * *': [61 * * * *] is not "
        "acceptable, out of range",
    ),
    (
        'rtype: cron\nschedule: "* *"',
        "services.web.schedule: invalid cron schedule '* *': expected 5 fields (minute hour "
        "day month weekday), or 6-7 with seconds first",
    ),
    (
        "image: {name: busybox, pull_policy: sometimes}",
        "services.web.image.pull_policy: must be one of always, newer, if_not_present, never "
        "(not 'sometimes')",
    ),
    ('image: {name: ""}', "services.web.image.name: must not be empty"),
    (
        "image: {name: Busybox}",
        'services.web.image.name: invalid reference "Busybox": repository name must be lowercase',
    ),
    (
        "resources: {memory: 12 parsecs}",
        "services.web.resources.memory: invalid size "
        "'12 parsecs': expected e.g. 512Mi, 1Gi, 100M or 1k",
    ),
    ("resources: {cpu: 0}", "services.web.resources.cpu: must be > 0"),
    ("resources: {pids_limit: 0}", "services.web.resources.pids_limit: must be >= 1"),
    (
        "endpoints: [{name: a, protocol: http, port: 0}]",
        "services.web.endpoints[0].port: must be >= 1",
    ),
    (
        "endpoints: [{name: a, protocol: http, port: 80, target_port: 70000}]",
        "services.web.endpoints[0].target_port: must be <= 65535",
    ),
    (
        "endpoints: [{name: a, protocol: gopher, port: 80}]",
        "services.web.endpoints[0].protocol: must be one of http, https, tcp, udp, websocket "
        "(not 'gopher')",
    ),
    (
        "endpoints: [{name: a, protocol: http, port: 80}, {name: a, protocol: tcp, port: 81}]",
        "services.web.endpoints[1]: endpoint name 'a' used twice",
    ),
    (
        "endpoints: [{name: a, protocol: http, port: 80, expose: world}]",
        "services.web.endpoints[0].expose: must be one of public, internal (not 'world')",
    ),
    ("health: {retries: 3}", "services.web.health.check: required"),
    (
        "health: {check: {type: ping}}",
        "services.web.health.check.type: must be one of tcp, http, command, none (not 'ping')",
    ),
    (
        "health: {check: {type: tcp, port: 80}, retries: 0}",
        "services.web.health.retries: must be >= 1",
    ),
    ("health: {check: {type: tcp}}", "services.web.health.check.port: required"),
    (
        "health: {check: {type: tcp, port: 0}}",
        "services.web.health.check.port: 0 means the first endpoint's port, and the service "
        "has no endpoint",
    ),
    (
        "health: {check: {type: http, url: localhost/healthz}}",
        "services.web.health.check.url: 'localhost/healthz' is not an http:// or https:// URL",
    ),
    (
        "health: {check: {type: http, url: 'http://x/', expect_status: 99}}",
        "services.web.health.check.expect_status: must be >= 100",
    ),
    (
        'health: {check: {type: command, command: " "}}',
        "services.web.health.check.command: must not be empty",
    ),
    (
        "health: {check: {type: command, command: {sh: x}}}",
        "services.web.health.check.command: must be a string or a list",
    ),
    (
        "health: {interval: -1s, check: {type: tcp, port: 1}}",
        "services.web.health.interval: invalid duration '-1s': expected e.g. 10s, 1m30s, "
        "500ms or 1h",
    ),
    ("depends: [{service: ghost}]", "services.web.depends[0]: no service named 'ghost'"),
    (
        "depends: [{service: web, condition: ready, on_timeout: panic}]",
        "services.web.depends[0].on_timeout: must be one of fail, warn, continue (not 'panic')",
    ),
    ("depends: [{service: web}]", "services: dependency cycle: web -> web"),
    (
        "init: {steps: [{id: a, uses: init.sleep}]}",
        "services.web.init.steps[0].uses: must be one of init.wait_tcp, init.wait_http, "
        "init.run (not 'init.sleep')",
    ),
    (
        "init: {steps: [{id: a, uses: init.wait_tcp, with: {host: db}}]}",
        "services.web.init.steps[0].with.port: required for init.wait_tcp: a port 1-65535",
    ),
    (
        "init: {steps: [{id: a, uses: init.run, with: {command: x, cmd: x}}]}",
        "services.web.init.steps[0].with.cmd: unknown key",
    ),
    (
        "init: {steps: [{id: a, uses: init.run, with: {command: x}},"
        " {id: a, uses: init.run, with: {command: y}}]}",
        "services.web.init.steps[1].id: step id 'a' used twice",
    ),
    (
        "init: {steps: [{id: a, uses: init.run, with: {command: x}, on_failure: retry}]}",
        "services.web.init.steps[0].on_failure: must be one of fail, warn, continue (not 'retry')",
    ),
    (
        "init: {steps: [{id: a, uses: init.run, with: {command: !!binary /w==}}]}",
        "services.web.init.steps[0].with.command: must be plain YAML: text, numbers, lists "
        "and mappings",
    ),
    (
        "restart_policy: {kind: sometimes}",
        "services.web.restart_policy.kind: must be one of no, always, unless_stopped, "
        "on_failure (not 'sometimes')",
    ),
    (
        "storage: [{type: s3, target: /data}]",
        "services.web.storage[0].type: must be one of bind, named, anonymous, tmpfs (not 's3')",
    ),
    ("storage: [{type: bind, target: /data}]", "services.web.storage[0].source: required"),
    (
        "port_mappings: [{container_port: 80, protocol: sctp}]",
        "services.web.port_mappings[0].protocol: must be one of tcp, udp (not 'sctp')",
    ),
    (
        "isolation: hyperv",
        "services.web.isolation: must be one of process, vm, auto (not 'hyperv')",
    ),
    ("privileged: maybe", "services.web.privileged: must be true or false"),
    ('env: {A: "a\\0b"}', "services.web.env.A: a value cannot hold a NUL byte"),
    ("env: {A: $E:MISSING}", "services.web.env.A: $E:MISSING: the variable MISSING is not set"),
    (
        "env: {A: $S:9lives}",
        "services.web.env.A: '$S:9lives': a secret name starts with a letter and has only "
        "letters, digits, '-' and '_'",
    ),
    (
        "env: {A: $S:@svc}",
        "services.web.env.A: '$S:@svc': a cross-service reference is $S:@service/name",
    ),
    ("build: {context: .}", "services.web.build: unknown key"),  # Compose's, not ZLayer's
    ("expose: [{port: 80}]", "services.web.expose: unknown key"),
    (
        "stop_grace_period: 1fortnight",
        "services.web.stop_grace_period: invalid duration "
        "'1fortnight': expected e.g. 10s, 1m30s, 500ms or 1h",
    ),
]


@pytest.mark.parametrize(("service_yaml", "expected"), SERVICE_ERRORS)
def test_each_validation_error_names_its_path(service_yaml: str, expected: str) -> None:
    assert service_problems(service_yaml) == [expected]


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ("version: v2\ndeployment: shop", "version: must be v1 (not 'v2')"),
        ("deployment: shop", "version: required (version: v1)"),
        (
            "version: v1\ndeployment: ab",
            "deployment: 'ab' is not a valid deployment name: 3-63 characters, lowercase "
            "letters, digits and '-', starting with a letter or digit",
        ),
        (
            "version: v1\ndeployment: My_Shop",
            "deployment: 'My_Shop' is not a valid deployment name: 3-63 characters, lowercase "
            "letters, digits and '-', starting with a letter or digit",
        ),
        (
            "version: v1\ndeployment: " + "a" * 64,
            f"deployment: {'a' * 64!r} is not a valid deployment name: 3-63 characters, "
            "lowercase letters, digits and '-', starting with a letter or digit",
        ),
        (
            "version: v1\ndeployment: shop\ntunnels: {}",
            "tunnels: unknown key (a ZLayer key lamina does not support)",
        ),
        ("version: v1\ndeployment: shop\ncolour: blue", "colour: unknown key"),
    ],
)
def test_top_level_errors(top: str, expected: str) -> None:
    assert problems(top + "\nservices: {}\n") == [expected]


def test_a_service_name_must_be_a_dns_label() -> None:
    assert problems(
        "version: v1\ndeployment: shop\nservices:\n  Web_1:\n    image: {name: x}\n"
    ) == [
        "services.Web_1: not a valid service name: 1-63 lowercase letters, digits and '-' "
        "(a DNS label), starting and ending with a letter or digit"
    ]


def test_a_dependency_cycle_is_named() -> None:
    lines = problems(
        """\
        version: v1
        deployment: shop
        services:
          a: {image: {name: x}, depends: [{service: b}]}
          b: {image: {name: x}, depends: [{service: c}]}
          c: {image: {name: x}, depends: [{service: a}]}
          d: {image: {name: x}, depends: [{service: a}]}
        """
    )
    assert lines == ["services: dependency cycle: a -> b -> c -> a"]
    assert dependency_cycle({"a": ["b"], "b": [], "c": ["a", "b"]}) == []
    assert dependency_cycle({"a": ["a"]}) == ["a", "a"]
    assert dependency_cycle({"a": ["b", "c"], "b": ["c"], "c": ["d"], "d": ["b"]}) == [
        "b",
        "c",
        "d",
        "b",
    ]


def test_a_long_dependency_chain_is_no_recursion() -> None:
    services = "".join(
        f"  s{i}: {{image: {{name: x}}, depends: [{{service: s{i + 1}}}]}}\n" for i in range(3000)
    )
    last = "  s3000: {image: {name: x}, depends: [{service: s0}]}\n"
    lines = problems(f"version: v1\ndeployment: shop\nservices:\n{services}{last}")
    assert len(lines) == 1 and lines[0].startswith("services: dependency cycle: s0 -> s1 -> ")


def test_all_errors_are_reported_at_once() -> None:
    """Errors of several services, and checks across fields on a service that has
    errors of its own, in one InvalidSpec, one a line."""
    lines = problems(
        """\
        version: v1
        deployment: shop
        services:
          web:
            image: {name: x}
            scale: {mode: fixed, replicas: -1}
            depends: [{service: ghost}]
            endpoints:
              - {name: http, protocol: http, port: 80}
              - {name: http, protocol: http, port: 81}
          api:
            image: {name: x}
            colour: blue
            health: {interval: 10x, check: {type: tcp, port: 1}}
        """
    )
    assert sorted(lines) == sorted(
        [
            "services.web.scale.replicas: must be >= 0",
            "services.web.depends[0]: no service named 'ghost'",
            "services.web.endpoints[1]: endpoint name 'http' used twice",
            "services.api.colour: unknown key",
            "services.api.health.interval: invalid duration '10x': expected e.g. 10s, 1m30s, "
            "500ms or 1h",
        ]
    )


def test_errors_past_the_first_500_are_counted() -> None:
    services = "".join(f"  s{i}: {{image: {{name: x}}, bad: 1}}\n" for i in range(1500))
    with pytest.raises(InvalidSpec) as info:
        parse("version: v1\ndeployment: shop\nservices:\n" + services)
    assert len(info.value.problems) == 1500
    lines = str(info.value).splitlines()
    assert len(lines) == 501 and lines[-1] == "(1000 more problems)"
    assert lines[0] == "services.s0.bad: unknown key"


def test_invalid_spec_is_a_lamina_error_with_its_problems() -> None:
    with pytest.raises(LaminaError) as info:
        parse("version: v1\ndeployment: x\nservices: {a: {image: {name: y}, b: 1}}\n")
    assert isinstance(info.value, InvalidSpec)
    assert info.value.problems == str(info.value).splitlines()
    assert len(info.value.problems) == 2


# -- units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("1m30s", 90.0),
        ("1m 30s", 90.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        ("2d", 172800.0),
        ("250us", 0.00025),
        ("5min", 300.0),  # humantime's spellings, as ZLayer reads them
        ("30 sec", 30.0),
        ("2 hours 3 minutes", 7380.0),
        ("1w", 604800.0),
        ("15", 15.0),
        ("0", 0.0),
        (12, 12.0),
        (2.5, 2.5),
    ],
)
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "s", "10", "10x", "1m30", "-5s", "ten seconds", "5 mo", "1sx", True]
)
def test_bad_durations(text: object) -> None:
    if text == "10":
        assert parse_duration(text) == 10.0  # a bare number is seconds
        return
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512Mi", 512 * 1024**2),
        ("1Gi", 1024**3),
        ("4Ki", 4096),
        ("100M", 100_000_000),
        ("1k", 1000),
        ("1.5Gi", 1536 * 1024**2),
        ("2048", 2048),
        (4096, 4096),
    ],
)
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "Mi", "12 parsecs", "-1Mi", "1.5", "512mb", "1e99Gi"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_cron_schedules_five_fields_or_zlayers_seconds_first() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert cron_schedule("*/5 * * * *", start).get_next(datetime) == datetime(
        2026, 1, 1, 0, 5, tzinfo=UTC
    )
    assert cron_schedule("30 0 12 * * *", start).get_next(datetime) == datetime(
        2026, 1, 1, 12, 0, 30, tzinfo=UTC
    )
    assert cron_schedule("0 0 12 * * MON-FRI *", start).get_next(datetime) == datetime(
        2026, 1, 1, 12, 0, tzinfo=UTC
    )  # 2026-01-01 is a Thursday
    with pytest.raises(ValueError, match="invalid cron schedule"):
        cron_schedule("* * * * * * * *", start)


# -- the YAML reader and the file


def test_yaml_syntax_error_is_one_line_with_file_and_line() -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec("version: v1\ndeployment: shop\nservices:\n  web: [\n", "shop.yaml", {}, "/")
    assert str(info.value).startswith("shop.yaml:5: invalid YAML: ")
    assert "\n" not in str(info.value)


def test_duplicate_keys_are_refused() -> None:
    with pytest.raises(InvalidSpec, match=r"^shop.yaml:3: invalid YAML: duplicate key 'web'$"):
        parse_spec("services:\n  web: {image: a}\n  web: {image: b}\n", "shop.yaml", {}, "/")


def test_yaml_1_2_scalars() -> None:
    """`no`, `on` and `22:22` are strings (YAML 1.2, as Go's reader has them): a label
    value `no` stays "no" and a port `22:22` is not the base-60 number 1342."""
    spec = parse(
        """\
        version: v1
        deployment: shop
        services:
          web:
            image: {name: busybox}
            labels: {enabled: no, mode: on, at: 22:22, day: 2026-01-01}
        """
    )
    assert spec.services["web"].labels == {
        "enabled": "no",
        "mode": "on",
        "at": "22:22",
        "day": "2026-01-01",
    }


def test_alias_bomb_is_refused_quickly() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        levels.append(f"a{i}: &a{i} [{refs}]")
    text = "\n".join(levels) + "\nservices: {web: {image: busybox, command: *a9}}\n"
    started = time.monotonic()
    with pytest.raises(InvalidSpec, match=r"document too large: more than 200000 values"):
        parse_spec(text, "compose.yaml", {}, "/")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("depth", [100, 50_000])
def test_deep_nesting_is_refused(depth: int) -> None:
    text = "services: " + "[" * depth + "]" * depth + "\n"
    with pytest.raises(InvalidSpec) as info:
        parse_spec(text, "compose.yaml", {}, "/")
    assert str(info.value) in (
        "compose.yaml: document too large: deeper than 64 once its aliases are expanded",
        "compose.yaml:1: invalid YAML: exceeded maximum nesting depth",  # libyaml's own limit
    )


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(InvalidSpec, match="document too large"):
        parse_spec("services: &s {web: *s}\n", "compose.yaml", {}, "/")


def test_huge_file_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "spec.yaml"
    big.write_text("version: v1\ndeployment: shop\n" + "# padding\n" * 500_000)
    with pytest.raises(InvalidSpec, match=r"spec.yaml: too large \(more than 4194304 bytes\)$"):
        load_spec(big, {})
    big.unlink()
    big.symlink_to("/dev/zero")  # a device is not read at all
    with pytest.raises(InvalidSpec, match=r"spec.yaml: cannot read: not a regular file$"):
        load_spec(big, {})


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "compose.yaml"
    os.mkfifo(fifo)
    with pytest.raises(InvalidSpec, match=r"compose.yaml: cannot read: not a regular file$"):
        load_spec(fifo, {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"services: \xff", "compose.yaml: invalid YAML: invalid leading UTF-8 octet (byte 10)"),
        (b"", "compose.yaml: not a deployment file: it is empty"),
        (
            b"a: !!python/object:os.system {}",
            "compose.yaml:1: invalid YAML: could not determine "
            "a constructor for the tag 'tag:yaml.org,2002:python/object:os.system'",
        ),
        (b"---\na: 1\n---\nb: 2\n", "compose.yaml:3: invalid YAML: but found another document"),
    ],
)
def test_bad_yaml_is_one_line(text: bytes, message: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec(text, "compose.yaml", {}, "/")
    assert str(info.value) == message


def test_load_spec_reads_the_file_and_picks_the_format(tmp_path: Path) -> None:
    zlayer = tmp_path / "shop.yaml"
    zlayer.write_text("version: v1\ndeployment: shop\nservices: {web: {image: {name: x}}}\n")
    assert load_spec(zlayer, {}).source == "zlayer"
    project = tmp_path / "shop2"
    project.mkdir()
    (project / "docker-compose.yml").write_text("services: {web: {image: x}}\n")
    spec = load_spec(project, {})  # a directory: its Compose file
    assert (spec.source, spec.deployment) == ("compose", "shop2")
    other = tmp_path / "other.yaml"
    other.write_text("kind: Pod\n")
    with pytest.raises(InvalidSpec, match=r"neither a ZLayer spec .* nor a Compose file"):
        load_spec(other, {})
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(InvalidSpec, match="the document is not a mapping"):
        load_spec(tmp_path / "list.yaml", {})
    with pytest.raises(InvalidSpec, match=r"missing.yaml: cannot read: No such file"):
        load_spec(tmp_path / "missing.yaml", {})
    with pytest.raises(InvalidSpec, match=r"no compose.yaml, .* in this directory"):
        load_spec(tmp_path / "shop2" / "..", {})


# -- no traceback, whatever the values

FUZZ_COMPOSE = """\
services:
  web:
    build: {context: ., args: {V: 1}}
    command: [httpd, -f]
    environment: [A=1]
    env_file: [{path: web.env, required: false}]
    ports: ["8080:80", {target: 443, published: 8443}]
    expose: ["9000"]
    volumes: [data:/data, ./conf:/conf:ro, {type: tmpfs, target: /t, tmpfs: {size: 1m}}]
    networks: {front: {aliases: [www]}}
    depends_on: {db: {condition: service_healthy}}
    healthcheck: {test: [CMD, "true"], interval: 1s}
    restart: on-failure:3
    deploy: {replicas: 1, resources: {limits: {cpus: "1", memory: 64m}}}
    secrets: [{source: token, target: t}]
    labels: [a=b]
    extra_hosts: ["h:1.2.3.4"]
    tmpfs: [/run]
  db: {image: busybox, profiles: [all]}
networks: {front: {ipam: {config: [{subnet: 10.1.0.0/24}]}}}
volumes: {data: {external: true}}
secrets: {token: {file: ./token}}
"""


def _paths(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*prefix, i))
    return found


@pytest.mark.parametrize(
    ("text", "filename"), [(FULL, "spec.yaml"), (FUZZ_COMPOSE, "compose.yaml")]
)
def test_any_value_anywhere_is_an_error_line_never_a_traceback(
    tmp_path: Path, text: str, filename: str
) -> None:
    """Each value of a valid file replaced in turn by values of other types and
    shapes: the reader answers InvalidSpec or a model, nothing else.
    (Found: a top-level section that is not a mapping, a directory as env_file.)"""
    import copy

    import yaml

    document = yaml.safe_load(text)
    kinds: list[object] = [None, -1, "${", [1], {"a": 1}, "", 1.5]
    for i, path in enumerate(_paths(document)[1:]):
        # three kinds a path, rotating: every kind at every depth, in a second or two
        for replacement in (kinds[i % 7], kinds[(i + 2) % 7], kinds[(i + 5) % 7]):
            mutated = copy.deepcopy(document)
            node = mutated
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = replacement
            try:
                dumped = yaml.dump(mutated, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper))
                parse_spec(dumped, filename, {"API_TOKEN": "t"}, tmp_path)
            except InvalidSpec as exc:
                assert str(exc).strip(), (path, replacement)
