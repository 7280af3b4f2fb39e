"""`nomapd top`: the data path's stages and their rates per worker, live in the terminal.

Theory of operation. Every DELAY seconds (1 by default) `top` reads the admin
listener's /stats (each worker's own counters under "workers" with
`--workers N`, the one process's otherwise) and /connections, and draws with
curses: one row per stage of the transmit path as the README draws it (page
cache -> sendfile -> KTLS -> socket buffer -> tcp_output -> ip_output -> NIC),
one column per worker with the stage's rate since the last read, then the
busiest connections by bytes written per second. `q` quits (so does Ctrl-C).

The drawing is `render(prev, cur, conns, dt)`, a list of lines computed from
two reads, so it can be read and tested without a terminal; `run_top` only
fetches, times and paints.

Models: top(1)'s refresh-and-repaint loop; the rates are `netstat -w`'s
deltas divided by the interval.
"""

from __future__ import annotations

import curses
import sys
import time
from collections.abc import Callable
from typing import Any

from server.config import ConfigError
from server.stat import fetch

Snap = dict[str, Any]


def _k(key: str) -> Callable[[Snap], int]:
    return lambda s: int(s.get(key, 0))


# (stage, what, counter): the rows, in the order data moves.
STAGES: list[tuple[str, str, Callable[[Snap], int]]] = [
    ("page cache", "pages read/s", _k("vm.vnodepgsin")),
    ("sendfile", "calls/s", _k("sendfile.syscalls")),
    ("sf_bufs", "mappings/s", _k("sfbuf.total")),
    ("KTLS", "records/s", _k("ktls.records_encrypted")),
    ("KTLS", "bytes/s", _k("ktls.bytes_encrypted")),
    ("mbufs", "EXT_PGS/s", _k("mbuf.ext_pgs_total")),
    ("mbufs", "mapped/s", lambda s: _k("mbuf.mbufs_total")(s) - _k("mbuf.ext_pgs_total")(s)),
    ("tcp_output", "packets/s", _k("tcp.sndtotal")),
    ("ip_output", "conversions/s", _k("ip.unmapped_converted")),
    ("ip_output", "csum bytes/s", _k("ip.sw_csum_bytes")),
    ("nm0", "segments/s", _k("ifnet.tx_segments")),
    ("nm0", "wire bytes/s", _k("ifnet.tx_bytes")),
    ("nm0", "drops/s", lambda s: _k("ip.odropped")(s) + _k("ifnet.tx_lost")(s)),
]
BUSIEST = 8  # connections listed


def per_worker(stats: Snap) -> list[tuple[str, Snap]]:
    """(label, counters) per worker: "workers" with --workers N, else the one process."""
    workers = stats.get("workers")
    if isinstance(workers, list) and workers:
        return [(f"worker {w.get('worker.index', i)}", w) for i, w in enumerate(workers)]
    return [("worker 0", stats)]


def _rate(v: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.1f}{unit}"
    return f"{v:.0f}"


def render(prev: Snap, cur: Snap, conns: list[dict[str, Any]], prev_conns: dict[str, int],
           dt: float) -> list[str]:  # fmt: skip
    """The screen's lines for two reads `dt` seconds apart (`prev` empty: no rates yet)."""
    now, before = per_worker(cur), dict(per_worker(prev)) if prev else {}
    head = f"{'stage':<11} {'':<14}" + "".join(f"{label:>12}" for label, _ in now)
    lines = [
        f"nomapd top: {cur.get('server.mode', '?')}, {cur.get('server.core', '?')}, "
        f"{len(now)} worker(s), {cur.get('server.connections_active', 0)} connection(s)"
        "   (q quits)",
        "",
        head,
    ]
    for stage, what, f in STAGES:
        cells = []
        for label, snap in now:
            old = before.get(label)
            cells.append("-" if old is None or dt <= 0 else _rate(max(0, f(snap) - f(old)) / dt))
        lines.append(f"{stage:<11} {what:<14}" + "".join(f"{c:>12}" for c in cells))
    lines += ["", f"{'busiest connections':<28}{'worker':>7}{'requests':>10}{'bytes/s':>10}"]
    ranked = []
    for c in conns:
        ident = f"{c.get('worker', 0)} {c.get('peer', '?')}"
        sent = int(c.get("bytes_written", 0))
        rate = (sent - prev_conns[ident]) / dt if ident in prev_conns and dt > 0 else 0.0
        ranked.append((rate, sent, c))
    ranked.sort(key=lambda r: (r[0], r[1]), reverse=True)
    for rate, _, c in ranked[:BUSIEST]:
        lines.append(
            f"{c.get('peer', '?')!s:<28}{c.get('worker', 0)!s:>7}"
            f"{c.get('requests', 0)!s:>10}{_rate(rate):>10}"
        )
    if not conns:
        lines.append("(none open)")
    return lines


def conn_bytes(conns: list[dict[str, Any]]) -> dict[str, int]:
    return {f"{c.get('worker', 0)} {c.get('peer', '?')}": int(c.get("bytes_written", 0))
            for c in conns}  # fmt: skip


def _loop(scr: curses.window, admin: tuple[str, int], delay: float) -> None:
    curses.curs_set(0)
    scr.timeout(100)
    prev: Snap = {}
    prev_conns: dict[str, int] = {}
    last = 0.0
    next_at = 0.0
    while True:
        now = time.monotonic()
        if now >= next_at:
            try:
                cur = fetch(admin)
                conns = fetch(admin, path="/connections")
                lines = render(prev, cur, conns, prev_conns, now - last if prev else 0.0)
                prev, prev_conns, last = cur, conn_bytes(conns), now
            except ConfigError as e:
                lines = [f"nomapd top: {e}   (q quits)"]
            scr.erase()
            height, width = scr.getmaxyx()
            for y, line in enumerate(lines[: height - 1]):
                scr.addnstr(y, 0, line, width - 1)
            scr.refresh()
            next_at = now + delay
        if scr.getch() in (ord("q"), ord("Q")):
            return


def run_top(admin: tuple[str, int], delay: float = 1.0) -> int:
    fetch(admin)  # unreachable: the one-line error and exit 2 before the screen changes
    if not (sys.stdin.isatty() and sys.stdout.isatty()):  # top(1): "failed tty get"
        raise ConfigError("top: needs a terminal (nomapd stat -w 1 prints lines)")
    try:
        curses.setupterm()
    except curses.error as e:  # TERM unset or not in terminfo
        raise ConfigError(f"top: {e}") from None
    curses.wrapper(_loop, admin, delay)
    return 0
