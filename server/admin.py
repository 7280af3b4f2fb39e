"""The admin listener: the kernel counters over plain HTTP, and (if asked) control.

Read-only, always there:

  GET /stats          the JSON snapshot (`Server.statistics()`)
  GET /connections    each open connection with its TLS sessions' own counters
  GET /stats/history  the last minutes of the counters the dashboard draws
  GET /sysctl         every sysctl node: value, type, writable, description (JSON)
  GET /ifconfig       each interface: flags, mtu, options, ifconfig's text (JSON)
  GET /metrics        the counters in Prometheus' text format (server/metrics.py)
  GET /               the dashboard for a browser (server/admin_web.py, files in
                      server/admin_ui/), a short text index for anything else
                      (always at /index.txt)

With `--admin-control` the process prints a one-time random token at start,
and these change the kernel of every worker (server/control.py):

  POST /sysctl      body `name=value` (form-encoded)
  POST /ifconfig    body the ifconfig words, e.g. `nm0 -nomap`

each with `Authorization: Bearer TOKEN` (401 without, 403 with another).
Answers: 200 and JSON {"errno": 0, "old": ..., "new": ...}; 404 "unknown oid"
(or no such interface), 400 "Invalid argument" (nothing changed), 403 for a
read-only node. Without --admin-control a POST is 403: the listener is
read-only. It shares nothing with the data path but what it reads and sets.

Whoever answers is an `AdminSource`: the `Server` itself with one process,
the supervisor with `--workers N`, which asks every worker over its control
channel and answers the sum, or applies a change to all (server/supervisor.py).
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import json
import urllib.parse
from collections.abc import Iterable
from typing import Any, Protocol

import h11
import trio

from server.admin_web import StatsHistory, asset, asset_headers
from server.config import is_loopback
from server.control import Result
from server.http.responses import DateCache, simple_response
from server.listen import serve_listeners
from server.metrics import render_metrics

MAX_BODY = 4096  # a POST body: one name=value or one ifconfig line
LINGER = 2.0  # seconds a refused request's rest is read before the close (nginx: 5 s)
LINGER_BYTES = 1 << 20  # ... and at most this much of it


class AdminSource(Protocol):
    date: DateCache

    async def admin_stats(self) -> dict[str, Any]: ...

    async def admin_connections(self) -> list[dict[str, object]]: ...

    async def admin_snapshots(self) -> list[tuple[str, dict[str, Any]]]: ...

    async def admin_sysctl(self) -> dict[str, dict[str, object]]: ...

    async def admin_ifconfig(self) -> dict[str, dict[str, object]]: ...

    async def admin_sysctl_set(self, name: str, value: str) -> Result: ...

    async def admin_ifconfig_set(self, words: list[str]) -> Result: ...


_INDEX = (
    b"nomapd admin: GET /stats for the kernel counters (JSON),\n"
    b"GET /connections for each open connection and its TLS sessions (JSON),\n"
    b"GET /stats/history for the last minutes of the dashboard's counters (JSON),\n"
    b"GET /sysctl and /ifconfig for the knobs (JSON), GET /metrics for Prometheus;\n"
    b"with --admin-control, POST /sysctl (name=value) and POST /ifconfig (nm0 -nomap);\n"
    b"GET / in a browser for the live dashboard\n"
)
_JSON_GETS = (b"/stats", b"/connections", b"/sysctl", b"/ifconfig")
_STATUS = {0: 200, errno.ENOENT: 404, errno.ENXIO: 404, errno.EINVAL: 400, errno.EPERM: 403}


async def _get(server: AdminSource, path: bytes) -> object:
    if path == b"/stats":
        return await server.admin_stats()
    if path == b"/connections":
        return await server.admin_connections()
    if path == b"/sysctl":
        return await server.admin_sysctl()
    return await server.admin_ifconfig()


def _authorized(token: str | None, headers: Iterable[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """(0, b"") if the request may change the kernel, else its status and body."""
    if token is None:
        return 403, b"admin control is off (start the server with --admin-control)\n"
    auth = next((v for k, v in headers if k == b"authorization"), None)
    scheme, _, credentials = (auth or b"").partition(b" ")
    if scheme.lower() != b"bearer":  # the scheme is case-insensitive (RFC 9110 11.1)
        return 401, b"Authorization: Bearer TOKEN required\n"
    if not hmac.compare_digest(credentials.strip(), token.encode()):
        return 403, b"wrong token\n"
    return 0, b""


async def _post(server: AdminSource, path: bytes, body: bytes) -> tuple[int, bytes]:
    """POST /sysctl or /ifconfig: the status and body to answer."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        return 400, b"Invalid argument\n"
    if path == b"/sysctl":
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True)
        if len(pairs) != 1:
            return 400, b"Invalid argument: the body is one name=value\n"
        result = await server.admin_sysctl_set(*pairs[0])
    else:
        result = await server.admin_ifconfig_set(text.split())
    if result.errno:
        msg = result.message or "error"
        return _STATUS.get(result.errno, 503), msg.encode() + b"\n"
    return 200, json.dumps(result.as_json()).encode() + b"\n"


async def _read_body(conn: h11.Connection, stream: trio.SocketStream) -> bytes | None:
    """The request body (None if longer than MAX_BODY)."""
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(16384))
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                return None
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        else:
            return None


