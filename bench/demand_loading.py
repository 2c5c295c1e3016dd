"""What an agent with no bound port pays while 10,000 unrelated ports are created.

Issue 17 measured it in a lab (63 → 96 MB RSS, 19.9 s CPU); this is the same experiment
on the in-memory NSDB, in one process: a writer creates 2,500 bridges of 4 ports each in
the store while (with `--agent`) an agent's topology cache for a host with no port
watches. The agent's cost is the difference between a run with it and one without
(same store, same writes), so run both:

    .venv/bin/python bench/demand_loading.py --ports 10000
    .venv/bin/python bench/demand_loading.py --ports 10000 --agent
"""

from __future__ import annotations

import argparse
import resource
import threading
import time

from tessera.agent.cache import TopologyCache
from tessera.model import Bridge, Port, new_id
from tessera.nsdb.base import Create
from tessera.nsdb.memory import MemoryNsdb, MemoryStore


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, default=10_000)
    parser.add_argument("--agent", action="store_true", help="run an agent's cache meanwhile")
    args = parser.parse_args()
    store = MemoryStore()
    writer = MemoryNsdb(store)
    cache = None
    if args.agent:
        cache = TopologyCache(MemoryNsdb(store), new_id(), lambda update: None)
        cache.start()
    rss0, cpu0 = _rss_mb(), time.process_time()
    for _ in range(args.ports // 4):
        br = Bridge(name="b")
        writer.commit(
            [Create(br)] + [Create(Port(device_id=br.id, type="Bridge")) for _ in range(4)]
        )
    if cache is not None:  # let the agent's notification thread catch up
        done = threading.Event()
        writer.notifier.submit(done.set)
        done.wait(60)
        while not cache.idle():
            time.sleep(0.01)
        cache.nsdb.notifier.run_sync(lambda: None, timeout=60)  # type: ignore[attr-defined]
    rss1, cpu1 = _rss_mb(), time.process_time()
    held = sum(len(cache.state.of(k)) for k in cache.state._objects) if cache else 0
    print(
        f"ports={args.ports} agent={'yes' if cache else 'no'} "
        f"rss_growth_mb={rss1 - rss0:.1f} cpu_s={cpu1 - cpu0:.2f} held={held}"
    )


if __name__ == "__main__":
    main()
