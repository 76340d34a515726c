"""Money for one request: reserve before sending; price, charge, debit and record after.

The client calls, per request:

- :func:`reserve` before sending: under a hard cap, the request's estimated maximum cost
  is reserved in the ledger file (or :class:`BudgetExceededError`); see "Hard caps" below;
- :func:`settle` after a success: fills ``provider_cost_usd``, ``price_version``,
  ``credits_charged_usd`` and ``cost_usd`` on the :class:`~cencori_nb.types.Completion`
  (synchronously) and records the row with the wallet debit (once per client id) in one
  SQLite transaction: queued for the ledger's background writer, or, when the request
  holds a reservation, written at once in the transaction that releases it;
- :func:`record_failure` after an error (a row with status ``error`` and the error code;
  no debit, so a gateway 403/402 leaves the wallet untouched);
- :func:`record_cached` for a cache hit (a ``cached`` row, zero cost, no debit).

One cost rule (:func:`cost_of`): what a request cost its user (``cost_usd``) is the credits
charged for a managed request, the provider price plus the credits charged (the BYOK fee)
for a BYOK one, 0 for a cache hit or a Cencori test key, None when unknown. It is computed
once, here, at settle time, stored on the Completion and on the ledger row (``cost_pusd``),
and every view (footer, ``map``, ``usage()``, ``spend()``, the CLI), the budget check and
the SQL rollup read that stored value.

Test keys (``csk_test_…``) are free at Cencori: a completion made with one has
``test_mode=True``, is charged nothing, debits nothing and needs no reservation.

Charges (docs/cencori.md, "Credits and billing"):

- managed: the gateway's ``cost_usd`` when it returned one, else provider list price ×
  (1 + ``markup_pct``/100), markup 50% by default (``settings.markup_pct``);
- BYOK, by ``settings.byok_policy``: ``zero`` (default; the user pays the provider
  directly), ``percent`` (``byok_fee_pct`` % of the provider price), or ``managed`` (the full
  managed charge, as Cencori's code does today).

A request with no known price is recorded with "cost unknown" (NULL) and charged nothing
locally, with a :class:`PricingWarning`; a managed one was priced by the gateway, whose
wallet stays the truth (see :mod:`cencori_nb.pricing` for why we do not fail closed here).

Budgets (per project, per UTC month, ``settings.update_project(...)``): the project's cost
is the sum of its rows' ``cost_usd``. ``soft_budget_usd`` → :class:`BudgetWarning` at
50/80/100 %, once per threshold per month (remembered in the ledger, so across kernels too);
``hard_cap_usd`` → refusal before sending.

Hard caps hold across threads, ``map`` concurrency and processes sharing the home. Before
a request is sent, :func:`reserve` runs one ``BEGIN IMMEDIATE`` transaction on the ledger
file: month spend (committed rows) + every reservation in flight + this request's estimate
must fit under the cap, and then the estimate is inserted into ``budget_reservations``.
The estimate is the list price of the prompt (estimated tokens) plus ``max_tokens`` of
output, turned into cost-to-you by the same rule as :func:`cost_of`. Without ``max_tokens``
the output reserved is ``settings.reserve_output_tokens`` (1,024 by default), or less when
the model's context window (the only output bound genai-prices records) leaves less room;
the refusal message says when that assumption was made. Settling deletes the reservation
in the transaction that writes the row, so spend is never counted twice nor missed. A
request whose estimate fits under the cap on committed spend alone, but not beside the
reservations in flight, waits for them to settle rather than being refused; one that
cannot fit even then is refused at once. Reservations record pid, host and time: those of
a dead process (or older than :data:`RESERVATION_TTL_MS`) expire. The overshoot past a cap
is therefore bounded by how far one request's real cost can exceed its estimate (the
prompt-token estimate), never by concurrency. Under a hard cap, a model with no known
price is refused unless listed in ``settings.unpriced_models_allowed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from typing import Any, TypeVar

from . import pricing, state, wallet
from .egress import CENCORI_TEST_PREFIX
from .errors import (
    BudgetExceededError,
    CencoriError,
    CostConfirmationError,
    LedgerError,
    RequestTooLargeError,
)
from .ledger import Ledger, LedgerRow, default_ledger, from_pusd, new_client_id, now_ms, to_pusd
from .settings import Settings, current_member, load_settings
from .types import Completion
from .wallet import LowBalanceWarning

__all__ = [
    "RESERVATION_TTL_MS",
    "SOFT_THRESHOLDS",
    "TEST_KEY_PREFIX",
    "BudgetWarning",
    "LowBalanceWarning",
    "PricingWarning",
    "Reservation",
    "TeamBudget",
    "areserve",
    "check_budget",
    "charge_for",
    "cost_of",
    "estimate_for",
    "is_test_key",
    "month_cost",
    "record_cached",
    "record_failure",
    "record_recovered",
    "reserve",
    "set_team_budget",
    "settle",
    "team_budgeted",
    "team_budgets",
]

SOFT_THRESHOLDS = (50, 80, 100)
# Cencori test keys are free (docs/cencori.md); one home for the prefix: egress, whose
# sandbox demo key for a test key keeps it, so test mode holds against the sandbox too
TEST_KEY_PREFIX = CENCORI_TEST_PREFIX
RESERVATION_TTL_MS = 3_600_000  # a reservation older than this expires even if its
#                                     process still runs (no request takes an hour)
# A provider batch job's reservation (cencori_nb.jobs) outlives the process that submitted
# it: pid 0 marks it, and it lasts the provider's 24-hour window plus a day to fetch.
JOB_RESERVATION_PID = 0
JOB_RESERVATION_TTL_MS = 48 * 3_600_000
RESERVATION_WAIT_S = 600.0  # how long a request waits for others to settle


class BudgetWarning(UserWarning):
    """A project's spend this month reached 50, 80 or 100 % of its soft budget."""


