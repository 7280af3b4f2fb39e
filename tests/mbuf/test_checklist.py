"""The modeling checklist, item by item (reference section 12).

Each test is named after the checklist item it checks (`test_itemNN_...`) and
asserts the kernel rule as the reference states it, on the model's public
functions. Expected values are computed here from the rule (page-length
formula, page counts, record seqnos), not read back from the model's helpers.
Items 6 and 7 use the real `ktls` session with inline workers and open the
records on the wire with `cryptography` directly.
"""

from __future__ import annotations

import errno
import itertools
import os
import random
import struct
from collections.abc import Callable
from typing import Any

import pytest

from ktls.keys import TrafficKeys
from ktls.session import KtlsSession
from ktls.suites import SUITES, CipherSuite
from ktls.workers import KtlsWorkers
from mbuf.ifnet import (
    CSUM_IP,
    CSUM_IP_TCP,
    CSUM_IP_TSO,
    CSUM_TSO,
    IFCAP_NOMAP,
    IFCAP_TSO4,
    IFCAP_TXCSUM,
)
from mbuf.ip_output import ip_output
from mbuf.kassert import KernelAssertion
from mbuf.kern import Kernel
from mbuf.ktls_hdr import TLS_RLTYPE_APP
from mbuf.mb_unmapped import (
    NoMemory,
    m_uiotombuf,
    mb_free_mext_pgs,
    mb_unmapped_free_mext,
    mb_unmapped_to_ext,
)
from mbuf.mbuf import (
    EXT_FLAG_EMBREF,
    EXT_SFBUF,
    M_BLOCKED,
    M_NOMAP,
    M_NOTREADY,
    M_RDONLY,
    M_ZOMBIE,
    MBUF_PEXT_FLAG_ANON,
    Mbuf,
    MbufExtPgs,
    m_adj,
    m_copydata,
    m_copym,
    m_free,
    m_freem,
    m_get,
    m_getcl,
    mb_ext_pgs_check,
)
from mbuf.param import (
    MBUF_PEXT_HDR_LEN,
    MBUF_PEXT_MAX_BYTES,
    MBUF_PEXT_MAX_PGS,
    MBUF_PEXT_TRAIL_LEN,
    MJUMPAGESIZE,
    PAGE_SIZE,
    TCP_MSS,
    TCPIP_HDR_LEN,
)
from mbuf.sendfile import SendfileJob, SendfileStatus, sendfile_step
from mbuf.sf_buf import SFB_NOWAIT, sf_buf_kva, sf_buf_page
from mbuf.sockbuf import SBS_CANTSENDMORE, SockBuf
from mbuf.socket import Socket, soclose, sosend
from mbuf.tcp_output import tcp_output
from mbuf.vm_object import PagerRequest
from tests.mbuf.builders import (
    SMALL_MEM,
    DiskFile,
    FakeTls,
    MiB,
    chain,
    link,
    make_pgs,
    take_ready,
)
from tests.support.files import file_bytes
from tests.support.pair import (
    DST_IP,
    SRC_IP,
    new_socket,
    run_io,
)
from tests.support.tlsseal import open_stream
from tests.support.wire import drain, fold16, tcp_checksum_ok

MakeFile = Callable[[bytes], DiskFile]
ALL_CAPS = IFCAP_NOMAP | IFCAP_TXCSUM | IFCAP_TSO4


def page_bytes(npgs: int, first_pg_off: int, last_pg_len: int) -> int:
    """Reference 2.4: payload held in the pages of a page vector."""
    if npgs == 0:
        return 0
    if npgs == 1:
        return last_pg_len
    return (PAGE_SIZE - first_pg_off) + (npgs - 2) * PAGE_SIZE + last_pg_len


def fill(kern: Kernel, so: Socket, tf: DiskFile, off: int = 0, n: int | None = None) -> bytes:
    """sendfile the range into the buffer and complete its page-ins."""
    n = len(tf.data) - off if n is None else n
    io: list[PagerRequest] = []
    job = SendfileJob(so, tf.obj(kern), tf.fd, off, n)
    assert sendfile_step(job, io) is SendfileStatus.DONE
    run_io(kern, io)
    return tf.data[off : off + n]


# ---------------------------------------------------------------------------
# Item 1: ownership and reference counts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_item01_one_counter_on_the_owner_and_ext_free_runs_once(order: tuple[int, ...]) -> None:
    kern = Kernel(SMALL_MEM)
    calls: list[Mbuf] = []

    def ext_free(m: Mbuf) -> None:
        calls.append(m)
        mb_free_mext_pgs(m)

    owner, data = make_pgs(
        kern,
        random.Random(1),
        npgs=3,
        first_pg_off=5,
        last_pg_len=100,
        hdr=b"HHHHH",
        trail=b"T" * 16,
        ext_free=ext_free,
    )
    oext = owner.m_ext
    assert oext is not None
    assert oext.ext_mref is owner and oext.ext_count == 1 and oext.ext_flags & EXT_FLAG_EMBREF
    d1 = m_copym(owner, 0, 10)
    d2 = m_copym(owner, 7, owner.m_len - 7)
    assert oext.ext_count == 3
    for d in (d1, d2):
        ext = d.m_ext
        assert ext is not None
        assert ext.ext_mref is owner  # points at the owner's counter
        assert ext.ext_pgs is oext.ext_pgs  # E1: the ext_pgs object is shared
        assert ext.ext_free is None and ext.ext_arg1 is None  # past m_ext_copylen
        assert not ext.ext_flags & EXT_FLAG_EMBREF
        # mb_dupcl passes the source's M_RDONLY on; mb_alloc_ext_pgs set it.
        assert d.m_flags & M_RDONLY and d.m_flags & M_NOMAP and owner.m_flags & M_RDONLY
    assert m_copydata(d2, 0, d2.m_len) == data[7:]
    ms = [owner, d1, d2]
    for k, i in enumerate(order):
        assert calls == []
        m_free(ms[i])
        assert oext.ext_count == 2 - k
    assert calls == [owner]  # once, at the last reference, through the owner
    assert kern.leaks() == {}


def _pages_in_range(
    hdr_len: int, npgs: int, first_pg_off: int, last_pg_len: int, start: int, length: int
) -> int:
    """Pages of a page vector that hold some of bytes [start, start+length)."""
    n = 0
    pos = hdr_len
    for i in range(npgs):
        plen = last_pg_len if i == npgs - 1 else PAGE_SIZE - (first_pg_off if i == 0 else 0)
        if pos < start + length and start < pos + plen:
            n += 1
        pos += plen
    return n


