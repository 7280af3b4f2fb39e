"""pcapng files read back by tshark and capinfos: interfaces per worker,
nanosecond timestamps, statistics, and TLS decrypted from a Decryption Secrets Block."""

from __future__ import annotations

import io
import pathlib
import ssl
import struct

import pytest

from tests.userland.conftest import T0, packets, run, stream_frames, tls_session
from userland.pcapng_file import BT_ISB, ISB_IFDROP, ISB_IFRECV, PcapngInterface, PcapngWriter

REQUEST = b"GET /a.txt HTTP/1.1\r\nHost: localhost\r\n\r\n"
CONTENT = bytes(range(32, 127)) * 40  # 3800 bytes: several records and segments
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3800\r\nContent-Type: text/plain\r\n\r\n" + CONTENT
HTTP_FIELDS = ("frame.number", "http.request.method", "http.request.uri", "http.response.code")


def http_view(path: pathlib.Path) -> list[list[str]]:
    args = [a for field in HTTP_FIELDS for a in ("-e", field)]
    out = run("tshark", "-r", str(path), "-Y", "http", "-T", "fields", *args)
    return [line.split("\t") for line in out.splitlines()]


def write(
    path: pathlib.Path, frames: list[bytes], keylog: bytes | None, workers: int = 1
) -> PcapngWriter:
    with path.open("wb") as f:
        w = PcapngWriter(f)
        for i in range(workers):
            w.add_interface(PcapngInterface(description=f"nomapd worker {i} nm0"))
        if keylog is not None:
            w.write_secrets(keylog)
        for i, fr in enumerate(frames):
            w.write(T0 + i * 1001, fr, ifid=i % workers)
        w.close(T0 + 10**9, [(100 + i, i) for i in range(workers)])
    return w


@pytest.mark.parametrize(
    ("version", "ipv6"), [(ssl.TLSVersion.TLSv1_3, False), (ssl.TLSVersion.TLSv1_2, True)]
)
def test_dsb_decrypts_tls(tmp_path: pathlib.Path, version: ssl.TLSVersion, ipv6: bool) -> None:
    """A real TLS session (stdlib SSLObjects, client keylog_filename) carried in
    frames with the model's headers: with a DSB tshark shows the GET and the 200
    and the body (--export-objects), exactly as in the file editcap --inject-secrets makes; without
    it, nothing."""
    flights, keylog = tls_session(tmp_path, version, REQUEST, RESPONSE)
    frames = stream_frames(ipv6, flights)
    plain = tmp_path / "plain.pcapng"
    write(plain, frames, None)
    assert http_view(plain) == []  # encrypted: no HTTP without the secrets
    ours = tmp_path / "dsb.pcapng"
    write(ours, frames, keylog)
    view = http_view(ours)
    assert [row[1:4] for row in view] == [["GET", "/a.txt", ""], ["", "", "200"]]
    objects = tmp_path / "objects"
    run("tshark", "-r", str(ours), "-Q", "--export-objects", f"http,{objects}")
    assert (objects / "a.txt").read_bytes() == CONTENT
    (tmp_path / "keys.txt").write_bytes(keylog)
    oracle = tmp_path / "editcap.pcapng"
    run("editcap", "--inject-secrets", f"tls,{tmp_path / 'keys.txt'}", str(plain), str(oracle))
    assert http_view(oracle) == view
    assert "Number of decryption secrets in file: 1" in run("capinfos", str(ours))


def test_interfaces_per_worker_and_ns_timestamps(tmp_path: pathlib.Path) -> None:
    pkts = packets(False)
    path = tmp_path / "w.pcapng"
    w = write(path, [d for _, d, _ in pkts], None, workers=3)
    assert w.packets == len(pkts)
    out = run("tshark", "-r", str(path), "-T", "fields", "-e", "frame.interface_id",
              "-e", "frame.interface_name", "-e", "frame.interface_description",
              "-e", "frame.time_epoch", "-e", "frame.len")  # fmt: skip
    rows = [line.split("\t") for line in out.splitlines()]
    assert len(rows) == len(pkts)
    for i, (ifid, name, desc, epoch, flen) in enumerate(rows):
        assert (int(ifid), name, desc) == (i % 3, "nm0", f"nomapd worker {i % 3} nm0")
        assert epoch == f"{(T0 + i * 1001) // 10**9}.{(T0 + i * 1001) % 10**9:09d}"
        assert int(flen) == len(pkts[i][1])
    assert len(run("tcpdump", "-nn", "-r", str(path)).splitlines()) == len(pkts)  # libpcap too
    info = run("capinfos", str(path))
    assert "Number of interfaces in file: 3" in info
    assert info.count("Time precision = nanoseconds (9)") == 3
    assert info.count("Number of stat entries = 1") == 3


def test_isb_carries_bpf_stats_and_snaplen_cuts() -> None:
    """The ISB options hold bs_recv / bs_drop (read back by walking the blocks);
    a packet longer than the interface's snap length keeps its original length."""
    f = io.BytesIO()
    w = PcapngWriter(f)
    w.add_interface(PcapngInterface(snaplen=96))
    w.write(T0, b"\xaa" * 200, 1500)
    w.close(T0 + 1, [(12345, 67)])
    data = f.getvalue()
    off, isb = 0, b""
    while off < len(data):
        btype, blen = struct.unpack_from("=II", data, off)
        assert struct.unpack_from("=I", data, off + blen - 4)[0] == blen and blen % 4 == 0
        if btype == BT_ISB:
            isb = data[off + 20 : off + blen - 4]
        if btype == 6:
            assert struct.unpack_from("=II", data, off + 20) == (96, 1500)
        off += blen
    opts = {}
    o = 0
    while o < len(isb):
        code, n = struct.unpack_from("=HH", isb, o)
        opts[code] = isb[o + 4 : o + 4 + n]
        o += 4 + n + (-n & 3)
    assert struct.unpack("=Q", opts[ISB_IFRECV]) == (12345,)
    assert struct.unpack("=Q", opts[ISB_IFDROP]) == (67,)
    with pytest.raises(ValueError, match="interface id 1"):
        w.write(T0, b"x", ifid=1)
    with pytest.raises(ValueError, match="2 statistics for 1 interfaces"):
        w.close(T0, [(0, 0), (0, 0)])
