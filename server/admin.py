"""The admin listener: the kernel counters over plain HTTP.

GET /stats answers the JSON snapshot (`Server.statistics()`); GET
/connections each open connection with its TLS sessions' own counters
(sequence numbers, records and bytes each way, KeyUpdates); GET
/stats/history the last minutes of the counters the dashboard draws; GET / the
dashboard for a browser (server/admin_web.py, files in server/admin_ui/) and a
short text index for anything else (always at /index.txt). It shares nothing
with the data path but the counters it reads.

Whoever answers is an `AdminSource`: the `Server` itself with one process,
the supervisor with `--workers N`, which asks every worker over its control
channel and answers the sum (server/supervisor.py).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import h11
import trio

from server.admin_web import StatsHistory, asset, asset_headers
from server.http.responses import DateCache, simple_response
from server.listen import serve_listeners


class AdminSource(Protocol):
    date: DateCache

    async def admin_stats(self) -> dict[str, Any]: ...

    async def admin_connections(self) -> list[dict[str, object]]: ...


_INDEX = (
    b"nomapd admin: GET /stats for the kernel counters (JSON),\n"
    b"GET /connections for each open connection and its TLS sessions (JSON),\n"
    b"GET /stats/history for the last minutes of the dashboard's counters (JSON),\n"
    b"GET / in a browser for the live dashboard\n"
)


async def _admin_conn(
    server: AdminSource, history: StatsHistory, stream: trio.SocketStream
) -> None:
    conn = h11.Connection(h11.SERVER)
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
                if event.method not in (b"GET", b"HEAD"):
                    out = simple_response(conn, 405, date, extra=[(b"Allow", b"GET, HEAD")])
                elif path in (b"/stats", b"/connections"):
                    snap: object
                    if path == b"/stats":
                        snap = await server.admin_stats()
                    else:
                        snap = await server.admin_connections()
                    body = json.dumps(snap, indent=1, sort_keys=True).encode()
                    out = simple_response(
                        conn, 200, date, body=body + b"\n",
                        content_type=b"application/json",
                        extra=[(b"Cache-Control", b"no-store")],
                        head_only=event.method == b"HEAD",
                    )  # fmt: skip
                elif path == b"/stats/history":
                    body = json.dumps(history.as_json(), separators=(",", ":")).encode()
                    out = simple_response(
                        conn, 200, date, body=body, content_type=b"application/json",
                        extra=[(b"Cache-Control", b"no-store")],
                        head_only=event.method == b"HEAD",
                    )  # fmt: skip
                elif ui := asset(path, _header(event, b"accept")):
                    out = simple_response(
                        conn, 200, date, body=ui[0], content_type=ui[1], extra=asset_headers(),
                        head_only=event.method == b"HEAD",
                    )  # fmt: skip
                elif path in (b"/", b"/index.txt"):
                    out = simple_response(
                        conn, 200, date, body=_INDEX, content_type=b"text/plain; charset=utf-8",
                        extra=[(b"Vary", b"Accept")] if path == b"/" else None,
                    )  # fmt: skip
                else:
                    out = simple_response(conn, 404, date, body=b"not found\n")
                await stream.send_all(out)
                while conn.their_state is h11.SEND_BODY:
                    if conn.next_event() is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(16384))
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
    except (h11.ProtocolError, trio.BrokenResourceError, trio.TooSlowError, OSError):
        return
    finally:
        await stream.aclose()


def _header(req: h11.Request, name: bytes) -> bytes:
    return b", ".join(v for n, v in req.headers if n == name)


async def serve_admin(server: AdminSource, listeners: list[trio.SocketListener]) -> None:
    history = StatsHistory()

    async def handler(stream: trio.SocketStream) -> None:
        await _admin_conn(server, history, stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(history.run, server.admin_stats)
        await serve_listeners(handler, listeners, nursery)
