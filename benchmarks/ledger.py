"""Ledger benchmark: SQL-grouped spend vs the naive pandas way, and the cost of recording.

    .venv/bin/python benchmarks/ledger.py [--rows 1000000] [--repeats 3] [--append-doc]

1. Fills a fresh ledger (a temporary CENCORI_NB_HOME) with N synthetic rows over 90 days
   (executemany, one transaction; the daily-rollup trigger runs for each row).
2. Times, interleaved in the same run, ``reports.spend(by="day")`` (reads the daily
   rollup) and building the spend
   chart (``charts.spend_over_time()``) against the naive way: ``pd.read_sql`` of every row,
   then pandas ``groupby`` (and the same figure from that). Prints medians and the ratio.
3. Times recording one row: ``Ledger.record`` (a plain INSERT + commit per row) against
   ``Ledger.submit`` (a background writer thread with batched commits; the caller only
   enqueues), and a whole ``accounting.settle()`` (price and charge computed, the row and
   its wallet debit queued for one transaction), each also until everything is committed.

Numbers are noisy on a shared machine; ratios measured in the same run are what to read.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROUTES = ("byok", "managed")
MODELS = (
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-haiku-4-5"),
    ("google", "gemini-2.5-flash"),
    ("mistral", "mistral-small-latest"),
    ("groq", "llama-3.3-70b-versatile"),
)


def synthetic_rows(n: int, *, days: int = 90, seed: int = 7) -> list[tuple[object, ...]]:
    """Parameter tuples in the ledger's column order (see ``ledger.COLUMNS``)."""
    rng = random.Random(seed)
    now = time.time_ns() // 1_000_000
    span = days * 86_400_000
    out = []
    for i in range(n):
        provider, model = MODELS[i % len(MODELS)]
        route = ROUTES[rng.random() < 0.4]
        status = "ok" if rng.random() < 0.97 else "error"
        tin, tout = rng.randint(50, 4000), rng.randint(10, 1000)
        cost = (tin * 2_500_000 + tout * 10_000_000) if status == "ok" else None  # pico-USD
        charged = cost * 3 // 2 if (cost and route == "managed") else 0
        out.append(
            (
                now - rng.randrange(span),
                f"bench-{i}",
                f"proj{i % 3}",
                provider,
                model,
                model,
                route,
                f"keystore:{provider}",
                status,
                None if status == "ok" else "provider_unavailable",
                tin,
                tout,
                0,
                0,
                0,
                cost,
                charged,
                0,
                "genai-prices bench",
                100.0,
                30.0,
            )
        )
    return out


