"""The deployment commands end to end: ``lamina deploy|down|validate|deployment|service|
job|secret`` on a real root, through the root's own daemon (started in the background
by the first command that needs it, as a user gets it), real containers, networks and
health checks."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from leak_check import assert_clean, network_leaks
from runtime_fixtures import (
    CLI,
    IMAGE_REF,
    cli_image_root,
    error_line,
    remove_all_containers,
    until,
)

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
        remove_all_containers(root)  # what a failed test left: nothing outlives the module
        lamina(root, "network", "prune", "-f")


@pytest.fixture(autouse=True)
def _nothing_deployed_after(root: Path) -> Iterator[None]:
    """A test that failed halfway leaves no deployment to the next."""
    yield
    if daemon_pid(root) is not None:
        for name in lamina(root, "deployment", "ls", "-q").stdout.split():
            lamina(root, "down", "-v", name)


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
    # --host (LAMINA_HOST): that daemon, and none started when it does not answer.
    host = f"unix://{root / 'lamina.sock'}"
    assert ok(root, "--host", host, "deployment", "ls", "-q") == ""
    elsewhere = root.parent / "elsewhere"
    r = lamina(elsewhere, "deployment", "ls", env={"LAMINA_HOST": f"unix://{root}/none.sock"})
    assert r.returncode == 1 and "Cannot connect to the lamina daemon" in error_line(r.stderr)
    assert not (elsewhere / "daemon.log").exists()


def test_commands_starting_the_roots_daemon_at_once_share_one(root: Path) -> None:
    stop_daemon(root)
    env = {k: v for k, v in os.environ.items() if k != "LAMINA_HOST"}
    procs = [subprocess.Popen([*CLI, "--root", str(root), "secret", "ls", "-q"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]  # fmt: skip
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert (proc.returncode, out, err) == (0, "", "")
    pid = daemon_pid(root)
    assert pid is not None
    daemons = [p for p in os.listdir("/proc") if p.isdigit() and _is_daemon_of(int(p), root)]
    assert daemons == [str(pid)]


def _is_daemon_of(pid: int, root: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"daemon" in argv and str(root).encode() in argv and b"lamina.cli.main" in argv


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
    as_json = [json.loads(line)
               for line in ok(root, "secret", "ls", "--format", "json").splitlines()]
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
        # Names that could never be a deployment's go nowhere near the store.
        (root / "deployments" / "x").mkdir(parents=True, exist_ok=True)
        (root / "victim").mkdir(exist_ok=True)
        (root / "victim" / "desired.json").write_text("{}")
        for path in ("/v1/deployments/..%2Fvictim", "/v1/deployments/..%2F..%2Fvictim",
                     "/v1/deployments/..%2Fvictim/services/a/jobs"):  # fmt: skip
            r = c.request("DELETE" if path.count("/") == 3 else "GET", path)
            assert r.status_code == 400, (path, r.text)
            assert "not a valid deployment name" in r.json()["message"]
        assert (root / "victim" / "desired.json").exists()
        r = c.delete("/v1/secrets/..%2Fkey")
        assert r.status_code == 400 and "invalid secret name" in r.json()["message"]
        assert c.get("/v1/deployments").json() == []


# -- files -------------------------------------------------------------------------------------


def _httpd(text: str) -> str:
    """A busybox httpd replica that says it started (its log) and serves ``text``; its
    shell ends on SIGTERM (a PID 1 without a handler ignores it: each stop would wait
    its whole grace period)."""
    return (f'echo "$(hostname) started"; mkdir -p /www && echo {text} > /www/index.html; '
            "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait")  # fmt: skip


HEALTH = """    health:
      start_grace: 0s
      interval: 1s
      timeout: 2s
      retries: 3
      check: {type: http, url: "http://localhost:8080/", expect_status: 200}
