"""GET /metrics: the kernel counters in Prometheus' text exposition format.

Theory of operation. There is no second set of counters: each scrape takes
the same snapshot /stats answers (each worker's own, with `--workers N`) and
a custom collector turns it into metric families with `prometheus_client`,
which also writes the text. A counter's name is its sysctl name
(mbuf/counters.py's SYSCTL_PREFIXES) with dots as underscores under the
`nomapd_` namespace: /stats' "ktls.records_encrypted" is
kern.ipc.tls.stats.records_encrypted, exported as
`nomapd_kern_ipc_tls_stats_records_encrypted_total`. Counts of events are
counters (`_total`), levels (in use, peaks, sizes: `is_level`) are gauges,
and HELP is the counter's own comment in the source.

Every sample has a `worker` label: "0" for a single process, the worker's
index with `--workers N`, one series per worker. There is no aggregate
series: Prometheus adds workers up at query time (`sum without (worker)`),
and a "total" series of the same name would be counted twice by exactly that
query. A restarted worker's counters start again at zero, which Prometheus'
rate() treats as a counter reset.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mbuf.counters import SYSCTL_PREFIXES, is_level
from mbuf.kern_sysctl import stat_oid
from server.control import counter_descriptions

NAMESPACE = "nomapd"


def metric_name(key: str) -> str:
    """ "ktls.records_encrypted" -> "nomapd_kern_ipc_tls_stats_records_encrypted" (a
    counter's samples add "_total")."""
    return f"{NAMESPACE}_{stat_oid(key).replace('.', '_')}"


def exported_keys(snap: dict[str, Any]) -> list[str]:
    """The /stats keys /metrics exports: every kernel counter (not settings, names
    or the bpf descriptor table)."""
    return sorted(
        k for k, v in snap.items()
        if k.partition(".")[0] in SYSCTL_PREFIXES
        and isinstance(v, int) and not isinstance(v, bool)
    )  # fmt: skip


class SnapshotCollector:
    """A prometheus_client collector over a list of (worker, /stats snapshot)."""

    def __init__(self, snaps: list[tuple[str, dict[str, Any]]]) -> None:
        self.snaps = snaps

    def collect(self) -> Iterator[Metric]:
        if not self.snaps:
            return
        descr = counter_descriptions()
        for key in exported_keys(self.snaps[0][1]):
            name, doc = metric_name(key), descr.get(key, key)
            family: CounterMetricFamily | GaugeMetricFamily
            if is_level(key):
                family = GaugeMetricFamily(name, doc, labels=["worker"])
            else:
                family = CounterMetricFamily(name, doc, labels=["worker"])
            for worker, snap in self.snaps:
                value = snap.get(key)
                if isinstance(value, int):
                    family.add_metric([worker], value)
            yield family


def render_metrics(snaps: list[tuple[str, dict[str, Any]]]) -> tuple[bytes, str]:
    """The exposition text of these snapshots, and its Content-Type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snaps))
    return generate_latest(registry), CONTENT_TYPE_LATEST
