"""Events end to end: a second process running ``lamina events`` (follow mode) sees
what a first one does with real containers, images and volumes, including what
happens with no lamina process alive (a ``--rm`` container's own exit and removal,
an OOM kill, a restart policy's restarts, all done by the monitor's exit command);
``--since``/``--until`` windows across processes; Docker's default line and JSON.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from registry_server import RegistryServer
from runtime_fixtures import (
    CLI,
    IMAGE_REF,
    RemoteMode,
    cli_image_root,
    lamina_ok,
    remove_all_containers,
)

pytestmark = [pytest.mark.timeout(180), pytest.mark.both_modes]

Event = dict[str, Any]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_image_root(tmp_path_factory, "events-e2e")


@pytest.fixture
def root(image_root: Path) -> Iterator[Path]:
    yield image_root
    remove_all_containers(image_root)


class Follower:
    """``lamina events --format json`` in a process of its own, following the journal
    from the moment it was made (``--since`` then: nothing is missed while it starts)."""

    def __init__(self, root: Path, *args: str) -> None:
        since = f"{time.time_ns() // 10**9}.{time.time_ns() % 10**9:09d}"
        # In remote mode through the root's daemon (its journal's stream), as lamina_cli.
        host = ["--host", RemoteMode.host(root)] if RemoteMode.on else []
        self.proc = subprocess.Popen(
            [*CLI, "--root", str(root), *host, "events", "--since", since, "--format", "json",
             *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.seen: list[Event] = []
        self._partial = b""

    def until(self, done: Callable[[list[Event]], bool], timeout: float = 30) -> list[Event]:
        """Read events until ``done(all seen so far)``; returns them."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while not done(self.seen):
            left = deadline - time.monotonic()
            assert left > 0, f"not seen in time; seen: {[e['Action'] for e in self.seen]}"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                assert chunk, "the follower ended"
                *lines, self._partial = (self._partial + chunk).split(b"\n")
                self.seen += [json.loads(line) for line in lines]
        return self.seen

    def of(self, actor: str) -> list[Event]:
        return [e for e in self.seen if e["Actor"]["ID"] == actor]

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        _out, err = self.proc.communicate(timeout=10)
        assert self.proc.returncode == 0 and err == b"", err


@pytest.fixture
def follower(root: Path) -> Iterator[Follower]:
    f = Follower(root)
    yield f
    f.close()


def has(actor: str, action: str) -> Callable[[list[Event]], bool]:
    return lambda seen: any(e["Actor"]["ID"] == actor and e["Action"] == action for e in seen)


def brief(events: list[Event]) -> list[tuple[str, dict[str, str]]]:
    """(Action, Attributes) of each event, the image and name attributes left out."""
    out = []
    for e in events:
        attrs = {k: v for k, v in e["Actor"]["Attributes"].items() if k not in ("image", "name")}
        out.append((e["Action"], attrs))
    return out


LOOP = "trap 'exit 3' TERM; while :; do sleep 0.1; done"


