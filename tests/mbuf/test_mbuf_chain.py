"""Reading, sharing and freeing mbuf chains (mbuf/mbuf.py; reference sections 2-4).

The expected bytes of every chain are built independently of the model's
readers (tests/mbuf/builders.py), so `m_copydata` and `m_chain_iov` are
checked against the source data, not against each other.
"""

from __future__ import annotations

import mmap
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbuf.kassert import KernelAssertion
from mbuf.kern import Kernel
from mbuf.mb_unmapped import m_uiotombuf, mb_free_mext_pgs
from mbuf.mbuf import (
    EXT_FLAG_EMBREF,
    EXT_PGS,
    EXT_SFBUF,
    M_EXT,
    M_FREED,
    M_NOMAP,
    M_RDONLY,
    Mbuf,
    m_adj,
    m_chain_iov,
    m_copydata,
    m_copym,
    m_extadd,
    m_free,
    m_freem,
    m_get,
    m_length,
    mb_ext_pgs_check,
)
from mbuf.param import (
    MBUF_PEXT_MAX_PGS,
    MCLBYTES,
    MJUMPAGESIZE,
    MLEN,
    PAGE_SIZE,
)
from mbuf.sf_buf import SFB_NOWAIT
from tests.mbuf.builders import (
    PAGE_EDGES,
    build_chain,
    chain,
    link,
    make_cluster,
    make_pgs,
    make_plain,
    mbuf_spec,
)

PHYS = 2 * 1024 * 1024  # 512 pages: enough for six 19-page mbufs
SEEDS = st.integers(0, 2**32 - 1)


# ---------------------------------------------------------------------------
# m_copydata / m_chain_iov
# ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(specs=st.lists(mbuf_spec(), min_size=1, max_size=6), seed=SEEDS, data=st.data())
def test_m_copydata_random_chains(specs: list[Any], seed: int, data: st.DataObject) -> None:
    kern = Kernel(PHYS)
    m, expected = build_chain(kern, specs, random.Random(seed))
    total = len(expected)
    assert m_length(m)[0] == total
    for n in chain(m):
        if n.m_flags & M_NOMAP:
            mb_ext_pgs_check(n)
    assert m_copydata(m, 0, total) == expected
    off = data.draw(st.one_of(st.sampled_from([0, total]), st.integers(0, total)), label="off")
    length = data.draw(st.integers(0, total - off), label="length")
    assert m_copydata(m, off, length) == expected[off : off + length]
    iov = m_chain_iov(m, off, length)
    assert b"".join(iov) == expected[off : off + length]
    # Scatter-gather entries are never empty; one longer than a page is a run of
    # physically contiguous frames (busdma coalescing), so it lies in the arena.
    assert all(len(v) > 0 for v in iov)
    assert all(len(v) <= PAGE_SIZE or isinstance(v.obj, mmap.mmap) for v in iov)
    m_freem(m)
    assert kern.leaks() == {}


@pytest.mark.parametrize("first_pg_off", [0, 1, PAGE_SIZE - 1])
@pytest.mark.parametrize("off", PAGE_EDGES)
@pytest.mark.parametrize("trim", PAGE_EDGES)
def test_m_copydata_unmapped_page_edges(first_pg_off: int, off: int, trim: int) -> None:
    """Offsets and trims at page edges, with a TLS-sized header and trailer."""
    kern = Kernel(PHYS)
    rng = random.Random(first_pg_off * 7 + off)
    m, expected = make_pgs(
        kern,
        rng,
        npgs=4,
        first_pg_off=first_pg_off,
        last_pg_len=PAGE_SIZE - 3,
        hdr=rng.randbytes(13),
        trail=rng.randbytes(16),
    )
    m_adj(m, trim)
    expected = expected[trim:]
    assert m.m_data == trim and m.m_len == len(expected)
    for length in (0, 1, PAGE_SIZE, len(expected) - off):
        assert m_copydata(m, off, length) == expected[off : off + length]
    m_freem(m)
    assert kern.leaks() == {}


