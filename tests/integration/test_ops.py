"""Operations: worker processes, graceful shutdown, the access log, the error log.

Every test runs real nomapd processes (a supervisor and its workers with
`--workers 2`) and real TLS clients. The shutdown tests time the process from
SIGTERM to exit: a response in flight finishes, an idle keep-alive connection
is closed at once, a stalled client is cut off at `--shutdown-timeout`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.conftest import SIZES, ServerProcess
from tests.support.clients import read_until_close, tls_connect
from tests.support.files import file_bytes

BIG = SIZES[-1]  # 3 MiB + 17
LINE = re.compile(
    r"^(?P<addr>\S+) - - \[(?P<time>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] "
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+) '
    r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)" (?P<time_taken>\d+\.\d{3})$'
)


def _read_head(sock: ssl.SSLSocket) -> tuple[bytes, bytes, int]:
    """(head, body bytes already read, Content-Length)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the head: {buf!r}"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return head, rest, int(m.group(1)) if m else 0


def _get(sock: ssl.SSLSocket, path: str, extra: bytes = b"") -> tuple[bytes, bytes]:
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\n%s\r\n" % (path.encode(), extra))
    head, body, length = _read_head(sock)
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return head, body


def _fetch(port: int, path: str, extra: bytes = b"") -> tuple[bytes, bytes]:
    with tls_connect(port) as s:
        return _get(s, path, extra)


def _wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _access_lines(text: str) -> list[re.Match[str]]:
    out = []
    for line in text.splitlines():
        if line.startswith("nomapd:"):
            continue
        m = LINE.match(line)
        assert m, f"not an access log line: {line!r}"
        out.append(m)
    return out


def _exit_time(srv: ServerProcess, timeout: float) -> float:
    """Seconds the process takes to exit (asserting status 0 and a quiet stderr)."""
    t0 = time.monotonic()
    srv.proc.wait(timeout=timeout)
    took = time.monotonic() - t0
    srv.stop()
    assert srv.proc.returncode == 0, srv.stderr
    assert "Traceback" not in srv.stderr, srv.stderr
    return took


# -- --workers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def workers(
    corpus: pathlib.Path, state_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("wlog") / "access.log"
    srv = ServerProcess(
        corpus, ["--workers", "2", "--access-log", str(log), "--log-level", "info"], state_dir
    )
    yield srv
    srv.stop()
    assert srv.proc.returncode == 0, srv.stderr
    assert "Traceback" not in srv.stderr, srv.stderr


