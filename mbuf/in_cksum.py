"""The Internet checksum (RFC 1071) over scatter-gather lists, in C via NumPy.

Theory of operation. The TCP checksum covers a pseudo-header, the TCP header
and the payload, and is written into the header. The data is summed as
big-endian 16-bit words with `numpy.sum`; a segment that starts at an odd
position of the stream is handled by carrying its first byte, so segments of
any length can follow each other.

Models: sys/netinet/in_cksum.c and `in_delayed_cksum` of sys/netinet/ip_output.c.
"""

from __future__ import annotations

import numpy as np


def cksum_iov(iov: list[memoryview], initial: int = 0) -> int:
    """Ones'-complement sum (not yet complemented) of the concatenated segments."""
    total = initial
    odd = False
    for v in iov:
        if not len(v):
            continue
        a = np.frombuffer(v, dtype=np.uint8)
        if odd:
            total += int(a[0])  # low byte of the word whose high byte came before
            a = a[1:]
            odd = False
        even = len(a) & ~1
        if even:
            total += int(a[:even].view(">u2").sum(dtype=np.uint64))
        if len(a) & 1:
            total += int(a[-1]) << 8
            odd = True
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
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
