"""The network interface model: capabilities, transmit queues and "DMA".

Theory of operation. `Ifnet` is one interface ("nm0") with FreeBSD's
capability words (`if_capabilities`, `if_capenable`) and the checksum offloads
it implies (`if_hwassist`). `if_transmit` loads a packet's mbuf chain for DMA
the way `bus_dmamap_load_mbuf_sg` does: mapped mbufs by virtual address,
unmapped mbufs as header bytes, one segment per physical page, trailer bytes.
The segments are memoryviews over the page arena, so the "DMA" is a
scatter-gather list and no byte is copied in Python. As busdma does, pieces
that are physically adjacent are merged into one segment whatever mbuf they
come from (an sf_buf mbuf's page, found through its mapping as
`pmap_kextract` would, or an unmapped mbuf's page), and a segment is at most
`if_hw_tsomaxsegsize` bytes long (the DMA tag's maxsegsz), so
`ifnet.tx_dma_segments` counts alike with and without unmapped mbufs.

TSO limits: `if_hw_tsomax` (bytes of a burst, headers included),
`if_hw_tsomaxsegcount` (DMA segments of a burst) and `if_hw_tsomaxsegsize`
(bytes per segment) are the defaults `if_attach_internal` (sys/net/if.c)
gives a driver that sets none: min(IP_MAXPACKET, 32 * MCLBYTES -
(ETHER_HDR_LEN + ETHER_VLAN_ENCAP_LEN)) = 65518 bytes, 35 segments ("an NFS
mbuf list of 35 mbufs totalling just below 64K") of 2048 bytes. (iflib's ix
sets 32 segments of PAGE_SIZE; em 64 - 5 of 4096.) tcp_output reads them.

The wire behind the NIC is the real host TCP socket of the connection. The
host kernel makes its own TCP/IP headers, so the 40-byte header the model
built (40 bytes, 60 over IPv6) is DMAed and counted but not written to the host socket; everything
after it is. A packet's mbufs are freed (`m_freem`) when the host socket has
taken all of its bytes, which is when the NIC would report the descriptor done.

Models: sys/net/if.h (`IFCAP_*`, `if_hw_tsomax*`), sys/net/if.c
(`if_attach_internal`'s TSO defaults) and sys/kern/subr_bus_dma.c
(`bus_dmamap_load_mbuf_sg`, `_bus_dmamap_load_unmapped_mbuf_sg`).

A lossy wire (`if_loss`, --loss): each wire segment may be lost after the
NIC sent it, and a packet (a TSO burst) with a lost segment is lost. Its
bytes never reach the host socket, nor do those of the packets behind it
until TCP has sent the lost bytes again (`stalled`, then mbuf/tcp_timer.py).

Checksums in a capture: the driver taps the chain after its encapsulation
(iflib_txq_drain: iflib_encap, then ETHER_BPF_MTAP), and for a TSO burst
iflib_parse_header has rewritten th_sum to the pseudo-header sum without the
length, so a capture shows that; other offloaded segments show tcp_output's
pseudo-header sum over their length; with no offload, the full checksum.

Deliberate differences: a real NIC has a few hardware rings shared by all
flows; the model gives each connection its own transmit queue, as a
multi-queue NIC that hashes flows to queues would, so each host socket can
drain its own. busdma's `boundary` of the DMA tag is not modelled (0: none).
Loss is decided when the packet is queued, from one seeded generator per
interface.
"""

from __future__ import annotations

import enum
import random
import struct
from collections import deque
from typing import TYPE_CHECKING, Final

