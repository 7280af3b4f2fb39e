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
  asks for, after which a successor session with the next keys takes over
  (beyond the 2019 kernel, which installs keys once: see
  `KtlsSession.successor`).
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
* Closing: our close_notify leaves in the same write as the last response
  (and TLS 1.3 session tickets with the first one), so a connection that
  carries one request costs two writes after the ClientHello. After our last
  bytes the write side is shut and what the client still sends is read and
  dropped for a moment (nginx's lingering close), so that a close with
  unread input does not turn into a reset that destroys our last records
  before the client reads them. `run()` only asks for it (`linger_wanted`);
  the server lingers after `teardown` has freed the kernel socket and the
  connection slot is released, so a lingering client holds nothing but its
  host socket.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
from typing import TYPE_CHECKING, cast

import h11
import trio

from ktls.alerts import CLOSE_NOTIFY, FATAL, WARNING, PeerAlert, RecordError, alert_bytes
from ktls.control import KEY_UPDATE_NOT_REQUESTED, TlsControl
from ktls.handshake import TlsError, TlsHandshake, UserTls
from ktls.session import KtlsSession
from mbuf.socket import TLS_RLTYPE_ALERT, TLS_RLTYPE_HANDSHAKE, Socket
from mbuf.tcp_output import TcpCb
from server.http.responses import ALLOW, SERVER_NAME, error_body, reason, simple_response
from server.http.static import FileReply, Listing, Simple, plan
from server.txpath import KernelTx

if TYPE_CHECKING:
    from server.app import Server

log = logging.getLogger("nomapd")

MAX_TARGET = 8 * 1024  # longer request lines: 414, as nginx (large_client_header_buffers 8k)
RECV_SIZE = 65536
WIRE_SNDBUF = 128 * 1024  # host socket send buffer (Linux doubles it)
USER_TLS_CHUNK = 64 * 1024  # --no-ktls: bytes read and SSL_write()n at a time
LINGER_TIME = 1.0  # seconds of lingering close
LINGER_BYTES = 1 << 20  # ... or this much input, whichever comes first


_ABSOLUTE_FORM = re.compile(rb"(?i)https?://[^/?#]*")
_PLAIN_HTTP = re.compile(rb"^[A-Z]{3,10} [^ ]+ HTTP/1\.[01]\r?\n")
_PLAIN_HTTP_BODY = b"400 Bad Request: the plain HTTP request was sent to an HTTPS port\n"
_PLAIN_HTTP_ON_TLS = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_PLAIN_HTTP_BODY), _PLAIN_HTTP_BODY)
)


# h11 events are immutable and h11 looks only at their contents: one of each is
# reused. A file response's framing event is a function of its key alone.
_END_OF_MESSAGE = h11.EndOfMessage()
FRAMING_CACHE = 256  # (status, Content-Length, Connection) keys; then it starts over
_framing_responses: dict[tuple[int, int, bytes], h11.Response] = {}


