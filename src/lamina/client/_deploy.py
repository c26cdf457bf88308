"""The client of the daemon's deployment and secret routes (``/v1/deployments``,
``/v1/secrets``), and the root's own daemon started when none serves it.

Deployment commands always go through a daemon (it keeps the desired state and
converges to it): ``--host``/``LAMINA_HOST`` names one; without, the root's daemon at
``daemon.default_host(root)`` is used, started in the background (``lamina --root
ROOT daemon``, its own session, its output appended to ``ROOT/daemon.log``) when
nothing answers there, and waited for.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina.client._engine import RemoteEngine, error_of
from lamina.client._transport import Address, DaemonUnreachable, Transport, segment
from lamina.errors import LaminaError

if TYPE_CHECKING:
    from lamina.ingress._certs import CertInfo

DAEMON_LOG = "daemon.log"
_START_TIMEOUT = 60.0  # a first daemon start reconciles the root: seconds, not more


class DeployClient:
    """The daemon's deployments (``lamina.deploy.Deployments`` served) and secrets."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self.engine = RemoteEngine(transport)  # logs, builds: the daemon's engine

    @classmethod
    def of(cls, engine: RemoteEngine) -> DeployClient:
        """The deployments of the daemon ``engine`` talks to (``--host``)."""
        return cls(engine._t)

    def _json(self, method: str, path: str, query: dict[str, Any] | None = None,
              **kw: Any) -> Any:  # fmt: skip
        return self.engine._json(method, path, query, **kw)

    # -- deployments

    def plan(self, spec: dict[str, Any]) -> Any:
        """What deploying ``spec`` (the model as JSON) would do."""
        return self._json("POST", "/deployments", {"dry_run": True}, json_body=spec)

    def apply(self, spec: dict[str, Any]) -> Any:
        """Deploy ``spec``; its plan back."""
        return self._json("POST", "/deployments", json_body=spec)

    def apply_wait(self, spec: dict[str, Any], timeout: float | None) -> Iterator[dict[str, Any]]:
        """Deploy ``spec`` and follow it: ``{"plan"}``, then ``{"status"}`` lines as it
        changes, then ``{"result"}``; an error line raises the daemon's error."""
        answer = self.engine._call("POST", "/deployments", {"wait": True, "timeout": timeout},
                                   json_body=spec)  # fmt: skip
        ended = False
        for line in answer.lines():
            event = json.loads(line)
            if "error" in event:
                raise error_of(int(event.get("code", 500)), str(event["error"]))
            ended = "result" in event
            yield event
        if not ended:
            raise LaminaError("the lamina daemon ended the deploy without a result")

    def down(self, name: str, *, volumes: bool = False) -> list[str]:
        """Remove the deployment; what was removed (replicas, ``network NAME``, ...)."""
        return list(self._json("DELETE", f"/deployments/{segment(name)}", {"volumes": volumes}))

    def list_deployments(self) -> list[Any]:
        return list(self._json("GET", "/deployments"))

    def status(self, name: str) -> Any:
        return self._json("GET", f"/deployments/{segment(name)}/status")

    def inspect(self, name: str) -> Any:
        return self._json("GET", f"/deployments/{segment(name)}")

    def services(self, name: str) -> list[Any]:
        return list(self._json("GET", f"/deployments/{segment(name)}/services"))

    def _service(self, name: str, service: str) -> str:
        return f"/deployments/{segment(name)}/services/{segment(service)}"

    def replicas(self, name: str, service: str) -> list[Any]:
        return list(self._json("GET", self._service(name, service) + "/replicas"))

    def scale(self, name: str, service: str, replicas: int) -> Any:
        return self._json("POST", self._service(name, service) + "/scale",
                          json_body={"replicas": replicas})  # fmt: skip

    def restart(self, name: str, service: str) -> Any:
        return self._json("POST", self._service(name, service) + "/restart")

    def run_job(self, name: str, service: str) -> Any:
        return self._json("POST", self._service(name, service) + "/jobs")

    def jobs(self, name: str, service: str) -> list[Any]:
        return list(self._json("GET", self._service(name, service) + "/jobs"))

    # -- secrets

    def create_secret(self, name: str, data: bytes) -> None:
        self._json("POST", "/secrets",
                   json_body={"name": name, "data": base64.b64encode(data).decode()})  # fmt: skip

    def secrets(self) -> list[Any]:
        return list(self._json("GET", "/secrets"))

    def remove_secret(self, name: str) -> None:
        self.engine._done("DELETE", f"/secrets/{segment(name)}")


