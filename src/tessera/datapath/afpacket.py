"""AF_PACKET sockets with PACKET_AUXDATA: raw frames plus what the kernel kept aside.

Two things a frame read from a veth does not carry in its bytes: its 802.1Q tag, which
the receive path moves to metadata, and whether its TCP/UDP checksum is still only a
pseudo-header sum (CHECKSUM_PARTIAL, reported as TP_STATUS_CSUMNOTREADY). Both come in
the auxdata control message; forwarding without looking at them breaks VLANs and, worse,
makes every TCP connection fail silently while ping works (design.md §3).
"""

from __future__ import annotations

import fcntl
import socket
import struct
from dataclasses import dataclass

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
TP_STATUS_CSUMNOTREADY = 0x08
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
SIOCGIFMTU = 0x8921
_AUXDATA = struct.Struct("IIIHHHH")  # status, len, snaplen, mac, net, vlan_tci, vlan_tpid
_RECV_SIZE = 1 << 18  # a GSO frame of a veth can reach 64 KiB, BIG TCP more
_CMSG_SPACE = socket.CMSG_SPACE(_AUXDATA.size)


@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes  # as received: without the tag the kernel moved to metadata
    vlan_tci: int | None  # that tag, if there was one
    vlan_tpid: int
    csum_not_ready: bool  # TP_STATUS_CSUMNOTREADY: the L4 checksum must be completed

    def with_tag(self) -> bytes:
        """The frame as it was on the wire, its metadata tag put back in band."""
        if self.vlan_tci is None:
            return self.data
        tag = struct.pack("!HH", self.vlan_tpid, self.vlan_tci)
        return self.data[:12] + tag + self.data[12:]


class PacketSocket:
    """A non-blocking raw socket on one interface, blind to its own transmissions."""

    def __init__(self, ifname: str, rcvbuf: int = 4 << 20) -> None:
        self.ifname = ifname
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            try:
                self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:
                pass  # older kernels: recv() filters PACKET_OUTGOING instead
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.bind((ifname, ETH_P_ALL))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self) -> Frame | None:
        """The next frame, or None when nothing is waiting."""
        while True:
            try:
                data, ancdata, _flags, addr = self.sock.recvmsg(_RECV_SIZE, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return None
            if addr[2] == PACKET_OUTGOING:
                continue
            status, tci, tpid = 0, None, 0x8100
            for level, kind, cdata in ancdata:
                if level == SOL_PACKET and kind == PACKET_AUXDATA and len(cdata) >= _AUXDATA.size:
                    status, _len, _snap, _mac, _net, vtci, vtpid = _AUXDATA.unpack_from(cdata)
                    if status & TP_STATUS_VLAN_VALID:
                        tci = vtci
                        if status & TP_STATUS_VLAN_TPID_VALID:
                            tpid = vtpid
            return Frame(data, tci, tpid, bool(status & TP_STATUS_CSUMNOTREADY))

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def close(self) -> None:
        self.sock.close()


def interface_mtu(ifname: str) -> int:
    """The MTU of an interface of this network namespace (ioctl, not /sys: /sys may show
    another namespace when the process entered this one with nsenter)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16si12x", ifname.encode(), 0)
        res = fcntl.ioctl(s.fileno(), SIOCGIFMTU, req)
        return int(struct.unpack_from("16si", res)[1])
