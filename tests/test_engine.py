"""The engine below the CLI: one store for containers of both isolations.

- A root made by lamina before the engine (process containers in ``containers.db``,
  micro-VM ones in ``vms/vms.db``), with running and stopped containers of both
  isolations, is migrated on its first open by this lamina: every container shows
  in ``ps -a``, names are unique across isolations, the VM that ran before keeps
  running (exec, stop, its exit code) and everything can be removed, leaving nothing.
  The old lamina is this repository's own history (``git archive``), "upgraded" in
  place the way a package upgrade does it: processes started before (conmon's exit
  command, a VM's supervisor) run the new code from then on.
- The migration killed halfway, or run by two processes at once, leaves each
  container exactly once.
- Names are one name space under concurrent creates of both isolations.
- A VM container's end is finished by the engine's exit command with no lamina
  process alive, as a process container's is.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from leak_check import assert_clean, kill, resume, start_stopped
from runtime_fixtures import IMAGE_REF, cli_image_root, until

import lamina

pytestmark = [pytest.mark.timeout(240)]

# The last lamina whose VM containers lived in vms/vms.db (this branch's start).
OLD_LAMINA = "9e746d98bf85cb40c98f63254ebd1628fbdf6374"
REPO = Path(__file__).resolve().parents[1]
NEW_SRC = Path(lamina.__file__).resolve().parents[1]
LOOP = "trap 'exit {code}' TERM; echo started; while :; do sleep 0.1; done"


def needs_vms() -> None:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("mkfs.erofs") is None:
        pytest.skip("needs qemu-system-x86_64 and erofs-utils")


@pytest.fixture(scope="module")
def old_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lamina's sources as of OLD_LAMINA, byte-compiled, from this repository."""
    dest = tmp_path_factory.mktemp("old-lamina")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", OLD_LAMINA, "src/lamina"], capture_output=True
    )
    if archive.returncode != 0:
        pytest.skip(f"needs the repository's history: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(dest / "src")], check=True)
    return dest / "src"


class Install:
    """A lamina installation whose sources are switched from the old ones to this
    checkout's, as a package upgrade replaces them: every process run with it (the
    CLI, and what it starts: conmon's exit command, a VM's supervisor) imports
    whatever the installation holds at that moment."""

    def __init__(self, base: Path, old: Path) -> None:
        self.link = base / "install" / "src"
        self.link.parent.mkdir(parents=True)
        self.link.symlink_to(old)
        self.env = {**os.environ, "PYTHONPATH": str(self.link)}

    def upgrade(self) -> None:
        tmp = self.link.with_name("src.new")
        tmp.symlink_to(NEW_SRC)
        os.replace(tmp, self.link)

    def run(self, root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lamina.cli.main", "--root", str(root), *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env=self.env,
            timeout=timeout,
        )

    def ok(self, root: Path, *args: str) -> str:
        r = self.run(root, *args)
        assert r.returncode == 0, (args, r.stderr)
        return r.stdout


@pytest.fixture
def old_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_image_root(tmp_path_factory, "before-engine")


@pytest.fixture
def install(old_src: Path, old_root: Path) -> Iterator[Install]:
    inst = Install(old_root.parent, old_src)
    yield inst
    inst.upgrade()  # whatever the test left is removed by this lamina
    ids = inst.run(old_root, "ps", "-a", "-q", "--no-trunc").stdout.split()
    if ids:
        inst.run(old_root, "rm", "-f", "-v", *ids)


def names(install: Install, root: Path) -> dict[str, str]:
    """Every container ``ps -a`` lists: name -> isolation."""
    lines = install.ok(root, "ps", "-a", "--format", "{{.Names}} {{.Isolation}}").splitlines()
    found = dict(line.split() for line in lines)
    assert len(found) == len(lines), lines  # each container once
    return found


def vm_dirs(root: Path) -> set[str]:
    return {d for d in os.listdir(root / "vms") if len(d) == 64}


def vm_processes(root: Path) -> list[str]:
    """Command lines of live QEMUs and supervisors working for ``root``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        line = b" ".join(argv).decode(errors="replace")
        if str(root) in line and ("qemu" in argv[0].decode() or "lamina.vm._backend" in line):
            found.append(line)
    return found


def test_a_root_made_before_the_engine_is_migrated_running_vms_included(
    install: Install, old_root: Path
) -> None:
    needs_vms()
    root = old_root
    old = install
    old.ok(root, "run", "-d", "--name", "proc-running", IMAGE_REF, "sh", "-c", LOOP.format(code=3))
    old.ok(root, "create", "--name", "proc-made", IMAGE_REF, "true")
    old.ok(root, "run", "-d", "--isolation", "vm", "--name", "vm-running", IMAGE_REF,
           "sh", "-c", LOOP.format(code=4))  # fmt: skip
    old.ok(root, "create", "--isolation", "vm", "--name", "vm-made", IMAGE_REF, "true")
    done = old.run(root, "run", "--isolation", "vm", "--name", "vm-done", IMAGE_REF, "sh", "-c",
                   "exit 5")  # fmt: skip
    assert done.returncode == 5, done.stderr
    until(lambda: "started" in old.ok(root, "logs", "vm-running"))
    assert (root / "vms" / "vms.db").exists()

    install.upgrade()
    new = install
    assert names(new, root) == {
        "proc-running": "process", "proc-made": "process", "vm-running": "vm",
        "vm-made": "vm", "vm-done": "vm",
    }  # fmt: skip
    assert not (root / "vms" / "vms.db").exists()  # retired: never read again
    assert (root / "vms" / "vms.db.migrated").exists()
    statuses = new.ok(root, "ps", "-a", "--format", "{{.Names}} {{.State}}").split("\n")
    assert sorted(filter(None, statuses)) == [
        "proc-made created", "proc-running running", "vm-done exited", "vm-made created",
        "vm-running running",
    ]  # fmt: skip
    assert new.ok(root, "wait", "vm-done") == "5\n"

    # One name space: neither isolation takes a name the other has, nor renames to it.
    for args in (
        ("create", "--isolation", "vm", "--name", "proc-made", IMAGE_REF, "true"),
        ("create", "--name", "vm-made", IMAGE_REF, "true"),
        ("rename", "proc-made", "vm-made"),
        ("rename", "vm-made", "proc-made"),
    ):
        r = new.run(root, *args)
        assert r.returncode != 0 and "already in use" in r.stderr, (args, r.stderr)

    # The VM that ran before the upgrade: its old supervisor still answers.
    assert new.ok(root, "exec", "vm-running", "sh", "-c", "echo in the guest") == "in the guest\n"
    new.ok(root, "stop", "vm-running")
    assert new.ok(root, "wait", "vm-running") == "4\n"  # the code its old supervisor saw
    # The process container that ran before: its conmon's exit command (the old
    # module name) finishes it with no lamina command around.
    new.ok(root, "kill", "-s", "TERM", "proc-running")
    until(lambda: _raw_status(root, "proc-running") == ("exited", 3))
    # The migrated created VM starts with this lamina's supervisor.
    new.ok(root, "start", "vm-made")
    assert new.ok(root, "wait", "vm-made") == "0\n"

    new.ok(root, "rm", "-f", "proc-running", "proc-made", "vm-running", "vm-made", "vm-done")
    assert new.ok(root, "ps", "-a", "-q") == ""
    assert vm_dirs(root) == set()
    assert_clean(root, set())  # mounts, directories, runc state, monitors, holds
    until(lambda: vm_processes(root) == [])


def _raw_status(root: Path, name: str) -> tuple[str, int | None]:
    """A container's status and exit code as its record says (no lamina command run)."""
    db = sqlite3.connect(root / "containers.db")
    try:
        row = db.execute("SELECT status, exit_code FROM containers WHERE name=?", (name,))
        found = row.fetchone()
    finally:
        db.close()
    return (found[0], found[1]) if found else ("", None)


def _old_root_with_both(install: Install, root: Path) -> set[str]:
    """A process and a VM container made by the old lamina (created: no VM boots)."""
    made = {
        install.ok(root, "create", "--name", "pc", IMAGE_REF, "true").strip(),
        install.ok(root, "create", "--isolation", "vm", "--name", "vc", IMAGE_REF, "true").strip(),
    }
    install.upgrade()
    return made


def _start_new(install: Install, root: Path, point: str) -> subprocess.Popen[bytes]:
    """This lamina's ``ps -a`` on ``root``, stopped at ``point`` (its environment
    names the installation)."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = install.env["PYTHONPATH"]
    try:
        return start_stopped(root, point, "ps", "-a", "-q", "--no-trunc")
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


@pytest.mark.parametrize("point", ["migrate:imported", "migrate:retiring"])
def test_a_migration_killed_halfway_is_done_by_the_next_command(
    install: Install, old_root: Path, point: str
) -> None:
    """SIGKILL with the VM containers copied but not committed (the transaction rolls
    back), or committed but ``vms.db`` not yet retired: the next command migrates
    (again, or only retires), each container exactly once."""
    if shutil.which("mkfs.erofs") is None:
        pytest.skip("VM containers need erofs-utils")
    made = _old_root_with_both(install, old_root)
    kill(_start_new(install, old_root, point))
    ids = install.ok(old_root, "ps", "-a", "-q", "--no-trunc").split()
    assert sorted(ids) == sorted(made)
    assert names(install, old_root) == {"pc": "process", "vc": "vm"}
    assert not (old_root / "vms" / "vms.db").exists()
    assert not (old_root / "vms" / "vms.db-wal").exists()


def test_two_processes_opening_the_root_at_once_migrate_it_once(
    install: Install, old_root: Path
) -> None:
    """One migrates (held in its transaction here), the other waits for it and finds
    the work done: both list each container once."""
    if shutil.which("mkfs.erofs") is None:
        pytest.skip("VM containers need erofs-utils")
    made = _old_root_with_both(install, old_root)
    first = _start_new(install, old_root, "migrate:imported")
    second: list[subprocess.CompletedProcess[str]] = []
    waiting = threading.Thread(
        target=lambda: second.append(install.run(old_root, "ps", "-a", "-q", "--no-trunc"))
    )
    waiting.start()
    waiting.join(2)
    assert waiting.is_alive()  # it waits for the first one's transaction
    done = resume(first)
    waiting.join(60)
    assert done.returncode == 0 and second[0].returncode == 0, (done.stderr, second[0].stderr)
    assert sorted(done.stdout.split()) == sorted(made)
    assert sorted(second[0].stdout.split()) == sorted(made)
    assert names(install, old_root) == {"pc": "process", "vc": "vm"}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_image_root(tmp_path_factory, "engine")


def lamina(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lamina.cli.main", "--root", str(root), *args],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout,
    )  # fmt: skip


def test_one_name_space_under_concurrent_creates_of_both_isolations(image_root: Path) -> None:
    """Creates of one name racing, process and VM ones at once, in separate
    processes: exactly one container gets it, every round."""
    if shutil.which("mkfs.erofs") is None:
        pytest.skip("VM containers need erofs-utils")
    root = image_root
    for round_ in range(5):
        name = f"contested{round_}"
        procs = [_create(root, name, vm=i % 2 == 1) for i in range(6)]
        results = [(*p.communicate(timeout=120), p.returncode) for p in procs]
        winners = [r for r in results if r[2] == 0]
        assert len(winners) == 1, results
        assert all("already in use" in err for _out, err, code in results if code != 0), results
        listed = lamina(root, "ps", "-a", "--filter", f"name=^{name}$", "-q").stdout.split()
        assert len(listed) == 1
    ids = lamina(root, "ps", "-a", "-q", "--no-trunc").stdout.split()
    assert lamina(root, "rm", *ids).returncode == 0
    assert_clean(root, set())


def _create(root: Path, name: str, *, vm: bool) -> subprocess.Popen[str]:
    isolation = ["--isolation", "vm"] if vm else []
    return subprocess.Popen(
        [sys.executable, "-m", "lamina.cli.main", "--root", str(root), "create", *isolation,
         "--name", name, IMAGE_REF, "true"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_a_vm_containers_end_is_finished_with_no_lamina_process_alive(image_root: Path) -> None:
    """A detached ``--rm`` VM container ends: its supervisor writes the exit down and
    runs the engine's exit command, which records it and removes the container (its
    record kept as a tombstone for ``wait``), with no lamina command run meanwhile."""
    needs_vms()
    root = image_root
    r = lamina(root, "run", "-d", "--rm", "--isolation", "vm", IMAGE_REF, "sh", "-c", "exit 7")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    until(lambda: _record(root, cid) is None and not (root / "vms" / cid).exists(), timeout=60)
    assert _tombstone(root, cid) == 7
    assert lamina(root, "wait", cid).stdout == "7\n"
    assert_clean(root, set())
    until(lambda: vm_processes(root) == [])


def _record(root: Path, cid: str) -> dict[str, object] | None:
    db = sqlite3.connect(root / "containers.db")
    try:
        row = db.execute("SELECT status, extra FROM containers WHERE id=?", (cid,)).fetchone()
    finally:
        db.close()
    return {"status": row[0], "extra": json.loads(row[1])} if row else None


def _tombstone(root: Path, cid: str) -> int | None:
    db = sqlite3.connect(root / "containers.db")
    try:
        row = db.execute("SELECT exit_code FROM tombstones WHERE id=?", (cid,)).fetchone()
    finally:
        db.close()
    return row[0] if row else None


def test_every_operation_reports_what_it_did_in_one_place(
    image_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Container, image and volume operations, the end of a run included, report to
    the engine's one place for events (what ``lamina events`` will journal)."""
    from lamina.engine import ContainerConfig, Mount, open_engine
    from lamina.engine import _engine as engine_module

    seen: list[tuple[str, str, str, dict[str, str]]] = []

    def emit(root: Path, type_: str, action: str, actor: str, attrs: dict[str, str]) -> None:
        assert root == image_root
        seen.append((type_, action, actor, attrs))

    monkeypatch.setattr(engine_module, "_EMIT", [emit])
    with open_engine(image_root) as engine:
        vol = engine.create_volume("evdata")
        script = "trap 'exit 3' TERM; sleep 100 & wait"
        config = ContainerConfig(
            image=engine.images.require(IMAGE_REF).id, name="ev", command=["sh", "-c", script],
            mounts=[Mount("volume", "/data", "evdata")],
        )  # fmt: skip
        cid = engine.create(config).id
        engine.start(cid)
        engine.pause(cid)
        engine.unpause(cid)
        assert engine.exec(cid, ["sh", "-c", "exit 4"]).exit_code == 4
        engine.kill(cid, "SIGUSR1")
        engine.rename(cid, "ev2")
        engine.stop(cid, timeout=10)
        engine.remove(cid)
        engine.tag_image(IMAGE_REF, "example.com/test/evtag:1")
        engine.remove_image("example.com/test/evtag:1")
        engine.remove_volume(vol.name)
    actions = [(t, a) for t, a, _actor, _attrs in seen]
    assert actions == [
        ("volume", "create"), ("container", "create"), ("container", "start"),
        ("volume", "mount"), ("container", "pause"), ("container", "unpause"),
        ("container", "exec_create: sh -c exit 4"), ("container", "exec_start: sh -c exit 4"),
        ("container", "exec_die"), ("container", "kill"), ("container", "rename"),
        ("container", "kill"), ("container", "die"),
        ("volume", "unmount"), ("container", "stop"), ("container", "destroy"),
        ("image", "tag"), ("image", "untag"), ("volume", "destroy"),
    ]  # fmt: skip
    by_action = {a: (actor, attrs) for _t, a, actor, attrs in seen}
    assert by_action["die"] == (cid, {**by_action["die"][1], "exitCode": "3", "name": "ev2"})
    kills = [attrs["signal"] for _t, a, _actor, attrs in seen if a == "kill"]
    assert kills == ["10", "15"]  # kill -s USR1, then stop's SIGTERM (Docker's kill event)
    assert by_action["exec_die"][1]["exitCode"] == "4"
    assert by_action["mount"][0] == "evdata" and by_action["mount"][1]["container"] == cid


def test_a_failed_start_removes_an_rm_container_a_refused_one_not(image_root: Path) -> None:
    """A ``--rm`` container whose start fails is removed, as Docker's daemon removes it;
    one whose start is refused for its state (paused) is left as it is."""
    root = image_root
    r = lamina(root, "run", "-d", "--rm", IMAGE_REF, "/no/such/binary")
    assert r.returncode == 127 and r.stderr.count("\n") == 1, r.stderr
    assert lamina(root, "ps", "-a", "-q").stdout == ""
    cid = lamina(root, "run", "-d", "--rm", IMAGE_REF, "sleep", "100").stdout.strip()
    assert lamina(root, "pause", cid).returncode == 0
    r = lamina(root, "start", cid)
    assert r.returncode == 1 and "is paused; unpause it instead" in r.stderr
    assert lamina(root, "ps", "-a", "-q", "--no-trunc").stdout.split() == [cid]
    assert lamina(root, "rm", "-f", cid).returncode == 0
    assert_clean(root, {cid})
