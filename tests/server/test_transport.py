"""server.transport and server.txpath at the edge: the error vocabulary, and the
plain transport over a real socket pair (every byte through the modeled kernel)."""

from __future__ import annotations

import errno
import os
import pathlib
import socket

import pytest
import trio

from server.http.static import FileReply
from server.transport.errors import CLIENT_GONE_ERRNOS, ClientGone, client_gone
from server.transport.plain import PlainTransport
from tests.server.edge import Edge


@pytest.mark.parametrize("code", sorted(CLIENT_GONE_ERRNOS))
def test_client_gone_errnos(code: int) -> None:
    with pytest.raises(ClientGone) as info, client_gone:
        raise OSError(code, os.strerror(code))
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == code


@pytest.mark.parametrize("code", [errno.EIO, errno.EMFILE, errno.EBADF, errno.ENOSPC])
def test_other_errors_pass_unchanged(code: int) -> None:
    """EIO (the modeled kernel aborted the socket) and server-side errors stay OSError."""
    with pytest.raises(OSError) as info, client_gone:
        raise OSError(code, os.strerror(code))
    assert not isinstance(info.value, ClientGone)
    assert info.value.errno == code


def test_nothing_raised_nothing_changed() -> None:
    with client_gone:
        value = 1 + 1
    assert value == 2  # the block ran, and nothing was raised on its way out
    with pytest.raises(ValueError), client_gone:
        raise ValueError("not an OSError")


async def test_plain_send_and_sendfile(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(100_000)
    path.write_bytes(data)
    async with trio.open_nursery() as nursery:
        pair = Edge(nursery)
        transport = PlainTransport(pair.tx, pair.kern, pair.stats)
        fd = os.open(path, os.O_RDONLY)
        try:
            reply = FileReply(200, [], fd, os.fstat(fd), [], len(data))
            await transport.send(b"head1\r\n")
            await transport.sendfile(reply, 10, 50_000, b"head2\r\n")
            await transport.close_notify()  # nothing without TLS
            await pair.tx.flush()
            expected = b"head1\r\nhead2\r\n" + data[10:50_010]
            assert await pair.peer_read(len(expected)) == expected
            assert pair.tx.bytes_written == len(expected)
            assert transport.info() == {}
        finally:
            os.close(fd)
            await pair.close()


async def test_reads() -> None:
    async with trio.open_nursery() as nursery:
        pair = Edge(nursery)
        transport = PlainTransport(pair.tx, pair.kern, pair.stats)
        assert pair.tx.recv_ready() is None
        pair.peer.send(b"GET")
        assert await pair.tx.recv() == b"GET"
        assert await transport.receive(b"GET") == b"GET"
        pair.peer.shutdown(socket.SHUT_WR)
        assert await pair.tx.recv() == b""  # an orderly end is no error
        await pair.close()


async def test_writes_to_a_gone_client_raise_client_gone() -> None:
    async with trio.open_nursery() as nursery:
        pair = Edge(nursery)
        transport = PlainTransport(pair.tx, pair.kern, pair.stats)
        pair.peer.close()
        with pytest.raises(ClientGone):
            for _ in range(64):  # the first write may still be taken
                await transport.send(b"x" * 65536)
                await pair.tx.flush()
        pair.peer = socket.socket()  # already closed: close() below closes this one
        await pair.close()
