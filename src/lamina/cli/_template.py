"""Go's text/template, as Docker's ``--format`` uses it.

A lexer and a parser (after Go's text/template/parse) build a small node tree; the
executor walks it over Python data with Go's semantics: dicts are maps (missing key:
``<no value>``, or an error with ``missing_key="error"``), objects are structs (a
missing field is an error; exported attributes and methods are their fields),
None is nil; truth, printing (``map[k:v]``, ``[a b]``), comparisons and the builtin
functions behave as Go's, and errors read as Go's (``template: :1:2: executing ""
at <.Foo>: ...``), one line each. Docker's functions (``json``, ``split``, ``join``,
``title``, ``lower``, ``upper``, ``pad``, ``truncate``) come with it, and
:func:`render_listing` is Docker's formatter: ``table`` headers, ``json`` as one
object per line, ``\\t``/``\\n`` escapes and its tabwriter.

Imported only when a command is given a template: ``lamina ps`` does not pay for it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

from lamina.cli._gofmt import (
    MISSING,
    GoStrings,
    format_value,
    go_json,
    is_nil,
    sprint,
    sprintf,
    sprintln,
    type_name,
)
from lamina.cli._output import go_quote
from lamina.errors import LaminaError

__all__ = [
    "HeaderMap",
    "StringMap",
    "Template",
    "TemplateError",
    "render",
    "render_listing",
]


class TemplateError(LaminaError):
    """A template that does not parse or fails on the data: one line, Go's words.
    ``partial`` is what it printed before it failed."""

    exit_code = 125

    def __init__(self, message: str, partial: str = "") -> None:
        super().__init__(message)
        self.partial = partial


class StringMap(dict[str, str]):
    """A Go ``map[string]string`` (labels): ``index`` of a missing key is "", and a
    nil one (``StringMap(None)``) is empty but JSON ``null``."""

    go_type = "map[string]string"
    go_zero = ""
    go_json_sorted = True

    def __init__(self, items: Mapping[str, str] | None) -> None:
        super().__init__(items or {})
        self.go_nil = items is None


def with_string_maps(data: Any) -> Any:
    """Inspect data with each ``Labels`` map a :class:`StringMap`, as Docker's typed
    inspect has them: ``{{index .Config.Labels "x"}}`` is "" for a missing label."""
    if isinstance(data, list):
        return [with_string_maps(x) for x in data]
    if not isinstance(data, dict):
        return data
    out = {}
    for key, value in data.items():
        is_labels = key == "Labels" and (
            value is None
            or (isinstance(value, dict) and all(isinstance(v, str) for v in value.values()))
        )
        out[key] = StringMap(value) if is_labels else with_string_maps(value)
    return out


class HeaderMap(dict[str, str]):
    """Docker's SubHeaderContext: the column titles a ``table`` template's header row
    is rendered from; ``.Label "a.b-c"`` titles a label column ``b c``."""

    go_type = "formatter.SubHeaderContext"
    go_zero = ""
    go_json_sorted = True

    def Label(self, name: str) -> str:
        return name.split(".")[-1].replace("-", " ").replace("_", " ")


# -- lexer -------------------------------------------------------------------------------

# Item types.
ERROR, EOF, TEXT, LEFT, RIGHT, SPACE, FIELD, VARIABLE, IDENT, NUMBER, STRING, RAW_STRING = (
    "error", "EOF", "text", "{{", "}}", "space", "field", "variable", "identifier",
    "number", "string", "raw string",
)  # fmt: skip
CHAR_CONST, BOOL, PIPE, LPAREN, RPAREN, DECLARE, ASSIGN, CHAR, DOT_ITEM = (
    "char constant", "bool", "|", "(", ")", ":=", "=", "char", "dot",
)  # fmt: skip
KEYWORDS = {
    "block", "break", "continue", "define", "else", "end", "if", "nil", "range", "template",
    "with",
}  # fmt: skip
_SPACE = " \t\r\n"


class Item:
    __slots__ = ("line", "pos", "typ", "val")

    def __init__(self, typ: str, val: str, pos: int, line: int) -> None:
        self.typ, self.val, self.pos, self.line = typ, val, pos, line

    def __str__(self) -> str:
        if self.typ == EOF:
            return "EOF"
        if self.typ == ERROR:
            return self.val
        if self.typ in KEYWORDS or self.typ == DOT_ITEM:
            return f"<{self.val}>"
        if len(self.val) > 10:
            return go_quote(self.val[:10]) + "..."
        return go_quote(self.val)


def _is_alnum(ch: str) -> bool:
    return ch == "_" or ch.isalpha() or ch.isdigit()


class _Lexer:
    """Go's lexer: text and actions, with ``{{-``/``-}}`` trimming and comments."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.start = 0
        self.items: list[Item] = []
        self.paren_depth = 0

    def line_at(self, pos: int) -> int:
        return 1 + self.text.count("\n", 0, pos)

    def emit(self, typ: str) -> None:
        self.items.append(
            Item(typ, self.text[self.start : self.pos], self.start, self.line_at(self.start))
        )
        self.start = self.pos

    def error(self, msg: str) -> None:
        self.items.append(Item(ERROR, msg, self.start, self.line_at(self.start)))

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def at_right_delim(self) -> tuple[bool, bool]:
        rest = self.text[self.pos :]
        if len(rest) >= 2 and rest[0] in _SPACE and rest[1] == "-" and rest[2:].startswith("}}"):
            return True, True
        return rest.startswith("}}"), False

    def at_terminator(self) -> bool:
        ch = self.peek()
        return (
            ch in _SPACE
            or ch in ("", ".", ",", "|", ":", ")", "(")
            or (self.text.startswith("}}", self.pos))
        )

    def run(self) -> list[Item]:
        while self.lex_text():
            if not self.lex_action():
                return self.items
        return self.items

    def lex_text(self) -> bool:
        """Up to the next ``{{``; False at the end of the input."""
        i = self.text.find("{{", self.pos)
        if i < 0:
            self.pos = len(self.text)
            if self.pos > self.start:
                self.emit(TEXT)
            self.items.append(Item(EOF, "", self.pos, self.line_at(self.pos)))
            return False
        self.pos = i
        trim = self._has_left_trim(i + 2)
        end = i
        if trim:
            end = len(self.text[self.start : i].rstrip(_SPACE)) + self.start
        if end > self.start:
            saved = self.pos
            self.pos = end
            self.emit(TEXT)
            self.pos = saved
        self.start = self.pos
        return True

    def _has_left_trim(self, at: int) -> bool:
        return self.text[at : at + 1] == "-" and self.text[at + 1 : at + 2] in tuple(_SPACE)

    def lex_action(self) -> bool:
        """From ``{{`` through ``}}``; False after an error."""
        trim = self._has_left_trim(self.pos + 2)
        after = 2 + (2 if trim else 0)
        if self.text.startswith("/*", self.pos + after):
            return self.lex_comment(after)
        self.pos += 2
        self.emit(LEFT)
        self.pos += after - 2
        self.start = self.pos
        self.paren_depth = 0
        while True:
            delim, trim_right = self.at_right_delim()
            if delim:
                if self.paren_depth:
                    self.error("unclosed left paren")
                    return False
                if trim_right:
                    self.pos += 2
                    self.start = self.pos
                self.pos += 2
                self.emit(RIGHT)
                if trim_right:
                    self._skip_leading_space()
                return True
            if not self.lex_inside():
                return False

    def _skip_leading_space(self) -> None:
        rest = self.text[self.pos :]
        self.pos += len(rest) - len(rest.lstrip(_SPACE))
        self.start = self.pos

    def lex_comment(self, after: int) -> bool:
        self.pos += after + 2
        end = self.text.find("*/", self.pos)
        if end < 0:
            self.error("unclosed comment")
            return False
        self.pos = end + 2
        delim, trim = self.at_right_delim()
        if not delim:
            self.error("comment ends before closing delimiter")
            return False
        self.pos += (2 if trim else 0) + 2
        self.start = self.pos
        if trim:
            self._skip_leading_space()
        return True

    def lex_inside(self) -> bool:
        text = self.text
        if self.pos >= len(text):
            self.error("unclosed action")
            return False
        ch = text[self.pos]
        self.pos += 1
        if ch in _SPACE:
            self.pos -= 1
            return self.lex_space()
        if ch == "=":
            self.emit(ASSIGN)
        elif ch == ":":
            if self.peek() != "=":
                self.error("expected :=")
                return False
            self.pos += 1
            self.emit(DECLARE)
        elif ch == "|":
            self.emit(PIPE)
        elif ch == '"':
            return self.lex_quote('"', STRING, "unterminated quoted string")
        elif ch == "`":
            end = text.find("`", self.pos)
            if end < 0:
                self.error("unterminated raw quoted string")
                return False
            self.pos = end + 1
            self.emit(RAW_STRING)
        elif ch == "$":
            return self.lex_field_or_variable(VARIABLE)
        elif ch == "'":
            return self.lex_quote("'", CHAR_CONST, "unterminated character constant")
        elif ch == "." and not (self.peek().isdigit() and self.peek() in "0123456789"):
            return self.lex_field_or_variable(FIELD)
        elif ch in "+-." or ch in "0123456789":
            self.pos -= 1
            return self.lex_number()
        elif _is_alnum(ch):
            self.pos -= 1
            return self.lex_identifier()
        elif ch == "(":
            self.emit(LPAREN)
            self.paren_depth += 1
        elif ch == ")":
            self.emit(RPAREN)
            self.paren_depth -= 1
            if self.paren_depth < 0:
                self.error("unexpected right paren")
                return False
        elif ord(ch) < 0x80 and ch.isprintable():
            self.emit(CHAR)
        else:
            self.error(f"unrecognized character in action: {_unicode_name(ch)}")
            return False
        return True

    def lex_space(self) -> bool:
        n = 0
        while self.peek() in tuple(_SPACE):
            self.pos += 1
            n += 1
        rest = self.text[self.pos - 1 :]
        if rest[:1] in tuple(_SPACE) and rest[1:2] == "-" and rest[2:].startswith("}}"):
            self.pos -= 1  # leave " -}}" to the delimiter
            if n == 1:
                return True
        self.emit(SPACE)
        return True

    def lex_quote(self, quote: str, typ: str, unterminated: str) -> bool:
        text = self.text
        while True:
            ch = text[self.pos] if self.pos < len(text) else ""
            self.pos += 1
            if ch == "\\":
                nxt = text[self.pos] if self.pos < len(text) else ""
                self.pos += 1
                if nxt not in ("", "\n"):
                    continue
                ch = nxt
            if ch in ("", "\n"):
                self.error(unterminated)
                return False
            if ch == quote:
                break
        self.emit(typ)
        return True

    def lex_field_or_variable(self, typ: str) -> bool:
        if self.at_terminator():
            self.emit(VARIABLE if typ == VARIABLE else DOT_ITEM)
            return True
        while self.pos < len(self.text) and _is_alnum(self.text[self.pos]):
            self.pos += 1
        if not self.at_terminator():
            self.error(f"bad character {_unicode_name(self.peek())}")
            return False
        self.emit(typ)
        return True

    def lex_identifier(self) -> bool:
        while self.pos < len(self.text) and _is_alnum(self.text[self.pos]):
            self.pos += 1
        word = self.text[self.start : self.pos]
        if not self.at_terminator():
            self.error(f"bad character {_unicode_name(self.peek())}")
            return False
        if word in KEYWORDS:
            self.emit(word)
        elif word in ("true", "false"):
            self.emit(BOOL)
        else:
            self.emit(IDENT)
        return True

    def lex_number(self) -> bool:
        if not self._scan_number():
            self.error(f"bad number syntax: {go_quote(self.text[self.start : self.pos])}")
            return False
        if self.peek() in ("+", "-"):
            self._scan_number()
            self.error(f"bad number syntax: {go_quote(self.text[self.start : self.pos])}")
            return False
        self.emit(NUMBER)
        return True

    def _accept(self, valid: str) -> bool:
        if self.peek() and self.peek() in valid:
            self.pos += 1
            return True
        return False

    def _accept_run(self, valid: str) -> None:
        while self._accept(valid):
            pass

    def _scan_number(self) -> bool:
        self._accept("+-")
        digits = "0123456789_"
        if self._accept("0"):
            if self._accept("xX"):
                digits = "0123456789abcdefABCDEF_"
            elif self._accept("oO"):
                digits = "01234567_"
            elif self._accept("bB"):
                digits = "01_"
        self._accept_run(digits)
        if self._accept("."):
            self._accept_run(digits)
        if len(digits) == 11 and self._accept("eE"):
            self._accept("+-")
            self._accept_run("0123456789_")
        if len(digits) == 23 and self._accept("pP"):
            self._accept("+-")
            self._accept_run("0123456789_")
        self._accept("i")
        if self.peek() and _is_alnum(self.peek()):
            self.pos += 1
            return False
        return True


