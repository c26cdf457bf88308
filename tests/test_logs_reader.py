"""The log reader and the rotation protocol of ``lamina.runtime._logs``, on log files
written here in conmon's k8s-file format: a tail or ``--since`` read from the end
gives exactly the end of a full read (partial lines joined across streams, block
and file boundaries), rotated files are read in order and once, a follower keeps
every record across rotations, and ``--log-opt`` values are checked as Docker
checks them. The same code on real containers: ``test_logs.py``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lamina.runtime._logs import (
    LogReader,
    LogSettings,
    RotatingLog,
    log_settings,
    read_logs,
    rotate,
    rotated_paths,
)
from lamina.runtime._types import LogEntry

T0 = 1_700_000_000.0


def record(ts: float, stream: str, flag: str, msg: bytes) -> bytes:
    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return f"{stamp}123+00:00 {stream} {flag} ".encode() + msg + b"\n"


def entries(path: Path, **kw: object) -> list[tuple[str, float, bytes]]:
    got = read_logs(path, follow=False, running=None, **kw)  # type: ignore[arg-type]
    return [(e.stream, e.timestamp, e.data) for e in got]


def tricky_log(rng: random.Random, n: int) -> list[bytes]:
    """Records of two streams, interleaved, with partial lines (P) whose pieces are
    far apart, long records, and stretches where one stream is silent."""
    out: list[bytes] = []
    open_chain = {"stdout": False, "stderr": False}
    for i in range(n):
        ts = T0 + i * 0.001
        quiet = "stderr" if (i // 400) % 3 == 0 else None  # stderr silent in stretches
        stream = rng.choice([s for s in ("stdout", "stderr") if s != quiet])
        if open_chain["stderr"] and stream == "stdout" and rng.random() < 0.002:
            stream = "stderr"  # close an old stderr chain now and then
        partial = rng.random() < 0.15
        size = rng.choice([5, 40, 300, 5000]) if rng.random() < 0.05 else rng.randint(1, 80)
        msg = f"{stream[3]}{i}:".encode() + b"x" * size
        out.append(record(ts, stream, "P" if partial else "F", msg))
        open_chain[stream] = partial
    return out


def test_tail_and_since_give_the_end_of_the_full_read(tmp_path: Path) -> None:
    rng = random.Random(9)
    path = tmp_path / "ctr.log"
    records = tricky_log(rng, 6000)
    path.write_bytes(b"".join(records))
    full = entries(path)
    assert len(full) > 4000
    for tail in (0, 1, 2, 5, 17, 100, 999, 3000, len(full), len(full) + 10):
        assert entries(path, tail=tail) == (full[-tail:] if tail else []), tail
    for stream in ("stdout", "stderr"):
        only = [e for e in full if e[0] == stream]
        got = entries(path, tail=50, streams=frozenset({stream}))
        assert got == only[-50:], stream
    for k in (1, 10, 700, 3500):
        since = full[-k][1]
        want = [e for e in full if e[1] >= since]
        assert entries(path, since=since) == want, k
        assert entries(path, since=since, tail=3) == want[-3:], k
    until = full[len(full) // 2][1]
    want = [e for e in full if e[1] <= until]
    assert entries(path, until=until, tail=20) == want[-20:]


def test_a_partial_line_begun_long_before_the_tail_is_joined(tmp_path: Path) -> None:
    """stderr's line began (P) before megabytes of stdout and ends (F) at the end."""
    path = tmp_path / "ctr.log"
    head = record(T0, "stderr", "P", b"begun ")
    body = b"".join(record(T0 + 1 + i * 1e-4, "stdout", "F", b"o" * 100) for i in range(30000))
    end = record(T0 + 9, "stderr", "F", b"ended") + record(T0 + 9.5, "stdout", "F", b"last")
    path.write_bytes(head + body + end)
    assert entries(path, tail=2) == [
        ("stderr", T0, b"begun ended\n"),  # the time of its first piece
        ("stdout", T0 + 9.5, b"last\n"),
    ]
    assert entries(path, tail=1, streams=frozenset({"stderr"})) == [
        ("stderr", T0, b"begun ended\n")
    ]
    # Starting after T0 leaves that line out, as a full read filtered so does.
    assert entries(path, since=T0 + 5) == [("stdout", T0 + 9.5, b"last\n")]


