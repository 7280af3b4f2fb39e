"""Interoperability matrix (issue 4): real TLS clients against a real nomapd.

Clients: `openssl s_client` (every TLS 1.3 suite with both certificate types,
every TLS 1.2 AEAD ECDHE suite with its certificate type, session resumption,
KeyUpdate both ways with the interactive `k`/`K` commands), `gnutls-cli` (the
same suites by --priority, and `^rekey1^`/`^rekey^` inline commands), curl
(TLS 1.2 and 1.3, two transfers on one connection) and Python's ssl
(http.client keep-alive, then `unwrap()`: our close_notify must be answered by
the server's).

Servers: per NIC mode (KTLS with IFCAP_NOMAP, `--no-nomap`, `--no-txcsum`, and
the user-space TLS baseline `--no-ktls`) one server with an ECDSA P-256 and one
with an RSA-2048 certificate, both generated here (CN and SAN localhost, SAN IP
127.0.0.1). The servers live for the whole mode (module-scoped fixture, so
pytest runs one mode after the other); every test ends with the leak assertion
and a server log without Traceback, and the teardown checks both once more.

Reading s_client: without -quiet, s_client writes its session information
through stdio (buffered) and the application data with write(2), so the two
can come out in any order; it runs under `stdbuf -oL`, which puts every line of
its own where it was printed. Its `KEYUPDATE` goes to stderr, and with
`-msg -msgfile` the protocol messages go to a file of their own, so stdout
holds the HTTP responses with only s_client's lines between them. A read chunk
starting with Q, R, k or K is a command to s_client: `request()` never sends a
header line starting with one of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import pathlib
import random
import re
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, Final

import pytest

from tests.integration.conftest import ServerProcess
from tests.support.certs import HOSTNAME, CertFiles, make_cert
from tests.support.clients import client_context

MODES: Final[dict[str, list[str]]] = {
    "nomap": [],
    "no-nomap": ["--no-nomap"],
    "no-txcsum": ["--no-txcsum"],
    "no-ktls": ["--no-ktls"],
}
KTLS_MODES: Final = frozenset({"nomap", "no-nomap", "no-txcsum"})
KINDS: Final = ("ec", "rsa")
CLIENT_TIMEOUT: Final = 30.0  # seconds for any one client run or wait

BIG_PATH: Final = "/big.bin"
BIG: Final = random.Random(0x1A7E).randbytes(1 << 20)
SMALL_PATH: Final = "/small.txt"
SMALL: Final = b"nomapd interop: a small file for the first request\n" * 40

KEY_UPDATES_RX: Final = "ktls.key_updates_rx"  # client KeyUpdates the server received
KEY_UPDATES_TX: Final = "ktls.key_updates_tx"  # KeyUpdates the server sent


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------
# Suites
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Suite:
    version: str  # "TLSv1.3" or "TLSv1.2", as s_client and Python print it
    name: str  # OpenSSL's name (the IANA one for TLS 1.3)
    kind: str  # certificate: "ec" or "rsa"
    gnutls_cipher: str  # GnuTLS priority name of the AEAD

    @property
    def tls13(self) -> bool:
        return self.version == "TLSv1.3"

    @property
    def id(self) -> str:
        return f"{self.version}-{self.name}-{self.kind}"

    def s_client_args(self) -> list[str]:
        if self.tls13:
            return ["-tls1_3", "-ciphersuites", self.name]
        return ["-tls1_2", "-cipher", self.name]

    def gnutls_priority(self) -> str:
        if self.tls13:
            return f"NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+{self.gnutls_cipher}"
        kx = "ECDHE-ECDSA" if self.kind == "ec" else "ECDHE-RSA"
        return f"NORMAL:-VERS-ALL:+VERS-TLS1.2:-CIPHER-ALL:+{self.gnutls_cipher}:-KX-ALL:+{kx}"


_TLS13 = [
    ("TLS_AES_128_GCM_SHA256", "AES-128-GCM"),
    ("TLS_AES_256_GCM_SHA384", "AES-256-GCM"),
    ("TLS_CHACHA20_POLY1305_SHA256", "CHACHA20-POLY1305"),
]
_TLS12 = [
    ("AES128-GCM-SHA256", "AES-128-GCM"),
    ("AES256-GCM-SHA384", "AES-256-GCM"),
    ("CHACHA20-POLY1305", "CHACHA20-POLY1305"),
]
TLS13_SUITES: Final = [Suite("TLSv1.3", n, k, g) for k in KINDS for n, g in _TLS13]
TLS12_SUITES: Final = [
    Suite("TLSv1.2", f"ECDHE-{'ECDSA' if k == 'ec' else 'RSA'}-{n}", k, g)
    for k in KINDS
    for n, g in _TLS12
]
ALL_SUITES: Final = TLS13_SUITES + TLS12_SUITES
TLS13_ECDSA: Final = [s for s in TLS13_SUITES if s.kind == "ec"]


# ---------------------------------------------------------------------------
# Certificates, document root, servers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertFiles]:
    directory = tmp_path_factory.mktemp("interop-certs")
    return {kind: make_cert(directory, kind) for kind in KINDS}


@pytest.fixture(scope="session")
def docroot(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("interop-docroot")
    (root / BIG_PATH.lstrip("/")).write_bytes(BIG)
    (root / SMALL_PATH.lstrip("/")).write_bytes(SMALL)
    return root


def require(tool: str) -> str:
    """The tool's path; a missing tool fails the test (CI installs them: .ci/run)."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(
            f"{tool} is not on PATH; the interop tests need openssl, gnutls-cli "
            "(Debian: gnutls-bin), curl and stdbuf (coreutils)",
            pytrace=False,
        )
    return path


