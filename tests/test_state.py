"""cencori_nb.state: one registry of process state, changes of CENCORI_NB_* noticed at the
next call without a reset, and the one-second rule for other processes' changes."""

from __future__ import annotations

import ast
import asyncio
import gc
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import cencori_nb
from cencori_nb import keys, settings, state, transport
from cencori_nb.errors import (
    AuthenticationError,
    ConfigurationError,
    ProviderNotConfiguredError,
    ProviderTimeoutError,
    UnsafeHomeError,
)
from cencori_nb.keystore.secret import Secret
from cencori_nb.ledger import Ledger, default_ledger
from cencori_nb.sandbox.server import SandboxServer
from cencori_nb.transport import pool

KEY_A = "sk-test-state-home-a-" + "A" * 20 + "a1a1"
KEY_B = "sk-test-state-home-b-" + "B" * 20 + "b2b2"
KEY_NEW = "sk-test-state-another-" + "N" * 20 + "n3n3"
KEY_REVOKED = "sk-test-state-revoked-" + "R" * 20 + "r4r4"
PACKAGE = Path(cencori_nb.__file__).parent


def _hint(key: str) -> str:
    return Secret(key).hint


# --------------------------------------------------------------------------- the registry


def test_a_value_is_built_once_and_closed_and_rebuilt_when_its_variable_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slot's value is built at the first get, reused, and at the first get after its
    variable changed the old one is closed and a new one built; no reset call."""
    reg = state.Registry()
    built: list[str | None] = []
    closed: list[str | None] = []

    def open_() -> str | None:
        built.append(os.environ.get("CENCORI_NB_HOME"))
        return built[-1]

    slot = reg.register("thing", open=open_, close=closed.append)
    monkeypatch.setenv("CENCORI_NB_HOME", "/one")
    assert slot.get() == "/one" and slot.get() == "/one"
    assert built == ["/one"] and closed == []
    monkeypatch.setenv("CENCORI_NB_HOME", "/two")
    assert slot.get() == "/two"
    assert built == ["/one", "/two"] and closed == ["/one"]
    monkeypatch.delenv("CENCORI_NB_HOME")
    assert slot.get() is None and closed == ["/one", "/two"]


def test_only_the_state_that_depends_on_a_variable_is_reset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A change of CENCORI_NB_PROJECT resets what depends on it (noticed by any check),
    not what depends only on the home, nor state that depends on no variable."""
    reg = state.Registry()
    dropped: list[str] = []
    reg.on_reset("by-home", lambda: dropped.append("by-home"))
    reg.on_reset("by-project", lambda: dropped.append("by-project"), env="CENCORI_NB_PROJECT")
    reg.on_reset("pure", lambda: dropped.append("pure"), env=())
    reg.check()
    assert dropped == []
    monkeypatch.setenv("CENCORI_NB_PROJECT", "other")
    reg.check()
    assert dropped == ["by-project"]
    reg.check()
    assert dropped == ["by-project"]  # once per change
    reg.reset()
    assert sorted(dropped[1:]) == ["by-home", "by-project", "pure"]


