"""The BPF device's kernel half: interfaces, descriptors, the tap and catchpacket.

Theory of operation. `bpfattach` gives an interface a tap point (`BpfIf`);
`bpfopen` makes a descriptor; BIOCSETIF (bpf/bpf_ioctl.py) puts it on the
interface's `bif_dlist`. The driver calls `bpf_mtap(bif, m, direction)` (or
`bif.tap(m, direction)`, the `IfTap` face mbuf sees) with each frame as it
goes to or comes from the wire. For each listening descriptor whose direction
setting admits the frame, the read filter runs on the mbuf chain itself, before
anything is copied (the JIT's function when one was compiled); a non-zero
answer is the snap length, and `catchpacket` copies at most that many bytes
into the store buffer behind a `bpf_hdr` (or `bpf_xhdr`) record header,
rotating buffers when the store buffer is full and a free one exists, and
dropping (and counting) when none does. It never waits: a slow reader costs
the data path one filter run and no copy.

Buffers belong to a buffer model chosen by BIOCSETBUFMODE: buffered
(bpf/bpf_buffer.py, read(2) copies out) or zero-copy (bpf/bpf_zerocopy.py,
shared memory). The `bpf_*buf*` functions here dispatch to the model as
bpf.c does, and `ROTATE_BUFFERS` tells the model (`bpf_bufheld`) that a buffer
was held.

Readiness and time are the device layer's: it sets `d.bd_wakeup` (called
from `bpf_wakeup`: a buffer rotated, or in immediate mode or after a timeout a
packet was stored), asks `bpfpoll(d)` whether the descriptor is readable (which
arms the read timeout: state WAITING, the device then runs a timer of
`d.bd_rtout` microseconds) and calls `bpf_timed_out(d)` when it fires. A
blocking read that must sleep raises BlockingIOError; the device sleeps until
the wakeup or the timeout and calls again (`bpfread_timedout` after a
timeout).

API for the device layer (all raise OSError with the kernel's errno):
  bpfattach(bpf, name, dlt, hdrlen) -> BpfIf;  bpfdetach(bif)
  bpfopen(bpf, pid) -> BpfD;  bpf_close(d)
  bpfread(d, resid, nonblock) -> bytes;  bpfread_timedout(d) -> bytes
  bpfpoll(d) -> bool;  bpf_timed_out(d);  bpf_ready(d) -> bool
  bpf_ioctl_*(d, ...): one function per ioctl, typed, in bpf/bpf_ioctl.py, with
  bpfioctl(d, cmd, arg_bytes, uvm) for a device that forwards raw ioctls.
  bpf_stats(bpf) -> list[Xbpfd] (netstat -B);  bpf.stats (the /stats group).
API for the taps: bpf_mtap(bif, m, direction), or `bif.tap(m, direction)`.

Models: sys/net/bpf.c (`bpfattach`, `bpfdetach`, `bpfopen`, `bpf_dtor`,
`bpf_attachd`, `bpf_detachd`, `bpfread`, `bpf_ready`, `bpfpoll`,
`bpf_timed_out`, `bpf_wakeup`, `bpf_mtap`, `bpf_mtap2`, `catchpacket`,
`bpf_hdrlen`, `bpf_bintime2ts`, `reset_d`, `bpf_append_bytes`, `bpf_append_mbuf`,
`bpf_bufheld`, `bpf_buffull`, `bpf_canfreebuf`, `bpf_canwritebuf`,
`bpf_buf_reclaimed`, `bpfstats_fill_xbpf`) and sys/net/bpf.h
(`ROTATE_BUFFERS`), as in FreeBSD 12 (2019).

Deliberate differences: the direction of a frame is an argument (PFIL_IN or
PFIL_OUT) instead of `m_pkthdr.rcvif`; there is no feedback mode, so no
M_PROMISC duplicates to skip. The read timeout is kept in microseconds, not
ticks. `BPF_T_MONOTONIC` is accepted but the clock is the one `Bpf` was given.
The filter's JIT also serves chains (bpf/bpf_jit.py). Promiscuous mode, write
filters and writes are not modeled (BIOCPROMISC and BIOCSETWF are not offered).
"""

from __future__ import annotations

import errno

