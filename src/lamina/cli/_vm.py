"""The ``vm`` group: VM base bundles (build-base, pull, inspect), one-shot runs (run)
and snapshots of booted VMs (snapshot create, ls, inspect, rm, prune).

Bundles are plain directories (see ``lamina.vm._bundle``); ``build-base --push`` and
``pull`` move them through any OCI registry as lamina's own artifact type. Snapshots
live under ``<root>/vm/snapshots`` (``lamina.vm._snapshot``); a VM whose machine
matches one, ``lamina run --isolation vm`` containers included, is restored from it
instead of booting.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from lamina.cli._click import group
from lamina.cli._images import CA_FILE_OPTION, open_local, progress_sink, registry_config
from lamina.cli._output import (
    FORMAT_OPTION,
    INSPECT_FORMAT_OPTION,
    human_age,
    human_size,
    print_inspect,
    print_listing,
    print_object,
    print_table,
)

OUTPUT_OPTION = click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Bundle directory to create (must be absent or empty).",
)


ACCEL_OPTION = click.option(
    "--accel",
    type=click.Choice(["auto", "kvm", "tcg"]),
    default="auto",
    show_default=True,
    help="auto: KVM when a probe shows it works, else TCG emulation.",
)


@group()
def vm() -> None:
    """Micro-VMs: base bundles (build-base, pull, inspect), run, snapshots."""


@vm.command("build-base")
@OUTPUT_OPTION
@click.option("--from", "image", metavar="IMAGE", help="Root filesystem from a local image.")
@click.option("--debootstrap", "suite", metavar="SUITE", help="Debian root filesystem (network).")
@click.option("--disk-size-gib", type=int, default=2, show_default=True, help="Disk size (sparse).")
@click.option("--cpus", type=int, default=1, show_default=True, help="Minimum vCPUs.")
@click.option("--memory-mib", type=int, default=512, show_default=True, help="Minimum memory.")
@click.option("--push", "push_ref", metavar="REF", help="Push the bundle to a registry.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the bundle directory (or digest).")
@CA_FILE_OPTION
def build_base(
    output: Path,
    image: str | None,
    suite: str | None,
    disk_size_gib: int,
    cpus: int,
    memory_mib: int,
    push_ref: str | None,
    quiet: bool,
    ca_file: Path | None,
) -> None:
    """Build a VM base bundle: sparse ext4 disk.img, kernel, initrd, bundle.json."""
    from lamina.vm import build_base as do_build
    from lamina.vm import push_bundle

    if (image is None) == (suite is None):
        raise click.UsageError("give exactly one of --from IMAGE and --debootstrap SUITE")
    config = registry_config(ca_file, _host(push_ref) if push_ref and ca_file else None)
    source = f"image:{image}" if image is not None else f"debootstrap:{suite}"
    local = open_local()
    try:
        bundle = do_build(
            output,
            source=source,
            local=local,
            disk_size_gib=disk_size_gib,
            cpus=cpus,
            memory_mib=memory_mib,
        )
        if not quiet:
            click.echo(
                f"Built {bundle.path}: {bundle.architecture}, kernel {bundle.kernel_version}, "
                f"disk {bundle.disk_size >> 30} GiB, min {bundle.min_vcpus} vCPU / "
                f"{bundle.min_memory_mib} MiB"
            )
        if push_ref is None:
            if quiet:
                click.echo(str(bundle.path))
            return
        digest = push_bundle(
            local, bundle.path, push_ref, config=config, progress=progress_sink(quiet)
        )
    finally:
        local.close()
    click.echo(digest if quiet else f"Pushed {push_ref}: {digest}")


@vm.command()
@click.argument("reference")
@OUTPUT_OPTION
@click.option("-q", "--quiet", is_flag=True, help="Print only the bundle directory.")
@CA_FILE_OPTION
def pull(reference: str, output: Path, quiet: bool, ca_file: Path | None) -> None:
    """Pull a VM base bundle artifact into a directory."""
    from lamina.vm import pull_bundle

    config = registry_config(ca_file, _host(reference) if ca_file else None)
    local = open_local()
    try:
        bundle = pull_bundle(local, reference, output, config=config, progress=progress_sink(quiet))
    finally:
        local.close()
    if quiet:
        click.echo(str(bundle.path))
    else:
        click.echo(f"Pulled {reference} to {bundle.path} ({bundle.architecture})")


@vm.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "-f",
    "--format",
    "fmt",
    default=None,
    metavar="text|json|TEMPLATE",
    help="text (the default), json, or a Go template such as '{{.architecture}}'.",
)
@click.option("--check", is_flag=True, help="Validate every file (sizes, checksums, ext4).")
def inspect(directory: Path, fmt: str | None, check: bool) -> None:
    """Show a bundle's bundle.json."""
    from lamina.vm import read_bundle, validate_bundle

    bundle = validate_bundle(directory) if check else read_bundle(directory)
    print_object(None if fmt == "text" else fmt, bundle.to_dict(), lambda: _print_bundle(bundle))


