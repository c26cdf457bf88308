"""Live DNS aliases (``Engine.networks.set_aliases``, what deployments use to take an
unhealthy replica out of its service's name and put a ready one in), with real
containers on a user network, netavark and aardvark-dns: a name appears and goes at
once for busybox ``nslookup`` in another container, resolves to every container that
has it, survives a restart of the container (the record keeps it), is set on a
created container for its start, and the container's own name always resolves. A
name aardvark-dns's file cannot hold is refused with one line, nothing changed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from leak_check import clear_networks, pid_stopped
from runtime_fixtures import (
    IMAGE_REF,
    NEEDS_NETAVARK,
    cli_image_root,
    error_line,
    lamina_cli,
    lamina_ok,
    remove_all_containers,
    until,
)

pytestmark = [
    pytest.mark.timeout(180),
    NEEDS_NETAVARK,
]

NET = "svc"
AT_ONCE = 3.0  # seconds a change may take to show (aardvark-dns reloads on SIGHUP)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = cli_image_root(tmp_path_factory, "aliases")
    yield root
    remove_all_containers(root)
    for net in lamina_cli(root, "network", "ls", "-q").stdout.split():
        lamina_cli(root, "network", "rm", net)


@pytest.fixture
def root(image_root: Path) -> Iterator[Path]:
    lamina_ok(image_root, "network", "create", NET)
    lamina_ok(image_root, "run", "-d", "--name", "client", "--network", NET, IMAGE_REF,
              "sleep", "300")  # fmt: skip
    yield image_root
    clear_networks(image_root)


def set_aliases(root: Path, container: str, aliases: list[str], network: str = NET) -> list[str]:
    from lamina.engine import open_engine

    with open_engine(root) as engine:
        return engine.networks.set_aliases(container, network, aliases)


def run(root: Path, name: str, *aliases: str) -> str:
    """A sleeping container on the network; its address there."""
    flags = [f"--network-alias={a}" for a in aliases]
    lamina_ok(root, "run", "-d", "--name", name, "--network", NET, *flags, IMAGE_REF,
              "sleep", "300")  # fmt: skip
    return address(root, name)


def address(root: Path, name: str) -> str:
    settings = json.loads(lamina_ok(root, "inspect", name))[0]["NetworkSettings"]
    return str(settings["Networks"][NET]["IPAddress"])


def resolve(root: Path, name: str) -> set[str]:
    """The addresses ``nslookup NAME`` answers in the client container (none:
    NXDOMAIN, or no answer within a second: ``resolves`` asks again)."""
    argv = ["nslookup", "-timeout=1", name]
    out = lamina_cli(root, "exec", "client", *argv).stdout
    answer = out.split("Name:", 1)[1] if "Name:" in out else ""
    return set(re.findall(r"Address:\s*([0-9a-f.:]+)", answer))


def resolves(root: Path, name: str, addresses: set[str]) -> None:
    until(lambda: resolve(root, name) == addresses, AT_ONCE)


def test_an_alias_appears_and_goes_at_once(root: Path) -> None:
    one, two = run(root, "replica-1"), run(root, "replica-2")
    assert resolve(root, "web") == set()

    assert set_aliases(root, "replica-1", ["web"]) == ["web"]
    resolves(root, "web", {one})
    assert set_aliases(root, "replica-2", ["web", "api", "WEB"]) == ["web", "api"]
    resolves(root, "web", {one, two})  # one name, several containers: all of them
    resolves(root, "api", {two})

    set_aliases(root, "replica-1", [])  # out of the name; its own name stays
    resolves(root, "web", {two})
    assert resolve(root, "replica-1") == {one}
    settings = json.loads(lamina_ok(root, "inspect", "replica-2"))[0]["NetworkSettings"]
    assert settings["Networks"][NET]["Aliases"] == ["web", "api"]
    assert "web" in settings["Networks"][NET]["DNSNames"]
    assert set_aliases(root, "replica-1", []) == []  # again: nothing changes

    # The record keeps them: a restart sets up the same names.
    lamina_ok(root, "restart", "-t", "0", "replica-2")
    resolves(root, "web", {address(root, "replica-2")})
    resolves(root, "api", {address(root, "replica-2")})
    # A stopped one leaves every name (netavark's teardown finds its changed record).
    lamina_ok(root, "stop", "-t", "0", "replica-2")
    resolves(root, "web", set())
    dns_file = root / "networks" / "netavark" / "aardvark-dns" / NET
    assert "replica-2" not in dns_file.read_text()


def test_names_resolve_at_once_while_other_containers_come_and_go(root: Path) -> None:
    """The bridge keeps its address as containers join and leave it: a Linux bridge
    whose address was never set takes its lowest port's whenever ports change, and
    every container's ARP cache then sends its DNS queries (and its egress) to a
    stale gateway address for up to half a minute, a replica's start or stop making
    its service's name unresolvable for everyone (seen here 24 s)."""
    from lamina.engine import open_engine

    with open_engine(root) as engine:
        bridge = Path("/sys/class/net") / engine.networks.get(NET).interface
    first = (bridge / "address").read_text()
    assert (bridge / "addr_assign_type").read_text().strip() == "3"  # set: it stays
    addresses = {run(root, "replica-1", "web")}
    for i in range(4):
        lamina_ok(root, "run", "-d", "--name", f"churn-{i}", "--network", NET, IMAGE_REF,
                  "sleep", "300")  # fmt: skip
        resolves(root, "web", addresses)
        lamina_ok(root, "restart", "-t", "0", "replica-1")
        resolves(root, "web", addresses)
        lamina_ok(root, "rm", "-f", f"churn-{i}")
        resolves(root, "web", addresses)
        assert (bridge / "address").read_text() == first


