"""``lamina cp`` with Docker's documented semantics, end to end (real runc containers).

- Copies go through the container's volumes and bind mounts, running or stopped
  (Docker mounts them for a cp of a stopped container too).
- ``-L`` copies what a symlink in the container points to, resolved inside it.
- A destination that is a symlink is written through, inside the container.
- Owners: files copied in belong to root (0:0) unless ``-a``, which keeps the
  source's; files copied out belong to the user running lamina unless ``-a``.
- Nothing is left behind: no mounts, no processes, no temp files, also when the
  ``lamina cp`` process is killed.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_fixtures import (
    CLI,
    IMAGE_REF,
    cli_image_root,
    lamina_cli,
    overlay_mounts,
    remove_all_containers,
    until,
)
from runtime_fixtures import lamina_ok as ok
from test_cp_race import assert_clean_failure, cp_processes

pytestmark = [pytest.mark.timeout(180), pytest.mark.both_modes]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_image_root(tmp_path_factory, "cp-semantics")


@pytest.fixture
def root(image_root: Path) -> Iterator[Path]:
    yield image_root
    remove_all_containers(image_root)
    assert cp_processes(image_root) == []


def fails(root: Path, *args: str) -> str:
    r = lamina_cli(root, *args)
    assert r.returncode != 0, (args, r.stdout)
    assert_clean_failure(r)
    return r.stderr


def run_ready(root: Path, name: str, *args: str, script: str = "") -> str:
    """``run -d`` a container that runs ``script`` then sleeps; wait until it did."""
    cid = ok(root, "run", "-d", "--name", name, *args, IMAGE_REF, "sh", "-c",
             f"{script} touch /ready; exec sleep 1000").strip()  # fmt: skip
    until(lambda: lamina_cli(root, "exec", name, "test", "-e", "/ready").returncode == 0)
    return cid


def test_cp_goes_through_volumes_and_binds_running_and_stopped(root: Path, tmp_path: Path) -> None:
    bind = tmp_path / "bind"
    bind.mkdir()
    (bind / "from-host.txt").write_text("bind\n")
    cid = run_ready(root, "vols", "-v", "cpdata:/vol", "-v", f"{bind}:/bind",
                    "-v", "cpro:/ro:ro", script="echo vol > /vol/from-ctr.txt;")  # fmt: skip
    upper = root / "overlay" / cid / "upper"
    src = tmp_path / "in.txt"
    out = tmp_path / "out"
    out.mkdir()

    for phase in ("running", "stopped"):
        src.write_text(f"{phase}\n")
        ok(root, "cp", str(src), f"vols:/vol/{phase}.txt")
        ok(root, "cp", str(src), f"vols:/bind/{phase}.txt")
        assert (bind / f"{phase}.txt").read_text() == f"{phase}\n"
        ok(root, "cp", "vols:/vol/from-ctr.txt", str(out / f"vol-{phase}.txt"))
        assert (out / f"vol-{phase}.txt").read_text() == "vol\n"
        ok(root, "cp", "vols:/bind/from-host.txt", str(out / f"bind-{phase}.txt"))
        assert (out / f"bind-{phase}.txt").read_text() == "bind\n"
        # Never into the overlay layer the volume hides.
        assert not (upper / "vol" / f"{phase}.txt").exists()
        assert not (upper / "bind" / f"{phase}.txt").exists()
        assert "read-only" in fails(root, "cp", str(src), "vols:/ro/").lower()
        if phase == "running":
            assert ok(root, "exec", "vols", "cat", "/vol/running.txt") == "running\n"
            ok(root, "stop", "-t", "0", "vols")
            mounts = overlay_mounts(root)
            assert not any(cid in m for m in mounts), mounts
    # The stopped container's copies were made in what it mounts when it runs.
    assert not any(cid in m for m in overlay_mounts(root)), "cp left a mount"
    ok(root, "start", "vols")
    assert ok(root, "exec", "vols", "cat", "/vol/stopped.txt", "/bind/stopped.txt") == (
        "stopped\nstopped\n"
    )


def test_cp_into_a_created_container_lands_where_it_will_run(root: Path, tmp_path: Path) -> None:
    """A created container's root is mounted on the host already: the copier uses that
    mount, with the container's volume on top and its root read-only (--read-only)."""
    src = tmp_path / "in.txt"
    src.write_text("created\n")
    ok(root, "create", "--name", "fresh", "--read-only", "-v", "cpfresh:/vol", IMAGE_REF,
       "sh", "-c", "cat /vol/in.txt; sleep 1000")  # fmt: skip
    ok(root, "cp", str(src), "fresh:/vol/")
    assert "read-only" in fails(root, "cp", str(src), "fresh:/etc/").lower()
    def root_mounts() -> list[str]:  # a running container also pins its netns
        return [m for m in overlay_mounts(root) if "/netns/" not in m]

    mounts = root_mounts()
    ok(root, "start", "fresh")
    until(lambda: ok(root, "logs", "fresh") == "created\n")
    assert len(root_mounts()) == len(mounts)  # the one mount of its root, as before


