"""Copy monitors of an interface: `netmap:nm0/t`, `/r`, and both.

Theory of operation. A monitor is a port whose one RX ring receives a copy of
every frame the watched interface transmits (`NR_MONITOR_TX`, `/t`), receives
(`NR_MONITOR_RX`, `/r`) or both; copies of transmitted frames carry NS_TXMON.
The interface's hook is `NetmapIfTap`, which mbuf sees as `Ifnet.if_netmap`
(a FrameTap, mbuf/if_tap.py) and which is set only while a monitor watches,
so an unwatched interface pays one `is not None` test per packet. A frame is
copied into the buffer of the slot at nr_hwtail (cut to the buffer size, as
netmap truncates), and nr_hwtail advances; a full monitor ring drops the frame
(counted). The monitor's rxsync releases what the reader consumed. Monitors of
one interface share the interface's region, allocator 1 (netmap's global one),
made with the first monitor and freed with the last.

Models: sys/dev/netmap/netmap_monitor.c (copy monitors: netmap_get_monitor_na,
netmap_monitor_parent_sync's copy, netmap_monitor_rxsync), NS_TXMON.

Deliberate differences: netmap copies when the watched ring syncs; nm0 is not
in netmap mode here (the stack keeps it), so the copy happens where BPF taps:
IfTxQueue.if_transmit (after ip_output, with the Ethernet header) and
ether_input. A TSO burst is one frame, cut to `buf_size` (the model's NIC
hands the wire up to 64 KiB at once). Zero-copy monitors (`/z`) and monitors of
netmap ports are not modeled (EOPNOTSUPP). The monitor's TX ring exists (for
the netmap_if) and its txsync moves nothing.
"""

from __future__ import annotations

import errno
from typing import Final

from mbuf.if_tap import PFIL_OUT
from mbuf.ifnet import Ifnet
from mbuf.mbuf import Mbuf, m_chain_iov, m_length
from netmap.netmap_h import NR_MONITOR_RX, NR_MONITOR_TX, NR_RX, NR_TX, NS_TXMON
from netmap.netmap_kern import (
    Netmap,
    NetmapAdapter,
    NetmapKring,
    netmap_mem_get,
    netmap_mem_new,
    netmap_mem_put,
)
from netmap.netmap_mem2 import NetmapMem
from netmap.netmap_sync import nm_ring_publish, slots_between

NM_MONITOR_SLOTS: Final = 1024
NM_GLOBAL_MEM_ID: Final = 1  # the interfaces' allocator


class NetmapIfTap:
    """An interface monitors can watch, and the hook mbuf calls (FrameTap)."""

    __slots__ = ("ifp", "mem", "monitors", "nm")

    def __init__(self, nm: Netmap, ifp: Ifnet) -> None:
        self.nm = nm
        self.ifp = ifp
        self.mem: NetmapMem | None = None  # allocator 1 while monitors exist
        self.monitors: list[NetmapMonitorAdapter] = []

    def tap(self, m: Mbuf, direction: int) -> None:
        """Copy frame m into every monitor that watches `direction`."""
        want = NR_MONITOR_TX if direction == PFIL_OUT else NR_MONITOR_RX
        flags = NS_TXMON if direction == PFIL_OUT else 0
        length = -1
        for mon in self.monitors:
            if mon.na_flags & want:
                if length < 0:
                    length = m_length(m)[0]
                mon.monitor_copy(m, length, flags)


class NetmapMonitorAdapter(NetmapAdapter):
    """A copy monitor of an interface."""

    __slots__ = ("iftap",)

    def __init__(self, nm: Netmap, iftap: NetmapIfTap, mode: int, mem: NetmapMem) -> None:
        suffix = {NR_MONITOR_TX: "/t", NR_MONITOR_RX: "/r"}.get(mode, "")
        super().__init__(nm, iftap.ifp.if_xname + suffix, mem)
        self.iftap = iftap
        self.na_flags = mode

    def monitor_copy(self, m: Mbuf, length: int, flags: int) -> None:
        kring = self.rx_rings[0]
        n = kring.nkr_num_slots
        st = self.nm.stats
        if slots_between(n, kring.nr_hwcur, kring.nr_hwtail) >= n - 1:
            st.monitor_drops += 1
            return
        i = kring.nr_hwtail
        mem = self.mem
        size = mem.buf_pool.objsize
        if length > size:
            st.monitor_truncated += 1
            length = size
        slot = kring.slots[i]
        idx = int(slot["buf_idx"])
        if mem.buf_pool.valid(idx):  # else the reader put no buffer there: length 0
            dst = mem.buf(idx)
            off = 0
            for v in m_chain_iov(m, 0, length):
                ln = len(v)
                dst[off : off + ln] = v
                off += ln
        else:
            length = 0
        kring.slots["len"][i] = length
        kring.slots["flags"][i] = flags
        kring.nr_hwtail = i + 1 if i + 1 < n else 0
        kring.kr_slots += 1
        st.monitor_frames += 1
        nm_ring_publish(kring)

    def nm_txsync(self, kring: NetmapKring) -> None:
        kring.nr_hwcur = kring.rhead

    def nm_rxsync(self, kring: NetmapKring) -> None:
        """netmap_monitor_rxsync: the reader released [nr_hwcur, rhead)."""
        m = slots_between(kring.nkr_num_slots, kring.nr_hwcur, kring.rhead)
        kring.kr_slots += m
        kring.nr_hwcur = kring.rhead

    def nm_unbind(self) -> None:
        tap = self.iftap
        tap.monitors.remove(self)
        if not tap.monitors:
            tap.ifp.if_netmap = None
        self.free_rings(self.tx_rings + self.rx_rings)
        self.nm.stats.ports_in_use -= 1
        netmap_mem_put(self.nm, self.mem)
        if not tap.monitors:
            tap.mem = None


def netmap_attach_ifnet(nm: Netmap, ifp: Ifnet) -> NetmapIfTap:
    """Make interface ifp known to netmap (monitors may then watch it)."""
    tap = NetmapIfTap(nm, ifp)
    nm.ifnets[ifp.if_xname] = tap
    return tap


def netmap_get_monitor_na(nm: Netmap, ifname: str, flags: int) -> NetmapMonitorAdapter:
    """A copy monitor of interface `ifname` (ENXIO: not an interface)."""
    tap = nm.ifnets.get(ifname)
    if tap is None:
        raise OSError(errno.ENXIO, f"{ifname}: no such interface to monitor")
    mode = flags & (NR_MONITOR_TX | NR_MONITOR_RX)
    mem = netmap_mem_new(nm, NM_GLOBAL_MEM_ID) if tap.mem is None else netmap_mem_get(tap.mem)
    na = NetmapMonitorAdapter(nm, tap, mode, mem)
    try:
        na.make_ring(NR_TX, 0, NM_MONITOR_SLOTS, with_bufs=True)
        na.make_ring(NR_RX, 0, NM_MONITOR_SLOTS, with_bufs=True)
    except OSError:
        na.free_rings(na.tx_rings + na.rx_rings)
        nm.stats.ports_in_use -= 1
        netmap_mem_put(nm, mem)
        raise
    tap.mem = mem
    tap.monitors.append(na)
    tap.ifp.if_netmap = tap
    return na
