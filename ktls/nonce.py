"""Per-record nonces and additional data of the AEAD record protection.

Theory of operation. The per-record inputs to the AEAD besides key and
payload: the nonce and the additional authenticated data.  In FreeBSD these
are built for every record by the software backend from the session's IV and
the record's sequence number, which ktls_frame()/ktls_seq()
(sys/kern/uipc_ktls.c) stamp on the mbuf.  Here they are pure functions of
(iv, seqno, lengths) so the record path can call them once per record and
tests can pin them against RFC text.

  TLS 1.3 (RFC 8446 5.3), and TLS 1.2 ChaCha20-Poly1305 (RFC 7905 2):
      nonce = iv XOR (64-bit big-endian seqno, left-padded to 12 bytes)
  TLS 1.2 AES-GCM (RFC 5288 3):
      nonce = salt(4) || explicit_nonce(8); the explicit part travels in the
      record.  Like OpenSSL and FreeBSD, callers use the sequence number as
      the explicit nonce, which keeps it unique per key.
  TLS 1.3 AAD (RFC 8446 5.2): the record header, 17 03 03 len(2), with len
      the TLSCiphertext length (payload + content type + padding + tag).
  TLS 1.2 AAD (RFC 5246 6.2.3.3): seq_num(8) type(1) 03 03 len(2), with len
      the plaintext length.

These run per record (ktls/ocf.py seals with them, ktls/rx.py opens), so
they stay arithmetic on ints (XOR, to_bytes, struct) - no per-byte Python
loops - and each takes a fast path when its arguments are plain ints and
bytes in range: one chained comparison per argument, then the packing.
Anything else goes to the slow path, whose checks raise ValueError/TypeError
with a precise message; an out-of-range sequence number in particular must
never wrap silently, because a repeated nonce breaks GCM.  The TLS 1.3 IV is
turned into an int once per key (`tls13_iv_int`), and each record's nonce is
one XOR of that int (`tls13_nonce_int`).

Models: sys/opencrypto/ktls_ocf.c (the nonce and AAD of
`ktls_ocf_tls12_aead_encrypt`, `ktls_ocf_tls13_aead_encrypt`) and
sys/sys/ktls.h (`struct tls_nonce_data`, `struct tls_aead_data`,
`struct tls_aead_data_13`).
"""

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
    "tls13_iv_int",
    "tls13_nonce",
    "tls13_nonce_int",
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
# A tuple, not `bytes | bytearray | memoryview`: the union would be built anew at each call.
_BYTES_LIKE: Final = (bytes, bytearray, memoryview)


def _check_int(name: str, value: object, limit: int, bound: str) -> int:
    """`value` as an int in [0, limit]; TypeError, or ValueError quoting `bound`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be int, not {type(value).__name__}")
    if not 0 <= value <= limit:
        raise ValueError(f"{name} must be in {bound}, got {value}")
    return value


def _check_seqno(seqno: object) -> int:
    if isinstance(seqno, bool) or not isinstance(seqno, int):
        raise TypeError(f"seqno must be int, not {type(seqno).__name__}")
    if not 0 <= seqno < SEQNO_LIMIT:
        raise ValueError(f"seqno must be in [0, 2**64), got {seqno}")
    return seqno


def _check_bytes(name: str, value: object, length: int) -> bytes:
    if not isinstance(value, _BYTES_LIKE):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    if len(value) != length:
        raise ValueError(f"{name} must be {length} bytes, got {len(value)}")
    return bytes(value)


def tls13_iv_int(iv: bytes) -> int:
    """The 12-byte write IV as the integer each record's nonce is XORed from
    (RFC 8446 5.3), computed once per key; the IV's type and length are
    checked here, so the per-record `tls13_nonce_int` need not."""
    return int.from_bytes(_check_bytes("iv", iv, TLS13_IV_LEN), "big")


def tls13_nonce_int(iv_int: int, seqno: int) -> bytes:
    """`tls13_nonce` on the per-record path: `iv_int` from `tls13_iv_int`."""
    if type(seqno) is not int or not 0 <= seqno < SEQNO_LIMIT:
        _check_seqno(seqno)
    return (iv_int ^ seqno).to_bytes(TLS13_IV_LEN, "big")


def tls13_nonce(iv: bytes, seqno: int) -> bytes:
    """Per-record nonce of RFC 8446 5.3: `iv` XOR the left-padded BE64 seqno.

    Also the TLS 1.2 ChaCha20-Poly1305 nonce (RFC 7905 2).  `iv` is the
    12-byte write IV from tls13_traffic_keys() / tls12_key_block().
    """
    if not isinstance(iv, bytes | bytearray):
        raise TypeError(f"iv must be bytes, not {type(iv).__name__}")
    return tls13_nonce_int(tls13_iv_int(iv), seqno)


def tls12_gcm_nonce(salt: bytes, explicit: bytes | bytearray | memoryview) -> bytes:
    """TLS 1.2 AES-GCM nonce of RFC 5288 3: 4-byte salt then 8-byte explicit part
    (which may be a view of the record header it travels in)."""
    if (
        type(salt) is bytes
        and len(salt) == TLS12_GCM_SALT_LEN
        and isinstance(explicit, _BYTES_LIKE)
        and len(explicit) == TLS12_EXPLICIT_NONCE_LEN
    ):
        return salt + explicit
    if not isinstance(salt, bytes | bytearray):
        raise TypeError(f"salt must be bytes, not {type(salt).__name__}")
    return _check_bytes("salt", salt, TLS12_GCM_SALT_LEN) + _check_bytes(
        "explicit", explicit, TLS12_EXPLICIT_NONCE_LEN
    )


def tls13_aad(ciphertext_len: int) -> bytes:
    """TLS 1.3 additional data (RFC 8446 5.2): the 5-byte record header.

    `ciphertext_len` is TLSCiphertext.length: encrypted inner plaintext
    (payload, content-type byte, padding) plus the tag.
    """
    if type(ciphertext_len) is not int or not 0 <= ciphertext_len <= TLS13_MAX_CIPHERTEXT_LEN:
        bound = "[0, 2**14 + 256] (RFC 8446 5.2)"
        _check_int("ciphertext_len", ciphertext_len, TLS13_MAX_CIPHERTEXT_LEN, bound)
    return _TLS13_AAD.pack(TLS_RLTYPE_APP, TLS_LEGACY_RECORD_VERSION, ciphertext_len)


def tls12_aad(seqno: int, content_type: int, plaintext_len: int) -> bytes:
    """TLS 1.2 AEAD additional data (RFC 5246 6.2.3.3).

    seq_num(8) || type(1) || version 03 03 (2) || length(2), where length is
    the plaintext length, not the record's.
    """
    if not (
        type(seqno) is int
        and type(content_type) is int
        and type(plaintext_len) is int
        and 0 <= seqno < SEQNO_LIMIT
        and 0 <= content_type <= 0xFF
        and 0 <= plaintext_len <= TLS_MAX_MSG_SIZE_V10_2
    ):
        _check_seqno(seqno)
        _check_int("content_type", content_type, 0xFF, "[0, 255]")
        bound = "[0, 2**14] (RFC 5246 6.2.1)"
        _check_int("plaintext_len", plaintext_len, TLS_MAX_MSG_SIZE_V10_2, bound)
    return _TLS12_AAD.pack(seqno, content_type, TLS_LEGACY_RECORD_VERSION, plaintext_len)
