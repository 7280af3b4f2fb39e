"""Shared pieces of the ktls tests: the suites, a TLS pair over memory BIOs, and a
modeled kernel connection whose NIC output is fed to a real TLS client.

Theory of operation
-------------------
`TlsPair` joins a server `ktls.handshake.TlsHandshake` (pyOpenSSL) and a client
`ssl.SSLObject` (the stdlib's OpenSSL) with two `ssl.MemoryBIO`s, the way
h11's `ConnectionPair` joins two endpoints: no socket anywhere.

`KtlsConn` is what the server does after the hand-off: a `ConnectionPair`
(tests/support/pair.py) whose socket has a `KtlsSession` made from the
handshake's keys, first sequence number `Established.tx_seq`, and whose wire
feeds the client's incoming BIO. Every byte that reached the client is kept in
`wire`, so a test can also open the records itself, with
tests/support/tlsseal.py rather than ktls's record code.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from OpenSSL import SSL

from ktls.handshake import Established, TlsHandshake, make_server_context
from ktls.session import KtlsSession
from ktls.suites import SUITES, CipherSuite, TlsVersion
from ktls.workers import KtlsWorkers
from mbuf.kern import Kernel
from tests.support import clients
from tests.support.certs import HOSTNAME, CertFiles
from tests.support.pair import ConnectionPair, Peer, new_socket
from tests.support.tlsseal import CT_CHANGE_CIPHER_SPEC, MAX_PLAINTEXT, parse_records

PHYS_MEM: Final = 16 * 1024 * 1024  # 4096 page frames: far more than any test needs
SNDBUF: Final = 256 * 1024


# ---------------------------------------------------------------------------
# The nine suites ktls offloads
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    """One negotiable suite and the certificate type a server needs for it."""

    cipher: str
    cert_kind: str

    @property
    def suite(self) -> CipherSuite:
        return SUITES[self.cipher]

    @property
    def version(self) -> TlsVersion:
        return self.suite.version

    @property
    def id(self) -> str:
        return f"{self.version.name}-{self.cipher}"


def _kind_for(suite: CipherSuite) -> str:
    return "rsa" if "-RSA-" in suite.openssl_name else "ec"


CASES: Final = [Case(s.openssl_name, _kind_for(s)) for s in SUITES.values()]
CASE_IDS: Final = [c.id for c in CASES]
TLS12_CASES: Final = [c for c in CASES if c.version is TlsVersion.TLS12]
TLS13_CASES: Final = [c for c in CASES if c.version is TlsVersion.TLS13]


class ServerContexts:
    """`make_server_context` per certificate type, narrowed per TLS 1.3 suite.

    The stdlib client cannot restrict TLS 1.3 suites (SSLContext.set_ciphers
    only covers TLS 1.2), so a TLS 1.3 case gets its own server context that
    offers just that suite. TLS 1.2 cases narrow on the client side.
    """

    def __init__(self, certs: dict[str, CertFiles]) -> None:
        self.certs = certs
        self._cache: dict[str, SSL.Context] = {}

    def fresh(
        self, kind: str, *, keylog_sink: Callable[[bytes], None] | None = None
    ) -> SSL.Context:
        files = self.certs[kind]
        return make_server_context(files.cert, files.key, keylog_sink=keylog_sink)

    def for_case(self, case: Case) -> SSL.Context:
        ctx = self._cache.get(case.id)
        if ctx is None:
            ctx = self.fresh(case.cert_kind)
            if case.version is TlsVersion.TLS13:
                ctx.set_tls13_ciphersuites(case.cipher.encode())
            self._cache[case.id] = ctx
        return ctx


def client_context(
    case: Case, certs: dict[str, CertFiles], alpn: list[str] | None = None
) -> ssl.SSLContext:
    """A verifying stdlib client limited to the case's version (and TLS 1.2 suite)."""
    if case.version is TlsVersion.TLS13:
        return clients.client_context(
            cafile=certs[case.cert_kind].cert, version=ssl.TLSVersion.TLSv1_3, alpn=alpn
        )
    return clients.client_context(
        cafile=certs[case.cert_kind].cert,
        version=ssl.TLSVersion.TLSv1_2,
        cipher=case.cipher,
        alpn=alpn,
    )