async def _admin_conn(
    server: AdminSource, history: StatsHistory, stream: trio.SocketStream, token: str | None
) -> None:
    conn = h11.Connection(h11.SERVER)
    local = stream.socket.getsockname()
    try:
        with trio.fail_after(10):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(16384)
                    conn.receive_data(data)
                    continue
                if not isinstance(event, h11.Request):
                    return
                path = event.target.split(b"?", 1)[0]
                date = server.date.now()
                head = event.method == b"HEAD"  # every answer to HEAD: the head alone
                if not host_allowed(_header(event, b"host"), local):
                    out = simple_response(
                        conn, 421, date, body=b"not this server's name (Host)\n",
                        content_type=b"text/plain; charset=utf-8", head_only=head,
                    )  # fmt: skip
                elif event.method == b"POST" and path in (b"/sysctl", b"/ifconfig"):
                    status, text = _authorized(token, event.headers)
                    body = await _read_body(conn, stream)
                    if status == 0:
                        if body is None:
                            status, text = 413, b"body too long\n"
                        else:
                            status, text = await _post(server, path, body)
                    ctype = b"application/json" if status == 200 else b"text/plain; charset=utf-8"
                    extra = [(b"WWW-Authenticate", b"Bearer")] if status == 401 else []
                    out = simple_response(
                        conn, status, date, body=text, content_type=ctype, extra=extra
                    )
                elif event.method not in (b"GET", b"HEAD"):
                    allow = (
                        b"GET, HEAD, POST" if path in (b"/sysctl", b"/ifconfig") else b"GET, HEAD"
                    )
                    out = simple_response(conn, 405, date, extra=[(b"Allow", allow)])
                elif path in _JSON_GETS:
                    snap = await _get(server, path)
                    body = json.dumps(snap, indent=1, sort_keys=True).encode()
                    out = simple_response(
                        conn, 200, date, body=body + b"\n",
                        content_type=b"application/json",
                        extra=[(b"Cache-Control", b"no-store")],
                        head_only=head,
                    )  # fmt: skip
                elif path == b"/metrics":
                    text, mtype = render_metrics(await server.admin_snapshots())
                    out = simple_response(
                        conn, 200, date, body=text, content_type=mtype.encode(),
                        extra=[(b"Cache-Control", b"no-store")],
                        head_only=head,
                    )  # fmt: skip
                elif path == b"/stats/history":
                    body = json.dumps(history.as_json(), separators=(",", ":")).encode()
                    out = simple_response(
                        conn, 200, date, body=body, content_type=b"application/json",
                        extra=[(b"Cache-Control", b"no-store")],
                        head_only=head,
                    )  # fmt: skip
                elif ui := asset(path, _header(event, b"accept")):
                    out = simple_response(
                        conn, 200, date, body=ui[0], content_type=ui[1], extra=asset_headers(),
                        head_only=head,
                    )  # fmt: skip
                elif path in (b"/", b"/index.txt"):
                    out = simple_response(
                        conn, 200, date, body=_INDEX, content_type=b"text/plain; charset=utf-8",
                        extra=[(b"Vary", b"Accept")] if path == b"/" else None, head_only=head,
                    )  # fmt: skip
                else:
                    out = simple_response(conn, 404, date, body=b"not found\n", head_only=head)
                await stream.send_all(out)
                while conn.their_state is h11.SEND_BODY:
                    if conn.next_event() is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(16384))
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
    except h11.RemoteProtocolError as e:
        # A request h11 refused (a malformed line or framing, a head too large):
        # its status, as the data path's listener answers it, then the hang-up.
        await _refuse(conn, stream, server.date.now(), e)
    except (h11.ProtocolError, trio.BrokenResourceError, trio.TooSlowError, OSError):
        return
    finally:
        await stream.aclose()


async def _refuse(
    conn: h11.Connection, stream: trio.SocketStream, date: bytes, e: h11.RemoteProtocolError
) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return  # a response is under way: only the hang-up is left
    out = simple_response(
        conn, e.error_status_hint, date, body=f"{e}\n".encode(),
        content_type=b"text/plain; charset=utf-8", close=True,
    )  # fmt: skip
    with trio.move_on_after(10), contextlib.suppress(trio.BrokenResourceError, OSError):
        await stream.send_all(out)
        await stream.send_eof()
        # A lingering close: what the client still sends is read and dropped for a
        # moment (bounded), so that closing with it unread does not reset the
        # connection (RST) before the client has read the answer.
        with trio.move_on_after(LINGER):
            left = LINGER_BYTES
            while left > 0 and (data := await stream.receive_some(16384)):
                left -= len(data)


def host_allowed(host: bytes, local: tuple[object, ...]) -> bool:
    """DNS rebinding: a page of another site whose name now resolves to this host
    must not read the admin listener. Its Host is then that site's name, so only
    a loopback literal, localhost, or the address the connection came in on (with
    its port) is answered; none (HTTP/1.0) too, as no browser sends none."""
    if not host:
        return True
    name, port = _split_host(host.decode("latin-1"))
    if name == "localhost" or is_loopback(name):
        return True
    return name == str(local[0]) and port in (None, local[1])


def _split_host(host: str) -> tuple[str, int | None]:
    if host.startswith("["):  # [v6]:port
        name, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        name, _, port = host.partition(":")
    return name.lower(), int(port) if port.isdigit() and len(port) <= 5 else None


def _header(req: h11.Request, name: bytes) -> bytes:
    return b", ".join(v for n, v in req.headers if n == name)


async def serve_admin(
    server: AdminSource, listeners: list[trio.SocketListener], token: str | None = None
) -> None:
    """Serve the admin listener; `token`: --admin-control's, None for read-only."""
    history = StatsHistory()

    async def handler(stream: trio.SocketStream) -> None:
        await _admin_conn(server, history, stream, token)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(history.run, server.admin_stats)
        await serve_listeners(handler, listeners, nursery)
