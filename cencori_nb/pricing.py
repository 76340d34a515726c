"""Provider list prices, from the bundled genai-prices tables (offline, dated).

:func:`provider_cost` prices one request's :class:`~cencori_nb.types.Usage` on the model id
the provider *returned* (``gpt-4o-2024-08-06``, not the alias that was sent), with
genai-prices' own calculation: token tiers (Gemini 2.5 Pro above 200K, Claude long
context), cache read/write prices and time-versioned prices (``when``) are all included.
Our token convention is genai-prices': ``input_tokens`` already includes cache tokens.

Never online: genai-prices' ``UpdatePrices`` (which downloads a newer table) is opt-in and
this module never starts it, so a cost recorded today can be reproduced from the same
package version. Each quote carries ``version`` (package version and the latest
"verified/checked" date in its data) and the ledger stores it on every row.

An unknown model (or the ``local`` provider, which has no price) gives ``cost_usd=None``:
the ledger row records "cost unknown" rather than a guess, and the request is not refused.
Why not fail closed like Cencori's gateway (``503 pricing_unavailable``)? By the time we
price, the provider has already answered (BYOK) or the gateway has already charged the
wallet with its own price (managed); refusing would lose an answer that is paid for. The
gateway's refusal still reaches the user as a :class:`~cencori_nb.errors.PricingError`
from the adapter, and :func:`require_price` lets a caller fail closed *before* sending.

Lookups are cached per ``(provider, model)`` and the common chat price shapes are computed
directly (checked against genai-prices' own calculation for every mapped model), so pricing
a request costs a few microseconds after the first call (the first imports the 1.5 MB
price table, about 0.5 s).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from . import state
from .errors import PricingError

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo, ModelPrice, TieredPrices
    from genai_prices.types import Provider as GenaiProvider

    from .types import Usage

    _Found = tuple[GenaiProvider, ModelInfo]
    _Price = Decimal | TieredPrices
    # input, output, cache read, cache write per million tokens; fee per thousand requests
    _Rates = tuple[_Price, _Price, _Price, _Price, _Price | None]

__all__ = [
    "BATCH_PRICE_FACTOR",
    "BATCH_PRICE_VERSION_SUFFIX",
    "PROVIDER_IDS",
    "PriceQuote",
    "batch_price",
    "context_window",
    "estimate_cost",
    "genai_provider_id",
    "price_version",
    "provider_cost",
    "require_price",
    "unit_prices",
]

# Our provider names -> genai-prices provider ids. ``None``: no price table (local servers).
PROVIDER_IDS: dict[str, str | None] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "google",
    "mistral": "mistral",
    "groq": "groq",
    "xai": "x-ai",
    "deepseek": "deepseek",
    "together": "together",
    "openrouter": "openrouter",
    "local": None,
    # providers only Cencori's gateway routes to here (managed prices must not be unknown)
    "cohere": "cohere",
    "perplexity": "perplexity",
    "zai": "zai",
    "cerebras": "cerebras",
}
# "cencori" (the gateway) and unknown names: genai-prices finds the provider from the model.
_INFER = "__infer__"


@dataclass(frozen=True, slots=True)
class PriceQuote:
    """The provider's list price of one request; ``cost_usd`` None when no price is known."""

    cost_usd: Decimal | None
    version: str


@lru_cache(maxsize=1)
def price_version() -> str:
    """``genai-prices <version> (data <date>)``: the price table every cost comes from.

    The date is the most recent "verified on / checked / as of" date in the bundled data,
    read once per process (the package has no explicit snapshot date).
    """
    import genai_prices
    from genai_prices import data_snapshot

    date = ""
    try:
        path = data_snapshot.__file__.replace("data_snapshot.py", "data.py")
        with open(path, encoding="utf-8") as fh:
            dates = re.findall(r"(?:verified on|checked|as of) (\d{4}-\d{2}-\d{2})", fh.read())
        date = max(dates) if dates else ""
    except OSError:  # pragma: no cover - a broken install; the version alone still dates it
        pass
    return f"genai-prices {genai_prices.__version__}" + (f" (data {date})" if date else "")


