"""A real server takes a ClientHello cut into 1-byte records, as OpenSSL does."""

from __future__ import annotations

import socket
import ssl

import pytest

from tests.integration.conftest import ServerProcess
from tests.support.certs import HOSTNAME
from tests.support.clients import client_context
from tests.support.files import file_bytes
from tests.support.tlsseal import parse_records, reframe


def _pump(s: socket.socket, out: ssl.MemoryBIO) -> None:
    """Send what the client's TLS object wrote."""
    pending = out.read()
    if pending:
        s.sendall(pending)


def test_client_hello_in_one_byte_records(default_server: ServerProcess) -> None:
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context().wrap_bio(inc, out, server_hostname=HOSTNAME)
    with socket.create_connection(("127.0.0.1", default_server.port), timeout=30) as s:
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        first = out.read()
        one_byte = reframe(first, 1)
        assert len(parse_records(one_byte)) > 200  # a real ClientHello, hundreds of records
        s.sendall(one_byte)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                _pump(s, out)
                data = s.recv(65536)
                assert data, "server closed during the handshake"
                inc.write(data)
        _pump(s, out)
        tls.write(b"GET /f16385.bin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        _pump(s, out)
        body = bytearray()
        while True:
            try:
                chunk = tls.read(65536)
            except ssl.SSLWantReadError:
                data = s.recv(65536)
                if not data:
                    break
                inc.write(data)
                continue
            except ssl.SSLZeroReturnError:
                break
            if not chunk:
                break
            body += chunk
    head, _, rest = bytes(body).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert rest == file_bytes(16385)
    default_server.assert_no_leaks()
