"""A connection's edge for tests: a modeled kernel socket and its `KernelTx` over
one end of a host socket pair; the test plays the client on the other end."""

from __future__ import annotations

import socket
import types
from typing import TYPE_CHECKING, cast

import trio
from OpenSSL import SSL

from bpf import Bpf
from ktls.workers import KtlsWorkers
from mbuf.kern import Kernel
from server.counters import ServerStat
from server.devices.bpfkeys import KeyExport
from server.txpath import KernelTx, VmWaitQueue, so_accept

if TYPE_CHECKING:
    from server.app import Server


class Edge:
    def __init__(self, nursery: trio.Nursery) -> None:
        a, self.peer = socket.socketpair()
        self.peer.setblocking(False)
        self.sock = trio.socket.from_stdlib_socket(a)
        self.kern = Kernel(16 << 20)
        self.so, _ = so_accept(self.kern, self.sock, 64 * 1024)
        self.tx = KernelTx(self.kern, self.so, self.sock, nursery, VmWaitQueue(), 5.0)
        self.stats = ServerStat()

    def server(self, ctx: SSL.Context, *, ktls: bool) -> Server:
        """What `tls_accept` reads of a `Server`; `ktls`: kern.ipc.tls.enable."""
        self.kern.ktls_enable = ktls
        cfg = types.SimpleNamespace(handshake_timeout=5.0, send_timeout=5.0)
        return cast(
            "Server",
            types.SimpleNamespace(
                ssl_ctx=ctx,
                cfg=cfg,
                kern=self.kern,
                workers=KtlsWorkers(0),
                stats=self.stats,
                keys=KeyExport(Bpf()),  # no capture asks: handshakes hand nothing over
            ),
        )

    async def peer_read(self, n: int) -> bytes:
        """`n` bytes as the client's socket receives them."""
        out = b""
        while len(out) < n:
            await trio.lowlevel.wait_readable(self.peer)
            out += self.peer.recv(1 << 16)
        return out

    async def close(self) -> None:
        """Tear the connection down; every kernel resource must be back."""
        await self.tx.teardown()
        self.sock.close()
        self.peer.close()
        assert self.kern.leaks() == {}