def genai_provider_id(provider: str, model: str) -> list[tuple[str | None, str]]:
    """Candidate (genai-prices provider id, model ref) pairs to look up, in order.

    The id as given first; then, for ``prefix/model`` ids whose prefix is a provider we know
    (the gateway's ``openai/gpt-4o``), that provider and the bare model. Providers whose
    own ids contain slashes (groq's ``openai/gpt-oss-120b``, openrouter) match on the first
    try. ``(None, model)`` means no price table (local servers); ``_INFER`` lets
    genai-prices find the provider from the model name (the ``cencori`` gateway).
    """
    model = model.strip()
    if model.startswith("models/"):  # Gemini sometimes names its models so
        model = model[len("models/") :]
    first = (PROVIDER_IDS[provider] if provider in PROVIDER_IDS else _INFER, model)
    out = [first]
    if "/" in model:
        prefix, rest = model.split("/", 1)
        if prefix in PROVIDER_IDS and PROVIDER_IDS[prefix] is not None:
            out.append((PROVIDER_IDS[prefix], rest))
    return out


_lock = threading.Lock()
_lookups: dict[tuple[str, str], _Found | None] = {}  # (provider, model) -> its prices


def _lookup(provider: str, model: str) -> _Found | None:
    """The cached genai-prices (provider, model info) pair, or None if it has no price."""
    key = (provider, model)
    try:
        return _lookups[key]
    except KeyError:
        pass
    found: _Found | None = None
    for pid, ref in genai_provider_id(provider, model):
        if pid is None or not ref:
            break  # no price table for this provider (local)
        from genai_prices import data_snapshot

        snapshot = data_snapshot.get_snapshot()
        try:
            found = snapshot.find_provider_model(ref, None, None if pid == _INFER else pid, None)
            break
        except LookupError:
            continue
    with _lock:
        _lookups[key] = found
    return found


def _genai_usage(usage: Usage) -> Any:
    from genai_prices import Usage as GenaiUsage

    values = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    if usage.cache_read_tokens:
        values["cache_read_tokens"] = usage.cache_read_tokens
    if usage.cache_write_tokens:
        values["cache_write_tokens"] = usage.cache_write_tokens
    # thinking tokens are already inside output_tokens and billed as output
    return GenaiUsage(**values)


def _utc(when: datetime | None) -> datetime:
    if when is None:
        return datetime.now(UTC)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


# The providers' Batch APIs bill at a fraction of the list price (results within 24 hours).
# OpenAI (platform.openai.com/docs/guides/batch: "50% cost discount"), Anthropic
# (docs.claude.com batch-processing: "50% of standard API prices"), Gemini
# (ai.google.dev/gemini-api/docs/batch-mode: "50% of the standard cost"). One home for it:
# the estimate, the ledger row and compare_costs read this table.
BATCH_PRICE_FACTOR: dict[str, Decimal] = {
    "openai": Decimal("0.5"),
    "anthropic": Decimal("0.5"),
    "google": Decimal("0.5"),
}


# Appended to a ledger row's price_version when it was recorded at the batch price: how
# compare_costs tells rows already discounted (provider batch jobs) from live ones.
BATCH_PRICE_VERSION_SUFFIX = " (batch price)"


def batch_price(provider: str, list_price: Decimal | None) -> Decimal | None:
    """What ``list_price`` costs when run through ``provider``'s Batch API (None: unknown,
    or the provider has no batch API)."""
    factor = BATCH_PRICE_FACTOR.get(provider)
    if list_price is None or factor is None:
        return None
    return list_price * factor


def provider_cost(
    provider: str, model: str | None, usage: Usage, *, when: datetime | None = None
) -> PriceQuote:
    """The list price of ``usage`` on ``model`` at ``provider`` (at time ``when``, default now).

    ``model`` should be the id the provider returned. Unknown model or provider → a quote
    with ``cost_usd=None`` (never an exception; see the module docstring).
    """
    version = price_version()
    if not model:
        return PriceQuote(None, version)
    found = _lookup(provider, model)
    if found is None:
        return PriceQuote(None, version)
    gprovider, ginfo = found
    ts = _utc(when)
    model_price = ginfo.get_prices(ts)
    _, rates = _fast_rates(model_price)
    if rates is not None:
        return PriceQuote(_fast_cost(rates, usage), version)
    calc = ginfo.calc_price(_genai_usage(usage), gprovider, genai_request_timestamp=ts)
    return PriceQuote(Decimal(calc.total_price), version)


# -- fast path -----------------------------------------------------------------------------
# genai-prices' general calculation (unit registry, usage decomposition) costs ~100 µs a
# call. For the price shapes of chat models (input, output, cache read/write, optional
# token tiers and a per-request fee) the same arithmetic is a few multiplications; any
# other price key sends the request through genai-prices itself. Units we never report
# (audio, images, searches…) have zero usage, so they add nothing and subtract nothing.
# tests/test_pricing.py checks the two agree on every model of every provider we map.
_FAST_KEYS = {"input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "requests_kcount"}
_ZERO_USAGE_KEYS = {
    "cache_write_1h_mtok",
    "input_audio_mtok",
    "input_image_mtok",
    "input_video_mtok",
    "output_audio_mtok",
    "output_image_mtok",
    "output_video_mtok",
    "cache_audio_read_mtok",
    "cache_image_read_mtok",
    "output_reasoning_mtok",
    "output_citation_mtok",
    "web_searches_kcount",
    "storage_searches_kcount",
    "social_searches_kcount",
    "code_executions_kcount",
    "rerank_searches_kcount",
    "audio_hours",
    "input_audio_hours",
    "output_audio_hours",
    "input_document_kpages",
    "input_annotated_document_kpages",
    "input_gpixels",
}
# id(ModelPrice) -> (that ModelPrice, its rates or None: use genai-prices)
_rates: dict[int, tuple[ModelPrice, _Rates | None]] = {}
_MTOK = Decimal(1_000_000)


def _fast_rates(model_price: ModelPrice) -> tuple[ModelPrice, _Rates | None]:
    key = id(model_price)
    try:
        return _rates[key]
    except KeyError:
        pass
    values: dict[str, _Price] = {
        k: v for k, v in model_price.__dict__.items() if not k.startswith("_") and v is not None
    }
    rates: _Rates | None = None
    if (
        set(values) <= _FAST_KEYS | _ZERO_USAGE_KEYS
        and "input_mtok" in values
        and "output_mtok" in values
    ):
        inp = values["input_mtok"]
        rates = (
            inp,
            values["output_mtok"],
            values.get("cache_read_mtok", inp),
            values.get("cache_write_mtok", inp),
            values.get("requests_kcount"),
        )
    with _lock:
        _rates[key] = (model_price, rates)  # keep the object alive: ids stay unique
    return _rates[key]


def _tier(price: _Price, total_input: int) -> Decimal:
    """genai-prices' "cliff" tiers: past a threshold, every token pays the tier price."""
    if isinstance(price, Decimal):
        return price
    for tier in reversed(price.tiers):
        if total_input > tier.start:
            return tier.price
    return price.base


def _fast_cost(rates: _Rates, usage: Usage) -> Decimal:
    p_in, p_out, p_cr, p_cw, p_req = rates
    total_in = usage.input_tokens
    cr, cw = usage.cache_read_tokens, usage.cache_write_tokens
    cost = (
        _tier(p_in, total_in) * (total_in - cr - cw)
        + _tier(p_cr, total_in) * cr
        + _tier(p_cw, total_in) * cw
        + _tier(p_out, total_in) * usage.output_tokens
    ) / _MTOK
    if p_req is not None:
        cost += _tier(p_req, total_in) / 1000
    return cost


def estimate_cost(
    provider: str, model: str | None, input_tokens: int, output_tokens: int
) -> Decimal | None:
    """Estimated list price of a request before it is sent (no cache discounts assumed)."""
    from .types import Usage

    return provider_cost(provider, model, Usage(int(input_tokens), int(output_tokens))).cost_usd


def unit_prices(provider: str, model: str, *, when: datetime | None = None) -> dict[str, Any]:
    """Input/output price per million tokens (base tier) for display, or {} if unknown."""
    found = _lookup(provider, model)
    if found is None:
        return {}
    _, ginfo = found
    prices = ginfo.get_prices(_utc(when))
    out: dict[str, Any] = {"model_id": ginfo.id}
    for name in ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok"):
        value = getattr(prices, name, None)
        if value is not None:
            out[name] = getattr(value, "base", value)
    return out


def context_window(provider: str, model: str | None) -> int | None:
    """The model's context window in tokens from the catalogue, or None if unknown.

    genai-prices records no maximum *output*, so this (prompt plus output) is the only
    per-model bound on output the catalogue gives.
    """
    if not model:
        return None
    found = _lookup(provider, model)
    if found is None:
        return None
    window = getattr(found[1], "context_window", None)
    return int(window) if window else None


def require_price(provider: str, model: str) -> None:
    """Raise :class:`PricingError` if ``model`` has no price (to fail closed before sending)."""
    if _lookup(provider, model) is None:
        raise PricingError(
            f"No price is known for model {model!r} at provider {provider!r} in {price_version()}.",
            hint="Use a priced model id (see `cencori-nb ask --help`), or send it with your own"
            " key (BYOK), where an unknown price is recorded as 'cost unknown'.",
            provider=provider,
            model=model,
        )


def _forget() -> None:
    with _lock:
        _lookups.clear()
        _rates.clear()


state.on_reset("pricing", _forget, env=())  # prices do not depend on the home
