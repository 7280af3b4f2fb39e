"""Key derivation (ktls/keys.py) and suite table (ktls/suites.py) tests.

Vectors:
  * RFC 8448 section 3, "Simple 1-RTT Handshake" (TLS_AES_128_GCM_SHA256):
    traffic secrets, the key/iv expanded from them, the HkdfLabel "info"
    bytes, Derive-Secret steps, and the protected records at the end of the
    trace.  Hex copied from the RFC text; the record tests double as a check
    on the transcription, since a single wrong byte breaks the GCM tag.
  * RFC 9001 appendix A.5 (QUIC, ChaCha20-Poly1305): HKDF-Expand-Label with
    32-byte outputs, the length TLS_CHACHA20_POLY1305_SHA256 and
    TLS_AES_256_GCM_SHA384 keys have.
  * TLS 1.2 PRF: the P_SHA256 and P_SHA384 vectors posted to the IETF TLS WG
    list (https://www.ietf.org/mail-archive/web/tls/current/msg03416.html),
    as carried in BearSSL's test/test_crypto.c.

No published vector was found for the "traffic upd" KeyUpdate step or for
an AEAD TLS 1.2 key block, so those are checked against independent
constructions (cryptography's HKDFExpand with a hand-built HkdfLabel; the
stdlib's hmac module for P_hash).
"""

from __future__ import annotations

import hashlib
import hmac as std_hmac
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from hypothesis import given
from hypothesis import strategies as st

from ktls.keys import (
    Tls12KeyBlock,
    TrafficKeys,
    hkdf_expand_label,
    tls12_key_block,
    tls12_prf,
    tls13_next_traffic_secret,
    tls13_traffic_keys,
)
from ktls.nonce import tls13_aad, tls13_nonce
from ktls.suites import (
    SUITES,
    TLS12_CIPHER_LIST,
    TLS13_CIPHERSUITES,
    CipherSuite,
    TlsVersion,
    suite_for,
)


def h(text: str) -> bytes:
    """Hex as printed in the RFCs (whitespace and line breaks ignored)."""
    return bytes.fromhex(text)


AES128 = SUITES["TLS_AES_128_GCM_SHA256"]
AES256 = SUITES["TLS_AES_256_GCM_SHA384"]
CHACHA13 = SUITES["TLS_CHACHA20_POLY1305_SHA256"]
TLS13_SUITES = [s for s in SUITES.values() if s.version is TlsVersion.TLS13]
TLS12_SUITES = [s for s in SUITES.values() if s.version is TlsVersion.TLS12]


# ---------------------------------------------------------------------------
# RFC 8448 section 3 values.
# ---------------------------------------------------------------------------

# {server} derive secret "tls13 s hs traffic": expanded
S_HS_TRAFFIC = h("""b6 7b 7d 69 0c c1 6c 4e 75 e5 42 13 cb 2d
          37 b4 e9 c9 12 bc de d9 10 5d 42 be fd 59 d3 91 ad 38""")
# {server} derive secret "tls13 c hs traffic": expanded
C_HS_TRAFFIC = h("""b3 ed db 12 6e 06 7f 35 a7 80 b3 ab f4 5e
          2d 8f 3b 1a 95 07 38 f5 2e 96 00 74 6a 0e 27 a5 5a 21""")
# {server} derive secret "tls13 s ap traffic": expanded
S_AP_TRAFFIC = h("""a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9
          50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43""")
# {server} derive secret "tls13 c ap traffic": expanded
C_AP_TRAFFIC = h("""9e 40 64 6c e7 9a 7f 9d c0 5a f8 88 9b ce
          65 52 87 5a fa 0b 06 df 00 87 f7 92 eb b7 c1 75 04 a5""")

RFC8448_TRAFFIC_KEYS = [
    pytest.param(
        S_HS_TRAFFIC,
        h("3f ce 51 60 09 c2 17 27 d0 f2 e4 e8 6e e4 03 bc"),
        h("5d 31 3e b2 67 12 76 ee 13 00 0b 30"),
        id="server-handshake",
    ),
    pytest.param(
        C_HS_TRAFFIC,
        h("db fa a6 93 d1 76 2c 5b 66 6a f5 d9 50 25 8d 01"),
        h("5b d3 c7 1b 83 6e 0b 76 bb 73 26 5f"),
        id="client-handshake",
    ),
    pytest.param(
        S_AP_TRAFFIC,
        h("9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56"),
        h("cf 78 2b 88 dd 83 54 9a ad f1 e9 84"),
        id="server-application",
    ),
    pytest.param(
        C_AP_TRAFFIC,
        h("17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51"),
        h("5b 78 92 3d ee 08 57 90 33 e5 23 d9"),
        id="client-application",
    ),
]


