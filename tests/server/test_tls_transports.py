"""server.transport.handshake and the two TLS transports, over a real socket pair.

A pyOpenSSL client driven through memory BIOs talks to `tls_accept` and then to
the transport it returned: kernel TLS (the model's record layer) or user-space
TLS (OpenSSL's). The same script runs against both, in TLS 1.2 and 1.3: a
request in, a response and our close_notify out, the client's close_notify in;
then every kernel resource of the connection is freed."""

from __future__ import annotations

import pathlib
import socket

import pytest
import trio
from OpenSSL import SSL

from ktls.errors import TlsError
from ktls.handshake import make_server_context
from server.transport import Transport
from server.transport.handshake import PLAIN_HTTP_ON_TLS, tls_accept
from tests.server.edge import Edge
from tests.support.certs import CertFiles, make_cert


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_cert(pathlib.Path(tmp_path_factory.mktemp("cert")), "ec")


class _Client:
    """A TLS client over the peer end of the socket pair, through memory BIOs."""

    def __init__(self, peer: socket.socket, version: int) -> None:
        self.peer = peer
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_max_proto_version(version)
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_connect_state()

    async def flush(self) -> None:
        while True:
            try:
                data = self.conn.bio_read(1 << 16)
            except SSL.WantReadError:
                return
            await trio.lowlevel.wait_writable(self.peer)
            self.peer.sendall(data)

    async def feed(self) -> None:
        await trio.lowlevel.wait_readable(self.peer)
        data = self.peer.recv(1 << 16)
        if not data:
            self.conn.bio_shutdown()
        else:
            self.conn.bio_write(data)

    async def handshake(self) -> None:
        while True:
            try:
                self.conn.do_handshake()
                break
            except SSL.WantReadError:
                await self.flush()
                await self.feed()
        await self.flush()

    async def read(self) -> bytes:
        """Application bytes; b"" once the server's close_notify came."""
        while True:
            try:
                return self.conn.recv(1 << 16)
            except SSL.WantReadError:
                await self.feed()
            except SSL.ZeroReturnError:
                return b""


async def _receive(edge: Edge, transport: Transport) -> bytes:
    """Application bytes from the client through `transport`; b"" at its end."""
    while True:
        raw = await edge.tx.recv()
        if not raw:
            return b""
        plain = await transport.receive(raw)
        if plain or transport.eof:
            return plain


async def _established(
    edge: Edge, cert: CertFiles, ktls: bool, version: int
) -> tuple[_Client, Transport]:
    """A client and the transport `tls_accept` returned, once both ends are done."""
    ctx = make_server_context(cert.cert, cert.key)
    client = _Client(edge.peer, version)
    async with trio.open_nursery() as both:
        both.start_soon(client.handshake)
        transport = await tls_accept(edge.server(ctx, ktls=ktls), edge.tx)
    assert transport is not None
    return client, transport


modes = pytest.mark.parametrize("ktls", [True, False], ids=["ktls", "user-tls"])


@modes
@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION], ids=["1.2", "1.3"])
async def test_request_response_close(cert: CertFiles, ktls: bool, version: int) -> None:
    async with trio.open_nursery() as nursery:
        edge = Edge(nursery)
        client, transport = await _established(edge, cert, ktls, version)
        assert edge.stats.tls_handshakes == 1
        assert transport.tickets_pending is (version == SSL.TLS1_3_VERSION)
        assert await transport.first_data() == b""
        info = transport.info()
        if ktls:
            assert info["tls"] == ("TLS13" if version == SSL.TLS1_3_VERSION else "TLS12")
            assert {"suite", "tx_seq", "rx_seq", "key_updates_rx"} <= set(info)
        else:
            assert info == {"tls": "user-space (OpenSSL)"}

        client.conn.sendall(b"GET / HTTP/1.1\r\n\r\n")
        await client.flush()
        assert await _receive(edge, transport) == b"GET / HTTP/1.1\r\n\r\n"

        await transport.send(b"HTTP/1.1 200 OK\r\n\r\nhello")
        await transport.close_notify()
        await transport.close_notify()  # once only
        await edge.tx.flush()
        got = b""
        while chunk := await client.read():
            got += chunk
        assert got == b"HTTP/1.1 200 OK\r\n\r\nhello"

        client.conn.shutdown()  # the client's close_notify
        await client.flush()
        assert await _receive(edge, transport) == b""
        assert transport.eof
        await edge.close()


