"""Everything one bench run produced, in one object, and its results.json form.

Theory of operation. `Summary` gathers the run's settings and machine, the
workloads and rows that were selected, what was missing (tools, peers, servers
that did not start), the TLS each server negotiated, every run's record, the
aggregated figures with their ratios to nginx and hypercorn, and the targets.
`to_json` is the whole of results.json; `bench.report` renders the table and
report.md from it, and `bench.charts` (in the peers venv) draws from
results.json alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.compare import Ratios, all_ratios
from bench.results import Figures, RunRecord, aggregate
from bench.rows import Row
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
                }
                for r in self.rows
            ],
            "tools": self.tools,
            "missing": self.missing,
            "server_errors": self.server_errors,
            "tls": self.tls,
            "figures": figures,
            "targets": [t.to_json() for t in self.targets],
            "charts": self.charts,
            "runs": [r.to_json() for r in self.records],
        }
