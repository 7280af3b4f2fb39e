"""The BPF ioctls: one typed function each, and `bpfioctl`, bytes in and bytes out.

Theory of operation. Each `bpf_ioctl_*` function is one case of the kernel's
`bpfioctl` switch, with Python arguments and results and the kernel's errnos
(OSError). The device layer may call them directly, or forward a process's
ioctl as the number and the argument struct's bytes (in the layouts of
bpf/bpf_h.py, as sys_ioctl copies `IOCPARM_LEN(cmd)` bytes in) to
`bpfioctl`, which unpacks them, calls the function and packs what the ioctl
copies out (b"" for one that copies nothing). The one pointer a BPF ioctl
follows, `bf_insns` of `struct bpf_program`, cannot cross a socket: the
instructions travel right after the struct, `bf_len` of them (the model's
copyin). BIOCSETZBUF needs the process's shared memory (`uvm`), which the
device maps from the descriptor it received.

Models: the switch of `bpfioctl` in sys/net/bpf.c with `bpf_setf`,
`bpf_setif`, `bpf_ioctl_sblen`, `bpf_ioctl_getzmax`, `bpf_ioctl_rotzbuf`,
`bpf_ioctl_setzbuf` (FreeBSD 12, 2019), and the IOC_IN / IOC_OUT copies of
sys_ioctl (sys/kern/sys_generic.c).

Deliberate differences: BIOCROTZBUF first takes back a hold buffer the
process has acknowledged (the lazy reclaim catchpacket and reset_d do), then
rotates; FreeBSD's bpf_zerocopy_ioctl_rotzbuf rotates only when no buffer is
held, which leaves a timed-out store buffer behind an acknowledged hold buffer
until the next packet while bpfpoll answers readable (bd_state TIMED_OUT,
bd_slen != 0): libpcap's loop then spins, which two captures at once on the
model hit after every burst. An argument of the wrong length answers EINVAL (a
real ioctl always copies the length its number encodes, EFAULT if it cannot).
BIOCSKEYLOG and BIOCGKEYLOG are nomapd's (bpf/bpf_keylog.py): TLS key export,
which FreeBSD does not have. BIOCSKEYLOG copies out whether this call turned
it on (the device logs that once). BIOCPROMISC, BIOCSETWF, BIOCLOCK,
BIOCFEEDBACK, signals and the DLT list are not modeled: EINVAL, as the kernel
answers an unknown ioctl.
"""

from __future__ import annotations

import errno

from bpf import bpf_buffer as _buf
from bpf import bpf_zerocopy as _zbuf
from bpf.bpf import ROTATE_BUFFERS, bpf_attachd, bpf_buf_reclaimed, bpf_canfreebuf, reset_d
from bpf.bpf_filter import bpf_validate
from bpf.bpf_h import (
    BIOCFLUSH,
    BIOCGBLEN,
    BIOCGDIRECTION,
    BIOCGDLT,
    BIOCGETBUFMODE,
    BIOCGETIF,
    BIOCGETZMAX,
    BIOCGKEYLOG,
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
    BIOCSKEYLOG,
    BIOCSRTIMEOUT,
    BIOCSTSTAMP,
    BIOCVERSION,
    BPF_BUFMODE_BUFFER,
    BPF_BUFMODE_ZBUF,
    BPF_D_IN,
    BPF_D_INOUT,
    BPF_D_OUT,
    BPF_INSN,
    BPF_MAJOR_VERSION,
    BPF_MINOR_VERSION,
    BPF_PROGRAM,
    BPF_STAT,
    BPF_T_FLAG_MASK,
    BPF_T_FORMAT_MASK,
    BPF_T_NONE,
    BPF_VERSION,
    BPF_ZBUF,
    IFNAMSIZ,
    SIZE_T,
    SIZEOF_IFREQ,
    TIMEVAL,
    U_INT,
    BpfInsn,
    bpf_program_unpack,
)
from bpf.bpf_jit import bpf_jit_compile
from bpf.bpf_keylog import bpf_keylog_attach, bpf_keylog_detach, bpf_keylog_take
from bpf.bpf_zerocopy import Uvm
from bpf.bpfdesc import BpfD

# ---------------------------------------------------------------------------
# ioctls, one function each
# ---------------------------------------------------------------------------


