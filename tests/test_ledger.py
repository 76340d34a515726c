"""The SQLite ledger: schema and migrations, file modes, pragmas, concurrent writers."""

from __future__ import annotations

import multiprocessing
import sqlite3
import stat
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from cencori_nb import ledger as ledger_mod
from cencori_nb import state, wallet
from cencori_nb.errors import ConfigurationError
from cencori_nb.ledger import Ledger, LedgerRow, default_ledger, from_pusd, parse_since, to_pusd
from cencori_nb.migrations import MIGRATIONS, migrate
from tests.ledger_rows import charged_row, noted_row

EXPECTED_REQUESTS_COLUMNS = [
    ("id", "INTEGER"),
    ("ts_ms", "INTEGER"),
    ("client_id", "TEXT"),
    ("request_id", "TEXT"),
    ("project", "TEXT"),
    ("provider", "TEXT"),
    ("model_requested", "TEXT"),
    ("model", "TEXT"),
    ("route", "TEXT"),
    ("credential_source", "TEXT"),
    ("status", "TEXT"),
    ("error_code", "TEXT"),
    ("input_tokens", "INTEGER"),
    ("output_tokens", "INTEGER"),
    ("cache_read_tokens", "INTEGER"),
    ("cache_write_tokens", "INTEGER"),
    ("thinking_tokens", "INTEGER"),
    ("provider_cost_pusd", "INTEGER"),
    ("credits_charged_pusd", "INTEGER"),
    ("estimated", "INTEGER"),
    ("price_version", "TEXT"),
    ("latency_ms", "REAL"),
    ("ttft_ms", "REAL"),
    ("cost_pusd", "INTEGER"),
    ("test_mode", "INTEGER"),
    ("gateway_cache", "TEXT"),
    ("model_original", "TEXT"),
    ("member", "TEXT"),
    ("image_tokens", "INTEGER"),
    ("cache_write_1h_tokens", "INTEGER"),
]
EXPECTED_DAILY_COLUMNS = [
    ("day", "INTEGER"),
    ("project", "TEXT"),
    ("member", "TEXT"),
    ("provider", "TEXT"),
    ("model", "TEXT"),
    ("route", "TEXT"),
    ("status", "TEXT"),
    ("requests", "INTEGER"),
    ("input_tokens", "INTEGER"),
    ("output_tokens", "INTEGER"),
    ("cache_read_tokens", "INTEGER"),
    ("cache_write_tokens", "INTEGER"),
    ("provider_cost_pusd", "INTEGER"),
    ("credits_charged_pusd", "INTEGER"),
    ("cost_pusd", "INTEGER"),
    ("unpriced", "INTEGER"),
    ("estimated", "INTEGER"),
]
EXPECTED_WALLET_COLUMNS = [
    ("id", "INTEGER"),
    ("ts_ms", "INTEGER"),
    ("kind", "TEXT"),
    ("amount_pusd", "INTEGER"),
    ("balance_before_pusd", "INTEGER"),
    ("balance_after_pusd", "INTEGER"),
    ("request_id", "TEXT"),
    ("project", "TEXT"),
    ("note", "TEXT"),
    ("client_id", "TEXT"),
]


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple[str, str]]:
    return [(r[1], r[2]) for r in conn.execute(f"PRAGMA table_info({table})")]


def _objects(conn: sqlite3.Connection) -> set[tuple[str, str]]:
    return {
        (r[0], r[1])
        for r in conn.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
    }


def test_schema_from_an_empty_file(private_home: Path) -> None:
    """A fresh ledger has exactly the migrated tables, columns and indexes."""
    led = default_ledger()
    conn = led.conn
    assert [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY rowid")] == [
        "001_create_requests",
        "002_wallet_and_budget_alerts",
        "003_daily_rollup",
        "004_cost_rule_and_reservations",
        "005_client_ids_and_interrupted",
        "006_gateway_receipts",
        "007_members_and_team_budgets",
        "008_image_tokens",
        "009_cache_write_1h_tokens",
    ]
    assert _columns(conn, "requests") == EXPECTED_REQUESTS_COLUMNS
    assert _columns(conn, "requests_daily") == EXPECTED_DAILY_COLUMNS
    assert _columns(conn, "wallet_transactions") == EXPECTED_WALLET_COLUMNS
    assert _columns(conn, "budget_alerts") == [
        ("project", "TEXT"),
        ("month", "TEXT"),
        ("threshold", "INTEGER"),
        ("ts_ms", "INTEGER"),
    ]
    assert _objects(conn) == {
        ("table", "_migrations"),
        ("table", "requests"),
        ("index", "requests_ts"),
        ("index", "requests_client_id"),
        ("index", "requests_request_id"),
        ("index", "requests_project_ts"),
        ("table", "wallet_transactions"),
        ("index", "wallet_usage_client"),
        ("index", "wallet_refund_client"),
        ("table", "budget_alerts"),
        ("table", "requests_daily"),
        ("trigger", "requests_daily_insert"),
        ("table", "budget_reservations"),
        ("index", "budget_reservations_project"),
        ("index", "requests_member_ts"),
        ("table", "budgets"),
    }
    assert led.path == private_home / "ledger.sqlite"


def test_migration_from_001_keeps_rows(tmp_path: Path) -> None:
    """A file at 001 (with rows) migrates to the latest keeping its rows."""
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, upto="001_create_requests") == ["001_create_requests"]
    conn.execute(
        "INSERT INTO requests (ts_ms, request_id, project, provider, route, status, "
        "credits_charged_pusd) VALUES (1, 'r1', 'p', 'openai', 'managed', 'ok', 5)"
    )
    conn.close()
    led = Ledger(path)
    assert [r[0] for r in led.query("SELECT name FROM _migrations ORDER BY rowid")] == [
        name for name, _ in MIGRATIONS
    ]
    rows = led.rows()
    assert [(r.client_id, r.request_id, r.credits_charged_usd) for r in rows] == [
        ("legacy-1", "r1", Decimal("5E-12"))
    ]
    # 004: rows are unique on client_id, so the same provider id is a new request
    assert led.record(LedgerRow("r1", "p", "openai", "managed")) is True
    assert led.record(LedgerRow("r1", "p", "openai", "managed", client_id="legacy-1")) is False
    assert led.count() == 2
    led.close()


