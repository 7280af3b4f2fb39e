"""bpfioctl: an ioctl number and its argument bytes in, the bytes copied out back.

Theory of operation. The device layer forwards a process's ioctl as the
number and the argument struct's bytes (in the layouts of bpf/bpf_h.py, as
sys_ioctl copies `IOCPARM_LEN(cmd)` bytes in); `bpfioctl` unpacks them, calls
the typed `bpf_ioctl_*` function of bpf/bpf.py and packs what the ioctl
copies out (b"" for one that copies nothing). The one pointer a BPF ioctl
follows, `bf_insns` of `struct bpf_program`, cannot cross a socket: the
instructions travel right after the struct, `bf_len` of them (the model's
copyin). BIOCSETZBUF needs the process's shared memory (`uvm`), which the
device maps from the descriptor it received.

Models: the switch of `bpfioctl` in sys/net/bpf.c (2019), and the IOC_IN /
IOC_OUT copies of sys_ioctl (sys/kern/sys_generic.c).

Deliberate differences: an argument of the wrong length answers EINVAL (a
real ioctl always copies the length its number encodes, EFAULT if it cannot).
BIOCPROMISC, BIOCSETWF, BIOCLOCK, BIOCFEEDBACK, signals and the DLT list are
not modeled: EINVAL, as the kernel answers an unknown ioctl.
"""

from __future__ import annotations

import errno

from bpf.bpf import (
    bpf_ioctl_flush,
    bpf_ioctl_gblen,
    bpf_ioctl_gdlt,
    bpf_ioctl_getif,
    bpf_ioctl_getzmax,
    bpf_ioctl_grtimeout,
    bpf_ioctl_gstats,
    bpf_ioctl_immediate,
    bpf_ioctl_rotzbuf,
    bpf_ioctl_sblen,
    bpf_ioctl_sdirection,
    bpf_ioctl_setbufmode,
    bpf_ioctl_setf,
    bpf_ioctl_setif,
    bpf_ioctl_setzbuf,
    bpf_ioctl_srtimeout,
    bpf_ioctl_ststamp,
)
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
    BPF_INSN,
    BPF_MAJOR_VERSION,
    BPF_MINOR_VERSION,
    BPF_PROGRAM,
    BPF_STAT,
    BPF_VERSION,
    BPF_ZBUF,
    IFNAMSIZ,
    SIZE_T,
    SIZEOF_IFREQ,
    TIMEVAL,
    U_INT,
    bpf_program_unpack,
)
from bpf.bpf_zerocopy import Uvm
from bpf.bpfdesc import BpfD


def _u_int(cmd_name: str, arg: bytes) -> int:
    _need(cmd_name, arg, U_INT.size)
    return int(U_INT.unpack(arg)[0])


def _need(cmd_name: str, arg: bytes, size: int) -> None:
    if len(arg) != size:
        raise OSError(errno.EINVAL, f"{cmd_name}: argument of {len(arg)} bytes, want {size}")


def _ifname(arg: bytes) -> str:
    _need("BIOCSETIF", arg, SIZEOF_IFREQ)
    return arg[:IFNAMSIZ].split(b"\0", 1)[0].decode("ascii", "replace")


def bpfioctl(d: BpfD, cmd: int, arg: bytes = b"", uvm: Uvm | None = None) -> bytes:
    """One ioctl on d: `arg` is what the process passed (for BIOCSETF/BIOCSETFNR the
    struct bpf_program followed by its instructions); returns what it copies out."""
    if cmd == BIOCSBLEN:
        return U_INT.pack(bpf_ioctl_sblen(d, _u_int("BIOCSBLEN", arg)))
    if cmd == BIOCGBLEN:
        return U_INT.pack(bpf_ioctl_gblen(d))
    if cmd in (BIOCSETF, BIOCSETFNR):
        if len(arg) < BPF_PROGRAM.size:
            raise OSError(errno.EINVAL, "BIOCSETF: short struct bpf_program")
        bf_len, bf_insns = BPF_PROGRAM.unpack_from(arg)
        body = arg[BPF_PROGRAM.size :]
        if bf_insns == 0:
            if bf_len != 0:
                raise OSError(errno.EINVAL, "BIOCSETF: bf_len without bf_insns")
            bpf_ioctl_setf(d, None, flush=cmd == BIOCSETF)
            return b""
        if len(body) != bf_len * BPF_INSN.size:
            raise OSError(errno.EINVAL, f"BIOCSETF: {len(body)} bytes for {bf_len} insns")
        bpf_ioctl_setf(d, bpf_program_unpack(body), flush=cmd == BIOCSETF)
        return b""
    if cmd == BIOCFLUSH:
        bpf_ioctl_flush(d)
        return b""
    if cmd == BIOCGDLT:
        return U_INT.pack(bpf_ioctl_gdlt(d))
    if cmd == BIOCGETIF:
        name = bpf_ioctl_getif(d).encode("ascii")[: IFNAMSIZ - 1]
        return name.ljust(SIZEOF_IFREQ, b"\0")
    if cmd == BIOCSETIF:
        bpf_ioctl_setif(d, _ifname(arg))
        return b""
    if cmd == BIOCSRTIMEOUT:
        _need("BIOCSRTIMEOUT", arg, TIMEVAL.size)
        sec, usec = TIMEVAL.unpack(arg)
        bpf_ioctl_srtimeout(d, sec, usec)
        return b""
    if cmd == BIOCGRTIMEOUT:
        return TIMEVAL.pack(*bpf_ioctl_grtimeout(d))
    if cmd == BIOCGSTATS:
        return BPF_STAT.pack(*bpf_ioctl_gstats(d))
    if cmd == BIOCIMMEDIATE:
        bpf_ioctl_immediate(d, _u_int("BIOCIMMEDIATE", arg) != 0)
        return b""
    if cmd == BIOCVERSION:
        return BPF_VERSION.pack(BPF_MAJOR_VERSION, BPF_MINOR_VERSION)
    if cmd == BIOCGDIRECTION:
        return U_INT.pack(d.bd_direction)
    if cmd == BIOCSDIRECTION:
        bpf_ioctl_sdirection(d, _u_int("BIOCSDIRECTION", arg))
        return b""
    if cmd == BIOCGETBUFMODE:
        return U_INT.pack(d.bd_bufmode)
    if cmd == BIOCSETBUFMODE:
        bpf_ioctl_setbufmode(d, _u_int("BIOCSETBUFMODE", arg))
        return b""
    if cmd == BIOCGETZMAX:
        return SIZE_T.pack(bpf_ioctl_getzmax(d))
    if cmd == BIOCROTZBUF:
        bufa, buflen = bpf_ioctl_rotzbuf(d)
        return BPF_ZBUF.pack(bufa, 0, buflen)
    if cmd == BIOCSETZBUF:
        _need("BIOCSETZBUF", arg, BPF_ZBUF.size)
        if uvm is None:
            raise OSError(errno.EFAULT, "BIOCSETZBUF: no shared memory passed")
        bufa, bufb, buflen = BPF_ZBUF.unpack(arg)
        bpf_ioctl_setzbuf(d, uvm, bufa, bufb, buflen)
        return b""
    if cmd == BIOCGTSTAMP:
        return U_INT.pack(d.bd_tstamp)
    if cmd == BIOCSTSTAMP:
        bpf_ioctl_ststamp(d, _u_int("BIOCSTSTAMP", arg))
        return b""
    raise OSError(errno.EINVAL, f"bpfioctl: unsupported ioctl {cmd:#x}")
