"""Dockerfile word expansion, a port of BuildKit's ``frontend/dockerfile/shell/lex.go``.

Contract: :func:`process_word` and :func:`process_words` are pure functions of the
word, the environment and the escape character (``\\`` or the backtick chosen by a
``# escape=`` directive). They give the result BuildKit's ``Lex.ProcessWord`` /
``Lex.ProcessWords`` give, quirks included, so a Dockerfile builds the same here
as under ``docker build``. Every failure (unterminated quote, ``${`` without ``}``,
bad modifier, ``${VAR:?msg}`` on an unset variable, bad pattern) raises
:class:`ShellSyntaxError` whose message is BuildKit's: ``failed to process "WORD": WHY``.

What is supported, as in lex.go (and no more: no command substitution, no
arithmetic, no ``~``):

* ``'...'`` literal; ``"..."`` where the escape char escapes only ``"``, ``$`` and
  itself; the escape char outside quotes takes the next character literally and
  is dropped at the end of the word;
* ``$NAME``, ``${NAME}``, positional/special names (``$1``, ``$@``...) which are
  looked up like any other name (usually unset, so empty); a ``$`` not followed by
  a name stays literal; unset variables expand to the empty string;
* ``${N:-w}`` ``${N-w}`` ``${N:+w}`` ``${N+w}`` ``${N:?m}`` ``${N?m}``;
* ``${N#p}`` ``${N##p}`` ``${N%p}`` ``${N%%p}`` ``${N/p/r}`` ``${N//p/r}`` where the
  pattern knows ``*``, ``?`` and ``\\`` escapes of ``*``, ``?``, ``\\`` and ``}``
  only: BuildKit has no bracket expressions, ``[`` is literal.

Words produced by ``$`` expansions are split on white space by
:func:`process_words` (even inside ``${N:-"a b"}``); quoted text is never split;
empty words, even quoted ones (``""``), are dropped -- all as lex.go does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lamina.errors import LaminaError

__all__ = [
    "ShellSyntaxError",
    "WordResult",
    "process_word",
    "process_word_with_matches",
    "process_words",
]

Env = Mapping[str, str] | Sequence[str]


class ShellSyntaxError(LaminaError, ValueError):
    """A Dockerfile word cannot be expanded (the message names the word and why)."""


class _Fail(Exception):
    """Internal: a lex.go error before it is wrapped with the word (errors.Wrapf)."""


@dataclass(frozen=True, slots=True)
class WordResult:
    """Everything ``ProcessWordWithMatches`` reports for one word.

    ``matched`` holds the variable names that were looked up and set,
    ``unmatched`` those looked up and unset (BuildKit uses them for unused
    build-arg warnings and its UndefinedVar check).
    """

    result: str
    words: tuple[str, ...]
    matched: frozenset[str]
    unmatched: frozenset[str]


def process_word(word: str, env: Env, escape: str = "\\") -> str:
    """Expand ``word`` like BuildKit's ``ProcessWord``: one string, spaces kept."""
    if not _needs_lexing(word, escape):
        return word
    return _ShellWord(word, env, escape).run(want_words=False)[0]


def process_words(word: str, env: Env, escape: str = "\\") -> list[str]:
    """Expand and split ``word`` like BuildKit's ``ProcessWords``."""
    if not _needs_lexing(word, escape):
        return _split_plain(word)
    return _ShellWord(word, env, escape).run(want_words=True)[1]


def process_word_with_matches(word: str, env: Env, escape: str = "\\") -> WordResult:
    """Expand ``word`` and also report which variables it referenced."""
    sw = _ShellWord(word, env, escape)
    result, words = sw.run(want_words=True)
    return WordResult(result, tuple(words), frozenset(sw.matched), frozenset(sw.unmatched))


# --- helpers -----------------------------------------------------------------

# Go's unicode.IsSpace: Python's str.isspace() also counts the ASCII separators
# 0x1c-0x1f, which Go does not.
_NOT_GO_SPACE = frozenset("\x1c\x1d\x1e\x1f")


def _is_space(ch: str) -> bool:
    return ch.isspace() and ch not in _NOT_GO_SPACE


def _is_name_char(ch: str) -> bool:
    # unicode.IsLetter / unicode.IsDigit (Nd) / '_'
    return ch.isalpha() or ch.isdecimal() or ch == "_"


