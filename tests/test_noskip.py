"""CI's rule: a skipped test fails the run (tests/noskip.py)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

SAMPLE = """
import pytest

def test_skipped() -> None:
    pytest.skip("no such tool")

@pytest.mark.skipif(True, reason="not on this machine")
def test_skipif() -> None:
    raise AssertionError("a skipif test ran")

@pytest.mark.xfail(reason="known", strict=True)
def test_xfail() -> None:
    raise AssertionError

def test_runs() -> None:
    assert True
"""

REPO = pathlib.Path(__file__).resolve().parent.parent


def _run(tmp_path: pathlib.Path, no_skip: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "NOMAPD_NO_SKIP"}
    if no_skip is not None:
        env["NOMAPD_NO_SKIP"] = no_skip
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.noskip", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_sample.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip


def test_skips_fail_under_ci(tmp_path: pathlib.Path) -> None:
    res = _run(tmp_path, "1")
    assert res.returncode == 1, res.stdout
    # a skip in the call fails the test; a skipif (in setup) is an error: both red
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in res.stdout
    assert "skipped with NOMAPD_NO_SKIP=1 (CI): Skipped: no such tool" in res.stdout
    assert "not on this machine" in res.stdout


def test_skips_are_skips_elsewhere(tmp_path: pathlib.Path) -> None:
    res = _run(tmp_path, None)
    assert res.returncode == 0, res.stdout
    assert "1 passed, 2 skipped, 1 xfailed" in res.stdout