def bpf_ioctl_sblen(d: BpfD, size: int) -> int:
    """BIOCSBLEN: EOPNOTSUPP in zero-copy mode; returns the clamped size set."""
    if d.bd_bufmode != BPF_BUFMODE_BUFFER:
        raise OSError(errno.EOPNOTSUPP, "BIOCSBLEN: not in buffered mode")
    return _buf.bpf_buffer_ioctl_sblen(d, size)


def bpf_ioctl_gblen(d: BpfD) -> int:
    """BIOCGBLEN: bytes of one buffer (what a read must ask for)."""
    return d.bd_bufsize


def bpf_ioctl_setf(d: BpfD, prog: list[BpfInsn] | None, flush: bool = True) -> None:
    """BIOCSETF (flush True) / BIOCSETFNR: install a read filter (None: accept all).
    EINVAL for a program bpf_validate refuses or longer than net.bpf.maxinsns."""
    bpf = d.bd_bpf
    jit = None
    if prog is not None:
        if not bpf_validate(prog, bpf.sysctl.maxinsns):  # read per BIOCSETF
            bpf.stats.filters_rejected += 1
            raise OSError(errno.EINVAL, f"BIOCSETF: invalid filter program ({len(prog)} insns)")
        prog = list(prog)
        jit = bpf_jit_compile(prog)
        bpf.stats.jit_compiled += 1
    d.bd_rfilter = prog
    d.bd_jit = jit
    bpf.stats.filters_set += 1
    if flush:
        reset_d(d)


def bpf_ioctl_setif(d: BpfD, name: str) -> None:
    """BIOCSETIF: attach to interface `name` (ENXIO if none). Buffered mode allocates
    its buffers now; zero-copy mode needs BIOCSETZBUF first (EINVAL)."""
    bif = d.bd_bpf.bpf_iflist.get(name)
    if bif is None:
        raise OSError(errno.ENXIO, f"BIOCSETIF: no interface {name!r}")
    if d.bd_bufmode == BPF_BUFMODE_BUFFER:
        if d.bd_sbuf is None:
            _buf.bpf_buffer_alloc(d)
    elif d.bd_sbuf is None:
        raise OSError(errno.EINVAL, "BIOCSETIF: zero-copy buffers not set (BIOCSETZBUF first)")
    if bif is not d.bd_bif:
        bpf_attachd(d, bif)
    reset_d(d)


def bpf_ioctl_getif(d: BpfD) -> str:
    if d.bd_bif is None:
        raise OSError(errno.EINVAL, "BIOCGETIF: not attached")
    return d.bd_bif.bif_name


def bpf_ioctl_gdlt(d: BpfD) -> int:
    if d.bd_bif is None:
        raise OSError(errno.EINVAL, "BIOCGDLT: not attached")
    return d.bd_bif.bif_dlt


def bpf_ioctl_flush(d: BpfD) -> None:
    """BIOCFLUSH: reset_d."""
    reset_d(d)


def bpf_ioctl_gstats(d: BpfD) -> tuple[int, int]:
    """BIOCGSTATS: (bs_recv, bs_drop), each an u_int."""
    return d.bd_rcount & 0xFFFFFFFF, d.bd_dcount & 0xFFFFFFFF


def bpf_ioctl_immediate(d: BpfD, on: bool) -> None:
    d.bd_immediate = on


def bpf_ioctl_sdirection(d: BpfD, direction: int) -> None:
    if direction not in (BPF_D_IN, BPF_D_OUT, BPF_D_INOUT):
        raise OSError(errno.EINVAL, f"BIOCSDIRECTION: bad direction {direction}")
    d.bd_direction = direction


def bpf_ioctl_srtimeout(d: BpfD, sec: int, usec: int) -> None:
    """BIOCSRTIMEOUT: the read timeout (0: none); EINVAL for a bad timeval."""
    if sec < 0 or not 0 <= usec < 1_000_000:
        raise OSError(errno.EINVAL, f"BIOCSRTIMEOUT: bad timeval {sec}.{usec:06d}")
    d.bd_rtout = sec * 1_000_000 + usec


def bpf_ioctl_grtimeout(d: BpfD) -> tuple[int, int]:
    return divmod(d.bd_rtout, 1_000_000)


