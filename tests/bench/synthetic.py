"""Synthetic run records for the tests of aggregation, ratios, targets and the report."""

from __future__ import annotations

from bench import capture
from bench.capture import CaptureRun
from bench.load import LoadResult
from bench.results import RunRecord
from bench.rows import BY_NAME, ROWS
from bench.summary import Summary
from bench.workloads import HANDSHAKE, HUGE, MIB, ONE_MIB, SMALL, Workload, sweep_point

WORKLOADS: list[Workload] = [
    ONE_MIB,
    sweep_point(1),
    sweep_point(64),
    sweep_point(256),
    SMALL,
    HANDSHAKE,
    HUGE,
]

# headline figure (MB/s or requests/s) per row, the same for every workload
SPEED = {
    "nomapd-default": 800.0,
    "nomapd-default-pure": 450.0,
    "nomapd-no-nomap": 700.0,
    "nomapd-no-nomap-no-txcsum": 300.0,
    "nomapd-loss": 750.0,
    "nomapd-no-nomap-loss": 650.0,
    "nomapd-no-ktls": 600.0,
    "nomapd-http": 1500.0,
    "nomapd-http-no-sendfile-nomap": 1200.0,
    "nomapd-no-nomap-pure": 400.0,
    "nomapd-http-pure": 900.0,
    "nomapd-http-no-sendfile-nomap-pure": 800.0,
    "nomapd-capture-zbuf-96": 780.0,
    "nomapd-capture-buffer-96": 760.0,
    "nomapd-capture-zbuf-full": 700.0,
    "nomapd-capture-buffer-full": 600.0,
    "nginx": 1000.0,
    "nginx-http": 2000.0,
    "hypercorn": 100.0,
    "hypercorn-http": 200.0,
}
CPU_PER_GB = {
    "nomapd-default": 8.0,
    "nomapd-no-nomap": 10.0,
    "nomapd-capture-zbuf-96": 8.5,
    "nomapd-capture-buffer-96": 9.0,
    "nomapd-capture-zbuf-full": 10.0,
    "nomapd-capture-buffer-full": 12.0,
}
# the capture process's CPU seconds per GB, and its drops per 10,000 packets at 64 connections
CAPTURE_CPU_PER_GB = {"zbuf": 2.0, "buffer": 3.0}
DROPS_AT_64 = {"zbuf": 100, "buffer": 400}
PACKETS = 10_000


def record(
    workload: Workload,
    row: str,
    tool: str = "wrk",
    rep: int = 0,
    speed: float | None = None,
    error: str = "",
) -> RunRecord:
    speed = SPEED[row] if speed is None else speed
    seconds = 2.0
    if workload.metric == "mb_s":
        nbytes = int(speed * 1e6 * seconds)
        req_s = speed / 1.048576
    else:
        nbytes = int(speed * seconds * 1000)
        req_s = speed
    load = LoadResult(
        tool,
        requests=int(req_s * seconds),
        seconds=seconds,
        bytes=nbytes,
        req_s=req_s,
        latency_ms={"p50": 1.0 + rep, "p99": 5.0 + rep, "mean": 2.0},
        errors={"timeout": 0},
    )
    cpu = CPU_PER_GB.get(row, 4.0) * nbytes / 1e9
    rec = RunRecord(workload.name, row, tool, rep, seconds, ["tool"], error=error)
    if not error:
        rec.load = load
        rec.cpu_s = cpu
        rec.peak_rss = (200 if row.startswith("nomapd") else 20) * MIB + rep * MIB
        rec.rss_method = "VmHWM after reset"
        if row.startswith("nomapd"):
            rec.counters = {
                "mbufs": 1000.0 + rep,
                "ext_pgs": 300.0,
                "sockbuf_mbufs_peak": 5.0 + rep,
            }
        cap = BY_NAME[row].capture
        if cap is not None:
            run = CaptureRun(cap.mode, cap.snaplen, source="stderr")
            run.cpu_s = CAPTURE_CPU_PER_GB[cap.mode] * nbytes / 1e9
            run.received = PACKETS
            run.dropped = DROPS_AT_64[cap.mode] if workload.connections == 64 else 0
            run.captured = PACKETS - run.dropped
            rec.capture = run
            rec.counters["bpf_read_bytes"] = 0.0 if cap.mode == "zbuf" else 5e8
    return rec


def records(tools: tuple[str, ...] = ("wrk", "h2load"), reps: int = 1) -> list[RunRecord]:
    """Every row's runs as the plan has them (capture rows on capture.WORKLOADS with wrk)."""
    return [
        record(w, row.name, tool, rep)
        for w in WORKLOADS
        for rep in range(reps)
        for row in ROWS
        for tool in tools
        if row.capture is None or capture.runs_on(w.name, tool)
    ]


def summary(recs: list[RunRecord], tools: tuple[str, ...] = ("wrk", "h2load")) -> Summary:
    s = Summary(
        meta={
            "date": "2026-01-02T03:04:05+00:00",
            "command": "python -m bench --quick",
            "quick": True,
            "duration": 1.0,
            "repeat": 1,
            "threads": 1,
            "only": None,
            "nomapd_args": [],
            "phys_mem": 256 * MIB,
            "wall_s": 99.0,
        },
        machine={
            "cpu_model": "Test CPU",
            "cores": 2,
            "memory_bytes": 1 << 34,
            "kernel": "6.1",
            "versions": {"python": "3.11", "nginx": "nginx version: nginx/1.22.1"},
        },
        workloads=WORKLOADS,
        rows=list(ROWS),
        tools=list(tools),
        records=recs,
        tls={"nginx": {"protocol": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "resumed": True}},
    )
    s.compute(256 * MIB)
    return s
