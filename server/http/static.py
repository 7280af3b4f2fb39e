"""What a GET or HEAD for a path answers: nginx's static module, decided before any byte is sent.

Theory of operation. `plan(req, site)` resolves the target
(`server.http.resolve`), picks the representation (a precompressed `FILE.br` /
`FILE.gz` sidecar when the client's Accept-Encoding prefers it,
`server.http.encoding`), opens it, evaluates the preconditions
(`server.http.conditional`, RFC 9110 13.2.2) and then the Range
(`server.http.ranges`, after If-Range), and returns a `Reply`:

* `Simple`: a status with a small in-memory body (errors, redirects, 304,
  416);
* `Listing`: a directory listing, which the caller renders on a worker
  thread (a large directory takes a good fraction of a second);
* `FileReply`: status 200 or 206, its header fields, an open descriptor and
  the pieces of the body in order: bytes (multipart delimiters) and
  `(first, last)` ranges of the file, which the connection sends with
  sendfile, so every byte of the file still goes through the modelled kernel.

Header fields follow nginx: `Accept-Ranges: bytes`, `ETag` (strong, from
inode, size and mtime in ns) and `Last-Modified` on every file response,
`Cache-Control` when `--cache-control` is set (on 304 too), and `Vary:
Accept-Encoding` on every response for a file that has a sidecar, so caches
keep the encodings apart. A sidecar is a representation of its own: its
ETag, Last-Modified and length, ranges counted in encoded bytes, the
original's Content-Type.
"""

from __future__ import annotations

import errno
import os
import pathlib
import stat as stat_mod
import time
from dataclasses import dataclass, field

import h11

from server.http.autoindex import render_listing
from server.http.conditional import evaluate
from server.http.encoding import choose_encoding, find_sidecars
from server.http.httpfields import http_date, strong_etag
from server.http.mime import content_type
from server.http.multipart import Piece, byteranges_plan, new_boundary
from server.http.ranges import UNSATISFIABLE, if_range_allows, parse_range
from server.http.resolve import ResolveStatus, resolve_target


@dataclass(frozen=True, slots=True)
class Site:
    """The static module's configuration (the `location` block)."""

    root: pathlib.Path
    follow_symlinks: bool = False
    serve_dotfiles: bool = False
    autoindex: bool = False
    cache_control: bytes | None = None
    default_type: str = "application/octet-stream"
    max_ranges: int = 32


@dataclass(slots=True)
class Simple:
    status: int
    extra: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes | None = None  # None: the standard error page of the status
    content_type: bytes = b"text/html; charset=utf-8"
    close: bool = False  # then close the connection (a hostile target, as nginx)


@dataclass(slots=True)
class FileReply:
    status: int  # 200 or 206
    headers: list[tuple[bytes, bytes]]  # without Date/Server
    fd: int
    st: os.stat_result
    pieces: list[Piece]
    length: int  # Content-Length
    tx_fd: int = -1  # the duplicate sendfile's page-ins read from (KernelTx owns it)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(slots=True)
class Listing:
    """A directory listing (--autoindex): `render` it off the event loop."""

    path: pathlib.Path
    url_path: bytes
    extra: list[tuple[bytes, bytes]]

    def render(self, site: Site) -> Simple:
        try:
            body = render_listing(
                self.path,
                self.url_path,
                serve_dotfiles=site.serve_dotfiles,
                follow_symlinks=site.follow_symlinks,
                root=site.root,
            )
        except OSError as e:  # gone or swapped meanwhile: 404; unreadable: 403 (as nginx)
            return Simple(403 if e.errno in (errno.EACCES, errno.EPERM) else 404)
        return Simple(200, self.extra, body)


Reply = Simple | FileReply | Listing

_RESOLVE_STATUS = {
    ResolveStatus.BAD_REQUEST: 400,
    ResolveStatus.NOT_FOUND: 404,
    ResolveStatus.FORBIDDEN: 403,
}


Sidecars = dict[str, tuple[pathlib.Path, os.stat_result]]

# A directory modified less than this long ago may be modified again within the
# same timestamp tick (Linux stamps with the coarse clock): its entries are not
# cached until its mtime is safely in the past (git's "racy clean" rule).
RACY_NS = 1_000_000_000


@dataclass(slots=True)
class _Opened:
    path: pathlib.Path
    path_s: str
    key: tuple[int, int, int, int]  # the file's st_dev, st_ino, st_size, st_mtime_ns
    dir_s: str
    dir_key: tuple[int, int, int]  # its directory's st_dev, st_ino, st_mtime_ns
    sidecars: Sidecars


