"""Issue 10.5 under attack: no other trail of a key.

IPython's history (memory, ``_i`` variables, ``history.sqlite``) after a refusal by the
*client* (not only the magic); ``%xmode Verbose`` tracebacks of any exception; a stored key
given as a model, provider or project name; a home that is not ours, is a symlink, or holds
one. Every attack runs with a real recording sandbox on 127.0.0.1 and asserts what it
RECEIVED: nothing when the attack is refused, only demo keys otherwise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import cencori_nb
from cencori_nb import errors, keys, settings, state
from cencori_nb.egress import DEMO_KEYS
from tests.attacks.support import RecordingSandbox
from tests.conftest import all_bytes_under

# Not key-shaped: only the registered-secret defences can recognise it.
PLAIN = "plainTrailCanary" + "Vb7Nm2Qw9"
SHAPED = "sk-proj-trailCanary" + "Hj3Kl6Zx1Cv4"
CANARIES = (PLAIN, SHAPED)


@pytest.fixture
def srv(srv: RecordingSandbox, monkeypatch: pytest.MonkeyPatch) -> RecordingSandbox:
    """The shared recording sandbox (tests/attacks/conftest.py), set as the sandbox."""
    monkeypatch.setenv("CENCORI_NB_SANDBOX", srv.url)
    return srv


@pytest.fixture
def stored(srv: RecordingSandbox) -> None:
    keys.set("together", PLAIN)
    keys.set("openai", SHAPED, default_model="gpt-4o-mini", make_default=True)


@pytest.fixture(scope="module")
def shell(ipython: Any) -> Any:
    """The shared InteractiveShell (tests/conftest.py)."""
    return ipython


def run(shell: Any, cell: str) -> str:
    """Run ``cell`` as typed; return everything it printed (tracebacks included)."""
    from IPython.utils.capture import capture_output

    with capture_output() as cap:
        shell.run_cell(cell, store_history=True)
    return cap.stdout + cap.stderr + "".join(str(o.data) for o in cap.outputs)


def history_text(shell: Any) -> str:
    """Every place IPython keeps input: memory, _i variables, the SQLite file."""
    hm = shell.history_manager
    hm.writeout_cache()
    rows = hm.db.execute("SELECT source, source_raw FROM history").fetchall()
    names = {k: v for k, v in shell.user_ns.items() if k.startswith("_i") and isinstance(v, str)}
    return json.dumps([rows, hm.input_hist_raw, hm.input_hist_parsed, names])


def assert_clean(*texts: str) -> None:
    for text in texts:
        for canary in CANARIES:
            assert canary not in text


# ============================================================ history after a client refusal


@pytest.mark.parametrize(
    "cell",
    [
        f"cencori_nb.chat('please use {PLAIN} here', model='gpt-4o-mini')",
        f"cencori_nb.chat('please use {SHAPED} here', model='gpt-4o-mini')",
        f"with cencori_nb.stream('key {PLAIN}', model='gpt-4o-mini') as s:\n    list(s)",
        f"cencori_nb.chat([{{'role': 'system', 'content': 'k={PLAIN}'}}, "
        "{'role': 'user', 'content': 'hi'}], model='gpt-4o-mini')",
        f"cencori_nb.chat('hi', model='{PLAIN}')",  # a key as the model
        f"cencori_nb.chat('hi', model='gpt-4o-mini', project='{PLAIN}')",  # …as the project
        f"cencori_nb.chat('hi', provider='{PLAIN}')",  # …as the provider
        f"cencori_nb.chat('hi', model='{SHAPED}')",
    ],
    ids=[
        "plain-in-prompt",
        "shaped-in-prompt",
        "stream",
        "system-message",
        "as-model",
        "as-project",
        "as-provider",
        "shaped-as-model",
    ],
)
def test_client_refusal_forgets_the_cell(
    shell: Any, stored: None, srv: RecordingSandbox, cell: str, private_home: Path
) -> None:
    """A key typed into a cell that calls the client: refused by the client (not the
    magic), then gone from every place IPython keeps input; nothing sent, nothing stored."""
    shell.run_line_magic("xmode", "Verbose")
    try:
        out = run(shell, "import cencori_nb\n" + cell)
    finally:
        shell.run_line_magic("xmode", "Context")
    assert "KeyInPromptError" in out or "KeyAsNameError" in out, out[-400:]
    assert_clean(out, history_text(shell))
    assert srv.received == []
    from cencori_nb.ledger import default_ledger

    default_ledger().flush()
    state.reset("cache")
    assert all(c.encode() not in all_bytes_under(private_home) for c in CANARIES)


def test_magic_use_refuses_a_stored_key_as_project(
    shell: Any, stored: None, srv: RecordingSandbox
) -> None:
    before = os.environ.get("CENCORI_NB_PROJECT")
    out = run(shell, f"%cencori use {PLAIN}")
    assert "API key" in out
    assert os.environ.get("CENCORI_NB_PROJECT") == before
    assert_clean(out, history_text(shell))
    assert srv.received == []


# ============================================================ names on disk


@pytest.mark.parametrize(
    "attack",
    [
        "update_project",
        "update_settings",
        "keys.set project",
        "keys.set default_model",
        "set_cencori_key project",
    ],
)
def test_stored_key_as_a_name_never_reaches_settings_or_the_store(
    stored: None, srv: RecordingSandbox, private_home: Path, attack: str
) -> None:
    calls = {
        "update_project": lambda: settings.update_project(PLAIN, allow_fallback=True),
        "update_settings": lambda: settings.update_settings(project=PLAIN),
        "keys.set project": lambda: keys.set("mistral", "mistral-key-" + "Aa1" * 6, project=PLAIN),
        "keys.set default_model": lambda: keys.set(
            "mistral", "mistral-key-" + "Aa1" * 6, default_model=PLAIN
        ),
        "set_cencori_key project": lambda: keys.set_cencori_key("csk_" + "Bb2" * 8, project=PLAIN),
    }
    with pytest.raises(errors.CencoriError) as info:
        calls[attack]()
    assert_clean(str(info.value), repr(info.value))
    assert PLAIN.encode() not in all_bytes_under(private_home)  # store is sealed; names not
    assert srv.received == []


def test_a_stored_key_as_current_project_env_is_refused_before_the_ledger(
    stored: None, srv: RecordingSandbox, private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``CENCORI_NB_PROJECT`` (what ``%cencori use`` sets) holding a stored key."""
    monkeypatch.setenv("CENCORI_NB_PROJECT", PLAIN)
    with pytest.raises(errors.ConfigurationError, match="API key") as info:
        cencori_nb.chat("hi", model="gpt-4o-mini")
    assert_clean(str(info.value))
    from cencori_nb.ledger import default_ledger

    default_ledger().flush()
    assert PLAIN.encode() not in all_bytes_under(private_home)
    assert srv.received == []


