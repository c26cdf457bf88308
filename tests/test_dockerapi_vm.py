"""``docker run --isolation vm``: a container the docker CLI starts runs in a
micro-VM (QEMU microvm under TCG here, Debian's cloud kernel)."""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import pytest
from dockerapi_fixtures import docker_endpoint
from runtime_fixtures import IMAGE_REF, import_busybox, lamina_ok

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None
        or shutil.which("mkfs.erofs") is None
        or not list(Path("/boot").glob("vmlinuz-*-cloud-amd64")),
        reason="needs qemu-system-x86, erofs-utils and linux-image-cloud-amd64",
    ),
]


def test_docker_run_isolation_vm(tmp_path: Path) -> None:
    root = tmp_path / "root"
    import_busybox(root, tmp_path)
    with docker_endpoint(root) as ep:
        out = ep.docker_ok("run", "--rm", "--isolation", "vm", "--network", "none", IMAGE_REF,
                           "uname", "-r", timeout=180)  # fmt: skip
        kernel = out.strip()
        assert kernel.endswith("-cloud-amd64") and kernel != platform.release(), out
        cid = ep.docker_ok("create", "--isolation", "vm", "--name", "vmc", "--network", "none",
                           IMAGE_REF, "true").strip()  # fmt: skip
        shown = json.loads(ep.docker_ok("inspect", "vmc"))[0]
        assert shown["HostConfig"]["Isolation"] == "vm"
        # The engine holds it as a VM container: lamina's own CLI says so.
        assert lamina_ok(root, "ps", "-a", "-q", "--no-trunc", "--filter", "isolation=vm") \
            == cid + "\n"  # fmt: skip
        ep.docker_ok("rm", "vmc")
        assert ep.docker_ok("ps", "-a", "-q") == ""
