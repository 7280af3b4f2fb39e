"""The interface's tap: what a driver calls so that packet capture sees its frames.

Theory of operation. FreeBSD drivers call `BPF_MTAP(ifp, m)` where they hand a
frame to the hardware and where they pass a received one up; the macro does
nothing unless a listener is present. `mbuf` may not import `bpf` (DESIGN.md,
"The house"), so the data path sees the tap through `IfTap`, a small interface
that bpf/bpf.py's `BpfIf` implements, the way `KtlsHook` keeps ktls out of
sockbuf.py. A frame is Ethernet (DLT_EN10MB): the model's chains start at the
IP header, so the caller puts a 14-byte Ethernet header mbuf in front
(`ether_header_mbuf`) for the tap and takes it off again (`if_tap_ether` does
both), as `bpf_mtap2` does with its throw-away mbuf.

Where the calls go: the interface's `Ifnet.if_bpf` (None until the server
attaches its bpf subsystem's `BpfIf`); `IfTxQueue.if_transmit` (mbuf/ifnet.py,
after ip_output, on the chain the NIC is given, with PFIL_OUT, behind an
Ethernet header IF_LLADDR -> PEER_LLADDR) and `ether_input` (mbuf/tcp_input.py,
the received frame with its own Ethernet header, PFIL_IN). Each checks
`if_bpf is not None and if_bpf.bif_dlist` first, bpf_peers_present: with no
listener a packet costs that check and nothing else.

The second hook is netmap's: `Ifnet.if_netmap`, a `FrameTap` (netmap's
NetmapIfTap) that netmap sets only while a copy monitor watches the interface
and puts back to None when the last one leaves, so without a monitor a packet
costs one `is not None` test. Netmap's monitors copy at the ring's sync; here
they copy where BPF taps, the same frames (netmap/netmap_monitor.py).

Models: the BPF_MTAP / bpf_peers_present macros of sys/net/bpf.h, the
direction words PFIL_IN / PFIL_OUT of sys/net/pfil.h, struct ether_header of
sys/net/ethernet.h.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Protocol

from mbuf.mbuf import Mbuf, m_free, m_get

if TYPE_CHECKING:
    from mbuf.kern import Kernel

PFIL_IN = 0x1  # a frame received from the wire
PFIL_OUT = 0x2  # a frame handed to the wire

ETHER_ADDR_LEN = 6
ETHER_HDR_LEN = 14
ETHERTYPE_IP = 0x0800
ETHERTYPE_IPV6 = 0x86DD
# The interface's MAC and its peer's (the far end of the wire), fixed per interface.
IF_LLADDR: Final = bytes.fromhex("020000000001")
PEER_LLADDR: Final = bytes.fromhex("020000000002")


class FrameTap(Protocol):
    """Anything that takes a copy of the interface's frames (if_tap_ether's target)."""

    def tap(self, m: Mbuf, direction: int) -> None:
        """See frame m (not consumed, not modified) travelling `direction`."""
        ...


class IfTap(Protocol):
    """A listener on an interface (implemented by bpf.bpf.BpfIf)."""

    # The attached descriptors: empty means nobody listens (bpf_peers_present), and
    # the driver skips the tap (and its Ethernet header mbuf) altogether.
    bif_dlist: list[Any]

    def tap(self, m: Mbuf, direction: int) -> None:
        """See frame m (not consumed, not modified) travelling `direction`
        (PFIL_IN or PFIL_OUT). Returns at once when nobody listens."""
        ...


def ether_header_mbuf(kern: Kernel, dst: bytes, src: bytes, ethertype: int) -> Mbuf:
    """A plain mbuf holding struct ether_header: destination, source, type (0x0800
    IPv4 or 0x86DD IPv6). ValueError for a MAC that is not 6 bytes."""
    if len(dst) != ETHER_ADDR_LEN or len(src) != ETHER_ADDR_LEN:
        raise ValueError("ether_header_mbuf: MAC addresses are 6 bytes")
    if ethertype not in (ETHERTYPE_IP, ETHERTYPE_IPV6):
        raise ValueError(f"ether_header_mbuf: ethertype {ethertype:#06x} is not IPv4 or IPv6")
    m = m_get(kern)
    assert m.m_dat is not None
    m.m_dat[:ETHER_HDR_LEN] = dst + src + ethertype.to_bytes(2, "big")
    m.m_len = ETHER_HDR_LEN
    return m


def if_tap_ether(
    tap: FrameTap, m: Mbuf, dst: bytes, src: bytes, ethertype: int, direction: int
) -> None:
    """Tap IP packet m as the Ethernet frame the wire carries: a header mbuf goes in
    front for the tap and is freed after; m is left as it was."""
    eh = ether_header_mbuf(m.m_kern, dst, src, ethertype)
    eh.m_next = m
    try:
        tap.tap(eh, direction)
    finally:
        eh.m_next = None
        m_free(eh)
