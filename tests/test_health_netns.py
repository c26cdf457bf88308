"""TCP and HTTP health checks (lamina's ``["TCP", PORT]`` and ``["HTTP", URL, STATUS]``
tests, what deployments' ``tcp`` and ``http`` checks become), with real containers:
made from inside the container's network namespace by the health runner (the image
needs no tool; a server on the host's loopback does not count), through the states
starting -> healthy -> unhealthy -> healthy as a server in the container (busybox
``nc -ll -e true``, ``httpd -f``) stops and starts, with ``State.Health``'s log, ``(healthy)``
in ``ps`` and ``health_status`` events as the command checks have them. A container
on ``--network none`` is probed in its workload's namespace, one on a bridge network
in its run's. A malformed test is one clear error, with nothing created.

The containers are created through the engine (what the deployments' controller
does: the CLI has no flag for these kinds), then started and observed with the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from leak_check import assert_clean, health_runners
from runtime_fixtures import (
    IMAGE_REF,
    cli_image_root,
    lamina_ok,
    remove_all_containers,
    until,
)

MS = 1_000_000
PORT = 8080


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    r = cli_image_root(tmp_path_factory, "health-netns")
    yield r
    remove_all_containers(r)


@pytest.fixture(autouse=True)
def clean(root: Path) -> Iterator[None]:
    yield
    ids = set(lamina_ok(root, "ps", "-a", "-q", "--no-trunc").split())
    remove_all_containers(root)
    until(lambda: not health_runners(root), 20)
    assert_clean(root, ids)


def create_checked(
    root: Path, name: str, test: list[str], *cmd: str, network: str = "", isolation: str = "process"
) -> str:
    """A container with the check ``test`` (200 ms interval, 2 retries, a start period
    long enough that its first failures leave it starting), made by the engine."""
    from lamina.engine import open_engine
    from lamina.engine._options import RunOptions, prepare_run

    with open_engine(root) as engine:
        opts = RunOptions(name=name, network=network or None, isolation=isolation)
        config, _ = prepare_run(engine, opts, image=IMAGE_REF, command=list(cmd))
        check = {"Test": test, "Interval": 200 * MS, "Timeout": 1000 * MS, "Retries": 2,
                 "StartPeriod": 60_000 * MS, "StartInterval": 200 * MS}  # fmt: skip
        return engine.create(dataclasses.replace(config, healthcheck=check)).id


def health(root: Path, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(lamina_ok(root, "inspect", name))[0]["State"]["Health"]
    return found


def status(root: Path, name: str) -> str:
    return str(health(root, name)["Status"])


def last_output(root: Path, name: str) -> str:
    log = health(root, name)["Log"]
    return str(log[-1]["Output"]) if log else ""


def ps_status(root: Path, name: str) -> str:
    return lamina_ok(root, "ps", "--filter", f"name=^{name}$", "--format",
                     "{{.Status}}").strip()  # fmt: skip


def actions(root: Path, since: float, name: str) -> list[str]:
    out = lamina_ok(root, "events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
                    "--filter", f"container={name}", "--format", "{{json .}}")  # fmt: skip
    return [json.loads(line)["Action"] for line in out.splitlines()]


def cycle(root: Path, name: str, serve: list[str], stop: list[str], up: str, down: str) -> None:
    """Of a started container: starting (nothing serves: ``down`` in the log) ->
    healthy once ``serve`` runs in the container (``up``) -> unhealthy after ``stop``
    -> healthy with ``serve`` again; the events and ps agree."""
    since = time.time()
    until(lambda: len(health(root, name)["Log"]) >= 2 and last_output(root, name) == down, 20)
    h = health(root, name)
    assert h["Status"] == "starting" and h["FailingStreak"] == 0, h
    assert {e["ExitCode"] for e in h["Log"]} == {1}
    assert h["Log"][-1]["Output"] == down
    assert ps_status(root, name).endswith("(health: starting)")

    lamina_ok(root, "exec", "-d", name, *serve)
    until(lambda: status(root, name) == "healthy", 20)
    h = health(root, name)
    assert h["Log"][-1] == {**h["Log"][-1], "ExitCode": 0, "Output": up}
    assert ps_status(root, name).endswith("(healthy)")

    lamina_ok(root, "exec", name, *stop)
    until(lambda: status(root, name) == "unhealthy", 20)
    h = health(root, name)
    assert h["FailingStreak"] >= 2 and h["Log"][-1]["ExitCode"] == 1
    assert h["Log"][-1]["Output"] == down
    assert ps_status(root, name).endswith("(unhealthy)")

    lamina_ok(root, "exec", "-d", name, *serve)
    until(lambda: status(root, name) == "healthy", 20)
    assert health(root, name)["FailingStreak"] == 0
    seen = actions(root, since, name)
    assert [a for a in seen if a.startswith("health_status")] == [
        "health_status: healthy", "health_status: unhealthy", "health_status: healthy"
    ]  # fmt: skip
    # No check ran a process in the container: the only execs are the test's three.
    execs = [a for a in seen if a.startswith("exec_create")]
    assert execs == [f"exec_create: {' '.join(argv)}" for argv in (serve, stop, serve)]


def test_tcp_check_in_the_workloads_namespace(root: Path) -> None:
    """``--network none``: the namespace is the workload's own (/proc/PID/ns/net), which
    has only its loopback; a listener on the host's loopback at the same port does
    not make it healthy."""
    with socket.socket() as host_listener:
        host_listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            host_listener.bind(("127.0.0.1", PORT))
            host_listener.listen()
        except OSError:
            pass  # taken by someone else: it stands for the host's listener all the same
        create_checked(root, "tcpweb", ["TCP", str(PORT)], "sleep", "300", network="none")
        lamina_ok(root, "start", "tcpweb")
        cycle(
            root, "tcpweb", ["nc", "-ll", "-p", str(PORT), "-e", "true"], ["killall", "nc"],
            up=f"connect 127.0.0.1:{PORT}: ok",
            down=f"connect 127.0.0.1:{PORT}: connection refused",
        )  # fmt: skip


def test_http_check_on_a_bridge_network(root: Path) -> None:
    """The default bridge network: the run's namespace (``<root>/netns/<id>``); the
    status is compared with the one expected (a 404 fails a check expecting 200)."""
    url = f"http://localhost:{PORT}/healthz"
    create_checked(root, "httpweb", ["HTTP", url, "200"], "sh", "-c",
                   "mkdir -p /www && sleep 300")  # fmt: skip
    serve = ["httpd", "-f", "-p", str(PORT), "-h", "/www"]
    down = f"connect 127.0.0.1:{PORT}: connection refused"
    lamina_ok(root, "start", "httpweb")
    until(lambda: last_output(root, "httpweb") == down, 20)
    # Served but without the page: HTTP 404, not what is expected.
    lamina_ok(root, "exec", "-d", "httpweb", *serve)
    until(lambda: last_output(root, "httpweb") == "HTTP 404", 20)
    assert status(root, "httpweb") == "starting"
    lamina_ok(root, "exec", "httpweb", "sh", "-c", "touch /www/healthz; killall httpd")
    cycle(root, "httpweb", serve, ["killall", "httpd"], up="HTTP 200", down=down)


@pytest.mark.skipif(
    shutil.which("mkfs.erofs") is None or shutil.which("qemu-system-x86_64") is None,
    reason="VM containers need erofs-utils and QEMU",
)
def test_tcp_check_of_a_vm_container_from_the_host(root: Path) -> None:
    """A VM's workload has its own kernel: the check connects from the host to its
    address on its bridge network."""
    create_checked(root, "vmweb", ["TCP", str(PORT)], "sleep", "300", isolation="vm")
    lamina_ok(root, "start", "vmweb")
    ip = json.loads(lamina_ok(root, "inspect", "vmweb"))[0]["NetworkSettings"]["IPAddress"]
    cycle(
        root, "vmweb", ["nc", "-ll", "-p", str(PORT), "-e", "true"], ["killall", "nc"],
        up=f"connect {ip}:{PORT}: ok", down=f"connect {ip}:{PORT}: connection refused",
    )  # fmt: skip


def test_malformed_tests_are_one_clear_error(root: Path) -> None:
    from lamina.engine._health import InvalidHealthcheck

    cases = {
        ("TCP",): 'Healthcheck TCP test must be ["TCP", PORT] with PORT from 1 to 65535',
        ("TCP", "0"): 'Healthcheck TCP test must be ["TCP", PORT] with PORT from 1 to 65535',
        ("TCP", "http"): 'Healthcheck TCP test must be ["TCP", PORT]',
        ("TCP", "80", "81"): 'Healthcheck TCP test must be ["TCP", PORT]',
        ("HTTP",): 'Healthcheck HTTP test must be ["HTTP", URL] or ["HTTP", URL, STATUS]',
        ("HTTP", "ftp://localhost/"): "Healthcheck HTTP test: URL 'ftp://localhost/' must "
        "start with http://",
        ("HTTP", "http://web.internal/"): "Healthcheck HTTP test: URL 'http://web.internal/' "
        "must name localhost or an IP address",
        ("HTTP", "http://localhost:99999/"): "Healthcheck HTTP test: URL "
        "'http://localhost:99999/' has an invalid port",
        ("HTTP", "http://localhost/", "ok"): "Healthcheck HTTP test: expected status 'ok' "
        "must be a number from 100 to 599",
    }  # fmt: skip
    for test, message in cases.items():
        with pytest.raises(InvalidHealthcheck) as caught:
            create_checked(root, "bad", list(test), "true")
        assert str(caught.value).startswith(message), (test, str(caught.value))
        assert "\n" not in str(caught.value)
    assert lamina_ok(root, "ps", "-a", "-q") == ""
