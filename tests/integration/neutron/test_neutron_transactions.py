"""Each Neutron write is one NSDB commit (the Neutron object and its tessera twins
together), and a refused write commits nothing."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from neutron_helpers import Neutron

from tessera.neutron.app import create_neutron_app
from tessera.nsdb.base import Op
from tessera.nsdb.memory import MemoryNsdb


class CountingNsdb(MemoryNsdb):
    def __init__(self) -> None:
        super().__init__()
        self.commits: list[list[str]] = []

    def commit(self, ops: Sequence[Op]) -> None:
        super().commit(ops)
        self.commits.append(sorted(type(op).__name__ + ":" + _kind(op) for op in ops))


def _kind(op: Op) -> str:
    kind = getattr(op, "kind", None)
    if kind is None:
        kind = op.obj.kind  # type: ignore[attr-defined]
    return str(kind)


@pytest.fixture
def counted() -> Iterator[tuple[Neutron, CountingNsdb]]:
    nsdb = CountingNsdb()
    with TestClient(create_neutron_app(nsdb), raise_server_exceptions=False) as client:
        yield Neutron(client, nsdb), nsdb
    nsdb.close()


def test_each_write_is_one_commit_with_its_twins(counted: tuple[Neutron, CountingNsdb]) -> None:
    neutron, nsdb = counted
    net = neutron.network()
    assert nsdb.commits == [["Create:bridges", "Create:neutron_networks"]]
    sub = neutron.subnet(net["id"])
    # The parents a write names are rewritten unchanged (touched): a concurrent delete
    # of them fails its version check instead of leaving an orphan.
    # The DHCP subnet is the subnet's translation: its entry in the reverse index
    # (`neutron_owners`, which a v1 delete reads) comes in the same commit.
    assert nsdb.commits[-1] == [
        "Create:dhcp_subnets",
        "Create:neutron_owners",
        "Create:neutron_subnets",
        "Update:bridges",
        "Update:neutron_networks",
    ]
    neutron.client.get("/v2.0/security-groups")  # the default group: a commit of its own
    port = neutron.port(net["id"])
    # The port's three security chains and their rules; its group's members.
    assert nsdb.commits[-1] == [
        *["Create:chains"] * 3,
        "Create:neutron_ports",
        "Create:ports",
        *["Create:rules"] * 11,  # spoofing 2, from the VM 5, towards it 4
        "Update:bridges",
        *["Update:chains"] * 2,  # the default group's chains, touched by the jumps
        "Update:dhcp_subnets",
        "Update:ip_addr_groups",
        "Update:neutron_networks",
        "Update:neutron_subnets",
        "Update:port_groups",
    ]
    count = len(nsdb.commits)
    neutron.client.delete(f"/v2.0/ports/{port['id']}")
    neutron.client.delete(f"/v2.0/subnets/{sub['id']}")
    neutron.client.delete(f"/v2.0/networks/{net['id']}")
    assert len(nsdb.commits) == count + 3
    assert nsdb.commits[-1] == ["Delete:bridges", "Delete:neutron_networks"]


def test_refused_writes_commit_nothing(counted: tuple[Neutron, CountingNsdb]) -> None:
    neutron, nsdb = counted
    net = neutron.network()
    neutron.subnet(net["id"])
    neutron.port(net["id"], mac_address="fa:16:3e:00:00:01")
    count = len(nsdb.commits)
    body = {"port": {"network_id": net["id"], "mac_address": "fa:16:3e:00:00:01"}}
    neutron.error("POST", "/v2.0/ports", 409, json=body)
    body = {"subnet": {"network_id": net["id"], "cidr": "10.0.0.0/25"}}
    neutron.error("POST", "/v2.0/subnets", 400, json=body)
    neutron.error("DELETE", f"/v2.0/networks/{net['id']}", 409)
    assert len(nsdb.commits) == count
