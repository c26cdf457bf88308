"""Docker's Engine API, system and container endpoints, driven by real clients: the
installed docker CLI and docker-py, against a real lamina daemon running runc
containers of the test busybox image."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dockerapi_fixtures import DockerEndpoint, docker_endpoint
from runtime_fixtures import IMAGE_REF, cli_image_root, overlay_mounts, until

IMAGE = IMAGE_REF.removesuffix(":latest")


@pytest.fixture(scope="module")
def ep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerEndpoint]:
    root = cli_image_root(tmp_path_factory, "dockerapi-containers")
    with docker_endpoint(root) as endpoint:
        yield endpoint
        left = endpoint.docker_ok("ps", "-a", "-q", "--no-trunc").split()
        if left:
            endpoint.docker_ok("rm", "-f", "-v", *left)
    assert overlay_mounts(root) == []  # nothing the containers mounted is left


def docker_py(ep: DockerEndpoint) -> Any:
    docker = pytest.importorskip("docker")
    return docker.DockerClient(base_url=ep.host, version="1.44", timeout=60)


def run_d(ep: DockerEndpoint, *args: str) -> str:
    """``docker run -d ARGS``: the new container's ID."""
    return ep.docker_ok("run", "-d", *args).strip()


def status(ep: DockerEndpoint, ref: str) -> str:
    return ep.docker_ok("inspect", "-f", "{{.State.Status}}", ref).strip()


# -- system ------------------------------------------------------------------------------


def test_version_and_info(ep: DockerEndpoint) -> None:
    out = ep.docker_ok("version", "--format", "{{.Server.APIVersion}} {{.Server.MinAPIVersion}} "
                       "{{.Server.Os}} {{.Client.APIVersion}}")  # fmt: skip
    assert out.split() == ["1.44", "1.24", "linux", "1.44"]
    info = json.loads(ep.docker_ok("info", "--format", "{{json .}}"))
    assert info["DefaultRuntime"] == "runc" and "runc" in info["Runtimes"]
    assert info["Images"] >= 1 and info["NCPU"] >= 1 and info["MemTotal"] > 0
    assert info["Driver"] == "overlay" and info["OSType"] == "linux"
    assert info["DockerRootDir"] == str(ep.daemon.root)
    assert info["Swarm"]["LocalNodeState"] == "inactive"
    cid = run_d(ep, IMAGE, "sleep", "60")
    info = json.loads(ep.docker_ok("info", "--format", "{{json .}}"))
    assert info["ContainersRunning"] >= 1 and info["Containers"] >= info["ContainersRunning"]
    ep.docker_ok("rm", "-f", cid)


def test_refusals_are_clear_and_quick(ep: DockerEndpoint) -> None:
    for args in (("node", "ls"), ("service", "ls"), ("secret", "ls"), ("config", "ls")):
        r = ep.docker(*args, timeout=20)
        assert r.returncode != 0
        assert "This node is not a swarm manager" in r.stderr, (args, r.stderr)
    assert ep.docker_ok("plugin", "ls", "--format", "{{.Name}}").strip() == ""


def test_system_df(ep: DockerEndpoint) -> None:
    cid = run_d(ep, IMAGE, "sleep", "60")
    out = ep.docker_ok("system", "df", "--format", "{{.Type}} {{.TotalCount}} {{.Active}}")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert int(rows["Images"][0]) >= 1
    assert int(rows["Containers"][0]) >= 1 and int(rows["Containers"][1]) >= 1
    ep.docker_ok("rm", "-f", cid)


def test_events_since_until(ep: DockerEndpoint) -> None:
    start = time.time()
    cid = run_d(ep, "--label", "evt=1", IMAGE, "true")
    ep.docker_ok("wait", cid)
    end = time.time() + 1
    out = ep.docker_ok("events", "--since", f"{start:.3f}", "--until", f"{end:.3f}",
                       "--filter", f"container={cid}", "--format", "{{.Action}}",
                       timeout=30)  # fmt: skip
    actions = out.split()
    assert actions[:2] == ["create", "start"] and "die" in actions, actions
    labelled = ep.docker_ok("events", "--since", f"{start:.3f}", "--until", f"{end:.3f}",
                            "--filter", "label=evt=1", "--filter", "event=die",
                            "--format", "{{.Actor.ID}}")  # fmt: skip
    assert labelled.split() == [cid]
    ep.docker_ok("rm", cid)


