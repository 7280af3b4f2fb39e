"""A TLS client whose record layer belongs to the test once OpenSSL's handshake is done.

Theory of operation
-------------------
`RawTlsClient` connects a TCP socket to a real server and runs the handshake
with a pyOpenSSL client `Connection` over memory BIOs. The server's bytes are
handed to OpenSSL one whole record at a time, and the loop stops the moment
`do_handshake()` succeeds, so OpenSSL never consumes a byte the server sent
after its last handshake record: TLS 1.3 NewSessionTickets and everything the
server sends later stay in our own buffer. OpenSSL's key-log callback gives
the secrets to this object in memory (nothing is ever written to disk), and
the keys of both directions are derived by tests/support/tlsseal.py, not by
ktls:

* TLS 1.3 (RFC 8446 7.3): CLIENT_/SERVER_TRAFFIC_SECRET_0 expanded with
  `tls13_keys`; KeyUpdate (7.2) moves a direction to the next secret
  (`Sealer.next_keys`) with its sequence number back at 0.
* TLS 1.2 (RFC 5246 6.3): the master secret (CLIENT_RANDOM line) and both
  randoms cut into the key block by `tls12_keys`.

The first sequence number of each direction is counted, not assumed (as
`ktls.handshake.TlsHandshake._count_sent` does for the server): of the records
a side wrote after its last ChangeCipherSpec, those that open under that
side's application keys at 0, 1, ... were already sent under them. TLS 1.2:
the Finished, so application data starts at 1 in both directions. TLS 1.3:
the Finished is under the handshake keys, so both start at 0 (the server's
NewSessionTickets then use 0, 1, ... and arrive through `read_records`).

From then on the test frames records itself: `seal_record`/`send_record`
build any record, well-formed or not (padding, corrupted tag, another outer
type, a raw body), and `read_records` opens what the server sends, following
server KeyUpdates. Each direction is a `tlsseal.Sealer`, the tests' one
independent record layer (RFC 8446 5.2/5.3, RFC 5288 3 and RFC 7905 2 with
`cryptography` directly), so the server's record layer is checked against an
implementation that shares no code with it.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from OpenSSL import SSL

from ktls.suites import SUITES, TlsVersion
from tests.support.tlsseal import (
    CT_ALERT,
    CT_APPLICATION_DATA,
    CT_CHANGE_CIPHER_SPEC,
    CT_HANDSHAKE,
    HT_CLIENT_HELLO,
    HT_KEY_UPDATE,
    HT_NEW_SESSION_TICKET,
    LEGACY_VERSION,
    MAX_PLAINTEXT,
    Sealer,
    tls12_keys,
    tls13_keys,
)

__all__ = [
    "ALERT_FATAL",
    "ALERT_WARNING",
    "BAD_RECORD_MAC",
    "CLOSE_NOTIFY",
    "CT_ALERT",
    "CT_APPLICATION_DATA",
    "CT_CHANGE_CIPHER_SPEC",
    "CT_HANDSHAKE",
    "HANDSHAKE_FAILURE",
    "HT_CLIENT_HELLO",
    "HT_KEY_UPDATE",
    "HT_NEW_SESSION_TICKET",
    "MAX_PLAINTEXT",
    "NO_RENEGOTIATION",
    "RECORD_OVERFLOW",
    "TLS12_MAX_CIPHERTEXT",
    "TLS13_MAX_CIPHERTEXT",
    "UNEXPECTED_MESSAGE",
    "HandshakeError",
    "RawTlsClient",
    "ReadResult",
    "Record",
]

# RFC 8446 6: alert levels and descriptions.
ALERT_WARNING: Final = 1
ALERT_FATAL: Final = 2
CLOSE_NOTIFY: Final = 0
UNEXPECTED_MESSAGE: Final = 10
BAD_RECORD_MAC: Final = 20
RECORD_OVERFLOW: Final = 22
HANDSHAKE_FAILURE: Final = 40
NO_RENEGOTIATION: Final = 100
# Record size limits: RFC 8446 5.2 and RFC 5246 6.2.3.
TLS13_MAX_CIPHERTEXT: Final = (1 << 14) + 256
TLS12_MAX_CIPHERTEXT: Final = (1 << 14) + 2048

_HEADER: Final = struct.Struct("!BHH")  # type, legacy_record_version, length
_RECV_SIZE: Final = 1 << 16
_PROTOCOL_NAMES: Final = {TlsVersion.TLS12: "TLSv1.2", TlsVersion.TLS13: "TLSv1.3"}
_OPENSSL_VERSIONS: Final = {
    TlsVersion.TLS12: SSL.TLS1_2_VERSION,
    TlsVersion.TLS13: SSL.TLS1_3_VERSION,
}


class HandshakeError(Exception):
    """OpenSSL's handshake failed, timed out, or its keys did not open its records."""