def test_migration_from_the_previous_schema_backfills_the_rollup(tmp_path: Path) -> None:
    """A file at 002 with rows gets 003: the daily rollup is backfilled, then kept current."""
    path = tmp_path / "v2.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, upto="002_wallet_and_budget_alerts") == [
        "001_create_requests",
        "002_wallet_and_budget_alerts",
    ]
    day = 20_000 * 86_400_000
    conn.executemany(
        "INSERT INTO requests (ts_ms, request_id, project, provider, model, route, status, "
        "input_tokens, provider_cost_pusd, credits_charged_pusd) "
        "VALUES (?, ?, 'p', 'openai', 'gpt-4o', ?, 'ok', 10, ?, ?)",
        [
            (day + 1, "a", "managed", 100, 150),
            (day + 2, "b", "byok", 100, 5),
            (day + 3, "c", "byok", None, 0),
        ],
    )
    conn.close()
    led = Ledger(path)
    assert ("003_daily_rollup",) in led.query("SELECT name FROM _migrations ORDER BY rowid")
    assert led.query(
        "SELECT day, route, requests, input_tokens, provider_cost_pusd, "
        "credits_charged_pusd, cost_pusd, unpriced FROM requests_daily "
        "ORDER BY route"
    ) == [(20_000, "byok", 2, 20, 100, 5, 105, 1), (20_000, "managed", 1, 10, 100, 150, 150, 0)]
    led.record(
        LedgerRow(
            "d",
            "p",
            "openai",
            "byok",
            model="gpt-4o",
            input_tokens=1,
            provider_cost_usd=Decimal("1E-12"),
            ts_ms=day + 4,
        )
    )
    # (rows written before 007 have member '', later ones the current member: two keys)
    assert led.query(
        "SELECT SUM(requests), SUM(provider_cost_pusd), SUM(cost_pusd) FROM requests_daily "
        "WHERE route = 'byok'"
    ) == [(3, 101, 106)]
    led.close()


def test_rollup_matches_the_rows() -> None:
    """After many inserts (and ignored duplicates) the rollup equals a GROUP BY of the rows."""
    import random

    rng = random.Random(3)
    led = default_ledger()
    rows = []
    for i in range(300):
        cost = None if rng.random() < 0.1 else Decimal(rng.randint(0, 10**6)) / 10**9
        rows.append(
            LedgerRow(
                f"r{i % 7}",
                rng.choice(["p1", "p2"]),
                "openai",
                rng.choice(["byok", "managed"]),
                client_id=f"c{i % 250}",
                status=rng.choice(["ok", "ok", "error", "cached", "interrupted"]),
                model=rng.choice(["gpt-4o", None]),
                model_requested="gpt-4o",
                input_tokens=rng.randint(0, 99),
                provider_cost_usd=cost,
                credits_charged_usd=Decimal(rng.randint(0, 99)) / 10**6,
                ts_ms=1_700_000_000_000 + rng.randint(0, 5) * 86_400_000,
            )
        )
    for row in rows:
        led.record(row)
    grouped = led.query(
        "SELECT ts_ms / 86400000, project, provider, COALESCE(model, model_requested, ''), "
        "route, status, COUNT(*), SUM(input_tokens), SUM(provider_cost_pusd), "
        "SUM(credits_charged_pusd), SUM(provider_cost_pusd IS NULL) FROM requests "
        "GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6"
    )
    rollup = led.query(
        "SELECT day, project, provider, model, route, status, requests, input_tokens, "
        "provider_cost_pusd, credits_charged_pusd, unpriced FROM requests_daily "
        "ORDER BY 1, 2, 3, 4, 5, 6"
    )
    assert rollup == grouped and len(grouped) > 10


def test_migrate_twice_is_a_no_op(tmp_path: Path) -> None:
    """Opening an up-to-date file applies nothing."""
    led = Ledger(tmp_path / "l.sqlite")
    assert migrate(led.conn) == []
    led.close()


def test_file_modes_and_pragmas(private_home: Path) -> None:
    """ledger.sqlite (and its WAL/SHM files) are 0600; WAL, synchronous=NORMAL, busy timeout."""
    led = default_ledger()
    led.record(LedgerRow("r1", "p", "openai", "byok"))
    for suffix in ("", "-wal", "-shm"):
        path = Path(str(led.path) + suffix)
        assert path.exists(), path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    conn = led.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
    assert stat.S_IMODE(private_home.stat().st_mode) == 0o700


def test_row_round_trip_keeps_exact_money() -> None:
    """Every field comes back as written; money exactly (pico-USD)."""
    led = default_ledger()
    row = LedgerRow(
        "req-1",
        "proj",
        "anthropic",
        "byok",
        status="ok",
        model_requested="claude-sonnet-4-5",
        model="claude-sonnet-4-5-20250929",
        credential_source="keystore:anthropic",
        input_tokens=3000,
        output_tokens=500,
        cache_read_tokens=1000,
        cache_write_tokens=1000,
        thinking_tokens=7,
        provider_cost_usd=Decimal("0.01455"),
        credits_charged_usd=Decimal("0.000000000001"),
        estimated=True,
        price_version="genai-prices 0.2.3",
        latency_ms=12.5,
        ttft_ms=3.25,
        ts_ms=1_700_000_000_123,
    )
    assert led.record(row) is True
    (back,) = led.rows()
    assert back == row


def test_money_conversion_is_exact() -> None:
    """Decimal → pico-USD → Decimal without loss; NULL stays None."""
    for text in ("0.0075", "0.01455", "1.875E-8", "123456.000000000001", "0"):
        assert from_pusd(to_pusd(Decimal(text))) == Decimal(text)
    assert to_pusd(None) is None and from_pusd(None) is None
    assert to_pusd(Decimal("0.0075")) == 7_500_000_000
    assert str(from_pusd(10 * 10**12)) == "10" and str(from_pusd(1200 * 10**12)) == "1200"


def test_rows_are_unique_on_client_id_not_on_the_providers_id() -> None:
    """The provider's request id may repeat (every row kept); a client id may not."""
    led = default_ledger()
    for _ in range(3):
        assert led.record(LedgerRow("same", "p", "openai", "byok")) is True
    assert led.record(LedgerRow("same", "p", "openai", "byok", client_id="c1")) is True
    assert led.record(LedgerRow("other", "p", "openai", "byok", client_id="c1")) is False
    assert (
        led.record(LedgerRow("same", "p", "openai", "byok", status="interrupted", estimated=True))
        is True
    )
    assert led.count() == 5
    assert [r.status for r in led.rows()][-1] == "interrupted"


def test_status_is_checked() -> None:
    """A status other than ok/error/cached/interrupted is refused by the schema."""
    with pytest.raises(sqlite3.IntegrityError):
        default_ledger().record(LedgerRow("x", "p", "openai", "byok", status="weird"))


def _writer(home: str, worker: int, n: int) -> None:
    import os

    os.environ["CENCORI_NB_HOME"] = home
    from cencori_nb.ledger import LedgerRow, default_ledger

    led = default_ledger()
    for i in range(n):
        led.record(
            LedgerRow(
                f"w{worker}-{i}", "p", "openai", "byok", provider_cost_usd=Decimal("0.000001")
            )
        )