def test_an_unterminated_last_line_comes_last(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    path.write_bytes(
        record(T0, "stdout", "F", b"a")
        + record(T0 + 1, "stdout", "P", b"no newline")
        + record(T0 + 2, "stderr", "F", b"b")
        + b"2023-11-14T22:13:23.000000123+00:00 stdout F half-writ"  # a writer mid-record
    )
    assert entries(path) == [
        ("stdout", T0, b"a\n"),
        ("stderr", T0 + 2, b"b\n"),
        ("stdout", T0 + 1, b"no newline"),
    ]
    assert entries(path, tail=1) == [("stdout", T0 + 1, b"no newline")]
    assert entries(path, tail=2) == entries(path)[-2:]


@pytest.mark.timeout(10)
def test_a_tail_of_empty_files_and_a_record_cut_short_ends(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    for name in ("ctr.log", "ctr.log.1", "ctr.log.2"):
        (tmp_path / name).write_bytes(b"")
    assert entries(path, tail=5) == []
    (tmp_path / "ctr.log.2").write_bytes(record(T0, "stdout", "P", b"x")[:-1])  # no newline
    assert entries(path, tail=5) == [("stdout", T0, b"x")]
    assert entries(path, since=T0 - 1) == [("stdout", T0, b"x")]


def write_rotating(path: Path, settings: LogSettings, lines: range) -> None:
    log = RotatingLog(path, settings)
    try:
        for i in lines:
            log.write([record(T0 + i * 0.01, "stdout", "F", f"line {i}".encode())])
    finally:
        log.close()


def numbers(got: list[tuple[str, float, bytes]]) -> list[int]:
    return [int(data.split()[1]) for _, _, data in got]


def test_rotation_keeps_max_file_files_each_read_once_in_order(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    settings = LogSettings("json-file", max_size=1000, max_files=4)
    write_rotating(path, settings, range(500))
    rotated = rotated_paths(path)
    assert [p.name for p in rotated] == ["ctr.log.1", "ctr.log.2", "ctr.log.3"]
    one = len(record(T0, "stdout", "F", b"line 499"))
    for p in rotated:  # rotated at max-size, one record past it at most
        assert 1000 <= p.stat().st_size <= 1000 + one
    got = numbers(entries(path))
    assert got == list(range(got[0], 500))  # the newest lines, none twice, none missing
    assert got[0] == int(rotated[-1].read_bytes().split()[4])  # from the oldest file
    for tail in (1, 10, 30, 60, 100, len(got)):  # tails spanning files
        assert numbers(entries(path, tail=tail)) == got[-tail:]
    # Max-file 1 keeps no rotated file: the log is cut.
    cut = tmp_path / "cut" / "ctr.log"
    cut.parent.mkdir()
    write_rotating(cut, LogSettings("json-file", max_size=1000), range(500))
    assert rotated_paths(cut) == [] and cut.stat().st_size <= 1000 + one
    assert numbers(entries(cut))[-1] == 499


def test_a_rotation_cut_short_is_finished_not_repeated(tmp_path: Path) -> None:
    """Killed after its hard link and before the writer switched, a rotation leaves the
    live file under two names: it is read once, and the next rotation does not shift
    it again."""
    path = tmp_path / "ctr.log"
    write_rotating(path, LogSettings(max_size=200, max_files=3), range(30))
    before = [p.read_bytes() for p in rotated_paths(path)]
    rotate(path, 3)  # steps 1 and 2 ...
    assert (path.with_name("ctr.log.1")).samefile(path)
    once = entries(path)
    assert numbers(once) == sorted(set(numbers(once)))
    rotate(path, 3)  # ... and again, as the next helper would: nothing moves
    assert [p.read_bytes() for p in rotated_paths(path)][1:] == before[:1]
    assert entries(path) == once


def test_a_follower_sees_every_record_once_across_rotations(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    log = RotatingLog(path, LogSettings(max_size=300, max_files=3))
    reader = LogReader(path)
    seen: list[LogEntry] = []
    try:
        for i in range(400):
            # Pieces of one line land in different files; reads come at random points.
            log.write([record(T0 + i, "stdout", "P", f"{i}-".encode()),
                       record(T0 + i, "stdout", "F", b"end")])  # fmt: skip
            if i % 7 == 0:
                seen += reader.read()
        seen += reader.read()
    finally:
        log.close()
        reader.close()
    assert [e.data for e in seen] == [f"{i}-end\n".encode() for i in range(400)]


def test_a_slow_follower_goes_on_with_the_files_that_are_left(tmp_path: Path) -> None:
    """Files rotated away before a follower got to them are gone: it reads the rest of
    the one it had open, then the files that are left; it neither stops nor repeats."""
    path = tmp_path / "ctr.log"
    log = RotatingLog(path, LogSettings(max_size=200, max_files=2))
    reader = LogReader(path)
    try:
        log.write([record(T0, "stdout", "F", b"line 0")])
        first = numbers([(e.stream, e.timestamp, e.data) for e in reader.read()])
        for i in range(1, 200):
            log.write([record(T0 + i, "stdout", "F", f"line {i}".encode())])
        later = numbers([(e.stream, e.timestamp, e.data) for e in reader.read()])
    finally:
        log.close()
        reader.close()
    assert first == [0]
    assert later == sorted(set(later)) and later[0] == 1 and later[-1] == 199
    kept = numbers(entries(path))
    assert later[-len(kept) :] == kept and len(later) < 199  # some were gone


def test_log_settings_follow_docker() -> None:
    assert log_settings("k8s-file", {}) == LogSettings("k8s-file")
    assert log_settings("json-file", {"max-size": "10m", "max-file": "3"}) == LogSettings(
        "json-file", 10_000_000, 3
    )  # decimal units, as Docker's max-size
    assert log_settings("json-file", {"max-size": "1.5k"}).max_size == 1500
    assert log_settings("local", {}) == LogSettings("local", 20 * 1024 * 1024, 5)
    assert log_settings("local", {"max-file": "2"}).max_files == 2
    assert log_settings("none", {}) == LogSettings("none")
    assert not log_settings("none", {}).enabled
    for driver, opts, words in [
        ("syslog", {}, "unknown log driver"),
        ("json-file", {"max-size": "ten"}, "invalid max-size"),
        ("json-file", {"max-size": "0"}, "positive"),
        ("json-file", {"max-size": "-1m"}, "invalid max-size"),
        ("json-file", {"max-size": "1m", "max-file": "0"}, "less than 1"),
        ("json-file", {"max-size": "1m", "max-file": "x"}, "invalid max-file"),
        ("json-file", {"max-file": "3"}, "needs max-size"),
        ("json-file", {"bogus": "1"}, "unknown log opt 'bogus'"),
        ("json-file", {"tag": "x"}, "not supported"),
        ("local", {"compress": "true"}, "compress"),
        ("none", {"max-size": "1m"}, "--log-driver none"),
    ]:
        with pytest.raises(ValueError, match=words):
            log_settings(driver, opts)


@pytest.fixture
def big_log(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "ctr.log"
    with open(path, "wb") as f:
        for chunk in range(20):
            base = chunk * 10000
            f.write(b"".join(record(T0 + (base + i) * 1e-3, "stdout", "F", b"y" * 80)
                             for i in range(10000)))  # fmt: skip
    yield path
    os.unlink(path)


def test_reading_bytes_of_a_tail_does_not_grow_with_the_log(big_log: Path) -> None:
    size = big_log.stat().st_size
    assert size > 20_000_000
    with open("/proc/self/io") as f:
        before = int(next(line for line in f if line.startswith("rchar:")).split()[1])
    got = entries(big_log, tail=5)
    with open("/proc/self/io") as f:
        after = int(next(line for line in f if line.startswith("rchar:")).split()[1])
    assert len(got) == 5 and got[-1][1] == pytest.approx(T0 + 199999e-3)
    assert after - before < 256 * 1024, after - before
