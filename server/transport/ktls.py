"""Kernel TLS: the model's kernel is the record layer once the handshake is done.

Theory of operation. After the handshake (handshake.py) the negotiated keys
and the next sequence numbers are a `KtlsSession` on the socket's send buffer
(`TCP_TXTLS_ENABLE`), which frames and encrypts everything we send, and a
`KtlsRxSession` on the receive buffer (`TCP_RXTLS_ENABLE`, `ktls_enable_rx`),
which decrypts what the client sends as it arrives; `TlsControl` acts on the
records `soreceive` hands up: OpenSSL is done. Heads, bodies and files go out as on
a plain socket (`PlainTransport`'s send and sendfile) and come out as records.
Control records go out through the same send path with their record type:

* a fatal alert answering a record `TlsControl` refused (bad tag, bad type,
  too long), sequenced after everything we sent, then nothing more;
* the no_renegotiation warning answering a renegotiation attempt;
* our KeyUpdate answering a client's KeyUpdate(update_requested), after which
  a successor session with the next keys takes over (beyond the 2019 kernel,
  which installs keys once: see `KtlsSession.successor`);
* our close_notify.

Each answer a client may wait for is flushed at once, so answers never pile up.
"""

from __future__ import annotations

import trio

from ktls.alerts import CLOSE_NOTIFY, FATAL, WARNING, RecordError, alert_bytes
from ktls.control import KEY_UPDATE_NOT_REQUESTED, TlsControl
from ktls.session import KtlsSession
from mbuf.kern import Kernel
from mbuf.socket import TLS_RLTYPE_ALERT, TLS_RLTYPE_HANDSHAKE
from server.counters import ServerStat
from server.transport.plain import PlainTransport
from server.txpath import KernelTx


class KtlsTransport(PlainTransport):
    def __init__(
        self,
        tx: KernelTx,
        kern: Kernel,
        stats: ServerStat,
        ctl: TlsControl,
        early: bytes,
        send_timeout: float,
    ) -> None:
        super().__init__(tx, kern, stats)
        self.ctl = ctl
        self._early = early  # records (as soreceive hands them up) that came with its Finished
        self.send_timeout = send_timeout

    async def first_data(self) -> bytes:
        early, self._early = self._early, b""
        return await self.receive(early)

    async def recv(self) -> bytes:
        try:
            return await self.tx.recv()
        except OSError as e:
            await self._refused(e)
            raise

    def recv_ready(self) -> bytes | None:
        try:
            return self.tx.recv_ready()
        except OSError:
            if self.ctl.rx.error is None:
                raise
            return None  # the next recv meets the error again, and answers it

    def _recv_decrypted(self) -> bytes:
        """Records decryption had held back, b"" if none, or if it refused one: the
        next recv meets that error again and answers it (see `recv_ready`)."""
        try:
            return self.tx.recv_decrypted()
        except OSError:
            if self.ctl.rx.error is None:
                raise
            return b""

    async def _refused(self, e: OSError) -> None:
        """recvmsg failed on a record KTLS RX refused (EBADMSG, EMSGSIZE, EINVAL): as
        OpenSSL does, answer with the matching fatal alert; raise the RecordError."""
        err = self.ctl.rx.error
        if err is None:
            return  # not the record layer's error
        await self._send_alert(FATAL, err.description)
        raise err from e

    async def receive(self, raw: bytes) -> bytes:
        """Act on records the kernel decrypted (`soreceive` on a KTLS RX socket);
        sets `eof` on close_notify."""
        ctl = self.ctl
        try:
            plain = ctl.receive_records(raw)
            # Records held behind a KeyUpdate until the new keys were in.
            while not ctl.closed and (more := self._recv_decrypted()):
                plain += ctl.receive_records(more)
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
        self.kern.stats.ktls.alerts_sent += 1
        with trio.move_on_after(self.send_timeout):
            await self.tx.send(alert_bytes(level, description), TLS_RLTYPE_ALERT)
            await self.tx.flush()
            self.linger_wanted = True

    async def _key_update(self) -> None:
        """Answer a KeyUpdate(update_requested): ours under the current keys, then
        a successor session with the next ones for every later record."""
        sb = self.tx.so.so_snd
        await self.tx.send(KEY_UPDATE_NOT_REQUESTED, TLS_RLTYPE_HANDSHAKE)
        # Out at once (a client may wait for it, and answers never pile up); then
        # the old session has nothing left in flight when the new one takes over.
        await self.tx.flush()
        keys = self.ctl.next_tx_keys()
        old = sb.sb_tls_info
        assert isinstance(old, KtlsSession)
        sb.sb_tls_info = old.successor(keys.key, keys.iv)
        sb.sb_tls_seqno = 0

    async def _close_notify(self) -> None:
        await self.tx.send(alert_bytes(WARNING, CLOSE_NOTIFY), TLS_RLTYPE_ALERT)

    def info(self) -> dict[str, object]:
        sb = self.tx.so.so_snd
        tls = sb.sb_tls_info
        if not isinstance(tls, KtlsSession):  # torn down
            return {}
        rx = self.ctl.rx
        return {
            "tls": self.ctl.version.name,
            "suite": tls.suite.iana_name,
            "tx_seq": sb.sb_tls_seqno,
            "tx_records": tls.records_encrypted,
            "tx_bytes": tls.bytes_encrypted,
            "rx_seq": rx.seqno,
            "rx_records": rx.records,
            "rx_bytes": rx.bytes,
            "key_updates_rx": self.ctl.key_updates_rx,
            "key_updates_tx": self.ctl.key_updates_tx,
            "wq_index": tls.wq_index,
        }
