"""``lamina build`` end to end: Dockerfiles written here, built with real runc on a
busybox image imported into a tmp root, then run with ``lamina run`` to see what
they do.

What is checked is what a user sees: files, owners and modes in the image, its
config (CMD/ENTRYPOINT, HEALTHCHECK, ...), what the cache reuses (``CACHED`` in
the plain progress, same image ID), and how failures are reported.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from runtime_fixtures import import_busybox, lamina_cli

from lamina.builder import BuildError, BuildOptions, BuildResult, PlainProgress
from lamina.engine import open_engine
from lamina.image import LocalImages

pytestmark = pytest.mark.timeout(120)

BASE = "busybox:latest"
# The CLI with the build commands registered (main.py may not list them yet).
_CLI = (
    "import sys\n"
    "from lamina.cli import main\n"
    "main._COMMANDS.setdefault('build', '_build:build')\n"
    "main._COMMANDS.setdefault('builder', '_build:builder')\n"
    "main.main(sys.argv[1:])\n"
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root (runc, mounts, cgroups)")
    if not (os.path.exists("/usr/sbin/runc") and os.path.exists("/usr/bin/conmon")):
        pytest.skip("needs runc and conmon")
    base = tmp_path_factory.mktemp("build-e2e")
    root = base / "root"
    import_busybox(root, base, BASE)
    return root


def make_context(path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "Dockerfile").write_text(dockerfile)
    for name, content in (files or {}).items():
        f = path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(content)
    return path


def do_build(root: Path, context: Path, **options: Any) -> tuple[BuildResult, str]:
    """Build with the plain progress; returns the result and what was shown."""
    out = io.StringIO()
    with open_engine(root) as engine:
        result = engine.build(BuildOptions(context=context, **options), PlainProgress(out))
    return result, out.getvalue()


def run(root: Path, image: str, *cmd: str) -> str:
    r = lamina_cli(root, "run", "--rm", image, *cmd)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r.stdout


def config_of(root: Path, image: str) -> dict[str, Any]:
    local = LocalImages.open(root)
    try:
        return local.config(local.require(image))
    finally:
        local.close()


def cli_build(root: Path, *args: str, cwd: Path) -> Any:
    import subprocess

    return subprocess.run(
        [sys.executable, "-c", _CLI, "--root", str(root), "build", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def step_states(progress: str) -> dict[str, str]:
    """Step name -> CACHED / DONE / ERROR from the plain progress output."""
    names: dict[str, str] = {}
    states: dict[str, str] = {}
    for line in progress.splitlines():
        num, _, rest = line.partition(" ")
        if rest in ("CACHED",) or rest.startswith(("DONE", "ERROR")):
            states[names[num]] = rest.split()[0].rstrip(":")
        elif rest.startswith("["):
            names[num] = rest.split("] ", 1)[1]
    return states


# -- multi-stage, heredocs -----------------------------------------------------------


def test_multistage_heredocs_and_copy_from(root: Path, tmp_path: Path) -> None:
    ctx = make_context(
        tmp_path,
        f"""\
ARG BASE={BASE}
FROM $BASE AS gen
ARG NAME=demo
RUN <<EOF
mkdir -p /out
echo generated > /out/gen.txt
EOF
RUN <<EOF
#!/bin/sh
echo "from a script" > /out/script.txt
EOF
COPY <<EOF /out/conf.ini
name=$NAME
EOF
COPY <<"EOF" /out/raw.txt
kept $NAME
EOF

FROM {BASE} AS other
RUN echo other > /other.txt

FROM {BASE}
COPY --from=gen /out/ /app/
COPY --from=other /other.txt /app/
CMD ["sh", "-c", "cat /app/gen.txt /app/script.txt /app/conf.ini /app/raw.txt /app/other.txt"]
""",
    )
    result, progress = do_build(root, ctx, tags=["e2e/multistage"])
    assert result.cached == 0
    assert run(root, "e2e/multistage") == (
        "generated\nfrom a script\nname=demo\nkept $NAME\nother\n"
    )
    assert "[gen 2/5] RUN <<EOF" in progress


def test_deleted_files_stay_deleted_across_layers(root: Path, tmp_path: Path) -> None:
    ctx = make_context(
        tmp_path,
        f"""\
