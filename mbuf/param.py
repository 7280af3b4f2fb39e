"""Machine and mbuf parameters of the modeled kernel (amd64, LP64, 2019 layout).

Theory of operation. Every number here is the value FreeBSD head had in
mid-2019; the comment on each names where it comes from.

Models: sys/sys/param.h, sys/sys/mbuf.h and sys/kern/uipc_sockbuf.c.
"""

from __future__ import annotations

from typing import Final

PAGE_SHIFT: Final = 12
PAGE_SIZE: Final = 1 << PAGE_SHIFT  # amd64 base page
PAGE_MASK: Final = PAGE_SIZE - 1

MSIZE: Final = 256  # sys/sys/param.h: size of an mbuf
MLEN: Final = 224  # MSIZE - 32-byte m_hdr: data space of a plain mbuf
MHLEN: Final = 168  # MLEN - 56-byte pkthdr
MINCLSIZE: Final = MHLEN + 1  # smallest length worth a cluster (m_getm2)
MCLBYTES: Final = 2048  # standard cluster
MJUMPAGESIZE: Final = PAGE_SIZE  # page-sized jumbo cluster, used by m_getm2 for long writes

# struct mbuf_ext_pgs (E1, kevans91@4f523e5d sys/sys/mbuf.h): 256 bytes in all.
MBUF_PEXT_MAX_PGS: Final = 152 // 8  # 19 physical addresses of 8 bytes on LP64
MBUF_PEXT_HDR_LEN: Final = 23  # largest TLS header: CBC with explicit IV is 21
MBUF_PEXT_TRAIL_LEN: Final = 64  # largest TLS trailer: SHA384 MAC plus padding
MBUF_PEXT_MAX_BYTES: Final = MBUF_PEXT_MAX_PGS * PAGE_SIZE + MBUF_PEXT_HDR_LEN + MBUF_PEXT_TRAIL_LEN

# Physical addresses start above the first megabyte, as on a PC, so that 0 never
# looks like a valid page address.
PHYS_BASE: Final = 0x100000

# TCP/IP over Ethernet on the modeled interface.
IF_MTU: Final = 1500
ETHER_HDR_LEN: Final = 14  # destination, source, type
IP_HDR_LEN: Final = 20  # IPv4 header without options
IP6_HDR_LEN: Final = 40  # IPv6 fixed header (no extension headers)
TCP_HDR_LEN: Final = 20  # TCP header without options
TCPIP_HDR_LEN: Final = IP_HDR_LEN + TCP_HDR_LEN  # 40: IPv4 + TCP
TCPIP6_HDR_LEN: Final = IP6_HDR_LEN + TCP_HDR_LEN  # 60: IPv6 + TCP
TCP_MSS: Final = 1448  # what Linux and FreeBSD use with timestamps on a 1500 MTU (1500 - 40 - 12)
TCP6_MSS: Final = 1428  # the same over IPv6 (1500 - 60 - 12)
IP_MAXPACKET: Final = 65535  # if_hw_tsomax default: one TSO burst is at most 64 KiB

# sendfile readahead is capped at one maximal I/O: MAXPHYS was 128 KiB in 2019.
MAXPHYS: Final = 128 * 1024

# Socket buffers (sys/kern/uipc_sockbuf.c).
SB_EFFICIENCY: Final = 8  # kern.ipc.sockbuf_waste_factor
SB_MAX: Final = 2 * 1024 * 1024  # kern.ipc.maxsockbuf
SB_SNDBUF_DEFAULT: Final = 256 * 1024  # autosized send buffer of a busy bulk connection
SB_RCVBUF_DEFAULT: Final = 64 * 1024  # net.inet.tcp.recvspace
TCP_MAXWIN: Final = 65535  # largest unscaled window (sys/netinet/tcp.h)
TCP_MAX_WINSHIFT: Final = 14  # largest window scale (RFC 7323)


def howmany(x: int, y: int) -> int:
    """Number of y-sized units needed to hold x (sys/param.h)."""
    return (x + y - 1) // y


def trunc_page(x: int) -> int:
    return x & ~PAGE_MASK


def round_page(x: int) -> int:
    return (x + PAGE_MASK) & ~PAGE_MASK
