"""KTLS transmit sessions: framing, sequence numbers, encryption batches.

Theory of operation. `KtlsSession` is the kernel's `struct ktls_session` for
one socket in software mode, created from the keys OpenSSL negotiated (what
`TCP_TXTLS_ENABLE` hands the kernel, including `rec_seq`, the next record
sequence number). It implements the `KtlsHook` interface that `mbuf` calls:

* `ktls_frame`: each unmapped mbuf of a chain becomes exactly one record:
  `hdr_len`/`trail_len` set from the cipher (TLS 1.3: 5 and 17; TLS 1.2 GCM:
  13 and 16; TLS 1.2 ChaCha20: 5 and 16), the 5-byte header written, `tls`
  set (meaning "not yet encrypted"), the mbuf marked `M_NOTREADY` with
  `nrdy = npgs`. Returns the page count to enqueue.
* `ktls_seq`: called as records enter the socket buffer; numbers them in wire
  order (and writes the TLS 1.2 GCM explicit nonce).
* `ktls_enqueue`: gathers the records covering `page_count` pages into one work
  item, allocates fresh anonymous destination pages for records of file pages
  (file pages are never written), and hands the item to a worker. On
  completion, on the event-loop thread, each record releases its file pages,
  takes the new ones (`MBUF_PEXT_FLAG_ANON`, `mb_free_mext_pgs`), drops `tls`,
  and the batch becomes ready (`pru_ready`). A failure aborts the connection
  with EIO, as `ktls_encrypt` does.

Ciphertext pages never run out at enqueue time: sendfile reserves one frame
per file page when it wires it (`ktls_reserve`), and the batch takes them here.

Models: sys/kern/uipc_ktls.c (`ktls_frame`, `ktls_seq`, `ktls_enqueue`,
`ktls_encrypt`, `ktls_enable_tx`'s ENXIO without ext_pgs) and sys/sys/ktls.h
(`struct ktls_session`, `ktls_free`).

Deliberate differences: the TLS 1.2 GCM explicit nonce is the sequence number,
as OpenSSL does; the 2019 kernel used a random counter. sendfile reserves the
ciphertext frames when it wires the file pages; the kernel allocates them at
encryption time. A TLS 1.3 KeyUpdate installs new send keys (`successor`); the
2019 kernel installs keys once.
"""

from __future__ import annotations

import errno
import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from mypy_extensions import mypyc_attr

from ktls.nonce import SEQNO_LIMIT, tls13_iv_int
from ktls.ocf import ktls_ocf_encrypt
from ktls.suites import CipherSuite, TlsVersion
from ktls.workers import KtlsWorkers
from mbuf.kassert import kassert, kpanic
from mbuf.ktls_hdr import (
    TLS_HEADER_LEN,
    TLS_LEGACY_RECORD_VERSION,
    TLS_MAX_MSG_SIZE_V10_2,
    TLS_RLTYPE_APP,
)
from mbuf.mb_unmapped import mb_free_mext_pgs
from mbuf.mbuf import M_NOTREADY, MBUF_PEXT_FLAG_ANON, Mbuf, mb_free_notready
from mbuf.param import PAGE_SIZE
from mbuf.socket import Socket, pru_ready

if TYPE_CHECKING:
    from mbuf.kern import Kernel
    from mbuf.mbuf import MbufExtPgs
    from mbuf.sockbuf import SockBuf
    from mbuf.vm_page import PhysMem

    # ktls_ocf_encrypt: (session, memory, record, destination pages, scratch) -> plaintext bytes
    SwEncrypt = Callable[["KtlsSession", PhysMem, MbufExtPgs, list[int] | None, bytearray], int]

_TLS_HEADER = struct.Struct(">BHH")  # struct tls_record_layer: type, version, length

log = logging.getLogger("nomapd.ktls")