FROM {BASE}
RUN mkdir -p /data/old && echo 1 > /data/old/f && echo keep > /data/keep && touch /tmp/t
RUN rm -rf /data/old /tmp/t && echo new > /data/new
RUN mkdir /swap && touch /swap/a
RUN rm -rf /swap && mkdir /swap && touch /swap/b
""",
    )
    do_build(root, ctx, tags=["e2e/whiteouts"])
    out = run(root, "e2e/whiteouts", "sh", "-c", "find /data /swap /tmp | sort")
    assert out.split() == ["/data", "/data/keep", "/data/new", "/swap", "/swap/b", "/tmp"]
    cfg = config_of(root, "e2e/whiteouts")
    assert len(cfg["rootfs"]["diff_ids"]) == 5  # base + one layer per RUN


def test_owners_and_modes(root: Path, tmp_path: Path) -> None:
    ctx = make_context(
        tmp_path,
        f"""\
FROM {BASE}
COPY --chown=app:app --chmod=600 secret.txt /srv/secret.txt
COPY --chown=1000:1000 tree/ /srv/tree/
COPY --chmod=755 run.sh /usr/local/bin/
COPY plain.txt /srv/
RUN stat -c '%n %u:%g %a' /srv/secret.txt /srv/tree /srv/tree/a /srv/tree/sub/b \\
      /srv/plain.txt /usr/local/bin/run.sh > /modes
""",
        {
            "secret.txt": "s",
            "tree/a": "a",
            "tree/sub/b": "b",
            "run.sh": "#!/bin/sh",
            "plain.txt": "p",
        },
    )
    os.chmod(ctx / "plain.txt", 0o640)
    os.chown(ctx / "plain.txt", 1234, 1234)  # COPY from the context gives root:root
    do_build(root, ctx, tags=["e2e/modes"])
    assert run(root, "e2e/modes", "cat", "/modes").splitlines() == [
        "/srv/secret.txt 1000:1000 600",
        "/srv/tree 1000:1000 755",
        "/srv/tree/a 1000:1000 644",
        "/srv/tree/sub/b 1000:1000 644",
        "/srv/plain.txt 0:0 640",
        "/usr/local/bin/run.sh 0:0 755",
    ]


def test_onbuild_triggers_run_in_the_child(root: Path, tmp_path: Path) -> None:
    base_ctx = make_context(
        tmp_path / "base",
        f"""\
FROM {BASE}
ONBUILD COPY trigger.txt /from-onbuild.txt
ONBUILD RUN echo triggered > /triggered
""",
    )
    do_build(root, base_ctx, tags=["e2e/onbuild-base"])
    assert config_of(root, "e2e/onbuild-base")["config"]["OnBuild"] == [
        "COPY trigger.txt /from-onbuild.txt",
        "RUN echo triggered > /triggered",
    ]
    child = make_context(
        tmp_path / "child",
        'FROM e2e/onbuild-base\nCMD ["cat", "/from-onbuild.txt", "/triggered"]\n',
        {"trigger.txt": "child file\n"},
    )
    do_build(root, child, tags=["e2e/onbuild-child"])
    assert run(root, "e2e/onbuild-child") == "child file\ntriggered\n"
    assert "OnBuild" not in config_of(root, "e2e/onbuild-child")["config"]


def test_config_instructions(root: Path, tmp_path: Path) -> None:
    ctx = make_context(
        tmp_path,
        f"""\
FROM {BASE} AS base
CMD ["base-cmd"]

FROM base AS entry
ENTRYPOINT ["echo", "entry"]

FROM base AS both
CMD ["from-cmd"]
ENTRYPOINT ["echo"]

FROM both AS final
HEALTHCHECK --interval=30s --timeout=5s --start-period=2s --start-interval=1s --retries=4 \\
  CMD wget -q -O- localhost || exit 1
EXPOSE 80 53/udp 8000-8001
VOLUME ["/data", "/logs"]
LABEL org.example.title="the app" version=1
STOPSIGNAL SIGINT
SHELL ["/bin/sh", "-ec"]
MAINTAINER someone <someone@example.com>
USER nobody

