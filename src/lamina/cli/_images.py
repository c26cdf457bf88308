"""Image commands: pull, push, images, rmi, tag, inspect, save, load, import,
login, logout and the ``image`` group."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from lamina.cli._click import command, group
from lamina.cli._output import (
    FORMAT_OPTION,
    INSPECT_FORMAT_OPTION,
    human_age,
    human_size,
    parse_timestamp,
)

if TYPE_CHECKING:
    from lamina.engine import Engine
    from lamina.image import ArchiveFormat, ImageRecord, LocalImages
    from lamina.registry import RegistryConfig


def _settings() -> Any:
    return click.get_current_context().find_root().obj


def open_local() -> LocalImages:
    """The image store, for the commands that only read it."""
    return _engine().images


def _engine() -> Engine:
    from lamina.cli._common import open_engine

    return open_engine(containers=False)


def registry_config(ca_file: Path | None = None, host: str | None = None) -> RegistryConfig:
    """The registries config file merged with the global flags and, for ``host``, a
    ``--ca-file``. A config file named on the command line must exist (the default
    one may be absent)."""
    from lamina.errors import RegistryError
    from lamina.registry import RegistryConfig

    s = _settings()
    if s.registries_config is not None and not Path(s.registries_config).is_file():
        raise RegistryError(f"registries config {s.registries_config} not found")
    ca_files = None
    if ca_file is not None and host is not None:
        if not ca_file.is_file():
            raise RegistryError(f"CA file {ca_file} not found")
        ca_files = {host: str(ca_file)}
    return RegistryConfig.load(
        s.registries_config, insecure_registries=s.insecure_registries, ca_files=ca_files
    )


def _registry_host(reference: str) -> str:
    from lamina.image import parse_reference

    return parse_reference(reference).domain


def progress_sink(quiet: bool) -> Any:
    """Rich bars on a terminal, one plain line per event otherwise, nothing if quiet."""
    if quiet:
        return None
    from lamina.registry import PlainProgress, RichProgress

    if sys.stderr.isatty():
        return RichProgress()
    return PlainProgress(sys.stderr)


def _platform_arg(value: str | None) -> Any:
    if value is None:
        return None
    from lamina.image import parse_platform

    return parse_platform(value)


CA_FILE_OPTION = click.option(
    "--ca-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="CA certificate (PEM) to trust for this registry.",
)

PLATFORM_OPTION = click.option(
    "--platform",
    default=None,
    metavar="OS/ARCH[/VARIANT]",
    help="Platform to select from an index.",
)


@command()
@click.argument("reference")
@PLATFORM_OPTION
@click.option(
    "--policy",
    type=click.Choice(["always", "if-not-present", "missing", "never", "newer"]),
    default="always",
    show_default=True,
    help="When to contact the registry.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only the image ID.")
@CA_FILE_OPTION
def pull(
    reference: str, platform: str | None, policy: str, quiet: bool, ca_file: Path | None
) -> None:
    """Pull an image from a registry."""
    # Everything that can fail on the command line fails before the store is touched.
    config = registry_config(ca_file, _registry_host(reference) if ca_file else None)
    _platform_arg(platform)
    record = _engine().pull_image(
        reference,
        policy=policy,
        platform=platform,
        progress=progress_sink(quiet),
        registry_config=config,
    )
    if quiet:
        click.echo(record.id)
        return
    click.echo(f"Digest: {record.digest}")
    from lamina.image import parse_reference

    click.echo(str(parse_reference(reference)))


@command()
@click.argument("source")
@click.argument("destination", required=False)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option(
    "--chunk-size", type=int, default=None, help="Upload blobs in chunks of this many bytes."
)
@CA_FILE_OPTION
def push(
    source: str,
    destination: str | None,
    quiet: bool,
    chunk_size: int | None,
    ca_file: Path | None,
) -> None:
    """Push an image (SOURCE) to a registry, optionally under another name."""
    host = _registry_host(destination or source) if ca_file else None
    config = registry_config(ca_file, host)
    digest = _engine().push_image(
        source,
        destination,
        progress=progress_sink(quiet),
        registry_config=config,
        chunk_size=chunk_size,
    )
    if not quiet:
        click.echo(f"Digest: {digest}")


# Docker's images fields and their column titles.
_HEADERS = {
    "ID": "IMAGE ID", "Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST",
    "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "Size": "SIZE",
    "Containers": "CONTAINERS", "VirtualSize": "SIZE", "SharedSize": "SHARED SIZE",
    "UniqueSize": "UNIQUE SIZE",
}  # fmt: skip


def _image_rows(selected: list[tuple[ImageRecord, list[str]]], no_trunc: bool) -> list[Any]:
    """One row a name (``repo:tag``; an unnamed image has one ``<none>`` row), as
    ``docker images`` shows it to ``--format``. Container counts and shared sizes are
    N/A, as Docker's are outside ``system df``."""
    from lamina.cli._output import Row, go_time
    from lamina.image import parse_reference

    rows = []
    for rec, tags in selected:
        created_ts = parse_timestamp(rec.created)
        fields = {
            "ID": rec.id if no_trunc else rec.id.removeprefix("sha256:")[:12],
            "CreatedSince": human_age(created_ts),
            "CreatedAt": go_time(created_ts) if created_ts is not None else "N/A",
            "Size": human_size(rec.image_size),
            "VirtualSize": human_size(rec.image_size, digits=4),
            "Containers": "N/A",
            "SharedSize": "N/A",
            "UniqueSize": "N/A",
        }
        pairs: list[tuple[str, str, str]] = []
        for tag in tags:
            ref = parse_reference(tag)
            repo = ref.familiar().rsplit(":", 1)[0] if ref.tag else ref.familiar()
            digest = next(
                (d.split("@", 1)[1] for d in rec.repo_digests if d.split("@")[0] == ref.name),
                "<none>",
            )
            pairs.append((repo, ref.tag or "<none>", digest))
        if not pairs:
            repo = "<none>"
            digest = "<none>"
            if rec.repo_digests:
                ref = parse_reference(rec.repo_digests[0])
                repo = ref.familiar().split("@", 1)[0]
                digest = ref.digest or "<none>"
            pairs.append((repo, "<none>", digest))
        for repo, tag, digest in pairs:
            names = {"Repository": repo, "Tag": tag, "Digest": digest}
            rows.append(Row("ImageRow", {**fields, **names}))
    return rows


