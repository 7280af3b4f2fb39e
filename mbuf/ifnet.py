"""The network interface model: capabilities, transmit queues and "DMA".

Theory of operation. `Ifnet` is one interface ("nm0") with FreeBSD's
capability words (`if_capabilities`, `if_capenable`) and the checksum offloads
it implies (`if_hwassist`). `if_transmit` loads a packet's mbuf chain for DMA
the way `bus_dmamap_load_mbuf_sg` does: mapped mbufs by virtual address,
unmapped mbufs as header bytes, one segment per physical page, trailer bytes.
The segments are memoryviews over the page arena, so the "DMA" is a
scatter-gather list and no byte is copied in Python.

The wire behind the NIC is the real host TCP socket of the connection. The
host kernel makes its own TCP/IP headers, so the 40-byte header the model
built (40 bytes, 60 over IPv6) is DMAed and counted but not written to the host socket; everything
after it is. A packet's mbufs are freed (`m_freem`) when the host socket has
taken all of its bytes, which is when the NIC would report the descriptor done.

Models: sys/net/if.h (`IFCAP_*`) and sys/kern/subr_bus_dma.c
(`bus_dmamap_load_mbuf_sg`, `_bus_dmamap_load_unmapped_mbuf_sg`).

A lossy wire (`if_loss`, --loss): each wire segment may be lost after the
NIC sent it, and a packet (a TSO burst) with a lost segment is lost. Its
bytes never reach the host socket, nor do those of the packets behind it
until TCP has sent the lost bytes again (`stalled`, then mbuf/tcp_timer.py).

Deliberate differences: a real NIC has a few hardware rings shared by all
flows; the model gives each connection its own transmit queue, as a
multi-queue NIC that hashes flows to queues would, so each host socket can
drain its own. Loss is decided when the packet is queued, from one seeded
generator per interface.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from typing import TYPE_CHECKING

from mbuf.kassert import kassert
from mbuf.mbuf import M_NOMAP, Mbuf, m_freem, m_iov
from mbuf.param import IF_MTU, TCPIP6_HDR_LEN, TCPIP_HDR_LEN

if TYPE_CHECKING:
    from mbuf.counters import IfStat


class IfCap(enum.IntFlag):
    """sys/net/if.h capability bits (2019 names)."""

    IFCAP_RXCSUM = 0x00001
    IFCAP_TXCSUM = 0x00002
    IFCAP_VLAN_MTU = 0x00008
    IFCAP_TSO4 = 0x00100
    IFCAP_TSO6 = 0x00200
    IFCAP_LRO = 0x00400
    IFCAP_RXCSUM_IPV6 = 0x100000
    IFCAP_TXCSUM_IPV6 = 0x200000
    IFCAP_NOMAP = 0x4000000  # bit 26; renamed IFCAP_MEXTPG in 2021
    IFCAP_TXTLS4 = 0x8000000
    IFCAP_TXTLS6 = 0x10000000


IFCAP_TXCSUM = int(IfCap.IFCAP_TXCSUM)
IFCAP_TSO4 = int(IfCap.IFCAP_TSO4)
IFCAP_TSO6 = int(IfCap.IFCAP_TSO6)
IFCAP_RXCSUM = int(IfCap.IFCAP_RXCSUM)
IFCAP_TXCSUM_IPV6 = int(IfCap.IFCAP_TXCSUM_IPV6)
IFCAP_RXCSUM_IPV6 = int(IfCap.IFCAP_RXCSUM_IPV6)
IFCAP_NOMAP = int(IfCap.IFCAP_NOMAP)

# mbuf.h checksum flags (m_pkthdr.csum_flags, if_hwassist).
CSUM_IP = 0x00000001
CSUM_IP_UDP = 0x00000002
CSUM_IP_TCP = 0x00000004
CSUM_IP_TSO = 0x00000010
CSUM_IP6_UDP = 0x00000200
CSUM_IP6_TCP = 0x00000400
CSUM_IP6_TSO = 0x00001000
CSUM_DELAY_DATA = CSUM_IP_TCP | CSUM_IP_UDP
CSUM_DELAY_DATA_IPV6 = CSUM_IP6_TCP | CSUM_IP6_UDP
CSUM_TSO = CSUM_IP_TSO | CSUM_IP6_TSO
# Inbound: what the NIC verified (CSUM_L3_CALC/VALID, CSUM_L4_CALC/VALID).
CSUM_IP_CHECKED = 0x01000000
CSUM_IP_VALID = 0x02000000
CSUM_PSEUDO_HDR = 0x04000000
CSUM_DATA_VALID = 0x08000000

IFQ_MAXLEN = 1024  # descriptors per transmit queue


class Ifnet:
    __slots__ = (
        "if_capabilities",
        "if_capenable",
        "if_hwassist",
        "if_loss",
        "if_loss_rng",
        "if_mtu",
        "if_xname",
        "stats",
    )

    def __init__(
        self,
        capenable: int,
        stats: IfStat,
        name: str = "nm0",
        loss: float = 0.0,
        loss_seed: int = 0,
    ) -> None:
        self.if_xname = name
        self.if_mtu = IF_MTU
        self.if_capabilities = (
            IFCAP_TXCSUM | IFCAP_RXCSUM | IFCAP_TSO4 | IFCAP_NOMAP
            | IFCAP_TXCSUM_IPV6 | IFCAP_RXCSUM_IPV6 | IFCAP_TSO6
        )  # fmt: skip
        self.stats = stats
        self.if_capenable = 0
        self.if_hwassist = 0
        self.set_capenable(capenable)
        # The lossy wire (--loss): each packet the NIC sends is lost with this
        # probability, drawn from a generator seeded for repeatable runs.
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"loss probability {loss} outside [0, 1)")
        self.if_loss = loss
        self.if_loss_rng = random.Random(loss_seed)

    def set_capenable(self, caps: int) -> None:
        """ifconfig [-]nomap / [-]txcsum / [-]txcsum6 / [-]tso4 / [-]tso6. As in most
        drivers, TSO needs transmit checksum offload of its family, so turning
        TXCSUM (TXCSUM_IPV6) off turns TSO4 (TSO6) off too."""
        caps &= self.if_capabilities
        if not caps & IFCAP_TXCSUM:
            caps &= ~IFCAP_TSO4
        if not caps & IFCAP_TXCSUM_IPV6:
            caps &= ~IFCAP_TSO6
        self.if_capenable = caps
        assist = 0
        if caps & IFCAP_TXCSUM:
            assist |= CSUM_IP | CSUM_IP_TCP | CSUM_IP_UDP
        if caps & IFCAP_TSO4:
            assist |= CSUM_IP_TSO
        if caps & IFCAP_TXCSUM_IPV6:
            assist |= CSUM_IP6_TCP | CSUM_IP6_UDP
        if caps & IFCAP_TSO6:
            assist |= CSUM_IP6_TSO
        self.if_hwassist = assist

    def capenable_names(self) -> list[str]:
        return [f.name for f in IfCap if f.name and self.if_capenable & f.value]


class TxPacket:
    __slots__ = ("lost", "m", "nseg", "payload", "segs")

    def __init__(self, m: Mbuf, segs: list[memoryview], payload: int, lost: bool = False) -> None:
        self.m = m
        self.segs = segs  # DMA segments of the payload (after the model's header)
        self.payload = payload
        self.nseg = len(segs)
        self.lost = lost  # the wire lost it: its bytes never reach the host socket


class IfTxQueue:
    """One flow's transmit queue: packets loaded for DMA, drained by the host socket."""

    __slots__ = ("bytes_queued", "head_off", "ifp", "ring")

    def __init__(self, ifp: Ifnet) -> None:
        self.ifp = ifp
        self.ring: deque[TxPacket] = deque()
        self.head_off = 0  # payload bytes of ring[0] already on the wire
        self.bytes_queued = 0

    def full(self) -> bool:
        return len(self.ring) >= IFQ_MAXLEN

    def if_transmit(self, m: Mbuf, nsegs: int) -> None:
        """Load the chain for DMA and queue it. `nsegs` is the number of wire segments."""
        st = self.ifp.stats
        hdr = m
        hdrlen = hdr.m_len
        kassert(
            hdrlen in (TCPIP_HDR_LEN, TCPIP6_HDR_LEN) and not hdr.m_flags & M_NOMAP,
            "if_transmit: packet must start with its mapped TCP/IP header",
        )
        segs: list[memoryview] = []
        payload = 0
        n = hdr.m_next
        unmapped = 0
        while n is not None:
            if n.m_len:
                if n.m_flags & M_NOMAP:
                    unmapped += 1
                segs.extend(m_iov(n, 0, n.m_len))
                payload += n.m_len
            n = n.m_next
        st.tx_packets += 1
        st.tx_segments += nsegs
        st.tx_bytes += payload + hdrlen * nsegs
        st.tx_dma_segments += len(segs) + 1
        st.tx_unmapped_mbufs += unmapped
        ifp = self.ifp
        # Loss is per wire segment: a TSO burst is lost if any of its segments is.
        lost = ifp.if_loss > 0.0 and ifp.if_loss_rng.random() < 1.0 - (1.0 - ifp.if_loss) ** nsegs
        if lost:
            st.tx_lost += 1
        self.ring.append(TxPacket(m, segs, payload, lost))
        self.bytes_queued += payload

    def pending_iov(self, max_iov: int = 1024) -> list[memoryview]:
        """The scatter-gather list of queued payload, for one sendmsg: up to the
        first packet the wire lost (what follows it must wait for TCP to send
        the lost bytes again: the host socket is a byte stream)."""
        out: list[memoryview] = []
        skip = self.head_off
        for pkt in self.ring:
            if pkt.lost:
                return out
            for seg in pkt.segs:
                if skip:
                    if skip >= len(seg):
                        skip -= len(seg)
                        continue
                    seg = seg[skip:]
                    skip = 0
                out.append(seg)
                if len(out) >= max_iov:
                    return out
        return out

    def complete(self, nbytes: int) -> int:
        """The host socket took `nbytes`: free the packets that are done. Returns nbytes."""
        kassert(nbytes <= self.bytes_queued - self.head_off, "complete: more than queued")
        self.ifp.stats.tx_writes += 1
        left = nbytes + self.head_off
        while self.ring and left >= self.ring[0].payload:
            pkt = self.ring.popleft()
            left -= pkt.payload
            self.bytes_queued -= pkt.payload
            pkt.segs.clear()
            m_freem(pkt.m)
        self.head_off = left
        return nbytes

    def drain(self) -> None:
        """Free everything queued (connection gone)."""
        while self.ring:
            pkt = self.ring.popleft()
            pkt.segs.clear()
            m_freem(pkt.m)
        self.head_off = 0
        self.bytes_queued = 0

    def empty(self) -> bool:
        return not self.ring

    def stalled(self) -> bool:
        """The next packet for the wire was lost: nothing more can go until TCP
        retransmits (tcp_timer_rexmt)."""
        return bool(self.ring) and self.ring[0].lost
