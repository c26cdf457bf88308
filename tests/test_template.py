"""The ``--format`` template engine (``lamina.cli._template``) against Go's text/template.

Docker's templates are Go's text/template with Docker's functions, headers and
tabwriter. There is no Go toolchain here, but the docker CLI (client only) formats
its local contexts with a user template: ``docker context ls --format T`` runs T
through the very code lamina mimics (templates package, formatter, tabwriter) over
three rows (two contexts made here, and the default one). Every template of
ORACLE_CASES, and a seeded batch of random ``printf`` formats, must print the same
through lamina's engine over the same rows, or fail with the same message. Without
the docker CLI those tests skip; the EXPECTED table (Go's results, for data docker
cannot produce: maps, nil, lists) and the tabwriter cases run everywhere.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lamina.cli._output import LabeledRow, Row, go_quote, tabwrite
from lamina.cli._template import (
    HeaderMap,
    StringMap,
    Template,
    TemplateError,
    render_listing,
    with_string_maps,
)

# The rows ``docker context ls`` shows, in its order, and its header titles.
CONTEXTS = [("ctx1", "first one", "tcp://127.0.0.1:1"), ("ctx2", "日本語 ünï", "unix:///x/y.sock")]
DEFAULT = ("default", "Current DOCKER_HOST based configuration", "unix:///var/run/docker.sock")
HEADERS = {"Name": "NAME", "Description": "DESCRIPTION", "DockerEndpoint": "DOCKER ENDPOINT",
           "Error": "ERROR"}  # fmt: skip


def _context_row(name: str, description: str, endpoint: str) -> Row:
    fields = {"Name": name, "Description": description, "DockerEndpoint": endpoint,
              "Current": name == "default", "Error": ""}  # fmt: skip
    return Row("formatter.clientContextContext", fields)


ROWS = [_context_row(*c) for c in [*CONTEXTS, DEFAULT]]


@pytest.fixture(scope="module")
def docker_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a docker CLI whose contexts are CONTEXTS (and the default)."""
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI to compare with")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = str(tmp_path_factory.mktemp("docker-config"))
    for name, description, endpoint in CONTEXTS:
        subprocess.run(
            ["docker", "context", "create", name, "--description", description,
             "--docker", f"host={endpoint}"],
            env=env, check=True, capture_output=True, timeout=30,
        )  # fmt: skip
    return env


def docker_format(env: dict[str, str], template: str) -> tuple[str, str | None]:
    """What ``docker context ls --format`` prints, and its error (None if it worked)."""
    r = subprocess.run(["docker", "context", "ls", "--format", template],
                       env=env, capture_output=True, timeout=30)  # fmt: skip
    error = r.stderr.decode("utf-8", "surrogateescape").strip()
    error = error.removeprefix("template parsing error: ")
    return r.stdout.decode("utf-8", "surrogateescape"), error if r.returncode else None


def lamina_format(template: str) -> tuple[str, str | None]:
    try:
        return render_listing(template, ROWS, HEADERS), None
    except TemplateError as e:
        return "", str(e)


