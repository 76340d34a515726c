"""The credit wallet mirror: top-ups, idempotent debits, refunds, adjustments, summary."""

from __future__ import annotations

import warnings
from decimal import Decimal
from pathlib import Path

import pytest

from cencori_nb import wallet
from cencori_nb.errors import ConfigurationError, CreditsError
from cencori_nb.ledger import LedgerRow, default_ledger, now_ms
from cencori_nb.wallet import LowBalanceWarning


def test_empty_wallet() -> None:
    """Before any balance is recorded the summary says it is not tracked and how to set it
    (it used to say "$0.00, low"); balance() itself stays 0."""
    assert wallet.balance() == Decimal(0)
    summary = wallet.credits()
    assert summary.balance is None and not summary.tracked and summary.transactions == 0
    assert summary.low is False
    text = str(summary)
    assert "not tracked yet" in text and "cencori-nb credits set-balance" in text
    assert text.splitlines()[0].startswith("Balance not tracked yet")
    assert "$0.00" not in text.splitlines()[0] and "low" not in text
    assert "not tracked yet" in summary._repr_html_()
    assert summary.to_dict()["balance"] is None and summary.to_dict()["tracked"] is False
    wallet.set_balance(0)
    assert wallet.credits().tracked and wallet.credits().low


def test_top_up_debit_refund_adjust_with_balances() -> None:
    """Each kind records the signed amount and the balance before/after, exactly."""
    wallet.top_up("25", note="card")
    tx = wallet.debit("req-1", Decimal("0.0075"), project="p")
    assert tx is not None
    assert (tx.kind, tx.amount, tx.balance_before, tx.balance_after) == (
        "usage",
        Decimal("-0.0075"),
        Decimal(25),
        Decimal("24.9925"),
    )
    refund = wallet.refund("req-1")
    assert (refund.amount, refund.balance_after) == (Decimal("0.0075"), Decimal(25))
    adj = wallet.set_balance("42.10")
    assert (adj.kind, adj.amount, adj.balance_after) == (
        "adjustment",
        Decimal("17.1"),
        Decimal("42.1"),
    )
    assert wallet.balance() == Decimal("42.1")
    kinds = [(t.kind, t.amount, t.note) for t in wallet.transactions(as_frame=False)]
    assert kinds == [
        ("topup", Decimal(25), "card"),
        ("usage", Decimal("-0.0075"), None),
        ("refund", Decimal("0.0075"), None),
        ("adjustment", Decimal("17.1"), "set balance"),
    ]


def test_same_request_id_debited_twice_is_one_debit() -> None:
    """The second debit of a request id returns None and changes nothing."""
    wallet.top_up(10)
    assert wallet.debit("dup", Decimal("1.5"), project="p") is not None
    assert wallet.debit("dup", Decimal("1.5"), project="p") is None
    assert wallet.debit("dup", Decimal("9"), project="p") is None
    assert wallet.balance() == Decimal("8.5")
    assert [t.kind for t in wallet.transactions(as_frame=False)] == ["topup", "usage"]


def test_debit_never_goes_negative_and_notes_the_shortfall() -> None:
    """A charge above the balance takes what is there; the note keeps the full charge."""
    wallet.top_up(1)
    with pytest.warns(LowBalanceWarning):
        tx = wallet.debit("big", Decimal("3"), project="p")
    assert tx is not None
    assert (tx.amount, tx.balance_after) == (Decimal(-1), Decimal(0))
    assert tx.note is not None and "charge $3" in tx.note and "shortfall $2" in tx.note
    assert wallet.balance() == 0