@dataclass(slots=True)
class Servers:
    """One nomapd per certificate type, all in the same NIC mode."""

    mode: str
    by_kind: dict[str, ServerProcess]
    certs: dict[str, CertFiles]

    def __getitem__(self, kind: str) -> ServerProcess:
        return self.by_kind[kind]

    @property
    def ktls(self) -> bool:
        return self.mode in KTLS_MODES


def _server_log(srv: ServerProcess) -> str:
    return "".join(list(srv.stderr_lines))


@pytest.fixture(scope="module", params=list(MODES))
def servers(
    request: pytest.FixtureRequest,
    docroot: pathlib.Path,
    certs: dict[str, CertFiles],
    state_dir: pathlib.Path,
) -> Iterator[Servers]:
    mode: str = request.param
    started: dict[str, ServerProcess] = {}
    try:
        for kind in KINDS:
            pair = certs[kind]
            args = [*MODES[mode], "--cert", pair.cert, "--key", pair.key]
            started[kind] = ServerProcess(docroot, args, state_dir)
    except BaseException:
        for srv in started.values():
            srv.stop()
        raise
    yield Servers(mode, started, certs)
    problems: list[str] = []
    for kind, srv in started.items():
        if srv.proc.poll() is None:
            try:
                srv.assert_no_leaks()
            except AssertionError as e:
                problems.append(f"{mode}/{kind}: {e}")
        srv.stop()
        if srv.proc.returncode != 0:
            problems.append(f"{mode}/{kind}: exit code {srv.proc.returncode}")
        if "Traceback" in srv.stderr:
            problems.append(f"{mode}/{kind}: Traceback in the server log")
    assert not problems, "\n".join(problems) + "\n" + "".join(s.stderr for s in started.values())


def finish(srv: ServerProcess) -> dict[str, Any]:
    """The end of every test: nothing in use, nothing logged as a Traceback."""
    stats = srv.assert_no_leaks()
    log = _server_log(srv)
    assert "Traceback" not in log, log
    return stats


def counter_delta(before: dict[str, Any], after: dict[str, Any], key: str) -> int:
    assert key in after, f"counter {key!r} is missing from /stats"
    return int(after[key]) - int(before.get(key, 0))


def assert_key_update_counters(
    servers: Servers, before: dict[str, Any], after: dict[str, Any], *, requested: bool
) -> None:
    """KTLS receives the client's one KeyUpdate, and answers it only if it was requested."""
    if not servers.ktls:
        return  # OpenSSL handles both directions in user space; nothing of KTLS's to count
    rx = counter_delta(before, after, KEY_UPDATES_RX)
    tx = counter_delta(before, after, KEY_UPDATES_TX)
    assert (rx, tx) == (1, 1 if requested else 0), (
        f"{KEY_UPDATES_RX} rose by {rx}, {KEY_UPDATES_TX} by {tx}"
    )


