"""VmConfig: every rule refused with a message naming its field, defaults, generated
identifier and MACs, and the JSON round trip a saved VM state relies on."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lamina.errors import LaminaError
from lamina.vm import (
    BootLog,
    NetworkAttachment,
    VmConfig,
    VmConfigBuilder,
    VmConfigError,
)

QCOW2_HEADER = b"QFI\xfb" + b"\0\0\0\x03" + bytes(504)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(4096))
    qcow = tmp_path / "disk.qcow2"
    qcow.write_bytes(QCOW2_HEADER)
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF" + bytes(60))
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"070701")
    share = tmp_path / "share"
    share.mkdir()
    return {
        "raw": raw,
        "qcow": qcow,
        "kernel": kernel,
        "initrd": initrd,
        "share": share,
        "dir": tmp_path,
    }


def test_defaults() -> None:
    c = VmConfigBuilder().build()
    assert c.vcpus == 4
    assert c.memory_mib == 1024
    assert c.memory_bytes == 1 << 30
    assert c.networks == (NetworkAttachment("nat"),)
    assert c.block_devices == () and c.shared_dirs == ()
    assert c.kernel is None  # bundled
    assert c.initrd is None and c.init_block is None
    assert c.cmdline == ()
    assert c.boot_log == BootLog("none")
    assert len(c.macs) == 1


def test_generated_identity_is_valid_and_unique() -> None:
    a, b = VmConfig.builder().build(), VmConfig.builder().network("nat").network("nat").build()
    assert a.machine_id and a.machine_id != b.machine_id
    assert len(b.macs) == 2 and len(set(b.macs)) == 2
    for mac in (*a.macs, *b.macs):
        first = int(mac[:2], 16)
        assert first & 0b10 and not first & 0b01  # locally administered, unicast
        assert len(mac.split(":")) == 6


def test_full_config_and_qcow2_detection(files: dict[str, Path]) -> None:
    c = (
        VmConfigBuilder()
        .vcpus(2)
        .memory_mib(128)
        .network("nat")
        .network("tap", tap="lamina0", subnet="10.0.0.0/30")
        .block_device(files["raw"])
        .block_device(files["qcow"], read_only=True)
        .shared_dir(files["share"], "data")
        .kernel(files["kernel"])
        .initrd(files["initrd"])
        .init_block(files["raw"])
        .cmdline("quiet", "lamina.debug=1")
        .boot_log(f"file:{files['dir'] / 'boot.log'}")
        .machine_id("vm-1")
        .macs(["02:00:00:00:00:01", "0A:00:00:00:00:02"])
        .build()
    )
    assert [b.format for b in c.block_devices] == ["raw", "qcow2"]
    assert c.block_devices[1].read_only
    assert c.macs == ("02:00:00:00:00:01", "0a:00:00:00:00:02")  # normalised
    assert c.boot_log == BootLog("file", files["dir"] / "boot.log")
    assert c.machine_id == "vm-1"


def test_no_network_needs_no_mac() -> None:
    c = VmConfigBuilder().network("none").build()
    assert c.networks == () and c.macs == ()
    assert VmConfigBuilder().no_network().build().networks == ()


def test_round_trip_keeps_identity_and_devices(files: dict[str, Path]) -> None:
    c = (
        VmConfigBuilder()
        .vcpus(1)
        .network("tap", tap="tap7", subnet="192.168.7.0/24")
        .block_device(files["qcow"], read_only=True)
        .shared_dir(files["share"], "work", read_only=True)
        .kernel(files["kernel"])
        .cmdline("console=ttyS0")
        .boot_log("stdout")
        .build()
    )
    text = json.dumps(c.to_dict())
    again = VmConfig.from_dict(json.loads(text))
    assert again == c
    assert again.machine_id == c.machine_id and again.macs == c.macs
    assert json.loads(text)["kernel"] == str(files["kernel"])
    assert VmConfig.from_dict(VmConfigBuilder().build().to_dict()).kernel is None


def test_from_dict_rechecks_files(files: dict[str, Path]) -> None:
    d = VmConfigBuilder().block_device(files["raw"]).build().to_dict()
    files["raw"].unlink()
    with pytest.raises(VmConfigError, match=r"block_devices\[0\]\.path: .* does not exist"):
        VmConfig.from_dict(d)
    with pytest.raises(VmConfigError, match="version: unsupported"):
        VmConfig.from_dict({"version": 99})
    with pytest.raises(VmConfigError, match="networks: must be a list"):
        VmConfig.from_dict({"networks": "nat"})


def _chmod_unreadable(p: Path) -> Path:
    p.chmod(0)
    return p


# Each case: (builder steps, field the error names, message fragment).
Step = Callable[[VmConfigBuilder, dict[str, Path]], object]

CASES: list[tuple[str, Step, str, str]] = [
    ("vcpus zero", lambda b, f: b.vcpus(0), "vcpus", "must be at least 1, got 0"),
    ("vcpus bool", lambda b, f: b.vcpus(True), "vcpus", "must be an integer"),
    ("memory low", lambda b, f: b.memory_mib(127), "memory_mib", "at least 128 MiB, got 127"),
    (
        "too many networks",
        lambda b, f: [b.network("nat") for _ in range(9)],
        "networks",
        "at most 8 attachments, got 9",
    ),
    ("bad kind", lambda b, f: b.network("bridge"), "networks[0].kind", "'tap' or 'netns'"),
    (
        "tap without name",
        lambda b, f: b.network("tap", subnet="10.0.0.0/30"),
        "networks[0].tap",
        "needs the tap device name",
    ),
    (
        "tap bad name",
        lambda b, f: b.network("tap", tap="a/b", subnet="10.0.0.0/30"),
        "networks[0].tap",
        "not a valid interface name",
    ),
    (
        "tap without subnet",
        lambda b, f: b.network("tap", tap="tap0"),
        "networks[0].subnet",
        "needs a subnet",
    ),
    (
        "subnet /31",
        lambda b, f: b.network("tap", tap="tap0", subnet="10.0.0.0/31"),
        "networks[0].subnet",
        "prefix /31 is too small, use /30 or shorter",
    ),
    (
        "subnet not cidr",
        lambda b, f: b.network("tap", tap="tap0", subnet="10.0.0.0"),
        "networks[0].subnet",
        "not CIDR notation",
    ),
    (
        "subnet garbage",
        lambda b, f: b.network("tap", tap="tap0", subnet="10.0.0.300/24"),
        "networks[0].subnet",
        "not a valid CIDR subnet",
    ),
    (
        "subnet host bits",
        lambda b, f: b.network("tap", tap="tap0", subnet="10.0.0.1/30"),
        "networks[0].subnet",
        "has host bits set",
    ),
    (
        "subnet ipv6",
        lambda b, f: b.network("tap", tap="tap0", subnet="fd00::/64"),
        "networks[0].subnet",
        "only IPv4",
    ),
    (
        "nat with tap",
        lambda b, f: b.network("nat", tap="tap0"),
        "networks[0].tap",
        "only a tap attachment",
    ),
    (
        "too many disks",
        lambda b, f: [b.block_device(_copy(f, i), read_only=True) for i in range(64)],
        "block_devices",
        "at most 63 devices, got 64",
    ),
    (
        "missing disk",
        lambda b, f: b.block_device(f["dir"] / "nope.img"),
        "block_devices[0].path",
        "does not exist",
    ),
    (
        "disk is a dir",
        lambda b, f: b.block_device(f["share"], format="raw"),
        "block_devices[0].path",
        "is not a file or block device",
    ),
    (
        "duplicate disk",
        lambda b, f: b.block_device(f["raw"]).block_device(f["raw"]),
        "block_devices[1].path",
        "is already block_devices[0]",
    ),
    (
        "raw is qcow2",
        lambda b, f: b.block_device(f["qcow"], format="raw"),
        "block_devices[0].format",
        "is a qcow2 image, not raw",
    ),
    (
        "qcow2 is raw",
        lambda b, f: b.block_device(f["raw"], format="qcow2"),
        "block_devices[0].format",
        "is not a qcow2 image",
    ),
    (
        "unknown format",
        lambda b, f: b.block_device(f["raw"], format="vmdk"),
        "block_devices[0].format",
        "must be raw or qcow2",
    ),
    (
        "empty tag",
        lambda b, f: b.shared_dir(f["share"], ""),
        "shared_dirs[0].tag",
        "must not be empty",
    ),
    (
        "long tag",
        lambda b, f: b.shared_dir(f["share"], "t" * 37),
        "shared_dirs[0].tag",
        "longer than 36 bytes",
    ),
    (
        "duplicate tag",
        lambda b, f: b.shared_dir(f["share"], "x").shared_dir(f["dir"], "x"),
        "shared_dirs[1].tag",
        "already used by shared_dirs[0]",
    ),
    (
        "shared dir missing",
        lambda b, f: b.shared_dir(f["dir"] / "gone", "x"),
        "shared_dirs[0].path",
        "does not exist",
    ),
    (
        "shared dir is file",
        lambda b, f: b.shared_dir(f["raw"], "x"),
        "shared_dirs[0].path",
        "is not a directory",
    ),
    ("kernel missing", lambda b, f: b.kernel(f["dir"] / "bzImage"), "kernel", "does not exist"),
    ("initrd missing", lambda b, f: b.initrd(f["dir"] / "x.cpio"), "initrd", "does not exist"),
    (
        "init block missing",
        lambda b, f: b.init_block(f["dir"] / "init.img"),
        "init_block",
        "does not exist",
    ),
    (
        "cmdline newline",
        lambda b, f: b.cmdline("quiet", "a\nb"),
        "cmdline[1]",
        "must not contain a newline",
    ),
    ("cmdline nul", lambda b, f: b.cmdline("a\0b"), "cmdline[0]", "must not contain a NUL"),
    ("cmdline empty", lambda b, f: b.cmdline(" "), "cmdline[0]", "must not be empty"),
    ("boot log kind", lambda b, f: b.boot_log("syslog"), "boot_log", "none, stdout or file:PATH"),
    ("boot log no path", lambda b, f: b.boot_log("file:"), "boot_log", "needs a path"),
    (
        "boot log dir missing",
        lambda b, f: b.boot_log(f"file:{f['dir'] / 'no' / 'boot.log'}"),
        "boot_log",
        "does not exist",
    ),
    ("boot log is dir", lambda b, f: b.boot_log(f"file:{f['share']}"), "boot_log", "a directory"),
    ("machine id empty", lambda b, f: b.machine_id(""), "machine_id", "non-empty"),
    ("machine id space", lambda b, f: b.machine_id("a b"), "machine_id", "spaces or control"),
    (
        "mac count",
        lambda b, f: b.network("nat").network("nat").macs(["02:00:00:00:00:01"]),
        "macs",
        "2 network(s) need as many MACs, got 1",
    ),
    ("mac none given", lambda b, f: b.macs([]), "macs", "need as many MACs, got 0"),
    ("mac malformed", lambda b, f: b.macs(["02:00:00:00:00"]), "macs[0]", "is not a MAC address"),
    ("mac not hex", lambda b, f: b.macs(["02:00:00:00:00:zz"]), "macs[0]", "is not a MAC"),
    (
        "mac global",
        lambda b, f: b.macs(["00:16:3e:12:34:56"]),  # a vendor (Xen) OUI
        "macs[0]",
        "not locally administered",
    ),
    ("mac multicast", lambda b, f: b.macs(["03:00:00:00:00:01"]), "macs[0]", "multicast"),
    (
        "mac duplicate",
        lambda b, f: b.network("nat").network("nat").macs(["02:00:00:00:00:01"] * 2),
        "macs[1]",
        "already used by macs[0]",
    ),
]


def _copy(f: dict[str, Path], i: int) -> Path:
    p = f["dir"] / f"d{i}.img"
    p.write_bytes(b"")
    return p


@pytest.mark.parametrize(
    ("step", "field", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rule_rejected(files: dict[str, Path], step: Step, field: str, message: str) -> None:
    b = VmConfigBuilder()
    step(b, files)
    with pytest.raises(VmConfigError) as info:
        b.build()
    err = info.value
    assert isinstance(err, LaminaError) and isinstance(err, ValueError)
    assert err.field == field, str(err)
    assert message in str(err)
    assert str(err).startswith(f"vm config: {field}: ")
    assert "\n" not in str(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes any file")
def test_unreadable_and_unwritable(files: dict[str, Path]) -> None:
    _chmod_unreadable(files["raw"])
    with pytest.raises(VmConfigError, match="is not readable"):
        VmConfigBuilder().block_device(files["raw"], format="raw").build()


@pytest.fixture
def immutable(files: dict[str, Path]) -> Iterator[Path]:
    """A file nobody may write, not even root (the immutable attribute)."""
    path = files["raw"]
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    yield path
    subprocess.run(["chattr", "-i", str(path)], check=True)


def test_unwritable_disk_needs_read_only_attach(immutable: Path) -> None:
    with pytest.raises(VmConfigError, match=r"block_devices\[0\]\.path: .* is not writable"):
        VmConfigBuilder().block_device(immutable).build()
    c = VmConfigBuilder().block_device(immutable, read_only=True).build()
    assert c.block_devices[0].read_only


def test_several_problems_are_reported_together() -> None:
    with pytest.raises(VmConfigError) as info:
        VmConfigBuilder().vcpus(0).memory_mib(64).build()
    assert [f for f, _ in info.value.problems] == ["vcpus", "memory_mib"]
    assert str(info.value).count("vm config:") == 2


def test_direct_construction_is_validated_too() -> None:
    import dataclasses

    c = VmConfigBuilder().build()
    with pytest.raises(VmConfigError, match="vcpus"):
        dataclasses.replace(c, vcpus=0)
    with pytest.raises(VmConfigError, match="macs"):
        dataclasses.replace(c, networks=(NetworkAttachment(), NetworkAttachment()))


def test_qemu_default_prefix_is_locally_administered() -> None:
    # 0x52 = 0b01010010: QEMU's 52:54:00 prefix has the local bit set and is accepted.
    assert VmConfigBuilder().macs(["52:54:00:12:34:56"]).build().macs == ("52:54:00:12:34:56",)