def test_aliases_of_a_created_container_apply_at_its_start(root: Path) -> None:
    lamina_ok(root, "create", "--name", "late", "--network", NET, "--network-alias", "old",
              IMAGE_REF, "sleep", "300")  # fmt: skip
    set_aliases(root, "late", ["new"])
    lamina_ok(root, "start", "late")
    resolves(root, "new", {address(root, "late")})
    assert resolve(root, "old") == set()


def set_aliases_killed_at(root: Path, point: str, container: str, aliases: list[str]) -> None:
    """``set_aliases`` in a process of its own, SIGKILLed at ``point``."""
    script = (
        "import sys; from pathlib import Path; from lamina.engine import open_engine\n"
        "with open_engine(Path(sys.argv[1])) as e:\n"
        "    e.networks.set_aliases(sys.argv[2], sys.argv[3], sys.argv[4:])\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(root), container, NET, *aliases],
        env={**os.environ, "LAMINA_TEST_STOP_AT": point},
    )
    try:
        until(lambda: pid_stopped(proc.pid), 30)
    finally:
        proc.kill()
        proc.wait()


def test_a_change_killed_halfway_is_finished_by_the_next(root: Path) -> None:
    """Killed between the record and aardvark-dns, or with its scratch file written:
    nothing is held (the container, the netavark lock), aardvark-dns's directory has
    no stray file, and the same call again finishes the change."""
    ip = run(root, "replica-1")
    set_aliases_killed_at(root, "network:aliases", "replica-1", ["web"])
    settings = json.loads(lamina_ok(root, "inspect", "replica-1"))[0]["NetworkSettings"]
    assert settings["Networks"][NET]["Aliases"] == ["web"]  # the record has it ...
    assert resolve(root, "web") == set()  # ... aardvark-dns not yet
    set_aliases(root, "replica-1", ["web"])
    resolves(root, "web", {ip})

    set_aliases_killed_at(root, "network:aardvark", "replica-1", ["api"])
    scratch = list((root / "networks" / "netavark").glob(".aardvark-edit-*.tmp"))
    assert len(scratch) == 1
    assert sorted(os.listdir(root / "networks" / "netavark" / "aardvark-dns")) == [
        "aardvark.pid", NET
    ]  # fmt: skip
    other = run(root, "replica-2", "web")  # netavark's lock is free, the scratch reaped
    assert not scratch[0].exists()
    resolves(root, "web", {ip, other})
    set_aliases(root, "replica-1", ["api"])
    resolves(root, "api", {ip})
    resolves(root, "web", {other})


