"""What TLS a server negotiates with an OpenSSL client, and whether it resumes sessions.

Theory of operation. Two connections from Python's `ssl` (OpenSSL, default
client settings, as wrk uses them, no certificate check): the first GETs a
small file and keeps the session (a TLS 1.3 ticket arrives after the
handshake, so the response is read first); the second offers it. The result
records the protocol and cipher of the first and whether the second was
resumed. Both load generators resume sessions when they reconnect, so this
tells what the handshake workload measures on each server: resumed handshakes
where this says "resumed", full ones elsewhere.
"""

from __future__ import annotations

import socket
import ssl

from bench.loopback import HOST, SNI


def _get(
    port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[str, str, ssl.SSLSession | None, bool]:
    """(protocol, cipher, session, resumed) of one GET on a new connection."""
    raw = socket.create_connection((HOST, port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname=SNI, session=session) as s:
        protocol = s.version() or ""
        cipher = s.cipher()
        resumed = bool(s.session_reused)
        s.sendall(b"GET /1k.bin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass
        return protocol, cipher[0] if cipher else "", s.session, resumed


def probe(port: int) -> dict[str, str | bool]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        protocol, cipher, session, _ = _get(port, ctx, None)
        resumed = _get(port, ctx, session)[3] if session is not None else False
    except (OSError, ssl.SSLError) as e:
        return {"error": str(e) or type(e).__name__}
    return {"protocol": protocol, "cipher": cipher, "resumed": resumed}
