"""The kernel's netmap structures: krings, adapters, open files, the subsystem.

Theory of operation. A port (`NetmapAdapter`) has TX and RX krings; each kring
(`NetmapKring`) shadows one `netmap_ring` of the shared region with the
kernel's own copies of the ring pointers: `nr_hwcur` (head at the last sync),
`nr_hwtail` (first slot the kernel owns) and the validated `rhead`, `rcur`,
`rtail` the sync prologues produce. An open /dev/netmap is a `NetmapPrivD`: the
port it is bound to, the ring range of the binding (`np_qfirst` / `np_qlast`),
its `netmap_if` in the region, its extra buffers, its CSB and its kernel loop.
`Netmap` is the subsystem of one worker: knobs, allocators by `nr_mem_id`,
ports by name, interfaces monitors may watch, and counters.

The slots of a ring are read and written through a NumPy structured view of
the region (`SLOT_DTYPE`, struct netmap_slot), so a sync moves a run of slot
descriptors with one slice assignment, never a Python loop per slot.

Models: sys/dev/netmap/netmap_kern.h (struct netmap_kring, netmap_adapter,
netmap_priv_d, nm_next, nm_sync_finalize), netmap(4)'s dev.netmap sysctls.

Deliberate differences: one kring per ring, no host rings (no port here is a
NIC in netmap mode: the server keeps nm0), no locks (a sync and the kernel loop
are serialised by the device layer, see netmap/netmap_kloop.py), no timestamps
unless asked (`NR_TIMESTAMP` is accepted; `ts` stays 0).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from typing import Any, Final

import numpy as np

from netmap.netmap_counters import NetmapStat
from netmap.netmap_h import NETMAP_RING, NETMAP_RING_OFF, NR_TX
from netmap.netmap_mem2 import (
    NetmapMem,
    NetmapSysctl,
    RegionAlloc,
    RegionFree,
    default_region_alloc,
)

SLOT_DTYPE: Final = np.dtype([("buf_idx", "=u4"), ("len", "=u2"), ("flags", "=u2"), ("ptr", "=u8")])
RING_PTRS: Final = struct.Struct("=III")  # head, cur, tail
U32_S: Final = struct.Struct("=I")
HEAD_OFF: Final = NETMAP_RING_OFF["head"]
TAIL_OFF: Final = NETMAP_RING_OFF["tail"]


class NetmapKring:
    """struct netmap_kring: the kernel's side of one ring."""

    __slots__ = (
        "kr_kloop_syncs",
        "kr_reinits",
        "kr_slots",
        "kr_syncs",
        "mem",
        "na",
        "name",
        "nkr_num_slots",
        "nr_hwcur",
        "nr_hwtail",
        "pipe",
        "pipe_tail",
        "rcur",
        "rhead",
        "ring_id",
        "ring_ofs",
        "rtail",
        "slot_base",
        "slot_flags",
        "slots",
        "tx",
        "users",
    )

    def __init__(
        self, na: NetmapAdapter, tx: int, ring_id: int, num_slots: int, ring_ofs: int
    ) -> None:
        mem = na.mem
        self.na = na
        self.mem = mem
        self.tx = tx  # NR_TX or NR_RX
        self.ring_id = ring_id
        self.name = f"{na.name} {'TX' if tx == NR_TX else 'RX'}{ring_id}"
        self.nkr_num_slots = num_slots
        self.ring_ofs = ring_ofs
        base = ring_ofs + NETMAP_RING.size
        # The slot array, a view of the region (struct netmap_slot slot[]).
        self.slots: Any = np.frombuffer(mem.view, dtype=SLOT_DTYPE, count=num_slots, offset=base)
        self.slot_flags: Any = self.slots["flags"]  # the field view, made once
        self.slot_base = base  # region offset of slot 0
        # Initial state (B.6): TX head = cur = 0, tail = n - 1; RX all 0.
        self.nr_hwcur = 0
        self.nr_hwtail = num_slots - 1 if tx == NR_TX else 0
        self.rhead = 0
        self.rcur = 0
        self.rtail = self.nr_hwtail
        self.pipe: NetmapKring | None = None  # a pipe's peer kring (crossed)
        self.pipe_tail = self.nr_hwtail  # where the peer left this ring's tail
        self.users = 0  # bindings of this ring (exclusive per file here)
        self.kr_syncs = 0
        self.kr_slots = 0
        self.kr_reinits = 0
        self.kr_kloop_syncs = 0
        NETMAP_RING.pack_into(
            mem.view,
            ring_ofs,
            mem.buf_pool.offset - ring_ofs,  # buf_ofs: buffers seen from this ring
            num_slots,
            mem.buf_pool.objsize,
            ring_id,
            tx,
            0,
            0,
            self.nr_hwtail,
            0,
            0,
            0,
            0,
            0,
            b"",
        )

    def ring_ptrs(self) -> tuple[int, int, int]:
        """head, cur, tail as the user left them in the shared ring."""
        h, c, t = RING_PTRS.unpack_from(self.na.mem.view, self.ring_ofs + HEAD_OFF)
        return int(h), int(c), int(t)

    def set_ring_ptrs(self, head: int, cur: int, tail: int) -> None:
        RING_PTRS.pack_into(self.na.mem.view, self.ring_ofs + HEAD_OFF, head, cur, tail)

    def set_ring_tail(self, tail: int) -> None:
        U32_S.pack_into(self.na.mem.view, self.ring_ofs + TAIL_OFF, tail)


