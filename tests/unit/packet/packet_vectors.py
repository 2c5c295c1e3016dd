"""Known frames, written byte by byte from the RFCs; checksums computed independently."""

from __future__ import annotations


def hexbytes(text: str) -> bytes:
    """Hex with spaces, newlines and `#` comments allowed."""
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    return bytes.fromhex("".join(lines).replace(" ", ""))


ARP_REQUEST = hexbytes(
    """
    ffffffffffff 525400123456 0806          # broadcast, from 52:54:00:12:34:56, ARP
    0001 0800 06 04 0001                    # Ethernet/IPv4, hlen 6, plen 4, request
    525400123456 c0a80001                   # sender 52:54:00:12:34:56 192.168.0.1
    000000000000 c0a80002                   # target unknown, 192.168.0.2
    000000000000000000000000000000000000    # padding to the 60-byte minimum
    """
)


ICMP_ECHO = hexbytes(
    """
    020000000002 020000000001 0800
    45 00 0024 abcd 4000 40 01 7b09         # DF, TTL 64, ICMP, header checksum
    0a000001 0a000002                       # 10.0.0.1 -> 10.0.0.2
    08 00 5435 1234 0001                    # echo request, checksum, id 0x1234, seq 1
    6162636465666768                        # "abcdefgh"
    """
)


TCP_SYN = hexbytes(
    """
    020000000014 02000000000a 0800
    45 00 003c 1c46 4000 40 06 9d07 c0a8000a c0a80014    # 192.168.0.10 -> .20, TCP
    a8ca 0016 11223344 00000000                          # 43210 -> 22, seq, ack 0
    a0 02 faf0 da53 0000                                 # offset 10 words, SYN, win 64240
    020405b4 0402 080a0102030400000000 01 030307         # MSS 1460, SACK-OK, TS, NOP, WS 7
    """
)


VLAN_UDP = hexbytes(
    """
    020000000009 020000000005 8100 a064 0800   # tag: PCP 5, VID 100
    45 00 0021 0001 0000 40 11 66bc 0a010005 0a010009
    14e9 270f 000d 6bfa 68656c6c6f             # 5353 -> 9999, len 13, "hello"
    """
)


IP_ROUTER_ALERT = hexbytes(
    """
    01005e000016 020000000001 0800
    46 00 0020 0000 4000 01 02 fac0 0a000001 e0000016   # IHL 6, TTL 1, IGMP to 224.0.0.22
    94040000                                            # Router Alert option (RFC 2113)
    2200fa0200000000                                    # IGMP body, left as bytes
    """
)


DHCP_DISCOVER = hexbytes(
    """
    ffffffffffff 0242ac110002 0800
    45 00 0148 0000 0000 40 11 79a6 00000000 ffffffff   # 0.0.0.0 -> 255.255.255.255
    0044 0043 0134 fa27                                 # 68 -> 67, len 308
    01 01 06 00 3903f326 0000 0000                      # BOOTREQUEST, Ethernet, xid
    00000000 00000000 00000000 00000000                 # ciaddr yiaddr siaddr giaddr
    0242ac110002 00000000000000000000                   # chaddr
    """
    + "00" * 64  # sname
    + "00" * 128  # file
    + """
    63825363                                            # magic cookie
    350101                                              # 53 message type: DISCOVER
    3d07010242ac110002                                  # 61 client id: type 1 + MAC
    39020240                                            # 57 max message size 576
    3707 0103060c0f1c2a                                 # 55 subnet router dns host domain...
    3c0c 756468637020312e33362e31                       # 60 vendor class "udhcp 1.36.1"
    0c06 616c70696e65                                   # 12 hostname "alpine"
    ff                                                  # end
    000000000000000000000000                            # pad to 300 bytes of BOOTP
    """
)
