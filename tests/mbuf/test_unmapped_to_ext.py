"""mb_unmapped_to_ext and mb_unmapped_compress (mbuf/mb_unmapped.py; reference 4.4, 4.5, 8)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbuf.kassert import KernelAssertion
from mbuf.kern import Kernel
from mbuf.mb_unmapped import m_uiotombuf, mb_unmapped_compress, mb_unmapped_to_ext
from mbuf.mbuf import (
    EXT_CLUSTER,
    EXT_JUMBOP,
    EXT_SFBUF,
    M_EXT,
    M_NOMAP,
    M_PKTHDR,
    M_RDONLY,
    Mbuf,
    m_copydata,
    m_copym,
    m_free,
    m_freem,
    m_length,
)
from mbuf.param import MLEN, PAGE_SIZE
from tests.mbuf.builders import (
    build_chain,
    chain,
    link,
    make_cluster,
    make_pgs,
    make_plain,
    mbuf_spec,
)

PHYS = 2 * 1024 * 1024
SEEDS = st.integers(0, 2**32 - 1)


def pages_in_range(m: Mbuf) -> int:
    """Pages of an unmapped mbuf that overlap its [m_data, m_data+m_len) window,
    computed from the layout fields with the reference 2.4 formula."""
    pgs = m.ext_pgs
    lo, hi = m.m_data, m.m_data + m.m_len
    pos = pgs.hdr_len
    count = 0
    for i in range(pgs.npgs):
        if i == pgs.npgs - 1:
            plen = pgs.last_pg_len
        else:
            plen = PAGE_SIZE - (pgs.first_pg_off if i == 0 else 0)
        if min(hi, pos + plen) - max(lo, pos) > 0:
            count += 1
        pos += plen
    return count


# ---------------------------------------------------------------------------
# mb_unmapped_to_ext
# ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(specs=st.lists(mbuf_spec(), min_size=1, max_size=5), seed=SEEDS, data=st.data())
def test_unmapped_to_ext_random_chains(specs: list[Any], seed: int, data: st.DataObject) -> None:
    kern = Kernel(PHYS)
    top, expected = build_chain(kern, specs, random.Random(seed))
    total = len(expected)
    assert m_copydata(top, 0, total) == expected
    unmapped = [m for m in chain(top) if m.m_flags & M_NOMAP]
    want_pages = sum(pages_in_range(m) for m in unmapped)
    keeps_pages = sum(1 for m in unmapped if pages_in_range(m))
    kept_anon = sum(m.ext_pgs.npgs for m in unmapped if pages_in_range(m))
    st_ = kern.stats
    before = (st_.sfbuf.in_use, st_.ip.unmapped_pages_mapped, st_.ip.unmapped_mbufs_converted)

    # An unmapped mbuf with nothing in range and no header byte left converts to
    # nothing, which the 2019 code takes for a failure: the chain is freed.
    fails = any(
        m.m_flags & M_NOMAP and m.m_len == 0 and m.m_data >= m.ext_pgs.hdr_len for m in chain(top)
    )

    out = mb_unmapped_to_ext(top)

    if fails:
        assert out is None
        assert kern.leaks() == {}
        return
    assert out is not None
    assert m_length(out)[0] == total
    assert m_copydata(out, 0, total) == expected
    assert not any(m.m_flags & M_NOMAP for m in chain(out))
    page_mbufs = [m for m in chain(out) if m.m_ext is not None and m.m_ext.ext_type == EXT_SFBUF]
    assert len(page_mbufs) == want_pages
    for m in page_mbufs:
        assert m.m_flags & M_RDONLY and m.m_flags & M_EXT
        assert m.m_len > 0 and m.m_data + m.m_len <= PAGE_SIZE
    for m in chain(out):
        if m.m_ext is not None:
            assert m.m_ext.ext_type in (EXT_SFBUF, EXT_CLUSTER, EXT_JUMBOP)
    assert st_.sfbuf.in_use == before[0] + want_pages
    assert st_.ip.unmapped_pages_mapped == before[1] + want_pages
    assert st_.ip.unmapped_mbufs_converted == before[2] + len(unmapped)
    # The originals survive (pages wired) exactly while a page mbuf refers to them.
    assert st_.mb.ext_pgs_in_use == keeps_pages
    assert st_.vm.pages_anon == kept_anon

    # Free the converted chain one mbuf at a time, in any order.
    pieces = list(chain(out))
    for m in pieces:
        m.m_next = None
    order = data.draw(st.permutations(range(len(pieces))), label="free order")
    for idx in order:
        m_free(pieces[idx])
    assert kern.leaks() == {}
    assert st_.sfbuf.in_use == 0 and st_.mb.sfbuf_mbufs_in_use == 0


@pytest.mark.parametrize("trim", [0, 1, 4, 5, 5 + PAGE_SIZE - 1, 5 + PAGE_SIZE, 5 + PAGE_SIZE + 1])
def test_unmapped_to_ext_header_page_trailer_pieces(trim: int) -> None:
    """A trimmed record converts to [header rest] + one mbuf per page in range + trailer."""
    kern = Kernel(PHYS)
    rng = random.Random(trim)
    hdr, trail = rng.randbytes(5), rng.randbytes(16)
    m, expected = make_pgs(
        kern, rng, npgs=3, first_pg_off=0, last_pg_len=PAGE_SIZE, hdr=hdr, trail=trail
    )
    m.m_data = trim
    m.m_len -= trim
    expected = expected[trim:]
    segments = [("copy", 0, 5)] + [
        ("page", 5 + i * PAGE_SIZE, 5 + (i + 1) * PAGE_SIZE) for i in range(3)
    ]
    segments.append(("copy", 5 + 3 * PAGE_SIZE, 5 + 3 * PAGE_SIZE + 16))
    want = [(kind, hi - max(lo, trim)) for kind, lo, hi in segments if hi > trim]
    out = mb_unmapped_to_ext(m)
    assert out is not None
    pieces = list(chain(out))
    got = [("page" if p.m_flags & M_EXT else "copy", p.m_len) for p in pieces]
    assert got == want
    assert m_copydata(out, 0, len(expected)) == expected
    assert pieces[-1].m_len == 16 and m_copydata(pieces[-1], 0, 16) == trail
    m_freem(out)
    assert kern.leaks() == {}


def test_unmapped_to_ext_does_not_carry_the_pkthdr() -> None:
    """The 2019 _mb_unmapped_to_ext builds plain m_get mbufs and never moves the
    pkthdr (ip_output's chains start with the mapped header mbuf, which has it)."""
    kern = Kernel(PHYS)
    rng = random.Random(2)
    m, expected = make_pgs(
        kern, rng, npgs=2, first_pg_off=7, last_pg_len=9, hdr=rng.randbytes(3), pkthdr=True
    )
    m.m_pkthdr_csum_flags = 0x15
    out = mb_unmapped_to_ext(m)
    assert out is not None
    assert not any(p.m_flags & M_PKTHDR for p in chain(out))
    assert m_copydata(out, 0, len(expected)) == expected
    m_freem(out)
    assert kern.leaks() == {}


def test_unmapped_to_ext_of_a_duplicate_keeps_the_owner() -> None:
    """What ip_output converts is an m_copym duplicate; the socket buffer's owner
    and its pages must survive both the conversion and the freeing of its result."""
    kern = Kernel(PHYS)
    rng = random.Random(3)
    owner, expected = make_pgs(kern, rng, npgs=4, first_pg_off=1, last_pg_len=PAGE_SIZE)
    dup = m_copym(owner, 100, 3 * PAGE_SIZE)
    out = mb_unmapped_to_ext(dup)
    assert out is not None
    assert m_copydata(out, 0, 3 * PAGE_SIZE) == expected[100 : 100 + 3 * PAGE_SIZE]
    m_freem(out)
    assert owner.m_ext is not None and owner.m_ext.ext_count == 1
    assert kern.stats.vm.pages_anon == 4
    assert m_copydata(owner, 0, len(expected)) == expected
    m_freem(owner)
    assert kern.leaks() == {}


def test_unmapped_to_ext_keeps_an_empty_mbuf_with_its_header_in_range() -> None:
    """An empty unmapped mbuf whose trim offset is still in its header becomes an
    empty plain mbuf, as the 2019 code makes one for the header part."""
    kern = Kernel(PHYS)
    rng = random.Random(4)
    a, adata = make_plain(kern, 10, rng)
    b, _ = make_pgs(kern, rng, npgs=1, first_pg_off=0, last_pg_len=100, hdr=b"HDR")
    b.m_data, b.m_len = 1, 0
    c, cdata = make_pgs(kern, rng, npgs=1, first_pg_off=0, last_pg_len=100)
    out = mb_unmapped_to_ext(link(a, b, c))
    assert out is a
    assert [p.m_len for p in chain(out)] == [10, 0, 100]
    assert m_copydata(out, 0, 110) == adata + cdata
    m_freem(out)
    assert kern.leaks() == {}


def test_unmapped_to_ext_fails_on_an_empty_mbuf_without_header() -> None:
    """Nothing in range and no header: the 2019 code's result is NULL, which
    mb_unmapped_to_ext takes for a failure; the whole chain is freed."""
    kern = Kernel(PHYS)
    rng = random.Random(4)
    a, _ = make_plain(kern, 10, rng)
    b, _ = make_pgs(kern, rng, npgs=1, first_pg_off=0, last_pg_len=100)
    b.m_data, b.m_len = 100, 0
    c, _ = make_pgs(kern, rng, npgs=1, first_pg_off=0, last_pg_len=100)
    assert mb_unmapped_to_ext(link(a, b, c)) is None
    assert kern.leaks() == {}


def test_unmapped_to_ext_refuses_unencrypted_tls_record() -> None:
    kern = Kernel(PHYS)
    rng = random.Random(5)
    a, _ = make_plain(kern, 10, rng)
    m, _ = make_pgs(kern, rng, npgs=2, first_pg_off=0, last_pg_len=10, hdr=rng.randbytes(5))
    m.ext_pgs.tls = object()
    top = link(a, m)
    with pytest.raises(KernelAssertion):
        mb_unmapped_to_ext(top)
    assert kern.stats.sfbuf.in_use == 0
    m.ext_pgs.tls = None
    m_freem(top)
    assert kern.leaks() == {}


def _unmapped_chain(kern: Kernel, npgs_each: list[int], lead_plain: bool) -> tuple[Mbuf, bytes]:
    rng = random.Random(sum(npgs_each))
    parts: list[Mbuf] = []
    expected = b""
    if lead_plain:
        p, d = make_plain(kern, 50, rng)
        parts.append(p)
        expected += d
    for n in npgs_each:
        m, d = make_pgs(
            kern,
            rng,
            npgs=n,
            first_pg_off=3,
            last_pg_len=PAGE_SIZE - 3 if n == 1 else PAGE_SIZE,
            trail=rng.randbytes(8),
        )
        parts.append(m)
        expected += d
        c, d = make_cluster(kern, 2048, 30, rng)
        parts.append(c)
        expected += d
    return link(*parts), expected


@pytest.mark.parametrize(
    ("nsfbufs", "npgs_each", "lead_plain"),
    [
        (2, [3], False),  # fails inside the first unmapped mbuf
        (3, [3, 1], True),  # the first converts, the second fails at once
        (4, [2, 3], False),  # the second fails part way
        (5, [1, 1, 1, 1, 2], True),  # the last one fails on its last page
    ],
)
def test_unmapped_to_ext_bounded_pool_failure_frees_everything(
    nsfbufs: int, npgs_each: list[int], lead_plain: bool
) -> None:
    kern = Kernel(PHYS, nsfbufs=nsfbufs)
    top, _ = _unmapped_chain(kern, npgs_each, lead_plain)
    assert sum(npgs_each) > nsfbufs
    assert mb_unmapped_to_ext(top) is None
    assert kern.stats.sfbuf.denied == 1
    assert kern.stats.sf.allocfail == 1
    assert kern.leaks() == {}
    assert kern.stats.vm.pages_free == kern.stats.vm.pages_total


@pytest.mark.parametrize("held", [0, 1])
def test_unmapped_to_ext_bounded_pool_exact_fit(held: int) -> None:
    """A conversion needing exactly the free sf_bufs succeeds; one more fails."""
    kern = Kernel(PHYS, nsfbufs=4 + held)
    pg = kern.phys.page_alloc_anon()
    assert pg is not None
    others = [kern.sfbufs.sf_buf_alloc(pg, 0) for _ in range(held)]
    top, expected = _unmapped_chain(kern, [2, 2], False)
    out = mb_unmapped_to_ext(top)
    assert out is not None
    assert m_copydata(out, 0, len(expected)) == expected
    assert kern.stats.sfbuf.in_use == 4 + held and kern.stats.sfbuf.denied == 0
    top2, _ = _unmapped_chain(kern, [1], False)
    assert mb_unmapped_to_ext(top2) is None
    assert kern.stats.sfbuf.denied == 1
    m_freem(out)
    for sf in others:
        assert sf is not None
        kern.sfbufs.sf_buf_free(sf)
    kern.phys.page_free_anon(pg)
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# mb_unmapped_compress
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, MLEN - 1, MLEN])
@pytest.mark.parametrize("first_pg_off", [0, 1, PAGE_SIZE - 1])
def test_compress_small_sole_reference(length: int, first_pg_off: int) -> None:
    kern = Kernel(PHYS)
    rng = random.Random(length)
    npgs = 1 if first_pg_off + length <= PAGE_SIZE else 2
    last = length if npgs == 1 else length - (PAGE_SIZE - first_pg_off)
    m, expected = make_pgs(kern, rng, npgs=npgs, first_pg_off=first_pg_off, last_pg_len=last)
    assert kern.stats.vm.pages_anon == npgs
    assert mb_unmapped_compress(m)
    assert not m.m_flags & (M_NOMAP | M_EXT | M_RDONLY)
    assert m.m_ext is None and m.m_len == length
    assert m_copydata(m, 0, length) == expected
    assert kern.stats.vm.pages_anon == 0  # pages released at once
    assert kern.stats.mb.ext_pgs_in_use == 0
    assert kern.stats.mb.compressed == 1
    assert kern.stats.mb.mbufs_in_use == 1
    m_freem(m)
    assert kern.leaks() == {}