class OpenFileCache:
    """nginx's `open_file_cache` for `plan`, without its staleness: what a
    request-target resolved to (the file and its sidecars), revalidated on every
    use by one lstat of the file and one stat of its directory, which must match
    what they were (`_Opened.key`, `.dir_key`). A file replaced, renamed, grown or
    touched changes the first; a sidecar created, removed or replaced changes the
    directory's mtime; either sends the request through `resolve_target` again.

    Only targets that name their file literally are cached (no symlink, index or
    escape on the way: the resolved path is the root plus the target), so the
    path's own components are all the lookup depends on; a component swapped for
    a symlink after caching leads `stat` elsewhere (another inode: a miss) or to
    this very file. Bounded: emptied when `max_entries` is reached."""

    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self._entries: dict[bytes, _Opened] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, target: bytes) -> tuple[pathlib.Path, os.stat_result, Sidecars] | None:
        e = self._entries.get(target)
        if e is None:
            self.misses += 1
            return None
        try:
            st = os.stat(e.path_s, follow_symlinks=False)
            dst = os.stat(e.dir_s)
            valid = (
                (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == e.key
                and (dst.st_dev, dst.st_ino, dst.st_mtime_ns) == e.dir_key
                and stat_mod.S_ISREG(st.st_mode)
            )
        except OSError:
            valid = False
        if not valid:
            del self._entries[target]
            self.misses += 1
            return None
        self.hits += 1
        return e.path, st, e.sidecars

    def store(
        self, target: bytes, root: pathlib.Path, path: pathlib.Path, st: os.stat_result,
        sidecars: Sidecars,
    ) -> None:  # fmt: skip
        root_s, path_s = str(root), str(path)
        if path_s != (root_s if root_s != os.sep else "") + target.decode("latin-1"):
            return  # not named literally (escapes, index, symlinks): resolve every time
        dir_s = os.path.dirname(path_s)
        try:
            dst = os.stat(dir_s)
        except OSError:
            return
        if time.time_ns() - dst.st_mtime_ns < RACY_NS:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[target] = _Opened(
            path,
            path_s,
            (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns),
            dir_s,
            (dst.st_dev, dst.st_ino, dst.st_mtime_ns),
            sidecars,
        )


def plan(req: h11.Request, site: Site, cache: OpenFileCache | None = None) -> Reply:
    """The reply to a GET or HEAD. The caller owns (and must close) a FileReply's fd.
    With `cache`, a target resolved before is revalidated instead of resolved."""
    hit = cache.lookup(req.target) if cache is not None else None
    if hit is not None:
        path, st, sidecars = hit
    else:
        res = resolve_target(
            site.root,
            req.target,
            follow_symlinks=site.follow_symlinks,
            serve_dotfiles=site.serve_dotfiles,
            autoindex=site.autoindex,
        )
        if res.status is ResolveStatus.REDIRECT:
            assert res.location is not None
            return Simple(301, [(b"Location", res.location), *_cache(site)])  # as add_header does
        if res.status is ResolveStatus.DIRECTORY:
            assert res.path is not None
            return Listing(res.path, req.target.split(b"?", 1)[0], _cache(site))
        if res.status is not ResolveStatus.FILE:
            status = _RESOLVE_STATUS[res.status]
            return Simple(status, close=status == 400)
        assert res.path is not None and res.stat is not None
        path, st = res.path, res.stat
        sidecars = find_sidecars(path, st, site.root, follow_symlinks=site.follow_symlinks)
        if cache is not None:
            cache.store(req.target, site.root, path, st, sidecars)
    headers: dict[bytes, bytes] = {}
    for name, value in req.headers:  # repeated lines are one list (RFC 9110 5.3)
        headers[name] = headers[name] + b", " + value if name in headers else value
    fname = path.name
    extra: list[tuple[bytes, bytes]] = []
    if sidecars:
        extra.append((b"Vary", b"Accept-Encoding"))
        coding = choose_encoding(headers.get(b"accept-encoding"), list(sidecars))
        if coding is not None:
            path, st = sidecars[coding]
            extra.append((b"Content-Encoding", coding.encode()))
    ctype = content_type(fname, default=site.default_type).encode()
    try:
        opened = _open(path, st)
    except OSError as e:
        return Simple(403 if e.errno in (errno.EACCES, errno.EPERM) else 404)
    fd, st = opened
    try:
        return _file_reply(req, headers, site, fd, st, ctype, extra)
    except BaseException:
        os.close(fd)
        raise


def _open(path: pathlib.Path, st: os.stat_result) -> tuple[int, os.stat_result]:
    """The file and its fstat, which is the one every header is made from."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        now = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)  # replaced between resolution and open
        raise FileNotFoundError(errno.ENOENT, "file replaced", str(path))
    return fd, now


def _cache(site: Site) -> list[tuple[bytes, bytes]]:
    return [(b"Cache-Control", site.cache_control)] if site.cache_control else []


def _file_reply(
    req: h11.Request,
    headers: dict[bytes, bytes],
    site: Site,
    fd: int,
    st: os.stat_result,
    ctype: bytes,
    extra: list[tuple[bytes, bytes]],
) -> Reply:
    etag = strong_etag(st)
    validators = [(b"Last-Modified", http_date(st.st_mtime)), (b"ETag", etag)]
    verdict = evaluate(req.method, headers, etag, st.st_mtime)
    if verdict is not None:
        os.close(fd)
        if verdict == 304:  # the validators and caching fields, no body
            return Simple(304, [*validators, *_cache(site), *extra])
        return Simple(verdict, [h for h in extra if h[0] == b"Vary"])
    size = st.st_size
    accept_ranges = [(b"Accept-Ranges", b"bytes")] if site.max_ranges else []
    common = [*validators, *accept_ranges, *_cache(site), *extra]
    ranges = None
    if b"range" in headers and (
        b"if-range" not in headers or if_range_allows(headers[b"if-range"], etag, st.st_mtime)
    ):
        ranges = parse_range(headers[b"range"], size, site.max_ranges)
    if ranges == UNSATISFIABLE:
        os.close(fd)
        return Simple(416, [(b"Content-Range", b"bytes */%d" % size), *common])
    if ranges is None or isinstance(ranges, str):
        fields = [(b"Content-Type", ctype), *common]
        return FileReply(200, fields, fd, st, [(0, size - 1)] if size else [], size)
    if len(ranges) == 1:
        first, last = ranges[0]
        fields = [
            (b"Content-Type", ctype),
            (b"Content-Range", b"bytes %d-%d/%d" % (first, last, size)),
            *common,
        ]
        return FileReply(206, fields, fd, st, [(first, last)], last - first + 1)
    boundary = new_boundary()
    pieces, length = byteranges_plan(ranges, size, ctype, boundary)
    fields = [(b"Content-Type", b"multipart/byteranges; boundary=" + boundary), *common]
    return FileReply(206, fields, fd, st, pieces, length)
