"""The secret store (``lamina.deploy._secrets``): values encrypted at rest under the
root, a key made once whoever races for it, creates that never overwrite, a wrong key
or a tampered file refused with one clean error, and nothing left by a writer killed
halfway."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from leak_check import pid_stopped
from runtime_fixtures import IMAGE_REF, cli_image_root, config, until

from lamina import _leases
from lamina._mount import mounts_under, unmount_under
from lamina.deploy._secrets import (
    MAX_SECRET_SIZE,
    InvalidSecret,
    SecretFile,
    SecretStore,
    SecretUnreadable,
    materialize,
    release,
    release_orphans,
)
from lamina.engine import open_engine
from lamina.errors import AlreadyExists, NotFound

pytestmark = pytest.mark.timeout(120)

PLAIN = b"hunter2-very-secret-value-\x00\xff"


def files_under(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file())


def test_round_trip_and_encrypted_at_rest(tmp_path: Path) -> None:
    store = SecretStore(tmp_path)
    info = store.create("db.password", PLAIN)
    store.create("api-key", b"k")
    assert (info.name, info.size) == ("db.password", len(PLAIN))
    assert store.get("db.password") == PLAIN
    assert SecretStore(tmp_path).get("api-key") == b"k"  # another process's view
    assert [(s.name, s.size) for s in store.list()] == [("api-key", 1), ("db.password", len(PLAIN))]
    assert store.names() == {"api-key", "db.password"}
    for path in files_under(tmp_path / "secrets"):
        assert PLAIN not in path.read_bytes(), path
        assert b"hunter2" not in path.read_bytes(), path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    store.remove("api-key")
    assert store.names() == {"db.password"}
    with pytest.raises(NotFound, match="no such secret: api-key"):
        store.get("api-key")
    with pytest.raises(NotFound):
        store.remove("api-key")


def test_bad_names_sizes_and_duplicates_are_refused(tmp_path: Path) -> None:
    store = SecretStore(tmp_path)
    for bad in ("", ".hidden", "a/b", "../x", "-x", "x" * 200, "with space"):
        with pytest.raises(InvalidSecret, match="invalid secret name"):
            store.create(bad, b"v")
    with pytest.raises(InvalidSecret, match="too large"):
        store.create("big", b"x" * (MAX_SECRET_SIZE + 1))
    store.create("max", b"x" * MAX_SECRET_SIZE)
    store.create("one", b"first")
    with pytest.raises(AlreadyExists, match="secret one already exists"):
        store.create("one", b"second")
    assert store.get("one") == b"first"
    # Nothing half-written: only the key and the two secrets, no temporary file, no lease.
    names = [p.relative_to(tmp_path).as_posix() for p in files_under(tmp_path)]
    assert names == ["secrets/data/max", "secrets/data/one", "secrets/key"]


def test_wrong_key_and_tampered_files_fail_cleanly(tmp_path: Path) -> None:
    store = SecretStore(tmp_path)
    store.create("token", PLAIN)
    store.create("other", b"other value")
    data = tmp_path / "secrets" / "data"
    # A secret's file under another name does not open as that name.
    (data / "token").replace(data / "stolen")
    (data / "other").write_bytes((data / "stolen").read_bytes())
    with pytest.raises(SecretUnreadable, match="cannot be decrypted") as e:
        SecretStore(tmp_path).get("other")
    assert "\n" not in str(e.value) and "hunter2" not in str(e.value)
    (data / "stolen").replace(data / "token")
    assert SecretStore(tmp_path).get("token") == PLAIN
    # A flipped bit of the ciphertext.
    raw = bytearray((data / "token").read_bytes())
    raw[-1] ^= 1
    (data / "token").write_bytes(bytes(raw))
    with pytest.raises(SecretUnreadable, match="cannot be decrypted"):
        SecretStore(tmp_path).get("token")
    # Another key (the root's key replaced): nothing opens.
    (tmp_path / "secrets" / "key").write_bytes(os.urandom(32))
    with pytest.raises(SecretUnreadable, match="secret other cannot be decrypted"):
        SecretStore(tmp_path).get("other")
    (tmp_path / "secrets" / "key").write_bytes(b"short")
    with pytest.raises(SecretUnreadable, match=r"key .* is damaged"):
        SecretStore(tmp_path).get("other")
    (data / "junk").write_bytes(b"not a secret")
    with pytest.raises(SecretUnreadable, match="secret junk is damaged"):
        SecretStore(tmp_path).info("junk")


_RACER = """
import sys
from pathlib import Path
from lamina.deploy._secrets import SecretStore
from lamina.errors import AlreadyExists
root, me = Path(sys.argv[1]), sys.argv[2]
print("ready", flush=True)
sys.stdin.read()  # the start line: every racer goes at once
store = SecretStore(root)
store.create("own-" + me, me.encode())
try:
    store.create("shared", me.encode())
    print("won")
