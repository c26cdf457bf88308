"""The architectures micro-VMs run, and where each one's pieces come from.

An image's platform picks its VM's architecture (``image_arch``). Each ``Arch`` says
how QEMU emulates it (binary, machine, CPU, serial console), where its guest kernel,
modules and static busybox are, and which C compiler builds the agent for it:

- the **host's** architecture (amd64) boots on QEMU's ``microvm`` machine, under KVM
  when it works, with the host's own cloud kernel (``/boot``, ``/lib/modules``), its
  ``gcc`` and ``/bin/busybox``;
- a **foreign** one (arm64 on an amd64 host) is emulated (TCG: KVM cannot run it) on
  QEMU's ``virt`` machine, whose virtio-mmio devices the kernel finds in the device
  tree. Its kernel, modules and busybox are Debian's, unpacked by
  ``scripts/guest-kernel ARCH`` (``make setup``) into ``guest_root()/ARCH/``
  (``/usr/local/lib/lamina/guest/ARCH``; the environment variable ``LAMINA_GUEST_DIR``
  replaces ``/usr/local/lib/lamina/guest``), and the agent is cross-compiled.

``require(arch)`` checks that everything a VM of ``arch`` needs is installed, and says
in one line what is missing and how to get it. Nothing here starts a process.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.errors import LaminaError

GUEST_ROOT = Path("/usr/local/lib/lamina/guest")
GUEST_ROOT_ENV = "LAMINA_GUEST_DIR"
HOST_BOOT_DIR = Path("/boot")
HOST_MODULES_ROOT = Path("/lib/modules")
HOST_BUSYBOX = Path("/bin/busybox")


@dataclass(frozen=True)
class Arch:
    """What running a guest of one architecture takes."""

    name: str  # Go/OCI name: amd64, arm64
    uname: str  # the guest's `uname -m`, and the GNU triplet's first part
    qemu: str  # the QEMU system emulator
    qemu_package: str  # Debian's package with it
    machine: str  # -machine (without the memory backend of shared directories)
    tcg_cpu: str  # -cpu when emulated (KVM: "host")
    console: str  # the kernel's name for the serial console
    cc_packages: str  # Debian's packages with the cross compiler and static glibc

    @property
    def foreign(self) -> bool:
        """Not the host's architecture: emulated, with a guest kernel of its own."""
        return self.name != host_arch()

    @property
    def x86(self) -> bool:
        """An x86 guest: it has a TSC (tsc_early_khz, the boot time split)."""
        return self.name == "amd64"

    @property
    def platform(self) -> str:
        return f"linux/{self.name}"

    @property
    def cc(self) -> str:
        """The C compiler that builds static binaries for this architecture."""
        return "gcc" if not self.foreign else f"{self.uname}-linux-gnu-gcc"

    @property
    def libc_a(self) -> Path:
        """Static glibc for ``cc`` (Debian's multiarch or cross layout)."""
        if not self.foreign:
            return Path(f"/usr/lib/{self.uname}-linux-gnu/libc.a")
        return Path(f"/usr/{self.uname}-linux-gnu/lib/libc.a")

    @property
    def cc_hint(self) -> str:
        return f"apt-get install {'gcc libc6-dev' if not self.foreign else self.cc_packages}"

    @property
    def guest_dir(self) -> Path:
        """Where a foreign architecture's kernel, modules and busybox are."""
        return guest_root() / self.name

    @property
    def boot_dir(self) -> Path:
        return HOST_BOOT_DIR if not self.foreign else self.guest_dir / "boot"

    @property
    def modules_root(self) -> Path:
        return HOST_MODULES_ROOT if not self.foreign else self.guest_dir / "lib" / "modules"

    @property
    def kernel_package(self) -> str:
        return f"linux-image-cloud-{self.name}"

    @property
    def kernel_hint(self) -> str:
        """How to get the guest kernel."""
        if not self.foreign:
            return f"apt-get install {self.kernel_package}"
        return f"scripts/guest-kernel {self.name}, or make setup"

    def busybox(self) -> Path | None:
        """The static busybox the initramfs carries as the agent's file tools (cp, diff,
        commit, top), when there is one."""
        path = HOST_BUSYBOX if not self.foreign else self.guest_dir / "bin" / "busybox"
        try:
            with open(path, "rb") as f:
                head = f.read(4096)
        except OSError:
            return None
        # A dynamic busybox would find no libc in the initramfs: its ELF has a PT_INTERP.
        return None if b"/lib64/ld-linux" in head or b"/lib/ld-" in head else path


