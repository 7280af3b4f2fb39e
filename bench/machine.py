"""The machine and the versions of everything a result depends on.

Theory of operation. Recorded in results.json and report.md so that two runs
can be compared knowingly: CPU model, core count, memory, kernel; Python,
nomapd's git revision (with "+ uncommitted changes" when the tree is dirty),
OpenSSL (the system's and the one Python links), nginx, wrk, h2load, and the
peers venv's hypercorn, Starlette, trio and matplotlib. A tool that is missing
is "missing".
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import re
import ssl
import subprocess
import sys
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
PEER_PACKAGES = ("hypercorn", "starlette", "trio", "anyio", "h11", "matplotlib")


def _run(argv: list[str], timeout: float = 10.0) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (res.stdout + res.stderr).strip()


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_bytes() -> int:
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def git_revision() -> str:
    head = _run(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    if not head or " " in head:
        return "unknown"
    dirty = _run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    return head + (" + uncommitted changes" if dirty else "")


def _first_line(text: str) -> str:
    return text.splitlines()[0].strip() if text else "missing"


def tool_versions(tools: dict[str, str | None]) -> dict[str, str]:
    """'1.22.1' for nginx, 'debian/4.1.0-3+b2' for wrk, '1.52.0' for h2load, or 'missing'."""
    out = {t: "missing" for t in ("nginx", "wrk", "h2load")}
    if path := tools.get("nginx"):
        m = re.search(r"nginx/(\S+)", _run([path, "-v"]))
        out["nginx"] = m.group(1) if m else "unknown"
    if path := tools.get("wrk"):
        m = re.search(r"^wrk (\S+)", _run([path, "-v"]), re.M)
        out["wrk"] = m.group(1) if m else "unknown"
    if path := tools.get("h2load"):
        m = re.search(r"nghttp2/(\S+)", _run([path, "--version"]))
        out["h2load"] = m.group(1) if m else "unknown"
    return out


def peer_versions(python: pathlib.Path | None) -> dict[str, str]:
    if python is None:
        return {p: "missing" for p in PEER_PACKAGES}
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: out[p] = 'missing'\n"
        "print(json.dumps(out))\n"
    )
    text = _run([str(python), "-c", code, *PEER_PACKAGES])
    try:
        data: dict[str, str] = json.loads(text.splitlines()[-1])
        return data
    except (ValueError, IndexError):
        return {p: "unknown" for p in PEER_PACKAGES}


def describe(tools: dict[str, str | None], peers: pathlib.Path | None) -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count() or 0,
        "memory_bytes": memory_bytes(),
        "kernel": platform.release(),
        "versions": {
            "python": sys.version.split()[0],
            "nomapd_git": git_revision(),
            "openssl": _first_line(_run(["openssl", "version"])),
            "python_ssl": ssl.OPENSSL_VERSION,
            **tool_versions(tools),
            **peer_versions(peers),
        },
    }
