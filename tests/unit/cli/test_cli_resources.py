"""What each resource command sends: method, path and body, option by option."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from cli_fake_api import FakeApi
from cli_harness import Run

B = "11111111-1111-4111-8111-111111111111"  # a bridge
R = "22222222-2222-4222-8222-222222222222"  # a router
P = "33333333-3333-4333-8333-333333333333"  # a port
Q = "44444444-4444-4444-8444-444444444444"  # another port
C = "55555555-5555-4555-8555-555555555555"  # a chain
C2 = "66666666-6666-4666-8666-666666666666"  # another chain
G = "77777777-7777-4777-8777-777777777777"  # a group
H = "88888888-8888-4888-8888-888888888888"  # a host
Z = "99999999-9999-4999-8999-999999999999"  # a tunnel zone
N = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"  # an id chosen by the client


def _sent(api: FakeApi, run: Run, args: str) -> tuple[str, str, Any]:
    out = run(*args.split())
    assert out.exit_code == 0, out.stderr
    write = api.writes()[-1]
    return write.method, write.path, write.body


CREATES = [
    ("bridge create --name b1 --tenant-id acme --down", "/bridges",
     {"name": "b1", "tenant_id": "acme", "admin_state_up": False}),
    (f"bridge create --id {N} --inbound-filter-id {C} --outbound-filter-id {C2}", "/bridges",
     {"id": N, "inbound_filter_id": C, "outbound_filter_id": C2}),
    ("router create --name r1 --admin-state-up", "/routers",
     {"name": "r1", "admin_state_up": True}),
    (f"bridge port create {B} --vlan-id 100", f"/bridges/{B}/ports", {"vlan_id": 100}),
    (f"bridge port create {B}", f"/bridges/{B}/ports", {}),
    (f"router port create {R} --address 10.0.0.1/24 --mac 02:AA:bb:cc:dd:ee",
     f"/routers/{R}/ports",
     {"port_address": "10.0.0.1", "network_address": "10.0.0.0", "network_length": 24,
      "port_mac": "02:aa:bb:cc:dd:ee"}),
    (f"route create {R} --dst 0.0.0.0/0 --next-hop-port {P} --gateway 10.0.0.254",
     f"/routers/{R}/routes",
     {"dst_network_addr": "0.0.0.0", "dst_network_length": 0, "next_hop_port": P,
      "next_hop_gateway": "10.0.0.254"}),
    (f"route create {R} --dst 192.0.2.0/24 --src 10.0.0.0/8 --type blackhole --weight 7",
     f"/routers/{R}/routes",
     {"dst_network_addr": "192.0.2.0", "dst_network_length": 24, "src_network_addr": "10.0.0.0",
      "src_network_length": 8, "type": "BlackHole", "weight": 7}),
    ("chain create --name web --tenant-id acme", "/chains", {"name": "web", "tenant_id": "acme"}),
    (f"rule create {C} --type drop --nw-src 10.0.0.0/24 --tp-dst 80:90 --inv-nw-src "
     "--position 2 --nw-proto tcp", f"/chains/{C}/rules",
     {"type": "drop", "nw_src_address": "10.0.0.0", "nw_src_length": 24, "inv_nw_src": True,
      "tp_dst": {"start": 80, "end": 90}, "position": 2, "nw_proto": 6}),
    (f"rule create {C} --type accept --in-ports {P},{Q} --inv-in-ports --out-ports {Q} "
     f"--port-group {G} --inv-port-group --ip-addr-group-src {G} --ip-addr-group-dst {G} "
     "--dl-type arp --inv-dl-type --dl-src 02:00:00:00:00:01 --dl-src-mask ff:ff:ff:00:00:00 "
     "--dl-dst 02:00:00:00:00:02 --dl-dst-mask ff:ff:ff:ff:ff:ff --inv-dl-src --inv-dl-dst "
     "--nw-dst 10.9.9.9 --inv-nw-dst --inv-nw-proto --nw-proto 17 --tp-src 53 --inv-tp-src "
     "--inv-tp-dst --tp-dst 1000-2000 --fragment-policy unfragmented --match-return-flow",
     f"/chains/{C}/rules",
     {"type": "accept", "in_ports": [P, Q], "inv_in_ports": True, "out_ports": [Q],
      "port_group": G, "inv_port_group": True, "ip_addr_group_src": G, "ip_addr_group_dst": G,
      "dl_type": 0x0806, "inv_dl_type": True, "dl_src": "02:00:00:00:00:01",
      "dl_src_mask": "ff:ff:ff:00:00:00", "dl_dst": "02:00:00:00:00:02",
      "dl_dst_mask": "ff:ff:ff:ff:ff:ff", "inv_dl_src": True, "inv_dl_dst": True,
      "nw_dst_address": "10.9.9.9", "nw_dst_length": 32, "inv_nw_dst": True,
      "inv_nw_proto": True, "nw_proto": 17, "tp_src": {"start": 53, "end": 53},
      "inv_tp_src": True, "inv_tp_dst": True, "tp_dst": {"start": 1000, "end": 2000},
      "fragment_policy": "unfragmented", "match_return_flow": True}),
    (f"rule create {C} --type jump --jump-chain-id {C2} --match-forward-flow",
     f"/chains/{C}/rules", {"type": "jump", "jump_chain_id": C2, "match_forward_flow": True}),
    (f"rule create {C} --type snat --nat-target 198.51.100.1:1024-65535 --flow-action continue",
     f"/chains/{C}/rules",
     {"type": "snat", "flow_action": "continue",
      "nat_targets": [{"address_from": "198.51.100.1", "address_to": "198.51.100.1",
                       "port_from": 1024, "port_to": 65535}]}),
    (f"rule create {C} --type DNAT --nat-target 10.0.0.5 --nat-target 10.0.0.6",
     f"/chains/{C}/rules",
     {"type": "dnat", "nat_targets": [{"address_from": "10.0.0.5", "address_to": "10.0.0.5"},
                                      {"address_from": "10.0.0.6", "address_to": "10.0.0.6"}]}),
    ("port-group create --name web --stateful", "/port_groups", {"name": "web", "stateful": True}),
    ("ip-addr-group create --name admins", "/ip_addr_groups", {"name": "admins"}),
    ("tunnel-zone create --name tz --type VXLAN", "/tunnel_zones", {"name": "tz", "type": "vxlan"}),
    (f"dhcp subnet create {B} 10.0.0.0/24 --gateway 10.0.0.1 --server-addr 10.0.0.2 "
     "--dns 10.0.0.3,10.0.0.4 --dns 10.0.0.5 --mtu 1450 --opt121-route 172.16.0.0/16,10.0.0.254 "
     "--disabled", f"/bridges/{B}/dhcp_subnets",
     {"subnet_prefix": "10.0.0.0", "subnet_length": 24, "default_gateway": "10.0.0.1",
      "server_addr": "10.0.0.2", "dns_server_addrs": ["10.0.0.3", "10.0.0.4", "10.0.0.5"],
      "interface_mtu": 1450, "enabled": False,
      "opt121_routes": [{"destination_prefix": "172.16.0.0", "destination_length": 16,
                         "gateway_addr": "10.0.0.254"}]}),
    (f"dhcp host create {B} 10.0.0.0_24 --mac 02:00:00:00:00:09 --ip 10.0.0.9 --name vm9",
     f"/bridges/{B}/dhcp_subnets/10.0.0.0_24/hosts",
     {"mac_addr": "02:00:00:00:00:09", "ip_addr": "10.0.0.9", "name": "vm9"}),
    (f"dhcp-subnet create {B} 10.1.0.0/16", f"/bridges/{B}/dhcp_subnets",
     {"subnet_prefix": "10.1.0.0", "subnet_length": 16}),
]  # fmt: skip


@pytest.mark.parametrize(("args", "path", "body"), CREATES, ids=[c[0][:40] for c in CREATES])
def test_create_sends(api: FakeApi, run: Run, args: str, path: str, body: dict[str, Any]) -> None:
    assert _sent(api, run, args) == ("POST", path, body)


def test_port_create_finds_the_device_kind(api: FakeApi, run: Run) -> None:
    api.add("/bridges", id=B)
    api.add("/routers", id=R)
    assert _sent(api, run, f"port create --device {B} --vlan-id 3") == (
        "POST", f"/bridges/{B}/ports", {"vlan_id": 3},
    )  # fmt: skip
    assert _sent(api, run, f"port create --device {R} --address 192.168.1.1/24")[:2] == (
        "POST", f"/routers/{R}/ports",
    )  # fmt: skip
    bad = run("port", "create", "--device", B, "--address", "10.0.0.1/24")
    bad.assert_one_line_error("--address and --mac apply to router ports only", code=2)
    bad = run("port", "create", "--device", R, "--address", "10.0.0.1/24", "--vlan-id", "2")
    bad.assert_one_line_error("--vlan-id applies to bridge ports only", code=2)
    run("port", "create", "--device", P).assert_one_line_error(f"no bridge or router has id {P}")


UPDATES = [
    ("/bridges", B, {"name": "a", "admin_state_up": True, "inbound_filter_id": C},
     f"bridge update {B} --name b --inbound-filter-id none --down",
     {"name": "b", "admin_state_up": False, "inbound_filter_id": None}),
    ("/routers", R, {"name": "r", "tenant_id": "t"}, f"router update {R} --tenant-id u",
     {"name": "r", "tenant_id": "u"}),
    ("/ports", P, {"type": "Bridge", "device_id": B, "admin_state_up": True},
     f"port update {P} --down --outbound-filter-id {C}",
     {"type": "Bridge", "device_id": B, "admin_state_up": False, "outbound_filter_id": C}),
    ("/routes", P, {"dst_network_addr": "0.0.0.0", "dst_network_length": 0, "weight": 100,
                    "next_hop_gateway": "10.0.0.1"},
     f"route update {P} --weight 5 --gateway none",
     {"dst_network_addr": "0.0.0.0", "dst_network_length": 0, "weight": 5,
      "next_hop_gateway": None}),
    ("/chains", C, {"name": "c", "rule_ids": [P]}, f"chain update {C} --name d",
     {"name": "d", "rule_ids": [P]}),
    ("/rules", P, {"type": "drop", "tp_dst": {"start": 1, "end": 2}, "nw_src_address": "1.0.0.0",
                   "nw_src_length": 8, "in_ports": [Q], "position": 1},
     f"rule update {P} --tp-dst none --nw-src none --in-ports none --type accept --position 3",
     {"type": "accept", "tp_dst": None, "nw_src_address": None, "nw_src_length": None,
      "in_ports": [], "position": 3}),
    ("/port_groups", G, {"name": "g", "stateful": False, "port_ids": []},
     f"port-group update {G} --stateful", {"name": "g", "stateful": True, "port_ids": []}),
    ("/ip_addr_groups", G, {"name": "g", "addrs": []}, f"ip-addr-group update {G} --name h",
     {"name": "h", "addrs": []}),
    ("/tunnel_zones", Z, {"name": "z", "type": "vxlan", "hosts": []},
     f"tunnel-zone update {Z} --name y", {"name": "y", "type": "vxlan", "hosts": []}),
    (f"/bridges/{B}/dhcp_subnets", "10.0.0.0_24",
     {"subnet_prefix": "10.0.0.0", "subnet_length": 24, "dns_server_addrs": ["1.1.1.1"],
      "enabled": True},
     f"dhcp subnet update {B} 10.0.0.0/24 --dns none --enabled --mtu 9000",
     {"subnet_prefix": "10.0.0.0", "subnet_length": 24, "dns_server_addrs": [],
      "enabled": True, "interface_mtu": 9000}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("collection", "oid", "stored", "args", "expected"),
    UPDATES,
    ids=[u[3][:40] for u in UPDATES],
)
def test_update_puts_the_whole_object_with_the_changes(
    api: FakeApi,
    run: Run,
    collection: str,
    oid: str,
    stored: dict[str, Any],
    args: str,
    expected: dict[str, Any],
) -> None:
    api.add(collection, id=oid, **stored)
    method, path, body = _sent(api, run, args)
    assert (method, path) == ("PUT", f"{collection}/{oid}")
    assert body == {"id": oid, **expected}
    assert [s.method for s in api.sent] == ["GET", "PUT"]


SIMPLE = [
    (f"bridge show {B}", "GET", f"/bridges/{B}", None),
    (f"bridge delete {B}", "DELETE", f"/bridges/{B}", None),
    (f"router show {R}", "GET", f"/routers/{R}", None),
    (f"router delete {R}", "DELETE", f"/routers/{R}", None),
    (f"bridge port list {B}", "GET", f"/bridges/{B}/ports", None),
    (f"router port list {R}", "GET", f"/routers/{R}/ports", None),
    (f"port show {P}", "GET", f"/ports/{P}", None),
    (f"port delete {P}", "DELETE", f"/ports/{P}", None),
    (f"port link {P} {Q}", "POST", f"/ports/{P}/link", {"peer_id": Q}),
    (f"link {P} {Q}", "POST", f"/ports/{P}/link", {"peer_id": Q}),
    (f"port unlink {P}", "DELETE", f"/ports/{P}/link", None),
    (f"route list {R}", "GET", f"/routers/{R}/routes", None),
    (f"route show {P}", "GET", f"/routes/{P}", None),
    (f"route delete {P}", "DELETE", f"/routes/{P}", None),
    ("chain list", "GET", "/chains", None),
    (f"chain delete {C}", "DELETE", f"/chains/{C}", None),
    (f"rule list {C}", "GET", f"/chains/{C}/rules", None),
    (f"rule show {P}", "GET", f"/rules/{P}", None),
    (f"rule delete {P}", "DELETE", f"/rules/{P}", None),
    ("port-group list", "GET", "/port_groups", None),
    (f"port-group show {G}", "GET", f"/port_groups/{G}", None),
    (f"port-group delete {G}", "DELETE", f"/port_groups/{G}", None),
    (f"port-group add-port {G} {P}", "POST", f"/port_groups/{G}/ports", {"port_id": P}),
    (f"port-group remove-port {G} {P}", "DELETE", f"/port_groups/{G}/ports/{P}", None),
    ("ip-addr-group list", "GET", "/ip_addr_groups", None),
    (f"ip-addr-group show {G}", "GET", f"/ip_addr_groups/{G}", None),
    (f"ip-addr-group delete {G}", "DELETE", f"/ip_addr_groups/{G}", None),
    (f"ip-addr-group add-addr {G} 10.0.0.7", "POST", f"/ip_addr_groups/{G}/ip_addrs",
     {"addr": "10.0.0.7"}),
    (f"ip-addr-group remove-addr {G} 10.0.0.7", "DELETE", f"/ip_addr_groups/{G}/ip_addrs/10.0.0.7",
     None),
    ("host list", "GET", "/hosts", None),
    (f"host show {H}", "GET", f"/hosts/{H}", None),
    (f"host bindings {H}", "GET", f"/hosts/{H}/ports", None),
    (f"host delete {H}", "DELETE", f"/hosts/{H}", None),
    ("tunnel-zone list", "GET", "/tunnel_zones", None),
    (f"tunnel-zone show {Z}", "GET", f"/tunnel_zones/{Z}", None),
    (f"tunnel-zone delete {Z}", "DELETE", f"/tunnel_zones/{Z}", None),
    (f"tunnel-zone add-host {Z} {H} --ip 198.18.0.2", "POST", f"/tunnel_zones/{Z}/hosts",
     {"host_id": H, "ip_address": "198.18.0.2"}),
    (f"tunnel-zone remove-host {Z} {H}", "DELETE", f"/tunnel_zones/{Z}/hosts/{H}", None),
    (f"bridge mac-table {B}", "GET", f"/bridges/{B}/mac_table", None),
    (f"router arp-table {R}", "GET", f"/routers/{R}/arp_table", None),
    (f"dhcp subnet list {B}", "GET", f"/bridges/{B}/dhcp_subnets", None),
    (f"dhcp subnet show {B} 10.0.0.0/24", "GET", f"/bridges/{B}/dhcp_subnets/10.0.0.0_24", None),
    (f"dhcp subnet delete {B} 10.0.0.0/24", "DELETE", f"/bridges/{B}/dhcp_subnets/10.0.0.0_24",
     None),
    (f"dhcp host list {B} 10.0.0.0/24", "GET", f"/bridges/{B}/dhcp_subnets/10.0.0.0_24/hosts",
     None),
    (f"dhcp host delete {B} 10.0.0.0/24 02:00:00:00:00:09", "DELETE",
     f"/bridges/{B}/dhcp_subnets/10.0.0.0_24/hosts/02:00:00:00:00:09", None),
    (f"bridges show {B}", "GET", f"/bridges/{B}", None),
    (f"port_groups show {G}", "GET", f"/port_groups/{G}", None),
]  # fmt: skip


@pytest.mark.parametrize(("args", "method", "path", "body"), SIMPLE, ids=[s[0] for s in SIMPLE])
def test_request_of(
    api: FakeApi, run: Run, args: str, method: str, path: str, body: dict[str, Any] | None
) -> None:
    api.on(method, path, 200 if method == "GET" else 204, {} if method == "GET" else None)
    out = run(*args.split())
    assert out.exit_code == 0, out.stderr
    assert (api.last().method, api.last().path, api.last().body) == (method, path, body)


def test_port_list_everywhere_falls_back_to_each_device(api: FakeApi, run: Run) -> None:
    api.add("/bridges", id=B)
    api.add("/routers", id=R)
    api.add(f"/bridges/{B}/ports", id=P, type="Bridge", device_id=B)
    api.add(f"/routers/{R}/ports", id=Q, type="Router", device_id=R, port_address="10.0.0.1",
            network_length=24)  # fmt: skip
    api.on("GET", "/ports", 404, {"detail": "Not Found"})
    assert run("port", "list", "-q").stdout.split() == [P, Q]
    assert run("port", "list", R, "-q").stdout.split() == [Q]
    human = run("port", "list").stdout
    assert "10.0.0.1/24" in human and "Bridge" in human


def test_port_list_uses_the_collection_when_the_api_has_one(api: FakeApi, run: Run) -> None:
    api.on("GET", "/ports", 200, [{"id": P}])
    assert run("port", "list", "-q").stdout.split() == [P]
    assert [s.path for s in api.sent] == ["/ports"]


def test_dhcp_host_show_and_update_by_mac(api: FakeApi, run: Run) -> None:
    host = f"/bridges/{B}/dhcp_subnets/10.0.0.0_24/hosts/02:00:00:00:00:09"
    api.on("GET", host, 200, {"mac_addr": "02:00:00:00:00:09", "ip_addr": "10.0.0.9"})
    out = run("dhcp", "host", "show", B, "10.0.0.0/24", "02:00:00:00:00:09", "--json")
    assert json.loads(out.stdout) == {"mac_addr": "02:00:00:00:00:09", "ip_addr": "10.0.0.9"}
    api.overrides[("PUT", host)] = lambda r: httpx.Response(200, content=r.content)
    out = run("dhcp", "host", "update", B, "10.0.0.0/24", "02-00-00-00-00-09", "--ip", "10.0.0.10")
    assert out.exit_code == 0, out.stderr
    assert (api.last().path, api.last().body) == (
        host,
        {"mac_addr": "02:00:00:00:00:09", "ip_addr": "10.0.0.10"},
    )
    run("dhcp", "host", "show", B, "10.0.0.0/24", "02:00:00:00:00:01").assert_one_line_error(
        "not found", "HTTP 404"
    )


def test_options_after_the_command_and_env_pick_the_api(
    api: FakeApi, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tessera.clikit.session import Session

    monkeypatch.setenv("TESSERA_API", "http://from-env:1/api/v1")
    run("bridge", "list", session=Session(transport=api.transport()))
    assert api.last().host == "from-env"
    run("bridge", "list", "--api", "http://from-option:1/api/v1",
        session=Session(transport=api.transport()))  # fmt: skip
    assert api.last().host == "from-option"
    run("--api", "http://global:1/api/v1", "bridge", "list",
        session=Session(transport=api.transport()))  # fmt: skip
    assert api.last().host == "global"
    monkeypatch.delenv("TESSERA_API")
    run("bridge", "list", session=Session(transport=api.transport()))
    assert api.last().host == "127.0.0.1"