def test_a_second_process_sees_a_containers_life(root: Path, follower: Follower) -> None:
    cid = lamina_ok(root, "run", "-d", "--name", "ev-a", "-l", "team=blue", IMAGE_REF, "sh",
                    "-c", LOOP).strip()  # fmt: skip
    for args in (
        ["pause", cid],
        ["unpause", cid],
        ["rename", "ev-a", "ev-b"],
        ["kill", "-s", "USR1", cid],  # no handler in PID 1: ignored, it runs on
    ):
        lamina_ok(root, *args)
    r = subprocess.run([*CLI, "--root", str(root), "exec", cid, "sh", "-c", "exit 2"])
    assert r.returncode == 2
    lamina_ok(root, "stop", cid)
    lamina_ok(root, "rm", cid)
    got = follower.until(has(cid, "destroy"))
    mine = follower.of(cid)
    attributes = [e["Actor"]["Attributes"] for e in mine]
    [exec_id] = {a["execID"] for a in attributes if "execID" in a}
    ran = attributes[10].get("execDuration", "")  # whole seconds it ran, as Docker's
    assert ran.isdigit()
    assert brief(mine) == [
        ("create", {"team": "blue"}),
        ("start", {"team": "blue"}),
        ("pause", {"team": "blue"}),
        ("unpause", {"team": "blue"}),
        ("rename", {"team": "blue", "oldName": "/ev-a"}),
        ("kill", {"team": "blue", "signal": "10"}),
        ("exec_create: sh -c exit 2", {"team": "blue", "execID": exec_id}),
        ("exec_start: sh -c exit 2", {"team": "blue", "execID": exec_id}),
        ("exec_die", {"team": "blue", "execID": exec_id, "exitCode": "2"}),
        ("kill", {"team": "blue", "signal": "15"}),
        ("die", {"team": "blue", "exitCode": "3", "execDuration": ran}),
        ("stop", {"team": "blue"}),
        ("destroy", {"team": "blue"}),
    ]
    assert [e["Actor"]["Attributes"]["name"] for e in mine][:5] == ["ev-a"] * 4 + ["ev-b"]
    assert {e["Actor"]["Attributes"]["image"] for e in mine} == {IMAGE_REF}
    # Docker's JSON, field for field (with the legacy status/id/from of containers).
    die = mine[10]
    assert list(die) == ["status", "id", "from", "Type", "Action", "Actor", "scope", "time",
                         "timeNano"]  # fmt: skip
    assert (die["status"], die["id"], die["from"], die["Type"], die["scope"]) == (
        "die", cid, IMAGE_REF, "container", "local")  # fmt: skip
    assert die["time"] == die["timeNano"] // 10**9
    assert len(got) >= len(mine)


def test_the_exit_path_reports_with_no_lamina_process_alive(root: Path, follower: Follower) -> None:
    """A ``--rm`` container that exits on its own (``run -d --rm ... sleep 1``, then
    nothing), one killed by the OOM killer, one restarted by its policy: the follower
    sees die, destroy, oom, and the policy's start and restart, all reported by exit
    commands (the only lamina process alive is the follower)."""
    gone = lamina_ok(root, "run", "-d", "--rm", IMAGE_REF, "sh", "-c", "sleep 1").strip()
    hog = 'x=$(head -c 50000000 /dev/zero | tr "\\0" a); echo survived'
    oom = lamina_ok(root, "run", "-d", "-m", "8m", "--memory-swap", "8m", IMAGE_REF, "sh", "-c",
                    hog).strip()  # fmt: skip
    again = lamina_ok(root, "run", "-d", "--restart", "on-failure:1", IMAGE_REF, "sh", "-c",
                      "exit 1").strip()  # fmt: skip

    def all_done(seen: list[Event]) -> bool:
        return (
            has(gone, "destroy")(seen)
            and has(oom, "die")(seen)
            and sum(e["Actor"]["ID"] == again and e["Action"] == "die" for e in seen) == 2
        )

    follower.until(all_done)
    assert brief(follower.of(gone))[1:] == [
        ("start", {}),
        ("die", {"exitCode": "0", "execDuration": "1"}),
        ("destroy", {}),
    ]
    assert [a for a, _ in brief(follower.of(oom))] == ["create", "start", "oom", "die"]
    assert follower.of(oom)[-1]["Actor"]["Attributes"]["exitCode"] == "137"
    assert [(a, attrs.get("exitCode")) for a, attrs in brief(follower.of(again))] == [
        ("create", None), ("start", None), ("die", "1"), ("start", None), ("restart", None),
        ("die", "1"),
    ]  # fmt: skip