@pytest.mark.parametrize(
    ("front", "back"),
    [(0, 0), (1, 0), (5, 0), (5 + PAGE_SIZE - 3, 0), (0, 16), (0, 17), (6000, 3000)],
)
@pytest.mark.parametrize("via_duplicate", [False, True])
def test_item01_conversion_raises_the_count_by_its_page_mbufs(
    front: int, back: int, via_duplicate: bool
) -> None:
    kern = Kernel(SMALL_MEM)
    npgs, first, last = 4, 3, 700
    owner, data = make_pgs(
        kern,
        random.Random(2),
        npgs=npgs,
        first_pg_off=first,
        last_pg_len=last,
        hdr=b"H" * 5,
        trail=b"T" * 16,
    )
    full = owner.m_len
    length = full - front - back
    n_page_mbufs = _pages_in_range(5, npgs, first, last, front, length)
    oext = owner.m_ext
    assert oext is not None
    if via_duplicate:
        victim = m_copym(owner, front, length)
        before = oext.ext_count  # owner + duplicate
        assert before == 2
    else:
        if front:
            m_adj(owner, front)
        if back:
            m_adj(owner, -back)
        victim = owner
        before = 1
    conv = mb_unmapped_to_ext(victim)
    assert conv is not None
    # +1 per page mbuf, -1 for the converted mbuf's own reference.
    assert oext.ext_count == before + n_page_mbufs - 1
    page_mbufs = [m for m in chain(conv) if m.m_ext is not None]
    assert len(page_mbufs) == n_page_mbufs
    for pm in page_mbufs:
        ext = pm.m_ext
        assert ext is not None
        assert ext.ext_type == EXT_SFBUF and pm.m_flags & M_RDONLY
        assert ext.ext_free is mb_unmapped_free_mext and ext.ext_arg2 is owner
    assert not any(m.m_flags & M_NOMAP for m in chain(conv))
    assert m_copydata(conv, 0, length) == data[front : front + length]
    if not via_duplicate and n_page_mbufs:
        assert owner.m_flags & M_ZOMBIE  # alive only for the page mbufs
    # The pages stay wired until the last page mbuf goes.
    if via_duplicate:
        m_free(owner)
    assert kern.stats.vm.pages_anon == (npgs if n_page_mbufs else 0)
    m_freem(conv)
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# Item 2: length, and m_data as an offset
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("npgs", "first", "last"),
    [
        (1, 0, PAGE_SIZE),
        (1, 0, 1),
        (1, PAGE_SIZE - 1, 1),
        (1, 100, PAGE_SIZE - 100),
        (2, PAGE_SIZE - 1, 1),
        (2, 0, PAGE_SIZE),
        (5, 1, PAGE_SIZE - 1),
        (MBUF_PEXT_MAX_PGS, 4000, 17),
    ],
)
@pytest.mark.parametrize(("hdr_len", "trail_len"), [(0, 0), (5, 16), (13, 16), (23, 64)])
def test_item02_m_len_is_header_plus_page_bytes_plus_trailer(
    npgs: int, first: int, last: int, hdr_len: int, trail_len: int
) -> None:
    kern = Kernel(SMALL_MEM)
    rng = random.Random(npgs * 7 + first)
    m, data = make_pgs(
        kern,
        rng,
        npgs=npgs,
        first_pg_off=first,
        last_pg_len=last,
        hdr=rng.randbytes(hdr_len),
        trail=rng.randbytes(trail_len),
    )
    pgs = m.ext_pgs
    want = hdr_len + page_bytes(npgs, first, last) + trail_len
    assert m.m_len == len(data) == want
    assert pgs.page_bytes() == want - hdr_len - trail_len
    assert sum(pgs.page_len(i) for i in range(npgs)) == want - hdr_len - trail_len
    assert m_copydata(m, 0, m.m_len) == data
    mb_ext_pgs_check(m)
    m_freem(m)
    assert kern.leaks() == {}


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 25 * PAGE_SIZE + 3])
@pytest.mark.parametrize("off", [0, 1, 4095])
def test_item02_sendfile_mbufs_follow_the_length_formula(
    make_file: MakeFile, size: int, off: int
) -> None:
    kern = Kernel(SMALL_MEM)
    tf = make_file(file_bytes(size + off))
    so = new_socket(kern)
    io: list[PagerRequest] = []
    sendfile_step(SendfileJob(so, tf.obj(kern), tf.fd, off, size), io)
    total = 0
    for i, m in enumerate(chain(so.so_snd.sb_mb)):
        pgs = m.ext_pgs
        assert pgs.first_pg_off == (off % PAGE_SIZE if i == 0 else 0)
        assert m.m_data == 0
        assert m.m_len == page_bytes(pgs.npgs, pgs.first_pg_off, pgs.last_pg_len)
        assert m.m_ext is not None and m.m_ext.ext_size == pgs.npgs * PAGE_SIZE
        total += m.m_len
    assert total == size
    run_io(kern, io)
    assert take_ready(so.so_snd) == tf.data[off:]
    soclose(so)
    assert kern.leaks() == {}


@pytest.mark.parametrize("front", [0, 1, 5, 6, PAGE_SIZE, 5 + PAGE_SIZE - 3, 5 + PAGE_SIZE - 2])
@pytest.mark.parametrize("back", [0, 1, 16, 17, 800])
def test_item02_m_data_is_an_integer_trim_offset(front: int, back: int) -> None:
    kern = Kernel(SMALL_MEM)
    m, data = make_pgs(
        kern,
        random.Random(3),
        npgs=3,
        first_pg_off=3,
        last_pg_len=900,
        hdr=b"12345",
        trail=b"t" * 16,
    )
    full = m.m_len
    assert m.m_data == 0 and type(m.m_data) is int
    m_adj(m, front)
    assert m.m_data == front and m.m_len == full - front
    m_adj(m, -back)
    assert m.m_data == front and m.m_len == full - front - back  # tail trims only shorten
    assert m_copydata(m, 0, m.m_len) == data[front : full - back]
    mb_ext_pgs_check(m)
    if m.m_len > 2:
        d = m_copym(m, 1, m.m_len - 2)
        assert d.m_data == front + 1 and type(d.m_data) is int
        assert m_copydata(d, 0, d.m_len) == data[front + 1 : full - back - 1]
        m_free(d)
    # An offset pointing past the data is caught by the invariant checker.
    m.m_data += back + 1
    with pytest.raises(KernelAssertion):
        mb_ext_pgs_check(m)
    m.m_data -= back + 1
    m_freem(m)
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# Item 3: capacity
# ---------------------------------------------------------------------------


def test_item03_e1_lp64_layout_constants() -> None:
    assert MBUF_PEXT_MAX_PGS == 152 // 8 == 19
    assert MBUF_PEXT_HDR_LEN == 23
    assert MBUF_PEXT_TRAIL_LEN == 64
    assert MBUF_PEXT_MAX_BYTES == 19 * PAGE_SIZE + 23 + 64
    pgs = MbufExtPgs()
    assert len(pgs.hdr) == 23 and len(pgs.trail) == 64


