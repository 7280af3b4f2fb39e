"""The compiled core and the pure one (mbuf/_core.py, setup.py, the Makefile).

In-process tests see the core this process chose; the others run a fresh
interpreter, on this tree or on a copy of it whose stamp or sources were edited.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

import mbuf
import mbuf.mbuf
from mbuf import _core

TOP = pathlib.Path(__file__).resolve().parent.parent
PROBE = (
    "import mbuf, mbuf.mbuf, ktls.session; "
    "print(mbuf.CORE, mbuf.mbuf.__file__, ktls.session.__file__, sep='|')"
)
BUILT = _core.read_stamp(_core.STAMP)
COMPILED_BUILD = BUILT is not None and not BUILT.get("failed")
needs_build = pytest.mark.skipif(not COMPILED_BUILD, reason="no compiled build (pure install)")


def run_probe(cwd: pathlib.Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != _core.PURE_ENV}
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=cwd,
        env={**environ, "PYTHONPATH": str(cwd), **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


@needs_build
def test_the_compiled_core_runs_unless_pure_is_asked() -> None:
    if os.environ.get(_core.PURE_ENV, "") not in ("", "0"):
        assert mbuf.CORE == "pure"
        assert mbuf.mbuf.__file__ is not None and mbuf.mbuf.__file__.endswith(".py")
    else:
        assert re.fullmatch(r"compiled \(mypyc [\w.+]+\)", mbuf.CORE)
        assert mbuf.mbuf.__file__ is not None and mbuf.mbuf.__file__.endswith(".so")


@needs_build
def test_nomapd_pure_loads_every_module_from_its_source() -> None:
    out = run_probe(TOP, NOMAPD_PURE="1")
    core, *files = out.stdout.strip().split("|")
    assert core == "pure"
    assert all(f.endswith(".py") for f in files), files
    assert out.stderr == ""


@pytest.fixture
def tree(tmp_path: pathlib.Path) -> pathlib.Path:
    """A copy of the built tree: the kernel packages, their extensions and the stamp."""
    for pkg in _core.CORE_PACKAGES:  # every compiled package the stamp names
        if (TOP / pkg).is_dir():
            shutil.copytree(TOP / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for lib in TOP.glob("nomapd_core__mypyc*"):
        shutil.copy2(lib, tmp_path / lib.name)
    return tmp_path


@needs_build
def test_the_copy_runs_compiled(tree: pathlib.Path) -> None:
    core, *files = run_probe(tree).stdout.strip().split("|")
    assert core.startswith("compiled")
    assert all(f.startswith(str(tree)) and f.endswith(".so") for f in files), files


@needs_build
def test_a_changed_source_falls_back_to_pure_with_one_warning(tree: pathlib.Path) -> None:
    src = tree / "ktls" / "keys.py"
    src.write_text(src.read_text() + "\n# edited after the build\n")
    out = run_probe(tree)
    core, *files = out.stdout.strip().split("|")
    assert core == "pure"
    assert all(f.startswith(str(tree)) and f.endswith(".py") for f in files), files
    assert out.stderr.splitlines() == [
        "nomapd: compiled core is stale (ktls/keys.py changed since the build): "
        "running the pure core; run make to rebuild"
    ]


@needs_build
def test_a_doctored_or_missing_stamp_falls_back_to_pure(tree: pathlib.Path) -> None:
    stamp = tree / "mbuf" / _core.STAMP_NAME
    data = json.loads(stamp.read_text())
    data["sources"]["mbuf/mbuf.py"] = "0" * 64
    stamp.write_text(json.dumps(data))
    out = run_probe(tree)
    assert out.stdout.strip().split("|")[0] == "pure"
    assert "mbuf/mbuf.py changed since the build" in out.stderr
    stamp.unlink()
    out = run_probe(tree)
    assert out.stdout.strip().split("|")[0] == "pure"
    assert "no valid build stamp" in out.stderr


def test_a_new_module_is_stale_and_a_failed_build_is_pure(tmp_path: pathlib.Path) -> None:
    (tmp_path / "mbuf").mkdir()
    (tmp_path / "mbuf" / "__init__.py").write_text("")
    (tmp_path / "mbuf" / "a.py").write_text("x = 1\n")
    stamp = tmp_path / "stamp.json"
    stamp.write_text(json.dumps(_core.stamp_entries(tmp_path, "9.9", None)))
    assert _core.stale_reason(tmp_path, _core.read_stamp(stamp)) is None
    (tmp_path / "mbuf" / "b.py").write_text("y = 2\n")
    assert (
        _core.stale_reason(tmp_path, _core.read_stamp(stamp)) == "mbuf/b.py is new since the build"
    )
    stamp.write_text(json.dumps(_core.stamp_entries(tmp_path, "9.9", "no compiler")))
    choice = _core.choose(tmp_path, stamp, {})
    assert (choice.compiled, choice.describe, choice.build_failed) == (False, "pure", "no compiler")
    assert choice.warning is None


def test_the_makefile_watches_every_core_package() -> None:
    makefile = (TOP / "Makefile").read_text()
    line = re.search(r"^CORE_SOURCES = \$\(wildcard (.*)\)$", makefile, re.M)
    assert line is not None
    assert line.group(1).split() == [f"{pkg}/*.py" for pkg in _core.CORE_PACKAGES]
