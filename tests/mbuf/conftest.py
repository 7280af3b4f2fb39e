"""Fixtures for the mbuf tests: a small machine and temporary files opened with os.open."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mbuf.kern import Kernel
from tests.mbuf.builders import (
    SMALL_MEM,
    DiskFile,
    write_file,
)


@pytest.fixture
def kern() -> Kernel:
    return Kernel(SMALL_MEM)


@pytest.fixture
def make_file(tmp_path: Path) -> Iterator[Callable[[bytes], DiskFile]]:
    """make_file(data) writes a file and opens it read-only; closed at teardown."""
    opened: list[DiskFile] = []
    counter = iter(range(1_000_000))

    def make(data: bytes) -> DiskFile:
        f = write_file(tmp_path / f"f{next(counter)}", data)
        opened.append(f)
        return f

    yield make
    for f in opened:
        os.close(f.fd)
