"""The engine's networks (``Engine.networks``): records and leases in the container
store (``lamina.network._db``), attachments in container records, and each run's
network namespace set up before the workload starts and torn down when it ends, for
either isolation (a VM's backend puts its taps in the same namespace).

Lifecycle of an attachment (an ``Endpoint``: network + addresses + MAC + aliases):

1. ``create``/``connect``: addresses leased in the transaction that writes the
   container record naming the endpoint; never given twice (``ip_leases``' key).
2. ``setup`` (a start, under the container's lock): published host ports reserved
   (sockets the monitor keeps), then the run's record ``extra["netrun"]`` written
   *before* the namespace is made and netavark sets it up, so whoever finds it after
   a crash can undo it from the record.
3. ``teardown`` (the end of a run, in ``_after_exit``, ``rm``, a failed start, or
   reconcile of a stopped container whose namespace is still there): netavark
   teardown with the same options, the namespace unmounted and removed, the mark
   cleared.
4. ``rm``/``disconnect``: leases released.

A ``--rm`` container's end (``teardown_later``) does not make its waiting ``run``
wait for netavark's teardown: the record goes at once, the teardown is finished by a
child forked under a ``netdown`` lease (``<root>/networks/down/<id>.json`` says what
to undo), which holds the root's netavark lock from before the fork, so every later
netavark call comes after it; the container's addresses stay leased until it is
done, so none is given again before its teardown freed it. A child that dies leaves
a dead lease: the next command's reconcile finishes its work (``stray_namespaces``).
``network rm``, prune's release of orphan leases and a create asking for a static
address wait for pending teardowns first (``settle``).
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina import _leases
from lamina._fsutil import atomic_write
from lamina._hooks import stop_point
from lamina.errors import InUse, LaminaError, NotFound
from lamina.network import _aardvark, _db, _ipam, _netavark, _netns, _ports
from lamina.network._model import (
    BRIDGE_NAME_OPTION,
    DEFAULT_NETWORK,
    MTU_OPTIONS,
    RESERVED_NAMES,
    Network,
)
from lamina.runtime._types import (
    ContainerConfig,
    Endpoint,
    NetworkRequest,
    NetworkRun,
    PortMapping,
    Record,
    Status,
)

if TYPE_CHECKING:
    import socket
    import sqlite3

    from lamina.engine._engine import Engine

NETRUN = "netrun"  # extra key: the run's network namespace and published ports
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_FILTERS = ("name", "id", "label", "driver", "type")
_ACTIVE = (Status.RUNNING, Status.PAUSED)


def bridge_mode(config: ContainerConfig) -> bool:
    """Whether the container's network mode is bridge networks (not none, host,
    container:ID, or a VM's nat)."""
    mode = config.network
    return not (mode in ("none", "host", "nat") or mode.startswith("container:"))


