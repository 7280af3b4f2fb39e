"""The packet line printer against tcpdump's own lines on the same savefile."""

from __future__ import annotations

import os
import pathlib
import struct
import subprocess
import sys

import pytest

from tests.userland.conftest import TH_ACK, TH_SYN, conversation, frame, packets
from userland.pcap_file import PcapWriter
from userland.pktprint import PacketPrinter, tcp_flags, ts_format


def with_options(f: bytes, ipv6: bool, opts: bytes) -> bytes:
    """The frame with TCP options after its 20-byte TCP header (lengths fixed up)."""
    ip = 14
    tcp = ip + (40 if ipv6 else 20)
    b = bytearray(f[: tcp + 20] + opts + f[tcp + 20 :])
    b[tcp + 12] = ((20 + len(opts)) // 4) << 4
    if ipv6:
        struct.pack_into("!H", b, ip + 4, struct.unpack_from("!H", b, ip + 4)[0] + len(opts))
    else:
        struct.pack_into("!H", b, ip + 2, struct.unpack_from("!H", b, ip + 2)[0] + len(opts))
    return bytes(b)


# mss 1460, sackOK, TS val 7 ecr 0, nop, wscale 7: Linux's SYN
SYN_OPTS = bytes.fromhex("020405b4 0402 080a0000000700000000 01 030307")


def tcpdump_lines(path: pathlib.Path, *flags: str) -> list[str]:
    out = subprocess.run(
        ["tcpdump", "-nn", *flags, "-r", str(path)],
        env={**os.environ, "TZ": "UTC"}, check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return out.stdout.splitlines()


@pytest.mark.parametrize("ipv6", [False, True])
def test_lines_match_tcpdump(tmp_path: pathlib.Path, ipv6: bool) -> None:
    """SYN (with options), SYN-ACK, ACK, data both ways, FINs, RST, then the
    TSO bursts nm0 really sent: every line as tcpdump -nn prints it in UTC."""
    pkts = packets(ipv6)
    syn_opts = with_options(frame(ipv6, False, 77, 0, TH_SYN), ipv6, SYN_OPTS)
    pkts.insert(0, (pkts[0][0] - 10**6, syn_opts, len(syn_opts)))
    path = tmp_path / "f.pcap"
    with path.open("wb") as f:
        w = PcapWriter(f)
        for p in pkts:
            w.write(*p)
    printer = PacketPrinter()
    mine = [printer.line(ts, data, n) for ts, data, n in pkts]
    theirs = tcpdump_lines(path)
    assert mine == theirs
    assert any("Flags [S]" in line and "options [mss 1460," in line for line in mine)
    epoch = PacketPrinter(epoch=True)
    assert [epoch.line(ts, data, n) for ts, data, n in pkts] == tcpdump_lines(path, "-tt")
    assert {"[S.]", "[F.]", "[R]", "[P.]", "[.]"} <= {line.split("Flags ")[1][:4].rstrip(",")
                                                      for line in mine}  # fmt: skip


def test_relative_numbers_restart_on_syn() -> None:
    """A second SYN on the same ports starts a new conversation, as in tcpdump."""
    printer = PacketPrinter()
    lines = [printer.describe(f, len(f)) for f in conversation(False)[1:4]]
    assert lines[1].endswith("ack 1, win 65535, length 0")
    again = frame(False, True, 9_000_000, 1001, TH_SYN | TH_ACK)
    assert "seq 9000000, ack 1001" in printer.describe(again, len(again))
    after = frame(False, True, 9_000_001, 1030, TH_ACK, b"x" * 10)
    assert "seq 1:11, ack 30," in printer.describe(after, len(after))  # 1030 - (1001 - 1)


def test_savefile_streams_through_a_pipe() -> None:
    """A writer on a process's stdout (as `-w -`) feeding `tcpdump -r -`."""
    script = (
        "import sys\n"
        "from tests.userland.conftest import packets\n"
        "from userland.pcap_file import PcapWriter\n"
        "w = PcapWriter(sys.stdout.buffer, flush_each=True)\n"
        "for p in packets(True):\n"
        "    w.write(*p)\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE) as writer:
        reader = subprocess.run(
            ["tcpdump", "-nn", "-r", "-"], stdin=writer.stdout, env={**os.environ, "TZ": "UTC"},
            check=True, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert writer.returncode == 0
    printer = PacketPrinter()
    assert reader.stdout.splitlines() == [printer.line(*p) for p in packets(True)]


def test_pieces() -> None:
    assert tcp_flags(0) == "none" and tcp_flags(0x12) == "S." and tcp_flags(0xC1) == "FEW"
    assert ts_format(86_399_999_999_999) == "23:59:59.999999"
    assert PacketPrinter().describe(b"\0" * 14, 60) == "ethertype 0x0000, length 60"
