"""Named, ordered schema migrations of the ledger (``ledger.sqlite``, or a PostgreSQL
database: :data:`PG_MIGRATIONS`, applied by :mod:`cencori_nb.ledger_postgres`).

Each migration is a name and a list of SQL statements; the names applied are recorded in
the ``_migrations`` table, so a file written by an older version is brought forward one
step at a time and a migration never runs twice. Add new ones at the end; never edit or
reorder a shipped one (tests check the schema reached from an empty file and from the
previous version).

Storage choices, for fast range queries and exact sums:

- time is ``ts_ms``: UTC epoch milliseconds (INTEGER). A day is ``ts_ms / 86400000``,
  so grouping by day or week is integer arithmetic inside SQLite;
- ``requests_daily`` (003) holds per-UTC-day sums by project, provider, model, route and
  status, kept current by an ``AFTER INSERT`` trigger (rows are never updated or deleted),
  so the spend views group thousands of rollup rows instead of millions of requests;
- money is INTEGER **pico-USD** (``*_pusd``, 1 USD = 10^12): exact for every genai-prices
  rate (at most six decimals per million tokens, i.e. whole pico-dollars per token), summed
  exactly by SQLite's integer ``SUM`` (int64: up to $9.2 million per sum). ``NULL`` provider
  cost means "no price known".
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

__all__ = ["MIGRATIONS", "PG_MIGRATIONS", "applied", "migrate"]

MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "001_create_requests",
        [
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
        ],
    ),
    (
        "002_wallet_and_budget_alerts",
        [
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
        ],
    ),
    # A per-day rollup kept by a trigger, so spend views read thousands of rows, not
    # millions (benchmarks/ledger.py). Rows of a partial first day are read from requests.
    (
        "003_daily_rollup",
        [
            """CREATE TABLE requests_daily (
            day INTEGER NOT NULL,
            project TEXT NOT NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            route TEXT NOT NULL,
            status TEXT NOT NULL,
            requests INTEGER NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            cache_read_tokens INTEGER NOT NULL,
            cache_write_tokens INTEGER NOT NULL,
            provider_cost_pusd INTEGER,
            credits_charged_pusd INTEGER NOT NULL,
            cost_pusd INTEGER NOT NULL,
            unpriced INTEGER NOT NULL,
            PRIMARY KEY (day, project, provider, model, route, status)
        ) WITHOUT ROWID""",
            # Written out in full (not built from constants): a shipped migration never changes.
            """CREATE TRIGGER requests_daily_insert AFTER INSERT ON requests BEGIN
            INSERT INTO requests_daily VALUES (
                NEW.ts_ms / 86400000, NEW.project, NEW.provider,
                COALESCE(NEW.model, NEW.model_requested, ''), NEW.route, NEW.status, 1,
                NEW.input_tokens, NEW.output_tokens, NEW.cache_read_tokens,
                NEW.cache_write_tokens, NEW.provider_cost_pusd, NEW.credits_charged_pusd,
                NEW.credits_charged_pusd + CASE WHEN NEW.route = 'byok'
                    THEN COALESCE(NEW.provider_cost_pusd, 0) ELSE 0 END,
                NEW.provider_cost_pusd IS NULL)
            ON CONFLICT DO UPDATE SET
                requests = requests + 1,
                input_tokens = input_tokens + excluded.input_tokens,
                output_tokens = output_tokens + excluded.output_tokens,
                cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
                cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens,
                -- like SQL SUM: NULL (no price) is skipped; all-NULL stays NULL
                provider_cost_pusd = CASE WHEN excluded.provider_cost_pusd IS NULL
                    THEN provider_cost_pusd
                    ELSE COALESCE(provider_cost_pusd, 0) + excluded.provider_cost_pusd END,
                credits_charged_pusd = credits_charged_pusd + excluded.credits_charged_pusd,
                cost_pusd = cost_pusd + excluded.cost_pusd,
                unpriced = unpriced + excluded.unpriced;
        END""",
            # backfill from the rows written before this migration
            """INSERT INTO requests_daily
            SELECT ts_ms / 86400000, project, provider, COALESCE(model, model_requested, ''),
                route, status, COUNT(*), SUM(input_tokens), SUM(output_tokens),
                SUM(cache_read_tokens), SUM(cache_write_tokens), SUM(provider_cost_pusd),
                SUM(credits_charged_pusd),
                SUM(credits_charged_pusd + CASE WHEN route = 'byok'
                    THEN COALESCE(provider_cost_pusd, 0) ELSE 0 END),
                SUM(provider_cost_pusd IS NULL)
            FROM requests GROUP BY 1, 2, 3, 4, 5, 6""",
        ],
    ),
    # What a request cost its user is computed once, when it is settled (accounting.cost_of)
    # and stored per row; the rollup and every view sum that one value. Rows written before
    # get the rule as it was (credits charged, plus the provider price of BYOK requests;
    # NULL when a BYOK price was unknown). ``test_mode``: made with a Cencori test key
    # (csk_test_…), never charged. ``budget_reservations``: the estimated maximum cost of
    # each request in flight under a hard cap (accounting.reserve), released in the
    # transaction that writes its row; ``pid``/``host``/``created_ms`` let a dead process's
    # reservations expire.
    (
        "004_cost_rule_and_reservations",
        [
            "ALTER TABLE requests ADD COLUMN cost_pusd INTEGER",
            "ALTER TABLE requests ADD COLUMN test_mode INTEGER NOT NULL DEFAULT 0",
            """UPDATE requests SET cost_pusd = CASE
            WHEN status != 'ok' THEN 0
            WHEN route = 'byok' THEN CASE WHEN provider_cost_pusd IS NULL
                THEN NULL ELSE provider_cost_pusd + credits_charged_pusd END
            ELSE credits_charged_pusd END""",
            "DROP TRIGGER requests_daily_insert",
            """CREATE TRIGGER requests_daily_insert AFTER INSERT ON requests BEGIN
            INSERT INTO requests_daily VALUES (
                NEW.ts_ms / 86400000, NEW.project, NEW.provider,
                COALESCE(NEW.model, NEW.model_requested, ''), NEW.route, NEW.status, 1,
                NEW.input_tokens, NEW.output_tokens, NEW.cache_read_tokens,
                NEW.cache_write_tokens, NEW.provider_cost_pusd, NEW.credits_charged_pusd,
                COALESCE(NEW.cost_pusd, 0), NEW.provider_cost_pusd IS NULL)
            ON CONFLICT DO UPDATE SET
                requests = requests + 1,
                input_tokens = input_tokens + excluded.input_tokens,
                output_tokens = output_tokens + excluded.output_tokens,
                cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
                cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens,
                provider_cost_pusd = CASE WHEN excluded.provider_cost_pusd IS NULL
                    THEN provider_cost_pusd
                    ELSE COALESCE(provider_cost_pusd, 0) + excluded.provider_cost_pusd END,
                credits_charged_pusd = credits_charged_pusd + excluded.credits_charged_pusd,
                cost_pusd = cost_pusd + excluded.cost_pusd,
                unpriced = unpriced + excluded.unpriced;
        END""",
            """CREATE TABLE budget_reservations (
            id TEXT PRIMARY KEY,
            project TEXT NOT NULL,
            amount_pusd INTEGER NOT NULL,
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            created_ms INTEGER NOT NULL
        )""",
            "CREATE INDEX budget_reservations_project ON budget_reservations (project)",
        ],
    ),
    # Every request its own row (issue 11): rows are keyed on an id the client generates
    # (``client_id``, unique); the provider's ``request_id`` is kept but no longer unique
    # (Ollama draws ids from 999 values, some gateways reuse them). A stream stopped part
    # way is ``interrupted``. SQLite cannot change a CHECK, so the table is rebuilt; old
    # rows get ``legacy-<id>`` client ids. The wallet's usage/refund idempotency moves to
    # the client id too (each old debit gets its request row's client id).
    (
        "005_client_ids_and_interrupted",
        [
            """CREATE TABLE requests_new (
            id INTEGER PRIMARY KEY,
            ts_ms INTEGER NOT NULL,
            client_id TEXT NOT NULL,
            request_id TEXT NOT NULL,
            project TEXT NOT NULL,
            provider TEXT NOT NULL,
            model_requested TEXT,
            model TEXT,
            route TEXT NOT NULL,
            credential_source TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL
                CHECK (status IN ('ok', 'error', 'cached', 'interrupted')),
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
            ttft_ms REAL,
            cost_pusd INTEGER,
            test_mode INTEGER NOT NULL DEFAULT 0
        )""",
            """INSERT INTO requests_new SELECT id, ts_ms, 'legacy-' || id, request_id, project,
            provider, model_requested, model, route, credential_source, status, error_code,
            input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
            thinking_tokens, provider_cost_pusd, credits_charged_pusd, estimated,
            price_version, latency_ms, ttft_ms, cost_pusd, test_mode FROM requests""",
            "DROP TABLE requests",  # also drops its indexes and trigger
            "ALTER TABLE requests_new RENAME TO requests",
            "CREATE UNIQUE INDEX requests_client_id ON requests (client_id)",
            "CREATE INDEX requests_request_id ON requests (request_id)",
            "CREATE INDEX requests_ts ON requests (ts_ms)",
            "CREATE INDEX requests_project_ts ON requests (project, ts_ms)",
            # the rollup also counts rows whose tokens (so cost) are estimates
            "ALTER TABLE requests_daily ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0",
            """UPDATE requests_daily SET estimated = (SELECT COUNT(*) FROM requests r
            WHERE r.estimated AND r.ts_ms / 86400000 = requests_daily.day
            AND r.project = requests_daily.project AND r.provider = requests_daily.provider
            AND COALESCE(r.model, r.model_requested, '') = requests_daily.model
            AND r.route = requests_daily.route AND r.status = requests_daily.status)""",
            """CREATE TRIGGER requests_daily_insert AFTER INSERT ON requests BEGIN
            INSERT INTO requests_daily (day, project, provider, model, route, status,
                requests, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
                provider_cost_pusd, credits_charged_pusd, cost_pusd, unpriced, estimated)
            VALUES (
                NEW.ts_ms / 86400000, NEW.project, NEW.provider,
                COALESCE(NEW.model, NEW.model_requested, ''), NEW.route, NEW.status, 1,
                NEW.input_tokens, NEW.output_tokens, NEW.cache_read_tokens,
                NEW.cache_write_tokens, NEW.provider_cost_pusd, NEW.credits_charged_pusd,
                COALESCE(NEW.cost_pusd, 0), NEW.provider_cost_pusd IS NULL,
                NEW.estimated != 0)
            ON CONFLICT DO UPDATE SET
                requests = requests + 1,
                input_tokens = input_tokens + excluded.input_tokens,
                output_tokens = output_tokens + excluded.output_tokens,
                cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
                cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens,
                provider_cost_pusd = CASE WHEN excluded.provider_cost_pusd IS NULL
                    THEN provider_cost_pusd
                    ELSE COALESCE(provider_cost_pusd, 0) + excluded.provider_cost_pusd END,
                credits_charged_pusd = credits_charged_pusd + excluded.credits_charged_pusd,
                cost_pusd = cost_pusd + excluded.cost_pusd,
                unpriced = unpriced + excluded.unpriced,
                estimated = estimated + excluded.estimated;
        END""",
            "ALTER TABLE wallet_transactions ADD COLUMN client_id TEXT",
            # before 005 an ok request id was unique, so it names at most one row
            """UPDATE wallet_transactions SET client_id = COALESCE(
            (SELECT r.client_id FROM requests r WHERE r.request_id =
                wallet_transactions.request_id AND r.status = 'ok'),
            'legacy-w' || id) WHERE request_id IS NOT NULL""",
            "DROP INDEX wallet_usage_request",
            "DROP INDEX wallet_refund_request",
            "CREATE UNIQUE INDEX wallet_usage_client ON wallet_transactions (client_id)"
            " WHERE kind = 'usage'",
            "CREATE UNIQUE INDEX wallet_refund_client ON wallet_transactions (client_id)"
            " WHERE kind = 'refund'",
        ],
    ),
    # Cencori's receipts on the managed route (issue 12): X-Cencori-Cache (HIT,
    # SEMANTIC-HIT, MISS; NULL when the gateway sent none) and X-Model-Original (the model
    # asked for when the gateway answered with another). The request id already has a column.
    (
        "006_gateway_receipts",
        [
            "ALTER TABLE requests ADD COLUMN gateway_cache TEXT",
            "ALTER TABLE requests ADD COLUMN model_original TEXT",
        ],
    ),
    # Teams (issue 17): every row names the member who made it (CENCORI_NB_MEMBER, the
    # ``member`` setting, else user@host; '' for rows written before), the rollup groups by
    # member too (so spend(by="member") reads the rollup), reservations name their member,
    # and ``budgets`` holds monthly soft budgets and hard caps per project or per member,
    # kept in the ledger so that everyone sharing it enforces the same ones. The rollup's
    # key changes, so it is rebuilt (SQLite cannot alter a primary key).
    (
        "007_members_and_team_budgets",
        [
            "ALTER TABLE requests ADD COLUMN member TEXT NOT NULL DEFAULT ''",
            "CREATE INDEX requests_member_ts ON requests (member, ts_ms)",
            """CREATE TABLE requests_daily_new (
            day INTEGER NOT NULL,
            project TEXT NOT NULL,
            member TEXT NOT NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            route TEXT NOT NULL,
            status TEXT NOT NULL,
            requests INTEGER NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            cache_read_tokens INTEGER NOT NULL,
            cache_write_tokens INTEGER NOT NULL,
            provider_cost_pusd INTEGER,
            credits_charged_pusd INTEGER NOT NULL,
            cost_pusd INTEGER NOT NULL,
            unpriced INTEGER NOT NULL,
            estimated INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (day, project, member, provider, model, route, status)
        ) WITHOUT ROWID""",
            """INSERT INTO requests_daily_new SELECT day, project, '', provider, model, route,
            status, requests, input_tokens, output_tokens, cache_read_tokens,
            cache_write_tokens, provider_cost_pusd, credits_charged_pusd, cost_pusd,
            unpriced, estimated FROM requests_daily""",
            "DROP TRIGGER requests_daily_insert",  # first: it names the table being replaced
            "DROP TABLE requests_daily",
            "ALTER TABLE requests_daily_new RENAME TO requests_daily",
            """CREATE TRIGGER requests_daily_insert AFTER INSERT ON requests BEGIN
            INSERT INTO requests_daily (day, project, member, provider, model, route, status,
                requests, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
                provider_cost_pusd, credits_charged_pusd, cost_pusd, unpriced, estimated)
            VALUES (
                NEW.ts_ms / 86400000, NEW.project, NEW.member, NEW.provider,
                COALESCE(NEW.model, NEW.model_requested, ''), NEW.route, NEW.status, 1,
                NEW.input_tokens, NEW.output_tokens, NEW.cache_read_tokens,
                NEW.cache_write_tokens, NEW.provider_cost_pusd, NEW.credits_charged_pusd,
                COALESCE(NEW.cost_pusd, 0), NEW.provider_cost_pusd IS NULL,
                NEW.estimated != 0)
            ON CONFLICT DO UPDATE SET
                requests = requests + 1,
                input_tokens = input_tokens + excluded.input_tokens,
                output_tokens = output_tokens + excluded.output_tokens,
                cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
                cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens,
                provider_cost_pusd = CASE WHEN excluded.provider_cost_pusd IS NULL
                    THEN provider_cost_pusd
                    ELSE COALESCE(provider_cost_pusd, 0) + excluded.provider_cost_pusd END,
                credits_charged_pusd = credits_charged_pusd + excluded.credits_charged_pusd,
                cost_pusd = cost_pusd + excluded.cost_pusd,
                unpriced = unpriced + excluded.unpriced,
                estimated = estimated + excluded.estimated;
        END""",
            "ALTER TABLE budget_reservations ADD COLUMN member TEXT NOT NULL DEFAULT ''",
            """CREATE TABLE budgets (
            scope TEXT NOT NULL CHECK (scope IN ('project', 'member')),
            name TEXT NOT NULL,
            soft_budget_pusd INTEGER,
            hard_cap_pusd INTEGER,
            updated_ms INTEGER NOT NULL,
            PRIMARY KEY (scope, name)
        )""",
        ],
    ),
    # Images in prompts (issue 15.2): of input_tokens, the images' share (as the provider
    # reported it, else by its documented formula). Priced with the rest of the input.
    (
        "008_image_tokens",
        ["ALTER TABLE requests ADD COLUMN image_tokens INTEGER NOT NULL DEFAULT 0"],
    ),
    # Of cache_write_tokens, Anthropic's 1-hour cache writes (billed at 2x base input, the
    # 5-minute ones at 1.25x), kept apart so a what-if priced again from rows
    # (reports.compare_costs of a usage() frame) gets the price the row was settled at, and
    # so usage() and its export show the split. Nothing else prices a row again: the
    # ledger's reports, caps and budgets read the recorded provider_cost_pusd / cost_pusd;
    # a spill or settled journal line is a priced row, inserted as it is; a reclaimed
    # in-flight note is priced from its pre-send estimate, which has no cache counts.
    # Rows from before read 0.
    (
        "009_cache_write_1h_tokens",
        ["ALTER TABLE requests ADD COLUMN cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0"],
    ),
]

# The same migrations, by the same names, for a PostgreSQL ledger (issue 17). PostgreSQL
# ledgers start with this version, so no PostgreSQL database holds data of the shapes
# 001-006 changed from: 001 creates their final schema in one step and 002-006 are recorded
# without statements (a name is still applied once, in order, so `cencori-nb ledger
# migrate` reports the same list on both). From 007 on, each step is written for both.
# Types: epoch ms, tokens and pico-USD are BIGINT (SUMs come back as exact NUMERIC);
# flags stay 0/1 integers so rows read the same as from SQLite. The rollup is kept by a
# row trigger whose upsert is safe under concurrent writers.
_PG_REQUESTS = """CREATE TABLE requests (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
    client_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    project TEXT NOT NULL,
    provider TEXT NOT NULL,
    model_requested TEXT,
    model TEXT,
    route TEXT NOT NULL,
    credential_source TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('ok', 'error', 'cached', 'interrupted')),
    error_code TEXT,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cache_read_tokens BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    thinking_tokens BIGINT NOT NULL DEFAULT 0,
    provider_cost_pusd BIGINT,
    credits_charged_pusd BIGINT NOT NULL DEFAULT 0,
    estimated INTEGER NOT NULL DEFAULT 0,
    price_version TEXT,
    latency_ms DOUBLE PRECISION,
    ttft_ms DOUBLE PRECISION,
    cost_pusd BIGINT,
    test_mode INTEGER NOT NULL DEFAULT 0,
    gateway_cache TEXT,
    model_original TEXT
)"""
_PG_ROLLUP_FUNCTION = """CREATE OR REPLACE FUNCTION requests_daily_add() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO requests_daily AS d (day, project, {member_col}provider, model, route, status,
        requests, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
        provider_cost_pusd, credits_charged_pusd, cost_pusd, unpriced, estimated)
    VALUES (NEW.ts_ms / 86400000, NEW.project, {member_val}NEW.provider,
        COALESCE(NEW.model, NEW.model_requested, ''), NEW.route, NEW.status, 1,
        NEW.input_tokens, NEW.output_tokens, NEW.cache_read_tokens, NEW.cache_write_tokens,
        NEW.provider_cost_pusd, NEW.credits_charged_pusd, COALESCE(NEW.cost_pusd, 0),
        CASE WHEN NEW.provider_cost_pusd IS NULL THEN 1 ELSE 0 END,
        CASE WHEN NEW.estimated != 0 THEN 1 ELSE 0 END)
    ON CONFLICT ON CONSTRAINT requests_daily_pkey DO UPDATE SET
        requests = d.requests + 1,
        input_tokens = d.input_tokens + EXCLUDED.input_tokens,
        output_tokens = d.output_tokens + EXCLUDED.output_tokens,
        cache_read_tokens = d.cache_read_tokens + EXCLUDED.cache_read_tokens,
        cache_write_tokens = d.cache_write_tokens + EXCLUDED.cache_write_tokens,
        provider_cost_pusd = CASE WHEN EXCLUDED.provider_cost_pusd IS NULL
            THEN d.provider_cost_pusd
            ELSE COALESCE(d.provider_cost_pusd, 0) + EXCLUDED.provider_cost_pusd END,
        credits_charged_pusd = d.credits_charged_pusd + EXCLUDED.credits_charged_pusd,
        cost_pusd = d.cost_pusd + EXCLUDED.cost_pusd,
        unpriced = d.unpriced + EXCLUDED.unpriced,
        estimated = d.estimated + EXCLUDED.estimated;
    RETURN NULL;