def _needs_lexing(word: str, escape: str) -> bool:
    if len(escape) != 1:
        raise ValueError(f"escape must be one character, got {escape!r}")
    return "$" in word or "'" in word or '"' in word or escape in word


def _split_plain(word: str) -> list[str]:
    words: list[str] = []
    cur: list[str] = []
    for ch in word:
        if _is_space(ch):
            if cur:
                words.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        words.append("".join(cur))
    return words


def _env_dict(env: Env) -> Mapping[str, str]:
    if isinstance(env, Mapping):
        return env
    # EnvsFromSlice: "K=V", a bare "K" means set and empty; the last one wins.
    out: dict[str, str] = {}
    for item in env:
        key, _, value = item.partition("=")
        out[key] = value
    return out


def _go_quote(s: str) -> str:
    """Go's %q, close enough for an error message on one line."""
    out = s.replace("\\", "\\\\").replace('"', '\\"')
    out = out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{out}"'


class _Words:
    """lex.go's wordsStruct: collects the split words next to the plain result.

    Its ``inWord`` flag never changes the outcome (a word is only pushed when
    non-empty), so it is left out.
    """

    __slots__ = ("cur", "words")

    def __init__(self) -> None:
        self.words: list[str] = []
        self.cur: list[str] = []

    def add_char(self, ch: str) -> None:
        if _is_space(ch):
            if self.cur:
                self.words.append("".join(self.cur))
                self.cur = []
        else:
            self.cur.append(ch)

    def add_string(self, s: str) -> None:
        for ch in s:
            self.add_char(ch)

    def add_raw(self, s: str) -> None:
        if s:
            self.cur.append(s)

    def get_words(self) -> list[str]:
        if self.cur:
            word = "".join(self.cur)
            self.cur = []
            if word:
                self.words.append(word)
        return self.words


