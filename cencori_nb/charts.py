"""plotly figures of spend and credits. Each function returns a ``plotly.graph_objects.Figure``
with a title, axis labels with units and hover text with tokens and cost.

Data comes from :mod:`cencori_nb.reports` (SQL-grouped, exact sums) and the wallet; plotly
is imported inside the functions.
"""

from __future__ import annotations

import math
from typing import Any

from .wallet import LOW_BALANCE_USD

__all__ = ["balance_over_time", "byok_vs_managed", "spend_by", "spend_over_time"]

ROUTE_NAMES = {"byok": "BYOK (your provider account)", "managed": "Managed (Cencori credits)"}
ROUTE_COLOURS = {"byok": "#2a9d8f", "managed": "#e76f51"}
_HOVER_SPEND = (
    "%{x}<br>%{fullData.name}<br>Cost: $%{y:.6f}<br>"
    "Requests: %{customdata[0]:,}<br>Tokens: %{customdata[1]:,} in / "
    "%{customdata[2]:,} out<br>Credits charged: $%{customdata[3]:.6f}"
    "<extra></extra>"
)


DAY_MS = 86_400_000
MAX_DATE_TICKS = 10  # at most this many date ticks on a time axis
BAR_SHARE = 0.8  # a day's (or week's) bar fills this share of its slot


def _go() -> Any:
    import plotly.graph_objects as go

    return go


def money_axis(values: Any) -> dict[str, Any]:
    """y-axis settings that always read as dollars: ``$0.0005``, never plotly's SI
    ``$500µ``; enough decimals for the largest value (at least two, at most eight)."""
    top = max((abs(float(v)) for v in values if v == v), default=0.0)  # v == v: not NaN
    decimals = 2 if top <= 0 or top >= 1 else min(8, 2 - math.floor(math.log10(top)))
    return {
        "tickprefix": "$",
        "tickformat": f",.{decimals}f",
        "exponentformat": "none",
        "rangemode": "tozero",
    }


def date_axis(days: Any, *, step_days: int = 1) -> dict[str, Any]:
    """x-axis settings for whole UTC days (or weeks): a ``date`` axis whose ticks fall on
    the days themselves (``Mar 04, 2026``), never on hours (``23:59:59.9996``), with half
    a step of room either side so one bar is a bar, not the whole plot."""
    stamps = sorted({int(_epoch_ms(d)) for d in days})
    out: dict[str, Any] = {"type": "date", "tickformat": "%b %d, %Y", "hoverformat": "%a %b %d, %Y"}
    if not stamps:
        return out
    span_steps = (stamps[-1] - stamps[0]) // (step_days * DAY_MS) + 1
    every = max(1, math.ceil(span_steps / MAX_DATE_TICKS))
    half = step_days * DAY_MS // 2
    out.update(
        tick0=stamps[0],
        dtick=every * step_days * DAY_MS,
        range=[_iso(stamps[0] - half), _iso(stamps[-1] + half)],
    )
    return out


def _epoch_ms(value: Any) -> float:
    import pandas as pd

    return float(pd.Timestamp(value).timestamp() * 1000)


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


STACKS = ("route", "member")  # what spend_over_time stacks its bars by
SPEND_BY = ("provider", "model", "route", "project", "member")  # what spend_by groups by


def spend_over_time(
    since: Any = None,
    project: str | None = None,
    *,
    by: str = "day",
    stack: str = "route",
    member: str | None = None,
) -> Any:
    """Stacked bars of what requests cost per ``day`` or ``week`` (UTC), one trace per
    ``route``, or with ``stack="member"`` one per team member (who spent what, each day).
    ``member`` keeps one member's requests only.

    Bar height is ``cost_usd`` (credits charged plus the provider price of BYOK requests).
    """
    from . import reports
    from .errors import ConfigurationError

    if by not in ("day", "week"):
        raise ConfigurationError(f"spend_over_time(by={by!r}): use 'day' or 'week'.")
    if stack not in STACKS:
        raise ConfigurationError(f"spend_over_time(stack={stack!r}): use 'route' or 'member'.")
    go = _go()
    frame = reports.spend(by=[by, stack], since=since, project=project, member=member)
    fig = go.Figure()
    for group in sorted(frame[stack].unique()) if len(frame) else []:
        part = frame[frame[stack] == group]
        fig.add_trace(
            go.Bar(
                # plain dates: a UTC day is a date, not an instant (no time zone to misread)
                x=[d.strftime("%Y-%m-%d") for d in part[by]],
                y=list(part["cost_usd"]),
                # On a date axis a bar's width is in milliseconds; plotly guesses it from the
                # gaps between bars, so one lone bar would be 1 ms wide (invisible).
                width=BAR_SHARE * (DAY_MS if by == "day" else 7 * DAY_MS),
                name=_trace_name(stack, group),
                marker_color=ROUTE_COLOURS.get(group) if stack == "route" else None,
                customdata=list(
                    zip(
                        part["requests"],
                        part["input_tokens"],
                        part["output_tokens"],
                        part["credits_charged_usd"],
                        strict=True,
                    )
                ),
                hovertemplate=_HOVER_SPEND,
            )
        )
    unit = "Day" if by == "day" else "Week starting"
    # The title promises routes: the legend names them even when there is only one.
    fig.update_layout(
        barmode="stack",
        title=f"Spend per {by} by {stack}",
        xaxis_title=f"{unit} (UTC)",
        yaxis_title="Cost (USD)",
        legend_title=stack.capitalize(),
        showlegend=True,
        xaxis=date_axis(frame[by] if len(frame) else [], step_days=1 if by == "day" else 7),
        yaxis=money_axis(frame["cost_usd"] if len(frame) else []),
    )
    return fig