class IngressClient:
    """The daemon's ingress (``/v1/ingress``): what ``lamina.ingress.Ingress`` offers the
    ``ingress`` commands."""

    def __init__(self, engine: RemoteEngine) -> None:
        self.engine = engine

    def inspect(self) -> dict[str, Any]:
        return dict(self.engine._json("GET", "/ingress"))

    def list_certs(self) -> list[CertInfo]:
        return [_cert(c) for c in self.engine._json("GET", "/ingress/certificates")]

    def add_cert(self, host: str, cert_pem: bytes, key_pem: bytes) -> CertInfo:
        body = {"cert": cert_pem.decode("utf-8", "replace"),
                "key": key_pem.decode("utf-8", "replace")}  # fmt: skip
        return _cert(self.engine._json("PUT", f"/ingress/certificates/{segment(host)}",
                                       json_body=body))  # fmt: skip

    def remove_cert(self, host: str) -> None:
        self.engine._done("DELETE", f"/ingress/certificates/{segment(host)}")


def _cert(data: dict[str, Any]) -> CertInfo:
    from lamina.ingress._certs import CertInfo

    return CertInfo(str(data["host"]), str(data["not_after"]), str(data.get("issuer", "")),
                    bool(data.get("acme")))  # fmt: skip


# -- the root's own daemon ------------------------------------------------------------------


def answers(transport: Transport) -> bool:
    """Whether a daemon answers ``/v1/_ping`` at the transport's address."""
    try:
        answer = transport.request("GET", "/v1/_ping")
        answer.read()
    except (DaemonUnreachable, OSError):
        return False
    except LaminaError:
        return False
    return answer.status == 200


def root_daemon(root: Path, url: str, daemon_args: Sequence[str] = (),
                timeout: float = _START_TIMEOUT) -> Transport:  # fmt: skip
    """A transport to the daemon of ``root`` at ``url`` (its default unix socket),
    which is started in the background if nothing answers there: ``lamina --root ROOT
    [daemon_args] daemon``, detached (its own session: it outlives this command), its
    output appended to ``ROOT/daemon.log``. Two commands starting it at once are fine:
    the second daemon finds the root's lock taken and exits, and both clients wait for
    the first."""
    transport = Transport(Address.parse(url))
    if answers(transport):
        return transport
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / DAEMON_LOG
    with open(log_path, "ab") as log:
        start = log.tell()
        proc = subprocess.Popen(
            [sys.executable, "-m", "lamina.cli.main", "--root", str(root), *daemon_args,
             "daemon"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            close_fds=True, cwd="/",
            env={k: v for k, v in os.environ.items() if k != "LAMINA_HOST"},
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(transport):
            _settle(proc, root)
            return transport
        if proc.poll() is not None and not answers(transport):
            if "another lamina daemon serves" in _log_since(log_path, start):
                time.sleep(0.05)  # another command's daemon is starting: wait for it
                continue
            raise LaminaError(f"the lamina daemon of {root} did not start: "
                              f"{_last_line(log_path, start)} (see {log_path})")  # fmt: skip
        time.sleep(0.05)
    raise LaminaError(f"the lamina daemon of {root} did not answer at {url} within "
                      f"{timeout:.0f} s (see {log_path})")  # fmt: skip


def _settle(proc: subprocess.Popen[bytes], root: Path, timeout: float = 10.0) -> None:
    """Wait until the daemon this command started serves the root or has exited, having
    found another serving it (two commands started one each): no loser is left behind
    still starting when the command ends."""
    from lamina.daemon._daemon import serving  # the CLI has it: default_host

    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if (serving(root) or {}).get("pid") == proc.pid:
            return
        time.sleep(0.02)


def _log_since(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(65536).decode("utf-8", "replace")
    except OSError:
        return ""


def _last_line(path: Path, offset: int) -> str:
    lines = [line for line in _log_since(path, offset).splitlines() if line.strip()]
    return lines[-1].strip() if lines else "it exited"
