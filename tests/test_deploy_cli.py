"""The deployment commands end to end: ``lamina deploy|down|validate|deployment|service|
job|secret`` on a real root, through the root's own daemon (started in the background
by the first command that needs it, as a user gets it), real containers, networks and
health checks."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from leak_check import assert_clean, network_leaks
from runtime_fixtures import CLI, IMAGE_REF, cli_image_root, error_line, until

pytestmark = pytest.mark.timeout(300)


def lamina(root: Path, *args: str, input: str | None = None, cwd: Path | None = None,
           env: dict[str, str] | None = None,
           timeout: float = 180) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``lamina --root ROOT ARGS`` with no LAMINA_HOST: deployment commands use the
    root's own daemon."""
    base = {k: v for k, v in os.environ.items() if k != "LAMINA_HOST"}
    return subprocess.run([*CLI, "--root", str(root), *args], capture_output=True, text=True,
                          input=input, stdin=None if input is not None else subprocess.DEVNULL,
                          cwd=cwd, env={**base, **(env or {})}, timeout=timeout)  # fmt: skip


def ok(root: Path, *args: str, **kw: object) -> str:
    r = lamina(root, *args, **kw)  # type: ignore[arg-type]
    assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
    return r.stdout


def daemon_pid(root: Path) -> int | None:
    """The pid of the daemon serving ``root`` (its daemon.json), if one is alive."""
    try:
        pid = int(json.loads((root / "daemon.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def stop_daemon(root: Path) -> None:
    pid = daemon_pid(root)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    until(lambda: daemon_pid(root) is None, 30)


def api(root: Path) -> httpx.Client:
    transport = httpx.HTTPTransport(uds=str(root / "lamina.sock"))
    return httpx.Client(transport=transport, base_url="http://lamina", timeout=60)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = cli_image_root(tmp_path_factory, "deploy-cli")
    try:
        yield root
    finally:
        stop_daemon(root)


# -- the root's own daemon -------------------------------------------------------------------


def test_the_roots_daemon_is_started_for_deployment_commands_and_again_after_a_kill(
    root: Path,
) -> None:
    stop_daemon(root)
    assert ok(root, "deployment", "ls").split() == ["NAME", "SERVICES", "READY", "STATUS"]
    first = daemon_pid(root)
    assert first is not None, "a daemon serves the root after the command"
    assert "serving" in (root / "daemon.log").read_text()
    os.kill(first, signal.SIGKILL)
    until(lambda: daemon_pid(root) is None, 10)
    assert ok(root, "deployment", "ls", "-q") == ""
    second = daemon_pid(root)
    assert second is not None and second != first
    # A third command uses the running one.
    ok(root, "secret", "ls")
    assert daemon_pid(root) == second


# -- secrets ---------------------------------------------------------------------------------


def test_secret_create_ls_rm_never_shows_the_value(root: Path, tmp_path: Path) -> None:
    value = "s3cret-value-never-printed"
    ok(root, "secret", "create", "db-pass", "-", input=value)
    (tmp_path / "token").write_text("another-hidden-value\n")
    assert ok(root, "secret", "create", "api.token", str(tmp_path / "token")) == "api.token\n"
    listing = ok(root, "secret", "ls")
    assert listing.splitlines()[0].split() == ["NAME", "SIZE", "CREATED"]
    rows = {line.split()[0]: line.split()[1] for line in listing.splitlines()[1:]}
    assert rows == {"api.token": "21", "db-pass": str(len(value))}
    as_json = [json.loads(line) for line in ok(root, "secret", "ls", "--format", "json").splitlines()]
    assert {r["Name"] for r in as_json} == {"api.token", "db-pass"}
    everything = listing + json.dumps(as_json) + api(root).get("/v1/secrets").text
    assert value not in everything and "another-hidden-value" not in everything
    # At rest: encrypted.
    for f in (root / "secrets").rglob("*"):
        if f.is_file():
            assert value.encode() not in f.read_bytes()

    again = lamina(root, "secret", "create", "db-pass", "-", input="x")
    assert again.returncode == 1 and "db-pass" in error_line(again.stderr)
    assert value not in again.stderr
    bad = lamina(root, "secret", "create", "../etc", "-", input="x")
    assert bad.returncode == 1 and "invalid secret name" in error_line(bad.stderr)

    assert ok(root, "secret", "rm", "db-pass", "api.token") == "db-pass\napi.token\n"
    gone = lamina(root, "secret", "rm", "db-pass")
    assert gone.returncode == 1 and "db-pass" in error_line(gone.stderr)
    assert ok(root, "secret", "ls", "-q") == ""


def test_secret_routes_refuse_bad_bodies_in_one_line(root: Path) -> None:
    ok(root, "secret", "ls")  # the daemon runs
    with api(root) as c:
        r = c.post("/v1/secrets", json={"name": "a", "data": "%%%"})
        assert (r.status_code, r.json()) == (400, {"message": "invalid field data: not base64"})
        r = c.post("/v1/secrets", json={"name": "a", "data": "eA==", "extra": 1})
        assert r.status_code == 400 and "extra" in r.json()["message"]
        big = base64.b64encode(b"x" * 70000).decode()
        r = c.post("/v1/secrets", json={"name": "big", "data": big})
        assert r.status_code == 400 and "too large" in r.json()["message"]
        assert c.get("/v1/secrets").json() == []


def test_deployment_routes_validate_before_acting(root: Path) -> None:
    ok(root, "deployment", "ls")
    with api(root) as c:
        r = c.post("/v1/deployments", json={"deployment": "web", "services": {"a": {}}})
        assert r.status_code == 400
        assert r.json()["message"].startswith("invalid field services.a.image")
        r = c.post("/v1/deployments", content=b"{not json")
        assert r.status_code == 400 and "not JSON" in r.json()["message"]
        r = c.post("/v1/deployments/nope/services/web/scale", json={"replicas": -1})
        assert r.status_code == 400 and "replicas" in r.json()["message"]
        r = c.get("/v1/deployments/nope/status")
        assert r.status_code == 404 and "nope" in r.json()["message"]
