"""Socket buffers: accounting, readiness, and the hook KTLS hangs on them.

A socket has two: `so_snd`, filled by sosend/sendfile and drained by TCP as
the peer acknowledges, and `so_rcv`, filled by tcp_input (`sbappendstream`
of in-sequence data, in the clusters the NIC received it in) and drained by
the reader (`soreceive`, then `sbdrop`). With KTLS RX (FreeBSD 13) the
receive buffer holds records in two places: `sb_mtls`, encrypted, until a
whole record is there (`sbappend_ktls_rx`, `ktls_check_rx`), then, decrypted
in place, in `sb_mb` behind their TLS_GET_RECORD control messages
(`ktls_detach_record`, `sbappendcontrol`). Deliberate difference: a control
message is kept as a tuple in `sb_rxctl` beside the data, not as an
MT_CONTROL mbuf in the chain.

Theory of operation. Accounting as in the kernel:
  sb_ccc    all bytes in the buffer, ready or not ("claimed", sbused())
  sb_acc    ready bytes up to the first not-ready mbuf (sbavail()); TCP sends only these
  sb_fnrdy  the first not-ready mbuf
  sb_mbcnt  storage charged: MSIZE per mbuf plus ext_size of external storage
            (an unmapped mbuf is charged PAGE_SIZE per page it holds)
  sb_mcnt / sb_ccnt   mbufs / external buffers in the buffer
  sbspace = min(sb_hiwat - sb_ccc, sb_mbmax - sb_mbcnt)

Readiness is counted in pages (`sbready`): an EXT_PGS mbuf becomes ready when
its `nrdy` reaches zero, any other not-ready mbuf counts one.

Models: sys/kern/uipc_sockbuf.c and sys/sys/sockbuf.h (`sbappendstream`,
`sbready`, `sbdrop`, `sbflush`, `sbspace`, `sbsndptr`, `sbappend_ktls_rx`,
`sbappendcontrol`) and `ktls_detach_record` of sys/kern/uipc_ktls.c (FreeBSD
13 and later, read in freebsd-src's current uipc_ktls.c).
"""

from __future__ import annotations

import errno
from collections import deque
from typing import TYPE_CHECKING, Final, Protocol

from mbuf.kassert import kassert
from mbuf.mb_unmapped import mb_unmapped_compress
from mbuf.mbuf import (
    M_BLOCKED,
    M_EXT,
    M_NOMAP,
    M_NOTAVAIL,
    M_NOTREADY,
    M_RDONLY,
    Mbuf,
    m_copym,
    m_free,
    m_getptr,
    mtod,
)
from mbuf.param import MCLBYTES, MLEN, MSIZE, SB_EFFICIENCY, SB_MAX

if TYPE_CHECKING:
    from mbuf.counters import SbStat
    from mbuf.socket import Socket


class KtlsHook(Protocol):
    """What the data path needs from the TLS layer of a socket (implemented in ktls/).

    The kernel calls these functions of uipc_ktls.c directly; the model keeps
    `mbuf` free of imports of `ktls` by holding the session behind this interface.
    """

    max_frame_len: int

    def ktls_frame(self, top: Mbuf, record_type: int) -> int:
        """Turn every unmapped mbuf of the chain into one TLS record; return the
        number of pages to encrypt (the enqueue count)."""
        ...

    def ktls_seq(self, sb: SockBuf, m: Mbuf) -> None:
        """Give each record of the chain the next sequence number of the buffer."""
        ...

    def ktls_enqueue(self, so: Socket, m: Mbuf, page_count: int) -> None:
        """Queue `page_count` pages of records starting at m to an encryption worker."""
        ...

    def ktls_reserve(self, npages: int) -> bool:
        """Set aside frames for the ciphertext of npages file pages about to be
        wired by sendfile; False (nothing reserved) if memory is short."""
        ...

    def ktls_unreserve(self, npages: int) -> None:
        """Give back part of a reservation that sendfile could not use."""
        ...

    def free(self) -> None:
        """ktls_free: the socket is gone."""
        ...


