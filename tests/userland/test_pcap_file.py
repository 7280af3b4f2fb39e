"""pcap savefiles read back by tcpdump, tshark and capinfos."""

from __future__ import annotations

import io
import pathlib

import pytest

from tests.userland.conftest import T0, packets, run
from userland.pcap_file import PcapWriter, pcap_read


def test_header_bytes_are_libpcaps() -> None:
    f = io.BytesIO()
    PcapWriter(f)
    # reference A.13: the header tcpdump writes (LE, microseconds, 262144, Ethernet)
    assert f.getvalue() == bytes.fromhex("d4c3b2a1 0200 0400 00000000 00000000 00000400 01000000")
    g = io.BytesIO()
    PcapWriter(g, snaplen=96, nanosecond=True)
    assert g.getvalue()[:4] == bytes.fromhex("4d3cb2a1")
    assert g.getvalue()[16:20] == bytes([96, 0, 0, 0])


@pytest.mark.parametrize("nanosecond", [False, True])
@pytest.mark.parametrize("ipv6", [False, True])
def test_tools_read_what_is_written(tmp_path: pathlib.Path, ipv6: bool, nanosecond: bool) -> None:
    pkts = packets(ipv6)
    path = tmp_path / "f.pcap"
    with path.open("wb") as f:
        w = PcapWriter(f, nanosecond=nanosecond)
        for ts, data, wirelen in pkts:
            w.write(ts, data, wirelen)
    assert w.packets == len(pkts)
    fields = run("tshark", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch",
                 "-e", "frame.len", "-e", "frame.cap_len", "-e", "tcp.len")  # fmt: skip
    rows = [line.split("\t") for line in fields.splitlines()]
    assert len(rows) == len(pkts)
    scale = 1 if nanosecond else 1000
    for (ts, data, wirelen), (epoch, flen, clen, tcplen) in zip(pkts, rows, strict=True):
        sec, frac = epoch.split(".")
        assert int(sec) * 10**9 + int(frac.ljust(9, "0")) == ts // scale * scale
        assert int(flen) == wirelen and int(clen) == len(data)
        assert int(tcplen) == len(data) - 14 - (60 if ipv6 else 40)
    assert len(run("tcpdump", "-nn", "-r", str(path)).splitlines()) == len(pkts)
    info = run("capinfos", "-c", "-M", str(path))
    assert f"Number of packets:   {len(pkts)}" in info
    assert pcap_read(path.read_bytes())[2] == [(ts // scale * scale, d, n) for ts, d, n in pkts]


def test_snaplen_cuts_caplen_keeps_wire_length(tmp_path: pathlib.Path) -> None:
    pkts = packets(False)
    path = tmp_path / "snap.pcap"
    with path.open("wb") as f:
        w = PcapWriter(f, snaplen=96)
        for ts, data, wirelen in pkts:
            w.write(ts, data, wirelen)
    rows = run("tshark", "-r", str(path), "-T", "fields", "-e", "frame.len", "-e", "frame.cap_len")
    got = [tuple(map(int, line.split("\t"))) for line in rows.splitlines()]
    assert got == [(n, min(96, len(d))) for _, d, n in pkts]
    assert max(n for _, _, n in pkts) > 96
    assert "Packet size limit:   file hdr: 96 bytes" in run("capinfos", str(path))


def test_flush_each_pushes_every_record(tmp_path: pathlib.Path) -> None:
    """tcpdump -U: with flush_each the bytes are in the file after each packet;
    without it a buffered file holds them back."""
    pkts = packets(False)[:3]
    for flush_each in (True, False):
        path = tmp_path / f"u{flush_each}.pcap"
        with path.open("wb", buffering=1 << 20) as f:
            w = PcapWriter(f, flush_each=flush_each)
            sizes = []
            for ts, data, wirelen in pkts:
                w.write(ts, data, wirelen)
                sizes.append(path.stat().st_size)
        expected = [24 + sum(16 + len(d) for _, d, _ in pkts[: i + 1]) for i in range(len(pkts))]
        assert sizes == (expected if flush_each else [0, 0, 0])
        assert path.stat().st_size == expected[-1]


def test_bad_snaplen_and_bad_files() -> None:
    with pytest.raises(ValueError, match="snaplen 0"):
        PcapWriter(io.BytesIO(), snaplen=0)
    with pytest.raises(ValueError, match="magic"):
        pcap_read(b"\0" * 24)
    f = io.BytesIO()
    PcapWriter(f).write(T0, b"x" * 20)
    with pytest.raises(ValueError, match="truncated record"):
        pcap_read(f.getvalue()[:-1])
