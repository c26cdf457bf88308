"""``make demo``: lamina's main job as it stands, offline, on a throwaway root.

It drives the real ``lamina`` command, printing each command line as a user would
type it: an image made from Debian's busybox-static, pushed to a registry server the
demo starts on 127.0.0.1, removed, pulled back, saved, inspected by skopeo and
loaded into a second root.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from registry_server import start_registry  # noqa: E402

from lamina.testing import make_busybox_rootfs  # noqa: E402

LAMINA = [sys.executable, "-m", "lamina.cli.main"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fetch(url: str, timeout: float = 30) -> str:
    """GET ``url``, retrying while the server in the VM comes up."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return str(r.read().decode())
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def sh(*args: str, root: Path | None = None, check: bool = True) -> str:
    cmd = list(args)
    shown = cmd
    if cmd[0] == "lamina":
        cmd = [*LAMINA, *(["--root", str(root)] if root else []), *cmd[1:]]
        shown = ["lamina", *cmd[len(LAMINA) :]]
    print(f"$ {shlex.join(shown)}", flush=True)
    proc = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout
    print(out, end="" if out.endswith("\n") or not out else "\n", flush=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: command failed with exit code {proc.returncode}")
    return proc.stdout


def interactive(root: Path, image: str) -> None:
    """Drive ``lamina run -it`` through a pseudo-terminal, as a person at a keyboard."""
    import pty
    import select
    import time

    print(f"$ lamina run --rm -it {image} sh")
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [*LAMINA, "--root", str(root), "run", "--rm", "-it", image, "sh"])
    out = b""
    for keys in (b"echo the answer is $((6*7))\r", b"exit 7\r"):
        time.sleep(0.5)
        os.write(fd, keys)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    _, status = os.waitpid(pid, 0)
    print(out.decode(errors="replace").replace("\r", ""), end="")
    print(f"(exit code {os.waitstatus_to_exitcode(status)})")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="lamina-demo-") as tmp:
        work = Path(tmp)
        root = work / "root"
        step("Make a first image offline: busybox-static as a root filesystem")
        rootfs = make_busybox_rootfs(work / "rootfs")
        print(f"root filesystem at {rootfs} ({len(os.listdir(rootfs / 'bin'))} entries in /bin)")
        sh(
            "lamina",
            "import",
            str(rootfs),
            "demo/busybox:1.0",
            "--change",
            'CMD ["/bin/sh"]',
            "--change",
            "ENV DEMO=1",
            root=root,
        )
        sh("lamina", "images", root=root)

        step("Start a registry on 127.0.0.1 and push to it")
        registry = start_registry(work / "registry")
        try:
            remote = f"{registry.host}/demo/busybox:1.0"
            sh("lamina", "push", "demo/busybox:1.0", remote, root=root)

            step("Remove the image, then pull it back")
            sh("lamina", "rmi", "demo/busybox:1.0", root=root)
            sh("lamina", "images", root=root)
            sh("lamina", "pull", remote, root=root)
            sh("lamina", "images", "--digests", root=root)

            step("Inspect it")
            sh("lamina", "inspect", remote, root=root)

            step("Save as an OCI archive; skopeo reads it; load it into a fresh root")
            archive = work / "busybox.tar"
            sh("lamina", "save", "-o", str(archive), "--format", "oci-archive", remote, root=root)
            sh(
                "skopeo",
                "inspect",
                "--format",
                "{{.Digest}} {{.Architecture}}",
                f"oci-archive:{archive}",
            )
            other = work / "other-root"
            sh("lamina", "load", "-i", str(archive), root=other)
            sh("lamina", "images", root=other)

            step("Run it: a container, process-isolated by runc, supervised by conmon")
            sh(
                "lamina",
                "run",
                "--rm",
                remote,
                "sh",
                "-c",
                "echo hello from $(hostname); uname -sr",
                root=root,
            )
            print("$ lamina run --rm -i IMAGE tr a-z A-Z   <<< 'piped through stdin'")
            out = subprocess.run(
                [*LAMINA, "--root", str(root), "run", "--rm", "-i", remote, "tr", "a-z", "A-Z"],
                input="piped through stdin\n",
                text=True,
                capture_output=True,
            )
            print(out.stdout, end="")
            sh("lamina", "run", "--rm", remote, "sh", "-c", "exit 3", root=root, check=False)
            print("(exit code 3 passed through)")

            step("Detached: it outlives this command; later commands find it")
            sh(
                "lamina",
                "run",
                "-d",
                "--name",
                "web",
                "--memory",
                "64m",
                remote,
                "sh",
                "-c",
                "i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done",
                root=root,
            )
            sh("lamina", "ps", root=root)
            sh(
                "lamina",
                "exec",
                "web",
                "sh",
                "-c",
                "echo exec sees PID 1: $(cat /proc/1/comm)",
                root=root,
            )
            import time

            time.sleep(2)
            sh("lamina", "logs", "--tail", "2", "web", root=root)
            sh("lamina", "stats", "--no-stream", "web", root=root)
            sh("lamina", "stop", "-t", "2", "web", root=root)
            sh("lamina", "ps", "-a", root=root)
            sh("lamina", "rm", "web", root=root)

            step("Build an app from a multi-stage Dockerfile, then rebuild from the cache")
            app = HERE / "app"
            for _ in range(2):
                sh(
                    "lamina",
                    "build",
                    "--progress",
                    "plain",
                    "--build-arg",
                    f"BASE={remote}",
                    "-t",
                    "demo/app:1.0",
                    str(app),
                    root=root,
                )
            sh("lamina", "run", "--rm", "demo/app:1.0", root=root)
            sh("lamina", "images", root=root)

            step("Interactive: -it gives a shell on a pseudo-terminal")
            interactive(root, remote)

            step("Secure by default: no mount inside a container, unless --privileged")
            sh(
                "lamina",
                "run",
                "--rm",
                remote,
                "mount",
                "-t",
                "tmpfs",
                "none",
                "/mnt",
                root=root,
                check=False,
            )
            sh(
                "lamina",
                "run",
                "--rm",
                "--privileged",
                remote,
                "sh",
                "-c",
                "mkdir -p /mnt && mount -t tmpfs none /mnt && echo mounted as privileged",
                root=root,
            )

            step("The same image in a micro-VM: its own kernel (QEMU microvm, TCG here)")
            sh("lamina", "run", "--rm", remote, "uname", "-r", root=root)
            sh(
                "lamina",
                "run",
                "--rm",
                "--isolation",
                "vm",
                "--cpus",
                "2",
                remote,
                "sh",
                "-c",
                "uname -r; nproc; grep -m1 'model name' /proc/cpuinfo",
                root=root,
            )

            step("Start from a snapshot of a booted VM instead of booting it")
            for how in ("cold boot", "from the snapshot"):
                if how != "cold boot":
                    sh("lamina", "vm", "snapshot", "create", remote, "--name", "warm", root=root)
                t0 = time.perf_counter()
                sh("lamina", "run", "--rm", "--isolation", "vm", remote, "true", root=root)
                print(f"   ({how}: {time.perf_counter() - t0:.2f} s)")
            sh("lamina", "vm", "snapshot", "ls", root=root)

            step("A VM container serving a host directory on a published port")
            site = Path(tmp) / "site"
            site.mkdir()
            (site / "index.html").write_text("hello from a micro-VM\n")
            port = _free_port()
            sh("lamina", "run", "-d", "--name", "web", "--isolation", "vm", "-p", f"{port}:80",
               "-v", f"{site}:/www:ro", remote, "httpd", "-f", "-p", "80", "-h", "/www",
               root=root)  # fmt: skip
            sh("lamina", "port", "web", root=root)
            print(f"$ curl http://127.0.0.1:{port}/")
            print(_fetch(f"http://127.0.0.1:{port}/"), end="")
            sh("lamina", "rm", "-f", "web", root=root)

            step("Bad input gets one clear line and a non-zero exit")
            sh("lamina", "pull", "Not/A:Valid:Ref", root=root, check=False)
            sh("lamina", "pull", "127.0.0.1:1/nothing:here", root=root, check=False)
        finally:
            registry.stop()
    print("\ndemo: done")


if __name__ == "__main__":
    main()
