"""Team ledger benchmark (issue 17): PostgreSQL against SQLite, on a throwaway cluster.

    .venv/bin/python benchmarks/team_ledger.py [--rows 10000000] [--record 2000]
        [--team 8x8x200] [--skip-team]

1. **Spend views on N rows** (default 10 million): fills a PostgreSQL ledger server-side
   (``generate_series``: 90 days, 40 members, 3 projects, 6 models, both routes), builds the
   daily rollup the way the insert trigger keeps it (one ``INSERT … SELECT … GROUP BY``, as
   SQLite's migration 003 backfills it), ``ANALYZE``, then times ``reports.spend(by="day")``
   and ``reports.spend(by="member")`` (median of 5) and, for comparison, the same
   ``GROUP BY`` straight over ``requests``.
2. **Recording overhead per request**: ``Ledger.record`` (one INSERT + commit) and
   ``Ledger.submit`` + ``flush`` (the background writer's batches) per row, PostgreSQL
   (TCP, password auth, same machine) against SQLite.
3. **Team cap run**: P processes × concurrency 8 × R requests against the sandbox into one
   PostgreSQL ledger under one team hard cap (tests/test_ledger_postgres.run_team): rows
   recorded = requests answered, overshoot within one reservation, wallet equals ledger.

Needs the PostgreSQL server binaries (``./dev test`` installs them). Numbers are noisy on
a shared machine; read ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FILL_SQL = """
INSERT INTO requests (ts_ms, client_id, request_id, project, provider, model_requested, model,
    route, credential_source, status, input_tokens, output_tokens, provider_cost_pusd,
    credits_charged_pusd, estimated, price_version, latency_ms, cost_pusd, member)
SELECT
    {now} - (g * 7919 % {span}),
    'bench-' || g, 'req-' || g,
    'proj' || (g % 3),
    (ARRAY['openai','openai','anthropic','google','mistral','groq'])[g % 6 + 1],
    (ARRAY['gpt-4o','gpt-4o-mini','claude-haiku-4-5','gemini-2.5-flash',
           'mistral-small-latest','llama-3.3-70b-versatile'])[g % 6 + 1],
    (ARRAY['gpt-4o','gpt-4o-mini','claude-haiku-4-5','gemini-2.5-flash',
           'mistral-small-latest','llama-3.3-70b-versatile'])[g % 6 + 1],
    CASE WHEN g % 5 < 2 THEN 'managed' ELSE 'byok' END,
    'keystore',
    CASE WHEN g % 33 = 0 THEN 'error' ELSE 'ok' END,
    50 + g % 3950, 10 + g % 990,
    (50 + g % 3950) * 2500000 + (10 + g % 990) * 10000000,
    CASE WHEN g % 5 < 2 THEN ((50 + g % 3950) * 2500000 + (10 + g % 990) * 10000000) * 3 / 2
         ELSE 0 END,
    0, 'bench', 100.0,
    CASE WHEN g % 5 < 2 THEN ((50 + g % 3950) * 2500000 + (10 + g % 990) * 10000000) * 3 / 2
         ELSE (50 + g % 3950) * 2500000 + (10 + g % 990) * 10000000 END,
    'member-' || (g % 40) || '@team'
FROM generate_series({start}::bigint, {stop}::bigint) AS g
"""

ROLLUP_SQL = """
INSERT INTO requests_daily (day, project, member, provider, model, route, status, requests,
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, provider_cost_pusd,
    credits_charged_pusd, cost_pusd, unpriced, estimated)
SELECT ts_ms / 86400000, project, member, provider, COALESCE(model, model_requested, ''),
    route, status, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens),
    SUM(cache_write_tokens), SUM(provider_cost_pusd), SUM(credits_charged_pusd),
    SUM(COALESCE(cost_pusd, 0)), SUM(CASE WHEN provider_cost_pusd IS NULL THEN 1 ELSE 0 END),
    SUM(CASE WHEN estimated != 0 THEN 1 ELSE 0 END)
