"""``lamina build`` from the CLI, in both modes (in-process and ``--host``: the
daemon's ``POST /v1/build``): the context the build sees (.dockerignore, ``-f``
outside the context, ``-f -``), the options, what a failure prints and its exit
code, bad input as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runtime_fixtures import IMAGE_REF, cli_image_root, error_line, lamina_cli, lamina_ok

pytestmark = [pytest.mark.both_modes, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_image_root(tmp_path_factory, "cli-build")


def write(base: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return base


def test_the_context_is_what_dockerignore_leaves(root: Path, tmp_path: Path) -> None:
    ctx = write(tmp_path / "ctx", {
        "Dockerfile": f"FROM {IMAGE_REF}\nCOPY . /src\n",
        ".dockerignore": "secret*\n!secret-ok\nlogs/\n",
        "app.txt": "app", "secret-key": "no", "secret-ok": "yes", "logs/a.log": "no",
        "sub/b.txt": "b",
    })  # fmt: skip
    lamina_ok(root, "build", "-q", "-t", "ctx/default", str(ctx))
    listed = lamina_ok(root, "run", "--rm", "ctx/default", "find", "/src", "-type", "f")
    assert sorted(listed.split()) == ["/src/.dockerignore", "/src/Dockerfile", "/src/app.txt",
                                      "/src/secret-ok", "/src/sub/b.txt"]  # fmt: skip

    # -f outside the context, with its own ignore file next to it (BuildKit's rule).
    other = write(tmp_path / "other", {
        "App.dockerfile": f"FROM {IMAGE_REF}\nCOPY . /src\n",
        "App.dockerfile.dockerignore": "sub\n*.txt\n!app.txt\n",
    })  # fmt: skip
    lamina_ok(root, "build", "-q", "-t", "ctx/outside", "-f", str(other / "App.dockerfile"),
              str(ctx))  # fmt: skip
    listed = lamina_ok(root, "run", "--rm", "ctx/outside", "find", "/src", "-type", "f")
    assert sorted(listed.split()) == [
        "/src/.dockerignore", "/src/Dockerfile", "/src/app.txt", "/src/logs/a.log",
        "/src/secret-key", "/src/secret-ok",
    ]  # fmt: skip


def test_options_reach_the_build(root: Path, tmp_path: Path) -> None:
    ctx = write(tmp_path / "ctx", {"Dockerfile": (
        f"FROM {IMAGE_REF} AS base\nARG GREETING=none\nRUN echo $GREETING > /greeting\n"
        "FROM base AS extra\nRUN touch /extra\n"
    )})  # fmt: skip
    out = lamina_ok(root, "build", "-q", "-t", "opts/a:1", "-t", "opts/b:2", "--target", "base",
                    "--build-arg", "GREETING=hi there", "--label", "built.by=test",
                    "--network", "none", "--no-cache", str(ctx))  # fmt: skip
    image_id = out.strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71
    assert lamina_ok(root, "run", "--rm", "opts/b:2", "cat", "/greeting") == "hi there\n"
    missing = lamina_cli(root, "run", "--rm", "opts/a:1", "ls", "/extra")
    assert missing.returncode != 0  # --target base: the later stage was not built
    inspected = json.loads(lamina_ok(root, "image", "inspect", "opts/a:1"))[0]
    assert inspected["Id"] == image_id
    assert inspected["Config"]["Labels"] == {"built.by": "test"}


def test_a_dockerfile_on_stdin(root: Path, tmp_path: Path) -> None:
    ctx = write(tmp_path / "ctx", {"data.txt": "from the context\n"})
    dockerfile = f"FROM {IMAGE_REF}\nCOPY data.txt /data.txt\n"
    lamina_ok(root, "build", "-q", "-t", "stdin/df", "-f", "-", str(ctx),
              input=dockerfile.encode())  # fmt: skip
    assert lamina_ok(root, "run", "--rm", "stdin/df", "cat", "/data.txt") == "from the context\n"


def test_a_failing_step_shows_its_output_and_exit_code(root: Path, tmp_path: Path) -> None:
    ctx = write(tmp_path / "ctx", {"Dockerfile": (
        f"FROM {IMAGE_REF}\nRUN echo fine\n\nRUN echo first-line; echo last-words >&2; exit 3\n"
    )})  # fmt: skip
    r = lamina_cli(root, "build", "-q", str(ctx))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert lines[:2] == ["------", " > [3/3] RUN echo first-line; echo last-words >&2; exit 3:"]
    assert lines[2:] == ["first-line", "last-words", "------",
                         "lamina: error: Dockerfile:4: RUN exit code 3"]  # fmt: skip

    r = lamina_cli(root, "build", "--progress", "plain", str(ctx))
    assert r.returncode == 1
    assert "#3 ERROR: " in r.stderr and "last-words" in r.stderr
    assert error_line(r.stderr) == "lamina: error: Dockerfile:4: RUN exit code 3"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["-f", "/no/such/Dockerfile"],
         "lamina: error: cannot read the Dockerfile: /no/such/Dockerfile does not exist"),
        (["--platform", "linux/s390x"], "lamina: error: cannot build for linux/s390x: only the "
         "native platform"),
        (["--build-arg", "=x"], "lamina: error: Invalid value: invalid --build-arg '=x'"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(root: Path, tmp_path: Path, args: list[str], error: str) -> None:
    ctx = write(tmp_path / "ctx", {"Dockerfile": f"FROM {IMAGE_REF}\nRUN true\nRUNN false\n"})
    r = lamina_cli(root, "build", *args, str(ctx))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert error_line(r.stderr).startswith(error), r.stderr
    r = lamina_cli(root, "build", "-q", str(ctx))
    assert (r.returncode, r.stderr) == (1, "lamina: error: Dockerfile:3: unknown instruction: "
                                           "RUNN\n")  # fmt: skip
    r = lamina_cli(root, "build", str(tmp_path / "nowhere"))
    assert r.returncode == 1
    assert error_line(r.stderr) == (f"lamina: error: the build context {tmp_path / 'nowhere'} "
                                    "is not a directory")  # fmt: skip
