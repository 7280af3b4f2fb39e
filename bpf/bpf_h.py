"""net/bpf.h: the constants, ioctl numbers and struct layouts a capture program includes.

Theory of operation. This is the one module of `bpf/` that userland may import
(DESIGN.md: userland takes the kernel's headers only), so it holds no state and
imports nothing of ours. Every number is the one FreeBSD's header defines, and
every ioctl number is computed the way the header computes it, with `_IOR`,
`_IOW` and `_IOWR` of sys/sys/ioccom.h over the LP64 (amd64) sizes of the
argument structs, so a number printed by a real FreeBSD program matches. Struct
layouts are `struct` formats in host byte order ("=": header fields are host
order, packet bytes wire order, reference A.8).

Models: sys/net/bpf.h (BIOC* numbers, struct bpf_hdr / bpf_xhdr / bpf_zbuf_header /
bpf_stat / bpf_insn / bpf_program / bpf_zbuf / bpf_version, BPF_WORDALIGN, the
instruction classes, DLT_EN10MB), sys/sys/ioccom.h (_IOC), sys/net/bpf_zerocopy.c
(BPF_MAX_PAGES).

Deliberate differences: BIOCSKEYLOG and BIOCGKEYLOG (TLS key export for
`nomapd capture --keys`) are nomapd's own, numbered 200 and up in group 'B'
where FreeBSD has nothing. FreeBSD has no BIOCSSNAPLEN (the snap length is the
filter's return value, A.9); it is not invented here. `BPF_MOD` and `BPF_XOR`
are defined (modern bpf.h has them) but the kernel's validator refuses them, as
FreeBSD's `bpf_code_map` does. Pointers in `struct bpf_program` and
`struct bpf_zbuf` are 8 bytes (LP64); in the model a zero-copy buffer's
"address" is its offset in the shared-memory file the device maps (see
bpf/bpf_zerocopy.py).
"""

from __future__ import annotations

import struct
from typing import Final

# -- sys/sys/ioccom.h ---------------------------------------------------------
IOCPARM_SHIFT: Final = 13
IOCPARM_MASK: Final = (1 << IOCPARM_SHIFT) - 1
IOC_VOID: Final = 0x20000000
IOC_OUT: Final = 0x40000000
IOC_IN: Final = 0x80000000
IOC_INOUT: Final = IOC_IN | IOC_OUT


def _IOC(inout: int, group: str, num: int, length: int) -> int:
    return inout | ((length & IOCPARM_MASK) << 16) | (ord(group) << 8) | num


def _IO(group: str, num: int) -> int:
    return _IOC(IOC_VOID, group, num, 0)


def _IOR(group: str, num: int, length: int) -> int:
    return _IOC(IOC_OUT, group, num, length)


def _IOW(group: str, num: int, length: int) -> int:
    return _IOC(IOC_IN, group, num, length)


def _IOWR(group: str, num: int, length: int) -> int:
    return _IOC(IOC_INOUT, group, num, length)


# -- struct layouts (LP64, host byte order) -----------------------------------
SIZEOF_U_INT: Final = 4
SIZEOF_SIZE_T: Final = 8
SIZEOF_IFREQ: Final = 32  # struct ifreq: IFNAMSIZ 16 + the 16-byte union
IFNAMSIZ: Final = 16
TIMEVAL: Final = struct.Struct("=qq")  # struct timeval {time_t tv_sec; suseconds_t tv_usec}
BPF_STAT: Final = struct.Struct("=II")  # struct bpf_stat {u_int bs_recv, bs_drop}
BPF_VERSION: Final = struct.Struct("=HH")  # struct bpf_version {u_short bv_major, bv_minor}
BPF_INSN: Final = struct.Struct("=HBBI")  # struct bpf_insn {code, jt, jf, k}
BPF_PROGRAM: Final = struct.Struct("=I4xQ")  # struct bpf_program {u_int bf_len; insn *bf_insns}
BPF_ZBUF: Final = struct.Struct("=QQQ")  # struct bpf_zbuf {void *bz_bufa, *bz_bufb; size_t}
# struct bpf_zbuf_header: bzh_kernel_gen, bzh_kernel_len, bzh_user_gen, _bzh_pad[5].
BPF_ZBUF_HEADER: Final = struct.Struct("=III20x")
BZH_KERNEL_GEN: Final = 0  # byte offsets of its words in the shared page
BZH_KERNEL_LEN: Final = 4
BZH_USER_GEN: Final = 8
U_INT: Final = struct.Struct("=I")
SIZE_T: Final = struct.Struct("=Q")  # size_t (BIOCGETZMAX)
# struct bpf_hdr {struct timeval bh_tstamp; bh_caplen; bh_datalen; u_short bh_hdrlen}
# and struct bpf_xhdr {struct bpf_ts {bt_sec; bt_frac} bh_tstamp; ...}: both 26
# bytes up to bh_hdrlen (SIZEOF_BPF_HDR), 32 with the compiler's tail padding.
BPF_HDR: Final = struct.Struct("=qqIIH")
BPF_XHDR: Final = struct.Struct("=qQIIH")
SIZEOF_BPF_HDR: Final = BPF_HDR.size  # offsetof(struct bpf_hdr, bh_hdrlen) + 2 = 26

