"""The agent's connection state: expiry that follows its kernel flows, the exchange
between two agents (members only), the table across a restart, and `tessera conntrack`
through the control socket."""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_harness import Cloud
from typer.testing import CliRunner

from tessera.agent.agent import SWEEP, SWEEP_MAX
from tessera.agent.control import RUN_DIR_ENV, ControlServer
from tessera.agent.flows_cli import conntrack_app
from tessera.agent.flowstate.entry import PROTO_TCP
from tessera.agent.flowstate.service import FlowStateService
from tessera.agent.metrics import AgentMetrics
from tessera.model import TunnelZone
from tessera.model.hosts import TunnelZoneHost
from tessera.nsdb.memory import MemoryNsdb, MemoryStore
from tessera.packet.addr import ip_from_str as ip
from tessera.simulation.flowstate import (
    ConnKey,
    ConntrackEntry,
    NatBinding,
    NatEntry,
    NatKey,
    nat_return,
)
from tessera.simulation.tags import conntrack_tag, nat_tag

ZONE = "3c6b0d4e-0000-4000-8000-0000000000cc"


def conn(i: int = 1) -> ConnKey:
    return ConnKey(PROTO_TCP, ip("10.0.0.1"), ip("10.0.0.2"), 30000 + i, 80, ZONE)


def snat(i: int, to: tuple[int, int]) -> tuple[NatEntry, NatEntry]:
    """A dynamic SNAT of connection `conn(i)` to `to`: its forward and reverse bindings."""
    c = conn(i)
    fwd = NatEntry(NatKey("fwd_snat", PROTO_TCP, c.src, c.sport, c.dst, c.dport, ZONE),
                   NatBinding(*to))  # fmt: skip
    return fwd, nat_return(fwd.key, fwd.binding)


