"""Money for one request: budget check before sending; price, charge, debit and record after.

The client calls, per request:

- :func:`check_budget` before sending (hard cap → :class:`BudgetExceededError`);
- :func:`settle` after a success: fills ``provider_cost_usd``, ``price_version`` and
  ``credits_charged_usd`` on the :class:`~cencori_nb.types.Completion` (synchronously),
  and queues the ledger row with the wallet debit (once per request id), which the
  ledger's background writer commits in one SQLite transaction (see :mod:`cencori_nb.ledger`;
  every read flushes first);
- :func:`record_failure` after an error (a row with status ``error`` and the error code;
  no debit, so a gateway 403/402 leaves the wallet untouched);
- :func:`record_cached` for a cache hit (a ``cached`` row, zero cost, no debit).

Charges (reference/cencori.md, "Credits and billing"):

- managed: the gateway's ``cost_usd`` when it returned one, else provider list price ×
  (1 + ``markup_pct``/100), markup 50% by default (``settings.markup_pct``);
- BYOK, by ``settings.byok_policy``: ``zero`` (default; the user pays the provider
  directly), ``percent`` (``byok_fee_pct`` % of the provider price), or ``managed`` (the full
  managed charge, as Cencori's code does today).

A request with no known price is recorded with "cost unknown" (NULL) and charged nothing
locally, with a :class:`PricingWarning`; a managed one was priced by the gateway, whose
wallet stays the truth (see :mod:`cencori_nb.pricing` for why we do not fail closed here).

Budgets (per project, per UTC month, ``settings.update_project(...)``): the project's cost
is what it cost its user: credits charged, plus the provider price of BYOK requests.
``soft_budget_usd`` → :class:`BudgetWarning` at 50/80/100 %, once per threshold per month
(remembered in the ledger, so across kernels too); ``hard_cap_usd`` → refusal before
sending.
"""

from __future__ import annotations

import threading
import uuid
import warnings
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from . import pricing, wallet
from .errors import BudgetExceededError
from .ledger import Ledger, LedgerRow, default_ledger, from_pusd, now_ms, to_pusd
from .settings import Settings, load_settings
from .types import Completion
from .wallet import LowBalanceWarning

__all__ = ["BudgetWarning", "LowBalanceWarning", "PricingWarning", "SOFT_THRESHOLDS",
           "check_budget", "charge_for", "month_cost", "record_cached", "record_failure",
           "settle"]

SOFT_THRESHOLDS = (50, 80, 100)


class BudgetWarning(UserWarning):
    """A project's spend this month reached 50, 80 or 100 % of its soft budget."""


class PricingWarning(UserWarning):
    """A request could not be priced (model missing from the price table)."""


def _project(project: str | None, settings: Settings) -> str:
    return project or settings.project


def charge_for(route: str, provider_cost: Decimal | None, gateway_cost: Decimal | None = None,
               *, settings: Settings | None = None) -> Decimal | None:
    """What the Cencori wallet is charged for a request (None when it cannot be priced)."""
    s = settings or load_settings()
    markup = Decimal(1) + Decimal(s.markup_pct) / 100
    if route == "managed":
        if gateway_cost is not None:
            return Decimal(gateway_cost)
        return None if provider_cost is None else provider_cost * markup
    # BYOK
    if s.byok_policy == "zero":
        return Decimal(0)
    if provider_cost is None:
        return None
    if s.byok_policy == "percent":
        return provider_cost * Decimal(s.byok_fee_pct) / 100
    return provider_cost * markup      # "managed": the full managed charge


def month_cost(project: str | None = None, *, ledger: Ledger | None = None) -> Decimal:
    """What ``project`` cost its user this UTC month (credits + BYOK provider price)."""
    s = load_settings()
    return (ledger or default_ledger()).month_cost(_project(project, s))


def _fmt(usd: Decimal) -> str:
    return f"${usd:.4f}" if usd < 1 else f"${usd:,.2f}"


def check_budget(project: str | None, estimated_cost_usd: Decimal | None) -> None:
    """Refuse a request that would pass the project's monthly hard cap; warn on the soft one.

    ``estimated_cost_usd`` is the caller's estimate of the request's cost (None: unknown,
    then only a cap already reached refuses).
    """
    s = load_settings()
    name = _project(project, s)
    ps = s.for_project(name)
    if ps.hard_cap_usd is None and ps.soft_budget_usd is None:
        return
    led = default_ledger()
    spent = led.month_cost(name)
    if ps.soft_budget_usd is not None:
        _soft_warnings(led, name, spent, ps.soft_budget_usd)
    if ps.hard_cap_usd is None:
        return
    cap = ps.hard_cap_usd
    estimate = estimated_cost_usd or Decimal(0)
    if spent + estimate > cap or spent >= cap:
        est = f" and this request is estimated at {_fmt(estimate)}" if estimate else ""
        raise BudgetExceededError(
            f"Project {name!r} has spent {_fmt(spent)} this month of its {_fmt(cap)} hard cap"
            f"{est}, so the request was not sent.",
            hint=(f"Raise the cap with cencori_nb.settings.update_project({name!r}, "
                  f"hard_cap_usd=...) or `cencori-nb credits budget --project {name} "
                  "--hard-cap USD` (use `none` to remove it)."),
            project=name, spent_usd=spent, cap_usd=cap, estimated_usd=estimated_cost_usd)


def _month_key(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).strftime("%Y-%m")


