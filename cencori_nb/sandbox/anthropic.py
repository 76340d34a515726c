"""The Anthropic Messages door: ``POST /anthropic/v1/messages``.

The key comes in ``x-api-key`` (older SDKs) or ``Authorization: Bearer`` (SDK 2.x); an
``anthropic-version`` header is required and any value is accepted, but under
``2026-10-21`` and later ``temperature``/``top_p``/``top_k`` are refused with a 400, as the
real API does. Streams are named SSE events: ``message_start``, ``content_block_start``,
``ping``, ``content_block_delta``…, ``content_block_stop``, ``message_delta`` (cumulative
usage), ``message_stop``. Errors are ``{"type": "error", "error": {"type", "message"},
"request_id"}`` with a ``request-id`` header; a 429 carries ``retry-after`` and the
``anthropic-ratelimit-*`` headers.

As the real API does: an overload is **529** ``overloaded_error`` with ``x-should-retry:
true`` (Anthropic has no 503; the ``503`` and ``529`` faults both answer it), and it can
also arrive after a 200 as an ``event: error`` in the stream (the ``stream-error`` fault);
an alias is answered with its dated id (``claude-haiku-4-5`` →
``claude-haiku-4-5-20251001``); an unknown model is 404 ``not_found_error`` "model: …"; a
prompt over 200k tokens is 400 "prompt is too long: N tokens > 200000 maximum".
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
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
from .models import context_window, dated, is_known
from .openai import SANDBOX_TAG
from .replies import Reply

__all__ = ["AnthropicDoor", "SAMPLING_REMOVED_IN"]

SAMPLING_REMOVED_IN = "2026-10-21"  # first API version without temperature/top_p/top_k

_ERRORS: dict[str, tuple[int, str, str]] = {
    "missing_key": (401, "authentication_error", "x-api-key header is required"),
    "invalid_key": (401, "authentication_error", "invalid x-api-key"),
    # an account without credit: a 400 invalid_request_error, as the API answers it
    # (tests/corpus/anthropic/error_400_credit_balance_too_low.json), not the 402
    # billing_error its docs list for payment problems
    "payment": (
        400,
        "invalid_request_error",
        "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
        "Billing to upgrade or purchase credits.",
    ),
    "permission": (
        403,
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    "not_found": (404, "not_found_error", "model not found"),
    "rate_limit": (
        429,
        "rate_limit_error",
        "This request would exceed your organization's rate limit of requests per minute.",
    ),
    "server": (500, "api_error", "Internal server error"),
    "unavailable": (529, "overloaded_error", "Overloaded"),
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "context": (400, "invalid_request_error", "prompt is too long"),
    "bad_request": (400, "invalid_request_error", "Invalid request"),
}


def _rfc3339(seconds_from_now: float) -> str:
    when = datetime.now(UTC) + timedelta(seconds=seconds_from_now)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class AnthropicDoor(Door):
    name = "anthropic"

    def api_key(self, req: Any) -> str | None:
        key = req.headers.get("x-api-key")
        if key:
            return key.strip() or None
        return bearer(req.headers)

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
        default_status, type_, default_message = _ERRORS.get(kind, _ERRORS["server"])
        status = status or default_status
        headers: Headers = [("request-id", ex.request_id)]
        if status == 429:
            headers.append(("retry-after", str(retry_after or 1)))
            headers += self.ratelimit_headers(ex, remaining=0, reset=retry_after or 1)
        if status == 529:  # what the SDKs read first to decide on a retry
            headers.append(("x-should-retry", "true"))
        if kind == "invalid_key":
            default_message += f" ({ex.hint})"
        error: dict[str, Any] = {
            "type": type_,
            "message": (message or default_message) + SANDBOX_TAG,
        }
        if type_ == "overloaded_error":  # recorded overloads carry "details": null first
            error = {"details": None, **error}
        ex.send_json(
            status, {"type": "error", "error": error, "request_id": ex.request_id}, headers
        )

    def ratelimit_headers(
        self, ex: Exchange, *, remaining: int | None = None, reset: int | None = None
    ) -> Headers:
        limiter = ex.server.limiter
        limit = limiter.rpm or 4000
        if remaining is None:
            remaining = ex.remaining if limiter.rpm else limit - 1
        if reset is None:
            reset = limiter.reset_seconds(ex.key or "") if limiter.rpm else 0
        at = _rfc3339(reset)
        headers: Headers = [
            ("anthropic-ratelimit-requests-limit", str(limit)),
            ("anthropic-ratelimit-requests-remaining", str(remaining)),
            ("anthropic-ratelimit-requests-reset", at),
        ]
        for kind in ("tokens", "input-tokens", "output-tokens"):
            headers += [
                (f"anthropic-ratelimit-{kind}-limit", "400000"),
                (f"anthropic-ratelimit-{kind}-remaining", "400000"),
                (f"anthropic-ratelimit-{kind}-reset", at),
            ]
        return headers

    def ok_headers(self, ex: Exchange) -> Headers:
        return [("request-id", ex.request_id), *self.ratelimit_headers(ex)]

    def parse(self, ex: Exchange) -> ChatCall:
        version = ex.req.headers.get("anthropic-version")
        if not version:
            raise BadRequest("anthropic-version: header is required")
        try:
            body = ex.req.json()
        except ValueError:
            raise BadRequest("There was an issue with the request body: invalid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model: Field required")
        if body.get("max_tokens") is None:
            raise BadRequest("max_tokens: Field required")
        max_tokens = max_tokens_of(body.get("max_tokens"), "max_tokens")
        if version >= SAMPLING_REMOVED_IN:
            for name in ("temperature", "top_p", "top_k"):
                if name in body:
                    raise BadRequest(
                        f"{name}: is not supported with anthropic-version "
                        f"{version}; send anthropic-version 2023-06-01 to use it."
                    )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages: at least one message is required")
        conversation = [text_of(body["system"])] if body.get("system") else []
        last_user = ""
        first_user: str | None = None
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role not in ("user", "assistant"):
                raise BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            text = text_of(message.get("content"))
            conversation.append(text)
            if role == "user":
                last_user = text
                first_user = text if first_user is None else first_user
        schema, tool = _requested_schema(body)
        return ChatCall(
            model=model,
            provider=self.name,
            conversation=conversation,
            last_user=last_user,
            first_user=first_user or "",
            max_tokens=max_tokens,
            stream=bool(body.get("stream")),
            schema=schema,
            tool=tool,
            images=find_images(messages),
        )

    def model_known(self, call: ChatCall) -> bool:
        return NOT_FOUND_MARK not in call.model and is_known(self.name, call.model)

    def not_found_message(self, call: ChatCall) -> str | None:
        return f"model: {call.model}"

    def served_model(self, model: str) -> str:
        return dated(self.name, model)

    def context_window(self, call: ChatCall) -> int | None:
        return context_window(self.name, call.model)

    def context_message(self, call: ChatCall, tokens: int, window: int) -> str:
        return f"prompt is too long: {tokens} tokens > {window} maximum"

    def stream_error_frames(self, ex: Exchange) -> list[tuple[str | None, str]]:
        # as recorded: the event carries no request_id (the response header has it)
        return [
            (
                "error",
                dumps(
                    {
                        "type": "error",
                        "error": {
                            "details": None,
                            "type": "overloaded_error",
                            "message": "Overloaded" + SANDBOX_TAG,
                        },
                    }
                ),
            )
        ]

    async def respond(self, ex: Exchange, call: ChatCall, reply: Reply) -> None:
        if call.refused or call.tool:
            await self._respond_structured(ex, call, reply)
            return
        stop = "max_tokens" if reply.truncated else "end_turn"
        msg_id = "msg_" + ex.request_id[4:]
        usage = {
            "input_tokens": reply.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": reply.output_tokens,
            "service_tier": "standard",
        }
        if not call.stream:
            ex.send_json(
                200,
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": call.answered_model,
                    "content": [{"type": "text", "text": reply.text}],
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": usage,
                },
                self.ok_headers(ex),
            )
            return
        sse = ex.sse(self.ok_headers(ex), content_frames=len(reply.pieces))
        start = {
            "type": "message_start",
            "message": {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": call.answered_model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {**usage, "output_tokens": 0},
            },
        }
        await sse.frame(dumps(start), event="message_start")
        await sse.frame(
            '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
            event="content_block_start",
        )
        await sse.frame('{"type":"ping"}', event="ping")
        for piece in reply.pieces:
            await sse.frame(
                '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
                '"text":' + json_str(piece) + "}}",
                event="content_block_delta",
                content=True,
            )
        await sse.frame('{"type":"content_block_stop","index":0}', event="content_block_stop")
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {
                k: v for k, v in usage.items() if k not in ("service_tier", "cache_creation")
            },
        }
        await sse.frame(dumps(delta), event="message_delta")
        await sse.frame('{"type":"message_stop"}', event="message_stop")
        await sse.close()

    async def _respond_structured(self, ex: Exchange, call: ChatCall, reply: Reply) -> None:
        """A refusal (``stop_reason: refusal``, no text) or a forced tool call's answer
        (one ``tool_use`` block whose input is the JSON, streamed as ``input_json_delta``)."""
        msg_id = "msg_" + ex.request_id[4:]
        usage = {
            "input_tokens": reply.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": reply.output_tokens,
        }
        block: dict[str, Any]
        content: list[Any]
        refusal_details: dict[str, Any] = {}
        if call.refused:
            stop, block, deltas = "refusal", {"type": "text", "text": ""}, []
            content = []
            # why, as the API says it (the SDK's RefusalStopDetails): no refusal text
            refusal_details = {
                "stop_details": {"type": "refusal", "category": None, "explanation": reply.text}
            }
        else:
            stop = "max_tokens" if reply.truncated else "tool_use"
            tool_id = "toolu_" + ex.request_id[4:28]
            try:
                tool_input = json.loads(reply.text)
            except ValueError:  # the invalid-json fault: the API always sends an object
                tool_input = {}
            block = {"type": "tool_use", "id": tool_id, "name": call.tool, "input": {}}
            content = [{**block, "input": tool_input}]
            deltas = list(reply.pieces)
        if not call.stream:
            ex.send_json(
                200,
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": call.answered_model,
                    "content": content,
                    "stop_reason": stop,
                    "stop_sequence": None,
                    **refusal_details,
                    "usage": {**usage, "service_tier": "standard"},
                },
                self.ok_headers(ex),
            )
            return
        sse = ex.sse(self.ok_headers(ex), content_frames=len(deltas))
        start = {
            "type": "message_start",
            "message": {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": call.answered_model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {**usage, "output_tokens": 0},
            },
        }
        await sse.frame(dumps(start), event="message_start")
        await sse.frame(
            dumps({"type": "content_block_start", "index": 0, "content_block": block}),
            event="content_block_start",
        )
        for piece in deltas:
            await sse.frame(
                '{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta",'
                '"partial_json":' + json_str(piece) + "}}",
                event="content_block_delta",
                content=True,
            )
        await sse.frame('{"type":"content_block_stop","index":0}', event="content_block_stop")
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None, **refusal_details},
            "usage": usage,
        }
        await sse.frame(dumps(delta), event="message_delta")
        await sse.frame('{"type":"message_stop"}', event="message_stop")
        await sse.close()


def _requested_schema(body: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(schema, forced tool name): ``output_config.format`` of type ``json_schema``, or a
    ``tool_choice`` forcing one of ``tools`` (its ``input_schema``)."""
    fmt = (
        (body.get("output_config") or {}).get("format")
        if isinstance(body.get("output_config"), dict)
        else None
    )
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise BadRequest("output_config.format.schema: Field required")
        return schema, None
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool":
        name = choice.get("name")
        for tool in body.get("tools") or []:
            if isinstance(tool, dict) and tool.get("name") == name:
                schema = tool.get("input_schema")
                if not isinstance(schema, dict):
                    raise BadRequest(f"tools.0.input_schema: Field required (tool {name!r})")
                return schema, str(name)
        raise BadRequest(f"tool_choice: tool {name!r} is not in tools")
    return None, None
