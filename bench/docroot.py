"""The document root every server serves: the workloads' files, made for the run.

Theory of operation. Files are pseudo-random (seeded, so every run serves the
same bytes) and incompressible: no server can cheat with compression, and
nomapd's software checksum and the TLS ciphers see realistic data. The 100 MiB
files are one random MiB repeated with the MiB's index written into its first
8 bytes, so no two pages of a file are equal and writing 400 MiB takes well
under a second. Only the files the selected workloads fetch are written.
"""

from __future__ import annotations

import pathlib
import random
from collections.abc import Iterable

from bench.workloads import FILES, MIB


def _content(name: str, size: int) -> Iterable[bytes]:
    rng = random.Random(name)
    if size <= MIB:
        yield rng.randbytes(size)
        return
    block = bytearray(rng.randbytes(MIB))
    for i in range(0, size, MIB):
        block[:8] = (i // MIB).to_bytes(8, "little")
        yield bytes(block[: min(MIB, size - i)])


def build(root: pathlib.Path, names: Iterable[str]) -> dict[str, int]:
    """Write the named files of `FILES` under `root` (made if missing); return {name: size}."""
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    for name in sorted(set(names)):
        size = FILES[name]
        with (root / name).open("wb") as f:
            for chunk in _content(name, size):
                f.write(chunk)
        written[name] = size
    return written