ORACLE_CASES = [
    "{{.Name}}",
    "table {{.Name}}\\t{{.Description}}\\t{{.DockerEndpoint}}",
    "table {{.Name}}\\t{{.Current}}",
    "{{json .}}",
    "json",
    "{{.Foo}}",
    "{{if .Current}}yes{{else}}no{{end}}",
    '{{if eq .Name "ctx1"}}one{{else if eq .Name "ctx2"}}two{{else}}other{{end}}',
    "{{with .Description}}[{{.}}]{{else}}empty{{end}}",
    '{{range $i, $v := split .DockerEndpoint "/"}}{{$i}}={{$v}};{{end}}',
    '{{range split .Name "t"}}<{{.}}>{{end}}',
    "{{$x := .Name}}{{$x = upper $x}}{{$x}}",
    "{{.Name | upper | lower | title}}",
    '{{printf "%-10s|%5.2f|%q|%v" .Name 3.14159 .Description .Current}}',
    "{{len .Name}} {{len .Description}} {{index .Name 0}} {{slice .Name 1 3}}",
    '{{join (split .DockerEndpoint ":") "+"}}',
    "{{pad .Name 2 3}}|{{truncate .Description 5}}|{{truncate .Name 20}}",
    "{{- .Name -}}  ,  {{- .Current}}",
    "{{/* a comment */}}{{.Name}}",
    "{{- /* trimmed */ -}} x {{.Name}}",
    '{{`raw\\n`}}{{"esc\\t\\"q\\""}}',
    '{{print 1 2 "a" "b" 3 .Current}}',
    "{{println .Name 1}}",
    "{{and .Current .Name}}|{{or .Error .Name}}|{{not .Current}}",
    (
        '{{eq 1 1}} {{eq 1 2 3 1}} {{ne "a" "b"}} {{lt 1 2}} {{le 2 2'
        '}} {{gt "b" "a"}} {{ge 1.5 2.5}}'
    ),
    "{{eq 1 1.0}}",
    "{{lt true false}}",
    "{{range $i := 3}}{{$i}}{{end}}",
    "{{range 0}}x{{else}}none{{end}}",
    (
        '{{range $i, $c := split "a,b,c" ","}}{{if eq $c "b"}}{{conti'
        'nue}}{{end}}{{if eq $c "c"}}{{break}}{{end}}{{$i}}{{$c}}{{en'
        "d}}"
    ),
    '{{index (split "a,b,c" ",") 3}}',
    '{{index (split "a,b,c" ",") 4}}',
    "{{index .Name 10}}",
    "{{.Name.Foo}}",
    "{{upper 1}}",
    "{{upper .Current}}",
    '{{join .Name ","}}',
    '{{printf "%d %s" .Name 3}}',
    '{{printf "%d" 1 2}}',
    '{{printf "%[2]s %[1]s" "a" "b"}}',
    '{{printf "%*d|%-*d|%.*f" 5 42 4 7 2 3.14159}}',
    '{{printf "%x %X %o %O %b %#x %#o %c %U %#U" 255 255 8 8 5 255 8 65 9731 9731}}',
    (
        '{{printf "%e %E %.3e %g %G %.3g %f %.0f %8.2f|%-8.2f|%+.1f|%'
        ' d" 1234.5678 1234.5678 1234.5678 0.00001234 1e21 1234.5678 '
        "1.5 2.5 3.14159 3.14159 2.0 5}}"
    ),
    '{{printf "%v %v %v %v %v %v" 1e6 123456.0 1234567.0 0.0001 0.00001 100.0}}',
    '{{printf "%t %v %s" true false "x"}}',
    '{{printf "%5t|%-5v|%05d|%-05d|%+05d|%x" true 1 42 42 42 "hello"}}',
    '{{printf "% x|%#x|% #x|%X" "hi" "hi" "hi" "hi"}}',
    '{{printf "%q %+q %#q %#q" "héllo\\n" "héllo" "back" "tick`"}}',
    '{{printf "%.2s|%.10s|%5.1s|%-5s|" "héllo" "ab" "xyz" "ab"}}',
    '{{printf "%v|%d|%s" (split "a b" " ") (split "a b" " ") (split "a b" " ")}}',
    '{{printf "%T %T %T %T %T %T" 1 1.5 "s" true (split "a" ",") .Current}}',
    ('{{printf "%!"}}|{{printf "%"}}|{{printf "%z" 1}}|{{printf "%[3]d" 1}}|{{printf "%d %d" 1}}'),
    '{{printf "%s" nil}}|{{printf "%v" nil}}|{{printf "%d" nil}}',
    '{{html "<a href=\'x\'>&</a>"}}|{{js "it\'s <b>\\"x\\"</b>"}}|{{urlquery "a b&c=d/é"}}',
    "{{print nil}}|{{print .Nope}}",
    "{{len 3}}",
    "{{index 1 2}}",
    "{{slice .Name 3 1}}",
    '{{slice "abc" 1}}|{{slice (split "a,b,c" ",") 1 2}}',
    "{{nil}}",
    "{{.Name 1}}",
    '{{template "t" .}}{{define "t"}}[{{.Name}}]{{end}}',
    '{{block "b" .Name}}<{{.}}>{{end}}',
    '{{template "missing"}}',
    "{{if}}",
    "{{end}}",
    "{{else}}",
    "{{range .Name}}{{end}}",
    "{{foo}}",
    "{{$x}}",
    '{{.Name | "x"}}',
    "{{(1).X}}",
    '{{"unterminated}}',
    "{{.Name",
    "{{/* unclosed",
    "{{3x}}",
    (
        "{{1.5e3}} {{0x1F}} {{0o17}} {{017}} {{0b101}} {{1_000}} {{'a"
        "'}} {{'\\n'}} {{-3}} {{+4}} {{.5}}"
    ),
    "{{printf \"%v\" 'x'}}",
    "{{ .Name}}{{.Name }}{{ .Name -}}  z",
    (
        '{{json .Name}}|{{json .Current}}|{{json (split "a\\"b" ",")}}'
        "|{{json 1.5}}|{{json 1e21}}|{{json 0.0000001}}"
    ),
    '{{title "hello wORLD it\'s_a-test o\'neil"}}|{{upper "straße"}}|{{lower "ÀÉ"}}',
    '{{(split "a,b" ",").Foo}}',
    '{{index . "Name"}}',
    "{{$x := 1}}{{if true}}{{$x := 2}}{{$x}}{{end}}{{$x}}",
    "{{$x := 1}}{{if true}}{{$x = 2}}{{end}}{{$x}}",
    "{{with $y := .Name}}{{$y}}{{end}}",
    '{{if and .Current (eq .Name "default")}}D{{end}}',
    '{{or 0 "" nil}}|{{and 1 "x" 2}}',
    "{{break}}",
    "{{range .Foo}}{{end}}",
    "{{truncate .Name -1}}",
    "{{pad .Error 1 1}}|{{pad .Name -1 0}}",
    'table {{.Name}}\\t{{.Description}}\\t{{.Name | printf "%.3s"}}',
    (
        "table {{.Name}}\\t{{json .Description}}\\t{{upper .Name}}\\t{{p"
        "ad .Name 1 1}}\\t{{len .Name}}"
    ),
    "table {{.Name}}\\t{{.Foo}}",
    'table {{.Label "com.docker.compose.project"}}\\t{{.Name}}',
    "tablex {{.Name}}",
    "  table {{.Name}}",
    "{{.Name}}\\t{{.Name}}\\n---",
    "table {{.Name}}\\n{{.Description}}\\t{{.Name}}",
    "table {{.Name}}\\t\\t{{.Description}}\\t",
    '{{"\\u65e5\\U0001F600\\x41\\101"}}',
    '{{printf "%5s|%-6s|" "日本" "é"}}',
    "{{else if}}",
    "{{if 1}}{{else}}{{else}}{{end}}",
    "{{range $i, $j, $k := .}}{{end}}",
    "{{$x := 1}}{{$y, $z := 2}}",
    "{{if .Current}}{{end",
    '{{ .Name | printf "%s-%s" "a" }}',
    '{{printf "%s" | upper}}',
    "{{call .Name}}",
    "{{eq}}",
    '{{eq .Nope "x"}}|{{eq .Nope nil}}|{{ne nil nil}}',
    "{{lt .Nope 1}}",
    '{{eq (split "a" ",") (split "a" ",")}}',
    '{{lt 1 "a"}}',
    "{{len .Nope}}",
    "{{index .Nope 1}}",
    "{{range $i, $e := 3}}{{end}}",
    "{{range 2.5}}{{end}}",
    '{{printf "%v %v" (eq 1 1) (lt 1.5 2.5)}}',
    '{{printf "%6.2v|%.3v|%10.4g" 3.14159 "abcdef" 123.456}}',
    '{{printf "%08.3f|%-8.3f|%+08d|% 08d" 3.14159 3.14159 42 42}}',
    '{{printf "%x|%X|%.2x" "é" "ÿ" "hello"}}',
    '{{printf "%c|%q|%U" 0x1F600 0x1F600 -1}}',
    '{{printf "%d|%d" 0x7fffffffffffffff -0x8000000000000000}}',
    "{{9223372036854775808}}",
    "{{with .Error}}E{{else with .Description}}D:{{.}}{{else}}none{{end}}",
    "line1\n{{.Name}}\n{{.Foo}}",
    'a\n\n  {{.Name | printf "%s" | printf "%s" 1}}',
    '{{- "x" -}}\n{{- .Name}}',
    '{{ "x" }}{{- " y" }}',
    "{{-3}}|{{- 3}}|{{3 -}} |{{3-}}",
    "{{.Name}} {{- /* c */}} {{.Name}}",
    "{{/* c */ -}}   {{.Name}}",
    "{{ /* c */ }}",
    "{{/*c*/ .Name}}",
    '{{range $i, $e := split .Name ""}}{{if $i}},{{end}}{{$e}}{{end}}',
    '{{range $e := split "x,y" ","}}{{$e}}{{$e = "z"}}{{$e}}{{end}}',
    '{{$n := 0}}{{range split "a,b,c" ","}}{{$n = len .}}{{end}}{{$n}}',
    '{{range split "a,b" ","}}{{$.Name}}:{{.}} {{end}}',
    (
        '{{range $i, $x := split "a,b" ","}}{{range $j, $y := split "'
        '1,2" ","}}{{$i}}{{$x}}{{$j}}{{$y}} {{end}}{{end}}'
    ),
    '{{range split "" ","}}[{{.}}]{{else}}empty{{end}}',
    "{{if not .Error}}noerr{{end}}{{if and .Name .Current}} cur{{end}}",
    "{{if eq .Current true}}T{{else}}F{{end}}",
    '{{eq .Name "ctx1" "default"}}',
    '{{(index (split .DockerEndpoint "://") 1)}}',
    '{{(split .DockerEndpoint "://")}}',
    '{{index (split .DockerEndpoint "://") 0 | upper}}',
    '{{printf "%s" (print .Current)}}',
    '{{$x := split .Name "t"}}{{index $x 0}}{{len $x}}',
    '{{len (split .Name "")}}',
    '{{slice (split "a,b,c,d" ",") 1 3 4}}',
    '{{slice "abcd" 1 2 3}}',
    '{{slice "abcd" 5}}',
    '{{slice "abcd" -1}}',
    '{{index "abc" 1.5}}',
    '{{index "abc" "x"}}',
    "{{.Name | len}}",
    '{{.Name | index "x"}}',
    '{{"x" | printf "%s-%s" .Name}}',
    "{{.Current | not}}",
    "{{.Current | and .Name}}",
    '{{printf "%v" (not 0)}} {{not ""}} {{not "a"}} {{not nil}}',
    '{{printf "%.3q" "abcdef"}}|{{printf "%10q|%-10q" "a" "b"}}',
    '{{printf "%6.3d|%.0d|%5.0d|" 7 0 0}}',
    '{{printf "%#v %#v %#v" "s" 1 true}}',
    '{{printf "%+v %+v" 1 "s"}}',
    '{{printf "%v %s" (split "a b" " ") (split "c d" " ")}}',
    '{{printf "%q" (split "a b" " ")}}',
    '{{printf "%d" (split "1 2" " ")}}',
    '{{printf "%5v|" (split "a b" " ")}}',
    (
        '{{printf "%v" 3.0}}|{{printf "%v" -0.5}}|{{printf "%v" 1e-7}'
        '}|{{printf "%v" 123456789.0}}|{{printf "%v" 1e20}}|{{printf '
        '"%v" 1e100}}'
    ),
    '{{printf "%g|%g|%e|%.2e|%G" 100000.0 1000000.0 0.0 1e-10 1e-10}}',
    '{{printf "%.1f|%.2f|%.3f" 0.05 2.675 1.0005}}',
    '{{printf "%x|%X|%o|%b" -255 -255 -8 -5}}',
    '{{printf "%3c|%-3c|" 65 66}}',
    '{{printf "%q" 10}}|{{printf "%+q" 233}}',
    '{{printf "%s %d" "a"}}',
    '{{printf "%s" "a" "b" 3 nil}}',
    (
        '{{printf "%[1]s %[1]s"  "a"}}|{{printf "%[0]s" "a"}}|{{print'
        'f "%[x]s" "a"}}|{{printf "%[2]s" "a"}}'
    ),
    '{{printf "%-+5d|%+-5d|%0-5d|%-05d" 3 3 3 3}}',
    '{{printf "%.*s|%*s" -1 "abc" -4 "x"}}',
    '{{printf "%*d" "x" 1}}',
    '{{printf "%v %v" true nil}}',
    '{{printf "abc%"}}',
    '{{printf "%.s|" "abc"}}',
    '{{printf "%5.1f%%" 99.44}}',
    '{{printf "%-8s|%8s|" "日本" "日本"}}',
    "{{println}}|{{print}}",
    '{{print "a" 1 2 "b" "c" 3}}',
    "{{print 1.5 true nil}}",
    '{{println "a" 1 nil}}',
    (
        '{{json (split "a,b" ",")}}|{{json "a<b>&c"}}|{{json "\\t\\u202'
        '8"}}|{{json nil}}|{{json 0.1}}|{{json 100000000000000000000.'
        "0}}|{{json 1e21}}|{{json -0.0}}"
    ),
    '{{upper "ǆ"}}|{{title "ǆa"}}|{{lower "İ"}}',
    '{{title "hello-world foo_bar 3abc éa"}}',
    '{{split "a,b,,c" ","}}|{{split "abc" ""}}|{{split "" ","}}|{{len (split "" ",")}}',
    '{{join (split "a b c" " ") ", "}}',
    '{{truncate "héllo" 2}}|{{truncate "abc" 3}}|{{truncate "abc" 0}}',
    '{{pad "" 3 3}}|{{pad "x" 0 2}}|',
    '{{html "a\\x00b"}}|{{js "a\\nb\\u2028"}}|{{urlquery "a+b" "c"}}|{{html 1 "x" nil}}',
    (
        '{{eq "a" "a" "b"}} {{eq 1 2}} {{ne 1 1}} {{lt "a" "b"}} {{lt'
        ' "B" "a"}} {{le 1.5 1.5}} {{ge "b" "a"}} {{gt 0 -1}}'
    ),
    "{{lt 1 1.5}}",
    "{{eq true 1}}",
    "{{ne}}",
    "{{lt 1}}",
    "{{lt 1 2 3}}",
    "{{not 1 2}}",
    "{{len 1 2}}",
    "{{index}}",
    "{{printf}}",
    "{{json}}",
    '{{split "a"}}',
    '{{upper "a" "b"}}',
    '{{pad "a" 1}}',
    '{{pad "a" 1 "2"}}',
    '{{truncate "a" "2"}}',
    "{{truncate 1 2}}",
    '{{join (split "a" ",")}}',
    '{{join "a" ","}}',
    '{{true}}{{false}}{{"s"}}{{1}}',
    "{{true 1}}",
    '{{"s" 1}}',
    "{{. 1}}",
    "{{$ 1}}",
    "{{(1) 2}}",
    "{{(.Name)}}|{{(.Name | upper)}}|{{((.Name))}}",
    "{{(.Name).Foo}}",
    '{{(split "a" ",").X}}',
    "{{nil.Foo}}",
    "{{true.X}}",
    '{{"x".Y}}',
    "{{$.Name}}|{{$.Current}}",
    "{{$.Foo}}",
    "{{$x := .Name}}{{$x.Foo}}",
    "{{$x := 1}}{{$x := 2}}{{$x}}",
    "{{$x = 1}}",
    "{{if $x := .Name}}{{$x}}{{end}}{{$x}}",
    "{{range $i := .Name}}{{end}}",
    "{{range .Nope}}x{{else}}nothing{{end}}",
    "{{with .Nope}}x{{else}}no{{end}}",
    "{{with $}}{{.Name}}{{end}}",
    '{{define "x"}}X{{.}}{{end}}{{template "x" "arg"}}|{{template "x"}}|{{template "x" .Name}}',
    '{{template "y"}}{{define "y"}}{{$x := 1}}{{$x}}{{end}}',
    '{{define "a"}}{{$}}{{end}}{{template "a" 5}}',
    '{{define "v"}}{{$.Name}}{{end}}{{template "v" .}}',
    '{{template "x" .}}',
    '{{define "y"}}y{{end}}',
    "{{define x}}{{end}}",
    '{{define "z"}}',
    "{{template .Name}}",
    '{{block "b"}}{{end}}',
    "{{if .Name}}a{{else}}b{{else}}c{{end}}",
    "{{range .Name}}{{else}}{{else}}{{end}}",
    "{{with .Name}}{{end}}{{end}}",
    "{{if .Name}}{{end}}}}",
    "}}{{.Name}}{{",
    "{{.Name}}{{ }}",
    "{{.Name}}{{|}}",
    "{{.Name|}}",
    "{{|.Name}}",
    "{{.Name||upper}}",
    "{{.Name | upper .Name}}",
    "{{.Name : .Name}}",
    "{{.Name,}}",
    "{{$x,}}",
    "{{range $x,}}{{end}}",
    "{{range $x, $y}}{{end}}",
    "{{range $x, $y :=}}{{end}}",
    "{{@}}",
    "{{.Na-me}}",
    "{{.Name.}}",
    "{{..}}",
    "{{$x.}}",
    "{{$1}}",
    "{{.1}}",
    "{{1.2.3}}",
    "{{0x}}",
    "{{1e}}",
    "{{'ab'}}",
    "{{''}}",
    "{{'\\z'}}",
    '{{"\\z"}}',
    '{{"\\x4"}}',
    '{{"\\400"}}',
    "{{`a",
    "b`}}",
    '{{"a" "b"}}',
    "{{else if .Name}}",
    "{{if .Name}}{{else if}}{{end}}",
    "{{if .Name}}{{else with .Name}}{{end}}",
    "{{with .Name}}{{else if .Name}}{{end}}",
    "{{range .Name}}{{else range}}{{end}}",
    "{{break 1}}",
    "{{range $i := 2}}{{break}}{{end}}{{continue}}",
    "{{range $i := 3}}{{if eq $i 1}}{{continue}}{{end}}{{$i}}{{end}}",
    ("{{range $i := 3}}{{range $j := 3}}{{if eq $j 1}}{{break}}{{end}}{{$i}}{{$j}} {{end}}{{end}}"),
    "{{range $i := -2}}x{{else}}neg{{end}}",
    '{{range $i, $v := split "a,b" ","}}{{$i}}{{end}}{{$i}}',
    "{{with $v := 1}}{{$v}}{{end}}{{$v}}",
]


