"""The daemon's REST API, against a real ``lamina daemon`` process on a temporary root
with real runc containers: the container lifecycle, errors, streams (logs, events,
stats), cp archives, exec, images (pull/push against the test registry), volumes,
security (socket mode, tokens, TLS, refusals), concurrent clients, clients that go away
mid-stream, a graceful stop, and the OpenAPI document."""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_fixtures import Daemon, frames, make_tls, running_daemon, tar_files, tar_of
from leak_check import assert_clean
from registry_server import free_port
from runtime_fixtures import CLI, IMAGE_REF, cli_image_root, until

DOCS = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = cli_image_root(tmp_path_factory, "daemon")
    with running_daemon(root) as d:
        yield d


@pytest.fixture
def api(daemon: Daemon) -> Iterator[httpx.Client]:
    with daemon.client() as client:
        yield client
        for c in client.get("/v1/containers", params={"all": "1"}).json():
            client.delete(f"/v1/containers/{c['id']}", params={"force": "1", "volumes": "1"})


def create(api: httpx.Client, *command: str, **flags: Any) -> str:
    body = {"image": IMAGE_REF, "command": list(command), **flags}
    r = api.post("/v1/containers", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["Id"])


def one_line_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert list(body) == ["message"] and "\n" not in body["message"], body
    return str(body["message"])


# -- the socket and the process ---------------------------------------------------------------