FROM base AS nohealth
HEALTHCHECK NONE
""",
    )
    do_build(root, ctx, tags=["e2e/entry"], target="entry")
    entry = config_of(root, "e2e/entry")["config"]
    assert entry["Entrypoint"] == ["echo", "entry"]
    assert entry.get("Cmd") is None  # a new ENTRYPOINT drops the inherited CMD
    assert run(root, "e2e/entry") == "entry\n"

    do_build(root, ctx, tags=["e2e/final"], target="final", labels={"extra": "yes"})
    cfg = config_of(root, "e2e/final")
    c = cfg["config"]
    assert c["Entrypoint"] == ["echo"]
    assert c["Cmd"] == ["from-cmd"]  # set in the same stage: kept
    assert c["Healthcheck"] == {
        "Test": ["CMD-SHELL", "wget -q -O- localhost || exit 1"],
        "Interval": 30_000_000_000,
        "Timeout": 5_000_000_000,
        "StartPeriod": 2_000_000_000,
        "StartInterval": 1_000_000_000,
        "Retries": 4,
    }
    assert c["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}}
    assert c["Volumes"] == {"/data": {}, "/logs": {}}
    assert c["Labels"] == {"org.example.title": "the app", "version": "1", "extra": "yes"}
    assert c["StopSignal"] == "SIGINT"
    assert c["Shell"] == ["/bin/sh", "-ec"]
    assert c["User"] == "nobody"
    assert cfg["author"] == "someone <someone@example.com>"
    assert all(h.get("empty_layer") for h in cfg["history"][1:])
    assert run(root, "e2e/final") == "from-cmd\n"

    do_build(root, ctx, tags=["e2e/nohealth"], target="nohealth")
    assert config_of(root, "e2e/nohealth")["config"]["Healthcheck"] == {"Test": ["NONE"]}


def test_workdir_user_args_and_env(root: Path, tmp_path: Path) -> None:
    ctx = make_context(
        tmp_path,
        f"""\
ARG BASE={BASE}
FROM $BASE
ARG WHO=world
ENV GREETING="hello $WHO" WHO=env-wins
ARG WHO
USER app
WORKDIR /home/app/work
RUN echo "$GREETING $WHO $(id -un) $(pwd)" > out.txt
USER root
WORKDIR sub
RUN pwd > /home/app/work/pwd.txt
CMD cat /home/app/work/out.txt /home/app/work/pwd.txt && stat -c '%U' /home/app/work
""",
    )
    result, progress = do_build(root, ctx, tags=["e2e/args"], build_args={"WHO": "cli", "X": "1"})
    assert (
        run(root, "e2e/args") == "hello cli env-wins app /home/app/work\n/home/app/work/sub\napp\n"
    )
    assert result.warnings == ["one or more build-args ['X'] were not consumed"]
    assert "WARNING: one or more build-args ['X'] were not consumed" in progress
    cfg = config_of(root, "e2e/args")["config"]
    assert cfg["WorkingDir"] == "/home/app/work/sub"
    assert cfg["Env"] == [
        "LANG=C.UTF-8",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",  # always set
        "GREETING=hello cli",
        "WHO=env-wins",
    ]


def test_dockerignore_is_honoured(root: Path, tmp_path: Path) -> None:
    ctx = make_context(
        tmp_path,
        f"FROM {BASE}\nCOPY . /ctx/\nCOPY --exclude=**/*.py --exclude=secret . /ex/\n",
        {
            ".dockerignore": "*.log\nsecret/\n!secret/public.txt\n**/tmp\n",
            "app.py": "x",
            "debug.log": "x",
            "secret/key": "x",
            "secret/public.txt": "x",
            "src/tmp/junk": "x",
            "src/main.py": "x",
        },
    )
    do_build(root, ctx, tags=["e2e/ignore"])
    out = run(root, "e2e/ignore", "sh", "-c", "cd /ctx && find . -type f | sort")
    assert out.split() == [
        "./.dockerignore",
        "./Dockerfile",
        "./app.py",
        "./secret/public.txt",
        "./src/main.py",
    ]
    out = run(root, "e2e/ignore", "sh", "-c", "cd /ex && find . -type f | sort")
    assert out.split() == ["./.dockerignore", "./Dockerfile"]


# -- the cache ---------------------------------------------------------------------------


def test_cache_hits_and_partial_rebuild(root: Path, tmp_path: Path) -> None:
    ctx = make_context(
        tmp_path,
        f"""\
