"""The shared foundation: error tree, per-user home, Secret, settings, public API."""

from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

import cencori_nb
from cencori_nb import errors, state
from cencori_nb.home import atomic_write, ensure_home, home_dir, open_private
from cencori_nb.keystore.secret import Secret, key_hint
from cencori_nb.settings import (
    ConfigurationError,
    current_project,
    load_settings,
    update_project,
    update_settings,
)
from cencori_nb.types import ChatRequest, Completion, Message


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_every_error_derives_from_the_root_and_is_exported() -> None:
    """Each class in errors.__all__ is a CencoriError subclass and reachable as cencori_nb.X."""
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.CencoriError)
        assert getattr(cencori_nb, name) is cls


def test_error_keeps_context_as_attributes_and_hint_in_str() -> None:
    """Context goes to attributes; the hint is appended to the message."""
    err = errors.RateLimitError(
        "Slow down.", provider="openai", status_code=429, retry_after=2.5, hint="Wait and retry."
    )
    assert err.provider == "openai" and err.status_code == 429 and err.retry_after == 2.5
    assert str(err) == "Slow down. Wait and retry."
    assert err.code == "rate_limited" and err.retryable


def test_home_follows_env_and_is_private(private_home: Path) -> None:
    """CENCORI_NB_HOME moves the home; it is created 0700."""
    assert home_dir() == private_home
    ensure_home()
    assert _mode(private_home) == 0o700


def test_ensure_home_tightens_a_loose_existing_directory(private_home: Path) -> None:
    """A home made by hand with 0755 becomes 0700."""
    private_home.mkdir(mode=0o755)
    os.chmod(private_home, 0o755)  # noqa: S103 (the loose mode is the test input)
    ensure_home()
    assert _mode(private_home) == 0o700


def test_home_defaults_to_platformdirs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the env var, the platformdirs user data dir for cencori-nb is used."""
    import platformdirs

    monkeypatch.delenv("CENCORI_NB_HOME")
    assert home_dir() == Path(platformdirs.user_data_dir("cencori-nb", appauthor=False))


def test_atomic_write_creates_0600_and_keeps_backup(private_home: Path) -> None:
    """New file is 0600; the previous generation survives as the backup."""
    ensure_home()
    target, backup = private_home / "f.json", private_home / "f.json.bak"
    atomic_write(target, b"one", backup=backup)
    atomic_write(target, b"two", backup=backup)
    assert target.read_bytes() == b"two" and backup.read_bytes() == b"one"
    assert _mode(target) == 0o600 and _mode(backup) == 0o600
    assert not [p for p in private_home.iterdir() if p.name.endswith(".tmp")]


def test_open_private_creates_0600(private_home: Path) -> None:
    """Files opened through open_private are 0600 from creation, whatever the umask."""
    ensure_home()
    old = os.umask(0)
    try:
        fd = open_private(private_home / "log")
    finally:
        os.umask(old)
    os.close(fd)
    assert _mode(private_home / "log") == 0o600


def test_secret_never_shows_itself(canary: str) -> None:
    """repr, str, format and f-strings show only the hint; pickling is refused."""
    s = Secret(canary)
    shown_forms = (repr(s), str(s), f"{s}", format(s, ">20"), f"{s!r}", f"{[s]}")
    for shown in shown_forms:
        assert canary not in shown
        assert canary[-4:] in shown
    assert s.reveal() == canary
    assert s == Secret(canary) and s != Secret(canary + "x")
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(AttributeError):
        s._value = "x"  # type: ignore[misc]


def test_key_hint_masks_short_keys() -> None:
    """Keys of 8 characters or fewer show no characters at all."""
    assert key_hint("abcdefgh") == "…"
    assert key_hint("sk-1234567890") == "…7890"


def test_settings_roundtrip_and_env_overrides(
    monkeypatch: pytest.MonkeyPatch, private_home: Path
) -> None:
    """Values persist in config.json (0600); env vars win over the file."""
    assert load_settings().project == "default"
    update_settings(
        project="research",
        markup_pct=Decimal("40"),
        byok_policy="percent",
        byok_fee_pct=Decimal("5"),
    )
    update_project("research", hard_cap_usd=Decimal("12.50"), allow_fallback=True)
    s = load_settings()
    assert (s.project, s.markup_pct, s.byok_policy) == ("research", Decimal("40"), "percent")
    assert s.for_project().hard_cap_usd == Decimal("12.50") and s.for_project().allow_fallback
    assert s.for_project("other").hard_cap_usd is None
    assert _mode(private_home / "config.json") == 0o600
    monkeypatch.setenv("CENCORI_NB_PROJECT", "envproj")
    monkeypatch.setenv("CENCORI_NB_SANDBOX", "http://127.0.0.1:9/")
    assert current_project() == "envproj" and current_project("x") == "x"
    assert load_settings().sandbox_url == "http://127.0.0.1:9"


def test_settings_reject_bad_policy_and_bad_file(private_home: Path) -> None:
    """An unknown BYOK policy and a broken file give ConfigurationError naming the fix."""
    with pytest.raises(ConfigurationError, match="byok_policy"):
        update_settings(byok_policy="sometimes")
    ensure_home()
    (private_home / "config.json").write_text("{not json")
    state.recheck()  # a hand edit is another writer: seen within a second, or at a recheck
    with pytest.raises(ConfigurationError, match="delete it"):
        load_settings()


def test_chat_request_from_prompt_and_completion_dict() -> None:
    """Prompts become messages; Completion.to_dict keeps Decimals exact as strings."""
    req = ChatRequest.from_prompt("hi", system="be brief", model="gpt-4o-mini")
    assert req.messages == (Message("system", "be brief"), Message("user", "hi"))
    req2 = ChatRequest.from_prompt([{"role": "user", "content": "a"}])
    assert req2.messages == (Message("user", "a"),)
    c = Completion(
        text="t",
        model="m",
        provider="openai",
        route="byok",
        provider_cost_usd=Decimal("0.000123"),
        input_tokens=3,
        output_tokens=4,
        cost_usd=Decimal("0.000123"),
    )
    d = c.to_dict()
    assert d["provider_cost_usd"] == "0.000123" and d["credits_charged_usd"] == "0"
    assert d["cost_usd"] == "0.000123" and d["test_mode"] is False
    assert "BYOK" in c.footer() and "$0.000123" in c.footer()
    # the footer shows the settled cost_usd (the one rule), never recomputes it
    assert (
        "cost unknown"
        in Completion(
            text="t", model="m", provider="openai", route="byok", provider_cost_usd=Decimal(1)
        ).footer()
    )
    assert "t" in c._repr_mimebundle_()["text/plain"]


def test_import_is_light() -> None:
    """`import cencori_nb` pulls in none of the heavy libraries."""
    code = (
        "import sys, cencori_nb; heavy = [m for m in ('pandas', 'plotly', 'ipywidgets', "
        "'httpx2', 'cryptography', 'IPython') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


def test_public_names_resolve() -> None:
    """Every lazily exported name in __all__ can be imported (modules exist)."""
    missing = []
    for name in cencori_nb.__all__:
        try:
            getattr(cencori_nb, name)
        except (ImportError, AttributeError) as exc:
            missing.append(f"{name}: {exc}")
    assert not missing, missing