from bpf import bpf_buffer as _buf
from bpf import bpf_zerocopy as _zbuf
from bpf.bpf_filter import bpf_filter
from bpf.bpf_h import (
    BPF_BUFMODE_BUFFER,
    BPF_BUFMODE_ZBUF,
    BPF_D_IN,
    BPF_D_OUT,
    BPF_HDR,
    BPF_T_FORMAT_MASK,
    BPF_T_MICROTIME,
    BPF_T_NANOTIME,
    BPF_T_NONE,
    BPF_WORDALIGN,
    BPF_XHDR,
    SIZEOF_BPF_HDR,
)
from bpf.bpf_keylog import bpf_keylog_detach
from bpf.bpfdesc import BPF_IDLE, BPF_TIMED_OUT, BPF_WAITING, Bpf, BpfBuf, BpfD, Xbpfd
from mbuf.if_tap import PFIL_IN
from mbuf.kassert import kassert
from mbuf.mbuf import M_NOMAP, Mbuf, m_free, m_get, m_length


class BpfIf:
    """struct bpf_if: one interface's tap point and its listening descriptors.

    Implements mbuf.if_tap.IfTap: the driver calls `tap(m, direction)` with the
    frame exactly as it goes to or comes from the wire."""

    __slots__ = ("bif_bpf", "bif_dlist", "bif_dlt", "bif_hdrlen", "bif_name")

    def __init__(self, bpf: Bpf, name: str, dlt: int, hdrlen: int) -> None:
        self.bif_bpf = bpf
        self.bif_name = name  # if_xname ("nm0")
        self.bif_dlt = dlt
        self.bif_hdrlen = hdrlen  # link header length, for bh_hdrlen's alignment
        self.bif_dlist: list[BpfD] = []

    def tap(self, m: Mbuf, direction: int) -> None:
        """IfTap.tap: bpf_mtap; returns at once when nobody listens (bpf_peers_present)."""
        if self.bif_dlist:
            bpf_mtap(self, m, direction)


# ---------------------------------------------------------------------------
# Interfaces and descriptors
# ---------------------------------------------------------------------------


def bpfattach(bpf: Bpf, name: str, dlt: int, hdrlen: int) -> BpfIf:
    """bpfattach2: give interface `name` a tap point with link type dlt."""
    if name in bpf.bpf_iflist:
        raise ValueError(f"bpfattach: {name} is already attached")
    bif = BpfIf(bpf, name, dlt, hdrlen)
    bpf.bpf_iflist[name] = bif
    return bif


def bpfdetach(bif: BpfIf) -> None:
    """bpfdetach: the interface goes away; its descriptors are detached and woken
    (their next read answers ENXIO)."""
    bpf = bif.bif_bpf
    while bif.bif_dlist:
        d = bif.bif_dlist[0]
        bpf_detachd(d)
        bpf_wakeup(d)
    bpf.bpf_iflist.pop(bif.bif_name, None)


def bpfopen(bpf: Bpf, pid: int) -> BpfD:
    """bpfopen: a new descriptor in buffered mode, no buffers, no interface."""
    d = BpfD(bpf, pid)
    bpf.stats.descriptors_in_use += 1
    bpf.stats.descriptors_total += 1
    return d


def bpf_close(d: BpfD) -> None:
    """bpf_dtor: detach, then free the buffers (a zero-copy loan ends here)."""
    bpf = d.bd_bpf
    if d.bd_bif is not None:
        bpf_detachd(d)
    bpf_keylog_detach(d)  # nomapd's key export: pending lines wiped
    bpf_free(d)
    d.bd_rfilter = None
    d.bd_jit = None
    d.bd_wakeup = None
    bpf.stats.descriptors_in_use -= 1


def bpf_attachd(d: BpfD, bif: BpfIf) -> None:
    """bpf_attachd: put d on bif's list (at the head, as LIST_INSERT_HEAD)."""
    if d.bd_bif is not None:
        bpf_detachd(d)
    d.bd_bif = bif
    bif.bif_dlist.insert(0, d)
    d.bd_bpf.stats.attached += 1


def bpf_detachd(d: BpfD) -> None:
    bif = d.bd_bif
    kassert(bif is not None, "bpf_detachd: descriptor not attached")
    assert bif is not None
    bif.bif_dlist.remove(d)
    d.bd_bif = None
    d.bd_bpf.stats.attached -= 1


# ---------------------------------------------------------------------------
# The buffer model's hooks (bpf.c's dispatch on bd_bufmode)
# ---------------------------------------------------------------------------


def bpf_free(d: BpfD) -> None:
    if d.bd_bufmode == BPF_BUFMODE_ZBUF:
        _zbuf.bpf_zerocopy_free(d)
    else:
        _buf.bpf_buffer_free(d)


def bpf_append_bytes(d: BpfD, buf: BpfBuf, offset: int, src: bytes) -> None:
    if d.bd_bufmode == BPF_BUFMODE_ZBUF:
        _zbuf.bpf_zerocopy_append_bytes(d, buf, offset, src)
    else:
        _buf.bpf_buffer_append_bytes(d, buf, offset, src)


