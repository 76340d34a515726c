"""A local mirror of the Cencori organisation credit wallet, in Decimal USD.

The gateway's wallet is the truth; this mirror lets a notebook see its balance and spend
without a round trip. Every change is a transaction row (``topup | usage | refund |
adjustment``) with the balance before and after, in the ledger's SQLite file (so a usage
debit and its request row commit together).

Rules mirrored from Cencori (docs/cencori.md, "Credits and billing"):

- a usage debit is idempotent per request: keyed on the ledger row's ``client_id`` (a
  UNIQUE index; debiting twice is a no-op). Not on the provider's request id, which some
  providers repeat (migration 004);
- the balance never goes negative: when a charge is larger than the mirrored balance, the
  debit takes what is there (the balance becomes 0) and the transaction's note records the
  full charge and the shortfall; the request's ledger row keeps the full charge;
- a warning (:class:`LowBalanceWarning`) when a debit leaves the balance under $5.

The mirror starts tracking at the first recorded balance (``top_up`` or ``set_balance``):
before that, usage debits are skipped (there is no known balance to debit or to warn about;
the ledger still records every charge, so ``credits().credits_spent_this_month`` is
complete) and :func:`credits` says the balance is not tracked yet, never "$0.00, low".

Two figures are kept apart everywhere: **credits spent** (charged to the Cencori wallet)
and **all spend including BYOK** (each request's ``cost_usd``: credits plus the provider
price paid on your own keys). Requests made with a Cencori test key (``csk_test_…``) are
free and never debited.

:func:`reconcile` compares the ledger's managed spend with what the gateway reports for
the same period (Cencori's Metrics API, ``GET /api/v1/metrics?period=…``): the balance
itself has no public API, but the spend does.

``set_balance`` records an ``adjustment`` (the difference), so the history stays complete.
The gateway's ``403 credit_balance_exhausted`` / ``402 spend_cap_reached`` are raised by the
adapters as :class:`~cencori_nb.errors.CreditsExhaustedError` /
:class:`~cencori_nb.errors.SpendCapReachedError`; they change nothing here.
"""

from __future__ import annotations

import html
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from . import state
from .catalog import CENCORI_BILLING_URL
from .errors import ConfigurationError, CreditsError
from .ledger import (
    BILLED_SQL,
    DAY_MS,
    Ledger,
    default_ledger,
    from_pusd,
    month_start_ms,
    now_ms,
    to_pusd,
)

__all__ = [
    "LOW_BALANCE_USD",
    "PERIODS",
    "CreditsSummary",
    "LowBalanceWarning",
    "Reconciliation",
    "Transaction",
    "balance",
    "credits",
    "debit",
    "parse_amount",
    "reconcile",
    "refund",
    "set_balance",
    "top_up",
    "transactions",
]

LOW_BALANCE_USD = Decimal(5)
TOP_UP_URL = CENCORI_BILLING_URL


class LowBalanceWarning(UserWarning):
    """The mirrored credit balance fell under $5 (Cencori's low-balance threshold)."""


@dataclass(frozen=True, slots=True)
class Transaction:
    """One wallet movement. ``amount`` is signed (debits negative), USD."""

    id: int
    time: datetime
    kind: str
    amount: Decimal
    balance_before: Decimal
    balance_after: Decimal
    request_id: str | None = None
    project: str | None = None
    note: str | None = None
    client_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time.isoformat(),
            "kind": self.kind,
            "amount": str(self.amount),
            "balance_before": str(self.balance_before),
            "balance_after": str(self.balance_after),
            "request_id": self.request_id,
            "project": self.project,
            "note": self.note,
            "client_id": self.client_id,
        }


_TX_COLUMNS = (
    "id, ts_ms, kind, amount_pusd, balance_before_pusd, balance_after_pusd, "
    "request_id, project, note, client_id"
)


def _tx(row: tuple[Any, ...]) -> Transaction:
    return Transaction(
        id=row[0],
        time=datetime.fromtimestamp(row[1] / 1000, UTC),
        kind=row[2],
        amount=from_pusd(row[3]) or Decimal(0),
        balance_before=from_pusd(row[4]) or Decimal(0),
        balance_after=from_pusd(row[5]) or Decimal(0),
        request_id=row[6],
        project=row[7],
        note=row[8],
        client_id=row[9],
    )


