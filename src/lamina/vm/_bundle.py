"""VM base bundles: a bootable disk, its kernel and initrd, shared as OCI artifacts.

A bundle is a directory::

    bundle.json   hardware requirements and file records (format_version 1)
    disk.img      sparse raw disk holding an ext4 root filesystem
    vmlinux | vmlinuz   the guest kernel (ELF for direct PVH boot, or a bzImage)
    initrd.img    the initramfs that kernel boots with (optional)

Lifecycle:

- ``build_base(out, source=...)`` fills a temp dir next to ``out`` (root filesystem
  from an OCI image's merged layers or from debootstrap, ``mkfs.ext4 -d`` into a
  ``truncate``d sparse file, kernel and initrd copied from the guest kernel asset),
  validates it deeply (``e2fsck -n``) and renames it into place: ``out`` appears
  complete or not at all.
- ``validate_bundle(dir)`` checks a bundle: every file present with its recorded
  size (and sha256 for kernel and initrd), disk.img is ext4, the kernel a bzImage or
  an ELF/arm64 Image of the recorded architecture. Every problem is a BundleError
  naming the file.
- ``push_bundle`` packs the bundle as ONE zstd-compressed tar layer (disk.img as a
  PAX 1.0 sparse member: holes are neither read nor stored, and GNU tar extracts it
  sparse too), an OCI 1.1 manifest with ``artifactType`` and the empty config, then
  uploads with lamina's registry client. The packed blob lives in the content store
  only for the push.
- ``pull_bundle`` fetches the manifest, checks the artifact type, streams the layer
  into the content store (progress; an interrupted download resumes with Range on
  the next pull), extracts it into a temp dir next to the destination (holes are
  seeked over, so disk.img stays sparse), validates, renames, and drops the blob.

The bundle tar is not an image layer, so it is extracted here (only plain file
names, regular files) rather than with ``lamina.image.apply_layer``, which would
write every zero of a multi-GiB disk.
"""

from __future__ import annotations

import calendar
import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import struct
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Protocol, cast

from lamina._fsutil import atomic_write, fsync_dir
from lamina._mount import unmount_under
from lamina.errors import AlreadyExists, InvalidManifest, InvalidReference, LaminaError, NotFound

if TYPE_CHECKING:
    from lamina.image import ImageRecord, LocalImages
    from lamina.registry import ProgressSink, RegistryClient, RegistryConfig

FORMAT_VERSION = 1
ARTIFACT_TYPE = "application/vnd.lamina.vm.bundle.v1"
LAYER_MEDIA_TYPE = "application/vnd.lamina.vm.bundle.layer.v1.tar+zstd"
EMPTY_CONFIG = b"{}"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

ANN_VERSION = "org.opencontainers.image.version"
ANN_CREATED = "org.opencontainers.image.created"
ANN_TITLE = "org.opencontainers.image.title"
ANN_ARCH = "io.lamina.vm.architecture"
ANN_KERNEL = "io.lamina.vm.kernel-version"
ANN_MIN_VCPUS = "io.lamina.vm.min-vcpus"
ANN_MIN_MEMORY = "io.lamina.vm.min-memory-mib"
ANN_FORMAT = "io.lamina.vm.bundle-format"

BUNDLE_JSON = "bundle.json"
DISK = "disk.img"
INITRD = "initrd.img"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIN_MEMORY_MIB = 128

_BLOCK = 64 << 10  # zero detection granularity for holes
_ZERO = bytes(_BLOCK)
_COPY = 1 << 20
_MAX_JSON = 1 << 20
_MAX_ENTRIES = 16
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_EXT4_MAGIC_OFFSET = 1080
_EXT4_MAGIC = b"\x53\xef"
_ELF_MACHINES = {62: "amd64", 183: "arm64", 3: "386", 243: "riscv64", 21: "ppc64le"}
_GO_TO_DEBIAN = {
    "amd64": "amd64",
    "arm64": "arm64",
    "arm": "armhf",
    "386": "i386",
    "ppc64le": "ppc64el",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
_INITRD_MAGICS = (
    b"070701",  # newc cpio (Debian prepends an uncompressed microcode archive)
    b"070702",
    b"\x1f\x8b",  # gzip
    b"\x28\xb5\x2f\xfd",  # zstd
    b"\xfd7zXZ",  # xz
    b"\x02\x21\x4c\x18",  # lz4 legacy
    b"BZh",
    b"\x89LZO",
)


class BundleError(LaminaError):
    """A VM base bundle is invalid, or could not be built, packed or unpacked."""


class KernelFiles(Protocol):
    """What build_base needs of a guest kernel (``lamina.vm._kernel.GuestKernel``
    satisfies it): the version and the kernel files it has."""

    @property
    def version(self) -> str: ...
    @property
    def vmlinux(self) -> Path | None: ...
    @property
    def vmlinuz(self) -> Path | None: ...


@dataclass(frozen=True)
class BundleFile:
    """One file of a bundle as bundle.json records it."""

    name: str
    size: int
    sha256: str | None = None  # kernel and initrd; the disk is too large to hash cheaply
    format: str = ""  # kernel: bzImage | elf | arm64-image; disk: ext4

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "size": self.size}
        if self.sha256:
            d["sha256"] = self.sha256
        if self.format:
            d["format"] = self.format
        return d


