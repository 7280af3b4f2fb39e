"""HTTP semantics against a real server over TLS: ranges, validators, limits, timeouts.

Raw requests over Python's ssl, so that every byte of the request is ours and
every byte of the answer is checked. Short timeouts keep the slow-client
tests fast. Each test ends with the leak assertion.
"""

from __future__ import annotations

import email.parser
import email.policy
import gzip
import os
import pathlib
import socket
import ssl
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import ServerProcess
from tests.support.clients import client_context, read_until_close
from tests.support.files import file_bytes

ARGS = [
    "--cache-control", "max-age=3600",
    "--keepalive-timeout", "2",
    "--header-timeout", "2",
    "--max-requests-per-connection", "3",
    "--max-header-size", "12K",
    "--default-type", "text/plain",
    "--autoindex",
    "--handshake-timeout", "2",
]  # fmt: skip
BIG = 3 * 1024 * 1024 + 17


class Client:
    """One TLS connection; reads responses one at a time (pipelining-safe)."""

    def __init__(self, srv: ServerProcess) -> None:
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=15)
        self.sock = client_context().wrap_socket(raw, server_hostname="localhost")
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except (ssl.SSLError, ConnectionResetError):
            return False
        self.buf += chunk
        return bool(chunk)

    def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed before a response: {self.buf!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        length = 0 if head_only or status in (204, 304) else int(fields["content-length"])
        while len(self.buf) < length:
            if not self._fill():
                raise EOFError("connection closed inside a body")
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, fields, body

    def closed(self, timeout: float) -> bool:
        """True if the server closes the connection (EOF) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return not self._fill()
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def get(
    srv: ServerProcess, path: str, *headers: str, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    c = Client(srv)
    try:
        extra = "".join(h + "\r\n" for h in headers)
        c.send(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode())
        return c.response(head_only=method == "HEAD")
    finally:
        c.close()


@pytest.fixture(scope="module", params=[[], ["--no-ktls"]], ids=["ktls", "user-tls"])
def srv(
    request: pytest.FixtureRequest, corpus: pathlib.Path, state_dir: pathlib.Path
) -> Iterator[ServerProcess]:
    s = ServerProcess(corpus, [*ARGS, *request.param], state_dir)
    yield s
    s.stop()
    assert s.proc.returncode == 0, s.stderr
    assert "Traceback" not in s.stderr, s.stderr


@pytest.fixture(scope="module")
def plain(corpus: pathlib.Path, state_dir: pathlib.Path) -> Iterator[ServerProcess]:
    s = ServerProcess(corpus, [*ARGS, "--http", "--no-sendfile-nomap"], state_dir)
    yield s
    s.stop()
    assert "Traceback" not in s.stderr, s.stderr


# -- ranges ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [
        ("0-0", 0, 0),
        ("4095-8192", 4095, 8192),  # across page boundaries
        ("1000000-", 1000000, BIG - 1),  # open-ended
        ("-17", BIG - 17, BIG - 1),  # suffix
        ("3000000-99999999", 3000000, BIG - 1),  # cut at the end
    ],
)
def test_single_range(srv: ServerProcess, spec: str, first: int, last: int) -> None:
    data = file_bytes(BIG)
    status, f, body = get(srv, f"/f{BIG}.bin", f"Range: bytes={spec}")
    assert status == 206
    assert f["content-range"] == f"bytes {first}-{last}/{BIG}"
    assert int(f["content-length"]) == last - first + 1
    assert f["accept-ranges"] == "bytes" and f["content-type"] == "application/octet-stream"
    assert body == data[first : last + 1]
    srv.assert_no_leaks()


def test_multiple_ranges(srv: ServerProcess) -> None:
    data = file_bytes(BIG)
    ranges = [(0, 9), (5000, 70000), (BIG - 3, BIG - 1)]
    spec = ",".join(f"{a}-{b}" for a, b in ranges)
    status, f, body = get(srv, f"/f{BIG}.bin", f"Range: bytes={spec}")
    assert status == 206
    assert f["content-type"].startswith("multipart/byteranges; boundary=")
    assert int(f["content-length"]) == len(body)
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {f['content-type']}\r\n\r\n".encode() + body
    )
    parts = list(msg.iter_parts())
    assert [p["Content-Range"] for p in parts] == [f"bytes {a}-{b}/{BIG}" for a, b in ranges]
    for p, (a, b) in zip(parts, ranges, strict=True):
        assert p.get_payload(decode=True) == data[a : b + 1]
    srv.assert_no_leaks()


@pytest.mark.parametrize(
    ("spec", "status"),
    [
        (f"bytes={BIG}-", 416),
        ("bytes=-0", 416),
        ("bytes=abc", 200),  # syntactically invalid: ignored
        ("items=0-1", 200),
        ("bytes=5-1", 200),
        (f"bytes=0-{BIG},0-{BIG}", 200),  # more than the whole: sent whole, as nginx
        (",".join(["bytes=0-0"] + [f"{i}-{i}" for i in range(2, 80, 2)]), 200),  # > 32 ranges
    ],
)
def test_range_refused_or_ignored(srv: ServerProcess, spec: str, status: int) -> None:
    got, f, body = get(srv, "/f16385.bin", f"Range: {spec}")
    assert got == status
    if status == 416:
        assert f["content-range"] == "bytes */16385"
    else:
        assert body == file_bytes(16385) and f["accept-ranges"] == "bytes"
    srv.assert_no_leaks()


def test_if_range(srv: ServerProcess) -> None:
    _, f, _ = get(srv, "/f4097.bin", method="HEAD")
    etag, lm = f["etag"], f["last-modified"]
    assert get(srv, "/f4097.bin", "Range: bytes=1-2", f"If-Range: {etag}")[0] == 206
    assert get(srv, "/f4097.bin", "Range: bytes=1-2", f"If-Range: {lm}")[0] == 206
    stale = get(srv, "/f4097.bin", "Range: bytes=1-2", 'If-Range: "0-0-0"')
    assert stale[0] == 200 and stale[2] == file_bytes(4097)
    assert get(srv, "/f4097.bin", "Range: bytes=1-2", f"If-Range: W/{etag}")[0] == 200
    other = "If-Range: Thu, 01 Jan 1970 00:00:00 GMT"
    assert get(srv, "/f4097.bin", "Range: bytes=1-2", other)[0] == 200
    srv.assert_no_leaks()


def test_head_with_range(srv: ServerProcess) -> None:
    status, f, body = get(srv, "/f4097.bin", "Range: bytes=10-19", method="HEAD")
    assert (status, f["content-range"], f["content-length"], body) == (
        206, "bytes 10-19/4097", "10", b""
    )  # fmt: skip


def test_ranges_plain_http(plain: ServerProcess) -> None:
    data = file_bytes(BIG)
    with socket.create_connection(("127.0.0.1", plain.port), timeout=15) as s:
        s.sendall(
            f"GET /f{BIG}.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=4095-4096,-5000\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        buf = read_until_close(s)
    head, _, body = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206 ")
    assert data[4095:4097] in body and body.count(data[-5000:]) == 1
    plain.assert_no_leaks()


# -- validators ------------------------------------------------------------------


def test_validators_and_cache_control(srv: ServerProcess) -> None:
    status, f, _ = get(srv, "/f1.bin")
    assert status == 200 and f["cache-control"] == "max-age=3600"
    etag = f["etag"]
    status, f304, body = get(srv, "/f1.bin", f"If-None-Match: {etag}")
    assert (status, body) == (304, b"")
    assert f304["etag"] == etag and f304["cache-control"] == "max-age=3600"
    assert "last-modified" in f304 and "content-length" not in f304
    srv.assert_no_leaks()


# -- methods, versions, pipelining, limits ----------------------------------------


def test_methods(srv: ServerProcess) -> None:
    status, f, _ = get(srv, "/f1.bin", method="DELETE")
    assert status == 405 and f["allow"] == "GET, HEAD, OPTIONS"
    assert get(srv, "/", method="OPTIONS")[0] == 204


def test_types_and_dotfiles(srv: ServerProcess, corpus: pathlib.Path) -> None:
    (corpus / "notes.unknownext").write_bytes(b"x")
    assert get(srv, "/notes.unknownext")[1]["content-type"] == "text/plain; charset=utf-8"
    assert get(srv, "/index.html")[1]["content-type"] == "text/html; charset=utf-8"
    assert get(srv, "/.secret")[0] == 404


def test_http10_without_host_and_close(srv: ServerProcess) -> None:
    c = Client(srv)
    c.send(b"GET /f4096.bin HTTP/1.0\r\n\r\n")
    status, f, body = c.response()
    assert status == 200 and body == file_bytes(4096)
    assert f["connection"] == "close"  # no keep-alive asked for
    assert c.closed(5)
    c.close()
    status, _, _ = get(srv, "/f1.bin", "Host: y")  # two Hosts in HTTP/1.1: 400
    assert status == 400
    srv.assert_no_leaks()


def test_http10_keepalive(srv: ServerProcess) -> None:
    """As nginx (and ab -k) expect: HTTP/1.0 with Connection: keep-alive stays open."""
    c = Client(srv)
    ka = b"Connection: keep-alive\r\n\r\n"
    c.send(b"GET /f4096.bin HTTP/1.0\r\n" + ka)
    status, f, body = c.response()
    assert (status, f["connection"], body) == (200, "keep-alive", file_bytes(4096))
    c.send(b"HEAD /f1.bin HTTP/1.0\r\n" + ka + b"GET /nope HTTP/1.0\r\n" + ka)  # pipelined
    status, f, _ = c.response(head_only=True)
    assert (status, f["connection"], f["content-length"]) == (200, "keep-alive", "1")
    status, f, _ = c.response()
    assert status == 404 and f["connection"] == "close"  # --max-requests-per-connection 3
    assert c.closed(5)
    c.close()
    srv.assert_no_leaks()


def test_pipelining_and_bodies_on_get(srv: ServerProcess) -> None:
    c = Client(srv)
    c.send(
        b"GET /f1.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /f4095.bin HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /f4097.bin HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert c.response()[2] == file_bytes(1)
    assert c.response()[2] == file_bytes(4095)
    status, f, _ = c.response(head_only=True)
    assert status == 200 and f["content-length"] == "4097"
    assert f["connection"] == "close"  # the third request on it: --max-requests 3
    assert c.closed(5)
    c.close()
    srv.assert_no_leaks()


def test_header_too_large_and_target_too_long(srv: ServerProcess) -> None:
    status, f, _ = get(srv, "/f1.bin", *[f"X-Fill-{i}: {'a' * 100}" for i in range(130)])
    assert status == 431 and f["connection"] == "close"
    assert get(srv, "/" + "a" * 9000)[0] == 414
    assert get(srv, "/" + "a" * 13000)[0] == 414
    srv.assert_no_leaks()


def test_slowloris_gets_408(srv: ServerProcess) -> None:
    c = Client(srv)
    c.send(b"GET /f1.bin HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    status, _, _ = c.response()
    assert status == 408 and time.monotonic() - t0 < 10
    assert c.closed(5)
    c.close()
    srv.assert_no_leaks()


def test_idle_keepalive_closes_quietly(srv: ServerProcess) -> None:
    c = Client(srv)
    c.send(b"GET /f1.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    assert c.response()[0] == 200
    t0 = time.monotonic()
    assert c.closed(10)  # --keepalive-timeout 2: EOF, no 408
    assert 1.5 < time.monotonic() - t0 < 9
    assert c.buf == b""
    c.close()
    srv.assert_no_leaks()


def test_absolute_form_version_and_smuggling(srv: ServerProcess) -> None:
    c = Client(srv)
    c.send(b"GET https://example.test/f4096.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = c.response()
    assert status == 200 and body == file_bytes(4096)  # RFC 9112 3.2.2
    c.close()
    c = Client(srv)
    c.send(b"GET /f1.bin HTTP/2.0\r\nHost: x\r\n\r\n")
    assert c.response()[0] == 505
    c.close()
    c = Client(srv)
    c.send(
        b"GET /f1.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    status, f, _ = c.response()
    assert status == 400 and f["connection"] == "close"
    assert c.closed(5)
    c.close()
    srv.assert_no_leaks()


@pytest.fixture(scope="module")
def sidecar(corpus: pathlib.Path) -> bytes:
    text = b"sidecar text " * 500
    (corpus / "text.txt").write_bytes(text)
    (corpus / "text.txt.gz").write_bytes(gzip.compress(text, mtime=0))
    (corpus / "text.txt.br").write_bytes(b"not really brotli, but served as is")
    return text


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        (None, None),
        ("gzip", "gzip"),
        ("gzip, br", "br"),
        ("gzip;q=1, br;q=0.5", "gzip"),
        ("br;q=0, gzip;q=0", None),
        ("*", "br"),
        ("identity", None),
    ],
)
def test_precompressed_sidecars(
    srv: ServerProcess, corpus: pathlib.Path, sidecar: bytes, accept: str | None, coding: str | None
) -> None:
    headers = [f"Accept-Encoding: {accept}"] if accept is not None else []
    status, f, body = get(srv, "/text.txt", *headers)
    assert status == 200
    assert f["vary"] == "Accept-Encoding"
    assert f["content-type"] == "text/plain; charset=utf-8"
    assert f.get("content-encoding") == coding
    suffix = {None: "", "gzip": ".gz", "br": ".br"}[coding]
    assert body == (corpus / f"text.txt{suffix}").read_bytes()
    if coding == "gzip":
        assert gzip.decompress(body) == sidecar
    srv.assert_no_leaks()


def test_ranges_apply_to_the_encoded_bytes(
    srv: ServerProcess, corpus: pathlib.Path, sidecar: bytes
) -> None:
    gz = (corpus / "text.txt.gz").read_bytes()
    status, f, body = get(srv, "/text.txt", "Accept-Encoding: gzip", "Range: bytes=0-9")
    assert status == 206 and f["content-encoding"] == "gzip"
    assert f["content-range"] == f"bytes 0-9/{len(gz)}" and body == gz[:10]
    assert get(srv, "/f1.bin", "Accept-Encoding: gzip")[1].get("vary") is None


def test_autoindex(srv: ServerProcess, corpus: pathlib.Path) -> None:
    listing = corpus / "listing"
    listing.mkdir(exist_ok=True)
    (listing / "b <&> \u00e9.txt").write_bytes(b"x")
    (listing / "a.bin").write_bytes(b"y" * 1234)
    (listing / "sub").mkdir(exist_ok=True)
    (listing / ".hidden").write_bytes(b"z")
    status, f, body = get(srv, "/listing/")
    assert status == 200 and f["content-type"] == "text/html; charset=utf-8"
    page = body.decode()
    assert page.index("sub/") < page.index("a.bin") < page.index("b &lt;&amp;&gt;")
    assert 'href="b%20%3C%26%3E%20%C3%A9.txt"' in page
    assert ".hidden" not in page and "1234" in page
    assert get(srv, "/listing")[1]["location"] == "/listing/"
    assert get(srv, "/dir/")[2] == b"dir index\n"  # an index wins over the listing
    srv.assert_no_leaks()


def test_handshake_timeout(srv: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        t0 = time.monotonic()
        assert s.recv(100) == b""  # closed, without a byte of ours
        assert 1.5 < time.monotonic() - t0 < 8
    srv.assert_no_leaks()


def test_request_head_byte_by_byte(srv: ServerProcess) -> None:
    """Each byte of the head in its own TLS record and TCP segment, as h11's tests feed it."""
    c = Client(srv)
    for b in b"GET /f4097.bin HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n":
        c.send(bytes((b,)))
    status, _, body = c.response()
    assert status == 200 and body == file_bytes(4097)
    c.close()
    srv.assert_no_leaks()


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\x01\x02\r\n\r\n", b"GET / HTTP/9\r\n\r\n", b"\xff" * 40 + b"\r\n\r\n", b"GET\r\n\r\n"],
)
def test_garbage_after_a_request(srv: ServerProcess, garbage: bytes) -> None:
    """A good request, then garbage: the answer, then a 400, then the close."""
    c = Client(srv)
    c.send(b"GET /f1.bin HTTP/1.1\r\nHost: x\r\n\r\n" + garbage)
    assert c.response()[2] == file_bytes(1)
    status, f, _ = c.response()
    assert status == 400 and f["connection"] == "close"
    assert c.closed(5)
    c.close()


