"""The dashboard and the demo page's "Your request" in a real browser.

Debian's headless Chromium (`apt-get install chromium`; `.ci/run` installs it)
driven by playwright (PyPI) through its `executable_path`: no browser is
downloaded. The load is curl fetching 1 MiB files over kept-alive
connections, bounded by a number of rounds; every wait in these tests is a
bound on waiting, never a speed assertion.

Set NOMAPD_SCREENSHOT_DIR to keep the screenshots (docs/ has the README's).
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from server.config import DEMO_SITE
from tests.integration.conftest import ServerProcess, serve

CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 30_000  # the longest any condition is waited for


class Load:
    """curl fetching `url` 16 times per round over one kept-alive connection,
    round after round until stopped (at most `rounds`)."""

    def __init__(self, url: str, rounds: int = 200) -> None:
        self.url = url
        self.rounds = rounds
        self.stop = threading.Event()
        self.done = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for _ in range(self.rounds):
            if self.stop.is_set():
                return
            subprocess.run(
                ["curl", "-sk", "--max-time", "60", *([self.url, "-o", "/dev/null"] * 16)],
                check=True,
            )
            self.done += 1

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=120)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def demo_server(state_dir: pathlib.Path) -> Iterator[ServerProcess]:
    yield from serve(DEMO_SITE, ["--access-log", "off"], state_dir)


def _admin(srv: ServerProcess, path: str = "/") -> str:
    return f"http://127.0.0.1:{srv.admin_port}{path}"


def _console(page: Page) -> list[str]:
    errors: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            errors.append(f"{msg.type}: {msg.text} ({msg.location.get('url')})")

    page.on("console", on_console)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    return errors


def _shot(page: Page, tmp_path: pathlib.Path, name: str) -> None:
    where = pathlib.Path(os.environ.get("NOMAPD_SCREENSHOT_DIR", tmp_path))
    page.screenshot(path=str(where / name), full_page=True)


def _number(text: str) -> float:
    """'4.8 MB' -> 4.8e6, '296' -> 296, '–' -> nan."""
    m = re.fullmatch(r"([0-9.]+)(?: ?([kMG]?)B?)?(?: %)?", text.strip())
    if not m:
        return math.nan
    return float(m.group(1)) * {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}[m.group(2) or ""]


def test_dashboard_loads_and_moves_under_load(
    demo_server: ServerProcess, browser: Browser, tmp_path: pathlib.Path
) -> None:
    srv = demo_server
    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    errors = _console(page)
    page.goto(_admin(srv))
    page.wait_for_selector("#status:text-matches('^live')", timeout=WAIT_MS)
    assert page.inner_text("#ifopts") == "<TXCSUM,TSO4,TSO6,TXCSUM_IPV6,NOMAP>"
    assert page.is_hidden("#controls")  # no token: read-only
    wire = '[data-metric="ifnet.tx_bytes"]'
    with Load(srv.url("/samples/pattern-1m.bin")):
        # The wire rate and the records rate become non-zero while the load runs.
        page.wait_for_function(
            """() => ["ifnet.tx_bytes", "ktls.records_framed", "mbuf.ext_pgs_total"].every(
                 k => /^[1-9]|^0\\.[0-9]*[1-9]/.test(
                   document.querySelector(`[data-metric="${k}"]`).textContent))""",
            timeout=WAIT_MS,
        )
        first = page.inner_text(wire)
        page.wait_for_function(
            f"t => document.querySelector('{wire}').textContent !== t", arg=first, timeout=WAIT_MS
        )
        assert _number(page.inner_text(wire)) > 0
        # Under the default NIC (NOMAP), ip_output converts nothing.
        assert page.inner_text('[data-metric="ip.unmapped_converted"]') == "0"
        points = page.get_attribute('[data-chart="ifnet.tx_bytes"]', "points") or ""
        assert len(points.split()) >= 2
        _shot(page, tmp_path, "dashboard.png")
    srv.assert_no_leaks()
    assert errors == []  # a 404 on /ifconfig too: the admin serves it
    page.close()


def _record(page: Page) -> dict[str, str]:
    page.wait_for_selector("#your-request:not([hidden])", timeout=WAIT_MS)
    rows = page.eval_on_selector_all(
        "#your-request tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    return {label: value for label, value in rows}


def _int(s: str) -> int:
    return int(s.replace(",", ""))


def test_demo_page_shows_its_own_request(
    demo_server: ServerProcess, browser: Browser, tmp_path: pathlib.Path
) -> None:
    srv = demo_server
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 900, "height": 1000})
    page = ctx.new_page()
    errors = _console(page)
    before = srv.stats()
    page.goto(srv.url("/"))
    rec = _record(page)
    size = (DEMO_SITE / "index.html").stat().st_size
    head, body = (_int(x) for x in rec["bytes (head + body)"].split(" + "))
    assert body == size
    assert rec["status"] == "200"
    assert rec["TLS"].startswith("TLS13")
    # The page's bytes in records of at most 16 KiB; TLS 1.3 session tickets
    # may leave with the first response on the connection.
    records = _int(rec["TLS records"])
    assert math.ceil((head + body) / 16384) <= records <= math.ceil((head + body) / 16384) + 2
    assert _int(rec["EXT_PGS (unmapped) mbufs"]) >= 1
    assert _int(rec["chains converted by ip_output"]) == 0
    assert _int(rec["sf_bufs"]) == 0
    assert _int(rec["bytes checksummed in software"]) == 0
    # On the wire: every byte, a 22-byte TLS 1.3 overhead per record, 40 bytes per segment.
    assert _int(rec["bytes on the modeled wire"]) >= head + body + 22 * records + 40
    after = srv.stats()
    # The connection's figures are a part of the whole server's over the same time.
    assert after["ktls.records_framed"] - before["ktls.records_framed"] >= records
    _shot(page, tmp_path, "demo-request.png")
    ctx.close()
    srv.assert_no_leaks()
    assert errors == []


def test_dashboard_flips_nomap(state_dir: pathlib.Path, browser: Browser) -> None:
    """With --admin-control, the page opened at the printed URL (#token=...) has
    buttons; turning nomap off under load makes conversions/s non-zero."""
    srv = ServerProcess(DEMO_SITE, ["--access-log", "off", "--admin-control"], state_dir)
    try:
        url = ""
        deadline = time.monotonic() + 10  # the start-up lines are all out by then
        while not url and time.monotonic() < deadline:
            for line in [*srv.stdout, *srv.stderr_lines]:
                if m := re.search(r"http://\S+/#token=\S+", line):
                    url = m.group(0)
            time.sleep(0.1)
        assert url, (srv.stdout, srv.stderr_lines)
        page = browser.new_page()
        errors = _console(page)
        page.goto(url)
        page.wait_for_selector("#controls:not([hidden])", timeout=WAIT_MS)
        conv = '[data-metric="ip.unmapped_converted"]'
        with Load(srv.url("/samples/pattern-1m.bin")):
            page.wait_for_function(
                """() => /^[1-9]/.test(
                     document.querySelector('[data-metric="ifnet.tx_bytes"]').textContent)""",
                timeout=WAIT_MS,
            )
            assert page.inner_text(conv) == "0"
            page.click('button[data-cap="nomap"]')
            page.wait_for_selector("#ifopts:not(:text-matches('NOMAP'))", timeout=WAIT_MS)
            page.wait_for_function(
                f"() => /^[1-9]/.test(document.querySelector('{conv}').textContent)",
                timeout=WAIT_MS,
            )
        stats: dict[str, Any] = srv.stats()
        assert stats["ip.unmapped_converted"] > 0
        srv.assert_no_leaks()
        assert errors == []
        page.close()
    finally:
        srv.stop()
