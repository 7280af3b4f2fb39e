"""Micro benchmark: the BPF interpreter against the JIT's function, per packet.

`python -m tests.bpf.jit_bench` (compiled core) or `NOMAPD_PURE=1 python -m
tests.bpf.jit_bench` (pure): `tcp port 443` from tcpdump -dd on a 1514-byte
IPv4 TCP frame to port 443, contiguous (buflen = the frame) and as the tap sees
it (a two-mbuf chain, buflen 0); best of 5 runs of 20000 calls each. The
figures are quoted in bpf/bpf_jit.py's head.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bpf.bpf_filter import bpf_filter
from bpf.bpf_jit import bpf_jit_compile
from mbuf import CORE
from mbuf.kern import Kernel
from mbuf.mbuf import m_freem
from tests.bpf.conftest import chain_of, frame
from tests.bpf.test_filter import load_dd
from tests.mbuf.builders import SMALL_MEM

N = 20000


def best(fn: Callable[[], object]) -> float:
    """Best of 5 runs of N calls, in microseconds per call."""
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(N):
            fn()
        runs.append(time.perf_counter() - t)
    return min(runs) / N * 1e6


def main() -> None:
    prog = load_dd("tcp_port_443")
    jit = bpf_jit_compile(prog)
    data = frame(dport=443, payload=b"x" * 1460).data
    n = len(data)
    kern = Kernel(SMALL_MEM)
    m = chain_of(kern, data, [54])
    assert bpf_filter(prog, data, n, n) == jit(data, n, n) == 0x40000
    assert bpf_filter(prog, m, n, 0) == jit(m, n, 0) == 0x40000
    print(f"core: {CORE}")
    for what, p, buflen in (("bytes", data, n), ("chain", m, 0)):
        interp = best(lambda p=p, b=buflen: bpf_filter(prog, p, n, b))  # type: ignore[misc]
        fast = best(lambda p=p, b=buflen: jit(p, n, b))  # type: ignore[misc]
        print(
            f"{what}: interpreter {interp:.2f} us, jit {fast:.2f} us per packet "
            f"(x{interp / fast:.1f})"
        )
    m_freem(m)


if __name__ == "__main__":
    main()
