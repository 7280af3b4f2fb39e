"""tcp_output -> ip_output -> NIC queue (mbuf/tcp_output.py, ip_output.py, ifnet.py;
reference section 7 and checklist item 8)."""

from __future__ import annotations

import errno
import random
import struct
from collections.abc import Callable

import pytest

from mbuf.ifnet import (
    CSUM_IP_TSO,
    CSUM_TSO,
    IF_HW_TSOMAX_DEFAULT,
    IFCAP_NOMAP,
    IFCAP_TSO4,
    IFCAP_TXCSUM,
    IFQ_MAXLEN,
    TxPacket,
)
from mbuf.ip_output import ip_output
from mbuf.kern import Kernel
from mbuf.mb_unmapped import m_uiotombuf
from mbuf.mbuf import M_NOMAP, M_PKTHDR, m_copym, m_freem, m_get
from mbuf.param import IP_MAXPACKET, MLEN, PAGE_SIZE, TCP_MSS, TCPIP_HDR_LEN, howmany
from mbuf.sendfile import SendfileJob, SendfileStatus, sendfile_step
from mbuf.socket import Socket, soclose, sosend
from mbuf.tcp_output import tcp_acked, tcp_output
from mbuf.vm_object import PagerRequest
from tests.mbuf.builders import (
    SMALL_MEM,
    DiskFile,
    chain,
)
from tests.support.pair import (
    DST_IP,
    SRC_IP,
    new_socket,
    run_io,
)
from tests.support.wire import drain, wire_take

MakeFile = Callable[[bytes], DiskFile]
ALL = IFCAP_NOMAP | IFCAP_TXCSUM | IFCAP_TSO4
# if_hw_tsomax less the headers and max_linkhdr (16), in whole segments: 65160
TSO_LEN = IF_HW_TSOMAX_DEFAULT - TCPIP_HDR_LEN - 16  # 65462: a burst that empties the buffer
TSO_MAX = TSO_LEN // TCP_MSS * TCP_MSS
# tcp_m_copym under the default 35 segments of 2048 bytes: an unmapped mbuf is
# charged 3 + howmany(bytes, 2048) and one segment stays for the header.
NOMAP_BURST = (35 - 3 - 1) * 2048  # 63488


def burst_lens(size: int) -> list[int]:
    """tcp_output's cut by length: at most TSO_LEN, whole segments unless it empties the buffer."""
    out = []
    while size:
        n = min(size, TSO_LEN)
        if n < size:
            n -= n % TCP_MSS
        out.append(n)
        size -= n
    return out


