"""Graceful shutdown: stop accepting, let responses in flight finish, then close.

Theory of operation. On SIGTERM or SIGINT (`Server.stop`) the server

1. sets `server.stopping` and closes its listening sockets at once: new
   connections are refused by the host kernel, and connections accepted but
   still waiting for a `--max-connections` slot are closed;
2. closes idle connections at once: those with no request in progress (h11
   idle on both sides, no pipelined bytes waiting), including keep-alive
   connections between requests and connections still in their handshake.
   "Close" is shutdown(SHUT_RD) on the host socket, so the connection's own
   task reads end-of-file where it waits for the next request and leaves the
   normal way (close_notify, lingering close, teardown); bytes already queued
   are still read, so a request racing the shutdown is answered rather than
   lost. SHUT_RD never touches what we send;
3. keeps looking (every POLL seconds) for connections that finish their
   response and become idle, and closes them the same way;
4. after `--shutdown-timeout` seconds, cancels every connection still
   running (`Server.hard_stop`: each connection's run() has its own cancel
   scope; teardown still runs and frees its kernel resources), as nginx's
   `worker_shutdown_timeout` does. A second SIGTERM or SIGINT gets there at
   once.

nginx closes idle keep-alive connections at a graceful shutdown too
(`ngx_close_idle_connections`) and lets requests in flight finish.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import h11
import trio

if TYPE_CHECKING:
    from server.app import Server
    from server.connection import Connection

log = logging.getLogger("nomapd")

POLL = 0.05  # seconds between looks for connections that became idle


def is_idle(conn: Connection) -> bool:
    """No request in progress: a close now loses nothing the client sent or awaits.
    (`conn.idle` is the connection's own flag for a kept-alive wait; the h11 test
    also covers a connection still in its handshake or before its first request.)"""
    h = conn.h11
    return conn.idle or (
        h.our_state is h11.IDLE and h.their_state is h11.IDLE and not h.trailing_data[0]
    )


def close_idle(conn: Connection) -> None:
    with contextlib.suppress(OSError):
        conn.sock.shutdown(trio.socket.SHUT_RD)


async def drain(server: Server, timeout: float) -> None:
    """Steps 2-4 above; returns when no connection is left (or all were cancelled)."""
    deadline = trio.current_time() + timeout
    closed: set[Connection] = set()
    busy = server.handlers
    log.info("stopping: %d connection(s) open, waiting up to %g s", busy, timeout)
    while server.handlers:
        for conn in list(server.conns):
            if conn not in closed and is_idle(conn):
                closed.add(conn)
                close_idle(conn)
        closed &= server.conns
        if trio.current_time() >= deadline or server.hard_stopped:
            left = server.handlers
            if left and not server.hard_stopped:
                log.warning(
                    "shutdown timeout (%g s): closing %d connection(s) with responses in flight",
                    timeout, left,
                )  # fmt: skip
            server.hard_stop()
            return
        await trio.sleep(POLL)
