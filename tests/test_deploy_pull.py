"""A service's image and its ``pull_policy`` against a real registry: ``always`` and
``newer`` pull on every deploy and roll the service out when the tag's digest changed,
``if_not_present`` keeps the image it has, and a deploy whose pull fails changes
nothing (the replicas keep serving)."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_fixtures import Controller, controller, deploy_root, get, httpd, spec
from registry_server import RegistryServer
from runtime_fixtures import IMAGE_REF, cli_image_root, lamina_ok, until

from lamina.errors import LaminaError

__all__ = ["controller", "deploy_root"]

pytestmark = pytest.mark.timeout(300)

SERVE = ("mkdir -p /www && (cat /marker 2>/dev/null || echo v1) > /www/index.html && "
         "exec httpd -f -p 8080 -h /www")  # fmt: skip


@pytest.fixture(scope="module")
def pusher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another root: what it pushes reaches the deployment's root only by a pull."""
    return cli_image_root(tmp_path_factory, "pusher")


def push(pusher: Path, ref: str, marker: str | None) -> str:
    """Push busybox as ``ref`` (with /marker holding ``marker``); its digest."""
    if marker is None:
        lamina_ok(pusher, "tag", IMAGE_REF, ref)
    else:
        lamina_ok(pusher, "rm", "-f", "mk")
        lamina_ok(pusher, "run", "--name", "mk", "--network", "none", IMAGE_REF,
                  "sh", "-c", f"echo {marker} > /marker")  # fmt: skip
        lamina_ok(pusher, "commit", "mk", ref)
        lamina_ok(pusher, "rm", "mk")
    out = lamina_ok(pusher, "push", ref)
    return out.split("Digest: ")[1].split()[0]


def app(ref: str, policy: str) -> dict[str, object]:
    return httpd(
        image={"name": ref, "pull_policy": policy},
        command={"entrypoint": ["/bin/sh", "-c"], "args": [SERVE]},
        scale={"replicas": 2},
    )


def serving(c: Controller, dep: str) -> set[str]:
    return {get(r.address) for r in c.d.replicas(dep, "web") if r.ready}


def rolled_to(c: Controller, dep: str, text: str) -> bool:
    s = c.d.status(dep).services[0]
    return s.rollout == "complete" and all(r.current for r in s.replicas) and (
        serving(c, dep) == {text}
    )


@pytest.mark.parametrize("policy", ["always", "newer"])
def test_a_new_digest_under_the_tag_rolls_the_service_out(
    controller: Controller, registry: RegistryServer, pusher: Path, policy: str
) -> None:
    ref = f"{registry.host}/deploy-pull/{policy}:1"
    push(pusher, ref, None)
    dep = f"pull-{policy}"
    controller.d.apply(spec(dep, web=app(ref, policy)))
    controller.d.wait(dep, timeout=120)
    assert serving(controller, dep) == {"v1"}
    # the same spec again, nothing pushed: nothing to do
    assert controller.d.apply(spec(dep, web=app(ref, policy))).lines == [
        f"unchanged network {dep}", "unchanged service web: 2 replicas"
    ]
    push(pusher, ref, "v2")  # a new image under the same tag
    plan = controller.d.apply(spec(dep, web=app(ref, policy)))
    assert "replace (rolling) service web: 2 replicas" in plan.lines
    until(lambda: rolled_to(controller, dep, "v2"), 120)


def test_if_not_present_keeps_its_image_and_a_failed_pull_changes_nothing(
    controller: Controller, registry: RegistryServer, pusher: Path
) -> None:
    ref = f"{registry.host}/deploy-pull/present:1"
    push(pusher, ref, None)
    dep = "pull-present"
    controller.d.apply(spec(dep, web=app(ref, "if_not_present")))
    controller.d.wait(dep, timeout=120)
    push(pusher, ref, "v2")
    plan = controller.d.apply(spec(dep, web=app(ref, "if_not_present")))
    assert "unchanged service web: 2 replicas" in plan.lines
    assert serving(controller, dep) == {"v1"}
    # a tag the registry does not have, with "always": the deploy fails, the old
    # replicas keep serving what they served
    missing = f"{registry.host}/deploy-pull/present:nope"
    with pytest.raises(LaminaError):
        controller.d.apply(spec(dep, web=app(missing, "always")))
    assert serving(controller, dep) == {"v1"}
    assert all(r.current for r in controller.d.status(dep).services[0].replicas)
