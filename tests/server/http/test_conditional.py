"""Conditional requests: parsing and RFC 9110 section 13.2.2 precedence."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.http.conditional import evaluate, parse_etags, parse_http_date
from server.http.httpfields import http_date

ETAG = b'"1a-400-17f"'
MTIME = 1_700_000_000.75  # Last-Modified is this second: ..:..:20 GMT, fraction dropped
LM = http_date(MTIME)
BEFORE = http_date(MTIME - 10)
AFTER = http_date(MTIME + 10)


@pytest.mark.parametrize(
    ("value", "tags"),
    [
        (b'"a"', [(False, b"a")]),
        (b'W/"a"', [(True, b"a")]),
        (b'"a", W/"b" ,"c"', [(False, b"a"), (True, b"b"), (False, b"c")]),
        (b'"a",,"b"', [(False, b"a"), (False, b"b")]),
        (b'""', [(False, b"")]),
        (b" * ", None),
    ],
)
def test_parse_etags(value: bytes, tags: list[tuple[bool, bytes]] | None) -> None:
    assert parse_etags(value) == tags


@pytest.mark.parametrize("value", [b"a", b'"a', b"W/a", b'"a" "b"', b"", b",", b'"a"x'])
def test_parse_etags_rejects(value: bytes) -> None:
    with pytest.raises(ValueError):
        parse_etags(value)


@given(st.binary(max_size=40))
def test_parse_etags_never_crashes(value: bytes) -> None:
    try:
        tags = parse_etags(value)
    except ValueError:
        return
    assert tags is None or all(b'"' not in tag for _, tag in tags)


@pytest.mark.parametrize(
    "value",
    [
        b"Sun, 06 Nov 1994 08:49:37 GMT",
        b"Sunday, 06-Nov-94 08:49:37 GMT",
        b"Sun Nov  6 08:49:37 1994",
    ],
)
def test_http_date_formats(value: bytes) -> None:
    assert parse_http_date(value) == 784111777  # RFC 9110 section 5.6.7's example


@pytest.mark.parametrize(
    "value", [b"yesterday", b"", b"\xff\xfe", b"Sun, 99 Nov 1994 08:49:37 GMT"]
)
def test_http_date_garbage(value: bytes) -> None:
    assert parse_http_date(value) is None


def _h(**kw: bytes) -> dict[bytes, bytes]:
    return {k.replace("_", "-").encode(): v for k, v in kw.items()}


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        (b"GET", {}, None),
        # If-None-Match: weak comparison, lists, "*"
        (b"GET", _h(if_none_match=ETAG), 304),
        (b"GET", _h(if_none_match=b"W/" + ETAG), 304),
        (b"GET", _h(if_none_match=b'"x", ' + ETAG), 304),
        (b"GET", _h(if_none_match=b"*"), 304),
        (b"HEAD", _h(if_none_match=ETAG), 304),
        (b"GET", _h(if_none_match=b'"other"'), None),
        (b"GET", _h(if_none_match=b"garbage"), None),
        # ... and it overrides If-Modified-Since, in both directions
        (b"GET", _h(if_none_match=b'"other"', if_modified_since=AFTER), None),
        (b"GET", _h(if_none_match=ETAG, if_modified_since=BEFORE), 304),
        # If-Modified-Since alone
        (b"GET", _h(if_modified_since=LM), 304),
        (b"GET", _h(if_modified_since=AFTER), 304),
        (b"GET", _h(if_modified_since=BEFORE), None),
        (b"GET", _h(if_modified_since=b"not a date"), None),
        # If-Match: strong comparison; fails -> 412 before anything else
        (b"GET", _h(if_match=ETAG), None),
        (b"GET", _h(if_match=b"*"), None),
        (b"GET", _h(if_match=b"W/" + ETAG), 412),
        (b"GET", _h(if_match=b'"other"'), 412),
        (b"GET", _h(if_match=b'"other"', if_none_match=ETAG), 412),
        (b"GET", _h(if_match=ETAG, if_none_match=ETAG), 304),
        # If-Unmodified-Since, ignored when If-Match is present
        (b"GET", _h(if_unmodified_since=BEFORE), 412),
        (b"GET", _h(if_unmodified_since=LM), None),
        (b"GET", _h(if_unmodified_since=BEFORE, if_match=ETAG), None),
        (b"GET", _h(if_unmodified_since=b"bogus"), None),
        # other methods: If-None-Match match -> 412; If-Modified-Since ignored
        (b"POST", _h(if_none_match=ETAG), 412),
        (b"POST", _h(if_modified_since=AFTER), None),
    ],
)
def test_precedence(method: bytes, headers: dict[bytes, bytes], expected: int | None) -> None:
    assert evaluate(method, headers, ETAG, MTIME) == expected
