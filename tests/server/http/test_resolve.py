"""server.http.resolve: request-target -> file under a document root, and every refusal."""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import re
import socket
import stat
import unicodedata
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.http import resolve as resolve_mod
from server.http.resolve import Resolution, ResolveStatus, resolve_target
from tests.privdrop import as_unprivileged

FILE = ResolveStatus.FILE
REDIRECT = ResolveStatus.REDIRECT
BAD = ResolveStatus.BAD_REQUEST
MISSING = ResolveStatus.NOT_FOUND
FORBIDDEN = ResolveStatus.FORBIDDEN


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """A document root next to an "outside" directory it must never leak.

    root/
      index.html hello.txt é.txt %2e (a file literally named "%2e")
      docs/{index.html,page.html}  noindex/a.txt  idxdir/index.html/ (a directory)
      .hidden.txt  .git/config  fifo  sock (if AF_UNIX allows the path)
      link_in -> hello.txt           link_dir_in -> docs
      link_out -> ../outside/secret.txt   link_dir_out -> ../outside
      link_abs_out -> /.../outside/secret.txt   link_devnull -> /dev/null
      loop -> loop   dangling -> nowhere
    root-sibling/secret.txt   (shares the prefix "root", but is outside it)
    """
    base = pathlib.Path(os.path.realpath(tmp_path_factory.mktemp("resolve")))
    root = base / "root"
    outside = base / "outside"
    for d in (root, outside, root / "docs", root / "noindex", root / "idxdir" / "index.html"):
        d.mkdir(parents=True)
    (root / ".git").mkdir()
    files = {
        "index.html": b"<h1>root</h1>",
        "hello.txt": b"hello\n",
        "é.txt": b"accent\n",
        "%2e": b"literal percent two e\n",
        "docs/index.html": b"<h1>docs</h1>",
        "docs/page.html": b"<p>page</p>",
        "noindex/a.txt": b"a",
        ".hidden.txt": b"hidden",
        ".git/config": b"[core]",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (outside / "secret.txt").write_bytes(b"secret")
    (base / "root-sibling").mkdir()
    (base / "root-sibling" / "secret.txt").write_bytes(b"sibling secret")
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # A path too long for sun_path fails to bind: the "sock" case then tests a missing file.
    with sock, contextlib.suppress(OSError):
        sock.bind(str(root / "sock"))
    links = {
        "link_in": "hello.txt",
        "link_dir_in": "docs",
        "link_out": "../outside/secret.txt",
        "link_dir_out": "../outside",
        "link_sibling": "../root-sibling/secret.txt",
        "link_abs_out": str(outside / "secret.txt"),
        "link_devnull": "/dev/null",
        "loop": "loop",
        "dangling": "nowhere",
    }
    for name, dest in links.items():
        os.symlink(dest, root / name)
    yield root


def _check(
    root: pathlib.Path, res: Resolution, status: ResolveStatus, expect: str | bytes | None
) -> None:
    assert res.status is status, res
    assert isinstance(res.reason, str) and res.reason
    if status is FILE:
        assert isinstance(expect, str)
        assert res.path == pathlib.Path(os.path.realpath(root / expect))
        assert res.stat is not None and stat.S_ISREG(res.stat.st_mode)
        real = os.stat(res.path)
        assert (res.stat.st_dev, res.stat.st_ino) == (real.st_dev, real.st_ino)
        assert res.location is None
    elif status is REDIRECT:
        assert res.location == expect
        assert res.path is None and res.stat is None
    else:
        assert res.path is None and res.stat is None and res.location is None


OK_CASES: list[tuple[bytes, ResolveStatus, str | bytes | None]] = [
    # Files and the root index.
    (b"/", FILE, "index.html"),
    (b"/hello.txt", FILE, "hello.txt"),
    (b"/hello.txt?x=1&y=/../..", FILE, "hello.txt"),
    (b"/hello.txt#frag", FILE, "hello.txt"),
    (b"/hello.txt?q#frag", FILE, "hello.txt"),
    (b"//hello.txt", FILE, "hello.txt"),
    (b"/./hello.txt", FILE, "hello.txt"),
    (b"/%68ello.txt", FILE, "hello.txt"),
    (b"/%2e", FILE, "index.html"),
    (b"/%2E/", FILE, "index.html"),
    # Unicode names arrive percent-encoded UTF-8.
    (b"/%C3%A9.txt", FILE, "é.txt"),
    (b"/%c3%a9.txt", FILE, "é.txt"),
    # Directories: redirect without the slash (keeping the client's spelling and
    # query), index with it.
    (b"/docs", REDIRECT, b"/docs/"),
    (b"/docs?q=1", REDIRECT, b"/docs/?q=1"),
    (b"/docs?", REDIRECT, b"/docs/?"),
    (b"/docs?a=%2F&b=c#frag", REDIRECT, b"/docs/?a=%2F&b=c"),
    (b"/d%6Fcs?q=%41", REDIRECT, b"/d%6Fcs/?q=%41"),
    (b"/hello.txt/../docs", REDIRECT, b"/hello.txt/../docs/"),
    (b"//docs", REDIRECT, b"/docs/"),  # never a scheme-relative "//docs/"
    (b"///docs?x", REDIRECT, b"/docs/?x"),
    (b"/noindex", REDIRECT, b"/noindex/"),
    (b"/docs/", FILE, "docs/index.html"),
    (b"/docs/.", FILE, "docs/index.html"),
    (b"/docs//", FILE, "docs/index.html"),
    (b"/docs/page.html", FILE, "docs/page.html"),
    (b"/docs/..", FILE, "index.html"),
    (b"/docs/../hello.txt", FILE, "hello.txt"),
    (b"/docs/%2e%2e/hello.txt", FILE, "hello.txt"),  # encoded dot segments, still inside
    (b"/docs/%2E%2E/", FILE, "index.html"),
    (b"/noindex/", MISSING, None),
    (b"/idxdir/", MISSING, None),  # index.html is a directory
    (b"/hello.txt/", MISSING, None),
    (b"/hello.txt/x", MISSING, None),  # ENOTDIR
    # Double encoding is decoded once: "%252e" is the file named "%2e".
    (b"/%252e", FILE, "%2e"),
    (b"/%252e%252e", MISSING, None),
    (b"/%252e%252e/%252e%252e/etc/passwd", MISSING, None),
    (b"/..%252f..%252fetc/passwd", MISSING, None),
    # Traversal.
    (b"/..", BAD, None),
    (b"/../", BAD, None),
    (b"/../etc/passwd", BAD, None),
    (b"/docs/../../etc/passwd", BAD, None),
    (b"/%2e%2e/", BAD, None),
    (b"/%2e%2e", BAD, None),
    (b"/%2E%2e%2f", BAD, None),
    (b"/..%2f", BAD, None),
    (b"/..%2F..%2Fetc%2Fpasswd", BAD, None),
    (b"/docs%2fpage.html", BAD, None),
    (b"/.%2e/", BAD, None),
    (b"/..\\..\\etc\\passwd", BAD, None),
    (b"/%5c..%5c..%5cetc%5cpasswd", BAD, None),
    (b"/docs\\page.html", BAD, None),
    (b"/\\evil.example", BAD, None),
    # Not origin-form.
    (b"", BAD, None),
    (b"*", BAD, None),
    (b"..", BAD, None),
    (b"hello.txt", BAD, None),
    (b"http://example.com/hello.txt", BAD, None),
    (b"example.com:443", BAD, None),
    (b"?x", BAD, None),
    # Bytes the request line may not carry raw.
    (b"/hello .txt", BAD, None),
    (b"/hello\t.txt", BAD, None),
    (b"/hello.txt\x00", BAD, None),
    (b"/\xc3\xa9.txt", BAD, None),
    (b"/hello.txt\r\nX: y", BAD, None),
    # Malformed escapes.
    (b"/%", BAD, None),
    (b"/%2", BAD, None),
    (b"/hello%2", BAD, None),
    (b"/%zz", BAD, None),
    (b"/%%32%65", BAD, None),
    (b"/%g0", BAD, None),
    # NUL, controls, invalid or overlong UTF-8.
    (b"/%00", BAD, None),
    (b"/hello.txt%00.html", BAD, None),
    (b"/a%0ab", BAD, None),
    (b"/a%0d%0ab", BAD, None),
    (b"/%09", BAD, None),
    (b"/%7f", BAD, None),
    (b"/%c2%85", BAD, None),  # U+0085 NEL, a C1 control
    (b"/%c0%ae%c0%ae/", BAD, None),  # overlong "."
    (b"/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd", BAD, None),
    (b"/%c0%af", BAD, None),  # overlong "/"
    (b"/%e0%80%ae", BAD, None),  # three-byte overlong "."
    (b"/%ed%a0%80", BAD, None),  # UTF-16 surrogate
    (b"/%ff", BAD, None),
    (b"/%c3", BAD, None),  # truncated sequence
    (b"/%e9.txt", BAD, None),  # Latin-1 "é"
    # Things that are not regular files.
    (b"/fifo", MISSING, None),
    (b"/sock", MISSING, None),
    (b"/link_devnull", MISSING, None),
    (b"/loop", MISSING, None),
    (b"/dangling", MISSING, None),
    (b"/missing", MISSING, None),
    (b"/missing/", MISSING, None),
    (b"/" + b"a" * 300, MISSING, None),  # ENAMETOOLONG
    (b"/" + b"a/" * 3000 + b"x", MISSING, None),  # longer than PATH_MAX
    # Symlinks that stay inside the root are followed; path is the real one.
    (b"/link_in", FILE, "hello.txt"),
    (b"/link_dir_in", REDIRECT, b"/link_dir_in/"),
    (b"/link_dir_in/", FILE, "docs/index.html"),
    (b"/link_dir_in/page.html", FILE, "docs/page.html"),
    (b"/link_dir_in/../hello.txt", FILE, "hello.txt"),  # ".." is lexical, not via the link
    # Dotfiles.
    (b"/.hidden.txt", MISSING, None),
    (b"/.git/config", MISSING, None),
    (b"/.git/", MISSING, None),
    (b"/%2egit/config", MISSING, None),
    (b"/docs/.hidden", MISSING, None),
    (b"/...", MISSING, None),
    (b"/.git/../hello.txt", FILE, "hello.txt"),  # ".git" is gone after normalisation
]


@pytest.mark.parametrize(("target", "status", "expect"), OK_CASES)
def test_resolve(
    tree: pathlib.Path, target: bytes, status: ResolveStatus, expect: str | bytes | None
) -> None:
    _check(tree, resolve_target(tree, target), status, expect)


@pytest.mark.parametrize(
    ("target", "status", "expect"),
    [
        (b"/.hidden.txt", FILE, ".hidden.txt"),
        (b"/.git/config", FILE, ".git/config"),
        (b"/%2egit/config", FILE, ".git/config"),
        (b"/.git", REDIRECT, b"/.git/"),
        (b"/.git/", MISSING, None),
        (b"/...", MISSING, None),
        (b"/..", BAD, None),  # serving dotfiles never means serving ".."
        (b"/.%2e/etc/passwd", BAD, None),
    ],
)
def test_serve_dotfiles(
    tree: pathlib.Path, target: bytes, status: ResolveStatus, expect: str | bytes | None
) -> None:
    _check(tree, resolve_target(tree, target, serve_dotfiles=True), status, expect)


@pytest.mark.parametrize(
    ("target", "confined", "followed"),
    [
        (b"/link_out", MISSING, "../outside/secret.txt"),
        (b"/link_abs_out", MISSING, "../outside/secret.txt"),
        (b"/link_sibling", MISSING, "../root-sibling/secret.txt"),
        (b"/link_dir_out/secret.txt", MISSING, "../outside/secret.txt"),
        (b"/link_dir_out/missing", MISSING, None),
        (b"/link_devnull", MISSING, None),
        (b"/link_in", "hello.txt", "hello.txt"),
    ],
)
def test_symlinks_out_of_root(
    tree: pathlib.Path,
    target: bytes,
    confined: ResolveStatus | str,
    followed: str | None,
) -> None:
    res = resolve_target(tree, target)
    if isinstance(confined, str):
        _check(tree, res, FILE, confined)
    else:
        _check(tree, res, confined, None)
    res = resolve_target(tree, target, follow_symlinks=True)
    _check(tree, res, MISSING if followed is None else FILE, followed)


def test_symlink_dir_out_redirects_only_when_followed(tree: pathlib.Path) -> None:
    _check(tree, resolve_target(tree, b"/link_dir_out"), MISSING, None)
    res = resolve_target(tree, b"/link_dir_out?z", follow_symlinks=True)
    _check(tree, res, REDIRECT, b"/link_dir_out/?z")


def test_custom_index(tree: pathlib.Path) -> None:
    _check(tree, resolve_target(tree, b"/docs/", index="page.html"), FILE, "docs/page.html")
    _check(tree, resolve_target(tree, b"/", index="page.html"), MISSING, None)
    # The index may be a symlink inside the root, and may even be a dotfile:
    # it is configuration, not part of the request.
    _check(tree, resolve_target(tree, b"/", index="link_in"), FILE, "hello.txt")
    _check(tree, resolve_target(tree, b"/", index=".hidden.txt"), FILE, ".hidden.txt")
    _check(tree, resolve_target(tree, b"/", index="link_out"), MISSING, None)


def test_fifo_is_never_opened(tree: pathlib.Path) -> None:
    # Opening a FIFO for reading with no writer would block forever; getting an
    # answer at all shows it was only stat()ed.
    res = resolve_target(tree, b"/fifo", serve_dotfiles=True, follow_symlinks=True)
    _check(tree, res, MISSING, None)


def test_root_prefix_is_not_containment(tree: pathlib.Path) -> None:
    # "/…/root-sibling" starts with the string "/…/root" but is not inside it.
    sibling = tree.parent / "root-sibling"
    assert str(sibling).startswith(str(tree))
    _check(tree, resolve_target(tree, b"/link_sibling"), MISSING, None)


def test_unreadable_file_is_forbidden(tree: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_access = os.access

    def access(path: object, mode: int, **kw: object) -> bool:
        if path == "hello.txt" and mode == os.R_OK:
            return False
        return real_access(path, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)
    _check(tree, resolve_target(tree, b"/hello.txt"), FORBIDDEN, None)
    _check(tree, resolve_target(tree, b"/link_in"), FORBIDDEN, None)
    _check(tree, resolve_target(tree, b"/docs/page.html"), FILE, "docs/page.html")


@pytest.mark.parametrize(
    ("err", "status"),
    [
        (errno.EACCES, FORBIDDEN),
        (errno.EPERM, FORBIDDEN),
        (errno.ENOENT, MISSING),
        (errno.ENAMETOOLONG, MISSING),
        (errno.ENOTDIR, MISSING),
        (errno.ELOOP, MISSING),
    ],
)
def test_stat_errors(
    tree: pathlib.Path, monkeypatch: pytest.MonkeyPatch, err: int, status: ResolveStatus
) -> None:
    real_stat = os.stat

    def fake_stat(path: object, *args: object, **kw: object) -> os.stat_result:
        if path == "hello.txt" and kw.get("dir_fd") is not None:
            raise OSError(err, os.strerror(err), path)
        return real_stat(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", fake_stat)
    _check(tree, resolve_target(tree, b"/hello.txt"), status, None)


def test_server_faults_propagate(tree: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_stat = os.stat

    def fake_stat(path: object, *args: object, **kw: object) -> os.stat_result:
        if path == "hello.txt" and kw.get("dir_fd") is not None:
            raise OSError(errno.EIO, "Input/output error", path)
        return real_stat(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", fake_stat)
    with pytest.raises(OSError) as info:
        resolve_target(tree, b"/hello.txt")
    assert info.value.errno == errno.EIO


def test_real_permissions(world_tmp: str) -> None:
    root = pathlib.Path(world_tmp)
    (root / "secret.txt").write_bytes(b"x")
    (root / "secret.txt").chmod(0)
    (root / "locked").mkdir()
    (root / "locked" / "f.txt").write_bytes(b"x")
    (root / "locked").chmod(0)
    (root / "searchonly").mkdir()
    (root / "searchonly" / "f.txt").write_bytes(b"x")
    (root / "searchonly").chmod(0o111)  # search only, for everyone

    def check() -> None:
        _check(root, resolve_target(root, b"/secret.txt"), FORBIDDEN, None)
        _check(root, resolve_target(root, b"/locked/f.txt"), FORBIDDEN, None)
        _check(root, resolve_target(root, b"/searchonly/f.txt"), FILE, "searchonly/f.txt")

    try:
        as_unprivileged(check)
    finally:
        (root / "locked").chmod(0o700)
        (root / "searchonly").chmod(0o700)


def test_swapped_symlink_is_not_found(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory replaced by a symlink after realpath() is caught by the fd walk.
    The target goes through a symlink ("via" -> "d"), so the lexical fast walk
    gives way and realpath() runs (a symlink-free path never calls it)."""
    root = pathlib.Path(os.path.realpath(tmp_path)) / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f.txt").write_bytes(b"inside")
    (root / "via").symlink_to(root / "d")
    outside = root.parent / "outside"
    outside.mkdir()
    (outside / "f.txt").write_bytes(b"outside")
    real_realpath = os.path.realpath

    def racing_realpath(path: str, **kw: bool) -> str:
        result = real_realpath(path, **kw)
        if path.endswith("f.txt") and (root / "d").is_dir() and not (root / "d").is_symlink():
            os.rename(root / "d", root / "d.old")
            os.symlink(outside, root / "d")
        return result

    monkeypatch.setattr(os.path, "realpath", racing_realpath)
    res = resolve_target(root, b"/via/f.txt")
    monkeypatch.undo()
    assert (root / "d").is_symlink()  # the race really happened
    _check(root, res, MISSING, None)


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"root": "/srv", "target": b"/"}, TypeError, "root must be pathlib.Path, not str"),
        ({"root": pathlib.Path("srv"), "target": b"/"}, ValueError, "root must be absolute"),
        ({"root": pathlib.Path("/"), "target": "/"}, TypeError, "target must be bytes, not str"),
        (
            {"root": pathlib.Path("/"), "target": bytearray(b"/")},
            TypeError,
            "target must be bytes, not bytearray",
        ),
        ({"root": pathlib.Path("/"), "target": b"/", "index": None}, TypeError, "index must be"),
        ({"root": pathlib.Path("/"), "target": b"/", "index": ""}, ValueError, "single file name"),
        ({"root": pathlib.Path("/"), "target": b"/", "index": ".."}, ValueError, "single file"),
        ({"root": pathlib.Path("/"), "target": b"/", "index": "a/b"}, ValueError, "single file"),
    ],
)
def test_misuse(kwargs: dict[str, object], exc: type[Exception], message: str) -> None:
    root = kwargs.pop("root")
    target = kwargs.pop("target")
    with pytest.raises(exc, match=re.escape(message)):
        resolve_target(root, target, **kwargs)  # type: ignore[arg-type]


def test_resolution_is_frozen() -> None:
    res = Resolution(BAD, reason="x")
    with pytest.raises(AttributeError):
        res.status = FILE  # type: ignore[misc]


# Property: whatever bytes arrive, a FILE is a regular file inside the root and
# a REDIRECT points back into this origin.

_TOKENS = [
    b"/",
    b"//",
    b".",
    b"..",
    b"%2e",
    b"%2E",
    b"%2f",
    b"%5c",
    b"%00",
    b"%25",
    b"%c0%ae",
    b"\\",
    b"?",
    b"#",
    b"hello.txt",
    b"docs",
    b"index.html",
    b"link_out",
    b"link_dir_out",
    b"link_abs_out",
    b"link_sibling",
    b"link_in",
    b"link_dir_in",
    b"secret.txt",
    b"outside",
    b"root-sibling",
    b"fifo",
    b".git",
    b"config",
    b"%C3%A9.txt",
]

_targets = st.one_of(
    st.binary(max_size=64),
    st.lists(st.sampled_from(_TOKENS), max_size=12).map(b"".join),
    st.lists(st.sampled_from(_TOKENS), max_size=12).map(lambda parts: b"/" + b"".join(parts)),
)


@settings(max_examples=600, deadline=None)
@given(target=_targets, dotfiles=st.booleans(), autoindex=st.booleans())
def test_property_file_is_inside_root(
    tree: pathlib.Path, target: bytes, dotfiles: bool, autoindex: bool
) -> None:
    res = resolve_target(tree, target, serve_dotfiles=dotfiles, autoindex=autoindex)
    if res.status is ResolveStatus.DIRECTORY:
        assert autoindex
        assert res.path is not None and res.stat is not None
        assert os.path.commonpath((str(tree), str(res.path))) == str(tree)
        assert res.path == pathlib.Path(os.path.realpath(res.path))
        assert stat.S_ISDIR(res.stat.st_mode)
    elif res.status is FILE:
        assert res.path is not None and res.stat is not None
        assert os.path.commonpath((str(tree), str(res.path))) == str(tree)
        assert res.path == pathlib.Path(os.path.realpath(res.path))
        assert stat.S_ISREG(res.stat.st_mode)
        assert b"secret" not in res.path.read_bytes()
    elif res.status is REDIRECT:
        assert res.location is not None
        assert res.location.startswith(b"/") and not res.location.startswith(b"//")
        assert re.fullmatch(rb"[\x21-\x7e]+", res.location)
    else:
        assert res.path is None and res.stat is None


def test_control_pattern_is_unicode_category_cc() -> None:
    """The regex that refuses control characters matches exactly category Cc."""
    from server.http.resolve import _CONTROL

    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        assert bool(_CONTROL.search(ch)) == (unicodedata.category(ch) == "Cc"), hex(cp)


def _without_plain_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolve_mod, "_PLAIN_TARGET", re.compile(rb"(?!)"))


def _same(a: Resolution, b: Resolution) -> bool:
    stat_a = None if a.stat is None else (a.stat.st_dev, a.stat.st_ino, a.stat.st_mode)
    stat_b = None if b.stat is None else (b.stat.st_dev, b.stat.st_ino, b.stat.st_mode)
    return (a.status, a.path, a.location, stat_a) == (b.status, b.path, b.location, stat_b)


_PLAIN_CASES = [case[0] for case in OK_CASES if resolve_mod._PLAIN_TARGET.fullmatch(case[0])]


@pytest.mark.parametrize("target", [*_PLAIN_CASES, b"/hello.txt", b"/docs", b"/link_out", b"/nope"])
@pytest.mark.parametrize("follow", [False, True])
def test_plain_target_fast_path_matches_the_stages(
    tree: pathlib.Path, monkeypatch: pytest.MonkeyPatch, target: bytes, follow: bool
) -> None:
    """A target the fast path takes resolves exactly as stages 1-3 would have it."""
    assert resolve_mod._PLAIN_TARGET.fullmatch(target)
    fast = resolve_target(tree, target, follow_symlinks=follow, autoindex=True)
    _without_plain_fast_path(monkeypatch)
    slow = resolve_target(tree, target, follow_symlinks=follow, autoindex=True)
    assert _same(fast, slow), (fast, slow)


@settings(max_examples=300, deadline=None)
@given(target=_targets, dotfiles=st.booleans())
def test_property_plain_fast_path_matches_the_stages(
    tree: pathlib.Path, target: bytes, dotfiles: bool
) -> None:
    fast = resolve_target(tree, target, serve_dotfiles=dotfiles)
    with pytest.MonkeyPatch.context() as mp:
        _without_plain_fast_path(mp)
        slow = resolve_target(tree, target, serve_dotfiles=dotfiles)
    assert _same(fast, slow), (target, fast, slow)


@pytest.mark.parametrize(
    "name", ["hello.txt", "docs/page.html", "link_in", "link_dir_in/page.html", "docs", "nope"]
)
@pytest.mark.parametrize("follow", [False, True])
def test_locate_siblings_is_locate_str_of_each(tree: pathlib.Path, name: str, follow: bool) -> None:
    """One walk for FILE + each suffix answers as a walk per name does: missing
    names, symlinks in and out of the root (the full path decides), directories."""
    root = str(tree)
    suffixes = [".br", ".gz", "_in", "_out", "_dir_in", "_dir_out", "_abs_out", "_devnull"]
    path = os.path.join(root, name)
    got = resolve_mod.locate_siblings(root, path, suffixes, follow_symlinks=follow)
    want = [resolve_mod.locate_str(root, path + s, follow_symlinks=follow) for s in suffixes]
    key = [None if h is None else (h[0], h[1].st_ino, h[1].st_mode, h[2]) for h in got]
    want_key = [None if h is None else (h[0], h[1].st_ino, h[1].st_mode, h[2]) for h in want]
    assert key == want_key


def test_locate_siblings_of_link_names(tree: pathlib.Path) -> None:
    """`link` + "_in" etc.: the siblings of "link" are the tree's symlinks."""
    root = str(tree)
    path = os.path.join(root, "link")
    suffixes = ["_in", "_out", "_dir_in", "_dir_out", "_abs_out", "_devnull"]
    for follow in (False, True):
        got = resolve_mod.locate_siblings(root, path, suffixes, follow_symlinks=follow)
        want = [resolve_mod.locate_str(root, path + s, follow_symlinks=follow) for s in suffixes]
        assert [g and (g[0], g[1].st_ino) for g in got] == [w and (w[0], w[1].st_ino) for w in want]
        assert any(g is not None for g in got)


def test_locate_siblings_refuses_paths_as_suffixes(tree: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="suffixes"):
        resolve_mod.locate_siblings(str(tree), str(tree / "hello.txt"), ["/../x"])
