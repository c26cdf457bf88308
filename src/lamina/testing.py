"""Helpers for tests, demos and benchmarks that must work offline.

No public registry is reachable from the machines lamina is tested on, so first
images are made from Debian's ``busybox-static`` binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BUSYBOX = Path("/bin/busybox")


def make_busybox_rootfs(dest: Path, *, busybox: Path = BUSYBOX) -> Path:
    """A minimal root filesystem: static busybox with its applet symlinks, /etc
    passwd/group entries for root and nobody, and the usual empty dirs."""
    if not busybox.exists():
        raise FileNotFoundError(f"{busybox} is missing (apt-get install busybox-static)")
    for d in ("bin", "etc", "tmp", "root", "proc", "sys", "dev", "var", "home", "usr/bin"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    shutil.copy2(busybox, dest / "bin" / "busybox")
    applets = subprocess.run(
        [str(busybox), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        link = dest / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    (dest / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    )
    (dest / "etc" / "group").write_text("root:x:0:\nnobody:x:65534:\n")
    return dest