@pytest.mark.parametrize("template", ORACLE_CASES)
def test_engine_matches_docker(docker_env: dict[str, str], template: str) -> None:
    assert lamina_format(template) == docker_format(docker_env, template)


def _random_printf(rng: random.Random) -> str:
    """One ``printf`` action: random flags, width, precision and verb over a value
    of a random type (sometimes the wrong verb, a missing or an extra argument)."""
    kind = rng.choice(["int", "float", "string", "bool"])
    value: Any = {
        "int": rng.choice([0, 1, -1, 7, 42, 65, 255, -255, 9731, 0x1F600, 123456789,
                           rng.randint(-10**6, 10**6)]),
        "float": rng.choice([0.0, 1.0, -2.5, 3.14159, 0.1, 2.675, 1e-7, 1e6, 123456.789,
                             1e21, 100.0, rng.uniform(-1e4, 1e4)]),
        "string": rng.choice(["", "a", "héllo", "日本語", 'say "hi"', "a b", "tick`"]),
        "bool": rng.choice([True, False]),
    }[kind]  # fmt: skip
    verbs = {"int": "vdbcoOxXqU", "float": "veEfFgG", "string": "vsqxX", "bool": "vt"}[kind]
    verb = rng.choice(verbs) if rng.random() < 0.9 else rng.choice("dsfqt")
    flags = "".join(f for f in "+-# 0" if rng.random() < 0.2)
    width = str(rng.randint(0, 12)) if rng.random() < 0.5 else ""
    precision = f".{rng.randint(0, 8)}" if rng.random() < 0.4 else ""
    fmt = f"%{flags}{width}{precision}{verb}"
    if rng.random() < 0.1:
        fmt += " %d"  # an argument short
    literal = (go_quote(value) if kind == "string" else
               str(value).lower() if kind == "bool" else repr(value))  # fmt: skip
    extra = " 1" if rng.random() < 0.1 else ""
    return f"{{{{printf `|{fmt}|` {literal}{extra}}}}}"


