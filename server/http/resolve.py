"""Resolving a request-target to a regular file under the document root.

Theory of operation. Map a raw HTTP request-target onto a regular file under a
document root, the job nginx's static module does with
ngx_http_parse_complex_uri() and ngx_open_cached_file(), but refusing more.
`resolve_target()` never opens the file it finds and never raises for anything
a client can send: every outcome is a `Resolution` whose `ResolveStatus` the
caller turns into a response. Only server faults (EIO, EMFILE, ENOMEM, ...)
escape as OSError.

Four stages, each of which can only narrow what the next one sees:

 1. Syntax.  Only origin-form ("/" ...) is accepted.  The raw target must be
    visible ASCII (RFC 9112 3.2 allows nothing else, and it is what lets a
    redirect echo the client's own bytes in a Location header safely).  A
    "#fragment" is discarded, as nginx does; the "?query" is split off and
    kept verbatim for redirects.
 2. Decoding.  The path is percent-decoded exactly once, segment by segment
    (so "%252e" names a file called "%2e", never a dot segment).  Malformed
    escapes, "%2F" inside a segment (nginx would decode it to "/"; we refuse
    it rather than let two spellings name one path), bytes that are not
    strict UTF-8 (overlong forms such as "%c0%ae", surrogates), NUL,
    backslash and any control character (Unicode category Cc) are all
    BAD_REQUEST.
 3. Normalisation (RFC 3986 5.2.4 on decoded segments).  Empty and "."
    segments vanish, ".." pops one, and a ".." with nothing left to pop is
    BAD_REQUEST: the lexical path can never leave the root.  A path whose
    last segment is "", "." or ".." names a directory ("/docs/." is
    "/docs/").  Any remaining segment starting with "." is a dotfile and is
    NOT_FOUND unless `serve_dotfiles`.
 4. The filesystem.  os.path.realpath() resolves symlinks; the result must
    lie inside the root (os.path.commonpath, not a string prefix, so
    "/srv/www-old" is not inside "/srv/www") unless `follow_symlinks` allows
    symlinks to lead out.  Then, to close the window between realpath() and
    the stat the caller relies on, the real path is walked again one
    component at a time from a directory fd with O_NOFOLLOW (O_PATH where
    the platform has it, so a directory with search but no read permission
    still works and nothing but directories is ever opened), and the last
    component is fstatat()ed with AT_SYMLINK_NOFOLLOW.  If a symlink was
    swapped in meanwhile the walk fails and the answer is NOT_FOUND.  FIFOs,
    sockets and devices are only ever stat()ed, never opened.

Callers open `Resolution.path` themselves (it contains no symlinks, so
O_NOFOLLOW is safe) and should compare st_dev/st_ino of the opened file with
`Resolution.stat` to detect a file replaced after resolution.

With `autoindex`, a directory named with its trailing "/" that has no usable
index (missing, not a regular file, or a symlink out of the root) is
DIRECTORY instead of NOT_FOUND, or FORBIDDEN if this process may not read it
(nginx's opendir() EACCES is a 403 too).  `open_directory()` opens such a
directory for listing by the same fd-relative, O_NOFOLLOW walk, and
`locate()` applies stage 4 to a filesystem path (precompressed sidecars use
it), so nothing that lists or serves a file trusts a path string alone.
`name_is_servable()` says whether a directory entry's name could ever be
asked for: the listing leaves out names whose link would be refused.

Deliberate differences from nginx: %2F is refused rather than decoded; a
directory without its index is NOT_FOUND (nginx says 403) unless autoindex
is on; the Location of a directory redirect collapses a leading "//" to "/"
so that "//evil.example" can never become a scheme-relative redirect.
"""

from __future__ import annotations

import enum
import errno
import os
import pathlib
import re
import stat as stat_mod
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "Resolution",
    "ResolveStatus",
    "locate",
    "locate_siblings",
    "locate_str",
    "name_is_servable",
    "open_directory",
    "resolve_target",
]


class ResolveStatus(enum.Enum):
    FILE = "file"  # 200: Resolution.path and .stat describe a readable regular file
    REDIRECT = "redirect"  # 301: directory named without its trailing slash
    BAD_REQUEST = "bad_request"  # 400: malformed or hostile target
    NOT_FOUND = "not_found"  # 404: missing, hidden, not a regular file, or outside root
    FORBIDDEN = "forbidden"  # 403: exists but the server may not read it
    DIRECTORY = "directory"  # 200 listing: autoindex on, directory without an index


