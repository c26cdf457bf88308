"""``docker import``: make a one-layer image from a root filesystem.

``import_rootfs(local, source, reference=..., changes=[...])`` takes a directory,
a tarball (plain, gzip, zstd, xz or bzip2, detected by its magic bytes) or a
stream of one, and stores an OCI image whose single gzip layer holds that tree:

- a directory is archived by ``write_layer`` (sorted, numeric owners, mtimes
  clamped to SOURCE_DATE_EPOCH), written straight into the content store;
- a tarball is passed through entry by entry in one streaming pass: each entry is
  re-emitted with a sanitised header (names made relative, ``..`` escapes refused,
  hardlink targets checked, only xattrs kept from PAX records, sparse files
  expanded) and recompressed on the fly. This is faster than extracting to a
  scratch directory and re-archiving (no filesystem round trip) and keeps exactly
  what the tarball holds, owners and device nodes included, even for tarballs a
  non-root user could not extract; symlink targets are kept as written, which is
  safe because unpacking clamps them to the image root.

The config records the platform (the host's unless given), the creation time
(SOURCE_DATE_EPOCH when set, so that the same input gives the same image ID), a
history entry "Imported from <source>" (or ``message``), the layer's diff_id and
whatever ``--change`` instructions set. ``apply_changes`` implements those
Dockerfile instructions (CMD, ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL,
ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR) as ``docker import --change`` and
``docker commit --change`` do, including ``$VAR`` expansion from the ENV set so
far. The layer is unpacked into its snapshot before the image is recorded, as
``create`` would unpack it: a tarball with an entry unpacking refuses (a hardlink
to a file it does not hold...) fails the import, not the first run. The import runs
under a store lease (what it stores is protected from a concurrent ``rmi``/``prune``
until its record is written); on failure, the blobs and snapshots it added are
collected again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import lzma
import os
import posixpath
import re
import secrets
import tarfile
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from isal import igzip_threaded

from lamina.errors import InvalidLayer, InvalidReference, LaminaError, NotFound
from lamina.image import _media as media
from lamina.image._archive import _decompressed
from lamina.image._config import (
    HEALTHCHECK_DURATIONS,
    expose_ports,
    merge_env,
    ordered_config,
    parse_duration,
    rfc3339,
    valid_signal,
)
from lamina.image._content import BlobWriter, ContentStore
from lamina.image._gc import StoreLease
from lamina.image._layers import Compression, LayerWritten, normalise_parts, write_layer
from lamina.image._local import LocalImages
from lamina.image._manifest import Descriptor, Manifest, Platform, dump_json
from lamina.image._platform import host_platform
from lamina.image._reference import Reference, parse_reference
from lamina.image._store import ImageRecord

_CHUNK = 1 << 20
_GZIP_LEVEL = 1  # as write_layer: isal level 1 is the speed/size sweet spot for layers
_XATTR_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.")

INSTRUCTIONS = (
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "HEALTHCHECK",
    "LABEL",
    "ONBUILD",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
)


def import_rootfs(
    local: LocalImages,
    source: Path | BinaryIO,
    *,
    reference: str | None = None,
    changes: Sequence[str] = (),
    message: str | None = None,
    platform: Platform | None = None,
    source_date_epoch: int | None = None,
) -> ImageRecord:
    """Import a root filesystem (directory, tarball, or tar stream) as an image named
    ``reference`` (tag defaults to latest; None leaves it dangling)."""
    if isinstance(source, str | os.PathLike):
        source = Path(source)
    ref = _target(reference)
    container_config = apply_changes(changes)  # a bad change fails before any work
    epoch = _epoch(source_date_epoch)
    plat = platform or host_platform()
    label = str(source) if isinstance(source, Path) else "-"
    created_blobs: list[str] = []
    made_snapshots: list[str] = []
    with local.lease("import") as lease:
        try:
            layer_digest, layer_size, diff_id = _write_layer(
                local, source, epoch, lease, created_blobs
            )
            created = rfc3339(epoch * 1_000_000_000 if epoch is not None else time.time_ns())
            config: dict[str, Any] = {"created": created, "architecture": plat.architecture}
            config["os"] = plat.os
            if plat.variant:
                config["variant"] = plat.variant
            config["config"] = container_config
            config["rootfs"] = {"type": "layers", "diff_ids": [diff_id]}
            history = {"created": created, "comment": message or f"Imported from {label}"}
            config["history"] = [history]
            config_bytes = json.dumps(config, separators=(",", ":"), ensure_ascii=False).encode()
            config_digest = _add(local, lease, config_bytes, created_blobs)
            manifest = Manifest(
                media.OCI_MANIFEST,
                Descriptor(media.OCI_CONFIG, config_digest, len(config_bytes)),
                [Descriptor(media.OCI_LAYER_GZIP, layer_digest, layer_size)],
            )
            target = _add(local, lease, dump_json(manifest), created_blobs)
            record = local.record(target, plat)
            # Unpacked as create would: an entry apply_layer refuses (a hardlink to a
            # file the tarball lacks...) fails the import, not the first run.
            try:
                local.unpack(record, lease, made=made_snapshots)
            except InvalidLayer as e:
                raise InvalidLayer(f"cannot import {label}: {e}") from None
            return local.images.put(record, [str(ref)] if ref else [])
        except BaseException:
            lease.unprotect(blobs=created_blobs, snapshots=made_snapshots)
            if created_blobs or made_snapshots:
                local.collect_garbage(blobs=created_blobs, snapshots=made_snapshots)
            raise


def _target(reference: str | None) -> Reference | None:
    if reference is None:
        return None
    ref = parse_reference(reference)
    if ref.digest is not None:
        raise InvalidReference(f"cannot import to a digest reference: {reference}")
    return ref


def _epoch(value: int | None) -> int | None:
    if value is not None:
        return value
    env = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not env:
        return None
    try:
        return int(env)
    except ValueError:
        raise LaminaError(f"SOURCE_DATE_EPOCH must be an integer, got {env!r}") from None


def _add(local: LocalImages, lease: StoreLease, data: bytes, created: list[str]) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if digest not in lease.protect(blobs=[digest]).blobs:
        local.content.add(data, digest)
        created.append(digest)
    return digest


# ---------------------------------------------------------------------------- the layer


class _BlobSink:
    """File-like adapter over an ingest, what write_layer and the compressor write to;
    it counts the compressed bytes (the writer hashes them)."""

    def __init__(self, writer: BlobWriter) -> None:
        self.writer = writer
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        n = self.writer.write(data)
        self.size += n
        return n

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False

    def close(self) -> None:
        pass


def ingest_layer(
    content: ContentStore,
    src: Path,
    *,
    ref: str,
    lease: StoreLease | None = None,
    compression: Compression = Compression.GZIP,
    overlay_upper: bool = False,
    source_date_epoch: int | None = None,
) -> LayerWritten:
    """Archive the tree ``src`` (``write_layer``) straight into ``content`` through an
    ingest named ``ref``-<pid>-<random>: committed, or dropped when the blob is
    already there; nothing is left behind on failure. The blob is protected by
    ``lease`` before it is committed (or found present). What ``lamina commit`` and
    the builder store an upper directory with."""
    writer = content.writer(f"{ref}-{os.getpid()}-{secrets.token_hex(8)}")
    try:
        written = write_layer(
            src,
            cast(BinaryIO, _BlobSink(writer)),
            compression=compression,
            overlay_upper=overlay_upper,
            source_date_epoch=source_date_epoch,
        )
        present = (
            written.digest in lease.protect(blobs=[written.digest]).blobs
            if lease is not None
            else content.exists(written.digest)
        )
        if present:
            writer.abort()
        else:
            writer.commit()
    except BaseException:
        writer.abort()
        raise
    return written


def _write_layer(
    local: LocalImages,
    source: Path | BinaryIO,
    epoch: int | None,
    lease: StoreLease,
    created: list[str],
) -> tuple[str, int, str]:
    """Write the layer into the content store; returns (digest, size, diff_id)."""
    ref = f"import-{os.getpid()}-{secrets.token_hex(8)}"
    writer = local.content.writer(ref)
    try:
        sink = _BlobSink(writer)
        if isinstance(source, Path) and source.is_dir():
            written = write_layer(
                source,
                cast(BinaryIO, sink),
                compression=Compression.GZIP,
                source_date_epoch=epoch,
            )
            diff_id = written.diff_id
        elif isinstance(source, Path):
            try:
                f = open(source, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                raise NotFound(f"import source {source} not found") from None
            with f:
                diff_id = _passthrough(f, sink, epoch, str(source))
        else:
            diff_id = _passthrough(source, sink, epoch, "-")
        digest = writer.digest()
        if digest in lease.protect(blobs=[digest]).blobs:
            writer.abort()
        else:
            writer.commit()
            created.append(digest)
        return digest, sink.size, diff_id
    except BaseException:
        writer.abort()
        raise


class _Uncompressed:
    """Hashes the tar stream (the diff_id) on its way into the gzip compressor."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.out.write(data)
        return len(data)


