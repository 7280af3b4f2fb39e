"""One client connection: the HTTP/1.1 loop over its transport.

Theory of operation. Each accepted TCP connection gets one task. It creates
the model's kernel socket (`mbuf.Socket`) and a `KernelTx` that binds it to
the host socket; every byte sent to the client (handshake, heads, bodies,
alerts) goes through the modeled kernel. What lies between h11 and that
socket is the connection's `Transport` (server/transport/): plain HTTP with
`--http`, else the one the TLS handshake (server/transport/handshake.py)
returns: kernel TLS by default, user-space TLS with `--no-ktls`. This module
is the loop only: timeouts, keep-alive, pipelining, shutdown, logging.

* HTTP: h11 parses requests; what the request line and fields alone decide
  (414, 431, 505, 400, 405, OPTIONS) is server/http/request.py's; each GET
  answers with the transport's `sendfile(file, head)`, so the head and the
  file pages travel as one sendfile call, as nginx does with `sendfile on`
  (heads framed by server/http/framing.py). After each response the task
  waits for the send buffer to drain before reading the next request
  (pipelined requests wait in h11).
* Timeouts: the request head's (--header-timeout), between requests
  (--keepalive-timeout), the handshake's and `KernelTx`'s send timeout.
* Errors end this connection only: handshake failures (OpenSSL's alert is
  sent), h11 protocol errors (400 or h11's hint, then close), timeouts and
  disconnects (`ClientGone`, server/transport/errors.py). `teardown` always
  runs and frees every kernel resource of the connection.
* Closing: our close_notify leaves in the same write as the last response
  (and TLS 1.3 session tickets with the first one), so a connection that
  carries one request costs two writes after the ClientHello. After our last
  bytes the write side is shut and what the client still sends is read and
  dropped for a moment (nginx's lingering close), so that unread input does
  not turn the close into a reset that destroys our last records. `run()`
  only asks for it (`linger_wanted`); the server lingers after `teardown`
  and the slot's release: a lingering client holds only its host socket.
"""

from __future__ import annotations

import errno
import json
import logging
from typing import TYPE_CHECKING, cast

import h11
import trio

from ktls.errors import TlsError
from server.http.framing import (
    END_OF_MESSAGE,
    SendfileBody,
    connection_field,
    file_head,
    responder,
)
from server.http.request import Answer, check_request, http10_keepalive, protocol_error_status
from server.http.responses import error_body, simple_response
from server.http.static import FileReply, Listing, Simple, plan
from server.reqstat import WELL_KNOWN, ConnTxStat
from server.transport import Transport
from server.transport.errors import ClientGone
from server.transport.handshake import tls_accept
from server.transport.plain import PlainTransport
from server.txpath import KernelTx, so_accept

if TYPE_CHECKING:
    from server.app import Server

log = logging.getLogger("nomapd")


