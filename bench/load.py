"""What one load-generator run reports, in one shape for wrk and h2load.

Theory of operation. `LoadResult` holds the figures both tools give (responses
completed, seconds, bytes received, requests/s, MB/s), the latency figures
each gives (wrk: percentiles from `--latency`, mean, stdev, max; h2load: min,
max, mean, sd of "time for request"), the error counters each gives under its
own names, and the TLS parameters h2load prints. `errors` are what went wrong
(socket errors, timeouts, responses other than 2xx and 3xx); `counts` are the
tool's other counters, kept for the record (h2load's status classes,
"failed"). Units: MB = 10^6 bytes, GB = 10^9 bytes; both tools print binary
units ("MB" meaning MiB), which `parse_bytes` converts. Latencies are in
milliseconds.

`bytes` is what the client received, headers included, whether or not the
response completed (wrk adds every read to its byte count; h2load's "traffic"
too), so MB/s stays meaningful when a run ends in the middle of 100 MiB
responses and completes none.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

_BINARY = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_TIME_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_bytes(text: str) -> int:
    """'221.30MB' (binary units, as wrk and h2load print them) -> bytes."""
    m = re.fullmatch(r"([\d.]+)\s*([KMGTP]?)B", text.strip())
    if not m:
        raise ValueError(f"not a byte count: {text!r}")
    return round(float(m.group(1)) * _BINARY[m.group(2)])


def parse_ms(text: str) -> float:
    """'47.99ms', '811.00us', '3.15s', '2.00m' -> milliseconds."""
    m = re.fullmatch(r"([\d.]+)\s*(ns|us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) * _TIME_MS[m.group(2)]


@dataclass
class LoadResult:
    tool: str
    requests: int = 0
    seconds: float = 0.0
    bytes: int = 0
    req_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    tls: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def mb_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        """Socket errors, timeouts and responses other than 2xx/3xx, as the tool counted them."""
        return sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["mb_s"] = self.mb_s
        return d


class ParseError(ValueError):
    """The tool's output has no summary (it failed before measuring anything)."""
