"""The events journal (``lamina.engine._events``) and ``lamina events``.

Events are emitted here by a small stand-in for the engine (the engine's own calls
come with it): in this process, or in other processes through ``EMITTER``. The
journal is checked as its users meet it: many processes appending at once lose
nothing and never mix lines; rotation keeps the bound and reads span both files;
``--since``/``--until`` windows to the nanosecond; Docker's filters; a follower in
one process sees what another appends, across rotations, in well under a second;
a full disk drops an event with one warning and the operation goes on; a torn line
(a writer killed mid-write) is never shown and never swallows the next event. The
command: Docker's default line, ``json`` and templates, following until SIGINT
(exit 0), an ``--until`` in the future, one-line errors for bad filters and times.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from leak_check import _stopped
from runtime_fixtures import CLI, error_line, lamina_cli, until

from lamina.engine import _events
from lamina.engine._events import Event, EventFilter, Follower, emit, follow, parse_line, read

# A stand-in for the engine in another process: emits ``count`` events of actor IDs
# ``<who>-<n>``; prints "ready" first and, with ``go_on_stdin``, waits for stdin's end
# so that several start at the same moment.
EMITTER = r"""
import json, sys, time
from pathlib import Path
from lamina.engine import _events
spec = json.loads(sys.argv[1])
if spec.get("max_bytes"):
    _events.MAX_FILE_BYTES = spec["max_bytes"]
print("ready", flush=True)
if spec.get("go_on_stdin"):
    sys.stdin.read()
pad = "x" * spec.get("pad", 0)
for n in range(spec["count"]):
    attrs = {"name": spec["who"], "image": "busybox:latest"}
    if pad:
        attrs["pad"] = pad
    action = spec.get("action", "start")
    _events.emit(Path(spec["root"]), "container", action, f"{spec['who']}-{n}", attrs)
    if spec.get("sleep"):
        time.sleep(spec["sleep"])
print("done", flush=True)
"""


def emitter(root: Path, who: str, count: int, **spec: Any) -> subprocess.Popen[bytes]:
    args = json.dumps({"root": str(root), "who": who, "count": count, **spec})
    proc = subprocess.Popen(
        [sys.executable, "-c", EMITTER, args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # unbuffered: reading "ready" takes nothing after it
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    return proc


def go(*procs: subprocess.Popen[bytes]) -> None:
    """Let emitters waiting on stdin go, together."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.stdin = None


def finish(proc: subprocess.Popen[bytes]) -> tuple[str, str]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out.decode(), err.decode()


def journal_lines(root: Path) -> list[bytes]:
    """Every line of both files, oldest first (the newline of the last kept apart)."""
    out: list[bytes] = []
    for name in ("events.log.1", "events.log"):
        path = root / "events" / name
        if path.exists():
            out += path.read_bytes().split(b"\n")[:-1]
    return out


def seq(e: Event) -> tuple[str, int]:
    who, _, n = e.actor_id.rpartition("-")
    return who, int(n)


# -- writers -----------------------------------------------------------------------------


def test_concurrent_emitters_lose_nothing_and_never_mix_lines(tmp_path: Path) -> None:
    """8 processes start together and append 250 events each, lines from 300 bytes
    to 20 kB (several pages: longer than PIPE_BUF): every event is there once, in
    its process's order, and every line of the file is one whole event."""
    root = tmp_path / "root"
    pads = [0, 0, 100, 100, 5000, 5000, 20000, 20000]
    no_rotation = 1 << 30
    procs = [
        emitter(root, f"p{i}", 250, pad=pad, max_bytes=no_rotation, go_on_stdin=True)
        for i, pad in enumerate(pads)
    ]
    go(*procs)
    for proc in procs:
        finish(proc)
    # A writer that looks at the end of the file while another's write is in flight
    # ends a line that needs no ending: an empty line, which readers skip.
    lines = [line for line in journal_lines(root) if line]
    assert len(lines) == 8 * 250
    assert all(parse_line(line) is not None for line in lines)
    got = [seq(e) for e in read(root)]
    for i in range(8):
        assert [n for who, n in got if who == f"p{i}"] == list(range(250))


