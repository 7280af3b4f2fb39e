"""The data path of one connection, both ways: the modeled kernel socket and its host socket.

`so_accept` makes the model's socket (`mbuf.Socket`, its TCP control block
from the host socket's addresses) for an accepted host socket, whose send
buffer it keeps small (WIRE_SNDBUF), so that data waits where the counters
see it. `KernelTx` is the only place where the model meets a real socket. It
reads what the client sends (`recv`, `recv_ready`: bytes through the
model's receive path, which the connection's transport decodes) and runs the
kernel's transmit side for one
connection on the event loop. Every read from the host socket enters the
model as the peer's packets (`if_rx` -> ether_input -> ip_input/ip6_input ->
tcp_input -> so_rcv), and what `recv` returns is what `soreceive` hands up;
the host socket is read only as far as the receive window (`sbspace(so_rcv)`)
has room.

On the transmit side:

* `sendfile` / `send` append to the model's send buffer as `sbspace` allows
  (`sendfile_step`, `sosend`), so memory stays bounded by the buffer size;
* page-ins the sendfile loop starts run on worker threads (`trio.to_thread`),
  shielded from cancellation, and always complete on the loop
  (`vm_pager_iodone`), with EIO if the read could not even be started;
* encryption runs on the KTLS worker threads and completes on the loop;
* `_step` is the NIC's transmit interrupt and TCP's ACK clock in one:
  `tcp_output` cuts ready data into packets, the packets' scatter-gather lists
  are written to the host socket with `writev` (it is non-blocking; only a full
  socket makes the task wait, for writability), the bytes it took are
  completed on the NIC queue and acknowledged to TCP (`tcp_acked`, `sbdrop`);
  when the model's lossy wire (--loss) lost the next packet, TCP goes back
  to snd_una (`tcp_timer_rexmt`) and sends again. With nothing to write it
  sleeps until an upcall (I/O or encryption done) or a `VmWaitQueue` wakeup
  (page frames or sf_bufs freed: the kernel's vm_wait).

A connection whose host socket takes no bytes for `send_timeout` seconds is
dropped (`trio.TooSlowError`): a client that stopped reading. Waiting for its
own page-ins and encryption, or for memory and sf_bufs other connections hold,
may last RESOURCE_WAIT_FACTOR times as long before it is dropped too (the
kernel's retransmit timer gives up on packets ip_output keeps refusing).

`teardown` aborts the socket, waits (shielded) for page-ins and encryption
still holding its mbufs, frees everything with `soclose`, and closes the file
descriptors the page-ins used. `linger` then uses only the host socket.

Errors: every read and write reports a client that is gone as `ClientGone`
(server/transport/errors.py), whether the host socket said so or the modeled
socket did (EPIPE from sosend after a reset); EIO from the modeled kernel and
server-side errors stay `OSError`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
from typing import cast

import trio

from mbuf.kern import Kernel
from mbuf.mb_unmapped import NoMemory
from mbuf.param import SB_RCVBUF_DEFAULT
from mbuf.sendfile import SendfileJob, SendfileStatus, sendfile_step, vm_pager_iodone
from mbuf.sockbuf import SBS_CANTRCVMORE
from mbuf.socket import TLS_RLTYPE_APP, Socket, soclose, soreceive, sosend
from mbuf.tcp_input import if_rx
from mbuf.tcp_output import TcpCb, tcp_acked, tcp_output
from mbuf.tcp_timer import tcp_timer_rexmt
from mbuf.vm_object import PagerRequest, VmObject
from server.reqstat import ConnTxStat, tx_account, tx_sample
from server.transport.errors import client_gone

log = logging.getLogger("nomapd")

# Upper bound on a sleep waiting for memory, in case a wakeup is missed.
VM_WAIT_MAX = 0.1
# Waits for resources may last this many send timeouts before the connection goes.
RESOURCE_WAIT_FACTOR = 4
RECV_SIZE = 65536  # bytes asked of the host socket per read
WIRE_SNDBUF = 128 * 1024  # host socket send buffer (Linux doubles it)
LINGER_TIME = 1.0  # seconds of lingering close
LINGER_BYTES = 1 << 20  # ... or this much input, whichever comes first


_V4MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96


def _inaddr(addr: object) -> tuple[int, int, bool]:
    """(address as an integer, port, is IPv6) of a socket address. An IPv4-mapped
    IPv6 address (a v4 client of a dual-stack `::` socket) is IPv4, as the kernel
    marks such a connection INP_IPV4; (0, 0, False) if it is not an address.
    (inet_pton, not `ipaddress`: this runs twice per accepted connection.)"""
    try:
        host, port = cast(tuple[str, int], addr)[:2]
        host = host.partition("%")[0]  # drop a scope id
        if ":" not in host:
            return int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big"), port, False
        raw = socket.inet_pton(socket.AF_INET6, host)
    except (ValueError, TypeError, OSError):
        return 0, 0, False
    if raw[:12] == _V4MAPPED:
        return int.from_bytes(raw[12:], "big"), port, False
    return int.from_bytes(raw, "big"), port, True


def _peer(addr: object) -> str:
    """A socket address as the logs write it: host:port, [v6 host]:port."""
    try:
        host, port = cast(tuple[str, int], addr)[:2]
    except (ValueError, TypeError):
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def so_accept(
    kern: Kernel, sock: trio.socket.SocketType, sndbuf: int, rcvbuf: int = SB_RCVBUF_DEFAULT
) -> tuple[Socket, str]:
    """The model's socket for an accepted host socket (its addresses in the TCP
    control block, a random initial sequence number), and the peer as the logs
    write it. OSError if the client reset before we looked (getpeername)."""
    # The host socket is the wire: keep what it holds in flight small, so that
    # data waits in the model's send buffer (where the counters see it), not in
    # a host buffer that Linux would autotune to megabytes.
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, WIRE_SNDBUF)
    src, sport, isipv6 = _inaddr(sock.getsockname())
    peer = sock.getpeername()
    dst, dport, _ = _inaddr(peer)
    iss, irs = struct.unpack("!II", os.urandom(8))  # ours, and the peer's: random per connection
    tp = TcpCb(src, dst, sport, dport, iss, irs=irs, isipv6=isipv6)
    return Socket(kern, tp, sndbuf, rcvbuf), _peer(peer)


class VmWaitQueue:
    """Connections sleeping in `_step` (the kernel's vm_wait and sf_buf waits).

    The kernel calls `wakeup` when page frames or sf_bufs are freed while an
    allocation was waiting; every sleeping connection re-checks."""

    def __init__(self) -> None:
        self._sleepers: set[KernelTx] = set()

    def wakeup(self) -> None:
        for tx in list(self._sleepers):
            tx.wake()

    def add(self, tx: KernelTx) -> None:
        self._sleepers.add(tx)

    def discard(self, tx: KernelTx) -> None:
        self._sleepers.discard(tx)


class KernelTx:
    def __init__(
        self,
        kern: Kernel,
        so: Socket,
        sock: trio.socket.SocketType,
        nursery: trio.Nursery,
        vmq: VmWaitQueue,
        send_timeout: float,
    ) -> None:
        self.kern = kern
        self.so = so
        self.sock = sock
        self._fd = sock.fileno()
        self.nursery = nursery
        self.vmq = vmq
        self.send_timeout = send_timeout
        self._wake = trio.Event()
        self._fds: list[int] = []
        self._progress_at = trio.current_time()
        self.bytes_written = 0
        # Set while a response's figures are wanted (server/reqstat.py): this
        # connection's share of the transmit counters. None otherwise, so that
        # other responses pay nothing for it.
        self.stat: ConnTxStat | None = None
        so.so_upcall = self.wake

    def wake(self) -> None:
        self._wake.set()

    # -- receiving (through the model's receive path; the transport decodes) --

    def _rx_room(self) -> int:
        """How much to read off the wire: what the receive window has room for."""
        return max(1, min(RECV_SIZE, self.so.so_rcv.sbspace()))

    def _eof(self) -> bool:
        return bool(self.so.so_rcv.sb_state & SBS_CANTRCVMORE)

    async def recv(self) -> bytes:
        """What the client sent next (what `soreceive` hands up: with KTLS RX, whole
        decrypted records); b"" at the end of its stream. Each read from the host
        socket enters the model as the client's packets (`if_rx`: the NIC, then
        ether_input ... tcp_input into so_rcv); b"" from it is the client's FIN.
        OSError from soreceive if KTLS RX refused a record."""
        so = self.so
        while True:
            out = soreceive(so, RECV_SIZE)
            if out or self._eof():
                return out
            with client_gone:
                data = await self.sock.recv(self._rx_room())
            if_rx(so, data)

    def recv_ready(self) -> bytes | None:
        """The same without waiting: None if nothing (with KTLS RX, no whole
        record) has arrived."""
        so = self.so
        out = soreceive(so, RECV_SIZE)
        if out or self._eof():
            return out
        try:
            with client_gone:
                data = os.read(self._fd, self._rx_room())  # the socket is non-blocking
        except BlockingIOError:
            return None
        if_rx(so, data)
        out = soreceive(so, RECV_SIZE)
        return out if out or self._eof() else None

    def recv_decrypted(self) -> bytes:
        """KTLS RX: records decryption had held back (until new keys), now decrypted;
        b"" if none."""
        so = self.so
        tls = so.so_rcv.sb_tls_rx
        if tls is None:
            return b""
        tls.ktls_check_rx(so.so_rcv)
        return soreceive(so, RECV_SIZE)

    async def linger(self) -> None:
        """Shut our side, then read and drop what the client still sends until it
        closes, LINGER_TIME passes or LINGER_BYTES arrive (lingering close). Only
        the host socket is used: it runs after `teardown`."""
        try:
            self.sock.shutdown(trio.socket.SHUT_WR)
        except OSError:  # ENOTCONN: reset by the client, nothing left to read or protect
            return
        got = 0
        with trio.move_on_after(LINGER_TIME), contextlib.suppress(OSError):
            while got < LINGER_BYTES:
                data = await self.sock.recv(RECV_SIZE)
                if not data:
                    return
                got += len(data)

    # -- transmitting --------------------------------------------------------

    async def _sleep(self, deadline: float) -> None:
        """Until an upcall or a memory wakeup (or VM_WAIT_MAX); TooSlowError past deadline."""
        self.vmq.add(self)
        try:
            with trio.move_on_at(min(deadline, trio.current_time() + VM_WAIT_MAX)):
                await self._wake.wait()
        finally:
            self.vmq.discard(self)
        self._wake = trio.Event()
        if trio.current_time() >= deadline:
            raise trio.TooSlowError

    async def _pagein(self, req: PagerRequest) -> None:
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(req.run)
            except Exception:  # the read could not even be started: every waiter gets EIO
                log.exception("page-in could not run")
                req.error = req.error or errno.EIO
            finally:
                vm_pager_iodone(self.kern, req)

    async def _step(self) -> None:
        """Make progress on the wire, or wait until there is some to make."""
        so = self.so
        stat = self.stat
        before = tx_sample(self.kern) if stat is not None else ()
        tcp_output(so)
        txq = so.so_txq
        if tcp_timer_rexmt(so):  # the lossy wire (--loss) lost the next packet
            tcp_output(so)
        if stat is not None:
            tx_account(stat, self.kern, before)
        if not txq.empty():
            iov = txq.pending_iov()
            if not iov:  # the retransmission was lost too: go back again next step
                await trio.lowlevel.checkpoint()
                return
            try:
                # The host socket is non-blocking: write first, wait only when it
                # is full (no cancel scope, no trio wrapper on the common path).
                n = os.writev(self._fd, iov)
            except BlockingIOError:
                deadline = self._progress_at + self.send_timeout
                with trio.move_on_at(deadline):
                    await trio.lowlevel.wait_writable(self.sock)
                    return  # the caller steps again and writes
                raise trio.TooSlowError from None
            txq.complete(n)
            tcp_acked(so, n)
            self.bytes_written += n
            self._progress_at = trio.current_time()
            await trio.lowlevel.checkpoint()  # a scheduling point per write, as sendmsg has
            return
        if so.so_error:
            raise OSError(so.so_error, os.strerror(so.so_error))
        # Waiting for our own I/O or encryption, or for memory or sf_bufs that
        # other connections hold (they have deadlines of their own): a longer limit.
        await self._sleep(self._progress_at + RESOURCE_WAIT_FACTOR * self.send_timeout)

    async def sendfile(
        self,
        obj: VmObject,
        fd: int,
        offset: int,
        nbytes: int,
        head: bytes = b"",
        *,
        take_fd: bool = True,
    ) -> None:
        """sendfile(fd, s, offset, nbytes, hdtr={head}). Takes ownership of fd (unless
        `take_fd` is False: a later call on an fd it already owns): it stays open
        until no page-in can still read from it."""
        if take_fd:
            self._fds.append(fd)
        self._progress_at = trio.current_time()
        job = SendfileJob(self.so, obj, fd, offset, nbytes, head)
        try:
            with client_gone:
                while True:
                    io: list[PagerRequest] = []
                    stat = self.stat
                    before = tx_sample(self.kern) if stat is not None else ()
                    status = sendfile_step(job, io)
                    if stat is not None:
                        tx_account(stat, self.kern, before)
                    for req in io:
                        self.nursery.start_soon(self._pagein, req)
                    if status is SendfileStatus.DONE:
                        return
                    await self._step()
        finally:
            job.close()

    async def send(self, data: bytes | memoryview, record_type: int = TLS_RLTYPE_APP) -> None:
        """write(2): through sosend (framed into records when the socket has KTLS).
        Waits for memory like m_uiotombuf(M_WAITOK) when page frames are short."""
        view = memoryview(data)
        self._progress_at = trio.current_time()
        with client_gone:
            while view:
                stat = self.stat
                before = tx_sample(self.kern) if stat is not None else ()
                try:
                    n = sosend(self.so, view, record_type)
                except NoMemory:
                    n = 0
                if stat is not None:
                    tx_account(stat, self.kern, before)
                view = view[n:]
                if view:
                    await self._step()

    async def flush(self) -> None:
        """Wait until everything queued is on the wire (send buffer empty)."""
        so = self.so
        self._progress_at = trio.current_time()
        with client_gone:
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
        tls = so.so_snd.sb_tls_info
        if so.so_snd.sb_ccc or so.so_pending:
            so.soabort(errno.ECONNRESET)
        with trio.CancelScope(shield=True):
            while so.so_pending:
                await self._sleep(float("inf"))
        soclose(so)
        if tls is not None:
            tls.free()
            so.so_snd.sb_tls_info = None
        self.release_files()
