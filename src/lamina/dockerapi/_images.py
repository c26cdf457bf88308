"""Docker's image endpoints: pull (images/create), push, list, inspect, history, tag,
delete, prune, save (get), load, import (fromSrc) and commit, on the engine.

Image names in Docker's paths are not escaped (``/images/localhost:5000/x/json``):
their routes match a name with slashes (``_greedy``)."""

from __future__ import annotations

import fnmatch
import json
import queue
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from lamina.daemon import _api as lapi
from lamina.daemon._http import (
    HttpError,
    Request,
    Response,
    drain_json_lines,
    internal_error,
    json_response,
)
from lamina.dockerapi._router import api_version, route
from lamina.errors import LaminaError

JSON_LINES = "application/json"  # what dockerd calls its JSON-lines streams


def _greedy(method: str, path: str, summary: str) -> Callable[[Any], Any]:
    """A route whose ``{name}`` may hold slashes (an image name as Docker sends it)."""
    return route(method, path.replace("{name}", "{name:path}"), summary, "images")


def _api_version(request: Request) -> tuple[int, ...]:
    return tuple(int(p) for p in api_version(request).split("."))


def _familiar(name: str) -> str:
    from lamina.image import parse_reference

    try:
        return parse_reference(name).familiar()
    except ValueError:
        return name


def _unix(created: str | None) -> int:
    if not created:
        return 0
    try:
        return int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


# -- JSON-lines streams ---------------------------------------------------------------------


def error_line(message: str) -> dict[str, Any]:
    text = " ".join(message.split())
    return {"errorDetail": {"message": text}, "error": text}


Put = Callable[[dict[str, Any]], None]


def json_lines(request: Request, work: Callable[[Put], None]) -> Response:
    """Run ``work(put)`` in a thread of its own and stream what it puts as JSON lines;
    an engine error ends the stream with Docker's error line. A client that goes away
    stops reading; the work finishes (its leases keep the store consistent)."""
    lines: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def run() -> None:
        try:
            work(lines.put)
        except LaminaError as e:
            lines.put(error_line(str(e)))
        except Exception as e:  # a bug: said, not hidden
            lines.put(error_line(internal_error(e)))
        finally:
            lines.put(None)

    threading.Thread(target=run, daemon=True).start()

    return Response(body=drain_json_lines(lines, request, end=b"\r\n"), content_type=JSON_LINES)


class _DockerProgress:
    """The registry's progress events as Docker's pull/push status lines."""

    _PULL = {
        "started": "Pulling fs layer",
        "verifying": "Verifying Checksum",
        "extracting": "Extracting",
        "done": "Pull complete",
        "exists": "Already exists",
    }
    _PUSH = {"started": "Preparing", "done": "Pushed", "exists": "Layer already exists",
             "mounted": "Mounted from"}  # fmt: skip

    def __init__(self, put: Callable[[dict[str, Any]], None], push: bool) -> None:
        self._put = put
        self._words = self._PUSH if push else self._PULL
        self._moved: dict[str, int] = {}
        self.fetched = False  # a layer was downloaded (not all there already)
        self._lock = threading.Lock()

    def event(self, ev: Any) -> None:
        if ev.what != "layer" or not ev.digest:
            return
        short = ev.digest.split(":")[-1][:12]
        if ev.kind == "advance":
            with self._lock:
                moved = self._moved[short] = self._moved.get(short, 0) + ev.advance
            verb = "Pushing" if self._words is self._PUSH else "Downloading"
            self._put({"status": verb, "id": short,
                       "progressDetail": {"current": moved, "total": ev.size},
                       "progress": f"{moved}/{ev.size}"})  # fmt: skip
            return
        if ev.kind == "started":
            self.fetched = True
        word = self._words.get(ev.kind)
        if word is None:
            return
        if ev.kind == "mounted":
            word = f"Mounted from {ev.message}"
        self._put({"status": word, "progressDetail": {}, "id": short})


