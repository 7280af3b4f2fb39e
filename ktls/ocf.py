"""The software crypto backend: seal one TLS record held in an EXT_PGS mbuf.

Theory of operation. pyca/cryptography's AEADs are the crypto(9) driver.
Source pages are read through the direct map (views of the page
arena); the ciphertext is written into the destination pages with the same
`first_pg_off` / `last_pg_len` layout, and the tag (TLS 1.3: the encrypted
inner content type, then the tag) into the record's trailer.

Safe on a worker thread: it reads and writes only the pages and the header and
trailer of records the caller has handed over; it allocates and frees nothing
in the page arena (the caller allocated the destination pages).

The copies are in C: `b"".join` gathers the plaintext pages, `encrypt_into`
writes ciphertext and tag into one scratch buffer (cryptography releases the
GIL while it works), and slice assignment scatters it into the pages.

Models: sys/opencrypto/ktls_ocf.c (`ktls_ocf_tls12_gcm_encrypt`,
`ktls_ocf_tls13_gcm_encrypt`).

Deliberate differences: ktls_encrypt builds one iovec entry per page; here
physically contiguous pages are one entry (`pages_iov`), which changes no byte.
The TLS 1.3 additional data is the record header itself (RFC 8446 5.2), as in
ktls_ocf.c; it is checked, type, version and length, against the header
`tls13_aad` builds for the payload.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ktls.nonce import SEQNO_LIMIT, tls12_aad, tls12_gcm_nonce, tls13_aad, tls13_nonce_int
from ktls.suites import TlsVersion
from mbuf.ktls_hdr import TLS_HEADER_LEN
from mbuf.mbuf import pages_iov

if TYPE_CHECKING:
    from ktls.session import KtlsSession
    from mbuf.mbuf import MbufExtPgs
    from mbuf.vm_page import PhysMem


def _page_views(phys: PhysMem, pgs: MbufExtPgs, pas: list[int]) -> list[memoryview]:
    """The record's payload in pages `pas` (its own or its destination pages, laid
    out alike): one view per physically contiguous run."""
    out: list[memoryview] = []
    pages_iov(phys.dmap, pgs, pas, 0, pgs.page_bytes(), out)
    return out


_TYPE_BYTE = [bytes((t,)) for t in range(256)]


def ktls_ocf_encrypt(
    tls: KtlsSession,
    phys: PhysMem,
    pgs: MbufExtPgs,
    dst_pas: list[int] | None,
    scratch: bytearray,
) -> int:
    """Encrypt one framed record. `dst_pas` are fresh anonymous pages for a
    record of file pages (None: encrypt in place). Returns plaintext bytes."""
    seqno = pgs.seqno
    if not 0 <= seqno < SEQNO_LIMIT:  # never wraps: the batch fails (EIO)
        raise ValueError(f"ktls: record sequence number {seqno} is beyond 2**64 - 1")
    src = _page_views(phys, pgs, pgs.pa)
    aead: AESGCM | ChaCha20Poly1305 = tls.aead
    if tls.version == TlsVersion.TLS13:
        src.append(memoryview(_TYPE_BYTE[pgs.record_type]))
        inner: bytes | memoryview = b"".join(src)
        src.pop()
        plen = len(inner) - 1
        nonce = tls13_nonce_int(tls.iv_int, seqno)
        # The additional data is the record header ktls_frame wrote (RFC 8446 5.2).
        aad = tls13_aad(plen + tls.tls_tlen)
        if pgs.hdr[:TLS_HEADER_LEN] != aad:
            hdr = bytes(pgs.hdr[:TLS_HEADER_LEN]).hex()
            raise ValueError(f"ktls: record header {hdr} does not match {plen} bytes")
    else:
        inner = src[0] if len(src) == 1 else b"".join(src)
        plen = len(inner)
        if tls.explicit_nonce_len:  # RFC 5288 3: salt, then the explicit part in the header
            nonce = tls12_gcm_nonce(tls.iv, pgs.hdr[TLS_HEADER_LEN : tls.tls_hlen])
        else:  # RFC 7905 2
            nonce = tls13_nonce_int(tls.iv_int, seqno)
        aad = tls12_aad(seqno, pgs.record_type, plen)
    need = len(inner) + 16
    if len(scratch) < need:
        scratch.extend(bytes(need - len(scratch)))
    out = memoryview(scratch)[:need]
    aead.encrypt_into(nonce, inner, aad, out)
    dst = src if dst_pas is None else _page_views(phys, pgs, dst_pas)
    pos = 0
    for v in dst:
        n = len(v)
        v[:] = out[pos : pos + n]
        pos += n
    tail = need - pos  # TLS 1.3: 1 + 16; TLS 1.2: 16
    pgs.trail[:tail] = out[pos:need]
    return plen
