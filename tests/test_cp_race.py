"""``lamina cp`` against a hostile container (the CVE-2018-15664 class).

The container swaps a path between a real directory and a symlink to a *host*
directory in a tight loop while ``lamina cp`` copies into or out of that path. Paths
are resolved and files opened by a copier confined to the container's root, so
whatever the loop does at any instant, no host file is ever written or read: the
link can only ever lead somewhere inside the container. Copies that lose the race
fail with one ``lamina: error:`` line (or copy the container's own files).

Iterations: enough that the unconfined copier of before (paths resolved on the host,
then opened through ``overlay/<id>/merged``) leaked on nearly every run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
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

pytestmark = pytest.mark.timeout(180)

ITERATIONS = 12

# Swaps a directory and a symlink to a host path with renameat2(RENAME_EXCHANGE) in a
# tight loop, so the path is never missing: each lookup finds one or the other.
SWAPPER_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE 2
#endif
static int kind(const char *p) {
    struct stat st;
    if (lstat(p, &st) != 0) return 0;
    return S_ISDIR(st.st_mode) ? 'd' : S_ISLNK(st.st_mode) ? 'l' : 'f';
}
/* One directory and one symlink again, should a copy have replaced either: what
   is in the way is moved aside. */
static void repair(const char *a, const char *b, const char *target) {
    static unsigned moved;
    char aside[4200];
    int ka = kind(a), kb = kind(b);
    if ((ka == 'd' && kb == 'l') || (ka == 'l' && kb == 'd')) return;
    const char *d = ka == 'd' ? a : kb == 'd' ? b : a;
    const char *l = d == a ? b : a;
    if (kind(d) != 'd') { unlink(d); mkdir(d, 0755); }
    if (kind(l) != 'l') {
        snprintf(aside, sizeof aside, "%s.aside%u", l, moved++);
        rename(l, aside);
        symlink(target, l);
    }
}
int main(int argc, char **argv) {
    /* swap TARGET DIR...: each DIR trades places with DIR.swap, a symlink to TARGET. */
    char links[16][4096];
    int n = argc - 2;
    if (n < 1 || n > 16) return 2;
    for (int i = 0; i < n; i++) {
        snprintf(links[i], sizeof links[i], "%s.swap", argv[i + 2]);
        mkdir(argv[i + 2], 0755);
        unlink(links[i]);
        if (symlink(argv[1], links[i]) != 0) return 1;
    }
    FILE *f = fopen("/ready", "w");
    if (!f) return 1;
    fputs("ready\n", f);
    fclose(f);
    for (unsigned long k = 0;; k++) {
        for (int i = 0; i < n; i++) {
            syscall(SYS_renameat2, AT_FDCWD, argv[i + 2], AT_FDCWD, links[i], RENAME_EXCHANGE);
            if ((k & 255) == 0) repair(argv[i + 2], links[i], argv[1]);
        }
    }
}
"""


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_image_root(tmp_path_factory, "cp-race")


@pytest.fixture(scope="module")
def swapper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The static swapper binary; skips without gcc."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot build the swapper")
    d = tmp_path_factory.mktemp("swapper")
    (d / "swap.c").write_text(SWAPPER_C)
    p = subprocess.run([gcc, "-static", "-O1", "-o", str(d / "swap"), str(d / "swap.c")],
                       capture_output=True, text=True)  # fmt: skip
    if p.returncode != 0:
        pytest.skip(f"cannot build a static swapper: {p.stderr.strip()[:200]}")
    return d / "swap"


@pytest.fixture
def root(image_root: Path) -> Iterator[Path]:
    yield image_root
    remove_all_containers(image_root)


def assert_clean_failure(
    r: subprocess.CompletedProcess[str] | subprocess.CompletedProcess[bytes],
) -> None:
    """A copy that lost the race: one ``lamina: error:`` line, no traceback."""
    err = r.stderr.decode(errors="replace") if isinstance(r.stderr, bytes) else r.stderr
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lamina: error: "), err


