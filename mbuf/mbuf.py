"""mbufs: headers, external storage and the 2019 unmapped EXT_PGS layout.

Theory of operation. The layout is that of the June 2019 unmapped-mbuf change
(D20616) with the KTLS fields added in August 2019 (the "E1" layout: a
separate `struct mbuf_ext_pgs`, before FreeBSD 13 moved its fields into the
mbuf as `m_epg_*`):

* `Mbuf` carries `m_next`, `m_data`, `m_len`, `m_flags` and, for `M_PKTHDR`
  mbufs, `m_pkthdr_len` and `m_pkthdr_csum_flags`. Plain mbufs keep up to MLEN
  bytes in `m_dat`.
* `M_EXT` mbufs point at an `MExt`. Duplicates made by `m_copym` get their own
  `MExt` copied up to `m_ext_copylen` (type, size, buffer or `ext_pgs`
  pointer, `ext_arg2`), share the owner's reference count through
  `ext_mref`, and carry no `ext_free`/`ext_arg1`: only the owning mbuf
  ("mref") runs the free routine, once, when the count reaches zero. A
  duplicate inherits the source's `M_RDONLY` (and `M_NOMAP`), as the
  kernel's `mb_dupcl` does: a copy of a cluster is writable by flag, and
  only its shared count (M_WRITABLE) makes it read-only.
* `M_NOMAP` mbufs have ext type `EXT_PGS`; `ext_pgs` is a separate
  `MbufExtPgs` (the 256-byte `struct mbuf_ext_pgs` from zone "mbuf_extpgs")
  holding up to MBUF_PEXT_MAX_PGS (19) physical page addresses,
  `first_pg_off`, `last_pg_len`, a header of up to 23 bytes and a trailer of
  up to 64. For these mbufs `m_data` is not a pointer but the number of bytes
  trimmed from the front, and every reader adds it.

Flag words are `enum.IntFlag`s for display; the hot path tests plain-int
aliases of the same bits (`M_EXT`, `M_NOMAP`, ...), because IntFlag arithmetic
allocates. Python objects stand in for memory: an mbuf that is "freed" is
counted out of its zone and poisoned (`M_FREED`), so a use after free or a
double free trips an assertion instead of silently working.

Models: sys/sys/mbuf.h, sys/kern/uipc_mbuf.c and sys/kern/kern_mbuf.c (`m_get`,
`m_getcl`, `m_free`, `m_freem`, `m_copym`, `m_copydata`, `m_adj`, `m_pullup`,
`mb_alloc_ext_pgs`, `mb_free_ext`, `mb_dupcl`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from mbuf.kassert import kassert, kpanic
from mbuf.param import (
    MBUF_PEXT_HDR_LEN,
    MBUF_PEXT_MAX_PGS,
    MBUF_PEXT_TRAIL_LEN,
    MCLBYTES,
    MHLEN,
    MJUMPAGESIZE,
    MLEN,
    PAGE_SIZE,
    PHYS_BASE,
)
from mbuf.vm_page import pages_contiguous

if TYPE_CHECKING:
    from mbuf.kern import Kernel


class MFlags(enum.IntFlag):
    M_EXT = 0x00000001  # has associated external storage
    M_PKTHDR = 0x00000002  # start of record, m_pkthdr valid
    M_EOR = 0x00000004  # end of record
    M_RDONLY = 0x00000008  # associated data is read-only
    M_NOMAP = 0x00000100  # unmapped: EXT_PGS (renamed M_EXTPG in 2020)
    # sockbuf.h aliases M_NOTREADY and M_BLOCKED onto protocol-private bits.
    M_NOTREADY = 0x00001000  # M_PROTO1: data not yet ready (I/O or encryption)
    M_BLOCKED = 0x00002000  # M_PROTO2: behind a not-ready mbuf
    M_FREED = 0x40000000  # model only: returned to its zone (poison)
    M_ZOMBIE = 0x20000000  # model only: an owner that dropped its own reference


M_EXT: Final = int(MFlags.M_EXT)
M_PKTHDR: Final = int(MFlags.M_PKTHDR)
M_EOR: Final = int(MFlags.M_EOR)
M_RDONLY: Final = int(MFlags.M_RDONLY)
M_NOMAP: Final = int(MFlags.M_NOMAP)
M_NOTREADY: Final = int(MFlags.M_NOTREADY)
M_BLOCKED: Final = int(MFlags.M_BLOCKED)
M_NOTAVAIL: Final = M_NOTREADY | M_BLOCKED
M_FREED: Final = int(MFlags.M_FREED)
M_ZOMBIE: Final = int(MFlags.M_ZOMBIE)
# Flags a duplicate inherits (mb_dupcl).
_M_DUP_INHERIT = M_RDONLY | M_NOMAP


class ExtType(enum.IntEnum):
    EXT_CLUSTER = 1
    EXT_SFBUF = 2
    EXT_JUMBOP = 3
    EXT_PGS = 9


EXT_CLUSTER: Final = int(ExtType.EXT_CLUSTER)
EXT_SFBUF: Final = int(ExtType.EXT_SFBUF)
EXT_JUMBOP: Final = int(ExtType.EXT_JUMBOP)
EXT_PGS: Final = int(ExtType.EXT_PGS)


class ExtFlags(enum.IntFlag):
    EXT_FLAG_EMBREF = 0x1  # reference count embedded in this mbuf
    EXT_FLAG_EXTREF = 0x2
    EXT_FLAG_NOFREE = 0x10
    EXT_FLAG_VENDOR1 = 0x10000  # sendfile: EXT_FLAG_SYNC
    EXT_FLAG_VENDOR2 = 0x20000  # sendfile: EXT_FLAG_NOCACHE
    EXT_FLAG_VENDOR3 = 0x40000  # sendfile: EXT_FLAG_CACHE_LAST


EXT_FLAG_EMBREF: Final = int(ExtFlags.EXT_FLAG_EMBREF)

MBUF_PEXT_FLAG_ANON: Final = 0x1  # pages are anonymous, owned by the mbuf, encryptable in place

ExtFree = Callable[["Mbuf"], None]


class MbufExtPgs:
    """struct mbuf_ext_pgs (E1): page vector, TLS header and trailer, KTLS bookkeeping."""

    __slots__ = (
        "enc_cnt",
        "first_pg_off",
        "flags",
        "hdr",
        "hdr_len",
        "last_pg_len",
        "mbuf",
        "npgs",
        "nrdy",
        "pa",
        "record_type",
        "seqno",
        "so",
        "tls",
        "trail",
        "trail_len",
    )

    def __init__(self) -> None:
        self.npgs = 0
        self.nrdy = 0
        self.hdr_len = 0
        self.trail_len = 0
        self.first_pg_off = 0
        self.last_pg_len = 0
        self.pa: list[int] = []
        self.hdr = bytearray(MBUF_PEXT_HDR_LEN)
        self.flags = 0
        self.tls: Any = None  # ktls session of a record not yet encrypted
        # trail[] shares storage with the KTLS bookkeeping in the kernel; the model
        # keeps them apart but clears the bookkeeping once the trailer is written.
        self.trail = bytearray(MBUF_PEXT_TRAIL_LEN)
        self.record_type = 0
        self.so: Any = None
        self.mbuf: Mbuf | None = None
        self.seqno = 0
        self.enc_cnt = 0

    def page_len(self, i: int) -> int:
        """mbuf_ext_pg_len(ext_pgs, i, pgoff)."""
        if i == self.npgs - 1:
            return self.last_pg_len
        return PAGE_SIZE - (self.first_pg_off if i == 0 else 0)

    def page_ranges(self, off: int, length: int) -> list[tuple[int, int, int]]:
        """(page index, offset in the page, bytes) covering page bytes [off, off+length)."""
        out: list[tuple[int, int, int]] = []
        pgoff = self.first_pg_off
        for i in range(self.npgs):
            if not length:
                break
            plen = self.page_len(i)
            if off >= plen:
                off -= plen
            else:
                n = min(plen - off, length)
                out.append((i, pgoff + off, n))
                length -= n
                off = 0
            pgoff = 0
        return out

    def page_bytes(self) -> int:
        """Payload bytes held in pages: the sum of `page_len` over them, in closed form."""
        if self.npgs == 0:
            return 0
        if self.npgs == 1:
            return self.last_pg_len
        return (PAGE_SIZE - self.first_pg_off) + (self.npgs - 2) * PAGE_SIZE + self.last_pg_len


class MExt:
    """struct m_ext. Fields after `ext_arg2` (the m_ext_copylen mark) belong to the owner only."""

    __slots__ = (
        "ext_arg1",
        "ext_arg2",
        "ext_buf",
        "ext_count",
        "ext_flags",
        "ext_free",
        "ext_mref",
        "ext_pgs",
        "ext_size",
        "ext_type",
    )

    def __init__(self, ext_type: int, ext_size: int, mref: Mbuf) -> None:
        self.ext_type = ext_type
        self.ext_size = ext_size
        self.ext_flags = EXT_FLAG_EMBREF
        self.ext_buf: memoryview | None = None
        self.ext_pgs: MbufExtPgs | None = None
        self.ext_arg2: Any = None
        self.ext_count = 1  # meaningful on the owner only
        self.ext_mref = mref  # owner whose ext_count is the shared counter
        self.ext_free: ExtFree | None = None
        self.ext_arg1: Any = None


class Mbuf:
    __slots__ = (
        "m_dat",
        "m_data",
        "m_ext",
        "m_flags",
        "m_kern",
        "m_len",
        "m_next",
        "m_pkthdr_csum_flags",
        "m_pkthdr_len",
    )

    def __init__(self, kern: Kernel, flags: int) -> None:
        self.m_kern = kern
        self.m_next: Mbuf | None = None
        self.m_flags = flags
        self.m_data = 0
        self.m_len = 0
        self.m_dat: bytearray | None = None
        self.m_ext: MExt | None = None
        self.m_pkthdr_len = 0
        self.m_pkthdr_csum_flags = 0

    @property
    def ext_pgs(self) -> MbufExtPgs:
        ext = self.m_ext
        if ext is None or ext.ext_pgs is None or not self.m_flags & M_NOMAP:
            kpanic("MBUF_EXT_PGS_ASSERT: not an unmapped mbuf")
        assert ext is not None and ext.ext_pgs is not None
        return ext.ext_pgs

    def __repr__(self) -> str:
        kind = "plain"
        if self.m_ext is not None:
            kind = ExtType(self.m_ext.ext_type).name
        return f"Mbuf({kind}, len={self.m_len}, data={self.m_data}, flags={MFlags(self.m_flags)!r})"


# ---------------------------------------------------------------------------
# Allocation and freeing (kern_mbuf.c)
# ---------------------------------------------------------------------------


def _mbuf_alloc(kern: Kernel, flags: int) -> Mbuf:
    st = kern.stats.mb
    st.mbufs_in_use += 1
    st.mbufs_total += 1
    if st.mbufs_in_use > st.mbufs_peak:
        st.mbufs_peak = st.mbufs_in_use
    return Mbuf(kern, flags)


def _mbuf_release(m: Mbuf) -> None:
    if m.m_flags & M_FREED:
        kpanic("double free of %r", m)
    st = m.m_kern.stats.mb
    if m.m_ext is not None and m.m_ext.ext_type == EXT_SFBUF:
        st.sfbuf_mbufs_in_use -= 1
    m.m_flags = M_FREED
    m.m_next = None
    st.mbufs_in_use -= 1


def m_get(kern: Kernel, pkthdr: bool = False) -> Mbuf:
    """m_get / m_gethdr: a plain mbuf with MLEN (or MHLEN) bytes of internal storage."""
    m = _mbuf_alloc(kern, M_PKTHDR if pkthdr else 0)
    m.m_dat = bytearray(MLEN)
    return m


def m_getcl(kern: Kernel, size: int = MCLBYTES, pkthdr: bool = False) -> Mbuf:
    """m_getcl / m_getjcl: an mbuf with a 2 KiB cluster or a page-sized jumbo cluster."""
    kassert(size in (MCLBYTES, MJUMPAGESIZE), "m_getcl: bad cluster size %s", size)
    m = _mbuf_alloc(kern, M_EXT | (M_PKTHDR if pkthdr else 0))
    st = kern.stats.mb
    if size == MCLBYTES:
        ext = MExt(EXT_CLUSTER, MCLBYTES, m)
        st.clusters_in_use += 1
        st.clusters_total += 1
        free_list = kern.cluster_cache
    else:
        ext = MExt(EXT_JUMBOP, MJUMPAGESIZE, m)
        st.jumbop_in_use += 1
        st.jumbop_total += 1
        free_list = kern.jumbop_cache
    ext.ext_buf = free_list.pop() if free_list else memoryview(bytearray(size))
    m.m_ext = ext
    return m


def m_extadd(
    m: Mbuf,
    buf: memoryview,
    size: int,
    freef: ExtFree,
    arg1: Any,
    arg2: Any,
    flags: int,
    ext_type: int,
) -> None:
    """m_extadd: attach caller-owned storage to a fresh mbuf; `freef(m)` runs once, at the end."""
    kassert(m.m_ext is None and m.m_len == 0, "m_extadd: %r already has storage", m)
    ext = MExt(ext_type, size, m)
    ext.ext_buf = buf
    ext.ext_free = freef
    ext.ext_arg1 = arg1
    ext.ext_arg2 = arg2
    m.m_ext = ext
    m.m_dat = None
    m.m_data = 0
    m.m_flags |= M_EXT | flags
    if ext_type == EXT_SFBUF:
        m.m_kern.stats.mb.sfbuf_mbufs_in_use += 1


def mb_alloc_ext_pgs(kern: Kernel, pkthdr: bool, ext_free: ExtFree) -> Mbuf:
    """mb_alloc_ext_pgs(how, pkthdr, ext_free): an empty unmapped mbuf (zone mbuf_extpgs),
    M_RDONLY like every page vector (its duplicates inherit that)."""
    m = _mbuf_alloc(kern, M_EXT | M_RDONLY | M_NOMAP | (M_PKTHDR if pkthdr else 0))
    ext = MExt(EXT_PGS, 0, m)
    pgs = MbufExtPgs()
    ext.ext_pgs = pgs
    ext.ext_free = ext_free
    m.m_ext = ext
    m.m_data = 0
    st = kern.stats.mb
    st.ext_pgs_in_use += 1
    st.ext_pgs_total += 1
    if st.ext_pgs_in_use > st.ext_pgs_peak:
        st.ext_pgs_peak = st.ext_pgs_in_use
    return m


def mb_ext_release(mref: Mbuf) -> None:
    """Drop one reference on the storage owned by `mref`; the last one frees the
    storage through the owner (its free routine runs once) and the owner itself."""
    rext = mref.m_ext
    assert rext is not None
    count = rext.ext_count - 1
    if count > 0:
        rext.ext_count = count
        return
    if count < 0:
        kpanic("mb_free_ext: reference count underflow on %r", mref)
    rext.ext_count = 0
    kern = mref.m_kern
    st = kern.stats.mb
    t = rext.ext_type
    if t == EXT_CLUSTER:
        st.clusters_in_use -= 1
        assert rext.ext_buf is not None
        kern.cluster_cache.append(rext.ext_buf)
    elif t == EXT_JUMBOP:
        st.jumbop_in_use -= 1
        assert rext.ext_buf is not None
        kern.jumbop_cache.append(rext.ext_buf)
    elif t == EXT_PGS:
        assert rext.ext_free is not None
        rext.ext_free(mref)
        st.ext_pgs_in_use -= 1
    else:
        kassert(t == EXT_SFBUF, "mb_free_ext: unknown ext type %s", t)
        assert rext.ext_free is not None
        rext.ext_free(mref)
    _mbuf_release(mref)


def mb_free_ext(m: Mbuf) -> None:
    """mb_free_ext: drop m's reference; the last one frees the storage through the owner."""
    ext = m.m_ext
    assert ext is not None
    mref = ext.ext_mref
    if m is mref:
        assert mref.m_ext is not None
        if mref.m_ext.ext_count > 1:
            # The owner stays allocated (it holds the counter) until the last
            # duplicate goes; mark it so that freeing it again trips at once.
            m.m_flags |= M_ZOMBIE
        mb_ext_release(mref)
        return
    mb_ext_release(mref)
    _mbuf_release(m)


