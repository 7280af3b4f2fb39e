"""The error log: one line per event on stderr, with a level, as nginx's error_log.

Theory of operation. Everything the server has to say about itself goes
through the standard `logging` module to stderr, one line each, as

    nomapd: WARNING: connection ended by a server-side error: [Errno 24] ...
    nomapd: ERROR: worker 1: accept returned EMFILE (Too many open files); ...

(a worker of `--workers N` names itself after the level). `--log-level`
picks the least severe level shown: debug, info, warning (the default) or
error; `warn` is accepted for nginx users.

The default is warning, not nginx's "error", because of what each level means
here: nomapd logs everything a client causes (resets, bad records, timeouts)
at debug and its own life (start, stop, signals) at info, so warning and
error hold only the server's own faults (a file descriptor limit, a failed
write of the access log, a worker that died) -- the entries nginx logs at
crit and alert, which its default level shows as well.

`RateLimited` keeps a fault that repeats in a tight loop (accept failing with
EMFILE every 100 ms) to one line per interval, with the count of the lines it
held back.
"""

from __future__ import annotations

import logging
import sys
import time

from server.config import ConfigError

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
DEFAULT_LEVEL = "warning"


def parse_level(text: str) -> str:
    """The level's canonical name, or ConfigError."""
    name = text.strip().lower()
    if name not in LEVELS:
        raise ConfigError(f"--log-level: {text!r} is not one of debug, info, warning, error")
    return "warning" if name == "warn" else name


def setup(level: str, who: str = "") -> None:
    """Send every log record at `level` or above to stderr, one line each.

    `who` ("worker 1") is written after the level, so the lines of several
    processes sharing one stderr can be told apart."""
    prefix = f"{who}: " if who else ""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"nomapd: %(levelname)s: {prefix}%(message)s"))
    logging.basicConfig(level=LEVELS[level], handlers=[handler], force=True)


class RateLimited:
    """At most one line per `interval` seconds for one recurring fault."""

    def __init__(self, logger: logging.Logger, level: int, interval: float = 1.0) -> None:
        self.logger = logger
        self.level = level
        self.interval = interval
        self._last = -float("inf")
        self.suppressed = 0

    def log(self, msg: str, *args: object) -> bool:
        """Log unless a line went out less than `interval` ago; True if logged."""
        now = time.monotonic()
        if now - self._last < self.interval:
            self.suppressed += 1
            return False
        self._last = now
        if self.suppressed:
            msg += f" ({self.suppressed} more since the last report)"
            self.suppressed = 0
        self.logger.log(self.level, msg, *args)
        return True
