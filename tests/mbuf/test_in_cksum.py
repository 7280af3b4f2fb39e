"""The Internet checksum over scatter-gather lists (mbuf/in_cksum.py; RFC 1071)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbuf.in_cksum import cksum_iov, in_cksum, in_pseudo


def ref_sum(data: bytes, initial: int = 0) -> int:
    """Textbook RFC 1071: 16-bit big-endian words, odd byte padded, end-around carry."""
    if len(data) % 2:
        data += b"\0"
    total = initial
    for i in range(0, len(data), 2):
        total += int.from_bytes(data[i : i + 2], "big")
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def split(data: bytes, cuts: list[int]) -> list[memoryview]:
    points = sorted(min(c, len(data)) for c in cuts)
    view = memoryview(data)
    out = []
    prev = 0
    for p in [*points, len(data)]:
        out.append(view[prev:p])  # repeated points give empty segments
        prev = p
    return out


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=3000),
    cuts=st.lists(st.integers(0, 3000), max_size=12),
    initial=st.one_of(st.just(0), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)),
)
def test_cksum_iov_equals_reference_for_any_split(
    data: bytes, cuts: list[int], initial: int
) -> None:
    iov = split(data, cuts)
    assert b"".join(iov) == data
    assert cksum_iov(iov, initial) == ref_sum(data, initial)
    assert in_cksum(iov, initial) == (~ref_sum(data, initial)) & 0xFFFF


@pytest.mark.parametrize(
    "sizes",
    [
        [1, 1, 1],  # odd, odd, odd
        [1, 2, 1],  # odd then even across a carried byte
        [0, 3, 0, 0, 5],  # empty segments between odd ones
        [2, 2, 2],
        [4095, 1, 4096, 4097],  # page-sized pieces at odd positions
        [1023, 1, 1024, 1025, 1],  # both sides of SMALL_SEGMENT, at odd positions
        [0],
        [],
    ],
)
def test_cksum_iov_odd_and_even_boundaries(sizes: list[int]) -> None:
    data = bytes((i * 37 + 11) & 0xFF for i in range(sum(sizes)))
    iov = []
    pos = 0
    for n in sizes:
        iov.append(memoryview(data)[pos : pos + n])
        pos += n
    assert cksum_iov(iov) == ref_sum(data)


def test_rfc1071_worked_example() -> None:
    # RFC 1071 section 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert cksum_iov([memoryview(data)]) == 0xDDF2
    assert in_cksum([memoryview(data)]) == 0x220D
    assert cksum_iov([memoryview(data[:3]), memoryview(data[3:])]) == 0xDDF2


def test_all_ones_and_zero_data() -> None:
    assert cksum_iov([memoryview(b"\xff\xff" * 100)]) == 0xFFFF
    assert cksum_iov([memoryview(bytes(100))]) == 0
    assert in_cksum([memoryview(bytes(100))]) == 0xFFFF


@settings(max_examples=100, deadline=None)
@given(
    src=st.integers(0, 0xFFFFFFFF),
    dst=st.integers(0, 0xFFFFFFFF),
    length=st.integers(0, 0xFFFF),
)
def test_in_pseudo_equals_summing_the_pseudo_header(src: int, dst: int, length: int) -> None:
    pseudo = (
        src.to_bytes(4, "big") + dst.to_bytes(4, "big") + bytes([0, 6]) + length.to_bytes(2, "big")
    )
    assert in_pseudo(src, dst, 6, length) == ref_sum(pseudo)