class PricingWarning(UserWarning):
    """A request could not be priced (model missing from the price table)."""


def _project(project: str | None, settings: Settings) -> str:
    return project or settings.project


def charge_for(
    route: str,
    provider_cost: Decimal | None,
    gateway_cost: Decimal | None = None,
    *,
    settings: Settings | None = None,
) -> Decimal | None:
    """What the Cencori wallet is charged for a request (None when it cannot be priced)."""
    s = settings or load_settings()
    if route == "managed":
        if gateway_cost is not None:
            return Decimal(gateway_cost)
        return None if provider_cost is None else provider_cost * _markup(s)
    # BYOK
    if s.byok_policy == "zero":
        return _ZERO
    if provider_cost is None:
        return None
    if s.byok_policy == "percent":
        return provider_cost * Decimal(s.byok_fee_pct) / 100
    return provider_cost * _markup(s)  # "managed": the full managed charge


_ZERO = Decimal(0)


def _markup(s: Settings) -> Decimal:
    return Decimal(1) + Decimal(s.markup_pct) / 100


def is_test_key(key: str | None) -> bool:
    """True for a Cencori test key (``csk_test_…``): requests made with it are free."""
    return bool(key) and str(key).startswith(TEST_KEY_PREFIX)


def cost_of(
    route: str,
    provider_cost: Decimal | None,
    charge: Decimal | None,
    *,
    cached: bool = False,
    test_mode: bool = False,
) -> Decimal | None:
    """What one request cost its user: THE cost rule (every view reads its stored result).

    Managed: the credits charged (``charge``). BYOK: the provider price (paid on the user's
    own account) plus the credits charged (the BYOK fee, 0 under the ``zero`` policy). A
    cache hit or a test-key request: 0. None when the needed price is unknown.
    """
    if cached or test_mode:
        return Decimal(0)
    if route == "byok":
        if provider_cost is None:
            return None
        return provider_cost + (charge or Decimal(0))
    return charge


def month_cost(project: str | None = None, *, ledger: Ledger | None = None) -> Decimal:
    """What ``project`` cost its user this UTC month (credits + BYOK provider price)."""
    s = load_settings()
    return (ledger or default_ledger()).month_cost(_project(project, s))


def _fmt(usd: Decimal) -> str:
    return f"${usd:.4f}" if usd < 1 else f"${usd:,.2f}"


def _cap_error(
    name: str,
    spent: Decimal,
    cap: Decimal,
    estimate: Decimal | None,
    note: str = "",
    held: Decimal = Decimal(0),
    *,
    scope: str = "local",
) -> BudgetExceededError:
    """``scope``: ``local`` (the project's cap in this machine's settings), or ``project``
    / ``member`` (a team cap kept in the ledger, :func:`set_team_budget`)."""
    est = f" and this request is estimated at up to {_fmt(estimate)}{note}" if estimate else ""
    flight = f" ({_fmt(held)} more is reserved by requests in flight)" if held else ""
    if scope == "local":
        who, whose = f"Project {name!r}", "its"
        hint = (
            f"Raise the cap with cencori_nb.settings.update_project({name!r}, "
            f"hard_cap_usd=...) or `cencori-nb credits budget --project {name} "
            "--hard-cap USD` (use `none` to remove it)."
        )
    else:
        who = f"{'Project' if scope == 'project' else 'Member'} {name!r}"
        whose = f"the team's {'project' if scope == 'project' else 'member'}"
        hint = (
            f"A team cap, shared by everyone on this ledger: change it with `cencori-nb "
            f"ledger budget --{scope} {name} --hard-cap USD` (use `none` to remove it)."
        )
    return BudgetExceededError(
        f"{who} has spent {_fmt(spent)} this month (all spend incl. BYOK) of "
        f"{whose} {_fmt(cap)} hard cap"
        f"{flight}{est}, so the request was not sent.",
        hint=hint + (" Setting max_tokens lowers the estimate." if note else ""),
        project=name,
        spent_usd=spent,
        cap_usd=cap,
        estimated_usd=estimate,
    )