class NetmapAdapter:
    """struct netmap_adapter: one port. Subclasses give the syncs and the
    life cycle (netmap/netmap_pipe.py, netmap_null.py, netmap_monitor.py)."""

    __slots__ = (
        "mem",
        "na_flags",
        "na_users",
        "name",
        "nm",
        "rx_rings",
        "tx_rings",
    )

    def __init__(self, nm: Netmap, name: str, mem: NetmapMem) -> None:
        self.nm = nm
        self.name = name
        self.mem = mem
        self.tx_rings: list[NetmapKring] = []
        self.rx_rings: list[NetmapKring] = []
        self.na_users = 0  # files bound to it
        self.na_flags = 0
        nm.stats.ports_in_use += 1

    def krings(self, t: int) -> list[NetmapKring]:
        return self.tx_rings if t == NR_TX else self.rx_rings

    def nm_txsync(self, kring: NetmapKring) -> None:
        """Pass [nr_hwcur, rhead) on, advance nr_hwcur to rhead and nr_hwtail."""
        raise NotImplementedError

    def nm_rxsync(self, kring: NetmapKring) -> None:
        """Take back [nr_hwcur, rhead), report new slots through nr_hwtail."""
        raise NotImplementedError

    def nm_unbind(self) -> None:
        """The last file bound to the port went away: free what the port holds."""
        raise NotImplementedError

    def make_ring(self, tx: int, ring_id: int, num_slots: int, with_bufs: bool) -> NetmapKring:
        """A ring object in the port's region, and its kring; `with_bufs`: a fresh
        buffer in every slot (OSError ENOMEM when the pools run out)."""
        ofs = self.mem.ring_malloc()
        if ofs < 0:
            raise OSError(errno.ENOMEM, f"no ring object left in region {self.mem.nm_id}")
        kring = NetmapKring(self, tx, ring_id, num_slots, ofs)
        self.krings(tx).append(kring)
        if with_bufs:
            idx = [self.mem.buf_malloc() for _ in range(num_slots)]
            if idx and min(idx) == 0:
                for i in idx:
                    if i:
                        self.mem.buf_free(i)
                kring.slots["buf_idx"][:] = 0
                raise OSError(errno.ENOMEM, f"no buffers left in region {self.mem.nm_id}")
            kring.slots["buf_idx"][:] = idx
        return kring

    def free_rings(self, free_bufs: list[NetmapKring]) -> None:
        """Free every ring object, and the buffers the slots of `free_bufs` hold
        now (the user may have swapped them: a slot naming no buffer in use is
        counted, not freed)."""
        mem = self.mem
        st = self.nm.stats
        for kring in free_bufs:
            for i in kring.slots["buf_idx"].tolist():
                if not mem.buf_free(int(i)):
                    st.bad_buf_frees += 1
        for kring in self.tx_rings + self.rx_rings:
            kring.slots = None
            kring.slot_flags = None
            mem.ring_free(kring.ring_ofs)
        self.tx_rings = []
        self.rx_rings = []


