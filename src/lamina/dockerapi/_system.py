"""Docker Engine API: see lamina.dockerapi's docstring for what this module serves."""

from __future__ import annotations

from lamina.daemon._http import Request, Response
from lamina.dockerapi._router import route


@route("GET", "/_ping", "Docker's ping: OK", "system", answer_type="text/plain")
def ping(request: Request) -> Response:
    return Response(
        body=b"OK" if request.method != "HEAD" else b"",
        content_type="text/plain; charset=utf-8",
        headers=[("Builder-Version", "1"), ("Cache-Control", "no-cache, no-store, must-revalidate"),
                 ("Pragma", "no-cache")],
    )  # fmt: skip
