"""The agent's end of the miss path: read tagged misses, write them back.

On a miss the program tags the frame with the ingress port number (an
802.1Q VID) and redirects it to the miss veth.  This module opens an
AF_PACKET socket on the other end of that veth:

* the port tag arrives out of band (``PACKET_AUXDATA``: the kernel moves the
  outer tag to metadata on receive), any tenant tag stays in the data;
* ``PACKET_VNET_HDR`` carries the checksum-offload state with the frame.  A
  TCP segment from a VM usually still has its checksum left to "hardware"
  (CHECKSUM_PARTIAL); read and re-sent as plain bytes it would arrive with a
  wrong checksum and the connection would stall on SYN retransmits.  With the
  virtio-net header the kernel rebuilds the partial checksum on send.

:meth:`MissChannel.inject` writes the frame back with the port tag in band;
the ``inject`` program on the datapath end pops it and runs the lookup again.
"""

from __future__ import annotations

import os
import select
import struct
from dataclasses import dataclass
from typing import Final

from tessera.datapath.afpacket import (
    AUXDATA_SPACE,
    ETH_P_8021Q,
    PACKET_OUTGOING,
    TP_STATUS_CSUMNOTREADY,
    open_packet_socket,
    read_auxdata,
)
from tessera.datapath.base import MAX_PORT_NO
from tessera.datapath.ebpf.layout import CT_TAG_SHIFT
from tessera.datapath.ebpf.netns import run_in_netns

__all__ = ["NO_VNET", "Miss", "MissChannel", "VnetHdr"]

VIRTIO_NET_HDR_F_NEEDS_CSUM: Final = 1
_VNET: Final = struct.Struct("=BBHHHH")
_NO_OFFLOAD: Final = (0, 0, 0, 0, 0, 0)
_U16: Final = struct.Struct("!H")
_MAX_FRAME: Final = 65536 + 64


@dataclass(frozen=True, slots=True)
class VnetHdr:
    """struct virtio_net_hdr: offload state of a frame (offsets from its
    Ethernet header, as read)."""

    flags: int = 0
    gso_type: int = 0
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return _VNET.pack(
            self.flags,
            self.gso_type,
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        )

    def shifted(self, n: int) -> VnetHdr:
        """The same header for a frame with ``n`` bytes inserted before L3."""
        return VnetHdr(
            self.flags,
            self.gso_type,
            self.hdr_len + n if self.hdr_len else 0,
            self.gso_size,
            self.csum_start + n if self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM else self.csum_start,
            self.csum_offset,
        )


NO_VNET: Final = VnetHdr()  # the header of most misses: shared, not built per packet
_PLAIN: Final = NO_VNET.pack()
_TAG: Final = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class Miss:
    """One missed packet: the port it entered on and the frame as it was."""

    port: int
    frame: bytes  # without the port tag; a tenant tag, if any, in band
    vnet: VnetHdr
    csum_not_ready: bool  # TP_STATUS_CSUMNOTREADY: L4 checksum still partial
    ct_state: int = 0  # the key's ct_state, in the port tag's priority bits


class MissChannel:
    """AF_PACKET socket on the agent end of the miss veth (``ifname``)."""

    def __init__(self, ifname: str, netns: str | os.PathLike[str] | None = None) -> None:
        self.ifname = ifname

        self.sock = run_in_netns(netns, lambda: open_packet_socket(ifname, vnet_hdr=True))
        self.sock.setblocking(False)
        # One receive buffer for the socket's life: a frame is copied out of it once.
        # So one reader at a time (the agent's upcall thread is the only one).
        self._buf = bytearray(_MAX_FRAME)
        self._view = memoryview(self._buf)

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, timeout: float | None = None) -> Miss | None:
        """The next miss, or None after ``timeout`` seconds (None: wait).

        Frames without a port tag (not produced by the program) are skipped.
        """
        while True:
            if timeout != 0:  # 0: the socket is non-blocking, no select needed to poll
                ready, _, _ = select.select([self.sock], [], [], timeout)
                if not ready:
                    return None
            try:
                got = self.recv_fields()
            except BlockingIOError:
                if timeout == 0:
                    return None
                continue
            if got is not None:
                return Miss(*got)

    def recv_fields(self) -> tuple[int, bytes, VnetHdr, bool, int] | None:
        """One queued frame as Miss's fields (port, frame, vnet, csum_not_ready,
        ct_state); None for a frame that is not a miss. Raises BlockingIOError when
        none is queued."""
        n, anc, _flags, addr = self.sock.recvmsg_into((self._buf,), AUXDATA_SPACE)
        if addr[2] == PACKET_OUTGOING or n < _VNET.size + 14:
            return None
        raw = _VNET.unpack_from(self._buf)
        vnet = NO_VNET if raw == _NO_OFFLOAD else VnetHdr(*raw)
        status, tci, _tpid = read_auxdata(anc)
        body = _VNET.size
        if tci is not None:
            port = tci & 0x0FFF
            ct_state = tci >> CT_TAG_SHIFT
            frame = bytes(self._view[body:n])
        elif n >= body + 18 and _U16.unpack_from(self._buf, body + 12)[0] == ETH_P_8021Q:
            # Tag left in band (vlan offload off): pop it ourselves.
            tci = _U16.unpack_from(self._buf, body + 14)[0]
            port, ct_state = tci & 0x0FFF, tci >> CT_TAG_SHIFT
            frame = bytes(self._view[body : body + 12]) + bytes(self._view[body + 16 : n])
            vnet = vnet.shifted(-4)
        else:
            return None
        if port == 0:
            return None
        return port, frame, vnet, bool(status & TP_STATUS_CSUMNOTREADY), ct_state

    def inject(self, port: int, frame: bytes, vnet: VnetHdr | None = None) -> None:
        """Write ``frame`` back for the ``inject`` program, as if it had
        entered on ``port`` (tag in band, outermost)."""
        if not 1 <= port <= MAX_PORT_NO:
            raise ValueError(f"port {port} out of 1..{MAX_PORT_NO}")
        head = _PLAIN if vnet is None or vnet is NO_VNET else vnet.shifted(4).pack()
        self.sock.send(b"".join((head, frame[:12], _TAG.pack(ETH_P_8021Q, port), frame[12:])))

    def reinject(self, miss: Miss) -> None:
        self.inject(miss.port, miss.frame, miss.vnet)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> MissChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