@command("images")
@click.argument("repository", required=False)
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs.")
@click.option(
    "-a", "--all", "all_", is_flag=True, help="Show intermediate images of the build cache too."
)
@click.option("--digests", is_flag=True, help="Show digests.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output.")
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="dangling=true|false, reference=PATTERN",
)
@FORMAT_OPTION
def images(
    repository: str | None,
    quiet: bool,
    all_: bool,
    digests: bool,
    no_trunc: bool,
    filters: tuple[str, ...],
    fmt: str,
) -> None:
    """List images."""
    local = open_local()
    records = local.images.list()
    if not all_:
        # As Docker hides intermediate images: unnamed ones the build cache holds.
        records = [r for r in records if r.names or not _held_only_by_build_cache(local, r.digest)]
    selected = _filter_images(records, repository, filters)
    if quiet:
        seen: list[str] = []
        for rec, _ in selected:
            short = rec.id if no_trunc else rec.id.removeprefix("sha256:")[:12]
            if short not in seen:
                seen.append(short)
        click.echo("\n".join(seen)) if seen else None
        return
    from lamina.cli._output import print_listing

    columns = ("Repository", "Tag", *(("Digest",) if digests else ()), "ID", "CreatedSince")
    custom_table = fmt.startswith("table") and fmt != "table"
    if digests and custom_table and "{{.Digest}}" not in fmt:
        fmt += "\t{{.Digest}}"  # as Docker adds the column --digests asks for
    print_listing(fmt, _image_rows(selected, no_trunc), (*columns, "Size"), _HEADERS)


def _held_only_by_build_cache(local: LocalImages, digest: str) -> bool:
    holders = local.images.holders(digest)
    return bool(holders) and all(h == "build-cache" for h in holders)


