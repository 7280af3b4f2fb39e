"""What the client sends after the handshake, from a real client.

With KTLS the server hands the receive side to `ktls.control.TlsControl`
(KtlsRxSession under it), built from `TlsHandshake.established()` and fed
first with `TlsHandshake.leftover()`: whatever the client sent after its
Finished, which OpenSSL never read. With user-space TLS (--no-ktls) OpenSSL
keeps both directions (`UserTls`) and gets the leftover instead.

The client is the stdlib's ssl module (its own OpenSSL build), or, where the
test needs the client's traffic secrets or a renegotiation, a pyOpenSSL
client whose key-log callback keeps them in memory (`OsslPair`). Python has
no KeyUpdate API in either, so a client KeyUpdate and the records after it
are sealed by the test (`harness.Sealer`, its own AEAD code) under the keys
the client's key log gives. Client bytes are fed whole and one byte at a time,
as h11's tests feed parsers.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Protocol

import pytest
from OpenSSL import SSL

from ktls.alerts import (
    BAD_RECORD_MAC,
    CLOSE_NOTIFY,
    FATAL,
    HANDSHAKE_FAILURE,
    NO_RENEGOTIATION,
    UNEXPECTED_MESSAGE,
    USER_CANCELED,
    WARNING,
    PeerAlert,
    RecordError,
)
from ktls.control import TlsControl
from ktls.errors import TlsError
from ktls.handshake import Established, TlsHandshake, UserTls
from ktls.suites import TlsVersion
from ktls.workers import KtlsWorkers
from mbuf.counters import KtlsStat
from mbuf.kern import Kernel
from mbuf.socket import TLS_RLTYPE_ALERT, TLS_RLTYPE_HANDSHAKE, sosend
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
from tests.support.certs import HOSTNAME, CertFiles
from tests.support.tlsseal import (
    CT_ALERT,
    CT_APPLICATION_DATA,
    CT_CHANGE_CIPHER_SPEC,
    CT_HANDSHAKE,
    MAX_PLAINTEXT,
    Sealer,
    key_update,
    parse_records,
    tls12_keys,
    tls13_keys,
    tls13_next_secret,
)

REQUEST = b"GET /index.html HTTP/1.1\r\nhost: localhost\r\n\r\n"
RESPONSE = b"HTTP/1.1 204 No Content\r\n\r\n"
TLS13_IDS = [c.id for c in TLS13_CASES]
TLS12_IDS = [c.id for c in TLS12_CASES]
# The first receive sequence number (Established.rx_seq): TLS 1.2's client
# Finished took 0 under the client write key; in TLS 1.3 it was under the
# handshake keys.
FIRST_RX_SEQ = {TlsVersion.TLS12: 1, TlsVersion.TLS13: 0}


class Receiver(Protocol):
    def receive_data(self, data: bytes) -> bytes: ...


def feed(receiver: Receiver, data: bytes, bytewise: bool) -> bytes:
    if not bytewise:
        return receiver.receive_data(data)
    return b"".join(receiver.receive_data(data[i : i + 1]) for i in range(len(data)))


def ktls_control(hs: TlsHandshake, stats: KtlsStat) -> tuple[Established, TlsControl]:
    """What the server does when the handshake is done, KTLS mode."""
    est = hs.established()
    ctl = TlsControl(est, stats)
    assert ctl.receive_data(hs.leftover()) == b""
    return est, ctl


class OsslPair:
    """A server TlsHandshake and a pyOpenSSL client over memory BIOs. The client's
    key log stays in memory (`secrets`, by label)."""

    def __init__(self, server_ctx: SSL.Context, case: Case, certs: dict[str, CertFiles]) -> None:
        self.hs = TlsHandshake(server_ctx)
        self.secrets: dict[str, bytes] = {}
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.load_verify_locations(certs[case.cert_kind].cert)
        ctx.set_verify(SSL.VERIFY_PEER)
        v = SSL.TLS1_3_VERSION if case.version is TlsVersion.TLS13 else SSL.TLS1_2_VERSION
        ctx.set_min_proto_version(v)
        ctx.set_max_proto_version(v)
        if case.version is TlsVersion.TLS13:
            ctx.set_tls13_ciphersuites(case.cipher.encode())
        else:
            ctx.set_cipher_list(case.cipher.encode())

        def on_keylog(conn: SSL.Connection, line: bytes) -> None:
            label, _, secret = line.split()
            self.secrets[label.decode()] = bytes.fromhex(secret.decode())

        ctx.set_keylog_callback(on_keylog)
        self.client = SSL.Connection(ctx, None)
        self.client.set_connect_state()
        self.client.set_tlsext_host_name(HOSTNAME.encode())

    def client_out(self) -> bytes:
        out = bytearray()
        while True:
            try:
                chunk = self.client.bio_read(1 << 16)
            except SSL.WantReadError:
                return bytes(out)
            out += chunk

    def to_client(self, data: bytes | bytearray) -> None:
        if data:
            self.client.bio_write(bytes(data))

    def client_read(self) -> bytes:
        """Everything the client can decrypt now (SSL.Error propagates)."""
        out = bytearray()
        while True:
            try:
                out += self.client.recv(1 << 16)
            except SSL.WantReadError:
                return bytes(out)

    def handshake(self) -> None:
        client_done = False
        for _ in range(8):
            if not client_done:
                with contextlib.suppress(SSL.WantReadError):  # more from the server first
                    self.client.do_handshake()
                    client_done = True
            self.hs.receive_data(self.client_out())
            self.hs.advance()
            self.to_client(self.hs.data_to_send())
            if client_done and self.hs.done:
                return
        raise AssertionError("handshake did not finish in 8 round trips")


# ---------------------------------------------------------------------------
# KTLS: TlsControl with the stdlib client
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_ktls_receives_requests_and_close_notify(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case, bytewise: bool
) -> None:
    pair = handshake(contexts, certs, case)
    kern = Kernel(PHYS_MEM)
    stats = kern.stats.ktls
    est, ctl = ktls_control(pair.hs, stats)
    assert est.rx_seq == FIRST_RX_SEQ[case.version]
    assert ctl.rx.seqno == est.rx_seq
    assert ctl.receive_data(b"") == b""

    body = bytes(range(256)) * 80  # 20480 bytes: two records
    pair.client.write(REQUEST)
    pair.client.write(body)
    stream = pair.c_out.read()
    nrec = len(parse_records(stream))
    assert nrec == 3
    assert feed(ctl, stream, bytewise) == REQUEST + body
    assert not ctl.closed
    assert (stats.rx_records, stats.rx_bytes, stats.rx_failures) == (3, len(REQUEST + body), 0)
    assert (ctl.rx.records, ctl.rx.bytes) == (3, len(REQUEST + body))
    assert ctl.rx.seqno == est.rx_seq + 3

    # The send side meanwhile belongs to KTLS, and still works.
    conn = KtlsConn(kern, KtlsWorkers(0), est, pair)
    sosend(conn.so, RESPONSE)
    conn.pump()
    assert pair.client_read() == RESPONSE

    with pytest.raises(ssl.SSLWantReadError):
        pair.client.unwrap()  # sends close_notify, waits for ours
    assert feed(ctl, pair.c_out.read(), bytewise) == b""
    assert ctl.closed
    assert ctl.take_outgoing() == []
    assert (stats.alerts_received, stats.alerts_sent, stats.rx_failures) == (1, 0, 0)

    # Ours, as the server sends it: the client's unwrap() completes.
    sosend(conn.so, bytes((WARNING, CLOSE_NOTIFY)), TLS_RLTYPE_ALERT)
    conn.pump()
    pair.client.unwrap()
    conn.close()


@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_ktls_corrupted_client_record(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case, where: str
) -> None:
    pair = handshake(contexts, certs, case)
    stats = KtlsStat()
    _, ctl = ktls_control(pair.hs, stats)
    pair.client.write(REQUEST)
    record = bytearray(pair.c_out.read())
    record[5 if where == "first" else -1] ^= 0x80
    with pytest.raises(RecordError) as err:
        ctl.receive_data(bytes(record))
    assert err.value.description == BAD_RECORD_MAC
    assert not ctl.closed
    assert (stats.rx_records, stats.rx_failures) == (0, 1)


@pytest.mark.parametrize("case", [TLS13_CASES[0], TLS12_CASES[0]], ids=["TLS13", "TLS12"])
def test_ktls_plain_http_instead_of_a_record(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case
) -> None:
    """ "GET /" is a record of type 0x47: refused on its header."""
    pair = handshake(contexts, certs, case)
    _, ctl = ktls_control(pair.hs, KtlsStat())
    with pytest.raises(RecordError) as err:
        ctl.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    assert err.value.description == UNEXPECTED_MESSAGE


# ---------------------------------------------------------------------------
# KTLS: KeyUpdate and renegotiation, with a pyOpenSSL client
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("requested", [False, True], ids=["not_requested", "requested"])
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("case", TLS13_CASES, ids=TLS13_IDS)
def test_ktls_client_key_update(
    contexts: ServerContexts,
    certs: dict[str, CertFiles],
    case: Case,
    bytewise: bool,
    requested: bool,
) -> None:
    suite = case.suite
    pair = OsslPair(contexts.for_case(case), case, certs)
    pair.handshake()
    kern = Kernel(PHYS_MEM)
    stats = kern.stats.ktls
    est, ctl = ktls_control(pair.hs, stats)

    # The client's own key log agrees with the server's derivation.
    c_secret = pair.secrets["CLIENT_TRAFFIC_SECRET_0"]
    s_secret = pair.secrets["SERVER_TRAFFIC_SECRET_0"]
    assert est.rx_secret == c_secret
    assert est.rx == tls13_keys(suite, c_secret)

    pair.client.sendall(REQUEST)  # a real record, sequence number 0
    assert feed(ctl, pair.client_out(), bytewise) == REQUEST

    # The client's KeyUpdate at sequence number 1, then records under the next
    # keys from 0 (RFC 8446 4.6.3, 7.2).
    client = Sealer(suite, tls13_keys(suite, c_secret), 1, c_secret)
    stream = client.key_update(int(requested)) + client.data(b"after") + client.data(b" update")
    assert feed(ctl, stream, bytewise) == b"after update"
    assert ctl.rx.iv == tls13_keys(suite, tls13_next_secret(suite, c_secret)).iv
    assert ctl.key_update_owed is requested
    assert (ctl.key_updates_rx, stats.key_updates_rx) == (1, 1)
    assert ctl.take_outgoing() == []

    conn = KtlsConn(kern, KtlsWorkers(0), est, pair)
    if requested:
        # The server's answer, as server/transport/ktls.py does: its KeyUpdate under the
        # current keys, then a successor session with the next ones.
        assert sosend(conn.so, key_update(0), TLS_RLTYPE_HANDSHAKE) == 5
        conn.pump()
        keys = ctl.next_tx_keys()
        assert keys == tls13_keys(suite, tls13_next_secret(suite, s_secret))
        assert not ctl.key_update_owed
        assert stats.key_updates_tx == 1
        conn.tls = conn.tls.successor(keys.key, keys.iv)
        conn.so.so_snd.sb_tls_info = conn.tls
        conn.so.so_snd.sb_tls_seqno = 0
    sosend(conn.so, RESPONSE)
    conn.pump()
    assert pair.client_read() == RESPONSE  # the real client followed our KeyUpdate

    # Its close_notify under the next keys too.
    assert feed(ctl, client.alert(WARNING, CLOSE_NOTIFY), bytewise) == b""
    assert ctl.closed
    conn.close()


@pytest.mark.parametrize("case", TLS12_CASES, ids=TLS12_IDS)
def test_ktls_client_renegotiation_refused(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case
) -> None:
    """A TLS 1.2 client's renegotiating ClientHello gets a warning no_renegotiation
    (as OpenSSL answers); OpenSSL's client gives up with a fatal handshake_failure."""
    pair = OsslPair(contexts.for_case(case), case, certs)
    pair.handshake()
    kern = Kernel(PHYS_MEM)
    stats = kern.stats.ktls
    est, ctl = ktls_control(pair.hs, stats)
    pair.client.sendall(REQUEST)
    assert ctl.receive_data(pair.client_out()) == REQUEST

    assert pair.client.renegotiate()
    with pytest.raises(SSL.WantReadError):
        pair.client.do_handshake()
    hello = pair.client_out()
    assert [h[0] for h, _ in parse_records(hello)] == [CT_HANDSHAKE]
    assert ctl.receive_data(hello) == b""
    outgoing = ctl.take_outgoing()
    assert outgoing == [(CT_ALERT, bytes((WARNING, NO_RENEGOTIATION)))]
    assert stats.alerts_sent == 1

    conn = KtlsConn(kern, KtlsWorkers(0), est, pair)
    for rtype, payload in outgoing:
        sosend(conn.so, payload, rtype)
    conn.pump()
    with pytest.raises(SSL.Error, match="no renegotiation"):
        pair.client.do_handshake()
    with pytest.raises(PeerAlert) as err:
        ctl.receive_data(pair.client_out())
    assert (err.value.level, err.value.description) == (FATAL, HANDSHAKE_FAILURE)
    assert stats.alerts_received == 1
    conn.close()


