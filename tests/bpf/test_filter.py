"""The filter machine: tcpdump's programs fed three ways, bpf_validate's rules, run-time rules."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from bpf.bpf_filter import BPF_ACCEPT_ALL, bpf_filter, bpf_validate, m_xhalf, m_xword
from bpf.bpf_h import (
    BPF_ABS,
    BPF_ALU,
    BPF_B,
    BPF_DIV,
    BPF_H,
    BPF_IMM,
    BPF_IND,
    BPF_JA,
    BPF_JEQ,
    BPF_JMP,
    BPF_JUMP,
    BPF_K,
    BPF_LD,
    BPF_LDX,
    BPF_LEN,
    BPF_MAXINSNS,
    BPF_MEM,
    BPF_MISC,
    BPF_MOD,
    BPF_MSH,
    BPF_RET,
    BPF_ST,
    BPF_STMT,
    BPF_TAX,
    BPF_W,
    BPF_X,
    BPF_XOR,
    BpfInsn,
)
from mbuf.kern import Kernel
from mbuf.mbuf import m_freem
from tests.bpf.conftest import TH_ACK, TH_PUSH, TH_SYN, Frame, chain_of, frame, unmapped_frame

FIXTURES = Path(__file__).parent / "fixtures"
SNAP = 0x40000  # tcpdump's `ret #262144`


def load_dd(name: str) -> list[BpfInsn]:
    """A program from `tcpdump -dd` output: `{ code, jt, jf, k },` lines."""
    prog = []
    for line in (FIXTURES / f"{name}.dd").read_text().splitlines():
        m = re.fullmatch(r"\{ (0x[0-9a-f]+), (\d+), (\d+), (0x[0-9a-f]+) \},", line.strip())
        if m:
            prog.append(BpfInsn(int(m[1], 16), int(m[2]), int(m[3]), int(m[4], 16)))
    assert prog, name
    return prog


def expect(name: str, f: Frame) -> bool:
    """What each fixture's expression means, from the frame's known contents."""
    tcp = f.proto == 6 and not f.fragment
    if name == "tcp_port_443":
        return tcp and 443 in (f.sport, f.dport)
    if name == "greater_1000":
        return len(f.data) >= 1000
    if name == "tcp_push":
        return tcp and not f.ipv6 and bool(f.flags & TH_PUSH)
    assert name == "ip6"
    return f.ipv6


FRAMES = [
    frame(),
    frame(sport=50000, dport=443, flags=TH_PUSH | TH_ACK, payload=b"x" * 1200),
    frame(sport=80, dport=8080, flags=TH_PUSH | TH_ACK),
    frame(ipv6=True, sport=443, payload=b"y" * 2000),
    frame(ipv6=True, sport=22, dport=22, flags=TH_PUSH),
    frame(proto=17, sport=443, dport=443),
    frame(fragment=True, payload=b"z" * 985),
    frame(ip_options=3, dport=443, flags=TH_SYN),
    frame(ip_options=10, sport=1, dport=2, flags=TH_PUSH, payload=b"q" * 961),
]
NAMES = ["tcp_port_443", "greater_1000", "tcp_push", "ip6"]


def three_ways(kern: Kernel, prog: list[BpfInsn], data: bytes, rng: random.Random) -> list[int]:
    """The verdict on the frame whole, as one mbuf, and cut into a random chain
    (pieces of at least 4 bytes: the kernel's loads straddle two mbufs, not three)."""
    out = [bpf_filter(prog, data, len(data), len(data))]
    one = chain_of(kern, data, [])
    out.append(bpf_filter(prog, one, len(data), 0))
    m_freem(one)
    cuts = sorted(rng.sample(range(4, max(5, len(data) - 4)), min(12, max(0, len(data) - 8))))
    cuts = [c for i, c in enumerate(cuts) if i == 0 or c - cuts[i - 1] >= 4]
    many = chain_of(kern, data, cuts)
    out.append(bpf_filter(prog, many, len(data), 0))
    m_freem(many)
    return out


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("idx", range(len(FRAMES)))
def test_tcpdump_programs_three_ways(kern: Kernel, name: str, idx: int) -> None:
    prog = load_dd(name)
    assert bpf_validate(prog)
    f = FRAMES[idx]
    want = SNAP if expect(name, f) else 0
    assert three_ways(kern, prog, f.data, random.Random(idx)) == [want] * 3


@pytest.mark.parametrize("name", NAMES)
def test_tcpdump_programs_over_unmapped_payload(kern: Kernel, name: str) -> None:
    """The TCP payload in an unmapped mbuf: `greater 1000` reads the length, the
    others the headers; a word load inside the pages reads the page bytes."""
    rng = random.Random(7)
    m, data = unmapped_frame(kern, rng, sport=443, flags=TH_PUSH | TH_ACK)
    f = Frame(data, False, 6, 443, 50000, TH_PUSH | TH_ACK, False)
    want = SNAP if expect(name, f) else 0
    assert bpf_filter(load_dd(name), m, len(data), 0) == want
    m_freem(m)


@pytest.mark.parametrize("off", [54, 55, 100, 4000, 4095, 4096, 4150])
def test_loads_inside_and_across_unmapped_pages(kern: Kernel, off: int) -> None:
    rng = random.Random(off)
    m, data = unmapped_frame(kern, rng, npgs=3, first_pg_off=4000)
    for size, code in ((4, BPF_W), (2, BPF_H), (1, BPF_B)):
        prog = [BPF_STMT(BPF_LD | code | BPF_ABS, off), BPF_STMT(BPF_RET | 0x10, 0)]
        assert bpf_filter(prog, m, len(data), 0) == int.from_bytes(data[off : off + size], "big")
    m_freem(m)


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_word_straddling_two_mbufs(kern: Kernel, cut: int) -> None:
    data = bytes(range(40))
    m = chain_of(kern, data, [20 + cut])
    assert m_xword(m, 20) == int.from_bytes(data[20:24], "big")
    assert m_xhalf(m, 20 + cut - 1) == int.from_bytes(data[20 + cut - 1 : 20 + cut + 1], "big")
    m_freem(m)


def test_word_over_three_mbufs_rejects_as_the_kernel(kern: Kernel) -> None:
    """m_xword reads at most two mbufs: a word in 1 + 2 + 1 bytes rejects the packet."""
    data = bytes(range(40))
    m = chain_of(kern, data, [21, 23])
    assert m_xword(m, 20) == -1
    prog = [BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 20), BPF_STMT(BPF_RET | BPF_K, 1)]
    assert bpf_filter(prog, m, 40, 0) == 0
    assert bpf_filter(prog, data, 40, 40) == 1
    m_freem(m)


