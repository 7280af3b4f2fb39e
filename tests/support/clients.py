"""Client `ssl.SSLContext`s and sockets for the tests.

`client_context()` is the one place a test client's TLS settings are made:
verifying against a certificate file (`cafile`), or, without one, accepting
any certificate, as a test needs against a server with a self-signed one. A
`version` pins both ends of the version range; `cipher` narrows TLS 1.2 (the
stdlib cannot narrow TLS 1.3 suites: a test does that on the server side).
"""

from __future__ import annotations

import socket
import ssl
import warnings

from tests.support.certs import HOSTNAME

_DEPRECATED = (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)


def client_context(
    *,
    cafile: str | None = None,
    version: ssl.TLSVersion | None = None,
    cipher: str | None = None,
    alpn: list[str] | None = None,
) -> ssl.SSLContext:
    """A stdlib client: see the module head."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile)
    if version is not None:
        with warnings.catch_warnings():
            if version in _DEPRECATED:  # tests that check such clients are refused
                warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = version
    if cipher is not None:
        ctx.set_ciphers(cipher)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


def tls_connect(
    port: int,
    *,
    version: ssl.TLSVersion | None = None,
    timeout: float = 30.0,
    rcvbuf: int | None = None,
) -> ssl.SSLSocket:
    """A TLS connection to 127.0.0.1:port that accepts any certificate; `rcvbuf`
    sets SO_RCVBUF before the handshake (a slow reader)."""
    raw = socket.socket()
    try:
        if rcvbuf is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout)
        raw.connect(("127.0.0.1", port))
        return client_context(version=version).wrap_socket(raw, server_hostname=HOSTNAME)
    except BaseException:
        raw.close()
        raise


def read_until_close(s: socket.socket) -> bytes:
    """Everything the peer sends until it closes."""
    out = bytearray()
    while chunk := s.recv(65536):
        out += chunk
    return bytes(out)
