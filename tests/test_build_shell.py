"""Dockerfile word expansion must give what BuildKit's shell lexer gives.

The tables are BuildKit's own test data (frontend/dockerfile/shell/envVarTest
and wordsTest, Unix rows), plus the escape=` variant and the pattern
operators; pattern operators are also checked against bash where BuildKit
follows POSIX.
"""

from __future__ import annotations

import subprocess

import pytest

from lamina.builder.shell import (
    ShellSyntaxError,
    process_word,
    process_word_with_matches,
    process_words,
)
from lamina.errors import LaminaError

ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}
ERROR = object()

# (source, expected) from envVarTest, run with ENV and escape "\".
ENV_VAR_TEST: list[tuple[str, object]] = [
    ("hello", "hello"),
    ("he'll'o", "hello"),
    ("he'llo", ERROR),
    ("he\\'llo", "he'llo"),
    ("he\\\\'llo", ERROR),
    ("abc\\tdef", "abctdef"),
    ('"abc\\tdef"', "abc\\tdef"),
    ('"abc\\\\tdef"', "abc\\tdef"),
    ("'abc\\tdef'", "abc\\tdef"),
    ("hello\\", "hello"),
    ("hello\\\\", "hello\\"),
    ('"hello', ERROR),
    ('"hello\\"', ERROR),
    ('"hel\'lo"', "hel'lo"),
    ("'hello", ERROR),
    ("'hello\\'", "hello\\"),
    ("'hello\\there'", "hello\\there"),
    ("'hello\\\\there'", "hello\\\\there"),
    ("\"''\"", "''"),
    ("$.", "$."),
    ("he$1x", "hex"),
    ("he$.x", "he$.x"),
    ("he$pwd.", "he."),
    ("he$PWD", "he/home"),
    ("he\\$PWD", "he$PWD"),
    ("he\\\\$PWD", "he\\/home"),
    ('"he\\$PWD"', "he$PWD"),
    ('"he\\\\$PWD"', "he\\/home"),
    ("\\${}", "${}"),
    ("\\${}aaa", "${}aaa"),
    ("he\\${}", "he${}"),
    ("he\\${}xx", "he${}xx"),
    ("${}", ERROR),
    ("${}xx", ERROR),
    ("he${}", ERROR),
    ("he${}xx", ERROR),
    ("he${hi}", "he"),
    ("he${hi}xx", "hexx"),
    ("he${PWD}", "he/home"),
    ("he${.}", ERROR),
    ("he${XXX:-000}xx", "he000xx"),
    ("he${PWD:-000}xx", "he/homexx"),
    ("he${XXX:-$PWD}xx", "he/homexx"),
    ("he${XXX:-${PWD:-yyy}}xx", "he/homexx"),
    ("he${XXX:-${YYY:-yyy}}xx", "heyyyxx"),
    ("he${XXX:YYY}", ERROR),
    ("he${XXX?}", ERROR),
    ("he${XXX:?}", ERROR),
    ("he${PWD?}", "he/home"),
    ("he${PWD:?}", "he/home"),
    ("he${NULL?}", "he"),
    ("he${NULL:?}", ERROR),
    ("he${XXX:+${PWD}}xx", "hexx"),
    ("he${PWD:+${XXX}}xx", "hexx"),
    ("he${PWD:+${SHELL}}xx", "hebashxx"),
    ("he${XXX:+000}xx", "hexx"),
    ("he${PWD:+000}xx", "he000xx"),
    ("'he${XX}'", "he${XX}"),
    ('"he${PWD}"', "he/home"),
    ("\"he'$PWD'\"", "he'/home'"),
    ('"$PWD"', "/home"),
    ("'$PWD'", "$PWD"),
    ("'\\$PWD'", "\\$PWD"),
    ("'\"hello\"'", '"hello"'),
    ("he\\$PWD", "he$PWD"),
    ('"he\\$PWD"', "he$PWD"),
    ("'he\\$PWD'", "he\\$PWD"),
    ("he${PWD", ERROR),
    ("he${PWD=000}xx", ERROR),
    ("he${PWD+}xx", "hexx"),
    ("he${PWD-}xx", "he/homexx"),
    ("he${XXX=000}xx", ERROR),
    ("he${XXX+000}xx", "hexx"),
    ("he${XXX-000}xx", "he000xx"),
    ("he${XXX-$PWD}xx", "he/homexx"),
    ("he${XXX-${PWD:-yyy}}xx", "he/homexx"),
    ("he${XXX-${YYY:-yyy}}xx", "heyyyxx"),
    ("he${XXX+${PWD}}xx", "hexx"),
    ("he${PWD+${XXX}}xx", "hexx"),
    ("he${PWD+${SHELL}}xx", "hebashxx"),
    ("he${PWD-000}xx", "he/homexx"),
    ("he${NULL-000}xx", "hexx"),
    ("he${NULL:-000}xx", "he000xx"),
    ("he${NULL+000}xx", "he000xx"),
    ("he${NULL:+000}xx", "hexx"),
    ("he${XXX?}xx", ERROR),
    ("he${NULL:?}xx", ERROR),
    ("he${NULL?}xx", "hexx"),
    ("안녕하세요", "안녕하세요"),
    ("안'녕'하세요", "안녕하세요"),
    ("안'녕하세요", ERROR),
    ("안녕\\'하세요", "안녕'하세요"),
    ("안\\\\'녕하세요", ERROR),
    ("안녕\\t하세요", "안녕t하세요"),
    ('"안녕\\t하세요"', "안녕\\t하세요"),
    ("'안녕\\t하세요", ERROR),
    ("안녕하세요\\", "안녕하세요"),
    ("안녕하세요\\\\", "안녕하세요\\"),
    ('"안녕하세요', ERROR),
    ('"안녕하세요\\"', ERROR),
    ('"안녕\'하세요"', "안녕'하세요"),
    ("'안녕하세요'", "안녕하세요"),
    ("'안녕하세요\\'", "안녕하세요\\"),
    ('"안녕하세요$1x"', "안녕하세요x"),
    ('"안녕하세요$.x"', "안녕하세요$.x"),
    ('"안녕하세요$pwd."', "안녕하세요."),
    ('"안녕하세요$PWD"', "안녕하세요/home"),
    ('"안녕하세요\\$PWD"', "안녕하세요$PWD"),
    ('"안녕하세요\\\\$PWD"', "안녕하세요\\/home"),
    ('"안녕하세요\\${}"', "안녕하세요${}"),
    ('"안녕하세요\\${}xx"', "안녕하세요${}xx"),
    ('"안녕하세요${}"', ERROR),
    ('"안녕하세요${}xx"', ERROR),
    ('"안녕하세요${hi}"', "안녕하세요"),
    ('"안녕하세요${hi}xx"', "안녕하세요xx"),
    ('"안녕하세요${PWD}"', "안녕하세요/home"),
    ('"안녕하세요${XXX:-000}xx"', "안녕하세요000xx"),
    ('"안녕하세요${PWD:-000}xx"', "안녕하세요/homexx"),
    ('"안녕하세요${XXX:-$PWD}xx"', "안녕하세요/homexx"),
    ('"안녕하세요${XXX:-${PWD:-yyy}}xx"', "안녕하세요/homexx"),
    ('"안녕하세요${XXX:-${YYY:-yyy}}xx"', "안녕하세요yyyxx"),
    ('"안녕하세요${XXX:YYY}"', ERROR),
    ('"안녕하세요${XXX:+${PWD}}xx"', "안녕하세요xx"),
    ('"안녕하세요${PWD:+${XXX}}xx"', "안녕하세요xx"),
    ('"안녕하세요${PWD:+${SHELL}}xx"', "안녕하세요bashxx"),
    ('"안녕하세요${XXX:+000}xx"', "안녕하세요xx"),
    ('"안녕하세요${PWD:+000}xx"', "안녕하세요000xx"),
    ("'안녕하세요${XX}'", "안녕하세요${XX}"),
    ("\"안녕하세요'$PWD'\"", "안녕하세요'/home'"),
    ("'\"안녕하세요\"'", '"안녕하세요"'),
    ("$KOREAN", "한국어"),
    ("안녕하세요$KOREAN", "안녕하세요한국어"),
    ("${KOREAN#한}", "국어"),
    # special parameters are names like any other: unset, so empty
    ("a$$b", "ab"),
    ("a$@b", "ab"),
    ("a${#}b", "ab"),
    ("a$10b", "ab"),
    # a lone $ stays
    ("a$", "a$"),
    ("a$ b", "a$ b"),
    ('"a$"', "a$"),
    ("a${", ERROR),
    ("${:}", ERROR),
    ("${{a}}", ERROR),
    ("${PWD:", ERROR),
    ("${PWD:-abc", ERROR),
    ("${PWD:-'}'}", "/home"),
    ("${XXX:-'}'}", "}"),
    ("${XXX:-\\}}", "}"),
    ("${XXX:-a b}", "a b"),
    ('${XXX:-"a b"}', "a b"),
]


