"""`nomapd capture` of IPv6 connections: a server on ::1, real curl, tshark and tcpdump.

The same checks as tests/integration/test_capture.py, on a connection that
leaves through ip6_output and comes in through ip6_input: every frame is
Ethernet/IPv6/TCP between [::1] and the server's port, with nothing tshark
calls malformed and no expert error; the served file comes back out of the
capture; tcpdump -nn prints the file as `nomapd capture` prints the packets;
the kernel's BPF filters see IPv6 (`ip6`, `ip`, `greater`, `less`); with
--keys tshark decrypts TLS; the netmap monitor's frames are BPF's; the TCP
checksum field is the IPv6 pseudo-header sum with offload, the full checksum
without. Every server ends with the leak assertion (`running`).

Needs (CI: .ci/run): curl, tshark, tcpdump, libpcap0.8, and an IPv6 loopback.
"""

from __future__ import annotations

import os
import pathlib
import struct
import subprocess
from collections.abc import Iterator

import pytest

from mbuf.param import TCP6_MSS
from tests.integration.conftest import ServerProcess
from tests.integration.test_capture import (
    NAME,
    SIZE,
    Capture,
    docroot,  # noqa: F401 (a fixture)
    exported,
    frames,
    running,
    server_checksums,
    tshark,
)
from tests.integration.test_capture import curl as curl4
from tests.support.files import file_bytes
from userland.pcap_file import pcap_read

ETHERTYPE_IPV6 = 0x86DD
IP6_HDR = 40
# Ethernet + IPv6 + a TCP header without options: the client's pure ACKs and FIN.
BARE_FRAME = 14 + IP6_HDR + 20
MONITOR_BUF = 2048  # dev.netmap.buf_size: a monitor's copy of a frame ends there


