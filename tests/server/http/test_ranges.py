"""server.http.ranges and .multipart: Range parsing (RFC 9110 14) and byteranges bodies."""

from __future__ import annotations

import email.parser
import email.policy
import pathlib
import re

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.http.httpfields import http_date
from server.http.multipart import byteranges_plan, new_boundary
from server.http.ranges import UNSATISFIABLE, if_range_allows, parse_range
from server.http.static import FileReply, Site, plan

L = 10_000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"bytes=0-0", [(0, 0)]),
        (b"bytes=0-499", [(0, 499)]),
        (b"bytes=500-", [(500, L - 1)]),
        (b"bytes=-500", [(L - 500, L - 1)]),
        (b"bytes=9500-20000", [(9500, L - 1)]),  # cut at the end
        (b"bytes=-20000", [(0, L - 1)]),  # a suffix longer than the whole
        (b"BYTES = 1-2", [(1, 2)]),  # the unit is case-insensitive; OWS around "="
        (b"bytes= 1 - 2 , 5-6", [(1, 2), (5, 6)]),
        (b"bytes=5-6,1-2", [(5, 6), (1, 2)]),  # in the order asked
        (b"bytes=0-1,,4-5,", [(0, 1), (4, 5)]),  # empty list elements
        (b"bytes=0-1,20000-", [(0, 1)]),  # one satisfiable is enough
        (b"bytes=0-4999,5000-9999", [(0, 4999), (5000, 9999)]),
    ],
)
def test_satisfiable(value: bytes, expected: list[tuple[int, int]]) -> None:
    assert parse_range(value, L, 32) == expected


@pytest.mark.parametrize(
    "value",
    [b"bytes=10000-", b"bytes=20000-30000", b"bytes=-0", b"bytes=10000-,-0"],
)
def test_unsatisfiable(value: bytes) -> None:
    assert parse_range(value, L, 32) == UNSATISFIABLE


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"bytes",
        b"bytes=",
        b"bytes=,",
        b"items=0-1",
        b"bytes=abc",
        b"bytes=1-0",  # last < first: an invalid range-spec
        b"bytes=0-1,5-3",
        b"bytes=-",
        b"bytes=--1",
        b"bytes=1--2",
        b"bytes=0x10-20",
        b"bytes=+1-2",
        b"bytes=1-2;x",
        b"bytes=\xff-1",
        b"bytes=1-99999999999999999999999",  # longer than any file: not worth parsing
        b"bytes=0-9999,0-9999",  # more than the whole: nginx sends it all
        b"bytes=0-6000,4000-9999",
    ],
)
def test_ignored(value: bytes) -> None:
    assert parse_range(value, L, 32) is None


def test_max_ranges() -> None:
    three = b"bytes=0-0,2-2,4-4"
    assert parse_range(three, L, 3) == [(0, 0), (2, 2), (4, 4)]
    assert parse_range(three, L, 2) is None
    assert parse_range(b"bytes=0-0", L, 0) is None  # --max-ranges 0: ranges off


def test_empty_representation_is_sent_whole() -> None:
    assert parse_range(b"bytes=0-", 0, 32) is None
    assert parse_range(b"bytes=-5", 0, 32) is None


@given(
    length=st.integers(0, 1 << 40),
    specs=st.lists(
        st.one_of(
            st.tuples(st.integers(0, 1 << 41), st.none() | st.integers(0, 1 << 41)),
            st.tuples(st.none(), st.integers(0, 1 << 41)),
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_results_are_within_the_representation(
    length: int, specs: list[tuple[int | None, int | None]]
) -> None:
    parts = []
    for first, last in specs:
        if first is None:
            parts.append(b"-%d" % last)  # type: ignore[str-format]
        else:
            parts.append(b"%d-%s" % (first, b"" if last is None else b"%d" % last))
    got = parse_range(b"bytes=" + b",".join(parts), length, 32)
    if got is None or got == UNSATISFIABLE:
        return
    assert isinstance(got, list) and 1 <= len(got) <= 32
    assert all(0 <= a <= b < length for a, b in got)
    assert sum(b - a + 1 for a, b in got) <= length


@given(st.binary(max_size=64))
def test_garbage_never_raises(value: bytes) -> None:
    got = parse_range(b"bytes=" + value, 1000, 32)
    assert got is None or got == UNSATISFIABLE or isinstance(got, list)


def test_if_range() -> None:
    etag = b'"1-2-3"'
    mtime = 1_700_000_000.7
    assert if_range_allows(etag, etag, mtime)
    assert if_range_allows(b" " + etag + b" ", etag, mtime)
    assert not if_range_allows(b'"1-2-4"', etag, mtime)
    assert not if_range_allows(b"W/" + etag, etag, mtime)  # weak never matches
    assert not if_range_allows(etag, b"W/" + etag, mtime)
    assert if_range_allows(http_date(mtime), etag, mtime)
    assert if_range_allows(b"Tuesday, 14-Nov-23 22:13:20 GMT", etag, mtime)  # RFC 850 form
    assert not if_range_allows(http_date(mtime + 1), etag, mtime)
    assert not if_range_allows(http_date(mtime - 1), etag, mtime)
    assert not if_range_allows(b"yesterday", etag, mtime)


def test_byteranges_body_parses_as_mime() -> None:
    data = bytes(range(256)) * 40
    ranges = [(0, 9), (100, 199), (len(data) - 5, len(data) - 1)]
    boundary = new_boundary()
    assert re.fullmatch(rb"[0-9a-f]{24}", boundary)
    pieces, length = byteranges_plan(ranges, len(data), b"application/x-test", boundary)
    body = b"".join(p if isinstance(p, bytes) else data[p[0] : p[1] + 1] for p in pieces)
    assert len(body) == length
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: multipart/byteranges; boundary=" + boundary + b"\r\n\r\n" + body
    )
    parts = list(msg.iter_parts())
    assert len(parts) == 3
    for part, (first, last) in zip(parts, ranges, strict=True):
        assert part["Content-Type"] == "application/x-test"
        assert part["Content-Range"] == f"bytes {first}-{last}/{len(data)}"
        assert part.get_payload(decode=True) == data[first : last + 1]
    assert body.endswith(b"\r\n--" + boundary + b"--\r\n")


def test_max_ranges_zero_turns_ranges_off(tmp_path: pathlib.Path) -> None:
    """As nginx's max_ranges 0: the whole file, and no Accept-Ranges to invite ranges."""
    (tmp_path / "f.bin").write_bytes(b"x" * 100)
    req = h11.Request(
        method="GET", target="/f.bin", headers=[("Host", "x"), ("Range", "bytes=0-9")]
    )
    for max_ranges, status, accept in ((0, 200, None), (1, 206, b"bytes")):
        reply = plan(req, Site(tmp_path.resolve(), max_ranges=max_ranges))
        assert isinstance(reply, FileReply)
        try:
            assert reply.status == status
            assert dict(reply.headers).get(b"Accept-Ranges") == accept
        finally:
            reply.close()