def m_free(m: Mbuf) -> Mbuf | None:
    """m_free: free one mbuf (and its storage reference); return its successor."""
    flags = m.m_flags
    if flags & (M_FREED | M_ZOMBIE):
        kpanic("m_free: use after free of %r", m)
    n = m.m_next
    if flags & M_EXT:
        mb_free_ext(m)
    else:
        _mbuf_release(m)
    return n


def m_freem(m: Mbuf | None) -> None:
    """m_freem: free a whole chain."""
    while m is not None:
        m = m_free(m)


def mb_free_notready(m: Mbuf | None, count: int) -> None:
    """mb_free_notready: free the not-ready mbufs from m that cover `count` pages (an
    EXT_PGS mbuf counts its nrdy pages, any other mbuf one), as a failed page-in
    or encryption does with the batch that will never become ready."""
    i = 0
    while i < count and m is not None:
        i += 1
        if m.m_flags & M_NOMAP:
            pgs = m.ext_pgs
            pgs.nrdy -= 1
            if pgs.nrdy > 0:
                continue
        m = m_free(m)
    kassert(i == count, "mb_free_notready: removed only %s of %s", i, count)


# ---------------------------------------------------------------------------
# Reading (uipc_mbuf.c)
# ---------------------------------------------------------------------------


def m_length(m: Mbuf | None) -> tuple[int, Mbuf | None]:
    """m_length: total bytes of a chain and its last mbuf."""
    total = 0
    last = None
    while m is not None:
        total += m.m_len
        last = m
        m = m.m_next
    return total, last


