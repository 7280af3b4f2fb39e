"""wrk: parsing its real output (tests/bench/fixtures) and building its command line."""

from __future__ import annotations

import pathlib

import pytest

from bench import wrk
from bench.load import LoadResult, ParseError

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def parse(name: str) -> LoadResult:
    return wrk.parse((FIXTURES / name).read_text())


def test_summary_and_latency_distribution() -> None:
    r = parse("wrk_nomapd_1m.txt")
    assert r.tool == "wrk"
    assert r.requests == 219
    assert r.seconds == pytest.approx(3.01)
    assert r.bytes == round(221.30 * 2**20)
    assert r.req_s == pytest.approx(72.74)
    assert r.mb_s == pytest.approx(221.30 * 2**20 / 3.01 / 1e6)
    assert r.latency_ms == pytest.approx(
        {
            "mean": 54.25,
            "stdev": 18.01,
            "max": 131.39,
            "p50": 47.99,
            "p75": 63.10,
            "p90": 82.47,
            "p99": 108.14,
        }
    )
    assert r.error_count == 0
    assert r.errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non_2xx_3xx": 0}


def test_units_gb_and_microseconds() -> None:
    r = parse("wrk_nginx_1m.txt")
    assert r.bytes == round(1.74 * 2**30)
    assert r.latency_ms["p99"] == pytest.approx(13.12)
    r = parse("wrk_nginx_http_16k.txt")
    assert r.latency_ms["p50"] == pytest.approx(0.591)
    assert r.latency_ms["p99"] == pytest.approx(1.0)
    assert r.latency_ms["stdev"] == pytest.approx(0.19557)


def test_non_2xx_responses_are_errors() -> None:
    r = parse("wrk_nginx_404.txt")
    assert r.errors["non_2xx_3xx"] == 93962
    assert r.error_count == 93962
    assert r.latency_ms["p50"] == pytest.approx(0.166)


def test_socket_errors_and_no_latency_samples() -> None:
    r = parse("wrk_hypercorn_timeouts.txt")
    assert r.errors == {"connect": 0, "read": 0, "write": 0, "timeout": 149, "non_2xx_3xx": 0}
    assert r.requests == 149
    assert r.latency_ms == {}  # every sample exceeded --timeout: "0.00us", not a latency
    assert any("timeout" in n for n in r.notes)


def test_no_request_completed_still_counts_bytes() -> None:
    r = parse("wrk_nomapd_100m_none.txt")
    assert r.requests == 0
    assert r.req_s == 0.0
    assert r.bytes == round(93.42 * 2**20)
    assert r.mb_s > 90
    assert r.latency_ms == {}


def test_handshake_workload_output() -> None:
    r = parse("wrk_nomapd_handshake.txt")
    assert r.requests == 520
    assert r.bytes == round(651.02 * 1024)
    assert r.latency_ms["p99"] == pytest.approx(25.75)


def test_no_summary_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="unable to connect"):
        parse("wrk_connect_errors.txt")
    with pytest.raises(ParseError):
        wrk.parse("")


def test_command_keepalive(tmp_path: pathlib.Path) -> None:
    argv = wrk.command("https://127.0.0.1:1", ("/1m.bin",), 8, 1.2, 1, True, tmp_path)
    assert argv == [
        "wrk",
        "-t1",
        "-c8",
        "-d2s",
        f"--timeout={wrk.TIMEOUT}s",
        "--latency",
        "https://127.0.0.1:1/1m.bin",
    ]


def test_command_close_and_script(tmp_path: pathlib.Path) -> None:
    argv = wrk.command("http://h:2", ("/a", "/b"), 1, 0.3, 4, False, tmp_path, "/usr/bin/wrk")
    assert argv[:4] == ["/usr/bin/wrk", "-t1", "-c1", "-d1s"]  # threads <= connections
    assert argv[argv.index("-H") + 1] == "Connection: close"
    script = pathlib.Path(argv[argv.index("-s") + 1])
    assert '"/a", "/b"' in script.read_text()
    assert argv[-1] == "http://h:2/a"