def _unicode_name(ch: str) -> str:
    """Go's %#U: U+0041 'A'."""
    if not ch:
        return "U+FFFFFFFFFFFFFFFF"
    return f"U+{ord(ch):04X} '{ch}'" if ch.isprintable() else f"U+{ord(ch):04X}"


# -- nodes ---------------------------------------------------------------------------------


class Node:
    __slots__ = ("pos",)

    def __init__(self, pos: int) -> None:
        self.pos = pos


class ListNode(Node):
    __slots__ = ("nodes",)

    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.nodes: list[Node] = []

    def __str__(self) -> str:
        return "".join(str(n) for n in self.nodes)


class TextNode(Node):
    __slots__ = ("text",)

    def __init__(self, pos: int, text: str) -> None:
        super().__init__(pos)
        self.text = text

    def __str__(self) -> str:
        return go_quote(self.text)


class PipeNode(Node):
    __slots__ = ("cmds", "decl", "is_assign", "line")

    def __init__(self, pos: int, line: int) -> None:
        super().__init__(pos)
        self.line = line
        self.decl: list[VariableNode] = []
        self.is_assign = False
        self.cmds: list[CommandNode] = []

    def __str__(self) -> str:
        out = ""
        if self.decl:
            out = ", ".join(str(v) for v in self.decl) + (" = " if self.is_assign else " := ")
        return out + " | ".join(str(c) for c in self.cmds)


class ActionNode(Node):
    __slots__ = ("pipe",)

    def __init__(self, pos: int, pipe: PipeNode) -> None:
        super().__init__(pos)
        self.pipe = pipe

    def __str__(self) -> str:
        return "{{" + str(self.pipe) + "}}"


class CommandNode(Node):
    __slots__ = ("args",)

    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.args: list[Node] = []

    def __str__(self) -> str:
        return " ".join(f"({a})" if isinstance(a, PipeNode) else str(a) for a in self.args)


class IdentifierNode(Node):
    __slots__ = ("name",)

    def __init__(self, pos: int, name: str) -> None:
        super().__init__(pos)
        self.name = name

    def __str__(self) -> str:
        return self.name


class VariableNode(Node):
    __slots__ = ("idents",)

    def __init__(self, pos: int, text: str) -> None:
        super().__init__(pos)
        self.idents = text.split(".")

    def __str__(self) -> str:
        return ".".join(self.idents)


class FieldNode(Node):
    __slots__ = ("idents",)

    def __init__(self, pos: int, text: str) -> None:
        super().__init__(pos)
        self.idents = text[1:].split(".")

    def __str__(self) -> str:
        return "".join("." + i for i in self.idents)


