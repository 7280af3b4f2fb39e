"""ktls.handshake: OpenSSL's handshake over memory BIOs, then the hand-off to KTLS.

The client is the stdlib's ssl module (a different OpenSSL build from the
one pyOpenSSL bundles), so every check that "the client decrypts" is an
independent implementation agreeing with ours. The number of records OpenSSL
already sent under the application keys is counted from the protocol
(`TlsPair.app_key_records`), not by trial decryption as `established()` does.
"""

from __future__ import annotations

import ssl

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from ktls.errors import TlsError
from ktls.handshake import (
    CLIENT_HELLO_MAX_LENGTH,
    MAX_HANDSHAKE_BYTES,
    Established,
    TlsHandshake,
)
from ktls.keylog import KEYLOG_LABELS
from ktls.suites import SUITES, TlsVersion
from ktls.workers import KtlsWorkers
from mbuf.kern import Kernel
from mbuf.socket import sosend
from tests.ktls.harness import (
    CASE_IDS,
    CASES,
    PHYS_MEM,
    TLS12_CASES,
    TLS13_CASES,
    Case,
    KtlsConn,
    ServerContexts,
    TlsPair,
    client_context,
    handshake,
)
from tests.support import clients
from tests.support.certs import CertFiles
from tests.support.tlsseal import (
    CT_ALERT,
    CT_APPLICATION_DATA,
    CT_HANDSHAKE,
    open_record,
    parse_records,
    reframe,
)

# RFC 8446 4.1.3: the ServerHello.random that marks a HelloRetryRequest.
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
# RFC 8446 6: AlertLevel fatal, AlertDescription values.
ALERT_FATAL = 2
ALERT_HANDSHAKE_FAILURE = 40
ALERT_PROTOCOL_VERSION = 70

STDLIB_VERSION = {TlsVersion.TLS12: "TLSv1.2", TlsVersion.TLS13: "TLSv1.3"}
# OpenSSL's default SSL_CTX_set_num_tickets() is 2; a TLS 1.2 server's only
# protected handshake record is its Finished.
FULL_HANDSHAKE_TX_SEQ = {TlsVersion.TLS12: 1, TlsVersion.TLS13: 2}


def ktls_roundtrip(
    pair: TlsPair, message: bytes, *, est: Established | None = None, seq_delta: int = 0
) -> KtlsConn:
    """Hand the send side to KTLS and send `message` as the first record after the
    handshake; the caller reads the client. Returns the connection (not closed)."""
    if est is None:
        est = pair.hs.established()
    conn = KtlsConn(Kernel(PHYS_MEM), KtlsWorkers(0), est, pair)
    conn.so.so_snd.sb_tls_seqno = est.tx_seq + seq_delta
    assert sosend(conn.so, message) == len(message)
    conn.pump()
    return conn


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_handshake_hands_off_to_ktls(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case
) -> None:
    pair = handshake(contexts, certs, case)
    assert pair.client.version() == STDLIB_VERSION[case.version]
    cipher = pair.client.cipher()
    assert cipher is not None
    assert cipher[0] == case.cipher

    est = pair.hs.established()
    assert est.version is case.version
    assert est.suite is SUITES[case.cipher]
    assert len(est.tx.key) == len(est.rx.key) == case.suite.key_len
    assert len(est.tx.iv) == case.suite.fixed_iv_len
    assert est.tx != est.rx
    if case.version is TlsVersion.TLS13:
        assert est.tx_secret is not None
        assert len(est.tx_secret) == case.suite.hash().digest_size
    else:
        assert est.tx_secret is None

    assert est.tx_seq == pair.app_key_records() == FULL_HANDSHAKE_TX_SEQ[case.version]

    message = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    conn = ktls_roundtrip(pair, message, est=est)
    assert pair.client_read() == message
    # The same first record, opened by the harness at exactly est.tx_seq.
    [(header, body)] = parse_records(conn.wire)
    assert open_record(case.suite, est.tx, est.tx_seq, header, body) == (
        CT_APPLICATION_DATA,
        message,
    )
    conn.close()
    assert conn.kern.leaks() == {}
    assert conn.kern.stats.ktls.sessions_active == 0