def test_random_printf_matches_docker(docker_env: dict[str, str]) -> None:
    """Go's fmt verbs, flags, widths and precisions: 400 random ones in one template,
    a line each (on the default context's row only)."""
    rng = random.Random(20261206)
    actions = [_random_printf(rng) for _ in range(400)]
    template = '{{if eq .Name "default"}}' + "\n".join(actions) + "{{end}}"
    want, error = docker_format(docker_env, template)
    assert error is None, error
    got, error = lamina_format(template)
    assert error is None, error
    for action, docker_line, lamina_line in zip(
        actions, want.splitlines()[2:], got.splitlines()[2:], strict=True
    ):
        assert lamina_line == docker_line, action


# -- Go's semantics on data docker cannot make (maps, nil, lists); no docker needed -------

DATA = {
    "b": 2,
    "a": [1, "x", None],
    "m": {"z": True, "y": None},
    "s": "str",
    "n": None,
    "f": 1.5,
    "e": [],
    "labels": StringMap({"k": "v"}),
}
ROW = LabeledRow("ThingRow", {"tier": "front", "app": "web"}, {"ID": "abc", "Size": "0B"})

EXPECTED: list[tuple[str, Any, str]] = [
    # printing: maps sorted, nested nil is <nil>, nothing is <no value>
    ("{{.}}", DATA,
     "map[a:[1 x <nil>] b:2 e:[] f:1.5 labels:map[k:v] m:map[y:<nil> z:true] n:<nil> s:str]"),
    ("{{.n}}|{{.missing}}|{{.missing.deeper}}|{{.m.y}}", DATA,
     "<no value>|<no value>|<no value>|<no value>"),
    ("{{.a}} {{.e}} {{.m}} {{.f}} {{.b}}", DATA, "[1 x <nil>] [] map[y:<nil> z:true] 1.5 2"),
    # range: maps in key order, slices with index, nil elements are no value
    ("{{range $k, $v := .m}}{{$k}}={{$v}};{{end}}", DATA, "y=<no value>;z=true;"),
    ("{{range $i, $e := .a}}{{$i}}:{{$e}} {{end}}", DATA, "0:1 1:x 2:<no value> "),
    ("{{range .e}}x{{else}}empty{{end}}|{{range .missing}}x{{else}}none{{end}}", DATA,
     "empty|none"),
    ("{{range .m}}{{.}}{{end}}", DATA, "<no value>true"),
    # truth and with
    ("{{with .n}}x{{else}}nil{{end}}{{with .m}} {{.z}}{{end}}{{if .e}}E{{end}}", DATA,
     "nil true"),
    # functions on maps and slices
    ('{{index .m "y"}}|{{index .m "nope"}}|{{index .labels "k"}}|{{index .labels "nope"}}|'
     "{{index .a 1}}", DATA, "<no value>|<no value>|v||x"),
    ("{{len .a}} {{len .m}} {{len .s}} {{len .e}}", DATA, "3 2 3 0"),
    ("{{slice .a 1}} {{slice .a 0 1}}", DATA, "[x <nil>] [1]"),
    ("{{eq .n nil}} {{eq .missing nil}} {{eq .s \"str\"}} {{lt .f 2.0}} {{ne .b 2}}", DATA,
     "true true true true false"),
    ('{{printf "%v|%s|%d|%v|%q" .n .n .n .a .s}}', DATA,
     "<nil>|%!s(<nil>)|%!d(<nil>)|[1 x <nil>]|\"str\""),
    ("{{json .n}} {{json .labels}} {{json .a}} {{json .missing}}", DATA,
     'null {"k":"v"} [1,"x",null] null'),
    ('{{json .}}', {"b": 1, "a": {"d": 2, "c": 3}}, '{"b":1,"a":{"d":2,"c":3}}'),
    ("{{json .}}", StringMap({"b": "1", "a": "2"}), '{"a":"2","b":"1"}'),
    ("{{json .}}", StringMap(None), "null"),
    # structs: fields, Label, JSON of every field sorted, errors for what is not there
    ('{{.ID}} {{.Labels}} {{.Label "tier"}}|{{.Label "nope"}}|{{json .}}', ROW,
     'abc app=web,tier=front front||{"ID":"abc","Labels":"app=web,tier=front","Size":"0B"}'),
    ('{{.Label "com.example.my-label"}}|{{.ID}}|{{.Nope}}', HeaderMap({"ID": "CONTAINER ID"}),
     "my label|CONTAINER ID|<no value>"),
    # variables, scopes and trim markers
    ("a  {{- .s -}}  b {{$x := .b}}{{if true}}{{$x = 3}}{{$y := 4}}{{end}}{{$x}}", DATA,
     "astrb 3"),
    ("{{define \"row\"}}<{{.}}>{{end}}{{range .a}}{{template \"row\" .}}{{end}}", DATA,
     "<1><x><<no value>>"),
]  # fmt: skip


