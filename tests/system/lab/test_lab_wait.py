"""`--wait` in a lab: a rule added with `tessera rule create --wait` is in effect on
every concerned host when the command returns — the very next packet obeys it — and so
is its removal with `tessera rule delete --wait`. Real agents, eBPF flows, ping."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from lab_helpers import TESSERA, Lab, env, lab_up, new_chain, root_missing, tessera, update

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


# Sends one ICMP echo request per line read, at once, and prints whether its reply came
# within argv[2] seconds: the probe leaves a millisecond after the test asks, where a
# `ping` started through `tessera lab exec` would leave a few hundred milliseconds later
# (time enough for a change to arrive without waiting for it).
PROBER = r"""
import os, socket, struct, sys, time

def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF

s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident, wait = os.getpid() & 0xFFFF, float(sys.argv[2])
for seq, _ in enumerate(sys.stdin, 1):
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"tessera!"
    s.sendto(body[:2] + struct.pack("!H", checksum(body)) + body[4:], (sys.argv[1], 0))
    deadline, answer = time.monotonic() + wait, "lost"
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            data = s.recv(2048)
        except socket.timeout:
            break
        kind, _, _, who, n = struct.unpack("!BBHHH", data[(data[0] & 15) * 4 :][:8])
        if kind == 0 and who == ident and n == seq:
            answer = "ok"
            break
    print(answer, flush=True)
"""


WAIT = ("--wait", "--wait-timeout", "20")
FROZEN = 1.0  # seconds the slow agent stays stopped


class Prober:
    def __init__(self, lab: Lab, vm: str, target: str) -> None:
        self.proc = subprocess.Popen(
            [TESSERA, "lab", "exec", "--name", lab.name, vm, "--",
             "python3", "-c", PROBER, target, "1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env(),
        )  # fmt: skip

    def probe(self) -> bool:
        """Whether one echo request, sent now, is answered."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("probe\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer in ("ok", "lost"), f"the prober died: {answer!r}"
        return answer == "ok"

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its pid
            self.proc.wait(timeout=10)


class Command:
    """A `tessera` command whose answer is read the moment it prints it (unbuffered),
    before the process has exited: that moment is when the command has returned."""

    def __init__(self, lab: Lab, *args: str) -> None:
        assert lab.api_url is not None
        self.proc = subprocess.Popen(
            [TESSERA, "--api", lab.api_url, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**env(), "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.answer = self.proc.stdout.readline().strip()

    def finish(self) -> None:
        _, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err


@pytest.fixture(scope="module")
def prober(lab: tuple[Lab, str]) -> Iterator[Prober]:
    """vm1's prober towards vm2, once vm1 reaches vm2."""
    prober = Prober(lab[0], "vm1", "10.0.0.12")
    try:
        deadline = time.monotonic() + 30  # the lab's first packets: ARP, agents warming up
        while not prober.probe():
            assert time.monotonic() < deadline, "vm1 never reached vm2"
        yield prober
    finally:
        prober.close()


def _drop_then_allow(net: Lab, chain: str, prober: Prober) -> float:
    """Add a drop rule with --wait, probe, delete it with --wait, probe; how long the
    create took to return."""
    assert prober.probe()  # flows installed on both hosts: the fast path forwards
    started = time.monotonic()
    create = Command(net, "rule", "create", chain, "--type", "drop", "--nw-proto", "1",
                     "--nw-src", "10.0.0.11/32", *WAIT, "-q")  # fmt: skip
    took = time.monotonic() - started
    assert create.answer, "no rule id printed"
    assert not prober.probe(), "the first packet after `rule create --wait` got through"
    create.finish()
    delete = Command(net, "rule", "delete", create.answer, *WAIT)
    assert delete.answer.startswith("deleted rule"), delete.answer
    assert prober.probe(), "the first packet after `rule delete --wait` was dropped"
    delete.finish()
    return took


def test_a_rule_added_with_wait_stops_the_very_next_packet(
    lab: tuple[Lab, str], prober: Prober
) -> None:
    for _ in range(3):
        _drop_then_allow(*lab, prober)


def test_wait_waits_for_a_slow_agent(lab: tuple[Lab, str], prober: Prober) -> None:
    """h1's agent (where vm1's packets are decided) is frozen for a moment: without
    waiting, the next packet would still find the old flow in h1's kernel."""
    net, chain = lab
    pid = next(h["agent_pid"] for h in net.status()["hosts"] if h["name"] == "h1")
    assert pid, "h1 has no agent"
    os.kill(pid, signal.SIGSTOP)  # the lab's own agent, by its pid
    thaw = threading.Timer(FROZEN, os.kill, (pid, signal.SIGCONT))
    thaw.start()
    try:
        took = _drop_then_allow(net, chain, prober)
    finally:
        thaw.join()
        os.kill(pid, signal.SIGCONT)
    assert took >= FROZEN * 0.8, f"`rule create --wait` returned in {took:.3f}s"


def _cli(lab: Lab, *args: str) -> str:
    assert lab.api_url is not None
    return tessera("--api", lab.api_url, *args, timeout=60).stdout.strip()


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
