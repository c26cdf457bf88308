"""End-to-end tests of the image commands through the real ``lamina`` CLI.

Every test runs ``python -m lamina.cli.main --root <tmp>/root ...`` in a subprocess, as
a user would, against real registries (tests/registry_server.py) and real archives,
and checks what a user sees: stdout tables and JSON, one-line errors on stderr, exit
codes, files on disk (Docker's config.json, the content store).
"""

from __future__ import annotations

import base64
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from registry_server import RegistryServer, TestCA, TestImage, build_index, layer_tar, skopeo

from lamina.testing import make_busybox_rootfs

ID_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
ANSI = "\x1b["


@dataclass
class Result:
    code: int
    out: str
    err: str


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # os.environ already points DOCKER_CONFIG/LAMINA_REGISTRIES_CONFIG into tmp_path
    # (conftest's autouse fixture); LAMINA_ROOT must never leak in from the host.
    env = {k: v for k, v in os.environ.items() if k != "LAMINA_ROOT"}
    env.pop("COLUMNS", None)
    env.update(extra or {})
    return env


@dataclass
class Cli:
    """``lamina --root ROOT ...`` in a subprocess."""

    root: Path

    def run(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> Result:
        cmd = [sys.executable, "-m", "lamina.cli.main", "--root", str(self.root), *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, env=_env(env), timeout=60
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, **kwargs: object) -> str:
        r = self.run(*args, **kwargs)  # type: ignore[arg-type]
        assert r.code == 0, f"lamina {' '.join(args)} failed ({r.code}): {r.err}"
        return r.out

    def fail(self, *args: str, **kwargs: object) -> str:
        """Run a command that must fail with one ``lamina: error:`` line; return it."""
        r = self.run(*args, **kwargs)  # type: ignore[arg-type]
        assert r.code != 0, f"lamina {' '.join(args)} succeeded: {r.out}"
        lines = r.err.splitlines()
        assert len(lines) == 1, r.err
        assert lines[0].startswith("lamina: error: "), r.err
        return lines[0]

    def blobs(self) -> set[str]:
        d = self.root / "content" / "blobs" / "sha256"
        return {p.name for p in d.iterdir()} if d.is_dir() else set()

    def state(self) -> set[str]:
        """Every file under the root but the databases (they change on open)."""
        if not self.root.exists():
            return set()
        return {
            str(p.relative_to(self.root))
            for p in self.root.rglob("*")
            if not re.search(r"\.db(-wal|-shm|-journal)?$|\.lock$", p.name)
        }

    def images(self) -> list[dict[str, object]]:
        """One entry an image (``Id``, ``RepoTags``, ``Dangling``), from the rows of
        ``images --format json`` (one a name, as Docker prints them)."""
        out: dict[str, dict[str, object]] = {}
        for line in self.ok("images", "--no-trunc", "--format", "json").splitlines():
            row = json.loads(line)
            image = out.setdefault(row["ID"], {"Id": row["ID"], "RepoTags": []})
            if row["Tag"] != "<none>":
                image["RepoTags"].append(f"{row['Repository']}:{row['Tag']}")  # type: ignore[attr-defined]
        for image in out.values():
            image["Dangling"] = not image["RepoTags"]
        return list(out.values())

    def inspect(self, name: str) -> dict[str, object]:
        (obj,) = json.loads(self.ok("image", "inspect", name))
        return obj  # type: ignore[no-any-return]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "root")


@pytest.fixture
def new_cli(tmp_path: Path) -> Callable[[str], Cli]:
    """Another lamina root in the same test (a second machine)."""
    return lambda name: Cli(tmp_path / name)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_busybox_rootfs(tmp_path / "rootfs")


def _table(out: str) -> tuple[list[str], list[list[str]]]:
    """Split a lamina table on runs of 2+ spaces: (headers, rows)."""
    lines = out.rstrip("\n").splitlines()
    split = [re.split(r"\s{2,}", line.strip()) for line in lines]
    return split[0], split[1:]


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def _stored(cli: Cli, image: TestImage, name: str) -> None:
    """Put ``image`` into cli's root through the library (setup, not the thing tested)."""
    from lamina.image import LocalImages

    local = LocalImages.open(cli.root)
    try:
        image.store(local, name)
    finally:
        local.close()


# --------------------------------------------------------------------------- import, images


def test_import_then_list_images(cli: Cli, rootfs: Path) -> None:
    out = cli.ok(
        "import",
        str(rootfs),
        "bb:1",
        "--change",
        'CMD ["/bin/sh", "-c", "echo hi"]',
        "--change",
        "ENV FOO=bar",
        "-m",
        "first import",
    )
    image_id = out.strip()
    assert ID_RE.match(image_id)

    headers, rows = _table(cli.ok("images"))
    assert headers == ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
    assert len(rows) == 1
    repo, tag, short_id, created, size = rows[0]
    assert (repo, tag, short_id) == ("bb", "1", _short(image_id))
    assert created.endswith("ago")
    assert re.fullmatch(r"[\d.]+(B|kB|MB)", size)

    (listed,) = cli.images()
    assert listed["Id"] == image_id
    assert listed["RepoTags"] == ["bb:1"]
    assert listed["Dangling"] is False
    assert cli.ok("images", "-q").split() == [_short(image_id)]
    assert cli.ok("images", "-q", "--no-trunc").split() == [image_id]

    headers, rows = _table(cli.ok("images", "--digests"))
    assert headers == ["REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE"]
    assert rows[0][:4] == ["bb", "1", "<none>", _short(image_id)]  # never pushed or pulled

    config = cli.inspect("bb:1")["Config"]
    assert config["Cmd"] == ["/bin/sh", "-c", "echo hi"]  # type: ignore[index]
    assert "FOO=bar" in config["Env"]  # type: ignore[index]
    assert cli.inspect("bb:1")["History"][0]["comment"] == "first import"  # type: ignore[index]

    # Docker's familiar names: Hub's domain and library/ dropped, others kept.
    cli.ok("tag", "bb:1", "registry.example:5000/team/app:v2")
    cli.ok("tag", "bb:1", "docker.io/library/bb:2")
    names = {(r[0], r[1]) for r in _table(cli.ok("images"))[1]}
    assert names == {("bb", "1"), ("bb", "2"), ("registry.example:5000/team/app", "v2")}
    assert cli.ok("images", "-q").split() == [_short(image_id)]  # one ID, not one per tag

    ref_rows = _table(cli.ok("images", "--filter", "reference=bb*"))[1]
    assert sorted((r[0], r[1]) for r in ref_rows) == [("bb", "1"), ("bb", "2")]
    ref_rows = _table(cli.ok("images", "--filter", "reference=*/team/app:v2"))[1]
    assert [(r[0], r[1]) for r in ref_rows] == [("registry.example:5000/team/app", "v2")]
    assert [r[1] for r in _table(cli.ok("images", "bb:2"))[1]] == ["2"]
    assert _table(cli.ok("images", "--filter", "dangling=true"))[1] == []

    # Re-importing under its only tag leaves the first image dangling.
    cli.ok("rmi", "bb:2", "registry.example:5000/team/app:v2")
    (rootfs / "etc" / "motd").write_text("second\n")
    second = cli.ok("import", str(rootfs), "bb:1").strip()
    assert second != image_id
    (dangling,) = _table(cli.ok("images", "--filter", "dangling=true"))[1]
    assert dangling[:3] == ["<none>", "<none>", _short(image_id)]
    assert cli.ok("images", "-q", "-f", "dangling=true").split() == [_short(image_id)]
    assert cli.ok("images", "-q", "-f", "dangling=false").split() == [_short(second)]
    assert [i["Dangling"] for i in cli.images() if i["Id"] == image_id] == [True]

    bad = cli.run("images", "--filter", "colour=red")
    assert bad.code != 0 and "unknown filter" in bad.err


def test_tag_and_rmi(cli: Cli, rootfs: Path) -> None:
    image_id = cli.ok("import", str(rootfs), "bb:1").strip()
    blobs = cli.blobs()
    assert len(blobs) == 3  # layer, config, manifest
    cli.ok("tag", "bb:1", "bb:2")
    cli.ok("tag", _short(image_id), "other/bb")  # by short ID; tag defaults to latest
    assert cli.inspect("bb:1")["RepoTags"] == ["bb:1", "bb:2", "other/bb:latest"]

    # By tag, with other tags left: only untagged.
    assert cli.ok("rmi", "bb:2") == "Untagged: bb:2\n"
    assert cli.blobs() == blobs

    # By ID with several tags: refused without -f, and nothing changes.
    line = cli.fail("rmi", _short(image_id))
    assert "must be forced" in line and "multiple repositories" in line
    assert cli.inspect(image_id)["RepoTags"] == ["bb:1", "other/bb:latest"]

    # Unknown image: one line, exit 1, the known one untouched.
    r = cli.run("rmi", "nosuch:1")
    assert r.code == 1 and r.err == "lamina: error: no such image: nosuch:1\n"
    assert cli.blobs() == blobs

    # Several names: each error reported, the others still removed, exit 1.
    r = cli.run("rmi", "nosuch:2", "other/bb")
    assert r.code == 1
    assert r.err == "lamina: error: no such image: nosuch:2\n"
    assert r.out == "Untagged: other/bb:latest\n"

    # The last tag goes with the image and its blobs.
    out = cli.ok("rmi", "bb:1")
    assert out.splitlines() == ["Untagged: bb:1", f"Deleted: {image_id}", *out.splitlines()[2:]]
    assert cli.images() == []
    assert cli.blobs() == set()

    # -f deletes an image with several tags at once.
    image_id = cli.ok("import", str(rootfs), "a:1").strip()
    cli.ok("tag", "a:1", "b:1")
    out = cli.ok("image", "rm", "-f", image_id)
    assert {"Untagged: a:1", "Untagged: b:1", f"Deleted: {image_id}"} <= set(out.splitlines())
    assert cli.images() == [] and cli.blobs() == set()


# --------------------------------------------------------------------------- registry


def test_push_rmi_pull_round_trip(
    cli: Cli, rootfs: Path, registry: RegistryServer, new_cli: Callable[[str], Cli]
) -> None:
    ref = f"{registry.host}/cli/roundtrip:1"
    image_id = cli.ok("import", str(rootfs), ref, "--change", "WORKDIR /tmp").strip()
    out = cli.ok("push", ref)
    pushed = re.search(r"^Digest: (sha256:[0-9a-f]{64})$", out, re.M)
    assert pushed, out
    digest = pushed.group(1)
    assert digest == cli.inspect(ref)["Digest"]

    assert cli.ok("rmi", ref).startswith(f"Untagged: {ref}\nDeleted: {image_id}\n")
    assert cli.images() == [] and cli.blobs() == set()

    out = cli.ok("pull", ref)
    assert f"Digest: {digest}" in out.splitlines()
    info = cli.inspect(ref)
    assert info["Id"] == image_id
    assert info["Digest"] == digest
    assert info["RepoTags"] == [ref]
    assert info["RepoDigests"] == [f"{registry.host}/cli/roundtrip@{digest}"]
    assert info["Os"] == "linux" and info["Architecture"]
    assert info["Config"] == {"WorkingDir": "/tmp"}
    rootfs_info = info["RootFS"]
    assert rootfs_info["type"] == "layers"  # type: ignore[index]
    assert len(rootfs_info["diff_ids"]) == 1  # type: ignore[index]
    assert info["Unpacked"] is True

    # The digest column now shows the registry digest.
    row = _table(cli.ok("images", "--digests"))[1][0]
    assert row[:4] == [f"{registry.host}/cli/roundtrip", "1", digest, _short(image_id)]

    # Pull by digest on another machine; -q prints only the ID.
    other = new_cli("other")
    assert other.ok("pull", "-q", f"{registry.host}/cli/roundtrip@{digest}") == image_id + "\n"
    assert other.inspect(image_id)["RepoTags"] == []


def test_pull_policy_never_for_an_absent_image(cli: Cli, registry: RegistryServer) -> None:
    line = cli.fail("pull", "--policy", "never", f"{registry.host}/cli/absent:1")
    assert "not present locally" in line
    assert cli.blobs() == set()


def test_pull_platform_from_a_two_platform_index(
    cli: Cli, registry: RegistryServer, tmp_path: Path, new_cli: Callable[[str], Cli]
) -> None:
    index = build_index(
        {
            "linux/amd64": [layer_tar({"etc/arch": b"amd64\n"})],
            "linux/arm64/v8": [layer_tar({"etc/arch": b"arm64\n"})],
        }
    )
    ref = f"{registry.host}/cli/multi:1"
    # Published whole by skopeo (lamina load keeps one platform of an index).
    layout = index.write_oci_layout(tmp_path / "layout", tag="1")
    res = skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{layout}:1", f"docker://{ref}")
    assert res.returncode == 0, res.stderr

    arm = new_cli("arm")
    arm.ok("pull", "-q", "--platform", "linux/arm64", ref)
    info = arm.inspect(ref)
    assert info["Digest"] == index.target
    assert info["ManifestDigest"] == index.manifests[1]
    assert (info["Architecture"], info["Variant"], info["Os"]) == ("arm64", "v8", "linux")
    assert info["Id"] == index.config_digest(index.manifests[1])
    # Only the arm64 layer was fetched.
    assert index.layers(index.manifests[0])[0].removeprefix("sha256:") not in arm.blobs()
    assert index.layers(index.manifests[1])[0].removeprefix("sha256:") in arm.blobs()

    line = new_cli("s390x").fail("pull", "--platform", "linux/s390x", ref)
    assert "linux/s390x" in line
    assert new_cli("s390x").blobs() == set()
    line = arm.fail("pull", "--platform", "nope", ref)
    assert "nope" in line


# --------------------------------------------------------------------------- archives


@pytest.mark.parametrize("fmt", ["oci-archive", "docker-archive"])
def test_save_then_load_into_a_fresh_root(
    fmt: str, cli: Cli, rootfs: Path, tmp_path: Path, new_cli: Callable[[str], Cli]
) -> None:
    image_id = cli.ok("import", str(rootfs), "bb:1", "--change", "USER nobody").strip()
    cli.ok("tag", "bb:1", "example.org/bb:2")
    archive = tmp_path / f"bb.{fmt}.tar"
    assert cli.ok("save", "--format", fmt, "-o", str(archive), "bb:1", "example.org/bb:2") == ""
    assert archive.is_file()

    fresh = new_cli("fresh")
    out = fresh.ok("load", "-i", str(archive))
    assert set(out.splitlines()) == {"Loaded image: bb:1", "Loaded image: example.org/bb:2"}
    info = fresh.inspect("bb:1")
    assert info["Id"] == image_id
    assert info["Config"] == {"User": "nobody"}
    assert fresh.inspect("example.org/bb:2")["Id"] == image_id

    if fmt == "oci-archive":
        # skopeo reads the archive lamina wrote and sees the same manifest.
        # ref.name holds the tag (containerd's convention), the full name goes in
        # io.containerd.image.name.
        res = skopeo("inspect", f"oci-archive:{archive}:1")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["Digest"] == cli.inspect("bb:1")["Digest"]


def _cmd(cli: Cli, *args: str) -> list[str]:
    return [sys.executable, "-m", "lamina.cli.main", "--root", str(cli.root), *args]


def test_save_to_a_pipe_and_load_or_import_from_one(
    cli: Cli, rootfs: Path, new_cli: Callable[[str], Cli]
) -> None:
    """``lamina save bb | lamina load`` and ``tar -c . | lamina import -``, as with docker."""
    image_id = cli.ok("import", str(rootfs), "bb:1")
    fresh = new_cli("fresh")
    with subprocess.Popen(_cmd(cli, "save", "bb:1"), stdout=subprocess.PIPE, env=_env()) as save:
        loaded = subprocess.run(
            _cmd(fresh, "load"), stdin=save.stdout, capture_output=True, text=True, env=_env()
        )
    assert save.returncode == 0 and loaded.returncode == 0, loaded.stderr
    assert loaded.stdout == "Loaded image: bb:1\n"
    assert fresh.inspect("bb:1")["Id"] == image_id.strip()

    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(
        _cmd(fresh, "import", "-", "fromtar:1"),
        stdin=tar.stdout,
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert tar.wait() == 0 and imported.returncode == 0, imported.stderr
    assert fresh.inspect("fromtar:1")["History"][0]["comment"] == "Imported from -"  # type: ignore[index]


def test_skopeo_inspects_a_single_image_oci_archive(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    cli.ok("import", str(rootfs), "bb:1")
    archive = tmp_path / "one.tar"
    cli.ok("save", "--format", "oci-archive", "-o", str(archive), "bb:1")
    res = skopeo("inspect", f"oci-archive:{archive}")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["Digest"] == cli.inspect("bb:1")["Digest"]


# --------------------------------------------------------------------------- login


def test_login_push_pull_logout(
    cli: Cli,
    rootfs: Path,
    auth_registry: RegistryServer,
    tmp_path: Path,
    new_cli: Callable[[str], Cli],
) -> None:
    host = auth_registry.host
    ref = f"{host}/private/bb:1"
    config_json = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    cli.ok("import", str(rootfs), ref)

    line = cli.fail("push", "-q", ref)
    assert "lamina login" in line

    line = cli.fail("login", "-u", "alice", "--password-stdin", host, input="nope\n")
    assert "wrong username or password" in line
    assert not config_json.exists()  # nothing saved for a refused login

    out = cli.ok("login", "-u", "alice", "--password-stdin", host, input="wonderland\n")
    assert out == "Login Succeeded\n"
    saved = json.loads(config_json.read_text())
    assert saved["auths"][host]["auth"] == base64.b64encode(b"alice:wonderland").decode()
    assert config_json.stat().st_mode & 0o077 == 0

    digest = re.findall(r"Digest: (\S+)", cli.ok("push", ref))
    other = new_cli("other")
    other.ok("pull", "-q", ref)
    assert [other.inspect(ref)["Digest"]] == digest

    assert cli.ok("logout", host) == f"Removing login credentials for {host}\n"
    assert host not in json.loads(config_json.read_text()).get("auths", {})
    assert cli.ok("logout", host) == f"Not logged in to {host}\n"
    new_cli("third").fail("pull", ref)

    # A scheme and path in the server address are accepted, as with docker.
    cli.ok("login", "-u", "bob", "-p", "builder", f"http://{host}/v2/")
    assert host in json.loads(config_json.read_text())["auths"]


# --------------------------------------------------------------------------- prune


def test_image_prune_removes_dangling_images_and_their_blobs(cli: Cli, rootfs: Path) -> None:
    first = cli.ok("import", str(rootfs), "bb:1").strip()
    assert len(cli.blobs()) == 3
    (rootfs / "etc" / "motd").write_text("v2\n")
    second = cli.ok("import", str(rootfs), "bb:1").strip()  # first is now dangling
    third = cli.ok("import", str(rootfs), "keep:1").strip()
    blobs_before = cli.blobs()
    assert len(blobs_before) == 3 + 3 + 2  # the two last share their layer

    out = cli.ok("image", "prune", "-f")
    assert f"Deleted: {first}" in out.splitlines()
    assert {i["Id"] for i in cli.images()} == {second, third}
    assert len(cli.blobs()) == 5  # the first image's layer, config and manifest went
    assert cli.blobs() < blobs_before
    assert cli.ok("image", "prune", "-f").strip() == ""  # nothing left to prune

    out = cli.ok("image", "prune", "-a", "-f")
    assert {f"Deleted: {second}", f"Deleted: {third}"} <= set(out.splitlines())
    assert cli.images() == [] and cli.blobs() == set()


# --------------------------------------------------------------------------- info


def test_version_info_and_help(cli: Cli, rootfs: Path) -> None:
    out = cli.ok("version")
    assert re.search(r"^ Version:\s+\d+\.\d+", out, re.M)
    version = json.loads(cli.ok("version", "--format", "json"))
    assert version["Client"]["Version"] and version["Client"]["Os"] == "linux"
    assert version["Client"]["Version"] in cli.ok("--version")

    info = json.loads(cli.ok("info", "--format", "json"))
    assert info["Root"] == str(cli.root) and info["Images"] == 0
    assert not (cli.root / "images.db").exists()  # info does not create a store
    cli.ok("import", str(rootfs), "bb:1")
    info = json.loads(cli.ok("info", "--format", "json"))
    assert info["Images"] == 1 and info["Blobs"]["Count"] == 3
    assert info["Platform"].startswith("linux/")
    text = cli.ok("info")
    assert f"Root: {cli.root}" in text and "Images: 1" in text

    help_text = cli.ok("--help")
    for command in (
        "pull", "push", "images", "rmi", "tag", "save", "load", "import", "login", "logout",
        "image", "inspect", "version", "info",
    ):  # fmt: skip
        assert re.search(rf"^\s+{command}\s+\S", help_text, re.M), command
    image_help = cli.ok("image", "--help")
    for sub in ("ls", "rm", "prune", "inspect"):
        assert re.search(rf"^\s+{sub}\b", image_help, re.M), sub
    assert _table(cli.ok("image", "ls"))[1][0][:2] == ["bb", "1"]
    assert _table(cli.ok("ls"))[1][0][:2] == ["bb", "1"]


def test_lamina_root_from_the_environment(tmp_path: Path, rootfs: Path) -> None:
    root = tmp_path / "env-root"
    env = _env({"LAMINA_ROOT": str(root)})

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lamina.cli.main", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )

    image_id = run("import", str(rootfs), "envbb:1").stdout.strip()
    assert (root / "images.db").exists()
    assert run("images", "-q", "--no-trunc").stdout.split() == [image_id]
    assert json.loads(run("info", "--format", "json").stdout)["Root"] == str(root)
    # --root wins over the environment.
    assert Cli(tmp_path / "flag-root").ok("images", "-q", env={"LAMINA_ROOT": str(root)}) == ""


# --------------------------------------------------------------------------- errors


@pytest.fixture
def populated(cli: Cli, busybox_image: TestImage) -> Cli:
    """A root holding one image (bb:1), so that 'no new state' means something."""
    _stored(cli, busybox_image, "bb:1")
    return cli


ERROR_CASES: dict[str, tuple[list[str], str]] = {
    "pull-bad-reference": (["pull", "Bad Ref"], "invalid reference"),
    "tag-uppercase": (["tag", "bb:1", "UPPER"], "must be lowercase"),
    "tag-unknown-source": (["tag", "nosuch:1", "x:1"], "no such image"),
    "registry-down": (["pull", "127.0.0.1:1/x"], "cannot reach registry 127.0.0.1:1"),
    "push-registry-down": (["push", "bb:1", "127.0.0.1:1/x:1"], "127.0.0.1:1"),
    "push-unknown": (["push", "127.0.0.1:1/nosuch:1"], "nosuch"),
    "load-garbage": (["load", "-i", "{garbage}"], "garbage"),
    "load-truncated": (["load", "-i", "{truncated}"], "truncated"),
    "load-missing": (["load", "-i", "{tmp}/missing.tar"], "not found"),
    "import-missing": (["import", "{tmp}/does-not-exist"], "not found"),
    "import-garbage": (["import", "{garbage}", "junk:1"], "not a tar archive"),
    "import-bad-change": (["import", "{tmp}", "x:1", "--change", "FROB x"], "FROB"),
    "inspect-unknown": (["image", "inspect", "nosuch"], "nosuch"),
    "save-unknown": (["save", "-o", "{tmp}/out.tar", "nosuch:1"], "nosuch"),
    "save-no-such-dir": (["save", "-o", "{tmp}/no/out.tar", "bb:1"], "{tmp}/no does not"),
    "registries-config-missing": (
        ["--registries-config", "{tmp}/none.json", "pull", "127.0.0.1:1/x"],
        "none.json",
    ),
    "ca-file-missing": (["pull", "--ca-file", "{tmp}/none.crt", "127.0.0.1:1/x"], "none.crt"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_are_one_line_and_leave_no_state(
    case: str, populated: Cli, tmp_path: Path, busybox_image: TestImage
) -> None:
    args, needle = ERROR_CASES[case]
    files = tmp_path / "files"
    files.mkdir()
    garbage = files / "garbage.tar"
    garbage.write_bytes(b"this is not an archive\n" * 100)
    archive = files / "good.tar"
    populated.ok("save", "--format", "oci-archive", "-o", str(archive), "bb:1")
    truncated = files / "truncated.tar"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    subs = {"garbage": str(garbage), "truncated": str(truncated), "tmp": str(files)}
    args = [a.format(**subs) for a in args]

    before_state, before_files = populated.state(), set(os.listdir(files))
    line = populated.fail(*args)
    assert needle.format(**subs) in line, line
    assert populated.state() == before_state
    assert set(os.listdir(files)) == before_files  # e.g. no partial out.tar
    assert [i["RepoTags"] for i in populated.images()] == [["bb:1"]]


def test_usage_errors_are_one_line(cli: Cli) -> None:
    r = cli.run("pull")
    assert r.code == 125 and "Missing argument" in cli.fail("pull")
    assert "No such command" in cli.fail("no-such-command")
    assert "zip" in cli.fail("save", "--format", "zip", "-o", "x", "bb")


# --------------------------------------------------------------------------- progress


@pytest.fixture
def pushed(
    registry: RegistryServer, new_cli: Callable[[str], Cli], busybox_image: TestImage
) -> str:
    """A busybox image in the session registry; returns its reference."""
    ref = f"{registry.host}/cli/progress:{time.monotonic_ns()}"
    publisher = new_cli("publisher")
    _stored(publisher, busybox_image, ref)
    publisher.ok("push", "-q", ref)
    return ref


def test_pull_progress_is_plain_text_when_not_a_terminal(
    cli: Cli, pushed: str, busybox_image: TestImage
) -> None:
    r = cli.run("pull", pushed)
    assert r.code == 0, r.err
    assert ANSI not in r.err and ANSI not in r.out
    layer = _short(busybox_image.layers()[0])
    assert f"layer {layer}: done" in r.err.splitlines()
    assert r.out.splitlines()[0] == f"Digest: {busybox_image.target}"
    quiet = Cli(cli.root.parent / "quiet").run("pull", "-q", pushed)
    assert quiet.err == "" and quiet.out == busybox_image.config_digest() + "\n"


def _run_in_pty(args: list[str], timeout: float = 30) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal (80x24); (exit code, output)."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = _env({"TERM": "xterm-256color"})
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, close_fds=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    try:
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    return code, b"".join(chunks).decode(errors="replace")


def test_pull_progress_on_a_terminal(cli: Cli, pushed: str, busybox_image: TestImage) -> None:
    code, out = _run_in_pty(
        [sys.executable, "-m", "lamina.cli.main", "--root", str(cli.root), "pull", pushed]
    )
    assert code == 0, out
    assert "Traceback" not in out
    assert _short(busybox_image.layers()[0]) in out
    # A live display, not the plain per-event lines.
    assert f"layer {_short(busybox_image.layers()[0])}: done" not in out
    assert busybox_image.target in out
    assert cli.inspect(pushed)["Digest"] == busybox_image.target


# --------------------------------------------------------------------------- TLS


def test_tls_registry_ca_and_insecure(
    tls_registry: RegistryServer,
    test_ca: TestCA,
    busybox_image: TestImage,
    tmp_path: Path,
    new_cli: Callable[[str], Cli],
) -> None:
    host = tls_registry.host
    ref = f"{host}/cli/tls:{time.monotonic_ns()}"
    publisher = new_cli("publisher")
    _stored(publisher, busybox_image, ref)

    # Unknown CA: one line naming the problem; nothing stored.
    line = publisher.fail("push", "-q", ref)
    assert "TLS certificate not trusted" in line
    # Insecure: TLS without verification.
    publisher.ok("--insecure-registry", host, "push", "-q", ref)

    puller = new_cli("puller")
    line = puller.fail("pull", ref)
    assert f"registry {host}: TLS certificate not trusted" in line
    assert puller.blobs() == set()

    # The CA from LAMINA_REGISTRIES_CONFIG (conftest points it into tmp_path).
    config = Path(os.environ["LAMINA_REGISTRIES_CONFIG"])
    config.write_text(json.dumps({"ca_files": {host: str(test_ca.ca_cert)}}))
    assert puller.ok("pull", "-q", ref) == busybox_image.config_digest() + "\n"
    config.unlink()

    # The same through --registries-config, and through --ca-file.
    other_config = tmp_path / "other-registries.json"
    other_config.write_text(json.dumps({"ca_files": {host: str(test_ca.ca_cert)}}))
    new_cli("p2").ok("--registries-config", str(other_config), "pull", "-q", ref)
    new_cli("p3").ok("pull", "-q", "--ca-file", str(test_ca.ca_cert), ref)
    new_cli("p4").ok("--insecure-registry", host, "pull", "-q", ref)