FROM {BASE}
RUN echo one > /one
COPY a.txt /a.txt
RUN cat /a.txt > /copy
COPY b.txt /b.txt
CMD ["cat", "/copy", "/b.txt"]
""",
        {"a.txt": "A\n", "b.txt": "B\n"},
    )
    first, progress = do_build(root, ctx, tags=["e2e/cache"])
    assert set(step_states(progress).values()) <= {"DONE", "CACHED"}
    again, progress = do_build(root, ctx, tags=["e2e/cache"])
    assert again.image_id == first.image_id
    assert again.cached == again.steps
    states = step_states(progress)
    assert states and set(states.values()) == {"CACHED"}, progress

    os.utime(ctx / "a.txt", (1, 1))  # mtimes do not count
    (ctx / "b.txt").write_text("B2\n")
    third, progress = do_build(root, ctx, tags=["e2e/cache"])
    states = step_states(progress)
    assert states["RUN echo one > /one"] == "CACHED"
    assert states["COPY a.txt /a.txt"] == "CACHED"
    assert states["RUN cat /a.txt > /copy"] == "CACHED"
    assert states["COPY b.txt /b.txt"] == "DONE"
    assert third.image_id != first.image_id
    assert run(root, "e2e/cache") == "A\nB2\n"

    fresh, progress = do_build(root, ctx, tags=["e2e/cache"], no_cache=True)
    assert "CACHED" not in step_states(progress).values()
    assert fresh.cached == 0


def test_cache_mounts_persist_between_builds(root: Path, tmp_path: Path) -> None:
    ctx = make_context(
        tmp_path,
        f"""\
FROM {BASE}
RUN --mount=type=cache,target=/cache,id=e2e-counter \\
    echo x >> /cache/log && wc -l < /cache/log > /count
""",
    )
    do_build(root, ctx, tags=["e2e/cachemount"], no_cache=True)
    first = int(run(root, "e2e/cachemount", "cat", "/count"))
    do_build(root, ctx, tags=["e2e/cachemount"], no_cache=True)
    assert int(run(root, "e2e/cachemount", "cat", "/count")) == first + 1
    # The mount point itself is not part of the image.
    assert run(root, "e2e/cachemount", "sh", "-c", "test -e /cache || echo absent") == "absent\n"


def test_deterministic_with_source_date_epoch(root: Path, tmp_path: Path) -> None:
    ctx = make_context(
        tmp_path,
        f"FROM {BASE}\nCOPY f.txt /f.txt\nRUN echo built > /built\nENV A=1\n",
        {"f.txt": "f"},
    )
    one, _ = do_build(root, ctx, no_cache=True, source_date_epoch=1_700_000_000)
    two, _ = do_build(root, ctx, no_cache=True, source_date_epoch=1_700_000_000)
    assert one.image_id == two.image_id
    cfg = config_of(root, one.image_id)
    assert cfg["created"] == "2023-11-14T22:13:20Z"


# -- stages, mounts, ADD ---------------------------------------------------------------


def test_target_builds_only_what_it_needs(root: Path, tmp_path: Path) -> None:
    ctx = make_context(
        tmp_path,
        f"""\
FROM {BASE} AS broken
RUN exit 1

FROM {BASE} AS dep
RUN echo dep > /dep

FROM {BASE} AS wanted
COPY --from=dep /dep /dep
CMD ["cat", "/dep"]

FROM broken
""",
    )
    _, progress = do_build(root, ctx, tags=["e2e/target"], target="wanted")
    assert "broken" not in progress
    assert run(root, "e2e/target") == "dep\n"


def test_run_mounts_bind_tmpfs_and_secret(root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret")
    ctx = make_context(
        tmp_path / "ctx",
        f"""\
