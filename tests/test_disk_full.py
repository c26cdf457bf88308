"""A full disk, for real: the lamina root on a small tmpfs filled to the last byte.

Every command that must write fails with one line naming what could not be written
("cannot write FILE: No space left on device"), exits 1 and leaves the root as it
was; once space is freed the same command succeeds. Commands that only read
(``images``, ``image inspect``, ``ps``, ``inspect``, ``logs``, ``volume ls``) work
on the full disk: opening a database must not need to write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from registry_server import RegistryServer, TestImage, layer_tar
from runtime_fixtures import (
    IMAGE_REF,
    error_line,
    import_busybox,
    lamina_cli,
    lamina_ok,
    overlay_mounts,
    remove_all_containers,
    settle_network,
    store_leftovers,
)

from lamina.image import LocalImages
from lamina.image._archive import save
from lamina.registry import push

TMPFS_SIZE = "48m"
ENOSPC = os.strerror(errno.ENOSPC)


@dataclass
class Disk:
    mount: Path  # the tmpfs
    root: Path  # the lamina root on it
    outside: Path  # inputs kept off the tmpfs (archive, tarball, build context)
    pull_ref: str

    @property
    def filler(self) -> Path:
        return self.mount / "filler"

    def fill(self) -> None:
        """Take every free byte of the tmpfs."""
        # A removed --rm container's network teardown finishes after its command: not
        # what these tests fill the disk under.
        settle_network(self.root)
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            st = os.statvfs(self.mount)
            with contextlib.suppress(OSError):
                os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize)
            block = b"\0" * 4096
            with contextlib.suppress(OSError):
                while True:  # whatever fallocate left, a page at a time
                    os.write(fd, block)
        finally:
            os.close(fd)
        assert os.statvfs(self.mount).f_bavail == 0

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    @contextlib.contextmanager
    def full(self) -> Iterator[None]:
        self.fill()
        try:
            yield
        finally:
            self.free()


@pytest.fixture(scope="module")
def disk(
    tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer, busybox_image: TestImage
) -> Iterator[Disk]:
    if os.geteuid() != 0:
        pytest.skip("needs root (mount -t tmpfs, containers)")
    base = tmp_path_factory.mktemp("disk-full")
    mount = base / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", mount], check=True)
    try:
        outside = base / "outside"
        outside.mkdir()
        disk = Disk(mount, mount / "root", outside, f"{registry.host}/diskfull/busybox:1")
        _prepare(disk, busybox_image)
        yield disk
    finally:
        with contextlib.suppress(Exception):
            (mount / "filler").unlink(missing_ok=True)
            remove_all_containers(mount / "root")
        subprocess.run(["umount", mount], check=False)
        if os.path.ismount(mount):
            subprocess.run(["umount", "-l", mount], check=False)


def _prepare(disk: Disk, busybox_image: TestImage) -> None:
    """The root with an image, an exited container with a log line and a volume;
    outside it a pushed image, an archive, a tarball and a build context."""
    import_busybox(disk.root, disk.outside, IMAGE_REF)
    lamina_ok(disk.root, "run", "--name", "done", IMAGE_REF, "echo", "hello from before")
    lamina_ok(disk.root, "volume", "create", "kept")
    publisher = LocalImages.open(disk.outside / "publisher")
    try:
        busybox_image.store(publisher, disk.pull_ref)
        push(publisher, disk.pull_ref)
        save(publisher, [disk.pull_ref], disk.outside / "image.tar", format="docker-archive")
    finally:
        publisher.close()
    (disk.outside / "rootfs.tar").write_bytes(layer_tar({"etc/motd": b"imported\n"}))
    context = disk.outside / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {IMAGE_REF}\nRUN echo built > /built\n")


def root_state(root: Path) -> dict[str, int]:
    """Every path under the root with its size (directories 0), but sqlite's -wal and
    -shm files and the lock and lease files that come and go with every command."""
    out: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == ".":
            dirnames[:] = [d for d in dirnames if d not in ("locks", "leases")]
        for d in dirnames:
            out[os.path.join(rel, d)] = 0
        for f in filenames:
            if not f.endswith(("-wal", "-shm")):
                out[os.path.join(rel, f)] = os.lstat(os.path.join(dirpath, f)).st_size
    return out


# command -> (arguments, what the error line must name besides ENOSPC)
WRITES: dict[str, tuple[list[str], str]] = {
    # The first write of a pull or load is its lease (or its first ingest).
    "pull": (["pull", "{pull_ref}"], "{root}/"),
    "import": (["import", "{outside}/rootfs.tar", "example.com/test/imported:1"], "{root}/"),
    "load": (["load", "-i", "{outside}/image.tar"], "{root}/"),
    # The first build makes build-cache.db: a database that cannot be created.
    "build": (["build", "-t", "example.com/test/built:1", "{outside}/context"], "{root}/"),
    # With the cache there, a step's container, layer and record.
    "build-step": (
        ["build", "--no-cache", "-t", "example.com/test/built:2", "{outside}/context"],
        "{root}/",
    ),
    "tag": (["tag", IMAGE_REF, "example.com/test/tagged:1"], "{root}/images.db"),
    # The container never existed: Docker's 125 (the first write is its image hold).
    "run": (["run", "--rm", IMAGE_REF, "true"], "{root}/"),
}


@pytest.mark.parametrize("command", list(WRITES))
def test_a_write_on_a_full_disk_is_one_clear_line(disk: Disk, command: str) -> None:
    args, names = WRITES[command]
    fields = {"pull_ref": disk.pull_ref, "outside": disk.outside, "root": disk.root}
    argv = [a.format(**fields) for a in args]
    if command == "build-step":
        lamina_ok(disk.root, "builder", "prune", "-f")  # the cache database exists
    before = root_state(disk.root)
    mounts = overlay_mounts(disk.root)
    with disk.full():
        r = lamina_cli(disk.root, *argv)
    assert r.returncode == (125 if command == "run" else 1), (r.stdout, r.stderr)
    line = error_line(r.stderr)
    assert f"cannot write {names.format(**fields)}" in line, line
    assert line.endswith(f": {ENOSPC}"), line
    assert "::" not in line and "internal error" not in line
    # Nothing half-written: the root is as it was (a pull keeps what it downloaded
    # for a resume, by design; the retry below consumes it).
    after = root_state(disk.root)
    if command == "pull":
        after = {p: s for p, s in after.items() if not p.startswith("content/ingest/")}
    assert after == before
    assert overlay_mounts(disk.root) == mounts
    # With space again, the same command works and leaves no scratch behind.
    lamina_ok(disk.root, *argv)
    assert scratch(disk.root) == [], "ingests or scratch left after the retry"


def scratch(root: Path) -> list[str]:
    """Ingests and snapshot scratch directories (store_leftovers less the files a
    root with containers has)."""
    return [p for p in store_leftovers(root) if p.startswith(("content/ingest/", "snapshots/."))]


def test_reads_work_on_a_full_disk(disk: Disk) -> None:
    with disk.full():
        images = lamina_ok(disk.root, "images")
        assert "example.com/test/busybox" in images
        (image,) = json.loads(lamina_ok(disk.root, "image", "inspect", IMAGE_REF))
        assert IMAGE_REF in image["RepoTags"]
        assert "done" in lamina_ok(disk.root, "ps", "-a")
        (container,) = json.loads(lamina_ok(disk.root, "inspect", "done"))
        assert container["State"]["Status"] == "exited"
        assert lamina_ok(disk.root, "logs", "done") == "hello from before\n"
        assert "kept" in lamina_ok(disk.root, "volume", "ls")
        # A write in the same state still says what it could not write.
        r = lamina_cli(disk.root, "rm", "done")
        assert r.returncode == 1
        assert error_line(r.stderr) == (
            f"lamina: error: cannot write {disk.root}/containers.db: {ENOSPC}"
        )
    # The refused rm removed nothing.
    assert "done" in lamina_ok(disk.root, "ps", "-a")
    assert lamina_ok(disk.root, "logs", "done") == "hello from before\n"