def mtod(m: Mbuf) -> memoryview:
    """mtod for a mapped mbuf: a view of its m_len bytes (no copy)."""
    kassert(not m.m_flags & M_NOMAP, "mtod on an unmapped mbuf")
    if m.m_flags & M_EXT:
        assert m.m_ext is not None and m.m_ext.ext_buf is not None
        return m.m_ext.ext_buf[m.m_data : m.m_data + m.m_len]
    assert m.m_dat is not None
    return memoryview(m.m_dat)[m.m_data : m.m_data + m.m_len]


def pages_iov(
    dmap: memoryview, pgs: MbufExtPgs, pa: list[int], off: int, length: int, out: list[memoryview]
) -> None:
    """Views of bytes [off, off+length) of a page vector `pa` laid out as `pgs`'s
    (its own pages, or destination pages laid out alike) through the direct map,
    appended to `out`. Physically contiguous pages come back as one view, as
    busdma coalesces adjacent segments; the caller has checked the bounds."""
    last = pgs.npgs - 1
    first_pg_off = pgs.first_pg_off
    if last > 0 and pages_contiguous(pa):
        # One run: byte b of the vector is at pa[0] + first_pg_off + b.
        if off + length > last * PAGE_SIZE - first_pg_off + pgs.last_pg_len:
            kpanic("pages_iov: %s+%s beyond the pages", off, length)
        base = pa[0] - PHYS_BASE + first_pg_off + off
        if length:
            out.append(dmap[base : base + length])
        return
    segs: list[memoryview] = []
    addrs: list[int] = []
    got = pages_load(dmap, pgs, pa, off, length, segs, addrs)
    if got != length:
        kpanic("pages_iov: %s bytes beyond the pages", length - got)
    out.extend(segs)


