"""The Cencori gateway doors: native ``POST /api/ai/chat`` and OpenAI-compatible ``/v1``.

Both play the managed route: the key must be a Cencori project key (``csk_…``, in the
``CENCORI_API_KEY`` header or ``Authorization: Bearer``), the model is mapped to its
provider by Cencori's router (``lib/providers/router.ts``: overrides, then prefixes, then
``:free``, then ``provider/model``), the price comes from the public catalogue (an unpriced
model fails closed with ``503 pricing_unavailable``), and each complete answer debits the
sandbox wallet by ``cost_usd`` = provider cost × 1.5. A wallet at or below zero answers
``403 credit_balance_exhausted``; the ``402`` fault gives ``spend_cap_reached``.

Errors come in Cencori's **two shapes**, on both doors (read from the public gateway source,
``lib/gateway-middleware.ts`` and ``lib/gateway/ai-chat-handler.ts``):

- middleware (key, credits, project rate limit, spend cap): ``{"error": "<title>",
  "code": "<code>", …}``, with ``message`` where the gateway has one, ``retry_after_ms`` and
  ``Retry-After`` on 429, ``balance`` and a **relative** ``top_up_url`` (``/billing``) on
  credit exhaustion, ``spend`` and ``upgrade_url`` on the spend cap;
- engine and provider failures: ``{"error": "<code>", "message": "…"}`` with **no**
  ``code`` (``pricing_unavailable``, ``provider_model_not_found``, ``provider_unavailable``,
  ``provider_invalid_request``, ``provider_error``, ``internal_error``); on ``/v1`` the
  engine nests them OpenAI-style, ``{"error": {"message", "type", "code"}}``.

Headers, as the gateway sends them: ``X-Request-Id`` on every answer;
``X-RateLimit-Limit/Remaining/Reset`` (reset in Unix ms) **only on a 429**; on a
non-streamed request the project's exact-match cache answers ``X-Cencori-Cache: MISS`` (and
``X-Cache: MISS``), or ``HIT`` (``X-Cache: HIT-EXACT``) with ``cost_usd: 0`` and no debit
when the same request (model, messages, temperature ≤ 0.2, max tokens) was answered in the
last hour; ``X-Skip-Cache: true`` skips it. A message with an image part sent to a model
without vision is answered by the vision-capable equivalent, with ``X-Model-Upgraded: true``
and ``X-Model-Original: <requested model>`` (``chat-vision-router.ts``).

A test key (``csk_test_…``) is free, as at Cencori: its answers carry ``cost_usd`` 0 and
debit nothing. ``GET /api/v1/metrics?period=1h|24h|7d|30d|mtd`` (also ``/v1/metrics``) is
Cencori's Metrics API for the calling key's requests, in the shape of cencori/cencori
``app/api/v1/metrics/route.ts`` and its docs page ``app/docs/api/metrics/page.tsx``.
"""

from __future__ import annotations

import hashlib
import json
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
    new_id,
)
from .models import MODELS, context_window
from .openai import SANDBOX_TAG, OpenAIDoor, read_openai_chat
from .replies import Reply
from .wallet import Wallet, gateway_charge, provider_cost

__all__ = [
    "DEFAULT_MODEL",
    "GATEWAY_PROVIDERS",
    "CencoriNativeDoor",
    "CencoriOpenAIDoor",
    "GatewayCache",
    "route_model",
    "vision_upgrade",
]

DEFAULT_MODEL = "gemini-2.5-flash"
TOP_UP_URL = "/billing"  # relative, as the real gateway sends it (gateway-middleware.ts)
GATEWAY_PROVIDERS = frozenset(
    {
        "openai",
        "anthropic",
        "google",
        "mistral",
        "groq",
        "cohere",
        "xai",
        "deepseek",
        "perplexity",
        "qwen",
        "openrouter",
        "together",
        "zai",
        "cerebras",
        "huggingface",
    }
)
CACHE_TTL_S = 3600.0  # the gateway's default cache TTL
MAX_CACHEABLE_TEMPERATURE = 0.2  # DEFAULT_CACHE_CONFIG.maxCacheableTemperature

