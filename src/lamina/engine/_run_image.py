"""What ``run`` and ``create`` decide before a container exists: the image (found
locally or pulled under Docker's ``--pull`` policy and ``--platform``), the isolation
(``auto``: a micro-VM for an image of another platform, or with ``--vm-base``), the
rules each isolation sets for the config (its default network, the modes it refuses),
and a ``--vm-base`` bundle fetched before the container is made.

Every failure here happens before anything is created: Docker's exit code 125.
"""

from __future__ import annotations

import os
import platform as _platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina.errors import LaminaError, NotFound

if TYPE_CHECKING:
    from lamina.image import ImageRecord, LocalImages, Platform
    from lamina.registry import RegistryConfig
    from lamina.runtime._types import ContainerConfig

# Go architecture -> the name binfmt_misc handlers (qemu-user) are registered under.
_QEMU_USER = {"amd64": "x86_64", "arm64": "aarch64", "386": "i386", "mips64le": "mips64el",
              "loong64": "loongarch64"}  # fmt: skip


class InvalidConfig(LaminaError, ValueError):
    """A container config the chosen isolation cannot give (Docker's 125)."""

    exit_code = 125


@dataclass
class Settled:
    """What settling a config for its isolation found to say."""

    warnings: list[str] = field(default_factory=list)


def resolve_image(
    local: LocalImages,
    image: str,
    *,
    pull: str = "missing",
    platform: str | None = None,
    progress: Callable[[], Any] | None = None,
    registry_config: Callable[[], RegistryConfig],
) -> ImageRecord:
    """The ImageRecord for ``image`` under Docker's --pull policy (always, missing,
    never, newer); "Unable to find image" goes to stderr, as ``docker run`` says it.
    With ``platform``, a local image of another platform counts as missing (pulled for
    that platform), as in Docker; when there is no such copy to pull, the error says
    what was found."""
    from lamina.image import parse_platform

    want = parse_platform(platform) if platform is not None else None
    hexpart = image.removeprefix("sha256:")
    if len(hexpart) == 64 and all(c in "0123456789abcdef" for c in hexpart):
        record = local.images.resolve(image)  # an image ID: nothing to pull it by
        mismatch = _platform_mismatch(image, record, want)
        if mismatch:
            raise LaminaError(mismatch)
        return record
    mismatch = ""
    if pull in ("missing", "never"):
        try:
            record = local.images.resolve(image)
        except NotFound:
            if pull == "never":
                raise NotFound(f"no such image: {image} (and --pull never)") from None
            print(f"Unable to find image '{image}' locally", file=sys.stderr)
        else:
            mismatch = _platform_mismatch(image, record, want)
            if not mismatch:
                return record
            if pull == "never":
                raise LaminaError(mismatch)
    # Imported only when the registry is needed: httpx costs ~80 ms of start-up.
    from lamina.registry import pull as do_pull

    policy = {"missing": "if-not-present"}.get(pull, pull)
    try:
        return do_pull(
            local,
            image,
            policy=policy,
            platform=want,
            progress=progress() if progress is not None else None,
            config=registry_config(),
        )
    except LaminaError as e:
        if not mismatch:
            raise
        raise LaminaError(f"{mismatch} (and pulling it for {want} failed: {e})") from None


def _platform_mismatch(image: str, record: ImageRecord, want: Platform | None) -> str:
    """Docker's error when the image found is not of the ``--platform`` asked for ("" when
    it is, or when none was asked for)."""
    from lamina.image import matches, parse_platform

    if want is None:
        return ""
    try:
        if matches(want, parse_platform(record.platform)):
            return ""
    except LaminaError:
        pass  # a record without a readable platform matches nothing
    return (
        f"image with reference {image} was found but does not match the specified "
        f"platform: wanted {want}, actual: {record.platform or 'unknown'}"
    )


def settle(
    local: LocalImages,
    config: ContainerConfig,
    record: ImageRecord,
    *,
    requested: str,
    network: str | None,
    progress: Callable[[], Any] | None = None,
    registry_config: Callable[[], RegistryConfig],
) -> Settled:
    """Choose the isolation of ``config`` (``requested``: process, vm or auto) for
    ``record`` and apply its rules (``network``: --network as given, None for the
    isolation's default); fetch a ``--vm-base`` reference not cached yet."""
    chosen, reason = choose_isolation(local, requested, record, vm_base=config.vm_base is not None)
    if chosen == "process":
        require_host_platform(record.platform)
    settled = Settled()
    apply_isolation(config, chosen, network=network, warnings=settled.warnings)
    config.isolation_reason = reason
    if config.vm_base and chosen == "vm":
        fetch_vm_base(local, config.vm_base, progress=progress, registry_config=registry_config)
    return settled


def choose_isolation(
    local: LocalImages, requested: str, record: ImageRecord, *, vm_base: bool = False
) -> tuple[str, str]:
    """(isolation, why): ``auto`` is process when the image's platform is the host's
    (a namespace shares the host kernel) and no ``--vm-base`` is asked for, vm otherwise."""
    if requested == "vm":
        return "vm", "--isolation vm"
    if requested != "auto":
        return "process", "--isolation process (default)"
    if vm_base:
        return "vm", "--isolation auto: --vm-base needs a micro-VM"
    machine = _platform.machine()
    host = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    cfg = local.config(record)
    arch, os_ = cfg.get("architecture") or host, cfg.get("os") or "linux"
    if arch == host and os_ == "linux":
        return "process", f"--isolation auto: image platform {os_}/{arch} matches the host"
    why = f"image platform {os_}/{arch} differs from the host's linux/{host}"
    return "vm", f"--isolation auto: {why}"