FROM {BASE} AS gen
RUN mkdir /out && echo from-stage > /out/data

FROM {BASE}
RUN --mount=type=bind,from=gen,source=/out,target=/in \\
    --mount=type=bind,source=input.txt,target=/input.txt \\
    --mount=type=tmpfs,target=/scratch \\
    --mount=type=secret,id=token,mode=0440 \\
    cat /in/data /input.txt > /result && \\
    touch /scratch/x && \\
    test "$(cat /run/secrets/token)" = s3cret && stat -c %a /run/secrets/token >> /result
""",
        {"input.txt": "from-context\n"},
    )
    do_build(root, ctx, tags=["e2e/mounts"], secrets={"token": ("file", str(secret))})
    assert run(root, "e2e/mounts", "cat", "/result") == "from-stage\nfrom-context\n440\n"
    leftovers = run(
        root, "e2e/mounts", "sh", "-c", "ls -d /in /input.txt /scratch /run/secrets 2>&1 || true"
    )
    assert "No such file" in leftovers and "/in\n" not in leftovers


def test_add_extracts_archives_and_fetches_urls(root: Path, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "remote.txt").write_text("remote\n")
    digest = "sha256:" + hashlib.sha256(b"remote\n").hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ctx = make_context(tmp_path / "ctx", "")
        with tarfile.open(ctx / "bundle.tar.gz", "w:gz") as tar:
            for name, data in (("top.txt", b"top\n"), ("dir/inner.txt", b"inner\n")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.uid = info.gid = 42
                tar.addfile(info, io.BytesIO(data))
        url = f"http://127.0.0.1:{server.server_address[1]}/remote.txt"
        (ctx / "Dockerfile").write_text(
            f"FROM {BASE}\n"
            "ADD bundle.tar.gz /unpacked/\n"
            f"ADD --checksum={digest} {url} /downloads/\n"
            "COPY bundle.tar.gz /copied/\n"
        )
        do_build(root, ctx, tags=["e2e/add"])
        out = run(
            root, "e2e/add", "sh", "-c",
            "cat /unpacked/top.txt /unpacked/dir/inner.txt /downloads/remote.txt;"
            " stat -c '%u %a' /unpacked/top.txt /downloads/remote.txt; ls /copied",
        )  # fmt: skip
        assert out == "top\ninner\nremote\n42 644\n0 600\nbundle.tar.gz\n"
        (ctx / "Dockerfile").write_text(f"FROM {BASE}\nADD --checksum=sha256:{'0' * 64} {url} /x\n")
        with pytest.raises(BuildError, match=r"Dockerfile:2: checksum of .* is sha256:"):
            do_build(root, ctx)
    finally:
        server.shutdown()


# -- the CLI ---------------------------------------------------------------------------


def test_cli_failing_run_shows_line_exit_code_and_output(root: Path, tmp_path: Path) -> None:
    ctx = make_context(
        tmp_path,
        f"FROM {BASE}\nRUN echo fine\n\n"
        "RUN echo first-line; echo last-words >&2; exit 3\nRUN echo never\n",
    )
    r = cli_build(root, "-q", ".", cwd=ctx)
    assert r.returncode == 1
    assert "lamina: error: Dockerfile:4: RUN exit code 3" in r.stderr
    assert "last-words" in r.stderr and "first-line" in r.stderr
    assert "Traceback" not in r.stderr

    r = cli_build(root, "--progress", "plain", ".", cwd=ctx)
    assert r.returncode == 1
    assert "last-words" in r.stderr
    assert r.stderr.rstrip().endswith("lamina: error: Dockerfile:4: RUN exit code 3")

    (ctx / "Dockerfile").write_text(f"FROM {BASE}\nRUN true\nRUNN false\n")
    r = cli_build(root, ".", cwd=ctx)
    assert r.returncode == 1
    assert r.stderr.strip() == "lamina: error: Dockerfile:3: unknown instruction: RUNN"


def test_cli_tags_iidfile_labels_and_archive_output(root: Path, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", f'FROM {BASE}\nRUN echo hi > /hi\nCMD ["cat", "/hi"]\n')
    iid = tmp_path / "iid"
    archive = tmp_path / "image.tar"
    r = cli_build(
        root, "-q", "-t", "e2e/cli:one", "-t", "e2e/cli:two", "--iidfile", str(iid),
        "--label", "built.by=test", "--output", f"type=docker,dest={archive}", ".",
        cwd=ctx,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    image_id = r.stdout.strip()
    assert image_id.startswith("sha256:") and iid.read_text() == image_id
    assert run(root, "e2e/cli:one") == "hi\n"
    assert config_of(root, "e2e/cli:two")["config"]["Labels"] == {"built.by": "test"}
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest[0]["RepoTags"] == ["e2e/cli:one"]

    r = cli_build(root, "--platform", "linux/s390x", ".", cwd=ctx)
    assert r.returncode == 1 and "only the native platform" in r.stderr


def test_cli_push_with_zstd_layers(root: Path, tmp_path: Path, registry: Any) -> None:
    from lamina.registry import pull

    ctx = make_context(tmp_path / "ctx", f'FROM {BASE}\nRUN echo pushed > /p\nCMD ["cat", "/p"]\n')
    ref = f"{registry.host}/e2e/pushed:1"
    r = cli_build(root, "-q", "--compression", "zstd", "-t", ref, "--push", ".", cwd=ctx)
    assert r.returncode == 0, r.stderr
    other = tmp_path / "other"
    local = LocalImages.open(other)
    try:
        record = pull(local, ref)
        layers = local.manifest_for(record.manifest_digest).layers
        assert layers[-1].media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
        assert record.id == r.stdout.strip()
    finally:
        local.close()
    assert run(other, ref) == "pushed\n"


def test_builder_prune_drops_the_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    base = tmp_path_factory.mktemp("prune")
    root = base / "root"
    import_busybox(root, base, BASE)
    ctx = make_context(base / "ctx", f"FROM {BASE}\nRUN echo x > /x\n")
    do_build(root, ctx, tags=["pruned"])
    local = LocalImages.open(root)
    try:
        before = len(local.images.list())
    finally:
        local.close()
    import subprocess

    r = subprocess.run(
        [sys.executable, "-c", _CLI, "--root", str(root), "builder", "prune", "-f"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    assert "cached steps" in r.stdout
    local = LocalImages.open(root)
    try:
        # The intermediate layer-stack images went; busybox and the tagged image stay.
        assert before > 2
        assert sorted(n for rec in local.images.list() for n in rec.names) == [
            "docker.io/library/busybox:latest",
            "docker.io/library/pruned:latest",
        ]
    finally:
        local.close()
    again, progress = do_build(root, ctx)
    assert again.cached == 0
    assert step_states(progress)["RUN echo x > /x"] == "DONE"


@pytest.fixture(autouse=True)
def _no_leftover_mounts(root: Path) -> Iterator[None]:
    yield
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(root) + "/build-tmp" not in mounts


# -- buildah as an oracle ----------------------------------------------------------------

ORACLE_FILES = {
    "secret.txt": "s\n",
    "plain.txt": "p\n",
    "tree/a": "a\n",
    "tree/sub/b": "b\n",
    "src/x/one.txt": "1\n",
    "src/y/two.txt": "2\n",
    "src/three.md": "3\n",
}
ORACLE_DOCKERFILE = f"""\
FROM {BASE} AS build
RUN mkdir -p /out/sub && echo hi > /out/sub/f && chown -R 1000:1000 /out \\
    && chmod 700 /out/sub && ln -s sub/f /out/link