def _is_page(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.startswith(b"text/html")
    return False


class Connection:
    def __init__(self, server: Server, stream: trio.SocketStream, nursery: trio.Nursery) -> None:
        self.server = server
        self.cfg = server.cfg
        self.sock = stream.socket
        kern = server.kern
        # OSError: reset before we looked (the caller's)
        # net.inet.tcp.sendspace and recvspace are read here: a change applies to
        # new connections (tcp_usr_attach's soreserve).
        self.so, self.peer = so_accept(kern, self.sock, kern.sendspace, kern.recvspace)
        self.tx = KernelTx(kern, self.so, self.sock, nursery, server.vmq, self.cfg.send_timeout)
        # Plain until a TLS handshake establishes its own.
        self.transport: Transport = PlainTransport(self.tx, kern, server.stats)
        self.h11 = self._new_h11()
        self._keep10 = False  # answering an HTTP/1.0 request that asked for keep-alive
        self.requests = 0
        self.eof = False
        self._head_deadline: float | None = None  # the request head must be in by then
        self._idle_deadline = 0.0  # keep-alive: the next request must start by then
        self.idle = False  # between requests, nothing of the next one received
        self._request_start = 0.0  # first byte of the current request (or its wait)
        self._status = 0  # of the last response, for the access log
        self._sent = 0  # its body bytes
        self._head_len = 0  # bytes of its head (access log of an aborted response)
        self._length = 0  # its Content-Length
        self._wire_start = 0  # tx.bytes_written when it began
        self._finished = False  # our last bytes are out after a normal end

    @property
    def linger_wanted(self) -> bool:
        """Our last bytes are out (a normal end, or an alert): linger() before closing."""
        return self._finished or self.transport.linger_wanted

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

    def info(self) -> dict[str, object]:
        """This connection's sessions and counters, for the admin /connections."""
        out: dict[str, object] = {
            "peer": self.peer,
            "requests": self.requests,
            "bytes_written": self.tx.bytes_written,
            "sockbuf_bytes": self.so.so_snd.sb_ccc,
            "rcvbuf_bytes": self.so.so_rcv.sb_ccc,  # received, not yet read (or decrypted)
            "ipv6": self.so.so_tcp.isipv6,
        }
        out.update(self.transport.info())
        return out

    # -- receiving -----------------------------------------------------------

    async def _decode(self, raw: bytes) -> bytes:
        """The application bytes `raw` (from the host socket) completes."""
        if not raw:
            return raw
        plain = await self.transport.receive(raw)
        self.eof = self.eof or self.transport.eof
        return plain

    async def _recv_plain(self) -> bytes:
        """Application bytes from the client; b"" at end of stream."""
        while True:
            raw = await self.transport.recv()
            plain = await self._decode(raw)
            if plain or not raw or self.eof:
                return plain

    async def _next_event(self) -> h11._events.Event | type[h11._util.Sentinel]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.eof:
                self.h11.receive_data(b"")
                continue
            raw = None
            if self.transport.tickets_pending:
                # Right after the handshake: a request already here goes first, and
                # our tickets leave with its response, in one write.
                self.transport.tickets_pending = False
                raw = self.transport.recv_ready()
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

    # -- HTTP ----------------------------------------------------------------

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
                    await self._send_simple(408, close=True)
                    self.server.log_access(self.peer, None, 408, self._sent, self._request_start)
                return
            if isinstance(event, h11.Request):
                self.server.stats.requests += 1
                self.requests += 1
                parsed = conn
                # h11 closes every HTTP/1.0 exchange; nginx keeps some alive.
                self._keep10 = (
                    http10_keepalive(event)
                    and not self.server.stopping.is_set()
                    and not self._last_request()
                )
                if self._keep10:  # h11 closes every HTTP/1.0 exchange: answer with another
                    self.h11 = conn = responder(event.method)
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
        status, detail = protocol_error_status(e, self.h11.trailing_data[0])
        self.server.stats.protocol_errors += 1
        self.server.stats.count_status(status)
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = error_body(status, detail)
            fresh = responder(b"GET")  # the broken one cannot send
            await self.transport.send(
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
        self.server.stats.count_status(status)
        self._status = status
        self._sent = 0 if head_only or status in (204, 304) else len(body)
        await self.transport.send(data)
        await self._flush_response()

    async def _flush_response(self) -> None:
        """Wait until the response just queued is on the wire. When it is the last
        one (h11 will close), our close_notify goes with it, in the same write."""
        if self.h11.our_state is h11.MUST_CLOSE:
            await self.transport.close_notify()
        await self.tx.flush()

    async def _respond(self, req: h11.Request) -> None:
        head_only = req.method == b"HEAD"
        checked = check_request(req, self.cfg.max_header_size)
        if isinstance(checked, Answer):
            await self._send_simple(
                checked.status, detail=checked.detail, extra=list(checked.extra),
                close=checked.close,
            )  # fmt: skip
            return
        if checked.target.startswith(WELL_KNOWN):
            await self._send_request_record(checked.target, head_only)
            return
        reply = plan(checked, self.server.site, self.server.file_cache)
        if isinstance(reply, Listing):
            reply = await trio.to_thread.run_sync(reply.render, self.server.site)
        if isinstance(reply, Simple):
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

    async def _send_request_record(self, target: bytes, head_only: bool) -> None:
        """GET /.well-known/nomapd/request/ID: a finished page response's own
        figures, for the page it delivered (server/reqstat.py)."""
        rid = target[len(WELL_KNOWN) :].split(b"?", 1)[0].decode("ascii", "replace")
        status, record = self.server.request_records.lookup(rid)
        await self._send_simple(
            status, body=json.dumps(record, sort_keys=True).encode() + b"\n",
            content_type=b"application/json", head_only=head_only,
            extra=[(b"Cache-Control", b"no-store"), (b"X-Content-Type-Options", b"nosniff")],
        )  # fmt: skip

    def _last_request(self) -> bool:
        """--max-requests-per-connection reached: this response closes (keepalive_requests)."""
        return self.requests >= self.cfg.max_requests

    async def _send_file(self, reply: FileReply, head_only: bool) -> None:
        server = self.server
        self._status = reply.status
        self._sent = 0
        connection = connection_field(last=self._last_request(), keep10=self._keep10)
        rid = ""
        if reply.status == 200 and reply.length and not head_only and _is_page(reply.headers):
            # A page, sent: it may ask about itself.
            rid = server.request_records.new_id()
            # A copy: the open-file cache may share the list with later requests.
            reply.headers = [*reply.headers, (b"Server-Timing", b'nomapd;desc="%s"' % rid.encode())]
            self.tx.stat = ConnTxStat()  # KernelTx counts this response's share
        head = file_head(self.h11, reply, server.date.now(), connection)
        self._head_len = len(head)
        self._length = reply.length
        server.stats.count_status(reply.status)
        if head_only or reply.length == 0:
            self.h11.send(END_OF_MESSAGE)
            await self.transport.send(head)
            await self._flush_response()
            return
        self.h11.send_with_data_passthrough(h11.Data(data=cast(bytes, SendfileBody(reply.length))))
        pending = head  # bytes waiting to go out as the next sendfile's header
        sent = 0
        for piece in reply.pieces:
            if isinstance(piece, bytes):
                pending += piece
                continue
            first, last = piece
            await self.transport.sendfile(reply, first, last - first + 1, pending)
            sent += last - first + 1
            pending = b""
        if pending:
            await self.transport.send(pending)
        self.h11.send(END_OF_MESSAGE)
        await self._flush_response()
        self._sent = reply.length
        server.stats.body_bytes += sent
        if rid:
            record: dict[str, object] = {
                "id": rid, "status": reply.status, "content_length": reply.length,
                "head_bytes": len(head), "body_bytes": sent,
            }  # fmt: skip
            stat, self.tx.stat = self.tx.stat, None
            record.update(stat.figures() if stat is not None else {})
            tls = self.transport.info()
            record["tls"] = tls.get("tls", "none")  # plain HTTP has no TLS
            record["suite"] = tls.get("suite", "")
            server.request_records.add(rid, record)

    # -- the connection ------------------------------------------------------

    async def run(self) -> None:
        try:
            if not self.cfg.http:
                transport = await tls_accept(self.server, self.tx)
                if transport is None:
                    return
                self.transport = transport
                early = await transport.first_data()  # sent with the Finished
                self.eof = self.eof or transport.eof
                if early:
                    self.h11.receive_data(early)
            await self._serve_requests()
            await self.transport.close_notify()  # unless it left with the last response
            await self.tx.flush()
            self._finished = True
        except (ClientGone, TlsError) as e:  # TlsError: PeerAlert and RecordError too
            log.debug("connection ended: %s", e)
        except trio.TooSlowError:
            self.server.stats.timeouts += 1
        except OSError as e:
            if e.errno == errno.EIO:
                # The kernel socket was aborted (a failed page-in or encryption):
                # this connection ends, quietly.
                log.debug("connection ended: %s", e)
            else:  # not the client's doing (EMFILE, EBADF, ENOSPC...): say so
                log.warning("connection ended by a server-side error: %s", e)

    async def teardown(self) -> None:
        """Free every kernel resource of the connection. The host socket stays open
        for `linger`; the caller closes it."""
        await self.tx.teardown()

    async def linger(self) -> None:
        """The lingering close (`KernelTx.linger`): only the host socket is used, so
        the caller runs it after `teardown`, outside the connection's slot."""
        await self.tx.linger()
