"""Where the servers under test listen: 127.0.0.1, a port picked free, and the name
"localhost" that clients send as SNI and Host (the certificate's, `bench.cert`)."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"
SNI = "localhost"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])
