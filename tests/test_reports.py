"""pandas views on a synthetic ledger: usage rows, SQL-grouped spend, BYOK vs managed."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pandas as pd
import pytest

from cencori_nb import pricing, reports
from cencori_nb.accounting import settle
from cencori_nb.errors import ConfigurationError
from cencori_nb.jobs.job import client_id
from cencori_nb.ledger import LedgerRow, default_ledger
from cencori_nb.settings import update_settings
from cencori_nb.types import Completion

NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
TODAY = NOW.replace(hour=0)
YESTERDAY = TODAY - timedelta(days=1)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


@pytest.fixture
def synthetic() -> list[LedgerRow]:
    """Six rows over two days, two routes, three models, one error, one cache hit."""
    rows = [
        LedgerRow(
            "a",
            "p1",
            "openai",
            "managed",
            model="gpt-4o",
            input_tokens=1000,
            output_tokens=500,
            provider_cost_usd=Decimal("0.0075"),
            credits_charged_usd=Decimal("0.01125"),
            ts_ms=_ms(YESTERDAY) + 1000,
        ),
        LedgerRow(
            "b",
            "p1",
            "anthropic",
            "byok",
            model="claude-haiku-4-5",
            input_tokens=2000,
            output_tokens=100,
            provider_cost_usd=Decimal("0.0025"),
            credits_charged_usd=Decimal(0),
            ts_ms=_ms(YESTERDAY) + 2000,
        ),
        LedgerRow(
            "c",
            "p2",
            "openai",
            "byok",
            model="gpt-4o",
            input_tokens=1000,
            output_tokens=500,
            provider_cost_usd=Decimal("0.0075"),
            credits_charged_usd=Decimal("0.000375"),
            ts_ms=_ms(TODAY) + 1000,
        ),
        LedgerRow(
            "d",
            "p1",
            "openai",
            "managed",
            status="error",
            model_requested="gpt-4o",
            error_code="credit_balance_exhausted",
            ts_ms=_ms(TODAY) + 2000,
        ),
        LedgerRow(
            "e",
            "p1",
            "openai",
            "managed",
            status="cached",
            model="gpt-4o",
            input_tokens=1000,
            output_tokens=500,
            provider_cost_usd=Decimal(0),
            ts_ms=_ms(TODAY) + 3000,
        ),
        LedgerRow(
            "f",
            "p1",
            "local",
            "byok",
            model="llama3.2",
            input_tokens=10,
            output_tokens=10,
            provider_cost_usd=None,
            ts_ms=_ms(TODAY) + 4000,
        ),
    ]
    default_ledger().record_many(rows)
    return rows


def test_usage_frame(synthetic: list[LedgerRow]) -> None:
    """Every row, in time order, with float money (NaN unknown) and UTC times."""
    frame = reports.usage()
    assert list(frame["request_id"]) == ["a", "b", "c", "d", "e", "f"]
    assert frame["time"].iloc[0] == pd.Timestamp(YESTERDAY + timedelta(seconds=1))
    assert str(frame["time"].dt.tz) == "UTC"
    assert frame["provider_cost_usd"].iloc[0] == 0.0075
    assert math.isnan(frame["provider_cost_usd"].iloc[5])
    # cost_usd: managed = credits; byok = provider price + credits; a BYOK row with no
    # known price is "cost unknown" (NaN), not $0
    assert list(frame["cost_usd"])[:5] == [0.01125, 0.0025, 0.0075 + 0.000375, 0.0, 0.0]
    assert math.isnan(frame["cost_usd"].iloc[5])
    assert list(frame["status"]) == ["ok", "ok", "ok", "error", "cached", "ok"]
    assert frame["error_code"].iloc[3] == "credit_balance_exhausted"


def test_usage_filters(synthetic: list[LedgerRow]) -> None:
    """since and project filter in SQL."""
    assert list(reports.usage(project="p2")["request_id"]) == ["c"]
    assert list(reports.usage(since=TODAY)["request_id"]) == ["c", "d", "e", "f"]
    assert list(reports.usage(since=TODAY.date(), project="p1")["request_id"]) == ["d", "e", "f"]
    assert len(reports.usage(since="7d")) == 6


def test_spend_by_day(synthetic: list[LedgerRow]) -> None:
    """Two days with exact totals; errors/cached counted, tokens billed only for ok rows."""
    frame = reports.spend(by="day")
    assert list(frame.columns) == [
        "day",
        "requests",
        "errors",
        "cached",
        "interrupted",
        "input_tokens",
        "output_tokens",
        "unpriced",
        "estimated",
        "provider_cost_usd",
        "credits_charged_usd",
        "cost_usd",
    ]
    assert list(frame["day"]) == [pd.Timestamp(YESTERDAY), pd.Timestamp(TODAY)]
    assert list(frame["requests"]) == [2, 4]
    assert list(frame["errors"]) == [0, 1]
    assert list(frame["cached"]) == [0, 1]
    assert list(frame["unpriced"]) == [0, 1]  # "f": llama3.2 has no price
    assert list(frame["interrupted"]) == [0, 0] and list(frame["estimated"]) == [0, 0]
    assert list(frame["input_tokens"]) == [3000, 1010]
    assert list(frame["output_tokens"]) == [600, 510]
    assert frame["provider_cost_usd"].tolist() == [0.01, 0.0075]
    assert frame["credits_charged_usd"].tolist() == [0.01125, 0.000375]
    assert frame["cost_usd"].tolist() == [0.01375, 0.007875]


def test_spend_by_week_starts_on_monday(synthetic: list[LedgerRow]) -> None:
    """Week keys are the Monday (UTC) of each row's ISO week."""
    frame = reports.spend(by="week")
    mondays = sorted({(d - timedelta(days=d.weekday())) for d in (YESTERDAY, TODAY)})
    assert list(frame["week"]) == [pd.Timestamp(m) for m in mondays]
    assert frame["requests"].sum() == 6
    assert round(frame["cost_usd"].sum(), 12) == 0.021625


