"""Containers outlive the daemon: ``kill -9`` of a real daemon at random points while
clients create, start and remove containers and pull an image, then a new daemon on
the root: every container a client was told exists is there once, every running one
still runs (the same process), nothing half-made is left (leases, directories,
mounts, image holds), the pull is whole or absent; at the end nothing leaks."""

from __future__ import annotations

import io
import os
import random
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_fixtures import Daemon
from leak_check import assert_clean, container_traces
from runtime_fixtures import IMAGE_REF, cli_image_root, lamina_ok

TRIALS = 10


def _big_image_tar(path: Path) -> Path:
    """A root filesystem with 16 MiB of random bytes: a pull that takes a while."""
    with tarfile.open(path, "w") as tar:
        data = os.urandom(16 << 20)
        info = tarfile.TarInfo("blob.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


class Load:
    """Clients at work until the daemon dies: what they were told is kept here."""

    def __init__(self, daemon: Daemon, trial: int, pull_ref: str) -> None:
        self.daemon = daemon
        self.trial = trial
        self.pull_ref = pull_ref
        self.created: set[str] = set()  # IDs a 201 answered
        self.removed: set[str] = set()  # IDs a 204 answered for their removal
        self.removing: set[str] = set()  # IDs whose removal was asked (answered or not)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=f) for f in (self.runs, self.creates, self.pulls)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _loop(self, work: Any) -> None:
        with self.daemon.client(timeout=30) as api:
            i = 0
            while not self.stop.is_set():
                try:
                    work(api, i)
                except (httpx.HTTPError, KeyError, ValueError):
                    return  # the daemon is gone
                i += 1

    def _create(self, api: httpx.Client, **body: Any) -> str | None:
        r = api.post("/v1/containers", json={"image": IMAGE_REF, **body})
        if r.status_code != 201:
            return None
        cid = str(r.json()["Id"])
        self.created.add(cid)
        return cid

    def runs(self) -> None:
        def work(api: httpx.Client, i: int) -> None:
            cid = self._create(api, command=["sleep", "600"], name=f"run-{self.trial}-{i}")
            if cid is None:
                return
            api.post(f"/v1/containers/{cid}/start")
            if i % 2:
                self.removing.add(cid)
                if api.delete(f"/v1/containers/{cid}", params={"force": "1"}).status_code == 204:
                    self.removed.add(cid)

        self._loop(work)

    def creates(self) -> None:
        def work(api: httpx.Client, i: int) -> None:
            self._create(api, command=["true"], name=f"made-{self.trial}-{i}")

        self._loop(work)

    def pulls(self) -> None:
        def work(api: httpx.Client, _i: int) -> None:
            api.delete(f"/v1/images/{self.pull_ref.replace('/', '%2F')}")
            api.post("/v1/images/pull", params={"reference": self.pull_ref}).read()

        self._loop(work)


@pytest.mark.timeout(600)
def test_sigkill_of_the_daemon_loses_duplicates_and_leaks_nothing(
    tmp_path_factory: pytest.TempPathFactory, registry: Any
) -> None:
    root = cli_image_root(tmp_path_factory, "daemon-kill")
    pull_ref = f"{registry.host}/daemon-kill/big:1"
    tarball = _big_image_tar(root.parent / "big.tar")
    lamina_ok(root, "import", str(tarball), pull_ref)
    lamina_ok(root, "push", pull_ref)
    lamina_ok(root, "rmi", pull_ref)
    rng = random.Random(int(os.environ.get("LAMINA_TEST_SEED", "0")) or None)

    sentinel_daemon = Daemon(root)
    with sentinel_daemon.client() as api:
        sentinel = api.post("/v1/containers", json={"image": IMAGE_REF, "command": ["sleep", "600"],
                                                    "name": "sentinel"}).json()["Id"]  # fmt: skip
        api.post(f"/v1/containers/{sentinel}/start")
        sentinel_pid = api.get(f"/v1/containers/{sentinel}").json()["State"]["Pid"]
    sentinel_daemon.kill()

    kept: set[str] = {sentinel}
    removed: set[str] = set()
    removing: set[str] = set()
    try:
        for trial in range(TRIALS):
            daemon = Daemon(root)
            with Load(daemon, trial, pull_ref) as load:
                time.sleep(rng.uniform(0.1, 1.0))
                daemon.kill()
            kept |= load.created
            removed |= load.removed
            removing |= load.removing
            after = Daemon(root)  # takes the root over
            with after.client() as api:
                ids = _check(api, trial, kept, removed, removing, sentinel, sentinel_pid, pull_ref)
                # Nothing of a killed create is left without a record.
                assert container_traces(root) <= set(ids), f"trial {trial}: orphans"
                assert [p.name for p in root.glob("leases/*.json")] == [], f"trial {trial}: leases"
                for cid in set(ids) - {sentinel}:  # keep the root small for the next trial
                    api.delete(f"/v1/containers/{cid}", params={"force": "1", "volumes": "1"})
                    removing.add(cid)
            assert after.stop() == 0
        assert len(kept) > 2 * TRIALS, "the clients made too little to kill the daemon amid"
    finally:
        ids = lamina_ok(root, "ps", "-a", "-q", "--no-trunc").split()
        if ids:
            lamina_ok(root, "rm", "-f", "-v", *ids)
    assert_clean(root, kept)


def _check(api: httpx.Client, trial: int, kept: set[str], removed: set[str], removing: set[str],
           sentinel: str, sentinel_pid: int, pull_ref: str) -> list[str]:  # fmt: skip
    """What a daemon started after the kill finds; the container IDs."""
    listed = api.get("/v1/containers", params={"all": "1"}).json()
    ids = [c["id"] for c in listed]
    assert len(ids) == len(set(ids))
    names = [c["name"] for c in listed]
    assert len(names) == len(set(names))
    missing = kept - removing - set(ids)  # a removal cut short may have finished
    assert not missing, f"trial {trial}: acknowledged containers lost: {missing}"
    assert not (removed & set(ids)), f"trial {trial}: removed containers came back"
    sentinel_now = api.get(f"/v1/containers/{sentinel}").json()["State"]
    assert sentinel_now["Running"] and sentinel_now["Pid"] == sentinel_pid
    for c in listed:  # a run the kill cut short is not left half started
        assert c["state"]["status"] in ("created", "running", "exited", "failed"), c
    images = {t for i in api.get("/v1/images").json() for t in i["tags"]}
    if pull_ref in images:  # a pull is whole or absent
        assert api.get(f"/v1/images/{pull_ref.replace('/', '%2F')}").json()["Unpacked"]
    return ids


@pytest.mark.parametrize(
    ("policy", "stopped_by_user", "starts"),
    [("always", False, True), ("always", True, True), ("unless-stopped", False, True),
     ("unless-stopped", True, False), ("on-failure", False, False), ("no", False, False),
     (None, False, False)],
)  # fmt: skip
def test_restart_policy_after_a_reboot(
    policy: str | None, stopped_by_user: bool, starts: bool
) -> None:
    """Docker's rule on a daemon's start, on the names the restart policies store
    (``ContainerConfig.restart.name``, ``extra["restart"]["stopped_by_user"]``)."""
    from types import SimpleNamespace

    from lamina.daemon._boot import starts_after_boot
    from lamina.runtime import ContainerConfig
    from lamina.runtime._types import Record

    config = ContainerConfig(image="sha256:" + "0" * 64)
    if policy is not None:
        config.restart = SimpleNamespace(name=policy, max_retries=0)  # type: ignore[attr-defined]
    rec = Record(id="0" * 64, name="x", created=0.0, image_digest="", config=config,
                 extra={"restart": {"stopped_by_user": stopped_by_user}})  # fmt: skip
    assert starts_after_boot(rec) is starts
