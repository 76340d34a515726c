"""The Cencori gateway doors: native ``POST /api/ai/chat`` and OpenAI-compatible ``/v1``.

Both play the managed route: the key must be a Cencori project key (``csk_…``, in the
``CENCORI_API_KEY`` header or ``Authorization: Bearer``), the model is mapped to its
provider by Cencori's prefix rules, the price comes from the public catalogue (an unpriced
model fails closed with ``503 pricing_unavailable``), and each complete answer debits the
sandbox wallet by ``cost_usd`` = provider cost × 1.5. A wallet at or below zero answers
``403 credit_balance_exhausted``; the ``402`` fault gives ``spend_cap_reached``.

Native errors are flat ``{"error", "message", "code", …extras}``; the ``/v1`` door uses
OpenAI's nested shape (so the openai SDK reads it) with the same Cencori codes and extras.

A test key (``csk_test_…``) is free, as at Cencori: its answers carry ``cost_usd`` 0 and
debit nothing. ``GET /api/v1/metrics?period=1h|24h|7d|30d|mtd`` (also ``/v1/metrics``) is
Cencori's Metrics API for the calling key's requests, in the shape of cencori/cencori
``app/api/v1/metrics/route.ts`` and its docs page ``app/docs/api/metrics/page.tsx``.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
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
    new_id,
)
from .openai import MODELS, NOT_FOUND_MARK, SANDBOX_TAG, OpenAIDoor, read_openai_chat
from .replies import Reply
from .wallet import Wallet, gateway_charge, provider_cost

__all__ = ["DEFAULT_MODEL", "GATEWAY_PROVIDERS", "CencoriNativeDoor", "CencoriOpenAIDoor",
           "route_model"]

DEFAULT_MODEL = "gemini-2.5-flash"
TOP_UP_URL = "/billing"   # relative, as the real gateway sends it (gateway-middleware.ts)
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


def _is_test_key(key: str | None) -> bool:
    return bool(key) and key.startswith("csk_test_")  # type: ignore[union-attr]


# --- the Metrics API's request log -------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Logged:
    """One gateway request as Cencori's ``ai_requests`` table keeps it (for /v1/metrics)."""

    ts: float
    key: str
    status: str                 # success | error
    cost_usd: Decimal
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    provider: str | None
    model: str | None


class _RequestLog:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: list[_Logged] = []

    def add(self, entry: _Logged) -> None:
        with self.lock:
            self.entries.append(entry)


# One log per wallet object: the server's reset() makes a new Wallet, so the log resets with
# the balance, and this module needs no hook in the server.
_LOGS: weakref.WeakKeyDictionary[Wallet, _RequestLog] = weakref.WeakKeyDictionary()
_LOGS_LOCK = threading.Lock()


def _log_of(ex: Exchange) -> _RequestLog:
    wallet = ex.server.wallet
    with _LOGS_LOCK:
        log = _LOGS.get(wallet)
        if log is None:
            log = _LOGS[wallet] = _RequestLog()
    return log


_PERIODS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7),
            "30d": timedelta(days=30)}


def _period_start(period: str, end: datetime) -> datetime:
    if period == "mtd":      # month to date (Cencori's server runs in UTC)
        return end.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return end - _PERIODS.get(period, _PERIODS["24h"])    # unknown: 24h, as Cencori does