@pytest.mark.parametrize(("secret", "key", "iv"), RFC8448_TRAFFIC_KEYS)
def test_rfc8448_traffic_keys(secret: bytes, key: bytes, iv: bytes) -> None:
    assert tls13_traffic_keys(AES128, secret) == TrafficKeys(key=key, iv=iv)


# "key info (13 octets)" and "iv info (12 octets)" as printed in RFC 8448 section 3.
RFC8448_KEY_INFO = h("00 10 09 74 6c 73 31 33 20 6b 65 79 00")
RFC8448_IV_INFO = h("00 0c 08 74 6c 73 31 33 20 69 76 00")


@pytest.mark.parametrize(
    ("label", "length", "info"),
    [(b"key", 16, RFC8448_KEY_INFO), (b"iv", 12, RFC8448_IV_INFO)],
)
def test_rfc8448_hkdf_label_encoding(label: bytes, length: int, info: bytes) -> None:
    # The RFC prints the HkdfLabel it fed to HKDF-Expand; expanding with that
    # exact info must agree with ours, which builds the label itself.
    direct = HKDFExpand(hashes.SHA256(), length, info).derive(S_AP_TRAFFIC)
    assert hkdf_expand_label(hashes.SHA256, S_AP_TRAFFIC, label, b"", length) == direct


# Derive-Secret(Secret, Label, Messages) = HKDF-Expand-Label(Secret, Label,
# Transcript-Hash(Messages), Hash.length): RFC 8448 prints PRK, hash and output.
EARLY_SECRET = h("""33 ad 0a 1c 60 7e c0 3b 09 e6 cd 98 93 68 0c e2
          10 ad f3 00 aa 1f 26 60 e1 b2 2e 10 f1 70 f9 2a""")
HANDSHAKE_SECRET = h("""1d c8 26 e9 36 06 aa 6f dc 0a ad c1 2f 74 1b
          01 04 6a a6 b9 9f 69 1e d2 21 a9 f0 ca 04 3f be ac""")
MASTER_SECRET = h("""18 df 06 84 3d 13 a0 8b f2 a4 49 84 4c 5f 8a
          47 80 01 bc 4d 4c 62 79 84 d5 a4 1d a8 d0 40 29 19""")
HASH_EMPTY = h("""e3 b0 c4 42 98 fc 1c 14 9a fb f4 c8 99 6f b9 24
          27 ae 41 e4 64 9b 93 4c a4 95 99 1b 78 52 b8 55""")
HASH_CH_SH = h("""86 0c 06 ed c0 78 58 ee 8e 78 f0 e7 42 8c 58 ed
          d6 b4 3f 2c a3 e6 e9 5f 02 ed 06 3c f0 e1 ca d8""")
HASH_CH_SF = h("""96 08 10 2a 0f 1c cc 6d b6 25 0b 7b 7e 41 7b 1a
          00 0e aa da 3d aa e4 77 7a 76 86 c9 ff 83 df 13""")


@pytest.mark.parametrize(
    ("prk", "label", "context", "expanded"),
    [
        pytest.param(
            EARLY_SECRET,
            b"derived",
            HASH_EMPTY,
            h("""6f 26 15 a1 08 c7 02 c5 67 8f 54 fc 9d ba
          b6 97 16 c0 76 18 9c 48 25 0c eb ea c3 57 6c 36 11 ba"""),
            id="derived",
        ),
        pytest.param(HANDSHAKE_SECRET, b"c hs traffic", HASH_CH_SH, C_HS_TRAFFIC, id="c-hs"),
        pytest.param(HANDSHAKE_SECRET, b"s hs traffic", HASH_CH_SH, S_HS_TRAFFIC, id="s-hs"),
        pytest.param(MASTER_SECRET, b"c ap traffic", HASH_CH_SF, C_AP_TRAFFIC, id="c-ap"),
        pytest.param(MASTER_SECRET, b"s ap traffic", HASH_CH_SF, S_AP_TRAFFIC, id="s-ap"),
    ],
)
def test_rfc8448_derive_secret(prk: bytes, label: bytes, context: bytes, expanded: bytes) -> None:
    assert hkdf_expand_label(hashes.SHA256, prk, label, context, 32) == expanded


def test_rfc8448_empty_hash_is_sha256_of_nothing() -> None:
    # Guards the transcription of HASH_EMPTY above.
    assert hashlib.sha256(b"").digest() == HASH_EMPTY


