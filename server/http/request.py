"""What a request's line and fields alone decide, before the file system is asked.

Theory of operation. h11 parses a request and checks what HTTP/1.1 requires
of its syntax; `check_request` then applies the server's own limits and
policies to the `h11.Request` it produced, in the order nginx applies them:

* a target longer than MAX_TARGET: 414;
* a head larger than --max-header-size (h11 bounds only a head that arrived
  in pieces; one that came whole is measured here): 431;
* a version other than HTTP/1.0 or 1.1: 505;
* Content-Length together with Transfer-Encoding (RFC 9112 6.3: a smuggling
  attempt or a broken proxy): 400;
* an absolute-form target (RFC 9112 3.2.2) is accepted and reduced to its
  origin-form: the authority is ignored, there is one site;
* a method other than GET and HEAD: 405, or 204 for OPTIONS, both with Allow.

Each refusal is an `Answer` (status, detail, whether the connection closes,
extra fields) for the connection to send; a request that passes comes back
as the `h11.Request` to serve. `protocol_error_status` does the same for a
request h11 refused (the 414-vs-431 decision), and `http10_keepalive`
recognises the HTTP/1.0 keep-alive request nginx keeps open. Nothing here
does I/O or imports trio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import h11

from server.http.responses import ALLOW

MAX_TARGET = 8 * 1024  # longer request lines: 414, as nginx (large_client_header_buffers 8k)

ABSOLUTE_FORM = re.compile(rb"(?i)https?://[^/?#]*")


@dataclass(frozen=True, slots=True)
class Answer:
    """A response decided by the request line and fields alone."""

    status: int
    detail: str = ""
    close: bool = True
    extra: tuple[tuple[bytes, bytes], ...] = ()


_ALLOW = ((b"Allow", ALLOW),)


def origin_form(rest: bytes) -> bytes:
    """The origin-form of what follows the authority of an absolute-form target."""
    return rest if rest.startswith(b"/") else b"/" + rest


def check_request(req: h11.Request, max_header_size: int) -> h11.Request | Answer:
    """The request to serve (in origin-form), or the answer that refuses it."""
    method = req.method
    if len(req.target) > MAX_TARGET:
        return Answer(414, "request target too long")
    fields = list(req.headers)  # one pass over h11's Sequence
    # Its size as sent, give or take whitespace.
    size = len(method) + len(req.target) + 12 + sum(len(n) + len(v) + 4 for n, v in fields)
    if size > max_header_size:
        return Answer(431, "request header fields too large")
    if req.http_version not in (b"1.0", b"1.1"):
        return Answer(505, "HTTP/1.x only")
    names = {n for n, _ in fields}
    if b"transfer-encoding" in names and b"content-length" in names:
        return Answer(400, "Content-Length with Transfer-Encoding")
    m = ABSOLUTE_FORM.match(req.target)
    if m:
        req = h11.Request(
            method=method,
            target=origin_form(req.target[m.end() :]),
            headers=req.headers,
            http_version=req.http_version,
        )
    if method not in (b"GET", b"HEAD"):
        return Answer(204 if method == b"OPTIONS" else 405, close=False, extra=_ALLOW)
    return req


def http10_keepalive(req: h11.Request) -> bool:
    """An HTTP/1.0 request with `Connection: keep-alive` and no body, which nginx
    keeps alive (and ab -k relies on), while h11 would close after it. (The
    connection still closes when the server is stopping or this is its last
    request: the caller's decision.)"""
    if req.http_version != b"1.0":
        return False
    tokens: set[bytes] = set()
    for name, value in req.headers:
        if name in (b"content-length", b"transfer-encoding"):
            return False
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return b"keep-alive" in tokens and b"close" not in tokens


def protocol_error_status(e: h11.RemoteProtocolError, unparsed: bytes) -> tuple[int, str]:
    """(status, detail) answering a request h11 refused; `unparsed` is what h11
    still holds (its trailing data). h11 says 431 for any head too large: when
    it is the request line that is too long, the answer is 414, as nginx's."""
    status, detail = e.error_status_hint, str(e)
    if status == 431 and len(unparsed.split(b"\n", 1)[0]) > MAX_TARGET:
        return 414, "request target too long"
    return status, detail