def test_auth_checks_credentials(ep: DockerEndpoint, auth_registry: Any) -> None:
    from conftest import USERS

    host = auth_registry.host
    user, password = next(iter(USERS.items()))
    out = ep.docker_ok("login", host, "-u", user, "--password-stdin", input=password)
    assert "Login Succeeded" in out
    r = ep.docker("login", host, "-u", user, "--password-stdin", input="wrong")
    assert r.returncode != 0 and "wrong username or password" in r.stderr


# -- containers with the docker CLI ------------------------------------------------------------


def test_run_detached_logs_wait_inspect(ep: DockerEndpoint) -> None:
    cid = run_d(ep, "--name", "runner", "-e", "WHO=lamina", "-l", "team=a", "-w", "/tmp",
                IMAGE, "sh", "-c", 'echo "out $WHO $(pwd)"; echo err >&2; exit 3')  # fmt: skip
    assert ep.docker_ok("wait", "runner").strip() == "3"
    r = ep.docker("logs", "runner")
    assert r.stdout == "out lamina /tmp\n" and r.stderr == "err\n"  # the frames' streams kept
    fmt = "{{.State.Status}} {{.State.ExitCode}} {{.Name}} {{.Config.WorkingDir}} {{.Id}}"
    assert ep.docker_ok("inspect", "-f", fmt, "runner").split() == [
        "exited",
        "3",
        "/runner",
        "/tmp",
        cid,
    ]
    labels = json.loads(ep.docker_ok("inspect", "-f", "{{json .Config.Labels}}", cid))
    assert labels == {"team": "a"}
    r = ep.docker("logs", "-t", "--tail", "1", "runner")  # the last line: stderr's
    assert r.stdout == "" and r.stderr.endswith("Z err\n") and r.stderr[:4].isdigit()
    ep.docker_ok("rm", "runner")
    r = ep.docker("inspect", "runner")
    assert r.returncode != 0 and "no such" in r.stderr.lower()


def test_run_attached(ep: DockerEndpoint) -> None:
    r = ep.docker("run", "--name", "attached", IMAGE, "sh", "-c", "echo out; echo err >&2; exit 4")
    assert (r.returncode, r.stdout, r.stderr) == (4, "out\n", "err\n")
    assert status(ep, "attached") == "exited"
    r = ep.docker("run", "--rm", "-i", IMAGE, "sh", "-c", "cat; exit 2", input="piped\n")
    assert (r.returncode, r.stdout) == (2, "piped\n")
    assert ep.docker_ok("ps", "-a", "-q", "--filter", "ancestor=" + IMAGE, "--filter",
                        "exited=2").strip() == ""  # --rm: gone when run returns  # fmt: skip
    ep.docker_ok("rm", "attached")


def test_run_with_tty_logs_raw(ep: DockerEndpoint) -> None:
    cid = run_d(ep, "-t", IMAGE, "sh", "-c", "echo tty-out; echo tty-err >&2")
    ep.docker_ok("wait", cid)
    r = ep.docker("logs", cid)
    assert "tty-out" in r.stdout and "tty-err" in r.stdout  # one raw stream
    ep.docker_ok("rm", cid)


def test_run_rm_removes(ep: DockerEndpoint) -> None:
    cid = run_d(ep, "--rm", IMAGE, "true")
    r = ep.docker("wait", cid)  # it may already be gone: then wait says so
    assert r.returncode == 0 or "No such container" in r.stderr or "no such" in r.stderr.lower()
    until(lambda: cid not in ep.docker_ok("ps", "-a", "-q", "--no-trunc"), timeout=30)


