"""The capture rows: their runs in the plan, the capture's command line and closing lines,
the figures they aggregate to, and the report's capture section."""

from __future__ import annotations

import json

import pytest

from bench import capture
from bench.capture import Capture, CaptureCounts, CaptureRun, descriptor_of, parse_stderr
from bench.plan import make_plan
from bench.report import markdown, terminal_table
from bench.results import aggregate, find
from bench.rows import BY_NAME, ROWS
from bench.workloads import ONE_MIB, sweep_point, workloads
from tests.bench.synthetic import record, records, summary

CAPTURE_ROWS = [r.name for r in ROWS if r.capture is not None]

CLOSING = "4321 packets captured\n4400 packets received by filter\n79 packets dropped by kernel\n"


def test_rows_are_both_modes_at_both_snap_lengths() -> None:
    assert CAPTURE_ROWS == [
        "nomapd-capture-zbuf-96",
        "nomapd-capture-buffer-96",
        "nomapd-capture-zbuf-full",
        "nomapd-capture-buffer-full",
    ]
    full = BY_NAME["nomapd-capture-buffer-full"]
    assert full.capture == Capture("buffer", 262144)
    assert full.flags == () and full.tls  # the default mode, HTTPS
    assert BY_NAME["nomapd-default"].capture is None


def test_capture_rows_run_on_1m_and_64_connections_with_wrk_only() -> None:
    plan = make_plan(workloads(False), list(ROWS), ["wrk", "h2load"], 1, 1.0, "capture")
    assert {(s.workload.name, s.tool) for s in plan} == {("1m", "wrk"), ("sweep-64", "wrk")}
    assert [s.row.name for s in plan if s.workload.name == "1m"] == CAPTURE_ROWS
    one = make_plan(workloads(False), list(ROWS), ["wrk"], 2, 1.0, "1m:nomapd-capture-zbuf-96:wrk")
    assert [(s.label, s.rep) for s in one] == [("1m:nomapd-capture-zbuf-96:wrk", r) for r in (0, 1)]
    # The README's command: the capture rows and their baseline, rows alternated.
    readme = make_plan(
        workloads(False), list(ROWS), ["wrk", "h2load"], 2, 1.0, "capture|^1m:nomapd-default:wrk"
    )
    assert [s.row.name for s in readme[:5]] == ["nomapd-default", *CAPTURE_ROWS]
    assert len(readme) == 2 * 5 + 2 * 4
    # --quick: every capture row on 1m (sweep point 64 is not in the quick set).
    quick = make_plan(workloads(True), list(ROWS), ["wrk", "h2load"], 1, 1.0, "capture", True)
    assert [s.label for s in quick] == [f"1m:{r}:wrk" for r in CAPTURE_ROWS]


def test_command_writes_to_dev_null_with_the_rows_mode_and_snap_length() -> None:
    argv = capture.command(Capture("zbuf", 96), 8443, "python3")
    assert argv == [
        "python3",
        "-m",
        "server",
        "capture",
        "--server",
        "8443",
        "-i",
        "nm0",
        "-w",
        "/dev/null",
        "-s",
        "96",
        "--mode",
        "zbuf",
        "-q",
    ]
    with_b = capture.command(Capture("buffer", 262144, bufsize_kib=2048), 1, "python3")
    assert with_b[-6:] == ["262144", "--mode", "buffer", "-q", "-B", "2048"]


@pytest.mark.parametrize(
    "text",
    [
        CLOSING,
        "listening on nm0, link-type EN10MB\n^C" + CLOSING,  # after other output
        CLOSING.replace("\n", "\r\n"),
        "  " + CLOSING.replace("\n", "  \n"),
    ],
)
def test_closing_lines_parsed(text: str) -> None:
    assert parse_stderr(text) == CaptureCounts(4321, 4400, 79)


def test_closing_lines_singular_and_missing() -> None:
    assert parse_stderr("1 packet captured\n1 packet received by filter\n") == CaptureCounts(
        1, 1, None
    )
    assert parse_stderr("Traceback (most recent call last):\n") == CaptureCounts()
    assert parse_stderr("") == CaptureCounts()


def test_descriptor_of_finds_the_capture_by_pid() -> None:
    rows = [{"bd_pid": 10, "bd_rcount": 5, "bd_dcount": 1}, {"bd_pid": 77, "bd_rcount": 900}]
    assert descriptor_of({"bpf.descriptors": rows}, 77) == rows[1]
    assert descriptor_of({"bpf.descriptors": rows}, 11) is None
    assert descriptor_of({}, 10) is None


def test_settle_prefers_stderr_then_the_descriptor() -> None:
    desc = {"bd_pid": 5, "bd_rcount": 1000, "bd_dcount": 250}
    run = CaptureRun("zbuf", 96)
    run.settle(parse_stderr(CLOSING), desc)
    assert (run.captured, run.received, run.dropped, run.source) == (4321, 4400, 79, "stderr")
    assert run.drop_fraction == pytest.approx(79 / 4400)
    run = CaptureRun("buffer", 96)
    run.settle(CaptureCounts(captured=3), desc)  # no received/dropped lines: /stats
    assert (run.captured, run.received, run.dropped, run.source) == (750, 1000, 250, "/stats")
    assert run.drop_fraction == pytest.approx(0.25)
    run = CaptureRun("buffer", 96)
    run.settle(CaptureCounts(), None)
    assert run.source == "" and run.drop_fraction is None
    empty = CaptureRun("zbuf", 96, received=0, dropped=0)
    assert empty.drop_fraction is None  # nothing received: no fraction


