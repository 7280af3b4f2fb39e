"""Send-buffer accounting (mbuf/sockbuf.py; reference section 9)."""

from __future__ import annotations

import errno
import os
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbuf.kassert import KernelAssertion
from mbuf.kern import Kernel
from mbuf.mbuf import (
    EXT_SFBUF,
    M_BLOCKED,
    M_EXT,
    M_NOMAP,
    M_NOTREADY,
    Mbuf,
    m_copydata,
    m_extadd,
    m_get,
)
from mbuf.param import (
    MCLBYTES,
    MJUMPAGESIZE,
    MLEN,
    MSIZE,
    PAGE_SIZE,
    SB_EFFICIENCY,
    SB_MAX,
)
from mbuf.sendfile import sendfile_free_mext
from mbuf.sf_buf import SFB_NOWAIT
from mbuf.sockbuf import SBS_CANTSENDMORE, SockBuf
from tests.mbuf.builders import (
    PAGE_EDGES,
    FakeTls,
    chain,
    link,
    make_cluster,
    make_pgs,
    make_plain,
)

PHYS = 4 * 1024 * 1024


def new_sb(kern: Kernel, hiwat: int = 256 * 1024) -> SockBuf:
    return SockBuf(hiwat, kern.stats.sb)


def big_pgs(kern: Kernel, rng: random.Random, npgs: int, nrdy: int = 0) -> tuple[Mbuf, bytes]:
    """An unmapped mbuf too long to be compressed (m_len > MLEN)."""
    m, data = make_pgs(kern, rng, npgs=npgs, first_pg_off=0, last_pg_len=PAGE_SIZE)
    m.ext_pgs.nrdy = nrdy
    return m, data


# ---------------------------------------------------------------------------
# sbreserve / sbspace
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cc", [1, 4096, 64 * 1024, 256 * 1024, 1024 * 1024, SB_MAX])
def test_sbreserve_sets_hiwat_and_mbmax(cc: int) -> None:
    """sbreserve: sb_mbmax = min(cc * sb_efficiency, sb_max) (reference 9.1)."""
    sb = new_sb(Kernel(PHYS), cc)
    assert sb.sb_hiwat == cc
    assert sb.sb_mbmax == min(cc * SB_EFFICIENCY, SB_MAX)
    assert sb.sbspace() == min(cc, sb.sb_mbmax)


@pytest.mark.parametrize("cc", [0, -1, SB_MAX + 1])
def test_sbreserve_rejects_bad_sizes(cc: int) -> None:
    with pytest.raises(ValueError):
        new_sb(Kernel(PHYS), cc)


def test_sbspace_is_zero_when_cantsendmore(kern: Kernel) -> None:
    sb = new_sb(kern)
    assert sb.sbspace() == 256 * 1024
    sb.sb_state |= SBS_CANTSENDMORE
    assert sb.sbspace() == 0


def test_sbspace_storage_limit_binds_for_tiny_mbufs(kern: Kernel) -> None:
    """128 one-byte mbufs fill a 4 KiB buffer's 32 KiB storage allowance."""
    sb = new_sb(kern, 4096)
    rng = random.Random(0)
    for i in range(128):
        assert sb.sbspace() == min(4096 - i, 4096 * SB_EFFICIENCY - i * MSIZE)
        m, _ = make_plain(kern, 1, rng)
        sb.sbappendstream(m, notready=False)
    assert sb.sb_ccc == 128
    assert sb.sb_mbcnt == 128 * MSIZE == sb.sb_mbmax
    assert sb.sbspace() == 0
    sb.sbflush()
    assert kern.leaks() == {}