class NetmapPrivD:
    """struct netmap_priv_d: one open /dev/netmap."""

    __slots__ = (
        "nm",
        "np_csb_atok",
        "np_csb_ktoa",
        "np_extra_head",
        "np_flags",
        "np_kloop",
        "np_na",
        "np_nifp",
        "np_pid",
        "np_qfirst",
        "np_qlast",
        "np_sync_flags",
    )

    def __init__(self, nm: Netmap, pid: int) -> None:
        self.nm = nm
        self.np_pid = pid
        self.np_na: NetmapAdapter | None = None  # the bound port
        self.np_nifp = -1  # region offset of its netmap_if (-1: not bound)
        self.np_qfirst = [0, 0]  # first TX / RX ring of the binding
        self.np_qlast = [0, 0]  # one past the last
        self.np_flags = 0  # nr_flags of the registration
        self.np_sync_flags = 0
        self.np_extra_head = 0  # ni_bufs_head as registration wrote it
        self.np_csb_atok = -1  # region offsets of the CSB arrays (-1: no CSB)
        self.np_csb_ktoa = -1
        self.np_kloop: Any = None  # netmap_kloop.SyncKloop while a loop runs
        nm.stats.privs_in_use += 1


class Netmap:
    """The netmap subsystem of one modeled kernel (one worker)."""

    __slots__ = (
        "ifnets",
        "mems",
        "next_mem_id",
        "notify",
        "pipe_parents",
        "ports",
        "region_alloc",
        "region_free",
        "stats",
        "sysctl",
    )

    def __init__(
        self,
        region_alloc: RegionAlloc = default_region_alloc,
        region_free: RegionFree | None = None,
    ) -> None:
        self.sysctl = NetmapSysctl()
        self.stats = NetmapStat()
        self.mems: dict[int, NetmapMem] = {}  # allocators by nr_mem_id
        self.next_mem_id = 2  # 1 is the global allocator (the interfaces')
        self.ports: dict[str, NetmapAdapter] = {}  # named ports alive
        self.pipe_parents: dict[str, Any] = {}  # netmap_pipe.PipeParent by parent name
        self.ifnets: dict[str, Any] = {}  # netmap_monitor.NetmapIfTap by interface name
        # The device layer's region maker (a memfd mapping) and its release.
        self.region_alloc = region_alloc
        self.region_free = region_free
        # nm_notify's reach: the device layer learns that the kernel moved a
        # ring's hwtail (a pipe's peer sent, a monitor copied), to wake pollers.
        self.notify: Callable[[NetmapKring], None] | None = None

    def statistics(self) -> NetmapStat:
        """The counters (the allocators bump theirs in the same group)."""
        return self.stats


# -- allocators by nr_mem_id (netmap_mem_get / netmap_mem_put / netmap_mem_find) --


def netmap_mem_new(nm: Netmap, nm_id: int = 0) -> NetmapMem:
    """A new allocator with its region, one reference held by the caller.
    nm_id 0: the next private id."""
    if not nm_id:
        nm_id = nm.next_mem_id
        nm.next_mem_id += 1
    mem = NetmapMem(nm_id, nm.sysctl, nm.stats, nm.region_alloc, nm.region_free)
    nm.mems[nm_id] = mem
    return mem


def netmap_mem_find(nm: Netmap, nm_id: int) -> NetmapMem:
    """The allocator `nm_id` names; EINVAL when none exists."""
    mem = nm.mems.get(nm_id)
    if mem is None:
        raise OSError(errno.EINVAL, f"no memory region {nm_id}")
    return mem


def netmap_mem_get(mem: NetmapMem) -> NetmapMem:
    mem.nm_refcount += 1
    return mem


def netmap_mem_put(nm: Netmap, mem: NetmapMem) -> None:
    """Drop a reference; the last one frees the region."""
    mem.nm_refcount -= 1
    if mem.nm_refcount == 0:
        del nm.mems[mem.nm_id]
        mem.destroy()
