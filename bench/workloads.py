"""The workloads of the benchmark and the files they fetch.

Theory of operation. Each workload is one load-generator configuration: which
paths, how many connections, keep-alive or a new connection per request, and
which figure is its headline (`metric`: MB/s for bulk transfers, requests/s
for small ones).

- `1m`: a 1 MiB file over 8 kept-alive connections (bulk throughput).
- `16k`: a 16 KiB file over 32 kept-alive connections (per-request cost).
- `handshake`: a 1 KiB file, a new TCP and TLS connection for every request
  (`Connection: close` in the request; the server closes after the response
  and the client reconnects). wrk is the primary tool here: it measures for a
  fixed time, with latency percentiles, and keeps 16 connections cycling.
  `h2load --h1` with one request per client connection (`-n` = `-c`) would
  measure one burst of N connections, not a rate; h2load instead runs the
  same `Connection: close` workload with a request count (its timed mode
  hangs on reconnections, see `bench.h2load`). Both tools resume the TLS
  session when they reconnect (wrk keeps its SSL object across reconnects,
  h2load its session), and nomapd, nginx and hypercorn all accept resumption
  (`bench.tlsprobe` checks it per server): what is measured is TCP connect,
  a resumed TLS 1.3 handshake (PSK with ECDHE: a key exchange, no
  certificate signature) and one small response, alike for every server.
- `100m`: four 100 MiB files, 4 connections, keep-alive; the point is the
  server's peak memory (400 MiB of files against nomapd's 256 MiB
  `--phys-mem` page cache), so few responses complete in a short run and MB/s
  counts the bytes received, complete or not.
- `sweep-N`: the 1 MiB file over N connections; the sweep is
  1, 8, 64, 256, and its point 8 is the `1m` workload itself.

Workloads share a `group`: the servers are started fresh for each group, so
peaks reported by nomapd (`sockbuf.mbufs_peak`) belong to that group's runs.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1 << 10
MIB = 1 << 20

MB_S = "mb_s"
REQ_S = "req_s"

# name in the document root -> size in bytes
FILES: dict[str, int] = {
    "1m.bin": MIB,
    "16k.bin": 16 * KIB,
    "1k.bin": KIB,
    **{f"100m-{i}.bin": 100 * MIB for i in range(4)},
}

SWEEP = (1, 8, 64, 256)
QUICK_SWEEP = (1, 8, 256)


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    paths: tuple[str, ...]
    connections: int
    metric: str
    group: str
    keepalive: bool = True

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(p.lstrip("/") for p in self.paths)


ONE_MIB = Workload("1m", "1 MiB, keep-alive, 8 connections", ("/1m.bin",), 8, MB_S, "1m")
SMALL = Workload("16k", "16 KiB, keep-alive, 32 connections", ("/16k.bin",), 32, REQ_S, "16k")
HANDSHAKE = Workload(
    "handshake",
    "1 KiB, new connection per request, 16 connections",
    ("/1k.bin",),
    16,
    REQ_S,
    "handshake",
    keepalive=False,
)
HUGE = Workload(
    "100m",
    "4 x 100 MiB files, keep-alive, 4 connections (memory)",
    tuple(f"/100m-{i}.bin" for i in range(4)),
    4,
    MB_S,
    "100m",
)


def sweep_point(connections: int) -> Workload:
    return Workload(
        f"sweep-{connections}",
        f"1 MiB, keep-alive, {connections} connection{'s' if connections > 1 else ''}",
        ("/1m.bin",),
        connections,
        MB_S,
        "1m",
    )


def workloads(quick: bool) -> list[Workload]:
    """Every workload in run order; `quick` drops sweep point 64 (1 and 256 are kept)."""
    sweep = QUICK_SWEEP if quick else SWEEP
    out = [ONE_MIB, *(sweep_point(c) for c in sweep if c != ONE_MIB.connections)]
    return [*out, SMALL, HANDSHAKE, HUGE]


def sweep_names(available: list[Workload]) -> list[tuple[int, str]]:
    """(connections, workload name) of the sweep, the `1m` workload standing for its point."""
    names = {w.name for w in available}
    out: list[tuple[int, str]] = []
    for c in SWEEP:
        name = ONE_MIB.name if c == ONE_MIB.connections else f"sweep-{c}"
        if name in names:
            out.append((c, name))
    return out
