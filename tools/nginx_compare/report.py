"""The report: a markdown table of the differences, and everything as JSON.

A difference found in many cases (``--systematic``, 8) is listed once under a
label (S1, S2, ...) that the rows refer to. The markdown also counts the Python
tracebacks in nomapd's log, by their last line.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

from tools.nginx_compare.client import PROBE, Exchange
from tools.nginx_compare.diff import Row, page_text, status_line
from tools.nginx_compare.servers import NOTES


def md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def _unprefixed(diff: str) -> str:
    return re.sub(r"^\[\d+\] ", "", diff)


def systematic_diffs(rows: Sequence[Row], threshold: int) -> list[tuple[str, int]]:
    """Differences found in at least `threshold` cases, most frequent first."""
    if threshold <= 0:
        return []
    counts: dict[str, int] = {}
    for r in rows:
        for d in {_unprefixed(d) for d in r.diffs}:
            counts[d] = counts.get(d, 0) + 1
    found = [(d, n) for d, n in counts.items() if n >= threshold]
    return sorted(found, key=lambda x: (-x[1], x[0]))


def exception_summary(log: str) -> list[tuple[str, int]]:
    """The last line of each Python traceback in a server log, counted."""
    counts: dict[str, int] = {}
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if "Traceback (most recent call last)" not in line:
            continue
        last = ""
        for nxt in lines[i + 1 :]:
            text = nxt.strip(" |+-")
            if "Traceback (most recent call last)" in nxt:
                break
            if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", text):
                last = text
        if last and not last.startswith("ExceptionGroup"):
            counts[last] = counts.get(last, 0) + 1
    return sorted(counts.items(), key=lambda x: -x[1])


def render_markdown(
    rows: Sequence[Row], meta: dict[str, Any], systematic: Sequence[tuple[str, int]]
) -> str:
    same = sum(1 for r in rows if not r.diffs)
    labels = {d: f"S{i}" for i, (d, _) in enumerate(systematic, 1)}
    out = [
        "# nomapd vs nginx static module",
        "",
        f"- date: {meta['date']}",
        f"- nginx: {meta['nginx_version']} (config: NGINX_CONF in tools/nginx_compare/servers.py)",
        f"- nomapd: `{meta['nomapd_command']}` (git {meta['git']})",
        f"- nomapd flags matching nginx's config: {meta['nomapd_matching_flags'] or 'none'}; "
        f"not (yet) known to nomapd: {meta['nomapd_missing_flags'] or 'none'}",
        f"- TLS seen by the client: nginx {meta['tls']['nginx']}, nomapd {meta['tls']['nomapd']}",
        f"- command: `{meta['command']}`",
        f"- {len(rows)} cases: {same} identical, {len(rows) - same} with differences",
    ]
    if meta["nomapd_exceptions"]:
        out.append("- nomapd logged tracebacks during the run (full log in the JSON report):")
        out += [f"  - {n}× `{md_escape(e)}`" for e, n in meta["nomapd_exceptions"]]
    out += [
        "",
        "Differences read `field: nginx vs nomapd` (`[2]` is the second response on the",
        "connection). When the statuses differ only the status and the connection state are",
        "shown; error pages (status >= 300 except 304) are not compared. `connection after` is",
        f"whether the server closed the connection within {PROBE}s of its last response.",
        "Every response's full headers are in the JSON report.",
        "",
    ]
    if systematic:
        out += [
            "## Systematic differences",
            "",
            "Found in many cases, so listed once here and referred to by label in the table.",
            "",
            "| label | difference (nginx vs nomapd) | cases |",
            "|-------|------------------------------|-------|",
        ]
        out += [f"| {labels[d]} | {md_escape(d)} | {n} |" for d, n in systematic]
        out.append("")
    out += [
        "## Cases",
        "",
        "| # | case | request | expected | nginx | nomapd | differences |",
        "|---|------|---------|----------|-------|--------|-------------|",
    ]
    for i, r in enumerate(rows, 1):
        summary = r.case.summary()
        if len(summary) > 90:
            summary = summary[:87] + "…"
        specific = [md_escape(d) for d in r.diffs if _unprefixed(d) not in labels]
        common = sorted(
            {labels[_unprefixed(d)] for d in r.diffs if _unprefixed(d) in labels},
            key=lambda x: int(x[1:]),
        )
        cell = "<br>".join(specific)
        if common:
            cell = (cell + "<br>" if cell else "") + ", ".join(common)
        out.append(
            f"| {i} | {r.case.name} | `{md_escape(summary)}` | {md_escape(r.case.expect)} "
            f"| {status_line(r.nginx)} | {status_line(r.nomapd)} | {cell or 'same'} |"
        )
    out += ["", "## Notes on the configuration", ""]
    out += [f"- {n}" for n in NOTES]
    out.append("")
    return "\n".join(out)


def exchange_json(ex: Exchange, fields: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "connection": ex.connection,
        "error": ex.error,
        "unparsed": ex.raw_tail,
        "tls": ex.tls,
        "responses": [
            {
                "status": r.status,
                "reason": r.reason,
                "version": r.version,
                "headers": r.headers,
                "framing": r.framing,
                "body_length": len(r.body),
                "body_sha256": hashlib.sha256(r.body).hexdigest(),
                "page": page_text(r),
                "fields": f,
            }
            for r, f in zip(ex.responses, fields, strict=True)
        ],
    }
