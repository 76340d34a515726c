"""The OpenAI Chat Completions door, and the OpenAI-compatible family on the same code.

``/openai/v1`` and ``/<provider>/v1`` for mistral, groq, xai, deepseek, together,
openrouter and local. Auth is ``Authorization: Bearer``; errors are
``{"error": {"message", "type", "param", "code"}}`` with ``x-request-id`` and the
``x-ratelimit-*`` headers; streams are ``data: {chunk}`` lines ending with ``data: [DONE]``,
with a separate usage chunk (empty ``choices``) when ``stream_options.include_usage`` is set.
OpenRouter differs the way the real one does: an SSE comment ``: OPENROUTER PROCESSING``,
usage always sent (with ``usage.cost``) and integer error codes. Mistral puts usage on the
last chunk without being asked and answers 422 to ``stream_options``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from .common import (
    BadRequest,
    ChatCall,
    Door,
    Exchange,
    Headers,
    bearer,
    dumps,
    json_str,
    max_tokens_of,
    text_of,
)
from .replies import Reply
from .wallet import provider_cost

__all__ = ["MODELS", "OpenAIDoor", "read_openai_chat"]

SANDBOX_TAG = " [cencori-nb sandbox]"

MODELS: dict[str, tuple[str, ...]] = {
    "openai": ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3-mini",
               "o4-mini"),
    "mistral": ("mistral-small-latest", "mistral-large-latest", "codestral-latest",
                "open-mistral-nemo"),
    "groq": ("llama-3.3-70b-versatile", "llama-3.1-8b-instant", "mixtral-8x7b-32768"),
    "xai": ("grok-3-mini", "grok-3", "grok-4"),
    "deepseek": ("deepseek-chat", "deepseek-reasoner"),
    "together": ("meta-llama/Llama-3.3-70B-Instruct-Turbo",),
    "openrouter": ("openai/gpt-4o-mini", "anthropic/claude-3.5-haiku",
                   "meta-llama/llama-3.3-70b-instruct:free"),
    "local": ("llama3.2",),
}

NOT_FOUND_MARK = "does-not-exist"   # a model id containing this gets each door's 404


def read_openai_chat(body: Any, *, default_model: str | None = None) -> dict[str, Any]:
    """Validate an OpenAI-style chat body; return model, texts, max_tokens, stream flags."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = body.get("model") or default_model
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array of {role, content} objects.",
                         param="messages")
    conversation: list[str] = []
    last_user = ""
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a 'role'.",
                             param=f"messages[{i}]")
        text = text_of(message.get("content"))
        conversation.append(text)
        if message["role"] == "user":
            last_user = text
    max_tokens = max_tokens_of(body.get("max_completion_tokens"), "max_completion_tokens")
    if max_tokens is None:
        max_tokens = max_tokens_of(body.get("max_tokens"), "max_tokens")
    options = body.get("stream_options") or {}
    return {"model": model, "conversation": conversation, "last_user": last_user,
            "max_tokens": max_tokens, "stream": bool(body.get("stream")),
            "include_usage": bool(isinstance(options, dict) and options.get("include_usage"))}


