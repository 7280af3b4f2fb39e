"""One run: build the root, start both servers, run every case on both, report.

The exit status is 0 whatever differs (this is a report, not a test); 2 when
a server cannot be started.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import email.utils
import json
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from bench.cert import make_cert
from bench.loopback import HOST, free_port
from tools.nginx_compare.cases import CASES, Case, req
from tools.nginx_compare.client import STEP_TIMEOUT, escape, run_case
from tools.nginx_compare.diff import Row, compare
from tools.nginx_compare.docroot import DAY, FIXED_MTIME, build_docroot
from tools.nginx_compare.report import (
    exception_summary,
    exchange_json,
    render_markdown,
    systematic_diffs,
)
from tools.nginx_compare.servers import (
    NOTES,
    Child,
    ServerError,
    nginx_conf,
    nginx_version,
    nomapd_flags,
    running,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
PROG = "tools.nginx_compare"
DESCRIPTION = "Compare nomapd's HTTP behaviour with nginx's static module, request by request."


def validators_of(port: int) -> dict[str, str]:
    """ETags of text.txt and bin.dat as this server sends them."""
    out: dict[str, str] = {}
    for key, path in (("etag_text", "/text.txt"), ("etag_bin", "/bin.dat")):
        ex = run_case(Case("validators", "-", (req("HEAD", path),)), port, {})
        etag = ex.responses[0].header("ETag") if ex.responses else None
        out[key] = etag or '"server-sent-no-etag"'
    return out


def _git_describe(timeout: float) -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    ap.add_argument(
        "--nomapd-args",
        default="",
        help='extra arguments for `nomapd serve`, one string: --nomapd-args="--max-ranges 4"',
    )
    ap.add_argument(
        "--nomapd-cmd",
        default=str(REPO / ".venv" / "bin" / "nomapd"),
        help="the nomapd command (default: .venv/bin/nomapd of this checkout)",
    )
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--mime-types", default="/etc/nginx/mime.types", help="nginx's MIME table")
    ap.add_argument("--out", help="write the markdown report here too")
    ap.add_argument("--json", help="write everything as JSON here")
    ap.add_argument("--only", help="run only the cases whose name matches this regex")
    ap.add_argument("--timeout", type=float, default=STEP_TIMEOUT, help="seconds per step")
    ap.add_argument(
        "--systematic",
        type=int,
        default=8,
        help="list a difference once, with a label, when at least this many cases have it "
        "(0: never)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ns = ap.parse_args(argv)
    timeout: float = ns.timeout

    cases = [c for c in CASES if not ns.only or re.search(ns.only, c.name)]
    nomapd_cmd = shlex.split(ns.nomapd_cmd)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="nginx-compare-"))
    try:
        version_line, version, _ = nginx_version(ns.nginx, timeout)
        mime_types = pathlib.Path(ns.mime_types)
        if not mime_types.is_file():
            raise ServerError(f"{mime_types}: no such file (nginx's MIME table, --mime-types)")
        root, files = build_docroot(tmp)
        cert, key = make_cert(tmp)
        prefix = tmp / "nginx"
        prefix.mkdir()
        ng_port, nm_port, admin_port = free_port(), free_port(), free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(prefix, root, ng_port, cert, key, version, mime_types))
        ng_argv = [
            ns.nginx,
            "-c",
            str(conf),
            "-p",
            str(prefix),
            "-e",
            str(prefix / "error.log"),
            "-g",
            "daemon off;",
        ]
        used, missing = nomapd_flags(nomapd_cmd, timeout)
        nm_argv = [
            *nomapd_cmd,
            "serve",
            str(root),
            "--port",
            str(nm_port),
            "--admin",
            f"{HOST}:{admin_port}",
            "--cert",
            str(cert),
            "--key",
            str(key),
            *used,
            *shlex.split(ns.nomapd_args),
        ]
        nginx = Child("nginx", ng_argv, ng_port, prefix / "stdout.log")
        nomapd = Child("nomapd", nm_argv, nm_port, tmp / "nomapd.log")
        lastmod = email.utils.formatdate(FIXED_MTIME, usegmt=True)
        dates = {
            "lastmod": lastmod,
            "later": email.utils.formatdate(FIXED_MTIME + DAY, usegmt=True),
            "earlier": email.utils.formatdate(FIXED_MTIME - DAY, usegmt=True),
        }
        with running(nginx, timeout), running(nomapd, timeout):
            substs: list[dict[bytes, bytes]] = []
            validators: dict[str, dict[str, str]] = {}
            tls: dict[str, str] = {}
            for child in (nginx, nomapd):
                v = validators_of(child.port)
                validators[child.name] = v
                tls[child.name] = run_case(
                    Case("tls", "-", (req("HEAD", "/"),)), child.port, {}
                ).tls
                substs.append(
                    {("{" + k + "}").encode(): val.encode() for k, val in {**dates, **v}.items()}
                )
            rows: list[Row] = []
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                for case in cases:
                    f_ng = pool.submit(run_case, case, ng_port, substs[0], timeout)
                    f_nm = pool.submit(run_case, case, nm_port, substs[1], timeout)
                    ng_ex = f_ng.result(timeout * 3)
                    nm_ex = f_nm.result(timeout * 3)
                    rows.append(compare(case, ng_ex, nm_ex, files, (ng_port, nm_port), lastmod))
                    if nomapd.proc is not None and nomapd.proc.poll() is not None:
                        print(f"nomapd died during {case.name}", file=sys.stderr)
                        break
            logs = {"nginx": nginx.log_tail(40), "nomapd": nomapd.log_tail(400)}
            nomapd_log = nomapd.log.read_text(errors="replace")
            with contextlib.suppress(OSError):
                logs["nginx_error_log"] = "\n".join(
                    (prefix / "error.log").read_text(errors="replace").splitlines()[-60:]
                )
        meta: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "nginx_version": version_line,
            "nginx_conf": conf.read_text(),
            "nomapd_command": shlex.join(nm_argv).replace(str(tmp), "$TMP"),
            "nomapd_matching_flags": " ".join(used),
            "nomapd_missing_flags": " ".join(missing),
            "git": _git_describe(timeout),
            "tls": tls,
            "validators": validators,
            "dates": dates,
            "command": shlex.join(["python", "-m", PROG, *(argv or sys.argv[1:])]),
            "notes": list(NOTES),
            "nomapd_exceptions": exception_summary(nomapd_log),
        }
        meta["nginx_conf"] = meta["nginx_conf"].replace(str(tmp), "$TMP")
        systematic = systematic_diffs(rows, ns.systematic)
        report = render_markdown(rows, meta, systematic)
        print(report)
        if ns.out:
            pathlib.Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
            pathlib.Path(ns.out).write_text(report)
        if ns.json:
            pathlib.Path(ns.json).parent.mkdir(parents=True, exist_ok=True)
            doc = {
                "meta": meta,
                "server_logs": logs,
                "systematic_differences": systematic,
                "cases": [
                    {
                        "name": r.case.name,
                        "group": r.case.group,
                        "mode": r.case.mode,
                        "expect": r.case.expect,
                        "requests": [escape(q, 400) for q in r.case.requests],
                        "differences": r.diffs,
                        "nginx": exchange_json(r.nginx, r.nginx_fields),
                        "nomapd": exchange_json(r.nomapd, r.nomapd_fields),
                    }
                    for r in rows
                ],
            }
            pathlib.Path(ns.json).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        return 0
    except (ServerError, subprocess.TimeoutExpired, OSError) as e:
        print(f"nginx_compare: {e}", file=sys.stderr)
        return 2
    finally:
        if ns.keep:
            print(f"nginx_compare: kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
