"""The software crypto backend: seal one TLS record held in an EXT_PGS mbuf.

Models sys/opencrypto/ktls_ocf.c (`ktls_ocf_tls12_gcm_encrypt`,
`ktls_ocf_tls13_gcm_encrypt`) with pyca/cryptography's AEADs as the crypto(9)
driver. Source pages are read through the direct map (views of the page
arena); the ciphertext is written into the destination pages with the same
`first_pg_off` / `last_pg_len` layout, and the tag (TLS 1.3: the encrypted
inner content type, then the tag) into the record's trailer.

Safe on a worker thread: it reads and writes only the pages and the header and
trailer of records the caller has handed over; it allocates and frees nothing
in the page arena (the caller allocated the destination pages).

The copies are in C: `b"".join` gathers the plaintext pages, `encrypt_into`
writes ciphertext and tag into one scratch buffer (cryptography releases the
GIL while it works), and slice assignment scatters it into the pages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ktls.nonce import tls12_aad, tls12_gcm_nonce, tls13_aad, tls13_nonce
from ktls.suites import TlsVersion

if TYPE_CHECKING:
    from ktls.session import KtlsSession
    from mbuf.mbuf import MbufExtPgs
    from mbuf.vm_page import PhysMem


def _page_views(phys: PhysMem, pgs: MbufExtPgs, pas: list[int]) -> list[memoryview]:
    out = []
    for i, pa in enumerate(pas):
        off = pgs.first_pg_off if i == 0 else 0
        out.append(phys.phys_view(pa, off, pgs.page_len(i)))
    return out


def ktls_ocf_encrypt(
    tls: KtlsSession,
    phys: PhysMem,
    pgs: MbufExtPgs,
    dst_pas: list[int] | None,
    scratch: bytearray,
) -> int:
    """Encrypt one framed record. `dst_pas` are fresh anonymous pages for a
    record of file pages (None: encrypt in place). Returns plaintext bytes."""
    src = _page_views(phys, pgs, pgs.pa)
    payload = b"".join(src)
    plen = len(payload)
    aead: AESGCM | ChaCha20Poly1305 = tls.aead
    if tls.version == TlsVersion.TLS13:
        inner = payload + bytes((pgs.record_type,))
        nonce = tls13_nonce(tls.iv, pgs.seqno)
        aad = tls13_aad(plen + tls.tls_tlen)
    else:
        inner = payload
        if tls.explicit_nonce_len:
            nonce = tls12_gcm_nonce(tls.iv, bytes(pgs.hdr[5 : 5 + tls.explicit_nonce_len]))
        else:
            nonce = tls13_nonce(tls.iv, pgs.seqno)
        aad = tls12_aad(pgs.seqno, pgs.record_type, plen)
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
