"""The runner: :func:`map` / :func:`amap` and one run of a batch on one event loop.

Estimate (when ``max_cost_usd`` is set), then send every pending row through the adaptive
limiter with the batch's own bounded retries, record each finished row (the checkpoint,
after its ledger row), and return the DataFrame; see the package docstring for the rules.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import random
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .. import transport
from ..errors import (
    BudgetError,
    CencoriError,
    ConfigurationError,
    CostLimitError,
    CreditsError,
    RateLimitError,
    RefusalError,
    SchemaMismatchError,
)
from ..options import ChatOptions
from .checkpoint import Checkpoint, batch_id, from_json, row_key
from .cost import estimate_rows, usd
from .params import AChat, BatchOptions, Prompt, empty_reason, normalise
from .progress import NullProgress, Progress, make_progress
from .ratelimit import AdaptiveLimiter

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["COLUMNS", "BatchInterrupted", "amap", "map"]

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
INTERRUPTED = "interrupted"


class BatchInterrupted(KeyboardInterrupt):
    """The batch was interrupted; ``.partial`` holds the rows finished so far.

    A ``KeyboardInterrupt`` on purpose (not a ``CencoriError``): the person asked the cell or
    script to stop, and code that handles ``KeyboardInterrupt`` must keep working.
    """

    def __init__(self, message: str, partial: pd.DataFrame) -> None:
        super().__init__(message)
        self.partial = partial


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
    # the value settle stored (accounting.cost_of); never recomputed here, only added to
    # what an earlier attempt of the same answer cost (a schema= retry: its own ledger row)
    cost: Decimal | None = Decimal(0) if cached else getattr(c, "cost_usd", None)
    earlier = getattr(c, "earlier_cost_usd", None)
    if earlier and cost is not None:
        cost += earlier
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


def _failed_row(exc: BaseException) -> dict[str, Any]:
    """The row of a failed request. An answer that arrived and was paid for but was refused
    or did not match the schema keeps its text, tokens and cost (to inspect, and so the
    cost column adds up to the ledger)."""
    completion = getattr(exc, "completion", None) if isinstance(exc, CencoriError) else None
    if completion is None or not isinstance(exc, SchemaMismatchError | RefusalError):
        return _error_row(_error_message(exc))
    row = _row_from_completion(completion)
    row["error"] = _error_message(exc)
    return row


def _error_message(exc: BaseException) -> str:
    """``Type (status): message`` for the ``error`` column, scrubbed of anything key-shaped.

    Our errors never carry a secret, but a foreign exception (a bug, a library) might quote
    a header; the column ends up in notebooks and CSV files, so it is scrubbed regardless.
    """
    prefix = type(exc).__name__
    status = getattr(exc, "status_code", None) if isinstance(exc, CencoriError) else None
    if status:
        prefix += f" ({status})"
    from ..transport.logs import scrub

    return scrub(f"{prefix}: {exc}")


class _Batch:
    """One run of a batch on one event loop. Build it anywhere; ``run()`` on the loop."""

    def __init__(
        self,
        prompts: list[Prompt],
        options: BatchOptions,
        *,
        keys: list[str | None],
        checkpoint: Checkpoint | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if options.concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, not {options.concurrency}.")
        self.prompts = prompts
        self.options = options
        self.params = options.chat
        self.concurrency = options.concurrency
        self.max_cost_usd = options.max_cost_usd
        self.retries = max(0, options.retries)
        self._achat = options.achat
        self.limiter = options.limiter
        self.progress: Progress = NullProgress()
        self.checkpoint = checkpoint
        self.sleep = options.sleep
        self.rng = rng or random.Random()  # noqa: S311  (jitter, not security)
        self.rows: list[dict[str, Any] | None] = [None] * len(prompts)
        self.parsed: list[Any] = [None] * len(prompts)  # schema=: each row's parsed answer
        self.outcome = _Outcome()
        self._workers: list[asyncio.Task[None]] = []
        self.keys = keys  # row_key of each sendable prompt, None for an empty one
        self._resume_rows = checkpoint.load() if (checkpoint is not None and options.resume) else {}
        self._leaders: dict[str, asyncio.Event] = {}
        self._call_kwargs = options.chat.call_kwargs()

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
        from ..ledger import default_ledger

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
            from ..client import achat

            self._achat = achat
        if self.limiter is None:
            self.limiter = AdaptiveLimiter(self.concurrency)
        if self.sleep is None:
            self.sleep = self.limiter.sleep
        # Rows that need no request: empty prompts and rows finished by an earlier run
        # (paid for then: they do not count as spent in this run).
        for pos, key in enumerate(self.keys):
            if key is None:
                self._finish(pos, _error_row(empty_reason(self.prompts[pos]) or "not sent"))
                continue
            rec = self._resume_rows.get(pos)
            if rec is not None and rec.get("key") == key:
                # Paid for by an earlier run: free now, like a cache hit.
                row = {k: from_json(rec.get(k)) for k in COLUMNS if k != "prompt"}
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
            from ..ledger import default_ledger

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
                completion = await self._achat(prompt, **self._call_kwargs)
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
                self.parsed[pos] = getattr(completion, "parsed", None)
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
                self._finish(pos, _failed_row(error))
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
    def _with_fields(self, df: pd.DataFrame, rows: list[dict[str, Any]], index: Any) -> Any:
        """``prompt``, one typed column per schema field, then map's own columns.

        A row finished by an earlier run (checkpoint) has its text, not the parsed value:
        it is parsed again here. A failed row has no values (all missing).
        """
        import pandas as pd

        schema = self.params.schema
        assert schema is not None
        values: list[Any] = []
        for row, parsed in zip(rows, self.parsed, strict=True):
            if parsed is None and row["error"] is None and isinstance(row.get("text"), str):
                try:
                    parsed = schema.parse(row["text"])
                except SchemaMismatchError:
                    parsed = None
            values.append(parsed if row["error"] is None else None)
        fields = schema.frame(values, index=df.index)
        fields.columns = [_field_column(str(c)) for c in fields.columns]
        return pd.concat([df[["prompt"]], fields, df.drop(columns=["prompt"])], axis=1)

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
        if self.params.schema is not None:
            df = self._with_fields(df, rows, index)
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


def _field_column(name: str) -> str:
    """A schema field's column: its dotted name, or ``answer.<name>`` when that is one of
    map's own columns (a field called ``text`` or ``model``)."""
    return f"answer.{name}" if name in COLUMNS else name


