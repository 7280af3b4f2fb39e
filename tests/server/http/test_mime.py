"""server.http.mime: Content-Type by extension, host-independent."""

from __future__ import annotations

import hashlib
import importlib
import mimetypes
import pathlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.http import mime
from server.http.mime import content_type

OCTET = "application/octet-stream"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # Modern overrides and additions.
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.mjs", "text/javascript; charset=utf-8"),
        ("mod.wasm", "application/wasm"),
        ("a.webp", "image/webp"),
        ("a.avif", "image/avif"),
        ("f.woff2", "font/woff2"),
        ("f.woff", "font/woff"),
        ("d.json", "application/json; charset=utf-8"),
        ("logo.svg", "image/svg+xml; charset=utf-8"),
        ("site.webmanifest", "application/manifest+json; charset=utf-8"),
        ("README.md", "text/markdown; charset=utf-8"),
        ("live.m3u8", "application/vnd.apple.mpegurl"),
        ("v.mp4", "video/mp4"),
        ("v.webm", "video/webm"),
        ("a.opus", "audio/ogg"),
        ("favicon.ico", "image/x-icon"),
        # From the stdlib table.
        ("index.html", "text/html; charset=utf-8"),
        ("index.htm", "text/html; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("hello.txt", "text/plain; charset=utf-8"),
        ("data.csv", "text/csv; charset=utf-8"),
        ("a.png", "image/png"),
        ("a.jpg", "image/jpeg"),  # strict entry wins over the stdlib's "image/jpg"
        ("a.jpeg", "image/jpeg"),
        ("a.gif", "image/gif"),
        ("doc.pdf", "application/pdf"),
        ("a.zip", "application/zip"),
        ("a.xml", "text/xml; charset=utf-8"),
        ("a.mp3", "audio/mpeg"),
        # Compressed files are what they are: no Content-Encoding is implied.
        ("a.tar.gz", "application/gzip"),
        ("a.tgz", "application/gzip"),
        ("a.zst", "application/zstd"),
        # Case-insensitive extension.
        ("INDEX.HTML", "text/html; charset=utf-8"),
        ("App.Js", "text/javascript; charset=utf-8"),
        ("PHOTO.JPG", "image/jpeg"),
        ("A.WOFF2", "font/woff2"),
        # Only the last extension counts; names are not URLs.
        ("archive.html.bin", OCTET),
        ("a.txt.js", "text/javascript; charset=utf-8"),
        ("data:x.txt", "text/plain; charset=utf-8"),
        ("dir.d/file", OCTET),
        ("pattern-1m.bin", OCTET),
        # No extension, dotfiles, unknown extensions.
        ("Makefile", OCTET),
        (".bashrc", OCTET),
        (".hidden.txt", "text/plain; charset=utf-8"),
        ("a.", OCTET),
        ("a.nosuchext", OCTET),
        ("", OCTET),
    ],
)
def test_content_type(name: str, expected: str) -> None:
    assert content_type(name) == expected
    assert content_type(pathlib.Path("/srv/www") / name if name else pathlib.Path()) == expected


def test_pure_and_concrete_paths() -> None:
    assert content_type(pathlib.PurePosixPath("x/y.css")) == "text/css; charset=utf-8"
    assert content_type(pathlib.Path("/x/y.webp")) == "image/webp"


@pytest.mark.parametrize(
    ("default", "expected"),
    [
        ("text/plain", "text/plain; charset=utf-8"),
        ("text/plain; charset=iso-8859-1", "text/plain; charset=iso-8859-1"),
        ("application/x-unknown", "application/x-unknown"),
        ("application/json", "application/json; charset=utf-8"),
    ],
)
def test_default(default: str, expected: str) -> None:
    assert content_type("a.nosuchext", default) == expected
    assert content_type("a.png", default) == "image/png"


@pytest.mark.parametrize(
    ("args", "exc", "message"),
    [
        ((b"a.txt",), TypeError, "path must be str or pathlib.Path, not bytes"),
        ((None,), TypeError, "path must be str or pathlib.Path, not NoneType"),
        (("a.txt", None), TypeError, "default must be str, not NoneType"),
        (("a.txt", ""), ValueError, "default must be a media type"),
        (("a.txt", "text"), ValueError, "default must be a media type"),
        (("a.txt", "text/plain\r\nX-Evil: 1"), ValueError, "default must be a media type"),
        (("a.txt", "text /plain"), ValueError, "default must be a media type"),
    ],
)
def test_misuse(args: tuple[object, ...], exc: type[Exception], message: str) -> None:
    with pytest.raises(exc, match=re.escape(message)):
        content_type(*args)  # type: ignore[arg-type]


