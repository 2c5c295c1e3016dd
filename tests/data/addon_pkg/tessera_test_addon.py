"""Add-on cluster services used by tessera's tests (tests/integration/cluster).

`beacon` (singleton) records in the NSDB which node runs it, and counts its runs in a
metric of its own. `crasher` (singleton) records each start, then fails, so the node
restarts it with back-off.
"""

from __future__ import annotations

import time

from prometheus_client import Counter

from tessera.cluster import ServiceContext, ServiceEnv


class Beacon:
    name = "beacon"
    redundancy = "singleton"

    def __init__(self, env: ServiceEnv) -> None:
        self.runs = Counter(
            "tessera_test_beacon_runs", "Runs of the beacon service", registry=env.registry
        )

    def run(self, ctx: ServiceContext) -> None:
        self.runs.inc()
        ctx.nsdb.state_set("addon_beacon", "runner", ctx.node, ephemeral=False)
        ctx.stop.wait()


class Crasher:
    name = "crasher"
    redundancy = "singleton"

    def __init__(self, env: ServiceEnv) -> None:
        self.after = float(env.options.get("crash_after", 0.0))
        self.starts = 0

    def run(self, ctx: ServiceContext) -> None:
        self.starts += 1
        ctx.nsdb.state_set(
            "addon_crasher", f"{ctx.node} {self.starts}", repr(time.time()), ephemeral=False
        )
        if ctx.wait(self.after):
            return
        raise RuntimeError(f"crash number {self.starts}")
