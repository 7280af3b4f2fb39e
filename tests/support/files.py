"""Test files: contents a test can regenerate from the size alone, and files
opened for the kernel's page cache."""

from __future__ import annotations

import itertools
import os
import pathlib
import random

from mbuf.kern import Kernel
from mbuf.vm_object import VmObject

_names = itertools.count()


def file_bytes(size: int, seed: int = 0) -> bytes:
    """`size` pseudo-random bytes, the same for the same (size, seed) in every test."""
    return random.Random(seed * 1_000_003 + size).randbytes(size)


def open_file(directory: pathlib.Path, data: bytes, kern: Kernel) -> tuple[int, VmObject]:
    """Write `data` to a new file in `directory` and open it read-only: the
    descriptor (the caller closes it) and the file's VM object in `kern`."""
    path = directory / f"f{next(_names)}"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    return fd, kern.pagecache.lookup(os.fstat(fd))