def test_spend_by_provider_model_route(synthetic: list[LedgerRow]) -> None:
    """Categorical groupings, largest cost first."""
    prov = reports.spend(by="provider")
    assert list(prov["provider"]) == ["openai", "anthropic", "local"]
    assert prov["cost_usd"].tolist() == [0.01125 + 0.007875, 0.0025, 0.0]
    model = reports.spend(by="model")
    assert list(model["model"]) == ["gpt-4o", "claude-haiku-4-5", "llama3.2"]
    assert list(model["requests"]) == [4, 1, 1]
    route = reports.spend(by="route", project="p1")
    assert dict(zip(route["route"], route["cost_usd"], strict=True)) == {
        "managed": 0.01125,
        "byok": 0.0025,
    }


def test_spend_by_two_keys(synthetic: list[LedgerRow]) -> None:
    """A list of keys groups by both (what the stacked chart uses)."""
    frame = reports.spend(by=["day", "route"])
    assert [(d.date(), r) for d, r in zip(frame["day"], frame["route"], strict=True)] == [
        (YESTERDAY.date(), "byok"),
        (YESTERDAY.date(), "managed"),
        (TODAY.date(), "byok"),
        (TODAY.date(), "managed"),
    ]
    assert frame["cost_usd"].tolist() == [0.0025, 0.01125, 0.007875, 0.0]


def test_spend_bad_grouping() -> None:
    """An unknown grouping is a clear error listing the choices."""
    with pytest.raises(ConfigurationError, match="day, week"):
        reports.spend(by="hour")


def test_spend_empty_ledger() -> None:
    """An empty ledger gives an empty frame with the columns."""
    frame = reports.spend(by="day")
    assert frame.empty and "cost_usd" in frame.columns


