"""The header's numbers and layouts, and bpfioctl's bytes in and out, as a device forwards them."""

from __future__ import annotations

import errno
import mmap
import struct

import pytest

from bpf.bpf import BpfIf, bpf_close, bpf_mtap, bpfopen
from bpf.bpf_h import (
    BIOCFLUSH,
    BIOCGBLEN,
    BIOCGDIRECTION,
    BIOCGDLT,
    BIOCGETBUFMODE,
    BIOCGETIF,
    BIOCGETZMAX,
    BIOCGRTIMEOUT,
    BIOCGSTATS,
    BIOCGTSTAMP,
    BIOCIMMEDIATE,
    BIOCROTZBUF,
    BIOCSBLEN,
    BIOCSDIRECTION,
    BIOCSETBUFMODE,
    BIOCSETF,
    BIOCSETFNR,
    BIOCSETIF,
    BIOCSETZBUF,
    BIOCSRTIMEOUT,
    BIOCSTSTAMP,
    BIOCVERSION,
    BPF_BUFMODE_ZBUF,
    BPF_D_OUT,
    BPF_HDR,
    BPF_INSN,
    BPF_PROGRAM,
    BPF_STAT,
    BPF_WORDALIGN,
    BPF_XHDR,
    BPF_ZBUF,
    BPF_ZBUF_HEADER,
    SIZEOF_BPF_HDR,
    TIMEVAL,
    U_INT,
    bpf_program_pack,
    bpf_program_unpack,
)
from bpf.bpf_ioctl import bpfioctl
from bpf.bpf_zerocopy import Uvm
from bpf.bpfdesc import Bpf
from mbuf.if_tap import PFIL_OUT
from mbuf.kern import Kernel
from mbuf.mbuf import m_freem
from mbuf.param import PAGE_SIZE
from tests.bpf.conftest import chain_of, frame
from tests.bpf.test_filter import load_dd


@pytest.mark.parametrize(
    ("value", "want"),
    [
        # FreeBSD amd64's numbers: _IOC(dir, 'B', n, sizeof(arg))
        (BIOCGBLEN, 0x40044266),
        (BIOCSBLEN, 0xC0044266),
        (BIOCSETF, 0x80104267),
        (BIOCFLUSH, 0x20004268),
        (BIOCGDLT, 0x4004426A),
        (BIOCGETIF, 0x4020426B),
        (BIOCSETIF, 0x8020426C),
        (BIOCSRTIMEOUT, 0x8010426D),
        (BIOCGRTIMEOUT, 0x4010426E),
        (BIOCGSTATS, 0x4008426F),
        (BIOCIMMEDIATE, 0x80044270),
        (BIOCVERSION, 0x40044271),
        (BIOCGDIRECTION, 0x40044276),
        (BIOCSDIRECTION, 0x80044277),
        (BIOCGETBUFMODE, 0x4004427D),
        (BIOCSETBUFMODE, 0x8004427E),
        (BIOCGETZMAX, 0x4008427F),
        (BIOCROTZBUF, 0x40184280),
        (BIOCSETZBUF, 0x80184281),
        (BIOCSETFNR, 0x80104282),
        (BIOCGTSTAMP, 0x40044283),
        (BIOCSTSTAMP, 0x80044284),
    ],
)
def test_ioctl_numbers(value: int, want: int) -> None:
    assert value == want


def test_struct_layouts() -> None:
    assert BPF_ZBUF_HEADER.size == 32 and BPF_ZBUF.size == 24 and BPF_PROGRAM.size == 16
    assert BPF_INSN.size == 8 and BPF_STAT.size == 8 and TIMEVAL.size == 16
    assert SIZEOF_BPF_HDR == BPF_HDR.size == BPF_XHDR.size == 26
    assert [BPF_WORDALIGN(x) for x in (0, 1, 8, 9, 26)] == [0, 8, 8, 16, 32]
    prog = load_dd("tcp_port_443")
    assert bpf_program_unpack(bpf_program_pack(prog)) == prog
    with pytest.raises(ValueError, match="whole"):
        bpf_program_unpack(b"\0" * 9)


def setf_arg(prog: bytes, n: int, ptr: int = 0x1000) -> bytes:
    return BPF_PROGRAM.pack(n, ptr) + prog


