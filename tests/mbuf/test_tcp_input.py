"""The receive path: if_rx -> ether_input -> ip_input/ip6_input -> tcp_input -> so_rcv -> soreceive

Frames are checked independently of mbuf's checksum code (tests/support/wire.py);
every test ends with the socket closed and nothing leaked.
"""

from __future__ import annotations

import random
import struct

import pytest

from mbuf.if_tap import ETHERTYPE_IP, ETHERTYPE_IPV6
from mbuf.ifnet import IFCAP_RXCSUM
from mbuf.kern import Kernel
from mbuf.mbuf import M_EXT, Mbuf, m_copydata, m_getptr
from mbuf.param import (
    ETHER_HDR_LEN,
    MCLBYTES,
    MSIZE,
    SB_RCVBUF_DEFAULT,
    TCP6_MSS,
    TCP_MSS,
    TCPIP6_HDR_LEN,
    TCPIP_HDR_LEN,
    howmany,
)
from mbuf.sockbuf import SBS_CANTRCVMORE
from mbuf.socket import Socket, soclose, soreceive, sosend
from mbuf.tcp_input import (
    _rx_frame,
    ether_input,
    if_rx,
)
from mbuf.tcp_output import tcp_output
from mbuf.tcpip_hdr import TH_ACK, TH_FIN, TH_PSH
from tests.mbuf.builders import chain
from tests.support.pair import PEER_ISS, ConnectionPair, new_socket
from tests.support.wire import ip_header_checksum_ok, tcp6_checksum_ok, tcp_checksum_ok

FAMILIES = pytest.mark.parametrize("isipv6", [False, True], ids=["ipv4", "ipv6"])
SIZES = [1, TCP6_MSS - 1, TCP6_MSS, TCP_MSS, TCP_MSS + 1, 3 * TCP_MSS + 5, SB_RCVBUF_DEFAULT]


def _close(kern: Kernel, so: Socket) -> None:
    soclose(so)
    assert kern.leaks() == {}


def _frame_bytes(m: Mbuf) -> bytes:
    return m_copydata(m, 0, m.m_pkthdr_len)


@FAMILIES
@pytest.mark.parametrize("size", SIZES)
def test_bytes_arrive_in_mss_segments_and_clusters(isipv6: bool, size: int) -> None:
    kern = Kernel()
    so = new_socket(kern, isipv6=isipv6)
    data = random.Random(size).randbytes(size)
    mss = so.so_tcp.t_maxseg
    assert mss == (TCP6_MSS if isipv6 else TCP_MSS)
    assert if_rx(so, data) == howmany(size, mss)
    rcv = so.so_rcv
    ms = list(chain(rcv.sb_mb))
    # Each segment stays in the cluster the NIC received it in, headers trimmed.
    assert len(ms) == rcv.sb_mcnt == rcv.sb_ccnt == howmany(size, mss)
    assert all(
        m.m_flags & M_EXT and m.m_ext is not None and m.m_ext.ext_size == MCLBYTES for m in ms
    )
    assert rcv.sb_ccc == rcv.sb_acc == size
    assert rcv.sb_mbcnt == len(ms) * (MSIZE + MCLBYTES)
    assert kern.stats.mb.clusters_in_use == len(ms)
    assert kern.stats.sb_rcv.ccc_peak == size
    st = kern.stats.tcp
    assert (st.rcvtotal, st.rcvpack, st.rcvbyte) == (len(ms), len(ms), size)
    ipst = kern.stats.ip6 if isipv6 else kern.stats.ip
    assert ipst.total == ipst.delivered == len(ms)
    hdr = ETHER_HDR_LEN + (TCPIP6_HDR_LEN if isipv6 else TCPIP_HDR_LEN)
    assert kern.stats.ifnet.rx_bytes == size + hdr * len(ms)
    assert so.so_tcp.rcv_nxt == (PEER_ISS + 1 + size) & 0xFFFFFFFF  # across the wrap
    assert soreceive(so, size) == data
    assert rcv.sb_ccc == rcv.sb_mbcnt == 0 and rcv.sb_mb is None
    assert kern.stats.mb.clusters_in_use == 0
    _close(kern, so)


@FAMILIES
@pytest.mark.parametrize("how", ["whole", "byte", "random"])
def test_three_way_feeding(isipv6: bool, how: str) -> None:
    """Whole, one byte per host read, random reads: the reader gets the same bytes."""
    kern = Kernel()
    pair = ConnectionPair(new_socket(kern, isipv6=isipv6))
    rnd = random.Random(7)
    data = rnd.randbytes(5000)
    got = pair.to_server_as(data, how)
    assert got == data
    assert kern.stats.tcp.rcvbyte == len(data)
    assert pair.to_server(b"") == b""  # the FIN: end of file
    assert pair.so.so_rcv.sb_state & SBS_CANTRCVMORE
    pair.close()
    assert kern.leaks() == {}


