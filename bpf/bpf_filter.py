"""The classic BPF machine: `bpf_filter` over bytes or mbuf chains, and `bpf_validate`.

Theory of operation. A program is a list of `BpfInsn` run by a loop over an
accumulator A, an index X and sixteen scratch words (reference A.11). Loads
are big-endian and bounds-checked; an out-of-range load, or a division by an
X of zero, rejects the packet (returns 0). The return value is the number of
bytes to capture, which is how the snap length reaches `catchpacket`.

`buflen == 0` means the packet is an mbuf chain, as in the kernel: every packet
load then walks the chain (`m_xword`, `m_xhalf`, `m_xbyte`). As in the kernel,
a word or half-word may straddle two mbufs but not three: a load whose bytes
lie in three mbufs (or run past an empty one) rejects the packet, exactly as
FreeBSD's `m_xword` does. Unmapped (EXT_PGS) mbufs are read through their
pages (`m_unmapped_iov`, the walk `m_copydata` uses), so a filter sees the
header, page and trailer bytes a mapped copy would hold.

`bpf_validate` is the kernel's: a table of the opcodes the machine knows
(`bpf_code_map`), forward jumps that stay inside the program, scratch indices
below BPF_MEMWORDS, no constant division by zero, a RET at the end, and
1..BPF_MAXINSNS instructions.

Models: sys/net/bpf_filter.c (`bpf_filter`, `bpf_validate`, `m_xword`,
`m_xhalf`, `m_xbyte`, `bpf_code_map`), as of the 2008-2019 revisions.

Deliberate differences: scratch memory starts zeroed (the kernel leaves it
uninitialised; a valid program that reads a word it never stored reads
garbage there, 0 here). Shifts by 32 or more give 0 (C leaves them undefined;
amd64 would mask the count). `BPF_MOD` and `BPF_XOR` are refused by the
validator as FreeBSD's table refuses them, so the machine never meets them.
An unknown opcode met at run time (only an unvalidated program can hold one)
rejects the packet, as the kernel's `default:` case does.
"""

from __future__ import annotations

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
    BPF_K,
    BPF_LD,
    BPF_LDX,
    BPF_LEN,
    BPF_LSH,
    BPF_MAXINSNS,
    BPF_MEM,
    BPF_MEMWORDS,
    BPF_MISC,
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
    BPF_TXA,
    BPF_W,
    BPF_X,
    BpfInsn,
)
from mbuf.mbuf import M_NOMAP, Mbuf, m_unmapped_iov, mtod

U32 = 0xFFFFFFFF
BPF_ACCEPT_ALL = U32  # (u_int)-1: what "no filter" returns (catchpacket clips it)


def _valid_codes() -> frozenset[int]:
    """The opcodes of FreeBSD's bpf_code_map, spelled out."""
    codes = [
        BPF_LD | BPF_W | BPF_ABS, BPF_LD | BPF_H | BPF_ABS, BPF_LD | BPF_B | BPF_ABS,
        BPF_LD | BPF_W | BPF_IND, BPF_LD | BPF_H | BPF_IND, BPF_LD | BPF_B | BPF_IND,
        BPF_LD | BPF_W | BPF_LEN, BPF_LD | BPF_IMM, BPF_LD | BPF_MEM,
        BPF_LDX | BPF_W | BPF_IMM, BPF_LDX | BPF_W | BPF_MEM, BPF_LDX | BPF_W | BPF_LEN,
        BPF_LDX | BPF_B | BPF_MSH,
        BPF_ST, BPF_STX,
        BPF_ALU | BPF_NEG,
        BPF_JMP | BPF_JA,
        BPF_RET | BPF_K, BPF_RET | BPF_A,
        BPF_MISC | BPF_TAX, BPF_MISC | BPF_TXA,
    ]  # fmt: skip
    for op in (BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_OR, BPF_AND, BPF_LSH, BPF_RSH):
        codes += [BPF_ALU | op | BPF_K, BPF_ALU | op | BPF_X]
    for op in (BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET):
        codes += [BPF_JMP | op | BPF_K, BPF_JMP | op | BPF_X]
    return frozenset(codes)


BPF_VALID_CODES = _valid_codes()


def bpf_validate(prog: list[BpfInsn], maxinsns: int = BPF_MAXINSNS) -> bool:
    """bpf_validate: True if `prog` may be installed (BIOCSETF answers EINVAL otherwise)."""
    n = len(prog)
    if n < 1 or n > maxinsns:
        return False
    for i, p in enumerate(prog):
        code = p.code
        if code not in BPF_VALID_CODES:
            return False
        if not (0 <= p.jt <= 0xFF and 0 <= p.jf <= 0xFF and 0 <= p.k <= U32):
            return False
        cls = code & 0x07
        if cls == BPF_JMP:
            offset = p.k if code == BPF_JMP | BPF_JA else max(p.jt, p.jf)
            if offset >= n - i - 1:
                return False
            continue
        if code in (BPF_ST, BPF_STX, BPF_LD | BPF_MEM, BPF_LDX | BPF_MEM):
            if p.k >= BPF_MEMWORDS:
                return False
            continue
        if code == BPF_ALU | BPF_DIV | BPF_K and p.k == 0:
            return False
    return (prog[n - 1].code & 0x07) == BPF_RET


# ---------------------------------------------------------------------------
# Loads that walk an mbuf chain (bpf_filter.c's m_xword / m_xhalf / m_xbyte)
# ---------------------------------------------------------------------------


