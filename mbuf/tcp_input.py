"""The receive path: the client's bytes as inbound packets, up to the reader.

Theory of operation. The wire is the connection's real host socket, which
hands the server a byte stream, not frames. Each read from it becomes the
packets the peer would have sent: `if_rx` (a driver's receive interrupt)
cuts the bytes into segments of at most one MSS and, for each, has the NIC
"DMA" the whole frame into a fresh 2 KiB cluster (`m_getcl`: the receive
ring's buffers): an Ethernet header, the IPv4 or IPv6 header and the TCP
header synthesised from the connection's addresses and ports and the peer's
sequence numbers (`rcv_nxt`, the ack of what we sent, its window), with
correct checksums, then the payload: one copy from the read buffer, as the
NIC's DMA is one. Then the stack:

  ether_input   strip the Ethernet header, dispatch on the ether type;
  ip_input      check version, header length, header checksum (unless the
                NIC verified it: IFCAP_RXCSUM), total length; trim padding;
  ip6_input     the same for IPv6 (no header checksum), payload length;
  tcp_input     check the TCP checksum (pseudo-header of the family) and data
                offset; process the ACK (tcps_rcvackpack / rcvackbyte);
                in-sequence data advances `rcv_nxt`, is stripped of its
                headers (`m_adj`) and appended to `so_rcv` with
                `sbappendstream`, still in its cluster (with KTLS RX:
                `sbappend_ktls_rx` to sb_mtls, then `ktls_check_rx`
                decrypts every whole record into sb_mb); a FIN marks the
                buffer SBS_CANTRCVMORE.

The reader then takes the bytes with `soreceive` (mbuf/socket.py), which
frees the clusters. From then on tcp_output's headers carry the real ack
(`rcv_nxt`) and window (`sbspace(so_rcv)`).

Models: the receive half of a NIC driver (rxeof), sys/net/if_ethersubr.c
(`ether_input`), sys/netinet/ip_input.c (`ip_input`),
sys/netinet6/ip6_input.c (`ip6_input`), sys/netinet/tcp_input.c
(`tcp_input`, `tcp_do_segment`'s established-state fast path) and
sys/kern/uipc_sockbuf.c (`sbappendstream`), as of FreeBSD head in 2019.

Deliberate differences:
* The host kernel did the handshake and delivers the stream in order and
  once, so the model's connection starts ESTABLISHED (the peer's ISN `irs`
  is random per connection), segments never arrive out of order, and there
  is no reassembly queue: a segment that is not at `rcv_nxt` is a model bug
  made visible (counted as tcps_rcvoopack or rcvduppack, and dropped).
* The packets are as the peer would have sent them, not as it did: one MSS
  each, no TCP options, the peer's IP id 0 (DF set) and a fixed window;
  `th_ack` is what the host socket has taken of ours (the model's snd_una).
* No pcb lookup (`in_pcblookup_mbuf`): the driver hands the frame to the
  connection's own socket, as a NIC that steers a flow to a queue bound to
  it would; tcp_input checks that addresses and ports match it.
* No sbcompress: each segment keeps its own cluster in `so_rcv` (the reader
  takes them at once, so nothing accumulates), and no LRO.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

from mbuf.if_tap import ETHERTYPE_IP, ETHERTYPE_IPV6, IF_LLADDR, PEER_LLADDR, PFIL_IN
from mbuf.ifnet import (
    CSUM_DATA_VALID,
    CSUM_IP_CHECKED,
    CSUM_IP_VALID,
    CSUM_PSEUDO_HDR,
    IFCAP_RXCSUM,
    IFCAP_RXCSUM_IPV6,
)
from mbuf.kassert import kassert
from mbuf.mbuf import M_PKTHDR, Mbuf, m_adj, m_chain_iov, m_freem, m_getcl, mtod
from mbuf.param import ETHER_HDR_LEN, IP6_HDR_LEN, IP_HDR_LEN, MCLBYTES, TCP_HDR_LEN
from mbuf.sockbuf import SBS_CANTRCVMORE
from mbuf.tcpip_hdr import (
    IP_SUM_OFF,
    IPPROTO_TCP,
    TH_ACK,
    TH_FIN,
    TH_PSH,
    TH_SUM_OFF,
    in_cksum_hdr,
    tcp_cksum,
    tcpip_fillheaders,
    tcpip_hdrlen,
)

if TYPE_CHECKING:
    from mbuf.socket import Socket

PEER_WIN: Final = 65535  # the window the peer's segments announce (unscaled)

_ETHER = struct.Struct("!6s6sH")
_TCP = struct.Struct("!HHIIBBHHH")
_IP6_ADDRS = struct.Struct("!16s16s")


def _seq_lt(a: int, b: int) -> bool:
    """SEQ_LT: a before b in 32-bit sequence space."""
    return ((a - b) & 0xFFFFFFFF) > 0x7FFFFFFF


# ---------------------------------------------------------------------------
# The NIC: frames into clusters
# ---------------------------------------------------------------------------


def if_rx(so: Socket, data: bytes | bytearray | memoryview) -> int:
    """The receive interrupt for bytes the peer sent (one host read): one frame
    per MSS-sized segment, each in its own cluster, up through ether_input.
    Empty `data` is the peer's FIN (once). Returns the number of frames."""
    tp = so.so_tcp
    view = memoryview(data).cast("B")
    if not len(view):
        if so.so_rcv.sb_state & SBS_CANTRCVMORE:
            return 0  # its FIN came already
        ether_input(so, _rx_frame(so, view, TH_ACK | TH_FIN))
        return 1
    mss = tp.t_maxseg
    frames = 0
    for off in range(0, len(view), mss):
        chunk = view[off : off + mss]
        last = off + mss >= len(view)
        ether_input(so, _rx_frame(so, chunk, TH_ACK | (TH_PSH if last else 0)))
        frames += 1
    return frames


