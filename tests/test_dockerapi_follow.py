"""The docker CLI's following commands: ``docker events`` while containers run (and
``docker run --rm`` of a short command each time), ``docker stats`` streaming."""

from __future__ import annotations

import queue
import subprocess
import threading
from collections.abc import Iterator
from typing import IO

import pytest
from dockerapi_fixtures import DockerEndpoint, docker_endpoint
from runtime_fixtures import IMAGE_REF, cli_image_root, until


@pytest.fixture(scope="module")
def ep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerEndpoint]:
    root = cli_image_root(tmp_path_factory, "dockerapi-follow")
    with docker_endpoint(root) as endpoint:
        yield endpoint


class Follower:
    """A following docker command; its output lines as they come."""

    def __init__(self, ep: DockerEndpoint, *args: str) -> None:
        self.proc = subprocess.Popen(["docker", *args], env=ep.env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, out: IO[str] | None) -> None:
        assert out is not None
        for line in out:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, timeout: float = 30) -> str:
        line = self.lines.get(timeout=timeout)
        assert line is not None, f"it ended: {self.proc.stderr.read() if self.proc.stderr else ''}"
        return line

    def stop(self) -> None:
        self.proc.kill()
        self.proc.communicate()


def test_events_follow_while_run_rm_of_short_commands(ep: DockerEndpoint) -> None:
    events = Follower(ep, "events", "--filter", "type=container",
                      "--format", "{{.Action}} {{.Actor.Attributes.name}}")  # fmt: skip
    try:
        names = [f"short-{i}" for i in range(30)]
        for name in names:
            # The command ends (and --rm removes it) before the start request returns:
            # that start is no "no such container".
            ran = ep.docker("run", "--rm", "--name", name, IMAGE_REF, "true")
            assert ran.returncode == 0, ran.stderr
        seen: list[str] = []
        while f"destroy {names[-1]}" not in seen:
            seen.append(events.next_line())
        for name in names:
            mine = [line.split()[0] for line in seen if line.endswith(f" {name}")]
            assert mine == ["create", "attach", "start", "die", "destroy"] or mine == [
                "create", "start", "die", "destroy"], (name, seen)  # fmt: skip
    finally:
        events.stop()


def test_stats_streams_updates(ep: DockerEndpoint) -> None:
    name = "stats-streamed"
    grows = "while true; do sleep 300 & sleep 0.3; done"  # one more process each 0.3 s
    ep.docker_ok("run", "-d", "--name", name, IMAGE_REF, "sh", "-c", grows)
    stats = Follower(ep, "stats", "--format", "{{.Name}} pids={{.PIDs}}", name)
    try:
        counts: set[str] = set()
        while len(counts) < 2:  # a later update shows another number of processes
            line = stats.next_line().rsplit("\x1b[H", 1)[-1]
            if line.startswith(f"{name} pids="):
                counts.add(line.split("=", 1)[1].split()[0])
        assert stats.proc.poll() is None  # still following
    finally:
        stats.stop()
        ep.docker("rm", "-f", name)


def test_top_with_ps_arguments(ep: DockerEndpoint) -> None:
    name = "top-aux"
    script = "sleep 301 & sleep 302; true"  # sh stays (it does not exec its last command)
    ep.docker_ok("run", "-d", "--name", name, IMAGE_REF, "sh", "-c", script)
    try:
        def commands() -> list[str]:
            lines = ep.docker_ok("top", name, "aux").splitlines()
            titles = lines[0].split()
            assert titles[:3] == ["USER", "PID", "%CPU"] and titles[-1] == "COMMAND"
            return sorted(line.split(None, len(titles) - 1)[-1] for line in lines[1:])

        until(lambda: len(commands()) == 3)  # once sh has started both
        shell, *sleeps = commands()
        assert shell.startswith("sh -c sleep 301")  # ps cuts it to its width, as on dockerd
        assert sleeps == ["sleep 301", "sleep 302"]
        picked = ep.docker_ok("top", name, "-o", "pid,comm").splitlines()
        assert picked[0].split() == ["PID", "COMMAND"]
        assert sorted(line.split()[1] for line in picked[1:]) == ["sh", "sleep", "sleep"]
        bad = ep.docker("top", name, "-o", "comm")  # no PID column to find its processes by
        assert bad.returncode != 0 and "PID" in bad.stderr
    finally:
        ep.docker("rm", "-f", name)