def test_two_processes_writing_at_once_lose_nothing(private_home: Path) -> None:
    """Two processes × 500 rows, concurrently: all 1000 rows present, sums exact."""
    default_ledger()  # create and migrate first, as a notebook kernel would
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(private_home), w, 500)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    led = default_ledger()
    assert led.count() == 1000
    assert led.query("SELECT COUNT(DISTINCT request_id), SUM(provider_cost_pusd) FROM requests")[
        0
    ] == (1000, 1000 * 1_000_000)


def test_two_processes_migrating_a_fresh_file(private_home: Path) -> None:
    """Two processes opening a brand-new ledger at once both succeed (one migrates)."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(private_home), w, 20)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    led = default_ledger()
    assert led.count() == 40
    assert led.query("SELECT COUNT(*) FROM _migrations")[0][0] == len(MIGRATIONS)


def test_reopens_after_fork(private_home: Path) -> None:
    """A forked child gets its own connection; its row lands in the same file."""
    led = default_ledger()
    led.record(LedgerRow("parent", "p", "openai", "byok"))
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(
        target=lambda: default_ledger().record(LedgerRow("child", "p", "openai", "byok"))
    )
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert {r.request_id for r in led.rows()} == {"parent", "child"}


def _child_counts() -> None:
    assert default_ledger().count() == 1


def test_a_child_forked_while_another_thread_holds_the_ledger_can_use_it(
    private_home: Path,
) -> None:
    """A child forked while another thread holds the ledger's lock (the writer thread
    mid-commit) must not inherit it held: nobody in the child would release it, and its
    first read or write would hang forever."""
    import threading

    led = default_ledger()
    led.record(LedgerRow("parent", "p", "openai", "byok"))
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with led._lock:  # as the writer holds it while it commits a batch
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(30)
    proc = multiprocessing.get_context("fork").Process(target=_child_counts)
    proc.start()
    release.set()
    holder.join(30)
    proc.join(60)
    hung = proc.is_alive()
    if hung:
        proc.kill()
        proc.join()
    assert not hung and proc.exitcode == 0


def test_default_ledger_follows_the_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Moving CENCORI_NB_HOME opens the ledger there at the next call and closes the old
    one; a reset (cencori_nb.state) closes it."""
    first = default_ledger()
    monkeypatch.setenv("CENCORI_NB_HOME", str(tmp_path / "other"))
    second = default_ledger()
    assert second is not first and second.path == tmp_path / "other" / "ledger.sqlite"
    assert first._conn is None
    state.reset("ledger")
    assert ledger_mod._default.peek() is None


def test_parse_since() -> None:
    """Durations, dates, datetimes and ISO strings become UTC epoch ms."""
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    base = int(now.timestamp() * 1000)
    assert parse_since("7d", now=now) == base - 7 * 86_400_000
    assert parse_since("24h", now=now) == base - 86_400_000
    assert parse_since("30m", now=now) == base - 1_800_000
    assert parse_since("2w", now=now) == base - 14 * 86_400_000
    assert parse_since(date(2026, 11, 1)) == int(
        datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000
    )
    assert parse_since("2026-11-01") == parse_since(date(2026, 11, 1))
    assert parse_since(datetime(2026, 11, 1)) == parse_since(date(2026, 11, 1))
    assert parse_since(None) is None
    with pytest.raises(ConfigurationError, match="7d"):
        parse_since("last tuesday")
    with pytest.raises(ConfigurationError):
        parse_since(7)


def test_submitted_rows_are_visible_to_every_read() -> None:
    """Rows queued for the background writer are flushed before any read."""
    led = default_ledger()
    for i in range(50):
        led.submit(LedgerRow(f"s{i}", "p", "openai", "byok"))
    assert led.count() == 50  # count() reads, so it flushes first
    led.submit(LedgerRow("late", "p", "openai", "byok"))
    assert led.rows()[-1].request_id == "late"


def test_the_writer_gathers_rows_into_one_commit_and_a_flush_ends_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows submitted while the writer lingers share one transaction; flush() (every read,
    a budget check, interpreter exit) commits them at once instead of waiting it out."""
    monkeypatch.setattr(ledger_mod, "WRITER_LINGER_S", 3600.0)  # only a flush can end it
    led = default_ledger()
    statements: list[str] = []
    led.conn.set_trace_callback(statements.append)
    for i in range(30):
        led.submit(LedgerRow(f"g{i}", "p", "openai", "byok"))
    led.flush()  # would hang for an hour if the linger were not cut short
    led.conn.set_trace_callback(None)
    assert statements.count("COMMIT") == 1
    assert statements.count("BEGIN IMMEDIATE") == 1  # one transaction for the 30 rows
    assert led.count() == 30


def test_a_full_batch_is_committed_without_a_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """The linger never holds more than WRITER_MAX_BATCH rows: a full batch commits."""
    monkeypatch.setattr(ledger_mod, "WRITER_LINGER_S", 3600.0)
    monkeypatch.setattr(ledger_mod, "WRITER_MAX_BATCH", 5)
    led = default_ledger()
    for i in range(5):
        led.submit(LedgerRow(f"f{i}", "p", "openai", "byok"))
    writer = led._writer
    assert writer is not None
    with writer.cond:  # no flush: the writer commits the full batch by itself
        writer.cond.wait_for(lambda: writer.done >= 5)
    other = sqlite3.connect(led.path)
    try:
        assert other.execute("SELECT COUNT(*) FROM requests").fetchone() == (5,)
    finally:
        other.close()


def test_on_insert_runs_in_the_rows_transaction_only_when_inserted() -> None:
    """The callback runs once for a new row and not for a duplicate ok row."""
    led = default_ledger()
    calls: list[str] = []
    led.submit(
        LedgerRow("dup", "p", "openai", "byok", client_id="c-dup"),
        on_insert=lambda c: calls.append("a"),
    )
    led.submit(
        LedgerRow("dup", "p", "openai", "byok", client_id="c-dup"),
        on_insert=lambda c: calls.append("b"),
    )
    led.flush()
    assert calls == ["a"] and led.count() == 1


def test_a_bad_row_is_dropped_alone_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A row failing a CHECK is logged and dropped; rows queued with it are written."""
    led = default_ledger()
    with led._lock:  # hold the writer back so the bad row shares a batch
        led.submit(LedgerRow("good1", "p", "openai", "byok"))
        led.submit(LedgerRow("bad", "p", "openai", "byok", status="weird"))
        led.submit(LedgerRow("good2", "p", "openai", "byok"))
    led.flush()
    assert [r.request_id for r in led.rows()] == ["good1", "good2"]
    assert led.dropped == 1
    assert "could not be written" in caplog.text and "CHECK" in caplog.text


