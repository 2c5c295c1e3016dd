"""`--wait` in a lab: a rule added with `tessera rule create --wait` is in effect on
every concerned host when the command returns — the very next packet obeys it — and so
is its removal with `tessera rule delete --wait`. Real agents, eBPF flows, ping."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from lab_helpers import Lab, lab_up, new_chain, root_missing, tessera, update

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, str]]:
    """Bridge `lan` behind an (empty) inbound chain, vm1 on h1 and vm2 on h2."""
    with lab_up("--hosts", "2") as lab:
        lan = lab.create("/bridges", {"name": "lan"})["id"]
        chain = new_chain(lab, "fw")
        update(lab, f"/bridges/{lan}", {"inbound_filter_id": chain})
        for vm, host, ip in (("vm1", "h1", "10.0.0.11/24"), ("vm2", "h2", "10.0.0.12/24")):
            port = lab.create(f"/bridges/{lan}/ports")["id"]
            lab.cmd("vm", "add", vm, "--host", host, "--port", port, "--ip", ip, timeout=90)
        yield lab, chain


def _pings(lab: Lab) -> bool:
    """One echo request, one second for its reply."""
    proc = lab.exec("vm1", "ping", "-n", "-c", "1", "-W", "1", "10.0.0.12", check=False)
    return proc.returncode == 0


def _cli(lab: Lab, *args: str) -> str:
    assert lab.api_url is not None
    return tessera("--api", lab.api_url, *args, timeout=60).stdout.strip()


def test_a_rule_added_with_wait_stops_the_very_next_packet(lab: tuple[Lab, str]) -> None:
    net, chain = lab
    deadline = time.monotonic() + 30  # the lab's first flows: ARP, agents warming up
    while not _pings(net):
        assert time.monotonic() < deadline, "vm1 never reached vm2"
    for _ in range(3):
        assert _pings(net)  # flows installed on both hosts: the fast path forwards
        started = time.monotonic()
        rule = _cli(net, "rule", "create", chain, "--type", "drop", "--nw-proto", "1",
                    "--wait", "--wait-timeout", "20", "-q")  # fmt: skip
        assert time.monotonic() - started < 20
        assert not _pings(net), "the first ping after `rule create --wait` got through"
        _cli(net, "rule", "delete", rule, "--wait", "--wait-timeout", "20")
        assert _pings(net), "the first ping after `rule delete --wait` was dropped"


def test_wait_times_out_naming_the_agents_that_did_not_apply(lab: tuple[Lab, str]) -> None:
    net, chain = lab
    assert net.api_url is not None
    proc = tessera("--api", net.api_url, "rule", "create", chain, "--type", "accept",
                   "--wait", "--wait-timeout", "0.001", check=False)  # fmt: skip
    # Applying takes longer than a millisecond: the answer is the timeout's, the rule
    # stays (committed), and the message says so.
    assert proc.returncode != 0
    assert "committed" in proc.stderr and "did not apply" in proc.stderr, proc.stderr
    rules = net.get(f"/chains/{chain}/rules")
    assert [r["type"] for r in rules] == ["accept"]
    _cli(net, "rule", "delete", rules[0]["id"], "--wait")
