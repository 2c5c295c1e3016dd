"""`POST /traces`: what the virtual network does with a described packet.

The trace runs the agents' own simulation over a snapshot of the whole topology read
from the NSDB (with every learned MAC and ARP entry), so it shows what an agent would
decide for that packet's first occurrence; nothing is installed or learned.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from tessera.api.schemas import TraceRequest
from tessera.api.snapshot import load_snapshot
from tessera.nsdb.errors import IntegrityError
from tessera.packet.errors import PacketError
from tessera.simulation.errors import NotYetLoaded
from tessera.simulation.trace import PacketDescription, trace_packet

router = APIRouter(tags=["traces"])


@router.post("/traces")
def create_trace(request: Request, description: TraceRequest) -> dict[str, Any]:
    """Simulate `description` entering at `port_id`; returns the path, verdicts, actions,
    emitted packets, the flow match with its mask, and the tags."""
    snapshot = load_snapshot(request.app.state.nsdb)
    try:
        packet = PacketDescription.model_validate(description.model_dump())
        return trace_packet(snapshot, packet, time.time())
    except NotYetLoaded as exc:
        raise IntegrityError(
            f"port_id: the packet's path names a missing object ({exc}); "
            "is the ingress port id right?"
        ) from None
    except PacketError as exc:
        raise IntegrityError(f"the described packet is not a valid frame: {exc}") from None
