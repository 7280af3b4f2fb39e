"""Ratios of every row to nginx and to hypercorn, on the workload's headline figure.

Theory of operation. For a (workload, row, tool), the ratio to nginx is the
row's headline figure (MB/s for bulk workloads, requests/s for small ones:
`Workload.metric`) divided by the same figure of the nginx row speaking the
same protocol (`nginx` for HTTPS rows, `nginx-http` for plain HTTP ones), same
workload, same tool; likewise for hypercorn. A ratio is None when either side
has no figure (not run, failed, or zero). nginx's own ratio to nginx is 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.results import Figures, find
from bench.rows import BY_NAME, HYPERCORN, NGINX, peer_of
from bench.workloads import Workload

PEERS = (NGINX, HYPERCORN)


@dataclass(frozen=True)
class Ratios:
    vs: dict[str, float | None]

    def get(self, server: str) -> float | None:
        return self.vs.get(server)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def ratios_of(f: Figures, figures: list[Figures], workload: Workload) -> Ratios:
    row = BY_NAME[f.row]
    vs: dict[str, float | None] = {}
    for server in PEERS:
        peer = find(figures, f.workload, peer_of(row, server).name, f.tool)
        vs[server] = ratio(
            f.metric(workload.metric), peer.metric(workload.metric) if peer else None
        )
    return Ratios(vs)


def all_ratios(
    figures: list[Figures], workloads: dict[str, Workload]
) -> dict[tuple[str, str, str], Ratios]:
    return {
        (f.workload, f.row, f.tool): ratios_of(f, figures, workloads[f.workload]) for f in figures
    }