@pytest.mark.parametrize(("template", "data", "want"), EXPECTED)
def test_go_semantics(template: str, data: Any, want: str) -> None:
    assert Template(template).execute(data) == want


ERRORS: list[tuple[str, Any, str, str]] = [
    ("{{.n.x}}", DATA, "default",
     'template: :1:4: executing "" at <.n.x>: nil pointer evaluating interface {}.x'),
    ("{{.s.x}}", DATA, "default",
     'template: :1:4: executing "" at <.s.x>: can\'t evaluate field x in type string'),
    ("{{.missing}}", DATA, "error",
     'template: :1:2: executing "" at <.missing>: map has no entry for key "missing"'),
    ("{{.labels.nope}}", DATA, "error", ""),  # a map of labels: no value, not an error
    ("{{.Nope}}", ROW, "default",
     'template: :1:2: executing "" at <.Nope>: can\'t evaluate field Nope in type *ThingRow'),
    ("{{lt .f 2}}", DATA, "default", 'template: :1:2: executing "" at <lt .f 2>: '
     "error calling lt: incompatible types for comparison"),
    ("{{.ID 1}}", ROW, "default",
     'template: :1:2: executing "" at <.ID>: wrong number of args for ID: want 0 got 1'),
    ("line one\n{{.s}}\n  {{.s.Foo}}", DATA, "default",
     "template: :3:6: executing \"\" at <.s.Foo>: can't evaluate field Foo in type string"),
    ("{{if .s}}\n{{end}}{{else}}", DATA, "default", "template: :2: unexpected {{else}}"),
]  # fmt: skip