# ============================================================ Verbose tracebacks


@pytest.mark.parametrize("mode", ["Verbose", "Context", "Plain", "Minimal"])
@pytest.mark.parametrize(
    "cell",
    [
        "raise KeyError(k.reveal())",  # the key as the message
        "def f(api_key):\n    raise OSError(28, 'No space left on device')\nf(k.reveal())",
        "headers = {'Authorization': 'Bearer ' + k.reveal()}\n1 / 0",  # a local holding it
        "x = 'sk-proj-abcdefghijklmnop1234567890'\nraise ValueError(x)",  # a key shape
        "cencori_nb.chat('surrogate \\ud800 and {}'.format(k.hint), model='gpt-4o-mini')",
    ],
    ids=["message", "failed-write", "local", "shape", "lone-surrogate"],
)
def test_tracebacks_never_show_a_key(
    shell: Any, stored: None, srv: RecordingSandbox, mode: str, cell: str
) -> None:
    from cencori_nb.keystore.secret import Secret

    shell.user_ns["k"] = Secret(PLAIN)
    shell.run_line_magic("xmode", mode)
    try:
        out = run(shell, "import cencori_nb\n" + cell)
    finally:
        shell.run_line_magic("xmode", "Context")
        shell.user_ns.pop("k", None)
    assert "Traceback" in out or "Error" in out, out
    assert_clean(out)
    assert "abcdefghijklmnop1234567890" not in out
    assert srv.received == []


def test_a_lone_surrogate_is_one_clear_error(stored: None, srv: RecordingSandbox) -> None:
    with pytest.raises(errors.ConfigurationError, match="lone surrogate") as info:
        cencori_nb.chat("bad \ud800 text", model="gpt-4o-mini")
    assert info.value.code == "invalid_text"
    assert srv.received == []


