"""Shared fixtures: every test runs with a private home and no ambient configuration."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CANARY = "sk-canary-" + "Zq7xW2vR9tL4pK8mN3bY6cH1"  # a fake key planted to detect leaks

_AMBIENT = (
    "CENCORI_NB_HOME",
    "CENCORI_NB_PASSPHRASE",
    "CENCORI_NB_SANDBOX",
    "CENCORI_NB_PROJECT",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "CENCORI_API_KEY",
    "CENCORI_NB_SCRUB_HOMES",
    "CENCORI_NB_LEDGER_URL",
    "CENCORI_NB_MEMBER",
)


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point CENCORI_NB_HOME at a fresh directory; keep the OS keyring out of the way."""
    for name in _AMBIENT:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "cencori-home"
    monkeypatch.setenv("CENCORI_NB_HOME", str(home))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
    from cencori_nb import state

    state.reset()  # every piece of process state, in one place (cencori_nb/state.py)
    yield home
    state.reset()


@pytest.fixture
def state_clock() -> Iterator[Callable[[float], None]]:
    """Stop the clock cencori_nb.state judges file freshness by (the one-second rule);
    return ``advance(seconds)``. Time moves only when the test says so."""
    from cencori_nb import state

    now = [1_000.0]

    def advance(seconds: float) -> None:
        now[0] += seconds

    previous = state.set_clock(lambda: now[0])
    yield advance
    state.set_clock(previous)


# --- signals and child processes: the suite runs the same under any launcher ----------------
#
# A launcher that ignores SIGINT (a background job, nohup, some CI runners) hands SIG_IGN to
# this process, and SIG_IGN survives exec: every child would then ignore Ctrl-C, and
# _thread.interrupt_main() would do nothing. Python handlers, unlike SIG_IGN, are reset to
# the default on exec, so installing Python's own handler here gives every child the default.


@pytest.fixture(scope="session", autouse=True)
def _default_sigint() -> Iterator[None]:
    """Run the session with Python's KeyboardInterrupt handler whatever the launcher set."""
    before = signal.getsignal(signal.SIGINT)
    if before is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if before is signal.SIG_IGN:
        signal.signal(signal.SIGINT, before)


# --- HTTP clients: every one a test (or a test module) opens is closed ------------------------
#
# The official SDKs (openai, anthropic, google-genai, cencori) and module-level helper clients
# keep pooled keep-alive sockets; dropped unclosed, each ends as a ResourceWarning at exit.
# Clients are tracked where they are built (httpx and httpx2, which every SDK and our
# transport use); the ones a test opened are closed after it, the rest at the end of the run.

_opened_clients: list[weakref.ref[Any]] = []


