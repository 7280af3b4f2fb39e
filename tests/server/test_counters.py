"""server.counters: the server's counter group and its /stats snapshot."""

from __future__ import annotations

import pytest

from server.counters import STATUS_CODES, ServerStat

NAMES = (
    "connections", "connection_errors", "connections_refused", "tls_handshakes",
    "tls_handshake_failures", "protocol_errors", "timeouts", "requests", "body_bytes",
    "responses_aborted",
)  # fmt: skip


def test_snapshot_keys_are_the_server_counters() -> None:
    snap = ServerStat().snapshot()
    expected = {f"server.{n}" for n in NAMES} | {f"server.status_{c}" for c in STATUS_CODES}
    assert set(snap) == expected
    assert list(snap) == sorted(snap)
    assert not any(snap.values())


def test_counts_and_unlisted_status() -> None:
    stats = ServerStat()
    stats.requests += 2
    stats.body_bytes += 10
    stats.count_status(200)
    stats.count_status(200)
    stats.count_status(500)  # not always shown: appears once sent
    snap = stats.snapshot()
    assert snap["server.requests"] == 2
    assert snap["server.body_bytes"] == 10
    assert snap["server.status_200"] == 2
    assert snap["server.status_500"] == 1


def test_snapshot_is_immutable_and_fixed() -> None:
    stats = ServerStat()
    snap = stats.snapshot()
    with pytest.raises(TypeError):
        snap["server.requests"] = 1  # type: ignore[index]
    stats.requests += 1
    assert snap["server.requests"] == 0


def test_slots() -> None:
    with pytest.raises(AttributeError):
        ServerStat().request = 1  # type: ignore[attr-defined]
