"""A random-topology driver for the demand-loading tests: applies NSDB changes of the
kinds that move the closure (create/delete, link/unlink, bind/unbind, filters, rules,
routes, groups) and computes what a fresh load of one host's reachable part holds."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from support.wait import wait_until
from tessera.agent.cache import WHOLE_KINDS, TopologyCache
from tessera.agent.reach import Key, reach
from tessera.model import (
    Bridge,
    Chain,
    DhcpSubnet,
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

KINDS = (Bridge, Router, Port, Chain, Rule, Route, DhcpSubnet, PortGroup, IpAddrGroup)
OPS = (
    "bridge", "router", "port", "port", "port", "link", "unlink", "bind", "bind", "unbind",
    "chain", "rule", "filter", "route", "subnet", "group", "delete_port", "delete_device",
    "delete_rule",
)  # fmt: skip


def fresh_load(nsdb: Nsdb, host_id: str) -> tuple[dict[Key, StoredObject], set[str]]:
    """What a cache started now would hold (whole-watched kinds aside) and the devices
    it would show complete, from a full read of the NSDB: indexes derived from the
    objects themselves, so a wrong index shows too."""
    objects = {(cls.kind, s.value.id): s.value for cls in KINDS for s in nsdb.list(cls.kind)}
    members = indexes.expected(objects.values())
    got = reach(host_id, lambda k, i: objects.get((k, i)), lambda n, k: members.get((n, k), set()))
    return {k: objects[k] for k in got.objects if k in objects}, got.complete


def cache_load(cache: TopologyCache) -> tuple[dict[Key, StoredObject], set[str]]:
    held = {k: v for k, v in cache.held().items() if k[0] not in WHOLE_KINDS}
    with cache.state.lock:
        return held, set(cache.state.complete)


class World:
    """Applies numbered operations to a small topology of one test example."""

    def __init__(self, nsdb: Nsdb, hosts: list[str]) -> None:
        self.nsdb = nsdb
        self.hosts = hosts
        self.ids: dict[str, list[str]] = {c.kind: [] for c in KINDS}
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

    def apply(self, op: str, a: int, b: int) -> None:
        nsdb = self.nsdb
        if op == "bridge":
            self._create(Bridge(name=f"b{a}"))
        elif op == "router":
            self._create(Router(name=f"r{a}"))
        elif op == "port":
            devices = [("Bridge", d) for d in self.ids["bridges"]]
            devices += [("Router", d) for d in self.ids["routers"]]
            if not devices:
                return
            type_, device = devices[a % len(devices)]
            if type_ == "Router":
                self.net += 1
                net = f"10.{self.net // 250}.{self.net % 250}"
                port = Port(
                    device_id=device, type="Router", port_address=f"{net}.1",
                    network_address=f"{net}.0", network_length=24,
                )  # fmt: skip
            else:
                port = Port(device_id=device, type="Bridge")
            self._create(port)
        elif op in ("link", "unlink", "bind", "unbind", "delete_port"):
            port = self._get("ports", self._pick("ports", a))
            if port is None:
                return
            if op == "delete_port":
                nsdb.delete("ports", port.id)
                self.ids["ports"].remove(port.id)
            elif op == "bind" and port.peer_id is None:
                host = self.hosts[b % len(self.hosts)]
                nsdb.update(port.model_copy(update={"host_id": host, "interface_name": "tap"}))
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


def check_script(nsdb: Nsdb, script: list[tuple[str, int, int]], timeout: float = 10.0) -> None:
    me, other = new_id(), new_id()
    cache = TopologyCache(nsdb, me, lambda update: None)
    cache.start()
    world = World(nsdb, [me, other])
    try:
        for op, a, b in script:
            world.apply(op, a, b)
            expected = fresh_load(nsdb, me)
            wait_until(
                lambda: cache_load(cache) == expected,  # noqa: B023 (used at once)
                timeout,
                interval=0.005,
                what=f"the cache to equal a fresh load after {op}",
            )
            # Nothing else is watched either: no leaked subscription.
            assert cache.wanted() == set(expected[0]) | _missing(cache, expected[0])
    finally:
        cache.close()


def _missing(cache: TopologyCache, held: dict[Any, Any]) -> set[Any]:
    """Keys the closure names that do not exist (a dangling reference): still watched,
    so that they load if they appear."""
    return {k for k in cache.wanted() if k not in held and cache.get(*k) is None}
