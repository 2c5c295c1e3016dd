"""Bindings of this host → datapath ports, with stable local port numbers.

A binding (a port whose `host_id` is this host) names an interface; the datapath attaches
to it as a local port numbered 1..4095 (the eBPF miss tag carries 12 bits). Numbers are
kept across agent restarts by reading back what the datapath already has (the eBPF maps
survive the agent), because every installed flow names ports by number: renumbering would
silently send packets to the wrong VM.

An interface that does not exist yet (bound before the VM was cabled) is retried on
every `sync()`; the agent calls it periodically while anything is pending.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tessera.datapath.base import MAX_PORT_NO, Datapath, DatapathError
from tessera.model import Port

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attached:
    port_id: str
    number: int
    ifname: str
    tunnel_key: int


class PortManager:
    def __init__(self, datapath: Datapath) -> None:
        self.dp = datapath
        self._by_id: dict[str, Attached] = {}
        self._by_number: dict[int, Attached] = {}
        self._failed: dict[str, str] = {}  # port id -> why attaching failed
        # Numbers a previous agent gave to interfaces (adopted from the datapath).
        self._previous: dict[str, int] = {}

    def adopt(self) -> None:
        """Remember the numbers the datapath holds from a previous agent."""
        for number, binding in self.dp.ports().items():
            self._previous[binding.ifname] = number

    def number_of(self, port_id: str) -> int | None:
        a = self._by_id.get(port_id)
        return a.number if a is not None else None

    def port_of(self, number: int) -> str | None:
        a = self._by_number.get(number)
        return a.port_id if a is not None else None

    def attached(self) -> dict[str, Attached]:
        return dict(self._by_id)

    def pending(self) -> dict[str, str]:
        """Bindings not attached yet, with the reason."""
        return dict(self._failed)

    def _free_number(self, ifname: str) -> int:
        prev = self._previous.get(ifname)
        if prev is not None and prev not in self._by_number:
            return prev
        reserved = set(self._previous.values())
        for n in range(1, MAX_PORT_NO + 1):
            if n not in self._by_number and n not in reserved:
                return n
        for n in range(1, MAX_PORT_NO + 1):
            if n not in self._by_number:
                return n
        raise DatapathError(f"no free local port number (at most {MAX_PORT_NO} per host)")

    def sync(self, bound: dict[str, Port]) -> set[str]:
        """Attach and detach to match `bound` (port id → port); returns the ids of
        ports whose attachment changed (their flows must be recomputed)."""
        changed: set[str] = set()
        for port_id, a in list(self._by_id.items()):
            port = bound.get(port_id)
            if port is None or port.interface_name != a.ifname:
                self._detach(a)
                changed.add(port_id)
        for port_id in list(self._failed):
            if port_id not in bound:
                del self._failed[port_id]
        for port_id, port in bound.items():
            ifname = port.interface_name
            if ifname is None:
                continue
            current = self._by_id.get(port_id)
            if current is not None:
                a = current
                if a.tunnel_key != port.tunnel_key:
                    self.dp.add_port(a.number, ifname, port.tunnel_key)
                    self._remember(Attached(port_id, a.number, ifname, port.tunnel_key))
                    changed.add(port_id)
                continue
            try:
                number = self._free_number(ifname)
                self.dp.add_port(number, ifname, port.tunnel_key or None)
            except DatapathError as exc:
                if self._failed.get(port_id) != str(exc):
                    log.warning("port %s: %s (will retry)", port_id, exc)
                self._failed[port_id] = str(exc)
                continue
            self._failed.pop(port_id, None)
            self._remember(Attached(port_id, number, ifname, port.tunnel_key))
            log.info("port %s attached: %s as local port %d", port_id, ifname, number)
            changed.add(port_id)
        return changed

    def _remember(self, a: Attached) -> None:
        self._by_id[a.port_id] = a
        self._by_number[a.number] = a

    def _detach(self, a: Attached) -> None:
        try:
            self.dp.remove_port(a.number)
        except DatapathError as exc:
            log.warning("detaching %s: %s", a.ifname, exc)
        self._by_id.pop(a.port_id, None)
        self._by_number.pop(a.number, None)
        self._previous.pop(a.ifname, None)
        log.info("port %s detached from %s", a.port_id, a.ifname)

    def detach_stale(self) -> list[int]:
        """Datapath ports no binding claims (a previous agent's, now unbound)."""
        stale = [n for n in self.dp.ports() if n not in self._by_number]
        for n in stale:
            try:
                self.dp.remove_port(n)
            except DatapathError as exc:
                log.warning("removing stale local port %d: %s", n, exc)
        return stale
