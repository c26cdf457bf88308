"""The generated initramfs a lamina micro-VM boots with, cached by content.

Debian's cloud kernel has its virtio drivers as modules, so the initramfs carries them,
taken from ``/lib/modules/<ver>`` of the very kernel that boots, with their dependencies
from ``modules.dep`` (and ``pre:`` soft dependencies from ``modules.softdep``), in load
order. Its ``/init`` is the static guest agent (``agent.c``), which loads the modules listed
in ``/lib/modules/load.list`` itself (and those of ``net.list`` only for a VM with a
network, and those of ``fs.list``, fuse and virtiofs, only for a VM with shared
directories, so one initramfs serves every VM). The agent forks nothing before the
workload; busybox is there only for the host to run as the agent's file tools.

Layout::

    /init                         the agent (PID 1)
    /lib/modules/NN-<name>.ko     modules, NN = load order
    /lib/modules/load.list        their paths, one per line
    /lib/modules/net.list         the same for the network driver, loaded on demand
    /lib/modules/fs.list          the same for virtio-fs (shared directories), on demand
    /dev /proc /sys /lower /rw /newroot    mount points
    /bin/busybox, /bin/sh -> busybox       the file tools (second archive)

The archive is cpio "newc", gzip-compressed, written by this module (no ``cpio`` tool);
a static busybox of the guest's architecture (the agent's file tools: ``EXEC_TOOL``,
``EXEC_HOST``; ``_arch.Arch.busybox``), when given, follows as a second, uncompressed
cpio archive (``/bin/busybox``, ``/bin/sh``), which the kernel unpacks without inflating
it at every boot.
It is stored as ``<root>/vm/initramfs/<key>.cpio.gz`` where the key hashes the agent, the
kernel's architecture and version, each module's and busybox's path, size and mtime, and
the format version: a rebuilt agent or an updated kernel gives a new file, an unchanged
one costs a few stats.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from lamina._fsutil import atomic_write
from lamina.errors import LaminaError
from lamina.vm._kernel import GuestKernel

FORMAT_VERSION = 2  # 2: busybox in an uncompressed second archive
# What every VM needs: the virtio-mmio transport (microvm's devices, found through ACPI;
# arm64 virt's, through the device tree),
# the agent's virtio-serial port, the root block device and its filesystems.
BASE_MODULES: tuple[str, ...] = ("virtio_mmio", "virtio_console", "virtio_blk", "erofs", "overlay")
NET_MODULES: tuple[str, ...] = ("virtio_net",)
VSOCK_MODULES: tuple[str, ...] = ("vmw_vsock_virtio_transport",)
VIRTIOFS_MODULES: tuple[str, ...] = ("virtiofs",)

_DIRS = ("dev", "proc", "sys", "lib", "lib/modules", "lower", "rw", "newroot")


def _norm(name: str) -> str:
    return name.replace("-", "_")


def module_order(modules_dir: Path, names: Iterable[str]) -> list[str]:
    """Module files (relative to ``modules_dir``) for ``names`` and everything they
    depend on, each after its dependencies."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    try:
        text = (modules_dir / "modules.dep").read_text()
    except OSError as e:
        raise LaminaError(f"cannot read {modules_dir}/modules.dep: {e.strerror}") from None
    for line in text.splitlines():
        path, _, rest = line.partition(":")
        if not path:
            continue
        deps[path] = rest.split()
        by_name[_norm(os.path.basename(path).split(".ko")[0])] = path
    soft: dict[str, list[str]] = {}
    try:
        for line in (modules_dir / "modules.softdep").read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "softdep":
                pre = words[3 : words.index("post:")] if "post:" in words else words[3:]
                if words[2] == "pre:":
                    soft[_norm(words[1])] = pre
    except OSError:
        pass

    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        name = _norm(os.path.basename(path).split(".ko")[0])
        for pre in soft.get(name, []):
            if _norm(pre) in by_name:  # absent: built into the kernel
                visit(by_name[_norm(pre)])
        # modules.dep lists every (transitive) dependency, nearest first.
        for dep in reversed(deps.get(path, [])):
            visit(dep)
        order.append(path)

    for name in names:
        wanted = by_name.get(_norm(name))
        if wanted is not None:  # None: built in (e.g. ext4) or not needed by this kernel
            visit(wanted)
    return order