@dataclass(frozen=True)
class Bundle:
    """A validated bundle directory and what its bundle.json says."""

    path: Path
    architecture: str  # Go name: amd64, arm64 ...
    min_vcpus: int
    min_memory_mib: int
    kernel_version: str
    disk: BundleFile
    kernel: BundleFile
    initrd: BundleFile | None
    created: str
    lamina_version: str
    source: str
    format_version: int = FORMAT_VERSION

    @property
    def disk_path(self) -> Path:
        return self.path / self.disk.name

    @property
    def kernel_path(self) -> Path:
        return self.path / self.kernel.name

    @property
    def initrd_path(self) -> Path | None:
        return None if self.initrd is None else self.path / self.initrd.name

    @property
    def disk_size(self) -> int:
        return self.disk.size

    def files(self) -> list[BundleFile]:
        return [self.disk, self.kernel, *([self.initrd] if self.initrd else [])]

    def to_dict(self) -> dict[str, Any]:
        """The bundle.json document."""
        files: dict[str, Any] = {"disk": self.disk.to_dict(), "kernel": self.kernel.to_dict()}
        if self.initrd is not None:
            files["initrd"] = self.initrd.to_dict()
        return {
            "format_version": self.format_version,
            "architecture": self.architecture,
            "min_vcpus": self.min_vcpus,
            "min_memory_mib": self.min_memory_mib,
            "kernel_version": self.kernel_version,
            "disk_size": self.disk.size,
            "created": self.created,
            "lamina_version": self.lamina_version,
            "source": self.source,
            "files": files,
        }


# ==================================================================================== build