assert BPF_ZBUF_HEADER.size == 32 and BPF_INSN.size == 8 and SIZEOF_BPF_HDR == 26

# -- ioctls (group 'B') ---------------------------------------------------------
BIOCGBLEN: Final = _IOR("B", 102, SIZEOF_U_INT)
BIOCSBLEN: Final = _IOWR("B", 102, SIZEOF_U_INT)
BIOCSETF: Final = _IOW("B", 103, BPF_PROGRAM.size)
BIOCFLUSH: Final = _IO("B", 104)
BIOCPROMISC: Final = _IO("B", 105)
BIOCGDLT: Final = _IOR("B", 106, SIZEOF_U_INT)
BIOCGETIF: Final = _IOR("B", 107, SIZEOF_IFREQ)
BIOCSETIF: Final = _IOW("B", 108, SIZEOF_IFREQ)
BIOCSRTIMEOUT: Final = _IOW("B", 109, TIMEVAL.size)
BIOCGRTIMEOUT: Final = _IOR("B", 110, TIMEVAL.size)
BIOCGSTATS: Final = _IOR("B", 111, BPF_STAT.size)
BIOCIMMEDIATE: Final = _IOW("B", 112, SIZEOF_U_INT)
BIOCVERSION: Final = _IOR("B", 113, BPF_VERSION.size)
BIOCGDIRECTION: Final = _IOR("B", 118, SIZEOF_U_INT)
BIOCSDIRECTION: Final = _IOW("B", 119, SIZEOF_U_INT)
BIOCSETWF: Final = _IOW("B", 123, BPF_PROGRAM.size)
BIOCGETBUFMODE: Final = _IOR("B", 125, SIZEOF_U_INT)
BIOCSETBUFMODE: Final = _IOW("B", 126, SIZEOF_U_INT)
BIOCGETZMAX: Final = _IOR("B", 127, SIZEOF_SIZE_T)
BIOCROTZBUF: Final = _IOR("B", 128, BPF_ZBUF.size)
BIOCSETZBUF: Final = _IOW("B", 129, BPF_ZBUF.size)
BIOCSETFNR: Final = _IOW("B", 130, BPF_PROGRAM.size)
BIOCGTSTAMP: Final = _IOR("B", 131, SIZEOF_U_INT)
BIOCSTSTAMP: Final = _IOW("B", 132, SIZEOF_U_INT)

# -- nomapd's own ioctls: NOT FreeBSD's --------------------------------------------
# FreeBSD's group 'B' ends at 133 (BIOCSETVLANPCP); nomapd's numbers start at 200 so
# that no FreeBSD number is ever reused. They export TLS secrets (bpf/bpf_keylog.py):
#   BIOCSKEYLOG (u_int): 1 = hand this descriptor the NSS key log lines of the TLS
#       sessions that complete their handshake while it is attached; 0 = stop and
#       discard what is pending.
#   BIOCGKEYLOG (u_int in: room in bytes; out: the pending lines, whole lines only,
#       at most that many bytes; b"" when none). The model returns the bytes
#       themselves where a real ioctl would copy them to a user pointer.
BIOCSKEYLOG: Final = _IOW("B", 200, SIZEOF_U_INT)
BIOCGKEYLOG: Final = _IOWR("B", 201, SIZEOF_U_INT)
BPF_KEYLOG_MAX: Final = 1 << 20  # pending key log bytes one descriptor may hold

BPF_MAJOR_VERSION: Final = 1
BPF_MINOR_VERSION: Final = 1

# -- buffers -------------------------------------------------------------------
BPF_ALIGNMENT: Final = 8  # sizeof(long) on LP64


def BPF_WORDALIGN(x: int) -> int:
    return (x + (BPF_ALIGNMENT - 1)) & ~(BPF_ALIGNMENT - 1)


BPF_MINBUFSIZE: Final = 32
BPF_MAXBUFSIZE: Final = 0x80000  # net.bpf.maxbufsize default (512 KiB)
BPF_DEFAULTBUFSIZE: Final = 4096  # net.bpf.bufsize default
BPF_MAX_PAGES: Final = 512  # bpf_zerocopy.c: pages of one zero-copy buffer

BPF_BUFMODE_BUFFER: Final = 1  # kernel buffers, read(2) copies out
BPF_BUFMODE_ZBUF: Final = 2  # zero-copy buffers loaned by the process

# BIOCSDIRECTION values
BPF_D_IN: Final = 0  # incoming packets only
BPF_D_INOUT: Final = 1  # both (the default)
BPF_D_OUT: Final = 2  # outgoing only

