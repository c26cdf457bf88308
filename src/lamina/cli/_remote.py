"""``lamina --host URL``: the global client flags into a connection to the daemon
(``lamina.client``). Checked here, before any request: a flag that cannot work is
one line and exit 125."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lamina.errors import LaminaError


class ClientFlagError(LaminaError):
    exit_code = 125


def connect_daemon(flags: Mapping[str, Any]) -> Any:
    """The RemoteEngine of ``--host`` with ``--tls*`` and ``--token-file``."""
    from lamina.client import Address, TLSFiles, connect

    url = str(flags["host"])
    try:
        address = Address.parse(url)
    except LaminaError as e:
        raise ClientFlagError(str(e)) from None
    tls_wanted = bool(flags.get("tls") or flags.get("tlsverify"))
    tls = None
    if tls_wanted:
        if address.scheme != "tcp":
            raise ClientFlagError("--tls and --tlsverify are for tcp:// hosts")
        for name in ("tlscacert", "tlscert", "tlskey"):
            path = flags.get(name)
            if path and not Path(path).is_file():
                raise ClientFlagError(f"--{name} {path}: no such file")
        if bool(flags.get("tlscert")) != bool(flags.get("tlskey")):
            raise ClientFlagError("--tlscert and --tlskey go together")
        tls = TLSFiles(verify=bool(flags.get("tlsverify")), ca=flags.get("tlscacert"),
                       cert=flags.get("tlscert"), key=flags.get("tlskey"))  # fmt: skip
    token = None
    if flags.get("token_file"):
        token = _read_token(str(flags["token_file"]))
    return connect(url, tls=tls, token=token)


def _read_token(path: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise ClientFlagError(f"cannot read the token file {path}: {e.strerror or e}") from None
    if not token:
        raise ClientFlagError(f"the token file {path} is empty")
    return token