def _rx_frame(so: Socket, payload: memoryview, flags: int) -> Mbuf:
    """One received frame in one cluster: the peer's headers, then the payload
    (the DMA's one copy), both checksums as the peer computed them."""
    tp = so.so_tcp
    kern = so.so_kern
    n = len(payload)
    hlen = tcpip_hdrlen(tp.isipv6)
    flen = ETHER_HDR_LEN + hlen + n
    kassert(flen <= MCLBYTES, "if_rx: frame of %s bytes does not fit a cluster", flen)
    m = m_getcl(kern, MCLBYTES, pkthdr=True)
    assert m.m_ext is not None and m.m_ext.ext_buf is not None
    buf = m.m_ext.ext_buf
    _ETHER.pack_into(buf, 0, IF_LLADDR, PEER_LLADDR, ETHERTYPE_IPV6 if tp.isipv6 else ETHERTYPE_IP)
    ip = buf[ETHER_HDR_LEN:flen]
    ack = tp.iss + 1 + tp.snd_una_total
    tcpip_fillheaders(
        ip, tp.isipv6, tp.dst, tp.src, tp.dport, tp.sport,
        tp.rcv_nxt, ack, flags, PEER_WIN, 0, n,
    )  # fmt: skip
    ip[hlen:] = payload
    iphlen = hlen - TCP_HDR_LEN
    if not tp.isipv6:
        struct.pack_into("!H", ip, IP_SUM_OFF, in_cksum_hdr(ip))
    tcplen = TCP_HDR_LEN + n
    struct.pack_into(
        "!H", ip, iphlen + TH_SUM_OFF, tcp_cksum(tp.isipv6, tp.dst, tp.src, [ip[iphlen:]], tcplen)
    )
    m.m_len = m.m_pkthdr_len = flen
    st = kern.stats.ifnet
    st.rx_packets += 1
    st.rx_bytes += flen
    return m


# ---------------------------------------------------------------------------
# The stack
# ---------------------------------------------------------------------------


def ether_input(so: Socket, m: Mbuf) -> None:
    """ether_input: strip the Ethernet header and hand the packet to its protocol.
    The chain is consumed."""
    if m.m_len < ETHER_HDR_LEN:
        so.so_kern.stats.ifnet.rx_errors += 1
        m_freem(m)
        return
    ifp = so.so_kern.ifnet
    bif = ifp.if_bpf
    if bif is not None and bif.bif_dlist:  # BPF_MTAP: the frame as it came off the wire
        bif.tap(m, PFIL_IN)
    nmt = ifp.if_netmap
    if nmt is not None:  # a netmap copy monitor of the RX ring
        nmt.tap(m, PFIL_IN)
    etype = struct.unpack_from("!H", mtod(m), 12)[0]
    m_adj(m, ETHER_HDR_LEN)
    if etype == ETHERTYPE_IP:
        ip_input(so, m)
    elif etype == ETHERTYPE_IPV6:
        ip6_input(so, m)
    else:
        so.so_kern.stats.ifnet.rx_noproto += 1
        m_freem(m)


def ip_input(so: Socket, m: Mbuf) -> None:
    """ip_input: check an IPv4 header and deliver the packet to tcp_input."""
    kern = so.so_kern
    st = kern.stats.ip
    st.total += 1
    if m.m_len < IP_HDR_LEN:
        st.tooshort += 1
        m_freem(m)
        return
    ip = mtod(m)
    vhl = ip[0]
    hlen = (vhl & 0x0F) << 2
    if vhl >> 4 != 4:
        st.badvers += 1
        m_freem(m)
        return
    if hlen < IP_HDR_LEN or hlen > m.m_len:
        st.badhlen += 1
        m_freem(m)
        return
    if kern.ifnet.if_capenable & IFCAP_RXCSUM:  # per frame received
        m.m_pkthdr_csum_flags |= CSUM_IP_CHECKED | CSUM_IP_VALID  # the NIC checked it
    if m.m_pkthdr_csum_flags & CSUM_IP_CHECKED:
        bad = not m.m_pkthdr_csum_flags & CSUM_IP_VALID
    else:
        bad = in_cksum_hdr(ip) != 0
    if bad:
        st.badsum += 1
        m_freem(m)
        return
    ip_len = (ip[2] << 8) | ip[3]
    if ip_len < hlen:
        st.tooshort += 1
        m_freem(m)
        return
    if m.m_pkthdr_len < ip_len:
        st.toosmall += 1
        m_freem(m)
        return
    if m.m_pkthdr_len > ip_len:
        m_adj(m, ip_len - m.m_pkthdr_len)  # Ethernet padding
    if ip[9] != IPPROTO_TCP:
        m_freem(m)  # rip_input would answer; nothing else is modeled
        return
    src = int.from_bytes(ip[12:16])
    dst = int.from_bytes(ip[16:20])
    st.delivered += 1
    tcp_input(so, m, hlen, src, dst)