def _filter_images(
    records: list[ImageRecord], repository: str | None, filters: tuple[str, ...]
) -> list[tuple[ImageRecord, list[str]]]:
    """The images to list, each with the tags to show: a ``reference`` filter or a
    REPOSITORY argument selects tags (rows), as in Docker, not whole images."""
    import fnmatch

    from lamina.image import parse_reference

    tag_tests: list[Any] = []
    dangling: bool | None = None
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep:
            raise click.UsageError(f"bad filter {f!r}: expected KEY=VALUE")
        if key == "dangling":
            if value.lower() not in ("true", "false", "1", "0"):
                raise click.UsageError(f"bad filter {f!r}: dangling takes true or false")
            dangling = value.lower() in ("true", "1")
        elif key == "reference":

            def by_pattern(tag: str, pattern: str = value) -> bool:
                familiar = _familiar(tag)
                return fnmatch.fnmatch(familiar, pattern) or fnmatch.fnmatch(
                    familiar.rsplit(":", 1)[0], pattern
                )

            tag_tests.append(by_pattern)
        else:
            raise click.UsageError(f"unknown filter {key!r} (supported: dangling, reference)")
    if repository:
        want = parse_reference(repository, default_tag=False)

        def by_repository(tag: str) -> bool:
            ref = parse_reference(tag)
            return ref.name == want.name and (want.tag is None or ref.tag == want.tag)

        tag_tests.append(by_repository)
    out = []
    for rec in records:
        if dangling is not None and (not rec.tags) != dangling:
            continue
        tags = [t for t in rec.tags if all(test(t) for test in tag_tests)]
        if tag_tests and not tags:
            continue
        out.append((rec, tags))
    return out


@command()
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Remove an image with several names.")
def rmi(names: tuple[str, ...], force: bool) -> None:
    """Remove one or more images."""
    from lamina.errors import LaminaError

    engine = _engine()
    engine.images.reap()
    failed = []
    for name in names:
        try:
            result = engine.remove_image(name, force=force)
        except LaminaError as e:
            print(f"lamina: error: {e}", file=sys.stderr)
            failed.append(name)
            continue
        for n in result.untagged:
            click.echo(f"Untagged: {_familiar(n)}")
        for d in result.deleted:
            click.echo(f"Deleted: {d}")
    if failed:
        sys.exit(1)


@command()
@click.argument("source")
@click.argument("target")
def tag(source: str, target: str) -> None:
    """Create a tag TARGET that refers to SOURCE."""
    _engine().tag_image(source, target)


def _familiar(name: str) -> str:
    from lamina.image import parse_reference

    return parse_reference(name).familiar()


@command()
@click.argument("names", nargs=-1, required=True)
@INSPECT_FORMAT_OPTION
def inspect(names: tuple[str, ...], fmt: str | None) -> None:
    """Show low-level information on images, as JSON."""
    from lamina.cli._output import print_inspect
    from lamina.errors import NotFound

    engine = _engine()
    out = []
    missing = []
    for name in names:
        try:
            out.append(engine.inspect_image(name))
        except NotFound:
            missing.append(name)
    print_inspect(fmt, out, [f"no such object: {name}" for name in missing])


@command()
@click.argument("names", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    default=None,
    metavar="PATH",
    help="Archive path [default: standard output].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["oci-archive", "docker-archive", "oci-dir"]),
    default="docker-archive",
    show_default=True,
)
def save(names: tuple[str, ...], output: str | None, fmt: ArchiveFormat) -> None:
    """Save one or more images to an archive (to standard output without -o)."""
    engine = _engine()
    if output not in (None, "-"):
        dest = Path(output)
        if not dest.absolute().parent.is_dir():
            from lamina.errors import NotFound

            # Said here: the library would name its temporary file instead.
            raise NotFound(f"cannot write {dest}: directory {dest.parent} does not exist")
        engine.save_images(names, dest, format=fmt)
        return
    if sys.stdout.isatty():
        raise click.UsageError("refusing to write an archive to a terminal; use -o or a pipe")
    if fmt == "oci-dir":
        raise click.UsageError("--format oci-dir needs -o DIRECTORY")
    sys.stdout.flush()
    engine.save_images(names, sys.stdout.buffer, format=fmt)
    sys.stdout.buffer.flush()


@command()
@click.option(
    "-i",
    "--input",
    "source",
    default=None,
    metavar="PATH",
    help="Archive or OCI layout directory [default: standard input].",
)
@click.option("-q", "--quiet", is_flag=True)
def load(source: str | None, quiet: bool) -> None:
    """Load images from an archive (oci-archive, docker-archive) or an OCI layout dir."""
    records = _engine().load_images(_input(source, "archive"))
    if quiet:
        return
    for rec in records:
        if rec.tags:
            for t in rec.tags:
                click.echo(f"Loaded image: {_familiar(t)}")
        else:
            click.echo(f"Loaded image ID: {rec.id}")


def _input(source: str | None, what: str) -> Path | BinaryIO:
    """A path, or standard input for ``-`` / no path (not from a terminal)."""
    if source not in (None, "-"):
        return Path(source)
    if sys.stdin.isatty():
        raise click.UsageError(f"no {what} given and standard input is a terminal")
    return sys.stdin.buffer


@command("import")
@click.argument("source")
@click.argument("reference", required=False)
@click.option("-c", "--change", "changes", multiple=True, help="Apply a Dockerfile instruction.")
@click.option("-m", "--message", default=None, help="Commit message for the history entry.")
@PLATFORM_OPTION
def import_(
    source: str,
    reference: str | None,
    changes: tuple[str, ...],
    message: str | None,
    platform: str | None,
) -> None:
    """Create an image from a root filesystem directory or tarball (``-``: stdin)."""
    _platform_arg(platform)
    rec = _engine().import_image(
        _input(source, "tarball"),
        reference=reference,
        changes=list(changes),
        message=message,
        platform=platform,
    )
    click.echo(rec.id)


@command()
@click.argument("server")
@click.option("-u", "--username", default=None)
@click.option("-p", "--password", default=None)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@CA_FILE_OPTION
def login(
    server: str,
    username: str | None,
    password: str | None,
    password_stdin: bool,
    ca_file: Path | None,
) -> None:
    """Log in to a registry; credentials go to Docker's config.json."""
    from lamina.registry import login as do_login

    server = _server_host(server)
    config = registry_config(ca_file, server)
    if password_stdin:
        if username is None:
            raise click.UsageError("--password-stdin needs --username")
        if password:
            raise click.UsageError("--password and --password-stdin are mutually exclusive")
        password = sys.stdin.read().rstrip("\n")
    if username is None:
        username = click.prompt("Username")
    if password is None:
        password = click.prompt("Password", hide_input=True)
    do_login(server, username, password, config=config)
    click.echo("Login Succeeded")


@command()
@click.argument("server")
def logout(server: str) -> None:
    """Remove saved credentials for a registry."""
    from lamina.registry import logout as do_logout

    server = _server_host(server)
    if do_logout(server):
        click.echo(f"Removing login credentials for {server}")
    else:
        click.echo(f"Not logged in to {server}")


def _server_host(server: str) -> str:
    """``https://reg:5000/v2/`` -> ``reg:5000``: credentials are keyed by host."""
    host = server.split("://", 1)[1] if "://" in server else server
    host = host.split("/", 1)[0]
    if not host:
        raise click.UsageError(f"invalid registry address {server!r}")
    return host


@command()
@click.option(
    "-a", "--all", "all_", is_flag=True, help="Remove all images not in use, not only dangling."
)
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
def prune(all_: bool, force: bool) -> None:
    """Remove unused images and the blobs and snapshots only they used, and what
    interrupted pulls, builds, loads and saves left behind."""
    if not force and sys.stdin.isatty():
        what = "all images without at least one container" if all_ else "all dangling images"
        if not click.confirm(f"This will remove {what}. Continue?"):
            return
    result = _engine().prune_images(all_unused=all_)
    for n in result.untagged:
        click.echo(f"Untagged: {_familiar(n)}")
    for d in result.deleted:
        click.echo(f"Deleted: {d}")


@group()
def image() -> None:
    """Manage images."""


for _name, _cmd in (
    ("ls", images),
    ("list", images),
    ("rm", rmi),
    ("prune", prune),
    ("inspect", inspect),
    ("tag", tag),
    ("pull", pull),
    ("push", push),
    ("save", save),
    ("load", load),
    ("import", import_),
):
    image.add_command(_cmd, _name)