def test_aggregate_takes_medians_of_capture_figures() -> None:
    recs = [record(sweep_point(64), "nomapd-capture-buffer-full", rep=i) for i in range(3)]
    assert recs[0].capture is not None
    recs[1].capture = CaptureRun("buffer", 262144, cpu_s=0.0, captured=1, received=2, dropped=1)
    recs[2].capture = CaptureRun("buffer", 262144, 3.0 * 1.2, 9_600, 10_000, 400, "/stats", "k")
    recs.append(record(sweep_point(64), "nomapd-capture-buffer-full", rep=3, error="capture died"))
    (f,) = aggregate(recs)
    assert (f.runs, f.runs_ok) == (4, 3)
    assert f.received == 10_000 and f.dropped == 400 and f.captured == 9_600
    assert f.drop_fraction == pytest.approx(0.04)
    assert f.capture_cpu_s_per_gb == pytest.approx(3.0)  # median of 3, 0, 3
    assert f.cpu_s_per_gb == pytest.approx(12.0)  # the server's own
    assert f.capture_notes == ["k"]
    (g,) = aggregate([record(ONE_MIB, "nomapd-default")])
    assert g.capture_cpu_s_per_gb is None and g.drop_fraction is None
    doc = recs[0].to_json()
    assert doc["capture"]["drop_fraction"] == pytest.approx(0.04)
    assert doc["capture_cpu_s_per_gb"] == pytest.approx(3.0)


def test_summary_lays_capture_rows_beside_the_baseline() -> None:
    s = summary(records())
    lines = s.capture()
    one = [c for c in lines if c["workload"] == "1m"]
    assert [c["row"] for c in one] == ["nomapd-default", *CAPTURE_ROWS]
    assert [c["mode"] for c in one] == ["none", "zbuf", "buffer", "zbuf", "buffer"]
    assert one[0]["capture_cpu_s_per_gb"] is None
    assert one[4]["cpu_s_per_gb"] == pytest.approx(12.0)
    assert one[4]["capture_cpu_s_per_gb"] == pytest.approx(3.0)
    assert one[4]["bpf_per_gb"] == {"bpf_read_bytes": 5e8}
    at64 = {c["row"]: c for c in lines if c["workload"] == "sweep-64"}
    assert at64["nomapd-capture-zbuf-96"]["drop_fraction"] == pytest.approx(0.01)
    assert at64["nomapd-capture-buffer-96"]["drop_fraction"] == pytest.approx(0.04)
    assert at64["nomapd-capture-zbuf-96"]["connections"] == 64
    assert {c["workload"] for c in lines} == {"1m", "sweep-64"}  # none on other workloads
    doc = json.loads(json.dumps(s.to_json()))
    assert doc["capture"] == lines
    row = next(r for r in doc["rows"] if r["name"] == "nomapd-capture-zbuf-full")
    assert row["capture"] == {"mode": "zbuf", "snaplen": 262144}
    f = next(x for x in doc["figures"] if x["row"] == "nomapd-capture-zbuf-96")
    assert f["capture_cpu_s_per_gb"] == pytest.approx(2.0)
    # without capture rows in the run there is no capture block
    assert summary([r for r in records() if r.capture is None]).capture() == []


def test_report_capture_section_and_block() -> None:
    s = summary(records())
    md = markdown(s)
    assert "## Packet capture: zero-copy and buffered BPF" in md
    assert (
        "| 1m | nomapd-capture-buffer-full | 600 | 12.0 | 3.00 | 10,000 | 10,000 | 0 | 0.0% |" in md
    )
    assert (
        "| sweep-64 | nomapd-capture-buffer-96 | 760 | 9.00 | 3.00 | 9,600 | 10,000 | 400 | 4.0% |"
        in md
    )
    assert "| 1m | nomapd-default | 800 | 8.00 | - | - | - | - | - |" in md
    assert "bpf_read_bytes (`bpf.read_bytes`)" in md
    text = terminal_table(s)
    assert "== capture: nomapd capture -w /dev/null on nm0 beside the load (wrk)" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("sweep-64  nomapd-capture-zbuf-96"))
    assert line.split()[-4:] == ["9,900", "10,000", "100", "1.0%"]
    killed = records()
    for r in killed:
        if r.capture is not None and r.row.endswith("zbuf-full") and r.workload == "sweep-64":
            r.capture.error = "did not exit within 10s of SIGINT (killed)"
            r.capture.source = "/stats"
    note = "- sweep-64:nomapd-capture-zbuf-full: did not exit within 10s of SIGINT (killed)"
    assert note in markdown(summary(killed)).splitlines()
    failed = [r for r in records() if r.row != "nomapd-capture-zbuf-96"]
    failed.append(record(ONE_MIB, "nomapd-capture-zbuf-96", error="capture exited with 2: bad"))
    md = markdown(summary(failed))
    assert "| 1m | nomapd-capture-zbuf-96 | failed: capture exited with 2: bad |" in md
    assert "## Packet capture" not in markdown(summary([r for r in records() if not r.capture]))


def test_find_capture_figures() -> None:
    figures = aggregate(records())
    f = find(figures, "sweep-64", "nomapd-capture-zbuf-full", "wrk")
    assert f is not None and f.drop_fraction == pytest.approx(0.01)
    assert find(figures, "16k", "nomapd-capture-zbuf-full", "wrk") is None
