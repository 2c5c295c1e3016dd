"""The flow match: a packet's header fields that records which of them a simulation read.

A flow installed for one packet may serve every later packet that agrees on the fields
the simulation looked at, and only on those (a megaflow, as in OVS and MidoNet's
FlowMatch). Getting that set wrong is a silent correctness bug: too few fields and a
cached flow sends a packet where its own simulation would not have. So the set is not
kept by the simulation but by this object: every getter records its field, and
simulation code reads packet fields only through it.

- Reading a field also records its prerequisites (OVS does the same): an IP field is
  meaningless without the EtherType, a port without the protocol and the fragment kind.
- Writes (MAC, TTL, NAT rewrites) go through `set_*` methods; they do not widen the
  mask but mark the field modified, and reading a modified field records nothing,
  since its value then comes from the simulation, not from the packet.
- `copy()` forks a branch (a flood, a load-balancer choice) that shares one mask with
  its parent, so all branches of one simulation contribute to the single flow installed.
- The TTL is the one field read for a threshold only: a router asks "is it above 1?".
  `ip_ttl_above(n)` answers without widening the mask when the answer is yes, and
  remembers the bound instead (`ttl_floor`, on the TTL as it arrived); the datapath's
  TTL decrement sends a packet whose TTL would reach zero back to the agent, which is
  what makes a flow keyed without the TTL correct for every packet above the bound (see
  `ttl_floor`). A "no" is a decision on the exact value: the field joins the mask.
- Keys and `matches()` always use the values the packet arrived with, never rewrites.
  `arrival(fields)` reads those values for decisions defined on the packet as it came
  in (connection tracking), recording them even where they were rewritten since.
- The ICMP echo identifier (`icmp_id`) is a key field like a port, set only for an
  echo request or reply (0 for every other packet, as the kernel extracts it): NAT and
  connection tracking of pings read it, so their flows are cached like TCP's.

Field names and values mirror the kernel's `struct flow_key` (datapath/ebpf/flow.h):
for ARP, `ip_src`/`ip_dst` are the sender/target protocol addresses and `ip_proto` the
low 8 bits of the opcode; for ICMP, `tp_src`/`tp_dst` are type and code; TCP, UDP and
SCTP ports are taken as soon as their 4 bytes are there (a first fragment cut short
included), ICMP type/code from 2 bytes and the echo identifier from 6, exactly as the
eBPF program extracts them — a flow whose key the kernel computes differently would
never be hit.
"""

from __future__ import annotations

import functools
import struct
from enum import IntEnum, IntFlag
from typing import Any

from tessera.packet.addr import ip_to_str, mac_to_str
from tessera.packet.arp import Arp
from tessera.packet.errors import PacketError
from tessera.packet.ethernet import ETH_TYPE_ARP, ETH_TYPE_IPV4, ETH_TYPE_VLAN, Ethernet
from tessera.packet.icmp import Icmp
from tessera.packet.ipv4 import PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP, IPv4
from tessera.packet.tcp import Tcp
from tessera.packet.udp import Udp


class Field(IntFlag):
    """One bit per match field, in key order."""

    IN_PORT = 1 << 0
    ETH_SRC = 1 << 1
    ETH_DST = 1 << 2
    VLAN_ID = 1 << 3
    ETH_TYPE = 1 << 4
    IP_SRC = 1 << 5
    IP_DST = 1 << 6
    IP_PROTO = 1 << 7
    IP_TOS = 1 << 8
    IP_TTL = 1 << 9
    IP_FRAG = 1 << 10
    TP_SRC = 1 << 11
    TP_DST = 1 << 12
    ICMP_ID = 1 << 13
    CT_STATE = 1 << 14


class IpFrag(IntEnum):
    NO = 0
    FIRST = 1
    LATER = 2


FIELD_NAMES: tuple[str, ...] = (
    "in_port", "eth_src", "eth_dst", "vlan_id", "eth_type", "ip_src", "ip_dst", "ip_proto",
    "ip_tos", "ip_ttl", "ip_frag", "tp_src", "tp_dst", "icmp_id", "ct_state",
)  # fmt: skip
ALL_FIELDS = Field((1 << len(FIELD_NAMES)) - 1)
_ALL_BITS = int(ALL_FIELDS)

