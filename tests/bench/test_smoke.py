"""The bench itself, end to end: a quick run against nomapd alone, and the charts.

The smoke run needs wrk only (`--tools wrk`, `--no-install`, `--no-charts`):
two seconds per workload against nomapd's default mode, then results.json and
report.md must exist and hold its figures. Nothing about speed is asserted.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

from tests.bench.synthetic import records, summary

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_quick_bench_against_nomapd_alone(tmp_path: pathlib.Path) -> None:
    assert shutil.which("wrk"), "wrk is not installed (apt-get install wrk; .ci/run does)"
    argv = [sys.executable, "-m", "bench", "--quick", "--only", ":nomapd-default:"]
    argv += ["--duration", "2", "--tools", "wrk", "--no-install", "--no-charts"]
    argv += ["--results", str(tmp_path)]
    res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (out,) = tmp_path.iterdir()
    doc = json.loads((out / "results.json").read_text())
    assert {f["row"] for f in doc["figures"]} == {"nomapd-default"}
    ok = [f for f in doc["figures"] if f["runs_ok"]]
    assert {f["workload"] for f in ok} >= {"1m", "16k", "handshake", "100m"}
    one = next(f for f in ok if f["workload"] == "1m")
    assert one["mb_s"] > 0 and one["cpu_s_per_gb"] > 0 and one["peak_rss"] > 0
    assert one["counters"]["ext_pgs"] > 0  # unmapped sendfile in the default mode
    assert doc["meta"]["duration"] == 2.0
    assert doc["machine"]["cores"] >= 1
    report = (out / "report.md").read_text()
    assert "nomapd-default" in report and "## Targets" in report
    assert "nomapd-default" in res.stdout  # the table
    assert "100m-rss" in res.stdout


def test_quick_bench_with_captures(tmp_path: pathlib.Path) -> None:
    """Both buffer modes of a real `nomapd capture` beside nomapd: the capture attaches,
    sees the run's packets, is stopped with SIGINT and its figures land in the results."""
    assert shutil.which("wrk"), "wrk is not installed (apt-get install wrk; .ci/run does)"
    only = "^1m:nomapd-capture-zbuf-96:|^1m:nomapd-capture-buffer-full:"
    argv = [sys.executable, "-m", "bench", "--quick", "--only", only, "--duration", "2"]
    argv += ["--tools", "wrk", "--no-install", "--no-charts", "--results", str(tmp_path)]
    res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (out,) = tmp_path.iterdir()
    doc = json.loads((out / "results.json").read_text())
    runs = {r["row"]: r for r in doc["runs"]}
    assert set(runs) == {"nomapd-capture-zbuf-96", "nomapd-capture-buffer-full"}
    for name, run in runs.items():
        assert run["ok"], run["error"]
        cap = run["capture"]
        # its closing lines, or, if it had to be killed, its descriptor's /stats row
        assert cap["source"] == "stderr" or cap["error"].startswith("did not exit"), cap
        assert cap["received"] > 0 and cap["captured"] > 0
        assert cap["captured"] + cap["dropped"] == cap["received"]
        assert run["capture_cpu_s_per_gb"] > 0
        assert run["command"][0].endswith("wrk")
        # the kernel's BPF counters agree that this mode did the work
        counters = run["nomapd_counters_per_gb"]
        assert counters["bpf_captured"] > 0
        if name.endswith("zbuf-96"):
            assert counters["bpf_handovers"] > 0 and counters["bpf_reads"] == 0
        else:
            assert counters["bpf_reads"] > 0 and counters["bpf_handovers"] == 0
    assert [c["row"] for c in doc["capture"]] == list(runs)
    report = (out / "report.md").read_text()
    assert "## Packet capture: zero-copy and buffered BPF" in report
    assert "== capture: nomapd capture -w /dev/null on nm0" in res.stdout


def test_charts_from_results_json(tmp_path: pathlib.Path) -> None:
    """The chart step, run as the bench runs it, with the test environment's
    matplotlib (a test dependency) instead of the peers venv's."""
    path = tmp_path / "results.json"
    path.write_text(json.dumps(summary(records()).to_json()))
    res = subprocess.run(
        [sys.executable, "-m", "bench.charts", str(path), str(tmp_path)],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    names = res.stdout.split()
    assert names == [
        "throughput.png",
        "cpu_per_gb.png",
        "sweep.png",
        "mbufs_per_gb.png",
        "capture.png",
    ]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