@pytest.mark.parametrize(("source", "expected"), ENV_VAR_TEST)
def test_env_var_test_table(source: str, expected: object) -> None:
    if expected is ERROR:
        with pytest.raises(ShellSyntaxError):
            process_word(source, ENV)
    else:
        assert process_word(source, ENV) == expected


# wordsTest: (env, source, expected words); the env grows as in the file.
_SPACE = {"hi": "hi", "space": "abc  def"}
_LEADING = {**_SPACE, "leading": "  ab c"}
_TRAILING = {**_LEADING, "trailing": "ab c   "}
WORDS_TEST: list[tuple[dict[str, str], str, object]] = [
    ({}, "hello", ["hello"]),
    ({}, "hello${hi}bye", ["hellobye"]),
    ({"hi": "hi"}, "hello${hi}bye", ["hellohibye"]),
    (_SPACE, "hello${space}bye", ["helloabc", "defbye"]),
    (_SPACE, 'hello"${space}"bye', ["helloabc  defbye"]),
    (_SPACE, 'hello "${space}"bye', ["hello", "abc  defbye"]),
    (_LEADING, "hello${leading}def", ["hello", "ab", "cdef"]),
    (_LEADING, 'hello"${leading}" def', ["hello  ab c", "def"]),
    (_LEADING, 'hello"${leading}"', ["hello  ab c"]),
    (_LEADING, "hello${leading}", ["hello", "ab", "c"]),
    (_TRAILING, "hello${trailing}", ["helloab", "c"]),
    (_TRAILING, "hello${trailing}d", ["helloab", "c", "d"]),
    (_TRAILING, 'hello"${trailing}"d', ["helloab c   d"]),
    (_TRAILING, 'hel"lo${trailing}"', ["helloab c   "]),
    (_TRAILING, 'hello" there  "', ["hello there  "]),
    (_TRAILING, "hello there     ", ["hello", "there"]),
    (_TRAILING, "hello\\ there", ["hello there"]),
    (_TRAILING, 'hello" there', ERROR),
    (_TRAILING, 'hello\\" there', ['hello"', "there"]),
    (_TRAILING, 'hello"\\\\there"', ["hello\\there"]),
    (_TRAILING, 'hello"\\there"', ["hello\\there"]),
    (_TRAILING, "hello'\\\\there'", ["hello\\\\there"]),
    (_TRAILING, "hello'\\there'", ["hello\\there"]),
    (_TRAILING, "hello'$there'", ["hello$there"]),
    # lex.go drops empty words, quoted or not
    ({}, 'a "" b', ["a", "b"]),
    ({}, "''", []),
    ({}, "", []),
    ({}, " \t\n ", []),
    ({}, "a\tb\nc", ["a", "b", "c"]),
    # expansions are split even inside ${...:-...}, as lex.go does
    ({}, '${X:-"a b"}', ["a", "b"]),
    ({"X": "1 2"}, "$X$X", ["1", "21", "2"]),
]