def dmamap_addseg(
    segs: list[memoryview], addrs: list[int], dmap: memoryview, addr: int, n: int
) -> None:
    """_bus_dmamap_addseg: append the piece at arena offset `addr` (its offset in
    `addrs`; -1 for bytes outside the arena), merged with the previous segment
    when it follows it physically."""
    if addrs and addrs[-1] >= 0:
        prev = addrs[-1]
        if prev + len(segs[-1]) == addr:
            segs[-1] = dmap[prev : addr + n]
            return
    segs.append(dmap[addr : addr + n])
    addrs.append(addr)


def pages_load(
    dmap: memoryview,
    pgs: MbufExtPgs,
    pa: list[int],
    off: int,
    length: int,
    segs: list[memoryview],
    addrs: list[int],
) -> int:
    """Bytes [off, off+length) of a page vector `pa` laid out as `pgs`'s, by
    physical address, appended to `segs` (`dmamap_addseg`): adjacent pages are
    one run, built in integers, and one view per run. Stops at the last page;
    returns the bytes loaded."""
    npgs = pgs.npgs
    first_pg_off = pgs.first_pg_off
    last_pg_len = pgs.last_pg_len
    last = npgs - 1
    run = -1  # arena offset of the run being built
    run_len = 0
    got = 0
    for i in range(npgs):
        if i == 0:
            pgoff = first_pg_off
            plen = last_pg_len if last == 0 else PAGE_SIZE - first_pg_off
        else:
            pgoff = 0
            plen = last_pg_len if i == last else PAGE_SIZE
        if off >= plen:
            off -= plen
            continue
        take = plen - off
        if take > length:
            take = length
        addr = pa[i] - PHYS_BASE + pgoff + off
        if run_len and run + run_len == addr:
            run_len += take
        else:
            if run_len:
                dmamap_addseg(segs, addrs, dmap, run, run_len)
            run = addr
            run_len = take
        length -= take
        got += take
        off = 0
        if not length:
            break
    if run_len:
        dmamap_addseg(segs, addrs, dmap, run, run_len)
    return got


