"""ktls.rx (KtlsRxSession, the kernel's decrypt and checks) and ktls.control
(TlsControl, what user space does with the records it hands up).

Every record here is built by the test's own sealer (`harness.Sealer`, written
from RFC 8446 5.2/5.3, RFC 5288 3 and RFC 7905 2 with `cryptography`
directly), under keys the test chooses; TLS 1.3 KeyUpdate secrets come from
the harness's own HKDF-Expand-Label (RFC 8446 7.1, 7.2). Each record is fed
whole, one byte at a time and in random chunks, since the kernel sees a TCP
byte stream.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ktls.alerts import (
    BAD_RECORD_MAC,
    CLOSE_NOTIFY,
    DECODE_ERROR,
    FATAL,
    HANDSHAKE_FAILURE,
    ILLEGAL_PARAMETER,
    INTERNAL_ERROR,
    NO_RENEGOTIATION,
    PROTOCOL_VERSION,
    RECORD_OVERFLOW,
    UNEXPECTED_MESSAGE,
    USER_CANCELED,
    WARNING,
    PeerAlert,
    RecordError,
)
from ktls.control import MAX_EMPTY_RECORDS, MAX_WARN_ALERTS, TlsControl
from ktls.handshake import Established
from ktls.keys import TrafficKeys
from ktls.rx import KtlsRxSession, RxRecord
from ktls.suites import SUITES, CipherSuite, TlsVersion
from mbuf.counters import KtlsStat
from tests.support.tlsseal import (
    CT_ALERT,
    CT_APPLICATION_DATA,
    CT_CHANGE_CIPHER_SPEC,
    CT_HANDSHAKE,
    HT_CLIENT_HELLO,
    HT_KEY_UPDATE,
    HT_NEW_SESSION_TICKET,
    Sealer,
    key_update,
    tls13_keys,
    tls13_next_secret,
)

ALL = list(SUITES.values())
ALL_IDS = [f"{s.version.name}-{s.openssl_name}" for s in ALL]
TLS13 = [s for s in ALL if s.version is TlsVersion.TLS13]
TLS13_IDS = [s.openssl_name for s in TLS13]
TLS12 = [s for s in ALL if s.version is TlsVersion.TLS12]
TLS12_IDS = [s.openssl_name for s in TLS12]

MAX_PLAINTEXT = 1 << 14  # RFC 8446 5.1, RFC 5246 6.2.1
TLS13_MAX_CIPHERTEXT = MAX_PLAINTEXT + 256  # RFC 8446 5.2
TLS12_MAX_CIPHERTEXT = MAX_PLAINTEXT + 2048  # RFC 5246 6.2.3
SEQNO_LIMIT = 1 << 64  # RFC 8446 5.3 / RFC 5246 6.1: sequence numbers never wrap
TAG = 16
BAD_CERTIFICATE = 42
NO_RENEGOTIATION_WARNING = (CT_ALERT, bytes((WARNING, NO_RENEGOTIATION)))
HT_HELLO_REQUEST = 0
HT_SERVER_HELLO = 2
HT_CERTIFICATE = 11
HT_FINISHED = 20


def _fill(n: int, tag: int) -> bytes:
    return bytes((tag * 31 + i * 7) % 256 for i in range(n))


def max_ciphertext(suite: CipherSuite) -> int:
    return TLS13_MAX_CIPHERTEXT if suite.version is TlsVersion.TLS13 else TLS12_MAX_CIPHERTEXT


def header(ctype: int, length: int, version: int = 0x0303) -> bytes:
    return struct.pack("!BHH", ctype, version, length)


def handshake_message(htype: int, body: bytes) -> bytes:
    return bytes((htype,)) + len(body).to_bytes(3, "big") + body


@contextlib.contextmanager
def refused(description: int) -> Iterator[None]:
    """The block raises RecordError carrying this alert."""
    with pytest.raises(RecordError) as err:
        yield
    assert err.value.description == description, err.value


@dataclass
class Conn:
    """A TlsControl after a (pretend) handshake and the client writing to it."""

    ctl: TlsControl
    client: Sealer
    stats: KtlsStat
    server_secret: bytes | None  # TLS 1.3: ours, for next_tx_keys()

    def feed(self, data: bytes, chunk: int | None = None) -> bytes:
        """Feed `data` in pieces of `chunk` bytes (whole if None); the app bytes."""
        if chunk is None:
            return self.ctl.receive_data(data)
        return b"".join(
            self.ctl.receive_data(data[i : i + chunk]) for i in range(0, len(data), chunk)
        )


def secret(suite: CipherSuite, tag: int) -> bytes:
    return _fill(suite.hash().digest_size, tag)


def keys12(suite: CipherSuite, tag: int) -> TrafficKeys:
    return TrafficKeys(_fill(suite.key_len, tag), _fill(suite.fixed_iv_len, tag + 1))


def connect(suite: CipherSuite, *, counted: bool = True) -> Conn:
    """TlsControl for `suite` with keys chosen here, as `established()` would give
    them (TLS 1.2: the client's Finished took receive sequence number 0).
    `counted=False`: TlsControl without a KtlsStat (`stats` then stays unused)."""
    stats = KtlsStat()
    if suite.version is TlsVersion.TLS13:
        cs, ss = secret(suite, 1), secret(suite, 2)
        ck, sk = tls13_keys(suite, cs), tls13_keys(suite, ss)
        est = Established(suite.version, suite, sk, ck, 2, ss, None, 0, cs)
        sealer = Sealer(suite, ck, 0, cs)
    else:
        ck, sk = keys12(suite, 1), keys12(suite, 2)
        est = Established(suite.version, suite, sk, ck, 1, None, None, 1, None)
        sealer = Sealer(suite, ck, 1)
        ss = None
    ctl = TlsControl(est, stats if counted else None)
    return Conn(ctl, sealer, stats, ss)


def rx_session(suite: CipherSuite, seqno: int = 0) -> tuple[KtlsRxSession, Sealer, KtlsStat]:
    stats = KtlsStat()
    keys = (
        tls13_keys(suite, secret(suite, 3))
        if suite.version is TlsVersion.TLS13
        else keys12(suite, 3)
    )
    return KtlsRxSession(suite, keys.key, keys.iv, seqno, stats), Sealer(suite, keys, seqno), stats


def records(rx: KtlsRxSession, data: bytes) -> list[RxRecord]:
    rx.feed(data)
    out: list[RxRecord] = []
    while (rec := rx.next_record()) is not None:
        out.append(rec)
    return out


def feed_header_bytewise(rx: KtlsRxSession, hdr: bytes) -> None:
    """The first four bytes tell nothing; the fifth completes the header."""
    for b in hdr[:4]:
        rx.feed(bytes((b,)))
        assert rx.next_record() is None
    rx.feed(hdr[4:5])
    rx.next_record()


# ---------------------------------------------------------------------------
# The kernel's header checks (ktls_check_rx): on the header alone
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("suite", ALL, ids=ALL_IDS)
def test_longest_record_passes_the_header_check(suite: CipherSuite) -> None:
    rx, _, stats = rx_session(suite)
    feed_header_bytewise(rx, header(CT_APPLICATION_DATA, max_ciphertext(suite)))
    rx.feed(bytes(1000))
    assert rx.next_record() is None  # waiting for the rest of the body
    assert rx.buffered() == 1005
    assert stats.rx_failures == 0


@pytest.mark.parametrize("excess", [1, 2, 0xFFFF])
@pytest.mark.parametrize("suite", ALL, ids=ALL_IDS)
def test_overlong_record_refused_on_its_header(suite: CipherSuite, excess: int) -> None:
    """record_overflow as soon as the fifth header byte arrives, body unseen."""
    rx, _, stats = rx_session(suite)
    length = min(max_ciphertext(suite) + excess, 0xFFFF)
    with refused(RECORD_OVERFLOW):
        feed_header_bytewise(rx, header(CT_APPLICATION_DATA, length))
    assert stats.rx_failures == 1
    assert stats.rx_records == 0


@pytest.mark.parametrize("ctype", [0, CT_CHANGE_CIPHER_SPEC, CT_ALERT, CT_HANDSHAKE, 24, 0xFF])
@pytest.mark.parametrize("suite", TLS13, ids=TLS13_IDS)
def test_tls13_outer_type_must_be_application_data(suite: CipherSuite, ctype: int) -> None:
    rx, _, stats = rx_session(suite)
    with refused(UNEXPECTED_MESSAGE):
        feed_header_bytewise(rx, header(ctype, 100))
    assert stats.rx_failures == 1


@pytest.mark.parametrize("ctype", [0, CT_CHANGE_CIPHER_SPEC, 24, 99, 0xFF])
@pytest.mark.parametrize("suite", TLS12, ids=TLS12_IDS)
def test_tls12_record_types_refused(suite: CipherSuite, ctype: int) -> None:
    """change_cipher_spec cannot come after the handshake, nor an unknown type."""
    rx, _, stats = rx_session(suite)
    with refused(UNEXPECTED_MESSAGE):
        feed_header_bytewise(rx, header(ctype, 100))
    assert stats.rx_failures == 1


@pytest.mark.parametrize("ctype", [CT_ALERT, CT_HANDSHAKE, CT_APPLICATION_DATA])
@pytest.mark.parametrize("suite", TLS12, ids=TLS12_IDS)
def test_tls12_protected_types_pass_the_header_check(suite: CipherSuite, ctype: int) -> None:
    rx, _, stats = rx_session(suite)
    feed_header_bytewise(rx, header(ctype, 100))
    assert stats.rx_failures == 0


@pytest.mark.parametrize("version", [0x0300, 0x0301, 0x0302, 0x0304, 0x0203, 0x0313, 0xFFFF])
@pytest.mark.parametrize("suite", TLS12, ids=TLS12_IDS)
def test_tls12_record_version_must_be_0303(suite: CipherSuite, version: int) -> None:
    rx, _, stats = rx_session(suite)
    with refused(PROTOCOL_VERSION):
        feed_header_bytewise(rx, header(CT_APPLICATION_DATA, 100, version))
    assert stats.rx_failures == 1


def test_tls12_header_checks_in_order() -> None:
    """The type first, then the version, then the length."""
    suite = TLS12[0]
    for hdr, alert in [
        (header(CT_CHANGE_CIPHER_SPEC, 0xFFFF, 0x0301), UNEXPECTED_MESSAGE),
        (header(CT_APPLICATION_DATA, 0xFFFF, 0x0301), PROTOCOL_VERSION),
    ]:
        rx, _, _ = rx_session(suite)
        with refused(alert):
            records(rx, hdr)


@pytest.mark.parametrize("suite", [TLS13[0], TLS12[0]], ids=["TLS13", "TLS12"])
def test_control_refuses_on_the_header_too(suite: CipherSuite) -> None:
    """Through TlsControl: the error comes with the fifth byte, data before it kept."""
    conn = connect(suite)
    got = conn.feed(conn.client.data(b"before"), chunk=1)
    assert got == b"before"
    bad = header(CT_APPLICATION_DATA, max_ciphertext(suite) + 1)
    for b in bad[:4]:
        assert conn.ctl.receive_data(bytes((b,))) == b""
    with refused(RECORD_OVERFLOW):
        conn.ctl.receive_data(bad[4:])
    assert conn.stats.rx_failures == 1
    assert conn.stats.rx_records == 1


@pytest.mark.parametrize("version", [0x0301, 0x0304])
@pytest.mark.parametrize("suite", TLS13[:1], ids=TLS13_IDS[:1])
def test_tls13_other_record_version_is_refused(suite: CipherSuite, version: int) -> None:
    rx, sealer, _ = rx_session(suite)
    rec = bytearray(sealer.data(b"hello"))
    rec[1:3] = version.to_bytes(2, "big")
    with pytest.raises(RecordError):
        records(rx, bytes(rec))


# ---------------------------------------------------------------------------
# Opening records (ktls_decrypt)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("suite", ALL, ids=ALL_IDS)
def test_bad_tag(suite: CipherSuite, where: str) -> None:
    rx, sealer, stats = rx_session(suite)
    good = sealer.data(b"x" * 100)
    rec = bytearray(sealer.data(b"y" * 100))
    pos = {"first": 5, "middle": len(rec) // 2, "last": len(rec) - 1}[where]
    rec[pos] ^= 0x01
    assert records(rx, good) == [RxRecord(CT_APPLICATION_DATA, b"x" * 100)]
    with refused(BAD_RECORD_MAC):
        records(rx, bytes(rec))
    assert (stats.rx_records, stats.rx_failures) == (1, 1)
    assert (rx.records, rx.bytes) == (1, 100)


@pytest.mark.parametrize("suite", ALL, ids=ALL_IDS)
def test_sequence_numbers_count(suite: CipherSuite) -> None:
    """A record sealed for another sequence number, or replayed, does not open."""
    rx, sealer, _ = rx_session(suite, seqno=5)
    first = sealer.data(b"five")
    assert records(rx, first) == [RxRecord(CT_APPLICATION_DATA, b"five")]
    assert rx.seqno == 6
    with refused(BAD_RECORD_MAC):
        records(rx, first)  # replay

    rx, sealer, _ = rx_session(suite, seqno=5)
    sealer.seqno = 6
    with refused(BAD_RECORD_MAC):
        records(rx, sealer.data(b"six"))


@pytest.mark.parametrize("suite", ALL, ids=ALL_IDS)
def test_too_short_records(suite: CipherSuite) -> None:
    """Shorter than nonce and tag (TLS 1.3: than tag and content type)."""
    shortest = TAG + 1 if suite.version is TlsVersion.TLS13 else suite.explicit_nonce_len + TAG
    for n in range(shortest):
        rx, _, stats = rx_session(suite)
        with refused(BAD_RECORD_MAC):
            records(rx, header(CT_APPLICATION_DATA, n) + _fill(n, n))
        assert stats.rx_failures == 1


@pytest.mark.parametrize(
    ("size", "pad", "ok"),
    [
        (MAX_PLAINTEXT, 0, True),
        (MAX_PLAINTEXT, 1, False),
        (MAX_PLAINTEXT + 1, 0, False),
        (MAX_PLAINTEXT - 100, 100, True),
        (MAX_PLAINTEXT - 100, 101, False),
        (0, MAX_PLAINTEXT, True),
        (0, MAX_PLAINTEXT + 1, False),
        (0, TLS13_MAX_CIPHERTEXT - TAG - 1, False),  # the longest record allowed
    ],
)
@pytest.mark.parametrize("suite", TLS13, ids=TLS13_IDS)
def test_tls13_inner_plaintext_limit(suite: CipherSuite, size: int, pad: int, ok: bool) -> None:
    """RFC 8446 5.4: TLSInnerPlaintext, padding included, is at most 2^14 + 1."""
    rx, sealer, stats = rx_session(suite)
    rec = sealer.data(_fill(size, 5), pad=pad)
    assert len(rec) - 5 <= TLS13_MAX_CIPHERTEXT  # the header check passes
    if ok:
        assert records(rx, rec) == [RxRecord(CT_APPLICATION_DATA, _fill(size, 5))]
    else:
        with refused(RECORD_OVERFLOW):
            records(rx, rec)
        assert stats.rx_failures == 1


@pytest.mark.parametrize("size", [MAX_PLAINTEXT, MAX_PLAINTEXT + 1, MAX_PLAINTEXT + 2000])
@pytest.mark.parametrize("suite", TLS12, ids=TLS12_IDS)
def test_tls12_plaintext_limit(suite: CipherSuite, size: int) -> None:
    rx, sealer, stats = rx_session(suite)
    rec = sealer.data(_fill(size, 6))
    assert len(rec) - 5 <= TLS12_MAX_CIPHERTEXT
    if size <= MAX_PLAINTEXT:
        assert records(rx, rec) == [RxRecord(CT_APPLICATION_DATA, _fill(size, 6))]
    else:
        with refused(RECORD_OVERFLOW):
            records(rx, rec)
        assert stats.rx_failures == 1


@pytest.mark.parametrize("zeros", [1, 2, 17, 1000])
@pytest.mark.parametrize("suite", TLS13, ids=TLS13_IDS)
def test_tls13_inner_plaintext_of_zeros(suite: CipherSuite, zeros: int) -> None:
    """No content type: unexpected_message (RFC 8446 5.4)."""
    rx, sealer, stats = rx_session(suite)
    with refused(UNEXPECTED_MESSAGE):
        records(rx, sealer.inner(bytes(zeros)))
    assert stats.rx_failures == 1


@pytest.mark.parametrize("suite", TLS13, ids=TLS13_IDS)
def test_tls13_inner_type_comes_up(suite: CipherSuite) -> None:
    """The kernel hands every inner type up; judging it is user space's job."""
    rx, sealer, _ = rx_session(suite)
    stream = (
        sealer.record(CT_HANDSHAKE, b"hs", pad=3)
        + sealer.record(CT_ALERT, b"\x01\x00")
        + sealer.record(99, b"odd", pad=1)
        + sealer.record(CT_APPLICATION_DATA, b"\x00\x00", pad=5)  # trailing zeros of content
    )
    assert records(rx, stream) == [
        RxRecord(CT_HANDSHAKE, b"hs"),
        RxRecord(CT_ALERT, b"\x01\x00"),
        RxRecord(99, b"odd"),
        RxRecord(CT_APPLICATION_DATA, b"\x00\x00"),
    ]


@pytest.mark.parametrize("ctype", [0, CT_CHANGE_CIPHER_SPEC, 24, 99])
@pytest.mark.parametrize("suite", TLS13, ids=TLS13_IDS)
def test_tls13_control_refuses_other_inner_types(suite: CipherSuite, ctype: int) -> None:
    conn = connect(suite)
    with refused(UNEXPECTED_MESSAGE):
        conn.feed(conn.client.record(ctype, b"payload"))


@pytest.mark.parametrize("suite", ALL, ids=ALL_IDS)
def test_sequence_number_never_wraps(suite: CipherSuite) -> None:
    rx, sealer, _ = rx_session(suite, seqno=SEQNO_LIMIT - 1)
    assert records(rx, sealer.data(b"last")) == [RxRecord(CT_APPLICATION_DATA, b"last")]
    with refused(INTERNAL_ERROR):
        records(rx, header(CT_APPLICATION_DATA, 100))


@pytest.mark.parametrize("suite", ALL, ids=ALL_IDS)
def test_rx_session_counts(suite: CipherSuite) -> None:
    """Per session and in KtlsStat: records and plaintext bytes, control ones too."""
    rx, sealer, stats = rx_session(suite)
    stream = sealer.data(b"a" * 10) + sealer.data(b"") + sealer.record(CT_ALERT, b"\x01\x00")
    assert len(records(rx, stream)) == 3
    assert (rx.records, rx.bytes, rx.seqno) == (3, 12, 3)
    assert (stats.rx_records, stats.rx_bytes, stats.rx_failures) == (3, 12, 0)


@pytest.mark.parametrize("suite", ALL, ids=ALL_IDS)
def test_rx_session_split_anywhere(suite: CipherSuite) -> None:
    """Three records fed one byte at a time: each comes out when its last byte does."""
    rx, sealer, _ = rx_session(suite)
    recs = [sealer.data(_fill(n, n)) for n in (0, 1, 300)]
    for n, rec in zip((0, 1, 300), recs, strict=True):
        for b in rec[:-1]:
            rx.feed(bytes((b,)))
            assert rx.next_record() is None
        rx.feed(rec[-1:])
        assert rx.next_record() == RxRecord(CT_APPLICATION_DATA, _fill(n, n))
        assert rx.next_record() is None
    assert rx.buffered() == 0


# ---------------------------------------------------------------------------
# Application data, empty records, padding (TlsControl)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1, 7], ids=["whole", "bytewise", "by7"])
@pytest.mark.parametrize("suite", ALL, ids=ALL_IDS)
def test_zero_length_records(suite: CipherSuite, chunk: int | None) -> None:
    """Up to MAX_EMPTY_RECORDS in a row, any number of times; one more is refused."""
    conn = connect(suite)
    c = conn.client
    stream = b"".join(c.data(b"") for _ in range(MAX_EMPTY_RECORDS))
    stream += c.data(b"req")
    stream += b"".join(c.data(b"") for _ in range(MAX_EMPTY_RECORDS))
    assert conn.feed(stream, chunk) == b"req"
    with refused(UNEXPECTED_MESSAGE):
        conn.feed(c.data(b""), chunk)


@pytest.mark.parametrize("ctype", [CT_ALERT, CT_HANDSHAKE])
@pytest.mark.parametrize("suite", [TLS13[0], TLS12[0], TLS12[2]], ids=["TLS13", "TLS12", "chacha"])
def test_empty_control_records_refused(suite: CipherSuite, ctype: int) -> None:
    """RFC 8446 5.1, RFC 5246 6.2.1: no zero-length alert or handshake fragments."""
    conn = connect(suite)
    with refused(UNEXPECTED_MESSAGE):
        conn.feed(conn.client.record(ctype, b""))


@pytest.mark.parametrize("suite", TLS13, ids=TLS13_IDS)
def test_padding_of_any_size(suite: CipherSuite) -> None:
    conn = connect(suite)
    c = conn.client
    pads = [0, 1, 2, 3, 15, 16, 17, 31, 32, 33, 100, 255, 256, 257, 1000, 4096, 16000]
    stream = b"".join(c.data(b"%d," % p, pad=p) for p in pads)
    stream += c.data(b"", pad=MAX_PLAINTEXT)  # an empty record that is all padding
    stream += c.alert(WARNING, USER_CANCELED, pad=200)
    stream += c.key_update(pad=77)
    stream += c.data(b"end", pad=9)
    assert conn.feed(stream) == b"".join(b"%d," % p for p in pads) + b"end"
    assert conn.ctl.key_updates_rx == 1


# ---------------------------------------------------------------------------
# Alerts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1], ids=["whole", "bytewise"])
@pytest.mark.parametrize("suite", ALL, ids=ALL_IDS)
def test_close_notify(suite: CipherSuite, chunk: int | None) -> None:
    conn = connect(suite)
    c = conn.client
    stream = c.data(b"last request") + c.alert(WARNING, CLOSE_NOTIFY) + c.data(b"ignored")
    assert conn.feed(stream, chunk) == b"last request"
    assert conn.ctl.closed
    assert conn.feed(c.data(b"also ignored")) == b""
    assert conn.feed(b"not even a record") == b""  # nothing after close_notify is read
    assert conn.ctl.take_outgoing() == []
    assert conn.stats.alerts_received == 1
    assert conn.stats.alerts_sent == 0
    assert conn.stats.rx_failures == 0


@pytest.mark.parametrize("suite", TLS13, ids=TLS13_IDS)
def test_tls13_close_notify_level_does_not_matter(suite: CipherSuite) -> None:
    """RFC 8446 6: the level is implicit in the description."""
    conn = connect(suite)
    assert conn.feed(conn.client.alert(FATAL, CLOSE_NOTIFY)) == b""
    assert conn.ctl.closed


@pytest.mark.parametrize("suite", TLS13, ids=TLS13_IDS)
def test_tls13_user_canceled_is_ignored(suite: CipherSuite) -> None:
    conn = connect(suite)
    c = conn.client
    stream = c.alert(WARNING, USER_CANCELED) + c.data(b"still here")
    assert conn.feed(stream) == b"still here"
    assert not conn.ctl.closed
    assert conn.feed(c.alert(FATAL, USER_CANCELED) + c.alert(WARNING, CLOSE_NOTIFY)) == b""
    assert conn.ctl.closed
    assert conn.stats.alerts_received == 3


@pytest.mark.parametrize("suite", TLS13[:1], ids=TLS13_IDS[:1])
def test_tls13_user_canceled_alerts_are_bounded(suite: CipherSuite) -> None:
    conn = connect(suite)
    c = conn.client
    with refused(UNEXPECTED_MESSAGE):
        for _ in range(4 * MAX_WARN_ALERTS):
            # Empty records in between, each run under MAX_EMPTY_RECORDS.
            conn.feed(b"".join(c.data(b"") for _ in range(MAX_EMPTY_RECORDS)))
            conn.feed(c.alert(WARNING, USER_CANCELED))


@pytest.mark.parametrize(
    ("level", "description"),
    [(FATAL, HANDSHAKE_FAILURE), (WARNING, BAD_CERTIFICATE), (FATAL, BAD_RECORD_MAC), (1, 200)],
)
@pytest.mark.parametrize("suite", TLS13, ids=TLS13_IDS)
def test_tls13_other_alerts_are_fatal(suite: CipherSuite, level: int, description: int) -> None:
    conn = connect(suite)
    with pytest.raises(PeerAlert) as err:
        conn.feed(conn.client.data(b"req") + conn.client.alert(level, description))
    assert (err.value.level, err.value.description) == (level, description)
    assert conn.stats.alerts_received == 1
    assert conn.stats.rx_failures == 0


@pytest.mark.parametrize("payload", [b"\x01", b"\x01\x00\x01", b"\x01\x00\x01\x00", b"\x02" * 9])
@pytest.mark.parametrize("suite", TLS13, ids=TLS13_IDS)
def test_tls13_alert_record_holds_one_alert(suite: CipherSuite, payload: bytes) -> None:
    conn = connect(suite)
    with refused(DECODE_ERROR):
        conn.feed(conn.client.record(CT_ALERT, payload))
    assert not conn.ctl.closed


@pytest.mark.parametrize("suite", TLS12, ids=TLS12_IDS)
def test_tls12_fatal_alert(suite: CipherSuite) -> None:
    conn = connect(suite)
    with pytest.raises(PeerAlert) as err:
        conn.feed(conn.client.alert(FATAL, HANDSHAKE_FAILURE))
    assert (err.value.level, err.value.description) == (FATAL, HANDSHAKE_FAILURE)


@pytest.mark.parametrize("suite", TLS12, ids=TLS12_IDS)
def test_tls12_alert_fragmented(suite: CipherSuite) -> None:
    """RFC 5246 6.2.1: an alert may be split over records."""
    conn = connect(suite)
    c = conn.client
    assert conn.feed(c.record(CT_ALERT, bytes((WARNING,)))) == b""
    assert not conn.ctl.closed
    assert conn.stats.alerts_received == 0
    assert conn.feed(c.record(CT_ALERT, bytes((CLOSE_NOTIFY,))) + c.data(b"late")) == b""
    assert conn.ctl.closed
    assert conn.stats.alerts_received == 1

    conn = connect(suite)
    c = conn.client
    with pytest.raises(PeerAlert) as err:
        conn.feed(c.record(CT_ALERT, bytes((FATAL,))) + c.record(CT_ALERT, b"\x28"))
    assert err.value.description == HANDSHAKE_FAILURE


@pytest.mark.parametrize("suite", TLS12, ids=TLS12_IDS)
def test_tls12_alert_fragment_then_other_record(suite: CipherSuite) -> None:
    """Half an alert, then application data: nothing may come between the halves."""
    conn = connect(suite)
    c = conn.client
    assert conn.feed(c.record(CT_ALERT, bytes((WARNING,)))) == b""
    with refused(UNEXPECTED_MESSAGE):
        conn.feed(c.data(b"GET"))


@pytest.mark.parametrize("suite", TLS12, ids=TLS12_IDS)
def test_tls12_alerts_coalesced(suite: CipherSuite) -> None:
    """...and several may share one; the odd byte waits for the next record."""
    conn = connect(suite)
    c = conn.client
    warn = bytes((WARNING, USER_CANCELED))
    assert conn.feed(c.record(CT_ALERT, warn + warn + b"\x01")) == b""
    assert conn.stats.alerts_received == 2
    assert conn.feed(c.record(CT_ALERT, b"\x00" + warn) + c.data(b"late")) == b""
    assert conn.ctl.closed  # the close_notify; what follows it is never looked at
    assert conn.stats.alerts_received == 3

    conn = connect(suite)
    with pytest.raises(PeerAlert) as err:
        conn.feed(conn.client.record(CT_ALERT, warn + bytes((FATAL, BAD_RECORD_MAC))))
    assert err.value.description == BAD_RECORD_MAC


@pytest.mark.parametrize("coalesced", [False, True])
@pytest.mark.parametrize("suite", TLS12, ids=TLS12_IDS)
def test_tls12_warnings_in_a_row(suite: CipherSuite, coalesced: bool) -> None:
    """Warnings are ignored, fewer than MAX_WARN_ALERTS in a row (OpenSSL refuses
    the fifth); data resets the count."""
    conn = connect(suite)
    c = conn.client
    warn = bytes((WARNING, USER_CANCELED))

    def warnings(n: int) -> bytes:
        if coalesced:
            return c.record(CT_ALERT, warn * n)
        return b"".join(c.record(CT_ALERT, warn) for _ in range(n))

    below = MAX_WARN_ALERTS - 1
    assert conn.feed(warnings(below) + c.data(b"a")) == b"a"
    assert conn.feed(warnings(below) + c.data(b"b")) == b"b"
    assert conn.feed(warnings(below)) == b""
    with refused(UNEXPECTED_MESSAGE):
        conn.feed(warnings(1))
    assert conn.stats.alerts_received == 3 * below + 1


@pytest.mark.parametrize("level", [0, 3, 0xFF])
@pytest.mark.parametrize("suite", TLS12, ids=TLS12_IDS)
def test_tls12_bad_alert_level(suite: CipherSuite, level: int) -> None:
    conn = connect(suite)
    with refused(ILLEGAL_PARAMETER):
        conn.feed(conn.client.alert(level, USER_CANCELED))


# ---------------------------------------------------------------------------
# TLS 1.3 KeyUpdate (RFC 8446 4.6.3, 7.2)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1], ids=["whole", "bytewise"])
@pytest.mark.parametrize("suite", TLS13, ids=TLS13_IDS)
def test_key_update_not_requested(suite: CipherSuite, chunk: int | None) -> None:
    conn = connect(suite)
    c = conn.client
    old = c.keys
    stream = c.data(b"one") + c.key_update() + c.data(b"two") + c.data(b"three")
    assert conn.feed(stream, chunk) == b"onetwothree"
    # The receive keys are application_traffic_secret_1's (RFC 8446 7.2), from 0.
    assert conn.ctl.rx.iv == tls13_keys(suite, tls13_next_secret(suite, secret(suite, 1))).iv
    assert conn.ctl.rx.iv != old.iv
    assert conn.ctl.rx.seqno == 2
    assert conn.ctl.key_updates_rx == 1
    assert not conn.ctl.key_update_owed
    assert conn.ctl.take_outgoing() == []
    assert (conn.stats.key_updates_rx, conn.stats.key_updates_tx) == (1, 0)

    # Several in a row, each moving one secret on.
    stream = b"".join(c.key_update() for _ in range(3)) + c.data(b"four")
    assert conn.feed(stream, chunk) == b"four"
    assert conn.ctl.key_updates_rx == 4
    assert (conn.ctl.rx.records, conn.ctl.rx.bytes) == (8, 16 + 3 * 5 + 4)

    # A record under the old keys no longer opens.
    with refused(BAD_RECORD_MAC):
        conn.feed(Sealer(suite, old, 4).data(b"stale"))


@pytest.mark.parametrize("suite", TLS13, ids=TLS13_IDS)
def test_key_update_requested(suite: CipherSuite) -> None:
    conn = connect(suite)
    c = conn.client
    assert conn.feed(c.key_update(request=1) + c.data(b"after")) == b"after"
    assert conn.ctl.key_update_owed
    assert conn.stats.key_updates_rx == 1
    assert conn.ctl.take_outgoing() == []  # our KeyUpdate is the caller's to send

    assert conn.server_secret is not None
    s1 = tls13_next_secret(suite, conn.server_secret)
    assert conn.ctl.next_tx_keys() == tls13_keys(suite, s1)
    assert not conn.ctl.key_update_owed
    assert (conn.ctl.key_updates_tx, conn.stats.key_updates_tx) == (1, 1)

    # Asked again: the secret after that one.
    assert conn.feed(c.key_update(request=1)) == b""
    assert conn.ctl.key_update_owed
    assert conn.ctl.next_tx_keys() == tls13_keys(suite, tls13_next_secret(suite, s1))
    assert (conn.stats.key_updates_rx, conn.stats.key_updates_tx) == (2, 2)


def test_next_tx_keys_is_tls13_only() -> None:
    conn = connect(TLS12[0])
    with refused(UNEXPECTED_MESSAGE):
        conn.ctl.next_tx_keys()


@pytest.mark.parametrize(
    "cuts", [(1,), (2,), (3,), (4,), (1, 2, 3, 4), (4, 4), (0, 5)], ids=lambda c: repr(c)
)
@pytest.mark.parametrize("suite", TLS13, ids=TLS13_IDS)
def test_key_update_split_over_records(suite: CipherSuite, cuts: tuple[int, ...]) -> None:
    """The message may be fragmented; the keys change after its last fragment."""
    conn = connect(suite)
    c = conn.client
    msg = key_update(1)
    bounds = [0, *sorted(set(cuts) - {0, 5}), 5]
    parts = [msg[a:b] for a, b in itertools.pairwise(bounds)]
    stream = b"".join(c.record(CT_HANDSHAKE, p, pad=i) for i, p in enumerate(parts))
    c.next_keys()
    stream += c.data(b"next keys")
    assert conn.feed(stream, 3) == b"next keys"
    assert conn.ctl.key_updates_rx == 1
    assert conn.ctl.key_update_owed


@pytest.mark.parametrize(
    "extra",
    [b"\x18", key_update(0), b"\x18\x00\x00\x01"],
    ids=["byte", "second", "header"],
)
@pytest.mark.parametrize("suite", TLS13, ids=TLS13_IDS)
def test_key_update_must_end_its_record(suite: CipherSuite, extra: bytes) -> None:
    """RFC 8446 5.1: a KeyUpdate followed by more bytes in its record."""
    conn = connect(suite)
    with refused(UNEXPECTED_MESSAGE):
        conn.feed(conn.client.record(CT_HANDSHAKE, key_update(0) + extra))
    # Also when the KeyUpdate itself began in an earlier record.
    conn = connect(suite)
    c = conn.client
    assert conn.feed(c.record(CT_HANDSHAKE, key_update(0)[:2])) == b""
    with refused(UNEXPECTED_MESSAGE):
        conn.feed(c.record(CT_HANDSHAKE, key_update(0)[2:] + extra))


@pytest.mark.parametrize("suite", TLS13, ids=TLS13_IDS)
def test_key_update_then_next_record_in_one_chunk(suite: CipherSuite) -> None:
    """A KeyUpdate ends its record, not the bytes that arrive with it."""
    conn = connect(suite)
    c = conn.client
    stream = c.key_update() + c.key_update(1) + c.data(b"x" * 5000)
    assert conn.feed(stream) == b"x" * 5000
    assert conn.ctl.key_updates_rx == 2


@pytest.mark.parametrize("length", [0, 2, 255, (1 << 24) - 1])
@pytest.mark.parametrize("suite", TLS13, ids=TLS13_IDS)
def test_key_update_wrong_length(suite: CipherSuite, length: int) -> None:
    """decode_error on the message header alone."""
    conn = connect(suite)
    hdr = bytes((HT_KEY_UPDATE,)) + length.to_bytes(3, "big")
    with refused(DECODE_ERROR):
        conn.feed(conn.client.record(CT_HANDSHAKE, hdr))
    assert conn.ctl.key_updates_rx == 0


@pytest.mark.parametrize("request_update", [2, 0x80, 0xFF])
@pytest.mark.parametrize("suite", TLS13, ids=TLS13_IDS)
def test_key_update_bad_request(suite: CipherSuite, request_update: int) -> None:
    conn = connect(suite)
    with refused(ILLEGAL_PARAMETER):
        conn.feed(conn.client.record(CT_HANDSHAKE, key_update(request_update)))
    assert conn.ctl.key_updates_rx == 0


@pytest.mark.parametrize(
    "htype",
    [
        HT_HELLO_REQUEST,
        HT_CLIENT_HELLO,
        HT_SERVER_HELLO,
        HT_NEW_SESSION_TICKET,
        HT_CERTIFICATE,
        HT_FINISHED,
        99,
    ],
)
@pytest.mark.parametrize("suite", TLS13, ids=TLS13_IDS)
def test_tls13_other_post_handshake_messages(suite: CipherSuite, htype: int) -> None:
    """A client may send only KeyUpdate after its Finished (RFC 8446 4.6)."""
    conn = connect(suite)
    with refused(UNEXPECTED_MESSAGE):
        conn.feed(conn.client.record(CT_HANDSHAKE, handshake_message(htype, b"\x00" * 40)[:4]))


@pytest.mark.parametrize("between", ["data", "empty", "alert"])
@pytest.mark.parametrize("suite", ALL, ids=ALL_IDS)
def test_record_inside_a_split_handshake_message(suite: CipherSuite, between: str) -> None:
    """RFC 8446 5.1 (and OpenSSL in TLS 1.2): a handshake message's fragments
    must not be interleaved with other records."""
    conn = connect(suite)
    c = conn.client
    if suite.version is TlsVersion.TLS13:
        msg = key_update(0)
    else:
        msg = handshake_message(HT_CLIENT_HELLO, _fill(60, 9))
    assert conn.feed(c.record(CT_HANDSHAKE, msg[:3])) == b""
    if between == "data":
        intruder = c.data(b"GET")
    elif between == "empty":
        intruder = c.data(b"")
    else:
        intruder = c.alert(WARNING, USER_CANCELED)
    with refused(UNEXPECTED_MESSAGE):
        conn.feed(intruder + c.record(CT_HANDSHAKE, msg[3:]))


# ---------------------------------------------------------------------------
# TLS 1.2 renegotiation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1], ids=["whole", "bytewise"])
@pytest.mark.parametrize("suite", TLS12, ids=TLS12_IDS)
def test_tls12_client_hello_gets_no_renegotiation(suite: CipherSuite, chunk: int | None) -> None:
    """A warning no_renegotiation, as OpenSSL answers, and the connection goes on."""
    conn = connect(suite)
    c = conn.client
    hello = handshake_message(HT_CLIENT_HELLO, _fill(200, 4))
    assert conn.feed(c.data(b"one") + c.record(CT_HANDSHAKE, hello) + c.data(b"two"), chunk) == (
        b"onetwo"
    )
    assert conn.ctl.take_outgoing() == [NO_RENEGOTIATION_WARNING]
    assert conn.ctl.take_outgoing() == []
    assert conn.stats.alerts_sent == 1

    # Split over three records, then two in one record.
    stream = b"".join(c.record(CT_HANDSHAKE, p) for p in (hello[:2], hello[2:100], hello[100:]))
    stream += c.record(CT_HANDSHAKE, hello + hello) + c.data(b"three")
    assert conn.feed(stream, chunk) == b"three"
    assert conn.ctl.take_outgoing() == [NO_RENEGOTIATION_WARNING] * 3
    assert conn.stats.alerts_sent == 4
    assert conn.stats.alerts_received == 0
    assert not conn.ctl.closed


@pytest.mark.parametrize(
    "htype", [HT_HELLO_REQUEST, HT_SERVER_HELLO, HT_NEW_SESSION_TICKET, HT_FINISHED, HT_KEY_UPDATE]
)
@pytest.mark.parametrize("suite", TLS12, ids=TLS12_IDS)
def test_tls12_other_handshake_messages(suite: CipherSuite, htype: int) -> None:
    conn = connect(suite)
    with refused(UNEXPECTED_MESSAGE):
        conn.feed(conn.client.record(CT_HANDSHAKE, handshake_message(htype, b"\x00")))
    assert conn.ctl.take_outgoing() == []


def test_tls12_huge_client_hello_refused_on_its_header() -> None:
    conn = connect(TLS12[0])
    hdr = bytes((HT_CLIENT_HELLO,)) + ((1 << 16) + 1).to_bytes(3, "big")
    with refused(UNEXPECTED_MESSAGE):
        conn.feed(conn.client.record(CT_HANDSHAKE, hdr))


# ---------------------------------------------------------------------------
# Counters
# ---------------------------------------------------------------------------


def test_counters_tls13() -> None:
    suite = TLS13[0]
    conn = connect(suite)
    c = conn.client
    stream = (
        c.data(b"abc")  # 3
        + c.data(b"")  # 0
        + c.alert(WARNING, USER_CANCELED)  # 2
        + c.key_update(1)  # 5
        + c.data(b"defg")  # 4
    )
    assert conn.feed(stream) == b"abcdefg"
    conn.ctl.next_tx_keys()
    st = conn.stats
    assert (st.rx_records, st.rx_bytes, st.rx_failures) == (5, 14, 0)
    assert (st.alerts_received, st.alerts_sent) == (1, 0)
    assert (st.key_updates_rx, st.key_updates_tx) == (1, 1)
    assert (conn.ctl.rx.records, conn.ctl.rx.bytes) == (5, 14)  # across the rekey
    rec = bytearray(c.data(b"h"))
    rec[-1] ^= 0x40
    with refused(BAD_RECORD_MAC):
        conn.feed(bytes(rec))
    assert (st.rx_records, st.rx_failures) == (5, 1)
    assert st.sessions_active == st.records_encrypted == 0  # the send side's are its own


def test_counters_tls12() -> None:
    suite = TLS12[0]
    conn = connect(suite)
    c = conn.client
    stream = (
        c.data(b"abc")
        + c.record(CT_HANDSHAKE, handshake_message(HT_CLIENT_HELLO, b"\x00" * 10))  # 14
        + c.alert(WARNING, USER_CANCELED)
        + c.alert(WARNING, CLOSE_NOTIFY)
    )
    assert conn.feed(stream) == b"abc"
    st = conn.stats
    assert (st.rx_records, st.rx_bytes, st.rx_failures) == (4, 3 + 14 + 2 + 2, 0)
    assert (st.alerts_received, st.alerts_sent) == (2, 1)
    assert (st.key_updates_rx, st.key_updates_tx) == (0, 0)
    assert (conn.ctl.rx.records, conn.ctl.rx.bytes) == (4, 21)


@pytest.mark.parametrize("suite", [TLS13[0], TLS12[0]], ids=["TLS13", "TLS12"])
def test_control_without_stats(suite: CipherSuite) -> None:
    """KtlsStat is optional: everything works without one."""
    conn = connect(suite, counted=False)
    c = conn.client
    stream = c.data(b"x") + c.alert(WARNING, USER_CANCELED)
    if suite.version is TlsVersion.TLS13:
        stream += c.key_update(1)
    else:
        stream += c.record(CT_HANDSHAKE, handshake_message(HT_CLIENT_HELLO, b"\x00"))
    assert conn.feed(stream) == b"x"
    if suite.version is TlsVersion.TLS13:
        conn.ctl.next_tx_keys()
    with refused(BAD_RECORD_MAC):
        conn.feed(header(CT_APPLICATION_DATA, 40) + bytes(40))
    assert (conn.ctl.rx.records, conn.ctl.rx.bytes) == (3, 8)
    assert conn.stats == KtlsStat()


# ---------------------------------------------------------------------------
# Properties: any record layout, any chunking, the same bytes
# ---------------------------------------------------------------------------


@st.composite
def layouts(draw: st.DrawFn, suite: CipherSuite) -> tuple[bytes, bytes, list[int]]:
    """(payload, ciphertext stream, chunk sizes) for `suite`: the payload cut at up
    to 12 random points (pieces over 2^14 split further), zero-length records
    between them, TLS 1.3 padding and KeyUpdates."""
    tls13 = suite.version is TlsVersion.TLS13
    size = draw(st.one_of(st.integers(0, 300), st.integers(0, 3 * MAX_PLAINTEXT)))
    payload = random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    cuts = sorted(draw(st.lists(st.integers(0, size), max_size=12)))
    pieces = []
    for a, b in itertools.pairwise([0, *cuts, size]):
        pieces += [payload[i : min(i + MAX_PLAINTEXT, b)] for i in range(a, b, MAX_PLAINTEXT)]
        if a == b:
            pieces.append(b"")
    c = connect(suite).client
    out = bytearray()
    empty_run = 0  # zero-length records in a row, kept under MAX_EMPTY_RECORDS

    def record(piece: bytes) -> None:
        nonlocal empty_run
        pad = 0
        if tls13:
            room = MAX_PLAINTEXT - len(piece)
            pad = draw(st.one_of(st.just(0), st.integers(0, min(64, room)), st.integers(0, room)))
        out.extend(c.data(piece, pad=pad))
        empty_run = 0 if piece else empty_run + 1

    for piece in pieces:
        for _ in range(draw(st.integers(0, 2))):
            if empty_run < MAX_EMPTY_RECORDS:
                record(b"")
        if tls13 and draw(st.integers(0, 3)) == 0:
            out += c.key_update(pad=draw(st.integers(0, 20)))
            empty_run = 0
        if piece or empty_run < MAX_EMPTY_RECORDS:
            record(piece)
    chunks = draw(
        st.lists(
            st.one_of(st.integers(1, 8), st.integers(1, 2000), st.integers(1, 40_000)),
            min_size=1,
            max_size=8,
        )
    )
    return payload, bytes(out), chunks


def _check_stream(suite: CipherSuite, layout: tuple[bytes, bytes, list[int]]) -> None:
    payload, stream, chunks = layout
    conn = connect(suite)
    got = bytearray()
    pos = 0
    i = 0
    least = len(stream) // 2000  # byte-sized pieces for short streams only: stay fast
    while pos < len(stream):
        n = max(chunks[i % len(chunks)], least)
        got += conn.ctl.receive_data(stream[pos : pos + n])
        pos += n
        i += 1
    assert bytes(got) == payload
    assert conn.ctl.rx.buffered() == 0
    assert conn.stats.rx_failures == 0
    assert conn.ctl.take_outgoing() == []
    assert not conn.ctl.key_update_owed


@pytest.mark.parametrize("suite", TLS13, ids=TLS13_IDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_tls13_any_layout_gives_the_payload(suite: CipherSuite, data: st.DataObject) -> None:
    _check_stream(suite, data.draw(layouts(suite)))


@pytest.mark.parametrize("suite", TLS12, ids=TLS12_IDS)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_tls12_any_layout_gives_the_payload(suite: CipherSuite, data: st.DataObject) -> None:
    _check_stream(suite, data.draw(layouts(suite)))


@pytest.mark.parametrize(
    "suite", [TLS13[0], TLS13[2], TLS12[0], TLS12[2]], ids=lambda s: s.openssl_name
)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_any_flipped_body_bit_is_refused(suite: CipherSuite, data: st.DataObject) -> None:
    """A bit flipped in any record body: bad_record_mac, and what came out
    before is a prefix of the payload (never garbage)."""
    conn = connect(suite)
    c = conn.client
    sizes = data.draw(st.lists(st.integers(0, 3000), min_size=1, max_size=5))
    payload = b"".join(_fill(n, i) for i, n in enumerate(sizes))
    recs = [c.data(_fill(n, i)) for i, n in enumerate(sizes)]
    victim = data.draw(st.integers(0, len(recs) - 1))
    rec = bytearray(recs[victim])
    bit = data.draw(st.integers(5 * 8, len(rec) * 8 - 1))
    rec[bit // 8] ^= 1 << (bit % 8)
    recs[victim] = bytes(rec)
    stream = b"".join(recs)
    chunk = data.draw(st.integers(1, 5000))
    got = bytearray()
    with refused(BAD_RECORD_MAC):
        for pos in range(0, len(stream), chunk):
            got += conn.ctl.receive_data(stream[pos : pos + chunk])
    assert payload.startswith(got)
    assert len(got) <= sum(sizes[:victim])
    assert conn.stats.rx_failures == 1


@pytest.mark.parametrize("suite", TLS12, ids=TLS12_IDS)
def test_tls12_close_notify_at_fatal_level_is_a_fatal_alert(suite: CipherSuite) -> None:
    """As OpenSSL: in TLS 1.2 the level counts, and a fatal alert ends the connection."""
    conn = connect(suite)
    with pytest.raises(PeerAlert) as err:
        conn.feed(conn.client.alert(FATAL, CLOSE_NOTIFY))
    assert (err.value.level, err.value.description) == (FATAL, CLOSE_NOTIFY)
    assert not conn.ctl.closed
