"""The server: one modeled kernel, the listeners, and a task per connection.

`Server` owns the `mbuf.Kernel` (physical memory, page cache, NIC, counters),
the KTLS worker pool, the OpenSSL context, the access log and the listeners.
Connections are accepted by `server.listen.serve_listeners`, which keeps
accepting through EMFILE/ENFILE/ENOMEM/ENOBUFS by logging, sleeping and
retrying. The admin listener (plain HTTP, loopback unless `--admin-public`)
serves the counters at /stats.

With `--workers N` (N > 1) the command line starts the supervisor instead
(server/supervisor.py), and each worker is this module again with
`--worker-index`: listening sockets inherited from the supervisor, no admin
listener and no start-up lines of its own, its counters answered over its
control channel (server/worker.py).

Signals: SIGTERM and SIGINT begin a graceful shutdown (server/shutdown.py:
stop accepting, close idle connections, let responses in flight finish up to
`--shutdown-timeout`, then cancel the rest); a second one cancels at once.
SIGHUP reopens the access log. The hooks a connection sees are
`server.stopping` (a trio.Event, set when the shutdown begins),
`server.log_access()` after each response, and a cancel scope around each
`Connection.run()`, cancelled at the shutdown deadline.

Start-up problems (port in use, unusable certificate) are configuration
errors: one line on stderr, exit code 2.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import trio
from OpenSSL import SSL

from bpf import Bpf, bpf_stats, bpfattach
from bpf.bpf_h import DLT_EN10MB
from bpf.bpf_sysctl import bpf_sysctl_init
from ktls.handshake import make_server_context
from ktls.workers import KtlsWorkers
from mbuf import CORE
from mbuf.if_tap import ETHER_HDR_LEN
from mbuf.kern import Kernel
from netmap import Netmap, netmap_attach_ifnet, netmap_sysctl_init
from server import errorlog
from server.accesslog import AccessLog
from server.admin import serve_admin
from server.config import ConfigError, ServerConfig
from server.connection import Connection
from server.control import (
    Result,
    counter_descriptions,
    ifcap_set,
    ifconfig_all,
    ifconfig_set,
    sysctl_set,
)
from server.counters import ServerStat
from server.devices.bpfdev import bpf_device
from server.devices.bpfkeys import KeyExport
from server.devices.ctldev import ctl_device
from server.devices.devfs import DevFs, DevStat, open_instance, remove_instance
from server.devices.netmapdev import NetmapDev, netmap_device, netmap_rows
from server.http.responses import DateCache
from server.http.static import OpenFileCache, Site
from server.listen import listeners_from_fds, serve_listeners
from server.reqstat import RequestRecords
from server.shutdown import drain
from server.startup import admin_token, announce, certificate, mode_name, open_admin
from server.txpath import VmWaitQueue
from server.worker import serve_control
from userland.devdir import instance_dir

if TYPE_CHECKING:
    import h11

log = logging.getLogger("nomapd")


class Server:
    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.root = cfg.root.resolve()
        self.site = Site(
            self.root,
            follow_symlinks=cfg.follow_symlinks,
            serve_dotfiles=cfg.serve_dotfiles,
            autoindex=cfg.autoindex,
            cache_control=cfg.cache_control.encode() if cfg.cache_control else None,
            default_type=cfg.default_type,
            max_ranges=cfg.max_ranges,
        )
        self.file_cache = OpenFileCache()
        self.kern = Kernel(
            cfg.phys_mem,
            capenable=cfg.capenable(),
            mb_use_ext_pgs=cfg.sendfile_nomap,
            nsfbufs=cfg.nsfbufs,
            readahead=cfg.readahead,
            loss=cfg.loss,
            loss_seed=cfg.loss_seed + (cfg.worker_index or 0),
            ktls_enable=cfg.ktls and not cfg.http,
            sendspace=cfg.sndbuf,
        )
        # Packet capture: the worker's bpf subsystem and nm0's tap point (the
        # driver taps only while a descriptor is attached to it).
        self.bpf = Bpf()
        self.bpf.sysctl.zerocopy_enable = cfg.bpf_zerocopy
        self.bif = bpfattach(self.bpf, self.kern.ifnet.if_xname, DLT_EN10MB, ETHER_HDR_LEN)
        self.keys = KeyExport(self.bpf)  # TLS key log lines for captures that ask (--keys)
        self.kern.ifnet.if_bpf = self.bif
        bpf_sysctl_init(self.kern.sysctl, self.bpf)  # net.bpf.*
        self.kern.sysctl.add_int(
            "kern.ipc.tls.maxthreads", "KTLS worker threads (--ktls-workers; 0: encrypt inline; "
            "set at start)", lambda: cfg.ktls_workers,
        )  # fmt: skip
        self.kern.sysctl.describe(counter_descriptions())
        self.admin_token: str | None = None  # --admin-control: what POSTs must present
        self.devstat = DevStat()  # the device files (server/devices/): /dev/bpf, /dev/netmap
        # netmap: the worker's subsystem; its monitors may watch nm0; its regions
        # are memfds the device passes to the processes that register.
        self.netmap = Netmap()
        self.netmap.sysctl.buf_num = cfg.netmap_buf_num
        self.netmap.sysctl.buf_size = cfg.netmap_buf_size
        self.netmap.sysctl.ring_num = cfg.netmap_ring_num
        self.netmap.sysctl.if_num = cfg.netmap_if_num
        netmap_attach_ifnet(self.netmap, self.kern.ifnet)
        netmap_sysctl_init(self.kern.sysctl, self.netmap)  # dev.netmap.* (nomapd sysctl)
        self.netmapdev = NetmapDev(self.netmap, self.devstat)
        self.stats = ServerStat()
        # Finished page responses a page may ask about (server/reqstat.py).
        self.request_records = RequestRecords(cfg.worker_index or 0)
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
        # Operations (see the module docstring): shutdown and logs.
        self.stopping = trio.Event()  # set when a graceful shutdown begins
        self.hard_stopped = False  # ... and when it stops waiting for responses
        self.handlers = 0  # connection tasks, including those waiting for a slot
        self._scopes: dict[Connection, trio.CancelScope] = {}
        self._lingering: set[trio.CancelScope] = set()  # lingering closes, slots released
        self._waiting: set[trio.CancelScope] = set()  # accepted, waiting for a slot
        self._accepting: trio.CancelScope | None = None  # the accept loops
        try:
            self.access = AccessLog(cfg.access_log)
        except OSError as e:
            raise ConfigError(f"--access-log {cfg.access_log}: {e.strerror}") from e

    def setup_tls(self) -> None:
        cfg = self.cfg
        if cfg.http:
            return
        cert, key, self.fingerprint = certificate(cfg)
        export = self.keys.line
        sink: Callable[[bytes], None] = export
        if cfg.keylog is not None:
            try:
                fd = os.open(cfg.keylog, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            except OSError as e:
                raise ConfigError(f"--keylog {cfg.keylog}: {e.strerror}") from e
            self._keylog = os.fdopen(fd, "ab", buffering=0)
            keylog = self._keylog

            def to_file(line: bytes) -> None:
                keylog.write(line.rstrip(b"\r\n") + b"\n")
                export(line)

            sink = to_file

        try:
            self.ssl_ctx = make_server_context(
                str(cert), str(key), keylog_sink=sink, profile=cfg.tls_profile
            )
        except SSL.Error as e:
            raise ConfigError(f"cannot use certificate {cert} / key {key}: {e}") from e

    def statistics(self) -> dict[str, Any]:
        snap = dict(self.kern.statistics())
        snap.update(self.stats.snapshot())
        snap.update(self.bpf.stats.items())
        snap.update(self.devstat.items())
        snap.update(self.netmap.stats.items())
        snap["netmap.ports"] = netmap_rows(self.netmapdev)  # one row per bound ring
        # netstat -B's rows (net.bpf.stats): one per descriptor attached to nm0.
        snap["bpf.descriptors"] = [asdict(x) for x in bpf_stats(self.bpf)]
        snap["server.connections_active"] = self.active
        snap["server.mode"] = self.mode()
        snap["server.core"] = CORE  # "compiled (mypyc X.Y)" or "pure" (mbuf/_core.py)
        # CPU seconds this process used (user + system, every thread): the
        # supervisor sums the workers', as the dashboard's server CPU.
        ru = resource.getrusage(resource.RUSAGE_SELF)
        snap["server.cpu_seconds"] = round(ru.ru_utime + ru.ru_stime, 3)
        return snap

    def connections(self) -> list[dict[str, object]]:
        """Every open connection with its TLS sessions' counters (admin /connections)."""
        return [c.info() for c in self.conns]

    def mode(self) -> str:
        """As set now: kern.ipc.tls.enable (and mb_use_ext_pgs, which KTLS needs)
        decide what the next connection gets."""
        if self.cfg.http:
            return mode_name(self.cfg)
        return "ktls" if self.kern.ktls_enable and self.kern.mb_use_ext_pgs else "user-tls"

    async def admin_stats(self) -> dict[str, Any]:
        return self.statistics()

    async def admin_connections(self) -> list[dict[str, object]]:
        return self.connections()

    async def admin_snapshots(self) -> list[tuple[str, dict[str, Any]]]:
        return [("0", self.statistics())]

    async def admin_sysctl(self) -> dict[str, dict[str, object]]:
        return self.kern.sysctl.snapshot()

    async def admin_sysctl_set(self, name: str, value: str) -> Result:
        return sysctl_set(self, name, value)

    async def admin_ifconfig(self) -> dict[str, dict[str, object]]:
        return ifconfig_all(self)

    async def admin_ifconfig_set(self, words: list[str]) -> Result:
        return ifconfig_set(self, words)

    async def admin_ifcap_set(self, ifname: str, reqcap: int) -> Result:
        return ifcap_set(self, ifname, reqcap)

    def log_access(
        self, peer: str, request: h11.Request | None, status: int, body_bytes: int, started: float
    ) -> None:
        """One access log line, after each response (`started`: trio.current_time()
        when the request began; request None when none could be parsed)."""
        self.access.log(peer, request, status, body_bytes, trio.current_time() - started)

    def stop(self, why: str) -> None:
        """Begin the graceful shutdown (a second call: cancel everything now)."""
        if self.stopping.is_set():
            log.info("%s again: closing every connection now", why)
            self.hard_stop()
            return
        log.info("%s: shutting down", why)
        self.stopping.set()
        if self._accepting is not None:  # the listening sockets close right after
            self._accepting.cancel()
        for cs in self._waiting:  # accepted, never served: closed like the backlog
            cs.cancel()

    def hard_stop(self) -> None:
        """The shutdown deadline: cancel every connection's run() (teardown still runs)
        and every lingering close."""
        self.hard_stopped = True
        for cs in [*self._scopes.values(), *self._lingering]:
            cs.cancel()

    async def handle(self, stream: trio.SocketStream) -> None:
        """One connection. At most --max-connections run at once; the others wait
        here, accepted, until a slot frees (nginx's worker_connections). The
        lingering close comes after the slot is released: a client that keeps
        its end open for LINGER_TIME holds no slot and no kernel resource."""
        self.handlers += 1
        try:
            if self.stopping.is_set():  # accepted as the shutdown began
                return
            try:
                self.limiter.acquire_nowait()  # a free slot and nobody waiting for one
            except trio.WouldBlock:
                if not await self._wait_for_slot():
                    self.stats.connections_refused += 1
                    return
            try:
                conn = await self._handle(stream)
            finally:
                self.limiter.release()
            if conn is not None and conn.linger_wanted:
                with trio.CancelScope() as cs:
                    if self.hard_stopped:
                        cs.cancel()
                    self._lingering.add(cs)
                    try:
                        await conn.linger()
                    finally:
                        self._lingering.discard(cs)
        finally:
            self.handlers -= 1
            with contextlib.suppress(OSError):
                stream.socket.close()

    async def _wait_for_slot(self) -> bool:
        """Wait up to --header-timeout for a slot; False if the waiting line is full
        too, or the wait timed out or was cut by the shutdown."""
        if self.limiter.statistics().tasks_waiting >= self.cfg.max_connections:
            return False
        with trio.move_on_after(self.cfg.header_timeout) as cs:
            self._waiting.add(cs)
            try:
                await self.limiter.acquire()
            finally:
                self._waiting.discard(cs)
        return not cs.cancelled_caught

    async def _handle(self, stream: trio.SocketStream) -> Connection | None:
        """Run one connection and free its kernel resources; returns it (None if it
        was gone at once) for the lingering close."""
        self.active += 1
        self.stats.connections += 1
        conn: Connection | None = None
        try:
            async with trio.open_nursery() as nursery:
                try:
                    conn = Connection(self, stream, nursery)
                except OSError as e:  # reset before we looked at it (getpeername)
                    log.debug("connection gone at accept: %s", e)
                    return None
                self.conns.add(conn)
                try:
                    with trio.CancelScope() as cs:
                        if self.hard_stopped:
                            cs.cancel()
                        self._scopes[conn] = cs
                        try:
                            await conn.run()
                        finally:
                            del self._scopes[conn]
                finally:
                    self.conns.discard(conn)
                    await conn.teardown()
        except Exception:
            self.stats.connection_errors += 1
            log.exception("connection failed")
            return None
        finally:
            self.active -= 1
        return conn