class _ShellWord:
    """lex.go's shellWord: a cursor over the word plus the lookup bookkeeping."""

    __slots__ = ("env", "escape", "matched", "n", "pos", "raw_escapes", "src", "unmatched")

    def __init__(self, word: str, env: Env, escape: str) -> None:
        if len(escape) != 1:
            raise ValueError(f"escape must be one character, got {escape!r}")
        self.src = word
        self.n = len(word)
        self.pos = 0
        self.env = _env_dict(env)
        self.escape = escape
        self.raw_escapes = False
        self.matched: set[str] = set()
        self.unmatched: set[str] = set()

    def run(self, *, want_words: bool) -> tuple[str, list[str]]:
        words = _Words() if want_words else None
        try:
            result = self.process_stop_on("", False, words)
        except _Fail as exc:
            raise ShellSyntaxError(f"failed to process {_go_quote(self.src)}: {exc}") from None
        return result, (words.get_words() if words is not None else [])

    def peek(self) -> str:
        return self.src[self.pos] if self.pos < self.n else ""

    def get_env(self, name: str) -> tuple[str, bool]:
        value = self.env.get(name)
        if value is None:
            self.unmatched.add(name)
            return "", False
        self.matched.add(name)
        return value, True

    # processStopOn: read up to ``stop`` ("" = end of word), expanding as we go.
    def process_stop_on(self, stop: str, raw_escapes: bool, words: _Words | None) -> str:
        saved = self.raw_escapes
        self.raw_escapes = raw_escapes
        try:
            return self._process_stop_on(stop, words)
        finally:
            self.raw_escapes = saved

    def _process_stop_on(self, stop: str, words: _Words | None) -> str:
        src, n, esc = self.src, self.n, self.escape
        result: list[str] = []
        while self.pos < n:
            ch = src[self.pos]
            if stop and ch == stop:
                self.pos += 1
                return "".join(result)
            if ch == "$":
                tmp = self.process_dollar()
                result.append(tmp)
                if words is not None:
                    words.add_string(tmp)  # expansions are subject to splitting
                continue
            if ch == "'" or ch == '"':
                tmp = self.process_single_quote() if ch == "'" else self.process_double_quote()
                result.append(tmp)
                if words is not None:
                    words.add_raw(tmp)  # quoted text never is
                continue
            self.pos += 1
            if ch == esc:
                if self.raw_escapes:
                    result.append(ch)
                    if words is not None:
                        words.add_raw(ch)
                if self.pos >= n:
                    break  # a trailing escape char is dropped
                ch = src[self.pos]
                self.pos += 1
                if words is not None:
                    words.add_raw(ch)
            elif words is not None:
                words.add_char(ch)
            result.append(ch)
        if stop:
            raise _Fail(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result)

    def process_single_quote(self) -> str:
        # Everything up to the next ' is literal; ' itself cannot be escaped.
        end = self.src.find("'", self.pos + 1)
        if end < 0:
            self.pos = self.n
            raise _Fail("unexpected end of statement while looking for matching single-quote")
        out = self.src[self.pos + 1 : end]
        self.pos = end + 1
        return out

    def process_double_quote(self) -> str:
        src, n, esc = self.src, self.n, self.escape
        self.pos += 1
        result: list[str] = []
        while True:
            if self.pos >= n:
                raise _Fail("unexpected end of statement while looking for matching double-quote")
            ch = src[self.pos]
            if ch == '"':
                self.pos += 1
                return "".join(result)
            if ch == "$":
                result.append(self.process_dollar())
                continue
            self.pos += 1
            if ch == esc:
                if self.raw_escapes:
                    result.append(ch)
                if self.pos >= n:
                    continue  # then fails on the missing closing quote
                nxt = src[self.pos]
                # Only ", $ and the escape char itself can be escaped; any other
                # escape char stays as it is.
                if nxt == '"' or nxt == "$" or nxt == esc:
                    ch = nxt
                    self.pos += 1
            result.append(ch)

    def process_name(self) -> str:
        src, n, start = self.src, self.n, self.pos
        if start >= n:
            return ""
        ch = src[start]
        if ch.isdecimal():  # $1, $10: all the digits
            end = start
            while end < n and src[end].isdecimal():
                end += 1
            self.pos = end
            return src[start:end]
        if ch in "@*#?-$!0":  # POSIX special parameters are one char
            self.pos += 1
            return ch
        end = start
        while end < n and _is_name_char(src[end]):
            end += 1
        self.pos = end
        return src[start:end]

    def process_dollar(self) -> str:
        self.pos += 1  # the '$'
        if self.peek() != "{":
            name = self.process_name()
            if not name:
                return "$"
            return self.get_env(name)[0]

        self.pos += 1  # the '{'
        ch = self.peek()
        if ch == "":
            raise _Fail("syntax error: missing '}'")
        if ch in "{}:":
            raise _Fail("syntax error: bad substitution")
        name = self.process_name()
        ch = self.peek()
        if ch == "":
            raise _Fail("syntax error: missing '}'")
        self.pos += 1
        modifier = ch

        if ch == "}":
            return self.get_env(name)[0]

        if ch == "/":
            return self._process_replace(name)

        null_is_unset = False
        if ch == ":":
            # Go's fallthrough: whatever follows ':' is taken as the operator.
            null_is_unset = True
            ch = self.peek()
            if ch:
                self.pos += 1
            modifier += ch
        elif ch not in "+-?#%":
            raise _Fail(f"unsupported modifier ({modifier}) in substitution")

        try:
            word = self.process_stop_on("}", ch == "#" or ch == "%", None)
        except _Fail:
            if self.pos >= self.n:
                raise _Fail("syntax error: missing '}'") from None
            raise
        value, is_set = self.get_env(name)
        unset = not is_set or (null_is_unset and value == "")

        if ch == "-":
            return word if unset else value
        if ch == "+":
            return "" if unset else word
        if ch == "?":
            if not is_set:
                raise _Fail(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise _Fail(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if ch == "#" or ch == "%":
            # #/% remove the shortest match, ##/%% the longest.
            greedy = word.startswith(ch)
            if greedy:
                word = word[1:]
            if ch == "%":
                return _trim_suffix(word, value, greedy)
            return _trim_prefix(word, value, greedy)
        raise _Fail(f"unsupported modifier ({modifier}) in substitution")

    def _process_replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.pos += 1
        try:
            pattern = self.process_stop_on("/", True, None)
        except _Fail:
            if self.pos >= self.n:
                raise _Fail("syntax error: missing '/' in ${}") from None
            raise
        try:
            replacement = self.process_stop_on("}", True, None)
        except _Fail:
            if self.pos >= self.n:
                raise _Fail("syntax error: missing '}'") from None
            raise
        value, _ = self.get_env(name)
        rx = _shell_pattern_regex(pattern, greedy=True, anchored=False)
        if replace_all:
            return _go_replace_all(rx, value, replacement)
        m = rx.search(value)
        if m is None:
            return value
        return value[: m.start()] + replacement + value[m.end() :]


# --- patterns ----------------------------------------------------------------

_REGEX_SPECIAL = frozenset("[]{}.+()|^$")
_PATTERN_CACHE: dict[tuple[str, bool, bool], re.Pattern[str]] = {}


def _shell_pattern_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """convertShellPatternToRegex: ``*`` and ``?`` wildcards, ``\\`` escapes."""
    key = (pattern, greedy, anchored)
    cached = _PATTERN_CACHE.get(key)
    if cached is not None:
        return cached
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    i, n = 0, len(pattern)
    while i < n:
        tok = pattern[i]
        i += 1
        if tok == "*":
            out.append(star)
        elif tok == "?":
            out.append(".")
        elif tok == "\\":
            if i < n and pattern[i] == "}":
                continue  # \} is how a } gets into ${...}; the escape is not part of it
            nxt = pattern[i] if i < n else ""
            if nxt not in ("*", "?", "\\"):
                raise _Fail(
                    f"invalid pattern ({pattern}) in substitution: invalid escape '\\{nxt}'"
                )
            i += 1
            out.append(re.escape(nxt))
        else:
            out.append(re.escape(tok))
    compiled = re.compile("".join(out))
    if len(_PATTERN_CACHE) > 512:
        _PATTERN_CACHE.clear()
    _PATTERN_CACHE[key] = compiled
    return compiled


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    m = _shell_pattern_regex(pattern, greedy=greedy, anchored=True).match(value)
    return value[m.end() :] if m else value


def _reverse_pattern(pattern: str) -> str:
    """Reverse a pattern keeping each ``\\x`` pair in order (a\\*c -> c\\*a)."""
    chars = list(pattern)
    out = [""] * len(chars)
    last = len(chars) - 1
    i = 0
    while i <= last:
        tok = chars[i]
        j = last - i
        if tok == "\\" and i != last:
            out[j - 1] = tok
            out[j] = chars[i + 1]
            i += 2
        else:
            out[j] = tok
            i += 1
    return "".join(out)


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # A regex cannot find the shortest rightmost match, so BuildKit reverses the
    # value and the pattern and trims a prefix instead.
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


def _go_replace_all(rx: re.Pattern[str], src: str, template: str) -> str:
    """Go's Regexp.ReplaceAllString.

    Unlike re.sub, an empty match right after a match is not replaced
    (``.*`` on "abc" gives one replacement, not two), and ``$`` templates in the
    replacement are expanded.
    """
    out: list[str] = []
    last_end = 0
    pos = 0
    n = len(src)
    while pos <= n:
        m = rx.search(src, pos)
        if m is None:
            break
        start, end = m.span()
        out.append(src[last_end:start])
        if end > last_end or start == 0:
            out.append(_go_expand(template, m.group(0)))
        last_end = end
        # Advance past the match, always by at least one character.
        pos = pos + 1 if pos + 1 > end else end
    out.append(src[last_end:])
    return "".join(out)


_GO_TEMPLATE_NAME = re.compile(r"\{(\w+)\}|(\w+)")


def _go_expand(template: str, match: str) -> str:
    """regexp.Expand for a pattern without groups: $0 is the match, $$ is $."""
    if "$" not in template:
        return template
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        j = template.find("$", i)
        if j < 0:
            break
        out.append(template[i:j])
        i = j + 1
        if i < n and template[i] == "$":
            out.append("$")
            i += 1
            continue
        m = _GO_TEMPLATE_NAME.match(template, i)
        if m is None:
            out.append("$")  # malformed: the $ is kept as it is
            continue
        name = m.group(1) or m.group(2)
        i = m.end()
        if name == "0":
            out.append(match)
        # any other group number or name does not exist: expands to nothing
    out.append(template[i:])
    return "".join(out)
