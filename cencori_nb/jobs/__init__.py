"""Half price at scale: the providers' own Batch APIs for big tables, resumable anywhere.

>>> job = cencori_nb.submit(df, "Summarise: {review}", model="gpt-4o-mini", max_tokens=100)
>>> job.id                      # stored in the home at once: another kernel can pick it up
>>> job.status()                # rows done / failed / expired, cost recorded so far
>>> out = job.result()          # waits, fetches, records; the DataFrame map() returns
>>> job.resubmit()              # only the rows that expired or failed
>>> cencori_nb.jobs()           # every job in this home
>>> cencori_nb.load_job("job_…").result()   # after a kernel restart

OpenAI (Files + Batches), Anthropic (Message Batches) and Gemini (batch mode) run a job
within 24 hours at half the list price; results come home whenever you ask, whichever
process asks. Large inputs are split to each provider's per-job limits (requests and
bytes) and reassembled in input order. A provider without a Batch API is refused
(:class:`BatchNotSupportedError`) with the reason; so is the managed route: Cencori has no
batch door (its public source, cencori/cencori, serves ``app/api/ai/*`` chat, completions,
embeddings, images, audio, moderation, rag and ``app/api/v1/*`` chat/completions, responses,
models, metrics… but no ``batches`` or ``files`` route), so jobs run BYOK with your own
provider key.

Money: :func:`estimate_job` (and the ``estimate`` on every job) shows the batch price next
to the live BYOK price and the managed (Cencori credits) price. Each row is recorded in the
ledger once, at the batch price, when its result is fetched: fetching twice, or from two
kernels, records it once. Under a hard cap the job's estimated maximum is reserved at
submit, and that reservation outlives the kernel (see :mod:`cencori_nb.jobs.job`).

The key: every call to the provider resolves the credential now, so a key rotated between
submit and fetch is the one used.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
import types
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..errors import BatchNotSupportedError, ConfigurationError, CostLimitError
from .job import BatchJob, JobStatus, jobs_dir

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["BatchJob", "JobEstimate", "JobStatus", "estimate_job", "jobs", "load_job", "submit"]

DEFAULT_OUTPUT_TOKENS = 256  # the output guess per row when max_tokens is not given (as map)


@dataclass(frozen=True)
class JobEstimate:
    """What a job is expected to cost, three ways (an estimate, not a quote): through the
    provider's Batch API, sent live with your key, and through Cencori (managed)."""

    rows: int
    input_tokens: int
    output_tokens: int
    batch_usd: Decimal | None
    live_usd: Decimal | None
    managed_usd: Decimal | None
    provider: str
    model: str
    output_assumed: bool

    @property
    def saving_usd(self) -> Decimal | None:
        """Live BYOK minus batch."""
        if self.batch_usd is None or self.live_usd is None:
            return None
        return self.live_usd - self.batch_usd

    def __str__(self) -> str:
        def usd(v: Decimal | None) -> str:
            if v is None:
                return "unknown"
            return f"${v:.4f}" if abs(v) >= Decimal("0.01") else f"${v:.6f}"

        out = (
            f"{DEFAULT_OUTPUT_TOKENS} output tokens a row assumed"
            if self.output_assumed
            else "max_tokens a row"
        )
        return (
            f"{self.rows} rows to {self.provider}/{self.model}: batch ~{usd(self.batch_usd)} · "
            f"live ~{usd(self.live_usd)} (your key) · managed ~{usd(self.managed_usd)} "
            f"(Cencori credits); ~{self.input_tokens:,} input tokens, "
            f"~{self.output_tokens:,} output ({out})"
        )

    def _repr_markdown_(self) -> str:
        return str(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "batch_usd": None if self.batch_usd is None else str(self.batch_usd),
            "live_usd": None if self.live_usd is None else str(self.live_usd),
            "managed_usd": None if self.managed_usd is None else str(self.managed_usd),
            "provider": self.provider,
            "model": self.model,
            "output_assumed": self.output_assumed,
        }


