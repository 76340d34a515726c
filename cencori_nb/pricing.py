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

Lookups are cached per ``(provider, model)``, so pricing a request costs microseconds
after the first call (the first one imports the 1.5 MB price table, about 0.5 s).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .errors import PricingError

if TYPE_CHECKING:
    from .types import Usage

__all__ = ["PROVIDER_IDS", "PriceQuote", "estimate_cost", "genai_provider_id", "price_version",
           "provider_cost", "require_price", "unit_prices"]

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
}
# Providers whose model ids legitimately contain a slash ("openai/gpt-4o-mini").
_SLASHED_IDS = {"openrouter", "together"}
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


def genai_provider_id(provider: str, model: str) -> tuple[str | None, str]:
    """Map our provider name and a returned model id to (genai-prices provider id, model ref).

    ``provider/model`` ids (the gateway's, or an explicit prefix) are split when the prefix
    is a provider we know; returns ``(None, model)`` for providers without prices.
    """
    model = model.strip()
    if model.startswith("models/"):          # Gemini sometimes names its models so
        model = model[len("models/"):]
    if provider not in _SLASHED_IDS and "/" in model:
        prefix, rest = model.split("/", 1)
        if prefix in PROVIDER_IDS:
            provider, model = prefix, rest
    if provider in PROVIDER_IDS:
        return PROVIDER_IDS[provider], model
    return _INFER, model


_lock = threading.Lock()
_lookups: dict[tuple[str, str], Any] = {}   # (provider, model) -> (Provider, ModelInfo) | None


def _lookup(provider: str, model: str) -> Any:
    """The cached genai-prices (provider, model info) pair, or None if it has no price."""
    key = (provider, model)
    try:
        return _lookups[key]
    except KeyError:
        pass
    pid, ref = genai_provider_id(provider, model)
    found: Any = None
    if pid is not None and ref:
        from genai_prices import data_snapshot

        snapshot = data_snapshot.get_snapshot()
        try:
            found = snapshot.find_provider_model(ref, None, None if pid == _INFER else pid, None)
        except LookupError:
            found = None
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


def provider_cost(provider: str, model: str | None, usage: Usage, *,
                  when: datetime | None = None) -> PriceQuote:
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
    calc = ginfo.calc_price(_genai_usage(usage), gprovider, genai_request_timestamp=_utc(when))
    return PriceQuote(Decimal(calc.total_price), version)


def estimate_cost(provider: str, model: str | None, input_tokens: int,
                  output_tokens: int) -> Decimal | None:
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


def require_price(provider: str, model: str) -> None:
    """Raise :class:`PricingError` if ``model`` has no price (to fail closed before sending)."""
    if _lookup(provider, model) is None:
        raise PricingError(
            f"No price is known for model {model!r} at provider {provider!r} in "
            f"{price_version()}.",
            hint="Use a priced model id (see `cencori-nb ask --help`), or send it with your own"
            " key (BYOK), where an unknown price is recorded as 'cost unknown'.",
            provider=provider, model=model)


def _reset_for_tests() -> None:
    with _lock:
        _lookups.clear()
