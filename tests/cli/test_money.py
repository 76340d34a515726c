"""`cencori-nb usage` and `cencori-nb credits`: output shapes, validation, exit codes."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from cencori_nb import wallet
from cencori_nb.cli import main
from cencori_nb.ledger import LedgerRow, default_ledger, now_ms
from cencori_nb.settings import current_member, load_settings


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def rows() -> None:
    default_ledger().record_many(
        [
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
                ts_ms=now_ms() - 1000,
            ),
            LedgerRow(
                "b",
                "p2",
                "local",
                "byok",
                model="llama3.2",
                input_tokens=7,
                output_tokens=3,
                provider_cost_usd=None,
                ts_ms=now_ms() - 500,
                estimated=True,
            ),
            LedgerRow(
                "c",
                "p1",
                "openai",
                "managed",
                status="error",
                error_code="spend_cap_reached",
                model_requested="gpt-4o",
                ts_ms=now_ms() - 100,
            ),
            LedgerRow("old", "p1", "openai", "byok", ts_ms=now_ms() - 30 * 86_400_000),
        ]
    )


def test_usage_json_shape(rows: None, capsys: pytest.CaptureFixture[str]) -> None:
    """--json: rows (last 7 days by default) with exact decimal strings, and totals."""
    code, out, _ = _run(capsys, "usage", "--json")
    assert code == 0
    data = json.loads(out)
    assert set(data) == {"since", "project", "rows", "totals"}
    assert [r["request_id"] for r in data["rows"]] == ["a", "b", "c"]
    first = data["rows"][0]
    assert first["provider_cost_usd"] == "0.0075" and first["credits_charged_usd"] == "0.01125"
    assert first["time"].endswith("+00:00")
    assert data["rows"][1]["provider_cost_usd"] is None
    assert data["rows"][2]["error_code"] == "spend_cap_reached"
    assert first["cost_usd"] == "0.01125" and data["rows"][1]["cost_usd"] is None
    assert data["totals"] == {
        "requests": 3,
        "errors": 1,
        "cached": 0,
        "interrupted": 0,
        "input_tokens": 1007,
        "output_tokens": 503,
        "provider_cost_usd": "0.0075",
        "credits_charged_usd": "0.01125",
        "cost_usd": "0.01125",
        "cost_unknown_rows": 1,
        "cost_estimated_rows": 1,
        "test_mode_rows": 0,
        "by_member": {current_member(): {"requests": 3, "cost_usd": "0.01125"}},
    }
    assert all(len(r["client_id"]) == 32 for r in data["rows"])
    assert {r["member"] for r in data["rows"]} == {current_member()}


def test_usage_csv_shape(rows: None, capsys: pytest.CaptureFixture[str]) -> None:
    """--csv: a header and one line per row; --project filters."""
    code, out, _ = _run(capsys, "usage", "--csv", "--project", "p1", "--since", "60d")
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert [r["request_id"] for r in table] == ["old", "a", "c"]
    assert list(table[0]) == [
        "time",
        "request_id",
        "project",
        "provider",
        "model_requested",
        "model",
        "route",
        "credential_source",
        "status",
        "error_code",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "thinking_tokens",
        "provider_cost_usd",
        "credits_charged_usd",
        "cost_usd",
        "estimated",
        "price_version",
        "latency_ms",
        "ttft_ms",
        "test_mode",
        "client_id",
        "gateway_cache",
        "model_original",
        "member",
        "image_tokens",
        "cache_write_1h_tokens",
    ]
    assert table[1]["credits_charged_usd"] == "0.01125"


def test_usage_table(rows: None, capsys: pytest.CaptureFixture[str]) -> None:
    """The default table lists each row and a totals line."""
    code, out, _ = _run(capsys, "usage")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["time", "(UTC)", "member", "project"]
    assert any("gpt-4o" in line and "0.011250" in line for line in lines)
    assert any("error:spend_cap_reached" in line for line in lines)
    assert any("llama3.2*" in line for line in lines)
    assert lines[-1].startswith("3 requests (1 failed, 0 cached)")


def test_usage_groups_by_member(capsys: pytest.CaptureFixture[str]) -> None:
    """Rows of several members: each row names its member, a per-member summary follows
    (largest spend first), and --member shows one member's rows only."""
    default_ledger().record_many(
        [
            LedgerRow("m1", "p1", "openai", "byok", member="ana@lab", cost_usd=Decimal("0.5")),
            LedgerRow("m2", "p1", "openai", "byok", member="bo@lab", cost_usd=Decimal("2")),
            LedgerRow("m3", "p2", "openai", "byok", member="bo@lab", cost_usd=Decimal("1")),
        ]
    )
    code, out, _ = _run(capsys, "usage")
    assert code == 0
    tail = out.split("By member (all spend incl. BYOK):")[1].split()
    assert tail == ["bo@lab", "2", "requests", "$3.000000", "ana@lab", "1", "requests", "$0.500000"]
    code, out, _ = _run(capsys, "usage", "--json", "--member", "ana@lab")
    data = json.loads(out)
    assert [r["request_id"] for r in data["rows"]] == ["m1"]
    assert data["totals"]["by_member"] == {"ana@lab": {"requests": 1, "cost_usd": "0.5"}}


