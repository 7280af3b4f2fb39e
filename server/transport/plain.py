"""Plain HTTP (`--http`): the client's bytes as they come, files by sendfile(2).

Theory of operation. Nothing stands between h11 and the modeled socket: a
response head or small body is a write(2) (`sosend`), a file range is
`sendfile(file, socket, offset, nbytes, head)`, so the head and the file's
pages travel in one call, as nginx does with `sendfile on`. The kernel TLS
transport (ktls.py) sends the same way: with a `KtlsSession` on the send
buffer the same calls come out as TLS records.

sendfile takes its own duplicate of the file descriptor (one per response,
whatever its number of ranges): `KernelTx` keeps it open until no page-in can
still read from it, which may be after the response is done with its own.
EIO means a page-in failed or found the file changed: the response is cut
short (`server.responses_aborted`) and the connection ends.
"""

from __future__ import annotations

import errno
import os

from mbuf.kern import Kernel
from server.counters import ServerStat
from server.http.static import FileReply
from server.transport import Transport
from server.txpath import KernelTx


class PlainTransport(Transport):
    def __init__(self, tx: KernelTx, kern: Kernel, stats: ServerStat) -> None:
        super().__init__(tx)
        self.kern = kern
        self.stats = stats

    async def receive(self, raw: bytes) -> bytes:
        return raw

    async def send(self, data: bytes) -> None:
        await self.tx.send(data)

    async def _close_notify(self) -> None:
        return None  # no TLS, no close_notify: the FIN says it all

    async def sendfile(self, reply: FileReply, offset: int, nbytes: int, head: bytes) -> None:
        """sendfile(2) of one range, `head` in front of it."""
        obj = self.kern.pagecache.lookup(reply.st)
        first = reply.tx_fd < 0
        if first:  # one duplicate per response, whatever its number of ranges
            reply.tx_fd = os.dup(reply.fd)  # KernelTx keeps it until no page-in can read it
        try:
            await self.tx.sendfile(obj, reply.tx_fd, offset, nbytes, head, take_fd=first)
        except OSError as e:
            if e.errno == errno.EIO:  # a page-in failed or found the file changed
                self.stats.responses_aborted += 1
            raise