# BIOCSTSTAMP formats and flags
BPF_T_MICROTIME: Final = 0x0000
BPF_T_NANOTIME: Final = 0x0001
BPF_T_BINTIME: Final = 0x0002
BPF_T_NONE: Final = 0x0003
BPF_T_FORMAT_MASK: Final = 0x0003
BPF_T_NORMAL: Final = 0x0000
BPF_T_FAST: Final = 0x0100
BPF_T_MONOTONIC: Final = 0x0200
BPF_T_FLAG_MASK: Final = 0x0300

# -- link types ------------------------------------------------------------------
DLT_NULL: Final = 0
DLT_EN10MB: Final = 1  # Ethernet; LINKTYPE_ETHERNET is the same number
DLT_RAW: Final = 12  # FreeBSD's value; a savefile says LINKTYPE_RAW 101
ETHER_HDR_LEN: Final = 14
ETHERTYPE_IP: Final = 0x0800
ETHERTYPE_IPV6: Final = 0x86DD

# -- the instruction set (reference A.11) ----------------------------------------
BPF_MAXINSNS: Final = 512  # net.bpf.maxinsns default
BPF_MEMWORDS: Final = 16

BPF_LD: Final = 0x00
BPF_LDX: Final = 0x01
BPF_ST: Final = 0x02
BPF_STX: Final = 0x03
BPF_ALU: Final = 0x04
BPF_JMP: Final = 0x05
BPF_RET: Final = 0x06
BPF_MISC: Final = 0x07

BPF_W: Final = 0x00
BPF_H: Final = 0x08
BPF_B: Final = 0x10

BPF_IMM: Final = 0x00
BPF_ABS: Final = 0x20
BPF_IND: Final = 0x40
BPF_MEM: Final = 0x60
BPF_LEN: Final = 0x80
BPF_MSH: Final = 0xA0

BPF_ADD: Final = 0x00
BPF_SUB: Final = 0x10
BPF_MUL: Final = 0x20
BPF_DIV: Final = 0x30
BPF_OR: Final = 0x40
BPF_AND: Final = 0x50
BPF_LSH: Final = 0x60
BPF_RSH: Final = 0x70
BPF_NEG: Final = 0x80
BPF_MOD: Final = 0x90
BPF_XOR: Final = 0xA0

BPF_JA: Final = 0x00
BPF_JEQ: Final = 0x10
BPF_JGT: Final = 0x20
BPF_JGE: Final = 0x30
BPF_JSET: Final = 0x40

BPF_K: Final = 0x00
BPF_X: Final = 0x08
BPF_A: Final = 0x10  # RET A

BPF_TAX: Final = 0x00
BPF_TXA: Final = 0x80


def BPF_CLASS(code: int) -> int:
    return code & 0x07


def BPF_SIZE(code: int) -> int:
    return code & 0x18


def BPF_MODE(code: int) -> int:
    return code & 0xE0


def BPF_OP(code: int) -> int:
    return code & 0xF0


def BPF_SRC(code: int) -> int:
    return code & 0x08


def BPF_RVAL(code: int) -> int:
    return code & 0x18


def BPF_MISCOP(code: int) -> int:
    return code & 0xF8


class BpfInsn:
    """struct bpf_insn: one instruction (`code`, `jt`, `jf`, `k`)."""

    __slots__ = ("code", "jf", "jt", "k")

    def __init__(self, code: int, jt: int, jf: int, k: int) -> None:
        self.code = code
        self.jt = jt
        self.jf = jf
        self.k = k

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BpfInsn):
            return NotImplemented
        return (self.code, self.jt, self.jf, self.k) == (other.code, other.jt, other.jf, other.k)

    def __hash__(self) -> int:
        return hash((self.code, self.jt, self.jf, self.k))

    def __repr__(self) -> str:
        return f"{{ 0x{self.code:x}, {self.jt}, {self.jf}, 0x{self.k:08x} }}"


def BPF_STMT(code: int, k: int) -> BpfInsn:
    return BpfInsn(code, 0, 0, k)


def BPF_JUMP(code: int, k: int, jt: int, jf: int) -> BpfInsn:
    return BpfInsn(code, jt, jf, k)


def bpf_program_pack(prog: list[BpfInsn]) -> bytes:
    """The instruction array of a struct bpf_program as it travels to the kernel."""
    return b"".join([BPF_INSN.pack(i.code, i.jt, i.jf, i.k) for i in prog])


def bpf_program_unpack(data: bytes) -> list[BpfInsn]:
    """Instructions from their packed array; ValueError if the length is not whole."""
    if len(data) % BPF_INSN.size:
        raise ValueError(f"bpf program of {len(data)} bytes is not whole instructions")
    return [BpfInsn(c, t, f, k) for c, t, f, k in BPF_INSN.iter_unpack(data)]
