"""A router answers ARP for its floating addresses: those a `dnat` rule of its inbound
filter takes in (one address, by named ports), on those ports, with the port's MAC, so
that a host on the external network reaches a floating IP with no route of its own."""

from __future__ import annotations

from typing import Any

from sim_topo import NOW, Topo, arp_req, ip, mac, parse, ping

from tessera.model import Chain, Port, Router, Rule
from tessera.packet import Arp, mac_from_str
from tessera.simulation import ArpLearned, ExpiryClass, Snapshot, Verdict
from tessera.simulation.arp import ARP_LIFETIME

GW_IN = mac_from_str("02:aa:00:00:00:01")
GW_OUT = mac_from_str("02:aa:00:00:00:02")
OUTER = mac(9)  # 203.0.113.9, a host on the external network
FIP = "203.0.113.10"
FIXED = [{"address_from": "10.0.0.5", "address_to": "10.0.0.5"}]


class Edge:
    """vm 10.0.0.5 (mac 5) on bridge `lan` behind router r (10.0.0.1/24); r's uplink
    203.0.113.1/24 is linked to bridge `ext`, where the external host `outer` is. r's
    inbound filter is `pre`."""

    def __init__(self) -> None:
        t = self.t = Topo()
        lan, ext = t.bridge("lan"), t.bridge("ext")
        self.vm: Port = t.bridge_port(lan)
        self.outer: Port = t.bridge_port(ext)
        lan_link, ext_link = t.bridge_port(lan), t.bridge_port(ext)
        self.r: Router = t.router()
        rp = t.router_port(self.r, "10.0.0.1/24", "02:aa:00:00:00:01")
        self.uplink: Port = t.router_port(self.r, "203.0.113.1/24", "02:aa:00:00:00:02")
        t.link(lan_link, rp)
        t.link(ext_link, self.uplink)
        self.inner: Port = t.get(rp)
        t.route(self.r, "10.0.0.0/24", self.inner)
        t.route(self.r, "203.0.113.0/24", t.get(self.uplink))
        t.learn_mac(lan, mac(5), self.vm)
        t.learn_mac(ext, OUTER, self.outer)
        t.learn_arp(self.r, "10.0.0.5", mac(5))
        self.pre: Chain = t.chain("pre")
        self.r = t.set(self.r, inbound_filter_id=self.pre.id)

    def floating(self, address: str = FIP, **kw: Any) -> Rule:
        """The floating IP's inbound rule, as the Neutron translation writes it."""
        fields: dict[str, Any] = {"in_ports": [self.uplink.id], "nw_dst_address": address,
                                  "nw_dst_length": 32, "nat_targets": FIXED}  # fmt: skip
        return self.t.rule(self.pre, "dnat", **{**fields, **kw})

    def ask(self, target: str, port: Port | None = None, sender: str = "203.0.113.9") -> Any:
        """The external host (or one on `port`'s side) asks who has `target`, broadcast."""
        return self.t.send(port or self.outer, arp_req(OUTER, sender, target))


def _reply(res: Any) -> Arp:
    (reply,) = res.emitted
    frame = parse(reply.frame)
    assert reply.kind == "arp_reply" and isinstance(frame.payload, Arp)
    return frame.payload


def test_an_arp_request_for_a_floating_ip_is_answered_with_the_gateway_port_mac() -> None:
    e = Edge()
    rule = e.floating()
    res = e.ask(FIP)
    assert res.verdict is Verdict.CONSUMED and res.expiry is ExpiryClass.UNCACHED
    (reply,) = res.emitted
    assert reply.port_id == e.outer.id  # back across the external bridge to the asker
    arp = _reply(res)
    assert (arp.sender_mac, arp.sender_ip) == (GW_OUT, ip(FIP))
    assert (arp.target_mac, arp.target_ip) == (OUTER, ip("203.0.113.9"))
    # The answer depends on the inbound filter: its chain and rule tag it.
    assert {e.pre.id, rule.id} <= res.tags
    # The asker is learned, as for a request for the port's own address.
    assert res.state_updates == (ArpLearned(e.r.id, ip("203.0.113.9"), OUTER, NOW + ARP_LIFETIME),)
    # ... and the packet that follows, to that MAC, reaches the VM by its fixed address.
    res = e.t.send(e.outer, ping(OUTER, GW_OUT, "203.0.113.9", FIP))
    (out,) = res.outputs
    assert out.port_id == e.vm.id and out.nw_dst == ip("10.0.0.5")


