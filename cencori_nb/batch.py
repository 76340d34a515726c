"""Prompts at scale: ``map`` / ``amap`` over many prompts, and the ``.cencori`` pandas accessor.

>>> import cencori_nb, pandas as pd
>>> out = cencori_nb.map(["Say hi", "Say bye"], model="gpt-4o-mini", max_cost_usd=0.10)
>>> df.cencori.prompt("Summarise: {text}", model="gpt-4o-mini")   # one row per df row
>>> df["review"].cencori.prompt("Sentiment of: {}")                 # one row per value

What a batch does, in order:

1. **Estimate** (only when ``max_cost_usd`` is set, or via :func:`estimate`): route resolved
   once; input tokens estimated from the text (:mod:`cencori_nb.tokens`), output tokens =
   ``max_tokens`` or :data:`DEFAULT_OUTPUT_TOKENS`; list price from :mod:`cencori_nb.pricing`;
   managed route × (1 + markup). Above ``max_cost_usd`` → :class:`CostLimitError` before
   anything is sent.
2. **Send** with async concurrency in one event loop, through an
   :class:`~cencori_nb.ratelimit.AdaptiveLimiter` (429 → everyone waits the Retry-After and
   concurrency halves; successes raise it back). ``achat`` is called with ``retries=0``: the
   batch does its own bounded retries so the limiter sees every 429.
3. **Record**: every request is settled in the ledger by the client (success, failure, cache
   hit). Re-running the same batch sends only the rows that are missing (interrupted,
   failed, or not sent): deterministic requests (temperature 0 or unset, cache on) are
   answered by the response cache, each hit recorded as cached; for the others the batch
   keeps a *checkpoint* in the home (``batches/<id>.jsonl``, 0600, one line per finished
   row, keyed by a hash of the prompt and the parameters, written once the row's ledger
   row is committed: like the cache, it never gets ahead of the ledger). The checkpoint is
   deleted when a run ends with every sendable row done; ``resume=False`` ignores it.
4. **Return** a DataFrame in input order (aligned with the input index for a Series or an
   accessor) with columns ``prompt, text, error, input_tokens, output_tokens, cost_usd,
   route, cached, model, provider_cost_usd, credits_charged_usd, request_id, test_mode``.

``cost_usd`` is what the row cost *you*, as the request was settled (the one rule,
:func:`cencori_nb.accounting.cost_of`): the credits charged for a managed request, the
provider's list price plus any BYOK fee for a BYOK request, 0 for a cache hit or a Cencori
test key (``test_mode``). ``provider_cost_usd`` and ``credits_charged_usd`` give both
sides as the ledger has them. Rows restored from a checkpoint are shown like cache hits
(``cached`` True, cost 0: the earlier run paid; ``request_id`` names that request);
``df.attrs["cencori"]`` counts them, with the requests sent and the 429s met.

A failing row gets its message in ``error`` and the batch goes on. Rate limits, timeouts
and 5xx are retried by the one retry policy, :func:`cencori_nb.transport.next_wait`
(``retries`` times for timeouts/5xx; in its pacing form up to
:data:`~cencori_nb.transport.PACED_RATE_LIMIT_RETRIES` times for 429s, each wait shared by
every worker through the limiter); credit, spend-cap and budget errors stop
the batch from starting more rows (``"not sent: …"``), as does actual spend reaching
``max_cost_usd``.

The same prompt twice in a deterministic batch is sent once; the copies wait for it and are
answered by the cache.

**Interrupts.** Pressing *Interrupt* in Jupyter (or Ctrl-C) stops the batch: rows in
flight are cancelled, finished rows are already in the ledger (and in the response cache or
the checkpoint), and
:func:`map` raises :class:`BatchInterrupted` (a ``KeyboardInterrupt``, so the cell or
script does stop) whose ``.partial`` is the DataFrame so far, unfinished rows with error
``"interrupted"``. Running the same call again sends only the missing rows. :func:`amap`
follows asyncio's rules instead: cancelling it cancels the rows in flight and re-raises
``CancelledError`` (the cache and the checkpoint make the re-run cheap all the same).

**Jupyter.** :func:`map` is synchronous and works inside a running kernel loop: the batch
runs on one private event-loop thread (created once per process, so its pooled connections
are reused from call to call), and the calling thread waits. No ``nest_asyncio``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import math
import os
import random
import string
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import transport
from .errors import (
    BudgetError,
    CencoriError,
    ConfigurationError,
    CostLimitError,
    CreditsError,
    RateLimitError,
)
from .progress import NullProgress, Progress, make_progress
from .ratelimit import AdaptiveLimiter

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COLUMNS",
    "DEFAULT_OUTPUT_TOKENS",
    "BatchEstimate",
    "BatchInterrupted",
    "amap",
    "estimate",
    "fill_template",
    "map",
]

COLUMNS = (
    "prompt",
    "text",
    "error",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "route",
    "cached",
    "model",
    "provider_cost_usd",
    "credits_charged_usd",
    "request_id",
    "test_mode",
)
DEFAULT_OUTPUT_TOKENS = 256  # the output guess per row when max_tokens is not given
CHECKPOINT_MAX_AGE_S = 7 * 24 * 3600
INTERRUPTED = "interrupted"

AChat = Callable[..., Awaitable[Any]]
Prompt = Any  # a string, or a list of {"role", "content"} messages


class BatchInterrupted(KeyboardInterrupt):
    """The batch was interrupted; ``.partial`` holds the rows finished so far.

    A ``KeyboardInterrupt`` on purpose (not a ``CencoriError``): the person asked the cell or
    script to stop, and code that handles ``KeyboardInterrupt`` must keep working.
    """

    def __init__(self, message: str, partial: pd.DataFrame) -> None:
        super().__init__(message)
        self.partial = partial


# --------------------------------------------------------------------------------------
# parameters, keys, checkpoint
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Params:
    model: str | None
    provider: str | None
    route: str
    system: str | None
    temperature: float | None
    max_tokens: int | None
    project: str | None
    cache: bool

    def call_kwargs(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "provider": self.provider,
            "route": self.route,
            "system": self.system,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "project": self.project,
            "cache": self.cache,
        }

    @property
    def deterministic(self) -> bool:
        return self.temperature is None or self.temperature == 0

    def fingerprint(self) -> str:
        data = {k: v for k, v in self.call_kwargs().items() if k != "cache"}
        return json.dumps(data, sort_keys=True, default=str)


def _row_key(prompt: Prompt, params_fp: str) -> str:
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, default=str)
    return hashlib.sha256(f"{params_fp}\x00{text}".encode()).hexdigest()[:32]


def _batch_id(keys: Sequence[str | None], params_fp: str) -> str:
    h = hashlib.sha256(params_fp.encode())
    for k in keys:
        h.update(b"\x00" + (k or "-").encode())
    return h.hexdigest()[:24]


class Checkpoint:
    """Finished rows of one batch, as JSON lines in ``<home>/batches/<batch_id>.jsonl`` (0600).

    Appended as rows finish (one write + flush each; a torn last line after a crash is
    ignored on load). Only successful rows are written: failed rows are what a re-run
    should try again.
    """

    def __init__(self, batch_id: str, directory: Path | None = None) -> None:
        from .home import ensure_home

        self.directory = directory if directory is not None else ensure_home() / "batches"
        self.path = self.directory / f"{batch_id}.jsonl"
        self._fh: Any = None

    def load(self) -> dict[int, dict[str, Any]]:
        """``{position: row}`` of the rows finished by earlier runs of this batch."""
        rows: dict[int, dict[str, Any]] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return rows
        for line in text.splitlines():
            try:
                record = json.loads(line)
                rows[int(record["pos"])] = record
            except (ValueError, KeyError, TypeError):
                continue  # a torn or foreign line: that row is simply sent again
        return rows

    def append(self, pos: int, key: str, row: dict[str, Any]) -> None:
        if self._fh is None:
            from .home import open_private, private_umask

            with private_umask():
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fh = os.fdopen(open_private(self.path), "a", encoding="utf-8")
        record = {"pos": pos, "key": key, **{k: _jsonable(v) for k, v in row.items()}}
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def delete(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def prune(self, max_age_s: float = CHECKPOINT_MAX_AGE_S) -> None:
        """Remove other batches' checkpoints older than ``max_age_s`` (abandoned re-runs)."""
        cutoff = time.time() - max_age_s
        with contextlib.suppress(OSError):
            for p in self.directory.glob("*.jsonl"):
                with contextlib.suppress(OSError):
                    if p != self.path and p.stat().st_mtime < cutoff:
                        p.unlink()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return {"$dec": str(value)}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and "$dec" in value:
        return Decimal(value["$dec"])
    return value