def test_ps_filters_and_format(ep: DockerEndpoint) -> None:
    a = run_d(ep, "--name", "ps-a", "-l", "app=ps", "-l", "tier=web", IMAGE, "sleep", "60")
    b = run_d(ep, "--name", "ps-b", "-l", "app=ps", "--network", "none", IMAGE, "true")
    ep.docker_ok("wait", b)

    def ps(*args: str) -> list[str]:
        return ep.docker_ok("ps", "--no-trunc", "--format", "{{.Names}}", *args).split()

    assert ps() == ["ps-a"] or "ps-b" not in ps()
    assert sorted(ps("-a", "--filter", "label=app=ps")) == ["ps-a", "ps-b"]
    assert ps("-a", "--filter", "label=tier=web") == ["ps-a"]
    assert ps("-a", "--filter", "status=exited", "--filter", "label=app=ps") == ["ps-b"]
    assert ps("-a", "--filter", "name=ps-b") == ["ps-b"]
    assert ps("-a", "--filter", f"id={a[:12]}") == ["ps-a"]
    assert "ps-a" in ps("-a", "--filter", f"ancestor={IMAGE}")
    assert ps("-a", "--filter", "network=none", "--filter", "label=app=ps") == ["ps-b"]
    assert ps("-a", "--filter", "exited=0", "--filter", "label=app=ps") == ["ps-b"]
    assert len(ps("-a", "-n", "1")) == 1
    line = ep.docker_ok("ps", "--filter", "name=ps-a", "--format",
                        "{{.ID}}|{{.Image}}|{{.Command}}|{{.Status}}|{{.Labels}}")  # fmt: skip
    short, image, command, up, labels = line.strip().split("|")
    assert short == a[:12] and image == IMAGE and command == '"sleep 60"'
    assert up.startswith("Up ") and "app=ps" in labels and "tier=web" in labels
    assert ep.docker_ok("ps", "-a", "-q", "--filter", "status=exited", "--filter",
                        "label=app=ps").split() == [b[:12]]  # fmt: skip
    r = ep.docker("ps", "--filter", "colour=blue")
    assert r.returncode != 0 and "invalid filter" in r.stderr
    ep.docker_ok("rm", "-f", a, b)


def test_lifecycle(ep: DockerEndpoint) -> None:
    cid = run_d(ep, "--name", "life", IMAGE, "sleep", "300")
    ep.docker_ok("pause", "life")
    assert status(ep, "life") == "paused"
    ep.docker_ok("unpause", "life")
    assert status(ep, "life") == "running"
    pid = ep.docker_ok("inspect", "-f", "{{.State.Pid}}", "life").strip()
    ep.docker_ok("restart", "-t", "0", "life")
    assert status(ep, "life") == "running"
    assert ep.docker_ok("inspect", "-f", "{{.State.Pid}}", "life").strip() != pid
    ep.docker_ok("kill", "-s", "SIGKILL", "life")
    assert ep.docker_ok("wait", "life").strip() == "137"
    r = ep.docker("kill", "life")
    assert r.returncode != 0 and "is not running" in r.stderr
    ep.docker_ok("start", "life")
    assert status(ep, "life") == "running"
    ep.docker_ok("stop", "-t", "0", "life")
    assert status(ep, "life") == "exited"
    ep.docker_ok("stop", "life")  # already stopped: Docker's 304, no error
    ep.docker_ok("rename", "life", "life2")
    assert ep.docker_ok("inspect", "-f", "{{.Name}}", cid).strip() == "/life2"
    ep.docker_ok("start", "life2")
    ep.docker_ok("rm", "-f", "life2")
    assert cid not in ep.docker_ok("ps", "-a", "-q", "--no-trunc")


def test_logs_follow(ep: DockerEndpoint) -> None:
    cid = run_d(ep, IMAGE, "sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.3; done")
    r = ep.docker("logs", "-f", cid, timeout=30)  # ends when the container does
    assert r.stdout.split() == ["line1", "line2", "line3"]
    assert ep.docker_ok("logs", "--tail", "1", cid).split() == ["line3"]
    ep.docker_ok("rm", cid)


