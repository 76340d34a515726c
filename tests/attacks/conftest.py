"""Fixtures the attack suites share (fixtures live here, helpers in ``support.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.attacks.support import RecordingSandbox


@pytest.fixture(scope="module")
def _server() -> Iterator[RecordingSandbox]:
    """One recording sandbox on loopback per test module (started once: a start costs)."""
    server = RecordingSandbox()
    server.start_in_thread()
    yield server
    server.stop()


@pytest.fixture
def srv(_server: RecordingSandbox) -> RecordingSandbox:
    """The module's recording sandbox with nothing received yet and its counters reset."""
    _server.reset()
    _server.received.clear()
    return _server
