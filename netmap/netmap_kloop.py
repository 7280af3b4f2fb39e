"""SYNC_KLOOP and the CSB: the kernel loop that syncs rings for an application.

Theory of operation. In CSB mode (`NETMAP_REQ_OPT_CSB` at registration, or
`NETMAP_REQ_CSB_ENABLE` after) the ring pointers travel through two arrays of
64-byte entries instead of the netmap_ring: `nm_csb_atok` (application to
kernel: head, cur, ...) and `nm_csb_ktoa` (kernel to application: hwcur,
hwtail, ...), one entry per bound ring, TX rings first. `SYNC_KLOOP_START`
hands the calling thread to the loop: `sync_kloop_step` is one pass of its
body, which for every TX ring then every RX ring reads atok, runs the prologue
and the sync, and writes ktoa; the device layer runs steps on a thread and
sleeps `sleep_us` after a step that did no work, until `SYNC_KLOOP_STOP` or the
file's close (`netmap_sync_kloop_stop`). Syncs the loop runs are counted apart
from NIOC*SYNC ones (`txsync_kloop` / `rxsync_kloop` against `txsync_ioctl` /
`rxsync_ioctl`): an application driven by the loop makes no sync call.

Ordering (B.16). The application writes cur, then head (a store-store barrier
between, `nm_sync_kloop_appl_write`); the kernel reads head, then cur
(`sync_kloop_kernel_read`), so it never sees a head newer than cur. The kernel
writes hwcur, then hwtail (`sync_kloop_kernel_write`); the application reads
hwtail, then hwcur. Here every field is one aligned 4-byte access to the shared
mapping: one item of a 4-byte `memoryview.cast("I")` of it, which the GIL
makes atomic against the Python side, and the calls keep their program order;
a C reader of the memfd on x86-64 (TSO: stores are not reordered with stores,
nor loads with loads) sees the same order. The fences are therefore the order
of the statements below; they are kept in that order on purpose.

Threads. Nothing in netmap/ takes a lock: the device layer holds one lock (the
role of netmap's NMG_LOCK and the kring locks) around every call into the
subsystem, `sync_kloop_step` included, and around nm0's transmit and receive
while a monitor watches (the tap writes monitor rings). The loop thread
releases it while it sleeps.

Models: sys/dev/netmap/netmap_kloop.c (netmap_sync_kloop, sync_kloop_kernel_read
/ _write, netmap_sync_kloop_tx_ring / _rx_ring, netmap_sync_kloop_stop,
netmap_csb_validate in netmap.c), CSB entries of net/netmap.h.

Deliberate differences: CSB addresses are offsets into the port's own region
(the one memory both sides map here: an application may use extra buffers for
it), 64-byte aligned and inside the region, else EINVAL. No eventfds (the
option is Linux-only in netmap): notifications are the sleep, and
`kern_need_kick` / `appl_need_kick` are written as netmap writes them but
nothing waits on them.
"""

from __future__ import annotations

import errno
from typing import Final

from netmap.netmap_h import NM_CSB_ATOK, NM_CSB_KTOA, NR_EXCLUSIVE, NR_RX, NR_TX
from netmap.netmap_kern import NetmapKring, NetmapPrivD
from netmap.netmap_sync import netmap_sync_kring

SYNC_KLOOP_MAX_SLEEP_US: Final = 1_000_000
# The CSB's fields are read and written as items of a 4-byte view of the region
# (`memoryview.cast("I")`): one load or store each. Not `struct.pack_into`,
# which clears the destination before it packs (s_pack_internal's memset), so a
# reader on the other side would now and then see a head or an hwtail of 0.
WORD: Final = 4
ATOK_CUR: Final = 4
KTOA_HWTAIL: Final = 4
KTOA_KICK: Final = 8
CSB_ENTRY: Final = 64


class SyncKloop:
    """The state of one started loop (np_kloop_state)."""

    __slots__ = ("iterations", "priv", "sleep_us", "stopping")

    def __init__(self, priv: NetmapPrivD, sleep_us: int) -> None:
        self.priv = priv
        self.sleep_us = sleep_us  # the device sleeps this long after an idle step
        self.stopping = False  # NM_SYNC_KLOOP_STOPPING: the device's thread returns
        self.iterations = 0


