"""Dockerfile parsing, ARG/ENV scoping and stage resolution (no containers).

What a Dockerfile author relies on: global ARGs reach FROM lines but not stages
unless re-declared; a stage sees an ARG only after declaring it; --build-arg beats
defaults; ENV beats ARG; platform ARGs are automatic; only the stages the target
needs are planned, in dependency order; errors name the file and line.
"""

from __future__ import annotations

import pytest

from lamina.builder import BuildError, parse
from lamina.builder._dockerfile import Instruction
from lamina.builder._stages import (
    ArgContext,
    StageEnv,
    from_env,
    global_args,
    plan_stages,
    platform_args,
)
from lamina.image import Platform

AMD64 = Platform("linux", "amd64")
ARM = Platform("linux", "arm", "v7")


def ctx(**build_args: str) -> ArgContext:
    return ArgContext(build_args, platform_args(AMD64, AMD64))


def stage_env(text: str, c: ArgContext, image_env: tuple[str, ...] = ()) -> StageEnv:
    """Declare the ARG and apply the ENV lines of the last stage of ``text``."""
    df = parse(text)
    globals_ = global_args(df, c)
    env = StageEnv(c, globals_, image_env)
    for ins in df.stages[-1].instructions:
        apply(env, ins)
    return env


def apply(env: StageEnv, ins: Instruction) -> None:
    from lamina.builder._stages import expand

    if ins.cmd == "ARG":
        for word in ins.args:
            env.declare(word, f"Dockerfile:{ins.line}")
    elif ins.cmd == "ENV":
        pairs = [(ins.args[i], ins.args[i + 1]) for i in range(0, len(ins.args), 2)]
        values = [(k, expand(v, env.expansion(), "\\", "x")) for k, v in pairs]
        for k, v in values:
            env.set_env(k, v)


# -- parsing ------------------------------------------------------------------------


def test_stages_global_args_and_names() -> None:
    df = parse(
        "ARG BASE=busybox\n"
        "ARG TAG\n"
        "FROM $BASE:${TAG:-latest} AS Build\n"
        "RUN true\n"
        "FROM scratch\n"
        "COPY --from=build /a /b\n"
    )
    assert [i.cmd for i in df.meta_args] == ["ARG", "ARG"]
    assert [(s.index, s.name, s.base) for s in df.stages] == [
        (0, "build", "$BASE:${TAG:-latest}"),
        (1, None, "scratch"),
    ]
    assert df.stages[1].instructions[0].flag_values("from") == ["build"]


def test_errors_name_the_file_and_line() -> None:
    with pytest.raises(BuildError, match=r"^Dockerfile:3: unknown instruction: RUNN$"):
        parse("FROM busybox\nRUN true\nRUNN false\n")
    with pytest.raises(BuildError, match=r"^Dockerfile:1: RUN before the first FROM"):
        parse("RUN true\nFROM busybox\n")
    with pytest.raises(BuildError, match=r"^app.Dockerfile: .*heredoc"):
        parse("FROM busybox\nRUN <<EOF\necho\n", "app.Dockerfile")
    with pytest.raises(BuildError, match=r"^Dockerfile:2: duplicate stage name"):
        parse("FROM busybox AS a\nFROM busybox AS A\n")
    with pytest.raises(BuildError, match=r"^Dockerfile:2: ONBUILD isn't allowed"):
        parse("FROM busybox\nONBUILD ONBUILD RUN true\n")


def test_escape_directive_and_heredoc_flags() -> None:
    df = parse('# escape=`\nFROM busybox\nRUN echo a `\n  b\nCOPY <<-"EOF" /x\n\tkeep $A\n\tEOF\n')
    assert df.escape == "`"
    run, copy = df.stages[0].instructions
    assert run.args == ["echo a   b"]
    (h,) = copy.heredocs
    assert (h.name, h.chomp, h.expand) == ("EOF", True, False)
    assert h.data() == "keep $A\n"


# -- ARG and ENV scoping --------------------------------------------------------------


def test_global_args_feed_from_lines_with_build_arg_overrides() -> None:
    df = parse("ARG BASE=busybox\nARG VER=1\nARG FULL=$BASE:$VER\nFROM $FULL\n")
    c = ctx(VER="2")
    g = global_args(df, c)
    assert g == {"BASE": "busybox", "VER": "2", "FULL": "busybox:2"}
    env = from_env(g, c)
    assert env["FULL"] == "busybox:2"
    assert env["TARGETARCH"] == "amd64"  # automatic platform args reach FROM lines
    assert c.consumed == {"VER"}


