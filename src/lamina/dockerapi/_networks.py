"""Docker Engine API: networks (create, list, inspect, remove, connect, disconnect,
prune) on the engine's bridge networks.

Docker's default network is ``bridge``; lamina's is ``lamina``. Clients send
``bridge`` (and NetworkMode ``default``) and expect to see ``bridge``: the name is
translated both ways here (``docker_name``, ``lamina_name``). ``host`` and ``none``
are network modes, not networks lamina lists."""

from __future__ import annotations

from typing import Any

from lamina.daemon._api import engine
from lamina.daemon._http import HttpError, Request, Response, json_response
from lamina.dockerapi._router import filters_arg, route
from lamina.errors import InUse, NotFound
from lamina.network._model import DEFAULT_NETWORK, Network

DOCKER_DEFAULT = "bridge"


def lamina_name(name: str) -> str:
    """The engine's name of the network a Docker client names."""
    return DEFAULT_NETWORK if name in (DOCKER_DEFAULT, "default") else name


def docker_name(name: str) -> str:
    """The name a Docker client knows a network of the engine by."""
    return DOCKER_DEFAULT if name == DEFAULT_NETWORK else name


def network_json(shape: dict[str, Any]) -> dict[str, Any]:
    """The engine's (Docker-shaped) inspect object as a Docker client sees it."""
    shape["Name"] = docker_name(shape["Name"])
    if shape["Name"] == DOCKER_DEFAULT:
        shape["Options"] = {"com.docker.network.bridge.default_bridge": "true",
                            **shape["Options"]}  # fmt: skip
    return shape


def _summary(net: Network) -> dict[str, Any]:
    """A network in a list: inspect's fields but its containers (API >= 1.28)."""
    shape = network_json(net.inspect({}))
    shape["Containers"] = {}
    return shape


# -- create ------------------------------------------------------------------------------

# Fields of a create body lamina takes as they are when unset or at these values.
_INERT: dict[str, tuple[Any, ...]] = {
    "Ingress": (False, None),
    "ConfigOnly": (False, None),
    "ConfigFrom": (None, {}, {"Network": ""}),
    "Scope": (None, "", "local"),
    "Attachable": (None, False, True),  # every local network is attachable
    "CheckDuplicate": (None, False, True),  # always checked
}


def _body(request: Request) -> dict[str, Any]:
    body = request.json()
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    return body


def _str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise HttpError(400, f"{what} must map strings to strings")
    return value


def _ipam(ipam: Any) -> tuple[list[str], list[str], list[str]]:
    """IPAM.Config's subnets, gateways and ranges (one per subnet, "" when unset)."""
    if not ipam:
        return [], [], []
    if not isinstance(ipam, dict):
        raise HttpError(400, "IPAM must be an object")
    if ipam.get("Driver") not in (None, "", "default"):
        raise HttpError(400, f"IPAM driver {ipam['Driver']!r} is not supported: only default")
    if ipam.get("Options"):
        raise HttpError(400, "IPAM.Options is not supported")
    subnets: list[str] = []
    gateways: list[str] = []
    ranges: list[str] = []
    for conf in ipam.get("Config") or []:
        if not isinstance(conf, dict):
            raise HttpError(400, "IPAM.Config must be a list of objects")
        if conf.get("AuxiliaryAddresses"):
            raise HttpError(400, "IPAM.Config.AuxiliaryAddresses is not supported")
        subnet, gateway, ip_range = (conf.get(k) or "" for k in ("Subnet", "Gateway", "IPRange"))
        if not subnet:
            raise HttpError(400, "IPAM.Config: each entry needs a Subnet")
        subnets.append(subnet)
        gateways.append(gateway)
        ranges.append(ip_range)
    return subnets, gateways, ranges