ARCHES: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch(
            name="amd64",
            uname="x86_64",
            qemu="qemu-system-x86_64",
            qemu_package="qemu-system-x86",
            machine="microvm,acpi=on",
            # x86-64-v2 on QEMU's own CPU model: the model name stays "QEMU Virtual
            # CPU", and images built for x86-64-v2 (RHEL 9 and kin) still run. (`max`
            # boots slower under TCG: its AVX and friends add boot-time patching and
            # self-tests.)
            tcg_cpu="qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16,+lahf-lm",
            console="ttyS0",
            cc_packages="gcc-x86-64-linux-gnu libc6-dev-amd64-cross",
        ),
        Arch(
            name="arm64",
            uname="aarch64",
            qemu="qemu-system-aarch64",
            qemu_package="qemu-system-arm",
            machine="virt,gic-version=3",
            # armv8.0, the baseline arm64 distributions build for. Measured boot to
            # HELLO under TCG: 1.1 s, against 4.6 s with `max` (its pointer
            # authentication and SVE are costly to emulate) and 1.2 s with neoverse-n1.
            tcg_cpu="cortex-a72",
            console="ttyAMA0",
            cc_packages="gcc-aarch64-linux-gnu libc6-dev-arm64-cross",
        ),
    )
}
_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64"}


def host_arch() -> str:
    """The host's architecture, Go/OCI name (amd64)."""
    from lamina.image._platform import host_platform

    return host_platform().architecture


def guest_root() -> Path:
    """The directory holding one guest directory per foreign architecture."""
    return Path(os.environ.get(GUEST_ROOT_ENV) or GUEST_ROOT)


def get_arch(name: str | None = None) -> Arch:
    """The ``Arch`` named ``name`` (default: the host's)."""
    name = name or host_arch()
    arch = ARCHES.get(_ALIASES.get(name, name))
    if arch is None:
        known = " and ".join(f"linux/{n}" for n in ARCHES)
        raise LaminaError(f"micro-VMs run {known} images, not linux/{name}")
    return arch


def image_arch(config: dict[str, Any]) -> Arch:
    """The architecture an image's config (``LocalImages.config``) says it is for;
    an image without one is the host's."""
    os_name = config.get("os") or "linux"
    if os_name != "linux":
        raise LaminaError(f"micro-VMs run Linux images, not {os_name}/{config.get('architecture')}")
    return get_arch(config.get("architecture") or None)


def missing(arch: Arch) -> list[str]:
    """What a VM of ``arch`` needs that is not installed, each with how to get it."""
    from lamina.vm._kernel import find_kernel

    gaps = []
    if shutil.which(arch.qemu) is None:
        gaps.append(f"{arch.qemu} (apt-get install {arch.qemu_package})")
    try:
        find_kernel(arch.boot_dir, arch.modules_root, arch=arch)
    except LaminaError:
        where = arch.guest_dir if arch.foreign else arch.boot_dir
        gaps.append(f"the {arch.name} guest kernel and its modules in {where} ({arch.kernel_hint})")
    if shutil.which(arch.cc) is None or not arch.libc_a.is_file():
        gaps.append(f"{arch.cc} with static glibc ({arch.cc_hint})")
    return gaps


def require(arch: Arch) -> None:
    """LaminaError naming everything a VM of ``arch`` lacks, in one line."""
    gaps = missing(arch)
    if gaps:
        how = "emulated micro-VMs" if arch.foreign else "micro-VMs"
        raise LaminaError(f"{arch.platform} images run in {how}, which need " + "; ".join(gaps))