def test_threads_submitting_at_once() -> None:
    """Four threads × 200 submitted rows: all present after a flush."""
    import threading

    led = default_ledger()

    def work(t: int) -> None:
        for i in range(200):
            led.submit(
                LedgerRow(f"t{t}-{i}", "p", "openai", "byok", provider_cost_usd=Decimal("0.000001"))
            )

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert led.query("SELECT COUNT(*), SUM(provider_cost_pusd) FROM requests")[0] == (
        800,
        800 * 1_000_000,
    )


def _settle_and_exit(home: str, n: int) -> None:
    import os

    os.environ["CENCORI_NB_HOME"] = home
    from cencori_nb import accounting
    from cencori_nb.types import Completion

    for i in range(n):
        accounting.settle(
            Completion(
                text="x",
                model="gpt-4o",
                provider="openai",
                route="byok",
                input_tokens=10,
                output_tokens=5,
                request_id=f"exit-{i}",
                project="p",
            )
        )
    # no flush: interpreter exit (atexit) must write what is queued


def test_queued_rows_are_written_at_interpreter_exit(private_home: Path) -> None:
    """A process that settles and exits without flushing leaves every row on disk."""
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_settle_and_exit, args=(str(private_home), 300))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0
    assert default_ledger().count() == 300


def test_reading_inside_a_transaction_does_not_deadlock() -> None:
    """A read inside transaction() while another thread has queued rows returns (no wait on
    the writer, which needs the same lock); the queued rows follow after the commit."""
    import threading

    led = default_ledger()
    with led.transaction() as conn:
        t = threading.Thread(target=led.submit, args=(LedgerRow("q", "p", "openai", "byok"),))
        t.start()
        t.join()
        assert led.query("SELECT COUNT(*) FROM requests") == [(0,)]
        conn.execute("SELECT 1")
    assert led.count() == 1


def _child_submits() -> None:
    led = default_ledger()
    led.submit(LedgerRow("child-q", "p", "openai", "byok"))
    led.flush()


def test_forked_child_gets_its_own_writer(private_home: Path) -> None:
    """After fork, the child's submit starts its own writer; the parent's keeps working."""
    led = default_ledger()
    led.submit(LedgerRow("parent-1", "p", "openai", "byok"))
    led.flush()
    proc = multiprocessing.get_context("fork").Process(target=_child_submits)
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    led.submit(LedgerRow("parent-2", "p", "openai", "byok"))
    assert sorted(r.request_id for r in led.rows()) == ["child-q", "parent-1", "parent-2"]


def test_journals_of_this_and_older_versions_are_reclaimed(private_home: Path) -> None:
    """A dead process's in-flight journal is recorded whether its lines are this version's
    ``[2, values…]`` or the ``{"v": 1, "row": {…}}`` objects older versions wrote; a torn
    last line is skipped."""
    import json

    def intent(client_id: str) -> tuple[object, ...]:
        return noted_row(client_id, "byok", cost_usd=None).as_params()

    inflight = default_ledger().inflight_dir
    inflight.mkdir(exist_ok=True)
    (inflight / "999999-deadbeef.jsonl").write_text(
        json.dumps({"v": 1, "row": dict(zip(ledger_mod.COLUMNS, intent("old-1"), strict=True))})
        + "\n"
        + json.dumps([2, *intent("new-2")])
        + "\n"
        # this version's line, written before the last column (image_tokens) existed
        + json.dumps([2, *intent("mid-3")[:-1]])
        + "\n"
        + '[2, 1796000000000, "torn'
    )
    state.reset("ledger", "wallet")  # the next start reclaims what the dead process left
    rows = sorted(default_ledger().rows(), key=lambda r: r.client_id)
    assert [(r.client_id, r.status, r.error_code, r.input_tokens) for r in rows] == [
        ("mid-3", "interrupted", "process_ended", 1000),
        ("new-2", "interrupted", "process_ended", 1000),
        ("old-1", "interrupted", "process_ended", 1000),
    ]
    assert all(r.cost_usd is not None and r.cost_usd > 0 for r in rows)  # priced
    assert list(inflight.glob("*.jsonl")) == []


def test_a_settled_line_replaces_the_estimate_and_a_bad_one_does_not(
    private_home: Path,
) -> None:
    """A dead process's journal: a request whose settled row was journalled (``[3, debit,
    values…]``, written when the row was queued) is recorded as that row, with its wallet
    debit once; a request whose settled line is torn or damaged keeps its estimate."""
    import json

    def intent(client_id: str) -> list[object]:
        return [2, *noted_row(client_id, "managed", cost_usd=None).as_params()]

    def settled(client_id: str, debit: object) -> list[object]:
        row = LedgerRow(
            "chatcmpl-" + client_id,
            "default",
            "openai",
            "managed",
            model="gpt-4o-mini",
            input_tokens=12,
            output_tokens=34,
            provider_cost_usd=Decimal("0.000021"),
            credits_charged_usd=Decimal("0.000025"),
            cost_usd=Decimal("0.000025"),
            client_id=client_id,
        )
        return [3, debit, *row.as_params()]

    wallet.set_balance(1)  # the wallet mirror tracks: debits are written
    inflight = default_ledger().inflight_dir
    inflight.mkdir(exist_ok=True)
    lines = [
        intent("a-settled"),
        intent("b-bad-debit"),
        intent("c-torn"),
        settled("a-settled", 25_000_000),  # 0.000025 USD in pico-dollars
        settled("b-bad-debit", -5),
    ]
    torn = json.dumps(settled("c-torn", 25_000_000))[:-40]
    (inflight / "999999-cafef00d.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines) + torn
    )
    state.reset("ledger", "wallet")  # the next start reclaims what the dead process left
    state.reset("ledger", "wallet")  # and a second start records nothing twice
    rows = sorted(default_ledger().rows(), key=lambda r: r.client_id)
    assert [
        (r.client_id, r.status, r.estimated, r.input_tokens, r.output_tokens) for r in rows
    ] == [
        ("a-settled", "ok", False, 12, 34),
        ("b-bad-debit", "interrupted", True, 1000, 0),
        ("c-torn", "interrupted", True, 1000, 0),
    ]
    assert rows[0].request_id == "chatcmpl-a-settled"
    assert rows[0].credits_charged_usd == Decimal("0.000025")
    usage = [t for t in wallet.transactions(as_frame=False) if t.kind == "usage"]
    by_client = {t.client_id: t.amount for t in usage}
    assert by_client["a-settled"] == Decimal("-0.000025")
    assert len(usage) == len(by_client) == 3  # one debit per request, the rest estimated
    assert list(inflight.glob("*.jsonl")) == []