def test_charset_only_on_textual_types() -> None:
    for ext in (".png", ".wasm", ".mp4", ".woff2", ".gz", ".pdf"):
        assert "charset" not in content_type("a" + ext)
    for ext in (".html", ".css", ".js", ".json", ".svg", ".webmanifest", ".md", ".txt"):
        assert content_type("a" + ext).endswith("; charset=utf-8")


def test_host_mime_types_file_is_ignored(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host /etc/mime.types (here a hostile one) changes nothing."""
    hostile = tmp_path / "mime.types"
    hostile.write_text("application/x-bogus html txt nomapdtest\n", encoding="ascii")
    for name in ("_db", "types_map", "common_types", "suffix_map", "encodings_map"):
        monkeypatch.setattr(mimetypes, name, getattr(mimetypes, name))
    monkeypatch.setattr(mimetypes, "knownfiles", [str(hostile)])
    monkeypatch.setattr(mimetypes, "inited", False)
    try:
        reloaded = importlib.reload(mime)
        assert mimetypes.guess_type("a.nomapdtest")[0] == "application/x-bogus"  # stdlib saw it
        assert reloaded.content_type("a.nomapdtest") == OCTET
        assert reloaded.content_type("a.html") == "text/html; charset=utf-8"
        assert reloaded.content_type("a.txt") == "text/plain; charset=utf-8"
    finally:
        monkeypatch.undo()
        importlib.reload(mime)


# The bundled demo site: every file has a sensible type, and the samples are
# byte-for-byte what SHA256SUMS and the index page say they are.

DEMO = pathlib.Path(mime.__file__).parent.parent / "demo_site"


def test_demo_site_types() -> None:
    expected = {
        "index.html": "text/html; charset=utf-8",
        "request.js": "text/javascript; charset=utf-8",
        "robots.txt": "text/plain; charset=utf-8",
        "samples/hello.txt": "text/plain; charset=utf-8",
        "samples/lorem.txt": "text/plain; charset=utf-8",
        "samples/logo.svg": "image/svg+xml; charset=utf-8",
        "samples/pattern-100k.bin": OCTET,
        "samples/pattern-1m.bin": OCTET,
    }
    for rel, ctype in expected.items():
        assert (DEMO / rel).is_file(), rel
        assert content_type(DEMO / rel) == ctype, rel


def test_demo_site_sha256sums() -> None:
    lines = (DEMO / "SHA256SUMS").read_text(encoding="ascii").splitlines()
    listed = {}
    for line in lines:
        digest, sep, rel = line.partition("  ")
        assert sep and re.fullmatch(r"[0-9a-f]{64}", digest), line
        listed[rel] = digest
    samples = {f"samples/{p.name}" for p in (DEMO / "samples").iterdir()}
    assert set(listed) == samples
    for rel, digest in listed.items():
        assert hashlib.sha256((DEMO / rel).read_bytes()).hexdigest() == digest, rel


def test_demo_site_samples_are_as_documented() -> None:
    samples = DEMO / "samples"
    assert (samples / "pattern-100k.bin").read_bytes() == bytes(
        (i * 7 + 3) & 0xFF for i in range(102400)
    )
    assert (samples / "pattern-1m.bin").read_bytes() == b"".join(
        hashlib.sha256(b"nomapd pattern-1m " + i.to_bytes(8, "big")).digest() for i in range(32768)
    )
    lorem = (samples / "lorem.txt").read_bytes()
    assert 16384 < len(lorem) <= 32768  # exactly two 16 KiB TLS records' worth
    lorem.decode("ascii")
    index = (DEMO / "index.html").read_text(encoding="utf-8")
    for path in sorted(samples.iterdir()):
        size = path.stat().st_size
        shown = f"{size:,} B"
        assert f'href="samples/{path.name}"' in index, path.name
        assert shown in index, (path.name, shown)
    # One script, the site's own (request.js: "Your request"), nothing inline.
    assert re.findall(r"<script[^>]*>", index) == ['<script src="request.js">']
    assert "http://127.0.0.1:8444/stats" in index
    assert not re.search(r'(src|href)="(https?:)?//(?!127\.0\.0\.1:8444/)', index)


@given(st.text(alphabet="ab.c\\ é", max_size=8))
def test_bare_name_suffix_is_purepath_suffix(name: str) -> None:
    """The hot path for a bare name reads the suffix as pathlib does."""
    assert mime._suffix(name) == pathlib.PurePath(name).suffix
    assert content_type(name) == content_type(pathlib.PurePath(name))


def test_default_is_checked_even_when_cached() -> None:
    assert content_type("a.unknownext", default="text/x-a") == "text/x-a; charset=utf-8"
    assert content_type("b.unknownext", default="text/x-a") == "text/x-a; charset=utf-8"
    for _ in range(2):
        with pytest.raises(ValueError, match="media type"):
            content_type("a.unknownext", default="not a type")