class ChainNode(Node):
    __slots__ = ("fields", "node")

    def __init__(self, pos: int, node: Node) -> None:
        super().__init__(pos)
        self.node = node
        self.fields: list[str] = []

    def __str__(self) -> str:
        inner = f"({self.node})" if isinstance(self.node, PipeNode) else str(self.node)
        return inner + "".join("." + f for f in self.fields)


class _Word(Node):
    """A node that reads as fixed text."""

    __slots__ = ()
    word = ""

    def __str__(self) -> str:
        return self.word


class DotNode(_Word):
    __slots__ = ()
    word = "."


class NilNode(_Word):
    __slots__ = ()
    word = "nil"


class BoolNode(Node):
    __slots__ = ("value",)

    def __init__(self, pos: int, value: bool) -> None:
        super().__init__(pos)
        self.value = value

    def __str__(self) -> str:
        return "true" if self.value else "false"


class NumberNode(Node):
    __slots__ = ("float_value", "int_value", "is_char", "text")

    def __init__(self, pos: int, text: str, int_value: int | None, float_value: float | None,
                 is_char: bool = False) -> None:  # fmt: skip
        super().__init__(pos)
        self.text = text
        self.int_value = int_value
        self.float_value = float_value
        self.is_char = is_char

    def __str__(self) -> str:
        return self.text

    def ideal(self) -> int | float | None:
        """The value without a type to convert to: float only if written as one;
        None if it is an integer that overflows Go's int."""
        text = self.text.lstrip("+-").lower()
        hex_int = text.startswith("0x") and "p" not in text
        written_float = not hex_int and any(c in text for c in ".ep")
        if self.float_value is not None and not self.is_char and written_float:
            return self.float_value
        return self.int_value


class StringNode(Node):
    __slots__ = ("quoted", "text")

    def __init__(self, pos: int, quoted: str, text: str) -> None:
        super().__init__(pos)
        self.quoted = quoted
        self.text = text

    def __str__(self) -> str:
        return self.quoted


class _Control(Node):
    __slots__ = ("else_list", "line", "list", "pipe")
    keyword = ""

    def __init__(self, pos: int, line: int, pipe: PipeNode, body: ListNode,
                 else_list: ListNode | None) -> None:  # fmt: skip
        super().__init__(pos)
        self.line = line
        self.pipe = pipe
        self.list = body
        self.else_list = else_list

    def __str__(self) -> str:
        out = "{{" + self.keyword + " " + str(self.pipe) + "}}" + str(self.list)
        if self.else_list is not None:
            out += "{{else}}" + str(self.else_list)
        return out + "{{end}}"


class IfNode(_Control):
    __slots__ = ()
    keyword = "if"


class RangeNode(_Control):
    __slots__ = ()
    keyword = "range"


class WithNode(_Control):
    __slots__ = ()
    keyword = "with"


class BreakNode(_Word):
    __slots__ = ()
    word = "{{break}}"


class ContinueNode(_Word):
    __slots__ = ()
    word = "{{continue}}"


class TemplateNode(Node):
    __slots__ = ("name", "pipe")

    def __init__(self, pos: int, name: str, pipe: PipeNode | None) -> None:
        super().__init__(pos)
        self.name = name
        self.pipe = pipe

    def __str__(self) -> str:
        inner = f" {self.pipe}" if self.pipe is not None else ""
        return "{{template " + go_quote(self.name) + inner + "}}"


class _End(_Word):
    __slots__ = ()
    word = "{{end}}"


class _Else(_Word):
    __slots__ = ()
    word = "{{else}}"


# -- parser --------------------------------------------------------------------------------


class _ParseError(Exception):
    pass


def go_unquote(quoted: str) -> str:
    """strconv.Unquote of a "..." string, a `raw` string or a 'c' rune literal."""
    if quoted.startswith("`"):
        if "`" in quoted[1:-1]:
            raise ValueError("invalid syntax")
        return quoted[1:-1].replace("\r", "")
    body = quoted[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            if ch == quoted[0] or ch == "\n":
                raise ValueError("invalid syntax")
            out.append(ch)
            i += 1
            continue
        i += 1
        if i >= len(body):
            raise ValueError("invalid syntax")
        esc = body[i]
        simple = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
                  "\\": "\\"}  # fmt: skip
        if esc in simple:
            out.append(simple[esc])
            i += 1
        elif esc == quoted[0]:
            out.append(esc)
            i += 1
        elif esc in "xuU":
            n = {"x": 2, "u": 4, "U": 8}[esc]
            digits = body[i + 1 : i + 1 + n]
            if len(digits) != n or any(c not in "0123456789abcdefABCDEF" for c in digits):
                raise ValueError("invalid syntax")
            value = int(digits, 16)
            if esc == "x":
                out.append(bytes([value]).decode("utf-8", "surrogateescape"))
            else:
                if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
                    raise ValueError("invalid syntax")
                out.append(chr(value))
            i += 1 + n
        elif esc in "01234567":
            digits = body[i : i + 3]
            if len(digits) != 3 or any(c not in "01234567" for c in digits) or int(digits, 8) > 255:
                raise ValueError("invalid syntax")
            out.append(bytes([int(digits, 8)]).decode("utf-8", "surrogateescape"))
            i += 3
        else:
            raise ValueError("invalid syntax")
    return "".join(out)


def _parse_number(pos: int, text: str, typ: str) -> NumberNode:
    if typ == CHAR_CONST:
        rune = go_unquote(text)
        if not rune:
            raise ValueError("invalid syntax")
        if len(rune) > 1:
            raise ValueError(f"malformed character constant: {text}")
        return NumberNode(pos, text, ord(rune), None, is_char=True)
    if text.endswith("i"):
        raise ValueError(f"complex numbers are not supported: {text}")
    int_value: int | None = None
    float_value: float | None = None
    body = text.lstrip("+-")
    sign = -1 if text.startswith("-") else 1
    clean = body.replace("_", "")
    try:
        lower = clean.lower()
        if lower.startswith("0x") and "p" not in lower and "." not in lower:
            int_value = sign * int(clean[2:], 16)
        elif lower.startswith("0b"):
            int_value = sign * int(clean[2:], 2)
        elif lower.startswith("0o"):
            int_value = sign * int(clean[2:], 8)
        elif len(clean) > 1 and clean.startswith("0") and clean.isdigit():
            int_value = sign * int(clean, 8)
        elif clean.isdigit():
            int_value = sign * int(clean)
    except ValueError:
        int_value = None
    if int_value is not None:
        float_value = float(int_value)
        if not -(2**63) <= int_value < 2**63:  # Go's int64: an integer no longer
            int_value = None
    else:
        try:
            if clean.lower().startswith("0x"):
                float_value = sign * float.fromhex(clean)
            else:
                float_value = sign * float(clean)
        except ValueError:
            raise ValueError(f"illegal number syntax: {go_quote(text)}") from None
        if float_value.is_integer() and abs(float_value) < 2**63:
            int_value = int(float_value)
    return NumberNode(pos, text, int_value, float_value)