END
$fn$"""

PG_MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "001_create_requests",
        [
            _PG_REQUESTS,
            "CREATE UNIQUE INDEX requests_client_id ON requests (client_id)",
            "CREATE INDEX requests_request_id ON requests (request_id)",
            "CREATE INDEX requests_ts ON requests (ts_ms)",
            "CREATE INDEX requests_project_ts ON requests (project, ts_ms)",
            """CREATE TABLE wallet_transactions (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            ts_ms BIGINT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('topup', 'usage', 'refund', 'adjustment')),
            amount_pusd BIGINT NOT NULL,
            balance_before_pusd BIGINT NOT NULL,
            balance_after_pusd BIGINT NOT NULL,
            request_id TEXT,
            project TEXT,
            note TEXT,
            client_id TEXT
        )""",
            "CREATE UNIQUE INDEX wallet_usage_client ON wallet_transactions (client_id)"
            " WHERE kind = 'usage'",
            "CREATE UNIQUE INDEX wallet_refund_client ON wallet_transactions (client_id)"
            " WHERE kind = 'refund'",
            """CREATE TABLE budget_alerts (
            project TEXT NOT NULL,
            month TEXT NOT NULL,
            threshold INTEGER NOT NULL,
            ts_ms BIGINT NOT NULL,
            PRIMARY KEY (project, month, threshold)
        )""",
            """CREATE TABLE requests_daily (
            day BIGINT NOT NULL,
            project TEXT NOT NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            route TEXT NOT NULL,
            status TEXT NOT NULL,
            requests BIGINT NOT NULL,
            input_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL,
            cache_read_tokens BIGINT NOT NULL,
            cache_write_tokens BIGINT NOT NULL,
            provider_cost_pusd BIGINT,
            credits_charged_pusd BIGINT NOT NULL,
            cost_pusd BIGINT NOT NULL,
            unpriced BIGINT NOT NULL,
            estimated BIGINT NOT NULL DEFAULT 0,
            CONSTRAINT requests_daily_pkey
                PRIMARY KEY (day, project, provider, model, route, status)
        )""",
            _PG_ROLLUP_FUNCTION.format(member_col="", member_val=""),
            "CREATE TRIGGER requests_daily_insert AFTER INSERT ON requests "
            "FOR EACH ROW EXECUTE FUNCTION requests_daily_add()",
            """CREATE TABLE budget_reservations (
            id TEXT PRIMARY KEY,
            project TEXT NOT NULL,
            amount_pusd BIGINT NOT NULL,
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            created_ms BIGINT NOT NULL
        )""",
            "CREATE INDEX budget_reservations_project ON budget_reservations (project)",
        ],
    ),
    ("002_wallet_and_budget_alerts", []),
    ("003_daily_rollup", []),
    ("004_cost_rule_and_reservations", []),
    ("005_client_ids_and_interrupted", []),
    ("006_gateway_receipts", []),
    (
        "007_members_and_team_budgets",
        [
            "ALTER TABLE requests ADD COLUMN member TEXT NOT NULL DEFAULT ''",
            "CREATE INDEX requests_member_ts ON requests (member, ts_ms)",
            "ALTER TABLE requests_daily ADD COLUMN member TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE requests_daily DROP CONSTRAINT requests_daily_pkey",
            "ALTER TABLE requests_daily ADD CONSTRAINT requests_daily_pkey "
            "PRIMARY KEY (day, project, member, provider, model, route, status)",
            _PG_ROLLUP_FUNCTION.format(member_col="member, ", member_val="NEW.member, "),
            "ALTER TABLE budget_reservations ADD COLUMN member TEXT NOT NULL DEFAULT ''",
            """CREATE TABLE budgets (
            scope TEXT NOT NULL CHECK (scope IN ('project', 'member')),
            name TEXT NOT NULL,
            soft_budget_pusd BIGINT,
            hard_cap_pusd BIGINT,
            updated_ms BIGINT NOT NULL,
            PRIMARY KEY (scope, name)
        )""",
        ],
    ),
    # Images in prompts (issue 15.2): of input_tokens, the images' share (as the provider
    # reported it, else by its documented formula). Priced with the rest of the input.
    (
        "008_image_tokens",
        ["ALTER TABLE requests ADD COLUMN image_tokens BIGINT NOT NULL DEFAULT 0"],
    ),
    (
        "009_cache_write_1h_tokens",
        ["ALTER TABLE requests ADD COLUMN cache_write_1h_tokens BIGINT NOT NULL DEFAULT 0"],
    ),
]


def applied(conn: sqlite3.Connection) -> list[str]:
    """Names of the migrations recorded in ``conn``'s database, in order applied."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
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
                conn.execute(
                    "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                    (name, datetime.now(UTC).isoformat(timespec="seconds")),
                )
                new.append(name)
            if name == upto:
                break
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return new