@pytest.mark.parametrize("seq_delta", [-1, 1])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_wrong_first_sequence_number_does_not_decrypt(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case, seq_delta: int
) -> None:
    """The control for the test above: tx_seq is the only number that works."""
    pair = handshake(contexts, certs, case)
    conn = ktls_roundtrip(pair, b"x" * 100, seq_delta=seq_delta)
    with pytest.raises(ssl.SSLError):
        pair.client_read()
    conn.close()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_rx_keys_open_the_clients_first_application_record(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case
) -> None:
    pair = handshake(contexts, certs, case)
    est = pair.hs.established()
    request = b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n"
    pair.client.write(request)
    [(header, body)] = parse_records(pair.c_out.read())
    # TLS 1.2: the client's Finished used sequence number 0 under these keys.
    # TLS 1.3: its Finished was under the handshake keys.
    seqno = 1 if case.version is TlsVersion.TLS12 else 0
    assert open_record(case.suite, est.rx, seqno, header, body) == (CT_APPLICATION_DATA, request)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_resumed_handshake_counts_its_own_records(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case
) -> None:
    """Session-ticket resumption: an abbreviated handshake (TLS 1.2: the server's
    Finished comes in its first flight; TLS 1.3: fewer tickets) still yields the
    right first sequence number."""
    server_ctx = contexts.fresh(case.cert_kind)  # this test's own ticket keys
    if case.version is TlsVersion.TLS13:
        server_ctx.set_tls13_ciphersuites(case.cipher.encode())
    client_ctx = client_context(case, certs)

    first = TlsPair(server_ctx, client_ctx)
    first.handshake()
    assert first.client_read() == b""  # TLS 1.3: consume the NewSessionTickets
    assert not first.client.session_reused

    second = TlsPair(server_ctx, client_ctx, session=first.client.session)
    second.handshake()
    assert second.client.session_reused
    cipher = second.client.cipher()
    assert cipher is not None
    assert cipher[0] == case.cipher
    est = second.hs.established()
    assert est.suite is case.suite
    assert est.tx_seq == second.app_key_records()
    assert est.tx_seq >= 1
    if case.version is TlsVersion.TLS12:
        assert est.tx_seq == 1
        # Abbreviated: the server's ChangeCipherSpec and Finished are in its
        # first flight, and its last flight is empty.
        assert second.completing_flight == b""

    conn = ktls_roundtrip(second, b"resumed", est=est)
    assert second.client_read() == b"resumed"
    conn.close()


def test_hello_retry_request(contexts: ServerContexts, certs: dict[str, CertFiles]) -> None:
    """A server that accepts only P-384 answers the client's X25519 key share with a
    HelloRetryRequest: a second ServerHello, more plaintext records after the
    ChangeCipherSpec, and still two tickets under the application keys."""
    case = TLS13_CASES[0]
    server_ctx = contexts.fresh("ec")
    server_ctx.set_tmp_ecdh(ec.SECP384R1())
    pair = TlsPair(server_ctx, client_context(case, certs))
    pair.handshake()
    hrr_header, hrr_body = parse_records(pair.flights[0])[0]
    assert hrr_header[0] == CT_HANDSHAKE
    assert hrr_body[6:38] == HRR_RANDOM
    est = pair.hs.established()
    assert est.tx_seq == pair.app_key_records() == 2
    conn = ktls_roundtrip(pair, b"after a retry", est=est)
    assert pair.client_read() == b"after a retry"
    conn.close()


