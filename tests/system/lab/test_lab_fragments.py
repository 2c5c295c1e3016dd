"""Fragments with real traffic across two lab hosts (eBPF datapath, kernel flows).

`ping -s 3000` from a VM with MTU 1500 sends each echo request as three IP fragments
(the first carries the ICMP header, the others none); a plain ping sends one
unfragmented packet. With them:

- each `fragment_policy` on vm1's port filter, as a drop rule and as an accept rule in
  front of a drop: every policy passes and drops its own mix of small and big pings;
- a floating IP (static NAT) carries fragmented pings both ways;
- dynamic SNAT cannot translate a fragmented datagram: the big ping fails, and the
  sender hears ICMP "fragmentation needed" from the router port it sent through;
- a router's inbound filter that drops first fragments answers the sender the same
  way, which learns the announced path MTU (`ip route get`).

    lan 10.0.0.0/24 -- router r (10.0.0.1 | 203.0.113.1 uplink) -- ext 203.0.113.9/25 (h1)
      vm1 10.0.0.10 (h1)                   SNAT 10.0.0.0/24 -> 203.0.113.150
      vm2 10.0.0.20 (h2)                   floating 203.0.113.200 <-> 10.0.0.20

203.0.113.0/24 exists only inside the VM namespaces.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from lab_helpers import (
    Lab,
    lab_up,
    new_chain,
    root_missing,
    routed_lan,
    update,
)

from support.wait import wait_until
from tessera.simulation.icmp import FRAG_NEEDED_MTU

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

SNAT_IP = "203.0.113.150"
FLOATING_IP = "203.0.113.200"
BIG = 3000  # ICMP payload: three fragments at MTU 1500
IPV4 = 0x0800
ICMP = 1


class Net:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.ports: dict[str, str] = {}
        self.guard = ""  # the chain r's inbound filter jumps to first

    def ping(self, vm: str, target: str, size: int = 56, wait: int = 1) -> tuple[bool, str]:
        """One echo request of `size` payload bytes: (answered, ping's output)."""
        proc = self.lab.exec(
            vm, "ping", "-n", "-c", "1", "-W", str(wait), "-s", str(size), target, check=False
        )
        return proc.returncode == 0, proc.stdout + proc.stderr

    def outcome(self, vm: str, target: str) -> tuple[bool, bool]:
        """(small ping answered, big ping answered)."""
        return self.ping(vm, target)[0], self.ping(vm, target, BIG)[0]

    def settle(self, vm: str, target: str, want: tuple[bool, bool]) -> None:
        """Wait until the pings do what `want` says, and still do a moment later: the
        agents apply a change of the topology asynchronously."""
        wait_until(lambda: self.outcome(vm, target) == want, timeout=30, what=f"pings {want}")
        time.sleep(1.5)
        assert self.outcome(vm, target) == want


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    with lab_up("--hosts", "2", "--datapath", "ebpf") as lab:
        n = Net(lab)
        _topology(n)
        yield n


def _clear(lab: Lab, chain: str) -> None:
    with lab.api() as client:
        rules = client.get(f"chains/{chain}/rules").json()
        for rule in rules:
            response = client.delete(f"rules/{rule['id']}")
            assert response.status_code in (200, 204), response.text


def _topology(n: Net) -> None:
    lab = n.lab
    lan, r, _gw, uplink = routed_lan(lab)

    # r's inbound filter: the guard chain (empty but in one test), then the floating IP
    # and the reverse SNAT; its outbound filter: the floating IP, then dynamic SNAT.
    n.guard = new_chain(lab, "guard")
    one = [{"address_from": "10.0.0.20", "address_to": "10.0.0.20"}]
    fip = [{"address_from": FLOATING_IP, "address_to": FLOATING_IP}]
    pool = [{"address_from": SNAT_IP, "address_to": SNAT_IP, "port_from": 20000,
             "port_to": 29999}]  # fmt: skip
    pre = new_chain(
        lab, "pre",
        {"type": "jump", "jump_chain_id": n.guard},
        {"type": "dnat", "in_ports": [uplink], "nw_dst_address": FLOATING_IP,
         "nw_dst_length": 32, "nat_targets": one},
        {"type": "rev_snat", "in_ports": [uplink]},
    )  # fmt: skip
    post = new_chain(
        lab, "post",
        {"type": "snat", "out_ports": [uplink], "nw_src_address": "10.0.0.20",
         "nw_src_length": 32, "nat_targets": fip},
        {"type": "snat", "out_ports": [uplink], "nw_src_address": "10.0.0.0",
         "nw_src_length": 24, "nat_targets": pool},
    )  # fmt: skip
    update(lab, f"/routers/{r}", {"inbound_filter_id": pre, "outbound_filter_id": post})

    for name, host, address in (("vm1", "h1", "10.0.0.10/24"), ("vm2", "h2", "10.0.0.20/24")):
        n.ports[name] = lab.create(f"/bridges/{lan}/ports")["id"]
        lab.cmd(
            "vm", "add", name, "--host", host, "--port", n.ports[name],
            "--ip", address, "--gw", "10.0.0.1", timeout=90,
        )  # fmt: skip
    lab.cmd(
        "vm", "add", "ext", "--host", "h1", "--port", uplink,
        "--ip", "203.0.113.9/25", "--gw", "203.0.113.1", timeout=90,
    )  # fmt: skip


def test_the_vms_have_mtu_1500_so_a_big_ping_is_fragmented(net: Net) -> None:
    for vm in ("vm1", "vm2", "ext"):
        link = net.lab.exec(vm, "ip", "-o", "link", "show", "eth0").stdout
        assert " mtu 1500 " in link, link
    assert net.outcome("vm1", "10.0.0.20") == (True, True)  # nothing filters yet


# (rules on vm1's port filter, what the small and the big ping do). Every policy's pair of
# outcomes — as a drop rule, and as an accept rule in front of a drop — is its own.
_ICMP = {"dl_type": IPV4, "nw_proto": ICMP}
POLICY_CASES = [
    ("drop any", [{"type": "drop", "fragment_policy": "any"}], (False, False)),
    ("drop header", [{"type": "drop", "fragment_policy": "header"}], (False, False)),
    ("drop nonheader", [{"type": "drop", "fragment_policy": "nonheader"}], (True, False)),
    ("drop unfragmented", [{"type": "drop", "fragment_policy": "unfragmented"}], (False, True)),
    ("accept any", [{"type": "accept", "fragment_policy": "any"}, {"type": "drop"}],
     (True, True)),
    ("accept header", [{"type": "accept", "fragment_policy": "header"}, {"type": "drop"}],
     (True, False)),
    ("accept nonheader", [{"type": "accept", "fragment_policy": "nonheader"},
                          {"type": "drop"}], (False, False)),
    ("accept unfragmented", [{"type": "accept", "fragment_policy": "unfragmented"},
                             {"type": "drop"}], (True, False)),
]  # fmt: skip


@pytest.mark.parametrize(("rules", "want"), [c[1:] for c in POLICY_CASES],
                         ids=[c[0] for c in POLICY_CASES])  # fmt: skip
def test_each_fragment_policy_on_a_port_filter(
    net: Net, rules: list[dict[str, Any]], want: tuple[bool, bool]
) -> None:
    """vm1 (h1) pings vm2 (h2) through its port's inbound filter: the echo requests are
    filtered, the (also fragmented) replies are not."""
    port = f"/ports/{net.ports['vm1']}"
    chain = new_chain(net.lab, "vm1 in", *({**_ICMP, **rule} for rule in rules))
    # Waiting writes (in effect on both agents when they answer): the next pings obey
    # them, no need to poll until they do and check again a moment later.
    try:
        update(net.lab, port, {"inbound_filter_id": chain}, wait=True)
        assert net.outcome("vm1", "10.0.0.20") == want
    finally:
        update(net.lab, port, {"inbound_filter_id": None}, wait=True)
    assert net.outcome("vm1", "10.0.0.20") == (True, True)


def test_a_floating_ip_carries_fragmented_pings_both_ways(net: Net) -> None:
    """Static NAT rewrites addresses only: every fragment is translated, in and out."""
    ok, out = net.ping("ext", FLOATING_IP, BIG, wait=2)
    assert ok, out
    ok, out = net.ping("vm2", "203.0.113.9", BIG, wait=2)
    assert ok, out
    assert net.ping("ext", FLOATING_IP)[0]


def test_dynamic_snat_refuses_a_fragmented_ping_with_frag_needed(net: Net) -> None:
    """The SNAT rule in r's outbound filter drops the fragments (their connection cannot
    be told), and the first one is answered from the port vm1 sent through."""
    ok, out = net.ping("vm1", "203.0.113.9")
    assert ok, out  # unfragmented: translated
    ok, out = net.ping("vm1", "203.0.113.9", BIG, wait=2)
    assert not ok, out
    assert "From 10.0.0.1 " in out and f"Frag needed and DF set (mtu = {FRAG_NEEDED_MTU})" in out


def test_a_router_filter_dropping_first_fragments_makes_the_sender_learn_a_path_mtu(
    net: Net,
) -> None:
    """r's inbound filter drops first fragments only (unfragmented packets and later
    fragments return from the guard chain, on to the floating IP's translation): ext's
    big ping to the floating IP fails with "fragmentation needed" from r's uplink
    address, and ext's kernel records the announced MTU for the route."""
    for position, rule in enumerate(
        (
            {"type": "return", "dl_type": IPV4, "fragment_policy": "unfragmented"},
            {"type": "drop", "dl_type": IPV4, "fragment_policy": "header"},
        ),
        1,
    ):
        net.lab.create(f"/chains/{net.guard}/rules", {"position": position, **rule})
    try:
        net.settle("ext", FLOATING_IP, (True, False))
        ok, out = net.ping("ext", FLOATING_IP, BIG, wait=2)
        assert not ok, out
        assert "From 203.0.113.1 " in out, out
        assert f"Frag needed and DF set (mtu = {FRAG_NEEDED_MTU})" in out, out
        route = net.lab.exec("ext", "ip", "route", "get", FLOATING_IP).stdout
        assert f"mtu {FRAG_NEEDED_MTU}" in route, route
    finally:
        _clear(net.lab, net.guard)
    net.settle("ext", FLOATING_IP, (True, True))