except AlreadyExists:
    print("lost")
"""


def test_concurrent_creates_one_key_one_winner(tmp_path: Path) -> None:
    """Racers on a fresh root: all use the one key that got published (each one's own
    secret opens), and of the creates of one name exactly one wins."""
    racers = [
        subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path), str(i)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for i in range(8)
    ]  # fmt: skip
    for p in racers:  # all imported, then all released at once
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    for p in racers:
        assert p.stdin is not None
        p.stdin.close()
    results = []
    for p in racers:
        assert p.stdout is not None
        results.append(p.stdout.read().strip())
        p.wait(timeout=60)
    assert all(p.returncode == 0 for p in racers), results
    assert sorted(results) == ["lost"] * 7 + ["won"]
    store = SecretStore(tmp_path)
    winner = results.index("won")
    assert store.get("shared") == str(winner).encode()
    for i in range(8):
        assert store.get(f"own-{i}") == str(i).encode()
    assert not list((tmp_path / "secrets").glob(".*")) and not list(
        (tmp_path / "secrets" / "data").glob(".*")
    )


_CREATE = """
import sys
from pathlib import Path
from lamina.deploy._secrets import SecretStore
SecretStore(Path(sys.argv[1])).create(sys.argv[2], b"value")
"""


def test_killed_create_leaves_nothing(tmp_path: Path) -> None:
    """A create SIGKILLed with its temporary file written: the secret does not exist,
    and the next write of the store removes the leftover."""
    SecretStore(tmp_path).create("first", b"1")
    env = {**os.environ, "LAMINA_TEST_STOP_AT": "secret:written"}
    proc = subprocess.Popen([sys.executable, "-c", _CREATE, str(tmp_path), "half"], env=env)
    until(lambda: pid_stopped(proc.pid), 30)
    data = tmp_path / "secrets" / "data"
    assert [p.name for p in data.glob(".half.*.tmp")], "the temporary file was written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = SecretStore(tmp_path)
    assert store.names() == {"first"}
    store.create("half", b"again")
    assert store.get("half") == b"again"
    assert sorted(p.name for p in data.iterdir()) == ["first", "half"]
    assert not list((tmp_path / "leases").iterdir())


# -- service secrets as files ------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    """A secrets run directory of the test's own (lamina mounts its tmpfs there)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (mounts)")
    base = tmp_path / "run" / "secrets"
    yield base
    unmount_under(base)
    assert mounts_under(tmp_path) == []


def on_tmpfs(path: Path) -> bool:
    out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(path)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return out.strip() == "tmpfs"