def _prompts(
    prompts: Any, template: str | None
) -> tuple[list[Any], list[str | None], list[Any] | None, Any]:
    """(prompts, reason not to send per row, index values or None, index name)."""
    from ..batch.params import empty_reason, normalise
    from ..batch.templates import fill_series_template, fill_template

    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None  # type: ignore[assignment]
    index = None
    if pd is not None and isinstance(prompts, pd.DataFrame):
        if template is None:
            raise ConfigurationError(
                "A DataFrame needs a template naming its columns, e.g. "
                "submit(df, 'Summarise: {text}', model=…).",
            )
        values, reasons = fill_template(template, prompts)
        index = prompts.index
    elif template is not None:
        values_in, index = normalise(prompts)
        values, reasons = fill_series_template(template, values_in)
    else:
        values, index = normalise(prompts)
        reasons = [empty_reason(p) for p in values]
    reasons = [
        r if r is not None else empty_reason(p) for p, r in zip(values, reasons, strict=True)
    ]
    index_values = None
    index_name = None
    if index is not None:
        listed = list(index)
        try:
            json.dumps(listed)
            index_values, index_name = listed, getattr(index, "name", None)
        except (TypeError, ValueError):
            index_values = None  # an index JSON cannot hold: results come back positional
    return values, reasons, index_values, index_name


def _estimate(
    sendable: list[Any], system: str | None, max_tokens: int | None, provider: str, model: str
) -> tuple[JobEstimate, Decimal | None, int, bool]:
    """(the estimate shown, the maximum to reserve, output tokens reserved, assumed?)."""
    from .. import pricing
    from ..accounting import charge_for, cost_of
    from ..settings import load_settings
    from ..tokens import estimate_messages_tokens

    s = load_settings()
    tokens_in = 0
    for p in sendable:
        contents = [system] if system else []
        if isinstance(p, str):
            contents.append(p)
        else:
            contents.extend(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in p)
        tokens_in += estimate_messages_tokens(contents)
    n = len(sendable)
    out_shown = (max_tokens if max_tokens is not None else DEFAULT_OUTPUT_TOKENS) * n
    out_max = (max_tokens if max_tokens is not None else s.reserve_output_tokens) * n

    def three(out: int) -> tuple[Decimal | None, Decimal | None, Decimal | None]:
        listed = pricing.estimate_cost(provider, model, tokens_in, out) if n else Decimal(0)
        live = (
            None
            if listed is None
            else cost_of("byok", listed, charge_for("byok", listed, settings=s))
        )
        batch_list = pricing.batch_price(provider, listed)
        batch = (
            None
            if batch_list is None
            else cost_of("byok", batch_list, charge_for("byok", batch_list, settings=s))
        )
        managed = None if listed is None else charge_for("managed", listed, settings=s)
        return batch, live, managed

    batch, live, managed = three(out_shown)
    est = JobEstimate(
        rows=n,
        input_tokens=tokens_in,
        output_tokens=out_shown,
        batch_usd=batch,
        live_usd=live,
        managed_usd=managed,
        provider=provider,
        model=model,
        output_assumed=max_tokens is None,
    )
    return est, three(out_max)[0], out_max, max_tokens is None


def _decide(model: str | None, provider: str | None, route: str, project: str | None) -> Any:
    from .. import router
    from .wire import api_for

    if route == "managed":
        raise BatchNotSupportedError(
            "Batch jobs run on your own provider key (BYOK): Cencori's gateway documents no "
            "batch endpoint, so there is no managed batch route.",
            hint="Store a key with cencori_nb.keys.set(provider, key), or use "
            "cencori_nb.map(..., route='managed') to send the rows live through Cencori.",
            route=route,
        )
    if route not in ("byok", "auto"):
        raise ConfigurationError(
            f"route must be 'byok' (or 'auto') for a batch job, not {route!r}."
        )
    decision = router.explain_route(model, provider=provider, route="byok", project=project)
    if api_for(decision.provider) is None:
        raise BatchNotSupportedError(
            f"{decision.provider} has no Batch API (asynchronous jobs at a discount are "
            "offered by openai, anthropic and google).",
            hint="Send the rows live with cencori_nb.map(...), or pick a model from one of "
            "those three.",
            provider=decision.provider,
        )
    return decision