@pytest.mark.parametrize(
    ("kind", "charge", "clusters"),
    [
        ("plain", MSIZE, 0),
        ("cl2k", MSIZE + MCLBYTES, 1),
        ("cl4k", MSIZE + MJUMPAGESIZE, 1),
        ("pgs3", MSIZE + 3 * PAGE_SIZE, 1),
        ("pgs-small-notready", MSIZE + PAGE_SIZE, 1),
        ("sfbuf", MSIZE + PAGE_SIZE, 1),
    ],
)
def test_sballoc_charges_msize_plus_ext_size(
    kern: Kernel, kind: str, charge: int, clusters: int
) -> None:
    sb = new_sb(kern)
    rng = random.Random(1)
    notready = False
    if kind == "plain":
        m, _ = make_plain(kern, 100, rng)
    elif kind == "cl2k":
        m, _ = make_cluster(kern, MCLBYTES, 100, rng)
    elif kind == "cl4k":
        m, _ = make_cluster(kern, MJUMPAGESIZE, 100, rng)
    elif kind == "pgs3":
        m, _ = big_pgs(kern, rng, 3)
    elif kind == "pgs-small-notready":
        # Not ready, so not compressed on append: charged a whole page for 10 bytes.
        m, _ = make_pgs(kern, rng, npgs=1, first_pg_off=0, last_pg_len=10)
        m.ext_pgs.nrdy = 1
        notready = True
    else:
        pg = kern.phys.page_alloc_object(kern.pagecache.lookup(_fake_stat()), 0)
        assert pg is not None
        sf = kern.sfbufs.sf_buf_alloc(pg, SFB_NOWAIT)
        assert sf is not None
        m = m_get(kern)
        m_extadd(m, sf.kva, PAGE_SIZE, sendfile_free_mext, sf, None, 0, EXT_SFBUF)
        m.m_len = 100
    sb.sbappendstream(m, notready=notready)
    assert sb.sb_mbcnt == charge
    assert sb.sb_mcnt == 1 and sb.sb_ccnt == clusters
    assert sb.sb_ccc == m.m_len
    assert sb.sb_acc == (0 if notready else m.m_len)
    assert sb.sbspace() == min(sb.sb_hiwat - m.m_len, sb.sb_mbmax - charge)
    sb.sbflush()
    assert (sb.sb_mbcnt, sb.sb_mcnt, sb.sb_ccnt, sb.sb_ccc, sb.sb_acc) == (0, 0, 0, 0, 0)
    assert kern.leaks() == {}


def _fake_stat() -> os.stat_result:
    # st_mode, st_ino, st_dev, st_nlink, st_uid, st_gid, st_size, then times (mtime_ns 3)
    return os.stat_result((0o100644, 2, 1, 1, 0, 0, PAGE_SIZE, 0, 0, 0, 0, 0, 0, 0, 3, 0))


# ---------------------------------------------------------------------------
# Random appends and drops against an independent tally
# ---------------------------------------------------------------------------

_op = st.one_of(
    st.tuples(st.just("plain"), st.integers(0, MLEN)),
    st.tuples(st.just("cl2k"), st.integers(1, MCLBYTES)),
    st.tuples(st.just("cl4k"), st.integers(1, MJUMPAGESIZE)),
    st.tuples(st.just("pgs"), st.integers(1, 5)),
    st.tuples(st.just("tail"), st.integers(1, MLEN)),  # small unmapped: compressed on append
    st.tuples(st.just("drop"), st.floats(0, 1)),
)


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(_op, min_size=1, max_size=25), seed=st.integers(0, 2**32 - 1))
def test_sbspace_tracks_an_independent_tally(ops: list[tuple[str, Any]], seed: int) -> None:
    kern = Kernel(PHYS)
    sb = new_sb(kern, 64 * 1024)
    rng = random.Random(seed)
    tally: list[list[int]] = []  # [bytes left, storage charged] per mbuf
    stream = bytearray()
    peaks = [0, 0, 0]  # mcnt, mbcnt, ccc
    for kind, arg in ops:
        if kind == "drop":
            n = int(sb.sb_acc * arg)
            sb.sbdrop(n)
            del stream[:n]
            while n:
                take = min(n, tally[0][0])
                tally[0][0] -= take
                n -= take
                if tally[0][0] == 0:
                    tally.pop(0)
            while tally and tally[0][0] == 0:
                tally.pop(0)
        else:
            if kind == "plain":
                m, data = make_plain(kern, arg, rng)
                charge = MSIZE
            elif kind in ("cl2k", "cl4k"):
                size = MCLBYTES if kind == "cl2k" else MJUMPAGESIZE
                m, data = make_cluster(kern, size, arg, rng)
                charge = MSIZE + size
            elif kind == "pgs":
                m, data = big_pgs(kern, rng, arg)
                charge = MSIZE + arg * PAGE_SIZE
            else:
                m, data = make_pgs(kern, rng, npgs=1, first_pg_off=7, last_pg_len=arg)
                charge = MSIZE  # sbcompress copies it inline and frees the page
            sb.sbappendstream(m, notready=False)
            tally.append([len(data), charge])
            stream += data
        ccc = sum(t[0] for t in tally)
        mbcnt = sum(t[1] for t in tally)
        peaks = [max(peaks[0], len(tally)), max(peaks[1], mbcnt), max(peaks[2], ccc)]
        assert sb.sb_ccc == sb.sb_acc == ccc
        assert sb.sb_mbcnt == mbcnt
        assert sb.sb_mcnt == len(tally)
        assert sb.sbspace() == min(sb.sb_hiwat - ccc, sb.sb_mbmax - mbcnt)
        assert m_copydata(sb.sb_mb, 0, ccc) == stream
    st_ = kern.stats.sb
    assert (st_.mbufs_peak, st_.mbcnt_peak, st_.ccc_peak) == tuple(peaks)
    sb.sbflush()
    assert sb.sb_mb is None and sb.sb_mbtail is None
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# sbready: readiness in pages
# ---------------------------------------------------------------------------


