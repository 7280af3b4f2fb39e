"""The HTML directory listing, as nginx's autoindex module writes it.

Theory of operation. The listing is written for a directory
`resolve_target(..., autoindex=True)` answered DIRECTORY. `render_listing()`
is pure apart from reading the directory: it returns the page as bytes and the
caller sends it (from a worker thread: it makes one stat per entry).

Reading.  The directory is opened with `resolve.open_directory()`, the same
fd-relative O_NOFOLLOW walk from the root that resolution used, and read
with os.scandir() on that descriptor, so a directory swapped for a symlink
since resolution fails (OSError) instead of listing somewhere else.  Entries
are stat()ed relative to the descriptor without following symlinks; a
symlink is followed by `resolve.locate()`, the rule resolution applies, so
one leading out of the root is hidden unless `follow_symlinks`, and a
dangling or looping one is hidden.  Only directories and regular files are
listed: FIFOs, sockets and devices are never shown (and never opened).
Dotfiles are hidden unless `serve_dotfiles`.  Names a request could never
reach are left out (`resolve.name_is_servable()`): bytes that are not
strict UTF-8, control characters (a newline would break the line layout)
and backslashes; their link would only ever answer 400, and their bytes
cannot be shown faithfully in a UTF-8 page.

Bounds.  At most MAX_ENTRIES (10 000) entries are listed and at most
MAX_SCANNED (50 000) directory entries, hidden ones included, are read; when
either stops the listing the page says it is truncated.  So a directory of
100 000 files costs at most 50 000 readdir entries and 10 000 stats: about
0.3 s and a 1.4 MB page on the development machine, or about 1 s when all
10 000 are symlinks (each is followed by realpath() and an fd walk).  Which
entries make the cut is the directory's own order (readdir), as it must be
without reading everything.

The page follows nginx 1.22's byte for byte where it can: "Index of /p/" in
the title and h1, a <pre> with one CRLF-terminated line per entry, the link
text padded to 50 characters (longer names cut to 47 plus "..>"; counted in
code points, as nginx does only under `charset utf-8`, else in bytes), the
modification time as "22-Nov-2026 03:05" in UTC, and the size in bytes
right-aligned in 19 columns ("-" for directories).  Entries are sorted as
nginx sorts them: directories first, then byte-wise (strcmp) by name, which
for UTF-8 is code-point order.  Differences, all deliberate: a doctype and
<meta charset="utf-8">, since names are UTF-8 whatever Content-Type says;
no "../" at the root, where it leads nowhere (nginx always writes one); every
byte of a link outside [A-Za-z0-9._~-] percent-encoded (so ":" cannot look
like a scheme and nginx's "./" prefix is not needed); dotfiles listed when
they are served; symlinks out of the root, special files, dangling symlinks
and unreachable names hidden (nginx lists them all); the truncation notice.

`url_path` is the path of the request-target as the client sent it
(percent-encoded, without the query).  It is decoded and normalised for the
title only; the links are relative ("name", "dir/", "../"), so they work
under whatever spelling the client used.
"""

from __future__ import annotations

import errno
import html
import os
import pathlib
import stat as stat_mod
import time
import urllib.parse
from dataclasses import dataclass
from typing import Final

from server.http.resolve import locate, name_is_servable, open_directory

__all__ = ["MAX_ENTRIES", "MAX_SCANNED", "render_listing"]

MAX_ENTRIES: Final = 10_000
MAX_SCANNED: Final = 50_000

_NAME_COLUMNS: Final = 50  # nginx's NGX_HTTP_AUTOINDEX_NAME_LEN
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")  # fmt: skip

# Percent-encoding by table lookup: b"".join(map(...)) runs in C, so no
# Python code runs per byte of a name.  RFC 3986 unreserved bytes stay.
_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
_PCT: Final = tuple(bytes([b]) if b in _UNRESERVED else b"%%%02X" % b for b in range(256))
_UNRESERVED_BYTES: Final = bytes(sorted(_UNRESERVED))

# Errors that mean an entry vanished or changed while we looked: skip it.
_SKIP_ERRNOS: Final = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES})


@dataclass(frozen=True, slots=True)
class _Entry:
    raw: bytes  # the name's bytes: sort key and link
    name: str
    is_dir: bool
    mtime: float
    size: int


def _href(raw: bytes) -> str:
    if not raw.translate(None, _UNRESERVED_BYTES):
        return raw.decode("ascii")
    return b"".join(map(_PCT.__getitem__, raw)).decode("ascii")


def _date(mtime: float) -> str:
    try:
        tm = time.gmtime(mtime)
    except (OverflowError, OSError, ValueError):
        return "??-???-???? ??:??"
    return (
        f"{tm.tm_mday:02d}-{_MONTHS[tm.tm_mon - 1]}-{tm.tm_year} {tm.tm_hour:02d}:{tm.tm_min:02d}"
    )


def _title(url_path: bytes) -> str:
    """The decoded, dot-normalised directory path, always ending in "/"."""
    path = url_path.partition(b"?")[0].partition(b"#")[0]
    text = urllib.parse.unquote_to_bytes(path).decode("utf-8", errors="replace")
    stack: list[str] = []
    for seg in text.split("/"):
        if seg == "..":
            if stack:
                stack.pop()
        elif seg not in ("", "."):
            stack.append(seg)
    return "/" + "".join(seg + "/" for seg in stack)