def bpf_ioctl_ststamp(d: BpfD, tstype: int) -> None:
    """BIOCSTSTAMP: BPF_T_VALID: NONE alone, or a format other than NONE with flags."""
    fmt = tstype & BPF_T_FORMAT_MASK
    valid = tstype == BPF_T_NONE or (
        fmt != BPF_T_NONE and tstype & ~(BPF_T_FORMAT_MASK | BPF_T_FLAG_MASK) == 0
    )
    if not valid:
        raise OSError(errno.EINVAL, f"BIOCSTSTAMP: bad timestamp type {tstype:#x}")
    d.bd_tstamp = tstype


def bpf_ioctl_setbufmode(d: BpfD, mode: int) -> None:
    """BIOCSETBUFMODE: ZBUF only with net.bpf.zerocopy_enable (else EINVAL, as the
    kernel answers); EBUSY once buffers exist or an interface is attached."""
    if mode == BPF_BUFMODE_ZBUF:
        if not d.bd_bpf.sysctl.zerocopy_enable:  # read per BIOCSETBUFMODE
            raise OSError(errno.EINVAL, "BIOCSETBUFMODE: net.bpf.zerocopy_enable is 0")
    elif mode != BPF_BUFMODE_BUFFER:
        raise OSError(errno.EINVAL, f"BIOCSETBUFMODE: unknown mode {mode}")
    if d.bd_sbuf is not None or d.bd_hbuf is not None or d.bd_fbuf is not None or d.bd_bif:
        raise OSError(errno.EBUSY, "BIOCSETBUFMODE: buffers or interface already set")
    d.bd_bufmode = mode


def bpf_ioctl_getzmax(d: BpfD) -> int:
    return _zbuf.bpf_zerocopy_ioctl_getzmax(d)


def bpf_ioctl_setzbuf(d: BpfD, uvm: _zbuf.Uvm, bufa: int, bufb: int, buflen: int) -> None:
    """BIOCSETZBUF: EOPNOTSUPP unless in zero-copy mode; see bpf_zerocopy_ioctl_setzbuf."""
    if d.bd_bufmode != BPF_BUFMODE_ZBUF:
        raise OSError(errno.EOPNOTSUPP, "BIOCSETZBUF: not in zero-copy mode")
    _zbuf.bpf_zerocopy_ioctl_setzbuf(d, uvm, bufa, bufb, buflen)


def bpf_ioctl_rotzbuf(d: BpfD) -> tuple[int, int]:
    """BIOCROTZBUF: rotate a non-empty store buffer if the hold slot is empty; returns
    (bz_bufa, bz_buflen) of the buffer now held, or (0, 0) if nothing rotated."""
    if d.bd_bufmode != BPF_BUFMODE_ZBUF:
        raise OSError(errno.EOPNOTSUPP, "BIOCROTZBUF: not in zero-copy mode")
    if d.bd_hbuf is not None and bpf_canfreebuf(d):
        # The lazy reclaim catchpacket does (see the module head): without it a
        # timed-out store buffer behind an acknowledged hold buffer stays put while
        # poll answers readable, and the reader spins until the next packet.
        d.bd_fbuf = d.bd_hbuf
        d.bd_hbuf = None
        d.bd_hlen = 0
        bpf_buf_reclaimed(d)
    if d.bd_hbuf is None and d.bd_slen != 0:
        # the buffer ROTATE_BUFFERS returns, not d.bd_hbuf: mypy (and so mypyc) still
        # holds that attribute narrowed to None after the call
        hbuf = ROTATE_BUFFERS(d)
        assert isinstance(hbuf, _zbuf.Zbuf)
        return hbuf.zb_uaddr, d.bd_hlen
    return 0, 0


# ---------------------------------------------------------------------------
# bpfioctl: bytes in, bytes out
# ---------------------------------------------------------------------------


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
    if cmd == BIOCSKEYLOG:  # nomapd's own (bpf/bpf_keylog.py)
        if _u_int("BIOCSKEYLOG", arg):
            return U_INT.pack(1 if bpf_keylog_attach(d) else 0)
        bpf_keylog_detach(d)
        return U_INT.pack(0)
    if cmd == BIOCGKEYLOG:
        return bpf_keylog_take(d, _u_int("BIOCGKEYLOG", arg))
    raise OSError(errno.EINVAL, f"bpfioctl: unsupported ioctl {cmd:#x}")