def check_budget(project: str | None, estimated_cost_usd: Decimal | None) -> None:
    """Refuse a request that would pass the project's monthly hard cap; warn on the soft one.

    A check only (nothing is reserved; the client uses :func:`reserve`). Spend counts the
    reservations of requests in flight. ``estimated_cost_usd`` None: only a cap already
    reached refuses.
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
    held = _held(led, name)
    estimate = estimated_cost_usd or Decimal(0)
    if spent + held + estimate > cap or spent + held >= cap:
        raise _cap_error(name, spent, cap, estimated_cost_usd, held=held)


# --------------------------------------------------------------------------- reservations


@dataclass(slots=True)
class Reservation:
    """A request's estimated maximum cost, held against its project's hard cap until the
    request is settled or recorded as failed (both release it), or :meth:`release`."""

    id: str
    project: str
    amount_usd: Decimal
    output_tokens: int = 0
    output_assumed: bool = False  # max_tokens was not set: reserve_output_tokens used
    released: bool = False
    # the ledger it is held in: released there even if the home changed meanwhile
    ledger: Ledger | None = field(default=None, repr=False, compare=False)

    def release(self) -> None:
        """Drop the reservation now (idempotent; best effort: a stale one expires)."""
        if self.released:
            return
        self.released = True
        with contextlib.suppress(sqlite3.Error, CencoriError, OSError):
            with (self.ledger or default_ledger()).transaction() as conn:
                conn.execute("DELETE FROM budget_reservations WHERE id = ?", (self.id,))


def estimate_for(
    provider: str,
    model: str | None,
    route: str,
    input_tokens: int,
    max_tokens: int | None,
    *,
    settings: Settings | None = None,
) -> tuple[Decimal | None, int, bool]:
    """``(estimated maximum cost to you, output tokens assumed, assumed?)`` of a request.

    The list price of ``input_tokens`` plus its output allowance, by :func:`cost_of`.
    The allowance is ``max_tokens``; without it, ``settings.reserve_output_tokens``
    (default 1,024), lowered to what the model's context window leaves after the prompt.
    """
    s = settings or load_settings()
    assumed = max_tokens is None
    out = int(max_tokens) if max_tokens is not None else s.reserve_output_tokens
    if assumed:
        window = pricing.context_window(provider, model)
        if window:
            out = max(1, min(out, window - input_tokens))
    cost = pricing.estimate_cost(provider, model, input_tokens, out)
    if cost is None:
        return None, out, assumed
    return cost_of(route, cost, charge_for(route, cost, settings=s)), out, assumed


def check_context(provider: str, model: str | None, prompt_tokens: int) -> None:
    """Refuse, before sending, a prompt (``prompt_tokens``, estimated) larger than the
    model's context window: :class:`RequestTooLargeError` with both sizes (the provider
    would refuse it anyway, some only after reading a huge body). Unknown window: no check."""
    window = pricing.context_window(provider, model)
    if window and prompt_tokens > window:
        raise RequestTooLargeError(
            f"The prompt is about {prompt_tokens:,} tokens but {model} takes at most "
            f"{window:,} (its context window), so it was not sent.",
            hint="Shorten the prompt or split it (cencori_nb.map over chunks), or use a model "
            "with a larger context window.",
            prompt_tokens=prompt_tokens,
            context_window=window,
            model=model,
        )


def confirm_cost(
    provider: str,
    model: str | None,
    route: str,
    prompt_tokens: int,
    max_tokens: int | None,
    max_cost_usd: Decimal | None,
    *,
    free: bool = False,
    settings: Settings | None = None,
) -> None:
    """Refuse a request whose estimated maximum cost to you (:func:`estimate_for`) is above
    what was accepted: ``max_cost_usd``, else the ``confirm_above_usd`` setting (default
    $0.10), with :class:`CostConfirmationError`, on which the faces ask. A model with no
    known price, a free test key, or ``confirm_above_usd`` None: no check."""
    s = settings or load_settings()
    limit = max_cost_usd if max_cost_usd is not None else s.confirm_above_usd
    if limit is None or free:
        return
    estimate, out, assumed = estimate_for(
        provider, model, route, prompt_tokens, max_tokens, settings=s
    )
    if estimate is None or estimate <= limit:
        return
    allowance = f"up to {out:,} output tokens" + (
        " (no max_tokens given: the default allowance)" if assumed else ""
    )
    raise CostConfirmationError(
        f"This request may cost up to {_fmt(estimate)} (about {prompt_tokens:,} prompt tokens "
        f"and {allowance} of {model} at list price), more than the {_fmt(limit)} accepted "
        "for one request; nothing was sent.",
        hint=f"To send it pass max_cost_usd={_round_up(estimate)} (`--max-cost "
        f"{_round_up(estimate)}` in %%cencori, --yes in the CLI), or lower max_tokens; "
        "the threshold is the confirm_above_usd setting.",
        estimate_usd=estimate,
        limit_usd=limit,
        model=model,
    )


def _round_up(usd: Decimal) -> str:
    """A short amount at least ``usd`` for a hint (``0.1234`` → ``0.13``)."""
    return str(usd.quantize(Decimal("0.01"), rounding=ROUND_CEILING))


def _held(conn_or_led: Any, project: str) -> Decimal:
    if isinstance(conn_or_led, Ledger):
        rows = conn_or_led.query(
            "SELECT COALESCE(SUM(amount_pusd), 0) FROM budget_reservations WHERE project = ?",
            (project,),
        )
    else:
        rows = conn_or_led.execute(
            "SELECT COALESCE(SUM(amount_pusd), 0) FROM budget_reservations WHERE project = ?",
            (project,),
        ).fetchall()
    return from_pusd(int(rows[0][0])) or Decimal(0)


_HOST = socket.gethostname()


def _boot_ms() -> int | None:
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                if line.startswith("btime "):
                    return int(line.split()[1]) * 1000
    except OSError:
        pass
    return None


def _started_ms(pid: int) -> int | None:
    """When process ``pid`` started (Linux /proc), to tell a reused pid from the original."""
    boot = _boot_ms()
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 (starttime), counted after "(comm)"
        return None if boot is None else boot + ticks * 1000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, host: str, created_ms: int, now: int) -> bool:
    """Whether the process that made a reservation may still settle it."""
    if pid == JOB_RESERVATION_PID:  # a provider batch job's: no process owns it
        return now - created_ms <= JOB_RESERVATION_TTL_MS
    if now - created_ms > RESERVATION_TTL_MS:
        return False
    if host != _HOST:
        return True  # another machine sharing the home: wait for the TTL
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, someone else's
    started = _started_ms(pid)
    # a pid reused by a process started after the reservation (2 s for clock granularity)
    return started is None or started <= created_ms + 2000


def _expire_stale(conn: Any) -> None:
    now = now_ms()
    dead = [
        (rid,)
        for rid, pid, host, created in conn.execute(
            "SELECT id, pid, host, created_ms FROM budget_reservations"
        )
        if not _alive(int(pid), str(host), int(created), now)
    ]
    if dead:
        conn.executemany("DELETE FROM budget_reservations WHERE id = ?", dead)


def _unpriced_error(
    name: str, model: str | None, provider: str | None, cap: Decimal
) -> BudgetExceededError:
    return BudgetExceededError(
        f"Project {name!r} has a {_fmt(cap)} hard cap and no price is known for model "
        f"{model!r} at {provider!r}, so its cost cannot be held against the cap; the request "
        "was not sent.",
        hint=(
            "Use a priced model, or allow this one explicitly with cencori_nb.settings."
            f"update_settings(unpriced_models_allowed=[{model!r}]) (it is then sent "
            "and recorded with cost unknown)."
        ),
        project=name,
        spent_usd=None,
        cap_usd=cap,
        estimated_usd=None,
    )


@dataclass(frozen=True, slots=True)
class _Cap:
    """One hard cap a request must fit under: ``scope`` local (settings), project or
    member (team caps in the ledger), and the project or member name it applies to."""

    scope: str
    name: str
    cap: Decimal

    def spent(self, led: Ledger) -> Decimal:
        if self.scope == "member":
            return led.month_cost(None, member=self.name)
        return led.month_cost(self.name)

    def held_sql(self) -> str:
        column = "member" if self.scope == "member" else "project"
        return (
            "SELECT COALESCE(SUM(amount_pusd), 0) FROM budget_reservations "  # noqa: S608
            f"WHERE {column} = ?"
        )


def _try_reserve(
    led: Ledger,
    project: str,
    caps: list[_Cap],
    estimate: Decimal,
    note: str,
    output_tokens: int,
    assumed: bool,
) -> Reservation | None:
    """One attempt in one transaction (which excludes every other writer of the ledger,
    on every machine sharing it): a Reservation, None (wait: fits once others settle), or
    BudgetExceededError (cannot fit even then). Every cap must hold."""
    est = to_pusd(estimate) or 0
    wait = False
    with led.transaction() as conn:
        _expire_stale(conn)
        for cap in caps:
            spent = cap.spent(led)  # inside the transaction: no flush, same connection
            spent_p = to_pusd(spent) or 0
            cap_p = to_pusd(cap.cap) or 0
            if spent_p + est > cap_p or (spent_p >= cap_p and est == 0):
                raise _cap_error(cap.name, spent, cap.cap, estimate, note, scope=cap.scope)
            (held,) = conn.execute(cap.held_sql(), (cap.name,)).fetchone()
            if spent_p + int(held) + est > cap_p:
                wait = True
        if wait:
            return None
        rid = uuid.uuid4().hex
        conn.execute(
            "INSERT INTO budget_reservations (id, project, member, amount_pusd, pid, host, "
            "created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (rid, project, current_member(), est, os.getpid(), _HOST, now_ms()),
        )
    return Reservation(rid, project, estimate, output_tokens, assumed, ledger=led)


def _reserve_steps(
    project: str | None,
    estimate: Decimal | None,
    *,
    model: str | None,
    provider: str | None,
    output_tokens: int,
    output_assumed: bool,
    test_mode: bool,
) -> Generator[float, None, Reservation | None]:
    """The reserve loop as a generator: yields a delay to wait, returns the Reservation
    (or None: no hard cap, or nothing to hold). Shared by :func:`reserve` / :func:`areserve`."""
    s = load_settings()
    name = _project(project, s)
    ps = s.for_project(name)
    led = default_ledger()
    member = current_member()
    team = team_budgets(led)
    tproject, tmember = team.get(("project", name)), team.get(("member", member))
    if (
        ps.hard_cap_usd is None
        and ps.soft_budget_usd is None
        and tproject is None
        and tmember is None
    ):
        return None
    with _unless_away(led):
        if ps.soft_budget_usd is not None:
            _soft_warnings(led, name, led.month_cost(name), ps.soft_budget_usd)
        for scope, who, budget in (("project", name, tproject), ("member", member, tmember)):
            if budget is not None and budget.soft_usd is not None:
                spent = (
                    led.month_cost(None, member=who) if scope == "member" else led.month_cost(who)
                )
                _soft_warnings(led, who, spent, budget.soft_usd, scope=scope)
    caps = [_Cap("local", name, ps.hard_cap_usd)] if ps.hard_cap_usd is not None else []
    for scope, who, budget in (("project", name, tproject), ("member", member, tmember)):
        if budget is not None and budget.hard_cap_usd is not None:
            caps.append(_Cap(scope, who, budget.hard_cap_usd))
    if not caps or test_mode:
        return None  # no cap, or a free test-key request
    cap = min(c.cap for c in caps)
    if estimate is None:
        if model not in s.unpriced_models_allowed:
            raise _unpriced_error(name, model, provider, cap)
        estimate = Decimal(0)
    note = f" (no max_tokens: {output_tokens:,} output tokens assumed)" if output_assumed else ""
    deadline = time.monotonic() + RESERVATION_WAIT_S
    delay = 0.01
    while True:
        got = _try_reserve(led, name, caps, estimate, note, output_tokens, output_assumed)
        if got is not None:
            return got
        if time.monotonic() > deadline:
            tight = min(caps, key=lambda c: c.cap)
            spent = tight.spent(led)
            raise _cap_error(
                tight.name,
                spent,
                tight.cap,
                estimate,
                note,
                held=_held(led, name),
                scope=tight.scope,
            )
        yield delay
        delay = min(delay * 2, 0.25)


_T = TypeVar("_T")


def _run_sync(steps: Generator[float, None, _T]) -> _T:
    try:
        while True:
            time.sleep(next(steps))
    except StopIteration as stop:
        result: _T = stop.value  # the generator's return value (typeshed: Any)
        return result


def reserve(
    project: str | None,
    estimate: Decimal | None,
    *,
    model: str | None = None,
    provider: str | None = None,
    output_tokens: int = 0,
    output_assumed: bool = False,
    test_mode: bool = False,
) -> Reservation | None:
    """Hold ``estimate`` against the project's hard cap before sending (see the module
    docstring); warn on the soft budget. Returns the :class:`Reservation` to pass to
    :func:`settle` / :func:`record_failure`, or None when there is no cap.

    Raises :class:`BudgetExceededError` when the request cannot fit under the cap, or has
    no known price (``estimate`` None) and its model is not in
    ``settings.unpriced_models_allowed``. Blocks while it fits only once requests in flight
    settle.
    """
    return _run_sync(
        _reserve_steps(
            project,
            estimate,
            model=model,
            provider=provider,
            output_tokens=output_tokens,
            output_assumed=output_assumed,
            test_mode=test_mode,
        )
    )


async def areserve(
    project: str | None,
    estimate: Decimal | None,
    *,
    model: str | None = None,
    provider: str | None = None,
    output_tokens: int = 0,
    output_assumed: bool = False,
    test_mode: bool = False,
) -> Reservation | None:
    """:func:`reserve` for coroutines: waits with ``asyncio.sleep``, so requests in flight
    on the same loop can settle meanwhile."""
    steps = _reserve_steps(
        project,
        estimate,
        model=model,
        provider=provider,
        output_tokens=output_tokens,
        output_assumed=output_assumed,
        test_mode=test_mode,
    )
    try:
        while True:
            await asyncio.sleep(next(steps))
    except StopIteration as stop:
        got: Reservation | None = stop.value  # _reserve_steps' return value
        return got


def hold_for_job(reservation: Reservation, job_id: str) -> None:
    """Hand ``reservation`` to a provider batch job: it no longer expires with this process
    (it lasts :data:`JOB_RESERVATION_TTL_MS`), and :func:`release_job_amount` shrinks it as
    the job's rows are recorded."""
    with default_ledger().transaction() as conn:
        conn.execute(
            "UPDATE budget_reservations SET pid = ?, host = ? WHERE id = ?",
            (JOB_RESERVATION_PID, f"job:{job_id}", reservation.id),
        )