def test_low_balance_warning_when_crossing_five_dollars() -> None:
    """Crossing under $5 warns once; staying above does not."""
    wallet.top_up(6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wallet.debit("a", Decimal("0.5"), project="p")  # 5.50: no warning
    with pytest.warns(LowBalanceWarning, match=r"\$4\.50.*top-up"):
        wallet.debit("b", Decimal("1"), project="p")


def test_refund_rules() -> None:
    """Refunds need a debit, cannot exceed it and happen once per request."""
    wallet.top_up(10)
    wallet.debit("r", Decimal(2), project="p")
    with pytest.raises(CreditsError, match="No usage debit"):
        wallet.refund("unknown")
    with pytest.raises(CreditsError, match="only \\$2 was debited"):
        wallet.refund("r", "3")
    assert wallet.refund("r", "0.5").balance_after == Decimal("8.5")
    with pytest.raises(CreditsError, match="already refunded"):
        wallet.refund("r")


@pytest.mark.parametrize("bad", ["-1", "abc", "NaN", "Infinity", "0", "1e-13", ""])
def test_top_up_validates_amounts(bad: str) -> None:
    """Only positive finite decimals (to the pico-dollar) are accepted."""
    with pytest.raises(ConfigurationError):
        wallet.top_up(bad)
    assert wallet.transactions(as_frame=False) == []


def test_set_balance_accepts_zero() -> None:
    """set_balance(0) is a valid adjustment."""
    wallet.top_up(3)
    assert wallet.set_balance("0").amount == Decimal(-3)
    assert wallet.balance() == 0


def test_credits_summary_and_html() -> None:
    """Summary: balance, low, top-ups total, credits spent and all spend incl. BYOK this
    month, labelled as different figures."""
    wallet.top_up(20)
    wallet.top_up("2.5")
    led = default_ledger()
    led.record(
        LedgerRow(
            "m1", "p", "openai", "managed", credits_charged_usd=Decimal("0.75"), ts_ms=now_ms()
        )
    )
    led.record(
        LedgerRow("m2", "p", "openai", "managed", status="error", credits_charged_usd=Decimal(0))
    )
    led.record(
        LedgerRow("b1", "p", "openai", "byok", provider_cost_usd=Decimal("0.5"), ts_ms=now_ms())
    )
    wallet.debit("m1", Decimal("0.75"), project="p")
    summary = wallet.credits()
    assert summary.balance == Decimal("21.75")
    assert summary.low is False
    assert summary.top_ups_total == Decimal("22.5")
    assert summary.credits_spent_this_month == Decimal("0.75")
    assert summary.all_spend_this_month == Decimal("1.25")
    assert summary.to_dict()["balance"] == "21.75"
    assert "Credits spent this month (charged to the Cencori wallet): $0.7500" in str(summary)
    assert "All spend this month incl. BYOK" in str(summary) and "$1.2500" in str(summary)
    assert "$21.75" in summary._repr_html_() and "low" not in summary._repr_html_()
    wallet.set_balance(1)
    assert "low" in wallet.credits()._repr_html_()


def test_transactions_frame() -> None:
    """transactions() as a DataFrame: kinds, float money, UTC times."""
    wallet.top_up(10)
    wallet.debit("x", Decimal("0.25"), project="p")
    frame = wallet.transactions()
    assert list(frame["kind"]) == ["topup", "usage"]
    assert list(frame["balance_after"]) == [10.0, 9.75]
    assert str(frame["time"].dt.tz) == "UTC"


def test_untracked_mirror_skips_debits() -> None:
    """Before any balance is recorded, a debit is skipped (no negative or fake history)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wallet.debit("early", Decimal("0.5"), project="p") is None
    assert wallet.transactions(as_frame=False) == []
    wallet.top_up(10)
    assert wallet.debit("early", Decimal("0.5"), project="p") is not None
    assert wallet.balance() == Decimal("9.5")


def _debitor(home: str, worker: int, n: int) -> None:
    import os

    os.environ["CENCORI_NB_HOME"] = home
    import warnings as w
    from decimal import Decimal as D

    from cencori_nb import wallet as wal

    w.simplefilter("ignore")
    for i in range(n):
        wal.debit(f"w{worker}-{i}", D("0.01"), project="p")
        wal.debit(f"w{worker}-{i}", D("0.01"), project="p")  # a retry: no second debit


def test_two_processes_debiting_keep_exact_balances(private_home: Path) -> None:
    """Two processes × 100 debits of $0.01 (each retried) from $10: exactly $8 left, and
    every transaction's before/after chain is unbroken."""
    import multiprocessing

    wallet.top_up(10)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_debitor, args=(str(private_home), w, 100)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert wallet.balance() == Decimal(8)
    txs = wallet.transactions(as_frame=False)
    assert len(txs) == 201
    for prev, tx in zip(txs, txs[1:], strict=False):
        assert tx.balance_before == prev.balance_after
        assert tx.balance_after == tx.balance_before + tx.amount


def test_refund_by_a_repeated_provider_id_asks_for_the_client_id() -> None:
    """Two debits sharing a provider id: refunding by it is refused (name the client id);
    by client id it works, once."""
    wallet.top_up(10)
    wallet.debit("c-1", Decimal("1"), project="p", request_id="dup")
    wallet.debit("c-2", Decimal("2"), project="p", request_id="dup")
    with pytest.raises(CreditsError, match="client_id"):
        wallet.refund("dup")
    assert wallet.refund("c-2").amount == Decimal(2)
    with pytest.raises(CreditsError, match="already refunded"):
        wallet.refund("c-2")
    assert wallet.balance() == Decimal(9)
