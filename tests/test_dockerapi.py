"""Docker's Engine API served by the daemon: the listener, versions and errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from dockerapi_fixtures import docker_endpoint


def curl(sock: Path, path: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = ["curl", "-sS", "-i", "--unix-socket", str(sock), *args, f"http://docker{path}"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_ping_versions_and_errors(tmp_path: Path) -> None:
    with docker_endpoint(tmp_path / "root") as ep:
        assert ep.socket.stat().st_mode & 0o777 == 0o660
        for path in ("/_ping", "/v1.24/_ping", "/v1.44/_ping", "/v1.50/_ping"):
            r = curl(ep.socket, path)
            head, _, body = r.stdout.partition("\n\n")
            assert head.startswith("HTTP/1.1 200") and body == "OK", (path, r.stdout)
            assert "Api-Version: 1.44" in head and "Ostype: linux" in head
            assert "Builder-Version: 1" in head
        r = curl(ep.socket, "/v1.12/_ping")
        head, _, body = r.stdout.partition("\n\n")
        assert head.startswith("HTTP/1.1 400")
        assert "Minimum supported API version is 1.24" in json.loads(body)["message"]
        r = curl(ep.socket, "/v1.44/no/such/thing")
        head, _, body = r.stdout.partition("\n\n")
        assert head.startswith("HTTP/1.1 404") and set(json.loads(body)) == {"message"}
        # lamina's own API is still on its socket, and not on Docker's.
        assert curl(ep.daemon.socket, "/v1/_ping").stdout.startswith("HTTP/1.1 200")
