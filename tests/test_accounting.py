"""settle / record_failure / record_cached / check_budget: charges, debits, rows, budgets."""

from __future__ import annotations

import warnings
from decimal import Decimal

import genai_prices
import pytest

from cencori_nb import accounting, wallet
from cencori_nb.accounting import BudgetWarning, PricingWarning
from cencori_nb.errors import BudgetExceededError, CreditsExhaustedError, SpendCapReachedError
from cencori_nb.ledger import default_ledger
from cencori_nb.settings import update_project, update_settings
from cencori_nb.types import Completion
from cencori_nb.wallet import LowBalanceWarning

GPT4O_COST = Decimal("0.0075")  # 1000 in / 500 out at $2.50 / $10 per MTok


def _completion(route: str = "managed", request_id: str = "req-1", **kw: object) -> Completion:
    base: dict[str, object] = dict(
        text="hi",
        model="gpt-4o-2024-08-06",
        provider="openai",
        route=route,
        input_tokens=1000,
        output_tokens=500,
        request_id=request_id,
        project="proj",
        model_requested="gpt-4o",
        credential_source="keystore:cencori" if route == "managed" else "keystore:openai",
        latency_ms=120.0,
        ttft_ms=40.0,
    )
    base.update(kw)
    return Completion(**base)  # type: ignore[arg-type]


def _wallet_usage() -> list[tuple[str | None, Decimal]]:
    return [
        (t.request_id, t.amount) for t in wallet.transactions(as_frame=False) if t.kind == "usage"
    ]


def test_managed_without_gateway_cost_is_provider_times_markup() -> None:
    """No gateway cost_usd → provider cost × 1.5; debited once; the row records it all."""
    wallet.top_up(25)
    c = accounting.settle(_completion())
    assert (
        c.provider_cost_usd
        == GPT4O_COST
        == genai_prices.calc_price(
            genai_prices.Usage(input_tokens=1000, output_tokens=500),
            "gpt-4o-2024-08-06",
            provider_id="openai",
        ).total_price
    )
    assert c.credits_charged_usd == Decimal("0.01125")
    assert c.price_version and c.price_version.startswith("genai-prices")
    assert wallet.balance() == Decimal("24.98875")
    (row,) = default_ledger().rows()
    assert (
        row.request_id,
        row.status,
        row.route,
        row.model,
        row.model_requested,
        row.provider_cost_usd,
        row.credits_charged_usd,
        row.latency_ms,
        row.ttft_ms,
        row.credential_source,
        row.price_version,
    ) == (
        "req-1",
        "ok",
        "managed",
        "gpt-4o-2024-08-06",
        "gpt-4o",
        GPT4O_COST,
        Decimal("0.01125"),
        120.0,
        40.0,
        "keystore:cencori",
        c.price_version,
    )


def test_managed_charge_is_the_gateway_cost_when_given() -> None:
    """The gateway's cost_usd wins over our computation."""
    wallet.top_up(25)
    c = accounting.settle(_completion(gateway_cost_usd=Decimal("0.0011")))
    assert c.credits_charged_usd == Decimal("0.0011")
    assert c.provider_cost_usd == GPT4O_COST
    assert _wallet_usage() == [("req-1", Decimal("-0.0011"))]


def test_markup_setting_is_used() -> None:
    """markup_pct=20 → provider × 1.2."""
    update_settings(markup_pct=Decimal(20))
    c = accounting.settle(_completion())
    assert c.credits_charged_usd == GPT4O_COST * Decimal("1.2")


@pytest.mark.parametrize(
    ("policy", "fee", "expected"),
    [
        ("zero", Decimal(0), Decimal(0)),
        ("percent", Decimal(5), GPT4O_COST * Decimal("0.05")),
        ("managed", Decimal(0), GPT4O_COST * Decimal("1.5")),
    ],
)
def test_byok_policies(policy: str, fee: Decimal, expected: Decimal) -> None:
    """BYOK charges the wallet per the policy; the provider cost is always recorded."""
    wallet.top_up(25)
    update_settings(byok_policy=policy, byok_fee_pct=fee)
    c = accounting.settle(_completion(route="byok"))
    assert c.provider_cost_usd == GPT4O_COST
    assert c.credits_charged_usd == expected
    assert wallet.balance() == Decimal(25) - expected
    assert _wallet_usage() == ([] if expected == 0 else [("req-1", -expected)])
    (row,) = default_ledger().rows()
    assert row.route == "byok" and row.credits_charged_usd == expected


