"""/dev/bpf on the device framework: the cdevsw of net/bpf.c (open, ioctl, read, poll, close).

Theory of operation. Each open file is one BPF descriptor (`bpfopen`, its
pid the peer's from SO_PEERCRED, shown by netstat -B). Its calls go to the
sans-IO kernel (bpf/): ioctls to `bpfioctl`, reads to `bpfread`, poll to
`bpfpoll`, the last close to `bpf_close`. What the kernel does by sleeping
is done here, at the edge:

  read     a blocking read that would sleep (BlockingIOError) sleeps until the
           descriptor's wakeup or its read timeout (BIOCSRTIMEOUT), then reads
           again (`bpfread_timedout` after the timeout: what is stored, maybe
           nothing). O_NONBLOCK answers EWOULDBLOCK.
  poll     `bpfpoll` arms the read timeout; a timer task of bd_rtout then calls
           `bpf_timed_out` (which wakes the file if packets are stored).
  wakeup   `d.bd_wakeup` (bpf_wakeup) becomes the framework's wakeup frame.
  BIOCSKEYLOG  nomapd's TLS key export (bpf/bpf_keylog.py): logged once per
           descriptor that turns it on; the worker hands the lines over
           (server/devices/bpfkeys.py).
  BIOCSETZBUF  the process passes its shared-memory file (a memfd sealed
           against shrinking: server/devices/shm.py) with the ioctl and the
           address it mapped it at (DEV_SHM); the kernel maps the file
           (mmap, MAP_SHARED) and gives the descriptor a `Uvm` of it. The
           mapping is unmapped and the file closed when the descriptor closes
           (or at once if the ioctl fails).

Models: net/bpf.c's bpfopen, bpfread (the msleep), bpfpoll (selrecord and
bpf_timed_out's callout), bpf_dtor. Differences: the process's buffers are
a shared file the kernel maps, not user pages it wires (vm_fault_quick_hold);
see README "Devices".
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap

import trio

from bpf import (
    Bpf,
    BpfD,
    Uvm,
    bpf_close,
    bpf_timed_out,
    bpfioctl,
    bpfopen,
    bpfpoll,
    bpfread,
    bpfread_timedout,
)
from bpf.bpf_h import BIOCSETZBUF, BIOCSKEYLOG, BPF_MAX_PAGES, BPF_ZBUF, U_INT
from mbuf.sys_devio import DEV_SHM, POLLIN, POLLRDNORM
from server.devices.devfs import DevFile, Device, OpenFile
from server.devices.shm import shm_map

log = logging.getLogger("nomapd.devfs")

# The largest shared-memory file BIOCSETZBUF maps: two buffers of zmax (the ABI
# wants the file to hold just the two buffers; a larger one is EINVAL).
SHM_MAX = 2 * BPF_MAX_PAGES * mmap.PAGESIZE


# The largest request /dev/bpf takes: a BIOCSETF program of BPF_MAXINSNS (8 bytes
# each) is 4 KiB; 64 KiB leaves room and buffers nothing large.
BPF_MAXREQUEST = 64 * 1024


class BpfFile(DevFile):
    """One open /dev/bpf: a descriptor and the shared mapping it may hold."""

    def __init__(self, bpf: Bpf, of: OpenFile) -> None:
        self.of = of
        self.d: BpfD = bpfopen(bpf, of.pid)
        self.d.bd_wakeup = self._wakeup
        self.shm: mmap.mmap | None = None
        self.shm_view: memoryview | None = None
        self.timer_armed = False

    def _wakeup(self, d: BpfD) -> None:
        self.of.wakeup()

    async def ioctl(self, cmd: int, arg: bytes, fds: list[int]) -> bytes:
        if cmd != BIOCSETZBUF:
            if fds:
                raise OSError(errno.EINVAL, "this ioctl takes no descriptor")
            out = bpfioctl(self.d, cmd, arg, None)
            if cmd == BIOCSKEYLOG and out == U_INT.pack(1):
                log.warning("bpf: pid %d's capture asks for TLS secrets (--keys)", self.of.pid)
            return out
        if len(fds) != 1 or len(arg) != BPF_ZBUF.size + DEV_SHM.size:
            raise OSError(errno.EINVAL, "BIOCSETZBUF: one shared-memory file and its address")
        if self.shm is not None:
            raise OSError(errno.EINVAL, "BIOCSETZBUF: buffers already set")
        (base,) = DEV_SHM.unpack_from(arg, BPF_ZBUF.size)
        shm = shm_map(fds[0], SHM_MAX, "BIOCSETZBUF")
        size = len(shm)
        view = memoryview(shm)
        try:
            out = bpfioctl(self.d, cmd, arg[: BPF_ZBUF.size], Uvm(base, view))
        except BaseException:
            view.release()
            shm.close()
            raise
        self.shm, self.shm_view = shm, view
        self.of.stats.shm_mapped += 1
        self.of.stats.shm_mapped_bytes += size
        return out

    async def read(self, count: int, nonblock: bool) -> bytes:
        d = self.d
        try:
            return bpfread(d, count, nonblock)
        except BlockingIOError:
            if nonblock:
                raise
        while True:  # bpfread's msleep: until bpf_wakeup or the read timeout
            timeout = d.bd_rtout / 1e6 if d.bd_rtout > 0 else None
            if not await self.of.sleep(timeout):
                return bpfread_timedout(d)
            with contextlib.suppress(BlockingIOError):
                return bpfread(d, count, False)

    def poll(self, events: int) -> int:
        if bpfpoll(self.d):
            return POLLIN | POLLRDNORM
        if self.d.bd_rtout > 0 and not self.timer_armed:
            self.timer_armed = True
            self.of.start_soon(self._timeout)
        return 0

    async def _timeout(self) -> None:
        """bpf_timed_out's callout: one read timeout after the poll that armed it."""
        await trio.sleep(self.d.bd_rtout / 1e6)
        self.timer_armed = False
        bpf_timed_out(self.d)

    def close(self) -> None:
        bpf_close(self.d)  # the descriptor lets go of its zero-copy buffers first
        shm, view = self.shm, self.shm_view
        if shm is None or view is None:
            return
        self.shm = self.shm_view = None
        size = len(view)
        view.release()
        try:
            shm.close()
        except BufferError:  # a view of the buffers outlived bpf_close: a kernel bug
            log.error("bpf: pid %d's shared memory is still referenced at close", self.of.pid)
            return
        self.of.stats.shm_mapped -= 1
        self.of.stats.shm_mapped_bytes -= size


def bpf_device(bpf: Bpf) -> Device:
    """The worker's /dev/bpf."""
    return Device("bpf", lambda of: BpfFile(bpf, of), max_request=BPF_MAXREQUEST)