def ip6_input(so: Socket, m: Mbuf) -> None:
    """ip6_input: check an IPv6 header and deliver the packet to tcp_input."""
    kern = so.so_kern
    st = kern.stats.ip6
    st.total += 1
    if m.m_len < IP6_HDR_LEN:
        st.tooshort += 1
        m_freem(m)
        return
    ip6 = mtod(m)
    if ip6[0] >> 4 != 6:
        st.badvers += 1
        m_freem(m)
        return
    plen = (ip6[4] << 8) | ip6[5]
    if m.m_pkthdr_len < IP6_HDR_LEN + plen:
        st.tooshort += 1
        m_freem(m)
        return
    if m.m_pkthdr_len > IP6_HDR_LEN + plen:
        m_adj(m, IP6_HDR_LEN + plen - m.m_pkthdr_len)
    if ip6[6] != IPPROTO_TCP:
        m_freem(m)  # no extension headers are modeled
        return
    a, b = _IP6_ADDRS.unpack_from(ip6, 8)
    st.delivered += 1
    tcp_input(so, m, IP6_HDR_LEN, int.from_bytes(a), int.from_bytes(b))


def tcp_input(so: Socket, m: Mbuf, off: int, src: int, dst: int) -> None:
    """tcp_input: check the segment, process its ACK, append in-sequence data to
    so_rcv (the chain then belongs to the buffer), note a FIN. `off` is the IP
    header length; src and dst are the IP addresses. The chain is consumed."""
    kern = so.so_kern
    tp = so.so_tcp
    st = kern.stats.tcp
    st.rcvtotal += 1
    tlen = m.m_pkthdr_len - off
    if tlen < TCP_HDR_LEN or m.m_len < off + TCP_HDR_LEN:
        st.rcvshort += 1
        m_freem(m)
        return
    rxcsum = IFCAP_RXCSUM_IPV6 if tp.isipv6 else IFCAP_RXCSUM
    if kern.ifnet.if_capenable & rxcsum:
        m.m_pkthdr_csum_flags |= CSUM_DATA_VALID | CSUM_PSEUDO_HDR  # the NIC checked it
    if not m.m_pkthdr_csum_flags & CSUM_DATA_VALID and tcp_cksum(
        tp.isipv6, src, dst, m_chain_iov(m, off, tlen), tlen
    ):
        st.rcvbadsum += 1
        m_freem(m)
        return
    sport, dport, seq, ack, x2off, flags, _win, _sum, _urp = _TCP.unpack_from(mtod(m), off)
    thlen = (x2off >> 4) << 2
    if thlen < TCP_HDR_LEN or thlen > tlen or off + thlen > m.m_len:
        st.rcvbadoff += 1
        m_freem(m)
        return
    kassert(
        (src, dst, sport, dport) == (tp.dst, tp.src, tp.dport, tp.sport),
        "tcp_input: segment of another connection on this socket",
    )
    if flags & TH_ACK and _seq_lt(tp.snd_wl2, ack):
        st.rcvackpack += 1
        st.rcvackbyte += (ack - tp.snd_wl2) & 0xFFFFFFFF
        tp.snd_wl2 = ack
    tlen -= thlen
    rcv = so.so_rcv
    if (tlen or flags & TH_FIN) and seq != tp.rcv_nxt:
        if _seq_lt(seq, tp.rcv_nxt):
            st.rcvduppack += 1
        else:
            st.rcvoopack += 1
        m_freem(m)
        return
    if tlen:
        if tlen > rcv.sbspace():
            st.rcvpackafterwin += 1  # beyond the window we announced
            m_freem(m)
            return
        st.rcvpack += 1
        st.rcvbyte += tlen
        tp.rcv_nxt = (tp.rcv_nxt + tlen) & 0xFFFFFFFF
        m_adj(m, off + thlen)
        m.m_flags &= ~M_PKTHDR  # sbappendstream: m_demote, a stream has no packets
        m.m_pkthdr_len = 0
        m.m_pkthdr_csum_flags = 0
        tls = rcv.sb_tls_rx
        if tls is None:
            rcv.sbappendstream(m, notready=False)
        else:  # KTLS RX: encrypted until a whole record is there
            rcv.sbappend_ktls_rx(m)
            tls.ktls_check_rx(rcv)
    else:
        m_freem(m)
    if flags & TH_FIN:
        tp.rcv_nxt = (tp.rcv_nxt + 1) & 0xFFFFFFFF  # the FIN takes a sequence number
        rcv.sb_state |= SBS_CANTRCVMORE  # socantrcvmore
