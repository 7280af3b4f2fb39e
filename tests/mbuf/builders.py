"""Builders shared by the mbuf tests: chains whose bytes are known independently.

Every builder returns the mbuf (or chain) together with the bytes it must read
back, computed from the random source data without going through any of the
model's readers (`m_unmapped_iov`, `page_len`, `m_copydata`). Page frames are
filled completely with random bytes, so a reader that starts at the wrong
in-page offset reads garbage that differs from the expected bytes.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st

from mbuf.kern import Kernel
from mbuf.mb_unmapped import m_uiotombuf, mb_free_mext_pgs
from mbuf.mbuf import (
    M_NOMAP,
    M_NOTREADY,
    MBUF_PEXT_FLAG_ANON,
    Mbuf,
    m_adj,
    m_copydata,
    m_get,
    m_getcl,
    mb_alloc_ext_pgs,
    mb_ext_pgs_check,
)
from mbuf.param import (
    MBUF_PEXT_HDR_LEN,
    MBUF_PEXT_MAX_PGS,
    MBUF_PEXT_TRAIL_LEN,
    MCLBYTES,
    MJUMPAGESIZE,
    MLEN,
    PAGE_SIZE,
)
from mbuf.sendfile import SendfileStatus
from mbuf.sockbuf import SockBuf
from mbuf.socket import Socket
from mbuf.vm_object import VmObject
from tests.support.pair import ConnectionPair

MiB = 1024 * 1024
SMALL_MEM = 8 * MiB  # phys_mem of most test machines
PAGE_EDGES = (0, 1, PAGE_SIZE - 1, PAGE_SIZE, PAGE_SIZE + 1)
RECORD_EDGES = (16383, 16384, 16385)


# ---------------------------------------------------------------------------
# Single mbufs
# ---------------------------------------------------------------------------


def make_plain(kern: Kernel, n: int, rng: random.Random) -> tuple[Mbuf, bytes]:
    """m_get with n bytes; the rest of m_dat is random too (catches offset slips)."""
    m = m_get(kern)
    assert m.m_dat is not None
    m.m_dat[:] = rng.randbytes(MLEN)
    m.m_len = n
    return m, bytes(m.m_dat[:n])


def make_cluster(kern: Kernel, size: int, n: int, rng: random.Random) -> tuple[Mbuf, bytes]:
    m = m_getcl(kern, size)
    assert m.m_ext is not None and m.m_ext.ext_buf is not None
    m.m_ext.ext_buf[:] = rng.randbytes(size)
    m.m_len = n
    return m, bytes(m.m_ext.ext_buf[:n])


def make_pgs(
    kern: Kernel,
    rng: random.Random,
    *,
    npgs: int,
    first_pg_off: int,
    last_pg_len: int,
    hdr: bytes = b"",
    trail: bytes = b"",
    ext_free: Callable[[Mbuf], None] = mb_free_mext_pgs,
    pkthdr: bool = False,
) -> tuple[Mbuf, bytes]:
    """An unmapped EXT_PGS mbuf over anonymous pages, as mb_alloc_ext_pgs callers build it.

    The expected payload is the slice [start, start+len) of each page's random
    contents, with start = first_pg_off on page 0 and len = last_pg_len on the
    last page (reference 2.4), computed here without the model's page_len().
    """
    m = mb_alloc_ext_pgs(kern, pkthdr, ext_free)
    pgs = m.ext_pgs
    pgs.flags = MBUF_PEXT_FLAG_ANON
    payload = bytearray()
    for i in range(npgs):
        pg = kern.phys.page_alloc_anon()
        assert pg is not None, "test machine out of pages"
        page = rng.randbytes(PAGE_SIZE)
        kern.phys.phys_view(pg.phys_addr)[:] = page
        start = first_pg_off if i == 0 else 0
        end = start + last_pg_len if i == npgs - 1 else PAGE_SIZE
        payload += page[start:end]
        pgs.pa.append(pg.phys_addr)
        pgs.npgs += 1
        assert m.m_ext is not None
        m.m_ext.ext_size += PAGE_SIZE
    pgs.first_pg_off = first_pg_off
    pgs.last_pg_len = last_pg_len
    pgs.hdr[: len(hdr)] = hdr
    pgs.hdr_len = len(hdr)
    pgs.trail[: len(trail)] = trail
    pgs.trail_len = len(trail)
    m.m_len = len(hdr) + len(payload) + len(trail)
    if pkthdr:
        m.m_pkthdr_len = m.m_len
    mb_ext_pgs_check(m)
    return m, bytes(hdr) + bytes(payload) + bytes(trail)


# ---------------------------------------------------------------------------
# Specs for hypothesis: what to build, drawn before a Kernel exists
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MbufSpec:
    kind: str  # plain | cl2k | cl4k | pgs | uio
    length: int = 0  # plain/cluster bytes, or uio data length
    npgs: int = 0
    first_pg_off: int = 0
    last_pg_len: int = 0
    hdr_len: int = 0
    trail_len: int = 0
    maxseg: int = 0  # uio only
    trim_front: float = 0.0  # fraction of the built length trimmed by m_adj(m, +n)
    trim_back: float = 0.0  # fraction of what is left trimmed by m_adj(m, -n)


_in_page_offsets = st.one_of(st.sampled_from([0, 1, PAGE_SIZE - 1]), st.integers(0, PAGE_SIZE - 1))
_fractions = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))


@st.composite
def pgs_spec(draw: st.DrawFn, max_pgs: int = 6) -> MbufSpec:
    npgs = draw(st.one_of(st.integers(1, max_pgs), st.just(MBUF_PEXT_MAX_PGS)))
    first = draw(_in_page_offsets)
    if npgs == 1:
        last = draw(st.one_of(st.just(PAGE_SIZE - first), st.integers(1, PAGE_SIZE - first)))
    else:
        last = draw(
            st.one_of(st.sampled_from([1, PAGE_SIZE - 1, PAGE_SIZE]), st.integers(1, PAGE_SIZE))
        )
    return MbufSpec(
        "pgs",
        npgs=npgs,
        first_pg_off=first,
        last_pg_len=last,
        hdr_len=draw(
            st.one_of(st.sampled_from([0, MBUF_PEXT_HDR_LEN]), st.integers(0, MBUF_PEXT_HDR_LEN))
        ),
        trail_len=draw(
            st.one_of(
                st.sampled_from([0, MBUF_PEXT_TRAIL_LEN]), st.integers(0, MBUF_PEXT_TRAIL_LEN)
            )
        ),
        trim_front=draw(_fractions),
        trim_back=draw(_fractions),
    )


@st.composite
def mbuf_spec(draw: st.DrawFn, unmapped_only: bool = False) -> MbufSpec:
    kinds = ["pgs", "uio"] if unmapped_only else ["plain", "cl2k", "cl4k", "pgs", "uio"]
    kind = draw(st.sampled_from(kinds))
    front = draw(_fractions)
    back = draw(_fractions)
    if kind == "pgs":
        return draw(pgs_spec())
    if kind == "uio":
        length = draw(
            st.one_of(
                st.sampled_from([1, PAGE_SIZE, PAGE_SIZE + 1]), st.integers(1, 3 * PAGE_SIZE + 7)
            )
        )
        maxseg = draw(st.sampled_from([0, PAGE_SIZE, 3 * PAGE_SIZE, 16384]))
        return MbufSpec("uio", length=length, maxseg=maxseg, trim_front=front, trim_back=back)
    cap = {"plain": MLEN, "cl2k": MCLBYTES, "cl4k": MJUMPAGESIZE}[kind]
    length = draw(st.one_of(st.sampled_from([0, 1, cap]), st.integers(0, cap)))
    return MbufSpec(kind, length=length, trim_front=front, trim_back=back)


def build_one(kern: Kernel, spec: MbufSpec, rng: random.Random) -> tuple[Mbuf, bytes]:
    """Build one spec (a uio spec may give a short chain) and apply its trims."""
    if spec.kind == "plain":
        m, data = make_plain(kern, spec.length, rng)
    elif spec.kind == "cl2k":
        m, data = make_cluster(kern, MCLBYTES, spec.length, rng)
    elif spec.kind == "cl4k":
        m, data = make_cluster(kern, MJUMPAGESIZE, spec.length, rng)
    elif spec.kind == "pgs":
        m, data = make_pgs(
            kern,
            rng,
            npgs=spec.npgs,
            first_pg_off=spec.first_pg_off,
            last_pg_len=spec.last_pg_len,
            hdr=rng.randbytes(spec.hdr_len),
            trail=rng.randbytes(spec.trail_len),
        )
    else:
        data = rng.randbytes(spec.length)
        top = m_uiotombuf(kern, data, nomap=True, maxseg=spec.maxseg)
        assert top is not None
        m = top
    front = int(len(data) * spec.trim_front)
    back = int((len(data) - front) * spec.trim_back)
    if front:
        m_adj(m, front)
    if back:
        m_adj(m, -back)
    return m, data[front : len(data) - back]


def build_chain(kern: Kernel, specs: list[MbufSpec], rng: random.Random) -> tuple[Mbuf, bytes]:
    top: Mbuf | None = None
    tail: Mbuf | None = None
    expected = bytearray()
    for spec in specs:
        m, data = build_one(kern, spec, rng)
        expected += data
        if tail is None:
            top = m
        else:
            tail.m_next = m
        tail = m
        while tail.m_next is not None:
            tail = tail.m_next
    assert top is not None
    return top, bytes(expected)


def chain(m: Mbuf | None) -> Iterator[Mbuf]:
    while m is not None:
        yield m
        m = m.m_next


def link(*ms: Mbuf) -> Mbuf:
    for a, b in itertools.pairwise(ms):
        a.m_next = b
    return ms[0]


# ---------------------------------------------------------------------------
# Files, sockets, sendfile drivers
# ---------------------------------------------------------------------------


@dataclass
class DiskFile:
    path: Path
    fd: int
    data: bytes

    def obj(self, kern: Kernel) -> VmObject:
        return kern.pagecache.lookup(os.fstat(self.fd))


def write_file(path: Path, data: bytes) -> DiskFile:
    path.write_bytes(data)
    return DiskFile(path, os.open(path, os.O_RDONLY), data)


def take_ready(sb: SockBuf) -> bytes:
    """The peer ACKs everything ready: copy it out, then sbdrop it."""
    n = sb.sb_acc
    if not n:
        return b""
    data = m_copydata(sb.sb_mb, 0, n)
    sb.sbdrop(n)
    return data


def sendfile_all(
    kern: Kernel,
    so: Socket,
    tf: DiskFile,
    offset: int,
    nbytes: int,
    *,
    hdr: bytes = b"",
    tls: FakeTls | None = None,
    on_step: Callable[[SendfileStatus], None] | None = None,
) -> bytes:
    """Drive one sendfile to completion through a ConnectionPair; the wire's bytes."""
    pair = ConnectionPair(so, encrypt=None if tls is None else tls.encrypt_all)
    out = pair.sendfile(tf.obj(kern), tf.fd, offset, nbytes, hdr, on_step=on_step)
    assert so.so_pending == 0
    return out