class Networks:
    """Bridge networks of one engine's root."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.root = engine.root
        self._in_flight: dict[str, RunSetup] = {}  # container -> its overlapped setup

    def joined(self, rec: Record, setup: RunSetup) -> None:
        """Wait for an overlapped setup of ``rec``'s run; its failure is raised."""
        self._in_flight.pop(rec.id, None)
        setup.wait()
        if setup.error is not None:
            raise setup.error
        stop_point("network:setup")

    # -- records ----------------------------------------------------------------------
    def _event(self, action: str, net: Network, **more: str) -> None:
        self.engine._event(
            "network", action, net.id, {"name": net.name, "type": net.driver, **more}
        )

    def create(
        self,
        name: str,
        *,
        driver: str = "bridge",
        subnets: Sequence[str] = (),
        gateways: Sequence[str] = (),
        ip_ranges: Sequence[str] = (),
        internal: bool = False,
        ipv6: bool = False,
        labels: Mapping[str, str] | None = None,
        options: Mapping[str, str] | None = None,
    ) -> Network:
        """A new bridge network (Docker's ``network create``)."""
        if not _NAME_RE.match(name):
            raise _ipam.InvalidNetwork(
                f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )
        if name in RESERVED_NAMES or name == DEFAULT_NETWORK:
            raise _ipam.InvalidNetwork(f"network name {name} is a pre-defined network's")
        if driver != "bridge":
            raise _ipam.InvalidNetwork(f"network driver {driver!r} is not supported: only bridge")
        opts = _check_options(options or {})
        store = self.engine.store
        with store.tx() as db:
            if _db.find(db, name) is not None:
                raise _ipam.InvalidNetwork(f"network with name {name} already exists")
            others = _db.list_all(db)
            in_use = [_ipam.parse_network(s.subnet) for n in others for s in n.subnets]
            net = _new(
                name, _ipam.make_subnets(subnets, gateways, ip_ranges, ipv6=ipv6, in_use=in_use)
            )
            net.internal, net.ipv6 = internal, ipv6
            net.labels, net.options = dict(labels or {}), opts
            bridge = opts.get(BRIDGE_NAME_OPTION)
            if bridge:
                if any(n.interface == bridge for n in others) or os.path.exists(
                    f"/sys/class/net/{bridge}"
                ):
                    raise _ipam.InvalidNetwork(f"bridge name {bridge} is in use already")
                net.interface = bridge
            _db.insert(db, net)
        self._event("create", net)
        return net

    def default(self, db: sqlite3.Connection) -> Network:
        """The default network (``lamina``), made on first use, in ``db``'s
        transaction: its subnet collides with no route of the host; no names resolve
        on it (Docker's ``bridge``)."""
        net = _db.find(db, DEFAULT_NETWORK)
        if net is None:
            in_use = [_ipam.parse_network(s.subnet) for n in _db.list_all(db) for s in n.subnets]
            net = _new(DEFAULT_NETWORK, [_ipam.choose_subnet(in_use)])
            net.dns = False
            _db.insert(db, net)
            self._event("create", net)
        return net

    def get(self, ref: str) -> Network:
        with self.engine.store.tx() as db:
            if ref == DEFAULT_NETWORK:
                return self.default(db)
            return _db.get(db, ref)

    def list(self, filters: Mapping[str, Sequence[str]] | None = None) -> builtins.list[Network]:
        """Every network ``filters`` keep (name, id, label, driver, type=custom|builtin),
        the default one included."""
        from lamina.engine._filters import InvalidFilter

        for key in filters or {}:
            if key not in _FILTERS:
                raise InvalidFilter(f"invalid filter {key!r} (supported: {', '.join(_FILTERS)})")
        with self.engine.store.tx() as db:
            self.default(db)
            nets = _db.list_all(db)
        return [n for n in nets if _matches(n, filters or {})]

    def inspect(self, ref: str) -> dict[str, Any]:
        net = self.get(ref)
        containers: dict[str, dict[str, str]] = {}
        for rec in self.engine.store.list():
            for e in rec.endpoints:
                if e.network_id == net.id:
                    containers[rec.id] = {
                        "Name": rec.name,
                        "EndpointID": e.endpoint_id,
                        "MacAddress": e.mac,
                        "IPv4Address": f"{e.ipv4}/{e.prefix}" if e.ipv4 else "",
                        "IPv6Address": f"{e.ipv6}/{e.prefix6}" if e.ipv6 else "",
                    }
        return net.inspect(containers)

    def remove(self, ref: str) -> Network:
        """Refused while containers use it, and for the default network."""
        self.engine._reconcile()
        self.settle()  # removed containers' teardowns still at work
        with self.engine.store.tx() as db:
            net = _db.get(db, ref)
            if net.name == DEFAULT_NETWORK:
                raise InUse(f"{net.name} is a pre-defined network and cannot be removed")
            users = _db.users(db, net.id)
            if users:
                names = [r.name for cid in users if (r := self.engine.store.get(cid)) is not None]
                raise InUse(
                    f"error while removing network: network {net.name} id {net.id} has active "
                    f"endpoints (containers: {', '.join(names or users)})"
                )
            _db.delete(db, net.id)
        self._remove_leftovers(net)
        self._event("destroy", net)
        return net

    def prune(self) -> builtins.list[str]:
        """Remove every network no container uses (not the default); their names."""
        removed = []
        for net in self.list():
            if net.name == DEFAULT_NETWORK:
                continue
            with contextlib.suppress(InUse, NotFound):
                self.remove(net.id)
                removed.append(net.name)
        return removed

    def _remove_leftovers(self, net: Network) -> None:
        """What netavark leaves of a network once its last container is gone (nothing,
        normally; a bridge and aardvark-dns's file after a crash)."""
        if os.path.exists(f"/sys/class/net/{net.interface}"):
            subprocess.run(
                ["ip", "link", "delete", net.interface], capture_output=True, check=False
            )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_netavark.config_dir(self.root) / "aardvark-dns" / net.name)

    # -- attachments ------------------------------------------------------------------
    def before_lease(self, requests: Sequence[NetworkRequest]) -> None:
        """Before a transaction leases addresses: a static one asked for may still be
        held by a removed container's pending teardown (see the module docstring)."""
        if any(r.ip or r.ip6 for r in requests):
            self.settle()

    def lease_all(
        self, db: sqlite3.Connection, cid: str, config: ContainerConfig
    ) -> builtins.list[Endpoint]:
        """Endpoints for every network ``config`` asks to join, leased in ``db``'s
        transaction (the one that inserts the container's record)."""
        endpoints: builtins.list[Endpoint] = []
        for i, req in enumerate(config.networks):
            net = self.default(db) if req.name in ("", DEFAULT_NETWORK) else _db.get(db, req.name)
            if any(e.network_id == net.id for e in endpoints):
                raise _ipam.InvalidNetwork(f"container cannot join network {net.name} twice")
            endpoints.append(self._lease(db, cid, net, req, f"eth{i}"))
        return endpoints

    def _lease(
        self, db: sqlite3.Connection, cid: str, net: Network, req: NetworkRequest, interface: str
    ) -> Endpoint:
        aliases = _aardvark.check_names(req.aliases)
        if not net.dns and (aliases or req.ip or req.ip6):
            raise _user_networks_only(
                net, "network-scoped aliases are" if aliases else "user specified IP addresses are"
            )
        ep = Endpoint(network=net.name, network_id=net.id, endpoint_id=os.urandom(32).hex(),
                      interface=interface, aliases=aliases, dns=net.dns,
                      internal=net.internal, requested={"ip": req.ip, "ip6": req.ip6})  # fmt: skip
        taken = _db.taken(db, net.id)
        for subnet in net.subnets:
            v6 = ":" in subnet.subnet
            address, prefix = _ipam.allocate(subnet, taken, req.ip6 if v6 else req.ip)
            _db.lease(db, net.id, address, cid)
            if v6:
                ep.ipv6, ep.prefix6, ep.gateway6 = address, prefix, subnet.gateway
            else:
                ep.ipv4, ep.prefix, ep.gateway = address, prefix, subnet.gateway
        if (req.ip and not ep.ipv4) or (req.ip6 and not ep.ipv6):
            raise _ipam.InvalidNetwork(
                f"network {net.name} has no subnet for the address asked for"
            )
        ep.mac = (
            _ipam.valid_mac(req.mac)
            if req.mac
            else _ipam.mac_for(ep.ipv4)
            if ep.ipv4
            else _random_mac()
        )
        return ep

    def release(self, cid: str, *, pending: bool = True) -> None:
        """Every lease of container ``cid`` (it is being removed); kept while its
        teardown is pending (``pending``: check), the teardown's worker releases them."""
        if pending and (self._down_dir() / f"{cid}.json").exists():
            return
        with self.engine.store.tx() as db:
            _db.release(db, cid)

    def release_orphans(self) -> int:
        self.settle()  # a pending teardown's leases are not orphans yet
        with self.engine.store.tx() as db:
            return _db.release_orphans(db)

    def _networks_of(self, endpoints: Sequence[Endpoint]) -> dict[str, Network]:
        with self.engine.store.tx() as db:
            found = {e.network_id: _db.find(db, e.network_id) for e in endpoints}
        return {k: v for k, v in found.items() if v is not None}

    # -- a run ------------------------------------------------------------------------
    def setup(self, rec: Record, *, overlap: bool = False) -> RunSetup | None:
        """The run's network (see the module docstring), None for a container not on
        bridge networks. The sockets hold the published host ports: the caller closes
        them once the monitor has them. ``overlap``: netavark's part runs in a thread
        while the caller launches the workload (runc needs only the namespace), and
        ``RunSetup.join`` waits for it before the workload may run."""
        if not bridge_mode(rec.config):
            return None
        path = _netns.path_of(self.root, rec.id)
        wanted = _ports.expand(
            rec.config.ports, rec.config.publish_all, rec.extra.get("exposed") or []
        )
        ports, sockets = _ports.reserve(wanted)
        endpoints = rec.endpoints
        run = NetworkRun(netns=str(path), endpoints=endpoints, ports=ports,
                         port_fds=[s.fileno() for s in sockets])  # fmt: skip
        done = RunSetup(run, sockets)
        try:
            rec.extra[NETRUN] = {
                "netns": str(path),
                "ports": [dataclasses.asdict(p) for p in ports],
            }
            self.engine.store.update(rec.id, extra=rec.extra)
            stop_point("network:recorded")
            _netns.create(path)
            stop_point("network:netns")
            if endpoints:
                opts = _netavark.options(
                    rec.id, rec.name, endpoints, self._networks_of(endpoints), ports
                )
                if overlap:
                    done.start(lambda: _netavark.run(self.root, "setup", path, opts))
                    self._in_flight[rec.id] = done
                else:
                    _netavark.run(self.root, "setup", path, opts)
            if not overlap:
                stop_point("network:setup")
        except BaseException:
            _ports.close(sockets)
            with contextlib.suppress(LaminaError, OSError):
                self.teardown(rec)
            raise
        return done

    def teardown(self, rec: Record) -> None:
        """Undo a run's network (nothing when it has none): netavark's part, the
        namespace, the record's mark."""
        in_flight = self._in_flight.pop(rec.id, None)
        if in_flight is not None:  # a setup still at work: undone once it is over
            in_flight.wait()
        path = _netns.path_of(self.root, rec.id)
        mark = rec.extra.get(NETRUN)
        if mark is None and not _netns.exists(path):
            return
        endpoints = rec.endpoints
        if endpoints and _netns.exists(path):
            ports = [PortMapping(**p) for p in (mark or {}).get("ports") or []]
            opts = _netavark.options(
                rec.id, rec.name, endpoints, self._networks_of(endpoints), ports
            )
            # A setup that never happened (or half of one) fails to tear down: what it
            # made is gone all the same.
            with contextlib.suppress(_netavark.NetworkSetupFailed):
                _netavark.run(self.root, "teardown", path, opts)
        _netns.remove(path)
        rec.extra.pop(NETRUN, None)
        fresh = self.engine.store.get(rec.id)
        if fresh is not None and NETRUN in fresh.extra:
            fresh.extra.pop(NETRUN)
            self.engine.store.update(rec.id, extra=fresh.extra)

    # -- teardown after the caller has gone on (see the module docstring) ------------------
    def _down_dir(self) -> Path:
        return self.root / "networks" / "down"

    def teardown_later(self, rec: Record) -> None:
        """``teardown`` of a run whose container is being removed, finished by a
        forked child: the caller goes on (drops the record) without waiting for
        netavark. Anything without netavark's part is torn down at once."""
        in_flight = self._in_flight.pop(rec.id, None)
        if in_flight is not None:
            in_flight.wait()
        path = _netns.path_of(self.root, rec.id)
        endpoints = rec.endpoints
        if not endpoints or not _netns.exists(path):
            self.teardown(rec)
            return
        mark = rec.extra.get(NETRUN) or {}
        ports = [PortMapping(**p) for p in mark.get("ports") or []]
        opts = _netavark.options(rec.id, rec.name, endpoints, self._networks_of(endpoints), ports)
        lease = _leases.take(self.root, "netdown")
        try:
            pending = self._down_dir() / f"{rec.id}.json"
            pending.parent.mkdir(parents=True, exist_ok=True)
            work = {"lease": lease.id, "netns": str(path), "opts": opts}
            atomic_write(pending, json.dumps(work).encode(), mode=0o600, sync=False)
            lock = _netavark.take_lock(self.root)  # before the fork: later calls wait
        except BaseException:
            lease.release()
            raise
        try:
            child = os.fork()
        except OSError:
            child = -1
        if child == 0:  # the child: finish, never return into the caller's code
            status = 1
            try:
                os.setsid()
                _keep_only(lock, self.root / "leases" / f"{lease.id}.lock")
                stop_point("network:down")
                _finish_down(self.root, pending, work, locked=True, lock=lock)
                lease.release()
                done = str(pending.with_suffix(".done"))
                db = str(self.root / "containers.db")
                argv = [sys.executable, "-m", "lamina.network._db", db, rec.id, done]
                os.execv(sys.executable, argv)
            finally:
                os._exit(status)
        os.close(lock)
        if child < 0:  # no fork: do it here
            _finish_down(self.root, pending, work, locked=False)
            lease.release()
            return
        lease.detach()
        rec.extra.pop(NETRUN, None)

    def _pending(self) -> dict[str, Path]:
        """Pending teardowns: container ID -> its file."""
        with contextlib.suppress(FileNotFoundError):
            return {
                f.name[: -len(".json")]: f
                for f in self._down_dir().iterdir()
                if f.name.endswith(".json")
            }
        return {}

    def _release_done(self) -> None:
        """The leases of containers whose pending teardown is over."""
        with contextlib.suppress(FileNotFoundError):
            for f in self._down_dir().iterdir():
                if f.name.endswith(".done"):
                    self.release(f.name[: -len(".done")], pending=False)
                    with contextlib.suppress(FileNotFoundError):
                        f.unlink()

    def _finish_dead(self) -> builtins.list[str]:
        """Finish the pending teardowns whose workers died (their container IDs), and
        release the leases of every finished one."""
        done = []
        for cid, pending in self._pending().items():
            try:
                work = json.loads(pending.read_text())
            except FileNotFoundError:
                continue
            except ValueError:
                work = {}
            if _leases.alive(self.root, str(work.get("lease") or "")):
                continue
            if work.get("opts"):
                _finish_down(self.root, pending, work, locked=False)
            else:  # torn by a crash while it was written: what the namespace holds goes
                with contextlib.suppress(LaminaError, OSError):
                    _netns.remove(_netns.path_of(self.root, cid))
                with contextlib.suppress(FileNotFoundError):
                    os.rename(pending, pending.with_suffix(".done"))
            done.append(cid)
        self._release_done()
        return done

    def settle(self, timeout: float = 30.0) -> None:
        """Wait for pending teardowns (their workers' or our own)."""
        deadline = time.monotonic() + timeout
        while True:
            self._finish_dead()
            if not self._pending() or time.monotonic() > deadline:
                return
            time.sleep(0.01)

    def ports(self, rec: Record) -> builtins.list[PortMapping]:
        """The ports the current run publishes (resolved host ports)."""
        return [PortMapping(**p) for p in (rec.extra.get(NETRUN) or {}).get("ports") or []]

    def has_run(self, cid: str) -> bool:
        return _netns.exists(_netns.path_of(self.root, cid))

    def stray_namespaces(self, known: set[str]) -> builtins.list[str]:
        """Namespaces under the root of containers without a record: removed."""
        found = self._finish_dead()
        pending = self._pending()
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.root / "netns"):
                if name in pending or name in found:
                    continue
                if name not in known and self.engine.store.get(name) is None:
                    with contextlib.suppress(LaminaError, OSError):
                        _netns.remove(self.root / "netns" / name)
                        found.append(name)
        return found

    # -- connect / disconnect -------------------------------------------------------------
    def connect(
        self,
        net_ref: str,
        ctr_ref: str,
        *,
        aliases: Sequence[str] = (),
        ip: str = "",
        ip6: str = "",
    ) -> None:
        """Attach a created or running container to one more network (a running one
        gets its interface at once)."""
        engine = self.engine
        rec = engine._resolve(ctr_ref)
        with engine._locked(rec.id, rec.isolation):
            rec = engine._fresh(rec.id)
            if not bridge_mode(rec.config):
                raise LaminaError(
                    f"container {rec.name} uses network mode {rec.config.network}: it cannot "
                    "join a bridge network"
                )
            running = rec.status in _ACTIVE
            if running and rec.isolation != "process":
                raise LaminaError("connecting a running VM container is not supported yet")
            endpoints = rec.endpoints
            self.before_lease([NetworkRequest(net_ref, [], ip, ip6)])
            with engine.store.tx() as db:
                net = self.default(db) if net_ref == DEFAULT_NETWORK else _db.get(db, net_ref)
                if any(e.network_id == net.id for e in endpoints):
                    raise _ipam.InvalidNetwork(
                        f"endpoint with name {rec.name} already exists in network {net.name}"
                    )
                used = {e.interface for e in endpoints}
                iface = next(f"eth{i}" for i in range(len(endpoints) + 1) if f"eth{i}" not in used)
                ep = self._lease(
                    db, rec.id, net, NetworkRequest(net.name, list(aliases), ip, ip6), iface
                )
                rec.extra["endpoints"] = [*rec.extra.get("endpoints", []), dataclasses.asdict(ep)]
                engine.store.update(rec.id, extra=rec.extra)
            if running:
                try:
                    opts = _netavark.options(rec.id, rec.name, [ep], {net.id: net})
                    _netavark.run(self.root, "setup", _netns.path_of(self.root, rec.id), opts)
                except BaseException:
                    self._drop_endpoint(rec, net.id)
                    raise
            engine._task(rec.isolation).update_network(rec, rec.endpoints)
        self._event("connect", net, container=rec.id)

    def disconnect(self, net_ref: str, ctr_ref: str, *, force: bool = False) -> None:
        engine = self.engine
        rec = engine._resolve(ctr_ref)
        with engine._locked(rec.id, rec.isolation):
            rec = engine._fresh(rec.id)
            net = self.get(net_ref)
            ep = next((e for e in rec.endpoints if e.network_id == net.id), None)
            if ep is None:
                raise NotFound(f"container {rec.name} is not connected to network {net.name}")
            if rec.status in _ACTIVE and _netns.exists(_netns.path_of(self.root, rec.id)):
                # netavark forwards published ports on each network: this one's DNAT
                # goes with it (the container's last teardown names only the others).
                mark = rec.extra.get(NETRUN) or {}
                ports = [PortMapping(**p) for p in mark.get("ports") or []]
                opts = _netavark.options(rec.id, rec.name, [ep], {net.id: net}, ports)
                try:
                    _netavark.run(self.root, "teardown", _netns.path_of(self.root, rec.id), opts)
                except _netavark.NetworkSetupFailed:
                    if not force:
                        raise
            self._drop_endpoint(rec, net.id)
            engine._task(rec.isolation).update_network(rec, rec.endpoints)
        self._event("disconnect", net, container=rec.id)

    def set_aliases(self, ctr_ref: str, net_ref: str, aliases: Sequence[str]) -> builtins.list[str]:
        """Give the container's endpoint on a network exactly ``aliases`` (its name and
        short ID always resolve besides), in its record (what every later start sets
        up) and, while it runs, in aardvark-dns at once: a name leaves or joins name
        resolution without a restart (a deployment's service name, its ready
        replicas'). Several containers with one alias resolve to all their addresses.
        Idempotent: the records of a run are brought in line even when the record
        already says so (an earlier call killed between the two). Returns the aliases
        as kept (checked, repeats dropped)."""
        engine = self.engine
        wanted = _aardvark.check_names(aliases)
        rec = engine._resolve(ctr_ref)
        with engine._locked(rec.id, rec.isolation):
            rec = engine._fresh(rec.id)
            net = self.get(net_ref)
            if not any(e["network_id"] == net.id for e in rec.extra.get("endpoints") or []):
                raise NotFound(f"container {rec.name} is not connected to network {net.name}")
            if not net.dns and wanted:
                raise _user_networks_only(net, "network-scoped aliases are")
            for endpoint in rec.extra["endpoints"]:
                if endpoint["network_id"] == net.id:
                    endpoint["aliases"] = list(wanted)
            engine.store.update(rec.id, extra=rec.extra)
            stop_point("network:aliases")
            if net.dns and rec.status in _ACTIVE:
                names = [rec.name, rec.id[:12], *wanted]
                _aardvark.set_names(self.root, net.name, rec.id, names)
        return wanted

    def _drop_endpoint(self, rec: Record, net_id: str) -> None:
        with self.engine.store.tx() as db:
            _db.release(db, rec.id, net_id)
            rec.extra["endpoints"] = [
                e for e in rec.extra.get("endpoints", []) if e["network_id"] != net_id
            ]
            self.engine.store.update(rec.id, extra=rec.extra)

    # -- inspect ------------------------------------------------------------------------
    def host_config(self, rec: Record) -> dict[str, Any]:
        """Docker's ``HostConfig`` network fields of a container."""
        bindings: dict[str, Any] = {}
        for p in rec.config.ports:
            bindings.setdefault(p.private, []).append(
                {"HostIp": p.host_ip, "HostPort": str(p.host_port) if p.host_port else ""}
            )
        cfg = rec.config
        return {
            "PortBindings": bindings,
            "PublishAllPorts": cfg.publish_all,
            "Dns": list(cfg.dns),
            "DnsSearch": list(cfg.dns_search),
            "DnsOptions": list(cfg.dns_options),
            "ExtraHosts": list(cfg.extra_hosts) or None,
        }

    def settings(self, rec: Record) -> dict[str, Any]:
        """Docker's ``NetworkSettings`` of a container."""
        running = rec.status in _ACTIVE
        ports: dict[str, Any] = {}
        for item in rec.extra.get("exposed") or []:
            number, _, proto = item.partition("/")
            ports[f"{number}/{proto or 'tcp'}"] = None
        for p in rec.config.ports:
            ports.setdefault(p.private, None)
        if running:
            for p in self.ports(rec):
                bound = ports.get(p.private) or []
                bound.append({"HostIp": p.host_ip or "0.0.0.0", "HostPort": str(p.host_port)})
                ports[p.private] = bound
        networks: dict[str, Any] = {}
        for e in rec.endpoints:
            networks[e.network] = {
                "IPAMConfig": {"IPv4Address": e.requested.get("ip", ""),
                               "IPv6Address": e.requested.get("ip6", "")}
                if any(e.requested.values()) else None,
                "Links": None,
                "Aliases": list(e.aliases) or None,
                "MacAddress": e.mac,
                "NetworkID": e.network_id,
                "EndpointID": e.endpoint_id if running else "",
                "Gateway": e.gateway if running else "",
                "IPAddress": e.ipv4 if running else "",
                "IPPrefixLen": e.prefix if running else 0,
                "IPv6Gateway": e.gateway6 if running else "",
                "GlobalIPv6Address": e.ipv6 if running else "",
                "GlobalIPv6PrefixLen": e.prefix6 if running else 0,
                "DNSNames": [rec.name, rec.id[:12], *e.aliases] if e.dns else None,
            }  # fmt: skip
        if not bridge_mode(rec.config):
            networks = {rec.config.network: {}}
        first = rec.endpoints[0] if rec.endpoints and running else None
        return {
            "SandboxKey": str(_netns.path_of(self.root, rec.id))
            if running and bridge_mode(rec.config)
            else "",
            "Ports": ports,
            "IPAddress": first.ipv4 if first else "",
            "IPPrefixLen": first.prefix if first else 0,
            "Gateway": first.gateway if first else "",
            "MacAddress": first.mac if first else "",
            "GlobalIPv6Address": first.ipv6 if first else "",
            "Networks": networks,
        }