def initramfs(
    root: Path,
    kernel: GuestKernel,
    agent: Path,
    *,
    modules: Sequence[str] = BASE_MODULES,
    net_modules: Sequence[str] = NET_MODULES,
    busybox: Path | None = None,
    fs_modules: Sequence[str] = VIRTIOFS_MODULES,
) -> Path:
    """The initramfs for ``kernel`` with ``agent`` as /init, built once and cached under
    the lamina root ``root``."""
    files = module_order(kernel.modules, modules)
    net_files = [f for f in module_order(kernel.modules, net_modules) if f not in files]
    fs_files = [
        f for f in module_order(kernel.modules, fs_modules) if f not in files and f not in net_files
    ]
    header = f"lamina-initramfs {FORMAT_VERSION} {kernel.arch} {kernel.version}\n"
    h = hashlib.sha256(header.encode())
    h.update(hashlib.sha256(agent.read_bytes()).digest())
    for kind, members in (("base", files), ("net", net_files), ("fs", fs_files)):
        for rel in members:
            st = (kernel.modules / rel).stat()
            h.update(f"{kind} {rel} {st.st_size} {st.st_mtime_ns}\n".encode())
    if busybox is not None:
        st = busybox.stat()
        h.update(f"busybox {busybox} {st.st_size} {st.st_mtime_ns}\n".encode())
    out = Path(root) / "vm" / "initramfs" / f"{h.hexdigest()[:32]}.cpio.gz"
    if out.is_file():
        return out

    archive = CpioWriter()
    for d in _DIRS:
        archive.add(d, 0o40755)
    lists: dict[str, list[str]] = {"load.list": [], "net.list": [], "fs.list": []}
    for i, rel in enumerate(files + net_files + fs_files):
        name = f"lib/modules/{i:02d}-{os.path.basename(rel)}"
        archive.add(name, 0o100644, (kernel.modules / rel).read_bytes())
        group = "load.list" if i < len(files) else "net.list"
        if i >= len(files) + len(net_files):
            group = "fs.list"
        lists[group].append("/" + name)
    for list_name, paths in lists.items():
        archive.add(f"lib/modules/{list_name}", 0o100644, "".join(p + "\n" for p in paths).encode())
    archive.add("init", 0o100755, agent.read_bytes())
    # Level 6: the guest inflates this on every boot, and it is small either way.
    data = gzip.compress(archive.finish(), compresslevel=6, mtime=0)
    if busybox is not None:
        # A second, uncompressed archive (the kernel unpacks concatenated ones): inflating
        # busybox's 2 MB cost every boot ~50-100 ms under TCG; copying them costs ~nothing.
        tools = CpioWriter(first_ino=archive.next_ino)
        tools.add("bin", 0o40755)
        tools.add("bin/busybox", 0o100755, busybox.read_bytes())
        tools.add("bin/sh", 0o120777, b"busybox")
        data += b"\0" * (-len(data) % 4) + tools.finish()  # a cpio header starts 4-aligned
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, data)
    return out


class CpioWriter:
    """A cpio archive in the "newc" format the kernel unpacks into its initial rootfs."""

    def __init__(self, first_ino: int = 1) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._ino = first_ino

    @property
    def next_ino(self) -> int:
        """The inode number the next entry gets (a following archive starts there)."""
        return self._ino

    def _put(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        pad = -self._size % 4
        if pad:
            self._parts.append(b"\0" * pad)
            self._size += pad

    def add(self, name: str, mode: int, data: bytes = b"") -> None:
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        self._ino += 1
        self._put(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        if data:
            self._put(data)

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return b"".join(self._parts)