# Protected records from the end of RFC 8448 section 3 (and the client's
# Finished).  Each is (traffic secret, sequence number, inner plaintext =
# content + content type, complete record).  The server's application_data
# record is its *second* record under the application keys - the
# NewSessionTicket went first, at sequence 0 - so it uses sequence 1.
APP_PAYLOAD = bytes(range(50))  # "payload (50 octets): 00 01 02 ... 31"
RFC8448_RECORDS = [
    pytest.param(
        C_AP_TRAFFIC,
        0,
        APP_PAYLOAD + b"\x17",
        h("""17 03 03 00 43 a2 3f 70 54 b6 2c 94 d0 af fa
          fe 82 28 ba 55 cb ef ac ea 42 f9 14 aa 66 bc ab 3f 2b 98 19 a8
          a5 b4 6b 39 5b d5 4a 9a 20 44 1e 2b 62 97 4e 1f 5a 62 92 a2 97
          70 14 bd 1e 3d ea e6 3a ee bb 21 69 49 15 e4"""),
        id="client-application-data-seq0",
    ),
    pytest.param(
        S_AP_TRAFFIC,
        1,
        APP_PAYLOAD + b"\x17",
        h("""17 03 03 00 43 2e 93 7e 11 ef 4a c7 40 e5 38
          ad 36 00 5f c4 a4 69 32 fc 32 25 d0 5f 82 aa 1b 36 e3 0e fa f9
          7d 90 e6 df fc 60 2d cb 50 1a 59 a8 fc c4 9c 4b f2 e5 f0 a2 1c
          00 47 c2 ab f3 32 54 0d d0 32 e1 67 c2 95 5d"""),
        id="server-application-data-seq1",
    ),
    pytest.param(
        C_HS_TRAFFIC,
        0,
        # Finished (36 octets) + handshake content type 0x16
        h("""14 00 00 20 a8 ec 43 6d 67 76 34 ae 52 5a
          c1 fc eb e1 1a 03 9e c1 76 94 fa c6 e9 85 27 b6 42 f2 ed d5 ce
          61""")
        + b"\x16",
        h("""17 03 03 00 35 75 ec 4d c2 38 cc e6 0b 29 80
          44 a7 1e 21 9c 56 cc 77 b0 51 7f e9 b9 3c 7a 4b fc 44 d8 7f 38
          f8 03 38 ac 98 fc 46 de b3 84 bd 1c ae ac ab 68 67 d7 26 c4 05
          46"""),
        id="client-finished-seq0",
    ),
    pytest.param(
        C_AP_TRAFFIC,
        1,
        h("01 00") + b"\x15",  # close_notify alert
        h("""17 03 03 00 13 c9 87 27 60 65 56 66 b7 4d 7f
          f1 15 3e fd 6d b6 d0 b0 e3"""),
        id="client-close-notify-seq1",
    ),
    pytest.param(
        S_AP_TRAFFIC,
        2,
        h("01 00") + b"\x15",
        h("""17 03 03 00 13 b5 8f d6 71 66 eb f5 99 d2 47
          20 cf be 7e fa 7a 88 64 a9"""),
        id="server-close-notify-seq2",
    ),
]


@pytest.mark.parametrize(("secret", "seqno", "inner", "record"), RFC8448_RECORDS)
def test_rfc8448_record_encrypt(secret: bytes, seqno: int, inner: bytes, record: bytes) -> None:
    keys = tls13_traffic_keys(AES128, secret)
    aad = tls13_aad(len(inner) + AES128.tag_len)
    ciphertext = AESGCM(keys.key).encrypt(tls13_nonce(keys.iv, seqno), inner, aad)
    assert aad + ciphertext == record
    assert len(record) == AES128.tls_hlen + len(inner) - 1 + AES128.tls_tlen


@pytest.mark.parametrize(("secret", "seqno", "inner", "record"), RFC8448_RECORDS)
def test_rfc8448_record_decrypt(secret: bytes, seqno: int, inner: bytes, record: bytes) -> None:
    keys = tls13_traffic_keys(AES128, secret)
    header, body = record[:5], record[5:]
    assert header == tls13_aad(len(body))
    assert AESGCM(keys.key).decrypt(tls13_nonce(keys.iv, seqno), body, header) == inner


def test_rfc8448_record_wrong_seqno_fails() -> None:
    from cryptography.exceptions import InvalidTag

    keys = tls13_traffic_keys(AES128, S_AP_TRAFFIC)
    record = RFC8448_RECORDS[1].values[3]
    assert isinstance(record, bytes)
    with pytest.raises(InvalidTag):
        AESGCM(keys.key).decrypt(tls13_nonce(keys.iv, 0), record[5:], record[:5])


# ---------------------------------------------------------------------------
# RFC 9001 appendix A.5: HKDF-Expand-Label to 32 bytes (ChaCha20 key length).
# ---------------------------------------------------------------------------

QUIC_A5_SECRET = h("9ac312a7f877468ebe69422748ad00a15443f18203a07d6060f688f30f21632b")