@pytest.mark.parametrize(
    ("version", "labels"),
    [
        (TlsVersion.TLS12, {"CLIENT_RANDOM"}),
        (TlsVersion.TLS13, {"CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"}),
    ],
)
def test_key_log_is_wiped_after_established(
    contexts: ServerContexts, certs: dict[str, CertFiles], version: TlsVersion, labels: set[str]
) -> None:
    sink: list[bytes] = []
    case = TLS13_CASES[0] if version is TlsVersion.TLS13 else TLS12_CASES[0]
    pair = TlsPair(contexts.fresh("ec", keylog_sink=sink.append), client_context(case, certs))
    pair.handshake()
    keylog = pair.hs.keylog
    logged = {line.split(b" ")[0].decode() for line in sink}
    assert logged >= labels
    for label in KEYLOG_LABELS:  # the --keylog sink sees every secret; the connection
        assert keylog.has(label) == (label in labels)  # keeps only the ones it uses
    if version is TlsVersion.TLS13:
        assert "CLIENT_HANDSHAKE_TRAFFIC_SECRET" in logged
    assert keylog.client_random is not None
    assert keylog.lines()

    pair.hs.established()

    assert not any(keylog.has(label) for label in KEYLOG_LABELS)
    assert keylog.lines() == []
    assert keylog.client_random is None
    with pytest.raises(LookupError):
        keylog.secret("SERVER_TRAFFIC_SECRET_0" if version is TlsVersion.TLS13 else "CLIENT_RANDOM")


def test_established_before_the_handshake_finished(contexts: ServerContexts) -> None:
    hs = TlsHandshake(contexts.for_case(CASES[0]))
    with pytest.raises(TlsError, match="before the handshake finished"):
        hs.established()
    assert not hs.advance()  # nothing received yet
    with pytest.raises(TlsError):
        hs.established()


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (None, None),
        (["http/1.1"], b"http/1.1"),
        (["h2", "http/1.1"], b"http/1.1"),
        (["h2"], None),
    ],
)
def test_alpn(
    contexts: ServerContexts,
    certs: dict[str, CertFiles],
    offered: list[str] | None,
    expected: bytes | None,
) -> None:
    pair = handshake(contexts, certs, CASES[0], alpn=offered)
    assert pair.hs.established().alpn == expected
    assert pair.client.selected_alpn_protocol() == (expected.decode() if expected else None)


# ---------------------------------------------------------------------------
# What make_server_context refuses
# ---------------------------------------------------------------------------


def refused(server_ctx: SSL.Context, client_ctx: ssl.SSLContext) -> tuple[bytes, bytes, TlsPair]:
    """Run the client's first flight into the server, which must refuse it.
    Returns (ClientHello body, the server's alert record, the pair)."""
    pair = TlsPair(server_ctx, client_ctx)
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.do_handshake()
    hello = pair.c_out.read()
    [(hello_header, hello_body)] = parse_records(hello)
    assert hello_header[0] == CT_HANDSHAKE and hello_body[0] == 1  # a ClientHello was offered
    pair.hs.receive_data(hello)
    with pytest.raises(TlsError):
        pair.hs.advance()
    assert not pair.hs.done
    out = pair.hs.data_to_send()
    [(alert_header, alert_body)] = parse_records(out)
    assert alert_header[0] == CT_ALERT
    pair.to_client(out)
    with pytest.raises(TlsError):
        pair.hs.established()
    return hello_body, alert_body, pair


def _old_client(
    certs: dict[str, CertFiles], version: ssl.TLSVersion, ciphers: str | None = None
) -> ssl.SSLContext:
    return clients.client_context(cafile=certs["ec"].cert, version=version, cipher=ciphers)


@pytest.mark.parametrize(
    ("version", "wire_version"),
    [(ssl.TLSVersion.TLSv1, b"\x03\x01"), (ssl.TLSVersion.TLSv1_1, b"\x03\x02")],
    ids=["TLSv1.0", "TLSv1.1"],
)
def test_refuses_clients_older_than_tls12(
    contexts: ServerContexts,
    certs: dict[str, CertFiles],
    version: ssl.TLSVersion,
    wire_version: bytes,
) -> None:
    # SECLEVEL 0: the client's OpenSSL 3 would not offer TLS < 1.2 otherwise.
    client_ctx = _old_client(certs, version, "DEFAULT:@SECLEVEL=0")
    hello, alert, pair = refused(contexts.fresh("ec"), client_ctx)
    assert hello[4:6] == wire_version  # ClientHello.client_version
    assert alert == bytes((ALERT_FATAL, ALERT_PROTOCOL_VERSION))
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
        pair.client.do_handshake()