def test_a_damaged_or_hostile_journal_never_stops_the_ledger_opening(
    private_home: Path,
) -> None:
    """A dead process's journal (a synced home may hold anything) with lines whose values
    cannot be a row: a list, a 2**100 token count, an Infinity, a float as money, a word
    as a count, a number as a name, no client id, a debit that is not its row's charge (on
    a BYOK row), a negative count or amount, a note whose cache counts exceed its input
    (priced, it would cost less than nothing: a negative debit, refused by the wallet,
    failed the reclaim at every start). Each such line is skipped like a torn one (a
    request keeps its estimate when only its settled line is bad), the ledger opens, and
    the wallet is debited only what rows say. A NUL in a text is not damage (a provider's
    id may hold one): that settled row is recorded with U+FFFD in its place (clean_text,
    on both backends)."""
    import json

    columns = ledger_mod.COLUMNS

    def estimate(cid: str, **change: object) -> list[object]:
        values = list(noted_row(cid, "byok", cost_usd=None).as_params())
        for name, value in change.items():
            values[columns.index(name)] = value
        return [2, *values]

    def settled(cid: str, debit: object = None, **change: object) -> list[object]:
        values = list(
            LedgerRow(
                "chatcmpl-" + cid,
                "default",
                "openai",
                "byok",
                model="gpt-4o-mini",
                input_tokens=12,
                output_tokens=34,
                provider_cost_usd=Decimal("0.000021"),
                cost_usd=Decimal("0.000021"),
                client_id=cid,
            ).as_params()
        )
        for name, value in change.items():
            values[columns.index(name)] = value
        return [3, debit, *values]

    hostile = {
        "s-list": settled("s-list", request_id=["a", "b"]),
        "s-huge": settled("s-huge", output_tokens=2**100),
        "s-float-money": settled("s-float-money", cost_pusd=1e300),
        "s-word": settled("s-word", input_tokens="twelve"),  # PostgreSQL refuses it
        "s-number": settled("s-number", project=7),
        "s-byok-debit": settled("s-byok-debit", 10**30),  # a BYOK row charges nothing
        "s-other-debit": settled(
            "s-other-debit", 10**15, credits_charged_pusd=25_000_000, route="managed"
        ),
        "s-negative": settled("s-negative", output_tokens=-34),
        "s-negative-cost": settled("s-negative-cost", cost_pusd=-21_000_000),
    }
    lines: list[object] = [estimate(cid) for cid in hostile]
    lines += hostile.values()
    lines += [
        # without a client id, a debit cannot be made idempotent (wallet.debit_in refuses)
        settled("x", 25_000_000, client_id="", credits_charged_pusd=25_000_000, route="managed"),
        estimate("x", client_id="", route="managed"),
        estimate("e-list", project={"a": 1}),
        estimate("e-huge", input_tokens=2**100),
        estimate("e-negative", input_tokens=-(10**9), route="managed"),
        estimate("e-cache-read", cache_read_tokens=10**9, route="managed"),
        estimate("e-cache-1h", cache_write_1h_tokens=10**9, route="managed"),
        settled("ok-settled"),
        estimate("ok-nul"),
        settled("ok-nul", request_id="chatcmpl-\x00"),
    ]
    wallet.set_balance(1)  # the wallet mirror tracks: debits would show
    inflight = default_ledger().inflight_dir
    inflight.mkdir(exist_ok=True)
    (inflight / "999999-0badf11e.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines)
        + '[2, 0, "e-inf", "", "default", "openai", null, "gpt-4o-mini", "byok", "", '
        '"interrupted", "process_ended", Infinity]\n'
    )
    state.reset("ledger", "wallet")  # the next start reclaims what the dead process left
    rows = {r.client_id: r for r in default_ledger().rows()}
    assert sorted(rows) == sorted([*hostile, "ok-settled", "ok-nul"])
    for cid in hostile:  # each kept its estimate
        assert (rows[cid].status, rows[cid].estimated, rows[cid].input_tokens) == (
            "interrupted",
            True,
            1000,
        )
    assert (rows["ok-settled"].status, rows["ok-settled"].output_tokens) == ("ok", 34)
    assert (rows["ok-nul"].status, rows["ok-nul"].request_id) == ("ok", "chatcmpl-\ufffd")
    assert wallet.balance() == Decimal(1)  # BYOK rows: nothing debited
    assert list(inflight.glob("*.jsonl")) == []


def _send_a_row_no_database_takes(home: str, field: str, value: object) -> None:
    import os

    os.environ["CENCORI_NB_HOME"] = home
    led = default_ledger()
    led.begin(noted_row("huge-1", "byok", cost_usd=None))
    row = LedgerRow("chatcmpl-1", "default", "openai", "byok", client_id="huge-1")
    setattr(row, field, value)
    led.submit(row)
    led.flush()
    assert led.dropped == 1  # logged and dropped, and its estimate written in its place
    assert [(r.client_id, r.status, r.estimated) for r in led.rows()] == [
        ("huge-1", "interrupted", True)
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("input_tokens", 2**70),
        ("output_tokens", -5),
        ("cache_read_tokens", -1),
        ("provider_cost_usd", Decimal("-0.015")),
        ("credits_charged_usd", Decimal("-5")),
    ],
    ids=["past-64-bits", "negative-count", "negative-cache", "negative-cost", "negative-charge"],
)
def test_a_row_no_database_takes_is_recorded_as_its_estimate(
    private_home: Path, field: str, value: object
) -> None:
    """A hostile endpoint can answer with a token count past 64 bits: the row cannot be
    stored (the writer logs and drops it), and the estimate noted before the request was
    sent is written in its place at once. A row with a count or an amount below zero is
    refused the same way, by the check a replay makes (ledger._storable): stored live, it
    was a negative charge, and its replay from the journal was damage. The next start
    records nothing more (a settled line that cannot be stored is skipped there, not
    fatal: test_a_damaged_or_hostile…).
    An id holding a lone surrogate was such a row too; it is now stored cleaned, with its
    real usage (test_text_no_database_holds_is_stored_as_replacement_characters)."""
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_send_a_row_no_database_takes, args=(str(private_home), field, value))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0
    rows = default_ledger().rows()
    assert [(r.client_id, r.status, r.estimated, r.input_tokens) for r in rows] == [
        ("huge-1", "interrupted", True, 1000)
    ]


