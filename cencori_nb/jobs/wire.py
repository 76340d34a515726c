"""Each provider's own Batch API, on the client side: create a job, poll it, stream its
results, cancel it. One class per provider; HTTP goes through the shared transport
(:func:`cencori_nb.transport.send`, its retry policy and its one error table), and every
call takes the credential resolved *now* (a key rotated since submit is the one used).

The row bodies are what the live adapter would send (:meth:`Provider.build_request`), and
each row's answer is read by the live adapter too (``parse_response`` / ``error_from_body``),
so a batch row and a live request mean the same thing. What is batch-only is here:

=========  ==========================================  ==============================
provider   create                                       results
=========  ==========================================  ==============================
openai     POST /files (JSONL, purpose=batch),           GET /files/{output|error}/content
           POST /batches (endpoint /v1/chat/completions)  (JSONL, any order, custom_id)
anthropic  POST /v1/messages/batches {requests}          GET /v1/messages/batches/{id}/results
google     POST /v1beta/models/{m}:batchGenerateContent  inlined in the batch's Operation
           (inlined requests)                            (input order)
=========  ==========================================  ==============================

Anthropic's ``results_url`` is not followed: the results are fetched from the same base URL
the key was vetted for (:mod:`cencori_nb.egress`), at the path the real URL has.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import BadResponseError, CencoriError
from ..text import decoded

if TYPE_CHECKING:
    import httpx2

    from ..providers.base import Provider
    from ..router import Decision

__all__ = ["API", "LIMITS", "PartState", "RowResult", "api_for"]

# (requests, bytes) per job, as each provider documents them (see sandbox/batches.py)
LIMITS: dict[str, tuple[int, int]] = {
    "openai": (50_000, 190 * 1024 * 1024),  # 200 MB a file; a margin for the JSONL framing
    "anthropic": (100_000, 250 * 1024 * 1024),  # 256 MB a batch
    "google": (1_000_000, 19 * 1024 * 1024),  # 20 MB of inlined requests
}

# row outcomes, as stored and shown
OK, ERROR, EXPIRED, CANCELLED = "ok", "error", "expired", "cancelled"


@dataclass
class PartState:
    """One provider job as last seen: ``state`` (the provider's word), ``ended`` (no more
    changes coming), ``counts`` (done / failed / total when the provider says), and the
    reason when the job failed as a whole."""

    state: str
    ended: bool
    done: int = 0
    failed: int = 0
    total: int = 0
    failure: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # the provider's own words: saved in job.json and shown in status and jobs(), so a
        # hostile endpoint echoing the key it received must not put it there
        from ..redact import remove_stored_keys

        self.state = remove_stored_keys(self.state)
        if self.failure is not None:
            self.failure = remove_stored_keys(self.failure)


@dataclass
class RowResult:
    """One row's answer: ``outcome`` ok/error/expired/cancelled; ``body`` the provider's
    answer (ok) or error body; ``status`` its HTTP status when known."""

    custom_id: str
    outcome: str
    body: Any = None
    status: int | None = None
    message: str | None = None

    def __post_init__(self) -> None:
        # a row's error message is the provider's text: it reaches results.jsonl and the
        # DataFrame's error column
        if self.message is not None:
            from ..redact import remove_stored_keys

            self.message = remove_stored_keys(self.message)


def _line(raw: str) -> dict[str, Any] | None:
    """One results line as an object, or None for a line that is not one (torn, garbage):
    skipped, so its row comes back "missing" (not billed; resubmit() sends it again)
    rather than one bad line stopping every other row from being recorded."""
    try:
        item = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    item = decoded(item, raw)  # a reply's "\ud800" (cencori_nb/text.py)
    return item if isinstance(item, dict) else None


def _send(req: httpx2.Request, adapter: Provider, *, stream: bool = False) -> httpx2.Response:
    from .. import transport

    return transport.send(req, stream=stream, provider=adapter.name, map_error=adapter.map_error)


def _json(resp: httpx2.Response, provider: str) -> Any:
    try:
        value = resp.json()
    except ValueError:
        raise BadResponseError(
            f"{provider} answered a batch call with something that is not JSON.",
            provider=provider,
            status_code=resp.status_code,
        ) from None
    # Gemini's inlined answers come in this body: a "\ud800" in one (cencori_nb/text.py)
    return decoded(value, resp.text)


class API:
    """One provider's Batch API. Subclasses fill in the provider-specific parts."""

    name = ""

    def __init__(self, adapter: Provider) -> None:
        self.adapter = adapter
        self._request: httpx2.Request | None = None

    # -- rows ------------------------------------------------------------------------
    def row_body(self, request: Any, decision: Decision) -> dict[str, Any]:
        """The JSON body the live adapter would send for ``request``."""
        req = self.adapter.build_request(
            request, model=decision.model, api_key=decision.credential, base_url=decision.base_url
        )
        body: dict[str, Any] = json.loads(req.content)
        return body

    def line(self, custom_id: str, body: dict[str, Any]) -> bytes:
        """One row as it counts against the per-job byte limit."""
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"

    def parse_ok(self, body: Any, decision: Decision) -> Any:
        """The adapter's ProviderResult for a successful row body."""
        import httpx2

        if self._request is None or self._request.url != decision.base_url:
            # one stand-in request for every row (building one parses a URL: ~100 µs)
            self._request = httpx2.Request("POST", decision.base_url)
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        resp = httpx2.Response(
            200,
            content=content,
            headers={"content-type": "application/json"},
            request=self._request,
        )
        # the answer's text, model and id reach results.jsonl, the DataFrame and the
        # ledger: a stored key echoed in any of them goes, as in a live chat
        return self.adapter.parse_response(resp).without_stored_keys()

    def error_text(self, body: Any, status: int | None) -> str:
        """``Type (status): message`` of a row's error body, read by the live adapter."""
        from ..transport import scrub

        if isinstance(body, dict):
            try:
                err: CencoriError = self.adapter.error_from_body(body, status=status)
            except CencoriError as exc:  # some adapters raise instead of returning
                err = exc
            prefix = type(err).__name__ + (f" ({status})" if status else "")
            return scrub(f"{prefix}: {err.message}")
        return scrub(f"ProviderError ({status}): the provider gave no reason")

    # -- the provider's job calls -----------------------------------------------------
    def create(self, rows: list[tuple[str, dict[str, Any]]], decision: Decision, tag: str) -> str:
        raise NotImplementedError

    def poll(self, job_id: str, decision: Decision) -> PartState:
        raise NotImplementedError

    def results(self, job_id: str, decision: Decision, state: PartState) -> Iterator[RowResult]:
        raise NotImplementedError

    def cancel(self, job_id: str, decision: Decision) -> None:
        raise NotImplementedError


