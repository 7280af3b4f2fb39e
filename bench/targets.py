"""The benchmark's performance targets, checked against a run's figures.

Theory of operation. Each target is computed for every tool that measured it;
a target is met when every tool that measured it says so, and "not measured"
when none did (a row or workload was not run, or failed). The targets compare
nomapd's default mode (KTLS, NIC with IFCAP_NOMAP) with its peers in the same
run:

| key | target |
|---|---|
| 1m-vs-nginx | 1 MiB, HTTPS, keep-alive: MB/s >= 0.75 x nginx |
| 16k-vs-nginx | 16 KiB, HTTPS, keep-alive: requests/s >= 0.25 x nginx |
| handshake-vs-nginx | new TLS connection per request: requests/s >= 0.5 x nginx |
| 16k-vs-hypercorn | 16 KiB, HTTPS, keep-alive: requests/s >= 5 x hypercorn |
| 2x-hypercorn | every other workload run: headline figure >= 2 x hypercorn (the smallest counts) |
| cpu-nomap | 1 MiB: CPU s/GB at least 10% below `--no-nomap` (saving = 1 - default / no-nomap) |
| 100m-rss | 4 x 100 MiB: peak RSS <= --phys-mem + 128 MiB |

These are reported, never asserted: a test of the bench checks the
arithmetic, not the speed of the machine it runs on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.compare import ratio
from bench.results import Figures, find
from bench.workloads import HANDSHAKE, HUGE, MIB, ONE_MIB, SMALL, Workload

DEFAULT = "nomapd-default"
NO_NOMAP = "nomapd-no-nomap"


@dataclass
class Check:
    value: float | None
    met: bool | None
    detail: str = ""


@dataclass
class Target:
    key: str
    text: str
    by_tool: dict[str, Check] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        known = [c.met for c in self.by_tool.values() if c.met is not None]
        if not known:
            return None
        return all(known)

    @property
    def verdict(self) -> str:
        return {True: "met", False: "NOT met", None: "not measured"}[self.met]

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "text": self.text,
            "met": self.met,
            "by_tool": {t: c.__dict__ for t, c in self.by_tool.items()},
        }


def _ratio_target(
    key: str,
    text: str,
    w: Workload,
    threshold: float,
    figures: list[Figures],
    tools: list[str],
) -> Target:
    t = Target(key, text)
    for tool in tools:
        mine = find(figures, w.name, DEFAULT, tool)
        theirs = find(figures, w.name, "nginx", tool)
        value = ratio(
            mine.metric(w.metric) if mine else None, theirs.metric(w.metric) if theirs else None
        )
        if value is not None:
            t.by_tool[tool] = Check(value, value >= threshold, f"{value:.2f}x")
    return t


def _hypercorn_target(
    key: str,
    text: str,
    threshold: float,
    figures: list[Figures],
    workloads: list[Workload],
    tools: list[str],
) -> Target:
    """The smallest ratio to hypercorn over `workloads` (its headline figure) counts."""
    t = Target(key, text)
    for tool in tools:
        found: list[tuple[str, float]] = []
        for w in workloads:
            mine = find(figures, w.name, DEFAULT, tool)
            theirs = find(figures, w.name, "hypercorn", tool)
            value = ratio(
                mine.metric(w.metric) if mine else None,
                theirs.metric(w.metric) if theirs else None,
            )
            if value is not None:
                found.append((w.name, value))
        if found:
            worst = min(v for _, v in found)
            detail = ", ".join(f"{name} {v:.2f}x" for name, v in found)
            t.by_tool[tool] = Check(worst, worst >= threshold, detail)
    return t


def _cpu_target(figures: list[Figures], tools: list[str]) -> Target:
    t = Target("cpu-nomap", "1 MiB: CPU s/GB of the default >= 10% below --no-nomap")
    for tool in tools:
        d = find(figures, ONE_MIB.name, DEFAULT, tool)
        n = find(figures, ONE_MIB.name, NO_NOMAP, tool)
        if d and n and d.cpu_s_per_gb is not None and n.cpu_s_per_gb:
            saving = 1.0 - d.cpu_s_per_gb / n.cpu_s_per_gb
            detail = f"{d.cpu_s_per_gb:.2f} vs {n.cpu_s_per_gb:.2f} s/GB: {saving * 100:.1f}% lower"
            t.by_tool[tool] = Check(saving, saving >= 0.10, detail)
    return t


def _rss_target(figures: list[Figures], tools: list[str], phys_mem: int) -> Target:
    limit = phys_mem + 128 * MIB
    t = Target(
        "100m-rss",
        f"4 x 100 MiB: peak RSS <= --phys-mem + 128 MiB = {limit / MIB:.0f} MiB",
    )
    for tool in tools:
        f = find(figures, HUGE.name, DEFAULT, tool)
        if f and f.peak_rss is not None:
            t.by_tool[tool] = Check(
                f.peak_rss / MIB, f.peak_rss <= limit, f"{f.peak_rss / MIB:.0f} MiB"
            )
    return t


def evaluate(
    figures: list[Figures], workloads: list[Workload], tools: list[str], phys_mem: int
) -> list[Target]:
    return [
        _ratio_target(
            "1m-vs-nginx",
            "1 MiB, HTTPS, keep-alive: >= 0.75x nginx MB/s",
            ONE_MIB,
            0.75,
            figures,
            tools,
        ),
        _ratio_target(
            "16k-vs-nginx",
            "16 KiB, HTTPS, keep-alive: >= 0.25x nginx requests/s",
            SMALL,
            0.25,
            figures,
            tools,
        ),
        _ratio_target(
            "handshake-vs-nginx",
            "new TLS connection per request: >= 0.5x nginx requests/s",
            HANDSHAKE,
            0.5,
            figures,
            tools,
        ),
        _hypercorn_target(
            "16k-vs-hypercorn",
            "16 KiB, HTTPS, keep-alive: >= 5x hypercorn requests/s",
            5.0,
            figures,
            [w for w in workloads if w.name == SMALL.name],
            tools,
        ),
        _hypercorn_target(
            "2x-hypercorn",
            "every other workload: >= 2x hypercorn (HTTPS, headline figure)",
            2.0,
            figures,
            [w for w in workloads if w.name != SMALL.name],
            tools,
        ),
        _cpu_target(figures, tools),
        _rss_target(figures, tools, phys_mem),
    ]
