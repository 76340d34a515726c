"""The Cencori gateway doors: native ``POST /api/ai/chat`` and OpenAI-compatible ``/v1``.

Both play the managed route: the key must be a Cencori project key (``csk_…``, in the
``CENCORI_API_KEY`` header or ``Authorization: Bearer``), the model is mapped to its
provider by Cencori's prefix rules, the price comes from the public catalogue (an unpriced
model fails closed with ``503 pricing_unavailable``), and each complete answer debits the
sandbox wallet by ``cost_usd`` = provider cost × 1.5. A wallet at or below zero answers
``403 credit_balance_exhausted``; the ``402`` fault gives ``spend_cap_reached``.

Native errors are flat ``{"error", "message", "code", …extras}``; the ``/v1`` door uses
OpenAI's nested shape (so the openai SDK reads it) with the same Cencori codes and extras.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from decimal import Decimal
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
)
from .openai import MODELS, NOT_FOUND_MARK, SANDBOX_TAG, OpenAIDoor, read_openai_chat
from .replies import Reply
from .wallet import gateway_charge, provider_cost

__all__ = ["DEFAULT_MODEL", "GATEWAY_PROVIDERS", "CencoriNativeDoor", "CencoriOpenAIDoor",
           "route_model"]

DEFAULT_MODEL = "gemini-2.5-flash"
TOP_UP_URL = "https://cencori.com/dashboard/billing"
GATEWAY_PROVIDERS = frozenset({"openai", "anthropic", "google", "mistral", "groq", "cohere",
                               "xai", "deepseek", "perplexity", "qwen", "openrouter",
                               "together"})

# Cencori's router, in order: name prefixes, then ``*:free``, then ``provider/model``.
_PREFIX_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), provider) for pattern, provider in (
        (r"^(gpt-|text-|o1-|o3-|o4-|o[134]$|chatgpt-)", "openai"),
        (r"^claude-", "anthropic"),
        (r"^gemini-", "google"),
        (r"^(mistral-|codestral-|open-mistral-)", "mistral"),
        (r"^(llama|mixtral-)", "groq"),
        (r"^command-", "cohere"),
        (r"^grok-", "xai"),
        (r"^deepseek-", "deepseek"),
        (r"sonar", "perplexity"),
        (r"qwen", "qwen"),
    ))

GATEWAY_MODELS: tuple[tuple[str, str], ...] = (
    *((m, "openai") for m in MODELS["openai"]),
    ("claude-haiku-4-5", "anthropic"), ("claude-sonnet-4-5", "anthropic"),
    ("claude-opus-4-1", "anthropic"),
    ("gemini-2.5-flash", "google"), ("gemini-2.5-flash-lite", "google"),
    ("gemini-2.5-pro", "google"),
    *((m, "mistral") for m in MODELS["mistral"]),
    *((m, "groq") for m in MODELS["groq"]),
    *((m, "xai") for m in MODELS["xai"]),
    *((m, "deepseek") for m in MODELS["deepseek"]),
)


def route_model(model: str) -> tuple[str, str]:
    """``(provider, model id sent upstream)`` by Cencori's rules; ``BadRequest`` if none."""
    lowered = model.lower()
    for pattern, provider in _PREFIX_RULES:
        if pattern.search(lowered):
            return provider, model
    if lowered.endswith(":free"):
        return "openrouter", model
    head, sep, rest = model.partition("/")
    if sep and rest:
        if head.lower() in GATEWAY_PROVIDERS:
            return head.lower(), rest
        if head.lower() == "x-ai":
            return "xai", rest
    raise BadRequest(f"Model {model!r} is not supported. Use a known model id (e.g. "
                     "gpt-4o-mini, claude-haiku-4-5, gemini-2.5-flash) or provider/model.",
                     code="model_not_supported", kind="bad_request")


def _cencori_key(req_headers: dict[str, str]) -> str | None:
    key = req_headers.get("cencori_api_key") or req_headers.get("cencori-api-key")
    return (key.strip() or None) if key else bearer(req_headers)


def _key_problem(key: str | None) -> str | None:
    if not key:
        return "missing_key"
    if not key.startswith("csk_") or "revoked" in key:
        return "invalid_key"
    return None


# A 403 fault and a real exhausted wallet answer the same way.
_NO_CREDITS = (403, "Insufficient credits", "credit_balance_exhausted",
               "Your organization's credit balance is exhausted. Top up to continue.")
