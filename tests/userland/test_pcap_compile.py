"""libpcap's compiler through ctypes: programs the kernel's validator takes,
-d/-dd/-ddd as tcpdump prints them, and verdicts tcpdump and tshark agree with."""

from __future__ import annotations

import ctypes.util
import pathlib

import pytest

from bpf.bpf_filter import bpf_filter, bpf_validate
from bpf.bpf_h import BPF_RET, bpf_program_pack, bpf_program_unpack
from tests.userland.conftest import T0, conversation, packets, run
from userland import pcap_compile
from userland.pcap_compile import PcapCompileError, bpf_dump, pcap_compile_expr
from userland.pcap_file import PcapWriter, pcap_read

# expression -> the same condition as a tshark display filter
EXPRS = {
    "tcp port 443": "tcp.port == 443",
    "tcp port 8080": "tcp.port == 8080",
    "greater 1000": "frame.len >= 1000",
    "tcp[tcpflags] & tcp-push != 0": "ip && tcp.flags.push == 1",
}


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Ports 443 and 8080, IPv4 and IPv6, small and TSO-sized frames."""
    pkts = packets(False) + packets(True)
    pkts += [(T0 + i, f, len(f)) for i, f in enumerate(conversation(False, port=8080))]
    pkts += [(T0 + i, f, len(f)) for i, f in enumerate(conversation(True, port=8080))]
    path = tmp_path_factory.mktemp("compile") / "mixed.pcap"
    with path.open("wb") as f:
        w = PcapWriter(f)
        for p in pkts:
            w.write(*p)
    return path


@pytest.fixture(scope="module")
def empty(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("compile") / "empty_en10mb.pcap"
    with path.open("wb") as f:
        PcapWriter(f)
    return path


@pytest.mark.parametrize("expr", [*EXPRS, "ip6", ""])
def test_dump_is_tcpdumps(expr: str, empty: pathlib.Path) -> None:
    prog = pcap_compile_expr(expr)
    assert bpf_validate(prog)
    assert bpf_program_unpack(bpf_program_pack(prog)) == prog  # what BIOCSETF carries
    for level, flag in ((1, "-d"), (2, "-dd"), (3, "-ddd")):
        assert bpf_dump(prog, level) == run("tcpdump", "-r", str(empty), flag, expr)


def test_snaplen_is_the_return_value() -> None:
    assert [(i.code, i.k) for i in pcap_compile_expr("", snaplen=96)] == [(BPF_RET, 96)]


@pytest.mark.parametrize("expr", EXPRS)
def test_verdicts_match_tcpdump_and_tshark(
    expr: str, capture: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """bpf/bpf_filter.py running libpcap's program keeps exactly the frames
    tcpdump's own filter keeps and those tshark's display filter shows
    (libpcap's tcp[] reaches IPv4 only, hence `ip &&` on tshark's side)."""
    prog = pcap_compile_expr(expr)
    _, _, recs = pcap_read(capture.read_bytes())
    kept = [i for i, (_, data, n) in enumerate(recs) if bpf_filter(prog, data, n, len(data)) != 0]
    assert 0 < len(kept) < len(recs)  # the condition splits this capture
    out = tmp_path / "kept.pcap"
    run("tcpdump", "-r", str(capture), "-w", str(out), expr)
    assert [d for _, d, _ in pcap_read(out.read_bytes())[2]] == [recs[i][1] for i in kept]
    numbers = run(
        "tshark", "-r", str(capture), "-Y", EXPRS[expr], "-T", "fields", "-e", "frame.number"
    )
    assert [int(n) - 1 for n in numbers.split()] == kept


@pytest.mark.parametrize("expr", ["tcp port", "port 99999", "nosuchproto"])
def test_bad_expression_is_one_line(expr: str) -> None:
    with pytest.raises(PcapCompileError) as e:
        pcap_compile_expr(expr)
    msg = str(e.value)
    assert msg.startswith(f"bad filter expression {expr!r}: ") and "\n" not in msg
    assert len(msg) > len(f"bad filter expression {expr!r}: ")


def test_missing_libpcap_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pcap_compile, "_lib", None)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(PcapCompileError, match=r"apt-get install libpcap0\.8"):
        pcap_compile_expr("tcp")
