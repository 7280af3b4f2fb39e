"""Results: one record per run, and the figures of each (workload, row, tool).

Theory of operation. `RunRecord` is what one run measured: the load
generator's figures (`bench.load.LoadResult`), the server tree's CPU seconds
and peak RSS (`bench.procfs`), and for nomapd the counters per GB
(`bench.counters`); for a capture row, what the capture measured
(`bench.capture.CaptureRun`: its CPU seconds, packets captured, received and
dropped). A run that failed (the tool missing or crashing, the
server dead) keeps its error and no figures.

`Figures` aggregates the repetitions of one (workload, row, tool): the
median of each figure over the runs that worked (requests/s, MB/s, latency
percentiles, CPU seconds per GB, counters per GB), the largest peak RSS and
`sockbuf.mbufs_peak`, and the sum of the errors. For a capture row also the
median of the capture's CPU seconds per GB, its packets (per run) and its
drops as a fraction of the packets its descriptor received. With one repetition it is
that run's figures.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from bench.capture import CaptureRun
from bench.load import LoadResult

GB = 1e9
MAX_KEYS = ("sockbuf_mbufs_peak",)


@dataclass
class RunRecord:
    workload: str
    row: str
    tool: str
    rep: int
    duration: float
    command: list[str] = field(default_factory=list)
    error: str = ""
    load: LoadResult | None = None
    cpu_s: float | None = None
    peak_rss: int | None = None
    rss_method: str = ""
    counters: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    capture: CaptureRun | None = None

    @property
    def ok(self) -> bool:
        return not self.error and self.load is not None

    def _per_gb(self, seconds: float | None) -> float | None:
        if seconds is None or self.load is None or not self.load.bytes:
            return None
        return seconds / (self.load.bytes / GB)

    @property
    def cpu_s_per_gb(self) -> float | None:
        return self._per_gb(self.cpu_s)

    @property
    def capture_cpu_s_per_gb(self) -> float | None:
        """The capture process's CPU seconds per GB the server sent (capture rows)."""
        return self._per_gb(self.capture.cpu_s if self.capture else None)

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "row": self.row,
            "tool": self.tool,
            "rep": self.rep,
            "duration": self.duration,
            "command": self.command,
            "ok": self.ok,
            "error": self.error,
            "load": self.load.to_json() if self.load else None,
            "cpu_s": self.cpu_s,
            "cpu_s_per_gb": self.cpu_s_per_gb,
            "peak_rss_bytes": self.peak_rss,
            "rss_method": self.rss_method,
            "nomapd_counters_per_gb": self.counters,
            "wall_s": self.wall_s,
            "capture": self.capture.to_json() if self.capture else None,
            "capture_cpu_s_per_gb": self.capture_cpu_s_per_gb,
        }


@dataclass
class Figures:
    workload: str
    row: str
    tool: str
    runs: int = 0
    runs_ok: int = 0
    req_s: float | None = None
    mb_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    cpu_s_per_gb: float | None = None
    peak_rss: int | None = None
    errors: int = 0
    counters: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tls: dict[str, str] = field(default_factory=dict)
    # capture rows (bench.capture): medians over the runs that worked
    capture_cpu_s_per_gb: float | None = None
    captured: float | None = None
    received: float | None = None
    dropped: float | None = None
    drop_fraction: float | None = None
    capture_notes: list[str] = field(default_factory=list)  # CaptureRun.error, distinct

    def metric(self, name: str) -> float | None:
        value: float | None = getattr(self, name)
        return value

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _float(v: int | None) -> float | None:
    return None if v is None else float(v)


def aggregate(records: list[RunRecord]) -> list[Figures]:
    """Figures per (workload, row, tool), in the order they first appear."""
    keyed: dict[tuple[str, str, str], list[RunRecord]] = {}
    for r in records:
        keyed.setdefault((r.workload, r.row, r.tool), []).append(r)
    out: list[Figures] = []
    for (w, row, tool), runs in keyed.items():
        f = Figures(w, row, tool, runs=len(runs))
        good = [r for r in runs if r.ok]
        f.runs_ok = len(good)
        f.failures = sorted({r.error for r in runs if r.error})
        if good:
            loads = [r.load for r in good if r.load is not None]
            f.req_s = _median([x.req_s for x in loads])
            f.mb_s = _median([x.mb_s for x in loads])
            f.p50_ms = _median([x.latency_ms.get("p50") for x in loads])
            f.p99_ms = _median([x.latency_ms.get("p99") for x in loads])
            f.mean_ms = _median([x.latency_ms.get("mean") for x in loads])
            f.cpu_s_per_gb = _median([r.cpu_s_per_gb for r in good])
            peaks = [r.peak_rss for r in good if r.peak_rss is not None]
            f.peak_rss = max(peaks) if peaks else None
            f.errors = sum(x.error_count for x in loads)
            f.notes = sorted({n for x in loads for n in x.notes})
            f.tls = next((x.tls for x in loads if x.tls), {})
            caps = [r.capture for r in good if r.capture is not None]
            if caps:
                f.capture_cpu_s_per_gb = _median([r.capture_cpu_s_per_gb for r in good])
                f.captured = _median([_float(c.captured) for c in caps])
                f.received = _median([_float(c.received) for c in caps])
                f.dropped = _median([_float(c.dropped) for c in caps])
                f.drop_fraction = _median([c.drop_fraction for c in caps])
                f.capture_notes = sorted({c.error for c in caps if c.error})
            keys = sorted({k for r in good for k in r.counters})
            for k in keys:
                vals = [r.counters.get(k) for r in good]
                if k in MAX_KEYS:
                    f.counters[k] = max(v for v in vals if v is not None)
                else:
                    med = _median(vals)
                    if med is not None:
                        f.counters[k] = med
        out.append(f)
    return out


def find(figures: list[Figures], workload: str, row: str, tool: str) -> Figures | None:
    for f in figures:
        if f.workload == workload and f.row == row and f.tool == tool:
            return f
    return None
