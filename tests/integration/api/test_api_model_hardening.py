"""Issue 13 items 3-6 through the API: limits, what the DHCP server cannot serve,
unprintable text and single-object sanity checks answer 400/422 with a message naming
the field and the rule, and what older versions stored stays readable."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from api_helpers import Api

from tessera.model import Bridge, Chain, DhcpSubnet, IpAddrGroup, PortGroup, TunnelZone, new_id
from tessera.model import limits as L
from tessera.model.limits import MAX_DNS_SERVERS, MAX_OPT121_BYTES
from tessera.nsdb.store import TopologyStore, dhcp_subnet_id

UNPRINTABLE = {
    "NUL": "\x00",
    "ESC": "\x1b",
    "newline": "\n",
    "RLO": "\u202e",
    "RLI": "\u2067",
    "line separator": "\u2028",
    "zero width space": "\u200b",
}


@pytest.mark.parametrize("field", ["name", "tenant_id"])
def test_names_with_unprintable_characters_are_refused(api: Api, field: str) -> None:
    bridge = api.bridge(name="fine")
    for char in UNPRINTABLE.values():
        message = api.post("/bridges", {field: f"a{char}b"}, status=422)
        assert message.startswith(f"{field}: contains the control or format character ")
        assert f"U+{ord(char):04X}" in message and char not in message
        for path in ("/routers", "/chains", "/port_groups"):
            api.post(path, {field: f"{char}x"}, status=422)
        if field == "name":
            api.post("/ip_addr_groups", {"name": f"x{char}"}, status=422)
            api.post("/tunnel_zones", {"name": f"x{char}"}, status=422)
        api.put(f"/bridges/{bridge['id']}", {**bridge, field: f"b{char}"}, status=422)
    assert [b["id"] for b in api.get("/bridges")] == [bridge["id"]]


def test_interface_names_linux_refuses_are_refused(api: Api) -> None:
    host_id = new_id()
    TopologyStore(api.nsdb).register_host(host_id, "h1", ["198.18.0.1"])
    port = api.bridge_port(api.bridge())
    bindings = f"/hosts/{host_id}/ports"
    for name in ("a\x00b", "tap 0", "a/b", "eth0:1", "..", "x" * 16, "tap\u202e", "tap0\n"):
        message = api.post(bindings, {"port_id": port["id"], "interface_name": name}, status=422)
        assert message.startswith("interface_name: "), message
    assert api.get(bindings) == []
    api.post(bindings, {"port_id": port["id"], "interface_name": "tap0"})


def _subnet(api: Api, **fields: Any) -> tuple[str, dict[str, Any]]:
    bridge = api.bridge()
    path = f"/bridges/{bridge['id']}/dhcp_subnets"
    body = {"subnet_prefix": "10.0.0.0", "subnet_length": 24, "default_gateway": "10.0.0.1"}
    return path, body | fields


def test_dhcp_configuration_the_server_cannot_send_is_refused(api: Api) -> None:
    path, body = _subnet(api)
    route = {
        "destination_prefix": "172.16.0.1",
        "destination_length": 12,
        "gateway_addr": "10.0.0.1",
    }
    # A rule the schema cannot state: 400 (an invalid object), not 422.
    message = api.post(path, body | {"opt121_routes": [route]}, status=400)
    assert "destination_prefix 172.16.0.1 has host bits set for /12" in message
    many = ["10.0.0.53"] * 20_000
    message = api.post(path, body | {"dns_server_addrs": many}, status=422)
    assert message.startswith(f"dns_server_addrs: List should have at most {MAX_DNS_SERVERS} items")
    routes = [
        {
            "destination_prefix": f"10.9.{i}.{i}",
            "destination_length": 32,
            "gateway_addr": "10.0.0.1",
        }
        for i in range(28)
    ]
    message = api.post(path, body | {"opt121_routes": routes}, status=400)
    assert f"more than the {MAX_OPT121_BYTES} bytes of one DHCP option" in message
    # Within the bounds: accepted (27 routes of 9 bytes and the default route, 248 bytes).
    api.post(
        path, body | {"opt121_routes": routes[:27], "dns_server_addrs": many[:MAX_DNS_SERVERS]}
    )


@pytest.mark.parametrize("length", [31, 32])
def test_dhcp_subnets_of_31_and_32_bits_are_refused(api: Api, length: int) -> None:
    path, body = _subnet(api)
    body |= {"subnet_length": length, "default_gateway": None}
    message = api.post(path, body, status=422)
    assert message == "subnet_length: Input should be less than or equal to 30"
    created = api.post(path, {"subnet_prefix": "10.0.0.0", "subnet_length": 30})
    api.put(f"{path}/10.0.0.0_30", created | {"subnet_length": length}, status=422)


def test_dhcp_hosts_a_client_cannot_use_are_refused(api: Api) -> None:
    path, body = _subnet(api)
    api.post(path, body)
    hosts = f"{path}/10.0.0.0_24/hosts"
    lease = {"mac_addr": "02:00:00:00:00:07", "ip_addr": "10.0.0.7", "name": "vm7"}
    # A unicast MAC and an address in the subnet are rules the schema cannot state: 400.
    for mac, fragment in (
        ("01:00:5e:00:00:07", "mac_addr: 01:00:5e:00:00:07 is a multicast address"),
        ("ff:ff:ff:ff:ff:ff", "mac_addr: ff:ff:ff:ff:ff:ff is a broadcast address"),
        ("00:00:00:00:00:00", "mac_addr: 00:00:00:00:00:00 is not a usable MAC"),
    ):
        assert fragment in api.post(hosts, lease | {"mac_addr": mac}, status=400)
    assert "not a host name" in api.post(hosts, lease | {"name": "vm 7"}, status=422)
    api.post(hosts, lease)
    for ip, fragment in (
        ("10.0.0.1", "10.0.0.1 is the subnet's default_gateway"),
        ("10.0.0.0", "10.0.0.0 is the network address of 10.0.0.0/24"),
        ("10.0.0.255", "10.0.0.255 is the broadcast address of 10.0.0.0/24"),
    ):
        other = {"mac_addr": "02:00:00:00:00:08", "ip_addr": ip}
        assert fragment in api.post(hosts, other, status=400)
        # Changing an existing lease is checked the same way.
        assert fragment in api.put(
            f"{hosts}/{lease['mac_addr']}", lease | {"ip_addr": ip}, status=400
        )
    assert [h["ip_addr"] for h in api.get(hosts)] == ["10.0.0.7"]


def test_router_ports_nothing_could_reach_are_refused(api: Api) -> None:
    router = api.router()
    ports = f"/routers/{router['id']}/ports"
    body = {"port_address": "10.0.0.1", "network_address": "10.0.0.0", "network_length": 24}
    port = api.post(ports, body)
    for fields, fragment in (
        ({"port_mac": "01:00:5e:00:00:01"}, "port_mac: 01:00:5e:00:00:01 is a multicast address"),
        ({"port_mac": "ff:ff:ff:ff:ff:ff"}, "port_mac: ff:ff:ff:ff:ff:ff is a broadcast address"),
        ({"port_mac": "00:00:00:00:00:00"}, "port_mac: 00:00:00:00:00:00 is not a usable MAC"),
        ({"port_address": "10.0.0.0"}, "port_address 10.0.0.0 is the network address"),
        ({"port_address": "10.0.0.255"}, "port_address 10.0.0.255 is the broadcast address"),
        (
            {"port_address": "0.0.0.0", "network_address": "0.0.0.0", "network_length": 0},
            "network_length 0 is not allowed for a router port",
        ),
        (
            {"port_address": "0.0.0.0", "network_address": "0.0.0.0", "network_length": 32},
            "port_address 0.0.0.0 is not a usable address",
        ),
    ):
        assert fragment in api.post(ports, body | fields, status=400)
        assert fragment in api.put(f"/ports/{port['id']}", port | fields, status=400)
    assert [p["id"] for p in api.get(ports)] == [port["id"]]


def test_rules_and_mirrors_match_ethertypes_only(api: Api) -> None:
    chain = api.post("/chains", {"name": "c"})
    rules = f"/chains/{chain['id']}/rules"
    message = api.post(rules, {"type": "drop", "dl_type": 0x05DC}, status=400)
    assert "dl_type 0x05dc is not an EtherType" in message
    api.post(rules, {"type": "drop", "dl_type": 0x0600})
    port = api.bridge_port(api.bridge())
    body = {"to_port_id": port["id"], "conditions": [{"dl_type": 1}]}
    assert "is not an EtherType" in api.post("/mirrors", body, status=400)


def test_what_an_older_version_stored_stays_readable_and_fixable(api: Api) -> None:
    """An object stored before the checks (here written straight to the NSDB) is served
    as it is, and a PUT fixes it."""
    legacy = Bridge.model_construct(id=new_id(), name="evil\x1b[2Jname", tenant_id=None)
    api.nsdb.create(legacy)
    shown = api.get(f"/bridges/{legacy.id}")
    assert shown["name"] == "evil\x1b[2Jname"
    assert [b["id"] for b in api.get("/bridges")] == [legacy.id]
    api.bridge_port(shown)  # the store copies it (ports, mirrors...) without complaint
    fixed = api.put(f"/bridges/{legacy.id}", shown | {"name": "fixed"})
    assert fixed["name"] == "fixed"


def _ids(n: int) -> list[str]:
    return [new_id() for _ in range(n)]


def test_member_operations_stop_at_the_limit(api: Api) -> None:
    """Lists the store grows one member at a time: a full one (written straight to the
    NSDB, to keep the test quick) refuses the next member with 400 naming the limit."""
    port = api.bridge_port(api.bridge())
    group = PortGroup(port_ids=_ids(L.MAX_PORT_GROUP_MEMBERS))
    chain = Chain(rule_ids=_ids(L.MAX_RULES_PER_CHAIN))
    addrs = IpAddrGroup(
        addrs=[f"10.{i >> 8}.{i & 255}.1" for i in range(L.MAX_IP_ADDR_GROUP_MEMBERS)]
    )
    zone = TunnelZone(
        hosts=[{"host_id": h, "ip_address": "198.18.0.1"} for h in _ids(L.MAX_TUNNEL_ZONE_HOSTS)]
    )
    bridge = api.bridge()
    first = ipaddress.IPv4Address("10.1.0.10")
    leases = [
        {"mac_addr": f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}", "ip_addr": str(first + i)}
        for i in range(L.MAX_DHCP_HOSTS)
    ]
    subnet = DhcpSubnet(
        id=dhcp_subnet_id(bridge["id"], "10.1.0.0", 16), bridge_id=bridge["id"],
        subnet_prefix="10.1.0.0", subnet_length=16, hosts=leases,
    )  # fmt: skip
    for obj in (group, chain, addrs, zone, subnet):
        api.nsdb.create(obj)
    host_id = new_id()
    TopologyStore(api.nsdb).register_host(host_id, "h1", ["198.18.0.9"])
    for path, body, field, limit in (
        (f"/port_groups/{group.id}/ports", {"port_id": port["id"]}, "port_ids",
         L.MAX_PORT_GROUP_MEMBERS),
        (f"/chains/{chain.id}/rules", {"type": "drop"}, "rule_ids", L.MAX_RULES_PER_CHAIN),
        (f"/ip_addr_groups/{addrs.id}/ip_addrs", {"addr": "192.0.2.1"}, "addrs",
         L.MAX_IP_ADDR_GROUP_MEMBERS),
        (f"/tunnel_zones/{zone.id}/hosts", {"host_id": host_id, "ip_address": "198.18.0.9"},
         "hosts", L.MAX_TUNNEL_ZONE_HOSTS),
        (f"/bridges/{bridge['id']}/dhcp_subnets/10.1.0.0_16/hosts",
         {"mac_addr": "02:00:00:00:ff:ff", "ip_addr": "10.1.255.1"}, "hosts", L.MAX_DHCP_HOSTS),
    ):  # fmt: skip
        message = api.post(path, body, status=400)
        assert f"{field}: List should have at most {limit} items" in message, message
