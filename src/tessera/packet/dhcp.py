"""DHCP messages (RFC 2131/2132): the BOOTP header plus the options a local server needs.

The agent answers DHCP for its own VMs (no broadcast crosses hosts), so the options a
server hands out or a client asks with are decoded into typed fields, validated once at
parse time; every other option is kept as raw `(code, value)` pairs, in wire order.
Options split over several instances are concatenated (RFC 3396), and values longer than
255 bytes are split again on build.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tessera.packet.addr import prefix_mask
from tessera.packet.errors import PacketError

SERVER_PORT = 67
CLIENT_PORT = 68

BOOTREQUEST = 1
BOOTREPLY = 2

# Message types (option 53).
DISCOVER = 1
OFFER = 2
REQUEST = 3
DECLINE = 4
ACK = 5
NAK = 6
RELEASE = 7
INFORM = 8

# Option codes.
OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS = 6
OPT_HOSTNAME = 12
OPT_DOMAIN_NAME = 15
OPT_MTU = 26
OPT_REQUESTED_IP = 50
OPT_LEASE_TIME = 51
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAM_REQUEST_LIST = 55
OPT_MAX_MESSAGE_SIZE = 57
OPT_RENEWAL_TIME = 58
OPT_REBINDING_TIME = 59
OPT_VENDOR_CLASS = 60
OPT_CLIENT_ID = 61
OPT_CLASSLESS_ROUTES = 121
OPT_END = 255

FLAG_BROADCAST = 0x8000
MAGIC_COOKIE = b"\x63\x82\x53\x63"

# Fixed part: op..giaddr (28) + chaddr (16) + sname (64) + file (128) + cookie.
_FIXED = struct.Struct("!BBBBIHHIIII6s10x64s128s4s")
OPTIONS_OFFSET = _FIXED.size  # 240
# RFC 1542 §3.3: some clients drop BOOTP messages shorter than 300 bytes.
MIN_MESSAGE_LEN = 300

_TYPED_CODES = frozenset(
    {
        OPT_MESSAGE_TYPE,
        OPT_SERVER_ID,
        OPT_REQUESTED_IP,
        OPT_LEASE_TIME,
        OPT_SUBNET_MASK,
        OPT_ROUTER,
        OPT_DNS,
        OPT_MTU,
        OPT_CLASSLESS_ROUTES,
        OPT_HOSTNAME,
        OPT_PARAM_REQUEST_LIST,
    }
)

Route = tuple[int, int, int]
"""A classless static route: (destination network, prefix length, gateway)."""


@dataclass(frozen=True, slots=True)
class Dhcp:
    """One DHCP message. Absent options are `None` or `()`.

    Only Ethernet clients exist here, so `chaddr` is the client MAC (htype 1, hlen 6).
    `sname` and `file` lose their trailing NUL padding; option overload (52) is not
    interpreted (clients do not use it towards a server, and we never send it).
    """

    op: int
    xid: int
    chaddr: int
    message_type: int | None = None
    ciaddr: int = 0
    yiaddr: int = 0
    siaddr: int = 0
    giaddr: int = 0
    flags: int = 0
    secs: int = 0
    hops: int = 0
    sname: bytes = b""
    file: bytes = b""
    requested_ip: int | None = None
    server_id: int | None = None
    lease_time: int | None = None
    subnet_mask: int | None = None
    routers: tuple[int, ...] = ()
    dns_servers: tuple[int, ...] = ()
    mtu: int | None = None
    classless_routes: tuple[Route, ...] = ()
    hostname: str | None = None
    param_request_list: tuple[int, ...] = ()
    options: tuple[tuple[int, bytes], ...] = ()

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & FLAG_BROADCAST)

    def option(self, code: int) -> bytes | None:
        """Raw value of an option without a typed field, e.g. client id (61)."""
        for c, value in self.options:
            if c == code:
                return value
        return None

    @classmethod
    def parse(cls, data: bytes) -> Dhcp:
        n = len(data)
        if n < OPTIONS_OFFSET:
            raise PacketError(f"DHCP message of {n} bytes is shorter than the BOOTP header")
        (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr,
         sname, bootfile, cookie) = _FIXED.unpack_from(data)  # fmt: skip
        if htype != 1 or hlen != 6:
            raise PacketError(f"DHCP hardware type {htype}/length {hlen} is not Ethernet")
        if cookie != MAGIC_COOKIE:
            raise PacketError("BOOTP message without the DHCP magic cookie")
        raw = _read_options(data, OPTIONS_OFFSET)
        typed: dict[str, object] = {}
        others: list[tuple[int, bytes]] = []
        for code, value in raw.items():
            if code in _TYPED_CODES:
                _decode_typed(code, value, typed)
            else:
                others.append((code, value))
        return cls(
            op=op,
            xid=xid,
            chaddr=int.from_bytes(chaddr, "big"),
            ciaddr=ciaddr,
            yiaddr=yiaddr,
            siaddr=siaddr,
            giaddr=giaddr,
            flags=flags,
            secs=secs,
            hops=hops,
            sname=sname.rstrip(b"\x00"),
            file=bootfile.rstrip(b"\x00"),
            options=tuple(others),
            **typed,  # type: ignore[arg-type]
        )

    def build(self) -> bytes:
        if len(self.sname) > 64 or len(self.file) > 128:
            raise PacketError("DHCP sname is limited to 64 bytes and file to 128")
        try:
            fixed = _FIXED.pack(
                self.op, 1, 6, self.hops, self.xid, self.secs, self.flags, self.ciaddr,
                self.yiaddr, self.siaddr, self.giaddr, self.chaddr.to_bytes(6, "big"),
                self.sname, self.file, MAGIC_COOKIE,
            )  # fmt: skip
        except (struct.error, OverflowError) as exc:
            raise PacketError(f"cannot build BOOTP header: {exc}") from None
        out = bytearray(fixed)
        for code, value in self._option_values():
            _write_option(out, code, value)
        out.append(OPT_END)
        if len(out) < MIN_MESSAGE_LEN:
            out += bytes(MIN_MESSAGE_LEN - len(out))
        return bytes(out)

    def _option_values(self) -> list[tuple[int, bytes]]:
        """Wire order: message type first (some clients expect it), then the rest."""
        try:
            values: list[tuple[int, bytes]] = []
            if self.message_type is not None:
                values.append((OPT_MESSAGE_TYPE, bytes([self.message_type])))
            for code, ip in (
                (OPT_SERVER_ID, self.server_id),
                (OPT_REQUESTED_IP, self.requested_ip),
                (OPT_LEASE_TIME, self.lease_time),
                (OPT_SUBNET_MASK, self.subnet_mask),
            ):
                if ip is not None:
                    values.append((code, ip.to_bytes(4, "big")))
            if self.routers:
                values.append((OPT_ROUTER, b"".join(r.to_bytes(4, "big") for r in self.routers)))
            if self.dns_servers:
                values.append((OPT_DNS, b"".join(d.to_bytes(4, "big") for d in self.dns_servers)))
            if self.mtu is not None:
                values.append((OPT_MTU, self.mtu.to_bytes(2, "big")))
            if self.classless_routes:
                values.append(
                    (OPT_CLASSLESS_ROUTES, encode_classless_routes(self.classless_routes))
                )
            if self.hostname is not None:
                values.append((OPT_HOSTNAME, self.hostname.encode("utf-8", "surrogateescape")))
            if self.param_request_list:
                values.append((OPT_PARAM_REQUEST_LIST, bytes(self.param_request_list)))
        except (OverflowError, ValueError, UnicodeEncodeError) as exc:
            raise PacketError(f"cannot encode DHCP option: {exc}") from None
        seen: set[int] = set()
        for code, value in self.options:
            if code in _TYPED_CODES or code in (OPT_PAD, OPT_END) or code in seen:
                raise PacketError(
                    f"DHCP option {code} must be given once, through its typed field if it has one"
                )
            if not 0 < code < OPT_END:
                raise PacketError(f"DHCP option code {code!r} is not in 1..254")
            seen.add(code)
            values.append((code, value))
        return values


def encode_classless_routes(routes: tuple[Route, ...] | list[Route]) -> bytes:
    """RFC 3442: prefix length, then only the significant octets of the network, then gateway.

    A destination with host bits set is refused rather than silently truncated: it would
    install a different route in the client than the one configured.
    """
    out = bytearray()
    for network, length, gateway in routes:
        mask = prefix_mask(length)
        if network & ~mask & 0xFFFF_FFFF or not 0 <= network <= 0xFFFF_FFFF:
            raise PacketError(f"classless route {network:#x}/{length} has host bits set")
        significant = (length + 7) // 8
        out.append(length)
        out += network.to_bytes(4, "big")[:significant]
        try:
            out += gateway.to_bytes(4, "big")
        except OverflowError:
            raise PacketError(f"gateway {gateway!r} is not an IPv4 address") from None
    return bytes(out)


def decode_classless_routes(value: bytes) -> tuple[Route, ...]:
    routes: list[Route] = []
    i, n = 0, len(value)
    while i < n:
        length = value[i]
        if length > 32:
            raise PacketError(f"classless route prefix length {length} exceeds 32")
        significant = (length + 7) // 8
        end = i + 1 + significant + 4
        if end > n:
            raise PacketError("classless static routes option is truncated")
        network = int.from_bytes(value[i + 1 : i + 1 + significant].ljust(4, b"\x00"), "big")
        gateway = int.from_bytes(value[end - 4 : end], "big")
        # Senders may leave junk past the prefix in the last octet: the route is the prefix.
        routes.append((network & prefix_mask(length), length, gateway))
        i = end
    return tuple(routes)


def _read_options(data: bytes, offset: int) -> dict[int, bytes]:
    """Options up to END (or the end of data); repeated codes concatenate (RFC 3396)."""
    raw: dict[int, bytes] = {}
    i, n = offset, len(data)
    while i < n:
        code = data[i]
        if code == OPT_PAD:
            i += 1
            continue
        if code == OPT_END:
            break
        if i + 1 >= n:
            raise PacketError(f"DHCP option {code} is truncated")
        end = i + 2 + data[i + 1]
        if end > n:
            raise PacketError(f"DHCP option {code} runs past the end of the message")
        raw[code] = raw.get(code, b"") + data[i + 2 : end]
        i = end
    return raw


def _decode_typed(code: int, value: bytes, into: dict[str, object]) -> None:
    n = len(value)
    if code == OPT_MESSAGE_TYPE:
        _expect_len(code, n, 1)
        into["message_type"] = value[0]
    elif code == OPT_MTU:
        _expect_len(code, n, 2)
        into["mtu"] = int.from_bytes(value, "big")
    elif code in (OPT_SERVER_ID, OPT_REQUESTED_IP, OPT_LEASE_TIME, OPT_SUBNET_MASK):
        _expect_len(code, n, 4)
        name = {
            OPT_SERVER_ID: "server_id",
            OPT_REQUESTED_IP: "requested_ip",
            OPT_LEASE_TIME: "lease_time",
            OPT_SUBNET_MASK: "subnet_mask",
        }[code]
        into[name] = int.from_bytes(value, "big")
    elif code in (OPT_ROUTER, OPT_DNS):
        if n % 4:
            raise PacketError(f"DHCP option {code} length {n} is not a multiple of 4")
        addrs = tuple(int.from_bytes(value[i : i + 4], "big") for i in range(0, n, 4))
        into["routers" if code == OPT_ROUTER else "dns_servers"] = addrs
    elif code == OPT_CLASSLESS_ROUTES:
        into["classless_routes"] = decode_classless_routes(value)
    elif code == OPT_HOSTNAME:
        into["hostname"] = value.decode("utf-8", "surrogateescape")
    elif code == OPT_PARAM_REQUEST_LIST:
        into["param_request_list"] = tuple(value)


def _expect_len(code: int, got: int, want: int) -> None:
    if got != want:
        raise PacketError(f"DHCP option {code} has length {got}, expected {want}")


def _write_option(out: bytearray, code: int, value: bytes) -> None:
    if not value:
        out += bytes((code, 0))
        return
    for i in range(0, len(value), 255):
        chunk = value[i : i + 255]
        out += bytes((code, len(chunk)))
        out += chunk