# -- pull and import ----------------------------------------------------------------------


def _reference(name: str, tag: str | None) -> str:
    if not tag:
        return name
    return f"{name}@{tag}" if tag.startswith("sha256:") else f"{name}:{tag}"


@route("POST", "/images/create", "Pull or import an image", "images")
def images_create(request: Request) -> Response:
    from lamina.image import parse_reference

    from_image, from_src = request.arg("fromImage"), request.arg("fromSrc")
    tag, platform = request.arg("tag"), request.arg("platform") or None
    if from_src is not None:
        return _import(request, from_src, tag)
    if not from_image:
        raise HttpError(400, "query parameter fromImage or fromSrc: required")
    reference = _reference(from_image, tag)
    try:
        ref = parse_reference(reference)
    except ValueError as e:
        raise HttpError(400, f"invalid reference format: {e}")
    credentials = request_credentials(request, ref.domain)

    def work(put: Callable[[dict[str, Any]], None]) -> None:
        put({"status": f"Pulling from {ref.familiar_name()}", "id": ref.tag or ref.digest or ""})
        progress = _DockerProgress(put, push=False)
        with lapi.engine() as e:
            try:
                rec = e.pull_image(reference, platform=platform, progress=progress,
                                   credentials=credentials)  # fmt: skip
            except LaminaError as err:
                raise docker_auth_error(err, credentials) from None
        put({"status": f"Digest: {rec.manifest_digest}"})
        said = "Downloaded newer image" if progress.fetched else "Image is up to date"
        put({"status": f"Status: {said} for {ref.familiar()}"})

    return json_lines(request, work)


def _registry_auth(request: Request) -> dict[str, Any] | None:
    """``X-Registry-Auth``: base64 (URL-safe or not) JSON of Docker's AuthConfig."""
    raw = request.headers.get("x-registry-auth")
    if not raw:
        return None
    data = _base64_json(raw, "X-Registry-Auth")
    if not isinstance(data, dict):
        raise HttpError(400, "X-Registry-Auth: expected base64 of a JSON object")
    return data