def estimate_job(
    prompts: Iterable[Any] | pd.Series | pd.DataFrame,
    template: str | None = None,
    *,
    model: str | None = None,
    provider: str | None = None,
    system: str | None = None,
    max_tokens: int | None = None,
    project: str | None = None,
) -> JobEstimate:
    """What :func:`submit` with these arguments would cost: batch vs live vs managed."""
    decision = _decide(model, provider, "byok", project)
    values, reasons, _, _ = _prompts(prompts, template)
    sendable = [p for p, r in zip(values, reasons, strict=True) if r is None]
    return _estimate(sendable, system, max_tokens, decision.provider, decision.model)[0]


def submit(
    prompts: Iterable[Any] | pd.Series | pd.DataFrame,
    template: str | None = None,
    *,
    model: str | None = None,
    provider: str | None = None,
    route: str = "byok",
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    project: str | None = None,
    max_cost_usd: Decimal | float | str | None = None,
    rows_per_job: int | None = None,
    schema: Any = None,
) -> BatchJob:
    """Send ``prompts`` as a batch job at the provider's Batch API; return the
    :class:`BatchJob` at once (stored in the home before anything is sent).

    ``prompts``: a list of strings (or message lists), a Series (with ``template`` holding
    ``{}``), or a DataFrame with ``template`` naming its columns (``"Summarise: {text}"``).
    ``max_cost_usd``: refuse before sending when the batch estimate is above it.
    ``rows_per_job``: at most this many rows in one provider job (default: the provider's
    own limit); bytes are split to the provider's limit too.
    ``schema``: a pydantic model, dataclass, ``TypedDict`` or JSON Schema dict (as for
    :func:`cencori_nb.chat`): each row asks for JSON of that shape, and ``result()`` adds its
    fields as typed columns; an answer that does not match has the reason in ``error``
    (it was paid for, so it is recorded; ``resubmit()`` does not send it again).
    """
    from ..accounting import hold_for_job, reserve
    from .job import _new_part, _split, body_maker
    from .wire import api_for

    if rows_per_job is not None and (isinstance(rows_per_job, bool) or rows_per_job < 1):
        raise ConfigurationError(f"rows_per_job must be a positive number, not {rows_per_job!r}.")
    decision = _decide(model, provider, route, project)
    api = api_for(decision.provider)
    assert api is not None
    values, reasons, index_values, index_name = _prompts(prompts, template)
    sendable_pos = [i for i, r in enumerate(reasons) if r is None]
    if not sendable_pos:
        raise ConfigurationError(
            "Nothing to send: every row is empty or could not be filled in.",
            hint="Look at the prompts first with df.cencori.prompts(template).",
        )
    params: dict[str, Any] = {
        "system": system,
        "temperature": temperature,
        "max_tokens": max_tokens,
    }
    sch = None
    if schema is not None:
        from ..schemas import as_schema

        sch = as_schema(schema)
        params["schema"] = {"name": sch.name, "json_schema": sch.json_schema}
    make = body_maker(api, decision, params, decision.project, sch)

    def body_of(pos: int) -> dict[str, Any]:
        return make(values[pos])

    # every body is built once here (a stored key in a prompt is refused before anything is
    # stored or sent), kept only as its size; each part builds its bodies again when sent
    sizes = {pos: len(api.line(f"r{pos}", body_of(pos))) for pos in sendable_pos}
    sendable = [values[p] for p in sendable_pos]
    est, reserve_max, out_max, assumed = _estimate(
        sendable, system, max_tokens, decision.provider, decision.model
    )
    if max_cost_usd is not None:
        from ..wallet import parse_amount

        limit = parse_amount(max_cost_usd, allow_zero=True, what="max_cost_usd")
        if est.batch_usd is None or est.batch_usd > limit:
            raise CostLimitError(
                f"This job is estimated at {est}, above max_cost_usd=${limit}. Nothing was sent.",
                hint="Raise max_cost_usd, lower max_tokens, or send fewer rows.",
                estimate_usd=est.batch_usd,
                rows=len(sendable),
                max_cost_usd=limit,
            )
    job_id = "job_" + secrets.token_hex(8)
    reservation = reserve(
        decision.project,
        reserve_max,
        model=decision.model,
        provider=decision.provider,
        output_tokens=out_max,
        output_assumed=assumed,
    )
    directory = jobs_dir() / job_id
    from ..home import open_private, private_umask

    with private_umask():
        directory.mkdir(mode=0o700)
    try:
        if reservation is not None:
            hold_for_job(reservation, job_id)
        per_job = rows_per_job or 10**9
        chunks = list(_split(sendable_pos, sizes, api.name, per_job))
        total = Decimal(reservation.amount_usd) if reservation is not None else Decimal(0)
        parts = []
        for i, chunk in enumerate(chunks):
            share = total * len(chunk) / len(sendable_pos)
            parts.append(_new_part(i, chunk, share))
        with os.fdopen(open_private(directory / "input.jsonl"), "a", encoding="utf-8") as fh:
            for p, r in zip(values, reasons, strict=True):
                fh.write(json.dumps({"p": p if r is None else _plain(p), "r": r}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        record = {
            "version": 1,
            "id": job_id,
            "created_ms": int(time.time() * 1000),
            "provider": decision.provider,
            "model": decision.model,
            "model_requested": model if model is not None else decision.model,
            "project": decision.project,
            "params": params,
            "rows": len(values),
            "sendable": len(sendable_pos),
            "rows_per_job": per_job,
            "index": index_values,
            "index_name": index_name,
            "estimate": est.to_dict(),
            "reservation_id": reservation.id if reservation is not None else None,
            "cancel_requested": False,
            "parts": parts,
        }
        job = BatchJob(record, directory, sch)
        job._save()
    except BaseException:
        if reservation is not None:
            reservation.release()
        raise
    del sizes
    with job._locked():
        job._send_parts(body_of, decision)
    return job


def _plain(value: Any) -> Any:
    """A value JSON can hold (a not-sent row's input, kept for the result's prompt column)."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return None if value is None else str(value)


def load_job(job_id: str) -> BatchJob:
    """The job with this id (from any kernel or the CLI)."""
    return BatchJob.load(job_id)


def jobs(*, refresh: bool = False) -> pd.DataFrame:
    """Every batch job in this home, newest first: id, created, provider, model, rows,
    state, provider job ids, batch estimate and the cost recorded so far. ``refresh``
    asks the providers for the state of unfinished jobs (else: as last seen)."""
    import pandas as pd

    from ..errors import JobError

    rows: list[dict[str, Any]] = []
    for d in sorted(jobs_dir().glob("job_*"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            job = BatchJob.load(d.name)
            st = job.status(refresh=refresh)
        except JobError as exc:
            rows.append({"job_id": d.name, "state": f"unreadable: {exc.message}"})
            continue
        rows.append(
            {
                "job_id": job.id,
                "created": pd.Timestamp(job.record["created_ms"], unit="ms", tz="UTC"),
                "provider": job.provider,
                "model": job.model,
                "rows": st.rows,
                "state": st.state,
                "done": st.done,
                "failed": st.failed,
                "fetched": st.fetched,
                "estimate_usd": job.record["estimate"].get("batch_usd"),
                "cost_usd": st.cost_usd,
                "provider_job_ids": ", ".join(job.provider_job_ids),
            }
        )
    columns = [
        "job_id",
        "created",
        "provider",
        "model",
        "rows",
        "state",
        "done",
        "failed",
        "fetched",
        "estimate_usd",
        "cost_usd",
        "provider_job_ids",
    ]
    return pd.DataFrame(rows, columns=columns)


# ``cencori_nb.jobs()`` lists the jobs, and ``cencori_nb.jobs`` is also this package: once
# the package is imported, Python binds that name to the module, so the module itself is
# made callable (calling it calls :func:`jobs`) rather than one of the two winning by
# import order.
class _CallableModule(types.ModuleType):
    def __call__(self, *, refresh: bool = False) -> pd.DataFrame:
        return jobs(refresh=refresh)


sys.modules[__name__].__class__ = _CallableModule
