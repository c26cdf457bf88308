"""``import_rootfs`` (docker import) and its --change instructions, on real files."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from lamina.errors import InvalidLayer, InvalidReference, LaminaError
from lamina.image import LocalImages, Platform, parse_manifest
from lamina.image._import import apply_changes, import_rootfs
from lamina.image._layers import open_decompressed

BUSYBOX = Path("/bin/busybox")
EPOCH = 1_700_000_000


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalImages]:
    images = LocalImages.open(tmp_path / "root")
    yield images
    images.close()


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "ls", "echo", "cat"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "hostname").write_text("imported\n")
    return root


def _config(local: LocalImages, ref: str) -> dict[str, Any]:
    return local.config(local.require(ref))


def _layer_names(local: LocalImages, ref: str) -> dict[str, tarfile.TarInfo]:
    record = local.require(ref)
    manifest = parse_manifest(local.content.read(record.manifest_digest))
    assert len(manifest.layers) == 1  # type: ignore[union-attr]
    layer = manifest.layers[0]  # type: ignore[union-attr]
    with local.content.open(layer.digest) as raw:
        data = open_decompressed(raw).read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: m for m in tf.getmembers()}


def test_import_directory_with_changes(local: LocalImages, rootfs: Path) -> None:
    record = import_rootfs(
        local,
        rootfs,
        reference="example.com/busy:1.0",
        changes=[
            'CMD ["/bin/sh"]',
            "ENV A=1 B=2",
            "WORKDIR /app",
            "EXPOSE 80/tcp 53/udp",
            'LABEL org.example.name="busy box" version=1',
            "USER nobody",
            "VOLUME /data",
            "STOPSIGNAL SIGINT",
        ],
    )
    assert record.names == ["example.com/busy:1.0"]
    assert local.require("example.com/busy:1.0").id == record.id
    manifest = parse_manifest(local.content.read(record.digest))
    assert manifest.media_type == "application/vnd.oci.image.manifest.v1+json"
    assert manifest.layers[0].media_type == "application/vnd.oci.image.layer.v1.tar+gzip"  # type: ignore[union-attr]

    cfg = local.config(record)
    host = os.uname().machine
    assert cfg["os"] == "linux"
    assert cfg["architecture"] == {"x86_64": "amd64", "aarch64": "arm64"}.get(host, host)
    assert cfg["created"].endswith("Z")
    assert cfg["history"] == [{"created": cfg["created"], "comment": f"Imported from {rootfs}"}]
    assert len(cfg["rootfs"]["diff_ids"]) == 1
    c = cfg["config"]
    assert c["Cmd"] == ["/bin/sh"]
    assert c["Env"] == ["A=1", "B=2"]
    assert c["WorkingDir"] == "/app"
    assert c["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert c["Labels"] == {"org.example.name": "busy box", "version": "1"}
    assert c["User"] == "nobody"
    assert c["Volumes"] == {"/data": {}}
    assert c["StopSignal"] == "SIGINT"

    members = _layer_names(local, "example.com/busy:1.0")
    assert members["bin/busybox"].isfile()
    assert members["bin/busybox"].size == BUSYBOX.stat().st_size
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    assert "etc/hostname" in members


def test_imported_layer_unpacks_and_diff_id_matches(local: LocalImages, rootfs: Path) -> None:
    record = import_rootfs(local, rootfs, reference="busy")
    assert record.names == ["docker.io/library/busy:latest"]
    chains = local.unpack(record)
    assert len(chains) == 1 and local.is_unpacked(record)


def test_import_tarball_gzip_and_zstd(local: LocalImages, rootfs: Path, tmp_path: Path) -> None:
    plain = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(plain), "."], check=True)
    gz = tmp_path / "rootfs.tar.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    zst = tmp_path / "rootfs.tar.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))

    records = [
        import_rootfs(local, src, reference=f"t:{i}", source_date_epoch=EPOCH)
        for i, src in enumerate((plain, gz, zst))
    ]
    # The same entries whatever the outer compression: one layer, one image ID.
    assert len({r.id for r in records}) == 3  # history comment names the source file
    diff_ids = {local.config(r)["rootfs"]["diff_ids"][0] for r in records}
    assert len(diff_ids) == 1
    members = _layer_names(local, "t:1")
    assert "./" not in members and "." not in members
    assert members["bin/busybox"].size == BUSYBOX.stat().st_size
    assert members["bin/ls"].issym()
    assert local.config(records[1])["history"][0]["comment"] == f"Imported from {gz}"
    local.unpack(records[2])


def test_import_stream_and_message(local: LocalImages, rootfs: Path, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.add(rootfs / "etc", arcname="etc")
    buf.seek(0)
    record = import_rootfs(local, buf, reference=None, message="from a pipe")
    assert record.names == []
    assert local.images.dangling()[0].id == record.id
    assert local.config(record)["history"][0]["comment"] == "from a pipe"


def test_tarball_entries_are_sanitised(local: LocalImages, tmp_path: Path) -> None:
    src = tmp_path / "abs.tar"
    with tarfile.open(src, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in ("/etc", "/etc/passwd", "./usr//bin/../lib/x"):
            info = tarfile.TarInfo(name)
            if name == "/etc":
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = 2
                info.pax_headers = {"SCHILY.xattr.user.k": "v", "comment": "dropped"}
                tf.addfile(info, io.BytesIO(b"hi"))
    record = import_rootfs(local, src, reference="clean")
    members = _layer_names(local, "clean")
    assert set(members) == {"etc", "etc/passwd", "usr/lib/x"}
    assert members["etc/passwd"].pax_headers.get("SCHILY.xattr.user.k") == "v"
    assert "comment" not in members["etc/passwd"].pax_headers
    assert record.names == ["docker.io/library/clean:latest"]


def test_hostile_tarball_is_refused_and_leaves_nothing(local: LocalImages, tmp_path: Path) -> None:
    src = tmp_path / "evil.tar"
    with tarfile.open(src, "w") as tf:
        info = tarfile.TarInfo("../../etc/evil")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"evil"))
    before = {b.digest for b in local.content.list()}
    with pytest.raises(InvalidLayer, match="escapes the root"):
        import_rootfs(local, src, reference="evil")
    assert {b.digest for b in local.content.list()} == before
    assert local.images.list() == []
    assert list((local.root / "content" / "ingest").iterdir()) == []


def test_not_a_tarball(local: LocalImages, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(InvalidLayer, match=r"junk\.bin"):
        import_rootfs(local, junk)
    truncated = tmp_path / "cut.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("big")
        data = os.urandom(1 << 20)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InvalidLayer, match=r"cut\.tar\.gz"):
        import_rootfs(local, truncated)
    assert local.images.list() == []
    assert list(local.content.list()) == []


def test_import_is_deterministic_with_source_date_epoch(
    local: LocalImages, rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    first = import_rootfs(local, rootfs, reference="det:1")
    os.utime(rootfs / "etc" / "hostname", (EPOCH + 500, EPOCH + 500))  # clamped anyway
    other = tmp_path / "other-root"
    second_local = LocalImages.open(other)
    try:
        second = import_rootfs(second_local, rootfs, reference="det:2")
        assert second.id == first.id
        assert second.digest == first.digest
        assert local.config(first)["created"] == "2023-11-14T22:13:20Z"
    finally:
        second_local.close()


def test_platform_override(local: LocalImages, rootfs: Path) -> None:
    record = import_rootfs(local, rootfs, platform=Platform("linux", "arm64", "v8"))
    cfg = local.config(record)
    assert (cfg["os"], cfg["architecture"], cfg["variant"]) == ("linux", "arm64", "v8")
    assert record.platform == "linux/arm64/v8"


def test_bad_reference_and_bad_change_fail_before_work(local: LocalImages, rootfs: Path) -> None:
    with pytest.raises(LaminaError, match="FROBNICATE"):
        import_rootfs(local, rootfs, changes=["FROBNICATE yes"])
    with pytest.raises(InvalidReference):
        import_rootfs(local, rootfs, reference="Bad Name")
    with pytest.raises(InvalidReference, match="digest"):
        import_rootfs(local, rootfs, reference="x@sha256:" + "a" * 64)
    assert list(local.content.list()) == []


# -- --change parsing, as docker import/commit accept it


def test_cmd_and_entrypoint_forms() -> None:
    assert apply_changes(["CMD echo hi"])["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    assert apply_changes(['CMD ["echo", "hi"]'])["Cmd"] == ["echo", "hi"]
    assert apply_changes(["CMD [not json"])["Cmd"] == ["/bin/sh", "-c", "[not json"]
    cfg = apply_changes(['ENTRYPOINT ["/init"]'], base={"Cmd": ["old"]})
    assert cfg == {"Entrypoint": ["/init"]}  # a new ENTRYPOINT drops the inherited CMD
    cfg = apply_changes(['CMD ["a"]', "ENTRYPOINT /x"])
    assert cfg["Cmd"] == ["a"] and cfg["Entrypoint"] == ["/bin/sh", "-c", "/x"]
    assert apply_changes(["cmd true"])["Cmd"] == ["/bin/sh", "-c", "true"]


def test_env_forms_and_expansion() -> None:
    cfg = apply_changes(
        [
            "ENV PATH=/usr/bin",
            "ENV PATH=/opt/bin:$PATH HOME=/root",
            'ENV GREETING="hello world" EMPTY=',
            "ENV LEGACY some value here",
            "ENV X=${MISSING:-fallback} Y=${HOME:+set} Z='$HOME' W=\\$HOME",
        ]
    )
    assert cfg["Env"] == [
        "PATH=/opt/bin:/usr/bin",
        "HOME=/root",
        "GREETING=hello world",
        "EMPTY=",
        "LEGACY=some value here",
        "X=fallback",
        "Y=set",
        "Z=$HOME",
        "W=$HOME",
    ]
    with pytest.raises(LaminaError, match="name=value"):
        apply_changes(["ENV A=1 B"])
    with pytest.raises(LaminaError, match="quote"):
        apply_changes(['ENV A="open'])


def test_expose_volume_workdir_onbuild_user_healthcheck() -> None:
    cfg = apply_changes(
        [
            "EXPOSE 8000-8002 9000/udp",
            'VOLUME ["/a", "/b"]',
            "VOLUME /c /d",
            "WORKDIR /srv",
            "WORKDIR app",
            "ONBUILD RUN make",
            "USER 1000:1000",
            "HEALTHCHECK --interval=30s --retries=3 CMD wget -q localhost",
        ]
    )
    assert cfg["ExposedPorts"] == {"8000/tcp": {}, "8001/tcp": {}, "8002/tcp": {}, "9000/udp": {}}
    assert cfg["Volumes"] == {"/a": {}, "/b": {}, "/c": {}, "/d": {}}
    assert cfg["WorkingDir"] == "/srv/app"
    assert cfg["OnBuild"] == ["RUN make"]
    assert cfg["User"] == "1000:1000"
    assert cfg["Healthcheck"] == {
        "Test": ["CMD-SHELL", "wget -q localhost"],
        "Interval": 30_000_000_000,
        "Retries": 3,
    }
    assert apply_changes(["HEALTHCHECK NONE"])["Healthcheck"] == {"Test": ["NONE"]}
    # docker's key order, whatever order the changes came in
    assert list(cfg) == [
        "User",
        "ExposedPorts",
        "Healthcheck",
        "Volumes",
        "WorkingDir",
        "OnBuild",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("RUN echo", "unknown --change instruction 'RUN'"),
        ("FROM scratch", "unknown --change instruction 'FROM'"),
        ("EXPOSE eighty", "invalid port 'eighty'"),
        ("EXPOSE 80/xtp", "invalid protocol"),
        ("STOPSIGNAL SIGNOPE", "invalid signal"),
        ("ONBUILD ONBUILD RUN x", "not allowed"),
        ("CMD", "needs an argument"),
        ("HEALTHCHECK --bogus=1 CMD true", "unknown flag"),
    ],
)
def test_bad_changes(change: str, message: str) -> None:
    with pytest.raises(LaminaError, match=message):
        apply_changes([change])


def test_stopsignal_forms() -> None:
    for sig in ("SIGTERM", "TERM", "9", "SIGRTMIN+3"):
        assert apply_changes([f"STOPSIGNAL {sig}"])["StopSignal"] == sig


def test_config_json_is_what_docker_writes(local: LocalImages, rootfs: Path) -> None:
    record = import_rootfs(local, rootfs, changes=["CMD /bin/sh"], source_date_epoch=EPOCH)
    raw = json.loads(local.content.read(record.config_digest))
    assert list(raw) == ["created", "architecture", "os", "config", "rootfs", "history"]
    assert raw["rootfs"]["type"] == "layers"
