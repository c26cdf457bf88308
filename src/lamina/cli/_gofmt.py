"""Go's fmt and encoding/json as templates print values: ``Sprint``, ``Sprintln``,
``Sprintf`` (verbs, flags, width, precision, ``*`` and ``[n]`` argument indexes, and
Go's in-line errors such as ``%!d(string=x)``), ``go_json`` and Go type names.

Python values stand for Go's: None is nil, str a string, int an int, float a
float64, bool a bool, a list a slice, a dict a map (printed with sorted keys). A
class may say how Go would name it (``go_type``) and whether its JSON keys are sorted
(``go_json_sorted``, as Go sorts map keys); :data:`MISSING` is the invalid value a
missing map key gives (``<no value>``). Imported only when a template is used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lamina.cli._output import go_quote


class _Missing:
    """Go's invalid reflect.Value: what a missing map key or field of nil gives."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


class GoStrings(list[str]):
    """A Go ``[]string`` (what ``split`` returns), as opposed to ``[]interface {}``."""

    go_type = "[]string"


def is_nil(v: Any) -> bool:
    return v is None or v is MISSING


def type_name(v: Any) -> str:
    """What Go's ``%T`` and error messages call the type of ``v``."""
    named = getattr(v, "go_type", None)
    if isinstance(named, str):
        return named
    if getattr(type(v), "go_struct", False):
        return f"*{type(v).__name__}"
    if is_nil(v):
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "[]interface {}"
    if isinstance(v, Mapping):
        return "map[string]interface {}"
    if callable(v):
        return "func"
    return f"*{type(v).__name__}"


def struct_fields(v: Any) -> dict[str, Any]:
    """The exported fields of an object that stands for a Go struct."""
    if isinstance(v, Mapping):
        return dict(v)
    return {k: x for k, x in vars(v).items() if k[:1].isupper()}


# -- printing with verbs ---------------------------------------------------------------


class _Flags:
    __slots__ = ("minus", "plus", "plus_v", "prec", "sharp", "sharp_v", "space", "wid", "zero")

    def __init__(self) -> None:
        self.plus = self.minus = self.sharp = self.space = self.zero = False
        self.plus_v = self.sharp_v = False
        self.wid: int | None = None
        self.prec: int | None = None


def _pad(s: str, f: _Flags) -> str:
    if f.wid is None or f.wid <= len(s):
        return s
    fill = f.wid - len(s)
    if f.minus:
        return s + " " * fill
    return ("0" if f.zero else " ") * fill + s


def _quote(s: str, ascii_only: bool = False) -> str:
    return go_quote(s, ascii_only)


def _can_backquote(s: str) -> bool:
    return all(ch != "`" and ch != "\ufffd" and (ch == "\t" or ord(ch) >= 0x20) and ch != "\x7f"
               for ch in s)  # fmt: skip


def _quote_rune(r: int, ascii_only: bool = False) -> str:
    if not 0 <= r <= 0x10FFFF or 0xD800 <= r <= 0xDFFF:
        r = 0xFFFD
    ch = chr(r)
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    inner = _quote(ch, ascii_only)[1:-1]
    return f"'{inner}'"


def _fmt_integer(v: int, base: int, verb: str, f: _Flags, upper: bool = False) -> str:
    negative = v < 0
    u = -v if negative else v
    prec = 0
    if f.prec is not None:
        prec = f.prec
        if prec == 0 and u == 0:
            return " " * (f.wid or 0)
    elif f.zero and not f.minus and f.wid is not None:
        prec = f.wid
        if negative or f.plus or f.space:
            prec -= 1
    if base == 10:
        digits = str(u)
    elif base == 16:
        digits = format(u, "X" if upper else "x")
    elif base == 8:
        digits = format(u, "o")
    else:
        digits = format(u, "b")
    if len(digits) < prec:
        digits = "0" * (prec - len(digits)) + digits
    if f.sharp:
        if base == 2:
            digits = "0b" + digits
        elif base == 8 and not digits.startswith("0"):
            digits = "0" + digits
        elif base == 16:
            digits = ("0X" if upper else "0x") + digits
    if verb == "O":
        digits = "0o" + digits
    if negative:
        digits = "-" + digits
    elif f.plus:
        digits = "+" + digits
    elif f.space:
        digits = " " + digits
    zero, f.zero = f.zero, False
    try:
        return _pad(digits, f)
    finally:
        f.zero = zero


