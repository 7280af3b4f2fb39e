"""The access log line: nginx's combined format plus $request_time, nginx's escaping."""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Iterator

import h11
import pytest

from server import accesslog
from server.accesslog import AccessLog, escape, format_line, remote_addr, time_local

WHEN = "03/Jun/2026:14:02:11 +0200"


def _req(
    target: bytes = b"/f.bin",
    headers: list[tuple[bytes, bytes]] | None = None,
    method: bytes = b"GET",
    version: bytes = b"1.1",
) -> h11.Request:
    hdrs = [(b"Host", b"localhost"), *(headers or [])]
    return h11.Request(method=method, target=target, headers=hdrs, http_version=version)


def test_combined_format_with_request_time() -> None:
    req = _req(headers=[(b"User-Agent", b"curl/8.5.0"), (b"Referer", b"https://a.example/")])
    line = format_line("127.0.0.1:50312", req, 200, 3145745, 0.41249, WHEN)
    assert line == (
        b'127.0.0.1 - - [03/Jun/2026:14:02:11 +0200] "GET /f.bin HTTP/1.1" 200 3145745 '
        b'"https://a.example/" "curl/8.5.0" 0.412\n'
    )


def test_no_request_parsed() -> None:
    line = format_line("10.0.0.1:9", None, 400, 150, 0.0, WHEN)
    assert line == b'10.0.0.1 - - [03/Jun/2026:14:02:11 +0200] "-" 400 150 "-" "-" 0.000\n'


def test_missing_and_empty_headers() -> None:
    line = format_line("1.2.3.4:5", _req(headers=[(b"User-Agent", b"")]), 304, 0, 0.0005, WHEN)
    assert line.endswith(b' 304 0 "-" "" 0.001\n')  # absent: "-"; empty: ""


def test_http10_head_and_ipv6_peer() -> None:
    line = format_line("[::1]:443", _req(method=b"HEAD", version=b"1.0"), 200, 0, 1.5, WHEN)
    assert line.startswith(b'::1 - - [03/Jun/2026:14:02:11 +0200] "HEAD /f.bin HTTP/1.0" 200 0 ')
    assert line.endswith(b" 1.500\n")


@pytest.mark.parametrize(
    ("raw", "logged"),
    [
        (b"plain /path?a=b", b"plain /path?a=b"),
        (b'say "hi"', b"say \\x22hi\\x22"),
        (b"back\\slash", b"back\\x5Cslash"),
        (b"tab\there\x01\x1f", b"tab\\x09here\\x01\\x1F"),
        (b"del\x7f caf\xc3\xa9 \xff", b"del\\x7F caf\\xC3\\xA9 \\xFF"),
        (b"~ and space", b"~ and space"),
    ],
)
def test_escaping_as_nginx(raw: bytes, logged: bytes) -> None:
    assert escape(raw) == logged


def test_hostile_fields_stay_one_printable_line() -> None:
    req = _req(
        target=b'/x?"onerror=\\',
        headers=[(b"User-Agent", b'evil\x80"agent'), (b"Referer", b"caf\xc3\xa9")],
    )
    line = format_line("127.0.0.1:1", req, 404, 10, 0.2, WHEN)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert all(0x20 <= b <= 0x7E for b in line[:-1])
    assert b'"GET /x?\\x22onerror=\\x5C HTTP/1.1"' in line
    assert b'"caf\\xC3\\xA9" "evil\\x80\\x22agent"' in line


def test_negative_request_time_is_zero() -> None:
    assert format_line("1.1.1.1:1", None, 408, 0, -0.5, WHEN).endswith(b" 0.000\n")


def test_remote_addr() -> None:
    assert remote_addr("192.0.2.7:8443") == "192.0.2.7"
    assert remote_addr("[2001:db8::1]:443") == "2001:db8::1"
    assert remote_addr("?") == "-"


@pytest.fixture
def tz() -> Iterator[None]:
    old = os.environ.get("TZ")
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.mark.usefixtures("tz")
@pytest.mark.parametrize(
    ("zone", "text"),
    [
        ("UTC0", "01/Jan/2000:00:00:00 +0000"),
        ("EST5", "31/Dec/1999:19:00:00 -0500"),
        ("IST-5:30", "01/Jan/2000:05:30:00 +0530"),
    ],
)
def test_time_local(zone: str, text: str) -> None:
    os.environ["TZ"] = zone
    time.tzset()
    assert time_local(946684800.0) == text


def test_buffered_until_flush_then_reopened(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.log("127.0.0.1:1", _req(), 200, 5, 0.01)
    assert path.read_bytes() == b""  # buffered: no write(2) per request
    log.flush()
    assert path.read_bytes().count(b"\n") == 1
    path.rename(tmp_path / "access.log.1")
    log.log("127.0.0.1:1", _req(b"/second"), 200, 5, 0.01)
    log.reopen()  # what was buffered goes to the old file, the rest to the new one
    log.log("127.0.0.1:1", _req(b"/third"), 200, 5, 0.01)
    log.close()
    assert b"/second" in (tmp_path / "access.log.1").read_bytes()
    assert b"/third" in path.read_bytes() and b"/second" not in path.read_bytes()


def test_off_writes_nothing(tmp_path: pathlib.Path) -> None:
    log = AccessLog("off")
    log.log("127.0.0.1:1", _req(), 200, 5, 0.01)
    log.flush()
    log.close()
    assert log.lines == 0 and not log.enabled


def test_big_buffers_flush_by_themselves_in_whole_lines_of_at_most_pipe_buf(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[bytes] = []
    log = AccessLog(str(tmp_path / "a.log"))
    monkeypatch.setattr(log, "_write", writes.append)
    long_ua = [(b"User-Agent", b"x" * 1000)]
    n = 0
    while not writes:  # no explicit flush: FLUSH_BYTES triggers it
        log.log("127.0.0.1:1", _req(headers=long_ua), 200, 5, 0.01)
        n += 1
    assert sum(map(len, writes)) >= accesslog.FLUSH_BYTES
    for w in writes:
        assert len(w) <= accesslog.PIPE_BUF and w.endswith(b"\n")
    assert sum(w.count(b"\n") for w in writes) == n
    log.close()


def test_write_failure_is_reported_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    r, w = os.pipe()
    os.close(r)
    log = AccessLog("-")
    log._fd = w  # a pipe nobody reads: EPIPE
    log.log("127.0.0.1:1", _req(), 200, 5, 0.01)
    with caplog.at_level("ERROR", logger="nomapd"):
        log.flush()
        log.log("127.0.0.1:1", _req(), 200, 5, 0.01)
        log.flush()  # rate-limited: one report
    os.close(w)
    reports = [r for r in caplog.records if "write failed" in r.getMessage()]
    assert len(reports) == 1
