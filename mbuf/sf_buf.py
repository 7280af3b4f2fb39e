"""sf_bufs: temporary kernel mappings of physical pages.

Theory of operation. On amd64 and arm64 the direct map makes an sf_buf free:
`sf_buf_alloc` returns the page itself, `sf_buf_kva` is PHYS_TO_DMAP and
nothing can fail. That is the default here (`nsfbufs == 0`). With a positive
`nsfbufs` the pool models a platform without a direct map: at most that many
mappings at once, and a `SFB_NOWAIT` allocation beyond that fails
(`sfbuf.denied`, `sf_allocfail`). Either way every mapping is counted
(`sfbuf.in_use`, `sfbuf.peak`, `sfbuf.total`) so the conversions ip_output
performs are visible.

Models: sys/sys/sf_buf.h and sys/kern/subr_sfbuf.c (`sf_buf_alloc`,
`sf_buf_free`, `sf_buf_kva`, `sf_buf_page`).

Deliberate differences: the generic pool hashes pages so that mapping a page
twice shares one sf_buf; the model gives each mapping its own, which counts
the same in-use figure the direct-map platforms would show as zero cost.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final

from mbuf.counters import SfBufStat, SfStat
from mbuf.kassert import kassert
from mbuf.vm_page import PhysMem, VmPage


def _nothing() -> None:
    return None


class SfbFlags(enum.IntFlag):
    SFB_DEFAULT = 0
    SFB_CATCH = 1  # sleep interruptibly
    SFB_CPUPRIVATE = 2  # mapping needed on this CPU only
    SFB_NOWAIT = 4  # fail instead of sleeping


SFB_NOWAIT: Final = int(SfbFlags.SFB_NOWAIT)


class SfBuf:
    __slots__ = ("freed", "kva", "page")

    def __init__(self, page: VmPage, kva: memoryview) -> None:
        self.page = page
        self.kva = kva
        self.freed = False


class SfBufPool:
    __slots__ = ("nsfbufs", "phys", "sfstat", "stats", "wakeup", "wanted")

    def __init__(self, phys: PhysMem, stats: SfBufStat, sfstat: SfStat, nsfbufs: int = 0) -> None:
        if nsfbufs < 0:
            raise ValueError(f"nsfbufs must be >= 0, not {nsfbufs}")
        self.phys = phys
        self.stats = stats
        self.sfstat = sfstat
        self.nsfbufs = nsfbufs
        stats.max = nsfbufs
        self.wanted = False  # someone found the pool empty; wake them on the next free
        self.wakeup: Callable[[], None] = _nothing

    def sf_buf_alloc(self, pg: VmPage, flags: int) -> SfBuf | None:
        """Map one page. None only on a bounded pool that is full."""
        st = self.stats
        if self.nsfbufs and st.in_use >= self.nsfbufs:
            self.wanted = True
            if flags & SFB_NOWAIT:
                st.denied += 1
                self.sfstat.allocfail += 1
                return None
            # A sleeping allocation would wait for a free sf_buf; the model's callers
            # that may sleep retry later, so count the wait and fail the same way.
            st.delayed += 1
            self.sfstat.allocwait += 1
            return None
        st.in_use += 1
        st.total += 1
        if st.in_use > st.peak:
            st.peak = st.in_use
        return SfBuf(pg, self.phys.phys_view(pg.phys_addr))

    def sf_buf_free(self, sf: SfBuf) -> None:
        kassert(not sf.freed, "sf_buf_free: double free")
        sf.freed = True
        self.stats.in_use -= 1
        if self.wanted:
            self.wanted = False
            self.wakeup()

    def available(self) -> int | None:
        """sf_bufs that can be had now (None: unlimited, direct map)."""
        if not self.nsfbufs:
            return None
        return self.nsfbufs - self.stats.in_use


def sf_buf_kva(sf: SfBuf) -> memoryview:
    return sf.kva


def sf_buf_page(sf: SfBuf) -> VmPage:
    return sf.page
