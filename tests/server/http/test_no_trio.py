"""server/http is sans-IO: importing any of its modules never loads trio.

Checked in a fresh interpreter (this one has trio loaded by pytest-trio); the
modules are found by walking the package, so a new one is covered at once."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import importlib, pkgutil, sys
import server.http as package
for info in pkgutil.iter_modules(package.__path__, "server.http."):
    importlib.import_module(info.name)
assert "server.http.request" in sys.modules and "server.http.framing" in sys.modules
sys.exit("trio" in sys.modules)
"""


def test_server_http_does_not_load_trio() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
