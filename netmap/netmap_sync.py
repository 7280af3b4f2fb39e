"""The sync half of netmap.c: prologues, ring reinitialisation, NIOC*SYNC, poll.

Theory of operation. The user owns slots [head, tail) of a ring and writes only
`head` and `cur`; the kernel owns [tail, head) and writes only `tail` (B.6). A
sync first runs its prologue over the pointers the user left: TX needs
rhead <= head <= cur <= rtail, RX nr_hwcur <= head <= cur <= nr_hwtail, in ring
order (indexes wrap). A prologue that fails refuses that ring's sync only: the
ring is reinitialised to the kernel's view (`netmap_ring_reinit`), the kring's
`kr_reinits` and `ring_reinits` count it, and poll answers POLLERR. A tail the
user overwrote is put back. After a sync, `nm_sync_finalize` publishes the
kernel's tail (`rtail = ring->tail = nr_hwtail`).

Models: nm_txsync_prologue, nm_rxsync_prologue, netmap_ring_reinit, the
NIOCTXSYNC / NIOCRXSYNC case of netmap_ioctl and netmap_poll in
sys/dev/netmap/netmap.c; nm_sync_finalize in netmap_kern.h.

Deliberate differences: netmap_ring_reinit resets the pointers only when one is
beyond the ring (and otherwise adopts the user's values); here a refused sync
always puts head, cur and tail back to nr_hwcur / nr_hwtail, so a bad ring is
a clean ring after one refusal. The kernel's ioctl still returns 0 for a
refused ring (only poll reports POLLERR); `netmap_sync` returns how many rings
it refused, so the device can tell. poll does not sleep: the device layer
waits for `Netmap.notify` and calls it again.
"""

from __future__ import annotations

import errno
from typing import Final

import numpy as np

from netmap.netmap_h import (
    NETMAP_SLOT,
    NETMAP_SLOT_OFF,
    NR_NO_TX_POLL,
    NR_RX,
    NR_TX,
    POLLERR,
    POLLIN,
    POLLOUT,
    POLLRDNORM,
    POLLWRNORM,
)
from netmap.netmap_kern import NetmapKring, NetmapPrivD


def nm_in_order(lo: int, x: int, hi: int) -> bool:
    """lo <= x <= hi in ring order (the range may wrap past the last slot)."""
    if lo <= hi:
        return lo <= x <= hi
    return x >= lo or x <= hi


def nm_txsync_prologue(kring: NetmapKring, head: int, cur: int) -> bool:
    """Validate the user's head and cur for a txsync; on success they become
    rhead / rcur. False: the sync must not run (the caller reinitialises)."""
    n = kring.nkr_num_slots
    if head >= n or cur >= n:
        return False
    if not nm_in_order(kring.rhead, head, kring.rtail) or not nm_in_order(head, cur, kring.rtail):
        return False
    kring.rhead = head
    kring.rcur = cur
    return True


def nm_rxsync_prologue(kring: NetmapKring, head: int, cur: int) -> bool:
    """Validate head and cur for an rxsync against nr_hwcur .. nr_hwtail."""
    n = kring.nkr_num_slots
    if head >= n or cur >= n:
        return False
    hwtail = kring.nr_hwtail
    if not nm_in_order(kring.nr_hwcur, head, hwtail) or not nm_in_order(head, cur, hwtail):
        return False
    kring.rhead = head
    kring.rcur = cur
    return True


def netmap_ring_reinit(kring: NetmapKring) -> None:
    """Put the ring back to the kernel's view after a refused sync; slots naming
    no buffer of the region get index 0 and length 0, over-long lengths 0."""
    st = kring.na.nm.stats
    st.ring_reinits += 1
    kring.kr_reinits += 1
    kring.rhead = kring.rcur = kring.nr_hwcur
    kring.rtail = kring.nr_hwtail
    kring.set_ring_ptrs(kring.nr_hwcur, kring.nr_hwcur, kring.nr_hwtail)
    pool = kring.mem.buf_pool
    slots = kring.slots
    idx = slots["buf_idx"]
    bad = (idx < pool.reserved) | (idx >= pool.objtotal)
    if bad.any():
        idx[bad] = 0
        slots["len"][bad] = 0
    lens = slots["len"]
    lens[lens > pool.objsize] = 0


def nm_sync_finalize(kring: NetmapKring) -> None:
    """Publish the kernel's tail to the ring."""
    kring.rtail = kring.nr_hwtail
    kring.set_ring_tail(kring.nr_hwtail)


def netmap_sync_kring(kring: NetmapKring, head: int, cur: int, tail: int) -> bool:
    """One ring's sync from the pointers (head, cur, tail) the user published.
    False: refused by the prologue and reinitialised."""
    tx = kring.tx == NR_TX
    ok = nm_txsync_prologue(kring, head, cur) if tx else nm_rxsync_prologue(kring, head, cur)
    if not ok:
        netmap_ring_reinit(kring)
        return False
    if tail != kring.rtail:
        kring.na.nm.stats.tail_restored += 1
    if tx:
        kring.na.nm_txsync(kring)
    else:
        kring.na.nm_rxsync(kring)
    kring.kr_syncs += 1
    nm_sync_finalize(kring)
    return True