def test_cp_follow_link_copies_the_target_inside_the_container(root: Path, tmp_path: Path) -> None:
    run_ready(root, "links",
              script="echo container-shadow > /etc/shadow; ln -s /etc/shadow /shadowlink;"
                     "mkdir /d; echo in-d > /d/f; ln -s /d /dirlink;")  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    ok(root, "cp", "links:/shadowlink", str(out))  # no -L: the link itself, as Docker
    assert os.readlink(out / "shadowlink") == "/etc/shadow"
    ok(root, "cp", "-L", "links:/shadowlink", str(out / "copied"))
    assert not (out / "copied").is_symlink()
    assert (out / "copied").read_text() == "container-shadow\n"
    into = tmp_path / "into"
    into.mkdir()
    ok(root, "cp", "-L", "links:/shadowlink", str(into))  # the link's name, the target's data
    assert not (into / "shadowlink").is_symlink()
    assert (into / "shadowlink").read_text() == "container-shadow\n"
    ok(root, "cp", "-L", "links:/dirlink", str(out / "dir"))
    assert not (out / "dir").is_symlink() and (out / "dir" / "f").read_text() == "in-d\n"
    r = subprocess.run([*CLI, "--root", str(root), "cp", "-L", "links:/shadowlink", "-"],
                       capture_output=True, timeout=60)  # fmt: skip
    assert r.returncode == 0 and b"container-shadow" in r.stdout


def _digest(path: str) -> tuple[str, int]:
    st = os.stat(path)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest(), st.st_mtime_ns


def test_cp_to_a_symlink_writes_through_it_inside_the_container(root: Path, tmp_path: Path) -> None:
    host_shadow = _digest("/etc/shadow")
    run_ready(root, "dst",
              script="echo old > /etc/app.conf; ln -s /etc/app.conf /cfg;"
                     "echo container-shadow > /etc/shadow; ln -s /etc/shadow /shadowlink;"
                     "ln -s ../etc /etclink; ln -s /nowhere/x /dangling;")  # fmt: skip
    new = tmp_path / "new.conf"
    new.write_text("new\n")
    ok(root, "cp", str(new), "dst:/cfg")
    assert ok(root, "exec", "dst", "readlink", "/cfg") == "/etc/app.conf\n"
    assert ok(root, "exec", "dst", "cat", "/etc/app.conf") == "new\n"
    ok(root, "cp", str(new), "dst:/shadowlink")
    assert ok(root, "exec", "dst", "cat", "/etc/shadow") == "new\n"
    assert _digest("/etc/shadow") == host_shadow
    ok(root, "cp", str(new), "dst:/etclink")  # a link to a directory: into it
    assert ok(root, "exec", "dst", "cat", "/etc/new.conf") == "new\n"
    # A link to a missing path names the file to create (its directory must exist).
    fails(root, "cp", str(new), "dst:/dangling")
    assert _digest("/etc/shadow") == host_shadow


