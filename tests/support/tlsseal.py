"""TLS records sealed and opened by the tests, independently of ktls.

Theory of operation
-------------------
The tests check ktls's record layer (and, in integration tests, the server's)
against this module, so nothing here uses ktls's record or key code: the AEAD
constructions are written from RFC 8446 5.2/5.3 (TLS 1.3), RFC 5288 3 (TLS 1.2
AES-GCM: salt || explicit nonce, explicit = sequence number) and RFC 7905 2
(ChaCha20-Poly1305: iv XOR sequence number) with `cryptography` directly, and
keys from RFC 8446 7.1-7.3 (HKDF-Expand-Label) and RFC 5246 5/6.3 (P_hash key
block). Only the suite table (`ktls.suites`: key lengths, the AEAD class) is
shared.

`Sealer` is one direction of a connection as a peer runs it: it seals records
(well-formed or not: padding, another outer type) and opens them, counting
sequence numbers, and moves to the next TLS 1.3 traffic secret on KeyUpdate.
`open_record` and `parse_records` read a captured stream record by record.
"""

from __future__ import annotations

import hmac
import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from ktls.keys import TrafficKeys
from ktls.suites import CipherSuite, TlsVersion

# RFC 8446 5.1 / RFC 5246 6.2.1: content types.
CT_CHANGE_CIPHER_SPEC: Final = 20
CT_ALERT: Final = 21
CT_HANDSHAKE: Final = 22
CT_APPLICATION_DATA: Final = 23
# RFC 8446 4 / RFC 5246 7.4: handshake message types used by the tests.
HT_CLIENT_HELLO: Final = 1
HT_NEW_SESSION_TICKET: Final = 4
HT_KEY_UPDATE: Final = 24
MAX_PLAINTEXT: Final = 1 << 14  # RFC 8446 5.1 / RFC 5246 6.2.1: 2^14
LEGACY_VERSION: Final = 0x0303
TAG_LEN: Final = 16
_HEADER: Final = struct.Struct("!BHH")  # type, legacy_record_version, length


def reframe(data: bytes | bytearray, size: int = 1) -> bytes:
    """The same records' bodies cut into records of at most `size` bytes (TLS allows
    one), each under its original record's type and version."""
    out = bytearray()
    for header, body in parse_records(data):
        for i in range(0, len(body), size):
            piece = body[i : i + size]
            out += header[:3] + struct.pack("!H", len(piece)) + piece
    return bytes(out)


def parse_records(data: bytes | bytearray) -> list[tuple[bytes, bytes]]:
    """(5-byte header, body) of each record; the stream must end on a record boundary."""
    out = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 5, "stream ends inside a record header"
        (length,) = struct.unpack_from("!H", data, pos + 3)
        assert len(data) - pos - 5 >= length, "stream ends inside a record body"
        out.append((bytes(data[pos : pos + 5]), bytes(data[pos + 5 : pos + 5 + length])))
        pos += 5 + length
    return out


def xor_nonce(iv: bytes, seqno: int) -> bytes:
    """RFC 8446 5.3 / RFC 7905 2: the 12-byte IV XOR the padded sequence number."""
    return bytes(a ^ b for a, b in zip(iv, seqno.to_bytes(12, "big"), strict=True))


def open_record(
    suite: CipherSuite, keys: TrafficKeys, seqno: int, header: bytes, body: bytes
) -> tuple[int, bytes]:
    """Decrypt one record: (content type, plaintext). Raises InvalidTag, or
    ValueError for a TLS 1.3 record without a content type."""
    aead = suite.aead(keys.key)
    if suite.version is TlsVersion.TLS13:
        inner = aead.decrypt(xor_nonce(keys.iv, seqno), body, header).rstrip(b"\0")
        if not inner:
            raise ValueError("TLSInnerPlaintext without a content type (all zeros)")
        return inner[-1], inner[:-1]
    if suite.explicit_nonce_len:  # AES-GCM: salt || explicit nonce carried in the record
        nonce = keys.iv + body[:8]
        ct = body[8:]
    else:  # ChaCha20-Poly1305: iv XOR seqno, as in TLS 1.3
        nonce = xor_nonce(keys.iv, seqno)
        ct = body
    if len(ct) < TAG_LEN:
        raise InvalidTag
    aad = seqno.to_bytes(8, "big") + header[:3] + (len(ct) - TAG_LEN).to_bytes(2, "big")
    return header[0], aead.decrypt(nonce, ct, aad)


def open_stream(
    suite: CipherSuite, keys: TrafficKeys, seqno: int, wire: bytes | bytearray
) -> bytes:
    """The application data of a stream of records numbered from `seqno`."""
    out = bytearray()
    for i, (header, body) in enumerate(parse_records(wire)):
        ctype, text = open_record(suite, keys, seqno + i, header, body)
        assert ctype == CT_APPLICATION_DATA, f"record {seqno + i} has type {ctype}"
        out += text
    return bytes(out)


def plaintext_len(suite: CipherSuite, body: bytes) -> int:
    """Payload bytes a record of this suite carries (TLS 1.3: no padding is used)."""
    return len(body) - suite.tls_hlen + 5 - suite.tls_tlen


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


def hkdf_expand_label(
    hash_alg: type[hashes.HashAlgorithm], secret: bytes, label: bytes, length: int
) -> bytes:
    """HKDF-Expand-Label(secret, label, "", length) of RFC 8446 7.1."""
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    return HKDFExpand(hash_alg(), length, info).derive(secret)


