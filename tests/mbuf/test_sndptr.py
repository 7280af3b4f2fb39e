"""sbsndptr walks on from sb_sndptr, as the kernel does, not from the head each time."""

from __future__ import annotations

from mbuf.kern import Kernel
from mbuf.mb_unmapped import m_uiotombuf
from mbuf.param import MJUMPAGESIZE, TCP_MSS
from mbuf.socket import Socket
from mbuf.tcp_output import TcpCb, tcp_output


def _socket(kern: Kernel) -> Socket:
    return Socket(kern, TcpCb(0x7F000001, 0x7F000001, 443, 50000, 1), 512 * 1024)


def test_walk_is_linear_in_the_chain() -> None:
    """64 page-sized clusters sent one MSS at a time: the pointer moves forward only,
    so the mbufs walked are the mbufs passed (63), not a sum over every segment."""
    kern = Kernel(8 << 20, capenable=0)  # no TSO: one MSS per packet, many lookups
    so = _socket(kern)
    top = m_uiotombuf(kern, bytes(64 * MJUMPAGESIZE))
    assert top is not None
    so.so_snd.sbappendstream(top, notready=False)
    packets = tcp_output(so)
    assert packets == -(-64 * MJUMPAGESIZE // TCP_MSS)
    assert kern.stats.tcp.sndptr_walked == 63


def test_pointer_survives_sbdrop() -> None:
    kern = Kernel(8 << 20, capenable=0)
    so = _socket(kern)
    top = m_uiotombuf(kern, bytes(range(256)) * 256)  # 64 KiB: 16 clusters
    assert top is not None
    so.so_snd.sbappendstream(top, notready=False)
    sb = so.so_snd
    m, off, _ = sb.sbsndptr(10 * MJUMPAGESIZE + 5)
    assert off == 5
    sb.sbdrop(3 * MJUMPAGESIZE + 100)  # frees three clusters and trims the fourth
    m2, off2, walked = sb.sbsndptr(7 * MJUMPAGESIZE - 100 + 5)
    assert (m2, off2, walked) == (m, 5, 0)  # same byte, found from the cache
    sb.sbdrop(sb.sb_acc)
    assert sb.sb_sndptr is None and sb.sb_mb is None
    so.so_txq.drain()
    assert kern.leaks() == {}
