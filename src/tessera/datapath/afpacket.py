"""AF_PACKET sockets with PACKET_AUXDATA: raw frames plus what the kernel kept aside.

Two things a frame read from a veth does not carry in its bytes: its 802.1Q tag, which
the receive path moves to metadata, and whether its TCP/UDP checksum is still only a
pseudo-header sum (CHECKSUM_PARTIAL, reported as TP_STATUS_CSUMNOTREADY). Both come in
the auxdata control message; forwarding without looking at them breaks VLANs and, worse,
makes every TCP connection fail silently while ping works (measured on veths).

The one home of that socket set-up and of reading the auxdata: the userspace datapath
reads its ports with `PacketSocket`, the eBPF datapath its miss veth with
`tessera.datapath.ebpf.upcall.MissChannel` (which adds PACKET_VNET_HDR).
"""

from __future__ import annotations

import fcntl
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

ETH_P_ALL = 0x0003
ETH_P_8021Q = 0x8100
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
TP_STATUS_CSUMNOTREADY = 0x08
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
SIOCGIFMTU = 0x8921
# struct tpacket_auxdata: status, len, snaplen, mac, net, vlan_tci, vlan_tpid
_AUXDATA = struct.Struct("IIIHHHH")
#: Room for the auxdata control message in recvmsg().
AUXDATA_SPACE = socket.CMSG_SPACE(_AUXDATA.size)
_RECV_SIZE = 1 << 18  # a GSO frame of a veth can reach 64 KiB, BIG TCP more


def open_packet_socket(ifname: str, *, vnet_hdr: bool = False) -> socket.socket:
    """A raw socket bound to `ifname` (all protocols) that receives the auxdata with
    every frame and, where the kernel can, not its own transmissions (older kernels:
    the reader skips PACKET_OUTGOING). `vnet_hdr`: frames carry a virtio_net_hdr,
    both ways, with their checksum-offload state."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        if vnet_hdr:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass
        sock.bind((ifname, ETH_P_ALL))
    except BaseException:
        sock.close()
        raise
    return sock


def read_auxdata(ancdata: Iterable[tuple[int, int, bytes]]) -> tuple[int, int | None, int]:
    """(tp_status, the VLAN TCI the kernel moved to metadata or None, its TPID) from the
    control messages of one recvmsg()."""
    for level, kind, cdata in ancdata:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(cdata) >= _AUXDATA.size:
            status, _len, _snap, _mac, _net, tci, tpid = _AUXDATA.unpack_from(cdata)
            if not status & TP_STATUS_VLAN_VALID:
                return status, None, ETH_P_8021Q
            return status, tci, tpid if status & TP_STATUS_VLAN_TPID_VALID else ETH_P_8021Q
    return 0, None, ETH_P_8021Q


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
        self.sock = open_packet_socket(ifname)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
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
                data, ancdata, _flags, addr = self.sock.recvmsg(_RECV_SIZE, AUXDATA_SPACE)
            except (BlockingIOError, InterruptedError):
                return None
            if addr[2] == PACKET_OUTGOING:
                continue
            status, tci, tpid = read_auxdata(ancdata)
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