@pytest.mark.parametrize(
    ("label", "length", "expected"),
    [
        (b"quic key", 32, h("c6d98ff3441c3fe1b2182094f69caa2ed4b716b65488960a7a984979fb23e1c8")),
        (b"quic iv", 12, h("e0459b3474bdd0e44a41c144")),
        (b"quic hp", 32, h("25a282b9e82f06f21f488917a4fc8f1b73573685608597d0efcb076b0ab7a7a4")),
        (b"quic ku", 32, h("1223504755036d556342ee9361d253421a826c9ecdf3c7148684b36b714881f9")),
    ],
)
def test_rfc9001_a5_expand_label(label: bytes, length: int, expected: bytes) -> None:
    assert hkdf_expand_label(hashes.SHA256, QUIC_A5_SECRET, label, b"", length) == expected


# ---------------------------------------------------------------------------
# hkdf_expand_label against a hand-built HkdfLabel, every TLS 1.3 suite.
# ---------------------------------------------------------------------------


def reference_expand_label(
    alg: type[hashes.HashAlgorithm], secret: bytes, label: bytes, context: bytes, length: int
) -> bytes:
    """RFC 8446 7.1 spelled out field by field."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context
    return HKDFExpand(alg(), length, info).derive(secret)


@pytest.mark.parametrize("suite", TLS13_SUITES, ids=lambda s: s.openssl_name)
def test_traffic_keys_lengths_and_reference(suite: CipherSuite) -> None:
    secret = bytes(range(1, suite.hash().digest_size + 1))
    keys = tls13_traffic_keys(suite, secret)
    assert len(keys.key) == suite.key_len
    assert len(keys.iv) == suite.fixed_iv_len == 12
    assert keys.key == reference_expand_label(suite.hash, secret, b"key", b"", suite.key_len)
    assert keys.iv == reference_expand_label(suite.hash, secret, b"iv", b"", 12)
    suite.aead(keys.key)  # the key is accepted by the suite's AEAD


@pytest.mark.parametrize("suite", TLS13_SUITES, ids=lambda s: s.openssl_name)
def test_next_traffic_secret(suite: CipherSuite) -> None:
    size = suite.hash().digest_size
    secret = bytes([0x5A]) * size
    nxt = tls13_next_traffic_secret(suite, secret)
    assert nxt == reference_expand_label(suite.hash, secret, b"traffic upd", b"", size)
    assert len(nxt) == size
    assert nxt != secret
    # A chain of updates keeps producing fresh secrets and keys.
    nxt2 = tls13_next_traffic_secret(suite, nxt)
    assert len({secret, nxt, nxt2}) == 3
    assert tls13_traffic_keys(suite, nxt) != tls13_traffic_keys(suite, secret)


def test_next_traffic_secret_rfc8448_is_expand_label() -> None:
    assert tls13_next_traffic_secret(AES128, S_AP_TRAFFIC) == hkdf_expand_label(
        hashes.SHA256, S_AP_TRAFFIC, b"traffic upd", b"", 32
    )


@given(
    label=st.binary(min_size=1, max_size=249),
    context=st.binary(max_size=255),
    length=st.integers(min_value=1, max_value=300),
)
def test_expand_label_matches_reference(label: bytes, context: bytes, length: int) -> None:
    secret = bytes(range(48))
    got = hkdf_expand_label(hashes.SHA384, secret, label, context, length)
    assert got == reference_expand_label(hashes.SHA384, secret, label, context, length)


BAD_EXPAND_LABEL: list[Any] = [
    pytest.param(hashes.SHA256(), bytes(32), b"key", b"", 16, TypeError, id="hash-instance"),
    pytest.param(hashes.BLAKE2b, bytes(64), b"key", b"", 16, TypeError, id="blake2b"),
    pytest.param(str, bytes(32), b"key", b"", 16, TypeError, id="not-a-hash"),
    pytest.param(hashes.SHA256, "00" * 32, b"key", b"", 16, TypeError, id="secret-str"),
    pytest.param(hashes.SHA256, bytes(48), b"key", b"", 16, ValueError, id="secret-sha384-len"),
    pytest.param(hashes.SHA256, bytes(31), b"key", b"", 16, ValueError, id="secret-short"),
    pytest.param(hashes.SHA256, b"", b"key", b"", 16, ValueError, id="secret-empty"),
    pytest.param(hashes.SHA256, bytes(32), "key", b"", 16, TypeError, id="label-str"),
    pytest.param(hashes.SHA256, bytes(32), b"", b"", 16, ValueError, id="label-empty"),
    pytest.param(hashes.SHA256, bytes(32), b"x" * 250, b"", 16, ValueError, id="label-long"),
    pytest.param(hashes.SHA256, bytes(32), b"key", None, 16, TypeError, id="context-none"),
    pytest.param(hashes.SHA256, bytes(32), b"key", bytes(256), 16, ValueError, id="context-long"),
    pytest.param(hashes.SHA256, bytes(32), b"key", b"", 0, ValueError, id="length-0"),
    pytest.param(hashes.SHA256, bytes(32), b"key", b"", -1, ValueError, id="length-neg"),
    pytest.param(hashes.SHA256, bytes(32), b"key", b"", 255 * 32 + 1, ValueError, id="length-big"),
    pytest.param(hashes.SHA256, bytes(32), b"key", b"", 16.0, TypeError, id="length-float"),
    pytest.param(
        hashes.SHA256,
        bytes(32),
        b"key",
        b"",
        True,
        TypeError,
        id="length-bool",
        marks=pytest.mark.pure_only,
    ),
]


@pytest.mark.parametrize(("alg", "secret", "label", "context", "length", "exc"), BAD_EXPAND_LABEL)
def test_expand_label_rejects(
    alg: Any, secret: Any, label: Any, context: Any, length: Any, exc: type[Exception]
) -> None:
    with pytest.raises(exc):
        hkdf_expand_label(alg, secret, label, context, length)


def test_expand_label_limits_accepted() -> None:
    secret = bytes(32)
    assert len(hkdf_expand_label(hashes.SHA256, secret, b"x" * 249, bytes(255), 255 * 32)) == 8160


def test_secret_length_message_names_hash() -> None:
    with pytest.raises(ValueError, match=r"traffic_secret must be 32 bytes .*SHA256.* got 48"):
        tls13_traffic_keys(AES128, bytes(48))
    with pytest.raises(ValueError, match=r"traffic_secret must be 48 bytes .*SHA384.* got 32"):
        tls13_traffic_keys(AES256, bytes(32))


@pytest.mark.parametrize("suite", TLS12_SUITES, ids=lambda s: s.openssl_name)
def test_tls13_functions_reject_tls12_suites(suite: CipherSuite) -> None:
    with pytest.raises(ValueError, match="TLS12 suite"):
        tls13_traffic_keys(suite, bytes(suite.hash().digest_size))
    with pytest.raises(ValueError, match="TLS12 suite"):
        tls13_next_traffic_secret(suite, bytes(suite.hash().digest_size))


@pytest.mark.pure_only
def test_tls13_functions_reject_non_suite() -> None:
    with pytest.raises(TypeError, match="suite must be CipherSuite"):
        tls13_traffic_keys("TLS_AES_128_GCM_SHA256", bytes(32))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# TLS 1.2 PRF.
# ---------------------------------------------------------------------------

PRF_VECTORS = [
    pytest.param(
        hashes.SHA256,
        h("9b be 43 6b a9 40 f0 17 b1 76 52 84 9a 71 db 35"),
        h("a0 ba 9f 93 6c da 31 18 27 a6 f7 96 ff d5 19 8c"),
        h("""e3 f2 29 ba 72 7b e1 7b 8d 12 26 20 55 7c d4 53
             c2 aa b2 1d 07 c3 d4 95 32 9b 52 d4 e6 1e db 5a
             6b 30 17 91 e9 0d 35 c9 c9 a4 6b 4e 14 ba f9 af
             0f a0 22 f7 07 7d ef 17 ab fd 37 97 c0 56 4b ab
             4f bc 91 66 6e 9d ef 9b 97 fc e3 4f 79 67 89 ba
             a4 80 82 d1 22 ee 42 c5 a7 2e 5a 51 10 ff f7 01
             87 34 7b 66"""),
        id="P_SHA256-100",
    ),
    pytest.param(
        hashes.SHA384,
        h("b80b733d6ceefcdc71566ea48e5567df"),
        h("cd665cf6a8447dd6ff8b27555edb7465"),
        h("""7b0c18e9ced410ed1804f2cfa34a336a1c14dffb4900bb5fd7942107e81c83cd
             e9ca0faa60be9fe34f82b1233c9146a0e534cb400fed2700884f9dc236f80edd
             8bfa961144c9e8d792eca722a7b32fc3d416d473ebc2c5fd4abfdad05d918425
             9b5bf8cd4d90fa0d31e2dec479e4f1a26066f2eea9a69236a3e52655c9e9aee6
             91c8f3a26854308d5eaa3be85e0990703d73e56f"""),
        id="P_SHA384-148",
    ),
]


@pytest.mark.parametrize(("alg", "secret", "seed", "expected"), PRF_VECTORS)
def test_prf_published_vectors(
    alg: type[hashes.HashAlgorithm], secret: bytes, seed: bytes, expected: bytes
) -> None:
    assert tls12_prf(alg, secret, b"test label", seed, len(expected)) == expected


def reference_p_hash(name: str, secret: bytes, label_seed: bytes, length: int) -> bytes:
    """RFC 5246 5 with the stdlib's hmac module, independent of the code under test."""
    out = b""
    a = label_seed
    while len(out) < length:
        a = std_hmac.new(secret, a, name).digest()
        out += std_hmac.new(secret, a + label_seed, name).digest()
    return out[:length]