def m_unmapped_iov(m: Mbuf, off: int, length: int) -> list[memoryview]:
    """Views of bytes [off, off+length) of an unmapped mbuf: header, pages by physical
    address through the direct map, trailer. `off` is relative to the mbuf's data
    (the trim offset `m_data` is added here). This is what m_unmappedtouio,
    uiomove_fromphys and busdma's unmapped loader do, without copying."""
    pgs = m.ext_pgs
    if off < 0 or off + length > m.m_len:
        kpanic("m_unmapped_iov: %s+%s > %s", off, length, m.m_len)
    out: list[memoryview] = []
    off += m.m_data
    rem = length
    hdr_len = pgs.hdr_len
    if off < hdr_len:
        if rem:
            n = min(hdr_len - off, rem)
            out.append(memoryview(pgs.hdr)[off : off + n])
            rem -= n
        off = 0
    else:
        off -= hdr_len
    if rem and pgs.npgs:
        in_pages = pgs.page_bytes() - off
        if in_pages > 0:
            n = min(in_pages, rem)
            pages_iov(m.m_kern.phys.dmap, pgs, pgs.pa, off, n, out)
            rem -= n
            off = 0
        else:
            off = -in_pages
    if rem:
        kassert(off + rem <= pgs.trail_len, "m_unmapped_iov: %s bytes beyond the trailer", rem)
        out.append(memoryview(pgs.trail)[off : off + rem])
    return out


