"""The counters that must return to zero once every connection has closed.

`Kernel.leaks()` is the one list (mbuf/kern.py). It reports only the counters
that are not zero, so the names are read from it here on a throwaway kernel
whose every counter is made non-zero: a counter added there is checked by
every test at once, and nothing is listed twice.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Final

from mbuf.kern import Kernel
from mbuf.param import PAGE_SIZE
from netmap import NetmapStat


def _kernel_leak_keys() -> tuple[str, ...]:
    kern = Kernel(64 * PAGE_SIZE)  # the smallest machine PhysMem allows
    for group in kern.stats.groups():
        for f in fields(group):  # type: ignore[arg-type]
            setattr(group, f.name, 1)
    return tuple(kern.leaks())


KERNEL_LEAK_KEYS: Final = _kernel_leak_keys()
# A server frees its KTLS sessions too (`KtlsSession.free`); a kernel alone has
# none to leak, so `Kernel.leaks()` leaves this one out and unit tests check it
# where they make sessions.
# Its bpf subsystem (server/app.py) is not the kernel's either: its descriptors and
# buffers (BpfStat.leaks) are the server's keys too.
BPF_LEAK_KEYS: Final = (
    "bpf.descriptors_in_use",
    "bpf.attached",
    "bpf.buffers_in_use",
    "bpf.buffer_bytes",
    # nomapd's TLS key export (bpf/bpf_keylog.py, server/devices/bpfkeys.py): no
    # descriptor left asking, no secret left pending in one or in the worker.
    "bpf.keylog_descriptors",
    "bpf.keylog_bytes",
    "bpf.keylog_sessions_pending",
)
# The device layer's open files and the shared memory they mapped (server/devices/).
DEVFS_LEAK_KEYS: Final = ("devfs.open_files", "devfs.shm_mapped", "devfs.shm_mapped_bytes")


# Its netmap subsystem (server/devices/netmapdev.py): open files, ports, regions
# and what they hold, running kernel loops (NetmapStat.leaks).
def _netmap_leak_keys() -> tuple[str, ...]:
    st = NetmapStat()
    for f in fields(st):
        setattr(st, f.name, 1)
    return tuple(st.leaks())


NETMAP_LEAK_KEYS: Final = _netmap_leak_keys()
SERVER_LEAK_KEYS: Final = (
    *KERNEL_LEAK_KEYS,
    "ktls.sessions_active",
    *BPF_LEAK_KEYS,
    *DEVFS_LEAK_KEYS,
    *NETMAP_LEAK_KEYS,
)


def leaked(stats: dict[str, object]) -> dict[str, object]:
    """The server counters (a /stats snapshot) that have not returned to zero."""
    return {k: stats[k] for k in SERVER_LEAK_KEYS if stats[k]}
