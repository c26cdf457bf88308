"""VM base bundles for ``--vm-base``: finding one, fitting it to a container, and the
guest kernel it boots with lamina's agent.

Lifecycle (``VmTasks.prepare`` resolves and checks; its supervisor boots):

- ``resolve_base(local, ref)``: ``ref`` is a bundle directory (used in place) or a
  registry reference, pulled once into ``<root>/vm/bases/``. Pulled bundles are kept
  by manifest digest (``sha256-<hex>/``: two tags of one bundle share a copy), and
  ``refs/<sha256 of the reference>.json`` remembers what a tag resolved to, so a
  re-run finds its bundle without asking the registry (as ``docker run`` does with a
  local image). A bundle appears by rename (``pull_bundle``), the ref record by
  ``atomic_write``: an interrupted pull leaves nothing half-written.
- ``fit_shape``: the bundle's architecture must be the host's, and its minimum vCPUs
  and memory are met: a default shape is raised to them, an explicit smaller
  ``--cpus``/``--memory`` is refused.
- ``base_kernel(root, bundle)``: the ``GuestKernel`` for the bundle's kernel, with the
  modules lamina's initramfs needs. QEMU microvm boots a PVH ELF directly and a
  bzImage through the Linux boot protocol; a bzImage is turned into its ELF once
  (``vm/kernels/bundle-<kernel sha256>/vmlinux``, faster under TCG: no
  self-decompression) when that ELF has a PVH note, else booted as it is. The modules
  come from the host's ``/lib/modules/<version>`` when the host has that kernel, else
  from the bundle's disk (``debugfs``, no mount) or its initrd (a cpio, read here);
  taken ones are cached under ``vm/bases/modules/<key>/``. A module the agent needs
  that is neither there nor built in fails with one line naming it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina._fsutil import atomic_write
from lamina.errors import LaminaError
from lamina.vm._bundle import Bundle, validate_bundle
from lamina.vm._initramfs import BASE_MODULES, NET_MODULES, VIRTIOFS_MODULES, module_order
from lamina.vm._kernel import MODULES_ROOT, GuestKernel, extract_vmlinux

if TYPE_CHECKING:
    from lamina.image import LocalImages
    from lamina.registry import RegistryConfig

_MODULE_LISTS = ("modules.dep", "modules.softdep", "modules.builtin")


@dataclass(frozen=True)
class VmBase:
    """A bundle ready to boot: where it is and where it came from."""

    reference: str  # as the user gave it
    bundle: Bundle
    digest: str = ""  # the manifest digest of a pulled bundle ("" for a directory)

    @property
    def path(self) -> Path:
        return self.bundle.path

    def to_dict(self) -> dict[str, Any]:
        b = self.bundle
        return {
            "reference": self.reference,
            "path": str(b.path),
            "digest": self.digest,
            "architecture": b.architecture,
            "kernel_version": b.kernel_version,
            "min_vcpus": b.min_vcpus,
            "min_memory_mib": b.min_memory_mib,
        }


class BaseError(LaminaError):
    """``--vm-base`` names no usable bundle."""


def resolve_base(
    local: LocalImages,
    ref: str,
    *,
    config: RegistryConfig | None = None,
    progress: Any = None,
) -> VmBase:
    """The bundle ``ref`` names: a directory, or a reference pulled into the cache
    (``progress``: a registry progress sink for that download)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return VmBase(ref, _checked(path.absolute(), ref))
    if ref.startswith(("/", "./", "../", "~")) or ref in (".", ".."):
        raise BaseError(f"--vm-base {ref}: no such bundle directory")
    from lamina.errors import InvalidReference
    from lamina.image import parse_reference

    try:
        parsed = parse_reference(ref)
    except InvalidReference as e:
        raise BaseError(f"--vm-base {ref}: neither a bundle directory nor a reference ({e})")
    bases = Path(local.root) / "vm" / "bases"
    record = bases / "refs" / (hashlib.sha256(str(parsed).encode()).hexdigest() + ".json")
    digest = parsed.digest or _recorded_digest(record, str(parsed))
    if digest and (bases / _dir_name(digest)).is_dir():
        return VmBase(ref, _checked(bases / _dir_name(digest), ref), digest)
    try:
        digest = _pull(local, parsed, bases, config, progress)
    except LaminaError as e:
        raise BaseError(f"--vm-base {ref}: {e}") from None
    if not parsed.digest:
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(record, json.dumps({"reference": str(parsed), "digest": digest}).encode())
    return VmBase(ref, _checked(bases / _dir_name(digest), ref), digest)