def dns_lines(root: Path) -> dict[str, list[str]]:
    """aardvark-dns's file of the network: container ID -> its names."""
    text = (root / "networks" / "netavark" / "aardvark-dns" / NET).read_text()
    fields = [line.split(" ") for line in text.splitlines()[1:]]
    return {f[0]: f[3].split(",") for f in fields if len(f) >= 4}


def test_concurrent_changes_and_starts_lose_nothing(root: Path) -> None:
    """Changes of several containers at once, while netavark adds and removes other
    containers' lines in the same file: each change is a read-modify-write of the
    file under the netavark locks, so none undoes another's or netavark's."""
    names = [f"replica-{i}" for i in range(3)]
    ids = {n: lamina_ok(root, "run", "-d", "--name", n, "--network", NET, IMAGE_REF,
                        "sleep", "300").strip() for n in names}  # fmt: skip
    errors: list[BaseException] = []

    def flip(name: str) -> None:
        try:
            for k in range(8):
                set_aliases(root, name, [f"{name}-v{k}", "web"])
        except BaseException as e:
            errors.append(e)

    def churn() -> None:
        try:
            for k in range(3):
                lamina_ok(root, "run", "-d", "--name", f"churn-{k}", "--network", NET,
                          IMAGE_REF, "sleep", "300")  # fmt: skip
                if k:
                    lamina_ok(root, "rm", "-f", f"churn-{k - 1}")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=flip, args=(n,)) for n in names]
    threads.append(threading.Thread(target=churn))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    lines = dns_lines(root)
    for n in names:
        assert lines[ids[n]] == [n, ids[n][:12], f"{n}-v7", "web"]
    churned = lamina_ok(root, "inspect", "-f", "{{.Id}}", "churn-2").strip()
    assert churned in lines and len(lines) == len(names) + 2  # the client, churn-2
    resolves(root, "web", {address(root, n) for n in names})


def test_bad_aliases_are_refused_with_nothing_changed(root: Path) -> None:
    from lamina.errors import LaminaError, NotFound

    ip = run(root, "keep", "kept")
    dns_file = root / "networks" / "netavark" / "aardvark-dns" / NET
    before = dns_file.read_text()
    for bad in ("two words", "a,b", "", "-lead", "x" * 64, "a..b", "new\nline"):
        with pytest.raises(LaminaError) as caught:
            set_aliases(root, "keep", ["fine", bad])
        assert str(caught.value).startswith(f"invalid network alias {bad!r}: a DNS name")
    assert dns_file.read_text() == before
    resolves(root, "kept", {ip})
    with pytest.raises(NotFound, match="container keep is not connected to network lamina"):
        set_aliases(root, "keep", ["x"], network="lamina")
    lamina_ok(root, "run", "-d", "--name", "plain", IMAGE_REF, "sleep", "300")
    with pytest.raises(LaminaError, match="only for containers on user-defined networks"):
        set_aliases(root, "plain", ["x"], network="lamina")
    # The same check at create: a name that would break aardvark-dns's file.
    r = lamina_cli(root, "run", "-d", "--name", "broken", "--network", NET,
                   "--network-alias", "a b", IMAGE_REF, "sleep", "300")  # fmt: skip
    assert r.returncode != 0
    assert error_line(r.stderr).startswith("lamina: error: invalid network alias 'a b'")
    assert "broken" not in lamina_ok(root, "ps", "-a", "--format", "{{.Names}}").split()
    assert dns_file.read_text() == before
