"""The net.bpf sysctls as nodes of the kernel's sysctl tree.

Each is read where FreeBSD reads it, so a change takes effect there:
net.bpf.bufsize when a descriptor is opened (bpfopen's buffer size),
net.bpf.maxbufsize at BIOCSBLEN, net.bpf.maxinsns when a filter is set
(BIOCSETF), net.bpf.zerocopy_enable at BIOCSETBUFMODE. Descriptors already
open keep their buffers and mode. The bpf counters (BpfStat) are read-only
nodes under net.bpf.counters (a nomapd name: FreeBSD's net.bpf.stats is the
descriptor table `netstat -B` reads).

Deliberate difference: FreeBSD's bufsize and maxbufsize are plain SYSCTL_INTs
that take any value; here bufsize <= maxbufsize is held from both sides
(EINVAL, nothing changed), so that a new descriptor never gets more than the
ceiling and every state of the pair can be reached again from the defaults
(a restarted worker's replay, server/supervisor.py).

Models: sys/net/bpf.c (SYSCTL_NODE(_net, OID_AUTO, bpf, ...) and its leaves).
"""

from __future__ import annotations

from bpf.bpf_h import BPF_MAXBUFSIZE, BPF_MAXINSNS
from bpf.bpfdesc import Bpf
from mbuf.kern_sysctl import Sysctl


def bpf_sysctl_init(tree: Sysctl, bpf: Bpf) -> None:
    sc = bpf.sysctl

    def set_bufsize(v: int) -> None:
        if v > sc.maxbufsize:
            raise ValueError(v)
        sc.bufsize = v

    def set_maxbufsize(v: int) -> None:
        if v < sc.bufsize:  # the pair stays bufsize <= maxbufsize, as set_bufsize holds it
            raise ValueError(v)
        sc.maxbufsize = v

    def set_maxinsns(v: int) -> None:
        sc.maxinsns = v

    def set_zerocopy(v: bool) -> None:
        sc.zerocopy_enable = v

    tree.add_int("net.bpf.bufsize", "Default capture buffer size in bytes",
                 lambda: sc.bufsize, set_bufsize, 32, BPF_MAXBUFSIZE * 16)  # fmt: skip
    tree.add_int("net.bpf.maxbufsize", "Maximum capture buffer size in bytes",
                 lambda: sc.maxbufsize, set_maxbufsize, 32, BPF_MAXBUFSIZE * 16)  # fmt: skip
    tree.add_int("net.bpf.maxinsns", "Maximum bpf program instructions",
                 lambda: sc.maxinsns, set_maxinsns, 1, BPF_MAXINSNS * 8)  # fmt: skip
    tree.add_bool("net.bpf.zerocopy_enable", "Enable new zero-copy BPF buffer sessions",
                  lambda: sc.zerocopy_enable, set_zerocopy)  # fmt: skip
    tree.add_counters(bpf.stats, [k for k, _ in bpf.stats.items()])