def test_settling_the_same_request_twice_is_one_row_and_one_debit() -> None:
    """Idempotent per client id: a retry of settle() adds nothing."""
    wallet.top_up(25)
    accounting.settle(_completion(client_id="c-1"))
    accounting.settle(_completion(client_id="c-1"))
    assert default_ledger().count() == 1
    assert _wallet_usage() == [("req-1", Decimal("-0.01125"))]


def test_a_provider_repeating_its_request_id_keeps_every_row_and_debit() -> None:
    """Two requests the provider gave the same id are two rows and two debits (was: one)."""
    wallet.top_up(25)
    first = accounting.settle(_completion(request_id="dup"))
    second = accounting.settle(_completion(request_id="dup"))
    assert first.client_id and second.client_id and first.client_id != second.client_id
    rows = default_ledger().rows()
    assert [(r.request_id, r.client_id) for r in rows] == [
        ("dup", first.client_id),
        ("dup", second.client_id),
    ]
    assert _wallet_usage() == [("dup", Decimal("-0.01125"))] * 2
    assert wallet.balance() == Decimal(25) - 2 * Decimal("0.01125")


def test_missing_request_id_gets_one() -> None:
    """A completion without request id gets a fresh one (so its debit stays idempotent)."""
    c = accounting.settle(_completion(request_id=""))
    assert c.request_id.startswith("cnb-")
    assert default_ledger().rows()[0].request_id == c.request_id


def test_unknown_price_is_recorded_unknown_and_not_debited() -> None:
    """No price: provider cost NULL, nothing debited, a PricingWarning."""
    wallet.top_up(25)
    with pytest.warns(PricingWarning, match="no-such-model"):
        c = accounting.settle(_completion(model="no-such-model", model_requested=None))
    assert c.provider_cost_usd is None and c.credits_charged_usd == 0
    (row,) = default_ledger().rows()
    assert row.provider_cost_usd is None and row.credits_charged_usd == 0
    assert wallet.balance() == 25


def test_local_byok_zero_policy_is_silent() -> None:
    """A local model (no price) under the zero policy charges 0 without warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = accounting.settle(_completion(route="byok", provider="local", model="llama3.2"))
    assert c.provider_cost_usd is None and c.credits_charged_usd == 0


def test_estimated_rows_are_marked() -> None:
    """A cut stream's estimated tokens are priced and the row is marked estimated."""
    accounting.settle(_completion(route="byok", estimated=True))
    (row,) = default_ledger().rows()
    assert row.estimated is True and row.provider_cost_usd == GPT4O_COST


def test_low_balance_warning_from_settle() -> None:
    """A managed charge taking the balance under $5 warns."""
    wallet.top_up("5.005")
    with pytest.warns(LowBalanceWarning):
        accounting.settle(_completion())
    assert wallet.balance() == Decimal("5.005") - Decimal("0.01125")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (
            CreditsExhaustedError("Credit balance exhausted.", status_code=403),
            "credit_balance_exhausted",
        ),
        (SpendCapReachedError("Spend cap reached.", status_code=402), "spend_cap_reached"),
    ],
)
def test_gateway_403_402_leave_wallet_and_ledger_consistent(error: Exception, code: str) -> None:
    """A credits failure: one error row with its code, no debit, balance unchanged."""
    wallet.top_up(3)
    accounting.record_failure(
        request_id="req-x",
        project="proj",
        provider="openai",
        model="gpt-4o",
        route="managed",
        credential_source="keystore:cencori",
        error=error,
        latency_ms=15.0,
    )
    (row,) = default_ledger().rows()
    assert (
        row.status,
        row.error_code,
        row.route,
        row.model_requested,
        row.latency_ms,
        row.credits_charged_usd,
        row.provider_cost_usd,
    ) == ("error", code, "managed", "gpt-4o", 15.0, Decimal(0), None)
    assert wallet.balance() == 3 and _wallet_usage() == []


