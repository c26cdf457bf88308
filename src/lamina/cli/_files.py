"""A container's files: ``cp`` (Docker's rules for what lands where, the archive
extracted with ``apply_layer`` on this side), ``diff`` and ``commit``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import click

from lamina.cli._click import FlagError
from lamina.cli._common import _command, _settings, open_engine

if TYPE_CHECKING:
    from lamina.engine import Engine


# -- files: cp, diff, commit ---------------------------------------------------------


class _IterReader:
    """A read()-able stream over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._it = chunks
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._it)
            except StopIteration:
                break
        if n < 0:
            data, self._buf = self._buf, b""
        else:
            data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def readable(self) -> bool:
        return True


def _split_container_path(arg: str) -> tuple[str, str] | None:
    """``CTR:PATH`` -> (CTR, PATH); None for a local path (one with a '/' before any ':',
    or no ':' at all), as Docker decides."""
    if arg == "-" or arg.startswith(("/", ".")):
        return None
    head, sep, tail = arg.partition(":")
    if not sep or "/" in head:
        return None
    return head, tail or "/"


@_command("cp")
@click.argument("src")
@click.argument("dest")
@click.option("-L", "--follow-link", is_flag=True, help="Always follow a symbolic link in SRC.")
@click.option(
    "-a", "--archive", is_flag=True, help="Archive mode: keep the source's owners (uid/gid)."
)
@click.option("-q", "--quiet", is_flag=True, help="Accepted for Docker compatibility.")
def cp(src: str, dest: str, follow_link: bool, archive: bool, quiet: bool) -> None:
    """Copy files between a container and the host: CTR:PATH DEST, SRC CTR:PATH;
    '-' is a tar stream on stdout (as DEST) or stdin (as SRC). Copies belong to root
    in the container, to you on the host, unless -a."""
    s, d = _split_container_path(src), _split_container_path(dest)
    if (s is None) == (d is None):
        raise FlagError(
            "copying between containers, or between local paths, is not supported: "
            "give exactly one CONTAINER:PATH",
            "cp",
        )
    engine = open_engine()
    if s is not None:
        _copy_from_container(engine, s[0], s[1], dest, follow=follow_link, archive=archive)
    else:
        assert d is not None
        _copy_to_container(engine, src, d[0], d[1], follow=follow_link, archive=archive)


