"""Everything one bench run produced, in one object, and its results.json form.

Theory of operation. `Summary` gathers the run's settings and machine, the
workloads and rows that were selected, what was missing (tools, peers, servers
that did not start), the TLS each server negotiated, every run's record, the
aggregated figures with their ratios to nginx and hypercorn, and the targets.
`capture` lays the capture rows' figures (`bench.capture`) beside their
no-capture baseline, per workload, for the report, the charts and results.json.
`to_json` is the whole of results.json; `bench.report` renders the table and
report.md from it, and `bench.charts` (in the peers venv) draws from
results.json alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.capture import TOOLS as CAPTURE_TOOLS
from bench.compare import Ratios, all_ratios
from bench.results import Figures, RunRecord, aggregate, find
from bench.rows import CAPTURE_BASELINE, Row
from bench.targets import Target, evaluate
from bench.workloads import Workload


@dataclass
class Summary:
    meta: dict[str, Any]
    machine: dict[str, Any]
    workloads: list[Workload]
    rows: list[Row]
    tools: list[str]
    records: list[RunRecord]
    missing: dict[str, str] = field(default_factory=dict)
    server_errors: dict[str, str] = field(default_factory=dict)
    tls: dict[str, dict[str, str | bool]] = field(default_factory=dict)
    charts: list[str] = field(default_factory=list)
    figures: list[Figures] = field(default_factory=list)
    ratios: dict[tuple[str, str, str], Ratios] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)

    def compute(self, phys_mem: int) -> None:
        self.figures = aggregate(self.records)
        self.ratios = all_ratios(self.figures, {w.name: w for w in self.workloads})
        self.targets = evaluate(self.figures, self.workloads, self.tools, phys_mem)

    def workload(self, name: str) -> Workload:
        for w in self.workloads:
            if w.name == name:
                return w
        raise KeyError(name)

    def capture(self) -> list[dict[str, Any]]:
        """Per workload with capture figures: the baseline (mode "none") and each capture
        row, with server and capture CPU per GB, packets, drops and the BPF counters."""
        tool = CAPTURE_TOOLS[0]
        out: list[dict[str, Any]] = []
        for w in self.workloads:
            rows = [
                r
                for r in self.rows
                if r.capture is not None and find(self.figures, w.name, r.name, tool)
            ]
            if not rows:
                continue
            for r in [*(x for x in self.rows if x.name == CAPTURE_BASELINE), *rows]:
                f = find(self.figures, w.name, r.name, tool)
                if f is None:
                    continue
                out.append(
                    {
                        "workload": w.name,
                        "connections": w.connections,
                        "row": r.name,
                        "mode": r.capture.mode if r.capture else "none",
                        "snaplen": r.capture.snaplen if r.capture else None,
                        "runs_ok": f.runs_ok,
                        "failures": f.failures,
                        "mb_s": f.mb_s,
                        "cpu_s_per_gb": f.cpu_s_per_gb,
                        "capture_cpu_s_per_gb": f.capture_cpu_s_per_gb,
                        "captured": f.captured,
                        "received": f.received,
                        "dropped": f.dropped,
                        "drop_fraction": f.drop_fraction,
                        "capture_notes": f.capture_notes,
                        "bpf_per_gb": {k: v for k, v in f.counters.items() if k.startswith("bpf_")},
                    }
                )
        return out

    def to_json(self) -> dict[str, Any]:
        figures = []
        for f in self.figures:
            d = f.to_json()
            r = self.ratios.get((f.workload, f.row, f.tool))
            d["metric"] = self.workload(f.workload).metric
            d["ratios"] = dict(r.vs) if r else {}
            figures.append(d)
        return {
            "meta": self.meta,
            "machine": self.machine,
            "workloads": [
                {
                    "name": w.name,
                    "title": w.title,
                    "paths": list(w.paths),
                    "connections": w.connections,
                    "keepalive": w.keepalive,
                    "metric": w.metric,
                    "group": w.group,
                }
                for w in self.workloads
            ],
            "rows": [
                {
                    "name": r.name,
                    "server": r.server,
                    "tls": r.tls,
                    "flags": list(r.flags),
                    "title": r.title,
                    "capture": (
                        {"mode": r.capture.mode, "snaplen": r.capture.snaplen}
                        if r.capture
                        else None
                    ),
                }
                for r in self.rows
            ],
            "tools": self.tools,
            "missing": self.missing,
            "server_errors": self.server_errors,
            "tls": self.tls,
            "figures": figures,
            "targets": [t.to_json() for t in self.targets],
            "capture": self.capture(),
            "charts": self.charts,
            "runs": [r.to_json() for r in self.records],
        }
