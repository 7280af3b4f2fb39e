"""The access log: one line per response in nginx's combined format plus the request time.

Theory of operation. Each line is what nginx writes with

    log_format timed '$remote_addr - $remote_user [$time_local] "$request" '
                     '$status $body_bytes_sent "$http_referer" '
                     '"$http_user_agent" $request_time';

for example

    127.0.0.1 - - [03/Jun/2026:14:02:11 +0200] "GET /f.bin HTTP/1.1" 200 3145745 "-"
        "curl/8.5.0" 0.412                                         (one line)

* `$remote_user` is always "-" (nomapd has no authentication); a header the
  client did not send is "-", one it sent empty is "" (as nginx logs an empty
  variable); a response sent before any request could be parsed (400, 408)
  logs "-" as the request line.
* `$body_bytes_sent` counts the body only, not the head; `$request_time` is
  seconds from the start of the request to the log write, ms resolution.
* Escaping is nginx's default: `"`, `\\` and every byte below 0x20 or above 0x7e
  become `\\xHH`, so a line is always printable ASCII and one line, whatever a
  client puts in its request target or headers.
* `$time_local` is the local time of the log write with English month names
  (never the locale's), computed once per second.

Writing: lines go into a buffer that is written when it passes 64 KiB, at
least once a second (`run_flusher`), and at exit -- nginx's `buffer=64k
flush=1s`. Nothing is fsynced. Each write(2) carries whole lines and at most
PIPE_BUF bytes when it can, so the lines of several worker processes sharing
one stdout pipe or one O_APPEND file never interleave. The write is a
blocking write(2) on the event-loop thread, as nginx's is: a log on a stalled
pipe stalls the server, a full disk drops lines (reported, rate-limited, on
stderr). `reopen()` (on SIGHUP) closes and reopens the file by name, so that
logrotate can rename it and the next lines go to a fresh file. "-" is stdout
(file descriptor 1), "off" writes nothing.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import time
from typing import TYPE_CHECKING

import trio

from server.errorlog import RateLimited

if TYPE_CHECKING:
    import h11

log = logging.getLogger("nomapd")

FLUSH_BYTES = 64 * 1024  # nginx's buffer=64k
FLUSH_INTERVAL = 1.0  # ... flush=1s
PIPE_BUF = getattr(select, "PIPE_BUF", 4096)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_UNSAFE = re.compile(rb'[\x00-\x1f"\\\x7f-\xff]')


def escape(value: bytes) -> bytes:
    """nginx's default log escaping: `"`, `\\`, controls and non-ASCII as \\xHH."""
    if _UNSAFE.search(value) is None:
        return value
    return _UNSAFE.sub(lambda m: b"\\x%02X" % m.group()[0], value)


def time_local(t: float) -> str:
    """`$time_local`: 03/Jun/2026:14:02:11 +0200."""
    tm = time.localtime(t)
    off = tm.tm_gmtoff // 60
    sign = "-" if off < 0 else "+"
    off = abs(off)
    return (
        f"{tm.tm_mday:02d}/{_MONTHS[tm.tm_mon - 1]}/{tm.tm_year}:"
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {sign}{off // 60:02d}{off % 60:02d}"
    )


def remote_addr(peer: str) -> str:
    """The address part of "ip:port" or "[v6]:port"."""
    host, sep, _port = peer.rpartition(":")
    if not sep or not host:
        return "-"
    return host.removeprefix("[").removesuffix("]")


def _header(request: h11.Request | None, name: bytes) -> bytes:
    if request is None:
        return b"-"
    for key, value in request.headers:
        if key == name:
            return escape(value)
    return b"-"


def format_line(
    peer: str,
    request: h11.Request | None,
    status: int,
    body_bytes: int,
    request_time: float,
    local_time: str,
) -> bytes:
    """One access log line, newline included."""
    if request is None:
        req = b"-"
    else:
        req = escape(b"%s %s HTTP/%s" % (request.method, request.target, request.http_version))
    return b'%s - - [%s] "%s" %d %d "%s" "%s" %.3f\n' % (
        escape(remote_addr(peer).encode("ascii", "replace")),
        local_time.encode(),
        req,
        status,
        body_bytes,
        _header(request, b"referer"),
        _header(request, b"user-agent"),
        max(request_time, 0.0),
    )


class AccessLog:
    """Buffered access log lines to a file, stdout ("-") or nowhere ("off")."""

    def __init__(self, target: str) -> None:
        """Opens the file now: OSError if it cannot be (the caller reports it)."""
        self.target = target
        self.enabled = target != "off"
        self._fd = -1
        self._own_fd = False
        self._buf: list[bytes] = []
        self._buffered = 0
        self._clock_sec = -1
        self._clock_text = ""
        self._failed = RateLimited(log, logging.ERROR, 10.0)
        self.lines = 0
        if target == "-":
            self._fd = 1
        elif self.enabled:
            self._fd = self._open()
            self._own_fd = True

    def _open(self) -> int:
        return os.open(self.target, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)

    def _now_text(self) -> str:
        now = time.time()
        sec = int(now)
        if sec != self._clock_sec:
            self._clock_sec = sec
            self._clock_text = time_local(now)
        return self._clock_text

    def log(
        self,
        peer: str,
        request: h11.Request | None,
        status: int,
        body_bytes: int,
        request_time: float,
    ) -> None:
        if not self.enabled:
            return
        line = format_line(peer, request, status, body_bytes, request_time, self._now_text())
        self._buf.append(line)
        self._buffered += len(line)
        self.lines += 1
        if self._buffered >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered: whole lines, at most PIPE_BUF bytes a write when possible."""
        if not self._buf:
            return
        lines, self._buf, self._buffered = self._buf, [], 0
        if self._fd < 0:
            return
        chunk: list[bytes] = []
        size = 0
        try:
            for line in lines:
                if chunk and size + len(line) > PIPE_BUF:
                    self._write(b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            if chunk:
                self._write(b"".join(chunk))
        except OSError as e:
            self._failed.log("access log %s: write failed, lines lost: %s", self.target, e)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except InterruptedError:
                continue
            if n <= 0:
                raise OSError(errno.EIO, "short write")
            view = view[n:]

    def reopen(self) -> None:
        """SIGHUP: write what is buffered, then reopen the file by name (logrotate)."""
        self.flush()
        if not self._own_fd:
            return
        try:
            fd = self._open()
        except OSError as e:  # keep writing to the old file rather than nowhere
            log.error("access log %s: cannot reopen, still writing the old one: %s", self.target, e)
            return
        os.close(self._fd)
        self._fd = fd
        log.info("access log %s reopened", self.target)

    def close(self) -> None:
        self.flush()
        if self._own_fd and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self._own_fd = False

    async def run_flusher(self) -> None:
        """Flush at least every FLUSH_INTERVAL seconds, until cancelled."""
        while True:
            await trio.sleep(FLUSH_INTERVAL)
            self.flush()
