"""A container removed through the daemon leaves its names at once and its files in
the background (``_fsutil.remove_tree``): ``rm`` and ``run --rm`` answer before a big
root filesystem is deleted, nothing is left once the daemon has finished, a stopping
daemon finishes first, and the trash a killed one left is swept by the next command."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from daemon_fixtures import running_daemon
from runtime_fixtures import CLI, IMAGE_REF, cli_image_root, lamina_ok, overlay_mounts, until

pytestmark = pytest.mark.timeout(180)

FILES = 20000  # enough that deleting them takes a while


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_image_root(tmp_path_factory, "removal")


def remote(daemon_socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LAMINA_HOST"}
    return subprocess.run([*CLI, "--host", f"unix://{daemon_socket}", *args],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip


def trash(root: Path) -> list[str]:
    """What removals left under the container directories (renamed ``.rm-`` trees)."""
    found = []
    for d in ("containers", "overlay"):
        with_trash = root / d
        if with_trash.is_dir():
            found += [f"{d}/{n}" for n in os.listdir(with_trash) if n.startswith(".rm-")]
    return found


def leftovers(root: Path) -> list[str]:
    return [
        f"{d}/{n}"
        for d in ("containers", "overlay")
        if (root / d).is_dir()
        for n in os.listdir(root / d)
    ]


def many_files(sock: Path) -> str:
    """A stopped container whose root filesystem holds FILES new files."""
    script = f"mkdir /many && cd /many && i=0; while [ $i -lt {FILES} ]; do : > f$i; " \
        "i=$((i+1)); done"
    r = remote(sock, "run", "-d", "--network", "none", IMAGE_REF, "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    assert remote(sock, "wait", cid).stdout.strip() == "0"
    return cid


def test_rm_answers_at_once_and_the_files_follow(image_root: Path) -> None:
    with running_daemon(image_root) as daemon:
        cid = many_files(daemon.socket)
        r = remote(daemon.socket, "rm", cid)
        assert r.returncode == 0, r.stderr
        assert cid not in remote(daemon.socket, "ps", "-a", "-q", "--no-trunc").stdout
        assert not (image_root / "containers" / cid).exists()
        assert not (image_root / "overlay" / cid).exists()
        until(lambda: leftovers(image_root) == [], 60)  # the background deletes them
        assert overlay_mounts(image_root) == []
        # run --rm the same way: gone from ps when the command returns
        r = remote(daemon.socket, "run", "--rm", "--network", "none", IMAGE_REF, "true")
        assert r.returncode == 0, r.stderr
        assert remote(daemon.socket, "ps", "-a", "-q").stdout.strip() == ""
        until(lambda: leftovers(image_root) == [], 60)


def test_a_stopping_daemon_deletes_what_it_was_deleting(image_root: Path) -> None:
    with running_daemon(image_root) as daemon:
        cid = many_files(daemon.socket)
        assert remote(daemon.socket, "rm", cid).returncode == 0
        assert daemon.stop() == 0
    assert leftovers(image_root) == []


def test_trash_of_a_killed_daemon_is_swept(image_root: Path) -> None:
    # what a daemon killed while deleting leaves: renamed trees, still full
    cid = "ab" * 32
    planted = [
        image_root / "overlay" / f".rm-{cid}-0001" / "upper" / "many",
        image_root / "containers" / f".rm-{cid}-0002" / "userdata",
    ]
    for d in planted:
        d.mkdir(parents=True)
        (d / "file").write_text("x")
    with running_daemon(image_root):  # its boot sweeps the root
        assert trash(image_root) == []
    for d in planted:  # and without a daemon: the next command sweeps
        d.mkdir(parents=True)
    lamina_ok(image_root, "ps", "-a")
    assert trash(image_root) == []
