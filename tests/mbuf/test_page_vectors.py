"""Page vectors at once: pages_alloc_anon, pages_free_anon, pages_unwire, and
the coalescing of physically contiguous pages into one scatter-gather entry."""

from __future__ import annotations

import os
import random

import pytest

from mbuf.kassert import KernelAssertion
from mbuf.kern import Kernel
from mbuf.mbuf import m_freem, m_unmapped_iov
from mbuf.param import PAGE_SIZE
from tests.mbuf.builders import (
    make_pgs,
)

MiB = 1 << 20


def _stat(size: int = 8 * PAGE_SIZE) -> os.stat_result:
    # All 16 fields: the page cache keys on st_mtime_ns (None in a 10-field stat_result).
    return os.stat_result((0o100644, 77, 1, 1, 0, 0, size, 0, 0, 0, 0.0, 0.0, 0.0, 0, 0, 0))


def test_alloc_is_one_ascending_run_and_free_gives_it_back() -> None:
    kern = Kernel(MiB)
    vm = kern.stats.vm
    free0 = vm.pages_free
    pas = kern.phys.pages_alloc_anon(5)
    assert pas is not None
    assert pas == [pas[0] + i * PAGE_SIZE for i in range(5)]
    assert (vm.pages_free, vm.pages_anon, vm.pages_wired) == (free0 - 5, 5, 5)
    assert all(kern.phys.phys_to_vm_page(pa).wire_count == 1 for pa in pas)
    kern.phys.pages_free_anon(pas)
    assert (vm.pages_free, vm.pages_anon, vm.pages_wired) == (free0, 0, 0)
    assert kern.phys.pages_alloc_anon(5) == pas  # freed last to first: the same run again


def test_alloc_short_takes_nothing() -> None:
    kern = Kernel(MiB)
    n = kern.phys.free_count()
    assert kern.phys.pages_alloc_anon(n + 1) is None
    assert kern.stats.vm.pages_anon == 0 and kern.phys.free_count() == n


def test_alloc_from_reservation() -> None:
    kern = Kernel(MiB)
    assert kern.phys.reserve(3)
    pas = kern.phys.pages_alloc_anon(3, reserved=True)
    assert pas is not None and len(pas) == 3
    assert kern.stats.vm.pages_reserved == 0
    with pytest.raises(KernelAssertion):
        kern.phys.pages_alloc_anon(1, reserved=True)
    kern.phys.pages_free_anon(pas)


def test_free_of_a_file_page_is_caught() -> None:
    kern = Kernel(MiB)
    obj = kern.pagecache.lookup(_stat())
    pg = kern.phys.page_alloc_object(obj, 0)
    assert pg is not None
    with pytest.raises(KernelAssertion):
        kern.phys.pages_free_anon([pg.phys_addr])


def test_unwire_vector_caches_valid_pages_and_frees_invalid_ones() -> None:
    kern = Kernel(MiB)
    phys, vm = kern.phys, kern.stats.vm
    obj = kern.pagecache.lookup(_stat())
    pages = [phys.page_alloc_object(obj, i) for i in range(3)]
    assert all(pg is not None for pg in pages)
    a, b, c = pages
    assert a is not None and b is not None and c is not None
    phys.page_validate(a)
    phys.page_validate(b)
    phys.page_wire(b)  # b is wired twice
    free_before = vm.pages_free
    phys.pages_unwire([a.phys_addr, b.phys_addr, c.phys_addr])
    assert (a.wire_count, b.wire_count, c.wire_count) == (0, 1, 0)
    assert vm.pages_cached == 1 and a.object is obj  # valid: stays cached, unwired
    assert c.object is None and vm.pages_free == free_before + 1  # invalid: freed
    assert vm.pages_wired == 1
    phys.pages_unwire([b.phys_addr])
    assert vm.pages_wired == 0 and vm.pages_cached == 2


