"""A large prompt is a decision, not an accident (issue 13.5).

Before anything is sent: a prompt larger than the model's context window is refused with
both sizes; a request whose estimated maximum cost is above what the caller accepted
(``max_cost_usd``, else the ``confirm_above_usd`` setting, $0.10) is refused with the
estimate, and sent once the caller accepts it. Checked against the sandbox (a real server):
what it received, and what the ledger holds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import cencori_nb
from cencori_nb import accounting, errors, keys, settings
from cencori_nb.ledger import default_ledger

OPENAI_KEY = "sk-test-large-" + "L" * 24 + "a1b2"
ANTHROPIC_KEY = "sk-ant-test-large-" + "M" * 24 + "c3d4"
HUGE = "word " * 140_000  # about 175,000 tokens: over gpt-4o-mini's 128,000
OPUS_BIG = {"model": "claude-opus-4-1", "max_tokens": 4000}  # up to about $0.30


@pytest.fixture
def sbx(sandbox_env: Any) -> Any:
    keys.set("openai", OPENAI_KEY)
    keys.set("anthropic", ANTHROPIC_KEY)
    return sandbox_env


def _rows() -> list[Any]:
    led = default_ledger()
    led.flush()
    return led.rows()


def test_prompt_over_the_context_window_is_refused_with_both_sizes(sbx: Any) -> None:
    before = sbx.stats["requests"]
    with pytest.raises(errors.RequestTooLargeError) as info:
        cencori_nb.chat(HUGE, model="gpt-4o-mini")
    err = info.value
    assert err.context_window == 128_000 and err.prompt_tokens > 128_000
    assert "128,000" in str(err) and f"{err.prompt_tokens:,}" in str(err)
    assert "not sent" in str(err)
    assert sbx.stats["requests"] == before  # nothing reached the provider
    assert _rows() == []
    with pytest.raises(errors.RequestTooLargeError):  # streaming is refused the same way
        cencori_nb.stream(HUGE, model="gpt-4o-mini")
    assert sbx.stats["requests"] == before


def test_a_costly_request_is_refused_then_sent_when_accepted(sbx: Any) -> None:
    before = sbx.stats["requests"]
    with pytest.raises(errors.CostConfirmationError) as info:
        cencori_nb.chat("Write a long essay", **OPUS_BIG)
    err = info.value
    assert err.limit_usd == Decimal("0.10")
    assert Decimal("0.25") < err.estimate_usd < Decimal("0.35")
    assert "max_cost_usd=0.31" in str(err) and "nothing was sent" in str(err)
    assert isinstance(err, errors.CostLimitError)  # a budget-family error
    assert sbx.stats["requests"] == before and _rows() == []

    c = cencori_nb.chat("Write a long essay", max_cost_usd=err.estimate_usd, **OPUS_BIG)
    assert c.text and sbx.stats["requests"] == before + 1
    assert [r.status for r in _rows()] == ["ok"]


def test_the_threshold_is_a_setting_and_none_turns_it_off(sbx: Any) -> None:
    settings.update_settings(confirm_above_usd=Decimal("1.00"))
    assert cencori_nb.chat("fine under a dollar", **OPUS_BIG).text
    settings.update_settings(confirm_above_usd=Decimal("0.01"))
    with pytest.raises(errors.CostConfirmationError):
        cencori_nb.chat("a cent is too much now", model="claude-opus-4-1", max_tokens=500)
    settings.update_settings(confirm_above_usd=None)
    assert cencori_nb.chat("no question at all", **OPUS_BIG).text


def test_cheap_requests_and_cache_hits_are_never_asked(sbx: Any) -> None:
    """gpt-4o-mini with the default allowance costs a fraction of a cent: sent at once."""
    c = cencori_nb.chat("a normal question", model="gpt-4o-mini")
    assert c.text
    accepted = cencori_nb.chat("Write a long essay", max_cost_usd="1", **OPUS_BIG)
    again = cencori_nb.chat("Write a long essay", **OPUS_BIG)  # a free cache hit
    assert again.cached and again.text == accepted.text


def test_an_unpriced_model_gets_only_the_context_check() -> None:
    accounting.confirm_cost("openai", "no-such-model-xyz", "byok", 10**6, 10**6, Decimal("0.01"))


@pytest.mark.parametrize("bad", ["-1", "abc", "NaN", float("inf")])
def test_a_bad_max_cost_is_one_clear_error(sbx: Any, bad: Any) -> None:
    with pytest.raises(errors.ConfigurationError, match="max_cost_usd"):
        cencori_nb.chat("hi", model="gpt-4o-mini", max_cost_usd=bad)
    assert sbx.stats["requests"] == 0


def test_map_rows_meet_the_threshold_unless_the_batch_accepted_a_limit(sbx: Any) -> None:
    with pytest.raises(errors.CostConfirmationError):
        # one row is one request: a map without max_cost_usd asks nothing, it stops
        cencori_nb.chat("row", **OPUS_BIG)
    out = cencori_nb.map(["row one", "row two"], max_cost_usd=1, progress=False, **OPUS_BIG)
    assert out["error"].isna().all() and len(_rows()) == 2
    stopped = cencori_nb.map(["row three"], progress=False, temperature=0.7, **OPUS_BIG)
    assert "max_cost_usd" in str(stopped["error"].iloc[0])


def _cli(
    args: list[str], home: Path, sandbox_url: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CENCORI_NB_HOME": str(home), "CENCORI_NB_SANDBOX": sandbox_url}
    return subprocess.run(
        [sys.executable, "-m", "cencori_nb", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_cli_without_a_terminal_needs_yes(sbx: Any, private_home: Path) -> None:
    args = [
        "ask",
        "Write a long essay",
        "--no-stream",
        "-m",
        "claude-opus-4-1",
        "--max-tokens",
        "4000",
    ]
    out = _cli(args, private_home, sbx.url)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "--yes" in out.stderr and "$0.30" in out.stderr
    assert sbx.stats["requests"] == 0
    out = _cli([*args, "--yes"], private_home, sbx.url)
    assert out.returncode == 0, out.stderr
    assert sbx.stats["requests"] == 1
    out = _cli([*args[:1], "Another essay", *args[2:], "--max-cost", "0.50"], private_home, sbx.url)
    assert out.returncode == 0, out.stderr
    assert sbx.stats["requests"] == 2
