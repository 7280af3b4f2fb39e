"""server.http.httpfields: IMF-fixdate and strong ETags."""

from __future__ import annotations

import email.utils
import math
import os
import pathlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.http.httpfields import http_date, strong_etag

IMF_FIXDATE = re.compile(
    rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d "
    rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT"
)


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (784111777, b"Sun, 06 Nov 1994 08:49:37 GMT"),  # the RFC 9110 5.6.7 example
        (784111777.0, b"Sun, 06 Nov 1994 08:49:37 GMT"),
        (784111777.999999, b"Sun, 06 Nov 1994 08:49:37 GMT"),  # floored, not rounded
        (0, b"Thu, 01 Jan 1970 00:00:00 GMT"),
        (0.5, b"Thu, 01 Jan 1970 00:00:00 GMT"),
        (-0.5, b"Wed, 31 Dec 1969 23:59:59 GMT"),
        (-1, b"Wed, 31 Dec 1969 23:59:59 GMT"),
        (951782400, b"Tue, 29 Feb 2000 00:00:00 GMT"),
        (1709251199, b"Thu, 29 Feb 2024 23:59:59 GMT"),
        (2147483647, b"Tue, 19 Jan 2038 03:14:07 GMT"),
        (2147483648, b"Tue, 19 Jan 2038 03:14:08 GMT"),
        (4102444800, b"Fri, 01 Jan 2100 00:00:00 GMT"),
        (-62135596800, b"Mon, 01 Jan 0001 00:00:00 GMT"),
        (253402300799, b"Fri, 31 Dec 9999 23:59:59 GMT"),
    ],
)
def test_http_date(timestamp: float, expected: bytes) -> None:
    result = http_date(timestamp)
    assert result == expected
    assert IMF_FIXDATE.fullmatch(result)


@given(st.integers(min_value=0, max_value=2**34))
def test_http_date_matches_formatdate(timestamp: int) -> None:
    result = http_date(timestamp)
    assert result == email.utils.formatdate(timestamp, usegmt=True).encode("ascii")
    assert email.utils.parsedate_to_datetime(result.decode()).timestamp() == timestamp


@given(st.floats(min_value=-1e10, max_value=1e11, allow_nan=False))
def test_http_date_floors_floats(timestamp: float) -> None:
    assert http_date(timestamp) == http_date(math.floor(timestamp))


@pytest.mark.parametrize(
    ("value", "exc", "message"),
    [
        (float("nan"), ValueError, "must be finite"),
        (float("inf"), ValueError, "must be finite"),
        (float("-inf"), ValueError, "must be finite"),
        (253402300800, ValueError, "outside years 1..9999"),
        (-62135596801, ValueError, "outside years 1..9999"),
        (1e300, ValueError, "outside years 1..9999"),
        (True, TypeError, "must be int or float, not bool"),
        ("0", TypeError, "must be int or float, not str"),
        (None, TypeError, "must be int or float, not NoneType"),
    ],
)
def test_http_date_misuse(value: object, exc: type[Exception], message: str) -> None:
    with pytest.raises(exc, match=re.escape(message)):
        http_date(value)  # type: ignore[arg-type]


def _stat(ino: int, size: int, mtime_ns: int) -> os.stat_result:
    mtime = mtime_ns // 10**9
    return os.stat_result(
        (0o100644, ino, 1, 1, 0, 0, size, mtime, mtime, mtime), {"st_mtime_ns": mtime_ns}
    )


@pytest.mark.parametrize(
    ("ino", "size", "mtime_ns", "expected"),
    [
        (0x1234, 6, 1_700_000_000_123_456_789, b'"1234-6-17979cfe3d85cd15"'),
        (1, 0, 0, b'"1-0-0"'),
        (2**64 - 1, 2**40, 10**18, b'"ffffffffffffffff-10000000000-de0b6b3a7640000"'),
        (7, 1, -1, b'"7-1--1"'),  # before 1970: still a valid etagc sequence
    ],
)
def test_strong_etag(ino: int, size: int, mtime_ns: int, expected: bytes) -> None:
    tag = strong_etag(_stat(ino, size, mtime_ns))
    assert tag == expected
    assert re.fullmatch(rb'"[\x21\x23-\x7e]*"', tag)  # RFC 9110 8.8.3 entity-tag, not W/


def test_strong_etag_distinguishes_one_nanosecond() -> None:
    a = strong_etag(_stat(5, 100, 1_700_000_000_000_000_000))
    b = strong_etag(_stat(5, 100, 1_700_000_000_000_000_001))
    assert a != b


@pytest.mark.parametrize(
    ("changed", "other"),
    [("ino", (6, 100, 10**18)), ("size", (5, 101, 10**18)), ("mtime", (5, 100, 10**18 + 1))],
)
def test_strong_etag_each_field_counts(changed: str, other: tuple[int, int, int]) -> None:
    assert strong_etag(_stat(5, 100, 10**18)) != strong_etag(_stat(*other)), changed


def test_strong_etag_on_real_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(b"hello")
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    first = strong_etag(os.stat(path))
    assert first == strong_etag(os.stat(path))
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_001))
    second = strong_etag(os.stat(path))
    if os.stat(path).st_mtime_ns == 1_600_000_000_000_000_001:  # filesystem keeps ns
        assert second != first
    st = os.stat(path)
    assert second == b'"%x-%x-%x"' % (st.st_ino, 5, st.st_mtime_ns)


@pytest.mark.parametrize("value", [None, (1, 2, 3), "stat"])
def test_strong_etag_misuse(value: object) -> None:
    with pytest.raises(TypeError, match=re.escape("st must be os.stat_result")):
        strong_etag(value)  # type: ignore[arg-type]
