"""server.http.autoindex and DIRECTORY resolution: nginx-style listings that are safe to click."""

from __future__ import annotations

import contextlib
import errno
import html
import os
import pathlib
import re
import shutil
import socket
import stat
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.http.autoindex import MAX_ENTRIES, render_listing
from server.http.resolve import ResolveStatus, name_is_servable, open_directory, resolve_target
from tests.privdrop import as_unprivileged

DIRECTORY = ResolveStatus.DIRECTORY
FILE = ResolveStatus.FILE
MISSING = ResolveStatus.NOT_FOUND
FORBIDDEN = ResolveStatus.FORBIDDEN

MTIME = 1580526240  # 01-Feb-2020 03:04:00 UTC

# Names a browser must be able to click: HTML and URL metacharacters, UTF-8.
TRICKY = [
    "a b.txt",
    'q"uote.txt',
    "q'uote.txt",
    "<script>.txt",
    "amp&amp;.txt",
    "100%.txt",
    "%41.txt",  # must not be decoded to "A.txt"
    "hash#frag.txt",
    "what?x=1.txt",
    "a:b.txt",  # must not look like a URL scheme
    "semi;colon.txt",
    "plus+.txt",
    "é.txt",
    "日本語.txt",
    "emoji-😀.txt",
    "B.txt",
    "~tilde.txt",
]
LONG = "n" * 47 + "-long-name.txt"  # 61 characters: shown cut to 47 + "..>"


@dataclass(frozen=True)
class Line:
    href: str
    text: str  # HTML-unescaped link text
    date: str
    size: str


_LINE = re.compile(r'<a href="([^"]*)">([^<]*)</a> *(\S+ \S+) +(\S+)\r\n')


def entries(page: bytes) -> list[Line]:
    """The entry lines of a listing, "../" excluded."""
    text = page.decode("utf-8")
    pre = text[text.index("<pre>") + 5 : text.index("</pre>")]
    pre = pre.removeprefix('<a href="../">../</a>\r\n')
    lines = re.findall(r".*?\r\n", pre, re.S)
    assert "".join(lines) == pre
    out = []
    for line in lines:
        m = _LINE.fullmatch(line)
        assert m is not None, line
        out.append(Line(m[1], html.unescape(m[2]), m[3], m[4]))
    return out


def names(page: bytes) -> list[str]:
    return [e.text for e in entries(page)]