def _shortest_digits(v: float) -> tuple[str, int]:
    """The shortest decimal digits that round-trip ``v`` (> 0) and the exponent of
    the first one, as Go's strconv finds them."""
    from decimal import Decimal

    _sign, digits, exp = Decimal(repr(v)).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    assert isinstance(exp, int)
    point = len(digits) + exp  # position of the decimal point after the first digit
    return text, point - 1


def _format_exp(exp: int) -> str:
    return f"{'-' if exp < 0 else '+'}{abs(exp):02d}"


def format_float(v: float, verb: str, prec: int | None) -> str:
    """strconv.FormatFloat for the verbs fmt uses; ``prec`` None is the shortest."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if verb in ("e", "E", "f", "F") and prec is not None:
        out = f"{v:.{prec}{'f' if verb in 'fF' else 'e'}}"
        return out.upper() if verb == "E" else out
    if verb in ("g", "G") and prec is not None:
        out = f"{v:.{prec}g}"  # Python's %g takes precision 0 as 1, as Go's does
        return out.upper() if verb == "G" else out
    # The shortest representation.
    neg = v < 0 or (v == 0 and math.copysign(1, v) < 0)
    a = abs(v)
    if a == 0:
        digits, exp = "0", 0
    else:
        digits, exp = _shortest_digits(a)
    sign = "-" if neg else ""
    if verb in ("e", "E"):
        out = _e_form(digits, exp)
        return sign + (out.upper() if verb == "E" else out)
    if verb in ("f", "F"):
        return sign + _f_form(digits, exp)
    # encoding/json: 'f' unless tiny or huge; %v and %g: 'e' from the exponent, with 6
    # as the precision of the shortest.
    json_e = a != 0 and (a < 1e-6 or a >= 1e21)
    use_e = json_e if verb == "json" else exp < -4 or exp >= 6
    if use_e:
        out = _e_form(digits, exp)
        return sign + (out.upper() if verb == "G" else out)
    return sign + _f_form(digits, exp)


def _e_form(digits: str, exp: int) -> str:
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{mantissa}e{_format_exp(exp)}"


def _f_form(digits: str, exp: int) -> str:
    if exp < 0:
        return "0." + "0" * (-exp - 1) + digits
    whole = digits[: exp + 1].ljust(exp + 1, "0")
    frac = digits[exp + 1 :]
    return whole + ("." + frac if frac else "")


def _fmt_float(v: float, verb: str, f: _Flags) -> str:
    if verb == "v":
        num = format_float(v, "g", f.prec)
    elif verb in ("e", "E", "f", "F"):
        num = format_float(v, verb, 6 if f.prec is None else f.prec)
    else:  # g G (and x X b, which lamina prints as %g)
        num = format_float(v, "G" if verb == "G" else "g", f.prec)
    if num[0] not in "+-":
        num = "+" + num
    if f.sharp and num[1] not in "IN":
        num = _sharp_float(num, verb, f.prec)
    if f.space and num[0] == "+" and not f.plus:
        num = " " + num[1:]
    if num[1] in "IN":  # Inf and NaN are not zero padded
        if num[1] == "N" and not f.space and not f.plus:
            num = num[1:]
        zero, f.zero = f.zero, False
        try:
            return _pad(num, f)
        finally:
            f.zero = zero
    if f.plus or num[0] != "+":
        if f.zero and not f.minus and f.wid is not None and f.wid > len(num):
            return num[0] + "0" * (f.wid - len(num)) + num[1:]
        return _pad(num, f)
    return _pad(num[1:], f)


def _sharp_float(num: str, verb: str, prec: int | None) -> str:
    """The ``#`` flag: always a decimal point, and %g keeps its trailing zeros."""
    digits = (6 if prec is None else prec) if verb in ("v", "g", "G") else 0
    body, tail = num, ""
    cut = next((i for i in range(1, len(num)) if num[i] in "eE"), None)
    if cut is not None:
        body, tail = num[:cut], num[cut:]
    seen_nonzero = False
    for ch in body[1:]:
        if ch == ".":
            continue
        seen_nonzero = seen_nonzero or ch != "0"
        if seen_nonzero:
            digits -= 1
    if "." not in body:
        if body[1:] == "0":
            digits -= 1
        body += "."
    return body + "0" * max(digits, 0) + tail