class OpenAIDoor(Door):
    """OpenAI (``name="openai"``) or one OpenAI-compatible provider."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.openrouter = name == "openrouter"
        # Mistral: usage rides on the last chunk by default, and its schema refuses
        # unknown fields such as stream_options (422)
        self.mistral = name == "mistral"

    # --- auth and errors ----------------------------------------------------------------
    def api_key(self, req: Any) -> str | None:
        return bearer(req.headers)

    def error_object(self, ex: Exchange, kind: str, message: str | None, status: int | None,
                     retry_after: int | None, param: str | None,
                     code: str | None) -> tuple[int, dict[str, Any]]:
        """``(status, inner error object)`` in OpenAI's vocabulary."""
        hint = ex.hint
        table: dict[str, tuple[int, str, str, str | None]] = {
            "missing_key": (401, "You didn't provide an API key. You need to provide your API "
                            "key in an Authorization header using Bearer auth (i.e. "
                            "Authorization: Bearer YOUR_KEY).", "invalid_request_error", None),
            "invalid_key": (401, f"Incorrect API key provided: {hint}. You can find your API "
                            "key at your provider's dashboard.", "invalid_request_error",
                            "invalid_api_key"),
            "payment": (402, "You exceeded your current quota, please check your plan and "
                        "billing details.", "insufficient_quota", "insufficient_quota"),
            "permission": (403, "You are not allowed to use this model with this key.",
                           "permission_error", "permission_denied"),
            "rate_limit": (429, f"Rate limit reached for requests per min (RPM) on key {hint}. "
                           f"Please try again in {retry_after or 1}s.", "requests",
                           "rate_limit_exceeded"),
            "server": (500, "The server had an error while processing your request. Sorry "
                       "about that!", "server_error", None),
            "unavailable": (503, "The engine is currently overloaded, please try again later.",
                            "server_error", None),
            "not_found": (404, "The model does not exist or you do not have access to it.",
                          "invalid_request_error", "model_not_found"),
            "bad_request": (400, "Invalid request.", "invalid_request_error", None),
        }
        default_status, default_message, type_, default_code = table.get(kind, table["server"])
        return status or default_status, {
            "message": (message or default_message) + SANDBOX_TAG, "type": type_,
            "param": param, "code": code if code is not None else default_code}

    def send_error(self, ex: Exchange, kind: str, message: str | None = None, *,
                   status: int | None = None, retry_after: int | None = None,
                   param: str | None = None, code: str | None = None) -> None:
        status, error = self.error_object(ex, kind, message, status, retry_after, param, code)
        if self.openrouter:   # OpenRouter: integer code, metadata object
            error = {"code": status, "message": error["message"], "metadata": {}}
        headers = self.error_headers(ex, status, retry_after)
        ex.send_json(status, {"error": error}, headers)

    def error_headers(self, ex: Exchange, status: int, retry_after: int | None) -> Headers:
        headers = [("x-request-id", ex.request_id)]
        if status == 429:
            headers += [("retry-after", str(retry_after or 1))]
            headers += self.ratelimit_headers(ex, remaining=0, reset=retry_after or 1)
        return headers

    def ratelimit_headers(self, ex: Exchange, *, remaining: int | None = None,
                          reset: int | None = None) -> Headers:
        limiter = ex.server.limiter
        limit = limiter.rpm or 10_000
        if remaining is None:
            remaining = ex.remaining if limiter.rpm else limit - 1
        if reset is None:
            reset = limiter.reset_seconds(ex.key or "") if limiter.rpm else 0
        return [("x-ratelimit-limit-requests", str(limit)),
                ("x-ratelimit-remaining-requests", str(remaining)),
                ("x-ratelimit-reset-requests", f"{reset}s" if reset else "6ms"),
                ("x-ratelimit-limit-tokens", "10000000"),
                ("x-ratelimit-remaining-tokens", "10000000"),
                ("x-ratelimit-reset-tokens", "0s")]

    def ok_headers(self, ex: Exchange) -> Headers:
        headers = [("x-request-id", ex.request_id),
                   ("openai-processing-ms", str(ex.elapsed_ms())),
                   ("openai-version", "2020-10-01"), *self.ratelimit_headers(ex)]
        if self.openrouter:
            headers.append(("x-generation-id", "gen-" + ex.request_id[4:]))
        return headers

    def models(self) -> Iterable[tuple[str, str]]:
        owner = "system" if self.name == "openai" else self.name
        return ((m, owner) for m in MODELS.get(self.name, ()))

    # --- requests -----------------------------------------------------------------------
    def parse(self, ex: Exchange) -> ChatCall:
        try:
            body = ex.req.json()
        except ValueError:
            raise BadRequest("We could not parse the JSON body of your request.") from None
        fields = read_openai_chat(body)
        if self.mistral and "stream_options" in body:
            raise BadRequest("stream_options: Extra inputs are not permitted "
                             "(extra_forbidden)", param="stream_options",
                             code="extra_forbidden", status=422)
        if NOT_FOUND_MARK in fields["model"]:
            raise BadRequest(f"The model `{fields['model']}` does not exist or you do not "
                             "have access to it.", status=404, kind="not_found",
                             code="model_not_found")
        return ChatCall(provider=self.name, **fields)

    # hooks for the gateway door and OpenRouter
    def usage_extra(self, call: ChatCall, reply: Reply) -> dict[str, Any]:
        if self.openrouter:
            cost = provider_cost(self.name, call.model, reply.input_tokens, reply.output_tokens)
            return {"cost": float(cost or 0)}
        return {}

    def top_extra(self, call: ChatCall, reply: Reply) -> dict[str, Any]:
        return {}

    def usage(self, call: ChatCall, reply: Reply) -> dict[str, Any]:
        return {"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
                "total_tokens": reply.input_tokens + reply.output_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0,
                                              "rejected_prediction_tokens": 0},
                **self.usage_extra(call, reply)}

    async def respond(self, ex: Exchange, call: ChatCall, reply: Reply) -> None:
        finish = "length" if reply.truncated else "stop"
        cid = ("gen-" if self.openrouter else "chatcmpl-") + ex.request_id[4:]
        created = int(time.time())
        if not call.stream:
            ex.send_json(200, {
                "id": cid, "object": "chat.completion", "created": created, "model": call.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text,
                                                     "refusal": None, "annotations": []},
                             "logprobs": None, "finish_reason": finish}],
                "usage": self.usage(call, reply), "service_tier": "default",
                "system_fingerprint": "fp_sandbox", **self.top_extra(call, reply)},
                self.ok_headers(ex))
            return
        with_usage = call.include_usage or self.openrouter
        head = (f'{{"id":"{cid}","object":"chat.completion.chunk","created":{created},'
                f'"model":{dumps(call.model)},"service_tier":"default",'
                '"system_fingerprint":"fp_sandbox","choices":[{"index":0,"delta":')
        tail = '"logprobs":null,"finish_reason":'
        usage_null = ',"usage":null}' if with_usage else "}"
        sse = ex.sse(self.ok_headers(ex), content_frames=len(reply.pieces))
        if self.openrouter:
            sse.comment("OPENROUTER PROCESSING")
        await sse.frame(head + '{"role":"assistant","content":"","refusal":null},' + tail
                        + "null}]" + usage_null)
        for piece in reply.pieces:
            await sse.frame(head + '{"content":' + json_str(piece) + "}," + tail + "null}]"
                            + usage_null, content=True)
        if self.mistral:
            await sse.frame(head + "{}," + tail + f'"{finish}"}}],"usage":'
                            + dumps(self.usage(call, reply)) + "}")
        else:
            await sse.frame(head + "{}," + tail + f'"{finish}"}}]' + usage_null)
        if with_usage:
            usage = {"id": cid, "object": "chat.completion.chunk", "created": created,
                     "model": call.model, "service_tier": "default",
                     "system_fingerprint": "fp_sandbox", "choices": [],
                     "usage": self.usage(call, reply), **self.top_extra(call, reply)}
            await sse.frame(dumps(usage))
        await sse.frame("[DONE]")
        await sse.close()