def _passthrough(f: BinaryIO, sink: _BlobSink, epoch: int | None, label: str) -> str:
    """Re-emit a rootfs tarball as a gzip layer; returns its diff_id."""
    gz = cast(
        IO[bytes],
        igzip_threaded.open(  # type: ignore[no-untyped-call]
            sink, "wb", compresslevel=_GZIP_LEVEL, threads=1
        ),
    )
    plain = _Uncompressed(gz)
    try:
        with _decompressed(f) as stream:
            try:
                src = tarfile.open(  # noqa: SIM115 - closed with the stream
                    fileobj=stream,
                    mode="r|",
                    bufsize=_CHUNK,
                    encoding="utf-8",
                    errors="surrogateescape",
                )
            except tarfile.ReadError as e:
                raise InvalidLayer(f"cannot import {label}: not a tar archive ({e})") from None
            with tarfile.open(
                fileobj=cast(IO[bytes], plain),
                mode="w|",
                format=tarfile.PAX_FORMAT,
                bufsize=_CHUNK,
                encoding="utf-8",
                errors="surrogateescape",
            ) as dst:
                while (member := src.next()) is not None:
                    src.members.clear()  # type: ignore[attr-defined]  # else kept for ever
                    clean = _sanitise(member, epoch, label)
                    if clean is None:
                        continue
                    data = src.extractfile(member) if clean.isreg() else None
                    dst.addfile(clean, data)
    except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error) as e:
        raise InvalidLayer(f"cannot import {label}: {e}") from None
    except InvalidLayer as e:
        if str(e).startswith(f"cannot import {label}:"):
            raise  # already says which import failed
        raise InvalidLayer(f"cannot import {label}: {e}") from None
    except OSError as e:
        if e.errno is not None:
            raise  # the host failing (ENOSPC...), not the tarball
        raise InvalidLayer(f"cannot import {label}: corrupt data ({e})") from None
    finally:
        gz.close()
    return "sha256:" + plain.sha.hexdigest()


