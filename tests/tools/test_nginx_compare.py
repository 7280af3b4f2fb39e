"""tools/nginx_compare without nginx: its document root, its response parser, its diff.

The whole tool needs nginx and is a report, not a test; these hold the parts
whose mistakes would make the report lie.
"""

from __future__ import annotations

import gzip
import pathlib

import brotli
import pytest

from tools.nginx_compare.cases import CASES, Case, req
from tools.nginx_compare.client import Exchange, Incomplete, NotHttp, Response, parse_response
from tools.nginx_compare.diff import compare
from tools.nginx_compare.docroot import FIXED_MTIME, TEXT, build_docroot


def test_the_docroot_has_valid_sidecars_and_one_mtime(tmp_path: pathlib.Path) -> None:
    root, files = build_docroot(tmp_path)
    assert brotli.decompress((root / "text.txt.br").read_bytes()) == TEXT
    assert gzip.decompress((root / "text.txt.gz").read_bytes()) == TEXT
    for rel in files:
        if not rel.endswith("(target)"):
            assert (root / rel).lstat().st_mtime == FIXED_MTIME, rel
    assert (root / "escape.txt").is_symlink()


def test_case_names_are_unique() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)) > 100


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
BY_LENGTH = HEAD + b"Content-Length: 5\r\n\r\nhello"
CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n"


@pytest.mark.parametrize("wire", [BY_LENGTH, CHUNKED], ids=["length", "chunked"])
def test_a_response_parses_whole_and_not_before_its_last_byte(wire: bytes) -> None:
    resp, used = parse_response(wire + b"HTTP/1.1 next", b"GET", eof=False)
    assert (resp.status, resp.body, used) == (200, b"hello", len(wire))
    for n in range(len(wire)):  # byte by byte: incomplete until the last one
        with pytest.raises(Incomplete):
            parse_response(wire[:n], b"GET", eof=False)


def test_head_has_no_body_and_garbage_is_not_http() -> None:
    resp, used = parse_response(BY_LENGTH[: -len(b"hello")], b"HEAD", eof=False)
    assert (resp.body, resp.framing, used) == (b"", "none", len(BY_LENGTH) - 5)
    with pytest.raises(NotHttp):
        parse_response(b"SSH-2.0-x\r\n\r\n", b"GET", eof=False)


def _exchange(status: int, *headers: tuple[str, str]) -> Exchange:
    return Exchange([Response(status, "", "HTTP/1.1", list(headers), b"", "none")], "open")


def test_compare_shows_only_what_differs() -> None:
    case = Case("c", "g", (req("GET", "/"),))
    same = compare(case, _exchange(304), _exchange(304), {}, (1, 2), "")
    assert same.diffs == []
    etag = compare(case, _exchange(304, ("ETag", '"a"')), _exchange(304), {}, (1, 2), "")
    assert etag.diffs == ["ETag: strong vs -"]
    status = compare(case, _exchange(404, ("ETag", '"a"')), _exchange(403), {}, (1, 2), "")
    assert status.diffs == ["status: 404 vs 403"]
