"""The build executor: a parsed Dockerfile in, an image in the local store out.

Lifecycle of ``Builder.build()``:

1. Read and parse the Dockerfile; resolve global ARGs and plan the stages the
   target needs (``_stages``). Stages whose dependencies are done run in threads.
2. Each stage starts from its base (an image, found locally or pulled; an earlier
   stage's result; ``scratch``), runs the base's ONBUILD triggers, then its
   instructions in order. The running state between steps is an ``ImageState``:
   the image config plus the layer descriptors.
3. Every instruction is a step with a cache key: sha256 of the parent's key and
   what decides the step's result (the expanded instruction, the build args a RUN
   sees, COPY/ADD source contents, the base image digest...). A key found in the
   cache gives the state at once (``CACHED``); otherwise the step runs:
   metadata instructions edit the config and add a history entry with
   ``empty_layer``; RUN, COPY, ADD and WORKDIR produce one layer each (none when
   nothing changed) in the content store, whose snapshot is adopted in place, and
   an image record for the new layer stack held by ``build-cache``.
4. The target stage's state becomes the image: config (with ``--label``s) and OCI
   manifest into the content store, a record named by the tags.

Timestamps (history, config ``created``, layer mtimes) are clamped to
``SOURCE_DATE_EPOCH`` when given, so the same inputs give the same digests; a
fully cached rebuild gives the same image ID in any case, since cached states keep
their timestamps.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import posixpath
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina.builder import _fileops as fops
from lamina.builder._cache import BuildCache, cache_key
from lamina.builder._commit import Layer, Store
from lamina.builder._context import BuildContext, FileDigests, clean_source
from lamina.builder._copy import (
    CopyJob,
    Source,
    expand_heredoc,
    fetch_url,
    heredoc_name,
    is_git,
    is_url,
)
from lamina.builder._dockerfile import (
    BuildError,
    Dockerfile,
    Instruction,
    parse,
    parse_instructions,
)
from lamina.builder._dockerignore import PatternMatcher, read_dockerignore
from lamina.builder._mounts import MountSpec, parse_mount
from lamina.builder._options import BuildOptions
from lamina.builder._progress import Progress, Step
from lamina.builder._run import MountSources, RunFailed, RunRequest
from lamina.builder._stages import (
    PROXY_ARGS,
    ArgContext,
    StageEnv,
    StagePlan,
    expand,
    from_env,
    global_args,
    plan_stages,
    platform_args,
    resolve_ref,
)
from lamina.builder.shell import ShellSyntaxError, process_words
from lamina.errors import LaminaError, NotFound, describe_os_error
from lamina.image._config import (
    CONFIG_ORDER,
    HEALTHCHECK_DURATIONS,
    expose_ports,
    merge_env,
    ordered_config,
    parse_duration,
    valid_signal,
)
from lamina.image._config import rfc3339 as rfc3339_ns
from lamina.image._local import LocalImages
from lamina.image._platform import host_platform, parse_platform, platform_str
from lamina.image._reference import parse_reference
from lamina.image._snapshots import chain_ids
from lamina.image._store import ImageRecord

DEFAULT_SHELL = ["/bin/sh", "-c"]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_FS_INSTRUCTIONS = frozenset({"RUN", "COPY", "ADD", "WORKDIR"})
_CONFIG_ORDER = (*CONFIG_ORDER, "Shell", "ArgsEscaped")
_IMAGE_KEYS = ("created", "author", "architecture", "os", "os.version", "os.features", "variant")
_HEREDOC_ONLY = re.compile(r"<<-?\s*([\"']?)([^\s\"']+)\1")


@dataclass
class BuildResult:
    image_id: str  # the config digest
    digest: str  # the manifest digest
    tags: list[str]
    record: ImageRecord
    steps: int
    cached: int
    warnings: list[str] = field(default_factory=list)


@dataclass
class ImageState:
    """An image in the making: the OCI config and the layer descriptors."""

    config: dict[str, Any]
    layers: list[dict[str, Any]]
    key: str

    @property
    def inner(self) -> dict[str, Any]:
        inner: dict[str, Any] = self.config.setdefault("config", {})
        return inner

    @property
    def diff_ids(self) -> list[str]:
        return [str(d) for d in (self.config.get("rootfs") or {}).get("diff_ids") or []]

    def copy(self) -> ImageState:
        return ImageState(copy.deepcopy(self.config), copy.deepcopy(self.layers), self.key)


def rfc3339(seconds: float) -> str:
    return rfc3339_ns(int(seconds * 1_000_000_000))


def _go_quote_list(items: list[str]) -> str:
    return "[" + " ".join(json.dumps(i, ensure_ascii=False) for i in items) + "]"


class _Cancelled(BuildError):
    pass


class Builder:
    """One build on one lamina root."""

    def __init__(self, root: Path, options: BuildOptions, progress: Progress | None = None) -> None:
        if options.compression not in ("gzip", "zstd", "none"):
            raise BuildError(
                f"unknown compression {options.compression!r} (want gzip, zstd or none)"
            )
        self.root = Path(root)
        self.opts = options
        self.progress = progress or Progress()
        self.local = LocalImages.open(self.root)
        # Protects what the build relies on and makes from a concurrent rmi/prune, and
        # answers for its scratch dirs, mounts and step containers if it is killed.
        self.lease = self.local.lease("build")
        self.store = Store(self.local, self.lease)
        self.cache = BuildCache(self.root)
        self._runner: Any = None
        self.platform = host_platform()
        self.compression = options.compression
        self.epoch = options.source_date_epoch
        self.cancelled = threading.Event()
        self._results: dict[int, _Outcome] = {}
        self._slots = threading.BoundedSemaphore(max(1, options.max_parallel))
        self._holding = threading.local()  # does this stage thread hold a slot?
        self._images: dict[str, tuple[ImageState, bool]] = {}
        self._images_lock = threading.Lock()
        self._hits: list[str] = []
        self.steps_total = 0
        self.steps_cached = 0
        self._count_lock = threading.Lock()
        self.salt = {
            "v": 1,
            "platform": platform_str(self.platform),
            "compression": self.compression,
            "epoch": self.epoch,
        }

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
        self.cache.close()
        self.lease.release()
        self.local.close()

    # -- helpers shared by stages ------------------------------------------------------
    def now(self) -> str:
        return rfc3339(self.epoch if self.epoch is not None else time.time())

    def count(self, cached: bool) -> None:
        with self._count_lock:
            self.steps_total += 1
            if cached:
                self.steps_cached += 1

    def lookup(self, key: str) -> dict[str, Any] | None:
        """A cached step result, unless --no-cache or its layer blob is gone."""
        if self.opts.no_cache:
            return None
        data = self.cache.get(key)
        if data is None:
            return None
        layer = data.get("layer")
        if layer is not None:
            digest = str(layer["digest"])
            if digest not in self.lease.protect(blobs=[digest]).blobs:
                return None
        with self._count_lock:
            self._hits.append(key)
        return data

    def lowers(self, state: ImageState) -> list[Path]:
        """The snapshot dirs of ``state``'s layer stack, top first (unpacked if needed)."""
        diff_ids = state.diff_ids
        if not diff_ids:
            return []
        chains = chain_ids(diff_ids)
        snapshots = self.local.snapshots
        present = self.lease.protect(
            blobs=[str(layer["digest"]) for layer in state.layers], snapshots=chains
        )
        if not all(c in present.snapshots for c in chains):
            image_id = self.store.stack_image(self.platform, state.layers, diff_ids)
            with self.store.lock:
                record = self.local.images.resolve(image_id)
            self.local.unpack(record, self.lease)
        return [snapshots.path(c) for c in reversed(chains)]

    def image_state(self, name: str, step: Step | None = None) -> tuple[ImageState, bool]:
        """An image's state (found locally, else pulled); True when it was local.
        ``step`` is started when a pull is needed."""
        with self._images_lock:
            known = self._images.get(name)
            if known is not None:
                return known[0].copy(), True
            record, was_local = self._find_image(name, step)
            manifest = self.local.manifest_for(record.manifest_digest)
            config = self.local.config(record)
            os_, arch = str(config.get("os", "")), str(config.get("architecture", ""))
            if (os_, arch) != (self.platform.os, self.platform.architecture):
                raise BuildError(
                    f"image {name} is for {os_}/{arch}, not the native "
                    f"{platform_str(self.platform)} (emulation is not supported)"
                )
            clean = {k: config[k] for k in _IMAGE_KEYS if k in config}
            clean["config"] = dict(config.get("config") or {})
            clean["rootfs"] = {
                "type": "layers",
                "diff_ids": list((config.get("rootfs") or {}).get("diff_ids") or []),
            }
            clean["history"] = list(config.get("history") or [])
            layers = [
                {"mediaType": d.media_type, "digest": d.digest, "size": d.size}
                for d in manifest.layers
            ]
            state = ImageState(
                clean, layers, cache_key(json.dumps(self.salt), ["image", record.manifest_digest])
            )
            self._images[name] = (state, was_local)
            return state.copy(), was_local

    def _find_image(self, name: str, step: Step | None) -> tuple[ImageRecord, bool]:
        record: ImageRecord | None = None
        if not self.opts.pull:
            with self.store.lock:
                try:
                    record = self.local.images.resolve(name)
                except (NotFound, LaminaError):
                    record = None
            # Kept for the whole build (an rmi of the base meanwhile takes nothing the
            # build needs); one removed before it could be kept is pulled again.
            kept = record is not None and self.lease.protect(images=[record.digest]).images
            if record is not None and kept:
                return record, True
        from lamina.registry import pull

        try:
            parse_reference(name)
        except LaminaError as e:
            raise BuildError(f"invalid base image {name!r}: {e}") from None
        if step is not None:
            self.progress.start(step)
        with self.store.lock:
            record = pull(
                self.local,
                name,
                policy="always" if self.opts.pull else "if-not-present",
                platform=self.platform,
                config=self._registry_config(),
                lease=self.lease,
            )
        return record, False

    def _registry_config(self) -> Any:
        cfg = self.opts.registry_config
        return cfg() if callable(cfg) else cfg

    def stage_state(self, index: int) -> ImageState:
        """The final state of an earlier stage (waits for it when it runs in parallel)."""
        outcome = self._results.get(index)
        if outcome is None:
            raise BuildError(f"stage {index} was not built")
        holding = getattr(self._holding, "slot", False)
        if holding:
            self._holding.slot = False
            self._slots.release()
        try:
            state = outcome.wait()
        finally:
            if holding:
                self._slots.acquire()
                self._holding.slot = True
        if state is None:
            raise _Cancelled("build cancelled: a stage it depends on failed")
        return state.copy()

    # -- the build -----------------------------------------------------------------------
    def _read_dockerfile(self) -> tuple[str, str, Path | None]:
        opts = self.opts
        if opts.dockerfile_text is not None:
            return opts.dockerfile_text, "Dockerfile", None
        path = opts.dockerfile or (Path(opts.context) / "Dockerfile")
        try:
            text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            raise BuildError(f"cannot read the Dockerfile: {path} does not exist") from None
        except OSError as e:
            raise BuildError(f"cannot read the Dockerfile {path}: {e.strerror}") from None
        return text, Path(path).name, Path(path)

    def build(self) -> BuildResult:
        opts = self.opts
        if opts.platform:
            want = parse_platform(opts.platform)
            if (want.os, want.architecture) != (self.platform.os, self.platform.architecture):
                raise BuildError(
                    f"cannot build for {opts.platform}: only the native platform "
                    f"{platform_str(self.platform)} is supported (no emulation)"
                )
        if not Path(opts.context).is_dir():
            raise BuildError(f"the build context {opts.context} is not a directory")
        tags = []
        for given in opts.tags:
            try:
                ref = parse_reference(given)
            except LaminaError as e:
                raise BuildError(f"invalid tag {given!r}: {e}") from None
            if ref.digest is not None:
                raise BuildError(f"invalid tag {given!r}: a tag cannot contain a digest")
            tags.append(str(ref))
        text, name, dockerfile_path = self._read_dockerfile()
        df = parse(text, name)
        self.df = df
        automatic = platform_args(self.platform, self.platform)
        self.args = ArgContext(dict(opts.build_args), automatic, df.escape)
        self.globals = global_args(df, self.args)
        self.meta_env = from_env(self.globals, self.args)
        plans = plan_stages(df, opts.target, self.meta_env)
        patterns = read_dockerignore(Path(opts.context), dockerfile_path)
        context_dir = Path(opts.context).absolute()
        self.files = FileDigests(self.cache.file_digests(context_dir))
        self.context = BuildContext(context_dir, patterns, self.files)
        self._run_stages(plans)
        final = self._results[plans[-1].stage.index].wait()
        assert final is not None
        unused = self.args.unused_build_args()
        if unused:
            self.progress.warn(f"one or more build-args {unused} were not consumed")
        config = self._final_config(final)
        record = self.store.put_image(config, final.layers, tags)
        self.cache.touch(self._hits)
        self.cache.save_file_digests(self.files.fresh)
        return BuildResult(
            image_id=record.id,
            digest=record.digest,
            tags=tags,
            record=record,
            steps=self.steps_total,
            cached=self.steps_cached,
            warnings=list(self.progress.warnings),
        )

    def _final_config(self, state: ImageState) -> dict[str, Any]:
        cfg = copy.deepcopy(state.config)
        inner = cfg.get("config") or {}
        if self.opts.labels:
            labels = dict(inner.get("Labels") or {})
            labels.update(self.opts.labels)
            inner["Labels"] = labels
        for key in ("ExposedPorts", "Volumes", "Labels"):
            if isinstance(inner.get(key), dict):  # Go writes maps sorted
                inner[key] = dict(sorted(inner[key].items()))
        out = {k: cfg[k] for k in _IMAGE_KEYS if k in cfg}
        out["config"] = ordered_config(inner, _CONFIG_ORDER)
        out["rootfs"] = cfg.get("rootfs") or {"type": "layers", "diff_ids": []}
        out["history"] = cfg.get("history") or []
        return out

    def _run_stages(self, plans: list[StagePlan]) -> None:
        """Stages in dependency order; with several, each in its own thread, so that
        independent ones overlap (a stage waits for the stages it uses)."""
        for plan in plans:
            self._results[plan.stage.index] = _Outcome()
        if len(plans) == 1 or self.opts.max_parallel <= 1:
            for plan in plans:
                self._stage(plan)
            return
        self._slots = threading.BoundedSemaphore(self.opts.max_parallel)
        threads = [
            threading.Thread(
                target=self._stage,
                args=(plan, True),
                name=f"lamina-stage-{plan.stage.index}",
                daemon=True,
            )
            for plan in plans
        ]
        try:
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except BaseException:
            self.cancelled.set()
            self.runner_kill_all()
            for t in threads:
                t.join()
            raise
        errors = [self._results[p.stage.index].error for p in plans]
        real = [e for e in errors if e is not None and not isinstance(e, _Cancelled)]
        first = real or [e for e in errors if e is not None]
        if first:
            raise first[0]

    def _stage(self, plan: StagePlan, threaded: bool = False) -> None:
        outcome = self._results[plan.stage.index]
        try:
            if threaded:
                # A slot limits how many stages work at once; waiting for another
                # stage gives it back (stage_state), so waiting never deadlocks.
                self._slots.acquire()
                self._holding.slot = True
                try:
                    state = StageRun(self, plan).execute()
                finally:
                    if getattr(self._holding, "slot", False):
                        self._holding.slot = False
                        self._slots.release()
            else:
                state = StageRun(self, plan).execute()
        except BaseException as e:
            outcome.fail(e)
            self.cancelled.set()
            self.runner_kill_all()
            if not threaded:
                raise
            return
        outcome.set(state)

    def runner_kill_all(self) -> None:
        if self._runner is not None:
            self._runner.kill_all()

    @property
    def runner(self) -> Any:
        """The RUN executor (imported on first use: cached builds never need it)."""
        with self._count_lock:
            if self._runner is None:
                from lamina.builder._run import Runner

                self._runner = Runner(
                    self.root, self.cache.mounts_dir, self.lease, self.opts.containers
                )
            return self._runner


