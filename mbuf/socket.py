"""Sockets of the modeled kernel: send and receive buffers, TCP state, flow queue,
`sosend` and `soreceive`.

Theory of operation. A `Socket` is the kernel half of one accepted TCP
connection. The server owns the matching host socket and drives this one
without blocking: `sosend`/`sendfile` append what `sbspace` allows,
`tcp_output` cuts ready data into packets for the connection's NIC queue, the
server writes the queue to the host socket and reports what it took with
`tcp_acked`.

What the client sends comes the other way (mbuf/tcp_input.py): tcp_input
appends in-sequence data to `so_rcv` and `soreceive` hands it to the reader,
freeing the clusters it came in.

Work that finishes off the event loop (disk reads, encryption) is announced
through `so_upcall`, which the server sets to wake its connection task
(the kernel's `sowwakeup`). `so_pending` counts such work still holding
mbufs of this socket; a socket is only torn down (`soclose`) once it is zero,
because an encryption worker or a disk read may still be writing into pages
those mbufs own.

Models: sys/kern/uipc_socket.c (`sosend_generic`, `soreceive_stream`,
`soclose`), the `sowwakeup`
upcall and the `pru_ready` / `pru_abort` protocol entries.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

from mbuf.kassert import kassert
from mbuf.ktls_hdr import TLS_HEADER_LEN, TLS_RLTYPE_ALERT, TLS_RLTYPE_APP, TLS_RLTYPE_HANDSHAKE
from mbuf.mb_unmapped import m_uiotombuf
from mbuf.mbuf import m_copydata
from mbuf.param import SB_RCVBUF_DEFAULT
from mbuf.sockbuf import SBS_CANTRCVMORE, SBS_CANTSENDMORE, KtlsRxHook, SockBuf
from mbuf.tcp_output import TcpCb

if TYPE_CHECKING:
    from mbuf.ifnet import IfTxQueue
    from mbuf.kern import Kernel
    from mbuf.mbuf import Mbuf

# Re-exported for the callers of sosend that name a record type.
__all__ = [
    "TLS_RLTYPE_ALERT",
    "TLS_RLTYPE_APP",
    "TLS_RLTYPE_HANDSHAKE",
    "Socket",
    "ktls_enable_rx",
    "pru_ready",
    "soclose",
    "soreceive",
    "sosend",
]


class Socket:
    __slots__ = (
        "so_error",
        "so_ip_id",
        "so_kern",
        "so_pending",
        "so_rcv",
        "so_snd",
        "so_tcp",
        "so_txq",
        "so_upcall",
    )

    def __init__(
        self, kern: Kernel, tcp: TcpCb, sndbuf: int, rcvbuf: int = SB_RCVBUF_DEFAULT
    ) -> None:
        self.so_kern = kern
        self.so_snd = SockBuf(sndbuf, kern.stats.sb)
        self.so_rcv = SockBuf(rcvbuf, kern.stats.sb_rcv)
        self.so_tcp = tcp
        self.so_txq: IfTxQueue = kern.new_txq()
        self.so_error = 0
        self.so_ip_id = 1
        self.so_pending = 0
        self.so_upcall: Callable[[], None] = _no_upcall
        kern.stats.tcp.connections += 1

    def sowwakeup(self) -> None:
        """sowwakeup: wake the writer of so_snd (room or ready data appeared); the
        kernel's sorwakeup is the reader's wakeup on so_rcv."""
        self.so_upcall()

    def soabort(self, error: int) -> None:
        """pru_abort: remember the error; the owner closes the connection."""
        if not self.so_error:
            self.so_error = error
        self.so_snd.sb_state |= SBS_CANTSENDMORE
        self.so_upcall()


def _no_upcall() -> None:
    return None


def sosend(so: Socket, data: bytes | memoryview, record_type: int = TLS_RLTYPE_APP) -> int:
    """sosend_generic on a non-blocking socket: queue as much of `data` as the send
    buffer has room for; returns the bytes taken (0 when full). With a TLS session
    the data is copied into anonymous pages, framed into records of at most
    max_frame_len bytes and queued for encryption; a record type other than
    application data (an alert, a KeyUpdate) is atomic: all or nothing."""
    if so.so_error:
        raise OSError(so.so_error, "sosend: socket has an error pending")
    sb = so.so_snd
    if sb.sb_state & SBS_CANTSENDMORE:
        raise OSError(errno.EPIPE, "sosend: cannot send more")
    view = memoryview(data).cast("B")
    space = sb.sbspace()
    tls = sb.sb_tls_info
    if record_type != TLS_RLTYPE_APP:
        kassert(tls is not None, "sosend: record type without a TLS session")
        if space < len(view):
            return 0
    n = min(space, len(view))
    if n <= 0:
        return 0
    kern = so.so_kern
    if tls is None:
        top = m_uiotombuf(kern, view[:n])
        assert top is not None
        sb.sbappendstream(top, notready=False)
        return n
    top = m_uiotombuf(kern, view[:n], nomap=True, maxseg=tls.max_frame_len)
    assert top is not None
    count = tls.ktls_frame(top, record_type)
    sb.sbappendstream(top, notready=True)
    tls.ktls_enqueue(so, top, count)
    return n


def soreceive(so: Socket, uio_resid: int) -> bytes:
    """soreceive_stream: copy up to `uio_resid` bytes out of the receive buffer
    (m_copydata, the kernel's uiomove) and free them (sbdrop). b"" when nothing is
    buffered: at the end of the stream (SBS_CANTRCVMORE) that is end of file,
    otherwise the reader would block (EWOULDBLOCK on a non-blocking socket)."""
    sb = so.so_rcv
    if sb.sb_tls_rx is not None:
        return _soreceive_tls(sb, uio_resid)
    n = min(sb.sb_acc, uio_resid)
    if n <= 0:
        return b""
    data = m_copydata(sb.sb_mb, 0, n)
    sb.sbdrop(n)
    return data


def _soreceive_tls(sb: SockBuf, uio_resid: int) -> bytes:
    """recvmsg on a KTLS RX socket, as OpenSSL's ktls_read_record reads it: each
    decrypted record with its TLS_GET_RECORD control message, which OpenSSL turns
    back into a 5-byte record header (type, version, plaintext length) in front
    of the data. Whole records only, at least one if any is ready. Once none is
    left before a record decryption refused, OSError with that errno (EBADMSG,
    EMSGSIZE, EINVAL), which OpenSSL answers with the matching alert."""
    if not sb.sb_rxctl:
        assert sb.sb_tls_rx is not None
        err = sb.sb_tls_rx.ktls_rx_error()
        if err:
            raise OSError(err, "soreceive: KTLS RX refused a record")
        return b""
    out: list[bytes] = []
    got = 0
    ctl = sb.sb_rxctl
    while ctl and (not out or got < uio_resid):
        rtype, vmajor, vminor, length = ctl.popleft()
        out.append(bytes((rtype, vmajor, vminor, length >> 8, length & 0xFF)))
        if length:
            out.append(m_copydata(sb.sb_mb, 0, length))
            sb.sbdrop(length)
        got += TLS_HEADER_LEN + length
    return b"".join(out)


def ktls_enable_rx(so: Socket, tls: KtlsRxHook, pending: bytes | memoryview) -> None:
    """setsockopt(TCP_RXTLS_ENABLE): from now on so_rcv decrypts records.
    `pending` is what the handshake's reader had taken off the socket beyond its
    last handshake record: it goes back to the front of the buffer, encrypted,
    as if the reader had not read ahead (OpenSSL does not read ahead when it
    means to enable KTLS RX); the kernel likewise moves data already in so_rcv
    into sb_mtls (sb_mark_notready). Then ktls_check_rx."""
    sb = so.so_rcv
    kassert(sb.sb_acc == 0 and sb.sb_tls_rx is None, "ktls_enable_rx: data or session there")
    sb.sb_tls_rx = tls
    m = m_uiotombuf(so.so_kern, memoryview(pending))
    if m is not None:
        sb.sbappend_ktls_rx(m)
    tls.ktls_check_rx(sb)


def soreadable(so: Socket) -> bool:
    """soreadable: data to read, or the peer's FIN (a read returns at once)."""
    return so.so_rcv.sb_acc > 0 or bool(so.so_rcv.sb_state & SBS_CANTRCVMORE)


def pru_ready(so: Socket, m: Mbuf, count: int) -> int:
    """pru_ready: `count` pages from m are ready. The owner runs tcp_output next."""
    return so.so_snd.sbready(m, count)


def soclose(so: Socket) -> None:
    """Free everything the socket holds. No work may be pending on its mbufs."""
    kassert(so.so_pending == 0, "soclose: %s operations still pending", so.so_pending)
    so.so_snd.sb_state |= SBS_CANTSENDMORE
    so.so_txq.drain()
    so.so_snd.sbflush()
    so.so_rcv.sb_state |= SBS_CANTRCVMORE
    so.so_rcv.sbflush()  # sorflush: what the reader never took
    so.so_rcv.sb_tls_rx = None
    so.so_upcall = _no_upcall
