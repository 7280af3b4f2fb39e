"""server.http.encoding: Accept-Encoding (RFC 9110 12.5.3) and precompressed sidecars."""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.http.encoding import SIDECARS, choose_encoding, find_sidecars, parse_accept_encoding
from server.http.resolve import ResolveStatus, resolve_target
from tests.privdrop import as_unprivileged

# --- parse_accept_encoding ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, {}),
        (b"", {}),
        (b" , ,\t,", {}),  # empty list elements are allowed and mean nothing
        (b"gzip", {"gzip": 1.0}),
        (b"GZIP, Br", {"gzip": 1.0, "br": 1.0}),
        (b"gzip, deflate, br, zstd", {"gzip": 1.0, "deflate": 1.0, "br": 1.0, "zstd": 1.0}),
        (b"br;q=1.0, gzip;q=0.8, *;q=0.1", {"br": 1.0, "gzip": 0.8, "*": 0.1}),
        (b"gzip;q=0", {"gzip": 0.0}),
        (b"gzip;q=0.", {"gzip": 0.0}),
        (b"gzip;q=0.001", {"gzip": 0.001}),
        (b"gzip;q=0.999", {"gzip": 0.999}),
        (b"gzip;q=1", {"gzip": 1.0}),
        (b"gzip;q=1.", {"gzip": 1.0}),
        (b"gzip;q=1.000", {"gzip": 1.0}),
        (b"gzip;Q=0.5", {"gzip": 0.5}),  # parameter names are case-insensitive
        (b"gzip ; q=0.5", {"gzip": 0.5}),  # OWS around ";"
        (b"gzip\t;\tq=0.5 ,br", {"gzip": 0.5, "br": 1.0}),
        (b"gzip;;q=0.5", {"gzip": 0.5}),  # empty parameters (RFC 9110 5.6.6)
        (b"gzip;", {"gzip": 1.0}),
        (b"identity;q=0, *;q=0", {"identity": 0.0, "*": 0.0}),
        (b"x-gzip", {"gzip": 1.0}),  # RFC 9110 8.4.1.3
        (b"X-Compress;q=0.3", {"compress": 0.3}),
        # A malformed weight makes that coding not acceptable (as nginx does).
        (b"gzip;q=bad", {"gzip": 0.0}),
        (b"gzip;q=1.5", {"gzip": 0.0}),
        (b"gzip;q=2", {"gzip": 0.0}),
        (b"gzip;q=-1", {"gzip": 0.0}),
        (b"gzip;q=0.0001", {"gzip": 0.0}),
        (b"gzip;q=1.0001", {"gzip": 0.0}),
        (b"gzip;q=.5", {"gzip": 0.0}),
        (b"gzip;q= 0.5", {"gzip": 0.0}),
        (b"gzip;q = 0.5", {"gzip": 0.0}),
        (b"gzip;q=", {"gzip": 0.0}),
        (b'gzip;q="0.5"', {"gzip": 0.0}),
        (b"gzip;level=9", {"gzip": 0.0}),
        (b"gzip;q=0.5;q=1", {"gzip": 0.0}),
        (b"gzip;q=0.5;x=1", {"gzip": 0.0}),
        (b"gzip;q=nan, br;q=inf, zstd;q=1e0", {"gzip": 0.0, "br": 0.0, "zstd": 0.0}),
        # Elements that are not codings at all are ignored.
        (b"g zip, br", {"br": 1.0}),
        (b"gz/ip, br", {"br": 1.0}),
        (b";q=1, br", {"br": 1.0}),
        (b"\xe9gzip, br", {"br": 1.0}),
        (b'"gzip", br', {"br": 1.0}),
        # A coding listed twice keeps its lowest q.
        (b"gzip, gzip;q=0", {"gzip": 0.0}),
        (b"gzip;q=0.2, GZIP;q=0.9", {"gzip": 0.2}),
        (b"x-gzip;q=0.1, gzip", {"gzip": 0.1}),
    ],
)
def test_parse(value: bytes | None, expected: dict[str, float]) -> None:
    assert parse_accept_encoding(value) == expected


def test_parse_rejects_str() -> None:
    with pytest.raises(TypeError, match="must be bytes, not str"):
        parse_accept_encoding("gzip")  # type: ignore[arg-type]


_TOKENS = [b"gzip", b"GZip", b"br", b"x-gzip", b"identity", b"*", b"zstd", b"", b" ", b"\t"]
_PIECES = [b";", b",", b"q=", b"Q=", b"0", b"1", b".", b"5", b"000", b" ", b"=", b'"', b"\xff"]
_headers = st.one_of(
    st.binary(max_size=80),
    st.lists(st.sampled_from(_TOKENS + _PIECES), max_size=24).map(b"".join),
)


@given(value=_headers)
def test_parse_never_raises(value: bytes) -> None:
    prefs = parse_accept_encoding(value)
    for coding, q in prefs.items():
        assert coding == coding.lower()
        assert re.fullmatch(r"[!#$%&'*+.^_`|~0-9a-z-]+", coding)
        assert isinstance(q, float) and 0.0 <= q <= 1.0
    chosen = choose_encoding(value, ["br", "gzip"])
    assert chosen in (None, "br", "gzip")
    if chosen is not None:
        q = prefs.get(chosen, prefs.get("*", 0.0))
        assert q > 0.0