def timed(fn, *args, **kwargs) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def naive_spend_by_day(conn):  # type: ignore[no-untyped-def]
    """Read every row into pandas, then group: the way the benchmark measures against."""
    import pandas as pd

    frame = pd.read_sql("SELECT * FROM requests", conn)
    frame["day"] = pd.to_datetime(frame["ts_ms"] // 86_400_000 * 86_400_000, unit="ms", utc=True)
    frame["cost"] = frame["credits_charged_pusd"] + frame["provider_cost_pusd"].fillna(0) * (
        frame["route"] == "byok"
    )
    return (
        frame.groupby(["day", "route"])
        .agg(
            requests=("request_id", "size"),
            input_tokens=("input_tokens", "sum"),
            output_tokens=("output_tokens", "sum"),
            cost=("cost", "sum"),
        )
        .reset_index()
    )


def raw_sql_spend_by_day(conn):  # type: ignore[no-untyped-def]
    """GROUP BY over every request row in SQLite (what spend() did before the rollup)."""
    return conn.execute(
        "SELECT ts_ms / 86400000, COUNT(*), SUM(input_tokens), SUM(output_tokens), "
        "SUM(provider_cost_pusd), SUM(credits_charged_pusd), SUM(credits_charged_pusd + "
        "CASE WHEN route = 'byok' THEN COALESCE(provider_cost_pusd, 0) ELSE 0 END) "
        "FROM requests GROUP BY 1 ORDER BY 1"
    ).fetchall()


def naive_chart(conn):  # type: ignore[no-untyped-def]
    import plotly.graph_objects as go

    grouped = naive_spend_by_day(conn)
    fig = go.Figure()
    for route, part in grouped.groupby("route"):
        fig.add_trace(go.Bar(x=list(part["day"]), y=list(part["cost"] / 1e12), name=route))
    fig.update_layout(barmode="stack")
    return fig


def bench_queries(n_rows: int, repeats: int) -> dict[str, float]:
    from cencori_nb import charts, reports
    from cencori_nb.ledger import default_ledger

    led = default_ledger()
    rows = synthetic_rows(n_rows)
    t_fill, _ = timed(led.record_many, rows)
    del rows
    print(f"filled {led.count():,} rows in {t_fill:.1f} s ({led.path.stat().st_size / 1e6:.0f} MB)")
    # warm-up: imports and page cache, not measured
    reports.spend(by="day")
    charts.spend_over_time()
    naive_spend_by_day(led.conn)

    results: dict[str, list[float]] = {
        "spend": [],
        "chart": [],
        "naive_spend": [],
        "naive_chart": [],
        "raw_sql": [],
    }
    for _ in range(repeats):  # interleaved, so drift hits both sides alike
        results["spend"].append(timed(reports.spend, by="day")[0])
        results["naive_spend"].append(timed(naive_spend_by_day, led.conn)[0])
        results["chart"].append(timed(charts.spend_over_time)[0])
        results["naive_chart"].append(timed(naive_chart, led.conn)[0])
        results["raw_sql"].append(timed(raw_sql_spend_by_day, led.conn)[0])
    # same answer both ways
    ours = reports.spend(by="day")
    naive = naive_spend_by_day(led.conn).groupby("day")["cost"].sum()
    assert len(ours) == len(naive)
    assert abs(ours["cost_usd"].sum() - naive.sum() / 1e12) < 1e-6
    return {k: statistics.median(v) for k, v in results.items()}


def bench_recording(n: int) -> dict[str, float]:
    """µs per recorded row: plain insert+commit vs a background batching writer."""
    from cencori_nb import accounting, wallet
    from cencori_nb.ledger import Ledger, LedgerRow, default_ledger
    from cencori_nb.types import Completion

    tmp = Path(tempfile.mkdtemp(prefix="cnb-rec-"))
    plain = Ledger(tmp / "plain.sqlite")
    rows = [
        LedgerRow(
            f"p-{i}",
            "proj",
            "openai",
            "byok",
            model="gpt-4o",
            input_tokens=100,
            output_tokens=50,
            provider_cost_usd=Decimal("0.00075"),
        )
        for i in range(n)
    ]
    start = time.perf_counter()
    for row in rows:
        plain.record(row)
    t_plain = (time.perf_counter() - start) / n

    # background writer (Ledger.submit): the caller enqueues; a thread commits batches
    batched = Ledger(tmp / "batched.sqlite")
    rows_b = [
        LedgerRow(
            f"b-{i}",
            "proj",
            "openai",
            "byok",
            model="gpt-4o",
            input_tokens=100,
            output_tokens=50,
            provider_cost_usd=Decimal("0.00075"),
        )
        for i in range(n)
    ]
    start = time.perf_counter()
    for row in rows_b:
        batched.submit(row)
    t_enqueue = (time.perf_counter() - start) / n
    batched.flush()
    t_batched_total = (time.perf_counter() - start) / n
    assert batched.count() == n

    # a whole settle: price + ledger row + wallet debit (managed route) in one transaction
    wallet.top_up(1_000_000)
    comps = [
        Completion(
            text="x",
            model="gpt-4o-2024-08-06",
            provider="openai",
            route="managed",
            input_tokens=100,
            output_tokens=50,
            request_id=f"s-{i}",
            project="proj",
        )
        for i in range(n)
    ]
    accounting.settle(comps[0])
    default_ledger().flush()
    start = time.perf_counter()
    for c in comps[1:]:
        accounting.settle(c)
    t_settle = (time.perf_counter() - start) / (n - 1)
    default_ledger().flush()
    t_settle_total = (time.perf_counter() - start) / (n - 1)
    from cencori_nb import pricing
    from cencori_nb.types import Usage

    u = Usage(100, 50)
    start = time.perf_counter()
    for _ in range(n):
        pricing.provider_cost("openai", "gpt-4o-2024-08-06", u)
    t_price = (time.perf_counter() - start) / n
    return {
        "plain": t_plain,
        "enqueue": t_enqueue,
        "batched_total": t_batched_total,
        "settle": t_settle,
        "settle_total": t_settle_total,
        "price": t_price,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record-n", type=int, default=2000)
    parser.add_argument(
        "--append-doc",
        action="store_true",
        help="append a '## Ledger' section to docs/benchmarks.md",
    )
    parser.add_argument("--doc-title", default="## Ledger", help="heading of the appended section")
    args = parser.parse_args(argv)
    os.environ["CENCORI_NB_HOME"] = tempfile.mkdtemp(prefix="cnb-bench-")

    q = bench_queries(args.rows, args.repeats)
    r = bench_recording(args.record_n)
    lines = [
        f"rows: {args.rows:,}; medians of {args.repeats} interleaved runs; "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs (shared)",
        f"spend(by='day'), GROUP BY daily rollup: {q['spend'] * 1000:8.1f} ms",
        f"naive read_sql + pandas groupby:        {q['naive_spend'] * 1000:8.1f} ms"
        f"   ratio naive/ours: {q['naive_spend'] / q['spend']:.1f}x",
        f"(SQL GROUP BY over all rows, no rollup: {q['raw_sql'] * 1000:8.1f} ms)",
        f"charts.spend_over_time() (fig built):   {q['chart'] * 1000:8.1f} ms",
        f"naive chart (read_sql, groupby, fig):   {q['naive_chart'] * 1000:8.1f} ms"
        f"   ratio naive/ours: {q['naive_chart'] / q['chart']:.1f}x",
        f"record one row, INSERT + commit (WAL, synchronous=NORMAL): {r['plain'] * 1e6:6.1f} µs",
        f"record one row, Ledger.submit (background writer):        "
        f"{r['enqueue'] * 1e6:6.1f} µs  (until committed: {r['batched_total'] * 1e6:.1f} µs)",
        f"accounting.settle() (price, charge, queue row + debit):   "
        f"{r['settle'] * 1e6:6.1f} µs  (until committed: {r['settle_total'] * 1e6:.1f} µs)",
        f"pricing.provider_cost() (cached lookup + direct arithmetic):{r['price'] * 1e6:5.1f} µs",
    ]
    print("\n".join(lines))
    if args.append_doc:
        doc = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        text = (
            f"\n{args.doc_title}\n\n"
            f"`benchmarks/ledger.py` ({stamp}). The spend view groups in SQLite over "
            "integer pico-USD and epoch-ms days; the naive way loads every row into "
            "pandas first. Shared 2-core machine: numbers are noisy, read the ratios "
            "(same run, interleaved).\n\n```\n" + "\n".join(lines) + "\n```\n"
        )
        with doc.open("a", encoding="utf-8") as fh:
            fh.write(text)
        print(f"appended to {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
