"""`python -m bench` / `make bench`: the command line, and one run from setup to report.

Theory of operation.

1. Plan: the workloads (`bench.workloads`; `--quick` drops sweep point 64),
   every row (`bench.rows`), the tools (`--tools`, default wrk and h2load),
   `--repeat` repetitions of `--duration` seconds, filtered by `--only`
   (`bench.plan`).
2. Setup (`bench.install`): wrk, h2load and nginx as needed, installed with
   apt-get if missing (not with `--no-install`); the peers venv for hypercorn
   and matplotlib. What is still missing is reported, and its runs recorded
   as failed.
3. A temporary directory with the document root (`bench.docroot`), the
   certificate (`bench.cert`), the servers' logs and
   configuration; removed at the end (`--keep` keeps it).
4. The runs (`bench.runner`), with a progress line on stderr.
5. Results in `bench/results/<UTC time>/` (`--results` for another base):
   results.json (`bench.summary`), charts (`bench.charts`, run with the peers
   venv's python), report.md, and the table on stdout (`bench.report`).

Exit status: 0 when at least one run produced figures (whether or not the
targets are met), 1 when none did, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from bench import docroot, install, machine
from bench.cert import make_cert
from bench.plan import TOOLS, make_plan
from bench.progress import Progress
from bench.report import markdown, terminal_table
from bench.rows import HYPERCORN, NGINX, ROWS
from bench.runner import Runner
from bench.servers import READY_PATH, Setting
from bench.summary import Summary
from bench.workloads import MIB, workloads

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DEFAULT_PHYS_MEM = 256 * MIB


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)B?", text.strip().upper())
    if not m:
        raise ValueError(f"bad size {text!r}")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


def phys_mem_of(nomapd_args: Sequence[str]) -> int:
    """nomapd's --phys-mem as given in `nomapd_args`, else its default."""
    for i, a in enumerate(nomapd_args):
        if a == "--phys-mem" and i + 1 < len(nomapd_args):
            return parse_size(nomapd_args[i + 1])
        if a.startswith("--phys-mem="):
            return parse_size(a.split("=", 1)[1])
    return DEFAULT_PHYS_MEM


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="nomapd in each mode against nginx and hypercorn, under wrk and h2load.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="short runs (1 s, 1 repetition, sweep 1/8/256, h2load on 1m, 16k and "
        "handshake only): every server and mode in under 3 minutes",
    )
    p.add_argument("--duration", type=float, help="seconds per run (default 5; --quick: 1)")
    p.add_argument("--repeat", type=int, help="repetitions of every run (default 2; --quick: 1)")
    p.add_argument(
        "--only",
        metavar="REGEX",
        help="runs whose WORKLOAD:ROW:TOOL label matches, e.g. nomapd-default, '^16k:', ':wrk$'",
    )
    p.add_argument("--tools", default=",".join(TOOLS), help="load generators (wrk,h2load)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="load-generator threads (default 1: the other core is the server's)",
    )
    p.add_argument(
        "--nomapd-args",
        default="",
        help="extra arguments for every nomapd row, one string: --nomapd-args='--phys-mem 512M'",
    )
    p.add_argument(
        "--results",
        type=pathlib.Path,
        default=RESULTS,
        help="where the <UTC time>/ directory goes (default bench/results)",
    )
    p.add_argument(
        "--no-install",
        action="store_true",
        help="do not apt-get or pip install anything; report what is missing",
    )
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    p.add_argument("--list", action="store_true", help="print the planned runs and exit")
    return p


def draw_charts(
    results_json: pathlib.Path, out: pathlib.Path, peers: pathlib.Path | None
) -> tuple[list[str], str]:
    """Run bench.charts with a python that has matplotlib; (PNG names, error)."""
    candidates = [p for p in (peers, pathlib.Path(sys.executable)) if p is not None]
    for python in candidates:
        check = subprocess.run(
            [str(python), "-c", "import matplotlib"], capture_output=True, check=False
        )
        if check.returncode != 0:
            continue
        res = subprocess.run(
            [str(python), "-m", "bench.charts", str(results_json), str(out)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            timeout=300,
            check=False,
        )
        if res.returncode != 0:
            return [], f"bench.charts failed: {res.stderr.strip()[-400:]}"
        return [ln for ln in res.stdout.split() if ln.endswith(".png")], ""
    return [], "matplotlib is not installed (the peers venv is missing; run without --no-install)"


def main(argv: Sequence[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    started = time.monotonic()
    now = datetime.datetime.now(datetime.UTC)
    duration: float = ns.duration or (1.0 if ns.quick else 5.0)
    repeat: int = ns.repeat or (1 if ns.quick else 2)
    tools = [t for t in ns.tools.split(",") if t]
    for t in tools:
        if t not in TOOLS:
            parser().error(f"unknown tool {t!r} (known: {', '.join(TOOLS)})")
    try:
        nomapd_args = shlex.split(ns.nomapd_args)
        phys_mem = phys_mem_of(nomapd_args)
        plan = make_plan(
            workloads(ns.quick), list(ROWS), tools, repeat, duration, ns.only, ns.quick
        )
    except (ValueError, re.error) as e:
        parser().error(str(e))
    if not plan:
        parser().error(f"--only {ns.only!r} matches no run")
    if ns.list:
        for step in plan:
            print(f"{step.label} rep {step.rep} {step.duration:g}s")
        return 0
    sel_workloads = [w for w in workloads(ns.quick) if any(s.workload == w for s in plan)]
    sel_rows = [r for r in ROWS if any(s.row == r for s in plan)]
    servers = {r.server for r in sel_rows}

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    needed = list(tools) + ([NGINX] if NGINX in servers else [])
    found = install.ensure_tools(needed, not ns.no_install, log)
    missing: dict[str, str] = {
        t: f"not installed (apt package {install.APT_PACKAGES[t]})"
        for t, p in found.items()
        if p is None
    }
    peers: pathlib.Path | None = None
    peers_error = ""
    if HYPERCORN in servers or not ns.no_charts:
        peers, peers_error = install.ensure_peers_venv(not ns.no_install, log)
        if peers is None and HYPERCORN in servers:
            missing[HYPERCORN] = peers_error
    for what, why in missing.items():
        log(f"bench: missing {what}: {why}")

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="nomapd-bench-"))
    try:
        files = {p.lstrip("/") for w in sel_workloads for p in w.paths} | {READY_PATH[1:]}
        docroot.build(tmp / "root", files)
        cert, key = make_cert(tmp)
        (tmp / "work").mkdir()
        setting = Setting(
            root=tmp / "root",
            cert=cert,
            key=key,
            work=tmp / "work",
            nginx=found.get(NGINX),
            peers_python=peers,
            nomapd_args=tuple(nomapd_args),
        )
        mach = machine.describe({**found}, peers)
        runner = Runner(setting, {t: found.get(t) for t in tools}, ns.threads, Progress(len(plan)))
        records = runner.run(plan)
    finally:
        if ns.keep:
            log(f"bench: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    out = ns.results / now.strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": now.isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)]),
        "quick": ns.quick,
        "duration": duration,
        "repeat": repeat,
        "threads": ns.threads,
        "only": ns.only,
        "nomapd_args": nomapd_args,
        "nomapd_cores": runner.cores,
        "phys_mem": phys_mem,
        "access_log": "nomapd --access-log off; nginx access_log off",
        "wall_s": 0.0,
        "server_start_stop_s": runner.phases,
    }
    summary = Summary(
        meta=meta,
        machine=mach,
        workloads=sel_workloads,
        rows=sel_rows,
        tools=tools,
        records=records,
        missing=missing,
        server_errors=runner.server_errors,
        tls=runner.tls,
    )
    summary.compute(phys_mem)
    results_json = out / "results.json"
    results_json.write_text(json.dumps(summary.to_json(), indent=1) + "\n")
    if ns.no_charts:
        meta["chart_error"] = "skipped (--no-charts)"
    else:
        summary.charts, chart_error = draw_charts(results_json, out, peers)
        if chart_error:
            meta["chart_error"] = chart_error
            log(f"bench: charts: {chart_error}")
    meta["wall_s"] = time.monotonic() - started
    results_json.write_text(json.dumps(summary.to_json(), indent=1) + "\n")
    (out / "report.md").write_text(markdown(summary))
    print(terminal_table(summary))
    print()
    print(f"bench: {len(records)} runs in {meta['wall_s']:.0f} s; results in {out}")
    return 0 if any(r.ok for r in records) else 1
