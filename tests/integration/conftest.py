"""A real nomapd process on 127.0.0.1 for integration tests, and the corpus it serves.

Every server runs with `--port 0 --admin 127.0.0.1:0`; the ports are read from
its start-up lines (with `--host ::1` or `--host ::` the URL is [::1]).
`ServerProcess.idle_stats()` waits until the last connection has closed and
returns the counters, which tests use for the leak assertion: mbufs, clusters
(receive-side ones too), ext_pgs, sf_bufs, wired and anonymous pages in use
back to zero.
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.files import file_bytes
from tests.support.leaks import leaked

SIZES = [0, 1, 4095, 4096, 4097, 16383, 16384, 16385, 3 * 1024 * 1024 + 17]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("docroot")
    for size in SIZES:
        (root / f"f{size}.bin").write_bytes(file_bytes(size))
    (root / "index.html").write_text("<!doctype html><title>root</title><p>corpus</p>\n")
    (root / "dir").mkdir()
    (root / "dir" / "index.html").write_text("dir index\n")
    (root / ".secret").write_text("hidden\n")
    return root


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("state")


class ServerProcess:
    def __init__(self, root: pathlib.Path, args: list[str], state: pathlib.Path) -> None:
        self.args = args
        env = dict(os.environ, NOMAPD_STATE_DIR=str(state), PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "server", "serve", str(root), "--port", "0"]
        cmd += ["--admin", "127.0.0.1:0", *args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr_lines: list[str] = []
        self.stderr = ""
        self.port = 0
        self.admin_port = 0
        self.host = "127.0.0.1"  # as a URL writes it: [::1] for IPv6
        self.scheme = "http" if "--http" in args else "https"
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, False), daemon=True),
        ]
        for t in self._readers:
            t.start()
        try:
            self._read_banner()
        except BaseException:
            self.stop()
            raise

    def _pump(self, stream: Any, is_stdout: bool) -> None:
        for line in stream:
            (self.stdout if is_stdout else self.stderr_lines).append(line)
            if is_stdout:
                self.lines.put(line)

    def _read_banner(self) -> None:
        deadline = time.monotonic() + 30
        while not (self.port and self.admin_port):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"server did not start: {self.stdout} {self.stderr_lines}")
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if m := re.search(r"serving .* on https?://(127\.0\.0\.1|\[[0-9a-f:]+\]):(\d+)/", line):
                # A wildcard listener is reached through the loopback of its family.
                self.host = {"[::]": "[::1]"}.get(m.group(1), m.group(1))
                self.port = self.port or int(m.group(2))
            if m := re.search(r"counters on http://127\.0\.0\.1:(\d+)/stats", line):
                self.admin_port = int(m.group(1))

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats", timeout=10) as r:
            data: dict[str, Any] = json.load(r)
            return data

    def idle_stats(self, timeout: float = 15.0) -> dict[str, Any]:
        """Counters once no connection is open and nothing is in flight."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.stats()
            busy = s["server.connections_active"] or leaked(s)
            if not busy or time.monotonic() > deadline:
                return s
            time.sleep(0.05)

    def assert_no_leaks(self) -> dict[str, Any]:
        s = self.idle_stats()
        still = leaked(s)
        assert s["server.connections_active"] == 0
        assert still == {}, f"kernel resources still in use: {still}"
        return s

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._readers:
            t.join(timeout=5)
        self.stderr = "".join(self.stderr_lines)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()


def serve(root: pathlib.Path, args: list[str], state: pathlib.Path) -> Iterator[ServerProcess]:
    """A server for a fixture to yield from: stopped afterwards, and it must
    have exited cleanly (status 0, no traceback)."""
    srv = ServerProcess(root, args, state)
    yield srv
    srv.stop()
    assert srv.proc.returncode == 0, srv.stderr
    assert "Traceback" not in srv.stderr, srv.stderr


@pytest.fixture(scope="module")
def default_server(corpus: pathlib.Path, state_dir: pathlib.Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(corpus, [], state_dir)
    yield srv
    srv.stop()
    assert srv.proc.returncode == 0, srv.stderr
    assert "Traceback" not in srv.stderr, srv.stderr