class OpenAIBatches(API):
    name = "openai"

    def _headers(self, decision: Decision) -> dict[str, str]:
        return {"Authorization": f"Bearer {decision.credential.reveal()}"}

    def _url(self, decision: Decision, path: str) -> str:
        return decision.base_url.rstrip("/") + path

    def line(self, custom_id: str, body: dict[str, Any]) -> bytes:
        item = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions"}
        item["body"] = body  # type: ignore[assignment]
        return json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"

    def create(self, rows: list[tuple[str, dict[str, Any]]], decision: Decision, tag: str) -> str:
        import httpx2

        data = b"".join(self.line(cid, body) for cid, body in rows)
        upload = httpx2.Request(
            "POST",
            self._url(decision, "/files"),
            headers=self._headers(decision),
            files={"file": (f"{tag}.jsonl", data, "application/jsonl")},
            data={"purpose": "batch"},
        )
        file_id = _json(_send(upload, self.adapter), self.name).get("id")
        if not isinstance(file_id, str):
            raise BadResponseError("OpenAI's file upload answer has no id.", provider=self.name)
        create = httpx2.Request(
            "POST",
            self._url(decision, "/batches"),
            headers=self._headers(decision),
            json={
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {"cencori_nb_job": tag},
            },
        )
        batch = _json(_send(create, self.adapter), self.name)
        if not isinstance(batch.get("id"), str):
            raise BadResponseError("OpenAI's batch answer has no id.", provider=self.name)
        return str(batch["id"])

    def poll(self, job_id: str, decision: Decision) -> PartState:
        import httpx2

        req = httpx2.Request(
            "GET", self._url(decision, f"/batches/{job_id}"), headers=self._headers(decision)
        )
        b = _json(_send(req, self.adapter), self.name)
        status = str(b.get("status"))
        counts = b.get("request_counts") or {}
        failure = None
        if status == "failed":
            errors = ((b.get("errors") or {}).get("data")) or [{}]
            first = errors[0] or {}
            failure = f"{first.get('code') or 'failed'}: {first.get('message') or 'no reason'}"
        return PartState(
            state=status,
            ended=status in ("completed", "failed", "expired", "cancelled"),
            done=int(counts.get("completed") or 0) + int(counts.get("failed") or 0),
            failed=int(counts.get("failed") or 0),
            total=int(counts.get("total") or 0),
            failure=failure,
            extra={"files": [b.get("output_file_id"), b.get("error_file_id")]},
        )

    def results(self, job_id: str, decision: Decision, state: PartState) -> Iterator[RowResult]:
        import httpx2

        for file_id in state.extra.get("files") or ():
            if not file_id:
                continue
            req = httpx2.Request(
                "GET",
                self._url(decision, f"/files/{file_id}/content"),
                headers=self._headers(decision),
            )
            resp = _send(req, self.adapter, stream=True)
            try:
                for raw in resp.iter_lines():
                    if not raw.strip():
                        continue
                    item = _line(raw)
                    if item is not None:
                        yield self._row(item)
            finally:
                resp.close()

    @staticmethod
    def _row(item: dict[str, Any]) -> RowResult:
        cid = str(item.get("custom_id"))
        response = item.get("response")
        error = item.get("error")
        if isinstance(response, dict):
            status = int(response.get("status_code") or 0)
            outcome = OK if status == 200 else ERROR
            return RowResult(cid, outcome, response.get("body"), status)
        code = (error or {}).get("code") if isinstance(error, dict) else None
        message = (error or {}).get("message") if isinstance(error, dict) else None
        if code == "batch_expired":
            return RowResult(cid, EXPIRED, message=message or "expired")
        if code == "batch_cancelled":
            return RowResult(cid, CANCELLED, message=message or "cancelled")
        return RowResult(cid, ERROR, message=f"{code}: {message}")

    def cancel(self, job_id: str, decision: Decision) -> None:
        import httpx2

        req = httpx2.Request(
            "POST",
            self._url(decision, f"/batches/{job_id}/cancel"),
            headers=self._headers(decision),
        )
        _send(req, self.adapter).close()


