"""Physical memory: page frames, their vm_page structures and the free list.

Theory of operation. Just far enough for the network data path. Memory is one
anonymous mmap of `--phys-mem` bytes; a page frame's physical address is
`PHYS_BASE + frame * PAGE_SIZE`, and `phys_view(pa)` is the direct map
(PHYS_TO_DMAP): a memoryview onto the frame, no copy.

A page is in exactly one of four states, each with its own counter:
  free    on the free list;
  cached  valid file data in a VM object, unwired, on the LRU (evictable);
  wired   referenced by at least one mbuf (file page wired by sendfile, or
          busy under I/O);
  anon    an anonymous page owned by an mbuf (response heads, ciphertext,
          sosend data); anonymous pages are always wired, as the kernel
          allocates them with VM_ALLOC_WIRED|VM_ALLOC_NOOBJ.
`vm.pages_wired` counts both wired file pages and anonymous pages, as the
kernel's v_wire_count does; `vm.pages_anon` counts the anonymous ones.

Models: sys/vm/vm_page.c and sys/vm/vm_phys.c (`vm_page_alloc`,
`vm_page_wire`, `vm_page_unwire`, `vm_page_free`, `vm_wait`).

Deliberate differences: the kernel's page allocator is SMP-safe. Here every
allocation and free happens on the thread that runs the event loop (KTLS
workers get their destination pages allocated for them before they start), so
no lock is needed.
"""

from __future__ import annotations

import mmap
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from mbuf.counters import VmStat
from mbuf.kassert import kassert, kpanic
from mbuf.param import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PHYS_BASE

if TYPE_CHECKING:
    from mbuf.vm_object import VmObject


def _nothing() -> None:
    return None


def pages_contiguous(pa: list[int]) -> bool:
    """Whether the page vector `pa` is one physically contiguous ascending run."""
    n = len(pa)
    if n < 2:
        return True
    expect = pa[0]
    if pa[-1] - expect != (n - 1) * PAGE_SIZE:
        return False
    for a in pa:
        if a != expect:
            return False
        expect += PAGE_SIZE
    return True


class VmPage:
    """struct vm_page: one per page frame."""

    __slots__ = ("anon", "object", "phys_addr", "pindex", "valid", "wire_count")

    def __init__(self, phys_addr: int) -> None:
        self.phys_addr = phys_addr
        self.object: VmObject | None = None
        self.pindex = 0
        self.wire_count = 0
        self.valid = False
        self.anon = False

    def __repr__(self) -> str:
        return (
            f"VmPage(pa={self.phys_addr:#x}, wire={self.wire_count}, "
            f"valid={self.valid}, anon={self.anon})"
        )