def test_socket_is_0660_root_owned_and_pings(daemon: Daemon) -> None:
    st = os.stat(daemon.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (0, 0)
    with daemon.client() as client:
        assert client.get("/v1/_ping").text == "OK"
        assert client.get("/health").json()["Status"] == "healthy"
        assert client.get("/v1/version").json()["Platform"] == {"Name": "lamina"}
        info = client.get("/v1/info").json()
        assert info["Root"] == str(daemon.root) and info["Images"] == 1


def test_group_option_owns_the_socket(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "root", "--group", "daemon") as d:
        st = os.stat(d.socket)
        assert st.st_gid == 1 and stat.S_IMODE(st.st_mode) == 0o660


def test_second_daemon_on_a_root_is_one_error(daemon: Daemon) -> None:
    r = subprocess.run([*CLI, "--root", str(daemon.root), "daemon", "--host",
                        f"unix://{daemon.root.parent}/other.sock"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        f"lamina: error: another lamina daemon serves {daemon.root} (process "
        f"{daemon.proc.pid}, on unix://{daemon.socket})"
    ]
    assert not (daemon.root.parent / "other.sock").exists()


# -- containers ---------------------------------------------------------------------------


def test_container_lifecycle(api: httpx.Client) -> None:
    cid = create(api, "sh", "-c", "echo out; echo err >&2; exec sleep 60", name="life")
    assert api.get("/v1/containers").json() == []
    listed = api.get("/v1/containers", params={"all": "1"}).json()
    assert [(c["id"], c["name"], c["state"]["status"]) for c in listed] == [
        (cid, "life", "created")
    ]
    assert api.post(f"/v1/containers/{cid}/start").status_code == 204
    inspect = api.get("/v1/containers/life").json()
    assert inspect["Id"] == cid and inspect["State"]["Running"] is True
    until(lambda: b"err" in api.get(f"/v1/containers/{cid}/logs").content, 10)
    logs = frames(api.get(f"/v1/containers/{cid}/logs").content)
    assert (1, b"out\n") in logs and (2, b"err\n") in logs
    top = api.get(f"/v1/containers/{cid}/top").json()
    assert any("sleep 60" in " ".join(p) for p in top["Processes"]), top
    stats = api.get(f"/v1/containers/{cid}/stats", params={"stream": "0"}).json()
    assert stats["pids"] >= 1
    assert api.post(f"/v1/containers/{cid}/pause").status_code == 204
    assert api.get(f"/v1/containers/{cid}").json()["State"]["Paused"] is True
    assert api.post(f"/v1/containers/{cid}/unpause").status_code == 204
    r = api.post(f"/v1/containers/{cid}/rename", params={"name": "life2"})
    assert r.status_code == 204
    assert api.get("/v1/containers/life2").json()["Id"] == cid
    assert api.post(f"/v1/containers/{cid}/update", json={"memory": "64m"}).status_code == 204
    assert api.get(f"/v1/containers/{cid}").json()["HostConfig"]["Memory"] == 64 << 20
    assert api.post(f"/v1/containers/{cid}/kill", params={"signal": "SIGKILL"}).status_code == 204
    waited = api.post(f"/v1/containers/{cid}/wait").json()
    assert (waited["StatusCode"], waited["Signal"]) == (137, "SIGKILL")
    assert api.post(f"/v1/containers/{cid}/restart", params={"t": "1"}).status_code == 204
    assert api.get(f"/v1/containers/{cid}").json()["State"]["Running"] is True
    assert api.post(f"/v1/containers/{cid}/stop", params={"t": "1"}).status_code == 204
    changes = api.get(f"/v1/containers/{cid}/changes").json()
    assert isinstance(changes, list)
    assert api.delete(f"/v1/containers/{cid}").status_code == 204
    one_line_error(api.get(f"/v1/containers/{cid}"), 404)


def test_list_filters_and_prune(api: httpx.Client) -> None:
    a = create(api, "true", labels=["tier=a"])
    b = create(api, "true", labels=["tier=b"])
    label_b = json.dumps({"label": ["tier=b"]})
    only_b = api.get("/v1/containers", params={"all": "1", "filters": label_b})
    assert [c["id"] for c in only_b.json()] == [b]
    one_line_error(api.get("/v1/containers", params={"filters": '{"bogus": ["x"]}'}), 400)
    one_line_error(api.get("/v1/containers", params={"filters": "not json"}), 400)
    pruned = api.post("/v1/containers/prune", params={"filters": json.dumps({"label": ["tier=a"]})})
    assert pruned.status_code == 200 and a in json.dumps(pruned.json())
    assert [c["id"] for c in api.get("/v1/containers", params={"all": "1"}).json()] == [b]


def test_bad_input_is_400_naming_the_field(api: httpx.Client) -> None:
    assert "image" in one_line_error(api.post("/v1/containers", json={"command": ["true"]}), 400)
    msg = one_line_error(api.post("/v1/containers", json={"image": IMAGE_REF, "bogus": 1}), 400)
    assert "bogus" in msg
    msg = one_line_error(api.post("/v1/containers", json={"image": IMAGE_REF, "tty": "yes"}), 400)
    assert "tty" in msg
    r = api.post("/v1/containers", json={"image": IMAGE_REF, "memory": "lots"})
    msg = one_line_error(r, 400)
    assert "--memory" in msg
    one_line_error(api.post("/v1/containers", content=b"{not json"), 400)
    one_line_error(api.post("/v1/containers", json={"image": IMAGE_REF, "pull": "sometimes"}), 400)
    one_line_error(api.get("/v1/containers", params={"all": "maybe"}), 400)
    one_line_error(api.get("/v1/nothing/here"), 404)
    # Nothing was made by any of them.
    assert api.get("/v1/containers", params={"all": "1"}).json() == []


def test_404_and_409(api: httpx.Client) -> None:
    one_line_error(api.post("/v1/containers/nope/start"), 404)
    one_line_error(api.delete("/v1/containers/nope"), 404)
    one_line_error(api.get("/v1/images/nope:latest"), 404)
    one_line_error(api.get("/v1/volumes/nope"), 404)
    cid = create(api, "sleep", "60", name="taken")
    r = api.post("/v1/containers", json={"image": IMAGE_REF, "name": "taken"})
    assert "taken" in one_line_error(r, 409)
    api.post(f"/v1/containers/{cid}/start")
    one_line_error(api.delete(f"/v1/containers/{cid}"), 409)  # running: needs force
    api.post(f"/v1/containers/{cid}/pause")
    exec_id = api.post(f"/v1/containers/{cid}/exec", json={"cmd": ["true"]}).json()["Id"]
    assert "paused" in one_line_error(api.post(f"/v1/exec/{exec_id}/start"), 409)
    assert api.delete(f"/v1/containers/{cid}", params={"force": "1"}).status_code == 204


def test_exec(api: httpx.Client) -> None:
    cid = create(api, "sleep", "60")
    api.post(f"/v1/containers/{cid}/start")
    spec = {"cmd": ["sh", "-c", "echo $X; echo e >&2; exit 3"], "env": ["X=ok"]}
    made = api.post(f"/v1/containers/{cid}/exec", json=spec)
    assert made.status_code == 201
    exec_id = made.json()["Id"]
    out = api.post(f"/v1/exec/{exec_id}/start")
    assert frames(out.content) == [(1, b"ok\n"), (2, b"e\n")]
    assert api.get(f"/v1/exec/{exec_id}/json").json()["ExitCode"] == 3
    one_line_error(api.post(f"/v1/exec/{exec_id}/start"), 409)
    assert "cmd" in one_line_error(api.post(f"/v1/containers/{cid}/exec", json={"cmd": []}), 400)
    missing = api.post(f"/v1/containers/{cid}/exec", json={"cmd": ["/no/such/tool"]}).json()["Id"]
    out = api.post(f"/v1/exec/{missing}/start")
    assert out.status_code == 200 and [k for k, _ in frames(out.content)] == [2]
    assert api.get(f"/v1/exec/{missing}/json").json()["ExitCode"] == 127


def _attach(daemon: Daemon, cid: str, query: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(daemon.socket))
    s.settimeout(30)
    s.sendall(f"POST /v1/containers/{cid}/attach?{query} HTTP/1.1\r\nHost: x\r\n"
              "Connection: Upgrade\r\nUpgrade: tcp\r\n"
              "Content-Length: 0\r\n\r\n".encode())  # fmt: skip
    return s


def _read_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def test_attach_start_with_stdin(api: httpx.Client, daemon: Daemon) -> None:
    cid = create(api, "sh", "-c", "cat; echo done >&2", interactive=True)
    with _attach(daemon, cid, "stdin=1&start=1") as s:
        s.sendall(b"hello\n")  # sent early, with the request: kept for the container
        s.shutdown(socket.SHUT_WR)  # the container's stdin ends
        data = _read_all(s)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert frames(body) == [(1, b"hello\n"), (2, b"done\n")]
    assert api.post(f"/v1/containers/{cid}/wait").json()["StatusCode"] == 0


def test_attach_with_a_terminal_is_raw(api: httpx.Client, daemon: Daemon) -> None:
    cid = create(api, "sh", "-c", "echo on-a-tty; [ -t 1 ] && echo yes", tty=True)
    with _attach(daemon, cid, "start=1") as s:
        _, _, body = _read_all(s).partition(b"\r\n\r\n")
    assert body == b"on-a-tty\r\nyes\r\n"  # no frames: one stream, the terminal's
    size = {"h": "30", "w": "100"}
    assert "not running" in one_line_error(api.post(f"/v1/containers/{cid}/resize", params=size),
                                           409)  # fmt: skip
    running = create(api, "sleep", "60", tty=True)
    api.post(f"/v1/containers/{running}/start")
    assert api.post(f"/v1/containers/{running}/resize", params=size).status_code == 204


def test_attach_refusals(api: httpx.Client, daemon: Daemon) -> None:
    one_line_error(api.post("/v1/containers/nope/attach",
                            headers={"Connection": "Upgrade", "Upgrade": "tcp"}), 404)  # fmt: skip
    cid = create(api, "true")
    assert "upgrade" in one_line_error(api.post(f"/v1/containers/{cid}/attach"), 400)
    with _attach(daemon, cid, "") as s:  # not running, not started: the reason, then the end
        _, _, body = _read_all(s).partition(b"\r\n\r\n")
    assert frames(body)[0][0] == 2 and b"start it first" in frames(body)[0][1]
    one_line_error(api.post(f"/v1/containers/{cid}/resize", params={"h": "0", "w": "80"}), 400)


# -- streams ---------------------------------------------------------------------------------


def test_logs_follow_tail_timestamps(api: httpx.Client) -> None:
    cid = create(api, "sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.3; done")
    api.post(f"/v1/containers/{cid}/start")
    with api.stream("GET", f"/v1/containers/{cid}/logs", params={"follow": "1"}) as r:
        body = r.read()  # ends when the container does
    assert [p for _, p in frames(body)] == [b"line1\n", b"line2\n", b"line3\n"]
    last = api.get(f"/v1/containers/{cid}/logs", params={"tail": "1", "timestamps": "1"})
    tail = frames(last.content)
    assert len(tail) == 1 and tail[0][1].endswith(b"Z line3\n")
    one_line_error(api.get(f"/v1/containers/{cid}/logs", params={"tail": "x"}), 400)


def test_events_stream_and_die_event(api: httpx.Client, daemon: Daemon) -> None:
    cid = create(api, "sh", "-c", "sleep 0.5; exit 7")
    seen: list[dict[str, Any]] = []

    def read() -> None:
        with daemon.client() as c, c.stream(
            "GET", "/v1/events", params={"filters": json.dumps({"container": [cid]})}
        ) as r:
            for line in r.iter_lines():
                seen.append(json.loads(line))
                if seen[-1]["Action"] == "die":
                    return

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)  # the follower starts at the journal's end: let it be there
    api.post(f"/v1/containers/{cid}/start")
    reader.join(30)
    assert not reader.is_alive()
    assert [e["Action"] for e in seen] == ["start", "die"]
    assert seen[-1]["Actor"]["Attributes"]["exitCode"] == "7"
    since = api.get("/v1/events", params={"since": "0", "until": str(time.time()),
                                          "filters": json.dumps({"container": [cid]})})  # fmt: skip
    assert [json.loads(x)["Action"] for x in since.text.splitlines()] == ["create", "start", "die"]


def test_stats_stream(api: httpx.Client) -> None:
    cid = create(api, "sleep", "60")
    api.post(f"/v1/containers/{cid}/start")
    with api.stream("GET", f"/v1/containers/{cid}/stats") as r:
        lines = []
        for line in r.iter_lines():
            lines.append(json.loads(line))
            if len(lines) == 2:
                break
    assert all(s["pids"] >= 1 for s in lines)


def test_client_gone_mid_stream_leaves_nothing(api: httpx.Client, daemon: Daemon) -> None:
    cid = create(api, "sleep", "60")
    api.post(f"/v1/containers/{cid}/start")
    streams = [f"/v1/containers/{cid}/logs?follow=1", "/v1/events", f"/v1/containers/{cid}/stats",
               f"/v1/containers/{cid}/wait", f"/v1/containers/{cid}/archive?path=/bin",
               f"/v1/images/save?names={IMAGE_REF}"]  # fmt: skip

    def go_away(path: str, *, at_once: bool = False) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(daemon.socket))
        method = "POST" if path.endswith("/wait") else "GET"
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        if at_once:  # before the status line: the response never starts
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif method == "GET":
            assert s.recv(12).startswith(b"HTTP/1.1 200")
        else:
            time.sleep(0.2)
        s.close()

    idle = daemon.threads()  # the accept loop and the api client's connection

    def settled() -> tuple[int, list[str]]:
        until(lambda: daemon.threads() == idle, 10)
        return daemon.threads(), daemon.open_files()

    for path in streams:  # once: the engine pool grows to what the streams use
        go_away(path)
    before = settled()
    for _ in range(3):
        for path in streams:
            go_away(path)
            go_away(path, at_once=True)
    assert settled() == before
    # The wait really ended: the container's waiter file is gone.
    assert not list(daemon.root.glob(f"containers/{cid}/waiter"))


