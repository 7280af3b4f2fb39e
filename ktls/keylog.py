"""The key log: where the traffic secrets for kernel TLS come from.

Theory of operation. The portable way to get the TLS 1.3 traffic secrets (and
the TLS 1.2 master secret) out of OpenSSL 1.1.1+ is its key-log callback
(SSL_CTX_set_keylog_callback), which hands over one NSS key log line per
secret:

    LABEL <client_random, 64 hex digits> <secret, hex>

FreeBSD's own path is different - OpenSSL built with KTLS support derives the
keys internally and calls setsockopt(TCP_TXTLS_ENABLE) itself - but that
needs an OpenSSL with KTLS enabled on a kernel that has it.  nomapd models
the kernel side, so it captures the secrets the portable way: the server's
callback feeds each line to a per-connection `KeyLog`, and after the
handshake ktls/keys.py expands the right secret into key and IV.

Secrets never leave memory: nothing here writes to disk.  `lines()` exists
only so the operator's explicit `--keylog FILE` option can write the lines
(for Wireshark) - that is the caller's decision, not this module's.

Parsing is strict for the labels nomapd uses (exact field count, hex, a
32-byte client random, secret lengths that fit the label, one connection per
KeyLog).  Lines with other well-formed labels (newer OpenSSL versions add
some, e.g. for ECH) are kept for `lines()` but otherwise ignored, so an
OpenSSL upgrade cannot break the handshake callback.  Lines starting with
"#" are comments in the NSS format and are skipped.  Error messages never
quote the line: it contains a secret.

Wiping is best effort, as it must be in Python: `wipe()` zeroes the
bytearrays this object owns and drops them, but the caller's line objects
and the `bytes` copies handed out by `secret()` are immutable and are left
to the garbage collector.
"""

from __future__ import annotations

import enum
import hmac
import re
from typing import Final

__all__ = [
    "KEYLOG_LABELS",
    "KeyLog",
    "KeyLogLabel",
]


class KeyLogLabel(enum.StrEnum):
    """The NSS key log labels OpenSSL emits for TLS 1.2 and TLS 1.3."""

    CLIENT_RANDOM = "CLIENT_RANDOM"  # TLS 1.2 master secret (48 bytes)
    CLIENT_EARLY_TRAFFIC_SECRET = "CLIENT_EARLY_TRAFFIC_SECRET"
    CLIENT_HANDSHAKE_TRAFFIC_SECRET = "CLIENT_HANDSHAKE_TRAFFIC_SECRET"
    SERVER_HANDSHAKE_TRAFFIC_SECRET = "SERVER_HANDSHAKE_TRAFFIC_SECRET"
    CLIENT_TRAFFIC_SECRET_0 = "CLIENT_TRAFFIC_SECRET_0"
    SERVER_TRAFFIC_SECRET_0 = "SERVER_TRAFFIC_SECRET_0"
    EARLY_EXPORTER_SECRET = "EARLY_EXPORTER_SECRET"
    EXPORTER_SECRET = "EXPORTER_SECRET"


KEYLOG_LABELS: Final = frozenset(label.value for label in KeyLogLabel)

_CLIENT_RANDOM_LEN: Final = 32  # RFC 5246 7.4.1.2 / RFC 8446 4.1.2
_MASTER_SECRET_LEN: Final = 48  # RFC 5246 8.1
_TLS13_SECRET_LENS: Final = (32, 48)  # Hash.length of SHA-256 / SHA-384 suites
_LABEL_RE: Final = re.compile(rb"[A-Z0-9_]+")
_HEX_RE: Final = re.compile(rb"(?:[0-9A-Fa-f]{2})+")


def _unhex(what: str, field: bytes) -> bytearray:
    if _HEX_RE.fullmatch(field) is None:
        raise ValueError(f"malformed key log line: {what} is not an even number of hex digits")
    return bytearray.fromhex(field.decode("ascii"))


