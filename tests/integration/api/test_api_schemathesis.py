"""Property-based conformance of the API to its own OpenAPI schema (schemathesis, ASGI
in-process): for bounded generated requests to every operation, no server error, every
status documented, every response body valid against the documented schema.

Generated ids rarely name anything, so each case is sent twice: as generated, and
with its path ids replaced by those of a small seeded topology (re-seeded when a
generated DELETE removed part of it), which reaches the handlers' real work.
"""

from __future__ import annotations

import warnings
from typing import Any

from hypothesis import HealthCheck, settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

from tessera.api.app import create_app
from tessera.model import (
    Bridge,
    Chain,
    DhcpHost,
    DhcpSubnet,
    Host,
    IpAddrGroup,
    Port,
    PortGroup,
    Route,
    Router,
    Rule,
    TunnelZone,
    TunnelZoneHost,
)
from tessera.nsdb.errors import NsdbError
from tessera.nsdb.memory import MemoryNsdb
from tessera.nsdb.store import TopologyStore

NSDB = MemoryNsdb()
APP = create_app(NSDB)
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class Seeds:
    """One object of every kind, linked together; recreated when something is gone."""

    def __init__(self, store: TopologyStore) -> None:
        self.store = store
        self._ids: dict[str, str] = {}

    def _alive(self) -> bool:
        checks = (
            (Bridge, "bridge_id"), (Router, "router_id"), (Port, "port_id"), (Route, "route_id"),
            (Chain, "chain_id"), (Rule, "rule_id"), (PortGroup, "port_group_id"),
            (IpAddrGroup, "ip_addr_group_id"), (Host, "host_id"), (TunnelZone, "tunnel_zone_id"),
        )  # fmt: skip
        try:
            for cls, key in checks:
                self.store.get(cls, self._ids[key])
            self.store.dhcp_host(self._ids["bridge_id"], "10.0.0.0_24", "02:00:00:00:00:01")
        except (KeyError, NsdbError):
            return False
        return True

    def ids(self) -> dict[str, str]:
        if not self._alive():
            self._seed()
        return dict(self._ids)

    def _seed(self) -> None:
        s = self.store
        bridge = s.create(Bridge(name="seed"))
        router = s.create(Router(name="seed"))
        port = s.create(
            Port(device_id=router.id, type="Router", port_address="10.0.0.1",
                 network_address="10.0.0.0", network_length=24)
        )  # fmt: skip
        route = s.create(Route(router_id=router.id, dst_network_addr="0.0.0.0",
                               dst_network_length=0, next_hop_port=port.id))  # fmt: skip
        chain = s.create(Chain(name="seed"))
        rule = s.create(Rule(chain_id=chain.id, type="accept"))
        group = s.create(PortGroup(name="seed"))
        s.add_port_group_port(group.id, port.id)
        addrs = s.create(IpAddrGroup(name="seed"))
        s.add_ip_addr(addrs.id, "10.0.0.1")
        host = s.register_host(self._ids.get("host_id") or Host().id, "seed", ["198.18.0.1"])
        zone = s.create(TunnelZone(name="seed"))
        s.add_tunnel_zone_host(zone.id, TunnelZoneHost(host_id=host.id, ip_address="198.18.0.1"))
        s.create(DhcpSubnet(bridge_id=bridge.id, subnet_prefix="10.0.0.0", subnet_length=24))
        s.add_dhcp_host(bridge.id, "10.0.0.0_24", DhcpHost(mac_addr="02:00:00:00:00:01",
                                                           ip_addr="10.0.0.10"))  # fmt: skip
        self._ids = {
            "bridge_id": bridge.id, "router_id": router.id, "port_id": port.id,
            "route_id": route.id, "chain_id": chain.id, "rule_id": rule.id,
            "port_group_id": group.id, "ip_addr_group_id": addrs.id, "host_id": host.id,
            "tunnel_zone_id": zone.id, "subnet": "10.0.0.0_24", "mac": "02:00:00:00:00:01",
            "addr": "10.0.0.1",
        }  # fmt: skip


SEEDS = Seeds(TopologyStore(NSDB))


@SCHEMA.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)
    if case.path_parameters:
        seeded = SEEDS.ids()
        case.path_parameters = {k: seeded.get(k, v) for k, v in case.path_parameters.items()}
        case.call_and_validate(checks=CHECKS)
