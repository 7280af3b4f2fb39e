"""A page asks about its own response: Server-Timing's id and /.well-known/nomapd/request/ID.

curl fetches a page and, on the same kept-alive connection, the record its
Server-Timing header names; the figures must add up to the page's size in
the mode the server runs (records of at most 16 KiB; with --no-nomap, one
conversion per TSO burst and an sf_buf per page).
"""

from __future__ import annotations

import http.client
import json
import math
import pathlib
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import ServerProcess, serve
from tests.support.clients import client_context

PAGE = 200 * 1024 + 5  # 51 pages: several records, several TSO bursts


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("pages")
    (root / "big.html").write_text("<!doctype html><title>big</title>\n" + "x" * (PAGE - 34))
    (root / "data.bin").write_bytes(b"\0" * 5000)
    return root


def _start(site: pathlib.Path, state: pathlib.Path, args: list[str]) -> Iterator[ServerProcess]:
    yield from serve(site, ["--access-log", "off", *args], state)


def _head(srv: ServerProcess, path: str) -> str:
    """The response head curl receives for `path`."""
    return subprocess.run(
        ["curl", "-sk", "-D", "-", "-o", "/dev/null", srv.url(path)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


@pytest.fixture(scope="module")
def nonomap(site: pathlib.Path, state_dir: pathlib.Path) -> Iterator[ServerProcess]:
    yield from _start(site, state_dir, ["--no-nomap"])


@pytest.fixture(scope="module")
def two_workers(site: pathlib.Path, state_dir: pathlib.Path) -> Iterator[ServerProcess]:
    yield from _start(site, state_dir, ["--workers", "2"])


def _page_and_record(srv: ServerProcess, path: str) -> tuple[str, int, dict[str, Any]]:
    """The page, then on the same kept-alive connection the record its
    Server-Timing header names: (id, status, JSON answer)."""
    conn = http.client.HTTPSConnection(srv.host, srv.port, context=client_context(), timeout=30)
    try:
        conn.request("GET", path)
        page = conn.getresponse()
        page.read()
        m = re.fullmatch(r'nomapd;desc="([^"]+)"', page.getheader("Server-Timing") or "")
        assert m, page.getheaders()
        conn.request("GET", f"/.well-known/nomapd/request/{m.group(1)}")
        r = conn.getresponse()
        return m.group(1), r.status, json.loads(r.read())
    finally:
        conn.close()


def test_the_record_adds_up_without_nomap(nonomap: ServerProcess) -> None:
    srv = nonomap
    head = _head(srv, "/big.html")
    rid = re.search(r'(?im)^server-timing: nomapd;desc="(w0-[A-Za-z0-9_-]{22})"\r?$', head)
    assert rid, head
    # A second connection asks: the id is what it needs, not the connection.
    asked = subprocess.run(
        ["curl", "-sk", "--fail", srv.url(f"/.well-known/nomapd/request/{rid.group(1)}")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    rec = json.loads(asked.stdout)
    total = rec["head_bytes"] + rec["body_bytes"]
    assert rec["body_bytes"] == rec["content_length"] == PAGE
    assert rec["status"] == 200 and rec["id"] == rid.group(1)
    assert math.ceil(total / 16384) <= rec["records"] <= math.ceil(total / 16384) + 2
    assert rec["ext_pgs"] >= rec["records"] - 2  # the page's records are EXT_PGS mbufs
    # No NOMAP on nm0: every burst is converted, every ciphertext page mapped.
    assert rec["conversions"] >= math.ceil(total / 65536)
    assert rec["conversions"] <= rec["packets"]
    assert rec["sf_bufs"] >= PAGE // 4096
    assert rec["csum_bytes"] == 0  # TXCSUM is still on
    assert rec["wire_bytes"] >= total + 22 * rec["records"] + 40 * rec["packets"]
    assert set(rec) == {
        "id", "status", "content_length", "head_bytes", "body_bytes", "records", "ext_pgs",
        "mbufs", "conversions", "sf_bufs", "csum_bytes", "packets", "wire_bytes", "tls", "suite",
    }  # fmt: skip
    srv.assert_no_leaks()


def test_only_pages_carry_an_id_and_unknown_ids_are_404(nonomap: ServerProcess) -> None:
    srv = nonomap
    head = _head(srv, "/data.bin")
    assert "server-timing" not in head.lower()
    # HEAD sends no page, so there is nothing to ask about.
    head_only = subprocess.run(
        ["curl", "-skI", srv.url("/big.html")], check=True, capture_output=True, text=True
    ).stdout
    assert head_only.startswith("HTTP/1.1 200") and "server-timing" not in head_only.lower()
    for rid, answer in [
        ("w0-AAAAAAAAAAAAAAAAAAAAAA", {"error": "unknown"}),
        ("w5-AAAAAAAAAAAAAAAAAAAAAA", {"error": "elsewhere", "worker": 5}),
        ("w" + "1" * 5000 + "-x", {"error": "unknown"}),  # too long for an index: no int()
    ]:
        r = subprocess.run(
            ["curl", "-sk", "-w", "\n%{http_code} %{content_type}",
             srv.url(f"/.well-known/nomapd/request/{rid}")],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        body, status = r.rsplit("\n", 1)
        assert status == "404 application/json"
        assert json.loads(body) == answer
    srv.assert_no_leaks()


def test_with_two_workers_the_page_s_connection_finds_its_record(
    two_workers: ServerProcess,
) -> None:
    """The follow-up on the page's own kept-alive connection reaches the worker
    that served the page, whichever it is."""
    srv = two_workers
    served = set()
    for _ in range(8):
        rid, status, rec = _page_and_record(srv, "/big.html")
        assert status == 200 and rec["id"] == rid and rec["body_bytes"] == PAGE
        served.add(rid[:2])
    assert served <= {"w0", "w1"}
    stats = srv.stats()
    assert [w["server.requests"] for w in stats["workers"]] != [0, 0]
    srv.assert_no_leaks()
