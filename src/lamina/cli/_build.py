"""``lamina build`` and ``lamina builder prune``: the CLI over ``lamina.builder``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from lamina.cli._click import command, group

_TAIL_SHOWN = 10  # output lines of a failed RUN shown when progress did not show them


def _settings() -> Any:
    return click.get_current_context().find_root().obj


def _kv(values: tuple[str, ...], what: str, *, from_env: bool = False) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, eq, value = item.partition("=")
        if not key:
            raise click.BadParameter(f"invalid {what} {item!r}: want KEY=VALUE")
        if not eq:
            if not from_env:
                raise click.BadParameter(f"invalid {what} {item!r}: want KEY=VALUE")
            if key not in os.environ:
                continue  # docker: a bare --build-arg NAME takes the caller's env, if set
            value = os.environ[key]
        out[key] = value
    return out


def _csv(spec: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in spec.split(","):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise click.BadParameter(f"invalid {what} {spec!r}: want key=value[,key=value]")
        out[key.strip().lower()] = value.strip()
    return out


def _secrets(values: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for spec in values:
        fields = _csv(spec, "--secret")
        sid = fields.get("id")
        if not sid:
            raise click.BadParameter(f"invalid --secret {spec!r}: id= is required")
        if "env" in fields:
            if fields["env"] not in os.environ:
                raise click.BadParameter(
                    f"--secret {sid}: environment variable {fields['env']} is not set"
                )
            out[sid] = ("env", os.environ[fields["env"]])
            continue
        src = fields.get("src") or fields.get("source")
        if src is None:
            if sid in os.environ:
                out[sid] = ("env", os.environ[sid])
                continue
            raise click.BadParameter(f"invalid --secret {spec!r}: give src=FILE or env=VAR")
        if not Path(src).is_file():
            raise click.BadParameter(f"--secret {sid}: {src} is not a file")
        out[sid] = ("file", str(Path(src).absolute()))
    return out


def _output(spec: str | None) -> tuple[str, Path] | None:
    if spec is None:
        return None
    fields = _csv(spec, "--output") if "=" in spec else {"type": "local", "dest": spec}
    kind = fields.get("type", "")
    formats = {"oci": "oci-archive", "docker": "docker-archive"}
    if kind not in formats:
        raise click.BadParameter(
            f"unsupported --output type {kind!r} (want type=oci or type=docker)"
        )
    dest = fields.get("dest")
    if not dest:
        raise click.BadParameter("--output needs dest=FILE.tar")
    return formats[kind], Path(dest)


def _epoch(build_args: dict[str, str]) -> int | None:
    raw = build_args.get("SOURCE_DATE_EPOCH") or os.environ.get("SOURCE_DATE_EPOCH", "")
    if not raw.strip():
        return None
    try:
        return int(raw)
    except ValueError:
        raise click.BadParameter(f"SOURCE_DATE_EPOCH must be an integer, got {raw!r}") from None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@command()
@click.argument("context", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option(
    "-t", "--tag", "tags", multiple=True, metavar="NAME[:TAG]", help="Name the image (repeatable)."
)
@click.option(
    "-f",
    "--file",
    "dockerfile",
    default=None,
    metavar="PATH",
    help="The Dockerfile (default CONTEXT/Dockerfile; - for stdin).",
)
@click.option(
    "--build-arg",
    "build_args",
    multiple=True,
    metavar="KEY[=VALUE]",
    help="Set a build-time variable (repeatable).",
)
@click.option("--target", default=None, help="Build this stage (and what it needs) only.")
@click.option("--no-cache", is_flag=True, help="Run every step, ignoring the build cache.")
@click.option("--pull", is_flag=True, help="Always pull base images, even when present locally.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Add a label to the image (repeatable).",
)
@click.option(
    "--iidfile",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the image ID to this file.",
)
@click.option(
    "-o",
    "--output",
    default=None,
    metavar="type=oci|docker,dest=FILE.tar",
    help="Also export the image as an archive.",
)
@click.option("--push", is_flag=True, help="Push the tagged image to its registry.")
@click.option(
    "--platform", default=None, metavar="OS/ARCH", help="Target platform (only the native one)."
)
@click.option(
    "--progress",
    type=click.Choice(["auto", "plain", "tty", "quiet"]),
    default="auto",
    show_default=True,
    help="How to show progress.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only the image ID.")
@click.option(
    "--network",
    type=click.Choice(["default", "host", "none"]),
    default="default",
    show_default=True,
    help="Network for RUN: default (the default bridge network), host or none.",
)
@click.option(
    "--secret",
    "secrets",
    multiple=True,
    metavar="id=ID,src=FILE|env=VAR",
    help="A secret for RUN --mount=type=secret (repeatable).",
)
@click.option(
    "--compression",
    type=click.Choice(["gzip", "zstd"]),
    default="gzip",
    show_default=True,
    help="Layer compression.",
)
def build(
    context: Path,
    tags: tuple[str, ...],
    dockerfile: str | None,
    build_args: tuple[str, ...],
    target: str | None,
    no_cache: bool,
    pull: bool,
    labels: tuple[str, ...],
    iidfile: Path | None,
    output: str | None,
    push: bool,
    platform: str | None,
    progress: str,
    quiet: bool,
    network: str,
    secrets: tuple[str, ...],
    compression: str,
) -> None:
    """Build an image from a Dockerfile and a context directory."""
    from lamina.builder import BuildError, BuildOptions
    from lamina.cli._common import open_engine

    if str(context).startswith(("http://", "https://", "git@")) or str(context) == "-":
        raise click.BadParameter(
            "only a local directory can be the build context", param_hint="CONTEXT"
        )
    if push and not tags:
        raise click.UsageError("--push needs a name: give -t NAME")
    args = _kv(build_args, "--build-arg", from_env=True)
    out = _output(output)
    opts = BuildOptions(
        context=context,
        tags=list(tags),
        build_args=args,
        target=target,
        no_cache=no_cache,
        pull=pull,
        labels=_kv(labels, "--label"),
        platform=platform,
        network=network,
        secrets=_secrets(secrets),
        compression=compression,
        source_date_epoch=_epoch(args),
        registry_config=_registry_config,  # called only if something is pulled
    )
    if dockerfile == "-":
        opts.dockerfile_text = sys.stdin.read()
    elif dockerfile is not None:
        opts.dockerfile = Path(dockerfile)
    reporter = _progress("quiet" if quiet else progress)
    engine = open_engine()
    try:
        result = engine.build(opts, reporter)
    except BuildError as e:
        reporter.close()
        if e.output_tail and not reporter.shows_output:
            # As BuildKit does: the failed step and the last lines it printed.
            click.echo("------", err=True)
            click.echo(f" > {e.step}:", err=True)
            for line in e.output_tail[-_TAIL_SHOWN:]:
                click.echo(line, err=True)
            click.echo("------", err=True)
        raise
    except BaseException:
        reporter.close()
        raise
    reporter.close()
    if iidfile is not None:
        _write_atomic(iidfile, result.image_id)
    remote = _settings().remote is not None  # the image is the daemon's
    if out is not None:
        _export(result, out, quiet, engine if remote else None)
    if push:
        _push(result.tags, quiet, engine if remote else None)
    if quiet:
        click.echo(result.image_id)
        return
    click.echo(
        f"Built {result.image_id[7:19]} ({result.steps} steps, {result.cached} cached)", err=True
    )
    for tag in tags:
        click.echo(f"Tagged {tag}", err=True)
    click.echo(result.image_id)


def _registry_config() -> Any:
    from lamina.cli._images import registry_config

    return registry_config()


def _progress(mode: str) -> Any:
    from lamina.builder import PlainProgress, Progress, RichProgress

    if mode == "quiet":
        return Progress()
    if mode == "tty" or (mode == "auto" and sys.stderr.isatty()):
        return RichProgress()
    return PlainProgress(sys.stderr)


def _export(result: Any, out: tuple[str, Path], quiet: bool, remote: Any) -> None:
    fmt, dest = out
    name = result.tags[0] if result.tags else result.image_id
    if remote is not None:
        remote.save_images([name], dest, format=fmt)
    else:
        from lamina.cli._images import open_local
        from lamina.image import save

        local = open_local()
        try:
            save(local, [name], dest, format=fmt)  # type: ignore[arg-type]
        finally:
            local.close()
    if not quiet:
        click.echo(f"Exported {fmt} to {dest}", err=True)


def _push(tags: list[str], quiet: bool, remote: Any) -> None:
    from lamina.cli._images import open_local, progress_sink, registry_config
    from lamina.registry import push

    if remote is not None:
        for tag in tags:
            digest = remote.push_image(tag, progress=progress_sink(quiet))
            if not quiet:
                click.echo(f"Pushed {tag}@{digest}", err=True)
        return
    local = open_local()
    try:
        for tag in tags:
            digest = push(local, tag, progress=progress_sink(quiet), config=registry_config())
            if not quiet:
                click.echo(f"Pushed {tag}@{digest}", err=True)
    finally:
        local.close()


@group()
def builder() -> None:
    """Manage the build cache."""


@builder.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "-a",
    "--all",
    "all_",
    is_flag=True,
    help="Accepted for Docker compatibility (everything is pruned).",
)
def builder_prune(force: bool, all_: bool) -> None:
    """Remove the build cache: cached steps, cache mounts, intermediate layers."""
    from lamina.builder import prune

    del all_
    if not force and sys.stdin.isatty():
        click.confirm(
            "This removes all build cache. Are you sure you want to continue?", abort=True
        )
    steps, removed = prune(_settings().root)
    for item in removed:
        click.echo(f"deleted: {item}")
    click.echo(f"Total: {steps} cached steps, {len(removed)} objects removed")
