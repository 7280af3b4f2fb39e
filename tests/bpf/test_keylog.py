"""nomapd's TLS key export on a descriptor (bpf/bpf_keylog.py), through bpfioctl's bytes,
and the worker's side that holds a handshake's lines until it completes
(server/devices/bpfkeys.py)."""

from __future__ import annotations

import errno

import pytest

from bpf.bpf import bpf_close, bpfopen
from bpf.bpf_h import BIOCGKEYLOG, BIOCSKEYLOG, BPF_KEYLOG_MAX, IOC_IN, IOC_OUT, U_INT
from bpf.bpf_ioctl import bpfioctl
from bpf.bpf_keylog import bpf_keylog, bpf_keylog_wanted
from bpf.bpfdesc import Bpf
from server.devices.bpfkeys import KeyExport

CR1 = bytes(range(32))
CR2 = bytes(range(1, 33))


def nss(label: str, cr: bytes, secret: bytes = b"\x11" * 32) -> bytes:
    return f"{label} {cr.hex()} {secret.hex()}".encode()


def test_numbers_are_nomapds_in_group_b() -> None:
    for cmd, num in ((BIOCSKEYLOG, 200), (BIOCGKEYLOG, 201)):
        assert (cmd >> 8) & 0xFF == ord("B") and cmd & 0xFF == num
    assert BIOCSKEYLOG & IOC_IN and not BIOCSKEYLOG & IOC_OUT
    assert BIOCGKEYLOG & IOC_IN and BIOCGKEYLOG & IOC_OUT


def test_lines_go_only_to_descriptors_that_asked() -> None:
    bpf = Bpf()
    asking, other = bpfopen(bpf, 1), bpfopen(bpf, 2)
    assert not bpf_keylog_wanted(bpf)
    assert bpfioctl(asking, BIOCSKEYLOG, U_INT.pack(1)) == U_INT.pack(1)
    assert bpfioctl(asking, BIOCSKEYLOG, U_INT.pack(1)) == U_INT.pack(0)  # already on
    assert bpf_keylog_wanted(bpf) and bpf.stats.keylog_descriptors == 1
    lines = [nss("SERVER_TRAFFIC_SECRET_0", CR1), nss("CLIENT_TRAFFIC_SECRET_0", CR1)]
    bpf_keylog(bpf, lines)
    want = b"".join(x + b"\n" for x in lines)
    assert bpf.stats.keylog_bytes == len(want) and bpf.stats.keylog_lines == 2
    assert bpfioctl(other, BIOCGKEYLOG, U_INT.pack(4096)) == b""
    assert bpfioctl(asking, BIOCGKEYLOG, U_INT.pack(4096)) == want
    assert bpfioctl(asking, BIOCGKEYLOG, U_INT.pack(4096)) == b""
    assert bpf.stats.keylog_bytes == 0
    bpf_close(asking)
    bpf_close(other)
    assert bpf.stats.leaks() == {}


def test_take_returns_whole_lines_within_room() -> None:
    bpf = Bpf()
    d = bpfopen(bpf, 1)
    bpfioctl(d, BIOCSKEYLOG, U_INT.pack(1))
    a, b = nss("CLIENT_RANDOM", CR1, b"\x22" * 48), nss("CLIENT_RANDOM", CR2, b"\x33" * 48)
    bpf_keylog(bpf, [a, b])
    with pytest.raises(OSError) as e:
        bpfioctl(d, BIOCGKEYLOG, U_INT.pack(len(a)))  # no room for its newline
    assert e.value.errno == errno.ENOBUFS
    assert bpfioctl(d, BIOCGKEYLOG, U_INT.pack(len(a) + 5)) == a + b"\n"
    assert bpfioctl(d, BIOCGKEYLOG, U_INT.pack(len(b) + 1)) == b + b"\n"
    bpf_close(d)
    assert bpf.stats.leaks() == {}


def test_off_and_close_wipe_pending_and_bound_is_counted() -> None:
    bpf = Bpf()
    d = bpfopen(bpf, 1)
    bpfioctl(d, BIOCSKEYLOG, U_INT.pack(1))
    line = nss("CLIENT_RANDOM", CR1, b"\x44" * 48)
    n = BPF_KEYLOG_MAX // (len(line) + 1)
    for _ in range(n + 3):
        bpf_keylog(bpf, [line])
    assert bpf.stats.keylog_lines == n and bpf.stats.keylog_dropped == 3
    keys = d.bd_keys
    assert bpfioctl(d, BIOCSKEYLOG, U_INT.pack(0)) == U_INT.pack(0)
    assert not bpf_keylog_wanted(bpf) and bpf.stats.keylog_bytes == 0
    assert keys == bytes(len(keys))  # zeroed before it was dropped
    bpf_keylog(bpf, [line])  # nobody asks: nothing kept
    assert d.bd_keys == b"" and bpf.stats.keylog_bytes == 0
    bpfioctl(d, BIOCSKEYLOG, U_INT.pack(1))
    bpf_keylog(bpf, [line])
    bpf_close(d)  # still asking, a line pending
    assert bpf.stats.leaks() == {} and bpf.bpf_keyds == []


def test_worker_hands_over_only_completed_handshakes() -> None:
    bpf = Bpf()
    ex = KeyExport(bpf)
    ex.line(nss("SERVER_HANDSHAKE_TRAFFIC_SECRET", CR1))  # nobody asks yet: dropped
    assert ex.pending == {}
    d = bpfopen(bpf, 1)
    bpfioctl(d, BIOCSKEYLOG, U_INT.pack(1))
    one = [nss("SERVER_HANDSHAKE_TRAFFIC_SECRET", CR1), nss("SERVER_TRAFFIC_SECRET_0", CR1)]
    for x in one:
        ex.line(x + b"\n")
    ex.line(nss("CLIENT_RANDOM", CR2, b"\x55" * 48))
    ex.line(b"# a comment")
    assert bpfioctl(d, BIOCGKEYLOG, U_INT.pack(4096)) == b""  # none complete yet
    assert bpf.stats.keylog_sessions_pending == 2 and bpf.stats.leaks() != {}
    ex.handshake_done(CR1)
    assert bpfioctl(d, BIOCGKEYLOG, U_INT.pack(4096)) == b"".join(x + b"\n" for x in one)
    ex.forget(CR2)  # failed: never handed over
    ex.handshake_done(CR2)
    assert bpfioctl(d, BIOCGKEYLOG, U_INT.pack(4096)) == b"" and ex.pending == {}
    ex.line(nss("CLIENT_RANDOM", CR2, b"\x55" * 48))
    bpf_close(d)
    ex.line(nss("CLIENT_TRAFFIC_SECRET_0", CR1))  # the capture left: held lines dropped
    assert ex.pending == {}
    ex.handshake_done(None)
    ex.forget(None)
    assert bpf.stats.leaks() == {}
