"""TLS at the ingress: certificates from files chosen by SNI (a test CA), the redirect
from HTTP, bad certificates refused, and a certificate issued by Debian's pebble ACME
server over HTTP-01 answered by HAProxy itself."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from daemon_fixtures import running_daemon
from ingress_fixtures import (
    Backends,
    backend_procs,
    checked_ingress_root,
    free_port,
    get,
    served_by,
)
from runtime_fixtures import error_line, lamina_cli, lamina_ok, until

from lamina.errors import NotFound
from lamina.ingress import Acme, Backend, Ingress, IngressError, InvalidIngress, Route


@pytest.fixture
def backends() -> Iterator[Backends]:
    yield from backend_procs()


@pytest.fixture
def ingress_root(tmp_path: Path) -> Iterator[Path]:
    yield from checked_ingress_root(tmp_path)


class CA:
    """A test CA issuing leaf certificates for any names."""

    def __init__(self, directory: Path, name: str = "lamina ingress test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        self.file = directory / "ca.pem"
        self.file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, *names: str, ip: str | None = None) -> tuple[bytes, bytes]:
        import ipaddress

        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        if ip:
            alt.append(x509.IPAddress(ipaddress.ip_address(ip)))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=10))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


def https_get(port: int, host: str, ca: Path, path: str = "/") -> tuple[int, dict[str, str], str]:
    """(status, the server certificate's subject, body) of a GET over TLS with SNI."""
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    # Connect to loopback while naming ``host`` in SNI and in the certificate check.
    conn.sock = context.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=host
    )
    try:
        peer = conn.sock.getpeercert() or {}
        subject = {k: v for rdn in peer.get("subject", ()) for k, v in rdn}
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, subject, resp.read().decode()
    finally:
        conn.close()


def test_certificates_chosen_by_sni_and_http_redirected(
    ingress_root: Path, backends: Backends, tmp_path: Path
) -> None:
    ca = CA(tmp_path / "ca")
    tls, plain = free_port(), free_port()
    web = backends.start("http", "web")
    ing = Ingress(ingress_root, address="127.0.0.1")
    ing.add_cert("a.test", *ca.issue("a.test"))
    ing.add_cert("*.wild.test", *ca.issue("*.wild.test"))
    routes = [
        Route(tls, "https", "web", host="a.test"),
        Route(tls, "https", "web", host="*.wild.test"),
        Route(plain, "http", "web", host="a.test", redirect_https=True),
        Route(plain, "http", "web", host="plain.test"),
    ]
    ing.apply(routes, [Backend("web", [web.server()])])

    status, subject, body = https_get(tls, "a.test", ca.file)
    assert (status, subject["commonName"]) == (200, "a.test")
    headers = {k.lower(): v for k, v in json.loads(body)["headers"].items()}
    assert headers["x-forwarded-proto"] == "https"
    status, subject, _ = https_get(tls, "x.wild.test", ca.file)
    assert (status, subject["commonName"]) == (200, "*.wild.test")
    with pytest.raises(ssl.SSLCertVerificationError):  # no certificate of ours names it
        https_get(tls, "other.test", ca.file)

    conn = http.client.HTTPConnection("127.0.0.1", plain, timeout=10)
    conn.request("GET", "/x?y=1", headers={"Host": "a.test"})
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("Location")) == (301, "https://a.test/x?y=1")
    conn.close()
    assert served_by(plain, "plain.test") == "web"

    # A certificate replaced while serving: the new one is served (a hitless reload).
    ing.add_cert("a.test", *CA(tmp_path / "ca2", "second CA").issue("a.test"))
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(tls, "a.test", ca.file)
    assert [c.host for c in ing.certs.list()] == ["*.wild.test", "a.test"]
    ing.remove_cert("*.wild.test")
    with pytest.raises(NotFound):
        ing.remove_cert("*.wild.test")
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(tls, "x.wild.test", ca.file)


