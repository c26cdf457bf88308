"""Docker Engine API: volumes (create, list, inspect, remove, prune) on the engine's
volume store. Only the ``local`` driver, without driver options (the engine mounts
no devices or tmpfs for a volume): anything else is a 400 naming it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lamina.daemon._api import engine
from lamina.daemon._http import HttpError, Request, Response, json_response
from lamina.dockerapi._router import filters_arg, route

if TYPE_CHECKING:
    from lamina.runtime._volumes import Volume


def volume_json(vol: Volume) -> dict[str, Any]:
    """Docker's Volume object (Labels and Options are objects, never null)."""
    shape = vol.to_dict()
    shape["Labels"] = shape["Labels"] or {}
    shape["Options"] = shape["Options"] or {}
    return shape


def _create_body(request: Request) -> tuple[str | None, dict[str, str]]:
    body = request.json() or {}
    if not isinstance(body, dict):
        raise HttpError(400, "volume create: the body must be a JSON object")
    driver = body.get("Driver") or "local"
    if driver != "local":
        raise HttpError(400, f"volume driver {driver!r} is not supported: only local")
    if body.get("DriverOpts"):
        raise HttpError(400, "volume DriverOpts are not supported (the local driver's "
                             "type/device/o mounts): create the volume without them")  # fmt: skip
    if body.get("ClusterVolumeSpec"):
        raise HttpError(400, "ClusterVolumeSpec is not supported: lamina has no swarm")
    name = body.get("Name") or None
    labels = body.get("Labels") or {}
    if name is not None and not isinstance(name, str):
        raise HttpError(400, "volume create: Name must be a string")
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise HttpError(400, "volume create: Labels must map strings to strings")
    return name, labels


@route("POST", "/volumes/create", "Create a volume", "volumes", status=201)
def volumes_create(request: Request) -> Response:
    name, labels = _create_body(request)
    with engine() as e:
        return json_response(volume_json(e.create_volume(name, labels)), 201)


@route("GET", "/volumes", "List volumes", "volumes")
def volumes_list(request: Request) -> Response:
    with engine() as e:
        vols = e.list_volumes(filters=filters_arg(request))
    return json_response({"Volumes": [volume_json(v) for v in vols], "Warnings": []})


@route("GET", "/volumes/{name}", "Inspect a volume", "volumes")
def volumes_inspect(request: Request) -> Response:
    with engine() as e:
        return json_response(volume_json(e.volume(request.params["name"])))


@route("DELETE", "/volumes/{name}", "Remove a volume", "volumes", status=204)
def volumes_remove(request: Request) -> Response:
    with engine() as e:
        e.remove_volume(request.params["name"], force=request.flag("force"))
    return Response(status=204)


@route("POST", "/volumes/prune", "Remove unused volumes", "volumes")
def volumes_prune(request: Request) -> Response:
    """Anonymous volumes only, unless the filter ``all=true`` (API 1.42's rule)."""
    filters = filters_arg(request) or {}
    every = filters.pop("all", ["false"])
    with engine() as e:
        result = e.prune_volumes(all=any(v in ("true", "1") for v in every), filters=filters)
    return json_response({"VolumesDeleted": list(result.removed),
                          "SpaceReclaimed": int(result.reclaimed)})  # fmt: skip
