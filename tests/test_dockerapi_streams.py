"""Docker's archive, export and exec endpoints, driven by the docker CLI and docker-py
against containers on the daemon's root."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dockerapi_fixtures import DockerEndpoint, docker_endpoint
from runtime_fixtures import IMAGE_REF, cli_image_root, lamina_ok


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DockerEndpoint, str]]:
    root = cli_image_root(tmp_path_factory, "dockerapi-streams")
    with docker_endpoint(root) as ep:
        cid = lamina_ok(root, "run", "-d", IMAGE_REF, "sleep", "300").strip()
        try:
            yield ep, cid
        finally:
            lamina_ok(root, "rm", "-f", cid)


def test_cp_both_ways_and_export(running: tuple[DockerEndpoint, str], tmp_path: Path) -> None:
    import subprocess

    ep, cid = running
    ep.docker_ok("cp", f"{cid}:/etc/passwd", str(tmp_path / "passwd"))
    assert (tmp_path / "passwd").read_text().startswith("root:x:0:0:")
    ep.docker_ok("cp", f"{cid}:/etc", str(tmp_path / "etc"))  # a directory
    assert (tmp_path / "etc" / "group").is_file()
    missing = ep.docker("cp", f"{cid}:/no/such/file", str(tmp_path / "x"))
    assert missing.returncode == 1 and "no/such/file" in missing.stderr
    (tmp_path / "hello.txt").write_text("hello\n")
    ep.docker_ok("cp", str(tmp_path / "hello.txt"), f"{cid}:/tmp/")
    ep.docker_ok("cp", str(tmp_path / "hello.txt"), f"{cid}:/tmp/renamed.txt")
    shown = lamina_ok(ep.daemon.root, "exec", cid, "cat", "/tmp/hello.txt", "/tmp/renamed.txt")
    assert shown == "hello\nhello\n"

    exported = subprocess.run(["docker", "export", cid], env=ep.env(), capture_output=True,
                              timeout=60)  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    with tarfile.open(fileobj=io.BytesIO(exported.stdout)) as tar:
        names = {n.lstrip("./") for n in tar.getnames()}
    assert {"bin/busybox", "etc/passwd", "tmp/hello.txt"} <= names


def test_exec_with_docker_py(running: tuple[DockerEndpoint, str]) -> None:
    docker = pytest.importorskip("docker")
    ep, cid = running
    client = docker.APIClient(base_url=ep.host, version="1.44")
    try:
        made = client.exec_create(cid, ["sh", "-c", "echo out; echo err >&2; exit 5"])
        out = client.exec_start(made["Id"], demux=True)
        assert out == (b"out\n", b"err\n")
        shown = client.exec_inspect(made["Id"])
        assert shown["ExitCode"] == 5 and shown["Running"] is False
        assert shown["ProcessConfig"]["entrypoint"] == "sh"
        made = client.exec_create(cid, ["sh", "-c", "pwd; id -u; echo $X"], workdir="/tmp",
                                  user="1000", environment=["X=from-env"])  # fmt: skip
        assert client.exec_start(made["Id"]) == b"/tmp\n1000\nfrom-env\n"
        made = client.exec_create(cid, ["cat"], stdin=True)
        sock = client.exec_start(made["Id"], socket=True)
        sock._sock.sendall(b"through stdin\n")
        sock._sock.shutdown(1)  # half-close: EOF to cat
        data = b""
        while chunk := sock._sock.recv(65536):
            data += chunk
        assert data == b"\x01\x00\x00\x00\x00\x00\x00\x0ethrough stdin\n"
        assert client.exec_inspect(made["Id"])["ExitCode"] == 0
    finally:
        client.close()


def test_attach_to_a_running_container_with_docker_py(running: tuple[DockerEndpoint, str]) -> None:
    docker = pytest.importorskip("docker")
    ep, _ = running
    script = "while read line; do echo got $line; echo err $line >&2; done"
    cid = lamina_ok(ep.daemon.root, "run", "-d", "-i", IMAGE_REF, "sh", "-c", script).strip()
    client = docker.APIClient(base_url=ep.host, version="1.44")
    try:
        sock = client.attach_socket(cid, params={"stdin": 1, "stdout": 1, "stderr": 1,
                                                 "stream": 1})  # fmt: skip
        sock._sock.sendall(b"one\n")
        data = b""
        while data.count(b"one") < 2:
            chunk = sock._sock.recv(65536)
            assert chunk, data
            data += chunk
        assert b"\x01\x00\x00\x00\x00\x00\x00\x08got one\n" in data
        assert b"\x02\x00\x00\x00\x00\x00\x00\x08err one\n" in data
        sock._sock.close()
    finally:
        client.close()
        lamina_ok(ep.daemon.root, "rm", "-f", cid)