def release_job_amount(reservation_id: str, amount_usd: Decimal | None, conn: Any = None) -> None:
    """Lower a job's reservation by ``amount_usd`` (None: drop it). In ``conn``'s
    transaction when given, so rows recorded and the hold released commit together."""

    def run(c: Any) -> None:
        if amount_usd is None:
            c.execute("DELETE FROM budget_reservations WHERE id = ?", (reservation_id,))
            return
        c.execute(
            # CASE, not MAX(0, …): the same statement runs on PostgreSQL (GREATEST there)
            "UPDATE budget_reservations SET amount_pusd = CASE WHEN amount_pusd > ? "
            "THEN amount_pusd - ? ELSE 0 END WHERE id = ?",
            (to_pusd(amount_usd) or 0, to_pusd(amount_usd) or 0, reservation_id),
        )

    if conn is not None:
        run(conn)
        return
    with default_ledger().transaction() as c:
        run(c)


@dataclass(frozen=True, slots=True)
class TeamBudget:
    """A monthly soft budget and/or hard cap kept in the ledger, so that everyone writing
    to the same (PostgreSQL) ledger enforces it: for a ``project`` or for a ``member``
    (their spend across all projects). USD; None = not set."""

    scope: str
    name: str
    soft_usd: Decimal | None
    hard_cap_usd: Decimal | None


