"""Buffered mode and what both modes share: catchpacket, records, snap length, direction,
immediate mode, the read timeout, BIOCFLUSH and BIOCGSTATS, counters and leaks."""

from __future__ import annotations

import errno
import random

import pytest

from bpf.bpf import (
    BpfIf,
    bpf_close,
    bpf_hdrlen,
    bpf_mtap,
    bpf_mtap2,
    bpf_ready,
    bpf_stats,
    bpf_timed_out,
    bpfattach,
    bpfdetach,
    bpfopen,
    bpfpoll,
    bpfread,
    bpfread_timedout,
)
from bpf.bpf_h import (
    BPF_ALIGNMENT,
    BPF_D_IN,
    BPF_D_OUT,
    BPF_K,
    BPF_MAXBUFSIZE,
    BPF_MINBUFSIZE,
    BPF_RET,
    BPF_STMT,
    BPF_T_BINTIME,
    BPF_T_NANOTIME,
    BPF_T_NONE,
    BPF_WORDALIGN,
    DLT_NULL,
)
from bpf.bpf_ioctl import (
    bpf_ioctl_flush,
    bpf_ioctl_gblen,
    bpf_ioctl_gstats,
    bpf_ioctl_immediate,
    bpf_ioctl_sblen,
    bpf_ioctl_sdirection,
    bpf_ioctl_setf,
    bpf_ioctl_setif,
    bpf_ioctl_srtimeout,
    bpf_ioctl_ststamp,
)
from bpf.bpfdesc import BPF_TIMED_OUT, BPF_WAITING, Bpf, BpfD
from mbuf.if_tap import PFIL_IN, PFIL_OUT
from mbuf.kern import Kernel
from mbuf.mbuf import m_freem
from tests.bpf.conftest import FakeClock, chain_of, frame, unmapped_frame
from tests.bpf.test_filter import load_dd
from userland.zbuf import bpf_records


def opened(bpf: Bpf, size: int = 4096, name: str = "nm0") -> BpfD:
    d = bpfopen(bpf, pid=4242)
    bpf_ioctl_sblen(d, size)
    bpf_ioctl_setif(d, name)
    return d


def send(kern: Kernel, bif: BpfIf, data: bytes, direction: int = PFIL_OUT) -> None:
    m = chain_of(kern, data, [14, 34])
    bpf_mtap(bif, m, direction)
    m_freem(m)


def test_sblen_clamps_and_is_fixed_once_attached(bpf: Bpf, bif: BpfIf) -> None:
    d = bpfopen(bpf, pid=1)
    assert bpf_ioctl_gblen(d) == 4096  # net.bpf.bufsize
    assert bpf_ioctl_sblen(d, 1) == BPF_MINBUFSIZE
    assert bpf_ioctl_sblen(d, 1 << 30) == BPF_MAXBUFSIZE
    assert bpf_ioctl_sblen(d, 10000) == 10000
    bpf_ioctl_setif(d, "nm0")
    assert bpf.stats.buffers_in_use == 2 and bpf.stats.buffer_bytes == 20000
    with pytest.raises(OSError) as e:
        bpf_ioctl_sblen(d, 8192)
    assert e.value.errno == errno.EINVAL
    bpf_close(d)


def test_setif_unknown_interface(bpf: Bpf) -> None:
    d = bpfopen(bpf, pid=1)
    with pytest.raises(OSError) as e:
        bpf_ioctl_setif(d, "nm9")
    assert e.value.errno == errno.ENXIO
    bpf_close(d)