def m_iov(m: Mbuf, off: int, length: int) -> list[memoryview]:
    """Views of bytes [off, off+length) of one mbuf, mapped or not."""
    if m.m_flags & M_NOMAP:
        return m_unmapped_iov(m, off, length)
    return [mtod(m)[off : off + length]]


def m_chain_iov(m: Mbuf | None, off: int, length: int) -> list[memoryview]:
    """Views of bytes [off, off+length) of a chain (used by m_copydata, the NIC and checksums)."""
    out: list[memoryview] = []
    while m is not None and off >= m.m_len:
        off -= m.m_len
        m = m.m_next
    rem = length
    while rem:
        kassert(m is not None, "m_chain_iov: chain shorter than %s+%s", off, length)
        assert m is not None
        n = min(m.m_len - off, rem)
        if n:
            out.extend(m_iov(m, off, n))
        rem -= n
        off = 0
        m = m.m_next
    return out


def m_getptr(m: Mbuf, loc: int) -> tuple[Mbuf, int]:
    """m_getptr: the mbuf of the chain holding byte `loc`, and its offset there.
    (Callers that cut a chain after its first n bytes ask for byte n - 1.)"""
    kassert(loc >= 0, "m_getptr: negative offset %s", loc)
    cur: Mbuf | None = m
    while cur is not None and loc >= cur.m_len:
        loc -= cur.m_len
        cur = cur.m_next
    kassert(cur is not None, "m_getptr: chain shorter than %s", loc)
    assert cur is not None
    return cur, loc


