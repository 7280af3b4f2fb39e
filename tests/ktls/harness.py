"""Shared pieces of the ktls tests: certificates, a TLS pair over memory BIOs, and a
modeled kernel connection whose NIC output is fed to a real TLS client.

Theory of operation
-------------------
`TlsPair` joins a server `ktls.handshake.TlsHandshake` (pyOpenSSL) and a client
`ssl.SSLObject` (the stdlib's OpenSSL) with two `ssl.MemoryBIO`s, the way
h11's `ConnectionPair` joins two endpoints: no socket anywhere.

`KtlsConn` is what the server does after the hand-off: a `KtlsSession` on a
kernel `Socket` whose first sequence number is `Established.tx_seq`. `pump()`
is the NIC and the wire: `tcp_output`, the transmit queue's scatter-gather
list into the client's incoming BIO (optionally in small pieces, so that
`IfTxQueue.complete` and `sbdrop` see partial packets and partial records),
then `tcp_acked`. Every byte that reached the client is kept in `wire`, so a
test can also parse the records itself.

`open_record` decrypts one record on its own, and `Sealer` builds the client's
records (well-formed or not), written from RFC 8446 5.2/5.3, RFC 5288 3 and
RFC 7905 2 with `cryptography` directly, so the tests do not check ktls's
record code with ktls's record code; `hkdf_expand_label` (RFC 8446 7.1) gives
them TLS 1.3 traffic keys and KeyUpdate secrets the same way.
"""

from __future__ import annotations

import datetime
import hmac
import pathlib
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from ktls.handshake import Established, TlsHandshake, make_server_context
from ktls.keys import TrafficKeys
from ktls.session import KtlsSession
from ktls.suites import SUITES, CipherSuite, TlsVersion
from ktls.workers import KtlsWorkers
from mbuf.kern import Kernel
from mbuf.sendfile import SendfileJob, SendfileStatus, sendfile_step, vm_pager_iodone
from mbuf.socket import Socket, soclose
from mbuf.tcp_output import TcpCb, tcp_acked, tcp_output
from mbuf.vm_object import PagerRequest, VmObject

HOSTNAME: Final = "localhost"
PHYS_MEM: Final = 16 * 1024 * 1024  # 4096 page frames: far more than any test needs
SNDBUF: Final = 256 * 1024
MAX_PLAINTEXT: Final = 16384  # RFC 8446 5.1 / RFC 5246 6.2.1: 2^14
CT_CHANGE_CIPHER_SPEC: Final = 20
CT_ALERT: Final = 21
CT_HANDSHAKE: Final = 22
CT_APPLICATION_DATA: Final = 23
HT_CLIENT_HELLO: Final = 1  # RFC 8446 4 / RFC 5246 7.4 HandshakeType
HT_NEW_SESSION_TICKET: Final = 4
HT_KEY_UPDATE: Final = 24
LOCALHOST: Final = 0x7F000001


# ---------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertFiles:
    cert: str
    key: str