def parse_amount(value: Any, *, allow_zero: bool = False, what: str = "amount") -> Decimal:
    """A positive (or, with ``allow_zero``, non-negative) finite Decimal, or a clear error."""
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ConfigurationError(
            f"The {what} {value!r} is not a number.",
            hint="Write dollars as a decimal, e.g. 25 or 10.50.",
        ) from None
    if not amount.is_finite() or amount < 0 or (amount == 0 and not allow_zero):
        need = "zero or more" if allow_zero else "more than zero"
        raise ConfigurationError(
            f"The {what} must be {need} dollars; got {value!r}.",
            hint="Write dollars as a decimal, e.g. 25 or 10.50.",
        )
    if amount != amount.quantize(Decimal(1).scaleb(-12)):
        raise ConfigurationError(f"The {what} {value!r} has more than 12 decimal places.")
    return amount


def _balance_pusd(conn: Any) -> int:
    row = conn.execute(
        "SELECT balance_after_pusd FROM wallet_transactions ORDER BY id DESC LIMIT 1"
    ).fetchone()
    return int(row[0]) if row else 0


def _insert(
    conn: Any,
    kind: str,
    delta_pusd: int,
    before_pusd: int,
    *,
    request_id: str | None = None,
    project: str | None = None,
    note: str | None = None,
    client_id: str | None = None,
) -> Transaction:
    ts = now_ms()
    cur = conn.execute(
        "INSERT INTO wallet_transactions (ts_ms, kind, amount_pusd, balance_before_pusd, "
        "balance_after_pusd, request_id, project, note, client_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (
            ts,
            kind,
            delta_pusd,
            before_pusd,
            before_pusd + delta_pusd,
            request_id,
            project,
            note,
            client_id,
        ),
    )
    (tx_id,) = cur.fetchone()  # RETURNING: the same on SQLite and PostgreSQL
    return _tx(
        (
            tx_id,
            ts,
            kind,
            delta_pusd,
            before_pusd,
            before_pusd + delta_pusd,
            request_id,
            project,
            note,
            client_id,
        )
    )


def _ledger(ledger: Ledger | None) -> Ledger:
    return ledger if ledger is not None else default_ledger()


def balance(*, ledger: Ledger | None = None) -> Decimal:
    """The mirrored balance in USD (0 before the first top-up)."""
    led = _ledger(ledger)
    with led.locked() as conn:
        return from_pusd(_balance_pusd(conn)) or Decimal(0)


def top_up(
    amount: Decimal | str | int, note: str | None = None, *, ledger: Ledger | None = None
) -> Transaction:
    """Record credits bought on cencori.com (a positive amount)."""
    value = to_pusd(parse_amount(amount))
    assert value is not None
    _changed()
    with _ledger(ledger).transaction() as conn:
        return _insert(conn, "topup", value, _balance_pusd(conn), note=note)


def set_balance(
    amount: Decimal | str | int, note: str | None = None, *, ledger: Ledger | None = None
) -> Transaction:
    """Make the mirror match the dashboard: an ``adjustment`` of the difference."""
    target = to_pusd(parse_amount(amount, allow_zero=True, what="balance"))
    assert target is not None
    _changed()
    with _ledger(ledger).transaction() as conn:
        before = _balance_pusd(conn)
        return _insert(conn, "adjustment", target - before, before, note=note or "set balance")


def debit_in(
    conn: Any,
    client_id: str,
    amount: Decimal,
    *,
    project: str | None,
    request_id: str | None = None,
) -> Transaction | None:
    """Debit inside the caller's transaction; None if ``client_id`` was already debited.

    ``client_id`` is the request's ledger row id (what makes the debit idempotent);
    ``request_id`` the provider's id, kept for reference. Clamps at zero (see the module
    docstring) and notes the shortfall.
    """
    if not client_id:
        raise CreditsError(
            "A usage debit needs the request's client id (it is what makes it idempotent)."
        )
    charge = to_pusd(amount) or 0
    if charge < 0:
        raise CreditsError(f"A usage debit must not be negative (got {amount}); use refund().")
    # one statement: was it debited already, and the current balance (NULL: not tracking)
    done, last = conn.execute(
        "SELECT (SELECT 1 FROM wallet_transactions WHERE kind = 'usage' AND client_id = ?), "
        "(SELECT balance_after_pusd FROM wallet_transactions ORDER BY id DESC LIMIT 1)",
        (client_id,),
    ).fetchone()
    if done or last is None:
        return None  # already debited, or the mirror is not tracking yet
    before = int(last)
    taken = min(charge, max(before, 0))
    note = None
    if taken < charge:
        note = (
            f"charge ${from_pusd(charge)} exceeded the mirrored balance ${from_pusd(before)}"
            f"; debited ${from_pusd(taken)}, shortfall ${from_pusd(charge - taken)}"
        )
    return _insert(
        conn,
        "usage",
        -taken,
        before,
        request_id=request_id or client_id,
        project=project,
        note=note,
        client_id=client_id,
    )