def test_m_copydata_trailer_only_and_header_only_ranges() -> None:
    kern = Kernel(PHYS)
    rng = random.Random(1)
    hdr, trail = rng.randbytes(23), rng.randbytes(64)
    m, expected = make_pgs(kern, rng, npgs=2, first_pg_off=5, last_pg_len=9, hdr=hdr, trail=trail)
    assert m_copydata(m, 0, 23) == hdr
    assert m_copydata(m, m.m_len - 64, 64) == trail
    assert m_copydata(m, 22, 2) == expected[22:24]  # header/page seam
    assert m_copydata(m, m.m_len - 65, 2) == expected[-65:-63]  # page/trailer seam
    m_adj(m, m.m_len - 10)  # only 10 trailer bytes left
    assert m_copydata(m, 0, 10) == trail[-10:]
    m_freem(m)
    assert kern.leaks() == {}


def test_m_copydata_rejects_negative_and_overlong() -> None:
    kern = Kernel(PHYS)
    m, _ = make_plain(kern, 10, random.Random(0))
    with pytest.raises(ValueError):
        m_copydata(m, -1, 1)
    with pytest.raises(ValueError):
        m_copydata(m, 0, -1)
    with pytest.raises(KernelAssertion):
        m_copydata(m, 5, 6)
    m_freem(m)


def test_m_copydata_empty_chain_range() -> None:
    kern = Kernel(PHYS)
    m, _ = make_plain(kern, 0, random.Random(0))
    assert m_copydata(m, 0, 0) == b""
    assert m_chain_iov(m, 0, 0) == []
    m_freem(m)
    assert kern.leaks() == {}


@pytest.mark.parametrize("size", [1, PAGE_SIZE - 1, PAGE_SIZE, PAGE_SIZE + 1, 16383, 16384, 16385])
@pytest.mark.parametrize("maxseg", [0, PAGE_SIZE, 16384])
def test_m_uiotombuf_nomap_layout(size: int, maxseg: int) -> None:
    kern = Kernel(PHYS)
    data = random.Random(size).randbytes(size)
    top = m_uiotombuf(kern, data, nomap=True, maxseg=maxseg)
    assert top is not None
    seg = maxseg or MBUF_PEXT_MAX_PGS * PAGE_SIZE
    lens = [m.m_len for m in chain(top)]
    assert lens == [min(seg, size - i) for i in range(0, size, seg)]
    pages = 0
    for m in chain(top):
        mb_ext_pgs_check(m)
        pgs = m.ext_pgs
        assert m.m_flags & M_NOMAP and m.m_ext is not None
        assert m.m_ext.ext_type == EXT_PGS and m.m_ext.ext_size == pgs.npgs * PAGE_SIZE
        assert pgs.first_pg_off == 0 and pgs.hdr_len == 0 and pgs.trail_len == 0
        pages += pgs.npgs
    assert kern.stats.vm.pages_anon == pages
    assert m_copydata(top, 0, size) == data
    m_freem(top)
    assert kern.leaks() == {}
    assert kern.stats.vm.pages_free == kern.stats.vm.pages_total


def test_m_uiotombuf_empty_and_mapped() -> None:
    kern = Kernel(PHYS)
    assert m_uiotombuf(kern, b"") is None
    assert m_uiotombuf(kern, b"", nomap=True) is None
    data = random.Random(3).randbytes(MJUMPAGESIZE + MCLBYTES + 100)
    top = m_uiotombuf(kern, data)
    assert top is not None
    assert not any(m.m_flags & M_NOMAP for m in chain(top))
    assert m_copydata(top, 0, len(data)) == data
    m_freem(top)
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# m_copym: shared storage, one free
# ---------------------------------------------------------------------------


