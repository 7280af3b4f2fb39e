"""Building, freeing and converting unmapped mbufs.

Theory of operation.
* `m_uiotombuf` copies caller bytes into mbufs: mapped clusters for an ordinary
  write, or (`nomap=True`, as `sosend` does for KTLS sockets and sendfile does
  for the headers of a TLS response) unmapped mbufs over freshly allocated,
  wired anonymous pages, `maxseg` bytes per mbuf.
* `mb_free_mext_pgs` is the free routine of anonymous page vectors.
* `mb_unmapped_to_ext` turns every unmapped mbuf of a chain into mapped mbufs:
  header and trailer bytes copied into plain mbufs, each page mapped by an
  sf_buf into an EXT_SFBUF mbuf that holds a reference on the original, so the
  pages stay wired until the last of those mbufs is freed. As in the 2019
  kern_mbuf.c, the pkthdr is not carried over, an empty mbuf whose trim
  offset is still in its header becomes an empty plain mbuf, and one with
  nothing left at all converts to NULL, which fails the whole chain.
* `mb_unmapped_compress` copies a small unmapped mbuf into its own internal
  storage.

Models: sys/kern/kern_mbuf.c and sys/kern/uipc_mbuf.c (`m_uiotombuf`,
`mb_free_mext_pgs`, `mb_unmapped_to_ext`, `mb_unmapped_compress`).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from mbuf.kassert import kassert
from mbuf.mbuf import (
    EXT_SFBUF,
    M_EXT,
    M_NOMAP,
    M_PKTHDR,
    M_RDONLY,
    MBUF_PEXT_FLAG_ANON,
    Mbuf,
    m_extadd,
    m_free,
    m_freem,
    m_get,
    m_getcl,
    m_unmapped_iov,
    mb_alloc_ext_pgs,
    mb_ext_release,
)
from mbuf.param import (
    MBUF_PEXT_MAX_PGS,
    MCLBYTES,
    MINCLSIZE,
    MJUMPAGESIZE,
    MLEN,
    PAGE_SIZE,
    howmany,
)
from mbuf.sf_buf import SFB_NOWAIT, SfBuf, sf_buf_kva

if TYPE_CHECKING:
    from mbuf.kern import Kernel


@mypyc_attr(native_class=False)  # mypyc compiles no native subclass of OSError
class NoMemory(OSError):
    """Physical pages ran out: the caller waits (vm_wait) and retries."""


def mb_free_mext_pgs(m: Mbuf) -> None:
    """Free routine of anonymous page vectors: unwire and free each page."""
    pgs = m.ext_pgs
    m.m_kern.phys.pages_free_anon(pgs.pa)
    pgs.pa.clear()


def _alloc_anon_pages(kern: Kernel, n: int) -> list[int]:
    """n wired anonymous pages, or NoMemory with nothing allocated."""
    phys = kern.phys
    if phys.free_count() < n:
        phys.vm_wait()
        raise NoMemory(12, f"no free pages for {n} anonymous pages")
    out = phys.pages_alloc_anon(n)
    assert out is not None
    return out


def m_uiotombuf(
    kern: Kernel, data: memoryview | bytes, *, nomap: bool = False, maxseg: int = 0
) -> Mbuf | None:
    """m_uiotombuf: copy `data` into a new chain (None for empty data).

    nomap=False builds mapped mbufs as m_getm2 does (page-sized jumbo clusters
    while more than MCLBYTES remain, 2 KiB clusters, a plain mbuf for small
    tails). nomap=True builds m_uiotombuf_nomap's unmapped mbufs of at most
    `maxseg` bytes (default MBUF_PEXT_MAX_PGS pages) over anonymous pages.
    Raises NoMemory (having allocated nothing) if pages are short.
    """
    view = memoryview(data).cast("B")
    total = len(view)
    if total == 0:
        return None
    if nomap:
        return _uiotombuf_nomap(kern, view, maxseg or MBUF_PEXT_MAX_PGS * PAGE_SIZE)
    top: Mbuf | None = None
    tail: Mbuf | None = None
    off = 0
    while off < total:
        rem = total - off
        if rem > MCLBYTES:
            m = m_getcl(kern, MJUMPAGESIZE)
        elif rem >= MINCLSIZE:
            m = m_getcl(kern, MCLBYTES)
        else:
            m = m_get(kern)
        cap = m.m_ext.ext_size if m.m_ext is not None else MLEN
        n = min(cap, rem)
        if m.m_ext is not None:
            assert m.m_ext.ext_buf is not None
            m.m_ext.ext_buf[:n] = view[off : off + n]
        else:
            assert m.m_dat is not None
            m.m_dat[:n] = view[off : off + n]
        m.m_len = n
        off += n
        if tail is None:
            top = m
        else:
            tail.m_next = m
        tail = m
    return top


def _uiotombuf_nomap(kern: Kernel, view: memoryview, maxseg: int) -> Mbuf:
    kassert(maxseg % PAGE_SIZE == 0, "m_uiotombuf_nomap: maxseg %s is not whole pages", maxseg)
    total = len(view)
    pas = _alloc_anon_pages(kern, howmany(total, PAGE_SIZE))
    phys = kern.phys
    top: Mbuf | None = None
    tail: Mbuf | None = None
    off = 0
    used = 0
    while off < total:
        seg = min(maxseg, total - off)
        m = mb_alloc_ext_pgs(kern, False, mb_free_mext_pgs)
        pgs = m.ext_pgs
        pgs.flags = MBUF_PEXT_FLAG_ANON
        done = 0
        while done < seg:
            n = min(PAGE_SIZE, seg - done)
            pa = pas[used]  # in allocation order: an ascending run stays one DMA segment
            used += 1
            phys.phys_view(pa, 0, n)[:] = view[off + done : off + done + n]
            pgs.pa.append(pa)
            pgs.npgs += 1
            pgs.last_pg_len = n
            m.m_ext.ext_size += PAGE_SIZE  # type: ignore[union-attr]
            done += n
        m.m_len = seg
        off += seg
        if tail is None:
            top = m
        else:
            tail.m_next = m
        tail = m
    kassert(used == len(pas), "m_uiotombuf_nomap: %s pages left over", len(pas) - used)
    assert top is not None
    return top


def mb_unmapped_free_mext(m: Mbuf) -> None:
    """Free routine of a page mbuf made by a conversion: unmap, then drop the
    reference it held on the original unmapped mbuf."""
    ext = m.m_ext
    assert ext is not None
    sf: SfBuf = ext.ext_arg1
    m.m_kern.sfbufs.sf_buf_free(sf)
    old: Mbuf = ext.ext_arg2
    mb_ext_release(old)


def _mb_unmapped_to_ext(m: Mbuf) -> tuple[Mbuf, Mbuf] | None:
    """Convert one unmapped mbuf; returns (head, tail) of the mapped sub-chain, or None."""
    kern = m.m_kern
    pgs = m.ext_pgs
    kassert(pgs.tls is None, "_mb_unmapped_to_ext: converting an unencrypted TLS record")
    ext = m.m_ext
    assert ext is not None
    mref = ext.ext_mref
    phys = kern.phys
    pieces: list[Mbuf] = []
    ref_inc = 0
    off = m.m_data  # trim offset
    rem = m.m_len
    failed = False
    # Header bytes still in range (an mbuf even if none are: the 2019 code makes one).
    if off < pgs.hdr_len:
        n = min(pgs.hdr_len - off, rem)
        h = m_get(kern)
        assert h.m_dat is not None
        h.m_dat[:n] = pgs.hdr[off : off + n]
        h.m_len = n
        pieces.append(h)
        rem -= n
        off = 0
    else:
        off -= pgs.hdr_len
    for i, pgoff, n in pgs.page_ranges(off, rem):
        sf = kern.sfbufs.sf_buf_alloc(phys.phys_to_vm_page(pgs.pa[i]), SFB_NOWAIT)
        if sf is None:
            failed = True
            break
        pm = m_get(kern)
        pm.m_dat = None
        m_extadd(
            pm, sf_buf_kva(sf), PAGE_SIZE, mb_unmapped_free_mext, sf, mref, M_RDONLY, EXT_SFBUF
        )
        pm.m_data = pgoff
        pm.m_len = n
        pieces.append(pm)
        ref_inc += 1
        kern.stats.ip.unmapped_pages_mapped += 1
        rem -= n
    off = max(0, off - pgs.page_bytes())
    if not failed and rem:
        t = m_get(kern)
        assert t.m_dat is not None
        t.m_dat[:rem] = pgs.trail[off : off + rem]
        t.m_len = rem
        pieces.append(t)
    # Each page mbuf holds one reference on the original's storage.
    assert mref.m_ext is not None
    mref.m_ext.ext_count += ref_inc
    if failed or not pieces:
        # Nothing in range and no header mbuf: the 2019 code returns the empty
        # result, NULL, which its caller takes for a failure.
        for p in pieces:
            m_free(p)
        return None
    for a, b in itertools.pairwise(pieces):
        a.m_next = b
    # The pkthdr is not carried over: the 2019 code does not (ip_output's chains
    # start with the mapped header mbuf, which keeps it).
    return pieces[0], pieces[-1]


def mb_unmapped_to_ext(top: Mbuf) -> Mbuf | None:
    """mb_unmapped_to_ext: replace every unmapped mbuf of a chain by mapped mbufs.

    Returns the new head, or None after freeing the whole chain when an sf_buf
    could not be had (the caller drops the packet with ENOBUFS) -- or, as in
    the 2019 code, when an unmapped mbuf has nothing in range and no header
    byte left (tcp_output never hands ip_output such an mbuf).
    """
    prev: Mbuf | None = None
    m: Mbuf | None = top
    head: Mbuf = top
    converted = 0
    while m is not None:
        nxt = m.m_next
        if not m.m_flags & M_NOMAP:
            prev = m
            m = nxt
            continue
        sub = _mb_unmapped_to_ext(m)
        if sub is None:
            m.m_next = None
            m_free(m)
            if prev is not None:
                prev.m_next = None
                m_freem(head)
            m_freem(nxt)
            return None
        m.m_next = None
        m_free(m)  # drops the converted mbuf's own reference
        converted += 1
        first, last = sub
        last.m_next = nxt
        if prev is None:
            head = first
        else:
            prev.m_next = first
        prev = last
        m = nxt
    if converted:
        top.m_kern.stats.ip.unmapped_mbufs_converted += converted
    return head


def mb_unmapped_compress(m: Mbuf) -> bool:
    """mb_unmapped_compress: copy a small, sole-reference unmapped mbuf into internal
    storage and release its pages. Returns False (changing nothing) when not allowed."""
    if not m.m_flags & M_NOMAP or m.m_flags & M_PKTHDR or m.m_len > MLEN:
        return False
    ext = m.m_ext
    assert ext is not None
    if ext.ext_mref is not m or ext.ext_count != 1:
        return False
    data = b"".join(m_unmapped_iov(m, 0, m.m_len))
    pgs = m.ext_pgs
    freef = ext.ext_free
    assert freef is not None
    freef(m)
    kern = m.m_kern
    kern.stats.mb.ext_pgs_in_use -= 1
    kern.stats.mb.compressed += 1
    pgs.pa.clear()
    m.m_ext = None
    m.m_flags &= ~(M_EXT | M_RDONLY | M_NOMAP)
    m.m_dat = bytearray(MLEN)
    m.m_dat[: len(data)] = data
    m.m_data = 0
    return True