def _relative(name: str, label: str) -> str:
    parts = normalise_parts(name)
    if parts is None:
        raise InvalidLayer(f"cannot import {label}: entry {name!r} escapes the root")
    return "/".join(parts)


def _sanitise(m: tarfile.TarInfo, epoch: int | None, label: str) -> tarfile.TarInfo | None:
    if "\x00" in m.name or "\x00" in m.linkname:
        raise InvalidLayer(f"cannot import {label}: entry {m.name!r} has a NUL byte")
    name = _relative(m.name, label)
    if not name:
        return None  # the root directory itself: its metadata belongs to the runtime
    out = tarfile.TarInfo(name)
    if m.isreg():
        out.type = tarfile.REGTYPE  # sparse and contiguous files become plain files
        out.size = m.size
    elif m.isdir():
        out.type = tarfile.DIRTYPE
    elif m.issym():
        out.type = tarfile.SYMTYPE
        out.linkname = m.linkname
    elif m.islnk():
        out.type = tarfile.LNKTYPE
        out.linkname = _relative(m.linkname, label)
        if not out.linkname:
            raise InvalidLayer(f"cannot import {label}: hardlink {m.name!r} points at the root")
    elif m.ischr() or m.isblk() or m.isfifo():
        out.type = m.type
        out.devmajor, out.devminor = m.devmajor, m.devminor
    else:
        return None  # GNU volume labels and the like carry no file
    out.mode = m.mode
    out.uid, out.gid = m.uid, m.gid
    out.uname, out.gname = m.uname, m.gname
    mtime = int(m.mtime)
    out.mtime = min(mtime, epoch) if epoch is not None else mtime
    out.pax_headers = {k: v for k, v in m.pax_headers.items() if k.startswith(_XATTR_PREFIXES)}
    return out


# ---------------------------------------------------------------------------- --change