def make_cert(directory: pathlib.Path, kind: str) -> CertFiles:
    """A self-signed certificate for HOSTNAME: kind "ec" (P-256) or "rsa" (2048)."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    elif kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(f"unknown key kind {kind!r}")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTNAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOSTNAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / f"{kind}-cert.pem"
    key_path = directory / f"{kind}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return CertFiles(str(cert_path), str(key_path))


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
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(certs[case.cert_kind].cert)
    if case.version is TlsVersion.TLS13:
        cctx.minimum_version = cctx.maximum_version = ssl.TLSVersion.TLSv1_3
    else:
        cctx.minimum_version = cctx.maximum_version = ssl.TLSVersion.TLSv1_2
        cctx.set_ciphers(case.cipher)
    if alpn is not None:
        cctx.set_alpn_protocols(alpn)
    return cctx


# ---------------------------------------------------------------------------
# Records, parsed and opened independently of ktls
# ---------------------------------------------------------------------------


def parse_records(data: bytes | bytearray) -> list[tuple[bytes, bytes]]:
    """(5-byte header, body) of each record; the stream must end on a record boundary."""
    out = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 5, "stream ends inside a record header"
        (length,) = struct.unpack_from("!H", data, pos + 3)
        assert len(data) - pos - 5 >= length, "stream ends inside a record body"
        out.append((bytes(data[pos : pos + 5]), bytes(data[pos + 5 : pos + 5 + length])))
        pos += 5 + length
    return out


def _xor_seq(iv: bytes, seqno: int) -> bytes:
    return bytes(a ^ b for a, b in zip(iv, seqno.to_bytes(12, "big"), strict=True))


def open_record(
    suite: CipherSuite, keys: TrafficKeys, seqno: int, header: bytes, body: bytes
) -> tuple[int, bytes]:
    """Decrypt one record: (content type, plaintext). Raises InvalidTag."""
    aead = suite.aead(keys.key)
    if suite.version is TlsVersion.TLS13:
        inner = aead.decrypt(_xor_seq(keys.iv, seqno), body, header).rstrip(b"\0")
        return inner[-1], inner[:-1]
    if suite.explicit_nonce_len:  # AES-GCM: salt || explicit nonce carried in the record
        nonce = keys.iv + body[:8]
        ct = body[8:]
    else:  # ChaCha20-Poly1305: iv XOR seqno, as in TLS 1.3
        nonce = _xor_seq(keys.iv, seqno)
        ct = body
    aad = seqno.to_bytes(8, "big") + header[:3] + (len(ct) - 16).to_bytes(2, "big")
    return header[0], aead.decrypt(nonce, ct, aad)


def hkdf_expand_label(
    hash_alg: type[hashes.HashAlgorithm], secret: bytes, label: bytes, length: int
) -> bytes:
    """HKDF-Expand-Label(secret, label, "", length) of RFC 8446 7.1."""
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    return HKDFExpand(hash_alg(), length, info).derive(secret)


def tls13_keys(suite: CipherSuite, secret: bytes) -> TrafficKeys:
    """A TLS 1.3 traffic secret's record key and IV (RFC 8446 7.3)."""
    return TrafficKeys(
        hkdf_expand_label(suite.hash, secret, b"key", suite.key_len),
        hkdf_expand_label(suite.hash, secret, b"iv", 12),
    )


def tls13_next_secret(suite: CipherSuite, secret: bytes) -> bytes:
    """application_traffic_secret_N+1 (RFC 8446 7.2)."""
    return hkdf_expand_label(suite.hash, secret, b"traffic upd", len(secret))


def tls12_client_keys(
    suite: CipherSuite, master: bytes, client_random: bytes, server_random: bytes
) -> TrafficKeys:
    """The client write key and IV of a TLS 1.2 AEAD suite (RFC 5246 5 and 6.3:
    P_hash over "key expansion"; client key, server key, client IV, server IV)."""
    seed = b"key expansion" + server_random + client_random
    k, i = suite.key_len, suite.fixed_iv_len
    block = b""
    a = seed
    while len(block) < 2 * (k + i):
        a = hmac.digest(master, a, suite.hash().name)
        block += hmac.digest(master, a + seed, suite.hash().name)
    return TrafficKeys(block[:k], block[2 * k : 2 * k + i])


def key_update(request: int) -> bytes:
    """A KeyUpdate handshake message (RFC 8446 4.6.3)."""
    return bytes((HT_KEY_UPDATE, 0, 0, 1, request))


class Sealer:
    """One direction's records as a peer writes them: sequence numbers counted,
    TLS 1.3 padding on request, KeyUpdate moving to the next secret."""

    def __init__(
        self, suite: CipherSuite, keys: TrafficKeys, seqno: int = 0, secret: bytes | None = None
    ) -> None:
        self.suite = suite
        self.keys = keys
        self.seqno = seqno
        self.secret = secret  # TLS 1.3 traffic secret, for key_update()

    def inner(self, inner: bytes) -> bytes:
        """TLS 1.3: seal a TLSInnerPlaintext as given (content, type, zeros)."""
        assert self.suite.version is TlsVersion.TLS13
        header = struct.pack("!BHH", CT_APPLICATION_DATA, 0x0303, len(inner) + 16)
        body = self.suite.aead(self.keys.key).encrypt(
            _xor_seq(self.keys.iv, self.seqno), inner, header
        )
        self.seqno += 1
        return header + body

    def record(self, ctype: int, payload: bytes, pad: int = 0) -> bytes:
        """A record of `ctype` carrying `payload` (TLS 1.3: `pad` zero bytes after
        the inner content type)."""
        if self.suite.version is TlsVersion.TLS13:
            return self.inner(payload + bytes((ctype,)) + bytes(pad))
        assert pad == 0
        aead = self.suite.aead(self.keys.key)
        aad = self.seqno.to_bytes(8, "big") + struct.pack("!BHH", ctype, 0x0303, len(payload))
        if self.suite.explicit_nonce_len:  # RFC 5288 3: salt || explicit, explicit = seqno
            explicit = self.seqno.to_bytes(8, "big")
            body = explicit + aead.encrypt(self.keys.iv + explicit, payload, aad)
        else:  # RFC 7905 2
            body = aead.encrypt(_xor_seq(self.keys.iv, self.seqno), payload, aad)
        self.seqno += 1
        return struct.pack("!BHH", ctype, 0x0303, len(body)) + body

    def data(self, payload: bytes, pad: int = 0) -> bytes:
        return self.record(CT_APPLICATION_DATA, payload, pad)

    def alert(self, level: int, description: int, pad: int = 0) -> bytes:
        return self.record(CT_ALERT, bytes((level, description)), pad)

    def next_keys(self) -> None:
        """Move to the next traffic secret (after sending a KeyUpdate)."""
        assert self.secret is not None
        self.secret = tls13_next_secret(self.suite, self.secret)
        self.keys = tls13_keys(self.suite, self.secret)
        self.seqno = 0

    def key_update(self, request: int = 0, pad: int = 0) -> bytes:
        """A KeyUpdate record under the current keys; later records use the next."""
        out = self.record(CT_HANDSHAKE, key_update(request), pad)
        self.next_keys()
        return out


