"""Reading a Dockerfile: BuildKit's own parser (the ``dockerfile`` package), then
lamina's model of it.

``parse(text, name)`` returns a ``Dockerfile``: the parser directives (``escape``),
the global ARGs before the first FROM, and the stages, each a FROM plus its
instructions. Nothing is expanded here: which words are expanded, and with which
variables, is the executor's business (ARG scoping lives in ``_stages``). Every
error is a ``BuildError`` whose message starts with ``<file>:<line>:``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import dockerfile as _parser

from lamina.errors import LaminaError

INSTRUCTIONS = frozenset(
    {
        "ADD",
        "ARG",
        "CMD",
        "COPY",
        "ENTRYPOINT",
        "ENV",
        "EXPOSE",
        "FROM",
        "HEALTHCHECK",
        "LABEL",
        "MAINTAINER",
        "ONBUILD",
        "RUN",
        "SHELL",
        "STOPSIGNAL",
        "USER",
        "VOLUME",
        "WORKDIR",
    }
)
_DIRECTIVE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_HEREDOC_WORD = re.compile(r"<<(-?)\s*([\"']?)([^\s\"'<>|&;]+)\2")


class BuildError(LaminaError):
    """A Dockerfile is invalid or a build step failed. ``output_tail`` holds the last
    output lines of a failed RUN (empty otherwise), ``step`` its name."""

    def __init__(self, message: str, output_tail: list[str] | None = None, step: str = "") -> None:
        super().__init__(message)
        self.output_tail = output_tail or []
        self.step = step  # the failed step's name, e.g. "[2/5] RUN make"


@dataclass(frozen=True)
class Heredoc:
    name: str
    content: str
    chomp: bool = False  # <<-EOF: leading tabs are stripped
    expand: bool = True  # <<EOF expands variables, <<"EOF" does not

    def data(self) -> str:
        if not self.chomp:
            return self.content
        return "".join(line.lstrip("\t") for line in self.content.splitlines(keepends=True))


@dataclass
class Instruction:
    cmd: str  # upper case
    args: list[str]  # the parser's words (JSON elements for the JSON form)
    line: int
    original: str = ""
    json: bool = False
    flags: list[tuple[str, str | None]] = field(default_factory=list)
    heredocs: list[Heredoc] = field(default_factory=list)
    end_line: int = 0
    trigger: str = ""  # ONBUILD: the instruction text it records

    def flag_values(self, name: str) -> list[str]:
        return [v if v is not None else "" for n, v in self.flags if n == name]

    def text(self) -> str:
        """The instruction as written, on one line (for progress and history)."""
        first = self.original.split("\n", 1)[0]
        return " ".join(first.split()) if len(first) < 4000 else first[:4000]


@dataclass
class Stage:
    index: int
    name: str | None  # lower case, as BuildKit compares stage names
    base: str  # the FROM image word, unexpanded
    platform: str | None  # --platform, unexpanded
    line: int
    instructions: list[Instruction] = field(default_factory=list)
    from_instruction: Instruction | None = None

    @property
    def label(self) -> str:
        return self.name if self.name is not None else f"stage-{self.index}"


@dataclass
class Dockerfile:
    name: str  # what errors call the file, e.g. "Dockerfile"
    escape: str
    meta_args: list[Instruction]  # ARGs before the first FROM
    stages: list[Stage]

    def where(self, line: int) -> str:
        return f"{self.name}:{line}"


def directives(text: str) -> dict[str, str]:
    """Parser directives at the top of the file (``# escape=`` and friends): comment
    lines of the form ``# key=value`` before anything else, keys lower-cased."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        m = _DIRECTIVE.fullmatch(raw.strip())
        if m is None:
            break
        key = m.group(1).lower()
        if key in out:
            break
        out[key] = m.group(2)
    return out


def parse_flag(raw: str) -> tuple[str, str | None]:
    body = raw[2:] if raw.startswith("--") else raw
    name, eq, value = body.partition("=")
    return name.lower(), (value if eq else None)


def _heredocs(cmd: _parser.Command) -> list[Heredoc]:
    words = {m.group(3): m for m in _HEREDOC_WORD.finditer(cmd.original.split("\n", 1)[0])}
    out = []
    for h in cmd.heredocs:
        m = words.get(h.name)
        chomp = bool(m and m.group(1))
        expand = not (m and m.group(2))
        out.append(Heredoc(h.name, h.content, chomp=chomp, expand=expand))
    return out


def _instruction(cmd: _parser.Command, name: str) -> Instruction:
    word = cmd.cmd.upper()
    if word not in INSTRUCTIONS:
        raise BuildError(f"{name}:{cmd.start_line}: unknown instruction: {cmd.cmd}")
    ins = Instruction(
        cmd=word,
        args=list(cmd.value),
        line=cmd.start_line,
        original=cmd.original,
        json=bool(cmd.json),
        flags=[parse_flag(f) for f in cmd.flags],
        heredocs=_heredocs(cmd),
        end_line=cmd.end_line,
    )
    if word == "ONBUILD":
        trigger = cmd.original.strip()[len("ONBUILD") :].strip()
        if not trigger:
            raise BuildError(f"{name}:{cmd.start_line}: ONBUILD requires an instruction")
        sub = (cmd.sub_cmd or trigger.split(None, 1)[0]).upper()
        if sub in ("ONBUILD", "FROM", "MAINTAINER"):
            raise BuildError(f"{name}:{cmd.start_line}: {sub} isn't allowed as an ONBUILD trigger")
        if sub not in INSTRUCTIONS:
            raise BuildError(f"{name}:{cmd.start_line}: unknown instruction: {sub}")
        ins.trigger = trigger
    return ins


def parse_instructions(text: str, name: str) -> list[Instruction]:
    """Parse ``text`` into instructions (no stage structure); used for ONBUILD triggers."""
    try:
        cmds = _parser.parse_string(text)
    except _parser.GoParseError as e:
        raise BuildError(f"{name}: {_one_line(str(e))}") from None
    return [_instruction(c, name) for c in cmds]


def parse(text: str, name: str = "Dockerfile") -> Dockerfile:
    """Parse a whole Dockerfile."""
    escape = directives(text).get("escape", "\\")
    if escape not in ("\\", "`"):
        raise BuildError(f"{name}:1: invalid escape token {escape!r}: it must be ` or \\")
    if not text.strip():
        raise BuildError(f"{name}: the Dockerfile cannot be empty")
    instructions = parse_instructions(text, name)
    meta: list[Instruction] = []
    stages: list[Stage] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            stages.append(_stage(ins, len(stages), name, stages))
        elif not stages:
            if ins.cmd != "ARG":
                raise BuildError(
                    f"{name}:{ins.line}: {ins.cmd} before the first FROM: only ARG may "
                    "come before it (no build stage in current context)"
                )
            meta.append(ins)
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise BuildError(f"{name}: no FROM instruction: the Dockerfile has no build stage")
    return Dockerfile(name=name, escape=escape, meta_args=meta, stages=stages)


def _stage(ins: Instruction, index: int, name: str, earlier: list[Stage]) -> Stage:
    platform = None
    for flag, value in ins.flags:
        if flag != "platform":
            raise BuildError(f"{name}:{ins.line}: unknown flag for FROM: --{flag}")
        if not value:
            raise BuildError(f"{name}:{ins.line}: FROM --platform needs a value")
        platform = value
    args = ins.args
    stage_name = None
    if len(args) == 3 and args[1].lower() == "as":
        stage_name = args[2].lower()
        if not re.fullmatch(r"[a-z][a-z0-9-_.]*", stage_name):
            raise BuildError(f"{name}:{ins.line}: invalid stage name {args[2]!r}")
        if any(s.name == stage_name for s in earlier):
            raise BuildError(f"{name}:{ins.line}: duplicate stage name {args[2]!r}")
    elif len(args) != 1 or not args[0]:
        raise BuildError(f"{name}:{ins.line}: FROM requires one image, optionally 'AS name'")
    return Stage(
        index=index,
        name=stage_name,
        base=args[0],
        platform=platform,
        line=ins.line,
        from_instruction=ins,
    )


def _one_line(msg: str) -> str:
    return " ".join(msg.split()) or "parse error"