def _round(value: Decimal, places: int) -> float:
    """JavaScript's ``Math.round(x * 10**places) / 10**places`` (half up), as Cencori rounds."""
    return float(value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def metrics_body(entries: list[_Logged], key: str, period: str, end: datetime) -> dict[str, Any]:
    """The Metrics API response for ``key``'s requests in the period ending at ``end``."""
    start = _period_start(period, end)
    lo, hi = start.timestamp(), end.timestamp()
    rows = [e for e in entries if e.key == key and lo <= e.ts <= hi]
    total = len(rows)
    success = sum(e.status == "success" for e in rows)
    cost = sum((e.cost_usd for e in rows), Decimal(0))
    latencies = sorted(e.latency_ms for e in rows)
    providers: dict[str, dict[str, Any]] = {}
    models: dict[str, dict[str, Any]] = {}
    for e in rows:
        for table, name in ((providers, e.provider), (models, e.model)):
            if name:
                slot = table.setdefault(name, {"requests": 0, "cost_usd": Decimal(0)})
                slot["requests"] += 1
                slot["cost_usd"] += e.cost_usd
    for table in (providers, models):
        for slot in table.values():
            slot["cost_usd"] = _round(slot["cost_usd"], 4)

    def pct(q: float) -> int | None:
        return latencies[int(len(latencies) * q)] if latencies else None

    prompt = sum(e.prompt_tokens for e in rows)
    completion = sum(e.completion_tokens for e in rows)
    return {
        "period": period, "start_date": _iso(start), "end_date": _iso(end),
        "requests": {"total": total, "success": success,
                     "error": sum(e.status == "error" for e in rows), "filtered": 0,
                     "success_rate": _round(Decimal(success * 100) / total, 2) if total else 0},
        "cost": {"total_usd": _round(cost, 4),
                 "average_per_request_usd": _round(cost / total, 6) if total else 0},
        "tokens": {"prompt": prompt, "completion": completion, "total": prompt + completion},
        "latency": {"avg_ms": round(sum(latencies) / len(latencies)) if latencies else 0,
                    "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99)},
        "providers": providers, "models": models,
    }


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
        if ex.key and _key_problem(ex.key) is None:    # a project's request that failed
            _log_of(ex).add(_Logged(time.time(), ex.key, "error", Decimal(0), 0, 0,
                                    ex.elapsed_ms(), None, ex.model))
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
        if call.extra.get("test_key"):
            return Decimal(0)             # csk_test_ keys: no charges
        cost = provider_cost(call.provider, call.model, reply.input_tokens,
                             reply.output_tokens) or Decimal(0)
        return gateway_charge(cost)

    def settle(self, ex: Exchange, call: ChatCall, reply: Reply) -> None:
        charge = self.charge(call, reply)
        if charge:
            ex.server.wallet.debit(charge)
        _log_of(ex).add(_Logged(time.time(), ex.key or "", "success", charge,
                                reply.input_tokens, reply.output_tokens, ex.elapsed_ms(),
                                call.provider, call.model))

    def handle_metrics(self, ex: Exchange) -> None:
        """``GET /api/v1/metrics?period=…``: Bearer key only, 401 ``{"error": …}`` as Cencori."""
        ex.request_id = new_id("req_")
        auth = ex.req.headers.get("authorization") or ""
        key = auth.replace("Bearer ", "", 1).strip() if auth else ""
        headers: Headers = [("X-Request-Id", ex.request_id)]
        if not key:
            ex.send_json(401, {"error": "Missing API key. Use Authorization: Bearer <api_key>"},
                         headers)
            return
        if _key_problem(key):
            ex.send_json(401, {"error": "Invalid API key"}, headers)
            return
        period = ex.req.query.get("period") or "24h"
        log = _log_of(ex)
        with log.lock:
            entries = list(log.entries)
        ex.send_json(200, metrics_body(entries, key, period, datetime.now(UTC)), headers)

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
        return ChatCall(model=upstream, provider=provider, **fields,
                        extra={"test_key": _is_test_key(ex.key)})

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
        return ChatCall(model=upstream, provider=provider, **fields,
                        extra={"test_key": _is_test_key(ex.key)})

    def usage_extra(self, call: ChatCall, reply: Reply) -> dict[str, Any]:
        return {}

    def top_extra(self, call: ChatCall, reply: Reply) -> dict[str, Any]:
        return {"provider": call.provider, "cost_usd": float(self.charge(call, reply))}