# -- cp -------------------------------------------------------------------------------------------


def test_archive_in_and_out_stays_inside(api: httpx.Client) -> None:
    cid = create(api, "sleep", "60")
    api.post(f"/v1/containers/{cid}/start")
    r = api.put(f"/v1/containers/{cid}/archive", params={"path": "/tmp"},
                content=tar_of({"hello.txt": b"hi there"}))  # fmt: skip
    assert r.status_code == 204, r.text
    out = api.get(f"/v1/containers/{cid}/archive", params={"path": "/tmp/hello.txt"})
    assert out.status_code == 200 and "X-Lamina-Path-Stat" in out.headers
    assert tar_files(out.content) == {"hello.txt": b"hi there"}
    # A path that climbs out is the container's root all the same.
    host_marker = Path("/etc/lamina-daemon-test-marker")
    assert not host_marker.exists()
    r = api.put(f"/v1/containers/{cid}/archive", params={"path": "/../../../etc"},
                content=tar_of({"lamina-daemon-test-marker": b"x"}))  # fmt: skip
    assert r.status_code == 204 and not host_marker.exists()
    climbed = api.get(f"/v1/containers/{cid}/archive", params={"path": "/../../etc/passwd"})
    assert b"app:x:1000" in tar_files(climbed.content)["passwd"]
    one_line_error(api.get(f"/v1/containers/{cid}/archive", params={"path": "/no/such"}), 404)
    one_line_error(api.get(f"/v1/containers/{cid}/archive"), 400)


