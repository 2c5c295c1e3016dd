"""The lab's hosts in placement (a lab with Cassandra, docs/placement.md): every host a
resource provider, and VMs placed by the scheduler (`vm add --schedule`).

- `lab up` registers each host hK as a resource provider: its uuid the host id, its
  name hK, a member of the lab's aggregate, with a VCPU and a MEMORY_MB inventory
  (`inventory`). It writes only what differs, so a repeated `up` changes nothing, and
  the `up` that adds a host registers it. The providers live in the lab's Cassandra,
  which `lab down` removes with them.
- `vm add --schedule` asks `POST /placement/requests` for VCPU and MEMORY_MB among the
  lab's aggregate, as a new consumer uuid the lab records with the VM; `vm del` frees
  its allocation.

All of it goes through the lab's API, like any other client.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping
from typing import Any

import httpx

from tessera.client.errors import ApiError, ApiUnreachable, UserError
from tessera.client.rest import ApiClient
from tessera.lab import api, names
from tessera.lab.errors import LabError
from tessera.lab.state import HostState, LabState
from tessera.placement import report
from tessera.placement.errors import PlacementError
from tessera.placement.model import Inventory

P = "/placement"
#: The API opens its Cassandra session on first use; a claim is a Paxos round.
TIMEOUT = httpx.Timeout(60.0, connect=2.0)
#: Nova's defaults, for an inventory derived from this machine.
CPU_ALLOCATION_RATIO = 4.0  # initial_cpu_allocation_ratio
RESERVED_MEMORY_MB = 512  # reserved_host_memory_mb
ATTEMPTS = 5


def inventory(lab: LabState) -> dict[str, dict[str, Any]]:
    """What each host reports. `lab up --host-vcpus N --host-ram MB`: exactly that
    (nothing reserved, ratio 1). Else this machine's CPUs and memory
    (`report.local_inventory`) as Nova reports a hypervisor's by default: VCPU with an
    allocation ratio of 4, 512 MB of memory reserved for the host. Every host reports
    the same: the hosts share one machine and their VMs (namespaces) use neither CPU
    nor memory of their own, so each host is shown as a copy of the machine rather
    than as a slice of it (a slice would leave a 2-CPU machine's hosts 1 VCPU each)."""
    local = report.local_inventory()
    vcpu: dict[str, Any]
    memory: dict[str, Any]
    if lab.host_vcpus is not None:
        vcpu = {"total": lab.host_vcpus}
    else:
        vcpu = {"total": local["VCPU"]["total"], "allocation_ratio": CPU_ALLOCATION_RATIO}
    if lab.host_ram_mb is not None:
        memory = {"total": lab.host_ram_mb}
    else:
        total = int(local["MEMORY_MB"]["total"])
        memory = {"total": total, "reserved": RESERVED_MEMORY_MB if total > 2 * 512 else 0}
    return {"VCPU": vcpu, "MEMORY_MB": memory}


def describe_inventory(wanted: Mapping[str, Mapping[str, Any]]) -> str:
    """`VCPU 8 (2 x 4.0), MEMORY_MB 7680 (8192 - 512)`: the capacities, and how."""
    parts = []
    for name, fields in sorted(wanted.items(), key=lambda kv: kv[0] != "VCPU"):
        inv = _inventory(fields)
        how = []
        if inv.reserved:
            how.append(f"{inv.total} - {inv.reserved}")
        if inv.allocation_ratio != 1.0:
            how.append(f"{inv.total - inv.reserved} x {inv.allocation_ratio:g}")
        parts.append(f"{name} {inv.capacity}" + (f" ({', '.join(how)})" if how else ""))
    return ", ".join(parts)


def _inventory(fields: Mapping[str, Any]) -> Inventory:
    try:
        return Inventory.from_json(dict(fields))
    except PlacementError as exc:
        raise LabError(f"a host inventory of {dict(fields)}: {exc}") from None


def _normal(inventories: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Inventories as the API shows them (every field), to compare."""
    return {k: _inventory(v).to_json() for k, v in inventories.items()}


def _client(lab: LabState) -> contextlib.AbstractContextManager[ApiClient]:
    return api.client(lab, TIMEOUT)


def register_hosts(lab: LabState) -> list[str]:
    """Every host a provider with the lab's inventory, in the lab's aggregate; returns
    the names of the hosts registered or changed now (none on a repeated `up`)."""
    wanted = inventory(lab)
    changed = []
    with _client(lab) as client:
        for host in lab.hosts:
            try:
                if _register(client, lab, host, wanted):
                    changed.append(host.name)
            except UserError as exc:
                raise LabError(
                    f"lab {lab.name}: host {host.name} cannot register in placement: {exc.message}"
                ) from None
    return changed


def _provider(client: ApiClient, host: HostState) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = client.get(f"{P}/resource_providers/{host.host_id}")
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
    return found


def _register(
    client: ApiClient, lab: LabState, host: HostState, wanted: dict[str, dict[str, Any]]
) -> bool:
    current = _provider(client, host)
    changed = False
    if (
        current is None
        or current["name"] != host.name
        or _normal(current["inventories"]) != _normal(wanted)
    ):
        # Traits a user gave the host stay.
        traits = current["traits"] if current is not None else ()
        current = report.report(client, host.host_id, host.name, wanted, traits)
        changed = True
    aggregate = names.placement_aggregate(lab.name)
    for attempt in range(1, ATTEMPTS + 1):
        if aggregate in current["aggregates"]:
            break
        body = {
            "resource_provider_generation": current["generation"],
            "aggregates": sorted({*current["aggregates"], aggregate}),
        }
        try:
            client.put(f"{P}/resource_providers/{host.host_id}/aggregates", body)
            changed = True
            break
        except ApiError as exc:
            if exc.status != 409 or attempt == ATTEMPTS:
                raise
        current = _provider(client, host) or current
    return changed


def usages(lab: LabState) -> dict[str, dict[str, dict[str, int]]] | None:
    """host name -> class -> {used, capacity}, None when placement does not answer."""
    try:
        with api.client(lab) as client:  # the usual timeout: `lab status` asks it too
            found = client.get(f"{P}/resource_providers")["resource_providers"]
    except (UserError, KeyError, TypeError):
        return None
    by_id = {p["uuid"]: p for p in found}
    out: dict[str, dict[str, dict[str, int]]] = {}
    for host in lab.hosts:
        provider = by_id.get(host.host_id)
        if provider is None:
            continue
        out[host.name] = {
            name: {
                "used": int(provider["usages"].get(name, 0)),
                "capacity": _inventory(fields).capacity,
            }
            for name, fields in sorted(provider["inventories"].items())
        }
    return out


def check_request(lab: LabState, vcpus: int, ram_mb: int) -> None:
    if lab.cassandra_nodes < 1:
        raise LabError(
            f"--schedule needs placement, which needs Cassandra: lab {lab.name} runs none "
            "(a lab made with `tessera lab up --cassandra N` has it)"
        )
    if vcpus < 1 or ram_mb < 1:
        raise LabError("--vcpus and --ram must be at least 1")


def schedule(lab: LabState, vcpus: int, ram_mb: int) -> tuple[HostState, str, dict[str, int]]:
    """Let the scheduler place a VM of `vcpus` and `ram_mb` on one of the lab's hosts:
    (the host, the consumer uuid, the allocation). No room: a LabError saying what is
    used where. Whatever goes wrong once the request was sent frees what it may have
    claimed."""
    check_request(lab, vcpus, ram_mb)
    consumer = str(uuid.uuid4())
    body = {
        "resources": {"VCPU": vcpus, "MEMORY_MB": ram_mb},
        "member_of": [names.placement_aggregate(lab.name)],
        "consumer": consumer,
    }
    with _client(lab) as client:
        try:
            placed = client.post(f"{P}/requests", body)
            provider = str(placed["provider"])
            allocation = {str(k): int(v) for k, v in placed["allocation"].items()}
        except ApiError as exc:
            if exc.status == 409:
                raise LabError(_no_room(lab, vcpus, ram_mb)) from None
            if exc.status == 503:
                raise LabError(f"placement cannot schedule now: {exc.api_message}") from None
            raise
        except BaseException:
            # A timeout or an interruption may come after the claim landed.
            free_quietly(lab, consumer)
            raise
    for host in lab.hosts:
        if host.host_id == provider:
            return host, consumer, allocation
    free_quietly(lab, consumer)
    raise LabError(f"placement chose resource provider {provider}, no host of lab {lab.name}")


def _no_room(lab: LabState, vcpus: int, ram_mb: int) -> str:
    asked = f"VCPU {vcpus}, MEMORY_MB {ram_mb}"
    used = usages(lab)
    if not used:
        return (
            f"no host of lab {lab.name} has room for {asked} (none is registered in "
            f"placement: `tessera lab up --name {lab.name}` registers them)"
        )
    where = "; ".join(
        f"{host} " + ", ".join(f"{name} {u['used']}/{u['capacity']}" for name, u in classes.items())
        for host, classes in used.items()
    )
    return (
        f"no host of lab {lab.name} has room for {asked} (used/capacity: {where}); "
        "`tessera lab vm del` a scheduled VM or ask for less"
    )


def free(lab: LabState, consumer: str) -> bool:
    """Free the consumer's allocation; False when it had none."""
    with _client(lab) as client:
        try:
            client.delete(f"{P}/allocations/{consumer}")
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
    return True


def free_quietly(lab: LabState, consumer: str) -> None:
    """Best effort, for undoing: a failure here must not hide the one being undone."""
    with contextlib.suppress(UserError, ApiUnreachable, OSError):
        free(lab, consumer)
