"""Compose files read into lamina's deployment model (pure Python, fast), with
docker-compose 1.29's ``config`` as the oracle where it is one.

Covers every Compose key the issue lists, Compose's interpolation rules and its
.env/env_file format, the project name, profiles, and errors by Compose's paths.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from lamina.deploy._interpolate import InterpolationError, chain, interpolate, parse_env_file
from lamina.deploy._model import (
    AnonymousStorage,
    BindStorage,
    CommandCheck,
    DeploymentSpec,
    FixedScale,
    NamedStorage,
    NoCheck,
    TmpfsStorage,
)
from lamina.deploy._spec import InvalidSpec, load_spec


def write(directory: Path, text: str, name: str = "compose.yaml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(
    tmp_path: Path,
    text: str,
    environ: dict[str, str] | None = None,
    profiles: tuple[str, ...] = (),
) -> DeploymentSpec:
    return load_spec(write(tmp_path / "shop", text), environ or {}, profiles)


def problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(InvalidSpec) as info:
        load(tmp_path, text, environ)
    return str(info.value).splitlines()


def test_a_compose_file_becomes_the_model(tmp_path: Path) -> None:
    project = tmp_path / "shop"
    write(project, "A=1\nB='two words'\n", "web.env")
    spec = load(
        tmp_path,
        """\
        version: "3.8"
        services:
          db:
            image: postgres:16
            environment: {POSTGRES_PASSWORD: pw, DEBUG: true, PORT: 5432}
            healthcheck:
              test: ["CMD", "pg_isready", "-U", "app"]
              interval: 2s
              timeout: 1s
              retries: 5
              start_period: 10s
            volumes: [data:/var/lib/postgresql/data]
            restart: unless-stopped
          web:
            build: {context: ./web, dockerfile: Dockerfile.prod, args: [VERSION=1], target: run}
            command: ["httpd", "-f", "-p", "8080"]
            entrypoint: /bin/sh -c
            working_dir: /srv
            env_file: web.env
            environment: [B=override, C=3]
            ports: ["8080"]
            expose: ["9000"]
            depends_on:
              db: {condition: service_healthy}
            deploy:
              replicas: 3
              resources: {limits: {cpus: "0.5", memory: 256m, pids: 64}}
            labels: [tier=front]
            user: "1000"
            cap_add: [NET_ADMIN]
            cap_drop: [ALL]
            privileged: false
            stop_signal: SIGTERM
            stop_grace_period: 1m30s
            hostname: www
            dns: 10.0.0.53
            extra_hosts: ["gw:10.0.0.1", "db2=10.0.0.2"]
            platform: linux/arm64/v8
            networks: {front: {aliases: [www]}, back: null}
            secrets: [token, {source: token, target: token2, mode: 0o400}]
            tmpfs: [/run]
        networks:
          front: {}
          back: {internal: true, ipam: {config: [{subnet: 10.9.0.0/24}]}}
        volumes:
          data: {labels: {keep: "yes"}}
        secrets:
          token: {file: ./token.txt}
        """,
    )
    assert (spec.source, spec.deployment) == ("compose", "shop")
    db, web = spec.services["db"], spec.services["web"]
    assert db.image.name == "postgres:16" and db.scale == FixedScale(replicas=1)
    assert db.env == {"POSTGRES_PASSWORD": "pw", "DEBUG": "true", "PORT": "5432"}
    assert db.health is not None
    assert db.health.check == CommandCheck(command=["pg_isready", "-U", "app"])
    assert (db.health.interval, db.health.timeout, db.health.retries) == (2.0, 1.0, 5)
    assert db.health.start_grace == 10.0
    assert db.storage == [NamedStorage(name="data", target="/var/lib/postgresql/data")]
    assert db.restart_policy is not None and db.restart_policy.kind == "unless_stopped"

    assert web.build is not None
    assert web.build.context == str(tmp_path / "shop" / "web")
    assert (web.build.dockerfile, web.build.args, web.build.target) == (
        "Dockerfile.prod",
        {"VERSION": "1"},
        "run",
    )
    assert web.image.name == "shop-web"  # Compose's name for the image it builds
    assert web.command.args == ["httpd", "-f", "-p", "8080"]
    assert web.command.entrypoint == ["/bin/sh", "-c"] and web.command.workdir == "/srv"
    assert web.env == {"A": "1", "B": "override", "C": "3"}  # environment wins over env_file
    assert [(p.host_port, p.container_port, p.protocol) for p in web.port_mappings] == [
        (None, 8080, "tcp")
    ]
    assert [(e.port, e.protocol) for e in web.expose] == [(9000, "tcp")]
    assert [(d.service, d.condition) for d in web.depends] == [("db", "healthy")]
    assert web.scale == FixedScale(replicas=3)
    assert (web.resources.cpu, web.resources.memory, web.resources.pids_limit) == (
        0.5,
        256 * 1024**2,  # Docker's sizes are binary
        64,
    )
    assert web.labels == {"tier": "front"} and web.user == "1000"
    assert (web.cap_add, web.cap_drop, web.privileged) == (["NET_ADMIN"], ["ALL"], False)
    assert (web.stop_signal, web.stop_grace_period, web.hostname) == ("SIGTERM", 90.0, "www")
    assert web.dns == ["10.0.0.53"] and web.extra_hosts == ["gw:10.0.0.1", "db2:10.0.0.2"]
    assert web.platform is not None
    assert (web.platform.os, web.platform.arch, web.platform.variant) == ("linux", "arm64", "v8")
    assert [(n.name, n.aliases) for n in web.networks] == [("front", ["www"]), ("back", [])]
    # the store's name of the file's secret, under which the client stores it
    assert [(s.source, s.target, s.mode) for s in web.secrets] == [
        ("shop_token", "/run/secrets/token", None),
        ("shop_token", "/run/secrets/token2", 0o400),
    ]
    assert spec.secret_refs() == {"shop_token"}  # the daemon checks it exists
    assert web.storage == [TmpfsStorage(target="/run")]
    assert spec.networks["back"].internal and spec.networks["back"].subnet == "10.9.0.0/24"
    assert spec.volumes["data"].labels == {"keep": "yes"}
    assert spec.secrets["token"].file == str(tmp_path / "shop" / "token.txt")
    assert DeploymentSpec.model_validate(spec.model_dump(mode="json")) == spec


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        ("['80']", [(None, 80, "tcp", None)]),
        ("['8080:80']", [(8080, 80, "tcp", None)]),
        ("[8080:80]", [(8080, 80, "tcp", None)]),  # YAML 1.2: a string, not 484880
        ("['127.0.0.1:8080:80/udp']", [(8080, 80, "udp", "127.0.0.1")]),
        ("['[::1]:8080:80']", [(8080, 80, "tcp", "::1")]),
        ("['9000-9001:8000-8001']", [(9000, 8000, "tcp", None), (9001, 8001, "tcp", None)]),
        ("['127.0.0.1::80']", [(None, 80, "tcp", "127.0.0.1")]),
        ("['3000-3001']", [(None, 3000, "tcp", None), (None, 3001, "tcp", None)]),
        (
            "[{target: 80, published: '8080', protocol: udp, host_ip: 127.0.0.1, mode: host}]",
            [(8080, 80, "udp", "127.0.0.1")],
        ),
        ("[{target: 80}]", [(None, 80, "tcp", None)]),
    ],
)
def test_ports(tmp_path: Path, ports: str, expected: list[tuple[Any, ...]]) -> None:
    spec = load(tmp_path, f"services:\n  web:\n    image: x\n    ports: {ports}\n")
    got = [
        (p.host_port, p.container_port, p.protocol, p.host_ip)
        for p in spec.services["web"].port_mappings
    ]
    assert got == expected


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        ("['99999:80']", "services.web.ports[0]: invalid port range '99999': ports are 1-65535"),
        ("['http']", "services.web.ports[0]: invalid port 'http'"),
        ("['80/sctp']", "services.web.ports[0]: '80/sctp': protocol must be tcp or udp"),
        (
            "['8000-8002:80-81']",
            "services.web.ports[0]: '8000-8002:80-81': the host and container ranges differ",
        ),
        ("[{published: 80}]", "services.web.ports[0]: target is required"),
        ("[{target: 80, colour: red}]", "services.web.ports[0].colour: unknown key"),
        ("'80:80'", "services.web.ports: must be a list"),
    ],
)
def test_port_errors(tmp_path: Path, ports: str, expected: str) -> None:
    (line,) = problems(tmp_path, f"services:\n  web:\n    image: x\n    ports: {ports}\n")
    assert line.startswith(expected)


def test_volumes_short_and_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load(
        tmp_path,
        """\
        services:
          web:
            image: x
            volumes:
              - data:/data
              - ./conf:/etc/conf:ro
              - ../shared:/shared:rw
              - ~/cache:/cache
              - /var/log
              - {type: bind, source: ./src, target: /src, read_only: true}
              - {type: volume, source: data, target: /data2}
              - {type: volume, target: /anon}
              - {type: tmpfs, target: /scratch, tmpfs: {size: 1m, mode: 0o1777}}
            tmpfs: ["/run:size=64k,mode=0755"]
        volumes:
          data:
        """,
        {"HOME": "/home/alice"},
    )
    shop = tmp_path / "shop"
    assert spec.services["web"].storage == [
        NamedStorage(name="data", target="/data"),
        BindStorage(source=str(shop / "conf"), target="/etc/conf", readonly=True),
        BindStorage(source=str(tmp_path / "shared"), target="/shared"),
        BindStorage(source="/home/alice/cache", target="/cache"),
        AnonymousStorage(target="/var/log"),
        BindStorage(source=str(shop / "src"), target="/src", readonly=True),
        NamedStorage(name="data", target="/data2"),
        AnonymousStorage(target="/anon"),
        TmpfsStorage(target="/scratch", size=1024**2, mode=0o1777),
        TmpfsStorage(target="/run", size=64 * 1024, mode=0o755),
    ]


@pytest.mark.parametrize(
    ("volume", "expected"),
    [
        ("missing:/data", "services.web.volumes[0]: undefined volume 'missing'"),
        ("./a:relative", "services.web.volumes[0]: invalid volume './a:relative': the container"),
        ("./a:/b:z", "services.web.volumes[0]: invalid volume './a:/b:z': unsupported mode z"),
        ("{type: npipe, source: x, target: /x}", "services.web.volumes[0]: type must be volume"),
        ("{type: bind, target: /x}", "services.web.volumes[0]: a bind needs a source"),
        (
            "{type: bind, source: ., target: /x, bind: {propagation: shared}}",
            "services.web.volumes[0].bind.propagation: unknown key",
        ),
    ],
)
def test_volume_errors(tmp_path: Path, volume: str, expected: str) -> None:
    (line,) = problems(tmp_path, f"services:\n  web:\n    image: x\n    volumes: [{volume}]\n")
    assert line.startswith(expected)


def test_depends_on_forms_and_conditions(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        """\
        services:
          db: {image: x}
          migrate: {image: x}
          cache: {image: x}
          api:
            image: x
            depends_on: [db, cache]
          web:
            image: x
            depends_on:
              db: {condition: service_healthy}
              migrate: {condition: service_completed_successfully}
              cache:
              metrics: {condition: service_started, required: false}
        """,
    )
    assert [(d.service, d.condition) for d in spec.services["api"].depends] == [
        ("db", "started"),
        ("cache", "started"),
    ]
    # metrics is optional and not in the file: Compose starts web without it
    assert [(d.service, d.condition) for d in spec.services["web"].depends] == [
        ("db", "healthy"),
        ("migrate", "completed"),
        ("cache", "started"),
    ]


def test_depends_on_errors(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        """\
        services:
          a: {image: x, depends_on: [b, ghost]}
          b: {image: x, depends_on: {a: {condition: service_ready}}}
        """,
    )
    assert sorted(lines) == [
        "services.a.depends_on: no service named 'ghost'",
        "services.b.depends_on.a.condition: must be one of service_started, service_healthy, "
        "service_completed_successfully",
        "services: dependency cycle: a -> b -> a",
    ]


@pytest.mark.parametrize(
    ("test", "check"),
    [
        ('"curl -f http://localhost/"', CommandCheck(command="curl -f http://localhost/")),
        ('["CMD-SHELL", "exit 0"]', CommandCheck(command="exit 0")),
        ('["CMD", "true"]', CommandCheck(command=["true"])),
        ('["NONE"]', NoCheck()),
    ],
)
def test_healthcheck_forms(tmp_path: Path, test: str, check: object) -> None:
    spec = load(tmp_path, f"services:\n  web:\n    image: x\n    healthcheck: {{test: {test}}}\n")
    health = spec.services["web"].health
    assert health is not None and health.check == check
    # Compose's (Docker's) defaults
    assert (health.interval, health.timeout, health.retries, health.start_grace) == (
        30.0,
        30.0,
        3,
        0.0,
    )


def test_healthcheck_disable_and_errors(tmp_path: Path) -> None:
    spec = load(tmp_path, "services:\n  web: {image: x, healthcheck: {disable: true}}\n")
    assert spec.services["web"].health is not None
    assert spec.services["web"].health.check == NoCheck()
    lines = problems(
        tmp_path,
        """\
        services:
          a: {image: x, healthcheck: {test: ["PING"]}}
          b: {image: x, healthcheck: {interval: 5s}}
          c: {image: x, healthcheck: {test: "true", retries: 0, timeout: 5y}}
          d: {image: x, healthcheck: {test: "true", start_interval: 1s}}
        """,
    )
    assert sorted(lines) == [
        'services.a.healthcheck.test: must be a string, ["CMD", ...], ["CMD-SHELL", "..."] '
        'or ["NONE"]',
        "services.b.healthcheck.test: required: lamina needs the test (the image's with new "
        "timings is not supported)",
        "services.c.healthcheck.retries: must be >= 1",
        "services.c.healthcheck.timeout: invalid duration '5y': expected e.g. 10s, 1m30s, "
        "500ms or 1h",
        "services.d.healthcheck.start_interval: unknown key (lamina does not support "
        "'start_interval')",
    ]


@pytest.mark.parametrize(
    ("restart", "kind", "attempts"),
    [
        ('"no"', "no", None),
        ("no", "no", None),  # YAML 1.2: the string "no"
        ("always", "always", None),
        ("on-failure", "on_failure", None),
        ("on-failure:5", "on_failure", 5),
        ("unless-stopped", "unless_stopped", None),
    ],
)
def test_restart(tmp_path: Path, restart: str, kind: str, attempts: int | None) -> None:
    spec = load(tmp_path, f"services:\n  web: {{image: x, restart: {restart}}}\n")
    policy = spec.services["web"].restart_policy
    assert policy is not None and (policy.kind, policy.max_attempts) == (kind, attempts)


def test_profiles_select_services(tmp_path: Path) -> None:
    text = """\
        services:
          web: {image: x}
          debug: {image: x, profiles: [debug]}
          seed: {image: x, profiles: [setup, debug]}
        """
    assert set(load(tmp_path, text).services) == {"web"}
    assert set(load(tmp_path, text, profiles=("setup",)).services) == {"web", "seed"}
    both = load(tmp_path, text, {"COMPOSE_PROFILES": "debug"})
    assert set(both.services) == {"web", "debug", "seed"}


def test_paths_are_relative_to_the_directory_named_not_a_links_target(tmp_path: Path) -> None:
    write(tmp_path / "real", "services: {web: {image: x, volumes: [./data:/data]}}\n")
    (tmp_path / "shop").symlink_to(tmp_path / "real")
    spec = load_spec(tmp_path / "shop" / "compose.yaml", {})
    assert spec.deployment == "shop"
    assert spec.services["web"].storage[0] == BindStorage(
        source=str(tmp_path / "shop" / "data"), target="/data"
    )


def test_project_name(tmp_path: Path) -> None:
    text = "services: {web: {image: x}}\n"
    assert load_spec(write(tmp_path / "My.Shop", text), {}).deployment == "myshop"
    named = write(tmp_path / "dir", "name: ${PROJECT:-storefront}\n" + text)
    assert load_spec(named, {}).deployment == "storefront"
    assert load_spec(named, {"COMPOSE_PROJECT_NAME": "other"}).deployment == "other"
    with pytest.raises(InvalidSpec) as info:
        load_spec(write(tmp_path / "my_app", text), {})
    assert str(info.value) == (
        "name (from the directory 'my_app'): 'my_app' is not a valid deployment name: 3-63 "
        "characters, lowercase letters, digits and '-', starting with a letter or digit"
    )


def test_unknown_keys_are_errors_and_x_keys_ignored(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        """\
        x-defaults: &defaults {image: busybox}
        configs: {}
        services:
          x-template: {image: nothing}
          web:
            <<: *defaults
            x-note: ignored
            container_name: web
            deploy: {replicas: 2, update_config: {parallelism: 1}, x-extra: 1}
            logging: {driver: json-file}
        networks:
          front: {driver: overlay, x-info: 1}
        """,
    )
    assert sorted(lines) == [
        "configs: unknown key (lamina does not support 'configs')",
        "networks.front.driver: must be one of bridge (not 'overlay')",
        "services.web.container_name: unknown key (lamina does not support 'container_name')",
        "services.web.deploy.update_config: unknown key (lamina does not support 'update_config')",
        "services.web.logging: unknown key (lamina does not support 'logging')",
    ]


def test_errors_after_conversion_name_compose_keys(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        """\
        services:
          web:
            image: "busybox:bad tag"
            deploy: {replicas: -1, resources: {limits: {cpus: 0}}}
            environment: {"": x}
            command: [sleep, {n: 1}]
        """,
    )
    assert sorted(lines) == [
        "services.web.command: must be a string",
        "services.web.deploy.replicas: must be >= 0",
        "services.web.deploy.resources.limits.cpus: must be > 0",
        "services.web.environment.: not a valid variable name (empty, or with '=')",
        'services.web.image: invalid tag "bad tag" in "busybox:bad tag"',
    ]


def test_a_service_needs_image_or_build_and_defined_references(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        """\
        services:
          web:
            command: "true"
            networks: [front]
            secrets: [token]
          api:
            image: x
            network_mode: host
            networks: [default]
        secrets:
          other: {environment: TOKEN}
          "bad key": {file: ./x}
        """,
    )
    assert sorted(lines) == sorted(
        [
            "secrets.other.environment: unknown key (lamina does not support 'environment')",
            "secrets.other.file: required: lamina's Compose secrets come from files",
            "secrets.bad key: the store cannot hold it: invalid secret name 'shop_bad key': it "
            "must match [a-zA-Z0-9][a-zA-Z0-9_.-]* (at most 128 characters)",
            "services.api.network_mode: cannot be combined with networks",
            "services.web: needs image or build",
            "services.web.networks[0]: undefined network 'front'",
            "services.web.secrets[0]: undefined secret 'token'",
        ]
    )


# -- interpolation


LOOKUP = chain({"SET": "value", "EMPTY": ""})


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("$SET", "value"),
        ("${SET}", "value"),
        ("pre-${SET}-post", "pre-value-post"),
        ("$UNSET", ""),
        ("${UNSET:-default}", "default"),
        ("${EMPTY:-default}", "default"),
        ("${UNSET-default}", "default"),
        ("${EMPTY-default}", ""),
        ("${SET:-default}", "value"),
        ("${SET:+other}", "other"),
        ("${EMPTY:+other}", ""),
        ("${EMPTY+other}", "other"),
        ("${UNSET+other}", ""),
        ("${UNSET:-${SET}-nested}", "value-nested"),
        ("$$SET", "$SET"),
        ("cost: $$5", "cost: $5"),
        ("${SET?required}", "value"),
    ],
)
def test_interpolation(template: str, expected: str) -> None:
    assert interpolate(template, LOOKUP) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("${UNSET:?please set UNSET}", "UNSET: please set UNSET"),
        ("${EMPTY:?must not be empty}", "EMPTY: must not be empty"),
        ("${UNSET?}", "UNSET: the variable UNSET is required"),
        ("${SET", "'${' not closed"),
        ("${}", "invalid interpolation format: '${}'"),
        ("${SET:x}", "invalid interpolation format: '${SET:x}'"),
        ("$5", "a '$' starts a variable; write '$$' for a literal '$'"),
    ],
)
def test_interpolation_errors(template: str, message: str) -> None:
    with pytest.raises(InterpolationError) as info:
        interpolate(template, LOOKUP)
    assert message in str(info.value)
    assert interpolate("${EMPTY?fine when set}", LOOKUP) == ""


def test_interpolation_in_the_file_with_dotenv(tmp_path: Path) -> None:
    write(tmp_path / "shop", "TAG=1.36\nPORT=8080\nWHO=dotenv\n", ".env")
    spec = load(
        tmp_path,
        """\
        services:
          web:
            image: "busybox:${TAG}"
            ports: ["${PORT}:80"]
            environment: {WHO: $WHO, LITERAL: "$$HOME", DEFAULT: "${NOPE:-d}"}
            x-ignored: ${NOT_CLOSED
        """,
        {"WHO": "environ"},  # the environment wins over .env
    )
    web = spec.services["web"]
    assert web.image.name == "busybox:1.36"
    assert web.port_mappings[0].host_port == 8080
    assert web.env == {"WHO": "environ", "LITERAL": "$HOME", "DEFAULT": "d"}


def test_interpolation_errors_name_the_path(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        "services:\n  web:\n    image: ${IMAGE:?set IMAGE to the image to run}\n"
        "    command: [echo, '${BROKEN']\n",
    ) == [
        "services.web.image: IMAGE: set IMAGE to the image to run",
        "services.web.command[1]: invalid interpolation format in '${BROKEN': '${' not closed",
    ]


def test_env_file_format() -> None:
    values, bad = parse_env_file(
        textwrap.dedent(
            """\
            # a comment
            PLAIN=value
            export EXPORTED=yes
            SPACED = padded value   # trailing comment
            HASH=a#b
            SINGLE='no $PLAIN expansion'
            DOUBLE="line1\\nline2 $PLAIN"
            MULTI="first
            second"
            EMPTY=
            BARE
            1BAD=x
            """
        ),
        chain({"PLAIN": "from-environ"}),
    )
    assert values == {
        "PLAIN": "value",
        "EXPORTED": "yes",
        "SPACED": "padded value",
        "HASH": "a#b",
        "SINGLE": "no $PLAIN expansion",
        "DOUBLE": "line1\nline2 value",  # the file's own earlier value
        "MULTI": "first\nsecond",
        "EMPTY": "",
        "BARE": None,
    }
    assert bad == [(12, "'1BAD' is not a variable name")]


def test_env_files_of_a_service(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    write(shop, "A=1\nB=1\nBARE\n", "one.env")
    write(shop, "B=2\n", "conf/two.env")
    spec = load(
        tmp_path,
        """\
        services:
          web:
            image: x
            env_file: [one.env, ./conf/two.env, {path: absent.env, required: false}]
        """,
        {"BARE": "from-environ"},
    )
    assert spec.services["web"].env == {"A": "1", "B": "2", "BARE": "from-environ"}
    lines = problems(tmp_path, "services:\n  web: {image: x, env_file: absent.env}\n")
    assert lines == [f"services.web.env_file: {shop / 'absent.env'}: no such file"]


def test_environment_list_and_bare_names(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        """\
        services:
          web:
            image: x
            environment: [A=1, B=, FROM_HOST, ABSENT, C=x=y]
        """,
        {"FROM_HOST": "h"},
    )
    # a bare name takes the deployer's value and is left out when that is unset
    assert spec.services["web"].env == {"A": "1", "B": "", "FROM_HOST": "h", "C": "x=y"}


# -- the oracle: docker-compose 1.29 (Debian 12) reads the same file


ORACLE_FILE = """\
services:
  web:
    image: "busybox:${TAG:-1.36}"
    command: sh -c 'httpd -f -p "$$PORT"'
    entrypoint: ["/bin/env", "--"]
    working_dir: /srv
    environment:
      - GREETING=${GREETING:-hello world}
      - FROM_DOTENV
    env_file: [web.env]
    ports: ["${PORT:-8080}:80", "127.0.0.1:9000-9001:9000-9001/udp", "53/udp"]
    volumes: ["./html:/srv/html:ro", "data:/data", "/cache"]
    user: "1000"
    stop_grace_period: 1m30s
    depends_on:
      db: {condition: service_healthy}
  db:
    image: busybox
    healthcheck: {test: ["CMD-SHELL", "true"], interval: 5s, retries: 2}
volumes:
  data: {}
"""


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose 1.29 absent")
def test_docker_compose_reads_the_same_file_the_same_way(tmp_path: Path) -> None:
    project = tmp_path / "oracle"
    compose = write(project, ORACLE_FILE)
    write(project, "FROM_DOTENV=dotenv\nTAG=1.35\n", ".env")
    write(project, "WEB=1\nGREETING=from-file\n", "web.env")
    environ = {"PORT": "8081", "GREETING": "hi"}
    run_env = {"PATH": os.environ["PATH"], "COMPOSE_API_VERSION": "1.38", **environ}
    out = subprocess.run(
        ["docker-compose", "-f", str(compose), "config"],
        cwd=project,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    oracle = yaml.safe_load(out)["services"]
    spec = load_spec(compose, environ)
    web, db = spec.services["web"], spec.services["db"]

    assert web.image.name == oracle["web"]["image"] == "busybox:1.35"
    assert web.command.args == ["sh", "-c", 'httpd -f -p "$PORT"']
    assert oracle["web"]["command"] == "sh -c 'httpd -f -p \"$$PORT\"'"  # 1.29 re-escapes $
    assert web.command.entrypoint == oracle["web"]["entrypoint"]
    assert web.command.workdir == oracle["web"]["working_dir"]
    assert web.env == {k: str(v) for k, v in oracle["web"]["environment"].items()}
    assert web.user == oracle["web"]["user"]

    def oracle_port(entry: Any) -> tuple[Any, ...]:
        if isinstance(entry, dict):  # 1.29 writes a plain mapping in the long form
            return (entry.get("published"), entry["target"], entry.get("protocol", "tcp"), None)
        text, _, proto = entry.partition("/")
        parts = text.split(":")
        host_ip = parts[0] if len(parts) == 3 else None
        host = int(parts[-2]) if len(parts) > 1 and parts[-2] else None
        return (host, int(parts[-1]), proto or "tcp", host_ip)

    ours = [(p.host_port, p.container_port, p.protocol, p.host_ip) for p in web.port_mappings]
    assert ours == [oracle_port(p) for p in oracle["web"]["ports"]]

    def oracle_volume(entry: str) -> tuple[Any, ...]:
        parts = entry.split(":")
        if len(parts) == 1:
            return ("anonymous", None, parts[0], False)
        kind = "bind" if parts[0].startswith("/") else "named"
        return (kind, parts[0], parts[1], parts[2:] == ["ro"])

    def our_volume(storage: Any) -> tuple[Any, ...]:
        source = getattr(storage, "source", None) or getattr(storage, "name", None)
        return (storage.type, source, storage.target, getattr(storage, "readonly", False))

    assert [our_volume(v) for v in web.storage] == [
        oracle_volume(v) for v in oracle["web"]["volumes"]
    ]
    assert web.stop_grace_period == 90.0 and oracle["web"]["stop_grace_period"] == "1m30s"
    assert [(d.service, d.condition) for d in web.depends] == [
        (name, c["condition"].removeprefix("service_"))
        for name, c in oracle["web"]["depends_on"].items()
    ]
    assert db.health is not None
    assert db.health.check == CommandCheck(command=oracle["db"]["healthcheck"]["test"][1])
    assert (db.health.interval, db.health.retries) == (5.0, oracle["db"]["healthcheck"]["retries"])


# -- hostile input


def test_hostile_env_files_are_contained(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    (shop / "zero.env").parent.mkdir(parents=True)
    (shop / "zero.env").symlink_to("/dev/zero")
    lines = problems(tmp_path, "services:\n  web: {image: x, env_file: zero.env}\n")
    assert lines == [f"services.web.env_file: {shop / 'zero.env'}: cannot read: not a regular file"]
    # each line doubles the value: 2**40 characters if nothing stopped it
    write(shop, "A=x\n" + "A=$A$A\n" * 40, ".env")
    lines = problems(tmp_path, "services:\n  web: {image: x}\n")
    assert lines == [f"{shop / '.env'}:22: the value exceeds 1048576 characters"]


def test_hostile_interpolation_is_contained(tmp_path: Path) -> None:
    # each level scans the rest again: 900 levels of a megabyte would take minutes
    nested = "${A:-" * 900 + "x" * 1_000_000 + "}" * 900
    started = time.monotonic()
    (line,) = problems(tmp_path, f"services:\n  web: {{image: '{nested}'}}\n")
    assert line == (
        "services.web.image: invalid interpolation format: nested more than 16 levels deep"
    )
    assert time.monotonic() - started < 20
    big = "x" * 1_000_000
    refs = ", ".join(["$BIG"] * 20)
    (line,) = problems(
        tmp_path, f"services:\n  web: {{image: x, command: [{refs}]}}\n", {"BIG": big}
    )
    assert (
        line
        == "services.web.command[16]: the file's values exceed 16777216 characters interpolated"
    )


def test_a_huge_port_range_is_refused(tmp_path: Path) -> None:
    (line,) = problems(tmp_path, "services:\n  web: {image: x, expose: ['1-65535']}\n")
    assert line == "services.web.expose[0]: port range '1-65535' too large: at most 4096 ports"


def test_a_host_port_is_published_once(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        """\
        services:
          web: {image: x, ports: ["8080:80"], deploy: {replicas: 2}}
          api: {image: x, ports: ["8080:8080", "127.0.0.1:9000:9000", "9000:9000/udp"]}
          one: {image: x, ports: ["127.0.0.1:9000:80", "127.0.0.2:9000:81", "9001:80"]}
          two: {image: x, ports: ["127.0.0.3:9001:80", "127.0.0.3:9002:80", "9002:80/udp"]}
          many: {image: x, ports: ["80"], deploy: {replicas: 3}}
        """,
    )
    assert lines == [
        "services.web.ports[0]: host port 8080 can be published by one replica only, and "
        "the service starts 2",
        "services.api.ports[0]: host port 8080/tcp is published by service web too",
        "services.one.ports[0]: host port 9000/tcp is published by service api too",
        "services.two.ports[0]: host port 9001/tcp is published by service one too",
    ]


def test_depends_on_restart_is_refused(tmp_path: Path) -> None:
    text = "services:\n  db: {image: x}\n  web: {image: x, depends_on: {db: {restart: %s}}}\n"
    assert load(tmp_path, text % "false").services["web"].depends[0].service == "db"
    assert problems(tmp_path, text % "true") == [
        "services.web.depends_on.db.restart: restarting a service with its dependency is not "
        "supported"
    ]


ORACLE_TEMPLATES = [
    "$SET",
    "${SET}",
    "pre-${SET}-post",
    "$UNSET",
    "${UNSET:-default}",
    "${EMPTY:-default}",
    "${UNSET-default}",
    "${EMPTY-default}",
    "${SET:-default}",
    "$$SET",
    "x$${SET}y",
    "${SET?required}",
    "${EMPTY?only when unset}",
]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose 1.29 absent")
def test_docker_compose_interpolates_the_same(tmp_path: Path) -> None:
    """The rules docker-compose 1.29 has (it lacks ${VAR:+x} and nesting, which
    Compose 2 added and test_interpolation covers)."""
    environment = {f"V{i}": template for i, template in enumerate(ORACLE_TEMPLATES)}
    compose = write(
        tmp_path / "oracle",
        yaml.safe_dump({"services": {"web": {"image": "busybox", "environment": environment}}}),
    )
    environ = {"SET": "value", "EMPTY": ""}
    out = subprocess.run(
        ["docker-compose", "-f", str(compose), "config"],
        env={"PATH": os.environ["PATH"], "COMPOSE_API_VERSION": "1.38", **environ},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    oracle = yaml.safe_load(out)["services"]["web"]["environment"]
    ours = load_spec(compose, environ).services["web"].env
    # 1.29 writes a '$' of the result as '$$' again
    assert ours == {name: str(value).replace("$$", "$") for name, value in oracle.items()}


def test_ports_of_a_file_are_bounded(tmp_path: Path) -> None:
    ranges = ", ".join(f"'{1 + 4000 * i}-{4000 * (i + 1)}'" for i in range(16))
    services = "".join(f"  s{n}: {{image: x, expose: [{ranges}]}}\n" for n in range(2))
    lines = problems(tmp_path, "services:\n" + services)
    assert lines == [
        "services.s1.expose: too many ports: more than 65536 in the file, ranges expanded"
    ]


def test_an_unterminated_quote_in_a_large_env_file_is_quick(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    write(shop, 'A="never closed\n' + "x" * 10 + "\n" * 100_000, ".env")
    started = time.monotonic()
    assert problems(tmp_path, "services:\n  web: {image: x}\n") == [
        f'{shop / ".env"}:1: unterminated " quote'
    ]
    assert time.monotonic() - started < 10
    values, bad = parse_env_file('A="one\\"\ntwo" B\nC=3\n', chain({}))
    assert values == {"A": 'one"\ntwo', "C": "3"} and bad == []
