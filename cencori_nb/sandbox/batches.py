"""The providers' Batch APIs in the sandbox: OpenAI Files + Batches, Anthropic Message
Batches, Gemini batch mode (inlined requests).

Each row of a job is answered by the same door pipeline as a live request (parse, unknown
model, ``SANDBOX-ERROR:``, context window, reply, body), run in-process on a captured
responder, so a batch row answers exactly what the live endpoint would. What is batch-only
lives here: files, job objects and their states, results files, limits and faults.

Wire formats (the SDK types in ``openai.types.batch`` / ``file_object``,
``anthropic.types.messages.message_batch*``, ``google.genai.batches._BatchJob_from_mldev``;
the reference pages developers.openai.com/api/reference (batches: ≤ 50,000 requests and
≤ 200 MB a file), platform.claude.com batch-processing (≤ 100,000 requests or 256 MB a
batch; results in any order, matched on ``custom_id``) and ai.google.dev/api/batch-api
(an ``Operation`` whose ``metadata`` is the ``GenerateContentBatch``; inlined responses in
input order; ≤ 20 MB of inlined requests)):

- OpenAI: ``POST /openai/v1/files`` (multipart, ``purpose=batch``), ``GET
  /openai/v1/files/{id}[/content]``, ``POST /openai/v1/batches``, ``GET
  /openai/v1/batches[/{id}]``, ``POST /openai/v1/batches/{id}/cancel``. States
  ``validating → in_progress → finalizing → completed`` (or ``failed``, ``expired``,
  ``cancelling → cancelled``). Successful rows go to ``output_file_id``, failed, expired and
  cancelled ones to ``error_file_id``; output lines are not in input order.
- Anthropic: ``POST /anthropic/v1/messages/batches``, ``GET …/batches/{id}``, ``POST
  …/{id}/cancel``, ``GET …/{id}/results`` (JSONL, ``result.type`` ``succeeded`` /
  ``errored`` / ``canceled`` / ``expired``). ``processing_status`` ``in_progress →
  ended`` (``canceling`` between). ``results_url`` is absolute, as the real one.
- Gemini: ``POST /google/v1beta/models/{m}:batchGenerateContent``, ``GET
  /google/v1beta/batches/{id}``, ``POST /google/v1beta/batches/{id}:cancel``. States
  ``BATCH_STATE_PENDING → RUNNING → SUCCEEDED`` (``FAILED``, ``CANCELLED``, ``EXPIRED``).

Timing and faults (``SandboxServer(batch_delay_s=…)``, ``POST /_sandbox/batches``
``{"delay_s", "expire", "fail", "job"}``, or per job the create request's header
``X-Sandbox-Batch: delay=0,expire=0.2,fail=0.1,job=fail|expire``): a job completes
``delay_s`` after it is created (3 s by default); ``expire``/``fail`` are the fractions of
rows that come back expired / failed (chosen by a hash of the seed and the row's
``custom_id``, so the same rows every time); ``job=fail`` fails the whole job,
``job=expire`` lets it run out of time with about half its rows done. A row whose prompt is
``SANDBOX-ERROR: …`` fails with that message, as live.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import Door, Exchange, dumps, new_id
from .http import Request

if TYPE_CHECKING:
    from .http import Responder
    from .server import SandboxServer

__all__ = ["DEFAULT_DELAY_S", "LIMITS", "BatchService", "parse_batch_spec"]

DEFAULT_DELAY_S = 3.0
# (requests, bytes) a job may hold, as each provider documents them
LIMITS = {
    "openai": (50_000, 200 * 1024 * 1024),
    "anthropic": (100_000, 256 * 1024 * 1024),
    "google": (1_000_000, 20 * 1024 * 1024),  # inlined requests: the 20 MB request cap
}
SYNC_ROWS = 2_000  # jobs up to this many rows are answered before the create call returns
CHUNK = 256 * 1024

# row outcomes
OK, FAILED, EXPIRED, CANCELLED = 0, 1, 2, 3

# HTTP status → google.rpc.Code, for a failed Gemini row (inlined errors are Status objects)
_GRPC = {400: 3, 401: 16, 403: 7, 404: 5, 409: 10, 429: 8, 500: 13, 503: 14, 504: 4}

_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # Anthropic's rule for custom_id


def parse_batch_spec(spec: str) -> dict[str, Any]:
    """``"delay=0,expire=0.2,fail=0.1,job=fail"`` → settings; ValueError naming a bad part."""
    out: dict[str, Any] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep:
            raise ValueError(f"batch setting {part!r} needs a value, e.g. {part}=0.1")
        if name == "job":
            if value not in ("fail", "expire", "none"):
                raise ValueError("job= is one of fail, expire, none")
            out["job"] = None if value == "none" else value
            continue
        if name not in ("delay", "delay_s", "expire", "fail"):
            raise ValueError(f"unknown batch setting {name!r}; known: delay, expire, fail, job")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"batch setting {name}: {value!r} is not a number") from None
        if number < 0 or (name in ("expire", "fail") and number > 1) or number != number:
            raise ValueError(f"batch setting {name}: {number} is out of range")
        out["delay_s" if name.startswith("delay") else name] = number
    if out.get("expire", 0) + out.get("fail", 0) > 1:
        raise ValueError("expire + fail add up to more than 1")
    return out


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------------------
# running one row through a door, in-process
# --------------------------------------------------------------------------------------
class _Unlimited:
    rpm = None

    def hit(self, key: str) -> tuple[bool, int, int]:
        return True, 1_000_000, 0


class _RowServer:
    """The server as a batch row sees it: no latency, no rate limit (the provider runs
    batch rows on its own schedule), the same seed, replies and wallet."""

    latency_ms = 0.0
    timeout_hold_s = 0.0

    def __init__(self, server: SandboxServer) -> None:
        self._server = server
        self.seed = server.seed
        self.limiter = _Unlimited()

    def new_request_id(self) -> str:
        return self._server.new_request_id()

    def record_timeout(self, ex: Exchange) -> None:  # no timeouts in batch rows
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class _NoStream(Exception):
    pass


class _Captured:
    """A Responder that keeps what the door sent instead of writing it to a socket."""

    def __init__(self) -> None:
        self.status = 0
        self.body = b""
        self.started = False
        self.closed = False
        self.on_head: Any = None

    def send(
        self, status: int, body: bytes, headers: Any = (), content_type: str = "application/json"
    ) -> None:
        self.status, self.body, self.started = status, body, True

    def send_cut(self, status: int, body: bytes, headers: Any, content_type: str) -> None:
        self.send(status, body)

    def start_stream(self, status: int, headers: Any, content_type: str) -> None:
        raise _NoStream


def run_row(
    server: SandboxServer, door: Door, path: str, headers: dict[str, str], body: Any
) -> tuple[int, Any]:
    """``(status, decoded body)`` the door answers ``body`` with at ``path``, as live."""
    req = Request("POST", path, dict(headers), True)
    req.body = dumps(body).encode()
    captured = _Captured()
    ex = Exchange(_RowServer(server), req, captured, path, None)  # type: ignore[arg-type]
    coro = door.handle_chat(ex)
    try:
        coro.send(None)
    except StopIteration:
        pass
    except _NoStream:
        return 400, None
    else:  # the pipeline waited on something: not possible without latency or faults
        coro.close()
        raise RuntimeError("a batch row suspended")
    try:
        return captured.status, json.loads(captured.body) if captured.body else None
    except ValueError:
        return 500, None


# --------------------------------------------------------------------------------------
# jobs
# --------------------------------------------------------------------------------------
@dataclass
class Job:
    """One batch job in any of the three formats."""

    kind: str  # openai | anthropic | google
    id: str
    created: float
    rows: list[tuple[str, Any]]  # (custom_id or key, request body)
    headers: dict[str, str]  # what each row is sent with (the creator's key)
    key_hint: str
    delay_s: float
    expire: float = 0.0
    fail: float = 0.0
    job_fault: str | None = None
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    failed_reason: tuple[str, str, int | None] | None = None  # (code, message, line)
    # filled by the worker: per row, (outcome, line) in the provider's result format
    outcomes: bytearray = field(default_factory=bytearray)
    done_rows: int = 0
    processed: threading.Event = field(default_factory=threading.Event)
    cancel_at: float | None = None
    cancel_rows: int | None = None
    results: Path | None = None  # one line per row, in input order (from the worker)
    finished: dict[str, Any] | None = None  # computed once when the job ends

    def elapsed_fraction(self, now: float) -> float:
        if self.delay_s <= 0:
            return 1.0
        return max(0.0, min(1.0, (now - self.created) / self.delay_s))

    def progress_rows(self, now: float) -> int:
        """Rows the provider has "run" by ``now`` (time-proportional, never ahead of the
        worker)."""
        frac = self.elapsed_fraction(now)
        if self.job_fault == "expire":
            frac = min(frac, 0.5)
        k = int(len(self.rows) * frac) if frac < 1 else len(self.rows)
        return min(k, self.done_rows)

    def ended(self, now: float) -> bool:
        if self.failed_reason is not None:
            return True
        if self.cancel_at is not None:
            return self.processed.is_set() or self.cancel_rows is not None
        return self.processed.is_set() and now - self.created >= self.delay_s

    def outcome(self, i: int) -> int:
        if self.cancel_rows is not None and i >= self.cancel_rows:
            return CANCELLED
        if self.job_fault == "expire" and i >= len(self.rows) // 2:
            return EXPIRED
        return self.outcomes[i]


class BatchService:
    """Holds files and jobs for every batch door of one server."""

    def __init__(self, server: SandboxServer, delay_s: float = DEFAULT_DELAY_S) -> None:
        self.server = server
        self._initial_delay = float(delay_s)
        self._lock = threading.Lock()
        self._dir: Path | None = None
        self.reset()

    # -- state ----------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self.delay_s = self._initial_delay
            self.expire = 0.0
            self.fail = 0.0
            self.job_fault: str | None = None
            self.limits = dict(LIMITS)
            self.files: dict[str, dict[str, Any]] = {}
            self.file_data: dict[str, bytes | Path] = {}
            self.jobs: dict[str, Job] = {}
            old, self._dir = self._dir, None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        self.reset()

    def configure(self, settings: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            for name in ("delay_s", "expire", "fail"):
                if name in settings:
                    setattr(self, name, float(settings[name]))
            if "job" in settings:
                self.job_fault = settings["job"]
            if "limits" in settings:
                for provider, (rows, size) in settings["limits"].items():
                    self.limits[provider] = (int(rows), int(size))
        return self.config()

    def config(self) -> dict[str, Any]:
        return {
            "delay_s": self.delay_s,
            "expire": self.expire,
            "fail": self.fail,
            "job": self.job_fault,
            "limits": {k: list(v) for k, v in self.limits.items()},
        }

    def _spool(self) -> Path:
        with self._lock:
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="cencori-sandbox-batches-"))
            return self._dir

    # -- routing ------------------------------------------------------------------------
    @staticmethod
    def handles(path: str) -> bool:
        return (
            path.startswith(("/openai/v1/files", "/openai/v1/batches"))
            or path.startswith("/anthropic/v1/messages/batches")
            or path.startswith(("/google/v1beta/batches/", "/google/v1/batches/"))
            or (path.startswith("/google/") and path.endswith(":batchGenerateContent"))
        )

    async def dispatch(self, req: Request, resp: Responder) -> None:
        path, method = req.path.rstrip("/"), req.method
        first = path.lstrip("/").split("/", 1)[0]
        door = self.server._doors[first]
        ex = Exchange(self.server, req, resp, path, None)
        ex.request_id = self.server.new_request_id()
        ex.door = door
        resp.on_head = lambda status: self.server._stats.record(ex, str(status))
        if not door._admit(ex):
            return
        if first == "openai":
            await self._openai(ex, door, path, method)
        elif first == "anthropic":
            await self._anthropic(ex, door, path, method)
        else:
            await self._google(ex, door, path, method)

    def _job_settings(self, req: Request) -> dict[str, Any]:
        spec = req.headers.get("x-sandbox-batch")
        base = {
            "delay_s": self.delay_s,
            "expire": self.expire,
            "fail": self.fail,
            "job": self.job_fault,
        }
        if spec:
            base.update(parse_batch_spec(spec))
        return base

    def _new_job(
        self,
        kind: str,
        job_id: str,
        rows: list[tuple[str, Any]],
        ex: Exchange,
        headers: dict[str, str],
        model: str | None,
    ) -> Job:
        settings = self._job_settings(ex.req)
        job = Job(
            kind=kind,
            id=job_id,
            created=time.time(),
            rows=rows,
            headers=headers,
            key_hint=ex.hint,
            delay_s=float(settings["delay_s"]),
            expire=float(settings["expire"]),
            fail=float(settings["fail"]),
            job_fault=settings["job"],
            model=model,
        )
        job.outcomes = bytearray(len(rows))
        with self._lock:
            self.jobs[job_id] = job
        return job

    def _start(self, job: Job) -> None:
        if job.failed_reason is not None or job.job_fault == "fail":
            if job.failed_reason is None:
                job.failed_reason = (
                    "sandbox_job_failure",
                    "The batch failed (sandbox fault).",
                    None,
                )
            job.processed.set()
            return
        if len(job.rows) <= SYNC_ROWS:
            self._work(job)
        else:
            threading.Thread(target=self._work, args=(job,), daemon=True).start()

    def _row_fault(self, job: Job, custom_id: str) -> int:
        if not job.expire and not job.fail:
            return OK
        digest = hashlib.blake2b(f"{self.server.seed}\x00{custom_id}".encode(), digest_size=8)
        x = int.from_bytes(digest.digest(), "big") / 2**64
        if x < job.expire:
            return EXPIRED
        if x < job.expire + job.fail:
            return FAILED
        return OK

    def _work(self, job: Job) -> None:
        """Answer every row (the door pipeline), writing one result line a row to disk."""
        door = self.server._doors[job.kind]
        path = self._spool() / f"{job.id}.rows"
        try:
            with path.open("w", encoding="utf-8") as out:
                for i, (cid, body) in enumerate(job.rows):
                    if job.cancel_rows is not None and i >= job.cancel_rows:
                        break
                    fault = self._row_fault(job, cid)
                    if fault == OK:
                        status, answer = run_row(
                            self.server, door, self._row_path(job, body), job.headers, body
                        )
                        fault = OK if status == 200 else FAILED
                    elif fault == FAILED:
                        status, answer = 500, None
                    else:
                        status, answer = 0, None
                    job.outcomes[i] = fault
                    out.write(dumps([status, answer]) + "\n")
                    job.done_rows = i + 1
            job.results = path
        except OSError:  # reset() removed the spool under a running job: it is gone anyway
            job.failed_reason = ("sandbox_reset", "The sandbox was reset.", None)
        finally:
            job.processed.set()

    @staticmethod
    def _row_path(job: Job, body: Any) -> str:
        if job.kind == "openai":
            return "/openai/v1/chat/completions"
        if job.kind == "anthropic":
            return "/anthropic/v1/messages"
        return f"/google/{job.extra.get('version', 'v1beta')}/models/{job.model}:generateContent"

    def _rows_stored(self, job: Job) -> Iterator[tuple[int, str, int, int, Any]]:
        """``(index, custom_id, outcome, status, answer)`` for every row, in input order."""
        stored: Any = iter(())
        if job.results is not None:
            stored = job.results.open(encoding="utf-8")
        try:
            for i, (cid, _body) in enumerate(job.rows):
                line = next(stored, None) if i < job.done_rows else None
                status, answer = json.loads(line) if line else (0, None)
                yield i, cid, job.outcome(i), status, answer
        finally:
            if hasattr(stored, "close"):
                stored.close()

    def _cancel(self, job: Job) -> None:
        now = time.time()
        if job.cancel_at is None:
            job.cancel_at = now
            job.cancel_rows = job.progress_rows(now)

    async def _send_file(self, ex: Exchange, source: bytes | Path, content_type: str) -> None:
        """Stream a results file in chunks (a million-row file never sits in memory)."""
        resp = ex.resp
        headers = [("x-request-id", ex.request_id)]
        if isinstance(source, bytes):
            resp.send(200, source, headers, content_type)
            return
        resp.start_stream(200, headers, content_type)
        with source.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                resp.write_chunk(chunk)
                await resp.drain()
        resp.end_stream()
        await resp.drain()

    # =========================================================================== OpenAI
    async def _openai(self, ex: Exchange, door: Door, path: str, method: str) -> None:
        parts = path.split("/")[3:]  # after /openai/v1
        if parts[0] == "files":
            if len(parts) == 1 and method == "POST":
                return self._openai_upload(ex, door)
            if len(parts) == 2 and method == "GET":
                meta = self.files.get(parts[1])
                if meta is None:
                    return door.send_error(ex, "not_found", f"No such File object: {parts[1]}")
                return ex.send_json(200, meta)
            if len(parts) == 3 and parts[2] == "content" and method == "GET":
                data = self.file_data.get(parts[1])
                if data is None:
                    return door.send_error(ex, "not_found", f"No such File object: {parts[1]}")
                return await self._send_file(ex, data, "application/octet-stream")
        elif parts[0] == "batches":
            if len(parts) == 1 and method == "POST":
                return self._openai_create(ex, door)
            if len(parts) == 1 and method == "GET":
                listed = [self._openai_object(j) for j in self.jobs.values() if j.kind == "openai"]
                listed.reverse()
                return ex.send_json(
                    200,
                    {
                        "object": "list",
                        "data": listed,
                        "first_id": listed[0]["id"] if listed else None,
                        "last_id": listed[-1]["id"] if listed else None,
                        "has_more": False,
                    },
                )
            job = self.jobs.get(parts[1]) if len(parts) >= 2 else None
            if job is None or job.kind != "openai":
                return door.send_error(ex, "not_found", f"No batch found with id '{parts[1]}'.")
            if len(parts) == 2 and method == "GET":
                return ex.send_json(200, self._openai_object(job))
            if len(parts) == 3 and parts[2] == "cancel" and method == "POST":
                status = self._openai_object(job)["status"]
                if status in ("completed", "failed", "expired", "cancelled"):
                    return door.send_error(
                        ex,
                        "bad_request",
                        f"Cannot cancel a batch with status '{status}'.",
                        status=409,
                    )
                self._cancel(job)
                return ex.send_json(200, self._openai_object(job))
        door.send_error(ex, "not_found", f"Invalid URL ({method} {path})", status=404)

    def _openai_upload(self, ex: Exchange, door: Door) -> None:
        ctype = ex.req.headers.get("content-type", "")
        try:
            fields = _multipart(ex.req.body, ctype)
        except ValueError as exc:
            return door.send_error(ex, "bad_request", str(exc))
        purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace")
        if "file" not in fields:
            return door.send_error(ex, "bad_request", "Missing required parameter: 'file'.")
        if purpose != "batch":
            return door.send_error(
                ex,
                "bad_request",
                f"The sandbox keeps files for purpose 'batch' only, not {purpose!r}.",
                param="purpose",
            )
        filename, data = fields["file"]
        fid = self._store_file(data, filename or "upload.jsonl", "batch")
        ex.send_json(200, self.files[fid])

    def _store_file(self, data: bytes | Path, filename: str, purpose: str) -> str:
        fid = new_id("file-", 11)
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        with self._lock:
            self.files[fid] = {
                "id": fid,
                "object": "file",
                "bytes": size,
                "created_at": int(time.time()),
                "filename": filename,
                "purpose": purpose,
                "status": "processed",
                "expires_at": None,
                "status_details": None,
            }
            self.file_data[fid] = data
        return fid

    def _openai_create(self, ex: Exchange, door: Door) -> None:
        try:
            body = ex.req.json()
        except ValueError:
            return door.send_error(ex, "bad_request", "We could not parse the JSON body.")
        if not isinstance(body, dict):
            return door.send_error(ex, "bad_request", "The body must be a JSON object.")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not body.get(name):
                return door.send_error(
                    ex, "bad_request", f"Missing required parameter: '{name}'.", param=name
                )
        if body["endpoint"] != "/v1/chat/completions":
            return door.send_error(
                ex,
                "bad_request",
                "The sandbox runs batches for '/v1/chat/completions' only.",
                param="endpoint",
            )
        if body["completion_window"] != "24h":
            return door.send_error(
                ex,
                "bad_request",
                "Invalid value for 'completion_window': only '24h' is supported.",
                param="completion_window",
            )
        data = self.file_data.get(body["input_file_id"])
        if data is None or not isinstance(data, bytes):
            return door.send_error(ex, "not_found", f"No such File object: {body['input_file_id']}")
        rows, problem, model = _openai_rows(data, self.limits["openai"])
        job = self._new_job(
            "openai",
            new_id("batch_", 12),
            rows,
            ex,
            {"authorization": ex.req.headers.get("authorization", "")},
            model,
        )
        job.extra = {
            "input_file_id": body["input_file_id"],
            "metadata": body.get("metadata"),
            "endpoint": body["endpoint"],
        }
        job.failed_reason = problem
        self._start(job)
        ex.send_json(200, self._openai_object(job))

    def _openai_finish(self, job: Job) -> dict[str, Any]:
        """Write the output and error files once; return their ids and counts."""
        with self._lock:
            if job.finished is not None:
                return job.finished
        spool = self._spool()
        out_path, err_path = spool / f"{job.id}.out", spool / f"{job.id}.err"
        ok = bad = 0
        order = sorted(range(len(job.rows)), key=lambda i: (i % 3, i))  # not input order
        # results come back in an order of the provider's choosing: rows are written in a
        # shuffled but deterministic order, so a client has to match on custom_id
        lines: dict[int, tuple[int, str]] = {}
        with (
            out_path.open("w", encoding="utf-8") as out,
            err_path.open("w", encoding="utf-8") as err,
        ):
            pending: list[tuple[int, str, int, int, Any]] = list(self._rows_stored(job))
            for i in order:
                _, cid, outcome, status, answer = pending[i]
                line = _openai_line(cid, outcome, status, answer, job.model)
                lines[i] = (outcome, line)
                if outcome == OK:
                    ok += 1
                    out.write(line + "\n")
                else:
                    bad += 1
                    err.write(line + "\n")
        out_id = self._store_file(out_path, "batch_output.jsonl", "batch_output") if ok else None
        err_id = self._store_file(err_path, "batch_errors.jsonl", "batch_output") if bad else None
        finished = {"output_file_id": out_id, "error_file_id": err_id, "ok": ok, "bad": bad}
        with self._lock:
            if job.finished is None:
                job.finished = finished
            return job.finished

    def _openai_object(self, job: Job) -> dict[str, Any]:
        now = time.time()
        created = int(job.created)
        obj: dict[str, Any] = {
            "id": job.id,
            "object": "batch",
            "endpoint": job.extra.get("endpoint", "/v1/chat/completions"),
            "model": job.model,
            "errors": None,
            "input_file_id": job.extra.get("input_file_id"),
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": created,
            "in_progress_at": None,
            "expires_at": created + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "usage": None,
            "metadata": job.extra.get("metadata"),
        }
        if job.failed_reason is not None:
            code, message, line = job.failed_reason
            obj.update(
                status="failed",
                failed_at=created,
                errors={
                    "object": "list",
                    "data": [{"code": code, "message": message, "param": None, "line": line}],
                },
            )
            return obj
        total = len(job.rows)
        frac = job.elapsed_fraction(now)
        if job.ended(now):
            fin = self._openai_finish(job)
            obj.update(
                in_progress_at=created,
                finalizing_at=created,
                output_file_id=fin["output_file_id"],
                error_file_id=fin["error_file_id"],
                request_counts={"total": total, "completed": fin["ok"], "failed": fin["bad"]},
            )
            end = int(now)
            if job.cancel_at is not None:
                obj.update(status="cancelled", cancelling_at=int(job.cancel_at), cancelled_at=end)
            elif job.job_fault == "expire":
                obj.update(status="expired", expired_at=end)
            else:
                obj.update(status="completed", completed_at=end)
            return obj
        if job.cancel_at is not None:
            obj.update(status="cancelling", cancelling_at=int(job.cancel_at))
        elif frac >= 0.1 or job.delay_s <= 0:
            done = job.progress_rows(now)
            failed = sum(1 for i in range(done) if job.outcomes[i] != OK)
            obj.update(
                status="finalizing" if frac >= 0.9 else "in_progress",
                in_progress_at=created,
                request_counts={"total": total, "completed": done - failed, "failed": failed},
            )
            if frac >= 0.9:
                obj["finalizing_at"] = int(now)
        return obj

    # ======================================================================== Anthropic
    async def _anthropic(self, ex: Exchange, door: Door, path: str, method: str) -> None:
        parts = path.split("/")[4:]  # after /anthropic/v1/messages
        # parts[0] == "batches"
        if len(parts) == 1 and method == "POST":
            return self._anthropic_create(ex, door)
        if len(parts) == 1 and method == "GET":
            data = [self._anthropic_object(j) for j in self.jobs.values() if j.kind == "anthropic"]
            data.reverse()
            return ex.send_json(
                200,
                {
                    "data": data,
                    "has_more": False,
                    "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None,
                },
            )
        job = self.jobs.get(parts[1]) if len(parts) >= 2 else None
        if job is None or job.kind != "anthropic":
            return door.send_error(ex, "not_found", f"message_batch_id: {parts[-1]} not found")
        if len(parts) == 2 and method == "GET":
            return ex.send_json(200, self._anthropic_object(job))
        if len(parts) == 3 and parts[2] == "cancel" and method == "POST":
            if not job.ended(time.time()):
                self._cancel(job)
            return ex.send_json(200, self._anthropic_object(job))
        if len(parts) == 3 and parts[2] == "results" and method == "GET":
            if not job.ended(time.time()):
                return door.send_error(
                    ex,
                    "bad_request",
                    f"Message Batch {job.id} has not ended processing yet; results are "
                    "available once processing_status is 'ended'.",
                )
            fin = self._anthropic_finish(job)
            return await self._send_file(ex, fin["path"], "application/binary")
        door.send_error(ex, "not_found", f"Not found: {method} {path}", status=404)

    def _anthropic_create(self, ex: Exchange, door: Door) -> None:
        try:
            body = ex.req.json()
        except ValueError:
            return door.send_error(ex, "bad_request", "invalid JSON body")
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return door.send_error(ex, "bad_request", "requests: at least one request is required")
        max_rows, max_bytes = self.limits["anthropic"]
        if len(requests) > max_rows or len(ex.req.body) > max_bytes:
            return door.send_error(
                ex,
                "bad_request",
                f"requests: a batch holds at most {max_rows:,} requests and "
                f"{max_bytes // (1024 * 1024)} MB",
                status=413 if len(ex.req.body) > max_bytes else 400,
            )
        rows: list[tuple[str, Any]] = []
        seen: set[str] = set()
        for i, item in enumerate(requests):
            cid = item.get("custom_id") if isinstance(item, dict) else None
            params = item.get("params") if isinstance(item, dict) else None
            if not isinstance(cid, str) or not _CUSTOM_ID.match(cid):
                return door.send_error(
                    ex,
                    "bad_request",
                    f"requests.{i}.custom_id: String should match pattern "
                    "'^[a-zA-Z0-9_-]{1,64}$'",
                )
            if cid in seen:
                return door.send_error(
                    ex, "bad_request", f"requests.{i}.custom_id: duplicate custom_id {cid!r}"
                )
            if not isinstance(params, dict) or "model" not in params or "max_tokens" not in params:
                return door.send_error(
                    ex, "bad_request", f"requests.{i}.params: model and max_tokens are required"
                )
            if params.get("stream"):
                return door.send_error(
                    ex, "bad_request", f"requests.{i}.params.stream: streaming is not supported"
                )
            seen.add(cid)
            rows.append((cid, params))
        headers = {
            "authorization": ex.req.headers.get("authorization", ""),
            "x-api-key": ex.req.headers.get("x-api-key", ""),
            "anthropic-version": ex.req.headers.get("anthropic-version", "2023-06-01"),
        }
        job = self._new_job("anthropic", new_id("msgbatch_", 12), rows, ex, headers, None)
        self._start(job)
        ex.send_json(200, self._anthropic_object(job))

    def _anthropic_finish(self, job: Job) -> dict[str, Any]:
        with self._lock:
            if job.finished is not None:
                return job.finished
        path = self._spool() / f"{job.id}.results"
        counts = {"succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        with path.open("w", encoding="utf-8") as out:
            for _, cid, outcome, _status, answer in self._rows_stored(job):
                result: dict[str, Any]
                if job.failed_reason is not None:
                    outcome, answer = FAILED, None
                if outcome == OK:
                    result = {"type": "succeeded", "message": answer}
                    counts["succeeded"] += 1
                elif outcome == FAILED:
                    error = answer if isinstance(answer, dict) and "error" in answer else None
                    result = {
                        "type": "errored",
                        "error": error
                        or {
                            "type": "error",
                            "error": {
                                "type": "api_error",
                                "message": "Internal server error (sandbox batch fault)",
                            },
                            "request_id": None,
                        },
                    }
                    counts["errored"] += 1
                elif outcome == EXPIRED:
                    result = {"type": "expired"}
                    counts["expired"] += 1
                else:
                    result = {"type": "canceled"}
                    counts["canceled"] += 1
                out.write(dumps({"custom_id": cid, "result": result}) + "\n")
        finished = {"path": path, "counts": counts, "ended": time.time()}
        with self._lock:
            if job.finished is None:
                job.finished = finished
            return job.finished

    def _anthropic_object(self, job: Job) -> dict[str, Any]:
        now = time.time()
        counts = {"processing": len(job.rows), "succeeded": 0, "errored": 0, "canceled": 0}
        counts["expired"] = 0
        obj: dict[str, Any] = {
            "id": job.id,
            "type": "message_batch",
            "processing_status": "in_progress",
            "request_counts": counts,
            "ended_at": None,
            "created_at": _rfc3339(job.created),
            "expires_at": _rfc3339(job.created + 86400),
            "archived_at": None,
            "cancel_initiated_at": _rfc3339(job.cancel_at) if job.cancel_at else None,
            "results_url": None,
        }
        if job.ended(now):
            fin = self._anthropic_finish(job)
            obj.update(
                processing_status="ended",
                request_counts={"processing": 0, **fin["counts"]},
                ended_at=_rfc3339(fin["ended"]),
                results_url=f"{self.server.url}/anthropic/v1/messages/batches/{job.id}/results",
            )
        elif job.cancel_at is not None:
            obj["processing_status"] = "canceling"
        return obj

    # =========================================================================== Gemini
    async def _google(self, ex: Exchange, door: Door, path: str, method: str) -> None:
        if path.endswith(":batchGenerateContent"):
            if method != "POST":
                return door.send_error(ex, "bad_request", "Use POST.", status=405)
            return self._google_create(ex, door, path)
        name = path.split("/batches/", 1)[1]
        verb = None
        if ":" in name:
            name, _, verb = name.partition(":")
        job = self.jobs.get(name)
        if job is None or job.kind != "google":
            return door.send_error(ex, "not_found", f"Batch batches/{name} not found.", status=404)
        if verb is None and method == "GET":
            return ex.send_json(200, self._google_object(job))
        if verb == "cancel" and method == "POST":
            if not job.ended(time.time()):
                self._cancel(job)
            return ex.send_json(200, {})
        door.send_error(ex, "not_found", f"Not found: {method} {path}", status=404)

    def _google_create(self, ex: Exchange, door: Door, path: str) -> None:
        model = path.split("/models/", 1)[-1].rsplit(":", 1)[0] if "/models/" in path else ""
        try:
            body = ex.req.json()
        except ValueError:
            return door.send_error(ex, "bad_request", "Invalid JSON payload received.")
        batch = body.get("batch") if isinstance(body, dict) else None
        config = batch.get("inputConfig") if isinstance(batch, dict) else None
        if not isinstance(config, dict):
            return door.send_error(ex, "bad_request", "* batch.input_config: is required")
        if "fileName" in config:
            return door.send_error(
                ex, "bad_request", "The sandbox takes inlined requests only (no fileName)."
            )
        inlined = (config.get("requests") or {}).get("requests")
        if not isinstance(inlined, list) or not inlined:
            return door.send_error(ex, "bad_request", "* batch.input_config.requests: is empty")
        max_rows, max_bytes = self.limits["google"]
        if len(inlined) > max_rows or len(ex.req.body) > max_bytes:
            return door.send_error(
                ex,
                "bad_request",
                f"Request payload size exceeds the limit: {max_bytes} bytes.",
                status=400,
            )
        rows: list[tuple[str, Any]] = []
        for i, item in enumerate(inlined):
            request = item.get("request") if isinstance(item, dict) else None
            if not isinstance(request, dict):
                return door.send_error(
                    ex, "bad_request", f"* batch.input_config.requests[{i}].request: is required"
                )
            key = str((item.get("metadata") or {}).get("key", i))
            rows.append((key, request))
        job_id = new_id("", 16)
        job = self._new_job("google", job_id, rows, ex, {"x-goog-api-key": ex.key or ""}, model)
        job.extra = {
            "version": path.split("/")[2],
            "metadata": [item.get("metadata") for item in inlined],
            "display_name": (batch or {}).get("displayName") or (batch or {}).get("display_name"),
        }
        self._start(job)
        ex.send_json(200, self._google_object(job))

    def _google_object(self, job: Job) -> dict[str, Any]:
        now = time.time()
        total = len(job.rows)
        meta: dict[str, Any] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
            "model": f"models/{job.model}",
            "displayName": job.extra.get("display_name") or job.id,
            "createTime": _rfc3339(job.created),
            "updateTime": _rfc3339(now),
            "batchStats": {"requestCount": str(total), "pendingRequestCount": str(total)},
            "state": "BATCH_STATE_PENDING",
            "name": f"batches/{job.id}",
        }
        op: dict[str, Any] = {"name": f"batches/{job.id}", "metadata": meta}
        if job.failed_reason is not None:
            meta.update(state="BATCH_STATE_FAILED", endTime=_rfc3339(now))
            op.update(done=True, error={"code": 13, "message": job.failed_reason[1]})
            return op
        if not job.ended(now):
            if job.elapsed_fraction(now) >= 0.1 or job.delay_s <= 0:
                meta["state"] = "BATCH_STATE_RUNNING"
            return op
        responses: list[dict[str, Any]] = []
        ok = bad = 0
        metadata = job.extra.get("metadata") or []
        for i, _cid, outcome, _status, answer in self._rows_stored(job):
            item: dict[str, Any]
            if outcome == OK:
                item = {"response": answer}
                ok += 1
            else:
                bad += 1
                if outcome == FAILED and isinstance(answer, dict) and "error" in answer:
                    # a google.rpc.Status: the gRPC code, not the HTTP one of the live answer
                    error = answer["error"] if isinstance(answer["error"], dict) else {}
                    item = {
                        "error": {
                            "code": _GRPC.get(int(error.get("code") or 500), 2),
                            "message": str(error.get("message") or ""),
                        }
                    }
                elif outcome == FAILED:
                    item = {"error": {"code": 13, "message": "Internal error (sandbox fault)."}}
                elif outcome == EXPIRED:
                    item = {
                        "error": {"code": 4, "message": "Deadline expired before the request ran."}
                    }
                else:
                    item = {"error": {"code": 1, "message": "The batch was cancelled."}}
            if i < len(metadata) and metadata[i] is not None:
                item["metadata"] = metadata[i]
            responses.append(item)
        state = "BATCH_STATE_SUCCEEDED"
        if job.cancel_at is not None:
            state = "BATCH_STATE_CANCELLED"
        elif job.job_fault == "expire":
            state = "BATCH_STATE_EXPIRED"
        output = {"inlinedResponses": {"inlinedResponses": responses}}
        meta.update(
            state=state,
            endTime=_rfc3339(now),
            output=output,
            batchStats={
                "requestCount": str(total),
                "successfulRequestCount": str(ok),
                "failedRequestCount": str(bad),
            },
        )
        op.update(
            done=True,
            response={
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1main."
                "GenerateContentBatchOutput",
                **output,
            },
        )
        return op


# --------------------------------------------------------------------------------------
# OpenAI input and output lines
# --------------------------------------------------------------------------------------
def _openai_rows(
    data: bytes, limits: tuple[int, int]
) -> tuple[list[tuple[str, Any]], tuple[str, str, int | None] | None, str | None]:
    """Rows of an input file, or why the batch fails validation (code, message, line)."""
    max_rows, max_bytes = limits
    if len(data) > max_bytes:
        return [], ("file_too_large", f"The input file exceeds {max_bytes} bytes.", None), None
    rows: list[tuple[str, Any]] = []
    seen: set[str] = set()
    models: set[str] = set()
    for n, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except ValueError:
            return [], ("invalid_json_line", "This line is not parseable as valid JSON.", n), None
        cid = item.get("custom_id") if isinstance(item, dict) else None
        if not isinstance(cid, str) or not cid:
            return [], ("missing_custom_id", "Each request needs a custom_id.", n), None
        if cid in seen:
            return (
                [],
                ("duplicate_custom_id", f"The custom_id {cid!r} is used more than once.", n),
                None,
            )
        if item.get("method") != "POST" or item.get("url") != "/v1/chat/completions":
            return (
                [],
                (
                    "invalid_url",
                    "The URL provided for this request does not match the batch endpoint.",
                    n,
                ),
                None,
            )
        body = item.get("body")
        if not isinstance(body, dict):
            return [], ("invalid_request", "The body of this request is not an object.", n), None
        models.add(str(body.get("model")))
        seen.add(cid)
        rows.append((cid, body))
    if not rows:
        return [], ("empty_file", "The input file has no requests.", None), None
    if len(rows) > max_rows:
        return (
            [],
            (
                "too_many_requests",
                f"The batch input file has {len(rows):,} requests; the limit is {max_rows:,}.",
                None,
            ),
            None,
        )
    if len(models) > 1:
        return (
            [],
            ("mixed_models", "All requests in a batch must use the same model.", None),
            None,
        )
    return rows, None, models.pop()


def _openai_line(cid: str, outcome: int, status: int, answer: Any, model: str | None) -> str:
    line: dict[str, Any] = {"id": new_id("batch_req_", 12), "custom_id": cid}
    if outcome == OK or (outcome == FAILED and status and answer is not None):
        line["response"] = {
            "status_code": status,
            "request_id": new_id("", 16),
            "body": answer,
        }
        line["error"] = None
    elif outcome == FAILED:
        line["response"] = {
            "status_code": 500,
            "request_id": new_id("", 16),
            "body": {
                "error": {
                    "message": "The server had an error processing this request (sandbox fault).",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            },
        }
        line["error"] = None
    elif outcome == EXPIRED:
        line["response"] = None
        line["error"] = {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        }
    else:
        line["response"] = None
        line["error"] = {
            "code": "batch_cancelled",
            "message": "This request was not executed because the batch was cancelled.",
        }
    return dumps(line)


def _multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """``{field: (filename, data)}`` of a multipart/form-data body."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/form-data") or not match:
        raise ValueError("Send the file as multipart/form-data.")
    boundary = b"--" + match.group(1).encode("latin-1")
    out: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        if data.endswith(b"\r\n"):
            data = data[:-2]
        disposition = ""
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("content-disposition:"):
                disposition = line
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        if name:
            out[name.group(1)] = (filename.group(1) if filename else None, data)
    return out
