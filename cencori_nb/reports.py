"""pandas views of the ledger: usage rows, spend grouped in SQL, and BYOK-vs-managed costs.

Only reads the ledger (never calls a provider). pandas is imported inside the functions so
``import cencori_nb`` stays light. Money is summed exactly in SQLite (integer pico-USD) and
converted to float USD only at the end, for plotting and display.

Columns used across the views:

- ``provider_cost_usd``: the provider's list price (what BYOK pays the provider);
- ``credits_charged_usd``: what the Cencori wallet was charged;
- ``cost_usd``: what the request cost its user, computed once when it was settled
  (:func:`cencori_nb.accounting.cost_of`) and stored on its row: the credits charged for a
  managed request, the provider price plus any BYOK fee for a BYOK one, 0 for cache hits
  and test-key requests. Every view reads that stored value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from . import pricing
from .ledger import BILLED_SQL, COLUMNS, COST_SQL, DAY_MS, PUSD, default_ledger, parse_since
from .settings import load_settings
from .types import Usage

__all__ = ["GROUPINGS", "compare_costs", "spend", "usage"]

# how each ``by`` value is computed in SQL over the daily source (``day`` = UTC epoch day)
GROUPINGS: dict[str, str] = {
    "day": "day",
    # Monday of the ISO week: day 0 (1970-01-01) was a Thursday
    "week": "day - ((day + 3) % 7)",
    "month": "strftime('%Y-%m', day * 86400, 'unixepoch')",  # PostgreSQL: _PG_GROUPINGS
    "provider": "provider",
    "model": "model",
    "route": "route",
    "project": "project",
    "status": "status",
    "member": "member",
}
# what differs on a PostgreSQL ledger (no strftime there)
_PG_GROUPINGS = {"month": "to_char(to_timestamp(day * 86400) AT TIME ZONE 'UTC', 'YYYY-MM')"}
_TIME_KEYS = {"day", "week"}
_SOURCE_COLUMNS = (
    "day, project, member, provider, model, route, status, requests, input_tokens, "
    "output_tokens, cache_read_tokens, cache_write_tokens, provider_cost_pusd, "
    "credits_charged_pusd, cost_pusd, unpriced, estimated"
)
_RAW_AS_SOURCE = (
    f"ts_ms / {DAY_MS}, project, member, provider, COALESCE(model, model_requested, ''), "
    "route, status, 1, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
    f"provider_cost_pusd, credits_charged_pusd, COALESCE({COST_SQL}, 0), "
    "CASE WHEN provider_cost_pusd IS NULL THEN 1 ELSE 0 END, "
    "CASE WHEN estimated != 0 THEN 1 ELSE 0 END"
)


def _daily_source(
    since: Any, project: str | None, member: str | None = None
) -> tuple[str, list[Any]]:
    """A ``WITH src AS (...)`` clause: whole days from the ``requests_daily`` rollup, and the
    rows of a partial first day (when ``since`` is not midnight) from ``requests``."""
    since_ms = parse_since(since)
    proj = (" AND project = ?" if project else "") + (" AND member = ?" if member else "")
    pparam = ([project] if project else []) + ([member] if member else [])
    if since_ms is None:
        return (
            f"WITH src AS (SELECT {_SOURCE_COLUMNS} FROM requests_daily "  # noqa: S608
            f"WHERE TRUE{proj})",
            pparam,
        )
    first_full_day = -(-since_ms // DAY_MS)  # ceil: the first whole day
    sql = (
        f"WITH src AS (SELECT {_SOURCE_COLUMNS} FROM requests_daily "  # noqa: S608
        f"WHERE day >= ?{proj} UNION ALL SELECT {_RAW_AS_SOURCE} FROM requests "
        f"WHERE ts_ms >= ? AND ts_ms < ?{proj})"
    )
    return sql, [first_full_day, *pparam, since_ms, first_full_day * DAY_MS, *pparam]


# Peers' BYOK terms (docs/cencori.md, "Peers' BYOK terms")
OPENROUTER_BYOK_FEE_PCT = Decimal(5)
OPENROUTER_FREE_REQUESTS = 1_000_000
CLOUDFLARE_CREDIT_FEE_PCT = Decimal(5)
DEFAULT_TOKENS_PER_REQUEST = 1000


def _usd(pusd: Any) -> float:
    """Exact integer pico-USD → float USD (correctly rounded), NaN for NULL."""
    return math.nan if pusd is None else int(pusd) / PUSD


def usage(since: Any = None, project: str | None = None, member: str | None = None) -> Any:
    """Ledger rows as a DataFrame, oldest first: every member's rows (the ``member``
    column says whose) unless ``member`` names one.

    ``since``: ``"7d"``, ``"24h"``, ``"30m"``, ``"2w"``, an ISO date, a ``datetime`` or a
    ``date``. Money columns are float USD (NaN = no price known); ``time`` is UTC.
    ``cost_usd`` is what each request cost you, as stored when it was settled;
    ``test_mode`` marks requests made with a Cencori test key (free).
    """
    import pandas as pd

    led = default_ledger()
    where, params = led.where(since=since, project=project, member=member)
    # constant column names and expressions; values are bound parameters
    sql = (
        f"SELECT {', '.join(COLUMNS)} FROM requests "  # noqa: S608
        f"WHERE {where} ORDER BY ts_ms, id"
    )
    rows = led.query(sql, params)
    money = [COLUMNS.index(c) for c in COLUMNS if c.endswith("_pusd")]
    # convert the exact integers before pandas sees them (it would turn NULLs into floats)
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(COLUMNS)
    data = {}
    for i, name in enumerate(COLUMNS):
        if i in money:
            data[name.replace("_pusd", "_usd")] = [_usd(v) for v in columns[i]]
        else:
            data[name] = list(columns[i])
    frame = pd.DataFrame(data)
    frame.insert(0, "time", pd.to_datetime(frame.pop("ts_ms").astype("int64"), unit="ms", utc=True))
    frame["estimated"] = frame["estimated"].astype(bool)
    frame["test_mode"] = frame["test_mode"].astype(bool)
    return frame


def _by_list(by: str | Iterable[str]) -> list[str]:
    keys = [by] if isinstance(by, str) else list(by)
    bad = [k for k in keys if k not in GROUPINGS]
    if bad or not keys:
        from .errors import ConfigurationError

        raise ConfigurationError(
            f"Cannot group spend by {bad or by!r}.",
            hint="Use one or more of: " + ", ".join(GROUPINGS) + ".",
        )
    return keys


def spend(
    by: str | Iterable[str] = "day",
    since: Any = None,
    project: str | None = None,
    member: str | None = None,
) -> Any:
    """Spend grouped by ``day``, ``week``, ``month``, ``provider``, ``model``, ``route``,
    ``project``, ``member`` or ``status`` (or a list of them), of every member unless
    ``member`` names one, computed with SQL ``GROUP BY`` over the
    ledger's per-day rollup (plus the rows of a partial first day when ``since`` is not a
    UTC midnight), so a million-row ledger answers in milliseconds.

    Columns: the keys, then ``requests`` (all rows), ``errors``, ``cached``,
    ``interrupted``, ``input_tokens`` / ``output_tokens`` (billed requests only: ``ok`` and
    ``interrupted``), ``provider_cost_usd``, ``credits_charged_usd``, ``cost_usd``, and
    what the sums cannot vouch for: ``unpriced`` (billed rows with no known price, left out
    of ``provider_cost_usd`` and ``cost_usd``) and ``estimated`` (billed rows whose tokens,
    so cost, are estimates: a stream cut or stopped part way, usage never sent). Time keys
    are UTC timestamps (the day, or the Monday of the week); rows are in time order, else
    by cost (largest first).
    """
    import pandas as pd

    keys = _by_list(by)
    led = default_ledger()
    source, params = _daily_source(since, project, member)
    groupings = {**GROUPINGS, **_PG_GROUPINGS} if led.dialect == "postgresql" else GROUPINGS
    key_sql = ", ".join(f"{groupings[k]} AS k{i}" for i, k in enumerate(keys))
    group = ", ".join(f"k{i}" for i in range(len(keys)))
    ok = BILLED_SQL
    # keys come from GROUPINGS (validated); values are bound parameters
    sql = (
        f"{source} SELECT {key_sql}, SUM(requests), "  # noqa: S608
        "SUM(CASE WHEN status = 'error' THEN requests ELSE 0 END), "
        "SUM(CASE WHEN status = 'cached' THEN requests ELSE 0 END), "
        "SUM(CASE WHEN status = 'interrupted' THEN requests ELSE 0 END), "
        f"SUM(CASE WHEN {ok} THEN input_tokens ELSE 0 END), "
        f"SUM(CASE WHEN {ok} THEN output_tokens ELSE 0 END), "
        f"SUM(CASE WHEN {ok} THEN unpriced ELSE 0 END), "
        f"SUM(CASE WHEN {ok} THEN estimated ELSE 0 END), "
        f"SUM(CASE WHEN {ok} THEN provider_cost_pusd END), "
        "SUM(credits_charged_pusd), SUM(cost_pusd) "
        f"FROM src GROUP BY {group} ORDER BY {group}"
    )
    rows = led.query(sql, params)
    n = len(keys)
    # exact integer sums → float USD here, before pandas sees them
    counts = [
        "requests",
        "errors",
        "cached",
        "interrupted",
        "input_tokens",
        "output_tokens",
        "unpriced",
        "estimated",
    ]
    names = [*keys, *counts, "provider_cost_usd", "credits_charged_usd", "cost_usd"]
    m = n + len(counts)
    records = [
        (
            *r[:n],
            *(int(v or 0) for v in r[n:m]),
            _usd(r[m]),
            _usd(r[m + 1] or 0),
            _usd(r[m + 2] or 0),
        )
        for r in rows
    ]
    frame = pd.DataFrame.from_records(records, columns=names)
    for key in keys:
        if key in _TIME_KEYS:
            frame[key] = pd.to_datetime(frame[key].astype("int64") * DAY_MS, unit="ms", utc=True)
    for col in counts:
        frame[col] = frame[col].astype("int64")
    if not any(k in _TIME_KEYS or k == "month" for k in keys):
        frame = frame.sort_values("cost_usd", ascending=False, kind="stable")
    return frame.reset_index(drop=True)


# -- BYOK versus managed ---------------------------------------------------------------


def _workload_rows(workload: Any, since: Any, project: str | None) -> list[dict[str, Any]]:
    """Normalise the workload into dicts with exact (Decimal) provider costs."""
    if _is_ledger(workload):
        led = default_ledger()
        source, params = _daily_source(since, project)
        rows = led.query(
            f"{source} SELECT provider, model, SUM(requests), "  # noqa: S608
            "SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens), "
            "SUM(cache_write_tokens), SUM(provider_cost_pusd), SUM(unpriced) "
            "FROM src WHERE status = 'ok' GROUP BY 1, 2 ORDER BY 1, 2",
            params,
        )
        return [
            {
                "provider": p,
                "model": m,
                "requests": int(n),
                "input_tokens": int(i or 0),
                "output_tokens": int(o or 0),
                "cache_read_tokens": int(cr or 0),
                "cache_write_tokens": int(cw or 0),
                "provider_cost": None if cost is None or unpriced else Decimal(int(cost)) / PUSD,
            }
            for p, m, n, i, o, cr, cw, cost, unpriced in rows
        ]
    if hasattr(workload, "to_dict") and hasattr(workload, "columns"):
        records = workload.to_dict("records")
    elif isinstance(workload, Mapping):
        records = [dict(workload)]
    else:
        records = [dict(r) if isinstance(r, Mapping) else _completion_record(r) for r in workload]
    out = []
    for rec in records:
        if "model" not in rec:
            from .errors import ConfigurationError

            raise ConfigurationError(
                "Each workload row needs a 'model' (and 'input_tokens', 'output_tokens'; "
                "optional 'requests', 'provider', 'cache_read_tokens', 'cache_write_tokens', "
                "'cache_write_1h_tokens')."
            )
        inp = int(rec.get("input_tokens") or 0)
        outp = int(rec.get("output_tokens") or 0)
        req = rec.get("requests")
        if req is None or (isinstance(req, float) and math.isnan(req)):
            # a typical prompt of ~1,000 tokens; keeps each request below long-context tiers
            req = max(1, math.ceil(inp / DEFAULT_TOKENS_PER_REQUEST))
        req = max(1, int(req))
        provider = rec.get("provider") or "cencori"  # "cencori": infer from the model name
        cr = _count(rec, "cache_read_tokens")
        cw = _count(rec, "cache_write_tokens")
        # of cw, Anthropic's 1-hour writes: their own rate (a ledger row keeps them apart)
        cw_1h = _count(rec, "cache_write_1h_tokens")
        problem = pricing.usage_problem(Usage(inp, outp, cr, cw, cache_write_1h_tokens=cw_1h))
        if problem is not None:
            from .errors import ConfigurationError

            raise ConfigurationError(
                f"The workload row for model {rec['model']!r} cannot be priced: {problem}.",
                hint="Give the counts as a provider reports them: input_tokens include the "
                "cache reads and writes, cache_write_tokens the 1-hour writes; none below 0.",
            )
        # Price one average request, then multiply: tiers apply per request, not per month.
        n = Decimal(req)
        # Usage holds whole tokens; an average request's are fractional, and pricing's
        # arithmetic (Decimal throughout) takes them as they are.
        avg_tokens = (Decimal(inp) / n, Decimal(outp) / n, Decimal(cr) / n, Decimal(cw) / n)
        avg = Usage(*avg_tokens, cache_write_1h_tokens=Decimal(cw_1h) / n)  # type: ignore[arg-type]  # fractional tokens, see above
        quote = pricing.provider_cost(str(provider), str(rec["model"]), avg)
        out.append(
            {
                "provider": provider,
                "model": str(rec["model"]),
                "requests": req,
                "input_tokens": inp,
                "output_tokens": outp,
                "cache_read_tokens": cr,
                "cache_write_tokens": cw,
                "provider_cost": None if quote.cost_usd is None else quote.cost_usd * n,
            }
        )
    return out


def _count(rec: Mapping[str, Any], name: str) -> int:
    """A token count of a workload row; 0 when absent or NaN (a frame joining rows from
    before a column existed)."""
    value = rec.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 0
    return int(value)


def _completion_record(obj: Any) -> dict[str, Any]:
    return {
        "model": obj.model,
        "provider": obj.provider,
        "input_tokens": obj.input_tokens,
        "output_tokens": obj.output_tokens,
        "requests": 1,
        "cache_read_tokens": getattr(obj, "cache_read_tokens", 0),
        "cache_write_tokens": getattr(obj, "cache_write_tokens", 0),
        "cache_write_1h_tokens": getattr(obj, "cache_write_1h_tokens", 0),
    }


def compare_costs(
    workload_or_usage: Any = None,
    *,
    byok_policy: str | None = None,
    byok_fee_pct: Decimal | float | None = None,
    markup_pct: Decimal | float | None = None,
    include_peers: bool = True,
    plan_fee_usd: Decimal | float | None = None,
    since: Any = "30d",
    project: str | None = None,
    include_batch: bool = False,
) -> Any:
    """Is BYOK or managed cheaper for this work? One row per model, monthly amounts in USD.

    ``workload_or_usage``: None or ``"ledger"`` (the ledger's successful requests since
    ``since``, default the last 30 days, priced as recorded), or a what-if: a DataFrame, a
    list of dicts or one dict with ``model``, ``input_tokens``, ``output_tokens`` (monthly),
    optional ``requests`` (default: one per 1,000 input tokens), ``provider``,
    ``cache_read_tokens``, ``cache_write_tokens`` and ``cache_write_1h_tokens`` (of the
    cache writes, Anthropic's 1-hour ones, at their own rate; a :func:`usage` frame has
    every column, so its rows are priced again as they were settled). What-ifs are priced
    per average request with genai-prices (so long-context tiers apply per request).

    Columns: ``provider, model, requests, input_tokens, output_tokens, provider_cost_usd``
    (what BYOK pays the provider), ``managed_charge_usd`` (provider × (1 + markup)),
    ``byok_fee_usd`` and ``byok_total_usd`` under the BYOK policy (settings by default),
    ``savings_usd`` (managed − BYOK total) and ``cheaper``. With ``include_peers``:
    ``openrouter_byok_usd`` (5% fee, waived for the first 1M requests a month, across the
    workload), ``vercel_byok_usd`` (no markup), ``cloudflare_credits_usd`` (no markup, 5% on
    the credits bought). With ``plan_fee_usd`` (a monthly plan that makes BYOK cheaper):
    ``break_even_requests`` / ``break_even_tokens``, the monthly volume (whole, rounded up) at
    which that model's savings pay the plan (inf if BYOK never saves). With ``include_batch``
    (opt-in): ``batch_usd``, what the same work costs through the provider's Batch API with
    your own key (:func:`cencori_nb.pricing.batch_price` of the provider cost, the rule
    :mod:`cencori_nb.jobs` bills by; NaN for a provider without a Batch API). Ledger rows a
    batch job recorded are already at the batch price and count as recorded, not discounted
    again. ``frame.attrs["totals"]`` holds the sums (``batch_usd`` too, over the rows that
    have one) and the workload's own break-even multiple.

    Raises :class:`~cencori_nb.errors.ConfigurationError` for a policy not in ``zero``,
    ``percent``, ``managed``, a what-if row without ``model``, or one whose counts no
    request has (:func:`cencori_nb.pricing.usage_problem`: a count below 0, cache reads and
    writes past ``input_tokens``, 1-hour writes past ``cache_write_tokens``).
    """
    import pandas as pd

    s = load_settings()
    policy = byok_policy or s.byok_policy
    if policy not in ("zero", "percent", "managed"):
        from .errors import ConfigurationError

        raise ConfigurationError(f"byok_policy {policy!r} is not one of zero, percent, managed.")
    fee_pct = Decimal(str(byok_fee_pct)) if byok_fee_pct is not None else s.byok_fee_pct
    markup = Decimal(str(markup_pct)) if markup_pct is not None else s.markup_pct
    plan = Decimal(str(plan_fee_usd)) if plan_fee_usd is not None else None
    rows = _workload_rows(workload_or_usage, since, project)
    recorded_batch = (
        _recorded_at_batch_price(since, project)
        if include_batch and _is_ledger(workload_or_usage)
        else {}
    )
    total_requests = sum(r["requests"] for r in rows)
    waived_share = (
        Decimal(0)
        if total_requests <= OPENROUTER_FREE_REQUESTS
        else Decimal(total_requests - OPENROUTER_FREE_REQUESTS) / total_requests
    )

    records = []
    totals = {
        "provider_cost_usd": Decimal(0),
        "managed_charge_usd": Decimal(0),
        "byok_total_usd": Decimal(0),
    }
    if include_batch:
        totals["batch_usd"] = Decimal(0)
    for r in rows:
        cost: Decimal | None = r["provider_cost"]
        rec: dict[str, Any] = {
            k: r[k] for k in ("provider", "model", "requests", "input_tokens", "output_tokens")
        }
        if cost is None:
            managed = fee = byok = savings = None
        else:
            managed = cost * (1 + markup / 100)
            fee = {"zero": Decimal(0), "percent": cost * fee_pct / 100, "managed": managed}[policy]
            byok = cost + fee
            totals["provider_cost_usd"] += cost
            totals["managed_charge_usd"] += managed
            totals["byok_total_usd"] += byok
            savings = managed - byok
        rec.update(
            provider_cost_usd=cost,
            managed_charge_usd=managed,
            byok_fee_usd=fee,
            byok_total_usd=byok,
            savings_usd=savings,
            cheaper="unknown"
            if savings is None
            else "byok"
            if savings > 0
            else "managed"
            if savings < 0
            else "equal",
        )
        if include_peers:
            rec["openrouter_byok_usd"] = (
                None if cost is None else cost + cost * OPENROUTER_BYOK_FEE_PCT / 100 * waived_share
            )
            rec["vercel_byok_usd"] = cost
            rec["cloudflare_credits_usd"] = (
                None if cost is None else cost * (1 + CLOUDFLARE_CREDIT_FEE_PCT / 100)
            )
        if include_batch:
            already = recorded_batch.get((r["provider"], r["model"]), Decimal(0))
            live_part = None if cost is None else pricing.batch_price(r["provider"], cost - already)
            rec["batch_usd"] = None if live_part is None else live_part + already
            if rec["batch_usd"] is not None:
                totals["batch_usd"] += rec["batch_usd"]
        if plan is not None:
            tokens = r["input_tokens"] + r["output_tokens"]
            if savings is None:
                rec["break_even_requests"] = rec["break_even_tokens"] = math.nan
            elif savings <= 0:
                rec["break_even_requests"] = rec["break_even_tokens"] = math.inf
            else:
                # Whole requests and tokens: the first volume at which the plan has paid
                # (rounded to 6 places first so float noise never adds one).
                rec["break_even_requests"] = float(
                    math.ceil(round(float(plan * r["requests"] / savings), 6))
                )
                rec["break_even_tokens"] = float(
                    math.ceil(round(float(plan * tokens / savings), 6))
                )
            rec["plan_fee_usd"] = plan
        records.append(rec)

    frame = pd.DataFrame.from_records(
        records, columns=_compare_columns(include_peers, plan, include_batch)
    )
    money = [c for c in frame.columns if c.endswith("_usd")]
    for col in money:
        frame[col] = [math.nan if v is None else float(v) for v in frame[col]]
    savings_total = totals["managed_charge_usd"] - totals["byok_total_usd"]
    frame.attrs["totals"] = {
        **{k: float(v) for k, v in totals.items()},
        "savings_usd": float(savings_total),
        "requests": total_requests,
        "byok_policy": policy,
        "markup_pct": float(markup),
        "break_even_multiple": (
            None
            if plan is None
            else math.inf
            if savings_total <= 0
            else float(plan / savings_total)
        ),
    }
    return frame


def _is_ledger(workload: Any) -> bool:
    return workload is None or (isinstance(workload, str) and workload == "ledger")


def _recorded_at_batch_price(since: Any, project: str | None) -> dict[tuple[str, str], Decimal]:
    """``{(provider, model): provider cost}`` of the ok ledger rows since ``since`` that a
    provider batch job recorded (already at the batch price: their ``price_version`` ends
    with :data:`cencori_nb.pricing.BATCH_PRICE_VERSION_SUFFIX`). Read from ``requests``:
    the daily rollup does not keep the price version."""
    where, params = default_ledger().where(since=since, project=project)
    rows = default_ledger().query(
        "SELECT provider, COALESCE(model, model_requested, ''), SUM(provider_cost_pusd) "  # noqa: S608
        f"FROM requests WHERE {where} AND status = 'ok' AND price_version LIKE ? "
        "GROUP BY 1, 2",
        [*params, "%" + pricing.BATCH_PRICE_VERSION_SUFFIX],
    )
    return {(p, m): Decimal(int(c)) / PUSD for p, m, c in rows if c is not None}


def _compare_columns(
    include_peers: bool, plan: Decimal | None, include_batch: bool = False
) -> list[str]:
    cols = [
        "provider",
        "model",
        "requests",
        "input_tokens",
        "output_tokens",
        "provider_cost_usd",
        "managed_charge_usd",
        "byok_fee_usd",
        "byok_total_usd",
        "savings_usd",
        "cheaper",
    ]
    if include_peers:
        cols += ["openrouter_byok_usd", "vercel_byok_usd", "cloudflare_credits_usd"]
    if plan is not None:
        cols += ["plan_fee_usd", "break_even_requests", "break_even_tokens"]
    if include_batch:
        cols.append("batch_usd")
    return cols
