"""The OpenAI Chat Completions door, and the OpenAI-compatible family on the same code.

``/openai/v1`` and ``/<provider>/v1`` for mistral, groq, xai, deepseek, together,
openrouter and local. Auth is ``Authorization: Bearer``; errors are
``{"error": {"message", "type", "param", "code"}}`` with ``x-request-id`` and the
``x-ratelimit-*`` headers; streams are ``data: {chunk}`` lines ending with ``data: [DONE]``,
with a separate usage chunk (empty ``choices``) when ``stream_options.include_usage`` is set.
OpenRouter differs the way the real one does: an SSE comment ``: OPENROUTER PROCESSING``,
usage always sent (with ``usage.cost``) and integer error codes. Mistral puts usage on the
last chunk without being asked and answers 422 to ``stream_options``.

Each family's answer has its own fields, as recorded: Groq's usage has queue/prompt/
completion/total times and an ``x_groq`` id, no token details; Mistral's message has
``tool_calls: null``, no ``logprobs``, a bare usage, and its reasoning models
(``magistral-…``) answer with a list of ``thinking`` and ``text`` chunks as the content;
OpenRouter names the upstream ``provider`` and a ``native_finish_reason`` and reports
``cost``/``is_byok`` in usage; OpenAI's reasoning models (o1, o3, o4, gpt-5) spend
``reasoning_tokens``, counted in ``completion_tokens``.

As the real OpenAI API does: an alias is answered with its dated id (``gpt-4o`` →
``gpt-4o-2024-08-06``); an unknown model is 404 ``model_not_found``; a prompt over the
context window is 400 ``context_length_exceeded``; a prompt its safety check flags (the
``prompt-blocked`` fault) is 400 ``invalid_prompt``, before the model runs; running out
of prepaid credit is **429** ``insufficient_quota`` (no ``Retry-After``: waiting does not
help), not 402; an error inside a 200 stream is a ``data: {"error": {…}}`` line.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from .common import (
    NOT_FOUND_MARK,
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
from .images import find_images
from .models import MODELS, context_window, dated, is_known
from .replies import Reply
from .wallet import provider_cost

__all__ = ["MODELS", "NOT_FOUND_MARK", "OpenAIDoor", "read_openai_chat"]

SANDBOX_TAG = " [cencori-nb sandbox]"
# the "provider" OpenRouter names in its answers: the upstream that served the model
_OPENROUTER_UPSTREAMS = {
    "openai": "OpenAI",
    "anthropic": "Anthropic",
    "google": "Google",
    "meta-llama": "Meta",
    "mistralai": "Mistral",
    "x-ai": "xAI",
    "deepseek": "DeepSeek",
    "minimax": "Minimax",
    "qwen": "Alibaba",
}


# xAI's error "code" is the gRPC status text of the HTTP status
_XAI_CODES = {
    400: "Client specified an invalid argument",
    401: "The request does not have valid authentication credentials",
    402: "The request was rejected because of insufficient credits",
    403: "The caller does not have permission to execute the specified operation",
    404: "Some requested entity was not found",
    429: "Some resource has been exhausted",
    500: "Internal error",
    503: "The service is currently unavailable",
}


def _upstream(model: str) -> str:
    vendor = model.split("/", 1)[0] if "/" in model else "openai"
    return _OPENROUTER_UPSTREAMS.get(vendor, vendor.capitalize())


_REASONING = ("o1", "o3", "o4", "gpt-5")  # OpenAI models that reason before answering
_PAD = "sandbox"  # the padding OpenAI ("obfuscation") and Mistral ("p") put in chunks


def response_format_schema(value: Any) -> dict[str, Any] | None:
    """The JSON Schema of a ``response_format`` (None for text / json_object / absent).

    Refused like OpenAI refuses it: a ``json_schema`` without ``name`` or ``schema``, and,
    under ``strict: true``, an object that does not set ``additionalProperties: false`` or
    does not list every property in ``required`` (OpenAI's own message for each).
    """
    if not isinstance(value, dict) or value.get("type") != "json_schema":
        return None
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise BadRequest(
            "Missing required parameter: 'response_format.json_schema.name'.",
            param="response_format.json_schema.name",
            code="missing_required_parameter",
        )
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise BadRequest(
            "Missing required parameter: 'response_format.json_schema.schema'.",
            param="response_format.json_schema.schema",
            code="missing_required_parameter",
        )
    if spec.get("strict"):
        problem = strict_problem(schema, ())
        if problem:
            raise BadRequest(
                f"Invalid schema for response_format '{spec['name']}': {problem}",
                param="response_format",
                code="invalid_json_schema",
            )
    return schema


def strict_problem(node: Any, context: tuple[str, ...]) -> str | None:
    """What OpenAI's strict mode rejects in ``node`` (None: nothing)."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            found = strict_problem(item, (*context, str(i)))
            if found:
                return found
        return None
    if not isinstance(node, dict):
        return None
    where = f"In context=({', '.join(repr(c) for c in context)})"
    if node.get("type") == "object" or isinstance(node.get("properties"), dict):
        if node.get("additionalProperties") is not False:
            return f"{where}, 'additionalProperties' is required to be supplied and to be false."
        props = list((node.get("properties") or {}).keys())
        missing = [p for p in props if p not in (node.get("required") or [])]
        if missing:
            return (
                f"{where}, 'required' is required to be supplied and to be an array including "
                f"every key in properties. Missing '{missing[0]}'."
            )
    for key, value in node.items():
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            for name, sub in value.items():
                found = strict_problem(sub, (*context, key, name))
                if found:
                    return found
        elif key in ("items", "anyOf", "allOf", "oneOf"):
            found = strict_problem(value, (*context, key))
            if found:
                return found
    return None


def read_openai_chat(body: Any, *, default_model: str | None = None) -> dict[str, Any]:
    """Validate an OpenAI-style chat body; return model, texts, max_tokens, stream flags."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = body.get("model") or default_model
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(
            "'messages' must be a non-empty array of {role, content} objects.", param="messages"
        )
    conversation: list[str] = []
    last_user = ""
    first_user: str | None = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(
                f"messages[{i}] must be an object with a 'role'.", param=f"messages[{i}]"
            )
        text = text_of(message.get("content"))
        conversation.append(text)
        if message["role"] == "user":
            last_user = text
            first_user = text if first_user is None else first_user
    max_tokens = max_tokens_of(body.get("max_completion_tokens"), "max_completion_tokens")
    if max_tokens is None:
        max_tokens = max_tokens_of(body.get("max_tokens"), "max_tokens")
    options = body.get("stream_options") or {}
    return {
        "model": model,
        "conversation": conversation,
        "last_user": last_user,
        "first_user": first_user or "",
        "max_tokens": max_tokens,
        "stream": bool(body.get("stream")),
        "include_usage": bool(isinstance(options, dict) and options.get("include_usage")),
        "schema": response_format_schema(body.get("response_format")),
        "images": find_images(messages),
    }


class OpenAIDoor(Door):
    """OpenAI (``name="openai"``) or one OpenAI-compatible provider."""

    content_filter = True  # finish_reason "content_filter" (the content-filter fault)

    def __init__(self, name: str) -> None:
        self.name = name
        self.openrouter = name == "openrouter"
        # Mistral: usage rides on the last chunk by default, and its schema refuses
        # unknown fields such as stream_options (422)
        self.mistral = name == "mistral"

    # --- auth and errors ----------------------------------------------------------------
    def api_key(self, req: Any) -> str | None:
        return bearer(req.headers)

    def prompt_blocked_error(self) -> str | None:
        """OpenAI refuses a flagged prompt with 400 ``invalid_prompt`` before the model runs
        (the compatible providers answer the fault with their refusal)."""
        return "invalid_prompt" if self.name == "openai" else None

    def error_object(
        self,
        ex: Exchange,
        kind: str,
        message: str | None,
        status: int | None,
        retry_after: int | None,
        param: str | None,
        code: str | None,
    ) -> tuple[int, dict[str, Any]]:
        """``(status, inner error object)`` in OpenAI's vocabulary."""
        hint = ex.hint
        table: dict[str, tuple[int, str, str, str | None]] = {
            "missing_key": (
                401,
                "You didn't provide an API key. You need to provide your API "
                "key in an Authorization header using Bearer auth (i.e. "
                "Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                None,
            ),
            "invalid_key": (
                401,
                f"Incorrect API key provided: {hint}. You can find your API "
                "key at your provider's dashboard.",
                "invalid_request_error",
                "invalid_api_key",
            ),
            # OpenAI has no 402: an account out of credit is a 429 that waiting cannot fix
            "payment": (
                429 if self.name == "openai" else 402,
                "You exceeded your current quota, please check your plan and billing "
                "details. For more information on this error, read the docs: "
                "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "insufficient_quota",
                "insufficient_quota",
            ),
            "permission": (
                403,
                "You are not allowed to use this model with this key.",
                "permission_error",
                "permission_denied",
            ),
            "rate_limit": (
                429,
                f"Rate limit reached for requests per min (RPM) on key {hint}. "
                f"Please try again in {retry_after or 1}s.",
                "requests",
                "rate_limit_exceeded",
            ),
            "server": (
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            ),
            "unavailable": (
                503,
                "The engine is currently overloaded, please try again later.",
                "server_error",
                None,
            ),
            "overloaded": (
                503,
                "The engine is currently overloaded, please try again later.",
                "server_error",
                None,
            ),
            "context": (
                400,
                "This model's maximum context length was exceeded.",
                "invalid_request_error",
                "context_length_exceeded",
            ),
            "not_found": (
                404,
                "The model does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            ),
            "bad_request": (400, "Invalid request.", "invalid_request_error", None),
            # tests/corpus/openai/error_400_invalid_prompt.json
            "invalid_prompt": (
                400,
                "Invalid prompt: your prompt was flagged as potentially violating our usage "
                "policy. Please try again with a different prompt: "
                "https://platform.openai.com/docs/guides/reasoning#advice-on-prompting",
                "invalid_request_error",
                "invalid_prompt",
            ),
        }
        default_status, default_message, type_, default_code = table.get(kind, table["server"])
        return status or default_status, {
            "message": (message or default_message) + SANDBOX_TAG,
            "type": type_,
            "param": param,
            "code": code if code is not None else default_code,
        }

    def send_error(
        self,
        ex: Exchange,
        kind: str,
        message: str | None = None,
        *,
        status: int | None = None,
        retry_after: int | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        if kind == "context":
            param = param or "messages"
        status, error = self.error_object(ex, kind, message, status, retry_after, param, code)
        # insufficient_quota is a 429 without the rate-limit hints: nothing to wait for
        headers = self.error_headers(ex, status if kind != "payment" else 0, retry_after)
        body: dict[str, Any] = {"error": error}
        if self.openrouter:  # OpenRouter: {message, code: the HTTP status}
            body = {"error": {"message": error["message"], "code": status}}
        elif self.name == "groq":  # Groq leaves out param
            body = {"error": {k: v for k, v in error.items() if k != "param"}}
        elif self.name == "xai":  # xAI: flat {code: gRPC status text, error}; bad key 400
            status = 400 if kind == "invalid_key" else status
            body = {"code": _XAI_CODES.get(status, "Internal error"), "error": error["message"]}
        elif self.mistral and kind in ("invalid_key", "missing_key"):
            status, body = 401, {"message": "Unauthorized", "request_id": ex.request_id[4:]}
        elif self.name == "deepseek" and kind == "payment":
            body = {
                "error": {
                    "message": "Insufficient Balance" + SANDBOX_TAG,
                    "type": "unknown_error",
                    "param": None,
                    "code": "invalid_request_error",
                }
            }
        elif self.name == "local" and kind == "not_found":  # Ollama's words
            body = {
                "error": {
                    "message": (message or "model not found") + SANDBOX_TAG,
                    "type": "api_error",
                    "param": None,
                    "code": None,
                }
            }
        ex.send_json(status, body, headers)

    def error_headers(self, ex: Exchange, status: int, retry_after: int | None) -> Headers:
        headers = [("x-request-id", ex.request_id)]
        if status == 429:
            headers += [("retry-after", str(retry_after or 1))]
            headers += self.ratelimit_headers(ex, remaining=0, reset=retry_after or 1)
        return headers

    def ratelimit_headers(
        self, ex: Exchange, *, remaining: int | None = None, reset: int | None = None
    ) -> Headers:
        limiter = ex.server.limiter
        limit = limiter.rpm or 10_000
        if remaining is None:
            remaining = ex.remaining if limiter.rpm else limit - 1
        if reset is None:
            reset = limiter.reset_seconds(ex.key or "") if limiter.rpm else 0
        return [
            ("x-ratelimit-limit-requests", str(limit)),
            ("x-ratelimit-remaining-requests", str(remaining)),
            ("x-ratelimit-reset-requests", f"{reset}s" if reset else "6ms"),
            ("x-ratelimit-limit-tokens", "10000000"),
            ("x-ratelimit-remaining-tokens", "10000000"),
            ("x-ratelimit-reset-tokens", "0s"),
        ]

    def ok_headers(self, ex: Exchange) -> Headers:
        headers = [
            ("x-request-id", ex.request_id),
            ("openai-processing-ms", str(ex.elapsed_ms())),
            ("openai-version", "2020-10-01"),
            *self.ratelimit_headers(ex),
        ]
        if self.openrouter:
            headers.append(("x-generation-id", "gen-" + ex.request_id[4:]))
        return headers

    def models(self) -> Iterable[tuple[str, str]]:
        owner = "system" if self.name == "openai" else self.name
        return ((m, owner) for m in MODELS.get(self.name, ()))

    def model_known(self, call: ChatCall) -> bool:
        return NOT_FOUND_MARK not in call.model and is_known(self.name, call.model)

    def not_found_message(self, call: ChatCall) -> str | None:
        if self.name == "local":
            return f'model "{call.model}" not found, try pulling it first'
        return f"The model `{call.model}` does not exist or you do not have access to it."

    def served_model(self, model: str) -> str:
        return dated(self.name, model)

    def context_window(self, call: ChatCall) -> int | None:
        return context_window(self.name, call.model)

    def context_message(self, call: ChatCall, tokens: int, window: int) -> str:
        if self.name == "xai":
            return (
                f"This model's maximum prompt length is {window} but the request "
                f"contains {tokens} tokens."
            )
        return (
            f"This model's maximum context length is {window} tokens. However, your "
            f"messages resulted in {tokens} tokens. Please reduce the length of the "
            "messages."
        )

    def stream_error_frames(self, ex: Exchange) -> list[tuple[str | None, str]]:
        if self.openrouter:
            # OpenRouter: a chunk carrying error {code, message} (an HTTP status), then [DONE]
            model = ex.model or ""
            chunk = {
                "id": "gen-" + ex.request_id[4:],
                "provider": _upstream(model),
                "error": {"code": 502, "message": "Provider returned error" + SANDBOX_TAG},
                "model": model,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                        "native_finish_reason": None,
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                    "total_tokens": 0,
                    "cost": 0,
                    "is_byok": False,
                    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                    "cost_details": {
                        "upstream_inference_cost": None,
                        "upstream_inference_prompt_cost": 0,
                        "upstream_inference_completions_cost": 0,
                    },
                    "completion_tokens_details": {"reasoning_tokens": 0, "image_tokens": 0},
                },
            }
            return [(None, dumps(chunk)), (None, "[DONE]")]
        return [
            (
                None,
                dumps(
                    {
                        "error": {
                            "message": "The server had an error while processing your "
                            "request. Sorry about that!" + SANDBOX_TAG,
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    }
                ),
            )
        ]

    # --- requests -----------------------------------------------------------------------
    def parse(self, ex: Exchange) -> ChatCall:
        try:
            body = ex.req.json()
        except ValueError:
            raise BadRequest("We could not parse the JSON body of your request.") from None
        fields = read_openai_chat(body)
        if self.mistral and "stream_options" in body:
            raise BadRequest(
                "stream_options: Extra inputs are not permitted (extra_forbidden)",
                param="stream_options",
                code="extra_forbidden",
                status=422,
            )
        return ChatCall(provider=self.name, **fields)

    # hooks for the gateway door and OpenRouter
    def usage_extra(self, call: ChatCall, reply: Reply) -> dict[str, Any]:
        if self.openrouter:
            cost = provider_cost(self.name, call.model, reply.input_tokens, reply.output_tokens)
            return {"cost": float(cost or 0)}
        return {}

    def top_extra(self, call: ChatCall, reply: Reply) -> dict[str, Any]:
        return {}

    def answered(self, ex: Exchange, call: ChatCall, body: dict[str, Any] | None) -> Headers:
        """Headers for an answer (``body`` None for a stream); the gateway adds receipts."""
        return []

    def reasoning(self, call: ChatCall, reply: Reply) -> int:
        """Reasoning tokens an OpenAI reasoning model spends (deterministic here)."""
        reasons = (
            (self.name == "openai" and call.model.startswith(_REASONING))
            or (self.name == "deepseek" and call.model == "deepseek-reasoner")
            or (self.name == "xai" and call.model.startswith(("grok-4", "grok-3-mini")))
        )
        if not reasons:
            return 0
        if "reasoning_spent" in call.extra:  # capped with the answer (_within_max_completion)
            return int(call.extra["reasoning_spent"])
        return 2 * reply.output_tokens + 8

    def _within_max_completion(self, call: ChatCall, reply: Reply) -> Reply:
        """OpenAI's ``max_completion_tokens`` is "an upper bound for the number of tokens
        that can be generated for a completion, including visible output tokens and
        reasoning tokens" (API reference): the reasoning comes first, the answer gets what
        is left, and reasoning that uses it all leaves ``content: ""`` with
        ``finish_reason: length`` (as openai users report for gpt-5-nano)."""
        if self.name != "openai" or call.max_tokens is None:
            return reply
        spent = self.reasoning(call, reply)
        if not spent:
            return reply
        spent = min(spent, call.max_tokens)
        call.extra["reasoning_spent"] = spent
        room = call.max_tokens - spent
        if reply.output_tokens <= room:
            return reply
        pieces = reply.pieces[:room]
        return replace(
            reply, text="".join(pieces), pieces=pieces, output_tokens=room, truncated=True
        )

    def usage(self, call: ChatCall, reply: Reply) -> dict[str, Any]:
        prompt, out = reply.input_tokens, reply.output_tokens
        if self.mistral:
            return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}
        if self.name == "groq":  # seconds, as Groq reports them
            return {
                "queue_time": 0.0001,
                "prompt_tokens": prompt,
                "prompt_time": round(prompt * 1e-5, 9),
                "completion_tokens": out,
                "completion_time": round(out * 4e-4, 9),
                "total_tokens": prompt + out,
                "total_time": round(prompt * 1e-5 + out * 4e-4, 9),
            }
        reasoning = self.reasoning(call, reply)
        if self.name == "deepseek":  # cache hit/miss counts; reasoning for the reasoner
            return {
                "prompt_tokens": prompt,
                "completion_tokens": out + reasoning,
                "total_tokens": prompt + out + reasoning,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": reasoning},
                "prompt_cache_hit_tokens": 0,
                "prompt_cache_miss_tokens": prompt,
            }
        if self.name == "xai":  # reasoning counted beside completion_tokens, not in it
            return {
                "prompt_tokens": prompt,
                "completion_tokens": out,
                "total_tokens": prompt + out + reasoning,
                "prompt_tokens_details": {
                    "text_tokens": prompt,
                    "audio_tokens": 0,
                    "image_tokens": 0,
                    "cached_tokens": 0,
                },
                "completion_tokens_details": {
                    "reasoning_tokens": reasoning,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
                "num_sources_used": 0,
            }
        out += reasoning
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": out,
            "total_tokens": prompt + out,
        }
        if self.openrouter:
            usage.update(
                self.usage_extra(call, reply),
                is_byok=False,
                prompt_tokens_details={"cached_tokens": 0, "audio_tokens": 0},
                cost_details={
                    "upstream_inference_cost": None,
                    "upstream_inference_prompt_cost": 0,
                    "upstream_inference_completions_cost": 0,
                },
                completion_tokens_details={"reasoning_tokens": 0, "image_tokens": 0},
            )
            return usage
        usage["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
        usage["completion_tokens_details"] = {
            "reasoning_tokens": self.reasoning(call, reply),
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
        usage.update(self.usage_extra(call, reply))
        return usage

    def completion_body(
        self, ex: Exchange, call: ChatCall, reply: Reply, cid: str, created: int, finish: str
    ) -> dict[str, Any]:
        """The non-streamed answer, in this provider's own shape."""
        model = call.answered_model
        if self.mistral:
            content: Any = reply.text
            if model.startswith("magistral"):  # reasoning models: thinking, then text
                content = [
                    {
                        "type": "thinking",
                        "thinking": [
                            {"type": "text", "text": "The user asks: " + call.last_user[:200]}
                        ],
                    },
                    {"type": "text", "text": reply.text},
                ]
            return {
                "id": ex.request_id[4:],
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "tool_calls": None, "content": content},
                        "finish_reason": finish,
                    }
                ],
                "usage": self.usage(call, reply),
            }
        if self.name == "groq":
            return {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.text},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": self.usage(call, reply),
                "usage_breakdown": {"models": None},
                "system_fingerprint": "fp_sandbox",
                "x_groq": {"id": ex.request_id},
            }
        if self.openrouter:
            return {
                "id": cid,
                "provider": _upstream(model),
                "model": model,
                "object": "chat.completion",
                "created": created,
                "choices": [
                    {
                        "logprobs": None,
                        "finish_reason": finish,
                        "native_finish_reason": finish,
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": reply.text,
                            "refusal": None,
                            "reasoning": None,
                        },
                    }
                ],
                "usage": self.usage(call, reply),
            }
        if self.name == "deepseek":
            message = {"role": "assistant", "content": reply.text}
            if model == "deepseek-reasoner":  # its reasoning, beside the answer
                message["reasoning_content"] = "The user asks: " + call.last_user[:200]
            return {
                "id": ex.request_id[4:],
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
                ],
                "usage": self.usage(call, reply),
                "system_fingerprint": "fp_sandbox",
            }
        if self.name == "xai":
            return {
                "id": ex.request_id[4:],
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.text, "refusal": None},
                        "finish_reason": finish,
                    }
                ],
                "usage": self.usage(call, reply),
                "system_fingerprint": "fp_sandbox",
            }
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        # a refusal: no content, the words in `refusal` (as OpenAI answers)
                        "content": None if call.refused else reply.text,
                        "refusal": reply.text if call.refused else None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": self.usage(call, reply),
            "service_tier": "default",
            "system_fingerprint": "fp_sandbox",
            **self.top_extra(call, reply),
        }

    async def respond(self, ex: Exchange, call: ChatCall, reply: Reply) -> None:
        reply = self._within_max_completion(call, reply)
        finish = "content_filter" if call.filtered else "length" if reply.truncated else "stop"
        cid = ("gen-" if self.openrouter else "chatcmpl-") + ex.request_id[4:]
        created = int(time.time())
        if not call.stream:
            body = self.completion_body(ex, call, reply, cid, created, finish)
            ex.send_json(200, body, [*self.ok_headers(ex), *self.answered(ex, call, body)])
            return
        with_usage = call.include_usage or self.openrouter
        if self.openrouter:  # OpenRouter names the upstream; no tier or fingerprint
            head = (
                f'{{"id":"{cid}","provider":"{_upstream(call.answered_model)}",'
                f'"model":{dumps(call.answered_model)},"object":"chat.completion.chunk",'
                f'"created":{created},"choices":[{{"index":0,"delta":'
            )
            tail = '"logprobs":null,"finish_reason":'
        elif self.mistral:  # Mistral: a "p" padding field, no tier/fingerprint/logprobs
            head = (
                f'{{"id":"{cid}","object":"chat.completion.chunk","created":{created},'
                f'"model":{dumps(call.answered_model)},"p":"{_PAD}",'
                '"choices":[{"index":0,"delta":'
            )
            tail = '"finish_reason":'
        elif self.name == "local":  # Ollama
            head = (
                f'{{"id":"{cid}","object":"chat.completion.chunk","created":{created},'
                f'"model":{dumps(call.answered_model)},"system_fingerprint":"fp_ollama",'
                '"choices":[{"index":0,"delta":'
            )
            tail = '"finish_reason":'
        else:
            # OpenAI pads every chunk with "obfuscation" (stream_options.include_obfuscation)
            pad = f'"obfuscation":"{_PAD}",' if self.name == "openai" else ""
            head = (
                f'{{"id":"{cid}","object":"chat.completion.chunk","created":{created},'
                f'"model":{dumps(call.answered_model)},"service_tier":"default",'
                f'"system_fingerprint":"fp_sandbox",{pad}"choices":[{{"index":0,"delta":'
            )
            tail = '"logprobs":null,"finish_reason":'
        # OpenAI-style chunks carry "usage": null until the usage chunk; OpenRouter's do not
        usage_null = ',"usage":null}' if with_usage and not self.openrouter else "}"
        native = ',"native_finish_reason":null' if self.openrouter else ""
        sse = ex.sse(
            [*self.ok_headers(ex), *self.answered(ex, call, None)], content_frames=len(reply.pieces)
        )
        if self.openrouter:
            sse.comment("OPENROUTER PROCESSING")
        first = (
            '{"role":"assistant","content":""},'
            if self.openrouter or self.mistral or self.name == "local"
            else '{"role":"assistant","content":null,"refusal":""},'
            if call.refused and self.name == "openai"
            else '{"role":"assistant","content":"","refusal":null},'
        )
        await sse.frame(head + first + tail + "null" + native + "}]" + usage_null)
        # a refusal streams as delta.refusal (OpenAI's own form; the compatible family has none)
        field = '{"refusal":' if call.refused and self.name == "openai" else '{"content":'
        for piece in reply.pieces:
            await sse.frame(
                head + field + json_str(piece) + "}," + tail + "null" + native + "}]" + usage_null,
                content=True,
            )
        if self.mistral:
            await sse.frame(
                head
                + "{},"
                + tail
                + f'"{finish}"}}],"usage":'
                + dumps(self.usage(call, reply))
                + "}"
            )
        else:
            native = f',"native_finish_reason":"{finish}"' if self.openrouter else ""
            await sse.frame(head + "{}," + tail + f'"{finish}"{native}}}]' + usage_null)
        if with_usage:
            usage = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": call.answered_model,
                "service_tier": "default",
                "system_fingerprint": "fp_sandbox",
                "choices": [],
                "usage": self.usage(call, reply),
                **self.top_extra(call, reply),
            }
            if self.name == "openai":
                usage["obfuscation"] = _PAD
            await sse.frame(dumps(usage))
        await sse.frame("[DONE]")
        await sse.close()
