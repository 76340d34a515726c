"""A provider batch job as it lives in the home: :class:`BatchJob`, its record and its files.

``<home>/jobs/<job id>/`` (0700) holds, each file 0600:

- ``job.json`` — the record: provider, model, parameters, project, the parts (one provider
  job each: its id, the row positions it carries, its last state, whether its results are
  recorded), the estimate and the budget reservation. Replaced atomically
  (:func:`cencori_nb.home.atomic_write`) under the job's lock, written *before* each call
  to the provider, so another kernel, the CLI or a restarted kernel picks the job up.
- ``input.jsonl`` — one line a row: the prompt, or why it is not sent.
- ``results.jsonl`` — one line a row result as it is fetched (appended, streamed from the
  provider page by page: a million rows never sit in memory at once).
- ``.lock`` — ``flock``: one process at a time polls, fetches or writes the record.

Money: each row is recorded in the ledger once, when its result is fetched, at the batch
price (:func:`cencori_nb.accounting.settle` with ``batch=True``), keyed on a client id
derived from the job, the part and the row: fetching twice, or from two processes at once,
writes one row and debits once. The job's estimated maximum is reserved against the
project's hard cap at submit (a reservation that outlives the process,
:func:`cencori_nb.accounting.hold_for_job`), and shrinks as parts are recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CencoriError, JobError
from . import wire

if TYPE_CHECKING:
    import pandas as pd

    from ..router import Decision
    from ..schemas import Schema
    from ..types import Usage

__all__ = ["BatchJob", "JobStatus", "jobs_dir"]

RECORD_VERSION = 1
EXPIRED_MESSAGE = (
    "expired: the provider's 24-hour window ended before this row ran (job.resubmit() "
    "sends it again)"
)
CANCELLED_MESSAGE = "cancelled: the job was cancelled before this row ran"
PENDING = "pending: the provider has not finished this row yet"


_JOB_ID = re.compile(r"job_[A-Za-z0-9_-]{1,64}")


def jobs_dir() -> Path:
    """``<home>/jobs`` (0700), created on first use."""
    from ..home import ensure_home, private_umask

    d = ensure_home() / "jobs"
    with private_umask():
        d.mkdir(mode=0o700, exist_ok=True)
    return d


def client_id(job_id: str, part: int, pos: int) -> str:
    """The ledger client id of one row of one part: the same in every process."""
    return hashlib.sha256(f"cencori-nb-job\x00{job_id}\x00{part}\x00{pos}".encode()).hexdigest()[
        :32
    ]


def _ranges(positions: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for p in positions:
        if out and out[-1][1] == p:
            out[-1][1] = p + 1
        else:
            out.append([p, p + 1])
    return out


def _positions(ranges: list[list[int]]) -> list[int]:
    return [p for a, b in ranges for p in range(a, b)]


def _count(ranges: list[list[int]]) -> int:
    return sum(b - a for a, b in ranges)


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands: ``state`` is ``running``, ``ended`` (every part ended; results
    may still need fetching), ``fetched`` (all recorded), ``failed`` or ``cancelled``."""

    job_id: str
    state: str
    rows: int
    done: int
    failed: int
    expired: int
    fetched: int
    cost_usd: Decimal
    provider_states: tuple[str, ...]

    def __str__(self) -> str:
        bits = [f"{self.done}/{self.rows} rows done"]
        if self.failed:
            bits.append(f"{self.failed} failed")
        if self.expired:
            bits.append(f"{self.expired} expired")
        bits.append(f"{self.fetched} fetched, ${self.cost_usd:.4f} recorded")
        return f"job {self.job_id}: {self.state} · " + " · ".join(bits)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "rows": self.rows,
            "done": self.done,
            "failed": self.failed,
            "expired": self.expired,
            "fetched": self.fetched,
            "cost_usd": str(self.cost_usd),
            "provider_states": list(self.provider_states),
        }


