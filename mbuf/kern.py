"""One modeled machine: physical memory, page cache, sf_bufs, the interface, counters.

Theory of operation. Everything the FreeBSD kernel keeps in globals lives in a
`Kernel` instance, so tests can build as many independent machines as they
like. Tunables:

  phys_mem         bytes of physical memory for the page cache and buffers
  nsfbufs          0 = direct map (sf_bufs never fail); N = bounded pool
  mb_use_ext_pgs   kern.ipc.mb_use_ext_pgs: sendfile builds unmapped mbufs
  readahead        sendfile readahead pages (None: rest of the request, up to MAXPHYS)
  capenable        the interface's enabled capabilities (IFCAP_*)
  loss, loss_seed  the probability that the wire loses a packet, and its seed
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any, Final

from mbuf.counters import Counters
from mbuf.ifnet import (
    IFCAP_NOMAP,
    IFCAP_TSO4,
    IFCAP_TSO6,
    IFCAP_TXCSUM,
    IFCAP_TXCSUM_IPV6,
    Ifnet,
    IfTxQueue,
)
from mbuf.sf_buf import SfBufPool
from mbuf.vm_object import PageCache
from mbuf.vm_page import PhysMem

DEFAULT_PHYS_MEM: Final = 256 * 1024 * 1024
DEFAULT_CAPENABLE: Final = IFCAP_NOMAP | IFCAP_TXCSUM | IFCAP_TSO4 | IFCAP_TXCSUM_IPV6 | IFCAP_TSO6


class Kernel:
    __slots__ = (
        "cluster_cache",
        "ifnet",
        "jumbop_cache",
        "mb_use_ext_pgs",
        "pagecache",
        "phys",
        "readahead",
        "sfbufs",
        "stats",
    )

    def __init__(
        self,
        phys_mem: int = DEFAULT_PHYS_MEM,
        *,
        capenable: int = DEFAULT_CAPENABLE,
        mb_use_ext_pgs: bool = True,
        nsfbufs: int = 0,
        readahead: int | None = None,
        loss: float = 0.0,
        loss_seed: int = 0,
    ) -> None:
        self.stats = Counters()
        self.phys = PhysMem(phys_mem, self.stats.vm)
        self.pagecache = PageCache(self.phys)
        self.sfbufs = SfBufPool(self.phys, self.stats.sfbuf, self.stats.sf, nsfbufs)
        self.ifnet = Ifnet(capenable, self.stats.ifnet, loss=loss, loss_seed=loss_seed)
        self.mb_use_ext_pgs = mb_use_ext_pgs
        # sendfile readahead in pages: None = the kernel's default (the rest of the
        # request, up to MAXPHYS); N = SF_USER_READAHEAD with SF_READAHEAD(flags) = N.
        if readahead is not None and readahead < 0:
            raise ValueError(f"readahead must be >= 0 pages, not {readahead}")
        self.readahead = readahead
        # UMA per-zone caches of cluster storage, so steady state allocates nothing.
        self.cluster_cache: list[memoryview] = []
        self.jumbop_cache: list[memoryview] = []

    def set_wakeup(self, wakeup: Callable[[], None]) -> None:
        """Who to call when page frames or sf_bufs are freed while someone waits."""
        self.phys.vm_wakeup = wakeup
        self.sfbufs.wakeup = wakeup

    def new_txq(self) -> IfTxQueue:
        return IfTxQueue(self.ifnet, self.phys.dmap)

    def statistics(self) -> MappingProxyType[str, Any]:
        """An immutable snapshot of every counter, keyed `group.name`."""
        snap = dict(self.stats.snapshot())
        snap["ifnet.capenable"] = self.ifnet.capenable_names()
        snap["ifnet.name"] = self.ifnet.if_xname
        snap["kern.ipc.mb_use_ext_pgs"] = int(self.mb_use_ext_pgs)
        return MappingProxyType(snap)

    def leaks(self) -> dict[str, int]:
        """Counters that must be zero once every connection has closed."""
        s = self.stats
        vals = {
            "mbuf.mbufs_in_use": s.mb.mbufs_in_use,
            "mbuf.clusters_in_use": s.mb.clusters_in_use,
            "mbuf.jumbop_in_use": s.mb.jumbop_in_use,
            "mbuf.ext_pgs_in_use": s.mb.ext_pgs_in_use,
            "mbuf.sfbuf_mbufs_in_use": s.mb.sfbuf_mbufs_in_use,
            "sfbuf.in_use": s.sfbuf.in_use,
            "vm.pages_wired": s.vm.pages_wired,
            "vm.pages_anon": s.vm.pages_anon,
            "vm.pages_reserved": s.vm.pages_reserved,
            "ktls.tasks_active": s.ktls.tasks_active,
        }
        return {k: v for k, v in vals.items() if v}