def build_base(
    output_dir: Path,
    *,
    source: str,
    local: LocalImages | None = None,
    disk_size_gib: int = 2,
    cpus: int = 1,
    memory_mib: int = 512,
    kernel: KernelFiles | None = None,
    initrd: Path | None = None,
    mirror: str = DEFAULT_MIRROR,
) -> Bundle:
    """Build a bundle at ``output_dir`` (absent or empty) from ``image:<ref>`` (an
    image in ``local``) or ``debootstrap:<suite>``. ``kernel`` defaults to lamina's
    guest kernel asset (the host's cloud kernel until that lands); ``initrd``
    overrides the initrd that goes with it."""
    output_dir = Path(output_dir)
    kind, _, arg = source.partition(":")
    if kind not in ("image", "debootstrap") or not arg:
        raise BundleError(f"bundle source {source!r}: use image:<reference> or debootstrap:<suite>")
    if kind == "image" and local is None:
        raise BundleError(f"bundle source {source!r}: an image source needs the local images")
    for name, value, minimum in (
        ("disk size (GiB)", disk_size_gib, 1),
        ("cpus", cpus, 1),
        ("memory (MiB)", memory_mib, MIN_MEMORY_MIB),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise BundleError(f"bundle {name}: must be an integer of at least {minimum}")
    _check_output(output_dir)
    kfiles = _kernel_files(kernel, local, initrd)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_dir(output_dir)
    rootfs = tmp / ".rootfs"
    try:
        rootfs.mkdir(mode=0o755)
        if kind == "image":
            assert local is not None
            record = local.require(arg)
            arch = str(local.config(record).get("architecture") or "")
        else:
            from lamina.vm._arch import host_arch

            arch = host_arch()
        if arch != kfiles.architecture:
            raise BundleError(
                f"bundle source {source}: architecture {arch} does not match the guest "
                f"kernel's {kfiles.architecture} ({kfiles.path})"
            )
        if kind == "image":
            assert local is not None
            described = _image_rootfs(local, record, arg, rootfs)
        else:
            described = _debootstrap(arg, rootfs, arch, mirror)
        disk = _make_disk(rootfs, tmp / DISK, disk_size_gib)
        shutil.rmtree(rootfs)
        kernel_rec = _copy_in(kfiles.path, tmp / kfiles.path_name, kfiles.format)
        initrd_rec = None if kfiles.initrd is None else _copy_in(kfiles.initrd, tmp / INITRD, "")
        from lamina import __version__

        bundle = Bundle(
            path=tmp,
            architecture=arch,
            min_vcpus=cpus,
            min_memory_mib=memory_mib,
            kernel_version=kfiles.version,
            disk=disk,
            kernel=kernel_rec,
            initrd=initrd_rec,
            created=_rfc3339(time.time()),
            lamina_version=__version__,
            source=described,
        )
        doc = json.dumps(bundle.to_dict(), indent=2).encode() + b"\n"
        atomic_write(tmp / BUNDLE_JSON, doc)
        return _publish(_validate(tmp, deep=True, label=output_dir), output_dir)
    except BaseException:
        unmount_under(rootfs)  # a failed debootstrap can leave /proc mounted inside
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_output(out: Path) -> None:
    if out.is_dir():
        if any(out.iterdir()):
            raise AlreadyExists(f"bundle output {out} exists and is not empty")
    elif out.exists() or out.is_symlink():
        raise AlreadyExists(f"bundle output {out} exists and is not a directory")


def _temp_dir(out: Path) -> Path:
    """A sibling of ``out`` (same file system, so the final rename is atomic)."""
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir(mode=0o755)
    return tmp


def _publish(bundle: Bundle, out: Path) -> Bundle:
    """fsync the validated bundle in its temp dir, then rename it to ``out``."""
    tmp = bundle.path
    for entry in tmp.iterdir():
        fd = os.open(entry, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(tmp)
    _check_output(out)
    if out.is_dir():
        out.rmdir()  # empty (checked): rename() needs it gone or empty
    try:
        os.rename(tmp, out)
    except OSError as e:
        raise BundleError(f"bundle output {out}: {e.strerror}") from None
    fsync_dir(out.parent)
    return dataclasses.replace(bundle, path=out)


def _rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# -- kernel --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kernel:
    path: Path
    format: str
    architecture: str
    version: str
    initrd: Path | None

    @property
    def path_name(self) -> str:
        return "vmlinuz" if self.format == "bzImage" else "vmlinux"


def _kernel_files(
    kernel: KernelFiles | None, local: LocalImages | None, initrd: Path | None
) -> _Kernel:
    """The kernel a bundle gets: ``kernel`` if given, else lamina's guest kernel asset
    (with a root), else the newest installed cloud kernel; its initrd from /boot."""
    from lamina.vm._kernel import find_kernel, guest_kernel

    if kernel is None and local is not None:
        kernel = guest_kernel(local.root)
    if kernel is not None:
        # The ELF boots directly (PVH), skipping decompression: much faster under TCG.
        candidates = [p for p in (kernel.vmlinux, kernel.vmlinuz) if p is not None]
        path = next((Path(p) for p in candidates if Path(p).is_file()), None)
        if path is None:
            raise NotFound(f"guest kernel {kernel.version}: no kernel file found")
        version = kernel.version
    else:
        version, path = find_kernel()
    if initrd is None:
        initrd = _boot_initrd(version)
    elif not Path(initrd).is_file():
        raise NotFound(f"initrd {initrd} does not exist")
    with open(path, "rb") as f:
        head = f.read(4096)
    fmt, arch = _kernel_kind(head)
    if fmt is None:
        raise BundleError(f"kernel {path}: not a bzImage, ELF or arm64 Image")
    return _Kernel(path, fmt, arch, version, None if initrd is None else Path(initrd))


def _boot_initrd(version: str) -> Path | None:
    p = Path("/boot") / f"initrd.img-{version}"
    return p if p.is_file() else None


def _kernel_kind(head: bytes) -> tuple[str | None, str]:
    """(format, Go architecture) of a kernel file from its first 4 KiB."""
    if len(head) >= 0x206 and head[0x202:0x206] == b"HdrS":
        return "bzImage", "amd64"
    if head[:4] == b"\x7fELF" and len(head) >= 20:
        machine = struct.unpack_from("<H" if head[5] == 1 else ">H", head, 18)[0]
        return "elf", _ELF_MACHINES.get(machine, f"elf-machine-{machine}")
    if len(head) >= 60 and head[56:60] == b"ARMd":
        return "arm64-image", "arm64"
    return None, ""


def _bzimage_version(path: Path) -> str | None:
    """The version string a bzImage carries (boot protocol >= 2.00), or None."""
    with open(path, "rb") as f:
        head = f.read(0x210)
        if len(head) < 0x210:
            return None
        ptr = struct.unpack_from("<H", head, 0x20E)[0]
        if not ptr:
            return None
        f.seek(ptr + 0x200)
        raw = f.read(256)
    text = raw.split(b"\0", 1)[0].decode("ascii", "replace")
    return text.split(" ", 1)[0] or None


def _copy_in(src: Path, dst: Path, fmt: str) -> BundleFile:
    h = hashlib.sha256()
    size = 0
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while chunk := fi.read(_COPY):
            h.update(chunk)
            fo.write(chunk)
            size += len(chunk)
    return BundleFile(dst.name, size, "sha256:" + h.hexdigest(), fmt)


# -- root filesystem -----------------------------------------------------------------


def _image_rootfs(local: LocalImages, record: ImageRecord, ref: str, rootfs: Path) -> str:
    """Merge the image's layers into ``rootfs`` (whiteouts delete); returns the
    source as bundle.json records it."""
    from lamina.image import apply_layer, open_decompressed

    manifest = local.manifest_for(record.manifest_digest)
    for layer in manifest.layers:
        with local.content.open(layer.digest) as blob, open_decompressed(blob) as stream:
            apply_layer(stream, rootfs, overlay=False)
    os.chmod(rootfs, 0o755)
    return f"image:{ref}@{record.digest}"


def _debootstrap(suite: str, rootfs: Path, arch: str, mirror: str) -> str:
    """A minimal Debian root filesystem (needs network to ``mirror``; slow)."""
    tool = shutil.which("debootstrap")
    if tool is None:
        raise BundleError("debootstrap is not installed (apt-get install debootstrap)")
    if not re.fullmatch(r"[a-z][a-z0-9-]*", suite):
        raise BundleError(f"debootstrap suite {suite!r} is not a suite name (e.g. bookworm)")
    deb_arch = _GO_TO_DEBIAN.get(arch)
    if deb_arch is None:
        raise BundleError(f"debootstrap: no Debian architecture for {arch}")
    cmd = [tool, "--variant=minbase", f"--arch={deb_arch}", suite, str(rootfs), mirror]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise BundleError(f"debootstrap {suite} failed: {lines[-1] if lines else proc.returncode}")
    return f"debootstrap:{suite}@{mirror}"


def _make_disk(rootfs: Path, disk: Path, size_gib: int) -> BundleFile:
    """A sparse file of ``size_gib`` GiB holding an ext4 file system made from
    ``rootfs`` (``mkfs.ext4 -d``: owners, modes and xattrs are kept)."""
    mkfs = shutil.which("mkfs.ext4") or "/usr/sbin/mkfs.ext4"
    size = size_gib << 30
    with open(disk, "wb") as f:
        f.truncate(size)  # sparse: no block is allocated until mkfs writes it
    cmd = [mkfs, "-q", "-F", "-t", "ext4", "-L", "lamina-root", "-m", "0", "-d", str(rootfs)]
    try:
        proc = subprocess.run([*cmd, str(disk)], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise BundleError("mkfs.ext4 is not installed (apt-get install e2fsprogs)") from None
    if proc.returncode != 0:
        text = (proc.stderr or proc.stdout).strip()
        if "Could not allocate block" in text or "No space left" in text:
            used = _tree_size(rootfs)
            raise BundleError(
                f"root filesystem ({used >> 20} MiB) does not fit a {size_gib} GiB disk: "
                "raise the disk size"
            )
        last = text.splitlines()[-1] if text else f"exit status {proc.returncode}"
        raise BundleError(f"mkfs.ext4 failed: {last}")
    return BundleFile(DISK, size, None, "ext4")


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


# ==================================================================================== validate


def validate_bundle(path: Path, *, deep: bool = False) -> Bundle:
    """Check the bundle at ``path``; ``deep`` also runs ``e2fsck -n`` on the disk
    (skipped when e2fsprogs is not installed)."""
    return _validate(Path(path), deep=deep, label=Path(path))


def _validate(path: Path, *, deep: bool, label: Path) -> Bundle:
    """validate_bundle; errors name ``label`` (the final place of a bundle being built)."""
    where = f"VM bundle {label}"
    if not path.is_dir():
        raise BundleError(f"{where}: not a directory")
    doc = _read_json(path / BUNDLE_JSON, where)
    bundle = _parse_bundle(path, doc, where)
    _check_disk(bundle, where, deep)
    _check_kernel(bundle, where)
    if bundle.initrd is not None:
        _check_hashed(path, bundle.initrd, where)
        with open(path / bundle.initrd.name, "rb") as f:
            head = f.read(8)
        if not head.startswith(_INITRD_MAGICS):
            raise BundleError(f"{where}: {bundle.initrd.name}: not a cpio/compressed initramfs")
    return bundle


def read_bundle(path: Path) -> Bundle:
    """bundle.json only, no file checks (for ``inspect``)."""
    where = f"VM bundle {path}"
    return _parse_bundle(Path(path), _read_json(Path(path) / BUNDLE_JSON, where), where)


def _read_json(path: Path, where: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_JSON + 1)
    except FileNotFoundError:
        raise BundleError(f"{where}: {BUNDLE_JSON} is missing") from None
    except OSError as e:
        raise BundleError(f"{where}: {BUNDLE_JSON}: {e.strerror}") from None
    if len(data) > _MAX_JSON:
        raise BundleError(f"{where}: {BUNDLE_JSON} is larger than 1 MiB")
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise BundleError(f"{where}: {BUNDLE_JSON} is not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{where}: {BUNDLE_JSON} must hold a JSON object")
    return doc


def _parse_bundle(path: Path, doc: dict[str, Any], where: str) -> Bundle:
    def get(key: str, kind: type, *, minimum: int | None = None) -> Any:
        value: Any = doc.get(key)
        if value is None:
            raise BundleError(f"{where}: {BUNDLE_JSON}: {key} is missing")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BundleError(f"{where}: {BUNDLE_JSON}: {key} must be a {kind.__name__}")
        if minimum is not None and cast(int, value) < minimum:
            raise BundleError(f"{where}: {BUNDLE_JSON}: {key} must be at least {minimum}")
        return value

    version = get("format_version", int)
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{where}: format_version {version} is not supported (lamina reads {FORMAT_VERSION})"
        )
    files = get("files", dict)
    disk = _file_record(files, "disk", where)
    kernel = _file_record(files, "kernel", where)
    initrd = _file_record(files, "initrd", where) if files.get("initrd") is not None else None
    if disk.size != get("disk_size", int, minimum=1):
        raise BundleError(f"{where}: {BUNDLE_JSON}: disk_size disagrees with files.disk.size")
    if kernel.sha256 is None or (initrd is not None and initrd.sha256 is None):
        raise BundleError(f"{where}: {BUNDLE_JSON}: kernel and initrd records need a sha256")
    names = [f.name for f in (disk, kernel, initrd) if f is not None]
    if len(set(names)) != len(names) or BUNDLE_JSON in names:
        raise BundleError(f"{where}: {BUNDLE_JSON}: files must have distinct names")
    return Bundle(
        path=path,
        architecture=get("architecture", str),
        min_vcpus=get("min_vcpus", int, minimum=1),
        min_memory_mib=get("min_memory_mib", int, minimum=MIN_MEMORY_MIB),
        kernel_version=get("kernel_version", str),
        disk=disk,
        kernel=kernel,
        initrd=initrd,
        created=get("created", str),
        lamina_version=str(doc.get("lamina_version", "")),
        source=str(doc.get("source", "")),
        format_version=version,
    )


def _file_record(files: dict[str, Any], key: str, where: str) -> BundleFile:
    rec = files.get(key)
    if not isinstance(rec, dict):
        raise BundleError(f"{where}: {BUNDLE_JSON}: files.{key} is missing")
    name, size, digest = rec.get("name"), rec.get("size"), rec.get("sha256")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise BundleError(f"{where}: {BUNDLE_JSON}: files.{key}.name {name!r} is not a plain name")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise BundleError(f"{where}: {BUNDLE_JSON}: files.{key}.size must be a positive integer")
    if digest is not None and not (
        isinstance(digest, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    ):
        raise BundleError(f"{where}: {BUNDLE_JSON}: files.{key}.sha256 is not a sha256 digest")
    return BundleFile(name, size, digest, str(rec.get("format", "")))


def _stat_file(bundle_dir: Path, rec: BundleFile, where: str) -> os.stat_result:
    p = bundle_dir / rec.name
    try:
        st = p.lstat()
    except FileNotFoundError:
        raise BundleError(f"{where}: {rec.name} is missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{where}: {rec.name} is not a regular file")
    if st.st_size != rec.size:
        raise BundleError(
            f"{where}: {rec.name} is {st.st_size} bytes, {BUNDLE_JSON} says {rec.size}"
        )
    return st


def _check_hashed(bundle_dir: Path, rec: BundleFile, where: str) -> None:
    _stat_file(bundle_dir, rec, where)
    h = hashlib.sha256()
    with open(bundle_dir / rec.name, "rb") as f:
        while chunk := f.read(_COPY):
            h.update(chunk)
    if "sha256:" + h.hexdigest() != rec.sha256:
        raise BundleError(f"{where}: {rec.name} does not match its sha256 in {BUNDLE_JSON}")


def _check_disk(bundle: Bundle, where: str, deep: bool) -> None:
    _stat_file(bundle.path, bundle.disk, where)
    with open(bundle.disk_path, "rb") as f:
        f.seek(_EXT4_MAGIC_OFFSET)
        magic = f.read(2)
    if magic != _EXT4_MAGIC:
        raise BundleError(
            f"{where}: {bundle.disk.name} is not an ext4 file system (no magic 0xEF53 at 1080)"
        )
    fsck = shutil.which("e2fsck") or "/usr/sbin/e2fsck"
    if deep and os.path.exists(fsck):
        proc = subprocess.run(
            [fsck, "-f", "-n", str(bundle.disk_path)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            lines = (proc.stdout + proc.stderr).strip().splitlines()
            detail = lines[-1] if lines else f"exit status {proc.returncode}"
            raise BundleError(f"{where}: {bundle.disk.name}: e2fsck found problems: {detail}")


def _check_kernel(bundle: Bundle, where: str) -> None:
    rec = bundle.kernel
    _check_hashed(bundle.path, rec, where)
    with open(bundle.kernel_path, "rb") as f:
        head = f.read(4096)
    fmt, arch = _kernel_kind(head)
    if fmt is None:
        raise BundleError(f"{where}: {rec.name} is not a kernel (bzImage, ELF or arm64 Image)")
    if rec.format and rec.format != fmt:
        raise BundleError(f"{where}: {rec.name} is a {fmt}, {BUNDLE_JSON} says {rec.format}")
    if arch != bundle.architecture:
        raise BundleError(
            f"{where}: {rec.name} is an {arch} kernel, the bundle is {bundle.architecture}"
        )
    if fmt == "bzImage":
        version = _bzimage_version(bundle.kernel_path)
        if version is not None and version != bundle.kernel_version:
            raise BundleError(
                f"{where}: {rec.name} is kernel {version}, {BUNDLE_JSON} says "
                f"{bundle.kernel_version}"
            )


# ==================================================================================== pack


def _data_segments(fd: int, size: int) -> list[tuple[int, int]]:
    """The regions of a file holding non-zero data, found with SEEK_DATA/SEEK_HOLE
    (holes are never read) and refined by 64 KiB zero-block checks."""
    segments: list[tuple[int, int]] = []
    off = 0
    while off < size:
        try:
            start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole remains
                break
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        pos = start
        while pos < end:
            chunk = os.pread(fd, min(_BLOCK, end - pos), pos)
            if not chunk:
                break
            n = len(chunk)
            if chunk != _ZERO[:n]:
                if segments and segments[-1][0] + segments[-1][1] == pos:
                    segments[-1] = (segments[-1][0], segments[-1][1] + n)
                else:
                    segments.append((pos, n))
            pos += n
        off = end
    return segments


def _sparse_map(segments: list[tuple[int, int]], size: int) -> bytes:
    """The PAX 1.0 sparse map block: count, then offset/length lines, NUL-padded."""
    entries = list(segments)
    if not entries or entries[-1][0] + entries[-1][1] < size:
        entries.append((size, 0))  # a trailing hole: GNU tar's terminating entry
    text = f"{len(entries)}\n" + "".join(f"{o}\n{n}\n" for o, n in entries)
    raw = text.encode()
    return raw + b"\0" * (-len(raw) % tarfile.BLOCKSIZE)


class _SparseReader:
    """The stored data of a PAX 1.0 sparse member: map block, then the data regions."""

    def __init__(self, fd: int, map_block: bytes, segments: list[tuple[int, int]]) -> None:
        self._fd = fd
        self._pending = map_block
        self._segments = iter(segments)
        self._cur: tuple[int, int] | None = None

    def read(self, n: int = -1) -> bytes:
        # tarfile's copy wants full reads: short ones only at the very end.
        parts: list[bytes] = []
        want = n if n >= 0 else 1 << 62
        while want:
            part = self._read_some(want)
            if not part:
                break
            parts.append(part)
            want -= len(part)
        return b"".join(parts)

    def _read_some(self, n: int) -> bytes:
        if self._pending:
            out, self._pending = self._pending[:n], self._pending[n:]
            return out
        while self._cur is None or self._cur[1] == 0:
            nxt = next(self._segments, None)
            if nxt is None:
                return b""
            self._cur = nxt
        off, left = self._cur
        data = os.pread(self._fd, min(n, left, _COPY), off)
        if not data:
            raise BundleError("disk image shrank while it was being packed")
        self._cur = (off + len(data), left - len(data))
        return data


def pack_bundle(bundle: Bundle, out: IO[bytes], *, level: int = 3) -> None:
    """Write ``bundle`` as a zstd-compressed tar (deterministic headers: root owner,
    the bundle's creation time) to ``out``; disk.img is a PAX 1.0 sparse member."""
    import zstandard

    mtime = _epoch(bundle.created)
    cctx = zstandard.ZstdCompressor(level=level, threads=-1)
    with cctx.stream_writer(out, closefd=False) as zw:
        tw = tarfile.open(  # noqa: SIM115 (closed by the with below)
            fileobj=cast(IO[bytes], zw), mode="w|", format=tarfile.PAX_FORMAT, bufsize=_COPY
        )
        with tw:
            for name in (BUNDLE_JSON, bundle.kernel.name, *_initrd_names(bundle)):
                ti = _tarinfo(name, (bundle.path / name).stat().st_size, mtime)
                with open(bundle.path / name, "rb") as f:
                    tw.addfile(ti, f)
            _add_sparse(tw, bundle.disk_path, DISK, mtime)


def _initrd_names(bundle: Bundle) -> list[str]:
    return [] if bundle.initrd is None else [bundle.initrd.name]


def _tarinfo(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mode = 0o644
    ti.mtime = mtime
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def _add_sparse(tw: tarfile.TarFile, path: Path, name: str, mtime: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        segments = _data_segments(fd, size)
        map_block = _sparse_map(segments, size)
        ti = _tarinfo(
            f"GNUSparseFile.0/{name}", len(map_block) + sum(n for _, n in segments), mtime
        )
        ti.pax_headers = {
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.name": name,
            "GNU.sparse.realsize": str(size),
        }
        tw.addfile(ti, cast(IO[bytes], _SparseReader(fd, map_block, segments)))
    finally:
        os.close(fd)


def _epoch(rfc3339: str) -> int:
    try:
        return calendar.timegm(time.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return 0


# ==================================================================================== unpack


def unpack_bundle(stream: BinaryIO, dest: Path) -> None:
    """Extract an uncompressed bundle tar into the existing, empty dir ``dest``:
    plain names and regular files only; zero blocks and sparse holes become holes."""
    try:
        tf = tarfile.open(  # noqa: SIM115 (closed by the with below)
            fileobj=cast(IO[bytes], stream), mode="r|", encoding="utf-8", bufsize=_COPY
        )
    except tarfile.TarError as e:
        raise BundleError(f"bundle archive is malformed: {e}") from None
    count = 0
    with tf:
        try:
            for ti in tf:
                count += 1
                if count > _MAX_ENTRIES:
                    raise BundleError(f"bundle archive has more than {_MAX_ENTRIES} entries")
                name = ti.name.removeprefix("./")
                if not _NAME_RE.fullmatch(name):
                    raise BundleError(f"bundle archive entry {ti.name!r} is not a plain file name")
                if not ti.isreg():
                    raise BundleError(f"bundle archive entry {name!r} is not a regular file")
                _extract_file(tf, ti, dest / name)
        except (tarfile.TarError, EOFError) as e:
            raise BundleError(f"bundle archive is malformed: {e}") from None


def _extract_file(tf: tarfile.TarFile, ti: tarfile.TarInfo, path: Path) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        raise BundleError(f"bundle archive holds {path.name} twice") from None
    try:
        sparse = getattr(ti, "sparse", None)
        if sparse:
            # The stored data regions follow the map, in order, in the archive stream.
            raw = cast(IO[bytes], tf.fileobj)
            for off, n in sparse:
                _copy_at(raw, fd, off, n)
        else:
            src = tf.extractfile(ti)
            assert src is not None
            _copy_at(src, fd, 0, ti.size)
        os.ftruncate(fd, ti.size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_at(src: IO[bytes], fd: int, offset: int, length: int) -> None:
    """Copy ``length`` bytes to ``fd`` at ``offset``, seeking over all-zero blocks."""
    pos = offset
    left = length
    while left:
        chunk = src.read(min(_BLOCK, left))
        if not chunk:
            raise BundleError("bundle archive ends in the middle of a file")
        n = len(chunk)
        if chunk != _ZERO[:n]:
            _pwrite_all(fd, chunk, pos)
        pos += n
        left -= n


def _pwrite_all(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


# ==================================================================================== OCI


def bundle_manifest(bundle: Bundle, layer_digest: str, layer_size: int, version: str) -> bytes:
    """The OCI 1.1 artifact manifest for a packed bundle (stable bytes)."""
    from lamina.image import Descriptor, Manifest, dump_json, media

    manifest = Manifest(
        media_type=media.OCI_MANIFEST,
        artifact_type=ARTIFACT_TYPE,
        config=Descriptor(media.OCI_EMPTY, EMPTY_DIGEST, len(EMPTY_CONFIG)),
        layers=[
            Descriptor(
                LAYER_MEDIA_TYPE,
                layer_digest,
                layer_size,
                annotations={ANN_TITLE: "vm-bundle.tar.zst"},
            )
        ],
        annotations={
            ANN_VERSION: version,
            ANN_CREATED: bundle.created,
            ANN_ARCH: bundle.architecture,
            ANN_KERNEL: bundle.kernel_version,
            ANN_MIN_VCPUS: str(bundle.min_vcpus),
            ANN_MIN_MEMORY: str(bundle.min_memory_mib),
            ANN_FORMAT: str(bundle.format_version),
        },
    )
    return dump_json(manifest)


def push_bundle(
    local: LocalImages,
    bundle_dir: Path,
    ref: str,
    *,
    config: RegistryConfig | None = None,
    progress: ProgressSink | None = None,
    client: RegistryClient | None = None,
) -> str:
    """Pack, then push the bundle at ``bundle_dir`` as an OCI artifact to ``ref``.
    Returns the manifest digest."""
    from lamina.image import media, parse_reference
    from lamina.registry import NullProgress, ProgressEvent, RegistryClient

    bundle = validate_bundle(bundle_dir)
    dest = parse_reference(ref)
    sink = progress or NullProgress()
    content = local.content
    layer_digest = ""
    try:
        with content.writer(f"vm-bundle-pack-{secrets.token_hex(8)}") as w:
            try:
                pack_bundle(bundle, cast(IO[bytes], w))
            except BaseException:
                w.abort()
                raise
            layer_size = w.offset
            layer_digest = w.commit()
        data = bundle_manifest(bundle, layer_digest, layer_size, dest.tag or "latest")
        content.add(EMPTY_CONFIG, EMPTY_DIGEST)
        digest = content.add(data)
        if dest.digest and dest.digest != digest:
            raise InvalidReference(f"push {ref}: the bundle's manifest digest is {digest}")
        owned = client is None
        c = client or RegistryClient(dest.domain, config=config)
        try:
            for blob, size, what in (
                (EMPTY_DIGEST, len(EMPTY_CONFIG), "config"),
                (layer_digest, layer_size, "layer"),
            ):
                _upload(c, local, dest.path, blob, size, what, sink)
            c.put_manifest(dest.path, dest.digest or dest.tag or "latest", data, media.OCI_MANIFEST)
        finally:
            if owned:
                c.close()
        sink.event(ProgressEvent("finished", digest=digest, message=f"{dest}: pushed {digest}"))
        return digest
    except BaseException as e:
        sink.event(ProgressEvent("failed", message=str(e)))
        raise
    finally:
        # The packed bundle is only a means to push: keep the store small.
        if layer_digest:
            with contextlib.suppress(LaminaError, OSError):
                content.delete(layer_digest)


def _upload(
    c: RegistryClient,
    local: LocalImages,
    repo: str,
    digest: str,
    size: int,
    what: str,
    sink: ProgressSink,
) -> None:
    from lamina.registry import ProgressEvent

    ev = sink.event
    if c.blob_size(repo, digest) is not None:
        ev(ProgressEvent("exists", digest=digest, size=size, what=what))
        return
    ev(ProgressEvent("started", digest=digest, size=size, message="uploading", what=what))

    def advanced(n: int) -> None:
        ev(ProgressEvent("advance", digest=digest, size=size, advance=n, what=what))

    c.upload_blob(repo, digest, size, lambda: local.content.open(digest), on_bytes=advanced)
    ev(ProgressEvent("done", digest=digest, size=size, what=what))


def pull_bundle(
    local: LocalImages,
    ref: str,
    dest_dir: Path,
    *,
    config: RegistryConfig | None = None,
    progress: ProgressSink | None = None,
    client: RegistryClient | None = None,
) -> Bundle:
    """Fetch the bundle artifact ``ref`` into ``dest_dir`` (absent or empty)."""
    from lamina.image import Manifest, parse_manifest, parse_reference
    from lamina.registry import NullProgress, ProgressEvent, RegistryClient

    src = parse_reference(ref)
    dest_dir = Path(dest_dir)
    _check_output(dest_dir)
    sink = progress or NullProgress()
    try:
        owned = client is None
        c = client or RegistryClient(src.domain, config=config)
        try:
            fetched = c.get_manifest(src.path, src.digest or src.tag or "latest")
            parsed = parse_manifest(fetched.data, fetched.media_type)
            if not isinstance(parsed, Manifest):
                raise InvalidManifest(f"{src} is an index, not a lamina VM bundle")
            layer = _bundle_layer(parsed, str(src))
            sink.event(ProgressEvent("resolved", digest=fetched.digest, message=f"{src}: resolved"))
            _download(c, local, src.path, layer.digest, layer.size, sink)
        finally:
            if owned:
                c.close()
        sink.event(ProgressEvent("extracting", digest=layer.digest, size=layer.size))
        bundle = _extract_blob(local, layer.digest, dest_dir, parsed.annotations.get(ANN_ARCH))
        sink.event(ProgressEvent("extracted", digest=layer.digest, size=layer.size))
        sink.event(ProgressEvent("done", digest=layer.digest, size=layer.size))
        sink.event(
            ProgressEvent("finished", digest=fetched.digest, message=f"{src}: pulled to {dest_dir}")
        )
        with contextlib.suppress(LaminaError, OSError):
            local.content.delete(layer.digest)  # extracted: the blob is dead weight now
        return bundle
    except BaseException as e:
        sink.event(ProgressEvent("failed", message=str(e)))
        raise


def _bundle_layer(manifest: Any, where: str) -> Any:
    kind = manifest.artifact_type or manifest.config.media_type
    if kind != ARTIFACT_TYPE:
        raise InvalidManifest(f"{where} is not a lamina VM bundle (artifact type {kind!r})")
    layers = [d for d in manifest.layers if d.media_type == LAYER_MEDIA_TYPE]
    if len(layers) != 1 or len(manifest.layers) != 1:
        raise InvalidManifest(f"{where}: a VM bundle has exactly one {LAYER_MEDIA_TYPE} layer")
    return layers[0]


def _download(
    c: RegistryClient,
    local: LocalImages,
    repo: str,
    digest: str,
    size: int,
    sink: ProgressSink,
) -> None:
    from lamina.registry import ProgressEvent

    ev = sink.event
    if local.content.exists(digest):
        ev(ProgressEvent("exists", digest=digest, size=size))
        return
    # Same ingest key as an image pull: an interrupted download resumes where it stopped.
    with local.content.writer(f"pull-{digest}", digest, size) as w:
        ev(ProgressEvent("started", digest=digest, size=size, message="downloading"))
        if w.offset:
            ev(ProgressEvent("advance", digest=digest, size=size, advance=w.offset))

        def advanced(n: int) -> None:
            ev(ProgressEvent("advance", digest=digest, size=size, advance=n))

        c.fetch_blob(repo, digest, size, w, on_bytes=advanced)
        ev(ProgressEvent("verifying", digest=digest, size=size))
        w.commit()


def _extract_blob(local: LocalImages, digest: str, dest: Path, arch: str | None) -> Bundle:
    from lamina.image import Compression, open_decompressed

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_dir(dest)
    try:
        with local.content.open(digest) as blob, open_decompressed(blob, Compression.ZSTD) as s:
            unpack_bundle(s, tmp)
        bundle = _validate(tmp, deep=True, label=dest)
        if arch and arch != bundle.architecture:
            raise BundleError(
                f"VM bundle {dest}: the manifest says {arch}, bundle.json {bundle.architecture}"
            )
        return _publish(bundle, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