# ---------------------------------------------------------------------------
# The request that arrives with the client's Finished (TlsHandshake.leftover)
# ---------------------------------------------------------------------------


def _early_request_pair(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case
) -> TlsPair:
    """A pair whose client has sent its Finished and can write at once: TLS 1.3,
    or a resumed TLS 1.2 session (the server's Finished comes first)."""
    if case.version is TlsVersion.TLS13:
        return TlsPair(contexts.for_case(case), client_context(case, certs))
    server_ctx = contexts.fresh(case.cert_kind)  # this test's own ticket keys
    client_ctx = client_context(case, certs)
    first = TlsPair(server_ctx, client_ctx)
    first.handshake()
    return TlsPair(server_ctx, client_ctx, session=first.client.session)


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("mode", ["ktls", "user"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_request_sent_with_the_clients_finished(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case, mode: str, bytewise: bool
) -> None:
    """The client writes before the server has read its Finished; the records
    after the Finished wait in `leftover()`, not in OpenSSL, for whichever
    record layer takes over."""
    pair = _early_request_pair(contexts, certs, case)
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.do_handshake()
    pair.hs.receive_data(pair.c_out.read())
    assert not pair.hs.advance()
    pair.to_client(pair.hs.data_to_send())
    pair.client.do_handshake()  # done: its Finished is written
    if case.version is TlsVersion.TLS12:
        assert pair.client.session_reused
    finished = pair.c_out.read()
    pair.client.write(REQUEST)
    pair.client.write(b"second")
    pair.client.write(b"third")
    after = pair.c_out.read()
    recs = parse_records(after)
    assert [h[0] for h, _ in recs] == [CT_APPLICATION_DATA] * 3
    cut = len(after) - 3  # the third record not complete yet
    flight = finished + after[:cut]
    types = [h[0] for h, _ in parse_records(finished)]
    assert types[0] == CT_CHANGE_CIPHER_SPEC

    if bytewise:
        for i in range(len(flight)):
            pair.hs.receive_data(flight[i : i + 1])
            pair.hs.advance()
    else:
        pair.hs.receive_data(flight)
        pair.hs.advance()
    assert pair.hs.done
    pair.to_client(pair.hs.data_to_send())
    leftover = pair.hs.leftover()
    assert leftover == after[:cut]
    assert pair.hs.leftover() == b""  # handed over once

    if mode == "ktls":
        est = pair.hs.established()
        assert est.rx_seq == FIRST_RX_SEQ[case.version]
        # OpenSSL holds none of it.
        assert UserTls(pair.hs.conn).receive_data(b"") == b""
        ctl = TlsControl(est)
        assert feed(ctl, leftover, bytewise) == REQUEST + b"second"
        assert ctl.receive_data(after[cut:]) == b"third"
        assert ctl.rx.seqno == est.rx_seq + 3
    else:
        pair.hs.keylog.wipe()
        user = UserTls(pair.hs.conn, leftover)
        assert user.receive_data(b"") == REQUEST + b"second"
        assert user.receive_data(after[cut:]) == b"third"
        pair.to_client(user.encrypt(RESPONSE))
        assert pair.client_read() == RESPONSE


@pytest.mark.parametrize("case", TLS12_CASES, ids=TLS12_IDS)
def test_resumed_tls12_first_rx_seq(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case
) -> None:
    """Abbreviated handshake: the client's Finished is still its one record under
    the new keys before application data."""
    pair = _early_request_pair(contexts, certs, case)
    pair.handshake()
    assert pair.client.session_reused
    est, ctl = ktls_control(pair.hs, KtlsStat())
    assert est.rx_seq == 1
    pair.client.write(REQUEST)
    assert ctl.receive_data(pair.c_out.read()) == REQUEST


# ---------------------------------------------------------------------------
# User-space TLS (--no-ktls): OpenSSL keeps both directions
# ---------------------------------------------------------------------------


def user_tls(pair: TlsPair | OsslPair) -> UserTls:
    """What the server does when the handshake is done, --no-ktls."""
    pair.hs.keylog.wipe()
    return UserTls(pair.hs.conn, pair.hs.leftover())


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_user_tls_receives_encrypts_and_closes(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case, bytewise: bool
) -> None:
    pair = handshake(contexts, certs, case)
    user = user_tls(pair)

    pair.client.write(REQUEST)
    assert feed(user, pair.c_out.read(), bytewise) == REQUEST
    assert user.take_outgoing() == b""

    body = bytes(range(256)) * 200  # 51200 bytes: four records
    out = user.encrypt(b"HTTP/1.1 200 OK\r\n\r\n") + user.encrypt(memoryview(body))
    assert user.encrypt(b"") == b""
    records = parse_records(out)
    assert all(h[0] == CT_APPLICATION_DATA for h, _ in records)
    overhead = case.suite.explicit_nonce_len + case.suite.tls_tlen
    assert max(len(b) - overhead for _, b in records) <= MAX_PLAINTEXT
    pair.to_client(out)
    assert pair.client_read() == b"HTTP/1.1 200 OK\r\n\r\n" + body

    close = user.shutdown()
    [(header, _)] = parse_records(close)
    assert header[0] == (CT_APPLICATION_DATA if case.version is TlsVersion.TLS13 else CT_ALERT)
    pair.to_client(close)
    assert pair.client.read(1) == b""  # clean EOF: close_notify
    pair.client.unwrap()  # answers; no more reading needed
    assert feed(user, pair.c_out.read(), bytewise) == b""
    assert user.closed


@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_user_tls_corrupted_client_record(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case, where: str
) -> None:
    """OpenSSL refuses the record and its bad_record_mac alert waits in
    `outgoing`; the client reads it."""
    pair = handshake(contexts, certs, case)
    user = user_tls(pair)
    pair.client.write(REQUEST)
    record = bytearray(pair.c_out.read())
    record[5 if where == "first" else -1] ^= 0x80
    with pytest.raises(TlsError):
        user.receive_data(bytes(record))
    assert not user.closed
    alert = user.take_outgoing()
    [(header, _)] = parse_records(alert)
    assert header[0] == (CT_APPLICATION_DATA if case.version is TlsVersion.TLS13 else CT_ALERT)
    pair.to_client(alert)
    with pytest.raises(ssl.SSLError) as err:
        pair.client_read()
    assert err.value.reason == "SSLV3_ALERT_BAD_RECORD_MAC"


@pytest.mark.parametrize("case", [TLS13_CASES[0], TLS12_CASES[0]], ids=["TLS13", "TLS12"])
def test_user_tls_plain_http_instead_of_a_record(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case
) -> None:
    pair = handshake(contexts, certs, case)
    user = user_tls(pair)
    with pytest.raises(TlsError):
        user.receive_data(b"GET / HTTP/1.1\r\n\r\n")  # plaintext HTTP on a TLS port
    pair.to_client(user.take_outgoing())  # OpenSSL's fatal alert
    with pytest.raises(ssl.SSLError, match="ALERT"):
        pair.client_read()


@pytest.mark.parametrize("case", TLS13_CASES, ids=TLS13_IDS)
def test_user_tls_client_key_update(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case
) -> None:
    """OpenSSL follows the client's KeyUpdate(update_requested) and writes its own
    before its next record."""
    suite = case.suite
    pair = OsslPair(contexts.for_case(case), case, certs)
    pair.handshake()
    user = user_tls(pair)
    pair.client.sendall(REQUEST)
    assert user.receive_data(pair.client_out()) == REQUEST

    c_secret = pair.secrets["CLIENT_TRAFFIC_SECRET_0"]
    client = Sealer(suite, tls13_keys(suite, c_secret), 1, c_secret)
    assert user.receive_data(client.key_update(1) + client.data(b"after")) == b"after"
    out = user.take_outgoing() + user.encrypt(RESPONSE)
    assert len(parse_records(out)) == 2  # its KeyUpdate, then the response
    pair.to_client(out)
    assert pair.client_read() == RESPONSE


@pytest.mark.parametrize("case", TLS12_CASES[:1], ids=TLS12_IDS[:1])
def test_user_tls_client_renegotiation_refused(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case
) -> None:
    """The same answer from OpenSSL itself (SSL_OP_NO_RENEGOTIATION)."""
    pair = OsslPair(contexts.for_case(case), case, certs)
    pair.handshake()
    user = user_tls(pair)
    assert pair.client.renegotiate()
    with pytest.raises(SSL.WantReadError):
        pair.client.do_handshake()
    assert user.receive_data(pair.client_out()) == b""
    warning = user.take_outgoing()
    assert [h[0] for h, _ in parse_records(warning)] == [CT_ALERT]
    pair.to_client(warning)
    with pytest.raises(SSL.Error, match="no renegotiation"):
        pair.client.do_handshake()


# ---------------------------------------------------------------------------
# KTLS against OpenSSL's own record layer: the same client records to both
# ---------------------------------------------------------------------------


def _client_sealer(pair: OsslPair, case: Case) -> Sealer:
    """The client's next record, from its own key log (it has written none yet)."""
    suite = case.suite
    if case.version is TlsVersion.TLS13:
        c_secret = pair.secrets["CLIENT_TRAFFIC_SECRET_0"]
        return Sealer(suite, tls13_keys(suite, c_secret), 0, c_secret)
    crandom, srandom = pair.client.client_random(), pair.client.server_random()
    assert crandom is not None
    assert srandom is not None
    keys, _ = tls12_keys(suite, pair.secrets["CLIENT_RANDOM"], crandom, srandom)
    return Sealer(suite, keys, 1)  # its Finished took 0


# Which record of a run OpenSSL refuses: the 33rd empty one (MAX_EMPTY_RECORDS
# is 32), the fifth warning (alert_count == MAX_WARN_ALERT_COUNT, 5), and, in
# TLS 1.3, the user_canceled alerts that stand for warnings there.
OPENSSL_REFUSES_AT = {"empty": 33, "warning": 5}


@pytest.mark.parametrize("mode", ["user", "ktls"])
@pytest.mark.parametrize("run", sorted(OPENSSL_REFUSES_AT))
@pytest.mark.parametrize("case", [TLS13_CASES[0], TLS12_CASES[0]], ids=["TLS13", "TLS12"])
def test_runs_of_records_that_deliver_nothing(
    contexts: ServerContexts,
    certs: dict[str, CertFiles],
    case: Case,
    run: str,
    mode: str,
) -> None:
    """Empty records and warnings are cheap to send and deliver nothing: both
    record layers refuse a long run of them at the same record."""
    pair = OsslPair(contexts.for_case(case), case, certs)
    pair.handshake()
    client = _client_sealer(pair, case)
    receiver: Receiver
    if mode == "user":
        receiver = user_tls(pair)
        refusal: type[Exception] = TlsError
    else:
        receiver = ktls_control(pair.hs, KtlsStat())[1]
        refusal = RecordError
    assert receiver.receive_data(client.data(b"GET")) == b"GET"  # the keys are right

    def nothing() -> bytes:
        return client.data(b"") if run == "empty" else client.alert(WARNING, USER_CANCELED)

    for _ in range(OPENSSL_REFUSES_AT[run] - 1):
        assert receiver.receive_data(nothing()) == b""
    with pytest.raises(refusal):
        receiver.receive_data(nothing())


@pytest.mark.parametrize("mode", ["user", "ktls"])
@pytest.mark.parametrize("version", [0x0301, 0x0304])
@pytest.mark.parametrize("case", TLS13_CASES, ids=TLS13_IDS)
def test_tls13_record_version_other_than_0303(
    contexts: ServerContexts,
    certs: dict[str, CertFiles],
    case: Case,
    version: int,
    mode: str,
) -> None:
    """OpenSSL refuses a TLS 1.3 record whose legacy_record_version is not 0x0303
    ("wrong version number"), as FreeBSD's ktls_decrypt does (EINVAL)."""
    pair = OsslPair(contexts.for_case(case), case, certs)
    pair.handshake()
    client = _client_sealer(pair, case)
    receiver: Receiver = user_tls(pair) if mode == "user" else ktls_control(pair.hs, KtlsStat())[1]
    rec = bytearray(client.data(REQUEST))
    rec[1:3] = version.to_bytes(2, "big")
    with pytest.raises(TlsError):
        receiver.receive_data(bytes(rec))
