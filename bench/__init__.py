"""The benchmark: nomapd in each of its modes against nginx and hypercorn, side by side.

Theory of operation. `make bench` (or `python -m bench`) starts every server
itself, one process each on 127.0.0.1, on the same files and certificate, and
drives them with the real C load generators wrk and h2load through its
workloads: 1 MiB and 16 KiB files over kept-alive connections, a new TLS
connection per small request, four 100 MiB files (memory), and a concurrency
sweep; and what a packet capture (zero-copy or buffered BPF) costs on 1 MiB.
For every run it records the tool's requests/s, MB/s and latency, the
server's CPU seconds per GB and peak RSS (from /proc), and nomapd's
modeled-kernel counters per GB (from its /stats). It prints a table with the
ratios to nginx and hypercorn and whether its performance targets are met, and
writes `bench/results/<UTC time>/` with results.json, report.md and PNG
charts.

Modules, each named for what it models:

- `rows`: the servers and modes (a row of the table); `workloads`: the
  workloads and their files; `plan`: the order of runs (rows alternated);
- `install`: the setup step (apt-get for wrk, nghttp2-client, nginx; the peers
  venv for hypercorn, Starlette and matplotlib); `machine`: the machine and
  versions; `docroot`: the files; `loopback`: the address, the TLS name and
  free ports; `cert`: the self-signed certificate; `servers`: starting and
  stopping servers;
  `peer_app`: the Starlette app hypercorn serves; `tlsprobe`: what TLS each
  server negotiates;
- `wrk`, `h2load`: command lines and output parsers, into `load.LoadResult`;
  `procfs`: CPU and RSS of a process tree; `counters`: nomapd's counters per GB;
  `capture`: the capture rows' `nomapd capture` beside the server (its CPU,
  packets and drops); `runner`: one run measured; `progress`: the progress line;
- `results`: records and their aggregation; `compare`: ratios; `targets`:
  the performance targets; `summary`: results.json; `report`: the table and
  report.md; `charts`: the PNGs (run in the peers venv);
- `cli`: the command line.

The bench runs from the checkout (it starts `python -m server`, and imports
nothing of `server` or `tools`). This package's `__init__` imports nothing, so that the
peers venv can import `bench.peer_app` and `bench.charts` without the
project's dependencies.
"""
