"""The guest kernel as a cached asset: Debian's cloud kernel, ready for QEMU to boot.

``guest_kernel(root, arch)`` finds the newest ``vmlinuz-<ver>-cloud-<arch>`` whose modules
are in ``<modules root>/<ver>``: for the host's architecture the installed kernel
(``/boot``, ``/lib/modules``, package ``linux-image-cloud-amd64``), for a foreign one the
guest directory ``scripts/guest-kernel`` fills (``_arch``). ``root`` is the lamina root.

amd64: QEMU boots the uncompressed ELF ``vmlinux`` directly through its PVH note, which
skips the kernel's self-decompression (slow under TCG emulation); it is extracted once
into ``<root>/vm/kernels/<ver>/vmlinux``. arm64: Debian's ``vmlinuz`` is the kernel's
uncompressed ``Image``, which QEMU boots as it is (a gzip-compressed one is inflated once
into ``<root>/vm/kernels/<ver>/Image``).

Extraction does what the kernel's ``scripts/extract-vmlinux`` does, but precisely: the
bzImage setup header (boot protocol >= 2.08) gives the offset and length of the
compressed payload, whose magic says the compressor (gzip, xz, zstd, bzip2, lzma or
lz4; lz4 through the ``lz4`` tool, the rest in-process). The payload ends with the
4-byte uncompressed size the kernel build appends, which is dropped. The cache is keyed
by the source file's size and mtime (``source.json``), so a reinstalled kernel of the same
version is extracted again; files appear by atomic rename, so a crash leaves no half file.
"""

from __future__ import annotations

import bz2
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from lamina._fsutil import atomic_write
from lamina.errors import LaminaError
from lamina.vm._arch import HOST_BOOT_DIR, HOST_MODULES_ROOT, Arch, get_arch, host_arch

KERNEL_PACKAGE = "linux-image-cloud-amd64"
BOOT_DIR = HOST_BOOT_DIR
MODULES_ROOT = HOST_MODULES_ROOT
# An arm64 kernel Image's magic, at offset 0x38 of its header.
_ARM64_MAGIC = b"ARM\x64"


@dataclass(frozen=True)
class GuestKernel:
    version: str  # e.g. 6.1.0-56-cloud-amd64: also the guest's `uname -r`
    vmlinux: Path  # the extracted ELF QEMU boots (PVH)
    modules: Path  # /lib/modules/<version>: the initramfs takes drivers from here
    vmlinuz: Path | None = None  # the installed bzImage it came from
    arch: str = field(default_factory=host_arch)  # Go name: amd64, arm64


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version))


def find_kernel(
    boot_dir: Path = BOOT_DIR, modules_root: Path = MODULES_ROOT, *, arch: Arch | None = None
) -> tuple[str, Path]:
    """The newest installed cloud kernel for ``arch`` (default: the host's) with its
    modules: (version, vmlinuz path)."""
    arch = arch or get_arch()
    pattern = re.compile(rf"vmlinuz-(\d+\.\d+\.\d+-\d+-cloud-{arch.name})")
    found: list[tuple[str, Path]] = []
    try:
        names = os.listdir(boot_dir)
    except OSError:
        names = []
    for name in names:
        m = pattern.fullmatch(name)
        if m and (modules_root / m.group(1) / "modules.dep").is_file():
            found.append((m.group(1), boot_dir / name))
    if not found:
        which = f"{arch.name} guest kernel" if arch.foreign else "guest kernel"
        raise LaminaError(
            f"no {which} for micro-VMs: {boot_dir} has no vmlinuz-*-cloud-{arch.name} with "
            f"modules in {modules_root} ({arch.kernel_hint})"
        )
    return max(found, key=lambda f: _version_key(f[0]))