# Cencori's router (lib/providers/router.ts), in its order and case-sensitive like it:
# explicit overrides, then name prefixes, then ``*:free``, then ``provider/model``.
_OVERRIDES: dict[str, str] = {
    "gpt-oss-120b": "cerebras",
    "openai/gpt-oss-120b": "groq",
    "openai/gpt-oss-20b": "groq",
    "qwen/qwen3-32b": "groq",
    "moonshotai/kimi-k2-instruct": "groq",
    "meta-llama/Llama-3.3-70B-Instruct": "huggingface",
}
_PREFIX_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), provider)
    for pattern, provider in (
        (r"^(gpt-|o1-|text-|davinci-)", "openai"),
        (r"^claude-", "anthropic"),
        (r"^gemini-", "google"),
        (r"^(mistral-|codestral-|open-mistral-|open-mixtral-)", "mistral"),
        (r"llama|^mixtral-", "groq"),
        (r"^command-", "cohere"),
        (r"^grok-", "xai"),
        (r"^glm-", "zai"),
        (r"^deepseek-", "deepseek"),
        (r"sonar", "perplexity"),
        (r"qwen", "qwen"),
    )
)

GATEWAY_MODELS: tuple[tuple[str, str], ...] = tuple(
    (m, provider)
    for provider in ("openai", "anthropic", "google", "mistral", "groq", "xai", "deepseek")
    for m in MODELS[provider]
)

# chat-vision-router.ts: which models see images, and what the others are upgraded to
_VISION_CAPABLE = re.compile(
    r"^(gpt-4o|gpt-4-turbo|gpt-4-vision|claude-3-5-sonnet|"
    r"claude-3-opus|claude-sonnet-4|claude-sonnet-5|gemini-2\.5|"
    r"gemini-3)",
    re.IGNORECASE,
)
_VISION_UPGRADES = {
    "gpt-3.5-turbo": "gpt-4o-mini",
    "gpt-4": "gpt-4o",
    "claude-3-haiku-20240307": "claude-3-5-haiku-latest",
    "claude-haiku-4.5": "claude-sonnet-4-6",
    "claude-haiku-4-5": "claude-sonnet-4-6",
    "gemini-2.0-flash-lite": "gemini-2.5-flash-lite",
    "gemini-2.0-flash": "gemini-2.5-flash",
}


def route_model(model: str) -> tuple[str, str]:
    """``(provider, model id sent upstream)`` by Cencori's rules; ``BadRequest`` if none."""
    override = _OVERRIDES.get(model)
    if override:  # sent as written: Groq's own id for gpt-oss is "openai/gpt-oss-20b"
        return override, model
    for pattern, provider in _PREFIX_RULES:
        if pattern.search(model):
            return provider, model
    if model.endswith(":free"):
        return "openrouter", model
    head, sep, rest = model.partition("/")
    if sep and rest and head.lower() in GATEWAY_PROVIDERS | {"x-ai"}:
        return ("xai" if head.lower() == "x-ai" else head.lower()), rest
    # the router throws a plain ProviderError: the engine answers 502 provider_error
    raise BadRequest(
        f"Cannot determine a provider for model '{model}'. Use a known model ID "
        "or an explicit provider/model prefix.",
        status=502,
        kind="engine",
        code="provider_error",
    )


def vision_upgrade(model: str) -> str | None:
    """The model the gateway answers an image request with, when ``model`` cannot see
    (None: no upgrade)."""
    if _VISION_CAPABLE.search(model):
        return None
    mapped = _VISION_UPGRADES.get(model)
    if mapped:
        return mapped if mapped != model else None
    lower = model.lower()
    if lower.startswith(("gpt", "o1", "o3")):
        return "gpt-4o-mini"
    if lower.startswith("claude"):
        return "claude-3-5-sonnet-latest"
    if lower.startswith("gemini"):
        return "gemini-2.5-flash"
    return None


def _has_image(messages: Any) -> bool:
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and (
                (part.get("type") == "image_url" and part.get("image_url"))
                or (part.get("type") == "image" and part.get("source"))
                or part.get("type") == "input_image"
            ):
                return True
    return False


