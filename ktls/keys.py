"""Key expansion: the secrets a TLS handshake produced, as a kernel TLS session's key and IV.

Theory of operation. FreeBSD never derives keys itself: user space (OpenSSL's
ktls_configure_crypto()) expands them and passes the results in
`struct tls_enable` (`cipher_key`, `iv`).  This module is that user-space
step, written against the RFCs rather than OpenSSL's internals:

  TLS 1.3 (RFC 8446 7.1, 7.3): key = HKDF-Expand-Label(secret, "key", "", key_len)
                               iv  = HKDF-Expand-Label(secret, "iv",  "", 12)
          KeyUpdate (7.2):     next = HKDF-Expand-Label(secret, "traffic upd", "", Hash.length)
  TLS 1.2 (RFC 5246 5, 6.3):   key_block = PRF(master_secret, "key expansion",
                                               server_random + client_random)
          sliced client key, server key, client IV, server IV (AEAD suites
          have no MAC keys; RFC 5288 3 gives GCM a 4-byte salt, RFC 7905 2
          gives ChaCha20-Poly1305 a 12-byte IV).

The secrets come from the key log (ktls/keylog.py).  Every input is checked
at this boundary - a 48-byte secret handed to a SHA-256 suite is a caller
bug that would otherwise produce a silently wrong key - and the work is then
done in C: HKDF-Expand with the stdlib's HMAC, the TLS 1.2 PRF with
`cryptography`'s.  Nothing here touches I/O.
"""

from __future__ import annotations

import hmac as stdlib_hmac
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes, hmac

from ktls.suites import CipherSuite, TlsVersion

__all__ = [
    "TLS12_MASTER_SECRET_LEN",
    "TLS_RANDOM_LEN",
    "Tls12KeyBlock",
    "TrafficKeys",
    "hkdf_expand_label",
    "tls12_key_block",
    "tls12_prf",
    "tls13_next_traffic_secret",
    "tls13_traffic_keys",
]

# RFC 5246 8.1: master_secret = PRF(...)[0..47].
TLS12_MASTER_SECRET_LEN: Final = 48
# RFC 5246 7.4.1.2 / RFC 8446 4.1.2: ClientHello.random and ServerHello.random.
TLS_RANDOM_LEN: Final = 32
# RFC 8446 7.1: HkdfLabel.label is opaque<7..255> and starts with "tls13 ".
_LABEL_PREFIX: Final = b"tls13 "
_MAX_LABEL_LEN: Final = 255 - len(_LABEL_PREFIX)
_MAX_CONTEXT_LEN: Final = 255


@dataclass(frozen=True, slots=True)
class TrafficKeys:
    """One direction's AEAD key and fixed IV (`fixed_iv_len` bytes)."""

    key: bytes
    iv: bytes


@dataclass(frozen=True, slots=True)
class Tls12KeyBlock:
    """The two directions' keys cut from a TLS 1.2 key block."""

    client: TrafficKeys
    server: TrafficKeys


def _check_hash(hash_alg: object) -> type[hashes.HashAlgorithm]:
    if not (isinstance(hash_alg, type) and issubclass(hash_alg, hashes.HashAlgorithm)):
        raise TypeError(
            f"hash_alg must be a HashAlgorithm class such as hashes.SHA256, not {hash_alg!r}"
        )
    return hash_alg


def _digest_size(hash_alg: type[hashes.HashAlgorithm]) -> int:
    try:
        return hash_alg().digest_size
    except TypeError:  # BLAKE2b, SHAKE128, ...: parameterised, not usable here
        raise TypeError(
            f"hash_alg must be a fixed-output hash such as hashes.SHA256, not {hash_alg.__name__}"
        ) from None


def _check_bytes(name: str, value: object) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    return bytes(value)


