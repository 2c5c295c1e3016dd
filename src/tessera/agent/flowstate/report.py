"""What `tessera conntrack` shows: the table and the SNAT leases as JSON-ready dicts.

Built here rather than in the agent so the control socket's answer has one definition
that the CLI's table and its tests read.
"""

from __future__ import annotations

from typing import Any

from tessera.agent.flowstate.entry import ConnKey
from tessera.agent.flowstate.snat import SnatAllocator
from tessera.agent.flowstate.table import ConnTable
from tessera.nsdb.tables import SNAT_BLOCK_SIZE
from tessera.packet.addr import ip_to_str


def key_json(key: ConnKey) -> dict[str, Any]:
    return {
        "proto": key.proto,
        "src_ip": ip_to_str(key.src_ip),
        "src_port": key.src_port,
        "dst_ip": ip_to_str(key.dst_ip),
        "dst_port": key.dst_port,
        "text": key.text(),
    }


def conntrack_report(table: ConnTable, snat: SnatAllocator | None, now: float) -> dict[str, Any]:
    entries = []
    for tracked in sorted(table.snapshot(), key=lambda t: t.entry.created):
        e = tracked.entry
        nat = None
        if e.kind == "nat" and e.nat_ip is not None:
            nat = {"side": e.nat_side, "ip": ip_to_str(e.nat_ip), "port": e.nat_port}
        idle = max(0.0, now - tracked.last_seen)
        entries.append(
            {
                "kind": e.kind,
                "zone": e.key.zone,
                "forward": key_json(e.key),
                "return": key_json(e.return_key()),
                "nat": nat,
                "timeout": tracked.timeout,
                "idle": idle,
                # Flows in use keep an entry past this: it is checked at each sweep.
                "expires_in": max(0.0, tracked.timeout - idle),
                "flows": len(tracked.flows),
            }
        )
    leases = []
    if snat is not None:
        for ip, block, used in sorted(snat.leases()):
            first = block * SNAT_BLOCK_SIZE
            leases.append(
                {
                    "ip": ip_to_str(ip),
                    "ports": f"{first}-{first + SNAT_BLOCK_SIZE - 1}",
                    "used": used,
                }
            )
    return {"entries": entries, "snat_blocks": leases}