def listing(root: pathlib.Path, target: bytes, **kw: bool) -> bytes:
    dotfiles = kw.get("serve_dotfiles", False)
    follow = kw.get("follow_symlinks", False)
    res = resolve_target(
        root, target, autoindex=True, serve_dotfiles=dotfiles, follow_symlinks=follow
    )
    assert res.status is DIRECTORY, res
    assert res.path is not None
    return render_listing(
        res.path, target, serve_dotfiles=dotfiles, follow_symlinks=follow, root=root
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """root/ with no index.html, next to an outside/ it must not reveal.

    root/
      TRICKY files, LONG, .hidden, .hdir/  (all mtime MTIME)
      sub/f.txt   Zdir/   é-dir/   withindex/index.html   idxdir/index.html/
      fifo  sock  link_in -> B.txt  link_dir_in -> sub  link_out -> ../outside/secret.txt
      link_dir_out -> ../outside  dangling -> nowhere  loop -> loop
      link_fifo -> fifo  names with \\xff, a newline, a backslash, a tab
    """
    base = pathlib.Path(os.path.realpath(tmp_path_factory.mktemp("autoindex")))
    root = base / "root"
    outside = base / "outside"
    for d in ("sub", "Zdir", "é-dir", "withindex", "idxdir/index.html", ".hdir"):
        (root / d).mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    (root / "sub" / "f.txt").write_bytes(b"f")
    (root / "withindex" / "index.html").write_bytes(b"<h1>index</h1>")
    for i, name in enumerate(TRICKY):
        (root / name).write_bytes(b"x" * (i + 1))
    (root / LONG).write_bytes(b"long")
    (root / ".hidden").write_bytes(b"hidden")
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock, contextlib.suppress(OSError):
        sock.bind(str(root / "sock"))
    for raw in (b"bad\xff.txt", b"nl\nx.txt", b"back\\slash.txt", b"tab\tx.txt"):
        fd = os.open(os.fsencode(root) + b"/" + raw, os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
    links = {
        "link_in": "B.txt",
        "link_dir_in": "sub",
        "link_out": "../outside/secret.txt",
        "link_dir_out": "../outside",
        "dangling": "nowhere",
        "loop": "loop",
        "link_fifo": "fifo",
    }
    for name, dest in links.items():
        os.symlink(dest, root / name)
    for p in root.iterdir():
        if not p.is_symlink() and (p.is_file() or p.is_dir()):
            os.utime(p, (MTIME, MTIME))
    os.utime(outside / "secret.txt", (MTIME, MTIME))
    yield root


# --- resolution --------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expect", "path"),
    [
        (b"/", DIRECTORY, ""),
        (b"/sub/", DIRECTORY, "sub"),
        (b"/sub/.", DIRECTORY, "sub"),
        (b"/sub/..", DIRECTORY, ""),
        (b"/%C3%A9-dir/", DIRECTORY, "é-dir"),
        (b"/idxdir/", DIRECTORY, "idxdir"),  # index.html is a directory: list instead
        (b"/link_dir_in/", DIRECTORY, "sub"),  # path is the real directory
        (b"/withindex/", FILE, "withindex/index.html"),  # an index still wins
        (b"/B.txt", FILE, "B.txt"),
        (b"/link_dir_out/", MISSING, None),
        (b"/.hdir/", MISSING, None),
        (b"/fifo/", MISSING, None),
        (b"/missing/", MISSING, None),
    ],
)
def test_directory_resolution(
    tree: pathlib.Path, target: bytes, expect: ResolveStatus, path: str | None
) -> None:
    res = resolve_target(tree, target, autoindex=True)
    assert res.status is expect, res
    if path is None:
        assert res.path is None and res.stat is None
        return
    assert res.path == tree / path
    assert res.stat is not None
    assert (res.stat.st_dev, res.stat.st_ino) == (
        os.stat(tree / path).st_dev,
        os.stat(tree / path).st_ino,
    )
    assert stat.S_ISDIR(res.stat.st_mode) is (expect is DIRECTORY)
    assert res.location is None


@pytest.mark.parametrize("target", [b"/", b"/sub/", b"/idxdir/", b"/link_dir_in/", b"/sub/.."])
def test_without_autoindex_it_stays_not_found(tree: pathlib.Path, target: bytes) -> None:
    assert resolve_target(tree, target).status is MISSING
    assert resolve_target(tree, target, autoindex=False).status is MISSING


def test_directory_without_slash_still_redirects(tree: pathlib.Path) -> None:
    res = resolve_target(tree, b"/sub?x=1", autoindex=True)
    assert res.status is ResolveStatus.REDIRECT
    assert res.location == b"/sub/?x=1"


def test_directory_options(tree: pathlib.Path) -> None:
    res = resolve_target(tree, b"/.hdir/", autoindex=True, serve_dotfiles=True)
    assert res.status is DIRECTORY and res.path == tree / ".hdir"
    res = resolve_target(tree, b"/link_dir_out/", autoindex=True, follow_symlinks=True)
    assert res.status is DIRECTORY and res.path == tree.parent / "outside"
    # A custom index that is missing, or a symlink out of the root, falls back to the listing.
    for index in ("nothing.html", "link_out"):
        res = resolve_target(tree, b"/", autoindex=True, index=index)
        assert res.status is DIRECTORY and res.path == tree


# --- the page ----------------------------------------------------------------


def test_root_listing_exact_page(tmp_path: pathlib.Path) -> None:
    root = pathlib.Path(os.path.realpath(tmp_path))
    (root / "d").mkdir()
    (root / "f.txt").write_bytes(b"12345")
    os.utime(root / "d", (MTIME, MTIME))
    os.utime(root / "f.txt", (MTIME, MTIME))
    page = render_listing(root, b"/", serve_dotfiles=False, follow_symlinks=False, root=root)
    assert page == (
        b"<!DOCTYPE html>\r\n<html>\r\n"
        b'<head><meta charset="utf-8"><title>Index of /</title></head>\r\n'
        b"<body>\r\n<h1>Index of /</h1><hr><pre>"
        b'<a href="d/">d/</a>' + b" " * 48 + b" 01-Feb-2020 03:04" + b" " * 19 + b"-\r\n"
        b'<a href="f.txt">f.txt</a>' + b" " * 45 + b" 01-Feb-2020 03:04" + b" " * 19 + b"5\r\n"
        b"</pre><hr></body>\r\n</html>\r\n"
    )


def test_root_has_no_parent_link_and_subdirs_do(tree: pathlib.Path) -> None:
    assert b'href="../"' not in listing(tree, b"/")
    assert b'href="../"' not in listing(tree, b"/sub/..")
    sub = listing(tree, b"/sub/")
    assert b'<pre><a href="../">../</a>\r\n' in sub
    assert names(sub) == ["f.txt"]
    assert b"<title>Index of /sub/</title>" in sub
    assert b"<h1>Index of /sub/</h1>" in sub


@pytest.mark.parametrize(
    ("url", "title"),
    [
        (b"/", "/"),
        (b"/sub/", "/sub/"),
        (b"//sub//", "/sub/"),
        (b"/sub/.", "/sub/"),
        (b"/sub/..", "/"),
        (b"/%C3%A9-dir/", "/é-dir/"),
        (b"/%3Cscript%3E/", "/&lt;script&gt;/"),
        (b"/a%26b/?q=<x>", "/a&amp;b/"),
        (b"/%ff/", "/\ufffd/"),  # misuse, but never raises
    ],
)
def test_title(tree: pathlib.Path, url: bytes, title: str) -> None:
    page = render_listing(
        tree / "sub", url, serve_dotfiles=False, follow_symlinks=False, root=tree
    ).decode()
    assert f"<title>Index of {title}</title>" in page
    assert f"<h1>Index of {title}</h1>" in page


def test_entries_sorted_like_nginx(tree: pathlib.Path) -> None:
    shown = names(listing(tree, b"/"))
    dirs = [n for n in shown if n.endswith("/")]
    files = [n for n in shown if not n.endswith("/")]
    assert shown == dirs + files  # directories first
    assert dirs == ["Zdir/", "idxdir/", "link_dir_in/", "sub/", "withindex/", "é-dir/"]
    # Then strcmp on the UTF-8 bytes: "B" < "a" < "~" < "é", case-sensitive.
    visible = [n for n in files if not n.endswith("..>")]
    assert visible == sorted(visible, key=lambda n: n.encode())
    assert files.index("B.txt") < files.index("a b.txt") < files.index("é.txt")


def test_escaping_and_links_resolve(tree: pathlib.Path) -> None:
    page = listing(tree, b"/")
    assert b"<script>" not in page and b'q"uote' not in page
    assert b"&lt;script&gt;.txt" in page
    assert b">amp&amp;amp;.txt</a>" in page  # escaped once, not left as an entity
    assert b"q&quot;uote.txt" in page and b"q&#x27;uote.txt" in page
    by_text = {e.text: e for e in entries(page)}
    for name in TRICKY:
        line = by_text[name]
        assert re.fullmatch(r"[A-Za-z0-9._~%-]+", line.href), line.href
        # What a browser does on click: resolve the href against the page URL.
        url = urllib.parse.urljoin("https://h/", line.href)
        target = urllib.parse.urlsplit(url).path.encode("ascii")
        res = resolve_target(tree, target, autoindex=True)
        assert res.status is FILE, (name, line.href, res)
        assert res.path == tree / name
    assert by_text["%41.txt"].href == "%2541.txt"
    assert by_text["a:b.txt"].href == "a%3Ab.txt"
    assert by_text["hash#frag.txt"].href == "hash%23frag.txt"
    assert by_text["what?x=1.txt"].href == "what%3Fx%3D1.txt"
    assert by_text["é.txt"].href == "%C3%A9.txt"


def test_directory_links_resolve_from_a_subdirectory(tree: pathlib.Path) -> None:
    page = listing(tree, b"/link_dir_in/")
    (line,) = entries(page)
    assert line.href == "f.txt"
    url = urllib.parse.urljoin("https://h/link_dir_in/", line.href)
    res = resolve_target(tree, urllib.parse.urlsplit(url).path.encode())
    assert res.status is FILE and res.path == tree / "sub" / "f.txt"
    root_page = {e.text: e for e in entries(listing(tree, b"/"))}
    assert root_page["é-dir/"].href == "%C3%A9-dir/"
    res = resolve_target(tree, b"/" + root_page["é-dir/"].href.encode(), autoindex=True)
    assert res.status is DIRECTORY and res.path == tree / "é-dir"


def test_dates_and_sizes(tree: pathlib.Path) -> None:
    by_text = {e.text: e for e in entries(listing(tree, b"/"))}
    assert by_text["a b.txt"].date == "01-Feb-2020 03:04"
    assert by_text["a b.txt"].size == str(TRICKY.index("a b.txt") + 1)
    assert by_text["sub/"].size == "-"
    assert by_text["link_in"].size == str(TRICKY.index("B.txt") + 1)  # the target's size
    assert by_text["link_dir_in/"].size == "-"
    page = listing(tree, b"/").decode()
    for line in page.split("\r\n"):
        if line.startswith("<a href=") and "..&gt;" not in line:
            text = html.unescape(re.sub(r"<[^>]*>", "", line))
            assert len(text) == 50 + 1 + 17 + 1 + 19, line  # nginx's columns


def test_long_names_are_cut_for_display_only(tree: pathlib.Path) -> None:
    page = listing(tree, b"/").decode()
    line = next(line for line in page.split("\r\n") if LONG in line)
    assert line.startswith(f'<a href="{LONG}">{LONG[:47]}..&gt;</a> 01-Feb-2020 03:04 ')


def test_dotfiles(tree: pathlib.Path) -> None:
    hidden = names(listing(tree, b"/"))
    assert ".hidden" not in hidden and ".hdir/" not in hidden
    shown = names(listing(tree, b"/", serve_dotfiles=True))
    assert ".hidden" in shown and ".hdir/" in shown
    assert shown.index(".hdir/") == 0  # "." sorts before letters
    assert names(listing(tree, b"/.hdir/", serve_dotfiles=True)) == []


def test_symlinks(tree: pathlib.Path) -> None:
    confined = names(listing(tree, b"/"))
    assert "link_in" in confined and "link_dir_in/" in confined
    assert "link_out" not in confined and "link_dir_out/" not in confined
    followed = names(listing(tree, b"/", follow_symlinks=True))
    assert "link_out" in followed and "link_dir_out/" in followed
    for shown in (confined, followed):
        assert "dangling" not in shown and "loop" not in shown


def test_special_and_unreachable_names_omitted(tree: pathlib.Path) -> None:
    for kw in ({}, {"serve_dotfiles": True, "follow_symlinks": True}):
        shown = names(listing(tree, b"/", **kw))
        for omitted in ("fifo", "sock", "link_fifo", "bad", "nl", "back", "tab"):
            assert not any(n.startswith(omitted) for n in shown), (omitted, shown)
    assert len(names(listing(tree, b"/"))) == len(TRICKY) + 1 + 6 + 1  # + LONG, dirs, link_in


def test_name_is_servable() -> None:
    for ok in (b"a", b"a b", b".hidden", b"\xc3\xa9", b"%2F", b"...", b"a:b"):
        assert name_is_servable(ok), ok
    for bad in (
        b"",
        b".",
        b"..",
        b"a/b",
        b"a\\b",
        b"\xff",
        b"\xc0\xae",
        b"a\nb",
        b"\x7f",
        b"\xc2\x85",
    ):
        assert not name_is_servable(bad), bad


def test_truncation(tmp_path: pathlib.Path) -> None:
    root = pathlib.Path(os.path.realpath(tmp_path))
    for i in range(10):
        (root / f"f{i}").write_bytes(b"")
    page = render_listing(
        root, b"/", serve_dotfiles=False, follow_symlinks=False, root=root, limit=4
    )
    assert len(entries(page)) == 4
    assert b"Listing truncated" in page
    # Exactly at the limit is not truncated.
    page = render_listing(
        root, b"/", serve_dotfiles=False, follow_symlinks=False, root=root, limit=10
    )
    assert len(entries(page)) == 10 and b"truncated" not in page
    # Hidden entries count toward the names read.
    for i in range(20):
        (root / f".h{i}").write_bytes(b"")
    page = render_listing(
        root, b"/", serve_dotfiles=False, follow_symlinks=False, root=root, max_scanned=25
    )
    assert len(entries(page)) < 10 and b"Listing truncated" in page
    page = render_listing(root, b"/", serve_dotfiles=False, follow_symlinks=False, root=root)
    assert len(entries(page)) == 10 and b"truncated" not in page


def test_default_cap(tmp_path: pathlib.Path) -> None:
    root = pathlib.Path(os.path.realpath(tmp_path))
    for i in range(MAX_ENTRIES + 1):
        os.close(os.open(root / f"{i:05d}", os.O_WRONLY | os.O_CREAT, 0o644))
    page = render_listing(root, b"/", serve_dotfiles=False, follow_symlinks=False, root=root)
    shown = entries(page)
    assert len(shown) == MAX_ENTRIES == 10_000
    assert [e.text for e in shown] == sorted(e.text for e in shown)
    assert b"Listing truncated" in page


def test_pure_and_repeatable(tree: pathlib.Path) -> None:
    assert listing(tree, b"/") == listing(tree, b"/")


def test_directory_swapped_for_symlink_is_not_listed(tmp_path: pathlib.Path) -> None:
    base = pathlib.Path(os.path.realpath(tmp_path))
    root, outside = base / "root", base / "outside"
    (root / "d").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"s")
    res = resolve_target(root, b"/d/", autoindex=True)
    assert res.status is DIRECTORY and res.path is not None
    os.rename(root / "d", root / "d.old")
    os.symlink(outside, root / "d")
    with pytest.raises(OSError) as info:
        render_listing(res.path, b"/d/", serve_dotfiles=False, follow_symlinks=False, root=root)
    assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)
    # An intermediate component swapped the same way is caught as well.
    (root / "a" / "b").mkdir(parents=True)
    res = resolve_target(root, b"/a/b/", autoindex=True)
    assert res.status is DIRECTORY and res.path is not None
    os.rename(root / "a", root / "a.old")
    (outside / "b").mkdir()
    os.symlink(outside, root / "a")
    with pytest.raises(OSError) as info:
        render_listing(res.path, b"/a/b/", serve_dotfiles=False, follow_symlinks=False, root=root)
    assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)


