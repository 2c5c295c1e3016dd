"""Placement in the lab (`lab up --cassandra 1`): every host is a resource provider (its
uuid the host id, its name hK, the inventory of `--host-vcpus/--host-ram`), a repeated
`up` changes none of them; `lab vm add --schedule` makes the VM on the host the
scheduler chose (the allocation and the port's binding say so) and it reaches a VM on
the other host; with every host full it fails in one line and leaves nothing; `vm del`
frees the allocation.

    lan 10.0.0.0/24:  a 10.0.0.10 (scheduled)  b 10.0.0.20 (on the other host)
                      c, d (scheduled)

Each host has VCPU 2 and MEMORY_MB 2048: one VM of `--vcpus 2 --ram 2048` fills it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from lab_helpers import Lab, lab_up, root_missing

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
def net() -> Iterator[Net]:
    args = ("--hosts", "2", "--cassandra", "1", "--host-vcpus", "2", "--host-ram", "2048")
    with lab_up(*args, "--timeout", "300", timeout=UP_TIMEOUT) as lab:
        yield Net(lab)


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
    chosen = net.placed("a", port_a, "10.0.0.10/24")
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
        "vm", "add", "b", "--host", other, "--port", net.port(), "--ip", "10.0.0.20/24",
        timeout=90,
    )  # fmt: skip
    ping = net.lab.exec("a", "ping", "-c", "3", "-W", "2", "10.0.0.20", check=False)
    assert ping.returncode == 0 and "3 received" in ping.stdout, ping.stdout + ping.stderr


def test_with_every_host_full_schedule_fails_in_one_line_and_leaves_nothing(
    net: Net,
) -> None:
    chosen_a = net.vm_status("a")["host"]  # type: ignore[index]
    # Only the other host has room left: placement has no choice.
    chosen_c = net.placed("c", net.port(), "10.0.0.30/24")
    assert chosen_c != chosen_a
    before = net.providers()
    port_d = net.port()
    failed = net.schedule("d", port_d, "10.0.0.40/24", check=False)
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
    assert net.placed("e", net.port(), "10.0.0.50/24") == host_a


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
