"""ZooKeeper failure under load (issue 17, part 4), with the scale bench's own harness:
real agents (each its own session, cache and upcall thread) on fake datapaths, a stream
of API and store writes, and the leader of a real three-member ensemble killed with
SIGKILL. Afterwards every agent's cache must equal a full read of the NSDB, every port
bound to it must be attached, and no acknowledged write may be missing.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

from scale_failure import zk_failure  # noqa: E402
from scale_zk import BenchZk  # noqa: E402

pytestmark = [pytest.mark.zookeeper, pytest.mark.slow]


@pytest.fixture
def ensemble(tmp_path: Path) -> Iterator[BenchZk]:
    zk = BenchZk(tmp_path, members=3, heap_mb=256)
    try:
        yield zk
    finally:
        zk.stop()


def test_agents_resync_and_no_acknowledged_write_is_lost_when_the_leader_dies(
    ensemble: BenchZk,
) -> None:
    leader = ensemble.leader()
    assert leader is not None
    result = zk_failure(ensemble, agents=6, log=lambda _msg: None)
    assert result.before_ok, "the caches were wrong before the failure"
    assert leader.mode in ("follower", "leader"), "the killed member did not rejoin"
    # Writes went through before the failure and again after it.
    assert 0 < result.acked_before < result.acked, (
        result.acked_before,
        result.acked,
        result.errors,
    )
    assert result.lost == [], result.lost
    assert result.mismatches == {}, result.mismatches
    assert result.unattached == {}, result.unattached
    assert not math.isnan(result.resync), "the caches did not converge"
    assert not math.isnan(result.outage), "no write was acknowledged after the failure"