def _notready_sb(kern: Kernel) -> tuple[SockBuf, Mbuf, list[Mbuf], bytes]:
    """A buffer holding one ready mbuf R, then not-ready A (2 pages), B (1), C (3)."""
    sb = new_sb(kern)
    rng = random.Random(7)
    r, rdata = big_pgs(kern, rng, 1)
    sb.sbappendstream(r, notready=False)
    a, adata = big_pgs(kern, rng, 2, nrdy=2)
    b, bdata = big_pgs(kern, rng, 1, nrdy=1)
    c, cdata = big_pgs(kern, rng, 3, nrdy=3)
    sb.sbappendstream(link(a, b, c), notready=True)
    return sb, r, [a, b, c], rdata + adata + bdata + cdata


def test_append_not_ready_sets_fnrdy_and_blocks_followers(kern: Kernel) -> None:
    sb, r, (a, b, c), data = _notready_sb(kern)
    assert sb.sb_acc == r.m_len == PAGE_SIZE
    assert sb.sb_ccc == len(data)
    assert sb.sb_fnrdy is a
    assert a.m_flags & M_NOTREADY and not a.m_flags & M_BLOCKED
    assert b.m_flags & M_NOTREADY and b.m_flags & M_BLOCKED
    assert c.m_flags & M_NOTREADY and c.m_flags & M_BLOCKED
    assert not r.m_flags & (M_NOTREADY | M_BLOCKED)
    sb.sbflush()
    assert kern.leaks() == {}


def test_sbready_partial_first_mbuf_is_einprogress(kern: Kernel) -> None:
    """Readying only some pages of the first not-ready mbuf makes no progress:
    sbready returns EINPROGRESS and sb_acc does not move (uipc_sockbuf.c: m0 == m)."""
    sb, _r, (a, _b, _c), _ = _notready_sb(kern)
    assert sb.sbready(a, 1) == errno.EINPROGRESS
    assert a.ext_pgs.nrdy == 1 and a.m_flags & M_NOTREADY
    assert sb.sb_acc == PAGE_SIZE
    assert sb.sb_fnrdy is a
    sb.sbflush()
    assert kern.leaks() == {}


def test_sbready_in_page_order(kern: Kernel) -> None:
    sb, r, (a, b, c), data = _notready_sb(kern)
    # B completes first: it is behind A, so nothing becomes available.
    assert sb.sbready(b, 1) == errno.EINPROGRESS
    assert not b.m_flags & M_NOTREADY and b.m_flags & M_BLOCKED
    assert sb.sb_acc == PAGE_SIZE and sb.sb_fnrdy is a
    # A completes: A and the ready B behind it become available; C still blocks.
    a.ext_pgs.nrdy = 2
    assert sb.sbready(a, 2) == 0
    assert a.ext_pgs.nrdy == 0
    assert not a.m_flags & (M_NOTREADY | M_BLOCKED)
    assert not b.m_flags & M_BLOCKED
    assert sb.sb_acc == r.m_len + a.m_len + b.m_len
    assert sb.sb_fnrdy is c and c.m_flags & M_BLOCKED
    # C in two steps: 2 of 3 pages (no progress; the return value is checked in
    # test_sbready_partial_first_mbuf_is_einprogress), then the last one.
    sb.sbready(c, 2)
    assert c.ext_pgs.nrdy == 1 and c.m_flags & M_NOTREADY
    assert sb.sb_acc == r.m_len + a.m_len + b.m_len and sb.sb_fnrdy is c
    assert sb.sbready(c, 1) == 0
    assert sb.sb_acc == sb.sb_ccc == len(data)
    assert sb.sb_fnrdy is None
    assert not any(m.m_flags & (M_NOTREADY | M_BLOCKED) for m in chain(sb.sb_mb))
    assert m_copydata(sb.sb_mb, 0, len(data)) == data
    sb.sbdrop(len(data))
    assert kern.leaks() == {}


