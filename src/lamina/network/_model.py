"""Network records: what ``network create`` makes (Docker's fields), as stored in the
engine's ``containers.db`` (``_db``) and shown by ``network inspect``."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

DEFAULT_NETWORK = "lamina"  # Docker's ``bridge``: joined unless --network says otherwise
# Names a user network may not take: the modes --network gives them.
RESERVED_NAMES = ("none", "host", "nat", "bridge", "default")
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
MTU_OPTIONS = ("mtu", "com.docker.network.driver.mtu")


@dataclass
class Subnet:
    """One subnet of a network: its CIDR, the gateway (the bridge's address) and the
    part addresses are leased from (``ip_range``, all of it when "")."""

    subnet: str
    gateway: str
    ip_range: str = ""


@dataclass
class Network:
    """A bridge network. ``interface``: the host's bridge device (unique across roots:
    named from the ID unless the user names it). ``dns``: aardvark-dns resolves its
    containers' names (user networks; Docker's default bridge does not)."""

    id: str
    name: str
    interface: str
    subnets: list[Subnet] = field(default_factory=list)
    driver: str = "bridge"
    created: float = field(default_factory=time.time)
    ipv6: bool = False
    internal: bool = False
    dns: bool = True
    labels: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.subnets = [Subnet(**s) if isinstance(s, dict) else s for s in self.subnets]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> Network:
        known = {f.name for f in dataclasses.fields(Network)}
        return Network(**{k: v for k, v in json.loads(text).items() if k in known})

    @property
    def mtu(self) -> int:
        for key in MTU_OPTIONS:
            if key in self.options:
                return int(self.options[key])
        return 0

    def inspect(self, containers: dict[str, dict[str, str]]) -> dict[str, Any]:
        """Docker's ``network inspect`` object; ``containers``: ID -> endpoint fields."""
        return {
            "Name": self.name,
            "Id": self.id,
            "Created": _rfc3339(self.created),
            "Scope": "local",
            "Driver": self.driver,
            "EnableIPv6": self.ipv6,
            "IPAM": {
                "Driver": "default",
                "Options": {},
                "Config": [
                    {"Subnet": s.subnet, "Gateway": s.gateway}
                    | ({"IPRange": s.ip_range} if s.ip_range else {})
                    for s in self.subnets
                ],
            },
            "Internal": self.internal,
            "Attachable": False,
            "Ingress": False,
            "ConfigFrom": {"Network": ""},
            "ConfigOnly": False,
            "Containers": containers,
            "Options": dict(self.options),
            "Labels": dict(self.labels),
        }


def _rfc3339(t: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
