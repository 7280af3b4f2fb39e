"""ruff and mypy stay clean: part of `make test`, so CI enforces them."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

TOP = pathlib.Path(__file__).resolve().parent.parent
# The Makefile's one list: `LINT_PATHS = server mbuf ...`.
LINT_PATHS = next(
    line.partition("=")[2].split()
    for line in (TOP / "Makefile").read_text().splitlines()
    if line.startswith("LINT_PATHS")
)


@pytest.mark.parametrize(
    "args",
    [
        ["ruff", "check", *LINT_PATHS],
        ["ruff", "format", "--check", *LINT_PATHS],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_lint(args: list[str]) -> None:
    res = subprocess.run(
        [sys.executable, "-m", *args], cwd=TOP, capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr
