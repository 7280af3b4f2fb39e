"""multipart/byteranges bodies (RFC 9110 14.6) whose parts are sent by sendfile.

Theory of operation. A 206 for several ranges is a MIME multipart body: before
each part a delimiter and the part's header fields, after the last one the
closing delimiter. `byteranges_plan` returns the pieces in order, each either
bytes (delimiters and part headers, written with the response) or a `(first,
last)` range of the file, so that every byte of the representation still goes
through sendfile; and the exact Content-Length, which is known before the
first byte is sent (as nginx computes it), so keep-alive works.
"""

from __future__ import annotations

import os

Piece = bytes | tuple[int, int]


def new_boundary() -> bytes:
    """A boundary no file content can be confused with (RFC 2046 5.1.1: up to 70)."""
    return os.urandom(12).hex().encode()


def byteranges_plan(
    ranges: list[tuple[int, int]], length: int, content_type: bytes, boundary: bytes
) -> tuple[list[Piece], int]:
    pieces: list[Piece] = []
    total = 0
    for i, (first, last) in enumerate(ranges):
        head = b"%s--%s\r\nContent-Type: %s\r\nContent-Range: bytes %d-%d/%d\r\n\r\n" % (
            b"\r\n" if i else b"",
            boundary,
            content_type,
            first,
            last,
            length,
        )
        pieces.append(head)
        pieces.append((first, last))
        total += len(head) + last - first + 1
    tail = b"\r\n--%s--\r\n" % boundary
    pieces.append(tail)
    total += len(tail)
    return pieces, total