PIPELINE = (
    b"GET /f4095.bin HTTP/1.1\r\nHost: x\r\n\r\n"
    b"HEAD /f1.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0\r\n\r\n"
    b"GET /f16385.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=1-2,4-5\r\nConnection: close\r\n\r\n"
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cuts=st.lists(st.integers(1, len(PIPELINE) - 1), max_size=6, unique=True))
def test_pipelined_requests_cut_anywhere(srv: ServerProcess, cuts: list[int]) -> None:
    """However the three requests are cut into writes, the answers are the same, in order."""
    c = Client(srv)
    pos = 0
    for end in [*sorted(cuts), len(PIPELINE)]:
        c.send(PIPELINE[pos:end])
        pos = end
    assert c.response()[2] == file_bytes(4095)
    status, f, _ = c.response(head_only=True)
    assert (status, f["content-range"]) == (206, "bytes 0-0/1")
    status, f, body = c.response()
    assert status == 206 and f["content-type"].startswith("multipart/byteranges")
    assert body.count(file_bytes(16385)[1:3]) >= 1
    assert c.closed(5)
    c.close()


def test_hostile_target_closes_and_412_varies(
    srv: ServerProcess, corpus: pathlib.Path, sidecar: bytes
) -> None:
    """As nginx: a 400 for a hostile target closes the connection; a 412 for a file
    with a sidecar says Vary, so caches keep the encodings apart."""
    c = Client(srv)
    c.send(b"GET /%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n")
    status, f, _ = c.response()
    assert status == 400 and f["connection"] == "close"
    assert c.closed(5)
    c.close()
    status, f, _ = get(srv, "/text.txt", 'If-Match: "stale"')
    assert status == 412 and f["vary"] == "Accept-Encoding"
    srv.assert_no_leaks()


