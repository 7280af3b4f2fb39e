"""The field values the static-file responses need (dates, entity-tags), as the bytes h11 sends.

Theory of operation. `http_date()` writes RFC 9110 5.6.7 IMF-fixdate ("Sun, 06 Nov 1994 08:49:37
GMT") from its own English day and month tables and time.gmtime(), so the
result never depends on the locale (strftime's %a/%b would).  It produces
the same text as email.utils.formatdate(usegmt=True) except that fractions
are floored, not rounded: a file modified at 12.9 s is "Last-Modified ...:12"
and compares equal to an If-Modified-Since of 12, as nginx's does.

`strong_etag()` is nginx's ETag idea ("mtime-size" in hex) made strong
(RFC 9110 8.8.3): inode, size and mtime in nanoseconds, so a rewrite within
the same second, or a file replaced by rename, still changes the tag.
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Final

__all__ = ["http_date", "strong_etag"]

_DAYS: Final = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")  # tm_wday 0 = Monday
_MONTHS: Final = (
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun",
    b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
)  # fmt: skip

# IMF-fixdate has a 4-digit year: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
_MIN_TIMESTAMP: Final = -62135596800
_MAX_TIMESTAMP: Final = 253402300799


def http_date(timestamp: float) -> bytes:
    """IMF-fixdate for the POSIX `timestamp`, floored to whole seconds.

    Raises TypeError for a non-number (or bool) and ValueError for NaN,
    infinities and instants whose year has more than four digits."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        raise TypeError(
            f"http_date: timestamp must be int or float, not {type(timestamp).__name__}"
        )
    if isinstance(timestamp, float) and not math.isfinite(timestamp):
        raise ValueError(f"http_date: timestamp must be finite, got {timestamp!r}")
    secs = math.floor(timestamp)
    if not _MIN_TIMESTAMP <= secs <= _MAX_TIMESTAMP:
        raise ValueError(f"http_date: timestamp {timestamp!r} is outside years 1..9999")
    return _imf_fixdate(secs)


@functools.lru_cache(maxsize=256)
def _imf_fixdate(secs: int) -> bytes:
    """The date of a whole second: a pure function, so its cache is always right
    (every Last-Modified of the same file, and the Date of the current second)."""
    tm = time.gmtime(secs)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[tm.tm_wday],
        tm.tm_mday,
        _MONTHS[tm.tm_mon - 1],
        tm.tm_year,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
    )


def strong_etag(st: os.stat_result) -> bytes:
    """Strong entity-tag b'"<ino>-<size>-<mtime_ns>"', each in lower-case hex.

    A negative mtime (before 1970) is written with a leading "-", which is
    still a valid etagc."""
    if not isinstance(st, os.stat_result):
        raise TypeError(f"strong_etag: st must be os.stat_result, not {type(st).__name__}")
    return b'"%x-%x-%x"' % (st.st_ino, st.st_size, st.st_mtime_ns)
