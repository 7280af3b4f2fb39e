"""File contents a test can regenerate from the size alone."""

from __future__ import annotations

import random


def file_bytes(size: int, seed: int = 0) -> bytes:
    """`size` pseudo-random bytes, the same for the same (size, seed) in every test."""
    return random.Random(seed * 1_000_003 + size).randbytes(size)