# ---------------------------------------------------------------------------
# A tiny KTLS stand-in (mbuf.sockbuf.KtlsHook), without importing ktls
# ---------------------------------------------------------------------------

FAKE_HDR = b"\x17\x03\x03HH"
FAKE_TRAIL = b"T" * 16


@dataclass
class FramedRecord:
    npgs: int
    first_pg_off: int
    last_pg_len: int
    payload: int  # page bytes of the record


@dataclass
class FakeTls:
    """Frames each unmapped mbuf as a record with a 5-byte header and a 16-byte
    trailer, and "encrypts" by just clearing the session pointer, so the wire
    bytes are header + plaintext + trailer per record."""

    max_frame_len: int = 16384
    records: list[FramedRecord] = field(default_factory=list)
    seqnos: list[int] = field(default_factory=list)
    queue: list[tuple[Socket, Mbuf, int]] = field(default_factory=list)
    enqueued_pages: int = 0
    freed: bool = False

    def ktls_frame(self, top: Mbuf, record_type: int) -> int:
        enq = 0
        for m in chain(top):
            assert m.m_flags & M_NOMAP, "mapped mbuf in a TLS chain"
            assert m.m_data == 0 and m.m_len <= self.max_frame_len
            pgs = m.ext_pgs
            self.records.append(FramedRecord(pgs.npgs, pgs.first_pg_off, pgs.last_pg_len, m.m_len))
            pgs.hdr[: len(FAKE_HDR)] = FAKE_HDR
            pgs.hdr_len = len(FAKE_HDR)
            pgs.trail[: len(FAKE_TRAIL)] = FAKE_TRAIL
            pgs.trail_len = len(FAKE_TRAIL)
            m.m_len += len(FAKE_HDR) + len(FAKE_TRAIL)
            pgs.tls = self
            pgs.record_type = record_type
            pgs.nrdy = pgs.npgs
            m.m_flags |= M_NOTREADY
            enq += pgs.npgs
        return enq

    def ktls_seq(self, sb: SockBuf, m: Mbuf) -> None:
        for n in chain(m):
            n.ext_pgs.seqno = sb.sb_tls_seqno
            self.seqnos.append(sb.sb_tls_seqno)
            sb.sb_tls_seqno += 1

    def ktls_reserve(self, npages: int) -> bool:
        return True  # the fake encrypts in place: no ciphertext pages needed

    def ktls_unreserve(self, npages: int) -> None:
        return None

    def ktls_enqueue(self, so: Socket, m: Mbuf, page_count: int) -> None:
        so.so_pending += 1
        self.enqueued_pages += page_count
        self.queue.append((so, m, page_count))

    def free(self) -> None:
        self.freed = True

    def encrypt_one(self) -> None:
        """A worker finishes the oldest queued batch."""
        so, m, count = self.queue.pop(0)
        left = count
        n: Mbuf | None = m
        while n is not None and left > 0:
            n.ext_pgs.tls = None
            left -= n.ext_pgs.npgs
            n = n.m_next
        so.so_pending -= 1
        so.so_snd.sbready(m, count)

    def encrypt_all(self) -> None:
        """The workers finish every queued batch, in order."""
        while self.queue:
            self.encrypt_one()

    def wire_bytes(self, data: bytes) -> bytes:
        """The stream the framed records of `data` must produce."""
        out = bytearray()
        pos = 0
        for r in self.records:
            out += FAKE_HDR + data[pos : pos + r.payload] + FAKE_TRAIL
            pos += r.payload
        assert pos == len(data)
        return bytes(out)