# Plain ints: IntFlag arithmetic is ten times slower and getters run on every packet.
_IN_PORT, _ETH_SRC, _ETH_DST, _VLAN_ID, _ETH_TYPE = 1, 2, 4, 8, 16
_IP_SRC, _IP_DST, _IP_PROTO, _IP_TOS, _IP_TTL, _IP_FRAG = 32, 64, 128, 256, 512, 1024
_TP_SRC, _TP_DST, _ICMP_ID, _CT_STATE = 2048, 4096, 8192, 16384
# ct_state bits (the datapath's, `tessera.datapath.conntrack`): the packet's port has a
# conntrack zone and the packet a connection; the reversed tuple is committed there.
CT_TRACKED, CT_REPLY = 0x01, 0x02
# What a read records: the field and the fields without which its value means nothing.
_NEED_IP = _ETH_TYPE
_NEED_TP = _ETH_TYPE | _IP_PROTO | _IP_FRAG

_MAX = {
    "eth_src": 0xFFFF_FFFF_FFFF,
    "eth_dst": 0xFFFF_FFFF_FFFF,
    "vlan_id": 0x0FFF,
    "ip_src": 0xFFFF_FFFF,
    "ip_dst": 0xFFFF_FFFF,
    "ip_tos": 0xFF,
    "ip_ttl": 0xFF,
    "tp_src": 0xFFFF,
    "tp_dst": 0xFFFF,
    "icmp_id": 0xFFFF,
}

_ETH = struct.Struct("!HIHIH")
_TAG = struct.Struct("!HH")
_IP = struct.Struct("!BBHHHBBHII")
_ARP = struct.Struct("!HHBBH6xI6xI")
_PORTS = struct.Struct("!HH")
_ICMP = struct.Struct("!BB")
_ID = struct.Struct("!H")
_ECHO_TYPES = (0, 8)  # echo reply, echo request
_PORT_PROTOS = (PROTO_TCP, PROTO_UDP, PROTO_SCTP)

Key = tuple[Any, ...]


@functools.cache
def mask_indexes(mask: int) -> tuple[int, ...]:
    """The field indexes (FIELD_NAMES order) a mask selects; computed once per mask:
    masks are few and the miss path asks several times per packet."""
    return tuple(i for i in range(len(FIELD_NAMES)) if mask >> i & 1)


class _MaskCell:
    """The mask shared by a match and all its copies (branches of one simulation), and
    the TTL bound their "above n" answers relied on (0: none)."""

    __slots__ = ("bits", "ttl_floor")

    def __init__(self, bits: int = 0) -> None:
        self.bits = bits
        self.ttl_floor = 0


