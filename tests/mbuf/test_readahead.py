"""sendfile readahead (SF_READAHEAD / MAXPHYS) and reads that find the file changed."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from mbuf.kern import Kernel
from mbuf.param import MAXPHYS, PAGE_SIZE
from mbuf.sendfile import SendfileJob, SendfileStatus, sendfile_step
from mbuf.socket import soclose
from mbuf.vm_object import PagerRequest
from tests.mbuf.builders import (
    take_ready,
)
from tests.support.pair import (
    new_socket,
    run_io,
)

MAXPHYS_PAGES = MAXPHYS // PAGE_SIZE


def _first_batch(kern: Kernel, path: Path, nbytes: int, sndbuf: int) -> tuple[int, list[int]]:
    """One sendfile pass on a cold file; returns (fd, sizes of the pager requests)."""
    fd = os.open(path, os.O_RDONLY)
    so = new_socket(kern, sndbuf=sndbuf)
    obj = kern.pagecache.lookup(os.fstat(fd))
    io: list[PagerRequest] = []
    sendfile_step(SendfileJob(so, obj, fd, 0, nbytes), io)
    sizes = [len(r.pages) for r in io]
    run_io(kern, io)
    take_ready(so.so_snd)
    soclose(so)
    os.close(fd)
    return fd, sizes


@pytest.mark.parametrize(
    ("readahead", "expected"),
    [(None, MAXPHYS_PAGES), (0, 0), (5, 5), (1000, MAXPHYS_PAGES)],
)
def test_readahead_pages(tmp_path: Path, readahead: int | None, expected: int) -> None:
    """The batch (16 pages of send buffer) reads ahead by the rest of the request up
    to MAXPHYS by default, or by exactly --readahead pages (capped at MAXPHYS)."""
    path = tmp_path / "f"
    path.write_bytes(os.urandom(200 * PAGE_SIZE))
    kern = Kernel(1024 * PAGE_SIZE, readahead=readahead)
    _, sizes = _first_batch(kern, path, 200 * PAGE_SIZE, sndbuf=16 * PAGE_SIZE)
    st = kern.stats.sf
    # sf_rhpages_read: pages the read was extended by; sf_rhpages_requested: what
    # the application asked for in its flags (SF_READAHEAD), whatever came of it.
    assert st.rhpages_read == expected
    assert st.rhpages_requested == (readahead or 0)
    assert sum(sizes) == 16 + expected
    # Read-ahead pages are cached, not wired: nothing is in use.
    assert kern.leaks() == {}
    assert kern.stats.vm.pages_cached == 16 + expected


def test_readahead_stops_at_eof_and_the_request_end(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(20 * PAGE_SIZE + 100))
    kern = Kernel(1024 * PAGE_SIZE)
    _, sizes = _first_batch(kern, path, 20 * PAGE_SIZE + 100, sndbuf=16 * PAGE_SIZE)
    assert sum(sizes) == 21  # 16 for the batch, 5 ahead: up to the last (partial) page
    assert kern.stats.sf.rhpages_read == 5


def test_readahead_pages_are_hits_later(tmp_path: Path) -> None:
    data = os.urandom(64 * PAGE_SIZE)
    path = tmp_path / "f"
    path.write_bytes(data)
    kern = Kernel(1024 * PAGE_SIZE, readahead=8)
    fd = os.open(path, os.O_RDONLY)
    so = new_socket(kern, sndbuf=16 * PAGE_SIZE)
    job = SendfileJob(so, kern.pagecache.lookup(os.fstat(fd)), fd, 0, len(data))
    got = b""
    while True:
        io: list[PagerRequest] = []
        status = sendfile_step(job, io)
        run_io(kern, io)
        got += take_ready(so.so_snd)
        if status is SendfileStatus.DONE:
            break
    got += take_ready(so.so_snd)
    assert got == data
    st = kern.stats.sf
    assert st.rhpages_read > 0
    assert st.pages_valid >= st.rhpages_read
    assert st.pages_read + st.rhpages_read == 64
    soclose(so)
    os.close(fd)
    assert kern.leaks() == {}


@pytest.mark.parametrize("change", ["rewrite", "truncate"])
def test_read_of_a_changed_file_aborts(tmp_path: Path, change: str) -> None:
    """Pages read after the file changed could be of another version: EIO, counted."""
    path = tmp_path / "f"
    path.write_bytes(b"a" * (8 * PAGE_SIZE))
    kern = Kernel(1024 * PAGE_SIZE)
    fd = os.open(path, os.O_RDONLY)
    so = new_socket(kern)
    obj = kern.pagecache.lookup(os.fstat(fd))
    io: list[PagerRequest] = []
    sendfile_step(SendfileJob(so, obj, fd, 0, 8 * PAGE_SIZE), io)
    if change == "rewrite":  # same size, new contents and mtime
        st = os.stat(path)
        path.write_bytes(b"b" * (8 * PAGE_SIZE))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    else:
        os.truncate(path, 3 * PAGE_SIZE)
    run_io(kern, io)
    assert so.so_error == errno.EIO
    assert kern.stats.sf.file_changed == 1 and kern.stats.sf.io_errors == 1
    assert take_ready(so.so_snd) == b""  # not one byte of either version went out
    soclose(so)
    os.close(fd)
    assert kern.leaks() == {}
    assert kern.stats.vm.pages_cached == 0  # nothing of the unknown version is cached
