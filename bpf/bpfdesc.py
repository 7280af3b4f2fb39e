"""net/bpfdesc.h: the descriptor (`BpfD`), the subsystem of one kernel (`Bpf`), its
sysctls, `netstat -B`'s row (`Xbpfd`) and the global counters (`BpfStat`).

Theory of operation. One `Bpf` per modeled kernel (per worker) holds what
FreeBSD keeps in globals: the attached interfaces (`bpf_iflist`), the
`net.bpf.*` sysctls, the clock the taps read, and the counters for /stats. A
`BpfD` is one open /dev/bpf: its three buffer slots
(store, hold, free), their lengths, its mode, filter, flags and counters,
named as `struct bpf_d` names them. The functions that act on them are in
bpf/bpf.py; the buffers are `BpfBuf` (buffered mode, bpf/bpf_buffer.py) or
`Zbuf` (zero-copy mode, bpf/bpf_zerocopy.py), which share one shape: a
writable view of the data area where records are laid.

The interface's tap point, `BpfIf`, is in bpf/bpf.py, as later revisions made
struct bpf_if private to sys/net/bpf.c.

Models: sys/net/bpfdesc.h (struct bpf_d, struct xbpf_d,
BPF_IDLE/BPF_WAITING/BPF_TIMED_OUT), the net.bpf sysctls of sys/net/bpf.c and
sys/net/bpf_zerocopy.c, and the counters `netstat -B` prints.

Deliberate differences: no locks (a worker is one thread, so the descriptor
lock and the interface lock have nothing to exclude); counters are Python
integers (the kernel's `counter_u64_t`), and the `bs_recv`/`bs_drop` answers
are cut to u_int as the ioctl's struct is. Beyond the kernel, the global group
`BpfStat` counts descriptors and buffers in use, so a test can prove that
closing every descriptor frees everything, and the copies taken from unmapped
mbufs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from bpf.bpf_h import (
    BPF_BUFMODE_BUFFER,
    BPF_D_IN,
    BPF_D_INOUT,
    BPF_D_OUT,
    BPF_DEFAULTBUFSIZE,
    BPF_MAXBUFSIZE,
    BPF_MAXINSNS,
    BPF_T_MICROTIME,
    BpfInsn,
)
from bpf.bpf_jit import BpfJitFilter

if TYPE_CHECKING:
    from bpf.bpf import BpfIf

# bd_state: the read timeout's state machine (bpfdesc.h)
BPF_IDLE = 0  # no select/read in progress
BPF_WAITING = 1  # waiting for a read timeout
BPF_TIMED_OUT = 2  # the read timeout expired


@dataclass(slots=True)
class BpfStat:
    """Global BPF counters of one kernel (/stats group "bpf")."""

    descriptors_in_use: int = 0  # open descriptors (bpf_bpfd_cnt counts attached ones)
    descriptors_total: int = 0
    attached: int = 0  # descriptors on an interface's bif_dlist (bpf_bpfd_cnt)
    buffers_in_use: int = 0  # store/hold/free buffers allocated or registered
    buffer_bytes: int = 0  # their sizes (kernel memory in buffered mode, loaned in zbuf)
    packets_tapped: int = 0  # bpf_mtap calls that found a listener
    packets_captured: int = 0  # records stored, over all descriptors
    packets_dropped: int = 0  # bd_dcount increments, over all descriptors
    bytes_captured: int = 0  # packet bytes copied into buffers (headers not counted)
    unmapped_copies: int = 0  # records copied from a chain holding unmapped mbufs
    unmapped_mbufs_copied: int = 0  # unmapped mbufs read through m_copydata's page walk
    zerocopy_appends: int = 0  # records appended to zero-copy buffers (sum of bd_zcopy)
    zbuf_handovers: int = 0  # buffers given to user space (bzh_kernel_gen bumped)
    zbuf_reclaims: int = 0  # acknowledged buffers taken back by catchpacket / reset_d
    reads: int = 0  # buffered-mode reads that copied a hold buffer out
    read_bytes: int = 0
    filters_set: int = 0  # BIOCSETF/BIOCSETFNR accepted
    filters_rejected: int = 0  # ... refused by bpf_validate (EINVAL)
    jit_compiled: int = 0  # programs compiled by bpf_jit_compile
    # nomapd's TLS key export (bpf/bpf_keylog.py), not FreeBSD's:
    keylog_descriptors: int = 0  # descriptors that asked for keys (BIOCSKEYLOG)
    keylog_bytes: int = 0  # key log bytes pending in descriptors
    keylog_lines: int = 0  # lines handed to descriptors
    keylog_dropped: int = 0  # lines not handed: the descriptor had BPF_KEYLOG_MAX pending
    keylog_sessions_pending: int = 0  # handshakes whose lines the worker holds (bpfkeys.py)

    def items(self) -> list[tuple[str, int]]:
        return [(f"bpf.{f.name}", getattr(self, f.name)) for f in fields(self)]

    def leaks(self) -> dict[str, int]:
        """The counters that must be zero once every descriptor is closed, when not zero."""
        out: dict[str, int] = {}
        for name in ("descriptors_in_use", "attached", "buffers_in_use", "buffer_bytes",
                     "keylog_descriptors", "keylog_bytes", "keylog_sessions_pending"):  # fmt: skip
            v = int(getattr(self, name))
            if v:
                out[f"bpf.{name}"] = v
        return out


class BpfSysctl:
    """The net.bpf sysctls (and their defaults)."""

    __slots__ = ("bufsize", "maxbufsize", "maxinsns", "zerocopy_enable")

    def __init__(self) -> None:
        self.bufsize = BPF_DEFAULTBUFSIZE  # net.bpf.bufsize: a new descriptor's buffer size
        self.maxbufsize = BPF_MAXBUFSIZE  # net.bpf.maxbufsize: BIOCSBLEN's ceiling
        self.maxinsns = BPF_MAXINSNS  # net.bpf.maxinsns: longest filter program
        self.zerocopy_enable = False  # net.bpf.zerocopy_enable: BIOCSETBUFMODE(ZBUF) allowed


class BpfBuf:
    """One buffer of a descriptor: `data` is the area records are written into.

    Buffered mode allocates it (a bytearray); zero-copy mode points it into the
    process's shared memory past the 32-byte header (`Zbuf`)."""

    __slots__ = ("data",)

    def __init__(self, data: memoryview) -> None:
        self.data = data


