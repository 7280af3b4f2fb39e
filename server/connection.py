"""One client connection: TLS handshake, HTTP/1.1 with h11, responses through the kernel.

Theory of operation. Each accepted TCP connection gets one task. It creates
the model's kernel socket (`mbuf.Socket`) and a `KernelTx` that binds it to
the host socket; every byte sent to the client (handshake, heads, bodies,
alerts) goes through the modeled kernel.

* TLS: OpenSSL runs the handshake over memory BIOs (`ktls.TlsHandshake`); its
  output is written with `sosend` like any write(2). Then, with KTLS (the
  default), the negotiated keys and the next sequence numbers become a
  `KtlsSession` on the socket's send buffer (`TCP_TXTLS_ENABLE`) and a
  `KtlsRxSession` under `TlsControl` for what the client sends
  (`TCP_RXTLS_ENABLE`): OpenSSL is done. Control records go out through the
  same send path with their record type: alerts answering bad records, our
  close_notify, and the KeyUpdate a client's KeyUpdate(update_requested)
  asks for, after which a successor session with the next keys takes over.
  With `--no-ktls` OpenSSL keeps both sides (`UserTls`): it encrypts in user
  space and the ciphertext is copied into the socket buffer (the classic
  baseline). With `--http` there is no TLS at all.
* HTTP: h11 parses requests; each GET answers with `sendfile(file, head)`, so
  the head and the file pages travel as one sendfile call, as nginx does with
  `sendfile on`. After each response the task waits for the send buffer to
  drain before reading the next request (pipelined requests wait in h11).
* Errors end this connection only: handshake failures (OpenSSL's alert is
  sent), h11 protocol errors (400 or h11's hint, then close), timeouts
  (handshake, request head, a client that stops reading) and disconnects.
  `teardown` always runs and frees every kernel resource of the connection.
* Closing: after our last bytes (and close_notify) the write side is shut
  and what the client still sends is read and dropped for a moment
  (nginx's lingering close), so that a close with unread input does not
  turn into a reset that destroys our last records before the client reads
  them.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import re
from typing import TYPE_CHECKING, cast

import h11
import trio

from ktls.alerts import CLOSE_NOTIFY, FATAL, WARNING, PeerAlert, RecordError, alert_bytes
from ktls.control import KEY_UPDATE_NOT_REQUESTED, TlsControl
from ktls.handshake import TlsError, TlsHandshake, UserTls
from ktls.session import KtlsSession
from mbuf.socket import TLS_RLTYPE_ALERT, TLS_RLTYPE_HANDSHAKE, Socket
from mbuf.tcp_output import TcpCb
from server.conditional import evaluate
from server.httpfields import http_date, strong_etag
from server.mime import content_type
from server.resolve import ResolveStatus, resolve_target
from server.responses import ALLOW, SERVER_NAME, error_body, simple_response
from server.txpath import KernelTx

if TYPE_CHECKING:
    from server.app import Server

log = logging.getLogger("nomapd")

MAX_REQUEST_HEAD = 16 * 1024  # h11's default; nginx allows 1K + 4x8K
RECV_SIZE = 65536
WIRE_SNDBUF = 128 * 1024  # host socket send buffer (Linux doubles it)
USER_TLS_CHUNK = 64 * 1024  # --no-ktls: bytes read and SSL_write()n at a time
LINGER_TIME = 1.0  # seconds of lingering close
LINGER_BYTES = 1 << 20  # ... or this much input, whichever comes first


_PLAIN_HTTP = re.compile(rb"^[A-Z]{3,10} [^ ]+ HTTP/1\.[01]\r?\n")
_PLAIN_HTTP_BODY = b"400 Bad Request: the plain HTTP request was sent to an HTTPS port\n"
_PLAIN_HTTP_ON_TLS = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_PLAIN_HTTP_BODY), _PLAIN_HTTP_BODY)
)


class _SendfileBody:
    """A body placeholder for h11's send_with_data_passthrough: only its length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def _ipv4(addr: object) -> tuple[int, int]:
    try:
        host, port = cast(tuple[str, int], addr)[:2]
        ip = ipaddress.ip_address(host)
        return (int(ip) if ip.version == 4 else 0), port
    except (ValueError, TypeError):
        return 0, 0


_CLIENT_GONE = frozenset(
    {
        errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN, errno.ETIMEDOUT,
        errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EIO,
    }
)  # fmt: skip


