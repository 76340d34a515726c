"""The Cencori gateway's native door (``POST {base}/api/ai/chat``): the managed route.

- auth: header ``CENCORI_API_KEY: csk_…`` (what Cencori's own SDK sends);
- request: ``model``, ``messages``, ``temperature``, ``maxTokens``, ``stream``;
- response: OpenAI-like ``choices[]`` plus top-level ``content``, ``model``, ``provider``
  (who served it → ``served_by``), ``usage.{prompt,completion,total}_tokens``,
  ``cost_usd`` (what the wallet was charged → ``gateway_cost_usd``) and ``finish_reason``;
- stream: ``data: {"delta": "…"}`` lines, a ``{"delta": "", "finish_reason": …}`` line, a
  terminal ``{"usage": {…}, "cost_usd": …}`` chunk, then ``data: [DONE]``; a mid-stream block
  is ``data: {"error": "Response blocked"}`` and the connection closes without ``[DONE]``;
- errors come in two shapes (see :meth:`CencoriGatewayProvider.error_from_body`) and are
  mapped by their code first, then by status, through the one table
  (:func:`cencori_nb.transport.error_class`); ``top_up_url`` arrives relative (``/billing``)
  and is made absolute.

Two codes leave the provider-error branch of the tree because they are about money, not
about a provider: ``credit_balance_exhausted`` (403) → :class:`CreditsExhaustedError` and
``spend_cap_reached`` (402) → :class:`SpendCapReachedError`; ``pricing_unavailable`` (503)
→ :class:`PricingError`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import urljoin, urlsplit

from ..catalog import CENCORI_BILLING_URL
from ..errors import (
    BadResponseError,
    CencoriError,
    CreditsExhaustedError,
    PermissionDeniedError,
    PricingError,
    SpendCapReachedError,
)
from ..types import ChatRequest
from . import _common as c
from ._images import openai_content
from .base import Provider, ProviderResult, register
from .openai import openai_usage

if TYPE_CHECKING:
    import httpx2

    from ..keystore.secret import Secret
    from ..schemas import Schema

__all__ = [
    "CACHE_STATES",
    "CENCORI_BASE_URL",
    "CencoriGatewayProvider",
    "CencoriStreamParser",
    "Receipts",
    "gateway_receipts",
    "response_format",
    "top_up_url",
]

CENCORI_BASE_URL = "https://cencori.com"
TOP_UP_URL = CENCORI_BILLING_URL  # shown when the gateway sends none (or a foreign link)

# The engine's `{error: "<code>"}`: a snake_case word, never a title with spaces.
_CODE_WORD = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")


def response_format(schema: Schema) -> dict[str, Any]:
    """``schema=`` as the native door's ``responseFormat`` (Cencori's structured-output
    docs: ``{type: "json_schema", json_schema: {name, schema}}``). The schema is sent in
    OpenAI's strict subset, since the gateway hands it to whichever provider serves the
    model; the answer is validated here in any case (the docs list JSON mode only for
    Anthropic and Google behind the gateway)."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": schema.name,
            "schema": schema.wire("strict"),
            "strict": True,
        },
    }


def top_up_url(value: Any) -> str:
    """The gateway's ``top_up_url`` made absolute. The gateway sends ``/billing`` (relative
    to its own site), and the billing page is on Cencori's site even when the request went to
    a sandbox or a proxy, so it resolves against :data:`CENCORI_BASE_URL`.

    Only an https page on Cencori's own site is ever shown: the one message that tells a
    person where to pay must not become a link a proxy or a fake gateway chose
    (``https://evil.example/pay``, ``//evil.example``, ``javascript:``…); anything else gives
    :data:`TOP_UP_URL`.
    """
    if not isinstance(value, str) or not value.strip() or any(ch.isspace() for ch in value.strip()):
        return TOP_UP_URL
    url = urljoin(CENCORI_BASE_URL + "/", value.strip())
    parts = urlsplit(url)
    if (
        parts.scheme != "https"
        or parts.hostname not in _CENCORI_HOSTS
        or parts.username
        or parts.password
        or parts.port not in (None, 443)
    ):
        return TOP_UP_URL
    return url


