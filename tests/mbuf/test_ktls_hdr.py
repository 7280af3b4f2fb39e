"""The TLS record vocabulary (mbuf/ktls_hdr.py) against sys/sys/ktls.h and the RFCs."""

from __future__ import annotations

import pytest

from mbuf import socket as so
from mbuf.ktls_hdr import (
    TLS12_MAX_CIPHERTEXT_LEN,
    TLS13_MAX_CIPHERTEXT_LEN,
    TLS_HEADER_LEN,
    TLS_LEGACY_RECORD_VERSION,
    TLS_MAX_MSG_SIZE_V10_2,
    TLS_RLTYPE_ALERT,
    TLS_RLTYPE_APP,
    TLS_RLTYPE_HANDSHAKE,
    ContentType,
    content_type_name,
)


def test_record_types_are_the_kernels_and_the_rfcs() -> None:
    assert (TLS_RLTYPE_ALERT, TLS_RLTYPE_HANDSHAKE, TLS_RLTYPE_APP) == (21, 22, 23)
    assert [int(t) for t in ContentType] == [20, 21, 22, 23]  # RFC 8446 B.1
    assert int(ContentType.APPLICATION_DATA) == TLS_RLTYPE_APP
    # The names other packages import from mbuf.socket are the same objects.
    assert (so.TLS_RLTYPE_ALERT, so.TLS_RLTYPE_HANDSHAKE, so.TLS_RLTYPE_APP) == (21, 22, 23)


def test_header_and_limits() -> None:
    assert TLS_HEADER_LEN == 5  # sizeof(struct tls_record_layer)
    assert TLS_LEGACY_RECORD_VERSION == 0x0303
    assert TLS_MAX_MSG_SIZE_V10_2 == 2**14
    assert TLS13_MAX_CIPHERTEXT_LEN == 2**14 + 256  # RFC 8446 5.2
    assert TLS12_MAX_CIPHERTEXT_LEN == 2**14 + 2048  # RFC 5246 6.2.3


@pytest.mark.parametrize(
    ("ctype", "name"),
    [
        (20, "change_cipher_spec"),
        (21, "alert"),
        (22, "handshake"),
        (23, "application_data"),
        (0x47, "71"),  # "GET /" sent in the clear
        (0, "0"),
    ],
)
def test_content_type_name(ctype: int, name: str) -> None:
    assert content_type_name(ctype) == name
