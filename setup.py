"""Build: the kernel packages compiled with mypyc, or a pure install when that cannot be done.

Everything else about the package is in pyproject.toml; this file only adds the
extension modules. The compiled group is every module of `mbuf._core.CORE_PACKAGES`
that exists (package `__init__.py` files and `mbuf._core.INTERPRETED` excepted),
one mypyc group: one shared library (`nomapd_core__mypyc`, at the top level) and one
small extension module beside each source. An editable install (`pip install -e .`,
what the Makefile runs) builds them in place, next to the `.py` files.

After a successful compile, `mbuf/_build_stamp.json` records the sha256 of every
compiled source; `mbuf._core` compares it at import and runs the pure core if a
source changed since. If mypyc or the C compiler fails, the install goes on
without extension modules, says so in a warning, removes the extension modules
of an earlier build (nothing stale can run) and writes the reason into the stamp:
`make` does not retry until a source changes, and the server repeats the warning.

NOMAPD_BUILD_PURE=1 skips the compiler on purpose (a pure install).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import sys
from types import ModuleType
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).resolve().parent
GROUP = "nomapd_core"


def _load_core() -> ModuleType:
    """mbuf/_core.py by path: importing `mbuf` would import the modules being built."""
    spec = importlib.util.spec_from_file_location("_nomapd_core_build", ROOT / "mbuf" / "_core.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


core = _load_core()


def brief(e: BaseException) -> str:
    """An exception in one short line (a CompileError quotes the whole gcc command)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:117] + '...' if len(text) > 120 else text}"


def warn(what: str) -> None:
    bar = "*" * 78
    print(
        f"\n{bar}\nnomapd: WARNING: {what}\n"
        "nomapd: installing the pure core instead (the same code, interpreted, slower);\n"
        "nomapd: fix the cause and run make (or pip install -e .) again to compile it.\n"
        f"{bar}\n",
        file=sys.stderr,
        flush=True,
    )


def remove_build_outputs() -> None:
    """The stamp and the extension modules of an earlier build: none of them may run now."""
    core.STAMP.unlink(missing_ok=True)
    suffixes = (".so", ".pyd")
    for pkg in core.CORE_PACKAGES:
        d = ROOT / pkg
        if d.is_dir():
            for f in d.iterdir():
                if f.name.endswith(suffixes):
                    f.unlink()
    for f in ROOT.glob(f"{GROUP}__mypyc*"):
        if f.name.endswith(suffixes):
            f.unlink()


# The sources as mypyc read them, hashed just before it ran: a file edited while
# the C compiler works is stale at once, since its new text was not compiled.
COMPILED: dict[str, object] | None = None


def write_stamp(failed: str | None, entries: dict[str, object] | None = None) -> str:
    if entries is None:
        entries = core.stamp_entries(ROOT, mypyc_version, failed)
    stamp = json.dumps(entries, indent=1, sort_keys=True)
    core.STAMP.write_text(stamp + "\n")
    return stamp


class BuildCore(build_ext):
    """build_ext that falls back to a pure install when the C compiler fails."""

    extensions: list[Any]

    def run(self) -> None:
        if not self.extensions:
            return
        try:
            super().run()
        except Exception as e:  # CompileError, LinkError, a missing compiler: all the same here
            why = f"compiling the core failed ({brief(e)})"
            warn(why)
            self.extensions = []
            remove_build_outputs()
            write_stamp(why)
            return
        stamp = write_stamp(None, COMPILED)
        if not self.inplace and not getattr(self, "editable_mode", False):
            built = pathlib.Path(self.build_lib) / "mbuf" / core.STAMP_NAME
            built.parent.mkdir(parents=True, exist_ok=True)
            built.write_text(stamp + "\n")

    def get_outputs(self) -> list[str]:
        return super().get_outputs() if self.extensions else []


# setup.py runs three times in one pip install (build requirements, metadata, the
# build): only the build needs the extension modules.
BUILDING = any(
    cmd in sys.argv for cmd in ("build", "build_ext", "bdist_wheel", "editable_wheel", "install")
)


def extensions() -> list[Any]:
    if not BUILDING:
        return []
    if os.environ.get("NOMAPD_BUILD_PURE", "") not in ("", "0"):
        print("nomapd: NOMAPD_BUILD_PURE is set: installing the pure core", file=sys.stderr)
        remove_build_outputs()
        write_stamp("NOMAPD_BUILD_PURE was set at install")
        return []
    global COMPILED
    sources = core.core_sources(ROOT)
    COMPILED = core.stamp_entries(ROOT, mypyc_version, None)
    try:
        from mypyc.build import mypycify

        return list(mypycify(sources, group_name=GROUP, opt_level="3"))
    except BaseException as e:  # mypyc exits through SystemExit on type errors
        if isinstance(e, KeyboardInterrupt):
            raise
        why = f"mypyc could not compile the core ({brief(e)}; its messages are above)"
        warn(why)
        remove_build_outputs()
        write_stamp(why)
        return []


try:
    from mypy.version import __version__ as mypyc_version
except ImportError:
    mypyc_version = "?"

setup(ext_modules=extensions(), cmdclass={"build_ext": BuildCore})
