"""Anthropic Messages (``POST {base}/v1/messages``).

Headers: ``x-api-key`` and a pinned ``anthropic-version: 2023-06-01``. Why pin the old
version: it is the one every Anthropic endpoint, proxy and compatible server accepts (the
2026-10-21 version is recent), and under 2026-10-21 ``temperature`` returns 400, while our
requests carry ``temperature`` when the user sets it. The version decides the wire format,
so it is fixed here rather than left to a default that may move under us.

- request: ``model``, ``max_tokens`` (required by the API: 1024 when the caller gave none),
  ``system`` top-level (all system messages joined), ``messages`` (user/assistant only),
  ``temperature``;
- usage: ``input_tokens`` *excludes* cache tokens, so our ``input_tokens`` (a total, see
  :mod:`cencori_nb.types`) is ``input_tokens + cache_creation_input_tokens +
  cache_read_input_tokens``; ``output_tokens`` includes thinking
  (``output_tokens_details.thinking_tokens``);
- stream: named events ``message_start`` (input usage), ``content_block_delta``
  (``text_delta``), ``message_delta`` (cumulative usage, stop reason), ``message_stop``
  (the end); ``ping`` ignored; ``error`` raises;
- errors: ``{"type": "error", "error": {"type", "message"}, "request_id"}``; request id
  header ``request-id``; 529 is "overloaded".
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from ..catalog import PROVIDERS
from ..errors import (
    BadResponseError,
    CencoriError,
)
from ..types import ChatRequest, Usage
from . import _common as c
from ._images import anthropic_content
from .base import Provider, ProviderResult, register

if TYPE_CHECKING:
    import httpx2

    from ..keystore.secret import Secret
    from ..schemas import Schema

__all__ = [
    "ANTHROPIC_VERSION",
    "AnthropicProvider",
    "MessagesStreamParser",
    "anthropic_usage",
    "has_structured_output",
    "refusal_said",
    "structured_output_fields",
]

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024


def anthropic_usage(raw: Any) -> Usage | None:
    """Our :class:`Usage` from Anthropic's ``usage`` (input made a total, see module doc)."""
    if not isinstance(raw, dict):
        return None
    cache_write = c.to_int(raw.get("cache_creation_input_tokens"))
    cache_read = c.to_int(raw.get("cache_read_input_tokens"))
    # the 1-hour share of the writes (billed at 2x base input, the 5-minute ones at 1.25x);
    # never more than the writes the total reports
    write_1h = min(cache_write, c.to_int(c.dig(raw, "cache_creation", "ephemeral_1h_input_tokens")))
    return Usage(
        input_tokens=c.to_int(raw.get("input_tokens")) + cache_write + cache_read,
        output_tokens=c.to_int(raw.get("output_tokens")),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        thinking_tokens=c.to_int(c.dig(raw, "output_tokens_details", "thinking_tokens")),
        cache_write_1h_tokens=max(0, write_1h),
    )


_CLAUDE_VERSION = re.compile(r"claude-(opus|sonnet|haiku)-(\d+)(?:-(\d{1,2}))?(?:\D|$)")
# The first version of each family with native structured outputs (``output_config``);
# Anthropic's docs list Opus 4.1, Sonnet 4.5, Haiku 4.5 and every later model.
_STRUCTURED_SINCE = {"opus": (4, 1), "sonnet": (4, 5), "haiku": (4, 5)}


def has_structured_output(model: str) -> bool:
    """True when ``model`` takes ``output_config.format`` (else a forced tool call is used).

    Read from the name: ``claude-<family>-<major>[-<minor>]`` at or after the family's first
    such version; a dated id (``claude-sonnet-4-20250514``) has minor 0. Older names
    (``claude-3-5-haiku-latest``) and unknown ones get the tool call, which every Claude
    model with tool use follows.
    """
    match = _CLAUDE_VERSION.search(model)
    if match is None:
        return False
    family, major, minor = match.group(1), int(match.group(2)), int(match.group(3) or 0)
    return (major, minor) >= _STRUCTURED_SINCE[family]


