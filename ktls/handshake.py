"""The TLS handshake is OpenSSL's; the record layer afterwards is ours.

`TlsHandshake` drives a pyOpenSSL server connection over memory BIOs (bytes
in, bytes out; no socket), as trio's SSLStream drives the stdlib's. OpenSSL's
key-log callback hands us the secrets in memory (never written to disk unless
the user asked for a key log); once the handshake is done, `established()`
derives the transmit keys (TLS 1.3 key schedule or the TLS 1.2 key block) and
the first sequence number for `ktls`, which is what OpenSSL does before
`setsockopt(TCP_TXTLS_ENABLE)`.

The sequence number is counted, not guessed: after the handshake OpenSSL has
already sent records under the new keys (TLS 1.3 NewSessionTicket messages;
TLS 1.2 the Finished message, and tickets before it). Every record the server
wrote is kept in `_server_records`; `established()` finds the first one that
opens under the server's application keys at sequence 0 and requires each
following record to open at the next number. The count is where KTLS starts,
and a record that failed to open would mean our keys are wrong, so the
connection is refused rather than garbled.

The receive side is handed over the same way. Client bytes reach OpenSSL one
record at a time (`receive_data` buffers, `advance` feeds up to the next
record boundary), so when the handshake completes nothing the client sent
after its Finished has been read by OpenSSL: `leftover()` returns it for
`ktls.control` (KTLS RX) or, with user-space TLS, for OpenSSL itself
(`UserTls`). The first receive sequence number is counted the same way: in
TLS 1.3 no record under the client's application keys was fed to OpenSSL
(0); in TLS 1.2 it is the number of client records after its
change_cipher_spec (its Finished: 1).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.bindings.openssl.binding import Binding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from OpenSSL import SSL

from ktls.errors import TlsError
from ktls.keylog import KeyLog
from ktls.keys import TrafficKeys, tls12_key_block, tls13_traffic_keys
from ktls.nonce import tls12_aad, tls12_gcm_nonce, tls13_aad, tls13_nonce
from ktls.suites import TLS12_CIPHER_LIST, TLS13_CIPHERSUITES, CipherSuite, TlsVersion, suite_for
from mbuf.ktls_hdr import ContentType

# What a client may send before its handshake completes. TLS allows records of one
# byte and OpenSSL accepts a message cut into any number of them, so the bound is
# on bytes (and, in the server, on time: --handshake-timeout), not records.
# OpenSSL's own limits on what a client sends (ssl/statem/statem_srvr.c): a
# ClientHello of at most CLIENT_HELLO_MAX_LENGTH bytes (its largest fields added
# up), twice in TLS 1.3 (again after a HelloRetryRequest), and in TLS 1.2 a
# ClientKeyExchange of at most CLIENT_KEY_EXCH_MAX_LENGTH; a Finished, a
# change_cipher_spec and an alert fit in the 1 KiB left over. Each record body
# byte may come with its own 5-byte record header.
CLIENT_HELLO_MAX_LENGTH: Final = 131396
CLIENT_KEY_EXCH_MAX_LENGTH: Final = 2048
_HS_HDR_LEN = 4  # handshake message type and 24-bit length
MAX_HANDSHAKE_MESSAGE_BYTES: Final = (
    2 * (_HS_HDR_LEN + CLIENT_HELLO_MAX_LENGTH) + _HS_HDR_LEN + CLIENT_KEY_EXCH_MAX_LENGTH + 1024
)
MAX_HANDSHAKE_BYTES: Final = (5 + 1) * MAX_HANDSHAKE_MESSAGE_BYTES  # 1 596 648 wire bytes

_VERSIONS = {"TLSv1.2": TlsVersion.TLS12, "TLSv1.3": TlsVersion.TLS13}
# The key log lines `established()` reads; a connection keeps no other secret.
_KEYLOG_NEEDED = (b"CLIENT_TRAFFIC_SECRET_0 ", b"SERVER_TRAFFIC_SECRET_0 ", b"CLIENT_RANDOM ")


@dataclass(frozen=True, slots=True)
class Established:
    version: TlsVersion
    suite: CipherSuite
    tx: TrafficKeys
    rx: TrafficKeys
    tx_seq: int  # first sequence number KTLS uses (rec_seq)
    tx_secret: bytes | None  # TLS 1.3 server application traffic secret (KeyUpdate)
    alpn: bytes | None
    rx_seq: int = 0  # first sequence number of the client's records (KTLS RX)
    rx_secret: bytes | None = None  # TLS 1.3 client application traffic secret


# Mozilla's server-side TLS recommendations, version 5.7 (the one sslyze's
# checker ships): key exchange over X25519, P-256 (prime256v1) or P-384 only,
# not OpenSSL's default list (X448, P-521, FFDHE and the hybrid ML-KEM groups).
# The TLS 1.2 suites are the ECDHE half of "intermediate" (no DHE: nomapd has no
# DH parameters), all of them AEADs that ktls.suites can model.
TLS_GROUPS: Final = "X25519:P-256:P-384"
# --tls-profile: name -> lowest protocol version (the highest is TLS 1.3 for both).
TLS_PROFILES: Final = {"intermediate": SSL.TLS1_2_VERSION, "modern": SSL.TLS1_3_VERSION}


def _set_groups(ctx: SSL.Context, groups: str) -> None:
    """SSL_CTX_set1_groups_list: pyOpenSSL has no method for it, cryptography's
    binding has it (as the older alias SSL_CTX_set1_curves_list) since 47."""
    lib = Binding().lib  # the instance makes sure OpenSSL is initialised
    set_list = getattr(lib, "SSL_CTX_set1_groups_list", None) or getattr(
        lib, "SSL_CTX_set1_curves_list", None
    )
    if set_list is None:
        raise SSL.Error("this cryptography has no SSL_CTX_set1_groups_list (needs 47 or later)")
    if set_list(ctx._context, groups.encode()) != 1:
        lib.ERR_clear_error()  # not to be reported with a later, unrelated error
        raise SSL.Error(f"OpenSSL refused the groups {groups}")


def make_server_context(
    cert: str,
    key: str,
    *,
    keylog_sink: Callable[[bytes], None] | None = None,
    alpn: tuple[bytes, ...] = (b"http/1.1",),
    profile: str = "intermediate",
) -> SSL.Context:
    """An OpenSSL server context for a Mozilla `profile` (TLS_PROFILES):
    "intermediate" TLS 1.2 and 1.3, "modern" TLS 1.3 only; AEAD suites and the
    TLS_GROUPS only, the client's order of preference, no compression or
    renegotiation. Raises SSL.Error for unusable files."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(TLS_PROFILES[profile])
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    _set_groups(ctx, TLS_GROUPS)
    ctx.set_cipher_list(TLS12_CIPHER_LIST.encode())
    ctx.set_tls13_ciphersuites(TLS13_CIPHERSUITES.encode())
    ctx.use_certificate_chain_file(cert)
    ctx.use_privatekey_file(key)
    ctx.check_privatekey()
    ctx.set_session_id(b"nomapd")

    def on_keylog(conn: SSL.Connection, line: bytes) -> None:
        if line.startswith(_KEYLOG_NEEDED):  # the handshake secrets are never used
            hs = conn.get_app_data()
            if isinstance(hs, TlsHandshake):
                hs.keylog.feed(line)
        if keylog_sink is not None:
            keylog_sink(line)

    ctx.set_keylog_callback(on_keylog)

    if alpn:

        def on_alpn(conn: SSL.Connection, offered: list[bytes]) -> bytes | Any:
            for proto in alpn:
                if proto in offered:
                    return proto
            return SSL.NO_OVERLAPPING_PROTOCOLS

        ctx.set_alpn_select_callback(on_alpn)
    return ctx


