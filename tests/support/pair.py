"""`ConnectionPair`: one kernel socket and the far end of its wire, joined in memory.

Theory of operation
-------------------
The server's `KernelTx` (server/txpath.py) drives a kernel socket with trio
and a host socket. This is the same loop, synchronous and without a socket,
the way h11's tests join two endpoints in memory: `sendfile` runs
`sendfile_step` to completion, doing each page-in at once (`req.run()` then
`vm_pager_iodone`, what the server's worker threads and loop do); KTLS frames
and seals records as they become ready (a `KtlsSession` on `KtlsWorkers(0)`
encrypts inline, and a test stand-in may ask for `encrypt` to be called before
each output); `pump` is the NIC and the wire: `tcp_output` -> `ip_output` ->
the transmit queue's scatter-gather list -> `wire` (optionally `chunk` bytes
per sendmsg) -> the `peer`, then the ACK (`tcp_acked`, `sbdrop`). The other
way, `to_server` is the peer sending: each host read becomes inbound packets
(`if_rx` -> ether_input -> ip_input/ip6_input -> tcp_input -> so_rcv), then
the server's reader takes them (`soreceive`).

Every byte the wire carried stays in `wire`, so a test can parse and open the
records itself (tests/support/tlsseal.py). The `peer` is what reads them: by
default `Wire`, which reads the bytes as they are (plain TCP), or a TLS client
over memory BIOs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Final, Protocol

from mbuf.kern import Kernel
from mbuf.sendfile import SendfileJob, SendfileStatus, sendfile_step, vm_pager_iodone
from mbuf.sockbuf import KtlsHook
from mbuf.socket import TLS_RLTYPE_APP, Socket, soclose, soreceive, sosend
from mbuf.tcp_input import if_rx
from mbuf.tcp_output import TcpCb, tcp_output
from mbuf.vm_object import PagerRequest, VmObject
from tests.support.wire import wire_take

SRC_IP: Final = 0x0A000001  # 10.0.0.1
DST_IP: Final = 0x0A000002  # 10.0.0.2
SRC_IP6: Final = 0x20010DB8 << 96 | 1  # 2001:db8::1
DST_IP6: Final = 0x20010DB8 << 96 | 2  # 2001:db8::2
PEER_ISS: Final = 0xFFFFFF00  # the peer's ISN: its sequence numbers wrap soon
SNDBUF: Final = 2 * 1024 * 1024
MAX_STEPS: Final = 10_000


def new_socket(
    kern: Kernel, sndbuf: int = SNDBUF, tls: Any = None, *, isipv6: bool = False
) -> Socket:
    """A connected TCP socket 10.0.0.1:443 -> 10.0.0.2:50000 (IPv6: 2001:db8::1 ->
    2001:db8::2), with `tls` as its KTLS session (a `KtlsHook`) if given. The
    peer's initial sequence number is near the wrap, so that receiving crosses it."""
    src, dst = (SRC_IP6, DST_IP6) if isipv6 else (SRC_IP, DST_IP)
    tp = TcpCb(src, dst, 443, 50000, 0x01020304, irs=PEER_ISS, isipv6=isipv6)
    so = Socket(kern, tp, sndbuf)
    if tls is not None:
        so.so_snd.sb_tls_info = tls
    return so


def run_io(kern: Kernel, reqs: list[PagerRequest]) -> None:
    """What the server's worker threads and loop do for each page-in."""
    for req in reqs:
        req.run()
        vm_pager_iodone(kern, req)


class Session(KtlsHook, Protocol):
    """A KTLS session the pair installs on its socket and frees at close."""

    def free(self) -> None: ...


class Peer(Protocol):
    """The far end of the wire: takes the wire's bytes, hands back what it read."""

    def to_client(self, data: bytes | bytearray) -> None: ...

    def client_read(self) -> bytes: ...


class Wire:
    """A plain TCP peer: it reads exactly the bytes the wire carried."""

    def __init__(self) -> None:
        self._unread = bytearray()

    def to_client(self, data: bytes | bytearray) -> None:
        self._unread += data

    def client_read(self) -> bytes:
        out = bytes(self._unread)
        self._unread.clear()
        return out