def test_sbready_one_call_spanning_mbufs(kern: Kernel) -> None:
    """sendfile_iodone readies a whole batch: count = all pages of A, B and C."""
    sb, _r, _abc, data = _notready_sb(kern)
    assert sb.sbready(sb.sb_fnrdy, 6) == 0  # type: ignore[arg-type]
    assert sb.sb_acc == len(data) and sb.sb_fnrdy is None
    sb.sbflush()
    assert kern.leaks() == {}


def test_sbready_counts_one_per_mapped_mbuf(kern: Kernel) -> None:
    sb = new_sb(kern)
    rng = random.Random(3)
    ms = [make_cluster(kern, MJUMPAGESIZE, PAGE_SIZE, rng)[0] for _ in range(3)]
    sb.sbappendstream(link(*ms), notready=True)
    assert sb.sbready(ms[0], 2) == 0
    assert sb.sb_acc == 2 * PAGE_SIZE and sb.sb_fnrdy is ms[2]
    assert sb.sbready(ms[2], 1) == 0
    assert sb.sb_acc == 3 * PAGE_SIZE
    sb.sbflush()
    assert kern.leaks() == {}


def test_sbready_of_a_ready_mbuf_trips(kern: Kernel) -> None:
    sb = new_sb(kern)
    m, _ = make_plain(kern, 10, random.Random(0))
    sb.sbappendstream(m, notready=False)
    with pytest.raises(KernelAssertion):
        sb.sbready(m, 1)
    sb.sbflush()


def test_sbready_compresses_small_unmapped_and_fixes_accounting(kern: Kernel) -> None:
    sb = new_sb(kern)
    rng = random.Random(4)
    big, bdata = big_pgs(kern, rng, 2, nrdy=2)
    small, sdata = make_pgs(kern, rng, npgs=1, first_pg_off=PAGE_SIZE - 5, last_pg_len=5)
    small.ext_pgs.nrdy = 1
    sb.sbappendstream(link(big, small), notready=True)
    assert sb.sb_mbcnt == 2 * MSIZE + 3 * PAGE_SIZE and sb.sb_ccnt == 2
    assert sb.sbready(big, 3) == 0
    assert not small.m_flags & (M_NOMAP | M_EXT)  # copied inline
    assert big.m_flags & M_NOMAP  # too long to compress
    assert sb.sb_mbcnt == 2 * MSIZE + 2 * PAGE_SIZE and sb.sb_ccnt == 1
    assert kern.stats.vm.pages_anon == 2
    assert m_copydata(sb.sb_mb, 0, sb.sb_ccc) == bdata + sdata
    sb.sbdrop(sb.sb_acc)
    assert sb.sb_mbcnt == 0 and sb.sb_ccnt == 0
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# sbdrop / sbflush / sbsndptr
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("first", [*PAGE_EDGES, 5, 6, 3 * PAGE_SIZE])
def test_sbdrop_partial_within_unmapped_then_whole(kern: Kernel, first: int) -> None:
    sb = new_sb(kern)
    rng = random.Random(first)
    m, data = make_pgs(
        kern,
        rng,
        npgs=3,
        first_pg_off=1,
        last_pg_len=PAGE_SIZE - 1,
        hdr=rng.randbytes(5),
        trail=rng.randbytes(16),
    )
    total = len(data)
    sb.sbappendstream(m, notready=False)
    charged = sb.sb_mbcnt
    sb.sbdrop(first)
    assert sb.sb_mb is m
    assert m.m_data == first and m.m_len == total - first
    assert sb.sb_ccc == sb.sb_acc == total - first
    assert sb.sb_mbcnt == charged  # storage stays charged until the mbuf goes
    assert m_copydata(sb.sb_mb, 0, total - first) == data[first:]
    assert kern.stats.vm.pages_anon == 3
    sb.sbdrop(total - first)
    assert sb.sb_mb is None and sb.sb_mbtail is None
    assert (sb.sb_ccc, sb.sb_acc, sb.sb_mbcnt, sb.sb_mcnt) == (0, 0, 0, 0)
    assert kern.leaks() == {}