# -- images and volumes ----------------------------------------------------------------------------


def test_images_push_pull_tag_rm(api: httpx.Client, registry: Any) -> None:
    images = api.get("/v1/images").json()
    assert [i["tags"] for i in images] == [[IMAGE_REF]]
    target = f"{registry.host}/daemon/busybox:v1"
    assert api.post(f"/v1/images/{IMAGE_REF.replace('/', '%2F')}/tag",
                    json={"target": target}).status_code == 201  # fmt: skip
    pushed = [json.loads(x) for x in api.post(f"/v1/images/{target.replace('/', '%2F')}/push")
              .text.splitlines()]  # fmt: skip
    assert pushed[-1]["status"] == "complete", pushed
    assert any(e.get("status") == "done" for e in pushed)
    assert api.delete(f"/v1/images/{target.replace('/', '%2F')}").status_code == 200
    pulled = [json.loads(x) for x in api.post("/v1/images/pull", params={"reference": target})
              .text.splitlines()]  # fmt: skip
    assert pulled[-1]["status"] == "complete", pulled
    inspect = api.get(f"/v1/images/{target.replace('/', '%2F')}").json()
    assert inspect["Id"] == pulled[-1]["result"]["id"]
    failed = api.post("/v1/images/pull", params={"reference": f"{registry.host}/no/such:x"})
    assert "error" in json.loads(failed.text.splitlines()[-1])
    one_line_error(api.post("/v1/images/pull", params={"reference": "UPPER/case"}), 400)
    api.delete(f"/v1/images/{target.replace('/', '%2F')}")