class AnthropicBatches(API):
    name = "anthropic"

    def _headers(self, decision: Decision) -> dict[str, str]:
        from ..providers.anthropic import ANTHROPIC_VERSION

        return {"x-api-key": decision.credential.reveal(), "anthropic-version": ANTHROPIC_VERSION}

    def _url(self, decision: Decision, path: str = "") -> str:
        return decision.base_url.rstrip("/") + "/v1/messages/batches" + path

    def line(self, custom_id: str, body: dict[str, Any]) -> bytes:
        item = {"custom_id": custom_id, "params": body}
        return json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode() + b","

    def create(self, rows: list[tuple[str, dict[str, Any]]], decision: Decision, tag: str) -> str:
        import httpx2

        content = b'{"requests":[' + b"".join(self.line(c, b) for c, b in rows)[:-1] + b"]}"
        req = httpx2.Request(
            "POST",
            self._url(decision),
            headers={**self._headers(decision), "Content-Type": "application/json"},
            content=content,
        )
        batch = _json(_send(req, self.adapter), self.name)
        if not isinstance(batch.get("id"), str):
            raise BadResponseError("Anthropic's batch answer has no id.", provider=self.name)
        return str(batch["id"])

    def poll(self, job_id: str, decision: Decision) -> PartState:
        import httpx2

        req = httpx2.Request(
            "GET", self._url(decision, f"/{job_id}"), headers=self._headers(decision)
        )
        b = _json(_send(req, self.adapter), self.name)
        counts = b.get("request_counts") or {}
        done = sum(int(counts.get(k) or 0) for k in ("succeeded", "errored", "canceled", "expired"))
        failed = sum(int(counts.get(k) or 0) for k in ("errored", "canceled", "expired"))
        status = str(b.get("processing_status"))
        return PartState(
            state=status,
            ended=status == "ended",
            done=done,
            failed=failed,
            total=done + int(counts.get("processing") or 0),
        )

    def results(self, job_id: str, decision: Decision, state: PartState) -> Iterator[RowResult]:
        import httpx2

        req = httpx2.Request(
            "GET", self._url(decision, f"/{job_id}/results"), headers=self._headers(decision)
        )
        resp = _send(req, self.adapter, stream=True)
        try:
            for raw in resp.iter_lines():
                if not raw.strip():
                    continue
                item = _line(raw)
                if item is None:
                    continue
                cid = str(item.get("custom_id"))
                result = item.get("result") or {}
                kind = result.get("type")
                if kind == "succeeded":
                    yield RowResult(cid, OK, result.get("message"), 200)
                elif kind == "errored":
                    yield RowResult(cid, ERROR, result.get("error"), None)
                elif kind == "expired":
                    yield RowResult(cid, EXPIRED, message="expired")
                elif kind == "canceled":
                    yield RowResult(cid, CANCELLED, message="cancelled")
                else:
                    yield RowResult(cid, ERROR, message=f"unknown result type {kind!r}")
        finally:
            resp.close()

    def error_text(self, body: Any, status: int | None) -> str:
        # an errored row carries the API's error body: {"type": "error", "error": {...}}
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            kind = body["error"].get("type")
            status = status or {
                "invalid_request_error": 400,
                "authentication_error": 401,
                "permission_error": 403,
                "not_found_error": 404,
                "rate_limit_error": 429,
                "api_error": 500,
                "overloaded_error": 529,
            }.get(str(kind))
        return super().error_text(body, status)

    def cancel(self, job_id: str, decision: Decision) -> None:
        import httpx2

        req = httpx2.Request(
            "POST", self._url(decision, f"/{job_id}/cancel"), headers=self._headers(decision)
        )
        _send(req, self.adapter).close()