def m_copydata(m: Mbuf | None, off: int, length: int) -> bytes:
    """m_copydata: copy bytes out of a chain; unmapped mbufs are read through their pages."""
    if off < 0 or length < 0:
        raise ValueError(f"m_copydata: negative offset {off} or length {length}")
    return b"".join(m_chain_iov(m, off, length))


# ---------------------------------------------------------------------------
# Sharing and trimming
# ---------------------------------------------------------------------------


def mb_dupcl(n: Mbuf, m: Mbuf) -> None:
    """mb_dupcl: make n share m's external storage (one more reference on the owner)."""
    src = m.m_ext
    assert src is not None
    mref = src.ext_mref
    assert mref.m_ext is not None
    ext = MExt(src.ext_type, src.ext_size, mref)
    ext.ext_buf = src.ext_buf
    ext.ext_pgs = src.ext_pgs
    ext.ext_arg2 = src.ext_arg2
    ext.ext_flags = src.ext_flags & ~EXT_FLAG_EMBREF
    # ext_free and ext_arg1 lie past m_ext_copylen: duplicates do not carry them.
    n.m_ext = ext
    n.m_dat = None
    n.m_flags |= M_EXT | (m.m_flags & _M_DUP_INHERIT)  # read-only only if m is
    mref.m_ext.ext_count += 1
    if src.ext_type == EXT_SFBUF:
        n.m_kern.stats.mb.sfbuf_mbufs_in_use += 1


def m_copym(m: Mbuf | None, off: int, length: int) -> Mbuf:
    """m_copym: a new chain for bytes [off, off+length); external storage (clusters,
    sf_bufs, page vectors) is shared by reference, internal data is copied."""
    kassert(off >= 0 and length > 0, "m_copym: off %s len %s", off, length)
    while m is not None and off >= m.m_len:
        off -= m.m_len
        m = m.m_next
    top: Mbuf | None = None
    tail: Mbuf | None = None
    rem = length
    while rem:
        if m is None:
            kpanic("m_copym: chain too short")
        assert m is not None
        kern = m.m_kern
        n = _mbuf_alloc(kern, 0)
        cnt = min(m.m_len - off, rem)
        if m.m_flags & M_EXT:
            mb_dupcl(n, m)
            n.m_data = m.m_data + off
        else:
            n.m_dat = bytearray(MLEN)
            n.m_dat[:cnt] = mtod(m)[off : off + cnt]
        n.m_len = cnt
        if tail is None:
            top = n
        else:
            tail.m_next = n
        tail = n
        rem -= cnt
        off = 0
        m = m.m_next
    assert top is not None
    return top


