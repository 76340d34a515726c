"""Named, ordered schema migrations of the ledger (``ledger.sqlite``).

Each migration is a name and a list of SQL statements; the names applied are recorded in
the ``_migrations`` table, so a file written by an older version is brought forward one
step at a time and a migration never runs twice. Add new ones at the end; never edit or
reorder a shipped one (tests check the schema reached from an empty file and from the
previous version).

Storage choices, for fast range queries and exact sums:

- time is ``ts_ms``: UTC epoch milliseconds (INTEGER). A day is ``ts_ms / 86400000``,
  so grouping by day or week is integer arithmetic inside SQLite;
- money is INTEGER **pico-USD** (``*_pusd``, 1 USD = 10^12): exact for every genai-prices
  rate (at most six decimals per million tokens, i.e. whole pico-dollars per token), summed
  exactly by SQLite's integer ``SUM`` (int64: up to $9.2 million per sum). ``NULL`` provider
  cost means "no price known".
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

__all__ = ["MIGRATIONS", "applied", "migrate"]

MIGRATIONS: list[tuple[str, list[str]]] = [
    ("001_create_requests", [
        """CREATE TABLE requests (
            id INTEGER PRIMARY KEY,
            ts_ms INTEGER NOT NULL,
            request_id TEXT NOT NULL,
            project TEXT NOT NULL,
            provider TEXT NOT NULL,
            model_requested TEXT,
            model TEXT,
            route TEXT NOT NULL,
            credential_source TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL CHECK (status IN ('ok', 'error', 'cached')),
            error_code TEXT,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_tokens INTEGER NOT NULL DEFAULT 0,
            cache_write_tokens INTEGER NOT NULL DEFAULT 0,
            thinking_tokens INTEGER NOT NULL DEFAULT 0,
            provider_cost_pusd INTEGER,
            credits_charged_pusd INTEGER NOT NULL DEFAULT 0,
            estimated INTEGER NOT NULL DEFAULT 0,
            price_version TEXT,
            latency_ms REAL,
            ttft_ms REAL
        )""",
        "CREATE INDEX requests_ts ON requests (ts_ms)",
    ]),
    ("002_wallet_and_budget_alerts", [
        # A successful request is recorded once: settling it twice is a no-op.
        "CREATE UNIQUE INDEX requests_ok_request_id ON requests (request_id)"
        " WHERE status = 'ok'",
        "CREATE INDEX requests_project_ts ON requests (project, ts_ms)",
        """CREATE TABLE wallet_transactions (
            id INTEGER PRIMARY KEY,
            ts_ms INTEGER NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('topup', 'usage', 'refund', 'adjustment')),
            amount_pusd INTEGER NOT NULL,
            balance_before_pusd INTEGER NOT NULL,
            balance_after_pusd INTEGER NOT NULL,
            request_id TEXT,
            project TEXT,
            note TEXT
        )""",
        # Idempotent usage debits and refunds: at most one of each per request id.
        "CREATE UNIQUE INDEX wallet_usage_request ON wallet_transactions (request_id)"
        " WHERE kind = 'usage'",
        "CREATE UNIQUE INDEX wallet_refund_request ON wallet_transactions (request_id)"
        " WHERE kind = 'refund'",
        """CREATE TABLE budget_alerts (
            project TEXT NOT NULL,
            month TEXT NOT NULL,
            threshold INTEGER NOT NULL,
            ts_ms INTEGER NOT NULL,
            PRIMARY KEY (project, month, threshold)
        )""",
    ]),
]


def applied(conn: sqlite3.Connection) -> list[str]:
    """Names of the migrations recorded in ``conn``'s database, in order applied."""
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations ("
                 "name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    return [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]


def migrate(conn: sqlite3.Connection, *, upto: str | None = None) -> list[str]:
    """Apply the missing migrations (up to and including ``upto``); return those applied.

    Runs in one ``BEGIN IMMEDIATE`` transaction (SQLite DDL is transactional), so two
    processes opening a fresh file at once cannot both apply a step. ``conn`` must be in
    autocommit mode (``isolation_level=None``).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        done = set(applied(conn))
        new: list[str] = []
        for name, statements in MIGRATIONS:
            if name not in done:
                for sql in statements:
                    conn.execute(sql)
                conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                             (name, datetime.now(UTC).isoformat(timespec="seconds")))
                new.append(name)
            if name == upto:
                break
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return new