def _queue_a_row_failing_a_check(home: str, how: str) -> None:
    """In a fresh process: a managed request noted in flight, whose row as queued fails
    the schema's CHECK (a status no version writes: a bug), queued after a good one;
    then the process is killed (before the writer tries the row, or as the writer drops
    it, after the journal was compacted) or goes on and exits."""
    import os
    import signal

    os.environ["CENCORI_NB_HOME"] = home
    if how == "killed before commit":
        ledger_mod.WRITER_LINGER_S = 3600.0  # nothing commits unless flushed
    if how == "killed as dropped, compacted":
        ledger_mod.JOURNAL_COMPACT_BYTES = 0  # rewritten at every commit with requests open

        def die(self: Ledger, batch: list[object], exc: BaseException) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        Ledger._drop = die  # type: ignore[method-assign]
    led = default_ledger()
    led.begin(noted_row("good-2", "byok", cost_usd=None))
    led.begin(noted_row("bad-1", "managed", cost_usd=None))
    row = LedgerRow(
        "chatcmpl-bad-1",
        "default",
        "openai",
        "managed",
        status="weird",
        model="gpt-4o-mini",
        input_tokens=12,
        output_tokens=34,
        credits_charged_usd=Decimal("0.000025"),
        cost_usd=Decimal("0.000025"),
        client_id="bad-1",
    )
    with led._lock:  # one batch, the good row first: it commits (and compacts) first
        led.submit(LedgerRow("chatcmpl-good-2", "default", "openai", "byok", client_id="good-2"))
        led.submit(row, debit_usd=Decimal("0.000025"))
    if how == "killed before commit":
        os.kill(os.getpid(), signal.SIGKILL)
    led.flush()  # the writer commits good-2, drops bad-1 (logged), writes its estimate
    assert led.dropped == 1 and led.has_row("good-2")
    assert [r.status for r in led.rows(status="interrupted")] == ["interrupted"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize(
    "how", ["killed before commit", "killed as dropped, compacted", "dropped, exited"]
)
def test_a_paid_row_failing_a_check_is_recorded_as_its_estimate(
    private_home: Path, how: str, backend: str, request: pytest.FixtureRequest
) -> None:
    """A request's row as queued fails a CHECK after its settled line is in the in-flight
    journal. Killed before the writer tried it, or as the writer drops it (the journal
    compacted by the good row's commit just before), the next start cannot store the
    settled row either (the same CHECK): it records the estimate noted before the request
    was sent (interrupted, estimated tokens, priced, and its wallet debit), as it did
    before settled lines existed. A process that lives on writes that estimate at once,
    and the next start adds nothing. Before, the settled row was dropped at the reclaim
    too, and a compacted journal had lost the estimate: the request, paid for, was
    recorded nowhere. The same on a real PostgreSQL server, where the refused INSERT
    aborts its transaction unless fenced (the child inherits CENCORI_NB_LEDGER_URL and is
    killed by a real SIGKILL)."""
    import json
    import signal

    if backend == "postgresql":
        request.getfixturevalue("pg_url")
    assert default_ledger().dialect == backend
    inflight = default_ledger().inflight_dir
    wallet.set_balance(1)  # the wallet mirror tracks: the estimate's debit is written
    state.reset("ledger", "wallet")
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_queue_a_row_failing_a_check, args=(str(private_home), how))
    proc.start()
    proc.join(120)
    assert proc.exitcode == (0 if how == "dropped, exited" else -signal.SIGKILL)
    if how == "killed as dropped, compacted":  # only bad-1 is left: its estimate, its row
        (journal,) = inflight.glob("*.jsonl")
        left = [json.loads(line) for line in journal.read_text().splitlines()]
        cid = 1 + ledger_mod.COLUMNS.index("client_id")
        assert [(line[0], line[cid + (line[0] == 3)]) for line in left] == [
            (2, "bad-1"),
            (3, "bad-1"),
        ]
    for _ in range(2):  # two later starts: recorded once
        state.reset("ledger", "wallet")
        default_ledger().flush()
    rows = {r.client_id: r for r in default_ledger().rows()}
    assert sorted(rows) == ["bad-1", "good-2"]
    bad = rows["bad-1"]
    assert (bad.status, bad.estimated, bad.input_tokens, bad.error_code) == (
        "interrupted",
        True,
        1000,
        "process_ended",
    )
    assert bad.credits_charged_usd > 0  # the estimate, priced on the managed route
    usage = [t for t in wallet.transactions(as_frame=False) if t.kind == "usage"]
    assert [(t.client_id, -t.amount) for t in usage] == [("bad-1", bad.credits_charged_usd)]
    assert list(default_ledger().inflight_dir.glob("*.jsonl")) == []