@pytest.mark.parametrize(
    ("field", "ok", "bad"),
    [
        ("npgs", MBUF_PEXT_MAX_PGS, MBUF_PEXT_MAX_PGS + 1),
        ("hdr_len", 23, 24),
        ("trail_len", 64, 65),
    ],
)
def test_item03_invariant_checker_enforces_capacity(field: str, ok: int, bad: int) -> None:
    kern = Kernel(SMALL_MEM)
    m, _ = make_pgs(
        kern, random.Random(4), npgs=MBUF_PEXT_MAX_PGS, first_pg_off=0, last_pg_len=PAGE_SIZE
    )
    pgs = m.ext_pgs
    setattr(pgs, field, ok)
    mb_ext_pgs_check(m)
    extra = kern.phys.page_alloc_anon()
    assert extra is not None
    if field == "npgs":
        pgs.pa.append(extra.phys_addr)  # a 20th page
    setattr(pgs, field, bad)
    with pytest.raises(KernelAssertion):
        mb_ext_pgs_check(m)
    if field == "npgs":
        pgs.pa.pop()
        pgs.npgs = ok
    else:
        setattr(pgs, field, 0)
    kern.phys.page_free_anon(extra)
    mb_ext_pgs_check(m)
    m_freem(m)
    assert kern.leaks() == {}


@pytest.mark.parametrize(("npages", "shape"), [(19, [19]), (20, [19, 1]), (41, [19, 19, 3])])
def test_item03_sendfile_and_uiotombuf_put_19_pages_in_an_mbuf(
    make_file: MakeFile, npages: int, shape: list[int]
) -> None:
    kern = Kernel(SMALL_MEM)
    size = npages * PAGE_SIZE
    tf = make_file(file_bytes(size))
    so = new_socket(kern)
    io: list[PagerRequest] = []
    sendfile_step(SendfileJob(so, tf.obj(kern), tf.fd, 0, size), io)
    assert [m.ext_pgs.npgs for m in chain(so.so_snd.sb_mb)] == shape
    run_io(kern, io)
    soclose(so)
    top = m_uiotombuf(kern, tf.data, nomap=True)
    assert [m.ext_pgs.npgs for m in chain(top)] == shape
    m_freem(top)
    assert kern.leaks() == {}


@pytest.mark.parametrize(("max_frame_len", "per_record"), [(4096, 1), (8192, 2), (16384, 4)])
def test_item03_tls_sendfile_records_hold_num_pages_of_max_frame_len(
    make_file: MakeFile, max_frame_len: int, per_record: int
) -> None:
    kern = Kernel(SMALL_MEM)
    size = 10 * PAGE_SIZE + 1
    tf = make_file(file_bytes(size))
    tls = FakeTls(max_frame_len=max_frame_len)
    so = new_socket(kern, tls=tls)
    io: list[PagerRequest] = []
    sendfile_step(SendfileJob(so, tf.obj(kern), tf.fd, 0, size), io)
    shape = [m.ext_pgs.npgs for m in chain(so.so_snd.sb_mb)]
    full, rest = divmod(11, per_record)
    assert shape == [per_record] * full + ([rest] if rest else [])
    run_io(kern, io)
    tls.encrypt_all()
    assert take_ready(so.so_snd) == tls.wire_bytes(tf.data)
    soclose(so)
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# Item 4: not-ready accounting is in pages
# ---------------------------------------------------------------------------


def test_item04_sendfile_nrdy_counts_the_pages_under_io(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM)
    size = 25 * PAGE_SIZE
    tf = make_file(file_bytes(size + 1))
    so = new_socket(kern)
    sb = so.so_snd
    io: list[PagerRequest] = []
    sendfile_step(SendfileJob(so, tf.obj(kern), tf.fd, 1, size), io)  # 26 pages
    ms = list(chain(sb.sb_mb))
    assert [m.ext_pgs.npgs for m in ms] == [19, 7]
    assert [m.ext_pgs.nrdy for m in ms] == [19, 7]
    assert all(m.m_flags & M_NOTREADY for m in ms)
    assert sb.sb_acc == 0 and sb.sb_ccc == size
    run_io(kern, io)
    assert [m.ext_pgs.nrdy for m in ms] == [0, 0] and sb.sb_acc == size
    # A second send of the now cached pages needs no I/O: ready at once, nrdy 0.
    sendfile_step(SendfileJob(so, tf.obj(kern), tf.fd, 1, size), [])
    assert all(m.ext_pgs.nrdy == 0 for m in chain(sb.sb_mb))
    assert sb.sb_acc == 2 * size
    soclose(so)
    assert kern.leaks() == {}


def test_item04_ktls_frame_sets_nrdy_to_npgs() -> None:
    kern = Kernel(SMALL_MEM)
    suite = SUITES["TLS_AES_128_GCM_SHA256"]
    tls = KtlsSession(kern, KtlsWorkers(0), suite, bytes(16), bytes(12))
    top = m_uiotombuf(kern, bytes(3 * 16384 + 5), nomap=True, maxseg=16384)
    assert top is not None
    count = tls.ktls_frame(top, TLS_RLTYPE_APP)
    ms = list(chain(top))
    assert [m.ext_pgs.npgs for m in ms] == [4, 4, 4, 1]
    assert [m.ext_pgs.nrdy for m in ms] == [4, 4, 4, 1]
    assert all(m.m_flags & M_NOTREADY and m.ext_pgs.tls is tls for m in ms)
    assert count == 13
    for m in ms:
        m.ext_pgs.tls = None
    m_freem(top)
    tls.free()
    assert kern.leaks() == {}


def _notready_chain(kern: Kernel) -> tuple[SockBuf, list[Mbuf], bytes]:
    """[ready head] A(3 pages) B(mapped page cluster) C(2 pages), all not ready."""
    rng = random.Random(9)
    sb = SockBuf(1 * MiB, kern.stats.sb)
    head = m_getcl(kern, MJUMPAGESIZE)
    assert head.m_ext is not None and head.m_ext.ext_buf is not None
    head.m_ext.ext_buf[:] = rng.randbytes(PAGE_SIZE)
    head.m_len = 1000
    sb.sbappendstream(head, notready=False)
    a, adata = make_pgs(kern, rng, npgs=3, first_pg_off=0, last_pg_len=PAGE_SIZE)
    b = m_getcl(kern, MJUMPAGESIZE)
    assert b.m_ext is not None and b.m_ext.ext_buf is not None
    b.m_ext.ext_buf[:] = rng.randbytes(PAGE_SIZE)
    b.m_len = 3000
    c, cdata = make_pgs(kern, rng, npgs=2, first_pg_off=0, last_pg_len=PAGE_SIZE)
    a.ext_pgs.nrdy = 3
    c.ext_pgs.nrdy = 2
    sb.sbappendstream(link(a, b, c), notready=True)
    data = bytes(head.m_ext.ext_buf[:1000]) + adata + bytes(b.m_ext.ext_buf[:3000]) + cdata
    return sb, [head, a, b, c], data


