"""One case on one fresh connection, and the response parser.

The client is Python's `ssl` (SNI and Host "localhost", ALPN "http/1.1", no
certificate check), or a plain socket to the TLS port for the "plain" mode.
Responses are parsed by their framing (RFC 9112 section 6.3: HEAD, 1xx, 204 and
304 have no body; chunked; Content-Length; else until close); what was not a
response is kept, escaped, and so is what the connection did afterwards.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import time
from dataclasses import dataclass, field

from bench.loopback import HOST, SNI
from tools.nginx_compare.cases import Case

STEP_TIMEOUT = 10.0  # seconds: server start-up, stop, one request/response exchange
PROBE = 0.3  # seconds to wait, after the last expected response, for the server to close


@dataclass
class Response:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    framing: str

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None


class Incomplete(Exception):
    """More bytes are needed to parse the response."""


class NotHttp(Exception):
    """The bytes are not an HTTP/1.x response."""


def _no_body(method: bytes, status: int) -> bool:
    return method == b"HEAD" or status in (204, 304) or 100 <= status < 200


def _dechunk(buf: bytes, pos: int) -> tuple[bytes, int]:
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            raise Incomplete
        size_text = buf[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as e:
            raise NotHttp(f"bad chunk size {size_text!r}") from e
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)
            if end < 0:
                raise Incomplete
            return bytes(body), end + 4
        if len(buf) < pos + size + 2:
            raise Incomplete
        body += buf[pos : pos + size]
        pos += size + 2


def parse_response(buf: bytes, method: bytes, eof: bool) -> tuple[Response, int]:
    """Parse one response at the start of `buf`; return it and the bytes it used.

    Raises Incomplete when more bytes are needed, NotHttp when they are not HTTP.
    """
    if not buf:
        raise Incomplete
    n = min(5, len(buf))
    if buf[:n] != b"HTTP/"[:n]:
        raise NotHttp("not an HTTP response")
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if eof:
            raise NotHttp("truncated head")
        raise Incomplete
    lines = buf[:end].decode("latin-1").split("\r\n")
    m = re.fullmatch(r"(HTTP/\d\.\d) (\d{3})(?: (.*))?", lines[0])
    if not m:
        raise NotHttp(f"bad status line {lines[0]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.append((k.strip(), v.strip()))
    resp = Response(int(m.group(2)), m.group(3) or "", m.group(1), headers, b"", "none")
    pos = end + 4
    if _no_body(method, resp.status):
        return resp, pos
    te = resp.header("Transfer-Encoding")
    cl = resp.header("Content-Length")
    if te and "chunked" in te.lower():
        resp.framing = "chunked"
        resp.body, used = _dechunk(buf, pos)
        return resp, used
    if cl is not None:
        resp.framing = "length"
        n = int(cl.split(",")[0])
        if len(buf) < pos + n:
            if eof:
                resp.body = buf[pos:]
                resp.framing = f"length (truncated at {len(buf) - pos})"
                return resp, len(buf)
            raise Incomplete
        resp.body = buf[pos : pos + n]
        return resp, pos + n
    if not eof:
        raise Incomplete
    resp.framing = "close"
    resp.body = buf[pos:]
    return resp, len(buf)


@dataclass
class Exchange:
    """What one server did with one case."""

    responses: list[Response] = field(default_factory=list)
    connection: str = ""  # closed / open / reset / tls-failed / ...
    error: str = ""
    raw_tail: str = ""  # bytes that were not a parseable response, escaped
    tls: str = ""


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _method(request: bytes) -> bytes:
    return request.split(b" ", 1)[0]


class _Conn:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = b""
        self.eof = False

    def recv_some(self, limit: float | None = None) -> bool:
        """Read once; False on timeout. Sets eof on close."""
        left = self.deadline - time.monotonic()
        if limit is not None:
            left = min(left, limit)
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ssl.SSLWantReadError:
            return False
        if not data:
            self.eof = True
            return True
        self.buf += data
        return True

    def read_response(self, method: bytes, ex: Exchange) -> bool:
        while True:
            try:
                resp, used = parse_response(self.buf, method, self.eof)
            except Incomplete:
                if self.eof:
                    return False
                if not self.recv_some():
                    ex.error = ex.error or "timeout waiting for a response"
                    return False
                continue
            except NotHttp as e:
                ex.error = ex.error or str(e)
                while not self.eof and self.recv_some(PROBE):
                    pass
                return False
            ex.responses.append(resp)
            self.buf = self.buf[used:]
            return True


def escape(data: bytes, limit: int = 120) -> str:
    text = data[:limit].decode("latin-1").encode("unicode_escape").decode()
    return text + (f"…(+{len(data) - limit} bytes)" if len(data) > limit else "")


def run_case(
    case: Case, port: int, subst: dict[bytes, bytes], timeout: float = STEP_TIMEOUT
) -> Exchange:
    ex = Exchange()
    requests = []
    for r in case.requests:
        for k, v in subst.items():
            r = r.replace(k, v)
        requests.append(r)
    deadline = time.monotonic() + timeout
    try:
        raw = socket.create_connection((HOST, port), timeout=timeout)
    except OSError as e:
        ex.error = f"connect: {e}"
        ex.connection = "refused"
        return ex
    sock: socket.socket = raw
    try:
        if case.mode != "plain":
            try:
                tls = client_context().wrap_socket(raw, server_hostname=SNI)
            except (ssl.SSLError, OSError) as e:
                ex.error = f"TLS handshake: {e}"
                ex.connection = "tls-failed"
                return ex
            sock = tls
            ex.tls = f"{tls.version()} alpn={tls.selected_alpn_protocol()}"
        conn = _Conn(sock, deadline)
        try:
            if case.mode == "sequential":
                for r in requests:
                    sock.sendall(r)
                    if not conn.read_response(_method(r), ex):
                        break
            else:
                sock.sendall(b"".join(requests))
                for r in requests:
                    if not conn.read_response(_method(r), ex):
                        break
            # Has the server closed the connection after its last response?
            if not conn.eof and not conn.buf:
                conn.recv_some(PROBE)
            if conn.buf:
                ex.raw_tail = escape(conn.buf)
            ex.connection = "closed" if conn.eof else "open"
        except ConnectionResetError:
            ex.connection = "reset"
            if conn.buf:
                ex.raw_tail = escape(conn.buf)
        except ssl.SSLError as e:
            ex.connection = f"tls-error ({e.reason})"
            if conn.buf:
                ex.raw_tail = escape(conn.buf)
        except (BrokenPipeError, OSError) as e:
            ex.connection = f"error ({type(e).__name__})"
        return ex
    finally:
        with contextlib.suppress(OSError):
            sock.close()