def debit(
    client_id: str,
    amount: Decimal | str | int,
    *,
    project: str | None = None,
    request_id: str | None = None,
    ledger: Ledger | None = None,
) -> Transaction | None:
    """Debit a request's charge once; a second call with the same ``client_id`` returns
    None and changes nothing (as does a debit before any balance was recorded). Warns
    :class:`LowBalanceWarning` under $5."""
    value = parse_amount(amount, allow_zero=True)
    _changed()
    with _ledger(ledger).transaction() as conn:
        tx = debit_in(conn, client_id, value, project=project, request_id=request_id)
    if tx is not None:
        warn_if_low(tx)
    return tx


_warned_low = False


def warn_if_low(tx: Transaction, *, stacklevel: int = 3) -> None:
    """Warn when a debit takes the balance under $5 (crossing it, or the first time in this
    process that a debit leaves it low)."""
    warn_low(tx.balance_before, tx.balance_after, stacklevel=stacklevel + 1)


def warn_low(before: Decimal, after: Decimal, *, stacklevel: int = 3) -> None:
    """:func:`warn_if_low` for a balance change given as numbers."""
    global _warned_low
    if after >= LOW_BALANCE_USD:
        return
    if before >= LOW_BALANCE_USD or not _warned_low:
        _warned_low = True
        warnings.warn(
            f"Your Cencori credit balance (local mirror) is ${after:.2f}, under "
            f"${LOW_BALANCE_USD}. Top up at {TOP_UP_URL}, then record it with "
            "`cencori-nb credits top-up AMOUNT` (or cencori_nb.wallet.top_up).",
            LowBalanceWarning,
            stacklevel=stacklevel,
        )


# Bumped by every balance change made through this module, so accounting's predicted
# balance (used to warn without waiting for the background writer) knows to reload.
generation = 0


def _changed() -> None:
    global generation
    generation += 1


def _forget() -> None:
    """A new home (or a reset): its balance is warned about afresh, and reloaded."""
    global _warned_low
    _warned_low = False
    _changed()


state.on_reset("wallet", _forget)


def known_balance_pusd(ledger: Ledger | None = None) -> int | None:
    """The mirrored balance in pico-USD, or None while the mirror is not tracking."""
    with _ledger(ledger).locked() as conn:
        row = conn.execute(
            "SELECT balance_after_pusd FROM wallet_transactions ORDER BY id DESC LIMIT 1"
        ).fetchone()
    return None if row is None else int(row[0])