class ConnectionPair:
    """A kernel socket whose NIC output reaches `peer` (see the module head)."""

    def __init__(
        self,
        so: Socket,
        peer: Peer | None = None,
        *,
        tls: Session | None = None,
        seqno: int = 0,
        encrypt: Callable[[], None] | None = None,
    ) -> None:
        self.so = so
        self.kern = so.so_kern
        self.peer: Peer = Wire() if peer is None else peer
        self.tls = tls
        if tls is not None:  # TCP_TXTLS_ENABLE: records from `seqno` on
            so.so_snd.sb_tls_info = tls
            so.so_snd.sb_tls_seqno = seqno
        self.encrypt = encrypt  # a stand-in's workers: finish queued records
        self.wire = bytearray()

    def pump(
        self, chunk: int | None = None, deliver: Callable[[bytes], bytes] | None = None
    ) -> int:
        """tcp_output, then move the NIC queue to the peer (`chunk` bytes per
        sendmsg if given) until nothing is ready; `deliver` may rewrite the bytes
        on their way. Returns the bytes the wire took."""
        so = self.so
        if self.encrypt is not None:
            self.encrypt()
        moved = 0
        tcp_output(so)
        while (data := wire_take(so, chunk)) or so.so_txq.stalled():
            self.wire += data
            self.peer.to_client(deliver(data) if deliver is not None else data)
            moved += len(data)
            tcp_output(so)
        return moved

    def sendfile(
        self,
        obj: VmObject,
        fd: int,
        offset: int,
        nbytes: int,
        head: bytes = b"",
        chunk: int | None = None,
        *,
        on_step: Callable[[SendfileStatus], None] | None = None,
    ) -> bytes:
        """Run one sendfile to completion with page-ins done inline, the wire
        taking data between steps; returns what the peer read meanwhile."""
        job = SendfileJob(self.so, obj, fd, offset, nbytes, head)
        got = bytearray()
        try:
            for _ in range(MAX_STEPS):
                io: list[PagerRequest] = []
                status = sendfile_step(job, io)
                if on_step is not None:
                    on_step(status)
                run_io(self.kern, io)
                self.pump(chunk)
                got += self.peer.client_read()
                if status is SendfileStatus.DONE:
                    break
                assert status is SendfileStatus.NEED_SPACE, status
            else:
                raise AssertionError("sendfile made no progress")
        finally:
            job.close()
        self.pump(chunk)
        got += self.peer.client_read()
        return bytes(got)

    def send(self, data: bytes, record_type: int = TLS_RLTYPE_APP) -> bytes:
        """write(2) of all of `data` through sosend; returns what the peer read."""
        view = memoryview(data)
        got = bytearray()
        for _ in range(MAX_STEPS):
            view = view[sosend(self.so, view, record_type) :]
            self.pump()
            got += self.peer.client_read()
            if not view:
                return bytes(got)
        raise AssertionError("send made no progress")

    def to_server(self, data: bytes, chunk: int | None = None) -> bytes:
        """The peer sends `data` (`chunk` bytes per host read if given; b"": its FIN):
        each read enters as packets (if_rx -> ... -> tcp_input -> so_rcv); returns
        what the server's reader then gets from soreceive."""
        so = self.so
        if not data:
            if_rx(so, data)
            return soreceive(so, 1 << 20)
        got = bytearray()
        off = 0
        while off < len(data):  # as the server reads: never past the receive window
            step = min(chunk or len(data), so.so_rcv.sbspace())
            assert step > 0, "the receive window closed"
            if_rx(so, data[off : off + step])
            got += soreceive(so, 1 << 20)
            off += step
        return bytes(got)

    def to_server_as(self, data: bytes, how: str, seed: int = 0) -> bytes:
        """`to_server` fed three ways, as h11's tests feed parsers: "whole", "byte"
        (one byte per host read) or "random" (reads of 1..5000 bytes)."""
        if how == "whole":
            return self.to_server(data)
        if how == "byte":
            return self.to_server(data, chunk=1)
        rnd = random.Random(seed)
        got = bytearray()
        off = 0
        while off < len(data):
            n = rnd.randint(1, 5000)
            got += self.to_server(data[off : off + n])
            off += n
        return bytes(got)

    def close(self) -> None:
        """soclose, then free the KTLS session (as the server's teardown does)."""
        soclose(self.so)
        if self.tls is not None:
            self.tls.free()
            self.so.so_snd.sb_tls_info = None
