"""netmap: the modeled kernel's netmap (sans-IO; imports only mbuf).

Theory of operation. netmap as its 2018-2019 API left it (NETMAP_API 14):
shared-memory regions of netmap_ifs, rings and fixed-size buffers referenced
by offsets and indexes; krings shadowing each ring's head / cur / tail with
the sync prologues; the NIOCCTRL control API (and the legacy NIOCREGIF on it);
pipes whose ends share buffers, null ports, copy monitors of an interface, and
the sync kernel loop over a CSB. Each module is named for the netmap file it
models:

  netmap_h.py       net/netmap.h + netmap_legacy.h: layouts, numbers, ring helpers
                    (userland may import this one)
  netmap_mem2.py    dev/netmap/netmap_mem2.c: allocators, regions, pools, extra buffers
  netmap_kern.py    dev/netmap/netmap_kern.h: krings, adapters, files, the subsystem,
                    allocators by nr_mem_id
  netmap_counters.py the netmap counter group (NetmapStat)
  netmap_stats.py   per-ring rows of the open files (Xnetmap)
  netmap_sync.py    netmap.c's sync half: prologues, ring reinit, NIOC*SYNC, poll
  netmap.py         netmap.c's control half: open, register, close, NIOCCTRL, ioctl
  netmap_legacy.py  dev/netmap/netmap_legacy.c: NIOCREGIF / NIOCGINFO translated
  netmap_pipe.py    dev/netmap/netmap_pipe.c
  netmap_null.py    dev/netmap/netmap_null.c
  netmap_monitor.py dev/netmap/netmap_monitor.c (copy monitors of an Ifnet)
  netmap_kloop.py   dev/netmap/netmap_kloop.c: CSB, SYNC_KLOOP start / step / stop
  netmap_sysctl.py  the dev.netmap.* sysctl nodes (buf_num, buf_size, ring_*, if_*)

How the other layers use it:

  device layer (one per worker):
    nm = Netmap(region_alloc=fn, region_free=fn)  # fn(size) -> memoryview of a memfd
    nm.notify = fn                                 # fn(kring): a ring's hwtail moved
    netmap_attach_ifnet(nm, kern.ifnet)            # monitors may watch nm0
    priv = netmap_open(nm, pid)
    netmap_ioctl(priv, cmd, arg_bytes) -> bytes    # NIOCCTRL, NIOC[TR]XSYNC, NIOCREGIF
      # NIOCCTRL: the message is the nmreq_header at offset 0 plus whatever
      # nr_body / nr_options / nro_next point at, as offsets in the message;
      # failures raise NetmapIoctlError(errno, ..., data=message written back)
    netmap_ctrl(priv, msg) -> (reply, SyncKloop | None)   # the same, with the loop
    netmap_port_mem(priv) -> NetmapMem | None      # .view / .nm_memsize to map
    netmap_poll(priv, POLLIN | POLLOUT) -> revents # no sleep: wait for notify
    sync_kloop_step(kloop) -> did_work             # on the loop's thread; sleep
                                                   # kloop.sleep_us when False,
                                                   # return when kloop.stopping
    netmap_close(priv)                             # stops its loop, frees its port
    nm.stats.items() / nm.stats.leaks(); netmap_ports(privs) -> [Xnetmap]
    netmap_sysctl_init(kern.sysctl, nm)            # dev.netmap.* (netmap_sysctl.py)
  driver (mbuf's FrameTap): Ifnet.if_netmap, set while a monitor watches.
  locking: none inside; one lock held by the device around every call above
  (and around nm0's traffic while a monitor watches), see netmap_kloop.py.
"""

# First: `mbuf._core` chooses the compiled or the pure core for every kernel package
# (they are one mypyc group), before any module of this package is loaded.
from mbuf._core import CORE

# isort: split
from netmap.netmap import (
    NetmapIoctlError,
    netmap_close,
    netmap_ctrl,
    netmap_ioctl,
    netmap_open,
    netmap_port_mem,
)
from netmap.netmap_counters import NetmapStat
from netmap.netmap_kern import Netmap, NetmapPrivD
from netmap.netmap_kloop import SyncKloop, sync_kloop_step
from netmap.netmap_monitor import netmap_attach_ifnet
from netmap.netmap_stats import Xnetmap, netmap_ports
from netmap.netmap_sync import netmap_poll
from netmap.netmap_sysctl import netmap_sysctl_init

__all__ = [
    "CORE",
    "Netmap",
    "NetmapIoctlError",
    "NetmapPrivD",
    "NetmapStat",
    "SyncKloop",
    "Xnetmap",
    "netmap_attach_ifnet",
    "netmap_close",
    "netmap_ctrl",
    "netmap_ioctl",
    "netmap_open",
    "netmap_poll",
    "netmap_port_mem",
    "netmap_ports",
    "netmap_sysctl_init",
    "sync_kloop_step",
]