def test_no_program_accepts_all() -> None:
    assert bpf_filter(None, b"abc", 3, 3) == BPF_ACCEPT_ALL


RET_A = BPF_STMT(BPF_RET | 0x10, 0)


@pytest.mark.parametrize(
    ("prog", "pkt", "want"),
    [
        ([BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 1), RET_A], b"\0\1\2\3\4", 0x01020304),
        ([BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 2), RET_A], b"\0\1\2\3\4", 0),  # out of range
        ([BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 3), RET_A], b"\0\1\2\3\4", 0x0304),
        ([BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 5), RET_A], b"\0\1\2\3\4", 0),
        ([BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0), RET_A], b"\0" * 9, 9),
        ([BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, 0), BPF_STMT(BPF_MISC | 0x80, 0), RET_A],
         b"\x45", 20),
        ([BPF_STMT(BPF_LDX | BPF_IMM, 2), BPF_STMT(BPF_LD | BPF_B | BPF_IND, 1), RET_A],
         b"\0\1\2\3", 3),
        # X + k beyond the buffer, and X + k wrapping past 2**32: rejected
        ([BPF_STMT(BPF_LDX | BPF_IMM, 3), BPF_STMT(BPF_LD | BPF_B | BPF_IND, 1), RET_A],
         b"\0\1\2\3", 0),
        ([BPF_STMT(BPF_LDX | BPF_IMM, 0xFFFFFFFF), BPF_STMT(BPF_LD | BPF_B | BPF_IND, 2), RET_A],
         b"\0\1\2\3", 0),
        # division by an X of zero rejects
        ([BPF_STMT(BPF_LD | BPF_IMM, 7), BPF_STMT(BPF_ALU | BPF_DIV | BPF_X, 0), RET_A], b"", 0),
        ([BPF_STMT(BPF_LD | BPF_IMM, 7), BPF_STMT(BPF_ALU | 0x80, 0), RET_A], b"", 2**32 - 7),
        ([BPF_STMT(BPF_LD | BPF_IMM, 7), BPF_STMT(BPF_ST, 3), BPF_STMT(BPF_LDX | BPF_MEM, 3),
          BPF_STMT(BPF_ALU | 0x20 | BPF_X, 0), RET_A], b"", 49),
        ([BPF_STMT(BPF_LD | BPF_IMM, 1), BPF_STMT(BPF_ALU | 0x60 | BPF_K, 31), RET_A], b"", 2**31),
        ([BPF_STMT(BPF_LD | BPF_IMM, 1), BPF_STMT(BPF_LDX | BPF_IMM, 32),
          BPF_STMT(BPF_ALU | 0x60 | BPF_X, 0), RET_A], b"", 0),
        ([BPF_JUMP(BPF_JMP | BPF_JA, 1, 0, 0), BPF_STMT(BPF_RET | BPF_K, 1),
          BPF_STMT(BPF_RET | BPF_K, 2)], b"", 2),
    ],
)  # fmt: skip
def test_machine_rules(prog: list[BpfInsn], pkt: bytes, want: int) -> None:
    assert bpf_validate(prog)
    assert bpf_filter(prog, pkt, len(pkt), len(pkt)) == want