def _truncate(s: str, f: _Flags) -> str:
    return s if f.prec is None else s[: f.prec]


def _fmt_hex_string(s: str, f: _Flags, upper: bool) -> str:
    data = s.encode("utf-8", "surrogateescape")
    if f.prec is not None:
        data = data[: f.prec]
    digits = "0123456789ABCDEF" if upper else "0123456789abcdef"
    parts = []
    for i, b in enumerate(data):
        prefix = ""
        if (f.space or i == 0) and f.sharp:
            prefix = "0X" if upper else "0x"
        sep = " " if f.space and i > 0 else ""
        parts.append(sep + prefix + digits[b >> 4] + digits[b & 15])
    if not data:
        return _pad("", f)
    return _pad("".join(parts), f)


def _bad_verb(v: Any, verb: str, f: _Flags) -> str:
    if is_nil(v):
        return f"%!{verb}(<nil>)"
    return f"%!{verb}({type_name(v)}={_print(v, 'v', f, 0)})"


def _print(v: Any, verb: str, f: _Flags, depth: int) -> str:
    """One operand, as fmt's printArg/printValue print it."""
    if is_nil(v):
        if verb in ("v", "T"):
            return _pad("<nil>", f)
        return _bad_verb(v, verb, f)
    if verb == "T":
        return _pad(type_name(v), f)
    if isinstance(v, bool):
        if verb in ("t", "v"):
            return _pad("true" if v else "false", f)
        return _bad_verb(v, verb, f)
    if isinstance(v, int):
        return _print_int(v, verb, f)
    if isinstance(v, float):
        if verb in ("v", "b", "g", "G", "x", "X", "f", "F", "e", "E"):
            return _fmt_float(v, verb, f)
        return _bad_verb(v, verb, f)
    if isinstance(v, str):
        return _print_str(v, verb, f)
    stringer = getattr(type(v), "__str__", object.__str__)
    if stringer is not object.__str__ and not isinstance(v, (list, tuple, Mapping)):
        return _print_str(str(v), verb if verb in "vsqxX" else "v", f)
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(_print(x, verb, f, depth + 1) for x in v) + "]"
    if isinstance(v, Mapping) and not getattr(type(v), "go_struct", False):
        items = sorted(v.items(), key=lambda kv: _sort_key(kv[0]))
        inner = " ".join(
            f"{_print(k, verb, f, depth + 1)}:{_print(x, verb, f, depth + 1)}" for k, x in items
        )
        return f"map[{inner}]"
    if callable(v):
        return _bad_verb(v, verb, f) if verb != "v" else _pad("<func>", f)
    fields = struct_fields(v)
    if f.plus_v:
        inner = " ".join(f"{k}:{_print(x, verb, f, depth + 1)}" for k, x in fields.items())
    else:
        inner = " ".join(_print(x, verb, f, depth + 1) for x in fields.values())
    return "{" + inner + "}"


def _print_int(v: int, verb: str, f: _Flags) -> str:
    if verb in ("v", "d"):
        return _fmt_integer(v, 10, verb, f)
    if verb == "b":
        return _fmt_integer(v, 2, verb, f)
    if verb in ("o", "O"):
        return _fmt_integer(v, 8, verb, f)
    if verb in ("x", "X"):
        return _fmt_integer(v, 16, verb, f, upper=verb == "X")
    if verb == "c":
        r = v if 0 <= v <= 0x10FFFF and not 0xD800 <= v <= 0xDFFF else 0xFFFD
        return _pad(chr(r), f)
    if verb == "q":
        return _pad(_quote_rune(v, f.plus), f)
    if verb == "U":
        digits = max(4, f.prec or 0)
        out = f"U+{v if v >= 0 else v + (1 << 64):0{digits}X}"
        if f.sharp and 0 <= v <= 0x10FFFF and chr(v).isprintable():
            out += f" '{chr(v)}'"
        zero, f.zero = f.zero, False
        try:
            return _pad(out, f)
        finally:
            f.zero = zero
    if verb in ("e", "E", "f", "F", "g", "G"):
        return _bad_verb(v, verb, f)
    return _bad_verb(v, verb, f)