@pytest.mark.parametrize(("alg", "name"), [(hashes.SHA256, "sha256"), (hashes.SHA384, "sha384")])
@pytest.mark.parametrize("length", [1, 31, 32, 33, 47, 48, 49, 64, 88, 200])
def test_prf_matches_reference(alg: type[hashes.HashAlgorithm], name: str, length: int) -> None:
    secret, seed = bytes(range(48)), bytes(range(100, 164))
    got = tls12_prf(alg, secret, b"key expansion", seed, length)
    assert got == reference_p_hash(name, secret, b"key expansion" + seed, length)
    assert len(got) == length


@given(
    secret=st.binary(max_size=200),
    label=st.binary(min_size=1, max_size=32),
    seed=st.binary(max_size=80),
    length=st.integers(min_value=1, max_value=150),
)
def test_prf_properties(secret: bytes, label: bytes, seed: bytes, length: int) -> None:
    out = tls12_prf(hashes.SHA256, secret, label, seed, length)
    assert out == reference_p_hash("sha256", secret, label + seed, length)
    # Deterministic, and a shorter output is a prefix of a longer one.
    assert tls12_prf(hashes.SHA256, secret, label, seed, length) == out
    longer = tls12_prf(hashes.SHA256, secret, label, seed, length + 17)
    assert longer[:length] == out