def test_a_change_made_before_a_new_variable_is_watched_is_still_noticed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CENCORI_NB_SANDBOX changes, then a module registers state on a variable nobody
    watched before (a lazy import on the first map), then the next check: what depends on
    CENCORI_NB_SANDBOX is reset. Registering took the new variable's value as its baseline
    and used to re-read the watched ones too, so the change was taken in unseen."""
    monkeypatch.delenv("CENCORI_NB_SANDBOX", raising=False)
    monkeypatch.delenv("CENCORI_NB_TIMEOUT", raising=False)
    reg = state.Registry()
    dropped: list[str] = []
    reg.on_reset("by-sandbox", lambda: dropped.append("by-sandbox"), env="CENCORI_NB_SANDBOX")
    reg.check()
    monkeypatch.setenv("CENCORI_NB_SANDBOX", "http://127.0.0.1:9")
    reg.on_reset("by-timeout", lambda: dropped.append("by-timeout"), env="CENCORI_NB_TIMEOUT")
    reg.check()
    assert dropped == ["by-sandbox"]
    monkeypatch.setenv("CENCORI_NB_TIMEOUT", "5")  # the new variable's own changes count
    reg.check()
    assert dropped == ["by-sandbox", "by-timeout"]


_SANDBOX_AFTER_IMPORT = """
import os, sys
from cencori_nb.sandbox import SandboxServer
url = SandboxServer(latency_ms=0).start_in_thread()
from cencori_nb import keys
keys.set("openai", "sk-proj-" + "S" * 40)   # reads the settings: no sandbox yet
os.environ["CENCORI_NB_SANDBOX"] = url      # what `%cencori sandbox start` does
import cencori_nb                           # registers more state before any check
route = cencori_nb.explain_route(model="gpt-4o-mini").base_url
print(route.startswith(url), cencori_nb.chat("hi", model="gpt-4o-mini", cache=False).text[:15])
"""


def test_a_sandbox_started_mid_session_gets_the_next_request(tmp_path: Path) -> None:
    """End to end in a fresh interpreter: the request goes to the sandbox set in
    os.environ after the settings were first read, not to api.openai.com (no network here:
    it would fail; with a real key and a network it would have been a paid request)."""
    env = {
        **os.environ,
        "CENCORI_NB_HOME": str(tmp_path / "home"),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
        "PYTHONPATH": str(Path(cencori_nb.__file__).parents[1]),
    }
    env.pop("CENCORI_NB_SANDBOX", None)
    out = subprocess.run(
        [sys.executable, "-c", _SANDBOX_AFTER_IMPORT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True [sandbox reply", out.stdout


def test_reset_by_name_resets_that_entry_and_those_under_it() -> None:
    """reset("keystore") is the store and its data keys, not the ledger; an unknown name
    is refused rather than silently resetting nothing."""
    reg = state.Registry()
    dropped: list[str] = []
    for name in ("keystore", "keystore.data_keys", "keystores", "ledger"):
        reg.on_reset(name, lambda name=name: dropped.append(name))
    reg.reset("keystore")
    assert sorted(dropped) == ["keystore", "keystore.data_keys"]
    with pytest.raises(ValueError, match="'ledgr'"):
        reg.reset("ledgr")


def test_closing_happens_in_reverse_order_and_a_failing_close_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What was registered later is closed first; one close that raises is logged and
    the rest are still closed."""
    reg = state.Registry()
    closed: list[str] = []

    def broken(_value: object) -> None:
        raise OSError("disk gone")

    first = reg.register("first", open=lambda: "first", close=closed.append)
    middle = reg.register("middle", open=lambda: "middle", close=broken)
    last = reg.register("last", open=lambda: "last", close=closed.append)
    for slot in (first, middle, last):
        slot.get()
    with caplog.at_level(logging.WARNING, logger="cencori_nb.state"):
        reg.reset()
    assert closed == ["last", "first"]
    assert "resetting middle failed" in caplog.text
    assert (first.peek(), middle.peek(), last.peek()) == (None, None, None)


def test_an_entry_registered_after_another_can_ask_to_be_reset_after_it() -> None:
    """``after=``: the response cache is registered after the ledger, yet reset after it,
    because closing the ledger commits queued rows whose callbacks fill the cache."""
    reg = state.Registry()
    events: list[str] = []
    ledger = reg.register("ledger", open=lambda: "ledger", close=lambda _v: events.append("ledger"))
    reg.on_reset("cache", lambda: events.append("cache"), after=("ledger",))
    reg.on_reset("later", lambda: events.append("later"))
    ledger.get()
    reg.reset()
    assert events == ["later", "ledger", "cache"]
    events.clear()
    reg.reset("cache")  # alone: nothing to wait for
    assert events == ["cache"]