def test_bad_certificates_are_refused(ingress_root: Path, tmp_path: Path) -> None:
    ca = CA(tmp_path / "ca")
    ing = Ingress(ingress_root, address="127.0.0.1")
    cert, key = ca.issue("a.test")
    _, other_key = ca.issue("a.test")
    cases = [
        (("b.test", cert, key), "it does not name b.test"),
        (("a.test", cert, other_key), "the key does not belong to it"),
        (("a.test", b"junk", key), "not a PEM certificate"),
        (("a.test", cert, b"junk"), "not an unencrypted PEM private key"),
        (("bad host", cert, key), "invalid host name"),
    ]
    for args, message in cases:
        with pytest.raises(InvalidIngress, match=message):
            ing.add_cert(*args)
    assert ing.certs.list() == []
    # What goes into HAProxy's command lines and map file is base64url only.
    for token, value in [
        ("t", "a b"),
        ("t", "x\nshutdown sessions server be_web/s1"),
        ("../t", "v.w"),
    ]:
        with pytest.raises(IngressError, match="invalid ACME"):
            ing.set_challenge(token, value)
    assert not (ingress_root / "ingress" / "acme.map").exists()


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[tuple[str, Path, int]]:
    """pebble on loopback, resolving every name to 127.0.0.1 (pebble-challtestsrv's
    DNS), validating HTTP-01 on a port of ours: (directory URL, CA file, HTTP port)."""
    if not shutil.which("pebble") or not shutil.which("pebble-challtestsrv"):
        pytest.skip("needs pebble")
    ca = CA(tmp_path / "pebble-ca")
    cert, key = ca.issue("localhost", ip="127.0.0.1")
    (tmp_path / "pebble-cert.pem").write_bytes(cert)
    (tmp_path / "pebble-key.pem").write_bytes(key)
    acme_port, mgmt_port, dns_port, http_port = (free_port() for _ in range(4))
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{acme_port}",
            "managementListenAddress": f"127.0.0.1:{mgmt_port}",
            "certificate": str(tmp_path / "pebble-cert.pem"),
            "privateKey": str(tmp_path / "pebble-key.pem"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (tmp_path / "pebble.json").write_text(json.dumps(config))
    dns = subprocess.Popen(
        ["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
         "-dns01", f"127.0.0.1:{dns_port}", "-http01", "", "-https01", "", "-tlsalpn01", "",
         "-management", f"127.0.0.1:{free_port()}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PATH": "/usr/bin:/bin"}
    server = subprocess.Popen(
        ["pebble", "-config", str(tmp_path / "pebble.json"), "-dnsserver",
         f"127.0.0.1:{dns_port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )  # fmt: skip

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", acme_port), timeout=1).close()
            return True
        except OSError:
            return False

    try:
        until(up, timeout=20)
        yield f"https://127.0.0.1:{acme_port}/dir", ca.file, http_port
    finally:
        for proc in (server, dns):
            proc.kill()
            proc.wait()


def test_certificate_issued_by_pebble_over_http01(
    ingress_root: Path, backends: Backends, pebble: tuple[str, Path, int], tmp_path: Path
) -> None:
    directory, pebble_ca, http_port = pebble
    tls = free_port()
    web = backends.start("http", "web")
    ing = Ingress(ingress_root, address="127.0.0.1")
    routes = [Route(http_port, "http", "web"), Route(tls, "https", "web", host="shop.test")]
    ing.apply(routes, [Backend("web", [web.server()])])

    acme = Acme(ing, directory, "ops@shop.test", ca_bundle=str(pebble_ca))
    issued, failed = acme.ensure(["shop.test", "*.wild.test"])
    assert failed == {} and [c.host for c in issued] == ["shop.test"]
    info = issued[0]
    assert info.acme and acme.ensure(["shop.test"]) == ([], {})  # nothing more to do
    # The challenge answers are gone again; the route's backend serves the path.
    status, body = get(http_port, "shop.test", "/.well-known/acme-challenge/x")
    assert status == 200 and isinstance(body, dict) and body["name"] == "web"
    assert (ingress_root / "ingress" / "acme.map").read_text() == ""

    # Served, and it chains to pebble's issuing root.
    mgmt = json.loads((tmp_path / "pebble.json").read_text())["pebble"]["managementListenAddress"]
    context = ssl.create_default_context(cafile=str(pebble_ca))
    host, port = mgmt.split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=_no_hostname(context))
    conn.request("GET", "/roots/0")
    (tmp_path / "pebble-root.pem").write_bytes(conn.getresponse().read())
    conn.close()
    status, _, _ = https_get(tls, "shop.test", tmp_path / "pebble-root.pem")
    assert status == 200

    # Renewal when near expiry: a new certificate replaces the old one.
    assert acme.renew_due(within=dt.timedelta(days=1)) == []
    renewed = acme.renew_due(within=dt.timedelta(days=365 * 100))
    assert [c.host for c in renewed] == ["shop.test"]
    assert https_get(tls, "shop.test", tmp_path / "pebble-root.pem")[0] == 200


def _no_hostname(context: ssl.SSLContext) -> ssl.SSLContext:
    context.check_hostname = False
    return context


def test_cli_cert_add_ls_rm_and_ingress_ls(
    ingress_root: Path, backends: Backends, tmp_path: Path
) -> None:
    ca = CA(tmp_path / "ca")
    cert, key = ca.issue("cli.test")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    (tmp_path / "junk.pem").write_bytes(b"junk")
    tls = free_port()
    web = backends.start("http", "web")
    Ingress(ingress_root, address="127.0.0.1").apply(
        [Route(tls, "https", "web", host="cli.test")], [Backend("web", [web.server()])]
    )
    files = ["--cert", str(tmp_path / "cert.pem"), "--key", str(tmp_path / "key.pem")]
    out = lamina_ok(ingress_root, "ingress", "cert", "add", "cli.test", *files)
    assert out.startswith("cli.test (expires ")
    assert https_get(tls, "cli.test", ca.file)[0] == 200  # served at once

    rows = [
        json.loads(x)
        for x in lamina_ok(ingress_root, "ingress", "cert", "ls", "--format", "json").splitlines()
    ]
    assert [(r["Host"], r["Source"]) for r in rows] == [("cli.test", "file")]
    listing = lamina_ok(ingress_root, "ingress", "ls", "--format", "json")
    route = json.loads(listing)
    assert (route["Port"], route["Host"], route["Backend"], route["Servers"]) == (
        tls,
        "cli.test",
        "web",
        "1/1",
    )
    state = json.loads(lamina_ok(ingress_root, "ingress", "inspect"))
    assert state["running"] and state["backends"][0]["servers"][0]["health"] == "up"
    assert state["address"] == "127.0.0.1"  # a certificate's reload keeps it

    bad = lamina_cli(
        ingress_root, "ingress", "cert", "add", "cli.test",
        "--cert", str(tmp_path / "junk.pem"), "--key", str(tmp_path / "key.pem"),
    )  # fmt: skip
    assert bad.returncode != 0
    assert error_line(bad.stderr).startswith("lamina: error: certificate for cli.test: not a PEM")
    assert lamina_ok(ingress_root, "ingress", "cert", "rm", "cli.test") == "cli.test\n"
    gone = lamina_cli(ingress_root, "ingress", "cert", "rm", "cli.test")
    assert (
        gone.returncode != 0
        and error_line(gone.stderr) == "lamina: error: no certificate for cli.test"
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(tls, "cli.test", ca.file)


def test_the_ingress_commands_through_the_daemon(ingress_root: Path, tmp_path: Path) -> None:
    """``--host``: the daemon's ingress (here without public endpoints: no HAProxy)."""
    ca = CA(tmp_path / "ca")
    cert, key = ca.issue("remote.test")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    files = ["--cert", str(tmp_path / "cert.pem"), "--key", str(tmp_path / "key.pem")]
    with running_daemon(ingress_root) as daemon:
        host = ("--host", f"unix://{daemon.socket}")
        out = lamina_ok(ingress_root, *host, "ingress", "cert", "add", "remote.test", *files)
        assert out.startswith("remote.test (expires ")
        rows = lamina_ok(ingress_root, *host, "ingress", "cert", "ls", "--format", "json")
        assert [json.loads(r)["Host"] for r in rows.splitlines()] == ["remote.test"]
        state = json.loads(lamina_ok(ingress_root, *host, "ingress", "inspect"))
        assert (state["running"], state["routes"]) == (False, [])
        assert [c["host"] for c in state["certificates"]] == ["remote.test"]
        assert lamina_ok(ingress_root, *host, "ingress", "ls").split() == [
            "PORT",
            "PROTOCOL",
            "HOST",
            "PATH",
            "BACKEND",
            "SERVERS",
        ]
        bad = lamina_cli(ingress_root, *host, "ingress", "cert", "add", "bad host", *files)
        assert bad.returncode != 0 and error_line(bad.stderr).startswith("lamina: error: ")
        assert lamina_ok(ingress_root, *host, "ingress", "cert", "rm", "remote.test") == (
            "remote.test\n"
        )
        gone = lamina_cli(ingress_root, *host, "ingress", "cert", "rm", "remote.test")
        assert error_line(gone.stderr) == "lamina: error: no certificate for remote.test"
    # the daemon wrote into the root: the local command sees the same store
    assert lamina_ok(ingress_root, "ingress", "cert", "ls").split() == [
        "HOST", "EXPIRES", "ISSUER", "SOURCE"
    ]  # fmt: skip


def test_an_acme_challenge_the_ca_cannot_reach_fails_in_one_line(
    ingress_root: Path, backends: Backends, pebble: tuple[str, Path, int]
) -> None:
    directory, pebble_ca, _ = pebble  # nothing of ours listens on pebble's HTTP port
    web = backends.start("http", "web")
    ing = Ingress(ingress_root, address="127.0.0.1")
    ing.apply(
        [Route(free_port(), "https", "web", host="lost.test")], [Backend("web", [web.server()])]
    )
    acme = Acme(ing, directory, "ops@lost.test", ca_bundle=str(pebble_ca))
    with pytest.raises(IngressError) as e:
        acme.obtain("lost.test")
    assert str(e.value).startswith("ACME certificate for lost.test: ") and "\n" not in str(e.value)
    assert ing.certs.list() == []
    assert (ingress_root / "ingress" / "acme.map").read_text() == ""  # the answer withdrawn
    issued, failed = acme.ensure(["lost.test"])
    assert issued == [] and list(failed) == ["lost.test"]
    with pytest.raises(IngressError, match=r"^ACME directory https://127.0.0.1:1/dir: "):
        Acme(ing, "https://127.0.0.1:1/dir", "ops@lost.test").obtain("lost.test")
