"""The bench's setup step: the load generators, nginx, and the peers venv.

Theory of operation. System tools come from the distribution: wrk (package
`wrk`), h2load (`nghttp2-client`) and nginx (`nginx`). Those the selected runs
need and that are not on PATH are installed with `apt-get install` when the
bench runs as root and apt-get exists (an `apt-get update` and one retry if
the first attempt fails), unless `--no-install`. Whatever is still missing is
reported in the table, report.md and results.json, with the runs that needed
it: a missing peer is never dropped silently.

Python peers and chart tools live in their own virtual environment,
`bench/.peers-venv` (git-ignored), so the project's environment keeps only
its own dependencies: hypercorn with its trio worker, Starlette, and
matplotlib, as listed by the `bench` extra of pyproject.toml (the single
list; `pip install -e '.[bench]'` would put them in a project venv instead).
The venv is made once; a marker file holding the requirement list makes a
changed list reinstall it.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable

REPO = pathlib.Path(__file__).resolve().parents[1]
PEERS_VENV = REPO / "bench" / ".peers-venv"
MARKER = ".bench-requirements"

APT_PACKAGES = {"wrk": "wrk", "h2load": "nghttp2-client", "nginx": "nginx"}
EXTRA_PATHS = ("/usr/sbin", "/usr/local/sbin")  # nginx lives in sbin, not always on PATH

Log = Callable[[str], None]


def which(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    for d in EXTRA_PATHS:
        candidate = pathlib.Path(d) / tool
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _apt_install(packages: list[str], log: Log) -> bool:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    log(f"setup: apt-get install {' '.join(packages)}")
    if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode == 0:
        return True
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        log(f"setup: apt-get failed: {(res.stderr or res.stdout).strip()[-300:]}")
    return res.returncode == 0


def ensure_tools(needed: list[str], allow_install: bool, log: Log) -> dict[str, str | None]:
    """{tool: path or None} for `needed` (wrk, h2load, nginx), installing missing ones."""
    found = {t: which(t) for t in needed}
    missing = [t for t, p in found.items() if p is None]
    if missing and allow_install:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            log(f"setup: cannot install {', '.join(missing)} (needs root and apt-get)")
        elif _apt_install([APT_PACKAGES[t] for t in missing], log):
            found.update({t: which(t) for t in missing})
    return found


def peer_requirements() -> list[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs: list[str] = data["project"]["optional-dependencies"]["bench"]
    return reqs


def peers_python(venv: pathlib.Path = PEERS_VENV) -> pathlib.Path:
    return venv / "bin" / "python"


def ensure_peers_venv(
    allow_install: bool, log: Log, venv: pathlib.Path = PEERS_VENV
) -> tuple[pathlib.Path | None, str]:
    """The peers venv's python, or None and why it is not there."""
    reqs = peer_requirements()
    want = "\n".join(reqs) + "\n"
    python = peers_python(venv)
    marker = venv / MARKER
    if python.exists() and marker.exists() and marker.read_text() == want:
        return python, ""
    if not allow_install:
        return None, f"{venv} is missing or out of date (run without --no-install)"
    log(f"setup: creating {venv.relative_to(REPO)} with {', '.join(reqs)}")
    res = subprocess.run(
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode == 0:
        res = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *reqs],
            capture_output=True,
            text=True,
            check=False,
        )
    if res.returncode != 0:
        return None, f"pip install failed: {(res.stderr or res.stdout).strip()[-300:]}"
    marker.write_text(want)
    return python, ""
