"""Compose v1 (Debian's docker-compose 1.29, docker-py, API 1.38) against lamina's
Docker API: a two-service project with a user network, a named volume and
``depends_on: condition: service_healthy``; up, ps, logs, exec, down -v."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from dockerapi_fixtures import DockerEndpoint, docker_endpoint
from runtime_fixtures import IMAGE_REF, import_busybox, lamina_ok

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        shutil.which("docker-compose") is None, reason="needs docker-compose (Debian's 1.29)"
    ),
]

# File format 2.4: Compose 1.29 honours depends_on's condition there.
PROJECT = """
version: "2.4"
services:
  db:
    image: {image}
    command: ["sh", "-c", "echo db starting; sleep 1; echo ready > /data/state; exec sleep 600"]
    volumes: ["dbdata:/data"]
    networks: [backend]
    labels: {{tier: db}}
    healthcheck:
      test: ["CMD", "test", "-f", "/data/state"]
      interval: 1s
      timeout: 2s
      retries: 30
  web:
    image: {image}
    command: ["sh", "-c", "echo web up; exec sleep 600"]
    networks:
      backend:
        aliases: [frontend]
    depends_on:
      db:
        condition: service_healthy
volumes:
  dbdata: {{}}
networks:
  backend: {{}}
"""


def compose(ep: DockerEndpoint, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**ep.env(), "COMPOSE_API_VERSION": "1.38"}
    return subprocess.run(
        ["docker-compose", "-p", "demo", "-f", str(project), *args],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def compose_ok(ep: DockerEndpoint, project: Path, *args: str) -> str:
    r = compose(ep, project, *args)
    assert r.returncode == 0, f"docker-compose {' '.join(args)}: {r.returncode}\n{r.stderr}"
    return r.stdout


def test_compose_up_ps_logs_exec_down(tmp_path: Path) -> None:
    root = tmp_path / "root"
    import_busybox(root, tmp_path)
    project = tmp_path / "docker-compose.yml"
    project.write_text(PROJECT.format(image=IMAGE_REF))
    with docker_endpoint(root) as ep:
        compose_ok(ep, project, "up", "-d")
        # web started only once db was healthy.
        db = json.loads(ep.docker_ok("inspect", "demo_db_1"))[0]
        web = json.loads(ep.docker_ok("inspect", "demo_web_1"))[0]
        assert db["State"]["Health"]["Status"] == "healthy"
        healthy_at = min(h["End"] for h in db["State"]["Health"]["Log"] if h["ExitCode"] == 0)
        assert web["State"]["StartedAt"] >= healthy_at
        assert db["Config"]["Labels"]["tier"] == "db"
        assert db["Config"]["Labels"]["com.docker.compose.project"] == "demo"
        ps = compose_ok(ep, project, "ps")
        assert "demo_db_1" in ps and "demo_web_1" in ps and ps.count("Up") == 2, ps
        assert "healthy" in ps
        logs = compose_ok(ep, project, "logs", "--no-color")
        assert "db starting" in logs and "web up" in logs
        assert compose_ok(ep, project, "exec", "-T", "db", "cat", "/data/state").strip() == "ready"
        # The user network resolves the service names and aliases.
        r = compose(ep, project, "exec", "-T", "web", "nslookup", "db")
        assert r.returncode == 0, r.stdout + r.stderr
        # What Compose made, as lamina's CLI sees it.
        assert "demo_backend" in lamina_ok(root, "network", "ls")
        assert "demo_dbdata" in lamina_ok(root, "volume", "ls", "-q").split()
        compose_ok(ep, project, "down", "-v")
        assert lamina_ok(root, "ps", "-a", "-q") == ""
        assert lamina_ok(root, "volume", "ls", "-q") == ""
        assert "demo_backend" not in lamina_ok(root, "network", "ls")
