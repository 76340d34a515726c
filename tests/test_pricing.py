"""Provider prices from genai-prices: exact costs, tiers, cache prices, unknown models."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import genai_prices
import pytest

from cencori_nb import pricing, state
from cencori_nb.errors import PricingError
from cencori_nb.types import Usage


def _theirs(model: str, provider_id: str, **usage: int) -> Decimal:
    return genai_prices.calc_price(
        genai_prices.Usage(**usage), model, provider_id=provider_id
    ).total_price


def test_gpt4o_1000_in_500_out_is_exactly_list_price() -> None:
    """gpt-4o at $2.50/$10 per MTok: 1000 in + 500 out = $0.0075, equal to genai-prices."""
    quote = pricing.provider_cost("openai", "gpt-4o", Usage(1000, 500))
    assert quote.cost_usd == Decimal("0.0075")
    assert quote.cost_usd == _theirs("gpt-4o", "openai", input_tokens=1000, output_tokens=500)
    assert quote.version.startswith(f"genai-prices {genai_prices.__version__} (data 20")


def test_returned_dated_model_id_is_priced() -> None:
    """The dated id a provider returns (gpt-4o-2024-08-06) prices like the alias."""
    quote = pricing.provider_cost("openai", "gpt-4o-2024-08-06", Usage(1000, 500))
    assert quote.cost_usd == Decimal("0.0075")


def test_gemini_25_pro_above_200k_uses_the_higher_tier() -> None:
    """Above 200K input tokens every token is billed at the tier price ($2.50/$15)."""
    below = pricing.provider_cost("google", "gemini-2.5-pro", Usage(200_000, 1000)).cost_usd
    above = pricing.provider_cost("google", "gemini-2.5-pro", Usage(250_000, 1000)).cost_usd
    assert below == Decimal("1.25") * 200_000 / 1_000_000 + Decimal(10) * 1000 / 1_000_000
    assert above == Decimal("2.50") * 250_000 / 1_000_000 + Decimal(15) * 1000 / 1_000_000
    assert above == _theirs("gemini-2.5-pro", "google", input_tokens=250_000, output_tokens=1000)


def test_anthropic_cache_read_and_write_prices() -> None:
    """input_tokens include cache tokens: 1000 uncached @3, 1000 write @3.75, 1000 read @0.30."""
    usage = Usage(
        input_tokens=3000, output_tokens=500, cache_read_tokens=1000, cache_write_tokens=1000
    )
    quote = pricing.provider_cost("anthropic", "claude-sonnet-4-5-20250929", usage)
    expected = (
        Decimal(1000) * 3
        + Decimal(1000) * Decimal("3.75")
        + Decimal(1000) * Decimal("0.30")
        + Decimal(500) * 15
    ) / 1_000_000
    assert quote.cost_usd == expected == Decimal("0.01455")
    assert quote.cost_usd == _theirs(
        "claude-sonnet-4-5-20250929",
        "anthropic",
        input_tokens=3000,
        output_tokens=500,
        cache_read_tokens=1000,
        cache_write_tokens=1000,
    )


@pytest.mark.parametrize(
    ("ours", "model", "theirs"),
    [
        ("xai", "grok-3-mini", "x-ai"),
        ("deepseek", "deepseek-chat", "deepseek"),
        ("mistral", "mistral-small-latest", "mistral"),
        ("groq", "llama-3.3-70b-versatile", "groq"),
        ("openrouter", "openai/gpt-4o-mini", "openrouter"),
    ],
)
def test_provider_names_map_to_genai_ids(ours: str, model: str, theirs: str) -> None:
    """Our provider names reach the right genai-prices provider."""
    cost = pricing.provider_cost(ours, model, Usage(1000, 500)).cost_usd
    assert cost is not None and cost > 0
    assert cost == _theirs(model, theirs, input_tokens=1000, output_tokens=500)


def test_gateway_model_ids_with_provider_prefix() -> None:
    """The gateway's 'openai/gpt-4o' and a bare id under 'cencori' both price as gpt-4o."""
    assert pricing.provider_cost("cencori", "openai/gpt-4o", Usage(1000, 500)).cost_usd == Decimal(
        "0.0075"
    )
    assert pricing.provider_cost("cencori", "gpt-4o", Usage(1000, 500)).cost_usd == Decimal(
        "0.0075"
    )


