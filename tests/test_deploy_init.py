"""Init steps (``lamina.deploy._init``) with real containers on a real network made with
the engine's networks API: ``init.wait_tcp``/``init.wait_http`` wait for a peer that
comes up late, found by the name the network's aardvark-dns gives it; ``init.run``
runs in a container of the service's config (its env, its mounts, on the network),
never on the host, its output in the failure message, and nothing of it is left,
also when the process running it is killed; ``retry``, ``timeout`` and
``on_failure`` fail|warn|continue."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from leak_check import assert_clean
from runtime_fixtures import IMAGE_REF, NEEDS_NETAVARK, cli_image_root, remove_all_containers, until

from lamina.deploy._init import InitFailed, run_init_steps, step_errors
from lamina.deploy._model import InitStep
from lamina.engine import ContainerConfig, Engine, open_engine
from lamina.engine._options import RunOptions, prepare_run

pytestmark = [
    pytest.mark.timeout(240),
    NEEDS_NETAVARK,
]

NETWORK = "initnet"
# The peer serves only after a moment, so every wait has to wait.
LATE_SERVER = "sleep 1.5; mkdir -p /www; echo ok > /www/index.html; exec httpd -f -p 8080 -h /www"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    r = cli_image_root(tmp_path_factory, "init")
    with open_engine(r) as engine:
        engine.networks.create(NETWORK)
    yield r
    remove_all_containers(r)
    with open_engine(r) as engine:
        engine.networks.remove(NETWORK)
    assert_clean(r, set())  # network leaks included


@pytest.fixture
def engine(root: Path) -> Iterator[Engine]:
    with open_engine(root) as eng:
        yield eng
    remove_all_containers(root)


def template(engine: Engine, data: Path | None = None) -> ContainerConfig:
    """The service's replica config as the controller makes it."""
    opts = RunOptions(
        network=NETWORK,
        network_aliases=["web"],
        env=["GREETING=hello from the service"],
        volumes=[f"{data}:/data"] if data else (),
    )
    config, _warnings = prepare_run(engine, opts, image=IMAGE_REF, command=["sleep", "1000"])
    return config


def late_peer(engine: Engine) -> None:
    """``initnet-db-1`` (alias ``db``) answering HTTP on 8080 after a moment."""
    opts = RunOptions(name="initnet-db-1", network=NETWORK, network_aliases=["db"])
    container, _ = engine.create_from_options(
        opts, image=IMAGE_REF, command=["sh", "-c", LATE_SERVER]
    )
    engine.start(container.id)


def step(uses: str, with_: dict[str, Any], **more: Any) -> InitStep:
    return InitStep.model_validate({"id": more.pop("id", uses.split(".")[1]), "uses": uses,
                                    "with": with_, **more})  # fmt: skip


def run(engine: Engine, *steps: InitStep, data: Path | None = None) -> list[str]:
    said: list[str] = []
    warnings = run_init_steps(engine, "initnet", "web", steps, template(engine, data), NETWORK,
                              said.append)  # fmt: skip
    assert said == warnings
    return warnings


def containers(engine: Engine) -> list[str]:
    return sorted(c.name for c in engine.list(all=True))


def test_waits_resolve_names_on_the_network_and_wait_for_a_late_peer(engine: Engine) -> None:
    late_peer(engine)
    started = time.monotonic()
    assert run(engine, step("init.wait_tcp", {"host": "db", "port": 8080}, timeout="30s")) == []
    assert time.monotonic() - started > 1.0  # it did wait for the server
    assert (
        run(
            engine,
            step("init.wait_http", {"url": "http://db:8080/"}),
            step("init.wait_http", {"url": "http://initnet-db-1:8080/nope", "expect_status": 404}),
            step("init.wait_tcp", {"host": "initnet-db-1", "port": 8080}, retry=0),
        )
        == []
    )


def test_failed_waits_fail_warn_or_continue(engine: Engine) -> None:
    late_peer(engine)
    run(engine, step("init.wait_tcp", {"host": "db", "port": 8080}))
    wrong = step("init.wait_http", {"url": "http://db:8080/", "expect_status": 201},
                 id="ready", timeout="1s")  # fmt: skip
    with pytest.raises(InitFailed) as e:
        run(engine, wrong)
    assert str(e.value).startswith("init step ready failed: GET http://db:8080/ answered 200")
    assert e.value.step_id == "ready" and "\n" not in str(e.value)
    with pytest.raises(InitFailed, match="cannot resolve nosuch on network initnet"):
        run(engine, step("init.wait_tcp", {"host": "nosuch", "port": 1}, retry=0))
    with pytest.raises(InitFailed, match=r"cannot connect to db:8081 \(10\."):
        run(engine, step("init.wait_tcp", {"host": "db", "port": 8081}, retry=1))
    closed = {"host": "db", "port": 8081}
    warned = run(
        engine,
        step("init.wait_tcp", closed, id="a", retry=0, on_failure="warn"),
        step("init.wait_tcp", closed, id="b", retry=0, on_failure="continue"),
        step("init.wait_tcp", {"host": "db", "port": 8080}, id="c", on_failure="warn"),
    )
    assert len(warned) == 1 and warned[0].startswith("init step a of initnet/web failed: ")
    # The steps after a warned or continued one still run: a failing one fails.
    with pytest.raises(InitFailed, match="init step last failed"):
        run(engine, step("init.wait_tcp", closed, retry=0, on_failure="continue"),
            step("init.wait_tcp", closed, id="last", retry=0))  # fmt: skip