def test_compress_keeps_a_trimmed_window_with_header_and_trailer() -> None:
    kern = Kernel(PHYS)
    rng = random.Random(9)
    m, expected = make_pgs(
        kern,
        rng,
        npgs=2,
        first_pg_off=PAGE_SIZE - 50,
        last_pg_len=50,
        hdr=rng.randbytes(5),
        trail=rng.randbytes(16),
    )
    m.m_data = 3
    m.m_len = len(expected) - 3 - 7
    assert mb_unmapped_compress(m)
    assert m.m_data == 0
    assert m_copydata(m, 0, m.m_len) == expected[3:-7]
    m_freem(m)
    assert kern.leaks() == {}


@pytest.mark.parametrize("why", ["shared", "pkthdr", "too-long", "mapped"])
def test_compress_refuses(why: str) -> None:
    kern = Kernel(PHYS)
    rng = random.Random(11)
    extra: list[Mbuf] = []
    if why == "mapped":
        m, expected = make_plain(kern, 10, rng)
    else:
        length = MLEN + 1 if why == "too-long" else 100
        m, expected = make_pgs(
            kern, rng, npgs=1, first_pg_off=0, last_pg_len=length, pkthdr=why == "pkthdr"
        )
        if why == "shared":
            extra.append(m_copym(m, 0, 10))
    flags = m.m_flags
    ext = m.m_ext
    assert not mb_unmapped_compress(m)
    assert m.m_flags == flags and m.m_ext is ext
    assert m_copydata(m, 0, m.m_len) == expected
    assert kern.stats.mb.compressed == 0
    if why == "shared":
        m_freem(extra.pop())
        assert mb_unmapped_compress(m)  # sole reference again
    m_freem(m)
    assert kern.leaks() == {}


def test_compress_of_uiotombuf_tail() -> None:
    kern = Kernel(PHYS)
    data = random.Random(1).randbytes(PAGE_SIZE + 20)
    top = m_uiotombuf(kern, data, nomap=True, maxseg=PAGE_SIZE)
    assert top is not None and top.m_next is not None
    assert not mb_unmapped_compress(top)  # a whole page: too long
    assert mb_unmapped_compress(top.m_next)
    assert kern.stats.vm.pages_anon == 1
    assert m_copydata(top, 0, len(data)) == data
    m_freem(top)
    assert kern.leaks() == {}