# kind -> (status, error title, code, message)
_ERRORS: dict[str, tuple[int, str, str, str]] = {
    "missing_key": (401, "Missing API key", "missing_api_key",
                    "Send your Cencori project key in the CENCORI_API_KEY header (or "
                    "Authorization: Bearer csk_…)."),
    "invalid_key": (401, "Invalid API key", "invalid_api_key",
                    "This is not a valid Cencori project key; project keys start with csk_. "
                    "Create one in your project's API keys page."),
    "payment": (402, "Spend cap reached", "spend_cap_reached",
                "This project reached its spend cap. Raise the cap or wait for the next period."),
    "permission": _NO_CREDITS,
    "credits": _NO_CREDITS,
    "rate_limit": (429, "Rate limit exceeded", "rate_limit_exceeded",
                   "Too many requests for this project. Retry after the indicated delay."),
    "server": (500, "Internal server error", "internal_error",
               "The gateway failed while handling the request. Retry later."),
    "unavailable": (503, "Provider unavailable", "provider_unavailable",
                    "The upstream provider is unavailable. Retry later."),
    "pricing": (503, "Pricing unavailable", "pricing_unavailable",
                "No price is configured for this model, so the request was refused."),
    "not_found": (404, "Model not found", "provider_model_not_found",
                  "The provider does not know this model."),
    "bad_request": (400, "Invalid request", "invalid_request", "The request body is invalid."),
}


class _Gateway:
    """What both Cencori doors do: key rules, model routing, pricing, wallet, headers."""

    via = "cencori"

    def api_key(self, req: Any) -> str | None:
        return _cencori_key(req.headers)

    def key_problem(self, key: str | None) -> str | None:
        return _key_problem(key)

    def error_parts(self, ex: Exchange, kind: str, message: str | None, status: int | None,
                    retry_after: int | None, code: str | None
                    ) -> tuple[int, Headers, dict[str, Any]]:
        """``(status, headers, fields)`` of a Cencori error, shaped by the door."""
        default_status, title, default_code, default_message = _ERRORS.get(kind,
                                                                           _ERRORS["server"])
        status = status or default_status
        fields: dict[str, Any] = {"error": title,
                                  "message": (message or default_message) + SANDBOX_TAG,
                                  "code": code or default_code}
        headers: Headers = [("X-Request-Id", ex.request_id)]
        if fields["code"] == "credit_balance_exhausted":
            fields["balance"] = float(max(ex.server.wallet.balance, Decimal(0)))
            fields["top_up_url"] = TOP_UP_URL
        elif fields["code"] == "spend_cap_reached":
            spent = float(ex.server.wallet.spent)
            fields["spend"] = {"current": spent, "cap": spent}
        if status == 429:
            delay = retry_after or 1
            fields["retry_after_ms"] = delay * 1000
            headers += [("Retry-After", str(delay)), *self.ratelimit_headers(ex, remaining=0,
                                                                             reset=delay)]
        return status, headers, fields

    def ratelimit_headers(self, ex: Exchange, *, remaining: int | None = None,
                          reset: int | None = None) -> Headers:
        limiter = ex.server.limiter
        limit = limiter.rpm or 60
        if remaining is None:
            remaining = ex.remaining if limiter.rpm else limit - 1
        if reset is None:
            reset = limiter.reset_seconds(ex.key or "") if limiter.rpm else 60
        return [("X-RateLimit-Limit", str(limit)), ("X-RateLimit-Remaining", str(remaining)),
                ("X-RateLimit-Reset", str(int((time.time() + reset) * 1000)))]

    def ok_headers(self, ex: Exchange) -> Headers:
        return [("X-Request-Id", ex.request_id), *self.ratelimit_headers(ex),
                ("X-Cencori-Cache", "MISS")]

    def routed(self, model: str) -> tuple[str, str]:
        provider, upstream = route_model(model)
        if NOT_FOUND_MARK in upstream:
            raise BadRequest(f"The provider {provider} does not know model {upstream!r}.",
                             status=404, kind="not_found")
        return provider, upstream

    def precheck(self, ex: Exchange, call: ChatCall) -> bool:
        if provider_cost(call.provider, call.model, 1, 1) is None:
            self.send_error(ex, "pricing",  # type: ignore[attr-defined]
                            f"No price is configured for {call.provider}/{call.model}, so the "
                            "request was refused (fail closed).")
            return False
        if ex.server.wallet.exhausted():
            self.send_error(ex, "credits")  # type: ignore[attr-defined]
            return False
        return True

    @staticmethod
    def charge(call: ChatCall, reply: Reply) -> Decimal:
        cost = provider_cost(call.provider, call.model, reply.input_tokens,
                             reply.output_tokens) or Decimal(0)
        return gateway_charge(cost)

    def settle(self, ex: Exchange, call: ChatCall, reply: Reply) -> None:
        ex.server.wallet.debit(self.charge(call, reply))

    def models(self) -> Iterable[tuple[str, str]]:
        return GATEWAY_MODELS