RUN mkdir -p /var/lib && ln -s /var/lib /linkdir && mkdir -p /etc/conf.d && chmod 711 /etc/conf.d

FROM build
COPY --chown=app:app secret.txt /srv/new/deep/secret.txt
COPY --chown=1000:1000 tree/ /srv/tree/
COPY tree /srv/tree2
COPY plain.txt link.txt /srv/files/
COPY --from=build /out /copied
COPY --from=build --chown=2:2 /out/sub /chowned
COPY src/*/*.txt /wild/
COPY src /linkdir/srcdir
COPY src/ /etc/conf.d
ADD src.tgz /added
USER app
WORKDIR /home/app/work/deeper
USER root
WORKDIR /opt/wd
COPY . .
RUN rm -rf /bin/vi /etc/group /opt/wd/src/y && echo x > /etc/passwd.extra
EXPOSE 80 53/udp
VOLUME /data
ENV A=1 B="x y"
LABEL l=1
STOPSIGNAL SIGINT
ENTRYPOINT ["/bin/sh"]
CMD ["-c", "true"]
"""
# Buildah leaves the mount points of its own RUN containers in the image.
_BUILDAH_ARTIFACTS = {"etc/hostname", "run"}


def _tree(local: LocalImages, image: str, dest: Path) -> dict[str, tuple[int, int, int, str]]:
    """The image's root filesystem as path -> (mode, uid, gid, content/link digest)."""
    from lamina.image import apply_layer, open_decompressed

    record = local.require(image)
    for layer in local.manifest_for(record.manifest_digest).layers:
        with local.content.open(layer.digest) as blob, open_decompressed(blob) as stream:
            apply_layer(stream, dest)
    out = {}
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if os.path.islink(path):
                body = "-> " + os.readlink(path)
            elif os.path.isfile(path):
                body = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            else:
                body = ""
            out[os.path.relpath(path, dest)] = (st.st_mode, st.st_uid, st.st_gid, body)
    return out


def test_same_filesystem_and_config_as_buildah(root: Path, tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed")
    storage = ["--root", str(tmp_path / "b-root"), "--runroot", str(tmp_path / "b-run")]
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_CONFIG"}

    def buildah(*args: str) -> str:
        r = subprocess.run(["buildah", *storage, *args], capture_output=True, text=True, env=env)
        assert r.returncode == 0, (args, r.stderr)
        return r.stdout

    ctx = make_context(tmp_path / "ctx", ORACLE_DOCKERFILE, ORACLE_FILES)
    os.symlink("plain.txt", ctx / "link.txt")
    os.chmod(ctx / "src", 0o750)
    with tarfile.open(ctx / "src.tgz", "w:gz") as tar:
        tar.add(ctx / "src", arcname=".")
    from lamina.image import load, save

    local = LocalImages.open(root)
    try:
        save(local, [BASE], tmp_path / "base.tar", format="oci-archive")
    finally:
        local.close()
    try:
        buildah("pull", "-q", f"oci-archive:{tmp_path / 'base.tar'}")
        buildah("tag", buildah("images", "-q").split()[0], f"docker.io/library/{BASE}")
        buildah(
            "bud", "--runtime", "runc", "--network", "none", "--format", "docker", "-q",
            "-t", "oracle", str(ctx),
        )  # fmt: skip
        buildah("push", "oracle", f"oci-archive:{tmp_path / 'oracle.tar'}")
    finally:
        subprocess.run(["buildah", *storage, "rm", "--all"], capture_output=True, env=env)
        subprocess.run(
            ["buildah", *storage, "rmi", "--all", "--force"], capture_output=True, env=env
        )
    do_build(root, ctx, tags=["e2e/oracle"])

    theirs_root = LocalImages.open(tmp_path / "theirs")
    ours_root = LocalImages.open(root)
    try:
        (theirs,) = load(theirs_root, tmp_path / "oracle.tar")
        expected = _tree(theirs_root, theirs.id, tmp_path / "theirs-fs")
        got = _tree(ours_root, "e2e/oracle", tmp_path / "ours-fs")
        for path in _BUILDAH_ARTIFACTS:
            expected.pop(path, None)
        assert got == expected
        want = theirs_root.config(theirs)["config"]
        have = ours_root.config(ours_root.require("e2e/oracle"))["config"]
        want.get("Labels", {}).pop("io.buildah.version", None)
        for key in ("Env", "Entrypoint", "Cmd", "WorkingDir", "User", "ExposedPorts", "Volumes",
                    "Labels", "StopSignal"):  # fmt: skip
            assert have.get(key) == want.get(key), key
    finally:
        theirs_root.close()
        ours_root.close()