# Team budgets are read at most once a second per process (a change by a teammate takes
# effect within a second); the last read is also kept in a local 0600 file, so a process
# that starts while a shared ledger's server is away still knows whether a cap applies.
TEAM_BUDGETS_TTL_S = state.FRESH_S  # the one-second rule, on cencori_nb.state's clock
_team_lock = threading.Lock()
_team_cache: dict[str, tuple[float, dict[tuple[str, str], TeamBudget]]] = {}
state.on_reset("accounting.team_budgets", _team_cache.clear, env=())  # keyed by ledger


def _budgets_file(led: Ledger) -> Any:
    return led.path.with_name(led.path.stem + "-budgets.json")


def team_budgets(
    ledger: Ledger | None = None, *, fresh: bool = False
) -> dict[tuple[str, str], TeamBudget]:
    """Every team budget, keyed ``(scope, name)``; cached for :data:`TEAM_BUDGETS_TTL_S`."""
    led = ledger or default_ledger()
    now = state.now()
    with _team_lock:
        hit = _team_cache.get(led.label)
        if hit is not None and not fresh and now - hit[0] < TEAM_BUDGETS_TTL_S:
            return hit[1]
    import json  # here: only when the budgets are read (once a second), not per request

    from .home import atomic_write

    try:
        rows = led.query("SELECT scope, name, soft_budget_pusd, hard_cap_pusd FROM budgets")
    except LedgerError:
        if not led.is_shared:
            raise
        try:  # the server is away: the budgets as last read
            rows = json.loads(_budgets_file(led).read_text())
        except (OSError, ValueError):
            raise LedgerError(
                f"The team ledger {led.label} cannot be reached and this machine has not "
                "read its team budgets yet, so a hard cap may apply; no request was sent.",
                hint="Run again when the server is reachable.",
            ) from None
    else:
        if led.is_shared:
            with contextlib.suppress(OSError):
                atomic_write(_budgets_file(led), json.dumps([list(r) for r in rows]).encode())
    budgets = {
        (str(scope), str(name)): TeamBudget(
            str(scope),
            str(name),
            from_pusd(None if soft is None else int(soft)),
            from_pusd(None if hard is None else int(hard)),
        )
        for scope, name, soft, hard in rows
    }
    with _team_lock:
        _team_cache[led.label] = (now, budgets)
    return budgets


