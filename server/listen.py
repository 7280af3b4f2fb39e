"""Listening sockets and the accept loop.

Theory of operation.

* One process (`--workers 1`): `trio.open_tcp_listeners`, one socket per
  address the host resolves to, as before.
* Several workers: the supervisor creates, for each worker, one listening
  socket per address, each with SO_REUSEPORT, all bound to the same port
  (with `--port 0` the first bind picks it and every later socket takes the
  same one), and hands worker i its sockets as inherited file descriptors.
  The host kernel then spreads incoming connections over the workers' accept
  queues by a hash of the 4-tuple, as FreeBSD's SO_REUSEPORT_LB and nginx's
  `listen ... reuseport` do. The supervisor keeps its copies open, so a
  worker that dies loses nothing queued for it: its replacement inherits the
  same sockets and accepts what waited. (The cost of reuseport, as in nginx:
  a connection hashed to a busy worker waits for that worker even when
  another is idle.)
* The accept loop is trio's `serve_listeners` with a louder failure path:
  accept(2) failing with EMFILE, ENFILE, ENOMEM or ENOBUFS means the process
  or the machine is out of descriptors or memory, not that anything is
  wrong with the listener, so the loop logs it (at error level, at most once
  a second, with the count of repeats, instead of trio's traceback every
  100 ms), sleeps 100 ms and tries again, as nginx does; the connection waits
  in the accept queue meanwhile. Any other error ends the server.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable

import trio

from server.config import ConfigError
from server.errorlog import RateLimited

log = logging.getLogger("nomapd")

BACKLOG = 65535  # as trio's default: the kernel clamps it to somaxconn
ACCEPT_RETRY = 0.1  # seconds (trio's, libuv's and nginx's order of magnitude)
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

Handler = Callable[[trio.SocketStream], Awaitable[object]]

# One for the process (every listener, the admin one too): the fault is the
# process's, and one line a second says all there is to say about it.
_accept_failed = RateLimited(log, logging.ERROR, 1.0)


def reuseport_sockets(host: str, port: int, count: int) -> list[list[socket.socket]]:
    """`count` sets of listening sockets, one socket per address of `host` in each
    set, all on one port with SO_REUSEPORT. ConfigError if that cannot be done."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    sets: list[list[socket.socket]] = []
    try:
        for _ in range(count):
            socks: list[socket.socket] = []
            sets.append(socks)
            for family, type_, proto, _name, addr in infos:
                sock = socket.socket(family, type_, proto)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind((addr[0], port, *addr[2:]))
                except OSError as e:
                    raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from e
                if port == 0:  # the first bind picks the port; every other socket shares it
                    port = sock.getsockname()[1]
                sock.listen(BACKLOG)
    except BaseException:
        for socks in sets:
            for sock in socks:
                sock.close()
        raise
    return sets


def listeners_from_fds(fds: list[int]) -> list[trio.SocketListener]:
    """Listening sockets inherited from the supervisor, for trio."""
    out = []
    for fd in fds:
        sock = socket.socket(fileno=fd)
        out.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
    return out


async def accept_backoff(e: OSError) -> None:
    """accept(2) failed with `e`: out of descriptors or memory (the process's
    fault, not the listener's) is logged, at most once a second, and waited
    out for ACCEPT_RETRY; any other error is raised again."""
    if e.errno not in ACCEPT_CAPACITY_ERRNOS:
        raise e
    _accept_failed.log(
        "accept returned %s (%s); retrying every %.1f s",
        errno.errorcode[e.errno], os.strerror(e.errno), ACCEPT_RETRY,
    )  # fmt: skip
    await trio.sleep(ACCEPT_RETRY)


async def _accept_loop(
    listener: trio.SocketListener, handler: Handler, nursery: trio.Nursery
) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as e:
            await accept_backoff(e)
        else:
            nursery.start_soon(_run_handler, handler, stream)


async def _run_handler(handler: Handler, stream: trio.SocketStream) -> None:
    try:
        await handler(stream)
    finally:
        # What trio.aclose_forcefully(stream) comes to for a socket stream (close
        # the socket; idempotent), without a cancelled scope and a checkpoint
        # for every connection.
        stream.socket.close()


async def serve_listeners(
    handler: Handler, listeners: list[trio.SocketListener], handler_nursery: trio.Nursery
) -> None:
    """Accept on every listener until cancelled; each connection is a task in
    `handler_nursery`, so cancelling the accept loop leaves them running."""
    async with trio.open_nursery() as nursery:
        for lst in listeners:
            nursery.start_soon(_accept_loop, lst, handler, handler_nursery)
