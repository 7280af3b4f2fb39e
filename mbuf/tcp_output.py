"""tcp_output: cut the ready part of the send buffer into packets.

Theory of operation. The connection's control block keeps `snd_nxt` as an
offset into the send buffer (the bytes before it are in the NIC queue or on
the wire) and the initial sequence number for the headers. Each call sends
from `snd_nxt` up to `sb_acc` (ready data only: unencrypted TLS records and
pages still under I/O are never sent), in bursts of up to the interface's
`if_hw_tsomax` minus the headers and `max_linkhdr`, rounded down to whole
segments while more data follows, when the interface does TSO for the
connection's family (`IFCAP_TSO4`, `IFCAP_TSO6`), or one MSS (1448, or 1428
over IPv6) otherwise. Each burst is `tcp_m_copym` of the buffer (storage
shared, no byte copied), which also stops a TSO burst where the NIC would run
out of DMA segments (`if_hw_tsomaxsegcount`, charging each mbuf as the 2019
kernel does), behind a fresh mapped mbuf holding the connection's headers
(`tcpip_fillheaders`: 40 bytes of IPv4+TCP, or 60 of IPv6+TCP), handed to
`ip_output` or `ip6_output` by the connection's family. A burst cut to one
MSS or less goes without TSO. The headers carry the real acknowledgment
(`rcv_nxt`, advanced by tcp_input) and window (`sbspace(so_rcv)` scaled by
`rcv_scale`). The TCP checksum field gets the pseudo-header sum over the
segment's length, as tcp_output.c stores `in_pseudo(...)` / `in6_cksum_pseudo`
for the NIC (CSUM_TCP) or in_delayed_cksum to complete.

Models: sys/netinet/tcp_output.c (`tcp_output`, `tcp_m_copym`), as of mid
2019 (the M_NOMAP era, before `tcp_m_copym` took KTLS's `hw_tls` argument).

Deliberate differences: the host socket under the NIC model is reliable (the
host kernel's TCP does the real retransmission), so an "ACK" is the host
socket taking bytes: `tcp_acked` drops them from the buffer. Only the model's
own lossy wire (--loss) loses packets; then tcp_timer_rexmt (mbuf/tcp_timer.py)
goes back to snd_una and the loop above resends one segment per packet up to
snd_max: go-back-N on a modelled timeout, with no SACK, RTT or backoff. A
packet that ip_output drops (ENOBUFS) is sent again on the next call, as the
kernel backs snd_nxt out on error. tcp_output always shares the data
(`tcp_m_copym`); the kernel copies a burst of at most MHLEN - hdrlen -
max_linkhdr (112) bytes into the header mbuf instead. The TSO limits are
read from the interface on every call; the kernel copies them into the tcpcb
(`t_tsomax*`) when the connection is set up.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

from mbuf.ifnet import (
    CSUM_IP,
    CSUM_IP6_TCP,
    CSUM_IP6_TSO,
    CSUM_IP_TCP,
    CSUM_IP_TSO,
    IFCAP_TSO4,
    IFCAP_TSO6,
    IfTxQueue,
)
from mbuf.ip6_output import ip6_output
from mbuf.ip_output import ip_output
from mbuf.kassert import kassert
from mbuf.mbuf import M_NOMAP, Mbuf, m_copym, m_get
from mbuf.param import (
    PAGE_SIZE,
    SB_MAX,
    TCP6_MSS,
    TCP_HDR_LEN,
    TCP_MAX_WINSHIFT,
    TCP_MAXWIN,
    TCP_MSS,
    howmany,
)
from mbuf.tcpip_hdr import (
    IPV6_FLOWLABEL_MASK,
    TH_ACK,
    TH_PSH,
    TH_SUM_OFF,
    tcp_pseudo,
    tcpip_fillheaders,
    tcpip_hdrlen,
)

if TYPE_CHECKING:
    from mbuf.socket import Socket

MAX_LINKHDR: Final = 16  # max_linkhdr: domaininit raises it to 16, Ethernet's 14 fits


class TcpCb:
    __slots__ = (
        "dport",
        "dst",
        "inp_flow",
        "irs",
        "isipv6",
        "iss",
        "rcv_nxt",
        "rcv_scale",
        "snd_max",
        "snd_nxt",
        "snd_una_total",
        "snd_wl2",
        "sport",
        "src",
        "t_maxseg",
    )

    def __init__(
        self,
        src: int,
        dst: int,
        sport: int,
        dport: int,
        iss: int,
        *,
        irs: int = 0,
        isipv6: bool = False,
    ) -> None:
        self.src = src  # our address: 32 bits (IPv4) or 128 (IPv6, inp_vflag INP_IPV6)
        self.dst = dst
        self.sport = sport
        self.dport = dport
        self.isipv6 = isipv6
        self.iss = iss
        self.snd_nxt = 0  # offset into so_snd of the next byte to send
        self.snd_max = 0  # offset into so_snd past the highest byte ever sent
        self.snd_una_total = 0  # bytes acknowledged (dropped) since the start
        self.snd_wl2 = (iss + 1) & 0xFFFFFFFF  # the highest ack the peer's segments carried
        # The peer's initial sequence number; its SYN took one, so the first data
        # byte is irs + 1 (the host kernel did the handshake: the model starts
        # ESTABLISHED).
        self.irs = irs
        self.rcv_nxt = (irs + 1) & 0xFFFFFFFF
        # Our window scale (tcp_syncache: the smallest shift that lets the window
        # cover sb_max), so headers can announce sbspace(so_rcv).
        scale = 0
        while scale < TCP_MAX_WINSHIFT and TCP_MAXWIN << scale < SB_MAX:
            scale += 1
        self.rcv_scale = scale
        self.t_maxseg = TCP6_MSS if isipv6 else TCP_MSS
        # The IPv6 flow label: syncache_add with net.inet6.ip6.auto_flowlabel and
        # net.inet.tcp.syncookies (both on by default) takes it from the ISS
        # (htonl(sc_iss) & IPV6_FLOWLABEL_MASK), and syncache_socket gives it to
        # the connection's inp_flow, which tcpip_fillheaders writes into ip6_flow.
        self.inp_flow = iss & IPV6_FLOWLABEL_MASK if isipv6 else 0


def _tcpip_header(so: Socket, buf: bytearray, length: int, flags: int) -> int:
    """tcpip_fillheaders for a segment of ours: the sequence number of the byte at
    snd_nxt, the ack of everything received (rcv_nxt), the receive window."""
    tp = so.so_tcp
    seq = tp.iss + 1 + tp.snd_una_total + tp.snd_nxt
    win = so.so_rcv.sbspace() >> tp.rcv_scale
    return tcpip_fillheaders(
        buf, tp.isipv6, tp.src, tp.dst, tp.sport, tp.dport,
        seq, tp.rcv_nxt, flags, win, so.so_ip_id, length, tp.inp_flow,
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
    isipv6 = tp.isipv6
    hdrlen = tcpip_hdrlen(isipv6)
    # Per burst: `ifconfig nm0 -tso` applies from the next one (ip_output sees the
    # same if_hwassist within this call).
    tso = bool(ifp.if_capenable & (IFCAP_TSO6 if isipv6 else IFCAP_TSO4))
    maxlen = ifp.if_hw_tsomax - hdrlen - MAX_LINKHDR if tso else tp.t_maxseg
    sent = 0
    while True:
        avail = sb.sb_acc - tp.snd_nxt
        if avail <= 0 or txq.full():
            break
        if tp.snd_nxt < tp.snd_max:
            # Sending again after a loss: one segment at a time up to snd_max, as
            # after a retransmit timeout (the congestion window is one segment).
            length = min(avail, tp.t_maxseg)
        else:
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
        hdr.m_len = _tcpip_header(so, hdr.m_dat, length, flags)
        # th_sum = the pseudo-header sum (in_pseudo / in6_cksum_pseudo over the
        # segment's TCP length), which the NIC or in_delayed_cksum completes.
        th_sum = tcp_pseudo(tp.isipv6, tp.src, tp.dst, TCP_HDR_LEN + length)
        struct.pack_into("!H", hdr.m_dat, hdr.m_len - TCP_HDR_LEN + TH_SUM_OFF, th_sum)
        hdr.m_next = data
        hdr.m_pkthdr_len = hdrlen + length
        if isipv6:
            csum = CSUM_IP6_TCP | (CSUM_IP6_TSO if length > tp.t_maxseg else 0)
        else:
            csum = CSUM_IP | CSUM_IP_TCP | (CSUM_IP_TSO if length > tp.t_maxseg else 0)
        hdr.m_pkthdr_csum_flags = csum
        so.so_ip_id += 1
        nsegs = howmany(length, tp.t_maxseg)
        if isipv6:
            err = ip6_output(kern, hdr, txq, tp.src, tp.dst, nsegs)
        else:
            err = ip_output(kern, hdr, txq, tp.src, tp.dst, nsegs)
        if err:
            st.drops += 1
            break  # snd_nxt not advanced: resent on the next call
        if tp.snd_nxt < tp.snd_max:  # sending again what a lossy wire lost
            st.sndrexmitpack += 1
            st.sndrexmitbyte += min(length, tp.snd_max - tp.snd_nxt)
        tp.snd_nxt += length
        if tp.snd_nxt > tp.snd_max:
            tp.snd_max = tp.snd_nxt
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
    tp.snd_max -= nbytes
    tp.snd_una_total += nbytes