def test_prf_label_and_seed_are_concatenated() -> None:
    # P_hash sees only label + seed, so moving a byte between them changes nothing...
    a = tls12_prf(hashes.SHA256, b"s", b"ab", b"cd", 40)
    assert a == tls12_prf(hashes.SHA256, b"s", b"abc", b"d", 40)
    # ...while the secret, label and seed all matter.
    assert a != tls12_prf(hashes.SHA256, b"t", b"ab", b"cd", 40)
    assert a != tls12_prf(hashes.SHA256, b"s", b"ab", b"ce", 40)


BAD_PRF: list[Any] = [
    pytest.param(hashes.SHA256(), b"s", b"l", b"", 1, TypeError, id="hash-instance"),
    pytest.param(hashes.SHAKE128, b"s", b"l", b"", 1, TypeError, id="shake"),
    pytest.param(hashes.SHA256, "s", b"l", b"", 1, TypeError, id="secret-str"),
    pytest.param(hashes.SHA256, b"s", "l", b"", 1, TypeError, id="label-str"),
    pytest.param(hashes.SHA256, b"s", b"", b"", 1, ValueError, id="label-empty"),
    pytest.param(hashes.SHA256, b"s", b"l", [1, 2], 1, TypeError, id="seed-list"),
    pytest.param(hashes.SHA256, b"s", b"l", b"", 0, ValueError, id="length-0"),
    pytest.param(hashes.SHA256, b"s", b"l", b"", -5, ValueError, id="length-neg"),
    pytest.param(hashes.SHA256, b"s", b"l", b"", "8", TypeError, id="length-str"),
]


@pytest.mark.parametrize(("alg", "secret", "label", "seed", "length", "exc"), BAD_PRF)
def test_prf_rejects(
    alg: Any, secret: Any, label: Any, seed: Any, length: Any, exc: type[Exception]
) -> None:
    with pytest.raises(exc):
        tls12_prf(alg, secret, label, seed, length)


# ---------------------------------------------------------------------------
# TLS 1.2 key block.
# ---------------------------------------------------------------------------

MASTER = bytes(range(0x30, 0x60))  # 48 bytes
CLIENT_RANDOM = bytes(range(0x00, 0x20))
SERVER_RANDOM = bytes(range(0x70, 0x90))


@pytest.mark.parametrize("suite", TLS12_SUITES, ids=lambda s: s.openssl_name)
def test_key_block_layout(suite: CipherSuite) -> None:
    kb = tls12_key_block(suite, MASTER, CLIENT_RANDOM, SERVER_RANDOM)
    assert isinstance(kb, Tls12KeyBlock)
    k, i = suite.key_len, suite.fixed_iv_len
    assert (len(kb.client.key), len(kb.server.key)) == (k, k)
    assert (len(kb.client.iv), len(kb.server.iv)) == (i, i)
    # RFC 5246 6.3: seed is server_random + client_random; AEAD suites have no
    # MAC keys, so the block is client key, server key, client IV, server IV.
    block = tls12_prf(suite.hash, MASTER, b"key expansion", SERVER_RANDOM + CLIENT_RANDOM, 200)
    assert kb.client.key == block[0:k]
    assert kb.server.key == block[k : 2 * k]
    assert kb.client.iv == block[2 * k : 2 * k + i]
    assert kb.server.iv == block[2 * k + i : 2 * k + 2 * i]
    assert block[: 2 * k + 2 * i] == kb.client.key + kb.server.key + kb.client.iv + kb.server.iv
    suite.aead(kb.client.key)
    suite.aead(kb.server.key)


