"""Response heads framed by h11, with what h11 need not see added around it.

Theory of operation. Every response goes through the request's h11
connection, which owns the framing (Content-Length, `Connection: close`) and
the state machine. Two helpers make that cheap and complete:

* `file_head` writes the head of a file response. h11 is given only the
  framing fields (Content-Length, Connection): they are all its state machine
  and its framing look at, and it writes the status line and those fields
  (adding `Connection: close` when it will close). The other fields (Date,
  Server and the reply's own, made from validated parts in
  server/http/static.py, --cache-control checked at start) go between the
  status line and the framing fields, where h11 would have written them,
  without h11 validating them again on every response. The result is byte for
  byte the head h11 writes when given every field. h11 events are immutable and
  h11 looks only at their contents: the framing `h11.Response` is a function
  of (status, Content-Length, Connection) and is kept in a small cache.
* `responder` is an h11 connection ready to answer an HTTP/1.1 request: for
  an HTTP/1.0 keep-alive response (which the request's own h11 would close)
  and for the error answering a request h11 refused (its connection can no
  longer send).

`SendfileBody` is the body placeholder for `send_with_data_passthrough`: h11
counts its length against Content-Length while the bytes themselves go
through sendfile. Nothing here does I/O or imports trio.
"""

from __future__ import annotations

import h11

from server.http.responses import SERVER_NAME, reason
from server.http.static import FileReply

END_OF_MESSAGE = h11.EndOfMessage()  # immutable: one for every response
FRAMING_CACHE = 256  # (status, Content-Length, Connection) keys; then it starts over
_framing_responses: dict[tuple[int, int, bytes], h11.Response] = {}


class SendfileBody:
    """A body placeholder for h11's send_with_data_passthrough: only its length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def responder(method: bytes) -> h11.Connection:
    """An h11 connection ready to send the response to an HTTP/1.1 `method` request.
    It frames what the request's own parser cannot: an HTTP/1.0 keep-alive
    response, the way nginx does (HTTP/1.1 status line, Content-Length,
    `Connection: keep-alive`), and the error answering a request h11 refused."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(method + b" / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.next_event()
    conn.next_event()
    return conn


def connection_field(*, last: bool, keep10: bool) -> bytes:
    """The Connection field we ask for: close after the last request a connection
    may carry, keep-alive for an HTTP/1.0 keep-alive answer, else none."""
    return b"close" if last else b"keep-alive" if keep10 else b""


def file_head(conn: h11.Connection, reply: FileReply, date: bytes, connection: bytes) -> bytes:
    """The head of a file response as h11 writes it for the fields Date, Server,
    reply.headers, Content-Length and Connection (`connection`, if not empty),
    in that order. `conn` sends it: its state advances as if it had."""
    key = (reply.status, reply.length, connection)
    response = _framing_responses.get(key)
    if response is None:
        framing = [(b"Content-Length", b"%d" % reply.length)]
        if connection:
            framing.append((b"Connection", connection))
        response = h11.Response(
            status_code=reply.status, headers=framing, reason=reason(reply.status)
        )
        if len(_framing_responses) >= FRAMING_CACHE:
            _framing_responses.clear()
        _framing_responses[key] = response
    out = conn.send(response)
    assert out is not None
    cut = out.index(b"\r\n") + 2  # after the status line
    return b"%sDate: %s\r\nServer: %s\r\n%s%s" % (
        out[:cut],
        date,
        SERVER_NAME,
        b"".join([b"%s: %s\r\n" % field for field in reply.headers]),
        out[cut:],
    )