def test_a_failed_key_write_traceback_shows_no_key(
    shell: Any, srv: RecordingSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``keys.set`` with the disk full: the Verbose traceback walks frames whose locals hold
    the key being stored; none of it is shown."""
    import errno

    from cencori_nb import home

    def full(*_a: Any, **_k: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    keys.set("mistral", "mistral-key-" + "Cc3" * 6)  # the store exists
    monkeypatch.setattr(home.os, "replace", full)
    shell.user_ns["typed"] = PLAIN  # e.g. from getpass()
    shell.run_line_magic("xmode", "Verbose")
    try:
        out = run(shell, "from cencori_nb import keys\nkeys.set('together', typed)")
    finally:
        shell.run_line_magic("xmode", "Context")
        shell.user_ns.pop("typed", None)
    assert "No space" in out or "full" in out, out[-500:]
    assert_clean(out)
    assert srv.received == []


# ============================================================ the home


def _home(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    monkeypatch.setenv("CENCORI_NB_HOME", str(path))
    state.reset()


def test_home_that_is_a_symlink_is_refused(
    tmp_path: Path, srv: RecordingSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "synced"
    elsewhere.mkdir()
    link = tmp_path / "home-link"
    link.symlink_to(elsewhere)
    _home(monkeypatch, link)
    with pytest.raises(errors.UnsafeHomeError, match="is a symlink"):
        keys.set("openai", SHAPED)
    with pytest.raises(errors.UnsafeHomeError):
        cencori_nb.chat("hi", model="gpt-4o-mini")
    assert list(elsewhere.iterdir()) == []
    assert srv.received == []


def test_dangling_symlink_and_file_as_home_are_refused(
    tmp_path: Path, srv: RecordingSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    _home(monkeypatch, dangling)
    with pytest.raises(errors.UnsafeHomeError, match="dangling"):
        keys.set("openai", SHAPED)
    assert not (tmp_path / "nowhere").exists()
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    _home(monkeypatch, a_file)
    with pytest.raises(errors.UnsafeHomeError, match="not a folder"):
        keys.set("openai", SHAPED)
    assert srv.received == []


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root"
)
def test_home_owned_by_another_user_is_refused_not_tightened(
    tmp_path: Path, srv: RecordingSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)
    _home(monkeypatch, theirs)
    with pytest.raises(errors.UnsafeHomeError, match="another user"):
        keys.set("openai", SHAPED)
    st = theirs.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (65534, 0o755)  # not tightened, not used
    assert list(theirs.iterdir()) == []
    assert srv.received == []


@pytest.mark.parametrize(
    "planted", ["ledger.sqlite", "cache.sqlite", "keystore.json", "config.json", "batches"]
)
def test_a_symlink_planted_in_the_home_is_refused(
    tmp_path: Path, srv: RecordingSandbox, monkeypatch: pytest.MonkeyPatch, planted: str
) -> None:
    home = tmp_path / "home"
    _home(monkeypatch, home)
    keys.set("openai", SHAPED)  # a healthy home first
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / planted
    target_path = home / planted
    if target_path.exists():
        target_path.rename(elsewhere / (planted + ".orig"))
    if planted == "batches":
        target.mkdir()
    target_path.symlink_to(target)
    _home(monkeypatch, home)
    with pytest.raises(errors.UnsafeHomeError, match="symlink") as info:
        cencori_nb.chat("hi", model="gpt-4o-mini", cache=False)
    assert planted in str(info.value)
    assert srv.received == []
    assert not target.exists() or target.is_dir() and not list(target.iterdir())


def test_symlinks_in_parent_directories_are_fine(
    tmp_path: Path, srv: RecordingSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/tmp`` is a symlink on some systems: only the home itself and its contents count."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "tmp-link").symlink_to(real)
    _home(monkeypatch, tmp_path / "tmp-link" / "home")
    keys.set("openai", SHAPED)
    cencori_nb.chat("through a symlinked parent", model="gpt-4o-mini")
    assert srv.keys_received() == [DEMO_KEYS["openai"]]
    assert (real / "home" / "keystore.json").is_file()