def test_image_events(
    root: Path, follower: Follower, registry: RegistryServer, tmp_path: Path
) -> None:
    """tag, push, untag, pull, import, delete, with Docker's actors and names (those of
    its containerd image store: an untag names the reference in its familiar form)."""
    image_id = lamina_ok(root, "images", "-q", "--no-trunc", IMAGE_REF).split()[0]
    remote = f"{registry.host}/events/busybox"
    lamina_ok(root, "tag", IMAGE_REF, f"{remote}:1")
    lamina_ok(root, "push", "-q", f"{remote}:1")
    lamina_ok(root, "rmi", f"{remote}:1")
    lamina_ok(root, "pull", "-q", f"{remote}:1")
    digest = lamina_ok(root, "images", "--digests", "--format", "{{.Digest}}", remote).strip()
    lamina_ok(root, "rmi", f"{remote}:1")
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 0
        tar.addfile(info)
    other = lamina_ok(root, "import", str(rootfs), "events/other:7").strip()
    lamina_ok(root, "rmi", "events/other:7")
    seen = follower.until(has(other, "delete"))
    images = [(e["Action"], e["Actor"]["ID"], e["Actor"]["Attributes"]) for e in seen
              if e["Type"] == "image"]  # fmt: skip
    assert images == [
        ("tag", image_id, {"name": f"{remote}:1"}),
        ("push", f"{remote}:1", {"name": remote}),
        ("untag", image_id, {"name": f"{remote}:1"}),
        ("pull", f"{remote}:1", {"name": remote}),
        ("untag", image_id, {"name": f"{remote}:1"}),
        ("untag", image_id, {"name": f"{remote}@{digest}"}),  # the pull's, as Docker's
        ("tag", other, {"name": "events/other:7"}),
        ("import", other, {"name": other}),
        ("untag", other, {"name": "events/other:7"}),
        ("delete", other, {"name": other}),
    ]
    pull = next(e for e in seen if e["Action"] == "pull")
    assert list(pull) == ["status", "id", "Type", "Action", "Actor", "scope", "time", "timeNano"]
    assert (pull["status"], pull["id"]) == ("pull", f"{remote}:1")


def test_volume_events(root: Path, follower: Follower) -> None:
    lamina_ok(root, "volume", "create", "ev-vol")
    cid = lamina_ok(root, "create", "-v", "ev-vol:/data", IMAGE_REF, "true").strip()
    lamina_ok(root, "start", "-a", cid)
    lamina_ok(root, "rm", cid)
    lamina_ok(root, "volume", "rm", "ev-vol")
    seen = follower.until(has("ev-vol", "destroy"))
    volumes = [(e["Action"], e["Actor"]["ID"], e["Actor"]["Attributes"]) for e in seen
               if e["Type"] == "volume"]  # fmt: skip
    assert volumes == [
        ("create", "ev-vol", {"driver": "local"}),
        ("mount", "ev-vol", {"container": cid, "destination": "/data", "driver": "local",
                             "propagation": "", "read/write": "true"}),
        ("unmount", "ev-vol", {"container": cid, "driver": "local"}),
        ("destroy", "ev-vol", {"driver": "local"}),
    ]  # fmt: skip
    assert list(seen[0]) == ["Type", "Action", "Actor", "scope", "time", "timeNano"]


def test_since_and_until_windows_across_processes(root: Path) -> None:
    """Containers created by three processes: a window from the second's create to just
    before the third's holds the second's events only; the default lines are Docker's."""
    made = [lamina_ok(root, "create", "--name", f"win-{i}", IMAGE_REF, "true").strip()
            for i in range(3)]  # fmt: skip
    every = [json.loads(line) for line in lamina_ok(
        root, "events", "--since", "10m", "--until", "0s", "--format", "json",
        "--filter", "event=create").splitlines()]  # fmt: skip
    stamps = {e["Actor"]["ID"]: e["timeNano"] for e in every}
    since, until = stamps[made[1]], stamps[made[2]] - 1

    def stamp(ns: int) -> str:
        return f"{ns // 10**9}.{ns % 10**9:09d}"

    lines = lamina_ok(root, "events", "--since", stamp(since), "--until", stamp(until),
                      "--filter", "type=container").splitlines()  # fmt: skip
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since // 10**9))
    assert lines == [
        f"{when}.{since % 10**9:09d}Z container create {made[1]} (image={IMAGE_REF}, name=win-1)"
    ]
