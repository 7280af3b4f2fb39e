"""nginx's configuration, and starting and stopping nginx and nomapd side by side.

nginx is the distribution's binary, started with ``-c CONF -p PREFIX -e ERRLOG
-g 'daemon off;'``; nomapd is its command (`.venv/bin/nomapd serve ...`) with
the flags of `NOMAPD_MATCHING_FLAGS` that its `serve --help` lists. Each runs
in its own session, so stopping it is one signal to its process group. A
server is ready when a TLS handshake on its port succeeds.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shlex
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from bench.loopback import HOST, SNI
from tools.nginx_compare.client import client_context

# nginx's configuration, complete. {placeholders} are filled in by `nginx_conf()`.
NGINX_CONF = """\
{user_line}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;

events {{
    worker_connections 256;
}}

http {{
    include {mime_types};
    default_type application/octet-stream;
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    sendfile on;
    keepalive_timeout 75s;
    client_header_timeout 10s;
    large_client_header_buffers 4 16k;
    etag on;
    if_modified_since exact;
    gzip_static on;   # ngx_http_gzip_static_module; there is no brotli_static in stock nginx
    gzip_vary on;     # without it gzip_static sends no "Vary: Accept-Encoding"
    # max_ranges unset: any number of ranges

    server {{
        listen {host}:{port} ssl;   # no "http2" parameter: HTTP/2 off
        {http2_line}server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {root};
        autoindex off;
        add_header Cache-Control "max-age=3600";

        location /listing/ {{
            autoindex on;
        }}
    }}
}}
"""

# nomapd flags to add when its `serve --help` lists them, so that it is configured like nginx.
NOMAPD_MATCHING_FLAGS: tuple[tuple[str, ...], ...] = (
    ("--autoindex",),
    ("--cache-control", "max-age=3600"),
)

NOTES = (
    "nginx: HTTP/2 is off because the listen directive has no `http2` parameter (the `http2` "
    "directive exists only from nginx 1.25.1 and is added only on such versions).",
    "nginx: `gzip_vary on` is added to the brief's configuration; without it gzip_static "
    "sends no `Vary: Accept-Encoding`.",
    "nginx has no brotli_static in its stock build (ngx_brotli is a third-party module), so "
    "text.txt.br is never chosen by nginx.",
    "nginx: `autoindex on` only for /listing/; nomapd's `--autoindex` is server-wide. The root "
    "has no other directory without index.html, so the cases see the same configuration.",
    "nginx follows symlinks out of the root (`disable_symlinks off` is its default) and serves "
    "dotfiles (it has no dotfile rule); nomapd refuses both unless --follow-symlinks / "
    "--serve-dotfiles.",
    "nginx adds `charset` to Content-Type only with a `charset` directive, which this "
    "configuration leaves unset; nomapd adds `charset=utf-8` to text types.",
    "nginx's `add_header` (without `always`) applies to 200, 201, 204, 206, 301, 302, 303, "
    "304, 307 and 308 only.",
)


class ServerError(Exception):
    pass


@dataclass
class Child:
    name: str
    argv: list[str]
    port: int
    log: pathlib.Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with (
                    socket.create_connection((HOST, self.port), timeout=1.0) as s,
                    client_context().wrap_socket(s, server_hostname=SNI),
                ):
                    return
            except (OSError, ssl.SSLError) as e:
                last = str(e)
            time.sleep(0.1)
        self.stop(timeout)
        raise ServerError(f"{self.name} not ready on port {self.port} ({last}):\n{self.log_tail()}")

    def stop(self, timeout: float) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        # The child leads its own process group (start_new_session): nginx's worker goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def nginx_version(nginx: str, timeout: float) -> tuple[str, tuple[int, ...], str]:
    """(version line, version tuple, configure arguments) of the nginx binary."""
    out = subprocess.run(
        [nginx, "-V"], capture_output=True, text=True, timeout=timeout, check=False
    ).stderr
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    if not m:
        raise ServerError(f"cannot read the version of {nginx}: {out!r}")
    version = tuple(int(x) for x in m.groups())
    line = out.splitlines()[0]
    return line, version, out


def nginx_conf(
    prefix: pathlib.Path,
    root: pathlib.Path,
    port: int,
    cert: pathlib.Path,
    key: pathlib.Path,
    version: tuple[int, ...],
    mime_types: pathlib.Path,
) -> str:
    return NGINX_CONF.format(
        # The master runs as root here; its workers would otherwise be "nobody", who cannot
        # read the temporary root (0700). Ignored (with a warning) when not root.
        user_line="user root;\n" if os.geteuid() == 0 else "",
        http2_line="http2 off;\n        " if version >= (1, 25, 1) else "",
        prefix=prefix,
        root=root,
        host=HOST,
        port=port,
        cert=cert,
        key=key,
        mime_types=mime_types,
    )


def nomapd_flags(cmd: list[str], timeout: float) -> tuple[list[str], list[str]]:
    """The matching flags nomapd knows (from `serve --help`) and those it does not."""
    try:
        help_text = subprocess.run(
            [*cmd, "serve", "--help"], capture_output=True, text=True, timeout=timeout, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ServerError(f"cannot run {shlex.join(cmd)} serve --help: {e}") from e
    known = set(re.findall(r"--[a-z][a-z0-9-]*", help_text))
    used: list[str] = []
    missing: list[str] = []
    for flag in NOMAPD_MATCHING_FLAGS:
        if flag[0] in known:
            used += flag
        else:
            missing.append(flag[0])
    return used, missing


@contextlib.contextmanager
def running(child: Child, timeout: float) -> Iterator[Child]:
    try:
        child.start(timeout)
        yield child
    finally:
        child.stop(timeout)
