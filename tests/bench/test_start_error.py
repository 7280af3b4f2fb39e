"""A server that exits while starting: the reason is on the error's first line.

The run's record and the bench's progress line keep only that line, so the
log's last line (the server's own one-line error) must be on it.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from bench.rows import BY_NAME
from bench.servers import Server, StartError, wait_ready


def test_exit_while_starting_names_the_reason(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "server.log"
    script = "import sys; print('starting'); print('nomapd: port 1 is in use'); sys.exit(2)"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=out)
    proc.wait(30)
    server = Server(BY_NAME["nomapd-default"], port=1, admin=2, log=log, proc=proc)
    with pytest.raises(StartError) as e:
        wait_ready(server, timeout=5)
    first = str(e.value).splitlines()[0]
    assert first == "nomapd-default exited with 2: nomapd: port 1 is in use"
    assert "starting" in str(e.value)  # the tail is still there below it
