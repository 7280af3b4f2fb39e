"""The table printed at the end and report.md, rendered from synthetic results."""

from __future__ import annotations

import json

from bench.report import markdown, num, terminal_table, times
from bench.workloads import ONE_MIB
from tests.bench.synthetic import record, records, summary


def test_numbers() -> None:
    assert num(None) == "-"
    assert num(12345.6) == "12,346"
    assert num(123.4) == "123"
    assert num(12.34) == "12.3"
    assert num(1.234) == "1.23"
    assert num(0.0) == "0"
    assert num(0.0012) == "1.2e-03"
    assert times(0.756) == "0.76x"
    assert times(None) == "-"


def test_terminal_table() -> None:
    text = terminal_table(summary(records()))
    assert "== 1m: 1 MiB, keep-alive, 8 connections (wrk; ratios of MB/s)" in text
    assert "h2load requests/s" in text  # the 16k block's headline is requests/s
    line = next(ln for ln in text.splitlines() if ln.startswith("nomapd-default"))
    assert "0.80x" in line and "8.00x" in line  # x nginx, x hypercorn
    assert "[    met     ] 1m-vs-nginx" in text


def test_terminal_table_shows_failures_and_missing_peers() -> None:
    recs = [r for r in records(("wrk",)) if r.row != "hypercorn"]
    recs.append(record(ONE_MIB, "hypercorn", error="hypercorn did not start: no venv"))
    s = summary(recs, ("wrk",))
    s.missing["hypercorn"] = "pip install failed: no network"
    text = terminal_table(s)
    line = next(ln for ln in text.splitlines() if ln.startswith("hypercorn "))
    assert "failed: hypercorn did not start" in line
    assert "missing: hypercorn: pip install failed" in text
    assert "| h2load" not in text  # one tool: no second block of columns


def test_markdown_sections() -> None:
    s = summary(records(reps=2))
    s.charts = ["throughput.png", "sweep.png"]
    md = markdown(s)
    for heading in (
        "# nomapd benchmark, 2026-01-02T03:04:05+00:00",
        "## Method",
        "## Targets",
        "## Results per workload",
        "### `handshake`: 1 KiB, new connection per request, 16 connections",
        "## Server CPU seconds per GB (wrk)",
        "## What unmapped mbufs save",
        "## nomapd counters per GB (wrk)",
        "## Concurrency sweep, 1 MiB (wrk)",
        "## TLS negotiated",
        "## Charts",
    ):
        assert heading in md, heading
    assert "--access-log off" in md
    assert "| `cpu-nomap` |" in md and "**met**" in md
    assert "20.0% less" in md  # 8 vs 10 CPU s/GB
    assert "![sweep.png](sweep.png)" in md
    assert "| nginx | TLSv1.3 | TLS_AES_256_GCM_SHA384 | True |" in md
    assert "Test CPU, 2 cores" in md


def test_markdown_lists_missing_and_failed() -> None:
    recs = records(("wrk",))
    recs.append(record(ONE_MIB, "nginx", "h2load", error="h2load is not installed"))
    s = summary(recs, ("wrk", "h2load"))
    s.missing["h2load"] = "not installed (apt package nghttp2-client)"
    md = markdown(s)
    assert "## Missing or failed" in md
    assert "- h2load: not installed (apt package nghttp2-client)" in md
    assert "1m:nginx:h2load" in md


def test_results_json_round_trips() -> None:
    s = summary(records())
    doc = json.loads(json.dumps(s.to_json()))
    assert {f["row"] for f in doc["figures"]} >= {"nomapd-default", "nginx", "hypercorn"}
    f = next(f for f in doc["figures"] if f["workload"] == "1m" and f["row"] == "nomapd-default")
    assert f["ratios"]["nginx"] == 0.8
    assert f["metric"] == "mb_s"
    assert len(doc["runs"]) == len(s.records)
    assert doc["runs"][0]["load"]["mb_s"] > 0
    assert next(t["key"] for t in doc["targets"]) == "1m-vs-nginx"
    assert doc["machine"]["cores"] == 2