def test_run_is_a_container_of_the_service_with_its_env_mounts_and_network(
    engine: Engine, tmp_path: Path
) -> None:
    late_peer(engine)
    fetch = "echo $GREETING > /data/greeting; wget -q -O /data/page http://db:8080/"
    assert run(engine, step("init.run", {"command": fetch}, timeout="30s", retry=20),
               data=tmp_path) == []  # fmt: skip
    assert (tmp_path / "greeting").read_text() == "hello from the service\n"
    assert (tmp_path / "page").read_text() == "ok\n"
    # args: executed as given, whatever the image's entrypoint.
    run(engine, step("init.run", {"args": ["touch", "/data/by-args"]}), data=tmp_path)
    assert (tmp_path / "by-args").exists()
    assert containers(engine) == ["initnet-db-1"]  # init containers are gone


def test_run_failure_retry_and_timeout(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(InitFailed) as e:
        run(engine, step("init.run", {"command": "echo first; echo bad thing >&2; exit 4"},
                         id="migrate"))  # fmt: skip
    assert str(e.value) == (
        "init step migrate failed: echo first; echo bad thing >&2; exit 4 exited with code 4: "
        "first | bad thing"
    )
    # Succeeds on the third attempt: retry 2 is enough, retry 1 is not.
    third = "n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; [ $n -ge 3 ]"
    with pytest.raises(InitFailed, match="exited with code 1"):
        run(engine, step("init.run", {"command": third}, retry=1), data=tmp_path)
    assert (tmp_path / "n").read_text() == "2\n"
    (tmp_path / "n").unlink()
    assert run(engine, step("init.run", {"command": third}, retry=2), data=tmp_path) == []
    assert (tmp_path / "n").read_text() == "3\n"
    started = time.monotonic()
    with pytest.raises(InitFailed, match="sleep 100 did not end in time"):
        run(engine, step("init.run", {"command": "sleep 100"}, timeout="1s"))
    assert time.monotonic() - started < 20
    with pytest.raises(InitFailed, match="could not start"):
        run(engine, step("init.run", {"args": ["/no/such/program"]}))
    assert containers(engine) == []


def test_bad_with_is_reported_by_key() -> None:
    assert step_errors(step("init.wait_tcp", {"host": "db"})) == [
        ("with.port", "required for init.wait_tcp: a port 1-65535")
    ]
    assert step_errors(step("init.wait_http", {"url": "ftp://x", "colour": 1})) == [
        ("with.colour", "unknown key"),
        ("with.url", "required for init.wait_http: an http(s) URL"),
    ]
    assert step_errors(step("init.run", {"command": "x", "args": ["y"]})) == [
        ("with", "init.run needs one of command or args")
    ]
    assert step_errors(step("init.run", {"command": "true", "timeout": "soon"}))[0][0] == (
        "with.timeout"
    )
    assert step_errors(step("init.run", {"args": ["true"], "timeout": "2s"})) == []


_KILLED = """
import sys
from pathlib import Path
from lamina.deploy._init import run_init_steps
from lamina.deploy._model import InitStep
from lamina.engine import open_engine
from lamina.engine._options import RunOptions, prepare_run
with open_engine(Path(sys.argv[1])) as engine:
    config, _ = prepare_run(engine, RunOptions(network=sys.argv[2]), image=sys.argv[3],
                            command=["true"])
    step = InitStep.model_validate({"id": "hang", "uses": "init.run",
                                    "with": {"command": "sleep 1000"}})
    run_init_steps(engine, "initnet", "web", [step], config, sys.argv[2])
"""


def test_a_killed_runner_leaves_no_init_container(root: Path, engine: Engine) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(root), NETWORK, IMAGE_REF])
    try:
        until(lambda: any(c.state.status == "running" for c in engine.list(all=True)), 60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The next command of the engine removes what the dead process owned.
    with open_engine(root) as later:
        assert [c.name for c in later.list(all=True)] == []
