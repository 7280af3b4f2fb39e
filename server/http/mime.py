"""Content-Type from a file name.

Theory of operation. The way nginx's `types {}` block does it: by the last
extension, case-insensitively, with one default for everything else. The table
is the standard library's built-in one, taken from a private
`mimetypes.MimeTypes` instance that reads no files, so the answer is the same
on every host whatever its /etc/mime.types says (constructing the instance
lets `mimetypes` initialise its own global database, which we never consult).
Strict (IANA) entries win over the stdlib's "common" ones, and a short list of
modern types below wins over both.

Unlike `mimetypes.guess_type()`, this never reports an encoding: "a.tar.gz"
is application/gzip, because a static server sends the bytes as they are and
never adds a Content-Encoding of its own.  Names are not parsed as URLs
either, so "data:x.txt" is just a file name.

Textual types get "; charset=utf-8": everything under text/ and the
JSON/JavaScript/SVG/manifest types listed in `_CHARSET_TYPES`.
"""

from __future__ import annotations

import functools
import mimetypes
import os
import pathlib
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = ["content_type"]

# Modern types missing from, or spelled differently in, the stdlib table.
_MODERN: Final[Mapping[str, str]] = {
    ".js": "text/javascript",  # RFC 9239 obsoletes application/javascript
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".woff2": "font/woff2",  # RFC 8081
    ".woff": "font/woff",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".webmanifest": "application/manifest+json",
    ".md": "text/markdown",  # RFC 7763
    ".m3u8": "application/vnd.apple.mpegurl",  # RFC 8216
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".opus": "audio/ogg",  # RFC 7845 9: Opus files are Ogg; audio/opus is for RTP
    ".ico": "image/x-icon",  # what nginx and every browser use
    ".gz": "application/gzip",  # RFC 6713; no Content-Encoding, see above
    ".tgz": "application/gzip",
    ".zst": "application/zstd",  # RFC 8878
}

_CHARSET_TYPES: Final = frozenset(
    {
        "application/javascript",
        "application/json",
        "image/svg+xml",
        "application/manifest+json",
    }
)

# RFC 9110 8.3.1: type "/" subtype, then optional parameters of visible ASCII.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE: Final = re.compile(rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[\x20-\x7e\t]*)?")


def _build_table() -> Mapping[str, str]:
    db = mimetypes.MimeTypes(filenames=(), strict=False)
    table: dict[str, str] = {}
    for strict in (False, True):  # strict entries overwrite the "common" ones
        for ext, mtype in db.types_map[strict].items():
            table[ext.lower()] = mtype
    table.update(_MODERN)
    return MappingProxyType(table)


_TABLE: Final = _build_table()


def _with_charset(mtype: str) -> str:
    if ";" not in mtype and (mtype.startswith("text/") or mtype in _CHARSET_TYPES):
        return mtype + "; charset=utf-8"
    return mtype


def content_type(path: pathlib.PurePath | str, default: str = "application/octet-stream") -> str:
    """Content-Type for `path`, chosen by its last extension (case-insensitive).

    `default` is used when the extension is unknown or absent (".bashrc" has
    none).  A textual result without parameters gets "; charset=utf-8",
    `default` included; a `default` that already has parameters is returned
    unchanged."""
    if isinstance(path, str) and os.sep not in path:
        suffix = _suffix(path)  # a bare name (the hot path): PurePath(path).suffix
    elif isinstance(path, str | pathlib.PurePath):
        suffix = pathlib.PurePath(path).suffix
    else:
        raise TypeError(
            f"content_type: path must be str or pathlib.Path, not {type(path).__name__}"
        )
    if not isinstance(default, str):
        raise TypeError(f"content_type: default must be str, not {type(default).__name__}")
    return _lookup(suffix.lower(), _check_default(default))


def _suffix(name: str) -> str:
    """PurePath(name).suffix of a name without a separator: from its last dot,
    unless that dot leads or ends the name (".bashrc", "a.", "..")."""
    i = name.rfind(".")
    return name[i:] if 0 < i < len(name) - 1 else ""


@functools.lru_cache(maxsize=64)
def _check_default(default: str) -> str:
    """`default`, checked once per distinct value (the check is a pure function)."""
    if not _MEDIA_TYPE.fullmatch(default):
        raise ValueError(
            f"content_type: default must be a media type like 'type/subtype', got {default!r}"
        )
    return default


@functools.lru_cache(maxsize=1024)
def _lookup(suffix: str, default: str) -> str:
    """The answer for a lower-case suffix: a pure function of the fixed table."""
    return _with_charset(_TABLE.get(suffix, default))