def _print_str(v: str, verb: str, f: _Flags) -> str:
    if verb in ("v", "s"):
        if verb == "v" and f.sharp_v:
            return _pad(_quote(_truncate(v, f)), f)
        return _pad(_truncate(v, f), f)
    if verb in ("x", "X"):
        return _fmt_hex_string(v, f, verb == "X")
    if verb == "q":
        s = _truncate(v, f)
        if f.sharp and _can_backquote(s):
            return _pad(f"`{s}`", f)
        return _pad(_quote(s, f.plus), f)
    return _bad_verb(v, verb, f)


def _sort_key(k: Any) -> tuple[int, Any]:
    if isinstance(k, bool):
        return (0, k)
    if isinstance(k, (int, float)):
        return (1, k)
    return (2, str(k))


def format_value(v: Any) -> str:
    """``v`` as ``{{.}}`` prints it: fmt's ``%v``, with ``<no value>`` for nothing."""
    if is_nil(v):
        return "<no value>"
    return _print(v, "v", _Flags(), 0)


def sprint(args: Sequence[Any]) -> str:
    """fmt.Sprint: spaces between operands when neither is a string."""
    out = []
    prev_string = False
    for i, a in enumerate(args):
        is_string = isinstance(a, str)
        if i > 0 and not is_string and not prev_string:
            out.append(" ")
        out.append(_print(a, "v", _Flags(), 0))
        prev_string = is_string
    return "".join(out)


def sprintln(args: Sequence[Any]) -> str:
    return " ".join(_print(a, "v", _Flags(), 0) for a in args) + "\n"


def _parsenum(s: str, i: int, end: int) -> tuple[int | None, int]:
    start = i
    while i < end and s[i].isdigit() and s[i] in "0123456789":
        i += 1
    if i == start:
        return None, i
    return int(s[start:i]), i


def _int_arg(args: Sequence[Any], n: int) -> tuple[int | None, int]:
    if n < len(args):
        a = args[n]
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) <= 1_000_000:
            return a, n + 1
        return None, n + 1
    return None, n


