"""The health monitor's decisions without a network: a fake clock and fake probes drive
`RouterProber.step` (one round), and `desired` reads hand-made objects. Plus a real TCP
round against listeners on 127.0.0.1 (no root needed)."""

from __future__ import annotations

import socket
from collections.abc import Sequence

import pytest

from tessera.cluster.health_monitor import HealthMonitorService, RouterProber, desired
from tessera.cluster.health_probe import tcp_round
from tessera.cluster.health_state import ACTIVE, INACTIVE, Target
from tessera.cluster.service import ServiceEnv
from tessera.model import HealthMonitor, LoadBalancer, Pool, PoolMember
from tessera.model.load_balancers import LbStatus
from tessera.nsdb.errors import Unavailable
from tessera.nsdb.memory import MemoryNsdb

ROUTER = "00000000-0000-4000-8000-0000000000aa"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeNet:
    """Which members answer, and whether the probe path works; records each round."""

    def __init__(self) -> None:
        self.up: set[str] = set()
        self.path = True
        self.rounds: list[list[str]] = []

    def tcp(self, targets: Sequence[Target]) -> dict[str, bool]:
        self.rounds.append([t.member_id for t in targets])
        return {t.member_id: t.member_id in self.up for t in targets}


def target(
    member: str, *, delay: float = 2.0, retries: int = 3, status: LbStatus = ACTIVE
) -> Target:
    return Target(member, "10.0.0.10", 80, delay, 1.0, retries, status)


def prober(clock: Clock, net: FakeNet) -> tuple[RouterProber, list[tuple[str, str]]]:
    written: list[tuple[str, str]] = []
    p = RouterProber(
        ROUTER,
        None,
        lambda member, status: written.append((member, status)),
        clock=clock,
        tcp=net.tcp,
        path_works=lambda: net.path,
    )
    return p, written


def run_for(p: RouterProber, clock: Clock, seconds: float, tick: float = 0.5) -> None:
    end = clock.now + seconds
    while clock.now < end:
        p.step()
        clock.now += tick


def test_a_member_is_inactive_after_max_retries_failures_within_delay_times_retries() -> None:
    clock, net = Clock(), FakeNet()
    p, written = prober(clock, net)
    net.up = {"m1"}
    p.set_targets([target("m1")])
    run_for(p, clock, 10)
    assert written == []  # healthy and already ACTIVE: nothing to write
    net.up = set()
    stopped = clock.now
    while not written:
        p.step()
        clock.now += 0.1
    assert written == [("m1", INACTIVE)]
    assert clock.now - stopped <= 2.0 * 3  # delay x max_retries
    run_for(p, clock, 10)
    assert written == [("m1", INACTIVE)]  # written once, not on every probe
    net.up = {"m1"}
    run_for(p, clock, 2.1)
    assert written == [("m1", INACTIVE), ("m1", ACTIVE)]  # one success is enough


def test_failures_must_be_in_a_row() -> None:
    clock, net = Clock(), FakeNet()
    p, written = prober(clock, net)
    p.set_targets([target("m1", delay=1.0, retries=3)])
    for answers in (False, False, True, False, False, True, False, False):
        net.up = {"m1"} if answers else set()
        p.step()
        clock.now += 1.0
    assert written == []
    net.up = set()
    run_for(p, clock, 1.0)
    assert written == [("m1", INACTIVE)]


def test_probes_go_every_delay_seconds_at_a_fixed_rate() -> None:
    clock, net = Clock(), FakeNet()
    p, _ = prober(clock, net)
    net.up = {"a", "b"}
    p.set_targets([target("a", delay=1.0), target("b", delay=3.0)])
    run_for(p, clock, 6.0, tick=0.25)
    assert sum("a" in r for r in net.rounds) == 6
    assert sum("b" in r for r in net.rounds) == 2


def test_a_broken_probe_path_counts_neither_way() -> None:
    clock, net = Clock(), FakeNet()
    p, written = prober(clock, net)
    p.set_targets([target("m1", delay=1.0, retries=2)])
    net.path = False  # e.g. the probe port was just bound and the agent does not serve it
    run_for(p, clock, 10)
    assert written == [] and len(net.rounds) == 10
    net.path = True
    run_for(p, clock, 2)
    assert written == [("m1", INACTIVE)]


def test_a_status_written_by_someone_else_is_taken_as_the_current_one() -> None:
    clock, net = Clock(), FakeNet()
    p, written = prober(clock, net)
    net.up = {"m1"}
    p.set_targets([target("m1", status=INACTIVE)])  # a previous leader marked it down
    p.step()
    assert written == [("m1", ACTIVE)]
    p.set_targets([target("m1", status=INACTIVE)])  # a read from before that write
    clock.now += 2.0
    p.step()
    assert written == [("m1", ACTIVE), ("m1", ACTIVE)]  # written again: converges


def test_a_failed_write_is_tried_again_on_the_next_result() -> None:
    clock, net = Clock(), FakeNet()
    attempts: list[str] = []

    def flaky(member: str, status: str) -> None:
        attempts.append(status)
        if len(attempts) == 1:
            raise Unavailable("ZooKeeper is down")

    p = RouterProber(ROUTER, None, flaky, clock=clock, tcp=net.tcp, path_works=lambda: True)
    p.set_targets([target("m1", delay=1.0, retries=1)])
    run_for(p, clock, 2.0, tick=1.0)
    assert attempts == [INACTIVE, INACTIVE]


