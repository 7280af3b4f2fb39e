"""The dev.netmap sysctls as nodes of the kernel's sysctl tree.

The allocator's knobs (`NetmapSysctl`, netmap_mem2.py) are read when a
region is made (`NetmapMem.__init__`, from `netmap_mem_new`): a change takes
effect with the next region allocated, the next private allocator or the
first port of an empty one. Regions already made keep their pools and sizes,
so a process that has mapped one sees no change. The netmap counters
(NetmapStat) are read-only nodes under dev.netmap.counters (a nomapd name:
netmap keeps no such statistics).

Bounds: netmap_mem2.c's netmap_config_obj_allocator rounds an object size up
to a cache line and refuses a pool that cannot hold one object; here a size is
refused (EINVAL) unless it is a multiple of NM_LINE (64) within the bounds
below, and a ring must hold at least NM_MIN_SLOTS slots, as the kernel's
ring sizes do. Deliberate difference: netmap rounds a bad size, the model
refuses it, so that `sysctl` says what was stored.

Models: sys/dev/netmap/netmap_mem2.c (SYSCTL_INT(_dev_netmap, ..., buf_size,
buf_num, ring_size, ring_num, if_size, if_num)). dev.netmap.no_timestamp is
not a node: the model sets no timestamps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from mbuf.kern_sysctl import Sysctl
from netmap.netmap_h import NETMAP_RING, NETMAP_SLOT
from netmap.netmap_kern import Netmap
from netmap.netmap_mem2 import NETMAP_BUF_MAX_NUM, NetmapSysctl

NM_LINE: Final = 64  # netmap_mem2.c's LINE_ROUND
NM_MIN_SLOTS: Final = 64  # the smallest ring a port is given
NM_OBJ_MAX: Final = 1 << 20  # the largest object of any pool, in bytes
NM_POOL_MAX: Final = 1 << 16  # the most ifs or rings in a region


def _line(v: int) -> None:
    if v % NM_LINE:
        raise ValueError(f"{v} is not a multiple of {NM_LINE}")


def _ring_size(v: int) -> None:
    _line(v)
    if (v - NETMAP_RING.size) // NETMAP_SLOT.size < NM_MIN_SLOTS:
        raise ValueError(f"a ring of {v} bytes holds fewer than {NM_MIN_SLOTS} slots")


def _setter(
    sc: NetmapSysctl, field: str, check: Callable[[int], None] | None
) -> Callable[[int], None]:
    def set(v: int) -> None:
        if check is not None:
            check(v)
        setattr(sc, field, v)

    return set


def _getter(sc: NetmapSysctl, field: str) -> Callable[[], int]:
    def get() -> int:
        v: int = getattr(sc, field)
        return v

    return get


# name, description, check, lo, hi
_KNOBS: Final = (
    ("buf_size", "Size of the packet buffers (next region)", _line, NM_LINE, NM_OBJ_MAX),
    ("buf_num", "Number of packet buffers (next region)", None, 4, NETMAP_BUF_MAX_NUM),
    ("ring_size", "Size of a ring object in bytes (next region)", _ring_size,
     NETMAP_RING.size + NM_MIN_SLOTS * NETMAP_SLOT.size, NM_OBJ_MAX),
    ("ring_num", "Number of ring objects (next region)", None, 2, NM_POOL_MAX),
    ("if_size", "Size of a netmap_if object in bytes (next region)", _line, NM_LINE, NM_OBJ_MAX),
    ("if_num", "Number of netmap_if objects (next region)", None, 1, NM_POOL_MAX),
)  # fmt: skip


def netmap_sysctl_init(tree: Sysctl, nm: Netmap) -> None:
    """dev.netmap.*: the allocator's knobs and the counters."""
    sc = nm.sysctl
    for field, descr, check, lo, hi in _KNOBS:
        tree.add_int(f"dev.netmap.{field}", descr, _getter(sc, field),
                     _setter(sc, field, check), lo, hi)  # fmt: skip
    tree.add_counters(nm.stats, [k for k, _ in nm.stats.items()])