def rfc1071(data: bytes) -> int:
    """Independent, byte-at-a-time Internet checksum: the folded ones'-complement sum."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def fill_sendfile(kern: Kernel, so: Socket, tf: DiskFile, off: int = 0) -> bytes:
    """Queue the file (from off) into the send buffer and complete its page-ins."""
    job = SendfileJob(so, tf.obj(kern), tf.fd, off, len(tf.data) - off)
    io: list[PagerRequest] = []
    assert sendfile_step(job, io) is SendfileStatus.DONE
    run_io(kern, io)
    assert so.so_snd.sb_acc == len(tf.data) - off
    return tf.data[off:]


def ring(so: Socket) -> list[TxPacket]:
    return list(so.so_txq.ring)


def payload(pkt: TxPacket) -> bytes:
    return b"".join(bytes(s) for s in pkt.segs)


# ---------------------------------------------------------------------------
# Burst sizes and payload
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, TCP_MSS, TCP_MSS + 1, TSO_MAX, TSO_MAX + 1, 300_000])
@pytest.mark.parametrize("off", [0, 1])
def test_tso_bursts(make_file: MakeFile, size: int, off: int) -> None:
    """Bursts cut by length alone (if_hw_tsomax): the segment limit lifted, as a NIC
    with 64 segments of 64 KiB has it (tests/mbuf/test_tso_limits.py has the rest)."""
    kern = Kernel(SMALL_MEM)
    kern.ifnet.set_tso_limits(IF_HW_TSOMAX_DEFAULT, 64, IP_MAXPACKET)
    tf = make_file(random.Random(size).randbytes(size + off))
    so = new_socket(kern)
    data = fill_sendfile(kern, so, tf, off)
    sent = tcp_output(so)
    pkts = ring(so)
    lens = [p.payload for p in pkts]
    assert sent == len(pkts) and lens == burst_lens(size)
    assert all(n % TCP_MSS == 0 for n in lens[:-1])
    for p in pkts:
        assert bool(p.m.m_pkthdr_csum_flags & CSUM_IP_TSO) == (p.payload > TCP_MSS)
        assert p.m.m_pkthdr_len == TCPIP_HDR_LEN + p.payload
    assert kern.stats.ifnet.tx_segments == sum(howmany(n, TCP_MSS) for n in lens)
    assert kern.stats.ifnet.tx_bytes == size + TCPIP_HDR_LEN * kern.stats.ifnet.tx_segments
    assert so.so_tcp.snd_nxt == size
    assert wire_take(so) == data
    assert so.so_snd.sb_ccc == 0 and so.so_tcp.snd_nxt == 0
    soclose(so)
    assert kern.leaks() == {}


@pytest.mark.parametrize("size", [1, TCP_MSS - 1, TCP_MSS, TCP_MSS + 1, 100_000])
def test_without_tso_segments_are_one_mss(make_file: MakeFile, size: int) -> None:
    kern = Kernel(SMALL_MEM, capenable=IFCAP_NOMAP | IFCAP_TXCSUM)
    tf = make_file(random.Random(size).randbytes(size))
    so = new_socket(kern)
    data = fill_sendfile(kern, so, tf)
    tcp_output(so)
    lens = [p.payload for p in ring(so)]
    assert lens == [min(TCP_MSS, size - i) for i in range(0, size, TCP_MSS)]
    assert not any(p.m.m_pkthdr_csum_flags & CSUM_IP_TSO for p in ring(so))
    assert kern.stats.ifnet.tx_segments == len(lens)
    assert wire_take(so) == data
    soclose(so)
    assert kern.leaks() == {}


def test_headers_carry_sequence_numbers_and_lengths(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM, capenable=IFCAP_NOMAP | IFCAP_TXCSUM)
    tf = make_file(random.Random(1).randbytes(3 * TCP_MSS + 5))
    so = new_socket(kern)
    fill_sendfile(kern, so, tf)
    iss = so.so_tcp.iss
    tcp_output(so)
    pos = 0
    for i, p in enumerate(ring(so)):
        hdr = p.m
        assert hdr.m_flags & M_PKTHDR and hdr.m_len == TCPIP_HDR_LEN
        assert hdr.m_dat is not None
        h = bytes(hdr.m_dat[:TCPIP_HDR_LEN])
        vhl, _, tot, ip_id, _, ttl, proto = struct.unpack_from("!BBHHHBB", h)
        assert (vhl, tot, proto, ttl) == (0x45, TCPIP_HDR_LEN + p.payload, 6, 64)
        assert ip_id == 1 + i
        assert struct.unpack_from("!4s4s", h, 12) == (SRC_IP.to_bytes(4), DST_IP.to_bytes(4))
        sport, dport, seq = struct.unpack_from("!HHI", h, 20)
        assert (sport, dport) == (443, 50000)
        assert seq == (iss + 1 + pos) & 0xFFFFFFFF
        pos += p.payload
    wire_take(so)
    # Sequence numbers keep counting after the ACKs.
    tf2 = make_file(b"z" * 10)
    fill_sendfile(kern, so, tf2)
    tcp_output(so)
    (p,) = ring(so)
    assert p.m.m_dat is not None
    assert struct.unpack_from("!I", p.m.m_dat, 24)[0] == (iss + 1 + pos) & 0xFFFFFFFF
    wire_take(so)
    soclose(so)
    assert kern.leaks() == {}


def test_partial_completion_keeps_the_rest_queued(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM, capenable=IFCAP_NOMAP | IFCAP_TXCSUM)
    size = 5 * TCP_MSS
    tf = make_file(random.Random(2).randbytes(size))
    so = new_socket(kern)
    data = fill_sendfile(kern, so, tf)
    tcp_output(so)
    txq = so.so_txq
    got = bytearray()
    for take in (1, TCP_MSS - 1, TCP_MSS + 7, 3, size - 2 * TCP_MSS - 10):
        iov = txq.pending_iov()
        assert b"".join(bytes(v) for v in iov) == data[len(got) :]
        chunk = b"".join(bytes(v) for v in iov)[:take]
        assert txq.complete(take) == take
        tcp_acked(so, take)
        got += chunk
        # A packet is freed only once all of its payload is on the wire.
        assert len(txq.ring) == 5 - len(got) // TCP_MSS
    assert bytes(got) == data and txq.empty()
    soclose(so)
    assert kern.leaks() == {}


def test_mapped_data_from_sosend(kern: Kernel) -> None:
    so = new_socket(kern)
    data = random.Random(3).randbytes(200_000)
    assert sosend(so, data) == len(data)
    assert not any(m.m_flags & M_NOMAP for m in chain(so.so_snd.sb_mb))
    assert drain(so) == data
    assert kern.stats.ip.unmapped_converted == 0
    soclose(so)
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# Unmapped data and the NOMAP capability
# ---------------------------------------------------------------------------


def test_nomap_interface_gathers_pages_without_conversion(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM)
    tf = make_file(random.Random(4).randbytes(200_000))
    so = new_socket(kern)
    fill_sendfile(kern, so, tf, 1)
    tcp_output(so)
    st = kern.stats
    assert st.ifnet.tx_unmapped_mbufs > 0
    assert all(any(m.m_flags & M_NOMAP for m in chain(p.m)) for p in ring(so))
    assert st.ip.unmapped_converted == 0 and st.ip.unmapped_mbufs_converted == 0
    assert st.sfbuf.total == 0
    assert wire_take(so) == tf.data[1:]
    soclose(so)
    assert kern.leaks() == {}


@pytest.mark.parametrize("caps", [IFCAP_TXCSUM | IFCAP_TSO4, IFCAP_TXCSUM, 0])
def test_interface_without_nomap_converts_every_packet(make_file: MakeFile, caps: int) -> None:
    kern = Kernel(SMALL_MEM, capenable=caps)
    tf = make_file(random.Random(5).randbytes(100_000 + 1))
    so = new_socket(kern)
    data = fill_sendfile(kern, so, tf, 1)
    tcp_output(so)
    pkts = ring(so)
    st = kern.stats
    assert st.ip.unmapped_converted == len(pkts)
    assert st.ifnet.tx_unmapped_mbufs == 0
    assert not any(m.m_flags & M_NOMAP for p in pkts for m in chain(p.m))
    assert st.sfbuf.in_use == st.ip.unmapped_pages_mapped > 0
    # The socket buffer's own mbufs are untouched: still unmapped.
    assert all(m.m_flags & M_NOMAP for m in chain(so.so_snd.sb_mb))
    assert wire_take(so) == data
    assert st.sfbuf.in_use == 0
    soclose(so)
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# Software checksum
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("off", [0, 1, PAGE_SIZE - 1])
@pytest.mark.parametrize("size", [1, 2, 3, TCP_MSS, 20_000])
def test_software_checksum_verifies(make_file: MakeFile, off: int, size: int) -> None:
    kern = Kernel(SMALL_MEM, capenable=IFCAP_NOMAP)  # no TXCSUM, hence no TSO
    tf = make_file(random.Random(size + off).randbytes(size + off))
    so = new_socket(kern)
    fill_sendfile(kern, so, tf, off)
    tcp_output(so)
    pkts = ring(so)
    pos = off
    for p in pkts:
        assert p.m.m_dat is not None
        hdr = bytes(p.m.m_dat[:TCPIP_HDR_LEN])
        tcp_hdr = hdr[20:]
        body = payload(p)
        assert body == tf.data[pos : pos + p.payload]
        pos += p.payload
        tcplen = len(tcp_hdr) + len(body)
        pseudo = SRC_IP.to_bytes(4) + DST_IP.to_bytes(4) + bytes([0, 6]) + tcplen.to_bytes(2)
        assert rfc1071(pseudo + tcp_hdr + body) == 0xFFFF
        # And it is the complement of the sum with the field zeroed.
        zeroed = tcp_hdr[:16] + b"\0\0" + tcp_hdr[18:]
        want = ~rfc1071(pseudo + zeroed + body) & 0xFFFF
        assert struct.unpack_from("!H", tcp_hdr, 16)[0] == want
    st = kern.stats.ip
    assert st.sw_csum_packets == len(pkts)
    assert st.sw_csum_bytes == sum(TCPIP_HDR_LEN - 20 + p.payload for p in pkts)
    # Checksumming needs mapped data; a tail of at most MLEN bytes was already
    # copied inline when it became ready (sbready_compress), so nothing to convert.
    assert st.unmapped_converted == (0 if size <= MLEN else len(pkts))
    wire_take(so)
    soclose(so)
    assert kern.leaks() == {}


def test_hardware_checksum_leaves_the_pseudo_header_sum(make_file: MakeFile) -> None:
    """Offloaded: the field holds the pseudo-header sum for the NIC to complete, over
    the segment's TCP length, or without it for a TSO burst (iflib_parse_header)."""
    kern = Kernel(SMALL_MEM)
    tf = make_file(b"abc" * 1000)
    so = new_socket(kern)
    fill_sendfile(kern, so, tf)
    tcp_output(so)
    for p in ring(so):
        assert p.m.m_dat is not None
        hdr = bytes(p.m.m_dat[:TCPIP_HDR_LEN])
        tcplen = 0 if p.m.m_pkthdr_csum_flags & CSUM_TSO else TCPIP_HDR_LEN - 20 + p.payload
        assert hdr[36:38] == struct.pack("!H", rfc1071(hdr[12:20] + struct.pack("!HH", 6, tcplen)))
    assert kern.stats.ip.sw_csum_packets == 0
    wire_take(so)
    soclose(so)
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# ENOBUFS when sf_bufs run out
# ---------------------------------------------------------------------------


