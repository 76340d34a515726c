"""plotly figures: trace data, names, stacking, labels and hover text are asserted."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pandas as pd
import plotly.graph_objects as go
import pytest

from cencori_nb import charts, reports, wallet
from cencori_nb.errors import ConfigurationError
from cencori_nb.ledger import COLUMNS, LedgerRow, default_ledger

TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
YESTERDAY = TODAY - timedelta(days=1)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


@pytest.fixture
def ledger_rows() -> None:
    default_ledger().record_many(
        [
            LedgerRow(
                "a",
                "p",
                "openai",
                "managed",
                model="gpt-4o",
                input_tokens=1000,
                output_tokens=500,
                provider_cost_usd=Decimal("0.0075"),
                credits_charged_usd=Decimal("0.01125"),
                ts_ms=_ms(YESTERDAY) + 5,
            ),
            LedgerRow(
                "b",
                "p",
                "anthropic",
                "byok",
                model="claude-haiku-4-5",
                input_tokens=2000,
                output_tokens=100,
                provider_cost_usd=Decimal("0.0025"),
                ts_ms=_ms(YESTERDAY) + 6,
            ),
            LedgerRow(
                "c",
                "p",
                "openai",
                "byok",
                model="gpt-4o",
                input_tokens=1000,
                output_tokens=500,
                provider_cost_usd=Decimal("0.0075"),
                ts_ms=_ms(TODAY) + 5,
            ),
        ]
    )


def test_spend_over_time_is_stacked_by_route(ledger_rows: None) -> None:
    """One bar trace per route, days on x, cost on y, stacked; tokens in customdata."""
    fig = charts.spend_over_time()
    assert isinstance(fig, go.Figure)
    assert fig.layout.barmode == "stack"
    assert fig.layout.title.text == "Spend per day by route"
    assert fig.layout.yaxis.title.text == "Cost (USD)"
    assert fig.layout.xaxis.title.text == "Day (UTC)"
    byok, managed = fig.data
    assert (byok.type, byok.name) == ("bar", "BYOK (your provider account)")
    assert managed.name == "Managed (Cencori credits)"
    assert list(byok.x) == [f"{YESTERDAY:%Y-%m-%d}", f"{TODAY:%Y-%m-%d}"]
    assert list(byok.y) == [0.0025, 0.0075]
    assert list(managed.x) == [f"{YESTERDAY:%Y-%m-%d}"]
    assert list(managed.y) == [0.01125]
    assert [list(c) for c in byok.customdata] == [[1, 2000, 100, 0.0], [1, 1000, 500, 0.0]]
    assert "Tokens" in byok.hovertemplate and "Cost" in byok.hovertemplate


def test_spend_over_time_weekly_and_empty() -> None:
    """Weekly works on an empty ledger (no traces, labels still set); bad 'by' is refused."""
    fig = charts.spend_over_time(by="week")
    assert fig.data == () and fig.layout.xaxis.title.text == "Week starting (UTC)"
    with pytest.raises(ConfigurationError):
        charts.spend_over_time(by="provider")


def test_spend_by_provider_and_model(ledger_rows: None) -> None:
    """Bars largest first, with cost and token hover data."""
    fig = charts.spend_by("provider")
    (bar,) = fig.data
    assert list(bar.x) == ["openai", "anthropic"]
    assert list(bar.y) == [0.01125 + 0.0075, 0.0025]
    assert [list(c)[:3] for c in bar.customdata] == [[2, 2000, 1000], [1, 2000, 100]]
    assert fig.layout.title.text == "Spend by provider"
    assert fig.layout.yaxis.title.text == "Cost (USD)"
    model = charts.spend_by("model").data[0]
    assert list(model.x) == ["gpt-4o", "claude-haiku-4-5"]


def test_balance_over_time_has_a_dashed_low_line() -> None:
    """The balance after each transaction as a step line; a dashed line at $5."""
    wallet.top_up(10)
    with pytest.warns(wallet.LowBalanceWarning):
        wallet.debit("x", Decimal("6"), project="p")
    wallet.top_up("2.5")
    fig = charts.balance_over_time()
    (line,) = fig.data
    assert list(line.y) == [10.0, 4.0, 6.5]
    assert line.line.shape == "hv"
    assert [c[0] for c in line.customdata] == ["topup", "usage", "topup"]
    (shape,) = fig.layout.shapes
    assert (shape.y0, shape.y1, shape.line.dash) == (5.0, 5.0, "dash")
    assert fig.layout.yaxis.title.text == "Balance (USD)"
    assert "Low balance" in fig.layout.annotations[0].text


def test_byok_vs_managed_traces() -> None:
    """Grouped bars per model: provider price, BYOK total, managed, and the peers."""
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
        byok_policy="percent",
        byok_fee_pct=5,
    )
    fig = charts.byok_vs_managed(frame)
    names = [t.name for t in fig.data]
    assert names == [
        "Provider price (paid by BYOK)",
        "BYOK total (with Cencori fee)",
        "Managed (Cencori credits)",
        "OpenRouter BYOK",
        "Vercel AI Gateway BYOK",
        "Cloudflare credits",
    ]
    ys = {t.name: list(t.y) for t in fig.data}
    assert ys["Provider price (paid by BYOK)"] == [7.5]
    assert ys["BYOK total (with Cencori fee)"] == [7.875]
    assert ys["Managed (Cencori credits)"] == [11.25]
    assert list(fig.data[0].x) == ["gpt-4o"]
    assert list(fig.data[0].customdata[0]) == [1000, 1_000_000, 500_000]
    assert fig.layout.barmode == "group"
    assert fig.layout.yaxis.title.text == "Cost per month (USD)"
    without_peers = charts.byok_vs_managed(
        reports.compare_costs(
            [{"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 10}], include_peers=False
        )
    )
    assert len(without_peers.data) == 3


# ------------------------------------------------------------------ issue 13.3: any amount
def _one_request(
    cost: str = "0.0002", route: str = "byok", when: datetime = TODAY, request_id: str = "one"
) -> None:
    default_ledger().record_many(
        [
            LedgerRow(
                request_id,
                "p",
                "openai",
                route,
                model="gpt-4o-mini",
                input_tokens=12,
                output_tokens=30,
                provider_cost_usd=Decimal(cost),
                credits_charged_usd=Decimal(cost) if route == "managed" else None,
                ts_ms=_ms(when) + 3_600_000,
            )
        ]
    )


def test_one_row_spend_chart_reads_as_dates_dollars_and_a_legend() -> None:
    """One request, one day, one route: a date axis ticking on days (no 23:59:59.9996),
    dollars with enough decimals (no $200µ), and the legend the title promises."""
    _one_request()
    fig = charts.spend_over_time()
    (bar,) = fig.data
    assert list(bar.x) == [f"{TODAY:%Y-%m-%d}"]
    assert bar.width == 0.8 * 86_400_000  # a lone bar is most of a day wide, not 1 ms
    x, y = fig.layout.xaxis, fig.layout.yaxis
    assert x.type == "date" and x.tickformat == "%b %d, %Y"
    assert x.dtick == 86_400_000  # ticks a day apart, never hours
    start, end = (pd.Timestamp(v) for v in x.range)  # half a day either side of the bar
    assert (end - start) == pd.Timedelta(days=1)
    assert start + pd.Timedelta(hours=12) == pd.Timestamp(TODAY).tz_localize(None)
    assert y.tickprefix == "$" and y.exponentformat == "none"
    assert y.tickformat == ",.6f"  # $0.000200, not $200µ
    assert fig.layout.showlegend is True
    assert bar.name == "BYOK (your provider account)"


def test_weekly_and_long_spans_keep_ticks_on_whole_steps() -> None:
    """A week axis ticks in weeks; a 60-day span thins the ticks to at most ten, in days."""
    _one_request(when=TODAY - timedelta(days=59), request_id="old")
    _one_request(cost="12.5", route="managed", request_id="new")
    daily = charts.spend_over_time().layout.xaxis
    assert daily.dtick % 86_400_000 == 0 and daily.dtick >= 6 * 86_400_000
    assert charts.spend_over_time(by="week").layout.xaxis.dtick % (7 * 86_400_000) == 0
    assert charts.spend_over_time().layout.yaxis.tickformat == ",.2f"  # dollars and cents


def test_money_axis_decimals() -> None:
    """Enough decimals for the largest value, never SI prefixes."""
    assert charts.money_axis([0.0002])["tickformat"] == ",.6f"
    assert charts.money_axis([0.03, 0.01])["tickformat"] == ",.4f"
    assert charts.money_axis([150.0])["tickformat"] == ",.2f"
    assert charts.money_axis([])["tickformat"] == ",.2f"
    assert charts.money_axis([float("nan"), 1e-12])["tickformat"] == ",.8f"


def test_single_bar_charts_say_dollars_and_hide_a_pointless_legend() -> None:
    _one_request()
    fig = charts.spend_by("provider")
    assert fig.layout.yaxis.tickformat == ",.6f" and fig.layout.showlegend is False
    assert fig.layout.xaxis.type == "category"
    compare = charts.byok_vs_managed()
    assert compare.layout.showlegend is True and compare.layout.yaxis.tickprefix == "$"
    assert compare.layout.yaxis.exponentformat == "none"


def test_usage_summary_table_totals_two_routes_in_whole_numbers() -> None:
    """``%cencori usage``'s table: one line per provider and route, then a total line;
    counts are integers with separators, money in dollars."""
    from cencori_nb.magic.commands import usage_summary_bundle

    default_ledger().record_many(
        [
            LedgerRow(
                f"r{i}",
                "p",
                "openai",
                "byok" if i % 2 else "managed",
                model="gpt-4o-mini",
                input_tokens=1500,
                output_tokens=250,
                provider_cost_usd=Decimal("0.0002"),
                credits_charged_usd=None if i % 2 else Decimal("0.0003"),
                ts_ms=_ms(TODAY) + i,
            )
            for i in range(4)
        ]
    )
    frame = reports.spend(by=["provider", "route"])
    plain = usage_summary_bundle(frame, since=None, project="default")["text/plain"]
    lines = plain.splitlines()
    assert lines[0].startswith("Usage — project default")
    body = [re.split(r"\s{2,}", line.strip()) for line in lines[2:]]
    assert body == [
        ["openai", "managed (credits)", "2", "0", "0", "3,000", "500", "$0.000600"],
        ["openai", "BYOK", "2", "0", "0", "3,000", "500", "$0.000400"],
        ["total", "4", "0", "0", "6,000", "1,000", "$0.001000"],
    ]


@pytest.fixture
def two_members() -> None:
    """A team ledger's rows: ana spent on two days (one BYOK, one managed), bo on one, and
    one old row recorded before members existed (empty member)."""
    default_ledger().record_many(
        [
            LedgerRow(
                "m1",
                "p",
                "openai",
                "byok",
                model="gpt-4o",
                input_tokens=1000,
                output_tokens=500,
                provider_cost_usd=Decimal("0.0075"),
                ts_ms=_ms(YESTERDAY) + 1,
                member="ana@example.org",
            ),
            LedgerRow(
                "m2",
                "p",
                "openai",
                "managed",
                model="gpt-4o",
                input_tokens=1000,
                output_tokens=500,
                provider_cost_usd=Decimal("0.0075"),
                credits_charged_usd=Decimal("0.01125"),
                ts_ms=_ms(TODAY) + 1,
                member="ana@example.org",
            ),
            LedgerRow(
                "m3",
                "p",
                "anthropic",
                "byok",
                model="claude-haiku-4-5",
                input_tokens=2000,
                output_tokens=100,
                provider_cost_usd=Decimal("0.0025"),
                ts_ms=_ms(TODAY) + 2,
                member="bo@example.org",
            ),
        ]
    )
    # a row recorded before members existed: the migration gave it an empty member
    legacy = LedgerRow(
        "m4",
        "p",
        "openai",
        "byok",
        model="gpt-4o",
        input_tokens=10,
        output_tokens=10,
        provider_cost_usd=Decimal("0.0001"),
        ts_ms=_ms(TODAY) + 3,
    ).as_params()
    at = COLUMNS.index("member")  # as_params() is in COLUMNS order
    default_ledger().record_many([(*legacy[:at], "", *legacy[at + 1 :])])


def test_spend_by_member_is_one_bar_per_member(two_members: None) -> None:
    """A team sees what each member spent: one bar per member (largest first), the old
    member-less rows under a name that says so; ``member=`` keeps one member."""
    fig = charts.spend_by("member")
    (bar,) = fig.data
    assert list(bar.x) == ["ana@example.org", "bo@example.org", charts.UNNAMED_MEMBER]
    assert list(bar.y) == pytest.approx([0.0075 + 0.01125, 0.0025, 0.0001])
    assert [list(c)[:3] for c in bar.customdata] == [[2, 2000, 1000], [1, 2000, 100], [1, 10, 10]]
    assert fig.layout.title.text == "Spend by member"
    assert fig.layout.xaxis.title.text == "Member"
    (only,) = charts.spend_by("member", member="bo@example.org").data
    assert list(only.x) == ["bo@example.org"] and list(only.y) == [0.0025]
    with pytest.raises(ConfigurationError, match="'member'"):
        charts.spend_by("colour")


def test_spend_over_time_can_stack_by_member(two_members: None) -> None:
    """``stack="member"``: one trace per member, each day's bar split between them."""
    fig = charts.spend_over_time(stack="member")
    assert fig.layout.title.text == "Spend per day by member"
    assert fig.layout.legend.title.text == "Member"
    names = [t.name for t in fig.data]
    assert names == [charts.UNNAMED_MEMBER, "ana@example.org", "bo@example.org"]
    legacy, ana, bo = fig.data
    assert list(ana.x) == [f"{YESTERDAY:%Y-%m-%d}", f"{TODAY:%Y-%m-%d}"]
    assert list(ana.y) == pytest.approx([0.0075, 0.01125])
    assert list(bo.x) == [f"{TODAY:%Y-%m-%d}"] and list(bo.y) == [0.0025]
    assert list(legacy.y) == [0.0001]
    assert all(t.marker.color is None for t in fig.data)  # route colours are for routes
    (ana_only,) = charts.spend_over_time(stack="member", member="ana@example.org").data
    assert ana_only.name == "ana@example.org"
    with pytest.raises(ConfigurationError, match="'route' or 'member'"):
        charts.spend_over_time(stack="provider")
