"""Docker's Engine API, served by the lamina daemon (``lamina daemon --docker-host
unix:///run/lamina/docker.sock``) over the same engine as lamina's own ``/v1`` API.

The docker CLI, docker-py and Compose talk to it as to dockerd. Handlers translate
Docker's requests and answers (paths with or without ``/v1.NN``, Docker's JSON shapes,
Docker's status codes and ``{"message": ...}`` errors, hijacked streams) and nothing
else: every behaviour is the engine's. Modules by concern, each registering its routes
on ``_router.router`` when imported:

``_router``      dispatch: version prefix, Docker's headers and errors
``_system``      _ping, version, info, events, auth, system df, refusals (swarm, ...)
``_containers``  containers: create (HostConfig), list, inspect, lifecycle, logs, ...
``_streams``     attach and exec (hijack), resize, archive, export
``_images``      images: pull, push, list, inspect, history, tag, delete, save, load
``_build``       the classic builder protocol on lamina's builder
``_networks``    networks
``_volumes``     volumes
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lamina.daemon._http import Request, Response


def dispatch(request: Request) -> Response:
    from lamina.dockerapi._router import dispatch as route

    return route(request)
