"""Range requests (RFC 9110 14): parsing `Range: bytes=...` and `If-Range`.

Theory of operation. `parse_range(value, length, max_ranges)` decides what a
GET for a representation of `length` bytes answers:

* `None`: ignore the header and send the whole representation (200). That is
  the answer to a header that is not `bytes=` or does not parse (RFC 9110
  14.2 lets a server ignore it; nginx answers 416 instead), to more ranges
  than `max_ranges` (nginx's `max_ranges`: "the byte ranges are disregarded"),
  to ranges that add up to more than the whole (nginx's rule, which also
  keeps overlapping ranges from multiplying the response), and to any range
  of an empty representation (as nginx does).
* `UNSATISFIABLE`: no range overlaps the representation: 416 with
  `Content-Range: bytes */LENGTH`.
* a list of `(first, last)` inclusive byte positions, in the order asked for:
  one is a plain 206, several a `multipart/byteranges` 206.

A range starting inside the representation is cut at its end; one starting
at or after the end is dropped (14.1.2), as is a zero-length suffix.

`if_range_allows(value, etag, mtime)` is RFC 9110 13.1.5: the Range applies
only if the If-Range validator is a strong entity-tag equal to the current
one, or an HTTP-date equal to Last-Modified (whole seconds, as nginx
compares; a weak tag or a date that does not parse never matches).
"""

from __future__ import annotations

import re
from typing import Final, Literal

from server.http.conditional import parse_http_date

Ranges = list[tuple[int, int]]
UNSATISFIABLE: Final = "unsatisfiable"

_SPEC = re.compile(rb"[ \t]*(?:(\d+)[ \t]*-[ \t]*(\d*)|-[ \t]*(\d+))[ \t]*\Z")
_MAX_DIGITS = 19  # positions beyond 2^63 cannot be satisfied and would only cost time


def parse_range(
    value: bytes, length: int, max_ranges: int
) -> Ranges | Literal["unsatisfiable"] | None:
    unit, eq, rest = value.partition(b"=")
    if not eq or unit.strip(b" \t").lower() != b"bytes":
        return None
    specs = rest.split(b",")
    if len([s for s in specs if s.strip(b" \t")]) > max_ranges:
        return None
    out: Ranges = []
    total = 0
    seen = 0
    for spec in specs:
        if not spec.strip(b" \t"):
            continue  # RFC 9110 5.6.1: empty list elements are ignored
        m = _SPEC.match(spec)
        if m is None:
            return None
        first_s, last_s, suffix_s = m.groups()
        if any(g is not None and len(g) > _MAX_DIGITS for g in (first_s, last_s, suffix_s)):
            return None
        seen += 1
        if suffix_s is not None:
            n = int(suffix_s)
            if n == 0:
                continue
            first, last = max(length - n, 0), length - 1
        else:
            first = int(first_s)
            if last_s:
                last = int(last_s)
                if last < first:
                    return None  # 14.1.1: an invalid range-spec
                last = min(last, length - 1)
            else:
                last = length - 1
        if first >= length:
            continue
        out.append((first, last))
        total += last - first + 1
    if not seen:
        return None
    if length == 0:
        return None
    if not out:
        return UNSATISFIABLE
    if total > length:
        return None
    return out


def if_range_allows(value: bytes, etag: bytes, mtime: float) -> bool:
    v = value.strip(b" \t")
    if v.startswith(b'"') or v.startswith(b"W/"):
        return v == etag and not etag.startswith(b"W/")  # strong comparison only
    date = parse_http_date(v)
    return date is not None and date == int(mtime)