def team_budgeted(project: str, ledger: Ledger | None = None) -> bool:
    """Whether a team budget (kept in the ledger) applies to ``project`` or to the current
    member: then every request is estimated and reserved (:func:`reserve`). Cheap: the
    budgets are re-read at most once a second."""
    budgets = team_budgets(ledger)
    return bool(budgets) and (
        ("project", project) in budgets or ("member", current_member()) in budgets
    )


_UNSET: Any = object()


def set_team_budget(
    *,
    project: str | None = None,
    member: str | None = None,
    soft_usd: Decimal | None = _UNSET,
    hard_cap_usd: Decimal | None = _UNSET,
    ledger: Ledger | None = None,
) -> TeamBudget:
    """Set (or, with None, remove) the monthly soft budget and/or hard cap of a project or
    of a member, in the ledger: with a shared PostgreSQL ledger, every member's requests
    are held to it. Give exactly one of ``project`` and ``member``."""
    if (project is None) == (member is None):
        from .errors import ConfigurationError

        raise ConfigurationError("Name either a project or a member for a team budget.")
    scope, name = ("project", project) if project is not None else ("member", member)
    assert name is not None
    led = ledger or default_ledger()
    current = team_budgets(led, fresh=True).get((scope, name))
    soft = (current.soft_usd if current else None) if soft_usd is _UNSET else soft_usd
    hard = (current.hard_cap_usd if current else None) if hard_cap_usd is _UNSET else hard_cap_usd
    with led.transaction() as conn:
        if soft is None and hard is None:
            conn.execute("DELETE FROM budgets WHERE scope = ? AND name = ?", (scope, name))
        else:
            conn.execute(
                "INSERT INTO budgets (scope, name, soft_budget_pusd, hard_cap_pusd, updated_ms) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (scope, name) DO UPDATE SET "
                "soft_budget_pusd = excluded.soft_budget_pusd, "
                "hard_cap_pusd = excluded.hard_cap_pusd, updated_ms = excluded.updated_ms",
                (scope, name, to_pusd(soft), to_pusd(hard), now_ms()),
            )
    team_budgets(led, fresh=True)  # this process, and the local copy, see it at once
    return TeamBudget(scope, name, soft, hard)


def _month_key(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).strftime("%Y-%m")


def _soft_warnings(
    led: Ledger, project: str, spent: Decimal, budget: Decimal, *, scope: str = "local"
) -> None:
    """Warn once per threshold per month (remembered in the ledger). ``scope`` ``project``
    / ``member``: a team soft budget (``project`` is then the project or member name; its
    alerts are remembered under ``team-project:NAME`` / ``team-member:NAME``)."""
    if budget <= 0:
        return
    pct = spent * 100 / budget
    month = _month_key()
    key = project if scope == "local" else f"team-{scope}:{project}"
    for threshold in SOFT_THRESHOLDS:
        if pct < threshold:
            break
        with led.transaction() as conn:
            new = (
                conn.execute(
                    "INSERT INTO budget_alerts (project, month, threshold, ts_ms) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (key, month, threshold, now_ms()),
                ).rowcount
                == 1
            )
        if not new:
            continue
        if scope == "local":
            change = f"cencori_nb.settings.update_project({project!r}, soft_budget_usd=...)"
            who, whose = f"Project {project!r}", "its"
        else:
            change = f"`cencori-nb ledger budget --{scope} {project} --soft USD`"
            who = f"{'Project' if scope == 'project' else 'Member'} {project!r}"
            whose = f"the team's {scope}"
        warnings.warn(
            f"{who} has spent {_fmt(spent)} this month (all spend incl. "
            f"BYOK), {threshold}% of {whose} "
            f"{_fmt(budget)} soft budget. Change it with {change}.",
            BudgetWarning,
            stacklevel=4,
        )