from mbuf.if_tap import (
    ETHERTYPE_IP,
    ETHERTYPE_IPV6,
    IF_LLADDR,
    PEER_LLADDR,
    PFIL_OUT,
    FrameTap,
    IfTap,
    if_tap_ether,
)
from mbuf.kassert import kassert
from mbuf.mbuf import (
    EXT_SFBUF,
    M_EXT,
    M_NOMAP,
    Mbuf,
    dmamap_addseg,
    m_freem,
    mtod,
    pages_load,
)
from mbuf.param import (
    IF_MTU,
    IP6_HDR_LEN,
    IP_HDR_LEN,
    IP_MAXPACKET,
    MCLBYTES,
    PHYS_BASE,
    TCPIP6_HDR_LEN,
    TCPIP_HDR_LEN,
    howmany,
)
from mbuf.tcpip_hdr import TH_SUM_OFF, tcp_pseudo

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


IFCAP_TXCSUM: Final = int(IfCap.IFCAP_TXCSUM)
IFCAP_TSO4: Final = int(IfCap.IFCAP_TSO4)
IFCAP_TSO6: Final = int(IfCap.IFCAP_TSO6)
IFCAP_RXCSUM: Final = int(IfCap.IFCAP_RXCSUM)
IFCAP_TXCSUM_IPV6: Final = int(IfCap.IFCAP_TXCSUM_IPV6)
IFCAP_RXCSUM_IPV6: Final = int(IfCap.IFCAP_RXCSUM_IPV6)
IFCAP_NOMAP: Final = int(IfCap.IFCAP_NOMAP)

# mbuf.h checksum flags (m_pkthdr.csum_flags, if_hwassist).
CSUM_IP: Final = 0x00000001
CSUM_IP_UDP: Final = 0x00000002
CSUM_IP_TCP: Final = 0x00000004
CSUM_IP_TSO: Final = 0x00000010
CSUM_IP6_UDP: Final = 0x00000200
CSUM_IP6_TCP: Final = 0x00000400
CSUM_IP6_TSO: Final = 0x00001000
CSUM_DELAY_DATA: Final = CSUM_IP_TCP | CSUM_IP_UDP
CSUM_DELAY_DATA_IPV6: Final = CSUM_IP6_TCP | CSUM_IP6_UDP
CSUM_TSO: Final = CSUM_IP_TSO | CSUM_IP6_TSO
# Inbound: what the NIC verified (CSUM_L3_CALC/VALID, CSUM_L4_CALC/VALID).
CSUM_IP_CHECKED: Final = 0x01000000
CSUM_IP_VALID: Final = 0x02000000
CSUM_PSEUDO_HDR: Final = 0x04000000
CSUM_DATA_VALID: Final = 0x08000000

IFQ_MAXLEN: Final = 1024  # descriptors per transmit queue

# if_attach_internal's TSO defaults (sys/net/if.c), for a driver that sets none.
ETHER_HDR_LEN: Final = 14
ETHER_VLAN_ENCAP_LEN: Final = 4
IF_HW_TSOMAX_DEFAULT: Final = min(
    IP_MAXPACKET, 32 * MCLBYTES - (ETHER_HDR_LEN + ETHER_VLAN_ENCAP_LEN)
)
IF_HW_TSOMAXSEGCOUNT_DEFAULT: Final = 35
IF_HW_TSOMAXSEGSIZE_DEFAULT: Final = 2048
# tcp_m_copym charges an unmapped mbuf 3 segments before its data and keeps one
# for the header: fewer than 5 segments could never carry one.
IF_HW_TSOMAXSEGCOUNT_MIN: Final = 5