def _peer(sock: trio.socket.SocketType) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except (OSError, ValueError):
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ClientGone(Exception):
    """The peer closed or reset the connection."""


class Connection:
    def __init__(self, server: Server, stream: trio.SocketStream, nursery: trio.Nursery) -> None:
        self.server = server
        self.cfg = server.cfg
        self.sock = stream.socket
        # The host socket is the wire: keep what it holds in flight small, so that
        # data waits in the model's send buffer (where the counters see it), not in
        # a host buffer that Linux would autotune to megabytes.
        self.sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, WIRE_SNDBUF)
        src, sport = _ipv4(self.sock.getsockname())
        dst, dport = _ipv4(self.sock.getpeername())
        kern = server.kern
        self.so = Socket(
            kern, TcpCb(src, dst, sport, dport, int.from_bytes(os.urandom(4))), self.cfg.sndbuf
        )
        self.tx = KernelTx(kern, self.so, self.sock, nursery, server.vmq, self.cfg.send_timeout)
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        self.ctl: TlsControl | None = None  # KTLS: our record layer
        self.user: UserTls | None = None  # --no-ktls: OpenSSL's
        self.peer = _peer(self.sock)
        self.requests = 0
        self.eof = False
        self._early = b""  # client bytes that came with its Finished
        self._head_deadline = trio.current_time() + self.cfg.header_timeout

    def info(self) -> dict[str, object]:
        """This connection's sessions and counters, for the admin /connections."""
        sb = self.so.so_snd
        out: dict[str, object] = {
            "peer": self.peer,
            "requests": self.requests,
            "bytes_written": self.tx.bytes_written,
            "sockbuf_bytes": sb.sb_ccc,
        }
        if self.user is not None:
            out["tls"] = "user-space (OpenSSL)"
        tls = sb.sb_tls_info
        if self.ctl is not None and isinstance(tls, KtlsSession):
            rx = self.ctl.rx
            out.update(
                tls=self.ctl.version.name,
                suite=tls.suite.iana_name,
                tx_seq=sb.sb_tls_seqno,
                tx_records=tls.records_encrypted,
                tx_bytes=tls.bytes_encrypted,
                rx_seq=rx.seqno,
                rx_records=rx.records,
                rx_bytes=rx.bytes,
                key_updates_rx=self.ctl.key_updates_rx,
                key_updates_tx=self.ctl.key_updates_tx,
                wq_index=tls.wq_index,
            )
        return out

    # -- receiving -----------------------------------------------------------

    async def _recv_raw(self) -> bytes:
        try:
            data = await self.sock.recv(RECV_SIZE)
        except OSError as e:  # reset, timed out, unreachable: the client is gone
            raise ClientGone(str(e)) from e
        return data

    async def _recv_plain(self) -> bytes:
        """Application bytes from the client; b"" at end of stream."""
        if self.ctl is None and self.user is None:
            return await self._recv_raw()
        while True:
            raw = await self._recv_raw()
            if not raw:
                return b""
            plain = await self._tls_receive(raw)
            if self.eof or plain:
                return plain

    async def _tls_receive(self, raw: bytes) -> bytes:
        """Decrypt client bytes and act on what they carry; sets `eof` on close_notify."""
        if self.user is not None:
            try:
                plain = self.user.receive_data(raw)
            except TlsError:
                with trio.move_on_after(self.cfg.send_timeout):
                    await self._write_records(self.user.take_outgoing())  # OpenSSL's alert
                    await self.tx.flush()
                    await self._linger()
                raise
            if self.user.outgoing:  # OpenSSL's KeyUpdate or no_renegotiation warning
                await self._write_records(self.user.take_outgoing())
                await self.tx.flush()  # a client may wait for the answer
            self.eof = self.eof or self.user.closed
            return plain
        ctl = self.ctl
        assert ctl is not None
        try:
            plain = ctl.receive_data(raw)
        except RecordError as e:
            await self._send_alert(FATAL, e.description)
            raise
        if ctl.outgoing:  # a no_renegotiation warning: a client may wait for it
            for rtype, payload in ctl.take_outgoing():
                await self.tx.send(payload, rtype)
            await self.tx.flush()
        if ctl.key_update_owed:
            await self._key_update()
        self.eof = self.eof or ctl.closed
        return plain

    async def _send_alert(self, level: int, description: int) -> None:
        """A fatal alert, sequenced after everything we sent, then nothing more."""
        self.server.kern.stats.ktls.alerts_sent += 1
        with trio.move_on_after(self.cfg.send_timeout):
            await self.tx.send(alert_bytes(level, description), TLS_RLTYPE_ALERT)
            await self.tx.flush()
            await self._linger()

    async def _key_update(self) -> None:
        """Answer a KeyUpdate(update_requested): ours under the current keys, then
        a successor session with the next ones for every later record."""
        assert self.ctl is not None
        sb = self.so.so_snd
        await self.tx.send(KEY_UPDATE_NOT_REQUESTED, TLS_RLTYPE_HANDSHAKE)
        keys = self.ctl.next_tx_keys()
        old = sb.sb_tls_info
        assert isinstance(old, KtlsSession)
        sb.sb_tls_info = old.successor(keys.key, keys.iv)
        sb.sb_tls_seqno = 0

    # -- TLS -----------------------------------------------------------------

    async def _handshake(self) -> bool:
        assert self.server.ssl_ctx is not None
        hs = TlsHandshake(self.server.ssl_ctx)
        first = b""
        try:
            with trio.fail_after(self.cfg.handshake_timeout):
                while not hs.advance():
                    out = hs.data_to_send()
                    if out:
                        await self.tx.send(out)
                        await self.tx.flush()
                    data = await self._recv_raw()
                    if not data:
                        return False
                    first = first or data
                    hs.receive_data(data)
            out = hs.data_to_send()
            if out:  # TLS 1.2: our Finished; TLS 1.3: session tickets
                await self.tx.send(out)
                await self.tx.flush()
            if self.cfg.ktls:
                est = hs.established()
                session = KtlsSession(
                    self.server.kern, self.server.workers, est.suite, est.tx.key, est.tx.iv
                )
                self.so.so_snd.sb_tls_info = session
                self.so.so_snd.sb_tls_seqno = est.tx_seq
                self.ctl = TlsControl(est, self.server.kern.stats.ktls)
                self._early = hs.leftover()
                hs.conn.set_app_data(None)  # OpenSSL is done with this connection
            else:
                hs.keylog.wipe()
                self.user = UserTls(hs.conn, hs.leftover())
            self.server.stats["tls_handshakes"] += 1
            return True
        except TlsError as e:
            self.server.stats["tls_handshake_failures"] += 1
            log.debug("handshake failed: %s", e)
            out = hs.data_to_send()
            if _PLAIN_HTTP.match(first):
                # As nginx does: answer a plain HTTP request on the TLS port in plain HTTP.
                out = _PLAIN_HTTP_ON_TLS
            if out:  # OpenSSL's alert
                await self.tx.send(out)
                await self.tx.flush()
            return False
        except trio.TooSlowError:
            self.server.stats["timeouts"] += 1
            return False

    async def _send(self, data: bytes) -> None:
        """Response bytes: through OpenSSL first with --no-ktls, else straight to sosend."""
        if self.user is not None:
            await self._write_records(self.user.encrypt(data))
        else:
            await self.tx.send(data)

    async def _write_records(self, ciphertext: bytes) -> None:
        """--no-ktls: what OpenSSL does over a socket BIO, one write(2) per record
        (ssl3_write_pending), so each record is its own sosend."""
        view = memoryview(ciphertext)
        pos = 0
        while pos < len(view):
            end = pos + 5 + int.from_bytes(view[pos + 3 : pos + 5])
            await self.tx.send(view[pos:end])
            pos = end

    async def _close_notify(self) -> None:
        if self.user is not None:
            await self._write_records(self.user.shutdown())
        elif self.ctl is not None:
            await self.tx.send(alert_bytes(WARNING, CLOSE_NOTIFY), TLS_RLTYPE_ALERT)

    async def _linger(self) -> None:
        """Shut our side, then read and drop what the client still sends until it
        closes, LINGER_TIME passes or LINGER_BYTES arrive (lingering close)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(trio.socket.SHUT_WR)
        got = 0
        with trio.move_on_after(LINGER_TIME), contextlib.suppress(OSError):
            while got < LINGER_BYTES:
                data = await self.sock.recv(RECV_SIZE)
                if not data:
                    return
                got += len(data)

    # -- HTTP ----------------------------------------------------------------

    async def run(self) -> None:
        try:
            if not self.cfg.http and not await self._handshake():
                return
            if self.ctl is not None or self.user is not None:
                early = await self._tls_receive(self._early)  # sent with the Finished
                if early:
                    self.h11.receive_data(early)
            await self._serve_requests()
            await self._close_notify()
            await self.tx.flush()
            await self._linger()
        except PeerAlert as e:
            log.debug("connection ended: %s", e)
        except (ClientGone, TlsError) as e:
            log.debug("connection ended: %s", e)
        except trio.TooSlowError:
            self.server.stats["timeouts"] += 1
        except OSError as e:
            if e.errno in _CLIENT_GONE:
                # The host socket failed, or the kernel socket was aborted (EIO from a
                # failed read or encryption): this connection ends, quietly.
                log.debug("connection ended: %s", e)
            else:  # not the client's doing (EMFILE, EBADF, ENOSPC...): say so
                log.warning("connection ended by a server-side error: %s", e)

    async def _next_event(self) -> h11._events.Event | type[h11._util.Sentinel]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.eof:
                self.h11.receive_data(b"")
                continue
            await self.tx.flush()  # never wait for the client with our bytes unsent
            with trio.move_on_at(self._head_deadline) as cs:
                data = await self._recv_plain()
            if cs.cancelled_caught:
                raise trio.TooSlowError
            if not data:
                self.eof = True
            self.h11.receive_data(data)

    async def _serve_requests(self) -> None:
        conn = self.h11
        while True:
            # One deadline for the whole request head (and any body we discard), not
            # per read: a client trickling a byte at a time cannot hold the slot.
            self._head_deadline = trio.current_time() + self.cfg.header_timeout
            try:
                event = await self._next_event()
            except h11.RemoteProtocolError as e:
                await self._protocol_error(e)
                return
            except trio.TooSlowError:
                self.server.stats["timeouts"] += 1
                if conn.their_state is h11.SEND_BODY or (
                    conn.their_state is h11.IDLE and conn.trailing_data[0]
                ):
                    self.server.stats["status_408"] += 1
                    await self._send_simple(408, close=True)
                return
            if isinstance(event, h11.Request):
                self.server.stats["requests"] += 1
                self.requests += 1
                await self._respond(event)
            elif event is h11.PAUSED or isinstance(event, (h11.Data, h11.EndOfMessage)):
                pass
            else:
                return  # ConnectionClosed
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            if conn.our_state is h11.DONE:
                self._head_deadline = trio.current_time() + self.cfg.header_timeout
                while conn.their_state is h11.SEND_BODY:  # discard an unwanted request body
                    try:
                        ev = await self._next_event()
                    except (h11.RemoteProtocolError, trio.TooSlowError):
                        return
                    if isinstance(ev, h11.ConnectionClosed):
                        return
                if conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()

    async def _protocol_error(self, e: h11.RemoteProtocolError) -> None:
        self.server.stats["protocol_errors"] += 1
        self.server.stats[f"status_{e.error_status_hint}"] += 1
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            status = e.error_status_hint
            body = error_body(status, str(e))
            fresh = h11.Connection(h11.SERVER)  # the broken one cannot send
            fresh.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            fresh.next_event()
            await self._send(
                simple_response(fresh, status, self.server.date.now(), body=body, close=True)
            )

    async def _send_simple(
        self,
        status: int,
        *,
        detail: str = "",
        extra: list[tuple[bytes, bytes]] | None = None,
        head_only: bool = False,
        close: bool = False,
    ) -> None:
        body = error_body(status, detail) if status >= 300 else b""
        data = simple_response(
            self.h11, status, self.server.date.now(),
            body=body, extra=extra, head_only=head_only, close=close,
        )  # fmt: skip
        await self._send(data)
        await self.tx.flush()

    async def _respond(self, req: h11.Request) -> None:
        stats = self.server.stats
        method = req.method
        head_only = method == b"HEAD"
        if method not in (b"GET", b"HEAD"):
            if method == b"OPTIONS":
                stats["status_204"] += 1
                await self._send_simple(204, extra=[(b"Allow", ALLOW)])
            else:
                stats["status_405"] += 1
                await self._send_simple(405, extra=[(b"Allow", ALLOW)])
            return
        res = resolve_target(
            self.server.root,
            req.target,
            follow_symlinks=self.cfg.follow_symlinks,
            serve_dotfiles=self.cfg.serve_dotfiles,
        )
        if res.status is ResolveStatus.REDIRECT:
            assert res.location is not None
            stats["status_301"] += 1
            await self._send_simple(301, extra=[(b"Location", res.location)], head_only=head_only)
            return
        if res.status is not ResolveStatus.FILE:
            status = {
                ResolveStatus.BAD_REQUEST: 400,
                ResolveStatus.NOT_FOUND: 404,
                ResolveStatus.FORBIDDEN: 403,
            }[res.status]
            stats[f"status_{status}"] += 1
            await self._send_simple(status, head_only=head_only)
            return
        assert res.path is not None and res.stat is not None
        try:
            fd = os.open(res.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            status = 403 if e.errno in (errno.EACCES, errno.EPERM) else 404
            stats[f"status_{status}"] += 1
            await self._send_simple(status, head_only=head_only)
            return
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        if (st.st_dev, st.st_ino) != (res.stat.st_dev, res.stat.st_ino):
            os.close(fd)  # replaced between resolution and open
            stats["status_404"] += 1
            await self._send_simple(404, head_only=head_only)
            return
        etag = strong_etag(st)
        verdict = evaluate(method, dict(req.headers), etag, st.st_mtime)
        if verdict == 304:  # not modified: the validators, no body
            os.close(fd)
            stats["status_304"] += 1
            validators = [(b"ETag", etag), (b"Last-Modified", http_date(st.st_mtime))]
            head304 = self.h11.send(
                h11.Response(
                    status_code=304,
                    headers=[
                        (b"Date", self.server.date.now()),
                        (b"Server", SERVER_NAME),
                        *validators,
                    ],
                    reason=b"Not Modified",
                )
            )
            assert head304 is not None
            self.h11.send(h11.EndOfMessage())
            await self._send(head304)
            await self.tx.flush()
            return
        if verdict == 412:
            os.close(fd)
            stats["status_412"] += 1
            await self._send_simple(412, head_only=head_only)
            return
        await self._send_file(fd, st, res.path.name, head_only, etag)

    async def _send_file(
        self, fd: int, st: os.stat_result, name: str, head_only: bool, etag: bytes
    ) -> None:
        server = self.server
        headers = [
            (b"Date", server.date.now()),
            (b"Server", SERVER_NAME),
            (b"Content-Type", content_type(name).encode()),
            (b"Content-Length", b"%d" % st.st_size),
            (b"Last-Modified", http_date(st.st_mtime)),
            (b"ETag", etag),
        ]
        head = self.h11.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
        assert head is not None
        server.stats["status_200"] += 1
        if head_only or st.st_size == 0:
            os.close(fd)
            self.h11.send(h11.EndOfMessage())
            await self._send(head)
            await self.tx.flush()
            return
        self.h11.send_with_data_passthrough(h11.Data(data=cast(bytes, _SendfileBody(st.st_size))))
        if self.user is not None:
            try:
                await self._user_tls_file(fd, st, head)
            finally:
                os.close(fd)
        else:
            obj = server.kern.pagecache.lookup(st)
            try:
                await self.tx.sendfile(obj, fd, 0, st.st_size, head)
                await self.tx.flush()
            except OSError as e:
                if e.errno == errno.EIO:  # a page-in failed or found the file changed
                    server.stats["responses_aborted"] += 1
                raise
        self.h11.send(h11.EndOfMessage())
        await self.tx.flush()
        server.stats["body_bytes"] += st.st_size

    async def _user_tls_file(self, fd: int, st: os.stat_result, head: bytes) -> None:
        """--no-ktls: read(2) into a user buffer, SSL_write, write(2) the ciphertext."""
        user = self.user
        assert user is not None
        buf = bytearray(USER_TLS_CHUNK)
        view = memoryview(buf)
        await self._write_records(user.encrypt(head))
        size = st.st_size
        off = 0
        version = (st.st_size, st.st_mtime_ns)
        while off < size:
            chunk = [view[: min(USER_TLS_CHUNK, size - off)]]
            n = await trio.to_thread.run_sync(os.preadv, fd, chunk, off)
            now = os.fstat(fd)
            if n < len(chunk[0]) or (now.st_size, now.st_mtime_ns) != version:
                # As sendfile does: never send bytes of two versions in one response.
                self.server.stats["responses_aborted"] += 1
                raise OSError(errno.EIO, "file changed while being sent")
            await self._write_records(user.encrypt(view[:n]))
            off += n

    async def teardown(self) -> None:
        await self.tx.teardown()
        with trio.CancelScope(shield=True), contextlib.suppress(OSError):
            self.sock.close()