@pytest.mark.parametrize(("env", "source", "expected"), WORDS_TEST)
def test_words_test_table(env: dict[str, str], source: str, expected: object) -> None:
    if expected is ERROR:
        with pytest.raises(ShellSyntaxError):
            process_words(source, env)
    else:
        assert process_words(source, env) == expected


# escape=` (Windows-style Dockerfiles): the backtick escapes, \ is an ordinary char.
BACKTICK: list[tuple[str, object]] = [
    ("he`$PWD", "he$PWD"),
    ("he\\$PWD", "he\\/home"),
    ("C:\\path\\to", "C:\\path\\to"),
    ('"C:\\path\\$PWD"', "C:\\path\\/home"),
    ('"he`"llo"', 'he"llo'),
    ('"he`$PWD"', "he$PWD"),
    ('"a``b"', "a`b"),
    ('"a`b"', "a`b"),
    ("a``b", "a`b"),
    ("hello`", "hello"),
    ("'it`s'", "it`s"),
    ("`'quoted`'", "'quoted'"),
    ('"hello`"', ERROR),
    ("${XXX:-`}}", "}"),
]


@pytest.mark.parametrize(("source", "expected"), BACKTICK)
def test_backtick_escape(source: str, expected: object) -> None:
    if expected is ERROR:
        with pytest.raises(ShellSyntaxError):
            process_word(source, ENV, escape="`")
    else:
        assert process_word(source, ENV, escape="`") == expected


def test_backtick_escape_words() -> None:
    assert process_words("a` b c", {}, escape="`") == ["a b", "c"]
    assert process_words("a\\ b", {}, escape="`") == ["a\\", "b"]


def test_mandatory_vars_report_the_message() -> None:
    # lex_test.go TestShellParserMandatoryEnvVars
    no_empty, no_unset = "${VAR:?message here$ARG}", "${VAR?message here$ARG}"
    set_env, empty_env, unset_env = ["VAR=plain", "ARG=x"], ["VAR=", "ARG=x"], ["ARG=x"]
    assert process_word(no_empty, set_env) == "plain"
    for env in (empty_env, unset_env):
        with pytest.raises(ShellSyntaxError, match="VAR: message herex"):
            process_word(no_empty, env)
    assert process_word(no_unset, set_env) == "plain"
    assert process_word(no_unset, empty_env) == ""
    with pytest.raises(ShellSyntaxError, match="VAR: message herex"):
        process_word(no_unset, unset_env)


def test_errors_are_one_line_lamina_errors_naming_the_word() -> None:
    with pytest.raises(ShellSyntaxError) as info:
        process_word("he${XXX:?}", ENV)
    assert str(info.value) == 'failed to process "he${XXX:?}": XXX: is not allowed to be unset'
    assert isinstance(info.value, LaminaError)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ShellSyntaxError) as info:
        process_word("a\n'b", ENV)
    assert str(info.value) == (
        'failed to process "a\\n\'b": '
        "unexpected end of statement while looking for matching single-quote"
    )
    with pytest.raises(ShellSyntaxError, match="missing '}'"):
        process_word("${PWD:-x", ENV)
    with pytest.raises(ShellSyntaxError, match=r"unsupported modifier \(:x\)"):
        process_word("${PWD:x}", ENV)


def test_env_as_list_last_value_wins() -> None:
    assert process_word("$A-$B-$C", ["A=1", "B", "A=2", "C=x=y"]) == "2--x=y"
    assert process_word("${B?}", ["B"]) == ""


def test_matches_report_set_and_unset_names() -> None:
    res = process_word_with_matches("$PWD ${XXX:-$SHELL} ${NULL}", ENV)
    assert res.result == "/home bash "
    assert res.words == ("/home", "bash")
    assert res.matched == {"PWD", "SHELL", "NULL"}
    assert res.unmatched == {"XXX"}


# --- pattern operators ----------------------------------------------------------