def guest_kernel(
    root: Path,
    *,
    arch: Arch | None = None,
    boot_dir: Path | None = None,
    modules_root: Path | None = None,
) -> GuestKernel:
    """The guest kernel for ``arch`` (default: the host's), extracted into
    ``<root>/vm/kernels/<ver>/`` if needed (``root``: the lamina root). ``boot_dir`` and
    ``modules_root`` replace the architecture's own."""
    arch = arch or get_arch()
    boot_dir = boot_dir or arch.boot_dir
    modules_root = modules_root or arch.modules_root
    version, vmlinuz = find_kernel(boot_dir, modules_root, arch=arch)
    modules = modules_root / version
    if not arch.x86:
        with open(vmlinuz, "rb") as f:
            head = f.read(0x40)
        if head[0x38:0x3C] == _ARM64_MAGIC:  # an uncompressed Image: booted in place
            return GuestKernel(version, vmlinuz, modules, vmlinuz, arch.name)
    dest = Path(root) / "vm" / "kernels" / version
    vmlinux = dest / ("vmlinux" if arch.x86 else "Image")
    st = vmlinuz.stat()
    source = {"path": str(vmlinuz), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    meta = dest / "source.json"
    try:
        if vmlinux.is_file() and json.loads(meta.read_text()) == source:
            return GuestKernel(version, vmlinux, modules, vmlinuz, arch.name)
    except (OSError, ValueError):
        pass
    if arch.x86:
        data = extract_vmlinux(vmlinuz.read_bytes(), str(vmlinuz))
    else:
        data = _inflate_image(vmlinuz.read_bytes(), str(vmlinuz))
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write(vmlinux, data)
    atomic_write(meta, json.dumps(source).encode())
    return GuestKernel(version, vmlinux, modules, vmlinuz, arch.name)


def _inflate_image(data: bytes, label: str) -> bytes:
    """An arm64 ``Image`` from a gzip-compressed ``vmlinuz`` (what older Debian ships)."""
    if data[:2] == b"\x1f\x8b":
        data = _decompress("gzip", data, label)
    if data[0x38:0x3C] != _ARM64_MAGIC:
        raise LaminaError(f"{label} is not an arm64 kernel Image")
    return data


# Magic bytes of the compressors a bzImage payload may use.
_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\x02\x21\x4c\x18", "lz4"),
)


def extract_vmlinux(image: bytes, label: str = "kernel") -> bytes:
    """The uncompressed ELF inside a bzImage."""
    if image[:4] == b"\x7fELF":
        return image  # already a vmlinux
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
        raise LaminaError(f"{label} is not a bzImage (no HdrS setup header)")
    (protocol,) = struct.unpack_from("<H", image, 0x206)
    if protocol < 0x208:
        raise LaminaError(f"{label}: boot protocol {protocol:#x} too old to locate the payload")
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = image[start : start + length]
    for magic, kind in _MAGICS:
        if payload.startswith(magic):
            data = _decompress(kind, payload[:-4], label)  # [:-4]: the appended size
            if data[:4] != b"\x7fELF":
                raise LaminaError(f"{label}: the {kind} payload is not an ELF vmlinux")
            return data
    raise LaminaError(f"{label}: unknown compression of the kernel payload")


def _decompress(kind: str, payload: bytes, label: str) -> bytes:
    try:
        if kind == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
        if kind in ("xz", "lzma"):
            fmt = lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE
            return lzma.LZMADecompressor(format=fmt).decompress(payload)
        if kind == "bzip2":
            return bz2.BZ2Decompressor().decompress(payload)
        if kind == "zstd":
            import zstandard

            return zstandard.ZstdDecompressor().decompressobj().decompress(payload)
    except (zlib.error, lzma.LZMAError, OSError, ValueError) as e:
        raise LaminaError(f"{label}: cannot decompress the {kind} payload: {e}") from None
    # lz4 (Debian's choice): the kernel uses LZ4's legacy frame, which the `lz4` tool reads.
    tool = shutil.which("lz4")
    if tool is None:
        raise LaminaError(
            f"{label} is lz4-compressed: extracting it needs lz4 (apt-get install lz4)"
        )
    proc = subprocess.run([tool, "-dc"], input=payload, capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise LaminaError(f"{label}: lz4 failed: {err[-1] if err else proc.returncode}")
    return proc.stdout