RET0 = BPF_STMT(BPF_RET | BPF_K, 0)


@pytest.mark.parametrize(
    "prog",
    [
        pytest.param([], id="empty"),
        pytest.param([RET0] * (BPF_MAXINSNS + 1), id="too-long"),
        pytest.param([BpfInsn(0xFF, 0, 0, 0), RET0], id="unknown-opcode"),
        pytest.param([BPF_STMT(BPF_LD | BPF_W | BPF_MSH, 0), RET0], id="ld-msh"),
        pytest.param([BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, 3), RET0], id="mod"),
        pytest.param([BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0), RET0], id="xor"),
        pytest.param([BPF_STMT(BPF_LD | BPF_MEM, 16), RET0], id="mem-16"),
        pytest.param([BPF_STMT(BPF_ST, 16), RET0], id="st-16"),
        pytest.param([BPF_STMT(BPF_ALU | BPF_DIV | BPF_K, 0), RET0], id="div-0"),
        pytest.param([BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0), RET0], id="jt-out"),
        pytest.param([BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 1), RET0], id="jf-out"),
        pytest.param([BPF_JUMP(BPF_JMP | BPF_JA, 1, 0, 0), RET0], id="ja-out"),
        pytest.param([BPF_JUMP(BPF_JMP | BPF_JA, 0xFFFFFFFF, 0, 0), RET0], id="ja-backward"),
        pytest.param([BPF_STMT(BPF_LD | BPF_IMM, 0)], id="no-ret"),
        pytest.param([BPF_STMT(BPF_MISC | 0x40, 0), RET0], id="misc-unknown"),
    ],
)
def test_validate_refuses(prog: list[BpfInsn]) -> None:
    assert not bpf_validate(prog)


def test_validate_accepts_the_longest() -> None:
    assert bpf_validate([RET0] * BPF_MAXINSNS)
    assert bpf_validate([BPF_STMT(BPF_MISC | BPF_TAX, 0), BPF_STMT(BPF_LD | BPF_MEM, 15), RET0])
    assert bpf_validate([BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_X, 0, 1, 0), RET0, RET0])


def test_chain_and_bytes_agree_on_random_chains(kern: Kernel) -> None:
    """Every tcpdump program, every frame, twenty random cuttings each."""
    rng = random.Random(1)
    for name in NAMES:
        prog = load_dd(name)
        for f in FRAMES:
            whole = bpf_filter(prog, f.data, len(f.data), len(f.data))
            for _ in range(20):
                got = three_ways(kern, prog, f.data, rng)
                assert got == [whole] * 3