def _sbcompress_into(tail: Mbuf, m: Mbuf) -> bool:
    """Copy m's bytes to the end of `tail` when sbcompress would: tail writable
    (not shared, not unmapped), m at most MCLBYTES / 4 and fitting its free space."""
    if m.m_len > MCLBYTES // 4 or tail.m_flags & (M_NOMAP | M_RDONLY):
        return False
    if tail.m_flags & M_EXT:
        ext = tail.m_ext
        assert ext is not None
        if ext.ext_mref is not tail or ext.ext_count != 1 or ext.ext_buf is None:
            return False
        room = ext.ext_size - tail.m_data - tail.m_len
        buf = ext.ext_buf
    else:
        assert tail.m_dat is not None
        room = MLEN - tail.m_data - tail.m_len
        buf = memoryview(tail.m_dat)
    if m.m_len > room:
        return False
    end = tail.m_data + tail.m_len
    buf[end : end + m.m_len] = mtod(m)
    tail.m_len += m.m_len
    return True


class KtlsRxHook(Protocol):
    """What the receive path needs from a KTLS RX session (implemented in ktls/)."""

    def ktls_check_rx(self, sb: SockBuf) -> None:
        """ktls_check_rx + ktls_decrypt: decrypt every complete record at the head
        of sb_mtls and move it to sb_mb with its record type (sbappendcontrol)."""
        ...

    def ktls_rx_error(self) -> int:
        """0, or the errno a refused record left for the reader (so_error):
        EBADMSG (does not authenticate), EMSGSIZE (too long), EINVAL (bad header)."""
        ...


SBS_CANTSENDMORE: Final = 0x0010  # can't send more data to peer
SBS_CANTRCVMORE: Final = 0x0020  # can't receive more data from peer (its FIN arrived)


