"""ktls (and the mbuf model under it) is sans-IO: importing it never loads trio,
and no module of it but `ktls.handshake` loads pyOpenSSL.

Checked in a fresh interpreter, since this one has trio loaded by pytest-trio
(and OpenSSL by the server's tests). The module lists come from the package
directory, so a new module is covered without editing this test.
tests/test_arrows.py checks the same arrows in the source, without importing.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

import ktls
import mbuf

REPO = pathlib.Path(__file__).resolve().parents[2]

# argv: "walk" (import a package and every module in it) or "one", then the name.
PROBE = """
import importlib, json, pkgutil, sys
mode, name = sys.argv[1:]
pkg = importlib.import_module(name)
names = [name]
if mode == "walk":
    for info in pkgutil.iter_modules(pkg.__path__, name + "."):
        importlib.import_module(info.name)
        names.append(info.name)
def loaded(top):
    return sorted(m for m in sys.modules if m == top or m.startswith(top + "."))
print(json.dumps({"imported": names, "trio": loaded("trio"), "OpenSSL": loaded("OpenSSL")}))
"""


def import_in_fresh_interpreter(mode: str, name: str) -> dict[str, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, mode, name],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, list[str]] = json.loads(proc.stdout)
    return result


def modules_of(package: object) -> set[str]:
    directory = pathlib.Path(package.__file__).parent  # type: ignore[attr-defined]
    name = directory.name
    return {name} | {f"{name}.{p.stem}" for p in directory.glob("*.py") if p.stem != "__init__"}


@pytest.mark.parametrize("package", [ktls, mbuf], ids=["ktls", "mbuf"])
def test_importing_does_not_load_trio(package: object) -> None:
    result = import_in_fresh_interpreter("walk", package.__name__)  # type: ignore[attr-defined]
    assert set(result["imported"]) == modules_of(package)
    assert result["trio"] == []


# The one module that drives OpenSSL (its handshake, over memory BIOs).
HANDSHAKE = "ktls.handshake"


@pytest.mark.parametrize("name", sorted(modules_of(ktls) - {HANDSHAKE}))
def test_the_record_layer_does_not_load_openssl(name: str) -> None:
    result = import_in_fresh_interpreter("one", name)
    assert result["imported"] == [name]
    assert result["OpenSSL"] == []
    assert result["trio"] == []


def test_the_probe_does_see_trio() -> None:
    """The control: the server's transmit path is the trio side, and the probe notices."""
    result = import_in_fresh_interpreter("one", "server.txpath")
    assert "trio" in result["trio"]


def test_the_probe_does_see_openssl() -> None:
    """The control: the handshake module is the OpenSSL side, and the probe notices."""
    assert "OpenSSL" in import_in_fresh_interpreter("one", HANDSHAKE)["OpenSSL"]
