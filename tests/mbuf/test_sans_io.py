"""The data-path model is sans-IO: importing any of it must not load trio."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import mbuf

MODULES = sorted(f"mbuf.{m.name}" for m in pkgutil.iter_modules(mbuf.__path__))


def test_every_module_is_listed() -> None:
    names = {p.stem for p in Path(mbuf.__path__[0]).glob("*.py")} - {"__init__"}
    assert {m.removeprefix("mbuf.") for m in MODULES} == names
    assert {"mbuf.sendfile", "mbuf.sockbuf", "mbuf.ip_output", "mbuf.kern"} <= set(MODULES)


def test_importing_mbuf_does_not_load_trio() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {['mbuf', *MODULES]!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'trio' or m.startswith('trio.'))\n"
        "assert not bad, bad\n"
        "print('ok', len(sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_the_probe_would_notice_trio() -> None:
    """The same probe fails when trio is imported, so the test above can fail."""
    code = "import sys, mbuf, trio\nassert 'trio' not in sys.modules\n"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode != 0 and "AssertionError" in proc.stderr
