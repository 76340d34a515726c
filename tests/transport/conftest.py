"""Fixtures of the transport tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.transport.loopback import serve


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The base URL of a loopback :class:`~tests.transport.loopback.Server`."""
    yield from serve()
