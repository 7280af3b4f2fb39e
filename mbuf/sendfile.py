"""sendfile(2): file pages into the socket buffer without copying.

Theory of operation. One `SendfileJob` is one sendfile call on a non-blocking
socket; `sendfile_step` runs its main loop until the request is queued or the
socket buffer is full:

1. wait for space: proceed only if everything left fits, or at least the
   low-water mark (raised to at least sb_hiwat/2) is free;
2. the headers (the HTTP response head) become mbufs, no more of them than
   sbspace allows (the rest on the next pass): unmapped anonymous pages framed
   as their own TLS records when the socket has a TLS session, ordinary
   mapped mbufs otherwise;
3. the batch is `min(rem, space)` bytes, cut at a page boundary when more
   follows; its pages are looked up in the file's VM object and wired. Valid
   pages count `sendfile.pages_valid`; missing ones get fresh page frames and
   are read by a `PagerRequest` (one per run of missing pages) that the caller
   runs on a worker thread and then completes with `vm_pager_iodone`. A page
   another request is already reading is waited for, not read twice;
4. the mbufs: unmapped EXT_PGS mbufs of up to MBUF_PEXT_MAX_PGS (19) pages,
   or 4 pages (one 16 KiB record) with TLS; or, when unmapped sendfile is off
   (`kern.ipc.mb_use_ext_pgs=0`, where `ktls_enable_tx` refuses TLS with
   ENXIO), one EXT_SFBUF mbuf per page, each holding an sf_buf. While I/O is
   pending they are `M_NOTREADY` and `nrdy` counts their pages;
5. with TLS the chain is framed into records (`ktls_frame`) and, once its pages
   are valid, queued to the encryption workers (`ktls_enqueue`); otherwise it
   becomes ready (`pru_ready`) when its I/O completes (`sendfile_iodone`).

The last read of a batch reads ahead (rest of the request up to MAXPHYS, or
`--readahead N` pages); those pages enter the cache unwired.

A failed read aborts the connection (EIO) and frees the batch's not-ready
mbufs at once (`mb_free_notready`); ready data stays until the socket closes.

Models: sys/kern/kern_sendfile.c (`kern_sendfile`, `sendfile_swapin`,
`sendfile_iodone`, `sendfile_free_mext_pg`) and the `sfstat` counters where
it bumps them (mbuf/counters.py says what each one counts).

Deliberate differences: a read stops at a valid page and another starts after
it, where the kernel reads across valid pages in the middle of a run and
gives them to the pager as `bogus_page`; so `sf_pages_bogus` is not kept. A
page another read is bringing in is waited for (`sendfile.busy_waits`), as
vm_page_grab_pages sleeps; `sf_busy` (SF_NODISKIO only) is not kept. A
`SendfileJob` resumed after NEED_SPACE is one call (a blocking sendfile):
`sendfile.syscalls` counts it once. The wait for space asks room for the
headers too (the kernel only for the file bytes). If a file shrinks below
the size it had when it was looked up, the read comes up short and the
connection is aborted with EIO, so a response never mixes bytes of two
versions. pru_abort does not flush the ready part of the send buffer at
once (the kernel's does); the socket's close does.
"""

from __future__ import annotations

import enum
import errno
import logging
from typing import TYPE_CHECKING

from mbuf.kassert import kassert
from mbuf.ktls_hdr import TLS_RLTYPE_APP
from mbuf.mb_unmapped import NoMemory, m_uiotombuf
from mbuf.mbuf import (
    EXT_SFBUF,
    M_NOMAP,
    M_NOTREADY,
    M_RDONLY,
    Mbuf,
    m_extadd,
    m_get,
    mb_alloc_ext_pgs,
    mb_free_notready,
)
from mbuf.param import (
    MAXPHYS,
    MBUF_PEXT_MAX_PGS,
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    howmany,
    trunc_page,
)
from mbuf.sf_buf import SFB_NOWAIT, SfBuf, sf_buf_kva, sf_buf_page
from mbuf.sockbuf import SBS_CANTSENDMORE
from mbuf.socket import Socket, pru_ready
from mbuf.vm_object import PagerRequest, VmObject
from mbuf.vm_page import VmPage

if TYPE_CHECKING:
    from mbuf.kern import Kernel


log = logging.getLogger("nomapd.sendfile")


