"""tcp_output: cut the ready part of the send buffer into packets.

Theory of operation. The connection's control block keeps `snd_nxt` as an
offset into the send buffer (the bytes before it are in the NIC queue or on
the wire) and the initial sequence number for the headers. Each call sends
from `snd_nxt` up to `sb_acc` (ready data only: unencrypted TLS records and
pages still under I/O are never sent), in bursts of up to IP_MAXPACKET minus
headers, rounded down to whole segments, when the interface does TSO, or one
MSS (1448) otherwise. Each burst is `m_copym` of the buffer (storage shared,
no byte copied) behind a fresh mapped mbuf holding a 40-byte IPv4+TCP header,
handed to `ip_output`.

Models: sys/netinet/tcp_output.c (`tcp_output`).

Deliberate differences: the wire is reliable (the host kernel's TCP does the
real retransmission), so an "ACK" is the host socket taking bytes:
`tcp_acked` drops them from the buffer. A packet that ip_output drops
(ENOBUFS) is sent again on the next call, as the kernel backs snd_nxt out on
error.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from mbuf.ifnet import CSUM_IP, CSUM_IP_TCP, CSUM_IP_TSO, IFCAP_TSO4, IfTxQueue
from mbuf.ip_output import ip_output
from mbuf.mbuf import m_copym, m_get
from mbuf.param import IP_MAXPACKET, TCP_MSS, TCPIP_HDR_LEN, howmany

if TYPE_CHECKING:
    from mbuf.socket import Socket

_HDR = struct.Struct("!BBHHHBBH4s4sHHIIBBHHH")
TH_ACK = 0x10
TH_PSH = 0x08


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


def tcp_output(so: Socket) -> int:
    """Send what is ready. Returns the number of packets handed to ip_output."""
    tp = so.so_tcp
    sb = so.so_snd
    kern = so.so_kern
    txq: IfTxQueue = so.so_txq
    st = kern.stats.tcp
    tso = bool(kern.ifnet.if_capenable & IFCAP_TSO4)
    maxlen = IP_MAXPACKET - TCPIP_HDR_LEN if tso else tp.t_maxseg
    if tso:
        maxlen -= maxlen % tp.t_maxseg
    sent = 0
    while True:
        avail = sb.sb_acc - tp.snd_nxt
        if avail <= 0 or txq.full():
            break
        length = min(avail, maxlen)
        start, moff, walked = sb.sbsndptr(tp.snd_nxt)
        st.sndptr_walked += walked
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
        st.sndtotal += nsegs
        st.sndbyte += length
        st.sndpack_bursts += 1
        sent += 1
    return sent


def tcp_acked(so: Socket, nbytes: int) -> None:
    """The peer has `nbytes` more: drop them from the send buffer."""
    tp = so.so_tcp
    so.so_snd.sbdrop(nbytes)
    tp.snd_nxt -= nbytes
    tp.snd_una_total += nbytes
