"""The Anthropic adapter: the exact request, real-shaped bodies and SSE, every error body."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from cencori_nb import errors
from cencori_nb.keystore.secret import Secret
from cencori_nb.providers import get_provider
from cencori_nb.types import ChatRequest, Message, Usage
from tests.providers.support import (
    BASE,
    assert_no_leak,
    chat,
    data,
    exchange,
    map_status,
    named,
    run_stream,
    sse,
)

# --- Anthropic --------------------------------------------------------------------------------

ANTHROPIC_RESPONSE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "thinking", "thinking": "Let me think.", "signature": "EqQB"},
        {"type": "text", "text": "Hello"},
        {"type": "text", "text": ", world"},
    ],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 50,
        "cache_creation_input_tokens": 1000,
        "cache_read_input_tokens": 2000,
        "output_tokens": 503,
        "output_tokens_details": {"thinking_tokens": 480},
        "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 0},
        "service_tier": "standard",
    },
}


def test_anthropic_request_headers_and_body(canary: str) -> None:
    """x-api-key, the pinned version, system top-level, default max_tokens 1024."""
    adapter = get_provider("anthropic")
    messages = [
        Message("system", "Be brief."),
        Message("system", "Use French."),
        Message("user", "Hi"),
        Message("assistant", "Salut"),
        Message("user", "Again"),
    ]
    request = adapter.build_request(
        ChatRequest(tuple(messages), temperature=0.5),
        model="claude-haiku-4-5",
        api_key=Secret(canary),
        base_url=BASE + "/anthropic",
    )
    _, rec = exchange(request, body=ANTHROPIC_RESPONSE)
    sent = rec.last
    assert str(sent.url) == BASE + "/anthropic/v1/messages"
    assert sent.headers["x-api-key"] == canary
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert rec.body == {
        "model": "claude-haiku-4-5",
        "max_tokens": 1024,
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Salut"},
            {"role": "user", "content": "Again"},
        ],
        "system": "Be brief.\n\nUse French.",
        "temperature": 0.5,
    }


def test_anthropic_parse_response_totals_input_with_cache_tokens() -> None:
    adapter = get_provider("anthropic")
    request = adapter.build_request(
        chat(max_tokens=10), model="claude-sonnet-4-5", api_key=Secret("sk-ant-x"), base_url=BASE
    )
    response, rec = exchange(
        request, body=ANTHROPIC_RESPONSE, headers={"request-id": "req_011CSHoEeqs5C35K2UUqR7Fy"}
    )
    assert rec.body["max_tokens"] == 10
    result = adapter.parse_response(response)
    assert result.text == "Hello, world"  # thinking block left out
    assert result.model == "claude-sonnet-4-5-20250929"
    assert result.finish_reason == "end_turn"
    assert result.request_id == "req_011CSHoEeqs5C35K2UUqR7Fy"
    assert result.usage == Usage(
        input_tokens=3050,
        output_tokens=503,
        cache_read_tokens=2000,
        cache_write_tokens=1000,
        thinking_tokens=480,
    )


def test_anthropic_missing_usage_is_named() -> None:
    adapter = get_provider("anthropic")
    body = {k: v for k, v in ANTHROPIC_RESPONSE.items() if k != "usage"}
    response, _ = exchange(
        adapter.build_request(chat(), model="claude-x", api_key=Secret("k"), base_url=BASE),
        body=body,
    )
    with pytest.raises(errors.BadResponseError, match="`usage`"):
        adapter.parse_response(response)


def _anthropic_events(*, cut_after: str | None = None, extra: Iterable[str] = ()) -> bytes:
    frames = [
        named(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "claude-haiku-4-5-20251001",
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 25,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 100,
                        "output_tokens": 1,
                    },
                },
            },
        ),
        named(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        named("ping", {"type": "ping"}),
        named(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hello"},
            },
        ),
        *extra,
        named(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "!"},
            },
        ),
        named("content_block_stop", {"type": "content_block_stop", "index": 0}),
        named(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 15},
            },
        ),
        named("message_stop", {"type": "message_stop"}),
    ]
    if cut_after is not None:
        frames = frames[: [i for i, f in enumerate(frames) if cut_after in f][0] + 1]
    return sse(*frames)


def test_anthropic_stream_full_sequence() -> None:
    adapter = get_provider("anthropic")
    request = adapter.build_request(
        chat(stream=True), model="claude-haiku-4-5", api_key=Secret("sk-ant-x"), base_url=BASE
    )
    parser, deltas, rec = run_stream(adapter, request, _anthropic_events())
    assert rec.body["stream"] is True
    assert deltas == ["Hello", "!"]
    assert parser.done
    result = parser.result()
    assert result.model == "claude-haiku-4-5-20251001"
    assert result.finish_reason == "end_turn"
    assert result.request_id == "req_stream_1"
    # input from message_start (25 + 100 cache read), output from the cumulative delta
    assert result.usage == Usage(125, 15, 100, 0, 0)


def test_anthropic_stream_thinking_deltas_are_not_text_and_unnamed_events_parse() -> None:
    """thinking_delta is not shown; events without an ``event:`` line use their data type."""
    adapter = get_provider("anthropic")
    request = adapter.build_request(
        chat(stream=True), model="claude-sonnet-4-5", api_key=Secret("sk-ant-x"), base_url=BASE
    )
    thinking = data(
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Hmm, let me see"},
        }
    )
    payload = _anthropic_events(extra=[thinking]).replace(b"event: message_stop\n", b"")
    parser, deltas, _ = run_stream(adapter, request, payload)
    assert deltas == ["Hello", "!"]
    assert parser.done is True  # message_stop recognised from its data alone


def test_anthropic_stream_cut_before_message_delta_has_no_usage() -> None:
    adapter = get_provider("anthropic")
    request = adapter.build_request(
        chat(stream=True), model="claude-haiku-4-5", api_key=Secret("sk-ant-x"), base_url=BASE
    )
    parser, deltas, _ = run_stream(
        adapter, request, _anthropic_events(cut_after="content_block_stop")
    )
    assert deltas == ["Hello", "!"]
    assert parser.done is False
    assert parser.result().usage is None


def test_anthropic_error_event_mid_stream() -> None:
    adapter = get_provider("anthropic")
    request = adapter.build_request(
        chat(stream=True), model="claude-haiku-4-5", api_key=Secret("sk-ant-x"), base_url=BASE
    )
    error = named(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    with pytest.raises(errors.ProviderUnavailableError, match="Overloaded") as info:
        run_stream(adapter, request, _anthropic_events(extra=[error]))
    assert info.value.code == "overloaded_error"


@pytest.mark.parametrize(
    ("status", "etype", "cls"),
    [
        (400, "invalid_request_error", errors.InvalidRequestError),
        (401, "authentication_error", errors.AuthenticationError),
        (402, "billing_error", errors.PermissionDeniedError),
        (403, "permission_error", errors.PermissionDeniedError),
        (404, "not_found_error", errors.InvalidRequestError),
        (413, "request_too_large", errors.InvalidRequestError),
        (429, "rate_limit_error", errors.RateLimitError),
        (500, "api_error", errors.ProviderUnavailableError),
        (504, "timeout_error", errors.ProviderTimeoutError),
        (529, "overloaded_error", errors.ProviderUnavailableError),
    ],
)
def test_anthropic_error_bodies(status: int, etype: str, cls: type, canary: str) -> None:
    body = {
        "type": "error",
        "error": {"type": etype, "message": f"{etype} happened"},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }
    err = map_status(
        get_provider("anthropic"),
        status,
        body,
        key=canary,
        headers={"retry-after": "12"} if status == 429 else None,
    )
    assert type(err) is cls
    assert err.code == etype
    assert err.status_code == status
    assert err.request_id == "req_011CSHoEeqs5C35K2UUqR7Fy"
    if status == 429:
        assert err.retry_after == 12.0
    assert_no_leak(err, canary)


@pytest.mark.parametrize(
    ("cache_creation", "expected_1h"),
    [
        ({"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 3913}, 3913),
        ({"ephemeral_5m_input_tokens": 913, "ephemeral_1h_input_tokens": 3000}, 3000),
        ({"ephemeral_5m_input_tokens": 3913, "ephemeral_1h_input_tokens": 0}, 0),
        (None, 0),  # older answers have no split: all 5-minute writes
        ({"ephemeral_1h_input_tokens": 99_999}, 3913),  # never more than the writes
        ({"ephemeral_1h_input_tokens": -5}, 0),
        ({"ephemeral_1h_input_tokens": "junk"}, 0),
        ("junk", 0),
    ],
)
def test_one_hour_cache_writes_are_read_and_priced_at_their_rate(
    cache_creation: object, expected_1h: int
) -> None:
    """usage.cache_creation.ephemeral_1h_input_tokens (recorded in
    tests/corpus/anthropic/stream_sonnet46_cache_write_1h.json) is the 1-hour share of
    cache_creation_input_tokens; Anthropic bills it at 2x base input, the 5-minute writes at
    1.25x. Priced with the genai-prices rates of claude-sonnet-4-6 ($3 in, $3.75 and $6
    cache writes, $15 out per million)."""
    from decimal import Decimal

    from cencori_nb.pricing import provider_cost
    from cencori_nb.providers.anthropic import anthropic_usage

    raw: dict[str, object] = {
        "input_tokens": 13,
        "cache_creation_input_tokens": 3913,
        "cache_read_input_tokens": 0,
        "output_tokens": 4,
    }
    if cache_creation is not None:
        raw["cache_creation"] = cache_creation
    usage = anthropic_usage(raw)
    assert usage is not None
    assert (usage.input_tokens, usage.cache_write_tokens) == (3926, 3913)
    assert usage.cache_write_1h_tokens == expected_1h
    per_million = 13 * 3 + (3913 - expected_1h) * Decimal("3.75") + expected_1h * 6 + 4 * 15
    cost = provider_cost("anthropic", "claude-sonnet-4-6", usage).cost_usd
    assert cost == per_million / 1_000_000
