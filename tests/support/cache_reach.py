"""A random-topology driver for the demand-loading tests: applies NSDB changes of the
kinds that move the closure (create/delete, link/unlink, bind/unbind, filters, rules,
routes, groups, chains of devices grown one link at a time so that the depth limit
matters, a simulation asking for an object) and computes what a fresh load of one
host's reachable part holds."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

from hypothesis import strategies as st

from support.wait import wait_until
from tessera.agent.cache import WHOLE_KINDS, TopologyCache
from tessera.agent.reach import AGENT_MAX_DEPTH, Key, reach
from tessera.model import (
    Bridge,
    Chain,
    DhcpSubnet,
    Host,
    IpAddrGroup,
    Port,
    PortGroup,
    Route,
    Router,
    Rule,
    StoredObject,
    new_id,
)
from tessera.nsdb import indexes
from tessera.nsdb.base import Create, Nsdb, Update
from tessera.nsdb.errors import NsdbError

KINDS = (Host, Bridge, Router, Port, Chain, Rule, Route, DhcpSubnet, PortGroup, IpAddrGroup)
OPS = (
    "bridge", "router", "port", "port", "port", "link", "unlink", "bind", "bind", "bind", "unbind",
    "chain", "rule", "filter", "route", "subnet", "group", "delete_port", "delete_device",
    "delete_rule", "extend", "extend", "extend", "extend", "extend", "want", "want",
)  # fmt: skip


Load = tuple[dict[Key, StoredObject], set[str], frozenset[str]]
Store = tuple[dict[Key, StoredObject], dict[indexes.IndexKey, set[str]]]


def read_store(nsdb: Nsdb) -> Store:
    """Every object of the closure's kinds, and the indexes derived from the objects
    themselves (so that a wrong index shows too)."""
    objects = {(cls.kind, s.value.id): s.value for cls in KINDS for s in nsdb.list(cls.kind)}
    return objects, indexes.expected(objects.values())


def fresh_load(
    store: Store | Nsdb,
    host_id: str,
    max_depth: int | None = AGENT_MAX_DEPTH,
    extra: Iterable[Key] = (),
) -> Load:
    """What a cache started now (and asked for `extra`) would hold, whole-watched kinds
    aside, the devices it would show complete and the routers it would hold as fronts,
    from a full read of the NSDB."""
    objects, members = store if isinstance(store, tuple) else read_store(store)
    got = reach(
        host_id,
        lambda k, i: objects.get((k, i)),
        lambda n, k: members.get((n, k), set()),
        extra,
        max_depth=max_depth,
    )
    held = {k: objects[k] for k in got.objects if k in objects}
    return held, got.complete, frozenset(f for f in got.fronts if (Router.kind, f) in held)


def cache_load(cache: TopologyCache) -> Load:
    held = {k: v for k, v in cache.held().items() if k[0] not in WHOLE_KINDS}
    with cache.state.lock:
        return (
            held,
            set(cache.state.complete),
            cache.state.fronts & {id for kind, id in held if kind == Router.kind},
        )


class World:
    """Applies numbered operations to a small topology of one test example."""

    def __init__(self, nsdb: Nsdb, hosts: list[str]) -> None:
        self.nsdb = nsdb
        self.hosts = hosts
        self.ids: dict[str, list[str]] = {c.kind: [] for c in KINDS}
        self.order: dict[str, int] = {}  # creation order
        self.net = 0

    def _pick(self, kind: str, n: int) -> str | None:
        live = self.ids[kind]
        return live[n % len(live)] if live else None

    def _get(self, kind: str, id: str | None) -> Any:
        if id is None:
            return None
        try:
            return self.nsdb.get(kind, id).value
        except NsdbError:
            return None

    def _create(self, obj: StoredObject) -> None:
        self.nsdb.create(obj)
        self.ids[obj.kind].append(obj.id)
        self.order[obj.id] = len(self.order)

    def seed(self) -> None:
        """A bridge with a port bound to the first host (a VM there): a root that the
        script's chains grow from (it may unbind or delete it)."""
        bridge = Bridge(name="seed")
        self._create(bridge)
        port = Port(device_id=bridge.id, type="Bridge", host_id=self.hosts[0], interface_name="vm")
        self._create(port)

    def _devices(self) -> list[tuple[str, str]]:
        return [("Bridge", d) for d in self.ids["bridges"]] + [
            ("Router", d) for d in self.ids["routers"]
        ]

    def _port(self, type_: str, device: str) -> Port:
        if type_ == "Bridge":
            return Port(device_id=device, type="Bridge")
        self.net += 1
        net = f"10.{self.net // 250}.{self.net % 250}"
        return Port(
            device_id=device, type="Router", port_address=f"{net}.1",
            network_address=f"{net}.0", network_length=24,
        )  # fmt: skip

    def wanted(self, a: int, b: int) -> tuple[str, str] | None:
        """What a simulation might ask for: a device or a port."""
        kind = ("bridges", "routers", "ports")[a % 3]
        id = self._pick(kind, b)
        return None if id is None else (kind, id)

    def apply(self, op: str, a: int, b: int) -> None:
        nsdb = self.nsdb
        if op == "bridge":
            self._create(Bridge(name=f"b{a}"))
        elif op == "router":
            self._create(Router(name=f"r{a}"))
        elif op == "port":
            devices = self._devices()
            if not devices:
                return
            self._create(self._port(*devices[a % len(devices)]))
        elif op == "extend":
            # A new device of the other type, linked to one that exists (the newest
            # one, half the time): chains bridge - router - bridge - ... longer than
            # the depth limit, and branches off them.
            devices = self._devices()
            if not devices:
                return
            newest = max(devices, key=lambda d: self.order[d[1]])
            type_, at = newest if b % 2 else devices[a % len(devices)]
            new: Bridge | Router = Router(name=f"r{a}")
            if type_ == "Router":
                new = Bridge(name=f"b{a}")
            self._create(new)
            here = self._port(type_, at)
            there = self._port("Router" if type_ == "Bridge" else "Bridge", new.id)
            here = here.model_copy(update={"peer_id": there.id})
            there = there.model_copy(update={"peer_id": here.id})
            nsdb.commit([Create(here), Create(there)])
            self.ids["ports"] += [here.id, there.id]
        elif op == "bind":
            # A free port (no peer, no host), to this host two times in three.
            known = (self._get("ports", id) for id in self.ids["ports"])
            free = [p for p in known if p is not None and not p.peer_id and not p.host_id]
            if free:
                port = free[a % len(free)]
                host = self.hosts[0] if b % 3 else self.hosts[1]
                nsdb.update(port.model_copy(update={"host_id": host, "interface_name": "tap"}))
        elif op in ("link", "unlink", "unbind", "delete_port"):
            port = self._get("ports", self._pick("ports", a))
            if port is None:
                return
            if op == "delete_port":
                nsdb.delete("ports", port.id)
                self.ids["ports"].remove(port.id)
            elif op == "unbind" and port.host_id is not None:
                nsdb.update(port.model_copy(update={"host_id": None, "interface_name": None}))
            elif op == "unlink" and port.peer_id is not None:
                ops: list[Any] = [Update(port.model_copy(update={"peer_id": None}))]
                peer = self._get("ports", port.peer_id)
                if peer is not None and peer.peer_id == port.id:
                    ops.append(Update(peer.model_copy(update={"peer_id": None})))
                nsdb.commit(ops)
            elif op == "link":
                peer = self._get("ports", self._pick("ports", b))
                free = [p for p in (port, peer) if p and not p.host_id and not p.peer_id]
                if len(free) == 2 and port.id != peer.id:
                    nsdb.commit(
                        [
                            Update(port.model_copy(update={"peer_id": peer.id})),
                            Update(peer.model_copy(update={"peer_id": port.id})),
                        ]
                    )
        elif op == "chain":
            self._create(Chain(name=f"c{a}"))
        elif op == "rule":
            chain = self._get("chains", self._pick("chains", a))
            if chain is None:
                return
            jump = self._pick("chains", b) if b % 3 == 0 else None
            group = self._pick("port_groups", b) if b % 3 == 1 else None
            ipg = self._pick("ip_addr_groups", b) if b % 3 == 2 else None
            rule = (
                Rule(chain_id=chain.id, type="jump", jump_chain_id=jump)
                if jump and jump != chain.id
                else Rule(chain_id=chain.id, type="drop", port_group=group, ip_addr_group_src=ipg)
            )
            nsdb.commit(
                [
                    Create(rule),
                    Update(chain.model_copy(update={"rule_ids": [*chain.rule_ids, rule.id]})),
                ]
            )
            self.ids["rules"].append(rule.id)
        elif op == "delete_rule":
            rule = self._get("rules", self._pick("rules", a))
            chain = self._get("chains", rule.chain_id) if rule else None
            if rule is None or chain is None:
                return
            ids = [r for r in chain.rule_ids if r != rule.id]
            nsdb.commit([Update(chain.model_copy(update={"rule_ids": ids}))])
            nsdb.delete("rules", rule.id)
            self.ids["rules"].remove(rule.id)
        elif op == "filter":
            chain = self._pick("chains", b) if b % 4 else None
            kind = ("ports", "bridges", "routers")[a % 3]
            obj = self._get(kind, self._pick(kind, a // 3))
            if obj is not None:
                nsdb.update(obj.model_copy(update={"inbound_filter_id": chain}))
        elif op == "route":
            router = self._pick("routers", a)
            if router is not None:
                self._create(
                    Route(
                        router_id=router,
                        dst_network_addr=f"172.16.{b % 250}.0",
                        dst_network_length=24,
                        type="BlackHole",
                    )
                )
        elif op == "subnet":
            bridge = self._pick("bridges", a)
            if bridge is not None:
                self._create(
                    DhcpSubnet(
                        bridge_id=bridge,
                        subnet_prefix=f"192.168.{b % 250}.0",
                        subnet_length=24,
                    )
                )
        elif op == "group":
            if b % 2:
                self._create(IpAddrGroup(name=f"i{a}", addrs=["10.9.9.9"]))
            else:
                ports = self.ids["ports"][a % 3 :: 2][:3]
                self._create(PortGroup(name=f"g{a}", port_ids=ports, stateful=bool(a % 2)))
        elif op == "delete_device":
            kind = ("bridges", "routers")[a % 2]
            device = self._pick(kind, b)
            if device is not None:
                nsdb.delete(kind, device)
                self.ids[kind].remove(device)


steps = st.lists(
    st.tuples(st.sampled_from(OPS), st.integers(0, 50), st.integers(0, 50)),
    min_size=1,
    max_size=30,
)


def check_script(
    nsdb: Nsdb,
    script: list[tuple[str, int, int]],
    timeout: float = 10.0,
    max_depth: int | None = AGENT_MAX_DEPTH,
) -> None:
    me, other = new_id(), new_id()
    cache = TopologyCache(nsdb, me, lambda update: None, max_depth=max_depth)
    cache.start()
    world = World(nsdb, [me, other])
    try:
        world.seed()
        for op, a, b in script:
            if op == "want":
                key = world.wanted(a, b)
                if key is not None:
                    cache.want(*key)
            else:
                world.apply(op, a, b)
            expected: list[Load] = []
            wait_until(
                partial(_settled, cache, read_store(nsdb), me, max_depth, expected),
                timeout,
                interval=0.005,
                what=f"the cache to equal a fresh load after {op}",
            )
            # Nothing else is watched either: no leaked subscription.
            held = expected[0][0]
            assert cache.wanted() == set(held) | _missing(cache, held)
    finally:
        cache.close()


def _settled(
    cache: TopologyCache, store: Store, me: str, max_depth: int | None, out: list[Load]
) -> bool:
    """Whether the cache equals a fresh load (left in `out`) with what it was asked for
    now: a binding change clears that."""
    with cache.state.lock:
        extra = set(cache._extra)
    out[:] = [fresh_load(store, me, max_depth, extra)]
    return cache_load(cache) == out[0]


def _missing(cache: TopologyCache, held: dict[Any, Any]) -> set[Any]:
    """Keys the closure names that do not exist (a dangling reference): still watched,
    so that they load if they appear."""
    return {k for k in cache.wanted() if k not in held and cache.get(*k) is None}