def test_partial_reads_keep_the_rest() -> None:
    kern = Kernel()
    so = new_socket(kern)
    data = bytes(range(256)) * 20
    if_rx(so, data)
    got = b""
    for n in (1, 100, TCP_MSS, 7, 100_000):
        got += soreceive(so, n)
        assert so.so_rcv.sb_ccc == len(data) - len(got)
        assert so.so_rcv.sb_mcnt == howmany(len(data) - len(got), TCP_MSS) or not so.so_rcv.sb_ccc
    assert got == data
    assert soreceive(so, 10) == b""  # would block: no FIN yet
    _close(kern, so)


def test_close_frees_what_the_reader_never_took() -> None:
    kern = Kernel()
    so = new_socket(kern)
    if_rx(so, bytes(10_000))
    assert kern.stats.mb.clusters_in_use == howmany(10_000, TCP_MSS)
    _close(kern, so)


@FAMILIES
def test_frames_carry_the_peer_headers_and_correct_checksums(isipv6: bool) -> None:
    """What the NIC received, checked independently: Ethernet type, the IPv4 header
    checksum, the TCP checksum over the family's pseudo-header, ports, seq and ack."""
    kern = Kernel()
    so = new_socket(kern, isipv6=isipv6)
    tp = so.so_tcp
    payload = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    m = _rx_frame(so, memoryview(payload), TH_ACK | TH_PSH)
    frame = _frame_bytes(m)
    etype = struct.unpack_from("!H", frame, 12)[0]
    ip = frame[ETHER_HDR_LEN:]
    if isipv6:
        assert etype == ETHERTYPE_IPV6
        assert ip[0] >> 4 == 6 and ip[6] == 6
        assert struct.unpack_from("!H", ip, 4)[0] == 20 + len(payload)
        assert int.from_bytes(ip[8:24]) == tp.dst and int.from_bytes(ip[24:40]) == tp.src
        assert tcp6_checksum_ok(ip)
        th = ip[40:]
    else:
        assert etype == ETHERTYPE_IP
        assert ip[0] == 0x45 and ip[9] == 6
        assert struct.unpack_from("!H", ip, 2)[0] == 40 + len(payload)
        assert ip_header_checksum_ok(ip)
        assert tcp_checksum_ok(ip)
        th = ip[20:]
    sport, dport, seq, ack, _off, flags = struct.unpack_from("!HHIIBB", th)
    assert (sport, dport) == (tp.dport, tp.sport)
    assert seq == tp.rcv_nxt and ack == (tp.iss + 1) & 0xFFFFFFFF
    assert flags == TH_ACK | TH_PSH
    assert th[20:] == payload
    ether_input(so, m)
    assert soreceive(so, 100) == payload
    _close(kern, so)


def _corrupt(frame: Mbuf, off: int) -> None:
    assert frame.m_ext is not None and frame.m_ext.ext_buf is not None
    frame.m_ext.ext_buf[off] ^= 0x5A


@pytest.mark.parametrize(
    ("isipv6", "where", "counter"),
    [
        (False, ETHER_HDR_LEN + 40 + 3, "tcp.rcvbadsum"),  # payload
        (False, ETHER_HDR_LEN + 8, "ip.badsum"),  # IPv4 TTL: header checksum fails
        (False, ETHER_HDR_LEN, "ip.badvers"),
        (True, ETHER_HDR_LEN + 60 + 3, "tcp.rcvbadsum"),
        (True, ETHER_HDR_LEN + 8, "tcp.rcvbadsum"),  # source address: pseudo-header
        (True, ETHER_HDR_LEN, "ip6.badvers"),
        (False, 12, "ifnet.rx_noproto"),  # the ether type
    ],
)
def test_damaged_frames_are_dropped_and_counted(isipv6: bool, where: int, counter: str) -> None:
    kern = Kernel()
    so = new_socket(kern, isipv6=isipv6)
    m = _rx_frame(so, memoryview(b"hello, world"), TH_ACK)
    _corrupt(m, where)
    ether_input(so, m)
    assert kern.statistics()[counter] == 1
    assert so.so_rcv.sb_ccc == 0 and kern.stats.tcp.rcvpack == 0
    assert so.so_tcp.rcv_nxt == (PEER_ISS + 1) & 0xFFFFFFFF
    _close(kern, so)


def test_rxcsum_trusts_the_nic() -> None:
    """With IFCAP_RXCSUM the NIC verified the checksums: nothing is summed again."""
    kern = Kernel(capenable=IFCAP_RXCSUM)
    so = new_socket(kern)
    m = _rx_frame(so, memoryview(b"payload"), TH_ACK)
    _corrupt(m, ETHER_HDR_LEN + 40)  # the NIC said it was good (as if damaged after DMA)
    ether_input(so, m)
    assert kern.stats.tcp.rcvpack == 1
    _close(kern, so)


