"""Conditional requests (RFC 9110 section 13): validators against preconditions.

Theory of operation. `evaluate(method, headers, etag, mtime)` applies the
preconditions in the order of RFC 9110 section 13.2.2 and answers the status
to send instead of the representation, or None to go on:

1. If-Match: none of the listed entity-tags matches strongly (or "*" when the
   resource exists, which it always does here) -> 412.
2. otherwise If-Unmodified-Since (a valid HTTP-date): modified after it -> 412.
3. If-None-Match: any tag matches weakly, or "*" -> 304 for GET/HEAD, else 412.
4. otherwise, for GET/HEAD, If-Modified-Since (a valid HTTP-date): not modified
   since -> 304. If-None-Match, when present, overrides it (the step is skipped).

Header values that do not parse are ignored, as the RFC says for dates and as
servers do for malformed tag lists (the request is answered unconditionally).
Dates compare at whole-second precision, which is what Last-Modified carries.
"""

from __future__ import annotations

import email.utils
import re

_ETAG = re.compile(rb'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|$)')


def parse_etags(value: bytes) -> list[tuple[bool, bytes]] | None:
    """A comma-separated list of entity-tags as (weak, opaque-tag) pairs, or None
    for "*". Raises ValueError for a malformed list."""
    if value.strip() == b"*":
        return None
    tags: list[tuple[bool, bytes]] = []
    pos = 0
    value = value.strip()
    while pos < len(value):
        if value[pos : pos + 1] in (b",", b" ", b"\t"):
            pos += 1  # empty list elements are allowed (RFC 9110 section 5.6.1)
            continue
        m = _ETAG.match(value, pos)
        if m is None:
            raise ValueError(f"malformed entity-tag list at byte {pos}")
        tags.append((m.group(1) is not None, m.group(2)))
        pos = m.end()
    if not tags:
        raise ValueError("empty entity-tag list")
    return tags


def parse_http_date(value: bytes) -> int | None:
    """Seconds since the epoch for an HTTP-date (IMF-fixdate, RFC 850 or asctime),
    or None if it does not parse."""
    try:
        parsed = email.utils.parsedate_tz(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError, TypeError, IndexError):
        return None
    if parsed is None:
        return None
    _, month, day, hour, minute, second = parsed[:6]
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second <= 60):
        return None
    try:
        return int(email.utils.mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None


def _opaque(etag: bytes) -> tuple[bool, bytes]:
    weak = etag.startswith(b"W/")
    return weak, etag[2:].strip(b'"') if weak else etag.strip(b'"')


def evaluate(method: bytes, headers: dict[bytes, bytes], etag: bytes, mtime: float) -> int | None:
    """The status that answers the preconditions (304 or 412), or None to proceed.
    `headers` has lower-case names; `etag` is the representation's ETag header value."""
    ours_weak, ours = _opaque(etag)
    last_modified = int(mtime)
    safe = method in (b"GET", b"HEAD")
    if b"if-match" in headers:
        try:
            tags = parse_etags(headers[b"if-match"])
        except ValueError:
            tags = []
        if tags is not None and not any(
            not weak and not ours_weak and tag == ours for weak, tag in tags
        ):
            return 412
    elif b"if-unmodified-since" in headers:
        since = parse_http_date(headers[b"if-unmodified-since"])
        if since is not None and last_modified > since:
            return 412
    if b"if-none-match" in headers:
        try:
            tags = parse_etags(headers[b"if-none-match"])
        except ValueError:
            return None
        if tags is None or any(tag == ours for _, tag in tags):  # weak comparison
            return 304 if safe else 412
    elif safe and b"if-modified-since" in headers:
        since = parse_http_date(headers[b"if-modified-since"])
        if since is not None and last_modified <= since:
            return 304
    return None
