"""TCP/IP headers of one connection, IPv4 or IPv6: built, checksummed, parsed.

Theory of operation. A connection's control block knows its family
(`TcpCb.isipv6`), addresses (ints: 32 bits for IPv4, 128 for IPv6) and ports;
`tcpip_fillheaders` writes the IP header and the 20-byte TCP header in front
of a segment: 40 bytes for IPv4 (TCPIP_HDR_LEN), 60 for IPv6
(TCPIP6_HDR_LEN). The same function makes our transmitted headers and the
peer's inbound ones (the receive path swaps the addresses), so both
directions of a capture agree on the layout.

Checksums: `in_cksum_hdr` is the IPv4 header checksum; `in_pseudo` /
`in6_cksum_pseudo` are the partial sums of the IPv4 and IPv6 pseudo-headers
(RFC 793, RFC 8200 8.1) the TCP checksum starts from; `tcp_cksum` sums a
whole TCP segment (header and payload as scatter-gather segments).

Models: sys/netinet/tcp_subr.c (`tcpip_fillheaders`), sys/netinet/in_cksum.c
(`in_cksum_hdr`, `in_pseudo`) and sys/netinet6/in6_cksum.c
(`in6_cksum_pseudo`).

Deliberate differences: no TCP options are written (the kernel writes
timestamps and SACK blocks; the model's MSS leaves room for timestamps, as a
connection that negotiated them has), and the kernel leaves the IPv4 header
checksum to the interface when it offloads CSUM_IP, where here the
transmitted header checksum is left 0 either way (ip_output may fill it);
inbound headers, which stand for what the peer put on the wire, always
carry both checksums correct. IPv6 headers of ours carry the connection's
flow label (`TcpCb.inp_flow`, taken from the ISS as FreeBSD's syncache does
with its default sysctls); inbound ones carry 0, where a Linux peer would
put a label of its own.
"""

from __future__ import annotations

import struct
from typing import Final

from mbuf.in_cksum import in_cksum, in_pseudo
from mbuf.param import IP6_HDR_LEN, IP_HDR_LEN, TCP_HDR_LEN, TCPIP6_HDR_LEN, TCPIP_HDR_LEN

IPPROTO_TCP: Final = 6
IPVERSION: Final = 4
IPV6_VERSION: Final = 0x60
IP_DF: Final = 0x4000
IPDEFTTL: Final = 64  # net.inet.ip.ttl
IPV6_DEFHLIM: Final = 64  # net.inet6.ip6.hlim
IPV6_FLOWLABEL_MASK: Final = 0x000FFFFF  # the flow label: the low 20 bits of ip6_flow

TH_FIN: Final = 0x01
TH_SYN: Final = 0x02
TH_RST: Final = 0x04
TH_PSH: Final = 0x08
TH_ACK: Final = 0x10

_IP = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
TH_SUM_OFF: Final = 16  # the checksum field within the TCP header
IP_SUM_OFF: Final = 10  # ... within the IPv4 header


def tcpip_hdrlen(isipv6: bool) -> int:
    """The IP+TCP header length of a connection: 60 (IPv6) or 40 (IPv4)."""
    return TCPIP6_HDR_LEN if isipv6 else TCPIP_HDR_LEN


def tcpip_fillheaders(
    buf: bytearray | memoryview,
    isipv6: bool,
    src: int,
    dst: int,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    win: int,
    ip_id: int,
    length: int,
    flow: int = 0,
) -> int:
    """Write the IP and TCP headers of a segment of `length` payload bytes at the
    front of `buf`; checksums are left 0. IPv4 headers carry `ip_id`, IPv6 ones the
    flow label `flow` (inp_flow). Returns the header length."""
    if isipv6:
        _IP6.pack_into(
            buf, 0, IPV6_VERSION << 24 | flow & IPV6_FLOWLABEL_MASK, TCP_HDR_LEN + length,
            IPPROTO_TCP, IPV6_DEFHLIM,
            src.to_bytes(16, "big"), dst.to_bytes(16, "big"),
        )  # fmt: skip
        off = IP6_HDR_LEN
    else:
        _IP.pack_into(
            buf, 0, (IPVERSION << 4) | (IP_HDR_LEN >> 2), 0,
            min(TCPIP_HDR_LEN + length, 0xFFFF), ip_id & 0xFFFF, IP_DF, IPDEFTTL, IPPROTO_TCP, 0,
            src.to_bytes(4, "big"), dst.to_bytes(4, "big"),
        )  # fmt: skip
        off = IP_HDR_LEN
    _TCP.pack_into(
        buf, off, sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
        (TCP_HDR_LEN >> 2) << 4, flags, min(win, 0xFFFF), 0, 0,
    )  # fmt: skip
    return off + TCP_HDR_LEN


def in_cksum_hdr(ip: bytes | bytearray | memoryview) -> int:
    """in_cksum_hdr: the checksum of a 20-byte IPv4 header (its own field counted
    as stored: 0 when computing, the value when verifying, which then gives 0)."""
    return in_cksum([memoryview(ip)[:IP_HDR_LEN]])


def in6_cksum_pseudo(src: int, dst: int, length: int, nxt: int) -> int:
    """in6_cksum_pseudo: partial sum of the IPv6 pseudo-header (RFC 8200 8.1):
    both addresses, the upper-layer length (32 bits) and the next header."""
    s = length + nxt
    for a in (src, dst):
        for _ in range(8):
            s += a & 0xFFFF
            a >>= 16
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return s


def tcp_pseudo(isipv6: bool, src: int, dst: int, tcplen: int) -> int:
    """The pseudo-header sum a TCP checksum of this family starts from."""
    if isipv6:
        return in6_cksum_pseudo(src, dst, tcplen, IPPROTO_TCP)
    return in_pseudo(src, dst, IPPROTO_TCP, tcplen)


def tcp_cksum(isipv6: bool, src: int, dst: int, segment: list[memoryview], tcplen: int) -> int:
    """The checksum value of a TCP segment (header with its checksum field as it
    is, then payload): store it when the field was 0; 0 means a stored one is right."""
    return in_cksum(segment, tcp_pseudo(isipv6, src, dst, tcplen))
