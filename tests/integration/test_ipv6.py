"""IPv6 clients over [::1], every mode, byte-exact; the receive path in the counters.

With `--host ::1` (and `--host ::`) the model's connection is IPv6: its packets
leave through ip6_output with a 60-byte IPv6+TCP header, and the client's
bytes come in through ip6_input. Each test ends with the leak assertion
(receive-side clusters included).
"""

from __future__ import annotations

import pathlib
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.integration.conftest import SIZES, ServerProcess
from tests.support.files import file_bytes

MODES = {
    "nomap": [],
    "no-ktls": ["--no-ktls"],
    "http": ["--http"],
    "no-nomap": ["--no-nomap"],
    "no-txcsum": ["--no-txcsum"],
}


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


requires_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")


@pytest.fixture(scope="module", params=list(MODES))
def server6(
    request: pytest.FixtureRequest, corpus: pathlib.Path, state_dir: pathlib.Path
) -> Iterator[ServerProcess]:
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    srv = ServerProcess(corpus, ["--host", "::1", *MODES[request.param]], state_dir)
    srv.mode = request.param  # type: ignore[attr-defined]
    yield srv
    srv.stop()
    assert srv.proc.returncode == 0, srv.stderr
    assert "Traceback" not in srv.stderr, srv.stderr


def _curl(srv: ServerProcess, paths: list[str], outs: list[pathlib.Path]) -> None:
    """One curl, one connection (keep-alive) for all paths: several requests come in."""
    cmd = ["curl", "-sS", "-k", "-g", "--max-time", "60", "--fail"]
    for path, out in zip(paths, outs, strict=True):
        cmd += ["-o", str(out), srv.url(path)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


@requires_ipv6
def test_every_size_over_ipv6(server6: ServerProcess, tmp_path: pathlib.Path) -> None:
    assert server6.url("/").startswith(f"{server6.scheme}://[::1]:")
    before = server6.idle_stats()
    paths = [f"/f{size}.bin" for size in SIZES]
    outs = [tmp_path / f"out{size}" for size in SIZES]
    _curl(server6, paths, outs)
    for size, out in zip(SIZES, outs, strict=True):
        assert out.read_bytes() == file_bytes(size), size
    s = server6.assert_no_leaks()
    sent = sum(SIZES)
    # Out through ip6_output, in through ip6_input; none of it through IPv4.
    assert s["ip6.localout"] > before["ip6.localout"]
    assert s["ip6.output_bytes"] - before["ip6.output_bytes"] >= sent
    assert s["ip.output_packets"] == 0 and s["ip.total"] == 0
    assert s["ip6.total"] > before["ip6.total"] and s["ip6.delivered"] == s["ip6.total"]
    assert s["tcp.rcvpack"] > before["tcp.rcvpack"] and s["tcp.rcvbyte"] > before["tcp.rcvbyte"]
    assert s["tcp.rcvackpack"] > 0
    assert s["sockbuf_rcv.ccc_peak"] > 0
    if server6.mode == "nomap":  # type: ignore[attr-defined]
        assert s["ktls.rx_records"] > before["ktls.rx_records"]
    if server6.mode == "no-nomap":  # type: ignore[attr-defined]
        assert s["ip.unmapped_converted"] > before["ip.unmapped_converted"]
    if server6.mode == "no-txcsum":  # type: ignore[attr-defined]
        assert s["ip.sw_csum_bytes"] - before["ip.sw_csum_bytes"] >= sent


@requires_ipv6
def test_wildcard_ipv6_listener(
    corpus: pathlib.Path, state_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """`--host ::`: an IPv6 client on [::1]."""
    srv = ServerProcess(corpus, ["--host", "::"], state_dir)
    try:
        size = SIZES[-1]
        out = tmp_path / "big"
        _curl(srv, [f"/f{size}.bin"], [out])
        assert out.read_bytes() == file_bytes(size)
        s = srv.assert_no_leaks()
        assert s["ip6.localout"] > 0 and s["ip6.total"] > 0 and s["tcp.rcvpack"] > 0
    finally:
        srv.stop()
    assert srv.proc.returncode == 0, srv.stderr


def test_ipv4_fetch_shows_the_receive_path(
    default_server: ServerProcess, tmp_path: pathlib.Path
) -> None:
    """Over IPv4 too: the request came in as packets (tcp.rcvpack > 0), through so_rcv
    and KTLS RX, and everything received was freed."""
    out = tmp_path / "f"
    _curl(default_server, ["/f4097.bin"], [out])
    assert out.read_bytes() == file_bytes(4097)
    s = default_server.assert_no_leaks()
    assert s["tcp.rcvpack"] > 0 and s["ip.total"] > 0 and s["ip.delivered"] == s["ip.total"]
    assert s["ktls.rx_records"] > 0 and s["ip6.total"] == 0
    assert s["mbuf.clusters_in_use"] == 0
