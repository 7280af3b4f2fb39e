"""The admin listener as a careless or hostile client uses it: HEAD on every
path, malformed and oversized requests. Each gets an answer with a status (no
silent hang-up), and the listener keeps serving afterwards. A real server on
127.0.0.1, raw sockets (the requests curl will not send), the leak assertion.
"""

from __future__ import annotations

import socket

from tests.integration.conftest import ServerProcess


def _exchange(port: int, request: bytes) -> bytes:
    """Send `request` on a fresh connection; everything the admin answers until it
    closes (each request here asks it to close, or is one it must close on)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(request)
        chunks: list[bytes] = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer.split(b" ", 2)[1])


def _head(port: int, path: str, host: str = "127.0.0.1") -> bytes:
    req = f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    return _exchange(port, req)


def test_head_answers_every_path_without_a_body(default_server: ServerProcess) -> None:
    """HEAD / (text index), /index.txt, an unknown path (404) and a foreign Host
    (421) have bodies on GET; on HEAD they are the head alone (RFC 9110 9.3.2)."""
    port = default_server.admin_port
    cases = [("/", "127.0.0.1", 200), ("/index.txt", "127.0.0.1", 200),
             ("/no-such-page", "127.0.0.1", 404), ("/stats", "rebound.example", 421),
             ("/stats", "127.0.0.1", 200)]  # fmt: skip
    for path, host, want in cases:
        answer = _head(port, path, host)
        assert _status(answer) == want, (path, host, answer[:200])
        head, sep, body = answer.partition(b"\r\n\r\n")
        assert sep and body == b"", (path, answer[:200])
        length = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
        assert length and int(length[0].split(b":")[1]) > 0, (path, head)
    default_server.assert_no_leaks()


def test_malformed_and_oversized_requests_get_a_status(default_server: ServerProcess) -> None:
    """A request h11 refuses is answered with its status (400 for a malformed line
    or framing, 431 for a head over h11's limit) and the connection closed; the
    listener serves the next client as before."""
    port = default_server.admin_port
    big = b"X-Pad: " + b"a" * 70000 + b"\r\n"  # over h11's 16 KiB
    cases = [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /stats HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\n"
         b"Content-Length: 2\r\n\r\nab", 400),
        (b"GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\n" + big + b"\r\n", 431),
    ]  # fmt: skip
    for request, want in cases:
        answer = _exchange(port, request)
        assert _status(answer) == want, (request[:60], answer[:200])
        assert b"\r\nconnection: close\r\n" in answer.partition(b"\r\n\r\n")[0].lower() + b"\r\n"
    answer = _exchange(port, b"GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert _status(answer) == 200
    default_server.assert_no_leaks()
