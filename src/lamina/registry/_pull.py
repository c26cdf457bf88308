"""Pull: registry -> content store -> snapshots -> image record.

Lifecycle of one ``pull(local, ref)``:

1. Policy against the local store: ``never`` (local or NotFound), ``if-not-present``
   (local without any network), ``newer`` (HEAD the manifest; re-pull only when the
   remote digest differs), ``always``.
2. Resolve: GET the manifest by tag or digest (digest verified); an index is
   narrowed to the platform manifest (``--platform`` or the host's); GET the config.
3. Layers download concurrently (``max_concurrent`` threads) into content-store
   ingests keyed ``pull-<digest>``; each layer unpacks into its snapshot *while* it
   downloads, reading the ingest as it grows (``_follow``). The unpacker sees the
   end of the stream only after the blob's digest is verified, and the snapshot
   itself is checked against the config's diff_id, so nothing unverified lands.
4. Only when every layer is downloaded, verified and unpacked are the blobs
   committed (layers, config, manifest, index last) and the image record written
   with its names (the tag and ``repo@digest``).

The pull runs under a store lease (``LocalImages.lease``; or the caller's, e.g. a
build's): before relying on a blob or snapshot it finds present (a layer shared with
another image) or creating one, it protects it (``StoreLease.protect``), so a
concurrent ``rmi`` or ``image prune`` cannot sweep it away before the record names
it; its unpack scratch dirs are registered on the lease. A layer listed twice in a
manifest is downloaded once (two writers on one ingest would interleave their bytes).

Failure leaves nothing half-written: no blob is committed, snapshots this pull
created are collected again, no record is written. Partial downloads stay as ingests
so the next pull resumes them with a Range request (a digest mismatch discards the
ingest); taking the lease removes abandoned ones past ``RESUMABLE_SECONDS``.

Concurrent pulls (threads or processes) needing the same blobs serialise on
``flock``s under ``<root>/locks/`` (64 stripes by digest, taken in order up front),
so they never write into one ingest at the same time nor deadlock; the later one
finds the blobs committed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from lamina.errors import DigestMismatch, InvalidLayer, InvalidManifest, LaminaError, NotFound
from lamina.image._content import BlobWriter
from lamina.image._gc import StoreLease
from lamina.image._local import LocalImages
from lamina.image._manifest import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    check_layers,
    parse_image_config,
    parse_manifest,
)
from lamina.image._platform import host_platform, matches, parse_platform, select_manifest
from lamina.image._reference import Reference, parse_reference
from lamina.image._snapshots import chain_ids
from lamina.image._store import ImageRecord
from lamina.registry._client import BlobSink, FetchedManifest, RegistryClient, client_session
from lamina.registry._config import RegistryConfig
from lamina.registry._follow import Follow, Restarted, TeeSink
from lamina.registry._progress import NullProgress, ProgressEvent, ProgressSink
from lamina.registry._sources import BlobSources

PullPolicy = Literal["if-not-present", "always", "never", "newer"]
POLICIES: tuple[str, ...] = ("if-not-present", "always", "never", "newer")
UNPACK_WORKERS = 2
LOCK_STRIPES = 64
# Unpack while downloading (False: after the download; kept for benchmarks and triage).
STREAM_UNPACK = True


def pull(
    local: LocalImages,
    ref: str | Reference,
    *,
    policy: str = "if-not-present",
    platform: Platform | None = None,
    progress: ProgressSink | None = None,
    config: RegistryConfig | None = None,
    max_concurrent: int = 3,
    client: RegistryClient | None = None,
    unpack: bool = True,
    lease: StoreLease | None = None,
) -> ImageRecord:
    """Make ``ref`` present locally (blobs, snapshots, record) according to ``policy``
    and return its record.

    ``platform`` picks the manifest of an index (default: the host's); ``config``
    gives TLS/insecure settings (default: ``RegistryConfig.load()``); ``client``
    reuses a RegistryClient for the reference's registry; ``unpack=False`` stores
    blobs and the record but makes no snapshots (unpacked later on demand);
    ``lease``: the store lease of the caller's work (a build's), which then keeps
    protecting what the image needs after the pull; else the pull takes its own."""
    if policy not in POLICIES:
        raise LaminaError(f"unknown pull policy {policy!r} (want one of {', '.join(POLICIES)})")
    reference = parse_reference(ref) if isinstance(ref, str) else ref
    with contextlib.ExitStack() as stack:
        if lease is None:
            lease = stack.enter_context(local.lease("pull"))
        return _pull(
            local, reference, policy, platform, progress, config, max_concurrent, client, unpack,
            lease,
        )  # fmt: skip


def _pull(
    local: LocalImages,
    reference: Reference,
    policy: str,
    platform: Platform | None,
    progress: ProgressSink | None,
    config: RegistryConfig | None,
    max_concurrent: int,
    client: RegistryClient | None,
    unpack: bool,
    lease: StoreLease,
) -> ImageRecord:
    sink = progress or NullProgress()
    existing = _local_image(local, reference, platform, lease)
    if policy == "never":
        if existing is None:
            raise NotFound(f"image {reference} is not present locally and the pull policy is never")
        return _ensure_unpacked(local, existing, lease) if unpack else existing
    if policy == "if-not-present" and existing is not None:
        return _ensure_unpacked(local, existing, lease) if unpack else existing

    def from_registry(c: RegistryClient, sink: ProgressSink) -> ImageRecord:
        if policy == "newer" and existing is not None:
            tag = reference.digest or reference.tag or "latest"
            if c.head_manifest(reference.path, tag) in (
                existing.digest,
                existing.manifest_digest,
            ):
                up_to_date = f"{reference}: image is up to date"
                sink.event(ProgressEvent("finished", message=up_to_date))
                return _ensure_unpacked(local, existing, lease) if unpack else existing
        puller = _Pull(local, c, reference, platform, sink, max(1, max_concurrent), unpack, lease)
        return puller.run()

    config = config or RegistryConfig.load()
    missed: list[str] = []
    for mirror in config.mirror_hosts(reference.domain) if client is None else ():
        try:
            with client_session(mirror, config, None, _MirrorProgress(sink)) as c:
                return from_registry(c, _MirrorProgress(sink))
        except LaminaError as e:  # dockerd's rule: the next mirror, then the registry
            missed.append(f"registry mirror {mirror}: {e}")
    try:
        with client_session(reference.domain, config, client, sink) as c:
            return from_registry(c, sink)
    except LaminaError as e:
        if missed:
            e.args = (f"{e} (tried first: {'; '.join(missed)})",)
        raise


class _MirrorProgress:
    """Progress of a pull from a mirror: its failure is not the pull's (the registry
    is tried next), so a "failed" event is not passed on."""

    def __init__(self, sink: ProgressSink) -> None:
        self.sink = sink

    def event(self, ev: ProgressEvent) -> None:
        if ev.kind != "failed":
            self.sink.event(ev)


def _local_image(
    local: LocalImages, ref: Reference, platform: Platform | None, lease: StoreLease
) -> ImageRecord | None:
    """The local record for ``ref``, protected by ``lease`` (None when there is none,
    or it was removed before it could be protected)."""
    record = local.images.lookup(str(ref))
    if record is None:
        return None
    if platform is not None:
        try:
            have = parse_platform(record.platform)
        except LaminaError:
            return None
        if not matches(platform, have):
            return None
    if record.digest not in lease.protect(images=[record.digest]).images:
        return None
    return record


def _ensure_unpacked(local: LocalImages, record: ImageRecord, lease: StoreLease) -> ImageRecord:
    local.unpack(record, lease)
    return record


@dataclass
class _Layer:
    desc: Descriptor
    diff_id: str
    chain: str
    need_blob: bool
    need_unpack: bool
    writer: BlobWriter | None = None
    follow: Follow | None = None
    # The verified download to unpack from, before it is committed (the layer's blob
    # was downloaded for an earlier layer of the same digest).
    source: Path | None = None


@dataclass
class _State:
    writers: list[BlobWriter] = field(default_factory=list)
    new_snapshots: list[str] = field(default_factory=list)
    new_blobs: list[str] = field(default_factory=list)
    follows: list[Follow] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    failed: BaseException | None = None


class _Pull:
    def __init__(
        self,
        local: LocalImages,
        client: RegistryClient,
        ref: Reference,
        platform: Platform | None,
        progress: ProgressSink,
        max_concurrent: int,
        unpack: bool,
        lease: StoreLease,
    ) -> None:
        self.unpack = unpack
        self.lease = lease
        self.local = local
        self.client = client
        self.ref = ref
        self.repo = ref.path
        self.platform = platform
        self.progress = progress
        self.max_concurrent = max_concurrent
        self.state = _State()

    # -- resolve
    def _resolve(self) -> tuple[FetchedManifest, FetchedManifest | None, Manifest]:
        """(target, platform manifest when the target is an index, parsed manifest)."""
        target = self.client.get_manifest(self.repo, self.ref.digest or self.ref.tag or "latest")
        parsed = parse_manifest(target.data, target.media_type)
        if isinstance(parsed, Manifest):
            return target, None, parsed
        desc = select_manifest(parsed, self.platform or host_platform())
        child = self.client.get_manifest(self.repo, desc.digest)
        if len(child.data) != desc.size:
            raise DigestMismatch(
                f"manifest {desc.digest}: size {len(child.data)} does not match index ({desc.size})"
            )
        manifest = parse_manifest(child.data, child.media_type)
        if isinstance(manifest, Index):
            raise InvalidManifest(f"index {target.digest} nests another index; not supported")
        return target, child, manifest

    def _config(self, manifest: Manifest, present: frozenset[str]) -> bytes:
        desc = manifest.config
        if desc.digest in present:
            return self.local.content.read(desc.digest)
        data = self.client.get_blob_bytes(self.repo, desc.digest)
        if len(data) != desc.size:
            raise DigestMismatch(
                f"config {desc.digest}: size {len(data)} does not match manifest ({desc.size})"
            )
        return data

    # -- run
    def run(self) -> ImageRecord:
        target, child, manifest = self._resolve()
        self.progress.event(
            ProgressEvent(
                "resolved", digest=target.digest, message=f"{self.ref}: resolved {target.digest}"
            )
        )
        wanted = [target.digest, manifest.config.digest, *(d.digest for d in manifest.layers)]
        if child is not None:
            wanted.append(child.digest)
        # From here on, what is present stays present (a shared layer survives an rmi of
        # the image it came with), and what this pull adds is protected before it exists.
        present = self.lease.protect(blobs=wanted).blobs
        config_data = self._config(manifest, present)
        config = parse_image_config(config_data)
        check_layers(manifest, config)
        diff_ids = [str(d) for d in config["rootfs"]["diff_ids"]]
        chains = chain_ids(diff_ids)
        unpacked = self.lease.protect(snapshots=chains).snapshots if self.unpack else frozenset()
        layers = [
            _Layer(
                desc=desc,
                diff_id=diff_id,
                chain=chain,
                need_blob=desc.digest not in present,
                need_unpack=self.unpack and chain not in unpacked,
            )
            for desc, diff_id, chain in zip(manifest.layers, diff_ids, chains, strict=True)
        ]
        content, snaps = self.local.content, self.local.snapshots
        locked = sorted({layer.desc.digest for layer in layers if layer.need_blob})
        with _blob_locks(self.local.root, locked):
            # Another pull may have finished these while we waited for the locks.
            for layer in layers:
                layer.need_blob = layer.need_blob and not content.exists(layer.desc.digest)
                layer.need_unpack = layer.need_unpack and not snaps.exists(layer.chain)
            try:
                self._fetch_and_unpack(layers)
                record = self._commit(target, child, manifest, config_data, layers, present)
            except BaseException as e:
                self._rollback(e)
                raise
            finally:
                for w in self.state.writers:
                    w.close()
        self._note_sources(manifest)
        self.progress.event(
            ProgressEvent(
                "finished", digest=target.digest, message=f"{self.ref}: pulled {target.digest}"
            )
        )
        return record

    def _fetch_and_unpack(self, layers: list[_Layer]) -> None:
        """Downloads on ``max_concurrent`` threads; each layer's unpack starts with its
        download and reads the bytes as they arrive (see ``_follow``), finishing once
        they are verified. The first failure cancels what has not started and aborts
        running downloads at their next chunk and unpacks at their next read."""
        downloads = ThreadPoolExecutor(self.max_concurrent, thread_name_prefix="pull")
        unpacks = ThreadPoolExecutor(
            max(UNPACK_WORKERS, self.max_concurrent), thread_name_prefix="unpack"
        )
        unpack_futures: list[Future[None]] = []
        futures_lock = threading.Lock()

        def start_unpack(layer: _Layer) -> None:
            with futures_lock:
                unpack_futures.append(unpacks.submit(self._unpack, layer))

        def download(group: list[_Layer]) -> None:
            """One blob: downloaded once, unpacked for every layer listing it."""
            first, *again = group
            try:
                if self.state.failed is not None:
                    return
                if first.need_blob:
                    self._download(first, start_unpack if first.need_unpack else None)
                    assert first.writer is not None
                    for layer in again:
                        layer.source = first.writer.path
                else:
                    ev = ProgressEvent("exists", digest=first.desc.digest, size=first.desc.size)
                    self.progress.event(ev)
                    if first.need_unpack:
                        start_unpack(first)
                for layer in again:
                    if layer.need_unpack:
                        start_unpack(layer)
            except BaseException as e:
                self._fail(e)
                raise

        groups: dict[str, list[_Layer]] = {}
        for layer in layers:
            groups.setdefault(layer.desc.digest, []).append(layer)
        try:
            for f in [downloads.submit(download, group) for group in groups.values()]:
                f.result()
            with futures_lock:
                pending = list(unpack_futures)
            for u in pending:
                u.result()
        except BaseException:
            downloads.shutdown(wait=True, cancel_futures=True)
            unpacks.shutdown(wait=True, cancel_futures=True)
            # Report the first failure, not a layer cancelled because of it.
            first = self.state.failed
            if first is not None:
                raise first from None
            raise
        finally:
            downloads.shutdown(wait=True)
            unpacks.shutdown(wait=True)

    def _fail(self, e: BaseException) -> None:
        with self.state.lock:
            if self.state.failed is None:
                self.state.failed = e
            follows = list(self.state.follows)
        for follow in follows:
            follow.abort(_Cancelled("another layer failed") if follow.error is not e else e)

    def _download(self, layer: _Layer, start_unpack: Callable[[_Layer], None] | None) -> None:
        desc = layer.desc
        writer = self.local.content.writer(f"pull-{desc.digest}", desc.digest, desc.size)
        with self.state.lock:
            self.state.writers.append(writer)
        layer.writer = writer
        sink: BlobSink = writer
        if start_unpack is not None:
            follow = Follow(writer.path, writer.offset)
            layer.follow = follow
            with self.state.lock:
                self.state.follows.append(follow)
            sink = TeeSink(writer, follow)
            if STREAM_UNPACK:
                start_unpack(layer)
        ev = self.progress.event
        ev(ProgressEvent("started", digest=desc.digest, size=desc.size, message="downloading"))
        if writer.offset:
            ev(ProgressEvent("advance", digest=desc.digest, size=desc.size, advance=writer.offset))

        def advanced(n: int) -> None:
            if self.state.failed is not None:
                raise _Cancelled("another layer failed")
            ev(ProgressEvent("advance", digest=desc.digest, size=desc.size, advance=n))

        try:
            self.client.fetch_blob(self.repo, desc.digest, desc.size, sink, on_bytes=advanced)
            ev(ProgressEvent("verifying", digest=desc.digest, size=desc.size))
            got = writer.digest()
            if writer.offset != desc.size or got != desc.digest:
                writer.abort()  # corrupt: resuming from it would only fail again
                if writer.offset != desc.size:
                    raise DigestMismatch(
                        f"blob {desc.digest}: got {writer.offset} bytes, expected {desc.size}"
                    )
                raise DigestMismatch(f"blob {desc.digest}: registry sent content with digest {got}")
        except BaseException as e:
            if layer.follow is not None:
                layer.follow.abort(e)
            raise
        if layer.follow is not None:
            ev(ProgressEvent("extracting", digest=desc.digest, size=desc.size))
            layer.follow.finish()  # the unpacker may now see end-of-file
            if not STREAM_UNPACK and start_unpack is not None:
                start_unpack(layer)
        else:
            ev(ProgressEvent("done", digest=desc.digest, size=desc.size))
        # Sync now, while other layers still download or unpack, so that the commit
        # at the end (which syncs again) finds nothing left to write.
        writer.sync()

    def _unpack(self, layer: _Layer) -> None:
        if self.state.failed is not None:
            return
        desc, follow = layer.desc, layer.follow
        try:
            if follow is None:
                ev = ProgressEvent("extracting", digest=desc.digest, size=desc.size)
                self.progress.event(ev)
                self._unpack_from(layer, layer.source or self.local.content.path(desc.digest))
            else:
                try:
                    with follow.reader() as stream:
                        self._unpack_stream(layer, stream)
                except Restarted:
                    # The server ignored a Range request: unpack the finished file instead.
                    follow.wait_finished()
                    self._unpack_from(layer, follow.path)
                except Exception:
                    # Bytes that fail to unpack may be bytes that fail their digest: the
                    # download's verdict comes first (DigestMismatch, not a tar error).
                    follow.wait_finished()
                    raise
            with self.state.lock:
                self.state.new_snapshots.append(layer.chain)
            self.progress.event(ProgressEvent("done", digest=desc.digest, size=desc.size))
        except BaseException as e:
            self._fail(e)
            raise

    def _unpack_from(self, layer: _Layer, path: Path) -> None:
        with open(path, "rb") as blob:
            self._unpack_stream(layer, blob)

    def _unpack_stream(self, layer: _Layer, blob: BinaryIO) -> None:
        self.local.snapshots.unpack(
            layer.chain,
            blob,
            expected_diff_id=layer.diff_id,
            media_type=layer.desc.media_type,
            registrar=self.lease,
        )

    def _commit(
        self,
        target: FetchedManifest,
        child: FetchedManifest | None,
        manifest: Manifest,
        config_data: bytes,
        layers: list[_Layer],
        present: frozenset[str],
    ) -> ImageRecord:
        content, new = self.local.content, self.state.new_blobs
        for layer in layers:
            if layer.writer is not None:
                new.append(layer.writer.commit())
        small = [(config_data, manifest.config.digest), (target.data, target.digest)]
        if child is not None:
            small.insert(1, (child.data, child.digest))
        for data, digest in small:  # the index last: nothing points at a missing child
            if digest not in present and not content.exists(digest):
                new.append(content.add(data, digest))
        record = self.local.record(target.digest, self.platform, media_type=target.media_type)
        names = [f"{self.ref.name}@{target.digest}"]
        if self.ref.tag and not self.ref.digest:
            names.insert(0, str(self.ref))
        return self.local.images.put(record, names)

    def _rollback(self, error: BaseException) -> None:
        """What this pull made goes again, unless something else relies on it by now."""
        blobs, chains = self.state.new_blobs, self.state.new_snapshots
        if blobs or chains:
            self.lease.unprotect(blobs=blobs, snapshots=chains)
            with contextlib.suppress(LaminaError, OSError):
                self.local.collect_garbage(blobs=blobs, snapshots=chains)
        if isinstance(error, InvalidLayer):
            # A layer unpacking refuses (hostile or malformed): no later pull of this
            # image can succeed, so none of its downloads is kept for a resume.
            for writer in self.state.writers:
                writer.abort()

    def _note_sources(self, manifest: Manifest) -> None:
        digests = [manifest.config.digest, *(layer.digest for layer in manifest.layers)]
        with contextlib.suppress(OSError):
            BlobSources(self.local.root).add(f"{self.client.host}/{self.repo}", digests)


class _Cancelled(Exception):
    """Raised inside a download to stop it when another layer already failed."""


@contextlib.contextmanager
def _blob_locks(root: Path, digests: list[str]) -> Iterator[None]:
    """Exclusive flocks covering ``digests``: one of ``LOCK_STRIPES`` files per digest
    (a bounded set of lock files), taken in sorted order so two pulls cannot deadlock."""
    if not digests:
        yield
        return
    lock_dir = Path(root) / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    stripes = sorted({int(d.partition(":")[2][:8], 16) % LOCK_STRIPES for d in digests})
    fds: list[int] = []
    try:
        for stripe in stripes:
            fd = os.open(lock_dir / f"pull-{stripe:02d}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        for fd in fds:
            os.close(fd)
