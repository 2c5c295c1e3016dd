"""Placement in the lab (`lab up --cassandra 1`): every host is a resource provider (its
uuid the host id, its name hK, the inventory of `--host-vcpus/--host-ram`), a repeated
`up` changes none of them; `lab vm add --schedule` makes the VM on the host the
scheduler chose (the allocation and the port's binding say so) and it reaches a VM on
the other host; with every host full it fails in one line and leaves nothing; `vm del`
frees the allocation.

    lan 10.0.1.0/24:  a 10.0.1.10 (scheduled)  b 10.0.1.20 (on the other host)
                      c, d (scheduled)

Each host has VCPU 2 and MEMORY_MB 2048: one VM of `--vcpus 2 --ram 2048` fills it.

The same lab (one Cassandra start, the slow part) then shows flow state kept in
Cassandra: a NATed TCP stream survives a host losing its local flow state. While the
stream runs, the agent of the host where it enters (or leaves) is stopped, its
flow-state file wiped (`lab agent stop --wipe-flow-state`), and started again; it has
the connection's state back from Cassandra, and the same connection goes on with no
reset and no byte lost, through the same SNAT binding.

    lan 10.0.0.0/24 -- router r (10.0.0.1 | 203.0.113.1 uplink) -- ext 203.0.113.9/25 (h2)
      vm1 10.0.0.10 (h1)    SNAT 10.0.0.0/24 -> 203.0.113.150

203.0.113.0/24 exists only inside the VM namespaces. The stream helpers are those of
test_lab_stateful_xhost (the same streams across a plain agent restart, file kept).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from lab_helpers import Lab, lab_up, new_chain, root_missing, routed_lan, update
from test_lab_stateful_xhost import EXT_IP, SNAT_IP, _blocks, _report, _restart_during_stream
from test_lab_stateful_xhost import Net as Streams

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
FULL = {"VCPU": 2, "MEMORY_MB": 2048}
PLACED = re.compile(
    r"^VM (\S+) on (h\d+) \(chosen by placement for VCPU (\d+), MEMORY_MB (\d+); "
    r"consumer ([0-9a-f-]{36})\)"
)


class Net:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.lan: str = lab.create("/bridges", {"name": "lan"})["id"]
        self.consumers: dict[str, str] = {}  # scheduled VM -> consumer

    def port(self) -> str:
        port: str = self.lab.create(f"/bridges/{self.lan}/ports")["id"]
        return port

    def host_id(self, host: str) -> str:
        return names.host_id(self.lab.name, int(host[1:]))

    def schedule(self, vm: str, port: str, ip: str, *extra: str, check: bool = True) -> Any:
        return self.lab.cmd(
            "vm", "add", vm, "--schedule", "--vcpus", "2", "--ram", "2048", "--port", port,
            "--ip", ip, *extra, check=check, timeout=90,
        )  # fmt: skip

    def placed(self, vm: str, port: str, ip: str) -> str:
        """Schedule `vm`; the host placement chose, as the command says."""
        out = self.schedule(vm, port, ip).stdout
        match = PLACED.match(out)
        assert match is not None, out
        assert match.group(1) == vm and match.group(3, 4) == ("2", "2048"), out
        self.consumers[vm] = match.group(5)
        return match.group(2)

    def providers(self) -> dict[str, dict[str, Any]]:
        return {
            p["uuid"]: p
            for p in self.lab.get("/placement/resource_providers")["resource_providers"]
        }

    def allocations(self, vm: str) -> dict[str, Any]:
        found: dict[str, Any] = self.lab.get(f"/placement/allocations/{self.consumers[vm]}")
        return found["allocations"]

    def vm_status(self, vm: str) -> dict[str, Any] | None:
        return next((v for v in self.lab.status()["vms"] if v["name"] == vm), None)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    args = ("--hosts", "2", "--cassandra", "1", "--host-vcpus", "2", "--host-ram", "2048")
    with lab_up(*args, "--timeout", "300", timeout=UP_TIMEOUT) as made:
        yield made


@pytest.fixture(scope="module")
def net(lab: Lab) -> Net:
    return Net(lab)


def test_every_host_is_a_resource_provider_and_up_again_changes_nothing(net: Net) -> None:
    providers = net.providers()
    hosts = {h: net.host_id(h) for h in ("h1", "h2")}
    assert set(providers) == set(hosts.values()), providers
    aggregates = set()
    for name, host_id in hosts.items():
        p = providers[host_id]
        assert p["name"] == name
        assert {k: v["total"] for k, v in p["inventories"].items()} == FULL
        assert p["usages"] == {"VCPU": 0, "MEMORY_MB": 0}
        assert len(p["aggregates"]) == 1
        aggregates.add(p["aggregates"][0])
    assert len(aggregates) == 1  # the lab's
    status = {h["name"]: h["placement"] for h in net.lab.status()["hosts"]}
    assert status["h1"] == {
        "MEMORY_MB": {"used": 0, "capacity": 2048},
        "VCPU": {"used": 0, "capacity": 2},
    }
    again = net.lab.up(timeout=UP_TIMEOUT).stdout
    assert "placement    h1, h2 each VCPU 2, MEMORY_MB 2048\n" in again, again
    assert {k: p["generation"] for k, p in net.providers().items()} == {
        k: p["generation"] for k, p in providers.items()
    }


def test_a_scheduled_vm_lands_where_placement_chose_and_reaches_the_other_host(
    net: Net,
) -> None:
    port_a = net.port()
    chosen = net.placed("a", port_a, "10.0.1.10/24")
    # The allocation is on the provider of the chosen host, of what was asked.
    allocations = net.allocations("a")
    assert list(allocations) == [net.host_id(chosen)], allocations
    assert allocations[net.host_id(chosen)]["resources"] == FULL
    assert net.providers()[net.host_id(chosen)]["usages"] == FULL
    # The VM is there, and its port is bound on that host to its cable.
    vm = net.vm_status("a")
    assert vm is not None and vm["host"] == chosen and vm["present"]
    assert vm["placement"] == {"consumer": net.consumers["a"], "vcpus": 2, "ram_mb": 2048}
    port = net.lab.get(f"/ports/{port_a}")
    assert port["host_id"] == net.host_id(chosen) and port["interface_name"] == "vm-a"

    other = "h2" if chosen == "h1" else "h1"
    net.lab.cmd(
        "vm", "add", "b", "--host", other, "--port", net.port(), "--ip", "10.0.1.20/24",
        timeout=90,
    )  # fmt: skip
    ping = net.lab.exec("a", "ping", "-c", "3", "-W", "2", "10.0.1.20", check=False)
    assert ping.returncode == 0 and "3 received" in ping.stdout, ping.stdout + ping.stderr


def test_with_every_host_full_schedule_fails_in_one_line_and_leaves_nothing(
    net: Net,
) -> None:
    chosen_a = net.vm_status("a")["host"]  # type: ignore[index]
    # Only the other host has room left: placement has no choice.
    chosen_c = net.placed("c", net.port(), "10.0.1.30/24")
    assert chosen_c != chosen_a
    before = net.providers()
    port_d = net.port()
    failed = net.schedule("d", port_d, "10.0.1.40/24", check=False)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert lines[0].startswith(f"error: no host of lab {net.lab.name} has room for VCPU 2"), lines
    assert "h1 MEMORY_MB 2048/2048, VCPU 2/2" in lines[0], lines
    # Nothing of d: no VM, no namespace, no binding, no allocation anywhere.
    assert net.vm_status("d") is None
    assert names.netns(net.lab.name, "d") not in net.lab.namespaces()
    assert net.lab.get(f"/ports/{port_d}").get("host_id") is None
    after = net.providers()
    assert {k: p["usages"] for k, p in after.items()} == {k: FULL for k in after}
    assert {k: p["generation"] for k, p in after.items()} == {
        k: p["generation"] for k, p in before.items()
    }


def test_deleting_a_scheduled_vm_frees_its_allocation(net: Net) -> None:
    host_a = net.vm_status("a")["host"]  # type: ignore[index]
    out = net.lab.cmd("vm", "del", "a").stdout
    assert f"its allocation on {host_a} (consumer {net.consumers['a']}) freed" in out, out
    assert net.allocations("a") == {}
    assert net.providers()[net.host_id(host_a)]["usages"] == {"VCPU": 0, "MEMORY_MB": 0}
    # The room it left is placement's to give again: to the next scheduled VM.
    assert net.placed("e", net.port(), "10.0.1.50/24") == host_a


def test_clear_errors(net: Net) -> None:
    port = net.port()
    both = net.lab.cmd("vm", "add", "x", "--schedule", "--host", "h1", "--port", port, check=False)
    assert both.returncode != 0
    assert "--schedule and --host exclude each other" in both.stderr
    neither = net.lab.cmd("vm", "add", "x", "--port", port, check=False)
    assert "with --host hK, or let placement choose one with --schedule" in neither.stderr
    sized = net.lab.cmd(
        "vm", "add", "x", "--host", "h1", "--vcpus", "2", "--port", port, check=False
    )
    assert "--vcpus and --ram are what --schedule asks placement for" in sized.stderr
    assert net.vm_status("x") is None
    assert net.lab.get(f"/ports/{port}").get("host_id") is None


# -- flow state in Cassandra (after the scheduling tests, in the same lab) --------------


@pytest.fixture(scope="module")
def streams(lab: Lab) -> Iterator[Streams]:
    n = Streams(lab)
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
    report: dict[str, Any] = _report(lab, host)["cassandra"]
    return report


def test_the_agents_keep_their_flow_state_in_cassandra(streams: Streams) -> None:
    for host in (1, 2):
        wait_until(
            lambda h=host: _cassandra(streams.lab, h).get("active"),
            timeout=60,
            what=f"h{host}'s flow state in Cassandra",
        )


@pytest.mark.parametrize("host", [1, 2], ids=["ingress-h1", "egress-h2"])
def test_a_snat_stream_survives_a_host_losing_its_flow_state(streams: Streams, host: int) -> None:
    """h1 made the binding: it loads its own rows back at start. h2 was pushed a copy:
    it reads the reverse binding from Cassandra when the stream's next reply misses it
    (the forward one it never needs: the stream enters at h1)."""
    peer, held = _restart_during_stream(
        streams, "vm1", "ext", EXT_IP, EXT_IP, 9200 + host, host, wipe_flow_state=True,
        back=None if host == 1 else frozenset({"rev_snat"}),
    )  # fmt: skip
    assert peer == SNAT_IP
    assert {kind for kind, _, _ in held} >= {"fwd_snat", "rev_snat"}, held
    report = _cassandra(streams.lab, host)
    if host == 1:
        assert report["restored"] >= 1, report
        # The binding restored holds its SNAT port again: h1 leases its block.
        (nat,) = [json.loads(n) for kind, _, n in held if kind == "fwd_snat"]
        wait_until(
            lambda: any(
                first <= nat["port"] <= last for _ip, first, last in _blocks(streams.lab, 1)
            ),
            timeout=15,
            interval=0.5,
            what="h1 to lease the restored binding's block again",
        )
    else:
        assert report["found"] >= 1, report