def test_contiguous_pages_are_one_segment() -> None:
    kern = Kernel(MiB)
    rng = random.Random(1)
    m, expected = make_pgs(
        kern, rng, npgs=4, first_pg_off=100, last_pg_len=50, hdr=b"H" * 5, trail=b"T" * 17
    )
    pas = m.ext_pgs.pa
    assert pas == [pas[0] + i * PAGE_SIZE for i in range(4)]  # fresh memory: one run
    iov = m_unmapped_iov(m, 0, m.m_len)
    assert [len(v) for v in iov] == [5, m.m_len - 22, 17]
    assert b"".join(iov) == expected
    # A window inside the pages is one segment too.
    iov = m_unmapped_iov(m, 10, 2 * PAGE_SIZE)
    assert len(iov) == 1 and bytes(iov[0]) == expected[10 : 10 + 2 * PAGE_SIZE]
    m_freem(m)


def test_scattered_pages_are_one_segment_per_run() -> None:
    kern = Kernel(MiB)
    rng = random.Random(2)
    m, expected = make_pgs(kern, rng, npgs=4, first_pg_off=0, last_pg_len=PAGE_SIZE)
    pgs = m.ext_pgs
    pgs.pa[1], pgs.pa[2] = pgs.pa[2], pgs.pa[1]  # frames 0 2 1 3: no two adjacent in order
    data = b"".join(kern.phys.phys_view(pa) for pa in pgs.pa)
    iov = m_unmapped_iov(m, 0, m.m_len)
    assert len(iov) == 4 and b"".join(iov) == data
    pgs.pa[1], pgs.pa[2] = pgs.pa[2], pgs.pa[1]
    assert len(m_unmapped_iov(m, 0, m.m_len)) == 1
    assert b"".join(m_unmapped_iov(m, 0, m.m_len)) == expected
    m_freem(m)
    assert not kern.leaks()


def test_a_freed_run_comes_back_whole_and_singles_do_not_split_it() -> None:
    kern = Kernel(MiB)
    phys = kern.phys
    run = phys.pages_alloc_anon(4)
    single = phys.pages_alloc_anon(1)
    assert run is not None and single is not None
    phys.pages_free_anon(run)
    phys.pages_free_anon(single)
    again = phys.pages_alloc_anon(1)  # a single comes from the singles
    assert again is not None and again[0] not in run
    assert phys.pages_alloc_anon(4) == run
    phys.pages_free_anon(run)
    phys.pages_free_anon(again)
    assert not kern.leaks()


def test_cached_runs_are_free_memory_before_any_eviction() -> None:
    kern = Kernel(64 * PAGE_SIZE)
    phys, vm = kern.phys, kern.stats.vm
    runs = [phys.pages_alloc_anon(4) for _ in range(16)]  # all 64 frames
    assert all(r is not None for r in runs) and phys.free_count() == 0
    for r in runs:
        assert r is not None
        phys.pages_free_anon(r)
    assert phys.free_count() == 64 and vm.pages_free == 64
    # Single frames and other sizes split the cached runs; nothing is evicted.
    singles = [phys.page_alloc_anon() for _ in range(10)]
    threes = phys.pages_alloc_anon(3)
    assert all(pg is not None for pg in singles) and threes is not None
    assert vm.evictions == 0 and phys.free_count() == 64 - 13
    rest = phys.pages_alloc_anon(phys.free_count())
    assert rest is not None and phys.free_count() == 0
    assert phys.pages_alloc_anon(1) is None
    phys.pages_free_anon(rest)
    phys.pages_free_anon(threes)
    for pg in singles:
        assert pg is not None
        phys.page_free_anon(pg)
    assert vm.pages_free == 64 and not kern.leaks()


@pytest.mark.parametrize(
    ("frames", "one_run"),
    [([], True), ([7], True), ([3, 4, 5], True), ([3, 5, 4, 6], False), ([5, 4], False),
     ([3, 4, 6], False)],
)  # fmt: skip
def test_pages_contiguous(frames: list[int], one_run: bool) -> None:
    from mbuf.param import PHYS_BASE
    from mbuf.vm_page import pages_contiguous

    assert pages_contiguous([PHYS_BASE + f * PAGE_SIZE for f in frames]) is one_run