def test_item04_sbready_consumes_pages_in_chain_order() -> None:
    kern = Kernel(SMALL_MEM)
    sb, (head, a, b, c), data = _notready_chain(kern)
    assert sb.sb_acc == 1000 and sb.sb_fnrdy is a
    # 4 pages: all 3 of A, then B (a mapped mbuf counts one); C is not touched.
    assert sb.sbready(a, 4) == 0
    assert a.ext_pgs.nrdy == 0 and not a.m_flags & M_NOTREADY
    assert not b.m_flags & (M_NOTREADY | M_BLOCKED)
    assert c.ext_pgs.nrdy == 2 and c.m_flags & M_NOTREADY
    assert sb.sb_acc == head.m_len + a.m_len + b.m_len and sb.sb_fnrdy is c
    # 1 of C's 2 pages: C is still not ready; nothing moves.
    assert sb.sbready(c, 1) == errno.EINPROGRESS
    assert c.ext_pgs.nrdy == 1 and c.m_flags & M_NOTREADY
    assert sb.sb_acc == head.m_len + a.m_len + b.m_len and sb.sb_fnrdy is c
    assert sb.sbready(c, 1) == 0
    assert sb.sb_acc == sb.sb_ccc == len(data) and sb.sb_fnrdy is None
    assert m_copydata(sb.sb_mb, 0, len(data)) == data
    sb.sbflush()
    assert kern.leaks() == {}


def test_item04_sb_acc_grows_only_over_a_ready_prefix() -> None:
    kern = Kernel(SMALL_MEM)
    sb, (head, a, b, c), data = _notready_chain(kern)
    # C and B complete first: they are ready, but behind A, so not available.
    assert sb.sbready(c, 2) == errno.EINPROGRESS
    assert sb.sbready(b, 1) == errno.EINPROGRESS
    assert not c.m_flags & M_NOTREADY and c.m_flags & M_BLOCKED
    assert not b.m_flags & M_NOTREADY and b.m_flags & M_BLOCKED
    assert sb.sb_acc == head.m_len and sb.sb_fnrdy is a
    # A completes: the whole contiguous ready run becomes available at once.
    assert sb.sbready(a, 3) == 0
    assert sb.sb_acc == len(data) and sb.sb_fnrdy is None
    assert not any(m.m_flags & (M_NOTREADY | M_BLOCKED) for m in chain(sb.sb_mb))
    sb.sbflush()
    assert kern.leaks() == {}


def test_item04_ktls_batches_become_ready_page_by_page() -> None:
    """ktls-style records (nrdy = npgs) readied batch by batch, in any order."""
    kern = Kernel(SMALL_MEM)
    tls = FakeTls()
    so = new_socket(kern, tls=tls)
    sb = so.so_snd
    payloads = [file_bytes(n, 5) for n in (16384 + 7, 100, 3 * 16384)]
    for p in payloads:
        assert sosend(so, p) == len(p)
    batches = list(tls.queue)
    assert [count for _, _, count in batches] == [5, 1, 12]  # pages of each write
    assert sb.sb_acc == 0
    # The workers finish the third and second batches first: still nothing to send.
    for i in (2, 1):
        tls.queue = [batches[i]]
        tls.encrypt_all()
        assert sb.sb_acc == 0 and sb.sb_fnrdy is batches[0][1]
    assert not any(m.m_flags & M_NOTREADY for m in chain(batches[1][1]))
    tls.queue = [batches[0]]
    tls.encrypt_all()
    assert sb.sb_acc == sb.sb_ccc and sb.sb_fnrdy is None
    assert drain(so) == tls.wire_bytes(b"".join(payloads))
    soclose(so)
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# Item 5: encryption state is "tls != NULL"
# ---------------------------------------------------------------------------


def test_item05_unencrypted_records_are_never_sent() -> None:
    kern = Kernel(SMALL_MEM)
    tls = FakeTls()
    so = new_socket(kern, tls=tls)
    data = file_bytes(20000, 6)
    assert sosend(so, data) == len(data)
    records = list(chain(so.so_snd.sb_mb))
    assert all(m.ext_pgs.tls is tls and m.m_flags & M_NOTREADY for m in records)
    assert tcp_output(so) == 0 and so.so_txq.empty() and so.so_snd.sb_acc == 0
    tls.encrypt_all()
    assert all(m.ext_pgs.tls is None for m in records)
    assert drain(so) == tls.wire_bytes(data)
    soclose(so)
    assert kern.leaks() == {}


def _framed_record(kern: Kernel, tls: FakeTls) -> Mbuf:
    """One 3-page record over anonymous pages, framed but not encrypted."""
    top = m_uiotombuf(kern, file_bytes(3 * PAGE_SIZE, 7), nomap=True, maxseg=16384)
    assert top is not None and top.m_next is None
    tls.ktls_frame(top, TLS_RLTYPE_APP)
    return top


def _packet(kern: Kernel, data: Mbuf) -> Mbuf:
    hdr = m_get(kern, pkthdr=True)
    hdr.m_len = TCPIP_HDR_LEN
    hdr.m_next = data
    hdr.m_pkthdr_len = TCPIP_HDR_LEN + data.m_len
    hdr.m_pkthdr_csum_flags = CSUM_IP | CSUM_IP_TCP
    return hdr


def test_item05_converting_a_record_that_still_has_tls_trips() -> None:
    kern = Kernel(SMALL_MEM, capenable=IFCAP_TXCSUM)  # no NOMAP: ip_output must convert
    tls = FakeTls()
    rec = _framed_record(kern, tls)
    with pytest.raises(KernelAssertion):
        mb_unmapped_to_ext(rec)
    pkt = _packet(kern, m_copym(rec, 0, rec.m_len))
    with pytest.raises(KernelAssertion):
        ip_output(kern, pkt, kern.new_txq(), SRC_IP, DST_IP, 1)
    st = kern.stats
    assert st.sfbuf.in_use == 0 and st.ip.output_packets == 0 and st.ip.unmapped_converted == 0
    assert rec.ext_pgs.tls is tls  # untouched: still a record to encrypt
    rec.ext_pgs.tls = None
    m_freem(pkt)
    m_freem(rec)
    assert kern.leaks() == {}