FROM requests GROUP BY 1, 2, 3, 4, 5, 6, 7
"""


def _median(fn, repeats: int = 5) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _reset() -> None:
    from cencori_nb import state

    state.reset()


def spend_views(cluster, rows: int) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    from cencori_nb import reports
    from cencori_nb.ledger import default_ledger

    db = cluster.create_database()
    os.environ["CENCORI_NB_LEDGER_URL"] = cluster.url(db)
    _reset()
    led = default_ledger()  # migrates
    now = time.time_ns() // 1_000_000
    t0 = time.perf_counter()
    with psycopg.connect(cluster.url(db), autocommit=True) as conn:
        conn.execute(b"ALTER TABLE requests DISABLE TRIGGER requests_daily_insert")
        step = 1_000_000
        for start in range(0, rows, step):
            stop = min(start + step, rows) - 1
            sql = FILL_SQL.format(now=now, span=90 * 86_400_000, start=start, stop=stop)
            conn.execute(sql.encode())
        conn.execute(ROLLUP_SQL.encode())
        conn.execute(b"ALTER TABLE requests ENABLE TRIGGER requests_daily_insert")
        conn.execute(b"ANALYZE")
        (size,) = conn.execute(b"SELECT pg_size_pretty(pg_database_size(current_database()))")
        (rollup,) = conn.execute(b"SELECT COUNT(*) FROM requests_daily").fetchone()  # type: ignore[misc]
    fill = time.perf_counter() - t0
    print(f"filled {rows:,} rows in {fill:.0f} s ({size[0]}); rollup {rollup:,} rows")
    by_day = _median(lambda: reports.spend(by="day"))
    by_member = _median(lambda: reports.spend(by="member"))
    by_month = _median(lambda: reports.spend(by=["month", "project"]))
    raw_day = _median(
        lambda: led.query(
            "SELECT ts_ms / 86400000, SUM(cost_pusd), COUNT(*) FROM requests GROUP BY 1"
        ),
        repeats=3,
    )
    raw_member = _median(
        lambda: led.query("SELECT member, SUM(cost_pusd), COUNT(*) FROM requests GROUP BY 1"),
        repeats=3,
    )
    print(
        f"spend(by='day')    {by_day * 1000:8.1f} ms  (GROUP BY over requests: "
        f"{raw_day * 1000:,.0f} ms)"
    )
    print(
        f"spend(by='member') {by_member * 1000:8.1f} ms  (GROUP BY over requests: "
        f"{raw_member * 1000:,.0f} ms)"
    )
    print(f"spend(by=['month','project']) {by_month * 1000:8.1f} ms")
    _reset()
    cluster.drop_database(db)


def recording(cluster, n: int) -> None:  # type: ignore[no-untyped-def]
    from cencori_nb.ledger import LedgerRow, default_ledger

    results = {}
    for backend in ("sqlite", "postgresql"):
        if backend == "postgresql":
            db = cluster.create_database()
            os.environ["CENCORI_NB_LEDGER_URL"] = cluster.url(db)
        else:
            os.environ.pop("CENCORI_NB_LEDGER_URL", None)
        _reset()
        led = default_ledger()

        def row(i: int, tag: str) -> LedgerRow:
            return LedgerRow(
                request_id=f"{tag}-{i}",
                project="bench",
                provider="openai",
                route="byok",
                model="gpt-4o-mini",
                input_tokens=100,
                output_tokens=20,
                provider_cost_usd=Decimal("0.0001"),
                member="bench@team",
            )

        rows = [row(i, "r") for i in range(n)]
        t0 = time.perf_counter()
        for r in rows:
            led.record(r)
        record_us = (time.perf_counter() - t0) / n * 1e6
        rows = [row(i, "s") for i in range(n)]
        t0 = time.perf_counter()
        for r in rows:
            led.submit(r)
        enqueue_us = (time.perf_counter() - t0) / n * 1e6
        led.flush()
        submit_us = (time.perf_counter() - t0) / n * 1e6
        results[backend] = (record_us, enqueue_us, submit_us)
        assert led.count() == 2 * n
        _reset()
    for backend, (rec, enq, sub) in results.items():
        print(
            f"{backend:<10} record {rec:8.1f} µs/row · submit (caller) {enq:6.1f} µs/row · "
            f"submit until committed {sub:7.1f} µs/row"
        )
    pg, lite = results["postgresql"], results["sqlite"]
    print(
        f"PostgreSQL/SQLite: record ×{pg[0] / lite[0]:.1f}, caller's submit ×{pg[1] / lite[1]:.1f}"
        f", committed ×{pg[2] / lite[2]:.1f}"
    )


def team(cluster, processes: int, requests: int, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    from cencori_nb.sandbox import SandboxServer
    from tests.test_ledger_postgres import run_team

    db = cluster.create_database()
    os.environ["CENCORI_NB_LEDGER_URL"] = cluster.url(db)
    _reset()
    server = SandboxServer(seed=0)
    server.start_in_thread()
    try:
        cap = Decimal("0.0025") * processes * requests / 4  # about half the requests fit
        fig = run_team(
            server.url,
            cluster.url(db),
            workdir,
            processes=processes,
            requests=requests,
            cap=cap,
        )
    finally:
        server.stop()
    print(
        f"{processes} processes × concurrency 8 × {requests} requests, cap ${fig['cap']}: "
        f"answered {fig['answered']}, refused {fig['refused']}, rows {fig['ok_rows']}, "
        f"spent ${fig['spent']}, overshoot ${fig['overshoot']} (bound ${fig['bound']}), "
        f"debits {fig['debit_rows']} = ${Decimal(fig['debited_pusd']) / 10**12} "
        f"(charged ${Decimal(fig['charged_pusd']) / 10**12}), {fig['members']} members, "
        f"{fig['seconds']:.0f} s"
    )
    ok = (
        fig["answered"] == fig["ok_rows"]
        and fig["overshoot"] <= fig["bound"]
        and fig["debited_pusd"] == fig["charged_pusd"]
        and fig["held"] == 0
    )
    print("team run:", "all guarantees held" if ok else f"FAILED {fig}")
    _reset()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--record", type=int, default=2000)
    parser.add_argument("--team", default="8x200", help="PROCESSESxREQUESTS")
    parser.add_argument("--skip-team", action="store_true")
    parser.add_argument("--skip-rows", action="store_true")
    parser.add_argument("--skip-record", action="store_true")
    args = parser.parse_args()
    from tests.pg_cluster import Cluster, find_bindir

    bindir = find_bindir()
    if bindir is None:
        sys.exit("PostgreSQL server binaries are not installed (./dev test installs them).")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CENCORI_NB_HOME"] = str(Path(tmp) / "home")
        os.environ["CENCORI_NB_MEMBER"] = "bench@team"
        cluster = Cluster(bindir)
        try:
            cluster.init()
            cluster.start()
            print(f"PostgreSQL {cluster.version} (throwaway cluster, fsync off)")
            if not args.skip_record:
                print("== recording overhead per request")
                recording(cluster, args.record)
            if not args.skip_rows:
                print(f"== spend views on {args.rows:,} rows")
                spend_views(cluster, args.rows)
            if not args.skip_team:
                p, r = (int(x) for x in args.team.split("x"))
                print(f"== team cap run ({p} × 8 × {r})")
                team(cluster, p, r, Path(tmp))
        finally:
            cluster.destroy()


if __name__ == "__main__":
    main()
