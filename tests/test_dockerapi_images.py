"""Docker's image endpoints, driven by the installed docker CLI (and docker-py):
pull, push, images, inspect, history, tag, rmi, save, load, commit, build."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from dockerapi_fixtures import docker_endpoint
from registry_server import RegistryServer
from runtime_fixtures import IMAGE_REF, cli_image_root, lamina_ok


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_image_root(tmp_path_factory, "dockerapi-images")


def test_images_tag_history_push_pull_rmi_save_load(
    image_root: Path, registry: RegistryServer, tmp_path: Path
) -> None:
    name = f"{registry.host}/dockerb/busy:v1"
    with docker_endpoint(image_root) as ep:
        listed = ep.docker_ok("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
        assert "example.com/test/busybox:latest" in listed
        fmt = "{{.Os}} {{json .RepoTags}} {{json .Config.Cmd}} {{len .RootFS.Layers}}"
        shown = ep.docker_ok("image", "inspect", "-f", fmt, IMAGE_REF).split()
        assert shown == ["linux", '["example.com/test/busybox:latest"]', '["/bin/sh"]', "1"]
        ep.docker_ok("tag", IMAGE_REF, name)
        assert name in ep.docker_ok("images", "--filter", f"reference={registry.host}/dockerb/*",
                                    "--format", "{{.Repository}}:{{.Tag}}")  # fmt: skip
        assert IMAGE_REF not in ep.docker_ok("images", "--filter", "reference=nothing*")
        history = ep.docker_ok("history", "--no-trunc", "--format", "{{.ID}} {{.Comment}}", name)
        assert history.startswith("sha256:") and "Imported from" in history

        pushed = ep.docker_ok("push", name)
        assert "The push refers to repository" in pushed
        assert "v1: digest: sha256:" in pushed
        ep.docker_ok("rmi", name)
        assert name not in ep.docker_ok("images", "--format", "{{.Repository}}:{{.Tag}}")
        pulled = ep.docker_ok("pull", name)
        assert "Digest: sha256:" in pulled and pulled.strip().endswith(name)
        missing = ep.docker("pull", f"{registry.host}/dockerb/nothing:here")
        assert missing.returncode != 0 and "nothing" in missing.stderr

        archive = tmp_path / "saved.tar"
        ep.docker_ok("save", "-o", str(archive), name)
        with tarfile.open(archive) as tar:
            manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert manifest[0]["RepoTags"] == [name]
        removed = ep.docker_ok("rmi", name)
        assert f"Untagged: {name}" in removed
        loaded = ep.docker_ok("load", "-i", str(archive))
        assert f"Loaded image: {name}" in loaded
        ep.docker_ok("rmi", name)
        gone = ep.docker("rmi", name)
        assert gone.returncode == 1 and gone.stderr.startswith("Error response from daemon:")


def test_commit(image_root: Path) -> None:
    with docker_endpoint(image_root) as ep:
        cid = lamina_ok(image_root, "run", "-d", IMAGE_REF, "sh", "-c",
                        "echo made > /made; sleep 60").strip()  # fmt: skip
        try:
            ep.docker_ok("commit", "-m", "the message", "-a", "someone", "-c", "ENV MADE=1",
                         cid, "dockerb/committed:v1")  # fmt: skip
            fmt = "{{.Author}}|{{.Comment}}|{{json .Config.Env}}"
            shown = ep.docker_ok("image", "inspect", "-f", fmt, "dockerb/committed:v1")
            author, comment, env = shown.strip().split("|")
            assert (author, comment) == ("someone", "the message") and "MADE=1" in env
            out = lamina_ok(image_root, "run", "--rm", "dockerb/committed:v1", "cat", "/made")
            assert out == "made\n"
        finally:
            lamina_ok(image_root, "rm", "-f", cid)
            ep.docker("rmi", "dockerb/committed:v1")


def test_build_args_target_quiet_and_a_failing_run(image_root: Path, tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {IMAGE_REF} AS first\n"
        "ARG GREETING=hello\n"
        "COPY data.txt /data.txt\n"
        'RUN echo "$GREETING from run" > /greeting && cat /greeting\n'
        "FROM first AS second\n"
        "RUN exit 3\n"
    )  # fmt: skip
    (context / "data.txt").write_text("data\n")
    with docker_endpoint(image_root) as ep:
        out = ep.docker_ok("build", "-t", "dockerb/built:v1", "--build-arg", "GREETING=hi",
                           "--target", "first", str(context))  # fmt: skip
        assert "Step 1/3 : FROM example.com/test/busybox:latest" in out
        assert "hi from run" in out and "Successfully tagged dockerb/built:v1" in out
        quiet = ep.docker_ok("build", "-q", "--target", "first", str(context))
        assert quiet.strip().startswith("sha256:") and "Step" not in quiet
        assert lamina_ok(image_root, "run", "--rm", "dockerb/built:v1", "cat", "/greeting",
                         "/data.txt") == "hi from run\ndata\n"  # fmt: skip
        failed = ep.docker("build", "-t", "dockerb/built:v2", str(context))
        assert failed.returncode == 3, failed.stderr
        assert "RUN exit code 3" in failed.stderr
        assert not list((image_root / "tmp").glob("build-context-*"))
        ep.docker("rmi", "dockerb/built:v1")