def test_item05_ifnet_tls_records_keep_tls_and_are_not_converted() -> None:
    """A ready record that keeps its session (NIC offload) goes to a NOMAP
    interface as it is: never converted, never stripped of `tls`."""
    kern = Kernel(SMALL_MEM, capenable=ALL_CAPS)
    tls = FakeTls()
    rec = _framed_record(kern, tls)
    rec.m_flags &= ~M_NOTREADY
    rec.ext_pgs.nrdy = 0
    txq = kern.new_txq()
    assert ip_output(kern, _packet(kern, m_copym(rec, 0, rec.m_len)), txq, SRC_IP, DST_IP, 9) == 0
    sent = txq.ring[0].m.m_next
    assert sent is not None and sent.m_flags & M_NOMAP and sent.ext_pgs.tls is tls
    assert kern.stats.ip.unmapped_converted == 0 and kern.stats.sfbuf.in_use == 0
    txq.drain()
    rec.ext_pgs.tls = None
    m_freem(rec)
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# Item 6: sequence numbers are assigned at append time
# ---------------------------------------------------------------------------


class RecordingTls(FakeTls):
    """FakeTls that logs the order of the hook calls."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def ktls_frame(self, top: Mbuf, record_type: int) -> int:
        self.events.append("frame")
        return super().ktls_frame(top, record_type)

    def ktls_seq(self, sb: SockBuf, m: Mbuf) -> None:
        # Called by sbappendstream before the chain is linked in.
        assert all(n is not m for n in chain(sb.sb_mb))
        self.events.append("seq")
        super().ktls_seq(sb, m)

    def ktls_enqueue(self, so: Socket, m: Mbuf, page_count: int) -> None:
        self.events.append("enqueue")
        super().ktls_enqueue(so, m, page_count)


def test_item06_ktls_seq_runs_at_append_in_wire_order(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM)
    tf = make_file(file_bytes(9 * PAGE_SIZE))
    tls = RecordingTls()
    so = new_socket(kern, tls=tls)
    so.so_snd.sb_tls_seqno = 1000
    io: list[PagerRequest] = []
    # sendfile of a cold file: framed and appended now, encrypted after the read.
    sendfile_step(SendfileJob(so, tf.obj(kern), tf.fd, 0, len(tf.data), b"HEAD"), io)
    assert tls.events == ["frame", "seq"]
    assert sosend(so, b"late") == 4
    assert tls.events == ["frame", "seq", "frame", "seq", "enqueue"]
    run_io(kern, io)
    assert tls.events[-1] == "enqueue"
    # Queued for encryption: the late write first, then the sendfile's records ...
    recs = list(chain(so.so_snd.sb_mb))
    assert [m for _, m, _ in tls.queue] == [recs[-1], recs[0]]
    # ... but numbered in the order they sit in the buffer.
    seqnos = [m.ext_pgs.seqno for m in chain(so.so_snd.sb_mb)]
    assert seqnos == list(range(1000, 1000 + len(seqnos)))  # head, 3 file records, late
    assert len(seqnos) == 5
    assert so.so_snd.sb_tls_seqno == 1005
    tls.encrypt_all()
    assert drain(so) == tls.wire_bytes(b"HEAD" + tf.data + b"late")
    soclose(so)
    assert kern.leaks() == {}


def _keys(suite: CipherSuite) -> tuple[bytes, bytes]:
    rng = random.Random(suite.openssl_name)
    return rng.randbytes(suite.key_len), rng.randbytes(suite.fixed_iv_len)


GCM_SUITES = ["TLS_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"]


@pytest.mark.parametrize("name", GCM_SUITES)
def test_item06_seqnos_follow_the_wire_not_the_encryption_order(
    make_file: MakeFile, name: str
) -> None:
    """A write queued behind a sendfile whose pages are still being read is
    encrypted first, yet its record carries the later sequence number; the
    client can only open the stream if numbers follow the wire order."""
    suite = SUITES[name]
    key, iv = _keys(suite)
    kern = Kernel(SMALL_MEM)
    tls = KtlsSession(kern, KtlsWorkers(0), suite, key, iv)
    tf = make_file(file_bytes(5 * PAGE_SIZE + 10, 8))
    so = new_socket(kern, tls=tls)
    so.so_snd.sb_tls_seqno = 7
    io: list[PagerRequest] = []
    sendfile_step(SendfileJob(so, tf.obj(kern), tf.fd, 0, len(tf.data)), io)
    assert io
    late = b"written later, " * 20  # over MLEN: stays unmapped once encrypted
    assert sosend(so, late) == len(late)
    recs = list(chain(so.so_snd.sb_mb))
    assert [m.ext_pgs.tls is None for m in recs] == [False, False, True]  # encrypted first
    assert [m.ext_pgs.seqno for m in recs] == [7, 8, 9]
    run_io(kern, io)
    wire = drain(so)
    assert open_stream(suite, TrafficKeys(key, iv), 7, wire) == tf.data + late
    soclose(so)
    tls.free()
    assert kern.leaks() == {}


def test_item06_framing_alone_assigns_no_sequence_number() -> None:
    kern = Kernel(SMALL_MEM)
    suite = SUITES["TLS_AES_128_GCM_SHA256"]
    tls = KtlsSession(kern, KtlsWorkers(0), suite, *_keys(suite))
    sb = SockBuf(1 * MiB, kern.stats.sb)
    sb.sb_tls_info = tls
    sb.sb_tls_seqno = 42
    top = m_uiotombuf(kern, bytes(20000), nomap=True, maxseg=16384)
    assert top is not None
    tls.ktls_frame(top, TLS_RLTYPE_APP)
    assert sb.sb_tls_seqno == 42 and all(m.ext_pgs.seqno == 0 for m in chain(top))
    sb.sbappendstream(top, notready=True)
    assert [m.ext_pgs.seqno for m in chain(top)] == [42, 43]
    assert sb.sb_tls_seqno == 44
    for m in chain(top):
        m.ext_pgs.tls = None
    sb.sbflush()
    tls.free()
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# Item 7: file pages are never modified
# ---------------------------------------------------------------------------


def _file_pages(kern: Kernel, tf: DiskFile) -> dict[int, int]:
    """pindex -> physical address of the file's cached pages."""
    return {i: pg.phys_addr for i, pg in tf.obj(kern).pages.items()}


def _assert_pages_hold_file(kern: Kernel, tf: DiskFile) -> None:
    for pindex, pg in tf.obj(kern).pages.items():
        want = tf.data[pindex * PAGE_SIZE : (pindex + 1) * PAGE_SIZE]
        got = bytes(kern.phys.phys_view(pg.phys_addr))
        assert got == want + bytes(PAGE_SIZE - len(want)), pindex