def _check_length(name: str, value: object, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be int, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _check_suite(suite: object, version: TlsVersion) -> CipherSuite:
    if not isinstance(suite, CipherSuite):
        raise TypeError(f"suite must be CipherSuite, not {type(suite).__name__}")
    if suite.version is not version:
        raise ValueError(
            f"{suite.openssl_name} is a {suite.version.name} suite; this derivation is "
            f"{version.name} only"
        )
    return suite


def _check_secret(name: str, secret: object, hash_alg: type[hashes.HashAlgorithm]) -> bytes:
    data = _check_bytes(name, secret)
    want = _digest_size(hash_alg)
    if len(data) != want:
        raise ValueError(
            f"{name} must be {want} bytes (the {hash_alg.__name__} digest size), got {len(data)}"
        )
    return data


def hkdf_expand_label(
    hash_alg: type[hashes.HashAlgorithm],
    secret: bytes,
    label: bytes,
    context: bytes,
    length: int,
) -> bytes:
    """HKDF-Expand-Label(secret, label, context, length) of RFC 8446 7.1.

    `label` is given without the "tls13 " prefix, which is added here.
    `secret` must be exactly one digest long: every secret TLS 1.3 expands is
    the output of HKDF-Extract or Derive-Secret.
    """
    alg = _check_hash(hash_alg)
    prk = _check_secret("secret", secret, alg)
    lbl = _check_bytes("label", label)
    ctx = _check_bytes("context", context)
    if not 1 <= len(lbl) <= _MAX_LABEL_LEN:
        raise ValueError(
            f"label must be 1 to {_MAX_LABEL_LEN} bytes before the 'tls13 ' prefix, got {len(lbl)}"
        )
    if len(ctx) > _MAX_CONTEXT_LEN:
        raise ValueError(f"context must be at most {_MAX_CONTEXT_LEN} bytes, got {len(ctx)}")
    # RFC 5869 2.3: L <= 255 * HashLen (and HkdfLabel.length is a uint16).
    n = _check_length("length", length, 1, 255 * len(prk))
    full_label = _LABEL_PREFIX + lbl
    info = (
        n.to_bytes(2, "big")
        + len(full_label).to_bytes(1, "big")
        + full_label
        + len(ctx).to_bytes(1, "big")
        + ctx
    )
    return _hkdf_expand(alg().name, prk, info, n)


def _hkdf_expand(hash_name: str, prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand of RFC 5869 2.3 with the stdlib's C HMAC (one HMAC for the
    key and IV lengths TLS asks for; HKDFExpand's object set-up cost more)."""
    out = b""
    block = b""
    i = 1
    while len(out) < length:
        block = stdlib_hmac.digest(prk, block + info + bytes((i,)), hash_name)
        out += block
        i += 1
    return out[:length]


def tls13_traffic_keys(suite: CipherSuite, traffic_secret: bytes) -> TrafficKeys:
    """Expand a TLS 1.3 traffic secret into the record key and IV (RFC 8446 7.3)."""
    st = _check_suite(suite, TlsVersion.TLS13)
    secret = _check_secret("traffic_secret", traffic_secret, st.hash)
    return TrafficKeys(
        key=hkdf_expand_label(st.hash, secret, b"key", b"", st.key_len),
        iv=hkdf_expand_label(st.hash, secret, b"iv", b"", st.fixed_iv_len),
    )


def tls13_next_traffic_secret(suite: CipherSuite, traffic_secret: bytes) -> bytes:
    """application_traffic_secret_N+1 after a KeyUpdate (RFC 8446 7.2)."""
    st = _check_suite(suite, TlsVersion.TLS13)
    secret = _check_secret("traffic_secret", traffic_secret, st.hash)
    return hkdf_expand_label(st.hash, secret, b"traffic upd", b"", len(secret))


def tls12_prf(
    hash_alg: type[hashes.HashAlgorithm],
    secret: bytes,
    label: bytes,
    seed: bytes,
    length: int,
) -> bytes:
    """The TLS 1.2 PRF, P_<hash>(secret, label + seed), of RFC 5246 5.

        A(0) = label + seed;  A(i) = HMAC(secret, A(i-1))
        output = HMAC(secret, A(1) + label + seed) + HMAC(secret, A(2) + label + seed) + ...

    truncated to `length` bytes.  `label` must be non-empty (the RFC's labels
    are ASCII strings such as b"key expansion"); `secret` may be any length.
    """
    alg = _check_hash(hash_alg)
    _digest_size(alg)
    key = _check_bytes("secret", secret)
    lbl = _check_bytes("label", label)
    sd = _check_bytes("seed", seed)
    n = _check_length("length", length, 1, None)
    if not lbl:
        raise ValueError("label must not be empty")
    label_seed = lbl + sd
    base = hmac.HMAC(key, alg())  # keyed once, copied per block
    out = bytearray()
    a = label_seed
    while len(out) < n:
        mac = base.copy()
        mac.update(a)
        a = mac.finalize()
        mac = base.copy()
        mac.update(a)
        mac.update(label_seed)
        out += mac.finalize()
    return bytes(out[:n])


def tls12_key_block(
    suite: CipherSuite,
    master_secret: bytes,
    client_random: bytes,
    server_random: bytes,
) -> Tls12KeyBlock:
    """Cut a TLS 1.2 AEAD key block into both directions' keys (RFC 5246 6.3).

    key_block = PRF(master_secret, "key expansion", server_random + client_random)
    is laid out client_write_key, server_write_key, client_write_IV,
    server_write_IV; AEAD suites have no MAC keys in front.
    """
    st = _check_suite(suite, TlsVersion.TLS12)
    ms = _check_bytes("master_secret", master_secret)
    cr = _check_bytes("client_random", client_random)
    sr = _check_bytes("server_random", server_random)
    if len(ms) != TLS12_MASTER_SECRET_LEN:
        raise ValueError(f"master_secret must be {TLS12_MASTER_SECRET_LEN} bytes, got {len(ms)}")
    for name, value in (("client_random", cr), ("server_random", sr)):
        if len(value) != TLS_RANDOM_LEN:
            raise ValueError(f"{name} must be {TLS_RANDOM_LEN} bytes, got {len(value)}")
    k, i = st.key_len, st.fixed_iv_len
    block = tls12_prf(st.hash, ms, b"key expansion", sr + cr, 2 * k + 2 * i)
    return Tls12KeyBlock(
        client=TrafficKeys(key=block[0:k], iv=block[2 * k : 2 * k + i]),
        server=TrafficKeys(key=block[k : 2 * k], iv=block[2 * k + i : 2 * k + 2 * i]),
    )
