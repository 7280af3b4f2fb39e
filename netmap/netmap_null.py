"""Null ports: rings and buffers in an existing region, syncs that do nothing.

Theory of operation. Registering any name with `nr_mode = NR_REG_NULL` creates
an adapter `null:<name>` with a netmap_if and as many rings of as many slots as
asked (possibly none), every slot with a buffer, in the region `nr_mem_id`
names, which must exist (EINVAL otherwise: a null port never creates a
region). txsync and rxsync do nothing: nr_hwcur follows head and nr_hwtail
stays where it was. What it is for: allocating netmap objects in a region
someone else made, extra buffers after the fact among them (freed only by
closing the port).

Models: sys/dev/netmap/netmap_null.c (netmap_get_null_na, netmap_null_sync),
commit 527c1b60 / FreeBSD r341516.

Deliberate differences: every null registration makes its own adapter (it is
never found by name again); rings are capped at 64 per direction and slots at
what a ring object holds (EINVAL beyond).
"""

from __future__ import annotations

import errno
from typing import Final

from netmap.netmap_h import NR_RX, NR_TX
from netmap.netmap_kern import (
    Netmap,
    NetmapAdapter,
    NetmapKring,
    netmap_mem_find,
    netmap_mem_get,
    netmap_mem_put,
)

NM_NULL_MAXRINGS: Final = 64


class NetmapNullAdapter(NetmapAdapter):
    """A null port."""

    __slots__ = ()

    def nm_txsync(self, kring: NetmapKring) -> None:
        kring.nr_hwcur = kring.rhead

    def nm_rxsync(self, kring: NetmapKring) -> None:
        kring.nr_hwcur = kring.rhead

    def nm_unbind(self) -> None:
        self.free_rings(self.tx_rings + self.rx_rings)
        self.nm.stats.ports_in_use -= 1
        netmap_mem_put(self.nm, self.mem)


def netmap_get_null_na(
    nm: Netmap, name: str, mem_id: int, ntx: int, nrx: int, tx_slots: int, rx_slots: int
) -> NetmapNullAdapter:
    """A null port in region mem_id (EINVAL: 0 or no such region, or sizes out of range)."""
    if not mem_id:
        raise OSError(errno.EINVAL, "null port: needs an existing memory region (nr_mem_id)")
    mem = netmap_mem_find(nm, mem_id)
    most = nm.sysctl.max_slots()
    if ntx > NM_NULL_MAXRINGS or nrx > NM_NULL_MAXRINGS or tx_slots > most or rx_slots > most:
        raise OSError(errno.EINVAL, "null port: too many rings or slots")
    if (ntx and tx_slots < 2) or (nrx and rx_slots < 2):
        raise OSError(errno.EINVAL, "null port: a ring needs at least 2 slots")
    na = NetmapNullAdapter(nm, "null:" + name, netmap_mem_get(mem))
    try:
        for i in range(ntx):
            na.make_ring(NR_TX, i, tx_slots, with_bufs=True)
        for i in range(nrx):
            na.make_ring(NR_RX, i, rx_slots, with_bufs=True)
    except OSError:
        na.nm_unbind()
        raise
    return na
