"""A worker's side of its control channel to the supervisor (`--workers N`).

Theory of operation. The supervisor starts worker i as

    python -m server serve ARGS... --worker-index i --worker-fds CONTROL,LISTEN[,LISTEN...]

with the listening sockets it created for that worker and one end of a
private socketpair, the control channel, as inherited descriptors. The
channel carries newline-delimited JSON:

    worker -> supervisor   {"ready": true, "pid": PID}             once listening
    supervisor -> worker   {"id": N, "get": "stats"|"connections"|"sysctl"|"ifconfig"}
    supervisor -> worker   {"id": N, "set": "sysctl", "name": NAME, "value": TEXT}
    supervisor -> worker   {"id": N, "set": "ifconfig", "words": ["nm0", "-nomap"]}
    worker -> supervisor   {"id": N, "result": ...}                its answer

So a worker has no admin listener of its own: nothing but its supervisor can
ask for its counters. End of file on the channel means the supervisor is gone
(killed, crashed): the worker stops as on SIGTERM rather than serve on as an
orphan nobody can stop or count.
"""

from __future__ import annotations

import json
import os
import socket
from typing import TYPE_CHECKING

import trio

from server.control import ifcap_set, ifconfig_all, ifconfig_set, sysctl_set

if TYPE_CHECKING:
    from server.app import Server

MAX_LINE = 1 << 16


class LineChannel:
    """Newline-delimited JSON over a stream socket (both ends use it)."""

    def __init__(self, sock: socket.socket) -> None:
        self.stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self._buf = bytearray()

    async def send(self, obj: object) -> None:
        await self.stream.send_all(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    async def receive(self) -> object | None:
        """The next JSON line; None at end of file."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                obj: object = json.loads(line)
                return obj
            data = await self.stream.receive_some(MAX_LINE)
            if not data:
                return None
            self._buf += data

    async def aclose(self) -> None:
        await self.stream.aclose()


def answer(server: Server, req: object) -> object:
    """The result of one request from the supervisor (None for one it does not know)."""
    if not isinstance(req, dict):
        return None
    what, change = req.get("get"), req.get("set")
    if what == "stats":
        return server.statistics()
    if what == "connections":
        return server.connections()
    if what == "sysctl":
        return server.kern.sysctl.snapshot()
    if what == "ifconfig":
        return ifconfig_all(server)
    if change == "sysctl":
        return sysctl_set(server, str(req.get("name")), str(req.get("value"))).as_json()
    if change == "ifconfig":
        words = req.get("words")
        return ifconfig_set(server, [str(w) for w in words or []]).as_json()
    if change == "ifcap":
        reqcap = req.get("reqcap")
        if not isinstance(reqcap, int):
            return None
        return ifcap_set(server, str(req.get("ifname")), reqcap).as_json()
    return None


async def serve_control(server: Server, fd: int) -> None:
    """Announce readiness, answer the supervisor's queries, stop when it is gone."""
    chan = LineChannel(socket.socket(fileno=fd))
    try:
        await chan.send({"ready": True, "pid": os.getpid()})
        while True:
            try:
                req = await chan.receive()
            except (trio.BrokenResourceError, OSError, ValueError):
                req = None
            if req is None:
                server.stop("supervisor gone")
                return
            result = answer(server, req)
            ident = req.get("id") if isinstance(req, dict) else None
            await chan.send({"id": ident, "result": result})
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        server.stop("supervisor gone")
    finally:
        await trio.aclose_forcefully(chan.stream)
