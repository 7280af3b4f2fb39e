"""A JIT for classic BPF: a validated program compiled once into a Python function.

Theory of operation. FreeBSD's `bpf_jitter` turns a program into machine code
(sys/amd64/amd64/bpf_jit_machdep.c); here the target is Python source, built
once by `bpf_jit_compile` and turned into a function with `compile()`. Jumps
in classic BPF only go forward, so the program is cut into basic blocks at
every jump target and each block becomes one `if L == n:` section of a
straight-line function: a taken jump sets L to its target and the sections in
between are skipped by one integer test each. Constants are folded into the
source (offsets, shift counts, return values), scratch words are locals, and a
load whose bytes lie in the "head" is inlined (`head[k]`,
`int.from_bytes(head[k:k+4])`): the head is the contiguous buffer itself, or
for an mbuf chain its first mbuf when mapped (the frame's headers, where
nearly every load of a real filter lands). A load past the head falls back to
the interpreter's own loader, which rejects past `buflen` or walks the chain
when buflen is 0, so calling a `BpfJitFilter` takes exactly `bpf_filter`'s
arguments and gives exactly its answers (tests/bpf/test_jit.py checks that on
random valid programs and on random packets, contiguous and cut into chains,
with hypothesis).

Speed (`python -m tests.bpf.jit_bench`, and with NOMAPD_PURE=1: `tcp port 443`
from tcpdump -dd on a 1514-byte IPv4 TCP frame to port 443, best of 5 x 20000
calls, two runs each on this shared 2-core machine, load ~1.8), per packet:

  core      packet            interpreter   JIT       speedup
  pure      contiguous        3.3 us        0.77 us   x4.3
  pure      2-mbuf chain      6.9-7.7 us    1.1 us    x5.7-7.0
  compiled  contiguous        1.0-1.9 us    0.7-1.4 us  x1.4-1.5
  compiled  2-mbuf chain      3.1-4.7 us    1.0 us    x2.9-4.6

The generated function is interpreted Python in both cores, so mypyc's
compiled interpreter narrows the gap; the tap always filters a chain (the
Ethernet + IP + TCP header mbuf, then the payload), where the JIT's in-place
reads of the first mbuf pay most.

Models: the role of sys/net/bpf_jitter.c (`bpf_jitter`, `bpf_destroy_jit_filter`):
a program compiled when BIOCSETF installs it, used in its place by the taps.

Deliberate differences: the kernel uses its JIT only for a packet in one
contiguous buffer (`m->m_next == NULL`) and the interpreter for chains; here the
compiled function serves chains too, through the same chain loader as the
interpreter (the same answers, including the kernel's two-mbuf limit for a
straddling load). The program must have passed `bpf_validate`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bpf.bpf_filter import U32, _load, bpf_validate
from bpf.bpf_h import (
    BPF_A,
    BPF_ABS,
    BPF_ADD,
    BPF_ALU,
    BPF_AND,
    BPF_B,
    BPF_DIV,
    BPF_H,
    BPF_IMM,
    BPF_IND,
    BPF_JA,
    BPF_JEQ,
    BPF_JGE,
    BPF_JGT,
    BPF_JMP,
    BPF_JSET,
    BPF_LD,
    BPF_LDX,
    BPF_LEN,
    BPF_LSH,
    BPF_MEM,
    BPF_MSH,
    BPF_MUL,
    BPF_NEG,
    BPF_OR,
    BPF_RET,
    BPF_RSH,
    BPF_ST,
    BPF_STX,
    BPF_SUB,
    BPF_TAX,
    BPF_W,
    BPF_X,
    BpfInsn,
)
from mbuf.mbuf import M_NOMAP, Mbuf, mtod

# (packet bytes or Mbuf, wirelen, buflen, head, headlen) -> snap length
BpfFunc = Callable[[Any, int, int, Any, int], int]


class BpfJitFilter:
    """A compiled program: calling it answers as bpf_filter(prog, p, wirelen, buflen)."""

    __slots__ = ("func", "ninsns", "source")

    def __init__(self, func: BpfFunc, source: str, ninsns: int) -> None:
        self.func = func
        self.source = source  # the generated Python, for a curious reader
        self.ninsns = ninsns

    def __call__(self, p: bytes | Mbuf, wirelen: int, buflen: int) -> int:
        """`head`/`headlen`: the bytes loads read in place, the buffer itself or, for
        a chain, its first mbuf when mapped (a load beyond walks the chain)."""
        if isinstance(p, Mbuf):
            if buflen == 0 and not p.m_flags & M_NOMAP:
                return int(self.func(p, wirelen, 0, mtod(p), p.m_len))
            return int(self.func(p, wirelen, buflen, b"", 0))
        return int(self.func(p, wirelen, buflen, p, buflen))


def _emit_load(out: list[str], ind: str, dst: str, size: int, kexpr: str, const: int) -> None:
    """Code loading `size` bytes at offset kexpr into dst; `const` >= 0 when it is a constant."""
    need = f"{const + size}" if const >= 0 else f"{kexpr} + {size}"
    if size == 1:
        fast = f"head[{kexpr}]"
    elif size == 2:
        fast = f"(head[{kexpr}] << 8) | head[{kexpr} + 1]"
    else:
        fast = f"int.from_bytes(head[{kexpr}:{kexpr} + 4], 'big')"
    out.append(f"{ind}if {need} <= headlen:")
    out.append(f"{ind}    {dst} = {fast}")
    out.append(f"{ind}else:")
    out.append(f"{ind}    {dst} = _load(p, {kexpr}, {size}, buflen)")
    out.append(f"{ind}    if {dst} < 0:")
    out.append(f"{ind}        return 0")


def _emit(ins: BpfInsn, i: int, out: list[str], ind: str) -> bool:
    """Code for one instruction; True if it ends its block (jump or return)."""
    code = ins.code
    k = ins.k
    cls = code & 0x07
    if cls == BPF_RET:
        out.append(f"{ind}return A" if (code & 0x18) == BPF_A else f"{ind}return {k}")
        return True
    if cls in (BPF_LD, BPF_LDX):
        mode = code & 0xE0
        dst = "A" if cls == BPF_LD else "X"
        if mode == BPF_ABS:
            size = {BPF_W: 4, BPF_H: 2, BPF_B: 1}[code & 0x18]
            _emit_load(out, ind, dst, size, str(k), k)
        elif mode == BPF_IND:
            size = {BPF_W: 4, BPF_H: 2, BPF_B: 1}[code & 0x18]
            out.append(f"{ind}if buflen and ({k} > buflen or X > buflen - {k}):")
            out.append(f"{ind}    return 0")
            out.append(f"{ind}k = (X + {k}) & {U32}")
            _emit_load(out, ind, "A", size, "k", -1)
        elif mode == BPF_MSH:
            _emit_load(out, ind, "X", 1, str(k), k)
            out.append(f"{ind}X = (X & 15) << 2")
        elif mode == BPF_LEN:
            out.append(f"{ind}{dst} = wirelen")
        elif mode == BPF_IMM:
            out.append(f"{ind}{dst} = {k}")
        elif mode == BPF_MEM:
            out.append(f"{ind}{dst} = m{k}")
        else:
            out.append(f"{ind}return 0")
            return True
        return False
    if cls == BPF_ST:
        out.append(f"{ind}m{k} = A")
        return False
    if cls == BPF_STX:
        out.append(f"{ind}m{k} = X")
        return False
    if cls == BPF_JMP:
        op = code & 0xF0
        if op == BPF_JA:
            out.append(f"{ind}L = {i + 1 + k}")
            return True
        v = "X" if code & BPF_X else str(k)
        cond = {BPF_JEQ: f"A == {v}", BPF_JGT: f"A > {v}", BPF_JGE: f"A >= {v}"}.get(op)
        if op == BPF_JSET:
            cond = f"A & {v}"
        if cond is None:
            out.append(f"{ind}return 0")
            return True
        t = i + 1 + ins.jt
        f = i + 1 + ins.jf
        out.append(f"{ind}L = {t} if {cond} else {f}" if t != f else f"{ind}L = {t}")
        return True
    if cls == BPF_ALU:
        op = code & 0xF0
        if op == BPF_NEG:
            out.append(f"{ind}A = (-A) & {U32}")
            return False
        src_x = bool(code & BPF_X)
        v = "X" if src_x else str(k)
        if op == BPF_ADD:
            out.append(f"{ind}A = (A + {v}) & {U32}")
        elif op == BPF_SUB:
            out.append(f"{ind}A = (A - {v}) & {U32}")
        elif op == BPF_MUL:
            out.append(f"{ind}A = (A * {v}) & {U32}")
        elif op == BPF_DIV:
            if src_x:
                out.append(f"{ind}if X == 0:")
                out.append(f"{ind}    return 0")
            out.append(f"{ind}A //= {v}")
        elif op == BPF_OR:
            out.append(f"{ind}A |= {v}")
        elif op == BPF_AND:
            out.append(f"{ind}A &= {v}")
        elif op in (BPF_LSH, BPF_RSH):
            shift = f"(A << {v}) & {U32}" if op == BPF_LSH else f"A >> {v}"
            if src_x:
                out.append(f"{ind}A = {shift} if X < 32 else 0")
            else:
                out.append(f"{ind}A = {shift}" if k < 32 else f"{ind}A = 0")
        else:
            out.append(f"{ind}return 0")
            return True
        return False
    # BPF_MISC
    out.append(f"{ind}X = A" if (code & 0xF8) == BPF_TAX else f"{ind}A = X")
    return False


def bpf_jit_source(prog: list[BpfInsn]) -> str:
    """The Python source of the compiled program (one function, `bpf_jit_filter`)."""
    n = len(prog)
    labels = {0}
    for i, ins in enumerate(prog):
        if ins.code & 0x07 == BPF_JMP:
            if ins.code & 0xF0 == BPF_JA:
                labels.add(i + 1 + ins.k)
            else:
                labels.add(i + 1 + ins.jt)
                labels.add(i + 1 + ins.jf)
    mem = sorted({ins.k for ins in prog if ins.code in (BPF_ST, BPF_STX)})
    out = ["def bpf_jit_filter(p, wirelen, buflen, head, headlen):", "    A = 0", "    X = 0"]
    out += [f"    m{w} = 0" for w in range(16) if w in mem or _reads_mem(prog, w)]
    multi = len(labels) > 1
    if multi:
        out.append("    L = 0")
    ended = False
    for i, ins in enumerate(prog):
        if i in labels and multi:
            if i and not ended:
                out.append(f"        L = {i}")  # fall through into the labelled block
            out.append(f"    if L == {i}:")
            ended = False
        elif ended:
            continue  # unreachable: after a jump or return, before the next label
        ended = _emit(ins, i, out, "        " if multi else "    ")
    if n and not ended:
        out.append("    return 0")
    out.append("    return 0")
    return "\n".join(out) + "\n"


def _reads_mem(prog: list[BpfInsn], w: int) -> bool:
    return any(ins.k == w and ins.code in (BPF_LD | BPF_MEM, BPF_LDX | BPF_MEM) for ins in prog)


def bpf_jit_compile(prog: list[BpfInsn]) -> BpfJitFilter:
    """bpf_jitter: compile a program; ValueError unless it passes bpf_validate."""
    if not bpf_validate(prog):
        raise ValueError("bpf_jit_compile: program does not pass bpf_validate")
    source = bpf_jit_source(prog)
    namespace: dict[str, Any] = {"_load": _load}
    exec(compile(source, "<bpf_jit>", "exec"), namespace)
    return BpfJitFilter(namespace["bpf_jit_filter"], source, len(prog))
