"""The flow-state message: versioned, fixed-layout binary, bounded in size.

    header (40 bytes, network order)
      magic     4s   b"TSFS"
      version   B    1
      reserved  B    0
      count     H    number of records that follow
      sender    16s  the sender's host id (a UUID, as bytes)
      epoch     Q    the sender's boot epoch (milliseconds since 1970 at its start)
      seq       Q    per (sender, epoch), starting at 1, +1 per message
    record (27 bytes + device)
      op        B    1 add, 2 remove, 3 fin, 4 rst
      kind      B    1 conntrack, 2 fwd_snat, 3 fwd_dnat, 4 rev_snat, 5 rev_dnat,
                     6 sticky_dnat (a load balancer's client -> member, source port 0)
      proto     B
      flags     B    0 (reserved)
      src_ip, dst_ip        I I
      src_port, dst_port    H H   (the echo id in both for ICMP echo)
      nat_ip    I    the binding's address; 0 for conntrack
      nat_port  H    the binding's port; 0 for conntrack
      timeout   I    the sender's idle timeout in milliseconds (> 0)
      dev_len   B    then dev_len bytes of UTF-8 (1..64): the key's device

A record is one of the simulation's `ConntrackEntry` / `NatEntry` (the same types the
table holds and a simulation creates), plus its idle timeout. An add pushes a new entry
to a host that will see its replies; a remove is the owner withdrawing what it pushed
(the entry expired there, or closed by FIN/RST): the receiver ends its copy only if that
very entry came from that sender (`ConnTable.release`), and the timeout field carries the
owner's last timeout (informational, range-checked like an add's). Fin and rst go the
other way, from a host holding a copy to its owner: a flow there saw the connection's
FIN or RST, which the owner's own flows may never see (the server's RST to a client
enters at the server's host), and the owner shortens its entry as if it had
(`ConnTable.note_close`); the timeout field is the sender's shortened timeout.

Why binary and not JSON: the sender pays for encoding on a connection's first packet and
the receiver must reject garbage cheaply; a fixed layout has one way to be read, and
every field's range is checked before a record becomes an entry (`entry.valid`). A
message fits one underlay packet without fragmentation (`MAX_MESSAGE`); the sender
splits larger batches.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from tessera.agent.flowstate.entry import MAX_ZONE_BYTES, valid
from tessera.simulation.flowstate import (
    ConnKey,
    ConntrackEntry,
    FlowStateEntry,
    NatBinding,
    NatEntry,
    NatKey,
    NatKind,
)

_TCP = 6
MAGIC = b"TSFS"
VERSION = 1
MAX_MESSAGE = 1400  # bytes: one packet on a 1500-byte underlay, headers included

_HEADER = struct.Struct("!4sBBH16sQQ")
_RECORD = struct.Struct("!BBBBIIHHIHIB")
HEADER_SIZE = _HEADER.size
MAX_RECORD = _RECORD.size + MAX_ZONE_BYTES

_OPS = {1: "add", 2: "remove", 3: "fin", 4: "rst"}
_OP_CODES = {"add": 1, "remove": 2, "fin": 3, "rst": 4}
_NAT_KINDS: dict[int, NatKind] = {
    2: "fwd_snat",
    3: "fwd_dnat",
    4: "rev_snat",
    5: "rev_dnat",
    6: "sticky_dnat",
}
_KIND_CODES: dict[str, int] = {"conntrack": 1, **{v: k for k, v in _NAT_KINDS.items()}}

Op = Literal["add", "remove", "fin", "rst"]
Update = tuple[Op, FlowStateEntry, float]  # what to do, the entry, its idle timeout (s)


class WireError(ValueError):
    """A message that cannot be accepted; `reason` is the counter label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Message:
    sender: str  # host id
    epoch: int
    seq: int
    updates: tuple[Update, ...]