@pytest.mark.parametrize("name", GCM_SUITES)
def test_item07_software_ktls_encrypts_file_data_into_new_anonymous_pages(
    make_file: MakeFile, name: str
) -> None:
    suite = SUITES[name]
    key, iv = _keys(suite)
    kern = Kernel(SMALL_MEM)
    tls = KtlsSession(kern, KtlsWorkers(0), suite, key, iv)
    tf = make_file(file_bytes(6 * PAGE_SIZE + 1, 9))
    so = new_socket(kern, tls=tls)
    fill(kern, so, tf)  # page-ins, then encryption inline
    file_pas = set(_file_pages(kern, tf).values())
    assert len(file_pas) == 7
    _assert_pages_hold_file(kern, tf)
    recs = list(chain(so.so_snd.sb_mb))
    for m in recs:
        pgs = m.ext_pgs
        assert pgs.tls is None and pgs.flags & MBUF_PEXT_FLAG_ANON
        assert not set(pgs.pa) & file_pas
        assert all(kern.phys.phys_to_vm_page(pa).anon for pa in pgs.pa)
    # The file pages were released at encryption, before anything was sent.
    assert all(kern.phys.phys_to_vm_page(pa).wire_count == 0 for pa in file_pas)
    assert kern.stats.vm.pages_wired == kern.stats.vm.pages_anon == 7
    assert open_stream(suite, TrafficKeys(key, iv), 0, drain(so)) == tf.data
    _assert_pages_hold_file(kern, tf)
    soclose(so)
    tls.free()
    assert kern.leaks() == {}