# ---------------------------------------------------------------------------
# Driving a client process, reading HTTP out of its stdout
# ---------------------------------------------------------------------------


class Client:
    """A client process fed through its stdin; stdout and stderr are collected as
    they arrive, so a test can wait for a response before sending the next line.
    stdin stays open until the client exits: s_client and gnutls-cli take its end
    as the user quitting."""

    def __init__(self, cmd: list[str]) -> None:
        self.cmd = cmd
        self.out = bytearray()
        self.err = bytearray()
        self.returncode: int | None = None
        self._cond = threading.Condition()
        self._open_streams = 2
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream: IO[bytes], buf: bytearray) -> None:
        fd = stream.fileno()
        while chunk := os.read(fd, 65536):
            with self._cond:
                buf += chunk
                self._cond.notify_all()
        with self._cond:
            self._open_streams -= 1
            self._cond.notify_all()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close_stdin()
        for t in self._threads:
            t.join(timeout=5)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()

    def _close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise AssertionError(f"the client exited before taking {data!r}\n{self}") from None

    def wait_for(self, what: str, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds (it reads `out`/`err`; called under the lock)."""
        with self._cond:
            done = self._cond.wait_for(
                lambda: predicate() or self._open_streams == 0, CLIENT_TIMEOUT
            )
            if done and predicate():
                return
        why = "the client closed its output" if done else f"not within {CLIENT_TIMEOUT:.0f}s"
        raise AssertionError(f"waiting for {what}: {why}\n{self}")

    def wait_exit(self) -> int:
        """Wait for the client to exit by itself (the server closed the connection)."""
        try:
            self.returncode = self.proc.wait(timeout=CLIENT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"the client did not exit within {CLIENT_TIMEOUT:.0f}s\n{self}"
            ) from None
        self._close_stdin()
        for t in self._threads:
            t.join(timeout=5)
        return self.returncode

    def __str__(self) -> str:
        def tail(b: bytearray) -> str:
            text = bytes(b[-3000:]).decode("utf-8", "replace")
            return "".join(c if c.isprintable() or c in "\n\t" else "." for c in text)

        return (
            f"command: {' '.join(self.cmd)}\nexit code: {self.proc.returncode}\n"
            f"--- stderr (last 3000 bytes)\n{tail(self.err)}\n"
            f"--- stdout (last 3000 bytes, unprintable as '.')\n{tail(self.out)}"
        )


def request(path: str, *, close: bool) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {HOSTNAME}", "User-Agent: nomapd-interop"]
    if close:
        lines.append("Connection: close")
    # s_client takes a read starting with Q, R, k or K as a command, not data.
    assert not any(line.startswith(("Q", "R", "k", "K")) for line in lines)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    end: int  # offset in the client's stdout just past the body


_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


def parse_response(out: bytes | bytearray, start: int = 0) -> Response | None:
    """The first complete HTTP/1.1 response at or after `start` in a client's
    stdout (after its own session lines), or None if none has fully arrived."""
    m = _STATUS_LINE.search(out, start)
    if m is None:
        return None
    head_end = out.find(b"\r\n\r\n", m.end() - 2)
    if head_end < 0:
        return None
    headers: dict[str, str] = {}
    for line in bytes(out[m.end() : head_end]).split(b"\r\n"):
        if line:
            name, sep, value = line.partition(b":")
            assert sep, f"malformed header line {line!r}"
            headers[name.decode().strip().lower()] = value.decode().strip()
    assert "content-length" in headers, f"no Content-Length: {headers}"
    body_start = head_end + 4
    end = body_start + int(headers["content-length"])
    if len(out) < end:
        return None
    return Response(int(m.group(1)), headers, bytes(out[body_start:end]), end)


def assert_body(resp: Response | None, expected: bytes, client: Client) -> Response:
    assert resp is not None, f"no complete HTTP response in the client's output\n{client}"
    assert resp.status == 200, (resp.status, resp.headers)
    assert len(resp.body) == len(expected), f"{len(resp.body)} bytes, not {len(expected)}"
    assert _sha(resp.body) == _sha(expected), "body differs from the file (sha256)"
    return resp


# ---------------------------------------------------------------------------
# Command lines
# ---------------------------------------------------------------------------


def s_client_cmd(servers: Servers, kind: str, *extra: str) -> list[str]:
    """s_client verifying the server's certificate against the one it was given."""
    return [
        require("stdbuf"), "-oL",
        require("openssl"), "s_client",
        "-connect", f"127.0.0.1:{servers[kind].port}",
        "-servername", HOSTNAME,
        "-CAfile", servers.certs[kind].cert,
        "-verify_return_error", "-verify_hostname", HOSTNAME,
        *extra,
    ]  # fmt: skip


def gnutls_cmd(srv: ServerProcess, priority: str, *extra: str) -> list[str]:
    return [
        require("gnutls-cli"), "--insecure", "--port", str(srv.port),
        "--priority", priority, *extra, "127.0.0.1",
    ]  # fmt: skip


_S_CLIENT_SESSION = re.compile(rb"^(New|Reused), (TLSv1\.[23]), Cipher is (\S+)$", re.M)
_S_CLIENT_KEY = {"ec": b"Server public key is 256 bit", "rsa": b"Server public key is 2048 bit"}


def assert_s_client_negotiated(client: Client, suite: Suite, how: str = "New") -> None:
    got = _S_CLIENT_SESSION.findall(client.out)
    want = (how.encode(), suite.version.encode(), suite.name.encode())
    assert got == [want], f"s_client negotiated {got}, expected {want}\n{client}"
    assert b"Verify return code: 0 (ok)" in client.out, str(client)
    assert _S_CLIENT_KEY[suite.kind] in client.out, str(client)


_GNUTLS_DESCRIPTION = re.compile(
    rb"^- Description: \((TLS1\.[23])[^)]*\)-\(([^)]*)\)-\(([^)]*)\)-\(([^)]*)\)$", re.M
)


def assert_gnutls_negotiated(client: Client, suite: Suite) -> None:
    m = _GNUTLS_DESCRIPTION.search(client.out)
    assert m is not None, f"no session description from gnutls-cli\n{client}"
    version, _kx, sig, cipher = (g.decode() for g in m.groups())
    assert version == suite.version.replace("v", ""), m.group(0)
    assert cipher == suite.gnutls_cipher, m.group(0)
    assert sig.startswith("ECDSA" if suite.kind == "ec" else "RSA"), m.group(0)


# ---------------------------------------------------------------------------
# openssl s_client: every suite, both certificate types for TLS 1.3
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("suite", ALL_SUITES, ids=[s.id for s in ALL_SUITES])
def test_s_client_suite(servers: Servers, suite: Suite) -> None:
    srv = servers[suite.kind]
    with Client(s_client_cmd(servers, suite.kind, *suite.s_client_args())) as c:
        c.send(request(BIG_PATH, close=True))
        rc = c.wait_exit()
    assert_body(parse_response(c.out), BIG, c)
    assert_s_client_negotiated(c, suite)
    assert rc == 0, str(c)  # the server's close_notify ended it: "closed"
    finish(srv)


# ---------------------------------------------------------------------------
# gnutls-cli: every suite by --priority
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("suite", ALL_SUITES, ids=[s.id for s in ALL_SUITES])
def test_gnutls_suite(servers: Servers, suite: Suite) -> None:
    srv = servers[suite.kind]
    with Client(gnutls_cmd(srv, suite.gnutls_priority())) as c:
        c.send(request(BIG_PATH, close=True))
        rc = c.wait_exit()
    assert_body(parse_response(c.out), BIG, c)
    assert_gnutls_negotiated(c, suite)
    assert b"- Peer has closed the GnuTLS connection" in c.out, str(c)
    assert rc == 0, str(c)
    finish(srv)


# ---------------------------------------------------------------------------
# curl: both versions, both certificate types, two transfers on one connection
# ---------------------------------------------------------------------------

CURL_VERSIONS: Final = {"TLSv1.2": ["--tlsv1.2", "--tls-max", "1.2"], "TLSv1.3": ["--tlsv1.3"]}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("version", list(CURL_VERSIONS))
def test_curl(servers: Servers, version: str, kind: str, tmp_path: pathlib.Path) -> None:
    srv = servers[kind]
    small, big = tmp_path / "small", tmp_path / "big"
    res = subprocess.run(
        [require("curl"), "-sSkv", "--max-time", str(CLIENT_TIMEOUT), *CURL_VERSIONS[version],
         "-w", "%{http_code} %{num_connects}\\n",
         "-o", str(small), srv.url(SMALL_PATH), "-o", str(big), srv.url(BIG_PATH)],
        capture_output=True, timeout=CLIENT_TIMEOUT + 5, check=False,
    )  # fmt: skip
    err = res.stderr.decode("utf-8", "replace")
    assert res.returncode == 0, err
    # One connect for the first transfer, none for the second: the connection was kept.
    assert res.stdout == b"200 1\n200 0\n", (res.stdout, err)
    m = re.search(r"SSL connection using (TLSv1\.[23]) / (\S+)", err)
    assert m is not None, err
    assert m.group(1) == version, m.group(0)
    names = {s.name for s in ALL_SUITES if s.version == version and s.kind == kind}
    assert m.group(2) in names, m.group(0)
    assert _sha(small.read_bytes()) == _sha(SMALL)
    assert _sha(big.read_bytes()) == _sha(BIG)
    finish(srv)


# ---------------------------------------------------------------------------
# Python's ssl: keep-alive, then close_notify both ways
# ---------------------------------------------------------------------------

PY_VERSIONS: Final = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("version", list(PY_VERSIONS))
def test_python_ssl_keepalive_and_close_notify(servers: Servers, version: str, kind: str) -> None:
    srv = servers[kind]
    # Full verification against the certificate, by its IP address SAN.
    ctx = client_context(cafile=servers.certs[kind].cert, version=PY_VERSIONS[version])
    conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=CLIENT_TIMEOUT)
    try:
        conn.request("GET", SMALL_PATH)
        resp = conn.getresponse()
        assert (resp.status, _sha(resp.read())) == (200, _sha(SMALL))
        assert resp.getheader("Connection") is None
        first = conn.sock
        conn.request("GET", BIG_PATH)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200
        assert _sha(body) == _sha(BIG)
        sock = conn.sock
        assert sock is first, "http.client opened a second connection"
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.version() == version
        cipher = sock.cipher()
        assert cipher is not None
        assert cipher[0] in {s.name for s in ALL_SUITES if s.version == version and s.kind == kind}
        # unwrap(): our close_notify, then wait for the server's. A server that just
        # closed the TCP connection would make this raise (EOF in violation of protocol).
        raw: socket.socket = sock.unwrap()
        try:
            raw.settimeout(CLIENT_TIMEOUT)
            assert raw.recv(1) == b"", "bytes after the server's close_notify"
        finally:
            raw.close()
    finally:
        conn.close()
    finish(srv)