def _keep_only(lock: int, lease_file: Path) -> None:
    """In the forked child: stdio on /dev/null (the caller's pipes must see their end
    when the caller exits), every other descriptor closed (a container's lock, the
    caller's sockets) but the netavark lock and the lease's."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2 or fd == lock:
            continue
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == str(lease_file):
                continue
            os.close(fd)


def _finish_down(
    root: Path, pending: Path, work: dict[str, Any], *, locked: bool, lock: int = -1
) -> None:
    """A pending teardown's work (idempotent): netavark's teardown, the namespace; then
    its file is renamed ``<id>.done``: the container's leases are released by a fresh
    process the worker becomes (``_db.release_done``: a forked child cannot use SQLite,
    whose locks are per process), or else by the next command's reconcile
    (``Networks._release_done``), before anything leases an address."""
    netns = Path(str(work["netns"]))
    try:
        if _netns.exists(netns):
            with contextlib.suppress(LaminaError, OSError):
                _netavark.run(root, "teardown", netns, work["opts"], locked=locked)
    finally:
        if lock >= 0:
            os.close(lock)
    with contextlib.suppress(LaminaError, OSError):
        _netns.remove(netns)
    with contextlib.suppress(FileNotFoundError):
        os.rename(pending, pending.with_suffix(".done"))


class RunSetup:
    """A run's network as ``Networks.setup`` made it: what the task backend is given
    (``run``), the sockets holding the published ports, and netavark's setup when it
    runs in a thread beside the workload's launch."""

    def __init__(self, run: NetworkRun, sockets: builtins.list[socket.socket]) -> None:
        self.run = run
        self.sockets = sockets
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self, work: Callable[[], object]) -> None:
        def target() -> None:
            try:
                work()
            except BaseException as e:  # raised in the joining thread
                self.error = e

        self._thread = threading.Thread(target=target, name="netavark-setup", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _user_networks_only(net: Network, what: str) -> _ipam.InvalidNetwork:
    return _ipam.InvalidNetwork(
        f"{what} supported only for containers on user-defined networks, not on {net.name}"
    )


def _new(name: str, subnets: builtins.list[Any]) -> Network:
    net_id = os.urandom(32).hex()
    # Bridge names are the host's, shared by every root: named from the ID.
    return Network(id=net_id, name=name, interface=f"lm-{net_id[:12]}", subnets=subnets)


def _random_mac() -> str:
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def _check_options(options: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key, value in options.items():
        if key in MTU_OPTIONS:
            if not value.isdigit() or not 68 <= int(value) <= 65535:
                raise _ipam.InvalidNetwork(f"invalid -o {key}={value}: an MTU from 68 to 65535")
        elif key == BRIDGE_NAME_OPTION:
            if not re.fullmatch(r"[a-zA-Z0-9_.-]{1,15}", value):
                raise _ipam.InvalidNetwork(
                    f"invalid -o {key}={value}: an interface name of 1-15 characters"
                )
        else:
            raise _ipam.InvalidNetwork(
                f"unsupported network option {key!r} (supported: mtu, {BRIDGE_NAME_OPTION})"
            )
        out[key] = value
    return out


def _matches(net: Network, filters: Mapping[str, Sequence[str]]) -> bool:
    for key, values in filters.items():
        if key == "name" and not any(v in net.name for v in values):
            return False
        if key == "id" and not any(net.id.startswith(v) for v in values):
            return False
        if key == "driver" and net.driver not in values:
            return False
        if key == "type":
            kind = "builtin" if net.name == DEFAULT_NETWORK else "custom"
            if kind not in values:
                return False
        if key == "label":
            for v in values:
                k, sep, want = v.partition("=")
                if k not in net.labels or (sep and net.labels[k] != want):
                    return False
    return True


def netns_path(root: Path, cid: str) -> Path:
    return _netns.path_of(root, cid)
