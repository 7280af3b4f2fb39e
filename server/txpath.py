"""The transmit path of one connection: the modeled kernel socket and its host socket.

`KernelTx` is the only place where the model meets a real socket. It runs the
kernel's transmit side for one connection on the event loop:

* `sendfile` / `send` append to the model's send buffer as `sbspace` allows
  (`sendfile_step`, `sosend`), so memory stays bounded by the buffer size;
* page-ins the sendfile loop starts run on worker threads (`trio.to_thread`),
  shielded from cancellation, and complete on the loop (`vm_pager_iodone`);
* encryption runs on the KTLS worker threads and completes on the loop;
* `_step` is the NIC's transmit interrupt and TCP's ACK clock in one:
  `tcp_output` cuts ready data into packets, the packets' scatter-gather lists
  are written to the host socket with `sendmsg`, the bytes it took are
  completed on the NIC queue and acknowledged to TCP (`tcp_acked`, `sbdrop`).

Timeouts: a client that takes no bytes for `send_timeout` seconds is dropped
(`trio.TooSlowError`). Every exit path leaves the socket in a state that
`teardown` can free: it waits (shielded) for page-ins and encryption still
holding this socket's mbufs, then `soclose` frees everything and the file
descriptors the page-ins used are closed.
"""

from __future__ import annotations

import errno
import os

import trio

from mbuf.kern import Kernel
from mbuf.sendfile import SendfileJob, SendfileStatus, sendfile_step, vm_pager_iodone
from mbuf.socket import TLS_RLTYPE_APP, Socket, soclose, sosend
from mbuf.tcp_output import tcp_acked, tcp_output
from mbuf.vm_object import PagerRequest, VmObject

MEMORY_RETRY = 0.002  # seconds between retries when page frames are short (vm_wait)


class KernelTx:
    def __init__(
        self,
        kern: Kernel,
        so: Socket,
        sock: trio.socket.SocketType,
        nursery: trio.Nursery,
        send_timeout: float,
    ) -> None:
        self.kern = kern
        self.so = so
        self.sock = sock
        self.nursery = nursery
        self.send_timeout = send_timeout
        self._wake = trio.Event()
        self._fds: list[int] = []
        self.bytes_written = 0
        so.so_upcall = self._upcall

    def _upcall(self) -> None:
        self._wake.set()

    async def _wait_upcall(self) -> None:
        await self._wake.wait()
        self._wake = trio.Event()

    async def _pagein(self, req: PagerRequest) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(req.run)
            vm_pager_iodone(self.kern, req)

    async def _step(self) -> None:
        """Make progress on the wire, or wait until there is some to make."""
        so = self.so
        tls = so.so_snd.sb_tls_info
        if tls is not None:
            tls.ktls_retry()
        tcp_output(so)
        txq = so.so_txq
        if not txq.empty():
            iov = txq.pending_iov()
            with trio.fail_after(self.send_timeout):
                n = await self.sock.sendmsg(iov)
            txq.complete(n)
            tcp_acked(so, n)
            self.bytes_written += n
            return
        if so.so_error:
            raise OSError(so.so_error, os.strerror(so.so_error))
        if so.so_pending:
            await self._wait_upcall()
        else:
            self.kern.stats.vm.waits += 1
            await trio.sleep(MEMORY_RETRY)

    async def sendfile(
        self, obj: VmObject, fd: int, offset: int, nbytes: int, head: bytes = b""
    ) -> None:
        """sendfile(fd, s, offset, nbytes, hdtr={head}). The fd must stay open until
        `release_files` (page-ins may still read from it)."""
        self._fds.append(fd)
        job = SendfileJob(self.so, obj, fd, offset, nbytes, head)
        while True:
            io: list[PagerRequest] = []
            status = sendfile_step(job, io)
            for req in io:
                self.nursery.start_soon(self._pagein, req)
            if status is SendfileStatus.DONE:
                return
            await self._step()

    async def send(self, data: bytes | memoryview, record_type: int = TLS_RLTYPE_APP) -> None:
        """write(2): through sosend (framed into records when the socket has KTLS)."""
        view = memoryview(data)
        while view:
            n = sosend(self.so, view, record_type)
            view = view[n:]
            if view:
                await self._step()

    async def flush(self) -> None:
        """Wait until everything queued is on the wire (send buffer empty)."""
        so = self.so
        while so.so_snd.sb_ccc or not so.so_txq.empty() or so.so_pending:
            await self._step()
        self.release_files()

    def release_files(self) -> None:
        if self.so.so_pending:
            return
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    async def teardown(self) -> None:
        """Free the kernel socket. Waits, shielded, for work holding its mbufs."""
        so = self.so
        if so.so_snd.sb_ccc:
            so.soabort(errno.ECONNRESET)
        with trio.CancelScope(shield=True):
            while so.so_pending:
                await self._wait_upcall()
        tls = so.so_snd.sb_tls_info
        soclose(so)
        if tls is not None:
            tls.free()
            so.so_snd.sb_tls_info = None
        self.release_files()
