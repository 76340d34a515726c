"""One cost rule: what a request cost you is computed once (accounting.cost_of, at settle
time), stored, and read by every view, the budget check and the SQL rollup.

The bug this pins down: a BYOK request under a 10 % ``percent`` policy showed the provider
price ($0.150 for a $0.150 request) in the footer and in ``map``, but provider price plus
the fee ($0.165) in ``usage()`` and in the budget check.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cencori_nb
from cencori_nb import accounting, keys, pricing, reports
from cencori_nb.cli import main as cli_main
from cencori_nb.errors import BudgetExceededError
from cencori_nb.ledger import DERIVE, Ledger, LedgerRow, default_ledger, from_pusd, to_pusd
from cencori_nb.migrations import migrate
from cencori_nb.sandbox.server import SandboxServer
from cencori_nb.settings import update_project, update_settings
from cencori_nb.tokens import estimate_messages_tokens
from tests.magic.support import run, texts

OPENAI_KEY = "sk-test-costrule-" + "A" * 20 + "c0s7"


@pytest.fixture
def byok_ten_percent(sandbox_env: SandboxServer) -> SandboxServer:
    keys.set("openai", OPENAI_KEY)
    update_settings(byok_policy="percent", byok_fee_pct=Decimal(10))
    return sandbox_env


def _usd(text: str) -> Decimal:
    return Decimal(text.split("$", 1)[1].split()[0])


def test_byok_percent_policy_costs_the_same_everywhere(
    byok_ten_percent: SandboxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Footer, map, usage(), spend(), the CLI, month_cost and the budget check all show
    provider price × 1.10 for a BYOK request under a 10 % fee (was: footer and map showed
    the bare provider price)."""
    c = cencori_nb.chat("What does a fee cost?", model="gpt-4o", max_tokens=50)
    provider = c.provider_cost_usd
    assert provider is not None and provider > 0
    expected = provider * Decimal("1.10")
    assert c.credits_charged_usd == provider / 10  # the fee, charged as credits
    assert c.cost_usd == expected
    assert _usd(c.footer()) == expected.quantize(Decimal("0.000001"))

    frame = cencori_nb.map(
        ["What does a fee cost?"], model="gpt-4o", max_tokens=50, progress=False, cache=False
    )
    assert frame["cost_usd"][0] == frame["provider_cost_usd"][0] * Decimal("1.10")

    used = reports.usage()
    assert [Decimal(str(v)) for v in used["cost_usd"]] == [
        Decimal(str(float(expected))),
        Decimal(str(float(frame["cost_usd"][0]))),
    ]
    total = expected + frame["cost_usd"][0]
    assert accounting.month_cost() == total
    assert Decimal(str(reports.spend(by="route")["cost_usd"][0])) == Decimal(str(float(total)))

    assert cli_main(["usage", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [Decimal(r["cost_usd"]) for r in out["rows"]] == [expected, frame["cost_usd"][0]]
    assert Decimal(out["totals"]["cost_usd"]) == total

    # the budget check counts the same figure: a cap between the bare provider prices and
    # the prices with the fee refuses the next request
    update_project("default", hard_cap_usd=total - provider / 20)
    with pytest.raises(BudgetExceededError) as info:
        cencori_nb.chat("one more", model="gpt-4o", max_tokens=5)
    assert info.value.spent_usd == total


def test_rows_without_a_known_price_are_unknown_not_free() -> None:
    """A BYOK row with no price is cost unknown (NULL / NaN), counted as 0 in sums."""
    led = default_ledger()
    led.record(LedgerRow("u", "p", "local", "byok", model="llama3.2", provider_cost_usd=None))
    assert led.query("SELECT cost_pusd FROM requests") == [(None,)]
    assert accounting.month_cost("p") == 0
    assert led.query("SELECT cost_pusd FROM requests_daily") == [(0,)]


def test_cached_and_test_mode_and_failed_rows_cost_nothing() -> None:
    assert accounting.cost_of("byok", Decimal(1), Decimal(1), cached=True) == 0
    assert accounting.cost_of("managed", Decimal(1), Decimal(2), test_mode=True) == 0
    assert (
        LedgerRow(
            "e", "p", "openai", "managed", status="error", credits_charged_usd=Decimal(3)
        ).cost_usd
        == 0
    )
    assert accounting.cost_of("managed", None, None) is None
    assert accounting.cost_of("managed", Decimal(1), Decimal("1.5")) == Decimal("1.5")


# The rule as SQL over a row's other columns: what migration 004 backfills with. The
# hypothesis test checks it, the rollup and the Python rule agree for random rows.
_RULE_SQL = """CASE
    WHEN status != 'ok' THEN 0
    WHEN test_mode THEN 0
    WHEN route = 'byok' THEN CASE WHEN provider_cost_pusd IS NULL
        THEN NULL ELSE provider_cost_pusd + credits_charged_pusd END
    ELSE credits_charged_pusd END"""

_money = st.one_of(
    st.none(),
    st.decimals(min_value=0, max_value=5, places=9, allow_nan=False, allow_infinity=False),
)
_rows = st.lists(
    st.tuples(
        st.sampled_from(["byok", "managed"]),
        st.sampled_from(["ok", "ok", "ok", "error", "cached"]),
        _money,
        st.decimals(min_value=0, max_value=5, places=9, allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.sampled_from(["p1", "p2"]),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=_rows)
def test_python_rule_matches_the_sql_for_random_rows(tmp_path: Path, rows: list) -> None:
    """Random rows: stored cost_pusd == accounting.cost_of == the rule in SQL; the rollup's
    per-project sums (what budgets read) == the sum of the Python costs."""
    led = Ledger(tmp_path / f"h{uuid.uuid4().hex}.sqlite")
    try:
        led.record_many(
            [
                LedgerRow(
                    f"r{i}",
                    project,
                    "openai",
                    route,
                    status=status,
                    model="gpt-4o",
                    provider_cost_usd=provider,
                    credits_charged_usd=credits,
                    test_mode=test and route == "managed",
                )
                for i, (route, status, provider, credits, test, project) in enumerate(rows)
            ]
        )
        got = led.query(
            f"SELECT request_id, route, status, provider_cost_pusd, "  # noqa: S608
            f"credits_charged_pusd, test_mode, cost_pusd, {_RULE_SQL} "
            "FROM requests ORDER BY id"
        )
        sums: dict[str, Decimal] = {}
        for (rid, route, status, provider, credits, test, stored, by_sql), row in zip(
            got, rows, strict=True
        ):
            python = (
                Decimal(0)
                if status == "error"
                else accounting.cost_of(
                    route,
                    from_pusd(provider),
                    from_pusd(credits),
                    cached=status == "cached",
                    test_mode=bool(test),
                )
            )
            assert stored == to_pusd(python) == by_sql, (rid, row)
            sums[row[5]] = sums.get(row[5], Decimal(0)) + (python or Decimal(0))
        for project, total in sums.items():
            (rolled,) = led.query(
                "SELECT COALESCE(SUM(cost_pusd), 0) FROM requests_daily WHERE project = ?",
                (project,),
            )[0]
            assert from_pusd(int(rolled)) == total
    finally:
        led.close()


def test_migration_004_backfills_cost_and_keeps_the_rollup(tmp_path: Path) -> None:
    """A file at 003 with rows: 004 stores each row's cost by the rule it had; the rollup
    (already summed by the old trigger) is unchanged, and new rows add their stored cost."""
    path = tmp_path / "v3.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, upto="003_daily_rollup")
    day = 20_000 * 86_400_000
    conn.executemany(
        "INSERT INTO requests (ts_ms, request_id, project, provider, model, route, status, "
        "provider_cost_pusd, credits_charged_pusd) VALUES (?, ?, 'p', 'openai', 'gpt-4o', ?, "
        "?, ?, ?)",
        [
            (day + 1, "a", "managed", "ok", 100, 150),
            (day + 2, "b", "byok", "ok", 100, 10),
            (day + 3, "c", "byok", "ok", None, 0),
            (day + 4, "d", "managed", "error", None, 0),
        ],
    )
    before = conn.execute("SELECT route, cost_pusd FROM requests_daily ORDER BY 1, 2").fetchall()
    conn.close()
    led = Ledger(path)
    assert led.query("SELECT request_id, cost_pusd FROM requests ORDER BY id") == [
        ("a", 150),
        ("b", 110),
        ("c", None),
        ("d", 0),
    ]
    assert led.query("SELECT route, cost_pusd FROM requests_daily ORDER BY 1, 2") == before
    led.record(
        LedgerRow(
            "e",
            "p",
            "openai",
            "byok",
            model="gpt-4o",
            ts_ms=day + 5,
            provider_cost_usd=Decimal("1E-12"),
            credits_charged_usd=Decimal(0),
        )
    )
    assert led.query("SELECT SUM(cost_pusd) FROM requests_daily WHERE route = 'byok'") == [(111,)]
    led.close()


def test_settle_stores_the_value_it_computed() -> None:
    """settle() passes cost_usd explicitly (never the DERIVE default) and the row holds it."""
    c = cencori_nb.types.Completion(
        text="x",
        model="gpt-4o",
        provider="openai",
        route="byok",
        input_tokens=1000,
        output_tokens=100,
    )
    update_settings(byok_policy="percent", byok_fee_pct=Decimal(10))
    accounting.settle(c)
    assert c.cost_usd is not DERIVE and c.cost_usd == c.provider_cost_usd * Decimal("1.1")
    (row,) = default_ledger().rows()
    assert row.cost_usd == c.cost_usd


def test_ask_json_and_dry_run_use_the_same_rule(
    byok_ten_percent: SandboxServer,
    capsys: pytest.CaptureFixture[str],
    shell: Any,  # noqa: F811  (the fixture imported above)
) -> None:
    """`ask --json` carries cost_usd (price + fee) and test_mode; the magic's dry run
    estimates price + fee too (it showed the bare provider price)."""
    assert cli_main(["ask", "-m", "gpt-4o", "--max-tokens", "20", "--json", "fee check"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert Decimal(obj["cost_usd"]) == Decimal(obj["provider_cost_usd"]) * Decimal("1.10")
    assert obj["test_mode"] is False
    cap, _ = run(shell, "%%cencori gpt-4o --dry-run --max-tokens 100\nEstimate the fee")
    line = [t for t in texts(cap) if "dry run" in t][0]
    price = pricing.estimate_cost(
        "openai", "gpt-4o", estimate_messages_tokens(["Estimate the fee"]), 100
    )
    assert price is not None
    assert f"Estimated cost ${price * Decimal('1.10'):.6f}" in line
    assert f"BYOK fee of ${price / 10:.6f}" in line