class _Outcome:
    """A stage's result, for the stages that wait for it."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self.state: ImageState | None = None
        self.error: BaseException | None = None

    def set(self, state: ImageState) -> None:
        self.state = state
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._done.set()

    def wait(self) -> ImageState | None:
        self._done.wait()
        return self.state


class StageRun:
    """One stage's instructions, in order, on an ImageState."""

    def __init__(self, builder: Builder, plan: StagePlan) -> None:
        self.b = builder
        self.plan = plan
        self.stage = plan.stage
        self.df: Dockerfile = builder.df
        self.escape = self.df.escape
        self.cmd_set = False
        self.n = 0
        self.total = 1 + sum(1 for i in self.stage.instructions if i.cmd in _FS_INSTRUCTIONS)
        self.state = ImageState({}, [], "")
        self.env: StageEnv | None = None
        self.where_prefix = ""

    # -- naming and locations
    def where(self, ins: Instruction) -> str:
        return self.where_prefix + self.df.where(ins.line)

    def _name(self, text: str, counted: bool) -> str:
        if counted:
            self.n += 1
        label = f"{self.stage.label} " if len(self.df.stages) > 1 else ""
        pos = f"{label}{self.n}/{self.total}" if counted else f"{label}".strip()
        return f"[{pos}] {text}" if pos else text

    @property
    def senv(self) -> StageEnv:
        assert self.env is not None
        return self.env

    # -- the stage
    def execute(self) -> ImageState:
        self._from()
        triggers = list(self.state.inner.pop("OnBuild", None) or [])
        for trig in triggers:
            self._onbuild_trigger(trig)
        for ins in self.stage.instructions:
            self.dispatch(ins)
        return self.state

    def dispatch(self, ins: Instruction) -> None:
        if self.b.cancelled.is_set():
            raise _Cancelled("build cancelled")
        handler: Callable[[Instruction], None] = getattr(self, "_" + ins.cmd.lower())
        handler(ins)

    def _onbuild_trigger(self, trigger: str) -> None:
        where = self.df.where(self.stage.line)
        instructions = parse_instructions(trigger, f"{where}: ONBUILD")
        for ins in instructions:
            if ins.cmd in ("ONBUILD", "FROM", "MAINTAINER"):
                raise BuildError(f"{where}: {ins.cmd} isn't allowed as an ONBUILD trigger")
            ins.line = self.stage.line
            if ins.cmd in _FS_INSTRUCTIONS:
                self.total += 1
            self.dispatch(ins)

    def _from(self) -> None:
        plan = self.plan
        if plan.platform:
            try:
                want = parse_platform(plan.platform)
            except LaminaError as e:
                raise BuildError(f"{self.df.where(self.stage.line)}: {e}") from None
            native = self.b.platform
            if (want.os, want.architecture) != (native.os, native.architecture):
                raise BuildError(
                    f"{self.df.where(self.stage.line)}: FROM --platform={plan.platform}: only the "
                    f"native platform {platform_str(native)} is supported (no emulation)"
                )
        base = plan.base
        if base.stage is not None:
            text = f"FROM {self.df.stages[base.stage].label}"
            step = self.b.progress.add(self._name(text, True))
            self.state = self.b.stage_state(base.stage)
            self._reused(step)
        elif base.image is not None and base.image.lower() == "scratch":
            self._name("FROM scratch", True)
            plat = self.b.platform
            config: dict[str, Any] = {"architecture": plat.architecture, "os": plat.os}
            if plat.variant:
                config["variant"] = plat.variant
            config["config"] = {"Env": [f"PATH={DEFAULT_PATH}"], "WorkingDir": "/"}
            config["rootfs"] = {"type": "layers", "diff_ids": []}
            config["history"] = []
            self.state = ImageState(config, [], cache_key(json.dumps(self.b.salt), ["scratch"]))
        else:
            assert base.image is not None
            step = self.b.progress.add(self._name(f"FROM {base.image}", True))
            try:
                self.state, was_local = self.b.image_state(base.image, step)
            except LaminaError as e:
                self.b.progress.fail(step, str(e))
                raise BuildError(f"{self.df.where(self.stage.line)}: {e}") from None
            if was_local:
                self._reused(step)
            else:
                self.b.progress.done(step)
        env = list(self.state.inner.get("Env") or [])
        if not any(str(e).startswith("PATH=") for e in env):
            # As BuildKit and Buildah do: an image always gets a PATH.
            env.append(f"PATH={DEFAULT_PATH}")
            self.state.inner["Env"] = env
        self.env = StageEnv(self.b.args, self.b.globals, env)

    def _reused(self, step: Step) -> None:
        """A base found locally: CACHED, unless --no-cache asked for fresh work."""
        if self.b.opts.no_cache:
            self.b.progress.start(step)
            self.b.progress.done(step)
        else:
            self.b.progress.cached(step)

    # -- step machinery -----------------------------------------------------------------
    def _history(self, config: dict[str, Any], created_by: str, created: str, empty: bool) -> None:
        entry: dict[str, Any] = {"created": created, "created_by": created_by}
        if empty:
            entry["empty_layer"] = True
        config.setdefault("history", []).append(entry)
        config["created"] = created

    def meta(
        self,
        ins: Instruction,
        material: Any,
        mutate: Callable[[dict[str, Any]], None] | None,
        created_by: str,
        author: str | None = None,
    ) -> None:
        """A metadata step: config edit + history entry, no layer. It does not
        change the cache key of later steps (those that depend on the metadata,
        as RUN on ENV, have it in their own key); the cache only keeps its
        timestamp, so that a rebuild gives the same image."""
        key = cache_key(self.state.key, ["meta", material, created_by])
        cached = self.b.lookup(key)
        self.b.count(cached is not None)
        created = str(cached["created"]) if cached is not None else self.b.now()
        if cached is None:
            self.b.cache.put(key, {"created": created})
        state = self.state.copy()
        if mutate is not None:
            mutate(state.config.setdefault("config", {}))
        if author is not None:
            state.config["author"] = author
        self._history(state.config, created_by, created, empty=True)
        self.state = state

    def fs(
        self,
        ins: Instruction,
        text: str,
        material: Any,
        produce: Callable[[Step], Layer | None],
        created_by: str,
        mutate: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """A filesystem step: one layer (or none when nothing changed). Its key
        chains on the previous filesystem step's."""
        progress = self.b.progress
        step = progress.add(self._name(text, True))
        key = cache_key(self.state.key, ["fs", material])
        cached = self.b.lookup(key)
        self.b.count(cached is not None)
        if cached is not None:
            self._apply(key, cached, created_by, mutate)
            progress.cached(step)
            return
        progress.start(step)
        try:
            layer = produce(step)
        except RunFailed as e:
            why = f"did not complete successfully: exit code: {e.code}"
            progress.fail(step, f"process {json.dumps(created_by)} {why}")
            detail = f": {e.reason}" if e.reason and e.code in (0, 125, 126, 127) else ""
            raise BuildError(
                f"{self.where(ins)}: RUN exit code {e.code}{detail}", list(step.tail), step.name
            ) from None
        except BuildError as e:
            progress.fail(step, str(e))
            raise
        except LaminaError as e:
            progress.fail(step, str(e))
            raise BuildError(f"{self.where(ins)}: {e}") from None
        except OSError as e:
            progress.fail(step, str(e))
            why = describe_os_error(e)
            raise BuildError(f"{self.where(ins)}: {ins.cmd} failed: {why}") from None
        result: dict[str, Any] = {"created": self.b.now(), "layer": None}
        if layer is not None:
            result["layer"] = layer.descriptor()
            result["diff_id"] = layer.diff_id
        self.b.cache.put(key, result)
        self._apply(key, result, created_by, mutate)
        if layer is not None:
            self.b.store.stack_image(self.b.platform, self.state.layers, self.state.diff_ids)
        progress.done(step)

    def _apply(
        self,
        key: str,
        result: dict[str, Any],
        created_by: str,
        mutate: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        """The state after a filesystem step: its layer (if any) and history entry."""
        state = self.state.copy()
        if mutate is not None:
            mutate(state.config.setdefault("config", {}))
        layer = result.get("layer")
        self._history(state.config, created_by, str(result["created"]), empty=layer is None)
        if layer is not None:
            rootfs = state.config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
            rootfs["diff_ids"] = [*rootfs.get("diff_ids", []), str(result["diff_id"])]
            state.layers.append(dict(layer))
        state.key = key
        self.state = state

    def check_flags(self, ins: Instruction, allowed: tuple[str, ...]) -> None:
        for name, _ in ins.flags:
            if name not in allowed:
                raise BuildError(f"{self.where(ins)}: unknown flag for {ins.cmd}: --{name}")

    def flag(self, ins: Instruction, name: str) -> str | None:
        values = ins.flag_values(name)
        return values[-1] if values else None

    def expand(self, ins: Instruction, word: str) -> str:
        return expand(word, self.senv.expansion(), self.escape, self.where(ins))

    def expand_words(self, ins: Instruction, word: str) -> list[str]:
        try:
            return process_words(word, self.senv.expansion(), self.escape)
        except ShellSyntaxError as e:
            raise BuildError(f"{self.where(ins)}: {e}") from None

    def need_args(self, ins: Instruction, n: int = 1) -> None:
        if len([a for a in ins.args if a != ""]) < n:
            what = "one argument" if n == 1 else f"{n} arguments"
            raise BuildError(f"{self.where(ins)}: {ins.cmd} requires at least {what}")

    @property
    def shell(self) -> list[str]:
        return list(self.state.inner.get("Shell") or DEFAULT_SHELL)

    def command_form(self, ins: Instruction) -> list[str]:
        """JSON form as is; shell form wrapped in the SHELL."""
        if ins.json:
            return list(ins.args)
        return [*self.shell, " ".join(ins.args)]

    # -- metadata instructions ------------------------------------------------------------
    def _pairs(self, ins: Instruction) -> list[tuple[str, str]]:
        self.need_args(ins)
        args = ins.args
        if len(args) % 2:
            raise BuildError(f"{self.where(ins)}: {ins.cmd} names must have values (NAME=value)")
        out = []
        for i in range(0, len(args), 2):
            key = self.expand(ins, args[i])
            if not key:
                raise BuildError(f"{self.where(ins)}: {ins.cmd} names can not be blank")
            out.append((key, self.expand(ins, args[i + 1])))
        return out

    def _env(self, ins: Instruction) -> None:
        self.check_flags(ins, ())
        pairs = self._pairs(ins)
        for k, v in pairs:
            self.senv.set_env(k, v)

        def mutate(c: dict[str, Any]) -> None:
            c["Env"] = merge_env(c.get("Env") or [], pairs)

        text = " ".join(f"{k}={v}" for k, v in pairs)
        self.meta(ins, ["ENV", pairs], mutate, f"ENV {text}")

    def _label(self, ins: Instruction) -> None:
        self.check_flags(ins, ())
        pairs = self._pairs(ins)

        def mutate(c: dict[str, Any]) -> None:
            labels = dict(c.get("Labels") or {})
            labels.update(pairs)
            c["Labels"] = labels

        text = " ".join(f"{k}={v}" for k, v in pairs)
        self.meta(ins, ["LABEL", pairs], mutate, f"LABEL {text}")

    def _arg(self, ins: Instruction) -> None:
        self.check_flags(ins, ())
        self.need_args(ins)
        declared = [self.senv.declare(w, self.where(ins)) for w in ins.args]
        text = " ".join(k if v is None else f"{k}={v}" for k, v in declared)
        self.meta(ins, ["ARG", declared], None, f"ARG {text}")

    def _maintainer(self, ins: Instruction) -> None:
        self.check_flags(ins, ())
        self.need_args(ins)
        author = " ".join(ins.args)
        self.meta(ins, ["MAINTAINER", author], None, f"MAINTAINER {author}", author=author)

    def _user(self, ins: Instruction) -> None:
        self.check_flags(ins, ())
        self.need_args(ins)
        user = self.expand(ins, " ".join(ins.args))

        def mutate(c: dict[str, Any]) -> None:
            c["User"] = user

        self.meta(ins, ["USER", user], mutate, f"USER {user}")

    def _expose(self, ins: Instruction) -> None:
        self.check_flags(ins, ())
        self.need_args(ins)
        ports: list[str] = []
        for arg in ins.args:
            for word in self.expand_words(ins, arg):
                try:
                    ports += expose_ports(word)
                except ValueError as e:
                    raise BuildError(f"{self.where(ins)}: {e}") from None

        def mutate(c: dict[str, Any]) -> None:
            exposed = dict(c.get("ExposedPorts") or {})
            for p in ports:
                exposed[p] = {}
            c["ExposedPorts"] = exposed

        text = "map[" + " ".join(f"{p}:{{}}" for p in sorted(set(ports))) + "]"
        self.meta(ins, ["EXPOSE", ports], mutate, f"EXPOSE {text}")

    def _volume(self, ins: Instruction) -> None:
        self.check_flags(ins, ())
        self.need_args(ins)
        if ins.json:
            vols = [self.expand(ins, a) for a in ins.args]
        else:
            vols = [w for a in ins.args for w in self.expand_words(ins, a)]
        for v in vols:
            if not v.strip():
                raise BuildError(f"{self.where(ins)}: VOLUME specified can not be an empty string")

        def mutate(c: dict[str, Any]) -> None:
            volumes = dict(c.get("Volumes") or {})
            for v in vols:
                volumes[v] = {}
            c["Volumes"] = volumes

        self.meta(ins, ["VOLUME", vols], mutate, f"VOLUME [{' '.join(vols)}]")

    def _entrypoint(self, ins: Instruction) -> None:
        self.check_flags(ins, ())
        argv = self.command_form(ins)
        reset_cmd = not self.cmd_set

        def mutate(c: dict[str, Any]) -> None:
            c["Entrypoint"] = argv
            if reset_cmd:
                c["Cmd"] = None

        self.meta(
            ins, ["ENTRYPOINT", argv, reset_cmd], mutate, f"ENTRYPOINT {_go_quote_list(argv)}"
        )

    def _cmd(self, ins: Instruction) -> None:
        self.check_flags(ins, ())
        argv = self.command_form(ins)
        self.cmd_set = True

        def mutate(c: dict[str, Any]) -> None:
            c["Cmd"] = argv

        self.meta(ins, ["CMD", argv], mutate, f"CMD {_go_quote_list(argv)}")

    def _shell(self, ins: Instruction) -> None:
        self.check_flags(ins, ())
        if not ins.json:
            raise BuildError(f"{self.where(ins)}: SHELL requires the arguments to be in JSON form")
        if not ins.args:
            raise BuildError(f"{self.where(ins)}: SHELL requires at least one argument")
        argv = list(ins.args)

        def mutate(c: dict[str, Any]) -> None:
            c["Shell"] = argv

        self.meta(ins, ["SHELL", argv], mutate, f"SHELL [{' '.join(argv)}]")

    def _stopsignal(self, ins: Instruction) -> None:
        self.check_flags(ins, ())
        self.need_args(ins)
        sig = self.expand(ins, ins.args[0])
        if not valid_signal(sig):
            raise BuildError(f"{self.where(ins)}: invalid STOPSIGNAL {sig!r}")

        def mutate(c: dict[str, Any]) -> None:
            c["StopSignal"] = sig

        self.meta(ins, ["STOPSIGNAL", sig], mutate, f"STOPSIGNAL {sig}")

    def _healthcheck(self, ins: Instruction) -> None:
        self.check_flags(ins, ("interval", "timeout", "start-period", "start-interval", "retries"))
        self.need_args(ins)
        where = self.where(ins)
        first = ins.args[0].upper()
        check: dict[str, Any]
        if first == "NONE":
            if len(ins.args) > 1 or ins.flags:
                raise BuildError(f"{where}: HEALTHCHECK NONE takes no other arguments")
            check = {"Test": ["NONE"]}
        elif first == "CMD":
            if ins.json:
                cmd = list(ins.args[1:])
                if not cmd:
                    raise BuildError(f"{where}: HEALTHCHECK CMD needs a command")
                test = ["CMD", *cmd]
            else:
                rest = " ".join(ins.args[1:]).strip()
                if not rest:
                    raise BuildError(f"{where}: HEALTHCHECK CMD needs a command")
                test = ["CMD-SHELL", rest]
            check = {"Test": test}
            for flag, value in ins.flags:
                value = value or ""
                if flag == "retries":
                    if not value.isdigit():
                        raise BuildError(
                            f"{where}: HEALTHCHECK --retries must be a number, got {value!r}"
                        )
                    if int(value):
                        check["Retries"] = int(value)
                else:
                    ns = _duration(value, flag, where)
                    if ns:
                        check[HEALTHCHECK_DURATIONS[flag]] = ns
        else:
            raise BuildError(
                f"{where}: HEALTHCHECK: unknown type {ins.args[0]!r} (want CMD or NONE)"
            )

        def mutate(c: dict[str, Any]) -> None:
            c["Healthcheck"] = check

        self.meta(ins, ["HEALTHCHECK", check], mutate, f"HEALTHCHECK {json.dumps(check)}")

    def _onbuild(self, ins: Instruction) -> None:
        trigger = ins.trigger

        def mutate(c: dict[str, Any]) -> None:
            c["OnBuild"] = [*(c.get("OnBuild") or []), trigger]

        self.meta(ins, ["ONBUILD", trigger], mutate, f"ONBUILD {trigger}")

    # -- WORKDIR --------------------------------------------------------------------------
    def _workdir(self, ins: Instruction) -> None:
        self.check_flags(ins, ())
        self.need_args(ins)
        path = self.expand(ins, " ".join(ins.args))
        if not path.startswith("/"):
            path = posixpath.join("/", self.state.inner.get("WorkingDir") or "/", path)
        path = posixpath.normpath(path)
        if path.startswith("//"):
            path = path[1:]
        user = str(self.state.inner.get("User") or "")

        def mutate(c: dict[str, Any]) -> None:
            c["WorkingDir"] = path

        if path == "/":
            self._name("", True)  # counted as a step, as it is one elsewhere
            self.meta(ins, ["WORKDIR", path], mutate, f"WORKDIR {path}")
            return
        state = self.state

        def produce(step: Step) -> Layer | None:
            def write(merged: Path) -> None:
                target = fops.resolve_in(merged, path)
                if target.is_dir():
                    return
                owner = fops.user_owner(merged, user)
                fops.make_parents(target / ".x", merged, owner)

            return self.file_op(state, write)

        self.fs(ins, f"WORKDIR {path}", ["WORKDIR", path, user], produce, f"WORKDIR {path}", mutate)

    def file_op(
        self,
        state: ImageState,
        write: Callable[[Path], None],
        extra_views: list[tuple[list[Path], Callable[[Path], None]]] | None = None,
    ) -> Layer | None:
        """Mount ``state`` writable, let ``write`` change it, commit the changes."""
        lowers = self.b.lowers(state)
        scratch = fops.scratch_dir(self.b.root, self.b.lease)
        try:
            with fops.overlay_view(scratch, lowers, writable=True) as merged:
                write(merged)
            upper = scratch / "upper"
            if not any(os.scandir(upper)):
                return None
            return self.b.store.commit_dir(
                upper,
                state.diff_ids,
                compression=self.b.compression,
                epoch=self.b.epoch,
                overlay_upper=True,
            )
        finally:
            fops.unmount(scratch / "merged")
            fops.remove_scratch(scratch)

    # -- RUN ------------------------------------------------------------------------------
    def _run(self, ins: Instruction) -> None:
        self.check_flags(ins, ("mount", "network", "security"))
        where = self.where(ins)
        if not ins.json and not " ".join(ins.args).strip() and not ins.heredocs:
            raise BuildError(f"{where}: RUN requires at least one argument")
        inner = self.state.inner
        workdir = str(inner.get("WorkingDir") or "/")
        expansion = self.senv.expansion()
        mounts = [
            parse_mount(v, expansion, self.escape, workdir, where) for v in ins.flag_values("mount")
        ]
        network = self.flag(ins, "network") or "default"
        network = expand(network, expansion, self.escape, where)
        if network not in ("default", "none", "host"):
            raise BuildError(f"{where}: RUN --network={network}: want default, none or host")
        if network == "default":  # RUN --network=default: what the build was given
            network = self.b.opts.network
        security = self.flag(ins, "security") or "sandbox"
        if security not in ("sandbox", "insecure"):
            raise BuildError(f"{where}: RUN --security={security}: want sandbox or insecure")
        script: tuple[str, str] | None = None
        if ins.json:
            argv = list(ins.args)
        elif ins.heredocs:
            cmdline = " ".join(ins.args).strip()
            only = _HEREDOC_ONLY.fullmatch(cmdline)
            first = ins.heredocs[0]
            if only and only.group(2) == first.name and len(ins.heredocs) == 1:
                data = first.data()
                if data.startswith("#!"):
                    script = (first.name, data)
                    argv = [f"/dev/pipes/{first.name}"]
                else:
                    argv = [*self.shell, data]
            else:
                full = cmdline
                for h in ins.heredocs:
                    full += "\n" + h.content + h.name
                argv = [*self.shell, full]
        else:
            argv = [*self.shell, " ".join(ins.args)]
        env = self.senv.run_env()
        user = str(inner.get("User") or "")
        args = self.senv.args_in_scope()
        prefix = f"|{len(args)} " + " ".join(f"{k}={v}" for k, v in args) + " " if args else ""
        created_by = f"RUN {prefix}{' '.join(argv)}"
        mount_keys = [self._mount_key(m, where) for m in mounts]
        material = {
            "argv": argv,
            "env": [e for e in env if e.partition("=")[0] not in PROXY_ARGS],
            "user": user,
            "workdir": workdir,
            "network": network,
            "security": security,
            "mounts": mount_keys,
            "script": script,
        }
        state = self.state
        b = self.b

        def produce(step: Step) -> Layer | None:
            image_id = b.store.stack_image(b.platform, state.layers, state.diff_ids)
            lowers = b.lowers(state)
            extra: list[tuple[str, str]] = []
            tmpdir: Path | None = None
            try:
                if script is not None:
                    tmpdir = fops.scratch_dir(b.root, b.lease)
                    path = os.path.join(tmpdir, script[0])
                    with open(path, "w") as f:
                        f.write(script[1])
                    os.chmod(path, 0o755)
                    extra.append((path, f"/dev/pipes/{script[0]}"))
                req = RunRequest(
                    image_id=image_id,
                    lowers=lowers,
                    argv=argv,
                    env=env,
                    user=user,
                    workdir=workdir,
                    network=network,
                    mounts=mounts,
                    insecure=security == "insecure",
                    extra_binds=extra,
                )
                sources = MountSources(
                    context_path=lambda rel: b.context.abspath(rel),
                    stack_lowers=lambda ref: b.lowers(self._from_state(ref, where)),
                    secrets=b.opts.secrets,
                )

                def commit(upper: Path | None) -> Layer | None:
                    if upper is None:
                        return None
                    return b.store.commit_dir(
                        upper,
                        state.diff_ids,
                        compression=b.compression,
                        epoch=b.epoch,
                        overlay_upper=True,
                    )

                result: Layer | None = b.runner.run(
                    req, sources, lambda data: b.progress.output(step, data), commit
                )
                return result
            finally:
                if tmpdir is not None:
                    fops.remove_scratch(tmpdir)

        text = ins.text() if not ins.heredocs else ins.original.split("\n", 1)[0]
        self.fs(ins, text, material, produce, created_by)

    def _mount_key(self, m: MountSpec, where: str) -> dict[str, Any]:
        key = m.key()
        if m.type == "bind":
            if m.from_ is None:
                rel = clean_source(m.source)
                st = self.b.context.stat(rel)
                if st is None:
                    raise BuildError(
                        f"{where}: bind source {m.source or '.'} not found in the build context"
                    )
                key["content"] = self.b.context.digest(rel)
            else:
                key["from_key"] = self._from_state(m.from_, where).key
        return key

    def _from_state(self, ref_word: str, where: str) -> ImageState:
        """The state ``--from=`` names: an earlier stage or an image."""
        value = expand(ref_word, self.b.meta_env, self.escape, where)
        try:
            ref = resolve_ref(value, self.df, self.stage.index, allow_index=True)
        except BuildError as e:
            raise BuildError(f"{where}: {e}") from None
        if ref.stage is not None:
            return self.b.stage_state(ref.stage)
        assert ref.image is not None
        try:
            state, _ = self.b.image_state(ref.image)
        except BuildError:
            raise
        except LaminaError as e:
            raise BuildError(f"{where}: {e}") from None
        return state

    # -- COPY and ADD ---------------------------------------------------------------------
    def _copy(self, ins: Instruction) -> None:
        self._copy_or_add(ins, add=False)

    def _add(self, ins: Instruction) -> None:
        self._copy_or_add(ins, add=True)

    def _copy_or_add(self, ins: Instruction, *, add: bool) -> None:
        common = ("chown", "chmod", "link", "exclude")
        allowed = common + (("checksum",) if add else ("from",))
        where = self.where(ins)
        for name, _ in ins.flags:
            if name in ("parents", "unpack", "keep-git-dir"):
                raise BuildError(f"{where}: {ins.cmd} --{name} is not supported by lamina")
        self.check_flags(ins, allowed)
        words = [self.expand(ins, a) for a in ins.args]
        heredocs = {h.name: h for h in ins.heredocs}
        if len(words) < 2:
            raise BuildError(f"{where}: {ins.cmd} requires at least two arguments")
        *srcs, dest = words
        raw_srcs = ins.args[:-1]
        chown = self.flag(ins, "chown")
        chown = self.expand(ins, chown) if chown else None
        chmod = self.flag(ins, "chmod")
        chmod = fops.parse_chmod(self.expand(ins, chmod), where) if chmod else None
        excludes = [self.expand(ins, e) for e in ins.flag_values("exclude")]
        checksum = self.flag(ins, "checksum")
        checksum = self.expand(ins, checksum) if checksum else None
        from_word = self.flag(ins, "from")
        workdir = str(self.state.inner.get("WorkingDir") or "/")
        dest_is_dir = dest.endswith("/") or dest.endswith("/.") or dest in (".", "..")
        if not dest.startswith("/"):
            dest = posixpath.join("/", workdir, dest) + ("/" if dest_is_dir else "")
        if len(srcs) > 1 and not dest_is_dir:
            raise BuildError(
                f"{where}: when using {ins.cmd} with more than one source file, "
                "the destination must be a directory and end with a /"
            )
        sources: list[Source] = []
        material_srcs: list[Any] = []
        from_state: ImageState | None = None
        if from_word is not None:
            from_state = self._from_state(from_word, where)
        for raw, src in zip(raw_srcs, srcs, strict=True):
            hd = heredoc_name(raw)
            if hd is not None and hd in heredocs:
                h = heredocs[hd]
                data = h.data()
                if h.expand:
                    data = expand_heredoc(data, self.senv.expansion(), self.escape, where)
                sources.append(Source("heredoc", hd, data=data.encode()))
                material_srcs.append(["heredoc", hd, data])
            elif add and is_url(src):
                sources.append(fetch_url(src, checksum, where))
                material_srcs.append(["url", src, sources[-1].digest])
            elif add and is_git(src):
                raise BuildError(f"{where}: ADD of git repositories is not supported by lamina")
            elif from_state is not None:
                sources.append(Source("stage", src))
                material_srcs.append(["stage", src])
            else:
                selected = self.b.context.select(src)
                if not selected:
                    raise BuildError(
                        f"{where}: {ins.cmd} failed: file not found in build context or "
                        f"excluded by .dockerignore: {src}"
                    )
                for rel, name in selected:
                    sources.append(Source("context", rel, name=name))
                    material_srcs.append(["context", rel, name, self.b.context.digest(rel)])
        if checksum is not None and not any(s.kind == "url" for s in sources):
            raise BuildError(f"{where}: ADD --checksum is only supported for URL sources")
        material = {
            "op": ins.cmd,
            "srcs": material_srcs,
            "dest": dest,
            "dest_dir": dest_is_dir,
            "chown": chown,
            "chmod": chmod,
            "exclude": excludes,
            "from": from_state.key if from_state is not None else None,
            "unpack": add,
        }
        state = self.state
        exclude = PatternMatcher(excludes) if excludes else None
        multi = len(sources) > 1 or len(srcs) > 1

        def produce(step: Step) -> Layer | None:
            with contextlib.ExitStack() as stack:
                view: Path | None = None
                if from_state is not None:
                    scratch = fops.scratch_dir(self.b.root, self.b.lease)
                    stack.callback(fops.remove_scratch, scratch)
                    lowers = self.b.lowers(from_state)
                    view = stack.enter_context(fops.overlay_view(scratch, lowers, writable=False))

                def write(merged: Path) -> None:
                    owner = fops.resolve_owner(merged, chown, where) if chown else None
                    job = CopyJob(
                        merged=merged,
                        dest=dest,
                        dest_is_dir=dest_is_dir or multi,
                        owner=owner,
                        chmod=chmod,
                        exclude=exclude,
                        where=where,
                        add=add,
                        context=self.b.context,
                        view=view,
                    )
                    for s in sources:
                        job.copy(s)

                return self.file_op(state, write)

        text = ins.text() if not ins.heredocs else ins.original.split("\n", 1)[0]
        created_by = f"{ins.cmd} {' '.join(words)}"
        self.fs(ins, text, material, produce, created_by)


def _duration(text: str, flag: str, where: str) -> int:
    """Go's time.ParseDuration (non-negative); nanoseconds, at least 1ms when not 0."""
    try:
        ns = parse_duration(text)
    except ValueError as e:
        raise BuildError(f"{where}: HEALTHCHECK --{flag}: {e}") from None
    if 0 < ns < 1_000_000 and flag != "retries":
        raise BuildError(f"{where}: HEALTHCHECK --{flag} cannot be less than 1ms")
    return ns


def build(root: Path, options: BuildOptions, progress: Progress | None = None) -> BuildResult:
    """Build ``options`` on the lamina root ``root``; see the module docstring."""
    builder = Builder(root, options, progress)
    finished = threading.Event()
    if options.cancel is not None:
        threading.Thread(target=_watch_cancel, args=(builder, options.cancel, finished),
                         name="lamina-build-cancel", daemon=True).start()  # fmt: skip
    try:
        return builder.build()
    finally:
        finished.set()
        builder.close()


def _watch_cancel(builder: Builder, cancel: threading.Event, finished: threading.Event) -> None:
    """Stop ``builder`` once ``cancel`` is set, until it has finished; the kill is
    repeated, for a step container that was starting at the first one."""
    while not finished.wait(0.2):
        if cancel.is_set():
            builder.cancelled.set()
            builder.runner_kill_all()


def prune(root: Path) -> tuple[int, list[str]]:
    """Drop the build cache: step records, cache mounts, and the ``build-cache``
    image records no container uses; then collect garbage and remove what killed
    builds left. Returns (steps forgotten, image/blob/snapshot IDs removed)."""
    from lamina.builder._commit import HOLDER
    from lamina.image._gc import build_scratch, sweep_scratch

    root = Path(root)
    cache = BuildCache(root)
    local = LocalImages.open(root)
    removed: list[str] = []
    try:
        local.reap()
        steps = cache.clear()
        images = local.images
        held = [r for r in images.list() if HOLDER in images.holders(r.digest)]
        images.release(HOLDER)
        for rec in held:
            if images.delete_if_unused(rec.digest):
                removed.append(rec.id)
        removed += local.collect_garbage().removed
        sweep_scratch(root, build_scratch(root))
        return steps, removed
    finally:
        cache.close()
        local.close()