class SpyKtls(KtlsSession):
    """Remembers each record's pages and bytes as they are queued for encryption."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[list[int], bytes]] = []

    def ktls_enqueue(self, so: Socket, m: Mbuf, page_count: int) -> None:
        pages = 0
        for n in chain(m):
            if pages >= page_count:
                break
            self.seen.append((list(n.ext_pgs.pa), m_copydata(n, 0, n.m_len)))
            pages += n.ext_pgs.npgs
        super().ktls_enqueue(so, m, page_count)


def test_item07_anonymous_write_pages_are_encrypted_in_place() -> None:
    suite = SUITES["TLS_AES_128_GCM_SHA256"]
    key, iv = _keys(suite)
    kern = Kernel(SMALL_MEM)
    tls = SpyKtls(kern, KtlsWorkers(0), suite, key, iv)
    so = new_socket(kern, tls=tls)
    data = file_bytes(20000, 10)
    assert sosend(so, data) == len(data)
    recs = list(chain(so.so_snd.sb_mb))
    assert len(tls.seen) == len(recs) == 2
    for m, (pas, before) in zip(recs, tls.seen, strict=True):
        assert m.ext_pgs.pa == pas  # the same pages ...
        after = m_copydata(m, 0, m.m_len)
        assert after[5:-17] != before[5:-17]  # ... now holding ciphertext
    assert kern.stats.vm.pages_anon == 5  # nothing allocated for ciphertext
    assert open_stream(suite, TrafficKeys(key, iv), 0, drain(so)) == data
    soclose(so)
    tls.free()
    assert kern.leaks() == {}


@pytest.mark.parametrize(
    "capenable",
    [ALL_CAPS, IFCAP_TXCSUM | IFCAP_TSO4, IFCAP_NOMAP, 0],
    ids=["hw", "conv", "sw", "0"],
)
@pytest.mark.parametrize("mb_use_ext_pgs", [True, False])
def test_item07_sendfile_and_output_never_write_file_pages(
    make_file: MakeFile, capenable: int, mb_use_ext_pgs: bool
) -> None:
    kern = Kernel(SMALL_MEM, capenable=capenable, mb_use_ext_pgs=mb_use_ext_pgs)
    tf = make_file(file_bytes(8 * PAGE_SIZE - 5, 11))
    so = new_socket(kern)
    for off in (0, 1, 3001):
        fill(kern, so, tf, off)
        assert drain(so) == tf.data[off:]
        _assert_pages_hold_file(kern, tf)
    assert kern.stats.sf.pages_valid > 0  # the later passes sent cached pages
    soclose(so)
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# Item 8: the ip_output decision
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capenable", "converts", "sw_csum"),
    [
        (ALL_CAPS, False, False),
        (IFCAP_NOMAP | IFCAP_TXCSUM, False, False),
        (IFCAP_TXCSUM | IFCAP_TSO4, True, False),  # no NOMAP: convert
        (IFCAP_NOMAP, True, True),  # no checksum offload: convert, then checksum
        (0, True, True),
    ],
)
def test_item08_convert_for_checksum_or_missing_nomap(
    make_file: MakeFile, capenable: int, converts: bool, sw_csum: bool
) -> None:
    kern = Kernel(SMALL_MEM, capenable=capenable)
    tf = make_file(file_bytes(5000, 12))
    so = new_socket(kern)
    fill(kern, so, tf, 1)
    npkts = tcp_output(so)
    ring = list(so.so_txq.ring)
    assert len(ring) == npkts
    st = kern.stats.ip
    assert st.unmapped_converted == (npkts if converts else 0)
    assert st.sw_csum_packets == (npkts if sw_csum else 0)
    for pkt in ring:
        mbufs = list(chain(pkt.m.m_next))
        assert any(m.m_flags & M_NOMAP for m in mbufs) == (not converts)
        packet = m_copydata(pkt.m, 0, pkt.m.m_pkthdr_len)
        th_sum = struct.unpack_from("!H", packet, 36)[0]
        if sw_csum:
            assert tcp_checksum_ok(packet)
            assert fold16(packet[:20]) == 0xFFFF  # CSUM_IP not offloaded: in_cksum_hdr
        else:
            # Left for the NIC: the pseudo-header sum tcp_output stores, over the
            # segment's length, or (a TSO burst) without it, as iflib_parse_header
            # rewrites it before the tap; ip_sum is left 0.
            tso = pkt.m.m_pkthdr_csum_flags & CSUM_TSO
            tcplen = 0 if tso else len(packet) - 20
            assert th_sum == fold16(packet[12:20] + struct.pack("!HH", 6, tcplen))
            assert packet[10:12] == b"\0\0"
    assert st.sw_hdr_csum == (npkts if sw_csum else 0)
    assert drain(so) == tf.data[1:]
    soclose(so)
    assert kern.leaks() == {}


def test_item08_conversion_failure_drops_with_enobufs(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM, capenable=IFCAP_TXCSUM | IFCAP_TSO4, nsfbufs=2)
    tf = make_file(file_bytes(3 * PAGE_SIZE, 13))
    so = new_socket(kern)
    fill(kern, so, tf)
    assert tcp_output(so) == 0  # one 3-page burst, 2 sf_bufs: dropped
    st = kern.stats
    assert st.ip.odropped == 1 and st.tcp.drops == 1 and st.sfbuf.denied == 1
    assert st.sf.allocfail == 1
    assert so.so_tcp.snd_nxt == 0 and so.so_txq.empty()
    assert st.sfbuf.in_use == 0 and st.vm.pages_wired == 3  # only the send buffer's wiring
    # A direct call returns ENOBUFS and consumes the chain.
    data = m_copym(so.so_snd.sb_mb, 0, 3 * PAGE_SIZE)
    assert ip_output(kern, _packet(kern, data), kern.new_txq(), SRC_IP, DST_IP, 9) == errno.ENOBUFS
    assert st.ip.odropped == 2
    assert so.so_snd.sb_mb is not None and so.so_snd.sb_mb.m_ext is not None
    assert so.so_snd.sb_mb.m_ext.ext_count == 1
    soclose(so)
    assert kern.leaks() == {}


def test_item08_tso_only_with_the_capability(make_file: MakeFile) -> None:
    size = 20000
    for caps, tso in ((ALL_CAPS, True), (IFCAP_NOMAP | IFCAP_TXCSUM, False)):
        kern = Kernel(SMALL_MEM, capenable=caps)
        tf = make_file(file_bytes(size, 14))
        so = new_socket(kern)
        fill(kern, so, tf)
        tcp_output(so)
        ring = list(so.so_txq.ring)
        if tso:
            assert len(ring) == 1 and ring[0].payload == size
            assert ring[0].m.m_pkthdr_csum_flags & CSUM_IP_TSO
        else:
            assert len(ring) == -(-size // TCP_MSS)
            assert all(p.payload <= TCP_MSS for p in ring)
            assert not any(p.m.m_pkthdr_csum_flags & CSUM_IP_TSO for p in ring)
        assert drain(so) == tf.data
        soclose(so)
        assert kern.leaks() == {}


def test_item08_tso_burst_on_an_interface_without_tso_trips() -> None:
    kern = Kernel(SMALL_MEM, capenable=IFCAP_NOMAP | IFCAP_TXCSUM)
    data = m_uiotombuf(kern, bytes(5000), nomap=True)
    assert data is not None
    pkt = _packet(kern, data)
    pkt.m_pkthdr_csum_flags |= CSUM_IP_TSO
    with pytest.raises(KernelAssertion):
        ip_output(kern, pkt, kern.new_txq(), SRC_IP, DST_IP, 4)
    m_freem(pkt)
    assert kern.leaks() == {}
    # TSO needs checksum offload: asking for TSO without TXCSUM does not enable it.
    kern.ifnet.set_capenable(IFCAP_NOMAP | IFCAP_TSO4)
    assert not kern.ifnet.if_capenable & IFCAP_TSO4
    assert not kern.ifnet.if_hwassist & CSUM_IP_TSO


# ---------------------------------------------------------------------------
# Item 9: sf_bufs
# ---------------------------------------------------------------------------


def test_item09_direct_map_sf_bufs_never_fail() -> None:
    kern = Kernel(SMALL_MEM)
    pg = kern.phys.page_alloc_anon()
    assert pg is not None
    pool = kern.sfbufs
    assert pool.available() is None
    sfs = [pool.sf_buf_alloc(pg, SFB_NOWAIT) for _ in range(5000)]
    assert all(sf is not None for sf in sfs)
    sf = sfs[0]
    assert sf is not None and sf_buf_page(sf) is pg
    sf_buf_kva(sf)[:4] = b"DMAP"  # the mapping is the page itself
    assert bytes(kern.phys.phys_view(pg.phys_addr, 0, 4)) == b"DMAP"
    st = kern.stats
    assert st.sfbuf.in_use == 5000 and st.sfbuf.denied == 0 and st.sf.allocfail == 0
    for sf in sfs:
        assert sf is not None
        pool.sf_buf_free(sf)
    kern.phys.page_free_anon(pg)
    assert kern.leaks() == {}


def test_item09_bounded_pool_nowait_fails_and_is_counted() -> None:
    kern = Kernel(SMALL_MEM, nsfbufs=3)
    woken: list[int] = []
    kern.set_wakeup(lambda: woken.append(1))
    pg = kern.phys.page_alloc_anon()
    assert pg is not None
    pool = kern.sfbufs
    sfs = [pool.sf_buf_alloc(pg, SFB_NOWAIT) for _ in range(3)]
    assert all(sf is not None for sf in sfs) and pool.available() == 0
    st = kern.stats
    assert pool.sf_buf_alloc(pg, SFB_NOWAIT) is None
    assert (st.sfbuf.denied, st.sf.allocfail) == (1, 1)
    assert pool.sf_buf_alloc(pg, 0) is None  # would sleep: counted as a wait
    assert (st.sfbuf.delayed, st.sf.allocwait) == (1, 1)
    assert st.sfbuf.in_use == 3
    first = sfs[0]
    assert first is not None
    pool.sf_buf_free(first)
    assert woken == [1]  # the waiter hears about the free
    again = pool.sf_buf_alloc(pg, SFB_NOWAIT)
    assert again is not None
    for sf in (again, *sfs[1:]):
        assert sf is not None
        pool.sf_buf_free(sf)
    kern.phys.page_free_anon(pg)
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# Item 10: sendfile back-pressure
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("hiwat", [64 * 1024, 100_000])
@pytest.mark.parametrize("short", [1, 0])
def test_item10_sendfile_waits_until_lowat_of_at_least_half_hiwat(
    make_file: MakeFile, hiwat: int, short: int
) -> None:
    kern = Kernel(SMALL_MEM)
    tf = make_file(file_bytes(4 * hiwat, 15))
    so = new_socket(kern, sndbuf=hiwat)
    sb = so.so_snd
    assert sb.sb_lowat < hiwat // 2  # the socket's own mark is lower: hiwat/2 rules
    job = SendfileJob(so, tf.obj(kern), tf.fd, 0, len(tf.data))
    io: list[PagerRequest] = []
    assert sendfile_step(job, io) is SendfileStatus.NEED_SPACE
    run_io(kern, io)
    lowat = hiwat // 2
    sb.sbdrop(sb.sb_ccc - (hiwat - lowat + short))  # leaves sbspace == lowat - short
    assert sb.sbspace() == lowat - short
    sent = job.sbytes
    io = []
    status = sendfile_step(job, io)
    if short:
        assert status is SendfileStatus.NEED_SPACE and job.sbytes == sent and io == []
    else:
        assert job.sbytes > sent
    run_io(kern, io)
    soclose(so)
    assert kern.leaks() == {}


@pytest.mark.parametrize("short", [1, 0])
def test_item10_a_higher_sb_lowat_is_respected(make_file: MakeFile, short: int) -> None:
    hiwat = 64 * 1024
    kern = Kernel(SMALL_MEM)
    tf = make_file(file_bytes(4 * hiwat, 16))
    so = new_socket(kern, sndbuf=hiwat)
    sb = so.so_snd
    sb.sb_lowat = 48 * 1024
    job = SendfileJob(so, tf.obj(kern), tf.fd, 0, len(tf.data))
    io: list[PagerRequest] = []
    assert sendfile_step(job, io) is SendfileStatus.NEED_SPACE
    run_io(kern, io)
    sb.sbdrop(sb.sb_ccc - (hiwat - sb.sb_lowat + short))
    assert sb.sbspace() == sb.sb_lowat - short
    sent = job.sbytes
    io = []
    status = sendfile_step(job, io)
    assert (status is SendfileStatus.NEED_SPACE and job.sbytes == sent) == bool(short)
    run_io(kern, io)
    soclose(so)
    assert kern.leaks() == {}


@pytest.mark.parametrize("hdr_len", [0, 100])
@pytest.mark.parametrize("extra", [0, 1])
def test_item10_everything_left_fits_goes_below_lowat(
    make_file: MakeFile, hdr_len: int, extra: int
) -> None:
    hiwat = 64 * 1024
    space = 10_000  # far below lowat (32 KiB)
    kern = Kernel(SMALL_MEM)
    tf = make_file(file_bytes(space + 1, 17))
    so = new_socket(kern, sndbuf=hiwat)
    assert sosend(so, bytes(hiwat - space)) == hiwat - space
    assert so.so_snd.sbspace() == space
    n = space - hdr_len + extra  # head + file: exactly the space, or one byte more
    job = SendfileJob(so, tf.obj(kern), tf.fd, 0, n, b"h" * hdr_len)
    io: list[PagerRequest] = []
    status = sendfile_step(job, io)
    if extra:
        assert status is SendfileStatus.NEED_SPACE and job.sbytes == 0
    else:
        assert status is SendfileStatus.DONE and job.sbytes == space
        assert so.so_snd.sbspace() == 0
    run_io(kern, io)
    soclose(so)
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# Item 11: error paths
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mb_use_ext_pgs", [True, False])
def test_item11_disk_error_aborts_with_eio_and_frees_the_batch_at_once(
    make_file: MakeFile, mb_use_ext_pgs: bool
) -> None:
    kern = Kernel(SMALL_MEM, mb_use_ext_pgs=mb_use_ext_pgs)
    size = 6 * PAGE_SIZE + 7
    tf = make_file(file_bytes(size, 18))
    so = new_socket(kern)
    head = fill(kern, so, tf, 0, 2 * PAGE_SIZE)  # a first batch that reads fine
    bad_fd = os.dup(tf.fd)
    io: list[PagerRequest] = []
    job = SendfileJob(so, tf.obj(kern), bad_fd, 2 * PAGE_SIZE, size - 2 * PAGE_SIZE)
    assert sendfile_step(job, io) is SendfileStatus.DONE
    os.close(bad_fd)  # the "disk" fails under the read
    run_io(kern, io)
    assert all(r.error for r in io)
    assert so.so_error == errno.EIO
    assert so.so_snd.sb_state & SBS_CANTSENDMORE and so.so_pending == 0
    # Nothing of the failed batch is ever available to TCP, and it is freed at
    # once (mb_free_notready), not when the socket closes: only the ready head is left.
    assert so.so_snd.sb_acc == so.so_snd.sb_ccc == len(head)
    assert kern.stats.sfbuf.in_use == 0 or not mb_use_ext_pgs
    assert kern.stats.vm.pages_wired <= 2  # the first batch's pages, if not yet sent
    assert head.startswith(drain(so))
    with pytest.raises(OSError) as ei:
        sendfile_step(SendfileJob(so, tf.obj(kern), tf.fd, 0, 1), [])
    assert ei.value.errno == errno.EIO
    with pytest.raises(OSError) as ei:
        sosend(so, b"x")
    assert ei.value.errno == errno.EIO
    soclose(so)
    assert kern.leaks() == {}
    vm = kern.stats.vm
    assert vm.pages_wired == 0
    assert vm.pages_cached == 2  # the pages that read fine; the failed ones were freed
    assert vm.pages_free + vm.pages_cached == vm.pages_total
    # The file is still servable on a fresh connection.
    so2 = new_socket(kern)
    assert fill(kern, so2, tf) == tf.data
    assert drain(so2) == tf.data
    soclose(so2)
    assert kern.leaks() == {}


def test_item11_short_read_aborts_with_eio(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM)
    size = 6 * PAGE_SIZE
    tf = make_file(file_bytes(size, 19))
    obj = tf.obj(kern)
    so = new_socket(kern)
    fill(kern, so, tf, 0, 2 * PAGE_SIZE)  # pages 0-1 cached and valid
    drain(so)
    os.truncate(tf.path, 3 * PAGE_SIZE + 1)  # shrinks under the later read
    io: list[PagerRequest] = []
    sendfile_step(SendfileJob(so, obj, tf.fd, 0, size), io)
    run_io(kern, io)
    assert so.so_error == errno.EIO
    assert so.so_snd.sb_acc == 0 and tcp_output(so) == 0
    soclose(so)
    assert kern.leaks() == {}
    assert kern.stats.vm.pages_wired == 0


def test_item11_a_failed_batch_does_not_leak_with_tls(make_file: MakeFile) -> None:
    """Disk error on a TLS socket: the framed records are never enqueued for
    encryption, and closing frees them with their file pages."""
    kern = Kernel(SMALL_MEM)
    tf = make_file(file_bytes(5 * PAGE_SIZE, 20))
    tls = FakeTls()
    so = new_socket(kern, tls=tls)
    bad_fd = os.dup(tf.fd)
    io: list[PagerRequest] = []
    sendfile_step(SendfileJob(so, tf.obj(kern), bad_fd, 0, len(tf.data)), io)
    os.close(bad_fd)
    run_io(kern, io)
    assert so.so_error == errno.EIO and so.so_pending == 0
    assert tls.queue == [] and tls.enqueued_pages == 0
    soclose(so)
    assert kern.leaks() == {}


def test_item11_no_memory_for_a_tls_write_changes_nothing() -> None:
    kern = Kernel(64 * PAGE_SIZE)
    tls = FakeTls()
    so = new_socket(kern, tls=tls)
    hog = []
    while (pg := kern.phys.page_alloc_anon()) is not None:
        hog.append(pg)
    with pytest.raises(NoMemory):
        sosend(so, bytes(5000))
    assert so.so_snd.sb_ccc == 0 and tls.records == [] and kern.phys.vm_wanted
    for pg in hog:
        kern.phys.page_free_anon(pg)
    soclose(so)
    assert kern.leaks() == {}