# ---------------------------------------------------------------------------
# Resumption with s_client -sess_out / -sess_in
# ---------------------------------------------------------------------------

RESUME_SUITES: Final = [
    Suite("TLSv1.3", "TLS_AES_256_GCM_SHA384", "ec", "AES-256-GCM"),
    Suite("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256", "rsa", "CHACHA20-POLY1305"),
    Suite("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", "ec", "AES-128-GCM"),
    Suite("TLSv1.2", "ECDHE-RSA-CHACHA20-POLY1305", "rsa", "CHACHA20-POLY1305"),
]


@pytest.mark.parametrize("suite", RESUME_SUITES, ids=[s.id for s in RESUME_SUITES])
def test_s_client_resumption(servers: Servers, suite: Suite, tmp_path: pathlib.Path) -> None:
    srv = servers[suite.kind]
    sess = tmp_path / "session.pem"
    # A response is read before the connection ends: TLS 1.3 tickets come after
    # the handshake, and s_client writes -sess_out when one arrives.
    with Client(
        s_client_cmd(servers, suite.kind, *suite.s_client_args(), "-sess_out", str(sess))
    ) as c:
        c.send(request(SMALL_PATH, close=True))
        rc = c.wait_exit()
    assert_body(parse_response(c.out), SMALL, c)
    assert_s_client_negotiated(c, suite, "New")
    assert rc == 0, str(c)
    assert sess.exists() and b"BEGIN SSL SESSION PARAMETERS" in sess.read_bytes(), str(c)

    with Client(
        s_client_cmd(servers, suite.kind, *suite.s_client_args(), "-sess_in", str(sess))
    ) as c:
        c.send(request(BIG_PATH, close=True))
        rc = c.wait_exit()
    assert_body(parse_response(c.out), BIG, c)
    assert_s_client_negotiated(c, suite, "Reused")
    assert rc == 0, str(c)
    finish(srv)


