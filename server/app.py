"""The server: one modeled kernel, the listeners, and a task per connection.

`Server` owns the `mbuf.Kernel` (physical memory, page cache, NIC, counters),
the KTLS worker pool, the OpenSSL context and the listeners. Connections are
served by `trio.serve_listeners`, which keeps accepting through EMFILE/ENFILE
by sleeping and retrying. The admin listener (plain HTTP, loopback unless
`--admin-public`) serves the counters at /stats.

Start-up problems (port in use, unusable certificate) are configuration
errors: one line on stderr, exit code 2. SIGINT and SIGTERM stop the server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections import Counter
from typing import Any

import trio
from OpenSSL import SSL

from ktls.handshake import make_server_context
from ktls.workers import KtlsWorkers
from mbuf.kern import Kernel
from server.admin import serve_admin
from server.certs import CertificateError, ensure_self_signed, fingerprint, load_check
from server.config import ConfigError, ServerConfig
from server.connection import Connection
from server.responses import DateCache
from server.txpath import VmWaitQueue

log = logging.getLogger("nomapd")

# Server-level counters, always present in /stats (as server.NAME).
SERVER_COUNTERS = (
    "connections",
    "connection_errors",
    "connections_refused",
    "tls_handshakes",
    "tls_handshake_failures",
    "protocol_errors",
    "timeouts",
    "requests",
    "body_bytes",
    "responses_aborted",
    *(f"status_{code}" for code in (200, 204, 301, 304, 400, 403, 404, 405, 408, 412)),
)


class Server:
    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.root = cfg.root.resolve()
        self.kern = Kernel(
            cfg.phys_mem,
            capenable=cfg.capenable(),
            mb_use_ext_pgs=cfg.sendfile_nomap,
            nsfbufs=cfg.nsfbufs,
            readahead=cfg.readahead,
        )
        self.stats: Counter[str] = Counter(dict.fromkeys(SERVER_COUNTERS, 0))
        self.date = DateCache()
        self.ssl_ctx: SSL.Context | None = None
        self.fingerprint = ""
        self.workers = KtlsWorkers(0)
        self.vmq = VmWaitQueue()
        self.kern.set_wakeup(self.vmq.wakeup)
        self.limiter = trio.CapacityLimiter(cfg.max_connections)
        self.active = 0
        self.conns: set[Connection] = set()
        self._keylog: Any = None

    def setup_tls(self) -> None:
        cfg = self.cfg
        if cfg.http:
            return
        try:
            if cfg.cert is None or cfg.key is None:
                files = ensure_self_signed()
                cert, key, self.fingerprint = files.cert, files.key, files.fingerprint_sha256
            else:
                cert, key = cfg.cert, cfg.key
                load_check(cert, key)
                self.fingerprint = fingerprint(cert)
        except CertificateError as e:
            raise ConfigError(str(e)) from e
        sink = None
        if cfg.keylog is not None:
            try:
                fd = os.open(cfg.keylog, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            except OSError as e:
                raise ConfigError(f"--keylog {cfg.keylog}: {e.strerror}") from e
            self._keylog = os.fdopen(fd, "ab", buffering=0)
            keylog = self._keylog

            def sink(line: bytes) -> None:
                keylog.write(line.rstrip(b"\r\n") + b"\n")

        try:
            self.ssl_ctx = make_server_context(str(cert), str(key), keylog_sink=sink)
        except SSL.Error as e:
            raise ConfigError(f"cannot use certificate {cert} / key {key}: {e}") from e

    def statistics(self) -> dict[str, Any]:
        snap = dict(self.kern.statistics())
        snap.update({f"server.{k}": v for k, v in sorted(self.stats.items())})
        snap["server.connections_active"] = self.active
        snap["server.mode"] = self.mode()
        return snap

    def connections(self) -> list[dict[str, object]]:
        """Every open connection with its TLS sessions' counters (admin /connections)."""
        return [c.info() for c in self.conns]

    def mode(self) -> str:
        if self.cfg.http:
            return "http"
        return "ktls" if self.cfg.ktls else "user-tls"

    async def handle(self, stream: trio.SocketStream) -> None:
        """One connection. At most --max-connections run at once; the others wait
        here, accepted, until a slot frees (nginx's worker_connections)."""
        try:
            if self.limiter.statistics().tasks_waiting >= self.cfg.max_connections:
                self.stats["connections_refused"] += 1  # the waiting line is full too
                return
            with trio.move_on_after(self.cfg.header_timeout) as cs:
                await self.limiter.acquire()
            if cs.cancelled_caught:
                self.stats["connections_refused"] += 1
                return
            try:
                await self._handle(stream)
            finally:
                self.limiter.release()
        finally:
            with contextlib.suppress(OSError):
                stream.socket.close()

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.active += 1
        self.stats["connections"] += 1
        try:
            async with trio.open_nursery() as nursery:
                try:
                    conn = Connection(self, stream, nursery)
                except OSError as e:  # reset before we looked at it (getpeername)
                    log.debug("connection gone at accept: %s", e)
                    return
                self.conns.add(conn)
                try:
                    await conn.run()
                finally:
                    self.conns.discard(conn)
                    await conn.teardown()
        except Exception:
            self.stats["connection_errors"] += 1
            log.exception("connection failed")
        finally:
            self.active -= 1