def test_emit_is_cheap(tmp_path: Path) -> None:
    """``run`` calls it several times: one append, well under a millisecond."""
    root = tmp_path / "root"
    emit(root, "container", "create", "c" * 64, {"image": "busybox", "name": "web"})
    start = time.perf_counter()
    for _ in range(500):
        emit(root, "container", "start", "c" * 64, {"image": "busybox", "name": "web"})
    per_event = (time.perf_counter() - start) / 500
    print(f"emit: {per_event * 1e6:.0f} us per event")
    assert per_event < 0.001


def test_rotation_keeps_the_bound_and_read_spans_both_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    monkeypatch.setattr(_events, "MAX_FILE_BYTES", 8192)
    for n in range(400):
        emit(root, "container", "start", f"c-{n}", {"name": "c"})
    line = len((root / "events" / "events.log").read_bytes().split(b"\n")[0]) + 1
    live, old = root / "events" / "events.log", root / "events" / "events.log.1"
    assert live.stat().st_size < 8192 + line
    assert 8192 <= old.stat().st_size < 8192 + line
    assert sorted(os.listdir(root / "events")) == ["events.log", "events.log.1", "journal.lock"]
    got = [seq(e)[1] for e in read(root)]
    assert got == list(range(400 - len(got), 400))  # the newest, in order, none missing
    assert len(got) == len(journal_lines(root)) > len(live.read_bytes().split(b"\n"))


def test_rotation_by_many_processes_drops_only_the_oldest(tmp_path: Path) -> None:
    """Rotations by racing writers: each file stays within the bound (a line per
    writer over at most), and what is kept of each process is its newest events,
    with no gap: no rotation dropped a file that was not the oldest."""
    root = tmp_path / "root"
    limit = 16384
    procs = [
        emitter(root, f"p{i}", 300, pad=150, max_bytes=limit, go_on_stdin=True) for i in range(6)
    ]
    go(*procs)
    for proc in procs:
        finish(proc)
    longest = max(len(line) + 1 for line in journal_lines(root))
    for name in ("events.log", "events.log.1"):
        assert (root / "events" / name).stat().st_size < limit + 6 * longest
    assert all(parse_line(line) is not None for line in journal_lines(root) if line)
    got = [seq(e) for e in read(root)]
    for i in range(6):
        kept = [n for who, n in got if who == f"p{i}"]
        assert kept == list(range(300 - len(kept), 300))


