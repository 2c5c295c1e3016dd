"""What `tessera conntrack` shows: the table and the SNAT leases as JSON-ready dicts.

Built here rather than in the agent so the control socket's answer has one definition
that the CLI's table and its tests read. Rows are the simulation's entries: a connection
(`kind` "conntrack", its forward key and the key its replies carry) or one NAT binding
(`kind` its NatKey kind; `nat` where packets with that key are translated to).
"""

from __future__ import annotations

from typing import Any

from tessera.agent.flowstate.entry import tcp_state
from tessera.agent.flowstate.snat import SnatAllocator
from tessera.agent.flowstate.table import ConnTable
from tessera.nsdb.tables import SNAT_BLOCK_SIZE
from tessera.packet.addr import ip_to_str
from tessera.simulation.flowstate import ConnKey, NatEntry, NatKey, nat_return

_PROTO = {1: "icmp", 6: "tcp", 17: "udp"}


def key_json(key: ConnKey | NatKey) -> dict[str, Any]:
    name = _PROTO.get(key.proto, f"proto{key.proto}")
    src, dst = ip_to_str(key.src), ip_to_str(key.dst)
    if key.proto == 1:
        text = f"{name} {src} > {dst} id={key.sport}"
    else:
        text = f"{name} {src}:{key.sport} > {dst}:{key.dport}"
    return {
        "proto": key.proto,
        "src_ip": src,
        "src_port": key.sport,
        "dst_ip": dst,
        "dst_port": key.dport,
        "text": text,
    }


def conntrack_report(table: ConnTable, snat: SnatAllocator | None, now: float) -> dict[str, Any]:
    entries = []
    for tracked in sorted(table.snapshot(), key=lambda t: t.created):
        e = tracked.entry
        nat = None
        if isinstance(e, NatEntry):
            kind: str = e.key.kind
            # A forward translation's replies carry the key of its reverse binding.
            ret = key_json(nat_return(e.key, e.binding).key) if kind.startswith("fwd") else None
            nat = {"side": e.key.kind, "ip": ip_to_str(e.binding.ip), "port": e.binding.port}
        else:
            kind = "conntrack"
            ret = key_json(e.key.reversed())
        idle = max(0.0, now - tracked.last_seen)
        entries.append(
            {
                "kind": kind,
                "zone": e.key.device,
                "forward": key_json(e.key),
                "return": ret or {"text": ""},
                "nat": nat,
                # established / closing (FIN seen) / reset (RST seen); "active" if not TCP
                "state": tcp_state(e.key.proto, tracked.tcp_flags),
                "tcp_flags": tracked.tcp_flags,
                # None: created here; else the host id of the peer that pushed it
                "origin": tracked.origin,
                "shared_with": sorted(tracked.shared),
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