@pytest.mark.parametrize(
    ("name", "key_len", "iv_len"),
    [
        ("ECDHE-ECDSA-AES128-GCM-SHA256", 16, 4),
        ("ECDHE-RSA-AES128-GCM-SHA256", 16, 4),
        ("ECDHE-ECDSA-AES256-GCM-SHA384", 32, 4),
        ("ECDHE-RSA-AES256-GCM-SHA384", 32, 4),
        ("ECDHE-ECDSA-CHACHA20-POLY1305", 32, 12),  # RFC 7905: 12-byte fixed IV
        ("ECDHE-RSA-CHACHA20-POLY1305", 32, 12),
    ],
)
def test_key_block_sizes(name: str, key_len: int, iv_len: int) -> None:
    kb = tls12_key_block(SUITES[name], MASTER, CLIENT_RANDOM, SERVER_RANDOM)
    assert [len(kb.client.key), len(kb.client.iv)] == [key_len, iv_len]
    assert [len(kb.server.key), len(kb.server.iv)] == [key_len, iv_len]


def test_key_block_random_order_matters() -> None:
    suite = SUITES["ECDHE-RSA-AES128-GCM-SHA256"]
    kb = tls12_key_block(suite, MASTER, CLIENT_RANDOM, SERVER_RANDOM)
    swapped = tls12_key_block(suite, MASTER, SERVER_RANDOM, CLIENT_RANDOM)
    assert kb != swapped
    assert kb.client != kb.server


def test_key_block_uses_suite_prf_hash() -> None:
    # The SHA-384 suites use P_SHA384: same inputs, different block.
    k128 = tls12_key_block(
        SUITES["ECDHE-RSA-AES128-GCM-SHA256"], MASTER, CLIENT_RANDOM, SERVER_RANDOM
    )
    k256 = tls12_key_block(
        SUITES["ECDHE-RSA-AES256-GCM-SHA384"], MASTER, CLIENT_RANDOM, SERVER_RANDOM
    )
    sha384_block = tls12_prf(
        hashes.SHA384, MASTER, b"key expansion", SERVER_RANDOM + CLIENT_RANDOM, 16
    )
    assert k256.client.key[:16] == sha384_block
    assert k128.client.key != sha384_block


GCM12 = SUITES["ECDHE-ECDSA-AES128-GCM-SHA256"]
BAD_KEY_BLOCK: list[Any] = [
    pytest.param(AES128, MASTER, CLIENT_RANDOM, SERVER_RANDOM, ValueError, id="tls13-suite"),
    pytest.param("ECDHE", MASTER, CLIENT_RANDOM, SERVER_RANDOM, TypeError, id="suite-str"),
    pytest.param(GCM12, MASTER[:47], CLIENT_RANDOM, SERVER_RANDOM, ValueError, id="master-47"),
    pytest.param(GCM12, MASTER + b"\0", CLIENT_RANDOM, SERVER_RANDOM, ValueError, id="master-49"),
    pytest.param(GCM12, MASTER.hex(), CLIENT_RANDOM, SERVER_RANDOM, TypeError, id="master-str"),
    pytest.param(GCM12, MASTER, CLIENT_RANDOM[:31], SERVER_RANDOM, ValueError, id="cr-31"),
    pytest.param(GCM12, MASTER, CLIENT_RANDOM, SERVER_RANDOM + b"\0", ValueError, id="sr-33"),
    pytest.param(GCM12, MASTER, None, SERVER_RANDOM, TypeError, id="cr-none"),
]


