"""IPv6 connections: tcp_output -> ip6_output -> NIC (mbuf/ip6_output.py, tcpip_hdr.py).

The 60-byte IPv6+TCP header, the IPv6 MSS and TSO6 burst size, CSUM_IP6_TCP
offload or `in6_delayed_cksum` in software (checked against an independent
RFC 1071 sum over the IPv6 pseudo-header), and the same conversion rules as
ip_output (mb_unmapped_to_ext without IFCAP_NOMAP)."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import pytest

from mbuf.ifnet import (
    CSUM_IP6_TCP,
    CSUM_IP6_TSO,
    IF_HW_TSOMAX_DEFAULT,
    IFCAP_NOMAP,
    IFCAP_TSO4,
    IFCAP_TSO6,
    IFCAP_TXCSUM,
    IFCAP_TXCSUM_IPV6,
    TxPacket,
)
from mbuf.kern import Kernel
from mbuf.mbuf import M_NOMAP, m_copydata
from mbuf.param import IP_MAXPACKET, MLEN, TCP6_MSS, TCPIP6_HDR_LEN, howmany
from mbuf.socket import Socket, soclose
from mbuf.tcp_output import MAX_LINKHDR, tcp_output
from mbuf.tcpip_hdr import IPV6_FLOWLABEL_MASK, in6_cksum_pseudo, tcpip_fillheaders
from tests.mbuf.builders import SMALL_MEM, DiskFile, chain
from tests.mbuf.test_ip_output import fill_sendfile, rfc1071
from tests.support.pair import DST_IP6, SRC_IP6, new_socket
from tests.support.wire import tcp6_checksum_ok, wire_take

MakeFile = Callable[[bytes], DiskFile]
ALL6 = IFCAP_NOMAP | IFCAP_TXCSUM_IPV6 | IFCAP_TSO6
# The length cut alone (if_hw_tsomax less the headers and max_linkhdr, rounded
# down to whole segments while more data follows); the burst tests lift the
# segment-count limit, which tests/mbuf/test_tso_limits.py covers.
TSO6_LEN = IF_HW_TSOMAX_DEFAULT - TCPIP6_HDR_LEN - MAX_LINKHDR
TSO6_MAX = TSO6_LEN // TCP6_MSS * TCP6_MSS
NO_SEGLIMIT = (IF_HW_TSOMAX_DEFAULT, 128, IP_MAXPACKET)


def _bursts(size: int) -> list[int]:
    out = []
    while size:
        n = min(size, TSO6_LEN)
        if n < size:
            n -= n % TCP6_MSS
        out.append(n)
        size -= n
    return out


def _ring(so: Socket) -> list[TxPacket]:
    return list(so.so_txq.ring)


def _hdr(p: TxPacket) -> bytes:
    assert p.m.m_dat is not None
    return bytes(p.m.m_dat[: p.m.m_len])


@pytest.mark.parametrize("size", [1, TCP6_MSS, TCP6_MSS + 1, TSO6_MAX, TSO6_MAX + 1, 200_000])
def test_tso6_bursts_and_headers(make_file: MakeFile, size: int) -> None:
    kern = Kernel(SMALL_MEM, capenable=ALL6)
    kern.ifnet.set_tso_limits(*NO_SEGLIMIT)
    tf = make_file(random.Random(size).randbytes(size))
    so = new_socket(kern, isipv6=True)
    data = fill_sendfile(kern, so, tf)
    tcp_output(so)
    pkts = _ring(so)
    lens = [p.payload for p in pkts]
    assert lens == _bursts(size)
    iss = so.so_tcp.iss
    pos = 0
    for p in pkts:
        h = _hdr(p)
        assert len(h) == TCPIP6_HDR_LEN == 60
        vtf, plen, nxt, hlim = struct.unpack_from("!IHBB", h)
        # Version 6, traffic class 0, the flow label syncache_add takes from the ISS.
        assert (vtf >> 28, vtf >> 20 & 0xFF, vtf & 0xFFFFF) == (6, 0, iss & 0xFFFFF)
        assert (plen, nxt, hlim) == (20 + p.payload, 6, 64)
        assert int.from_bytes(h[8:24]) == SRC_IP6 and int.from_bytes(h[24:40]) == DST_IP6
        sport, dport, seq, ack, off = struct.unpack_from("!HHIIB", h, 40)
        assert (sport, dport, off >> 4) == (443, 50000, 5)
        assert seq == (iss + 1 + pos) & 0xFFFFFFFF and ack == so.so_tcp.rcv_nxt
        pos += p.payload
        flags = p.m.m_pkthdr_csum_flags
        assert flags & CSUM_IP6_TCP and bool(flags & CSUM_IP6_TSO) == (p.payload > TCP6_MSS)
        assert p.m.m_pkthdr_len == 60 + p.payload
    st = kern.stats
    assert st.ip6.localout == len(pkts) and st.ip.output_packets == 0
    assert st.ifnet.tx_segments == sum(howmany(n, TCP6_MSS) for n in lens)
    assert st.ifnet.tx_bytes == size + 60 * st.ifnet.tx_segments
    assert wire_take(so) == data
    soclose(so)
    assert kern.leaks() == {}


def test_tso4_alone_does_not_cut_ipv6_bursts(make_file: MakeFile) -> None:
    """IFCAP_TSO4 without TSO6: an IPv6 connection sends one MSS per packet."""
    kern = Kernel(SMALL_MEM, capenable=IFCAP_NOMAP | IFCAP_TXCSUM | IFCAP_TSO4 | IFCAP_TXCSUM_IPV6)
    tf = make_file(bytes(10_000))
    so = new_socket(kern, isipv6=True)
    fill_sendfile(kern, so, tf)
    tcp_output(so)
    assert [p.payload for p in _ring(so)] == [
        min(TCP6_MSS, 10_000 - i) for i in range(0, 10_000, TCP6_MSS)
    ]
    wire_take(so)
    soclose(so)
    assert kern.leaks() == {}


@pytest.mark.parametrize("flow", [0, 1, 0xFFFFF, 0x100000, 0xFFFFFFFF])
def test_flow_label_stays_in_its_20_bits(flow: int) -> None:
    """tcpip_fillheaders writes the low 20 bits of `flow` (IPV6_FLOWLABEL_MASK):
    nothing spills into the traffic class or the version."""
    buf = bytearray(TCPIP6_HDR_LEN)
    tcpip_fillheaders(buf, True, SRC_IP6, DST_IP6, 443, 50000, 1, 2, 0x10, 100, 7, 0, flow)
    (vtf,) = struct.unpack_from("!I", buf)
    assert vtf == 0x6000_0000 | flow & IPV6_FLOWLABEL_MASK


def test_in6_cksum_pseudo_is_the_rfc_8200_sum() -> None:
    for src, dst, n in [(SRC_IP6, DST_IP6, 20), ((1 << 128) - 1, 1, 65535), (0, 0, 0)]:
        pseudo = src.to_bytes(16) + dst.to_bytes(16) + struct.pack("!IxxxB", n, 6)
        assert in6_cksum_pseudo(src, dst, n, 6) == rfc1071(pseudo)


@pytest.mark.parametrize("size", [1, 2, 3, TCP6_MSS, 20_000])
@pytest.mark.parametrize("nomap", [True, False])
def test_software_checksum_over_the_ipv6_pseudo_header(
    make_file: MakeFile, size: int, nomap: bool
) -> None:
    """Without IFCAP_TXCSUM_IPV6: convert, then in6_delayed_cksum; the receiver's check."""
    kern = Kernel(SMALL_MEM, capenable=IFCAP_NOMAP if nomap else 0)
    tf = make_file(random.Random(size).randbytes(size))
    so = new_socket(kern, isipv6=True)
    data = fill_sendfile(kern, so, tf)
    tcp_output(so)
    pkts = _ring(so)
    assert all(p.payload <= TCP6_MSS for p in pkts)  # no TSO6 without the checksum offload
    for p in pkts:
        assert not p.m.m_pkthdr_csum_flags & CSUM_IP6_TCP
        assert not any(m.m_flags & M_NOMAP for m in chain(p.m))
        assert tcp6_checksum_ok(m_copydata(p.m, 0, p.m.m_pkthdr_len))
    st = kern.stats.ip
    assert st.sw_csum_packets == len(pkts)
    assert st.unmapped_converted == (0 if size <= MLEN else len(pkts))
    assert wire_take(so) == data
    soclose(so)
    assert kern.leaks() == {}


def test_without_nomap_ipv6_chains_are_converted(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM, capenable=IFCAP_TXCSUM_IPV6 | IFCAP_TSO6)
    tf = make_file(random.Random(3).randbytes(100_000))
    so = new_socket(kern, isipv6=True)
    data = fill_sendfile(kern, so, tf)
    tcp_output(so)
    pkts = _ring(so)
    assert kern.stats.ip.unmapped_converted == len(pkts)
    assert kern.stats.ip.sw_csum_packets == 0
    for p in pkts:
        assert not any(m.m_flags & M_NOMAP for m in chain(p.m))
    assert kern.stats.sfbuf.in_use > 0
    assert wire_take(so) == data
    soclose(so)
    assert kern.leaks() == {}
