"""``--format`` on every command, and usage errors, through the real ``lamina`` CLI.

One root with real runc containers (a running one with labels and a volume, an
exited one), two image names and a labelled volume; each listing and inspect command
is asked for Go templates (range, if, with, variables, pipelines, Docker's
functions), ``table`` formats, and ``json`` (one object per line for listings, with
Docker's fields; an indented array for inspect). Usage errors of any command are
one ``lamina: error:`` line and exit 125.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_fixtures import CLI, IMAGE_REF, cli_image_root, lamina_cli, remove_all_containers

pytestmark = [pytest.mark.timeout(120), pytest.mark.both_modes]

IMAGE = IMAGE_REF
OTHER = "example.com/test/other:2"  # a second name of the image


def ok(root: Path, *args: str) -> str:
    r = lamina_cli(root, *args)
    assert r.returncode == 0, (args, r.returncode, r.stderr)
    assert r.stderr == "", r.stderr
    return r.stdout


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def assert_usage_error(r: subprocess.CompletedProcess[str], needle: str = "") -> str:
    """One ``lamina: error:`` line on stderr, nothing on stdout, exit 125."""
    assert r.returncode == 125, (r.returncode, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lamina: error: "), r.stderr
    assert needle in lines[0], lines[0]
    return lines[0]


def column_starts(header: str, titles: list[str]) -> list[int]:
    return [header.index(t) for t in titles]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = cli_image_root(tmp_path_factory, "cli-format")
    ok(root, "run", "-d", "--name", "web", "-l", "tier=front", "-l", "app=shop",
       "-v", "data:/data", IMAGE, "sleep", "1000")  # fmt: skip
    r = lamina_cli(root, "run", "--name", "batch", IMAGE, "sh", "-c", "exit 3")
    assert r.returncode == 3, r.stderr
    ok(root, "tag", IMAGE, OTHER)
    ok(root, "volume", "create", "-l", "team=a", "named")
    yield root
    remove_all_containers(root)


# -- ps ----------------------------------------------------------------------------------


def test_ps_templates(root: Path) -> None:
    lines = ok(root, "ps", "-a", "--format", "{{.Names}}:{{.State}}").splitlines()
    assert sorted(lines) == ["batch:exited", "web:running"]
    template = (
        '{{range $l := split .Labels ","}}[{{$l}}]{{end}} {{.Label "tier"}}|{{.Label "none"}}|'
        '{{if eq .State "running"}}up{{else}}down{{end}} {{.Names | upper | printf "%-5s"}}|'
        "{{with .Mounts}}{{.}} ({{$.LocalVolumes}}){{end}}"
    )
    assert (
        ok(root, "ps", "--format", template) == "[app=shop][tier=front] front||up WEB  |data (1)\n"
    )
    template = '{{- $s := .Status}}{{index (split $s " ") 1}} {{.Command}} {{len .ID}}'
    out = ok(root, "ps", "-a", "--filter", "name=batch", "--format", template)
    assert out == '(3) "sh -c exit 3" 12\n'
    assert ok(root, "ps", "--no-trunc", "--format", "{{len .ID}}") == "64\n"


def test_ps_tables(root: Path) -> None:
    titles = ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
    for out in (ok(root, "ps", "-a", "--format", "table"), ok(root, "ps", "-a")):
        assert re.split(" {3,}", out.splitlines()[0]) == titles  # the default table
    header, *rows = ok(
        root, "ps", "-a", "--format", 'table {{.Names}}\\t{{.Status}}\\t{{.Label "tier"}}'
    ).splitlines()
    assert header.split() == ["NAMES", "STATUS", "tier"]
    starts = column_starts(header, ["STATUS", "tier"])
    assert starts[0] == 10  # Docker's tabwriter: a column is at least 10 wide
    web = next(r for r in rows if r.startswith("web"))
    assert column_starts(web, ["Up ", "front"]) == starts


def test_ps_json_is_one_object_per_line(root: Path) -> None:
    rows = json_lines(ok(root, "ps", "-a", "--format", "json"))
    assert sorted(r["Names"] for r in rows) == ["batch", "web"]  # type: ignore[type-var]
    docker_fields = {"Command", "CreatedAt", "ID", "Image", "Labels", "LocalVolumes",
                     "Mounts", "Names", "Networks", "Ports", "RunningFor", "Size", "State",
                     "Status"}  # fmt: skip
    for row in rows:
        assert docker_fields <= set(row) and all(isinstance(v, str) for v in row.values())
        assert list(row) == sorted(row)  # Docker marshals a map: keys sorted
    web = next(r for r in rows if r["Names"] == "web")
    assert (web["Labels"], web["Mounts"], web["State"]) == (
        "app=shop,tier=front",
        "data",
        "running",
    )
    assert re.fullmatch(r"[0-9a-f]{12}", str(web["ID"]))
    same = json_lines(ok(root, "ps", "-a", "--format", "{{json .}}"))
    assert [r["ID"] for r in same] == [r["ID"] for r in rows]


# -- images ------------------------------------------------------------------------------


def test_images_formats(root: Path) -> None:
    image_id = ok(root, "images", "-q").split()[0]
    out = ok(root, "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}} {{.Digest}}")
    assert sorted(out.splitlines()) == sorted(
        [f"{IMAGE.rsplit(':', 1)[0]}:latest {image_id} <none>", f"{OTHER} {image_id} <none>"]
    )
    assert ok(root, "image", "ls", "--format", "{{.Tag}}") == ok(
        root, "images", "--format", "{{.Tag}}"
    )
    rows = json_lines(ok(root, "images", "--format", "json"))
    assert len(rows) == 2 and {r["Tag"] for r in rows} == {"latest", "2"}
    assert set(rows[0]) == {"Containers", "CreatedAt", "CreatedSince", "Digest", "ID",
                            "Repository", "SharedSize", "Size", "Tag", "UniqueSize",
                            "VirtualSize"}  # fmt: skip
    header, *lines = ok(root, "images", "--format", "table {{.Repository}}\\t{{.Tag}}").splitlines()
    assert header.split() == ["REPOSITORY", "TAG"] and len(lines) == 2
    header = ok(root, "images", "--digests", "--format", "table {{.Tag}}").splitlines()[0]
    assert header.split() == ["TAG", "DIGEST"]  # as Docker adds the column --digests asks for


# -- inspect -----------------------------------------------------------------------------


def test_inspect_formats(root: Path) -> None:
    template = (
        '{{.State.Status}} {{.State.Running}} {{index .Config.Labels "tier"}}|'
        '{{index .Config.Labels "none"}}|'
    )
    assert (
        ok(root, "inspect", "-f", template, "web", "batch")
        == "running true front||\nexited false ||\n"
    )
    mounts = "{{range .Mounts}}{{.Type}}:{{.Name}}->{{.Destination}}{{end}}"
    assert ok(root, "container", "inspect", "--format", mounts, "web") == "volume:data->/data\n"
    image_id = ok(root, "inspect", "--type", "image", "-f", "{{.Id}}", IMAGE).strip()
    assert image_id.startswith("sha256:")
    tags = json.loads(ok(root, "image", "inspect", "-f", "{{json .RepoTags}}", IMAGE))
    assert sorted(tags) == sorted([IMAGE, OTHER])
    assert ok(root, "image", "inspect", "-f", "{{.Os}}/{{.Architecture}}", IMAGE).startswith(
        "linux/"
    )
    (doc,) = json.loads(ok(root, "inspect", "--format", "json", "web"))  # stays an array
    assert doc["Name"] == "/web"


def test_inspect_errors(root: Path) -> None:
    message = 'template: :1:2: executing "" at <.Nope>: map has no entry for key "Nope"'
    assert_usage_error(lamina_cli(root, "inspect", "-f", "{{.Nope}}", "web"), message)
    assert_usage_error(lamina_cli(root, "image", "inspect", "-f", "{{if}}", IMAGE),
                       "template: :1: missing value for if")  # fmt: skip
    r = lamina_cli(root, "inspect", "-f", "{{.Name}}", "web", "nosuch")
    assert (r.returncode, r.stdout, r.stderr) == (
        1,
        "/web\n",
        "lamina: error: no such object: nosuch\n",
    )


# -- volumes, stats, version, info, vm ------------------------------------------------------


def test_volume_formats(root: Path) -> None:
    out = ok(root, "volume", "ls", "--format", '{{.Name}} {{.Driver}} {{.Label "team"}}|{{.Scope}}')
    assert sorted(out.splitlines()) == ["data local |local", "named local a|local"]
    rows = json_lines(ok(root, "volume", "ls", "--format", "json"))
    named = next(r for r in rows if r["Name"] == "named")
    assert named["Labels"] == "team=a" and named["Links"] == "N/A" and list(named) == sorted(named)
    header = ok(root, "volume", "ls").splitlines()[0]
    assert header == "DRIVER    VOLUME NAME"  # Docker's default table, tabwriter widths
    template = '{{.Name}}|{{index .Labels "team"}}|{{index .Labels "x"}}|{{.Mountpoint}}'
    out = ok(root, "volume", "inspect", "-f", template, "named")
    assert out == f"named|a||{root}/volumes/named/_data\n"


def test_stats_formats(root: Path) -> None:
    out = ok(
        root,
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.Container}} {{len .ID}} {{.PIDs}}",
        "web",
    )
    assert out == "web web 12 1\n"
    (row,) = json_lines(ok(root, "stats", "--no-stream", "--format", "json", "web"))
    assert row["Name"] == "web" and str(row["CPUPerc"]).endswith("%")
    header = ok(
        root, "stats", "--no-stream", "--format", "table {{.Name}}\\t{{.MemPerc}}", "web"
    ).splitlines()[0]
    assert header.split() == ["NAME", "MEM", "%"]


def test_version_and_info_formats(root: Path) -> None:
    number = ok(root, "--version").split()[-1]
    out = ok(
        root, "version", "-f", "{{.Client.Version}}|{{.Server.Version}}|{{.Server.Platform.Name}}"
    )
    assert out == f"{number}|{number}|lamina\n"
    (version,) = json_lines(ok(root, "version", "--format", "json"))
    assert set(version) == {"Client", "Server"}
    template = (
        "{{.NCPU}} {{.DockerRootDir}} {{.Containers}}/{{.ContainersRunning}} {{.Images}} "
        '{{range $name, $path := .Runtimes}}{{if eq $name "runc"}}{{$path}}{{end}}{{end}}'
    )
    out = ok(root, "info", "--format", template)
    assert out == f"{os.cpu_count()} {root} 2/1 1 /usr/sbin/runc\n"
    assert_usage_error(
        lamina_cli(root, "info", "-f", "{{.Nope}}"), 'map has no entry for key "Nope"'
    )


def test_vm_snapshot_listing_formats(root: Path) -> None:
    assert ok(root, "vm", "snapshot", "ls", "--format", "json") == ""
    assert ok(root, "vm", "snapshot", "ls", "--format", "{{.name}}") == ""
    assert_usage_error(
        lamina_cli(root, "vm", "snapshot", "ls", "--format", "{{"), "unclosed action"
    )


# -- usage errors: one line, exit 125, for every command and group ---------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["bogus"], "No such command 'bogus'"),
        (["--bogus"], "No such option"),
        (["ps", "--bogus"], "No such option"),
        (["images", "--bogus"], "(see 'lamina images --help')"),
        (["image", "bogus"], "(see 'lamina image --help')"),
        (["image", "inspect"], "Missing argument"),
        (["volume", "ls", "--bogus"], "(see 'lamina volume ls --help')"),
        (["build", "--bogus"], "No such option"),
        (["builder", "bogus"], "No such command"),
        (["vm", "bogus"], "No such command"),
        (["vm", "snapshot", "ls", "--bogus"], "(see 'lamina vm snapshot ls --help')"),
        (["info", "--bogus"], "No such option"),
        (["version", "extra"], "unexpected extra argument"),
        (["pull"], "Missing argument 'REFERENCE'"),
        (["tag", "a"], "Missing argument 'TARGET'"),
        (["save", "--format", "zip", "x"], "'zip' is not one of"),
        (["images", "--filter", "nope"], "bad filter 'nope'"),
        (["login", "--password-stdin", "registry.example"], "--password-stdin needs --username"),
        (["ps", "--format", "{{"], "template: :1: unclosed action"),
        (["images", "--format", "{{.Nope}}"], "can't evaluate field Nope in type *ImageRow"),
        (["stats", "--no-stream", "--format", "{{if}}"], "template: :1: missing value for if"),
    ],
)
def test_usage_errors_are_one_line(root: Path, args: list[str], needle: str) -> None:
    assert_usage_error(lamina_cli(root, *args), needle)


@pytest.mark.parametrize("args", [[], ["image"], ["vm"], ["vm", "snapshot"], ["volume"]])
def test_a_bare_group_prints_its_help(root: Path, args: list[str]) -> None:
    r = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "LAMINA_ROOT": str(root)})  # fmt: skip
    assert (r.returncode, r.stderr) == (0, "") and "Commands:" in r.stdout
