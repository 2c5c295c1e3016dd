"""What a device tells the driver to do next: the closed set MidoNet's devices return.

`ToPort`: leave by this port of the device. `Fork`: several copies leave (a flood), each
with its own match copy (rewrites are per branch; the mask is shared). `None`: the
branch ended inside the device — dropped, consumed or held — and the device has already
recorded which on the `Simulation`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.packet.match import FlowMatch
from tessera.simulation.topology import PortSnap


@dataclass(frozen=True, slots=True)
class ToPort:
    port_id: str
    in_port: PortSnap  # where the packet entered the device (for outbound filters)
    match: FlowMatch


@dataclass(frozen=True, slots=True)
class Fork:
    branches: tuple[ToPort, ...]


DeviceAction = ToPort | Fork | None