def test_compare_costs_what_if() -> None:
    """A what-if workload: provider price, managed ×1.5, BYOK under the policy, peers."""
    frame = reports.compare_costs(
        [
            {
                "model": "gpt-4o",
                "provider": "openai",
                "input_tokens": 1_000_000,
                "output_tokens": 500_000,
                "requests": 1000,
            },
            {
                "model": "claude-haiku-4-5",
                "input_tokens": 2_000_000,
                "output_tokens": 100_000,
                "requests": 2000,
            },
        ],
        byok_policy="percent",
        byok_fee_pct=5,
    )
    gpt = frame.iloc[0]
    assert gpt["provider_cost_usd"] == 7.5  # 2.5 + 5
    assert gpt["managed_charge_usd"] == 11.25
    assert gpt["byok_fee_usd"] == 0.375
    assert gpt["byok_total_usd"] == 7.875
    assert gpt["savings_usd"] == 3.375 and gpt["cheaper"] == "byok"
    assert gpt["openrouter_byok_usd"] == 7.5  # under 1M requests: fee waived
    assert gpt["vercel_byok_usd"] == 7.5
    assert gpt["cloudflare_credits_usd"] == 7.875
    haiku = frame.iloc[1]
    assert haiku["provider"] == "cencori"  # inferred from the model name
    assert haiku["provider_cost_usd"] == 2.5  # 2M × $1 + 0.1M × $5
    assert frame.attrs["totals"]["provider_cost_usd"] == 10.0
    assert frame.attrs["totals"]["byok_policy"] == "percent"


def test_compare_costs_tiers_apply_per_request() -> None:
    """10M input tokens over 100 requests (100K each) stay in gemini-2.5-pro's base tier."""
    frame = reports.compare_costs(
        [
            {
                "model": "gemini-2.5-pro",
                "provider": "google",
                "input_tokens": 10_000_000,
                "output_tokens": 0,
                "requests": 100,
            }
        ],
        include_peers=False,
    )
    assert frame["provider_cost_usd"].iloc[0] == 12.5
    big = reports.compare_costs(
        [
            {
                "model": "gemini-2.5-pro",
                "provider": "google",
                "input_tokens": 10_000_000,
                "output_tokens": 0,
                "requests": 40,
            }
        ],
        include_peers=False,
    )
    assert big["provider_cost_usd"].iloc[0] == 25.0  # 250K per request: the $2.50 tier
    assert "openrouter_byok_usd" not in big.columns


def test_compare_costs_openrouter_fee_past_one_million_requests() -> None:
    """Past 1M requests a month, OpenRouter's 5% applies to the share above the waiver."""
    frame = reports.compare_costs(
        [
            {
                "model": "gpt-4o-mini",
                "provider": "openai",
                "input_tokens": 2_000_000_000,
                "output_tokens": 0,
                "requests": 2_000_000,
            }
        ]
    )
    cost = frame["provider_cost_usd"].iloc[0]
    assert cost == 300.0
    assert frame["openrouter_byok_usd"].iloc[0] == pytest.approx(300 + 300 * 0.05 * 0.5)