def test_out_of_order_and_duplicate_segments_are_dropped() -> None:
    kern = Kernel()
    so = new_socket(kern)
    tp = so.so_tcp
    early = _rx_frame(so, memoryview(b"x" * 10), TH_ACK)
    if_rx(so, b"abc")
    ether_input(so, early)  # seq is now behind rcv_nxt: a duplicate
    assert kern.stats.tcp.rcvduppack == 1
    tp.rcv_nxt = (tp.rcv_nxt + 100) & 0xFFFFFFFF  # the frame's seq: 100 ahead
    late = _rx_frame(so, memoryview(b"y"), TH_ACK)
    tp.rcv_nxt = (tp.rcv_nxt - 100) & 0xFFFFFFFF
    ether_input(so, late)
    assert kern.stats.tcp.rcvoopack == 1
    assert soreceive(so, 100) == b"abc"
    _close(kern, so)


def test_data_beyond_the_window_is_dropped() -> None:
    kern = Kernel()
    so = new_socket(kern)
    if_rx(so, bytes(SB_RCVBUF_DEFAULT))
    assert so.so_rcv.sbspace() == 0
    if_rx(so, b"more")
    assert kern.stats.tcp.rcvpackafterwin == 1
    assert soreceive(so, 1 << 20) == bytes(SB_RCVBUF_DEFAULT)
    _close(kern, so)


def test_fin_once_and_the_sequence_number_it_takes() -> None:
    kern = Kernel()
    so = new_socket(kern)
    if_rx(so, b"bye")
    assert if_rx(so, b"") == 1
    assert so.so_tcp.rcv_nxt == (PEER_ISS + 1 + 3 + 1) & 0xFFFFFFFF
    assert if_rx(so, b"") == 0  # the host read says EOF again: the FIN came already
    assert soreceive(so, 10) == b"bye"
    assert soreceive(so, 10) == b""
    assert kern.stats.tcp.rcvtotal == 2
    _close(kern, so)


@FAMILIES
def test_our_headers_ack_what_came_and_announce_the_window(isipv6: bool) -> None:
    """After receiving, tcp_output's headers carry rcv_nxt and sbspace(so_rcv) scaled."""
    kern = Kernel()
    so = new_socket(kern, isipv6=isipv6)
    tp = so.so_tcp
    assert tp.rcv_scale == 6  # the smallest shift that covers sb_max (2 MiB)
    if_rx(so, bytes(5000))  # left unread: the window shrinks
    pair = ConnectionPair(so)
    sosend(so, b"response")
    tcp_output(so)
    pkt = so.so_txq.ring[0]
    hdr = bytes(pkt.m.m_dat[: pkt.m.m_len]) if pkt.m.m_dat is not None else b""
    th = hdr[40:] if isipv6 else hdr[20:]
    _sport, _dport, _seq, ack, _off, _flags, win = struct.unpack_from("!HHIIBBH", th)
    assert ack == tp.rcv_nxt == (PEER_ISS + 1 + 5000) & 0xFFFFFFFF
    assert win == (SB_RCVBUF_DEFAULT - 5000) >> 6
    # The client's segments acknowledge what the host socket took of ours.
    pair.pump()
    if_rx(so, b"next")
    assert kern.stats.tcp.rcvackpack == 1 and kern.stats.tcp.rcvackbyte == len(b"response")
    assert so.so_tcp.snd_wl2 == (tp.iss + 1 + len(b"response")) & 0xFFFFFFFF
    pair.close()
    assert kern.leaks() == {}


def test_tcp_input_flags() -> None:
    kern = Kernel()
    so = new_socket(kern)
    m = _rx_frame(so, memoryview(b"last"), TH_ACK | TH_FIN)
    ether_input(so, m)  # data and FIN in one segment
    assert so.so_rcv.sb_state & SBS_CANTRCVMORE
    assert so.so_tcp.rcv_nxt == (PEER_ISS + 1 + 4 + 1) & 0xFFFFFFFF
    assert soreceive(so, 10) == b"last"
    _close(kern, so)


def test_m_getptr_finds_the_byte() -> None:
    kern = Kernel()
    so = new_socket(kern)
    if_rx(so, bytes(3 * TCP_MSS))  # three clusters of TCP_MSS bytes in so_rcv
    top = so.so_rcv.sb_mb
    assert top is not None
    ms = list(chain(top))
    for loc, (i, off) in {
        0: (0, 0),
        TCP_MSS - 1: (0, TCP_MSS - 1),
        TCP_MSS: (1, 0),
        3 * TCP_MSS - 1: (2, TCP_MSS - 1),
    }.items():
        m, o = m_getptr(top, loc)
        assert (m, o) == (ms[i], off)
    _close(kern, so)