def test_materialized_secrets_are_tmpfs_files_a_container_reads(
    tmp_path_factory: pytest.TempPathFactory, run_dir: Path
) -> None:
    root = cli_image_root(tmp_path_factory, "secretfiles")
    store = SecretStore(root)
    store.create("db-password", PLAIN)
    store.create("api-key", b"key-1")
    refs = [("db-password", "db"), SecretFile("api-key", "/etc/api.key", mode=0o400)]
    mounts = materialize(root, "shop-web-1", refs, base=run_dir)
    assert [(m.type, m.target, m.read_only) for m in mounts] == [
        ("bind", "/run/secrets/db", True),
        ("bind", "/etc/api.key", True),
    ]
    replica_dir = Path(mounts[0].source).parent
    assert on_tmpfs(replica_dir) and not on_tmpfs(run_dir.parent)
    assert stat.S_IMODE(replica_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    # Compose's default 0444 (a replica's non-root user reads it), or as asked.
    assert [stat.S_IMODE(os.stat(m.source).st_mode) for m in mounts] == [0o444, 0o400]
    script = ("cat /run/secrets/db; cat /etc/api.key 2>/dev/null || echo denied; "
              "echo x 2>/dev/null > /run/secrets/db || echo read-only")  # fmt: skip
    with open_engine(root) as engine:
        image = engine.images.require(IMAGE_REF).id
        outputs = []
        for user in ("app", "root"):
            c = engine.create(config(image, "sh", "-c", script, mounts=mounts, user=user))
            engine.start(c.id)
            engine.wait(c.id, timeout=30)
            outputs.append(b"".join(e.data for e in engine.logs(c.id, stderr=False)))
            engine.remove(c.id)
    assert outputs == [PLAIN + b"denied\nread-only\n", PLAIN + b"key-1read-only\n"]

    # Again (a new value): replaced as a whole, the old files gone.
    store.remove("api-key")
    store.create("api-key", b"key-2")
    again = materialize(root, "shop-web-1", [("api-key", "api")], base=run_dir)
    assert Path(again[0].source).read_bytes() == b"key-2"
    assert sorted(p.name for p in replica_dir.iterdir()) == ["0-api-key"]
    # A missing secret: an error, and the replica's files are as they were.
    with pytest.raises(NotFound, match="no such secret: nope"):
        materialize(root, "shop-web-1", [("nope", "x")], base=run_dir)
    assert sorted(p.name for p in replica_dir.iterdir()) == ["0-api-key"]

    materialize(root, "shop-web-2", [("api-key", "api")], base=run_dir)
    materialize(root, "shop-db-1", [("db-password", "pw")], base=run_dir)
    assert release_orphans(root, {"shop-web-1"}, base=run_dir) == ["shop-db-1", "shop-web-2"]
    assert sorted(p.name for p in replica_dir.parent.iterdir()) == ["shop-web-1"]
    release(root, "shop-web-1", base=run_dir)
    assert list(replica_dir.parent.iterdir()) == []
    assert not list((root / "leases").iterdir())


_MATERIALIZE = """
import sys
from pathlib import Path
from lamina.deploy._secrets import materialize
materialize(Path(sys.argv[1]), "shop-web-1", [("token", "token")], base=Path(sys.argv[2]))
"""


def test_a_killed_materialize_leaves_the_old_files_and_no_scratch(
    tmp_path: Path, run_dir: Path
) -> None:
    root = tmp_path / "root"
    SecretStore(root).create("token", b"t")
    first = materialize(root, "shop-web-1", [("token", "token")], base=run_dir)
    env = {**os.environ, "LAMINA_TEST_STOP_AT": "secret-files:written"}
    proc = subprocess.Popen([sys.executable, "-c", _MATERIALIZE, str(root), str(run_dir)],
                            env=env)  # fmt: skip
    until(lambda: pid_stopped(proc.pid), 30)
    host_dir = Path(first[0].source).parent.parent
    assert len(list(host_dir.iterdir())) == 2  # the replica's files and the scratch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert Path(first[0].source).read_bytes() == b"t"
    _leases.reap(root)  # what the next command of the root does
    assert [p.name for p in host_dir.iterdir()] == ["shop-web-1"]