def test_the_package_flushes_the_ledger_before_it_closes_the_response_cache(
    sandbox_env: Any,
) -> None:
    """A row queued in the ledger whose commit writes the cache, then a reset: the row is
    in the ledger, the answer in the cache, and no "closed database" warning."""
    import warnings

    from cencori_nb import cache, ledger

    order = [e.name for e in state._reset_order(state._registry.entries)]
    assert order.index("ledger") < order.index("cache")
    keys.set("openai", "sk-test-order-0000000000Ab12")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cencori_nb.chat("state order", model="gpt-4o-mini", temperature=0)
        state.reset()
        gc.collect()
    rows = ledger.default_ledger().rows()
    assert [r.status for r in rows] == ["ok"]
    again = cencori_nb.chat("state order", model="gpt-4o-mini", temperature=0)
    assert again.cached and cache.stats()["hits"] >= 1


def test_every_piece_of_package_state_is_registered() -> None:
    """The modules that keep process state register it (so the fixtures' one reset covers
    them all); the ledger is closed (its queued rows committed) before the response cache
    those commits write, whichever module was imported, so registered, first."""
    import cencori_nb.client  # noqa: F401
    import cencori_nb.jupyter.scrubber  # noqa: F401
    import cencori_nb.keystore.store  # noqa: F401

    names = state.registered()
    for name in (
        "keystore",
        "keystore.data_keys",
        "settings",
        "router.memo",
        "ledger",
        "wallet",
        "accounting.balance_hint",
        "accounting.team_budgets",
        "client.clean_names",
        "cache",
        "transport.clients",
        "transport.injected",
        "transport.clock",
        "redact.secrets",
        "pacing.pacers",
        "pacing.sandbox_rpm",
        "pricing",
        "scrubber",
    ):
        assert name in names, name
    # the reset order, not the registration order: that follows import order (a test
    # importing the cache alone first registers it before the ledger), and after= orders
    # the reset whichever came first
    order = [e.name for e in state._reset_order(state._registry.entries)]
    assert order.index("ledger") < order.index("cache")


# --------------------------------------------------------------------------- file freshness


def test_a_file_is_looked_at_at_most_once_a_second_and_at_once_after_recheck(
    tmp_path: Path, state_clock: Callable[[float], None]
) -> None:
    """The watch's stat follows the injected clock: a change is seen once a full second
    has passed, or at once after recheck(); note() records this process's own view."""
    path = tmp_path / "f.json"
    path.write_text("one")
    watch = state.watch(path)
    assert state.watch(str(path)) is watch  # one per path in the process
    first = watch.signature()
    assert first is not None
    os.replace(_write(tmp_path / "g", "two!"), path)  # another writer: a new inode
    state_clock(0.999)
    assert watch.signature() == first
    state_clock(0.001)
    second = watch.signature()
    assert second not in (None, first)
    path.unlink()
    assert watch.signature() == second
    state.recheck()
    assert watch.signature() is None
    watch.note(first)
    assert watch.signature() == first


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- the environment


def _use_home(
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    sandbox: SandboxServer,
    key: str,
    project: str = "default",
) -> None:
    """A home whose OpenAI base URL is the sandbox's OpenAI door on loopback (so the stored
    key itself is sent, and the sandbox shows its hint) with ``key`` in ``project``."""
    monkeypatch.setenv("CENCORI_NB_HOME", str(home))
    settings.update_settings(base_urls={"openai": sandbox.url + "/openai/v1"}, project=project)
    keys.set("openai", key, project=project)


def _ledger_rows(path: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT status, project, credential_source FROM requests").fetchall()
    finally:
        conn.close()


def test_changing_the_home_between_two_chats_switches_key_ledger_cache_and_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer
) -> None:
    """In one running process, CENCORI_NB_HOME moves between two identical chat calls
    with no reset call: the second sends the new home's key, is recorded in the new home's
    ledger (not the old), follows the new home's settings (its project) and does not hit
    the old home's cache."""
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    _use_home(monkeypatch, home_a, sandbox, KEY_A)
    _use_home(monkeypatch, home_b, sandbox, KEY_B, project="beta")
    monkeypatch.setenv("CENCORI_NB_HOME", str(home_a))

    first = cencori_nb.chat("Which home am I in?", model="gpt-4o-mini")
    assert sandbox.stats["recent"][-1]["headers"]["authorization"] == f"Bearer {_hint(KEY_A)}"
    assert first.project == "default"

    monkeypatch.setenv("CENCORI_NB_HOME", str(home_b))
    second = cencori_nb.chat("Which home am I in?", model="gpt-4o-mini")
    assert not second.cached  # home a's cache is not home b's
    assert sandbox.stats["requests"] == 2
    assert sandbox.stats["recent"][-1]["headers"]["authorization"] == f"Bearer {_hint(KEY_B)}"
    assert second.project == "beta"  # home b's config.json

    led = default_ledger()
    assert led.path == home_b / "ledger.sqlite"
    led.flush()
    assert _ledger_rows(home_a / "ledger.sqlite") == [("ok", "default", "keystore:byok:openai")]
    assert _ledger_rows(home_b / "ledger.sqlite") == [("ok", "beta", "keystore:byok:openai")]