def refund(
    request_id: str,
    amount: Decimal | str | int | None = None,
    *,
    ledger: Ledger | None = None,
    note: str | None = None,
) -> Transaction:
    """Give back a request's debit (all of it by default); one refund per request.

    ``request_id`` names the request by its ledger ``client_id`` or, when only one debit
    carries it, by the provider's request id.
    """
    _changed()
    with _ledger(ledger).transaction() as conn:
        found = conn.execute(
            "SELECT -amount_pusd, project, client_id FROM wallet_transactions "
            "WHERE kind = 'usage' AND client_id = ?",
            (request_id,),
        ).fetchall()
        if not found:
            found = conn.execute(
                "SELECT -amount_pusd, project, client_id FROM "
                "wallet_transactions WHERE kind = 'usage' AND request_id = ?",
                (request_id,),
            ).fetchall()
        if len(found) > 1:
            raise CreditsError(
                f"{len(found)} debits carry the provider request id {request_id!r}.",
                hint="Name the one to refund by its client_id (cencori_nb.wallet."
                "transactions() lists them).",
                request_id=request_id,
            )
        row = found[0] if found else None
        if row is None:
            raise CreditsError(
                f"No usage debit for request {request_id!r} to refund.", request_id=request_id
            )
        client_id = row[2]
        if conn.execute(
            "SELECT 1 FROM wallet_transactions WHERE kind = 'refund' AND client_id = ?",
            (client_id,),
        ).fetchone():
            raise CreditsError(
                f"Request {request_id!r} was already refunded.", request_id=request_id
            )
        debited = int(row[0])
        value = debited if amount is None else to_pusd(parse_amount(amount))
        assert value is not None
        if value > debited:
            raise CreditsError(
                f"Cannot refund ${from_pusd(value)} for request {request_id!r}: only "
                f"${from_pusd(debited)} was debited.",
                request_id=request_id,
            )
        return _insert(
            conn,
            "refund",
            value,
            _balance_pusd(conn),
            request_id=request_id,
            project=row[1],
            note=note,
            client_id=client_id,
        )


def transactions(*, as_frame: bool = True, ledger: Ledger | None = None) -> Any:
    """Every wallet movement, oldest first: a DataFrame (``time, kind, amount,
    balance_before, balance_after, request_id, project, note, client_id``; money as float)
    or, with ``as_frame=False``, a list of :class:`Transaction` (money as Decimal)."""
    # _TX_COLUMNS is a constant of this module, not input
    sql = f"SELECT {_TX_COLUMNS} FROM wallet_transactions ORDER BY id"  # noqa: S608
    txs = [_tx(r) for r in _ledger(ledger).query(sql)]
    if not as_frame:
        return txs
    import pandas as pd

    columns = [
        "time",
        "kind",
        "amount",
        "balance_before",
        "balance_after",
        "request_id",
        "project",
        "note",
        "client_id",
    ]
    frame = pd.DataFrame(
        [
            (
                t.time,
                t.kind,
                float(t.amount),
                float(t.balance_before),
                float(t.balance_after),
                t.request_id,
                t.project,
                t.note,
                t.client_id,
            )
            for t in txs
        ],
        columns=columns,
    )
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    return frame


_NOT_TRACKED = (
    "not tracked yet: record it with `cencori-nb credits set-balance AMOUNT` "
    "(the balance shown at " + TOP_UP_URL + ") or `cencori-nb credits top-up "
    "AMOUNT`"
)


@dataclass(frozen=True, slots=True)
class CreditsSummary:
    """The wallet at a glance (what ``cencori-nb credits`` and ``%cencori credits`` show).

    ``balance`` is None (and ``tracked`` False) until a balance is recorded: the mirror does
    not know it. ``credits_spent_this_month`` is what the Cencori wallet was charged;
    ``all_spend_this_month`` is every request's cost to you, BYOK provider prices included.
    """

    balance: Decimal | None
    low: bool
    top_ups_total: Decimal
    credits_spent_this_month: Decimal
    all_spend_this_month: Decimal
    transactions: int
    tracked: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "tracked": self.tracked,
            "balance": None if self.balance is None else str(self.balance),
            "low": self.low,
            "top_ups_total": str(self.top_ups_total),
            "credits_spent_this_month": str(self.credits_spent_this_month),
            "all_spend_this_month_incl_byok": str(self.all_spend_this_month),
            "transactions": self.transactions,
            "low_balance_threshold": str(LOW_BALANCE_USD),
        }

    def _lines(self) -> list[tuple[str, str]]:
        if self.balance is None:
            bal = "Balance " + _NOT_TRACKED
        else:
            low = f"  (low: under ${LOW_BALANCE_USD}; top up at {TOP_UP_URL})" if self.low else ""
            bal = f"Balance: ${self.balance:.2f}{low}"
        return [
            ("", bal),
            (
                "Credits spent this month (charged to the Cencori wallet)",
                f"${self.credits_spent_this_month:.4f}",
            ),
            (
                "All spend this month incl. BYOK (credits + provider price on your keys)",
                f"${self.all_spend_this_month:.4f}",
            ),
            ("Top-ups recorded (all time)", f"${self.top_ups_total:.2f}"),
            ("Transactions", str(self.transactions)),
        ]

    def __str__(self) -> str:
        return "\n".join(text if not label else f"{label}: {text}" for label, text in self._lines())

    def _repr_html_(self) -> str:
        if self.balance is None:
            balance = html.escape("not tracked yet") + (
                " — record it with <code>cencori-nb credits set-balance AMOUNT</code> (the "
                f"balance at <a href='{html.escape(TOP_UP_URL)}'>cencori.com</a>)"
            )
            colour = "inherit"
        else:
            colour = "#b00020" if self.low else "inherit"
            low = (
                (
                    f" <span style='color:#b00020'>low — under ${LOW_BALANCE_USD}; "
                    f"<a href='{html.escape(TOP_UP_URL)}'>top up</a></span>"
                )
                if self.low
                else ""
            )
            balance = f"${self.balance:.2f}{low}"
        rows = [
            f"<tr><th style='text-align:left'>Credit balance</th>"
            f"<td style='color:{colour}'>{balance}</td></tr>"
        ]
        for label, text in self._lines()[1:]:
            rows.append(
                f"<tr><th style='text-align:left'>{html.escape(label)}</th>"
                f"<td>{html.escape(text)}</td></tr>"
            )
        return "<table>" + "".join(rows) + "</table>"