def settle(
    completion: Completion,
    *,
    when: datetime | None = None,
    reservation: Reservation | None = None,
    batch: bool = False,
    ledger: Ledger | None = None,
    settings: Settings | None = None,
) -> Completion:
    """Price, charge, debit and record one successful request; returns the completion.

    Sets ``provider_cost_usd``, ``credits_charged_usd`` and ``cost_usd`` (:func:`cost_of`)
    on the completion. Idempotent per ``completion.client_id`` (given one when empty):
    settling the same request again writes no second row and debits nothing more. A
    completion marked ``interrupted`` (a stream stopped part way) is recorded with that
    status. With a ``reservation`` the row is written now, in the transaction that
    releases it. ``batch``: the request ran through the provider's Batch API, priced at
    :func:`cencori_nb.pricing.batch_price` (``provider_cost_usd`` is the batch price).
    ``ledger``: the ledger the request began in (its in-flight journal entry is there),
    recorded there even if the home or the ledger URL changed meanwhile; by default the
    reservation's ledger, else the current one. ``settings``: the ones the request was
    sent under (the client reads them once per request), else the current ones.
    """
    if completion.cached:
        if reservation is not None:
            reservation.release()
        return record_cached(completion)
    s = settings or load_settings()
    completion.project = _project(completion.project, s)
    if not completion.request_id:
        completion.request_id = "cnb-" + uuid.uuid4().hex
    model = completion.model or completion.model_requested
    quote = pricing.provider_cost(completion.provider, model, completion.usage, when=when)
    provider_cost = quote.cost_usd
    version = quote.version
    if batch:
        provider_cost = pricing.batch_price(completion.provider, provider_cost)
        version += pricing.BATCH_PRICE_VERSION_SUFFIX
    if provider_cost is None:
        provider_cost = completion.provider_cost_usd  # a price the caller already had
    if completion.gateway_cache in ("HIT", "SEMANTIC-HIT"):
        provider_cost = Decimal(0)  # Cencori answered from its cache: no provider was paid
    test = completion.test_mode
    charge = (
        Decimal(0)
        if test
        else charge_for(completion.route, provider_cost, completion.gateway_cost_usd, settings=s)
    )
    if charge is None:
        warnings.warn(
            f"No price is known for model {model!r} at {completion.provider!r} "
            f"({quote.version}); the request is recorded with cost unknown"
            + (
                " and no local wallet debit (the gateway's wallet is the truth)."
                if completion.route == "managed"
                else "."
            ),
            PricingWarning,
            stacklevel=2,
        )
    completion.provider_cost_usd = provider_cost
    completion.price_version = version
    completion.credits_charged_usd = charge if charge is not None else Decimal(0)
    completion.cost_usd = cost_of(completion.route, provider_cost, charge, test_mode=test)
    row = _row(
        completion,
        status="interrupted" if completion.interrupted else "ok",
        when=when,
        member=current_member(s),
    )
    led = _ledger_for(ledger, reservation)
    debit_usd: Decimal | None = None
    if charge:
        debit_usd = charge  # debited in the row's transaction, once per client_id
    _write(led, row, debit_usd, reservation)
    if charge:
        _predict_low_balance(led, charge)
    ps = s.for_project(completion.project)
    if ps.soft_budget_usd is not None:
        with _unless_away(led):
            _soft_warnings(
                led, completion.project, led.month_cost(completion.project), ps.soft_budget_usd
            )
    return completion


@contextlib.contextmanager
def _unless_away(led: Ledger) -> Generator[None, None, None]:
    """Skip a warning-only step (soft budgets, the low-balance forecast) that needs a
    shared ledger's server while it is away: the request is not refused for a warning.
    A hard cap still needs the server (its reservation fails with one line)."""
    try:
        yield
    except LedgerError:
        if not led.is_shared:
            raise


def _ledger_for(ledger: Ledger | None, reservation: Reservation | None) -> Ledger:
    """Where a request's row goes: the ledger it began in, else its reservation's, else
    the current one (the home or ledger URL may have changed while it was in flight)."""
    if ledger is not None:
        return ledger
    if reservation is not None and reservation.ledger is not None:
        return reservation.ledger
    return default_ledger()


def _write(
    led: Ledger, row: LedgerRow, debit_usd: Decimal | None, reservation: Reservation | None
) -> None:
    """Record ``row`` (with its wallet debit, once per client id). Without a reservation:
    queued for the background writer. With one: written now, and the reservation deleted
    in the same transaction, so the cap never sees the request twice or not at all. If that
    write fails the row is queued, and the reservation is released when the writer commits
    it (until then, or if the row has to wait in the spill file, it keeps counting against
    the cap until it expires: fail closed)."""
    if reservation is None or reservation.released:
        led.submit(row, debit_usd=debit_usd)
        return
    if reservation.ledger is not None and reservation.ledger is not led:
        # reserved in another ledger (the home changed between the reservation and the
        # send): the row goes where the request began, the reservation is dropped where held
        led.submit(row, debit_usd=debit_usd)
        reservation.release()
        return
    rid = reservation.id

    def release(conn: Any) -> None:
        conn.execute("DELETE FROM budget_reservations WHERE id = ?", (rid,))

    try:
        with led.transaction() as conn:
            if led.insert(conn, row) and debit_usd:
                wallet.debit_in(
                    conn, row.client_id, debit_usd, project=row.project, request_id=row.request_id
                )
            release(conn)
    except (sqlite3.Error, LedgerError):
        led.submit(row, release, debit_usd=debit_usd)
    reservation.released = True