# ---------------------------------------------------------------------------
# TLS 1.3 KeyUpdate in the middle of a kept-alive connection
# ---------------------------------------------------------------------------

_MSG_KEY_UPDATE = re.compile(
    rb"^(<<<|>>>) TLS 1\.3, Handshake \[length [0-9a-f]+\], KeyUpdate$", re.M
)


@pytest.mark.parametrize("requested", [False, True], ids=["k-not-requested", "K-requested"])
@pytest.mark.parametrize("suite", TLS13_ECDSA, ids=[s.name for s in TLS13_ECDSA])
def test_s_client_key_update(
    servers: Servers, suite: Suite, requested: bool, tmp_path: pathlib.Path
) -> None:
    srv = servers[suite.kind]
    before = srv.idle_stats()
    msgs = tmp_path / "msg.txt"
    cmd = s_client_cmd(servers, suite.kind, *suite.s_client_args(), "-msg", "-msgfile", str(msgs))
    with Client(cmd) as c:
        c.send(request(SMALL_PATH, close=False))
        c.wait_for("response 1", lambda: parse_response(c.out) is not None)
        first = assert_body(parse_response(c.out), SMALL, c)
        c.send(b"K\n" if requested else b"k\n")
        c.wait_for("s_client's KEYUPDATE", lambda: b"KEYUPDATE" in c.err)
        c.send(request(BIG_PATH, close=True))
        rc = c.wait_exit()
    assert_s_client_negotiated(c, suite)
    assert_body(parse_response(c.out, first.end), BIG, c)
    assert rc == 0, str(c)
    # What went over the wire, from s_client's message trace: one KeyUpdate from the
    # client, and one from the server only when the client asked for it.
    directions = _MSG_KEY_UPDATE.findall(msgs.read_bytes())
    assert directions.count(b">>>") == 1, directions
    assert directions.count(b"<<<") == (1 if requested else 0), directions
    after = finish(srv)
    assert_key_update_counters(servers, before, after, requested=requested)