def test_changing_the_project_variable_between_two_chats_takes_effect_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer
) -> None:
    """CENCORI_NB_PROJECT set between two calls: the second sends that project's key and
    its ledger row names that project."""
    home = tmp_path / "h"
    _use_home(monkeypatch, home, sandbox, KEY_A)
    keys.set("openai", KEY_B, project="second")
    cencori_nb.chat("Project one", model="gpt-4o-mini", cache=False)
    assert sandbox.stats["recent"][-1]["key"] == _hint(KEY_A)
    monkeypatch.setenv("CENCORI_NB_PROJECT", "second")
    c = cencori_nb.chat("Project two", model="gpt-4o-mini", cache=False)
    assert sandbox.stats["recent"][-1]["key"] == _hint(KEY_B)
    assert c.project == "second"
    default_ledger().flush()
    assert [r[1] for r in _ledger_rows(home / "ledger.sqlite")] == ["default", "second"]


def test_changing_the_timeout_variable_rebuilds_the_http_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer
) -> None:
    """CENCORI_NB_TIMEOUT set in a running process: the next call uses a client built with
    it (the old one is closed), so a sandbox slower than the new timeout times out."""
    _use_home(monkeypatch, tmp_path / "h", sandbox, KEY_A)
    sandbox.latency_ms = 1500  # type: ignore[attr-defined]
    cencori_nb.chat("Slow but fine", model="gpt-4o-mini", cache=False, retries=0)
    before = transport.get_client()
    assert before.timeout.read == pool.READ_TIMEOUT
    monkeypatch.setenv("CENCORI_NB_TIMEOUT", "0.2")
    with pytest.raises(ProviderTimeoutError):
        cencori_nb.chat("Too slow now", model="gpt-4o-mini", cache=False, retries=0)
    after = transport.get_client()
    assert after is not before and before.is_closed
    assert after.timeout.read == 0.2


def test_moving_the_home_onto_a_symlink_mid_session_is_refused_at_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer
) -> None:
    """A running session whose CENCORI_NB_HOME is pointed at a planted symlink: the next
    call is refused (the old home's open store is not used for the new value), nothing is
    sent and nothing is written where the link points; moving back works again."""
    home = tmp_path / "h"
    _use_home(monkeypatch, home, sandbox, KEY_A)
    cencori_nb.chat("Fine", model="gpt-4o-mini", cache=False)
    elsewhere = tmp_path / "synced"
    elsewhere.mkdir()
    link = tmp_path / "home-link"
    link.symlink_to(elsewhere)
    monkeypatch.setenv("CENCORI_NB_HOME", str(link))
    with pytest.raises(UnsafeHomeError, match="is a symlink"):
        cencori_nb.chat("Through the link", model="gpt-4o-mini", cache=False)
    assert list(elsewhere.iterdir()) == []
    assert sandbox.stats["requests"] == 1
    monkeypatch.setenv("CENCORI_NB_HOME", str(home))
    cencori_nb.chat("Back home", model="gpt-4o-mini", cache=False)
    assert sandbox.stats["recent"][-1]["key"] == _hint(KEY_A)
    default_ledger().flush()
    assert len(_ledger_rows(home / "ledger.sqlite")) == 2


