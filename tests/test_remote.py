"""What only the remote CLI (``lamina --host URL``, LAMINA_HOST) has: no daemon at the
address, bad client flags, a bearer token and TLS client certificates over TCP, and a
client start that imports neither the engine, nor the image plane, nor the builder.
(What both modes share is tested by the modules marked ``both_modes``.)"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from daemon_fixtures import make_tls, running_daemon
from registry_server import free_port
from runtime_fixtures import CLI, IMAGE_REF, cli_image_root

pytestmark = pytest.mark.timeout(120)


def lamina(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "LAMINA_HOST"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env={**base, **(env or {})})  # fmt: skip


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lamina: error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_image_root(tmp_path_factory, "remote")


def test_no_daemon_is_one_line_naming_the_address(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/nobody.sock"
    expected = (f"lamina: error: Cannot connect to the lamina daemon at {url}. "
                "Is the lamina daemon running?")  # fmt: skip
    ps = lamina("--host", url, "ps")
    assert ps.returncode == 1 and one_line(ps) == expected  # Docker: ps exits 1
    run = lamina("run", "--rm", IMAGE_REF, "true", env={"LAMINA_HOST": url})
    assert run.returncode == 125 and one_line(run) == expected  # Docker: run exits 125
    port = free_port()  # nothing listens there
    tcp = lamina("--host", f"tcp://127.0.0.1:{port}", "images")
    assert tcp.returncode == 1 and f"at tcp://127.0.0.1:{port}." in one_line(tcp)


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--host", "ftp://x"], "expected unix:///PATH or tcp://HOST:PORT"),
        (["--host", "tcp://127.0.0.1"], "tcp:// needs a port"),
        (["--host", "unix:///x.sock", "--tls"], "--tls and --tlsverify are for tcp:// hosts"),
        (["--host", "tcp://127.0.0.1:1", "--tlsverify", "--tlscacert", "/no/ca.pem"],
         "--tlscacert /no/ca.pem: no such file"),
        (["--host", "tcp://127.0.0.1:1", "--token-file", "/no/token"],
         "cannot read the token file /no/token"),
    ],
)  # fmt: skip
def test_bad_client_flags_are_one_line(flags: list[str], error: str) -> None:
    r = lamina(*flags, "ps")
    assert r.returncode == 125 and error in one_line(r)


def test_a_remote_start_imports_no_engine_image_plane_or_builder(image_root: Path) -> None:
    modules = r"engine\._engine|engine\._store|image|builder|registry|daemon"
    heavy = re.compile(rf"\| +(lamina\.({modules})\b\S*)")
    with running_daemon(image_root) as daemon:
        host = f"unix://{daemon.socket}"
        for args in (["ps", "-a"], ["run", "--rm", IMAGE_REF, "true"], ["--help"]):
            r = subprocess.run([CLI[0], "-X", "importtime", *CLI[1:], "--host", host, *args],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
            assert r.returncode == 0, r.stderr[-2000:]
            assert heavy.findall(r.stderr) == [], args
        # ... and the same command in-process does import the engine (the check can fail).
        local = subprocess.run([CLI[0], "-X", "importtime", *CLI[1:], "--root", str(image_root),
                                "ps"], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert "lamina.engine._store" in local.stderr


def test_a_bearer_token_over_tcp(image_root: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("remote-token-" + os.urandom(8).hex() + "\n")
    port = free_port()
    host = f"tcp://127.0.0.1:{port}"
    with running_daemon(image_root, "--host", host, "--token-file", str(token_file)):
        created = lamina("--host", host, "--token-file", str(token_file), "create", "--name",
                         "tok", IMAGE_REF, "true")  # fmt: skip
        assert created.returncode == 0, created.stderr
        env = {"LAMINA_HOST": host, "LAMINA_TOKEN_FILE": str(token_file)}
        listed = lamina("ps", "-a", "--format", "{{.Names}} {{.Status}}", env=env)
        assert listed.stdout == "tok Created\n"
        refused = lamina("--host", host, "ps")  # no token: the daemon's 401 in one line
        assert refused.returncode == 1
        assert one_line(refused) == "lamina: error: unauthorized: credentials missing or wrong"
        assert lamina("rm", "tok", env=env).stdout == "tok\n"


def test_tls_with_a_client_certificate(image_root: Path, tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    port = free_port()
    host = f"tcp://127.0.0.1:{port}"
    server = ["--tlscert", str(tls["server.crt"]), "--tlskey", str(tls["server.key"]),
              "--tlscacert", str(tls["ca.crt"])]  # fmt: skip
    client = ["--host", host, "--tlsverify", "--tlscacert", str(tls["ca.crt"])]
    with running_daemon(image_root, "--host", host, *server):
        cert = ["--tlscert", str(tls["client.crt"]), "--tlskey", str(tls["client.key"])]
        r = lamina(*client, *cert, "run", "--rm", IMAGE_REF, "echo", "over tls")
        assert (r.returncode, r.stdout) == (0, "over tls\n"), r.stderr
        anonymous = lamina(*client, "ps")  # the handshake refuses a client without one
        assert anonymous.returncode == 1
        assert f"Cannot connect to the lamina daemon at {host}" in one_line(anonymous)
