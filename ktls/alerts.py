"""TLS alerts (RFC 8446 6, RFC 5246 7.2) and the errors that carry them.

Theory of operation. Alert levels and descriptions are the RFCs' numbers;
`RecordError` carries the fatal alert the receive path must send, `PeerAlert`
the one the peer sent. What is written on the wire is `alert_bytes`.
"""

from __future__ import annotations

from typing import Final

from ktls.errors import TlsError

WARNING: Final = 1
FATAL: Final = 2

CLOSE_NOTIFY: Final = 0
UNEXPECTED_MESSAGE: Final = 10
BAD_RECORD_MAC: Final = 20
RECORD_OVERFLOW: Final = 22
HANDSHAKE_FAILURE: Final = 40
ILLEGAL_PARAMETER: Final = 47
DECODE_ERROR: Final = 50
PROTOCOL_VERSION: Final = 70
INTERNAL_ERROR: Final = 80
USER_CANCELED: Final = 90
NO_RENEGOTIATION: Final = 100

NAMES: Final = {
    CLOSE_NOTIFY: "close_notify",
    UNEXPECTED_MESSAGE: "unexpected_message",
    BAD_RECORD_MAC: "bad_record_mac",
    RECORD_OVERFLOW: "record_overflow",
    HANDSHAKE_FAILURE: "handshake_failure",
    ILLEGAL_PARAMETER: "illegal_parameter",
    DECODE_ERROR: "decode_error",
    PROTOCOL_VERSION: "protocol_version",
    INTERNAL_ERROR: "internal_error",
    USER_CANCELED: "user_canceled",
    NO_RENEGOTIATION: "no_renegotiation",
}


def alert_name(description: int) -> str:
    return NAMES.get(description, f"alert {description}")


def alert_bytes(level: int, description: int) -> bytes:
    """The two bytes of an Alert message."""
    return bytes((level, description))


class RecordError(TlsError):
    """The peer broke the record protocol: send this fatal alert and close."""

    def __init__(self, description: int, detail: str) -> None:
        super().__init__(f"{alert_name(description)}: {detail}")
        self.description = description


class PeerAlert(TlsError):
    """The peer sent a fatal alert: close without sending anything more."""

    def __init__(self, level: int, description: int) -> None:
        super().__init__(f"peer sent alert {alert_name(description)} (level {level})")
        self.level = level
        self.description = description