def _examine(
    entry: os.DirEntry[str], directory: pathlib.Path, root: pathlib.Path, follow_symlinks: bool
) -> os.stat_result | None:
    """The stat to show for `entry` (its target's, for a symlink), or None to hide it."""
    try:
        if entry.is_symlink():
            found = locate(root, directory / entry.name, follow_symlinks=follow_symlinks)
            if found is None:
                return None
            st = found[1]
        else:
            st = entry.stat(follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _SKIP_ERRNOS:
            return None
        raise
    if stat_mod.S_ISDIR(st.st_mode) or stat_mod.S_ISREG(st.st_mode):
        return st
    return None  # FIFO, socket, device: never listed


def _scan(
    fd: int,
    directory: pathlib.Path,
    root: pathlib.Path,
    *,
    serve_dotfiles: bool,
    follow_symlinks: bool,
    limit: int,
    max_scanned: int,
) -> tuple[list[_Entry], bool]:
    entries: list[_Entry] = []
    scanned = 0
    with os.scandir(fd) as it:
        for entry in it:
            scanned += 1
            if scanned > max_scanned:
                return entries, True
            raw = os.fsencode(entry.name)
            if (raw.startswith(b".") and not serve_dotfiles) or not name_is_servable(raw):
                continue
            st = _examine(entry, directory, root, follow_symlinks)
            if st is None:
                continue
            if len(entries) == limit:
                return entries, True
            is_dir = stat_mod.S_ISDIR(st.st_mode)
            entries.append(
                _Entry(raw, entry.name, is_dir, st.st_mtime, 0 if is_dir else st.st_size)
            )
    return entries, False


def _line(e: _Entry) -> str:
    shown = e.name + "/" if e.is_dir else e.name
    href = _href(e.raw) + ("/" if e.is_dir else "")
    if len(shown) > _NAME_COLUMNS:
        text, pad = html.escape(shown[: _NAME_COLUMNS - 3]) + "..&gt;", ""
    else:
        text, pad = html.escape(shown), " " * (_NAME_COLUMNS - len(shown))
    size = "-" if e.is_dir else str(e.size)
    return f'<a href="{href}">{text}</a>{pad} {_date(e.mtime)} {size:>19}\r\n'


def _check_args(
    directory: object, url_path: object, root: object, limit: object, max_scanned: object
) -> None:
    for what, value in (("directory", directory), ("root", root)):
        if not isinstance(value, pathlib.Path):
            raise TypeError(
                f"render_listing: {what} must be pathlib.Path, not {type(value).__name__}"
            )
        if not value.is_absolute():
            raise ValueError(f"render_listing: {what} must be absolute, got {str(value)!r}")
    if not isinstance(url_path, bytes):
        raise TypeError(f"render_listing: url_path must be bytes, not {type(url_path).__name__}")
    for what, value in (("limit", limit), ("max_scanned", max_scanned)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"render_listing: {what} must be a non-negative int, got {value!r}")


def render_listing(
    directory: pathlib.Path,
    url_path: bytes,
    *,
    serve_dotfiles: bool,
    follow_symlinks: bool,
    root: pathlib.Path,
    limit: int = MAX_ENTRIES,
    max_scanned: int = MAX_SCANNED,
) -> bytes:
    """The UTF-8 HTML listing of `directory` (a DIRECTORY resolution's path).

    `url_path` is the request-target's path as received (percent-encoded);
    `root` the realpath()ed document root; `serve_dotfiles` and
    `follow_symlinks` as given to resolve_target.  At most `limit` entries
    are listed and `max_scanned` directory entries read.

    Raises OSError if the directory cannot be opened or read (ENOENT, ENOTDIR
    or ELOOP when it vanished or was replaced by a symlink since resolution:
    404; EACCES: 403, as nginx answers an opendir() failure), ValueError if
    `directory` is outside `root` without `follow_symlinks`."""
    _check_args(directory, url_path, root, limit, max_scanned)
    fd = open_directory(root, directory, follow_symlinks=follow_symlinks)
    try:
        entries, truncated = _scan(
            fd,
            directory,
            root,
            serve_dotfiles=serve_dotfiles,
            follow_symlinks=follow_symlinks,
            limit=limit,
            max_scanned=max_scanned,
        )
    finally:
        os.close(fd)
    entries.sort(key=lambda e: (not e.is_dir, e.raw))

    title = _title(url_path)
    esc_title = html.escape(title)
    out = [
        "<!DOCTYPE html>\r\n<html>\r\n",
        f'<head><meta charset="utf-8"><title>Index of {esc_title}</title></head>\r\n',
        f"<body>\r\n<h1>Index of {esc_title}</h1><hr><pre>",
    ]
    if title != "/":
        out.append('<a href="../">../</a>\r\n')
    out.extend(map(_line, entries))
    out.append("</pre><hr>")
    if truncated:
        out.append(
            f"<p>Listing truncated: this directory has more entries than the {len(entries)}"
            f" shown (at most {limit} are listed and {max_scanned} read).</p>"
        )
    out.append("</body>\r\n</html>\r\n")
    return "".join(out).encode("utf-8")