def apply_changes(changes: Sequence[str], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Apply Dockerfile instructions (``docker import/commit --change``) to a container
    config (the ``config`` object of an image config); returns the new config."""
    cfg: dict[str, Any] = json.loads(json.dumps(dict(base or {})))  # deep copy
    state = _ChangeState(cfg)
    for change in changes:
        line = change.strip()
        if not line:
            continue
        word, _, args = line.partition(" ")
        if "\t" in word:
            word, _, rest = word.partition("\t")
            args = rest + " " + args
        instruction = word.upper()
        handler = _HANDLERS.get(instruction)
        if handler is None:
            raise LaminaError(
                f"unknown --change instruction {word!r} (supported: {', '.join(INSTRUCTIONS)})"
            )
        args = args.strip()
        if not args:
            raise LaminaError(f"--change {instruction} needs an argument")
        handler(state, args, instruction)
    return ordered_config(cfg)


class _ChangeState:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.cmd_set = False

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.cfg.get("Env") or []:
            k, _, v = str(item).partition("=")
            out[k] = v
        return out


def _exec_or_shell(args: str) -> list[str]:
    """JSON (exec) form when ``args`` is a JSON array of strings, else shell form."""
    if args.startswith("["):
        try:
            value = json.loads(args)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return ["/bin/sh", "-c", args]


def _cmd(state: _ChangeState, args: str, _: str) -> None:
    state.cfg["Cmd"] = _exec_or_shell(args)
    state.cmd_set = True


def _entrypoint(state: _ChangeState, args: str, _: str) -> None:
    state.cfg["Entrypoint"] = _exec_or_shell(args)
    if not state.cmd_set:
        state.cfg.pop("Cmd", None)  # as in a Dockerfile: a new ENTRYPOINT drops inherited CMD


def _pairs(state: _ChangeState, args: str, instruction: str) -> list[tuple[str, str]]:
    """``K=V K2="v 2"`` or the legacy ``K some value`` form of ENV and LABEL."""
    env = state.env()
    first, *rest = args.split(None, 1)
    if "=" not in first:
        if not rest:
            raise LaminaError(f"--change {instruction} {first}: missing value (want {first}=value)")
        return [(first, "".join(_words(rest[0], env, split=False)))]
    out = []
    for word in _words(args, env, split=True):
        key, eq, value = word.partition("=")
        if not eq:
            raise LaminaError(f"--change {instruction}: {word!r} is not of the form name=value")
        if not key:
            raise LaminaError(f"--change {instruction}: empty name in {word!r}")
        out.append((key, value))
    return out


def _env(state: _ChangeState, args: str, instruction: str) -> None:
    pairs = _pairs(state, args, instruction)
    state.cfg["Env"] = merge_env(state.cfg.get("Env") or [], pairs)


def _label(state: _ChangeState, args: str, instruction: str) -> None:
    labels = dict(state.cfg.get("Labels") or {})
    labels.update(_pairs(state, args, instruction))
    state.cfg["Labels"] = labels


def _expose(state: _ChangeState, args: str, _: str) -> None:
    ports = dict(state.cfg.get("ExposedPorts") or {})
    for word in _words(args, state.env(), split=True):
        try:
            keys = expose_ports(word)
        except ValueError as e:
            raise LaminaError(f"--change EXPOSE: {e}") from None
        for key in keys:
            ports[key] = {}
    state.cfg["ExposedPorts"] = ports


def _user(state: _ChangeState, args: str, _: str) -> None:
    state.cfg["User"] = "".join(_words(args, state.env(), split=False))


def _workdir(state: _ChangeState, args: str, _: str) -> None:
    path = "".join(_words(args, state.env(), split=False))
    if not path.startswith("/"):
        path = posixpath.normpath(posixpath.join("/", state.cfg.get("WorkingDir") or "", path))
    state.cfg["WorkingDir"] = path


def _volume(state: _ChangeState, args: str, _: str) -> None:
    items: list[str] | None = None
    if args.startswith("["):
        with contextlib.suppress(ValueError):
            value = json.loads(args)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                items = value
    if items is None:
        items = _words(args, state.env(), split=True)
    volumes = dict(state.cfg.get("Volumes") or {})
    for v in items:
        if not v.strip():
            raise LaminaError("--change VOLUME: empty volume path")
        volumes[v] = {}
    state.cfg["Volumes"] = volumes


def _onbuild(state: _ChangeState, args: str, _: str) -> None:
    trigger = args.split(None, 1)[0].upper()
    if trigger in ("ONBUILD", "FROM", "MAINTAINER"):
        raise LaminaError(f"--change ONBUILD: {trigger} is not allowed as an ONBUILD trigger")
    state.cfg["OnBuild"] = [*(state.cfg.get("OnBuild") or []), args]


def _stopsignal(state: _ChangeState, args: str, _: str) -> None:
    sig = "".join(_words(args, state.env(), split=False))
    if not valid_signal(sig):
        raise LaminaError(f"--change STOPSIGNAL: invalid signal {sig!r}")
    state.cfg["StopSignal"] = sig


def _duration(flag: str, text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError:
        what = f"invalid duration {text!r} for" if text else "empty duration for"
        raise LaminaError(f"--change HEALTHCHECK: {what} --{flag}") from None


def _healthcheck(state: _ChangeState, args: str, _: str) -> None:
    if args.upper() == "NONE":
        state.cfg["Healthcheck"] = {"Test": ["NONE"]}
        return
    check: dict[str, Any] = {}
    rest = args
    keys = HEALTHCHECK_DURATIONS
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        rest = rest.strip()
        name, eq, value = flag[2:].partition("=")
        if not eq:
            raise LaminaError(f"--change HEALTHCHECK: flag --{name} needs =value")
        if name == "retries":
            if not value.isdigit():
                raise LaminaError(
                    f"--change HEALTHCHECK: --retries must be a number, got {value!r}"
                )
            check["Retries"] = int(value)
        elif name in keys:
            check[keys[name]] = _duration(name, value)
        else:
            raise LaminaError(f"--change HEALTHCHECK: unknown flag --{name}")
    word, _, command = rest.partition(" ")
    command = command.strip()
    if word.upper() != "CMD" or not command:
        raise LaminaError("--change HEALTHCHECK: want NONE or [--flags] CMD command")
    test = _exec_or_shell(command)
    if test[:2] == ["/bin/sh", "-c"] and not command.startswith("["):
        check["Test"] = ["CMD-SHELL", command]
    else:
        check["Test"] = ["CMD", *test]
    state.cfg["Healthcheck"] = {"Test": check.pop("Test"), **check}


_HANDLERS = {
    "CMD": _cmd,
    "ENTRYPOINT": _entrypoint,
    "ENV": _env,
    "EXPOSE": _expose,
    "HEALTHCHECK": _healthcheck,
    "LABEL": _label,
    "ONBUILD": _onbuild,
    "STOPSIGNAL": _stopsignal,
    "USER": _user,
    "VOLUME": _volume,
    "WORKDIR": _workdir,
}


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _words(text: str, env: Mapping[str, str], *, split: bool) -> list[str]:
    """Docker's shell-word processing: quotes removed, backslash escapes, ``$VAR`` and
    ``${VAR}`` / ``${VAR:-default}`` / ``${VAR:+alt}`` expanded from ``env``; split on
    unquoted whitespace when ``split``."""
    words: list[str] = []
    cur: list[str] = []
    started = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if split and c in " \t\r\n":
            if started:
                words.append("".join(cur))
                cur, started = [], False
            i += 1
            continue
        started = True
        if c == "\\":
            cur.append(text[i + 1] if i + 1 < n else "\\")
            i += 2
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise LaminaError(f"unterminated single quote in {text!r}")
            cur.append(text[i + 1 : end])
            i = end + 1
        elif c == '"':
            i += 1
            while True:
                if i >= n:
                    raise LaminaError(f"unterminated double quote in {text!r}")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and text[i + 1] in '"\\$':
                    cur.append(text[i + 1])
                    i += 2
                elif c == "$":
                    value, i = _expand(text, i, env)
                    cur.append(value)
                else:
                    cur.append(c)
                    i += 1
        elif c == "$":
            value, i = _expand(text, i, env)
            cur.append(value)
        else:
            cur.append(c)
            i += 1
    if started:
        words.append("".join(cur))
    return words


def _expand(text: str, i: int, env: Mapping[str, str]) -> tuple[str, int]:
    """Expand the variable at ``text[i] == "$"``; returns (value, next index)."""
    if i + 1 < len(text) and text[i + 1] == "{":
        end = text.find("}", i + 2)
        if end < 0:
            raise LaminaError(f"missing '}}' in {text!r}")
        body = text[i + 2 : end]
        m = _NAME_RE.match(body)
        if m is None:
            raise LaminaError(f"bad substitution ${{{body}}} in {text!r}")
        name, rest = m.group(0), body[m.end() :]
        value = env.get(name)
        if not rest:
            return value or "", end + 1
        if rest.startswith(":-"):
            word = "".join(_words(rest[2:], env, split=False))
            return (value if value else word), end + 1
        if rest.startswith(":+"):
            word = "".join(_words(rest[2:], env, split=False))
            return (word if value else ""), end + 1
        raise LaminaError(f"unsupported substitution ${{{body}}} in {text!r}")
    m = _NAME_RE.match(text, i + 1)
    if m is None:
        return "$", i + 1
    return env.get(m.group(0), ""), m.end()
