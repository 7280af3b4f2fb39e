"""The worker's side of TLS key export to /dev/bpf (`nomapd capture --keys`).

Theory of operation. OpenSSL hands the server one NSS key log line per secret
while a handshake runs (the key log callback, ktls/handshake.py's
`keylog_sink`). `KeyExport.line` is that sink: when no BPF descriptor asked
for keys (bpf/bpf_keylog.py's `bpf_keylog_wanted`) it returns at once and
keeps nothing; otherwise it holds the line under its client random until the
session's handshake completes. `handshake_done(client_random)` (called by
server/transport/handshake.py) then hands the session's lines to every
descriptor that asked (`bpf_keylog`); `forget(client_random)` drops a session
that failed or was cut off. Only sessions that complete their handshake while
a capture asks are handed over; lines already held when the last capture
leaves are dropped (and zeroed) at the next call. Nothing is written to disk.
`bpf.keylog_sessions_pending` counts the sessions held (a leak key).

Models: nothing in FreeBSD, whose TLS secrets stay in the process that ran
the handshake (see bpf/bpf_keylog.py).
"""

from __future__ import annotations

import re

from bpf import Bpf
from bpf.bpf_keylog import bpf_keylog, bpf_keylog_wanted

_CLIENT_RANDOM = re.compile(rb"[0-9a-fA-F]{64}")  # 32 bytes in hex, NSS's second field


class KeyExport:
    """Key log lines of handshakes in progress, kept only while a capture asks."""

    def __init__(self, bpf: Bpf) -> None:
        self.bpf = bpf
        self.pending: dict[bytes, list[bytearray]] = {}  # client random (hex) -> lines

    def line(self, line: bytes) -> None:
        """The key log sink: one NSS line (`LABEL CLIENT_RANDOM SECRET`)."""
        if not bpf_keylog_wanted(self.bpf):
            self.clear()
            return
        fields = line.rstrip(b"\r\n").split(b" ")
        if len(fields) != 3 or line.startswith(b"#") or not _CLIENT_RANDOM.fullmatch(fields[1]):
            return  # a comment, or not the NSS format: nothing Wireshark reads
        self.pending.setdefault(fields[1].lower(), []).append(bytearray(b" ".join(fields)))
        self.bpf.stats.keylog_sessions_pending = len(self.pending)

    def handshake_done(self, client_random: bytes | None) -> None:
        """The session with this ClientHello.random completed its handshake."""
        lines = self._pop(client_random)
        if lines and bpf_keylog_wanted(self.bpf):
            bpf_keylog(self.bpf, [bytes(x) for x in lines])
        _wipe(lines)

    def forget(self, client_random: bytes | None) -> None:
        """The session ended without completing (or was handed over already)."""
        _wipe(self._pop(client_random))

    def _pop(self, client_random: bytes | None) -> list[bytearray]:
        if client_random is None or not self.pending:
            return []
        lines = self.pending.pop(client_random.hex().encode(), [])
        self.bpf.stats.keylog_sessions_pending = len(self.pending)
        return lines

    def clear(self) -> None:
        for lines in self.pending.values():
            _wipe(lines)
        self.pending.clear()
        self.bpf.stats.keylog_sessions_pending = 0


def _wipe(lines: list[bytearray]) -> None:
    for x in lines:
        x[:] = bytes(len(x))