def tls13_keys(suite: CipherSuite, secret: bytes) -> TrafficKeys:
    """A TLS 1.3 traffic secret's record key and IV (RFC 8446 7.3)."""
    return TrafficKeys(
        hkdf_expand_label(suite.hash, secret, b"key", suite.key_len),
        hkdf_expand_label(suite.hash, secret, b"iv", 12),
    )


def tls13_next_secret(suite: CipherSuite, secret: bytes) -> bytes:
    """application_traffic_secret_N+1 (RFC 8446 7.2)."""
    return hkdf_expand_label(suite.hash, secret, b"traffic upd", len(secret))


def tls12_keys(
    suite: CipherSuite, master: bytes, client_random: bytes, server_random: bytes
) -> tuple[TrafficKeys, TrafficKeys]:
    """The (client, server) write keys and IVs of a TLS 1.2 AEAD suite (RFC 5246
    5 and 6.3: P_hash over "key expansion"; client key, server key, client IV,
    server IV)."""
    seed = b"key expansion" + server_random + client_random
    k, i = suite.key_len, suite.fixed_iv_len
    block = b""
    a = seed
    while len(block) < 2 * (k + i):
        a = hmac.digest(master, a, suite.hash().name)
        block += hmac.digest(master, a + seed, suite.hash().name)
    return (
        TrafficKeys(block[:k], block[2 * k : 2 * k + i]),
        TrafficKeys(block[k : 2 * k], block[2 * k + i : 2 * (k + i)]),
    )


def key_update(request: int) -> bytes:
    """A KeyUpdate handshake message (RFC 8446 4.6.3)."""
    return bytes((HT_KEY_UPDATE, 0, 0, 1, request))


# ---------------------------------------------------------------------------
# One direction of a connection
# ---------------------------------------------------------------------------


class Sealer:
    """One direction's records as a peer writes (or reads) them: sequence numbers
    counted, TLS 1.3 padding on request, KeyUpdate moving to the next secret
    (`epoch` counts the moves)."""

    def __init__(
        self, suite: CipherSuite, keys: TrafficKeys, seqno: int = 0, secret: bytes | None = None
    ) -> None:
        self.suite = suite
        self.keys = keys
        self.seqno = seqno
        self.secret = secret  # TLS 1.3 traffic secret, for next_keys()
        self.epoch = 0

    def inner(self, inner: bytes, outer_type: int = CT_APPLICATION_DATA) -> bytes:
        """TLS 1.3: seal a TLSInnerPlaintext as given (content, type, zeros)."""
        assert self.suite.version is TlsVersion.TLS13
        header = _HEADER.pack(outer_type, LEGACY_VERSION, len(inner) + TAG_LEN)
        body = self.suite.aead(self.keys.key).encrypt(
            xor_nonce(self.keys.iv, self.seqno), inner, header
        )
        self.seqno += 1
        return header + body

    def record(
        self, ctype: int, payload: bytes, pad: int = 0, outer_type: int | None = None
    ) -> bytes:
        """A record of `ctype` carrying `payload`. TLS 1.3: `pad` zero bytes after
        the inner content type, and the header's type is application_data unless
        `outer_type` says otherwise; TLS 1.2: the AAD authenticates `ctype` while
        the header carries `outer_type` if given."""
        if self.suite.version is TlsVersion.TLS13:
            inner = payload + bytes((ctype,)) + bytes(pad)
            return self.inner(inner, CT_APPLICATION_DATA if outer_type is None else outer_type)
        if pad:
            raise ValueError("TLS 1.2 records have no padding")
        aead = self.suite.aead(self.keys.key)
        aad = self.seqno.to_bytes(8, "big") + _HEADER.pack(ctype, LEGACY_VERSION, len(payload))
        if self.suite.explicit_nonce_len:  # RFC 5288 3: salt || explicit, explicit = seqno
            explicit = self.seqno.to_bytes(8, "big")
            body = explicit + aead.encrypt(self.keys.iv + explicit, payload, aad)
        else:  # RFC 7905 2
            body = aead.encrypt(xor_nonce(self.keys.iv, self.seqno), payload, aad)
        self.seqno += 1
        header = _HEADER.pack(
            ctype if outer_type is None else outer_type, LEGACY_VERSION, len(body)
        )
        return header + body

    def data(self, payload: bytes, pad: int = 0) -> bytes:
        return self.record(CT_APPLICATION_DATA, payload, pad)

    def alert(self, level: int, description: int, pad: int = 0) -> bytes:
        return self.record(CT_ALERT, bytes((level, description)), pad)

    def open(self, record: bytes, seqno: int | None = None) -> tuple[int, bytes]:
        """(content type, plaintext) of one whole record (header and body) at
        `seqno`, or at the next sequence number, which it then consumes."""
        n = self.seqno if seqno is None else seqno
        ctype, text = open_record(self.suite, self.keys, n, record[:5], record[5:])
        if seqno is None:
            self.seqno += 1
        return ctype, bytes(text)

    def next_keys(self) -> None:
        """Move to the next traffic secret (after a KeyUpdate), at sequence number 0."""
        assert self.secret is not None, "KeyUpdate is TLS 1.3 only"
        self.secret = tls13_next_secret(self.suite, self.secret)
        self.keys = tls13_keys(self.suite, self.secret)
        self.seqno = 0
        self.epoch += 1

    def key_update(self, request: int = 0, pad: int = 0) -> bytes:
        """A KeyUpdate record under the current keys; later records use the next."""
        out = self.record(CT_HANDSHAKE, key_update(request), pad)
        self.next_keys()
        return out
