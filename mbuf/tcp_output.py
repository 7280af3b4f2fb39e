"""tcp_output: cut the ready part of the send buffer into packets.

Theory of operation. The connection's control block keeps `snd_nxt` as an
offset into the send buffer (the bytes before it are in the NIC queue or on
the wire) and the initial sequence number for the headers. Each call sends
from `snd_nxt` up to `sb_acc` (ready data only: unencrypted TLS records and
pages still under I/O are never sent), in bursts of up to the interface's
`if_hw_tsomax` minus the headers and `max_linkhdr`, rounded down to whole
segments while more data follows, when the interface does TSO, or one MSS
(1448) otherwise. Each burst is `tcp_m_copym` of the buffer (storage shared,
no byte copied), which also stops a TSO burst where the NIC would run out of
DMA segments (`if_hw_tsomaxsegcount`, charging each mbuf as the 2019 kernel
does), behind a fresh mapped mbuf holding a 40-byte IPv4+TCP header, handed
to `ip_output`. A burst cut to one MSS or less goes without TSO.

Models: sys/netinet/tcp_output.c (`tcp_output`, `tcp_m_copym`), as of mid
2019 (the M_NOMAP era, before `tcp_m_copym` took KTLS's `hw_tls` argument).

Deliberate differences: the wire is reliable (the host kernel's TCP does the
real retransmission), so an "ACK" is the host socket taking bytes:
`tcp_acked` drops them from the buffer. A packet that ip_output drops
(ENOBUFS) is sent again on the next call, as the kernel backs snd_nxt out on
error. tcp_output always shares the data (`tcp_m_copym`); the kernel copies a
burst of at most MHLEN - hdrlen - max_linkhdr (112) bytes into the header
mbuf instead. The TSO limits are read from the interface on every call; the
kernel copies them into the tcpcb (`t_tsomax*`) when the connection is set up.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from mbuf.ifnet import CSUM_IP, CSUM_IP_TCP, CSUM_IP_TSO, IFCAP_TSO4, IfTxQueue
from mbuf.ip_output import ip_output
from mbuf.kassert import kassert
from mbuf.mbuf import M_NOMAP, Mbuf, m_copym, m_get
from mbuf.param import PAGE_SIZE, TCP_MSS, TCPIP_HDR_LEN, howmany

if TYPE_CHECKING:
    from mbuf.socket import Socket

_HDR = struct.Struct("!BBHHHBBH4s4sHHIIBBHHH")
TH_ACK = 0x10
TH_PSH = 0x08
MAX_LINKHDR = 16  # max_linkhdr: domaininit raises it to 16, Ethernet's 14 fits


class TcpCb:
    __slots__ = ("dport", "dst", "iss", "snd_nxt", "snd_una_total", "sport", "src", "t_maxseg")

    def __init__(self, src: int, dst: int, sport: int, dport: int, iss: int) -> None:
        self.src = src
        self.dst = dst
        self.sport = sport
        self.dport = dport
        self.iss = iss
        self.snd_nxt = 0  # offset into so_snd of the next byte to send
        self.snd_una_total = 0  # bytes acknowledged (dropped) since the start
        self.t_maxseg = TCP_MSS


def _tcpip_header(tp: TcpCb, ip_id: int, length: int, flags: int) -> bytes:
    seq = (tp.iss + 1 + tp.snd_una_total + tp.snd_nxt) & 0xFFFFFFFF
    return _HDR.pack(
        0x45, 0, min(TCPIP_HDR_LEN + length, 0xFFFF), ip_id & 0xFFFF, 0x4000, 64, 6, 0,
        tp.src.to_bytes(4, "big"), tp.dst.to_bytes(4, "big"),
        tp.sport, tp.dport, seq, 0, 5 << 4, flags, 65535, 0, 0,
    )  # fmt: skip


def tcp_m_copym_len(m: Mbuf | None, off: int, length: int, seglimit: int, segsize: int) -> int:
    """How much of [off, off+length) `tcp_m_copym` copies before the burst would
    need more than `seglimit` DMA segments of `segsize` bytes (0: no limit).

    The charge is the 2019 kernel's, read from a tcp_output.c of the M_NOMAP
    era (after D20616, r349529, June 2019; `tcp_m_copym(m, off0, plen,
    seglimit, segsize, sb)`, before KTLS added the `hw_tls` argument): a
    mapped mbuf costs howmany(bytes, segsize); an unmapped one 3 more ("+ 1
    in case we are crossing page boundaries, + 2 in case the TLS hdr/trailer
    are used") at min(segsize, PAGE_SIZE) per segment, without looking at
    its pages; one segment stays for the header. An mbuf that does not fit
    whole is cut and ends the burst."""
    if not seglimit:
        return length
    while m is not None and off >= m.m_len:
        off -= m.m_len
        m = m.m_next
    copied = 0
    while length > 0 and m is not None:
        mlen = min(length, m.m_len - off)
        if m.m_flags & M_NOMAP:
            fragsize = min(segsize, PAGE_SIZE)
            frags = 3
        else:
            fragsize = segsize
            frags = 0
        if frags + 1 >= seglimit:  # "Break if we really can't fit anymore."
            break
        if frags + howmany(mlen, fragsize) >= seglimit:
            mlen = (seglimit - frags - 1) * fragsize
            length = mlen  # the loop ends after this mbuf
        frags += howmany(mlen, fragsize)
        if frags == 0:
            frags = 1
        seglimit -= frags
        kassert(seglimit > 0, "tcp_m_copym: seglimit went too low")
        copied += mlen
        length -= mlen
        off = 0
        m = m.m_next
    return copied


def tcp_output(so: Socket) -> int:
    """Send what is ready. Returns the number of packets handed to ip_output."""
    tp = so.so_tcp
    sb = so.so_snd
    kern = so.so_kern
    txq: IfTxQueue = so.so_txq
    st = kern.stats.tcp
    ifp = kern.ifnet
    tso = bool(ifp.if_capenable & IFCAP_TSO4)
    maxlen = ifp.if_hw_tsomax - TCPIP_HDR_LEN - MAX_LINKHDR if tso else tp.t_maxseg
    sent = 0
    while True:
        avail = sb.sb_acc - tp.snd_nxt
        if avail <= 0 or txq.full():
            break
        length = min(avail, maxlen)
        if length < avail:  # no fractional last segment unless the buffer empties
            length -= length % tp.t_maxseg
        start, moff, walked = sb.sbsndptr(tp.snd_nxt)
        st.sndptr_walked += walked
        if length > tp.t_maxseg:  # a TSO burst: the NIC's segment limit applies
            cut = tcp_m_copym_len(
                start, moff, length, ifp.if_hw_tsomaxsegcount, ifp.if_hw_tsomaxsegsize
            )
            kassert(cut > 0, "tcp_output: the first mbuf exceeds if_hw_tsomaxsegcount")
            if cut != length:
                st.tso_segcount_cut += 1
                length = cut
        data = m_copym(start, moff, length)
        hdr = m_get(kern, pkthdr=True)
        assert hdr.m_dat is not None
        flags = TH_ACK | (TH_PSH if length == avail else 0)
        hdr.m_dat[:TCPIP_HDR_LEN] = _tcpip_header(tp, so.so_ip_id, length, flags)
        hdr.m_len = TCPIP_HDR_LEN
        hdr.m_next = data
        hdr.m_pkthdr_len = TCPIP_HDR_LEN + length
        csum = CSUM_IP | CSUM_IP_TCP
        if length > tp.t_maxseg:
            csum |= CSUM_IP_TSO
        hdr.m_pkthdr_csum_flags = csum
        so.so_ip_id += 1
        nsegs = howmany(length, tp.t_maxseg)
        err = ip_output(kern, hdr, txq, tp.src, tp.dst, nsegs)
        if err:
            st.drops += 1
            break  # snd_nxt not advanced: resent on the next call
        tp.snd_nxt += length
        st.sndtotal += 1
        st.sndpack += 1
        st.sndbyte += length
        sent += 1
    return sent


def tcp_acked(so: Socket, nbytes: int) -> None:
    """The peer has `nbytes` more: drop them from the send buffer."""
    tp = so.so_tcp
    so.so_snd.sbdrop(nbytes)
    tp.snd_nxt -= nbytes
    tp.snd_una_total += nbytes