@dataclass(frozen=True, slots=True)
class Record:
    """One record the server sent.

    `ctype` is the content type (TLS 1.3: the inner one), `data` the plaintext;
    `protected` is False for a record that did not open but looked like a
    plaintext alert (a server bug worth seeing, not hiding). `epoch` counts
    server KeyUpdates before this record; `seq` is its sequence number.
    """

    ctype: int
    data: bytes
    protected: bool
    epoch: int
    seq: int


@dataclass(slots=True)
class ReadResult:
    """What `read_records` saw: the records, and how the stream ended.

    `closed`: the server closed the TCP connection (EOF or reset); `reset`:
    by RST; `timed_out`: the deadline passed first; `error`: a record that
    could not be parsed or opened (reading stops there).
    """

    records: list[Record] = field(default_factory=list)
    closed: bool = False
    reset: bool = False
    timed_out: bool = False
    error: str | None = None

    def app_data(self) -> bytes:
        return b"".join(r.data for r in self.records if r.ctype == CT_APPLICATION_DATA)

    def alerts(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for r in self.records:
            if r.ctype == CT_ALERT:
                out.extend((r.data[i], r.data[i + 1]) for i in range(0, len(r.data) - 1, 2))
        return out

    def without_tickets(self) -> list[Record]:
        """Every record except those holding only NewSessionTickets."""
        return [r for r in self.records if not _only_tickets(r)]

    def summary(self) -> str:
        """A one-line description for assertion messages."""
        kinds = [
            f"{_TYPE_NAMES.get(r.ctype, r.ctype)}[{len(r.data)}]"
            + ("" if r.protected else "!plain")
            + (f"@e{r.epoch}" if r.epoch else "")
            for r in self.records
        ]
        ends = "closed" if self.closed else "timed out" if self.timed_out else "open"
        if self.reset:
            ends += " (reset)"
        err = f", error: {self.error}" if self.error else ""
        return f"records {kinds}, alerts {self.alerts()}, {ends}{err}"


_TYPE_NAMES: Final = {
    CT_CHANGE_CIPHER_SPEC: "ccs",
    CT_ALERT: "alert",
    CT_HANDSHAKE: "hs",
    CT_APPLICATION_DATA: "app",
}


def _only_tickets(r: Record) -> bool:
    if r.ctype != CT_HANDSHAKE:
        return False
    msgs, rest = split_handshake(r.data)
    return not rest and bool(msgs) and all(t == HT_NEW_SESSION_TICKET for t, _ in msgs)


def split_handshake(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Handshake messages (type, body) in `data`, and an incomplete remainder."""
    out = []
    pos = 0
    while len(data) - pos >= 4:
        length = int.from_bytes(data[pos + 1 : pos + 4], "big")
        if len(data) - pos - 4 < length:
            break
        out.append((data[pos], data[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return out, data[pos:]


def handshake_message(msg_type: int, body: bytes) -> bytes:
    """Handshake header (type, uint24 length) in front of `body`."""
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def key_update_message(requested: bool) -> bytes:
    """RFC 8446 4.6.3: KeyUpdate { KeyUpdateRequest request_update; }."""
    return handshake_message(HT_KEY_UPDATE, bytes([1 if requested else 0]))


def _split_records(data: bytes | bytearray) -> tuple[list[bytes], int]:
    """Whole records (header and body) at the front of `data`, and bytes used."""
    out = []
    pos = 0
    while len(data) - pos >= 5:
        (length,) = struct.unpack_from("!H", data, pos + 3)
        if len(data) - pos - 5 < length:
            break
        out.append(bytes(data[pos : pos + 5 + length]))
        pos += 5 + length
    return out, pos


def _count_protected(direction: Sealer, stream: bytes) -> int:
    """Records of `stream` after its last ChangeCipherSpec that open under the
    direction's application keys at 0, 1, ...: the first free sequence number."""
    records, used = _split_records(stream)
    if used != len(stream):
        raise HandshakeError("handshake stream ends inside a record")
    last_ccs = max((i for i, r in enumerate(records) if r[0] == CT_CHANGE_CIPHER_SPEC), default=-1)
    seq = 0
    for rec in records[last_ccs + 1 :]:
        try:
            direction.open(rec, seq)
        except (InvalidTag, ValueError):
            if seq:
                raise HandshakeError(f"record {seq} after the handshake does not open") from None
            continue  # TLS 1.3: a handshake-key record (the Finished)
        seq += 1
    return seq


class RawTlsClient:
    """A TCP connection whose TLS record layer is driven by the test.

    `RawTlsClient(port, TlsVersion.TLS13, "TLS_AES_128_GCM_SHA256")` connects
    and completes the handshake (HandshakeError otherwise). Every socket read
    has a deadline; `timeout` bounds the handshake.
    """

    def __init__(
        self,
        port: int,
        version: TlsVersion,
        cipher: str,
        *,
        host: str = "127.0.0.1",
        server_name: str = "localhost",
        timeout: float = 10.0,
    ) -> None:
        suite = SUITES[cipher]
        if suite.version is not version:
            raise ValueError(f"{cipher} is not a {version.name} suite")
        self.version = version
        self.suite = suite
        self._keylog: dict[str, bytearray] = {}
        self._rbuf = bytearray()  # received, not yet parsed
        self._hs_buf = b""  # server handshake bytes of an incomplete message
        self.eof = False
        self.reset = False
        self.server_requested_update = 0  # KeyUpdate(update_requested) from the server
        self.sock = socket.create_connection((host, port), timeout=timeout)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.tx, self.rx = self._handshake(server_name, cipher, timeout)
        except BaseException:
            self.sock.close()
            raise

    # -- handshake -----------------------------------------------------------

    def _on_keylog(self, conn: object, line: bytes) -> None:
        label, _, secret = line.strip().split(b" ")
        self._keylog[label.decode()] = bytearray.fromhex(secret.decode())

    def _secret(self, label: str) -> bytes:
        try:
            return bytes(self._keylog[label])
        except KeyError:
            raise HandshakeError(f"OpenSSL logged no {label}") from None

    def _handshake(self, server_name: str, cipher: str, timeout: float) -> tuple[Sealer, Sealer]:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(_OPENSSL_VERSIONS[self.version])
        ctx.set_max_proto_version(_OPENSSL_VERSIONS[self.version])
        if self.version is TlsVersion.TLS13:
            ctx.set_tls13_ciphersuites(cipher.encode())
        else:
            ctx.set_cipher_list(cipher.encode())
        ctx.set_verify(SSL.VERIFY_NONE)  # the test servers' certificates are self-signed
        ctx.set_keylog_callback(self._on_keylog)
        conn = SSL.Connection(ctx, None)
        conn.set_connect_state()
        conn.set_tlsext_host_name(server_name.encode())
        client_stream = bytearray()
        server_stream = bytearray()  # what OpenSSL was given
        deadline = time.monotonic() + timeout
        while True:
            done = False
            try:
                conn.do_handshake()
                done = True
            except SSL.WantReadError:
                pass
            except SSL.Error as e:
                self._flush_openssl(conn, client_stream)
                raise HandshakeError(f"handshake failed: {e!r}") from e
            self._flush_openssl(conn, client_stream)
            if done:
                break
            record = self._next_raw_record(deadline)
            if record is None:
                raise HandshakeError("the server closed or timed out during the handshake")
            server_stream += record
            conn.bio_write(record)  # one whole record: OpenSSL never reads past the end
        if conn.get_protocol_version_name() != _PROTOCOL_NAMES[self.version]:
            raise HandshakeError(f"negotiated {conn.get_protocol_version_name()}")
        if conn.get_cipher_name() != cipher:
            raise HandshakeError(f"negotiated {conn.get_cipher_name()}, not {cipher}")
        try:
            if self.version is TlsVersion.TLS13:
                c_secret = self._secret("CLIENT_TRAFFIC_SECRET_0")
                s_secret = self._secret("SERVER_TRAFFIC_SECRET_0")
                tx = Sealer(self.suite, tls13_keys(self.suite, c_secret), 0, c_secret)
                rx = Sealer(self.suite, tls13_keys(self.suite, s_secret), 0, s_secret)
            else:
                client_random = conn.client_random()
                server_random = conn.server_random()
                if client_random is None or server_random is None:
                    raise HandshakeError("handshake randoms unavailable")
                client_keys, server_keys = tls12_keys(
                    self.suite, self._secret("CLIENT_RANDOM"), client_random, server_random
                )
                tx = Sealer(self.suite, client_keys)
                rx = Sealer(self.suite, server_keys)
        finally:
            for value in self._keylog.values():
                value[:] = bytes(len(value))
            self._keylog.clear()
        tx.seqno = _count_protected(tx, bytes(client_stream))
        rx.seqno = _count_protected(rx, bytes(server_stream))
        if self.version is TlsVersion.TLS12 and (tx.seqno, rx.seqno) != (1, 1):
            raise HandshakeError(
                f"TLS 1.2: expected one Finished each way, counted {tx.seqno, rx.seqno}"
            )
        if self.version is TlsVersion.TLS13 and (tx.seqno, rx.seqno) != (0, 0):
            raise HandshakeError(
                f"TLS 1.3: application records before the end: {tx.seqno, rx.seqno}"
            )
        self.handshake_records_in = len(_split_records(server_stream)[0])
        return tx, rx

    def _flush_openssl(self, conn: Any, client_stream: bytearray) -> None:
        while True:
            try:
                chunk: bytes = conn.bio_read(_RECV_SIZE)
            except SSL.WantReadError:
                return
            if not chunk:
                return
            client_stream += chunk
            self.sock.sendall(chunk)

    # -- receiving -----------------------------------------------------------

    def _recv_some(self, deadline: float) -> bool:
        """One recv into the buffer; False at EOF, reset or deadline."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(_RECV_SIZE)
        except TimeoutError:
            return False
        except OSError as e:
            if e.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
                raise
            self.eof = self.reset = True
            return False
        if not chunk:
            self.eof = True
            return False
        self._rbuf += chunk
        return True

    def _next_raw_record(self, deadline: float) -> bytes | None:
        """The next whole record from the socket; None at EOF, reset or deadline."""
        while True:
            if len(self._rbuf) >= 5:
                end = 5 + int.from_bytes(self._rbuf[3:5], "big")
                if len(self._rbuf) >= end:
                    rec = bytes(self._rbuf[:end])
                    del self._rbuf[:end]
                    return rec
            if not self._recv_some(deadline):
                return None

    def read_records(
        self, timeout: float, until: Callable[[ReadResult], bool] | None = None
    ) -> ReadResult:
        """Open the server's records until `until(result)` holds, the connection
        closes, or `timeout` seconds pass. TLS 1.3 KeyUpdates from the server
        switch the read keys after the record that ends them."""
        res = ReadResult()
        deadline = time.monotonic() + timeout
        while True:
            if until is not None and until(res):
                return res
            rec = self._next_raw_record(deadline)
            if rec is None:
                res.closed, res.reset = self.eof, self.reset
                res.timed_out = not self.eof
                if self.eof and self._rbuf:
                    res.error = f"stream ends inside a record ({len(self._rbuf)} bytes left)"
                return res
            err = self._open_one(rec, res)
            if err is not None:
                res.error = err
                return res

    def _open_one(self, rec: bytes, res: ReadResult) -> str | None:
        seq, epoch = self.rx.seqno, self.rx.epoch
        try:
            ctype, plain = self.rx.open(rec)
        except (InvalidTag, ValueError) as e:
            if rec[0] == CT_ALERT and len(rec) == 7:  # a plaintext alert: show it, don't hide it
                res.records.append(Record(CT_ALERT, rec[5:], False, epoch, seq))
                return None
            what = "does not open" if isinstance(e, InvalidTag) else str(e)
            return f"server record type {rec[0]} len {len(rec) - 5} at seq {seq}: {what}"
        res.records.append(Record(ctype, plain, True, epoch, seq))
        if ctype != CT_HANDSHAKE or self.version is not TlsVersion.TLS13:
            return None
        msgs, self._hs_buf = split_handshake(self._hs_buf + plain)
        for i, (msg_type, body) in enumerate(msgs):
            if msg_type != HT_KEY_UPDATE:
                continue
            if i != len(msgs) - 1 or self._hs_buf:
                return "server KeyUpdate not at the end of its record (RFC 8446 5.1)"
            if body not in (b"\x00", b"\x01"):
                return f"malformed server KeyUpdate {body.hex()}"
            self.server_requested_update += body == b"\x01"
            self.rx.next_keys()
        return None

    def read_response(self, timeout: float = 10.0) -> ReadResult:
        """Records up to the end of one complete HTTP response (Content-Length)."""
        return self.read_records(
            timeout, lambda r: parse_response(r.app_data()) is not None or r.error is not None
        )

    # -- sending -------------------------------------------------------------

    def seal_record(
        self,
        inner_type: int,
        payload: bytes,
        *,
        padding: int = 0,
        outer_type: int | None = None,
    ) -> bytes:
        """A protected record under the current write keys; consumes a sequence
        number. TLS 1.3: `padding` zeros follow the inner content type and the
        outer type defaults to application_data; TLS 1.2: the AAD authenticates
        `inner_type` while the header carries `outer_type` if given."""
        return self.tx.record(inner_type, payload, padding, outer_type)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_record(
        self,
        inner_type: int,
        payload: bytes,
        *,
        padding: int = 0,
        corrupt: bool = False,
        outer_type: int | None = None,
        raw_body: bytes | None = None,
    ) -> bytes:
        """Send one record and return it. `corrupt` flips a bit of the tag;
        `raw_body` sends that body unprotected under a header of `outer_type`
        (default: application_data in TLS 1.3, `inner_type` in TLS 1.2) and
        consumes no sequence number."""
        if raw_body is not None:
            if outer_type is None:
                is13 = self.version is TlsVersion.TLS13
                outer_type = CT_APPLICATION_DATA if is13 else inner_type
            record = _HEADER.pack(outer_type, LEGACY_VERSION, len(raw_body)) + raw_body
        else:
            record = self.seal_record(inner_type, payload, padding=padding, outer_type=outer_type)
            if corrupt:
                record = record[:-1] + bytes([record[-1] ^ 0x01])
        self.send_raw(record)
        return record

    def send_app(self, data: bytes, sizes: list[int] | None = None) -> None:
        """Application data as one record, or as records of the given sizes."""
        if sizes is None:
            self.send_record(CT_APPLICATION_DATA, data)
            return
        assert sum(sizes) == len(data), "sizes must cover the data exactly"
        out = bytearray()
        pos = 0
        for n in sizes:
            out += self.seal_record(CT_APPLICATION_DATA, data[pos : pos + n])
            pos += n
        self.send_raw(bytes(out))

    def rotate_write_keys(self) -> None:
        """Switch to the next client traffic secret (after sending a KeyUpdate)."""
        self.tx.next_keys()

    def key_update(self, requested: bool) -> None:
        """Send KeyUpdate (RFC 8446 4.6.3) under the current keys, then switch."""
        self.send_record(CT_HANDSHAKE, key_update_message(requested))
        self.rotate_write_keys()

    def send_alert(self, level: int, description: int) -> None:
        self.send_record(CT_ALERT, bytes([level, description]))

    @property
    def write_seq(self) -> int:
        return self.tx.seqno

    @property
    def read_seq(self) -> int:
        return self.rx.seqno

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawTlsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    rest: bytes  # bytes after this response


def parse_response(data: bytes) -> Response | None:
    """One HTTP/1.1 response with a Content-Length body, or None if incomplete."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get(b"content-length", b"0"))
    if len(rest) < length:
        return None
    return Response(status, headers, rest[:length], rest[length:])
