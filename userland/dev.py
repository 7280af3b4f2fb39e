"""A device file of the modeled kernel, as a process opens it: open, ioctl, read, poll, close.

Theory of operation. `DevFile.open(path)` connects to a worker's device
socket (userland/devdir.py finds it) and waits for open's reply: errno 0, or
the kernel's refusal (EPERM for another user) raised as OSError. Each call
sends one request of mbuf/sys_devio.py and waits for its reply; an errno in
the reply is raised as OSError(errno, the kernel's one-line message). Wakeup
frames that arrive meanwhile are noted, not mistaken for replies.
Descriptors the kernel passes with a reply (SCM_RIGHTS: netmap's region at
registration) are kept in `received_fds` for the caller to take.

`poll(timeout)` is poll(2) on the file: the DEVOP_POLL request (the kernel
arms its read timeout), then, if not readable, a wait on the socket for the
kernel's wakeup frame or `timeout` seconds. `fileno()` is the socket's, so a
program may put several device files in one select/poll: a readable socket
means a wakeup (call `poll(0)` or read then). Calls are blocking and not
thread-safe: one thread per file, as with a file descriptor.

Models: the open(2)/ioctl(2)/read(2)/poll(2)/close(2) calls on a character
device. Differences: README "Devices" (messages on a Unix socket; a shared
buffer is a memfd passed with SCM_RIGHTS).
"""

from __future__ import annotations

import array
import os
import select
import socket
import struct

from mbuf.sys_devio import (
    DEV_MSG,
    DEV_POLL,
    DEV_SHM,
    DEVF_NONBLOCK,
    DEVMSG_REPLY,
    DEVMSG_WAKEUP,
    DEVOP_CLOSE,
    DEVOP_IOCTL,
    DEVOP_POLL,
    DEVOP_READ,
    DEVOP_WRITE,
    POLLIN,
    dev_req,
    errno_text,
)


class DevFile:
    """One open device file (see the module head)."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock = sock
        self.path = path
        self.woken = False  # a wakeup frame arrived since the last poll
        self.received_fds: list[int] = []  # descriptors that came with replies
        self.woken_now = False  # the last poll_events ended with a wakeup

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> DevFile:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(os.fspath(path))
            f = cls(sock, os.fspath(path))
            f._reply()  # open's answer
        except BaseException:
            sock.close()
            raise
        return f

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- the wire ----------------------------------------------------------

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        anc = socket.CMSG_SPACE(4 * 4)
        while len(buf) < n:
            chunk, ancdata, _flags, _addr = self.sock.recvmsg(n - len(buf), anc)
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got = array.array("i")
                    got.frombytes(cdata[: len(cdata) - len(cdata) % 4])
                    self.received_fds.extend(got)
            if not chunk:
                raise OSError(f"{self.path}: the kernel closed the file")
            buf += chunk
        return bytes(buf)

    def _frame(self) -> tuple[int, int, bytes]:
        kind, error, length = DEV_MSG.unpack(self._recv_exact(DEV_MSG.size))
        return kind, error, self._recv_exact(length) if length else b""

    def read_reply(self) -> bytes:
        """The reply to a request sent with `send_request` (OSError for an errno)."""
        return self._reply()

    def send_request(self, req: bytes) -> None:
        """Send one request (mbuf.sys_devio.dev_req) without waiting for its reply."""
        self.sock.sendall(req)

    def _reply(self) -> bytes:
        while True:
            kind, error, payload = self._frame()
            if kind == DEVMSG_WAKEUP:
                self.woken = True
                continue
            if kind != DEVMSG_REPLY:
                raise OSError(f"{self.path}: unknown message kind {kind}")
            if error:
                text = payload.decode(errors="replace") or os.strerror(error)
                raise OSError(error, f"{errno_text(error)}: {text}")
            return payload

    def _call(self, req: bytes, fds: list[int] | None = None) -> bytes:
        if fds:
            socket.send_fds(self.sock, [req], fds)
        else:
            self.sock.sendall(req)
        return self._reply()

    # -- the system calls --------------------------------------------------

    def ioctl(self, cmd: int, arg: bytes = b"") -> bytes:
        """ioctl(2): the argument's bytes in, what the kernel copies out back."""
        return self._call(dev_req(DEVOP_IOCTL, cmd, payload=arg))

    def ioctl_shm(self, cmd: int, arg: bytes, fd: int, base: int) -> bytes:
        """An ioctl that passes a shared-memory file `fd`, mapped here at address `base`."""
        return self._call(dev_req(DEVOP_IOCTL, cmd, payload=arg + DEV_SHM.pack(base)), [fd])

    def read(self, count: int, nonblock: bool = False) -> bytes:
        """read(2): blocks as the kernel's read does (until data or the read timeout)."""
        return self._call(dev_req(DEVOP_READ, flags=DEVF_NONBLOCK if nonblock else 0, count=count))

    def write(self, data: bytes) -> int:
        return int(struct.unpack("=I", self._call(dev_req(DEVOP_WRITE, payload=data)))[0])

    def poll(self, timeout: float | None) -> bool:
        """poll(2) for POLLIN: True if readable now or woken within `timeout` seconds
        (None: wait for the wakeup)."""
        return self.poll_events(POLLIN, timeout) != 0 or self.woken_now

    def poll_events(self, events: int, timeout: float | None) -> int:
        """poll(2) for `events`: the ready bits now, else 0 once the kernel's wakeup
        came (`woken_now` True: poll again) or `timeout` seconds passed (None: no
        limit)."""
        self.woken_now = False
        woke, self.woken = self.woken, False  # a wakeup read with an earlier reply counts
        (revents,) = DEV_POLL.unpack(self._call(dev_req(DEVOP_POLL, count=events)))
        if revents:
            self.woken = False
            return int(revents)
        if woke or self.woken:
            self.woken = False
            self.woken_now = True
            return 0
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return 0
        kind, _error, _payload = self._frame()
        if kind != DEVMSG_WAKEUP:
            raise OSError(f"{self.path}: a reply with no request outstanding")
        self.woken_now = True
        return 0

    def close(self) -> None:
        """close(2); closing the socket alone (or exiting) closes the file too."""
        if self.sock.fileno() < 0:
            return
        try:
            self._call(dev_req(DEVOP_CLOSE))
        except OSError:
            pass
        finally:
            self.sock.close()

    def __enter__(self) -> DevFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