class FlowMatch:
    """Header fields of one packet plus the mask of fields read so far."""

    __slots__ = (  # noqa: RUF023 - key order, as FIELD_NAMES
        "_in_port", "_eth_src", "_eth_dst", "_vlan_id", "_eth_type", "_ip_src", "_ip_dst",
        "_ip_proto", "_ip_tos", "_ip_ttl", "_ip_frag", "_tp_src", "_tp_dst", "_icmp_id",
        "_ct_state", "_cell", "_modified", "_orig", "_icmp_data",
    )  # fmt: skip

    def __init__(
        self,
        in_port: str | None = None,
        eth_src: int = 0,
        eth_dst: int = 0,
        vlan_id: int = 0,
        eth_type: int = 0,
        ip_src: int = 0,
        ip_dst: int = 0,
        ip_proto: int = 0,
        ip_tos: int = 0,
        ip_ttl: int = 0,
        ip_frag: int = 0,
        tp_src: int = 0,
        tp_dst: int = 0,
        icmp_id: int = 0,
        ct_state: int = 0,
    ) -> None:
        self._in_port = in_port
        self._eth_src = eth_src
        self._eth_dst = eth_dst
        self._vlan_id = vlan_id
        self._eth_type = eth_type
        self._ip_src = ip_src
        self._ip_dst = ip_dst
        self._ip_proto = ip_proto
        self._ip_tos = ip_tos
        self._ip_ttl = ip_ttl
        self._ip_frag = ip_frag
        self._tp_src = tp_src
        self._tp_dst = tp_dst
        self._icmp_id = icmp_id  # of an ICMP echo request or reply; 0 otherwise
        # What the datapath's connection table said of the packet (CT_* bits of
        # tessera.datapath.conntrack): not in the frame, the datapath hands it over.
        self._ct_state = ct_state
        self._cell = _MaskCell()
        self._modified = 0
        # Values on arrival, saved by the first write; None while nothing was written.
        self._orig: Key | None = None
        # The quote of an ICMP error as NAT rewrote it on this branch (None: unchanged).
        self._icmp_data: bytes | None = None

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_frame(cls, in_port: str | None, frame: bytes, ct_state: int = 0) -> FlowMatch:
        """Extract the fields straight from bytes, without building header objects.

        It validates exactly the headers it reads, so it gives the same match as
        `from_packet(in_port, Ethernet.parse(frame))` whenever that parses; it may accept
        frames the full parser refuses for reasons beyond the match (a bad DHCP body).
        """
        n = len(frame)
        if n < 14:
            raise PacketError(f"Ethernet frame of {n} bytes is shorter than its header")
        dst_hi, dst_lo, src_hi, src_lo, eth_type = _ETH.unpack_from(frame)
        off = 14
        vlan_id = 0
        if eth_type == ETH_TYPE_VLAN:
            if n < 18:
                raise PacketError("802.1Q tag is truncated")
            tci, eth_type = _TAG.unpack_from(frame, 14)
            vlan_id = tci & 0x0FFF
            off = 18
        ip_src = ip_dst = proto = tos = ttl = frag = tp_src = tp_dst = icmp_id = 0
        if eth_type == ETH_TYPE_IPV4:
            if n - off < 20:
                raise PacketError("IPv4 header is truncated")
            vihl, tos, total, _, flags, ttl, proto, _, ip_src, ip_dst = _IP.unpack_from(frame, off)
            hlen = (vihl & 0x0F) << 2
            if vihl >> 4 != 4 or hlen < 20 or total < hlen or off + total > n:
                raise PacketError("IPv4 header is malformed or the packet is truncated")
            if flags & 0x1FFF:
                frag = 2  # IpFrag.LATER; plain ints keep keys cheap to hash
            else:
                first = flags & 0x2000
                if first:
                    frag = 1  # IpFrag.FIRST
                l4 = off + hlen
                avail = total - hlen
                if not first:  # refuse what the full parser refuses
                    if proto == PROTO_TCP:
                        if avail < 20 or not 20 <= (frame[l4 + 12] >> 4) << 2 <= avail:
                            raise PacketError("TCP header is malformed or truncated")
                    elif proto == PROTO_UDP:
                        if avail < 8 or not 8 <= _PORTS.unpack_from(frame, l4 + 4)[0] <= avail:
                            raise PacketError("UDP header is malformed or truncated")
                    elif proto == PROTO_ICMP and avail < 8:
                        raise PacketError("ICMP header is truncated")
                # Then extract as the eBPF program does, so that flows match there.
                if proto in _PORT_PROTOS:
                    if avail >= 4:
                        tp_src, tp_dst = _PORTS.unpack_from(frame, l4)
                elif proto == PROTO_ICMP and avail >= 2:
                    tp_src, tp_dst = _ICMP.unpack_from(frame, l4)
                    if tp_src in _ECHO_TYPES and avail >= 6:
                        icmp_id = _ID.unpack_from(frame, l4 + 4)[0]
        elif eth_type == ETH_TYPE_ARP:
            if n - off < 28:
                raise PacketError("ARP message is truncated")
            htype, ptype, hlen, plen, op, ip_src, ip_dst = _ARP.unpack_from(frame, off)
            if htype != 1 or ptype != ETH_TYPE_IPV4 or hlen != 6 or plen != 4:
                raise PacketError("ARP is not for IPv4 over Ethernet")
            proto = op & 0xFF
        return cls(
            in_port, (src_hi << 32) | src_lo, (dst_hi << 32) | dst_lo, vlan_id, eth_type,
            ip_src, ip_dst, proto, tos, ttl, frag, tp_src, tp_dst, icmp_id, ct_state,
        )  # fmt: skip

    @classmethod
    def from_packet(cls, in_port: str | None, eth: Ethernet) -> FlowMatch:
        ip_src = ip_dst = proto = tos = ttl = frag = tp_src = tp_dst = icmp_id = 0
        payload = eth.payload
        if isinstance(payload, IPv4):
            ip_src, ip_dst, proto, tos, ttl = (
                payload.src, payload.dst, payload.proto, payload.tos, payload.ttl,
            )  # fmt: skip
            if payload.frag_offset:
                frag = 2
            elif payload.more_fragments:
                frag = 1
            l4 = payload.payload
            if isinstance(l4, Tcp | Udp):
                tp_src, tp_dst = l4.src_port, l4.dst_port
            elif isinstance(l4, Icmp):
                tp_src, tp_dst = l4.type, l4.code
                if l4.type in _ECHO_TYPES:
                    icmp_id = l4.ident
            elif not payload.frag_offset:  # SCTP, or a first fragment cut short
                if proto in _PORT_PROTOS and len(l4) >= 4:
                    tp_src, tp_dst = _PORTS.unpack_from(l4)
                elif proto == PROTO_ICMP and len(l4) >= 2:
                    tp_src, tp_dst = _ICMP.unpack_from(l4)
                    if tp_src in _ECHO_TYPES and len(l4) >= 6:
                        icmp_id = _ID.unpack_from(l4, 4)[0]
        elif isinstance(payload, Arp):
            ip_src, ip_dst, proto = payload.sender_ip, payload.target_ip, payload.op & 0xFF
        return cls(
            in_port, eth.src, eth.dst, eth.vlan_id or 0, eth.ethertype, ip_src, ip_dst, proto,
            tos, ttl, frag, tp_src, tp_dst, icmp_id,
        )  # fmt: skip

    # -- getters: each one records its field (unless rewritten) ------------------------

    @property
    def in_port(self) -> str | None:
        self._cell.bits |= _IN_PORT
        return self._in_port

    @property
    def eth_src(self) -> int:
        if not self._modified & _ETH_SRC:
            self._cell.bits |= _ETH_SRC
        return self._eth_src

    @property
    def eth_dst(self) -> int:
        if not self._modified & _ETH_DST:
            self._cell.bits |= _ETH_DST
        return self._eth_dst

    @property
    def vlan_id(self) -> int:
        if not self._modified & _VLAN_ID:
            self._cell.bits |= _VLAN_ID
        return self._vlan_id

    @property
    def eth_type(self) -> int:
        self._cell.bits |= _ETH_TYPE
        return self._eth_type

    @property
    def ip_src(self) -> int:
        if not self._modified & _IP_SRC:
            self._cell.bits |= _IP_SRC | _NEED_IP
        return self._ip_src

    @property
    def ip_dst(self) -> int:
        if not self._modified & _IP_DST:
            self._cell.bits |= _IP_DST | _NEED_IP
        return self._ip_dst

    @property
    def ip_proto(self) -> int:
        self._cell.bits |= _IP_PROTO | _NEED_IP
        return self._ip_proto

    @property
    def ip_tos(self) -> int:
        if not self._modified & _IP_TOS:
            self._cell.bits |= _IP_TOS | _NEED_IP
        return self._ip_tos

    @property
    def ip_ttl(self) -> int:
        if not self._modified & _IP_TTL:
            self._cell.bits |= _IP_TTL | _NEED_IP
        return self._ip_ttl

    def ip_ttl_above(self, n: int) -> bool:
        """Whether the TTL (as rewritten so far) is above `n`, recorded as a bound.

        Yes: only "the TTL on arrival was above n + what this branch took off" joins
        `ttl_floor`; the exact value stays out of the mask. No: the exact value decided
        (a TTL-exceeded answer differs with it), so the field joins the mask. Only the
        IPv4 EtherType is needed for the question to mean anything.
        """
        ttl = self._ip_ttl
        cell = self._cell
        if ttl <= n:
            # Rewritten or not, the value came from the TTL on arrival: key on that.
            cell.bits |= _IP_TTL | _NEED_IP
            return False
        cell.bits |= _NEED_IP
        taken = 0
        if self._modified & _IP_TTL:
            assert self._orig is not None  # the first write saved the original values
            taken = self._orig[9] - ttl
        if n + taken > cell.ttl_floor:
            cell.ttl_floor = n + taken
        return True

    def decrement_ip_ttl(self, n: int = 1) -> None:
        """Take `n` off the TTL without reading it (a router forwarding the packet):
        the decision to forward was taken by `ip_ttl_above`."""
        self.set_ip_ttl(self._ip_ttl - n)

    @property
    def ip_frag(self) -> int:
        self._cell.bits |= _IP_FRAG | _NEED_IP
        return self._ip_frag

    @property
    def tp_src(self) -> int:
        if not self._modified & _TP_SRC:
            self._cell.bits |= _TP_SRC | _NEED_TP
        return self._tp_src

    @property
    def tp_dst(self) -> int:
        if not self._modified & _TP_DST:
            self._cell.bits |= _TP_DST | _NEED_TP
        return self._tp_dst

    @property
    def icmp_id(self) -> int:
        """The identifier of an ICMP echo request or reply (0 for anything else).

        A key field (the kernel extracts it for echoes only), so a decision on it is
        cached like one on a port. The type joins the mask with it: an echo id means
        nothing without it, and every other type has 0 here.
        """
        if not self._modified & _ICMP_ID:
            self._cell.bits |= _ICMP_ID | _TP_SRC | _NEED_TP
        return self._icmp_id

    @property
    def ct_state(self) -> int:
        """What the datapath's connection table said of the packet as it arrived
        (`tessera.datapath.conntrack`: tracked at all, a reply of a tracked connection);
        0 when the datapath had no say. Never rewritten: a flow keyed on it lets the
        kernel tell a new connection from an answer without the agent."""
        self._cell.bits |= _CT_STATE
        return self._ct_state

    @property
    def icmp_data(self) -> bytes | None:
        """The packet an ICMP error quotes, as NAT rewrote it on this branch (MidoNet's
        IcmpData); None while nothing rewrote it. Set with `set_icmp_data`; copies of
        the match (branches) inherit it."""
        return self._icmp_data

    def set_icmp_data(self, data: bytes) -> None:
        """Rewrite the quoted packet. No flow key holds it: whoever reads or writes it
        marks the simulation uncacheable (`simulation.related`)."""
        self._icmp_data = data

    def peek(self, fields: Field | int) -> Key:
        """Values of `fields` now (rewrites included), in FIELD_NAMES order, recording
        nothing: for a decision the datapath takes itself, which the flow keys on
        another field (`ct_state`, for a connection the datapath tracks)."""
        values = self._values()
        return tuple([values[i] for i in mask_indexes(int(fields))])

    def arrival(self, fields: Field | int) -> Key:
        """Values the packet arrived with for `fields` (FIELD_NAMES order), recorded.

        For decisions defined on the packet as it entered, whatever was rewritten since
        (connection tracking keys a packet by its headers on arrival, as MidoNet does):
        unlike the getters, a field rewritten since is recorded too, since its arrival
        value decides.
        """
        bits = int(fields)
        need = 0
        if bits & (_IP_SRC | _IP_DST | _IP_PROTO | _IP_TOS | _IP_TTL | _IP_FRAG):
            need |= _NEED_IP
        if bits & (_TP_SRC | _TP_DST | _ICMP_ID):
            need |= _NEED_TP
        if bits & _ICMP_ID:
            need |= _TP_SRC
        self._cell.bits |= bits | need
        values = self._orig if self._orig is not None else self._values()
        return tuple([values[i] for i in mask_indexes(bits)])

    # -- setters: rewrites, recorded as modified, never as read ------------------------

    def set_eth_src(self, value: int) -> None:
        self._write("eth_src", _ETH_SRC, value)
        self._eth_src = value

    def set_eth_dst(self, value: int) -> None:
        self._write("eth_dst", _ETH_DST, value)
        self._eth_dst = value

    def set_vlan_id(self, value: int) -> None:
        """0 pops the tag; anything else pushes or rewrites it."""
        self._write("vlan_id", _VLAN_ID, value)
        self._vlan_id = value

    def set_ip_src(self, value: int) -> None:
        self._write("ip_src", _IP_SRC, value)
        self._ip_src = value

    def set_ip_dst(self, value: int) -> None:
        self._write("ip_dst", _IP_DST, value)
        self._ip_dst = value

    def set_ip_tos(self, value: int) -> None:
        self._write("ip_tos", _IP_TOS, value)
        self._ip_tos = value

    def set_ip_ttl(self, value: int) -> None:
        self._write("ip_ttl", _IP_TTL, value)
        self._ip_ttl = value

    def set_tp_src(self, value: int) -> None:
        self._write("tp_src", _TP_SRC, value)
        self._tp_src = value

    def set_tp_dst(self, value: int) -> None:
        self._write("tp_dst", _TP_DST, value)
        self._tp_dst = value

    def set_icmp_id(self, value: int) -> None:
        """NAT of an ICMP echo: its identifier is translated as a port would be."""
        self._write("icmp_id", _ICMP_ID, value)
        self._icmp_id = value

    def _write(self, name: str, bit: int, value: int) -> None:
        if not isinstance(value, int) or not 0 <= value <= _MAX[name]:
            raise PacketError(f"{value!r} is not a valid {name}")
        if self._orig is None:
            self._orig = self._values()
        self._modified |= bit

    # -- mask, keys, forks -------------------------------------------------------------

    @property
    def mask(self) -> Field:
        """Fields this match and all its copies have read so far."""
        return Field(self._cell.bits)

    @property
    def ttl_floor(self) -> int:
        """The TTL on arrival that "above n" answers required, when the TTL is not in
        the mask: the decision holds for every packet agreeing on the mask whose TTL on
        arrival is above it. 0 when no answer relied on the TTL, or when the TTL is in
        the mask (the exact value then decides, and the bound says nothing more).

        A flow keyed without the TTL is only correct if the datapath sends packets at
        or below the bound to the agent: a `DecTtl` of at least the bound does (see the
        simulation's `result`, which keys the TTL when its outputs' decrements do not
        cover the bound)."""
        if self._cell.bits & _IP_TTL:
            return 0
        return self._cell.ttl_floor

    @property
    def modified(self) -> Field:
        """Fields this branch has written (possibly back to their original value)."""
        return Field(self._modified)

    def rewrites(self) -> dict[Field, int]:
        """The writes a datapath must apply: modified fields whose value really changed."""
        if self._orig is None:
            return {}
        now = self._values()
        return {
            Field(1 << i): now[i] for i in mask_indexes(self._modified) if now[i] != self._orig[i]
        }

    def record(self, fields: Field) -> None:
        """Add fields to the mask explicitly (for a decision taken on a value seen earlier)."""
        self._cell.bits |= int(fields)

    def merge_mask(self, other: FlowMatch) -> None:
        """Fold in the mask of a match that is not a `copy()` of this one."""
        if other._cell is not self._cell:
            self._cell.bits |= other._cell.bits
            self._cell.ttl_floor = max(self._cell.ttl_floor, other._cell.ttl_floor)

    def copy(self) -> FlowMatch:
        """A branch of the same simulation: own values and rewrites, one shared mask."""
        c = FlowMatch.__new__(FlowMatch)
        for name in FlowMatch.__slots__:
            setattr(c, name, getattr(self, name))
        return c

    def masked_key(self, mask: Field | int | None = None) -> Key:
        """Original values of the fields in `mask` (default: this match's own), in key order.

        A megaflow table keeps one dict per mask (tuple space search): a packet hits
        flow F iff `packet.masked_key(F.mask) == F.masked_key()`. Two keys are only
        comparable under the same mask. Computing a key records nothing.
        """
        bits = self._cell.bits if mask is None else int(mask)
        values = self._orig if self._orig is not None else self._values()
        if bits == _ALL_BITS:
            return values  # the full key (the miss path asks for it twice per packet)
        return tuple([values[i] for i in mask_indexes(bits)])

    def matches(self, other: FlowMatch) -> bool:
        """Whether `other`'s packet agrees with this one on every field in this mask."""
        return other.masked_key(self._cell.bits) == self.masked_key()

    def original(self) -> dict[str, Any]:
        """All fields as the packet arrived, for traces and logs: records nothing.

        Never base a forwarding decision on it; that is what the getters are for.
        """
        values = self._orig if self._orig is not None else self._values()
        return dict(zip(FIELD_NAMES, values, strict=True))

    def _values(self) -> Key:
        return (
            self._in_port, self._eth_src, self._eth_dst, self._vlan_id, self._eth_type,
            self._ip_src, self._ip_dst, self._ip_proto, self._ip_tos, self._ip_ttl,
            self._ip_frag, self._tp_src, self._tp_dst, self._icmp_id, self._ct_state,
        )  # fmt: skip

    # -- plain-object behaviour --------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FlowMatch):
            return NotImplemented
        return (
            self._values() == other._values()
            and self.masked_key(ALL_FIELDS) == other.masked_key(ALL_FIELDS)
            and self._cell.bits == other._cell.bits
            and self.ttl_floor == other.ttl_floor
            and self._modified == other._modified
        )

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FlowMatch.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def __repr__(self) -> str:
        values = self._values()
        parts = []
        for name, value in zip(FIELD_NAMES, values, strict=True):
            if name in ("eth_src", "eth_dst"):
                text = mac_to_str(value)
            elif name in ("ip_src", "ip_dst"):
                text = ip_to_str(value)
            elif name == "eth_type":
                text = f"{value:#06x}"
            else:
                text = repr(value)
            parts.append(f"{name}={text}")
        mask = "|".join(FIELD_NAMES[i] for i in mask_indexes(self._cell.bits)) or "-"
        if self.ttl_floor:
            mask += f", ip_ttl>{self.ttl_floor}"
        return f"FlowMatch({', '.join(parts)}; mask={mask})"
