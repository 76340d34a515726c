"""Google Gemini, the Developer API (``generateContent`` / ``streamGenerateContent``).

- URL: ``POST {base}/v1beta/models/{model}:generateContent``, and for streams
  ``…:streamGenerateContent?alt=sse`` (without ``alt=sse`` Google streams one JSON array,
  which is not SSE). The key goes ONLY in the ``x-goog-api-key`` header: a ``?key=`` query
  parameter would put it in every URL that gets logged.
- request: ``contents`` (roles ``user`` / ``model``), ``systemInstruction``,
  ``generationConfig.{maxOutputTokens, temperature}``.
- usage: input = ``promptTokenCount + toolUsePromptTokenCount`` (prompt already includes
  ``cachedContentTokenCount``), output = ``candidatesTokenCount + thoughtsTokenCount``
  (thinking is billed as output), cache read = ``cachedContentTokenCount``; the model that
  served is ``modelVersion``.
- stream: each ``data:`` frame is a whole ``GenerateContentResponse``; there is no
  ``[DONE]``: the frame whose candidate has a ``finishReason`` (it carries the final
  ``usageMetadata``) ends it.
- blocks: a prompt Google's filters stop before the model runs comes back **200** with
  ``promptFeedback.blockReason``, no ``candidates`` and ``usageMetadata`` counting the
  prompt (``promptTokenCount``, no ``candidatesTokenCount``): the prompt is billed, so the
  usage is recorded and priced, then :class:`RefusalError` (``code: prompt_blocked``) is
  raised with that completion. A candidate stopped by a filter (``finishReason: SAFETY``,
  ``RECITATION``, ``PROHIBITED_CONTENT``…) is an answer with no text whose ``refusal`` is
  set, as the other adapters treat a refusal (``schema=`` turns it into RefusalError).
- errors: Google RPC ``{"error": {"code", "message", "status", "details": [...]}}``; an
  invalid key is ``INVALID_ARGUMENT`` (400) with ``ErrorInfo.reason == "API_KEY_INVALID"``;
  ``RetryInfo.retryDelay`` (``"34s"``) is the retry hint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..catalog import PROVIDERS
from ..errors import (
    BadResponseError,
    CencoriError,
    RateLimitError,
    RefusalError,
)
from ..types import ChatRequest, Usage
from . import _common as c
from ._images import google_parts
from .base import Provider, ProviderResult, register

if TYPE_CHECKING:
    import httpx2

    from ..keystore.secret import Secret
    from ..schemas import Schema

__all__ = [
    "API_VERSION",
    "blocked_prompt",
    "GeminiStreamParser",
    "GoogleProvider",
    "gemini_usage",
    "response_schema_config",
]

API_VERSION = "v1beta"  # systemInstruction and thinking fields are served here first

_BAD_KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})


def gemini_usage(raw: Any) -> Usage | None:
    """Our :class:`Usage` from ``usageMetadata`` (None when absent)."""
    if not isinstance(raw, dict):
        return None
    thoughts = c.to_int(raw.get("thoughtsTokenCount"))
    return Usage(
        input_tokens=c.to_int(raw.get("promptTokenCount"))
        + c.to_int(raw.get("toolUsePromptTokenCount")),
        output_tokens=c.to_int(raw.get("candidatesTokenCount")) + thoughts,
        cache_read_tokens=c.to_int(raw.get("cachedContentTokenCount")),
        thinking_tokens=thoughts,
        image_tokens=sum(
            c.to_int(d.get("tokenCount"))
            for d in raw.get("promptTokensDetails") or ()
            if isinstance(d, dict) and d.get("modality") == "IMAGE"
        ),
    )


def response_schema_config(schema: Schema) -> dict[str, Any]:
    """``schema=`` as ``generationConfig`` fields: ``responseMimeType: application/json`` and
    ``responseJsonSchema`` (plain JSON Schema; what google-genai sends for
    ``response_json_schema=``)."""
    return {
        "responseMimeType": "application/json",
        "responseJsonSchema": schema.wire("gemini"),
    }


# finishReasons that mean the model was stopped for what it would say, not for length
# (google-genai's FinishReason); MALFORMED_FUNCTION_CALL and OTHER are not refusals.
_REFUSAL_REASONS = frozenset(
    {
        "SAFETY",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)


def _refusal(candidate: Any, text: str) -> str | None:
    reason = candidate.get("finishReason") if isinstance(candidate, dict) else None
    if reason in _REFUSAL_REASONS:
        return text or f"stopped by Google's content filter ({reason})"
    return None


def blocked_prompt(
    body: dict[str, Any],
    *,
    request_id: str | None,
    key: str | Callable[[], str | None] | None = None,
) -> RefusalError | None:
    """The error for a prompt Google blocked before the model ran (a 200 with
    ``promptFeedback.blockReason`` and no candidates), or None for any other body.
    ``key`` (kept out of the message) may be a function: called only for a blocked
    prompt, not for every answer.

    The prompt is billed (``usageMetadata.promptTokenCount``), so this is not raised here:
    it rides on the :class:`ProviderResult` and the client raises it once the usage is
    recorded, with the completion attached."""
    feedback = body.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    if not reason or body.get("candidates"):
        return None
    if callable(key):
        key = key()
    secrets = [key] if key else []
    reason = c.quote(str(reason)[:64], secrets)
    said = feedback.get("blockReasonMessage") if isinstance(feedback, dict) else None
    quoted = c.quote(str(said), secrets) if said else ""
    if quoted and quoted[-1] not in ".!?…":
        quoted += "."
    tokens = c.to_int(c.dig(body, "usageMetadata", "promptTokenCount"))
    billed = (
        f" Its {tokens} prompt tokens were billed and are recorded (.completion)." if tokens else ""
    )
    # cencori_nb sends Google's default safetySettings (chat() has no way to change them),
    # so whatever the reason, the same prompt is blocked, and billed, again
    hint = "Rephrase the prompt or use another provider: sent again as is, it is blocked again."
    return RefusalError(
        f"Google blocked the prompt before the model answered ({reason})."
        + (f" Google said: {quoted}" if quoted else "")
        + billed,
        code="prompt_blocked",
        hint=hint,
        provider="google",
        request_id=request_id,
        refusal=f"prompt blocked ({reason})",
    )


def _candidate_text(candidate: Any) -> str:
    """The visible text of a candidate (thought summaries left out)."""
    parts = c.dig(candidate, "content", "parts")
    if not isinstance(parts, list):
        return ""
    return "".join(
        str(p.get("text") or "") for p in parts if isinstance(p, dict) and not p.get("thought")
    )


class GoogleProvider(Provider):
    """The Gemini Developer API wire format."""

    name = "google"
    sandbox_prefix = "/google"
    default_base_url = PROVIDERS["google"].base_url
    request_id_headers = ("x-request-id",)  # Google sends none; the body has responseId

    def __repr__(self) -> str:
        return "GoogleProvider()"

    def build_request(
        self, request: ChatRequest, *, model: str, api_key: Secret, base_url: str
    ) -> httpx2.Request:
        """The ``generateContent`` (or ``streamGenerateContent?alt=sse``) request."""
        model_id = model.removeprefix("models/")
        method = "streamGenerateContent" if request.stream else "generateContent"
        url = c.join_base(
            base_url, f"/{API_VERSION}/models/{quote(model_id, safe='-._~')}:{method}"
        )
        system = [{"text": m.content} for m in request.messages if m.role == "system"]
        body: dict[str, Any] = {
            "contents": [
                {
                    "role": "model" if m.role == "assistant" else "user",
                    "parts": google_parts(m),
                }
                for m in request.messages
                if m.role != "system"
            ],
        }
        if system:
            body["systemInstruction"] = {"parts": system}
        config: dict[str, Any] = {}
        if request.max_tokens is not None:
            config["maxOutputTokens"] = request.max_tokens
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.schema is not None:
            config.update(response_schema_config(request.schema))
        extra = dict(request.extra)
        if isinstance(extra.get("generationConfig"), dict):  # merge, not replace
            config.update(extra.pop("generationConfig"))
        if config:
            body["generationConfig"] = config
        c.reject_reserved(extra, {"contents", "model", "stream"})
        body.update(extra)
        return c.json_request(
            url,
            {"x-goog-api-key": api_key.reveal()},
            body,
            stream=request.stream,
            params={"alt": "sse"} if request.stream else None,
        )

    def parse_response(self, response: httpx2.Response) -> ProviderResult:
        """Text of the first candidate, ``modelVersion``, usage and finish reason."""
        rid = self.request_id(response)
        body = c.response_json(response, provider=self.name, request_id=rid)
        rid = rid or body.get("responseId")
        if body.get("error"):
            raise self.error_from_body(body, status=None, key=c.sent_key(response), request_id=rid)
        blocked = blocked_prompt(body, request_id=rid, key=lambda: c.sent_key(response))
        if blocked is not None:
            return ProviderResult(
                text="",
                model=body.get("modelVersion") or None,
                usage=gemini_usage(body.get("usageMetadata")),
                request_id=rid,
                refusal=blocked.refusal,
                error=blocked,
            )
        where: c.Where = {
            "provider": self.name,
            "status_code": response.status_code,
            "request_id": rid,
        }
        candidate = c.require(body, "candidates", 0, **where)
        text = _candidate_text(candidate)
        return ProviderResult(
            text=text,
            refusal=_refusal(candidate, text),
            model=body.get("modelVersion") or None,
            usage=gemini_usage(body.get("usageMetadata")),
            finish_reason=candidate.get("finishReason") if isinstance(candidate, dict) else None,
            request_id=rid,
        )

    def stream_parser(self, response: httpx2.Response | None = None) -> GeminiStreamParser:
        """A parser for ``alt=sse`` frames; the one with a ``finishReason`` ends the stream."""
        return GeminiStreamParser(self, **c.stream_context(self, response))

    def map_error(self, response: httpx2.Response) -> CencoriError:
        """The error for a >= 400 response (the one place Google errors map)."""
        body = c.error_json(response)
        if isinstance(body, list) and body and isinstance(body[0], dict):
            body = body[0]  # the non-SSE stream endpoint wraps errors in an array
        return c.map_error_body(self, response, body)

    def error_from_body(
        self,
        body: dict[str, Any],
        *,
        status: int | None,
        key: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> CencoriError:
        """Map a Google RPC error (from an error response or a stream frame)."""
        err = c.as_object(body.get("error"))
        rpc_status = str(err.get("status") or "")
        if status is None and isinstance(err.get("code"), int):
            status = err["code"]
        details = c.as_list(err.get("details"))
        reasons = {
            str(d.get("reason"))
            for d in details
            if isinstance(d, dict) and str(d.get("@type", "")).endswith("ErrorInfo")
        }
        if retry_after is None:  # an error frame inside a stream: only the body says
            retry_after = c.retry_after(None, body)
        daily = any(
            isinstance(v, dict) and "PerDay" in str(v.get("quotaId", ""))
            for d in details
            if isinstance(d, dict)
            for v in (d.get("violations") or [])
        )
        # Google answers a bad key with 400 INVALID_ARGUMENT and ErrorInfo API_KEY_INVALID:
        # the reason is more precise than the status, which is more precise than the RPC code.
        cls = c.error_class(status, *sorted(reasons), rpc_status or None)
        hint: str | None = None
        retryable: bool | None = None
        if cls is RateLimitError and daily:
            # A daily quota stays exhausted until it resets: retrying now only wastes calls.
            retryable = False
            hint = (
                "The key's daily Gemini quota is used up; it resets at midnight Pacific "
                "time. Use another key or route until then."
            )
        elif rpc_status == "NOT_FOUND":
            hint = "Check the model name: Google does not know it or this key cannot use it."
        elif rpc_status == "INVALID_ARGUMENT" and c.context_overflow(err.get("message")):
            hint = c.CONTEXT_HINT  # "The input token count (N) exceeds the maximum …"
        elif rpc_status == "FAILED_PRECONDITION":
            hint = (
                "Google refuses this request in the key's current state (e.g. billing "
                "not enabled, or the region is not supported)."
            )
        code = next(iter(sorted(reasons)), None) or rpc_status or None
        return c.build_error(
            cls,
            provider=self.name,
            status=status,
            said=err.get("message"),
            code=code.lower() if code else None,
            request_id=request_id,
            retry_after=retry_after,
            key=key,
            hint=hint,
            retryable=retryable,
            rpc_status=rpc_status or None,
        )


class GeminiStreamParser(c.AdapterStreamParser):
    """``alt=sse`` frames. Usage is reported once the final frame (with ``finishReason``)
    arrived; a stream cut before it yields ``done=False`` and ``usage=None``."""

    adapter: GoogleProvider

    def __init__(
        self, adapter: GoogleProvider, *, request_id: str | None = None, key: str | None = None
    ) -> None:
        super().__init__(adapter, request_id=request_id, key=key)
        self._usage_raw: Any = None
        self.error: RefusalError | None = None  # a blocked prompt (see blocked_prompt)

    def result(self) -> ProviderResult:
        result = super().result()
        result.error = self.error
        return result

    def feed(self, event: httpx2.ServerSentEvent) -> str | None:
        if not event.data.strip():
            return None
        frame = self.json(event)
        if isinstance(frame, list) and len(frame) == 1:
            frame = frame[0]
        if not isinstance(frame, dict):
            raise BadResponseError(
                "A Gemini stream frame is not a JSON object.",
                provider=self.provider,
                request_id=self.request_id,
            )
        if frame.get("error"):
            raise self.adapter.error_from_body(
                frame, status=None, key=self.key, request_id=self.request_id
            )
        if isinstance(frame.get("usageMetadata"), dict):
            self._usage_raw = frame["usageMetadata"]
            if self.done:  # a late usage-only frame after the finish still counts
                self.usage = gemini_usage(self._usage_raw)
        if self.done:
            return None
        if frame.get("modelVersion"):
            self.model = str(frame["modelVersion"])
        if self.request_id is None and frame.get("responseId"):
            self.request_id = str(frame["responseId"])
        blocked = blocked_prompt(frame, request_id=self.request_id, key=self.key)
        if blocked is not None:  # the only frame of a blocked prompt's stream
            self.error = blocked
            self.refusal = blocked.refusal
            self.done = True
            self.usage = gemini_usage(self._usage_raw)
            return None
        candidates = frame.get("candidates")
        candidate = candidates[0] if isinstance(candidates, list) and candidates else None
        if not isinstance(candidate, dict):
            return None
        text = self.emit(_candidate_text(candidate))
        if candidate.get("finishReason"):
            self.finish_reason = str(candidate["finishReason"])
            self.refusal = _refusal(candidate, "".join(self.parts))
            self.done = True
            self.usage = gemini_usage(self._usage_raw)
        return text


register(GoogleProvider())
