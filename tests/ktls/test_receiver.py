"""ktls.handshake.TlsReceiver: OpenSSL keeps the receive side after the hand-off.

With KTLS (`owns_tx=False`) it only decrypts what the client sends; with
user-space TLS (`owns_tx=True`, the --no-ktls baseline) it also encrypts.
Client bytes are fed whole and one byte at a time, as h11's tests feed
parsers.
"""

from __future__ import annotations

import ssl

import pytest

from ktls.handshake import TlsError, TlsHandoffError, TlsReceiver
from ktls.suites import TlsVersion
from ktls.workers import KtlsWorkers
from mbuf.kern import Kernel
from mbuf.socket import sosend
from tests.ktls.harness import (
    CASE_IDS,
    CASES,
    CT_APPLICATION_DATA,
    MAX_PLAINTEXT,
    PHYS_MEM,
    TLS13_CASES,
    Case,
    CertFiles,
    KtlsConn,
    ServerContexts,
    TlsPair,
    client_context,
    handshake,
    parse_records,
)

REQUEST = b"GET /index.html HTTP/1.1\r\nhost: localhost\r\n\r\n"


def feed(receiver: TlsReceiver, data: bytes, bytewise: bool) -> bytes:
    if not bytewise:
        return receiver.receive_data(data)
    return b"".join(receiver.receive_data(data[i : i + 1]) for i in range(len(data)))


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_ktls_mode_receives_and_sees_close_notify(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case, bytewise: bool
) -> None:
    pair = handshake(contexts, certs, case)
    est = pair.hs.established()
    receiver = TlsReceiver(pair.hs.conn)
    assert receiver.receive_data(b"") == b""

    pair.client.write(REQUEST)
    pair.client.write(b"x" * 17_000)  # two records
    assert feed(receiver, pair.c_out.read(), bytewise) == REQUEST + b"x" * 17_000
    assert not receiver.closed

    # The send side meanwhile belongs to KTLS, and still works.
    conn = KtlsConn(Kernel(PHYS_MEM), KtlsWorkers(0), est, pair)
    sosend(conn.so, b"HTTP/1.1 204 No Content\r\n\r\n")
    conn.pump()
    assert pair.client_read() == b"HTTP/1.1 204 No Content\r\n\r\n"

    with pytest.raises(ssl.SSLWantReadError):
        pair.client.unwrap()  # sends close_notify, waits for ours
    assert feed(receiver, pair.c_out.read(), bytewise) == b""
    assert receiver.closed
    assert receiver.outgoing == b""  # OpenSSL did not try to answer
    conn.close()


@pytest.mark.parametrize("case", TLS13_CASES, ids=[c.id for c in TLS13_CASES])
def test_request_sent_with_the_clients_finished(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case
) -> None:
    """A TLS 1.3 client may write as soon as it has sent its Finished; the request
    reaches the server in the same flight and waits in OpenSSL for the receiver."""
    pair = TlsPair(contexts.for_case(case), client_context(case, certs))
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.do_handshake()
    pair.hs.receive_data(pair.c_out.read())
    assert not pair.hs.advance()
    pair.to_client(pair.hs.data_to_send())
    pair.client.do_handshake()
    pair.client.write(REQUEST)
    flight = pair.c_out.read()
    assert parse_records(flight)[-1][0][0] == CT_APPLICATION_DATA
    pair.hs.receive_data(flight)
    assert pair.hs.advance()
    pair.hs.established()
    assert TlsReceiver(pair.hs.conn).receive_data(b"") == REQUEST


@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_corrupted_client_record(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case, where: str
) -> None:
    pair = handshake(contexts, certs, case)
    pair.hs.established()
    receiver = TlsReceiver(pair.hs.conn)
    pair.client.write(REQUEST)
    record = bytearray(pair.c_out.read())
    record[5 if where == "first" else -1] ^= 0x80
    with pytest.raises(TlsError) as err:
        receiver.receive_data(bytes(record))
    assert not isinstance(err.value, TlsHandoffError)
    assert not receiver.closed


def test_garbage_instead_of_a_record(contexts: ServerContexts, certs: dict[str, CertFiles]) -> None:
    pair = handshake(contexts, certs, CASES[0])
    receiver = TlsReceiver(pair.hs.conn)
    with pytest.raises(TlsError):
        receiver.receive_data(b"GET / HTTP/1.1\r\n\r\n")  # plaintext HTTP on a TLS port


def test_ktls_mode_refuses_to_encrypt(
    contexts: ServerContexts, certs: dict[str, CertFiles]
) -> None:
    pair = handshake(contexts, certs, CASES[0])
    receiver = TlsReceiver(pair.hs.conn)
    with pytest.raises(TlsHandoffError):
        receiver.encrypt(b"data")
    with pytest.raises(TlsHandoffError):
        receiver.shutdown()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_user_space_tls_encrypts_and_closes(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case
) -> None:
    pair = handshake(contexts, certs, case)
    pair.hs.keylog.wipe()  # what the server does with --no-ktls
    receiver = TlsReceiver(pair.hs.conn, owns_tx=True)

    pair.client.write(REQUEST)
    assert receiver.receive_data(pair.c_out.read()) == REQUEST
    assert receiver.take_outgoing() == b""

    body = bytes(range(256)) * 200  # 51200 bytes: four records
    out = receiver.encrypt(b"HTTP/1.1 200 OK\r\n\r\n") + receiver.encrypt(memoryview(body))
    assert receiver.encrypt(b"") == b""
    records = parse_records(out)
    assert all(h[0] == CT_APPLICATION_DATA for h, _ in records)
    overhead = case.suite.explicit_nonce_len + case.suite.tls_tlen
    assert max(len(b) - overhead for _, b in records) <= MAX_PLAINTEXT
    pair.to_client(out)
    assert pair.client_read() == b"HTTP/1.1 200 OK\r\n\r\n" + body

    close = receiver.shutdown()
    [(header, _)] = parse_records(close)
    assert header[0] == (CT_APPLICATION_DATA if case.version is TlsVersion.TLS13 else 21)
    pair.to_client(close)
    assert pair.client.read(1) == b""  # clean EOF: close_notify
    pair.client.unwrap()  # answers; no more reading needed
    assert receiver.receive_data(pair.c_out.read()) == b""
    assert receiver.closed