def bpf_append_mbuf(d: BpfD, buf: BpfBuf, offset: int, m: Mbuf, length: int) -> None:
    if d.bd_bufmode == BPF_BUFMODE_ZBUF:
        _zbuf.bpf_zerocopy_append_mbuf(d, buf, offset, m, length)
    else:
        _buf.bpf_buffer_append_mbuf(d, buf, offset, m, length)


def bpf_bufheld(d: BpfD) -> None:
    if d.bd_bufmode == BPF_BUFMODE_ZBUF:
        _zbuf.bpf_zerocopy_bufheld(d)


def bpf_buffull(d: BpfD) -> None:
    if d.bd_bufmode == BPF_BUFMODE_ZBUF:
        _zbuf.bpf_zerocopy_buffull(d)


def bpf_canfreebuf(d: BpfD) -> bool:
    if d.bd_bufmode == BPF_BUFMODE_ZBUF:
        return _zbuf.bpf_zerocopy_canfreebuf(d)
    return False


def bpf_canwritebuf(d: BpfD) -> bool:
    if d.bd_bufmode == BPF_BUFMODE_ZBUF:
        return _zbuf.bpf_zerocopy_canwritebuf(d)
    return True


def bpf_buf_reclaimed(d: BpfD) -> None:
    if d.bd_bufmode == BPF_BUFMODE_ZBUF:
        _zbuf.bpf_zerocopy_buf_reclaimed(d)


def ROTATE_BUFFERS(d: BpfD) -> BpfBuf | None:  # the header's macro
    """hold := store, store := free, free := none; then the model hears of the hold.
    Returns the buffer now held."""
    kassert(d.bd_fbuf is not None, "ROTATE_BUFFERS: no free buffer")
    held = d.bd_sbuf
    d.bd_hbuf = held
    d.bd_hlen = d.bd_slen
    d.bd_sbuf = d.bd_fbuf
    d.bd_slen = 0
    d.bd_fbuf = None
    bpf_bufheld(d)
    return held


def reset_d(d: BpfD) -> None:
    """reset_d: drop buffered packets (a held zero-copy buffer only once acknowledged)
    and zero the counters (BIOCFLUSH, BIOCSETF, BIOCSETIF)."""
    if d.bd_hbuf is not None and (d.bd_bufmode != BPF_BUFMODE_ZBUF or bpf_canfreebuf(d)):
        d.bd_fbuf = d.bd_hbuf
        d.bd_hbuf = None
        d.bd_hlen = 0
        bpf_buf_reclaimed(d)
    if d.bd_sbuf is not None and bpf_canwritebuf(d):
        d.bd_slen = 0
    d.bd_rcount = d.bd_dcount = d.bd_fcount = d.bd_zcopy = 0


# ---------------------------------------------------------------------------
# Readiness and the read timeout
# ---------------------------------------------------------------------------


def bpf_wakeup(d: BpfD) -> None:
    """bpf_wakeup: cancel a pending timeout and tell the device layer."""
    if d.bd_state == BPF_WAITING:
        d.bd_state = BPF_IDLE
    fn = d.bd_wakeup
    if fn is not None:
        fn(d)


def bpf_ready(d: BpfD) -> bool:
    """bpf_ready: a hold buffer not yet acknowledged, or (immediate or timed out)
    and data in the store buffer."""
    if not bpf_canfreebuf(d) and d.bd_hlen != 0:
        return True
    return (d.bd_immediate or d.bd_state == BPF_TIMED_OUT) and d.bd_slen != 0


def bpfpoll(d: BpfD) -> bool:
    """bpfpoll for POLLIN: readable now? If not and a read timeout is set, the
    timeout is armed (state WAITING): the device layer then calls bpf_timed_out
    after d.bd_rtout microseconds unless a wakeup comes first."""
    if bpf_ready(d):
        return True
    if d.bd_rtout > 0 and d.bd_state == BPF_IDLE:
        d.bd_state = BPF_WAITING
    return False


def bpf_timed_out(d: BpfD) -> None:
    """bpf_timed_out: the read timeout fired; wake the reader if there is data."""
    if d.bd_state == BPF_WAITING:
        d.bd_state = BPF_TIMED_OUT
        if d.bd_slen != 0:
            bpf_wakeup(d)


# ---------------------------------------------------------------------------
# The tap and catchpacket
# ---------------------------------------------------------------------------


