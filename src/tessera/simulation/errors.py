"""Errors of the simulation: only the ones a caller must tell apart.

Everything a packet can do wrong is a *result* (a drop with a reason), never an
exception. What is left is the snapshot not holding an object the packet needs.
"""

from __future__ import annotations


class SimulationError(Exception):
    """Base of the simulation's exceptions; the message is meant for humans."""


class NotYetLoaded(SimulationError):
    """The snapshot lacks an object the packet's path needs (MidoNet's NotYetException).

    An agent that loads the topology on demand catches it, loads `kind`/`id` (and what
    that object names), and runs the simulation again: a simulation has no side effect
    until its result is applied, so a re-run is always safe. With a complete snapshot
    (`tessera.api.snapshot.load_snapshot`) it means a dangling reference in the NSDB.
    """

    def __init__(self, kind: str, id: str) -> None:
        super().__init__(f"{kind} {id} is not in the topology snapshot")
        self.kind = kind
        self.id = id