def test_the_port_address_is_still_answered_as_before() -> None:
    e = Edge()
    e.floating()
    arp = _reply(e.ask("203.0.113.1"))
    assert (arp.sender_mac, arp.sender_ip) == (GW_OUT, ip("203.0.113.1"))


def test_an_address_without_a_floating_rule_is_not_answered() -> None:
    e = Edge()
    e.floating()
    res = e.ask("203.0.113.11")
    assert res.verdict is Verdict.DROP and res.emitted == ()
    assert e.pre.id in res.tags
    assert "not the port's address" in (res.drop_reason or "")


def test_only_the_port_the_rule_takes_the_address_in_by_answers() -> None:
    """A rule for packets coming in by the inner port does not make the uplink answer,
    nor does the inner port answer for an address outside its network."""
    e = Edge()
    e.floating(in_ports=[e.inner.id])
    assert e.ask(FIP).verdict is Verdict.DROP
    e = Edge()
    e.floating()
    res = e.t.send(e.vm, arp_req(mac(5), "10.0.0.5", FIP))
    assert res.verdict is Verdict.DROP and res.emitted == ()


def test_an_address_outside_the_port_network_is_not_answered() -> None:
    e = Edge()
    e.floating("198.51.100.7")
    assert e.ask("198.51.100.7").verdict is Verdict.DROP


def test_rules_that_take_in_no_single_address_do_not_count() -> None:
    """A prefix, an inverted destination or port list, another rule type: none owns an
    address."""
    variants: list[tuple[str, dict[str, Any]]] = [
        ("dnat", {"nw_dst_address": "203.0.113.0", "nw_dst_length": 24}),
        ("dnat", {"inv_nw_dst": True}),
        ("dnat", {"inv_in_ports": True}),
        ("dnat", {"in_ports": []}),
        ("accept", {"nat_targets": []}),
    ]
    for type, changes in variants:
        e = Edge()
        fields: dict[str, Any] = {"in_ports": [e.uplink.id], "nw_dst_address": FIP,
                                  "nw_dst_length": 32, "nat_targets": FIXED}  # fmt: skip
        e.t.rule(e.pre, type, **{**fields, **changes})
        assert e.ask(FIP).verdict is Verdict.DROP, (type, changes)


def test_a_router_without_an_inbound_filter_answers_its_address_only() -> None:
    e = Edge()
    e.r = e.t.set(e.r, inbound_filter_id=None)
    assert e.ask(FIP).verdict is Verdict.DROP
    assert _reply(e.ask("203.0.113.1")).sender_ip == ip("203.0.113.1")


def test_adding_or_removing_the_floating_rule_changes_the_answer() -> None:
    """Snapshots built one from the other (as an agent does, reusing unchanged chains)
    follow the rule: answered while it exists, and for its new address if it moves."""
    e = Edge()
    before = e.t.snapshot()
    rule = e.floating()
    with_rule = Snapshot.from_objects(e.t.objects, previous=before)
    assert with_rule.chains[e.pre.id].dnat_addresses == {ip(FIP): frozenset({e.uplink.id})}
    assert e.ask(FIP).verdict is Verdict.CONSUMED
    e.t.set(rule, nw_dst_address="203.0.113.20")
    moved = Snapshot.from_objects(e.t.objects, previous=with_rule)
    assert moved.chains[e.pre.id].dnat_addresses == {ip("203.0.113.20"): frozenset({e.uplink.id})}
    assert e.ask(FIP).verdict is Verdict.DROP
    assert _reply(e.ask("203.0.113.20")).sender_ip == ip("203.0.113.20")
    e.t.set(e.pre, rule_ids=[])
    del e.t.objects[rule.id]
    gone = Snapshot.from_objects(e.t.objects, previous=moved)
    assert gone.chains[e.pre.id].dnat_addresses == {}
    assert e.ask("203.0.113.20").verdict is Verdict.DROP


def test_a_floating_address_announced_by_its_owner_is_learned_not_answered() -> None:
    """A gratuitous request (sender = target) for a floating address is learned like any
    other: the router never answers a host announcing itself."""
    e = Edge()
    e.floating()
    res = e.ask(FIP, sender=FIP)
    assert res.verdict is Verdict.CONSUMED and res.emitted == ()
