"""server.http.framing: a file response head is byte for byte the one h11 writes
when it is given every field, whatever h11 decides about the connection."""

from __future__ import annotations

import os

import h11
import pytest

from server.http import framing as framing_mod
from server.http.framing import connection_field, file_head, responder
from server.http.responses import SERVER_NAME, reason
from server.http.static import FileReply

DATE = b"Sun, 06 Nov 1994 08:49:37 GMT"
FIELDS = [
    (b"Content-Type", b"text/plain; charset=utf-8"),
    (b"Last-Modified", DATE),
    (b"ETag", b'"1-2-3"'),
    (b"Accept-Ranges", b"bytes"),
    (b"Vary", b"Accept-Encoding"),
]


def _parsed(request: bytes) -> h11.Connection:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(request)
    assert isinstance(conn.next_event(), h11.Request)
    return conn


def _head(conn: h11.Connection, reply: FileReply, *, keep10: bool, last: bool) -> bytes:
    """The head as the connection frames it: `last` when its request limit is reached."""
    return file_head(conn, reply, DATE, connection_field(last=last, keep10=keep10))


def _reference(conn: h11.Connection, reply: FileReply, close: bool, keep10: bool) -> bytes:
    headers = [
        (b"Date", DATE),
        (b"Server", SERVER_NAME),
        *reply.headers,
        (b"Content-Length", b"%d" % reply.length),
    ]
    if close:
        headers.append((b"Connection", b"close"))
    elif keep10:
        headers.append((b"Connection", b"keep-alive"))
    out = conn.send(
        h11.Response(status_code=reply.status, headers=headers, reason=reason(reply.status))
    )
    assert out is not None
    return out


REQUESTS = {
    "keep-alive": b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
    "client-close": b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "http10": b"GET /a HTTP/1.0\r\n\r\n",
    "head": b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("request_name", sorted(REQUESTS))
@pytest.mark.parametrize(("status", "length"), [(200, 16384), (200, 0), (206, 5)])
@pytest.mark.parametrize("last", [False, True])
def test_file_head_is_what_h11_writes(
    request_name: str, status: int, length: int, last: bool
) -> None:
    reply = FileReply(status, list(FIELDS), -1, os.stat("/"), [], length)
    for attempt in range(2):  # the second time, the framing event comes from the cache
        request = REQUESTS[request_name]
        ours, theirs = _parsed(request), _parsed(request)
        head = _head(ours, reply, keep10=False, last=last)
        assert head == _reference(theirs, reply, last, False), attempt
        assert (ours.our_state, ours.their_state) == (theirs.our_state, theirs.their_state)
        for conn in (ours, theirs):
            if length and request_name != "head":
                conn.send(h11.Data(data=b"x" * length))
            conn.send(h11.EndOfMessage())
        assert (ours.our_state, ours.their_state) == (theirs.our_state, theirs.their_state)


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_http10_keepalive_head(method: bytes) -> None:
    """An HTTP/1.0 keep-alive answer (nginx's way) through the responder h11."""
    reply = FileReply(200, list(FIELDS), -1, os.stat("/"), [], 7)
    ours, theirs = responder(method), responder(method)
    head = _head(ours, reply, keep10=True, last=False)
    assert head == _reference(theirs, reply, False, True)
    assert b"\r\nConnection: keep-alive\r\n" in head


def test_framing_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(framing_mod, "_framing_responses", {})
    for length in range(framing_mod.FRAMING_CACHE * 2 + 1):
        reply = FileReply(200, [], -1, os.stat("/"), [], length)
        conn = _parsed(REQUESTS["keep-alive"])
        head = _head(conn, reply, keep10=False, last=False)
        assert head.endswith(b"Content-Length: %d\r\n\r\n" % length)
        assert len(framing_mod._framing_responses) <= framing_mod.FRAMING_CACHE


@pytest.mark.parametrize(
    ("last", "keep10", "field"),
    [
        (False, False, b""),
        (True, False, b"close"),
        (False, True, b"keep-alive"),
        (True, True, b"close"),
    ],
)
def test_connection_field(last: bool, keep10: bool, field: bytes) -> None:
    assert connection_field(last=last, keep10=keep10) == field