def plaintext_len(suite: CipherSuite, body: bytes) -> int:
    """Payload bytes a record of this suite carries (TLS 1.3: no padding is used)."""
    return len(body) - suite.tls_hlen + 5 - suite.tls_tlen


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


class Client(Protocol):
    """Where KtlsConn delivers: a TLS client over memory BIOs (`TlsPair`, or one
    with another client library)."""

    def to_client(self, data: bytes | bytearray) -> None: ...

    def client_read(self) -> bytes: ...


class KtlsConn:
    """A kernel socket with a KTLS session whose NIC output goes to `pair.client`."""

    def __init__(
        self,
        kern: Kernel,
        workers: KtlsWorkers,
        est: Established,
        pair: Client,
        *,
        sndbuf: int = SNDBUF,
        max_frame_len: int = MAX_PLAINTEXT,
    ) -> None:
        self.kern = kern
        self.pair = pair
        self.est = est
        self.tls = KtlsSession(
            kern, workers, est.suite, est.tx.key, est.tx.iv, max_frame_len=max_frame_len
        )
        self.so = Socket(kern, TcpCb(LOCALHOST, LOCALHOST, 8443, 50000, 1000), sndbuf)
        self.so.so_snd.sb_tls_info = self.tls
        self.so.so_snd.sb_tls_seqno = est.tx_seq
        self.wire = bytearray()

    def pump(
        self, chunk: int | None = None, deliver: Callable[[bytes], bytes] | None = None
    ) -> int:
        """tcp_output, then move the NIC queue to the client (`chunk` bytes per
        sendmsg if given); `deliver` may rewrite the bytes on their way."""
        so = self.so
        moved = 0
        tcp_output(so)
        while not so.so_txq.empty():
            data = b"".join(so.so_txq.pending_iov())
            if chunk is not None:
                data = data[:chunk]
            n = len(data)
            self.wire += data
            self.pair.to_client(deliver(data) if deliver is not None else data)
            so.so_txq.complete(n)
            tcp_acked(so, n)
            moved += n
            tcp_output(so)
        return moved

    def sendfile(
        self,
        obj: VmObject,
        fd: int,
        offset: int,
        nbytes: int,
        head: bytes = b"",
        chunk: int | None = None,
    ) -> bytes:
        """Run one sendfile to completion with page-ins done inline; returns what
        the client decrypted meanwhile."""
        job = SendfileJob(self.so, obj, fd, offset, nbytes, head)
        got = bytearray()
        for _ in range(10_000):
            io: list[PagerRequest] = []
            status = sendfile_step(job, io)
            for req in io:
                req.run()
                vm_pager_iodone(self.kern, req)
            self.pump(chunk)
            got += self.pair.client_read()
            if status is SendfileStatus.DONE:
                break
            assert status is SendfileStatus.NEED_SPACE, status
        else:
            raise AssertionError("sendfile made no progress")
        self.pump(chunk)
        got += self.pair.client_read()
        return bytes(got)

    def close(self) -> None:
        soclose(self.so)
        self.tls.free()
