"""Every adapter test starts with the built-in adapters registered."""

from __future__ import annotations

import pytest

from cencori_nb.providers import load_builtin


@pytest.fixture(autouse=True)
def _builtins() -> None:
    load_builtin()
