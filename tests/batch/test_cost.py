"""The batch estimate has no cost rule of its own: it asks accounting.estimate_for."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from cencori_nb import accounting, batch, keys
from cencori_nb.sandbox.server import SandboxServer


def test_the_estimate_is_accountings_one_rule(
    sandbox_env: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole batch (tokens summed, max_tokens a row as the output allowance) is priced
    by accounting.estimate_for, and its figure is the estimate's, unchanged."""
    keys.set("openai", "sk-test-cost-" + "C" * 24)
    seen: list[tuple[Any, ...]] = []

    def fake(*args: Any, **kw: Any) -> tuple[Decimal, int, bool]:
        seen.append(args)
        return Decimal("0.4242"), args[4], False

    monkeypatch.setattr(accounting, "estimate_for", fake)
    est = batch.estimate(["one", "two", "three"], model="gpt-4o-mini", max_tokens=10)
    assert est.cost_usd == Decimal("0.4242")
    assert len(seen) == 1
    provider, model, route, input_tokens, output_tokens = seen[0]
    assert (provider, route, input_tokens, output_tokens) == (
        "openai",
        "byok",
        est.input_tokens,
        30,
    )
    assert model.startswith("gpt-4o-mini")


def test_the_real_rule_gives_the_same_figure_as_before(sandbox_env: SandboxServer) -> None:
    """List price of the summed tokens, then what it costs you (BYOK: the list price)."""
    from cencori_nb import pricing

    keys.set("openai", "sk-test-cost-" + "D" * 24)
    est = batch.estimate(["alpha beta", "gamma"], model="gpt-4o-mini", max_tokens=7)
    list_price = pricing.estimate_cost(est.provider, est.model, est.input_tokens, 14)
    assert list_price is not None and est.cost_usd == list_price
    assert batch.estimate([], model="gpt-4o-mini").cost_usd == Decimal(0)
