# Theory of operation
# -------------------
# The per-record inputs to the AEAD besides key and payload: the nonce and the
# additional authenticated data.  In FreeBSD these are built for every record
# by the software backend (sys/opencrypto/ktls_ocf.c: ktls_ocf_tls12_aead_encrypt,
# ktls_ocf_tls13_aead_encrypt) from the session's IV and the record's sequence
# number, which ktls_frame()/ktls_seq() (sys/kern/uipc_ktls.c) stamp on the
# mbuf.  Here they are pure functions of (iv, seqno, lengths) so the record
# path can call them once per record and tests can pin them against RFC text.
#
#   TLS 1.3 (RFC 8446 5.3), and TLS 1.2 ChaCha20-Poly1305 (RFC 7905 2):
#       nonce = iv XOR (64-bit big-endian seqno, left-padded to 12 bytes)
#   TLS 1.2 AES-GCM (RFC 5288 3):
#       nonce = salt(4) || explicit_nonce(8); the explicit part travels in the
#       record.  Like OpenSSL and FreeBSD, callers use the sequence number as
#       the explicit nonce, which keeps it unique per key.
#   TLS 1.3 AAD (RFC 8446 5.2): the record header, 17 03 03 len(2), with len
#       the TLSCiphertext length (payload + content type + padding + tag).
#   TLS 1.2 AAD (RFC 5246 6.2.3.3): seq_num(8) type(1) 03 03 len(2), with len
#       the plaintext length.
#
# These run per record, so they stay arithmetic on ints (int.from_bytes, XOR,
# to_bytes, struct) after a few cheap range checks - no per-byte Python loops.
# Every check raises ValueError/TypeError; an out-of-range sequence number in
# particular must never wrap silently, because a repeated nonce breaks GCM.
from __future__ import annotations

import struct
from typing import Final

from mbuf.ktls_hdr import (
    TLS13_MAX_CIPHERTEXT_LEN,
    TLS_LEGACY_RECORD_VERSION,
    TLS_MAX_MSG_SIZE_V10_2,
    TLS_RLTYPE_APP,
)

__all__ = [
    "SEQNO_LIMIT",
    "TLS12_EXPLICIT_NONCE_LEN",
    "TLS12_GCM_SALT_LEN",
    "TLS13_IV_LEN",
    "tls12_aad",
    "tls12_gcm_nonce",
    "tls13_aad",
    "tls13_nonce",
]

# RFC 8446 5.3: sequence numbers are 64-bit and MUST NOT wrap.
SEQNO_LIMIT: Final = 1 << 64
# RFC 8446 5.3: iv_length = max(8, N_MIN); both AEADs here have N_MIN = 12.
TLS13_IV_LEN: Final = 12
# RFC 5288 3: GCMNonce = salt[4] || nonce_explicit[8].
TLS12_GCM_SALT_LEN: Final = 4
TLS12_EXPLICIT_NONCE_LEN: Final = 8
_TLS13_AAD: Final = struct.Struct(">BHH")  # opaque_type, legacy_record_version, length
_TLS12_AAD: Final = struct.Struct(">QBHH")  # seq_num, type, version, length


def _check_seqno(seqno: object) -> int:
    if isinstance(seqno, bool) or not isinstance(seqno, int):
        raise TypeError(f"seqno must be int, not {type(seqno).__name__}")
    if not 0 <= seqno < SEQNO_LIMIT:
        raise ValueError(f"seqno must be in [0, 2**64), got {seqno}")
    return seqno


def tls13_nonce(iv: bytes, seqno: int) -> bytes:
    """Per-record nonce of RFC 8446 5.3: `iv` XOR the left-padded BE64 seqno.

    Also the TLS 1.2 ChaCha20-Poly1305 nonce (RFC 7905 2).  `iv` is the
    12-byte write IV from tls13_traffic_keys() / tls12_key_block().
    """
    if not isinstance(iv, bytes | bytearray):
        raise TypeError(f"iv must be bytes, not {type(iv).__name__}")
    if len(iv) != TLS13_IV_LEN:
        raise ValueError(f"iv must be {TLS13_IV_LEN} bytes, got {len(iv)}")
    seq = _check_seqno(seqno)
    return (int.from_bytes(iv, "big") ^ seq).to_bytes(TLS13_IV_LEN, "big")


def tls12_gcm_nonce(salt: bytes, explicit: bytes) -> bytes:
    """TLS 1.2 AES-GCM nonce of RFC 5288 3: 4-byte salt then 8-byte explicit part."""
    if not isinstance(salt, bytes | bytearray):
        raise TypeError(f"salt must be bytes, not {type(salt).__name__}")
    if not isinstance(explicit, bytes | bytearray):
        raise TypeError(f"explicit must be bytes, not {type(explicit).__name__}")
    if len(salt) != TLS12_GCM_SALT_LEN:
        raise ValueError(f"salt must be {TLS12_GCM_SALT_LEN} bytes, got {len(salt)}")
    if len(explicit) != TLS12_EXPLICIT_NONCE_LEN:
        raise ValueError(f"explicit must be {TLS12_EXPLICIT_NONCE_LEN} bytes, got {len(explicit)}")
    return bytes(salt) + bytes(explicit)


def tls13_aad(ciphertext_len: int) -> bytes:
    """TLS 1.3 additional data (RFC 8446 5.2): the 5-byte record header.

    `ciphertext_len` is TLSCiphertext.length: encrypted inner plaintext
    (payload, content-type byte, padding) plus the tag.
    """
    if isinstance(ciphertext_len, bool) or not isinstance(ciphertext_len, int):
        raise TypeError(f"ciphertext_len must be int, not {type(ciphertext_len).__name__}")
    if not 0 <= ciphertext_len <= TLS13_MAX_CIPHERTEXT_LEN:
        raise ValueError(
            f"ciphertext_len must be in [0, 2**14 + 256] (RFC 8446 5.2), got {ciphertext_len}"
        )
    return _TLS13_AAD.pack(TLS_RLTYPE_APP, TLS_LEGACY_RECORD_VERSION, ciphertext_len)


def tls12_aad(seqno: int, content_type: int, plaintext_len: int) -> bytes:
    """TLS 1.2 AEAD additional data (RFC 5246 6.2.3.3).

    seq_num(8) || type(1) || version 03 03 (2) || length(2), where length is
    the plaintext length, not the record's.
    """
    seq = _check_seqno(seqno)
    if isinstance(content_type, bool) or not isinstance(content_type, int):
        raise TypeError(f"content_type must be int, not {type(content_type).__name__}")
    if not 0 <= content_type <= 0xFF:
        raise ValueError(f"content_type must be in [0, 255], got {content_type}")
    if isinstance(plaintext_len, bool) or not isinstance(plaintext_len, int):
        raise TypeError(f"plaintext_len must be int, not {type(plaintext_len).__name__}")
    if not 0 <= plaintext_len <= TLS_MAX_MSG_SIZE_V10_2:
        raise ValueError(
            f"plaintext_len must be in [0, 2**14] (RFC 5246 6.2.1), got {plaintext_len}"
        )
    return _TLS12_AAD.pack(seq, content_type, TLS_LEGACY_RECORD_VERSION, plaintext_len)