@route("POST", "/networks/create", "Create a network", "networks", status=201)
def networks_create(request: Request) -> Response:
    body = _body(request)
    name = body.get("Name")
    if not isinstance(name, str) or not name:
        raise HttpError(400, "network create: Name is required")
    for field, allowed in _INERT.items():
        if body.get(field) not in allowed:
            raise HttpError(400, f"network create: {field} {body[field]!r} is not supported")
    if name in (DOCKER_DEFAULT, "host", "none", "default", DEFAULT_NETWORK):
        raise HttpError(403, f"{name} is a pre-defined network and cannot be created")
    subnets, gateways, ranges = _ipam(body.get("IPAM"))
    with engine() as e:
        try:
            e.networks.get(name)
        except NotFound:
            pass
        else:
            raise HttpError(409, f"network with name {name} already exists")
        net = e.networks.create(
            name,
            driver=body.get("Driver") or "bridge",
            subnets=subnets,
            gateways=[g for g in gateways if g],
            ip_ranges=[r for r in ranges if r],
            internal=bool(body.get("Internal")),
            ipv6=bool(body.get("EnableIPv6")),
            labels=_str_map(body.get("Labels"), "Labels"),
            options=_str_map(body.get("Options"), "Options"),
        )
    return json_response({"Id": net.id, "Warning": ""}, 201)


# -- read ----------------------------------------------------------------------------------


@route("GET", "/networks", "List networks", "networks")
def networks_list(request: Request) -> Response:
    filters = filters_arg(request)
    if filters and "name" in filters:
        filters["name"] = [lamina_name(n) for n in filters["name"]]
    with engine() as e:
        nets = e.networks.list(filters)
    return json_response([_summary(n) for n in nets])


@route("GET", "/networks/{id}", "Inspect a network", "networks")
def networks_inspect(request: Request) -> Response:
    ref = request.params["id"]
    if ref in ("host", "none"):
        raise HttpError(404, f"network {ref} not found: lamina has no {ref} network object "
                             f"(it is a network mode: --network {ref})")  # fmt: skip
    with engine() as e:
        return json_response(network_json(e.networks.inspect(lamina_name(ref))))


# -- remove ----------------------------------------------------------------------------------


@route("DELETE", "/networks/{id}", "Remove a network", "networks", status=204)
def networks_remove(request: Request) -> Response:
    with engine() as e:
        try:
            e.networks.remove(lamina_name(request.params["id"]))
        except InUse as err:  # Docker's status: forbidden, for both reasons
            raise HttpError(403, str(err)) from None
    return Response(status=204)


@route("POST", "/networks/prune", "Remove unused networks", "networks")
def networks_prune(request: Request) -> Response:
    if filters_arg(request):
        raise HttpError(400, "network prune: filters are not supported")
    with engine() as e:
        removed = e.networks.prune()
    return json_response({"NetworksDeleted": removed})


# -- attachments -----------------------------------------------------------------------------


def endpoint_request(config: Any) -> tuple[list[str], str, str]:
    """An EndpointConfig's aliases and static addresses; a set field lamina does not
    take is a 400 naming it. (Also what a container create's NetworkingConfig is.)"""
    if not config:
        return [], "", ""
    if not isinstance(config, dict):
        raise HttpError(400, "EndpointConfig must be an object")
    for field in ("Links", "MacAddress", "DriverOpts", "IPAddress", "GlobalIPv6Address"):
        if config.get(field):
            raise HttpError(400, f"EndpointConfig.{field} is not supported")
    aliases = config.get("Aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise HttpError(400, "EndpointConfig.Aliases must be a list of strings")
    ipam = config.get("IPAMConfig") or {}
    if not isinstance(ipam, dict):
        raise HttpError(400, "EndpointConfig.IPAMConfig must be an object")
    if ipam.get("LinkLocalIPs"):
        raise HttpError(400, "EndpointConfig.IPAMConfig.LinkLocalIPs is not supported")
    return aliases, ipam.get("IPv4Address") or "", ipam.get("IPv6Address") or ""


def _container(body: dict[str, Any]) -> str:
    ref = body.get("Container")
    if not isinstance(ref, str) or not ref:
        raise HttpError(400, "Container is required")
    return ref


@route("POST", "/networks/{id}/connect", "Connect a container to a network", "networks")
def networks_connect(request: Request) -> Response:
    body = _body(request)
    aliases, ip, ip6 = endpoint_request(body.get("EndpointConfig"))
    with engine() as e:
        e.networks.connect(lamina_name(request.params["id"]), _container(body),
                           aliases=aliases, ip=ip, ip6=ip6)  # fmt: skip
    return Response(status=200)


@route("POST", "/networks/{id}/disconnect", "Disconnect a container from a network", "networks")
def networks_disconnect(request: Request) -> Response:
    body = _body(request)
    with engine() as e:
        e.networks.disconnect(lamina_name(request.params["id"]), _container(body),
                              force=bool(body.get("Force")))  # fmt: skip
    return Response(status=200)