# ---------------------------------------------------------------------------
# The TLS pair
# ---------------------------------------------------------------------------


class TlsPair:
    """A server TlsHandshake and a stdlib client over memory BIOs."""

    def __init__(
        self,
        server_ctx: SSL.Context,
        client_ctx: ssl.SSLContext,
        *,
        session: ssl.SSLSession | None = None,
    ) -> None:
        self.hs = TlsHandshake(server_ctx)
        self.c_in = ssl.MemoryBIO()
        self.c_out = ssl.MemoryBIO()
        self.client = client_ctx.wrap_bio(
            self.c_in, self.c_out, server_hostname=HOSTNAME, session=session
        )
        self.flights: list[bytes] = []  # server output of each advance()
        self.completing_flight = b""  # output of the advance() that finished
        self.server_stream = bytearray()

    def to_client(self, data: bytes | bytearray) -> None:
        if data:
            self.c_in.write(bytes(data))

    def server_out(self) -> bytes:
        out = self.hs.data_to_send()
        self.server_stream += out
        return out

    def handshake(self) -> None:
        client_done = False
        for _ in range(8):
            if not client_done:
                try:
                    self.client.do_handshake()
                    client_done = True
                except ssl.SSLWantReadError:
                    pass
            was_done = self.hs.done
            self.hs.receive_data(self.c_out.read())
            self.hs.advance()
            out = self.server_out()
            self.flights.append(out)
            if self.hs.done and not was_done:
                self.completing_flight = out
            self.to_client(out)
            if client_done and self.hs.done:
                return
        raise AssertionError("handshake did not finish in 8 round trips")

    def client_read(self) -> bytes:
        """Everything the client can decrypt now (SSLError propagates)."""
        got = bytearray()
        while True:
            try:
                chunk = self.client.read(1 << 20)
            except ssl.SSLWantReadError:
                return bytes(got)
            if not chunk:
                return bytes(got)
            got += chunk

    def app_key_records(self) -> int:
        """Records the server wrote under its application keys, counted from the
        protocol rather than by decryption: TLS 1.2, everything after its last
        ChangeCipherSpec (the Finished); TLS 1.3, everything written once the
        client's Finished arrived (NewSessionTickets)."""
        if self.hs.conn.get_protocol_version_name() == "TLSv1.3":
            return len(parse_records(self.completing_flight))
        types = [h[0] for h, _ in parse_records(self.server_stream)]
        last_ccs = max(i for i, t in enumerate(types) if t == CT_CHANGE_CIPHER_SPEC)
        return len(types) - last_ccs - 1


def handshake(
    contexts: ServerContexts,
    certs: dict[str, CertFiles],
    case: Case,
    *,
    alpn: list[str] | None = None,
) -> TlsPair:
    pair = TlsPair(contexts.for_case(case), client_context(case, certs, alpn))
    pair.handshake()
    return pair


# ---------------------------------------------------------------------------
# The kernel side after the hand-off
# ---------------------------------------------------------------------------


class KtlsConn(ConnectionPair):
    """A kernel socket with a KTLS session whose NIC output goes to `peer`."""

    def __init__(
        self,
        kern: Kernel,
        workers: KtlsWorkers,
        est: Established,
        peer: Peer,
        *,
        sndbuf: int = SNDBUF,
        max_frame_len: int = MAX_PLAINTEXT,
    ) -> None:
        tls = KtlsSession(
            kern, workers, est.suite, est.tx.key, est.tx.iv, max_frame_len=max_frame_len
        )
        super().__init__(new_socket(kern, sndbuf), peer, tls=tls, seqno=est.tx_seq)
        self.est = est
        self.tls: KtlsSession = tls
