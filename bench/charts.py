"""PNG charts of a results.json, drawn with matplotlib.

Theory of operation. Run by the bench as `python -m bench.charts RESULTS_JSON
OUT_DIR` with the peers venv's python (where matplotlib is installed, see
`bench.install`), so this module imports nothing from the bench or the
project: the JSON is the whole interface. It prints the names of the files it
wrote, one per line.

- throughput.png: per workload, each row's headline figure (MB/s or
  requests/s), one bar per tool, log scale (nginx is an order of magnitude
  ahead; a linear axis would hide the differences between nomapd's modes).
- cpu_per_gb.png: per keep-alive workload, each row's server CPU seconds per
  GB (wrk, else the first tool).
- sweep.png: the concurrency sweep on 1 MiB: MB/s against connections, one
  line per row, log-2 axis, log MB/s.
- mbufs_per_gb.png: nomapd's modes, mbufs, EXT_PGS mbufs and sf_bufs
  allocated per GB, per keep-alive workload.
- capture.png: the capture rows beside their no-capture baseline (results.json's
  `capture`): server and capture CPU seconds per GB per mode and snap length,
  per workload; and the packets dropped, as a percentage of those received,
  per workload (8 and 64 connections).
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LABEL = {"mb_s": "MB/s", "req_s": "requests/s"}
SWEEP = (1, 8, 64, 256)


def _index(doc: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(f["workload"], f["row"], f["tool"]): f for f in doc["figures"] if f["runs_ok"]}


def _primary(doc: dict[str, Any]) -> str:
    tools: list[str] = doc["tools"]
    return "wrk" if "wrk" in tools else tools[0]


def _grid(n: int) -> tuple[Any, list[Any]]:
    cols = 2 if n > 1 else 1
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 0.45 * 10 * rows + 1.5), squeeze=False)
    flat = [ax for line in axes for ax in line]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _save(fig: Any, path: pathlib.Path, title: str | None = None) -> pathlib.Path:
    """Title, lay out, write `path` at 100 dpi and close the figure."""
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def throughput(doc: dict[str, Any], out: pathlib.Path) -> pathlib.Path | None:
    idx = _index(doc)
    rows = [r["name"] for r in doc["rows"]]
    workloads = [w for w in doc["workloads"] if not w["name"].startswith("sweep-")]
    workloads = [
        w for w in workloads if any((w["name"], r, t) in idx for r in rows for t in doc["tools"])
    ]
    if not workloads:
        return None
    fig, axes = _grid(len(workloads))
    height = 0.8 / max(1, len(doc["tools"]))
    for ax, w in zip(axes, workloads, strict=True):
        names = [r for r in rows if any((w["name"], r, t) in idx for t in doc["tools"])]
        for i, tool in enumerate(doc["tools"]):
            values = [idx.get((w["name"], r, tool), {}).get(w["metric"]) or 0 for r in names]
            ys = [y + i * height for y in range(len(names))]
            ax.barh(ys, values, height, label=tool)
            for y, v in zip(ys, values, strict=True):
                if v > 0:
                    ax.text(v, y, f" {v:.3g}", va="center", fontsize=6)
        ax.set_yticks([y + height * (len(doc["tools"]) - 1) / 2 for y in range(len(names))])
        ax.set_yticklabels(names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel(LABEL[w["metric"]] + " (log scale)")
        ax.set_title(f"{w['name']}: {w['title']}", fontsize=9)
        ax.legend(fontsize=8)
    return _save(fig, out / "throughput.png", "Throughput per server and mode")


def cpu_per_gb(doc: dict[str, Any], out: pathlib.Path) -> pathlib.Path | None:
    idx = _index(doc)
    tool = _primary(doc)
    rows = [r["name"] for r in doc["rows"]]
    workloads = [
        w
        for w in doc["workloads"]
        if w["keepalive"]
        and not w["name"].startswith("sweep-")
        and any(idx.get((w["name"], r, tool), {}).get("cpu_s_per_gb") for r in rows)
    ]
    if not workloads:
        return None
    fig, axes = _grid(len(workloads))
    for ax, w in zip(axes, workloads, strict=True):
        names = [r for r in rows if idx.get((w["name"], r, tool), {}).get("cpu_s_per_gb")]
        values = [idx[(w["name"], r, tool)]["cpu_s_per_gb"] for r in names]
        colors = ["tab:blue" if r.startswith("nomapd") else "tab:gray" for r in names]
        ax.barh(range(len(names)), values, color=colors)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.3g}", va="center", fontsize=7)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("server CPU seconds per GB")
        ax.set_title(f"{w['name']}: {w['title']} ({tool})", fontsize=9)
    return _save(fig, out / "cpu_per_gb.png", "Server CPU per GB served (lower is better)")


def sweep(doc: dict[str, Any], out: pathlib.Path) -> pathlib.Path | None:
    idx = _index(doc)
    tool = _primary(doc)
    names = {w["name"] for w in doc["workloads"]}
    points = [(c, "1m" if c == 8 else f"sweep-{c}") for c in SWEEP]
    points = [(c, n) for c, n in points if n in names]
    if len(points) < 2:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    drew = False
    for r in doc["rows"]:
        xs = [c for c, n in points if (n, r["name"], tool) in idx]
        ys = [idx[(n, r["name"], tool)]["mb_s"] for c, n in points if (n, r["name"], tool) in idx]
        if len(xs) >= 2:
            style = "-" if r["server"] == "nomapd" else "--"
            ax.plot(xs, ys, style, marker="o", label=r["name"])
            drew = True
    if not drew:
        plt.close(fig)
        return None
    ax.set_xscale("log", base=2)
    ax.set_xticks([c for c, _ in points])
    ax.set_xticklabels([str(c) for c, _ in points])
    ax.set_yscale("log")
    ax.set_xlabel("connections")
    ax.set_ylabel("MB/s (log scale)")
    ax.set_title(f"Concurrency sweep, 1 MiB, keep-alive ({tool})")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    return _save(fig, out / "sweep.png")


def mbufs_per_gb(doc: dict[str, Any], out: pathlib.Path) -> pathlib.Path | None:
    idx = _index(doc)
    tool = _primary(doc)
    rows = [r["name"] for r in doc["rows"] if r["server"] == "nomapd"]
    keys = (("mbufs", "mbufs"), ("ext_pgs", "EXT_PGS mbufs"), ("sf_bufs", "sf_bufs"))
    workloads = [
        w
        for w in doc["workloads"]
        if w["keepalive"]
        and not w["name"].startswith("sweep-")
        and any(idx.get((w["name"], r, tool), {}).get("counters") for r in rows)
    ]
    if not workloads:
        return None
    fig, axes = _grid(len(workloads))
    height = 0.8 / len(keys)
    for ax, w in zip(axes, workloads, strict=True):
        names = [r for r in rows if idx.get((w["name"], r, tool), {}).get("counters")]
        for i, (key, label) in enumerate(keys):
            values = [idx[(w["name"], r, tool)]["counters"].get(key, 0) for r in names]
            ax.barh([y + i * height for y in range(len(names))], values, height, label=label)
        ax.set_yticks([y + height for y in range(len(names))])
        ax.set_yticklabels(names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("allocated per GB")
        ax.set_title(f"{w['name']}: {w['title']} ({tool})", fontsize=9)
        ax.legend(fontsize=8)
    return _save(fig, out / "mbufs_per_gb.png", "nomapd: mbufs, EXT_PGS mbufs and sf_bufs per GB")


def capture(doc: dict[str, Any], out: pathlib.Path) -> pathlib.Path | None:
    lines = [c for c in doc.get("capture", []) if c["runs_ok"]]
    if not lines:
        return None
    workloads = list(dict.fromkeys(c["workload"] for c in lines))
    fig, axes = plt.subplots(1, len(workloads) + 1, figsize=(6 * (len(workloads) + 1), 4.5))
    for ax, w in zip(axes, workloads, strict=False):
        mine = [c for c in lines if c["workload"] == w]
        names = [c["row"].removeprefix("nomapd-") for c in mine]
        server = [c["cpu_s_per_gb"] or 0 for c in mine]
        cap = [c["capture_cpu_s_per_gb"] or 0 for c in mine]
        ys = list(range(len(mine)))
        ax.barh(ys, server, 0.8, label="server", color="tab:blue")
        ax.barh(ys, cap, 0.8, left=server, label="capture process", color="tab:orange")
        for y, (a, b) in enumerate(zip(server, cap, strict=True)):
            ax.text(a + b, y, f" {a:.3g} + {b:.2g}", va="center", fontsize=7)
        ax.set_yticks(ys)
        ax.set_yticklabels(names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("CPU seconds per GB served")
        ax.set_title(f"{w}: {mine[0]['connections']} connections", fontsize=9)
        ax.set_xlim(0, max(s + c for s, c in zip(server, cap, strict=True)) * 1.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    ax = axes[-1]
    rows = list(dict.fromkeys(c["row"] for c in lines if c["mode"] != "none"))
    height = 0.8 / len(workloads)
    for i, w in enumerate(workloads):
        by_row = {c["row"]: c for c in lines if c["workload"] == w}
        values = [100 * (by_row.get(r, {}).get("drop_fraction") or 0) for r in rows]
        yy = [y + i * height for y in range(len(rows))]
        conns = next(c["connections"] for c in lines if c["workload"] == w)
        ax.barh(yy, values, height, label=f"{conns} connections")
        for yv, v in zip(yy, values, strict=True):
            ax.text(v, yv, f" {v:.2g}%", va="center", fontsize=7)
    ax.set_yticks([y + height * (len(workloads) - 1) / 2 for y in range(len(rows))])
    ax.set_yticklabels([r.removeprefix("nomapd-") for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("packets dropped, % of received")
    ax.set_title("drops (default buffer size)", fontsize=9)
    ax.legend(fontsize=8)
    return _save(
        fig,
        out / "capture.png",
        "Packet capture on nm0: zero-copy (zbuf) and buffered BPF, 1 MiB over HTTPS",
    )


def main(argv: list[str]) -> int:
    doc = json.loads(pathlib.Path(argv[0]).read_text())
    out = pathlib.Path(argv[1])
    for draw in (throughput, cpu_per_gb, sweep, mbufs_per_gb, capture):
        path = draw(doc, out)
        if path is not None:
            print(path.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