def test_vanished_directory(tmp_path: pathlib.Path) -> None:
    root = pathlib.Path(os.path.realpath(tmp_path))
    (root / "d").mkdir()
    res = resolve_target(root, b"/d/", autoindex=True)
    assert res.path is not None
    (root / "d").rmdir()
    with pytest.raises(FileNotFoundError):
        render_listing(res.path, b"/d/", serve_dotfiles=False, follow_symlinks=False, root=root)


def test_real_permissions(world_tmp: str) -> None:
    root = pathlib.Path(world_tmp)
    (root / "locked").mkdir()
    (root / "locked" / "f.txt").write_bytes(b"x")
    (root / "locked").chmod(0o311)  # search but no read: cannot be listed
    (root / "open").mkdir()
    (root / "open" / "secret.txt").write_bytes(b"x")
    (root / "open" / "secret.txt").chmod(0)

    def check() -> None:
        assert resolve_target(root, b"/locked/", autoindex=True).status is FORBIDDEN
        with pytest.raises(PermissionError):
            render_listing(
                root / "locked", b"/locked/", serve_dotfiles=False, follow_symlinks=False, root=root
            )
        # An unreadable file is listed (as nginx does) and answers 403 when fetched.
        page = listing(root, b"/open/")
        assert names(page) == ["secret.txt"]
        assert resolve_target(root, b"/open/secret.txt").status is FORBIDDEN

    try:
        as_unprivileged(check)
    finally:
        (root / "locked").chmod(0o700)


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"url_path": "/"}, TypeError, "url_path must be bytes, not str"),
        ({"directory": "/tmp"}, TypeError, "directory must be pathlib.Path, not str"),
        ({"root": pathlib.Path("rel")}, ValueError, "root must be absolute"),
        ({"limit": -1}, ValueError, "limit must be a non-negative int"),
        ({"max_scanned": True}, ValueError, "max_scanned must be a non-negative int"),
    ],
)
def test_misuse(
    tree: pathlib.Path, kwargs: dict[str, object], exc: type[Exception], message: str
) -> None:
    args: dict[str, object] = {
        "directory": tree,
        "url_path": b"/",
        "serve_dotfiles": False,
        "follow_symlinks": False,
        "root": tree,
    }
    args.update(kwargs)
    with pytest.raises(exc, match=re.escape(message)):
        render_listing(**args)  # type: ignore[arg-type]