def test_a_bad_timeout_set_mid_session_is_refused_and_unsetting_it_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer
) -> None:
    """CENCORI_NB_TIMEOUT set to nonsense in a running kernel: the next call raises a
    ConfigurationError naming the variable (no traceback from deep inside httpx2); fixing
    the variable is enough for the call after."""
    _use_home(monkeypatch, tmp_path / "h", sandbox, KEY_A)
    cencori_nb.chat("Fine", model="gpt-4o-mini", cache=False)
    for bad in ("soon", "-1", "0", "1e9"):
        monkeypatch.setenv("CENCORI_NB_TIMEOUT", bad)
        with pytest.raises(ConfigurationError, match="CENCORI_NB_TIMEOUT"):
            cencori_nb.chat("Refused", model="gpt-4o-mini", cache=False)
    monkeypatch.setenv("CENCORI_NB_TIMEOUT", "30")
    cencori_nb.chat("Fixed", model="gpt-4o-mini", cache=False)
    assert transport.get_client().timeout.read == 30.0
    assert sandbox.stats["requests"] == 2


# --------------------------------------------------------------------------- another process

_KEYS_CHILD = """
import sys
import threading
from cencori_nb import keys
action, provider = sys.argv[1], sys.argv[2]
if action == "set":
    keys.set(provider, sys.argv[3])
else:
    keys.enable(provider)
"""


def _another_process(*args: str) -> None:
    """Change the key store from a real second process (same home, same environment)."""
    proc = subprocess.run(
        [sys.executable, "-c", _KEYS_CHILD, *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


def test_another_process_replacing_a_key_is_noticed_once_a_second_has_passed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sandbox: SandboxServer,
    state_clock: Callable[[float], None],
) -> None:
    """The one-second rule: another kernel's `keys set` may be noticed up to a second
    late (no stat per request), and is noticed once the clock has passed one second."""
    _use_home(monkeypatch, tmp_path / "h", sandbox, KEY_A)
    cencori_nb.chat("Before", model="gpt-4o-mini", cache=False)
    _another_process("set", "openai", KEY_NEW)
    cencori_nb.chat("Within the second", model="gpt-4o-mini", cache=False)
    assert sandbox.stats["recent"][-1]["key"] == _hint(KEY_A)
    state_clock(0.5)
    cencori_nb.chat("Still within it", model="gpt-4o-mini", cache=False)
    assert sandbox.stats["recent"][-1]["key"] == _hint(KEY_A)
    state_clock(0.5)
    cencori_nb.chat("A second later", model="gpt-4o-mini", cache=False)
    assert sandbox.stats["recent"][-1]["key"] == _hint(KEY_NEW)


def test_after_a_401_the_next_call_reads_the_key_store_afresh(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sandbox: SandboxServer,
    state_clock: Callable[[float], None],
) -> None:
    """A 401, then another process sets a good key, then a retry within the same second
    (the clock does not move): the retry sends the new key."""
    _use_home(monkeypatch, tmp_path / "h", sandbox, KEY_REVOKED)
    with pytest.raises(AuthenticationError):
        cencori_nb.chat("Rejected", model="gpt-4o-mini", cache=False)
    assert sandbox.stats["recent"][-1]["key"] == _hint(KEY_REVOKED)
    _another_process("set", "openai", KEY_NEW)
    c = cencori_nb.chat("Retried", model="gpt-4o-mini", cache=False)
    assert sandbox.stats["recent"][-1]["key"] == _hint(KEY_NEW)
    assert c.route == "byok"


def test_before_not_configured_is_reported_the_key_store_is_read_afresh(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sandbox: SandboxServer,
    state_clock: Callable[[float], None],
) -> None:
    """A disabled key is "not configured"; another process enables it; a call within the
    same second (the clock does not move) finds it rather than reporting the stale view."""
    _use_home(monkeypatch, tmp_path / "h", sandbox, KEY_A)
    keys.disable("openai")
    with pytest.raises(ProviderNotConfiguredError, match="disabled"):
        cencori_nb.chat("Not yet", model="gpt-4o-mini", cache=False)
    _another_process("enable", "openai")
    c = cencori_nb.chat("Now", model="gpt-4o-mini", cache=False)
    assert sandbox.stats["recent"][-1]["key"] == _hint(KEY_A)
    assert c.route == "byok"


def test_settings_written_by_this_process_are_seen_at_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sandbox: SandboxServer,
    state_clock: Callable[[float], None],
) -> None:
    """The one-second rule is for other processes: this process's own writes (a key, a
    setting) count at the next call, with the clock standing still."""
    _use_home(monkeypatch, tmp_path / "h", sandbox, KEY_A)
    cencori_nb.chat("One", model="gpt-4o-mini", cache=False)
    keys.set("openai", KEY_B)
    cencori_nb.chat("Two", model="gpt-4o-mini", cache=False)
    assert sandbox.stats["recent"][-1]["key"] == _hint(KEY_B)
    keys.set("openai", KEY_NEW, project="third")
    settings.update_settings(project="third")
    c = cencori_nb.chat("Three", model="gpt-4o-mini", cache=False)
    assert sandbox.stats["recent"][-1]["key"] == _hint(KEY_NEW) and c.project == "third"


