"""server.http.request: what the request line and fields alone decide.

Each request is fed to an h11 connection three ways, as h11's own tests feed
its parsers: whole, one byte at a time, and followed by trailing garbage (the
start of a next request h11 must leave alone). The check functions are then
applied to the events h11 produced: the answer must not depend on how the
bytes arrived."""

from __future__ import annotations

from collections.abc import Callable

import h11
import pytest

from server.http.request import (
    MAX_TARGET,
    Answer,
    check_request,
    http10_keepalive,
    origin_form,
    protocol_error_status,
)
from server.http.responses import ALLOW

MAX_HEADER = 8192
GARBAGE = b"GARBAGE \x00\xff not a request\r\n"


def _whole(conn: h11.Connection, data: bytes) -> None:
    conn.receive_data(data)


def _bytewise(conn: h11.Connection, data: bytes) -> None:
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])


def _trailing(conn: h11.Connection, data: bytes) -> None:
    conn.receive_data(data + GARBAGE)


FEEDS: dict[str, Callable[[h11.Connection, bytes], None]] = {
    "whole": _whole,
    "bytewise": _bytewise,
    "trailing": _trailing,
}


def _request(data: bytes, feed: str, *, max_size: int = 1 << 20) -> h11.Request:
    """The request h11 parses from `data`, fed the named way."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_size)
    FEEDS[feed](conn, data)
    event = conn.next_event()
    assert isinstance(event, h11.Request), event
    return event


def _error(data: bytes, feed: str, *, max_size: int) -> tuple[int, str]:
    """protocol_error_status for the error h11 raises on `data`."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_size)
    with pytest.raises(h11.RemoteProtocolError) as info:
        FEEDS[feed](conn, data)
        conn.next_event()
    return protocol_error_status(info.value, conn.trailing_data[0])


feeds = pytest.mark.parametrize("feed", sorted(FEEDS))


def _get(target: bytes = b"/a", *fields: bytes, version: bytes = b"1.1") -> bytes:
    lines = [b"GET " + target + b" HTTP/" + version, b"Host: x", *fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@feeds
def test_ordinary_get_passes(feed: str) -> None:
    req = _request(_get(), feed)
    assert check_request(req, MAX_HEADER) is req


@feeds
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_absolute_form_becomes_origin_form(feed: str, method: bytes) -> None:
    data = _get(b"HTTP://Example.com:8443/a/b?q=1").replace(b"GET", method, 1)
    checked = check_request(_request(data, feed), MAX_HEADER)
    assert isinstance(checked, h11.Request)
    assert (checked.method, checked.target) == (method, b"/a/b?q=1")


@pytest.mark.parametrize(
    ("rest", "origin"), [(b"", b"/"), (b"/", b"/"), (b"?x", b"/?x"), (b"/a", b"/a")]
)
def test_origin_form(rest: bytes, origin: bytes) -> None:
    assert origin_form(rest) == origin


@feeds
@pytest.mark.parametrize(
    ("method", "status"), [(b"OPTIONS", 204), (b"POST", 405), (b"DELETE", 405), (b"PUT", 405)]
)
def test_other_methods(feed: str, method: bytes, status: int) -> None:
    data = _get().replace(b"GET", method, 1)
    answer = check_request(_request(data, feed), MAX_HEADER)
    assert answer == Answer(status, close=False, extra=((b"Allow", ALLOW),))


@feeds
def test_target_too_long(feed: str) -> None:
    data = _get(b"/" + b"a" * MAX_TARGET)
    answer = check_request(_request(data, feed), MAX_HEADER)
    assert isinstance(answer, Answer)
    assert (answer.status, answer.close) == (414, True)


@feeds
def test_head_too_large_when_whole(feed: str) -> None:
    data = _get(b"/a", b"X-Big: " + b"b" * MAX_HEADER)
    answer = check_request(_request(data, feed), MAX_HEADER)
    assert isinstance(answer, Answer)
    assert (answer.status, answer.close) == (431, True)


@feeds
def test_content_length_with_transfer_encoding(feed: str) -> None:
    data = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    conn = h11.Connection(h11.SERVER)
    FEEDS[feed](conn, data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:  # h11 may refuse it itself
        return
    assert isinstance(event, h11.Request)
    answer = check_request(event, MAX_HEADER)
    assert isinstance(answer, Answer)
    assert (answer.status, answer.detail, answer.close) == (
        400, "Content-Length with Transfer-Encoding", True,
    )  # fmt: skip


def test_version_not_1x() -> None:
    req = h11.Request(method=b"GET", target=b"/", headers=[(b"Host", b"x")], http_version=b"2.0")
    answer = check_request(req, MAX_HEADER)
    assert isinstance(answer, Answer)
    assert (answer.status, answer.close) == (505, True)


@feeds
def test_long_request_line_is_414_not_431(feed: str) -> None:
    # h11 measures only a head still incomplete: this one never ends.
    data = b"GET /" + b"a" * (MAX_TARGET + 10) + b" HTTP/1.1\r\nHost: x\r\n"
    status, detail = _error(data, feed, max_size=MAX_TARGET)
    assert (status, detail) == (414, "request target too long")


@feeds
def test_many_fields_stay_431(feed: str) -> None:
    data = _get(b"/a", *[b"X-F%d: %s" % (i, b"v" * 100) for i in range(200)])[:-2]
    status, _ = _error(data, feed, max_size=MAX_HEADER)
    assert status == 431


@feeds
def test_bad_request_keeps_h11s_hint(feed: str) -> None:
    status, _ = _error(b"GET / HTTP/1.1\r\nHost: x\r\nBad Field\r\n\r\n", feed, max_size=MAX_HEADER)
    assert status == 400


@feeds
@pytest.mark.parametrize(
    ("fields", "keep"),
    [
        ((b"Connection: keep-alive",), True),
        ((b"Connection: Keep-Alive",), True),
        ((b"Connection: foo, keep-alive",), True),
        ((b"Connection: keep-alive, close",), False),
        ((b"Connection: keep-alive", b"Content-Length: 0"), False),
        ((), False),
    ],
)
def test_http10_keepalive(feed: str, fields: tuple[bytes, ...], keep: bool) -> None:
    req = _request(_get(b"/a", *fields, version=b"1.0"), feed)
    assert http10_keepalive(req) is keep


@feeds
def test_http11_is_not_http10_keepalive(feed: str) -> None:
    assert not http10_keepalive(_request(_get(b"/a", b"Connection: keep-alive"), feed))
