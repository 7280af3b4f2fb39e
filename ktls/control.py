"""After the handshake: what user space does with the records KTLS RX hands up.

Theory of operation. With KTLS in both directions the kernel encrypts and
decrypts, but a record that is not application data comes up to the reader
(OpenSSL's record layer over a KTLS socket) with its type, and the reader acts
on it. `TlsControl` is that reader for one connection, sans-IO:

* `receive_records(bytes)` takes the records the kernel decrypted in the
  receive buffer (KTLS RX, what `soreceive` returns: header and plaintext per
  record) and returns their application bytes; `receive_data(bytes)` feeds
  ciphertext to the connection's `KtlsRxSession` and decrypts it here (the
  same rules; the server uses it for nothing but tests and tools) and returns
  the application bytes it completes (zero-length application
  records are fine; more than MAX_EMPTY_RECORDS in a row are not, as in
  OpenSSL).
* Alerts: `close_notify` sets `closed` (the caller answers with its own and
  closes); TLS 1.3 `user_canceled` and TLS 1.2 warnings are ignored, fewer
  than MAX_WARN_ALERTS in a row (OpenSSL refuses the fifth); any other alert,
  a TLS 1.2 close_notify of fatal level included, raises `PeerAlert`. An alert
  record must hold exactly one alert in TLS 1.3 (RFC 8446 5.1); TLS 1.2 may
  fragment and coalesce them.
* Handshake messages may be split over records but not interleaved with
  other types. In TLS 1.3 the client may only send KeyUpdate (RFC 8446
  4.6.3): the receive keys move to the next traffic secret at once, and when
  the client asks for an update `key_update_owed` is set: the caller must
  send our KeyUpdate under the current keys before any further record, then
  install `next_tx_keys()` (RFC 8446 4.6.3, "prior to sending its next
  Application Data record"). A KeyUpdate must end its record (5.1). In TLS
  1.2 a ClientHello asks for renegotiation, which nomapd does not do: a
  warning `no_renegotiation` is queued in `outgoing`, as OpenSSL answers.
* Anything else, a change_cipher_spec after the handshake or an unknown type
  included, raises `RecordError` with the alert to send (`unexpected_message`,
  `decode_error`, `illegal_parameter`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ktls.alerts import (
    CLOSE_NOTIFY,
    DECODE_ERROR,
    FATAL,
    ILLEGAL_PARAMETER,
    NO_RENEGOTIATION,
    UNEXPECTED_MESSAGE,
    USER_CANCELED,
    WARNING,
    PeerAlert,
    RecordError,
    alert_bytes,
)
from ktls.keys import TrafficKeys, tls13_next_traffic_secret, tls13_traffic_keys
from ktls.rx import KtlsRxSession, RxRecord
from ktls.suites import TlsVersion
from mbuf.ktls_hdr import (
    TLS_HEADER_LEN,
    TLS_RLTYPE_ALERT,
    TLS_RLTYPE_APP,
    TLS_RLTYPE_HANDSHAKE,
    content_type_name,
)

if TYPE_CHECKING:  # a name in an annotation: ktls.handshake loads pyOpenSSL at run time
    from ktls.handshake import Established
    from mbuf.counters import KtlsStat

HT_CLIENT_HELLO: Final = 1
HT_KEY_UPDATE: Final = 24
UPDATE_NOT_REQUESTED: Final = 0
UPDATE_REQUESTED: Final = 1
KEY_UPDATE_NOT_REQUESTED: Final = bytes((HT_KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED))

MAX_EMPTY_RECORDS: Final = 32  # OpenSSL's limit on consecutive empty records
MAX_WARN_ALERTS: Final = 5  # OpenSSL's MAX_WARN_ALERT_COUNT: the fifth in a row is refused
MAX_HANDSHAKE_MESSAGE: Final = 1 << 16  # a renegotiating ClientHello bigger than this is refused


class TlsControl:
    __slots__ = (
        "_alert",
        "_empty",
        "_hs",
        "_rx_secret",
        "_tx_secret",
        "_warnings",
        "closed",
        "key_update_owed",
        "key_updates_rx",
        "key_updates_tx",
        "outgoing",
        "rx",
        "stats",
        "suite",
        "version",
    )

    def __init__(self, est: Established, stats: KtlsStat | None = None) -> None:
        self.suite = est.suite
        self.version = est.version
        self.stats = stats
        self.rx = KtlsRxSession(est.suite, est.rx.key, est.rx.iv, est.rx_seq, stats)
        self._rx_secret = est.rx_secret
        self._tx_secret = est.tx_secret
        self._hs = bytearray()  # a handshake message split over records
        self._alert = bytearray()  # TLS 1.2: an alert split over records
        self._empty = 0
        self._warnings = 0
        self.closed = False  # close_notify received
        self.key_update_owed = False
        self.key_updates_rx = 0
        self.key_updates_tx = 0
        self.outgoing: list[tuple[int, bytes]] = []  # (record type, payload) to send

    def receive_data(self, data: bytes | bytearray | memoryview) -> bytes:
        """Application bytes completed by `data`. Raises RecordError or PeerAlert."""
        if self.closed:
            return b""  # nothing after close_notify counts (RFC 8446 6.1)
        rx = self.rx
        rx.feed(data)
        return self._consume(rx.next_record)

    def receive_records(self, data: bytes | bytearray | memoryview) -> bytes:
        """Application bytes in records the kernel decrypted in the receive
        buffer (KTLS RX), as `soreceive` hands them up: each a 5-byte header
        rebuilt from its TLS_GET_RECORD control message, then its plaintext.
        (A record the kernel refused comes as soreceive's OSError, after the
        records before it.) Raises RecordError or PeerAlert."""
        if self.closed:
            return b""
        view = memoryview(data)
        recs: list[RxRecord] = []
        pos = 0
        while pos + TLS_HEADER_LEN <= len(view):
            end = pos + TLS_HEADER_LEN + ((view[pos + 3] << 8) | view[pos + 4])
            recs.append(RxRecord(view[pos], bytes(view[pos + TLS_HEADER_LEN : end])))
            pos = end
        it = iter(recs)
        out = self._consume(lambda: next(it, None))
        if self.rx.held:  # a handshake message split over records: its next part
            self.rx.resume()
        return out

    def _consume(self, next_record: Callable[[], RxRecord | None]) -> bytes:
        """Act on records as `next_record` yields them; the application bytes."""
        out: list[bytes] = []
        while not self.closed and (rec := next_record()) is not None:
            ctype, payload = rec
            if ctype == TLS_RLTYPE_APP and payload and not self._hs and not self._alert:
                self._empty = 0  # the usual record: what the branches below do for it
                self._warnings = 0
                out.append(payload)
                continue
            if self._hs and ctype != TLS_RLTYPE_HANDSHAKE:
                raise RecordError(UNEXPECTED_MESSAGE, "record interleaved with a handshake message")
            if self._alert and ctype != TLS_RLTYPE_ALERT:
                raise RecordError(UNEXPECTED_MESSAGE, "record interleaved with an alert")
            if not payload:
                if ctype != TLS_RLTYPE_APP:
                    raise RecordError(
                        UNEXPECTED_MESSAGE, f"empty record of type {content_type_name(ctype)}"
                    )
                self._empty += 1
                if self._empty > MAX_EMPTY_RECORDS:
                    raise RecordError(UNEXPECTED_MESSAGE, "too many empty records")
                continue
            self._empty = 0
            if ctype == TLS_RLTYPE_ALERT:
                self._alerts(payload)
                continue
            self._warnings = 0  # as OpenSSL: any other record that carries something
            if ctype == TLS_RLTYPE_APP:
                out.append(payload)
            elif ctype == TLS_RLTYPE_HANDSHAKE:
                self._handshake(payload)
            else:
                raise RecordError(
                    UNEXPECTED_MESSAGE,
                    f"record of type {content_type_name(ctype)} after the handshake",
                )
        return out[0] if len(out) == 1 else b"".join(out)

    # -- alerts --------------------------------------------------------------

    def _alerts(self, data: bytes) -> None:
        if self.version is TlsVersion.TLS13:
            if len(data) != 2:  # RFC 8446 5.1: exactly one alert per record
                raise RecordError(DECODE_ERROR, f"alert record of {len(data)} bytes")
            self._alert_received(data[0], data[1])
            return
        self._alert += data
        while len(self._alert) >= 2 and not self.closed:
            level, desc = self._alert[0], self._alert[1]
            del self._alert[:2]
            self._alert_received(level, desc)

    def _alert_received(self, level: int, desc: int) -> None:
        if self.stats is not None:
            self.stats.alerts_received += 1
        if self.version is TlsVersion.TLS13:
            if desc == CLOSE_NOTIFY:
                self.closed = True
                return
            if desc != USER_CANCELED:
                raise PeerAlert(level, desc)  # RFC 8446 6: every other alert is an error
        elif level == FATAL:
            raise PeerAlert(level, desc)
        elif level != WARNING:
            raise RecordError(ILLEGAL_PARAMETER, f"alert level {level}")
        elif desc == CLOSE_NOTIFY:
            self.closed = True
            return
        self._warnings += 1  # warnings and user_canceled: OpenSSL takes a few in a row
        if self._warnings >= MAX_WARN_ALERTS:
            raise RecordError(UNEXPECTED_MESSAGE, "too many warning alerts")

    # -- post-handshake messages ---------------------------------------------

    def _handshake(self, data: bytes) -> None:
        hs = self._hs
        hs += data
        while len(hs) >= 4:
            htype = hs[0]
            length = int.from_bytes(hs[1:4])
            self._check_message(htype, length)
            if len(hs) < 4 + length:
                return
            body = bytes(hs[4 : 4 + length])
            del hs[: 4 + length]
            if htype == HT_KEY_UPDATE:
                if hs:  # RFC 8446 5.1: a key change must end its record
                    raise RecordError(UNEXPECTED_MESSAGE, "KeyUpdate not at the end of its record")
                self._key_update(body[0])
            else:  # a TLS 1.2 ClientHello: renegotiation, refused with a warning
                self.outgoing.append((TLS_RLTYPE_ALERT, alert_bytes(WARNING, NO_RENEGOTIATION)))
                if self.stats is not None:
                    self.stats.alerts_sent += 1

    def _check_message(self, htype: int, length: int) -> None:
        if self.version is TlsVersion.TLS13:
            if htype != HT_KEY_UPDATE:
                raise RecordError(UNEXPECTED_MESSAGE, f"handshake message {htype} after Finished")
            if length != 1:
                raise RecordError(DECODE_ERROR, f"KeyUpdate of {length} bytes")
        elif htype != HT_CLIENT_HELLO:
            raise RecordError(UNEXPECTED_MESSAGE, f"handshake message {htype} after Finished")
        elif length > MAX_HANDSHAKE_MESSAGE:
            raise RecordError(UNEXPECTED_MESSAGE, f"ClientHello of {length} bytes")

    def _key_update(self, request: int) -> None:
        if request not in (UPDATE_NOT_REQUESTED, UPDATE_REQUESTED):
            raise RecordError(ILLEGAL_PARAMETER, f"KeyUpdate request_update {request}")
        assert self._rx_secret is not None
        self._rx_secret = tls13_next_traffic_secret(self.suite, self._rx_secret)
        keys = tls13_traffic_keys(self.suite, self._rx_secret)
        self.rx.rekey(keys.key, keys.iv)
        self.key_updates_rx += 1
        if self.stats is not None:
            self.stats.key_updates_rx += 1
        if request == UPDATE_REQUESTED:
            self.key_update_owed = True

    def next_tx_keys(self) -> TrafficKeys:
        """Our send keys after the KeyUpdate the caller has just queued."""
        if self._tx_secret is None:
            raise RecordError(UNEXPECTED_MESSAGE, "KeyUpdate outside TLS 1.3")
        self._tx_secret = tls13_next_traffic_secret(self.suite, self._tx_secret)
        self.key_update_owed = False
        self.key_updates_tx += 1
        if self.stats is not None:
            self.stats.key_updates_tx += 1
        return tls13_traffic_keys(self.suite, self._tx_secret)

    def take_outgoing(self) -> list[tuple[int, bytes]]:
        out = self.outgoing
        self.outgoing = []
        return out
