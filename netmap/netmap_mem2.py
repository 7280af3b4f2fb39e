"""The netmap memory allocator: one shared region per allocator, three pools.

Theory of operation. An allocator (`NetmapMem`, `nm_mem_id`) owns one region
laid out as netmap_mem2.c lays it out: the pool of `netmap_if` objects, then the
pool of `netmap_ring` objects, then the buffer pool (`buf_num` buffers of
`buf_size` bytes). Every reference into it is an offset or a buffer index, so
the same bytes mean the same thing to the kernel and to a process that maps the
region. Each pool keeps a bitmap free list (`uint32_t` words, a set bit is a
free object, as `p->bitmap`); buffers 0 and 1 are reserved at creation (0
doubles as "no buffer" and the end of an extra-buffer list). Extra buffers are
a list linked through the first 4 bytes of each buffer, from `ni_bufs_head`.

The region's bytes come from the device layer (`Netmap.region_alloc`, a
memoryview: a memfd mapped by the server and, later, by the user process); by
default a bytearray. A region has users (adapters holding a reference); the
last one to leave frees it (`netmap_mem_put`), and the counters follow.

Models: sys/dev/netmap/netmap_mem2.c (struct netmap_obj_pool, netmap_obj_malloc
/ netmap_obj_free, netmap_new_bufs, netmap_extra_alloc, netmap_free_buf(s),
netmap_mem_get / netmap_mem_put, the if / ring / buf pools and their sysctls).

Deliberate differences: the knobs are per subsystem and apply to every region
(netmap has global `dev.netmap.*` and private `dev.netmap.priv_*` sizes); the
defaults are smaller than netmap's 163840 buffers (a region is Python memory).
Pools are not split in clusters and pages (no `_clustsize`), so a region is one
contiguous range; `buf_num`, `ring_num` and `if_num` are exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from mbuf.kassert import kassert
from netmap.netmap_counters import NetmapStat
from netmap.netmap_h import NETMAP_RING, NETMAP_SLOT

# Defaults of the dev.netmap.* knobs for a region (see the module head).
NETMAP_BUF_SIZE: Final = 2048  # dev.netmap.buf_size
NETMAP_BUF_NUM: Final = 16384  # dev.netmap.buf_num (netmap: 163840)
NETMAP_RING_SIZE: Final = 9 * 4096  # dev.netmap.ring_size: 2048 slots fit
NETMAP_RING_NUM: Final = 64  # dev.netmap.ring_num
NETMAP_IF_SIZE: Final = 1024  # dev.netmap.if_size
NETMAP_IF_NUM: Final = 16  # dev.netmap.if_num
NETMAP_BUF_MAX_NUM: Final = 1 << 20
RESERVED_BUFS: Final = 2  # indexes 0 and 1
U32: Final = 0xFFFFFFFF


class NetmapSysctl:
    """The dev.netmap.* knobs the allocator and the ports read."""

    __slots__ = (
        "buf_num",
        "buf_size",
        "if_num",
        "if_size",
        "no_timestamp",
        "ring_num",
        "ring_size",
    )

    def __init__(self) -> None:
        self.buf_size = NETMAP_BUF_SIZE
        self.buf_num = NETMAP_BUF_NUM
        self.ring_size = NETMAP_RING_SIZE
        self.ring_num = NETMAP_RING_NUM
        self.if_size = NETMAP_IF_SIZE
        self.if_num = NETMAP_IF_NUM
        self.no_timestamp = True  # dev.netmap.no_timestamp (the model has no clock here)

    def max_slots(self) -> int:
        """The most slots a ring object of ring_size bytes holds."""
        return (self.ring_size - NETMAP_RING.size) // NETMAP_SLOT.size


class NetmapObjPool:
    """struct netmap_obj_pool: objtotal objects of objsize bytes at `offset`."""

    __slots__ = ("bitmap", "name", "objfree", "objsize", "objtotal", "offset", "reserved")

    def __init__(self, name: str, offset: int, objsize: int, objtotal: int, reserved: int) -> None:
        self.name = name
        self.offset = offset  # from the start of the region
        self.objsize = objsize
        self.objtotal = objtotal
        self.reserved = reserved  # the first `reserved` objects are never handed out
        words = (objtotal + 31) // 32
        self.bitmap = [U32] * words  # a set bit: free
        tail = objtotal % 32
        if tail:
            self.bitmap[-1] = (1 << tail) - 1
        for i in range(reserved):
            self.bitmap[i >> 5] &= ~(1 << (i & 31))
        self.objfree = objtotal - reserved

    def obj_malloc(self) -> int:
        """netmap_obj_malloc: the lowest free index, or -1 when the pool is empty."""
        if not self.objfree:
            return -1
        bm = self.bitmap
        for w in range(len(bm)):
            word = bm[w]
            if word:
                bit = (word & -word).bit_length() - 1
                bm[w] = word & ~(1 << bit)
                self.objfree -= 1
                return (w << 5) | bit
        kassert(False, "%s: objfree %s but no free bit", self.name, self.objfree)
        return -1

    def is_free(self, idx: int) -> bool:
        return bool(self.bitmap[idx >> 5] >> (idx & 31) & 1)

    def valid(self, idx: int) -> bool:
        """An index that may be freed: in range, not reserved, in use."""
        return self.reserved <= idx < self.objtotal and not self.is_free(idx)

    def obj_free(self, idx: int) -> None:
        """netmap_obj_free: give object idx back (it must be in use)."""
        kassert(self.valid(idx), "%s: free of index %s not in use", self.name, idx)
        self.bitmap[idx >> 5] |= 1 << (idx & 31)
        self.objfree += 1

    def ofs(self, idx: int) -> int:
        """Offset of object idx in the region."""
        return self.offset + idx * self.objsize


RegionAlloc = Callable[[int], memoryview]
RegionFree = Callable[[memoryview], None]


def default_region_alloc(size: int) -> memoryview:
    return memoryview(bytearray(size))


class NetmapMem:
    """struct netmap_mem_d: one allocator, its region and its pools."""

    __slots__ = (
        "buf_pool",
        "if_pool",
        "nm_id",
        "nm_memsize",
        "nm_refcount",
        "region_free",
        "ring_pool",
        "stats",
        "view",
    )

    def __init__(
        self,
        nm_id: int,
        sysctl: NetmapSysctl,
        stats: NetmapStat,
        region_alloc: RegionAlloc,
        region_free: RegionFree | None,
    ) -> None:
        self.nm_id = nm_id
        self.stats = stats
        off = 0
        self.if_pool = NetmapObjPool("if", off, sysctl.if_size, sysctl.if_num, 0)
        off += sysctl.if_size * sysctl.if_num
        self.ring_pool = NetmapObjPool("ring", off, sysctl.ring_size, sysctl.ring_num, 0)
        off += sysctl.ring_size * sysctl.ring_num
        self.buf_pool = NetmapObjPool("buf", off, sysctl.buf_size, sysctl.buf_num, RESERVED_BUFS)
        off += sysctl.buf_size * sysctl.buf_num
        self.nm_memsize = off
        view = region_alloc(off)
        kassert(len(view) >= off, "region of %s bytes for %s", len(view), off)
        self.view = view.cast("B") if view.format != "B" else view
        self.region_free = region_free
        self.nm_refcount = 1  # the creator's reference
        stats.regions_in_use += 1
        stats.region_bytes += off

    # -- objects ----------------------------------------------------------------

    def _obj_zalloc(self, pool: NetmapObjPool) -> int:
        """An object of `pool`, zeroed: its offset, or -1 when the pool is empty."""
        i = pool.obj_malloc()
        if i < 0:
            return -1
        ofs = pool.ofs(i)
        self.view[ofs : ofs + pool.objsize] = bytes(pool.objsize)
        return ofs

    def if_malloc(self) -> int:
        """A netmap_if object's offset, zeroed; -1 when the pool is exhausted."""
        ofs = self._obj_zalloc(self.if_pool)
        if ofs >= 0:
            self.stats.ifs_in_use += 1
        return ofs

    def if_free(self, ofs: int) -> None:
        self.if_pool.obj_free((ofs - self.if_pool.offset) // self.if_pool.objsize)
        self.stats.ifs_in_use -= 1

    def ring_malloc(self) -> int:
        """A netmap_ring object's offset, zeroed; -1 when the pool is exhausted."""
        ofs = self._obj_zalloc(self.ring_pool)
        if ofs >= 0:
            self.stats.rings_in_use += 1
        return ofs

    def ring_free(self, ofs: int) -> None:
        self.ring_pool.obj_free((ofs - self.ring_pool.offset) // self.ring_pool.objsize)
        self.stats.rings_in_use -= 1

    def buf_malloc(self) -> int:
        """netmap_new_bufs' unit: a buffer index, or 0 when none is left."""
        i = self.buf_pool.obj_malloc()
        if i < 0:
            return 0
        self.stats.bufs_in_use += 1
        return i

    def buf_free(self, idx: int) -> bool:
        """netmap_free_buf: False (and nothing done) for an index that is not a
        buffer in use (reserved, out of range, already free): the user may
        have written anything into a slot or a list link."""
        if not self.buf_pool.valid(idx):
            return False
        self.buf_pool.obj_free(idx)
        self.stats.bufs_in_use -= 1
        return True

    def buf_ofs(self, idx: int) -> int:
        return self.buf_pool.ofs(idx)

    def buf(self, idx: int) -> memoryview:
        """The bytes of buffer idx."""
        o = self.buf_pool.ofs(idx)
        return self.view[o : o + self.buf_pool.objsize]

    # -- extra buffers ------------------------------------------------------------

    def extra_alloc(self, n: int) -> tuple[int, int]:
        """netmap_extra_alloc: up to n buffers linked through their first 4 bytes;
        (head index, number granted). The list ends with index 0."""
        head = 0
        got = 0
        view = self.view
        while got < n:
            idx = self.buf_malloc()
            if not idx:
                break
            o = self.buf_pool.ofs(idx)
            view[o : o + 4] = head.to_bytes(4, "little")
            head = idx
            got += 1
        return head, got

    def extra_free(self, head: int) -> tuple[int, int]:
        """netmap_free_bufs over the list from `head` as the user left it: (freed,
        bad links). A link that is not a buffer in use ends the walk (a loop
        ends it too, its second visit finds the buffer free)."""
        freed = 0
        view = self.view
        idx = head
        while idx:
            if not self.buf_pool.valid(idx):
                return freed, 1
            o = self.buf_pool.ofs(idx)
            nxt = int.from_bytes(view[o : o + 4], "little")
            self.buf_free(idx)
            freed += 1
            idx = nxt
        return freed, 0

    # -- references -------------------------------------------------------------

    def destroy(self) -> None:
        """The last user left: every object still allocated goes with the region."""
        st = self.stats
        st.bufs_in_use -= self.buf_pool.objtotal - self.buf_pool.reserved - self.buf_pool.objfree
        st.rings_in_use -= self.ring_pool.objtotal - self.ring_pool.objfree
        st.ifs_in_use -= self.if_pool.objtotal - self.if_pool.objfree
        st.regions_in_use -= 1
        st.region_bytes -= self.nm_memsize
        if self.region_free is not None:
            self.region_free(self.view)
