"""A NATed TCP stream survives a host losing its local flow state, because the agents
of a lab with Cassandra (`lab up --cassandra 1`) keep their flow state there too
(`--flow-state cassandra`): while the stream runs, the agent of the host where it
enters (or leaves) is stopped, its flow-state file wiped (`lab agent stop
--wipe-flow-state`), and started again; it has the connection's state back from
Cassandra, and the same connection goes on with no reset and no byte lost, through the
same SNAT binding.

    lan 10.0.0.0/24 -- router r (10.0.0.1 | 203.0.113.1 uplink) -- ext 203.0.113.9/25 (h2)
      vm1 10.0.0.10 (h1)    SNAT 10.0.0.0/24 -> 203.0.113.150

203.0.113.0/24 exists only inside the VM namespaces. The stream helpers are those of
test_lab_stateful_xhost (the same streams across a plain agent restart, file kept).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from lab_helpers import Lab, lab_up, new_chain, root_missing, routed_lan, tessera, update
from test_lab_stateful_xhost import (
    EXT_IP,
    SNAT_IP,
    Net,
    _blocks,
    _restart_during_stream,
)

from support.wait import wait_until
from tessera.lab import names

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.system,
    pytest.mark.root,
    pytest.mark.zookeeper,
    pytest.mark.cassandra,
    pytest.mark.slow,
]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

UP_TIMEOUT = 600.0  # a JVM on a busy 2-core machine


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    with lab_up("--hosts", "2", "--cassandra", "1", "--timeout", "300", timeout=UP_TIMEOUT) as lab:
        n = Net(lab)
        try:
            _topology(lab)
            yield n
        finally:
            n.stop()


def _topology(lab: Lab) -> None:
    lan, r, _gw, uplink = routed_lan(lab)
    pool = [{"address_from": SNAT_IP, "address_to": SNAT_IP, "port_from": 20000,
             "port_to": 29999}]  # fmt: skip
    pre = new_chain(lab, "pre", {"type": "rev_snat", "in_ports": [uplink]})
    post = new_chain(
        lab, "post",
        {"type": "snat", "out_ports": [uplink], "nw_src_address": "10.0.0.0",
         "nw_src_length": 24, "nat_targets": pool},
    )  # fmt: skip
    update(lab, f"/routers/{r}", {"inbound_filter_id": pre, "outbound_filter_id": post})
    port = lab.create(f"/bridges/{lan}/ports")["id"]
    lab.cmd(
        "vm", "add", "vm1", "--host", "h1", "--port", port,
        "--ip", "10.0.0.10/24", "--gw", "10.0.0.1", timeout=90,
    )  # fmt: skip
    # 203.0.113.9/25: the SNAT address (above .127) is reached through its gateway, the
    # router.
    lab.cmd(
        "vm", "add", "ext", "--host", "h2", "--port", uplink,
        "--ip", f"{EXT_IP}/25", "--gw", "203.0.113.1", timeout=90,
    )  # fmt: skip


def _cassandra(lab: Lab, host: int) -> dict[str, Any]:
    out = tessera("conntrack", "--host", names.host_id(lab.name, host), "--json").stdout
    report: dict[str, Any] = json.loads(out)["cassandra"]
    return report


def test_the_agents_keep_their_flow_state_in_cassandra(net: Net) -> None:
    for host in (1, 2):
        wait_until(
            lambda h=host: _cassandra(net.lab, h).get("active"),
            timeout=60,
            what=f"h{host}'s flow state in Cassandra",
        )


@pytest.mark.parametrize("host", [1, 2], ids=["ingress-h1", "egress-h2"])
def test_a_snat_stream_survives_a_host_losing_its_flow_state(net: Net, host: int) -> None:
    """h1 made the binding: it loads its own rows back at start. h2 was pushed a copy:
    it reads the reverse binding from Cassandra when the stream's next reply misses it
    (the forward one it never needs: the stream enters at h1)."""
    peer, held = _restart_during_stream(
        net, "vm1", "ext", EXT_IP, EXT_IP, 9200 + host, host, wipe_flow_state=True,
        back=None if host == 1 else frozenset({"rev_snat"}),
    )  # fmt: skip
    assert peer == SNAT_IP
    assert {kind for kind, _, _ in held} >= {"fwd_snat", "rev_snat"}, held
    report = _cassandra(net.lab, host)
    if host == 1:
        assert report["restored"] >= 1, report
        # The binding restored holds its SNAT port again: h1 leases its block.
        (nat,) = [json.loads(n) for kind, _, n in held if kind == "fwd_snat"]
        wait_until(
            lambda: any(first <= nat["port"] <= last for _ip, first, last in _blocks(net.lab, 1)),
            timeout=15,
            interval=0.5,
            what="h1 to lease the restored binding's block again",
        )
    else:
        assert report["found"] >= 1, report
