"""Run a check without root's privileges, so permission tests never skip.

As root (CI runs as root) the check runs in a forked child that drops to
nobody/nogroup first; the child already has every module loaded, so nothing
depends on the permissions of the checkout. Files the check uses must live in
a directory nobody can traverse: use `world_tmp`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterator

import pytest

NOBODY = 65534


def as_unprivileged(check: Callable[[], None]) -> None:
    if os.geteuid() != 0:
        check()
        return
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            check()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the unprivileged check failed (see stderr)"


@pytest.fixture
def world_tmp() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="nomapd-perm-", dir="/tmp")
    os.chmod(d, 0o755)
    try:
        yield os.path.realpath(d)
    finally:
        for dirpath, dirnames, _ in os.walk(d):
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o700)
        shutil.rmtree(d, ignore_errors=True)
