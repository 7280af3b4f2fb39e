"""bpf: the modeled kernel's packet capture (sans-IO; imports only mbuf).

Theory of operation. FreeBSD's Berkeley Packet Filter as of 2019: descriptors
with store, hold and free buffers, in buffered mode (read copies out) or in
zero-copy mode (two buffers of the capturing process's own memory, handed
back and forth by generation numbers); the classic filter machine and a JIT
for it; the tap an interface calls with every frame. Each module is named for
the FreeBSD file it models (the package exports the device layer's calls; a
module's own names, `bpf_filter` among them, are imported from the module):

  bpf_h.py        net/bpf.h: ioctl numbers, struct layouts, constants (userland
                  may import this one)
  bpfdesc.py      net/bpfdesc.h: struct bpf_d (BpfD), the subsystem (Bpf), its
                  sysctls and counters, netstat -B's row (Xbpfd)
  bpf.py          net/bpf.c: BpfIf, bpf_mtap, catchpacket, read, poll
  bpf_buffer.py   net/bpf_buffer.c: buffered mode
  bpf_zerocopy.py net/bpf_zerocopy.c: zero-copy mode
  bpf_filter.py   net/bpf_filter.c: bpf_filter over bytes and mbuf chains, bpf_validate
  bpf_jit.py      beyond the kernel's bpf_jitter: a program compiled to Python
  bpf_ioctl.py    net/bpf.c's bpfioctl: one typed function per ioctl, and bpfioctl
                  (ioctl number and argument bytes in, bytes out)
  bpf_keylog.py   beyond FreeBSD: TLS key log lines handed to a descriptor that
                  asked (BIOCSKEYLOG/BIOCGKEYLOG, nomapd's ioctls), for
                  `nomapd capture --keys`

How the other layers use it:

  device layer (one per worker):
    bpf = Bpf(clock=time.time_ns); bpf.sysctl.zerocopy_enable = True
    bif = bpfattach(bpf, "nm0", DLT_EN10MB, ETHER_HDR_LEN)
    d = bpfopen(bpf, pid); d.bd_wakeup = fn      # fn(d): d may be readable
    bpfioctl(d, cmd, arg_bytes, uvm) -> bytes   # or the typed bpf_ioctl_* functions
    bpfread(d, resid, nonblock) -> bytes          # BlockingIOError: sleep, call again
    bpfpoll(d) -> bool; bpf_timed_out(d)          # the read timeout's two halves
    bpf_close(d); bpf_stats(bpf) -> [Xbpfd]; bpf.stats.items()
  TLS handshakes (server/devices/bpfkeys.py): bpf_keylog_wanted(bpf),
    bpf_keylog(bpf, lines)
  driver (mbuf's IfTap): bif.tap(m, PFIL_OUT | PFIL_IN), or
    mbuf.if_tap.if_tap_ether(bif, m, dst, src, ethertype, direction)
"""

# First: `mbuf._core` chooses the compiled or the pure core for every kernel package
# (they are one mypyc group), before any module of this package is loaded.
from mbuf._core import CORE

# isort: split
from bpf.bpf import (
    BpfIf,
    bpf_close,
    bpf_mtap,
    bpf_stats,
    bpf_timed_out,
    bpfattach,
    bpfdetach,
    bpfopen,
    bpfpoll,
    bpfread,
    bpfread_timedout,
)
from bpf.bpf_filter import bpf_validate
from bpf.bpf_ioctl import bpfioctl
from bpf.bpf_zerocopy import Uvm
from bpf.bpfdesc import Bpf, BpfD, BpfStat, Xbpfd

__all__ = [
    "CORE",
    "Bpf",
    "BpfD",
    "BpfIf",
    "BpfStat",
    "Uvm",
    "Xbpfd",
    "bpf_close",
    "bpf_mtap",
    "bpf_stats",
    "bpf_timed_out",
    "bpf_validate",
    "bpfattach",
    "bpfdetach",
    "bpfioctl",
    "bpfopen",
    "bpfpoll",
    "bpfread",
    "bpfread_timedout",
]