def test_sbdrop_whole_mbufs_and_zero_length_followers(kern: Kernel) -> None:
    sb = new_sb(kern)
    rng = random.Random(5)
    a, _ = make_cluster(kern, MCLBYTES, 1000, rng)
    z, _ = make_plain(kern, 0, rng)
    b, bdata = make_cluster(kern, MCLBYTES, 1000, rng)
    sb.sbappendstream(link(a, z, b), notready=False)
    sb.sbdrop(1000)
    assert sb.sb_mb is b  # the empty mbuf went with a
    assert sb.sb_mcnt == 1 and kern.stats.mb.mbufs_in_use == 1
    assert m_copydata(sb.sb_mb, 0, 1000) == bdata
    sb.sbdrop(1000)
    assert kern.leaks() == {}


def test_sbdrop_cannot_drop_not_ready_bytes(kern: Kernel) -> None:
    sb, _r, _abc, _ = _notready_sb(kern)
    with pytest.raises(KernelAssertion):
        sb.sbdrop(PAGE_SIZE + 1)
    sb.sbdrop(PAGE_SIZE)
    assert sb.sb_mb is sb.sb_fnrdy
    sb.sbflush()
    assert kern.leaks() == {}


def test_sbflush_frees_ready_and_not_ready(kern: Kernel) -> None:
    sb, _r, _abc, _ = _notready_sb(kern)
    sb.sbflush()
    assert sb.sb_mb is None and sb.sb_fnrdy is None and sb.sb_mbtail is None
    assert (sb.sb_ccc, sb.sb_acc, sb.sb_mbcnt, sb.sb_mcnt, sb.sb_ccnt) == (0, 0, 0, 0, 0)
    assert kern.leaks() == {}
    sb.sbflush()  # idempotent on an empty buffer
    assert kern.leaks() == {}


@pytest.mark.parametrize("off", [0, 1, 99, 100, 101, 2099, 2100, 2150])
def test_sbsndptr_finds_the_mbuf(kern: Kernel, off: int) -> None:
    sb = new_sb(kern)
    rng = random.Random(6)
    ms = [make_plain(kern, 100, rng)[0], make_cluster(kern, MCLBYTES, 2000, rng)[0]]
    ms.append(make_plain(kern, 60, rng)[0])
    sb.sbappendstream(link(*ms), notready=False)
    m, moff, walked = sb.sbsndptr(off)
    starts = [0, 100, 2100]
    idx = max(i for i, s in enumerate(starts) if s <= off)
    assert m is ms[idx] and moff == off - starts[idx] and walked == idx
    with pytest.raises(KernelAssertion):
        sb.sbsndptr(2160)
    sb.sbflush()
    assert kern.leaks() == {}


def test_peaks_follow_the_largest_buffer(kern: Kernel) -> None:
    sb1, sb2 = new_sb(kern), new_sb(kern)
    rng = random.Random(8)
    for _ in range(3):
        sb1.sbappendstream(big_pgs(kern, rng, 2)[0], notready=False)
    sb2.sbappendstream(make_plain(kern, 10, rng)[0], notready=False)
    st_ = kern.stats.sb
    assert st_.mbufs_peak == 3
    assert st_.mbcnt_peak == 3 * (MSIZE + 2 * PAGE_SIZE)
    assert st_.ccc_peak == 6 * PAGE_SIZE
    sb1.sbdrop(sb1.sb_acc)
    sb2.sbflush()
    assert (st_.mbufs_peak, st_.mbcnt_peak) == (3, 3 * (MSIZE + 2 * PAGE_SIZE))
    assert kern.leaks() == {}


def test_small_ready_unmapped_is_compressed_on_append_but_not_with_tls(kern: Kernel) -> None:
    rng = random.Random(10)
    sb = new_sb(kern)
    m, data = make_pgs(kern, rng, npgs=1, first_pg_off=3, last_pg_len=MLEN)
    sb.sbappendstream(m, notready=False)
    assert not m.m_flags & M_EXT and sb.sb_mbcnt == MSIZE
    assert m_copydata(sb.sb_mb, 0, MLEN) == data
    m2, _ = make_pgs(kern, rng, npgs=1, first_pg_off=3, last_pg_len=MLEN + 1)
    sb.sbappendstream(m2, notready=False)
    assert m2.m_flags & M_NOMAP and sb.sb_mbcnt == 2 * MSIZE + PAGE_SIZE
    sb.sbflush()
    # With a TLS session a small record keeps its pages (sbcompress skips TLS).
    sb.sb_tls_info = FakeTls()
    m3, _ = make_pgs(kern, rng, npgs=1, first_pg_off=0, last_pg_len=10)
    sb.sbappendstream(m3, notready=False)
    assert m3.m_flags & M_NOMAP and sb.sb_mbcnt == MSIZE + PAGE_SIZE
    sb.sbflush()
    assert kern.leaks() == {}