def bpf_mtap(bif: BpfIf, m: Mbuf, direction: int) -> None:
    """bpf_mtap: offer frame m (travelling `direction`, PFIL_IN or PFIL_OUT) to every
    descriptor on bif. The filter reads the chain in place; only accepted frames
    are copied, at most their snap length. The chain is not modified or freed.
    A wakeup callback must not detach descriptors while the tap runs (it would
    in the kernel hold the interface lock): it only notes readiness."""
    dlist = bif.bif_dlist
    if not dlist:
        return
    pktlen, _ = m_length(m)
    bpf = bif.bif_bpf
    bpf.stats.packets_tapped += 1
    incoming = direction == PFIL_IN
    tstamp = -1  # taken once, when the first descriptor accepts the frame
    for d in dlist:
        dirn = d.bd_direction
        if (dirn == BPF_D_IN and not incoming) or (dirn == BPF_D_OUT and incoming):
            continue
        d.bd_rcount += 1
        jit = d.bd_jit  # the compiled program, or the interpreter (no program: accept all)
        slen = jit(m, pktlen, 0) if jit is not None else bpf_filter(d.bd_rfilter, m, pktlen, 0)
        if slen:
            d.bd_fcount += 1
            if tstamp < 0:
                tstamp = bpf.clock()
            catchpacket(d, m, pktlen, slen, tstamp)


def bpf_mtap2(bif: BpfIf, data: bytes, m: Mbuf, direction: int) -> None:
    """bpf_mtap2: tap m behind a contiguous header `data` (at most MLEN bytes), as the
    kernel does with a throw-away mbuf in front of the chain; m is left as it was."""
    if not bif.bif_dlist:
        return
    hdr = m_get(m.m_kern)
    assert hdr.m_dat is not None
    hdr.m_dat[: len(data)] = data
    hdr.m_len = len(data)
    hdr.m_next = m
    try:
        bpf_mtap(bif, hdr, direction)
    finally:
        hdr.m_next = None
        m_free(hdr)


def bpf_hdrlen(d: BpfD) -> int:
    """bpf_hdrlen: record header plus the padding that word-aligns the network header."""
    bif = d.bd_bif
    assert bif is not None
    return BPF_WORDALIGN(bif.bif_hdrlen + SIZEOF_BPF_HDR) - bif.bif_hdrlen