class _Parser:
    def __init__(self, text: str, name: str, funcs: Mapping[str, Any]) -> None:
        self.items = _Lexer(text).run()
        self.i = 0
        self.name = name
        self.funcs = funcs
        self.vars = ["$"]
        self.range_depth = 0
        self.action_line = 0
        self.trees: dict[str, ListNode] = {}

    # token access
    def next(self) -> Item:
        item = self.peek()
        self.i += 1
        return item

    def backup(self, n: int = 1) -> None:
        self.i -= n

    def peek(self) -> Item:
        """The next token; past the end, the last one (EOF or the lexer's error)."""
        return self.items[min(self.i, len(self.items) - 1)]

    def next_non_space(self) -> Item:
        item = self.next()
        while item.typ == SPACE:
            item = self.next()
        return item

    def peek_non_space(self) -> Item:
        item = self.next_non_space()
        self.backup()
        return item

    def error(self, msg: str, item: Item | None = None) -> NoReturn:
        line = (item or self.items[min(max(self.i - 1, 0), len(self.items) - 1)]).line
        raise _ParseError(f"template: {self.name}:{line}: {msg}")

    def expect(self, typ: str, context: str) -> Item:
        token = self.next_non_space()
        if token.typ != typ:
            self.unexpected(token, context)
        return token

    def unexpected(self, token: Item, context: str) -> NoReturn:
        if token.typ == ERROR:
            extra = ""
            if self.action_line and self.action_line != token.line:
                extra = f" in action started at {self.name}:{self.action_line}"
                if token.val.endswith(" action"):
                    extra = extra[len(" in action") :]
            self.error(f"{token}{extra}", token)
        self.error(f"unexpected {token} in {context}", token)

    # grammar
    def parse(self) -> ListNode:
        root = ListNode(self.peek().pos)
        while self.peek().typ != EOF:
            if self.peek().typ == LEFT:
                start = self.i
                self.next()
                if self.next_non_space().typ == "define":
                    self.parse_definition()
                    continue
                self.i = start
            node = self.text_or_action()
            if isinstance(node, (_End, _Else)):
                self.error(f"unexpected {node}")
            root.nodes.append(node)
        self.trees.setdefault(self.name, root)
        return root

    def parse_definition(self) -> None:
        context = "define clause"
        token = self.next_non_space()
        if token.typ not in (STRING, RAW_STRING):
            self.unexpected(token, context)
        name = self.unquote(token)
        self.expect(RIGHT, context)
        saved_vars, self.vars = self.vars, ["$"]
        body, end = self.item_list()
        self.vars = saved_vars
        if not isinstance(end, _End):
            self.error(f"unexpected {end} in {context}")
        self.trees[name] = body

    def unquote(self, token: Item) -> str:
        try:
            return go_unquote(token.val)
        except ValueError as e:
            self.error(str(e), token)

    def item_list(self) -> tuple[ListNode, Node]:
        body = ListNode(self.peek_non_space().pos)
        while self.peek_non_space().typ != EOF:
            node = self.text_or_action()
            if isinstance(node, (_End, _Else)):
                return body, node
            body.nodes.append(node)
        self.error("unexpected EOF")

    def text_or_action(self) -> Node:
        token = self.next_non_space()
        if token.typ == TEXT:
            return TextNode(token.pos, token.val)
        if token.typ == LEFT:
            self.action_line = token.line
            try:
                return self.action()
            finally:
                self.action_line = 0
        self.unexpected(token, "input")

    def action(self) -> Node:
        token = self.next_non_space()
        kind = token.typ
        if kind == "block":
            return self.block_control()
        if kind in ("break", "continue"):
            nxt = self.next_non_space()
            if nxt.typ != RIGHT:
                self.unexpected(nxt, "{{" + kind + "}}")
            if self.range_depth == 0:
                self.error("{{" + kind + "}} outside {{range}}")
            return BreakNode(token.pos) if kind == "break" else ContinueNode(token.pos)
        if kind == "else":
            peek = self.peek_non_space()
            if peek.typ in ("if", "with"):
                return _Else(peek.pos)
            return _Else(self.expect(RIGHT, "else").pos)
        if kind == "end":
            return _End(self.expect(RIGHT, "end").pos)
        if kind in ("if", "range", "with"):
            return self.control(kind)
        if kind == "template":
            return self.template_control()
        self.backup()
        token = self.peek()
        return ActionNode(token.pos, self.pipeline("command", RIGHT))

    def control(self, context: str) -> Node:
        mark = len(self.vars)
        try:
            pipe = self.pipeline(context, RIGHT)
            if context == "range":
                self.range_depth += 1
            body, nxt = self.item_list()
            if context == "range":
                self.range_depth -= 1
            else_list = None
            if isinstance(nxt, _Else):
                if context in ("if", "with") and self.peek().typ == context:
                    self.next()
                    else_list = ListNode(nxt.pos)
                    else_list.nodes.append(self.control(context))
                else:
                    else_list, nxt = self.item_list()
                    if not isinstance(nxt, _End):
                        self.error(f"expected end; found {nxt}")
        finally:
            del self.vars[mark:]
        cls = {"if": IfNode, "range": RangeNode, "with": WithNode}[context]
        return cls(pipe.pos, pipe.line, pipe, body, else_list)

    def template_name(self, token: Item, context: str) -> str:
        if token.typ not in (STRING, RAW_STRING):
            self.unexpected(token, context)
        return self.unquote(token)

    def template_control(self) -> Node:
        context = "template clause"
        token = self.next_non_space()
        name = self.template_name(token, context)
        pipe = None
        if self.next_non_space().typ != RIGHT:
            self.backup()
            pipe = self.pipeline(context, RIGHT)
        return TemplateNode(token.pos, name, pipe)

    def block_control(self) -> Node:
        context = "block clause"
        token = self.next_non_space()
        name = self.template_name(token, context)
        pipe = self.pipeline(context, RIGHT)
        saved_vars, self.vars = self.vars, ["$"]
        body, end = self.item_list()
        self.vars = saved_vars
        if not isinstance(end, _End):
            self.error(f"unexpected {end} in {context}")
        self.trees[name] = body
        return TemplateNode(token.pos, name, pipe)

    def pipeline(self, context: str, end: str) -> PipeNode:
        token = self.peek_non_space()
        pipe = PipeNode(token.pos, token.line)
        while True:  # declarations: "$x :=", "$i, $v :="
            v = self.peek_non_space()
            if v.typ != VARIABLE:
                break
            start = self.i
            self.next_non_space()
            after_variable = self.peek()
            nxt = self.peek_non_space()
            if nxt.typ in (ASSIGN, DECLARE):
                pipe.is_assign = nxt.typ == ASSIGN
                self.next_non_space()
                pipe.decl.append(VariableNode(v.pos, v.val))
                self.vars.append(v.val)
            elif nxt.typ == CHAR and nxt.val == ",":
                self.next_non_space()
                pipe.decl.append(VariableNode(v.pos, v.val))
                self.vars.append(v.val)
                if context == "range" and len(pipe.decl) < 2:
                    if self.peek_non_space().typ in (VARIABLE, RIGHT, RPAREN):
                        continue
                    self.error("range can only initialize variables")
                self.error(f"too many declarations in {context}")
            elif after_variable.typ == SPACE:
                self.i = start
            else:
                self.i = start
            break
        while True:
            token = self.next_non_space()
            if token.typ == end:
                self.check_pipeline(pipe, context)
                return pipe
            if token.typ in (BOOL, CHAR_CONST, DOT_ITEM, FIELD, IDENT, NUMBER, "nil",
                             RAW_STRING, STRING, VARIABLE, LPAREN):  # fmt: skip
                self.backup()
                pipe.cmds.append(self.command())
            else:
                self.unexpected(token, context)

    def check_pipeline(self, pipe: PipeNode, context: str) -> None:
        if not pipe.cmds:
            self.error(f"missing value for {context}")
        for i, cmd in enumerate(pipe.cmds[1:]):
            if isinstance(cmd.args[0], (BoolNode, DotNode, NilNode, NumberNode, StringNode)):
                self.error(f"non executable command in pipeline stage {i + 2}")

    def command(self) -> CommandNode:
        cmd = CommandNode(self.peek_non_space().pos)
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                cmd.args.append(operand)
            token = self.next()
            if token.typ == SPACE:
                continue
            if token.typ in (RIGHT, RPAREN):
                self.backup()
            elif token.typ != PIPE:
                self.unexpected(token, "operand")
            break
        if not cmd.args:
            self.error("empty command")
        return cmd

    def operand(self) -> Node | None:
        node = self.term()
        if node is None:
            return None
        if self.peek().typ == FIELD:
            chain = ChainNode(self.peek().pos, node)
            while self.peek().typ == FIELD:
                chain.fields.append(self.next().val[1:])
            if isinstance(node, FieldNode):
                return FieldNode(chain.pos, str(node) + "".join("." + f for f in chain.fields))
            if isinstance(node, VariableNode):
                return VariableNode(chain.pos, ".".join([*node.idents, *chain.fields]))
            if isinstance(node, (BoolNode, StringNode, NumberNode, NilNode, DotNode)):
                self.error(f"unexpected . after term {go_quote(str(node))}")
            return chain
        return node

    def term(self) -> Node | None:
        token = self.next_non_space()
        typ = token.typ
        if typ == IDENT:
            if token.val not in self.funcs:
                self.error(f"function {go_quote(token.val)} not defined", token)
            return IdentifierNode(token.pos, token.val)
        if typ == DOT_ITEM:
            return DotNode(token.pos)
        if typ == "nil":
            return NilNode(token.pos)
        if typ == VARIABLE:
            node = VariableNode(token.pos, token.val)
            if node.idents[0] not in self.vars:
                self.error(f"undefined variable {go_quote(node.idents[0])}", token)
            return node
        if typ == FIELD:
            return FieldNode(token.pos, token.val)
        if typ == BOOL:
            return BoolNode(token.pos, token.val == "true")
        if typ in (CHAR_CONST, NUMBER):
            try:
                return _parse_number(token.pos, token.val, typ)
            except ValueError as e:
                self.error(str(e), token)
        if typ == LPAREN:
            return self.pipeline("parenthesized pipeline", RPAREN)
        if typ in (STRING, RAW_STRING):
            return StringNode(token.pos, token.val, self.unquote(token))
        self.backup()
        return None