def test_cp_owners_root_unless_archive(root: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("f\n")
    for p in (src, src / "sub", src / "sub" / "f"):
        os.chown(p, 1234, 5678)
    run_ready(root, "owners", script="echo o > /tmp/o; chown 1000:1000 /tmp/o;")

    def owners(path: str) -> str:
        return ok(root, "exec", "owners", "sh", "-c", f"find {path} | xargs stat -c %u:%g")

    ok(root, "cp", str(src), "owners:/plain")
    assert set(owners("/plain").split()) == {"0:0"}
    ok(root, "cp", "-a", str(src), "owners:/kept")
    assert set(owners("/kept").split()) == {"1234:5678"}
    out = tmp_path / "out"
    out.mkdir()
    ok(root, "cp", "owners:/tmp/o", str(out / "plain"))
    st = os.stat(out / "plain")
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    ok(root, "cp", "-a", "owners:/tmp/o", str(out / "kept"))
    st = os.stat(out / "kept")
    assert (st.st_uid, st.st_gid) == (1000, 1000)


def test_sigkill_of_cp_leaves_nothing(root: Path, tmp_path: Path) -> None:
    """Killed while it streams, out of a running and of a stopped container: no copier
    process stays, no mount, and the temp directory beside the destination goes with
    the lease's cleanup."""
    run_ready(root, "big", script="dd if=/dev/zero of=/big bs=1M count=64 2>/dev/null;")
    for phase in ("running", "stopped"):
        if phase == "stopped":
            ok(root, "stop", "-t", "0", "big")
        mounts = sorted(overlay_mounts(root))
        # stdout is a pipe nobody reads: the copy stalls once it is full.
        proc = subprocess.Popen([*CLI, "--root", str(root), "cp", "big:/big", "-"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
        assert proc.stdout is not None
        assert proc.stdout.read(4096)  # the copy is under way
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        until(lambda: cp_processes(root) == [], timeout=10)
        assert sorted(overlay_mounts(root)) == mounts

        dest = tmp_path / phase
        proc = subprocess.Popen([*CLI, "--root", str(root), "cp", "big:/big", str(dest)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        while proc.poll() is None and not any(
            p.name.startswith(".lamina-cp-") for p in tmp_path.iterdir()
        ):
            time.sleep(0.002)  # kill as soon as the temp directory is there
        assert proc.poll() is None, "the copy ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        until(lambda: cp_processes(root) == [], timeout=10)
        assert sorted(overlay_mounts(root)) == mounts
        ok(root, "ps")  # the next lamina command reaps what the killed one left
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".lamina-cp-")] == []
    ok(root, "start", "big")  # the stopped container's root is free to mount again


def test_a_multithreaded_caller_gets_a_copier_of_its_own(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller running other threads (a daemon, say) is not forked: the fork could
    inherit a lock some thread holds. Its copier is a fresh interpreter, which does
    the same, in a running and in a stopped container."""
    import io
    import tarfile
    import threading

    from lamina.engine import open_engine

    def no_fork() -> int:
        raise AssertionError("forked a multi-threaded process")

    run_ready(root, "threads")
    monkeypatch.setattr(os, "fork", no_fork)
    idle = threading.Event()
    other = threading.Thread(target=idle.wait)
    other.start()
    rt = open_engine(root)
    try:
        for phase in ("running", "stopped"):
            data = f"{phase}\n".encode()
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tf:
                info = tarfile.TarInfo(f"{phase}.txt")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            buf.seek(0)
            rt.copy_in("threads", "/tmp", buf)
            assert rt.stat_path("threads", f"/tmp/{phase}.txt").size == len(data)
            out = b"".join(rt.copy_out("threads", f"/tmp/{phase}.txt"))
            with tarfile.open(fileobj=io.BytesIO(out)) as tf:
                got = tf.extractfile(f"{phase}.txt")
                assert got is not None and got.read() == data
            if phase == "running":
                rt.stop("threads", timeout=0)
    finally:
        idle.set()
        other.join()
        rt.close()
    assert cp_processes(root) == []


def test_the_copier_trusts_a_pid_only_while_it_is_the_containers(root: Path) -> None:
    """A recorded pid whose process is gone, or is not the child of the container's
    conmon (a reused pid), is never entered: its root could be the host's."""
    from lamina.engine import open_engine
    from lamina.errors import LaminaError
    from lamina.runtime import _copier

    run_ready(root, "pids")
    rt = open_engine(root)
    try:
        rec = rt.store.resolve("pids")  # the recorded pid and its conmon
        view = _copier.RunningRoot(rec.pid, rec.monitor_pid, rec.monitor_start)
        assert _copier.stat_path(view, "/ready").size == 0
        stranger = subprocess.Popen(["sleep", "60"])  # a host process: its root is /
        try:
            impostor = _copier.RunningRoot(stranger.pid, rec.monitor_pid, rec.monitor_start)
            with pytest.raises(LaminaError, match="stopped before the copy"):
                _copier.stat_path(impostor, "/etc/hostname")
        finally:
            stranger.kill()
            stranger.wait()
        gone = _copier.RunningRoot(stranger.pid, rec.monitor_pid, rec.monitor_start)
        with pytest.raises(LaminaError, match="stopped before the copy"):
            _copier.stat_path(gone, "/etc/hostname")
    finally:
        rt.close()