@dataclass(frozen=True, slots=True)
class Resolution:
    status: ResolveStatus
    path: pathlib.Path | None = None
    stat: os.stat_result | None = None
    location: bytes | None = None
    reason: str = ""


# RFC 9112 3.2: a request-target is visible ASCII only.
_NOT_VCHAR: Final = re.compile(rb"[^\x21-\x7e]")
_BAD_ESCAPE: Final = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# The common target that stages 1-3 leave as it is (see resolve_target).
_PLAIN_TARGET: Final = re.compile(rb"(?:/[0-9A-Za-z_~+,=@-][0-9A-Za-z._~+,=@-]*)+")
# Unicode category Cc is exactly C0, DEL and C1 (checked against unicodedata in the tests).
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")

# Errors that mean "no such file as far as the client is concerned".
_MISSING_ERRNOS: Final = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL}
)
_DENIED_ERRNOS: Final = frozenset({errno.EACCES, errno.EPERM})

# Directory fds used for the walk: O_PATH needs only search permission and
# never runs a driver's open routine; without it, fall back to O_RDONLY.
_O_DIRWALK: Final[int] = (
    (getattr(os, "O_PATH", 0) or os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
)


def _bad(reason: str) -> Resolution:
    return Resolution(ResolveStatus.BAD_REQUEST, reason=reason)


def _not_found(reason: str) -> Resolution:
    return Resolution(ResolveStatus.NOT_FOUND, reason=reason)


def _forbidden(reason: str) -> Resolution:
    return Resolution(ResolveStatus.FORBIDDEN, reason=reason)


def _os_error(exc: OSError, what: str) -> Resolution:
    """Turn a client-visible filesystem error into a Resolution; re-raise the rest."""
    if exc.errno in _MISSING_ERRNOS:
        return _not_found(f"{what}: {errno.errorcode.get(exc.errno or 0, exc.errno)}")
    if exc.errno in _DENIED_ERRNOS:
        return _forbidden(f"{what}: permission denied")
    raise exc


def _segment_fault(seg: bytes) -> str | None:
    """Why the decoded segment `seg` can never name a file we serve, or None."""
    if b"/" in seg:
        return "encoded slash in path segment"
    if b"\\" in seg:
        return "backslash in path"
    try:
        text = seg.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        return "path is not valid UTF-8"
    if _CONTROL.search(text):
        return "control character in path"
    return None


def _decode_segments(raw_path: bytes) -> list[str] | Resolution:
    """Percent-decode each segment of `raw_path` once; BAD_REQUEST on any misuse."""
    if _BAD_ESCAPE.search(raw_path):
        return _bad("malformed percent-escape")
    out: list[str] = []
    for raw_seg in raw_path.split(b"/")[1:]:
        seg = urllib.parse.unquote_to_bytes(raw_seg) if b"%" in raw_seg else raw_seg
        fault = _segment_fault(seg)
        if fault is not None:
            return _bad(fault)
        out.append(seg.decode("utf-8"))
    return out


def name_is_servable(name: bytes) -> bool:
    """Whether a directory entry called `name` (raw bytes, as os.fsencode gives)
    could be requested at all: a request naming it must not be BAD_REQUEST.

    False for "", ".", "..", and names containing "/", a backslash, a control
    character or bytes that are not strict UTF-8.  Dotfiles are servable here;
    hiding them is policy, not syntax."""
    return name not in (b"", b".", b"..") and _segment_fault(name) is None


def _normalise(segments: list[str]) -> tuple[list[str], bool] | Resolution:
    """RFC 3986 remove_dot_segments on decoded segments.

    Returns the remaining segments and whether the path names a directory
    (last segment empty, "." or "..")."""
    stack: list[str] = []
    for seg in segments:
        if seg in ("", "."):
            continue
        if seg == "..":
            if not stack:
                return _bad("path climbs above the document root")
            stack.pop()
            continue
        stack.append(seg)
    wants_dir = not segments or segments[-1] in ("", ".", "..")
    return stack, wants_dir


def _inside(root: str, real: str) -> bool:
    return os.path.commonpath((root, real)) == root


def _open_dirs(base: str, names: list[str]) -> int:
    """An O_PATH fd of the directory `names` lead to below directory `base`,
    walked one component at a time with O_NOFOLLOW. Raises OSError from the
    first failing step (a symlink on the way fails with ELOOP or ENOTDIR)."""
    fd = os.open(base, _O_DIRWALK)
    try:
        for name in names:
            nfd = os.open(name, _O_DIRWALK, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _stat_entry(fd: int, name: str) -> tuple[os.stat_result, bool]:
    """The lstat of `name` in directory `fd` and whether a regular file is readable."""
    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    readable = os.access(name, os.R_OK, dir_fd=fd) if stat_mod.S_ISREG(st.st_mode) else True
    return st, readable


def _walk(base: str, components: list[str]) -> tuple[os.stat_result, bool]:
    """Walk `components` below directory `base` without following symlinks.

    Returns the lstat of the last component (of `base` itself if there are
    none) and whether it is readable by this process.  Raises OSError from the
    first failing step; a component that is a symlink fails with ELOOP or
    ENOTDIR (intermediate) or comes back as S_ISLNK (last)."""
    fd = _open_dirs(base, components[:-1])
    try:
        if not components:
            return os.fstat(fd), True
        return _stat_entry(fd, components[-1])
    finally:
        os.close(fd)


def _components(root: str, real: str, follow_symlinks: bool) -> tuple[str, list[str]] | None:
    """Where the fd walk to the real path `real` starts and what it descends
    through; None if `real` is outside `root` and symlinks may not lead out."""
    if _inside(root, real):
        rel = os.path.relpath(real, root)
        return root, ([] if rel == "." else rel.split(os.sep))
    if follow_symlinks:
        return os.sep, [c for c in real.split(os.sep) if c]
    return None


def _lexical_components(root: str, lexical: str) -> list[str] | None:
    """The components of the absolute path `lexical` below `root`, if it is a
    normalised path inside it; None if only the full path knows what it names."""
    if (
        "//" in lexical
        or "/./" in lexical
        or "/../" in lexical
        or lexical.endswith(("/.", "/..", "/"))
    ):
        return None
    if lexical == root:
        return []
    if lexical.startswith(root) and lexical[len(root)] == os.sep:
        return lexical[len(root) + 1 :].split(os.sep)
    return None


def _open_lexical_dir(root: str, components: list[str]) -> int | None:
    """`_open_dirs` for the fast path: None if the walk fails (a symlink on the
    way, or anything else), and the caller takes the full path."""
    try:
        return _open_dirs(root, components)
    except OSError:
        return None


def _walk_lexical(root: str, lexical: str) -> tuple[os.stat_result, bool] | Resolution | None:
    """The fast path of `_locate`: walk the lexical path itself from `root`.

    When no component is a symlink, realpath(lexical) is `lexical`, and this
    walk is exactly the one `_locate` would make after realpath(), minus the
    lstat() of every component realpath() makes first. None when the walk met
    a symlink or anything else unusual: the caller then takes the full path.
    A missing last component below symlink-free directories is definitive."""
    components = _lexical_components(root, lexical)
    if components is None:
        return None
    fd = _open_lexical_dir(root, components[:-1])
    if fd is None:
        return None
    try:
        if not components:
            return os.fstat(fd), True
        try:
            st, readable = _stat_entry(fd, components[-1])
        except FileNotFoundError:
            return _not_found("walk: ENOENT")
        if stat_mod.S_ISLNK(st.st_mode):
            return None
        return st, readable
    except OSError:
        return None
    finally:
        os.close(fd)


def locate_siblings(
    root: str, path: str, suffixes: Sequence[str], *, follow_symlinks: bool = False
) -> list[tuple[str, os.stat_result, bool] | None]:
    """[locate_str(root, path + suffix) for each suffix], for names beside `path`
    (such as "FILE.br" and "FILE.gz"), with one walk to their directory when
    the lexical fast path applies: the answers are the same, minus a walk per
    name. A name that is a symlink, or that the walk cannot stat, gets the
    full `locate_str`."""
    if any(os.sep in suffix or not suffix for suffix in suffixes):
        raise ValueError(f"locate_siblings: suffixes must be non-empty names, got {suffixes!r}")
    components = _lexical_components(root, path)
    # A lexically normal `path` inside `root` makes every `path + suffix` one
    # too, in the same directory; `root` itself has no siblings inside it.
    fd = None if not components else _open_lexical_dir(root, components[:-1])
    if fd is None:
        return [locate_str(root, path + s, follow_symlinks=follow_symlinks) for s in suffixes]
    out: list[tuple[str, os.stat_result, bool] | None] = []
    try:
        assert components
        for suffix in suffixes:
            try:
                st, readable = _stat_entry(fd, components[-1] + suffix)
            except FileNotFoundError:
                out.append(None)  # definitive below symlink-free directories
                continue
            except OSError:
                st = None
            if st is None or stat_mod.S_ISLNK(st.st_mode):
                out.append(locate_str(root, path + suffix, follow_symlinks=follow_symlinks))
                continue
            out.append((path + suffix, st, readable))
    finally:
        os.close(fd)
    return out


def _locate(
    root: str, lexical: str, follow_symlinks: bool
) -> tuple[str, os.stat_result, bool] | Resolution:
    """Find the object the absolute path `lexical` names: (real path, lstat, readable)."""
    fast = _walk_lexical(root, lexical)
    if isinstance(fast, Resolution):
        return fast
    if fast is not None:
        return lexical, fast[0], fast[1]
    try:
        real = os.path.realpath(lexical)
    except OSError as exc:
        return _os_error(exc, "realpath")
    walk = _components(root, real, follow_symlinks)
    if walk is None:
        return _not_found("symlink leads outside the document root")
    base, components = walk
    try:
        st, readable = _walk(base, components)
    except OSError as exc:
        return _os_error(exc, "walk")
    if stat_mod.S_ISLNK(st.st_mode):
        return _not_found("path changed during resolution")
    return real, st, readable


def _listing(real: str, st: os.stat_result) -> Resolution:
    if not os.access(real, os.R_OK):
        return _forbidden("directory is not readable")
    return Resolution(ResolveStatus.DIRECTORY, path=pathlib.Path(real), stat=st, reason="listing")


def locate(
    root: pathlib.Path, path: pathlib.Path, *, follow_symlinks: bool = False
) -> tuple[pathlib.Path, os.stat_result, bool] | None:
    """Stage 4 alone, for a filesystem path the server made up itself (such as
    a sidecar "FILE.gz"): its realpath, lstat from the fd-relative walk, and
    whether it is readable; None if it is missing, refused (EACCES), a
    symlink out of `root` (unless `follow_symlinks`) or changed under us.

    The result may be any kind of object: check S_ISREG before opening, and
    open only the returned path.  Raises OSError for server faults."""
    found = locate_str(str(root), str(path), follow_symlinks=follow_symlinks)
    if found is None:
        return None
    real, st, readable = found
    return pathlib.Path(real), st, readable


def locate_str(
    root: str, path: str, *, follow_symlinks: bool = False
) -> tuple[str, os.stat_result, bool] | None:
    """`locate` on path strings, for the hot path (no pathlib objects)."""
    found = _locate(root, path, follow_symlinks)
    if isinstance(found, Resolution):
        return None
    return found


def open_directory(root: pathlib.Path, directory: pathlib.Path, *, follow_symlinks: bool) -> int:
    """Open `directory` (a DIRECTORY resolution's real path) for reading.

    Walks from `root` (from "/" for a directory outside it, allowed only with
    `follow_symlinks`) one component at a time with O_NOFOLLOW, like
    resolve_target, so a component swapped for a symlink since resolution
    fails with ELOOP or ENOTDIR instead of leading elsewhere.  Returns an
    O_RDONLY | O_DIRECTORY descriptor the caller must close.  Raises
    ValueError if `directory` is not absolute and real, or is outside `root`
    without `follow_symlinks`; OSError (ENOENT, ENOTDIR, ELOOP, EACCES, ...)
    if it cannot be opened."""
    real = str(directory)
    if not directory.is_absolute() or os.path.normpath(real) != real:
        raise ValueError(f"open_directory: {real!r} is not an absolute, normalised path")
    walk = _components(str(root), real, follow_symlinks)
    if walk is None:
        raise ValueError(f"open_directory: {real!r} is outside the document root")
    base, components = walk
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    if not components:
        return os.open(base, flags)
    fd = _open_dirs(base, components[:-1])
    try:
        return os.open(components[-1], flags, dir_fd=fd)
    finally:
        os.close(fd)


def _check_args(root: object, target: object, index: object) -> None:
    if not isinstance(root, pathlib.Path):
        raise TypeError(f"resolve_target: root must be pathlib.Path, not {type(root).__name__}")
    if not root.is_absolute():
        raise ValueError(f"resolve_target: root must be absolute, got {str(root)!r}")
    if not isinstance(target, bytes):
        raise TypeError(f"resolve_target: target must be bytes, not {type(target).__name__}")
    if not isinstance(index, str):
        raise TypeError(f"resolve_target: index must be str, not {type(index).__name__}")
    if index in ("", ".", "..") or "/" in index or "\0" in index:
        raise ValueError(f"resolve_target: index must be a single file name, got {index!r}")


def resolve_target(
    root: pathlib.Path,
    target: bytes,
    *,
    follow_symlinks: bool = False,
    serve_dotfiles: bool = False,
    index: str = "index.html",
    autoindex: bool = False,
) -> Resolution:
    """Resolve the raw request-target `target` under the document root `root`.

    `root` must be absolute and already realpath()ed.  `follow_symlinks=False`
    still follows symlinks that stay inside `root`; True also lets them lead
    out of it (the lexical path never can).  The outcomes:

    FILE         path = realpath of a regular file (inside root unless
                 follow_symlinks let a symlink lead out), stat = its lstat
                 from the final fd-relative walk.  A directory request ending
                 in "/" yields its `index` file this way.
    REDIRECT     the target names a directory without a trailing "/";
                 location = the client's raw path + "/" + the raw "?query"
                 (leading slashes collapsed to one).
    BAD_REQUEST  not origin-form, non-VCHAR bytes, malformed or slash
                 escapes, invalid UTF-8, NUL, backslash, control characters,
                 ".." above the root.
    NOT_FOUND    missing, dotfile (unless serve_dotfiles), symlink out of the
                 root (unless follow_symlinks), not a regular file, a file
                 named with a trailing "/", a directory without `index`,
                 ENOTDIR, ENAMETOOLONG, ELOOP.
    FORBIDDEN    EACCES/EPERM on the way, or the file is not readable
                 (os.access R_OK); with autoindex, a directory to list that
                 is not readable.
    DIRECTORY    only with `autoindex`: the target names a directory with a
                 trailing "/" (or "." / "..") and its `index` is missing, not
                 a regular file or out of bounds; path = the directory's
                 realpath, stat = its stat from the fd-relative walk.  List
                 it with `open_directory()`, never by path.

    Raises TypeError/ValueError on misuse, and OSError for server-side
    failures (EIO, EMFILE, ENOMEM, ...) that no client request explains.
    """
    _check_args(root, target, index)
    root_s = str(root)

    if _PLAIN_TARGET.fullmatch(target):
        # Stages 1-3 have nothing to do: visible ASCII without "%", "?" or "#",
        # non-empty segments none of which starts with "." (so no dot segment
        # and no dotfile), naming no directory. The lexical path is the target.
        raw_path, has_query, query = target, b"", b""
        lexical = target.decode("ascii") if root_s == os.sep else root_s + target.decode("ascii")
        wants_dir = False
    else:
        # 1. Syntax.
        if not target.startswith(b"/"):
            return _bad("request-target is not origin-form")
        if _NOT_VCHAR.search(target):
            return _bad("request-target contains non-visible-ASCII bytes")
        target = target.partition(b"#")[0]
        raw_path, has_query, query = target.partition(b"?")

        # 2. Decoding, 3. normalisation.
        decoded = _decode_segments(raw_path)
        if isinstance(decoded, Resolution):
            return decoded
        normal = _normalise(decoded)
        if isinstance(normal, Resolution):
            return normal
        segments, wants_dir = normal
        if not serve_dotfiles and any(seg.startswith(".") for seg in segments):
            return _not_found("dotfile")
        lexical = os.path.join(root_s, *segments)

    # 4. The filesystem.
    found = _locate(root_s, lexical, follow_symlinks)
    if isinstance(found, Resolution):
        return found
    real, st, readable = found

    if stat_mod.S_ISDIR(st.st_mode):
        if not wants_dir:
            location = b"/" + raw_path.lstrip(b"/") + b"/"
            if has_query:
                location += b"?" + query
            return Resolution(ResolveStatus.REDIRECT, location=location, reason="directory")
        index_found = _locate(root_s, os.path.join(real, index), follow_symlinks)
        if isinstance(index_found, Resolution):
            if index_found.status is not ResolveStatus.NOT_FOUND:
                return index_found
            return _listing(real, st) if autoindex else _not_found(f"directory has no {index}")
        if not stat_mod.S_ISREG(index_found[1].st_mode):
            if autoindex:
                return _listing(real, st)
            return _not_found(f"{index} is not a regular file")
        real, st, readable = index_found
    elif not stat_mod.S_ISREG(st.st_mode):
        return _not_found("not a regular file")
    elif wants_dir:
        return _not_found("file named as a directory")

    if not readable:
        return _forbidden("file is not readable")
    return Resolution(ResolveStatus.FILE, path=pathlib.Path(real), stat=st, reason="file")