@pytest.mark.parametrize(("suite", "ms", "cr", "sr", "exc"), BAD_KEY_BLOCK)
def test_key_block_rejects(suite: Any, ms: Any, cr: Any, sr: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        tls12_key_block(suite, ms, cr, sr)


# ---------------------------------------------------------------------------
# Suite table (ktls/suites.py).
# ---------------------------------------------------------------------------

EXPECTED_SUITES = {
    # openssl name: (IANA name, version, family, key, fixed iv, explicit, hash, hlen, tlen)
    "TLS_AES_128_GCM_SHA256": (
        "TLS_AES_128_GCM_SHA256", TlsVersion.TLS13, "gcm", 16, 12, 0, hashes.SHA256, 5, 17
    ),
    "TLS_AES_256_GCM_SHA384": (
        "TLS_AES_256_GCM_SHA384", TlsVersion.TLS13, "gcm", 32, 12, 0, hashes.SHA384, 5, 17
    ),
    "TLS_CHACHA20_POLY1305_SHA256": (
        "TLS_CHACHA20_POLY1305_SHA256", TlsVersion.TLS13, "chacha20", 32, 12, 0, hashes.SHA256,
        5, 17,
    ),
    "ECDHE-ECDSA-AES128-GCM-SHA256": (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", TlsVersion.TLS12, "gcm", 16, 4, 8,
        hashes.SHA256, 13, 16,
    ),
    "ECDHE-RSA-AES128-GCM-SHA256": (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", TlsVersion.TLS12, "gcm", 16, 4, 8,
        hashes.SHA256, 13, 16,
    ),
    "ECDHE-ECDSA-AES256-GCM-SHA384": (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", TlsVersion.TLS12, "gcm", 32, 4, 8,
        hashes.SHA384, 13, 16,
    ),
    "ECDHE-RSA-AES256-GCM-SHA384": (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", TlsVersion.TLS12, "gcm", 32, 4, 8,
        hashes.SHA384, 13, 16,
    ),
    "ECDHE-ECDSA-CHACHA20-POLY1305": (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", TlsVersion.TLS12, "chacha20", 32, 12,
        0, hashes.SHA256, 5, 16,
    ),
    "ECDHE-RSA-CHACHA20-POLY1305": (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", TlsVersion.TLS12, "chacha20", 32, 12,
        0, hashes.SHA256, 5, 16,
    ),
}  # fmt: skip


def test_suite_table_is_exactly_the_nine() -> None:
    assert set(SUITES) == set(EXPECTED_SUITES)


@pytest.mark.parametrize("name", sorted(EXPECTED_SUITES))
def test_suite_geometry(name: str) -> None:
    iana, version, family, key_len, iv_len, explicit, alg, hlen, tlen = EXPECTED_SUITES[name]
    suite = SUITES[name]
    assert suite.openssl_name == name
    assert suite.iana_name == iana
    assert suite.version is version
    assert suite.cipher_family == family
    assert suite.aead is (AESGCM if family == "gcm" else ChaCha20Poly1305)
    assert (suite.key_len, suite.fixed_iv_len, suite.explicit_nonce_len) == (
        key_len,
        iv_len,
        explicit,
    )
    assert suite.hash is alg
    assert suite.tag_len == 16
    assert (suite.tls_hlen, suite.tls_tlen) == (hlen, tlen)
    # The AEAD nonce is always 12 bytes: fixed part plus explicit part.
    assert suite.fixed_iv_len + suite.explicit_nonce_len == 12
    assert suite_for(name, version) is suite
    assert suite_for(name, int(version)) is suite


def test_suites_are_frozen() -> None:
    with pytest.raises(AttributeError):
        AES128.key_len = 32  # type: ignore[misc]


def test_cipher_strings() -> None:
    names = TLS12_CIPHER_LIST.split(":")
    assert sorted(names) == sorted(s.openssl_name for s in TLS12_SUITES)
    assert len(names) == 6
    assert all("ECDSA" in n for n in names[:3])
    assert all("RSA" in n and "ECDSA" not in n for n in names[3:])
    assert TLS13_CIPHERSUITES.split(":") == [
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
    ]


def test_cipher_strings_resolve_in_openssl() -> None:
    # OpenSSL itself must know every name, and resolve the strings to exactly our suites.
    ssl = pytest.importorskip("OpenSSL.SSL")
    ctx = ssl.Context(ssl.TLS_METHOD)
    ctx.set_cipher_list(TLS12_CIPHER_LIST.encode())
    ctx.set_tls13_ciphersuites(TLS13_CIPHERSUITES.encode())
    offered = ssl.Connection(ctx).get_cipher_list()
    assert sorted(offered) == sorted(SUITES)


@pytest.mark.parametrize(
    ("name", "version", "match"),
    [
        ("ECDHE-RSA-AES128-SHA256", TlsVersion.TLS12, "unsupported cipher suite"),  # CBC
        ("AES128-GCM-SHA256", TlsVersion.TLS12, "unsupported cipher suite"),  # RSA kx
        ("TLS_AES_128_CCM_SHA256", TlsVersion.TLS13, "unsupported cipher suite"),
        ("", TlsVersion.TLS13, "unsupported cipher suite"),
        ("TLS_AES_128_GCM_SHA256", TlsVersion.TLS12, "unsupported cipher suite .* TLS13 suite"),
        ("ECDHE-RSA-AES128-GCM-SHA256", TlsVersion.TLS13, "unsupported cipher suite .* TLS12"),
        ("ECDHE-RSA-AES128-GCM-SHA256", 0x0302, "unsupported TLS version 0x0302"),
    ],
)
def test_suite_for_rejects(name: str, version: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        suite_for(name, version)


@pytest.mark.parametrize(
    ("name", "version"),
    [(b"TLS_AES_128_GCM_SHA256", TlsVersion.TLS13), ("TLS_AES_128_GCM_SHA256", "TLS13")],
)
def test_suite_for_type_errors(name: Any, version: Any) -> None:
    with pytest.raises(TypeError):
        suite_for(name, version)
