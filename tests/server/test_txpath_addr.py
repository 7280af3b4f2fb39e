"""The model's TCP control block addresses, from the host socket's addresses."""

from __future__ import annotations

import ipaddress

import pytest

from server.txpath import _inaddr, _peer


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        (("127.0.0.1", 8443), (int(ipaddress.IPv4Address("127.0.0.1")), 8443, False)),
        (("192.0.2.255", 1), (0xC00002FF, 1, False)),
        (("::1", 443, 0, 0), (1, 443, True)),
        (("2001:db8::7", 80, 0, 0), (int(ipaddress.IPv6Address("2001:db8::7")), 80, True)),
        # a v4 client of a dual-stack socket is IPv4 (INP_IPV4)
        (("::ffff:10.1.2.3", 5, 0, 0), (0x0A010203, 5, False)),
        (("fe80::1%lo", 9, 0, 1), (int(ipaddress.IPv6Address("fe80::1")), 9, True)),
        # not addresses: a Unix socket's path, junk, a non-canonical IPv4 form
        ("/run/sock", (0, 0, False)),
        (("not-an-address", 1), (0, 0, False)),
        (("1", 1), (0, 0, False)),
        (None, (0, 0, False)),
    ],
)
def test_inaddr(addr: object, expected: tuple[int, int, bool]) -> None:
    assert _inaddr(addr) == expected


def test_peer_as_logs_write_it() -> None:
    assert _peer(("127.0.0.1", 5)) == "127.0.0.1:5"
    assert _peer(("::1", 5, 0, 0)) == "[::1]:5"
    assert _peer(None) == "?"
