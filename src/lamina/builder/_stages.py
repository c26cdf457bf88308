"""Build arguments and stages: which variables a word may use, and which stages
a target needs.

ARG scoping follows Docker's documentation:

- global ARGs (before the first FROM) are visible in FROM lines only, together
  with the automatic platform ARGs (``TARGETPLATFORM``, ``BUILDARCH``...);
- inside a stage an ARG is visible from its declaration on; ``ARG NAME`` without a
  default inherits the global value, and an automatic platform value;
- ``--build-arg`` overrides defaults, and ``ENV`` beats an ``ARG`` of the same name;
- the predefined proxy ARGs (``HTTP_PROXY``...) reach RUN without a declaration but
  stay out of the history and the cache key;
- a ``--build-arg`` no built stage declares is reported, not an error.

Stage resolution: the target (``--target``, else the last stage) and, transitively,
the stages it names in ``FROM``, ``COPY --from`` and ``RUN --mount=from=``; nothing
else is built. ``--from`` accepts an earlier stage's name or index; any other value
is an image reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from lamina.builder._dockerfile import BuildError, Dockerfile, Instruction, Stage
from lamina.builder.shell import ShellSyntaxError, process_word
from lamina.image._manifest import Platform

PROXY_ARGS = frozenset(
    {
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "FTP_PROXY",
        "ftp_proxy",
        "NO_PROXY",
        "no_proxy",
        "ALL_PROXY",
        "all_proxy",
    }
)
_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def platform_args(target: Platform, build: Platform) -> dict[str, str]:
    """The automatic platform ARGs."""

    def spec(p: Platform) -> str:
        return f"{p.os}/{p.architecture}" + (f"/{p.variant}" if p.variant else "")

    return {
        "TARGETPLATFORM": spec(target),
        "TARGETOS": target.os,
        "TARGETARCH": target.architecture,
        "TARGETVARIANT": target.variant or "",
        "BUILDPLATFORM": spec(build),
        "BUILDOS": build.os,
        "BUILDARCH": build.architecture,
        "BUILDVARIANT": build.variant or "",
    }


def expand(word: str, env: Mapping[str, str], escape: str, where: str) -> str:
    """``process_word`` with errors turned into BuildErrors naming the line."""
    try:
        return process_word(word, env, escape)
    except ShellSyntaxError as e:
        raise BuildError(f"{where}: {e}") from None


@dataclass
class ArgContext:
    """What every stage shares: --build-arg values, automatic ARGs, the escape
    character, and which build args some stage consumed."""

    build_args: Mapping[str, str]
    automatic: Mapping[str, str]
    escape: str = "\\"
    consumed: set[str] = field(default_factory=set)

    def unused_build_args(self) -> list[str]:
        return sorted(k for k in self.build_args if k not in self.consumed and k not in PROXY_ARGS)


def split_arg(word: str, where: str) -> tuple[str, str | None]:
    name, eq, default = word.partition("=")
    if not _ARG_NAME.fullmatch(name):
        raise BuildError(f"{where}: invalid ARG name {name!r}")
    return name, (default if eq else None)


def global_args(df: Dockerfile, ctx: ArgContext) -> dict[str, str | None]:
    """The global ARGs' values (None: declared without a value)."""
    values: dict[str, str | None] = {}
    for ins in df.meta_args:
        where = df.where(ins.line)
        if not ins.args or not ins.args[0]:
            raise BuildError(f"{where}: ARG requires at least one argument")
        for word in ins.args:
            name, default = split_arg(word, where)
            if name in ctx.build_args:
                values[name] = ctx.build_args[name]
                ctx.consumed.add(name)
            elif default is not None:
                values[name] = expand(default, from_env(values, ctx), ctx.escape, where)
            elif name in ctx.automatic:
                values[name] = ctx.automatic[name]
            else:
                values[name] = None
    return values


def from_env(globals_: Mapping[str, str | None], ctx: ArgContext) -> dict[str, str]:
    """Variables a FROM line (and --from) may use."""
    env = dict(ctx.automatic)
    env.update((k, v) for k, v in globals_.items() if v is not None)
    return env