def test_compare_costs_break_even_with_plan_fee() -> None:
    """Plan $49/month, zero BYOK fee: break-even where savings (50% of price) reach $49."""
    frame = reports.compare_costs(
        [
            {
                "model": "gpt-4o",
                "provider": "openai",
                "input_tokens": 1_000_000,
                "output_tokens": 500_000,
                "requests": 1000,
            }
        ],
        byok_policy="zero",
        plan_fee_usd=49,
    )
    row = frame.iloc[0]
    assert row["savings_usd"] == 3.75
    # whole numbers, rounded up: 13,066.67 requests is 13,067 (issue 13: counts are whole)
    assert row["break_even_requests"] == math.ceil(49 / 3.75 * 1000) == 13_067
    assert row["break_even_tokens"] == 19_600_000  # exact: no float noise adds one
    assert frame.attrs["totals"]["break_even_multiple"] == pytest.approx(49 / 3.75)
    managed = reports.compare_costs(
        [{"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 0, "requests": 1}],
        byok_policy="managed",
        plan_fee_usd=49,
    )
    # "managed" policy: the wallet pays the full managed charge on top of the provider bill
    assert managed["break_even_requests"].iloc[0] == math.inf
    assert managed["cheaper"].iloc[0] == "managed"


def test_compare_costs_from_the_ledger(synthetic: list[LedgerRow]) -> None:
    """From the ledger: ok rows by provider and model, priced as recorded."""
    update_settings(byok_policy="zero")
    frame = reports.compare_costs()
    by_model = {r["model"]: r for r in frame.to_dict("records")}
    assert set(by_model) == {"gpt-4o", "claude-haiku-4-5", "llama3.2"}
    gpt = by_model["gpt-4o"]
    assert gpt["requests"] == 2 and gpt["input_tokens"] == 2000
    assert gpt["provider_cost_usd"] == 0.015 and gpt["managed_charge_usd"] == 0.0225
    assert math.isnan(by_model["llama3.2"]["provider_cost_usd"])
    assert by_model["llama3.2"]["cheaper"] == "unknown"


def test_compare_costs_accepts_a_dataframe_and_default_requests() -> None:
    """A DataFrame works; without 'requests', one request per 1,000 input tokens."""
    frame = reports.compare_costs(
        pd.DataFrame([{"model": "gpt-4o", "input_tokens": 5000, "output_tokens": 100}])
    )
    assert frame["requests"].iloc[0] == 5
    assert frame["provider_cost_usd"].iloc[0] == pytest.approx(0.0125 + 0.001)
    with pytest.raises(ConfigurationError, match="model"):
        reports.compare_costs([{"input_tokens": 1}])


def test_compare_costs_batch_column_is_the_jobs_batch_rule() -> None:
    """include_batch: openai gpt-4o-mini's batch_usd is pricing.batch_price of the provider
    cost (half: $0.15 + $0.30 → $0.225); mistral has no Batch API → NaN, out of the total."""
    work = [
        {
            "model": "gpt-4o-mini",
            "provider": "openai",
            "input_tokens": 1_000_000,
            "output_tokens": 500_000,
            "requests": 1000,
        },
        {
            "model": "mistral-small-latest",
            "provider": "mistral",
            "input_tokens": 1_000_000,
            "output_tokens": 0,
            "requests": 1000,
        },
    ]
    frame = reports.compare_costs(work, include_batch=True)
    mini, mistral = frame.iloc[0], frame.iloc[1]
    assert mini["provider_cost_usd"] == 0.45
    assert pricing.batch_price("openai", Decimal("0.45")) == Decimal("0.225")
    assert mini["batch_usd"] == 0.225
    assert mistral["provider_cost_usd"] == 0.15
    assert math.isnan(mistral["batch_usd"])
    assert frame.attrs["totals"]["batch_usd"] == 0.225
    assert list(frame.columns)[-1] == "batch_usd"


def test_compare_costs_without_include_batch_is_unchanged() -> None:
    """include_batch=False (the default): the columns and totals are exactly as before."""
    work = [
        {"model": "gpt-4o-mini", "provider": "openai", "input_tokens": 1000, "output_tokens": 0}
    ]
    for kw in ({}, {"include_peers": False}, {"plan_fee_usd": 49}):
        plain = reports.compare_costs(work, **kw)  # type: ignore[arg-type]
        off = reports.compare_costs(work, include_batch=False, **kw)  # type: ignore[arg-type]
        pd.testing.assert_frame_equal(plain, off)
        assert "batch_usd" not in plain.columns and "batch_usd" not in plain.attrs["totals"]
        with_batch = reports.compare_costs(work, include_batch=True, **kw)  # type: ignore[arg-type]
        assert list(with_batch.columns) == [*plain.columns, "batch_usd"]
    assert list(reports.compare_costs(work).columns) == [
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
        "openrouter_byok_usd",
        "vercel_byok_usd",
        "cloudflare_credits_usd",
    ]


def test_compare_costs_batch_does_not_discount_batch_job_rows_again() -> None:
    """From the ledger: a live row is halved; a row a batch job recorded (settle(batch=True),
    as cencori_nb.jobs records them) is already at the batch price and counts as recorded."""
    update_settings(byok_policy="zero")

    def completion(request_id: str, client_id: str) -> Completion:
        return Completion(
            text="hi",
            model="gpt-4o-mini",
            provider="openai",
            route="byok",
            input_tokens=1_000_000,
            output_tokens=500_000,
            request_id=request_id,
            model_requested="gpt-4o-mini",
            credential_source="keystore:openai",
            client_id=client_id,
        )

    settle(completion("live-1", "live-1"))
    settle(completion("", client_id("job_x", 0, 0)), batch=True)
    rows = {r.request_id: r for r in default_ledger().rows()}
    assert rows["live-1"].provider_cost_usd == Decimal("0.45")
    batch_row = next(r for r in rows.values() if r.request_id != "live-1")
    assert batch_row.provider_cost_usd == Decimal("0.225")
    frame = reports.compare_costs(include_batch=True)
    row = frame.iloc[0]
    assert row["requests"] == 2
    assert row["provider_cost_usd"] == 0.675  # 0.45 live + 0.225 recorded at batch price
    assert row["batch_usd"] == 0.45  # 0.45 / 2 (live, discounted) + 0.225 (batch, as is)
    assert frame.attrs["totals"]["batch_usd"] == 0.45
    # the same rows read with a since inside today go through the raw-rows path too
    assert reports.compare_costs(since="1h", include_batch=True)["batch_usd"].iloc[0] == 0.45


def test_spend_since_mid_day_reads_the_partial_day_from_rows(synthetic: list[LedgerRow]) -> None:
    """since inside a day: that day's rows come from requests, later days from the rollup."""
    since = YESTERDAY + timedelta(milliseconds=1500)  # after "a", before "b"
    frame = reports.spend(by="day", since=since)
    assert list(frame["requests"]) == [1, 4]
    assert frame["cost_usd"].tolist() == [0.0025, 0.007875]
    p1 = reports.spend(by=["day", "project"], since=since, project="p1")
    assert list(p1["project"]) == ["p1", "p1"] and list(p1["requests"]) == [1, 3]
    assert reports.spend(by="day", since=TODAY)["requests"].tolist() == [4]


def test_usage_empty_ledger_has_the_columns() -> None:
    """An empty ledger gives an empty frame with every column, times typed UTC."""
    frame = reports.usage()
    assert frame.empty
    assert list(frame.columns)[:4] == ["time", "client_id", "request_id", "project"]
    assert {"provider_cost_usd", "credits_charged_usd", "cost_usd"} <= set(frame.columns)
    assert str(frame["time"].dt.tz) == "UTC"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"cache_write_tokens": 100, "cache_write_1h_tokens": 500}, "cache_write_1h_tokens"),
        ({"cache_read_tokens": 5000}, "cache_read_tokens"),
        ({"cache_read_tokens": 600, "cache_write_tokens": 600}, "cache_write_tokens"),
        ({"input_tokens": -1000}, "input_tokens"),
        ({"output_tokens": -1}, "output_tokens"),
    ],
    ids=["1h-past-writes", "reads-past-input", "cache-past-input", "negative-in", "negative-out"],
)
def test_a_what_if_with_counts_no_request_has_is_one_clear_error(
    change: dict[str, int], named: str
) -> None:
    """A what-if row whose counts no request can have (1-hour writes past the cache
    writes, cache reads and writes past the input, a negative count) is one
    ConfigurationError naming the field and the model. Before, the first was a raw
    ValueError from genai-prices and the others were priced below zero (a negative
    provider cost and a negative managed charge in the table)."""
    rec = {"model": "claude-sonnet-4-6", "provider": "anthropic", "input_tokens": 1000}
    rec["output_tokens"] = 10
    rec.update(change)
    with pytest.raises(ConfigurationError, match=named) as raised:
        reports.compare_costs([rec], include_peers=False)
    assert "claude-sonnet-4-6" in raised.value.message and "\n" not in raised.value.message