def _dir_name(digest: str) -> str:
    return digest.replace(":", "-")


def _recorded_digest(record: Path, reference: str) -> str:
    try:
        doc = json.loads(record.read_text())
    except (OSError, ValueError):
        return ""
    ok = isinstance(doc, dict) and doc.get("reference") == reference
    return str(doc.get("digest", "")) if ok else ""


def _pull(
    local: LocalImages, parsed: Any, bases: Path, config: RegistryConfig | None, progress: Any
) -> str:
    """Pull ``parsed`` into ``bases/<digest>`` unless that is there; its digest."""
    from lamina.registry import RegistryClient, RegistryConfig
    from lamina.vm._bundle import pull_bundle

    client = RegistryClient(parsed.domain, config=config or RegistryConfig.load())
    try:
        digest = parsed.digest or client.head_manifest(parsed.path, parsed.tag or "latest")
        dest = bases / _dir_name(digest)
        if not dest.is_dir():
            bases.mkdir(parents=True, exist_ok=True)
            try:
                pull_bundle(
                    local, f"{parsed.name}@{digest}", dest, client=client, progress=progress
                )
            except LaminaError:
                if not (dest / "bundle.json").is_file():  # not another run's pull, done first
                    raise
    finally:
        client.close()
    return str(digest)


def _checked(path: Path, ref: str) -> Bundle:
    from lamina.image import host_platform

    try:
        bundle = validate_bundle(path)
    except LaminaError as e:
        raise BaseError(f"--vm-base {ref}: {e}") from None
    host = host_platform().architecture
    if bundle.architecture != host:
        raise BaseError(
            f"--vm-base {ref}: the bundle is for {bundle.architecture}, this host runs "
            f"{host} micro-VMs"
        )
    return bundle


def fit_shape(
    base: VmBase, vcpus: int, memory_mib: int, *, cpus_given: bool, memory_given: bool
) -> tuple[int, int]:
    """(vCPUs, memory MiB) meeting the bundle's minimum: defaults are raised to it, an
    explicit smaller --cpus or --memory is refused."""
    b = base.bundle
    if vcpus < b.min_vcpus:
        if cpus_given:
            raise BaseError(
                f"--vm-base {base.reference} needs at least {b.min_vcpus} vCPUs: --cpus gives "
                f"{vcpus}"
            )
        vcpus = b.min_vcpus
    if memory_mib < b.min_memory_mib:
        if memory_given:
            raise BaseError(
                f"--vm-base {base.reference} needs at least {b.min_memory_mib} MiB of memory: "
                f"--memory gives {memory_mib} MiB"
            )
        memory_mib = b.min_memory_mib
    return vcpus, memory_mib


# -- the kernel --------------------------------------------------------------------------


def base_kernel(root: Path, base: VmBase, *, modules_root: Path = MODULES_ROOT) -> GuestKernel:
    """The bundle's kernel with modules for lamina's initramfs (see the module doc)."""
    b = base.bundle
    version = b.kernel_version
    boot = _bootable_kernel(Path(root), b, base.reference)
    host_modules = modules_root / version
    if (host_modules / "modules.dep").is_file():
        _check_modules(host_modules, base.reference, str(host_modules))
        return GuestKernel(version, boot, host_modules, b.kernel_path)
    modules = _cached_modules(Path(root), b, base.reference, modules_root)
    return GuestKernel(version, boot, modules, b.kernel_path)


def _bootable_kernel(root: Path, b: Bundle, ref: str) -> Path:
    """What QEMU boots: the bundle's ELF, or a bzImage's ELF (cached), or the bzImage."""
    if b.kernel.format == "elf" or (not b.kernel.format and _is_elf(b.kernel_path)):
        if not has_pvh_note(b.kernel_path):
            raise BaseError(
                f"--vm-base {ref}: {b.kernel.name} is an ELF kernel without a PVH entry "
                "note, which QEMU microvm cannot boot (ship a bzImage instead)"
            )
        return b.kernel_path
    key = (b.kernel.sha256 or "").removeprefix("sha256:")[:32]
    dest = root / "vm" / "kernels" / f"bundle-{key}"
    vmlinux, plain = dest / "vmlinux", dest / "boot-bzimage"
    if vmlinux.is_file():
        return vmlinux
    if plain.exists():  # extracted before and found unfit for PVH
        return b.kernel_path
    dest.mkdir(parents=True, exist_ok=True)
    try:
        data = extract_vmlinux(b.kernel_path.read_bytes(), str(b.kernel_path))
    except LaminaError:
        data = b""
    if data and _pvh_in(io.BytesIO(data)):
        atomic_write(vmlinux, data)
        return vmlinux
    atomic_write(plain, b"")
    return b.kernel_path