def structured_output_fields(schema: Schema, model: str) -> dict[str, Any]:
    """The body fields that ask ``model`` for JSON of ``schema``.

    ``output_config: {format: {type: json_schema, schema}}`` (what the Anthropic SDK's
    ``messages.parse(output_format=Model)`` sends) where the model has structured outputs;
    otherwise one tool whose input is the schema, and ``tool_choice`` forcing it: the
    answer is then the tool call's ``input`` (read back as the text, see
    :meth:`AnthropicProvider.parse_response`).
    """
    json_schema = schema.wire("anthropic")
    if has_structured_output(model):
        return {"output_config": {"format": {"type": "json_schema", "schema": json_schema}}}
    return {
        "tools": [
            {
                "name": schema.name,
                "description": "Give the answer as this tool's input.",
                "input_schema": json_schema,
            }
        ],
        "tool_choice": {"type": "tool", "name": schema.name},
    }


_STRUCTURED_FIELDS = frozenset({"output_config", "tools", "tool_choice"})


def refusal_said(stop_details: Any, text: str) -> str:
    """What a ``stop_reason: refusal`` said: ``stop_details.explanation`` (the SDK's
    ``RefusalStopDetails``), else its policy ``category``, else the text.

    Anthropic sends no refusal message ("No additional refusal message is included"): the
    text blocks, if any, are what the model wrote before it was stopped; the reason is in
    ``stop_details`` (``type: refusal``, ``category``, ``explanation``; both may be null).
    """
    details = c.as_object(stop_details)
    explanation = details.get("explanation")
    if isinstance(explanation, str) and explanation.strip():
        return explanation
    category = details.get("category")
    if isinstance(category, str) and category.strip():
        return f"declined ({category})"
    return text


# Anthropic's 400 for an account without credit: "Your credit balance is too low to access
# the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."
# (tests/corpus/anthropic/error_400_credit_balance_too_low.json)
_NO_CREDIT = re.compile(r"credit balance is too low", re.IGNORECASE)