def _track_http_clients() -> None:
    import httpx
    import httpx2

    for cls in (httpx.Client, httpx.AsyncClient, httpx2.Client, httpx2.AsyncClient):
        original = cls.__init__

        def tracking_init(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> None:
            _original(self, *args, **kwargs)
            _opened_clients.append(weakref.ref(self))

        cls.__init__ = tracking_init  # type: ignore[method-assign]


def _close_clients_from(start: int) -> None:
    import asyncio

    refs, _opened_clients[start:] = _opened_clients[start:], []
    for ref in refs:
        client = ref()
        if client is None or client.is_closed:
            continue
        with contextlib.suppress(Exception):
            if hasattr(client, "aclose"):
                # Its pool may belong to a loop that is gone; a fresh loop closes the sockets.
                asyncio.run(client.aclose())
            else:
                client.close()


_track_http_clients()


@pytest.fixture(autouse=True)
def _close_http_clients() -> Iterator[None]:
    start = len(_opened_clients)
    yield
    _close_clients_from(start)


@pytest.fixture(scope="session", autouse=True)
def _close_process_wide_objects() -> Iterator[None]:
    """At the end of the run, close what outlives single tests, so the interpreter's exit
    finds nothing open: the shared HTTP clients, the ledger, and IPython's one
    InteractiveShell (whose atexit hook would otherwise write its history into a temporary
    folder that is gone by then)."""
    yield
    import gc
    import sys

    from cencori_nb import state

    state.reset()
    _close_clients_from(0)  # module-level clients of test files
    shell_mod = sys.modules.get("IPython.core.interactiveshell")
    if shell_mod is not None and shell_mod.InteractiveShell.initialized():
        _close_shell(shell_mod.InteractiveShell.instance())
    gc.collect()


def _close_shell(shell: Any) -> None:
    """Drop IPython's one InteractiveShell: its history is closed and its atexit hook
    unregistered (it would write into a temporary folder that is gone by then)."""
    import atexit

    from IPython.core.interactiveshell import InteractiveShell

    atexit.unregister(shell.atexit_operations)
    history = shell.history_manager
    if history is not None:
        history.enabled = False
        with contextlib.suppress(Exception):
            history.save_thread.stop()
        with contextlib.suppress(Exception):
            history.db.close()
    InteractiveShell.clear_instance()


@pytest.fixture(scope="module")
def ipython(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """IPython's InteractiveShell with cencori_nb loaded, for a test module.

    IPython keeps one shell per process: a module that finds none creates it, with its
    history in a private temporary file (never the user's ``history.sqlite``), and drops it
    at its end; a module that finds one (created elsewhere) uses it as it is.
    """
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    if InteractiveShell.initialized():
        shell = InteractiveShell.instance()
        shell.run_line_magic("load_ext", "cencori_nb")
        yield shell
        return
    tmp = tmp_path_factory.mktemp("ipython")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IPYTHONDIR", str(tmp))
        cfg = Config()
        cfg.HistoryManager.hist_file = str(tmp / "history.sqlite")
        shell = InteractiveShell.instance(config=cfg)
        shell.run_line_magic("load_ext", "cencori_nb")
        yield shell
        shell.run_line_magic("unload_ext", "cencori_nb")
        _close_shell(shell)


@pytest.fixture
def shell(ipython: Any) -> Iterator[Any]:
    """The shared shell, with the magic's configuration and the tests' user variables reset
    after each test."""
    from tests.magic.support import magics_of

    yield ipython
    magics = magics_of(ipython)
    for name in (
        "default_model",
        "default_provider",
        "default_route",
        "default_format",
        "default_system",
        "default_max_tokens",
        "stream",
        "stream_throttle_ms",
    ):
        magics.traits()[name].set(magics, magics.traits()[name].default())
    if magics.sandbox_server is not None:
        magics.sandbox_server.stop()
        magics.sandbox_server = None
    ipython.rl_next_input = None
    for name in ("reply", "topic", "cfg", "table"):
        ipython.user_ns.pop(name, None)


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """For a test that presses Ctrl-C in this process: SIGINT raises KeyboardInterrupt here,
    whatever an earlier test or the launcher installed; the previous handler comes back."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture(autouse=True)
def _reap_children(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[subprocess.Popen]]:
    """Every child a test starts is gone after it: still running → killed (its whole process
    group when it leads one, e.g. a Jupyter server and its kernels); pipes closed."""
    started: list[subprocess.Popen] = []
    original = subprocess.Popen.__init__

    def tracking_init(self: subprocess.Popen, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        started.append(self)

    monkeypatch.setattr(subprocess.Popen, "__init__", tracking_init)
    yield started
    for proc in started:
        if getattr(proc, "outlives_test", False):
            continue  # the session's PostgreSQL server, restarted by a test (pg_cluster.py)
        if proc.poll() is None:
            try:
                if os.getpgid(proc.pid) == proc.pid:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()


@pytest.fixture
def canary() -> str:
    return CANARY


def all_bytes_under(path: Path) -> bytes:
    """Every file's bytes under ``path`` concatenated (for leak searches)."""
    out = b""
    for p in sorted(path.rglob("*")):
        if p.is_file():
            out += p.read_bytes()
    return out


__all__ = ["CANARY", "all_bytes_under", "os"]


# --- the offline sandbox (cencori_nb/sandbox) ------------------------------------------------


@pytest.fixture(scope="session")
def _sandbox_session() -> Iterator[object]:
    """One sandbox server for the whole run, on its own event loop in a daemon thread."""
    from cencori_nb.sandbox import SandboxServer

    server = SandboxServer(seed=0)
    server.start_in_thread()
    yield server
    server.stop()


@pytest.fixture
def sandbox(_sandbox_session: object) -> object:
    """The running session :class:`SandboxServer`, reset (counters, rate windows, fault RNG,
    wallet, latency) before each test. ``sandbox.url`` is its base URL.

    An earlier test's answers still due (its client killed mid-request; the sandbox answers
    ``latency_ms`` later all the same) are given before the reset: counted there, they
    would show up in this test's ``stats`` as answers nobody here asked for."""
    assert _sandbox_session.wait_until_answered(), "an earlier test's request never ended"  # type: ignore[attr-defined]
    _sandbox_session.reset()  # type: ignore[attr-defined]
    return _sandbox_session


@pytest.fixture
def sandbox_env(sandbox: object, monkeypatch: pytest.MonkeyPatch) -> object:
    """Point ``CENCORI_NB_SANDBOX`` at the running sandbox for one test; return the server."""
    monkeypatch.setenv("CENCORI_NB_SANDBOX", sandbox.url)  # type: ignore[attr-defined]
    return sandbox


# --- PostgreSQL (issue 17): one throwaway cluster per run, a fresh database per test --------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """A running PostgreSQL server for the whole run (tests/pg_cluster.py), stopped at the
    end, also when the run fails or is interrupted. Skips when no server binaries are
    installed (``./dev test`` installs Debian's ``postgresql`` package first)."""
    from tests.pg_cluster import Cluster, find_bindir

    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries are not installed (./dev test installs them)")
    cluster = Cluster(bindir)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, empty database on the test cluster; ``CENCORI_NB_LEDGER_URL`` points the
    ledger at it (with a password, over TCP). Dropped after the test."""
    name = pg_cluster.create_database()
    url = pg_cluster.url(name)
    monkeypatch.setenv("CENCORI_NB_LEDGER_URL", url)
    from cencori_nb import state

    state.reset()
    yield url
    state.reset()
    pg_cluster.drop_database(name)