def _is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def has_pvh_note(path: Path) -> bool:
    """Whether the ELF at ``path`` has the Xen PVH entry note QEMU's direct boot needs."""
    with open(path, "rb") as f:
        return _pvh_in(f)


def _pvh_in(f: Any) -> bool:
    head = f.read(64)
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
        return False
    end = "<" if head[5] == 1 else ">"
    phoff = struct.unpack_from(end + "Q", head, 0x20)[0]
    phentsize, phnum = struct.unpack_from(end + "HH", head, 0x36)
    for i in range(phnum):
        f.seek(phoff + i * phentsize)
        ph = f.read(56)
        if len(ph) < 56 or struct.unpack_from(end + "I", ph, 0)[0] != 4:  # PT_NOTE
            continue
        offset, size = (
            struct.unpack_from(end + "Q", ph, 8)[0],
            struct.unpack_from(end + "Q", ph, 32)[0],
        )
        f.seek(offset)
        notes = f.read(min(size, 1 << 20))
        pos = 0
        while pos + 12 <= len(notes):
            namesz, descsz, kind = struct.unpack_from(end + "III", notes, pos)
            name = notes[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and kind == 18:  # XEN_ELFNOTE_PHYS32_ENTRY
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


# -- modules -----------------------------------------------------------------------------


def _wanted() -> tuple[str, ...]:
    """Every module the initramfs may carry (the same groups as ``initramfs``)."""
    return (*BASE_MODULES, *NET_MODULES, *VIRTIOFS_MODULES)


def _required() -> tuple[str, ...]:
    """The modules without which no VM boots or gets its NAT network."""
    return (*BASE_MODULES, *NET_MODULES)


def _check_modules(modules: Path, ref: str, where: str) -> None:
    """Every module the agent needs is in ``modules.dep`` or built into the kernel."""
    try:
        listed = (modules / "modules.dep").read_text().splitlines()
    except OSError:
        listed = []
    try:
        builtin = (modules / "modules.builtin").read_text().splitlines()
    except OSError:
        return  # no list of built-ins: the boot says what is missing
    have = {_module_name(line.partition(":")[0]) for line in listed + builtin if line}
    missing = [m for m in _required() if m.replace("-", "_") not in have]
    if missing:
        raise BaseError(
            f"--vm-base {ref}: kernel modules {', '.join(missing)} are neither in {where} "
            "nor built into the kernel"
        )


def _module_name(path: str) -> str:
    return os.path.basename(path).split(".ko")[0].replace("-", "_")


def _cached_modules(root: Path, b: Bundle, ref: str, modules_root: Path) -> Path:
    """The needed modules of ``b``'s kernel, taken from its disk or initrd once."""
    disk = b.disk_path.stat()
    h = hashlib.sha256(
        f"{b.kernel_version} {b.kernel.sha256} {b.disk_path} {disk.st_size} "
        f"{disk.st_mtime_ns} {b.initrd.sha256 if b.initrd else ''} {_wanted()}".encode()
    )
    dest = root / "vm" / "bases" / "modules" / h.hexdigest()[:32]
    if (dest / "modules.dep").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
    try:
        found = _from_disk(b, tmp)
        where = f"the bundle's {b.disk.name}"
        if not found and b.initrd_path is not None:
            shutil.rmtree(tmp)
            tmp.mkdir()
            found = _from_initrd(b, tmp)
            where = f"the bundle's {b.initrd.name if b.initrd else 'initrd'}"
        if not found:
            raise BaseError(
                f"--vm-base {ref}: no modules for kernel {b.kernel_version}: not in "
                f"{modules_root / b.kernel_version}, nor in the bundle's {b.disk.name} "
                f"(/lib/modules/{b.kernel_version})" + (f" or {b.initrd.name}" if b.initrd else "")
            )
        _check_modules(tmp, ref, where)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / "modules.dep").is_file():  # another run got there first, or not
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _debugfs() -> str | None:
    return shutil.which("debugfs") or next(
        (p for p in ("/usr/sbin/debugfs", "/sbin/debugfs") if os.path.exists(p)), None
    )


