"""ip_output: the conversion decision for unmapped chains.

Theory of operation. In order:
1. the TCP checksum must be computed in software (the interface lacks
   IFCAP_TXCSUM): convert the chain with mb_unmapped_to_ext, then
   in_delayed_cksum over the now-mapped data;
2. else, the interface lacks IFCAP_NOMAP: convert anyway;
3. a conversion that cannot get its sf_bufs drops the packet with ENOBUFS
   (`ip.odropped`); TCP sends the data again later;
4. the interface does not compute IP header checksums (no CSUM_IP in
   if_hwassist, i.e. no IFCAP_TXCSUM): `in_cksum_hdr` in software
   (`ip.sw_hdr_csum`);
5. hand the chain to the interface.

`in_delayed_cksum`, like the 2019 kernel's (in_cksum_skip over mapped data),
cannot read an unmapped mbuf: it refuses one (an assertion), which is why
ip_output converts first.

Models: sys/netinet/ip_output.c (`ip_output`, `in_delayed_cksum`).
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING, Final

from mbuf.ifnet import CSUM_DELAY_DATA, CSUM_IP, CSUM_TSO, IFCAP_NOMAP, IfTxQueue
from mbuf.in_cksum import in_cksum, in_cksum_hdr, in_pseudo
from mbuf.kassert import kassert
from mbuf.mb_unmapped import mb_unmapped_to_ext
from mbuf.mbuf import M_NOMAP, Mbuf, m_chain_iov, mtod

if TYPE_CHECKING:
    from mbuf.kern import Kernel

IPPROTO_TCP: Final = 6
_TH_SUM_OFF = 20 + 16  # checksum field of the TCP header after the 20-byte IP header
_IP_SUM_OFF = 10  # ip_sum


def in_delayed_cksum(m: Mbuf, src: int, dst: int) -> int:
    """Compute the TCP checksum of a mapped packet and store it; returns bytes summed.
    The chain must be mapped: the caller converts it first (mb_unmapped_to_ext)."""
    n: Mbuf | None = m
    while n is not None:
        kassert(not n.m_flags & M_NOMAP, "in_delayed_cksum: unmapped %r, convert first", n)
        n = n.m_next
    total = m.m_pkthdr_len
    tcplen = total - 20
    hdr = mtod(m)
    struct.pack_into("!H", hdr, _TH_SUM_OFF, 0)
    iov = m_chain_iov(m, 20, tcplen)
    csum = in_cksum(iov, in_pseudo(src, dst, IPPROTO_TCP, tcplen))
    struct.pack_into("!H", hdr, _TH_SUM_OFF, csum)
    return tcplen


def ip_unmapped_to_ext(kern: Kernel, m: Mbuf) -> Mbuf | None:
    """The conversion ip_output and ip6_output both make: mb_unmapped_to_ext,
    counted; None if it could not get its sf_bufs (the chain is freed)."""
    st = kern.stats.ip
    before = st.unmapped_mbufs_converted
    conv = mb_unmapped_to_ext(m)
    if conv is None:
        # The failed conversion already freed the sf_bufs it had mapped, and that
        # free spent the pool's wakeup; TCP will send again once mappings come
        # back, so ask to be woken by the next free.
        kern.sfbufs.wanted = True
        return None
    if st.unmapped_mbufs_converted != before:
        st.unmapped_converted += 1
    return conv


def ip_output(kern: Kernel, m: Mbuf, txq: IfTxQueue, src: int, dst: int, nsegs: int) -> int:
    """Send one packet (a TSO burst or a single segment). Returns 0 or an errno;
    the chain is consumed either way."""
    ifp = kern.ifnet
    st = kern.stats.ip
    sw_csum = m.m_pkthdr_csum_flags & ~ifp.if_hwassist
    # if_capenable and if_hwassist are read here per packet: `ifconfig nm0 -nomap`
    # (or -txcsum) at run time applies from the next packet on; packets already
    # queued to the NIC were loaded for DMA as they were.
    if sw_csum & CSUM_DELAY_DATA or not ifp.if_capenable & IFCAP_NOMAP:
        conv = ip_unmapped_to_ext(kern, m)
        if conv is None:
            st.odropped += 1
            return errno.ENOBUFS
        m = conv
        if sw_csum & CSUM_DELAY_DATA:
            st.sw_csum_bytes += in_delayed_cksum(m, src, dst)
            st.sw_csum_packets += 1
            m.m_pkthdr_csum_flags &= ~CSUM_DELAY_DATA
    kassert(
        not m.m_pkthdr_csum_flags & CSUM_TSO or ifp.if_hwassist & CSUM_TSO,
        "ip_output: TSO burst on an interface without TSO",
    )
    if m.m_pkthdr_csum_flags & CSUM_IP & ~ifp.if_hwassist:
        ip = mtod(m)
        struct.pack_into("!H", ip, _IP_SUM_OFF, 0)
        struct.pack_into("!H", ip, _IP_SUM_OFF, in_cksum_hdr(ip))
        m.m_pkthdr_csum_flags &= ~CSUM_IP
        st.sw_hdr_csum += 1
    st.output_packets += 1
    st.output_bytes += m.m_pkthdr_len
    txq.if_transmit(m, nsegs)
    return 0