# --------------------------------------------------------------------------- sys.modules


def _reaches_through_sys_modules(source: str) -> list[int]:
    """Lines where ``sys.modules`` is used for anything but asking whether a module is
    loaded (``"x" in sys.modules``), getting a module that is not ours, or a module's
    own object (``sys.modules[__name__]``)."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    bad = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Attribute)
            and node.attr == "modules"
            and isinstance(node.value, ast.Name)
            and node.value.id == "sys"
        ):
            continue
        parent = parents.get(node)
        if (
            isinstance(parent, ast.Subscript)
            and isinstance(parent.slice, ast.Name)
            and parent.slice.id == "__name__"
        ):
            continue  # the module's own object (e.g. to make the module callable)
        if isinstance(parent, ast.Compare) and all(
            isinstance(op, ast.In | ast.NotIn) for op in parent.ops
        ):
            continue  # a membership test reads no state
        call = parents.get(parent) if isinstance(parent, ast.Attribute) else None
        if (
            isinstance(parent, ast.Attribute)
            and parent.attr == "get"
            and isinstance(call, ast.Call)
            and call.args
            and isinstance(call.args[0], ast.Constant)
            and isinstance(call.args[0].value, str)
            and not call.args[0].value.startswith("cencori_nb")
        ):
            continue  # another package's module (IPython), by its literal name
        bad.append(node.lineno)
    return bad


def test_no_module_reaches_another_modules_state_through_sys_modules() -> None:
    """State is reset through cencori_nb.state; no module of the package looks up one of
    its own modules in sys.modules to reach its state."""
    found = {
        str(path.relative_to(PACKAGE)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := _reaches_through_sys_modules(path.read_text(encoding="utf-8")))
    }
    assert found == {}


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ('import sys\nw = sys.modules.get("cencori_nb.wallet")\n', True),
        ('import sys\nsys.modules.get(f"{__name__}.store")._reset_cache()\n', True),
        ('import sys\nsys.modules["cencori_nb.ledger"]._default = None\n', True),
        ("import sys\nm = sys.modules\n", True),
        ('import sys\nif "cencori_nb.batch" in sys.modules:\n    pass\n', False),
        ('import sys\nipython = sys.modules.get("IPython")\n', False),
        ("import sys\nsys.modules[__name__].__class__ = type\n", False),
    ],
)
def test_the_sys_modules_guard_catches_reaches(source: str, flagged: bool) -> None:
    """The guard above is not vacuous: each way of reaching a module's state is caught."""
    assert bool(_reaches_through_sys_modules(source)) is flagged


# --------------------------------------------------------------------------- in flight


