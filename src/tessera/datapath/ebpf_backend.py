"""The eBPF datapath behind the common interface: flows live in pinned kernel maps.

`tessera.datapath.ebpf` owns the program, its maps and the miss channel; this module
translates: local port numbers to ifindexes (the kernel redirects by ifindex), `Match`
to the `FlowKey`/mask pair, and back again when the agent reads what is installed.

Devices it owns in the host namespace: the miss veth `tsmiss0` (datapath end: misses
are redirected out of it and the `inject` program runs on its ingress) / `tsmiss1`
(agent end, read with AF_PACKET), and the VXLAN device it is told about. A restart
reuses all of them and the pinned maps, so flows keep forwarding while no agent runs.

Packets the agent sends without a flow (`execute`: generated replies) leave from
userspace: on a local port through AF_PACKET, into a tunnel as a VXLAN datagram to the
remote host's port 4789 (the receiving kernel's VXLAN device cannot tell the
difference).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from tessera.datapath import links
from tessera.datapath.afpacket import interface_mtu
from tessera.datapath.base import (
    MAX_MISSES_PER_WAKE,
    Action,
    CtTuple,
    Datapath,
    DatapathError,
    Flow,
    FlowStats,
    InstalledFlow,
    Match,
    Miss,
    Output,
    PortBinding,
    ToUserspace,
    mask_indexes,
    read_at_once,
)
from tessera.datapath.ebpf.actions import Device, decode, encode
from tessera.datapath.ebpf.bpf import prog_info
from tessera.datapath.ebpf.layout import FLOW_KEY_PACK, KEY_FIELDS, LOOKUP_INDEX_PACK, FlowKey
from tessera.datapath.ebpf.loader import EbpfFastPath, LoadError
from tessera.datapath.ebpf.maps import FloodSetsFull, FlowTooLarge, MaskTableFull
from tessera.datapath.ebpf.upcall import NO_VNET, MissChannel, VnetHdr
from tessera.datapath.frames import run_actions
from tessera.datapath.segment import prepare
from tessera.datapath.vxlan import OVERHEAD, VXLAN_PORT, encap
from tessera.packet.errors import PacketError
from tessera.packet.match import FIELD_NAMES
from tessera.packet.offload import complete_l4_checksum

log = logging.getLogger(__name__)

# How long the miss thread polls instead of sleeping after a miss (seconds): a wake-up
# from select(2) costs 80-90 us on this kind of VM, a poll(2) of an empty socket ~1 us.
# Overridden by the environment (microseconds; 0 turns it off), for measurements.
WARM_POLL = 0.0
WARM_POLL_ENV = "TESSERA_MISS_WARM_US"
_MISS, _WOKEN, _COLD = object(), object(), object()  # what a warm poll found
MISS_DP_END = "tsmiss0"
MISS_AGENT_END = "tsmiss1"
DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/tessera")
_MAC_FIELDS = ("eth_src", "eth_dst")
_pack_key = FLOW_KEY_PACK.pack
if KEY_FIELDS != FIELD_NAMES:  # packed_key relies on one order for both
    raise ImportError(f"flow_key fields {KEY_FIELDS} differ from match fields {FIELD_NAMES}")


def packed_key(match: Match) -> tuple[bytes, bytes]:
    """(key, mask) of a match as ``struct flow_key`` bytes, the key zero outside the mask.

    On the miss path, so it packs the values straight: a `Match` holds integers already
    (validated where they were parsed), in `KEY_FIELDS` order, zero outside its mask.
    """
    v = match.values
    key = _pack_key(v[0], v[1].to_bytes(6, "big"), v[2].to_bytes(6, "big"), *v[3:])
    return key, _kernel_mask(match.mask)


def to_kernel(match: Match) -> tuple[FlowKey, FlowKey]:
    """`packed_key` as the ctypes mirrors, for lookups and deletes."""
    key, mask = packed_key(match)
    return FlowKey.from_buffer_copy(key), FlowKey.from_buffer_copy(mask)


@functools.cache
def _kernel_mask(mask: int) -> bytes:
    return bytes(FlowKey.mask_of(FIELD_NAMES[i] for i in mask_indexes(mask)))


def from_kernel(key: FlowKey, mask: FlowKey) -> Match:
    """The match of a kernel (key, mask): `packed_key` backwards."""
    return match_of(bytes(key), bytes(mask))


def match_of(key: bytes, mask: bytes) -> Match:
    """`from_kernel` of ``struct flow_key`` bytes. Cut with `struct`, the mask's field
    bits cached: the sweep decodes every installed flow."""
    bits = _mask_bits(mask)
    v = _unpack_key(key)
    return Match.trusted(
        bits,
        tuple(
            (int.from_bytes(x, "big") if i in _MAC_INDEXES else x) if bits >> i & 1 else 0
            for i, x in enumerate(v)
        ),
    )


_unpack_key = FLOW_KEY_PACK.unpack
_LOOKUP_INDEX_SIZE: Final = LOOKUP_INDEX_PACK.size
_MAC_INDEXES: Final = frozenset(FIELD_NAMES.index(n) for n in _MAC_FIELDS)


@functools.lru_cache(maxsize=1024)
def _mask_bits(raw: bytes) -> int:
    """The `Match.mask` bits of a kernel mask: a field is in it when any of its bits is."""
    mask = FlowKey.from_buffer_copy(raw)
    bits = 0
    for i, name in enumerate(FIELD_NAMES):
        m = getattr(mask, name)
        if any(m) if name in _MAC_FIELDS else m:
            bits |= 1 << i
    return bits


def remove_datapath(pin_dir: str | os.PathLike[str], vxlan_ifname: str | None) -> list[str]:
    """Take a host's eBPF datapath away for good (`tessera agent --cleanup`): tessera's
    filters off every port device, `vxlan_ifname` and the miss veth, then those devices
    and every pin. Nothing here runs when an agent merely stops: its kernel keeps
    forwarding. Returns what was removed, for the operator."""
    devices = [MISS_DP_END] + ([vxlan_ifname] if vxlan_ifname else [])
    fastpath = EbpfFastPath(pin_dir)
    had_pins = fastpath.pin_dir.exists()
    removed = [f"filter on {d}" for d in fastpath.teardown(devices)]
    if had_pins:
        removed.append(f"pins under {fastpath.pin_dir}")
    for name, kind in ((MISS_DP_END, "veth"), (vxlan_ifname, "vxlan")):
        if name is not None and links.delete(name, kind):
            removed.append(f"device {name}")
    return removed


class EbpfDatapath(Datapath):
    kind = "ebpf"

    def __init__(
        self,
        pin_dir: str | os.PathLike[str],
        *,
        cache_dir: str | os.PathLike[str],
        vxlan_ifname: str | None = "vxlan0",
        underlay_mtu: int = 1600,
        warm_poll: float | None = None,
        ct_entries: int | None = None,
    ) -> None:
        """`warm_poll`: seconds the miss thread keeps polling after a miss (see
        `recv_misses`); None: `WARM_POLL`, or $TESSERA_MISS_WARM_US. `ct_entries`: the
        connection table's size (None: keep the pinned table's; `EbpfFastPath`)."""
        self.fastpath = EbpfFastPath(pin_dir, cache_dir=cache_dir, ct_entries=ct_entries)
        self.vxlan_ifname = vxlan_ifname
        self.tunnel_mtu = min(1500, underlay_mtu - OVERHEAD)
        self._lock = threading.Lock()
        self._ports: dict[int, PortBinding] = {}
        self._device: dict[int, Device] = {}  # port -> (ifindex, bpf_redirect_peer)
        self._port_of_ifindex: dict[int, int] = {}
        # `dump`'s decoded flows by their lookup key bytes: (mask, action slots, flow),
        # valid while the ports' devices are `_dump_devices`.
        self._dump_cache: dict[bytes, tuple[bytes, bytes, Flow]] = {}
        self._dump_devices: frozenset[tuple[int, int]] = frozenset()
        self._channel: MissChannel | None = None
        self._tx: socket.socket | None = None
        self._udp: socket.socket | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._more = select.poll()  # the miss socket alone: is another miss queued?
        self._warm = select.poll()  # the miss socket and the wake-up pipe
        self._warm.register(self._wake_r, select.POLLIN)
        self.warm_poll = _warm_poll() if warm_poll is None else max(0.0, warm_poll)
        self._warm_until = 0.0  # monotonic end of the warm window, 0: closed
        self.warm_hits = 0  # misses found by polling instead of a wake-up

    # -- lifecycle --

    def start(self) -> None:
        try:
            self.fastpath.load()
            links.ensure_veth(MISS_DP_END, MISS_AGENT_END)
            self._attach_once(MISS_DP_END, "inject")
            self.fastpath.maps.config.set(miss_ifindex=self.fastpath.ifindex(MISS_DP_END))
            if self.vxlan_ifname is not None:
                self._attach_once(self.vxlan_ifname, "tunnel_rx")
                self.fastpath.maps.config.set(
                    vxlan_ifindex=self.fastpath.ifindex(self.vxlan_ifname)
                )
            self._channel = MissChannel(MISS_AGENT_END)
            self._more.register(self._channel.fileno(), select.POLLIN)
            self._warm.register(self._channel.fileno(), select.POLLIN)
        except (LoadError, OSError) as exc:
            raise DatapathError(f"eBPF datapath: {exc}") from None
        self._tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._adopt_ports()
        if self.fastpath.ct_resized:
            self._finish_ct_resize()

    def _finish_ct_resize(self) -> None:
        """The connection table was resized: the programs a previous agent attached
        still commit into the old one until replaced, so replace them on every adopted
        port now (not when the topology binds the port again, seconds later), then copy
        what they committed meanwhile."""
        with self._lock:
            ifnames = [b.ifname for b in self._ports.values()]
        for ifname in ifnames:
            try:
                self._attach_once(ifname, "port_ingress")
            except (LoadError, OSError) as exc:
                log.warning("cannot attach the resized datapath to %s: %s", ifname, exc)
        held = self.fastpath.finish_ct_resize()
        log.info(
            "connection table resized to %d entries; %d connections kept",
            self.fastpath.maps.conntrack.map.info().max_entries, held,
        )  # fmt: skip

    def _attach_once(self, ifname: str, program: str) -> None:
        """Attach unless this very program already runs there: replacing a filter
        would be harmless but costs a tc call per device on every restart."""
        fd = self.fastpath.prog_fd(program)
        try:
            want = prog_info(fd).id
        finally:
            os.close(fd)
        current = self.fastpath.attached(ifname)
        if current is None or current.prog_id != want:
            self.fastpath.attach(ifname, program)

    def _adopt_ports(self) -> None:
        """Rebuild the port table from the kernel maps a previous agent filled."""
        maps = self.fastpath.maps
        vni_of: dict[int, int] = {ifx: vni for vni, (ifx, _peer) in maps.vni_ports.items().items()}
        for ifx, port in maps.ports.items().items():
            try:
                ifname = socket.if_indextoname(ifx)
            except OSError:
                maps.ports.delete(ifx)  # its device is gone
                continue
            with self._lock:
                self._ports[port] = PortBinding(port, ifname, vni_of.get(ifx))
                self._device[port] = (ifx, links.link_kind(ifname) == "veth")
                self._port_of_ifindex[ifx] = port

    def close(self) -> None:
        if self._channel is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._more.unregister(self._channel.fileno())
            with contextlib.suppress(KeyError, ValueError):
                self._warm.unregister(self._channel.fileno())
        for sock in (self._channel, self._tx, self._udp):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        self._channel = self._tx = self._udp = None
        self.fastpath.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # -- ports --

    def add_port(self, port: int, ifname: str, tunnel_key: int | None = None) -> None:
        try:
            ifx = self.fastpath.ifindex(ifname)
            peer = links.link_kind(ifname) == "veth"
            with self._lock:
                old = self._ports.get(port)
            if old is not None and old.ifname != ifname:
                self.remove_port(port)
            maps = self.fastpath.maps
            maps.ports.set(ifx, port)
            self._attach_once(ifname, "port_ingress")
            if old is not None and old.tunnel_key and old.tunnel_key != tunnel_key:
                maps.vni_ports.delete(old.tunnel_key)
            if tunnel_key:
                maps.vni_ports.set(tunnel_key, ifx, peer=peer)
        except (LoadError, OSError, ValueError) as exc:
            raise DatapathError(f"cannot attach the eBPF datapath to {ifname}: {exc}") from None
        with self._lock:
            self._ports[port] = PortBinding(port, ifname, tunnel_key)
            self._device[port] = (ifx, peer)
            self._port_of_ifindex[ifx] = port

    def remove_port(self, port: int) -> None:
        with self._lock:
            binding = self._ports.pop(port, None)
            device = self._device.pop(port, None)
            ifx = None if device is None else device[0]
            if ifx is not None:
                self._port_of_ifindex.pop(ifx, None)
        if binding is None:
            return
        maps = self.fastpath.maps
        if ifx is not None:
            # After the port left `_device`: install() refuses new flows to it. The
            # device may live on (or its ifindex be reused): no flow may redirect there.
            maps.flows.delete_outputs_to(ifx)
            maps.ports.delete(ifx)
        with contextlib.suppress(OSError, ValueError):
            maps.port_zones.set(port, 0)
        if binding.tunnel_key:
            maps.vni_ports.delete(binding.tunnel_key)
        with contextlib.suppress(LoadError):
            self.fastpath.detach(binding.ifname)

    def ports(self) -> dict[int, PortBinding]:
        with self._lock:
            return dict(self._ports)

    # -- connection tracking --

    def set_port_zone(self, port: int, zone: int) -> None:
        try:
            self.fastpath.maps.port_zones.set(port, zone)
        except (OSError, ValueError) as exc:
            raise DatapathError(f"cannot set the conntrack zone of port {port}: {exc}") from None

    def port_zones(self) -> dict[int, int]:
        return self.fastpath.maps.port_zones.items()

    def ct_commit(self, conn: CtTuple, tcp_flags: int = 0) -> None:
        try:
            self.fastpath.maps.conntrack.commit(conn, time.monotonic_ns(), tcp_flags)
        except (OSError, ValueError, TypeError) as exc:
            raise DatapathError(f"cannot track connection {conn}: {exc}") from None

    def ct_delete(self, conn: CtTuple) -> bool:
        return self.fastpath.maps.conntrack.delete(conn)

    def ct_delete_many(self, conns: Sequence[CtTuple]) -> int:
        return self.fastpath.maps.conntrack.delete_many(conns)

    def ct_capacity(self) -> int:
        return self.fastpath.maps.conntrack.map.info().max_entries

    def ct_entries(self) -> dict[CtTuple, tuple[float, int]]:
        return read_at_once(self.ct_entries_in_steps(), "the connection table")

    def ct_entries_in_steps(self) -> Iterator[dict[CtTuple, tuple[float, int]] | None]:
        """A map batch (512 connections) per step: the tables hold hundreds of
        thousands."""
        out: dict[CtTuple, tuple[float, int]] = {}
        first = True
        for part in self.fastpath.maps.conntrack.items_parts():
            if not first:
                yield None
            first = False
            for conn, (last, flags) in part.items():
                out[conn] = (last / 1e9, flags)
        yield out

    # -- flows --

    def install(self, flow: Flow) -> None:
        """Write the flow to the kernel; a flood too wide for the action list goes
        into a flood set (see `FlowMap`).  Whatever the kernel cannot hold raises
        DatapathError, never something else: the agent then forwards the packet
        from userspace instead of losing it."""
        try:
            key, mask = packed_key(flow.match)
            inline, flood = encode(flow.actions, self._device)
            self.fastpath.maps.flows.install_packed(key, mask, inline, flood)
        except (
            MaskTableFull, FloodSetsFull, FlowTooLarge, OSError, TypeError, ValueError,
            OverflowError, struct.error,
        ) as exc:  # fmt: skip
            raise DatapathError(f"cannot install flow {flow.match}: {exc}") from None

    def delete(self, match: Match) -> bool:
        key, mask = to_kernel(match)
        return self.fastpath.maps.flows.delete(key, mask)

    def delete_many(self, matches: Sequence[Match]) -> int:
        return self.fastpath.maps.flows.delete_many_packed([packed_key(m) for m in matches])

    def dump(self) -> dict[Match, InstalledFlow]:
        """Installed flows; an entry whose mask slot is not active (left by a crash in
        the middle of an update) is unreachable for packets and skipped.

        The agent's sweep reads this every few seconds on the thread that answers
        misses (`dump_in_steps`), and most flows are the same as last time: a flow whose
        key, mask and action bytes are unchanged reuses the `Flow` decoded then (only
        its counters are read again), as long as the ports' devices are the same."""
        return read_at_once(self.dump_in_steps(), "the flow table")

    def dump_in_steps(self) -> Iterator[dict[Match, InstalledFlow] | None]:
        """`dump` a map batch (512 flows) per step: at 60,000 flows the whole read
        takes ~0.5 s of CPU, a step ~5 ms."""
        flows = self.fastpath.maps.flows
        with self._lock:
            ports = dict(self._port_of_ifindex)
        devices = frozenset(ports.items())
        cache = self._dump_cache if devices == self._dump_devices else {}
        fresh: dict[bytes, tuple[bytes, bytes, Flow]] = {}
        masks: dict[int, bytes | None] = {}
        decoded: dict[bytes, tuple[Action, ...]] = {}  # many flows share their actions
        out: dict[Match, InstalledFlow] = {}
        first = True
        for part in flows.raw_parts():
            if not first:
                yield None
            first = False
            for lookup, index, slots, packets, nbytes, last_used, flags, _set in part:
                if index not in masks:
                    kmask = flows.masks.mask_at(index)
                    masks[index] = None if kmask is None else bytes(kmask)
                mask = masks[index]
                if mask is None:
                    continue
                hit = cache.get(lookup)
                if hit is not None and hit[0] == mask and hit[1] == slots:
                    flow = hit[2]
                else:
                    actions = decoded.get(slots)
                    if actions is None:
                        # unusable as is (a port gone): the agent replaces or removes it
                        actions = decoded[slots] = decode(slots, ports) or (ToUserspace(),)
                    flow = Flow(match_of(lookup[_LOOKUP_INDEX_SIZE:], mask), actions)
                fresh[lookup] = (mask, slots, flow)
                last = last_used / 1e9 if last_used else None
                out[flow.match] = InstalledFlow(flow, FlowStats(packets, nbytes, last, flags))
        self._dump_cache, self._dump_devices = fresh, devices
        yield out

    def stats(self, match: Match) -> FlowStats | None:
        key, mask = to_kernel(match)
        entry = self.fastpath.maps.flows.get(key, mask)
        if entry is None:
            return None
        last = entry.last_used_ns / 1e9 if entry.last_used_ns else None
        return FlowStats(entry.packets, entry.bytes, last, entry.tcp_flags)

    # -- packets --

    def recv_misses(self, timeout: float) -> Iterator[Miss]:
        """Lazy: each miss is read when the caller asks for it, after handling the one
        before, so the first packet of a burst never waits for the reads behind it.
        Whether more are queued is asked with poll(2), not with a read that fails: on
        an idle CPU the raised EAGAIN costs as much as parsing the packet.

        Warm: for `warm_poll` seconds after the last miss was handled, the thread polls
        the socket instead of sleeping in select(2), so a miss that follows closely (a
        reply, the next packet of a burst) is read without paying for the wake-up. An
        idle agent sleeps: the window opens only when a miss was handled."""
        channel = self._channel
        if channel is None:
            return
        started = time.monotonic() if self._warm_until else 0.0
        warm = self._poll_warm(timeout)
        if warm is _WOKEN:
            return  # events first; the window stays open for the next call
        if warm is _COLD:
            if started:  # the window closed: sleep for what is left of `timeout`
                timeout = max(0.0, timeout - (time.monotonic() - started))
            try:
                ready, _, _ = select.select([channel.fileno(), self._wake_r], [], [], timeout)
            except (OSError, ValueError):
                return
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.read(self._wake_r, 4096)
            if channel.fileno() not in ready:
                return  # timed out, or woken for events
        more = self._more.poll
        n = 0
        try:
            for i in range(MAX_MISSES_PER_WAKE):
                if i and not more(0):
                    return
                try:
                    got = channel.recv_fields()
                except OSError:  # nothing queued after all, or the socket closed under us
                    return
                if got is None:
                    continue
                port, frame, vnet, csum_not_ready, ct_state = got
                if csum_not_ready and not vnet.gso_type:
                    # Finish the checksum now: then the same bytes serve a reinject and
                    # a packet-out from userspace alike.
                    with contextlib.suppress(PacketError):
                        frame, vnet = complete_l4_checksum(frame), NO_VNET
                n += 1
                yield Miss(port, frame, meta=vnet, ct_state=ct_state)
        finally:
            if n and self.warm_poll > 0:
                # After the caller handled the last one (a generator resumes only then).
                self._warm_until = time.monotonic() + self.warm_poll

    def _poll_warm(self, timeout: float) -> object:
        """Poll without sleeping until the warm window closes (at most `timeout`):
        `_MISS` when a miss is queued, `_WOKEN` for a wake-up alone (events: the
        caller's loop goes back to them, and the window stays open for the misses
        that follow), `_COLD` when the window closed or was not open: sleep."""
        until = self._warm_until
        if not until:
            return _COLD
        self._warm_until = 0.0
        now = time.monotonic()
        until = min(until, now + timeout)
        poll = self._warm.poll
        wake = self._wake_r
        while now < until:
            ready = poll(0)
            if ready:
                if any(fd == wake for fd, _ev in ready):
                    with contextlib.suppress(BlockingIOError, OSError):
                        os.read(wake, 4096)
                    if len(ready) == 1:
                        self._warm_until = until
                        return _WOKEN
                self.warm_hits += 1
                return _MISS
            now = time.monotonic()
        return _COLD

    def wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def reinject(self, miss: Miss) -> None:
        if self._channel is None:
            return
        vnet = miss.meta if isinstance(miss.meta, VnetHdr) else None
        try:
            self._channel.inject(miss.port, miss.frame, vnet)
        except (OSError, ValueError) as exc:
            log.debug("reinject on port %s failed: %s", miss.port, exc)

    def execute(self, frame: bytes, actions: Sequence[Action]) -> None:
        for action, data in run_actions(frame, actions).outputs:
            if isinstance(action, Output):
                with self._lock:
                    binding = self._ports.get(action.port)
                if binding is None or self._tx is None:
                    continue
                for piece in prepare(data, False, _mtu(binding.ifname)):
                    with contextlib.suppress(OSError):
                        self._tx.sendto(piece, (binding.ifname, 0))
            elif self._udp is not None:
                remote = socket.inet_ntoa(action.remote_ip.to_bytes(4, "big"))
                for piece in prepare(data, False, self.tunnel_mtu):
                    with contextlib.suppress(OSError):
                        self._udp.sendto(encap(action.vni, piece), (remote, VXLAN_PORT))


def _warm_poll() -> float:
    raw = os.environ.get(WARM_POLL_ENV)
    if raw is None:
        return WARM_POLL
    try:
        return max(0.0, float(raw)) / 1e6
    except ValueError:
        log.warning(
            "%s=%r is not a number of microseconds; using %d",
            WARM_POLL_ENV,
            raw,
            int(WARM_POLL * 1e6),
        )
        return WARM_POLL


def _mtu(ifname: str) -> int:
    try:
        return interface_mtu(ifname)
    except OSError:
        return 1500
