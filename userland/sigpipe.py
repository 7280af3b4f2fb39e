"""The reader of a program's stdout went away (`nomapd capture -w - | head`).

A C program dies of SIGPIPE there (tcpdump, netstat -w); Python ignores
SIGPIPE and raises BrokenPipeError instead, and would raise it again when the
interpreter flushes stdout at exit, printing a traceback on stderr. Our
programs end quietly with status 0 instead (so that `set -o pipefail` scripts
around `| head` see success), after `stdout_gone()`.
"""

from __future__ import annotations

import os
import sys


def stdout_gone() -> None:
    """Point stdout at /dev/null: nothing more can reach the reader, not even the
    interpreter's last flush."""
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(fd, sys.stdout.fileno())
    finally:
        os.close(fd)
