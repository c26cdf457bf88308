"""VM snapshots: ``lamina vm snapshot create/ls/inspect/rm``, and VMs (a container's
through the CLI too) restored from one instead of booting, with a fresh clock,
hostname and random state; a damaged snapshot falls back to a cold boot.

Real QEMU under TCG. Two templates are made once for the module: ``tpl`` through the
CLI with the defaults a container gets (1 vCPU, 512 MiB, NAT), and ``other`` (384 MiB,
no network) through the API; the last test damages ``other`` and removes both.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lamina.errors import LaminaError
from lamina.image import LocalImages, import_rootfs
from lamina.testing import make_busybox_rootfs
from lamina.vm._config import NetworkAttachment, VmConfig, generate_mac
from lamina.vm._run import run_in_vm
from lamina.vm._snapshot import create_snapshot, load_snapshot, snapshot_status

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None
        or not list(Path("/boot").glob("vmlinuz-*-cloud-amd64")),
        reason="needs qemu-system-x86 and linux-image-cloud-amd64",
    ),
]
CLI = [sys.executable, "-m", "lamina.cli.main"]
IMAGE = "snaptest/busybox:1"
PROBE = (
    'echo out; echo err >&2; hostname; cat /etc/hostname; grep -c "$(hostname)" /etc/hosts; '
    "date +%s; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; exit 3"
)


def lamina(root: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--root", str(root), *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> LocalImages:
    base = tmp_path_factory.mktemp("snap")
    images = LocalImages.open(base / "root")
    import_rootfs(images, make_busybox_rootfs(base / "rootfs"), reference=IMAGE)
    r = lamina(images.root, "vm", "snapshot", "create", IMAGE, "--name", "tpl")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(
        "Created snapshot tpl of snaptest/busybox:1: amd64, 1 vCPU, 512 MiB, nat"
    )
    create_snapshot(images, IMAGE, name="other", memory_mib=384, network="none")
    return images


def nat_config(memory_mib: int = 512) -> VmConfig:
    return VmConfig(
        vcpus=1, memory_mib=memory_mib, networks=(NetworkAttachment("nat"),),
        macs=(generate_mac(),),
    )  # fmt: skip


def test_cli_ls_inspect_and_bad_input(local: LocalImages) -> None:
    root = local.root
    r = lamina(root, "vm", "snapshot", "ls")
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["NAME", "IMAGE", "MACHINE", "SIZE", "CREATED", "STATUS"]
    assert [row.split()[0] for row in rows] == ["tpl", "other"]  # oldest first
    assert rows[0].split()[1] == IMAGE and rows[0].endswith("ready")
    assert "384 MiB, none" in rows[1]

    out = lamina(root, "vm", "snapshot", "ls", "--format", "json").stdout
    listed = [json.loads(line) for line in out.splitlines()]
    assert [s["name"] for s in listed] == ["tpl", "other"]
    tpl = listed[0]
    assert (tpl["vcpus"], tpl["memory_mib"], tpl["networks"], tpl["status"]) == (
        1, 512, ["nat"], "ready",
    )  # fmt: skip
    assert re.fullmatch(r"02(:[0-9a-f]{2}){5}", tpl["macs"][0])
    assert Path(tpl["path"], "state").stat().st_size == tpl["state_size"] > 1 << 20

    (inspected,) = json.loads(lamina(root, "vm", "snapshot", "inspect", "tpl").stdout)
    assert inspected["key"]["image_id"] == local.require(IMAGE).id
    assert inspected["key"]["kernel"]["version"] == inspected["kernel_version"]
    assert inspected["qemu_version"].startswith("7.")

    bad = [
        (("create", IMAGE, "--name", "tpl"), "snapshot tpl already exists"),
        (("create", "no/such:image"), "image not known locally: no/such:image"),
        (("create", IMAGE, "--name", "../x"), "invalid snapshot name '../x'"),
        (("rm", "missing"), "no such snapshot: missing"),
        (("inspect", "missing"), "no such snapshot: missing"),
    ]
    for args, message in bad:
        r = lamina(root, "vm", "snapshot", *args, timeout=60)
        assert r.returncode != 0, args
        (line,) = r.stderr.strip().splitlines()  # one line, no traceback
        assert line.startswith(f"lamina: error: {message}"), (args, line)
    assert not [p for p in (root / "vm" / "snapshots").iterdir() if p.name.startswith(".")]


def test_restored_runs_have_their_own_clock_hostname_and_random_state(local: LocalImages) -> None:
    outs = []
    for name in ("first-host", "second-host"):
        result = run_in_vm(local, IMAGE, ["sh", "-c", PROBE], config=nat_config(), hostname=name)
        assert result.restored_from == "tpl"  # not "other", newer but another machine
        assert result.restore_error is None
        assert (result.exit_code, result.stderr) == (3, b"err\n")
        out, host, etc_hostname, hosts_lines, date, random = result.stdout.decode().splitlines()
        assert out == "out"
        assert host == etc_hostname == name
        assert hosts_lines == "1"
        assert abs(int(date) - time.time()) < 10  # not the template's clock
        assert {"restore", "configure", "workload"} <= result.timings.keys()
        assert "kernel_boot" not in result.timings
        outs.append(random)
    assert len(outs[0]) == 32 and outs[0] != outs[1]  # clones draw different bytes


def test_container_through_the_cli_starts_from_the_snapshot(local: LocalImages) -> None:
    root = local.root
    # Templates serve containers on QEMU's NAT; one on a bridge network boots cold (its
    # NICs are configured at boot), as the last run below does.
    r = lamina(root, "run", "--name", "snapped", "--isolation", "vm", "--network", "nat", IMAGE,
               "sh", "-c", PROBE)  # fmt: skip
    assert r.returncode == 3, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "out" and "err" in r.stderr
    (info,) = json.loads(lamina(root, "inspect", "snapped").stdout)
    assert info["VM"]["RestoredFrom"] == "tpl"
    assert lines[1] == lines[2] == info["Id"][:12]  # hostname: the ID prefix
    assert abs(int(lines[4]) - time.time()) < 15
    assert lamina(root, "rm", "snapped").returncode == 0

    # Published ports are this run's hostfwd rules, not the template's.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = lamina(
        root, "run", "-d", "--name", "served", "-p", f"127.0.0.1:{port}:80", "--isolation", "vm",
        "--network", "nat", IMAGE, "httpd", "-f", "-p", "80", "-h", "/etc",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    try:
        (info,) = json.loads(lamina(root, "inspect", "served").stdout)
        assert info["VM"]["RestoredFrom"] == "tpl"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/hostname", timeout=5) as resp:
                    assert resp.read() == info["Id"][:12].encode() + b"\n"
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        lamina(root, "rm", "-f", "served")

    r = lamina(root, "run", "--rm", "--isolation", "vm", IMAGE, "hostname")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"[0-9a-f]{12}\n", r.stdout)


def test_a_snapshot_for_another_machine_is_not_used(local: LocalImages) -> None:
    result = run_in_vm(local, IMAGE, ["true"], config=nat_config(memory_mib=256))
    assert result.exit_code == 0
    assert result.restored_from is None and result.restore_error is None
    assert "kernel_boot" in result.timings  # a cold boot
    # Required by name, it is refused before anything boots.
    with pytest.raises(
        LaminaError, match=r"snapshot tpl was made for another machine .*memory_mib"
    ):
        run_in_vm(local, IMAGE, ["true"], config=nat_config(memory_mib=256), snapshot="tpl")
    r = lamina(local.root, "vm", "run", "-m", "256", "--snapshot", "tpl", IMAGE, "true")
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "made for another machine" in r.stderr


def test_a_snapshot_of_an_older_agent_is_stale(local: LocalImages, tmp_path: Path) -> None:
    """After an update of lamina, VMs boot a newer agent: a snapshot of the old one can
    no longer match, and says so (``prune`` removes it), even though its files exist."""
    snap = load_snapshot(local.root, "tpl")
    assert snapshot_status(snap) == "ready"
    old_agent = tmp_path / "old" / "lamina-agent"
    old_agent.parent.mkdir()
    shutil.copy2(snap.key["agent"]["path"], old_agent)
    moved = dataclasses.replace(snap, key={**snap.key, "agent": {"path": str(old_agent)}})
    assert snapshot_status(moved) == "stale: agent changed"


def test_a_damaged_snapshot_falls_back_to_a_cold_boot(local: LocalImages) -> None:
    snap = load_snapshot(local.root, "other")
    st = snap.state.stat()
    with open(snap.state, "r+b") as f:
        f.write(b"garbage!")  # over the stream's magic
    assert snapshot_status(snap) == "broken: its state file changed since it was saved"
    # Bit rot keeps the mtime: QEMU itself must reject the state.
    os.utime(snap.state, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert snapshot_status(snap) == "ready"
    config = VmConfig(vcpus=1, memory_mib=384, networks=())
    result = run_in_vm(local, IMAGE, ["sh", "-c", "echo fine"], config=config)
    assert (result.exit_code, result.stdout) == (0, b"fine\n")
    assert result.restored_from is None
    assert result.restore_error is not None and "snapshot other" in result.restore_error
    assert "kernel_boot" in result.timings
    assert snapshot_status(load_snapshot(local.root, "other")).startswith("broken: ")

    r = lamina(local.root, "vm", "snapshot", "prune")  # the broken one only
    assert (r.returncode, r.stdout) == (0, "other\n")
    r = lamina(local.root, "vm", "snapshot", "rm", "tpl")
    assert (r.returncode, r.stdout) == (0, "tpl\n")
    assert lamina(local.root, "vm", "snapshot", "ls", "-q").stdout == ""
    assert not list((local.root / "vm" / "snapshots").iterdir())
