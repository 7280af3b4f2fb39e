"""The error every TLS failure raises, for the sans-IO modules and the handshake alike.

`TlsError` lives here, not in `ktls.handshake`, so that the record layer
(`ktls.alerts`, `ktls.rx`, `ktls.control`) can raise it without importing the
handshake module, which loads pyOpenSSL. `ktls.alerts` derives the errors that
carry an alert from it (`RecordError`, `PeerAlert`).
"""

from __future__ import annotations


class TlsError(Exception):
    """The handshake failed or the peer misbehaved; the connection must close."""