def test_the_journal_notes_a_queued_row_only_for_a_noted_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Queueing the row of a request noted in flight appends its settled line (before the
    writer can commit it); a row of a request never noted adds nothing; once the rows
    are committed the journal is empty again."""
    import json

    monkeypatch.setattr(ledger_mod, "WRITER_LINGER_S", 3600.0)  # only a flush commits
    led = default_ledger()
    led.begin(noted_row("n-1"))
    journal = led._journal
    assert journal is not None
    led.submit(LedgerRow("req-1", "default", "openai", "byok", client_id="n-1", input_tokens=7))
    led.submit(LedgerRow("req-2", "default", "openai", "byok", client_id="never-noted"))
    lines = [json.loads(x) for x in journal.path.read_text().splitlines()]
    assert [(line[0], line[1] if line[0] == 3 else None) for line in lines] == [
        (2, None),
        (3, None),
    ]
    assert lines[1][2 + ledger_mod.COLUMNS.index("client_id")] == "n-1"
    assert lines[1][2 + ledger_mod.COLUMNS.index("input_tokens")] == 7
    led.flush()
    assert journal.path.read_text() == ""


def test_client_ids_are_version_7_uuids_in_hex_ordered_by_time() -> None:
    """new_client_id writes a version 7 UUID's hex (RFC 9562): its first 48 bits are the
    Unix time in ms, so ids sort by when they were made (index locality), and 74 bits
    are random (rows are unique on it; nobody can guess the next one)."""
    import time
    import uuid

    from cencori_nb.ledger import new_client_id

    before = int(time.time() * 1000)
    made = [new_client_id() for _ in range(2000)]
    after = int(time.time() * 1000)
    assert len(set(made)) == 2000
    for cid in made:
        parsed = uuid.UUID(cid)
        assert parsed.hex == cid and parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert before <= int(cid[:12], 16) <= after
    times = [int(cid[:12], 16) for cid in made]
    assert times == sorted(times)
    # the random part: within one millisecond, ids differ in far more than a counter's bits
    tails = {int(cid[13:], 16) for cid in made}
    assert len(tails) == 2000
    assert max(tails).bit_length() > 70


def test_a_journal_line_is_what_json_writes_for_the_rows_values() -> None:
    """The in-flight journal's encoder (built once) writes what json.dumps writes for the
    same values, so every older and newer reader parses it the same."""
    import json

    from cencori_nb.ledger import JOURNAL_VERSION, _journal_chunks

    values = (
        JOURNAL_VERSION,
        1_790_000_000_123,
        "c" * 32,
        "",
        'projét ✓ \\u2028 "quoted" \n',
        None,
        True,
        False,
        0,
        -7,
        12.5,
        1e-7,
        float("inf"),
        10**30,
    )
    line = "".join(_journal_chunks(values, 0))
    assert line == json.dumps(list(values), separators=(",", ":"))
    assert json.loads(line) == list(values)
    with pytest.raises(TypeError):  # a value JSON cannot hold is refused, as before
        "".join(_journal_chunks((JOURNAL_VERSION, object()), 0))


def test_a_forked_child_draws_client_ids_of_its_own() -> None:
    """Client ids come from a per-process key and counter: a forked child is given a new
    key (and the parent keeps its own), so the two never hand out the same next id."""
    import os

    from cencori_nb.ledger import new_client_id

    new_client_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, " ".join(new_client_id() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 4096).decode().split()
    os.close(read)
    parent = [new_client_id() for _ in range(3)]
    assert len(child) == 3 and not set(child) & set(parent)


def test_a_journal_with_requests_always_in_flight_is_compacted(
    private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long map never has nothing in flight, so its journal is never emptied: past
    JOURNAL_COMPACT_BYTES it is rewritten with only the open requests' latest lines. What
    it then holds is what a later start reclaims: each open request once, nothing twice."""
    import fcntl
    import json
    import os

    monkeypatch.setattr(ledger_mod, "JOURNAL_COMPACT_BYTES", 4000)
    monkeypatch.setattr(ledger_mod, "WRITER_LINGER_S", 3600.0)  # commits only at a flush
    led = default_ledger()
    for i in range(60):  # three requests in flight at any time, 60 in all
        led.begin(noted_row(f"r{i:02}", "byok", cost_usd=None))
        if i >= 2:
            led.submit(
                LedgerRow(f"req-{i - 2}", "default", "openai", "byok", client_id=f"r{i - 2:02}")
            )
            led.flush()  # committed: resolved, and compacted when past the limit
    journal = led._journal
    assert journal is not None
    text = journal.path.read_text()
    client_id = 1 + ledger_mod.COLUMNS.index("client_id")
    lines = [json.loads(line) for line in text.splitlines()]
    kept = [line[client_id + (1 if line[0] == 3 else 0)] for line in lines]
    # 60 notes and 58 settled lines were written (~36 kB); what is left is a few lines
    assert len(text) < 5000 and len(kept) < 30  # uncompacted: 118 lines
    assert {"r58", "r59"} <= set(kept)
    assert list(led.inflight_dir.glob("*.compacting")) == []
    # a process killed mid-compaction leaves its half-written copy; a live one's is kept
    dead = led.inflight_dir / "999999-deadbeef.jsonl.compacting"
    dead.write_text('[2, "half')
    live = led.inflight_dir / "999998-cafef00d.jsonl.compacting"
    live.write_text("")
    held = os.open(live, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    # this process dies now: what its journal holds is all a later start has
    (led.inflight_dir / "999997-feedface.jsonl").write_text(text)
    try:
        state.reset("ledger", "wallet")  # the next start
        rows = {r.client_id: r.status for r in default_ledger().rows()}
        assert not dead.exists() and live.exists()
    finally:
        os.close(held)
    assert rows == {f"r{i:02}": "ok" for i in range(58)} | {
        "r58": "interrupted",
        "r59": "interrupted",
    }


# ------------------------------------------------------------------ text no database holds

# A hostile reply's id (valid JSON: "\ud800" is a lone surrogate, not UTF-8) with a NUL
# (PostgreSQL text cannot hold one) and a trailing low surrogate.
HOSTILE_ID = "chatcmpl-\ud800x\x00y\udfff"
CLEANED_ID = "chatcmpl-\ufffdx\ufffdy\ufffd"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_text_no_database_holds_is_stored_as_replacement_characters(
    backend: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """A provider's id or model name holding a lone surrogate or a NUL is stored with
    U+FFFD in their place, on both backends (one rule): the row the live writer commits,
    a row left in the spill file and a dead process's settled journal line keep their
    real tokens, charge and wallet debit; a lookup by the raw text finds what was stored;
    the usage table, its CSV export and `cencori-nb usage --csv` work; a wallet note is
    stored the same way. Before, a lone surrogate made the row unstorable: the live row
    and the settled line were recorded as the pre-send estimate (1,000 tokens, no
    answer's cost), the spilled one was skipped, SQLite kept a NUL as it was, and a
    wallet note with a surrogate was a UnicodeEncodeError on SQLite only."""
    import json

    from cencori_nb import reports
    from cencori_nb.cli import main

    if backend == "postgresql":
        request.getfixturevalue("pg_url")
    wallet.set_balance(10)
    led = default_ledger()
    assert led.dialect == backend
    led.begin(noted_row("live", "managed"))
    led.submit(
        charged_row("live", HOSTILE_ID, model="gpt-4o-mini\ud800"), debit_usd=Decimal("0.25")
    )
    led.flush()
    led.check()  # nothing waits: the next request may go
    assert led.dropped == 0

    spilled = ledger_mod._Item(charged_row("spill", HOSTILE_ID).as_params(), None, None)
    line = spilled.to_json()
    line["row"]["request_id"] = HOSTILE_ID  # as an older version wrote it, raw
    line["debit_pusd"] = line["row"]["credits_charged_pusd"]
    led.spill_path.write_text(json.dumps(line) + "\n")
    settled = list(charged_row("journal").as_params())
    settled[ledger_mod.COLUMNS.index("request_id")] = HOSTILE_ID
    led.inflight_dir.mkdir(exist_ok=True)
    (led.inflight_dir / "999999-0000beef.jsonl").write_text(
        json.dumps([2, *noted_row("journal", "managed").as_params()])
        + "\n"
        + json.dumps([3, settled[ledger_mod.COLUMNS.index("credits_charged_pusd")], *settled])
        + "\n"
    )
    state.reset("ledger", "wallet")  # the next start replays the spill file and the journal
    led = default_ledger()
    led.flush()
    rows = {r.client_id: r for r in led.rows()}
    assert sorted(rows) == ["journal", "live", "spill"]
    for row in rows.values():
        assert (row.status, row.estimated, row.input_tokens, row.output_tokens) == (
            "ok",
            False,
            12,
            34,
        )
        assert (row.request_id, row.credits_charged_usd) == (CLEANED_ID, Decimal("0.25"))
    assert rows["live"].model == "gpt-4o-mini\ufffd"
    debits = led.query(
        "SELECT client_id, -amount_pusd, request_id FROM wallet_transactions "
        "WHERE kind = 'usage' ORDER BY client_id"
    )
    assert debits == [(cid, 250_000_000_000, CLEANED_ID) for cid in ("journal", "live", "spill")]
    assert wallet.balance() == Decimal("9.25")
    assert led.query(
        "SELECT client_id FROM requests WHERE request_id = ? ORDER BY client_id", (HOSTILE_ID,)
    ) == [("journal",), ("live",), ("spill",)]

    frame = reports.usage()
    exported = frame.to_csv(index=False)
    assert exported.encode("utf-8").count(CLEANED_ID.encode()) == 3
    capsys.readouterr()
    assert main(["usage", "--csv"]) == 0
    assert capsys.readouterr().out.count(CLEANED_ID) == 3
    assert led.spill_path.read_text() == ""
    assert list(led.inflight_dir.glob("*.jsonl")) == []
    # every statement, not only rows: a wallet note (from a prompt built from bad bytes)
    wallet.top_up(1, note="paid from \udcff bytes\x00")
    assert [t.note for t in wallet.transactions(as_frame=False) if t.kind == "topup"] == [
        "paid from \ufffd bytes\ufffd"
    ]


# ------------------------------------------------------------------ 1-hour cache writes

# claude-sonnet-4-6 in genai-prices: $3 in, $3.75 (5-minute) and $6 (1-hour) cache writes,
# $15 out per million (tests/providers/test_anthropic.py checks the rates themselves).
SONNET_1H_LIVE = (
    13 * Decimal(3) + 913 * Decimal("3.75") + 3000 * Decimal(6) + 4 * Decimal(15)
) / 1_000_000


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_one_hour_cache_writes_are_kept_so_a_repriced_row_equals_its_live_price(
    backend: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """Anthropic bills 1-hour cache writes at 2x base input against 1.25x for 5-minute
    ones. The row keeps the 1-hour share (its own column), and so do the journal's
    settled line and the spill line: every place that prices again from rows (the usage
    table fed to compare_costs, a Completion list, a dead process's journal, the spill
    replay) gets the price the request was settled at, not the 5-minute rate for all.
    Lines written before the column existed read as 0. Before, only the total was kept
    and a re-priced row came out $0.00675 cheaper than it was billed."""
    import json

    from cencori_nb import accounting, reports
    from cencori_nb.cli import main
    from cencori_nb.types import Completion

    if backend == "postgresql":
        request.getfixturevalue("pg_url")

    def answered(cid: str) -> Completion:
        return Completion(
            text="ok",
            model="claude-sonnet-4-6",
            provider="anthropic",
            route="byok",
            input_tokens=3926,
            output_tokens=4,
            cache_write_tokens=3913,
            cache_write_1h_tokens=3000,
            request_id="msg_" + cid,
            client_id=cid,
        )

    live = accounting.settle(answered("live"))
    assert live.provider_cost_usd == SONNET_1H_LIVE
    led = default_ledger()
    assert led.dialect == backend
    col = ledger_mod.COLUMNS.index("cache_write_1h_tokens")
    # a dead process's settled line and note (priced again at the reclaim), a spilled row,
    # and a settled line an older version wrote (no 1-hour column): what a start reads back
    settled = ledger_mod._Item(
        accounting._row(answered("journal"), status="ok").as_params(), None, None
    )
    old = list(accounting._row(answered("old"), status="ok").as_params())
    assert settled.params is not None and settled.params[col] == 3000
    noted = accounting._row(answered("noted"), status="interrupted", estimated=True)
    led.inflight_dir.mkdir(exist_ok=True)
    (led.inflight_dir / "999999-00c0ffee.jsonl").write_text(
        json.dumps([3, None, *settled.params])
        + "\n"
        + json.dumps([3, None, *old[:col]])
        + "\n"
        + json.dumps([2, *noted.as_params()])
        + "\n"
    )
    spilled = ledger_mod._Item(
        accounting._row(answered("spill"), status="ok").as_params(), None, None
    )
    led.spill_path.write_text(json.dumps(spilled.to_json()) + "\n")
    state.reset("ledger", "wallet")
    led = default_ledger()
    rows = {r.client_id: r for r in led.rows()}
    assert {cid: r.cache_write_1h_tokens for cid, r in rows.items()} == {
        "journal": 3000,
        "live": 3000,
        "noted": 3000,
        "old": 0,
        "spill": 3000,
    }
    assert led.query(
        "SELECT SUM(cache_write_1h_tokens) FROM requests WHERE client_id != 'old'"
    ) == [(12000,)]
    # the note, priced from its row at the reclaim: the live price, not the 5-minute one
    assert (rows["noted"].status, rows["noted"].provider_cost_usd) == (
        "interrupted",
        SONNET_1H_LIVE,
    )
    assert rows["live"].provider_cost_usd == SONNET_1H_LIVE

    frame = reports.usage()
    frame = frame[frame["client_id"] == "live"]
    assert list(frame["cache_write_1h_tokens"]) == [3000]
    repriced = reports.compare_costs(frame, include_peers=False)
    assert list(repriced["provider_cost_usd"]) == [float(SONNET_1H_LIVE)]
    from_completion = reports.compare_costs([live], include_peers=False)
    assert list(from_completion["provider_cost_usd"]) == [float(SONNET_1H_LIVE)]
    capsys.readouterr()
    assert main(["usage", "--json"]) == 0
    exported = {r["client_id"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert exported["live"]["cache_write_1h_tokens"] == 3000


def test_a_ledger_from_before_the_one_hour_column_reads_its_rows_as_zero(
    tmp_path: Path,
) -> None:
    """A file at 008 (before the 1-hour column) with a row migrates to the latest: the row
    reads 0 one-hour writes, and new rows keep theirs."""
    path = tmp_path / "old.sqlite"
    conn = ledger_mod.connect(path)
    migrate(conn, upto="008_image_tokens")
    old = LedgerRow("r-old", "p", "anthropic", "byok", cache_write_tokens=50, client_id="old")
    conn.execute(
        f"INSERT INTO requests ({', '.join(ledger_mod.COLUMNS[:-1])}) "  # noqa: S608
        f"VALUES ({', '.join('?' * (len(ledger_mod.COLUMNS) - 1))})",
        old.as_params()[:-1],
    )
    conn.close()
    led = Ledger(path)
    led.record(
        LedgerRow("r-new", "p", "anthropic", "byok", cache_write_1h_tokens=7, client_id="new")
    )
    got = {r.client_id: (r.cache_write_tokens, r.cache_write_1h_tokens) for r in led.rows()}
    assert got == {"old": (50, 0), "new": (0, 7)}
    led.close()