"""


def shop_spec(api_replicas: str = "mode: manual") -> str:
    """Three services: db, api (depends on db healthy), web (on api ready)."""
    out = "version: v1\ndeployment: shop\nservices:\n"
    for name, scale, depends in (
        ("db", "mode: fixed\n      replicas: 1", ""),
        ("api", api_replicas, "    depends: [{service: db, condition: healthy, timeout: 60s}]\n"),
        ("web", "mode: fixed\n      replicas: 2",
         "    depends: [{service: api, condition: ready, timeout: 60s}]\n"),
    ):
        out += (f"  {name}:\n    image: {{name: {IMAGE_REF}}}\n"
                f"    command: {{args: [sh, -c, {json.dumps(_httpd(name))}]}}\n"
                f"    scale:\n      {scale}\n{depends}{HEALTH}")  # fmt: skip
    return out


def status_json(root: Path, name: str) -> dict[str, object]:
    return json.loads(ok(root, "deployment", "status", name, "--format", "json"))  # type: ignore[no-any-return]


def services_of(status: dict[str, object]) -> dict[str, dict[str, object]]:
    return {s["name"]: s for s in status["services"]}  # type: ignore[attr-defined,index]


def test_validate_names_every_error_with_its_path(root: Path, tmp_path: Path) -> None:
    good = tmp_path / "shop.yaml"
    good.write_text(shop_spec())
    assert ok(root, "validate", str(good)) == f"{good}: valid (3 services)\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text(shop_spec("mode: fixed\n      replicas: -1").replace(
        "condition: healthy", "condition: sometimes") + "  extra:\n    image: {name: x}\n"
        "    depends: [{service: nowhere}]\n    colour: blue\n")  # fmt: skip
    r = lamina(root, "validate", str(bad))
    assert r.returncode == 1 and r.stdout == ""
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert all(line.startswith(f"lamina: error: {bad}: services.") for line in lines), lines
    text = "\n".join(lines)
    for path in ("services.api.scale.replicas", "services.api.depends[0].condition",
                 "services.extra.colour", "services.extra.depends[0]"):  # fmt: skip
        assert path in text, (path, text)
    assert "'nowhere'" in text
    # deploy of the same file: the same errors, nothing sent or made.
    r = lamina(root, "deploy", str(bad))
    assert r.returncode == 1 and r.stderr.splitlines() == lines
    yaml_error = tmp_path / "broken.yaml"
    yaml_error.write_text("version: v1\ndeployment: x\nservices: [\n")
    r = lamina(root, "validate", str(yaml_error))
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(f"lamina: error: {yaml_error}") and "YAML" in r.stderr
    missing = lamina(root, "validate", str(tmp_path / "none.yaml"))
    assert missing.returncode == 1 and "no such file" in error_line(missing.stderr)


def test_deploy_dry_run_prints_the_plan_and_changes_nothing(root: Path, tmp_path: Path) -> None:
    spec = tmp_path / "shop.yaml"
    spec.write_text(shop_spec())
    out = ok(root, "deploy", "--dry-run", str(spec))
    assert out.splitlines() == ["create network shop", "create service db: 1 replicas",
                                "create service api: 1 replicas",
                                "create service web: 2 replicas"]  # fmt: skip
    assert ok(root, "deployment", "ls", "-q") == ""
    assert ok(root, "ps", "-aq") == ""
    assert "shop" not in ok(root, "network", "ls", "--format", "{{.Name}}").split()


def test_deploy_wait_status_scale_restart_logs_down(root: Path, tmp_path: Path) -> None:
    spec = tmp_path / "shop.yaml"
    spec.write_text(shop_spec())
    r = lamina(root, "deploy", "--wait", "--timeout", "120", str(spec))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:4] == ["create network shop", "create service db: 1 replicas",
                                         "create service api: 1 replicas",
                                         "create service web: 2 replicas"]  # fmt: skip
    assert r.stdout.splitlines()[-1] == "deployment shop: ready"
    status = status_json(root, "shop")
    assert status["state"] == "running"
    services = services_of(status)
    assert {n: (s["ready"], s["desired"], s["health"]) for n, s in services.items()} == {
        "db": (1, 1, "healthy"), "api": (1, 1, "healthy"), "web": (2, 2, "healthy")}
    assert ok(root, "deployment", "ls").splitlines()[1].split() == ["shop", "3", "4/4", "running"]
    assert ok(root, "deployment", "ls", "--format", "{{.Name}}:{{.Ready}}") == "shop:4/4\n"
    assert ok(root, "deployment", "status", "shop", "--format",
              "{{.state}} {{len .services}}") == "running 3\n"  # fmt: skip
    table = ok(root, "deployment", "status", "shop").splitlines()
    assert table[0] == "deployment shop: running"
    assert [line.split() for line in table[1:]] == [
        ["SERVICE", "READY", "HEALTH", "ROLLOUT"], ["api", "1/1", "healthy", "complete"],
        ["db", "1/1", "healthy", "complete"], ["web", "2/2", "healthy", "complete"]]
    events = ok(root, "events", "--since", "5m", "--until", "0s", "--filter", "type=deployment",
                "--format", "{{.Action}} {{.Actor.Attributes.name}}")  # fmt: skip
    assert events.splitlines()[-1] == "create shop", events
    # Dependencies were waited for: db was healthy before api's replica started.
    db = json.loads(ok(root, "inspect", "shop-db-1"))[0]
    api_replica = json.loads(ok(root, "inspect", "shop-api-1"))[0]
    first_pass = min(h["End"] for h in db["State"]["Health"]["Log"] if h["ExitCode"] == 0)
    assert api_replica["State"]["StartedAt"] > first_pass
    ids = set(ok(root, "ps", "-q", "--no-trunc").split())
    assert len(ids) == 4

    # Scale up, then down; the daemon converges.
    assert ok(root, "service", "scale", "shop/api", "3") == "shop/api scaled to 3\n"
    until(lambda: services_of(status_json(root, "shop"))["api"]["ready"] == 3, 60)
    names = sorted(c for c in ok(root, "ps", "--format", "{{.Names}}").split()
                   if c.startswith("shop-api-"))  # fmt: skip
    assert names == ["shop-api-1", "shop-api-2", "shop-api-3"]
    ok(root, "service", "scale", "shop/api", "1")
    until(lambda: [c for c in ok(root, "ps", "--format", "{{.Names}}").split()
                   if c.startswith("shop-api-")] == ["shop-api-1"], 60)  # fmt: skip

    # The merged logs: each replica's line after its name, as Compose prints them.
    logs = sorted(ok(root, "service", "logs", "shop/web").splitlines())
    assert [re.sub(r"[0-9a-f]{12}", "ID", line) for line in logs] == [
        "shop-web-1 | ID started", "shop-web-2 | ID started"]
    assert re.fullmatch(r"[0-9a-f]{12} started\n",
                        ok(root, "service", "logs", "--no-prefix", "shop/db"))  # fmt: skip

    # A rolling restart replaces every replica of web, one at a time.
    before = set(ok(root, "ps", "-q", "--no-trunc", "--filter", "label=lamina.service=web").split())
    ok(root, "service", "restart", "shop/web")

    def web_replaced() -> bool:
        now = set(ok(root, "ps", "-q", "--no-trunc", "--filter",
                      "label=lamina.service=web").split())  # fmt: skip
        web = services_of(status_json(root, "shop"))["web"]
        return not (now & before) and web["ready"] == 2 and web["rollout"] == "complete"

    until(web_replaced, 90)
    ids |= set(ok(root, "ps", "-aq", "--no-trunc").split())

    bad = lamina(root, "service", "scale", "shop/nothing", "2")
    assert bad.returncode == 1 and "nothing" in error_line(bad.stderr)
    bad = lamina(root, "service", "scale", "shop", "2")
    assert bad.returncode == 125 and "DEPLOYMENT/SERVICE" in error_line(bad.stderr)

    replicas = ok(root, "ps", "--format", "{{.Names}}").split()
    assert len(replicas) == 4
    assert set(ok(root, "down", str(spec)).splitlines()) == {*replicas, "network shop"}
    assert ok(root, "deployment", "ls", "-q") == ""
    assert ok(root, "ps", "-aq") == ""
    gone = lamina(root, "deployment", "status", "shop")
    assert gone.returncode == 1 and "shop" in error_line(gone.stderr)
    assert_clean(root, ids)


def test_deploy_with_a_missing_secret_is_one_line_and_leaves_nothing(
    root: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(f"version: v1\ndeployment: needs-secret\nservices:\n  app:\n"
                    f"    image: {{name: {IMAGE_REF}}}\n    command: {{args: [sleep, '600']}}\n"
                    f"    env: {{PASSWORD: '$S:not-there'}}\n")  # fmt: skip
    r = lamina(root, "deploy", str(spec))
    assert r.returncode == 1
    assert "not-there" in error_line(r.stderr)
    assert ok(root, "deployment", "ls", "-q") == ""
    assert ok(root, "ps", "-aq") == ""


COMPOSE = f"""\
name: app
services:
  db:
    image: {IMAGE_REF}
    command: ["sh", "-c", {json.dumps(_httpd("db").replace("$", "$$"))}]
    healthcheck:
      test: ["CMD-SHELL", "wget -q -O /dev/null http://localhost:8080/"]
      interval: 1s
      timeout: 2s
      retries: 3
  web:
    build: ./web
    command: ["sh", "-c", "cat /built; trap 'exit 0' TERM; httpd -f -p 8080 -h / & wait"]
    depends_on:
      db:
        condition: service_healthy
    secrets: [token]
    deploy:
      replicas: 2