def _cencori_key(req_headers: dict[str, str]) -> str | None:
    key = req_headers.get("cencori_api_key") or req_headers.get("cencori-api-key")
    return (key.strip() or None) if key else bearer(req_headers)


def _is_test_key(key: str | None) -> bool:
    return key is not None and key.startswith("csk_test_")


# --- the Metrics API's request log -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Logged:
    """One gateway request as Cencori's ``ai_requests`` table keeps it (for /v1/metrics)."""

    ts: float
    key: str
    status: str  # success | error
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


_PERIODS = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}


def _period_start(period: str, end: datetime) -> datetime:
    if period == "mtd":  # month to date (Cencori's server runs in UTC)
        return end.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return end - _PERIODS.get(period, _PERIODS["24h"])  # unknown: 24h, as Cencori does


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
        "period": period,
        "start_date": _iso(start),
        "end_date": _iso(end),
        "requests": {
            "total": total,
            "success": success,
            "error": sum(e.status == "error" for e in rows),
            "filtered": 0,
            "success_rate": _round(Decimal(success * 100) / total, 2) if total else 0,
        },
        "cost": {
            "total_usd": _round(cost, 4),
            "average_per_request_usd": _round(cost / total, 6) if total else 0,
        },
        "tokens": {"prompt": prompt, "completion": completion, "total": prompt + completion},
        "latency": {
            "avg_ms": round(sum(latencies) / len(latencies)) if latencies else 0,
            "p50_ms": pct(0.5),
            "p90_ms": pct(0.9),
            "p99_ms": pct(0.99),
        },
        "providers": providers,
        "models": models,
    }


def _key_problem(key: str | None) -> str | None:
    if not key:
        return "missing_key"
    if not key.startswith("csk_") or "revoked" in key:
        return "invalid_key"
    return None