def encode_record(op: Op, entry: FlowStateEntry, timeout: float) -> bytes:
    if not valid(entry, timeout) or (op in ("fin", "rst") and entry.key.proto != _TCP):
        raise ValueError(f"invalid state entry {entry} for {op}")
    k = entry.key
    device = k.device.encode("utf-8")
    if isinstance(entry, NatEntry):
        kind, nat_ip, nat_port = _KIND_CODES[entry.key.kind], entry.binding.ip, entry.binding.port
    else:
        kind, nat_ip, nat_port = 1, 0, 0
    header = _RECORD.pack(
        _OP_CODES[op], kind, k.proto, 0, k.src, k.dst, k.sport, k.dport, nat_ip, nat_port,
        max(1, min(0xFFFFFFFF, round(timeout * 1000))), len(device),
    )  # fmt: skip
    return header + device


def encode(sender: str, epoch: int, seq: int, records: Iterable[bytes]) -> bytes:
    """One message of already encoded records (`encode_record`); ValueError if too big."""
    body = b"".join(records)
    count = 0
    offset = 0
    while offset < len(body):  # count records by walking their lengths
        offset += _RECORD.size + body[offset + _RECORD.size - 1]
        count += 1
    data = _HEADER.pack(MAGIC, VERSION, 0, count, uuid.UUID(sender).bytes, epoch, seq) + body
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"flow-state message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def batches(records: Iterable[bytes]) -> Iterator[list[bytes]]:
    """Records grouped so each group fits one message."""
    group: list[bytes] = []
    size = HEADER_SIZE
    for record in records:
        if group and size + len(record) > MAX_MESSAGE:
            yield group
            group, size = [], HEADER_SIZE
        group.append(record)
        size += len(record)
    if group:
        yield group


def decode(data: bytes) -> Message:
    """The message in `data`; WireError (with the reason to count) for anything else.
    Never returns a partly read message."""
    if len(data) > MAX_MESSAGE:
        raise WireError("oversize", f"{len(data)} bytes")
    if len(data) < HEADER_SIZE:
        raise WireError("truncated", f"{len(data)} bytes, header needs {HEADER_SIZE}")
    magic, version, reserved, count, sender, epoch, seq = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WireError("malformed", "bad magic")
    if version != VERSION:
        raise WireError("version", f"version {version}")
    if reserved != 0 or seq == 0 or epoch == 0:
        raise WireError("malformed", "bad header fields")
    offset = HEADER_SIZE
    updates: list[Update] = []
    for _ in range(count):
        n = len(updates)
        if offset + _RECORD.size > len(data):
            raise WireError("truncated", f"record {n} cut short")
        op, kind, proto, flags, sip, dip, sport, dport, nip, nport, timeout, dlen = (
            _RECORD.unpack_from(data, offset)
        )
        offset += _RECORD.size
        if offset + dlen > len(data):
            raise WireError("truncated", f"device of record {n} cut short")
        raw_device = data[offset : offset + dlen]
        offset += dlen
        if op not in _OPS or flags or (kind != 1 and kind not in _NAT_KINDS):
            raise WireError("malformed", f"record {n}: bad op, kind or flags")
        if op >= 3 and proto != _TCP:
            raise WireError("malformed", f"record {n}: fin or rst of protocol {proto}")
        try:
            device = raw_device.decode("utf-8")
        except UnicodeDecodeError:
            raise WireError("malformed", f"record {n}: device is not UTF-8") from None
        entry: FlowStateEntry
        if kind == 1:
            if nip or nport:
                raise WireError("malformed", f"record {n}: NAT fields on conntrack")
            entry = ConntrackEntry(ConnKey(proto, sip, dip, sport, dport, device))
        else:
            nat_key = NatKey(_NAT_KINDS[kind], proto, sip, sport, dip, dport, device)
            entry = NatEntry(nat_key, NatBinding(nip, nport))
        seconds = timeout / 1000.0
        if not valid(entry, seconds):
            raise WireError("malformed", f"record {n}: out of range")
        updates.append((_OPS[op], entry, seconds))  # type: ignore[arg-type]
    if offset != len(data):
        raise WireError("malformed", f"{len(data) - offset} trailing bytes")
    return Message(str(uuid.UUID(bytes=sender)), epoch, seq, tuple(updates))


def decode_record(record: bytes) -> Update:
    """One record on its own, with every check `decode` makes (the persisted table
    reuses them); WireError otherwise."""
    header = _HEADER.pack(MAGIC, VERSION, 0, 1, bytes(16), 1, 1)
    (update,) = decode(header + record).updates
    return update
