"""The kernel's rules under pressure, against a real server: tiny physical memory,
a bounded sf_buf pool, a file truncated mid-send, a client that stops reading."""

from __future__ import annotations

import http.client
import os
import pathlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import ServerProcess
from tests.support.clients import client_context, tls_connect

FIVE_MIB = 5 * 1024 * 1024


def _fetch(srv: ServerProcess, path: str, results: list[bytes | Exception]) -> None:
    try:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", srv.port, context=client_context(), timeout=120
        )
        conn.request("GET", path)
        resp = conn.getresponse()
        results.append(resp.read())
        conn.close()
    except Exception as e:  # reported by the test
        results.append(e)


@pytest.fixture(scope="module")
def big_root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("big")
    (root / "five.bin").write_bytes(os.urandom(FIVE_MIB))
    for i in range(16):
        (root / f"five{i}.bin").write_bytes(os.urandom(FIVE_MIB))
    return root


@pytest.fixture
def server_with(big_root: pathlib.Path, state_dir: pathlib.Path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for srv in started:
        srv.stop()
        assert srv.proc.returncode == 0, srv.stderr
        assert "Traceback" not in srv.stderr, srv.stderr


def _start(big_root: pathlib.Path, state: pathlib.Path, *args: str) -> ServerProcess:
    return ServerProcess(big_root, list(args), state)


def _paused_fetch(
    srv: ServerProcess,
    tls: bool,
    name: str,
    go: threading.Event,
    out: list[tuple[str, bytes | Exception]],
) -> None:
    """GET /name with a small receive buffer, read the head, then read nothing more
    until `go` (the server's send buffer stays as full as memory allows), then the
    body to the end."""
    try:
        s: socket.socket
        if tls:
            s = tls_connect(srv.port, timeout=120, rcvbuf=16384)
        else:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            s.settimeout(120)
            s.connect(("127.0.0.1", srv.port))
        s.sendall(b"GET /%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % name.encode())
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(65536)
        body = got.partition(b"\r\n\r\n")[2]
        assert go.wait(timeout=120), "never told to read on"
        while len(body) < FIVE_MIB:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            body += chunk
        s.close()
        out.append((name, body))
    except Exception as e:  # reported by the test
        out.append((name, e))


def _wait_for_counter(srv: ServerProcess, name: str, timeout: float) -> int:
    """The counter once it is above zero, or 0 after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (value := int(srv.stats()[name])) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


@pytest.mark.parametrize("mode", [[], ["--http"], ["--no-nomap"]])
def test_sixteen_clients_through_four_megabytes(
    big_root: pathlib.Path,
    state_dir: pathlib.Path,
    server_with: list[ServerProcess],
    mode: list[str],
) -> None:
    """16 clients fetch 5 MiB files through 4 MiB of physical memory (1024 page
    frames): everyone gets the whole file, the kernel had to wait for memory
    (vm_wait), and nothing is left wired. Over TLS they share one file (each needs
    its own ciphertext pages); in plain HTTP shared file pages would all fit, so
    each client fetches a file of its own.

    The wait is certain, not a matter of timing: each send buffer holds 512 KiB
    (128 frames of data, the most --phys-mem 4M allows), so the 16 connections
    want twice the frames there are, and no client reads past its response head
    until the server has counted a wait. Timing decides only how soon."""
    srv = _start(big_root, state_dir, "--phys-mem", "4M", "--sndbuf", "512K", *mode)
    server_with.append(srv)
    tls = "--http" not in mode
    names = ["five.bin"] * 16 if tls else [f"five{i}.bin" for i in range(16)]
    results: list[tuple[str, bytes | Exception]] = []
    go = threading.Event()
    threads = [
        threading.Thread(target=_paused_fetch, args=(srv, tls, name, go, results)) for name in names
    ]
    for t in threads:
        t.start()
    try:
        waits = _wait_for_counter(srv, "vm.waits", timeout=60)
    finally:
        go.set()
    for t in threads:
        t.join(timeout=180)
    assert waits > 0, "no vm_wait within 60 s, with 2048 frames wanted of 1024"
    assert len(results) == 16
    bad = [
        (name, r if isinstance(r, Exception) else len(r))
        for name, r in results
        if r != (big_root / name).read_bytes()
    ]
    assert bad == []
    s = srv.assert_no_leaks()
    assert s["vm.pages_total"] == 1024
    assert s["vm.waits"] >= waits
    assert s["vm.evictions"] > 0  # 5 MiB files cannot stay cached in 4 MiB


def test_bounded_sfbufs_without_nomap(
    big_root: pathlib.Path, state_dir: pathlib.Path, server_with: list[ServerProcess]
) -> None:
    """A platform without a direct map: conversions that cannot get their sf_bufs are
    dropped with ENOBUFS and sent again; every client still gets every byte."""
    srv = _start(big_root, state_dir, "--no-nomap", "--nsfbufs", "24")
    server_with.append(srv)
    expected = (big_root / "five.bin").read_bytes()
    results: list[bytes | Exception] = []
    threads = [threading.Thread(target=_fetch, args=(srv, "/five.bin", results)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert results and all(r == expected for r in results)
    s = srv.assert_no_leaks()
    assert s["sfbuf.max"] == 24 and s["sfbuf.peak"] <= 24
    assert s["sfbuf.denied"] > 0 and s["ip.odropped"] > 0 and s["tcp.drops"] > 0


def test_file_truncated_while_being_sent(
    tmp_path: pathlib.Path, state_dir: pathlib.Path, server_with: list[ServerProcess]
) -> None:
    """The client gets a correct prefix, then the connection closes short of
    Content-Length; never bytes of the truncated version, and the abort is counted."""
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(8 * 1024 * 1024)
    (root / "t.bin").write_bytes(data)
    srv = _start(root, state_dir, "--sndbuf", "64K", "--readahead", "0")
    server_with.append(srv)
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s = client_context().wrap_socket(raw, server_hostname="localhost")
    s.sendall(b"GET /t.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(65536)
    head, _, body = got.partition(b"\r\n\r\n")
    assert b"Content-Length: %d" % len(data) in head
    while len(body) < 256 * 1024:
        body += s.recv(65536)
    os.truncate(root / "t.bin", 1024 * 1024)  # shrink far below what was promised
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            break
        if not chunk:
            break
        body += chunk
    s.close()
    assert len(body) < len(data)
    assert body == data[: len(body)]  # a correct prefix of the version it started with
    stats = srv.assert_no_leaks()
    assert stats["server.responses_aborted"] == 1
    assert stats["sendfile.file_changed"] == 1


def test_client_that_stops_reading(
    big_root: pathlib.Path, state_dir: pathlib.Path, server_with: list[ServerProcess]
) -> None:
    """A client that stops reading holds only its own send buffer; others are served,
    and after --send-timeout it is dropped and everything it held is freed."""
    srv = _start(big_root, state_dir, "--send-timeout", "2")
    server_with.append(srv)
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled = client_context().wrap_socket(raw, server_hostname="localhost")
    stalled.sendall(b"GET /five.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    stalled.recv(100)  # the response has started; now never read again
    time.sleep(0.5)
    during = srv.stats()
    assert during["server.connections_active"] == 1
    assert during["mbuf.ext_pgs_in_use"] > 0  # its send buffer is full and held
    assert during["sockbuf.ccc_peak"] <= 256 * 1024 + 4096
    results: list[bytes | Exception] = []
    _fetch(srv, "/five.bin", results)
    assert results == [(big_root / "five.bin").read_bytes()]
    deadline = time.monotonic() + 15
    while srv.stats()["server.connections_active"] and time.monotonic() < deadline:
        time.sleep(0.1)
    after = srv.assert_no_leaks()
    assert after["server.timeouts"] >= 1
    stalled.close()