PATTERNS: list[tuple[str, str, str]] = [
    # (variable value, expression, expected); checked against bash as well
    ("abc.def.ghi", "${V#*.}", "def.ghi"),
    ("abc.def.ghi", "${V##*.}", "ghi"),
    ("abc.def.ghi", "${V%.*}", "abc.def"),
    ("abc.def.ghi", "${V%%.*}", "abc"),
    ("abc.def.ghi", "${V#abc}", ".def.ghi"),
    ("abc.def.ghi", "${V#xyz}", "abc.def.ghi"),
    ("abc.def.ghi", "${V#*}", "abc.def.ghi"),
    ("abc.def.ghi", "${V##*}", ""),
    ("abc.def.ghi", "${V%*}", "abc.def.ghi"),
    ("abc.def.ghi", "${V%%*}", ""),
    ("abc.def.ghi", "${V#a?c}", ".def.ghi"),
    ("abc.def.ghi", "${V%g?i}", "abc.def."),
    ("abc.def.ghi", "${V#?}", "bc.def.ghi"),
    ("abc.def.ghi", "${V%??}", "abc.def.g"),
    ("/usr/local/bin", "${V#/*/}", "local/bin"),
    ("/usr/local/bin", "${V##/*/}", "bin"),
    ("/usr/local/bin", "${V%/*}", "/usr/local"),
    ("/usr/local/bin", "${V%%/l*}", "/usr"),
    ("a*b?c", "${V#a\\*}", "b?c"),
    ("a*b?c", "${V%\\?c}", "a*b"),
    ("a\\b", "${V#a\\\\}", "b"),
    ("aXbXc", "${V%X*}", "aXb"),
    ("(a+b).[c]|^$", "${V#(a+b).}", "[c]|^$"),
    ("(a+b).[c]|^$", "${V%|^$}", "(a+b).[c]"),
    ("héllo wörld", "${V#h?llo }", "wörld"),
    ("héllo wörld", "${V%w?rld}", "héllo "),
    ("abcabc", "${V/b/X}", "aXcabc"),
    ("abcabc", "${V//b/X}", "aXcaXc"),
    ("abcabc", "${V/b*/X}", "aX"),
    ("abcabc", "${V//?/X}", "XXXXXX"),
    ("abcabc", "${V/*/X}", "X"),
    ("abcabc", "${V//*/X}", "X"),
    ("abcabc", "${V//a*c/X}", "X"),
    ("abcabc", "${V/zz/X}", "abcabc"),
    ("abcabc", "${V//bc/}", "aa"),
    ("a.b.c", "${V//./-}", "a-b-c"),
    ("a*b*c", "${V//\\*/+}", "a+b+c"),
]


@pytest.mark.parametrize(("value", "expr", "expected"), PATTERNS)
def test_pattern_operators(value: str, expr: str, expected: str) -> None:
    assert process_word(expr, {"V": value}) == expected


def test_pattern_operators_agree_with_bash() -> None:
    script = "".join(
        f"V={_sh_quote(value)}; printf '%s\\0' \"{expr}\"\n" for value, expr, _ in PATTERNS
    )
    out = subprocess.run(
        ["bash", "--norc", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={"LC_ALL": "C.UTF-8"},
    ).stdout
    bash_results = out.split("\0")[:-1]
    ours = [process_word(expr, {"V": value}) for value, expr, _ in PATTERNS]
    assert ours == bash_results


def _sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def test_pattern_quirks_of_buildkit() -> None:
    env = {"V": "a[b]c", "W": "abc"}
    # no bracket expressions: [ ] are literal
    assert process_word("${V#a[b]}", env) == "c"
    assert process_word("${W#[a]}", env) == "abc"
    # only \*, \? \\ and \} are valid escapes in a pattern
    with pytest.raises(ShellSyntaxError, match="invalid escape"):
        process_word("${W#\\a}", env)
    # the replacement needs its closing slash
    with pytest.raises(ShellSyntaxError, match="missing '/'"):
        process_word("${W/b}", env)
    # :# and :% behave like # and %
    assert process_word("${W:#a}", env) == "bc"
    # unset variables give empty results
    assert process_word("x${NOPE#a}${NOPE//a/b}y", env) == "xy"
    # Go's ReplaceAllString: $0 is the match, $$ a dollar, other names vanish
    assert process_word("${W//b/<\\$0>}", env) == "a<\\b>c"
    assert process_word("${W/b/<\\$0>}", env) == "a<\\$0>c"
    # an empty pattern matches between every character
    assert process_word("${W///-}", env) == "-a-b-c-"
    # \} is how a pattern holds a }; \/ and \$ are not valid pattern escapes
    assert process_word("${X%\\}}", {"X": "a}"}) == "a"
    for bad in ("${W//\\//:}", "${W%\\$}"):
        with pytest.raises(ShellSyntaxError, match="invalid escape"):
            process_word(bad, env)


def test_fast_path_and_slow_path_agree() -> None:
    word = "plain words\twith  spaces"
    assert process_word(word, {}) == word
    assert process_words(word, {}) == ["plain", "words", "with", "spaces"]
    assert process_words(word + "$X", {"X": ""}) == ["plain", "words", "with", "spaces"]


def test_long_words_are_fast() -> None:
    import time

    word = " ".join(f'"$V{i}" ${{V{i}:-x}} \\$' for i in range(2000))
    env = {f"V{i}": "v" for i in range(0, 2000, 2)}
    start = time.perf_counter()
    words = process_words(word, env)
    assert time.perf_counter() - start < 1.0
    assert len(words) == 2000 * 2 + 2000 - 1000