class GoogleBatches(API):
    name = "google"

    def _headers(self, decision: Decision) -> dict[str, str]:
        return {"x-goog-api-key": decision.credential.reveal()}

    def _url(self, decision: Decision, path: str) -> str:
        from ..providers.google import API_VERSION

        return decision.base_url.rstrip("/") + f"/{API_VERSION}" + path

    def line(self, custom_id: str, body: dict[str, Any]) -> bytes:
        item = {"request": body, "metadata": {"key": custom_id}}
        return json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode() + b","

    def create(self, rows: list[tuple[str, dict[str, Any]]], decision: Decision, tag: str) -> str:
        from urllib.parse import quote

        import httpx2

        model = quote(decision.model.removeprefix("models/"), safe="-._~")
        head = json.dumps({"displayName": tag}, separators=(",", ":"))[:-1]
        content = (
            b'{"batch":'
            + head.encode()
            + b',"inputConfig":{"requests":{"requests":['
            + b"".join(self.line(c, b) for c, b in rows)[:-1]
            + b"]}}}}"
        )
        req = httpx2.Request(
            "POST",
            self._url(decision, f"/models/{model}:batchGenerateContent"),
            headers={**self._headers(decision), "Content-Type": "application/json"},
            content=content,
        )
        op = _json(_send(req, self.adapter), self.name)
        name = op.get("name")
        if not isinstance(name, str) or not name.startswith("batches/"):
            raise BadResponseError("Gemini's batch answer has no batch name.", provider=self.name)
        return name.removeprefix("batches/")

    def poll(self, job_id: str, decision: Decision) -> PartState:
        import httpx2

        req = httpx2.Request(
            "GET", self._url(decision, f"/batches/{job_id}"), headers=self._headers(decision)
        )
        op = _json(_send(req, self.adapter), self.name)
        meta = op.get("metadata") or {}
        state = str(meta.get("state") or "BATCH_STATE_UNSPECIFIED")
        stats = meta.get("batchStats") or {}
        ok = int(stats.get("successfulRequestCount") or 0)
        failed = int(stats.get("failedRequestCount") or 0)
        failure = None
        if state == "BATCH_STATE_FAILED":
            failure = str((op.get("error") or {}).get("message") or "the batch failed")
        ended = bool(op.get("done")) or state in (
            "BATCH_STATE_SUCCEEDED",
            "BATCH_STATE_FAILED",
            "BATCH_STATE_CANCELLED",
            "BATCH_STATE_EXPIRED",
        )
        output = (meta.get("output") or {}).get("inlinedResponses") or {}
        return PartState(
            state=state,
            ended=ended,
            done=ok + failed,
            failed=failed,
            total=int(stats.get("requestCount") or 0),
            failure=failure,
            extra={"responses": output.get("inlinedResponses")},
        )

    def results(self, job_id: str, decision: Decision, state: PartState) -> Iterator[RowResult]:
        responses = state.extra.get("responses")
        if responses is None:  # the poll that saw the end did not carry them: ask again
            responses = self.poll(job_id, decision).extra.get("responses") or []
        keys: list[str] = state.extra.get("keys") or []
        for i, item in enumerate(responses):
            key = ((item.get("metadata") or {}).get("key")) if isinstance(item, dict) else None
            cid = str(key) if key is not None else (keys[i] if i < len(keys) else str(i))
            if isinstance(item, dict) and item.get("response") is not None:
                yield RowResult(cid, OK, item["response"], 200)
                continue
            error = (item.get("error") if isinstance(item, dict) else None) or {}
            code = error.get("code")
            if state.state == "BATCH_STATE_CANCELLED" and code == 1:
                yield RowResult(cid, CANCELLED, message="cancelled")
            elif code == 4 or state.state == "BATCH_STATE_EXPIRED":
                yield RowResult(cid, EXPIRED, message=str(error.get("message") or "expired"))
            else:
                grpc = code if isinstance(code, int) else 13
                status = {3: 400, 5: 404, 7: 403, 8: 429, 13: 500, 14: 503, 16: 401}.get(grpc, 500)
                yield RowResult(cid, ERROR, {"error": error}, status)

    def cancel(self, job_id: str, decision: Decision) -> None:
        import httpx2

        req = httpx2.Request(
            "POST",
            self._url(decision, f"/batches/{job_id}:cancel"),
            headers=self._headers(decision),
        )
        _send(req, self.adapter).close()


_APIS: dict[str, type[API]] = {
    "openai": OpenAIBatches,
    "anthropic": AnthropicBatches,
    "google": GoogleBatches,
}


def api_for(provider: str) -> API | None:
    """The Batch API of ``provider`` (None: it has none)."""
    cls = _APIS.get(provider)
    if cls is None:
        return None
    from ..providers.base import get_provider

    return cls(get_provider(provider))
