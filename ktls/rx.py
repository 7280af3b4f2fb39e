"""KTLS receive: decrypting the client's records (FreeBSD 13's KTLS RX).

Theory of operation. FreeBSD 13 added a receive side to kernel TLS
(`ktls_enable_rx`): after the handshake, user space hands the kernel the
peer's keys and next sequence number with `setsockopt(TCP_RXTLS_ENABLE)`.
Incoming TCP data then collects as whole records (`sb_mtls`); `ktls_check_rx`
looks at each record header as soon as it is there, so a record that claims to
be too long is refused before its body arrives; `ktls_decrypt` opens each
complete record and hands it to the reader with its type in a `TLS_GET_RECORD`
control message. What a non-data record means (alerts, post-handshake
messages) is user space's business (`ktls.control`); the kernel only decrypts
and checks.

`KtlsRxSession` is that kernel part, sans-IO, two ways:
* in the receive buffer, as the kernel does it: tcp_input appends the
  client's segments to `sb_mtls` and calls `ktls_check_rx`, which decrypts
  each whole record in place in its clusters and moves it to `sb_mb` with its
  type (`sbappendcontrol`); `soreceive` hands the records up with the 5-byte
  header OpenSSL's `ktls_read_record` rebuilds from the control message, and
  `TlsControl.receive_records` acts on them. A refused record stops
  decryption and is kept in `error`, which the reader gets after the records
  before it;
* on bytes (`feed`, then `next_record` until it returns None), for tests and
  tools that have no socket.

Errors are `RecordError`s carrying the alert user space must send: `record_overflow`
for a record longer than the version allows (RFC 8446 5.2: 2^14 + 256 bytes
of ciphertext; RFC 5246 6.2.3: 2^14 + 2048) or whose plaintext is over 2^14,
`bad_record_mac` for one that does not open (the kernel's EBADMSG),
`unexpected_message` for a record type that cannot come protected, and
for a record version other than 0x0303 `protocol_version` (TLS 1.2) or
`decode_error` (TLS 1.3, whose AAD is the header as received; OpenSSL and
FreeBSD's `ktls_decrypt` refuse it too).

Models: sys/kern/uipc_ktls.c (`ktls_enable_rx`, `ktls_check_rx`,
`ktls_decrypt`, `ktls_detach_record`; read in freebsd-src's current
version, FreeBSD 13 and later).

Deliberate differences:
* KTLS RX as committed in July 2020 did TLS 1.1/1.2 only; TLS 1.3 RX came
  later. nomapd receives both, since every TLS 1.3 client must be served.
* Records are opened inline in `ktls_check_rx` (from tcp_input), not queued
  to a worker (`sw_rx_inqueue`): client records are a few hundred bytes of
  request per response. The AEAD decrypts into a new buffer whose plaintext
  is copied back over the ciphertext, where OCF decrypts in place.
* After a refused record the kernel drops that record and goes on with the
  next (so_error = EBADMSG); the model stops, since the reader ends the
  connection with an alert anyway.
* After a TLS 1.3 handshake record (a KeyUpdate) decryption waits (`held`)
  until the reader has installed the next keys (`rekey`): the kernel has no
  such rule and cannot take new receive keys, so a KeyUpdate under KTLS RX
  is beyond it (as on the transmit side, `KtlsSession.successor`).
* The handshake's reader (OpenSSL, over a memory BIO) may have taken bytes
  past its last record; `ktls_enable_rx` puts them back at the front of the
  receive buffer, as if it had not read ahead.
* A refused record is counted in `ktls.rx_failures` (the kernel's
  `corrupted_records` counts malformed headers; EBADMSG failures are per
  record) and the connection ends with the alert user space would send.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, NamedTuple

from cryptography.exceptions import InvalidTag

from ktls.alerts import (
    BAD_RECORD_MAC,
    DECODE_ERROR,
    INTERNAL_ERROR,
    PROTOCOL_VERSION,
    RECORD_OVERFLOW,
    UNEXPECTED_MESSAGE,
    RecordError,
)
from ktls.nonce import SEQNO_LIMIT, tls12_aad, tls12_gcm_nonce, tls13_iv_int, tls13_nonce_int
from ktls.suites import CipherSuite, TlsVersion
from mbuf.ktls_hdr import (
    TLS12_MAX_CIPHERTEXT_LEN,
    TLS13_MAX_CIPHERTEXT_LEN,
    TLS_HEADER_LEN,
    TLS_MAX_MSG_SIZE_V10_2,
    TLS_RLTYPE_ALERT,
    TLS_RLTYPE_APP,
    TLS_RLTYPE_HANDSHAKE,
    content_type_name,
)
from mbuf.mbuf import m_chain_iov, m_copydata, m_free, m_freem, m_getptr

if TYPE_CHECKING:
    from mbuf.counters import KtlsStat
    from mbuf.mbuf import Mbuf
    from mbuf.sockbuf import SockBuf

_TLS12_PROTECTED = frozenset({TLS_RLTYPE_ALERT, TLS_RLTYPE_HANDSHAKE, TLS_RLTYPE_APP})


class RxRecord(NamedTuple):
    """One decrypted record: its (inner) content type and plaintext. (A named
    tuple: one is made per record, and a tuple is the cheapest immutable.)"""

    ctype: int
    data: bytes


class KtlsRxSession:
    """The receive half of a kernel TLS session (`ktls_enable_rx`)."""

    __slots__ = (
        "_buf",
        "_checked",
        "_iv_int",
        "aead",
        "bytes",
        "error",
        "held",
        "iv",
        "max_ciphertext",
        "records",
        "seqno",
        "stats",
        "suite",
        "version",
    )

    def __init__(
        self, suite: CipherSuite, key: bytes, iv: bytes, seqno: int, stats: KtlsStat | None = None
    ) -> None:
        self.suite = suite
        self.version = suite.version
        self.aead = suite.aead(key)
        self.iv = iv
        self._iv_int = self._nonce_base(iv)
        self.seqno = seqno
        self.stats = stats
        tls13 = self.version is TlsVersion.TLS13
        self.max_ciphertext = TLS13_MAX_CIPHERTEXT_LEN if tls13 else TLS12_MAX_CIPHERTEXT_LEN
        self._buf = bytearray()
        self._checked = False  # the header at the front of _buf passed ktls_check_rx
        self.records = 0  # per-session counters
        self.bytes = 0
        self.error: RecordError | None = None  # a record refused in the receive buffer
        self.held = False  # decryption in the receive buffer waits for new keys

    def rekey(self, key: bytes, iv: bytes) -> None:
        """New receive keys (a TLS 1.3 KeyUpdate): numbering starts again at 0,
        and decryption in the receive buffer may go on."""
        self.aead = self.suite.aead(key)
        self.iv = iv
        self._iv_int = self._nonce_base(iv)
        self.seqno = 0
        self.held = False

    def ktls_rx_error(self) -> int:
        """The errno recvmsg reports for the refused record (see KtlsRxHook)."""
        err = self.error
        if err is None:
            return 0
        if err.description == BAD_RECORD_MAC:
            return errno.EBADMSG
        if err.description == RECORD_OVERFLOW:
            return errno.EMSGSIZE
        return errno.EINVAL

    def resume(self) -> None:
        """The reader has acted on the handshake record that held decryption
        (a TLS 1.3 handshake message other than KeyUpdate is refused anyway)."""
        self.held = False

    def _nonce_base(self, iv: bytes) -> int:
        """The int each record's nonce is XORed from (RFC 8446 5.3, RFC 7905 2);
        TLS 1.2 GCM, whose nonce is the salt and the record's explicit part, has none."""
        return 0 if self.suite.explicit_nonce_len else tls13_iv_int(iv)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def buffered(self) -> int:
        return len(self._buf)

    def next_record(self) -> RxRecord | None:
        """The next complete record, decrypted; None until one is complete.
        Raises RecordError (the session is then unusable)."""
        buf = self._buf
        have = len(buf)
        if have < TLS_HEADER_LEN:
            return None
        ctype = buf[0]
        length = (buf[3] << 8) | buf[4]
        if not self._checked:
            self._precheck(ctype, buf[1], buf[2], length)
            self._checked = True
        end = TLS_HEADER_LEN + length
        if have < end:
            return None
        if have == end:  # the usual case: the buffer is this record
            record = bytes(buf)
            buf.clear()
        else:
            record = bytes(buf[:end])
            del buf[:end]
        self._checked = False
        return self._open_counted(ctype, record)

    def _precheck(self, ctype: int, vmajor: int, vminor: int, length: int) -> None:
        """Application data with the right version and a plausible length passes
        in either version; anything else gets the whole check (ktls_check_rx)."""
        if not (
            ctype == TLS_RLTYPE_APP
            and vmajor == 3
            and vminor == 3
            and length <= self.max_ciphertext
            and self.seqno < SEQNO_LIMIT
        ):
            self._check_header(ctype, (vmajor << 8) | vminor, length)

    def _open_counted(self, ctype: int, record: bytes) -> RxRecord:
        """Open a whole record (header and body) and count it."""
        header = record[:TLS_HEADER_LEN]
        body = memoryview(record)[TLS_HEADER_LEN:]
        try:
            rec = self._open(ctype, header, body)
        except RecordError:
            if self.stats is not None:
                self.stats.rx_failures += 1
            raise
        self.seqno += 1
        self.records += 1
        self.bytes += len(rec.data)
        if self.stats is not None:
            self.stats.rx_records += 1
            self.stats.rx_bytes += len(rec.data)
        return rec

    # -- in the receive buffer -------------------------------------------------

    def ktls_check_rx(self, sb: SockBuf) -> None:
        """ktls_check_rx and ktls_decrypt (the KtlsRxHook of mbuf/sockbuf.py): while
        sb_mtls holds a whole record, check its header, detach it, decrypt it in
        place (the plaintext over the ciphertext, header and trailer trimmed) and
        append it to sb_mb behind its control message. A refused record sets
        `error` (the reader gets it after the records before it: the kernel's
        so_error) and stops decryption. After a TLS 1.3 handshake record (a
        KeyUpdate) decryption `held` until the reader installs the next keys."""
        while self.error is None and not self.held and sb.sb_tlscc >= TLS_HEADER_LEN:
            hdr = m_copydata(sb.sb_mtls, 0, TLS_HEADER_LEN)
            ctype = hdr[0]
            length = (hdr[3] << 8) | hdr[4]
            try:
                self._precheck(ctype, hdr[1], hdr[2], length)
            except RecordError as e:
                self.error = e  # ktls_drop: corrupted_records
                return
            end = TLS_HEADER_LEN + length
            if sb.sb_tlscc < end:
                return
            data = sb.ktls_detach_record(end)
            try:
                rec = self._open_counted(ctype, m_copydata(data, 0, end))
            except RecordError as e:
                m_freem(data)
                self.error = e  # EBADMSG
                return
            n = len(rec.data)
            sb.sbappendcontrol(_m_decrypted(data, rec.data), (rec.ctype, hdr[1], hdr[2], n))
            if rec.ctype == TLS_RLTYPE_HANDSHAKE and self.version is TlsVersion.TLS13:
                self.held = True

    def _check_header(self, ctype: int, version: int, length: int) -> None:
        """ktls_check_rx: what the header alone tells."""
        fail: RecordError | None = None
        if self.version is TlsVersion.TLS13:
            if ctype != TLS_RLTYPE_APP:
                fail = RecordError(
                    UNEXPECTED_MESSAGE, f"unprotected record of type {content_type_name(ctype)}"
                )
            elif version != TlsVersion.TLS12:  # legacy_record_version, as OpenSSL checks it
                fail = RecordError(DECODE_ERROR, f"record version {version:#06x}")
        elif ctype not in _TLS12_PROTECTED:
            fail = RecordError(
                UNEXPECTED_MESSAGE, f"record of type {content_type_name(ctype)} after the handshake"
            )
        elif version != TlsVersion.TLS12:
            fail = RecordError(PROTOCOL_VERSION, f"record version {version:#06x}")
        if fail is None and length > self.max_ciphertext:
            fail = RecordError(RECORD_OVERFLOW, f"record of {length} bytes")
        if fail is None and self.seqno >= SEQNO_LIMIT:
            fail = RecordError(INTERNAL_ERROR, "receive sequence number exhausted")
        if fail is not None:
            if self.stats is not None:
                self.stats.rx_failures += 1
            raise fail

    def _open(self, ctype: int, header: bytes, body: bytes | memoryview) -> RxRecord:
        suite = self.suite
        if self.version is TlsVersion.TLS13:
            if len(body) <= suite.tag_len:
                raise RecordError(BAD_RECORD_MAC, "record shorter than its tag")
            nonce = tls13_nonce_int(self._iv_int, self.seqno)
            try:
                inner = self.aead.decrypt(nonce, body, header)
            except InvalidTag:
                raise RecordError(BAD_RECORD_MAC, "record does not authenticate") from None
            if len(inner) > TLS_MAX_MSG_SIZE_V10_2 + 1:  # RFC 8446 5.4: padding included
                raise RecordError(RECORD_OVERFLOW, f"inner plaintext of {len(inner)} bytes")
            if inner[-1]:  # no padding (the usual case)
                return RxRecord(inner[-1], inner[:-1])
            content = inner.rstrip(b"\x00")  # the zero padding after the content type
            if not content:
                raise RecordError(UNEXPECTED_MESSAGE, "inner plaintext without a content type")
            return RxRecord(content[-1], content[:-1])
        n = suite.explicit_nonce_len
        plen = len(body) - n - suite.tag_len
        if plen < 0:
            raise RecordError(BAD_RECORD_MAC, "record shorter than its nonce and tag")
        if plen > TLS_MAX_MSG_SIZE_V10_2:
            raise RecordError(RECORD_OVERFLOW, f"plaintext of {plen} bytes")
        nonce = (
            tls12_gcm_nonce(self.iv, body[:n]) if n else tls13_nonce_int(self._iv_int, self.seqno)
        )
        try:
            plain = self.aead.decrypt(nonce, body[n:], tls12_aad(self.seqno, ctype, plen))
        except InvalidTag:
            raise RecordError(BAD_RECORD_MAC, "record does not authenticate") from None
        return RxRecord(ctype, plain)


def _m_decrypted(data: Mbuf, plain: bytes) -> Mbuf | None:
    """The record's chain holding its plaintext: written over the ciphertext
    after the header (ktls_ocf_decrypt works in place), then the header's and
    the trailer's mbufs trimmed (freed when emptied), as ktls_decrypt does.
    None (the chain freed) for an empty record."""
    n = len(plain)
    if not n:
        m_freem(data)
        return None
    pos = 0
    for seg in m_chain_iov(data, TLS_HEADER_LEN, n):
        seg[:] = plain[pos : pos + len(seg)]
        pos += len(seg)
    m: Mbuf | None = data
    skip = TLS_HEADER_LEN
    while m is not None and m.m_len <= skip:  # mbufs holding only header bytes
        skip -= m.m_len
        m = m_free(m)
    assert m is not None
    m.m_data += skip
    m.m_len -= skip
    top = m
    m, last = m_getptr(top, n - 1)  # the mbuf holding the last plaintext byte
    m.m_len = last + 1
    m_freem(m.m_next)  # the trailer's mbufs
    m.m_next = None
    return top