# Tests spy on the real session (SpyKtls in tests/mbuf/test_stateful.py and
# test_checklist.py: the session itself, observed as it frames), so interpreted
# subclasses are allowed; the data path calls it through the KtlsHook protocol anyway.
@mypyc_attr(allow_interpreted_subclasses=True)
class KtlsSession:
    __slots__ = (
        "aead",
        "bytes_encrypted",
        "explicit_nonce_len",
        "iv",
        "iv_int",
        "kern",
        "max_frame_len",
        "records_encrypted",
        "reserved",
        "suite",
        "sw_encrypt",
        "tls_hlen",
        "tls_tlen",
        "version",
        "workers",
        "wq_index",
    )

    def __init__(
        self,
        kern: Kernel,
        workers: KtlsWorkers,
        suite: CipherSuite,
        key: bytes,
        iv: bytes,
        *,
        max_frame_len: int = TLS_MAX_MSG_SIZE_V10_2,
    ) -> None:
        if not kern.mb_use_ext_pgs:
            # ktls_enable_tx: "TLS requires ext pgs" -- records are EXT_PGS mbufs.
            raise OSError(errno.ENXIO, "ktls_enable_tx: kern.ipc.mb_use_ext_pgs is 0")
        if len(key) != suite.key_len:
            raise ValueError(f"{suite.openssl_name}: key of {len(key)} bytes, need {suite.key_len}")
        if len(iv) != suite.fixed_iv_len:
            raise ValueError(
                f"{suite.openssl_name}: iv of {len(iv)} bytes, need {suite.fixed_iv_len}"
            )
        if not 0 < max_frame_len <= TLS_MAX_MSG_SIZE_V10_2 or max_frame_len % PAGE_SIZE:
            # sendfile cuts a record every max_frame_len / PAGE_SIZE pages
            # (num_pages(max_frame_len) in kern_sendfile.c), so only whole pages work.
            raise ValueError(f"max_frame_len {max_frame_len}: need a multiple of 4096 up to 16384")
        self.kern = kern
        self.workers = workers
        self.suite = suite
        self.version = suite.version
        self.aead: AESGCM | ChaCha20Poly1305 = suite.aead(key)
        self.iv = iv
        self.explicit_nonce_len = suite.explicit_nonce_len
        # The int each record's nonce is XORed from; TLS 1.2 GCM's salt has none.
        self.iv_int = 0 if self.explicit_nonce_len else tls13_iv_int(iv)
        self.tls_hlen = suite.tls_hlen
        self.tls_tlen = suite.tls_tlen
        self.max_frame_len = max_frame_len
        self.wq_index = workers.pick_queue()
        self.reserved = 0  # frames set aside for ciphertext of wired file pages
        self.records_encrypted = 0  # per-session counters
        self.bytes_encrypted = 0
        # struct ktls_session's sw_encrypt, set by ktls_ocf_try: the crypto backend,
        # called per record; tests put a failing or recording one on a session.
        self.sw_encrypt: SwEncrypt = ktls_ocf_encrypt
        st = kern.stats.ktls
        st.sessions_active += 1
        st.sessions_total += 1

    def successor(self, key: bytes, iv: bytes) -> KtlsSession:
        """The session a TLS 1.3 KeyUpdate installs: same cipher and worker queue,
        new keys; the caller numbers from 0. A deliberate extension: the 2019
        kernel installs keys once (a second TCP_TXTLS_ENABLE fails with
        EALREADY in `ktls_enable_tx`), so a real KTLS socket could not answer a
        client's KeyUpdate(update_requested) and had to close.
        Records already framed keep this session (their `tls`) until encrypted.
        The per-session counters carry on, so they count for the connection."""
        kassert(self.reserved == 0, "ktls: new send keys while sendfile holds %d frames",
                self.reserved)  # fmt: skip
        new = KtlsSession(
            self.kern, self.workers, self.suite, key, iv, max_frame_len=self.max_frame_len
        )
        new.wq_index = self.wq_index  # one connection's records stay in order on one queue
        new.records_encrypted = self.records_encrypted
        new.bytes_encrypted = self.bytes_encrypted
        self.free()
        return new

    def free(self) -> None:
        """ktls_free: the socket is closed."""
        if self.reserved:
            self.kern.phys.unreserve(self.reserved)
            self.reserved = 0
        self.kern.stats.ktls.sessions_active -= 1

    def ktls_reserve(self, npages: int) -> bool:
        if not self.kern.phys.reserve(npages):
            return False
        self.reserved += npages
        return True

    def ktls_unreserve(self, npages: int) -> None:
        kassert(npages <= self.reserved, "ktls_unreserve: %s > %s", npages, self.reserved)
        self.reserved -= npages
        self.kern.phys.unreserve(npages)

    # -- KtlsHook -------------------------------------------------------------

    def ktls_frame(self, top: Mbuf, record_type: int) -> int:
        hlen = self.tls_hlen
        tlen = self.tls_tlen
        tls13 = self.version == TlsVersion.TLS13
        outer = TLS_RLTYPE_APP if tls13 else record_type
        enq = 0
        m: Mbuf | None = top
        nrec = 0
        max_len = self.max_frame_len
        while m is not None:
            pgs = m.ext_pgs  # MBUF_EXT_PGS_ASSERT: a mapped mbuf in a TLS chain trips it
            if m.m_len > max_len or m.m_data:
                kpanic("ktls_frame: record of %d bytes", m.m_len)
            pgs.hdr_len = hlen
            pgs.trail_len = tlen
            m.m_len += hlen + tlen
            pgs.tls = self
            pgs.record_type = record_type
            _TLS_HEADER.pack_into(
                pgs.hdr, 0, outer, TLS_LEGACY_RECORD_VERSION, m.m_len - TLS_HEADER_LEN
            )
            m.m_flags |= M_NOTREADY
            pgs.nrdy = pgs.npgs
            enq += pgs.npgs
            nrec += 1
            m = m.m_next
        self.kern.stats.ktls.records_framed += nrec
        return enq

    def ktls_seq(self, sb: SockBuf, m: Mbuf) -> None:
        explicit = self.explicit_nonce_len
        n: Mbuf | None = m
        while n is not None:
            pgs = n.ext_pgs
            pgs.seqno = sb.sb_tls_seqno
            sb.sb_tls_seqno += 1
            if explicit and pgs.seqno < SEQNO_LIMIT:
                # Beyond 2^64 - 1 the nonce stays unwritten; ktls_ocf_encrypt
                # refuses the seqno and the batch fails with EIO (never wraps).
                pgs.hdr[TLS_HEADER_LEN : TLS_HEADER_LEN + explicit] = pgs.seqno.to_bytes(
                    explicit, "big"
                )
            n = n.m_next

    def ktls_enqueue(self, so: Socket, m: Mbuf, page_count: int) -> None:
        records: list[Mbuf] = []
        pages = 0
        n: Mbuf | None = m
        while n is not None and pages < page_count:
            pgs = n.ext_pgs
            if not n.m_flags & M_NOTREADY or pgs.tls is not self:
                kpanic("ktls_enqueue: not a fresh record")
            records.append(n)
            pages += pgs.npgs
            n = n.m_next
        kassert(pages == page_count, "ktls_enqueue: %s pages, expected %s", pages, page_count)
        batch = _EncryptBatch(self, so, records, page_count)
        # sendfile reserved the ciphertext frames when it wired the file pages, and
        # sosend's anonymous pages are encrypted in place: this cannot come up short.
        kassert(batch.alloc_pages(), "ktls_enqueue: ciphertext pages were not reserved")
        so.so_pending += 1
        st = self.kern.stats.ktls
        st.tasks_active += 1
        st.enqueued_pages += page_count
        self.workers.submit(self.wq_index, batch)