@pytest.mark.parametrize(("template", "data", "missing_key", "message"), ERRORS)
def test_errors_are_one_line_as_go_words_them(
    template: str, data: Any, missing_key: str, message: str
) -> None:
    if not message:
        assert Template(template).execute(data, missing_key=missing_key) == "<no value>"
        return
    with pytest.raises(TemplateError) as e:
        Template(template).execute(data, missing_key=missing_key)
    assert str(e.value) == message
    assert "\n" not in str(e.value)


def test_partial_output_and_labels_typed_as_docker_types_them() -> None:
    with pytest.raises(TemplateError) as e:
        Template("a{{.s}}b{{.s.x}}c").execute(DATA)
    assert e.value.partial == "astrb"
    inspected = with_string_maps({"Config": {"Labels": {"a": "1"}}, "Labels": None})
    assert (
        Template('{{index .Config.Labels "b"}}|{{index .Labels "b"}}|{{json .Labels}}').execute(
            inspected
        )
        == "||null"
    )


# -- Docker's tabwriter (minimum width 10, padding 3) -----------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        # a column is as wide as its widest cell + 3, at least 10; the last cell is bare
        ("a\tb\nccccccccccccc\td\n", "a" + " " * 15 + "b\nccccccccccccc   d\n"),
        # a line without tabs ends every column: the blocks around it align apart
        ("a\tb\nno tabs here at all\nxxxxxxxxxxxxxx\ty\n",
         "a         b\nno tabs here at all\nxxxxxxxxxxxxxx   y\n"),
        # empty cells are padded; a trailing tab makes the last cell empty
        ("\tx\tz\nlonger cell\t\t\n",
         " " * 14 + "x" + " " * 9 + "z\nlonger cell" + " " * 13 + "\n"),
        # wide characters take two columns
        ("日本語\tb\nab\tc\n", "日本語    b\nab        c\n"),
        ("no newline\tat end", "no newline   at end"),
    ],
)  # fmt: skip
def test_tabwriter(text: str, want: str) -> None:
    assert tabwrite(text) == want


