"""The table printed at the end of a run, and report.md.

Theory of operation. The table has one block per workload and one line per row
(server and mode): wrk's requests/s, MB/s and latency p50/p99, the server's
CPU seconds per GB and peak RSS, the ratios of the workload's headline figure
to nginx and to hypercorn (same protocol, same tool), then h2load's headline
figure and its ratios, and the errors or the reason a row has no figures. Then
the capture block (`Summary.capture`: server and capture CPU per GB, packets
and drops per capture row beside the baseline), the performance targets
(`bench.targets`) and what was missing.

report.md says how the figures were obtained, then gives the targets, every
figure of both tools per workload, CPU per GB per mode, what unmapped mbufs
save (in the counters' terms), what packet capture costs in each BPF buffer
mode, nomapd's counters per GB, the concurrency sweep, the TLS each server
negotiated, and the charts.
"""

from __future__ import annotations

from typing import Any

from bench.counters import CAPTURE_PER_GB, LEVELS, PER_GB
from bench.results import Figures, find
from bench.rows import CAPTURE_BASELINE, NOMAPD, Row
from bench.summary import Summary
from bench.workloads import MB_S, MIB, ONE_MIB, Workload, sweep_names

METRIC_LABEL = {MB_S: "MB/s", "req_s": "requests/s"}
DASH = "-"


def num(v: float | None) -> str:
    """A figure with about three significant digits; '-' when there is none."""
    if v is None:
        return DASH
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a == 0:
        return "0"
    if a >= 0.01:
        return f"{v:.2f}"
    return f"{v:.1e}"


def pct(v: float | None) -> str:
    return DASH if v is None else f"{v * 100:.1f}%"


def times(v: float | None) -> str:
    return DASH if v is None else f"{v:.2f}x"


def mib(v: int | None) -> str:
    return DASH if v is None else f"{v / MIB:.0f}"


def primary_tools(s: Summary) -> tuple[str, str | None]:
    first = "wrk" if "wrk" in s.tools else s.tools[0]
    second = next((t for t in s.tools if t != first), None)
    return first, second


def _rows_in(s: Summary, w: Workload) -> list[Row]:
    return [r for r in s.rows if any(f.workload == w.name and f.row == r.name for f in s.figures)]


def _status(f: Figures | None) -> str:
    if f is None:
        return ""
    if not f.runs_ok:
        return "failed: " + "; ".join(e.splitlines()[0] for e in f.failures)[:80]
    parts = []
    if f.errors:
        parts.append(f"{f.errors} errors")
    if f.runs_ok < f.runs:
        parts.append(f"{f.runs - f.runs_ok}/{f.runs} runs failed")
    return ", ".join(parts)


# --------------------------------------------------------------------------- terminal


def terminal_table(s: Summary) -> str:
    first, second = primary_tools(s)
    out: list[str] = []
    head = (
        f"{'server/mode':<30}{'req/s':>9}{'MB/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'CPU s/GB':>10}{'RSS MiB':>9}{'x nginx':>9}{'x hyper':>9}"
    )
    if second:
        head += f" | {second + ' ' + 'METRIC':>13}{'x nginx':>9}{'x hyper':>9}"
    for w in s.workloads:
        rows = _rows_in(s, w)
        if not rows:
            continue
        label = METRIC_LABEL[w.metric]
        out.append("")
        out.append(f"== {w.name}: {w.title} ({first}; ratios of {label})")
        out.append(head.replace("METRIC", label))
        for row in rows:
            f = find(s.figures, w.name, row.name, first)
            line = f"{row.name:<30}"
            if f is not None and f.runs_ok:
                r = s.ratios.get((w.name, row.name, first))
                line += (
                    f"{num(f.req_s):>9}{num(f.mb_s):>9}{num(f.p50_ms):>9}{num(f.p99_ms):>9}"
                    f"{num(f.cpu_s_per_gb):>10}{mib(f.peak_rss):>9}"
                    f"{times(r.get('nginx') if r else None):>9}"
                    f"{times(r.get('hypercorn') if r else None):>9}"
                )
            else:
                line += f"{DASH:>9}" * 4 + f"{DASH:>10}" + f"{DASH:>9}" * 3
            notes = [_status(f)]
            if second:
                g = find(s.figures, w.name, row.name, second)
                r2 = s.ratios.get((w.name, row.name, second))
                value = g.metric(w.metric) if g and g.runs_ok else None
                line += (
                    f" | {num(value):>13}{times(r2.get('nginx') if r2 else None):>9}"
                    f"{times(r2.get('hypercorn') if r2 else None):>9}"
                )
                if g is not None and _status(g):
                    notes.append(f"{second}: {_status(g)}")
            note = "; ".join(n for n in notes if n)
            out.append(line + (f"  {note}" if note else ""))
    out += _capture_terminal(s)
    out.append("")
    out.append("targets (computed from this run, not asserted):")
    for t in s.targets:
        detail = ", ".join(f"{tool} {c.detail}" for tool, c in t.by_tool.items())
        out.append(f"  [{t.verdict:^12}] {t.key}: {t.text}" + (f": {detail}" if detail else ""))
    for what, why in {**s.missing, **s.server_errors}.items():
        out.append(f"missing: {what}: {why.splitlines()[0] if why else ''}")
    return "\n".join(out)