def _print_bundle(bundle: Any) -> None:
    rows = [
        ("Path", str(bundle.path)),
        ("Architecture", bundle.architecture),
        ("Minimum vCPUs", str(bundle.min_vcpus)),
        ("Minimum memory", f"{bundle.min_memory_mib} MiB"),
        ("Kernel", f"{bundle.kernel_version} ({bundle.kernel.name}, {bundle.kernel.format})"),
        ("Initrd", bundle.initrd.name if bundle.initrd else "none"),
        ("Disk", f"{bundle.disk.name}, {bundle.disk_size >> 20} MiB, {bundle.disk.format}"),
        ("Source", bundle.source),
        ("Created", bundle.created),
        ("lamina", bundle.lamina_version),
        ("Format", str(bundle.format_version)),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key + ':':<{width + 1}} {value}")


@vm.command("run", context_settings={"allow_interspersed_args": False})
@click.argument("image")
@click.argument("command", nargs=-1)
@click.option("--cpus", type=int, default=1, show_default=True, help="vCPUs of the VM.")
@click.option("-m", "--memory-mib", type=int, default=512, show_default=True, help="Guest memory.")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE", help="Set a variable.")
@click.option("-w", "--workdir", default=None, help="Working directory inside the guest.")
@click.option("-u", "--user", default=None, help="uid[:gid] or name[:group].")
@click.option("--entrypoint", default=None, help="Override the image's entrypoint.")
@ACCEL_OPTION
@click.option("-i", "--interactive", is_flag=True, help="Send standard input to the command.")
@click.option(
    "--snapshot",
    default="auto",
    show_default=True,
    metavar="auto|none|NAME",
    help="Start from a matching snapshot (auto), never (none), or from NAME.",
)
@click.option(
    "--disk",
    "disks",
    multiple=True,
    metavar="PATH[:ro]",
    help="Attach a raw or qcow2 disk image as the next virtio disk (/dev/vdb, ...).",
)
def run(
    image: str,
    command: tuple[str, ...],
    cpus: int,
    memory_mib: int,
    env: tuple[str, ...],
    workdir: str | None,
    user: str | None,
    entrypoint: str | None,
    accel: str,
    interactive: bool,
    snapshot: str,
    disks: tuple[str, ...],
) -> None:
    """Run one command of IMAGE in a fresh micro-VM (QEMU microvm) and exit with its
    code; stdout and stderr stay apart. The image must be present locally."""
    from lamina.cli._images import open_local
    from lamina.vm import VmConfig, run_in_vm

    config = None
    if disks:  # every VmConfig rule applies: the files must exist and be readable
        builder = VmConfig.builder().vcpus(cpus).memory_mib(memory_mib).no_network()
        for disk in disks:
            path, ro = (disk[:-3], True) if disk.endswith(":ro") else (disk, False)
            builder.block_device(path, read_only=ro)
        config = builder.build()
    data = sys.stdin.buffer.read() if interactive else None
    result = run_in_vm(
        open_local(),
        image,
        list(command) or None,
        entrypoint=None if entrypoint is None else ([entrypoint] if entrypoint else []),
        env=list(env),
        workdir=workdir,
        user=user,
        vcpus=cpus,
        memory_mib=memory_mib,
        accel=accel,
        stdin=data,
        snapshot=snapshot,
        config=config,
    )
    if result.restore_error:
        print(f"lamina: warning: {result.restore_error}: booted cold", file=sys.stderr)
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(result.stderr)
    sys.stderr.buffer.flush()
    sys.exit(result.exit_code)


