"""The flow-state message: versioned, fixed-layout binary, bounded in size.

    header (40 bytes, network order)
      magic     4s   b"TSFS"
      version   B    1
      reserved  B    0
      count     H    number of records that follow
      sender    16s  the sender's host id (a UUID, as bytes)
      epoch     Q    the sender's boot epoch (milliseconds since 1970 at its start)
      seq       Q    per (sender, epoch), starting at 1, +1 per message
    record (27 bytes + zone)
      op        B    1 add, 2 remove
      kind      B    1 conntrack, 2 nat
      proto     B
      flags     B    bit 0: NAT on the destination side; bit 1: nat_port present
      src_ip, dst_ip        I I
      src_port, dst_port    H H
      nat_ip    I    0 for conntrack
      nat_port  H
      timeout   I    idle timeout in milliseconds (> 0)
      zone_len  B    then zone_len bytes of UTF-8 (1..64)

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

from tessera.agent.flowstate.entry import MAX_ZONE_BYTES, ConnKey, StateEntry, valid

MAGIC = b"TSFS"
VERSION = 1
MAX_MESSAGE = 1400  # bytes: one packet on a 1500-byte underlay, headers included

_HEADER = struct.Struct("!4sBBH16sQQ")
_RECORD = struct.Struct("!BBBBIIHHIHIB")
HEADER_SIZE = _HEADER.size
MAX_RECORD = _RECORD.size + MAX_ZONE_BYTES

_OPS = {1: "add", 2: "remove"}
_OP_CODES = {"add": 1, "remove": 2}
_KINDS = {1: "conntrack", 2: "nat"}
_KIND_CODES = {"conntrack": 1, "nat": 2}
_FLAG_DST = 0x01
_FLAG_PORT = 0x02

Op = Literal["add", "remove"]


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
    updates: tuple[tuple[Op, StateEntry], ...]


def encode_record(op: Op, entry: StateEntry) -> bytes:
    zone = entry.key.zone.encode("utf-8")
    if not valid(entry):
        raise ValueError(f"invalid state entry {entry}")
    k = entry.key
    flags = (_FLAG_DST if entry.nat_side == "dst" else 0) | (
        _FLAG_PORT if entry.nat_port is not None else 0
    )
    header = _RECORD.pack(
        _OP_CODES[op], _KIND_CODES[entry.kind], k.proto, flags,
        k.src_ip, k.dst_ip, k.src_port, k.dst_port,
        entry.nat_ip or 0, entry.nat_port or 0,
        max(1, min(0xFFFFFFFF, round(entry.expiry * 1000))), len(zone),
    )  # fmt: skip
    return header + zone


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


def decode(data: bytes, created: float = 0.0) -> Message:
    """The message in `data`, its entries stamped `created`; WireError (with the reason to
    count) for anything else. Never returns a partly read message."""
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
    updates: list[tuple[Op, StateEntry]] = []
    for _ in range(count):
        if offset + _RECORD.size > len(data):
            raise WireError("truncated", f"record {len(updates)} cut short")
        op, kind, proto, flags, sip, dip, sport, dport, nip, nport, timeout, zlen = (
            _RECORD.unpack_from(data, offset)
        )
        offset += _RECORD.size
        if offset + zlen > len(data):
            raise WireError("truncated", f"zone of record {len(updates)} cut short")
        raw_zone = data[offset : offset + zlen]
        offset += zlen
        if op not in _OPS or kind not in _KINDS or flags & ~(_FLAG_DST | _FLAG_PORT):
            raise WireError("malformed", f"record {len(updates)}: bad op, kind or flags")
        try:
            zone = raw_zone.decode("utf-8")
        except UnicodeDecodeError:
            raise WireError("malformed", f"record {len(updates)}: zone is not UTF-8") from None
        is_nat = _KINDS[kind] == "nat"
        if not is_nat and (flags or nip or nport):
            raise WireError("malformed", f"record {len(updates)}: NAT fields on conntrack")
        if not flags & _FLAG_PORT and nport:
            raise WireError("malformed", f"record {len(updates)}: nat_port without flag")
        entry = StateEntry(
            "nat" if is_nat else "conntrack",
            ConnKey(proto, sip, dip, sport, dport, zone),
            nat_ip=nip if is_nat else None,
            nat_port=nport if flags & _FLAG_PORT else None,
            created=created,
            expiry=timeout / 1000.0,
            nat_side="dst" if flags & _FLAG_DST else "src",
        )
        if not valid(entry):
            raise WireError("malformed", f"record {len(updates)}: out of range")
        updates.append((_OPS[op], entry))  # type: ignore[arg-type]
    if offset != len(data):
        raise WireError("malformed", f"{len(data) - offset} trailing bytes")
    return Message(str(uuid.UUID(bytes=sender)), epoch, seq, tuple(updates))


def decode_record(record: bytes, created: float = 0.0) -> tuple[Op, StateEntry]:
    """One record on its own, with every check `decode` makes (the persisted table
    reuses them); WireError otherwise."""
    header = _HEADER.pack(MAGIC, VERSION, 0, 1, bytes(16), 1, 1)
    (update,) = decode(header + record, created).updates
    return update
