"""h2load: parsing its real output (tests/bench/fixtures) and building its command line."""

from __future__ import annotations

import pathlib

import pytest

from bench import h2load
from bench.load import LoadResult, ParseError, parse_bytes, parse_ms

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def parse(name: str) -> LoadResult:
    return h2load.parse((FIXTURES / name).read_text())


def test_timed_run_against_nginx() -> None:
    r = parse("h2load_nginx_1m.txt")
    assert r.tool == "h2load"
    assert r.requests == 1531
    assert r.seconds == pytest.approx(2.0)
    assert r.req_s == pytest.approx(765.5)
    assert r.bytes == 1606390508
    assert r.latency_ms == pytest.approx({"min": 4.57, "max": 22.81, "mean": 10.41, "stdev": 3.26})
    assert r.errors == {"errored": 0, "timeout": 0, "non_2xx_3xx": 0}
    assert r.counts["status_2xx"] == 1532
    assert r.tls == {
        "protocol": "TLSv1.3",
        "cipher": "TLS_AES_128_GCM_SHA256",
        "alpn": "http/1.1",
    }
    assert not r.notes


def test_empty_reason_phrase_is_noted_not_an_error() -> None:
    r = parse("h2load_hypercorn_16k.txt")
    assert r.requests == 616
    assert r.counts["failed"] == 616
    assert r.counts["succeeded"] == 0
    assert r.error_count == 0
    assert any("reason phrase" in n for n in r.notes)


def test_4xx_are_errors() -> None:
    r = parse("h2load_nginx_404.txt")
    assert r.errors["non_2xx_3xx"] == 83899
    assert r.latency_ms["min"] == pytest.approx(0.075)


def test_errored_and_timeouts() -> None:
    r = parse("h2load_hypercorn_timeouts.txt")
    assert r.errors == {"errored": 4, "timeout": 4, "non_2xx_3xx": 0}
    assert r.error_count == 8
    assert r.requests == 4
    assert r.latency_ms["mean"] == pytest.approx(3180.0)  # "3.18s"
    assert r.seconds == pytest.approx(4.22)


def test_connect_errors() -> None:
    r = parse("h2load_connect_errors.txt")
    assert r.requests == 0
    assert r.errors["errored"] == 10
    assert r.seconds == pytest.approx(569e-6)  # "569us"
    assert r.latency_ms == {}
    assert r.mb_s == 0.0


def test_no_response_completed_still_counts_bytes() -> None:
    r = parse("h2load_nomapd_100m.txt")
    assert r.requests == 0
    assert r.bytes == 104543200
    assert r.mb_s == pytest.approx(104.5432)


def test_reconnecting_run_total_zero_uses_headers_plus_data() -> None:
    text = (FIXTURES / "h2load_nomapd_handshake.txt").read_text()
    r = h2load.parse(text)
    assert r.requests == 1000
    assert r.bytes == 258000
    zero_total = text.replace("251.95KB (258000) total", "0B (0) total")
    assert h2load.parse(zero_total).bytes == 207000 + 1024000


def test_no_summary_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        h2load.parse("starting benchmark...\nspawning thread #0\n")


def test_command_is_a_request_count() -> None:
    argv = h2load.command("https://h:1", ("/a", "/b"), 4, 100, 1, False)
    assert argv == [
        "h2load",
        "--h1",
        "-t1",
        "-c4",
        "-n",
        "100",
        "-H",
        "Connection: close",
        "https://h:1/a",
        "https://h:1/b",
    ]
    assert h2load.command("http://h:1", ("/x",), 8, 3, 2, True)[4:6] == ["-n", "8"]


def test_requests_for() -> None:
    assert h2load.requests_for(100e6, 2.0, 1e6, 8) == 200
    assert h2load.requests_for(1e6, 1.0, 100e6, 4) == 4  # at least one per connection
    assert h2load.requests_for(None, 1.0, 1e4, 1) == round(h2load.FALLBACK_BYTES_PER_S / 1e4)


@pytest.mark.parametrize(
    ("text", "value"),
    [("512.00B", 512), ("1.50KB", 1536), ("2.00MB", 2 << 20), ("1.00GB", 1 << 30)],
)
def test_parse_bytes(text: str, value: int) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize(
    ("text", "ms"),
    [("811.00us", 0.811), ("47.99ms", 47.99), ("3.15s", 3150.0), ("2.00m", 120000.0)],
)
def test_parse_ms(text: str, ms: float) -> None:
    assert parse_ms(text) == pytest.approx(ms)


def test_bad_units() -> None:
    with pytest.raises(ValueError):
        parse_bytes("12 bytes")
    with pytest.raises(ValueError):
        parse_ms("-nan%")