CAPTURE_HEAD = ["workload", "server/mode", "MB/s", "server CPU s/GB", "capture CPU s/GB"]
CAPTURE_HEAD += ["captured", "received", "dropped", "dropped %"]


def _capture_cells(c: dict[str, Any]) -> list[str]:
    if not c["runs_ok"]:
        failed = "failed: " + "; ".join(e.splitlines()[0] for e in c["failures"])[:60]
        return [c["workload"], c["row"], failed, *([""] * (len(CAPTURE_HEAD) - 3))]
    return [
        c["workload"],
        c["row"],
        num(c["mb_s"]),
        num(c["cpu_s_per_gb"]),
        num(c["capture_cpu_s_per_gb"]),
        num(c["captured"]),
        num(c["received"]),
        num(c["dropped"]),
        pct(c["drop_fraction"]),
    ]


def _capture_terminal(s: Summary) -> list[str]:
    lines = s.capture()
    if not lines:
        return []
    widths = [10, 30, 9, 17, 18, 10, 10, 10, 10]
    out = ["", "== capture: nomapd capture -w /dev/null on nm0 beside the load (wrk)"]
    out.append(
        "".join(
            h.rjust(w) if i > 1 else h.ljust(w)
            for i, (h, w) in enumerate(zip(CAPTURE_HEAD, widths, strict=True))
        )
    )
    for c in lines:
        cells = _capture_cells(c)
        out.append(
            "".join(
                x.rjust(w) if i > 1 else x.ljust(w)
                for i, (x, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()
        )
    return out


# --------------------------------------------------------------------------- markdown


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _method(s: Summary) -> list[str]:
    m = s.meta
    return [
        f"- Every server runs as one process (nginx: 1 worker; hypercorn: `-w 1`; nomapd: "
        f"`--workers 1`) on 127.0.0.1, started fresh for each workload group and stopped "
        f"by the bench; all servers of a group run at once, idle but for the one measured. "
        f"Rows alternate within each repetition (A B C ... A B C ...); {m['repeat']} "
        f"repetition(s) of {m['duration']:g} s per run; figures are medians over them.",
        "- nomapd runs with `--access-log off` (and nginx with `access_log off`): the CPU "
        "figures contain no request logging.",
        f"- Load generators on the same machine ({s.machine['cores']} cores), "
        f"{m['threads']} client thread(s): the client competes with the server for the CPU, "
        "so throughput figures are lower than on separate machines; CPU per GB is the "
        "server's own.",
        "- requests/s and MB/s are the tools' (MB = 10^6 bytes, bytes received including "
        "headers and incomplete responses); latency p50/p99 are wrk's `--latency` "
        "percentiles (wrk starts its clock after the connection is up, so the handshake "
        "workload's latency excludes the handshake); h2load gives mean latency only.",
        "- Server CPU: utime + stime of the server's process tree (/proc/PID/stat) before "
        "and after each run, divided by the GB received (10^9 bytes). Peak RSS: VmHWM of "
        "the tree after resetting it before each run (/proc/PID/clear_refs), summed over "
        "the tree's processes.",
        "- Handshake workload: `Connection: close` on every request, the server closes, the "
        "client reconnects. Both tools resume the TLS session on reconnect when the server "
        "offers it (see the TLS table): resumed TLS 1.3 handshakes still do an ECDHE key "
        "exchange but no certificate signature. wrk runs for the duration; h2load, whose "
        "timed mode hangs when the server closes connections, runs a request count sized "
        "from the rate measured just before.",
        "- nomapd's counters are read from its `/stats` before each run and after its "
        "connections have closed; per GB received.",
        "- Other processes on the machine (other work, idle servers) are not stopped.",
        *(
            [
                "- `--quick`: one short repetition; sweep points 1, 8 and 256 only; h2load "
                "on 1m, 16k and handshake only (its runs need one whole response per "
                "connection, seconds for 100m and sweep-256): figures are indicative."
            ]
            if m["quick"]
            else []
        ),
    ]


def _targets_md(s: Summary) -> list[str]:
    rows = []
    for t in s.targets:
        cells = [f"`{t.key}`", t.text]
        for tool in s.tools:
            c = t.by_tool.get(tool)
            cells.append(f"{c.detail} ({'yes' if c.met else 'no'})" if c else "not measured")
        cells.append(f"**{t.verdict}**")
        rows.append(cells)
    return _md_table(["target", "what", *s.tools, "verdict"], rows)


def _workload_md(s: Summary, w: Workload) -> list[str]:
    label = METRIC_LABEL[w.metric]
    out = [
        f"### `{w.name}`: {w.title}",
        "",
        f"Paths: {', '.join(f'`{p}`' for p in w.paths)}. Ratios are of {label}.",
        "",
    ]
    rows = []
    for row in _rows_in(s, w):
        for tool in s.tools:
            f = find(s.figures, w.name, row.name, tool)
            if f is None:
                continue
            r = s.ratios.get((w.name, row.name, tool))
            rows.append(
                [
                    row.name,
                    tool,
                    num(f.req_s),
                    num(f.mb_s),
                    num(f.p50_ms),
                    num(f.p99_ms),
                    num(f.mean_ms),
                    num(f.cpu_s_per_gb),
                    mib(f.peak_rss),
                    times(r.get("nginx") if r else None),
                    times(r.get("hypercorn") if r else None),
                    _status(f) or "",
                ]
            )
    header = ["server/mode", "tool", "req/s", "MB/s", "p50 ms", "p99 ms", "mean ms"]
    header += ["CPU s/GB", "peak RSS MiB", "x nginx", "x hypercorn", "errors / failures"]
    return [*out, *_md_table(header, rows), ""]


def _cpu_md(s: Summary, tool: str) -> list[str]:
    rows = []
    for row in s.rows:
        cells = [row.name]
        seen = False
        for w in s.workloads:
            f = find(s.figures, w.name, row.name, tool)
            cells.append(num(f.cpu_s_per_gb) if f else DASH)
            seen = seen or f is not None
        if seen:
            rows.append(cells)
    if not rows:
        return []
    return [
        f"## Server CPU seconds per GB ({tool})",
        "",
        *_md_table(["server/mode", *(w.name for w in s.workloads)], rows),
        "",
    ]


def _nomap_md(s: Summary, tool: str) -> list[str]:
    d = find(s.figures, ONE_MIB.name, "nomapd-default", tool)
    n = find(s.figures, ONE_MIB.name, "nomapd-no-nomap", tool)
    if not (d and n and d.cpu_s_per_gb and n.cpu_s_per_gb):
        return []
    saving = 1 - d.cpu_s_per_gb / n.cpu_s_per_gb
    dc, nc = d.counters, n.counters

    def c(x: dict[str, float], k: str) -> str:
        return num(x.get(k))

    verdict = "reproduced" if saving >= 0.05 else "not reproduced" if saving < 0 else "only in part"
    return [
        "## What unmapped mbufs save",
        "",
        f"On 1 MiB over HTTPS ({tool}), the default mode (NIC with IFCAP_NOMAP) spent "
        f"{num(d.cpu_s_per_gb)} CPU s/GB against {num(n.cpu_s_per_gb)} with `--no-nomap`: "
        f"{abs(saving) * 100:.1f}% {'less' if saving >= 0 else 'more'} "
        f'(the seed\'s "5-10% CPU savings": {verdict}).',
        "",
        "Both modes frame and encrypt the same KTLS records "
        f"({c(dc, 'ktls_records')} vs {c(nc, 'ktls_records')} per GB) from the same "
        "unmapped EXT_PGS mbufs built by sendfile "
        f"({c(dc, 'ext_pgs')} vs {c(nc, 'ext_pgs')} per GB). The difference is in "
        "ip_output: a NIC without NOMAP cannot gather physical pages, so every unmapped "
        f"chain is converted before it goes out ({c(nc, 'converted')} chains/GB, against "
        f"{c(dc, 'converted')}), mapping each page through an sf_buf ({c(nc, 'sf_bufs')} "
        f"sf_bufs/GB against {c(dc, 'sf_bufs')}) into a mapped mbuf of its own "
        f"({c(nc, 'mbufs')} mbufs/GB allocated in all, against {c(dc, 'mbufs')}). That "
        "per-page work, done for every TSO burst, is the CPU the default saves; the "
        "encryption, which both pay, dilutes it.",
        "",
    ]


def _capture_md(s: Summary) -> list[str]:
    lines = s.capture()
    if not lines:
        return []
    bpf = [
        [c["workload"], c["row"], *(num(c["bpf_per_gb"].get(k)) for k in CAPTURE_PER_GB)]
        for c in lines
        if c["mode"] != "none" and c["runs_ok"]
    ]
    return [
        "## Packet capture: zero-copy and buffered BPF",
        "",
        "nomapd's default mode with `nomapd capture -i nm0 -w /dev/null -s SNAPLEN --mode "
        "zbuf|buffer` started after the server and before the load, stopped (SIGINT) after "
        f"it; `{CAPTURE_BASELINE}` is the same server with no capture. Server CPU is the "
        "server's seconds per GB served, capture CPU the capture process's (/proc, over the "
        "load, read once the server is idle); captured, received and dropped are the "
        "capture's closing lines (tcpdump's; else its descriptor's `/stats` row), per run; "
        "dropped % is of the packets received.",
        "",
        *_md_table(CAPTURE_HEAD, [_capture_cells(c) for c in lines]),
        "",
        *(
            f"- {c['workload']}:{c['row']}: {note}"
            for c in lines
            for note in c.get("capture_notes", [])
        ),
        "",
        "BPF counters per GB served (`/stats`, see `bench.counters`): "
        + ", ".join(f"{k} (`{v}`)" for k, v in CAPTURE_PER_GB.items())
        + ".",
        "",
        *_md_table(["workload", "server/mode", *CAPTURE_PER_GB], bpf),
        "",
    ]


def _counters_md(s: Summary, tool: str) -> list[str]:
    out: list[str] = []
    keys = [*PER_GB, *LEVELS]
    for w in s.workloads:
        rows = []
        for row in s.rows:
            if row.server != NOMAPD:
                continue
            f = find(s.figures, w.name, row.name, tool)
            if f is None or not f.counters:
                continue
            rows.append([row.name, *(num(f.counters.get(k)) for k in keys)])
        if rows:
            out += [f"### `{w.name}`", "", *_md_table(["mode", *keys], rows), ""]
    if not out:
        return []
    return [
        f"## nomapd counters per GB ({tool})",
        "",
        "Deltas of `/stats` per GB received: mbufs (`mbuf.mbufs_total`), ext_pgs "
        "(`mbuf.ext_pgs_total`), sf_bufs (`sfbuf.total`), converted "
        "(`ip.unmapped_converted`), sw_csum_bytes (`ip.sw_csum_bytes`), ktls_records "
        "(`ktls.records_encrypted`), walked (`tcp.sndptr_walked`); sockbuf_mbufs_peak is "
        "`sockbuf.mbufs_peak` (a level: the most mbufs one socket buffer held since the "
        "group's servers started).",
        "",
        *out,
    ]


def _sweep_md(s: Summary, tool: str) -> list[str]:
    points = sweep_names(s.workloads)
    if len(points) < 2:
        return []
    rows = []
    for row in s.rows:
        cells = [row.name]
        seen = False
        for _, name in points:
            f = find(s.figures, name, row.name, tool)
            cells.append(num(f.mb_s) if f and f.runs_ok else DASH)
            seen = seen or f is not None
        if seen:
            rows.append(cells)
    header = ["server/mode", *(f"{c} conn MB/s" for c, _ in points)]
    return [f"## Concurrency sweep, 1 MiB ({tool})", "", *_md_table(header, rows), ""]


def _tls_md(s: Summary) -> list[str]:
    if not s.tls:
        return []
    rows = []
    for name, t in s.tls.items():
        if "error" in t:
            rows.append([name, DASH, DASH, str(t["error"])])
        else:
            rows.append([name, str(t["protocol"]), str(t["cipher"]), str(t["resumed"])])
    for f in s.figures:
        if f.tool == "h2load" and f.tls.get("protocol") and f.workload == s.workloads[0].name:
            rows.append(
                [f"{f.row} (h2load)", f.tls.get("protocol", ""), f.tls.get("cipher", ""), DASH]
            )
    return [
        "## TLS negotiated",
        "",
        "Python's ssl (OpenSSL's default client order, as wrk) and, where it ran, h2load "
        "(which prefers AES-128). `resumed`: a second connection offering the first's "
        "session was resumed.",
        "",
        *_md_table(["server", "protocol", "cipher", "resumed"], rows),
        "",
    ]


def markdown(s: Summary) -> str:
    m = s.meta
    mach = s.machine
    first, _ = primary_tools(s)
    out = [
        f"# nomapd benchmark, {m['date']}",
        "",
        f"- command: `{m['command']}` ({'quick' if m['quick'] else 'full'} run, "
        f"{m['wall_s']:.0f} s)",
        f"- machine: {mach['cpu_model']}, {mach['cores']} cores, "
        f"{mach['memory_bytes'] / (1 << 30):.1f} GiB, Linux {mach['kernel']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in mach["versions"].items()),
        f"- nomapd extra arguments: `{' '.join(m['nomapd_args']) or 'none'}`; "
        f"--phys-mem {m['phys_mem'] / MIB:.0f} MiB",
        "- nomapd's core: "
        + (
            "; ".join(f"{row} {core}" for row, core in m.get("nomapd_cores", {}).items())
            or "unknown"
        ),
        "",
        "## Method",
        "",
        *_method(s),
        "",
    ]
    problems = {**s.missing, **s.server_errors}
    failed = sorted({f"{f.workload}:{f.row}:{f.tool}" for f in s.figures if not f.runs_ok})
    if problems or failed:
        out += ["## Missing or failed", ""]
        out += [f"- {k}: {v.splitlines()[0] if v else ''}" for k, v in problems.items()]
        if failed:
            out.append(f"- runs with no figures: {', '.join(failed)}")
        out.append("")
    out += ["## Targets", "", *_targets_md(s), ""]
    out += ["## Results per workload", ""]
    for w in s.workloads:
        if _rows_in(s, w):
            out += _workload_md(s, w)
    out += _cpu_md(s, first)
    out += _nomap_md(s, first)
    out += _capture_md(s)
    out += _counters_md(s, first)
    out += _sweep_md(s, first)
    out += _tls_md(s)
    if s.charts:
        out += ["## Charts", ""]
        out += [f"![{c}]({c})" for c in s.charts]
        out.append("")
    if m.get("chart_error"):
        out += ["## Charts", "", f"Not drawn: {m['chart_error']}", ""]
    return "\n".join(out)
