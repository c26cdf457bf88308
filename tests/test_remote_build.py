"""``lamina --host ... build`` against the same build in-process: the same output
(progress, result lines, image ID), and a client that goes away in the middle of a
step cancels the build and leaves nothing on the daemon's root."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from daemon_fixtures import running_daemon
from runtime_fixtures import CLI, IMAGE_REF, cli_image_root, lamina_cli, runc_list, until

from lamina import _leases

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_image_root(tmp_path_factory, "remote-build")


def _timeless(progress: str) -> str:
    """The plain progress without its timings (``#3 0.412 line``, ``DONE 1.3s``)."""
    progress = re.sub(r"^(#\d+) \d+\.\d{3} ", r"\1 T ", progress, flags=re.M)
    return re.sub(r"^(#\d+) DONE \d+\.\d+s$", r"\1 DONE Ts", progress, flags=re.M)


def test_remote_build_prints_what_the_local_build_prints(root: Path, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        # One stage: the steps of stages that run at once are numbered as they come.
        # A step writes to one stream: how stdout and stderr interleave is not fixed.
        f"FROM {IMAGE_REF}\nCOPY . /src\nRUN echo out; ls /src\nRUN echo err >&2\n"
        f"ARG WHO\nRUN printf 'no newline %s' \"$WHO\"\nLABEL a=b\n"
    )
    (ctx / "kept.txt").write_text("kept")
    (ctx / "dropped.txt").write_text("dropped")
    (ctx / ".dockerignore").write_text("dropped.txt\n")
    args = ("build", "--progress", "plain", "--no-cache", "-t", "same/out",
            "--build-arg", "WHO=me", "--build-arg", "UNUSED=1",
            "--build-arg", "SOURCE_DATE_EPOCH=0", str(ctx))  # fmt: skip
    local = lamina_cli(root, *args)
    assert local.returncode == 0, local.stderr
    with running_daemon(root) as daemon:
        remote = lamina_cli(root, *args, env={"LAMINA_HOST": f"unix://{daemon.socket}"})
        assert remote.returncode == 0, remote.stderr
        failing = ("build", "-q", "-f", "-", str(ctx))
        dockerfile = f"FROM {IMAGE_REF}\nRUN echo before; exit 7\n".encode()
        local_failed = lamina_cli(root, *failing, input=dockerfile)
        remote_failed = lamina_cli(root, *failing, input=dockerfile,
                                   env={"LAMINA_HOST": f"unix://{daemon.socket}"})  # fmt: skip
    # SOURCE_DATE_EPOCH: the same image, so the same ID on stdout
    assert remote.stdout == local.stdout and local.stdout.startswith("sha256:")
    assert "WARNING: one or more build-args" in local.stderr
    assert "#5 T no newline me\n" in _timeless(local.stderr)
    assert _timeless(remote.stderr) == _timeless(local.stderr)
    assert local_failed.returncode == 1 and "before" in local_failed.stderr
    assert (remote_failed.returncode, remote_failed.stdout, remote_failed.stderr) == (
        local_failed.returncode, local_failed.stdout, local_failed.stderr)  # fmt: skip


def _scratch(root: Path) -> list[Path]:
    return list((root / "tmp").glob("build-context-*"))


def test_a_client_gone_cancels_the_build(root: Path, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {IMAGE_REF}\nRUN echo started; sleep 120\n")
    with running_daemon(root) as daemon:
        env = {**os.environ, "LAMINA_HOST": f"unix://{daemon.socket}"}
        client = subprocess.Popen([*CLI, "--root", str(root), "build", "--progress", "plain",
                                   "--no-cache", str(ctx)], env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        try:
            assert client.stderr is not None
            seen = b""
            while not seen.endswith(b" started\n"):  # the step runs: its output came back
                line = client.stderr.readline()
                assert line, seen
                seen += line
            assert runc_list(root) != [] and _scratch(root) != []
            client.send_signal(signal.SIGKILL)
            client.wait()
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        # The step container is killed and removed, the uploaded context dropped, the
        # leases released; all long before the step's sleep would end.
        until(lambda: runc_list(root) == [] and _scratch(root) == [] and not _leases.live(root),
              timeout=30)  # fmt: skip
        assert lamina_cli(root, "ps", "-a", "-q", env={"LAMINA_HOST": env["LAMINA_HOST"]}
                          ).stdout == ""  # fmt: skip
        assert daemon.proc.poll() is None


def test_bad_uploads_are_one_line_and_leave_nothing(root: Path) -> None:
    from daemon_fixtures import tar_of

    from lamina.client._transport import Address, Transport

    context = tar_of({"dockerfile/Dockerfile": f"FROM {IMAGE_REF}\n".encode(), "context/a": b"a"})
    cases = [
        ({}, b"not a tar" * 100, "layer archive is malformed: invalid header"),
        ({"network": "bogus"}, context,
         "query parameter network: expected one of default, host, none, not 'bogus'"),
        ({}, tar_of({"../../../escape": b"x", "dockerfile/Dockerfile": b"FROM x\n"}),
         "layer entry '../../../escape': path escapes the layer root"),
        ({"dockerfile": "../../etc/passwd"}, context,
         "query parameter dockerfile: a file name, not '../../etc/passwd'"),
        ({"dockerfile": "Other"}, context,
         "the build context sent has no dockerfile/Other (the Dockerfile)"),
        ({}, tar_of({"dockerfile/Dockerfile": b"FROM x\n", "secrets/zz": b"x"}),
         "the build context sent: secrets/zz: not a secret id in hex"),
    ]  # fmt: skip
    with running_daemon(root) as daemon:
        transport = Transport(Address.parse(f"unix://{daemon.socket}"))
        for query, body, message in cases:
            answer = transport.request("POST", "/v1/build", query, body=body)
            assert (answer.status, answer.json()) == (400, {"message": message})
        assert _scratch(root) == [] and not _leases.live(root)
        assert not list(root.parent.rglob("escape"))


def _files_holding(root: Path, data: bytes) -> list[Path]:
    out = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 64 << 20:
            with contextlib.suppress(OSError):
                if data in path.read_bytes():
                    out.append(path)
    return out


def test_build_secrets_are_sent_and_leave_nothing(root: Path, tmp_path: Path) -> None:
    """``--secret`` (a file's and a variable's) reaches RUN --mount=type=secret on the
    daemon as in-process; neither the image nor the daemon's root keeps it."""
    token = f"tok-{os.urandom(8).hex()}"
    word = f"word-{os.urandom(8).hex()}"
    (tmp_path / "token").write_text(token)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    # The step compares digests: the values themselves are in no file of the build.
    tok_sum, word_sum = (hashlib.sha256(v.encode()).hexdigest() for v in (token, word))
    (ctx / "Dockerfile").write_text(
        f"FROM {IMAGE_REF}\n"
        f"RUN --mount=type=secret,id=tok --mount=type=secret,id=word,env=WORD "
        f"test \"$(sha256sum < /run/secrets/tok | cut -d' ' -f1)\" = {tok_sum} && "
        f"test \"$(printf %s \"$WORD\" | sha256sum | cut -d' ' -f1)\" = {word_sum} && "
        f"echo secrets-seen\n"
    )
    args = ("build", "--progress", "plain", "--no-cache", "-t", "secret/out",
            "--secret", f"id=tok,src={tmp_path / 'token'}", "--secret", "id=word,env=WORD_VAR",
            str(ctx))  # fmt: skip
    env = {"WORD_VAR": word}
    local = lamina_cli(root, *args, env=env)
    assert local.returncode == 0 and "secrets-seen" in local.stderr, local.stderr
    with running_daemon(root) as daemon:
        remote = lamina_cli(root, *args, env={**env, "LAMINA_HOST": f"unix://{daemon.socket}"})
    assert remote.returncode == 0, remote.stderr
    assert "secrets-seen" in remote.stderr
    assert _scratch(root) == [] and not _leases.live(root)
    run = lamina_cli(root, "run", "--rm", "secret/out", "sh", "-c",
                     "cat /run/secrets/* 2>/dev/null; true")  # fmt: skip
    assert (run.returncode, run.stdout) == (0, "")
    assert _files_holding(root, token.encode()) == []
    assert _files_holding(root, word.encode()) == []
    lamina_cli(root, "rmi", "secret/out")


def test_a_remote_build_imports_no_engine_nor_image_plane(root: Path, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {IMAGE_REF}\nLABEL light=yes\n")
    heavy = re.compile(r"\| +(lamina\.(engine|image|registry|daemon|runtime|builder\._executor)"
                       r"\b\S*)")  # fmt: skip
    with running_daemon(root) as daemon:
        command = [CLI[0], "-X", "importtime", *CLI[1:], "--host", f"unix://{daemon.socket}",
                   "build", "-q", str(tmp_path)]  # fmt: skip
        r = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("sha256:"), r.stderr[-2000:]
    assert "lamina.builder._upload" in r.stderr  # the check sees builder modules
    assert heavy.findall(r.stderr) == []