_CENCORI_HOSTS = frozenset({"cencori.com", "www.cencori.com"})


CACHE_STATES = frozenset({"HIT", "SEMANTIC-HIT", "MISS"})  # X-Cencori-Cache values
_MODEL_ID = re.compile(r"[\w.:/@+-]{1,200}")


class Receipts(TypedDict):
    """What the gateway's headers say about how it answered (see :func:`gateway_receipts`)."""

    gateway_cache: str | None
    model_original: str | None


class _ErrorContext(TypedDict):
    provider: str
    status_code: int | None
    request_id: str | None
    code: str | None


def gateway_receipts(response: httpx2.Response | None) -> Receipts:
    """The gateway's receipts from ``response``'s headers: ``gateway_cache`` (``HIT``,
    ``SEMANTIC-HIT`` or ``MISS``; None when absent or unrecognised) and ``model_original``
    (the model asked for, when ``X-Model-Upgraded: true`` says the gateway answered with
    another one). Header values are untrusted: anything unexpected is dropped."""
    if response is None:
        return {"gateway_cache": None, "model_original": None}
    cache = (response.headers.get("x-cencori-cache") or "").strip().upper()
    original = None
    if (response.headers.get("x-model-upgraded") or "").strip().lower() == "true":
        value = (response.headers.get("x-model-original") or "").strip()
        original = value if _MODEL_ID.fullmatch(value) else None
    return {"gateway_cache": cache if cache in CACHE_STATES else None, "model_original": original}


def _money(value: Any) -> str:
    dec = c.to_decimal(value)
    return "unknown" if dec is None else f"${dec:.2f}"


