"""ip6_output: the IPv6 twin of ip_output, with the same conversion rules.

Theory of operation. tcp_output hands an IPv6 connection's packets here: a
mapped mbuf holding the 60-byte IPv6+TCP header, then the payload chain. In
the order the 2019 ip6_output.c has them:
1. the TCP checksum must be computed in software (the interface lacks
   IFCAP_TXCSUM_IPV6, so CSUM_IP6_TCP is not in if_hwassist): convert the
   chain with mb_unmapped_to_ext, then `in6_delayed_cksum` over the mapped
   data, starting from the IPv6 pseudo-header;
2. else, the interface lacks IFCAP_NOMAP: convert anyway;
3. a conversion that cannot get its sf_bufs drops the packet with ENOBUFS
   (`ip6.odropped`); TCP sends the data again later;
4. hand the chain to the interface (a TSO burst needs IFCAP_TSO6).

IPv6 has no header checksum, so there is nothing like in_cksum_hdr here.

Models: sys/netinet6/ip6_output.c (`ip6_output`, `in6_delayed_cksum` and
the `mb_unmapped_to_ext` call the unmapped-mbuf change added next to
ip_output's).

Deliberate differences: no extension headers, no fragmentation (TCP never
sends more than the path MTU allows per segment), no scope or route lookup:
the packet leaves by the one modeled interface.
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING

from mbuf.ifnet import CSUM_DELAY_DATA_IPV6, CSUM_IP6_TSO, IFCAP_NOMAP, IfTxQueue
from mbuf.ip_output import ip_unmapped_to_ext
from mbuf.kassert import kassert
from mbuf.mbuf import Mbuf, m_chain_iov, mtod
from mbuf.param import IP6_HDR_LEN
from mbuf.tcpip_hdr import TH_SUM_OFF, tcp_cksum

if TYPE_CHECKING:
    from mbuf.kern import Kernel


def in6_delayed_cksum(m: Mbuf, src: int, dst: int) -> int:
    """Compute the TCP checksum of a mapped IPv6 packet and store it; returns bytes summed."""
    tcplen = m.m_pkthdr_len - IP6_HDR_LEN
    hdr = mtod(m)
    struct.pack_into("!H", hdr, IP6_HDR_LEN + TH_SUM_OFF, 0)
    csum = tcp_cksum(True, src, dst, m_chain_iov(m, IP6_HDR_LEN, tcplen), tcplen)
    struct.pack_into("!H", hdr, IP6_HDR_LEN + TH_SUM_OFF, csum)
    return tcplen


def ip6_output(kern: Kernel, m: Mbuf, txq: IfTxQueue, src: int, dst: int, nsegs: int) -> int:
    """Send one IPv6 packet (a TSO burst or a single segment). Returns 0 or an
    errno; the chain is consumed either way."""
    ifp = kern.ifnet
    st = kern.stats.ip6
    sw_csum = m.m_pkthdr_csum_flags & ~ifp.if_hwassist & CSUM_DELAY_DATA_IPV6
    if sw_csum or not ifp.if_capenable & IFCAP_NOMAP:  # per packet, as ip_output
        conv = ip_unmapped_to_ext(kern, m)
        if conv is None:
            st.odropped += 1
            return errno.ENOBUFS
        m = conv
        if sw_csum:
            ipst = kern.stats.ip  # the checksum counters are shared by both families
            ipst.sw_csum_bytes += in6_delayed_cksum(m, src, dst)
            ipst.sw_csum_packets += 1
            m.m_pkthdr_csum_flags &= ~CSUM_DELAY_DATA_IPV6
    kassert(
        not m.m_pkthdr_csum_flags & CSUM_IP6_TSO or ifp.if_hwassist & CSUM_IP6_TSO,
        "ip6_output: TSO burst on an interface without TSO6",
    )
    st.localout += 1
    st.output_bytes += m.m_pkthdr_len
    txq.if_transmit(m, nsegs)
    return 0