@pytest.fixture
def run_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = Path("/tmp") / f"tsc-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    monkeypatch.setenv(RUN_DIR_ENV, str(path))
    yield path
    for p in sorted(path.rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() else p.rmdir()
    path.rmdir()


def test_an_entry_lives_while_its_kernel_flow_forwards_then_expires(cloud: Cloud) -> None:
    h = cloud.host("h0", "198.18.0.1")
    br = cloud.bridge()
    vm1 = cloud.vm(h, br, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    vm2 = cloud.vm(h, br, "tap2", "02:00:00:00:00:02", "10.0.0.2")
    cloud.settle()
    cloud.send(vm2, vm2.arp_request(vm1.ip))
    cloud.send(vm1, vm1.frame(vm2))
    (flow,) = [m for m in h.flows() if m.in_port == h.number(vm1.port_id)]
    fs = h.agent.flowstate
    fs.table.add(ConntrackEntry(conn()), now=cloud.clock(), flows=[flow], timeout=5.0)
    for _ in range(6):  # 18 s of traffic, all of it forwarded by the kernel flow
        cloud.tick(3.0)
        cloud.send(vm1, vm1.frame(vm2))
    cloud.tick(3.0)
    assert fs.table.lookup(conn()) is not None
    assert h.agent.metrics.registry.get_sample_value("tessera_agent_conntrack_entries") == 1
    cloud.tick(3.0)  # the flow has been idle 6 s > 5 s
    assert fs.table.lookup(conn()) is None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_state_reaches_a_zone_peer_and_nothing_from_outsiders(tmp_path: Path) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    addrs = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    zone = TunnelZone(
        name="z",
        hosts=[
            TunnelZoneHost(host_id=i, ip_address=a) for i, a in zip(ids[:2], addrs[:2], strict=True)
        ],
    )
    port = _free_port()
    store = MemoryStore()
    services = [
        FlowStateService(
            i,
            MemoryNsdb(store),
            AgentMetrics(),
            lambda: [zone],
            underlay_ip=a,
            port=port,
            state_file=tmp_path / f"{n}.json",
        )
        for n, (i, a) in enumerate(zip(ids, addrs, strict=True))
    ]
    for s in services:
        s.start()
    try:
        a, b, outsider = services
        fwd, rev = snat(1, (ip("198.51.100.1"), 61000))
        assert a.share(["127.0.0.2"], [ConntrackEntry(conn()), fwd, rev]) == 1
        assert outsider.share(["127.0.0.2"], [ConntrackEntry(conn(2))]) == 1
        deadline = time.monotonic() + 5
        while not b.table.lookup(conn()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b.view.nat.get(rev.key) == NatBinding(conn().src, conn().sport)
        assert conn() in b.view.conntrack
        assert b.drain_tags() == {conntrack_tag(conn()), nat_tag(fwd.key), nat_tag(rev.key)}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not b.metrics.registry.get_sample_value(
            "tessera_agent_flowstate_rejected_total", {"reason": "forged"}
        ):
            time.sleep(0.01)
        assert b.table.lookup(conn(2)) is None  # the outsider's entry was refused
        assert a.sender is not None
        assert a.sender.send(["127.0.0.2"], [("remove", ConntrackEntry(conn()), 1.0)]) == 1
        deadline = time.monotonic() + 5
        while b.table.lookup(conn()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b.table.lookup(conn()) is None
        a.track([ConntrackEntry(conn(3))])
    finally:
        for s in services:
            s.stop()
    # The table survives a restart through the state file.
    again = FlowStateService(ids[0], MemoryNsdb(store), AgentMetrics(), lambda: [zone],
                             state_file=tmp_path / "0.json")  # fmt: skip
    again.start()
    assert again.table.lookup(conn(3)) is not None
    again.stop()


def test_a_failed_start_does_not_save_over_the_kept_state(tmp_path: Path) -> None:
    path = tmp_path / "kept.json"
    first = FlowStateService("h", MemoryNsdb(MemoryStore()), AgentMetrics(), list,
                             state_file=path)  # fmt: skip
    first.start()
    first.track([ConntrackEntry(conn())])
    first.stop()
    never_started = FlowStateService("h", MemoryNsdb(MemoryStore()), AgentMetrics(), list,
                                     state_file=path)  # fmt: skip
    never_started.stop()
    later = FlowStateService("h", MemoryNsdb(MemoryStore()), AgentMetrics(), list,
                             state_file=path)  # fmt: skip
    later.start()
    assert later.table.lookup(conn()) is not None


def test_tessera_conntrack_lists_keys_device_nat_and_expiry(cloud: Cloud, run_dir: Path) -> None:
    h = cloud.host("h0", "198.18.0.1")
    fs = h.agent.flowstate
    fs.track([ConntrackEntry(conn(1))])
    ips, ports = (ip("198.51.100.7"), ip("198.51.100.7")), (1024, 65535)
    public = fs.snat.allocate(ips, ports, conn(2))
    assert public is not None
    fs.snat.release(conn(2))  # the binding's reverse entry holds the port from now on
    fs.track(snat(2, public))
    server = ControlServer(h.host_id, "h1", {"conntrack": fs.report}, run_dir)
    server.start()
    try:
        result = CliRunner().invoke(conntrack_app, ["--host", "h1", "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        by_kind = {e["kind"]: e for e in report["entries"]}
        plain, nat, rev = by_kind["conntrack"], by_kind["fwd_snat"], by_kind["rev_snat"]
        assert plain["nat"] is None and plain["zone"] == ZONE
        assert plain["return"]["src_ip"] == "10.0.0.2" and plain["return"]["dst_port"] == 30001
        assert nat["forward"]["src_port"] == 30002
        assert nat["nat"] == {"side": "fwd_snat", "ip": "198.51.100.7", "port": public[1]}
        assert rev["forward"]["dst_ip"] == "198.51.100.7"
        assert rev["forward"]["dst_port"] == public[1]
        assert rev["nat"] == {"side": "rev_snat", "ip": "10.0.0.1", "port": 30002}
        assert 0 < nat["expires_in"] <= 600.0
        (block,) = report["snat_blocks"]
        assert block["ip"] == "198.51.100.7" and block["used"] == 1
        human = CliRunner().invoke(conntrack_app, [])
        assert human.exit_code == 0, human.output
        assert "tcp 10.0.0.1:30001 > 10.0.0.2:80" in human.output
        assert f"fwd_snat→198.51.100.7:{public[1]}" in human.output
        assert "SNAT port blocks" in human.output
    finally:
        server.stop()


def test_the_table_is_saved_periodically_off_the_agent_thread(tmp_path: Path) -> None:
    path = tmp_path / "periodic.json"
    clock = [0.0]
    service = FlowStateService(
        "h", MemoryNsdb(MemoryStore()), AgentMetrics(), list, state_file=path,
        clock=lambda: clock[0],
    )  # fmt: skip
    service.start()
    service.track([ConntrackEntry(conn())])
    service.sweep(1.0, lambda m: None)
    assert not path.exists()  # not yet due
    clock[0] = 11.0
    service.sweep(11.0, lambda m: None)
    assert service._saver is not None
    service._saver.join(timeout=10)
    assert len(json.loads(path.read_text())["entries"]) == 1
    service.stop()


@pytest.mark.parametrize("old_session_ends", ["before", "after"])
def test_a_restarted_agent_holds_its_restored_snat_ports_again(
    tmp_path: Path, old_session_ends: str
) -> None:
    """A dynamic SNAT binding restored from the state file keeps its port: the new run
    leases the block again (once the previous run's session has ended) and never hands
    that port to another connection."""
    path, store = tmp_path / "state.json", MemoryStore()
    ext, ports = ip("198.51.100.7"), (6000, 6063)
    old_nsdb = MemoryNsdb(store)
    old = FlowStateService("h", old_nsdb, AgentMetrics(), list, state_file=path)
    old.start()
    public = old.snat.allocate((ext, ext), ports, conn(1))
    assert public is not None
    fwd, rev = snat(1, public)
    old.track([fwd, rev])
    old.stop()
    if old_session_ends == "before":
        old_nsdb.close()
    new = FlowStateService("h", MemoryNsdb(store), AgentMetrics(), list, state_file=path)
    new.start()
    if old_session_ends == "after":
        assert new.snat.binding(rev.key) is None  # the block is still the old run's
        old_nsdb.close()
        new.sweep(1.0, lambda m: None)
    assert new.snat.binding(rev.key) == public
    other = new.snat.allocate((ext, ext), ports, conn(2))
    assert other is not None and other != public
    new.stop()


def test_a_nearly_full_datapath_connection_table_is_shown_and_warned_of(
    cloud: Cloud, caplog: pytest.LogCaptureFixture
) -> None:
    """The table evicts silently at capacity, so the sweep reports how full it is (two
    gauges) and warns from 90 % on (rate-limited)."""
    h = cloud.host("h1", "198.18.0.1")
    h.dp.conntrack.max_entries = 20
    for i in range(17):
        h.dp.ct_commit((7, PROTO_TCP, ip("10.0.0.1"), ip("10.0.0.2"), 40000 + i, 80))
    cloud.tick(SWEEP + 0.01)
    metrics = h.agent.metrics
    assert metrics.datapath_connections._value.get() == 17
    assert metrics.datapath_connections_capacity._value.get() == 20
    assert "connection table" not in caplog.text  # 85 %: not yet
    h.dp.ct_commit((7, PROTO_TCP, ip("10.0.0.1"), ip("10.0.0.2"), 40100, 80))
    with caplog.at_level(logging.WARNING, logger="tessera.agent.agent"):
        cloud.tick(SWEEP_MAX + 0.01)
        cloud.tick(SWEEP_MAX + 0.01)  # within the minute: said once
    assert metrics.datapath_connections._value.get() == 18
    warnings = [r for r in caplog.records if "connection table is 90% full" in r.getMessage()]
    assert len(warnings) == 1 and "18 of 20" in warnings[0].getMessage()