def test_images_save_load_import_df(api: httpx.Client) -> None:
    saved = api.get("/v1/images/save", params={"names": IMAGE_REF})
    assert saved.status_code == 200
    names = set(tar_files(saved.content))
    assert "index.json" in names and "oci-layout" in names
    imported = api.post("/v1/images/import", params={"reference": "daemon/imported:1"},
                        content=tar_of({"hello": b"from a tarball"}))  # fmt: skip
    assert imported.status_code == 201, imported.text
    image_id = imported.json()["id"]
    cid = create(api, "true", image="daemon/imported:1")
    assert api.post(f"/v1/containers/{cid}/start").status_code == 409  # no /bin/true in it
    api.delete(f"/v1/containers/{cid}", params={"force": "1"})
    moved = api.get("/v1/images/save", params={"names": "daemon/imported:1"}).content
    assert api.delete("/v1/images/daemon%2Fimported:1").status_code == 200
    loaded = api.post("/v1/images/load", content=moved)
    assert [i["id"] for i in loaded.json()] == [image_id]
    df = api.get("/v1/system/df").json()
    assert isinstance(df, dict) and df
    api.delete("/v1/images/daemon%2Fimported:1")
    one_line_error(api.get("/v1/images/save", params={"names": "no/such:image"}), 404)
    one_line_error(api.post("/v1/images/load", content=b"not a tar at all"), 400)


