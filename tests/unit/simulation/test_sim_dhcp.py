"""The bridge's DHCP server answers its subnets' hosts locally, with every option."""

from __future__ import annotations

from sim_topo import Topo, dhcp_request, ip, mac, parse

from tessera.model import DhcpSubnet, Port
from tessera.packet import Dhcp, IPv4, Udp, dhcp
from tessera.simulation import ExpiryClass, SimulationResult, Verdict


def dhcp_bridge(**subnet: object) -> tuple[Topo, Port, Port, DhcpSubnet]:
    t = Topo()
    br = t.bridge()
    vm, other = t.bridge_port(br), t.bridge_port(br)
    fields: dict[str, object] = {
        "default_gateway": "10.0.0.1",
        "dns_server_addrs": ["10.0.0.2", "9.9.9.9"],
        "interface_mtu": 1450,
        "opt121_routes": [
            {"destination_prefix": "169.254.169.254", "destination_length": 32,
             "gateway_addr": "10.0.0.3"},
        ],
        "hosts": [{"mac_addr": "02:00:00:00:00:05", "ip_addr": "10.0.0.5", "name": "vm5"}],
    }  # fmt: skip
    fields.update(subnet)
    sub = t.dhcp_subnet(br, "10.0.0.0/24", **fields)
    return t, vm, other, sub


def reply_of(res: SimulationResult) -> tuple[Dhcp, IPv4]:
    (emitted,) = res.emitted
    assert emitted.kind == "dhcp_reply"
    packet = parse(emitted.frame).payload
    assert isinstance(packet, IPv4) and isinstance(packet.payload, Udp)
    message = packet.payload.payload
    assert isinstance(message, Dhcp)
    return message, packet


def test_discover_gets_an_offer_with_every_option() -> None:
    t, vm, _, sub = dhcp_bridge()
    res = t.send(vm, dhcp_request(mac(5), dhcp.DISCOVER))
    assert res.verdict is Verdict.CONSUMED and res.outputs == ()
    assert res.expiry is ExpiryClass.UNCACHED
    assert sub.id in res.tags
    offer, packet = reply_of(res)
    assert offer.message_type == dhcp.OFFER
    assert offer.yiaddr == ip("10.0.0.5")
    assert offer.subnet_mask == ip("255.255.255.0")  # option 1
    assert offer.routers == (ip("10.0.0.1"),)  # option 3
    assert offer.dns_servers == (ip("10.0.0.2"), ip("9.9.9.9"))  # option 6
    assert offer.mtu == 1450  # option 26
    assert offer.lease_time == 86_400  # option 51
    assert offer.server_id == ip("10.0.0.1")  # option 54: the gateway when no server_addr
    # option 121, with the default route added since clients then ignore option 3
    assert offer.classless_routes == (
        (ip("169.254.169.254"), 32, ip("10.0.0.3")),
        (0, 0, ip("10.0.0.1")),
    )
    assert offer.hostname == "vm5"
    assert offer.xid == 0x1234 and offer.chaddr == mac(5)
    assert packet.src == ip("10.0.0.1")


def test_request_gets_an_ack() -> None:
    t, vm, _, _ = dhcp_bridge(server_addr="10.0.0.254")
    frame = dhcp_request(
        mac(5), dhcp.REQUEST, requested_ip=ip("10.0.0.5"), server_id=ip("10.0.0.254")
    )
    ack, _ = reply_of(t.send(vm, frame))
    assert ack.message_type == dhcp.ACK and ack.yiaddr == ip("10.0.0.5")
    assert ack.server_id == ip("10.0.0.254")


def test_request_for_another_address_gets_a_nak() -> None:
    t, vm, _, _ = dhcp_bridge()
    frame = dhcp_request(mac(5), dhcp.REQUEST, requested_ip=ip("10.0.0.77"))
    nak, _ = reply_of(t.send(vm, frame))
    assert nak.message_type == dhcp.NAK and nak.yiaddr == 0


def test_request_to_another_server_is_not_answered() -> None:
    t, vm, _, _ = dhcp_bridge()
    frame = dhcp_request(
        mac(5), dhcp.REQUEST, requested_ip=ip("10.0.0.5"), server_id=ip("10.0.0.99")
    )
    res = t.send(vm, frame)
    assert res.verdict is Verdict.CONSUMED and res.emitted == ()


def test_release_is_consumed_silently() -> None:
    t, vm, _, _ = dhcp_bridge()
    res = t.send(vm, dhcp_request(mac(5), dhcp.RELEASE, ciaddr=ip("10.0.0.5")))
    assert res.verdict is Verdict.CONSUMED and res.emitted == ()


def test_unknown_client_is_bridged_like_any_packet() -> None:
    t, vm, other, _ = dhcp_bridge()
    res = t.send(vm, dhcp_request(mac(6), dhcp.DISCOVER))
    assert res.verdict is Verdict.FORWARD
    assert [o.port_id for o in res.outputs] == [other.id]
    assert res.expiry is ExpiryClass.UNCACHED, "the decision read the DHCP body"


def test_disabled_subnet_does_not_answer() -> None:
    t, vm, _other, _ = dhcp_bridge(enabled=False)
    res = t.send(vm, dhcp_request(mac(5), dhcp.DISCOVER))
    assert res.verdict is Verdict.FORWARD


def test_dhcp_is_answered_before_the_port_filter() -> None:
    t, vm, _, _ = dhcp_bridge()
    chain = t.chain()
    t.rule(chain, "drop", nw_src_address="10.0.0.5", inv_nw_src=True)  # anti-spoofing
    t.set(vm, inbound_filter_id=chain.id)
    res = t.send(vm, dhcp_request(mac(5), dhcp.DISCOVER))
    assert res.verdict is Verdict.CONSUMED


def test_no_routes_option_without_configured_routes() -> None:
    t, vm, _, _ = dhcp_bridge(opt121_routes=[], interface_mtu=None, dns_server_addrs=[])
    offer, _ = reply_of(t.send(vm, dhcp_request(mac(5), dhcp.DISCOVER)))
    assert offer.classless_routes == () and offer.mtu is None and offer.dns_servers == ()
