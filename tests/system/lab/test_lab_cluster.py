"""`tessera lab up --cluster-nodes 3`: the lab's API process and two more cluster nodes
share the lab's ZooKeeper; the janitor's leader dies, another node takes the janitor
over (hosts stay alive), `lab up` again restarts the dead node, `lab down` stops all."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import httpx
import pytest
from lab_helpers import Lab, Snapshot, require_agent, root_missing, tessera

from support.wait import wait_until
from tessera.api.server import ZK_SESSION_TIMEOUT

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)


def _cluster(nsdb: str) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(
        tessera("cluster", "status", "--json", "--nsdb", nsdb).stdout
    )
    return answer


def test_a_lab_runs_three_cluster_nodes_and_the_janitor_fails_over() -> None:
    require_agent()
    before = Snapshot.take()
    lab = Lab()
    try:
        lab.up("--hosts", "1", "--cluster-nodes", "3")
        status = lab.status()
        extra = status["cluster_nodes"]
        assert [n["name"] for n in extra] == [f"{lab.name}-c2", f"{lab.name}-c3"]
        assert all(n["pid"] for n in extra)
        nsdb = status["nsdb"]["url"]
        wait_until(lambda: len(_cluster(nsdb)["nodes"]) == 3, what="three nodes in status")
        leaders = wait_until(
            lambda: (who := _cluster(nsdb)["leaders"]["host-liveness"]) and len(who) == 1 and who
        )
        pids = {n["name"]: n["pid"] for n in extra}
        for node in _cluster(nsdb)["nodes"]:  # node 1 is the lab's API process
            pids.setdefault(node["node"], status["api"]["pid"])
        lab.pids |= set(pids.values())
        victim = leaders[0]
        os.kill(pids[victim], signal.SIGKILL)
        killed = time.monotonic()

        def new_leader() -> list[str] | None:
            who: list[str] = _cluster(nsdb)["leaders"]["host-liveness"]
            return who if who and victim not in who else None

        wait_until(new_leader, timeout=ZK_SESSION_TIMEOUT + 10, what="a new janitor")
        assert time.monotonic() - killed < ZK_SESSION_TIMEOUT + 6
        # The host's liveness is still kept (by the new janitor, through any live API).
        host = status["hosts"][0]
        live_api = next(
            n["api"] for n in _cluster(nsdb)["nodes"] if n["node"] != victim and n.get("api")
        )
        hosts = httpx.get(f"{live_api}/hosts", timeout=10).json()
        assert {h["id"]: h["alive"] for h in hosts}[host["host_id"]]

        lab.up()  # repairs: the dead node runs again
        wait_until(lambda: len(_cluster(nsdb)["nodes"]) == 3, what="three nodes again")
        lab.pids |= {n["pid"] for n in lab.status()["cluster_nodes"]}
        lab.pids.add(lab.status()["api"]["pid"])
        lab.down()
        lab.assert_gone(before)
    finally:
        if lab.dir.exists() or lab.namespaces():
            lab.down()