def test_a_stage_sees_an_arg_only_after_declaring_it() -> None:
    text = "ARG G=global\nFROM busybox\nARG G\nARG L=local-$G\nARG NOVALUE\n"
    env = stage_env(text, ctx())
    assert env.expansion() == {"G": "global", "L": "local-global"}
    # Undeclared in the stage: the global does not leak in.
    env2 = stage_env("ARG G=global\nFROM busybox\n", ctx())
    assert "G" not in env2.expansion()


def test_build_arg_beats_default_and_env_beats_arg() -> None:
    c = ctx(A="from-cli", B="cli-b", UNUSED="x")
    env = stage_env("FROM busybox\nARG A=default\nARG B=default\nENV B=env-b\n", c)
    assert env.expansion()["A"] == "from-cli"
    assert env.expansion()["B"] == "env-b"  # ENV wins over ARG of the same name
    # RUN sees ENV first, then the ARGs ENV does not shadow.
    assert env.run_env() == ["B=env-b", "A=from-cli"]
    assert c.unused_build_args() == ["UNUSED"]


def test_env_values_use_the_variables_before_the_instruction() -> None:
    env = stage_env("FROM busybox\nARG V=1\nENV X=$V\nENV Y=${X}-${V:-none}\n", ctx())
    assert env.expansion()["Y"] == "1-1"


def test_image_env_is_inherited() -> None:
    env = stage_env("FROM busybox\nENV B=$A-b\n", ctx(), image_env=("A=from-image",))
    assert env.expansion() == {"A": "from-image", "B": "from-image-b"}


def test_platform_args_are_declared_to_be_seen() -> None:
    c = ArgContext({}, platform_args(ARM, AMD64))
    env = stage_env("FROM busybox\nARG TARGETPLATFORM\nARG TARGETVARIANT\nARG BUILDARCH\n", c)
    assert env.expansion() == {
        "TARGETPLATFORM": "linux/arm/v7",
        "TARGETVARIANT": "v7",
        "BUILDARCH": "amd64",
    }
    assert "TARGETOS" not in env.expansion()


def test_proxy_args_reach_run_without_declaration_but_not_the_key() -> None:
    c = ctx(HTTP_PROXY="http://proxy:3128")
    env = stage_env("FROM busybox\nARG X=1\n", c)
    assert env.run_env() == ["X=1", "HTTP_PROXY=http://proxy:3128"]
    assert env.args_in_scope() == [("X", "1")]
    assert c.unused_build_args() == []  # predefined: never reported


# -- stage resolution -------------------------------------------------------------


MULTI = """\
FROM busybox AS base
RUN true
FROM base AS deps
RUN true
FROM busybox AS unused
RUN false
FROM busybox AS tools
FROM scratch AS final
COPY --from=deps /a /a
COPY --from=0 /b /b
RUN --mount=type=bind,from=tools,target=/t true
"""


def test_only_needed_stages_in_dependency_order() -> None:
    df = parse(MULTI)
    plans = plan_stages(df, None, {})
    assert [p.stage.name for p in plans] == ["base", "deps", "tools", "final"]
    final = plans[-1]
    assert final.deps == {0, 1, 3}
    assert final.base.image == "scratch"
    assert plans[1].base.stage == 0  # FROM base: the earlier stage, not an image


def test_target_builds_a_prefix() -> None:
    df = parse(MULTI)
    assert [p.stage.name for p in plan_stages(df, "DEPS", {})] == ["base", "deps"]
    with pytest.raises(BuildError, match="target stage 'nope' could not be found"):
        plan_stages(df, "nope", {})


def test_from_names_are_expanded_with_global_args() -> None:
    df = parse("ARG SRC=one\nFROM busybox AS one\nFROM busybox AS two\nCOPY --from=$SRC /a /a\n")
    g = global_args(df, ctx())
    plans = plan_stages(df, None, from_env(g, ctx()))
    assert [p.stage.name for p in plans] == ["one", "two"]
    # A name that is no earlier stage is an image reference.
    df2 = parse("FROM busybox\nCOPY --from=example.com/tools:1 /a /a\n")
    assert plan_stages(df2, None, {})[0].deps == set()


def test_from_index_must_be_an_earlier_stage() -> None:
    df = parse("FROM busybox\nCOPY --from=1 /a /a\nFROM busybox\n")
    with pytest.raises(BuildError, match=r"Dockerfile:2: .*stage 1 is not defined before"):
        plan_stages(df, None, {})