def _all_rows(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT client_id, status FROM requests").fetchall()
    finally:
        conn.close()


def _journals(home: Path) -> list[Path]:
    return sorted((home / "ledger-inflight").glob("*.jsonl"))


def _assert_settled_in_a_only(home_a: Path, home_b: Path, status: str) -> None:
    """One row, in A's ledger; none in B's; A's journal resolved (a later start of A
    records nothing more: the request is not also counted as interrupted)."""
    default_ledger().flush()
    state.reset("ledger")  # closes B's ledger (and A's, if still open): all flushed
    rows_a = _all_rows(home_a / "ledger.sqlite")
    assert [s for _, s in rows_a] == [status]
    if (home_b / "ledger.sqlite").exists():
        assert _all_rows(home_b / "ledger.sqlite") == []
    assert _journals(home_a) == []
    later = Ledger(home_a / "ledger.sqlite")  # what the next start of A would reclaim
    try:
        assert later.count() == 1
    finally:
        later.close()
    assert _all_rows(home_a / "ledger.sqlite") == rows_a


@pytest.mark.parametrize("a_closed", [True, False], ids=["a-closed", "a-still-open"])
def test_a_stream_in_flight_when_the_home_changes_settles_in_the_home_it_began_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer, a_closed: bool
) -> None:
    """A stream started in home A, CENCORI_NB_HOME switched to B, then read to its end:
    its row is in A's ledger (where its start was journaled), none in B's, and A's
    journal is resolved, whether A's ledger was already closed by a call in B (the row is
    written at once into the closed ledger) or not yet."""
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    _use_home(monkeypatch, home_b, sandbox, KEY_B)
    _use_home(monkeypatch, home_a, sandbox, KEY_A)
    s = cencori_nb.stream("Tell me about two homes", model="gpt-4o-mini", cache=False)
    assert len(_journals(home_a)) == 1  # its start is journaled in A
    monkeypatch.setenv("CENCORI_NB_HOME", str(home_b))
    if a_closed:
        assert default_ledger().path == home_b / "ledger.sqlite"  # A's ledger is closed now
        assert len(_journals(home_a)) == 1  # kept (and locked) while the stream is open
    text = "".join(s)
    assert text and s.completion is not None and s.completion.project == "default"
    _assert_settled_in_a_only(home_a, home_b, "ok")


@pytest.mark.parametrize("ending", ["answered", "cut", "failed"])
def test_a_chat_in_flight_in_another_thread_when_the_home_changes_settles_in_its_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer, ending: str
) -> None:
    """A chat in another thread is sent in home A; while it waits for the answer the main
    thread moves CENCORI_NB_HOME to B and uses B's ledger (closing A's); the answer (or the
    failure, or an interrupt) is recorded once, in A's ledger, never in B's."""
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    _use_home(monkeypatch, home_b, sandbox, KEY_B)
    _use_home(monkeypatch, home_a, sandbox, KEY_A)
    sent, go = threading.Event(), threading.Event()
    send = transport.send

    def gated_send(*args: Any, **kwargs: Any) -> Any:
        response = send(*args, **kwargs)  # the request is sent and answered
        sent.set()
        assert go.wait(30)
        if ending == "cut":
            raise KeyboardInterrupt  # as if Ctrl-C arrived before the answer was read
        if ending == "failed":
            raise ProviderTimeoutError("The provider did not answer in time.", provider="openai")
        return response

    monkeypatch.setattr(transport, "send", gated_send)
    outcome: list[BaseException | str] = []

    def run() -> None:
        try:
            outcome.append(cencori_nb.chat("Hello from home A", model="gpt-4o-mini").text)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert sent.wait(30)
    monkeypatch.setenv("CENCORI_NB_HOME", str(home_b))
    assert default_ledger().path == home_b / "ledger.sqlite"  # A's ledger is closed now
    go.set()
    worker.join(30)
    assert not worker.is_alive()
    if ending == "answered":
        assert isinstance(outcome[0], str) and outcome[0]
    elif ending == "cut":
        assert isinstance(outcome[0], KeyboardInterrupt)
    else:
        assert isinstance(outcome[0], ProviderTimeoutError)
    status = {"answered": "ok", "cut": "interrupted", "failed": "error"}[ending]
    _assert_settled_in_a_only(home_a, home_b, status)


