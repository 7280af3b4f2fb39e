"""h2load (nghttp2-client): the command line for a workload, and its output parsed.

Theory of operation. `h2load --h1` speaks HTTP/1.1 (ALPN "http/1.1" over TLS),
`-c` clients from `-t` threads. It gives no latency percentiles (only min,
max, mean and sd of "time for request"); the bench's percentiles are wrk's.
What the bench works around, as seen with h2load 1.52 (Debian 12):

- Timing-based runs (`-D`) hang after "Stopped all clients" when a client
  is still connecting or reconnecting as the time runs out: with
  `Connection: close`, and with 256 connections to a server whose handshakes
  take longer than the run. So every h2load run is a request count (`-n`),
  sized by `requests_for` to last about the run's duration at the byte rate
  wrk measured just before on the same workload and server (10 MB/s when
  nothing was measured), at least one request per connection; the run's
  figures are h2load's own (requests done over its elapsed time), and every
  run has a time limit in `bench.runner`.
- A status line with an empty reason phrase ("HTTP/1.1 200 ", what h11 sends
  by default, so hypercorn) never reaches h2load's status callback: such
  responses count as "failed" with no status class. `parse` notes it and does
  not count them as errors: the bytes arrived.
- With reconnections, "traffic: ... total" may stay 0 while "headers" and
  "data" are right; the bench then uses headers + data.
- Several URIs (same scheme, host and port) are used in turn by each client.
- Like wrk, h2load resumes TLS sessions when it reconnects.

The summary: "finished in T, R req/s, B/s", "requests: N total, N started,
N done, N succeeded, N failed, N errored, N timeout", "status codes: N 2xx,
N 3xx, N 4xx, N 5xx", "traffic: B (bytes) total, B (bytes) headers ...,
B (bytes) data", "time for request: min max mean sd +/-sd", and the TLS
protocol, cipher and application protocol it negotiated.
"""

from __future__ import annotations

import re

from bench.load import LoadResult, ParseError, parse_ms

FALLBACK_BYTES_PER_S = 10e6


def command(
    base_url: str,
    paths: tuple[str, ...],
    connections: int,
    requests: int,
    threads: int,
    keepalive: bool,
    binary: str = "h2load",
) -> list[str]:
    """`requests` in all (at least one per connection), then h2load stops."""
    argv = [binary, "--h1", f"-t{min(threads, connections)}", f"-c{connections}"]
    argv += ["-n", str(max(connections, requests))]
    if not keepalive:
        argv += ["-H", "Connection: close"]
    return [*argv, *(base_url + p for p in paths)]


def requests_for(
    bytes_per_s: float | None, duration: float, response_bytes: float, connections: int
) -> int:
    """A request count lasting about `duration` at `bytes_per_s` (None: 10 MB/s assumed)."""
    rate = bytes_per_s if bytes_per_s else FALLBACK_BYTES_PER_S
    return max(connections, round(rate * duration / response_bytes))


def _int(pattern: str, text: str) -> int | None:
    m = re.search(pattern, text)
    return int(m.group(1)) if m else None


def parse(text: str) -> LoadResult:
    r = LoadResult("h2load")
    m = re.search(r"^finished in ([\d.]+\w+), ([\d.]+) req/s", text, re.M)
    if not m:
        tail = [ln for ln in text.strip().splitlines() if ln.strip()][-1:]
        raise ParseError(f"h2load printed no summary: {tail[0] if tail else 'nothing'}")
    r.seconds = parse_ms(m.group(1)) / 1e3
    r.req_s = float(m.group(2))
    m = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        text,
        re.M,
    )
    if not m:
        raise ParseError("h2load printed no request counts")
    total, started, done, succeeded, failed, errored, timeout = (int(g) for g in m.groups())
    r.requests = done
    r.counts = {
        "total": total,
        "started": started,
        "done": done,
        "succeeded": succeeded,
        "failed": failed,
    }
    status = {
        k: _int(rf"status codes:.*?(\d+) {k}", text) or 0 for k in ("2xx", "3xx", "4xx", "5xx")
    }
    r.counts.update({f"status_{k}": v for k, v in status.items()})
    r.errors = {
        "errored": errored,
        "timeout": timeout,
        "non_2xx_3xx": status["4xx"] + status["5xx"],
    }
    if done and not any(status.values()):
        r.notes.append(
            f"h2load saw no status code in {done} responses (empty reason phrase, "
            "e.g. 'HTTP/1.1 200 '): it counts them as failed; not counted as errors here"
        )
    m = re.search(
        r"^traffic: \S+ \((\d+)\) total, \S+ \((\d+)\) headers.*?, \S+ \((\d+)\) data", text, re.M
    )
    if m:
        total_b, headers_b, data_b = (int(g) for g in m.groups())
        r.bytes = total_b or headers_b + data_b
    m = re.search(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text, re.M)
    if m and done:
        for key, value in zip(("min", "max", "mean", "stdev"), m.groups(), strict=True):
            r.latency_ms[key] = parse_ms(value)
    for key, label in (
        ("protocol", "TLS Protocol"),
        ("cipher", "Cipher"),
        ("alpn", "Application protocol"),
    ):
        if m := re.search(rf"^{label}: (.+)$", text, re.M):
            r.tls[key] = m.group(1).strip()
    return r
