"""Helpers for runtime tests: a busybox image in a fresh lamina root, and configs.

The image is made offline from Debian's busybox-static (``lamina.testing``) and
imported with ``import_rootfs``, as a user would with ``lamina import``. It has a
non-root user ``app`` (1000:1000, home /home/app) besides root and nobody.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from lamina.image import LocalImages, import_rootfs
from lamina.runtime import ContainerConfig
from lamina.testing import make_busybox_rootfs

IMAGE_REF = "example.com/test/busybox:latest"


def busybox_rootfs(dest: Path) -> Path:
    make_busybox_rootfs(dest)
    with open(dest / "etc" / "passwd", "a") as f:
        f.write("app:x:1000:1000:app:/home/app:/bin/sh\n")
    with open(dest / "etc" / "group", "a") as f:
        f.write("app:x:1000:\n")
    (dest / "home" / "app").mkdir(parents=True, exist_ok=True)
    os.chown(dest / "home" / "app", 1000, 1000)
    return dest


def import_busybox(root: Path, scratch: Path, reference: str = IMAGE_REF) -> str:
    """Import the busybox rootfs into the lamina root; returns the image ID."""
    rootfs = busybox_rootfs(scratch / "rootfs")
    local = LocalImages.open(root)
    try:
        record = import_rootfs(
            local, rootfs, reference=reference, changes=['CMD ["/bin/sh"]', "ENV LANG=C.UTF-8"]
        )
        return str(record.id)
    finally:
        local.close()


def config(image: str, *cmd: str, **kwargs: Any) -> ContainerConfig:
    """A ContainerConfig running ``cmd`` (the image's CMD when empty)."""
    return ContainerConfig(image=image, command=list(cmd) if cmd else None, **kwargs)


def overlay_mounts(root: Path) -> list[str]:
    """Mount points under ``root`` (from /proc/self/mountinfo)."""
    prefix = str(root.resolve())
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            if point.startswith(prefix):
                out.append(point)
    return out


def lamina_cgroups(cid: str) -> list[str]:
    """Existing cgroup dirs of container ``cid`` in every hierarchy."""
    base = Path("/sys/fs/cgroup")
    found = []
    for hierarchy in base.iterdir():
        for d in (hierarchy / "lamina" / cid, base / "lamina" / cid):
            if d.is_dir():
                found.append(str(d))
    return sorted(set(found))


def runc_list(root: Path) -> list[str]:
    out = subprocess.run(
        ["runc", "--root", str(root / "runc"), "list", "-q"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return out.split()
