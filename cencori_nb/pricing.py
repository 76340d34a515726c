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
a request costs a few microseconds after the first call.

**The price table on disk.** Importing genai-prices (pydantic, its 1.5 MB data module) costs
about 0.2 s of CPU, paid by the first request or ``map`` of every process. So each lookup's
result (the model id, its context window, its price periods in the form the fast path
uses) is also written to ``prices.json`` in the home, keyed by the installed genai-prices
files (path, size, modification time) and this module's own: a later process prices from
that file without importing genai-prices, with the same numbers and the same
``price_version``. Only the first process after an install or upgrade, and a model no
process has priced yet, import genai-prices. A price shape the fast path does not cover is
recorded as such and computed by genai-prices itself, as before. The file is an
optimisation and is trusted no more than that: a symlink, a file or home writable by others
or owned by someone else, a damaged file or one written for other genai-prices files (a
synced home, an upgrade) is ignored and replaced; a home that does not exist is not
created for it. A custom genai-prices snapshot set in the process (``UpdatePrices``) is
always used directly.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import stat
import sys
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any

from . import state
from .errors import PricingError

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo, ModelPrice
    from genai_prices.types import Provider as GenaiProvider

    from .types import Usage

    _Found = tuple[GenaiProvider, ModelInfo]

__all__ = [
    "BATCH_PRICE_FACTOR",
    "BATCH_PRICE_VERSION_SUFFIX",
    "MAX_REQUEST_TOKENS",
    "PROVIDER_IDS",
    "PriceQuote",
    "batch_price",
    "context_window",
    "estimate_cost",
    "genai_provider_id",
    "price_version",
    "provider_cost",
    "request_usage_problem",
    "require_price",
    "unit_prices",
    "usage_problem",
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


_version: str | None = None  # price_version(), once per process


def price_version() -> str:
    """``genai-prices <version> (data <date>)``: the price table every cost comes from.

    The date is the most recent "verified on / checked / as of" date in the bundled data,
    read once per process (the package has no explicit snapshot date), from the price
    table on disk when it has it.
    """
    global _version
    version = _version
    if version is None:
        table = _disk_table()
        version = table.version if table is not None and table.version else None
        if version is None:
            version = _genai_price_version()
            if table is not None:
                table.version = version
        _version = version
    return version


def _genai_price_version() -> str:
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
_lookups: dict[tuple[str, str], _Model | None] = {}  # (provider, model) -> its prices
_found: dict[tuple[str, str], _Found | None] = {}  # the same in genai-prices' own objects


def _lookup(provider: str, model: str) -> _Model | None:
    """The prices of ``model`` at ``provider`` (None if it has none): from this process's
    memo, else the price table on disk, else genai-prices (then written to the table)."""
    key = (provider, model)
    try:
        return _lookups[key]
    except KeyError:
        pass
    table = _disk_table()
    if table is not None and key in table.entries:
        entry = table.entries[key]
    else:
        found = _genai_lookup(provider, model)
        entry = None if found is None else _model_of(found[1])
        if table is not None:
            _remember(table, key, entry)
    with _lock:
        _lookups[key] = entry
    return entry


def _genai_lookup(provider: str, model: str) -> _Found | None:
    """genai-prices' (provider, model info) pair for ``model``, or None if it has no price."""
    key = (provider, model)
    try:
        return _found[key]
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
        _found[key] = found
    return found


def catalogue_models(provider: str) -> tuple[str, ...]:
    """The model ids genai-prices lists for ``provider`` (ours; empty for local servers)."""
    pid = PROVIDER_IDS.get(provider)
    if not pid:
        return ()
    table = _disk_table()
    if table is not None and table.models is not None:
        return table.models.get(pid, ())
    models = _genai_models()
    if table is not None:
        with _table_lock:
            table.models = models
        _save(table)
    return models.get(pid, ())


def _genai_models() -> dict[str, tuple[str, ...]]:
    from genai_prices import data_snapshot

    wanted = {pid for pid in PROVIDER_IDS.values() if pid}
    out: dict[str, list[str]] = {}
    for entry in data_snapshot.get_snapshot().providers:
        if entry.id in wanted:
            out.setdefault(entry.id, []).extend(m.id for m in entry.models)
    return {pid: tuple(ids) for pid, ids in out.items()}


def _genai_usage(usage: Usage) -> Any:
    from genai_prices import Usage as GenaiUsage

    values = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    if usage.cache_read_tokens:
        values["cache_read_tokens"] = usage.cache_read_tokens
    if usage.cache_write_tokens:
        values["cache_write_tokens"] = usage.cache_write_tokens
    if usage.cache_write_1h_tokens:  # of cache_write_tokens: genai-prices prices the share
        values["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
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
    entry = _lookup(provider, model)
    if entry is None:
        return PriceQuote(None, version)
    ts = _utc(when)
    rates = entry.rates_at(ts)
    # 1-hour cache writes have their own rate, which the fast path does not carry
    if rates is not None and not usage.cache_write_1h_tokens:
        return PriceQuote(_fast_cost(rates, usage), version)
    found = _genai_lookup(provider, model)
    if found is None:  # pragma: no cover - the table said it has a price; genai-prices agrees
        return PriceQuote(None, version)
    gprovider, ginfo = found
    calc = ginfo.calc_price(_genai_usage(usage), gprovider, genai_request_timestamp=ts)
    return PriceQuote(Decimal(calc.total_price), version)


# -- fast path -----------------------------------------------------------------------------
# genai-prices' general calculation (unit registry, usage decomposition) costs ~100 µs a
# call. For the price shapes of chat models (input, output, cache read/write, optional
# token tiers and a per-request fee) the same arithmetic is a few multiplications; any
# other price key sends the request through genai-prices itself. Units we never report
# (audio, images, searches…) have zero usage, so they add nothing and subtract nothing;
# 1-hour cache writes are reported (Anthropic) but priced by genai-prices (provider_cost
# skips the fast path when a request has any).
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
_MTOK = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class _Tiers:
    """genai-prices' ``TieredPrices``: ``base`` until the first ``(start, price)`` tier."""

    base: Decimal
    tiers: tuple[tuple[int, Decimal], ...]  # ascending start


_Price = Decimal | _Tiers
# input, output, cache read, cache write per million tokens; fee per thousand requests
_Rates = tuple[_Price, _Price, _Price, _Price, _Price | None]
# when a period's prices apply: always, from a UTC date on, or daily between two UTC times
_When = date | tuple[time, time] | None


@dataclass(frozen=True, slots=True)
class _Period:
    when: _When
    rates: _Rates | None  # None: a price shape only genai-prices computes

    def active(self, ts: datetime) -> bool:
        """genai-prices' ``StartDateConstraint`` / ``TimeOfDateConstraint``, in UTC."""
        when = self.when
        if when is None:
            return True
        if isinstance(when, tuple):
            start, end = when
            now = ts.astimezone(UTC).time()
            if end < start:
                return now >= start or now < end
            return start <= now < end
        return ts.astimezone(UTC).date() >= when


@dataclass(frozen=True, slots=True)
class _Model:
    """What a lookup found: the model's id, context window and price periods."""

    model_id: str
    context_window: int | None
    # in genai-prices' order: the last active period applies, the first when none is;
    # empty: prices this module cannot select (genai-prices computes every request)
    periods: tuple[_Period, ...]

    def rates_at(self, ts: datetime) -> _Rates | None:
        """The fast-path rates at ``ts``, or None: ask genai-prices."""
        periods = self.periods
        if not periods:
            return None
        if len(periods) == 1:
            return periods[0].rates
        for period in reversed(periods):
            if period.active(ts):
                return period.rates
        return periods[0].rates


def _model_of(ginfo: ModelInfo) -> _Model:
    """A genai-prices ``ModelInfo`` as a :class:`_Model` (the same prices, plain values)."""
    from genai_prices.types import ModelPrice, StartDateConstraint, TimeOfDateConstraint

    window = int(ginfo.context_window) if ginfo.context_window else None
    prices = ginfo.prices
    periods: list[_Period] = []
    if isinstance(prices, ModelPrice):
        periods.append(_Period(None, _rates_of(prices)))
    else:
        for conditional in prices:
            constraint = conditional.constraint
            when: _When
            if constraint is None:
                when = None
            elif isinstance(constraint, StartDateConstraint):
                when = constraint.start_date
            elif isinstance(constraint, TimeOfDateConstraint):
                when = (_utc_time(constraint.start_time), _utc_time(constraint.end_time))
            else:  # a constraint newer than this module: genai-prices decides every time
                return _Model(ginfo.id, window, ())
            periods.append(_Period(when, _rates_of(conditional.prices)))
    return _Model(ginfo.id, window, tuple(periods))


def _utc_time(value: time) -> time:
    """A time of day as a naive UTC time (a naive one is UTC already), like genai-prices."""
    if value.tzinfo is None:
        return value
    return datetime.combine(date(1970, 1, 1), value).astimezone(UTC).time()


def _rates_of(model_price: ModelPrice) -> _Rates | None:
    """The fast-path rates of a ``ModelPrice``, or None if its shape needs genai-prices."""
    from genai_prices.types import TieredPrices

    values: dict[str, Any] = {
        k: v for k, v in model_price.__dict__.items() if not k.startswith("_") and v is not None
    }
    if not (
        set(values) <= _FAST_KEYS | _ZERO_USAGE_KEYS
        and "input_mtok" in values
        and "output_mtok" in values
    ):
        return None
    plain: dict[str, _Price] = {}
    for name in _FAST_KEYS & set(values):
        value = values[name]
        if isinstance(value, TieredPrices):
            # genai-prices keeps its tiers sorted by start (TieredPrices.__post_init__)
            tiers = tuple((int(t.start), Decimal(t.price)) for t in value.tiers)
            plain[name] = _Tiers(Decimal(value.base), tiers)
        elif isinstance(value, Decimal):
            plain[name] = value
        else:  # a price type newer than this module
            return None
    inp = plain["input_mtok"]
    return (
        inp,
        plain["output_mtok"],
        plain.get("cache_read_mtok", inp),
        plain.get("cache_write_mtok", inp),
        plain.get("requests_kcount"),
    )


def _tier(price: _Price, total_input: int) -> Decimal:
    """genai-prices' "cliff" tiers: past a threshold, every token pays the tier price."""
    if isinstance(price, Decimal):
        return price
    for start, tier_price in reversed(price.tiers):
        if total_input > start:
            return tier_price
    return price.base


def _fast_cost(rates: _Rates, usage: Usage) -> Decimal:
    p_in, p_out, p_cr, p_cw, p_req = rates
    total_in = usage.input_tokens
    cr, cw = usage.cache_read_tokens, usage.cache_write_tokens
    if (
        p_req is None
        and isinstance(p_in, Decimal)
        and isinstance(p_out, Decimal)
        and isinstance(p_cr, Decimal)
        and isinstance(p_cw, Decimal)
    ):  # no tiers, no fee (most models): the same sum without four calls
        return (
            p_in * (total_in - cr - cw) + p_cr * cr + p_cw * cw + p_out * usage.output_tokens
        ) / _MTOK
    cost = (
        _tier(p_in, total_in) * (total_in - cr - cw)
        + _tier(p_cr, total_in) * cr
        + _tier(p_cw, total_in) * cw
        + _tier(p_out, total_in) * usage.output_tokens
    ) / _MTOK
    if p_req is not None:
        cost += _tier(p_req, total_in) / 1000
    return cost


# The counts a price depends on, in the order a problem with them is named.
_PRICED_COUNTS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
)
# Counts a price does not read that the ledger keeps all the same (a row holds no count
# below 0: ledger._NON_NEGATIVE refuses it on a replay)
_KEPT_COUNTS = ("thinking_tokens", "image_tokens")


def usage_problem(usage: Usage) -> str | None:
    """What makes ``usage`` counts no request can have, in words naming the field, or None.

    A count below 0; cache reads and writes past the input (``input_tokens`` include
    them); 1-hour writes past the cache writes (``cache_write_tokens`` include them).
    Priced, such counts cost less than nothing (or genai-prices refuses them): a caller
    pricing counts it did not get from a provider (a what-if, a line left on disk) asks
    this first; a provider's reply asks :func:`request_usage_problem` (this, and a bound
    on one request), and its usage is then taken as not sent."""
    for name in _PRICED_COUNTS + _KEPT_COUNTS:
        value = getattr(usage, name)
        if value < 0:
            return f"{name} is {value}, and a count cannot be negative"
    cache_read, cache_write = usage.cache_read_tokens, usage.cache_write_tokens
    if cache_read + cache_write > usage.input_tokens:
        return (
            f"cache_read_tokens + cache_write_tokens ({cache_read} + {cache_write}) exceed "
            f"input_tokens ({usage.input_tokens}), which include them"
        )
    if usage.cache_write_1h_tokens > cache_write:
        return (
            f"cache_write_1h_tokens ({usage.cache_write_1h_tokens}) exceed "
            f"cache_write_tokens ({cache_write}), which include them"
        )
    return None


# No request has a billion tokens in any count (the largest context windows hold about 10
# million): a reply that says so is broken or hostile. The bound also keeps one request's
# price within a ledger row's 64-bit pico-USD ($9.2 million): 10**9 input and 10**9 output
# tokens at the dearest list price in genai-prices ($600 per million, o1-pro's output) are
# $1.2 million. A workload (reports' what-ifs) is many requests: not bounded by it.
MAX_REQUEST_TOKENS = 10**9


def request_usage_problem(usage: Usage) -> str | None:
    """:func:`usage_problem`, or a count above :data:`MAX_REQUEST_TOKENS`: what makes
    ``usage`` impossible for one request (a provider's reply, see
    :class:`cencori_nb.providers.base.ProviderResult`), or None."""
    problem = usage_problem(usage)
    if problem is not None:
        return problem
    for name in _PRICED_COUNTS + _KEPT_COUNTS:
        value = getattr(usage, name)
        if value > MAX_REQUEST_TOKENS:
            return f"{name} is {value}, more than any request has ({MAX_REQUEST_TOKENS:,})"
    return None


def estimate_cost(
    provider: str, model: str | None, input_tokens: int, output_tokens: int
) -> Decimal | None:
    """Estimated list price of a request before it is sent (no cache discounts assumed)."""
    from .types import Usage

    return provider_cost(provider, model, Usage(int(input_tokens), int(output_tokens))).cost_usd


def unit_prices(provider: str, model: str, *, when: datetime | None = None) -> dict[str, Any]:
    """Input/output price per million tokens (base tier) for display, or {} if unknown."""
    if _lookup(provider, model) is None:
        return {}
    found = _genai_lookup(provider, model)  # display only: genai-prices' own objects
    if found is None:  # pragma: no cover - the table said it has a price; genai-prices agrees
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
    return None if found is None else found.context_window


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


# -- the price table on disk ---------------------------------------------------------------
# See the module docstring. One JSON file in the home; its "key" names the genai-prices
# files (and this module) it was derived from, so another install's or version's table is
# never read as this one's.
TABLE_NAME = "prices.json"
_TABLE_FORMAT = 1
_TABLE_MAX_BYTES = 4 << 20
_table_lock = threading.Lock()


@dataclass
class _Table:
    path: Path
    key: list[Any]
    version: str | None = None
    models: dict[str, tuple[str, ...]] | None = None  # genai-prices provider id -> model ids
    entries: dict[tuple[str, str], _Model | None] = field(default_factory=dict)


_table_memo: _Table | None = None


class _Damaged(ValueError):
    """A price table that does not parse as one this module writes."""


def _disk_table() -> _Table | None:
    """This home's price table for the installed genai-prices (read at most once per home;
    empty if absent, refused or damaged), or None: no table (a custom snapshot is set, or
    genai-prices' files cannot be found)."""
    global _table_memo
    snapshot = sys.modules.get("genai_prices.data_snapshot")
    if snapshot is not None and getattr(snapshot, "_custom_snapshot", None) is not None:
        return None  # UpdatePrices or set_custom_snapshot: genai-prices decides, always
    from .home import home_dir

    path = home_dir() / TABLE_NAME
    memo = _table_memo
    if memo is not None and memo.path == path:
        return memo
    key = _table_key()
    if key is None:
        return None
    table = _read_table(path, key) or _Table(path, key)
    with _table_lock:
        _table_memo = table
    return table


def _table_key(package: Path | None = None) -> list[Any] | None:
    """What the table was derived from: the genai-prices package folder and the size and
    modification time of its data, logic and version files, and of this module. Found
    without importing genai-prices; None if it is not installed as files."""
    try:
        if package is None:
            import importlib.util

            spec = importlib.util.find_spec("genai_prices")
            locations = list(spec.submodule_search_locations or []) if spec else []
            if not locations:
                return None
            package = Path(locations[0])
        key: list[Any] = [_TABLE_FORMAT, str(package)]
        sources = [package / n for n in ("data.py", "types.py", "__init__.py")]
        for source in (*sources, Path(__file__)):
            st = os.stat(source)
            key.append([source.name, st.st_size, st.st_mtime_ns])
    except (OSError, ImportError, ValueError):
        return None
    return key


def _private_dir(path: Path) -> bool:
    """The home exists, is a real folder (not a symlink), ours, and no one else can write
    into it (so no one else can swap the table in it)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    if os.name == "posix" and (st.st_uid != os.geteuid() or st.st_mode & 0o022):
        return False
    return True


def _read_table(path: Path, key: list[Any]) -> _Table | None:
    """The table at ``path`` if it is a private regular file of ours in a private home,
    derived from ``key``, and well formed; else None (it will be replaced)."""
    if not _private_dir(path.parent):
        return None
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # absent, or a symlink (ELOOP)
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _TABLE_MAX_BYTES:
            return None
        if os.name == "posix" and (st.st_uid != os.geteuid() or st.st_mode & 0o077):
            return None
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(_TABLE_MAX_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return _decode_table(path, key, json.loads(data))
    except Exception:  # noqa: BLE001  (any damage: ValueError, KeyError, InvalidOperation…)
        return None


def _decode_table(path: Path, key: list[Any], raw: Any) -> _Table | None:
    if not isinstance(raw, dict) or raw.get("format") != _TABLE_FORMAT:
        raise _Damaged("not a price table of this format")
    if raw.get("key") != key:
        return None  # another install's, version's or machine's table
    version = raw["version"]
    if not isinstance(version, str) or not version.startswith("genai-prices "):
        raise _Damaged("version")
    models: dict[str, tuple[str, ...]] = {}
    for pid, ids in _dict(raw["models"]).items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise _Damaged("models")
        models[pid] = tuple(ids)
    entries: dict[tuple[str, str], _Model | None] = {}
    for item in _list(raw["entries"]):
        provider, model, entry = _list(item)
        if not isinstance(provider, str) or not isinstance(model, str):
            raise _Damaged("entry key")
        entries[(provider, model)] = None if entry is None else _decode_model(entry)
    return _Table(path, key, version, models, entries)


def _dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Damaged("expected an object")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _Damaged("expected a list")
    return value


def _decode_model(raw: Any) -> _Model:
    model_id, window, periods = _list(raw)
    if not isinstance(model_id, str):
        raise _Damaged("model id")
    if window is not None and (type(window) is not int or window <= 0):
        raise _Damaged("context window")
    out = []
    for when_raw, rates_raw in map(_list, _list(periods)):
        out.append(_Period(_decode_when(when_raw), _decode_rates(rates_raw)))
    return _Model(model_id, window, tuple(out))


def _decode_when(raw: Any) -> _When:
    if raw is None:
        return None
    if isinstance(raw, str):
        return date.fromisoformat(raw)
    start, end = (time.fromisoformat(t) for t in _list(raw))
    if start.tzinfo is not None or end.tzinfo is not None:
        raise _Damaged("times of day are written as naive UTC")
    return (start, end)


def _decode_rates(raw: Any) -> _Rates | None:
    if raw is None:
        return None
    p_in, p_out, p_cr, p_cw, p_req = (_decode_price(v) for v in _list(raw))
    if p_in is None or p_out is None or p_cr is None or p_cw is None:
        raise _Damaged("rates")
    return (p_in, p_out, p_cr, p_cw, p_req)


def _decode_price(raw: Any) -> _Price | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return _decimal(raw)
    base, tiers = _list(raw)
    pairs: list[tuple[int, Decimal]] = []
    for start, price in map(_list, _list(tiers)):
        if type(start) is not int or (pairs and start < pairs[-1][0]):
            raise _Damaged("tier start")
        pairs.append((start, _decimal(price)))
    return _Tiers(_decimal(base), tuple(pairs))


def _decimal(raw: Any) -> Decimal:
    if not isinstance(raw, str):
        raise _Damaged("price")
    value = Decimal(raw)
    if not value.is_finite() or value < 0:
        raise _Damaged("price")
    return value


def _encode_table(table: _Table) -> bytes:
    entries = [
        [provider, model, None if entry is None else _encode_model(entry)]
        for (provider, model), entry in sorted(table.entries.items())
    ]
    raw = {
        "format": _TABLE_FORMAT,
        "key": table.key,
        "version": table.version,
        "models": {pid: list(ids) for pid, ids in sorted((table.models or {}).items())},
        "entries": entries,
    }
    return json.dumps(raw, separators=(",", ":")).encode()


def _encode_model(entry: _Model) -> list[Any]:
    periods = [[_encode_when(p.when), _encode_rates(p.rates)] for p in entry.periods]
    return [entry.model_id, entry.context_window, periods]


def _encode_when(when: _When) -> Any:
    if when is None:
        return None
    if isinstance(when, tuple):
        return [when[0].isoformat(), when[1].isoformat()]
    return when.isoformat()


def _encode_rates(rates: _Rates | None) -> Any:
    return None if rates is None else [_encode_price(p) for p in rates]


def _encode_price(price: _Price | None) -> Any:
    if price is None:
        return None
    if isinstance(price, Decimal):
        return str(price)
    return [str(price.base), [[start, str(p)] for start, p in price.tiers]]


def _remember(table: _Table, key: tuple[str, str], entry: _Model | None) -> None:
    """Add one lookup to the table and save it (genai-prices is loaded by now anyway): at
    once the first time, then at most once a second while lookups keep coming (a report
    over every model), and at exit for the rest."""
    global _dirty
    with _table_lock:
        table.entries[key] = entry
        _dirty = table
        due = _monotonic() >= _saved_at + _SAVE_EVERY_S
    if due:
        _save(table)


_SAVE_EVERY_S = 1.0
_saved_at = float("-inf")
_dirty: _Table | None = None  # a table with lookups not yet on disk


def _flush_table() -> None:
    """Save what lookups the last second added (at exit)."""
    table = _dirty
    if table is not None:
        _save(table)


def _save(table: _Table) -> None:
    """Write the table (with what another process added meanwhile), if the home is ours.

    Never creates the home, never raises: the table only saves time."""
    global _dirty, _saved_at
    with _table_lock:
        _saved_at = _monotonic()
        if _dirty is table:
            _dirty = None
    if not _private_dir(table.path.parent):
        return
    try:
        if table.version is None:
            table.version = price_version()
        if table.models is None:
            table.models = _genai_models()
        with _table_lock:
            other = _read_table(table.path, table.key)
            if other is not None:
                for k, v in other.entries.items():
                    table.entries.setdefault(k, v)
            data = _encode_table(table)
            from .home import atomic_write

            atomic_write(table.path, data)
    except Exception:  # noqa: BLE001, S110  (an optimisation must not fail a request or the exit)
        pass


def _forget() -> None:
    global _table_memo, _saved_at
    _flush_table()
    with _lock:
        _lookups.clear()
        _found.clear()
    with _table_lock:
        _table_memo = None
        _saved_at = float("-inf")


atexit.register(_flush_table)


state.on_reset("pricing", _forget, env=())  # prices do not depend on the home