class StageEnv:
    """The variables of one stage as its instructions run: ENV (from the base image
    config, then ENV instructions) and the ARGs declared so far."""

    def __init__(
        self, ctx: ArgContext, globals_: Mapping[str, str | None], image_env: Iterable[str]
    ) -> None:
        self.ctx = ctx
        self.globals = globals_
        self.env: dict[str, str] = {}
        for item in image_env:
            k, _, v = str(item).partition("=")
            self.env[k] = v
        self.args: dict[str, str | None] = {}

    def expansion(self) -> dict[str, str]:
        """What ``$VAR`` sees: declared ARGs with a value, overridden by ENV."""
        out = {k: v for k, v in self.args.items() if v is not None}
        out.update(self.env)
        return out

    def declare(self, word: str, where: str) -> tuple[str, str | None]:
        name, default = split_arg(word, where)
        if name in self.ctx.build_args:
            value: str | None = self.ctx.build_args[name]
            self.ctx.consumed.add(name)
        elif default is not None:
            value = expand(default, self.expansion(), self.ctx.escape, where)
        elif self.globals.get(name) is not None:
            value = self.globals[name]
        elif name in self.ctx.automatic:
            value = self.ctx.automatic[name]
        else:
            value = None
        self.args[name] = value
        return name, value

    def set_env(self, name: str, value: str) -> None:
        self.env[name] = value

    def args_in_scope(self) -> list[tuple[str, str]]:
        """Declared ARGs with a value that ENV does not shadow, in declaration order
        (they reach RUN's environment and its cache key)."""
        return [
            (k, v)
            for k, v in self.args.items()
            if v is not None and k not in self.env and k not in PROXY_ARGS
        ]

    def proxies(self) -> list[tuple[str, str]]:
        return sorted(
            (k, v) for k, v in self.ctx.build_args.items() if k in PROXY_ARGS and k not in self.env
        )

    def run_env(self) -> list[str]:
        """The environment of a RUN: ENV, then in-scope ARGs, then proxy ARGs."""
        out = [f"{k}={v}" for k, v in self.env.items()]
        out += [f"{k}={v}" for k, v in self.args_in_scope()]
        out += [f"{k}={v}" for k, v in self.proxies() if k not in self.args]
        return out


# ------------------------------------------------------------------ stage resolution


@dataclass
class StageRef:
    """Where ``--from`` (or a FROM line) points: an earlier stage or an image."""

    stage: int | None = None
    image: str | None = None


@dataclass
class StagePlan:
    stage: Stage
    base: StageRef
    platform: str | None  # expanded --platform
    deps: set[int] = field(default_factory=set)


def resolve_ref(word: str, df: Dockerfile, before: int, *, allow_index: bool) -> StageRef:
    """A stage name (case-insensitive) or, for --from, index of a stage before
    ``before``; anything else names an image."""
    lowered = word.lower()
    for s in df.stages[:before]:
        if s.name == lowered:
            return StageRef(stage=s.index)
    if allow_index and word.isdigit():
        idx = int(word)
        if idx >= before:
            raise BuildError(f"invalid --from={word}: stage {idx} is not defined before this one")
        return StageRef(stage=idx)
    return StageRef(image=word)


def mount_from(ins: Instruction) -> list[str]:
    """The ``from=`` values of a RUN's --mount flags."""
    out = []
    for spec in ins.flag_values("mount"):
        for part in spec.split(","):
            k, _, v = part.partition("=")
            if k.strip().lower() == "from" and v:
                out.append(v.strip())
    return out


def plan_stages(df: Dockerfile, target: str | None, meta_env: Mapping[str, str]) -> list[StagePlan]:
    """Plans of the stages ``target`` needs, dependencies first."""
    plans: dict[int, StagePlan] = {}
    for st in df.stages:
        where = df.where(st.line)
        base_word = expand(st.base, meta_env, df.escape, where)
        if not base_word:
            raise BuildError(f"{where}: FROM names an empty image (check its ARGs)")
        base = resolve_ref(base_word, df, st.index, allow_index=False)
        platform = expand(st.platform, meta_env, df.escape, where) if st.platform else None
        plan = StagePlan(stage=st, base=base, platform=platform)
        if base.stage is not None:
            plan.deps.add(base.stage)
        for ins in st.instructions:
            words: list[str] = []
            if ins.cmd in ("COPY", "ADD"):
                words = ins.flag_values("from")
            elif ins.cmd == "RUN":
                words = mount_from(ins)
            for w in words:
                value = expand(w, meta_env, df.escape, df.where(ins.line))
                try:
                    ref = resolve_ref(value, df, st.index, allow_index=True)
                except BuildError as e:
                    raise BuildError(f"{df.where(ins.line)}: {e}") from None
                if ref.stage is not None:
                    plan.deps.add(ref.stage)
        plans[st.index] = plan
    target_index = _target_index(df, target)
    order: list[int] = []
    seen: set[int] = set()

    def visit(i: int) -> None:
        if i in seen:
            return
        seen.add(i)
        for d in sorted(plans[i].deps):
            visit(d)
        order.append(i)

    visit(target_index)
    return [plans[i] for i in order]


def _target_index(df: Dockerfile, target: str | None) -> int:
    if target is None:
        return len(df.stages) - 1
    lowered = target.lower()
    for s in df.stages:
        if s.name == lowered:
            return s.index
    raise BuildError(f"target stage {target!r} could not be found in {df.name}")
