"""Fixtures shared by the server and integration tests, and the markers by path.

Every test under tests/integration is marked `integration` (it starts a real
server), and the modules in SLOW are marked `slow` (more than about 5 s alone,
measured with --durations), so `make check` can leave both out.
"""

from __future__ import annotations

import pathlib
from typing import Final

import pytest

import mbuf
from tests.integration.conftest import corpus, default_server, state_dir
from tests.noskip import pytest_runtest_makereport
from tests.privdrop import world_tmp

__all__ = ["corpus", "default_server", "pytest_runtest_makereport", "state_dir", "world_tmp"]

TESTS: Final = pathlib.Path(__file__).parent
INTEGRATION: Final = TESTS / "integration"
SLOW: Final = frozenset(
    {
        TESTS / "bench" / "test_smoke.py",  # runs the real bench against a real server
        INTEGRATION / "test_pressure.py",  # 5 MiB files through 4 MiB, several times
        INTEGRATION / "test_browser.py",  # starts chromium, waits on the dashboard's polls
    }
)


# mypyc converts a compiled function's arguments before its first line runs: a
# wrong type raises mypyc's TypeError ("... object expected; got str"), a bool
# passes as an int, a bytearray is refused where the annotation says bytes. The
# tests of the functions' own boundary checks therefore hold for the pure core,
# the reference: on the compiled core they are deselected (counted as such in
# the summary, never skipped), and `make test`'s pure pass runs them.


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if mbuf.CORE != "pure":
        pure_only = [item for item in items if item.get_closest_marker("pure_only")]
        if pure_only:
            config.hook.pytest_deselected(items=pure_only)
            items[:] = [item for item in items if not item.get_closest_marker("pure_only")]
    for item in items:
        path = item.path
        if path.is_relative_to(INTEGRATION):
            item.add_marker(pytest.mark.integration)
        if path in SLOW:
            item.add_marker(pytest.mark.slow)