def test_outside_root_needs_follow_symlinks(tree: pathlib.Path) -> None:
    outside = tree.parent / "outside"
    with pytest.raises(ValueError, match="outside the document root"):
        render_listing(outside, b"/x/", serve_dotfiles=False, follow_symlinks=False, root=tree)
    page = render_listing(outside, b"/x/", serve_dotfiles=False, follow_symlinks=True, root=tree)
    assert names(page) == ["secret.txt"]
    with pytest.raises(ValueError, match="normalised"):
        open_directory(tree, tree / "sub" / ".." / "sub", follow_symlinks=False)


# Property: any name the filesystem accepts is either omitted or listed with a
# link that leads back to exactly that file.

_names = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="/\x00"),
    min_size=1,
    max_size=40,
).filter(lambda n: n not in (".", "..") and len(n.encode()) <= 255)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=_names, is_dir=st.booleans(), dotfiles=st.booleans())
def test_property_links_lead_back(name: str, is_dir: bool, dotfiles: bool) -> None:
    base = pathlib.Path(os.path.realpath(tempfile.mkdtemp(prefix="nomapd-autoindex-")))
    try:
        root = base / "root"
        root.mkdir()
        (root / "sub").mkdir()
        path = root / "sub" / name
        if is_dir:
            path.mkdir()
        else:
            path.write_bytes(b"x")
        page = render_listing(
            root / "sub", b"/sub/", serve_dotfiles=dotfiles, follow_symlinks=False, root=root
        )
        shown = entries(page)
        servable = name_is_servable(name.encode()) and (dotfiles or not name.startswith("."))
        assert len(shown) == (1 if servable else 0)
        if not shown:
            return
        (line,) = shown
        assert re.fullmatch(r"[A-Za-z0-9._~%-]+/?", line.href)
        display = name + "/" if is_dir else name
        assert line.text == (display if len(display) <= 50 else display[:47] + "..>")
        url = urllib.parse.urljoin("https://h/sub/", line.href)
        res = resolve_target(
            root, urllib.parse.urlsplit(url).path.encode(), autoindex=True, serve_dotfiles=dotfiles
        )
        assert res.status is (DIRECTORY if is_dir else FILE), res
        assert res.path == path
    finally:
        shutil.rmtree(base)
