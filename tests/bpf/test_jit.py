"""The JIT gives the interpreter's answers: random valid programs, random packets, random chains."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpf.bpf_filter import BPF_VALID_CODES, bpf_filter, bpf_validate
from bpf.bpf_h import (
    BPF_ALU,
    BPF_DIV,
    BPF_JA,
    BPF_JMP,
    BPF_K,
    BPF_LD,
    BPF_LDX,
    BPF_MEM,
    BPF_RET,
    BPF_ST,
    BPF_STX,
    BpfInsn,
)
from bpf.bpf_jit import bpf_jit_compile, bpf_jit_source
from mbuf.kern import Kernel
from mbuf.mbuf import m_freem
from tests.bpf.conftest import chain_of
from tests.bpf.test_filter import FRAMES, NAMES, load_dd
from tests.mbuf.builders import SMALL_MEM

CODES = sorted(BPF_VALID_CODES)
MEM_CODES = {BPF_ST, BPF_STX, BPF_LD | BPF_MEM, BPF_LDX | BPF_MEM}
# k values: packet offsets near a small packet's end, shift counts, u32 edges.
K_VALUES = st.one_of(
    st.integers(0, 70),
    st.sampled_from([31, 32, 33, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]),
    st.integers(0, 0xFFFFFFFF),
)


@st.composite
def programs(draw: st.DrawFn) -> list[BpfInsn]:
    """A program bpf_validate accepts: any known opcode, forward jumps in range,
    scratch indices below 16, no constant division by zero, a RET at the end."""
    n = draw(st.integers(1, 24))
    prog: list[BpfInsn] = []
    for i in range(n - 1):
        code = draw(st.sampled_from(CODES))
        room = n - i - 2  # largest offset that still lands inside the program
        k = draw(K_VALUES)
        jt = jf = 0
        if code & 0x07 == BPF_JMP:
            if code == BPF_JMP | BPF_JA:
                k = draw(st.integers(0, room))
            else:
                jt = draw(st.integers(0, min(room, 255)))
                jf = draw(st.integers(0, min(room, 255)))
        elif code in MEM_CODES:
            k = draw(st.integers(0, 15))
        elif code == BPF_ALU | BPF_DIV | BPF_K and k == 0:
            k = 1
        prog.append(BpfInsn(code, jt, jf, k))
    ret = draw(st.sampled_from([BPF_RET | BPF_K, BPF_RET | 0x10]))
    prog.append(BpfInsn(ret, 0, 0, draw(K_VALUES)))
    assert bpf_validate(prog), prog
    return prog


packets = st.binary(min_size=0, max_size=80)


@settings(max_examples=400, deadline=None)
@given(prog=programs(), pkt=packets)
def test_jit_equals_interpreter_on_bytes(prog: list[BpfInsn], pkt: bytes) -> None:
    jit = bpf_jit_compile(prog)
    assert jit(pkt, len(pkt), len(pkt)) == bpf_filter(prog, pkt, len(pkt), len(pkt))
    # a wire length other than the captured length (LEN reads the wire's)
    assert jit(pkt, len(pkt) + 9, len(pkt)) == bpf_filter(prog, pkt, len(pkt) + 9, len(pkt))


@settings(max_examples=200, deadline=None)
@given(prog=programs(), pkt=packets, seed=st.integers(0, 2**16))
def test_jit_equals_interpreter_on_chains(prog: list[BpfInsn], pkt: bytes, seed: int) -> None:
    """Chains cut anywhere, one-byte pieces included (so loads over three mbufs occur)."""
    kern = Kernel(SMALL_MEM)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(len(pkt) + 1), rng.randint(0, min(8, len(pkt) + 1))))
    m = chain_of(kern, pkt, cuts)
    try:
        assert bpf_jit_compile(prog)(m, len(pkt), 0) == bpf_filter(prog, m, len(pkt), 0)
    finally:
        m_freem(m)
    assert kern.leaks() == {}


@pytest.mark.parametrize("name", NAMES)
def test_jit_on_tcpdump_programs(name: str) -> None:
    prog = load_dd(name)
    jit = bpf_jit_compile(prog)
    for f in FRAMES:
        n = len(f.data)
        assert jit(f.data, n, n) == bpf_filter(prog, f.data, n, n)


def test_jit_refuses_an_invalid_program() -> None:
    with pytest.raises(ValueError, match="bpf_validate"):
        bpf_jit_compile([BpfInsn(BPF_LD, 0, 0, 0)])


def test_jit_source_is_straight_line() -> None:
    """One `if L == n:` section per jump target, no loop."""
    prog = load_dd("tcp_port_443")
    src = bpf_jit_source(prog)
    assert "while" not in src and "for " not in src
    targets = {0} | {i + 1 + off for i, ins in enumerate(prog) if ins.code & 7 == BPF_JMP
                     for off in (ins.jt, ins.jf)}  # fmt: skip
    assert sorted(int(x) for x in re.findall(r"if L == (\d+):", src)) == sorted(targets)