def test_volumes(api: httpx.Client) -> None:
    made = api.post("/v1/volumes", json={"name": "data1", "labels": {"k": "v"}})
    assert made.status_code == 201 and made.json()["name"] == "data1"
    assert api.get("/v1/volumes/data1").json()["labels"] == {"k": "v"}
    cid = create(api, "true", volumes=["data1:/data"])
    one_line_error(api.delete("/v1/volumes/data1"), 409)
    api.delete(f"/v1/containers/{cid}")
    assert [v["name"] for v in api.get("/v1/volumes").json()] == ["data1"]
    assert api.delete("/v1/volumes/data1").status_code == 204
    assert "labels" in one_line_error(api.post("/v1/volumes", json={"labels": ["x"]}), 400)


# -- security ------------------------------------------------------------------------------


def test_tcp_without_authentication_is_refused_at_start(tmp_path: Path) -> None:
    port = free_port()
    argv = [*CLI, "--root", str(tmp_path / "root"), "daemon", "--host", f"tcp://127.0.0.1:{port}"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert r.stderr.startswith("lamina: error: refusing to listen on TCP without authentication")
    assert len(r.stderr.strip().splitlines()) == 1
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--host", "ftp://x"], "--host ftp://x: expected unix:///PATH or tcp://ADDRESS:PORT"),
        (["--host", "unix://relative.sock"], "the socket path must be absolute"),
        (["--host", "tcp://127.0.0.1:0", "--token-file", "/nonexistent"],
         "cannot read --token-file /nonexistent"),
        (["--group", "no-such-group-here"], "--group no-such-group-here: no such group"),
    ],
)  # fmt: skip
def test_bad_daemon_flags_are_one_line(tmp_path: Path, args: list[str], error: str) -> None:
    r = subprocess.run([*CLI, "--root", str(tmp_path / "root"), "daemon", *args],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lamina: error: ") and error in lines[0], lines
    assert not (tmp_path / "root" / "lamina.sock").exists()
    assert not (tmp_path / "root" / "daemon.json").exists()


def test_tcp_token_401_then_ok(tmp_path: Path) -> None:
    token = "s3cret-token-" + os.urandom(8).hex()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    port = free_port()
    with running_daemon(tmp_path / "root", "--host", f"tcp://127.0.0.1:{port}",
                        "--token-file", str(token_file)):  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token},
                        {"Authorization": f"Basic {token}"}):  # fmt: skip
            r = httpx.get(f"{base}/v1/containers", headers=headers)
            assert r.status_code == 401 and r.json() == {
                "message": "unauthorized: credentials missing or wrong"}
            assert httpx.get(f"{base}/openapi.json", headers=headers).status_code == 401
        ok = httpx.get(f"{base}/v1/containers", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json() == []


def test_tls_needs_a_client_certificate(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    port = free_port()
    server = ["--tlscert", str(tls["server.crt"]), "--tlskey", str(tls["server.key"])]
    r = subprocess.run([*CLI, "--root", str(tmp_path / "r0"), "daemon", "--host",
                        f"tcp://127.0.0.1:{port}", *server], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert "refusing to listen on TCP without authentication" in r.stderr  # no --tlscacert
    with running_daemon(tmp_path / "root", "--host", f"tcp://127.0.0.1:{port}", *server,
                        "--tlscacert", str(tls["ca.crt"])) as daemon:  # fmt: skip
        idle = daemon.threads()
        url = f"https://127.0.0.1:{port}/v1/_ping"
        anonymous = ssl.create_default_context(cafile=str(tls["ca.crt"]))
        with pytest.raises(httpx.HTTPError):  # no client certificate: the handshake fails
            httpx.get(url, verify=anonymous)
        known = ssl.create_default_context(cafile=str(tls["ca.crt"]))
        known.load_cert_chain(str(tls["client.crt"]), str(tls["client.key"]))
        with httpx.Client(verify=known) as client:
            assert client.get(url).text == "OK"
            with client.stream("GET", f"https://127.0.0.1:{port}/v1/events") as events:
                assert events.status_code == 200 and daemon.threads() > idle
        until(lambda: daemon.threads() == idle, 10)  # the stream ended with its client


# -- load, shutdown, the document -----------------------------------------------------------------


def test_100_concurrent_clients(api: httpx.Client, daemon: Daemon) -> None:
    cid = create(api, "true", name="concurrent")
    failures: list[str] = []
    barrier = threading.Barrier(100)

    def client() -> None:
        with daemon.client() as c:
            barrier.wait(30)
            for _ in range(3):
                r = c.get("/v1/containers", params={"all": "1"})
                if r.status_code != 200 or [x["id"] for x in r.json()] != [cid]:
                    failures.append(f"{r.status_code} {r.text[:100]}")
                if c.get("/v1/containers/concurrent").status_code != 200:
                    failures.append("inspect")

    threads = [threading.Thread(target=client) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []


def test_sigterm_ends_streams_keeps_containers(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = cli_image_root(tmp_path_factory, "daemon-term")
    d = Daemon(root)
    with d.client() as api:
        cid = create(api, "sleep", "60")
        api.post(f"/v1/containers/{cid}/start")
        pid = api.get(f"/v1/containers/{cid}").json()["State"]["Pid"]
        ended = threading.Event()

        def follow() -> None:
            with contextlib_suppress(), d.client() as c, c.stream("GET", "/v1/events") as r:
                for _ in r.iter_lines():
                    pass
            ended.set()

        t = threading.Thread(target=follow)
        t.start()
        time.sleep(0.3)
        assert d.stop() == 0
        assert ended.wait(10)
    assert not d.socket.exists() and not (root / "daemon.json").exists()
    os.kill(pid, 0)  # the container still runs
    with running_daemon(root) as again, again.client() as api:
        c = api.get(f"/v1/containers/{cid}").json()
        assert c["State"]["Running"] and c["State"]["Pid"] == pid
        api.delete(f"/v1/containers/{cid}", params={"force": "1"})
    assert_clean(root, {cid})


def contextlib_suppress() -> Any:
    import contextlib

    return contextlib.suppress(httpx.HTTPError)


def test_openapi_served_equals_docs_and_is_valid(daemon: Daemon) -> None:
    from openapi_spec_validator import validate

    with daemon.client() as client:
        served = client.get("/openapi.json").json()
    validate(served)
    assert served == json.loads(DOCS.read_text()), "scripts/openapi refreshes docs/openapi.json"
    paths = served["paths"]
    assert "post" in paths["/v1/containers"] and "get" in paths["/v1/events"]
    create_schema = served["components"]["schemas"]["ContainerCreate"]
    assert {"image", "name", "env", "memory", "publish"} <= set(create_schema["properties"])


def test_a_handler_takes_the_connection_over(tmp_path: Path) -> None:
    """The seam the Docker API's attach and exec need: after a 101 the handler owns the
    socket, raw bytes both ways, the bytes the client sent early included."""
    from lamina.daemon._http import Listener, Request, Response, Server

    def echo(sock: socket.socket, early: bytes) -> None:
        data = early
        while b"\n" not in data:
            data += sock.recv(100)
        sock.sendall(data.upper())

    def dispatch(_request: Request) -> Response:
        return Response(status=101, headers=[("Upgrade", "tcp"), ("Connection", "Upgrade")],
                        takeover=echo)  # fmt: skip

    path = tmp_path / "s.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()
    server = Server([Listener(listener, f"unix://{path}")], dispatch, lambda _r, _l: True)
    thread = threading.Thread(target=server.serve)
    thread.start()
    try:
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(path))
            c.sendall(b"POST /attach HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                      b"Upgrade: tcp\r\nContent-Length: 0\r\n\r\nearly ")  # fmt: skip
            head = b""
            while b"\r\n\r\n" not in head:
                head += c.recv(100)
            assert head.startswith(b"HTTP/1.1 101")
            rest = head.split(b"\r\n\r\n", 1)[1]
            c.sendall(b"raw\x00bytes\n")
            while not rest.endswith(b"\n"):
                rest += c.recv(100)
            assert rest == b"EARLY RAW\x00BYTES\n"
    finally:
        server.stop()
        thread.join(10)