def _record_header(d: BpfD, tstamp_ns: int, caplen: int, pktlen: int, hdrlen: int) -> bytes:
    """struct bpf_hdr or bpf_xhdr for this descriptor's BIOCSTSTAMP format."""
    fmt = d.bd_tstamp & BPF_T_FORMAT_MASK
    if d.bd_tstamp == BPF_T_NONE:
        return BPF_HDR.pack(0, 0, caplen, pktlen, hdrlen)
    sec, nsec = divmod(tstamp_ns, 1_000_000_000)
    if fmt == BPF_T_MICROTIME:
        return BPF_HDR.pack(sec, nsec // 1000, caplen, pktlen, hdrlen)
    if fmt == BPF_T_NANOTIME:
        return BPF_XHDR.pack(sec, nsec, caplen, pktlen, hdrlen)
    # BPF_T_BINTIME: the fraction of a second in units of 2**-64
    return BPF_XHDR.pack(sec, (nsec << 64) // 1_000_000_000, caplen, pktlen, hdrlen)


def catchpacket(d: BpfD, m: Mbuf, pktlen: int, snaplen: int, tstamp_ns: int) -> None:
    """catchpacket: store one record (header, then at most snaplen bytes of m) in the
    store buffer, rotating or dropping as the buffers allow. Never blocks."""
    bpf = d.bd_bpf
    # The lazy reclaim: has user space given the hold buffer back?
    if d.bd_fbuf is None and bpf_canfreebuf(d):
        d.bd_fbuf = d.bd_hbuf
        d.bd_hbuf = None
        d.bd_hlen = 0
        bpf_buf_reclaimed(d)
    hdrlen = bpf_hdrlen(d)
    totlen = hdrlen + min(snaplen, pktlen)
    if totlen > d.bd_bufsize:
        totlen = d.bd_bufsize  # truncated, never split over two buffers
    curlen = BPF_WORDALIGN(d.bd_slen)
    do_wakeup = False
    if curlen + totlen > d.bd_bufsize or not bpf_canwritebuf(d):
        if d.bd_fbuf is None:
            bpf_buffull(d)
            d.bd_dcount += 1
            bpf.stats.packets_dropped += 1
            return
        ROTATE_BUFFERS(d)
        do_wakeup = True
        curlen = 0
    elif d.bd_immediate or d.bd_state == BPF_TIMED_OUT:
        do_wakeup = True
    caplen = totlen - hdrlen
    sbuf = d.bd_sbuf
    assert sbuf is not None
    bpf_append_bytes(d, sbuf, curlen, _record_header(d, tstamp_ns, caplen, pktlen, hdrlen))
    if caplen:
        bpf_append_mbuf(d, sbuf, curlen + hdrlen, m, caplen)
        _count_unmapped(bpf, m, caplen)
    d.bd_slen = curlen + totlen
    st = bpf.stats
    st.packets_captured += 1
    st.bytes_captured += caplen
    if do_wakeup:
        bpf_wakeup(d)


def _count_unmapped(bpf: Bpf, m: Mbuf | None, length: int) -> None:
    """Count the unmapped mbufs the copy of `length` bytes read through their pages."""
    n = 0
    while m is not None and length > 0:
        if m.m_flags & M_NOMAP and m.m_len:
            n += 1
        length -= m.m_len
        m = m.m_next
    if n:
        bpf.stats.unmapped_copies += 1
        bpf.stats.unmapped_mbufs_copied += n


# ---------------------------------------------------------------------------
# read(2)
# ---------------------------------------------------------------------------


def bpfread(d: BpfD, resid: int, nonblock: bool) -> bytes:
    """bpfread: the hold buffer's records (one copy), then it becomes free.

    `resid` must be bd_bufsize (EINVAL); zero-copy mode answers EOPNOTSUPP.
    With nothing held, a non-empty store buffer is rotated first in immediate
    mode, for a non-blocking read, or after a read timeout. Otherwise ENXIO if
    the descriptor lost its interface, and BlockingIOError (EWOULDBLOCK) when
    the read would sleep: a blocking device sleeps until bd_wakeup or the
    timeout, then calls again (bpfread_timedout after a timeout)."""
    if resid != d.bd_bufsize:
        raise OSError(errno.EINVAL, f"read: size must be the buffer size {d.bd_bufsize}")
    if d.bd_bufmode != BPF_BUFMODE_BUFFER:
        raise OSError(errno.EOPNOTSUPP, "read: zero-copy descriptors are read in shared memory")
    timed_out = d.bd_state == BPF_TIMED_OUT
    d.bd_state = BPF_IDLE
    if d.bd_hbuf is None:
        if d.bd_slen != 0 and (d.bd_immediate or nonblock or timed_out):
            ROTATE_BUFFERS(d)
        elif d.bd_bif is None:
            raise OSError(errno.ENXIO, "read: descriptor has no interface")
        else:
            raise BlockingIOError(errno.EWOULDBLOCK, "read: no packets yet")
    return _bpf_read_hold(d)


def bpfread_timedout(d: BpfD) -> bytes:
    """The end of a blocking read's sleep by its timeout: what is held, else the store
    buffer's records, else nothing (b"")."""
    if d.bd_bufmode != BPF_BUFMODE_BUFFER:
        raise OSError(errno.EOPNOTSUPP, "read: zero-copy descriptors are read in shared memory")
    d.bd_state = BPF_IDLE
    if d.bd_hbuf is None:
        if d.bd_slen == 0:
            return b""
        ROTATE_BUFFERS(d)
    return _bpf_read_hold(d)


def _bpf_read_hold(d: BpfD) -> bytes:
    hbuf = d.bd_hbuf
    assert hbuf is not None
    out = _buf.bpf_buffer_uiomove(d, hbuf, d.bd_hlen)
    d.bd_fbuf = hbuf
    d.bd_hbuf = None
    d.bd_hlen = 0
    bpf_buf_reclaimed(d)
    st = d.bd_bpf.stats
    st.reads += 1
    st.read_bytes += len(out)
    return out


# ---------------------------------------------------------------------------
# netstat -B
# ---------------------------------------------------------------------------


def bpfstats_fill_xbpf(d: BpfD) -> Xbpfd:
    bif = d.bd_bif
    return Xbpfd(
        bd_pid=d.bd_pid,
        bd_ifname=bif.bif_name if bif is not None else "",
        bd_immediate=d.bd_immediate,
        bd_direction=d.bd_direction,
        bd_rcount=d.bd_rcount,
        bd_dcount=d.bd_dcount,
        bd_fcount=d.bd_fcount,
        bd_slen=d.bd_slen,
        bd_hlen=d.bd_hlen,
        bd_bufsize=d.bd_bufsize,
        bd_bufmode=d.bd_bufmode,
        bd_zcopy=d.bd_zcopy,
    )


def bpf_stats(bpf: Bpf) -> list[Xbpfd]:
    """bpf_stats_sysctl (net.bpf.stats): one row per attached descriptor."""
    return [bpfstats_fill_xbpf(d) for bif in bpf.bpf_iflist.values() for d in bif.bif_dlist]