def cp_processes(root: Path) -> list[int]:
    """Processes still running a ``lamina cp`` on ``root`` (the CLI or its copier)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(root).encode() in argv and b"cp" in argv:
            found.append(int(pid))
    return found


def start_swapper(root: Path, swapper: Path, script: str) -> None:
    """Run ``script`` in a container that has the swapper as /swap; wait for /ready."""
    ok(root, "run", "-d", "--name", "swapper", "-v", f"{swapper}:/swap:ro", IMAGE_REF,
       "sh", "-c", script)  # fmt: skip
    until(lambda: lamina_cli(root, "exec", "swapper", "cat", "/ready").stdout == "ready\n")


def host_files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if not p.is_dir())


def test_cp_into_a_directory_swapped_for_a_host_symlink(
    root: Path, tmp_path: Path, swapper: Path
) -> None:
    host_dir = tmp_path / "host-target"
    (host_dir / "payload").mkdir(parents=True)  # so writes through the link succeed
    payload = tmp_path / "payload"
    payload.mkdir()
    for i in range(150):
        (payload / f"p{i:03}").write_text("payload\n")
    mounts_before = sorted(overlay_mounts(root))
    # /drop trades places with a symlink to the host directory, all the time.
    start_swapper(root, swapper, f"exec /swap {host_dir} /drop")
    for _ in range(ITERATIONS):
        r = lamina_cli(root, "cp", str(payload), "swapper:/drop/")
        assert host_files(host_dir) == [], "a file was written into the host directory"
        if r.returncode != 0:
            assert_clean_failure(r)
    ok(root, "rm", "-f", "swapper")
    assert sorted(overlay_mounts(root)) == mounts_before
    assert cp_processes(root) == []


def test_cp_out_of_a_directory_swapped_for_a_host_symlink(
    root: Path, tmp_path: Path, swapper: Path
) -> None:
    secret = b"HOST-SECRET-" + os.urandom(8).hex().encode()
    host_dir = tmp_path / "host-secrets"
    host_dir.mkdir()
    for i in range(20):
        (host_dir / f"f{i}").write_bytes(secret + b"\n")
    mounts_before = sorted(overlay_mounts(root))
    # /race/d0../race/d9 are directories of files named as the host's, each trading
    # places with a symlink to the host directory all the time: a copier that
    # resolves paths on the host reads the host's files.
    dirs = " ".join(f"/race/d{i}" for i in range(10))
    start_swapper(
        root,
        swapper,
        f"for d in {dirs}; do mkdir -p $d; for i in $(seq 0 19); do echo inside > $d/f$i; done;"
        f" done; echo inside > /race/a.txt; exec /swap {host_dir} {dirs}",
    )
    out = tmp_path / "out"
    out.mkdir()
    inside = 0
    for i in range(ITERATIONS):
        if i % 2:
            r = subprocess.run([*CLI, "--root", str(root), "cp", "swapper:/race", "-"],
                               capture_output=True, timeout=60)  # fmt: skip
            assert secret not in r.stdout, "a host file was read"
            got = r.stdout
        else:  # into an existing directory, where a copy cut short leaves what it got
            dest = out / str(i)
            dest.mkdir()
            r = subprocess.run([*CLI, "--root", str(root), "cp", "swapper:/race", str(dest)],
                               capture_output=True, timeout=60)  # fmt: skip
            # rglob does not follow symlinks: one copied as a symlink is not a read.
            files = [p for p in dest.rglob("*") if p.is_file() and not p.is_symlink()]
            got = b"".join(p.read_bytes() for p in files)
            assert secret not in got, "a host file was read"
        inside += b"inside" in got  # /race/a.txt comes first, also in a copy cut short
        if r.returncode != 0:
            assert_clean_failure(r)
    assert inside, "no copy ever got the container's files"
    ok(root, "rm", "-f", "swapper")
    assert sorted(overlay_mounts(root)) == mounts_before
    assert cp_processes(root) == []