class Ifnet:
    __slots__ = (
        "if_bpf",
        "if_capabilities",
        "if_capenable",
        "if_hw_tsomax",
        "if_hw_tsomaxsegcount",
        "if_hw_tsomaxsegsize",
        "if_hwassist",
        "if_loss",
        "if_loss_rng",
        "if_mtu",
        "if_netmap",
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
        # The bpf tap point (bpf.BpfIf), set by whoever attaches packet capture
        # (server/app.py); None: no capture, one `is not None` check per packet.
        self.if_bpf: IfTap | None = None
        # netmap's monitors (netmap.netmap_monitor.NetmapIfTap): set only while
        # a monitor watches this interface, None otherwise (one test per packet).
        self.if_netmap: FrameTap | None = None
        self.if_capabilities = (
            IFCAP_TXCSUM | IFCAP_RXCSUM | IFCAP_TSO4 | IFCAP_NOMAP
            | IFCAP_TXCSUM_IPV6 | IFCAP_RXCSUM_IPV6 | IFCAP_TSO6
        )  # fmt: skip
        self.stats = stats
        self.if_capenable = 0
        self.if_hwassist = 0
        self.if_hw_tsomax = IF_HW_TSOMAX_DEFAULT
        self.if_hw_tsomaxsegcount = IF_HW_TSOMAXSEGCOUNT_DEFAULT
        self.if_hw_tsomaxsegsize = IF_HW_TSOMAXSEGSIZE_DEFAULT
        self.set_capenable(capenable)
        # The lossy wire (--loss): each packet the NIC sends is lost with this
        # probability, drawn from a generator seeded for repeatable runs.
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"loss probability {loss} outside [0, 1)")
        self.if_loss = loss
        self.if_loss_rng = random.Random(loss_seed)

    def set_tso_limits(self, tsomax: int, segcount: int, segsize: int) -> None:
        """What a driver sets before ether_ifattach: a TSO burst's bytes (headers
        included), DMA segments and bytes per segment."""
        if not TCPIP_HDR_LEN + 16 + self.if_mtu <= tsomax <= IP_MAXPACKET:
            raise ValueError(f"if_hw_tsomax {tsomax}: not between one packet and IP_MAXPACKET")
        if segcount < IF_HW_TSOMAXSEGCOUNT_MIN:
            raise ValueError(f"if_hw_tsomaxsegcount {segcount} < {IF_HW_TSOMAXSEGCOUNT_MIN}")
        if not 512 <= segsize <= IP_MAXPACKET:
            raise ValueError(f"if_hw_tsomaxsegsize {segsize}: not between 512 and IP_MAXPACKET")
        self.if_hw_tsomax = tsomax
        self.if_hw_tsomaxsegcount = segcount
        self.if_hw_tsomaxsegsize = segsize

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


def _tso_pseudo(hdr: Mbuf, isipv6: bool) -> None:
    """iflib_parse_header for a TSO burst: th_sum becomes the pseudo-header sum
    without the length (each segment's length is the NIC's to add), before the tap."""
    buf = mtod(hdr)
    if isipv6:
        src = int.from_bytes(buf[8:24], "big")
        dst = int.from_bytes(buf[24:40], "big")
        off = IP6_HDR_LEN + TH_SUM_OFF
    else:
        src = int.from_bytes(buf[12:16], "big")
        dst = int.from_bytes(buf[16:20], "big")
        off = IP_HDR_LEN + TH_SUM_OFF
    struct.pack_into("!H", buf, off, tcp_pseudo(isipv6, src, dst, 0))


def _load_mapped(m: Mbuf, dmap: memoryview, segs: list[memoryview], addrs: list[int]) -> None:
    """A mapped mbuf, by virtual address. An sf_buf mbuf's address is its page's,
    read from the mapping (on a direct map, what pmap_kextract returns); clusters
    and internal storage lie outside the arena and are never merged."""
    ext = m.m_ext
    if m.m_flags & M_EXT and ext is not None and ext.ext_type == EXT_SFBUF:
        owner = ext.ext_mref.m_ext  # duplicates carry no ext_arg1; the owner's sf_buf
        assert owner is not None
        pa: int = owner.ext_arg1.page.phys_addr
        dmamap_addseg(segs, addrs, dmap, pa - PHYS_BASE + m.m_data, m.m_len)
        return
    segs.append(mtod(m))
    addrs.append(-1)


