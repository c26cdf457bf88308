"""Container logs end to end, as a Docker user sees them: the real CLI, real runc and
conmon (and one micro-VM), a busybox image in a tmp root.

``logs -n`` reads the end of the log, not all of it; tails, ``--since``/``--until``,
``-t`` and the two streams agree with a full read; ``--log-opt max-size/max-file``
rotate the log while the container writes, keeping max-file files with every line of
them once and in order, also for ``logs -f`` across rotations; the rotation helper
lives exactly as long as its container; ``--log-driver none`` keeps no log; bad
drivers and options are one-line errors; ``inspect`` shows the log config. The
reader's corner cases on hand-written files: ``test_logs_reader.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from runtime_fixtures import (
    CLI,
    IMAGE_REF,
    cli_image_root,
    lamina_cli,
    remove_all_containers,
    until,
)
from runtime_fixtures import lamina_ok as ok

pytestmark = [pytest.mark.timeout(120), pytest.mark.both_modes]

IMAGE = IMAGE_REF
# Numbered lines of ~110 bytes in the log, paced (20 lines, then 10 ms) so that the
# rotation helper keeps up on a loaded machine: the files' size bound below holds
# for pauses of the helper up to about 100 ms.
WRITER = (
    'i=0; while [ $i -lt {n} ]; do echo "line $i {pad}"; i=$((i+1)); '
    "[ $((i % 20)) = 0 ] && sleep 0.01; done; true"
)
PAD = "x" * 60
SLACK = 32 * 1024  # what conmon may write while the helper reacts


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_image_root(tmp_path_factory, "logs")


@pytest.fixture
def root(image_root: Path) -> Iterator[Path]:
    yield image_root
    remove_all_containers(image_root)


def bundle(root: Path, name: str) -> Path:
    cid = json.loads(ok(root, "inspect", name))[0]["Id"]
    return root / "containers" / cid


def numbers(text: str) -> list[int]:
    return [int(line.split()[1]) for line in text.splitlines()]


def helpers_of(directory: Path) -> list[int]:
    """PIDs of lamina-logrotate processes working on ``directory``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"lamina-logrotate") and argv[1:2] == [str(directory).encode()]:
            found.append(int(pid))
    return found


def rchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def k8s_record(ts: float, stream: str, msg: str) -> bytes:
    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return f"{stamp}000+00:00 {stream} F {msg}\n".encode()


def test_tail_reads_the_end_of_the_log_not_all_of_it(root: Path) -> None:
    """Issue 9: ``logs -n 5`` read the whole file (1.8 s on 55 MB)."""
    from lamina.engine import open_engine

    ok(root, "run", "--name", "big", IMAGE, "true")
    log = bundle(root, "big") / "ctr.log"
    t0 = datetime.now(UTC).timestamp() - 3600
    with open(log, "wb") as f:  # 30 MB of what conmon writes, an hour of it
        for chunk in range(30):
            f.write(b"".join(k8s_record(t0 + (chunk * 5000 + i) * 0.01, "stdout",
                                        f"line {chunk * 5000 + i} {'y' * 150}")
                             for i in range(5000)))  # fmt: skip
    assert log.stat().st_size > 30_000_000

    rt = open_engine(root)
    try:
        before = rchar()
        tail = [e.data.split()[1] for e in rt.logs("big", tail=5)]
        read = rchar() - before
        assert tail == [str(n).encode() for n in range(149995, 150000)]
        assert read < 1_000_000, f"read {read} bytes of a {log.stat().st_size}-byte log"
        before = rchar()
        recent = list(rt.logs("big", since=t0 + 149989.5 * 0.01))
        want = [str(n).encode() for n in range(149990, 150000)]
        assert [e.data.split()[1] for e in recent] == want
        assert rchar() - before < 1_000_000
    finally:
        rt.close()
    assert numbers(ok(root, "logs", "-n", "3", "big")) == [149997, 149998, 149999]