def test_tabwriter_matches_docker_on_tables(docker_env: dict[str, str]) -> None:
    """A table with a wide-character cell and an empty last column, as Docker aligns it."""
    template = "table {{.Name}}\\t{{.Description}}\\t{{.Error}}"
    assert lamina_format(template) == docker_format(docker_env, template)
    rows = [f"{r['Name']}\t{r['Description']}\t{r['Error']}" for r in ROWS]
    assert (
        tabwrite("NAME\tDESCRIPTION\tERROR\n" + "\n".join(rows) + "\n")
        == lamina_format(template)[0]
    )


def test_template_module_is_not_loaded_for_plain_listings(tmp_path: Path) -> None:
    """``lamina ps``/``images`` without --format, and ``--help``, never import it."""
    import sys

    for args in (["--help"], ["--root", str(tmp_path), "images"]):
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "lamina.cli.main", *args],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr
        imported = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()]
        assert "lamina.cli._output" in imported or args == ["--help"]
        assert "lamina.cli._template" not in imported and "lamina.cli._gofmt" not in imported


def test_hostile_nesting_fails_in_one_line() -> None:
    """Go's stack takes thousands of levels; lamina says so in one line, no traceback."""
    with pytest.raises(TemplateError, match=r"^template: : nested too deeply$"):
        Template("{{" + "(" * 3000 + "1" + ")" * 3000 + "}}").execute({})
    with pytest.raises(TemplateError, match=r"^template: : nested too deeply$"):
        Template("{{if 1}}" * 3000 + "x" + "{{end}}" * 3000).execute({})
