"""User-space TLS (`--no-ktls`): OpenSSL keeps both directions, the classic baseline.

Theory of operation. After the handshake OpenSSL (`UserTls`) decrypts what
the client sends and encrypts what we send, in user space; the ciphertext is
then written into the socket as a classic server does over a socket BIO: one
write(2) per record (ssl3_write_pending), so each record is its own `sosend`
and is copied into cluster mbufs. A file is read(2) into a user buffer
USER_TLS_CHUNK bytes at a time and SSL_write()n: no sendfile, no page of the
page cache in the socket buffer.

Records OpenSSL makes on its own (its alert for a bad record, its answer to a
KeyUpdate, a no_renegotiation warning) are written and flushed at once: a
client may wait for them.

Deliberate difference from sendfile: a file that changes while it is read is
refused the way sendfile refuses it (EIO, `server.responses_aborted`), so
that a response never carries bytes of two versions of a file.
"""

from __future__ import annotations

import errno
import os

import trio

from ktls.errors import TlsError
from ktls.handshake import UserTls
from server.counters import ServerStat
from server.http.static import FileReply
from server.transport import Transport
from server.txpath import KernelTx

USER_TLS_CHUNK = 64 * 1024  # bytes read and SSL_write()n at a time


class UserTlsTransport(Transport):
    def __init__(self, tx: KernelTx, user: UserTls, stats: ServerStat, send_timeout: float) -> None:
        super().__init__(tx)
        self.user = user
        self.stats = stats
        self.send_timeout = send_timeout

    async def first_data(self) -> bytes:
        return await self.receive(b"")  # what UserTls was given with the handshake

    async def receive(self, raw: bytes) -> bytes:
        """Decrypt client bytes and write what OpenSSL answers; sets `eof` on close_notify."""
        user = self.user
        try:
            plain = user.receive_data(raw)
        except TlsError:
            with trio.move_on_after(self.send_timeout):
                await self._write_records(user.take_outgoing())  # OpenSSL's alert
                await self.tx.flush()
                self.linger_wanted = True
            raise
        if user.outgoing:  # OpenSSL's KeyUpdate or no_renegotiation warning
            await self._write_records(user.take_outgoing())
            await self.tx.flush()  # a client may wait for the answer
        self.eof = self.eof or user.closed
        return plain

    async def send(self, data: bytes) -> None:
        await self._write_records(self.user.encrypt(data))

    async def _write_records(self, ciphertext: bytes) -> None:
        """What OpenSSL does over a socket BIO: one write(2) per record."""
        view = memoryview(ciphertext)
        pos = 0
        while pos < len(view):
            end = pos + 5 + int.from_bytes(view[pos + 3 : pos + 5])
            await self.tx.send(view[pos:end])
            pos = end

    async def sendfile(self, reply: FileReply, offset: int, nbytes: int, head: bytes) -> None:
        """read(2) into a user buffer, SSL_write, write(2) the ciphertext."""
        fd = reply.fd
        st = reply.st
        user = self.user
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
                self.stats.responses_aborted += 1
                raise OSError(errno.EIO, "file changed while being sent")
            await self._write_records(user.encrypt(view[:n]))
            off += n

    async def _close_notify(self) -> None:
        await self._write_records(self.user.shutdown())

    def info(self) -> dict[str, object]:
        return {"tls": "user-space (OpenSSL)"}