class SockBuf:
    __slots__ = (
        "sb_acc",
        "sb_ccc",
        "sb_ccnt",
        "sb_fnrdy",
        "sb_hiwat",
        "sb_lowat",
        "sb_mb",
        "sb_mbcnt",
        "sb_mbmax",
        "sb_mbtail",
        "sb_mcnt",
        "sb_mtls",
        "sb_mtlstail",
        "sb_rxctl",
        "sb_sndptr",
        "sb_sndptroff",
        "sb_state",
        "sb_tls_info",
        "sb_tls_rx",
        "sb_tls_seqno",
        "sb_tlscc",
        "stats",
    )

    def __init__(self, hiwat: int, stats: SbStat) -> None:
        self.sb_mb: Mbuf | None = None
        self.sb_mbtail: Mbuf | None = None
        self.sb_fnrdy: Mbuf | None = None
        # sbsndptr's cache: the mbuf tcp_output last sent from and its offset.
        self.sb_sndptr: Mbuf | None = None
        self.sb_sndptroff = 0
        self.sb_ccc = 0
        self.sb_acc = 0
        self.sb_mbcnt = 0
        self.sb_mcnt = 0
        self.sb_ccnt = 0
        self.sb_state = 0
        self.sb_tls_info: KtlsHook | None = None
        self.sb_tls_seqno = 0
        # KTLS RX (so_rcv only): records wait encrypted in sb_mtls (sb_tlscc bytes)
        # until whole; decrypted ones go to sb_mb with their TLS_GET_RECORD control
        # message, kept here as (type, version major, minor, length) in order.
        self.sb_tls_rx: KtlsRxHook | None = None
        self.sb_mtls: Mbuf | None = None
        self.sb_mtlstail: Mbuf | None = None
        self.sb_tlscc = 0
        self.sb_rxctl: deque[tuple[int, int, int, int]] = deque()
        self.stats = stats
        self.sb_hiwat = 0
        self.sb_mbmax = 0
        self.sb_lowat = 0
        self.sbreserve(hiwat)

    def sbreserve(self, cc: int) -> None:
        """sbreserve: set the high-water mark and the storage limit."""
        if cc <= 0 or cc > SB_MAX:
            raise ValueError(f"socket buffer size {cc} outside 1..{SB_MAX}")
        self.sb_hiwat = cc
        self.sb_mbmax = min(cc * SB_EFFICIENCY, SB_MAX)
        self.sb_lowat = min(self.sb_lowat or 2048, cc)

    def sbspace(self) -> int:
        if self.sb_state & SBS_CANTSENDMORE:
            return 0
        return min(self.sb_hiwat - self.sb_ccc, self.sb_mbmax - self.sb_mbcnt)

    def sbavail(self) -> int:
        return self.sb_acc

    def sbused(self) -> int:
        return self.sb_ccc

    # -- accounting ----------------------------------------------------------

    def sballoc(self, m: Mbuf) -> None:
        self.sb_ccc += m.m_len
        if self.sb_fnrdy is None:
            if m.m_flags & M_NOTREADY:
                self.sb_fnrdy = m
            else:
                self.sb_acc += m.m_len
        else:
            m.m_flags |= M_BLOCKED
        self._sballoc_storage(m)

    def _sballoc_storage(self, m: Mbuf) -> None:
        self.sb_mbcnt += MSIZE
        self.sb_mcnt += 1
        if m.m_flags & M_EXT:
            assert m.m_ext is not None
            self.sb_mbcnt += m.m_ext.ext_size
            self.sb_ccnt += 1

    def sbfree(self, m: Mbuf) -> None:
        self.sb_ccc -= m.m_len
        if not m.m_flags & M_NOTAVAIL:
            self.sb_acc -= m.m_len
        if self.sb_fnrdy is m:
            self.sb_fnrdy = None
        self._sbfree_storage(m)

    def _sbfree_storage(self, m: Mbuf) -> None:
        self.sb_mbcnt -= MSIZE
        self.sb_mcnt -= 1
        if m.m_flags & M_EXT:
            assert m.m_ext is not None
            self.sb_mbcnt -= m.m_ext.ext_size
            self.sb_ccnt -= 1

    def _peaks(self) -> None:
        st = self.stats
        if self.sb_mcnt > st.mbufs_peak:
            st.mbufs_peak = self.sb_mcnt
        if self.sb_mbcnt > st.mbcnt_peak:
            st.mbcnt_peak = self.sb_mbcnt
        if self.sb_ccc > st.ccc_peak:
            st.ccc_peak = self.sb_ccc

    # -- appending -----------------------------------------------------------

    def sbappendstream(self, m: Mbuf, notready: bool) -> None:
        """sbappendstream_locked: link a chain at the tail. With a TLS session the
        records get their sequence numbers here (ktls_seq), in wire order."""
        if self.sb_tls_info is not None:
            self.sb_tls_info.ktls_seq(self, m)
        n: Mbuf | None = m
        last = m
        while n is not None:
            if notready:
                n.m_flags |= M_NOTREADY  # m_demote(m, 1, M_NOTREADY)
            if (
                not notready
                and n.m_flags & M_NOMAP
                and n.m_len <= MLEN
                and self.sb_tls_info is None
            ):
                mb_unmapped_compress(n)  # sbcompress: no socket-buffer bloat from tiny tails
            self.sballoc(n)
            last = n
            n = n.m_next
        if self.sb_mbtail is None:
            self.sb_mb = m
        else:
            self.sb_mbtail.m_next = m
        self.sb_mbtail = last
        self._peaks()

    def sbappend_ktls_rx(self, m: Mbuf) -> None:
        """sbappend_ktls_rx: in-sequence data of a KTLS RX socket goes to sb_mtls,
        counted in sb_ccc (it takes room) but not in sb_acc (nobody may read it).
        As sbcompress_ktls_rx, a small segment is copied into the free space of
        the tail mbuf (if that is writable) rather than linked with its own
        cluster: a record trickling in a few bytes per segment would otherwise
        charge a cluster per segment and close the window before it is whole."""
        n: Mbuf | None = m
        while n is not None:
            nxt = n.m_next
            n.m_next = None
            self.sb_ccc += n.m_len
            self.sb_tlscc += n.m_len
            tail = self.sb_mtlstail
            if tail is not None and _sbcompress_into(tail, n):
                m_free(n)  # its bytes went into the tail's free space
            else:
                self._sballoc_storage(n)
                if tail is None:
                    self.sb_mtls = n
                else:
                    tail.m_next = n
                self.sb_mtlstail = n
            n = nxt
        self._peaks()

    def ktls_detach_record(self, length: int) -> Mbuf:
        """ktls_detach_record: take the first `length` bytes of sb_mtls out of the
        buffer (an mbuf the record ends inside is split, its tail sharing the
        storage). The caller decrypts them and hands them back (sbappendcontrol)."""
        kassert(0 < length <= self.sb_tlscc, "ktls_detach_record: %s of %s", length, self.sb_tlscc)
        top = self.sb_mtls
        assert top is not None
        m, last = m_getptr(top, length - 1)  # the mbuf holding the record's last byte
        left = last + 1
        if m.m_len > left:
            rest = m_copym(m, left, m.m_len - left)  # shares a cluster (mb_dupcl)
            rest.m_next = m.m_next
            m.m_len = left
            self._sballoc_storage(rest)
            m.m_next = rest
            if self.sb_mtlstail is m:
                self.sb_mtlstail = rest
        self.sb_mtls = m.m_next
        if self.sb_mtls is None:
            self.sb_mtlstail = None
        m.m_next = None
        n: Mbuf | None = top
        while n is not None:
            self._sbfree_storage(n)
            n = n.m_next
        self.sb_tlscc -= length
        self.sb_ccc -= length
        return top

    def sbappendcontrol(self, data: Mbuf | None, tgr: tuple[int, int, int, int]) -> None:
        """sbappendcontrol: a decrypted record (None: empty) and its TLS_GET_RECORD
        control message (record type, version, plaintext length), ready to read."""
        self.sb_rxctl.append(tgr)
        if data is not None:
            self.sbappendstream(data, notready=False)

    def sbready(self, m: Mbuf, count: int) -> int:
        """sbready: `count` pages starting at m became ready. Returns 0, or
        EINPROGRESS when data ahead of m (or m itself) is still not ready."""
        kassert(m.m_flags & M_NOTREADY, "sbready: %r is ready already", m)
        blocker = M_BLOCKED if self.sb_fnrdy is m else 0
        m0 = m
        cur: Mbuf | None = m
        while cur is not None and count > 0:
            if cur.m_flags & M_NOMAP and cur.ext_pgs.nrdy:
                pgs = cur.ext_pgs
                if count < pgs.nrdy:
                    pgs.nrdy -= count
                    count = 0
                    break
                count -= pgs.nrdy
                pgs.nrdy = 0
            else:
                count -= 1
            cur.m_flags &= ~(M_NOTREADY | blocker)
            if blocker:
                self.sb_acc += cur.m_len
            cur = cur.m_next
        if cur is m0:
            # Only some pages of m itself became ready: no progress at all.
            return errno.EINPROGRESS
        if not blocker:
            self._sbready_compress(m0, cur)
            return errno.EINPROGRESS
        while cur is not None and not cur.m_flags & M_NOTREADY:
            cur.m_flags &= ~M_BLOCKED
            self.sb_acc += cur.m_len
            cur = cur.m_next
        self.sb_fnrdy = cur
        self._sbready_compress(m0, cur)
        return 0

    def _sbready_compress(self, m: Mbuf | None, end: Mbuf | None) -> None:
        """sbready_compress: small unmapped, unencrypted-session-free mbufs that just
        became ready are copied inline so they are not charged whole pages."""
        while m is not None and m is not end:
            if (
                m.m_flags & M_NOMAP
                and not m.m_flags & M_NOTREADY
                and m.m_len <= MLEN
                and m.ext_pgs.tls is None
            ):
                assert m.m_ext is not None
                ext_size = m.m_ext.ext_size
                if mb_unmapped_compress(m):
                    self.sb_mbcnt -= ext_size
                    self.sb_ccnt -= 1
            m = m.m_next

    # -- removing ------------------------------------------------------------

    def sbdrop(self, length: int) -> None:
        """sbdrop: free `length` ready bytes from the head (the peer has them)."""
        kassert(0 <= length <= self.sb_acc, "sbdrop: %s > sb_acc %s", length, self.sb_acc)
        dropped = length
        m = self.sb_mb
        while length:
            assert m is not None
            if m.m_len > length:
                m.m_len -= length
                m.m_data += length
                self.sb_ccc -= length
                self.sb_acc -= length
                break
            length -= m.m_len
            if m is self.sb_sndptr:
                self.sb_sndptr = None
            self.sbfree(m)
            m = m_free(m)
        while m is not None and m.m_len == 0 and not m.m_flags & M_NOTREADY:
            if m is self.sb_sndptr:
                self.sb_sndptr = None
            self.sbfree(m)
            m = m_free(m)
        self.sb_mb = m
        if m is None:
            self.sb_mbtail = None
        if self.sb_sndptr is not None:
            self.sb_sndptroff = max(0, self.sb_sndptroff - dropped)

    def sbcut_notready(self, m: Mbuf, count: int) -> Mbuf:
        """Unlink the not-ready batch that starts at m and covers `count` pages
        (accounting removed; pru_abort's sbcut detaches not-ready mbufs the same
        way) and return it for mb_free_notready. Ready data stays until close."""
        prev: Mbuf | None = None
        n = self.sb_mb
        while n is not None and n is not m:
            prev = n
            n = n.m_next
        kassert(n is m, "sbcut_notready: %r is not in the buffer", m)
        last = m
        cur: Mbuf | None = m
        while cur is not None and count > 0:
            kassert(cur.m_flags & M_NOTREADY, "sbcut_notready: %r is ready", cur)
            count -= cur.ext_pgs.nrdy if cur.m_flags & M_NOMAP else 1
            self.sbfree(cur)
            last = cur
            cur = cur.m_next
        kassert(count == 0, "sbcut_notready: batch short by %s pages", count)
        last.m_next = None
        if prev is None:
            self.sb_mb = cur
        else:
            prev.m_next = cur
        if cur is None:
            self.sb_mbtail = prev
        fnrdy = self.sb_mb
        while fnrdy is not None and not fnrdy.m_flags & M_NOTREADY:
            fnrdy = fnrdy.m_next
        self.sb_fnrdy = fnrdy
        self.sb_sndptr = None  # walk again from the head
        self.sb_sndptroff = 0
        return m

    def sbflush(self) -> None:
        """Free everything, ready or not (connection closed or aborted)."""
        m = self.sb_mb
        while m is not None:
            self.sbfree(m)
            m = m_free(m)
        self.sb_mb = self.sb_mbtail = self.sb_fnrdy = self.sb_sndptr = None
        m = self.sb_mtls
        while m is not None:
            self.sb_ccc -= m.m_len
            self._sbfree_storage(m)
            m = m_free(m)
        self.sb_mtls = self.sb_mtlstail = None
        self.sb_tlscc = 0
        self.sb_rxctl.clear()
        kassert(self.sb_ccc == 0 and self.sb_mbcnt == 0, "sbflush: accounting left over")

    def sbsndptr(self, off: int) -> tuple[Mbuf, int, int]:
        """sbsndptr_noadv + sbsndptr_adv: the mbuf holding byte `off` and the offset
        within it, walking on from where the last call stopped (sb_sndptr), as the
        kernel does, not from the head. Returns (mbuf, offset, mbufs walked)."""
        m = self.sb_sndptr
        base = self.sb_sndptroff
        if m is None or base > off:
            m = self.sb_mb
            base = 0
        walked = 0
        while m is not None and off - base >= m.m_len:
            base += m.m_len
            m = m.m_next
            walked += 1
        kassert(m is not None, "sbsndptr: offset beyond sb_ccc %s", self.sb_ccc)
        assert m is not None
        self.sb_sndptr = m
        self.sb_sndptroff = base
        return m, off - base, walked