@pytest.mark.parametrize(
    ("ciphers", "kind"),
    [
        ("ECDHE-ECDSA-AES128-SHA256", "ec"),  # CBC + HMAC-SHA256
        ("ECDHE-ECDSA-AES256-SHA384", "ec"),  # CBC + HMAC-SHA384
        ("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA", "ec"),  # CBC + HMAC-SHA1
        ("ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA", "rsa"),
        ("AES128-GCM-SHA256:AES256-GCM-SHA384", "rsa"),  # AEAD, but no forward secrecy
    ],
)
def test_refuses_suites_ktls_cannot_offload(
    contexts: ServerContexts, certs: dict[str, CertFiles], ciphers: str, kind: str
) -> None:
    client_ctx = _old_client(certs, ssl.TLSVersion.TLSv1_2, ciphers)
    client_ctx.load_verify_locations(certs[kind].cert)
    _, alert, pair = refused(contexts.fresh(kind), client_ctx)
    assert alert == bytes((ALERT_FATAL, ALERT_HANDSHAKE_FAILURE))
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
        pair.client.do_handshake()


def _fragmented_hello(contexts: ServerContexts, certs: dict[str, CertFiles], size: int) -> TlsPair:
    """The client's first flight (a real ClientHello from an in-memory client)
    re-framed into handshake records of at most `size` bytes."""
    pair = TlsPair(contexts.for_case(TLS13_CASES[0]), client_context(TLS13_CASES[0], certs))
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.do_handshake()
    pair.hs.receive_data(reframe(pair.c_out.read(), size))
    return pair


@pytest.mark.parametrize("size", [1, 2, 7, 100])
def test_a_fragmented_client_hello_is_accepted(
    contexts: ServerContexts, certs: dict[str, CertFiles], size: int
) -> None:
    """TLS allows records of one byte and OpenSSL accepts a ClientHello cut into
    as many as that takes; so does the handshake. Before the server answers
    nothing can complete the handshake: the first flight is given whole."""
    pair = _fragmented_hello(contexts, certs, size)
    assert not pair.hs.advance()
    assert pair.hs.leftover() == b""  # all of it went to OpenSSL in one go
    pair.to_client(pair.hs.data_to_send())
    pair.handshake()
    assert pair.hs.done


def test_the_bound_is_above_openssls_largest_client_hello() -> None:
    """The largest ClientHello OpenSSL takes, in 1-byte records, twice (HelloRetryRequest)."""
    assert MAX_HANDSHAKE_BYTES >= 2 * 6 * (4 + CLIENT_HELLO_MAX_LENGTH)


def test_an_endless_stream_of_tiny_records_is_refused_by_bytes(
    contexts: ServerContexts, certs: dict[str, CertFiles]
) -> None:
    """A ClientHello that claims OpenSSL's largest length and then never ends, in
    1-byte records: OpenSSL keeps waiting for the rest, the byte bound ends it
    (lowered here, so the test stays small)."""
    hs = TlsHandshake(contexts.for_case(TLS13_CASES[0]), max_bytes=60_000)
    # ClientHello, 131396 bytes long, legacy_version 3.3; then bytes that never end.
    stream = b"\x01" + CLIENT_HELLO_MAX_LENGTH.to_bytes(3, "big") + b"\x03\x03"
    given = 0
    with pytest.raises(TlsError, match="longer than 60000 bytes from the client"):
        for _ in range(100):
            chunk = stream.ljust(1000, b"\x00")
            stream = b""
            hs.receive_data(reframe(b"\x16\x03\x01" + len(chunk).to_bytes(2, "big") + chunk))
            assert not hs.advance()  # OpenSSL waits for the rest of its ClientHello
            given += 6 * len(chunk)
    assert 60_000 - 6000 <= given <= 60_000
    assert TlsHandshake(contexts.for_case(TLS13_CASES[0]))._max_bytes == MAX_HANDSHAKE_BYTES