def _load_unmapped(m: Mbuf, dmap: memoryview, segs: list[memoryview], addrs: list[int]) -> None:
    """_bus_dmamap_load_unmapped_mbuf_sg: header bytes by virtual address, each
    page by physical address, trailer bytes by virtual address."""
    pgs = m.ext_pgs
    off = m.m_data  # trim offset
    rem = m.m_len
    hdr_len = pgs.hdr_len
    if off < hdr_len:
        n = min(hdr_len - off, rem)
        segs.append(memoryview(pgs.hdr)[off : off + n])
        addrs.append(-1)
        rem -= n
        off = 0
    else:
        off -= hdr_len
    # The pages, by physical address: adjacent ones are one run (merged with the
    # previous segment if it ends where the run begins), one view per run.
    rem -= pages_load(dmap, pgs, pgs.pa, off, rem, segs, addrs)
    off = max(0, off - pgs.page_bytes())
    if rem:
        kassert(off + rem <= pgs.trail_len, "busdma: %s bytes beyond the trailer", rem)
        segs.append(memoryview(pgs.trail)[off : off + rem])
        addrs.append(-1)


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

    __slots__ = ("bytes_queued", "dmap", "head_off", "ifp", "ring")

    def __init__(self, ifp: Ifnet, dmap: memoryview) -> None:
        self.ifp = ifp
        self.dmap = dmap  # the direct map: physical page addresses as arena offsets
        self.ring: deque[TxPacket] = deque()
        self.head_off = 0  # payload bytes of ring[0] already on the wire
        self.bytes_queued = 0

    def full(self) -> bool:
        return len(self.ring) >= IFQ_MAXLEN

    def if_transmit(self, m: Mbuf, nsegs: int) -> None:
        """Load the chain for DMA and queue it. `nsegs` is the number of wire segments."""
        ifp = self.ifp
        st = ifp.stats
        hdr = m
        hdrlen = hdr.m_len
        kassert(
            hdrlen in (TCPIP_HDR_LEN, TCPIP6_HDR_LEN) and not hdr.m_flags & M_NOMAP,
            "if_transmit: packet must start with its mapped TCP/IP header",
        )
        if hdr.m_pkthdr_csum_flags & CSUM_TSO:
            _tso_pseudo(hdr, hdrlen == TCPIP6_HDR_LEN)
        bif = ifp.if_bpf
        if bif is not None and bif.bif_dlist:  # BPF_MTAP: the chain the NIC is given
            etype = ETHERTYPE_IPV6 if hdrlen == TCPIP6_HDR_LEN else ETHERTYPE_IP
            if_tap_ether(bif, m, PEER_LLADDR, IF_LLADDR, etype, PFIL_OUT)
        nmt = ifp.if_netmap
        if nmt is not None:  # a netmap copy monitor of the TX ring
            etype = ETHERTYPE_IPV6 if hdrlen == TCPIP6_HDR_LEN else ETHERTYPE_IP
            if_tap_ether(nmt, m, PEER_LLADDR, IF_LLADDR, etype, PFIL_OUT)
        segs: list[memoryview] = []
        addrs: list[int] = []
        payload = 0
        n = hdr.m_next
        unmapped = 0
        dmap = self.dmap
        while n is not None:
            if n.m_len:
                if n.m_flags & M_NOMAP:
                    unmapped += 1
                    _load_unmapped(n, dmap, segs, addrs)
                else:
                    _load_mapped(n, dmap, segs, addrs)
                payload += n.m_len
            n = n.m_next
        maxsegsz = ifp.if_hw_tsomaxsegsize
        dma = 1  # the header
        for v in segs:
            dma += howmany(len(v), maxsegsz)
        st.tx_packets += 1
        st.tx_segments += nsegs
        st.tx_bytes += payload + hdrlen * nsegs
        st.tx_dma_segments += dma
        if dma > ifp.if_hw_tsomaxsegcount:
            st.tx_defrag += 1
        st.tx_unmapped_mbufs += unmapped
        # Loss is per wire segment: a TSO burst is lost if any of its segments is.
        # if_loss is read per packet (sysctl dev.nm.0.loss_ppm applies at once).
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