def test_buffered_session_through_bytes(kern: Kernel, bpf: Bpf, bif: BpfIf) -> None:
    d = bpfopen(bpf, pid=99)
    u = U_INT.pack
    assert bpfioctl(d, BIOCVERSION) == struct.pack("=HH", 1, 1)
    assert bpfioctl(d, BIOCSBLEN, u(100000)) == u(100000)
    assert bpfioctl(d, BIOCGBLEN) == u(100000)
    assert bpfioctl(d, BIOCSETIF, b"nm0".ljust(32, b"\0")) == b""
    assert bpfioctl(d, BIOCGETIF)[:4] == b"nm0\0"
    assert bpfioctl(d, BIOCGDLT) == u(1)
    prog = load_dd("tcp_port_443")
    assert bpfioctl(d, BIOCSETF, setf_arg(bpf_program_pack(prog), len(prog))) == b""
    assert d.bd_rfilter == prog and d.bd_jit is not None
    bpfioctl(d, BIOCSDIRECTION, u(BPF_D_OUT))
    assert bpfioctl(d, BIOCGDIRECTION) == u(BPF_D_OUT)
    bpfioctl(d, BIOCIMMEDIATE, u(1))
    bpfioctl(d, BIOCSRTIMEOUT, TIMEVAL.pack(1, 500000))
    assert TIMEVAL.unpack(bpfioctl(d, BIOCGRTIMEOUT)) == (1, 500000)
    bpfioctl(d, BIOCSTSTAMP, u(1))
    assert bpfioctl(d, BIOCGTSTAMP) == u(1)
    for f in (frame(), frame(sport=80)):
        m = chain_of(kern, f.data, [14])
        bpf_mtap(bif, m, PFIL_OUT)
        m_freem(m)
    assert BPF_STAT.unpack(bpfioctl(d, BIOCGSTATS)) == (2, 0)
    bpfioctl(d, BIOCFLUSH)
    assert BPF_STAT.unpack(bpfioctl(d, BIOCGSTATS)) == (0, 0)
    # no program: remove the filter (NULL bf_insns, bf_len 0)
    bpfioctl(d, BIOCSETFNR, setf_arg(b"", 0, ptr=0))
    assert d.bd_rfilter is None and d.bd_jit is None
    bpf_close(d)


@pytest.mark.parametrize(
    ("cmd", "arg"),
    [
        pytest.param(BIOCSBLEN, b"\0\0", id="short-u_int"),
        pytest.param(BIOCSETIF, b"nm0", id="short-ifreq"),
        pytest.param(BIOCSETF, b"\0" * 8, id="short-program"),
        pytest.param(BIOCSETF, BPF_PROGRAM.pack(3, 0), id="len-without-insns"),
        pytest.param(BIOCSETF, BPF_PROGRAM.pack(2, 0x1000) + b"\0" * 8, id="insns-missing"),
        pytest.param(BIOCSETF, BPF_PROGRAM.pack(1, 0x1000) + b"\0" * 8, id="invalid-program"),
        pytest.param(BIOCGDLT, b"", id="not-attached"),
        pytest.param(0x20004269, b"", id="unknown-ioctl"),  # BIOCPROMISC: not modeled
    ],
)
def test_bad_arguments(bpf: Bpf, bif: BpfIf, cmd: int, arg: bytes) -> None:
    d = bpfopen(bpf, pid=1)
    with pytest.raises(OSError) as e:
        bpfioctl(d, cmd, arg)
    assert e.value.errno == errno.EINVAL
    bpf_close(d)


def test_zero_copy_session_through_bytes(kern: Kernel, bpf: Bpf, bif: BpfIf) -> None:
    base, n = 0x7F00_0000_0000, 4 * PAGE_SIZE
    shm = mmap.mmap(-1, 2 * n)
    view = memoryview(shm)
    d = bpfopen(bpf, pid=5)
    u = U_INT.pack
    bpfioctl(d, BIOCSETBUFMODE, u(BPF_BUFMODE_ZBUF))
    assert bpfioctl(d, BIOCGETBUFMODE) == u(BPF_BUFMODE_ZBUF)
    assert struct.unpack("=Q", bpfioctl(d, BIOCGETZMAX)) == (2 * 1024 * 1024,)
    zbuf = BPF_ZBUF.pack(base, base + n, n)
    with pytest.raises(OSError) as e:
        bpfioctl(d, BIOCSETZBUF, zbuf)  # the device passed no shared memory
    assert e.value.errno == errno.EFAULT
    bpfioctl(d, BIOCSETZBUF, zbuf, Uvm(base, view))
    bpfioctl(d, BIOCSETIF, b"nm0".ljust(32, b"\0"))
    m = chain_of(kern, frame().data, [])
    bpf_mtap(bif, m, PFIL_OUT)
    m_freem(m)
    assert BPF_ZBUF.unpack(bpfioctl(d, BIOCROTZBUF)) == (base, 0, 80)
    assert struct.unpack_from("=II", view, 0) == (1, 80)
    assert BPF_ZBUF.unpack(bpfioctl(d, BIOCROTZBUF)) == (0, 0, 0)
    bpf_close(d)
    view.release()
    shm.close()