def _announce(
    server: Server, listeners: list[trio.SocketListener], admin: list[trio.SocketListener] | None
) -> None:
    cfg = server.cfg
    if cfg.keylog is not None:  # first, so that nobody misses it
        print(f"nomapd: WARNING: writing TLS secrets to {cfg.keylog} (--keylog)", flush=True)
    scheme = "http" if cfg.http else "https"
    for lst in listeners:
        host, port = lst.socket.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"nomapd: serving {server.root} on {scheme}://{shown}:{port}/", flush=True)
    if server.fingerprint:
        print(f"nomapd: certificate SHA-256 fingerprint {server.fingerprint}", flush=True)
    if admin:
        host, port = admin[0].socket.getsockname()[:2]
        print(f"nomapd: counters on http://{host}:{port}/stats (nomapd stat)", flush=True)
    caps = ",".join(n.removeprefix("IFCAP_") for n in server.kern.ifnet.capenable_names())
    print(
        f"nomapd: mode {server.mode()}; nm0 options=<{caps or 'none'}>; "
        f"sendfile {'unmapped' if cfg.sendfile_nomap else 'sf_buf'}; "
        f"phys-mem {cfg.phys_mem >> 20}M; ktls workers {cfg.ktls_workers}",
        flush=True,
    )


async def _serve(server: Server) -> None:
    cfg = server.cfg
    token = trio.lowlevel.current_trio_token()
    server.workers = KtlsWorkers(cfg.ktls_workers, post=token.run_sync_soon)
    try:
        try:
            listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.host)
        except OSError as e:
            raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror}") from e
        admin_listener = None
        if cfg.admin is not None:
            try:
                admins = await trio.open_tcp_listeners(cfg.admin[1], host=cfg.admin[0])
            except OSError as e:
                raise ConfigError(
                    f"cannot listen on admin {cfg.admin[0]}:{cfg.admin[1]}: {e.strerror}"
                ) from e
            admin_listener = admins
        _announce(server, listeners, admin_listener)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
            if admin_listener is not None:
                nursery.start_soon(serve_admin, server, admin_listener)
            await trio.serve_listeners(server.handle, listeners)
    finally:
        server.workers.shutdown()


async def _stop_on_signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


def run_server(cfg: ServerConfig) -> int:
    logging.basicConfig(level=logging.WARNING, format="nomapd: %(message)s", stream=sys.stderr)
    server = Server(cfg)
    server.setup_tls()
    trio.run(_serve, server)
    return 0
