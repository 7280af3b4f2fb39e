"""Aggregation of repetitions, ratios to nginx and hypercorn, and the speed targets."""

from __future__ import annotations

import pytest

from bench.compare import ratio
from bench.results import aggregate, find
from bench.targets import evaluate
from bench.workloads import HUGE, MIB, ONE_MIB, SMALL
from tests.bench.synthetic import WORKLOADS, record, records, summary


def test_median_over_repetitions_and_peaks_are_maxima() -> None:
    recs = [record(ONE_MIB, "nomapd-default", rep=i, speed=s) for i, s in enumerate((10, 30, 20))]
    (f,) = aggregate(recs)
    assert f.runs == f.runs_ok == 3
    assert f.mb_s == pytest.approx(20.0)
    assert f.p50_ms == pytest.approx(2.0)  # 1, 2, 3
    assert f.peak_rss == 202 * MIB  # the largest
    assert f.counters["mbufs"] == pytest.approx(1001.0)  # median
    assert f.counters["sockbuf_mbufs_peak"] == 7.0  # a level: the largest
    assert f.cpu_s_per_gb == pytest.approx(8.0)


def test_failed_runs_are_kept_apart() -> None:
    recs = [
        record(ONE_MIB, "nginx", rep=0, speed=100),
        record(ONE_MIB, "nginx", rep=1, error="nginx died: boom"),
    ]
    (f,) = aggregate(recs)
    assert (f.runs, f.runs_ok) == (2, 1)
    assert f.mb_s == pytest.approx(100.0)
    assert f.failures == ["nginx died: boom"]
    (g,) = aggregate([record(ONE_MIB, "nginx", error="wrk is not installed")])
    assert g.runs_ok == 0 and g.mb_s is None and g.peak_rss is None


def test_ratios_use_the_peer_of_the_same_protocol() -> None:
    s = summary(records())
    r = s.ratios[(ONE_MIB.name, "nomapd-default", "wrk")]
    assert r.get("nginx") == pytest.approx(0.8)
    assert r.get("hypercorn") == pytest.approx(8.0)
    r = s.ratios[(SMALL.name, "nomapd-http", "h2load")]  # plain HTTP: nginx-http, hypercorn-http
    assert r.get("nginx") == pytest.approx(0.75)
    assert r.get("hypercorn") == pytest.approx(7.5)
    assert s.ratios[(ONE_MIB.name, "nginx", "wrk")].get("nginx") == pytest.approx(1.0)


def test_ratio_of_missing_or_zero_is_none() -> None:
    assert ratio(None, 1.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None
    assert ratio(3.0, 2.0) == 1.5
    s = summary([r for r in records() if r.row != "nginx"])
    assert s.ratios[(ONE_MIB.name, "nomapd-default", "wrk")].get("nginx") is None


def test_targets_all_met() -> None:
    s = summary(records())
    by_key = {t.key: t for t in s.targets}
    assert by_key["1m-vs-nginx"].by_tool["wrk"].value == pytest.approx(0.8)
    assert by_key["1m-vs-nginx"].met is True
    assert by_key["16k-vs-nginx"].met is True
    assert by_key["handshake-vs-nginx"].met is True
    assert by_key["16k-vs-hypercorn"].by_tool["h2load"].value == pytest.approx(8.0)
    assert by_key["16k-vs-hypercorn"].met is True
    assert by_key["2x-hypercorn"].by_tool["wrk"].value == pytest.approx(8.0)
    assert by_key["2x-hypercorn"].met is True
    assert by_key["cpu-nomap"].by_tool["wrk"].value == pytest.approx(0.2)  # 8 vs 10 s/GB
    assert by_key["cpu-nomap"].met is True
    assert by_key["100m-rss"].by_tool["wrk"].value == pytest.approx(200.0)
    assert by_key["100m-rss"].met is True
    assert all(t.verdict == "met" for t in s.targets)


def test_targets_not_met_and_not_measured() -> None:
    recs = [r for r in records() if r.row != "hypercorn"]
    recs.append(record(ONE_MIB, "hypercorn", speed=700.0))  # 800 / 700: far from 5x
    recs = [r for r in recs if not (r.workload == HUGE.name and r.tool == "h2load")]
    figures = aggregate(recs)
    targets = {t.key: t for t in evaluate(figures, WORKLOADS, ["wrk", "h2load"], 64 * MIB)}
    assert targets["2x-hypercorn"].met is False
    assert targets["2x-hypercorn"].by_tool["wrk"].value == pytest.approx(800 / 700)
    assert "h2load" not in targets["2x-hypercorn"].by_tool  # hypercorn ran with wrk only
    assert targets["16k-vs-hypercorn"].verdict == "not measured"  # no hypercorn on 16 KiB
    assert targets["100m-rss"].met is False  # 200 MiB > 64 + 128
    assert list(targets["100m-rss"].by_tool) == ["wrk"]
    assert targets["100m-rss"].verdict == "NOT met"
    none = {t.key: t for t in evaluate([], WORKLOADS, ["wrk"], 256 * MIB)}
    assert all(t.met is None and t.verdict == "not measured" for t in none.values())


def test_hypercorn_targets_5x_on_16k_and_2x_elsewhere() -> None:
    """4x hypercorn passes the 2x target on 1 MiB but fails 5x on 16 KiB; the 16 KiB
    ratio does not count towards the 2x target."""
    recs = [r for r in records() if r.row != "hypercorn"]
    recs += [record(w, "hypercorn", speed=200.0) for w in WORKLOADS if w != SMALL]  # 4x
    recs += [record(SMALL, "hypercorn", speed=1000.0)]  # 0.8x
    targets = {t.key: t for t in evaluate(aggregate(recs), WORKLOADS, ["wrk"], 256 * MIB)}
    assert targets["2x-hypercorn"].met is True
    assert targets["2x-hypercorn"].by_tool["wrk"].value == pytest.approx(4.0)
    assert SMALL.name not in targets["2x-hypercorn"].by_tool["wrk"].detail.split()
    assert targets["16k-vs-hypercorn"].met is False
    assert targets["16k-vs-hypercorn"].by_tool["wrk"].value == pytest.approx(0.8)
    recs = [r for r in recs if not (r.row == "hypercorn" and r.workload == SMALL.name)]
    recs += [record(SMALL, "hypercorn", speed=160.0)]  # 5x exactly
    targets = {t.key: t for t in evaluate(aggregate(recs), WORKLOADS, ["wrk"], 256 * MIB)}
    assert targets["16k-vs-hypercorn"].met is True


def test_one_tool_failing_a_target_fails_it() -> None:
    recs = [r for r in records() if not (r.workload == ONE_MIB.name and r.row == "nginx")]
    recs += [record(ONE_MIB, "nginx", "wrk", speed=1000.0)]
    recs += [record(ONE_MIB, "nginx", "h2load", speed=2000.0)]  # 800 / 2000 = 0.4
    t = {t.key: t for t in summary(recs).targets}["1m-vs-nginx"]
    assert t.by_tool["wrk"].met is True
    assert t.by_tool["h2load"].met is False
    assert t.met is False


def test_find() -> None:
    figures = aggregate(records())
    f = find(figures, ONE_MIB.name, "nginx", "h2load")
    assert f is not None and f.tool == "h2load"
    assert find(figures, "nope", "nginx", "wrk") is None
