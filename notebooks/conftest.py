"""Run the notebooks under nbval without touching the real user home or real providers.

``python -m pytest`` runs them through ``tests/test_notebooks.py`` (one nbval run per
notebook, each with a fresh home and a sandbox it starts). Running nbval directly also works:

    .venv/bin/python -m pytest --nbval-lax --nbval-current-env notebooks/

Before any kernel starts, this file gives the run a temporary ``CENCORI_NB_HOME`` (unless
one is set) and starts an offline sandbox (unless ``CENCORI_NB_SANDBOX`` is set). Kernels
inherit the environment, so the notebooks see both.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_started: list[object] = []
_temp_dirs: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get("CENCORI_NB_HOME"):
        home = tempfile.mkdtemp(prefix="cencori-nb-notebooks-")
        _temp_dirs.append(home)
        os.environ["CENCORI_NB_HOME"] = home
    # Keep the OS keyring out of test runs: the key store falls back to its key file.
    os.environ.setdefault("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
    if not os.environ.get("CENCORI_NB_SANDBOX"):
        from cencori_nb.sandbox import SandboxServer

        server = SandboxServer()
        os.environ["CENCORI_NB_SANDBOX"] = server.start_in_thread()
        _started.append(server)


def pytest_unconfigure(config: pytest.Config) -> None:
    while _started:
        _started.pop().stop()  # type: ignore[attr-defined]
    while _temp_dirs:
        shutil.rmtree(_temp_dirs.pop(), ignore_errors=True)