class AnthropicProvider(Provider):
    """The Anthropic Messages wire format."""

    name = "anthropic"
    sandbox_prefix = "/anthropic"
    default_base_url = PROVIDERS["anthropic"].base_url
    request_id_headers = ("request-id", "x-request-id")

    def __repr__(self) -> str:
        return "AnthropicProvider()"

    def build_request(
        self, request: ChatRequest, *, model: str, api_key: Secret, base_url: str
    ) -> httpx2.Request:
        """``POST {base_url}/v1/messages`` with ``x-api-key`` and the pinned version."""
        system = [m.content for m in request.messages if m.role == "system"]
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": request.max_tokens
            if request.max_tokens is not None
            else DEFAULT_MAX_TOKENS,
            "messages": [
                {"role": m.role, "content": anthropic_content(m)}
                for m in request.messages
                if m.role != "system"
            ],
        }
        if system:
            body["system"] = "\n\n".join(system)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stream:
            body["stream"] = True
        if request.schema is not None:
            body.update(structured_output_fields(request.schema, model))
            c.body_with_extra(body, request, c.RESERVED_EXTRA | _STRUCTURED_FIELDS)
        else:
            c.body_with_extra(body, request)
        headers = {"x-api-key": api_key.reveal(), "anthropic-version": ANTHROPIC_VERSION}
        return c.json_request(
            c.join_base(base_url, "/v1/messages"), headers, body, stream=request.stream
        )

    def parse_response(self, response: httpx2.Response) -> ProviderResult:
        """Text (the ``text`` blocks joined), model, usage, stop reason of a ``message``."""
        rid = self.request_id(response)
        body = c.response_json(response, provider=self.name, request_id=rid)
        if body.get("type") == "error":
            raise self.error_from_body(body, status=None, key=c.sent_key(response), request_id=rid)
        where: c.Where = {
            "provider": self.name,
            "status_code": response.status_code,
            "request_id": rid,
        }
        content = c.require(body, "content", **where)
        if not isinstance(content, list):
            raise BadResponseError(
                "The Anthropic response's `content` is not a list.", missing="content", **where
            )
        usage = c.require(body, "usage", **where)
        text = "".join(
            str(b.get("text") or "")
            for b in content
            if isinstance(b, dict) and b.get("type") == "text"
        )
        if not text:  # a forced tool call (schema= on an older model): its input is the answer
            tool_input = next(
                (
                    b.get("input")
                    for b in content
                    if isinstance(b, dict) and b.get("type") == "tool_use"
                ),
                None,
            )
            if isinstance(tool_input, dict):
                text = json.dumps(tool_input, ensure_ascii=False, default=str)
        stop = body.get("stop_reason")
        return ProviderResult(
            text=text,
            model=body.get("model") or None,
            usage=anthropic_usage(usage),
            finish_reason=stop,
            request_id=rid or body.get("id"),
            refusal=refusal_said(body.get("stop_details"), text) if stop == "refusal" else None,
        )

    def stream_parser(self, response: httpx2.Response | None = None) -> MessagesStreamParser:
        """A parser for the named-event sequence ending with ``message_stop``."""
        return MessagesStreamParser(self, **c.stream_context(self, response))

    def map_error(self, response: httpx2.Response) -> CencoriError:
        """The error for a >= 400 response (the one place Anthropic errors map)."""
        return c.map_error_body(self, response, c.error_json(response))

    def error_from_body(
        self,
        body: dict[str, Any],
        *,
        status: int | None,
        key: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> CencoriError:
        """Map ``{"type": "error", "error": {"type", "message"}}`` (response or stream)."""
        err = body.get("error")
        err_type = err.get("type") if isinstance(err, dict) else None
        said = (
            err.get("message") if isinstance(err, dict) else (err if isinstance(err, str) else None)
        )
        request_id = request_id or (body.get("request_id") or None)
        # The error type is more precise than the status (a 529 and a 500 differ only there).
        cls = c.error_class(status, str(err_type) if err_type else None)
        hint = None
        if (
            err_type == "invalid_request_error"
            and isinstance(said, str)
            and _NO_CREDIT.search(said)
        ):
            # a 400 whose type says "bad request" but whose cause is the account: no credit
            hint = (
                "The Anthropic account has no credit left: add credit in the Anthropic "
                "console (Plans & Billing), or use another route."
            )
        elif err_type == "billing_error":
            hint = (
                "The Anthropic account has a billing problem (no credit or no payment "
                "method): fix it in the Anthropic console, or use another route."
            )
        elif err_type == "not_found_error":
            hint = "Check the model name: Anthropic does not know it or this key cannot use it."
        elif err_type == "request_too_large":
            hint = "The request is too large: shorten the prompt."
        elif err_type == "invalid_request_error" and c.context_overflow(said):
            hint = c.CONTEXT_HINT  # "prompt is too long: N tokens > M maximum"
        return c.build_error(
            cls,
            provider=self.name,
            status=status,
            said=said,
            code=str(err_type) if err_type else None,
            request_id=request_id,
            retry_after=retry_after,
            key=key,
            hint=hint,
        )


class MessagesStreamParser(c.AdapterStreamParser):
    """Anthropic's SSE events. Usage is reported only once ``message_delta`` carried the
    final (cumulative) counts: a stream cut before it yields ``usage=None``."""

    adapter: AnthropicProvider

    def __init__(
        self, adapter: AnthropicProvider, *, request_id: str | None = None, key: str | None = None
    ) -> None:
        super().__init__(adapter, request_id=request_id, key=key)
        self._usage_raw: dict[str, Any] = {}

    def feed(self, event: httpx2.ServerSentEvent) -> str | None:
        if self.done or not event.data.strip():
            return None
        kind = event.event
        if kind == "ping":
            return None
        data = self.json(event)
        if not isinstance(data, dict):
            raise BadResponseError(
                "An Anthropic stream event is not a JSON object.",
                provider=self.provider,
                request_id=self.request_id,
            )
        if kind == "message":  # no ``event:`` line: fall back to the type in the data
            kind = str(data.get("type") or "")
        if kind == "error":
            raise self.adapter.error_from_body(
                data, status=None, key=self.key, request_id=self.request_id
            )
        if kind == "message_start":
            message = c.as_object(data.get("message"))
            if message.get("model"):
                self.model = str(message["model"])
            if self.request_id is None and message.get("id"):
                self.request_id = str(message["id"])
            if isinstance(message.get("usage"), dict):
                self._usage_raw.update({k: v for k, v in message["usage"].items() if v is not None})
        elif kind == "content_block_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                return self.emit(delta.get("text"))
            if isinstance(delta, dict) and delta.get("type") == "input_json_delta":
                # a forced tool call (schema= on an older model): its input is the answer
                return self.emit(delta.get("partial_json"))
        elif kind == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self.finish_reason = str(delta["stop_reason"])
                if self.finish_reason == "refusal":
                    self.refusal = refusal_said(delta.get("stop_details"), "".join(self.parts))
            if isinstance(data.get("usage"), dict):
                # cumulative counts: the latest value of each field wins
                self._usage_raw.update({k: v for k, v in data["usage"].items() if v is not None})
                self.usage = anthropic_usage(self._usage_raw)
        elif kind == "message_stop":
            self.done = True
        return None


register(AnthropicProvider())
