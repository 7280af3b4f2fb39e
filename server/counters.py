"""The server's own counters: connections, handshakes, requests and responses.

Theory of operation. One `ServerStat` per server process, beside the kernel's
groups in `mbuf/counters.py` and in their shape: plain integers bumped where
the event happens (accept, handshake, request, response), never recomputed
by walking connections, and exported as an immutable snapshot whose keys are
`server.NAME`. Responses are counted per status in `status` (keys
`server.status_NNN`); the statuses the server sends in its ordinary work are
always present, at 0 until the first one, so that a reader of /stats (and the
supervisor's sum over workers) finds them without guessing; a status outside
that list appears once it has been sent.

`server.connections_active` and `server.mode` are not counters: `Server.statistics`
adds them to the snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import MappingProxyType

# The statuses always shown in /stats (server.status_NNN), sent or not.
STATUS_CODES = (200, 204, 206, 301, 304, 400, 403, 404, 405, 408, 412, 414, 416, 431, 505)


def _status_zeros() -> dict[int, int]:
    return dict.fromkeys(STATUS_CODES, 0)


@dataclass(slots=True)
class ServerStat:
    """Counters of one server process (a worker's own with `--workers N`)."""

    connections: int = 0  # connections that got a slot and a kernel socket
    connection_errors: int = 0  # connection tasks that failed unexpectedly (logged)
    connections_refused: int = 0  # accepted, closed without service: no slot in time
    tls_handshakes: int = 0  # TLS handshakes completed
    tls_handshake_failures: int = 0  # TLS handshakes refused by OpenSSL
    protocol_errors: int = 0  # requests h11 could not parse (answered 4xx, closed)
    timeouts: int = 0  # handshake, request head, keep-alive or send timeouts
    requests: int = 0  # requests parsed
    body_bytes: int = 0  # file body bytes sent by completed file responses
    responses_aborted: int = 0  # file responses cut short: a page-in failed or the file changed
    status: dict[int, int] = field(default_factory=_status_zeros)  # responses by status code

    def count_status(self, code: int) -> None:
        """One more response with status `code`."""
        self.status[code] = self.status.get(code, 0) + 1

    def snapshot(self) -> MappingProxyType[str, int]:
        """Every counter, keyed `server.NAME` (statuses `server.status_NNN`), in key order."""
        flat = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "status"}
        flat.update((f"status_{code}", n) for code, n in self.status.items())
        return MappingProxyType({f"server.{k}": v for k, v in sorted(flat.items())})