def test_records_header_alignment_and_timestamps(
    kern: Kernel, bpf: Bpf, bif: BpfIf, clock: FakeClock
) -> None:
    d = opened(bpf)
    frames = [frame(payload=b"a" * n).data for n in (0, 1, 7, 100)]
    for f in frames:
        send(kern, bif, f)
    assert bpf_hdrlen(d) == 26  # Ethernet on LP64 (reference A.8)
    assert d.bd_slen > 0 and d.bd_hbuf is None
    data = bpfread(d, d.bd_bufsize, nonblock=True)  # rotates the store buffer
    recs = bpf_records(data)
    assert [r.data for r in recs] == frames
    assert [r.caplen for r in recs] == [r.datalen for r in recs] == [len(f) for f in frames]
    # one clock reading per packet, as microseconds
    t0 = clock.now - 3 * 1_500_000
    assert (recs[0].tv_sec, recs[0].tv_frac) == (t0 // 10**9, t0 % 10**9 // 1000)
    # each record starts word-aligned, and the network header after bh_hdrlen is too
    p = 0
    for r in recs:
        assert p % BPF_ALIGNMENT == 0 and (p + 26 + 14) % BPF_ALIGNMENT == 0
        p = BPF_WORDALIGN(p + 26 + r.caplen)
    assert len(data) == p - (BPF_WORDALIGN(26 + recs[-1].caplen) - 26 - recs[-1].caplen)
    bpf_close(d)


@pytest.mark.parametrize(("tstype", "frac_unit"), [(BPF_T_NANOTIME, 1), (BPF_T_BINTIME, 0)])
def test_xhdr_formats(kern: Kernel, bpf: Bpf, bif: BpfIf, tstype: int, frac_unit: int) -> None:
    d = opened(bpf)
    bpf_ioctl_ststamp(d, tstype)
    send(kern, bif, frame().data)
    rec = bpf_records(bpfread(d, d.bd_bufsize, nonblock=True), xhdr=True)[0]
    ns = 123_456_789 + 1_500_000
    assert rec.tv_sec == 1_700_000_000
    assert rec.tv_frac == (ns if frac_unit else (ns << 64) // 10**9)
    bpf_close(d)


def test_tstamp_none_and_bad_type(kern: Kernel, bpf: Bpf, bif: BpfIf) -> None:
    d = opened(bpf)
    bpf_ioctl_ststamp(d, BPF_T_NONE)
    send(kern, bif, frame().data)
    rec = bpf_records(bpfread(d, d.bd_bufsize, nonblock=True))[0]
    assert (rec.tv_sec, rec.tv_frac) == (0, 0)
    for bad in (0x4, 0x103, 0x400):
        with pytest.raises(OSError) as e:
            bpf_ioctl_ststamp(d, bad)
        assert e.value.errno == errno.EINVAL
    bpf_close(d)


def test_hdrlen_other_link_types(bpf: Bpf) -> None:
    bpfattach(bpf, "lo0", DLT_NULL, 4)
    bpfattach(bpf, "raw0", 12, 0)
    d1, d2 = opened(bpf, name="lo0"), opened(bpf, name="raw0")
    assert (bpf_hdrlen(d1), bpf_hdrlen(d2)) == (28, 32)  # reference A.8
    bpf_close(d1)
    bpf_close(d2)


def test_snap_length_is_the_filter_answer(kern: Kernel, bpf: Bpf, bif: BpfIf) -> None:
    d = opened(bpf)
    bpf_ioctl_setf(d, [BPF_STMT(BPF_RET | BPF_K, 96)])
    f = frame(payload=bytes(range(200))).data
    send(kern, bif, f)
    rec = bpf_records(bpfread(d, d.bd_bufsize, nonblock=True))[0]
    assert (rec.caplen, rec.datalen, rec.data) == (96, len(f), f[:96])
    bpf_close(d)


def test_packet_larger_than_buffer_is_truncated_not_split(
    kern: Kernel, bpf: Bpf, bif: BpfIf
) -> None:
    d = opened(bpf, size=256)
    f = frame(payload=b"x" * 1000).data
    send(kern, bif, f)
    send(kern, bif, f)
    first = bpf_records(bpfread(d, 256, nonblock=True))
    assert len(first) == 1 and first[0].caplen == 256 - 26 and first[0].datalen == len(f)
    bpf_close(d)


def test_drops_when_no_free_buffer_and_stats(kern: Kernel, bpf: Bpf, bif: BpfIf) -> None:
    d = opened(bpf, size=1024)
    f = frame(payload=b"p" * 400).data  # 454 + 26: two records per buffer
    for _ in range(10):
        send(kern, bif, f)
    # two fill the store buffer, the third rotates it into the hold slot (unread)
    # and goes into the other one with the fourth; the last six find no room
    assert bpf_ioctl_gstats(d) == (10, 6)
    assert (d.bd_fcount, bpf.stats.packets_dropped, bpf.stats.packets_captured) == (10, 6, 4)
    assert len(bpf_records(bpfread(d, 1024, nonblock=True))) == 2
    assert len(bpf_records(bpfread(d, 1024, nonblock=True))) == 2  # store rotated by the read
    bpf_ioctl_flush(d)
    assert bpf_ioctl_gstats(d) == (0, 0) and d.bd_slen == 0
    bpf_close(d)


def test_recv_counts_before_the_filter(kern: Kernel, bpf: Bpf, bif: BpfIf) -> None:
    d = opened(bpf)
    bpf_ioctl_setf(d, load_dd("ip6"))
    send(kern, bif, frame().data)
    send(kern, bif, frame(ipv6=True).data)
    assert bpf_ioctl_gstats(d) == (2, 0) and d.bd_fcount == 1
    assert [r.datalen for r in bpf_records(bpfread(d, 4096, True))] == [len(frame(ipv6=True).data)]
    bpf_close(d)


def test_setf_refuses_invalid_and_flushes(kern: Kernel, bpf: Bpf, bif: BpfIf) -> None:
    d = opened(bpf)
    send(kern, bif, frame().data)
    with pytest.raises(OSError) as e:
        bpf_ioctl_setf(d, [BPF_STMT(0x00, 0)])  # no RET
    assert e.value.errno == errno.EINVAL and bpf.stats.filters_rejected == 1
    assert d.bd_slen > 0  # a refused program changes nothing
    bpf_ioctl_setf(d, load_dd("greater_1000"), flush=False)  # BIOCSETFNR keeps the packets
    assert d.bd_slen > 0 and d.bd_rcount == 1
    bpf_ioctl_setf(d, None)  # BIOCSETF flushes
    assert d.bd_slen == 0 and d.bd_rcount == 0
    bpf.sysctl.maxinsns = 3
    with pytest.raises(OSError):
        bpf_ioctl_setf(d, load_dd("greater_1000"))  # four instructions
    bpf_close(d)


@pytest.mark.parametrize(
    ("setting", "counted"), [(BPF_D_IN, [PFIL_IN]), (BPF_D_OUT, [PFIL_OUT]), (1, [1, 2])]
)
def test_direction(kern: Kernel, bpf: Bpf, bif: BpfIf, setting: int, counted: list[int]) -> None:
    d = opened(bpf)
    bpf_ioctl_sdirection(d, setting)
    send(kern, bif, frame(sport=1).data, PFIL_IN)
    send(kern, bif, frame(sport=2).data, PFIL_OUT)
    assert d.bd_rcount == len(counted)
    bpf_close(d)


def test_bad_direction(bpf: Bpf) -> None:
    d = bpfopen(bpf, pid=1)
    with pytest.raises(OSError) as e:
        bpf_ioctl_sdirection(d, 3)
    assert e.value.errno == errno.EINVAL
    bpf_close(d)


def test_read_rules(kern: Kernel, bpf: Bpf, bif: BpfIf) -> None:
    d = opened(bpf)
    with pytest.raises(OSError) as e:
        bpfread(d, 100, nonblock=True)
    assert e.value.errno == errno.EINVAL  # must ask for bd_bufsize bytes
    with pytest.raises(BlockingIOError):
        bpfread(d, 4096, nonblock=True)  # nothing at all
    send(kern, bif, frame().data)
    with pytest.raises(BlockingIOError):
        bpfread(d, 4096, nonblock=False)  # a blocking read sleeps: the device waits
    assert bpfread_timedout(d) != b""  # ... and its timeout returns what is stored
    assert bpfread_timedout(d) == b""  # nothing left
    bpf_close(d)


def test_immediate_mode_wakes_on_every_packet(kern: Kernel, bpf: Bpf, bif: BpfIf) -> None:
    d = opened(bpf)
    woken: list[BpfD] = []
    d.bd_wakeup = woken.append
    send(kern, bif, frame().data)
    assert woken == [] and not bpf_ready(d)
    bpf_ioctl_immediate(d, True)
    send(kern, bif, frame().data)
    assert woken == [d] and bpf_ready(d)
    assert len(bpf_records(bpfread(d, 4096, nonblock=False))) == 2  # immediate: rotates
    bpf_close(d)


def test_wakeup_on_rotation(kern: Kernel, bpf: Bpf, bif: BpfIf) -> None:
    d = opened(bpf, size=512)
    woken: list[BpfD] = []
    d.bd_wakeup = woken.append
    for _ in range(3):
        send(kern, bif, frame(payload=b"r" * 150).data)  # 230 bytes a record: two fit
    assert woken == [d] and bpf_ready(d) and d.bd_hlen > 0
    bpf_close(d)


def test_read_timeout(kern: Kernel, bpf: Bpf, bif: BpfIf) -> None:
    d = opened(bpf)
    woken: list[BpfD] = []
    d.bd_wakeup = woken.append
    assert not bpfpoll(d) and d.bd_state == 0  # no timeout set: nothing armed
    bpf_ioctl_srtimeout(d, 0, 250_000)
    assert not bpfpoll(d) and d.bd_state == BPF_WAITING  # armed: the device starts a timer
    bpf_timed_out(d)
    assert d.bd_state == BPF_TIMED_OUT and woken == []  # nothing stored: no wakeup
    send(kern, bif, frame().data)  # a packet after the timeout wakes the reader
    assert woken == [d] and bpf_ready(d) and bpfpoll(d)
    assert len(bpf_records(bpfread(d, 4096, nonblock=False))) == 1
    # timeout fires with data stored: wake at once
    assert not bpfpoll(d)
    send(kern, bif, frame().data)
    bpf_timed_out(d)
    assert woken == [d, d]
    with pytest.raises(OSError) as e:
        bpf_ioctl_srtimeout(d, 0, 1_000_000)
    assert e.value.errno == errno.EINVAL
    bpf_close(d)


def test_detached_interface_read_enxio(kern: Kernel, bpf: Bpf, bif: BpfIf) -> None:
    d = opened(bpf)
    woken: list[BpfD] = []
    d.bd_wakeup = woken.append
    bpfdetach(bif)
    assert woken == [d] and d.bd_bif is None and bpf.stats.attached == 0
    with pytest.raises(OSError) as e:
        bpfread(d, 4096, nonblock=False)
    assert e.value.errno == errno.ENXIO
    bpf_close(d)


def test_unmapped_chain_copied_through_pages_and_counted(
    kern: Kernel, bpf: Bpf, bif: BpfIf
) -> None:
    d = opened(bpf, size=20000)
    m, data = unmapped_frame(kern, random.Random(3), npgs=3, first_pg_off=4000)
    bpf_mtap(bif, m, PFIL_OUT)
    m_freem(m)
    rec = bpf_records(bpfread(d, 20000, nonblock=True))[0]
    assert rec.data == data
    assert (bpf.stats.unmapped_copies, bpf.stats.unmapped_mbufs_copied) == (1, 1)
    # a snap length inside the headers reads no page
    bpf_ioctl_setf(d, [BPF_STMT(BPF_RET | BPF_K, 54)])
    m, data = unmapped_frame(kern, random.Random(4))
    bpf_mtap(bif, m, PFIL_OUT)
    m_freem(m)
    assert bpf_records(bpfread(d, 20000, nonblock=True))[0].data == data[:54]
    assert bpf.stats.unmapped_copies == 1
    bpf_close(d)


def test_mtap2_prepends_and_leaves_the_chain(kern: Kernel, bpf: Bpf, bif: BpfIf) -> None:
    d = opened(bpf)
    f = frame().data
    m = chain_of(kern, f[14:], [])
    bpf_mtap2(bif, f[:14], m, PFIL_OUT)
    assert m.m_len == len(f) - 14 and kern.stats.mb.mbufs_in_use == 1
    m_freem(m)
    assert bpf_records(bpfread(d, 4096, True))[0].data == f
    bpf_close(d)


def test_two_listeners_share_one_timestamp(kern: Kernel, bpf: Bpf, bif: BpfIf) -> None:
    d1, d2 = opened(bpf), opened(bpf)
    send(kern, bif, frame().data)
    r1 = bpf_records(bpfread(d1, 4096, True))[0]
    r2 = bpf_records(bpfread(d2, 4096, True))[0]
    assert (r1.tv_sec, r1.tv_frac) == (r2.tv_sec, r2.tv_frac)
    assert bpf.stats.packets_tapped == 1 and bpf.stats.packets_captured == 2
    bpf_close(d1)
    bpf_close(d2)


def test_netstat_rows_and_leaks(kern: Kernel, bpf: Bpf, bif: BpfIf) -> None:
    ds = [opened(bpf) for _ in range(3)]
    bpf_ioctl_immediate(ds[0], True)
    bpf_ioctl_sdirection(ds[1], BPF_D_OUT)
    send(kern, bif, frame().data)
    rows = bpf_stats(bpf)
    assert len(rows) == 3 and {r.bd_pid for r in rows} == {4242}
    flags = sorted(r.flags() for r in rows)
    assert flags == ["--fo---", "--fs---", "-ifs---"]
    assert all(r.bd_rcount == 1 and r.bd_fcount == 1 and r.bd_ifname == "nm0" for r in rows)
    st = bpf.stats
    assert (st.descriptors_in_use, st.attached, st.buffers_in_use) == (3, 3, 6)
    for d in ds:
        bpf_close(d)
    assert bpf.stats.leaks() == {} and bpf_stats(bpf) == []
    assert dict(bpf.stats.items())["bpf.descriptors_total"] == 3