secrets:
  token:
    file: ./token.txt
"""


def test_compose_file_built_with_its_secret_and_depends_on_service_healthy(
    root: Path, tmp_path: Path
) -> None:
    project = tmp_path / "app"
    (project / "web").mkdir(parents=True)
    (project / "web" / "Dockerfile").write_text(
        f"FROM {IMAGE_REF}\nRUN echo built-by-lamina > /built\n")  # fmt: skip
    (project / "token.txt").write_text("compose-secret-value")
    (project / "compose.yaml").write_text(COMPOSE)
    assert ok(root, "validate", "compose.yaml", cwd=project) == "compose.yaml: valid (2 services)\n"
    r = lamina(root, "deploy", "--wait", "--timeout", "120", "compose.yaml", cwd=project)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "deployment app: ready"
    services = services_of(status_json(root, "app"))
    assert (services["db"]["ready"], services["web"]["ready"]) == (1, 2)
    # web's image is the one built from ./web; its secret went to the store by name.
    assert "app_token" in ok(root, "secret", "ls", "-q").split()
    until(lambda: "built-by-lamina" in ok(root, "service", "logs", "app/web"))
    # service_healthy: web's replicas started after db's first passing check.
    db = json.loads(ok(root, "inspect", "app-db-1"))[0]
    first_pass = min(h["End"] for h in db["State"]["Health"]["Log"] if h["ExitCode"] == 0)
    for n in (1, 2):
        web = json.loads(ok(root, "inspect", f"app-web-{n}"))[0]
        assert web["State"]["StartedAt"] > first_pass
    ids = set(ok(root, "ps", "-aq", "--no-trunc").split())
    ok(root, "down", "app", "-v")
    ok(root, "secret", "rm", "app_token")
    assert ok(root, "ps", "-aq") == ""
    assert network_leaks(root) == []
    assert_clean(root, ids)


def test_jobs_run_ls_logs_and_inspect_keeps_secret_values_out(root: Path, tmp_path: Path) -> None:
    ok(root, "secret", "create", "job-token", "-", input="job-secret-value")
    spec = tmp_path / "jobs.yaml"
    spec.write_text(f"version: v1\ndeployment: batch\nservices:\n"
                    f"  migrate:\n    rtype: job\n    image: {{name: {IMAGE_REF}}}\n"
                    f"    env: {{TOKEN: '$S:job-token'}}\n"
                    f"    command: {{args: [sh, -c, 'echo migrated ${{#TOKEN}}; exit 3']}}\n")
    ok(root, "deploy", "--wait", "--timeout", "60", str(spec))
    assert ok(root, "job", "ls", "batch/migrate").split() == [
        "RUN", "CONTAINER", "STATUS", "EXIT", "CODE", "STARTED"]  # no run before asked
    r = lamina(root, "job", "run", "--wait", "batch/migrate")
    assert (r.returncode, r.stdout) == (3, "batch-migrate-job-1\n"), r.stderr
    rows = [json.loads(line) for line in
            ok(root, "job", "ls", "--format", "json", "batch/migrate").splitlines()]  # fmt: skip
    assert [(x["ID"], x["Container"], x["Status"], x["ExitCode"]) for x in rows] == [
        ("1", "batch-migrate-job-1", "failed", "3")]
    assert ok(root, "job", "logs", "batch/migrate") == f"migrated {len('job-secret-value')}\n"
    inspected = ok(root, "deployment", "inspect", "batch")
    assert "$S:job-token" in inspected and "job-secret-value" not in inspected
    assert json.loads(inspected)[0]["Name"] == "batch"
    missing = lamina(root, "deployment", "inspect", "batch", "nothing-here")
    assert missing.returncode == 1 and "nothing-here" in error_line(missing.stderr)
    ids = set(ok(root, "ps", "-aq", "--no-trunc").split())
    ok(root, "down", "batch")
    ok(root, "secret", "rm", "job-token")
    assert ok(root, "ps", "-aq") == ""
    assert_clean(root, ids)


def test_service_logs_follow_every_replica_and_their_replacements(
    root: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "tick.yaml"
    spec.write_text(f"version: v1\ndeployment: ticks\nservices:\n"
                    f"  tick:\n    image: {{name: {IMAGE_REF}}}\n"
                    f"    scale: {{mode: fixed, replicas: 2}}\n    command: {{args: [sh, -c, "
                    f"\"trap 'exit 0' TERM; while :; do echo tick $(hostname); sleep 0.2; "
                    f"done\"]}}\n")  # fmt: skip
    ok(root, "deploy", "--wait", "--timeout", "60", str(spec))
    env = {k: v for k, v in os.environ.items() if k != "LAMINA_HOST"}
    follow = subprocess.Popen([*CLI, "--root", str(root), "service", "logs", "-f", "--tail", "0",
                               "ticks/tick"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)  # fmt: skip
    try:
        assert follow.stdout is not None
        lines = follow.stdout

        def hosts_until(count: int) -> dict[str, set[str]]:
            """Each replica's hostnames (its containers) seen, until ``count`` in all."""
            seen: dict[str, set[str]] = {}
            while sum(len(v) for v in seen.values()) < count:
                line = lines.readline()
                m = re.fullmatch(r"(ticks-tick-\d) \| tick ([0-9a-f]{12})\n", line)
                assert m, f"only the replicas' lines, prefixed: {line!r}"
                seen.setdefault(m[1], set()).add(m[2])
            return seen

        first = hosts_until(2)
        assert set(first) == {"ticks-tick-1", "ticks-tick-2"}
        ok(root, "service", "restart", "ticks/tick")  # every replica replaced
        before = {h for v in first.values() for h in v}
        seen: set[str] = set()
        while len(seen - before) < 2:  # the replacements' lines come through the same command
            seen |= {h for v in hosts_until(1).values() for h in v}
        ok(root, "down", "ticks")
        assert follow.wait(30) == 0  # the deployment went: nothing left to follow
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait(10)
    lamina(root, "down", "ticks")