def _owner(kern: Kernel, kind: str, rng: random.Random, calls: list[Mbuf]) -> tuple[Mbuf, bytes]:
    """An mbuf owning external storage whose free routine records its calls."""
    if kind == "pgs":

        def free_pgs(m: Mbuf) -> None:
            calls.append(m)
            mb_free_mext_pgs(m)

        return make_pgs(
            kern,
            rng,
            npgs=3,
            first_pg_off=100,
            last_pg_len=200,
            hdr=rng.randbytes(5),
            trail=rng.randbytes(16),
            ext_free=free_pgs,
        )
    if kind == "sfbuf":
        pg = kern.phys.page_alloc_anon()
        assert pg is not None
        sf = kern.sfbufs.sf_buf_alloc(pg, SFB_NOWAIT)
        assert sf is not None
        page = rng.randbytes(PAGE_SIZE)
        sf.kva[:] = page

        def free_sf(m: Mbuf) -> None:
            calls.append(m)
            kern.sfbufs.sf_buf_free(sf)
            kern.phys.page_free_anon(pg)

        m = m_get(kern)
        m_extadd(m, sf.kva, PAGE_SIZE, free_sf, sf, None, M_RDONLY, EXT_SFBUF)
        m.m_data = 10
        m.m_len = PAGE_SIZE - 10
        return m, page[10:]
    return make_cluster(kern, MCLBYTES if kind == "cl2k" else MJUMPAGESIZE, 1500, rng)


@settings(max_examples=120, deadline=None)
@given(
    kind=st.sampled_from(["pgs", "sfbuf", "cl2k", "cl4k"]),
    ranges=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=5),
    seed=SEEDS,
    data=st.data(),
)
def test_m_copym_shares_storage_and_frees_once(
    kind: str, ranges: list[tuple[float, float]], seed: int, data: st.DataObject
) -> None:
    kern = Kernel(PHYS)
    calls: list[Mbuf] = []
    owner, expected = _owner(kern, kind, random.Random(seed), calls)
    total = len(expected)
    mbufs_before = kern.stats.mb.mbufs_in_use
    dups: list[Mbuf] = []
    for a, b in ranges:
        off = min(int(a * total), total - 1)
        length = max(1, int(b * (total - off)))
        d = m_copym(owner, off, length)
        assert d.m_next is None
        assert m_copydata(d, 0, length) == expected[off : off + length]
        assert d.m_data == owner.m_data + off
        dups.append(d)
    assert owner.m_ext is not None
    assert owner.m_ext.ext_count == 1 + len(dups)
    assert kern.stats.mb.mbufs_in_use == mbufs_before + len(dups)
    for d in dups:
        ext = d.m_ext
        assert ext is not None
        assert d.m_flags & M_EXT
        # mb_dupcl: M_RDONLY and M_NOMAP come from the source (page vectors and
        # sf_bufs are read-only; a cluster's copy is read-only by its count only)
        assert (
            bool(d.m_flags & M_RDONLY)
            == bool(owner.m_flags & M_RDONLY)
            == (kind in ("pgs", "sfbuf"))
        )
        assert bool(d.m_flags & M_NOMAP) == bool(owner.m_flags & M_NOMAP)
        assert ext.ext_free is None and ext.ext_arg1 is None
        assert ext.ext_mref is owner
        assert not ext.ext_flags & EXT_FLAG_EMBREF
        assert ext.ext_type == owner.m_ext.ext_type
    everyone = [owner, *dups]
    order = data.draw(st.permutations(range(len(everyone))), label="free order")
    for i, idx in enumerate(order):
        assert calls == []
        assert kern.leaks() != {}
        m_free(everyone[idx])
        if i < len(order) - 1:
            assert owner.m_ext.ext_count == len(order) - 1 - i
    if kind in ("pgs", "sfbuf"):
        assert calls == [owner]  # run once, on the owner
    assert kern.leaks() == {}
    assert all(m.m_flags == M_FREED for m in everyone)
    # Any further free of any of them is a double free.
    again = data.draw(st.sampled_from(everyone), label="double free")
    with pytest.raises(KernelAssertion):
        m_free(again)


