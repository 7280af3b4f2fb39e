"""The admin listener's dashboard: its static files and the counters' recent history.

Theory of operation. The dashboard is three small hand-written files in
server/admin_ui/ (HTML, CSS, JavaScript; no library, no CDN, no font), read
once at import and served from memory with their types, `Cache-Control:
no-cache` (small, and a new server may bring new ones) and a Content
Security Policy that allows only this origin's own script, style and
fetches. The page polls GET /stats, /connections and /stats/history.

`StatsHistory` is a sampler in the admin process (the supervisor with
`--workers N`, whose /stats is the sum): once a second it reads the
counters the dashboard draws and keeps the last HISTORY_SAMPLES samples, so
a page opened now draws the last minutes at once (GET /stats/history). It
keeps HISTORY_SAMPLES x len(HISTORY_KEYS) numbers, whatever the traffic.
"""

from __future__ import annotations

import pathlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

UI_DIR = pathlib.Path(__file__).resolve().parent / "admin_ui"

# name under /ui/ -> content type; index.html is served at /.
_TYPES: Final = {
    "index.html": b"text/html; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
    "dashboard.js": b"text/javascript; charset=utf-8",
}

CSP: Final = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

# The counters the dashboard draws as rates, in the order /stats/history lists them.
HISTORY_KEYS: Final = (
    "vm.vnodepgsin",
    "sendfile.pages_valid",
    "sendfile.syscalls",
    "mbuf.ext_pgs_total",
    "mbuf.mbufs_total",
    "ktls.records_framed",
    "ktls.bytes_encrypted",
    "tcp.sndtotal",
    "tcp.sndbyte",
    "ip.unmapped_converted",
    "sfbuf.total",
    "ip.sw_csum_bytes",
    "ifnet.tx_packets",
    "ifnet.tx_bytes",
    "ifnet.tx_unmapped_mbufs",
    "server.requests",
    "server.cpu_seconds",
    "server.connections_active",
)
HISTORY_SAMPLES: Final = 300  # five minutes of one-second samples
HISTORY_INTERVAL: Final = 1.0


def _load_assets() -> dict[str, tuple[bytes, bytes]]:
    return {name: ((UI_DIR / name).read_bytes(), ctype) for name, ctype in _TYPES.items()}


ASSETS: Final = _load_assets()


def asset(path: bytes, accept: bytes) -> tuple[bytes, bytes] | None:
    """(body, content type) of the dashboard file at `path`, or None. `/` is the
    page for a browser (Accept names text/html) and the text index otherwise."""
    if path == b"/" and b"text/html" in accept:
        return ASSETS["index.html"]
    if path.startswith(b"/ui/"):
        return ASSETS.get(path[4:].decode("ascii", "replace"))
    return None


def asset_headers() -> list[tuple[bytes, bytes]]:
    return [
        (b"Cache-Control", b"no-cache"),
        (b"Vary", b"Accept"),  # / is the page or the text index
        (b"Content-Security-Policy", CSP),
        (b"X-Content-Type-Options", b"nosniff"),
        (b"Referrer-Policy", b"no-referrer"),
    ]


class StatsHistory:
    """The last HISTORY_SAMPLES samples of HISTORY_KEYS, one per HISTORY_INTERVAL."""

    def __init__(self, samples: int = HISTORY_SAMPLES) -> None:
        self.samples: deque[list[float]] = deque(maxlen=samples)

    def add(self, when: float, snap: dict[str, Any]) -> None:
        row = [round(when, 3)]
        for key in HISTORY_KEYS:
            v = snap.get(key, 0)
            if isinstance(v, float):  # CPU seconds: a sum over workers is a float sum
                v = round(v, 3)
            row.append(v if isinstance(v, (int, float)) and not isinstance(v, bool) else 0)
        self.samples.append(row)

    def as_json(self) -> dict[str, object]:
        return {
            "interval": HISTORY_INTERVAL,
            "keys": ["time", *HISTORY_KEYS],
            "samples": list(self.samples),
        }

    async def run(self, read: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        """Sample forever (until cancelled), at whole intervals of the loop's clock."""
        next_at = trio.current_time()
        while True:
            self.add(time.time(), await read())
            next_at = max(next_at + HISTORY_INTERVAL, trio.current_time())
            await trio.sleep_until(next_at)