def netmap_csb_validate(priv: NetmapPrivD, atok: int, ktoa: int) -> None:
    """Take the CSB arrays at region offsets atok / ktoa for the bound rings and
    initialise them from the krings. EINVAL: not exclusive, unaligned, or not
    inside the region."""
    na = priv.np_na
    assert na is not None
    ntx = priv.np_qlast[NR_TX] - priv.np_qfirst[NR_TX]
    nrx = priv.np_qlast[NR_RX] - priv.np_qfirst[NR_RX]
    tot = ntx + nrx
    if tot <= 0:
        return
    if not priv.np_flags & NR_EXCLUSIVE:
        raise OSError(errno.EINVAL, "CSB mode requires NR_EXCLUSIVE")
    size = len(na.mem.view)
    for base in (atok, ktoa):
        if base <= 0 or base % CSB_ENTRY or base + tot * CSB_ENTRY > size:
            raise OSError(errno.EINVAL, f"invalid CSB address {base}")
    if abs(atok - ktoa) < tot * CSB_ENTRY:
        raise OSError(errno.EINVAL, "CSB arrays overlap")
    priv.np_csb_atok = atok
    priv.np_csb_ktoa = ktoa
    view = na.mem.view
    for i, kring in enumerate(csb_krings(priv)):
        NM_CSB_ATOK.pack_into(view, atok + i * CSB_ENTRY, kring.rhead, kring.rcur, 1, 1, b"")
        NM_CSB_KTOA.pack_into(view, ktoa + i * CSB_ENTRY, kring.nr_hwcur, kring.nr_hwtail, 1, b"")


def csb_krings(priv: NetmapPrivD) -> list[NetmapKring]:
    """The bound krings in CSB order: TX rings, then RX rings."""
    na = priv.np_na
    assert na is not None
    return (
        na.tx_rings[priv.np_qfirst[NR_TX] : priv.np_qlast[NR_TX]]
        + na.rx_rings[priv.np_qfirst[NR_RX] : priv.np_qlast[NR_RX]]
    )


def netmap_sync_kloop_start(priv: NetmapPrivD, sleep_us: int) -> SyncKloop:
    """NETMAP_REQ_SYNC_KLOOP_START: the loop's state (the device then runs
    `sync_kloop_step` until `stopping`). EINVAL: sleep_us over a second or no
    CSB; ENXIO: not bound; EBUSY: a loop already runs on this file."""
    if sleep_us > SYNC_KLOOP_MAX_SLEEP_US:
        raise OSError(errno.EINVAL, "sync kloop: sleep_us over one second")
    if priv.np_na is None:
        raise OSError(errno.ENXIO, "sync kloop: file not bound")
    if priv.np_csb_atok < 0:
        raise OSError(errno.EINVAL, "sync kloop requires the NETMAP_REQ_OPT_CSB option")
    if priv.np_kloop is not None:
        raise OSError(errno.EBUSY, "sync kloop: already running")
    kl = SyncKloop(priv, sleep_us)
    priv.np_kloop = kl
    priv.np_na.nm.stats.kloops_running += 1
    return kl


def netmap_sync_kloop_stop(priv: NetmapPrivD) -> None:
    """NETMAP_REQ_SYNC_KLOOP_STOP (and close): the loop stops; stopping a file
    with no loop is not an error (ENXIO when not bound)."""
    if priv.np_na is None:
        raise OSError(errno.ENXIO, "sync kloop stop: file not bound")
    kl = priv.np_kloop
    if kl is None:
        return
    kl.stopping = True
    priv.np_kloop = None
    priv.np_na.nm.stats.kloops_running -= 1


def sync_kloop_step(kl: SyncKloop) -> bool:
    """One pass of the loop over every bound ring; True if a ring moved (a sync
    had new slots, or hwtail changed), False when the device should sleep."""
    priv = kl.priv
    na = priv.np_na
    if kl.stopping or na is None:
        return False
    words = na.mem.view.cast("I")
    st = na.nm.stats
    atok = priv.np_csb_atok
    ktoa = priv.np_csb_ktoa
    did = False
    ntx = 0
    nrx = 0
    for i, kring in enumerate(csb_krings(priv)):
        a = atok + i * CSB_ENTRY
        k = ktoa + i * CSB_ENTRY
        # sync_kloop_kernel_read: head first, then cur (B.16).
        head = int(words[a // WORD])
        cur = int(words[(a + ATOK_CUR) // WORD])
        old = (kring.nr_hwcur, kring.nr_hwtail)
        ok = netmap_sync_kring(kring, head, cur, kring.rtail)
        if kring.tx == NR_TX:
            ntx += 1
        else:
            nrx += 1
        kring.kr_kloop_syncs += 1
        if not ok:
            words[(k + KTOA_KICK) // WORD] = 1  # reinit: notifications back on
        # sync_kloop_kernel_write: hwcur first, then hwtail.
        words[k // WORD] = kring.nr_hwcur
        words[(k + KTOA_HWTAIL) // WORD] = kring.nr_hwtail
        if (kring.nr_hwcur, kring.nr_hwtail) != old:
            did = True
    words.release()
    kl.iterations += 1
    st.kloop_iterations += 1
    st.txsync_kloop += ntx
    st.rxsync_kloop += nrx
    return did