@pytest.fixture(scope="module")
def http6(docroot: pathlib.Path, state_dir: pathlib.Path) -> Iterator[ServerProcess]:  # noqa: F811
    with running(docroot, state_dir, ["--host", "::1", "--http"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def tls6(docroot: pathlib.Path, state_dir: pathlib.Path) -> Iterator[ServerProcess]:  # noqa: F811
    with running(docroot, state_dir, ["--host", "::1"]) as srv:
        yield srv


def curl(srv: ServerProcess, path: str, *args: str) -> bytes:
    """test_capture's curl on the server's [::1] URL (-g: brackets are the address)."""
    assert srv.url(path).startswith(f"{srv.scheme}://[::1]:")
    return curl4(srv, path, "-g", *args)


def fields(f: pathlib.Path, *names: str, display: str = "") -> list[list[str]]:
    """tshark -T fields rows of a capture (with a display filter, its frames only)."""
    args = ["-r", str(f), "-T", "fields", *(x for n in names for x in ("-e", n))]
    return [
        row.split("\t") for row in tshark(*args, *(["-Y", display] if display else [])).splitlines()
    ]


def assert_ipv6_tcp(f: pathlib.Path, port: int, level: str = "warn") -> int:
    """Every frame of `f` is IPv6/TCP between ::1 and the server's `port`, and tshark
    finds nothing malformed and no expert note of `level` or above (a payload length
    beyond the frame is a warning); returns the number of frames."""
    rows = fields(f, "eth.type", "ipv6.src", "ipv6.dst", "ipv6.nxt", "tcp.srcport", "tcp.dstport")
    assert rows and all(r[:4] == ["0x86dd", "::1", "::1", "6"] for r in rows), rows
    assert all(str(port) in r[4:] and r[4] != r[5] for r in rows), rows
    assert len(rows) == len(fields(f, "frame.number", display="ipv6 && tcp"))
    assert fields(f, "frame.number", display="ip || _ws.malformed") == []
    expert = tshark("-r", str(f), "-q", "-z", f"expert,{level}")
    assert "Errors (" not in expert and "Warns (" not in expert, expert
    return len(rows)


# -- plain HTTP: the frames, the file, tcpdump's lines ---------------------------------------


def test_http_over_ipv6_reads_as_freebsds(http6: ServerProcess, tmp_path: pathlib.Path) -> None:
    f, ng = tmp_path / "f.pcap", tmp_path / "f.pcapng"
    caps = [Capture(http6, ["-w", str(f)]), Capture(http6, ["-w", str(ng)]), Capture(http6, [])]
    assert curl(http6, f"/{NAME}") == file_bytes(SIZE)
    stats = [c.stop() for c in caps]
    n = assert_ipv6_tcp(f, http6.port)
    assert n > 5 and all(s[0] == n and s[2] == 0 for s in stats), stats
    assert frames(ng) == frames(f)
    linktype, _, recs = pcap_read(f.read_bytes())
    assert linktype == 1  # DLT_EN10MB, as FreeBSD's capture of an Ethernet NIC
    # The IPv6 header itself: version 6, payload length = what follows it, hop limit,
    # and on the server's frames the flow label FreeBSD's syncache takes from the ISS
    # (the first data byte's sequence number less one); the peer's frames carry 0.
    labels: dict[bool, set[int]] = {True: set(), False: set()}
    seqs = []
    for _, data, wirelen in recs:
        (ethertype,) = struct.unpack_from("!H", data, 12)
        vtf, plen, nxt, hlim = struct.unpack_from("!IHBB", data, 14)
        assert ethertype == ETHERTYPE_IPV6 and vtf >> 28 == 6 and nxt == 6 and hlim == 64
        assert plen == wirelen - 14 - IP6_HDR
        sport, _, seq = struct.unpack_from("!HHI", data, 14 + IP6_HDR)
        labels[sport == http6.port].add(vtf & 0xFFFFF)
        seqs += [seq] if sport == http6.port else []
    assert labels == {True: {(seqs[0] - 1) & 0xFFFFF}, False: {0}}, labels
    lines = tshark("-r", str(f), "-Y", "http").splitlines()
    assert sum(f"GET /{NAME} HTTP/1.1" in x for x in lines) == 1, lines
    assert sum("HTTP/1.1 200 OK" in x for x in lines) == 1, lines
    assert exported(f, tmp_path / "objects") == {NAME: file_bytes(SIZE)}
    env = dict(os.environ, TZ="UTC")  # pktprint prints the time of day in UTC
    tcpdump = subprocess.run(
        ["tcpdump", "-nn", "-r", str(f)], capture_output=True, text=True, env=env
    )
    assert tcpdump.returncode == 0, tcpdump.stderr
    assert tcpdump.stdout.count(" IP6 ::1.") == n
    assert caps[2].out.decode() == tcpdump.stdout
    http6.assert_no_leaks()


# -- filters: the kernel's BPF over IPv6 frames ----------------------------------------------


def test_filters_see_ipv6(http6: ServerProcess, tmp_path: pathlib.Path) -> None:
    """`ip6 and tcp port P` keeps every frame, `ip` none; `greater N` and `less N`
    keep what tshark's `frame.len >= N` and `frame.len <= N` keep (libpcap's
    operators include the bound: a bare ACK is exactly BARE_FRAME long); the TCP
    flags are read at their IPv6 offset (`tcp[tcpflags]` compiles for IPv4 only:
    libpcap says it rejects every packet with `ip6 and`)."""
    every, served = f"ip6 and tcp port {http6.port}", f"ip6 src host ::1 and src port {http6.port}"
    filters = [
        (every, f"tcp.port == {http6.port}"),
        ("tcp", "tcp"),
        (served, f"tcp.srcport == {http6.port}"),
        ("ip", "ip"),
        ("greater 1000", "frame.len >= 1000"),
        (f"greater {BARE_FRAME}", f"frame.len >= {BARE_FRAME}"),
        (f"less {BARE_FRAME}", f"frame.len <= {BARE_FRAME}"),
        ("ip6[53] & 0x08 != 0", "tcp.flags.push == 1"),  # libpcap's tcp[] is IPv4 only
    ]
    whole = tmp_path / "all.pcap"
    caps = [Capture(http6, ["-w", str(whole)])]
    for i, (expr, _) in enumerate(filters):
        caps.append(Capture(http6, ["-w", str(tmp_path / f"{i}.pcap"), expr]))
    curl(http6, f"/{NAME}")
    curl(http6, "/small.txt")
    for c in caps:
        c.stop()
    everything = frames(whole)
    assert len(everything) > 10
    kept = {}
    for i, (expr, display) in enumerate(filters):
        theirs = tmp_path / f"tshark{i}.pcap"
        tshark("-r", str(whole), "-Y", display, "-F", "pcap", "-w", str(theirs))
        kept[expr] = mine = frames(tmp_path / f"{i}.pcap")
        assert mine == frames(theirs), expr
    assert kept[every] == kept["tcp"] == everything and kept["ip"] == []
    assert 0 < len(kept[served]) < len(everything)
    bare = kept[f"less {BARE_FRAME}"]
    assert bare and all(len(d) == BARE_FRAME for _, d, _ in bare)
    assert kept[f"greater {BARE_FRAME}"] == everything
    assert 0 < len(kept["greater 1000"]) < len(everything)
    http6.assert_no_leaks()


# -- TLS with --keys: tshark decrypts the IPv6 connection ------------------------------------


@pytest.fixture(scope="module")
def tls6_nonomap(docroot: pathlib.Path, state_dir: pathlib.Path) -> Iterator[ServerProcess]:  # noqa: F811
    with running(docroot, state_dir, ["--host", "::1", "--no-nomap"]) as srv:
        yield srv


@pytest.mark.parametrize("server", ["tls6", "tls6_nonomap"])
@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_keys_decrypt_over_ipv6(
    request: pytest.FixtureRequest, server: str, version: str, tmp_path: pathlib.Path
) -> None:
    tls6: ServerProcess = request.getfixturevalue(server)
    f = tmp_path / "f.pcapng"
    cap = Capture(tls6, ["-w", str(f), "--keys"])
    tls = ["--tlsv1.3"] if version == "1.3" else ["--tlsv1.2", "--tls-max", "1.2"]
    assert curl(tls6, f"/{NAME}", *tls) == file_bytes(SIZE)
    captured, _, dropped = cap.stop()
    assert captured == assert_ipv6_tcp(f, tls6.port) and dropped == 0
    lines = tshark("-r", str(f), "-Y", "http").splitlines()
    assert sum(f"GET /{NAME} HTTP/1.1" in x for x in lines) == 1, lines
    assert sum("HTTP/1.1 200 OK" in x for x in lines) == 1, lines
    assert exported(f, tmp_path / "objects") == {NAME: file_bytes(SIZE)}
    tls6.assert_no_leaks()


# -- the netmap monitor ----------------------------------------------------------------------


def test_netmap_monitor_over_ipv6(http6: ServerProcess, tmp_path: pathlib.Path) -> None:
    """`-i netmap:nm0/tr` beside BPF (both cut at the monitor's 2048-byte buffers):
    the same IPv6 frames, which tshark reads. Cut frames make tshark warn (HTTP
    reassembly gives up), so only errors count here; a frame the monitor cut has lost
    its wire length too (userland/netmap_capture.py), so tshark says its IPv6 payload
    length exceeds the frame: on cut frames only, and never on BPF's."""
    mon_file, bpf_file = tmp_path / "mon.pcap", tmp_path / "bpf.pcap"
    mon = Capture(http6, ["-i", "netmap:nm0/tr", "-s", str(MONITOR_BUF), "-w", str(mon_file)])
    bpf = Capture(http6, ["-i", "nm0", "-s", str(MONITOR_BUF), "-w", str(bpf_file)])
    assert curl(http6, f"/{NAME}") == file_bytes(SIZE)
    got_mon, got_bpf = mon.stop(), bpf.stop()
    mon_frames = [d for _, d, _ in frames(mon_file)]
    assert mon_frames == [d for _, d, _ in frames(bpf_file)]
    n = assert_ipv6_tcp(mon_file, http6.port, "error")
    assert got_mon[0] == got_bpf[0] == len(mon_frames) == n
    assert assert_ipv6_tcp(bpf_file, http6.port, "error") == n
    beyond = '_ws.expert.message contains "exceeds framing"'
    cut = fields(mon_file, "frame.len", display=beyond)
    assert cut and all(r == [str(MONITOR_BUF)] for r in cut), cut
    assert fields(bpf_file, "frame.len", display=beyond) == []
    assert any(f"GET /{NAME}".encode() in d for d in mon_frames)
    assert any(b"HTTP/1.1 200 OK" in d for d in mon_frames)
    assert http6.assert_no_leaks()["netmap.monitor_drops"] == 0


# -- the TCP checksum field: the IPv6 pseudo-header ------------------------------------------


def _checked(f: pathlib.Path, display: str) -> int:
    """How many frames tshark's TCP checksum validation finds good among `display`'s."""
    good = f"({display}) && tcp.checksum.status == 1"
    out = tshark("-r", str(f), "-o", "tcp.check_checksum:TRUE", "-Y", good)
    return len(out.splitlines())


def test_checksums_offloaded_and_not(
    http6: ServerProcess,
    docroot: pathlib.Path,  # noqa: F811
    state_dir: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    """With --txcsum (TXCSUM_IPV6, TSO6) a TSO burst shows the IPv6 pseudo-header sum
    without the length and a single segment with it; the client's frames (ip6_input's)
    carry the full checksum; with --no-txcsum tshark finds every checksum right."""
    f = tmp_path / "offload.pcap"
    cap = Capture(http6, ["-w", str(f)])
    curl(http6, f"/{NAME}")  # TSO bursts
    curl(http6, "/small.txt")  # one segment
    n, _, _ = cap.stop()
    sums = server_checksums(f, http6.port)
    tso = [s for s in sums if s[0] == s[2]]
    single = [s for s in sums if s[0] == s[1]]
    assert tso and single and len(tso) + len(single) == len(sums), sums
    client = f"tcp.dstport == {http6.port}"
    assert _checked(f, client) == len(fields(f, "frame.number", display=client)) == n - len(sums)
    http6.assert_no_leaks()
    with running(docroot, state_dir, ["--host", "::1", "--http", "--no-txcsum"]) as soft:
        g = tmp_path / "soft.pcap"
        cap = Capture(soft, ["-w", str(g)])
        assert curl(soft, f"/{NAME}") == file_bytes(SIZE)
        n, _, _ = cap.stop()
        assert n == assert_ipv6_tcp(g, soft.port) and n > 5
        # No TSO without checksum offload: one IPv6 MSS at most.
        assert max(len(d) for _, d, _ in frames(g)) == 14 + IP6_HDR + 20 + TCP6_MSS
        assert _checked(g, "ipv6") == n
        assert soft.stats()["ip.sw_csum_packets"] > 0  # the leak assertion: `running`