# -- functions -------------------------------------------------------------------------------


class _CallError(Exception):
    """A function failed: Go's ``error calling NAME: ...``."""


class Func:
    """A template function: its parameter kinds ("any" for interface{}, "value" for
    reflect.Value, "string", "int", "bool", "[]string") and the last one's variadic."""

    __slots__ = ("fn", "params", "variadic")

    def __init__(self, fn: Callable[..., Any], *params: str, variadic: bool = False) -> None:
        self.fn = fn
        self.params = params
        self.variadic = variadic


def _truth(v: Any) -> bool:
    if is_nil(v):
        return False
    if isinstance(v, (bool, int, float, str, list, tuple, Mapping)):
        return bool(v)
    return True


_INVALID, _BOOL, _INT, _FLOAT, _STRING, _OTHER = range(6)


def _kind(v: Any) -> int:
    if is_nil(v):
        return _INVALID
    if isinstance(v, bool):
        return _BOOL
    if isinstance(v, int):
        return _INT
    if isinstance(v, float):
        return _FLOAT
    if isinstance(v, str):
        return _STRING
    return _OTHER


def _eq(a: Any, *others: Any) -> bool:
    if not others:
        raise _CallError("missing argument for comparison")
    ka = _kind(a)
    for b in others:
        kb = _kind(b)
        if ka != kb:
            if ka != _INVALID and kb != _INVALID:
                raise _CallError("incompatible types for comparison")
            continue
        if ka == _OTHER:
            if isinstance(a, (list, tuple, Mapping)) or isinstance(b, (list, tuple, Mapping)):
                raise _CallError(f"non-comparable type {format_value(a)}: {type_name(a)}")
            if a is b:
                return True
            continue
        if ka == _INVALID or a == b:
            return True
    return False


def _ne(a: Any, b: Any) -> bool:
    return not _eq(a, b)


def _lt(a: Any, b: Any) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka in (_INVALID, _OTHER) or kb in (_INVALID, _OTHER):
        raise _CallError("invalid type for comparison")
    if ka != kb:
        raise _CallError("incompatible types for comparison")
    if ka == _BOOL:
        raise _CallError("invalid type for comparison")
    if ka == _STRING:  # Go compares the bytes
        return bool(a.encode("utf-8", "surrogateescape") < b.encode("utf-8", "surrogateescape"))
    return bool(a < b)


def _le(a: Any, b: Any) -> bool:
    return _lt(a, b) or _eq(a, b)


def _gt(a: Any, b: Any) -> bool:
    return not _le(a, b)


def _ge(a: Any, b: Any) -> bool:
    return not _lt(a, b)


def _len(v: Any) -> int:
    if v is None:
        raise _CallError("len of nil pointer")
    if v is MISSING:
        raise _CallError("reflect: call of reflect.Value.Type on zero Value")
    if isinstance(v, str):
        return len(v.encode("utf-8", "surrogateescape"))
    if isinstance(v, (list, tuple, Mapping)):
        return len(v)
    raise _CallError(f"len of type {type_name(v)}")


def _index_arg(index: Any, cap: int) -> int:
    if is_nil(index):
        raise _CallError("cannot index slice/array with nil")
    if not isinstance(index, int) or isinstance(index, bool):
        raise _CallError(f"cannot index slice/array with type {type_name(index)}")
    if index < 0 or index > cap:
        raise _CallError(f"index out of range: {index}")
    return index