def _alpn(srv: ServerProcess, offered: list[str]) -> str | None:
    ctx = client_context()
    ctx.set_alpn_protocols(offered)
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        return s.selected_alpn_protocol()


def test_alpn_announces_http11(srv: ServerProcess) -> None:
    assert _alpn(srv, ["h2", "http/1.1"]) == "http/1.1"
    assert _alpn(srv, ["h2"]) is None  # nothing in common: no ALPN, the handshake goes on
    srv.assert_no_leaks()


def test_review_fixes(srv: ServerProcess) -> None:
    """Repeated list fields are one list; absolute-form with only a query; HTTP/1.0
    keep-alive that also says close is closed."""
    _, f, _ = get(srv, "/f1.bin", method="HEAD")
    etag = f["etag"]
    assert get(srv, "/f1.bin", 'If-None-Match: "zzz"', f"If-None-Match: {etag}")[0] == 304
    c = Client(srv)
    c.send(b"GET https://h?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert c.response()[0] == 200  # the index of /
    c.close()
    c = Client(srv)
    c.send(b"GET /f1.bin HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n")
    status, f, _ = c.response()
    assert status == 200 and f["connection"] == "close"
    assert c.closed(5)
    c.close()
    srv.assert_no_leaks()


def _fds(pid: int) -> int:
    return len(list(pathlib.Path(f"/proc/{pid}/fd").iterdir()))


def test_many_ranges_hold_one_descriptor(srv: ServerProcess) -> None:
    """A multipart response to a client that stopped reading holds one duplicate
    of the file, not one per range."""
    spec = ",".join(f"{i * 90000}-{i * 90000 + 3999}" for i in range(32))
    base = _fds(srv.proc.pid)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", srv.port))
    s = client_context().wrap_socket(raw, server_hostname="localhost")
    s.sendall(f"GET /f{BIG}.bin HTTP/1.1\r\nHost: x\r\nRange: bytes={spec}\r\n\r\n".encode())
    time.sleep(1.0)  # the server fills what the client does not read
    held = _fds(srv.proc.pid) - base
    s.close()
    assert held <= 4, held  # socket, the file, its one duplicate (and slack)
    srv.assert_no_leaks()


def test_file_replaced_between_requests_is_served_new(
    srv: ServerProcess, corpus: pathlib.Path
) -> None:
    """The open-file cache revalidates: a replaced file is served new at once."""
    (corpus / "replaced.txt").write_bytes(b"first version")
    past = time.time() - 60  # a directory at rest, so the server caches what it resolves
    os.utime(corpus, (past, past))
    for _ in range(2):
        status, f1, body = get(srv, "/replaced.txt")
        assert (status, body) == (200, b"first version")
    (corpus / "replaced.new").write_bytes(b"second, longer version")
    os.replace(corpus / "replaced.new", corpus / "replaced.txt")
    status, f2, body = get(srv, "/replaced.txt")
    assert (status, body) == (200, b"second, longer version")
    assert f2["etag"] != f1["etag"]
    srv.assert_no_leaks()