WakeupFn = Callable[["BpfD"], None]


class BpfD:
    """struct bpf_d: one open /dev/bpf."""

    __slots__ = (
        "bd_bif",
        "bd_bpf",
        "bd_bufmode",
        "bd_bufsize",
        "bd_dcount",
        "bd_direction",
        "bd_fbuf",
        "bd_fcount",
        "bd_hbuf",
        "bd_hlen",
        "bd_immediate",
        "bd_jit",
        "bd_keylog",
        "bd_keys",
        "bd_pid",
        "bd_rcount",
        "bd_rfilter",
        "bd_rtout",
        "bd_sbuf",
        "bd_slen",
        "bd_state",
        "bd_tstamp",
        "bd_wakeup",
        "bd_zcopy",
    )

    def __init__(self, bpf: Bpf, pid: int) -> None:
        self.bd_bpf = bpf
        self.bd_pid = pid  # the opener, shown by netstat -B
        self.bd_bif: BpfIf | None = None  # interface attached by BIOCSETIF
        self.bd_sbuf: BpfBuf | None = None  # store: catchpacket appends here
        self.bd_hbuf: BpfBuf | None = None  # hold: waiting for the reader
        self.bd_fbuf: BpfBuf | None = None  # free: the spare (None while the reader has one)
        self.bd_slen = 0
        self.bd_hlen = 0
        self.bd_bufsize = (
            bpf.sysctl.bufsize
        )  # usable bytes of each buffer (net.bpf.bufsize at open)
        self.bd_bufmode = BPF_BUFMODE_BUFFER
        self.bd_rfilter: list[BpfInsn] | None = None  # read filter (None: accept all)
        self.bd_jit: BpfJitFilter | None = None  # its compiled form
        self.bd_direction = BPF_D_INOUT
        self.bd_immediate = False
        self.bd_tstamp = BPF_T_MICROTIME
        self.bd_rtout = 0  # read timeout in microseconds (the kernel keeps ticks)
        self.bd_state = BPF_IDLE
        self.bd_rcount = 0  # packets offered after the direction check (bs_recv)
        self.bd_fcount = 0  # packets the filter accepted ("matched")
        self.bd_dcount = 0  # accepted, but no buffer space (bs_drop)
        self.bd_zcopy = 0  # records appended to zero-copy buffers
        self.bd_keylog = False  # nomapd: asked for TLS key log lines (BIOCSKEYLOG)
        self.bd_keys = bytearray()  # nomapd: key log lines pending (BIOCGKEYLOG)
        # bpf_wakeup's reach: the device layer sets this to learn that the
        # descriptor became readable (select/poll/kqueue, SIGIO in the kernel).
        self.bd_wakeup: WakeupFn | None = None


class Bpf:
    """The BPF subsystem of one modeled kernel: interfaces, sysctls, clock, counters."""

    __slots__ = ("bpf_iflist", "bpf_keyds", "clock", "stats", "sysctl")

    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self.bpf_iflist: dict[str, BpfIf] = {}
        self.bpf_keyds: list[BpfD] = []  # nomapd: descriptors that asked for TLS keys
        self.sysctl = BpfSysctl()
        self.stats = BpfStat()
        self.clock = clock  # nanoseconds since the epoch; tests pass a fake one


@dataclass(frozen=True, slots=True)
class Xbpfd:
    """struct xbpf_d: one descriptor as `netstat -B` shows it."""

    bd_pid: int
    bd_ifname: str
    bd_immediate: bool
    bd_direction: int
    bd_rcount: int
    bd_dcount: int
    bd_fcount: int
    bd_slen: int
    bd_hlen: int
    bd_bufsize: int
    bd_bufmode: int
    bd_zcopy: int

    def flags(self) -> str:
        """netstat -B's flag column as usr.bin/netstat/bpf.c's bpf_flags prints it:
        p promiscuous (never here), i immediate, f header not complete (no writes
        here: always 'f'), direction (- in, o out, s both), b feedback, a async,
        l locked (none modeled)."""
        direction = {BPF_D_IN: "-", BPF_D_OUT: "o"}.get(self.bd_direction, "s")
        return "-" + ("i" if self.bd_immediate else "-") + "f" + direction + "---"