def test_unknown_model_and_local_have_no_price() -> None:
    """No price → cost None (recorded as unknown), never an exception."""
    assert pricing.provider_cost("openai", "no-such-model-x", Usage(10, 10)).cost_usd is None
    assert pricing.provider_cost("local", "llama3.2", Usage(10, 10)).cost_usd is None
    assert pricing.provider_cost("openai", None, Usage(10, 10)).cost_usd is None
    assert pricing.estimate_cost("openai", "no-such-model-x", 10, 10) is None


def test_require_price_fails_closed() -> None:
    """require_price raises PricingError naming the model; a priced model passes."""
    pricing.require_price("openai", "gpt-4o")
    with pytest.raises(PricingError) as info:
        pricing.require_price("openai", "no-such-model-x")
    assert "no-such-model-x" in str(info.value)
    assert info.value.code == "pricing_unavailable"


def test_estimate_cost_matches_provider_cost() -> None:
    """estimate_cost is the price of plain input/output tokens."""
    assert pricing.estimate_cost("openai", "gpt-4o-mini", 1000, 500) == _theirs(
        "gpt-4o-mini", "openai", input_tokens=1000, output_tokens=500
    )


def test_when_selects_time_versioned_prices() -> None:
    """A price with a start date is used from that date: compare with genai-prices directly."""
    when = datetime(2024, 1, 1, tzinfo=UTC)
    ours = pricing.provider_cost("openai", "gpt-4o", Usage(1000, 500), when=when).cost_usd
    theirs = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1000, output_tokens=500),
        "gpt-4o",
        provider_id="openai",
        genai_request_timestamp=when,
    ).total_price
    assert ours == theirs


def test_lookups_are_cached_per_provider_and_model() -> None:
    """A second quote reuses the cached lookup (misses are cached too)."""
    state.reset("pricing")
    pricing.provider_cost("openai", "gpt-4o", Usage(1, 1))
    pricing.provider_cost("openai", "nope-model", Usage(1, 1))
    assert ("openai", "gpt-4o") in pricing._lookups
    assert pricing._lookups[("openai", "nope-model")] is None
    assert pricing.unit_prices("google", "gemini-2.5-pro")["input_mtok"] == Decimal("1.25")


_USAGES = [
    Usage(1000, 500),
    Usage(3000, 500, 1000, 1000),
    Usage(250_000, 1000, 50_000, 10_000),
    Usage(0, 0),
    Usage(128_001, 9, 0, 0),
    Usage(1_000_001, 7, 3, 2),
    Usage(12, 0, 12, 0),
]
_WHENS = [datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 6, 1, tzinfo=UTC), None]


def test_fast_path_equals_genai_prices_for_every_mapped_model() -> None:
    """Our direct arithmetic equals genai-prices' calc_price for every model of every provider
    we map, across usages (cache tokens, tier crossings) and price periods."""
    from genai_prices.data import providers

    checked = 0
    for ours, pid in pricing.PROVIDER_IDS.items():
        if pid is None:
            continue
        gprov = next(p for p in providers if p.id == pid)
        for model in gprov.models:
            for when in _WHENS:
                for usage in _USAGES:
                    mine = pricing.provider_cost(ours, model.id, usage, when=when).cost_usd
                    try:
                        theirs = genai_prices.calc_price(
                            genai_prices.Usage(
                                input_tokens=usage.input_tokens,
                                output_tokens=usage.output_tokens,
                                cache_read_tokens=usage.cache_read_tokens,
                                cache_write_tokens=usage.cache_write_tokens,
                            ),
                            model.id,
                            provider_id=pid,
                            genai_request_timestamp=when or datetime.now(UTC),
                        ).total_price
                    except LookupError:  # an id its own match rules do not accept
                        assert mine is None
                        continue
                    assert mine == theirs, (ours, model.id, usage, when)
                    checked += 1
    fast = sum(entry[1] is not None for entry in pricing._rates.values())
    slow = sum(entry[1] is None for entry in pricing._rates.values())
    assert checked > 1000 and fast > 100 and slow >= 0