def _from_disk(b: Bundle, out: Path) -> bool:
    """Dump the module lists and the needed modules out of the ext4 disk (debugfs)."""
    tool = _debugfs()
    if tool is None:
        return False

    def dump(pairs: Iterable[tuple[str, Path]]) -> None:
        script = "".join(f'dump "{src}" "{dst}"\n' for src, dst in pairs)
        with tempfile.NamedTemporaryFile("w", suffix=".cmds") as cmds:
            cmds.write(script)
            cmds.flush()
            subprocess.run(
                [tool, "-f", cmds.name, str(b.disk_path)], capture_output=True, check=False
            )

    for prefix in (f"/lib/modules/{b.kernel_version}", f"/usr/lib/modules/{b.kernel_version}"):
        dump((f"{prefix}/{name}", out / name) for name in _MODULE_LISTS)
        if (out / "modules.dep").is_file():
            files = module_order(out, _wanted())
            for rel in files:
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
            dump((f"{prefix}/{rel}", out / rel) for rel in files)
            return all((out / rel).is_file() for rel in files)
    return False


def _from_initrd(b: Bundle, out: Path) -> bool:
    """Take the module lists and the needed modules out of the initrd's cpio."""
    assert b.initrd_path is not None
    entries = _cpio_files(_decompressed(b.initrd_path.read_bytes(), b.initrd_path))
    prefix = next(
        (
            p
            for p in (f"lib/modules/{b.kernel_version}/", f"usr/lib/modules/{b.kernel_version}/")
            if p + "modules.dep" in entries
        ),
        None,
    )
    if prefix is None:
        return False
    for name in _MODULE_LISTS:
        if prefix + name in entries:
            (out / name).write_bytes(entries[prefix + name])
    files = module_order(out, _wanted())
    for rel in files:
        data = entries.get(prefix + rel)
        if data is None:
            return False
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    return True


def _decompressed(data: bytes, label: Path) -> bytes:
    """An initrd as one byte string: archives after an uncompressed one (Debian's early
    microcode) may be compressed; each is inflated."""
    out = bytearray()
    pos = 0
    while pos < len(data):
        if data[pos : pos + 6] in (b"070701", b"070702"):
            end = _cpio_end(data, pos)
            out += data[pos:end]
            pos = end
            while pos < len(data) and data[pos] == 0:
                pos += 1
            continue
        rest = data[pos:]
        try:
            if rest.startswith(b"\x1f\x8b"):
                out += gzip.decompress(rest)
            elif rest.startswith(b"\x28\xb5\x2f\xfd"):
                import zstandard

                reader = zstandard.ZstdDecompressor().stream_reader(
                    io.BytesIO(rest), read_across_frames=True
                )
                out += reader.read()
            elif rest.startswith(b"\xfd7zXZ"):
                out += lzma.decompress(rest)
            else:
                break  # lz4, bzip2...: not read here
        except (OSError, EOFError, lzma.LZMAError, ValueError) as e:
            raise BaseError(f"{label}: cannot decompress: {e}") from None
        break
    return bytes(out)


def _cpio_entries(data: bytes, pos: int = 0) -> Iterable[tuple[str, int, int, int]]:
    """(name, mode, data offset, size) of each newc member from ``pos`` to the trailer;
    the last item's offset is where the archive ends."""
    while pos + 110 <= len(data) and data[pos : pos + 6] in (b"070701", b"070702"):
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode(errors="replace")
        start = (pos + 110 + namesize + 3) & ~3
        pos = (start + size + 3) & ~3
        yield name, mode, start, size
        if name == "TRAILER!!!":
            return


def _cpio_end(data: bytes, pos: int) -> int:
    end = pos
    for _name, _mode, start, size in _cpio_entries(data, pos):
        end = (start + size + 3) & ~3
    return end


def _cpio_files(data: bytes) -> dict[str, bytes]:
    """Regular files of every concatenated archive, by name (no leading ./ or /)."""
    files: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos : pos + 6] not in (b"070701", b"070702"):
            pos += 1  # padding between archives
            continue
        end = pos
        for name, mode, start, size in _cpio_entries(data, pos):
            end = (start + size + 3) & ~3
            if mode & 0o170000 == 0o100000:
                files[name.removeprefix("./").lstrip("/")] = data[start : start + size]
        pos = max(end, pos + 1)
    return files