def test_record_cached_is_free() -> None:
    """A cache hit: a cached row with zero cost and no debit."""
    wallet.top_up(10)
    c = accounting.record_cached(_completion(provider_cost_usd=Decimal("0.5")))
    assert c.cached and c.provider_cost_usd == 0 and c.credits_charged_usd == 0
    (row,) = default_ledger().rows()
    assert row.status == "cached" and row.credits_charged_usd == 0
    assert row.provider_cost_usd == 0 and row.input_tokens == 1000
    assert wallet.balance() == 10


def test_settle_of_a_cached_completion_records_cached() -> None:
    """settle() on a completion marked cached delegates to record_cached."""
    accounting.settle(_completion(cached=True))
    assert default_ledger().rows()[0].status == "cached"


def test_hard_cap_refuses_before_sending() -> None:
    """Spend + estimate over the cap → BudgetExceededError saying spend, cap, how to raise."""
    update_project("proj", hard_cap_usd=Decimal("0.02"))
    accounting.settle(_completion(request_id="a"))  # 0.01125 managed
    accounting.check_budget("proj", Decimal("0.005"))  # 0.01625 <= 0.02: fine
    with pytest.raises(BudgetExceededError) as info:
        accounting.check_budget("proj", Decimal("0.01"))
    err = info.value
    assert err.spent_usd == Decimal("0.01125") and err.cap_usd == Decimal("0.02")
    text = str(err)
    assert "$0.0112" in text and "$0.0200" in text
    assert "update_project('proj', hard_cap_usd=" in text
    assert "cencori-nb credits budget" in text
    accounting.check_budget("other-project", Decimal(100))  # no cap there


def test_hard_cap_counts_byok_provider_cost() -> None:
    """A BYOK request counts its provider price toward the project's cost."""
    update_project("proj", hard_cap_usd=Decimal("0.01"))
    accounting.settle(_completion(route="byok"))  # 0.0075 paid to the provider
    assert accounting.month_cost("proj") == GPT4O_COST
    with pytest.raises(BudgetExceededError):
        accounting.check_budget("proj", Decimal("0.003"))


def test_reached_cap_refuses_even_without_estimate() -> None:
    """With the cap already reached, an unknown estimate is refused too."""
    update_project("proj", hard_cap_usd=Decimal("0.01"))
    accounting.settle(_completion())
    with pytest.raises(BudgetExceededError):
        accounting.check_budget("proj", None)


def test_soft_budget_warns_at_50_80_100_once_each() -> None:
    """Warnings at 50/80/100 % of the soft budget, once per threshold per month."""
    update_project("proj", soft_budget_usd=Decimal("0.02"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        accounting.settle(_completion(request_id="a"))  # 0.01125 → 56 %
        accounting.settle(_completion(request_id="b"))  # 0.0225 → 112 %
        accounting.settle(_completion(request_id="c"))  # still over: no new warning
        accounting.check_budget("proj", None)
    budget = [str(w.message) for w in caught if issubclass(w.category, BudgetWarning)]
    assert len(budget) == 3
    assert ["50%" in budget[0], "80%" in budget[1], "100%" in budget[2]] == [True] * 3
    assert default_ledger().query("SELECT threshold FROM budget_alerts ORDER BY threshold") == [
        (50,),
        (80,),
        (100,),
    ]


def test_money_modules_import_light() -> None:
    """Importing the money modules loads neither pandas, plotly nor the price table."""
    import subprocess
    import sys

    code = (
        "import sys, cencori_nb.accounting, cencori_nb.reports, cencori_nb.charts, "
        "cencori_nb.cli.money; "
        "print(sorted(m for m in ('pandas', 'plotly', 'genai_prices.data') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    assert out == "[]"