class CencoriNativeDoor(_Gateway, Door):
    """``POST /api/ai/chat``: Cencori's own request and response shapes."""

    name = "cencori"

    def send_error(self, ex: Exchange, kind: str, message: str | None = None, *,
                   status: int | None = None, retry_after: int | None = None,
                   param: str | None = None, code: str | None = None) -> None:
        status, headers, fields = self.error_parts(ex, kind, message, status, retry_after, code)
        ex.send_json(status, fields, headers)

    def parse(self, ex: Exchange) -> ChatCall:
        try:
            body = ex.req.json()
        except ValueError:
            raise BadRequest("The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object.")
        fields = read_openai_chat({**body, "max_tokens": None, "max_completion_tokens": None},
                                  default_model=DEFAULT_MODEL)
        limit = body.get("maxTokens")
        fields["max_tokens"] = max_tokens_of(limit, "maxTokens") if limit is not None else \
            max_tokens_of(body.get("max_tokens"), "max_tokens")
        fields.pop("include_usage")
        provider, upstream = self.routed(fields.pop("model"))
        return ChatCall(model=upstream, provider=provider, **fields)

    async def respond(self, ex: Exchange, call: ChatCall, reply: Reply) -> None:
        finish = "length" if reply.truncated else "stop"
        usage = {"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
                 "total_tokens": reply.input_tokens + reply.output_tokens}
        cost = float(self.charge(call, reply))
        if not call.stream:
            ex.send_json(200, {
                "id": "chatcmpl-" + ex.request_id[4:], "object": "chat.completion",
                "created": int(time.time()), "model": call.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                             "finish_reason": finish}],
                "usage": usage, "content": reply.text, "provider": call.provider,
                "cost_usd": cost, "finish_reason": finish}, self.ok_headers(ex))
            return
        sse = ex.sse(self.ok_headers(ex), content_frames=len(reply.pieces))
        for piece in reply.pieces:
            await sse.frame('{"delta":' + json_str(piece) + "}", content=True)
        await sse.frame(f'{{"delta":"","finish_reason":"{finish}"}}')
        await sse.frame(dumps({"usage": usage, "cost_usd": cost}))
        await sse.frame("[DONE]")
        await sse.close()


class CencoriOpenAIDoor(_Gateway, OpenAIDoor):
    """``POST /v1/chat/completions`` and ``GET /v1/models`` on the gateway."""

    def __init__(self) -> None:
        super().__init__("cencori")

    def send_error(self, ex: Exchange, kind: str, message: str | None = None, *,
                   status: int | None = None, retry_after: int | None = None,
                   param: str | None = None, code: str | None = None) -> None:
        status, headers, fields = self.error_parts(ex, kind, message, status, retry_after, code)
        title = fields.pop("error")
        error = {"message": fields.pop("message"), "type": title.lower().replace(" ", "_"),
                 "param": param, "code": fields.pop("code"), **fields}
        ex.send_json(status, {"error": error}, headers)

    def parse(self, ex: Exchange) -> ChatCall:
        try:
            body = ex.req.json()
        except ValueError:
            raise BadRequest("The request body is not valid JSON.") from None
        fields = read_openai_chat(body, default_model=DEFAULT_MODEL)
        provider, upstream = self.routed(fields.pop("model"))
        return ChatCall(model=upstream, provider=provider, **fields)

    def usage_extra(self, call: ChatCall, reply: Reply) -> dict[str, Any]:
        return {}

    def top_extra(self, call: ChatCall, reply: Reply) -> dict[str, Any]:
        return {"provider": call.provider, "cost_usd": float(self.charge(call, reply))}
