"""A compute node's report to placement (`tessera host report`, the lab): the host
registers as a resource provider named for it, with its uuid the host id, and writes
its inventory and traits, retrying on a stale generation as a user would."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

P = "/placement"
ATTEMPTS = 5


class Api(Protocol):
    def get(self, path: str) -> Any: ...
    def post(self, path: str, body: Mapping[str, Any] | None = None) -> Any: ...
    def put(self, path: str, body: Mapping[str, Any]) -> Any: ...


def local_inventory(disk_path: str = "/") -> dict[str, dict[str, Any]]:
    """This machine's VCPU (online CPUs), MEMORY_MB (MemTotal) and DISK_GB (of
    `disk_path`), nothing reserved, ratio 1."""
    vcpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory_mb = 1024
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory_mb = int(line.split()[1]) // 1024
                    break
    except OSError:
        pass
    disk_gb = max(1, shutil.disk_usage(disk_path).total // 2**30)
    return {
        "VCPU": {"total": max(1, vcpus or 1)},
        "MEMORY_MB": {"total": max(1, memory_mb)},
        "DISK_GB": {"total": disk_gb},
    }


def report(
    api: Api,
    host_id: str,
    name: str,
    inventories: Mapping[str, Mapping[str, Any]],
    traits: Iterable[str] = (),
) -> dict[str, Any]:
    """Register (or find) the provider and write its inventory and traits; the
    provider as it is afterwards."""
    from tessera.client.errors import ApiError

    path = f"{P}/resource_providers/{host_id}"
    try:
        api.get(path)
    except ApiError as exc:
        if exc.status != 404:
            raise
        api.post(f"{P}/resource_providers", {"name": name, "uuid": host_id})
    wanted_traits = sorted(set(traits))
    for trait in wanted_traits:
        if trait.startswith("CUSTOM_"):
            api.put(f"{P}/traits/{trait}", {})
    for attempt in range(1, ATTEMPTS + 1):
        current = api.get(path)
        try:
            if current["name"] != name:
                api.put(path, {"name": name})
                current = api.get(path)
            body = {
                "resource_provider_generation": current["generation"],
                "inventories": {k: dict(v) for k, v in inventories.items()},
            }
            generation = api.put(f"{path}/inventories", body)["resource_provider_generation"]
            if wanted_traits != current["traits"]:
                api.put(
                    f"{path}/traits",
                    {"resource_provider_generation": generation, "traits": wanted_traits},
                )
            break
        except ApiError as exc:
            if exc.status != 409 or attempt == ATTEMPTS or "generation" not in str(exc):
                raise
    provider: dict[str, Any] = api.get(path)
    return provider
