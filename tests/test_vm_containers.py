"""What a created (not started) micro-VM container holds on to, as a process container
does: its image (``rmi`` refuses) and its volumes (``volume rm`` refuses), and what
``inspect`` shows of them. No VM boots here: ``create`` alone records all of it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lamina.image import LocalImages, import_rootfs
from lamina.testing import make_busybox_rootfs

CLI = [sys.executable, "-m", "lamina.cli.main"]
pytestmark = pytest.mark.skipif(
    shutil.which("mkfs.erofs") is None, reason="VM containers need erofs-utils"
)


def _lamina(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--root", str(root), *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    local = LocalImages.open(root)
    import_rootfs(local, make_busybox_rootfs(tmp_path / "rootfs"), reference="bb:vm")
    local.close()
    return root


def test_a_vm_container_holds_its_image(root: Path) -> None:
    r = _lamina(root, "create", "--isolation", "vm", "--name", "holder", "bb:vm", "true")
    assert r.returncode == 0, r.stderr
    r = _lamina(root, "rmi", "bb:vm")
    assert r.returncode == 1 and "is using its referenced image" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert _lamina(root, "rm", "holder").returncode == 0
    r = _lamina(root, "rmi", "bb:vm")
    assert r.returncode == 0, r.stderr


def test_a_vm_container_holds_its_volume_and_inspect_shows_it(root: Path, tmp_path: Path) -> None:
    host = tmp_path / "share"
    host.mkdir()
    r = _lamina(root, "create", "--isolation", "vm", "--name", "vol", "-v", "keep:/data",
                "-v", f"{host}:/host:ro", "bb:vm", "true")  # fmt: skip
    assert r.returncode == 0, r.stderr
    mounts = json.loads(_lamina(root, "inspect", "vol").stdout)[0]["Mounts"]
    by_dest = {m["Destination"]: m for m in mounts}
    assert by_dest["/data"]["Type"] == "volume" and by_dest["/data"]["Name"] == "keep"
    assert by_dest["/data"]["RW"] is True
    assert by_dest["/host"] == {**by_dest["/host"], "Type": "bind", "Source": str(host),
                                "RW": False}  # fmt: skip
    r = _lamina(root, "volume", "rm", "keep")
    assert r.returncode != 0 and "in use" in r.stderr
    assert _lamina(root, "volume", "ls", "-q").stdout.split() == ["keep"]
    assert _lamina(root, "rm", "vol").returncode == 0
    r = _lamina(root, "volume", "rm", "keep")
    assert r.returncode == 0, r.stderr
