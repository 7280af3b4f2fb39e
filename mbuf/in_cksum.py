"""The Internet checksum (RFC 1071) over scatter-gather lists, in C (NumPy, int).

Theory of operation. The TCP checksum covers a pseudo-header, the TCP header
and the payload, and is written into the header. The data is summed as
big-endian 16-bit words (with `numpy.sum` for long segments, as one integer
for short ones: the same sum, see `cksum_iov`); segments of any length can
follow each other.

Models: sys/netinet/in_cksum.c and `in_delayed_cksum` of sys/netinet/ip_output.c.
"""

from __future__ import annotations

from typing import Final

import numpy as np

# Segments up to this long are summed as one integer (`int.from_bytes`), longer
# ones with NumPy: below it NumPy's per-call cost (about 3 us for a header)
# outweighs its speed per byte.
SMALL_SEGMENT: Final = 1024
_FOLD = 0xFFFF  # 2**16 == 1 (mod 0xFFFF): a ones'-complement sum is a residue mod 0xFFFF


def _residue(v: memoryview) -> tuple[int, bool]:
    """The segment read as one big-endian number, mod 0xFFFF, and whether it is nonzero."""
    n = len(v)
    if n <= SMALL_SEGMENT:
        x = int.from_bytes(v, "big")
        return x % _FOLD, x != 0
    a = np.frombuffer(v, dtype=np.uint8)
    s = int(a[: n & ~1].view(">u2").sum(dtype=np.uint64))
    if n & 1:
        s = s * 256 + int(a[-1])
    return s % _FOLD, s != 0


def cksum_iov(iov: list[memoryview], initial: int = 0) -> int:
    """Ones'-complement sum (not yet complemented) of the concatenated segments.

    RFC 1071's folded sum is the stream's residue mod 0xFFFF, except that a
    nonzero stream whose residue is 0 folds to 0xFFFF: a segment of odd length
    shifts what follows it by a byte (a factor of 256), and an odd total is
    padded with a zero byte."""
    acc = 0
    nonzero = initial != 0
    odd = False
    for v in iov:
        n = len(v)
        if not n:
            continue
        r, nz = _residue(v)
        nonzero = nonzero or nz
        if n & 1:
            acc = (acc * 256 + r) % _FOLD
            odd = not odd
        else:
            acc = (acc + r) % _FOLD
    if odd:
        acc = acc * 256 % _FOLD
    total = (initial + acc) % _FOLD
    if total == 0:
        return _FOLD if nonzero else 0
    return total


def in_cksum(iov: list[memoryview], initial: int = 0) -> int:
    """The checksum value to store: the complement of the folded sum."""
    return (~cksum_iov(iov, initial)) & 0xFFFF


def in_cksum_hdr(ip: memoryview) -> int:
    """in_cksum_hdr: the checksum of a 20-byte IPv4 header (ip_sum zero while summed)."""
    return in_cksum([ip[:20]])


def in_pseudo(src: int, dst: int, proto: int, length: int) -> int:
    """in_pseudo: partial sum of the IPv4 pseudo-header."""
    s = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + proto + length
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s
