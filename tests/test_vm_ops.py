"""Container operations on micro-VM containers through the CLI: diff, commit, cp, top,
stats, pause/unpause, and the one-line errors around them. Under TCG each boot is about
2 s, so one module-scoped VM container serves most tests: its workload makes changes of
every kind (a file added, one changed, one deleted, a directory replaced) and sleeps.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_fixtures import (
    CLI,
    IMAGE_REF,
    cli_image_root,
    lamina_cli,
    remove_all_containers,
    until,
)
from runtime_fixtures import lamina_ok as ok

from lamina.image import LocalImages

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

IMAGE = IMAGE_REF
VM = "opsvm"
# Added (/data), changed (/etc/passwd), deleted (/bin/rev, /home/app) and replaced
# (/home: an opaque directory in the overlay).
CHANGES = (
    "mkdir /data && echo hi > /data/new && echo extra:x:2000:2000::/:/bin/sh >> /etc/passwd"
    " && rm /bin/rev && rm -rf /home && mkdir /home && touch /home/new"
    " && echo ready > /data/ready; exec sleep 1000"
)


def fails(root: Path, *args: str) -> str:
    """The one error line of a command that must fail."""
    r = lamina_cli(root, *args)
    assert r.returncode != 0, (args, r.stdout)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def cp_stream(root: Path, src: str) -> bytes:
    """``lamina cp SRC -``: the tar stream on stdout."""
    r = subprocess.run([*CLI, "--root", str(root), "cp", src, "-"], capture_output=True,
                       timeout=60, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not os.path.exists("/usr/bin/qemu-system-x86_64"):
        pytest.skip("needs qemu-system-x86_64")
    root = cli_image_root(tmp_path_factory, "vm-ops")
    ok(root, "run", "-d", "--isolation", "vm", "--name", VM, IMAGE, "sh", "-c", CHANGES)
    until(lambda: lamina_cli(root, "exec", VM, "test", "-e", "/data/ready").returncode == 0)
    yield root
    remove_all_containers(root)


def test_diff_shows_added_changed_and_deleted(root: Path) -> None:
    lines = ok(root, "diff", VM).splitlines()
    for line in ("A /data", "A /data/new", "C /etc", "C /etc/passwd", "C /bin", "D /bin/rev",
                 "C /home", "D /home/app", "A /home/new"):  # fmt: skip
        assert line in lines, (line, lines)
    assert lines == sorted(lines, key=lambda x: x[2:])
    # The agent's own files and mount points are not the container's changes.
    assert not [x for x in lines if x[2:] in ("/etc/hostname", "/etc/hosts", "/proc", "/dev")]


def test_commit_makes_an_image_that_runs(root: Path) -> None:
    image_id = ok(root, "commit", "-m", "from a VM", "-a", "Ann <ann@example.com>",
                  "-c", "ENV FROM_VM=yes", VM, "example.com/test/fromvm:1").strip()  # fmt: skip
    assert image_id.startswith("sha256:")
    info = json.loads(ok(root, "image", "inspect", "example.com/test/fromvm:1"))[0]
    assert info["Author"] == "Ann <ann@example.com>"
    assert "FROM_VM=yes" in info["Config"]["Env"]
    assert info["Config"]["Cmd"] == ["sh", "-c", CHANGES]  # the container's command
    # Run process-isolated: the VM's changes are there, its deletions too.
    script = (
        "cat /data/new; grep -c extra /etc/passwd; ls /home; test -e /bin/rev || echo no-rev;"
        " echo $FROM_VM"
    )
    out = ok(root, "run", "--rm", "--entrypoint", "sh", "example.com/test/fromvm:1", "-c", script)
    assert out.split() == ["hi", "1", "new", "no-rev", "yes"]
    # The new layer in OCI form, without the agent's /etc files.
    local = LocalImages.open(root)
    try:
        manifest = local.manifest_for(local.require("example.com/test/fromvm:1").manifest_digest)
        with tarfile.open(fileobj=local.content.open(manifest.layers[-1].digest)) as tf:
            names = set(tf.getnames())
    finally:
        local.close()
    assert {"bin/.wh.rev", "home/.wh..wh..opq", "home/new", "data/new", "etc/passwd"} <= names
    assert not names & {"etc/hostname", "etc/hosts", "proc", "dev"}
    # The workload was frozen for the tar, and runs on after it.
    assert ok(root, "exec", VM, "cat", "/data/ready") == "ready\n"

    line = fails(root, "commit", "-c", "BOGUS x", VM)
    assert "BOGUS" in line


def test_cp_files_and_directories_both_ways(root: Path, tmp_path: Path) -> None:
    src = tmp_path / "script.sh"
    src.write_bytes(b"#!/bin/sh\necho run\n")
    src.chmod(0o741)
    os.chown(src, 1000, 1000)
    ok(root, "cp", "-a", str(src), f"{VM}:/root/")  # -a: the owners kept
    assert (
        ok(root, "exec", VM, "stat", "-c", "%a %u:%g %s", "/root/script.sh") == "741 1000:1000 19\n"
    )
    assert ok(root, "exec", VM, "/root/script.sh") == "run\n"

    back = tmp_path / "back.sh"
    ok(root, "cp", "-a", f"{VM}:/root/script.sh", str(back))
    assert back.read_bytes() == src.read_bytes()
    assert (back.stat().st_mode & 0o777, back.stat().st_uid) == (0o741, 1000)

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a").write_text("a\n")
    (tree / "link").symlink_to("sub/a")
    ok(root, "cp", str(tree), f"{VM}:/srv")  # /srv is missing: the tree becomes /srv
    assert ok(root, "exec", VM, "cat", "/srv/link") == "a\n"
    out = tmp_path / "out"
    ok(root, "cp", f"{VM}:/srv", str(out))
    assert (out / "sub" / "a").read_text() == "a\n" and os.readlink(out / "link") == "sub/a"

    # A stream on stdout: "DIR/." archives the directory's contents.
    with tarfile.open(fileobj=io.BytesIO(cp_stream(root, f"{VM}:/data/."))) as tf:
        assert {os.path.normpath(n) for n in tf.getnames()} == {".", "new", "ready"}

    assert fails(root, "cp", f"{VM}:/nope", str(tmp_path / "x")) == (
        "lamina: error: Could not find the file /nope in container"
    )
    assert "not a directory" in fails(root, "cp", f"{VM}:/data/new/", str(tmp_path / "x"))
    assert "Could not find the file /nope" in fails(root, "cp", str(src), f"{VM}:/nope/dir/x")


def test_cp_owners_links_and_symlinked_destinations(root: Path, tmp_path: Path) -> None:
    """The process backend's cp semantics: root-owned copies unless -a, -L copies
    what a link leads to (resolved in the guest), a symlink destination is written
    through."""
    src = tmp_path / "owned.txt"
    src.write_text("owned\n")
    os.chown(src, 1234, 5678)
    ok(root, "cp", str(src), f"{VM}:/tmp/plain.txt")
    ok(root, "cp", "-a", str(src), f"{VM}:/tmp/kept.txt")
    owners = ok(root, "exec", VM, "stat", "-c", "%u:%g", "/tmp/plain.txt", "/tmp/kept.txt")
    assert owners == "0:0\n1234:5678\n"
    ok(root, "exec", VM, "sh", "-c", "echo target > /tmp/target && ln -s /tmp/target /tmp/link"
       " && mkdir /tmp/d && echo in-d > /tmp/d/f && ln -s d /tmp/dirlink")  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    ok(root, "cp", "-L", f"{VM}:/tmp/link", str(out))
    assert not (out / "link").is_symlink() and (out / "link").read_text() == "target\n"
    ok(root, "cp", "-L", f"{VM}:/tmp/dirlink", str(out))
    assert not (out / "dirlink").is_symlink() and (out / "dirlink" / "f").read_text() == "in-d\n"
    ok(root, "cp", f"{VM}:/tmp/link", str(out / "asis"))
    assert os.readlink(out / "asis") == "/tmp/target"
    ok(root, "cp", str(src), f"{VM}:/tmp/link")  # through the link, inside the guest
    assert ok(root, "exec", VM, "sh", "-c", "readlink /tmp/link; cat /tmp/target") == (
        "/tmp/target\nowned\n"
    )
    ok(root, "cp", str(src), f"{VM}:/tmp/dirlink")  # a link to a directory: into it
    assert ok(root, "exec", VM, "cat", "/tmp/d/owned.txt") == "owned\n"


def test_cp_streams_large_files(root: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    data = os.urandom(3 << 20)  # three 1 MiB frames and more, each way
    big.write_bytes(data)
    ok(root, "cp", str(big), f"{VM}:/tmp/big.bin")
    digest = ok(root, "exec", VM, "sha256sum", "/tmp/big.bin").split()[0]
    assert digest == hashlib.sha256(data).hexdigest()
    r = lamina_cli(root, "cp", f"{VM}:/tmp/big.bin", str(tmp_path / "copy.bin"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "copy.bin").read_bytes() == data
    with tarfile.open(fileobj=io.BytesIO(cp_stream(root, f"{VM}:/tmp/big.bin"))) as tf:
        member = tf.getmember("big.bin")
        assert member.size == len(data) and member.uid == 0


def test_top_lists_the_workload_only(root: Path) -> None:
    lines = ok(root, "top", VM).splitlines()
    assert lines[0].split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    rows = [line.split(None, 7) for line in lines[1:]]
    assert [r[7] for r in rows] == ["sleep 1000"]  # no agent, kernel thread or tool
    assert rows[0][0] == "root" and rows[0][1] != "1"


def test_stats_prints_the_vm(root: Path) -> None:
    out = ok(root, "stats", "--no-stream", VM)
    row = out.splitlines()[1]
    assert VM in row and "MiB / 512.00MiB" in row  # QEMU's RSS / the VM's memory


def test_pause_refuses_exec_until_unpaused(root: Path) -> None:
    ok(root, "pause", VM)
    try:
        assert "(Paused)" in ok(root, "ps", "--filter", f"name={VM}")
        assert ok(root, "inspect", "-f", "{{.State.Status}}", VM).strip() == "paused"
        state = ok(root, "inspect", "-f", "{{.State.Paused}} {{.State.Running}}", VM).split()
        assert state == ["true", "true"]  # as Docker shows a paused container
        assert "is paused; unpause it first" in fails(root, "exec", VM, "true")
        assert "is paused" in fails(root, "diff", VM)
        assert "is paused" in fails(root, "pause", VM)
        assert "MiB" in ok(root, "stats", "--no-stream", VM)  # read on the host
    finally:
        ok(root, "unpause", VM)
    assert ok(root, "exec", VM, "echo", "back") == "back\n"
    assert "is not paused" in fails(root, "unpause", VM)


def test_stop_and_rm_force_of_a_paused_vm(root: Path) -> None:
    loop = "trap 'exit 7' TERM; while true; do sleep 0.2; done"
    ok(root, "run", "-d", "--isolation", "vm", "--name", "napper", IMAGE, "sh", "-c", loop)
    until(lambda: lamina_cli(root, "exec", "napper", "true").returncode == 0)
    ok(root, "pause", "napper")
    t0 = time.monotonic()
    ok(root, "stop", "-t", "60", "napper")  # continued first: the TERM trap runs at once
    assert time.monotonic() - t0 < 30
    assert ok(root, "wait", "napper").strip() == "7"
    ok(root, "start", "napper")
    until(lambda: lamina_cli(root, "exec", "napper", "true").returncode == 0)
    ok(root, "pause", "napper")
    ok(root, "rm", "-f", "napper")
    assert "napper" not in ok(root, "ps", "-a")


def test_operations_on_a_vm_that_is_not_running(root: Path) -> None:
    ok(root, "create", "--isolation", "vm", "--name", "idle", IMAGE, "true")
    for args in (("diff", "idle"), ("top", "idle"), ("cp", "idle:/etc/passwd", "-"),
                 ("commit", "idle"), ("pause", "idle")):  # fmt: skip
        assert "is not running" in fails(root, *args), args
    assert "not supported for micro-VM containers" in fails(root, "update", "-m", "256m", "idle")
    ok(root, "rm", "idle")


def test_exec_detach_runs_on_in_the_guest(root: Path) -> None:
    # A background writer the caller does not wait for (Docker: `exec -d`).
    assert ok(root, "exec", "-d", VM, "sh", "-c", "sleep 0.5; echo late > /tmp/bg") == ""
    assert lamina_cli(root, "exec", VM, "cat", "/tmp/bg").returncode != 0  # not yet
    until(lambda: lamina_cli(root, "exec", VM, "cat", "/tmp/bg").stdout == "late\n")
    r = lamina_cli(root, "exec", "-d", VM, "no-such-command")
    assert r.returncode == 127 and "executable file not found" in r.stderr