def credits(*, ledger: Ledger | None = None) -> CreditsSummary:
    """Balance (None until one is recorded), low flag (under $5), top-ups total, credits
    spent and all spend including BYOK this UTC month."""
    led = _ledger(ledger)
    with led.locked() as conn:
        last = conn.execute(
            "SELECT balance_after_pusd FROM wallet_transactions ORDER BY id DESC LIMIT 1"
        ).fetchone()
        topups, count = conn.execute(
            "SELECT COALESCE(SUM(CASE WHEN kind = 'topup' THEN amount_pusd END), 0), COUNT(*) "
            "FROM wallet_transactions"
        ).fetchone()
        # the daily rollup: whole UTC days. All spend sums every row's stored cost, as the
        # budgets do (month_cost); BILLED_SQL is a constant
        sql = (
            f"SELECT COALESCE(SUM(CASE WHEN {BILLED_SQL} THEN credits_charged_pusd END), "  # noqa: S608
            "0), COALESCE(SUM(cost_pusd), 0) FROM requests_daily WHERE day >= ?"
        )
        credits_spent, all_spend = conn.execute(sql, (month_start_ms() // DAY_MS,)).fetchone()
    balance_usd = None if last is None else from_pusd(int(last[0])) or Decimal(0)
    return CreditsSummary(
        balance=balance_usd,
        tracked=balance_usd is not None,
        low=balance_usd is not None and balance_usd < LOW_BALANCE_USD,
        top_ups_total=from_pusd(int(topups)) or Decimal(0),
        credits_spent_this_month=from_pusd(int(credits_spent)) or Decimal(0),
        all_spend_this_month=from_pusd(int(all_spend)) or Decimal(0),
        transactions=int(count),
    )


# --------------------------------------------------------------------------- reconcile

PERIODS = ("1h", "24h", "7d", "30d", "mtd")  # what Cencori's Metrics API accepts
# Cencori rounds cost.total_usd to 4 decimals (Math.round(x * 10000) / 10000).
GATEWAY_ROUNDING_USD = Decimal("0.00005")


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The ledger's managed spend against the gateway's for one period.

    ``drift_usd`` = ``gateway_usd`` − ``ledger_usd``: positive when the gateway charged more
    than this ledger recorded (requests made elsewhere with the same key, or rows lost),
    negative when the ledger holds more. Within ±$0.00005 it is the gateway's rounding.
    """

    period: str
    project: str
    start: datetime
    end: datetime
    ledger_usd: Decimal
    gateway_usd: Decimal
    drift_usd: Decimal
    ledger_requests: int
    gateway_requests: int

    @property
    def within_rounding(self) -> bool:
        return abs(self.drift_usd) <= GATEWAY_ROUNDING_USD

    def to_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "ledger_usd": str(self.ledger_usd),
            "gateway_usd": str(self.gateway_usd),
            "drift_usd": str(self.drift_usd),
            "project": self.project,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "ledger_requests": self.ledger_requests,
            "gateway_requests": self.gateway_requests,
            "within_rounding": self.within_rounding,
        }

    def __str__(self) -> str:
        verdict = (
            "in agreement (within the gateway's rounding to $0.0001)"
            if self.within_rounding
            else "the gateway reports MORE than the ledger recorded"
            if self.drift_usd > 0
            else "the ledger recorded MORE than the gateway reports"
        )
        return (
            f"Managed (credits) spend, project {self.project!r}, period {self.period} "
            f"({self.start:%Y-%m-%d %H:%M} → {self.end:%Y-%m-%d %H:%M} UTC):\n"
            f"  ledger:  ${self.ledger_usd:.6f} ({self.ledger_requests} requests)\n"
            f"  gateway: ${self.gateway_usd:.6f} ({self.gateway_requests} requests, "
            "Cencori Metrics API)\n"
            f"  drift:   ${self.drift_usd:+.6f}: {verdict}"
        )

    def _repr_html_(self) -> str:
        return "<pre>" + html.escape(str(self)) + "</pre>"


def _parse_gateway_time(value: Any, what: str) -> datetime:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        raise CreditsError(f"The gateway's metrics had an unreadable {what}: {value!r}.") from None


def reconcile(
    period: str = "24h", *, project: str | None = None, ledger: Ledger | None = None
) -> Reconciliation:
    """Compare the ledger's managed spend with Cencori's for the same period.

    Asks the gateway's Metrics API (``GET /api/v1/metrics?period=…`` with the project's
    Cencori key; the sandbox when one is configured) for ``cost.total_usd`` and sums the
    credits charged on this ledger's managed rows between the ``start_date`` and
    ``end_date`` the gateway reports, so both sides cover the same window. Test-key rows
    count 0 on both sides. The gateway counts every client using that key; the ledger only
    this machine's requests.
    """
    import httpx2

    from . import settings as settings_mod
    from . import transport
    from .catalog import CENCORI
    from .keystore import default_store
    from .providers import get_provider
    from .router import destination

    if period not in PERIODS:
        raise ConfigurationError(
            f"Cannot reconcile over period {period!r}.",
            hint="Use one of: " + ", ".join(PERIODS) + ".",
        )
    s = settings_mod.load_settings()
    name = project or s.project
    key = default_store().cencori_key(name)
    if key is None:
        raise ConfigurationError(
            f"Project {name!r} has no Cencori key, so there is no gateway spend to compare.",
            hint="Add one with `cencori-nb keys set cencori` (or --project NAME).",
        )
    dest = destination(CENCORI, CENCORI, key, s)  # a sandbox gets the demo key only
    adapter = get_provider(CENCORI)
    request = httpx2.Request(
        "GET",
        dest.base_url.rstrip("/") + "/api/v1/metrics",
        params={"period": period},
        headers={"Authorization": f"Bearer {dest.credential.reveal()}"},
    )
    response = transport.send(request, retries=1, map_error=adapter.map_error, provider=CENCORI)
    try:
        body = response.json()
        gateway = Decimal(str(body["cost"]["total_usd"]))
        gateway_requests = int(body["requests"]["total"])
        start = _parse_gateway_time(body["start_date"], "start_date")
        end = _parse_gateway_time(body["end_date"], "end_date")
    except (ValueError, KeyError, TypeError, InvalidOperation):
        raise CreditsError(
            "The gateway's metrics answer did not have cost.total_usd, "
            "requests.total, start_date and end_date.",
            hint="Check the base URL (settings.base_urls['cencori']).",
        ) from None
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    ((pusd, count),) = _ledger(ledger).query(
        "SELECT COALESCE(SUM(credits_charged_pusd), 0), COUNT(*) FROM requests "
        "WHERE route = 'managed' AND project = ? AND ts_ms >= ? AND ts_ms <= ? "
        "AND status != 'cached'",
        (name, start_ms, end_ms),
    )
    ledger_usd = from_pusd(int(pusd)) or Decimal(0)
    return Reconciliation(
        period=period,
        project=name,
        start=start,
        end=end,
        ledger_usd=ledger_usd,
        gateway_usd=gateway,
        drift_usd=gateway - ledger_usd,
        ledger_requests=int(count),
        gateway_requests=gateway_requests,
    )
