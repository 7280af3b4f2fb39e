"""plan() with an OpenFileCache: a hit skips resolution, and never serves a stale file."""

from __future__ import annotations

import os
import pathlib
import time

import h11
import pytest

from server.http.static import RACY_NS, FileReply, OpenFileCache, Simple, Site, plan


def _age(directory: pathlib.Path) -> None:
    """Stamp the directory well in the past, so its entries may be cached."""
    past = time.time() - 10 * RACY_NS / 1e9
    os.utime(directory, (past, past))


def _get(site: Site, cache: OpenFileCache, target: str, *headers: tuple[str, str]) -> FileReply:
    req = h11.Request(method="GET", target=target, headers=[("Host", "x"), *headers])
    reply = plan(req, site, cache)
    assert isinstance(reply, FileReply)
    return reply


def _body(reply: FileReply) -> bytes:
    try:
        return os.pread(reply.fd, reply.length, 0)
    finally:
        reply.close()


@pytest.fixture
def site(tmp_path: pathlib.Path) -> Site:
    (tmp_path / "a.txt").write_bytes(b"old")
    _age(tmp_path)
    return Site(tmp_path.resolve())


def test_second_request_hits(site: Site) -> None:
    cache = OpenFileCache()
    assert _body(_get(site, cache, "/a.txt")) == b"old"
    assert _body(_get(site, cache, "/a.txt")) == b"old"
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)


def test_replaced_file_is_served_new_at_once(site: Site) -> None:
    cache = OpenFileCache()
    first = _get(site, cache, "/a.txt")
    etag = dict(first.headers)[b"ETag"]
    assert _body(first) == b"old"
    new = site.root / "a.txt.new"
    new.write_bytes(b"new!")
    os.replace(new, site.root / "a.txt")
    second = _get(site, cache, "/a.txt")
    assert dict(second.headers)[b"ETag"] != etag
    assert _body(second) == b"new!"


def test_file_rewritten_in_place_is_served_new(site: Site) -> None:
    cache = OpenFileCache()
    assert _body(_get(site, cache, "/a.txt")) == b"old"
    (site.root / "a.txt").write_bytes(b"OLD")  # same inode, same size
    assert _body(_get(site, cache, "/a.txt")) == b"OLD"


def test_sidecar_created_after_caching_is_seen(site: Site) -> None:
    cache = OpenFileCache()
    gz = ("Accept-Encoding", "gzip")
    assert b"Vary" not in dict(_get(site, cache, "/a.txt", gz).headers)
    _get(site, cache, "/a.txt", gz).close()
    assert cache.hits == 1
    (site.root / "a.txt.gz").write_bytes(b"\x1f\x8b")
    reply = _get(site, cache, "/a.txt", gz)
    assert dict(reply.headers)[b"Content-Encoding"] == b"gzip"
    assert _body(reply) == b"\x1f\x8b"


def test_removed_file_is_not_found(site: Site) -> None:
    cache = OpenFileCache()
    _get(site, cache, "/a.txt").close()
    (site.root / "a.txt").unlink()
    req = h11.Request(method="GET", target="/a.txt", headers=[("Host", "x")])
    reply = plan(req, site, cache)
    assert isinstance(reply, Simple) and reply.status == 404
    assert len(cache) == 0


def test_directory_just_modified_is_not_cached(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"x")  # the directory's mtime is now: racy
    cache = OpenFileCache()
    _get(Site(tmp_path.resolve()), cache, "/a.txt").close()
    assert len(cache) == 0


def test_only_literal_targets_are_cached(site: Site) -> None:
    (site.root / "d").mkdir()
    (site.root / "d" / "index.html").write_bytes(b"i")
    _age(site.root / "d")
    cache = OpenFileCache()
    for target in ("/%61.txt", "/d/", "/a.txt?q=1"):
        _get(site, cache, target).close()
    assert len(cache) == 0