def _copy_from_container(
    engine: Engine, ref: str, path: str, dest: str, *, follow: bool, archive: bool
) -> None:
    """Docker's cp to the host: into DEST if it is a directory, else as DEST. The
    archive from the container is extracted with ``apply_layer`` (nothing lands
    outside its target); without ``archive`` the files belong to whoever runs this."""
    import shutil

    from lamina import _leases
    from lamina.errors import LaminaError
    from lamina.image import apply_layer
    from lamina.runtime._fsops import archive_name

    if dest == "-":
        out = sys.stdout.buffer
        for chunk in engine.copy_out(ref, path, follow_link=follow):
            out.write(chunk)
        out.flush()
        return
    # The destination is checked before the container is asked for anything.
    dest_path = os.path.abspath(dest)
    into_dir = os.path.isdir(dest_path)
    parent = os.path.dirname(dest_path)
    if not into_dir and not os.path.isdir(parent):
        raise LaminaError(f"destination directory {parent} does not exist")
    top = archive_name(path)
    if not into_dir and top == "." and os.path.lexists(dest_path):
        raise LaminaError(f"cannot copy a directory to a file: {dest}")
    stream = cast(BinaryIO, _IterReader(iter(engine.copy_out(ref, path, follow_link=follow))))
    if into_dir:
        # Into an existing directory: the tar's top entry is the source's base name.
        apply_layer(stream, Path(dest_path), owners=archive)
        return
    if top == ".":  # a directory's contents (DIR/.): DEST becomes that directory
        os.mkdir(dest_path)
        apply_layer(stream, Path(dest_path), owners=archive)
        return
    # Anything else lands beside DEST first, then takes its name in one rename; a
    # lease removes the scratch directory if this process dies before that.
    with _leases.take(Path(_settings().root), "cp") as lease:
        tmp = os.path.join(parent, f".lamina-cp-{os.urandom(6).hex()}")
        lease.add_path(tmp)
        os.mkdir(tmp, 0o700)
        try:
            apply_layer(stream, Path(tmp), owners=archive)
            got = os.path.join(tmp, top)
            if not os.path.lexists(got):
                entries = os.listdir(tmp)
                if len(entries) != 1:
                    raise LaminaError(f"unexpected archive from container for {path}")
                got = os.path.join(tmp, entries[0])
            is_dir = os.path.isdir(got) and not os.path.islink(got)
            if os.path.lexists(dest_path):
                if is_dir:
                    raise LaminaError(f"cannot copy a directory to a file: {dest}")
                os.replace(got, dest_path)
            else:
                if dest.endswith("/") and not is_dir:
                    raise LaminaError(f"destination directory {dest} does not exist")
                os.rename(got, dest_path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _copy_to_container(
    engine: Engine, src: str, ref: str, path: str, *, follow: bool, archive: bool
) -> None:
    """Docker's cp into a container: a destination symlink is followed (inside the
    container), an existing directory receives SRC under its name, anything else
    becomes SRC. The archive is made here, owned by root (0:0) unless ``archive``."""
    import posixpath

    from lamina.errors import LaminaError
    from lamina.runtime._fsops import tar_of

    if src == "-":
        engine.copy_in(ref, path, sys.stdin.buffer)
        return
    src_path = os.path.abspath(src)
    if (follow or src.endswith("/")) and os.path.islink(src_path):
        src_path = os.path.realpath(src_path)  # archived under the link's name
    if not os.path.lexists(src_path):
        raise LaminaError(f"no such file or directory: {src}")
    src_is_dir = os.path.isdir(src_path) and not os.path.islink(src_path)
    contents_only = src.rstrip("/").endswith("/.") or src in (".", "./")

    dest, dest_kind = _container_destination(engine, ref, path)
    if dest_kind == "dir":
        into, name = dest, "." if contents_only else os.path.basename(os.path.abspath(src))
    else:
        if dest_kind == "file" and src_is_dir:
            raise LaminaError(f"cannot copy a directory to a file: {path}")
        if dest_kind == "missing" and dest.endswith("/") and not src_is_dir:
            raise LaminaError(f"destination directory {path} does not exist")
        stripped = dest.rstrip("/") or "/"
        into, name = posixpath.dirname(stripped) or "/", posixpath.basename(stripped)
    try:
        chunks = tar_of(src_path, name, owner=None if archive else (0, 0))
        engine.copy_in(ref, into, cast(BinaryIO, _IterReader(chunks)))
    except OSError as e:  # reading the source on this host
        raise LaminaError(f"cannot read {e.filename or src}: {e.strerror}") from None


def _container_destination(engine: Engine, ref: str, path: str) -> tuple[str, str]:
    """Where a copy into ``path`` goes, as Docker decides it: the path, or where a
    symlink there leads (inside the container); and "dir", "file" or "missing"."""
    from lamina.errors import NotFound

    try:
        found = engine.stat_path(ref, path)
        if found.is_symlink:
            path = found.link_target
            found = engine.stat_path(ref, path)
    except NotFound:
        return path, "missing"
    return path, "dir" if found.is_dir else "file"


@_command("diff")
@click.argument("container")
def diff(container: str) -> None:
    """Inspect changes to files or directories on a container's filesystem."""
    changes: list[Any] = open_engine().diff(container)
    for change in changes:
        click.echo(f"{change.kind} {change.path}")


@_command("commit")
@click.argument("container")
@click.argument("reference", required=False)
@click.option("-c", "--change", "changes", multiple=True, help="Apply a Dockerfile instruction.")
@click.option("-m", "--message", default=None, help="Commit message.")
@click.option("-a", "--author", default=None, help='Author (e.g. "Jane <jane@example.com>").')
@click.option(
    "-p/-P", "--pause/--no-pause", default=True, help="Pause the container during commit (default)."
)
def commit(
    container: str,
    reference: str | None,
    changes: tuple[str, ...],
    message: str | None,
    author: str | None,
    pause: bool,
) -> None:
    """Create a new image from a container's changes; prints the image ID."""
    image_id = open_engine().commit(
        container, reference, changes=list(changes), message=message, author=author, pause=pause
    )
    click.echo(image_id)