def _numeric(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def test_workers_share_the_port_and_the_counters_add_up(workers: ServerProcess) -> None:
    n = 40
    for i in range(n):  # a new connection each time: the kernel hashes each to a worker
        head, body = _fetch(workers.port, "/f4097.bin" if i % 2 else "/f16385.bin")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert body == file_bytes(4097 if i % 2 else 16385)
    total = workers.assert_no_leaks()  # on the sums: every worker's kernel is idle
    per = total["workers"]
    assert total["server.workers"] == 2 == len(per)
    assert total["server.workers_up"] == 2
    assert sorted(w["worker.index"] for w in per) == [0, 1]
    pids = {w["worker.pid"] for w in per}
    assert len(pids) == 2 and workers.proc.pid not in pids
    served = [w["server.connections"] for w in per]
    assert all(c > 0 for c in served), f"a worker served nothing: {served}"
    assert sum(served) == total["server.connections"] == n
    assert total["server.requests"] == n
    for key, value in total.items():
        if key.startswith("kern.") or not _numeric(value) or key.startswith("server.worker"):
            continue
        values = [w[key] for w in per]
        want = max(values) if key.endswith("peak") else sum(values)
        assert value == want, (key, value, values)
    assert total["vm.pages_total"] == 2 * per[0]["vm.pages_total"]  # two kernels
    assert total["server.mode"] == "ktls"
    with tls_connect(workers.port) as s:  # /connections: every worker's, each tagged
        _get(s, "/f4095.bin")
        url = f"http://127.0.0.1:{workers.admin_port}/connections"
        with urllib.request.urlopen(url, timeout=10) as r:
            conns = json.load(r)
        assert len(conns) == 1 and conns[0]["worker"] in (0, 1) and conns[0]["requests"] == 1


def test_workers_write_one_access_log_and_reopen_on_sighup(
    workers: ServerProcess, tmp_path: pathlib.Path
) -> None:
    log = pathlib.Path(workers.args[workers.args.index("--access-log") + 1])
    before_lines = len(_access_lines(log.read_text()))
    for _ in range(20):  # on new connections, so the kernel spreads them over both workers
        _fetch(workers.port, "/f4097.bin")
        _fetch(workers.port, "/f16385.bin")
    _wait_for(lambda: len(_access_lines(log.read_text())) >= before_lines + 40, 5, "the access log")
    lines = _access_lines(log.read_text())  # both workers' lines, none torn
    assert {m["request"] for m in lines} >= {"GET /f4097.bin HTTP/1.1", "GET /f16385.bin HTTP/1.1"}
    rotated = tmp_path / "access.log.1"
    log.rename(rotated)
    before = len(workers.stderr_lines)
    workers.proc.send_signal(signal.SIGHUP)  # forwarded: each worker reopens by name

    def reopened() -> int:
        return sum("access log" in ln and "reopened" in ln for ln in workers.stderr_lines[before:])

    _wait_for(lambda: reopened() == 2, 5, "both workers to reopen the log")
    for _ in range(10):
        _fetch(workers.port, "/f1.bin")
    _wait_for(lambda: log.exists() and len(_access_lines(log.read_text())) == 10, 5, "new lines")
    assert all(m["request"] == "GET /f1.bin HTTP/1.1" for m in _access_lines(log.read_text()))
    assert "/f1.bin" not in rotated.read_text()


def test_a_worker_that_dies_is_logged_and_restarted(workers: ServerProcess) -> None:
    victim = workers.stats()["workers"][1]
    os.kill(victim["worker.pid"], signal.SIGKILL)
    pattern = rf"nomapd: ERROR: worker 1 \(pid {victim['worker.pid']}\) was killed by SIGKILL"

    def logged() -> bool:
        return any(re.search(pattern, ln) for ln in workers.stderr_lines)

    _wait_for(logged, 5, "the error line")

    def back() -> bool:
        s = workers.stats()
        return bool(s["server.workers_up"] == 2 and s["workers"][1]["worker.restarts"] == 1)

    _wait_for(back, 10, "the worker to come back")
    s = workers.stats()
    assert s["workers"][1]["worker.pid"] not in (None, victim["worker.pid"])
    assert s["server.worker_restarts"] == 1
    for _ in range(10):
        head, body = _fetch(workers.port, "/f4096.bin")
        assert head.startswith(b"HTTP/1.1 200 ") and body == file_bytes(4096)
    workers.assert_no_leaks()


# -- graceful shutdown ----------------------------------------------------------


def test_sigterm_finishes_a_slow_download_and_closes_idle_connections(
    corpus: pathlib.Path, state_dir: pathlib.Path
) -> None:
    srv = ServerProcess(corpus, ["--shutdown-timeout", "10"], state_dir)
    try:
        idle = tls_connect(srv.port)
        head, _ = _get(idle, "/f1.bin")  # keep-alive, then nothing more
        assert head.startswith(b"HTTP/1.1 200 ")
        slow = tls_connect(srv.port)
        slow.sendall(b"GET /f%d.bin HTTP/1.1\r\nHost: localhost\r\n\r\n" % BIG)
        head, got, length = _read_head(slow)
        assert length == BIG
        while len(got) < 256 * 1024:
            got += slow.recv(65536)
        srv.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        idle.settimeout(5)
        assert idle.recv(1) == b""  # closed (close_notify, then FIN) at once
        idle_closed = time.monotonic() - t0
        time.sleep(0.1)
        with pytest.raises(ConnectionRefusedError):  # not accepting any more
            socket.create_connection(("127.0.0.1", srv.port), timeout=5).close()
        pause_at = len(got)
        while len(got) < BIG:  # a throttled reader: about 1.5 MiB/s
            chunk = slow.recv(64 * 1024)
            assert chunk, f"cut off at {len(got)} of {BIG}"
            got += chunk
            if len(got) >= pause_at:
                time.sleep(0.08)
                pause_at += 128 * 1024
        assert got == file_bytes(BIG)
        finished = time.monotonic() - t0
        slow.settimeout(5)
        assert slow.recv(1) == b""  # and then closed: it is idle now
        took = _exit_time(srv, 10)
        assert finished > 1.0  # the download really was in flight
        assert idle_closed < 0.5, idle_closed
        assert finished + took < 10, (finished, took)
        idle.close()
        slow.close()
    finally:
        srv.stop()


def test_shutdown_timeout_cuts_off_a_stalled_client(
    corpus: pathlib.Path, state_dir: pathlib.Path
) -> None:
    srv = ServerProcess(corpus, ["--shutdown-timeout", "1"], state_dir)
    try:
        stalled = tls_connect(srv.port)
        stalled.sendall(b"GET /f%d.bin HTTP/1.1\r\nHost: localhost\r\n\r\n" % BIG)
        _read_head(stalled)  # ... and read nothing more
        time.sleep(0.2)
        srv.proc.send_signal(signal.SIGTERM)
        took = _exit_time(srv, 10)
        assert 0.9 < took < 2.5, took
        assert "shutdown timeout (1 s): closing 1 connection(s)" in srv.stderr
        stalled.close()
    finally:
        srv.stop()


# -- access log -----------------------------------------------------------------


def test_access_log_lines(default_server: ServerProcess) -> None:
    srv = default_server
    start = len(srv.stdout)
    _fetch(srv.port, f"/f{BIG}.bin", b'User-Agent: probe "1"\r\nReferer: https://x/\r\n')
    _fetch(srv.port, '/missing?q="x"')
    with tls_connect(srv.port) as s:
        s.sendall(b"HEAD /f4096.bin HTTP/1.0\r\nUser-Agent: caf\xc3\xa9\r\n\r\n")
        read_until_close(s)
    with tls_connect(srv.port) as s:  # no request at all: 400 with "-"
        s.sendall(b"NOT HTTP\r\n\r\n")
        read_until_close(s)

    def lines() -> list[re.Match[str]]:
        return _access_lines("".join(srv.stdout[start:]))

    _wait_for(lambda: len(lines()) >= 4, 5, "four access log lines")  # flushed within 1 s
    big, missing, head, bad = lines()
    assert big["addr"] == "127.0.0.1"
    assert big["request"] == f"GET /f{BIG}.bin HTTP/1.1"
    assert (big["status"], int(big["bytes"])) == ("200", BIG)
    assert big["agent"] == r"probe \x221\x22" and big["referer"] == "https://x/"
    assert 0 < float(big["time_taken"]) < 30
    assert missing["request"] == r"GET /missing?q=\x22x\x22 HTTP/1.1"
    assert missing["status"] == "404" and missing["referer"] == "-" and missing["agent"] == "-"
    assert head["request"] == "HEAD /f4096.bin HTTP/1.0"
    assert (head["status"], head["bytes"]) == ("200", "0")
    assert head["agent"] == r"caf\xC3\xA9"
    assert (bad["request"], bad["status"]) == ("-", "400")
    srv.assert_no_leaks()


def test_access_log_of_an_aborted_download(default_server: ServerProcess) -> None:
    """As nginx: a download the client abandons is logged with the bytes that left."""
    srv = default_server
    start = len(srv.stdout)
    s = tls_connect(srv.port)
    s.sendall(b"GET /f%d.bin HTTP/1.1\r\nHost: localhost\r\n\r\n" % BIG)
    got = 0
    while got < 300_000:
        got += len(s.recv(65536))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()  # a reset, mid-body

    def lines() -> list[re.Match[str]]:
        return _access_lines("".join(srv.stdout[start:]))

    _wait_for(lambda: len(lines()) >= 1, 10, "the aborted download's access log line")
    (line,) = lines()
    assert line["status"] == "200" and line["request"] == f"GET /f{BIG}.bin HTTP/1.1"
    assert 250_000 < int(line["bytes"]) < BIG
    srv.assert_no_leaks()


def test_access_log_file_reopened_on_sighup(
    corpus: pathlib.Path, state_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    log = tmp_path / "access.log"
    srv = ServerProcess(corpus, ["--access-log", str(log)], state_dir)
    try:
        _fetch(srv.port, "/f1.bin")
        _wait_for(lambda: log.exists() and "/f1.bin" in log.read_text(), 5, "the first line")
        log.rename(tmp_path / "access.log.1")
        srv.proc.send_signal(signal.SIGHUP)
        _wait_for(log.exists, 5, "the reopened log")
        _fetch(srv.port, "/f4096.bin")
        _fetch(srv.port, "/f4097.bin")
        _wait_for(lambda: len(_access_lines(log.read_text())) == 2, 5, "two new lines")
        assert [m["request"] for m in _access_lines(log.read_text())] == [
            "GET /f4096.bin HTTP/1.1",
            "GET /f4097.bin HTTP/1.1",
        ]
        assert "/f4096.bin" not in (tmp_path / "access.log.1").read_text()
        assert not any(LINE.match(ln.rstrip("\n")) for ln in srv.stdout)  # none on stdout
    finally:
        srv.stop()
    assert srv.proc.returncode == 0, srv.stderr


def test_access_log_off_and_debug_level(corpus: pathlib.Path, state_dir: pathlib.Path) -> None:
    srv = ServerProcess(corpus, ["--access-log", "off", "--log-level", "debug"], state_dir)
    try:
        for _ in range(3):
            _fetch(srv.port, "/f1.bin")
        time.sleep(1.2)  # past a flush
        assert all(line.startswith("nomapd: ") for line in srv.stdout), srv.stdout
    finally:
        srv.stop()
    assert srv.proc.returncode == 0, srv.stderr
    assert re.search(r"(?m)^nomapd: DEBUG: pid \d+ listening on", srv.stderr), srv.stderr
    assert re.search(r"(?m)^nomapd: INFO: SIGTERM: shutting down$", srv.stderr), srv.stderr


def test_default_level_shows_no_info(default_server: ServerProcess) -> None:
    assert not any(": DEBUG: " in ln or ": INFO: " in ln for ln in default_server.stderr_lines)


# -- accept failures ------------------------------------------------------------


def test_emfile_on_accept_is_logged_and_retried(
    corpus: pathlib.Path, state_dir: pathlib.Path
) -> None:
    srv = ServerProcess(corpus, ["--http"], state_dir)
    pid = srv.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    try:
        nfds = len(os.listdir(f"/proc/{pid}/fd"))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (nfds, hard))  # no descriptor left
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(b"GET /f4096.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")

            def logged() -> bool:
                return any("accept returned EMFILE" in ln for ln in srv.stderr_lines)

            _wait_for(logged, 5, "the EMFILE line")
            time.sleep(0.5)  # several retries, one line
            lines = [ln for ln in srv.stderr_lines if "accept returned EMFILE" in ln]
            assert len(lines) == 1, lines
            assert lines[0].startswith("nomapd: ERROR: accept returned EMFILE")
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
            data = read_until_close(s)
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(file_bytes(4096))
        srv.assert_no_leaks()
    finally:
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        srv.stop()
    assert srv.proc.returncode == 0, srv.stderr


# -- bad flags --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--workers", "0"], "--workers must be between 1 and"),
        (["--workers", "lots"], "is not a number of processes"),
        (["--shutdown-timeout", "-1"], "--shutdown-timeout must be between"),
        (["--shutdown-timeout", "soon"], "--shutdown-timeout"),
        (["--access-log", "/nonexistent/dir/access.log"], "--access-log /nonexistent/dir"),
        (["--log-level", "loud"], "--log-level: 'loud' is not one of"),
    ],
)
def test_bad_operations_flags(args: list[str], needle: str, corpus: pathlib.Path) -> None:
    res: Any = subprocess.run(
        [sys.executable, "-m", "server", "serve", str(corpus), "--port", "0", "--admin", "off",
         *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr
