"""The device framework: a worker's devices as Unix sockets, one connection per open file.

Theory of operation. The worker is the kernel; other processes reach it
through device files (DESIGN.md "The kernel boundary"). `DevFs(wdir)` owns
a worker's directory `<instance>/w<N>/` (userland/devdir.py has the layout)
and serves each registered `Device` there as a listening Unix socket. An
accepted connection is one open file:

  1. open: the peer's credentials (SO_PEERCRED). Only the server's own uid or
     root is admitted; anyone else is answered EPERM and closed (logged). The
     device's `open(handle)` then makes the `DevFile`, and the first message
     on the connection is open's reply (errno 0, or the open's errno).
  2. system calls: each request (mbuf/sys_devio.py: ioctl, read, write, poll,
     close) is answered by one reply carrying an errno and bytes (poll passes
     the events it asks for in the request's count, 0 meaning POLLIN); an OSError
     raised by the device becomes its errno and one-line message. Descriptors
     passed with a request (SCM_RIGHTS) are handed to the call and closed after
     it: a device keeps what it needs by mapping or dup'ing them. A call may
     hand descriptors back (`handle.reply_fds`: netmap's region at REGISTER);
     they travel with its reply, and stay the device's. A call that must not
     answer yet (netmap's SYNC_KLOOP_START, which returns only when its loop
     stops) sets `handle.reply_deferred` and sends its reply itself later with
     `handle.send`; the file's next requests are served meanwhile.
  3. readiness: the device calls `handle.wakeup()` (from its kernel's wakeup
     hook, sync, on the event loop); the framework writes one DEVMSG_WAKEUP
     frame unless one is outstanding since the peer's last request. A blocking
     call sleeps with `await handle.sleep(timeout)` (True: woken, False: timed
     out), and ends early (PeerGone) when the process closes its end.
  4. close: the connection's end (close(2), exit, SIGKILL) runs the device's
     `close()`: everything the open file held is released there.

Every message is written by the connection's own tasks under one lock, so a
reply and a wakeup never interleave on the stream.

The instance's own devices (`ctl`, server/devices/ctldev.py) are served by a
DevFs on the instance directory itself (`own_dir=False`: it removes only its
sockets), by the single-process server or the supervisor.

Instance directories: `open_instance(port)` makes the directory (mode 0700)
and holds its lock (flock on `<instance>/lock`) for the server's lifetime: a
stale directory from a killed server (lock free) is emptied and reused, one
of a running server (lock held) makes the new server refuse to start;
`remove_instance` removes it at a clean shutdown. The runtime root and the
instance directory are used only if they are this user's own directories
(lstat: no symlink, no one else's), as the state directory may be shared.
The single-process server and the supervisor own the instance; each
worker's DevFs owns its `w<N>`.

Models: devfs and the system-call layer (kern/kern_conf.c's cdevsw, make_dev;
sys_generic.c). Differences: Unix sockets instead of character devices,
messages instead of system calls, SO_PEERCRED instead of the node's mode bits.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import logging
import os
import pathlib
import select
import shutil
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Final

import trio

from mbuf.sys_devio import (
    DEV_MAXFDS,
    DEV_MAXPAYLOAD,
    DEV_POLL,
    DEV_REQ,
    DEVF_NONBLOCK,
    DEVOP_CLOSE,
    DEVOP_IOCTL,
    DEVOP_POLL,
    DEVOP_READ,
    DEVOP_WRITE,
    POLLIN,
    dev_reply,
    dev_wakeup,
)
from server.config import ConfigError
from server.listen import accept_backoff
from userland.devdir import instance_dir

log = logging.getLogger("nomapd.devfs")

UCRED: Final = struct.Struct("=iII")  # struct ucred {pid_t pid; uid_t uid; gid_t gid}


@dataclass(slots=True)
class DevStat:
    """The device layer's counters (`devfs.*` in /stats): open files and shared
    mappings in use (leak keys), refused opens."""

    open_files: int = 0
    opens_total: int = 0
    refused: int = 0
    shm_mapped: int = 0  # shared-memory files a device has mapped (bpf's zero-copy buffers)
    shm_mapped_bytes: int = 0

    def items(self) -> list[tuple[str, int]]:
        return [(f"devfs.{f.name}", getattr(self, f.name)) for f in fields(self)]


class PeerGone(Exception):
    """The process closed its end while a call slept."""


class DevFile:
    """One open file of a device. A device overrides the calls it supports; the
    defaults answer as a character device without them does."""

    async def ioctl(self, cmd: int, arg: bytes, fds: list[int]) -> bytes:
        raise OSError(errno.ENOTTY, f"ioctl {cmd:#x}: not a device that takes it")

    async def read(self, count: int, nonblock: bool) -> bytes:
        raise OSError(errno.EOPNOTSUPP, "read: not supported by this device")

    async def write(self, data: bytes) -> int:
        raise OSError(errno.EOPNOTSUPP, "write: not supported by this device")

    def poll(self, events: int) -> int:
        """The ready bits of `events` (POLLIN, POLLOUT...) now (may arm a timer
        that wakes the file later)."""
        return 0

    def close(self) -> None:
        """The last close: release everything the file holds."""


class OpenFile:
    """The framework's half of an open file, given to the device at open: the
    peer's credentials, `wakeup()`, `sleep()`, `start_soon()` (a task that lives
    as long as the file) and the device layer's counters."""

    def __init__(
        self, sock: trio.socket.SocketType, cred: tuple[int, int, int], nursery: trio.Nursery,
        stats: DevStat,
    ) -> None:  # fmt: skip
        self.sock = sock
        self.pid, self.uid, self.gid = cred
        self.stats = stats
        self._nursery = nursery
        self._wlock = trio.Lock()
        self._wakeup_sent = False  # a DEVMSG_WAKEUP outstanding since the last request
        self._want_wakeup = trio.Event()
        self._sleeping: trio.Event | None = None
        self.reply_fds: list[int] = []  # descriptors for the current call's reply
        self.reply_deferred = False  # the current call answers later, by itself

    def wakeup(self) -> None:
        """selwakeup: the file may be readable (sync; safe from the data path)."""
        if self._sleeping is not None:
            self._sleeping.set()
        if not self._wakeup_sent:
            self._wakeup_sent = True
            self._want_wakeup.set()

    def start_soon(self, fn: Callable[[], object]) -> None:
        self._nursery.start_soon(fn)  # type: ignore[arg-type]

    async def sleep(self, timeout: float | None) -> bool:
        """Sleep until wakeup() (True) or `timeout` seconds (False; None: no timeout).
        Raises PeerGone if the process closes its end meanwhile."""
        ev = trio.Event()
        self._sleeping = ev
        gone = False
        try:
            with trio.move_on_after(timeout if timeout is not None else float("inf")):
                async with trio.open_nursery() as n:

                    async def watch_peer() -> None:
                        nonlocal gone
                        try:  # readable with no request outstanding: EOF (or a stray byte)
                            peek = await self.sock.recv(1, socket.MSG_PEEK)
                        except OSError:
                            peek = b""
                        if peek:  # readable says nothing more now: ask for the hang-up itself
                            await _wait_hangup(self.sock)
                        gone = True
                        n.cancel_scope.cancel()

                    async def wait_event() -> None:
                        await ev.wait()
                        n.cancel_scope.cancel()

                    n.start_soon(watch_peer)
                    n.start_soon(wait_event)
        finally:
            self._sleeping = None
        if gone:
            raise PeerGone()
        return ev.is_set()

    async def send(self, data: bytes, fds: list[int] | None = None) -> None:
        """One message (and descriptors with its first byte, SCM_RIGHTS)."""
        async with self._wlock:
            if fds:
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
                n = await self.sock.sendmsg([data], anc)
                data = data[n:]
            await _sendall(self.sock, data)

    async def _wakeup_writer(self) -> None:
        while True:
            await self._want_wakeup.wait()
            self._want_wakeup = trio.Event()
            with contextlib.suppress(OSError):
                await self.send(dev_wakeup())

    def _request_seen(self) -> None:
        self._wakeup_sent = False


# How often a sleeping call whose process sent a byte ahead of time checks for its hang-up.
HANGUP_POLL = 0.1  # seconds


async def _wait_hangup(sock: trio.socket.SocketType) -> None:
    """Return once the process has closed its end (POLLRDHUP/POLLHUP/POLLERR),
    even with unread bytes queued, which keep the socket readable: no wakeup on
    the event loop tells this, so poll(2) it, without consuming anything."""
    p = select.poll()
    p.register(sock.fileno(), select.POLLRDHUP)
    while not p.poll(0):
        await trio.sleep(HANGUP_POLL)


async def _sendall(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = await sock.send(view)
        view = view[n:]


# A device's default request limit: ioctl arguments and writes of a few pages.
DEV_MAXREQUEST: Final = 64 * 1024


@dataclass
class Device:
    """A device node: its file name in the worker's directory, its open routine
    (`open(handle) -> DevFile`; an OSError refuses the open) and the largest
    request payload it takes (a larger one is answered EINVAL, unread, and the
    file closed: nothing buffers megabytes for a device that takes a few bytes)."""

    name: str
    open: Callable[[OpenFile], DevFile]
    max_request: int = DEV_MAXREQUEST


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


async def _recv_exact(sock: trio.socket.SocketType, n: int, fds: list[int] | None) -> bytes | None:
    """n bytes (None at EOF before the first); descriptors that come with them are
    appended to `fds` (closed if `fds` is None)."""
    buf = bytearray()
    anc = socket.CMSG_SPACE(DEV_MAXFDS * 4)
    while len(buf) < n:
        data, ancdata, _flags, _addr = await sock.recvmsg(n - len(buf), anc)
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(cdata[: len(cdata) - len(cdata) % 4])
                if fds is None:
                    _close_fds(list(got))
                else:
                    fds.extend(got)
        if not data:
            if buf:
                raise PeerGone()
            return None
        buf += data
    return bytes(buf)


class DevFs:
    """A worker's device directory and its listeners (see the module head)."""

    def __init__(
        self, wdir: pathlib.Path, devices: list[Device], stats: DevStat, *, own_dir: bool = True
    ) -> None:
        self.wdir = wdir
        self.own_dir = own_dir  # False: the instance's own devices (ctl); remove only them
        self.devices = devices
        self.stats = stats
        self.uid = os.getuid()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Create the directory and the sockets, serve until cancelled, then remove them."""
        _mkdir_private(self.wdir)
        listeners: list[tuple[Device, trio.socket.SocketType]] = []
        try:
            for dev in self.devices:
                path = self.wdir / dev.name
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                s = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                await s.bind(str(path))
                os.chmod(path, 0o600)
                s.listen(64)
                listeners.append((dev, s))
            async with trio.open_nursery() as n:
                for dev, s in listeners:
                    n.start_soon(self._accept_loop, dev, s, n)
                task_status.started()
        finally:
            for _dev, s in listeners:
                s.close()
            if self.own_dir:
                shutil.rmtree(self.wdir, ignore_errors=True)
            else:
                for dev in self.devices:
                    with contextlib.suppress(OSError):
                        (self.wdir / dev.name).unlink()

    async def _accept_loop(
        self, dev: Device, lsock: trio.socket.SocketType, nursery: trio.Nursery
    ) -> None:
        while True:
            try:
                sock, _ = await lsock.accept()
            except OSError as e:  # out of descriptors: the listener waits, as the HTTP one does
                await accept_backoff(e)
            else:
                nursery.start_soon(self._serve_file, dev, sock)

    async def _serve_file(self, dev: Device, sock: trio.socket.SocketType) -> None:
        with sock:
            pid, uid, gid = UCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
            )
            if uid not in (0, self.uid):
                self.stats.refused += 1
                log.warning("%s: open by pid %d uid %d refused (EPERM)", dev.name, pid, uid)
                with contextlib.suppress(OSError):
                    await _sendall(sock, dev_reply(errno.EPERM, b"only the server's user or root"))
                return
            async with trio.open_nursery() as n:
                handle = OpenFile(sock, (pid, uid, gid), n, self.stats)
                try:
                    f = dev.open(handle)
                except OSError as e:
                    with contextlib.suppress(OSError):  # the process may be gone already
                        await handle.send(dev_reply(e.errno or errno.EIO, str(e).encode()))
                    return
                self.stats.open_files += 1
                self.stats.opens_total += 1
                try:
                    n.start_soon(handle._wakeup_writer)
                    await handle.send(dev_reply(0))
                    await self._syscalls(handle, f, dev.max_request)
                except (PeerGone, OSError):
                    pass  # the process went away: its file closes below
                except Exception:  # a kernel bug must not take the worker down: close the file
                    log.exception("%s: pid %d: a call failed; its file is closed", dev.name, pid)
                finally:
                    f.close()
                    self.stats.open_files -= 1
                    n.cancel_scope.cancel()

    async def _syscalls(self, handle: OpenFile, f: DevFile, max_request: int) -> None:
        sock = handle.sock
        while True:
            fds: list[int] = []
            try:
                head = await _recv_exact(sock, DEV_REQ.size, fds)
                if head is None:
                    return
                op, cmd, flags, count, length = DEV_REQ.unpack(head)
                if length > min(max_request, DEV_MAXPAYLOAD):  # unread: say why, then close
                    why = f"a request of {length} bytes; this device takes {max_request} at most"
                    with contextlib.suppress(OSError):
                        await handle.send(dev_reply(errno.EINVAL, why.encode()))
                    return
                payload = await _recv_exact(sock, length, fds) if length else b""
                if payload is None:
                    return
                handle._request_seen()
                if op == DEVOP_CLOSE:
                    await handle.send(dev_reply(0))
                    return
                handle.reply_fds = []
                handle.reply_deferred = False
                try:
                    out = await self._call(f, op, cmd, flags, count, payload, fds)
                    reply = dev_reply(0, out)
                except OSError as e:
                    handle.reply_fds = []
                    reply = dev_reply(e.errno or errno.EIO, (e.strerror or str(e)).encode())
            finally:
                _close_fds(fds)
            if handle.reply_deferred:
                continue
            await handle.send(reply, handle.reply_fds)

    @staticmethod
    async def _call(
        f: DevFile, op: int, cmd: int, flags: int, count: int, payload: bytes, fds: list[int]
    ) -> bytes:
        if op == DEVOP_IOCTL:
            return await f.ioctl(cmd, payload, fds)
        if fds:
            raise OSError(errno.EINVAL, "descriptors are passed with an ioctl only")
        if op == DEVOP_READ:
            return await f.read(count, bool(flags & DEVF_NONBLOCK))
        if op == DEVOP_WRITE:
            return struct.pack("=I", await f.write(payload))
        if op == DEVOP_POLL:
            return DEV_POLL.pack(f.poll(count or POLLIN))
        raise OSError(errno.ENOSYS, f"unknown operation {op}")


def _mkdir_private(path: pathlib.Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)  # parents too: a root just removed
    os.chmod(path, 0o700)


def _own_private_dir(path: pathlib.Path) -> None:
    """Make `path` (mode 0700), or take an existing one only if it is a directory of
    this user's, not a symlink: a directory someone else made (or a link planted in
    a shared state directory) would otherwise get our chmod, rmtree and sockets."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):  # a symlink's lstat is the link's
        raise ConfigError(f"{path} is not a directory (a symlink?): not used for devices")
    if st.st_uid != os.getuid():
        raise ConfigError(f"{path} belongs to uid {st.st_uid}, not this user: not used for devices")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


# The lock of each instance this process owns (held from open_instance to remove_instance).
_instance_locks: dict[pathlib.Path, int] = {}


def open_instance(port: int) -> pathlib.Path:
    """A fresh instance directory for the server on `port`, locked (flock on
    `<instance>/lock`, holding the owner's pid) for as long as this process
    serves it. A directory left by a killed server (its lock free) is emptied:
    the port is ours now. One whose lock is held belongs to a running server:
    ConfigError, and nothing of it is touched."""
    path = instance_dir(port)
    path.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _own_private_dir(path.parent)  # the runtime root
    _own_private_dir(path)
    fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(f"devices for port {port} are in use by pid {owner} ({path})") from None
    for entry in path.iterdir():  # a stale instance's workers
        if entry.name != "lock":
            shutil.rmtree(entry, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _instance_locks[path] = fd
    return path


def remove_instance(path: pathlib.Path) -> None:
    """Remove the instance (and its lock), and the runtime root with it when no
    other instance is left."""
    shutil.rmtree(path, ignore_errors=True)
    fd = _instance_locks.pop(path, None)
    if fd is not None:
        os.close(fd)
    with contextlib.suppress(OSError):
        path.parent.rmdir()