def m_adj(m: Mbuf, req_len: int) -> None:
    """m_adj: trim req_len bytes from the head (>0) or the tail (<0) of a chain."""
    if req_len >= 0:
        rem = req_len
        n: Mbuf | None = m
        while n is not None and rem:
            cut = min(n.m_len, rem)
            n.m_len -= cut
            n.m_data += cut  # for unmapped mbufs this is the trim offset
            rem -= cut
            n = n.m_next
        if m.m_flags & M_PKTHDR:
            m.m_pkthdr_len -= req_len - rem
        return
    total, _ = m_length(m)
    keep = max(0, total + req_len)
    n = m
    while n is not None:
        if keep >= n.m_len:
            keep -= n.m_len
        else:
            n.m_len = keep
            keep = 0
        n = n.m_next
    if m.m_flags & M_PKTHDR:
        m.m_pkthdr_len = max(0, m.m_pkthdr_len + req_len)


def m_pullup(m: Mbuf, length: int) -> Mbuf:
    """m_pullup: make the first `length` bytes of the chain contiguous in the first
    mbuf (at most MLEN), copying them out of the mbufs that follow.

    As in the kernel, the first mbuf must not be unmapped (there is nothing to
    make contiguous in a page vector; protocol headers always go in a mapped mbuf
    placed in front, as tcp_output does). Bytes pulled out of later mbufs are
    read with the same readers as m_copydata, so unmapped mbufs further down
    the chain give their bytes up correctly. Raises ValueError if the chain is
    shorter than `length` or `length` exceeds MLEN (the kernel frees the chain
    and returns NULL there)."""
    kassert(not m.m_flags & M_NOMAP, "m_pullup: first mbuf %r is unmapped", m)
    total, _ = m_length(m)
    room = MHLEN if m.m_flags & M_PKTHDR else MLEN
    if length > room or length > total:
        raise ValueError(f"m_pullup: cannot make {length} of {total} bytes contiguous")
    if m.m_len >= length:
        return m
    head = m_get(m.m_kern, pkthdr=bool(m.m_flags & M_PKTHDR))
    assert head.m_dat is not None
    head.m_dat[:length] = m_copydata(m, 0, length)
    head.m_len = length
    head.m_pkthdr_len = m.m_pkthdr_len
    head.m_pkthdr_csum_flags = m.m_pkthdr_csum_flags
    # Drop the pulled-up bytes from the old chain (freeing emptied mbufs).
    rest: Mbuf | None = m
    need = length
    while rest is not None and need:
        take = min(rest.m_len, need)
        rest.m_len -= take
        rest.m_data += take
        need -= take
        if rest.m_len == 0:
            rest = m_free(rest)
    head.m_next = rest
    return head


def mb_ext_pgs_check(m: Mbuf) -> None:
    """mb_ext_pgs_check: the invariants of an unmapped mbuf (its length and capacity)."""
    pgs = m.ext_pgs
    kassert(0 <= pgs.npgs <= MBUF_PEXT_MAX_PGS, "npgs %s out of range", pgs.npgs)
    kassert(len(pgs.pa) == pgs.npgs, "pa[] and npgs disagree")
    kassert(pgs.hdr_len <= MBUF_PEXT_HDR_LEN, "hdr_len %s > %s", pgs.hdr_len, MBUF_PEXT_HDR_LEN)
    kassert(pgs.trail_len <= MBUF_PEXT_TRAIL_LEN, "trail_len %s", pgs.trail_len)
    kassert(0 <= pgs.nrdy <= pgs.npgs, "nrdy %s > npgs %s", pgs.nrdy, pgs.npgs)
    if pgs.npgs:
        kassert(pgs.first_pg_off < PAGE_SIZE, "first_pg_off beyond a page")
        if pgs.npgs == 1:
            kassert(pgs.first_pg_off + pgs.last_pg_len <= PAGE_SIZE, "single page overflows")
        else:
            kassert(0 < pgs.last_pg_len <= PAGE_SIZE, "last_pg_len %s", pgs.last_pg_len)
    full = pgs.hdr_len + pgs.page_bytes() + pgs.trail_len
    kassert(m.m_data + m.m_len <= full, "m_len %s+%s > %s", m.m_len, m.m_data, full)
