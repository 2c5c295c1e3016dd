"""The stateful row of the datapath bench: new TCP connections through a conntrack
firewall on one agent (issue 16).

On the agent bed's bridge, VM A's port gets a firewall: what A starts is tracked as it
enters (``match_forward_flow``), and towards A only replies pass (``match_return_flow``,
else drop). Every new connection from A to B (both on h1) is then a miss for its SYN
and, unless its reply flow was predicted with the forward one, another for its SYN-ACK;
with connection tracking in the datapath (``ct_state`` in the flow key, ``CtCommit``)
only the first connection is, and the next ones run on its flows.
Measured: connections per second (``st_tcp``'s client, one process per core, many in
flight, each a new 5-tuple) against the same client, same VMs, before the firewall is
put on A's port (the bridge's flows alone: no miss per connection), the connect time
one at a time (SYN -> SYN-ACK seen: the first packet's round trip, any miss included)
against the steady ping RTT of the same moment, and the agent's misses per connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from common import Pinger, Row, percentile
from dp_testbed import IP_B
from st_tcp import SourcePorts, client_name, connects, serve

if TYPE_CHECKING:
    from dp_agent import AgentBed

CONNTRACK_METRICS = (
    "new TCP connections/s through a conntrack firewall, one agent (A -> B on h1)",
    "TCP connect through a conntrack firewall (SYN -> SYN-ACK), p50",
    "TCP connect through a conntrack firewall (SYN -> SYN-ACK), p99",
)
CONCURRENCY = 32
# One client per core: a single one's own kernel work (socket, connect, close with its
# softirq) is its ceiling before the datapath's.
PROCESSES = 2


def na_conntrack_rows(why: str) -> list[Row]:
    return [Row("agent", m, "", None, None, "", note=why) for m in CONNTRACK_METRICS]


def firewall(ab: AgentBed) -> None:
    """A's port: connections it starts are tracked; towards it, replies only."""
    rules = {
        "track": [{"type": "accept", "match_forward_flow": True}],
        "returns": [{"type": "accept", "match_return_flow": True}, {"type": "drop"}],
    }
    ids = {}
    for name, chain_rules in rules.items():
        chain = ab.http.post("/chains", {"name": f"{ab.lab.prefix}-{name}"})
        for pos, rule in enumerate(chain_rules, 1):
            ab.http.post(f"/chains/{chain['id']}/rules", {**rule, "position": pos})
        ids[name] = chain["id"]
    port = ab.http.get(f"/ports/{ab.port_ids['tap-a']}")
    port["inbound_filter_id"] = ids["track"]
    port["outbound_filter_id"] = ids["returns"]
    # Measured from when the agents apply it: connections in flight as the firewall
    # takes effect were started without it (not committed), and their replies are then
    # new connections towards A, dropped (a 1 s SYN retransmission in the first round).
    ab.http.put(f"/ports/{port['id']}?wait=true&wait_timeout=10", port)


def conntrack_rows(
    ab: AgentBed, count: int, samples: int, rounds: int, log: Callable[[str], None]
) -> list[Row]:
    bed = ab.bed
    h1 = ab.hosts[0]
    serve(bed.lab, bed.vb, IP_B, 3600)
    ports = SourcePorts(bed.va)
    # Baseline: the same connections before the firewall, after a warm-up; rounds of at
    # most 5,000 (every connection takes a source port of its own, and the range has
    # room for about 50,000: the firewall's rounds need theirs).
    baseline: list[float] = []
    if connects(bed.va, ports, IP_B, 20, 10.0, 4).ok:
        for i in range(rounds):
            got = connects(
                bed.va, ports, IP_B, min(count, 5000), 10.0, CONCURRENCY, processes=PROCESSES
            )
            baseline.append(got.per_second)
            log(f"conntrack: baseline round {i + 1}/{rounds}: {got.per_second:,.0f} connections/s")
    firewall(ab)
    # Warm-up: the firewall's chains compiled, the server answering (pings from A are
    # tracked too, so they reach B and back through the firewall).
    warm = connects(bed.va, ports, IP_B, 20, 10.0, 4)
    if warm.ok == 0:
        return na_conntrack_rows(f"n/a: no connection through the firewall ({warm.failed} failed)")
    rates: list[float] = []
    failed = 0
    made = 0
    before = int(ab.status(h1)["misses"])
    for i in range(rounds):
        got = connects(bed.va, ports, IP_B, count, 10.0, CONCURRENCY, processes=PROCESSES)
        rates.append(got.per_second)
        failed += got.failed
        made += got.ok + got.failed
        slowest = max(got.times, default=0.0) * 1e3
        log(
            f"conntrack: round {i + 1}/{rounds}: {got.per_second:,.0f} connections/s, "
            f"slowest connect {slowest:.1f} ms"
            + (f" (source ports slower than 0.5 s: {got.slow_ports})" if got.slow_ports else "")
        )
    per_conn = (int(ab.status(h1)["misses"]) - before) / made if made else 0.0
    pinger = Pinger(bed.va)
    first: list[float] = []
    steady: list[float] = []
    try:
        done = 0
        while done < samples:
            n = min(25, samples - done)
            got = connects(bed.va, ports, IP_B, n, 60.0, gap=0.002)
            first += got.times
            failed += got.failed
            for _ in range(5):
                rtt = pinger.ping(IP_B, timeout=1.0)
                if rtt is not None:
                    steady.append(rtt)
            done += n
    finally:
        pinger.close()
    f_ms = [x * 1e3 for x in first]
    s_ms = [x * 1e3 for x in steady]
    rows = [
        Row(
            "agent",
            CONNTRACK_METRICS[0],
            "no firewall (same VMs, same client)",
            percentile(baseline, 50) if baseline else None,
            percentile(rates, 50) if rates else None,
            "/s",
            goal=">= 20,000/s",
            note=(
                f"median of {rounds} rounds of {count}, {CONCURRENCY} in flight "
                f"({client_name(PROCESSES)}); "
                f"{per_conn:.2f} agent misses per connection; {failed} failed"
            ),
        )
    ]
    for k, p in ((1, 50), (2, 99)):
        extra = percentile(f_ms, p) - percentile(s_ms, p) if f_ms and s_ms else float("nan")
        rows.append(
            Row(
                "agent",
                CONNTRACK_METRICS[k] + f" (n={len(f_ms)})",
                "steady ping RTT",
                percentile(s_ms, p) if s_ms else None,
                percentile(f_ms, p) if f_ms else None,
                "ms",
                note=f"first-packet extra {extra:.3f} ms (both misses, or one when predicted)",
                samples={"connect_ms": f_ms, "steady_ms": s_ms} if p == 50 else {},
            )
        )
    return rows
