"""Concurrent Neutron writes: every allocation rewrites its subnet's DHCP subnet and
every child touches its network, so racing writers are serialised by the NSDB's
version checks (retried from fresh reads), never both committed."""

from __future__ import annotations

import threading
from typing import Any

from neutron_helpers import Neutron, dump

from tessera.neutron import networks, ports, subnets
from tessera.neutron.errors import NeutronError

WRITERS = 6


def _race(target: Any, count: int) -> tuple[list[Any], list[BaseException]]:
    results: list[Any] = []
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(i: int) -> None:
        start.wait(10)
        try:
            results.append(target(i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return results, errors


def test_concurrent_allocations_get_distinct_addresses(any_neutron: Neutron) -> None:
    net = any_neutron.network()
    sub = any_neutron.subnet(net["id"], "10.0.0.0/24")
    made, errors = _race(
        lambda i: ports.create(any_neutron.nsdb, {"network_id": net["id"]}, None), WRITERS
    )
    assert not errors
    addresses = [p["fixed_ips"][0]["ip_address"] for p in made]
    assert len(set(addresses)) == WRITERS
    shown = any_neutron.client.get(f"/v2.0/subnets/{sub['id']}").json()["subnet"]
    assert shown["tessera:dhcp_subnet_id"]


def test_racing_for_one_address_one_wins(any_neutron: Neutron) -> None:
    net = any_neutron.network()
    any_neutron.subnet(net["id"], "10.0.0.0/24")
    body = {"network_id": net["id"], "fixed_ips": [{"ip_address": "10.0.0.9"}]}
    made, errors = _race(lambda i: ports.create(any_neutron.nsdb, dict(body), None), 3)
    assert len(made) == 1
    assert [e.type for e in errors if isinstance(e, NeutronError)] == ["IpAddressInUse"] * 2


def test_a_port_racing_its_network_delete_leaves_no_orphan(any_neutron: Neutron) -> None:
    any_neutron.client.get("/v2.0/security-groups")  # the default group a port would make
    before = dump(any_neutron.nsdb)
    net = any_neutron.network()

    def step(i: int) -> Any:
        if i == 0:
            return networks.delete(any_neutron.nsdb, net["id"])
        return ports.create(any_neutron.nsdb, {"network_id": net["id"]}, None)

    _, errors = _race(step, 2)
    remaining = any_neutron.client.get("/v2.0/ports").json()["ports"]
    if remaining:  # the port won: the delete saw it and refused
        assert [e.type for e in errors if isinstance(e, NeutronError)] == ["NetworkInUse"]
        any_neutron.client.delete(f"/v2.0/ports/{remaining[0]['id']}")
        any_neutron.client.delete(f"/v2.0/networks/{net['id']}")
    else:  # the delete won: the port was refused, nothing of it was written
        assert [e.type for e in errors if isinstance(e, NeutronError)] == ["NetworkNotFound"]
    assert dump(any_neutron.nsdb) == before


def test_a_port_racing_its_subnet_delete_leaves_no_orphan(any_neutron: Neutron) -> None:
    net = any_neutron.network()
    sub = any_neutron.subnet(net["id"], "10.0.0.0/24")

    def step(i: int) -> Any:
        if i == 0:
            return subnets.delete(any_neutron.nsdb, sub["id"])
        body = {"network_id": net["id"], "fixed_ips": [{"subnet_id": sub["id"]}]}
        return ports.create(any_neutron.nsdb, body, None)

    _, errors = _race(step, 2)
    remaining = any_neutron.client.get("/v2.0/ports").json()["ports"]
    subnet_ids = [s["id"] for s in any_neutron.client.get("/v2.0/subnets").json()["subnets"]]
    if remaining:  # the port won: it has its address, the subnet is still there
        assert subnet_ids == [sub["id"]]
        assert [e.type for e in errors if isinstance(e, NeutronError)] == ["SubnetInUse"]
    else:
        assert subnet_ids == []
        assert [e.type for e in errors if isinstance(e, NeutronError)] == ["SubnetNotFound"]