@vm.group()
def snapshot() -> None:
    """Snapshots of booted VMs: a VM (a container's too) whose machine matches one
    starts from it instead of booting."""


@snapshot.command("create")
@click.argument("image")
@click.option("--name", default=None, help="Snapshot name (default: from IMAGE).")
@click.option("--cpus", type=int, default=1, show_default=True, help="vCPUs of the VM.")
@click.option("-m", "--memory-mib", type=int, default=512, show_default=True, help="Guest memory.")
@click.option(
    "--network", type=click.Choice(["nat", "none"]), default="nat", show_default=True,
    help="The VM's network, as a container's --network.",
)  # fmt: skip
@ACCEL_OPTION
@click.option("-q", "--quiet", is_flag=True, help="Print only the snapshot's name.")
def snapshot_create(
    image: str,
    name: str | None,
    cpus: int,
    memory_mib: int,
    network: str,
    accel: str,
    quiet: bool,
) -> None:
    """Boot IMAGE in a template VM and save its state. The defaults are what
    ``lamina run --isolation vm IMAGE`` gives a container."""
    from lamina.vm import create_snapshot

    local = open_local()
    try:
        snap = create_snapshot(
            local, image, name=name, vcpus=cpus, memory_mib=memory_mib, network=network,
            accel=accel,
        )  # fmt: skip
    finally:
        local.close()
    if quiet:
        click.echo(snap.name)
        return
    click.echo(
        f"Created snapshot {snap.name} of {snap.image}: {_shape(snap)}, state "
        f"{human_size(snap.state_size)} (boot {snap.boot_seconds:.2f} s, "
        f"save {snap.save_seconds:.2f} s)"
    )


@snapshot.command("ls")
@FORMAT_OPTION
@click.option("-q", "--quiet", is_flag=True, help="Print only names.")
def snapshot_ls(fmt: str, quiet: bool) -> None:
    """List snapshots, oldest first, with whether they can still be used. Templates
    and json get snapshot.json's fields (``{{.name}}``) and ``status``."""
    from lamina.vm import list_snapshots, snapshot_status

    snaps = list_snapshots(_root())
    if quiet:
        for snap in snaps:
            click.echo(snap.name)
        return
    if fmt not in ("", "table"):
        docs = [dict(s.to_dict(), status=snapshot_status(s)) for s in snaps]
        headers = {key: key.replace("_", " ").upper() for doc in docs for key in doc}
        print_listing(fmt, docs, (), headers)
        return
    print_table(
        ["NAME", "IMAGE", "MACHINE", "SIZE", "CREATED", "STATUS"],
        [
            [s.name, s.image, _shape(s), human_size(s.state_size), human_age(s.created),
             snapshot_status(s)]
            for s in snaps
        ],
    )  # fmt: skip


@snapshot.command("inspect")
@click.argument("names", nargs=-1, required=True)
@INSPECT_FORMAT_OPTION
def snapshot_inspect(names: tuple[str, ...], fmt: str | None) -> None:
    """Show snapshots' snapshot.json (with their status) as JSON."""
    from lamina.vm import load_snapshot, snapshot_status

    root = _root()
    snaps = [load_snapshot(root, n) for n in names]
    print_inspect(fmt, [dict(s.to_dict(), status=snapshot_status(s)) for s in snaps])


@snapshot.command("rm")
@click.argument("names", nargs=-1, required=True)
def snapshot_rm(names: tuple[str, ...]) -> None:
    """Remove snapshots."""
    from lamina.vm import remove_snapshot

    root = _root()
    for n in names:
        remove_snapshot(root, n)
        click.echo(n)


@snapshot.command("prune")
def snapshot_prune() -> None:
    """Remove the snapshots no VM can use any more (stale or broken)."""
    from lamina.vm import prune_snapshots

    for name in prune_snapshots(_root()):
        click.echo(name)


def _root() -> Path:
    return Path(click.get_current_context().find_root().obj.root)


def _shape(snap: Any) -> str:
    net = ",".join(snap.networks) or "none"
    return f"{snap.arch}, {snap.vcpus} vCPU, {snap.memory_mib} MiB, {net}, {snap.accel}"


def _host(reference: str) -> str:
    from lamina.image import parse_reference

    return parse_reference(reference).domain