class KeyLog:
    """Secrets of one TLS connection, collected from OpenSSL key-log lines."""

    __slots__ = ("_client_random", "_lines", "_secrets")

    def __init__(self) -> None:
        self._client_random: bytearray | None = None
        self._secrets: dict[str, bytearray] = {}
        self._lines: list[bytearray] = []

    def __repr__(self) -> str:
        # Labels only: the values are secrets.
        return f"KeyLog(labels={sorted(self._secrets)!r})"

    def feed(self, line: bytes) -> None:
        """Parse one key log line, with or without its trailing newline.

        Raises ValueError for a malformed line, for a line whose client random
        differs from earlier lines (a KeyLog belongs to one connection), and
        for a label repeated with a different secret.  Feeding the same line
        twice is harmless.
        """
        if not isinstance(line, bytes | bytearray):
            raise TypeError(f"line must be bytes, not {type(line).__name__}")
        text = bytes(line)
        if text.endswith(b"\n"):
            text = text[:-1]
            if text.endswith(b"\r"):
                text = text[:-1]
        if not text:
            raise ValueError("malformed key log line: empty")
        if text.startswith(b"#"):
            return  # NSS key log comment
        fields = text.split(b" ")
        if len(fields) != 3:
            raise ValueError(
                "malformed key log line: expected 'LABEL CLIENT_RANDOM SECRET' separated "
                f"by single spaces, got {len(fields)} fields"
            )
        raw_label, raw_random, raw_secret = fields
        if _LABEL_RE.fullmatch(raw_label) is None:
            raise ValueError(
                "malformed key log line: label must be upper-case letters, digits and '_'"
            )
        label = raw_label.decode("ascii")
        client_random = _unhex("client random", raw_random)
        secret = _unhex("secret", raw_secret)
        if label not in KEYLOG_LABELS:
            # Well-formed but not one nomapd uses: keep it for --keylog only.
            self._remember(text)
            return
        if len(client_random) != _CLIENT_RANDOM_LEN:
            raise ValueError(
                f"malformed key log line: client random must be {_CLIENT_RANDOM_LEN} bytes, "
                f"got {len(client_random)}"
            )
        if label == KeyLogLabel.CLIENT_RANDOM:
            if len(secret) != _MASTER_SECRET_LEN:
                raise ValueError(
                    f"malformed key log line: {label} secret must be {_MASTER_SECRET_LEN} "
                    f"bytes, got {len(secret)}"
                )
        elif len(secret) not in _TLS13_SECRET_LENS:
            raise ValueError(
                f"malformed key log line: {label} secret must be 32 or 48 bytes, got {len(secret)}"
            )
        if self._client_random is not None and not hmac.compare_digest(
            self._client_random, client_random
        ):
            raise ValueError(
                f"{label} line is for a different connection: its client random differs "
                "from earlier lines"
            )
        old = self._secrets.get(label)
        if old is not None:
            if hmac.compare_digest(old, secret):
                return  # the same line again
            raise ValueError(f"conflicting {label} in key log: a different secret was fed before")
        if self._client_random is None:
            self._client_random = client_random
        self._secrets[label] = secret
        self._remember(text)

    def _remember(self, text: bytes) -> None:
        self._lines.append(bytearray(text))

    @staticmethod
    def _check_label(label: object) -> str:
        if not isinstance(label, str):
            raise TypeError(f"label must be str, not {type(label).__name__}")
        if label not in KEYLOG_LABELS:
            known = ", ".join(sorted(KEYLOG_LABELS))
            raise ValueError(f"unknown key log label {label!r}: expected one of {known}")
        return str(label)

    def secret(self, label: str) -> bytes:
        """The secret logged under `label`; LookupError if it was not logged."""
        key = self._check_label(label)
        value = self._secrets.get(key)
        if value is None:
            raise LookupError(f"no {key} in key log")
        return bytes(value)

    def has(self, label: str) -> bool:
        """Whether a secret was logged under `label`."""
        return self._check_label(label) in self._secrets

    @property
    def client_random(self) -> bytes | None:
        """The connection's ClientHello.random, once a known line was fed."""
        return None if self._client_random is None else bytes(self._client_random)

    def wipe(self) -> None:
        """Forget everything: zero the stored buffers in place, then drop them."""
        buffers: list[bytearray] = [*self._secrets.values(), *self._lines]
        if self._client_random is not None:
            buffers.append(self._client_random)
        for buf in buffers:
            buf[:] = bytes(len(buf))
        self._secrets.clear()
        self._lines.clear()
        self._client_random = None

    def lines(self) -> list[bytes]:
        """The lines fed (minus line terminators, comments and repeats), in order.

        For the explicit `--keylog FILE` option only; the writer appends b"\\n".
        """
        return [bytes(line) for line in self._lines]
