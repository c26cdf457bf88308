"""Push: a local image (manifest or index) -> a registry repository.

Lifecycle of one ``push(local, source, dest)``:

1. Resolve ``source`` in the image store; the destination defaults to the source
   name (an image ID needs an explicit destination).
2. For an index, every child manifest present locally is pushed first (by digest);
   children not present locally are assumed to be in the registry already.
3. For each platform manifest, its config and layers go up concurrently: a HEAD
   skips blobs the repository has; a blob known (``registry-sources.json``) to live
   in another repository of the same registry is mounted (``?mount=&from=``); the
   rest are uploaded, monolithically or in PATCH chunks (``chunk_size``, or
   automatically for very large blobs).
4. The manifest (then the index) is PUT by tag (or by digest when the destination
   names one); the returned digest is the one of the bytes lamina holds.

Nothing local changes except the sources record.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

from lamina.errors import InvalidReference, NotFound
from lamina.image._local import LocalImages
from lamina.image._manifest import Descriptor, Index, Manifest, parse_manifest
from lamina.image._reference import Reference, parse_image_id, parse_reference
from lamina.registry._auth import repository_scope
from lamina.registry._client import RegistryClient, client_session
from lamina.registry._config import RegistryConfig
from lamina.registry._progress import NullProgress, ProgressEvent, ProgressSink
from lamina.registry._sources import BlobSources


def push(
    local: LocalImages,
    source: str,
    dest: str | None = None,
    *,
    progress: ProgressSink | None = None,
    config: RegistryConfig | None = None,
    chunk_size: int | None = None,
    max_concurrent: int = 3,
    client: RegistryClient | None = None,
) -> str:
    """Push ``source`` (a local name or ID) to ``dest`` (default: the source name).
    Returns the digest of the manifest or index pushed."""
    image = local.require(source)
    if dest is None:
        named = None if parse_image_id(source) is not None else _as_reference(source)
        if named is None or str(named) not in image.names:
            raise InvalidReference(f"push {source}: give a destination reference for an image ID")
        dest_ref = named
    else:
        dest_ref = parse_reference(dest)
    if dest_ref.digest and dest_ref.digest != image.digest:
        raise InvalidReference(
            f"push {source}: destination digest {dest_ref.digest} is not the image's {image.digest}"
        )
    sink = progress or NullProgress()
    with client_session(dest_ref.domain, config, client, sink) as c:
        return _Push(local, c, dest_ref, sink, chunk_size, max_concurrent).run(image.digest)


def _as_reference(s: str) -> Reference | None:
    try:
        return parse_reference(s)
    except InvalidReference:
        return None


class _Push:
    def __init__(
        self,
        local: LocalImages,
        client: RegistryClient,
        dest: Reference,
        progress: ProgressSink,
        chunk_size: int | None,
        max_concurrent: int,
    ) -> None:
        self.local = local
        self.client = client
        self.dest = dest
        self.repo = dest.path
        self.progress = progress
        self.chunk_size = chunk_size
        self.max_concurrent = max(1, max_concurrent)
        self.sources = BlobSources(local.root)
        self.pushed: list[str] = []

    def run(self, target: str) -> str:
        reference = self.dest.digest or self.dest.tag or "latest"
        digest = self._push_manifest(target, reference)
        with contextlib.suppress(OSError):
            self.sources.add(f"{self.client.host}/{self.repo}", self.pushed)
        self.progress.event(
            ProgressEvent("finished", digest=digest, message=f"{self.dest}: pushed {digest}")
        )
        return digest

    def _push_children(self, index: Index) -> None:
        """Children present locally go up first; the others must be there already
        (a pull keeps only the host's platform of a multi-platform image)."""
        for desc in index.manifests:
            if self.local.content.exists(desc.digest):
                self._push_manifest(desc.digest, desc.digest)
                continue
            try:
                self.client.head_manifest(self.repo, desc.digest)
            except NotFound:
                plat = f" ({desc.platform})" if desc.platform else ""
                raise NotFound(
                    f"push {self.dest}: the index lists manifest {desc.digest}{plat}, which is "
                    f"neither in the local store nor in {self.client.host}/{self.repo}"
                ) from None

    def _push_manifest(self, digest: str, reference: str) -> str:
        """Push the manifest or index ``digest`` (what it refers to first) as
        ``reference``; returns the digest the registry gives it."""
        data = self.local.content.read(digest)
        parsed = parse_manifest(data)
        if isinstance(parsed, Index):
            self._push_children(parsed)
        else:
            self._push_blobs(parsed)
        return self.client.put_manifest(self.repo, reference, data, parsed.media_type)

    def _push_blobs(self, manifest: Manifest) -> None:
        blobs = list({d.digest: d for d in [manifest.config, *manifest.layers]}.values())
        with ThreadPoolExecutor(self.max_concurrent, thread_name_prefix="push") as pool:
            futures = [pool.submit(self._push_blob, d) for d in blobs]
            try:
                for f in futures:
                    f.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def _push_blob(self, desc: Descriptor) -> None:
        c, ev = self.client, self.progress.event
        what = "config" if desc.media_type.endswith("config.v1+json") else "layer"
        # Ask with the push scope: one token serves the whole push.
        push_scope = (repository_scope(self.repo, "pull", "push"),)
        if c.blob_size(self.repo, desc.digest, scopes=push_scope) is not None:
            ev(ProgressEvent("exists", digest=desc.digest, size=desc.size, what=what))
            self.pushed.append(desc.digest)
            return
        content = self.local.content
        if not content.exists(desc.digest):
            raise NotFound(
                f"push {self.dest}: blob {desc.digest} is not in the local store "
                "(the image was pulled without it)"
            )
        location = None
        for other in self.sources.candidates(desc.digest, c.host, self.repo)[:3]:
            location = c.mount_blob(self.repo, desc.digest, other)
            if location is None:
                ev(
                    ProgressEvent(
                        "mounted", digest=desc.digest, size=desc.size, message=other, what=what
                    )
                )
                self.pushed.append(desc.digest)
                return
            break  # the registry opened an upload instead: use it
        size = content.info(desc.digest).size
        ev(ProgressEvent("started", digest=desc.digest, size=size, message="uploading", what=what))

        def advanced(n: int) -> None:
            ev(ProgressEvent("advance", digest=desc.digest, size=size, advance=n, what=what))

        c.upload_blob(
            self.repo,
            desc.digest,
            size,
            lambda: content.open(desc.digest),
            chunk_size=self.chunk_size,
            location=location,
            on_bytes=advanced,
        )
        ev(ProgressEvent("done", digest=desc.digest, size=size, what=what))
        self.pushed.append(desc.digest)