class _Printf:
    def __init__(self, args: Sequence[Any]) -> None:
        self.args = args
        self.reordered = False
        self.good_arg_num = True

    def arg_number(self, arg_num: int, fmt: str, i: int) -> tuple[int, int, bool]:
        if i >= len(fmt) or fmt[i] != "[":
            return arg_num, i, False
        self.reordered = True
        close = fmt.find("]", i + 1)
        if close < 0:
            self.good_arg_num = False
            return arg_num, i + 1, False
        n, j = _parsenum(fmt, i + 1, close)
        if n is None or j != close:
            self.good_arg_num = False
            return arg_num, close + 1, False
        if 0 <= n - 1 < len(self.args):
            return n - 1, close + 1, True
        self.good_arg_num = False
        return arg_num, close + 1, True

    def run(self, fmt: str) -> str:
        out: list[str] = []
        args = self.args
        end = len(fmt)
        arg_num = 0
        after_index = False
        i = 0
        while i < end:
            self.good_arg_num = True
            j = fmt.find("%", i)
            if j < 0:
                out.append(fmt[i:])
                break
            out.append(fmt[i:j])
            i = j + 1
            f = _Flags()
            while i < end and fmt[i] in "#0+- ":
                c = fmt[i]
                if c == "#":
                    f.sharp = True
                elif c == "0":
                    f.zero = not f.minus
                elif c == "+":
                    f.plus = True
                elif c == "-":
                    f.minus = True
                    f.zero = False
                else:
                    f.space = True
                i += 1
            arg_num, i, after_index = self.arg_number(arg_num, fmt, i)
            if i < end and fmt[i] == "*":
                i += 1
                f.wid, arg_num = _int_arg(args, arg_num)
                if f.wid is None:
                    out.append("%!(BADWIDTH)")
                elif f.wid < 0:
                    f.wid = -f.wid
                    f.minus = True
                    f.zero = False
                after_index = False
            else:
                f.wid, i = _parsenum(fmt, i, end)
                if after_index and f.wid is not None:
                    self.good_arg_num = False
            if i + 1 < end and fmt[i] == ".":
                i += 1
                if after_index:
                    self.good_arg_num = False
                arg_num, i, after_index = self.arg_number(arg_num, fmt, i)
                if i < end and fmt[i] == "*":
                    i += 1
                    f.prec, arg_num = _int_arg(args, arg_num)
                    if f.prec is not None and f.prec < 0:
                        f.prec = None
                    if f.prec is None:
                        out.append("%!(BADPREC)")
                    after_index = False
                else:
                    f.prec, i = _parsenum(fmt, i, end)
                    if f.prec is None:
                        f.prec = 0
            if not after_index:
                arg_num, i, after_index = self.arg_number(arg_num, fmt, i)
            if i >= end:
                out.append("%!(NOVERB)")
                break
            verb = fmt[i]
            i += 1
            if verb == "%":
                out.append("%")
            elif not self.good_arg_num:
                out.append(f"%!{verb}(BADINDEX)")
            elif arg_num >= len(args):
                out.append(f"%!{verb}(MISSING)")
            else:
                if verb == "v":
                    f.sharp_v, f.sharp = f.sharp, False
                    f.plus_v, f.plus = f.plus, False
                out.append(_print(args[arg_num], verb, f, 0))
                arg_num += 1
        if not self.reordered and arg_num < len(args):
            extra = []
            for a in args[arg_num:]:
                if is_nil(a):
                    extra.append("<nil>")
                else:
                    extra.append(f"{type_name(a)}={_print(a, 'v', _Flags(), 0)}")
            out.append("%!(EXTRA " + ", ".join(extra) + ")")
        return "".join(out)


def sprintf(fmt: str, args: Sequence[Any]) -> str:
    """fmt.Sprintf, with Go's in-line errors for bad verbs and argument counts."""
    return _Printf(args).run(fmt)


# -- JSON as Go's encoding/json writes it ------------------------------------------------


def go_json(v: Any) -> str:
    """``v`` as Go's json.Encoder (no HTML escaping) writes it, without the newline.
    Go sorts map keys; a plain dict keeps its order (it stands for a struct too)."""
    out: list[str] = []
    _json(v, out)
    return "".join(out)


def _json_string(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif o < 0x20:
            out.append({"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(
                ch, f"\\u00{o:02x}"))  # fmt: skip
        elif ch in "\u2028\u2029":
            out.append(f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:  # not valid UTF-8: Go writes the replacement character
            out.append("\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _json(v: Any, out: list[str]) -> None:
    if is_nil(v) or getattr(v, "go_nil", False):
        out.append("null")
    elif isinstance(v, bool):
        out.append("true" if v else "false")
    elif isinstance(v, int):
        out.append(str(v))
    elif isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise ValueError(f"json: unsupported value: {format_float(v, 'g', None)}")
        text = format_float(v, "json", None)
        if "e" in text:  # Go writes e-7 where strconv gives e-07
            mant, _, exp = text.partition("e")
            text = f"{mant}e{exp[0]}{int(exp[1:])}"
        out.append(text)
    elif isinstance(v, str):
        out.append(_json_string(v))
    elif isinstance(v, (list, tuple)):
        out.append("[")
        for i, x in enumerate(v):
            if i:
                out.append(",")
            _json(x, out)
        out.append("]")
    elif isinstance(v, Mapping) or not callable(v):
        fields = dict(v) if isinstance(v, Mapping) else struct_fields(v)
        keys = list(fields)
        if getattr(type(v), "go_json_sorted", False) or not isinstance(v, Mapping):
            keys.sort(key=str)
        out.append("{")
        for i, k in enumerate(keys):
            if i:
                out.append(",")
            out.append(_json_string(str(k)))
            out.append(":")
            _json(fields[k], out)
        out.append("}")
    else:
        raise ValueError(f"json: unsupported type: {type_name(v)}")
