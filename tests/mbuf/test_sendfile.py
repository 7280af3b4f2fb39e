"""sendfile over real files (mbuf/sendfile.py, vm_object.py, vm_page.py; reference section 5).

Page-ins are run by the test itself, as the server's worker threads would:
`req.run()` then `vm_pager_iodone(kern, req)` for every PagerRequest that
`sendfile_step` hands back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from mbuf.kassert import KernelAssertion
from mbuf.kern import Kernel
from mbuf.mb_unmapped import m_uiotombuf
from mbuf.mbuf import (
    EXT_SFBUF,
    M_BLOCKED,
    M_NOMAP,
    M_NOTREADY,
    m_copydata,
    m_freem,
    mb_ext_pgs_check,
)
from mbuf.param import MBUF_PEXT_MAX_PGS, PAGE_SIZE, howmany
from mbuf.sendfile import SendfileJob, SendfileStatus, sendfile_step
from mbuf.socket import soclose
from mbuf.vm_object import PagerRequest
from tests.mbuf.builders import (
    SMALL_MEM,
    DiskFile,
    FakeTls,
    MiB,
    chain,
    sendfile_all,
    take_ready,
)
from tests.support.files import file_bytes
from tests.support.pair import (
    new_socket,
    run_io,
)

MakeFile = Callable[[bytes], DiskFile]

SIZES = [0, 1, 4095, 4096, 4097, 16383, 16384, 16385, 3 * MiB]
OFFSETS = [0, 1, 4095, 4096]
CASES = [(size, off) for size in SIZES for off in OFFSETS if off <= size]


def pages_spanned(off: int, n: int) -> int:
    return 0 if n == 0 else howmany(off % PAGE_SIZE + n, PAGE_SIZE)


# ---------------------------------------------------------------------------
# Bytes and mbuf shapes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "off"), CASES)
def test_sendfile_bytes_and_ext_pgs_shape(make_file: MakeFile, size: int, off: int) -> None:
    kern = Kernel(SMALL_MEM)
    tf = make_file(file_bytes(size))
    so = new_socket(kern)
    shapes: list[tuple[int, int]] = []

    def inspect(status: SendfileStatus) -> None:
        for m in chain(so.so_snd.sb_mb):
            if m.m_flags & M_NOMAP:
                mb_ext_pgs_check(m)
                shapes.append((m.ext_pgs.npgs, m.m_len))

    out = sendfile_all(kern, so, tf, off, size - off, on_step=inspect)
    assert out == tf.data[off:]
    assert all(npgs <= MBUF_PEXT_MAX_PGS for npgs, _ in shapes)
    if size - off > MBUF_PEXT_MAX_PGS * PAGE_SIZE:
        assert max(npgs for npgs, _ in shapes) == MBUF_PEXT_MAX_PGS
    st = kern.stats.sf
    # Read by the batches or ahead of them; every page read ahead is a hit later.
    assert st.pages_read + st.rhpages_read == pages_spanned(off, size - off)
    assert st.pages_valid == st.rhpages_read
    soclose(so)
    assert kern.leaks() == {}


@pytest.mark.parametrize(("size", "off"), CASES)
def test_sendfile_tls_records_are_at_most_four_pages(
    make_file: MakeFile, size: int, off: int
) -> None:
    kern = Kernel(SMALL_MEM)
    tf = make_file(file_bytes(size))
    tls = FakeTls()
    so = new_socket(kern, tls=tls)
    out = sendfile_all(kern, so, tf, off, size - off, tls=tls)
    assert out == tls.wire_bytes(tf.data[off:])
    recs = tls.records
    assert sum(r.payload for r in recs) == size - off
    assert tls.seqnos == list(range(len(recs)))
    pos = off
    for i, r in enumerate(recs):
        assert r.npgs <= 4 and r.payload <= 16384
        assert r.first_pg_off == pos % PAGE_SIZE
        if i:
            assert r.first_pg_off == 0  # only the first record starts mid-page
        pos += r.payload
        if i < len(recs) - 1:
            assert pos % PAGE_SIZE == 0  # every record but the last ends on a page boundary
    assert tls.enqueued_pages == pages_spanned(off, size - off)
    soclose(so)
    assert kern.leaks() == {}


@pytest.mark.parametrize("hdr_len", [1, 200, 16384, 16385])
def test_sendfile_tls_headers_are_their_own_records(make_file: MakeFile, hdr_len: int) -> None:
    kern = Kernel(SMALL_MEM)
    tf = make_file(file_bytes(3 * PAGE_SIZE))
    hdr = bytes(range(256)) * (hdr_len // 256) + bytes(hdr_len % 256)
    tls = FakeTls()
    so = new_socket(kern, tls=tls)
    out = sendfile_all(kern, so, tf, 1, 3 * PAGE_SIZE - 1, hdr=hdr, tls=tls)
    assert out == tls.wire_bytes(hdr + tf.data[1:])
    nhdr = howmany(hdr_len, 16384)
    assert [r.payload for r in tls.records[:nhdr]] == [
        min(16384, hdr_len - i) for i in range(0, hdr_len, 16384)
    ]
    assert tls.records[nhdr].first_pg_off == 1
    soclose(so)
    assert kern.leaks() == {}


@pytest.mark.parametrize("hdr", [b"", b"HTTP/1.1 200 OK\r\n\r\n", b"x" * 5000])
def test_sendfile_plain_header_precedes_file(make_file: MakeFile, hdr: bytes) -> None:
    kern = Kernel(SMALL_MEM)
    tf = make_file(file_bytes(10000))
    so = new_socket(kern)
    job = SendfileJob(so, tf.obj(kern), tf.fd, 0, 10000, hdr)
    io: list[PagerRequest] = []
    assert sendfile_step(job, io) is SendfileStatus.DONE
    assert job.sbytes == len(hdr) + 10000
    # The header is ready at once; the file pages wait for the pager.
    assert so.so_snd.sb_acc == len(hdr)
    run_io(kern, io)
    assert take_ready(so.so_snd) == hdr + tf.data
    soclose(so)
    assert kern.leaks() == {}


@pytest.mark.parametrize(("size", "off"), [(s, o) for s, o in CASES if s <= 16385])
def test_sendfile_without_ext_pgs_uses_one_sfbuf_mbuf_per_page(
    make_file: MakeFile, size: int, off: int
) -> None:
    kern = Kernel(SMALL_MEM, mb_use_ext_pgs=False)
    tf = make_file(file_bytes(size))
    so = new_socket(kern)
    job = SendfileJob(so, tf.obj(kern), tf.fd, off, size - off)
    io: list[PagerRequest] = []
    assert sendfile_step(job, io) is SendfileStatus.DONE
    run_io(kern, io)
    sb = so.so_snd
    ms = list(chain(sb.sb_mb))
    npages = pages_spanned(off, size - off)
    assert len(ms) == npages
    for i, m in enumerate(ms):
        assert not m.m_flags & M_NOMAP
        assert m.m_ext is not None and m.m_ext.ext_type == EXT_SFBUF
        assert m.m_data == (off % PAGE_SIZE if i == 0 else 0)
        assert m.m_data + m.m_len <= PAGE_SIZE
    assert kern.stats.sfbuf.in_use == npages
    assert kern.stats.mb.sfbuf_mbufs_in_use == npages
    assert kern.stats.mb.ext_pgs_in_use == 0
    assert take_ready(sb) == tf.data[off:]
    assert kern.stats.sfbuf.in_use == 0
    soclose(so)
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# Page cache: reads, hits, sharing, readiness
# ---------------------------------------------------------------------------


def test_sendfile_not_ready_until_pager_completes(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM)
    npages = MBUF_PEXT_MAX_PGS + 5
    size = npages * PAGE_SIZE - 100
    tf = make_file(file_bytes(size))
    so = new_socket(kern)
    job = SendfileJob(so, tf.obj(kern), tf.fd, 0, size)
    io: list[PagerRequest] = []
    assert sendfile_step(job, io) is SendfileStatus.DONE
    sb = so.so_snd
    ms = list(chain(sb.sb_mb))
    assert [m.ext_pgs.npgs for m in ms] == [MBUF_PEXT_MAX_PGS, 5]
    assert all(m.m_flags & M_NOTREADY for m in ms)
    assert ms[1].m_flags & M_BLOCKED
    assert [m.ext_pgs.nrdy for m in ms] == [MBUF_PEXT_MAX_PGS, 5]
    assert sb.sb_acc == 0 and sb.sb_ccc == size and sb.sb_fnrdy is ms[0]
    assert so.so_pending == 1
    assert sum(len(r.pages) for r in io) == npages
    assert kern.stats.vm.pages_wired == npages
    run_io(kern, io)
    assert so.so_pending == 0
    assert all(m.ext_pgs.nrdy == 0 for m in ms)
    assert not any(m.m_flags & (M_NOTREADY | M_BLOCKED) for m in ms)
    assert sb.sb_acc == size and sb.sb_fnrdy is None
    assert m_copydata(sb.sb_mb, 0, size) == tf.data
    soclose(so)
    assert kern.leaks() == {}


def test_sendfile_second_send_hits_the_cache(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM)
    size = 10 * PAGE_SIZE + 1
    tf = make_file(file_bytes(size))
    so = new_socket(kern)
    assert sendfile_all(kern, so, tf, 0, size) == tf.data
    st = kern.stats.sf
    assert (st.pages_read, st.pages_valid, st.noiocnt, st.iocnt) == (11, 0, 0, 1)
    assert (kern.stats.vm.vnodein, kern.stats.vm.vnodepgsin) == (1, 11)
    job = SendfileJob(so, tf.obj(kern), tf.fd, 0, size)
    io: list[PagerRequest] = []
    assert sendfile_step(job, io) is SendfileStatus.DONE
    assert io == []
    assert so.so_snd.sb_acc == size  # ready at once: no I/O
    # sf_noiocnt counts batches that started no read: this call's one batch.
    assert (st.pages_read, st.pages_valid, st.noiocnt, st.iocnt) == (11, 11, 1, 1)
    assert take_ready(so.so_snd) == tf.data
    soclose(so)
    assert kern.leaks() == {}


def test_sendfile_partial_cache_reads_only_missing_runs(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM)
    size = 12 * PAGE_SIZE
    tf = make_file(file_bytes(size))
    so = new_socket(kern)
    # Warm pages 2-3 and 7.
    assert sendfile_all(kern, so, tf, 2 * PAGE_SIZE, 2 * PAGE_SIZE) == tf.data[8192:16384]
    assert sendfile_all(kern, so, tf, 7 * PAGE_SIZE, 10) == tf.data[7 * 4096 : 7 * 4096 + 10]
    st = kern.stats.sf
    read0 = st.pages_read
    job = SendfileJob(so, tf.obj(kern), tf.fd, 0, size)
    io: list[PagerRequest] = []
    assert sendfile_step(job, io) is SendfileStatus.DONE
    assert [(r.offset // PAGE_SIZE, len(r.pages)) for r in io] == [(0, 2), (4, 3), (8, 4)]
    assert st.pages_read - read0 == 9 and st.pages_valid == 3
    run_io(kern, io)
    assert take_ready(so.so_snd) == tf.data
    soclose(so)
    assert kern.leaks() == {}


def test_file_pages_stay_cached_and_unwired_after_free(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM)
    size = 5 * PAGE_SIZE + 3
    tf = make_file(file_bytes(size))
    so = new_socket(kern)
    assert sendfile_all(kern, so, tf, 0, size) == tf.data
    vm = kern.stats.vm
    assert vm.pages_cached == 6
    assert vm.pages_wired == 0
    obj = tf.obj(kern)
    assert sorted(obj.pages) == list(range(6))
    assert all(pg.valid and pg.wire_count == 0 for pg in obj.pages.values())
    assert vm.pages_free + vm.pages_cached == vm.pages_total
    soclose(so)
    assert kern.leaks() == {}


def test_two_sockets_share_in_flight_reads(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM)
    size = 8 * PAGE_SIZE + 77
    tf = make_file(file_bytes(size))
    obj = tf.obj(kern)
    a, b = new_socket(kern), new_socket(kern)
    io_a: list[PagerRequest] = []
    io_b: list[PagerRequest] = []
    assert sendfile_step(SendfileJob(a, obj, tf.fd, 0, size), io_a) is SendfileStatus.DONE
    assert sendfile_step(SendfileJob(b, obj, tf.fd, 100, size - 100), io_b) is SendfileStatus.DONE
    assert io_b == []  # nothing read twice
    assert kern.stats.sf.busy_waits == 9
    assert kern.stats.sf.pages_read == 9
    assert a.so_pending == b.so_pending == 1
    assert a.so_snd.sb_acc == b.so_snd.sb_acc == 0
    run_io(kern, io_a)
    assert a.so_pending == b.so_pending == 0
    assert take_ready(a.so_snd) == tf.data
    assert take_ready(b.so_snd) == tf.data[100:]
    assert (kern.stats.vm.vnodein, kern.stats.vm.vnodepgsin) == (1, 9)
    soclose(a)
    soclose(b)
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# Back-pressure
# ---------------------------------------------------------------------------


def test_sendfile_stops_at_sbspace_and_resumes(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM)
    hiwat = 64 * 1024
    size = 256 * 1024 + 5
    tf = make_file(file_bytes(size))
    so = new_socket(kern, sndbuf=hiwat)
    sb = so.so_snd
    job = SendfileJob(so, tf.obj(kern), tf.fd, 0, size)
    io: list[PagerRequest] = []
    assert sendfile_step(job, io) is SendfileStatus.NEED_SPACE
    assert sb.sb_ccc == hiwat and job.sbytes == hiwat and job.off == hiwat
    assert kern.stats.sb.sbspace_waits == 1
    run_io(kern, io)
    got = bytearray()
    # Dropping less than the low-water mark (hiwat/2) is not enough to go on.
    got += m_copydata(sb.sb_mb, 0, hiwat // 2 - 1)
    sb.sbdrop(hiwat // 2 - 1)
    io = []
    assert sendfile_step(job, io) is SendfileStatus.NEED_SPACE
    assert io == [] and job.sbytes == hiwat
    while True:
        got += take_ready(sb)
        io = []
        status = sendfile_step(job, io)
        assert sb.sb_ccc <= hiwat
        run_io(kern, io)
        if status is SendfileStatus.DONE:
            break
    got += take_ready(sb)
    assert got == tf.data
    assert job.sbytes == size
    soclose(so)
    assert kern.leaks() == {}


def test_sendfile_batches_end_on_page_boundaries(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM)
    hiwat = 10 * PAGE_SIZE + 100
    tf = make_file(file_bytes(40 * PAGE_SIZE))
    so = new_socket(kern, sndbuf=hiwat)
    job = SendfileJob(so, tf.obj(kern), tf.fd, 1, 40 * PAGE_SIZE - 1)
    io: list[PagerRequest] = []
    assert sendfile_step(job, io) is SendfileStatus.NEED_SPACE
    assert job.off == 10 * PAGE_SIZE  # cut at a page boundary, not at hiwat
    run_io(kern, io)
    assert take_ready(so.so_snd) == tf.data[1 : 10 * PAGE_SIZE]
    soclose(so)
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_file_shrinking_after_lookup_aborts_with_eio(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM)
    size = 6 * PAGE_SIZE
    tf = make_file(file_bytes(size))
    obj = tf.obj(kern)
    os.truncate(tf.path, 2 * PAGE_SIZE + 1)
    so = new_socket(kern)
    job = SendfileJob(so, obj, tf.fd, 0, size)
    io: list[PagerRequest] = []
    assert sendfile_step(job, io) is SendfileStatus.DONE
    run_io(kern, io)
    assert io[0].error == errno.EIO
    assert so.so_error == errno.EIO
    assert so.so_snd.sb_acc == 0  # nothing of the short read is ever sent
    assert so.so_pending == 0
    assert so.so_snd.sb_ccc == 0 and so.so_snd.sb_mb is None  # mb_free_notready: freed now
    assert kern.stats.vm.pages_wired == 0 and kern.stats.mb.ext_pgs_in_use == 0
    with pytest.raises(OSError) as ei:
        sendfile_step(SendfileJob(so, obj, tf.fd, 0, 1), [])
    assert ei.value.errno == errno.EIO
    soclose(so)
    assert kern.leaks() == {}
    assert kern.stats.vm.pages_cached == 0  # the invalid pages were freed, not cached


def test_failed_read_does_not_break_a_later_sendfile_of_the_same_object(
    make_file: MakeFile,
) -> None:
    """Socket A's read fails (the file shrank) and A is aborted but not yet closed,
    so its mbufs still wire the never-validated pages. Socket B, which looked the
    file up before the truncation too, must get an error (EIO), not a crash."""
    kern = Kernel(SMALL_MEM)
    size = 3 * PAGE_SIZE
    tf = make_file(file_bytes(size))
    obj = tf.obj(kern)
    os.truncate(tf.path, 100)
    a, b = new_socket(kern), new_socket(kern)
    io: list[PagerRequest] = []
    sendfile_step(SendfileJob(a, obj, tf.fd, 0, size), io)
    run_io(kern, io)
    assert a.so_error == errno.EIO
    io = []
    sendfile_step(SendfileJob(b, obj, tf.fd, 0, size), io)
    run_io(kern, io)
    assert b.so_error == errno.EIO
    assert b.so_snd.sb_acc == 0
    soclose(a)
    soclose(b)
    assert kern.leaks() == {}


def test_soclose_with_pending_io_trips(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM)
    tf = make_file(file_bytes(PAGE_SIZE))
    so = new_socket(kern)
    io: list[PagerRequest] = []
    sendfile_step(SendfileJob(so, tf.obj(kern), tf.fd, 0, PAGE_SIZE), io)
    with pytest.raises(KernelAssertion):
        soclose(so)
    run_io(kern, io)
    soclose(so)
    assert kern.leaks() == {}


@pytest.mark.parametrize(("off", "n"), [(-1, 1), (0, -1), (0, 4097), (4096, 1)])
def test_sendfile_job_rejects_bad_ranges(make_file: MakeFile, off: int, n: int) -> None:
    kern = Kernel(SMALL_MEM)
    tf = make_file(file_bytes(PAGE_SIZE))
    with pytest.raises(ValueError):
        SendfileJob(new_socket(kern), tf.obj(kern), tf.fd, off, n)


def test_sendfile_on_shut_socket_is_epipe(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM)
    tf = make_file(file_bytes(PAGE_SIZE))
    so = new_socket(kern)
    soclose(so)
    with pytest.raises(OSError) as ei:
        sendfile_step(SendfileJob(so, tf.obj(kern), tf.fd, 0, 10), [])
    assert ei.value.errno == errno.EPIPE
    assert kern.leaks() == {}


def test_mapped_sendfile_with_a_bounded_sfbuf_pool(make_file: MakeFile) -> None:
    """kern.ipc.mb_use_ext_pgs=0 on a platform with 3 sf_bufs: a cold 8-page file
    still goes out whole, a few pages at a time, with nothing leaked."""
    kern = Kernel(SMALL_MEM, mb_use_ext_pgs=False, nsfbufs=3)
    size = 8 * PAGE_SIZE
    tf = make_file(file_bytes(size))
    so = new_socket(kern)
    job = SendfileJob(so, tf.obj(kern), tf.fd, 0, size)
    got = bytearray()
    for _ in range(100):
        io: list[PagerRequest] = []
        status = sendfile_step(job, io)
        assert kern.stats.sfbuf.in_use <= 3
        run_io(kern, io)
        got += take_ready(so.so_snd)
        if status is SendfileStatus.DONE:
            break
    assert got == tf.data
    soclose(so)
    assert kern.leaks() == {}


def test_mapped_sendfile_never_frees_a_page_under_io(make_file: MakeFile) -> None:
    """When the sf_buf pool runs dry part way through a batch, the pages whose
    reads are already queued must not go back to the free list: an allocation
    made before the read finishes would otherwise be overwritten by file data."""
    kern = Kernel(SMALL_MEM, mb_use_ext_pgs=False, nsfbufs=3)
    size = 8 * PAGE_SIZE
    tf = make_file(file_bytes(size))
    so = new_socket(kern)
    io: list[PagerRequest] = []
    # The step may trip "I/O started for an empty batch" on the second batch; that
    # is what test_mapped_sendfile_with_a_bounded_sfbuf_pool reports. Here only
    # the pages of the reads already queued matter.
    with contextlib.suppress(KernelAssertion):
        sendfile_step(SendfileJob(so, tf.obj(kern), tf.fd, 0, size), io)
    assert io, "the cold file must need a read"
    assert all(pg.wire_count > 0 for r in io for pg in r.pages)
    other = m_uiotombuf(kern, b"\xaa" * (5 * PAGE_SIZE), nomap=True)
    run_io(kern, io)
    assert m_copydata(other, 0, 5 * PAGE_SIZE) == b"\xaa" * (5 * PAGE_SIZE)
    m_freem(other)


# ---------------------------------------------------------------------------
# Memory pressure
# ---------------------------------------------------------------------------


def test_small_memory_evicts_cached_pages_instead_of_failing(make_file: MakeFile) -> None:
    kern = Kernel(1 * MiB)  # 256 page frames
    a = make_file(file_bytes(600 * 1024))
    b = make_file(random.Random(99).randbytes(700 * 1024 + 1))
    so = new_socket(kern, sndbuf=128 * 1024)
    statuses: list[SendfileStatus] = []
    for tf in (a, b, a):
        assert sendfile_all(kern, so, tf, 0, len(tf.data), on_step=statuses.append) == tf.data
    assert SendfileStatus.NEED_MEMORY not in statuses
    vm = kern.stats.vm
    assert vm.evictions > 0
    assert vm.pages_cached <= vm.pages_total
    assert vm.pages_free + vm.pages_cached == vm.pages_total
    soclose(so)
    assert kern.leaks() == {}


def test_evicted_pages_leave_their_object(make_file: MakeFile) -> None:
    kern = Kernel(1 * MiB)
    a = make_file(file_bytes(900 * 1024))  # 225 pages: most of memory
    b = make_file(random.Random(7).randbytes(200 * 1024))
    so = new_socket(kern, sndbuf=128 * 1024)
    assert sendfile_all(kern, so, a, 0, len(a.data)) == a.data
    assert sendfile_all(kern, so, b, 0, len(b.data)) == b.data
    obj_a = a.obj(kern)
    evicted = kern.stats.vm.evictions
    assert evicted > 0
    assert len(obj_a.pages) == 225 - evicted
    # The oldest pages went first (LRU): what is left of `a` is its tail.
    assert sorted(obj_a.pages) == list(range(evicted, 225))
    soclose(so)
    assert kern.leaks() == {}


def test_page_cache_forgets_objects_whose_pages_are_gone(tmp_path: Path) -> None:
    """Serving many files through a small memory does not grow the object table."""
    kern = Kernel(64 * PAGE_SIZE)
    for i in range(40):
        path = tmp_path / f"f{i}"
        path.write_bytes(bytes([i]) * (8 * PAGE_SIZE))
        fd = os.open(path, os.O_RDONLY)
        try:
            obj = kern.pagecache.lookup(os.fstat(fd))
            so = new_socket(kern)
            job = SendfileJob(so, obj, fd, 0, 8 * PAGE_SIZE)
            io: list[PagerRequest] = []
            assert sendfile_step(job, io) is SendfileStatus.DONE
            run_io(kern, io)
            job.close()
            soclose(so)
        finally:
            os.close(fd)
    assert kern.leaks() == {}
    assert kern.stats.vm.evictions > 0
    live = len(kern.pagecache.objects)
    assert live <= 64 // 8 + 1, live


def test_an_object_in_use_is_not_forgotten(tmp_path: Path) -> None:
    """Evicting every page of a file a sendfile is still sending keeps its object
    (the kernel holds the vnode): a new lookup finds the same object."""
    kern = Kernel(64 * PAGE_SIZE)
    path = tmp_path / "f"
    path.write_bytes(bytes(16 * PAGE_SIZE))
    fd = os.open(path, os.O_RDONLY)
    try:
        obj = kern.pagecache.lookup(os.fstat(fd))
        job = SendfileJob(new_socket(kern), obj, fd, 0, 16 * PAGE_SIZE)
        pg = kern.phys.page_alloc_object(obj, 0)
        assert pg is not None
        pg.wire_count = 1
        kern.phys.page_validate(pg)
        kern.phys.page_unwire(pg)  # cached
        kern.phys.object_flush(obj)  # ... and gone: the object is empty
        assert kern.pagecache.lookup(os.fstat(fd)) is obj
        job.close()
        assert obj.key not in kern.pagecache.objects  # forgotten once nobody uses it
        soclose(job.so)
    finally:
        os.close(fd)
    assert kern.leaks() == {}
