"""The cipher suites nomapd can hand to its kernel-TLS model, and their record geometry.

Theory of operation. FreeBSD describes a session to the kernel with
`struct tls_enable` (sys/sys/ktls.h): a cipher algorithm
(CRYPTO_AES_NIST_GCM_16 or CRYPTO_CHACHA20_POLY1305), key and IV lengths and
the TLS version; `ktls_create_session()` (sys/kern/uipc_ktls.c) then derives
`tls_hlen` (record header plus explicit nonce) and `tls_tlen` (trailer: AEAD
tag, plus the inner content-type byte in TLS 1.3).  `CipherSuite` carries the
same facts, keyed by the name OpenSSL's SSL_CIPHER_get_name() reports, so the
server can go from a finished handshake to a session description with one
dictionary lookup.

Per version and AEAD (RFC 8446 5.3, RFC 5288 3, RFC 7905 2):
  TLS 1.3, any AEAD:   12-byte IV XORed with the sequence number, no
                       explicit nonce, 5 + 0 header, 16 + 1 trailer.
  TLS 1.2, AES-GCM:    4-byte salt ("fixed IV") + 8-byte explicit nonce sent
                       in each record, 5 + 8 header, 16 trailer.
  TLS 1.2, ChaCha20:   12-byte IV XORed with the sequence number like
                       TLS 1.3, no explicit nonce, 5 + 0 header, 16 trailer.

Models: sys/kern/uipc_ktls.c (`ktls_create_session`: `tls_hlen`, `tls_tlen`).

Deliberate differences: only AEAD suites with forward-secret key exchange are
listed.  FreeBSD can also offload AES-CBC with HMAC for TLS 1.0-1.2; nomapd
deliberately does not model that path, so `suite_for()` refuses CBC (and
anything else not listed) and the caller keeps such a connection in
user-space TLS.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from mbuf.ktls_hdr import (
    TLS_HEADER_LEN,
    TLS_MAJOR_VER_ONE,
    TLS_MINOR_VER_THREE,
    TLS_MINOR_VER_TWO,
)

__all__ = [
    "SUITES",
    "TLS12_CIPHER_LIST",
    "TLS13_CIPHERSUITES",
    "CipherSuite",
    "TlsVersion",
    "suite_for",
]


class TlsVersion(enum.IntEnum):
    """Protocol versions as they appear on the wire (and in SSL_version())."""

    TLS12 = TLS_MAJOR_VER_ONE << 8 | TLS_MINOR_VER_TWO  # 0x0303
    TLS13 = TLS_MAJOR_VER_ONE << 8 | TLS_MINOR_VER_THREE  # 0x0304


@dataclass(frozen=True, slots=True)
class CipherSuite:
    """One AEAD cipher suite and the record geometry it implies."""

    openssl_name: str
    iana_name: str
    version: TlsVersion
    aead: type[AESGCM] | type[ChaCha20Poly1305]
    key_len: int
    fixed_iv_len: int
    explicit_nonce_len: int
    hash: type[hashes.HashAlgorithm]
    tag_len: int = 16

    @property
    def tls_hlen(self) -> int:
        """Bytes in front of the payload: record header plus explicit nonce."""
        return TLS_HEADER_LEN + self.explicit_nonce_len

    @property
    def tls_tlen(self) -> int:
        """Bytes after the payload: the tag, plus TLS 1.3's inner content type."""
        if self.version is TlsVersion.TLS13:
            return self.tag_len + 1
        return self.tag_len

    @property
    def cipher_family(self) -> str:
        """Either "gcm" or "chacha20": the two kernel cipher algorithms modelled."""
        return "gcm" if self.aead is AESGCM else "chacha20"


def _tls13(
    name: str,
    aead: type[AESGCM] | type[ChaCha20Poly1305],
    key_len: int,
    hash_alg: type[hashes.HashAlgorithm],
) -> CipherSuite:
    return CipherSuite(name, name, TlsVersion.TLS13, aead, key_len, 12, 0, hash_alg)


def _tls12_gcm(
    name: str, iana: str, key_len: int, hash_alg: type[hashes.HashAlgorithm]
) -> CipherSuite:
    return CipherSuite(name, iana, TlsVersion.TLS12, AESGCM, key_len, 4, 8, hash_alg)


def _tls12_chacha(name: str, iana: str) -> CipherSuite:
    return CipherSuite(name, iana, TlsVersion.TLS12, ChaCha20Poly1305, 32, 12, 0, hashes.SHA256)


_ALL: Final = (
    _tls13("TLS_AES_128_GCM_SHA256", AESGCM, 16, hashes.SHA256),
    _tls13("TLS_AES_256_GCM_SHA384", AESGCM, 32, hashes.SHA384),
    _tls13("TLS_CHACHA20_POLY1305_SHA256", ChaCha20Poly1305, 32, hashes.SHA256),
    _tls12_gcm(
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        16,
        hashes.SHA256,
    ),
    _tls12_gcm(
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        32,
        hashes.SHA384,
    ),
    _tls12_chacha("ECDHE-ECDSA-CHACHA20-POLY1305", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
    _tls12_gcm(
        "ECDHE-RSA-AES128-GCM-SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", 16, hashes.SHA256
    ),
    _tls12_gcm(
        "ECDHE-RSA-AES256-GCM-SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", 32, hashes.SHA384
    ),
    _tls12_chacha("ECDHE-RSA-CHACHA20-POLY1305", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
)

SUITES: Final[dict[str, CipherSuite]] = {s.openssl_name: s for s in _ALL}

# For SSL_CTX_set_cipher_list(): exactly the six TLS 1.2 suites above, ECDSA
# first so an ECDSA certificate is preferred when the server holds both.
TLS12_CIPHER_LIST: Final = ":".join(s.openssl_name for s in _ALL if s.version is TlsVersion.TLS12)

# For SSL_CTX_set_ciphersuites() (TLS 1.3 has its own configuration knob).
TLS13_CIPHERSUITES: Final = (
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
)


def suite_for(openssl_name: str, version: TlsVersion | int) -> CipherSuite:
    """Return the suite a finished handshake negotiated.

    `openssl_name` is what SSL_CIPHER_get_name() returned and `version` what
    SSL_version() returned (a plain int is accepted).  Raises ValueError for a
    suite nomapd cannot offload, an unknown version, or a suite that does not
    belong to `version`.
    """
    if not isinstance(openssl_name, str):
        raise TypeError(f"openssl_name must be str, not {type(openssl_name).__name__}")
    if isinstance(version, bool) or not isinstance(version, int):
        raise TypeError(f"version must be TlsVersion, not {type(version).__name__}")
    try:
        ver = TlsVersion(version)
    except ValueError:
        raise ValueError(
            f"unsupported TLS version 0x{version:04x}: only TLS 1.2 (0x0303) and "
            "TLS 1.3 (0x0304) can be offloaded"
        ) from None
    suite = SUITES.get(openssl_name)
    if suite is None:
        raise ValueError(
            f"unsupported cipher suite {openssl_name!r}: kernel TLS offload needs one of "
            f"{', '.join(SUITES)}"
        )
    if suite.version is not ver:
        raise ValueError(
            f"unsupported cipher suite {openssl_name!r} for {ver.name}: it is a "
            f"{suite.version.name} suite"
        )
    return suite