_GNUTLS_SENT = re.compile(rb"sending key update \((\d)\)")
_GNUTLS_RECEIVED = re.compile(rb"received TLS 1\.3 key update \((\d)\)")


@pytest.mark.parametrize("command", ["^rekey1^", "^rekey^"], ids=["rekey1-local", "rekey-both"])
@pytest.mark.parametrize("suite", TLS13_ECDSA, ids=[s.name for s in TLS13_ECDSA])
def test_gnutls_key_update(servers: Servers, suite: Suite, command: str) -> None:
    """gnutls-cli's inline commands: ^rekey1^ updates our keys only (KeyUpdate
    update_not_requested), ^rekey^ asks the peer to update too (update_requested).
    -d 4 logs the KeyUpdate messages to stderr."""
    requested = command == "^rekey^"
    srv = servers[suite.kind]
    before = srv.idle_stats()
    cmd = gnutls_cmd(srv, suite.gnutls_priority(), "--inline-commands", "-d", "4")
    with Client(cmd) as c:
        c.send(request(SMALL_PATH, close=False))
        c.wait_for("response 1", lambda: parse_response(c.out) is not None)
        first = assert_body(parse_response(c.out), SMALL, c)
        c.send(command.encode() + b"\n")  # an inline command is a line of its own, LF only
        c.wait_for("gnutls-cli's rekey", lambda: b"- Rekey was completed" in c.out)
        c.send(request(BIG_PATH, close=True))
        rc = c.wait_exit()
    assert_gnutls_negotiated(c, suite)
    assert_body(parse_response(c.out, first.end), BIG, c)
    assert rc == 0, str(c)
    assert _GNUTLS_SENT.findall(c.err) == [b"1" if requested else b"0"], str(c)
    assert _GNUTLS_RECEIVED.findall(c.err) == ([b"0"] if requested else []), str(c)
    after = finish(srv)
    assert_key_update_counters(servers, before, after, requested=requested)
