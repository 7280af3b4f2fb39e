"""server.transport.handshake and the two TLS transports, over a real socket pair.

A pyOpenSSL client driven through memory BIOs talks to `tls_accept` and then to
the transport it returned: kernel TLS (the model's record layer) or user-space
TLS (OpenSSL's). The same script runs against both, in TLS 1.2 and 1.3: a
request in, a response and our close_notify out, the client's close_notify in;
then every kernel resource of the connection is freed."""

from __future__ import annotations

import pathlib
import socket
import types
from typing import TYPE_CHECKING, cast

import pytest
import trio
from OpenSSL import SSL

from ktls.handshake import make_server_context
from ktls.workers import KtlsWorkers
from mbuf.kern import Kernel
from server.counters import ServerStat
from server.transport import Transport
from server.transport.handshake import PLAIN_HTTP_ON_TLS, tls_accept
from server.txpath import KernelTx, VmWaitQueue, so_accept
from tests.ktls.harness import CertFiles, make_cert

if TYPE_CHECKING:
    from server.app import Server


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


class _Edge:
    """The server's side: the kernel socket and KernelTx over one end of the pair."""

    def __init__(self, nursery: trio.Nursery, ctx: SSL.Context, ktls: bool) -> None:
        a, self.peer = socket.socketpair()
        self.peer.setblocking(False)
        self.sock = trio.socket.from_stdlib_socket(a)
        self.kern = Kernel(16 << 20)
        self.so, _ = so_accept(self.kern, self.sock, 64 * 1024)
        self.tx = KernelTx(self.kern, self.so, self.sock, nursery, VmWaitQueue(), 5.0)
        self.stats = ServerStat()
        cfg = types.SimpleNamespace(handshake_timeout=5.0, ktls=ktls, send_timeout=5.0)
        self.server = cast(
            "Server",
            types.SimpleNamespace(
                ssl_ctx=ctx, cfg=cfg, kern=self.kern, workers=KtlsWorkers(0), stats=self.stats
            ),
        )

    async def receive(self, transport: Transport) -> bytes:
        while True:
            raw = await self.tx.recv()
            if not raw:
                return b""
            plain = await transport.receive(raw)
            if plain or transport.eof:
                return plain

    async def close(self) -> None:
        await self.tx.teardown()
        self.sock.close()
        self.peer.close()
        assert self.kern.leaks() == {}


@pytest.mark.parametrize("ktls", [True, False], ids=["ktls", "user-tls"])
@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION], ids=["1.2", "1.3"])
async def test_request_response_close(cert: CertFiles, ktls: bool, version: int) -> None:
    ctx = make_server_context(cert.cert, cert.key)
    async with trio.open_nursery() as nursery:
        edge = _Edge(nursery, ctx, ktls)
        client = _Client(edge.peer, version)
        async with trio.open_nursery() as both:  # until both ends are done
            both.start_soon(client.handshake)
            transport = await tls_accept(edge.server, edge.tx)
        assert transport is not None
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
        assert await edge.receive(transport) == b"GET / HTTP/1.1\r\n\r\n"

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
        assert await edge.receive(transport) == b""
        assert transport.eof
        await edge.close()


async def test_plain_http_on_the_tls_port(cert: CertFiles) -> None:
    """As nginx: a plain HTTP request on the TLS port is answered in plain HTTP."""
    ctx = make_server_context(cert.cert, cert.key)
    async with trio.open_nursery() as nursery:
        edge = _Edge(nursery, ctx, True)
        edge.peer.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await tls_accept(edge.server, edge.tx) is None
        assert edge.stats.tls_handshake_failures == 1
        got = b""
        while len(got) < len(PLAIN_HTTP_ON_TLS):
            await trio.lowlevel.wait_readable(edge.peer)
            got += edge.peer.recv(1 << 16)
        assert got == PLAIN_HTTP_ON_TLS
        await edge.close()


async def test_client_gone_during_handshake(cert: CertFiles) -> None:
    ctx = make_server_context(cert.cert, cert.key)
    async with trio.open_nursery() as nursery:
        edge = _Edge(nursery, ctx, True)
        edge.peer.shutdown(socket.SHUT_WR)
        assert await tls_accept(edge.server, edge.tx) is None
        assert (edge.stats.tls_handshakes, edge.stats.tls_handshake_failures) == (0, 0)
        await edge.close()
