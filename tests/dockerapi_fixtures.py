"""A real ``lamina daemon`` serving Docker's Engine API on a temporary socket, and the
real docker CLI (and docker-py) pointed at it."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from daemon_fixtures import Daemon, running_daemon
from runtime_fixtures import lamina_cli, remove_all_containers, settle_network


@dataclass
class DockerEndpoint:
    daemon: Daemon
    socket: Path

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        """The environment a docker client needs: DOCKER_HOST, no BuildKit, a config
        dir of its own (no credentials of the host's user)."""
        config = self.daemon.root.parent / "docker-config"
        config.mkdir(exist_ok=True)
        return {
            **os.environ,
            "DOCKER_HOST": self.host,
            "DOCKER_BUILDKIT": "0",
            "DOCKER_CONFIG": str(config),
        }

    def docker(
        self, *args: str, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """The installed docker CLI against this endpoint."""
        return subprocess.run(
            ["docker", *args], env=self.env(), capture_output=True, text=True,
            input=input, timeout=timeout,
        )  # fmt: skip

    def docker_ok(self, *args: str, input: str | None = None, timeout: float = 120) -> str:
        r = self.docker(*args, input=input, timeout=timeout)
        assert r.returncode == 0, f"docker {' '.join(args)}: {r.returncode}\n{r.stderr}"
        return r.stdout


@contextlib.contextmanager
def docker_endpoint(root: Path, *args: str) -> Iterator[DockerEndpoint]:
    """A daemon on ``root`` serving lamina's API on its default socket and Docker's on
    ``ROOT/docker.sock``."""
    sock = root / "docker.sock"
    try:
        with running_daemon(root, "--docker-host", f"unix://{sock}", *args) as daemon:
            yield DockerEndpoint(daemon, sock)
    finally:  # containers outlive the daemon: what a test left goes with its root
        remove_all_containers(root)
        lamina_cli(root, "network", "prune", "-f")
        settle_network(root)