class _EncryptBatch:
    """One ktls_enqueue work item: consecutive records of one socket."""

    __slots__ = ("dst", "error", "npages", "plain_bytes", "records", "so", "tls")

    def __init__(self, tls: KtlsSession, so: Socket, records: list[Mbuf], npages: int) -> None:
        self.tls = tls
        self.so = so
        self.records = records
        self.npages = npages
        self.dst: list[list[int] | None] = []
        self.error: Exception | None = None
        self.plain_bytes = 0

    def alloc_pages(self) -> bool:
        """Destination pages for records of file pages, from the frames sendfile
        reserved for this session; False (nothing taken) if they are not there."""
        tls = self.tls
        phys = tls.kern.phys
        need = sum(
            r.ext_pgs.npgs for r in self.records if not r.ext_pgs.flags & MBUF_PEXT_FLAG_ANON
        )
        from_reserve = min(need, tls.reserved)
        if phys.free_count() < need - from_reserve:
            return False
        tls.reserved -= from_reserve
        self.dst = []
        for r in self.records:
            pgs = r.ext_pgs
            if pgs.flags & MBUF_PEXT_FLAG_ANON:
                self.dst.append(None)
                continue
            n = pgs.npgs
            k = min(n, max(from_reserve, 0))
            pas = phys.pages_alloc_anon(k, reserved=True) if k else []
            if k < n:
                rest = phys.pages_alloc_anon(n - k)
                assert pas is not None and rest is not None
                pas += rest
            from_reserve -= n
            assert pas is not None
            self.dst.append(pas)
        return True

    def run(self) -> None:
        """ktls_encrypt's crypto, on a worker thread."""
        scratch = bytearray()
        phys = self.tls.kern.phys
        try:
            for r, dst in zip(self.records, self.dst, strict=True):
                self.plain_bytes += self.tls.sw_encrypt(self.tls, phys, r.ext_pgs, dst, scratch)
        except Exception as e:  # reported on the loop thread, never lost
            self.error = e

    def complete(self) -> None:
        """The rest of ktls_encrypt, on the event-loop thread. Never raises: it runs
        as a callback of the event loop, where an exception would stop the whole
        server, so a failure here (a broken invariant) aborts this socket only."""
        tls = self.tls
        so = self.so
        st = tls.kern.stats.ktls
        st.tasks_active -= 1
        so.so_pending -= 1
        try:
            if self.error is not None:
                self._fail()
            else:
                self._install()
        except Exception:
            log.exception("ktls: completing an encryption batch failed; aborting the connection")
            st.failed_crypto += 1
            so.soabort(errno.EIO)
            self._free_unused_dst()
        so.sowwakeup()

    def _free_unused_dst(self) -> None:
        """Ciphertext pages of records that never took them (still `tls`) go back."""
        phys = self.tls.kern.phys
        for r, dst in zip(self.records, self.dst, strict=False):
            if dst and r.ext_pgs.tls is not None and r.ext_pgs.pa is not dst:
                phys.pages_free_anon(dst)
        self.dst = []

    def _fail(self) -> None:
        phys = self.tls.kern.phys
        self.tls.kern.stats.ktls.failed_crypto += 1
        for dst in self.dst:
            if dst:
                phys.pages_free_anon(dst)
        self.dst = []
        # ktls_encrypt's failure path: pru_abort, so_error = EIO and
        # mb_free_notready(top, npages) -- the batch is freed now, not at close.
        so = self.so
        so.soabort(errno.EIO)
        mb_free_notready(so.so_snd.sbcut_notready(self.records[0], self.npages), self.npages)

    def _install(self) -> None:
        """Swap each record's file pages for its ciphertext pages; mark the batch ready."""
        st = self.tls.kern.stats.ktls
        for r, dst in zip(self.records, self.dst, strict=True):
            pgs = r.ext_pgs
            if dst is not None:
                ext = r.m_ext
                assert ext is not None and ext.ext_free is not None
                if ext.ext_mref is not r:
                    kpanic("ktls: record is not its storage's owner")
                ext.ext_free(r)  # releases the file pages
                pgs.pa = dst
                pgs.flags |= MBUF_PEXT_FLAG_ANON
                ext.ext_free = mb_free_mext_pgs
            pgs.tls = None
        st.records_encrypted += len(self.records)
        st.bytes_encrypted += self.plain_bytes
        self.tls.records_encrypted += len(self.records)
        self.tls.bytes_encrypted += self.plain_bytes
        pru_ready(self.so, self.records[0], self.npages)
