"""VXLAN (RFC 7348) framing for the datapaths that tunnel from userspace.

The wire format is the kernel's, so a host running the userspace datapath and a host
running the eBPF datapath (kernel VXLAN device in external mode) tunnel to each other.
"""

from __future__ import annotations

import struct

VXLAN_PORT = 4789
_HDR = struct.Struct("!II")
_FLAG_VNI = 0x08000000
OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


def encap(vni: int, frame: bytes) -> bytes:
    """The UDP payload carrying `frame` with `vni`."""
    return _HDR.pack(_FLAG_VNI, vni << 8) + frame


def decap(payload: bytes) -> tuple[int, bytes] | None:
    """(vni, inner frame) of a UDP payload, None if it is not a valid VXLAN packet."""
    if len(payload) < _HDR.size + 14:
        return None
    flags, vni_word = _HDR.unpack_from(payload)
    if not flags & _FLAG_VNI:
        return None
    return vni_word >> 8, payload[_HDR.size :]