def _trace_name(stack: str, group: str) -> str:
    if stack == "route":
        return ROUTE_NAMES.get(group, group)
    return group or UNNAMED_MEMBER


# rows recorded before members existed (or with no member set) have an empty member
UNNAMED_MEMBER = "(no member)"


def spend_by(
    by: str = "provider",
    since: Any = None,
    project: str | None = None,
    *,
    member: str | None = None,
) -> Any:
    """Bars of cost per ``provider``, ``model``, ``route``, ``project`` or ``member`` (a
    team ledger: what each member spent). ``member`` keeps one member's requests only."""
    from . import reports

    if by not in SPEND_BY:
        from .errors import ConfigurationError

        raise ConfigurationError(
            f"spend_by(by={by!r}): use one of " + ", ".join(repr(k) for k in SPEND_BY) + "."
        )
    go = _go()
    frame = reports.spend(by=by, since=since, project=project, member=member)
    labels = list(frame[by])
    if by == "member":
        labels = [m or UNNAMED_MEMBER for m in labels]
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=list(frame["cost_usd"]),
            name="Cost",
            customdata=list(
                zip(
                    frame["requests"],
                    frame["input_tokens"],
                    frame["output_tokens"],
                    frame["credits_charged_usd"],
                    frame["provider_cost_usd"],
                    strict=True,
                )
            ),
            hovertemplate=(
                "%{x}<br>Cost: $%{y:.6f}<br>Requests: %{customdata[0]:,}<br>"
                "Tokens: %{customdata[1]:,} in / %{customdata[2]:,} out<br>"
                "Provider price: $%{customdata[4]:.6f}<br>"
                "Credits charged: $%{customdata[3]:.6f}<extra></extra>"
            ),
        )
    )
    fig.update_layout(
        title=f"Spend by {by}",
        xaxis_title=by.capitalize(),
        yaxis_title="Cost (USD)",
        showlegend=False,
        xaxis={"type": "category"},
        yaxis=money_axis(frame["cost_usd"]),
    )
    return fig


def balance_over_time() -> Any:
    """The mirrored credit balance after each wallet transaction (a step line), with a
    dashed line at the $5 low-balance threshold."""
    from . import wallet

    go = _go()
    txs = wallet.transactions(as_frame=False)
    fig = go.Figure(
        go.Scatter(
            x=[t.time for t in txs],
            y=[float(t.balance_after) for t in txs],
            name="Balance",
            mode="lines+markers",
            line_shape="hv",
            customdata=[(t.kind, float(t.amount), t.request_id or "") for t in txs],
            hovertemplate=(
                "%{x}<br>Balance: $%{y:.4f}<br>%{customdata[0]}: "
                "$%{customdata[1]:+.6f}<br>%{customdata[2]}<extra></extra>"
            ),
        )
    )
    fig.add_hline(
        y=float(LOW_BALANCE_USD),
        line_dash="dash",
        line_color="#b00020",
        annotation_text=f"Low balance (${LOW_BALANCE_USD})",
        annotation_position="bottom right",
    )
    fig.update_layout(
        title="Cencori credit balance (local mirror)",
        xaxis_title="Time (UTC)",
        yaxis_title="Balance (USD)",
        showlegend=False,
        xaxis={"type": "date"},
        yaxis=money_axis([*(t.balance_after for t in txs), LOW_BALANCE_USD]),
    )
    return fig


_COMPARE_TRACES = (
    ("provider_cost_usd", "Provider price (paid by BYOK)", "#2a9d8f"),
    ("byok_total_usd", "BYOK total (with Cencori fee)", "#264653"),
    ("managed_charge_usd", "Managed (Cencori credits)", "#e76f51"),
    ("openrouter_byok_usd", "OpenRouter BYOK", "#8d99ae"),
    ("vercel_byok_usd", "Vercel AI Gateway BYOK", "#adb5bd"),
    ("cloudflare_credits_usd", "Cloudflare credits", "#ced4da"),
)


def byok_vs_managed(compare_df: Any = None) -> Any:
    """Grouped bars per model of a :func:`cencori_nb.reports.compare_costs` frame (computed
    from the ledger when not given): provider price, BYOK total, managed charge, and the
    peers' columns when present. For a what-if, pass ``compare_costs(workload)``: its
    workload keys (``cache_write_1h_tokens`` among them) and the
    :class:`~cencori_nb.errors.ConfigurationError` it raises for a row it cannot price are
    described there."""
    from . import reports

    go = _go()
    frame = reports.compare_costs() if compare_df is None else compare_df
    fig = go.Figure()
    labels = list(frame["model"])
    custom = list(
        zip(frame["requests"], frame["input_tokens"], frame["output_tokens"], strict=True)
    )
    for column, name, colour in _COMPARE_TRACES:
        if column not in frame.columns:
            continue
        fig.add_trace(
            go.Bar(
                x=labels,
                y=list(frame[column]),
                name=name,
                marker_color=colour,
                customdata=custom,
                hovertemplate=(
                    "%{x}<br>%{fullData.name}: $%{y:.4f}<br>Requests: "
                    "%{customdata[0]:,}<br>Tokens: %{customdata[1]:,} in / "
                    "%{customdata[2]:,} out<extra></extra>"
                ),
            )
        )
    money = [
        v for column, _n, _c in _COMPARE_TRACES if column in frame.columns for v in frame[column]
    ]
    fig.update_layout(
        barmode="group",
        title="BYOK vs managed: monthly cost per model",
        xaxis_title="Model",
        yaxis_title="Cost per month (USD)",
        legend_title="Paid as",
        showlegend=True,
        xaxis={"type": "category"},
        yaxis=money_axis(money),
    )
    return fig