class SendfileStatus(enum.Enum):
    DONE = "done"  # everything queued to the socket buffer
    NEED_SPACE = "need-space"  # wait until the send buffer drains (sbwait)
    NEED_MEMORY = "need-memory"  # no free page frames (vm_wait)


class SfIo:
    """struct sf_io: one batch whose pages are under I/O."""

    __slots__ = ("error", "m", "nios", "npages", "so", "tls")

    def __init__(self, so: Socket) -> None:
        self.nios = 1  # the sendfile loop's own reference
        self.error = 0
        self.npages = 0
        self.so = so
        self.m: Mbuf | None = None
        self.tls = so.so_snd.sb_tls_info


class SendfileJob:
    __slots__ = ("_open", "fd", "hdr", "obj", "off", "rem", "sbytes", "so")

    def __init__(
        self, so: Socket, obj: VmObject, fd: int, offset: int, nbytes: int, hdr: bytes = b""
    ) -> None:
        if offset < 0 or nbytes < 0:
            raise ValueError(f"sendfile: negative offset {offset} or length {nbytes}")
        if offset + nbytes > obj.size:
            raise ValueError(f"sendfile: {offset}+{nbytes} beyond file size {obj.size}")
        self.so = so
        self.obj = obj
        self.fd = fd
        self.off = offset
        self.rem = nbytes
        self.hdr: bytes | None = hdr or None
        self.sbytes = 0
        obj.hold()  # the page cache keeps the object while this job uses it
        self._open = True
        st = so.so_kern.stats.sf
        st.syscalls += 1
        st.rhpages_requested += so.so_kern.readahead or 0  # SF_READAHEAD(flags)

    def close(self) -> None:
        """The call is over (done or abandoned): drop the hold on the VM object."""
        if self._open:
            self._open = False
            self.obj.release()

    @property
    def done(self) -> bool:
        return self.rem == 0 and self.hdr is None


def sendfile_free_mext_pg(m: Mbuf) -> None:
    """Free routine of sendfile's page vectors: unwire each file page (it stays cached)."""
    pgs = m.ext_pgs
    m.m_kern.phys.pages_unwire(pgs.pa)
    pgs.pa.clear()


def sendfile_free_mext(m: Mbuf) -> None:
    """Free routine of an EXT_SFBUF page mbuf: unmap, then unwire the page."""
    ext = m.m_ext
    assert ext is not None
    sf: SfBuf = ext.ext_arg1
    kern = m.m_kern
    kern.sfbufs.sf_buf_free(sf)
    kern.phys.page_unwire(sf_buf_page(sf))


def _swapin(
    kern: Kernel, job: SendfileJob, sfio: SfIo, npages: int, new_io: list[PagerRequest]
) -> list[VmPage]:
    """sendfile_swapin: wire the batch's pages, starting reads for missing ones.
    Stops early (fewer pages) when page frames run out."""
    obj = job.obj
    phys = kern.phys
    st = kern.stats.sf
    first = job.off >> PAGE_SHIFT
    pages: list[VmPage] = []
    run: PagerRequest | None = None
    waiting: set[int] = set()
    lookup = obj.pages.get
    for i in range(npages):
        pindex = first + i
        pg = lookup(pindex)
        if pg is not None and pg.valid:
            if pg.wire_count:  # wired by another mbuf already: one more wiring
                pg.wire_count += 1
            elif not phys.page_wire_try(pg):
                phys.vm_wait()
                break
            st.pages_valid += 1
            pages.append(pg)
            run = None
            continue
        req = obj.busy.get(pindex) if pg is not None else None
        if pg is not None and req is not None:
            # Busy: another request is reading it. Wait for that request.
            phys.page_wire(pg)
            st.busy_waits += 1
            if id(req) not in waiting:
                waiting.add(id(req))
                req.waiters.append(sfio)
                sfio.nios += 1
            pages.append(pg)
            run = None
            continue
        # Not there, or left invalid by a failed read and still wired by the
        # aborted socket's mbufs: read it into a fresh frame (the old one is
        # freed when its last wiring goes).
        pg = phys.page_alloc_object(obj, pindex)
        if pg is None:
            phys.vm_wait()
            break
        if run is None:
            run = PagerRequest(job.fd, pindex << PAGE_SHIFT, [], [], obj.size, obj.key[3])
            run.waiters.append(sfio)
            sfio.nios += 1
            new_io.append(run)
            st.iocnt += 1
        run.pages.append(pg)
        run.views.append(phys.phys_view(pg.phys_addr))
        obj.busy[pindex] = run
        st.pages_read += 1
        pages.append(pg)
    if run is not None and len(pages) == npages:
        _readahead(kern, job, run, first + npages)
    if not new_io and npages:
        st.noiocnt += 1  # "if (nios == 0 && npages != 0) SFSTAT_INC(sf_noiocnt)"
    return pages


