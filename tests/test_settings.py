"""cencori_nb.settings: load_settings() is memoised (it runs several times per request), and
the memo never hides a change: this process's own writes and a change of a variable count
at the next call, another process's edit within the one-second rule."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cencori_nb import settings, state
from cencori_nb.errors import ConfigurationError


def _edit_elsewhere(path: Path, data: dict[str, object]) -> None:
    """What another process's edit looks like: a new file (inode) put in place."""
    tmp = path.with_name("config.json.other")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def test_the_same_settings_object_is_returned_while_nothing_changed() -> None:
    settings.update_settings(markup_pct=40)
    first = settings.load_settings()
    assert settings.load_settings() is first
    assert first.markup_pct == 40


def test_a_save_by_this_process_is_seen_by_the_next_call_with_the_clock_standing_still(
    state_clock: Callable[[float], None],
) -> None:
    assert settings.load_settings().project == "default"
    settings.update_settings(project="alpha")
    assert settings.load_settings().project == "alpha"
    settings.update_project("alpha", hard_cap_usd=5)
    assert settings.load_settings().for_project("alpha").hard_cap_usd == 5
    settings.update_settings(confirm_above_usd=None)
    assert settings.load_settings().confirm_above_usd is None


def test_another_processs_edit_is_seen_within_a_second_or_at_once_after_recheck(
    state_clock: Callable[[float], None],
) -> None:
    settings.update_settings(markup_pct=40)
    path = settings.config_path()
    assert settings.load_settings().markup_pct == 40
    _edit_elsewhere(path, {"markup_pct": "30"})
    state_clock(0.5)
    assert settings.load_settings().markup_pct == 40  # the one-second rule
    state_clock(0.6)
    assert settings.load_settings().markup_pct == 30
    _edit_elsewhere(path, {"markup_pct": "20"})
    state.recheck()  # before a 401 retry or "not configured"
    assert settings.load_settings().markup_pct == 20
    path.unlink()
    state.recheck()
    assert settings.load_settings() == settings.Settings()  # no file: the defaults


def test_a_file_broken_after_it_was_read_is_reported_then_its_repair_is_seen(
    state_clock: Callable[[float], None],
) -> None:
    settings.update_settings(markup_pct=40)
    assert settings.load_settings().markup_pct == 40
    settings.config_path().write_text("{not json")
    state.recheck()
    with pytest.raises(ConfigurationError, match="not valid UTF-8 JSON"):
        settings.load_settings()
    with pytest.raises(ConfigurationError):  # every call, not only the first
        settings.load_settings()
    _edit_elsewhere(settings.config_path(), {"markup_pct": "10"})
    state.recheck()
    assert settings.load_settings().markup_pct == 10


@pytest.mark.parametrize("how", ["monkeypatch", "os.environ"])
def test_the_project_and_sandbox_variables_count_at_the_next_call(
    monkeypatch: pytest.MonkeyPatch, state_clock: Callable[[float], None], how: str
) -> None:
    """Set, changed and unset between two calls, with the clock standing still (so no file
    is looked at again): each call follows the environment as it is."""

    def setenv(name: str, value: str | None) -> None:
        if how == "monkeypatch":
            if value is None:
                monkeypatch.delenv(name)
            else:
                monkeypatch.setenv(name, value)
        elif value is None:
            del os.environ[name]
        else:
            os.environ[name] = value

    monkeypatch.setenv("CENCORI_NB_PROJECT", "x")  # restored after the test either way
    monkeypatch.setenv("CENCORI_NB_SANDBOX", "x")
    monkeypatch.delenv("CENCORI_NB_PROJECT")
    monkeypatch.delenv("CENCORI_NB_SANDBOX")
    settings.update_settings(project="from-file")
    assert settings.load_settings().project == "from-file"
    setenv("CENCORI_NB_PROJECT", "from-env")
    assert settings.load_settings().project == "from-env"
    assert settings.current_project() == "from-env"
    setenv("CENCORI_NB_PROJECT", "another")
    assert settings.load_settings().project == "another"
    setenv("CENCORI_NB_SANDBOX", "http://127.0.0.1:9/")
    assert settings.load_settings().sandbox_url == "http://127.0.0.1:9"
    assert settings.sandbox_url() == "http://127.0.0.1:9"
    setenv("CENCORI_NB_SANDBOX", None)
    setenv("CENCORI_NB_PROJECT", None)
    assert settings.load_settings().sandbox_url is None
    assert settings.load_settings().project == "from-file"


def test_a_change_of_home_reads_the_new_homes_file_at_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_clock: Callable[[float], None]
) -> None:
    settings.update_settings(project="in-a")
    assert settings.load_settings().project == "in-a"
    monkeypatch.setenv("CENCORI_NB_HOME", str(tmp_path / "b"))
    assert settings.load_settings().project == "default"  # b has no config.json
    settings.update_settings(project="in-b")
    assert settings.load_settings().project == "in-b"
    assert settings.config_path() == tmp_path / "b" / "config.json"


def test_the_member_follows_its_variable_and_its_setting_at_the_next_call(
    monkeypatch: pytest.MonkeyPatch, state_clock: Callable[[float], None]
) -> None:
    automatic = settings.current_member()
    assert "@" in automatic
    settings.update_settings(member="ana@example.org")
    assert settings.current_member() == "ana@example.org"
    monkeypatch.setenv("CENCORI_NB_MEMBER", "bo@example.org")
    assert settings.current_member() == "bo@example.org"
    # the caller's settings are used as given (the variable still wins)
    assert settings.current_member(settings.load_settings()) == "bo@example.org"
    monkeypatch.delenv("CENCORI_NB_MEMBER")
    assert settings.current_member() == "ana@example.org"
    assert settings.current_member(settings.Settings(member="cy@example.org")) == "cy@example.org"
    settings.update_settings(member=None)
    assert settings.current_member() == automatic
