"""The admin listener's dashboard files and /stats/history, with curl, under --workers 2."""

from __future__ import annotations

import json
import pathlib
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from server.admin_web import UI_DIR
from tests.integration.conftest import ServerProcess, serve


@pytest.fixture(scope="module")
def workers(corpus: pathlib.Path, state_dir: pathlib.Path) -> Iterator[ServerProcess]:
    yield from serve(corpus, ["--workers", "2", "--access-log", "off"], state_dir)


def _curl(url: str, *args: str) -> tuple[dict[str, str], bytes]:
    out = subprocess.run(
        ["curl", "-s", "-D", "-", *args, url], check=True, capture_output=True
    ).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    fields[":status"] = lines[0].split()[1]
    return fields, body


def test_a_browser_gets_the_page_and_curl_the_index(workers: ServerProcess) -> None:
    base = f"http://127.0.0.1:{workers.admin_port}"
    page, body = _curl(f"{base}/", "-H", "Accept: text/html,application/xhtml+xml,*/*;q=0.8")
    assert page[":status"] == "200" and page["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in page["content-security-policy"]
    assert "default-src 'none'" in page["content-security-policy"]
    assert page["cache-control"] == "no-cache" and page["x-content-type-options"] == "nosniff"
    assert b'<script src="/ui/dashboard.js" defer></script>' in body
    for name, ctype in [("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")]:
        f, b = _curl(f"{base}/ui/{name}")
        assert f[":status"] == "200" and f["content-type"] == f"{ctype}; charset=utf-8"
        assert b == (UI_DIR / name).read_bytes()
    text, tbody = _curl(f"{base}/")  # curl's Accept: */*
    assert text["content-type"] == "text/plain; charset=utf-8" and b"GET /stats" in tbody
    assert text["vary"] == page["vary"] == "Accept"  # / is either, by Accept
    assert _curl(f"{base}/index.txt")[1] == tbody
    assert _curl(f"{base}/ui/admin.py")[0][":status"] == "404"


def test_history_is_the_sum_over_workers_once_a_second(workers: ServerProcess) -> None:
    base = f"http://127.0.0.1:{workers.admin_port}"
    for _ in range(4):
        subprocess.run(["curl", "-sk", "-o", "/dev/null", workers.url("/f16385.bin")], check=True)
    deadline = time.monotonic() + 30
    while True:  # the sampler has seen the requests
        hist: dict[str, Any] = json.loads(_curl(f"{base}/stats/history")[1])
        col = hist["keys"].index("server.requests")
        if hist["samples"][-1][col] >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert hist["interval"] == 1.0 and hist["keys"][0] == "time"
    rows = hist["samples"]
    assert rows[-1][col] >= 4
    assert all(len(r) == len(hist["keys"]) for r in rows)
    times = [r[0] for r in rows]
    assert times == sorted(times)
    wire = hist["keys"].index("ifnet.tx_bytes")
    assert rows[-1][wire] >= 4 * 16385
    stats = workers.stats()
    per = [w["server.cpu_seconds"] for w in stats["workers"]]
    assert all(c > 0 for c in per)
    assert stats["server.cpu_seconds"] == pytest.approx(sum(per))
    workers.assert_no_leaks()
