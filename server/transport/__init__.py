"""What a connection speaks through: plain HTTP, kernel TLS or user-space TLS.

Theory of operation. `server.connection.Connection` is the HTTP loop
(timeouts, keep-alive, pipelining, shutdown, logging); what lies between its
requests and responses and the host socket is a `Transport`, chosen once per
connection, as hypercorn's tcp_server.py sits under its protocol/h11.py:

* `PlainTransport` (`--http`, plain.py): bytes as they come; files by sendfile.
* `KtlsTransport` (the default, ktls.py): the record layer is the model's
  kernel. `TlsControl` decrypts what the client sends (KTLS RX) and the send
  buffer's `KtlsSession` encrypts what we send (KTLS TX); files by sendfile.
* `UserTlsTransport` (`--no-ktls`, usertls.py): OpenSSL encrypts and decrypts
  in user space; files are read into a buffer and SSL_write()n.

Every transport writes through the connection's `KernelTx` (server/txpath.py),
so every byte, handshake included, travels through the modeled kernel. The
TLS handshake (handshake.py) runs before a TLS transport exists and returns
the established one. The loop asks each transport for the same things:

* `first_data()`: application bytes that came with the handshake's end;
* `recv()` / `recv_ready()`: what the socket has for the transport
  (`KernelTx`'s, through the model's receive path);
* `receive(raw)`: the application bytes that those bytes complete, acting on
  what else they carry (alerts, KeyUpdate); `eof` once a close_notify came;
* `send(data)`: a response head or a small body;
* `sendfile(reply, offset, nbytes, head)`: a file range, `head` in front;
* `close_notify()`: queue our close_notify (once; the caller flushes);
* `info()`: this transport's sessions and counters for admin /connections.

`linger_wanted` is set when a transport has sent its last bytes on its own
(an alert before it raises): the connection then lingers as after a normal end.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.http.static import FileReply
    from server.txpath import KernelTx


class Transport(ABC):
    """One connection's way of turning host bytes into requests and responses into
    host bytes. Subclasses implement the abstract methods; the state is shared."""

    def __init__(self, tx: KernelTx) -> None:
        self.tx = tx
        self.eof = False  # the client's close_notify came: no more application data
        self.linger_wanted = False  # an alert went out as our last bytes
        self.tickets_pending = False  # handshake output (TLS 1.3 tickets) queued, unflushed
        self._closing = False  # our close_notify is queued: nothing may follow it

    async def first_data(self) -> bytes:
        """Application bytes that came with the end of the handshake (before the
        first read): TLS transports decode what the handshake left over."""
        return b""

    async def recv(self) -> bytes:
        """The next bytes from the socket (`KernelTx.recv`: b"" at its end)."""
        return await self.tx.recv()

    def recv_ready(self) -> bytes | None:
        """The same without waiting: None when nothing has come."""
        return self.tx.recv_ready()

    @abstractmethod
    async def receive(self, raw: bytes) -> bytes:
        """The application bytes `raw` (non-empty, from the host socket) completes."""

    @abstractmethod
    async def send(self, data: bytes) -> None:
        """A response head or small body, queued behind what was sent before."""

    @abstractmethod
    async def sendfile(self, reply: FileReply, offset: int, nbytes: int, head: bytes) -> None:
        """`nbytes` of the reply's file from `offset`, `head` in front of them."""

    async def close_notify(self) -> None:
        """Queue our close_notify (once): the caller flushes it, with whatever precedes it."""
        if not self._closing:
            self._closing = True
            await self._close_notify()

    @abstractmethod
    async def _close_notify(self) -> None:
        """The close_notify itself (nothing without TLS)."""

    def info(self) -> dict[str, object]:
        """This transport's sessions and counters, for admin /connections."""
        return {}
