"""tcp_timer_rexmt: a lossy wire lost a packet; send again from snd_una.

Theory of operation. With `--loss` the NIC model loses packets on the wire
(mbuf/ifnet.py): a lost packet's bytes never reach the host socket, and the
packets queued behind it must wait, since the host socket is a byte stream.
When the wire has taken everything before the hole (`IfTxQueue.stalled`),
TCP notices, as its retransmit timer (or three duplicate ACKs) would, and
goes back: everything still in the NIC queue is discarded (freed: the NIC
did send it), `snd_nxt` returns to `snd_una` and the send-pointer cache
(`sb_sndptr`) is reset, so the next `tcp_output` walks the send buffer from
its head and sends the bytes again, one segment per packet up to `snd_max`
(the congestion window after a timeout is one segment, and a 64 KiB burst
would rarely cross a lossy wire whole), with a fresh `m_copym`, a fresh
header and, on an interface without IFCAP_NOMAP, a fresh conversion with new
sf_bufs. Bytes below `snd_max` sent again are counted in
`tcps_sndrexmitpack` / `tcps_sndrexmitbyte`. The client gets every byte
exactly once and in order.

Models: sys/netinet/tcp_timer.c (`tcp_timer_rexmt`: snd_nxt = snd_una,
`tcps_rexmttimeo`) and the retransmission accounting of
sys/netinet/tcp_output.c (`tcps_sndrexmitpack`, `tcps_sndrexmitbyte`).

Deliberate differences: no time passes (no RTT estimate, no backoff, and no
slow start after the timeout: one segment per packet until snd_max, full
bursts after): TCP goes back as soon as the wire has drained to the hole. It
goes back N (no SACK): the packets behind the lost one, which a real
receiver would keep out of order, are sent again too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mbuf.socket import Socket


def tcp_timer_rexmt(so: Socket) -> bool:
    """If the wire stalled on a lost packet: discard the NIC queue and go back to
    snd_una. Returns whether it did (the caller runs tcp_output next)."""
    txq = so.so_txq
    if not txq.stalled():
        return False
    tp = so.so_tcp
    txq.drain()
    tp.snd_nxt = 0  # = snd_una: offsets count from the first unacknowledged byte
    so.so_snd.sb_sndptr = None
    so.so_snd.sb_sndptroff = 0
    so.so_kern.stats.tcp.rexmttimeo += 1
    return True