def test_stats_top_diff_update(ep: DockerEndpoint) -> None:
    cid = run_d(ep, "--name", "obs", "--memory", "64m", IMAGE, "sh", "-c",
                "echo x > /new-file; sleep 300")  # fmt: skip
    until(lambda: "/new-file" in ep.docker_ok("diff", "obs"))
    assert "A /new-file" in ep.docker_ok("diff", "obs").splitlines()
    out = ep.docker_ok("stats", "--no-stream", "--format",
                       "{{.Name}} {{.MemUsage}} {{.PIDs}}", "obs")  # fmt: skip
    name, _used, _slash, limit, pids = out.split()
    assert name == "obs" and limit == "64MiB" and int(pids) >= 1, out
    top = ep.docker_ok("top", "obs")
    assert "PID" in top.splitlines()[0] and "sleep 300" in top
    ep.docker_ok("update", "--memory", "96m", "--memory-swap", "192m", "obs")
    assert ep.docker_ok("inspect", "-f", "{{.HostConfig.Memory}}", "obs").strip() == str(
        96 * 1024 * 1024
    )
    assert "96MiB" in ep.docker_ok("stats", "--no-stream", "--format", "{{.MemUsage}}", "obs")
    ep.docker_ok("rm", "-f", cid)


def test_create_host_config(ep: DockerEndpoint, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("from-host\n")
    cid = run_d(ep, "--name", "hc", "--restart", "on-failure:2", "--cap-drop", "CHOWN",
                "--read-only", "--tmpfs", "/scratch", "-v", f"{data}:/data:ro",
                "--mount", "type=volume,target=/vol", "--pids-limit", "50",
                "--cpus", "0.5", "--add-host", "db:10.1.2.3", "--hostname", "box",
                "--stop-signal", "SIGUSR1", "--init", "-p", "127.0.0.1::8080",
                "--health-cmd", "true", "--health-interval", "1s",
                IMAGE, "sleep", "300")  # fmt: skip
    inspected = json.loads(ep.docker_ok("inspect", cid))[0]
    host = inspected["HostConfig"]
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    assert host["CapDrop"] == ["CAP_CHOWN"] and host["ReadonlyRootfs"] is True
    assert host["PidsLimit"] == 50 and host["NanoCpus"] == 500_000_000
    assert host["Init"] is True and "/scratch" in host["Tmpfs"]
    assert host["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    assert inspected["Config"]["Hostname"] == "box"
    assert inspected["Config"]["StopSignal"] == "SIGUSR1"
    assert inspected["Config"]["Healthcheck"]["Test"] == ["CMD-SHELL", "true"]
    mounts = {m["Destination"]: m for m in inspected["Mounts"]}
    assert mounts["/data"]["RW"] is False and mounts["/vol"]["Type"] == "volume"
    r = ep.docker("exec", cid, "cat", "/data/f")  # engineer B's exec, when it is there
    if r.returncode == 0:
        assert r.stdout == "from-host\n"
    until(lambda: "healthy" in ep.docker_ok("ps", "--filter", "name=hc", "--format",
                                             "{{.Status}}"), timeout=30)  # fmt: skip
    assert ep.docker_ok("ps", "-q", "--filter", "health=healthy",
                        "--filter", "name=hc").strip() == cid[:12]  # fmt: skip
    port = ep.docker_ok("port", cid, "8080/tcp").strip()
    assert port.startswith("127.0.0.1:") and int(port.rsplit(":", 1)[1]) > 0
    ep.docker_ok("rm", "-f", "-v", cid)


def test_container_prune(ep: DockerEndpoint) -> None:
    keep = run_d(ep, "-l", "prune=keep", IMAGE, "true")
    drop = run_d(ep, "-l", "prune=drop", IMAGE, "true")
    running = run_d(ep, "-l", "prune=drop", IMAGE, "sleep", "60")
    ep.docker_ok("wait", keep, drop)
    out = ep.docker_ok("container", "prune", "-f", "--filter", "label=prune=drop")
    assert drop in out and keep not in out and running not in out
    left = ep.docker_ok("ps", "-a", "-q", "--no-trunc").split()
    assert keep in left and running in left and drop not in left
    ep.docker_ok("rm", "-f", keep, running)


def test_errors(ep: DockerEndpoint) -> None:
    r = ep.docker("create", "--oom-score-adj", "100", IMAGE)
    assert r.returncode != 0 and "HostConfig.OomScoreAdj" in r.stderr, r.stderr
    r = ep.docker("create", "--device", "/dev/null:/dev/x", IMAGE)
    assert r.returncode != 0 and "HostConfig.Devices" in r.stderr, r.stderr
    run_d(ep, "--name", "twice", IMAGE, "true")
    r = ep.docker("create", "--name", "twice", IMAGE)
    assert r.returncode != 0 and "twice" in r.stderr and "already" in r.stderr, r.stderr
    ep.docker_ok("rm", "-f", "twice")
    r = ep.docker("stop", "no-such-container")
    assert r.returncode != 0 and "no-such-container" in r.stderr
    assert ep.docker_ok("ps", "-a", "-q", "--filter", "name=twice").strip() == ""


# -- docker-py -----------------------------------------------------------------------------


def test_docker_py_high_level(ep: DockerEndpoint) -> None:
    client = docker_py(ep)
    ctr = client.containers.run(IMAGE, ["sh", "-c", "echo hello-py; sleep 300"], detach=True,
                                name="py-hl", labels={"via": "py"})  # fmt: skip
    until(lambda: b"hello-py" in ctr.logs())
    assert ctr.logs() == b"hello-py\n"
    ctr.reload()
    assert ctr.status == "running" and ctr.name == "py-hl" and ctr.labels == {"via": "py"}
    assert [c.id for c in client.containers.list(filters={"label": "via=py"})] == [ctr.id]
    assert client.containers.get("py-hl").id == ctr.id
    ctr.stop(timeout=0)
    ctr.reload()
    assert ctr.status == "exited"
    assert ctr.wait()["StatusCode"] == 137
    ctr.remove()
    assert client.containers.list(all=True, filters={"label": "via=py"}) == []
    assert client.version()["ApiVersion"] == "1.44" and client.ping() is True
    assert client.info()["DefaultRuntime"] == "runc"
    client.close()


def test_docker_py_low_level_and_errors(ep: DockerEndpoint) -> None:
    docker = pytest.importorskip("docker")
    api = docker.APIClient(base_url=ep.host, version="1.44", timeout=60)
    host_config = api.create_host_config(mem_limit="32m", auto_remove=False,
                                         binds={"/tmp": {"bind": "/hosttmp", "mode": "ro"}},
                                         restart_policy={"Name": "unless-stopped"})  # fmt: skip
    made = api.create_container(IMAGE, ["sh", "-c", "echo $A; exit 5"], environment={"A": "b"},
                                host_config=host_config, name="py-ll",
                                entrypoint=["/bin/busybox"], working_dir="/")  # fmt: skip
    info = api.inspect_container(made["Id"])
    assert info["HostConfig"]["Memory"] == 32 * 1024 * 1024
    assert info["Config"]["Entrypoint"] == ["/bin/busybox"]
    assert info["State"]["Status"] == "created"
    api.update_container(made["Id"], restart_policy={"Name": "no"})
    api.start(made["Id"])
    assert api.wait(made["Id"])["StatusCode"] == 5
    assert api.logs(made["Id"], stdout=True, stderr=False) == b"b\n"
    api.remove_container(made["Id"], v=True)
    # As Compose sends a named volume: its path in Config.Volumes and in Binds.
    named = api.create_host_config(binds=["pyvol:/data:rw"])
    both = api.create_container(IMAGE, ["true"], volumes=["/data"], host_config=named)
    mounts = api.inspect_container(both["Id"])["Mounts"]
    assert [(m["Type"], m["Name"], m["Destination"]) for m in mounts] == [
        ("volume", "pyvol", "/data")]  # fmt: skip
    api.remove_container(both["Id"], v=True)
    with pytest.raises(docker.errors.ImageNotFound):
        api.create_container("example.com/no/such:image", ["true"])
    api.create_container(IMAGE, ["true"], name="py-dup")
    with pytest.raises(docker.errors.APIError) as conflict:
        api.create_container(IMAGE, ["true"], name="py-dup")
    assert conflict.value.status_code == 409
    with pytest.raises(docker.errors.APIError) as unsupported:
        api.create_container(IMAGE, ["true"],
                             host_config=api.create_host_config(oom_score_adj=5))  # fmt: skip
    assert unsupported.value.status_code == 400
    assert "OomScoreAdj" in str(unsupported.value.explanation)
    with pytest.raises(docker.errors.NotFound):
        api.inspect_container("py-nothing")
    for bad in (
        {"Image": IMAGE, "Cmd": 5},
        {"Image": IMAGE, "Labels": {"a": 1}},
        {"Image": IMAGE, "HostConfig": {"PortBindings": {"80/tcp": {"x": 1}}}},
        {"Image": IMAGE, "HostConfig": {"Memory": "lots"}},
        {"Image": IMAGE, "NetworkingConfig": {"EndpointsConfig": {"n": 3}}},
        {"Image": IMAGE, "HostConfig": {"Mounts": ["/x"]}},
        {"Cmd": ["true"]},
        [],
    ):
        answer = api._post_json(api._url("/containers/create"), data=bad)
        assert answer.status_code == 400, (bad, answer.text)
        assert set(answer.json()) == {"message"}
    api.remove_container("py-dup", force=True)
    api.close()


def test_wait_answers_its_headers_before_it_waits(ep: DockerEndpoint) -> None:
    """docker run sends wait(next-exit) and starts the container only once the wait's
    headers are in (a wait that answers at the end would deadlock it); the exit right
    after that start is the one the wait reports. The CLI's order (wait, then start),
    over docker-py's API."""
    docker = pytest.importorskip("docker")
    api = docker.APIClient(base_url=ep.host, version="1.44", timeout=30)
    for _ in range(5):
        cid = api.create_container(IMAGE, ["true"])["Id"]
        url = api._url("/containers/{0}/wait", cid)
        response = api._post(url, params={"condition": "next-exit"}, timeout=30, stream=True)
        api.start(cid)
        assert json.loads(response.raw.read())["StatusCode"] == 0
        api.remove_container(cid)
    api.close()


def test_container_and_system_answers_match_dockers_schema(ep: DockerEndpoint) -> None:
    """version, info, system df, container list, inspect, top and changes against
    Docker's own definition (engineer C's validator)."""
    import httpx
    import yaml
    from test_dockerapi_schema import SPEC, _nullable, problems

    if not SPEC.is_file():
        pytest.skip(f"{SPEC} is not on this machine")
    spec = _nullable(yaml.safe_load(SPEC.read_text()))
    cid = run_d(ep, "-l", "schema=1", "-p", "127.0.0.1::80", IMAGE, "sh", "-c",
                "touch /made; sleep 300")  # fmt: skip
    until(lambda: ep.docker_ok("diff", cid).strip())
    transport = httpx.HTTPTransport(uds=str(ep.socket))
    with httpx.Client(transport=transport, base_url="http://docker/v1.44") as http:

        def get(path: str) -> Any:
            r = http.get(path)
            assert r.status_code == 200, (path, r.text)
            return r.json()

        found = [
            *problems(spec, "/version", get("/version")),
            *problems(spec, "/info", get("/info")),
            *problems(spec, "/system/df", get("/system/df")),
            *problems(spec, "/containers/json", get("/containers/json?all=1&size=1")),
            *problems(spec, "/containers/{id}/json", get(f"/containers/{cid}/json")),
            *problems(spec, "/containers/{id}/top", get(f"/containers/{cid}/top")),
            *problems(spec, "/containers/{id}/changes", get(f"/containers/{cid}/changes")),
        ]
    ep.docker_ok("rm", "-f", cid)
    assert found == [], "\n".join(found)