def test_deploy_wait_that_never_gets_ready_is_one_line_and_exit_1(
    root: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "sick.yaml"
    spec.write_text(f"version: v1\ndeployment: sick\nservices:\n"
                    f"  app:\n    image: {{name: {IMAGE_REF}}}\n"
                    f"    scale: {{mode: fixed, replicas: 1}}\n"
                    f"    command: {{args: [sh, -c, \"trap 'exit 0' TERM; sleep 600 & wait\"]}}\n"
                    f"{HEALTH}")  # fmt: skip
    t0 = time.monotonic()
    r = lamina(root, "deploy", "--wait", "--timeout", "4", str(spec))
    assert r.returncode == 1, (r.stdout, r.stderr)
    line = error_line(r.stderr)
    assert "sick" in line and "4s" in line, line
    assert time.monotonic() - t0 < 30
    assert r.stdout.splitlines()[:2] == ["create network sick", "create service app: 1 replicas"]
    assert "app: 0/1 ready, rollout progressing 0/1" in r.stdout.splitlines()
    # The deployment stays (the daemon keeps trying); down removes it.
    assert ok(root, "deployment", "ls", "-q") == "sick\n"
    ok(root, "down", "sick")


def test_a_deploy_wait_killed_midway_leaves_the_deployment_to_the_daemon(
    root: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "shop.yaml"
    spec.write_text(shop_spec())
    env = {k: v for k, v in os.environ.items() if k != "LAMINA_HOST"}
    waiting = subprocess.Popen([*CLI, "--root", str(root), "deploy", "--wait", str(spec)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)  # fmt: skip
    assert waiting.stdout is not None
    assert waiting.stdout.readline() == "create network shop\n"  # the daemon has it
    waiting.kill()
    waiting.wait(10)
    until(lambda: status_json(root, "shop")["state"] == "running", 60)
    assert ok(root, "secret", "ls", "-q") == ""  # the daemon serves on
    ids = set(ok(root, "ps", "-aq", "--no-trunc").split())
    assert len(ids) == 4
    ok(root, "down", "shop")
    assert_clean(root, ids)