def test_m_copym_mixed_chain_copies_internal_data_and_shares_clusters() -> None:
    kern = Kernel(PHYS)
    rng = random.Random(5)
    p, pdata = make_plain(kern, 100, rng)
    c, cdata = make_cluster(kern, MCLBYTES, 2000, rng)
    u, udata = make_pgs(kern, rng, npgs=2, first_pg_off=1, last_pg_len=PAGE_SIZE)
    top = link(p, c, u)
    expected = pdata + cdata + udata
    cp = m_copym(top, 50, len(expected) - 60)
    assert m_copydata(cp, 0, len(expected) - 60) == expected[50:-10]
    first, second, third = list(chain(cp))
    # Internal data was copied: changing the original does not show through.
    assert p.m_dat is not None
    p.m_dat[60] ^= 0xFF
    assert m_copydata(cp, 10, 1) == pdata[60:61]
    assert not first.m_flags & M_EXT
    # Cluster storage is shared: a write to it shows through the copy.
    assert c.m_ext is not None and c.m_ext.ext_buf is not None
    c.m_ext.ext_buf[0] ^= 0xFF
    assert m_copydata(cp, 50, 1) == bytes([cdata[0] ^ 0xFF])
    assert second.m_ext is not None and second.m_ext.ext_buf is c.m_ext.ext_buf
    assert third.m_flags & M_NOMAP and third.ext_pgs is u.ext_pgs
    assert third.m_len == u.m_len - 10
    m_freem(top)
    assert kern.stats.mb.ext_pgs_in_use == 1 and kern.stats.mb.clusters_in_use == 1
    m_freem(cp)
    assert kern.leaks() == {}


@pytest.mark.parametrize("length", [0, -1])
def test_m_copym_rejects_empty_ranges(length: int) -> None:
    kern = Kernel(PHYS)
    m, _ = make_plain(kern, 10, random.Random(0))
    with pytest.raises(KernelAssertion):
        m_copym(m, 0, length)
    m_freem(m)


def test_m_copym_beyond_chain_trips() -> None:
    kern = Kernel(PHYS)
    m, _ = make_cluster(kern, MCLBYTES, 100, random.Random(0))
    with pytest.raises(KernelAssertion):
        m_copym(m, 50, 51)


# ---------------------------------------------------------------------------
# Double free and use after free
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["plain", "cluster", "pgs"])
def test_double_free_trips(kind: str) -> None:
    kern = Kernel(PHYS)
    rng = random.Random(0)
    if kind == "plain":
        m, _ = make_plain(kern, 1, rng)
    elif kind == "cluster":
        m, _ = make_cluster(kern, MCLBYTES, 1, rng)
    else:
        m, _ = make_pgs(kern, rng, npgs=1, first_pg_off=0, last_pg_len=1)
    m_free(m)
    assert kern.leaks() == {}
    with pytest.raises(KernelAssertion):
        m_free(m)
    with pytest.raises(KernelAssertion):
        m_freem(m)
    # The failed frees did not disturb the counters.
    assert kern.leaks() == {}
    assert kern.stats.mb.mbufs_in_use == 0


def test_duplicate_double_free_trips_immediately() -> None:
    kern = Kernel(PHYS)
    owner, _ = make_cluster(kern, MCLBYTES, 100, random.Random(0))
    d = m_copym(owner, 0, 10)
    m_free(d)
    with pytest.raises(KernelAssertion):
        m_free(d)
    assert owner.m_ext is not None and owner.m_ext.ext_count == 1
    m_free(owner)
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# m_adj
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("front", PAGE_EDGES)
@pytest.mark.parametrize("back", [0, 1, 16, 17, PAGE_SIZE])
def test_m_adj_across_a_mixed_chain(front: int, back: int) -> None:
    kern = Kernel(PHYS)
    rng = random.Random(front + back)
    a, adata = make_plain(kern, MLEN, rng)
    b, bdata = make_pgs(
        kern, rng, npgs=3, first_pg_off=PAGE_SIZE - 1, last_pg_len=17, trail=rng.randbytes(16)
    )
    c, cdata = make_cluster(kern, MJUMPAGESIZE, PAGE_SIZE, rng)
    top = link(a, b, c)
    expected = adata + bdata + cdata
    m_adj(top, front)
    m_adj(top, -back)
    expected = expected[front : len(expected) - back]
    assert m_length(top)[0] == len(expected)
    assert m_copydata(top, 0, len(expected)) == expected
    mb_ext_pgs_check(b)
    m_freem(top)
    assert kern.leaks() == {}


def test_m_uiotombuf_nomap_refuses_partial_page_segments() -> None:
    """Unmapped segments are whole pages (KTLS frames are, and so is the default)."""
    kern = Kernel(8 << 20)
    with pytest.raises(KernelAssertion, match="whole pages"):
        m_uiotombuf(kern, bytes(10000), nomap=True, maxseg=5000)
    assert kern.leaks() == {}