def test_tail_since_until_timestamps_and_streams(root: Path) -> None:
    script = ("echo o1; echo e1 >&2; sleep 0.2; printf part; sleep 0.2; echo ial; "
              "echo e2 >&2; sleep 0.2; echo o3")  # fmt: skip
    ok(root, "run", "--name", "mix", IMAGE, "sh", "-c", script)
    r = lamina_cli(root, "logs", "mix")
    assert (r.stdout, r.stderr) == ("o1\npartial\no3\n", "e1\ne2\n")
    # The last entries of the full read, each on its stream: "partial" is one line,
    # placed where it ended, with the time it began.
    r = lamina_cli(root, "logs", "-n", "2", "mix")
    assert (r.stdout, r.stderr) == ("o3\n", "e2\n")
    r = lamina_cli(root, "logs", "-n", "3", "mix")
    assert (r.stdout, r.stderr) == ("partial\no3\n", "e2\n")
    r = lamina_cli(root, "logs", "-t", "--tail", "all", "mix")
    stamp = {line.split(" ", 1)[1]: line.split(" ", 1)[0]
             for line in (r.stdout + r.stderr).splitlines()}  # fmt: skip
    assert set(stamp) == {"o1", "e1", "partial", "e2", "o3"}
    assert stamp["e1"] < stamp["partial"] < stamp["e2"] < stamp["o3"]
    r = lamina_cli(root, "logs", "--since", stamp["e2"], "mix")
    assert (r.stdout, r.stderr) == ("o3\n", "e2\n")  # "partial" began before e2
    r = lamina_cli(root, "logs", "--until", stamp["e1"], "mix")
    assert (r.stdout, r.stderr) == ("o1\n", "e1\n")
    r = lamina_cli(root, "logs", "--since", stamp["e1"], "--until", stamp["e2"], "-n", "2", "mix")
    assert (r.stdout, r.stderr) == ("partial\n", "e2\n")

    # -f after a tail goes on with what comes next.
    ok(root, "run", "-d", "--name", "slow", IMAGE, "sh", "-c",
       "echo a; echo b; sleep 1; echo c")  # fmt: skip
    until(lambda: "b" in ok(root, "logs", "slow"), timeout=10)
    assert lamina_cli(root, "logs", "-f", "-n", "1", "slow").stdout == "b\nc\n"


def test_rotation_keeps_max_file_files_of_bounded_size(root: Path) -> None:
    ok(root, "run", "-d", "--name", "rot", "--log-opt", "max-size=10k", "--log-opt",
       "max-file=3", IMAGE, "sh", "-c", WRITER.format(n=1500, pad=PAD))  # fmt: skip
    d = bundle(root, "rot")
    assert ok(root, "wait", "rot") == "0\n"
    logs = sorted(p.name for p in d.iterdir() if p.name.startswith("ctr.log"))
    assert logs == ["ctr.log", "ctr.log.1", "ctr.log.2"]  # max-file in all
    for name in ("ctr.log.1", "ctr.log.2"):
        size = (d / name).stat().st_size
        assert 10_000 <= size <= 10_000 + SLACK, (name, size)  # rotated at max-size
    assert (d / "ctr.log").stat().st_size <= 10_000 + SLACK
    # Every line of the kept files, once, in order, up to the last one written.
    shown = numbers(ok(root, "logs", "rot"))
    assert shown == list(range(shown[0], 1500))
    assert shown[0] == int((d / "ctr.log.2").read_bytes().split()[4])
    for n in (5, 150, len(shown)):  # tails that reach into older files
        assert numbers(ok(root, "logs", "-n", str(n), "rot")) == shown[-n:]
    assert helpers_of(d) == []  # the helper ended with the container

    # Max-file 1 (the default) cuts the log instead, before a line would go past
    # max-size: the last lines are always there.
    ok(root, "run", "--name", "cut", "--log-opt", "max-size=10k", IMAGE, "sh", "-c",
       WRITER.format(n=500, pad=PAD))  # fmt: skip
    d = bundle(root, "cut")
    assert sorted(p.name for p in d.iterdir() if p.name.startswith("ctr.log")) == ["ctr.log"]
    assert 0 < (d / "ctr.log").stat().st_size <= 10_000
    shown = numbers(ok(root, "logs", "cut"))
    assert shown == list(range(shown[0], 500)) and shown[0] > 0


def test_follow_goes_on_across_rotations(root: Path) -> None:
    ok(root, "run", "-d", "--name", "flow", "--log-opt", "max-size=10k", "--log-opt",
       "max-file=50", IMAGE, "sh", "-c", WRITER.format(n=1500, pad=PAD))  # fmt: skip
    r = lamina_cli(root, "logs", "-f", "flow")  # returns once the container has exited
    assert r.returncode == 0, r.stderr
    assert numbers(r.stdout) == list(range(1500))  # nothing lost or twice at a boundary
    assert len(list(bundle(root, "flow").glob("ctr.log.*"))) > 10


