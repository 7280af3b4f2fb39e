"""The TLS handshake, then the transport that carries the connection on.

Theory of operation. OpenSSL runs the handshake over memory BIOs
(`ktls.TlsHandshake`); what it writes goes out with `sosend` like any
write(2), through the modeled kernel. Once it is done, `tls_accept` returns
the established transport: with KTLS (the default) the negotiated keys and
the next sequence numbers become a `KtlsSession` on the socket's send buffer
and a `KtlsRxSession` on its receive buffer (`ktls_enable_rx`: what
OpenSSL read past its last record goes back there), and OpenSSL is done with
the connection (`KtlsTransport`, `TlsControl`); with `--no-ktls` OpenSSL keeps both directions
(`UserTlsTransport`). Client bytes that came with its Finished are kept for
the transport's `first_data`.

Our last handshake flight: a TLS 1.2 Finished is flushed at once (the client
waits for it); TLS 1.3 session tickets are not (the client never waits for
them): they leave with the first response, in the same write, unless the
connection has to wait for the request first (`Transport.tickets_pending`).

A handshake that fails is answered with OpenSSL's alert, or, when the first
bytes were a plain HTTP request, with a plain HTTP 400 (as nginx does), and
ends the connection: `tls_accept` returns None. So does a client that closes
during the handshake, and one that does not finish within --handshake-timeout.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import trio

from ktls.control import TlsControl
from ktls.errors import TlsError
from ktls.handshake import TlsHandshake, UserTls
from ktls.session import KtlsSession
from mbuf.socket import ktls_enable_rx, soreceive
from server.transport import Transport
from server.transport.ktls import KtlsTransport
from server.transport.usertls import UserTlsTransport
from server.txpath import RECV_SIZE, KernelTx

if TYPE_CHECKING:
    from server.app import Server

log = logging.getLogger("nomapd")

_PLAIN_HTTP = re.compile(rb"^[A-Z]{3,10} [^ ]+ HTTP/1\.[01]\r?\n")
_PLAIN_HTTP_BODY = b"400 Bad Request: the plain HTTP request was sent to an HTTPS port\n"
PLAIN_HTTP_ON_TLS = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_PLAIN_HTTP_BODY), _PLAIN_HTTP_BODY)
)


async def tls_accept(server: Server, tx: KernelTx) -> Transport | None:
    """Run the server side of the TLS handshake on `tx`; the established transport,
    or None if the connection is to end (the failure answered, counted, logged)."""
    assert server.ssl_ctx is not None
    cfg = server.cfg
    hs = TlsHandshake(server.ssl_ctx)
    first = b""
    try:
        with trio.fail_after(cfg.handshake_timeout):
            while not hs.advance():
                out = hs.data_to_send()
                if out:
                    await tx.send(out)
                    await tx.flush()
                data = await tx.recv()
                if not data:
                    return None
                first = first or data
                hs.receive_data(data)
        server.keys.handshake_done(hs.conn.client_random())  # to captures with --keys
        out = hs.data_to_send()
        tickets = bool(out) and hs.conn.get_protocol_version_name() == "TLSv1.3"
        if out:  # TLS 1.2: our Finished (flushed: the client waits); TLS 1.3: tickets
            await tx.send(out)
            if not tickets:
                await tx.flush()
        transport: Transport
        # kern.ipc.tls.enable and kern.ipc.mb_use_ext_pgs are read here, once per
        # connection after its handshake: a change applies to new connections.
        # ktls_enable_tx fails (ENXIO) without unmapped mbufs, and the server
        # then keeps TLS in user space, as OpenSSL does when the setsockopt fails.
        if server.kern.ktls_enable and server.kern.mb_use_ext_pgs:
            est = hs.established()
            kern = server.kern
            session = KtlsSession(kern, server.workers, est.suite, est.tx.key, est.tx.iv)
            tx.so.so_snd.sb_tls_info = session
            tx.so.so_snd.sb_tls_seqno = est.tx_seq
            ctl = TlsControl(est, kern.stats.ktls)
            ktls_enable_rx(tx.so, ctl.rx, hs.leftover())  # TCP_RXTLS_ENABLE
            try:
                early = soreceive(tx.so, RECV_SIZE)  # records that came with the Finished
            except OSError:
                if ctl.rx.error is None:
                    raise
                # KTLS RX refused a record that came with the Finished: the
                # transport's first recv meets the error again and answers it.
                early = b""
            transport = KtlsTransport(tx, kern, server.stats, ctl, early, cfg.send_timeout)
            hs.conn.set_app_data(None)  # OpenSSL is done with this connection
        else:
            hs.keylog.wipe()
            user = UserTls(hs.conn, hs.leftover())
            transport = UserTlsTransport(tx, user, server.stats, cfg.send_timeout)
        transport.tickets_pending = tickets
        server.stats.tls_handshakes += 1
        return transport
    except TlsError as e:
        server.stats.tls_handshake_failures += 1
        log.debug("handshake failed: %s", e)
        out = hs.data_to_send()
        if _PLAIN_HTTP.match(first):
            # As nginx does: answer a plain HTTP request on the TLS port in plain HTTP.
            out = PLAIN_HTTP_ON_TLS
        if out:  # OpenSSL's alert
            await tx.send(out)
            await tx.flush()
        return None
    except trio.TooSlowError:
        server.stats.timeouts += 1
        return None
    finally:
        server.keys.forget(hs.conn.client_random())  # a session cut off mid-handshake
