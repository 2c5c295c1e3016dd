"""The API conforms to its own OpenAPI schema, as an outside schema-based fuzzer
(schemathesis, in-process over ASGI) judges it, on both NSDB backends: every built-in
check (no server error, documented statuses, content types and response bodies, `Allow`
on 405, schema-valid requests accepted, schema-invalid ones rejected...), positive and
negative data, and the stateful phase that follows the OpenAPI links from each create
to the operations on what it created.

"Accepted" is 2xx, 404 or 409 as schemathesis has it, and 400: a 400 is a whole-object
rule the schema cannot state (a router port's address within its network, a port
range's start before its end) or a reference to an object that does not exist. A 422
means the request broke what the schema says, so a schema-valid request must never get
one; that is the check that found the undeclared UUID, IPv4 and MAC formats.

The number of examples is bounded for CI (the file takes about a minute);
`HYPOTHESIS_PROFILE=explore` runs many more, fresh random draws, and also sends
generated cases with their path ids replaced by those of a small seeded topology
(re-seeded when a generated DELETE removed part of it).
"""

from __future__ import annotations

import uuid
import warnings
from typing import Any

from hypothesis import HealthCheck, settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import schemathesis
    import schemathesis.engine
    from schemathesis.config import SchemathesisConfig
    from schemathesis.engine import events

from support.explore import explore_only
from tessera.api.app import create_app
from tessera.model import (
    Bridge,
    Chain,
    DhcpHost,
    DhcpSubnet,
    HealthMonitor,
    Host,
    IpAddrGroup,
    LoadBalancer,
    Pool,
    PoolMember,
    Port,
    PortGroup,
    Route,
    Router,
    Rule,
    TunnelZone,
    TunnelZoneHost,
    Vip,
)
from tessera.nsdb.base import Nsdb
from tessera.nsdb.errors import NsdbError
from tessera.nsdb.memory import MemoryNsdb
from tessera.nsdb.store import TopologyStore
from tessera.placement.backend import PlacementBackend


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
            (LoadBalancer, "load_balancer_id"), (Pool, "pool_id"), (PoolMember, "pool_member_id"),
            (Vip, "vip_id"), (HealthMonitor, "health_monitor_id"),
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
        lb = s.create(LoadBalancer(router_id=router.id))
        monitor = s.create(HealthMonitor())
        pool = s.create(Pool(load_balancer_id=lb.id, health_monitor_id=monitor.id))
        member = s.create(PoolMember(pool_id=pool.id, address="10.0.0.20", protocol_port=80))
        vip = s.create(Vip(load_balancer_id=lb.id, pool_id=pool.id, address="10.0.0.30",
                           protocol_port=80))  # fmt: skip
        self._ids = {
            "bridge_id": bridge.id, "router_id": router.id, "port_id": port.id,
            "route_id": route.id, "chain_id": chain.id, "rule_id": rule.id,
            "port_group_id": group.id, "ip_addr_group_id": addrs.id, "host_id": host.id,
            "tunnel_zone_id": zone.id, "subnet": "10.0.0.0_24", "mac": "02:00:00:00:00:01",
            "addr": "10.0.0.1", "load_balancer_id": lb.id, "pool_id": pool.id,
            "pool_member_id": member.id, "vip_id": vip.id, "health_monitor_id": monitor.id,
        }  # fmt: skip


EXPLORE = not settings().derandomize  # HYPOTHESIS_PROFILE=explore
EXAMPLES = 100 if EXPLORE else 5  # per operation, phase and generation mode

#: Accepted answers to a schema-valid request (see the module docstring for 400).
ACCEPTED = ["2xx", "400", "404", "409"]


def _config(
    mode: str = "all", examples: int = EXAMPLES, *, coverage: bool = True, stateful: bool = True
) -> SchemathesisConfig:
    config: dict[str, Any] = {
        "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}},
        "generation": {"mode": mode, "max-examples": examples, "deterministic": not EXPLORE},
        "phases": {
            "coverage": {"enabled": coverage},
            "stateful": {"enabled": stateful, "max-steps": 40 if EXPLORE else 15},
        },
    }
    if not EXPLORE:
        config["seed"] = 20261203
    return SchemathesisConfig.from_dict(config)


PLACEMENT = "^/api/v1/placement/"


def _findings(
    nsdb: Nsdb, config: SchemathesisConfig, placement: PlacementBackend | None = None
) -> tuple[list[str], int]:
    """Every failure of a whole schemathesis run (all checks) against the API over
    `nsdb`, as the CLI would print them, and the number of scenarios run. Without a
    `placement` backend the placement paths are left out (each answers 503 "not
    configured" by design: tests/integration/placement); with one, only they are run."""
    app = create_app(nsdb, placement=placement)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    if placement is None:
        schema = schema.exclude(path_regex=PLACEMENT)
    else:
        schema = schema.include(path_regex=PLACEMENT)
    found: list[str] = []
    scenarios = 0
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            scenarios += 1
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        found.append(
                            f"{event.phase.value} {failure.operation}: {failure.title}\n"
                            f"{failure.message}\n{check.failure_info.code_sample}"
                        )
        elif isinstance(event, events.NonFatalError | events.FatalError):
            found.append(f"error: {event!r}")
    return found, scenarios


def test_a_schema_fuzzer_finds_nothing(nsdb_factory: Any) -> None:
    """The whole run as an outside tester would make it: examples, coverage (boundary
    values, unsupported methods, missing parameters), fuzzing and the stateful phase.
    On ZooKeeper in CI (time), valid data and no coverage phase: invalid data and
    boundary values are refused by validation before any backend is asked, and the
    memory run covers them; `explore` runs everything on both."""
    full = nsdb_factory.backend == "memory" or EXPLORE
    config = _config("all" if full else "positive", coverage=full)
    found, scenarios = _findings(nsdb_factory(), config)
    assert scenarios > 100
    assert not found, f"{len(found)} findings:\n\n" + "\n\n".join(sorted(set(found))[:20])


_SEEDED_NSDB = MemoryNsdb()
SCHEMA = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(_SEEDED_NSDB), config=_config(examples=20, coverage=False)
)
SEEDS = Seeds(TopologyStore(_SEEDED_NSDB))


@explore_only("schema fuzzing on seeded objects (a minute)")
@SCHEMA.parametrize()
@settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_operations_on_seeded_objects_conform(case: Any) -> None:
    """Generated cases with their path ids replaced by those of real objects: the
    handlers' real work (updates, members, links) rather than 404s. The stateful phase
    above reaches real objects in CI; this wider sweep runs when exploring."""
    if not case.path_parameters:
        return
    seeded = SEEDS.ids()
    case.path_parameters = {k: seeded.get(k, v) for k, v in case.path_parameters.items()}
    case.call_and_validate()


def test_a_schema_fuzzer_finds_nothing_in_placement(cassandra_node: Any) -> None:
    """The same run over the placement paths, against a real Cassandra (its own keyspace):
    valid data, and the coverage phase's boundary values and missing parameters."""
    backend = PlacementBackend(cassandra_node.addresses, f"fuzz_{uuid.uuid4().hex[:10]}")
    nsdb = MemoryNsdb()
    try:
        found, scenarios = _findings(nsdb, _config("all", examples=10), backend)
    finally:
        backend.close()
        nsdb.close()
    assert scenarios > 10
    assert not found, f"{len(found)} findings:\n\n" + "\n\n".join(sorted(set(found))[:20])