# --------------------------------------------------------------------------------------
# estimate
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchEstimate:
    """What a batch is expected to cost before it is sent (an estimate, not a quote)."""

    rows: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal | None
    model: str | None
    provider: str | None
    route: str | None
    output_assumed: bool  # True when max_tokens was not given (a guess per row)
    skipped_rows: int = 0  # already finished (checkpoint) or not sendable

    def detail(self) -> str:
        """Where the figure comes from: model, route, tokens, the output assumption."""
        out = f"~{self.output_tokens:,} output tokens " + (
            f"({DEFAULT_OUTPUT_TOKENS} a row assumed; pass max_tokens to bound it)"
            if self.output_assumed
            else "(max_tokens a row)"
        )
        return f"{self.model} via {self.route}: ~{self.input_tokens:,} input tokens, {out}"

    def __str__(self) -> str:
        cost = (
            "cost unknown (no price for this model)"
            if self.cost_usd is None
            else f"~{_usd(self.cost_usd)}"
        )
        what = "in credits" if self.route == "managed" else "provider cost (your own key)"
        skipped = (
            f" ({self.skipped_rows} more not sendable or already done)" if self.skipped_rows else ""
        )
        return f"{self.rows} rows to send{skipped}: {cost} {what}; {self.detail()}"

    def _repr_markdown_(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"BatchEstimate({self})"


def _usd(amount: Decimal) -> str:
    """$0.0123, or six decimals for sub-cent figures (so they do not print as $0.0000)."""
    return f"${amount:.4f}" if abs(amount) >= Decimal("0.01") else f"${amount:.6f}"


def _resolve(params: _Params) -> tuple[str, str, str]:
    """(provider, model, route) the batch will use, resolved once by the router."""
    from . import router

    decision = router.explain_route(
        params.model, provider=params.provider, route=params.route, project=params.project
    )
    return decision.provider, decision.model, decision.route


def _estimate(prompts: Sequence[Prompt], params: _Params, skipped: int = 0) -> BatchEstimate:
    from . import pricing
    from .settings import load_settings
    from .tokens import estimate_messages_tokens

    provider, model, route = _resolve(params)
    input_tokens = 0
    for p in prompts:
        contents = [params.system] if params.system else []
        if isinstance(p, str):
            contents.append(p)
        else:
            contents.extend(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in p)
        input_tokens += estimate_messages_tokens(contents)
    per_row_out = params.max_tokens if params.max_tokens is not None else DEFAULT_OUTPUT_TOKENS
    output_tokens = per_row_out * len(prompts)
    cost = (
        pricing.estimate_cost(provider, model, input_tokens, output_tokens)
        if prompts
        else Decimal(0)
    )
    if cost is not None:  # list price → what it would cost you, by the one cost rule
        from .accounting import charge_for, cost_of

        cost = cost_of(route, cost, charge_for(route, cost, settings=load_settings()))
    return BatchEstimate(
        rows=len(prompts),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost,
        model=model,
        provider=provider,
        route=route,
        output_assumed=params.max_tokens is None,
        skipped_rows=skipped,
    )


def estimate(
    prompts: Iterable[Prompt] | pd.Series,
    *,
    model: str | None = None,
    provider: str | None = None,
    route: str = "auto",
    system: str | None = None,
    max_tokens: int | None = None,
    project: str | None = None,
    **map_options: Any,
) -> BatchEstimate:
    """Estimate what sending ``prompts`` would cost, without sending anything.

    Tokens are estimated from the text; output is ``max_tokens`` a row (or
    :data:`DEFAULT_OUTPUT_TOKENS`, a guess); prices are list prices (managed: with the
    markup). Rows a cache could answer are counted too, so this is an upper-side figure.
    Other :func:`map` options (``concurrency``, ``temperature``…) are accepted and ignored,
    so the same arguments work for both.
    """
    unknown = set(map_options) - _MAP_OPTIONS
    if unknown:
        raise TypeError(f"estimate() got unexpected keyword arguments: {sorted(unknown)}")
    values, _ = _normalise(prompts)
    params = _Params(model, provider, route, system, None, max_tokens, project, True)
    sendable = [p for p in values if _empty_reason(p) is None]
    return _estimate(sendable, params, skipped=len(values) - len(sendable))


# --------------------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------------------
_MAP_OPTIONS = frozenset(
    {
        "concurrency",
        "max_cost_usd",
        "temperature",
        "cache",
        "progress",
        "retries",
        "resume",
        "achat",
        "limiter",
        "sleep",
    }
)


def _empty_reason(prompt: Prompt) -> str | None:
    if prompt is None:
        return "not sent: empty prompt"
    if isinstance(prompt, float) and math.isnan(prompt):
        return "not sent: empty prompt"
    if isinstance(prompt, str):
        return None if prompt.strip() else "not sent: empty prompt"
    if isinstance(prompt, list | tuple) and prompt:
        return None
    try:
        import pandas as pd

        if pd.isna(prompt):
            return "not sent: empty prompt"
    except (TypeError, ValueError, ImportError):
        pass
    return f"not sent: a prompt must be a string, not {type(prompt).__name__}"


@dataclass
class _Outcome:
    sent: int = 0
    resumed: int = 0
    interrupted: bool = False
    stop_reason: str | None = None
    rows_done: int = 0
    errors: int = 0
    spent_usd: Decimal = field(default_factory=lambda: Decimal(0))


def _row_from_completion(c: Any) -> dict[str, Any]:
    cached = bool(getattr(c, "cached", False))
    route = getattr(c, "route", None)
    provider_cost = getattr(c, "provider_cost_usd", None)
    credits = getattr(c, "credits_charged_usd", None)
    # the value settle stored (accounting.cost_of); never recomputed here
    cost: Decimal | None = Decimal(0) if cached else getattr(c, "cost_usd", None)
    return {
        "text": getattr(c, "text", str(c)),
        "error": None,
        "input_tokens": getattr(c, "input_tokens", None),
        "output_tokens": getattr(c, "output_tokens", None),
        "cost_usd": cost,
        "route": route,
        "cached": cached,
        "model": getattr(c, "model", None),
        "provider_cost_usd": provider_cost,
        "credits_charged_usd": credits,
        "request_id": getattr(c, "request_id", None),
        "test_mode": bool(getattr(c, "test_mode", False)),
    }


def _error_row(message: str, route: str | None = None) -> dict[str, Any]:
    return {
        "text": None,
        "error": message,
        "input_tokens": None,
        "output_tokens": None,
        "cost_usd": Decimal(0),
        "route": route,
        "cached": False,
        "model": None,
        "provider_cost_usd": None,
        "credits_charged_usd": None,
        "request_id": None,
        "test_mode": False,
    }


def _error_message(exc: BaseException) -> str:
    """``Type (status): message`` for the ``error`` column, scrubbed of anything key-shaped.

    Our errors never carry a secret, but a foreign exception (a bug, a library) might quote
    a header; the column ends up in notebooks and CSV files, so it is scrubbed regardless.
    """
    prefix = type(exc).__name__
    status = getattr(exc, "status_code", None) if isinstance(exc, CencoriError) else None
    if status:
        prefix += f" ({status})"
    from .transport import scrub

    return scrub(f"{prefix}: {exc}")


class _Batch:
    """One run of a batch on one event loop. Build it anywhere; ``run()`` on the loop."""

    def __init__(
        self,
        prompts: list[Prompt],
        params: _Params,
        *,
        concurrency: int,
        max_cost_usd: Decimal | None,
        retries: int,
        achat: AChat | None,
        limiter: AdaptiveLimiter | None,
        progress: Progress,
        checkpoint: Checkpoint | None,
        resume: bool,
        sleep: Callable[[float], Awaitable[object]] | None,
        rng: random.Random | None,
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, not {concurrency}.")
        self.prompts = prompts
        self.params = params
        self.concurrency = concurrency
        self.max_cost_usd = max_cost_usd
        self.retries = max(0, retries)
        self._achat = achat
        self.limiter = limiter
        self.progress = progress
        self.checkpoint = checkpoint
        self.sleep = sleep
        self.rng = rng or random.Random()  # noqa: S311  (jitter, not security)
        self.rows: list[dict[str, Any] | None] = [None] * len(prompts)
        self.outcome = _Outcome()
        self._workers: list[asyncio.Task[None]] = []
        self._fp = params.fingerprint()
        self.keys = [None if _empty_reason(p) else _row_key(p, self._fp) for p in prompts]
        self._resume_rows = checkpoint.load() if (checkpoint is not None and resume) else {}
        self._leaders: dict[str, asyncio.Event] = {}
        self._call_kwargs = params.call_kwargs()
        # A batch under max_cost_usd was estimated as a whole before sending: each row may
        # cost up to that limit. Without one, each row meets the per-request confirmation.
        self._accepted = {} if max_cost_usd is None else {"max_cost_usd": max_cost_usd}

    # -- bookkeeping --------------------------------------------------------------------
    def pending(self) -> list[int]:
        """Positions that will be sent (not empty, not finished by an earlier run)."""
        out = []
        for pos, key in enumerate(self.keys):
            rec = self._resume_rows.get(pos)
            if key is None or (rec is not None and rec.get("key") == key):
                continue
            out.append(pos)
        return out

    def _finish(self, pos: int, row: dict[str, Any], *, save: bool = False) -> None:
        self.rows[pos] = row
        o = self.outcome
        o.rows_done += 1
        if row["error"] is not None:
            o.errors += 1
        cost = row.get("cost_usd")
        if isinstance(cost, Decimal):
            o.spent_usd += cost
        if save and self.checkpoint is not None and row["error"] is None:
            key = self.keys[pos]
            if key is not None:
                self._checkpoint_after_commit(pos, key, row)
        if (
            self.max_cost_usd is not None
            and o.stop_reason is None
            and o.spent_usd >= self.max_cost_usd
        ):
            o.stop_reason = "max_cost_usd reached"
        self.progress.update(o.rows_done, o.errors, o.spent_usd)

    def _checkpoint_after_commit(self, pos: int, key: str, row: dict[str, Any]) -> None:
        """Like the response cache, the checkpoint never gets ahead of the ledger: a row
        is marked done (free on a re-run) only once its ledger row is committed. If the
        ledger cannot take it, the re-run sends the row again (both are recorded)."""
        from .ledger import default_ledger

        checkpoint = self.checkpoint
        assert checkpoint is not None
        default_ledger().after_commit(lambda: checkpoint.append(pos, key, row))

    def interrupt(self) -> None:
        """Stop: cancel the rows in flight (finished ones stay). Call on the batch's loop."""
        self.outcome.interrupted = True
        for w in self._workers:
            w.cancel()

    # -- running -----------------------------------------------------------------------
    async def run(self) -> _Outcome:
        o = self.outcome
        if self._achat is None:
            from .client import achat

            self._achat = achat
        if self.limiter is None:
            self.limiter = AdaptiveLimiter(self.concurrency)
        if self.sleep is None:
            self.sleep = self.limiter.sleep
        # Rows that need no request: empty prompts and rows finished by an earlier run
        # (paid for then: they do not count as spent in this run).
        for pos, key in enumerate(self.keys):
            if key is None:
                self._finish(pos, _error_row(_empty_reason(self.prompts[pos]) or "not sent"))
                continue
            rec = self._resume_rows.get(pos)
            if rec is not None and rec.get("key") == key:
                # Paid for by an earlier run: free now, like a cache hit.
                row = {k: _from_json(rec.get(k)) for k in COLUMNS if k != "prompt"}
                row.update(
                    cached=True,
                    cost_usd=Decimal(0),
                    provider_cost_usd=Decimal(0),
                    credits_charged_usd=Decimal(0),
                )
                self._finish(pos, row)
                o.resumed += 1
        queue = iter(self.pending())
        n_workers = min(self.concurrency, max(1, len(self.prompts)))
        self._workers = [asyncio.create_task(self._worker(queue)) for _ in range(n_workers)]
        try:
            await asyncio.wait(self._workers)
        except asyncio.CancelledError:
            # amap() itself was cancelled: cancel the rows in flight, let them unwind, re-raise.
            self.interrupt()
            await asyncio.wait(self._workers)
            raise
        finally:
            if self.outcome.interrupted:
                for pos, slot in enumerate(self.rows):
                    if slot is None:
                        self.rows[pos] = _error_row(INTERRUPTED)
                        o.errors += 1
            self._close()
        return o

    def _close(self) -> None:
        o = self.outcome
        note = ""
        if o.interrupted:
            note = "interrupted: run the same call again to send only the missing rows"
        elif o.stop_reason:
            note = f"stopped: {o.stop_reason}"
        with contextlib.suppress(Exception):
            self.progress.close(o.rows_done, o.errors, o.spent_usd, note=note)
        if self.checkpoint is not None:
            from .ledger import default_ledger

            # rows settled so far are committed, so their checkpoint lines are written
            with contextlib.suppress(Exception):
                default_ledger().flush()
            # Keep it while a sendable row is unfinished (failed, interrupted, not sent):
            # that is what a re-run completes. Empty prompts never will.
            unfinished = any(
                row is None or row["error"] is not None
                for row, key in zip(self.rows, self.keys, strict=True)
                if key is not None
            )
            if not unfinished:
                self.checkpoint.delete()  # everything done: nothing to resume
            else:
                self.checkpoint.close()

    async def _worker(self, queue: Iterator[int]) -> None:
        for pos in queue:
            if self.outcome.stop_reason:
                self._finish(pos, _error_row(f"not sent: {self.outcome.stop_reason}"))
                continue
            key = self.keys[pos]
            led: asyncio.Event | None = None
            if self.params.cache and self.params.deterministic and key is not None:
                # The same prompt twice in one deterministic batch: send it once; the copies
                # wait for it, then get the cache's answer (recorded as a cache hit). The
                # first copy is always dequeued first, so a waiting copy never blocks it.
                first = self._leaders.get(key)
                if first is None:
                    led = self._leaders[key] = asyncio.Event()
                else:
                    await first.wait()
            try:
                await self._run_row(pos)
            finally:
                if led is not None:
                    led.set()

    async def _run_row(self, pos: int) -> None:
        assert self.limiter is not None and self._achat is not None and self.sleep is not None
        prompt = self.prompts[pos]
        attempt = 0
        while True:
            epoch = await self.limiter.acquire()
            self.outcome.sent += 1
            error: Exception | None = None
            try:
                completion = await self._achat(
                    prompt, **self._call_kwargs, retries=0, **self._accepted
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  (one bad row must not sink the batch)
                error = exc
            finally:
                self.limiter.release()
            if error is None:
                self.limiter.on_success()
                headers = getattr(completion, "ratelimit_headers", None)
                if headers:
                    self.limiter.observe_headers(headers)
                self._finish(pos, _row_from_completion(completion), save=True)
                return
            if isinstance(error, CreditsError | BudgetError):
                # Every later row would fail the same way (and a budget says stop spending).
                if self.outcome.stop_reason is None:
                    self.outcome.stop_reason = _error_message(error)
                self._finish(pos, _error_row(_error_message(error)))
                return
            # The one retry policy (transport.next_wait), in its pacing form: a 429 is
            # pacing for a batch, so it is retried longer and its wait is shared by all rows.
            wait = transport.next_wait(
                error, None, attempt, retries=self.retries, pacing=True, random=self.rng.random
            )
            if wait is None:
                self._finish(pos, _error_row(_error_message(error)))
                return
            attempt += 1
            if isinstance(error, RateLimitError):
                pause = self.limiter.on_rate_limited(epoch, wait)
                if pause >= 1:  # say why nothing moves (a 60 s window is long to stare at)
                    o = self.outcome
                    self.progress.update(
                        o.rows_done,
                        o.errors,
                        o.spent_usd,
                        force=True,
                        note=f"rate limited: waiting {pause:.0f} s, "
                        f"concurrency {self.limiter.limit}",
                    )
                continue  # acquire() waits out the shared pause
            await self.sleep(wait)

    # -- result ------------------------------------------------------------------------
    def frame(self, index: Any = None) -> pd.DataFrame:
        import pandas as pd

        rows = [r if r is not None else _error_row(INTERRUPTED) for r in self.rows]
        data: dict[str, Any] = {"prompt": self.prompts}
        for col in COLUMNS[1:]:
            data[col] = [r.get(col) for r in rows]
        df = pd.DataFrame(data, index=index)
        for col in ("input_tokens", "output_tokens"):
            df[col] = df[col].astype("Int64")
        df["cached"] = df["cached"].astype(bool)
        df["test_mode"] = df["test_mode"].fillna(False).astype(bool)
        o = self.outcome
        df.attrs["cencori"] = {
            "rows": len(rows),
            "sent_requests": o.sent,
            "resumed_rows": o.resumed,
            "errors": sum(1 for r in rows if r["error"] is not None),
            "spent_usd_this_run": str(o.spent_usd),
            "interrupted": o.interrupted,
            "stopped": o.stop_reason,
            "rate_limited": self.limiter.rate_limited if self.limiter else 0,
        }
        return df


# --------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------
def _normalise(prompts: Any) -> tuple[list[Prompt], Any]:
    """(list of prompts, index or None) from a list, any iterable, or a pandas Series."""
    if isinstance(prompts, str):
        raise ConfigurationError(
            "map() takes many prompts (a list or a pandas Series), not one string.",
            hint="Wrap it in a list, or use cencori_nb.chat() for a single prompt.",
        )
    index = getattr(prompts, "index", None)
    if index is not None and hasattr(prompts, "tolist") and not isinstance(prompts, list):
        return list(prompts.tolist()), index
    return list(prompts), None


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _prepare(
    prompts: Any,
    *,
    model: str | None,
    provider: str | None,
    route: str,
    concurrency: int,
    max_cost_usd: Any,
    system: str | None,
    temperature: float | None,
    max_tokens: int | None,
    cache: bool,
    project: str | None,
    retries: int | None,
    resume: bool,
    achat: AChat | None,
    limiter: AdaptiveLimiter | None,
    sleep: Callable[[float], Awaitable[object]] | None,
    progress: bool | Progress,
) -> tuple[_Batch, Any]:
    values, index = _normalise(prompts)
    params = _Params(model, provider, route, system, temperature, max_tokens, project, bool(cache))
    limit = _decimal(max_cost_usd)
    fp = params.fingerprint()
    keys = [None if _empty_reason(p) else _row_key(p, fp) for p in values]
    # Deterministic requests with the cache on are resumed by the response cache (each hit
    # recorded in the ledger as cached); the checkpoint covers what the cache cannot.
    use_checkpoint = bool(values) and not (params.cache and params.deterministic)
    checkpoint = Checkpoint(_batch_id(keys, fp)) if use_checkpoint else None
    if checkpoint is not None:
        checkpoint.prune()
    batch = _Batch(
        values,
        params,
        concurrency=concurrency,
        max_cost_usd=limit,
        retries=transport.DEFAULT_RETRIES if retries is None else retries,
        achat=achat,
        limiter=limiter,
        progress=NullProgress(),
        checkpoint=checkpoint,
        resume=resume,
        sleep=sleep,
        rng=None,
    )
    if limit is not None:
        todo = [values[i] for i in batch.pending()]
        est = _estimate(todo, params, skipped=len(values) - len(todo))
        if est.cost_usd is None:
            raise CostLimitError(
                f"Cannot check max_cost_usd=${limit}: no price is known for {est.model!r} at "
                f"{est.provider!r}, so {len(todo)} rows cannot be estimated.",
                hint="Use a priced model, or pass max_cost_usd=None to send without a limit.",
                estimate_usd=None,
                rows=len(todo),
                max_cost_usd=limit,
            )
        if est.cost_usd > limit:
            raise CostLimitError(
                f"Estimated cost {_usd(est.cost_usd)} for {len(todo)} rows is above "
                f"max_cost_usd=${limit}. Nothing was sent. ({est.detail()})",
                hint="Raise max_cost_usd, lower max_tokens, or send fewer rows (e.g. df.head(20)).",
                estimate_usd=est.cost_usd,
                rows=len(todo),
                max_cost_usd=limit,
            )
    batch.progress = make_progress(len(values), progress)
    return batch, index


async def amap(
    prompts: Iterable[Prompt] | pd.Series,
    *,
    model: str | None = None,
    provider: str | None = None,
    route: str = "auto",
    concurrency: int = 8,
    max_cost_usd: Decimal | float | str | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    cache: bool = True,
    project: str | None = None,
    progress: bool | Progress = True,
    retries: int | None = None,
    resume: bool = True,
    achat: AChat | None = None,
    limiter: AdaptiveLimiter | None = None,
    sleep: Callable[[float], Awaitable[object]] | None = None,
) -> pd.DataFrame:
    """Send many prompts concurrently on the running event loop; see :func:`map`.

    Cancelling the awaiting task cancels the rows in flight and re-raises
    ``CancelledError``; finished rows stay recorded (ledger, checkpoint).
    """
    batch, index = _prepare(
        prompts,
        model=model,
        provider=provider,
        route=route,
        concurrency=concurrency,
        max_cost_usd=max_cost_usd,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        cache=cache,
        project=project,
        retries=retries,
        resume=resume,
        achat=achat,
        limiter=limiter,
        sleep=sleep,
        progress=progress,
    )
    await batch.run()
    return batch.frame(index)


def map(
    prompts: Iterable[Prompt] | pd.Series,
    *,
    model: str | None = None,  # noqa: A001
    provider: str | None = None,
    route: str = "auto",
    concurrency: int = 8,
    max_cost_usd: Decimal | float | str | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    cache: bool = True,
    project: str | None = None,
    progress: bool | Progress = True,
    retries: int | None = None,
    resume: bool = True,
    achat: AChat | None = None,
    limiter: AdaptiveLimiter | None = None,
    sleep: Callable[[float], Awaitable[object]] | None = None,
) -> pd.DataFrame:
    """Send many prompts, ``concurrency`` at a time; return one DataFrame row per prompt.

    ``prompts``: a list (or any iterable) of strings or message lists, or a pandas Series
    (the result keeps its index). Options as for :func:`cencori_nb.chat`, plus:

    - ``concurrency``: requests in flight at most (lowered while the provider rate-limits);
    - ``max_cost_usd``: refuse to start if the estimate is above it
      (:class:`CostLimitError`), and stop starting rows once actual spend reaches it;
    - ``retries``: retries of a row after a timeout or 5xx (429s are paced, up to
      :data:`~cencori_nb.transport.PACED_RATE_LIMIT_RETRIES`);
    - ``progress``: a widget in Jupyter, a line on stderr elsewhere; False for none;
    - ``resume``: skip rows an interrupted or partly failed earlier run of the same batch
      finished (the default); False sends every row;
    - ``achat``: the coroutine function that sends one prompt (default
      :func:`cencori_nb.client.achat`); ``limiter`` / ``sleep``: inject pacing and time.

    Returns columns :data:`COLUMNS` in input order. Raises :class:`BatchInterrupted` (with
    ``.partial``) when interrupted; see the module docstring.
    """
    if threading.current_thread() is _loop_thread:
        raise ConfigurationError(
            "map() was called from inside a running batch.",
            hint="Use `await cencori_nb.amap(...)` in async code.",
        )
    batch, index = _prepare(
        prompts,
        model=model,
        provider=provider,
        route=route,
        concurrency=concurrency,
        max_cost_usd=max_cost_usd,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        cache=cache,
        project=project,
        retries=retries,
        resume=resume,
        achat=achat,
        limiter=limiter,
        sleep=sleep,
        progress=progress,
    )
    loop = _batch_loop()
    future = asyncio.run_coroutine_threadsafe(batch.run(), loop)
    try:
        # Wait in short slices: a lock wait is not interruptible everywhere (Windows, or an
        # interrupt raised by _thread.interrupt_main), and Ctrl-C must get through at once.
        while True:
            try:
                future.result(timeout=0.2)
                break
            except concurrent.futures.TimeoutError:
                continue
    except KeyboardInterrupt:
        loop.call_soon_threadsafe(batch.interrupt)
        with contextlib.suppress(
            concurrent.futures.TimeoutError,
            asyncio.CancelledError,
            concurrent.futures.CancelledError,
        ):
            future.result(timeout=30)  # a second Ctrl-C here leaves at once
        partial = batch.frame(index)
        done = sum(1 for r in batch.rows if r is not None and r["error"] != INTERRUPTED)
        raise BatchInterrupted(
            f"Batch interrupted: {done} of {len(batch.rows)} rows finished and recorded "
            f"(see .partial); run the same call again to send only the "
            f"{len(batch.rows) - done} missing rows.",
            partial,
        ) from None
    return batch.frame(index)


# One private event loop on a daemon thread, shared by every map() call in the process:
# it works whether or not the caller's thread already runs a loop (Jupyter does), and the
# transport's pooled AsyncClient for this loop stays warm between calls.
_loop: asyncio.AbstractEventLoop | None = None
_loop_thread: threading.Thread | None = None
_loop_lock = threading.Lock()


def _batch_loop() -> asyncio.AbstractEventLoop:
    global _loop, _loop_thread
    with _loop_lock:
        if _loop is None or _loop_thread is None or not _loop_thread.is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="cencori-batch", daemon=True)
            thread.start()
            _loop, _loop_thread = loop, thread
        return _loop


# --------------------------------------------------------------------------------------
# templates and the pandas accessor
# --------------------------------------------------------------------------------------
class _ColumnFormatter(string.Formatter):
    """``str.format`` that finds ``{0}`` in a column named 0 (format_map cannot)."""

    def get_value(self, key: int | str, args: Sequence[Any], kwargs: Any) -> Any:
        return kwargs[str(key)]


def _fields(template: str) -> list[str]:
    names: list[str] = []
    try:
        for _, name, spec, _conv in string.Formatter().parse(template):
            if name is not None:
                names.append(name)
            if spec and "{" in spec:
                names.extend(_fields(spec))
    except ValueError as exc:
        raise ConfigurationError(
            f"The template {template!r} is not a valid format string ({exc}).",
            hint="Write {{ and }} for literal braces.",
        ) from None
    return names


def _base_name(field_name: str) -> str:
    for i, ch in enumerate(field_name):
        if ch in ".[":
            return field_name[:i]
    return field_name


def fill_template(template: str, frame: pd.DataFrame) -> tuple[list[Prompt], list[str | None]]:
    """Fill ``template`` from each row's columns: (prompts, per-row reasons not to send).

    ``{column}`` is replaced by the row's value (``{column:.2f}``, ``{column!r}`` work as in
    ``str.format``); ``{{`` and ``}}`` are literal braces. A name that is not a column
    raises :class:`ConfigurationError` listing the columns; a missing value (NaN/None) in a
    used column makes that row ``"not sent: …"`` instead of sending ``"nan"``.
    """
    by_name = {str(c): c for c in frame.columns}
    columns_list = ", ".join(by_name) or "(none)"
    used: list[str] = []
    for name in _fields(template):
        base = _base_name(name)
        if base == "":
            raise ConfigurationError(
                f"The template {template!r} has a positional {{}}, but a DataFrame row is "
                f"filled by column name. Columns: {columns_list}.",
                hint="Write {column_name}, or {{ and }} for literal braces.",
            )
        if base not in by_name:
            raise ConfigurationError(
                f"The template {template!r} names {{{base}}}, which is not a column. "
                f"Columns: {columns_list}.",
                hint="Use one of those names, or write {{ and }} for literal braces.",
            )
        if base not in used:
            used.append(base)
    if not used:
        raise ConfigurationError(
            f"The template {template!r} names no column, so every row would send the same "
            f"prompt. Columns: {columns_list}.",
            hint="Add a field such as {text}.",
        )
    import pandas as pd

    fast = all(not b.isdigit() for b in used)
    fmt = _ColumnFormatter()
    series = [frame[by_name[b]].tolist() for b in used]
    prompts: list[Prompt] = []
    reasons: list[str | None] = []
    for values in zip(*series, strict=True):
        row = dict(zip(used, values, strict=True))
        missing = [b for b, v in row.items() if _is_missing(v, pd)]
        if missing:
            prompts.append(None)
            reasons.append(f"not sent: empty value in column {missing[0]!r}")
            continue
        try:
            prompts.append(template.format_map(row) if fast else fmt.vformat(template, (), row))
            reasons.append(None)
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
            prompts.append(None)
            reasons.append(f"not sent: cannot fill the template ({type(exc).__name__}: {exc})")
    return prompts, reasons


def _is_missing(value: Any, pd: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value)) if not isinstance(value, list | tuple | dict) else False
    except (TypeError, ValueError):
        return False


def fill_series_template(
    template: str, values: Iterable[Any]
) -> tuple[list[Prompt], list[str | None]]:
    """Fill ``{}`` (or ``{0}``) in ``template`` with each value; see :func:`fill_template`."""
    names = _fields(template)
    if not names:
        raise ConfigurationError(
            f"The template {template!r} has no {{}} for the value, so every row would send "
            "the same prompt.",
            hint='Write e.g. "Summarise: {}".',
        )
    bad = [n for n in names if _base_name(n) not in ("", "0")]
    if bad:
        raise ConfigurationError(
            f"The template {template!r} names {{{_base_name(bad[0])}}}, but a Series has one "
            "value a row: write {} for it.",
            hint="For several columns use df.cencori.prompt('… {col_a} … {col_b}').",
        )
    import pandas as pd

    prompts: list[Prompt] = []
    reasons: list[str | None] = []
    for v in values:
        if _is_missing(v, pd):
            prompts.append(None)
            reasons.append("not sent: empty value")
            continue
        try:
            prompts.append(template.format(v))
            reasons.append(None)
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
            prompts.append(None)
            reasons.append(f"not sent: cannot fill the template ({type(exc).__name__}: {exc})")
    return prompts, reasons


def _with_reasons(df: pd.DataFrame, reasons: list[str | None]) -> pd.DataFrame:
    """Put the template's "not sent: …" reasons in ``error`` (the runner saw None there)."""
    if any(reasons):
        import pandas as pd

        mask = [r is not None for r in reasons]
        df.loc[mask, "error"] = pd.Series(
            [r for r in reasons if r is not None], index=df.index[mask]
        )
    return df


class _Accessor:
    _obj: Any

    def _fill(self, template: str) -> tuple[list[Prompt], list[str | None]]:
        raise NotImplementedError

    def prompts(self, template: str) -> pd.Series:
        """The prompts the template makes, one per row (to look before sending)."""
        import pandas as pd

        prompts, _ = self._fill(template)
        return pd.Series(prompts, index=self._obj.index, name="prompt", dtype=object)

    def prompt(self, template: str, **kwargs: Any) -> pd.DataFrame:
        """Send the filled template for every row; see :func:`cencori_nb.map` for options.

        Returns one result row per input row, aligned with the input index.
        """
        import pandas as pd

        prompts, reasons = self._fill(template)
        df = map(pd.Series(prompts, index=self._obj.index, dtype=object), **kwargs)
        return _with_reasons(df, reasons)

    async def aprompt(self, template: str, **kwargs: Any) -> pd.DataFrame:
        """The async twin of :meth:`prompt` (on the running loop)."""
        import pandas as pd

        prompts, reasons = self._fill(template)
        df = await amap(pd.Series(prompts, index=self._obj.index, dtype=object), **kwargs)
        return _with_reasons(df, reasons)

    def estimate(self, template: str, **kwargs: Any) -> BatchEstimate:
        """What :meth:`prompt` would cost, without sending (see :func:`estimate`)."""
        prompts, _ = self._fill(template)
        return estimate([p for p in prompts if p is not None], **kwargs)


class CencoriFrameAccessor(_Accessor):
    """``df.cencori``: ``prompt("Summarise: {text}", model=…)`` fills from each row."""

    def __init__(self, obj: pd.DataFrame) -> None:
        self._obj = obj

    def _fill(self, template: str) -> tuple[list[Prompt], list[str | None]]:
        return fill_template(template, self._obj)


class CencoriSeriesAccessor(_Accessor):
    """``series.cencori``: ``prompt("Summarise: {}", model=…)`` fills from each value."""

    def __init__(self, obj: pd.Series) -> None:
        self._obj = obj

    def _fill(self, template: str = "{}") -> tuple[list[Prompt], list[str | None]]:
        return fill_series_template(template, self._obj.tolist())

    def prompt(self, template: str = "{}", **kwargs: Any) -> pd.DataFrame:
        return super().prompt(template, **kwargs)


def _register_accessors() -> None:
    import warnings

    import pandas as pd

    with warnings.catch_warnings():
        # Re-importing this module (autoreload) re-registers our own accessor: not news.
        warnings.filterwarnings("ignore", message=".*cencori.*overriding", category=UserWarning)
        pd.api.extensions.register_dataframe_accessor("cencori")(CencoriFrameAccessor)
        pd.api.extensions.register_series_accessor("cencori")(CencoriSeriesAccessor)


_register_accessors()
