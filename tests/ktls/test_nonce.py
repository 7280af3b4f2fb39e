"""Per-record nonce and AAD helpers (ktls/nonce.py).

Published vectors: RFC 9001 appendix A.5 (a 12-byte IV XORed with packet
number 654360564, the same construction as RFC 8446 5.3, then
ChaCha20-Poly1305 over the result) and the record headers of RFC 8448
section 3.  The full RFC 8448 record round trips live in test_keys.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st

from ktls.nonce import (
    SEQNO_LIMIT,
    tls12_aad,
    tls12_gcm_nonce,
    tls13_aad,
    tls13_iv_int,
    tls13_nonce,
    tls13_nonce_int,
)
from mbuf.ktls_hdr import TLS13_MAX_CIPHERTEXT_LEN, TLS_MAX_MSG_SIZE_V10_2

IV = bytes.fromhex("0102030405060708090a0b0c")
MAX_SEQ = SEQNO_LIMIT - 1


@pytest.mark.parametrize(
    ("seqno", "expected"),
    [
        (0, "0102030405060708090a0b0c"),  # seqno 0: the IV itself
        (1, "0102030405060708090a0b0d"),
        (2, "0102030405060708090a0b0e"),
        (0x0100, "0102030405060708090a0a0c"),
        (0x05060708090A0B0C, "010203040000000000000000"),  # cancels the low 8 bytes
        (MAX_SEQ, "01020304faf9f8f7f6f5f4f3"),  # flips every bit of the low 8 bytes
    ],
)
def test_tls13_nonce_xor(seqno: int, expected: str) -> None:
    assert tls13_nonce(IV, seqno) == bytes.fromhex(expected)


def test_tls13_nonce_max_seqno_flips_exactly_the_low_64_bits() -> None:
    nonce = tls13_nonce(IV, MAX_SEQ)
    assert nonce[:4] == IV[:4]
    assert nonce[4:] == bytes(b ^ 0xFF for b in IV[4:])
    assert tls13_nonce(bytes(12), MAX_SEQ) == bytes(4) + b"\xff" * 8


def test_tls13_nonce_zero_iv_is_padded_seqno() -> None:
    assert tls13_nonce(bytes(12), 1) == bytes(11) + b"\x01"
    assert tls13_nonce(bytes(12), 0x1122334455667788) == bytes(4) + bytes.fromhex(
        "1122334455667788"
    )


@pytest.mark.pure_only
def test_tls13_nonce_accepts_bytearray() -> None:
    assert tls13_nonce(bytearray(IV), 1) == tls13_nonce(IV, 1)  # type: ignore[arg-type]
    assert isinstance(tls13_nonce(bytearray(IV), 1), bytes)  # type: ignore[arg-type]


@given(iv=st.binary(min_size=12, max_size=12), seqno=st.integers(0, MAX_SEQ))
def test_tls13_nonce_matches_bytewise_definition(iv: bytes, seqno: int) -> None:
    padded = seqno.to_bytes(12, "big")  # RFC 8446 5.3: left-padded to iv_length
    expected = bytes(a ^ b for a, b in zip(iv, padded, strict=True))
    nonce = tls13_nonce(iv, seqno)
    assert nonce == expected
    # XOR is an involution: the IV comes back.
    assert tls13_nonce(nonce, seqno) == iv
    # The per-record form: the IV as an int once, one XOR per record.
    assert tls13_nonce_int(tls13_iv_int(iv), seqno) == nonce


@pytest.mark.parametrize(
    "seqno", [-1, SEQNO_LIMIT, 1.0, pytest.param(True, marks=pytest.mark.pure_only)]
)
def test_tls13_nonce_int_rejects_seqno(seqno: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        tls13_nonce_int(tls13_iv_int(IV), seqno)


@pytest.mark.parametrize("iv", [IV[:11], IV + b"\0", IV[:4]])
def test_tls13_iv_int_rejects_length(iv: bytes) -> None:
    with pytest.raises(ValueError, match="iv must be 12 bytes"):
        tls13_iv_int(iv)


# RFC 9001 appendix A.5: key, iv, packet number, nonce, header (AAD), plaintext, ciphertext.
A5_KEY = bytes.fromhex("c6d98ff3441c3fe1b2182094f69caa2ed4b716b65488960a7a984979fb23e1c8")
A5_IV = bytes.fromhex("e0459b3474bdd0e44a41c144")
A5_PN = 654360564
A5_NONCE = bytes.fromhex("e0459b3474bdd0e46d417eb0")


def test_rfc9001_a5_nonce() -> None:
    assert tls13_nonce(A5_IV, A5_PN) == A5_NONCE


def test_rfc9001_a5_chacha20_poly1305() -> None:
    sealed = ChaCha20Poly1305(A5_KEY).encrypt(
        tls13_nonce(A5_IV, A5_PN), b"\x01", bytes.fromhex("4200bff4")
    )
    assert sealed == bytes.fromhex("655e5cd55c41f69080575d7999c25a5bfb")


BAD_TLS13_NONCE: list[Any] = [
    pytest.param(IV, -1, ValueError, id="seq-negative"),
    pytest.param(IV, SEQNO_LIMIT, ValueError, id="seq-2**64"),
    pytest.param(IV, SEQNO_LIMIT + 1, ValueError, id="seq-2**64+1"),
    pytest.param(IV, 1.0, TypeError, id="seq-float"),
    pytest.param(IV, True, TypeError, id="seq-bool", marks=pytest.mark.pure_only),
    pytest.param(IV, "1", TypeError, id="seq-str"),
    pytest.param(IV[:11], 0, ValueError, id="iv-11"),
    pytest.param(IV + b"\0", 0, ValueError, id="iv-13"),
    pytest.param(IV[:4], 0, ValueError, id="iv-salt-only"),
    pytest.param(b"", 0, ValueError, id="iv-empty"),
    pytest.param(list(IV), 0, TypeError, id="iv-list"),
    pytest.param(IV.hex(), 0, TypeError, id="iv-str"),
]


@pytest.mark.parametrize(("iv", "seqno", "exc"), BAD_TLS13_NONCE)
def test_tls13_nonce_rejects(iv: Any, seqno: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        tls13_nonce(iv, seqno)


def test_tls13_nonce_seqno_message() -> None:
    with pytest.raises(ValueError, match=r"seqno must be in \[0, 2\*\*64\), got -1"):
        tls13_nonce(IV, -1)


# ---------------------------------------------------------------------------
# TLS 1.2 AES-GCM nonce (RFC 5288 3).
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seqno", [0, 1, 2, MAX_SEQ])
def test_tls12_gcm_nonce(seqno: int) -> None:
    salt = bytes.fromhex("a1b2c3d4")
    explicit = seqno.to_bytes(8, "big")
    nonce = tls12_gcm_nonce(salt, explicit)
    assert nonce == salt + explicit
    assert len(nonce) == 12
    AESGCM(bytes(16)).encrypt(nonce, b"x", None)  # a valid GCM nonce
    # The explicit part may be a slice or a view of the record header it travels in.
    header = bytearray(5) + explicit
    assert tls12_gcm_nonce(salt, header[5:]) == nonce
    assert tls12_gcm_nonce(salt, memoryview(header)[5:]) == nonce
    assert type(tls12_gcm_nonce(salt, header[5:])) is bytes


BAD_GCM_NONCE: list[Any] = [
    pytest.param(bytes(3), bytes(8), ValueError, id="salt-3"),
    pytest.param(bytes(5), bytes(8), ValueError, id="salt-5"),
    pytest.param(bytes(4), bytes(7), ValueError, id="explicit-7"),
    pytest.param(bytes(4), bytes(9), ValueError, id="explicit-9"),
    pytest.param(bytes(12), b"", ValueError, id="whole-nonce-as-salt"),
    pytest.param("abcd", bytes(8), TypeError, id="salt-str"),
    pytest.param(bytes(4), 0, TypeError, id="explicit-int"),
]


@pytest.mark.parametrize(("salt", "explicit", "exc"), BAD_GCM_NONCE)
def test_tls12_gcm_nonce_rejects(salt: Any, explicit: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        tls12_gcm_nonce(salt, explicit)


# ---------------------------------------------------------------------------
# AAD layouts.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (0x43, "1703030043"),  # RFC 8448 section 3 application_data records (50 + 1 + 16)
        (0x35, "1703030035"),  # RFC 8448 section 3 client Finished record
        (0x13, "1703030013"),  # RFC 8448 section 3 close_notify records
        (0, "1703030000"),
        (0x0100, "1703030100"),
        (TLS13_MAX_CIPHERTEXT_LEN, "1703034100"),
    ],
)
def test_tls13_aad(length: int, expected: str) -> None:
    assert tls13_aad(length) == bytes.fromhex(expected)


@pytest.mark.parametrize(
    ("length", "exc"),
    [
        (-1, ValueError),
        (TLS13_MAX_CIPHERTEXT_LEN + 1, ValueError),
        (0x10000, ValueError),
        (17.0, TypeError),
        pytest.param(False, TypeError, marks=pytest.mark.pure_only),
    ],
)
def test_tls13_aad_rejects(length: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        tls13_aad(length)


@pytest.mark.parametrize(
    ("seqno", "content_type", "length", "expected"),
    [
        (0, 0x17, 0, "00000000000000001703030000"),
        (1, 0x17, 0x1234, "00000000000000011703031234"),
        (2, 0x16, 16, "00000000000000021603030010"),
        (0x0102030405060708, 0x15, 2, "01020304050607081503030002"),
        (MAX_SEQ, 0x17, TLS_MAX_MSG_SIZE_V10_2, "ffffffffffffffff1703034000"),
    ],
)
def test_tls12_aad(seqno: int, content_type: int, length: int, expected: str) -> None:
    aad = tls12_aad(seqno, content_type, length)
    assert aad == bytes.fromhex(expected)
    assert len(aad) == 13


BAD_TLS12_AAD: list[Any] = [
    pytest.param(-1, 0x17, 0, ValueError, id="seq-negative"),
    pytest.param(SEQNO_LIMIT, 0x17, 0, ValueError, id="seq-2**64"),
    pytest.param(0, -1, 0, ValueError, id="type-negative"),
    pytest.param(0, 0x100, 0, ValueError, id="type-256"),
    pytest.param(0, 0x17, -1, ValueError, id="len-negative"),
    pytest.param(0, 0x17, TLS_MAX_MSG_SIZE_V10_2 + 1, ValueError, id="len-2**14+1"),
    pytest.param(0.0, 0x17, 0, TypeError, id="seq-float"),
    pytest.param(0, b"\x17", 0, TypeError, id="type-bytes"),
    pytest.param(0, 0x17, None, TypeError, id="len-none"),
]


@pytest.mark.parametrize(("seqno", "content_type", "length", "exc"), BAD_TLS12_AAD)
def test_tls12_aad_rejects(
    seqno: Any, content_type: Any, length: Any, exc: type[Exception]
) -> None:
    with pytest.raises(exc):
        tls12_aad(seqno, content_type, length)


def test_tls12_gcm_record_round_trip() -> None:
    # RFC 5288 record: explicit nonce (= seqno) in front of the ciphertext,
    # AAD over the plaintext length.
    key, salt, seqno = bytes(range(16)), bytes.fromhex("cafebabe"), 7
    explicit = seqno.to_bytes(8, "big")
    payload = b"GET / HTTP/1.1\r\n\r\n"
    aad = tls12_aad(seqno, 0x17, len(payload))
    sealed = AESGCM(key).encrypt(tls12_gcm_nonce(salt, explicit), payload, aad)
    assert len(sealed) == len(payload) + 16
    assert AESGCM(key).decrypt(tls12_gcm_nonce(salt, explicit), sealed, aad) == payload