class BatchJob:
    """One batch job at a provider (possibly several provider jobs, "parts", when the
    input is larger than one job may be). Built by :func:`cencori_nb.submit`, or loaded by
    id with :meth:`load` (another kernel, after a restart, the CLI)."""

    def __init__(
        self, record: dict[str, Any], directory: Path, schema: Schema | None = None
    ) -> None:
        self.record = record
        self.directory = directory
        # schema=: the user's own type in the process that submitted; elsewhere the stored
        # JSON Schema (answers then parse into dicts)
        self.schema = schema if schema is not None else stored_schema(record)
        self._prompts: list[Any] | None = None  # input.jsonl's prompts, once one is needed

    # -- loading and saving ---------------------------------------------------------------
    @classmethod
    def load(cls, job_id: str) -> BatchJob:
        """The job with this id, from the home; :class:`JobError` if there is none."""
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            # the id becomes a folder name under the home: only the shape submit makes
            # (no separator, NUL, dot-dot, newline or a name too long for the file system)
            raise JobError(
                f"{str(job_id)[:40]!r} is not a job id (they look like job_1a2b3c…).",
                hint="List them with cencori_nb.jobs() or `cencori-nb jobs list`.",
                job_id=str(job_id),
            )
        directory = jobs_dir() / job_id
        return cls(_read_record(directory / "job.json", job_id), directory)

    @property
    def path(self) -> Path:
        return self.directory / "job.json"

    def _save(self) -> None:
        from ..home import atomic_write

        data = json.dumps(self.record, indent=1, sort_keys=True).encode()
        atomic_write(self.path, data)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the job's lock and work on its latest record (another process may have
        moved it on)."""
        from ..home import open_private

        fd = open_private(self.directory / ".lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.record = _read_record(self.path, self.id)
            yield
        finally:
            os.close(fd)  # releases the lock

    # -- what it is ---------------------------------------------------------------------
    @property
    def id(self) -> str:
        return str(self.record["id"])

    @property
    def provider(self) -> str:
        return str(self.record["provider"])

    @property
    def model(self) -> str:
        return str(self.record["model"])

    @property
    def project(self) -> str:
        return str(self.record["project"])

    @property
    def provider_job_ids(self) -> list[str]:
        """The provider's own ids of this job's parts (``batch_…``, ``msgbatch_…``, …)."""
        return [p["provider_job_id"] for p in self.record["parts"] if p.get("provider_job_id")]

    @property
    def rows(self) -> int:
        return int(self.record["rows"])

    def __repr__(self) -> str:
        parts = len(self.record["parts"])
        return (
            f"BatchJob({self.id!r}, provider={self.provider!r}, model={self.model!r}, "
            f"rows={self.rows}, parts={parts})"
        )

    def _repr_markdown_(self) -> str:
        return f"`{self.id}` · {self.provider} · {self.model} · {self.rows} rows"

    # -- the credential, resolved now ---------------------------------------------------
    def _decision(self) -> Decision:
        from .. import router

        decision = router.explain_route(
            self.record["model_requested"],
            provider=self.provider,
            route="byok",
            project=self.project,
        )
        if decision.provider != self.provider:  # pragma: no cover - routing is stable
            raise JobError(
                f"Job {self.id} was sent to {self.provider}, but its model now routes to "
                f"{decision.provider}.",
                job_id=self.id,
            )
        return decision

    def _api(self) -> wire.API:
        api = wire.api_for(self.provider)
        if api is None:  # pragma: no cover - checked at submit
            raise JobError(f"{self.provider} has no Batch API.", job_id=self.id)
        return api

    # -- submitting parts (also used by resubmit) ---------------------------------------
    def _send_parts(self, body_of: Callable[[int], dict[str, Any]], decision: Decision) -> None:
        """Create every part not yet at the provider; save after each one. Row bodies are
        built part by part (``body_of(position)``): one part's rows in memory at a time."""
        api = self._api()
        for part in self.record["parts"]:
            if part.get("provider_job_id") or part.get("failure"):
                continue
            rows = [(f"r{pos}", body_of(pos)) for pos in _positions(part["ranges"])]
            try:
                pid = api.create(rows, decision, tag=f"{self.id}-{part['index']}")
                _refuse_key_in_id(pid, self.provider)
            except CencoriError as exc:
                part["failure"] = f"not submitted: {type(exc).__name__}: {exc.message}"
                part["ended"] = True
                self._release_part(part)
                self._save()
                raise
            part["provider_job_id"] = pid
            part["submitted_ms"] = int(time.time() * 1000)
            self._save()

    def _release_part(self, part: dict[str, Any]) -> None:
        rid = self.record.get("reservation_id")
        if not rid or part.get("released"):
            return
        from ..accounting import release_job_amount

        release_job_amount(rid, Decimal(part.get("reserved_usd") or "0"))
        part["released"] = True
        if all(p.get("released") for p in self.record["parts"]):
            release_job_amount(rid, None)

    # -- status ---------------------------------------------------------------------------
    def refresh(self) -> None:
        """Ask the provider how each unfinished part stands (and save what it said)."""
        with self._locked():
            todo = [p for p in self.record["parts"] if p.get("provider_job_id") and not p["ended"]]
            if not todo:
                return
            decision, api = self._decision(), self._api()
            for part in todo:
                st = api.poll(part["provider_job_id"], decision)
                part.update(
                    state=st.state,
                    ended=st.ended,
                    done=st.done,
                    failed=st.failed,
                    failure=st.failure,
                )
            self._save()

    def status(self, *, refresh: bool = True) -> JobStatus:
        """Rows done, failed and expired, rows fetched and what they cost so far."""
        if refresh:
            self.refresh()
        else:  # as last saved, by whichever process saved it
            self.record = _read_record(self.path, self.id)
        rec = self.record
        parts = rec["parts"]
        done = failed = expired = fetched = 0
        cost = Decimal(0)
        for p in parts:
            n = _count(p["ranges"])
            stats = p.get("stats")
            again = p.get("supersedes") or {}
            if stats is not None:  # fetched: the rows' own outcomes
                fetched += n - sum(again.values())
                failed += stats["error"] + stats["expired"] + stats["cancelled"]
                failed -= sum(again.values())  # those rows had failed before
                expired += stats["expired"] - again.get("expired", 0)
                cost += Decimal(stats["cost"])
                done += n - sum(again.values())
            elif p.get("failure"):
                done += n - sum(again.values())
                failed += n - sum(again.values())
            else:
                done += int(p.get("done") or 0) - sum(again.values())
                failed += int(p.get("failed") or 0) - sum(again.values())
        done, failed = max(done, 0), max(failed, 0)
        if all(p.get("fetched") or p.get("failure") for p in parts):
            state = "fetched"
            if all(p.get("failure") for p in parts):
                state = "failed"
        elif all(p["ended"] for p in parts):
            state = "ended"
        else:
            state = "running"
        if rec.get("cancel_requested") and state in ("ended", "fetched"):
            state = "cancelled" if state == "ended" else state
        return JobStatus(
            job_id=self.id,
            state=state,
            rows=int(rec["sendable"]),
            done=done,
            failed=failed,
            expired=expired,
            fetched=fetched,
            cost_usd=cost,
            provider_states=tuple(str(p.get("state") or p.get("failure") or "?") for p in parts),
        )

    def wait(
        self,
        *,
        timeout: float | None = None,
        poll_s: float | None = None,
        progress: Any = True,
    ) -> JobStatus:
        """Poll until every part has ended (a progress widget in Jupyter, a line on stderr
        elsewhere), then fetch the results; return the status. ``timeout``: give up after
        that many seconds with :class:`JobError` (the job keeps running at the provider)."""
        from ..batch.progress import make_progress

        if poll_s is None:
            sandbox = self._decision().credential_source.startswith("sandbox")
            poll_s = 0.25 if sandbox else 30.0
        bar = make_progress(int(self.record["sendable"]), progress)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                st = self.status()
                bar.update(st.done, st.failed, st.cost_usd, note=st.state)
                if st.state != "running":
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise JobError(
                        f"Job {self.id} is still running after {timeout:g} s ({st}).",
                        hint="It keeps running at the provider: wait again later, "
                        f"or `cencori-nb jobs wait {self.id}`.",
                        job_id=self.id,
                    )
                time.sleep(poll_s)
            self.fetch()
            st = self.status(refresh=False)
        finally:
            bar.close(st.done if "st" in locals() else 0, 0, Decimal(0))
        return st

    # -- results --------------------------------------------------------------------------
    def fetch(self) -> int:
        """Record the results of every ended part not recorded yet; return how many rows
        were recorded now. Safe to call again, from any process: each row is recorded once."""
        self.refresh()
        recorded = 0
        with self._locked():
            todo = [
                p
                for p in self.record["parts"]
                if p.get("provider_job_id") and p["ended"] and not p.get("fetched")
            ]
            if not todo:
                return 0
            decision, api = self._decision(), self._api()
            for part in todo:
                part["stats"] = self._fetch_part(part, decision, api)
                recorded += sum(part["stats"][k] for k in ("ok", "error", "expired", "cancelled"))
                part["fetched"] = True
                self._release_part(part)
                self._save()
        return recorded

    def _fetch_part(
        self, part: dict[str, Any], decision: Decision, api: wire.API
    ) -> dict[str, Any]:
        from ..home import open_private
        from ..ledger import default_ledger

        positions = set(_positions(part["ranges"]))
        seen: set[int] = set()
        path = self.directory / "results.jsonl"
        stats: dict[str, Any] = {"ok": 0, "error": 0, "expired": 0, "cancelled": 0}
        cost = Decimal(0)

        def write(line: dict[str, Any]) -> None:
            nonlocal cost
            out.write(json.dumps(line) + "\n")
            stats[line["o"]] += 1
            if line.get("cost"):
                cost += Decimal(line["cost"])

        with os.fdopen(open_private(path), "a", encoding="utf-8") as out:
            if part.get("failure"):
                rows: Iterator[wire.RowResult] = iter(())
            else:
                state = wire.PartState(part["state"], True)
                if self.provider == "openai" or self.provider == "google":
                    state = api.poll(part["provider_job_id"], decision)
                rows = api.results(part["provider_job_id"], decision, state)
            for rr in rows:
                pos = _pos_of(rr.custom_id)
                if pos is None or pos not in positions or pos in seen:
                    continue  # not ours, or a repeat: a row is recorded once
                seen.add(pos)
                write(self._record_row(part, pos, rr, decision, api))
            failure = part.get("failure")
            for pos in sorted(positions - seen):
                reason = (
                    f"failed: the provider failed the whole job ({failure})"
                    if failure
                    else "missing: the provider's results have no line for this row"
                )
                rr = wire.RowResult(f"r{pos}", wire.ERROR, message=reason)
                write(self._record_row(part, pos, rr, decision, api))
            out.flush()
            os.fsync(out.fileno())
        default_ledger().flush()
        stats["cost"] = str(cost)
        return stats

    def _record_row(
        self, part: dict[str, Any], pos: int, rr: wire.RowResult, decision: Decision, api: wire.API
    ) -> dict[str, Any]:
        """Record one row in the ledger (once: its client id is stable) and return its
        results-file line."""
        from ..accounting import settle
        from ..ledger import LedgerRow, default_ledger
        from ..types import Completion

        cid = client_id(self.id, int(part["index"]), pos)
        base = {"pos": pos, "part": part["index"], "cid": cid}
        if rr.outcome == wire.OK:
            try:
                pr = api.parse_ok(rr.body, decision)
            except CencoriError as exc:
                rr = wire.RowResult(rr.custom_id, wire.ERROR, message=_scrubbed(exc))
            else:
                usage = pr.usage
                if usage is None:  # none sent, or none a request has (ProviderResult)
                    usage = self._estimated_usage(pos, pr.text, decision)
                c = Completion(
                    text=pr.text,
                    model=pr.model or decision.model,
                    provider=self.provider,
                    route="byok",
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cache_read_tokens=usage.cache_read_tokens,
                    cache_write_tokens=usage.cache_write_tokens,
                    cache_write_1h_tokens=usage.cache_write_1h_tokens,
                    thinking_tokens=usage.thinking_tokens,
                    request_id=pr.request_id or "",
                    finish_reason=pr.finish_reason,
                    model_requested=self.record["model_requested"],
                    credential_source=decision.credential_source,
                    project=self.project,
                    client_id=cid,
                    estimated=pr.usage is None,
                )
                settle(c, batch=True)
                # a billed non-answer (a Gemini prompt blocked before the model ran):
                # recorded above as paid, shown as the row's error
                error = None if pr.error is None else _scrubbed(pr.error)
                parsed = None
                if self.schema is not None and error is None:  # paid either way: recorded
                    try:  # kept as the JSON it came in; result() reads it into the type
                        parsed = self.schema.loads(c.text)
                        self.schema.validate(parsed)
                    except CencoriError as exc:
                        parsed = None
                        error = _scrubbed(exc)
                return {
                    **base,
                    "o": wire.OK,
                    "text": c.text,
                    "error": error,
                    "parsed": parsed,
                    "in": c.input_tokens,
                    "out": c.output_tokens,
                    "cost": None if c.cost_usd is None else str(c.cost_usd),
                    "pcost": None if c.provider_cost_usd is None else str(c.provider_cost_usd),
                    "credits": str(c.credits_charged_usd),
                    "model": c.model,
                    "rid": c.request_id,
                }
        if rr.outcome == wire.EXPIRED:
            message = EXPIRED_MESSAGE
        elif rr.outcome == wire.CANCELLED:
            message = CANCELLED_MESSAGE
        elif rr.body is not None:
            message = api.error_text(rr.body, rr.status)
        else:
            from ..transport import scrub

            message = scrub(rr.message or "failed")
        default_ledger().submit(
            LedgerRow(
                request_id="",
                project=self.project,
                provider=self.provider,
                route="byok",
                status="error",
                model_requested=self.record["model_requested"],
                model=decision.model,
                credential_source=decision.credential_source,
                error_code=f"batch_{rr.outcome}",
                client_id=cid,
            )
        )
        return {**base, "o": rr.outcome, "text": None, "error": message, "cost": "0"}

    def _estimated_usage(self, pos: int, text: str, decision: Decision) -> Usage:
        """Row ``pos``'s tokens estimated from its prompt (system prompt and images
        included) and its answer, as a live reply without usage is recorded
        (client._completion): its result line sent no usage, or one no request has. Never
        0 for a paid answer, so its price is not understated."""
        from ..client import _prompt_tokens
        from ..tokens import estimate_tokens
        from ..types import ChatRequest, Usage

        if self._prompts is None:  # read once, only when a line lacks usage
            self._prompts = [p for p, _r in self._inputs()]
        prompts = self._prompts
        request = ChatRequest.from_prompt(
            prompts[pos], system=self.record["params"].get("system"), model=decision.model
        )
        return Usage(_prompt_tokens(request, decision), estimate_tokens(text))

    def _latest_results(self) -> dict[int, dict[str, Any]]:
        """``{position: result line}``, the latest part's line winning (a resubmitted row)."""
        latest: dict[int, dict[str, Any]] = {}
        path = self.directory / "results.jsonl"
        try:
            fh = path.open(encoding="utf-8")
        except FileNotFoundError:
            return latest
        with fh:
            for line in fh:
                try:
                    r = json.loads(line)
                    pos, part = int(r["pos"]), int(r["part"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a crash: that part is fetched again
                old = latest.get(pos)
                if old is None or int(old["part"]) <= part:
                    latest[pos] = r
        return latest

    def result(
        self, *, wait: bool = True, timeout: float | None = None, progress: Any = True
    ) -> pd.DataFrame:
        """The results as :func:`cencori_nb.map` returns them: one row per input row, in
        input order (aligned with the input's index), columns
        :data:`cencori_nb.batch.COLUMNS`. Expired and failed rows have their reason in
        ``error`` (:meth:`resubmit` sends only those again). ``wait=False``: what has been
        fetched so far, the rest ``pending``. ``progress``: as for :meth:`wait`."""
        import pandas as pd

        from ..batch import COLUMNS

        if wait:
            self.wait(timeout=timeout, progress=progress)
        latest = self._latest_results()
        records: list[dict[str, Any]] = []
        for pos, (prompt, reason) in enumerate(self._inputs()):
            r = latest.get(pos)
            row: dict[str, Any] = dict.fromkeys(COLUMNS)
            row.update(prompt=prompt, route="byok", cached=False, test_mode=False)
            if reason is not None:
                row.update(error=reason, cost_usd=Decimal(0))
            elif r is None:
                row.update(error=PENDING)
            elif r["o"] == wire.OK:
                row.update(
                    text=r["text"],
                    error=r.get("error"),  # a schema= answer that did not match
                    input_tokens=r["in"],
                    output_tokens=r["out"],
                    cost_usd=None if r["cost"] is None else Decimal(r["cost"]),
                    model=r["model"],
                    provider_cost_usd=None if r["pcost"] is None else Decimal(r["pcost"]),
                    credits_charged_usd=Decimal(r.get("credits") or "0"),
                    request_id=r["rid"],
                )
            else:
                row.update(error=r["error"], cost_usd=Decimal(0))
            records.append(row)
        frame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
        index = self.record.get("index")
        if index is not None and len(index) == len(frame):
            frame.index = pd.Index(index, name=self.record.get("index_name"))
        for col in ("input_tokens", "output_tokens"):
            frame[col] = frame[col].astype("Int64")
        frame["cached"] = frame["cached"].astype(bool)
        frame["test_mode"] = frame["test_mode"].astype(bool)
        if self.schema is not None:  # as map(): prompt, the fields (typed), map's columns
            from ..batch.runner import _field_column

            schema = self.schema
            values = []
            for pos in range(len(frame)):
                data = (latest.get(pos) or {}).get("parsed")
                values.append(None if data is None else schema.validate(data))
            fields = schema.frame(values, index=frame.index)
            fields.columns = [_field_column(str(c)) for c in fields.columns]
            frame = pd.concat([frame[["prompt"]], fields, frame.drop(columns=["prompt"])], axis=1)
        frame.attrs["cencori"] = {"job_id": self.id, "provider_job_ids": self.provider_job_ids}
        return frame

    def _inputs(self) -> Iterator[tuple[Any, str | None]]:
        with (self.directory / "input.jsonl").open(encoding="utf-8") as fh:
            for line in fh:
                item = json.loads(line)
                yield item.get("p"), item.get("r")

    # -- cancel, resubmit ---------------------------------------------------------------
    def cancel(self) -> JobStatus:
        """Ask the provider to stop every unfinished part. Rows already done stay done and
        are fetched as usual; the others come back ``cancelled``."""
        with self._locked():
            self.record["cancel_requested"] = True
            self._save()
            todo = [p for p in self.record["parts"] if p.get("provider_job_id") and not p["ended"]]
            if todo:
                decision, api = self._decision(), self._api()
                for part in todo:
                    api.cancel(part["provider_job_id"], decision)
        return self.status()

    def resubmit(self) -> BatchJob:
        """Send again only the rows that came back expired or failed (or whose part could
        not be submitted), as new parts of this job; rows that succeeded are not touched.
        Returns this job (``result()`` then shows the new answers)."""
        self.fetch()
        with self._locked():
            latest = self._latest_results()
            again: dict[int, str] = {}  # position -> how it last came back
            for part in self.record["parts"]:
                unsent = part.get("failure") and not part.get("provider_job_id")
                for pos in _positions(part["ranges"]):
                    r = latest.get(pos)
                    if r is not None and r["o"] != wire.OK:
                        again[pos] = r["o"]
                    elif r is None and unsent:
                        again[pos] = "unsent"
            if not again:
                return self
            decision = self._decision()
            api = self._api()
            prompts = {pos: p for pos, (p, _r) in enumerate(self._inputs()) if pos in again}
            make = body_maker(api, decision, self.record["params"], self.project, self.schema)

            def body_of(pos: int) -> dict[str, Any]:
                return make(prompts[pos])

            sizes = {pos: len(api.line(f"r{pos}", body_of(pos))) for pos in sorted(again)}
            first = len(self.record["parts"])
            chunks = _split(sorted(again), sizes, api.name, self.record["rows_per_job"])
            for i, chunk in enumerate(chunks):
                part = _new_part(first + i, chunk, Decimal(0))
                kinds = [again[pos] for pos in chunk]
                # the earlier outcome of each row sent again (unsent rows had none fetched)
                part["supersedes"] = {
                    k: kinds.count(k)
                    for k in (wire.ERROR, wire.EXPIRED, wire.CANCELLED)
                    if kinds.count(k)
                }
                self.record["parts"].append(part)
            self._save()
            self._send_parts(body_of, decision)
        return self


def stored_schema(record: dict[str, Any]) -> Schema | None:
    """The job's ``schema=`` as stored (a JSON Schema with its name), or None."""
    stored = (record.get("params") or {}).get("schema")
    if not stored:
        return None
    from ..schemas import Schema

    return Schema(None, "json_schema", stored["json_schema"], stored["name"])


def body_maker(
    api: wire.API,
    decision: Decision,
    params: dict[str, Any],
    project: str,
    schema: Schema | None = None,
) -> Callable[[Any], dict[str, Any]]:
    """prompt → the row's JSON body, as the live adapter builds it (the same parameters for
    every row); refuses a prompt that holds a stored key, as chat() does."""
    from ..redact import refuse_key_in_prompt
    from ..types import ChatRequest

    if schema is not None:  # sent with every row and saved in job.json: as a prompt
        schema.refuse_stored_keys()

    def build(prompt: Any) -> dict[str, Any]:
        request = ChatRequest.from_prompt(
            prompt,
            system=params.get("system"),
            model=decision.model,
            provider=decision.provider,
            route="byok",
            temperature=params.get("temperature"),
            max_tokens=params.get("max_tokens"),
            project=project,
            schema=schema,
        )
        for message in request.messages:
            refuse_key_in_prompt(message.content, shapes=False)
        return api.row_body(request, decision)

    # Building an httpx2.Request per row costs ~170 µs (URL parsing): a string prompt is
    # put where the adapter put a marker prompt, when the marker lands there exactly once as
    # a whole JSON string (else, and for message lists, the adapter builds each row).
    marker = "\x00cencori-nb-row\x00"
    needle = json.dumps(marker)
    template = json.dumps(build(marker))
    fast = template.count(needle) == 1

    def make(prompt: Any) -> dict[str, Any]:
        if not fast or not isinstance(prompt, str):
            return build(prompt)
        refuse_key_in_prompt(prompt, shapes=False)
        body: dict[str, Any] = json.loads(template.replace(needle, json.dumps(prompt)))
        return body

    return make


def _split(
    positions: list[int], sizes: dict[int, int], provider: str, rows_per_job: int
) -> Iterator[list[int]]:
    """Positions in chunks within the provider's per-job limits (requests and bytes);
    ``sizes`` is each row's size in the provider's upload."""
    max_rows, max_bytes = wire.LIMITS[provider]
    max_rows = min(max_rows, rows_per_job)
    chunk: list[int] = []
    size = 0
    for pos in positions:
        n = sizes[pos]
        if chunk and (len(chunk) >= max_rows or size + n > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(pos)
        size += n
    if chunk:
        yield chunk


def _new_part(index: int, positions: list[int], reserved: Decimal) -> dict[str, Any]:
    return {
        "index": index,
        "ranges": _ranges(positions),
        "provider_job_id": None,
        "state": None,
        "ended": False,
        "fetched": False,
        "failure": None,
        "done": 0,
        "failed": 0,
        "reserved_usd": str(reserved),
        "released": False,
    }


def _pos_of(custom_id: str) -> int | None:
    if custom_id.startswith("r") and custom_id[1:].isdigit():
        return int(custom_id[1:])
    return None


def _refuse_key_in_id(pid: str, provider: str) -> None:
    """A batch id holding a stored key (a hostile endpoint echoing it) is not kept: the id
    is saved in job.json, listed by jobs() and put in a DataFrame's attrs, and it cannot be
    masked (it is needed to ask about the job). Fail closed: the part is not submitted."""
    from ..errors import BadResponseError
    from ..redact import remove_stored_keys

    if remove_stored_keys(pid) != pid:
        raise BadResponseError(
            f"{provider} answered the batch call with a job id that holds one of your stored "
            "API keys; the job is not kept.",
            hint="Check the provider's base URL: a genuine provider never echoes the key.",
            provider=provider,
        )


def _scrubbed(exc: BaseException) -> str:
    from ..transport import scrub

    return scrub(f"{type(exc).__name__}: {exc}")


def _read_record(path: Path, job_id: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobError(
            f"No batch job {job_id} in this home ({path.parent.parent}).",
            hint="List them with cencori_nb.jobs() or `cencori-nb jobs list`.",
            job_id=job_id,
        ) from None
    except OSError as exc:  # a folder where the file should be, no permission
        raise JobError(
            f"The record of job {job_id} ({path}) cannot be read "
            f"({exc.strerror or type(exc).__name__}).",
            job_id=job_id,
            path=path,
        ) from None
    except UnicodeDecodeError:
        text = ""  # damaged: said below, without quoting the bytes
    try:
        record = json.loads(text)
        if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
            raise ValueError("not a job record")
        parts = record["parts"]
        if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
            raise ValueError("its parts are not a list of records")
    except (ValueError, KeyError) as exc:
        raise JobError(
            f"The record of job {job_id} ({path}) is damaged ({exc}).",
            hint="The provider still has the job: its ids are in that file if it is readable.",
            job_id=job_id,
            path=path,
        ) from None
    return record