def _prepare(prompts: Any, options: BatchOptions) -> tuple[_Batch, Any]:
    values, index = normalise(prompts)
    params = options.chat
    limit = options.max_cost_usd
    fp = params.fingerprint()
    keys = [None if empty_reason(p) else row_key(p, fp) for p in values]
    # Deterministic requests with the cache on are resumed by the response cache (each hit
    # recorded in the ledger as cached); the checkpoint covers what the cache cannot.
    use_checkpoint = bool(values) and not (params.cache and params.deterministic)
    checkpoint = Checkpoint(batch_id(keys, fp)) if use_checkpoint else None
    if checkpoint is not None:
        checkpoint.prune()
    batch = _Batch(values, options, keys=keys, checkpoint=checkpoint)
    if limit is not None:
        todo = [values[i] for i in batch.pending()]
        est = estimate_rows(todo, params, skipped=len(values) - len(todo))
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
                f"Estimated cost {usd(est.cost_usd)} for {len(todo)} rows is above "
                f"max_cost_usd=${limit}. Nothing was sent. ({est.detail()})",
                hint="Raise max_cost_usd, lower max_tokens, or send fewer rows (e.g. df.head(20)).",
                estimate_usd=est.cost_usd,
                rows=len(todo),
                max_cost_usd=limit,
            )
    batch.progress = make_progress(len(values), options.progress)
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
    schema: Any = None,
) -> pd.DataFrame:
    """Send many prompts concurrently on the running event loop; see :func:`map`.

    Cancelling the awaiting task cancels the rows in flight and re-raises
    ``CancelledError``; finished rows stay recorded (ledger, checkpoint).
    """
    options = BatchOptions(
        ChatOptions.from_arguments(
            model=model,
            provider=provider,
            route=route,
            system=system,
            temperature=temperature,
            max_tokens=max_tokens,
            project=project,
            cache=bool(cache),
            retries=0,
            max_cost_usd=max_cost_usd,
            schema=schema,
        ),
        concurrency=concurrency,
        retries=transport.DEFAULT_RETRIES if retries is None else retries,
        progress=progress,
        resume=resume,
        achat=achat,
        limiter=limiter,
        sleep=sleep,
    )
    batch, index = _prepare(prompts, options)
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
    schema: Any = None,
    via: str = "live",
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

    - ``schema``: a pydantic model, dataclass, ``TypedDict`` or JSON Schema dict (see
      :func:`cencori_nb.chat`): each row's answer is validated (an answer that does not
      match is retried once, a second paid request), and the result has one typed column
      per field between ``prompt`` and map's own columns (dtypes and the flattening of
      nested fields as in :mod:`cencori_nb.schemas`; a field named like one of map's
      columns becomes ``answer.<name>``). A row that still does not match, or that the
      model refused, is that row's ``error`` (its fields missing, its ``text`` and
      ``cost_usd`` kept); the batch goes on.

    - ``via="batch"``: send the rows as a provider batch job instead (half price, results
      within 24 hours; :func:`cencori_nb.submit`) and wait for it: the same table. The job
      is stored in the home first, so if the wait is interrupted,
      ``cencori_nb.jobs()`` / ``load_job`` pick it up. Live-only options (``concurrency``,
      ``cache``, ``retries``, ``resume``, ``achat``, ``limiter``, ``sleep``) do not apply.

    Returns columns :data:`COLUMNS` in input order. Raises :class:`BatchInterrupted` (with
    ``.partial``) when interrupted; see the module docstring.
    """
    if via == "batch":
        from ..jobs import submit

        job = submit(
            prompts,
            model=model,
            provider=provider,
            route="byok" if route == "auto" else route,
            system=system,
            temperature=temperature,
            max_tokens=max_tokens,
            project=project,
            max_cost_usd=max_cost_usd,
            schema=schema,
        )
        job.wait(progress=progress)
        return job.result(wait=False)
    if via != "live":
        raise ConfigurationError(f"via must be 'live' or 'batch', not {via!r}.")
    if threading.current_thread() is _loop_thread:
        raise ConfigurationError(
            "map() was called from inside a running batch.",
            hint="Use `await cencori_nb.amap(...)` in async code.",
        )
    options = BatchOptions(
        ChatOptions.from_arguments(
            model=model,
            provider=provider,
            route=route,
            system=system,
            temperature=temperature,
            max_tokens=max_tokens,
            project=project,
            cache=bool(cache),
            retries=0,
            max_cost_usd=max_cost_usd,
            schema=schema,
        ),
        concurrency=concurrency,
        retries=transport.DEFAULT_RETRIES if retries is None else retries,
        progress=progress,
        resume=resume,
        achat=achat,
        limiter=limiter,
        sleep=sleep,
    )
    batch, index = _prepare(prompts, options)
    loop = _batch_loop()
    future = asyncio.run_coroutine_threadsafe(batch.run(), loop)
    try:
        _warm_up()

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


def _warm_up() -> None:
    """Import what the first map() of a process needs besides sending: pandas (the answer
    is a DataFrame, about 0.3 s of CPU) and the price version (read from the price table on
    disk, or from genai-prices in the first process after an install: see
    :mod:`cencori_nb.pricing`). map() calls it on the caller's thread once the batch is
    submitted, so the imports overlap the batch's start instead of following it or stalling
    the batch loop between answers. (Starting pandas only once the first answers are in
    was measured too: no better, the client is CPU-bound at high concurrency.)"""
    import pandas  # noqa: F401

    from .. import pricing

    pricing.price_version()


# One private event loop on a daemon thread, shared by every map() call in the process:
# it works whether or not the caller's thread already runs a loop (Jupyter does), and the
# transport's pooled AsyncClient for this loop stays warm between calls. At exit the loop is
# stopped and shut down like asyncio.run's (tasks cancelled, the client closed on it), so a
# script that called map() ends without "Event loop is closed" or "Unclosed client
# session" on stderr.
_loop: asyncio.AbstractEventLoop | None = None
_loop_thread: threading.Thread | None = None
_loop_lock = threading.Lock()


def _batch_loop() -> asyncio.AbstractEventLoop:
    global _loop, _loop_thread
    with _loop_lock:
        if _loop is None or _loop_thread is None or not _loop_thread.is_alive():
            loop = asyncio.new_event_loop()
            # this loop is shut down at exit (below), closing its client: aiohttp may serve it
            transport.pool.use_aiohttp_on(loop)
            thread = threading.Thread(
                target=_run_loop, args=(loop,), name="cencori-batch", daemon=True
            )
            thread.start()
            if _loop is None:
                atexit.register(_stop_batch_loop)
            _loop, _loop_thread = loop, thread
        return _loop


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            # closes the transport's pooled client for this loop (its closer is an async
            # generator the loop tracks)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def _stop_batch_loop(timeout: float = 10.0) -> None:
    """Stop the batch loop and wait for it to close its connections (at exit)."""
    with _loop_lock:
        loop, thread = _loop, _loop_thread
    if loop is None or thread is None or not thread.is_alive():
        return
    with contextlib.suppress(RuntimeError):  # already closed
        loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout)