# --- choose_encoding ---------------------------------------------------------

BOTH = ["br", "gzip"]


@pytest.mark.parametrize(
    ("accept", "available", "expected"),
    [
        # No header: identity, though the RFC would allow anything (nginx does the same).
        (None, BOTH, None),
        (b"", BOTH, None),  # empty value: no coding wanted
        (b"gzip, br", [], None),
        (b"gzip", BOTH, "gzip"),
        (b"br", BOTH, "br"),
        (b"gzip, br", BOTH, "br"),  # tie: br before gzip, whatever the header order
        (b"gzip, deflate, br, zstd", BOTH, "br"),
        (b"gzip, br", ["gzip", "br"], "br"),
        (b"gzip, br", ["gzip"], "gzip"),
        (b"br", ["gzip"], None),
        (b"gzip;q=1, br;q=0.9", BOTH, "gzip"),  # highest q wins over our preference
        (b"gzip;q=0.5, br;q=0.5", BOTH, "br"),
        (b"br;q=0, gzip", BOTH, "gzip"),
        (b"br;q=0, gzip;q=0", BOTH, None),
        (b"GZIP", ["gzip"], "gzip"),
        (b"x-gzip", BOTH, "gzip"),
        # "*" covers what is not mentioned, never what is.
        (b"*", BOTH, "br"),
        (b"*", ["gzip"], "gzip"),
        (b"*;q=0.5, gzip", BOTH, "gzip"),
        (b"*;q=0, gzip;q=0.1", BOTH, "gzip"),
        (b"*, br;q=0", BOTH, "gzip"),
        (b"*;q=0", BOTH, None),  # identity refused too, but identity is all we have
        (b"deflate", BOTH, None),
        # Identity competes when the client ranks it.
        (b"identity", BOTH, None),
        (b"gzip;q=0.5, identity", BOTH, None),
        (b"gzip, identity;q=0.5", BOTH, "gzip"),
        (b"gzip;q=0.5, identity;q=0.5", BOTH, "gzip"),  # tie: the smaller representation
        (b"gzip;q=0.5, *", BOTH, "br"),  # br via "*" at 1
        (b"gzip;q=0.5, *;q=0.8", ["gzip"], None),  # identity via "*" at 0.8 > 0.5
        (b"gzip;q=0.5", BOTH, "gzip"),  # identity not mentioned: it does not compete
        # Identity refused and nothing acceptable: still identity (nginx too), not 406.
        (b"identity;q=0", BOTH, None),
        (b"identity;q=0, deflate", BOTH, None),
        (b"identity;q=0, gzip", BOTH, "gzip"),
        # Malformed weights refuse their coding.
        (b"gzip;q=bad", BOTH, None),
        (b"br;q=2, gzip", BOTH, "gzip"),
        (b"gzip;q=1.5, *", BOTH, "br"),
    ],
)
def test_choose(accept: bytes | None, available: list[str], expected: str | None) -> None:
    assert choose_encoding(accept, available) == expected


def test_choose_returns_the_callers_string() -> None:
    available = ("GZip",)
    chosen = choose_encoding(b"gzip", available)
    assert chosen is available[0]


