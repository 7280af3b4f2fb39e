"""`make bench`: the modes side by side, in one run, with the kernel's counters.

For each mode a fresh nomapd process serves one file; C client threads fetch
it N times each over kept-alive connections (Python's http.client + ssl, on
the same machine). The table shows, per MiB of body sent, what the modeled
kernel did (mbufs allocated, mbufs walked by tcp_output to find snd_nxt,
sf_bufs mapped, chains converted, bytes checksummed in software), the largest
socket buffer in mbufs, and the server's CPU seconds per MiB, with ratios to
the first mode. Absolute times depend on the machine; compare ratios.

Usage: python -m bench [--size 4M] [--clients 4] [--requests 8] [--modes a,b,...]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pathlib
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

MODES: dict[str, list[str]] = {
    "ktls+nomap": [],
    "ktls-nomap": ["--no-nomap"],
    "ktls-txcsum": ["--no-txcsum"],
    "user-tls": ["--no-ktls"],
    "http+nomap": ["--http"],
    "http-sfbuf": ["--http", "--no-sendfile-nomap"],
}


def _start(root: pathlib.Path, args: list[str], state: pathlib.Path) -> tuple[Any, int, int]:
    cmd = [sys.executable, "-m", "server", "serve", str(root), "--port", "0"]
    cmd += ["--admin", "127.0.0.1:0", *args]
    env = dict(os.environ, NOMAPD_STATE_DIR=str(state), PYTHONUNBUFFERED="1")
    errf = open(state.parent / "server.err", "a")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf, text=True, env=env)
    port = admin = 0
    assert proc.stdout is not None
    while not (port and admin):
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench: server failed to start with {args}")
        if m := re.search(r"serving .* on https?://127\.0\.0\.1:(\d+)/", line):
            port = int(m.group(1))
        if m := re.search(r"counters on http://127\.0\.0\.1:(\d+)/", line):
            admin = int(m.group(1))
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, port, admin


def _stats(admin: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=10) as r:
        data: dict[str, Any] = json.load(r)
        return data


def _in_use(s: dict[str, Any]) -> int:
    keys = [k for k in s if k.endswith("_in_use") and k.startswith("mbuf.")]
    keys += ["sfbuf.in_use", "vm.pages_wired", "vm.pages_anon", "vm.pages_reserved"]
    return sum(int(s[k]) for k in keys)


def _idle_stats(admin: int, timeout: float = 10.0) -> dict[str, Any]:
    """Counters once the last connection has closed (teardown is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        s = _stats(admin)
        if not s["server.connections_active"] and not _in_use(s):
            return s
        if time.monotonic() > deadline:
            return s
        time.sleep(0.05)


def _cpu(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _client(port: int, tls: bool, path: str, n: int, size: int, errors: list[str]) -> None:
    try:
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", port, context=ctx, timeout=120
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(n):
            conn.request("GET", path)
            resp = conn.getresponse()
            got = 0
            while chunk := resp.read(1 << 20):
                got += len(chunk)
            if resp.status != 200 or got != size:
                errors.append(f"status {resp.status}, {got} bytes")
                return
        conn.close()
    except OSError as e:
        errors.append(str(e))


def run_mode(
    name: str, root: pathlib.Path, size: int, clients: int, requests: int, state: pathlib.Path
) -> dict[str, float]:
    proc, port, admin = _start(root, MODES[name], state)
    try:
        tls = "--http" not in MODES[name]
        errors: list[str] = []
        _client(port, tls, "/bench.bin", 1, size, errors)  # warm the page cache
        before, cpu0, t0 = _stats(admin), _cpu(proc.pid), time.monotonic()
        threads = [
            threading.Thread(target=_client, args=(port, tls, "/bench.bin", requests, size, errors))
            for _ in range(clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall, cpu = time.monotonic() - t0, _cpu(proc.pid) - cpu0
        after = _idle_stats(admin)
        if errors:
            err = (state.parent / "server.err").read_text()[-3000:]
            raise SystemExit(f"bench: {name}: {errors[:3]}\n{err}")
        mib = clients * requests * size / (1 << 20)

        def per_mib(key: str) -> float:
            return float(after[key] - before[key]) / mib

        return {
            "MiB/s": mib / wall,
            "cpu s/GiB": cpu / mib * 1024,
            "mbufs/MiB": per_mib("mbuf.mbufs_total"),
            "walked/MiB": per_mib("tcp.sndptr_walked"),
            "sfbufs/MiB": per_mib("sfbuf.total"),
            "converted/MiB": per_mib("ip.unmapped_converted"),
            "csum KiB/MiB": per_mib("ip.sw_csum_bytes") / 1024,
            "sb mbufs peak": float(after["sockbuf.mbufs_peak"]),
            "leaked": float(
                sum(
                    after[k]
                    for k in after
                    if k.endswith("_in_use") and k.startswith(("mbuf.", "sfbuf."))
                )
            ),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=_size, default=_size("4M"))
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--modes", default=",".join(MODES))
    ns = p.parse_args()
    modes = ns.modes.split(",")
    for m in modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r} (known: {', '.join(MODES)})")
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp) / "root"
        root.mkdir()
        (root / "bench.bin").write_bytes(os.urandom(ns.size))
        results = {
            m: run_mode(m, root, ns.size, ns.clients, ns.requests, pathlib.Path(tmp) / "s")
            for m in modes
        }
    cols = list(next(iter(results.values())))
    print(f"# {ns.clients} clients x {ns.requests} requests x {ns.size} bytes, one run")
    print("| mode | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    base = results[modes[0]]
    for m, r in results.items():
        cells = []
        for c in cols:
            v = r[c]
            ratio = (
                f" ({v / base[c]:.2f}x)"
                if base[c] and m != modes[0] and c in ("MiB/s", "cpu s/GiB")
                else ""
            )
            cells.append(f"{v:.1f}{ratio}")
        print(f"| {m} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