def test_usage_empty_and_bad_since(capsys: pytest.CaptureFixture[str]) -> None:
    """No rows → a plain sentence; an unreadable --since → exit 1 with a hint."""
    assert _run(capsys, "usage")[1].strip() == "No requests recorded since 7d."
    code, _, err = _run(capsys, "usage", "--since", "yesterdayish")
    assert code == 1 and "7d" in err and "Traceback" not in err


def test_usage_json_and_csv_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    """--json with --csv is a usage error (exit 2)."""
    with pytest.raises(SystemExit) as info:
        main(["usage", "--json", "--csv"])
    assert info.value.code == 2


def test_credits_top_up_set_balance_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    """top-up and set-balance change the mirror; credits --json shows the summary."""
    code, out, _ = _run(capsys, "credits", "top-up", "25", "--json")
    assert code == 0
    tx = json.loads(out)
    assert (tx["kind"], tx["amount"], tx["balance_after"]) == ("topup", "25", "25")
    code, out, _ = _run(capsys, "credits", "set-balance", "4.50")
    assert code == 0 and "adjustment" in out and "$4.5" in out
    code, out, _ = _run(capsys, "credits", "--json")
    summary = json.loads(out)
    assert summary == {
        "tracked": True,
        "balance": "4.5",
        "low": True,
        "top_ups_total": "25",
        "credits_spent_this_month": "0",
        "all_spend_this_month_incl_byok": "0",
        "transactions": 2,
        "low_balance_threshold": "5",
    }
    code, out, _ = _run(capsys, "credits")
    assert "Balance: $4.50" in out and "low" in out
    assert wallet.balance() == Decimal("4.5")


@pytest.mark.parametrize("amount", ["-5", "abc", "0", "nan", "1e-20"])
def test_top_up_rejects_bad_amounts(amount: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A non-positive or non-numeric AMOUNT: exit 1, one plain line, nothing recorded."""
    code, out, err = _run(capsys, "credits", "top-up", "--", amount)
    assert code == 1
    assert err.startswith("cencori-nb: ") and len(err.strip().splitlines()) == 1
    assert wallet.transactions(as_frame=False) == []


def test_set_balance_zero_is_allowed(capsys: pytest.CaptureFixture[str]) -> None:
    """set-balance 0 is a valid adjustment; negative is refused."""
    assert _run(capsys, "credits", "set-balance", "0")[0] == 0
    assert _run(capsys, "credits", "set-balance", "--", "-1")[0] == 1


def test_transactions_json(capsys: pytest.CaptureFixture[str]) -> None:
    """credits transactions --json lists every movement with before/after balances."""
    wallet.top_up(10)
    wallet.debit("r1", Decimal("0.25"), project="p")
    code, out, _ = _run(capsys, "credits", "transactions", "--json")
    data = json.loads(out)
    assert [(t["kind"], t["amount"], t["balance_before"], t["balance_after"]) for t in data] == [
        ("topup", "10", "0", "10"),
        ("usage", "-0.25", "10", "9.75"),
    ]


def test_budget_command(capsys: pytest.CaptureFixture[str]) -> None:
    """credits budget sets and removes a project's soft budget and hard cap."""
    code, out, _ = _run(
        capsys, "credits", "budget", "--project", "p1", "--soft", "10", "--hard-cap", "20", "--json"
    )
    assert code == 0
    assert json.loads(out) == {
        "project": "p1",
        "soft_budget_usd": "10",
        "hard_cap_usd": "20",
        "spent_this_month_usd": "0",
    }
    ps = load_settings().for_project("p1")
    assert (ps.soft_budget_usd, ps.hard_cap_usd) == (Decimal(10), Decimal(20))
    _run(capsys, "credits", "budget", "--project", "p1", "--hard-cap", "none")
    assert load_settings().for_project("p1").hard_cap_usd is None
    assert _run(capsys, "credits", "budget", "--hard-cap", "lots")[0] == 1


def test_console_entry_point(private_home: Path) -> None:
    """`python -m cencori_nb credits --json` works in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-m", "cencori_nb", "credits", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["balance"] is None  # not tracked yet, not "$0"
    assert (private_home / "ledger.sqlite").exists()
