"""Response heads and small bodies, built with h11 so framing is always right.

Theory of operation. `simple_response` sends a whole response with a small
in-memory body (errors, redirects, 304, 416) through the connection's h11
state, so Content-Length, HEAD and keep-alive framing are h11's; `error_body`
is the short HTML page of an error status, and `DateCache` formats the Date
header once per second.
"""

from __future__ import annotations

import html
import time

import h11

from server.http.httpfields import http_date

SERVER_NAME = b"nomapd"
ALLOW = b"GET, HEAD, OPTIONS"

_REASONS = {
    200: b"OK",
    204: b"No Content",
    206: b"Partial Content",
    301: b"Moved Permanently",
    304: b"Not Modified",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    412: b"Precondition Failed",
    413: b"Content Too Large",
    414: b"URI Too Long",
    416: b"Range Not Satisfiable",
    421: b"Misdirected Request",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}


class DateCache:
    """The Date header, formatted once per second."""

    def __init__(self) -> None:
        self._sec = -1
        self._value = b""

    def now(self) -> bytes:
        sec = int(time.time())
        if sec != self._sec:
            self._sec = sec
            self._value = http_date(sec)
        return self._value


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"")


def error_body(status: int, detail: str = "") -> bytes:
    title = f"{status} {reason(status).decode()}"
    extra = f"<p>{html.escape(detail)}</p>" if detail else ""
    return (
        f"<!DOCTYPE html>\n<html><head><title>{title}</title></head>"
        f"<body><h1>{title}</h1>{extra}<hr><p>nomapd</p></body></html>\n"
    ).encode()


def simple_response(
    conn: h11.Connection,
    status: int,
    date: bytes,
    *,
    body: bytes = b"",
    content_type: bytes = b"text/html; charset=utf-8",
    extra: list[tuple[bytes, bytes]] | None = None,
    head_only: bool = False,
    close: bool = False,
) -> bytes:
    """Head and body of a complete response with a small in-memory body."""
    headers = [(b"Date", date), (b"Server", SERVER_NAME)]
    if status != 204 and status != 304:
        headers += [(b"Content-Type", content_type), (b"Content-Length", b"%d" % len(body))]
    headers += extra or []
    if close:
        headers.append((b"Connection", b"close"))
    out = conn.send(h11.Response(status_code=status, headers=headers, reason=reason(status)))
    assert out is not None
    if body and not head_only:
        data = conn.send(h11.Data(data=body))
        assert data is not None
        out += data
    end = conn.send(h11.EndOfMessage())
    assert end is not None
    return out + end