def _index(item: Any, *indexes: Any) -> Any:
    if is_nil(item):
        raise _CallError("index of untyped nil")
    for index in indexes:
        if item is None:
            raise _CallError("index of nil pointer")
        if isinstance(item, (str, list, tuple)):
            seq: Any = item.encode("utf-8", "surrogateescape") if isinstance(item, str) else item
            x = _index_arg(index, len(seq))
            if x == len(seq):
                raise _CallError("reflect: slice index out of range")
            item = seq[x]
        elif isinstance(item, Mapping) and not getattr(type(item), "go_struct", False):
            if is_nil(index):
                raise _CallError("value is nil; should be of type string")
            if not isinstance(index, str):
                raise _CallError(f"value has type {type_name(index)}; should be string")
            item = item[index] if index in item else getattr(type(item), "go_zero", MISSING)
        else:
            raise _CallError(f"can't index item of type {type_name(item).lstrip('*')}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    if is_nil(item):
        raise _CallError("slice of untyped nil")
    if len(indexes) > 3:
        raise _CallError(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise _CallError("cannot 3-index slice a string")
        data = item.encode("utf-8", "surrogateescape")
    elif isinstance(item, (list, tuple)):
        data = item  # type: ignore[assignment]
    else:
        raise _CallError(f"can't slice item of type {type_name(item)}")
    idx = [0, len(data), len(data)]
    for i, index in enumerate(indexes):
        idx[i] = _index_arg(index, len(data))
    if idx[0] > idx[1]:
        raise _CallError(f"invalid slice index: {idx[0]} > {idx[1]}")
    if len(indexes) == 3 and idx[1] > idx[2]:
        raise _CallError(f"invalid slice index: {idx[1]} > {idx[2]}")
    part = data[idx[0] : idx[1]]
    if isinstance(part, bytes):
        return part.decode("utf-8", "surrogateescape")
    return type(item)(part) if isinstance(item, GoStrings) else list(part)


def _html(*args: Any) -> str:
    s = _eval_args_text(args)
    out = []
    for ch in s:
        out.append({"\0": "\ufffd", '"': "&#34;", "'": "&#39;", "&": "&amp;", "<": "&lt;",
                    ">": "&gt;"}.get(ch, ch))  # fmt: skip
    return "".join(out)


def _js(*args: Any) -> str:
    s = _eval_args_text(args)
    out = []
    for ch in s:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch in "'\"":
            out.append("\\" + ch)
        elif ch in "<>&=" or o < 0x20:
            out.append(f"\\u{o:04X}")
        else:
            out.append(ch)
    return "".join(out)


def _urlquery(*args: Any) -> str:
    from urllib.parse import quote_plus

    return quote_plus(_eval_args_text(args), safe="")


def _eval_args_text(args: Sequence[Any]) -> str:
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return sprint(["<no value>" if is_nil(a) else a for a in args])


def _not(v: Any) -> bool:
    return not _truth(v)


def _call(name: str, fn: Any, *args: Any) -> Any:
    if is_nil(fn):
        raise _CallError("call of nil")
    if not callable(fn):
        raise _CallError(f"non-function {name} of type {type_name(fn)}")
    return fn(*args)


def _json_func(v: Any) -> str:
    try:
        return go_json(v)
    except (ValueError, TypeError):
        return ""  # Docker's json drops the encoder's error and prints nothing


def _is_separator(ch: str) -> bool:
    if ord(ch) < 0x80:
        return not (ch.isascii() and (ch.isalnum() or ch == "_"))
    if ch.isalpha() or ch.isdigit():
        return False
    return ch.isspace()


def _title(s: str) -> str:
    """strings.Title: each letter after a separator in title case, the rest kept."""
    out = []
    prev = " "
    for ch in s:
        out.append(_map_rune(ch, str.title) if _is_separator(prev) else ch)
        prev = ch
    return "".join(out)


def _map_rune(ch: str, case: Callable[[str], str]) -> str:
    """Go maps one rune to one rune: where Python's mapping gives more, a letter with
    a combining mark ("İ" -> "i̇") keeps the letter, anything else ("ß" -> "SS")
    stays as it was."""
    mapped = case(ch)
    if len(mapped) == 1:
        return mapped
    if len(mapped) == 2 and unicodedata.combining(mapped[1]):
        return mapped[0]
    return ch


def _upper(s: str) -> str:
    return "".join(_map_rune(ch, str.upper) for ch in s)


def _lower(s: str) -> str:
    return "".join(_map_rune(ch, str.lower) for ch in s)


def _pad_func(s: str, prefix: int, suffix: int) -> str:
    if not s:
        return s
    if prefix < 0 or suffix < 0:
        raise _CallError("strings: negative Repeat count")
    return " " * prefix + s + " " * suffix


def _truncate(s: str, length: int) -> str:
    data = s.encode("utf-8", "surrogateescape")
    if len(data) < length:
        return s
    if length < 0:
        raise _CallError(f"runtime error: slice bounds out of range [:{length}]")
    return data[:length].decode("utf-8", "surrogateescape")


def _split(s: str, sep: str) -> list[str]:
    if sep == "":
        return GoStrings(list(s))
    return GoStrings(s.split(sep))


BUILTINS: dict[str, Func] = {
    "and": Func(lambda *a: None, "value", "value", variadic=True),
    "or": Func(lambda *a: None, "value", "value", variadic=True),
    "not": Func(_not, "value"),
    "len": Func(_len, "value"),
    "index": Func(_index, "value", "value", variadic=True),
    "slice": Func(_slice, "value", "value", variadic=True),
    "print": Func(lambda *a: sprint(a), "any", variadic=True),
    "printf": Func(lambda f, *a: sprintf(f, a), "string", "any", variadic=True),
    "println": Func(lambda *a: sprintln(a), "any", variadic=True),
    "html": Func(_html, "any", variadic=True),
    "js": Func(_js, "any", variadic=True),
    "urlquery": Func(_urlquery, "any", variadic=True),
    "call": Func(_call, "value", "value", variadic=True),
    "eq": Func(_eq, "value", "value", variadic=True),
    "ne": Func(_ne, "value", "value"),
    "lt": Func(_lt, "value", "value"),
    "le": Func(_le, "value", "value"),
    "gt": Func(_gt, "value", "value"),
    "ge": Func(_ge, "value", "value"),
}

# Docker's templates package: the functions every --format gets.
DOCKER_FUNCS: dict[str, Func] = {
    "json": Func(_json_func, "any"),
    "split": Func(_split, "string", "string"),
    "join": Func(lambda items, sep: sep.join(items), "[]string", "string"),
    "title": Func(_title, "string"),
    "lower": Func(_lower, "string"),
    "upper": Func(_upper, "string"),
    "pad": Func(_pad_func, "string", "int", "int"),
    "truncate": Func(_truncate, "string", "int"),
}

# What a table's header row is rendered with: the titles stay as they are.
HEADER_FUNCS: dict[str, Func] = {
    "json": Func(lambda s: s, "string"),
    "split": Func(lambda s, _sep: s, "string", "string"),
    "join": Func(lambda s, _sep: s, "string", "string"),
    "title": Func(lambda s: s, "string"),
    "lower": Func(lambda s: s, "string"),
    "upper": Func(lambda s: s, "string"),
    "truncate": Func(lambda s, _n: s, "string", "int"),
}


# -- executor ------------------------------------------------------------------------------

_NO_FINAL: Any = object()  # no value piped in from the previous command
_MAX_DEPTH = 100


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _ExecError(Exception):
    pass


def _is_method_owner(v: Any) -> bool:
    return not isinstance(v, (str, int, float, bool, list, tuple)) and not is_nil(v)


def _method_func(method: Callable[..., Any]) -> Func:
    """A method of the data as a template function taking as many arguments."""
    code = getattr(getattr(method, "__func__", method), "__code__", None)
    if code is None or code.co_flags & 0x04:  # *args
        return Func(method, "any", variadic=True)
    count = code.co_argcount - (1 if hasattr(method, "__self__") else 0)
    return Func(method, *(["any"] * count))


class _State:
    def __init__(self, tmpl: Template, funcs: Mapping[str, Func], missing_key: str) -> None:
        self.tmpl = tmpl
        self.funcs = funcs
        self.missing_key = missing_key
        self.node: Node | None = None
        self.vars: list[tuple[str, Any]] = []
        self.out: list[str] = []
        self.depth = 0
        self.name = tmpl.name  # of the template being executed: a {{define}}'s inside it

    # errors
    def at(self, node: Node) -> None:
        self.node = node

    def error(self, msg: str) -> NoReturn:
        name = self.name
        if self.node is None:
            raise _ExecError(f"template: {name}: {msg}")
        text = self.tmpl.text[: self.node.pos]
        line = 1 + text.count("\n")
        nl = text.rfind("\n")
        col = self.node.pos if nl < 0 else self.node.pos - nl - 1
        context = str(self.node)
        raise _ExecError(
            f"template: {self.tmpl.name}:{line}:{col}: executing {go_quote(name)} at "
            f"<{context}>: {msg}"
        )

    # variables
    def mark(self) -> int:
        return len(self.vars)

    def pop(self, mark: int) -> None:
        del self.vars[mark:]

    def set_var(self, name: str, value: Any) -> None:
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                self.vars[i] = (name, value)
                return
        self.error(f"undefined variable: {name}")

    def set_top_var(self, n: int, value: Any) -> None:
        name = self.vars[-n][0]
        self.vars[-n] = (name, value)

    def var_value(self, name: str) -> Any:
        for var, value in reversed(self.vars):
            if var == name:
                return value
        self.error(f"undefined variable: {name}")

    # walking
    def walk(self, dot: Any, node: Node) -> None:
        self.at(node)
        if isinstance(node, ActionNode):
            value = self.eval_pipeline(dot, node.pipe)
            if not node.pipe.decl:
                self.print_value(node, value)
        elif isinstance(node, ListNode):
            for n in node.nodes:
                self.walk(dot, n)
        elif isinstance(node, TextNode):
            self.out.append(node.text)
        elif isinstance(node, IfNode):
            self.walk_if_or_with(False, dot, node)
        elif isinstance(node, WithNode):
            self.walk_if_or_with(True, dot, node)
        elif isinstance(node, RangeNode):
            self.walk_range(dot, node)
        elif isinstance(node, BreakNode):
            raise _Break
        elif isinstance(node, ContinueNode):
            raise _Continue
        elif isinstance(node, TemplateNode):
            self.walk_template(dot, node)
        else:
            self.error(f"unknown node: {node}")

    def walk_if_or_with(self, is_with: bool, dot: Any, node: _Control) -> None:
        mark = self.mark()
        try:
            value = self.eval_pipeline(dot, node.pipe)
            if _truth(value):
                self.walk(value if is_with else dot, node.list)
            elif node.else_list is not None:
                self.walk(dot, node.else_list)
        finally:
            self.pop(mark)

    def walk_range(self, dot: Any, node: RangeNode) -> None:
        self.at(node)
        outer = self.mark()
        try:
            value = self.eval_pipeline(dot, node.pipe)
            mark = self.mark()
            decl = node.pipe.decl

            def one(index: Any, elem: Any) -> None:
                if decl:
                    if node.pipe.is_assign:
                        self.set_var(decl[0].idents[0], index if len(decl) > 1 else elem)
                    else:
                        self.set_top_var(1, elem)
                if len(decl) > 1:
                    if node.pipe.is_assign:
                        self.set_var(decl[1].idents[0], elem)
                    else:
                        self.set_top_var(2, index)
                try:
                    self.walk(elem, node.list)
                except _Continue:
                    pass
                finally:
                    self.pop(mark)

            ran = False
            try:
                for index, elem in self.range_items(value, len(decl)):
                    ran = True
                    one(index, elem)
            except _Break:
                return
            if ran:
                return
            if node.else_list is not None:
                self.walk(dot, node.else_list)
        finally:
            self.pop(outer)

    def range_items(self, value: Any, nvars: int) -> Iterator[tuple[Any, Any]]:
        if is_nil(value):
            return iter(())
        if isinstance(value, (list, tuple)):
            return iter(list(enumerate(value)))
        if isinstance(value, Mapping) and not getattr(type(value), "go_struct", False):
            keys = sorted(value, key=lambda k: (not isinstance(k, (int, float)), str(k)))
            return iter([(k, value[k]) for k in keys])
        if isinstance(value, int) and not isinstance(value, bool):
            if nvars > 1:
                self.error(
                    f"can't use {format_value(value)} to iterate over more than one variable"
                )
            return ((MISSING, i) for i in range(value))
        self.error(f"range can't iterate over {format_value(value)}")

    def walk_template(self, dot: Any, node: TemplateNode) -> None:
        self.at(node)
        body = self.tmpl.trees.get(node.name)
        if body is None:
            self.error(f"template {go_quote(node.name)} not defined")
        if self.depth >= _MAX_DEPTH:
            self.error(f"exceeded maximum template depth ({_MAX_DEPTH})")
        new_dot = self.eval_pipeline(dot, node.pipe) if node.pipe is not None else MISSING
        saved = self.vars, self.name
        self.vars, self.name = [("$", new_dot)], node.name
        self.depth += 1
        try:
            self.walk(new_dot, body)
        finally:
            self.depth -= 1
            self.vars, self.name = saved

    # evaluation
    def eval_pipeline(self, dot: Any, pipe: PipeNode) -> Any:
        self.at(pipe)
        value = _NO_FINAL
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
            if value is None:  # an interface{} holding nil: Go digs down to no value
                value = MISSING
        for var in pipe.decl:
            if pipe.is_assign:
                self.set_var(var.idents[0], value)
            else:
                self.vars.append((var.idents[0], value))
        return value

    def not_a_function(self, args: list[Node], final: Any) -> None:
        if len(args) > 1 or final is not _NO_FINAL:
            self.error(f"can't give argument to non-function {args[0]}")

    def eval_command(self, dot: Any, cmd: CommandNode, final: Any) -> Any:
        first = cmd.args[0]
        if isinstance(first, FieldNode):
            self.at(first)
            return self.eval_field_chain(dot, dot, first, first.idents, cmd.args, final)
        if isinstance(first, ChainNode):
            return self.eval_chain(dot, first, cmd.args, final)
        if isinstance(first, IdentifierNode):
            return self.eval_function(dot, first, cmd, cmd.args, final)
        if isinstance(first, PipeNode):
            self.not_a_function(cmd.args, final)
            return self.eval_pipeline(dot, first)
        if isinstance(first, VariableNode):
            return self.eval_variable(dot, first, cmd.args, final)
        self.at(first)
        self.not_a_function(cmd.args, final)
        if isinstance(first, BoolNode):
            return first.value
        if isinstance(first, DotNode):
            return dot
        if isinstance(first, NilNode):
            self.error("nil is not a command")
        if isinstance(first, NumberNode):
            return self.ideal(first)
        if isinstance(first, StringNode):
            return first.text
        self.error(f"can't evaluate command {go_quote(str(first))}")

    def eval_chain(self, dot: Any, chain: ChainNode, args: list[Node], final: Any) -> Any:
        self.at(chain)
        if isinstance(chain.node, NilNode):
            self.error(f"indirection through explicit nil in {chain}")
        value = self.eval_arg(dot, "any", chain.node)
        return self.eval_field_chain(dot, value, chain, chain.fields, args, final)

    def eval_variable(self, dot: Any, var: VariableNode, args: list[Node], final: Any) -> Any:
        self.at(var)
        value = self.var_value(var.idents[0])
        if len(var.idents) == 1:
            self.not_a_function(args, final)
            return value
        return self.eval_field_chain(dot, value, var, var.idents[1:], args, final)

    def eval_field_chain(self, dot: Any, receiver: Any, node: Node, idents: list[str],
                         args: list[Node], final: Any) -> Any:  # fmt: skip
        for ident in idents[:-1]:
            receiver = self.eval_field(dot, ident, node, [], _NO_FINAL, receiver)
        return self.eval_field(dot, idents[-1], node, args, final, receiver)

    def eval_field(self, dot: Any, name: str, node: Node, args: list[Node], final: Any,
                   receiver: Any) -> Any:  # fmt: skip
        if receiver is MISSING:
            if self.missing_key == "error":
                self.error(f"nil data; no entry for key {go_quote(name)}")
            return MISSING
        if receiver is None:
            self.error(f"nil pointer evaluating interface {{}}.{name}")
        method = self.method_of(receiver, name)
        if method is not None:
            return self.eval_call(dot, _method_func(method), False, node, name, args, final)
        has_args = len(args) > 1 or final is not _NO_FINAL
        if isinstance(receiver, Mapping):
            if getattr(type(receiver), "go_struct", False):
                if name in receiver and name[:1].isupper():
                    if has_args:  # a row's fields are methods without arguments in Docker
                        given = len(args) - 1 + (final is not _NO_FINAL)
                        self.error(f"wrong number of args for {name}: want 0 got {given}")
                    return receiver[name]
            else:
                if has_args:
                    self.error(f"{name} is not a method but has arguments")
                if name in receiver:
                    return receiver[name]
                if self.missing_key == "error" and not hasattr(type(receiver), "go_zero"):
                    self.error(f"map has no entry for key {go_quote(name)}")
                return MISSING
        elif _is_method_owner(receiver) and name[:1].isupper() and hasattr(receiver, name):
            if has_args:
                self.error(f"{name} has arguments but cannot be invoked as function")
            return getattr(receiver, name)
        self.error(f"can't evaluate field {name} in type {type_name(receiver)}")

    @staticmethod
    def method_of(receiver: Any, name: str) -> Callable[..., Any] | None:
        if not name[:1].isupper() or not _is_method_owner(receiver):
            return None
        cls = type(receiver)
        attr = getattr(cls, name, None)
        if attr is None or not callable(attr) or isinstance(attr, type):
            return None
        if isinstance(receiver, Mapping) and hasattr(dict, name):
            return None
        bound = getattr(receiver, name)
        return bound if callable(bound) else None

    def eval_function(self, dot: Any, node: IdentifierNode, cmd: Node, args: list[Node],
                      final: Any) -> Any:  # fmt: skip
        self.at(node)
        func = self.funcs.get(node.name)
        if func is None:
            self.error(f"{go_quote(node.name)} is not a defined function")
        return self.eval_call(dot, func, node.name in BUILTINS, cmd, node.name, args, final)

    def eval_call(self, dot: Any, func: Func, is_builtin: bool, node: Node, name: str,
                  args: list[Node], final: Any) -> Any:  # fmt: skip
        args = args[1:] if args else []
        num_in = len(args) + (final is not _NO_FINAL)
        params = func.params
        num_fixed = len(params) - 1 if func.variadic else len(params)
        if func.variadic:
            if num_in < num_fixed:
                self.error(f"wrong number of args for {name}: want at least {num_fixed} "
                           f"got {len(args)}")  # fmt: skip
        elif num_in != len(params):
            self.error(f"wrong number of args for {name}: want {len(params)} got {num_in}")

        def param(i: int) -> str:
            return params[min(i, len(params) - 1)] if params else "any"

        if is_builtin and name in ("and", "or"):
            value: Any = MISSING
            for arg in args:
                value = self.eval_arg(dot, "value", arg)
                if _truth(value) == (name == "or"):
                    return value
            if final is not _NO_FINAL:
                value = final
            return value
        argv = [self.eval_arg(dot, param(i), a) for i, a in enumerate(args)]
        if final is not _NO_FINAL:
            argv.append(self.validate(final, param(len(args))))
        if is_builtin and name == "call":  # it names the callee in its errors
            argv.insert(0, str(args[0]) if args else "")
        try:
            return func.fn(*argv)
        except _CallError as e:
            self.at(node)
            self.error(f"error calling {name}: {e}")
        except (_ExecError, _Break, _Continue):
            raise
        except Exception as e:  # a method of the data failed
            self.at(node)
            self.error(f"error calling {name}: {e}")

    def eval_arg(self, dot: Any, kind: str, n: Node) -> Any:
        self.at(n)
        if isinstance(n, DotNode):
            return self.validate(dot, kind)
        if isinstance(n, NilNode):
            if kind in ("any", "value", "[]string"):
                return MISSING if kind == "value" else None
            self.error(f"cannot assign nil to {kind}")
        if isinstance(n, FieldNode):
            return self.validate(self.eval_field_chain(dot, dot, n, n.idents, [n], _NO_FINAL),
                                 kind)  # fmt: skip
        if isinstance(n, VariableNode):
            return self.validate(self.eval_variable(dot, n, [], _NO_FINAL), kind)
        if isinstance(n, PipeNode):
            return self.validate(self.eval_pipeline(dot, n), kind)
        if isinstance(n, IdentifierNode):
            return self.validate(self.eval_function(dot, n, n, [], _NO_FINAL), kind)
        if isinstance(n, ChainNode):
            return self.validate(self.eval_chain(dot, n, [], _NO_FINAL), kind)
        if kind == "bool":
            if isinstance(n, BoolNode):
                return n.value
            self.error(f"expected bool; found {n}")
        if kind == "string":
            if isinstance(n, StringNode):
                return n.text
            self.error(f"expected string; found {n}")
        if kind == "int":
            if isinstance(n, NumberNode) and n.int_value is not None:
                return n.int_value
            self.error(f"expected integer; found {n}")
        if kind in ("any", "value"):
            if isinstance(n, BoolNode):
                return n.value
            if isinstance(n, NumberNode):
                return self.ideal(n)
            if isinstance(n, StringNode):
                return n.text
        self.error(f"can't handle {n} for arg of type {kind}")

    def ideal(self, n: NumberNode) -> int | float:
        self.at(n)
        value = n.ideal()
        if value is None:
            self.error(f"{n.text} overflows int")
        return value

    def validate(self, value: Any, kind: str) -> Any:
        if kind == "value":
            return value
        if value is MISSING:
            if kind in ("any", "[]string"):
                return None
            self.error(f"invalid value; expected {kind}")
        if kind == "any":
            return value
        ok = {
            "string": isinstance(value, str),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "[]string": value is None
            or (isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value)),
        }[kind]
        if not ok:
            got = "interface {}" if value is None else type_name(value)
            self.error(f"wrong type for value; expected {kind}; got {got}")
        return [] if value is None else value

    def print_value(self, node: Node, value: Any) -> None:
        self.at(node)
        if callable(value) and not isinstance(value, type):
            self.error(f"can't print {node} of type {type_name(value)}")
        self.out.append(format_value(value))


class Template:
    """A parsed template. ``funcs`` defaults to Docker's (Go's builtins and Docker's
    templates package); a name of its own shows in errors as Docker's ``version``."""

    def __init__(self, text: str, name: str = "",
                 funcs: Mapping[str, Func] | None = None) -> None:  # fmt: skip
        self.text = text
        self.name = name
        self.funcs = {**BUILTINS, **(DOCKER_FUNCS if funcs is None else funcs)}
        parser = _Parser(text, name, self.funcs)
        try:
            self.root = parser.parse()
        except _ParseError as e:
            raise TemplateError(str(e)) from None
        except RecursionError:  # hostile input: Python's stack is shallower than Go's
            raise TemplateError(f"template: {name}: nested too deeply") from None
        self.trees = parser.trees

    def execute(self, data: Any, *, missing_key: str = "default",
                funcs: Mapping[str, Func] | None = None) -> str:  # fmt: skip
        """The text for ``data``; ``missing_key="error"`` makes a missing map key an
        error (Docker's inspect); ``funcs`` replace functions of the same name."""
        state = _State(self, {**self.funcs, **(funcs or {})}, missing_key)
        state.vars.append(("$", data))
        try:
            state.walk(data, self.root)
        except _ExecError as e:
            raise TemplateError(str(e), "".join(state.out)) from None
        except RecursionError:
            raise TemplateError(f"template: {self.name}: nested too deeply") from None
        return "".join(state.out)


def render(template: str, data: Any, *, missing_key: str = "default") -> str:
    """``template`` applied to ``data`` (Docker's inspect, version and info)."""
    return Template(template).execute(data, missing_key=missing_key)


def listing_template(fmt: str) -> tuple[str, bool]:
    """Docker's Format.templateString: the template text a listing format stands for
    (``json`` is ``{{json .}}``) and whether it is a table."""
    if fmt == "json":
        return "{{json .}}", False
    is_table = fmt.startswith("table")
    text = fmt[len("table") :] if is_table else fmt
    text = text.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
    return text, is_table


def render_listing(fmt: str, rows: Sequence[Any], headers: Mapping[str, str]) -> str:
    """Docker's formatter.Context.Write: each row through the template, then (a
    ``table`` format) a header row from ``headers`` and the tabwriter's alignment."""
    from lamina.cli._output import tabwrite

    text, is_table = listing_template(fmt)
    tmpl = Template(text)
    body = "".join(tmpl.execute(row) + "\n" for row in rows)
    if not is_table:
        return body
    try:
        header = tmpl.execute(HeaderMap(headers), funcs=HEADER_FUNCS)
    except TemplateError as e:  # Docker ignores a header that fails: what it wrote stays
        header = e.partial
    return tabwrite(header + "\n" + body)
