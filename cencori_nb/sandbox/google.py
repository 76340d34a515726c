"""The Gemini (Generative Language API) door under ``/google``.

``/{v1,v1beta}/models/{model}:generateContent`` and ``:streamGenerateContent`` — with
``?alt=sse`` a stream of ``data: {GenerateContentResponse}`` frames with no terminator and
``usageMetadata`` on the last frame; without it one JSON array of those responses, as
Google does. The key is read from ``x-goog-api-key`` (``?key=`` also works, though no
client of ours sends it). Errors are Google RPC style ``{"error": {"code", "message",
"status", "details"}}``; a 429 carries ``Retry-After`` and a ``RetryInfo`` detail.

One deliberate difference: Google answers an invalid key with 400 ``INVALID_ARGUMENT`` and
reason ``API_KEY_INVALID``; the sandbox contract promises every provider's 401 for a
revoked key, so it answers 401 ``UNAUTHENTICATED`` with that same reason.
"""

from __future__ import annotations

from typing import Any

from .common import (
    BadRequest,
    ChatCall,
    Door,
    Exchange,
    Headers,
    dumps,
    json_str,
    max_tokens_of,
    text_of,
)
from .openai import NOT_FOUND_MARK, SANDBOX_TAG
from .replies import Reply

__all__ = ["GoogleDoor"]

_ERRORS: dict[str, tuple[int, str, str]] = {
    "missing_key": (403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers "
                    "(callers without established identity). Please use API Key or other form "
                    "of API consumer identity to call this API."),
    "invalid_key": (401, "UNAUTHENTICATED", "API key not valid. Please pass a valid API key."),
    "payment": (402, "FAILED_PRECONDITION", "Billing is not enabled or the prepaid balance "
                "is exhausted for this project."),
    "permission": (403, "PERMISSION_DENIED", "The caller does not have permission."),
    "not_found": (404, "NOT_FOUND", "The model is not found or is not supported."),
    "rate_limit": (429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check "
                   "quota)."),
    "server": (500, "INTERNAL", "An internal error has occurred. Please retry."),
    "unavailable": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
    "bad_request": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
}


def _parts_text(content: Any) -> str:
    """Text of a Content (``{"parts": [{"text": …}]}``), a part list or a plain string."""
    if isinstance(content, dict) and "parts" in content:
        return text_of(content.get("parts"))
    return text_of(content)


class GoogleDoor(Door):
    name = "google"

    def api_key(self, req: Any) -> str | None:
        key = req.headers.get("x-goog-api-key") or req.query.get("key") or ""
        return key.strip() or None

    def send_error(self, ex: Exchange, kind: str, message: str | None = None, *,
                   status: int | None = None, retry_after: int | None = None,
                   param: str | None = None, code: str | None = None) -> None:
        default_status, rpc_status, default_message = _ERRORS.get(kind, _ERRORS["server"])
        status = status or default_status
        details: list[dict[str, Any]] = []
        headers: Headers = [("x-request-id", ex.request_id)]
        if kind in ("invalid_key", "missing_key"):
            details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "API_KEY_INVALID" if kind == "invalid_key"
                            else "CONSUMER_INVALID", "domain": "googleapis.com",
                            "metadata": {"service": "generativelanguage.googleapis.com"}})
        if status == 429:
            delay = retry_after or 1
            headers.append(("Retry-After", str(delay)))
            details += [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                         "violations": [{"quotaMetric": "generativelanguage.googleapis.com/"
                                         "generate_content_requests",
                                         "quotaId": "GenerateRequestsPerMinutePerProject"}]},
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                         "retryDelay": f"{delay}s"}]
        ex.send_json(status, {"error": {"code": status,
                                        "message": (message or default_message) + SANDBOX_TAG,
                                        "status": rpc_status, "details": details}}, headers)

    def ok_headers(self, ex: Exchange) -> Headers:
        return [("x-request-id", ex.request_id),
                ("server-timing", f"gfet4t7; dur={ex.elapsed_ms()}")]

    def parse(self, ex: Exchange) -> ChatCall:
        path = ex.req.path
        version = path.split("/")[2]
        model, _, verb = path.split("/models/", 1)[1].rpartition(":")
        try:
            body = ex.req.json()
        except ValueError:
            raise BadRequest("Invalid JSON payload received.") from None
        if not isinstance(body, dict):
            raise BadRequest("Invalid JSON payload received: expected an object.")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
        system = body.get("systemInstruction") or body.get("system_instruction")
        conversation = [_parts_text(system)] if system else []
        last_user = ""
        for content in contents:
            if not isinstance(content, dict):
                raise BadRequest("* GenerateContentRequest.contents: each content must be an "
                                 "object with parts")
            text = _parts_text(content)
            conversation.append(text)
            if content.get("role", "user") == "user":
                last_user = text
        config = body.get("generationConfig") or body.get("generation_config") or {}
        limit = config.get("maxOutputTokens", config.get("max_output_tokens")) \
            if isinstance(config, dict) else None
        max_tokens = max_tokens_of(limit, "generationConfig.maxOutputTokens")
        if NOT_FOUND_MARK in model:
            raise BadRequest(f"models/{model} is not found for API version {version}, or is "
                             f"not supported for {verb}.", status=404, kind="not_found")
        stream = verb == "streamGenerateContent"
        return ChatCall(model=model, provider=self.name, conversation=conversation,
                        last_user=last_user, max_tokens=max_tokens, stream=stream,
                        extra={"sse": ex.req.query.get("alt") == "sse"})

    @staticmethod
    def _usage(reply: Reply) -> dict[str, Any]:
        return {"promptTokenCount": reply.input_tokens,
                "candidatesTokenCount": reply.output_tokens,
                "totalTokenCount": reply.input_tokens + reply.output_tokens,
                "thoughtsTokenCount": 0,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": reply.input_tokens}]}

    async def respond(self, ex: Exchange, call: ChatCall, reply: Reply) -> None:
        finish = "MAX_TOKENS" if reply.truncated else "STOP"
        response_id = ex.request_id[4:]
        if not call.stream:
            ex.send_json(200, {
                "candidates": [{"content": {"parts": [{"text": reply.text}], "role": "model"},
                                "finishReason": finish, "index": 0}],
                "usageMetadata": self._usage(reply), "modelVersion": call.model,
                "responseId": response_id}, self.ok_headers(ex))
            return
        tail = f',"modelVersion":{dumps(call.model)},"responseId":"{response_id}"}}'
        last = len(reply.pieces) - 1
        frames = []
        for i, piece in enumerate(reply.pieces):
            candidate = '{"candidates":[{"content":{"parts":[{"text":' + json_str(piece) + \
                '}],"role":"model"}' + (f',"finishReason":"{finish}"' if i == last else "") + \
                ',"index":0}]'
            usage = ',"usageMetadata":' + dumps(self._usage(reply)) if i == last else ""
            frames.append(candidate + usage + tail)
        if not call.extra.get("sse"):
            # without alt=sse Google streams one JSON array of responses
            import json

            ex.send_json(200, [json.loads(f) for f in frames], self.ok_headers(ex))
            return
        sse = ex.sse(self.ok_headers(ex), content_frames=len(frames), separator="\r\n\r\n")
        for frame in frames:
            await sse.frame(frame, content=True)
        await sse.close()
