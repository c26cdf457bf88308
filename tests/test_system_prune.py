"""``lamina system df`` and ``lamina system prune`` (and ``container prune``) on a root
with everything: running and stopped containers, dangling, unused and used images,
named, anonymous and used volumes, build cache, and what killed commands left (a
dead lease's scratch directory, a killed create's container directory and mount).
Output shaped like Docker's; real runc containers and a real build.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from leak_check import container_traces, kill, start_stopped
from runtime_fixtures import (
    IMAGE_REF,
    busybox_rootfs,
    cli_image_root,
    lamina_cli,
    lamina_ok,
    overlay_mounts,
    remove_all_containers,
)

from lamina.image import LocalImages, import_rootfs

pytestmark = pytest.mark.timeout(180)

OTHER = "example.com/test/other:1"
UNUSED = "example.com/test/unused:1"


@pytest.fixture
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = cli_image_root(tmp_path_factory, "sysprune")
    yield root
    remove_all_containers(root)


def _import(root: Path, rootfs: Path, ref: str, *changes: str) -> str:
    local = LocalImages.open(root)
    try:
        return str(import_rootfs(local, rootfs, reference=ref, changes=list(changes)).id)
    finally:
        local.close()


_LEFTOVER = """
import sys, os, time
from pathlib import Path
from lamina import _leases
root = Path(sys.argv[1])
lease = _leases.take(root, "save")
scratch = root / "scratch-of-a-killed-save"
lease.add_path(scratch)
scratch.mkdir()
(scratch / "partial").write_bytes(b"x" * 100000)
print("ready", flush=True)
time.sleep(1000)
"""


def _leave_a_dead_lease(root: Path) -> Path:
    proc = subprocess.Popen([sys.executable, "-c", _LEFTOVER, str(root)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    proc.kill()
    proc.wait()
    return root / "scratch-of-a-killed-save"


def _df(root: Path) -> dict[str, dict[str, str]]:
    lines = lamina_ok(root, "system", "df", "--format", "json").splitlines()
    rows = [json.loads(line) for line in lines]
    return {r["Type"]: r for r in rows}


def _counts(root: Path) -> dict[str, tuple[int, int]]:
    return {t: (int(r["TotalCount"]), int(r["Active"])) for t, r in _df(root).items()}


def _furnish(root: Path, tmp_path: Path) -> dict[str, str]:
    """Everything a root gathers; returns the names of what was made."""
    rootfs = busybox_rootfs(tmp_path / "rootfs")
    dangling = _import(root, rootfs, OTHER, "ENV VERSION=1")
    _import(root, rootfs, OTHER, "ENV VERSION=2")  # the tag moves: VERSION=1 dangles
    _import(root, rootfs, UNUSED, "ENV UNUSED=1")
    running = lamina_ok(root, "run", "-d", "-v", "inuse:/data", IMAGE_REF, "sleep", "1000")
    exited = lamina_ok(root, "run", "-d", "-v", "/anon", IMAGE_REF, "true").strip()
    lamina_ok(root, "wait", exited)
    labelled = lamina_ok(root, "create", "--label", "prune=yes", IMAGE_REF, "true").strip()
    lamina_ok(root, "volume", "create", "keepme")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {IMAGE_REF}\nRUN echo hi > /hi\n")
    lamina_ok(root, "build", "-q", "-t", "example.com/test/built:1", str(ctx))
    return {
        "running": running.strip(),
        "exited": exited,
        "labelled": labelled,
        "dangling": dangling,
        "anonymous": next(
            v for v in lamina_ok(root, "volume", "ls", "-q").split() if len(v) == 64
        ),
    }


def test_system_df_and_prune(root: Path, tmp_path: Path) -> None:
    made = _furnish(root, tmp_path)
    kill(start_stopped(root, "create:mounted", "create", IMAGE_REF, "true"))
    scratch = _leave_a_dead_lease(root)
    [orphan] = container_traces(root) - {made["running"], made["exited"], made["labelled"]}

    r = lamina_cli(root, "system", "df")  # like every command, it reconciles first
    assert r.returncode == 0
    assert f"container {orphan[:12]}: left over by an interrupted command" in r.stderr
    assert orphan not in container_traces(root)
    # ... and reaps what dead leases registered (a killed save's scratch).
    assert "save (process" in r.stderr and "was interrupted: removed 1 leftover" in r.stderr
    assert not scratch.exists()
    table = r.stdout.splitlines()
    assert table[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert [line.split("  ")[0] for line in table[1:]] == [
        "Images", "Containers", "Local Volumes", "Build Cache",
    ]  # fmt: skip
    counts = _counts(root)
    assert counts.pop("Build Cache")[0] >= 1  # the build's intermediate images
    assert counts == {
        "Images": (5, 1),  # busybox (used), other:1, its dangling old self, unused, built
        "Containers": (3, 1),
        "Local Volumes": (3, 2),  # a stopped container's anonymous volume is in use
    }
    df = _df(root)
    assert df["Images"]["Reclaimable"].endswith("%)") and df["Containers"]["Size"] != "0B"
    verbose = lamina_ok(root, "system", "df", "-v")
    for title in ("Images space usage:", "Containers space usage:",
                  "Local Volumes space usage:", "Build cache usage:"):  # fmt: skip
        assert title in verbose
    assert "inuse" in verbose and "keepme" in verbose

    r = lamina_cli(root, "system", "prune", "-f")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("Deleted Containers:\n")
    containers = out.split("\n\n")[0].splitlines()[1:]
    assert sorted(containers) == sorted([made["exited"], made["labelled"]])
    assert f"deleted: {made['dangling']}" in out
    assert "Deleted build cache objects:\n" in out
    assert out.splitlines()[-1].startswith("Total reclaimed space: ")
    assert out.splitlines()[-1] != "Total reclaimed space: 0B"
    assert not scratch.exists()
    assert container_traces(root) == {made["running"]}
    assert [m for m in overlay_mounts(root) if made["running"] not in m] == []
    assert _counts(root) == {
        "Images": (4, 1),
        "Containers": (1, 1),
        "Local Volumes": (3, 1),  # volumes only with --volumes
        "Build Cache": (0, 0),
    }

    out = lamina_ok(root, "system", "prune", "-a", "--volumes", "-f")
    assert f"Deleted Volumes:\n{made['anonymous']}\n\n" in out  # named ones stay, as in Docker
    assert "untagged: example.com/test/unused:1" in out
    assert "untagged: example.com/test/built:1" in out
    assert _counts(root) == {
        "Images": (1, 1),
        "Containers": (1, 1),
        "Local Volumes": (2, 1),
        "Build Cache": (0, 0),
    }
    assert lamina_ok(root, "ps", "-q", "--no-trunc").split() == [made["running"]]


def test_prune_filters(root: Path) -> None:
    keep = lamina_ok(root, "create", IMAGE_REF, "true").strip()
    drop = lamina_ok(root, "create", "--label", "prune=yes", IMAGE_REF, "true").strip()
    out = lamina_ok(root, "system", "prune", "-f", "--filter", "label=prune=yes")
    assert out.startswith(f"Deleted Containers:\n{drop}\n\n")
    assert lamina_ok(root, "ps", "-a", "-q", "--no-trunc").split() == [keep]
    out = lamina_ok(root, "container", "prune", "-f", "--filter", "until=1h")
    assert out == "Total reclaimed space: 0B\n"  # created just now: not before 1h ago
    out = lamina_ok(root, "container", "prune", "-f", "--filter", "label!=prune")
    assert out.splitlines()[:2] == ["Deleted Containers:", keep]
    assert out.splitlines()[-1].startswith("Total reclaimed space: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--volumes", "--filter", "until=1h"], 'the "until" filter is not supported'),
        (["--filter", "colour=red"], "invalid filter 'colour=red'"),
        (["--filter", "until=yesterday"], "invalid --filter until 'yesterday'"),
    ],
)
def test_prune_refuses_bad_filters_before_doing_anything(
    root: Path, args: list[str], message: str
) -> None:
    stopped = lamina_ok(root, "create", IMAGE_REF, "true").strip()
    r = lamina_cli(root, "system", "prune", "-f", *args)
    assert r.returncode != 0
    [line] = r.stderr.splitlines()
    assert line.startswith("lamina: error: ") and message in line
    assert lamina_ok(root, "ps", "-a", "-q", "--no-trunc").split() == [stopped]


def test_prune_releases_stale_image_holds_only(root: Path) -> None:
    """An image hold whose container is gone everywhere (a remover killed after the
    directory went) pins the image for nothing: prune releases it. A micro-VM
    container's hold is kept: the VM backend keeps that container."""
    from leak_check import container_holds

    vm = lamina_ok(root, "create", "--isolation", "vm", "--label", "keep=1", IMAGE_REF, "true")
    vm = vm.strip()
    stale = "ab" * 32
    local = LocalImages.open(root)
    try:
        local.images.hold(f"container:{stale}", local.images.resolve(IMAGE_REF).digest)
    finally:
        local.close()
    r = lamina_cli(root, "container", "prune", "-f", "--filter", "label!=keep")
    assert r.returncode == 0
    assert f"container {stale[:12]}: released its hold on image" in r.stderr
    assert container_holds(root) == [f"container:{vm}"]
    rmi = lamina_cli(root, "rmi", IMAGE_REF)
    assert rmi.returncode != 0 and "is using its referenced image" in rmi.stderr, rmi.stderr
    lamina_ok(root, "rm", vm)
    assert container_holds(root) == []