def split_records(data: bytes) -> tuple[list[tuple[int, bytes, bytes]], bytes]:
    """Split a byte stream into (type, 5-byte header, body) records plus a remainder."""
    out = []
    pos = 0
    while len(data) - pos >= 5:
        ctype, _, length = struct.unpack_from("!BHH", data, pos)
        if len(data) - pos - 5 < length:
            break
        out.append((ctype, data[pos : pos + 5], data[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    return out, data[pos:]


def open_record(
    suite: CipherSuite,
    keys: TrafficKeys,
    seqno: int,
    ctype: int,
    header: bytes,
    body: bytes,
    aead: AESGCM | ChaCha20Poly1305 | None = None,
) -> tuple[int, bytes]:
    """Decrypt one protected record; returns (inner content type, plaintext).
    Raises InvalidTag if it does not open with these keys at this number.
    `aead`: suite.aead(keys.key), when the caller opens several records."""
    if aead is None:
        aead = suite.aead(keys.key)
    if suite.version == TlsVersion.TLS13:
        plain = aead.decrypt(tls13_nonce(keys.iv, seqno), body, tls13_aad(len(body)))
        stripped = plain.rstrip(b"\x00")
        if not stripped:
            raise InvalidTag
        return stripped[-1], stripped[:-1]
    if suite.explicit_nonce_len:
        n = suite.explicit_nonce_len
        nonce = tls12_gcm_nonce(keys.iv, body[:n])
        ct = body[n:]
    else:
        nonce = tls13_nonce(keys.iv, seqno)
        ct = body
    plain = aead.decrypt(nonce, ct, tls12_aad(seqno, ctype, len(ct) - suite.tag_len))
    return ctype, plain


class TlsHandshake:
    """One server-side handshake over memory BIOs."""

    def __init__(self, ctx: SSL.Context, max_bytes: int = MAX_HANDSHAKE_BYTES) -> None:
        self.keylog = KeyLog()
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_app_data(self)
        self.conn.set_accept_state()
        self._out = bytearray()
        self._server_stream = bytearray()
        self._in = bytearray()  # client bytes not yet given to OpenSSL
        self._rec_left = 0  # bytes of the current client record still to give
        self._given = 0  # client bytes given to OpenSSL
        self._max_bytes = max_bytes  # ... at most (a test lowers it)
        # TLS 1.2's first receive sequence number: the client's records after its
        # last change_cipher_spec (-1: none seen yet).
        self._after_ccs = -1
        self.done = False
        self._established = False

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._in += data

    def advance(self) -> bool:
        """Run the handshake as far as the input allows. True when complete.
        Raises TlsError; data_to_send() then holds OpenSSL's alert, if any."""
        while True:
            try:
                self.conn.do_handshake()
                self.done = True
            except SSL.WantReadError:
                pass
            except SSL.Error as e:
                self._collect()
                raise TlsError(f"TLS handshake failed: {_ssl_reason(e)}") from e
            self._collect()
            if self.done or not self._feed():
                return self.done

    def _feed(self) -> bool:
        """Give OpenSSL client bytes; False if there is nothing to give.

        Before OpenSSL has answered, nothing the client sent can complete the
        handshake (its first flight; there is no 0-RTT), so every record there
        goes at once. After that, one record at a time, so that OpenSSL never
        reads past the client's Finished. More than MAX_HANDSHAKE_BYTES from
        the client, however many records they come in, is refused."""
        buf = self._in
        bulk = not self._server_stream
        end = 0  # bytes of buf to give
        left = self._rec_left  # of the record being given
        while True:
            if left:
                take = min(left, len(buf) - end)
                end += take
                left -= take
                if left or not bulk:
                    break
            if len(buf) - end < 5:
                break
            if buf[end] == ContentType.CHANGE_CIPHER_SPEC:
                self._after_ccs = 0
            elif self._after_ccs >= 0:
                self._after_ccs += 1
            left = 5 + ((buf[end + 3] << 8) | buf[end + 4])
        if self._given + end > self._max_bytes:
            raise TlsError(f"handshake longer than {self._max_bytes} bytes from the client")
        if not end:
            return False
        self._given += end
        self._rec_left = left
        self.conn.bio_write(bytes(buf[:end]))
        del buf[:end]
        return True

    def leftover(self) -> bytes:
        """What the client sent after the handshake (for the record layer)."""
        out = bytes(self._in)
        self._in.clear()
        return out

    def _collect(self) -> None:
        while True:
            try:
                chunk = self.conn.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            self._out += chunk
            self._server_stream += chunk

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def established(self) -> Established:
        """Keys and first sequence number for the send side; wipes the key log."""
        if not self.done:
            raise TlsError("established() before the handshake finished")
        if self._established:
            raise TlsError("established() called twice: the key log is already wiped")
        self._established = True
        vname = self.conn.get_protocol_version_name()
        version = _VERSIONS.get(vname)
        if version is None:
            raise TlsError(f"unsupported protocol version {vname}")
        cipher = self.conn.get_cipher_name()
        if cipher is None:
            raise TlsError("no cipher negotiated")
        suite = suite_for(cipher, version)
        tx_secret: bytes | None = None
        rx_secret: bytes | None = None
        if version == TlsVersion.TLS13:
            tx_secret = self.keylog.secret("SERVER_TRAFFIC_SECRET_0")
            rx_secret = self.keylog.secret("CLIENT_TRAFFIC_SECRET_0")
            tx = tls13_traffic_keys(suite, tx_secret)
            rx = tls13_traffic_keys(suite, rx_secret)
            rx_seq = 0
        else:
            master = self.keylog.secret("CLIENT_RANDOM")
            crandom = self.conn.client_random()
            srandom = self.conn.server_random()
            if crandom is None or srandom is None:
                raise TlsError("handshake randoms unavailable")
            block = tls12_key_block(suite, master, crandom, srandom)
            tx, rx = block.server, block.client
            rx_seq = self._after_ccs
            if rx_seq < 1:
                raise TlsError("TLS 1.2 handshake ended without the client's Finished")
        seq = self._count_sent(suite, tx)
        self.keylog.wipe()
        alpn = self.conn.get_alpn_proto_negotiated() or None
        return Established(version, suite, tx, rx, seq, tx_secret, alpn, rx_seq, rx_secret)

    def _count_sent(self, suite: CipherSuite, tx: TrafficKeys) -> int:
        records, rest = split_records(bytes(self._server_stream))
        if rest:
            raise TlsError("OpenSSL left a partial record after the handshake")
        last_ccs = max(
            (i for i, r in enumerate(records) if r[0] == ContentType.CHANGE_CIPHER_SPEC), default=-1
        )
        protected = records[last_ccs + 1 :]
        aead = suite.aead(tx.key)
        seq = 0
        for ctype, header, body in protected:
            try:
                open_record(suite, tx, seq, ctype, header, body, aead)
            except InvalidTag:
                if seq:
                    raise TlsError(f"record {seq} after the handshake does not open") from None
                continue  # a handshake-key record before the application keys
            seq += 1
        if suite.version == TlsVersion.TLS12 and seq == 0:
            raise TlsError("no Finished under the server write key: key block mismatch")
        return seq


class UserTls:
    """OpenSSL keeps both directions after the handshake: the --no-ktls baseline.

    It decrypts what the client sends (`receive_data`) and encrypts what the
    server writes (`encrypt`); its own records (alerts, its KeyUpdate answers)
    wait in `outgoing` for the caller to write. Created with the client bytes
    that followed the handshake (`TlsHandshake.leftover()`).
    """

    def __init__(self, conn: SSL.Connection, leftover: bytes = b"") -> None:
        self.conn = conn
        self.closed = False
        self.outgoing = bytearray()
        if leftover:
            conn.bio_write(leftover)

    def _drain(self) -> bytes:
        out = bytearray()
        while True:
            try:
                chunk = self.conn.bio_read(1 << 20)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def receive_data(self, data: bytes) -> bytes:
        """Feed ciphertext; return the plaintext it completes (b"" if none).
        Sets `closed` on close_notify. Raises TlsError on a bad record."""
        if data:
            self.conn.bio_write(data)
        out = bytearray()
        while not self.closed:
            try:
                chunk = self.conn.recv(65536)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.closed = True
                break
            except SSL.Error as e:
                self.outgoing += self._drain()  # OpenSSL's alert, if it made one
                raise TlsError(f"TLS record error: {_ssl_reason(e)}") from e
            if not chunk:
                break
            out += chunk
        self.outgoing += self._drain()
        return bytes(out)

    def take_outgoing(self) -> bytes:
        out = bytes(self.outgoing)
        self.outgoing.clear()
        return out

    def encrypt(self, data: bytes | memoryview) -> bytes:
        """SSL_write into the memory BIO; returns the records."""
        if len(data):
            self.conn.sendall(data)
        return self.take_outgoing() + self._drain()

    def shutdown(self) -> bytes:
        """SSL_shutdown: our close_notify."""
        with contextlib.suppress(SSL.Error):
            self.conn.shutdown()
        return self.take_outgoing() + self._drain()


def _ssl_reason(e: SSL.Error) -> str:
    try:
        parts = [str(x[2]) for x in e.args[0]]
        return "; ".join(parts) or repr(e)
    except (IndexError, TypeError):
        return repr(e)