# The balance this process expects once its queued debits are written: the low-balance
# warning is decided now, not when the background writer commits. Reloaded from the file
# when the ledger or the wallet (top-up, set-balance, refund) changes; other processes'
# debits show up at the next reload, which is soon enough for a warning.
_hint_lock = threading.Lock()
_hint: dict[str, Any] = {"ledger": None, "generation": -1, "pusd": None}


def _forget_hint() -> None:
    with _hint_lock:
        _hint.update(ledger=None, generation=-1, pusd=None)


state.on_reset("accounting.balance_hint", _forget_hint)


def _predict_low_balance(led: Ledger, charge: Decimal) -> None:
    with _hint_lock:
        if _hint["ledger"] is not led or _hint["generation"] != wallet.generation:
            known: int | None = None
            with _unless_away(led):
                known = wallet.known_balance_pusd(led)
            _hint.update(ledger=led, generation=wallet.generation, pusd=known)
        before = _hint["pusd"]
        if before is None:
            return  # the mirror is not tracking
        after = max(before - (to_pusd(charge) or 0), 0)
        _hint["pusd"] = after
    wallet.warn_low(from_pusd(before) or Decimal(0), from_pusd(after) or Decimal(0), stacklevel=4)


def _row(
    c: Completion,
    *,
    status: str,
    when: datetime | None = None,
    member: str = "",
    **overrides: Any,
) -> LedgerRow:
    ts = int(when.timestamp() * 1000) if when is not None else now_ms()
    if not c.client_id:
        c.client_id = new_client_id()
    row = LedgerRow(
        client_id=c.client_id,
        request_id=c.request_id,
        project=c.project,
        provider=c.provider,
        route=c.route,
        status=status,
        model_requested=c.model_requested,
        model=c.model,
        credential_source=c.credential_source,
        input_tokens=c.input_tokens,
        output_tokens=c.output_tokens,
        cache_read_tokens=c.cache_read_tokens,
        cache_write_tokens=c.cache_write_tokens,
        thinking_tokens=c.thinking_tokens,
        provider_cost_usd=c.provider_cost_usd,
        credits_charged_usd=c.credits_charged_usd,
        estimated=c.estimated,
        price_version=c.price_version,
        latency_ms=c.latency_ms,
        ttft_ms=c.ttft_ms,
        ts_ms=ts,
        cost_usd=c.cost_usd,
        test_mode=c.test_mode,
        gateway_cache=c.gateway_cache,
        model_original=c.model_original,
        image_tokens=c.image_tokens,
        cache_write_1h_tokens=c.cache_write_1h_tokens,
        member=member,  # empty: the current member (LedgerRow)
    )
    for key, value in overrides.items():
        setattr(row, key, value)
    return row


def record_recovered(completion: Completion, *, ts_ms: int) -> None:
    """Record a request found answered (in the response cache) but missing from the ledger:
    its row as it was settled, at ``ts_ms``, with its debit; a no-op when its
    ``client_id`` is already recorded."""
    if completion.cost_usd is None:
        completion.cost_usd = cost_of(
            completion.route,
            completion.provider_cost_usd,
            completion.credits_charged_usd,
            test_mode=completion.test_mode,
        )
    row = _row(completion, status="interrupted" if completion.interrupted else "ok")
    row.ts_ms = ts_ms
    charge = completion.credits_charged_usd
    default_ledger().submit(row, debit_usd=charge if charge and not completion.test_mode else None)


def record_cached(completion: Completion) -> Completion:
    """Record a cache hit: a ``cached`` row with zero cost; the wallet is not touched."""
    s = load_settings()
    completion.project = _project(completion.project, s)
    completion.cached = True
    completion.provider_cost_usd = Decimal(0)
    completion.credits_charged_usd = Decimal(0)
    completion.cost_usd = cost_of(completion.route, Decimal(0), Decimal(0), cached=True)
    if not completion.request_id:
        completion.request_id = "cnb-" + uuid.uuid4().hex
    completion.client_id = new_client_id()  # a hit is a request of its own
    default_ledger().submit(_row(completion, status="cached"))
    return completion


def record_failure(
    *,
    request_id: str | None,
    project: str | None,
    provider: str,
    model: str | None,
    route: str,
    credential_source: str = "",
    error: BaseException | str | None = None,
    latency_ms: float | None = None,
    test_mode: bool = False,
    reservation: Reservation | None = None,
    client_id: str | None = None,
    ledger: Ledger | None = None,
) -> None:
    """Record a failed request: one ``error`` row with the error's code; nothing is debited
    (its ``cost_usd`` is 0). Releases ``reservation`` with the row. ``ledger``: the one the
    request began in (as for :func:`settle`).

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
    row = LedgerRow(
        client_id=client_id or new_client_id(),
        request_id=request_id or "cnb-" + uuid.uuid4().hex,
        project=_project(project, s),
        provider=provider,
        route=route,
        status="error",
        model_requested=model,
        model=None,
        credential_source=credential_source,
        error_code=code,
        latency_ms=latency_ms,
        cost_usd=Decimal(0),
        test_mode=test_mode,
    )
    _write(_ledger_for(ledger, reservation), row, None, reservation)