def _addr(lst: trio.SocketListener) -> tuple[str, int]:
    host, port = lst.socket.getsockname()[:2]
    return host, port


async def _serve(server: Server) -> None:
    cfg = server.cfg
    token = trio.lowlevel.current_trio_token()
    server.workers = KtlsWorkers(cfg.ktls_workers, post=token.run_sync_soon)
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            await _serve_until_stopped(server, signals)
    finally:
        server.workers.shutdown()
        server.access.close()


async def _serve_until_stopped(server: Server, signals: AsyncIterator[int]) -> None:
    cfg = server.cfg
    admin = None
    instance = None  # the device directory this process owns (alone: the instance)
    if cfg.worker_index is not None:  # sockets from the supervisor, counters over the channel
        listeners = listeners_from_fds(list(cfg.worker_fds[1:]))
        wdir = instance_dir(_addr(listeners[0])[1]) / f"w{cfg.worker_index}"
    else:
        try:
            listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.host)
        except OSError as e:
            raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror}") from e
        admin = await open_admin(cfg)
        server.admin_token = admin_token(cfg)
        instance = open_instance(_addr(listeners[0])[1])
        wdir = instance / "w0"
    devices = [bpf_device(server.bpf), netmap_device(server.netmapdev)]
    devfs = DevFs(wdir, devices, server.devstat)
    try:
        async with trio.open_nursery() as services:
            await services.start(devfs.serve)
            if instance is not None:  # alone: this process serves the instance's ctl
                ctl = DevFs(instance, [ctl_device(server)], server.devstat, own_dir=False)
                await services.start(ctl.serve)
            if instance is not None:
                announce(
                    cfg, server.fingerprint, [_addr(lst) for lst in listeners],
                    _addr(admin[0]) if admin else None, devices=instance,
                    token=server.admin_token,
                )  # fmt: skip
            await _serve_services(server, signals, services, listeners, admin)
    finally:
        if instance is not None:
            remove_instance(instance)


