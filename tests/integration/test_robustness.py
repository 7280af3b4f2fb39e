"""Bad clients end their own connection only; the server keeps serving and leaks nothing."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import ssl
import subprocess
import time
import urllib.request
import warnings

import pytest

from tests.integration.conftest import SIZES, ServerProcess
from tests.support.clients import client_context, tls_connect
from tests.support.files import file_bytes

BIG = SIZES[-1]


def _read_response(sock: ssl.SSLSocket | socket.socket) -> tuple[bytes, bytes]:
    """Read one response with a Content-Length body: (head, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head, rest


def _get_ok(srv: ServerProcess) -> None:
    """The server still serves a normal client byte-exactly."""
    with tls_connect(srv.port) as s:
        s.sendall(b"GET /f16385.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head, body = _read_response(s)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == file_bytes(16385)


def test_client_disconnects_mid_body(default_server: ServerProcess) -> None:
    for _ in range(3):
        s = tls_connect(default_server.port)
        s.sendall(b"GET /f%d.bin HTTP/1.1\r\nHost: localhost\r\n\r\n" % BIG)
        got = 0
        while got < 200_000:
            got += len(s.recv(65536))
        # Vanish without close_notify; RST the TCP connection.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    _get_ok(default_server)
    default_server.assert_no_leaks()


def test_plain_http_on_tls_port(default_server: ServerProcess) -> None:
    before = default_server.idle_stats()["server.tls_handshake_failures"]
    with socket.create_connection(("127.0.0.1", default_server.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = _read_response(s)
    assert head.startswith(b"HTTP/1.1 400 ")  # as nginx answers
    assert b"plain HTTP request" in body
    _get_ok(default_server)
    s2 = default_server.assert_no_leaks()
    assert s2["server.tls_handshake_failures"] == before + 1


def test_malformed_client_hello_gets_alert(default_server: ServerProcess) -> None:
    hello = b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00"
    with socket.create_connection(("127.0.0.1", default_server.port), timeout=10) as s:
        s.sendall(hello)
        reply = s.recv(100)
    assert reply[:1] == b"\x15"  # a TLS alert record
    assert reply[5:6] == b"\x02"  # fatal
    _get_ok(default_server)
    default_server.assert_no_leaks()


def test_tls11_client_refused(default_server: ServerProcess) -> None:
    ctx = client_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    raw = socket.create_connection(("127.0.0.1", default_server.port), timeout=10)
    with pytest.raises(ssl.SSLError):
        ctx.wrap_socket(raw, server_hostname="localhost")
    raw.close()
    _get_ok(default_server)
    default_server.assert_no_leaks()


def test_client_closes_during_handshake(default_server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", default_server.port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x00\x40")  # a ClientHello header and nothing more
    _get_ok(default_server)
    default_server.assert_no_leaks()


def test_http_protocol_error_gets_400(default_server: ServerProcess) -> None:
    with tls_connect(default_server.port) as s:
        s.sendall(b"GARBAGE\r\n\r\n")
        head, body = _read_response(s)
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in head
    assert b"400" in body
    _get_ok(default_server)
    default_server.assert_no_leaks()


@pytest.mark.parametrize(
    ("target", "status"),
    [
        (b"/nope.bin", b"404"),
        (b"/../../../etc/passwd", b"400"),
        (b"/%2e%2e/%2e%2e/etc/passwd", b"400"),
        (b"/f1.bin%00.html", b"400"),
        (b"/.secret", b"404"),
        (b"/dir", b"301"),
        (b"/dir/", b"200"),
        (b"/", b"200"),
    ],
)
def test_status_codes(default_server: ServerProcess, target: bytes, status: bytes) -> None:
    with tls_connect(default_server.port) as s:
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head, _ = _read_response(s)
    assert head.split(b" ")[1] == status, head
    if status == b"301":
        assert b"\r\nLocation: /dir/" in head
    default_server.assert_no_leaks()


def test_methods_head_and_keepalive(default_server: ServerProcess) -> None:
    with tls_connect(default_server.port) as s:
        s.sendall(b"POST /f1.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        head, _ = _read_response(s)
        assert head.startswith(b"HTTP/1.1 405 ")
        assert b"\r\nAllow: GET, HEAD, OPTIONS" in head
        s.sendall(b"HEAD /f4097.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(4096)
        head, _, rest = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Length: 4097" in head
        assert rest == b""
        # Pipelined: two GETs in one write, two answers in order on the same connection.
        s.sendall(
            b"GET /f1.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /f4096.bin HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        h1, b1 = _read_response(s)
        h2, b2 = _read_response(s)
    assert (b1, b2) == (file_bytes(1), file_bytes(4096))
    for h in (h1, h2):
        for name in (b"Content-Type", b"Last-Modified", b"ETag", b"Date", b"Content-Length"):
            assert b"\r\n" + name + b": " in h
    default_server.assert_no_leaks()


@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client(default_server: ServerProcess, flag: str) -> None:
    req = b"GET /f16384.bin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    res = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{default_server.port}", flag,
         "-quiet", "-ign_eof", "-servername", "localhost"],
        input=req, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    head, _, body = res.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), res.stderr
    assert body == file_bytes(16384)
    default_server.assert_no_leaks()


def test_gnutls_client(default_server: ServerProcess) -> None:
    req = b"GET /f4097.bin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    res = subprocess.run(
        ["gnutls-cli", "--insecure", "--port", str(default_server.port), "127.0.0.1"],
        input=req, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert b"HTTP/1.1 200 " in res.stdout, res.stderr
    assert res.stdout.endswith(file_bytes(4097)) or file_bytes(4097) in res.stdout
    default_server.assert_no_leaks()


def test_slow_client_that_never_sends_a_request(default_server: ServerProcess) -> None:
    """An idle TLS connection does not block others and is counted active until closed."""
    with tls_connect(default_server.port):
        _get_ok(default_server)
        assert default_server.stats()["server.connections_active"] >= 1
    default_server.assert_no_leaks()


REQUIRED_KEYS = [
    "ifnet.capenable",
    "ifnet.tx_packets",
    "ifnet.tx_bytes",
    "mbuf.mbufs_in_use",
    "mbuf.mbufs_total",
    "mbuf.clusters_in_use",
    "mbuf.ext_pgs_in_use",
    "mbuf.ext_pgs_total",
    "sfbuf.in_use",
    "sfbuf.peak",
    "sfbuf.total",
    "sendfile.syscalls",
    "sendfile.pages_valid",
    "sendfile.pages_read",
    "vm.pages_total",
    "vm.pages_free",
    "vm.pages_wired",
    "vm.pages_cached",
    "vm.pages_anon",
    "vm.waits",
    "ktls.sessions_active",
    "ktls.sessions_total",
    "ktls.records_encrypted",
    "ktls.bytes_encrypted",
    "ip.output_packets",
    "ip.unmapped_converted",
    "ip.sw_csum_packets",
    "ip.sw_csum_bytes",
    "sockbuf.mbufs_peak",
]


def test_stats_has_every_documented_key(default_server: ServerProcess) -> None:
    _get_ok(default_server)
    s = default_server.assert_no_leaks()
    missing = [k for k in REQUIRED_KEYS if k not in s]
    assert missing == []
    assert s["vm.pages_total"] == 256 * 1024 * 1024 // 4096
    assert s["vm.pages_free"] + s["vm.pages_cached"] == s["vm.pages_total"]
    assert s["sendfile.pages_valid"] + s["sendfile.pages_read"] > 0
    assert s["ktls.sessions_total"] >= 1 and s["ifnet.tx_packets"] >= 1


def test_client_keyupdate_request_is_answered_and_the_connection_goes_on(
    default_server: ServerProcess,
) -> None:
    """TLS 1.3 KeyUpdate(update_requested): the server sends its own KeyUpdate before its
    next record, changes keys, and answers the next request under the new ones."""
    before = default_server.stats()
    script = (
        b"GET /f1.bin HTTP/1.1\r\nHost: x\r\n\r\n",
        b"K\n",  # s_client: send KeyUpdate with update_requested
        b"GET /f1.bin HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    with subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{default_server.port}", "-tls1_3"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0,
    ) as proc:  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(BrokenPipeError):  # s_client exits when we close
            for chunk in script:
                proc.stdin.write(chunk)
                time.sleep(0.5)
            proc.stdin.close()
        out = proc.stdout.read()
        proc.wait(timeout=10)
    assert out.count(b"HTTP/1.1 200 OK") == 2, out
    assert b"KEYUPDATE" in out
    _get_ok(default_server)
    after = default_server.assert_no_leaks()
    assert after["ktls.key_updates_rx"] - before["ktls.key_updates_rx"] == 1
    assert after["ktls.key_updates_tx"] - before["ktls.key_updates_tx"] == 1


def _head_of(srv: ServerProcess, request: bytes) -> tuple[bytes, bytes]:
    with tls_connect(srv.port) as s:
        s.sendall(request)
        return _read_response(s)


def test_conditional_requests(default_server: ServerProcess, tmp_path: pathlib.Path) -> None:
    """304 with validators and no body; If-None-Match beats If-Modified-Since; 412."""
    head, body = _head_of(default_server, b"GET /f4097.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
    etag, lm = fields[b"ETag"], fields[b"Last-Modified"]
    cases = [
        (b"If-None-Match: " + etag, b"304"),
        (b"If-None-Match: W/" + etag, b"304"),
        (b"If-Modified-Since: " + lm, b"304"),
        (b'If-None-Match: "nope"\r\nIf-Modified-Since: ' + lm, b"200"),
        (b'If-Match: "nope"', b"412"),
        (b"If-Match: " + etag, b"200"),
        (b"If-Unmodified-Since: Sun, 06 Nov 1994 08:49:37 GMT", b"412"),
    ]
    for header, status in cases:
        head, body = _head_of(
            default_server, b"GET /f4097.bin HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n"
        )
        assert head.split(b" ")[1] == status, (header, head)
        if status == b"304":
            assert body == b"" and b"\r\nETag: " + etag in head
            assert b"\r\nLast-Modified: " + lm in head and b"Content-Length" not in head
        if status == b"200":
            assert body == file_bytes(4097)
    # curl's own revalidation: -z (If-Modified-Since) and --etag-compare.
    etag_file = tmp_path / "etag"
    etag_file.write_bytes(etag + b"\n")
    for extra in (["-z", lm.decode()], ["--etag-compare", str(etag_file)]):
        res = subprocess.run(
            ["curl", "-sk", "-o", os.devnull, "-w", "%{http_code}", *extra,
             default_server.url("/f4097.bin")],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        assert res.stdout == "304", (extra, res.stderr)
    s = default_server.assert_no_leaks()
    assert s["server.status_304"] >= 5 and s["server.status_412"] >= 2


def test_admin_connections_shows_each_tls_session(default_server: ServerProcess) -> None:
    """Per-session counters: /connections lists an open KTLS connection with its
    suite, sequence numbers, records and bytes each way."""
    with tls_connect(default_server.port, version=ssl.TLSVersion.TLSv1_3) as s:
        for _ in range(2):
            s.sendall(b"GET /f16385.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
            head, body = _read_response(s)
            assert head.startswith(b"HTTP/1.1 200 ") and body == file_bytes(16385)
        url = f"http://127.0.0.1:{default_server.admin_port}/connections"
        with urllib.request.urlopen(url, timeout=10) as r:
            conns = json.load(r)
        port = s.getsockname()[1]
        (me,) = [c for c in conns if c["peer"].endswith(f":{port}")]
    assert me["tls"] == "TLS13" and me["suite"].startswith("TLS_")
    assert me["requests"] == 2 and me["rx_records"] >= 2 and me["rx_bytes"] > 0
    assert me["tx_records"] >= 4 and me["tx_bytes"] >= 2 * 16385
    assert me["tx_seq"] >= me["tx_records"]  # tickets came first, under OpenSSL
    assert me["key_updates_rx"] == me["key_updates_tx"] == 0
    default_server.assert_no_leaks()