def test_rotation_helper_lives_as_long_as_its_container(root: Path) -> None:
    ok(root, "run", "-d", "--name", "sleeper", "--log-opt", "max-size=1m", "--log-opt",
       "max-file=2", IMAGE, "sleep", "60")  # fmt: skip
    d = bundle(root, "sleeper")
    assert len(helpers_of(d)) == 1
    ok(root, "stop", "-t", "0", "sleeper")
    until(lambda: helpers_of(d) == [], timeout=10)
    ok(root, "start", "sleeper")
    assert len(helpers_of(d)) == 1  # one again, not one more
    helper = helpers_of(d)[0]
    ok(root, "rm", "-f", "sleeper")
    until(lambda: not Path(f"/proc/{helper}").exists(), timeout=10)
    assert not d.exists()
    # A log that is only cut (max-file 1) is conmon's own business: no helper.
    ok(root, "run", "-d", "--name", "cutter", "--log-opt", "max-size=1m", IMAGE, "sleep", "60")
    assert helpers_of(bundle(root, "cutter")) == []


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--log-driver", "syslog"], "unknown log driver 'syslog'"),
        (["--log-opt", "max-size=lots"], "invalid max-size 'lots'"),
        (["--log-opt", "max-size=0"], "max-size must be a positive number"),
        (["--log-opt", "max-size=1m", "--log-opt", "max-file=0"], "max-file cannot be less than 1"),
        (["--log-opt", "max-file=3"], "max-file needs max-size"),
        (["--log-opt", "color=red"], "unknown log opt 'color'"),
        (["--log-opt", "max-size"], "invalid --log-opt 'max-size': expected KEY=VALUE"),
        (["--log-driver", "none", "--log-opt", "max-size=1m"], "--log-driver none"),
        (["--log-driver", "local", "--log-opt", "compress=true"], "compress is not supported"),
        (["--isolation", "vm", "--log-driver", "none"], "not supported for VM containers"),
    ],
)
def test_bad_log_options_are_refused_in_one_line(
    root: Path, args: list[str], words: str
) -> None:
    r = lamina_cli(root, "run", "-d", *args, IMAGE, "true")
    assert r.returncode == 125
    assert r.stderr.startswith("lamina: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert words in r.stderr
    assert ok(root, "ps", "-a", "-q") == ""  # nothing was created


def test_inspect_shows_the_log_config(root: Path) -> None:
    ok(root, "create", "--name", "conf", "--log-driver", "json-file", "--log-opt",
       "max-size=10m", "--log-opt", "max-file=3", IMAGE, "true")  # fmt: skip
    ok(root, "create", "--name", "plain", IMAGE, "true")
    conf, plain = json.loads(ok(root, "inspect", "conf", "plain"))
    assert conf["HostConfig"]["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "10m", "max-file": "3"},
    }
    assert plain["HostConfig"]["LogConfig"] == {"Type": "k8s-file", "Config": {}}
    assert plain["LogPath"].endswith("/ctr.log")


def test_log_driver_none_keeps_no_log(root: Path) -> None:
    r = lamina_cli(root, "run", "--name", "quiet", "--log-driver", "none", IMAGE, "sh", "-c",
                   "echo out; echo err >&2")  # fmt: skip
    assert (r.returncode, r.stdout, r.stderr) == (0, "out\n", "err\n")  # attached: shown
    assert not (bundle(root, "quiet") / "ctr.log").exists()
    r = lamina_cli(root, "logs", "quiet")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "does not support reading" in r.stderr
    info = json.loads(ok(root, "inspect", "quiet"))[0]
    assert info["LogPath"] == ""
    assert info["HostConfig"]["LogConfig"] == {"Type": "none", "Config": {}}


@pytest.mark.slow
def test_vm_container_log_rotates(root: Path) -> None:
    if not os.path.exists("/usr/bin/qemu-system-x86_64"):
        pytest.skip("needs qemu-system-x86_64")
    cid = ok(root, "run", "-d", "--isolation", "vm", "--name", "vmlog", "--log-opt",
             "max-size=2k", "--log-opt", "max-file=3", IMAGE, "sh", "-c",
             'i=0; while [ $i -lt 300 ]; do echo "line $i"; i=$((i+1)); done').strip()  # fmt: skip
    shown = subprocess.run([*CLI, "--root", str(root), "logs", "-f", "vmlog"],
                           capture_output=True, text=True, timeout=90).stdout  # fmt: skip
    d = root / "vms" / cid
    assert sorted(p.name for p in d.glob("ctr.log*")) == ["ctr.log", "ctr.log.1", "ctr.log.2"]
    one_record = 50  # "<time> stdout F line 299\n"
    for name in ("ctr.log.1", "ctr.log.2"):
        assert 2000 <= (d / name).stat().st_size <= 2000 + one_record
    assert numbers(shown)[-1] == 299
    kept = numbers(ok(root, "logs", "vmlog"))
    assert kept == list(range(kept[0], 300)) and kept[0] > 0
    assert numbers(ok(root, "logs", "-n", "40", "vmlog")) == kept[-40:]
