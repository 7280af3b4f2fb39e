"""wrk: the command line for a workload, and its output parsed.

Theory of operation. wrk (4.1, Debian's package) keeps `-c` connections busy
from `-t` threads for `-d` whole seconds and prints, with `--latency`, the
latency percentiles of completed requests. Details that matter here:

- `-d` takes whole seconds only ("1500ms" is refused); shorter runs round up.
- `--timeout` (default 2 s) only counts a request as a "timeout" socket error
  and drops its latency sample; the connection goes on. With 256 connections
  each waiting its turn for a 1 MiB response, a slow server would lose most
  latency samples, so the bench raises it (`TIMEOUT`).
- Several paths (the four 100 MiB files) need a Lua script; `script()`
  writes one that takes the paths in turn, one per request.
- `Connection: close` in the request makes the server close after each
  response; wrk then reconnects, keeping its SSL object, so the TLS session is
  resumed (TLS 1.3 PSK with ECDHE) on the servers that issue tickets.
- The summary: "N requests in Xs, Y read" (Y in binary units, counting every
  byte read, complete responses or not), "Requests/sec", optional
  "Socket errors: connect A, read B, write C, timeout D" and
  "Non-2xx or 3xx responses: N". A run that completes no request prints
  0.00us latencies, which are dropped rather than reported as zero.
- If it cannot connect at all it prints "unable to connect to ..." and exits 1
  with no summary: `parse` raises `ParseError`.
"""

from __future__ import annotations

import hashlib
import math
import pathlib
import re

from bench.load import LoadResult, ParseError, parse_bytes, parse_ms

TIMEOUT = 60  # seconds, wrk's --timeout

_PERCENTILES = {"50": "p50", "75": "p75", "90": "p90", "99": "p99"}


def script(paths: tuple[str, ...], directory: pathlib.Path) -> pathlib.Path:
    """A Lua script sending GET for each of `paths` in turn."""
    items = ", ".join(f'"{p}"' for p in paths)
    body = (
        f"local paths = {{{items}}}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i % #paths + 1\n"
        "  return wrk.format(nil, paths[i])\n"
        "end\n"
    )
    path = directory / f"wrk-{hashlib.sha1(body.encode()).hexdigest()[:12]}.lua"
    path.write_text(body)
    return path


def command(
    base_url: str,
    paths: tuple[str, ...],
    connections: int,
    duration: float,
    threads: int,
    keepalive: bool,
    script_dir: pathlib.Path,
    binary: str = "wrk",
) -> list[str]:
    argv = [binary, f"-t{min(threads, connections)}", f"-c{connections}"]
    argv += [f"-d{max(1, math.ceil(duration))}s", f"--timeout={TIMEOUT}s", "--latency"]
    if not keepalive:
        argv += ["-H", "Connection: close"]
    if len(paths) > 1:
        argv += ["-s", str(script(paths, script_dir))]
    return [*argv, base_url + paths[0]]


def parse(text: str) -> LoadResult:
    r = LoadResult("wrk")
    m = re.search(r"^\s*(\d+) requests in ([\d.]+\w+), ([\d.]+[KMGTP]?B) read", text, re.M)
    if not m:
        first = text.strip().splitlines()[:1]
        raise ParseError(f"wrk printed no summary: {first[0] if first else 'nothing'}")
    r.requests = int(m.group(1))
    r.seconds = parse_ms(m.group(2)) / 1e3
    r.bytes = parse_bytes(m.group(3))
    if m := re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M):
        r.req_s = float(m.group(1))
    elif r.seconds:
        r.req_s = r.requests / r.seconds
    if r.requests:
        if m := re.search(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)\s", text, re.M):
            r.latency_ms["mean"] = parse_ms(m.group(1))
            r.latency_ms["stdev"] = parse_ms(m.group(2))
            r.latency_ms["max"] = parse_ms(m.group(3))
        for pct, value in re.findall(r"^\s*(\d+)%\s+(\S+)\s*$", text, re.M):
            if pct in _PERCENTILES:
                r.latency_ms[_PERCENTILES[pct]] = parse_ms(value)
        if r.latency_ms.get("max") == 0.0:  # every request timed out: no samples
            r.latency_ms = {}
            r.notes.append("no latency samples (every request exceeded wrk's --timeout)")
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    for i, key in enumerate(("connect", "read", "write", "timeout"), 1):
        r.errors[key] = int(m.group(i)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    r.errors["non_2xx_3xx"] = int(m.group(1)) if m else 0
    return r
