"""Authentication: challenge parsing, credential files, Basic (htpasswd) and bearer
token registries, login/logout."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from registry_server import RegistryServer, TestImage, TokenServer

from lamina.errors import AuthenticationRequired
from lamina.image import LocalImages
from lamina.registry import (
    Credentials,
    docker_config_path,
    login,
    logout,
    lookup_credentials,
    parse_challenges,
    pull,
    push,
    save_credentials,
)
from lamina.registry._auth import merge_scopes

# -- challenges and scopes -------------------------------------------------------------


def test_parse_bearer_challenge() -> None:
    (c,) = parse_challenges(
        [
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/busybox:pull"'
        ]
    )
    assert c.scheme == "bearer"
    assert c.realm == "https://auth.docker.io/token"
    assert c.params["service"] == "registry.docker.io"
    assert c.params["scope"] == "repository:library/busybox:pull"


def test_parse_several_challenges_escapes_and_tokens() -> None:
    got = parse_challenges(
        [
            'Basic realm="say \\"hi\\"", charset=UTF-8, BEARER realm=https://x/t ,service=s',
            "Negotiate",
        ]
    )
    assert [c.scheme for c in got] == ["basic", "bearer", "negotiate"]
    assert got[0].params == {"realm": 'say "hi"', "charset": "UTF-8"}
    assert got[1].params == {"realm": "https://x/t", "service": "s"}


def test_merge_scopes() -> None:
    assert merge_scopes(
        ["repository:a:push", "repository:a:pull", "repository:b:pull", "repository:a:pull"]
    ) == ("repository:a:pull,push", "repository:b:pull")


# -- credential files ------------------------------------------------------------------


def _write_docker_config(data: dict[str, object]) -> Path:
    path = docker_config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_lookup_docker_config_key_forms() -> None:
    auth = base64.b64encode(b"alice:s3cr:et").decode()
    _write_docker_config(
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": auth},
                "https://reg.example:5000": {"username": "bob", "password": "pw"},
                "other.example": {"identitytoken": "refresh-me"},
                "scoped.example/team/app": {"auth": base64.b64encode(b"team:x").decode()},
                "scoped.example": {"auth": base64.b64encode(b"all:y").decode()},
            }
        }
    )
    assert lookup_credentials("docker.io") == Credentials("alice", "s3cr:et")
    assert lookup_credentials("reg.example:5000") == Credentials("bob", "pw")
    assert lookup_credentials("other.example") == Credentials(identity_token="refresh-me")
    assert lookup_credentials("scoped.example", "team/app") == Credentials("team", "x")
    assert lookup_credentials("scoped.example", "team/other") == Credentials("all", "y")
    assert lookup_credentials("nowhere.example") is None
    assert "s3cr" not in repr(lookup_credentials("docker.io"))


def test_lookup_podman_auth_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    runtime = tmp_path / "run" / "containers" / "auth.json"
    runtime.parent.mkdir(parents=True)
    runtime.write_text(json.dumps({"auths": {"pod.example": {"auth": "cDpx"}}}))  # p:q
    assert lookup_credentials("pod.example") == Credentials("p", "q")
    override = tmp_path / "auth.json"
    override.write_text(json.dumps({"auths": {"pod.example": {"auth": "cjpz"}}}))  # r:s
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(override))
    assert lookup_credentials("pod.example") == Credentials("r", "s")


def test_save_is_atomic_private_and_keeps_other_keys() -> None:
    path = _write_docker_config(
        {
            "auths": {"https://keep.example": {"auth": "eDp5"}, "http://h:1/": {"auth": "b2xk"}},
            "credsStore": "",
            "psFormat": "table",
        }
    )
    save_credentials("h:1", "new", "pw")
    data = json.loads(path.read_text())
    assert data["psFormat"] == "table"
    assert data["auths"]["https://keep.example"] == {"auth": "eDp5"}
    assert data["auths"]["h:1"] == {"auth": base64.b64encode(b"new:pw").decode()}
    assert "http://h:1/" not in data["auths"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]
    assert logout("h:1") is True
    assert logout("h:1") is False
    assert lookup_credentials("h:1") is None


# -- htpasswd (Basic) registry ---------------------------------------------------------


def test_basic_registry_401_then_login_then_push_and_pull(
    auth_registry: RegistryServer,
    busybox_image: TestImage,
    local_images: LocalImages,
    tmp_path: Path,
) -> None:
    host = auth_registry.host
    ref = f"{host}/private/busybox:1"
    busybox_image.store(local_images, ref)
    with pytest.raises(AuthenticationRequired) as e:
        push(local_images, ref)
    assert "\n" not in str(e.value) and f"lamina login {host}" in str(e.value)

    with pytest.raises(AuthenticationRequired, match="wrong username or password"):
        login(host, "alice", "not-her-password")
    assert lookup_credentials(host) is None

    saved = login(host, "alice", auth_registry.users["alice"])
    assert saved == docker_config_path()
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600

    assert push(local_images, ref) == busybox_image.target
    other = LocalImages.open(tmp_path / "other")
    assert pull(other, ref).digest == busybox_image.target
    other.close()


def test_basic_registry_reads_docker_config_written_by_hand(
    auth_registry: RegistryServer, busybox_image: TestImage, local_images: LocalImages
) -> None:
    user, pw = "bob", auth_registry.users["bob"]
    _write_docker_config(
        {
            "auths": {
                f"https://{auth_registry.host}": {
                    "auth": base64.b64encode(f"{user}:{pw}".encode()).decode()
                }
            }
        }
    )
    ref = f"{auth_registry.host}/handwritten/busybox:1"
    busybox_image.store(local_images, ref)
    assert push(local_images, ref) == busybox_image.target


def test_basic_registry_wrong_stored_password(
    auth_registry: RegistryServer, busybox_image: TestImage, local_images: LocalImages
) -> None:
    save_credentials(auth_registry.host, "alice", "stale-password")
    with pytest.raises(AuthenticationRequired) as e:
        pull(local_images, f"{auth_registry.host}/x/y:1")
    assert "for user alice" in str(e.value) and "\n" not in str(e.value)


# -- bearer token registry -------------------------------------------------------------


def test_token_flow_scopes_for_push_pull_and_mount(
    token_registry: RegistryServer,
    token_server: TokenServer,
    busybox_image: TestImage,
    local_images: LocalImages,
    tmp_path: Path,
) -> None:
    host = token_registry.host
    login(host, "alice", "wonderland")
    ref = f"{host}/team/app:1"
    busybox_image.store(local_images, ref)
    token_server.requests.clear()
    assert push(local_images, ref) == busybox_image.target
    seen = token_server.scopes_seen()
    assert "repository:team/app:pull,push" in seen
    assert all(r.user == "alice" for r in token_server.requests)
    # Tokens are cached per scope set: one fetch for the whole push.
    assert len(token_server.requests) == 1

    other = LocalImages.open(tmp_path / "other")
    token_server.requests.clear()
    assert pull(other, ref).digest == busybox_image.target
    assert [r.scopes for r in token_server.requests] == [["repository:team/app:pull"]]

    # Pushing to another repository mounts from the one we pulled from.
    token_server.requests.clear()
    push(other, ref, f"{host}/team/copy:1")
    mount_requests = [r for r in token_server.requests if len(r.scopes) == 2]
    assert mount_requests, token_server.requests
    assert set(mount_requests[0].scopes) == {
        "repository:team/copy:pull,push",
        "repository:team/app:pull",
    }
    assert mount_requests[0].granted == mount_requests[0].scopes
    other.close()


def test_token_anonymous_pull_of_public_repo_and_refusal_of_private(
    token_registry: RegistryServer,
    token_server: TokenServer,
    busybox_image: TestImage,
    local_images: LocalImages,
    tmp_path: Path,
) -> None:
    host = token_registry.host
    login(host, "bob", "builder")
    busybox_image.store(local_images, f"{host}/public/busybox:1")
    push(local_images, f"{host}/public/busybox:1")
    push(local_images, f"{host}/public/busybox:1", f"{host}/secret/busybox:1")
    logout(host)

    other = LocalImages.open(tmp_path / "other")
    token_server.requests.clear()
    assert pull(other, f"{host}/public/busybox:1").digest == busybox_image.target
    assert token_server.requests[0].user is None
    with pytest.raises(AuthenticationRequired) as e:
        pull(other, f"{host}/secret/busybox:1")
    assert f"lamina login {host}" in str(e.value) and "\n" not in str(e.value)
    other.close()


def test_token_login_with_wrong_password_fails_and_saves_nothing(
    token_registry: RegistryServer,
) -> None:
    with pytest.raises(AuthenticationRequired, match="wrong username or password for alice"):
        login(token_registry.host, "alice", "nope")
    assert not docker_config_path().exists()


def test_token_server_answering_access_token_and_identity_token(
    token_registry: RegistryServer,
    token_server: TokenServer,
    busybox_image: TestImage,
    local_images: LocalImages,
) -> None:
    token_server.token_field = "access_token"
    host = token_registry.host
    _write_docker_config({"auths": {host: {"identitytoken": "refresh-alice-wonderland"}}})
    ref = f"{host}/oauth/app:1"
    busybox_image.store(local_images, ref)
    assert push(local_images, ref) == busybox_image.target
    assert token_server.requests and all(r.user == "alice" for r in token_server.requests)
