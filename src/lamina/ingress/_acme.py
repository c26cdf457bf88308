"""Certificates from an ACME CA (HTTP-01) with certbot's ``acme`` library.

The challenge is answered by HAProxy itself: the key authorization goes into the
ingress's ACME map (runtime ``add map``), which every plain-HTTP frontend serves for
``/.well-known/acme-challenge/<token>``; no byte passes through Python. The account
key and its URL live in ``<root>/ingress/acme/``; issued certificates go to the
certificate store marked ``acme`` so that ``renew_due`` finds them.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina._fsutil import atomic_write
from lamina.ingress._certs import CertInfo
from lamina.ingress._model import IngressError, check_host

if TYPE_CHECKING:
    from lamina.ingress._ingress import Ingress

_TIMEOUT = 90.0


class Acme:
    """An ACME account at ``directory`` (a URL) for ``email``; ``ca_bundle`` is a PEM
    file of the CAs trusted for the directory's own TLS (a test CA), default the
    system's."""

    def __init__(
        self, ingress: Ingress, directory: str, email: str, ca_bundle: str | None = None
    ) -> None:
        self.ingress = ingress
        self.directory = directory
        self.email = email
        self.ca_bundle = ca_bundle
        self.dir = ingress.paths.dir / "acme"

    def _client(self) -> Any:
        from acme import client, errors, messages
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from josepy.jwk import JWKRSA

        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_file, account_file = self.dir / "account.pem", self.dir / "account.json"
        if key_file.exists():
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            atomic_write(key_file, pem, mode=0o600)
        assert isinstance(key, rsa.RSAPrivateKey)
        # verify_ssl goes to requests' ``verify``, which also takes a CA file.
        verify: Any = self.ca_bundle or True
        net = client.ClientNetwork(JWKRSA(key=key), user_agent="lamina", verify_ssl=verify)
        try:
            directory = client.ClientV2.get_directory(self.directory, net)
            acme = client.ClientV2(directory, net=net)
            account = _read_json(account_file)
            if account.get("directory") == self.directory and account.get("uri"):
                net.account = messages.RegistrationResource(
                    uri=account["uri"], body=messages.Registration()
                )
            else:
                registration = messages.NewRegistration.from_data(
                    email=self.email, terms_of_service_agreed=True
                )
                try:
                    uri = acme.new_account(registration).uri
                except errors.ConflictError as e:  # the key has an account already
                    uri = e.location
                    net.account = messages.RegistrationResource(
                        uri=uri, body=messages.Registration()
                    )
                data = json.dumps({"directory": self.directory, "uri": uri}).encode()
                atomic_write(account_file, data, mode=0o600)
        except (OSError, errors.Error, messages.Error) as e:
            raise IngressError(f"ACME directory {self.directory}: {e}") from e
        return acme

    def obtain(self, host: str) -> CertInfo:
        """A certificate for ``host`` (HTTP-01: the CA must reach the ingress's plain
        HTTP port for it), stored and served."""
        from acme import challenges, crypto_util, errors, messages
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        host = check_host(host)
        if host.startswith("*."):
            raise IngressError(f"{host}: wildcard certificates need DNS-01, not HTTP-01")
        acme = self._client()
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tokens: list[str] = []
        try:
            order = acme.new_order(crypto_util.make_csr(key_pem, [host]))
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # validated lately (a renewal): the CA reuses it
                chall = next(
                    (c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)),
                    None,
                )
                if chall is None:
                    raise IngressError(f"{host}: the CA offers no HTTP-01 challenge")
                response, validation = chall.response_and_validation(acme.net.key)
                token = chall.chall.encode("token")
                tokens.append(token)
                self.ingress.set_challenge(token, validation)
                acme.answer_challenge(chall, response)
            deadline = dt.datetime.now() + dt.timedelta(seconds=_TIMEOUT)
            order = acme.poll_and_finalize(order, deadline=deadline)
        except (OSError, errors.Error, messages.Error) as e:
            raise IngressError(f"ACME certificate for {host}: {_reason(e)}") from e
        finally:
            for token in tokens:
                self.ingress.clear_challenge(token)
        info = self.ingress.certs.add(host, order.fullchain_pem.encode(), key_pem, acme=True)
        self.ingress.refresh()
        return info

    def ensure(
        self, hosts: list[str], within: dt.timedelta = dt.timedelta(days=30)
    ) -> tuple[list[CertInfo], dict[str, str]]:
        """What a daemon runs after each apply and once a day: a certificate for each
        of ``hosts`` (the https routes' exact hosts) that has none, then renewals of
        those expiring within ``within``. Returns the certificates issued and, by
        host, why one could not be (one host's failure does not stop the others)."""
        have = {c.host for c in self.ingress.certs.list()}
        issued: list[CertInfo] = []
        failed: dict[str, str] = {}
        for host in sorted({h.lower() for h in hosts if not h.startswith("*.")} - have):
            try:
                issued.append(self.obtain(host))
            except IngressError as e:
                failed[host] = str(e)
        try:
            issued += self.renew_due(within)
        except IngressError as e:
            failed["renewal"] = str(e)
        return issued, failed

    def renew_due(self, within: dt.timedelta = dt.timedelta(days=30)) -> list[CertInfo]:
        """Renew every ACME certificate expiring within ``within``; the new ones."""
        now = dt.datetime.now(dt.UTC)
        due = [c for c in self.ingress.certs.list() if c.acme and c.expires - now < within]
        return [self.obtain(c.host) for c in due]


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