def stopped_emitter(root: Path, point: str, who: str, limit: int) -> subprocess.Popen[bytes]:
    """An emitter of one event that stops itself at ``point`` of ``emit``."""
    env = {**os.environ, "LAMINA_TEST_STOP_AT": point}
    args = json.dumps({"root": str(root), "who": who, "count": 1, "max_bytes": limit})
    proc = subprocess.Popen(
        [sys.executable, "-c", EMITTER, args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    until(lambda: _stopped(proc), 30)
    return proc


def fill_journal(root: Path, prefix: str, size: int) -> list[str]:
    """Events until the live file has ``size`` bytes; their actor IDs."""
    live = root / "events" / "events.log"
    ids: list[str] = []
    while not live.exists() or live.stat().st_size < size:
        ids.append(f"{prefix}-{len(ids)}")
        emit(root, "container", "start", ids[-1], {})
    return ids


def test_no_write_lands_in_a_file_after_its_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer stopped between opening the live file and writing to it; meanwhile
    the file fills and another writer must rotate it. The rotation waits for the
    stopped writer, so a follower that moved on to the new file misses nothing."""
    root = tmp_path / "root"
    limit = 4096
    monkeypatch.setattr(_events, "MAX_FILE_BYTES", limit)
    fill_journal(root, "fill", limit - 400)
    follower = Follower(root, from_start=True)
    try:
        seen = [e.actor_id for e in follower.events()]
        slow = stopped_emitter(root, "events:append", "slow", limit)
        last = fill_journal(root, "full", limit)[-1]  # the file passes the bound
        rotating = emitter(root, "rotating", 1, max_bytes=limit)
        with contextlib.suppress(subprocess.TimeoutExpired):
            rotating.wait(0.3)  # it must not rotate while the slow writer is at work
        seen += [e.actor_id for e in follower.events()]
        slow.send_signal(signal.SIGCONT)
        finish(slow)
        finish(rotating)
        seen += [e.actor_id for e in follower.events()]
    finally:
        follower.close()
    assert seen[-3:] == [last, "slow-0", "rotating-0"]
    assert (root / "events" / "events.log.1").exists()


def test_two_writers_rotate_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers find the file full; one is stopped before it rotates, the other
    rotates and writes. The first, going on, finds the rotation done: the full file
    is kept as the older one, not replaced by the new one."""
    root = tmp_path / "root"
    limit = 4096
    monkeypatch.setattr(_events, "MAX_FILE_BYTES", limit)
    last = fill_journal(root, "fill", limit)[-1]
    first = stopped_emitter(root, "events:rotate", "first", limit)
    finish(emitter(root, "second", 1, max_bytes=limit))
    first.send_signal(signal.SIGCONT)
    finish(first)
    got = [e.actor_id for e in read(root)]
    assert got[0] == "fill-0" and got[-3:] == [last, "second-0", "first-0"]
    assert (root / "events" / "events.log.1").stat().st_size >= limit


# -- windows and filters -------------------------------------------------------------------


def five_events(root: Path) -> list[Event]:
    for n in range(5):
        emit(root, "container", "start", f"c-{n}", {"name": f"c{n}"})
        time.sleep(0.002)
    events = list(read(root))
    assert [e.actor_id for e in events] == [f"c-{n}" for n in range(5)]
    return events


def test_since_and_until_select_a_window_to_the_nanosecond(tmp_path: Path) -> None:
    root = tmp_path / "root"
    t = [e.time_nano for e in five_events(root)]

    def ids(since: int | None, until: int | None) -> list[str]:
        return [e.actor_id for e in read(root, since, until)]

    assert ids(t[1], t[3]) == ["c-1", "c-2", "c-3"]  # both ends included
    assert ids(t[1] + 1, t[3] - 1) == ["c-2"]
    assert ids(t[3], None) == ["c-3", "c-4"]
    assert ids(None, t[0]) == ["c-0"]
    assert ids(t[4] + 1, None) == []


def test_since_and_until_on_the_command_line(tmp_path: Path) -> None:
    """Unix seconds with nanoseconds and RFC 3339 to the nanosecond select the
    events with exactly those times; a duration counts back from now."""
    root = tmp_path / "root"
    t = [e.time_nano for e in five_events(root)]

    def unix(ns: int) -> str:
        return f"{ns // 10**9}.{ns % 10**9:09d}"

    def rfc3339(ns: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"

    def ids(*args: str) -> list[str]:
        r = lamina_cli(root, "events", "--format", "{{.Actor.ID}}", *args)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert ids("--since", unix(t[1]), "--until", unix(t[3])) == ["c-1", "c-2", "c-3"]
    assert ids("--since", rfc3339(t[2]), "--until", rfc3339(t[3])) == ["c-2", "c-3"]
    assert ids("--since", "1h", "--until", "0s") == [f"c-{n}" for n in range(5)]
    assert ids("--until", unix(t[1])) == ["c-0", "c-1"]  # an end alone: the journal up to it


WEB = {"name": "web", "image": "busybox:latest", "tier": "front"}
DB = {"name": "db", "image": "example.com/pg:16"}
SAMPLE = [
    Event("container", "create", "a1b2c3", WEB),
    Event("container", "start", "a1b2c3", WEB),
    Event("container", "die", "d4e5f6", {**DB, "exitCode": "1", "tier": "back"}),
    Event("container", "exec_start: sh -c true", "d4e5f6", DB),
    Event("image", "pull", "busybox:latest", {"name": "busybox:latest"}),
    Event("image", "delete", "sha256:0123abcd", {"name": "sha256:0123abcd"}),
    Event("volume", "create", "data", {"driver": "local"}),
    Event("network", "connect", "n0f00", {"name": "backend", "container": "d4e5f6"}),
    Event("daemon", "reload", "host", {"name": "lamina"}, scope="swarm"),
]


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        (["type=container"], [0, 1, 2, 3]),
        (["type=image", "type=volume"], [4, 5, 6]),  # values of one key: any
        (["event=start"], [1]),
        (["event=exec_start"], [3]),  # Docker: exec actions match without their detail
        (["event=create", "event=die"], [0, 2, 6]),
        (["container=a1b"], [0, 1]),  # an ID prefix
        (["container=db"], [2, 3]),  # a name
        (["image=busybox"], [0, 1, 4]),  # a name without its tag: containers and images
        (["image=busybox:latest"], [0, 1, 4]),
        (["image=example.com/pg"], [2, 3]),
        (["image=sha256:0123abcd"], [5]),
        (["label=tier"], [0, 1, 2]),
        (["label=tier=back"], [2]),
        (["label=tier=front", "label=image=busybox:latest"], [0, 1]),  # labels: all of them
        (["label=tier=front", "label=tier=back"], []),
        (["volume=data"], [6]),
        (["network=backend"], [7]),
        (["network=n0f"], [7]),
        (["scope=swarm"], [8]),
        (["type=container", "event=die"], [2]),  # keys: all of them
        (["type=image", "event=start"], []),
        ([], list(range(9))),
    ],
)
def test_filters(specs: list[str], expected: list[int]) -> None:
    selected = EventFilter.parse(specs)
    assert [i for i, e in enumerate(SAMPLE) if selected.matches(e)] == expected


def test_filters_apply_to_the_journal(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for e in SAMPLE:
        emit(root, e.type, e.action, e.actor_id, e.attributes, scope=e.scope)
    got = read(root, filters=EventFilter.parse(["type=container", "container=web"]))
    assert [(e.action, e.actor_id) for e in got] == [("create", "a1b2c3"), ("start", "a1b2c3")]


# -- following -----------------------------------------------------------------------------


def test_a_follower_sees_what_another_process_emits(tmp_path: Path) -> None:
    """Latency from the emitter's time stamp to this process holding the event."""
    root = tmp_path / "root"
    emit(root, "container", "create", "before-0", {})  # before the window: not shown
    start = time.time_ns()
    proc = emitter(root, "p", 20, sleep=0.02, go_on_stdin=True)
    go(proc)
    latencies: list[float] = []
    seen: list[str] = []
    for e in follow(root, since_ns=start, until_ns=start + 20 * 10**9):
        latencies.append((time.time_ns() - e.time_nano) / 1e9)
        seen.append(e.actor_id)
        if len(seen) == 20:
            break
    finish(proc)
    assert seen == [f"p-{n}" for n in range(20)]
    latencies.sort()
    print(
        f"follow latency: median {latencies[10] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    assert latencies[-1] < 1.0


def test_a_follower_keeps_every_event_across_rotations(tmp_path: Path) -> None:
    root = tmp_path / "root"
    follower = Follower(root, from_start=False)
    proc = emitter(root, "p", 600, max_bytes=32768, sleep=0.0005, go_on_stdin=True)
    go(proc)
    seen: list[int] = []
    deadline = time.monotonic() + 30
    try:
        while len(seen) < 600 and time.monotonic() < deadline:
            seen += [seq(e)[1] for e in follower.events()]
            follower.wait(1.0)
    finally:
        follower.close()
    finish(proc)
    assert seen == list(range(600))
    assert (root / "events" / "events.log.1").exists()  # it did rotate, several times


def test_a_follower_that_fell_two_rotations_behind_reads_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between two looks the live file was rotated twice: the file in between is
    read from ``events.log.1``, the one before from the follower's open file."""
    root = tmp_path / "root"
    monkeypatch.setattr(_events, "MAX_FILE_BYTES", 4096)
    follower = Follower(root, from_start=True)
    try:
        live = root / "events" / "events.log"
        emit(root, "container", "start", "c-0", {})
        got = [seq(e)[1] for e in follower.events()]
        files = [live.stat().st_ino]  # the live file, then each that followed it
        n = 1
        while len(files) < 3:
            emit(root, "container", "start", f"c-{n}", {})
            n += 1
            if live.stat().st_ino != files[-1]:
                files.append(live.stat().st_ino)
        assert (root / "events" / "events.log.1").stat().st_ino == files[1]
        got += [seq(e)[1] for e in follower.events()]
    finally:
        follower.close()
    assert got == list(range(n))


def test_a_partial_line_is_held_until_complete(tmp_path: Path) -> None:
    root = tmp_path / "root"
    emit(root, "container", "create", "c-0", {})
    follower = Follower(root, from_start=True)
    try:
        assert [e.actor_id for e in follower.events()] == ["c-0"]
        line = Event("container", "start", "c-1", {"name": "x"}, time_nano=time.time_ns())
        data = json.dumps(line.message(), separators=(",", ":")).encode() + b"\n"
        live = root / "events" / "events.log"
        with open(live, "ab") as f:
            f.write(data[:40])
        assert list(follower.events()) == []
        assert [e.actor_id for e in read(root)] == ["c-0"]
        late = Follower(root, from_start=False)  # made while the line is half written
        with open(live, "ab") as f:
            f.write(data[40:])
        assert [e.actor_id for e in follower.events()] == ["c-1"]
        assert [e.actor_id for e in late.events()] == ["c-1"]
        late.close()
    finally:
        follower.close()


def test_a_torn_line_is_skipped_and_does_not_swallow_the_next(tmp_path: Path) -> None:
    """What a writer killed mid-write leaves: part of a line without its newline.
    Readers never show it, and the next writer's event stands on a line of its own."""
    root = tmp_path / "root"
    emit(root, "container", "create", "c-0", {})
    with open(root / "events" / "events.log", "ab") as f:
        f.write(b'{"status":"start","id":"c-1","Type":"cont')
    follower = Follower(root, from_start=True)
    try:
        assert [e.actor_id for e in follower.events()] == ["c-0"]
        finish(emitter(root, "p", 1))  # another process
        assert [e.actor_id for e in follower.events()] == ["p-0"]
    finally:
        follower.close()
    assert [e.actor_id for e in read(root)] == ["c-0", "p-0"]


def mid_write(live: Path, timeout: float) -> bool:
    """Wait until the live file shows a write in flight (it does not end in a
    newline: the kernel grows it page by page)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(live, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size and os.pread(f.fileno(), 1, size - 1) != b"\n":
                    return True
        except FileNotFoundError:  # rotated: the next write makes it
            pass
    return False


def test_a_sigkilled_emitter_leaves_nothing_torn_for_readers(tmp_path: Path) -> None:
    """Writers of 1 MB events (a write of many pages, which SIGKILL can cut) killed
    while a write is in flight: readers see whole events only, and the event emitted
    after each kill is read."""
    root = tmp_path / "root"
    live = root / "events" / "events.log"
    emit(root, "container", "create", "c-0", {})
    pad = "x" * 1_000_000
    torn = 0
    for attempt in range(10):
        pid = os.fork()  # a writer without an interpreter's start-up: many kills
        if pid == 0:
            try:
                while True:
                    emit(root, "container", "start", f"k-{attempt}", {"pad": pad})
            finally:
                os._exit(1)
        mid_write(live, 1.0)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        torn += live.exists() and not live.read_bytes().endswith(b"\n")
        emit(root, "container", "start", f"after-{attempt}", {})
    got = list(read(root))
    afters = [e.actor_id for e in got if e.actor_id.startswith("after-")]
    assert afters == [f"after-{n}" for n in range(10 - len(afters), 10)]
    assert all(e.attributes.get("pad", pad) == pad for e in got)
    print(f"sigkill: {torn} of 10 kills left a torn line")
    assert torn > 0  # the case this is about did happen


# -- a full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root (mount -t tmpfs)")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mount], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", mount], check=False)


def fill_disk(mount: Path) -> None:
    """Take every free byte of the tmpfs."""
    fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


def test_a_full_disk_drops_events_with_one_warning(small_disk: Path) -> None:
    root = small_disk / "root"
    emit(root, "container", "create", "c-0", {})
    fill_disk(small_disk)
    out, err = finish(emitter(root, "full", 50, pad=300))
    assert out == "done\n"  # the operation went on
    live = root / "events" / "events.log"
    assert err.splitlines() == [
        f"lamina: warning: event not recorded: cannot write {live}: No space left on device"
    ]
    (small_disk / "filler").unlink()
    emit(root, "container", "start", "c-1", {})
    got = [e.actor_id for e in read(root)]
    assert got[0] == "c-0" and got[-1] == "c-1"
    assert len(got) < 50  # most of them were dropped
    assert all(e.actor_id.startswith(("c-", "full-")) for e in read(root))


# -- the command ---------------------------------------------------------------------------


def test_default_json_and_template_output(tmp_path: Path) -> None:
    root = tmp_path / "root"
    emit(root, "container", "start", "c" * 64, {"name": "web", "image": "busybox", "a.label": "1"})
    emit(root, "volume", "create", "data", {"driver": "local"})
    e1, e2 = read(root)

    def out(*args: str, tz: str = "UTC") -> list[str]:
        r = lamina_cli(root, "events", "--since", "1h", "--until", "0s", *args, env={"TZ": tz})
        assert r.returncode == 0 and r.stderr == "", r.stderr
        return r.stdout.splitlines()

    def stamp(ns: int, offset: int, zone: str) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9 + offset))
        return f"{when}.{ns % 10**9:09d}{zone}"

    attrs = "(a.label=1, image=busybox, name=web)"
    assert out() == [
        f"{stamp(e1.time_nano, 0, 'Z')} container start {'c' * 64} {attrs}",
        f"{stamp(e2.time_nano, 0, 'Z')} volume create data (driver=local)",
    ]
    assert (
        out(tz="Asia/Kolkata")[1]
        == f"{stamp(e2.time_nano, 19800, '+05:30')} volume create data (driver=local)"
    )
    assert [json.loads(line) for line in out("--format", "json")] == [
        {
            "status": "start",
            "id": "c" * 64,
            "from": "busybox",
            "Type": "container",
            "Action": "start",
            "Actor": {
                "ID": "c" * 64,
                "Attributes": {"a.label": "1", "image": "busybox", "name": "web"},
            },
            "scope": "local",
            "time": e1.time_nano // 10**9,
            "timeNano": e1.time_nano,
        },
        {
            "Type": "volume",
            "Action": "create",
            "Actor": {"ID": "data", "Attributes": {"driver": "local"}},
            "scope": "local",
            "time": e2.time_nano // 10**9,
            "timeNano": e2.time_nano,
        },
    ]
    template = '{{.Type}}/{{.Status}}/{{.From}} {{index .Actor.Attributes "name"}} '
    template += "{{json .Actor.Attributes}}"
    assert out("--format", template) == [
        'container/start/busybox web {"a.label":"1","image":"busybox","name":"web"}',
        "volume//  {\"driver\":\"local\"}",  # index of a missing key: ""
    ]  # fmt: skip


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no line in time"
    return proc.stdout.readline()


def test_follow_then_sigint_exits_quietly(tmp_path: Path) -> None:
    """``--since`` shows the journal first, then what another process does; Ctrl-C
    ends it with exit 0 and nothing on stderr."""
    root = tmp_path / "root"
    emit(root, "container", "create", "before-0", {"name": "before"})
    proc = subprocess.Popen(
        [
            *CLI,
            "--root",
            str(root),
            "events",
            "--since",
            "1m",
            "--format",
            "{{.Action}} {{.Actor.ID}}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert read_line(proc, 10) == "create before-0\n"  # it is following from here on
        start = time.monotonic()
        finish(emitter(root, "after", 1, action="die"))
        assert read_line(proc, 10) == "die after-0\n"
        print(f"CLI follow: seen {time.monotonic() - start:.3f} s after the emitter started")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0 and err == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_until_in_the_future_follows_until_then(tmp_path: Path) -> None:
    """An end alone shows the journal up to it; in the future, it follows until then."""
    root = tmp_path / "root"
    emit(root, "container", "start", "before-0", {})
    end = time.time_ns() + 3 * 10**9
    until = f"{end // 10**9}.{end % 10**9:09d}"
    proc = subprocess.Popen(
        [*CLI, "--root", str(root), "events", "--until", until, "--format", "{{.Actor.ID}}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert read_line(proc, 10) == "before-0\n"  # it is following from here on
        emit(root, "container", "start", "live-0", {})
        assert read_line(proc, 10) == "live-0\n"
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and out == "" and err == ""
    assert time.time_ns() >= end


BAD_TIME = "expected an RFC 3339 time, a Unix timestamp or a duration like 10m"
FILTER_KEYS = "type, event, container, image, label, network, volume, scope"
TYPES = ("builder, config, container, daemon, deployment, image, network, node, plugin, secret, "
         "service, volume")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--filter", "colour=red"], f"invalid filter 'colour' (supported: {FILTER_KEYS})"),
        (["--filter", "type"], "bad filter 'type': expected KEY=VALUE"),
        (["-f", "type=containers"], f"invalid filter 'type=containers' (type is one of {TYPES})"),
        (["--since", "yesterday"], f"invalid --since 'yesterday': {BAD_TIME}"),
        (["--until", "2026-13-45"], f"invalid --until '2026-13-45': {BAD_TIME}"),
        (["--since", "0s", "--until", "1h"], "--since (0s) cannot be after --until (1h)"),
        (
            ["--format", "{{.Nope}}"],
            'template: :1:2: executing "" at <.Nope>: '
            "can't evaluate field Nope in type *events.Message",
        ),
        (["--format", "{{.Action"], "template: :1: unclosed action"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    r = lamina_cli(tmp_path / "root", "events", *args, timeout=10)
    assert r.returncode == 125 and r.stdout == ""
    assert error_line(r.stderr).startswith(f"lamina: error: {message}")
