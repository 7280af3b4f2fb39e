"""The netmap counter group: one plain dataclass of integers, bumped where things happen.

Theory of operation. Like the bpf group (bpf/bpfdesc.py's BpfStat), the group
names itself ("netmap.") in `items()` rather than through mbuf/counters.py's
PREFIXES table, which lists the groups of the data path's own Counters. The
allocator (netmap_mem2.py) and the ports bump the same object; `leaks()` lists
the `_in_use` counters (and the running kernel loops) that must be back to zero
when every file is closed.

Models: nothing in netmap directly (it keeps no such statistics); the shape is
the project's counter groups (mbuf/counters.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(slots=True)
class NetmapStat:
    """Counters of one netmap subsystem (/stats group "netmap")."""

    privs_in_use: int = 0  # open /dev/netmap files
    ports_in_use: int = 0  # adapters alive (pipe ends, null ports, monitors)
    regions_in_use: int = 0  # allocators alive, each with its region
    region_bytes: int = 0
    ifs_in_use: int = 0  # netmap_if objects
    rings_in_use: int = 0  # netmap_ring objects
    bufs_in_use: int = 0  # buffers (ring slots and extra buffers)
    kloops_running: int = 0  # SYNC_KLOOP_START loops not yet stopped
    registers: int = 0  # NETMAP_REQ_REGISTER accepted
    requests_failed: int = 0  # NIOCCTRL answered with an errno
    options_unknown: int = 0  # options left EOPNOTSUPP
    txsync_ioctl: int = 0  # ring txsyncs by NIOCTXSYNC or poll
    rxsync_ioctl: int = 0  # ring rxsyncs by NIOCRXSYNC or poll
    txsync_kloop: int = 0  # ring txsyncs by a kernel loop
    rxsync_kloop: int = 0  # ring rxsyncs by a kernel loop
    kloop_iterations: int = 0  # sync_kloop_step calls
    slots_moved: int = 0  # slots a sync passed on (TX to the peer, RX released)
    ring_reinits: int = 0  # syncs refused by a prologue (netmap_ring_reinit)
    tail_restored: int = 0  # user-written tails put back
    pipes_created: int = 0  # pipe pairs
    extra_bufs_granted: int = 0
    bad_buf_frees: int = 0  # slot or list entries naming no buffer in use, at close
    monitor_frames: int = 0  # frames copied into monitor rings
    monitor_drops: int = 0  # ... not copied: the monitor ring was full
    monitor_truncated: int = 0  # ... cut to the buffer size

    def items(self) -> list[tuple[str, int]]:
        return [(f"netmap.{f.name}", getattr(self, f.name)) for f in fields(self)]

    def leaks(self) -> dict[str, int]:
        """The counters that must be zero once every file is closed, when not zero."""
        out: dict[str, int] = {}
        for name in (
            "privs_in_use",
            "ports_in_use",
            "regions_in_use",
            "region_bytes",
            "ifs_in_use",
            "rings_in_use",
            "bufs_in_use",
            "kloops_running",
        ):
            v = int(getattr(self, name))
            if v:
                out[f"netmap.{name}"] = v
        return out
