"""The netmap pipe bench: Mpps between two processes through a nomapd pipe, by batch size.

Theory of operation. `python -m bench.netmap` starts one nomapd server
(`--http`, its admin listener on a free port), then for each mode (a sync
system call per batch: NIOCTXSYNC / NIOCRXSYNC; or SYNC_KLOOP: the server's
kernel-loop threads sync, the programs make no system call) and each batch
size (1, 8, 64, 512, 2048) runs two `nomapd pkt-gen` processes over a fresh
pipe: `-f rx` on the master end (started first, and waited for until the
server's /stats shows its rings bound), then `-f tx -b BATCH` on the slave end,
64-byte packets. Each prints pkt-gen's summary; the row is the receiver's
"Speed: X Mpps" (packets delivered end to end over the receiver's time), with
the sender's beside it. The goal is the netmap seed's "100+ Mpps between
processes" for large batches (reference B.11, B.18).

Output: a table on stdout, and `bench/results/netmap-<UTC time>/` with
results.json, report.md (the table) and chart.svg (Mpps by batch, both modes,
log scale; written here as SVG text, no plotting library). It imports nothing
of `server` or `userland`: it runs their command lines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any

BATCHES = [1, 8, 64, 512, 2048]
MODES = ["sync", "kloop"]
LENGTH = 64
GOAL_MPPS = 100.0  # the seed's "100+ Mpps between processes" (netmap(4), the 2014 commit)
ROOT = pathlib.Path(__file__).resolve().parent.parent
SPEED = re.compile(r"Speed: ([0-9.]+) Mpps")


def packets_for(batch: int, scale: float) -> int:
    """Enough packets for a run of a few seconds at the speeds Python reaches."""
    return max(2000, int(min(400_000, 20_000 * max(1, batch // 8)) * scale))


class Server:
    """One nomapd server with its device directory and admin port."""

    def __init__(self, state: pathlib.Path) -> None:
        env = dict(os.environ, NOMAPD_STATE_DIR=str(state), PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "server", "serve", "--http", "--port", "0",
               "--admin", "127.0.0.1:0"]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.devices = ""
        self.admin = ""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        while not (self.devices and self.admin) and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if m := re.match(r"nomapd: devices in (\S+)", line):
                self.devices = m.group(1)
            if m := re.match(r"nomapd: counters on (\S+)", line):
                self.admin = m.group(1)
        if not (self.devices and self.admin):
            self.stop()
            raise RuntimeError("the server did not start")

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.admin, timeout=10) as r:
            doc: dict[str, Any] = json.load(r)
        return doc

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def pktgen(srv: Server, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "server", "pkt-gen", "--server", srv.devices, "-q", *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def speed(proc: subprocess.Popen[str]) -> float:
    _out, err = proc.communicate(timeout=900)
    m = SPEED.search(err)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"pkt-gen failed ({proc.returncode}): {err.strip()}")
    return float(m.group(1))


def one_run(srv: Server, mode: str, batch: int, count: int) -> dict[str, Any]:
    pipe = f"bench{batch}{mode}"
    flag = ["--kloop"] if mode == "kloop" else []
    rx = pktgen(srv, "-i", f"netmap:{pipe}{{0", "-f", "rx", "-n", str(count), "-l", str(LENGTH),
                *flag)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not any(r["pid"] == rx.pid for r in srv.stats()["netmap.ports"]):
            if time.monotonic() > deadline or rx.poll() is not None:
                raise RuntimeError(f"{pipe}: the receiver did not bind")
            time.sleep(0.05)
        tx = pktgen(srv, "-i", f"netmap:{pipe}}}0", "-f", "tx", "-n", str(count), "-b",
                    str(batch), "-l", str(LENGTH), *flag)  # fmt: skip
        tx_mpps = speed(tx)
        rx_mpps = speed(rx)
    finally:
        rx.kill()
        rx.wait()
    return {"mode": mode, "batch": batch, "packets": count, "length": LENGTH,
            "rx_mpps": rx_mpps, "tx_mpps": tx_mpps}  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    by = {(r["mode"], r["batch"]): r for r in rows}
    lines = [
        "| batch | sync per batch: Mpps (rx / tx) | SYNC_KLOOP: Mpps (rx / tx)"
        " | of the 100 Mpps goal |",
        "|---:|---:|---:|---:|",
    ]
    for b in BATCHES:
        cells = []
        best = 0.0
        for mode in MODES:
            r = by.get((mode, b))
            if r is None:
                cells.append("-")
                continue
            best = max(best, r["rx_mpps"])
            cells.append(f"{r['rx_mpps']:.3f} / {r['tx_mpps']:.3f}")
        lines.append(f"| {b} | {cells[0]} | {cells[1]} | {100 * best / GOAL_MPPS:.2f} % |")
    return "\n".join(lines) + "\n"


def chart_svg(rows: list[dict[str, Any]]) -> str:
    """Grouped bars of rx Mpps by batch (log scale, 0.001 to 1000), the goal as a line."""
    w, h, left, bottom, top = 640, 360, 60, 40, 30
    lo, hi = -3.0, 3.0  # log10 Mpps

    def y(v: float) -> float:
        t = (math.log10(max(v, 10**lo)) - lo) / (hi - lo)
        return h - bottom - t * (h - bottom - top)

    colors = {"sync": "#4c72b0", "kloop": "#dd8452"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           'font-family="sans-serif" font-size="11">',
           f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="13">netmap pipe between '
           'two processes, 64-byte packets: Mpps (log scale)</text>']  # fmt: skip
    for e in range(int(lo), int(hi) + 1):
        yy = y(10.0**e)
        out.append(f'<line x1="{left}" x2="{w - 10}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{10.0**e:g}</text>')
    gy = y(GOAL_MPPS)
    out.append(f'<line x1="{left}" x2="{w - 10}" y1="{gy:.1f}" y2="{gy:.1f}" stroke="#c44" '
               'stroke-dasharray="4 3"/>')  # fmt: skip
    out.append(f'<text x="{w - 12}" y="{gy - 4:.1f}" text-anchor="end" fill="#c44">'
               "goal: 100+ Mpps (netmap seed)</text>")  # fmt: skip
    slot = (w - 10 - left) / len(BATCHES)
    by = {(r["mode"], r["batch"]): r for r in rows}
    for i, b in enumerate(BATCHES):
        x0 = left + i * slot + slot * 0.15
        bw = slot * 0.35
        for j, mode in enumerate(MODES):
            r = by.get((mode, b))
            if r is None:
                continue
            yy = y(r["rx_mpps"])
            x = x0 + j * bw
            out.append(f'<rect x="{x:.1f}" y="{yy:.1f}" width="{bw - 2:.1f}" '
                       f'height="{h - bottom - yy:.1f}" fill="{colors[mode]}"/>')  # fmt: skip
            out.append(f'<text x="{x + bw / 2:.1f}" y="{yy - 3:.1f}" text-anchor="middle" '
                       f'font-size="9">{r["rx_mpps"]:.2f}</text>')  # fmt: skip
        out.append(f'<text x="{left + i * slot + slot / 2:.1f}" y="{h - bottom + 16}" '
                   f'text-anchor="middle">batch {b}</text>')  # fmt: skip
    for j, mode in enumerate(MODES):
        label = "a sync call per batch" if mode == "sync" else "SYNC_KLOOP (no sync call)"
        out.append(f'<rect x="{left + 10 + j * 200}" y="{h - 14}" width="10" height="10" '
                   f'fill="{colors[mode]}"/><text x="{left + 24 + j * 200}" y="{h - 5}">'
                   f"{label}</text>")  # fmt: skip
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.netmap", description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="packets per run, scaled (1.0)")
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "bench" / "results")
    ns = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="nomapd-netmap-bench-") as state:
        srv = Server(pathlib.Path(state))
        try:
            for mode in MODES:
                for b in BATCHES:
                    r = one_run(srv, mode, b, packets_for(b, ns.scale))
                    rows.append(r)
                    print(f"{mode:5} batch {b:4}: {r['rx_mpps']:.3f} Mpps received "
                          f"({r['tx_mpps']:.3f} sent)", flush=True)  # fmt: skip
            leaks = {k: v for k, v in srv.stats().items()
                     if k.startswith("netmap.") and k.endswith("_in_use") and v}  # fmt: skip
        finally:
            srv.stop()
    text = table(rows)
    print(text)
    if leaks:
        print(f"LEAKS: {leaks}", file=sys.stderr)
    out = ns.out / f"netmap-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    out.mkdir(parents=True, exist_ok=True)
    doc = {"rows": rows, "goal_mpps": GOAL_MPPS, "leaks": leaks, "python": sys.version}
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "report.md").write_text("# netmap pipe between two processes\n\n" + text)
    (out / "chart.svg").write_text(chart_svg(rows))
    print(f"written: {out}")
    return 1 if leaks else 0


if __name__ == "__main__":
    raise SystemExit(main())
