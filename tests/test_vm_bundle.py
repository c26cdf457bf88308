"""VM base bundles: built from a busybox image, validated, pushed to a real registry
as an OCI artifact, pulled into a fresh root; corruption refused with clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from registry_server import RegistryServer, TestImage

from lamina.errors import AlreadyExists, InvalidManifest, NotFound
from lamina.image import LocalImages, Platform, import_rootfs
from lamina.registry import ProgressEvent, RegistryClient, push
from lamina.testing import make_busybox_rootfs
from lamina.vm import (
    ARTIFACT_TYPE,
    LAYER_MEDIA_TYPE,
    Bundle,
    BundleError,
    build_base,
    pack_bundle,
    pull_bundle,
    push_bundle,
    validate_bundle,
)

pytestmark = pytest.mark.skipif(
    shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None,
    reason="e2fsprogs missing",
)


class Events:
    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []

    def event(self, ev: ProgressEvent) -> None:
        self.events.append(ev)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalImages, Bundle]]:
    """One bundle (1 GiB disk) from a busybox image, shared by the module (read-only)."""
    base = tmp_path_factory.mktemp("bundle")
    local = LocalImages.open(base / "lamina")
    import_rootfs(local, make_busybox_rootfs(base / "rootfs"), reference="busybox:vm")
    bundle = build_base(
        base / "out" / "bundle",
        source="image:busybox:vm",
        local=local,
        disk_size_gib=1,
        cpus=2,
        memory_mib=256,
    )
    yield local, bundle
    local.close()


def debugfs(disk: Path, request: str) -> str:
    out = subprocess.run(
        ["debugfs", "-R", request, str(disk)], capture_output=True, text=True, check=True
    )
    return out.stdout


def content_blocks(path: Path, block: int = 64 << 10) -> dict[int, str]:
    """Offset -> sha256 of every non-zero block, reading only the allocated extents."""
    out: dict[int, str] = {}
    fd = os.open(path, os.O_RDONLY)
    try:
        size, off = os.fstat(fd).st_size, 0
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            pos = start - start % block
            while pos < end:
                data = os.pread(fd, block, pos)
                if data.strip(b"\0"):
                    out[pos] = hashlib.sha256(data).hexdigest()
                pos += block
            off = end
    finally:
        os.close(fd)
    return out


def assert_same_bundle(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name == "disk.img":
            assert os.path.getsize(a / name) == os.path.getsize(b / name)
            assert content_blocks(a / name) == content_blocks(b / name)
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def copy_bundle(src: Path, dest: Path) -> Path:
    subprocess.run(["cp", "-r", "--sparse=always", str(src), str(dest)], check=True)
    return dest


def test_build_from_image(built: tuple[LocalImages, Bundle]) -> None:
    _, bundle = built
    assert sorted(p.name for p in bundle.path.iterdir()) == sorted(
        ["bundle.json", "disk.img", bundle.kernel.name, *(["initrd.img"] if bundle.initrd else [])]
    )
    # Nothing left next to the output (the temp dir was renamed into place).
    assert [p.name for p in bundle.path.parent.iterdir()] == ["bundle"]
    doc = json.loads((bundle.path / "bundle.json").read_text())
    assert doc["format_version"] == 1
    assert doc["architecture"] == "amd64"
    assert doc["min_vcpus"] == 2 and doc["min_memory_mib"] == 256
    assert doc["disk_size"] == 1 << 30
    assert doc["kernel_version"] == bundle.kernel_version and bundle.kernel_version
    assert doc["lamina_version"] and doc["created"].endswith("Z")
    assert doc["source"].startswith("image:busybox:vm@sha256:")
    assert validate_bundle(bundle.path, deep=True) == bundle

    st = bundle.disk_path.stat()
    assert st.st_size == 1 << 30
    assert st.st_blocks * 512 < st.st_size // 4  # sparse
    blkid = subprocess.run(
        ["blkid", "-o", "value", "-s", "TYPE", str(bundle.disk_path)],
        capture_output=True,
        text=True,
    )
    assert blkid.stdout.strip() == "ext4"
    listing = debugfs(bundle.disk_path, "ls -l /bin")
    assert "busybox" in listing
    stat = debugfs(bundle.disk_path, "stat /bin/busybox")
    assert f"Size: {Path('/bin/busybox').stat().st_size}" in stat


def test_build_refuses_bad_requests(built: tuple[LocalImages, Bundle], tmp_path: Path) -> None:
    local, _ = built
    with pytest.raises(BundleError, match="use image:<reference> or debootstrap:<suite>"):
        build_base(tmp_path / "a", source="docker:busybox", local=local)
    with pytest.raises(BundleError, match="needs the local images"):
        build_base(tmp_path / "a", source="image:busybox:vm")
    with pytest.raises(BundleError, match="memory \\(MiB\\): must be an integer of at least 128"):
        build_base(tmp_path / "a", source="image:busybox:vm", local=local, memory_mib=64)
    with pytest.raises(BundleError, match="disk size"):
        build_base(tmp_path / "a", source="image:busybox:vm", local=local, disk_size_gib=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(AlreadyExists, match="exists and is not empty"):
        build_base(tmp_path / "full", source="image:busybox:vm", local=local)
    with pytest.raises(NotFound, match="image not known locally: nosuch"):
        build_base(tmp_path / "a", source="image:nosuch", local=local)
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    (tiny / "hello").write_text("hi")
    import_rootfs(local, tiny, reference="tiny:arm64", platform=Platform("linux", "arm64"))
    with pytest.raises(BundleError, match="architecture arm64 does not match the guest kernel's"):
        build_base(tmp_path / "a", source="image:tiny:arm64", local=local)
    # Failed builds leave nothing behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "tiny"]


def test_build_into_existing_empty_dir(built: tuple[LocalImages, Bundle], tmp_path: Path) -> None:
    local, _ = built
    (tmp_path / "empty").mkdir()
    bundle = build_base(tmp_path / "empty", source="image:busybox:vm", local=local, disk_size_gib=1)
    assert bundle.path == tmp_path / "empty" and bundle.disk_path.exists()


def _corrupt_cases() -> list[tuple[str, Any, str]]:
    def rm(name: str) -> Any:
        return lambda b: (b / name).unlink()

    def edit_json(**changes: Any) -> Any:
        def do(b: Path) -> None:
            doc = json.loads((b / "bundle.json").read_text())
            doc.update(changes)
            (b / "bundle.json").write_text(json.dumps(doc))

        return do

    def poke(name: str, offset: int, data: bytes) -> Any:
        def do(b: Path) -> None:
            with open(b / name, "r+b") as f:
                f.seek(offset)
                f.write(data)

        return do

    def truncate(b: Path) -> None:
        os.truncate(b / "disk.img", 1 << 29)

    return [
        ("no bundle.json", rm("bundle.json"), "bundle.json is missing"),
        ("bad json", lambda b: (b / "bundle.json").write_text("{"), "is not valid JSON"),
        ("format", edit_json(format_version=2), "format_version 2 is not supported"),
        ("no arch", edit_json(architecture=None), "architecture is missing"),
        ("min memory", edit_json(min_memory_mib=16), "min_memory_mib must be at least 128"),
        ("no disk", rm("disk.img"), "disk.img is missing"),
        ("truncated disk", truncate, "disk.img is 536870912 bytes, bundle.json says 1073741824"),
        ("not ext4", poke("disk.img", 1080, b"\0\0"), "disk.img is not an ext4 file system"),
        ("no kernel", lambda b: _kernel(b).unlink(), "is missing"),
        ("kernel bytes", lambda b: _flip(_kernel(b)), "does not match its sha256"),
        ("wrong arch", edit_json(architecture="arm64"), "kernel, the bundle is arm64"),
        ("path escape", _escape_name, "is not a plain name"),
    ]


def _kernel(b: Path) -> Path:
    doc = json.loads((b / "bundle.json").read_text())
    return b / str(doc["files"]["kernel"]["name"])


def _flip(p: Path) -> None:
    with open(p, "r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0xFF]))


def _escape_name(b: Path) -> None:
    doc = json.loads((b / "bundle.json").read_text())
    doc["files"]["disk"]["name"] = "../disk.img"
    (b / "bundle.json").write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [c[1:] for c in _corrupt_cases()],
    ids=[c[0] for c in _corrupt_cases()],
)
def test_corrupted_bundle_is_refused(
    built: tuple[LocalImages, Bundle], tmp_path: Path, corrupt: Any, message: str
) -> None:
    _, bundle = built
    copy = copy_bundle(bundle.path, tmp_path / "copy")
    corrupt(copy)
    with pytest.raises(BundleError) as info:
        validate_bundle(copy)
    assert message in str(info.value)
    assert str(info.value).startswith(f"VM bundle {copy}: ")
    assert "\n" not in str(info.value)


def test_deep_validation_runs_fsck(built: tuple[LocalImages, Bundle], tmp_path: Path) -> None:
    _, bundle = built
    copy = copy_bundle(bundle.path, tmp_path / "copy")
    # Clobber the root inode's block group descriptors but keep the superblock magic.
    with open(copy / "disk.img", "r+b") as f:
        f.seek(4096)
        f.write(b"\xff" * 4096)
    validate_bundle(copy)  # the shallow check only looks at the superblock
    with pytest.raises(BundleError, match=r"disk\.img: e2fsck found problems"):
        validate_bundle(copy, deep=True)


def test_packed_layer_is_sparse_tar_gnu_tar_reads(
    built: tuple[LocalImages, Bundle], tmp_path: Path
) -> None:
    _, bundle = built
    layer = tmp_path / "bundle.tar.zst"
    with open(layer, "wb") as f:
        pack_bundle(bundle, f)
    assert layer.stat().st_size < 64 << 20  # holes are not stored
    out = tmp_path / "gnu"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(layer), "-C", str(out)], check=True)
    assert_same_bundle(bundle.path, out)
    st = (out / "disk.img").stat()
    assert st.st_blocks * 512 < st.st_size // 4


def _inspect_raw(ref: str) -> dict[str, Any]:
    out = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"],
        capture_output=True,
        check=True,
    )
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


@pytest.mark.slow
def test_push_then_pull_into_fresh_root(
    built: tuple[LocalImages, Bundle], registry: RegistryServer, tmp_path: Path
) -> None:
    local, bundle = built
    ref = f"{registry.host}/vm/base:1.0"
    pushed = Events()
    digest = push_bundle(local, bundle.path, ref, progress=pushed)
    assert digest.startswith("sha256:")
    assert pushed.kinds()[-1] == "finished"

    manifest = _inspect_raw(ref)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["artifactType"] == ARTIFACT_TYPE == "application/vnd.lamina.vm.bundle.v1"
    assert manifest["config"] == {
        "mediaType": "application/vnd.oci.empty.v1+json",
        "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "size": 2,
    }
    [layer] = manifest["layers"]
    assert layer["mediaType"] == LAYER_MEDIA_TYPE
    assert not local.content.exists(layer["digest"])  # packed only for the push
    notes = manifest["annotations"]
    assert notes["org.opencontainers.image.version"] == "1.0"
    assert notes["io.lamina.vm.architecture"] == "amd64"
    assert notes["io.lamina.vm.kernel-version"] == bundle.kernel_version
    assert notes["org.opencontainers.image.created"] == bundle.created

    fresh = LocalImages.open(tmp_path / "fresh-root")
    try:
        got = Events()
        pulled = pull_bundle(fresh, ref, tmp_path / "pulled", progress=got)
    finally:
        fresh.close()
    assert pulled.path == tmp_path / "pulled"
    assert_same_bundle(bundle.path, pulled.path)
    assert validate_bundle(pulled.path, deep=True).to_dict() == bundle.to_dict()
    st = pulled.disk_path.stat()
    assert st.st_blocks * 512 < st.st_size // 4  # still sparse after the pull
    assert "busybox" in debugfs(pulled.disk_path, "ls /bin")
    kinds = got.kinds()
    assert kinds[0] == "resolved" and kinds[-1] == "finished"
    assert "started" in kinds and "advance" in kinds and "extracted" in kinds
    advanced = sum(e.advance for e in got.events if e.kind == "advance")
    assert advanced == layer["size"]

    # The same bundle pushed again: blobs exist, the digest is stable.
    again = Events()
    assert push_bundle(local, bundle.path, ref, progress=again) == digest
    assert "exists" in again.kinds() and "started" not in again.kinds()


@pytest.mark.slow
def test_pull_resumes_an_interrupted_download(
    built: tuple[LocalImages, Bundle], registry: RegistryServer, tmp_path: Path
) -> None:
    local, bundle = built
    ref = f"{registry.host}/vm/resume:latest"
    push_bundle(local, bundle.path, ref)
    [layer] = _inspect_raw(ref)["layers"]
    with RegistryClient(registry.host) as client:
        blob = client.get_blob_bytes("vm/resume", layer["digest"], max_size=1 << 30)
    fresh = LocalImages.open(tmp_path / "fresh-root")
    try:
        half = len(blob) // 2
        # What an interrupted pull leaves: the first half in the ingest.
        with fresh.content.writer(f"pull-{layer['digest']}", layer["digest"], len(blob)) as w:
            w.write(blob[:half])
        got = Events()
        pulled = pull_bundle(fresh, ref, tmp_path / "pulled", progress=got)
    finally:
        fresh.close()
    first = next(e for e in got.events if e.kind == "advance")
    assert first.advance == half  # resumed, not restarted
    assert sum(e.advance for e in got.events if e.kind == "advance") == len(blob)
    assert_same_bundle(bundle.path, pulled.path)


@pytest.mark.slow
def test_pull_refuses_an_image(
    registry: RegistryServer, busybox_image: TestImage, local_images: LocalImages, tmp_path: Path
) -> None:
    ref = f"{registry.host}/vm/not-a-bundle:1"
    busybox_image.store(local_images, ref)
    push(local_images, ref)
    with pytest.raises(InvalidManifest, match="is not a lamina VM bundle"):
        pull_bundle(local_images, ref, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    with pytest.raises(NotFound):
        pull_bundle(local_images, f"{registry.host}/vm/nothing:1", tmp_path / "dest")


def _cli(root: Path, *args: str) -> Any:
    from lamina.cli._vm import vm
    from lamina.cli.main import Settings

    settings = Settings(root, False, (), None)
    return CliRunner().invoke(vm, list(args), obj=settings, catch_exceptions=False)


@pytest.mark.slow
def test_cli_build_push_pull_inspect(
    built: tuple[LocalImages, Bundle], registry: RegistryServer, tmp_path: Path
) -> None:
    local, _ = built
    ref = f"{registry.host}/vm/cli:2"
    out = tmp_path / "cli-bundle"
    res = _cli(
        local.root,
        "build-base",
        "-o",
        str(out),
        "--from",
        "busybox:vm",
        "--disk-size-gib",
        "1",
        "--cpus",
        "3",
        "--memory-mib",
        "300",
        "--push",
        ref,
        "-q",
    )
    assert res.exit_code == 0, res.output
    assert res.output.strip().startswith("sha256:")
    res = _cli(tmp_path / "root2", "pull", ref, "-o", str(tmp_path / "p"), "-q")
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(tmp_path / "p")
    res = _cli(tmp_path / "root2", "inspect", str(tmp_path / "p"), "--format", "json")
    doc = json.loads(res.output)
    assert doc["min_vcpus"] == 3 and doc["min_memory_mib"] == 300
    res = _cli(tmp_path / "root2", "inspect", str(tmp_path / "p"), "--check")
    assert re.search(r"^Minimum vCPUs: +3$", res.output, re.M), res.output
    res = _cli(local.root, "build-base", "-o", str(tmp_path / "x"))
    assert res.exit_code == 125 and "exactly one of --from IMAGE and --debootstrap" in res.output


@pytest.mark.skipif(
    not os.environ.get("LAMINA_TEST_DEBOOTSTRAP"),
    reason="set LAMINA_TEST_DEBOOTSTRAP=1 (needs debootstrap and a Debian mirror; slow)",
)
def test_build_from_debootstrap(built: tuple[LocalImages, Bundle], tmp_path: Path) -> None:
    local, _ = built
    suite = os.environ.get("LAMINA_TEST_DEBOOTSTRAP_SUITE", "bookworm")
    bundle = build_base(tmp_path / "deb", source=f"debootstrap:{suite}", local=local)
    assert bundle.source.startswith(f"debootstrap:{suite}@")
    assert "bash" in debugfs(bundle.disk_path, "ls /bin") or "bash" in debugfs(
        bundle.disk_path, "ls /usr/bin"
    )