class CencoriGatewayProvider(Provider):
    """Cencori's native chat endpoint (managed keys, paid from the credit wallet)."""

    name = "cencori"
    sandbox_prefix = ""  # the sandbox serves /api/ai/chat at its root
    default_base_url = CENCORI_BASE_URL
    request_id_headers = ("x-request-id",)

    def __repr__(self) -> str:
        return "CencoriGatewayProvider()"

    def build_request(
        self, request: ChatRequest, *, model: str, api_key: Secret, base_url: str
    ) -> httpx2.Request:
        """``POST {base_url}/api/ai/chat`` with the ``CENCORI_API_KEY`` header."""
        body: dict[str, Any] = {
            "model": model,
            "messages": [
                {"role": m.role, "content": openai_content(m, self.name)} for m in request.messages
            ],
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["maxTokens"] = request.max_tokens
        if request.stream:
            body["stream"] = True
        if request.schema is not None:
            body["responseFormat"] = response_format(request.schema)
            c.body_with_extra(body, request, c.RESERVED_EXTRA | {"responseFormat"})
        else:
            c.body_with_extra(body, request)
        return c.json_request(
            c.join_base(base_url, "/api/ai/chat"),
            {"CENCORI_API_KEY": api_key.reveal()},
            body,
            stream=request.stream,
        )

    def parse_response(self, response: httpx2.Response) -> ProviderResult:
        """Content, model, serving provider, usage, ``cost_usd`` and finish reason."""
        rid = self.request_id(response)
        body = c.response_json(response, provider=self.name, request_id=rid)
        rid = rid or body.get("id")
        if body.get("error"):
            raise self.error_from_body(body, status=None, key=c.sent_key(response), request_id=rid)
        where: c.Where = {
            "provider": self.name,
            "status_code": response.status_code,
            "request_id": rid,
        }
        text = body.get("content")
        if text is None:  # the OpenAI-shaped part carries it too
            text = c.dig(body, "choices", 0, "message", "content")
        refusal = c.dig(body, "choices", 0, "message", "refusal")
        if text is None and isinstance(refusal, str):
            text = refusal
        if text is None:
            c.require(body, "content", **where)  # raises, naming the field
        finish = body.get("finish_reason") or c.dig(body, "choices", 0, "finish_reason")
        if not isinstance(refusal, str):
            refusal = str(text) if finish == "refusal" else None
        return ProviderResult(
            text=str(text),
            refusal=refusal,
            model=body.get("model") or None,
            usage=openai_usage(body.get("usage")),
            finish_reason=body.get("finish_reason") or c.dig(body, "choices", 0, "finish_reason"),
            request_id=rid,
            gateway_cost_usd=c.to_decimal(body.get("cost_usd")),
            served_by=body.get("provider") or None,
            **gateway_receipts(response),
        )

    def stream_parser(self, response: httpx2.Response | None = None) -> CencoriStreamParser:
        """A parser for ``{"delta"}`` lines, the usage/cost chunk and ``[DONE]``."""
        parser = CencoriStreamParser(self, **c.stream_context(self, response))
        parser.receipts = gateway_receipts(response)
        return parser

    def map_error(self, response: httpx2.Response) -> CencoriError:
        """The error for a >= 400 gateway response (the one place its errors map)."""
        body = c.error_json(response)
        if not isinstance(body, dict):
            said = c.raw_said(response)
            body = {"error": said} if said else {}
        return self.error_from_body(
            body,
            status=response.status_code,
            key=c.sent_key(response),
            request_id=self.request_id(response),
            retry_after=c.retry_after(response.headers, body),
        )

    def error_from_body(
        self,
        body: dict[str, Any],
        *,
        status: int | None,
        key: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> CencoriError:
        """Map a gateway error (from an error response or a stream line).

        Two shapes (lib/gateway-middleware.ts and lib/gateway/ai-chat-handler.ts in the
        public cencori/cencori repository): middleware errors are ``{error: "<title>",
        message, code, …}``; engine and provider failures are ``{error: "<code>", message}``
        with no ``code`` (and ``retry_after`` in seconds on ``provider_rate_limited``). The
        OpenAI-compatible door nests ``{error: {message, type, code}}``.
        """
        err = body.get("error")
        if isinstance(err, dict):  # the OpenAI-compatible door nests it
            body = {**body, **err}
            err = err.get("message")
        code = str(body.get("code") or "") or None
        title = err if isinstance(err, str) else None
        if code is None and title and _CODE_WORD.fullmatch(title):
            code, title = title, None  # the engine's shape: the error IS the code
        said = body.get("message") or title
        if isinstance(said, str) and title and title not in said:
            said = f"{title}: {said}"
        cls = c.error_class(status, code)
        if status == 402 and cls is PermissionDeniedError:
            # Cencori's SDKs map any 402 to "insufficient credits", but the gateway uses
            # 403 credit_balance_exhausted for an empty wallet and 402 only for the spend
            # cap (docs/cencori.md, "Discrepancies"); we follow the server.
            cls = SpendCapReachedError
        elif status in (400, 403, None) and body.get("reasons"):
            cls = PermissionDeniedError  # the SDK's SafetyError: content was refused
        elif status is None and title and "block" in title.lower():
            cls = PermissionDeniedError  # {"error": "Response blocked"} mid-stream
        if retry_after is None:  # a 200 body or a stream line: only the body says
            retry_after = c.retry_after(None, body)
        common: _ErrorContext = {
            "provider": self.name,
            "status_code": status,
            "request_id": request_id,
            "code": code,
        }
        secrets = [key] if key else []
        quoted = c.quote(said, secrets) if said else ""
        if quoted and quoted[-1] not in ".!?…":
            quoted += "."
        if cls is CreditsExhaustedError:
            top_up = top_up_url(body.get("top_up_url"))
            balance = c.to_decimal(body.get("balance"))
            return CreditsExhaustedError(
                f"Your Cencori credit wallet is empty (balance {_money(balance)}), so the "
                "managed route cannot be used.",
                hint=f"Top up at {top_up} (then record it here with `cencori-nb credits "
                "top-up AMOUNT`), or use your own key for this provider (BYOK): "
                "`cencori-nb keys set PROVIDER`.",
                balance=balance,
                top_up_url=top_up,
                **common,
            )
        if cls is SpendCapReachedError:
            spend = c.as_object(body.get("spend"))
            current, cap = c.to_decimal(spend.get("current")), c.to_decimal(spend.get("cap"))
            detail = f" ({_money(current)} of {_money(cap)})" if cap is not None else ""
            return SpendCapReachedError(
                f"This Cencori project reached its spend cap{detail} ({status or 'stream'}).",
                hint="Raise the cap in the Cencori dashboard, wait for the next billing "
                "period, or use your own key for this provider (BYOK).",
                spend_current=current,
                spend_cap=cap,
                **common,
            )
        if cls is PricingError:
            return PricingError(
                "Cencori has no price for this model, so it will not serve it on credits"
                f" ({status or 'stream'}).{' Cencori said: ' + quoted if quoted else ''}",
                hint="Use a model from the Cencori catalogue, or your own key for its "
                "provider (BYOK).",
                **common,
            )
        hint = headline = None
        if code == "provider_auth_error":
            headline = (
                f"The provider behind Cencori rejected Cencori's key for it ({status or 'stream'})."
            )
            hint = (
                "This is on Cencori's side (or the provider key stored in your Cencori "
                "project): check the project's provider settings, or retry later."
            )
        elif cls is PermissionDeniedError:
            hint = (
                "Cencori's security filter blocked the request or the response: rephrase "
                "the prompt, or review the project's security settings."
            )
        elif code == "provider_model_not_found":
            hint = "Check the model name against the Cencori catalogue (`%cencori models`)."
        return c.build_error(
            cls,
            provider=self.name,
            status=status,
            said=said,
            code=code,
            request_id=request_id,
            retry_after=retry_after,
            key=key,
            hint=hint,
            headline=headline,
        )


class CencoriStreamParser(c.AdapterStreamParser):
    """The native stream. ``usage`` and ``gateway_cost_usd`` come from the terminal metrics
    chunk; a stream cut before it yields ``usage=None`` and ``done=False``."""

    adapter: CencoriGatewayProvider
    receipts: Receipts | None = None  # set by stream_parser from the response's headers

    def result(self) -> ProviderResult:
        result = super().result()
        if self.receipts is not None:
            result.gateway_cache = self.receipts["gateway_cache"]
            result.model_original = self.receipts["model_original"]
        return result

    def feed(self, event: httpx2.ServerSentEvent) -> str | None:
        data = event.data.strip()
        if self.done or not data:
            return None
        if data == "[DONE]":
            self.done = True
            return None
        line = self.json(event)
        if not isinstance(line, dict):
            raise BadResponseError(
                "A Cencori stream line is not a JSON object.",
                provider=self.provider,
                request_id=self.request_id,
            )
        if line.get("error"):
            raise self.adapter.error_from_body(
                line, status=None, key=self.key, request_id=self.request_id
            )
        if line.get("model"):
            self.model = str(line["model"])
        if line.get("provider"):
            self.served_by = str(line["provider"])
        if line.get("finish_reason"):
            self.finish_reason = str(line["finish_reason"])
            if self.finish_reason == "refusal":
                self.refusal = "".join(self.parts)
        if isinstance(line.get("usage"), dict):
            self.usage = openai_usage(line["usage"])
        if line.get("cost_usd") is not None:
            self.gateway_cost_usd = c.to_decimal(line["cost_usd"])
        if isinstance(line.get("choices"), list):
            return self._vision_chunk(line["choices"])
        return self.emit(line.get("delta"))

    def _vision_chunk(self, choices: list[Any]) -> str | None:
        """A request with an image is answered by the gateway's vision path
        (``chat-vision-router.ts``), which streams OpenAI ``chat.completion.chunk`` lines
        (``choices[0].delta.content``) with no usage or cost line: the tokens are then
        estimated and the row says so."""
        first = choices[0] if choices and isinstance(choices[0], dict) else {}
        if first.get("finish_reason"):
            self.finish_reason = str(first["finish_reason"])
        delta = first.get("delta")
        return self.emit(delta.get("content") if isinstance(delta, dict) else None)


register(CencoriGatewayProvider())