def test_enobufs_on_conversion_failure_and_later_resend(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM, capenable=IFCAP_TXCSUM | IFCAP_TSO4, nsfbufs=20)
    size = 200_000
    tf = make_file(random.Random(6).randbytes(size))
    so = new_socket(kern)
    data = fill_sendfile(kern, so, tf)
    tp = so.so_tcp
    assert tcp_output(so) == 1  # the second burst cannot be mapped
    st = kern.stats
    assert tp.snd_nxt == NOMAP_BURST
    assert st.ip.odropped == 1 and st.tcp.drops == 1
    assert st.sfbuf.denied == 1
    assert st.sfbuf.in_use == 16  # the first burst's pages; the failed one gave its back
    assert len(so.so_txq.ring) == 1
    # Nothing more goes out while the first burst holds the sf_bufs.
    assert tcp_output(so) == 0 and tp.snd_nxt == NOMAP_BURST and st.ip.odropped == 2
    out = bytearray(wire_take(so))
    assert st.sfbuf.in_use == 0
    out += drain(so)
    assert bytes(out) == data
    assert st.sfbuf.peak <= 20
    soclose(so)
    assert kern.leaks() == {}


def test_ip_output_enobufs_consumes_the_chain() -> None:
    kern = Kernel(SMALL_MEM, capenable=IFCAP_TXCSUM, nsfbufs=1)
    data = m_uiotombuf(kern, bytes(3 * PAGE_SIZE), nomap=True)
    assert data is not None
    hdr = m_get(kern, pkthdr=True)
    hdr.m_len = TCPIP_HDR_LEN
    hdr.m_next = m_copym(data, 0, 3 * PAGE_SIZE)
    hdr.m_pkthdr_len = TCPIP_HDR_LEN + 3 * PAGE_SIZE
    txq = kern.new_txq()
    assert ip_output(kern, hdr, txq, SRC_IP, DST_IP, 9) == errno.ENOBUFS
    assert txq.empty()
    assert kern.stats.ip.odropped == 1 and kern.stats.ip.output_packets == 0
    assert data.m_ext is not None and data.m_ext.ext_count == 1
    m_freem(data)
    assert kern.leaks() == {}


def test_queue_limit_stops_tcp_output() -> None:
    kern = Kernel(SMALL_MEM, capenable=IFCAP_NOMAP | IFCAP_TXCSUM)
    so = new_socket(kern)
    data = bytes(IFQ_MAXLEN * TCP_MSS + 10)
    assert sosend(so, data) == len(data)
    assert tcp_output(so) == IFQ_MAXLEN
    assert so.so_txq.full() and tcp_output(so) == 0
    assert drain(so) == data
    soclose(so)
    assert kern.leaks() == {}


def test_not_ready_data_is_never_sent(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM)
    tf = make_file(random.Random(8).randbytes(50_000))
    so = new_socket(kern)
    job = SendfileJob(so, tf.obj(kern), tf.fd, 0, len(tf.data), b"HEAD")
    io: list[PagerRequest] = []
    sendfile_step(job, io)
    tcp_output(so)
    assert wire_take(so) == b"HEAD"
    assert tcp_output(so) == 0
    run_io(kern, io)
    assert drain(so) == tf.data
    soclose(so)
    assert kern.leaks() == {}
