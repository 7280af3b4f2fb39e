"""Precompressed sidecars (FILE.br, FILE.gz), chosen by Accept-Encoding.

Theory of operation. Precompressed sidecars are the job of nginx's gzip_static
(and ngx_brotli's brotli_static): next to a file FILE the site may hold
FILE.br and FILE.gz, compressed once at build time, and a client whose
Accept-Encoding accepts one is sent it with Content-Encoding. Nothing is
compressed at request time.

`parse_accept_encoding()` reads RFC 9110 12.5.3:

    Accept-Encoding = #( codings [ weight ] )
    codings = content-coding / "identity" / "*"
    weight  = OWS ";" OWS "q=" qvalue
    qvalue  = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )

into {coding: q}, keys lower-case (codings are case-insensitive, 8.4.1),
"x-gzip" read as "gzip" and "x-compress" as "compress" (8.4.1.1 and
8.4.1.3).  Empty list elements are skipped (5.6.1), and so is an element
whose coding is not a token.  The RFC says nothing about a malformed weight
("q=2", "q=0.5000", "q=bad", "q = 1", "level=9"); we read it as q=0, not
acceptable.  That is the conservative reading (a client that tried to say
something about a coding may have been trying to refuse it; identity, which
we can always send, is never wrong) and it is what nginx does.  A "q"
parameter name is case-insensitive (5.6.6), empty parameters (";;") are
allowed (5.6.6), and a coding listed twice keeps its lowest q.

`choose_encoding()` picks among the sidecars that exist.  A coding's q is
its own entry's, else that of "*", else 0 (not acceptable: a coding not
mentioned is acceptable only via "*").  The best acceptable sidecar (highest
q; ties: br, then gzip, then the order given) is sent unless the client
ranks identity strictly higher, explicitly or via "*" (then we honour the
preference and send identity).  No header at all means identity: the RFC
allows any coding then, but a client that says nothing may not decode
anything (nginx does the same).  When identity is refused ("identity;q=0",
or "*;q=0" without an identity entry) and no sidecar is acceptable we still
send identity rather than 406, as RFC 9110 12.5.3 permits and nginx does.

`find_sidecars()` looks for exactly FILE.br and FILE.gz beside the resolved
(real) path of FILE, through `resolve.locate_siblings()` (`resolve.locate()`
for each, with one walk to their directory): the same containment rule
as resolution (a symlink may not lead out of the root unless
`follow_symlinks`) and the same fd-relative, O_NOFOLLOW walk; only readable
regular files count, and FIFOs, sockets, devices and directories named
FILE.gz are only ever stat()ed.  A "sidecar" that is the original file
itself (FILE.gz -> FILE) is ignored, since it would be labelled with an
encoding it does not have.  nginx differs: it appends ".gz" to the path
the URI maps to (before symlinks), so for "latest.js -> v3/app.js" it wants
"latest.js.gz" where we take "v3/app.js.gz"; and it does not check where a
sidecar's symlink leads.

Content-Type stays the original's; the caller sends Content-Encoding, the
sidecar's own validators, and "Vary: Accept-Encoding" on every response for
a file that has a sidecar.
"""

from __future__ import annotations

import os
import pathlib
import re
import stat as stat_mod
from collections.abc import Sequence
from typing import Final

from server.http.resolve import locate_siblings

__all__ = ["SIDECARS", "choose_encoding", "find_sidecars", "parse_accept_encoding"]

# Content-coding -> sidecar suffix, in order of preference on equal q.
SIDECARS: Final = {"br": ".br", "gzip": ".gz"}
_SUFFIXES: Final = tuple(SIDECARS.values())
_RANK: Final = {coding: len(SIDECARS) - i for i, coding in enumerate(SIDECARS)}

_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_QVALUE: Final = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
_ALIASES: Final = {"x-gzip": "gzip", "x-compress": "compress"}
_OWS: Final = " \t"


def _weight(params: str) -> float:
    """The q of an element's parameters (the text after its first ";")."""
    q: float | None = None
    for param in params.split(";"):
        param = param.strip(_OWS)
        if not param:
            continue
        if q is not None or param[:2].lower() != "q=" or not _QVALUE.fullmatch(param, 2):
            return 0.0  # malformed: not acceptable
        q = float(param[2:])
    return 1.0 if q is None else q


def parse_accept_encoding(value: bytes | None) -> dict[str, float]:
    """{coding: q} from an Accept-Encoding field value (several field lines
    joined with ","), keys lower-case, q in [0, 1].  None or b"" give {}.
    Never raises for any bytes."""
    if value is None:
        return {}
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"parse_accept_encoding: value must be bytes, not {type(value).__name__}")
    prefs: dict[str, float] = {}
    for element in value.decode("latin-1").split(","):
        coding, semi, params = element.partition(";")
        coding = coding.strip(_OWS)
        if not _TOKEN.fullmatch(coding):
            continue  # empty element, or not a coding at all
        coding = coding.lower()
        coding = _ALIASES.get(coding, coding)
        q = _weight(params) if semi else 1.0
        prefs[coding] = min(q, prefs.get(coding, q))
    return prefs


def choose_encoding(accept: bytes | None, available: Sequence[str]) -> str | None:
    """The content-coding of `available` (sidecar codings, e.g. ["br", "gzip"])
    to send for the Accept-Encoding value `accept`; None means identity.
    The returned string is the element of `available` itself."""
    if accept is None or not available:
        return None
    prefs = parse_accept_encoding(accept)
    star = prefs.get("*")

    def q(coding: str) -> float:
        return prefs.get(coding.lower(), 0.0 if star is None else star)

    acceptable = [c for c in available if q(c) > 0.0]
    if not acceptable:
        return None
    best = max(acceptable, key=lambda c: (q(c), _RANK.get(c.lower(), 0)))
    identity = prefs.get("identity", star)
    if identity is not None and identity > q(best):
        return None
    return best


def find_sidecars(
    path: pathlib.Path,
    st: os.stat_result,
    root: pathlib.Path,
    *,
    follow_symlinks: bool,
) -> dict[str, tuple[pathlib.Path, os.stat_result]]:
    """{coding: (real path, stat)} of the sidecars of the regular file `path`
    (a FILE resolution's path and stat), in SIDECARS order.  Each is a
    readable regular file reached without leaving `root` through a symlink
    (unless `follow_symlinks`) and is not `path` itself.  Open the returned
    path with O_NOFOLLOW and compare st_dev/st_ino, as for the original.
    Raises OSError only for server faults (EIO, EMFILE, ...)."""
    if not stat_mod.S_ISREG(st.st_mode):
        return {}
    found: dict[str, tuple[pathlib.Path, os.stat_result]] = {}
    hits = locate_siblings(str(root), str(path), _SUFFIXES, follow_symlinks=follow_symlinks)
    for coding, hit in zip(SIDECARS, hits, strict=True):
        if hit is None:
            continue
        real, sst, readable = hit
        if not (stat_mod.S_ISREG(sst.st_mode) and readable):
            continue
        if (sst.st_dev, sst.st_ino) == (st.st_dev, st.st_ino):
            continue
        found[coding] = (pathlib.Path(real), sst)
    return found