def test_an_answer_paid_in_home_a_is_not_cached_in_home_b(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer
) -> None:
    """A stream begun in home A and read to its end after CENCORI_NB_HOME moved to B is
    paid (recorded) in A; its answer must not go into B's cache either, else the same
    prompt in B is a hit whose paying request B's ledger lacks, and B records (and
    debits) that request a second time."""
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    _use_home(monkeypatch, home_b, sandbox, KEY_B)
    _use_home(monkeypatch, home_a, sandbox, KEY_A)
    s = cencori_nb.stream("Which home paid for me?", model="gpt-4o-mini")
    monkeypatch.setenv("CENCORI_NB_HOME", str(home_b))
    assert "".join(s) and s.completion is not None
    paid_in_a = s.completion.client_id
    default_ledger().flush()  # an answer to cache would be stored by now
    cencori_nb.chat("Which home paid for me?", model="gpt-4o-mini")  # in B
    default_ledger().flush()
    state.reset("ledger")
    assert paid_in_a in [c for c, _ in _all_rows(home_a / "ledger.sqlite")]
    assert paid_in_a not in [c for c, _ in _all_rows(home_b / "ledger.sqlite")]


def test_a_row_for_a_closed_ledger_that_cannot_be_written_goes_to_its_spill_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer
) -> None:
    """Fault: the home a stream began in cannot be written when the stream ends (its
    ledger closed, the file replaced by garbage): the row is kept in that home's spill
    file, not lost and not written to the new home's ledger."""
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    _use_home(monkeypatch, home_b, sandbox, KEY_B)
    _use_home(monkeypatch, home_a, sandbox, KEY_A)
    s = cencori_nb.stream("Tell me about a broken home", model="gpt-4o-mini", cache=False)
    monkeypatch.setenv("CENCORI_NB_HOME", str(home_b))
    default_ledger()  # closes A's ledger
    (home_a / "ledger.sqlite").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (home_a / f"ledger.sqlite{suffix}").unlink(missing_ok=True)
    assert "".join(s)
    spill = (home_a / "ledger-spill.jsonl").read_text()
    assert s.completion is not None and s.completion.client_id in spill
    default_ledger().flush()
    assert _all_rows(home_b / "ledger.sqlite") == []


@pytest.mark.parametrize("ending", ["read", "stopped"])
def test_an_async_stream_across_a_home_change_settles_in_the_home_it_began_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer, ending: str
) -> None:
    """astream: the first delta read in home A, the home moved to B (A's ledger closed),
    then read to the end (``ok``) or stopped early (``interrupted``): one row, in A."""
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    _use_home(monkeypatch, home_b, sandbox, KEY_B)
    _use_home(monkeypatch, home_a, sandbox, KEY_A)

    async def run() -> None:
        async with cencori_nb.astream(
            "Tell me about two homes, slowly", model="gpt-4o-mini", cache=False
        ) as s:
            assert await s.__anext__()  # sent and answering, journaled in A
            monkeypatch.setenv("CENCORI_NB_HOME", str(home_b))
            assert default_ledger().path == home_b / "ledger.sqlite"
            if ending == "read":
                async for _ in s:
                    pass
                assert s.completion is not None and s.completion.project == "default"

    asyncio.run(run())
    _assert_settled_in_a_only(home_a, home_b, "ok" if ending == "read" else "interrupted")


# --------------------------------------------------------------------------- state.env


def test_env_reads_what_os_environ_holds_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """state.env, the package's fast read of a variable, answers as os.environ.get after
    every kind of change (monkeypatch, os.environ, os.environb, a value that is not UTF-8)."""
    name = "CENCORI_NB_TEST_ENV_READ"
    monkeypatch.delenv(name, raising=False)
    assert state.env(name) is None
    monkeypatch.setenv(name, "one")
    assert state.env(name) == "one"
    os.environ[name] = "ünïcode ✓"
    assert state.env(name) == os.environ.get(name) == "ünïcode ✓"
    os.environb[os.fsencode(name)] = b"\xff-not-utf8"
    assert state.env(name) == os.environ.get(name)
    os.environ[name] = ""
    assert state.env(name) == ""
    del os.environ[name]
    assert state.env(name) is None
