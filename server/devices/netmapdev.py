"""/dev/netmap on the device framework: netmap.c's cdevsw (open, ioctl, poll, mmap, close).

Theory of operation. Each open file is one `NetmapPrivD` (`netmap_open`, its
pid the peer's from SO_PEERCRED). Its calls go to the sans-IO kernel
(netmap/): ioctls to `netmap_ioctl` / `netmap_ctrl`, poll to `netmap_poll`,
the last close to `netmap_close`. What the kernel does with its own memory
and threads is done here, at the edge:

  regions  the subsystem's region maker (`Netmap.region_alloc`) creates a
           memfd of the region's size, seals its size (server/devices/shm.py:
           the process that receives it cannot truncate it under the
           kernel's mapping, a SIGBUS), and maps it shared; the kernel works
           on that mapping. At a successful REGISTER (NIOCCTRL or the legacy
           NIOCREGIF) the memfd travels with the reply (SCM_RIGHTS): the
           process maps what it receives, which is netmap's mmap(2) of the fd.
           The region is unmapped and its memfd closed here when the kernel
           frees it (`region_free`: its last port went with its last file);
           a process keeps its own mapping until it unmaps it.
  poll     `netmap_poll` with the events asked for; when nothing is ready, the
           kernel's `notify` (a ring's hwtail moved: a pipe's peer synced, a
           monitor copied a frame) wakes every file bound to that port.
  kloop    SYNC_KLOOP_START does not return in the kernel: here its reply is
           deferred, and a thread runs `sync_kloop_step` under the device's
           lock, sleeping `sleep_us` after an idle step, until the loop's
           `stopping` (SYNC_KLOOP_STOP from the process, or the file's close).
           The loop's reply is sent before STOP's, so the process knows whose
           reply is whose.
  lock     one `threading.Lock` per worker: netmap/ takes none (its NMG_LOCK
           and kring locks), so every call into the subsystem holds it, the
           loop threads' steps included, and so does nm0's tap while a monitor
           watches (the tap writes monitor rings).

Models: sys/dev/netmap/netmap.c (netmap_open / netmap_ioctl / netmap_poll /
netmap_dtor, netmap_mmap_single), netmap_kloop.c's thread (the ioctl's
caller), netmap_freebsd.c's cdevsw. Differences: the region is a memfd passed
with the REGISTER reply, not an mmap of the device; a failed NIOCCTRL answers
the errno and the kernel's message only (the written-back request, e.g. the
NETMAP_API of a bad nr_version, is not returned); README "netmap".
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import threading
import time
from dataclasses import asdict
from typing import Any

import trio

from mbuf.if_tap import FrameTap
from mbuf.mbuf import Mbuf
from mbuf.sys_devio import dev_reply
from netmap import (
    Netmap,
    NetmapIoctlError,
    NetmapPrivD,
    SyncKloop,
    netmap_close,
    netmap_ctrl,
    netmap_ioctl,
    netmap_open,
    netmap_poll,
    netmap_port_mem,
    netmap_ports,
    sync_kloop_step,
)
from netmap.netmap_h import (
    NETMAP_REQ_REGISTER,
    NETMAP_REQ_SYNC_KLOOP_STOP,
    NIOCCTRL,
    NIOCREGIF,
    NMREQ_HEADER,
)
from netmap.netmap_kern import NetmapKring
from server.devices.devfs import DevFile, Device, DevStat, OpenFile
from server.devices.shm import shm_seal

log = logging.getLogger("nomapd.devfs")


class LockedTap:
    """nm0's netmap hook taken under the device's lock (a loop thread may be
    syncing a monitor's ring while the stack transmits)."""

    __slots__ = ("inner", "lock")

    def __init__(self, inner: FrameTap, lock: threading.Lock) -> None:
        self.inner = inner
        self.lock = lock

    def tap(self, m: Mbuf, direction: int) -> None:
        with self.lock:
            self.inner.tap(m, direction)


class Region:
    """One region's memfd and the server's mapping of it."""

    __slots__ = ("fd", "mapping", "size", "view")

    def __init__(self, size: int) -> None:
        self.size = size
        self.fd = os.memfd_create("nomapd-netmap", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, size)
            shm_seal(self.fd)  # the process gets this fd: it must not shrink what we map
            self.mapping = mmap.mmap(
                self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
        except BaseException:
            os.close(self.fd)
            raise
        self.view = memoryview(self.mapping)


class NetmapDev:
    """A worker's /dev/netmap: the subsystem, its regions, its open files and lock."""

    def __init__(self, nm: Netmap, stats: DevStat) -> None:
        self.nm = nm
        self.stats = stats
        self.lock = threading.Lock()
        self.files: list[NetmapFile] = []
        self.regions: dict[int, Region] = {}  # by id() of the view the kernel holds
        self.token: trio.lowlevel.TrioToken | None = None
        self.trio_thread = 0
        nm.region_alloc = self.region_alloc
        nm.region_free = self.region_free
        nm.notify = self.notify

    def region_alloc(self, size: int) -> memoryview:
        r = Region(size)
        self.regions[id(r.view)] = r
        self.stats.shm_mapped += 1
        self.stats.shm_mapped_bytes += size
        return r.view

    def region_free(self, view: memoryview) -> None:
        r = self.regions.pop(id(view))
        r.view.release()
        try:
            r.mapping.close()
        except BufferError:  # a view of the region outlived its ports: a kernel bug
            log.error("netmap: a region of %d bytes is still referenced when freed", r.size)
        os.close(r.fd)
        self.stats.shm_mapped -= 1
        self.stats.shm_mapped_bytes -= r.size

    def region_fd(self, view: memoryview) -> int:
        return self.regions[id(view)].fd

    def notify(self, kring: NetmapKring) -> None:
        """nm_notify: wake the files bound to the port whose ring moved (from
        the event loop, or from a loop thread through the trio token)."""
        if threading.get_ident() == self.trio_thread or self.token is None:
            self._wake(kring)
        else:
            with contextlib.suppress(trio.RunFinishedError):
                self.token.run_sync_soon(self._wake, kring)

    def _wake(self, kring: NetmapKring) -> None:
        na = kring.na
        for f in self.files:
            if f.priv.np_na is na:
                f.of.wakeup()

    def hook_monitors(self) -> None:
        """After a registration: nm0's hook (set by a new monitor) under the lock."""
        for tap in self.nm.ifnets.values():
            ifp = tap.ifp
            if ifp.if_netmap is not None and not isinstance(ifp.if_netmap, LockedTap):
                ifp.if_netmap = LockedTap(ifp.if_netmap, self.lock)

    def open(self, of: OpenFile) -> NetmapFile:
        if self.token is None:
            self.token = trio.lowlevel.current_trio_token()
            self.trio_thread = threading.get_ident()
        f = NetmapFile(self, of)
        self.files.append(f)
        return f

    def privs(self) -> list[NetmapPrivD]:
        return [f.priv for f in self.files]


class NetmapFile(DevFile):
    """One open /dev/netmap."""

    def __init__(self, dev: NetmapDev, of: OpenFile) -> None:
        self.dev = dev
        self.of = of
        with dev.lock:
            self.priv = netmap_open(dev.nm, of.pid)
        self.kloop: SyncKloop | None = None
        self.kloop_done: trio.Event | None = None

    async def ioctl(self, cmd: int, arg: bytes, fds: list[int]) -> bytes:
        if fds:
            raise OSError(errno.EINVAL, "netmap: ioctls take no descriptor")
        dev = self.dev
        if cmd != NIOCCTRL:
            with dev.lock:
                out = netmap_ioctl(self.priv, cmd, arg)
            if cmd == NIOCREGIF:
                self._pass_region()
            return out
        reqtype = int(NMREQ_HEADER.unpack_from(arg)[1]) if len(arg) >= NMREQ_HEADER.size else 0
        try:
            with dev.lock:
                out, kloop = netmap_ctrl(self.priv, arg)
        except NetmapIoctlError as e:
            raise OSError(e.errno, e.strerror) from None
        if reqtype == NETMAP_REQ_REGISTER:
            self._pass_region()
        elif kloop is not None:
            self._start_kloop(kloop, out)
        elif reqtype == NETMAP_REQ_SYNC_KLOOP_STOP and self.kloop_done is not None:
            await self.kloop_done.wait()  # the loop's own reply goes first
        return out

    def _pass_region(self) -> None:
        mem = netmap_port_mem(self.priv)
        if mem is None:
            return
        self.dev.hook_monitors()
        self.of.reply_fds = [self.dev.region_fd(mem.view)]

    def _start_kloop(self, kloop: SyncKloop, reply: bytes) -> None:
        """SYNC_KLOOP_START: the loop runs on a thread; the reply waits for its end."""
        self.kloop = kloop
        done = self.kloop_done = trio.Event()
        self.of.reply_deferred = True

        async def run() -> None:
            try:
                await trio.to_thread.run_sync(self._kloop_thread, kloop)
            finally:
                self.kloop = None
                with contextlib.suppress(OSError, trio.BrokenResourceError):
                    await self.of.send(dev_reply(0, reply))
                done.set()
                if self.kloop_done is done:
                    self.kloop_done = None

        self.of.start_soon(run)

    def _kloop_thread(self, kl: SyncKloop) -> None:
        """netmap_sync_kloop's body, in the thread the ioctl would block."""
        idle = kl.sleep_us / 1e6
        lock = self.dev.lock
        while True:
            with lock:
                if kl.stopping:
                    return
                did = sync_kloop_step(kl)
            if not did:
                time.sleep(idle)

    def poll(self, events: int) -> int:
        with self.dev.lock:
            return netmap_poll(self.priv, events)

    def close(self) -> None:
        dev = self.dev
        with dev.lock:
            netmap_close(self.priv)  # stops its loop (the thread returns), frees its port
        dev.files.remove(self)
        dev.hook_monitors()


def netmap_device(dev: NetmapDev) -> Device:
    """The worker's /dev/netmap."""
    return Device("netmap", dev.open)


def netmap_rows(dev: NetmapDev) -> list[dict[str, Any]]:
    """The per-ring rows of the open files (/stats netmap.ports)."""
    return [asdict(x) for x in netmap_ports(dev.privs())]
