"""A lossy wire (`--loss`): every byte arrives once and in order, and the counters
show what the retransmissions cost (with `--no-nomap`, fresh conversions).

The host socket stays a reliable byte stream: the model holds back what its
wire "lost" and what follows, and TCP sends it again from snd_una. Each test
ends with the leak assertion.
"""

from __future__ import annotations

import pathlib
import subprocess
from collections.abc import Iterator

import pytest

from tests.integration.conftest import SIZES, ServerProcess
from tests.support.files import file_bytes

MODES = {
    "nomap": [],
    "no-nomap": ["--no-nomap"],
    "no-ktls": ["--no-ktls"],
    "http": ["--http"],
    "ipv6-no-nomap": ["--host", "::1", "--no-nomap"],
}
LOSS = ["--loss", "0.02", "--loss-seed", "7"]


@pytest.fixture(scope="module", params=list(MODES))
def lossy(
    request: pytest.FixtureRequest, corpus: pathlib.Path, state_dir: pathlib.Path
) -> Iterator[ServerProcess]:
    srv = ServerProcess(corpus, [*LOSS, *MODES[request.param]], state_dir)
    srv.mode = request.param  # type: ignore[attr-defined]
    yield srv
    srv.stop()
    assert srv.proc.returncode == 0, srv.stderr
    assert "Traceback" not in srv.stderr, srv.stderr


def test_every_size_despite_loss(lossy: ServerProcess, tmp_path: pathlib.Path) -> None:
    cmd = ["curl", "-sS", "-k", "--max-time", "120", "--fail"]
    for size in SIZES:
        cmd += ["-o", str(tmp_path / f"out{size}"), lossy.url(f"/f{size}.bin")]
    for _ in range(3):  # the big file three times: several thousand wire segments
        cmd += ["-o", str(tmp_path / "again"), lossy.url(f"/f{SIZES[-1]}.bin")]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    for size in SIZES:
        assert (tmp_path / f"out{size}").read_bytes() == file_bytes(size), size
    assert (tmp_path / "again").read_bytes() == file_bytes(SIZES[-1])
    s = lossy.assert_no_leaks()
    assert s["ifnet.tx_lost"] > 0 and s["tcp.rexmttimeo"] > 0
    assert s["tcp.sndrexmitpack"] > 0 and s["tcp.sndrexmitbyte"] > 0
    assert s["tcp.rcvpack"] > 0
    if lossy.mode.startswith("ipv6"):  # type: ignore[attr-defined]
        assert s["ip6.localout"] > 0 and s["ip.output_packets"] == 0
    if lossy.mode.endswith("no-nomap"):  # type: ignore[attr-defined]
        # Every packet converted, the retransmitted ones again, with new sf_bufs.
        assert s["ip.unmapped_converted"] > 0
        assert s["sfbuf.total"] >= s["ip.unmapped_pages_mapped"] > 0