def netmap_sync(priv: NetmapPrivD, t: int) -> int:
    """NIOCTXSYNC (t = NR_TX) / NIOCRXSYNC (NR_RX): sync every ring of the
    binding; the number of rings refused. ENXIO when the file is not bound,
    EBUSY in CSB mode (the rings travel through the CSB)."""
    na = priv.np_na
    if na is None:
        raise OSError(errno.ENXIO, "netmap_sync: file not bound to a port")
    if priv.np_csb_atok >= 0:
        raise OSError(errno.EBUSY, "netmap_sync: invalid sync in CSB mode")
    st = na.nm.stats
    krings = na.krings(t)
    refused = 0
    for i in range(priv.np_qfirst[t], priv.np_qlast[t]):
        kring = krings[i]
        h, c, tl = kring.ring_ptrs()
        if not netmap_sync_kring(kring, h, c, tl):
            refused += 1
    n = priv.np_qlast[t] - priv.np_qfirst[t]
    if t == NR_TX:
        st.txsync_ioctl += n
    else:
        st.rxsync_ioctl += n
    return refused


def netmap_poll(priv: NetmapPrivD, events: int) -> int:
    """netmap_poll without the sleep: the ready events (POLLIN / POLLOUT), or
    POLLERR for an unbound file or a ring its sync refused. Pending TX is pushed
    even without POLLOUT unless NR_NO_TX_POLL; RX is synced only with POLLIN."""
    na = priv.np_na
    if na is None or priv.np_csb_atok >= 0:
        return POLLERR
    revents = 0
    want_tx = events & (POLLOUT | POLLWRNORM)
    want_rx = events & (POLLIN | POLLRDNORM)
    if want_tx or not priv.np_flags & NR_NO_TX_POLL:
        if netmap_sync(priv, NR_TX):
            revents |= POLLERR
        if want_tx:
            for i in range(priv.np_qfirst[NR_TX], priv.np_qlast[NR_TX]):
                k = na.tx_rings[i]
                if k.rcur != k.nr_hwtail:
                    revents |= want_tx
                    break
    if want_rx:
        if netmap_sync(priv, NR_RX):
            revents |= POLLERR
        for i in range(priv.np_qfirst[NR_RX], priv.np_qlast[NR_RX]):
            k = na.rx_rings[i]
            if k.rcur != k.nr_hwtail:
                revents |= want_rx
                break
    return revents


def nm_ring_publish(kring: NetmapKring) -> None:
    """nm_notify's model: tell the device a ring's hwtail moved."""
    fn = kring.na.nm.notify
    if fn is not None:
        fn(kring)


def slots_between(n: int, a: int, b: int) -> int:
    """Slots from a up to (not including) b in a ring of n."""
    d = b - a
    return d + n if d < 0 else d


SLOT_SIZE: Final = NETMAP_SLOT.size
FLAGS_LO: Final = NETMAP_SLOT_OFF["flags"]  # the low byte of the flags (x86: little-endian)
FEW_SLOTS: Final = 8  # below this, byte tests beat a NumPy call


def copy_slots(dst: NetmapKring, src: NetmapKring, a: int, m: int) -> None:
    """Copy m slot descriptors from src to dst starting at slot a in both rings
    (same size, same region): at most two slice copies of the region."""
    n = src.nkr_num_slots
    view = src.mem.view
    d = dst.slot_base
    s = src.slot_base
    end = a + m
    if end <= n:
        view[d + a * SLOT_SIZE : d + end * SLOT_SIZE] = view[
            s + a * SLOT_SIZE : s + end * SLOT_SIZE
        ]
    else:
        view[d + a * SLOT_SIZE : d + n * SLOT_SIZE] = view[s + a * SLOT_SIZE : s + n * SLOT_SIZE]
        view[d : d + (end - n) * SLOT_SIZE] = view[s : s + (end - n) * SLOT_SIZE]


def clear_flag(kring: NetmapKring, a: int, m: int, flag: int) -> None:
    """Clear `flag` (one of the low-byte flags) in the flags of m slots from a."""
    n = kring.nkr_num_slots
    end = a + m
    if m < FEW_SLOTS:
        view = kring.mem.view
        o = kring.slot_base + FLAGS_LO
        for i in range(a, end):
            j = o + (i - n if i >= n else i) * SLOT_SIZE
            if view[j] & flag:
                view[j] &= ~flag & 0xFF
        return
    flags = kring.slot_flags
    keep = np.uint16(0xFFFF & ~flag)
    if end <= n:
        flags[a:end] &= keep
    else:
        flags[a:n] &= keep
        flags[0 : end - n] &= keep


def slot_flags_lo(kring: NetmapKring, i: int) -> int:
    """The low byte of slot i's flags (NS_BUF_CHANGED .. NS_TXMON live there)."""
    return int(kring.mem.view[kring.slot_base + i * SLOT_SIZE + FLAGS_LO])