def apply_isolation(
    config: ContainerConfig, isolation: str, *, network: str | None, warnings: list[str]
) -> None:
    """The network and ``--vm-base`` rules of ``isolation`` (process or vm): each has
    its own default network (``network`` None), and refuses the modes it cannot give."""
    from lamina.network._model import DEFAULT_NETWORK

    if isolation == "vm":
        from lamina.vm._config import MAX_NETWORKS

        mode = network or DEFAULT_NETWORK  # bridge networks, as process containers
        if mode == "host" or mode.startswith("container:"):
            raise InvalidConfig(
                f"--network {mode} is not supported for VM containers: use a bridge network "
                "(the default), nat or none"
            )
        if mode in ("nat", "none") and config.networks:
            raise InvalidConfig(
                f"--network-alias, --ip and --mac-address need a bridge network, not {mode}"
            )
        if config.ports and mode == "none":
            raise InvalidConfig("publishing ports (-p) needs a network: not --network none")
        if config.publish_all and mode in ("nat", "none"):
            raise InvalidConfig(f"-P/--publish-all needs a bridge network, not --network {mode}")
        if len(config.networks) > MAX_NETWORKS:
            raise InvalidConfig(
                f"a VM container joins at most {MAX_NETWORKS} networks, "
                f"not {len(config.networks)}"
            )
        if config.log_driver == "none":
            raise InvalidConfig(
                "--log-driver none is not supported for VM containers: attaching to one "
                "reads its output from the log"
            )
        if mode not in ("nat", "none") and not config.networks:
            from lamina.runtime._types import NetworkRequest

            config.networks = [NetworkRequest(mode)]
    else:
        mode = network or DEFAULT_NETWORK  # Docker's rule: the default bridge
        if mode == "nat":
            raise InvalidConfig(
                "--network nat is for VM containers (--isolation vm); process containers "
                "have bridge networks, none, host or container:<id>"
            )
        if config.vm_base:
            raise InvalidConfig("--vm-base needs --isolation vm")
        special = mode in ("none", "host") or mode.startswith("container:")
        if mode == "host" and (config.ports or config.publish_all):
            warnings.append("published ports are discarded when using host network mode")
            config.ports, config.publish_all = [], False
        elif special and (config.ports or config.publish_all):
            raise InvalidConfig(
                f"conflicting options: port publishing and the container type network mode "
                f"(--network {mode})"
            )
        if special and config.networks:
            raise InvalidConfig(
                f"--network-alias, --ip and --mac-address need a bridge network, not {mode}"
            )
        if not special and not config.networks:
            from lamina.runtime._types import NetworkRequest

            config.networks = [NetworkRequest(mode)]
    config.network = mode
    config.isolation = isolation


def require_host_platform(image_platform: str) -> None:
    """A process container shares the host's kernel and CPU: an image of another
    platform runs there only through a binfmt_misc emulator (qemu-user). Without one it
    would fail at exec ("exec format error"), so it is refused here, in one line."""
    from lamina.image import host_platform, parse_platform

    try:
        have = parse_platform(image_platform)
    except LaminaError:
        return  # no platform recorded: taken to be the host's, as before
    host = host_platform()
    if have.os == host.os and have.architecture == host.architecture:
        return
    qemu = _QEMU_USER.get(have.architecture, have.architecture)
    if have.os == host.os and _binfmt_enabled(f"qemu-{qemu}"):
        return
    from lamina.vm._arch import ARCHES

    where = f"image platform {have.os}/{have.architecture} cannot run in a process container"
    if have.os == "linux" and have.architecture in ARCHES:
        raise LaminaError(
            f"{where} on this {host.os}/{host.architecture} host (no binfmt_misc emulator "
            "for it): use --isolation auto or vm to run it in an emulated micro-VM"
        )
    vms = " and ".join(f"linux/{a}" for a in ARCHES)
    raise LaminaError(
        f"{where} on this {host.os}/{host.architecture} host (no binfmt_misc emulator for "
        f"it), and micro-VMs run only {vms} images"
    )


def _binfmt_enabled(name: str) -> bool:
    try:
        with open(f"/proc/sys/fs/binfmt_misc/{name}") as f:
            return f.readline().strip() == "enabled"
    except OSError:
        return False


def fetch_vm_base(
    local: LocalImages,
    ref: str,
    *,
    progress: Callable[[], Any] | None = None,
    registry_config: Callable[[], RegistryConfig],
) -> None:
    """A --vm-base reference not yet cached is pulled here, with progress as an image
    pull shows it (``create`` then finds it in the cache)."""
    if Path(ref).expanduser().is_dir():
        return
    from lamina.vm._base import resolve_base

    resolve_base(
        local,
        ref,
        config=registry_config(),
        progress=progress() if progress is not None else None,
    )


def make_bind_sources(paths: list[str]) -> None:
    """``-v`` bind sources that do not exist are made, as Docker's daemon makes them."""
    for d in paths:
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as e:
            raise InvalidConfig(f"cannot create bind mount source {d}: {e.strerror}") from None
