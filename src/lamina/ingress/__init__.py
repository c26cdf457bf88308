"""lamina.ingress: public endpoints through HAProxy (the data plane; lamina never
proxies bytes itself).

Public API (modules are private; names load on first use, PEP 562)::

    Ingress(root, address="0.0.0.0")          # one HAProxy per root, <root>/ingress/
        .apply(routes, backends) -> "started" | "reloaded" | "runtime" | "unchanged"
        .running() -> master pid | None, .inspect() -> dict, .close()
        .certs (CertStore: add/list/get/remove), .add_cert(host, cert, key), .remove_cert(host)
        .set_challenge(token, key_authorization) / .clear_challenge(token)
    Route(port, protocol, backend, host=None, path=None, redirect_https=False)
    Backend(key, servers, balance="roundrobin", health_path=None)
    Server(name, address, port, ready=True)
    Acme(ingress, directory, email, ca_bundle=None).obtain(host) / .renew_due(within)
    InvalidIngress, IngressError
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lamina.ingress._acme import Acme
    from lamina.ingress._certs import CertInfo, CertStore
    from lamina.ingress._ingress import Ingress
    from lamina.ingress._model import Backend, IngressError, InvalidIngress, Route, Server

_LAZY = {
    "Acme": "_acme",
    "CertInfo": "_certs",
    "CertStore": "_certs",
    "Ingress": "_ingress",
    "Backend": "_model",
    "IngressError": "_model",
    "InvalidIngress": "_model",
    "Route": "_model",
    "Server": "_model",
}

__all__ = [
    "Acme",
    "Backend",
    "CertInfo",
    "CertStore",
    "Ingress",
    "IngressError",
    "InvalidIngress",
    "Route",
    "Server",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lamina.ingress' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lamina.ingress.{module}"), name)
    globals()[name] = value
    return value