def _base64_json(raw: str, header: str) -> Any:
    import base64
    import binascii

    padded = raw + "=" * (-len(raw) % 4)
    try:
        return json.loads(base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_")))
    except (binascii.Error, ValueError):
        raise HttpError(400, f"{header}: expected base64 of a JSON object")


def request_credentials(request: Request, domain: str) -> dict[str, Any]:
    """The pull or push's own credentials (``X-Registry-Auth``) for the registry of
    its reference, as the engine takes them: ``{domain: Credentials}``, or nothing
    when the client sent none (then the daemon's own credential files apply)."""
    from lamina.errors import RegistryError
    from lamina.registry import auth_config_credentials

    config = _registry_auth(request)
    try:
        creds = auth_config_credentials(config, "X-Registry-Auth") if config else None
    except RegistryError as e:
        raise HttpError(400, str(e))
    return {domain: creds} if creds is not None else {}


def build_credentials(request: Request) -> dict[str, Any]:
    """``X-Registry-Config`` of a build: base64 JSON mapping registry addresses to
    AuthConfigs, the credentials of its ``FROM`` pulls, as ``{host: Credentials}``."""
    from lamina.errors import RegistryError
    from lamina.registry import auth_config_credentials

    raw = request.headers.get("x-registry-config")
    if not raw:
        return {}
    data = _base64_json(raw, "X-Registry-Config")
    if not isinstance(data, dict):
        raise HttpError(400, "X-Registry-Config: expected base64 of a JSON object")
    found = {}
    for address, entry in data.items():
        try:
            creds = auth_config_credentials(entry, f"X-Registry-Config: {address}")
        except RegistryError as e:
            raise HttpError(400, str(e))
        if creds is not None:
            found[str(address)] = creds
    return found


def docker_auth_error(err: LaminaError, credentials: dict[str, Any]) -> LaminaError:
    """A registry's refusal in Docker's words (not ``run lamina login``): what
    dockerd's registry client says without credentials, and with refused ones."""
    from lamina.errors import AuthenticationRequired

    if not isinstance(err, AuthenticationRequired):
        return err
    said = "unauthorized: authentication required" if credentials else "no basic auth credentials"
    return AuthenticationRequired(said)


def _import(request: Request, source: str, tag: str | None) -> Response:
    if source != "-":
        raise HttpError(400, "fromSrc: only '-' (the request body) is supported, not a URL")
    repo = request.arg("repo")
    reference = _reference(repo, tag) if repo else None
    with lapi.engine() as e:
        rec = e.import_image(request.stream(), reference=reference,
                             changes=request.query.get("changes") or [],
                             message=request.arg("message"),
                             platform=request.arg("platform") or None)  # fmt: skip
    return Response(body=json.dumps({"status": rec.id}).encode() + b"\r\n",
                    content_type=JSON_LINES)  # fmt: skip


# -- push -------------------------------------------------------------------------------------


@_greedy("POST", "/images/{name}/push", "Push an image")
def images_push(request: Request) -> Response:
    from lamina.image import parse_reference

    name, tag = request.params["name"], request.arg("tag")
    reference = _reference(name, tag)
    with lapi.engine() as e:
        rec = e.images.images.resolve(reference)  # 404 before the stream starts
    ref = parse_reference(reference)
    credentials = request_credentials(request, ref.domain)

    def work(put: Callable[[dict[str, Any]], None]) -> None:
        put({"status": f"The push refers to repository [{ref.domain}/{ref.path}]"})
        with lapi.engine() as e:
            try:
                digest = e.push_image(reference, progress=_DockerProgress(put, push=True),
                                      credentials=credentials)  # fmt: skip
            except LaminaError as err:
                raise docker_auth_error(err, credentials) from None
        shown = ref.tag or "latest"
        put({"status": f"{shown}: digest: {digest} size: {rec.size}"})
        put({"progressDetail": {}, "aux": {"Tag": shown, "Digest": digest, "Size": rec.size}})

    return json_lines(request, work)


# -- list, inspect, history ------------------------------------------------------------------


def _labels(e: Any, rec: Any) -> dict[str, str]:
    labels = (e.images.config(rec).get("config") or {}).get("Labels") or {}
    return dict(labels)


def _matches_reference(rec: Any, pattern: str) -> list[str]:
    """The tags of ``rec`` matching Docker's reference filter (``repo`` or
    ``repo:tag``, shell patterns)."""
    out = []
    for tag in rec.tags:
        short = _familiar(tag)
        repo = short.rsplit(":", 1)[0] if ":" in short.rsplit("/", 1)[-1] else short
        if fnmatch.fnmatchcase(short, pattern) or fnmatch.fnmatchcase(repo, pattern):
            out.append(short)
    return out


def docker_filters(request: Request) -> dict[str, list[str]]:
    """``filters``: Docker's JSON map of key to values, as a list or (the docker CLI's
    form) a map of value to true."""
    raw = request.arg("filters")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise HttpError(400, "invalid filter: expected a JSON object")
    out: dict[str, list[str]] = {}
    for key, values in data.items():
        if isinstance(values, dict):
            values = [v for v, on in values.items() if on]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise HttpError(400, f"invalid filter '{key}': expected a list of strings")
        out[str(key)] = values
    return out


def _has_label(labels: dict[str, str], spec: str) -> bool:
    key, eq, value = spec.partition("=")
    return key in labels and (not eq or labels[key] == value)


_IMAGE_FILTERS = ("reference", "label", "dangling", "before", "since")


@route("GET", "/images/json", "List images", "images")
def images_list(request: Request) -> Response:
    filters = docker_filters(request)
    for key in filters:
        if key not in _IMAGE_FILTERS:
            raise HttpError(400, f"invalid filter '{key}'")
    for value in filters.get("dangling", []):
        if value.lower() not in ("true", "false", "1", "0"):
            raise HttpError(400, f"invalid filter 'dangling={value}'")
    request.flag("digests")  # validated; RepoDigests are always given
    request.flag("all")
    old_shape = _api_version(request) < (1, 44)
    with lapi.engine() as e:
        records = e.images.images.list()
        bounds = {k: _unix(e.images.images.resolve(filters[k][0]).created)
                  for k in ("before", "since") if filters.get(k)}  # fmt: skip
        out = []
        for rec in records:
            created = _unix(rec.created)
            tags = [_familiar(t) for t in rec.tags]
            if "reference" in filters:
                tags = sorted({t for p in filters["reference"] for t in _matches_reference(rec, p)})
                if not tags:
                    continue
            if "dangling" in filters:
                want = filters["dangling"][-1].lower() in ("true", "1")
                if (not rec.tags) != want:
                    continue
            if "before" in bounds and created >= bounds["before"]:
                continue
            if "since" in bounds and created <= bounds["since"]:
                continue
            labels = _labels(e, rec)
            if not all(_has_label(labels, spec) for spec in filters.get("label", [])):
                continue
            entry: dict[str, Any] = {
                "Id": rec.id, "ParentId": "", "RepoTags": tags,
                "RepoDigests": [_familiar(d) for d in rec.repo_digests],
                "Created": created, "Size": rec.image_size, "SharedSize": -1,
                "Labels": labels, "Containers": -1,
            }  # fmt: skip
            if old_shape:
                entry["VirtualSize"] = rec.image_size
            out.append(entry)
    out.sort(key=lambda x: -x["Created"])
    return json_response(out)


@_greedy("GET", "/images/{name}/json", "Inspect an image")
def images_inspect(request: Request) -> Response:
    with lapi.engine() as e:
        data = e.inspect_image(request.params["name"])
    config = data["Config"] or {}
    shape: dict[str, Any] = {
        "Id": data["Id"], "RepoTags": data["RepoTags"], "RepoDigests": data["RepoDigests"],
        "Parent": "", "Comment": _comment(data["History"]), "Created": data["Created"] or "",
        "DockerVersion": "", "Author": data["Author"], "Config": config,
        "Architecture": data["Architecture"], "Os": data["Os"], "Size": data["Size"],
        "GraphDriver": {"Name": "overlay2", "Data": {}},
        "RootFS": {"Type": data["RootFS"].get("type", "layers"),
                   "Layers": data["RootFS"].get("diff_ids", [])},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
    }  # fmt: skip
    if data["Variant"]:
        shape["Variant"] = data["Variant"]
    if _api_version(request) < (1, 44):
        shape["VirtualSize"] = data["Size"]
        shape["Container"], shape["ContainerConfig"] = "", config
    return json_response(shape)


def _comment(history: list[dict[str, Any]]) -> str:
    return str(history[-1].get("comment", "")) if history else ""


@_greedy("GET", "/images/{name}/history", "An image's history")
def images_history(request: Request) -> Response:
    with lapi.engine() as e:
        rec = e.images.images.resolve(request.params["name"])
        config = e.images.config(rec)
        layer_sizes = _layer_sizes(e, rec)
    history = config.get("history") or []
    out = []
    layers = iter(layer_sizes)
    for entry in history:
        size = 0 if entry.get("empty_layer") else next(layers, 0)
        out.append({"Id": "<missing>", "Created": _unix(entry.get("created")),
                    "CreatedBy": entry.get("created_by", ""), "Tags": None, "Size": size,
                    "Comment": entry.get("comment", "")})  # fmt: skip
    out.reverse()
    if out:
        out[0]["Id"] = rec.id
        out[0]["Tags"] = [_familiar(t) for t in rec.tags]
    return json_response(out)


def _layer_sizes(e: Any, rec: Any) -> list[int]:
    """Each layer's size (its blob's, as stored), bottom first."""
    try:
        manifest = e.images.manifest_for(rec.manifest_digest)
        return [int(layer.size) for layer in manifest.layers]
    except (LaminaError, AttributeError, OSError):
        return []


# -- tag, delete, prune ------------------------------------------------------------------------


@_greedy("POST", "/images/{name}/tag", "Tag an image")
def images_tag(request: Request) -> Response:
    repo = request.arg("repo")
    if not repo:
        raise HttpError(400, "query parameter repo: required")
    target = _reference(repo, request.arg("tag") or "latest")
    with lapi.engine() as e:
        e.tag_image(request.params["name"], target)
    return Response(status=201, body=b"", content_type="text/plain")


def _removed(result: Any) -> list[dict[str, str]]:
    return [*({"Untagged": _familiar(n)} for n in result.untagged),
            *({"Deleted": i} for i in result.deleted)]  # fmt: skip


@_greedy("DELETE", "/images/{name}", "Remove an image")
def images_delete(request: Request) -> Response:
    request.flag("noprune")  # validated; the engine removes what nothing else uses
    with lapi.engine() as e:
        result = e.remove_image(request.params["name"], force=request.flag("force"))
    return json_response(_removed(result))


@route("POST", "/images/prune", "Remove unused images", "images")
def images_prune(request: Request) -> Response:
    filters = docker_filters(request)
    for key in filters:
        if key not in ("dangling", "label"):
            raise HttpError(400, f"invalid filter '{key}'")
    all_unused = any(v.lower() in ("false", "0") for v in filters.get("dangling", []))
    specs = filters.get("label", [])
    with lapi.engine() as e:

        def select(rec: Any) -> bool:
            return all(_has_label(_labels(e, rec), s) for s in specs)

        result = e.prune_images(all_unused=all_unused, select=select if specs else None)
    return json_response({"ImagesDeleted": _removed(result) or None,
                          "SpaceReclaimed": result.reclaimed})  # fmt: skip


# -- save, load, commit ------------------------------------------------------------------------


@route("GET", "/images/get", "Images as one docker archive", "images")
def images_get(request: Request) -> Response:
    request.query["format"] = ["docker-archive"]
    return lapi.images_save(request)


@_greedy("GET", "/images/{name}/get", "An image as a docker archive")
def image_get(request: Request) -> Response:
    request.query["names"] = [request.params["name"]]
    request.query["format"] = ["docker-archive"]
    return lapi.images_save(request)


@route("POST", "/images/load", "Load images from an archive", "images")
def images_load(request: Request) -> Response:
    request.flag("quiet")  # validated; the client decides what it prints
    with lapi.engine() as e:
        records = e.load_images(request.stream())
    lines = []
    for rec in records:
        names = [_familiar(t) for t in rec.tags]
        for said in names or [rec.id]:
            word = "Loaded image" if names else "Loaded image ID"
            lines.append({"stream": f"{word}: {said}\n"})
    body = b"".join(json.dumps(line).encode() + b"\r\n" for line in lines)
    return Response(body=body, content_type=JSON_LINES)


@route("POST", "/commit", "An image of a container's changes", "images")
def commit(request: Request) -> Response:
    container = request.arg("container")
    if not container:
        raise HttpError(400, "query parameter container: required")
    repo = request.arg("repo")
    reference = _reference(repo, request.arg("tag") or "latest") if repo else None
    body = request.json()
    if body not in ({}, None) and not isinstance(body, dict):
        raise HttpError(400, "request body: expected a container config object")
    with lapi.engine() as e:
        image_id = e.commit(container, reference, changes=request.query.get("changes") or [],
                            message=request.arg("comment"), author=request.arg("author"),
                            pause=request.flag("pause", True))  # fmt: skip
    return json_response({"Id": image_id}, 201)