def _soft_warnings(led: Ledger, project: str, spent: Decimal, budget: Decimal) -> None:
    if budget <= 0:
        return
    pct = spent * 100 / budget
    month = _month_key()
    for threshold in SOFT_THRESHOLDS:
        if pct < threshold:
            break
        with led.transaction() as conn:
            new = conn.execute(
                "INSERT OR IGNORE INTO budget_alerts (project, month, threshold, ts_ms) "
                "VALUES (?, ?, ?, ?)", (project, month, threshold, now_ms())).rowcount == 1
        if new:
            warnings.warn(
                f"Project {project!r} has spent {_fmt(spent)} this month, {threshold}% of its "
                f"{_fmt(budget)} soft budget. Change it with cencori_nb.settings."
                f"update_project({project!r}, soft_budget_usd=...).",
                BudgetWarning, stacklevel=4)


def settle(completion: Completion, *, when: datetime | None = None) -> Completion:
    """Price, charge, debit and record one successful request; returns the completion.

    Idempotent per ``completion.request_id``: settling the same request again writes no
    second row and debits nothing more.
    """
    if completion.cached:
        return record_cached(completion)
    s = load_settings()
    completion.project = _project(completion.project, s)
    if not completion.request_id:
        completion.request_id = "cnb-" + uuid.uuid4().hex
    model = completion.model or completion.model_requested
    quote = pricing.provider_cost(completion.provider, model, completion.usage, when=when)
    provider_cost = quote.cost_usd
    if provider_cost is None:
        provider_cost = completion.provider_cost_usd   # a price the caller already had
    charge = charge_for(completion.route, provider_cost, completion.gateway_cost_usd,
                        settings=s)
    if charge is None:
        warnings.warn(
            f"No price is known for model {model!r} at {completion.provider!r} "
            f"({quote.version}); the request is recorded with cost unknown"
            + (" and no local wallet debit (the gateway's wallet is the truth)."
               if completion.route == "managed" else "."),
            PricingWarning, stacklevel=2)
    completion.provider_cost_usd = provider_cost
    completion.price_version = quote.version
    completion.credits_charged_usd = charge if charge is not None else Decimal(0)
    row = _row(completion, status="ok", when=when)
    led = default_ledger()
    if charge:
        request_id, project, amount = completion.request_id, completion.project, charge

        def debit(conn: Any) -> None:        # runs in the row's transaction, if inserted
            wallet.debit_in(conn, request_id, amount, project=project)

        led.submit(row, on_insert=debit)
        _predict_low_balance(led, charge)
    else:
        led.submit(row)
    ps = s.for_project(completion.project)
    if ps.soft_budget_usd is not None:
        _soft_warnings(led, completion.project, led.month_cost(completion.project),
                       ps.soft_budget_usd)
    return completion


# The balance this process expects once its queued debits are written: the low-balance
# warning is decided now, not when the background writer commits. Reloaded from the file
# when the ledger or the wallet (top-up, set-balance, refund) changes; other processes'
# debits show up at the next reload, which is soon enough for a warning.
_hint_lock = threading.Lock()
_hint: dict[str, Any] = {"ledger": None, "generation": -1, "pusd": None}


def _predict_low_balance(led: Ledger, charge: Decimal) -> None:
    with _hint_lock:
        if _hint["ledger"] is not led or _hint["generation"] != wallet.generation:
            _hint.update(ledger=led, generation=wallet.generation,
                         pusd=wallet.known_balance_pusd(led))
        before = _hint["pusd"]
        if before is None:
            return                              # the mirror is not tracking
        after = max(before - (to_pusd(charge) or 0), 0)
        _hint["pusd"] = after
    wallet.warn_low(from_pusd(before) or Decimal(0), from_pusd(after) or Decimal(0),
                    stacklevel=4)


def _row(c: Completion, *, status: str, when: datetime | None = None,
         **overrides: Any) -> LedgerRow:
    ts = int(when.timestamp() * 1000) if when is not None else now_ms()
    row = LedgerRow(
        request_id=c.request_id, project=c.project, provider=c.provider, route=c.route,
        status=status, model_requested=c.model_requested, model=c.model,
        credential_source=c.credential_source, input_tokens=c.input_tokens,
        output_tokens=c.output_tokens, cache_read_tokens=c.cache_read_tokens,
        cache_write_tokens=c.cache_write_tokens, thinking_tokens=c.thinking_tokens,
        provider_cost_usd=c.provider_cost_usd, credits_charged_usd=c.credits_charged_usd,
        estimated=c.estimated, price_version=c.price_version, latency_ms=c.latency_ms,
        ttft_ms=c.ttft_ms, ts_ms=ts)
    for key, value in overrides.items():
        setattr(row, key, value)
    return row


def record_cached(completion: Completion) -> Completion:
    """Record a cache hit: a ``cached`` row with zero cost; the wallet is not touched."""
    s = load_settings()
    completion.project = _project(completion.project, s)
    completion.cached = True
    completion.provider_cost_usd = Decimal(0)
    completion.credits_charged_usd = Decimal(0)
    if not completion.request_id:
        completion.request_id = "cnb-" + uuid.uuid4().hex
    default_ledger().submit(_row(completion, status="cached"))
    return completion


def record_failure(*, request_id: str | None, project: str | None, provider: str,
                   model: str | None, route: str, credential_source: str = "",
                   error: BaseException | str | None = None,
                   latency_ms: float | None = None) -> None:
    """Record a failed request: one ``error`` row with the error's code; nothing is debited.

    ``error`` is the exception (its ``code`` attribute, e.g. ``credit_balance_exhausted``, is
    stored) or a code string.
    """
    s = load_settings()
    if isinstance(error, str):
        code: str | None = error
    elif error is None:
        code = None
    else:
        code = getattr(error, "code", None) or type(error).__name__
    default_ledger().submit(LedgerRow(
        request_id=request_id or "cnb-" + uuid.uuid4().hex, project=_project(project, s),
        provider=provider, route=route, status="error", model_requested=model, model=None,
        credential_source=credential_source, error_code=code, latency_ms=latency_ms))
