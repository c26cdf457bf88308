"""A real ``lamina daemon`` process on a temporary root, and httpx clients of it over
its unix socket."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import struct
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from runtime_fixtures import CLI


class Daemon:
    def __init__(self, root: Path, *args: str, wait: bool = True) -> None:
        self.root = root
        self.socket = root / "lamina.sock"
        self.log = root.parent / f"daemon-{time.monotonic_ns()}.log"
        root.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [*CLI, "--root", str(root), "daemon", *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited {self.proc.returncode}: {self.output()}")
            if "serving" in self.output():
                return
            time.sleep(0.02)
        raise AssertionError(f"the daemon did not start: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def client(self, timeout: float = 60) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=str(self.socket))
        return httpx.Client(transport=transport, base_url="http://lamina", timeout=timeout)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))

    def open_files(self) -> list[str]:
        """What the daemon's descriptors are, sorted, without the databases (the engine
        pool keeps connections open for the next request)."""
        fd_dir = f"/proc/{self.proc.pid}/fd"
        out = []
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                target = os.readlink(f"{fd_dir}/{fd}")
                if ".db" not in target:
                    out.append(target if not target.startswith(("socket:", "pipe:")) else
                               target.split(":")[0])  # fmt: skip
        return sorted(out)


@contextlib.contextmanager
def running_daemon(root: Path, *args: str) -> Iterator[Daemon]:
    daemon = Daemon(root, *args)
    try:
        yield daemon
    finally:
        if daemon.proc.poll() is None:
            daemon.stop()


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """Docker's multiplexed stream as (stream, payload) pairs."""
    out = []
    while data:
        kind, size = struct.unpack(">BxxxI", data[:8])
        out.append((kind, data[8 : 8 + size]))
        data = data[8 + size :]
    return out


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def tar_files(data: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            f = tar.extractfile(member)
            if f is not None:
                out[member.name] = f.read()
    return out


def make_tls(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed,
    as PEM files: ca.crt, server.crt/key, client.crt/key."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject: str, key: Any, issuer_key: Any, *, ca: bool = False,
             usage: Any = None, ip: bool = False) -> x509.Certificate:  # fmt: skip
        b = (x509.CertificateBuilder().subject_name(name(subject))
             .issuer_name(name("lamina daemon test CA")).public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(days=1))
             .not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None),
                            critical=True))  # fmt: skip
        if usage is not None:
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if ip:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            b = b.add_extension(san, critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    out: dict[str, Path] = {}

    def write(stem: str, certificate: x509.Certificate, key: Any = None) -> None:
        out[f"{stem}.crt"] = directory / f"{stem}.crt"
        out[f"{stem}.crt"].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            out[f"{stem}.key"] = directory / f"{stem}.key"
            out[f"{stem}.key"].write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))  # fmt: skip

    write("ca", cert("lamina daemon test CA", ca_key, ca_key, ca=True))
    server_key = ec.generate_private_key(ec.SECP256R1())
    write("server", cert("127.0.0.1", server_key, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                         ip=True), server_key)  # fmt: skip
    client_key = ec.generate_private_key(ec.SECP256R1())
    write("client", cert("client", client_key, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH),
          client_key)  # fmt: skip
    return out