class GatewayCache:
    """The project's exact-match response cache: (key hint, model, messages, temperature,
    max tokens) → the stored answer, for an hour. Thread-safe; cleared by a reset."""

    def __init__(self, enabled: bool = True, clock: Any = time.monotonic) -> None:
        self.enabled = enabled
        self._clock = clock
        self._entries: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(ex: Exchange, body: dict[str, Any], model: str, max_tokens: int | None) -> str:
        raw = json.dumps(
            [
                ex.hint,
                model,
                body.get("temperature") or 0,
                max_tokens,
                [
                    (m.get("role"), m.get("content"))
                    for m in body.get("messages", [])
                    if isinstance(m, dict)
                ],
            ],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(raw.encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None or hit[0] < self._clock():
                self._entries.pop(key, None)
                return None
            return hit[1]

    def put(self, key: str, answer: dict[str, Any]) -> None:
        with self._lock:
            self._entries[key] = (self._clock() + CACHE_TTL_S, answer)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# kind -> (status, title, code, message or None); the middleware's errors, verbatim
_MIDDLEWARE: dict[str, tuple[int, str, str, str | None]] = {
    "missing_key": (
        401,
        "Missing API key. Provide CENCORI_API_KEY header or Authorization: Bearer <key>",
        "missing_api_key",
        None,
    ),
    "invalid_key": (401, "Invalid API key", "invalid_api_key", None),
    "payment": (
        402,
        "Spend cap reached",
        "spend_cap_reached",
        "Monthly spend cap has been reached.",
    ),
    "permission": (
        403,
        "Credit balance exhausted",
        "credit_balance_exhausted",
        "Your organization has run out of credits. Top up to continue.",
    ),
    "credits": (
        403,
        "Credit balance exhausted",
        "credit_balance_exhausted",
        "Your organization has run out of credits. Top up to continue.",
    ),
    "rate_limit": (429, "Rate limit exceeded", "rate_limit_exceeded", None),
}
# kind -> (status, engine error code, default message); the engine's flat errors
_ENGINE: dict[str, tuple[int, str, str]] = {
    "server": (500, "internal_error", "Unexpected internal error."),
    "unavailable": (503, "provider_unavailable", "The provider is temporarily unavailable."),
    "overloaded": (503, "provider_unavailable", "Overloaded"),
    "pricing": (503, "pricing_unavailable", "Pricing is not configured for this model"),
    "not_found": (404, "provider_model_not_found", "The model was not found."),
    "context": (400, "provider_invalid_request", "The prompt is too long for the model."),
    "engine": (502, "provider_error", "Provider request failed"),
}


class _Gateway(Door):
    """What both Cencori doors do: key rules, model routing, pricing, wallet, headers.
    Listed first in their bases, so these parts take precedence over the wire format's."""

    via = "cencori"

    def api_key(self, req: Any) -> str | None:
        return _cencori_key(req.headers)

    def key_problem(self, key: str | None) -> str | None:
        return _key_problem(key)

    def middleware_error(
        self, ex: Exchange, kind: str, message: str | None, retry_after: int | None
    ) -> tuple[int, Headers, dict[str, Any]]:
        """``(status, headers, body)`` of a middleware error: flat, with ``code``."""
        status, title, code, default_message = _MIDDLEWARE[kind]
        self.log_failure(ex)
        body: dict[str, Any] = {"error": title}
        headers: Headers = [("X-Request-Id", ex.request_id)]
        if code == "rate_limit_exceeded":
            limit = ex.server.limiter.rpm or 60
            delay = retry_after or 1
            body["message"] = f"{limit} requests per minute allowed. Try again shortly."
            body["code"] = code
            body["retry_after_ms"] = delay * 1000
            headers += [
                ("Retry-After", str(delay)),
                *self.ratelimit_headers(ex, remaining=0, reset=delay),
            ]
            return status, headers, body
        if message or default_message:
            body["message"] = (message or default_message or "") + SANDBOX_TAG
        body["code"] = code
        if code == "credit_balance_exhausted":
            body["balance"] = float(max(ex.server.wallet.balance, Decimal(0)))
            body["top_up_url"] = TOP_UP_URL
        elif code == "spend_cap_reached":
            spent = float(ex.server.wallet.spent)
            body["spend"] = {"current": spent, "cap": spent}
            body["upgrade_url"] = TOP_UP_URL
        return status, headers, body

    @staticmethod
    def log_failure(ex: Exchange) -> None:
        """A project's request that failed counts in the Metrics API (as ``error``)."""
        if ex.key and _key_problem(ex.key) is None:
            _log_of(ex).add(
                _Logged(
                    time.time(), ex.key, "error", Decimal(0), 0, 0, ex.elapsed_ms(), None, ex.model
                )
            )

    def engine_error(
        self, ex: Exchange, kind: str, message: str | None, status: int | None
    ) -> tuple[int, Headers, str, str]:
        """``(status, headers, code, message)`` of an engine/provider failure."""
        default_status, code, default_message = _ENGINE.get(kind, _ENGINE["server"])
        self.log_failure(ex)
        return (
            status or default_status,
            [("X-Request-Id", ex.request_id)],
            code,
            (message or default_message) + SANDBOX_TAG,
        )

    def ratelimit_headers(
        self, ex: Exchange, *, remaining: int | None = None, reset: int | None = None
    ) -> Headers:
        limiter = ex.server.limiter
        limit = limiter.rpm or 60
        if remaining is None:
            remaining = ex.remaining if limiter.rpm else limit - 1
        if reset is None:
            reset = limiter.reset_seconds(ex.key or "") if limiter.rpm else 60
        return [
            ("X-RateLimit-Limit", str(limit)),
            ("X-RateLimit-Remaining", str(remaining)),
            ("X-RateLimit-Reset", str(int((time.time() + reset) * 1000))),
        ]

    def ok_headers(self, ex: Exchange) -> Headers:
        return [("X-Request-Id", ex.request_id)]

    def receipt_headers(self, call: ChatCall, cache: str | None) -> Headers:
        """The receipts on a successful answer: cache state and a vision upgrade."""
        headers: Headers = []
        if cache is not None:
            headers += [
                ("X-Cencori-Cache", cache),
                ("X-Cache", {"HIT": "HIT-EXACT"}.get(cache, cache)),
            ]
        original = call.extra.get("model_original")
        if original:
            headers += [("X-Model-Upgraded", "true"), ("X-Model-Original", original)]
        return headers

    def routed(self, body: dict[str, Any], model: str) -> tuple[str, str, str | None]:
        """``(provider, upstream model, original model if upgraded for vision)``."""
        original = None
        if _has_image(body.get("messages")):
            upgraded = vision_upgrade(model)
            if upgraded:
                original, model = model, upgraded
        provider, upstream = route_model(model)
        return provider, upstream, original

    def model_known(self, call: ChatCall) -> bool:
        # an unpriced model fails closed (pricing_unavailable) before any provider is asked,
        # so only a priced model the provider lacks would 404: the test marker plays it
        return NOT_FOUND_MARK not in call.model

    def not_found_message(self, call: ChatCall) -> str | None:
        return f"Model {call.model} not found at {call.provider}."

    def context_window(self, call: ChatCall) -> int | None:
        return context_window(call.provider, call.model)

    def context_message(self, call: ChatCall, tokens: int, window: int) -> str:
        return (
            f"[{call.provider}] The prompt is {tokens} tokens, over {call.model}'s "
            f"{window}-token context window."
        )

    def answer_early(self, ex: Exchange, call: ChatCall) -> bool:
        return self.answer_cached(ex, call)

    def precheck(self, ex: Exchange, call: ChatCall) -> bool:
        if provider_cost(call.provider, call.model, 1, 1) is None:
            self.send_error(
                ex, "pricing", f"Pricing is not configured for {call.provider}/{call.model}"
            )
            return False
        if ex.server.wallet.exhausted():
            self.send_error(ex, "credits")
            return False
        return True

    def served_model(self, model: str) -> str:
        return model

    def cache_state(self, ex: Exchange, call: ChatCall) -> tuple[str | None, str | None]:
        """``(cache key, "MISS"/None)`` for a request the project cache may answer."""
        cache: GatewayCache = ex.server.gateway_cache
        body = ex.req.json()
        if (
            not cache.enabled
            or call.stream
            or body.get("tools")
            or call.extra.get("model_original")
            or ex.req.headers.get("x-skip-cache", "").lower() == "true"
        ):
            return None, None
        temperature = body.get("temperature") or 0
        if not isinstance(temperature, (int, float)) or temperature > MAX_CACHEABLE_TEMPERATURE:
            return None, None
        return GatewayCache.key(ex, body, call.model, call.max_tokens), "MISS"

    @staticmethod
    def charge(call: ChatCall, reply: Reply) -> Decimal:
        if call.extra.get("test_key"):
            return Decimal(0)  # csk_test_ keys: no charges
        cost = provider_cost(
            call.provider, call.model, reply.input_tokens, reply.output_tokens
        ) or Decimal(0)
        return gateway_charge(cost)

    def settle(self, ex: Exchange, call: ChatCall, reply: Reply) -> None:
        charge = self.charge(call, reply)
        if charge:
            ex.server.wallet.debit(charge)
        _log_of(ex).add(
            _Logged(
                time.time(),
                ex.key or "",
                "success",
                charge,
                reply.input_tokens,
                reply.output_tokens,
                ex.elapsed_ms(),
                call.provider,
                call.model,
            )
        )

    def handle_metrics(self, ex: Exchange) -> None:
        """``GET /api/v1/metrics?period=…``: Bearer key only, 401 ``{"error": …}`` as Cencori."""
        ex.request_id = new_id("req_")
        auth = ex.req.headers.get("authorization") or ""
        key = auth.replace("Bearer ", "", 1).strip() if auth else ""
        headers: Headers = [("X-Request-Id", ex.request_id)]
        if not key:
            ex.send_json(
                401, {"error": "Missing API key. Use Authorization: Bearer <api_key>"}, headers
            )
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

    def stream_error_frames(self, ex: Exchange) -> list[tuple[str | None, str]]:
        # the engine's catch: sse({error: message}) and close, no [DONE] (v1-execute.ts)
        return [(None, dumps({"error": "Provider stream failed" + SANDBOX_TAG}))]

    def answer_cached(self, ex: Exchange, call: ChatCall) -> bool:
        """Answer from the project cache (``HIT``, no charge); False on a miss."""
        key, state = self.cache_state(ex, call)
        call.extra["cache_key"], call.extra["cache"] = key, state
        if key is None:
            return False
        stored = ex.server.gateway_cache.get(key)
        if stored is None:
            return False
        call.extra["cache"] = "HIT"
        ex.send_json(
            200,
            self.cached_body(ex, stored),
            [*self.ok_headers(ex), *self.receipt_headers(call, "HIT")],
        )
        return True

    def cached_body(self, ex: Exchange, stored: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class CencoriNativeDoor(_Gateway, Door):
    """``POST /api/ai/chat``: Cencori's own request and response shapes."""

    name = "cencori"

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
        if kind in _MIDDLEWARE:
            status, headers, body = self.middleware_error(ex, kind, message, retry_after)
        elif kind == "bad_request":  # the handler's own checks: a bare {"error": text}
            self.log_failure(ex)
            status, headers = status or 400, [("X-Request-Id", ex.request_id)]
            body = {"error": (message or "Invalid request") + SANDBOX_TAG}
        else:
            status, headers, code, text = self.engine_error(ex, kind, message, status)
            body = {"error": code, "message": text}
            if code == "provider_rate_limited":
                body["retry_after"] = retry_after or 1  # seconds
        ex.send_json(status, body, headers)

    def parse(self, ex: Exchange) -> ChatCall:
        try:
            body = ex.req.json()
        except ValueError:
            raise BadRequest("Invalid request: body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("Invalid request: messages array is required")
        if not isinstance(body.get("messages"), list):
            raise BadRequest("Invalid request: messages array is required")
        fields = read_openai_chat(
            {
                **body,
                "max_tokens": None,
                "max_completion_tokens": None,
                # the native door's name for it (Cencori's structured-output docs)
                "response_format": body.get("responseFormat"),
            },
            default_model=DEFAULT_MODEL,
        )
        limit = body.get("maxTokens")
        fields["max_tokens"] = (
            max_tokens_of(limit, "maxTokens")
            if limit is not None
            else max_tokens_of(body.get("max_tokens"), "max_tokens")
        )
        fields.pop("include_usage")
        provider, upstream, original = self.routed(body, fields.pop("model"))
        return ChatCall(
            model=upstream,
            provider=provider,
            **fields,
            extra={"model_original": original, "test_key": _is_test_key(ex.key)},
        )

    def answer(self, call: ChatCall, reply: Reply, ex: Exchange) -> dict[str, Any]:
        finish = "refusal" if call.refused else "length" if reply.truncated else "stop"
        usage = {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens,
        }
        return {
            "id": "chatcmpl-" + ex.request_id[4:],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": call.answered_model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": reply.text,
                        **({"refusal": reply.text} if call.refused else {}),
                    },
                    "finish_reason": finish,
                }
            ],
            "content": reply.text,
            "provider": call.provider,
            "toolCalls": None,
            "usage": usage,
            "cost_usd": float(self.charge(call, reply)),
            "finish_reason": finish,
        }

    def cached_body(self, ex: Exchange, stored: dict[str, Any]) -> dict[str, Any]:
        # buildCencoriChatResponse with cacheHit: cost 0, cache_hit and cache_type added
        return {
            **stored,
            "id": "chatcmpl-" + ex.request_id[4:],
            "created": int(time.time()),
            "cost_usd": 0,
            "cache_hit": True,
            "cache_type": "exact",
        }

    async def respond(self, ex: Exchange, call: ChatCall, reply: Reply) -> None:
        if not call.stream:
            body = self.answer(call, reply, ex)
            key = call.extra.get("cache_key")
            if key is not None and ex.fault is None:
                ex.server.gateway_cache.put(key, body)
            ex.send_json(
                200,
                body,
                [*self.ok_headers(ex), *self.receipt_headers(call, call.extra.get("cache"))],
            )
            return
        if call.images:
            await self._stream_vision(ex, call, reply)
            return
        finish = "refusal" if call.refused else "length" if reply.truncated else "stop"
        usage = {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens,
        }
        sse = ex.sse(
            [*self.ok_headers(ex), *self.receipt_headers(call, None)],
            content_frames=len(reply.pieces),
        )
        for piece in reply.pieces:
            await sse.frame('{"delta":' + json_str(piece) + "}", content=True)
        await sse.frame(f'{{"delta":"","finish_reason":"{finish}"}}')
        await sse.frame(dumps({"usage": usage, "cost_usd": float(self.charge(call, reply))}))
        await sse.frame("[DONE]")
        await sse.close()

    async def _stream_vision(self, ex: Exchange, call: ChatCall, reply: Reply) -> None:
        """A streamed request with an image takes the gateway's vision path
        (``chat-vision-router.ts``), which streams in OpenAI's chunk shape on both doors:
        the whole (guarded) answer in one chunk, a finish chunk, ``[DONE]``; no usage and no
        cost line (the wallet is still charged)."""
        base = {
            "id": "chatcmpl-vision-" + ex.request_id[4:],
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": call.answered_model,
        }
        sse = ex.sse([*self.ok_headers(ex), *self.receipt_headers(call, None)], content_frames=1)
        delta = {"index": 0, "delta": {"content": reply.text}, "finish_reason": None}
        await sse.frame(dumps({**base, "choices": [delta]}), content=True)
        await sse.frame(
            dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        )
        await sse.frame("[DONE]")
        await sse.close()


class CencoriOpenAIDoor(_Gateway, OpenAIDoor):
    """``POST /v1/chat/completions`` and ``GET /v1/models`` on the gateway."""

    def __init__(self) -> None:
        super().__init__("cencori")

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
        if kind in _MIDDLEWARE:  # the same middleware, so the same flat bodies
            status, headers, body = self.middleware_error(ex, kind, message, retry_after)
            ex.send_json(status, body, headers)
            return
        if kind == "bad_request":
            self.log_failure(ex)
            OpenAIDoor.send_error(self, ex, kind, message, status=status, param=param, code=code)
            return
        status, headers, code, text = self.engine_error(ex, kind, message, status)
        body = {"error": {"message": text, "type": "invalid_request_error", "code": code}}
        if code == "provider_rate_limited":
            body["retry_after"] = retry_after or 1
        ex.send_json(status, body, headers)

    def parse(self, ex: Exchange) -> ChatCall:
        try:
            body = ex.req.json()
        except ValueError:
            raise BadRequest("The request body is not valid JSON.") from None
        fields = read_openai_chat(body, default_model=DEFAULT_MODEL)
        provider, upstream, original = self.routed(body, fields.pop("model"))
        return ChatCall(
            model=upstream,
            provider=provider,
            **fields,
            extra={"model_original": original, "test_key": _is_test_key(ex.key)},
        )

    def ok_headers(self, ex: Exchange) -> Headers:
        return _Gateway.ok_headers(self, ex)

    def cached_body(self, ex: Exchange, stored: dict[str, Any]) -> dict[str, Any]:
        return {**stored, "id": "chatcmpl-" + ex.request_id[4:], "cost_usd": 0}

    def usage_extra(self, call: ChatCall, reply: Reply) -> dict[str, Any]:
        return {}

    def top_extra(self, call: ChatCall, reply: Reply) -> dict[str, Any]:
        return {"provider": call.provider, "cost_usd": float(self.charge(call, reply))}

    def answered(self, ex: Exchange, call: ChatCall, body: dict[str, Any] | None) -> Headers:
        key = call.extra.get("cache_key")
        if body is not None and key is not None and ex.fault is None:
            ex.server.gateway_cache.put(key, body)
        return self.receipt_headers(call, call.extra.get("cache") if body is not None else None)

    def stream_error_frames(self, ex: Exchange) -> list[tuple[str | None, str]]:
        return _Gateway.stream_error_frames(self, ex)