def _mbuf_at(m: Mbuf, k: int) -> tuple[Mbuf | None, int]:
    """The mbuf holding byte k of the chain and k's offset in it (None: past the end)."""
    cur: Mbuf | None = m
    while cur is not None and k >= cur.m_len:
        k -= cur.m_len
        cur = cur.m_next
    return cur, k


def _m_bytes(m: Mbuf, off: int, n: int) -> bytes:
    """n bytes of one mbuf from off; an unmapped one is read through its pages."""
    if m.m_flags & M_NOMAP:
        return b"".join(m_unmapped_iov(m, off, n))
    return bytes(mtod(m)[off : off + n])


def _m_xload(m: Mbuf, k: int, size: int) -> int:
    """A big-endian load of `size` bytes at k, or -1 (reject) as m_xword/m_xhalf fail:
    past the end, or spread over more than two mbufs."""
    cur, off = _mbuf_at(m, k)
    if cur is None:
        return -1
    here = cur.m_len - off
    if here >= size:
        return int.from_bytes(_m_bytes(cur, off, size), "big")
    nxt = cur.m_next
    if nxt is None or nxt.m_len + here < size:
        return -1
    return int.from_bytes(_m_bytes(cur, off, here) + _m_bytes(nxt, 0, size - here), "big")


def m_xword(m: Mbuf, k: int) -> int:
    return _m_xload(m, k, 4)


def m_xhalf(m: Mbuf, k: int) -> int:
    return _m_xload(m, k, 2)


def m_xbyte(m: Mbuf, k: int) -> int:
    cur, off = _mbuf_at(m, k)
    if cur is None:
        return -1
    return _m_bytes(cur, off, 1)[0]


def _load(p: bytes | Mbuf, k: int, size: int, buflen: int) -> int:
    """One packet load as bpf_filter does it: from the buffer if it holds the bytes,
    from the chain if buflen is 0, else -1 (reject)."""
    if k + size <= buflen:
        assert isinstance(p, (bytes, bytearray, memoryview))
        if size == 1:
            return p[k]
        return int.from_bytes(p[k : k + size], "big")
    if buflen != 0 or not isinstance(p, Mbuf):
        return -1
    if size == 1:
        return m_xbyte(p, k)
    return _m_xload(p, k, size)


# ---------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------


def bpf_filter(prog: list[BpfInsn] | None, p: bytes | Mbuf, wirelen: int, buflen: int) -> int:
    """bpf_filter(pc, p, wirelen, buflen): bytes to capture, 0 to reject.

    `p` is a contiguous packet of `buflen` bytes, or (buflen 0) an mbuf chain.
    No program accepts everything ((u_int)-1). The program must have passed
    `bpf_validate`; an invalid one may reject where the kernel would panic."""
    if prog is None:
        return BPF_ACCEPT_ALL
    a = 0
    x = 0
    mem = [0] * BPF_MEMWORDS
    pc = 0
    n = len(prog)
    while pc < n:
        ins = prog[pc]
        pc += 1
        code = ins.code
        k = ins.k
        cls = code & 0x07
        if cls == BPF_RET:
            return a if (code & 0x18) == BPF_A else k
        if cls == BPF_LD:
            mode = code & 0xE0
            if mode in (BPF_ABS, BPF_IND):
                size = code & 0x18
                width = 4 if size == BPF_W else 2 if size == BPF_H else 1
                if mode == BPF_IND:
                    if buflen and (k > buflen or x > buflen - k):
                        return 0
                    k = (x + k) & U32
                v = _load(p, k, width, buflen)
                if v < 0:
                    return 0
                a = v
            elif mode == BPF_LEN:
                a = wirelen
            elif mode == BPF_IMM:
                a = k
            elif mode == BPF_MEM:
                a = mem[k]
            else:
                return 0
        elif cls == BPF_LDX:
            mode = code & 0xE0
            if mode == BPF_MSH:
                v = _load(p, k, 1, buflen)
                if v < 0:
                    return 0
                x = (v & 0xF) << 2
            elif mode == BPF_IMM:
                x = k
            elif mode == BPF_MEM:
                x = mem[k]
            elif mode == BPF_LEN:
                x = wirelen
            else:
                return 0
        elif cls == BPF_ST:
            mem[k] = a
        elif cls == BPF_STX:
            mem[k] = x
        elif cls == BPF_JMP:
            op = code & 0xF0
            if op == BPF_JA:
                pc += k
                continue
            v = x if code & BPF_X else k
            if op == BPF_JEQ:
                taken = a == v
            elif op == BPF_JGT:
                taken = a > v
            elif op == BPF_JGE:
                taken = a >= v
            elif op == BPF_JSET:
                taken = (a & v) != 0
            else:
                return 0
            pc += ins.jt if taken else ins.jf
        elif cls == BPF_ALU:
            op = code & 0xF0
            if op == BPF_NEG:
                a = (-a) & U32
                continue
            v = x if code & BPF_X else k
            if op == BPF_ADD:
                a = (a + v) & U32
            elif op == BPF_SUB:
                a = (a - v) & U32
            elif op == BPF_MUL:
                a = (a * v) & U32
            elif op == BPF_DIV:
                if v == 0:
                    return 0
                a //= v
            elif op == BPF_OR:
                a |= v
            elif op == BPF_AND:
                a &= v
            elif op == BPF_LSH:
                a = (a << v) & U32 if v < 32 else 0
            elif op == BPF_RSH:
                a = a >> v if v < 32 else 0
            else:
                return 0
        else:  # BPF_MISC
            if (code & 0xF8) == BPF_TAX:
                x = a
            elif (code & 0xF8) == BPF_TXA:
                a = x
            else:
                return 0
    return 0  # fell off the end: only an unvalidated program can