@modes
async def test_bad_record_is_answered_with_a_fatal_alert(cert: CertFiles, ktls: bool) -> None:
    """A record that does not decrypt: a fatal alert, our last bytes, then TlsError."""
    async with trio.open_nursery() as nursery:
        edge = Edge(nursery)
        _, transport = await _established(edge, cert, ktls, SSL.TLS1_2_VERSION)
        edge.peer.sendall(b"\x17\x03\x03\x00\x28" + bytes(40))
        with pytest.raises(TlsError):  # KTLS RX refuses it in so_rcv; OpenSSL after soreceive
            await transport.receive(await transport.recv())
        assert transport.linger_wanted
        alert = await edge.peer_read(5)
        assert alert[0] == 0x15  # TLS 1.2: an encrypted alert in an alert record
        assert edge.kern.stats.ktls.alerts_sent == (1 if ktls else 0)
        await edge.close()


async def test_bad_record_with_the_finished_is_answered(cert: CertFiles) -> None:
    """TLS 1.3, KTLS: a record that does not decrypt arrives in the same segment as
    the client's Finished, so KTLS RX refuses it among the handshake's leftovers
    (ktls_enable_rx). The transport comes up all the same, and its first read
    answers the refused record with the fatal alert (never a bare close)."""
    async with trio.open_nursery() as nursery:
        edge = Edge(nursery)
        ctx = make_server_context(cert.cert, cert.key)
        client = _Client(edge.peer, SSL.TLS1_3_VERSION)

        async def finished_and_bad_record() -> None:
            while True:
                try:
                    client.conn.do_handshake()
                    break
                except SSL.WantReadError:
                    await client.flush()
                    await client.feed()
            finished = client.conn.bio_read(1 << 16)
            edge.peer.sendall(finished + b"\x17\x03\x03\x00\x28" + bytes(40))

        async with trio.open_nursery() as both:
            both.start_soon(finished_and_bad_record)
            transport = await tls_accept(edge.server(ctx, ktls=True), edge.tx)
        assert transport is not None
        assert await transport.first_data() == b""
        with pytest.raises(TlsError):
            await transport.recv()
        assert transport.linger_wanted and edge.kern.stats.ktls.alerts_sent == 1
        assert (await edge.peer_read(5))[0] == 0x17  # TLS 1.3: the alert inside a record
        await edge.close()


async def test_plain_http_on_the_tls_port(cert: CertFiles) -> None:
    """As nginx: a plain HTTP request on the TLS port is answered in plain HTTP."""
    ctx = make_server_context(cert.cert, cert.key)
    async with trio.open_nursery() as nursery:
        edge = Edge(nursery)
        edge.peer.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await tls_accept(edge.server(ctx, ktls=True), edge.tx) is None
        assert edge.stats.tls_handshake_failures == 1
        assert await edge.peer_read(len(PLAIN_HTTP_ON_TLS)) == PLAIN_HTTP_ON_TLS
        await edge.close()


async def test_client_gone_during_handshake(cert: CertFiles) -> None:
    ctx = make_server_context(cert.cert, cert.key)
    async with trio.open_nursery() as nursery:
        edge = Edge(nursery)
        edge.peer.shutdown(socket.SHUT_WR)
        assert await tls_accept(edge.server(ctx, ktls=True), edge.tx) is None
        assert (edge.stats.tls_handshakes, edge.stats.tls_handshake_failures) == (0, 0)
        await edge.close()
