"""VM objects and the page cache: one object per file version, read by the pager.

Theory of operation. One VmObject per *file version*: the key is (device,
inode, size, mtime in ns), so a file that is replaced or rewritten gets a
fresh object for new requests, while responses already under way keep the
pages they wired. The page cache is the dictionary of live objects; an object
whose file version is superseded is marked dead and its unwired pages are
freed. A read checks the file's size and mtime again after it completes; if
they changed, the pages may hold bytes of another version, so the read fails
(EIO) and the response that needed them is aborted instead of mixing versions
(`sendfile.file_changed`).

Pages are read from disk by `PagerRequest.run()`, which does the kernel's
`vm_pager_get_pages_async` as one `preadv` straight into the page frames (no
copy in Python). It is safe to run on a worker thread: it touches only the
frames it was given, which are wired and not yet valid, so no one else reads
or frees them until `sendfile_iodone` runs on the event-loop thread.

Models: sys/vm/vm_object.c and sys/vm/vnode_pager.c (a vnode's pages, read
with `vm_pager_get_pages_async`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mbuf.param import PAGE_SIZE
from mbuf.vm_page import PhysMem, VmPage

ObjectKey = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


class VmObject:
    __slots__ = ("busy", "key", "live", "on_empty", "pages", "refs", "size")

    def __init__(self, key: ObjectKey) -> None:
        self.key = key
        self.size = key[2]
        self.pages: dict[int, VmPage] = {}
        # Pages under I/O (wired, not yet valid) and the request reading each.
        self.busy: dict[int, PagerRequest] = {}
        self.live = True
        self.refs = 0  # sendfile jobs using the object (the kernel's vnode reference)
        # Called when the last page leaves (the page cache forgets the object then).
        self.on_empty: Callable[[VmObject], None] | None = None

    def page_insert(self, pg: VmPage) -> None:
        self.pages[pg.pindex] = pg

    def page_remove(self, pg: VmPage) -> None:
        if self.pages.get(pg.pindex) is pg:
            del self.pages[pg.pindex]
            self._maybe_empty()

    def _maybe_empty(self) -> None:
        if not self.pages and not self.busy and not self.refs and self.on_empty is not None:
            self.on_empty(self)

    def hold(self) -> None:
        self.refs += 1

    def release(self) -> None:
        self.refs -= 1
        self._maybe_empty()

    def page_lookup(self, pindex: int) -> VmPage | None:
        return self.pages.get(pindex)

    def __repr__(self) -> str:
        return f"VmObject(key={self.key}, pages={len(self.pages)}, live={self.live})"


class PageCache:
    """The set of VM objects, one per file version, keyed by identity and version."""

    __slots__ = ("_by_file", "objects", "phys")

    def __init__(self, phys: PhysMem) -> None:
        self.phys = phys
        self.objects: dict[ObjectKey, VmObject] = {}
        self._by_file: dict[tuple[int, int], ObjectKey] = {}

    def lookup(self, st: os.stat_result) -> VmObject:
        """Return the object for this file version, retiring an older version of the file."""
        key: ObjectKey = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        obj = self.objects.get(key)
        if obj is not None:
            return obj
        ident = (st.st_dev, st.st_ino)
        old = self._by_file.pop(ident, None)
        if old is not None:
            stale = self.objects.pop(old)
            stale.live = False
            self.phys.object_flush(stale)
        obj = VmObject(key)
        obj.on_empty = self._forget
        self.objects[key] = obj
        self._by_file[ident] = key
        return obj

    def _forget(self, obj: VmObject) -> None:
        """An object with no pages left is dropped (the kernel recycles the vnode);
        a sendfile still holding it keeps working, and a new lookup makes a new one."""
        if self.objects.get(obj.key) is obj:
            del self.objects[obj.key]
            ident = (obj.key[0], obj.key[1])
            if self._by_file.get(ident) == obj.key:
                del self._by_file[ident]


@dataclass(slots=True)
class PagerRequest:
    """One run of contiguous invalid pages to read (vm_pager_get_pages_async)."""

    fd: int
    offset: int  # file offset of the first page
    pages: list[VmPage]
    views: list[memoryview]
    file_size: int = 0
    mtime_ns: int = 0  # the version the pages must come from (with file_size)
    error: int = 0
    nread: int = 0
    changed: bool = False  # the file was modified: these bytes may be of another version
    rahead: int = 0  # the last `rahead` pages are readahead: no mbuf holds them
    # sendfile I/O states (SfIo) waiting for these pages; only touched on the loop thread.
    waiters: list[Any] = field(default_factory=list)

    def run(self) -> None:
        """Read the pages from disk. Safe on a worker thread; never raises."""
        want = min(len(self.pages) * PAGE_SIZE, max(0, self.file_size - self.offset))
        try:
            got = os.preadv(self.fd, self.views, self.offset)
            while got < want:
                # preadv may return short on some filesystems; continue where it stopped.
                idx, within = divmod(got, PAGE_SIZE)
                rest = [self.views[idx][within:], *self.views[idx + 1 :]]
                n = os.preadv(self.fd, rest, self.offset + got)
                if n == 0:
                    break
                got += n
            self.nread = got
            st = os.fstat(self.fd)
            if got < want or (st.st_size, st.st_mtime_ns) != (self.file_size, self.mtime_ns):
                # The file shrank or was rewritten since it was looked up: what was
                # read may belong to another version. Never mix two in one response.
                self.changed = True
                self.error = errno.EIO
            else:
                tail = got
                for v in self.views:  # zero what lies beyond EOF in the last page
                    if tail < len(v):
                        v[max(tail, 0) :] = bytes(len(v) - max(tail, 0))
                    tail -= len(v)
        except OSError as e:
            self.error = e.errno or 5
