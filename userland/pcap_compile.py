"""libpcap's filter compiler, called through ctypes on the system libpcap.

Theory of operation. A capture program does not write BPF by hand: it gives
libpcap an expression ("tcp port 443") and libpcap compiles it for a link
type and snap length. `pcap_compile_expr` does what tcpdump does with no
live device: `pcap_open_dead(DLT_EN10MB, snaplen)`, `pcap_compile(p, &prog,
expr, optimize=1, PCAP_NETMASK_UNKNOWN)`, then reads the `struct
bpf_program` (bf_len, bf_insns) into bpf/bpf_h.py's `BpfInsn` list, the form
the kernel's `bpf_validate` and `bpf_filter` take and `bpf_program_pack`
turns into what BIOCSETF carries. The program is copied out before
`pcap_freecode`, and the pcap_t is closed. A bad expression raises
`PcapCompileError` with libpcap's own one-line message (`pcap_geterr`);
a machine without libpcap raises it with a line naming the package.

`bpf_dump` prints a program as `tcpdump -d`, `-dd` and `-ddd` do: -d is
libpcap's own `bpf_image` per instruction (called through ctypes, so the
text is libpcap's), -dd the C initializers with relative jumps, -ddd the
count and decimal quadruples (reference A.12).

Models: libpcap gencode.c / optimize.c (`pcap_compile`, `pcap_freecode`),
pcap.c (`pcap_open_dead`, `pcap_geterr`), bpf_image.c, bpf_dump.c.

Deliberate difference: none in what is compiled; the library is loaded once
per process, lazily, so importing this module never fails.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Final

from bpf.bpf_h import BPF_INSN, DLT_EN10MB, BpfInsn

PCAP_NETMASK_UNKNOWN: Final = 0xFFFFFFFF
PCAP_ERRBUF_SIZE: Final = 256
DEFAULT_SNAPLEN: Final = 262144
LIBPCAP_PACKAGE: Final = "libpcap0.8"  # Debian's package of libpcap.so.0.8


class PcapCompileError(ValueError):
    """An expression libpcap refused, or no libpcap to compile it with."""


class _BpfInsnC(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _BpfProgramC(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsnC))]


_lib: ctypes.CDLL | None = None


def libpcap() -> ctypes.CDLL:
    """The system libpcap with the prototypes used here; PcapCompileError if absent."""
    global _lib
    if _lib is not None:
        return _lib
    name = ctypes.util.find_library("pcap")
    if name is None:
        raise PcapCompileError(
            f"libpcap not found: filter expressions need the system libpcap "
            f"(apt-get install {LIBPCAP_PACKAGE})"
        )
    lib = ctypes.CDLL(name)
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_compile.argtypes = [
        ctypes.c_void_p, ctypes.POINTER(_BpfProgramC), ctypes.c_char_p, ctypes.c_int,
        ctypes.c_uint32,
    ]  # fmt: skip
    lib.pcap_freecode.restype = None
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgramC)]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_close.restype = None
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    lib.bpf_image.restype = ctypes.c_char_p
    lib.bpf_image.argtypes = [ctypes.POINTER(_BpfInsnC), ctypes.c_int]
    _lib = lib
    return lib


def pcap_compile_expr(
    expr: str, snaplen: int = DEFAULT_SNAPLEN, linktype: int = DLT_EN10MB, optimize: bool = True
) -> list[BpfInsn]:
    """The BPF program libpcap compiles `expr` to; PcapCompileError with
    libpcap's message if the expression is bad."""
    lib = libpcap()
    p = lib.pcap_open_dead(linktype, snaplen)
    if not p:
        raise PcapCompileError(f"pcap_open_dead({linktype}, {snaplen}) failed")
    try:
        prog = _BpfProgramC()
        if lib.pcap_compile(p, ctypes.byref(prog), expr.encode(), int(optimize),
                            PCAP_NETMASK_UNKNOWN) != 0:  # fmt: skip
            err = lib.pcap_geterr(p) or b"pcap_compile failed"
            msg = err.decode(errors="replace")
            raise PcapCompileError(f"bad filter expression {expr!r}: {msg}")
        try:
            raw = ctypes.string_at(prog.bf_insns, prog.bf_len * BPF_INSN.size)
        finally:
            lib.pcap_freecode(ctypes.byref(prog))
    finally:
        lib.pcap_close(p)
    return [BpfInsn(c, t, f, k) for c, t, f, k in BPF_INSN.iter_unpack(raw)]


def bpf_dump(prog: list[BpfInsn], level: int = 1) -> str:
    """The program as `tcpdump -d` (level 1), `-dd` (2) or `-ddd` (3) prints it."""
    if level >= 3:
        return "".join([f"{len(prog)}\n"] + [f"{i.code} {i.jt} {i.jf} {i.k}\n" for i in prog])
    if level == 2:
        return "".join(f"{{ 0x{i.code:x}, {i.jt}, {i.jf}, 0x{i.k:08x} }},\n" for i in prog)
    lib = libpcap()
    arr = (_BpfInsnC * max(1, len(prog)))(*[_BpfInsnC(i.code, i.jt, i.jf, i.k) for i in prog])
    lines = []
    for n in range(len(prog)):
        image = lib.bpf_image(ctypes.cast(ctypes.byref(arr, n * ctypes.sizeof(_BpfInsnC)),
                                          ctypes.POINTER(_BpfInsnC)), n)  # fmt: skip
        lines.append(image.decode() + "\n")
    return "".join(lines)
