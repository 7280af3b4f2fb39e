"""The order of the runs: workloads in groups, repetitions, rows alternated.

Theory of operation. A step is one load-generator run: (workload, row, tool,
repetition). Steps are ordered workload by workload (a workload group's
servers are started together and stopped after its last step); within a
workload, repetition by repetition; within a repetition, row by row, and for
each row every tool. So the rows alternate (A B C ... A B C ...): a drift of
the machine (thermal, another process, the page cache) hits every server alike
instead of the last ones.

`--only REGEX` keeps the steps whose label "WORKLOAD:ROW:TOOL" matches
(`re.search`), e.g. `nomapd-default` (that row, all workloads and tools),
`^16k:` (one workload), `:wrk$` (one tool), `nginx-http:|nomapd-http:`.

Capture rows (`Row.capture`) have steps only where `bench.capture.runs_on`
says: the 1 MiB workloads at 8 and 64 connections, with wrk (with `--quick`,
at 8 only, sweep point 64 being dropped).

With `--quick`, h2load runs only on the workloads of `QUICK_H2LOAD`; wrk
runs on all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bench import capture
from bench.rows import Row
from bench.workloads import Workload

TOOLS = ("wrk", "h2load")
# --quick runs h2load on these only: h2load runs a request count, at least one
# response per connection (see bench.h2load), which for 100m (4 x 100 MiB) and
# sweep-256 (256 x 1 MiB) is several seconds on the slower servers, not one.
QUICK_H2LOAD = ("1m", "16k", "handshake")


@dataclass(frozen=True)
class Step:
    workload: Workload
    row: Row
    tool: str
    rep: int
    duration: float

    @property
    def label(self) -> str:
        return f"{self.workload.name}:{self.row.name}:{self.tool}"


def make_plan(
    workloads: list[Workload],
    rows: list[Row],
    tools: list[str],
    repeat: int,
    duration: float,
    only: str | None = None,
    quick: bool = False,
) -> list[Step]:
    pattern = re.compile(only) if only else None
    steps: list[Step] = []
    for w in workloads:
        for rep in range(repeat):
            for row in rows:
                for tool in tools:
                    if quick and tool == "h2load" and w.name not in QUICK_H2LOAD:
                        continue
                    if row.capture is not None and not capture.runs_on(w.name, tool):
                        continue
                    step = Step(w, row, tool, rep, duration)
                    if pattern is None or pattern.search(step.label):
                        steps.append(step)
    return steps


def groups(steps: list[Step]) -> list[tuple[str, list[Step]]]:
    """Consecutive steps sharing a workload group (in plan order)."""
    out: list[tuple[str, list[Step]]] = []
    for s in steps:
        if out and out[-1][0] == s.workload.group:
            out[-1][1].append(s)
        else:
            out.append((s.workload.group, [s]))
    return out