class _SendfileBody:
    """A body placeholder for h11's send_with_data_passthrough: only its length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def _ipv4(addr: object) -> tuple[int, int]:
    """(IPv4 address as an integer, port) of a socket address; 0 for the address
    of anything else (IPv6, v4-mapped included), (0, 0) if it is not one."""
    try:
        host, port = cast(tuple[str, int], addr)[:2]
        if ":" in host:
            return 0, port
        return int.from_bytes(socket.inet_aton(host)), port
    except (OSError, ValueError, TypeError):
        return 0, 0


_CLIENT_GONE = frozenset(
    {
        errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN, errno.ETIMEDOUT,
        errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EIO,
    }
)  # fmt: skip


def _peer(addr: object) -> str:
    try:
        host, port = cast(tuple[str, int], addr)[:2]
    except (ValueError, TypeError):
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _origin_form(rest: bytes) -> bytes:
    """The origin-form of what follows the authority of an absolute-form target."""
    return rest if rest.startswith(b"/") else b"/" + rest


def _responder(method: bytes) -> h11.Connection:
    """An h11 connection ready to send the response to an HTTP/1.1 `method` request.
    It frames what the request's own parser cannot: an HTTP/1.0 keep-alive
    response, the way nginx does (HTTP/1.1 status line, Content-Length,
    `Connection: keep-alive`), and the error answering a request h11 refused."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(method + b" / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.next_event()
    conn.next_event()
    return conn


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
        peer = self.sock.getpeername()  # OSError: reset before we looked (the caller's)
        dst, dport = _ipv4(peer)
        kern = server.kern
        self.so = Socket(
            kern, TcpCb(src, dst, sport, dport, int.from_bytes(os.urandom(4))), self.cfg.sndbuf
        )
        self.tx = KernelTx(kern, self.so, self.sock, nursery, server.vmq, self.cfg.send_timeout)
        self.h11 = self._new_h11()
        self._keep10 = False  # answering an HTTP/1.0 request that asked for keep-alive
        self.ctl: TlsControl | None = None  # KTLS: our record layer
        self.user: UserTls | None = None  # --no-ktls: OpenSSL's
        self.peer = _peer(peer)
        self.requests = 0
        self.eof = False
        self._early = b""  # client bytes that came with its Finished
        self._head_deadline: float | None = None  # the request head must be in by then
        self._idle_deadline = 0.0  # keep-alive: the next request must start by then
        self.idle = False  # between requests, nothing of the next one received
        self._request_start = 0.0  # first byte of the current request (or its wait)
        self._status = 0  # of the last response, for the access log
        self._sent = 0  # its body bytes
        self._head_len = 0  # bytes of its head (access log of an aborted response)
        self._length = 0  # its Content-Length
        self._wire_start = 0  # tx.bytes_written when it began
        self._unflushed = False  # handshake output queued but not flushed (see _next_event)
        self._closing = False  # our close_notify is queued: nothing may follow it
        self.linger_wanted = False  # our last bytes are out: linger() before closing

    def _log_aborted(self, req: h11.Request) -> None:
        """A response cut short (client gone, timeout, shutdown) is logged too, as
        nginx does: its status, or 499 if none was sent, and the body bytes that
        reached the wire (counted on the wire, so TLS framing makes them approximate)."""
        wire = self.tx.bytes_written - self._wire_start - self._head_len
        sent = max(0, min(wire, self._length))
        status = self._status or 499
        self.server.log_access(self.peer, req, status, sent, self._request_start)

    def _new_h11(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self.cfg.max_header_size)

    def _http10_keepalive(self, req: h11.Request) -> bool:
        """An HTTP/1.0 request with `Connection: keep-alive` and no body, which nginx
        keeps alive (and ab -k relies on), while h11 would close after it."""
        if req.http_version != b"1.0" or self.server.stopping.is_set():
            return False
        tokens: set[bytes] = set()
        for name, value in req.headers:
            if name in (b"content-length", b"transfer-encoding"):
                return False
            if name == b"connection":
                tokens.update(t.strip().lower() for t in value.split(b","))
        return b"keep-alive" in tokens and b"close" not in tokens and not self._last_request()

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
        while True:
            raw = await self._recv_raw()
            plain = await self._decode(raw)
            if plain or not raw or self.eof:
                return plain

    async def _decode(self, raw: bytes) -> bytes:
        """The application bytes `raw` (from the host socket) completes."""
        if not raw or (self.ctl is None and self.user is None):
            return raw
        return await self._tls_receive(raw)

    async def _tls_receive(self, raw: bytes) -> bytes:
        """Decrypt client bytes and act on what they carry; sets `eof` on close_notify."""
        if self.user is not None:
            try:
                plain = self.user.receive_data(raw)
            except TlsError:
                with trio.move_on_after(self.cfg.send_timeout):
                    await self._write_records(self.user.take_outgoing())  # OpenSSL's alert
                    await self.tx.flush()
                    self.linger_wanted = True
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
            self.linger_wanted = True

    async def _key_update(self) -> None:
        """Answer a KeyUpdate(update_requested): ours under the current keys, then
        a successor session with the next ones for every later record."""
        assert self.ctl is not None
        sb = self.so.so_snd
        await self.tx.send(KEY_UPDATE_NOT_REQUESTED, TLS_RLTYPE_HANDSHAKE)
        # Out at once (a client may wait for it, and answers never pile up); then
        # the old session has nothing left in flight when the new one takes over.
        await self.tx.flush()
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
                # The client waits for a TLS 1.2 Finished, never for tickets: those
                # leave with the first response, unless _next_event has to wait
                # for the request first.
                if hs.conn.get_protocol_version_name() == "TLSv1.3":
                    self._unflushed = True
                else:
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
            self.server.stats.tls_handshakes += 1
            return True
        except TlsError as e:
            self.server.stats.tls_handshake_failures += 1
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
            self.server.stats.timeouts += 1
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
        """Queue our close_notify (once): the caller flushes it, with whatever precedes it."""
        if self._closing:
            return
        self._closing = True
        if self.user is not None:
            await self._write_records(self.user.shutdown())
        elif self.ctl is not None:
            await self.tx.send(alert_bytes(WARNING, CLOSE_NOTIFY), TLS_RLTYPE_ALERT)

    async def linger(self) -> None:
        """Shut our side, then read and drop what the client still sends until it
        closes, LINGER_TIME passes or LINGER_BYTES arrive (lingering close). Only
        the host socket is used: the caller runs it after `teardown`, outside the
        connection's slot."""
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
            await self._close_notify()  # unless it left with the last response
            await self.tx.flush()
            self.linger_wanted = True
        except PeerAlert as e:
            log.debug("connection ended: %s", e)
        except (ClientGone, TlsError) as e:
            log.debug("connection ended: %s", e)
        except trio.TooSlowError:
            self.server.stats.timeouts += 1
        except OSError as e:
            if e.errno in _CLIENT_GONE:
                # The host socket failed, or the kernel socket was aborted (EIO from a
                # failed read or encryption): this connection ends, quietly.
                log.debug("connection ended: %s", e)
            else:  # not the client's doing (EMFILE, EBADF, ENOSPC...): say so
                log.warning("connection ended by a server-side error: %s", e)

    def _recv_ready(self) -> bytes | None:
        """What the host socket already holds (b"" at its end), without waiting;
        None if nothing has arrived."""
        try:
            return os.read(self.sock.fileno(), RECV_SIZE)  # the socket is non-blocking
        except BlockingIOError:
            return None
        except OSError as e:
            raise ClientGone(str(e)) from e

    async def _next_event(self) -> h11._events.Event | type[h11._util.Sentinel]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.eof:
                self.h11.receive_data(b"")
                continue
            raw = None
            if self._unflushed:
                # Right after the handshake: a request already here goes first, and
                # our tickets leave with its response, in one write.
                self._unflushed = False
                raw = self._recv_ready()
            if raw is not None:
                data = await self._decode(raw)
                if not data and raw and not self.eof:
                    continue  # a partial record or a control record: flush and wait
            else:
                await self.tx.flush()  # never wait for the client with our bytes unsent
                self.idle = self._head_deadline is None
                deadline = (
                    self._idle_deadline if self._head_deadline is None else self._head_deadline
                )
                with trio.move_on_at(deadline) as cs:
                    data = await self._recv_plain()
                self.idle = False
                if cs.cancelled_caught:
                    raise trio.TooSlowError
            if not data:
                self.eof = True
            elif self._head_deadline is None:  # the next request has begun
                self._request_start = trio.current_time()
                self._head_deadline = self._request_start + self.cfg.header_timeout
            elif self.h11.their_state is h11.IDLE and not self.h11.trailing_data[0]:
                self._request_start = trio.current_time()  # $request_time: from the first byte
            self.h11.receive_data(data)

    async def _serve_requests(self) -> None:
        conn = self.h11
        cfg = self.cfg
        while True:
            # One deadline for the whole request head (and any body we discard), not
            # per read: a client trickling a byte at a time cannot hold the slot. It
            # starts with the first request or the first byte of the next one; until
            # then a kept-alive connection may idle for --keepalive-timeout (nginx's
            # client_header_timeout and keepalive_timeout).
            now = self._request_start = trio.current_time()
            if self.requests == 0 or conn.trailing_data[0]:
                self._head_deadline = now + cfg.header_timeout
            else:
                self._head_deadline = None
                self._idle_deadline = now + cfg.keepalive_timeout
            try:
                event = await self._next_event()
            except h11.RemoteProtocolError as e:
                await self._protocol_error(e, self._request_start)
                return
            except trio.TooSlowError:
                self.server.stats.timeouts += 1
                if conn.their_state is h11.SEND_BODY or (
                    conn.their_state is h11.IDLE and conn.trailing_data[0]
                ):
                    self.server.stats.count_status(408)
                    await self._send_simple(408, close=True)
                    self.server.log_access(self.peer, None, 408, self._sent, self._request_start)
                return
            if isinstance(event, h11.Request):
                self.server.stats.requests += 1
                self.requests += 1
                parsed = conn
                self._keep10 = self._http10_keepalive(event)
                if self._keep10:  # h11 closes every HTTP/1.0 exchange: answer with another
                    self.h11 = conn = _responder(event.method)
                self._status = self._sent = self._head_len = 0
                self._wire_start = self.tx.bytes_written
                try:
                    await self._respond(event)
                except BaseException:
                    self._log_aborted(event)
                    raise
                self.server.log_access(
                    self.peer, event, self._status, self._sent, self._request_start
                )
                if self._keep10:
                    self._keep10 = False
                    if conn.our_state is not h11.DONE or self.server.stopping.is_set():
                        return
                    self.h11 = conn = self._new_h11()
                    rest, closed = parsed.trailing_data
                    if rest:
                        conn.receive_data(rest)
                    if closed:
                        conn.receive_data(b"")  # b"" is h11's end of stream
                    continue
            elif event is h11.PAUSED or isinstance(event, (h11.Data, h11.EndOfMessage)):
                pass
            else:
                return  # ConnectionClosed
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            if conn.our_state is h11.DONE:
                self._head_deadline = trio.current_time() + cfg.header_timeout
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
                if self.server.stopping.is_set() and not conn.trailing_data[0]:
                    return  # shutting down: no new request on this connection

    async def _protocol_error(self, e: h11.RemoteProtocolError, started: float) -> None:
        status = e.error_status_hint
        detail = str(e)
        if status == 431:
            line = self.h11.trailing_data[0].split(b"\n", 1)[0]
            if len(line) > MAX_TARGET:  # it is the request line that is too long
                status, detail = 414, "request target too long"
        self.server.stats.protocol_errors += 1
        self.server.stats.count_status(status)
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = error_body(status, detail)
            fresh = _responder(b"GET")  # the broken one cannot send
            await self._send(
                simple_response(fresh, status, self.server.date.now(), body=body, close=True)
            )
            self.server.log_access(self.peer, None, status, len(body), started)

    async def _send_simple(
        self,
        status: int,
        *,
        detail: str = "",
        extra: list[tuple[bytes, bytes]] | None = None,
        body: bytes | None = None,
        content_type: bytes = b"text/html; charset=utf-8",
        head_only: bool = False,
        close: bool = False,
    ) -> None:
        if body is None:
            body = error_body(status, detail) if status >= 300 and status != 304 else b""
        if self._keep10 and not close:
            extra = [*(extra or []), (b"Connection", b"keep-alive")]
        data = simple_response(
            self.h11, status, self.server.date.now(), body=body, content_type=content_type,
            extra=extra, head_only=head_only, close=close or self._last_request(),
        )  # fmt: skip
        self._status = status
        self._sent = 0 if head_only or status in (204, 304) else len(body)
        await self._send(data)
        await self._flush_response()

    async def _flush_response(self) -> None:
        """Wait until the response just queued is on the wire. When it is the last
        one (h11 will close), our close_notify goes with it, in the same write."""
        if self.h11.our_state is h11.MUST_CLOSE:
            await self._close_notify()
        await self.tx.flush()

    async def _respond(self, req: h11.Request) -> None:
        stats = self.server.stats
        method = req.method
        head_only = method == b"HEAD"
        if len(req.target) > MAX_TARGET:
            stats.count_status(414)
            await self._send_simple(414, detail="request target too long", close=True)
            return
        # h11 bounds only a head that arrives in pieces; one that came whole is
        # measured here (its size as sent, give or take whitespace).
        fields = list(req.headers)  # one pass over h11's Sequence
        size = len(method) + len(req.target) + 12 + sum(len(n) + len(v) + 4 for n, v in fields)
        if size > self.cfg.max_header_size:
            stats.count_status(431)
            await self._send_simple(431, detail="request header fields too large", close=True)
            return
        if req.http_version not in (b"1.0", b"1.1"):
            stats.count_status(505)
            await self._send_simple(505, detail="HTTP/1.x only", close=True)
            return
        names = {n for n, _ in fields}
        if b"transfer-encoding" in names and b"content-length" in names:
            # RFC 9112 6.3: a smuggling attempt or a broken proxy; nginx refuses it too.
            stats.count_status(400)
            await self._send_simple(400, detail="Content-Length with Transfer-Encoding", close=True)
            return
        m = _ABSOLUTE_FORM.match(req.target)
        if m:  # RFC 9112 3.2.2: accepted, and the authority is ignored (one site)
            req = h11.Request(
                method=method,
                target=_origin_form(req.target[m.end() :]),
                headers=req.headers,
                http_version=req.http_version,
            )
        if method not in (b"GET", b"HEAD"):
            status = 204 if method == b"OPTIONS" else 405
            stats.count_status(status)
            await self._send_simple(status, extra=[(b"Allow", ALLOW)])
            return
        reply = plan(req, self.server.site)
        if isinstance(reply, Listing):
            reply = await trio.to_thread.run_sync(reply.render, self.server.site)
        if isinstance(reply, Simple):
            stats.count_status(reply.status)
            await self._send_simple(
                reply.status,
                extra=reply.extra,
                body=reply.body,
                content_type=reply.content_type,
                head_only=head_only,
                close=reply.close,
            )
            return
        try:
            await self._send_file(reply, head_only)
        finally:
            reply.close()

    def _last_request(self) -> bool:
        """--max-requests-per-connection reached: this response closes (keepalive_requests)."""
        return self.requests >= self.cfg.max_requests

    def _file_head(self, reply: FileReply) -> bytes:
        """The response head of a file, as h11 writes it for the fields Date, Server,
        reply.headers, Content-Length and Connection, in that order.

        h11 is given only the framing fields (Content-Length, Connection): they are
        all its state machine and its framing look at, and it writes the status
        line and those fields (adding `Connection: close` when it will close).
        The other fields are ours, made from validated parts (server/http/static.py,
        --cache-control checked at start), and go between the status line and
        the framing fields, where h11 would have written them, without h11
        validating them again on every response."""
        connection = b"close" if self._last_request() else b"keep-alive" if self._keep10 else b""
        key = (reply.status, reply.length, connection)
        response = _framing_responses.get(key)
        if response is None:
            framing = [(b"Content-Length", b"%d" % reply.length)]
            if connection:
                framing.append((b"Connection", connection))
            response = h11.Response(
                status_code=reply.status, headers=framing, reason=reason(reply.status)
            )
            if len(_framing_responses) >= FRAMING_CACHE:
                _framing_responses.clear()
            _framing_responses[key] = response
        out = self.h11.send(response)
        assert out is not None
        cut = out.index(b"\r\n") + 2  # after the status line
        return b"%sDate: %s\r\nServer: %s\r\n%s%s" % (
            out[:cut],
            self.server.date.now(),
            SERVER_NAME,
            b"".join([b"%s: %s\r\n" % field for field in reply.headers]),
            out[cut:],
        )

    async def _send_file(self, reply: FileReply, head_only: bool) -> None:
        server = self.server
        self._status = reply.status
        self._sent = 0
        head = self._file_head(reply)
        self._head_len = len(head)
        self._length = reply.length
        server.stats.count_status(reply.status)
        if head_only or reply.length == 0:
            self.h11.send(_END_OF_MESSAGE)
            await self._send(head)
            await self._flush_response()
            return
        self.h11.send_with_data_passthrough(h11.Data(data=cast(bytes, _SendfileBody(reply.length))))
        pending = head  # bytes waiting to go out as the next sendfile's header
        sent = 0
        for piece in reply.pieces:
            if isinstance(piece, bytes):
                pending += piece
                continue
            first, last = piece
            await self._sendfile(reply, first, last - first + 1, pending)
            sent += last - first + 1
            pending = b""
        if pending:
            await self._send(pending)
        self.h11.send(_END_OF_MESSAGE)
        await self._flush_response()
        self._sent = reply.length
        server.stats.body_bytes += sent

    async def _sendfile(self, reply: FileReply, offset: int, nbytes: int, head: bytes) -> None:
        """sendfile(2) of one range, `head` in front of it; --no-ktls: read and SSL_write."""
        if self.user is not None:
            await self._user_tls_file(reply.fd, reply.st, offset, nbytes, head)
            return
        obj = self.server.kern.pagecache.lookup(reply.st)
        first = reply.tx_fd < 0
        if first:  # one duplicate per response, whatever its number of ranges
            reply.tx_fd = os.dup(reply.fd)  # KernelTx keeps it until no page-in can read it
        try:
            await self.tx.sendfile(obj, reply.tx_fd, offset, nbytes, head, take_fd=first)
        except OSError as e:
            if e.errno == errno.EIO:  # a page-in failed or found the file changed
                self.server.stats.responses_aborted += 1
            raise

    async def _user_tls_file(
        self, fd: int, st: os.stat_result, offset: int, nbytes: int, head: bytes
    ) -> None:
        """--no-ktls: read(2) into a user buffer, SSL_write, write(2) the ciphertext."""
        user = self.user
        assert user is not None
        buf = bytearray(USER_TLS_CHUNK)
        view = memoryview(buf)
        if head:
            await self._write_records(user.encrypt(head))
        off = offset
        end = offset + nbytes
        version = (st.st_size, st.st_mtime_ns)
        while off < end:
            chunk = [view[: min(USER_TLS_CHUNK, end - off)]]
            n = await trio.to_thread.run_sync(os.preadv, fd, chunk, off)
            now = os.fstat(fd)
            if n < len(chunk[0]) or (now.st_size, now.st_mtime_ns) != version:
                # As sendfile does: never send bytes of two versions in one response.
                self.server.stats.responses_aborted += 1
                raise OSError(errno.EIO, "file changed while being sent")
            await self._write_records(user.encrypt(view[:n]))
            off += n

    async def teardown(self) -> None:
        """Free every kernel resource of the connection. The host socket stays open
        for `linger`; the caller closes it."""
        await self.tx.teardown()
