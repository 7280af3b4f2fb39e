"""Every file size, every mode, real clients, byte-exact; counters show the path taken.

Modes: the default (KTLS, NIC with IFCAP_NOMAP), `--no-nomap` (ip_output
converts through sf_bufs), `--no-txcsum` (convert and checksum in software),
`--no-ktls` (OpenSSL encrypts in user space), `--http` (plain sendfile), and
`--http --no-sendfile-nomap` (one EXT_SFBUF mbuf per page). Each test ends
with the leak assertion.
"""

from __future__ import annotations

import http.client
import pathlib
import ssl
import subprocess
from collections.abc import Iterator

import pytest

from tests.integration.conftest import SIZES, ServerProcess
from tests.support.clients import client_context
from tests.support.files import file_bytes

MODES = {
    "nomap": [],
    "no-nomap": ["--no-nomap"],
    "no-txcsum": ["--no-txcsum"],
    "no-ktls": ["--no-ktls"],
    "ktls-workers": ["--ktls-workers", "2"],  # encryption on worker threads (default: inline)
    "http": ["--http"],
    "http-sfbuf": ["--http", "--no-sendfile-nomap"],
}
TLS_VERSIONS = {"tls1.2": ["--tlsv1.2", "--tls-max", "1.2"], "tls1.3": ["--tlsv1.3"]}


@pytest.fixture(scope="module", params=list(MODES))
def server(
    request: pytest.FixtureRequest, corpus: pathlib.Path, state_dir: pathlib.Path
) -> Iterator[ServerProcess]:
    srv = ServerProcess(corpus, MODES[request.param], state_dir)
    srv.mode = request.param  # type: ignore[attr-defined]
    yield srv
    srv.stop()
    assert srv.proc.returncode == 0, srv.stderr
    assert "Traceback" not in srv.stderr, srv.stderr


def _curl(srv: ServerProcess, path: str, out: pathlib.Path, extra: list[str]) -> str:
    cmd = ["curl", "-sS", "-k", "--max-time", "60", "-o", str(out), "-w", "%{http_code}"]
    res = subprocess.run([*cmd, *extra, srv.url(path)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.parametrize("version", list(TLS_VERSIONS))
def test_curl_every_size(server: ServerProcess, version: str, tmp_path: pathlib.Path) -> None:
    extra = TLS_VERSIONS[version] if server.scheme == "https" else []
    for size in SIZES:
        out = tmp_path / f"out{size}"
        assert _curl(server, f"/f{size}.bin", out, extra) == "200"
        assert out.read_bytes() == file_bytes(size), f"size {size} differs"
    server.assert_no_leaks()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_python_client_keepalive(server: ServerProcess, version: ssl.TLSVersion) -> None:
    """All sizes on one kept-alive connection from Python's http.client (+ ssl)."""
    if server.scheme == "https":
        ctx = client_context(version=version)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", server.port, context=ctx, timeout=60
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        for size in SIZES:
            conn.request("GET", f"/f{size}.bin")
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200
            assert int(resp.headers["Content-Length"]) == size
            assert body == file_bytes(size), f"size {size} differs"
        if server.scheme == "https":
            sock = conn.sock
            assert isinstance(sock, ssl.SSLSocket)
            assert sock.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
    finally:
        conn.close()
    server.assert_no_leaks()


def test_counters_show_the_path(server: ServerProcess, tmp_path: pathlib.Path) -> None:
    before = server.idle_stats()
    out = tmp_path / "big"
    extra = TLS_VERSIONS["tls1.3"] if server.scheme == "https" else []
    assert _curl(server, f"/f{SIZES[-1]}.bin", out, extra) == "200"
    s = server.assert_no_leaks()

    def delta(key: str) -> int:
        return int(s[key]) - int(before[key])

    mode = server.mode  # type: ignore[attr-defined]
    caps = set(s["ifnet.capenable"])
    assert delta("ifnet.tx_bytes") > SIZES[-1]
    if mode in ("nomap", "http", "no-ktls", "http-sfbuf", "ktls-workers"):
        assert "IFCAP_NOMAP" in caps
        assert delta("ip.unmapped_converted") == 0
        assert delta("ip.sw_csum_packets") == 0
    if mode in ("nomap", "http", "ktls-workers"):
        assert delta("sfbuf.total") == 0
        assert delta("mbuf.ext_pgs_total") > 0
        assert delta("ifnet.tx_unmapped_mbufs") > 0
    if mode == "no-nomap":
        assert "IFCAP_NOMAP" not in caps
        assert delta("ip.unmapped_converted") > 0
        assert delta("sfbuf.total") >= SIZES[-1] // 4096
        assert delta("ifnet.tx_unmapped_mbufs") == 0
    if mode == "no-txcsum":
        assert "IFCAP_TXCSUM" not in caps and "IFCAP_TSO4" not in caps
        assert delta("ip.sw_csum_packets") > 0
        assert delta("ip.sw_csum_bytes") > SIZES[-1]
        assert delta("ip.unmapped_converted") > 0
    if mode in ("nomap", "no-nomap", "no-txcsum", "ktls-workers"):
        assert delta("ktls.records_encrypted") >= SIZES[-1] // 16384
        assert delta("ktls.bytes_encrypted") > SIZES[-1]
    if mode == "ktls-workers":
        assert any("ktls workers 2" in line for line in server.stdout)
    if mode == "no-ktls":
        assert delta("ktls.records_encrypted") == 0
        assert delta("mbuf.ext_pgs_total") == 0
        assert delta("mbuf.jumbop_total") > 0  # ciphertext copied into clusters
    if mode == "http-sfbuf":
        assert delta("mbuf.ext_pgs_total") == 0
        assert delta("sfbuf.total") >= SIZES[-1] // 4096
        assert s["kern.ipc.mb_use_ext_pgs"] == 0
