"""Which core runs: the mypyc-compiled extension modules, or the same sources interpreted.

Theory of operation. `pip install` compiles the kernel packages (`CORE_PACKAGES`)
with mypyc into one group: one shared library plus a small extension module beside
each `.py` (setup.py). Compiled modules of a group call each other natively, so the
choice is all or nothing, and it is made once, here, when `mbuf` (or `ktls`) is
first imported and before any of their submodules:

* `NOMAPD_PURE=1` in the environment: pure, the reference;
* no extension modules beside the sources (the build fell back, or never ran): pure;
* extension modules but a build stamp that does not match the sources (a `.py`
  edited, added or removed since the build): pure, with one warning line on
  stderr, because a stale extension must never run;
* otherwise compiled.

When the answer is pure, `PureFinder` goes first on `sys.meta_path` and loads every
module of the core packages from its `.py` with `SourceFileLoader` (the default
path finder would prefer the extension module beside it).

The build stamp (`_build_stamp.json`, written by setup.py after each compile,
git-ignored) names the mypyc version, the sha256 of every compiled source, and
why the compiler failed if it did (the install is then pure). Hashing the sources costs well under a
millisecond per process start.

This module is never compiled (it chooses), imports nothing of ours, and setup.py
loads it by path for `CORE_PACKAGES` and `stamp_entries`, so the package list is
kept in one place.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import pathlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final

# The kernel packages compiled together (DESIGN.md, "The house"), as directories
# relative to the project root; a package that does not exist yet is skipped.
CORE_PACKAGES: Final = ("mbuf", "ktls", "bpf", "netmap")

# Modules of those packages that stay interpreted, and why.
INTERPRETED: Final = {
    # the chooser itself: it must run before any compiled module is loaded
    "mbuf/_core.py",
    # drives pyOpenSSL (untyped: every call is Any, nothing to gain) and runs
    # once per connection, not per record
    "ktls/handshake.py",
}

STAMP_NAME: Final = "_build_stamp.json"
ROOT: Final = pathlib.Path(__file__).resolve().parent.parent
STAMP: Final = ROOT / "mbuf" / STAMP_NAME
PURE_ENV: Final = "NOMAPD_PURE"


def core_sources(root: pathlib.Path) -> list[str]:
    """The compiled modules' sources under `root`, as sorted POSIX paths relative to it."""
    out: list[str] = []
    for pkg in CORE_PACKAGES:
        d = root / pkg
        if not (d / "__init__.py").is_file():
            continue
        for f in sorted(d.glob("*.py")):
            rel = f"{pkg}/{f.name}"
            if f.name != "__init__.py" and rel not in INTERPRETED:
                out.append(rel)
    return out


def sha256_of(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stamp_entries(root: pathlib.Path, mypyc_version: str, failed: str | None) -> dict[str, object]:
    """What setup.py writes into the stamp after a compile, successful or not."""
    return {
        "mypyc": mypyc_version,
        "failed": failed,  # why the compiler failed: the install is pure until a source changes
        "sources": {rel: sha256_of(root / rel) for rel in core_sources(root)},
    }


def _extensions_present(root: pathlib.Path) -> bool:
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    for pkg in CORE_PACKAGES:
        d = root / pkg
        if d.is_dir() and any(f.name.endswith(suffixes) for f in d.iterdir()):
            return True
    return False


def read_stamp(stamp: pathlib.Path) -> dict[str, Any] | None:
    try:
        data = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("sources"), dict):
        return None
    return data


def stale_reason(root: pathlib.Path, data: dict[str, Any] | None) -> str | None:
    """How the sources under `root` differ from those the stamp records, or None."""
    if data is None:
        return "no valid build stamp"
    recorded: dict[str, Any] = data["sources"]
    for rel in core_sources(root):
        if rel not in recorded:
            return f"{rel} is new since the build"
    for rel, digest in recorded.items():
        path = root / rel
        if not path.is_file():
            return f"{rel} was removed since the build"
        if sha256_of(path) != digest:
            return f"{rel} changed since the build"
    return None


@dataclass(frozen=True)
class Choice:
    compiled: bool
    describe: str  # "compiled (mypyc X.Y)" or "pure": the start-up line, /stats, the bench
    warning: str | None = None  # one line for stderr, when a build exists but cannot run
    build_failed: str | None = None  # why the install is pure, when the compiler failed


def choose(root: pathlib.Path, stamp: pathlib.Path, environ: dict[str, str]) -> Choice:
    data = read_stamp(stamp)
    failed = None if data is None else data.get("failed")
    failed = str(failed) if failed else None
    if environ.get(PURE_ENV, "") not in ("", "0"):
        return Choice(False, "pure", build_failed=failed)
    if not _extensions_present(root):
        return Choice(False, "pure", build_failed=failed)
    reason = stale_reason(root, data)
    if reason is None and failed:
        reason = "the last build failed"  # extension modules left by an older build
    if reason is not None:
        return Choice(
            False,
            "pure",
            f"nomapd: compiled core is stale ({reason}): running the pure core; "
            "run make to rebuild",
        )
    assert data is not None
    return Choice(True, f"compiled (mypyc {data.get('mypyc', '?')})")


class PureFinder(importlib.abc.MetaPathFinder):
    """Loads the core packages' modules from their `.py`, never from an extension module."""

    def __init__(self, packages: Sequence[str]) -> None:
        self.packages = tuple(packages)

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if path is None or fullname.partition(".")[0] not in self.packages:
            return None
        leaf = fullname.rpartition(".")[2]
        for entry in path:
            source = os.path.join(entry, leaf + ".py")
            if os.path.isfile(source):
                loader = importlib.machinery.SourceFileLoader(fullname, source)
                return importlib.util.spec_from_file_location(fullname, source, loader=loader)
        return None  # a subpackage or a missing module: the ordinary finders decide


def _install() -> Choice:
    choice = choose(ROOT, STAMP, dict(os.environ))
    if choice.warning:
        print(choice.warning, file=sys.stderr, flush=True)
    if not choice.compiled and not any(isinstance(f, PureFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, PureFinder(CORE_PACKAGES))
    return choice


def _main(argv: list[str]) -> int:
    """`python -P mbuf/_core.py`: exit 0 when the last build matches the sources (the
    Makefile's test whether to compile again; a failed build is not retried until a
    source changes), 1 with the reason otherwise. `--say`: the core line, and the
    reason the build failed if it did (pip shows no output of a build that installs)."""
    if argv == ["--say"]:
        choice = choose(ROOT, STAMP, dict(os.environ))
        print(f"nomapd: core: {choice.describe}", flush=True)
        if choice.build_failed:
            print(f"nomapd: WARNING: {choice.build_failed}", flush=True)
        return 0
    reason = stale_reason(ROOT, read_stamp(STAMP))
    if reason is not None:
        print(f"nomapd: compiling the core: {reason}", flush=True)
    return 0 if reason is None else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
elif __name__ == "mbuf._core":  # not when setup.py loads this file by path
    CHOICE = _install()
    CORE = CHOICE.describe