class PhysMem:
    """The machine's physical memory and page allocator."""

    __slots__ = (
        "_free",
        "_lru",
        "_mem",
        "_run_frames",
        "_runs",
        "dmap",
        "npages",
        "pages",
        "reserved",
        "stats",
        "vm_wakeup",
        "vm_wanted",
    )

    def __init__(self, size: int, stats: VmStat) -> None:
        if size < 64 * PAGE_SIZE:
            raise ValueError(f"physical memory of {size} bytes is below the 64-page minimum")
        self.npages = size // PAGE_SIZE
        self._mem = mmap.mmap(-1, self.npages * PAGE_SIZE)
        self.dmap = memoryview(self._mem)
        self.pages = [VmPage(PHYS_BASE + (i << PAGE_SHIFT)) for i in range(self.npages)]
        # Pop from the end: low frames first, which makes small runs readable.
        self._free = list(range(self.npages - 1, -1, -1))
        # Free contiguous runs by length (start frames). Deliberate simplification:
        # the kernel's vm_phys keeps free pages in buddy queues by power-of-two
        # order and merges neighbours; the model only caches what was freed as a
        # run, so a record's ciphertext pages come back out as one run (one DMA
        # segment). Singles never split a cached run until single frames run out.
        self._runs: dict[int, list[int]] = {}
        self._run_frames = 0
        # Unwired valid file pages in least-recently-used order (the inactive queue).
        self._lru: OrderedDict[VmPage, None] = OrderedDict()
        self.stats = stats
        # vm_wait / vm_page_free_wakeup: an allocation that found no page sets
        # vm_wanted; the next page that becomes free or evictable calls vm_wakeup
        # (the owner of the event loop wakes its waiters there).
        self.vm_wanted = False
        self.vm_wakeup: Callable[[], None] = _nothing
        # Frames promised to KTLS for the ciphertext of file pages already wired
        # (see reserve()); ordinary allocations cannot take them.
        self.reserved = 0
        stats.pages_total = self.npages
        stats.pages_free = self.npages

    # -- address translation -------------------------------------------------

    def phys_to_vm_page(self, pa: int) -> VmPage:
        return self.pages[(pa - PHYS_BASE) >> PAGE_SHIFT]

    def phys_view(self, pa: int, off: int = 0, length: int = PAGE_SIZE) -> memoryview:
        """PHYS_TO_DMAP: a view of `length` bytes at `off` within the page at `pa`."""
        if pa & PAGE_MASK or off < 0 or off + length > PAGE_SIZE:
            kassert(pa & PAGE_MASK == 0, "phys_view: unaligned page address %#x", pa)
            kpanic("phys_view: %s+%s leaves the page", off, length)
        base = pa - PHYS_BASE + off
        return self.dmap[base : base + length]

    # -- allocation ----------------------------------------------------------

    def vm_wait(self) -> None:
        """Note that an allocation had to wait for memory (vm_wait)."""
        self.vm_wanted = True
        self.stats.waits += 1

    def _page_freed(self) -> None:
        if self.vm_wanted:
            self.vm_wanted = False
            self.vm_wakeup()

    def free_count(self) -> int:
        """Pages an unreserved allocation could obtain now (free plus evictable,
        less what is reserved)."""
        return len(self._free) + self._run_frames + len(self._lru) - self.reserved

    def _refill(self, n: int) -> None:
        """Make n single free frames available: split cached runs, then evict."""
        free = self._free
        runs = self._runs
        while len(free) < n and self._run_frames:
            for size, starts in runs.items():
                if starts:
                    start = starts.pop()
                    free.extend(range(start + size - 1, start - 1, -1))  # pops ascending
                    self._run_frames -= size
                    break
        while len(free) < n:
            kassert(self._lru, "reservation exceeds free and evictable pages")
            self._evict_one()

    def reserve(self, n: int) -> bool:
        """Set n frames aside for later `page_alloc_anon(reserved=True)`; all or nothing.

        Deliberate difference: the kernel allocates KTLS ciphertext pages when it
        encrypts, sleeping in vm_wait if need be; with the model's small memories
        every connection could then hold plaintext pages it cannot encrypt, and
        none could progress. sendfile reserves the ciphertext frames when it wires
        the plaintext, so a batch either has both or waits holding nothing."""
        if n < 0 or self.free_count() < n:
            return False
        self.reserved += n
        self.stats.pages_reserved = self.reserved
        return True

    def unreserve(self, n: int) -> None:
        kassert(0 <= n <= self.reserved, "unreserve: %s of %s reserved", n, self.reserved)
        self.reserved -= n
        self.stats.pages_reserved = self.reserved
        if n:
            self._page_freed()

    def _grab_frame(self, reserved: bool = False) -> VmPage | None:
        if reserved:
            kassert(self.reserved > 0, "page allocation from an empty reservation")
            self.reserved -= 1
            self.stats.pages_reserved = self.reserved
        elif self.free_count() <= 0:
            return None
        if not self._free:
            self._refill(1)
        frame = self._free.pop()
        self.stats.pages_free -= 1
        return self.pages[frame]

    def _evict_one(self) -> None:
        pg, _ = self._lru.popitem(last=False)
        kassert(pg.wire_count == 0 and pg.object is not None, "evicting busy page %s", pg)
        obj = pg.object
        assert obj is not None
        obj.page_remove(pg)
        pg.object = None
        pg.valid = False
        self.stats.pages_cached -= 1
        self.stats.evictions += 1
        self._free.append((pg.phys_addr - PHYS_BASE) >> PAGE_SHIFT)
        self.stats.pages_free += 1

    def page_alloc_anon(self, reserved: bool = False) -> VmPage | None:
        """vm_page_alloc(NULL, 0, VM_ALLOC_NOOBJ|VM_ALLOC_WIRED): None when memory is
        short. `reserved` takes a frame set aside by reserve() (never fails)."""
        pg = self._grab_frame(reserved)
        if pg is None:
            return None
        pg.anon = True
        pg.wire_count = 1
        pg.valid = True
        self.stats.pages_anon += 1
        self.stats.pages_wired += 1
        return pg

    def pages_alloc_anon(self, n: int, reserved: bool = False) -> list[int] | None:
        """n anonymous pages at once (page_alloc_anon n times): their physical
        addresses, or None (nothing taken) when memory is short. A cached run of
        exactly n frames is taken whole; otherwise single frames, ascending where
        the free list allows."""
        if reserved:
            kassert(self.reserved >= n, "page allocation of %s from a reservation of %s",
                    n, self.reserved)  # fmt: skip
            self.reserved -= n
            self.stats.pages_reserved = self.reserved
        elif self.free_count() < n:
            return None
        starts = self._runs.get(n) if n > 1 else None
        if starts:
            start = starts.pop()
            self._run_frames -= n
            taken: list[int] | range = range(start, start + n)
        else:
            free = self._free
            if len(free) < n:
                self._refill(n)
            taken = free[: -n - 1 : -1] if n else []
            del free[len(free) - n :]
        pages = self.pages
        out = []
        for frame in taken:
            pg = pages[frame]
            pg.anon = True
            pg.wire_count = 1
            pg.valid = True
            out.append(pg.phys_addr)
        st = self.stats
        st.pages_free -= n
        st.pages_anon += n
        st.pages_wired += n
        return out

    def pages_free_anon(self, pas: list[int]) -> None:
        """page_free_anon for a vector of anonymous pages. A physically contiguous
        vector goes back as one run (handed out again whole); otherwise the frames
        are freed last to first, so the free list gives them out ascending."""
        pages = self.pages
        frames = []
        for pa in pas:
            frame = (pa - PHYS_BASE) >> PAGE_SHIFT
            pg = pages[frame]
            if not pg.anon or pg.wire_count != 1:
                kpanic("page_free_anon: %s", pg)
            pg.anon = False
            pg.wire_count = 0
            pg.valid = False
            frames.append(frame)
        n = len(pas)
        if n > 1 and pages_contiguous(pas):
            self._runs.setdefault(n, []).append(frames[0])
            self._run_frames += n
        else:
            frames.reverse()
            self._free.extend(frames)
        st = self.stats
        st.pages_anon -= n
        st.pages_wired -= n
        st.pages_free += n
        if n:
            self._page_freed()

    def pages_unwire(self, pas: list[int]) -> None:
        """page_unwire for a vector of (file) pages, in order."""
        pages = self.pages
        lru = self._lru
        cached = 0
        for pa in pas:
            pg = pages[(pa - PHYS_BASE) >> PAGE_SHIFT]
            wc = pg.wire_count
            if wc > 1 and not pg.anon:
                pg.wire_count = wc - 1
            elif wc == 1 and pg.valid and not pg.anon and pg.object is not None and pg.object.live:
                pg.wire_count = 0  # the common last unwiring: back on the inactive queue
                lru[pg] = None
                cached += 1
            else:
                self.page_unwire(pg)
        if cached:
            st = self.stats
            st.pages_wired -= cached
            st.pages_cached += cached
            self._page_freed()

    def page_free_anon(self, pg: VmPage) -> None:
        """vm_page_unwire_noq + vm_page_free of an anonymous page."""
        kassert(pg.anon and pg.wire_count == 1, "page_free_anon: %s", pg)
        pg.anon = False
        pg.wire_count = 0
        pg.valid = False
        self.stats.pages_anon -= 1
        self.stats.pages_wired -= 1
        self._free.append((pg.phys_addr - PHYS_BASE) >> PAGE_SHIFT)
        self.stats.pages_free += 1
        self._page_freed()

    def page_alloc_object(self, obj: VmObject, pindex: int) -> VmPage | None:
        """vm_page_alloc(obj, pindex, VM_ALLOC_WIRED): a new, invalid, wired file page."""
        pg = self._grab_frame()
        if pg is None:
            return None
        pg.object = obj
        pg.pindex = pindex
        pg.valid = False
        pg.wire_count = 1
        self.stats.pages_wired += 1
        obj.page_insert(pg)
        return pg

    def page_wire_try(self, pg: VmPage) -> bool:
        """Wire a page unless that would take the last unreserved evictable frame."""
        if pg.wire_count == 0 and self.free_count() <= 0:
            return False
        self.page_wire(pg)
        return True

    def page_wire(self, pg: VmPage) -> None:
        if pg.wire_count == 0:
            self._lru.pop(pg, None)
            if pg.valid:
                self.stats.pages_cached -= 1
            self.stats.pages_wired += 1
        pg.wire_count += 1

    def page_unwire(self, pg: VmPage) -> None:
        """vm_page_release: drop one wiring; a valid page stays cached, an invalid one is freed."""
        kassert(pg.wire_count > 0 and not pg.anon, "page_unwire: %s", pg)
        pg.wire_count -= 1
        if pg.wire_count:
            return
        self.stats.pages_wired -= 1
        if pg.valid and pg.object is not None and pg.object.live:
            self._lru[pg] = None
            self.stats.pages_cached += 1
            self._page_freed()
            return
        if pg.object is not None:
            pg.object.page_remove(pg)
            pg.object = None
        pg.valid = False
        self._free.append((pg.phys_addr - PHYS_BASE) >> PAGE_SHIFT)
        self.stats.pages_free += 1
        self._page_freed()

    def page_validate(self, pg: VmPage) -> None:
        """Mark a wired page's contents valid (I/O done)."""
        pg.valid = True

    def object_flush(self, obj: VmObject) -> None:
        """Drop every unwired cached page of an object (file replaced or removed)."""
        freed = False
        for pg in list(obj.pages.values()):
            if pg.wire_count == 0:
                self._lru.pop(pg, None)
                obj.page_remove(pg)
                pg.object = None
                if pg.valid:
                    self.stats.pages_cached -= 1
                pg.valid = False
                self._free.append((pg.phys_addr - PHYS_BASE) >> PAGE_SHIFT)
                self.stats.pages_free += 1
                freed = True
        if freed:
            self._page_freed()

    def close(self) -> None:
        """Release the arena; every page must be free or cached."""
        self.dmap.release()
        self._mem.close()
