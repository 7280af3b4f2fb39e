"""The TLS record vocabulary: record types, the record header and the size limits.

Theory of operation. The kernel's data path frames TLS records (sendfile calls
`ktls_frame` with `TLS_RLTYPE_APP`) and `ktls` seals, opens and checks them;
both speak of record types, the 5-byte record header and the longest record
with the names defined here, once. They live in `mbuf` because `mbuf` may not
import `ktls`, as sys/sys/ktls.h is a header that the socket code includes
without the KTLS implementation. The kernel's names are plain int constants
(a mypyc build folds them into the comparisons of the per-record paths);
`ContentType` is the same numbers as an IntEnum with the RFC's names, for
parsing and for messages.

Models: sys/sys/ktls.h (`struct tls_record_layer`, `TLS_MAX_MSG_SIZE_V10_2`,
`TLS_RLTYPE_ALERT`, `TLS_RLTYPE_HANDSHAKE`, `TLS_RLTYPE_APP`,
`TLS_MAJOR_VER_ONE`, `TLS_MINOR_VER_*`).

Deliberate differences: the 2019 header names only `TLS_RLTYPE_APP`; the
alert and handshake names are those of later versions of the header, used here
because the server sends alerts and KeyUpdates through the kernel.
change_cipher_spec (20) has no kernel name; `ContentType` carries it for the
receive side and the handshake. The ciphertext limits and the record header
length have no names in the header (the kernel uses
`sizeof(struct tls_record_layer)`); theirs come from RFC 5246 and RFC 8446.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "TLS12_MAX_CIPHERTEXT_LEN",
    "TLS13_MAX_CIPHERTEXT_LEN",
    "TLS_HEADER_LEN",
    "TLS_LEGACY_RECORD_VERSION",
    "TLS_MAJOR_VER_ONE",
    "TLS_MAX_MSG_SIZE_V10_2",
    "TLS_MINOR_VER_THREE",
    "TLS_MINOR_VER_TWO",
    "TLS_RLTYPE_ALERT",
    "TLS_RLTYPE_APP",
    "TLS_RLTYPE_HANDSHAKE",
    "ContentType",
    "content_type_name",
]

# Type values for the record layer.
TLS_RLTYPE_ALERT: Final = 21
TLS_RLTYPE_HANDSHAKE: Final = 22
TLS_RLTYPE_APP: Final = 23


class ContentType(enum.IntEnum):
    """TLS ContentType (RFC 8446 B.1, RFC 5246 6.2.1), aliased to TLS_RLTYPE_*."""

    CHANGE_CIPHER_SPEC = 20
    ALERT = TLS_RLTYPE_ALERT
    HANDSHAKE = TLS_RLTYPE_HANDSHAKE
    APPLICATION_DATA = TLS_RLTYPE_APP


def content_type_name(ctype: int) -> str:
    """A record type for messages: "alert" for 21, the number for an unknown one."""
    try:
        return ContentType(ctype).name.lower()
    except ValueError:
        return str(ctype)


# struct tls_record_layer: tls_type(1) tls_vmajor(1) tls_vminor(1) tls_length(2), packed.
TLS_HEADER_LEN: Final = 5

# tls_vmajor / tls_vminor: TLS 1.2 is 3.3, TLS 1.3 is 3.4.
TLS_MAJOR_VER_ONE: Final = 3
TLS_MINOR_VER_TWO: Final = 3
TLS_MINOR_VER_THREE: Final = 4
# The version every record header here carries: TLS 1.2's, which TLS 1.3
# records keep as legacy_record_version (RFC 8446 5.1), as ktls_frame writes it.
TLS_LEGACY_RECORD_VERSION: Final = TLS_MAJOR_VER_ONE << 8 | TLS_MINOR_VER_TWO

# The longest plaintext of a record, 2^14 bytes (RFC 5246 6.2.1, RFC 8446 5.1),
# and the bound on max_frame_len.
TLS_MAX_MSG_SIZE_V10_2: Final = 16384
# The longest TLSCiphertext.length: 2^14 + 256 in TLS 1.3 (RFC 8446 5.2),
# 2^14 + 2048 in TLS 1.2 (RFC 5246 6.2.3).
TLS13_MAX_CIPHERTEXT_LEN: Final = TLS_MAX_MSG_SIZE_V10_2 + 256
TLS12_MAX_CIPHERTEXT_LEN: Final = TLS_MAX_MSG_SIZE_V10_2 + 2048