# --- find_sidecars -----------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """root/ with sidecars of every kind, next to outside/.

    both.txt{,.br,.gz}    gz.js{,.gz}    br.css{,.br}    none.txt
    dirside.txt + dirside.txt.gz/ (a directory)   fifo.txt + fifo.txt.gz (FIFO)
    sock.txt + sock.txt.br (socket, if the path fits)
    linkin.txt + linkin.txt.gz -> real/linkin.gz     linkout.txt + linkout.txt.gz -> ../outside/x.gz
    self.txt + self.txt.gz -> self.txt    dangling.txt + dangling.txt.br -> nowhere
    loop.txt + loop.txt.gz -> loop.txt.gz
    odd.txt + odd.txt.GZ, odd.gz, odd.txt.gzip, odd.txt.br.gz, .odd.txt.gz
    alias.txt -> both.txt   (sidecars are the real file's)
    """
    base = pathlib.Path(os.path.realpath(tmp_path_factory.mktemp("sidecars")))
    root, outside = base / "root", base / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (outside / "x.gz").write_bytes(b"outside gz")
    files = {
        "both.txt": b"both",
        "both.txt.br": b"BR",
        "both.txt.gz": b"GZ",
        "gz.js": b"js",
        "gz.js.gz": b"GZ",
        "br.css": b"css",
        "br.css.br": b"BR",
        "none.txt": b"none",
        "dirside.txt": b"d",
        "fifo.txt": b"f",
        "sock.txt": b"s",
        "linkin.txt": b"l",
        "real/linkin.gz": b"GZ",
        "linkout.txt": b"o",
        "self.txt": b"self",
        "dangling.txt": b"d",
        "loop.txt": b"l",
        "odd.txt": b"odd",
        "odd.txt.GZ": b"x",
        "odd.gz": b"x",
        "odd.txt.gzip": b"x",
        "odd.txt.br.gz": b"x",
        ".odd.txt.gz": b"x",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "dirside.txt.gz").mkdir()
    os.mkfifo(root / "fifo.txt.gz")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock, contextlib.suppress(OSError):
        sock.bind(str(root / "sock.txt.br"))
    links = {
        "linkin.txt.gz": "real/linkin.gz",
        "linkout.txt.gz": "../outside/x.gz",
        "self.txt.gz": "self.txt",
        "dangling.txt.br": "nowhere",
        "loop.txt.gz": "loop.txt.gz",
        "alias.txt": "both.txt",
    }
    for name, dest in links.items():
        os.symlink(dest, root / name)
    yield root


def _sidecars(root: pathlib.Path, name: str, follow: bool = False) -> dict[str, str]:
    res = resolve_target(root, b"/" + name.encode(), follow_symlinks=follow)
    assert res.status is ResolveStatus.FILE, res
    assert res.path is not None and res.stat is not None
    found = find_sidecars(res.path, res.stat, root, follow_symlinks=follow)
    out: dict[str, str] = {}
    for coding, (path, sst) in found.items():
        real = os.stat(path)
        assert (sst.st_dev, sst.st_ino) == (real.st_dev, real.st_ino)
        assert path == pathlib.Path(os.path.realpath(path))
        out[coding] = os.path.relpath(path, root)
    return out


@pytest.mark.parametrize(
    ("name", "confined", "followed"),
    [
        ("both.txt", {"br": "both.txt.br", "gzip": "both.txt.gz"}, None),
        ("alias.txt", {"br": "both.txt.br", "gzip": "both.txt.gz"}, None),
        ("gz.js", {"gzip": "gz.js.gz"}, None),
        ("br.css", {"br": "br.css.br"}, None),
        ("none.txt", {}, None),
        ("dirside.txt", {}, None),
        ("fifo.txt", {}, None),
        ("sock.txt", {}, None),
        ("linkin.txt", {"gzip": "real/linkin.gz"}, None),
        ("linkout.txt", {}, {"gzip": "../outside/x.gz"}),
        ("self.txt", {}, None),
        ("dangling.txt", {}, None),
        ("loop.txt", {}, None),
        ("odd.txt", {}, None),
        ("both.txt.gz", {}, None),  # a sidecar asked for by name has none of its own
    ],
)
def test_find_sidecars(
    site: pathlib.Path,
    name: str,
    confined: dict[str, str],
    followed: dict[str, str] | None,
) -> None:
    assert _sidecars(site, name) == confined
    assert _sidecars(site, name, follow=True) == (confined if followed is None else followed)


def test_sidecar_order_and_names() -> None:
    assert list(SIDECARS) == ["br", "gzip"]
    assert SIDECARS == {"br": ".br", "gzip": ".gz"}


def test_not_a_regular_file(site: pathlib.Path) -> None:
    st = os.stat(site / "real")
    assert find_sidecars(site / "real", st, site, follow_symlinks=False) == {}


def test_fifo_sidecar_is_never_opened(site: pathlib.Path) -> None:
    # Opening fifo.txt.gz for reading would block with no writer: an answer at all
    # shows it was only stat()ed.
    st = os.stat(site / "fifo.txt")
    assert find_sidecars(site / "fifo.txt", st, site, follow_symlinks=True) == {}


def test_unreadable_sidecar(world_tmp: str) -> None:
    root = pathlib.Path(world_tmp)
    (root / "a.txt").write_bytes(b"a")
    (root / "a.txt.gz").write_bytes(b"GZ")
    (root / "a.txt.br").write_bytes(b"BR")
    (root / "a.txt.br").chmod(0)
    (root / "locked").mkdir()
    (root / "locked" / "x.gz").write_bytes(b"GZ")
    os.symlink("locked/x.gz", root / "b.txt.gz")
    (root / "b.txt").write_bytes(b"b")
    (root / "locked").chmod(0)

    def check() -> None:
        assert _sidecars(root, "a.txt") == {"gzip": "a.txt.gz"}
        assert _sidecars(root, "b.txt") == {}

    try:
        as_unprivileged(check)
    finally:
        (root / "locked").chmod(0o700)


def test_sidecars_end_to_end(site: pathlib.Path) -> None:
    """What static.py does with them: pick one, keep the original's name for the type."""
    res = resolve_target(site, b"/both.txt")
    assert res.path is not None and res.stat is not None
    found = find_sidecars(res.path, res.stat, site, follow_symlinks=False)
    for accept, expected in [
        (b"gzip, deflate, br", b"BR"),
        (b"gzip", b"GZ"),
        (b"br;q=0, gzip;q=0", b"both"),
        (None, b"both"),
    ]:
        coding = choose_encoding(accept, list(found))
        path = res.path if coding is None else found[coding][0]
        assert path.read_bytes() == expected