def test_members_that_leave_are_no_longer_probed() -> None:
    clock, net = Clock(), FakeNet()
    p, _ = prober(clock, net)
    p.set_targets([target("a", delay=1.0), target("b", delay=1.0)])
    p.step()
    p.set_targets([target("b", delay=1.0)])
    clock.now += 1.0
    p.step()
    assert net.rounds == [["a", "b"], ["b"]]


# -- what to probe and write, from the objects ----------------------------------------


def _objects(
    *, monitor_up: bool = True, pool_monitored: bool = True, statuses: Sequence[LbStatus] = ()
) -> tuple[LoadBalancer, Pool, list[PoolMember], HealthMonitor]:
    lb = LoadBalancer(router_id=ROUTER)
    hm = HealthMonitor(delay=2, timeout=1, max_retries=3, admin_state_up=monitor_up)
    pool = Pool(load_balancer_id=lb.id, health_monitor_id=hm.id if pool_monitored else None)
    members = [
        PoolMember(pool_id=pool.id, address=f"10.0.0.{10 + i}", protocol_port=80, status=s)
        for i, s in enumerate(statuses)
    ]
    return lb, pool, members, hm


def test_members_of_a_monitored_pool_are_probed_from_their_router() -> None:
    lb, pool, members, hm = _objects(statuses=[ACTIVE, INACTIVE])
    want = desired([lb], [pool], members, [hm])
    assert list(want.targets) == [ROUTER]
    got = {(t.address, t.delay, t.max_retries, t.status) for t in want.targets[ROUTER]}
    assert got == {("10.0.0.10", 2.0, 3, ACTIVE), ("10.0.0.11", 2.0, 3, INACTIVE)}
    assert want.pools == {} and want.reset_members == []


def test_a_pool_whose_members_are_all_inactive_is_inactive() -> None:
    lb, pool, members, hm = _objects(statuses=[INACTIVE, INACTIVE])
    assert desired([lb], [pool], members, [hm]).pools == {pool.id: INACTIVE}
    back = pool.model_copy(update={"status": INACTIVE})
    members[0] = members[0].model_copy(update={"status": ACTIVE})
    assert desired([lb], [back], members, [hm]).pools == {pool.id: ACTIVE}


@pytest.mark.parametrize("case", ["no monitor", "monitor down"])
def test_a_pool_no_longer_monitored_gets_its_members_back_to_active(case: str) -> None:
    lb, pool, members, hm = _objects(statuses=[INACTIVE, ACTIVE])
    pool = pool.model_copy(update={"status": INACTIVE})
    monitored = desired([lb], [pool], members, [hm]).monitored
    assert monitored == {pool.id}
    if case == "no monitor":
        pool = pool.model_copy(update={"health_monitor_id": None})
    else:
        hm = hm.model_copy(update={"admin_state_up": False})
    want = desired([lb], [pool], members, [hm], monitored)
    assert want.targets == {} and want.monitored == set()
    assert want.reset_members == [members[0].id]
    assert want.pools == {pool.id: ACTIVE}
    assert want.monitors == ({hm.id: INACTIVE} if case == "monitor down" else {})


def test_statuses_of_a_pool_never_monitored_are_left_alone() -> None:
    lb, pool, members, hm = _objects(pool_monitored=False, statuses=[INACTIVE])
    pool = pool.model_copy(update={"status": INACTIVE})
    want = desired([lb], [pool], members, [hm], frozenset())
    assert want.reset_members == [] and want.pools == {} and want.targets == {}


def test_a_load_balancer_or_pool_that_is_down_pauses_probing() -> None:
    lb, pool, members, hm = _objects(statuses=[INACTIVE])
    down = lb.model_copy(update={"admin_state_up": False})
    want = desired([down], [pool], members, [hm])
    assert want.targets == {} and want.reset_members == [] and want.pools == {}


def test_the_service_needs_the_host_it_probes_from() -> None:
    nsdb = MemoryNsdb()
    try:
        with pytest.raises(ValueError, match="host_id is required"):
            HealthMonitorService.from_env(ServiceEnv("health-monitor", "n1", nsdb, {}))
        with pytest.raises(ValueError, match="resync_interval"):
            HealthMonitorService.from_env(
                ServiceEnv("health-monitor", "n1", nsdb, {"host_id": "h", "resync_interval": 0})
            )
    finally:
        nsdb.close()


# -- a real round of connects ---------------------------------------------------------


def test_a_tcp_round_tells_a_listener_from_a_closed_port() -> None:
    with socket.socket() as listener, socket.socket() as closed:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connects are refused
        up = Target("up", "127.0.0.1", listener.getsockname()[1], 1.0, 1.0, 3, ACTIVE)
        down = Target("down", "127.0.0.1", closed.getsockname()[1], 1.0, 1.0, 3, ACTIVE)
        assert tcp_round([up, down]) == {"up": True, "down": False}