async def _serve_services(
    server: Server,
    signals: AsyncIterator[int],
    services: trio.Nursery,
    listeners: list[trio.SocketListener],
    admin: list[trio.SocketListener] | None,
) -> None:
    """Serve until stopped and the last connection is gone; then end `services`."""
    cfg = server.cfg
    log.debug("pid %d listening on %s", os.getpid(), [_addr(lst) for lst in listeners])
    services.start_soon(_on_signals, server, signals)
    services.start_soon(server.access.run_flusher)
    if cfg.worker_index is not None:
        services.start_soon(serve_control, server, cfg.worker_fds[0])
    async with trio.open_nursery() as conns:
        async with trio.open_nursery() as front:  # accepting and admin: until stopping
            server._accepting = front.cancel_scope
            front.start_soon(serve_listeners, server.handle, listeners, conns)
            if admin is not None:
                front.start_soon(serve_admin, server, admin, server.admin_token)
            await server.stopping.wait()
            front.cancel_scope.cancel()
        for lst in [*listeners, *(admin or [])]:
            await trio.aclose_forcefully(lst)
        await drain(server, cfg.shutdown_timeout)
    services.cancel_scope.cancel()


async def _on_signals(server: Server, signals: AsyncIterator[int]) -> None:
    async for signum in signals:
        if signum == signal.SIGHUP:
            server.access.reopen()
        else:
            server.stop(signal.Signals(signum).name)


def run_server(cfg: ServerConfig) -> int:
    """One server process: alone (`--workers 1`) or one worker of the supervisor's."""
    who = "" if cfg.worker_index is None else f"worker {cfg.worker_index}"
    errorlog.setup(cfg.log_level, who)
    server = Server(cfg)
    server.setup_tls()
    trio.run(_serve, server)
    return 0