def _readahead(kern: Kernel, job: SendfileJob, run: PagerRequest, pindex: int) -> None:
    """Extend the batch's last read past the batch (vm_pager_get_pages_async's
    rahead): by default the rest of the request, capped at MAXPHYS; exactly
    `kern.readahead` pages when set (SF_USER_READAHEAD). The pages go into the
    cache unwired when the read completes; no mbuf holds them."""
    obj = job.obj
    # kern.ipc.sendfile.readahead, read per read started (a change applies to the
    # next one; sf_rhpages_requested counted the call's value when it began).
    if kern.readahead is None:
        want = howmany(job.off + job.rem, PAGE_SIZE) - pindex  # the rest of the request
    else:
        want = kern.readahead
    want = min(want, MAXPHYS // PAGE_SIZE, howmany(obj.size, PAGE_SIZE) - pindex)
    st = kern.stats.sf
    for i in range(pindex, pindex + max(want, 0)):
        if obj.page_lookup(i) is not None:
            break
        pg = kern.phys.page_alloc_object(obj, i)
        if pg is None:
            break
        run.pages.append(pg)
        run.views.append(kern.phys.phys_view(pg.phys_addr))
        run.rahead += 1
        obj.busy[i] = run
        st.rhpages_read += 1  # SFSTAT_ADD(sf_rhpages_read, rhpages) when the read starts


def _unwire_pages(kern: Kernel, pages: list[VmPage]) -> None:
    for pg in pages:
        kern.phys.page_unwire(pg)


def _build_unmapped(
    kern: Kernel, pages: list[VmPage], off: int, length: int, max_pgs: int, notready: bool
) -> Mbuf:
    """The E1 chain: EXT_PGS mbufs of up to `max_pgs` pages each (one record with TLS)."""
    top: Mbuf | None = None
    tail: Mbuf | None = None
    pgoff = off & PAGE_MASK
    rem = length
    npages = len(pages)
    i = 0
    while i < npages:
        run = pages[i : i + max_pgs]
        k = len(run)
        nbytes = min(k * PAGE_SIZE - pgoff, rem)
        last_len = nbytes if k == 1 else nbytes - (k - 1) * PAGE_SIZE + pgoff
        kassert(0 < last_len <= PAGE_SIZE, "sendfile: pages do not cover the batch")
        m = mb_alloc_ext_pgs(kern, False, sendfile_free_mext_pg)
        ext = m.m_ext
        assert ext is not None and ext.ext_pgs is not None
        pgs = ext.ext_pgs
        pgs.first_pg_off = pgoff
        pgs.pa = [pg.phys_addr for pg in run]
        pgs.npgs = k
        pgs.last_pg_len = last_len
        ext.ext_size = k * PAGE_SIZE
        m.m_len = nbytes
        if notready:
            m.m_flags |= M_NOTREADY
            pgs.nrdy = k
        if tail is None:
            top = m
        else:
            tail.m_next = m
        tail = m
        rem -= nbytes
        pgoff = 0
        i += k
    kassert(rem == 0 and top is not None, "sendfile: pages do not cover the batch")
    assert top is not None
    return top


def _build_mapped(
    kern: Kernel, pages: list[VmPage], off: int, length: int, notready: bool
) -> tuple[Mbuf | None, int]:
    """The E0 chain: one EXT_SFBUF mbuf per page. Returns (chain, bytes covered);
    stops early if an sf_buf cannot be had (the rest is sent on a later pass)."""
    top: Mbuf | None = None
    tail: Mbuf | None = None
    covered = 0
    for i, pg in enumerate(pages):
        pgoff = off & PAGE_MASK if i == 0 else 0
        xfsize = min(PAGE_SIZE - pgoff, length - covered)
        sf = kern.sfbufs.sf_buf_alloc(pg, 0 if i == 0 else SFB_NOWAIT)
        if sf is None:
            _unwire_pages(kern, pages[i:])
            break
        m = m_get(kern)
        m_extadd(m, sf_buf_kva(sf), PAGE_SIZE, sendfile_free_mext, sf, None, M_RDONLY, EXT_SFBUF)
        m.m_data = pgoff
        m.m_len = xfsize
        if notready:
            m.m_flags |= M_NOTREADY
        if tail is None:
            top = m
        else:
            tail.m_next = m
        tail = m
        covered += xfsize
    return top, covered


def sendfile_step(job: SendfileJob, new_io: list[PagerRequest]) -> SendfileStatus:
    """Run the sendfile loop until done or blocked. Pager requests it starts are
    appended to `new_io`; the caller must run each once and then call
    `vm_pager_iodone`. Raises OSError (EPIPE, or the socket's error)."""
    so = job.so
    sb = so.so_snd
    kern = so.so_kern
    tls = sb.sb_tls_info
    # kern.ipc.mb_use_ext_pgs is read here, once per call (a job resumed after a
    # wait is a new call): a change takes effect with the next sendfile call; the
    # mbufs already in socket buffers keep their kind and are freed by their own
    # ext_free. A KTLS socket keeps unmapped mbufs whatever the knob says now:
    # ktls_enable_tx checked it when the session was made, and records are framed
    # only on EXT_PGS mbufs.
    unmapped = kern.mb_use_ext_pgs or tls is not None
    max_pgs = howmany(tls.max_frame_len, PAGE_SIZE) if tls is not None else MBUF_PEXT_MAX_PGS
    lowat = max(sb.sb_lowat, sb.sb_hiwat // 2, PAGE_SIZE)
    while not job.done:
        if so.so_error:
            raise OSError(so.so_error, "sendfile: socket error")
        if sb.sb_state & SBS_CANTSENDMORE:
            raise OSError(errno.EPIPE, "sendfile: cannot send more")
        space = sb.sbspace()
        hdrlen = len(job.hdr) if job.hdr is not None else 0
        if space < job.rem + hdrlen and (space <= 0 or space < lowat):
            kern.stats.sb.sbspace_waits += 1
            return SendfileStatus.NEED_SPACE
        mh: Mbuf | None = None
        if job.hdr is not None:
            # m_uiotombuf(hdr_uio, M_WAITOK, space, ...): no more of the headers than
            # sbspace allows; the rest waits for the next pass, as hdr_uio's resid does.
            take = min(hdrlen, max(space, 0))
            try:
                mh = m_uiotombuf(
                    kern,
                    job.hdr[:take],
                    nomap=tls is not None,
                    maxseg=tls.max_frame_len if tls is not None else 0,
                )
            except NoMemory:
                return SendfileStatus.NEED_MEMORY
            space -= take
            job.sbytes += take
            job.hdr = job.hdr[take:] or None
        chunk = min(job.rem, max(space, 0))
        if chunk < job.rem:
            end = trunc_page(job.off + chunk)
            if end > job.off:
                chunk = end - job.off
        m: Mbuf | None = None
        sfio = SfIo(so)
        new_reads: list[PagerRequest] = []
        reserved = 0
        if chunk > 0:
            npages = howmany(chunk + (job.off & PAGE_MASK), PAGE_SIZE)
            if tls is not None:
                # Room for the file pages and, reserved now, their ciphertext.
                npages = min(npages, kern.phys.free_count() // 2)
                if npages <= 0 or not tls.ktls_reserve(npages):
                    kern.phys.vm_wait()
                    npages = 0
                reserved = npages
                chunk = min(chunk, max(0, npages * PAGE_SIZE - (job.off & PAGE_MASK)))
            avail = None if unmapped else kern.sfbufs.available()
            if avail is not None:
                # One sf_buf per page: wire (and read) no more pages than can be
                # mapped now, so a page under I/O is never released half way.
                if avail <= 0:  # a sleeping sf_buf_alloc: counted, then vm/sfbuf wait
                    kern.sfbufs.wanted = True
                    kern.stats.sfbuf.delayed += 1
                    kern.stats.sf.allocwait += 1
                npages = min(npages, max(avail, 0))
            pages = _swapin(kern, job, sfio, npages, new_reads) if npages else []
            if tls is not None and len(pages) < reserved:
                tls.ktls_unreserve(reserved - len(pages))
            if len(pages) < npages:
                chunk = min(chunk, len(pages) * PAGE_SIZE - (job.off & PAGE_MASK))
                if chunk <= 0:
                    chunk = 0
            notready = sfio.nios > 1
            if chunk > 0:
                if unmapped:
                    m = _build_unmapped(kern, pages, job.off, chunk, max_pgs, notready)
                else:
                    m, chunk = _build_mapped(kern, pages, job.off, chunk, notready)
            else:
                _unwire_pages(kern, pages)
        new_io.extend(new_reads)
        if m is None and mh is None:
            kassert(sfio.nios == 1, "sendfile: I/O started for an empty batch")
            return SendfileStatus.NEED_MEMORY
        job.off += chunk
        job.rem -= chunk
        job.sbytes += chunk
        _append_batch(so, sfio, mh, m, chunk)
    return SendfileStatus.DONE


def _append_batch(so: Socket, sfio: SfIo, mh: Mbuf | None, m: Mbuf | None, nbytes: int) -> None:
    """Frame (with TLS) and append one batch; hand it on if no I/O is pending."""
    sb = so.so_snd
    tls = sb.sb_tls_info
    io_pending = sfio.nios > 1
    if tls is not None:
        top = _cat(mh, m)
        assert top is not None
        count = tls.ktls_frame(top, TLS_RLTYPE_APP)
        sb.sbappendstream(top, notready=True)
        if io_pending:
            sfio.m = top
            sfio.npages = count
            so.so_pending += 1
            sfio.nios -= 1
        else:
            tls.ktls_enqueue(so, top, count)
        return
    if mh is not None:
        sb.sbappendstream(mh, notready=False)
    if m is None:
        return
    if io_pending:
        sb.sbappendstream(m, notready=True)
        sfio.m = m
        sfio.npages = _pages_in(m)
        so.so_pending += 1
        sfio.nios -= 1
    else:
        sb.sbappendstream(m, notready=False)


def _pages_in(m: Mbuf | None) -> int:
    n = 0
    while m is not None:
        n += m.ext_pgs.npgs if m.m_flags & M_NOMAP else 1
        m = m.m_next
    return n


def _cat(a: Mbuf | None, b: Mbuf | None) -> Mbuf | None:
    """m_cat: link b after a (unmapped mbufs are linked, never merged)."""
    if a is None:
        return b
    t = a
    while t.m_next is not None:
        t = t.m_next
    t.m_next = b
    return a


def sendfile_iodone(sfio: SfIo) -> None:
    """The last I/O of a batch finished: abort on error, else hand the batch on."""
    so = sfio.so
    so.so_pending -= 1
    assert sfio.m is not None
    if sfio.error:
        # "Protocol abort method would tear down protocol state, free all ready
        # mbufs and detach not ready ones. We will free the mbufs corresponding
        # to this I/O manually": at once, not when the socket closes.
        so.soabort(errno.EIO)
        mb_free_notready(so.so_snd.sbcut_notready(sfio.m, sfio.npages), sfio.npages)
        return
    if sfio.tls is not None:
        sfio.tls.ktls_enqueue(so, sfio.m, sfio.npages)
    else:
        pru_ready(so, sfio.m, sfio.npages)
    so.sowwakeup()


def vm_pager_iodone(kern: Kernel, req: PagerRequest) -> None:
    """Completion of one pager request, on the event-loop thread."""
    for pg in req.pages:
        obj = pg.object
        if obj is not None and obj.busy.get(pg.pindex) is req:
            del obj.busy[pg.pindex]
        if not req.error:
            kern.phys.page_validate(pg)
    if req.rahead:
        for pg in req.pages[-req.rahead :]:
            kern.phys.page_unwire(pg)  # into the cache (or freed, if the read failed)
    kern.stats.vm.vnodein += 1
    kern.stats.vm.vnodepgsin += len(req.pages)
    if req.error:
        kern.stats.sf.io_errors += 1
        if req.changed:
            kern.stats.sf.file_changed += 1
    for sfio in req.waiters:
        if req.error:
            sfio.error = req.error
        sfio.nios -= 1
        if sfio.nios == 0:
            try:
                sendfile_iodone(sfio)
            except Exception:
                # A broken invariant in one connection must not stop the others
                # waiting on this read from completing (nor the event loop).
                log.exception("sendfile_iodone failed; aborting that connection")
                sfio.so.soabort(errno.EIO)
