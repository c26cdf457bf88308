"""Security defaults and run options as a user meets them through ``lamina run``:
what a default container may not do, what --privileged and --cap-* change,
read-only roots, ulimits, --init, network modes, and the remaining lifecycle
commands (top, restart, rename, update, container prune)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_fixtures import IMAGE_REF, cli_image_root, lamina_cli, remove_all_containers

pytestmark = pytest.mark.timeout(120)

IMAGE = IMAGE_REF
lamina = lamina_cli


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_image_root(tmp_path_factory, "cli-security")


@pytest.fixture
def root(image_root: Path) -> Iterator[Path]:
    yield image_root
    remove_all_containers(image_root)


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``lamina run --rm [args...]`` where args hold run flags, the image and the command."""
    return lamina(root, "run", "--rm", *args)


def test_mount_and_unshare_are_denied_by_default(root: Path) -> None:
    r = run(root, IMAGE, "sh", "-c", "mkdir -p /mnt/t && mount -t tmpfs none /mnt/t")
    assert r.returncode != 0
    assert "denied" in r.stderr.lower() or "not permitted" in r.stderr.lower(), r.stderr
    r = run(root, IMAGE, "unshare", "-m", "true")
    assert r.returncode != 0, r.stderr


def test_privileged_may_mount_and_unshare(root: Path) -> None:
    r = run(
        root,
        "--privileged",
        IMAGE,
        "sh",
        "-c",
        "mkdir -p /mnt/t && mount -t tmpfs none /mnt/t && echo mounted",
    )
    assert r.returncode == 0, r.stderr
    assert "mounted" in r.stdout
    assert run(root, "--privileged", IMAGE, "unshare", "-m", "true").returncode == 0


def test_seccomp_unconfined_lifts_only_the_filter(root: Path) -> None:
    # unshare -U needs no capability: only the seccomp profile stops it.
    assert run(root, IMAGE, "unshare", "-U", "true").returncode != 0
    r = run(root, "--security-opt", "seccomp=unconfined", IMAGE, "unshare", "-U", "true")
    assert r.returncode == 0, r.stderr


def test_default_capabilities_and_cap_drop(root: Path) -> None:
    r = run(root, IMAGE, "grep", "CapEff", "/proc/self/status")
    assert r.stdout.split()[-1] == "00000000a80425fb"
    r = run(root, IMAGE, "sh", "-c", "touch /tmp/f && chown nobody /tmp/f && echo ok")
    assert "ok" in r.stdout
    r = run(root, "--cap-drop", "CHOWN", IMAGE, "sh", "-c", "touch /tmp/f && chown nobody /tmp/f")
    assert r.returncode != 0
    r = run(root, "--cap-drop", "ALL", IMAGE, "grep", "CapEff", "/proc/self/status")
    assert r.stdout.split()[-1] == "0000000000000000"
    r = run(root, "--cap-add", "NOT_A_CAP", IMAGE, "true")
    assert r.returncode == 125
    assert "Traceback" not in r.stderr


def test_no_new_privileges_and_masked_paths(root: Path) -> None:
    r = run(root, IMAGE, "grep", "NoNewPrivs", "/proc/self/status")
    assert r.stdout.split()[-1] == "1"
    r = run(root, IMAGE, "sh", "-c", "echo 1 > /proc/sys/kernel/printk")
    assert r.returncode != 0
    r = run(root, IMAGE, "sh", "-c", "ls /sys/firmware | wc -l")
    assert r.stdout.strip() == "0"


def test_read_only_root_with_tmpfs(root: Path) -> None:
    r = run(root, "--read-only", IMAGE, "touch", "/x")
    assert r.returncode != 0
    assert "read-only" in r.stderr.lower(), r.stderr
    r = run(
        root, "--read-only", "--tmpfs", "/scratch", IMAGE, "sh", "-c", "touch /scratch/x && echo ok"
    )
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def test_ulimits_within_and_beyond_the_host_hard_limit(root: Path) -> None:
    r = run(root, "--ulimit", "nofile=100:100", IMAGE, "sh", "-c", "ulimit -n")
    assert r.stdout.strip() == "100"
    r = run(root, "--ulimit", "nofile=99999999:99999999", IMAGE, "true")
    assert r.returncode == 125
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "hard limit" in lines[0], r.stderr


def test_init_runs_as_pid_one_and_reaps(root: Path) -> None:
    r = run(root, "--init", IMAGE, "cat", "/proc/1/cmdline")
    assert r.returncode == 0, r.stderr
    assert "lamina-init" in r.stdout
    r = run(root, IMAGE, "cat", "/proc/1/cmdline")
    assert "lamina-init" not in r.stdout


def test_network_modes(root: Path) -> None:
    r = run(root, "--network", "none", IMAGE, "cat", "/proc/net/dev")
    ifaces = {line.split(":")[0].strip() for line in r.stdout.splitlines()[2:]}
    assert ifaces == {"lo"}
    def host_ifaces() -> set[str]:
        lines = Path("/proc/net/dev").read_text().splitlines()[2:]
        return {line.split(":")[0].strip() for line in lines}

    # Other tests may add and remove interfaces meanwhile: the host's before and after.
    before = host_ifaces()
    r = run(root, "--network", "host", IMAGE, "cat", "/proc/net/dev")
    after = host_ifaces()
    ifaces = {line.split(":")[0].strip() for line in r.stdout.splitlines()[2:]}
    assert before & after <= ifaces <= before | after
    first = lamina(root, "run", "-d", "--name", "netowner", IMAGE, "sleep", "60").stdout.strip()
    assert len(first) == 64
    owner_ns = lamina(root, "exec", "netowner", "readlink", "/proc/self/ns/net").stdout.strip()
    r = run(root, "--network", "container:netowner", IMAGE, "readlink", "/proc/self/ns/net")
    assert r.stdout.strip() == owner_ns != ""


def test_top_restart_rename_update_prune(root: Path) -> None:
    cid = lamina(root, "run", "-d", "--name", "life", IMAGE, "sleep", "300").stdout.strip()
    top = lamina(root, "top", "life")
    assert top.returncode == 0, top.stderr
    assert "PID" in top.stdout.splitlines()[0]
    assert "sleep 300" in top.stdout
    pid1 = lamina(root, "inspect", "--format", "{{.State.Pid}}", "life").stdout.strip()
    assert lamina(root, "restart", "-t", "1", "life").returncode == 0
    pid2 = lamina(root, "inspect", "--format", "{{.State.Pid}}", "life").stdout.strip()
    assert pid1 != pid2 and pid2 not in ("", "0")
    assert lamina(root, "rename", "life", "life2").returncode == 0
    assert lamina(root, "ps", "-q", "--filter", "name=life2").stdout.strip() == cid[:12]
    r = lamina(root, "update", "--memory", "64m", "life2")
    assert r.returncode == 0, r.stderr
    r = lamina(root, "exec", "life2", "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert r.stdout.strip() == str(64 * 1024 * 1024)
    lamina(root, "stop", "-t", "1", "life2")
    done = lamina(root, "run", "--name", "finished", IMAGE, "true")
    assert done.returncode == 0
    r = lamina(root, "container", "prune", "-f")
    assert r.returncode == 0, r.stderr
    time.sleep(0.1)
    assert lamina(root, "ps", "-a", "-q").stdout.strip() == ""
