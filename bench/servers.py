"""Starting and stopping the servers under test, one process (tree) per row.

Theory of operation. Every server listens on 127.0.0.1, on a port picked free
just before it starts, serves the same document root, and for HTTPS uses the
same self-signed P-256 certificate (`bench.cert`; `tools/nginx_compare` runs
nginx and nomapd side by side the same way). Each is
started in its own session (`start_new_session`), so stopping it is one
SIGTERM to its process group (nginx's worker and hypercorn's worker go with
their parents), then SIGKILL after 10 s.

- nomapd: `python -m server serve ROOT` of this checkout with the row's flags,
  `--access-log off` (logging every request would be CPU that nginx's
  `access_log off` below does not spend), `--admin 127.0.0.1:PORT` for the
  counters, one process (`--workers 1`, the default).
- nginx: the distribution's binary, `-g 'daemon off;'`, with `NGINX_CONF`:
  1 worker, `sendfile on`, `access_log off`, keep-alive limits as nomapd's
  defaults (75 s, 1000 requests), TLS 1.2/1.3, no HTTP/2. As root the
  workers run as root ("user root;"): the temporary root is mode 0700.
- hypercorn: `python -m hypercorn -k trio -w 1` from the peers venv that
  `bench.install` creates, serving `bench.peer_app:app` (Starlette's
  StaticFiles on the same root), keep-alive timeout 75 s like the others.

A server is ready when a real GET of a small file over its protocol returns
200; its log (stdout and stderr) is kept in the run's work directory and its
tail is reported if it does not start.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pathlib
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from bench import procfs
from bench.loopback import HOST, free_port
from bench.rows import HYPERCORN, NGINX, NOMAPD, Row

REPO = pathlib.Path(__file__).resolve().parents[1]
READY_PATH = "/1k.bin"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

NGINX_CONF = """\
{user_line}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    sendfile on;
    keepalive_timeout 75s;
    keepalive_requests 1000;

    server {{
        listen {host}:{port}{ssl};
        server_name localhost;
{tls_lines}        root {root};
    }}
}}
"""

NGINX_TLS_LINES = """\
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
"""


class StartError(Exception):
    """A server did not become ready; the message carries its log's tail."""


@dataclass(frozen=True)
class Setting:
    """What every server of a run shares."""

    root: pathlib.Path
    cert: pathlib.Path
    key: pathlib.Path
    work: pathlib.Path
    nginx: str | None
    peers_python: pathlib.Path | None
    nomapd_args: tuple[str, ...] = ()


def nginx_conf(prefix: pathlib.Path, row: Row, port: int, s: Setting) -> str:
    tls = NGINX_TLS_LINES.format(cert=s.cert, key=s.key) if row.tls else ""
    return NGINX_CONF.format(
        user_line="user root;\n" if os.geteuid() == 0 else "",
        prefix=prefix,
        host=HOST,
        port=port,
        ssl=" ssl" if row.tls else "",
        tls_lines=tls,
        root=s.root,
    )


def command(row: Row, port: int, admin: int, s: Setting) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that start `row` on `port` (`admin`: nomapd's counters)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if row.server == NOMAPD:
        argv = [sys.executable, "-m", "server", "serve", str(s.root), "--host", HOST]
        argv += ["--port", str(port), "--admin", f"{HOST}:{admin}", "--access-log", "off"]
        if row.tls:
            argv += ["--cert", str(s.cert), "--key", str(s.key)]
        env["NOMAPD_STATE_DIR"] = str(s.work / "nomapd-state")
        env.update(row.env)
        return [*argv, *row.flags, *s.nomapd_args], env
    if row.server == NGINX:
        if s.nginx is None:
            raise StartError("nginx is not installed")
        prefix = s.work / row.name
        prefix.mkdir(parents=True, exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(prefix, row, port, s))
        argv = [s.nginx, "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "error.log")]
        return [*argv, "-g", "daemon off;"], env
    if row.server == HYPERCORN:
        if s.peers_python is None:
            raise StartError("hypercorn is not installed (the peers venv could not be made)")
        argv = [str(s.peers_python), "-m", "hypercorn", "-k", "trio", "-w", "1"]
        argv += ["-b", f"{HOST}:{port}", "--keep-alive", "75"]
        if row.tls:
            argv += ["--certfile", str(s.cert), "--keyfile", str(s.key)]
        env["BENCH_DOCROOT"] = str(s.root)
        env["PYTHONPATH"] = str(REPO)
        return [*argv, "bench.peer_app:app"], env
    raise ValueError(row.server)


def _client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def fetch_status(row: Row, port: int, path: str, timeout: float = 5.0) -> int:
    """The status of one GET over the row's protocol (the body is read and dropped)."""
    conn: http.client.HTTPConnection
    if row.tls:
        conn = http.client.HTTPSConnection(HOST, port, timeout=timeout, context=_client_context())
    else:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": "localhost"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


@dataclass
class Server:
    """A running server of one row."""

    row: Row
    port: int
    admin: int
    log: pathlib.Path
    proc: subprocess.Popen[bytes]
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # what it was started with

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"{self.row.scheme}://{HOST}:{self.port}{path}"

    def pids(self) -> list[int]:
        return procfs.tree(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stats(self) -> dict[str, Any] | None:
        """nomapd's /stats counters, None for other servers."""
        if self.row.server != NOMAPD:
            return None
        url = f"http://{HOST}:{self.admin}/stats"
        with urllib.request.urlopen(url, timeout=10) as r:
            data: dict[str, Any] = json.load(r)
            return data

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def terminate(self) -> None:
        """SIGTERM to the process group; `stop` waits for it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT)


def stop_all(servers: list[Server]) -> None:
    """Stop servers together: signal all, then wait for each."""
    for server in servers:
        server.terminate()
    for server in servers:
        server.stop()


def launch(row: Row, s: Setting) -> Server:
    """Start `row`'s server; `wait_ready` must follow."""
    port, admin = free_port(), free_port()
    argv, env = command(row, port, admin, s)
    log = s.work / f"{row.name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            start_new_session=True,
        )
    return Server(row, port, admin, log, proc, argv, env)


def wait_ready(server: Server, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not server.alive():
            # The log's last line on the first line: the run's record and the
            # progress line keep only that one (a start error's reason, e.g. a port
            # or a device directory in use).
            tail = server.log_tail()
            last = tail.splitlines()[-1] if tail else "no output"
            raise StartError(
                f"{server.row.name} exited with {server.proc.returncode}: {last}\n{tail}"
            )
        try:
            status = fetch_status(server.row, server.port, READY_PATH, timeout=2.0)
            if status == 200 and (server.row.server != NOMAPD or server.stats() is not None):
                return
            last = f"status {status}"
        except (OSError, ssl.SSLError, http.client.HTTPException) as e:
            last = str(e) or type(e).__name__
        time.sleep(0.1)
    server.stop()
    raise StartError(
        f"{server.row.name} not ready after {timeout:.0f}s ({last}):\n{server.log_tail()}"
    )


def start_all(rows: list[Row], s: Setting) -> tuple[dict[str, Server], dict[str, str]]:
    """Start `rows` together (their start-ups overlap); return the ready ones and the errors."""
    launched: dict[str, Server] = {}
    errors: dict[str, str] = {}
    for row in rows:
        try:
            launched[row.name] = launch(row, s)
        except (StartError, OSError) as e:
            errors[row.name] = str(e)
    ready: dict[str, Server] = {}
    for name, server in launched.items():
        try:
            wait_ready(server)
            ready[name] = server
        except StartError as e:
            errors[name] = str(e)
    return ready, errors
