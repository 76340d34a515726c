"""The OpenAI adapter: the exact request, real-shaped bodies and SSE, every error body."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cencori_nb import errors
from cencori_nb.keystore.secret import Secret
from cencori_nb.providers import get_provider
from cencori_nb.providers._common import display_name
from cencori_nb.types import Usage
from tests.providers.support import (
    BASE,
    assert_no_leak,
    chat,
    data,
    exchange,
    map_status,
    openai_chunk,
    run_stream,
    sse,
)

# --- OpenAI -------------------------------------------------------------------------------

OPENAI_RESPONSE = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "o4-mini-2025-04-16",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello there!",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 346,
        "total_tokens": 1463,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 320,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}


def test_openai_request_headers_and_body(canary: str) -> None:
    """Bearer key, max_completion_tokens, system message kept in messages, JSON body."""
    adapter = get_provider("openai")
    request = adapter.build_request(
        chat(system="Be brief.", temperature=0.2, max_tokens=64),
        model="gpt-4o-mini",
        api_key=Secret(canary),
        base_url=BASE + "/v1/",
    )
    _, rec = exchange(request, body=OPENAI_RESPONSE)
    sent = rec.last
    assert sent.method == "POST"
    assert str(sent.url) == BASE + "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {canary}"
    assert sent.headers["content-type"] == "application/json"
    assert rec.body == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello"},
        ],
        "temperature": 0.2,
        "max_completion_tokens": 64,
    }


def test_openai_stream_request_asks_for_usage() -> None:
    adapter = get_provider("openai")
    request = adapter.build_request(
        chat(stream=True), model="gpt-4o-mini", api_key=Secret("sk-x"), base_url=BASE
    )
    _, rec = exchange(request, body={})
    assert rec.body["stream"] is True
    assert rec.body["stream_options"] == {"include_usage": True}
    assert rec.last.headers["accept"] == "text/event-stream"


def test_openai_parse_response_with_cached_and_reasoning_tokens() -> None:
    """input = prompt_tokens (incl. cached), output = completion_tokens (incl. reasoning)."""
    adapter = get_provider("openai")
    request = adapter.build_request(chat(), model="o4-mini", api_key=Secret("sk-x"), base_url=BASE)
    response, _ = exchange(request, body=OPENAI_RESPONSE, headers={"x-request-id": "req_abc"})
    result = adapter.parse_response(response)
    assert result.text == "Hello there!"
    assert result.model == "o4-mini-2025-04-16"
    assert result.finish_reason == "stop"
    assert result.request_id == "req_abc"
    assert result.usage == Usage(
        input_tokens=1117,
        output_tokens=346,
        cache_read_tokens=1024,
        cache_write_tokens=0,
        thinking_tokens=320,
    )


def test_openai_refusal_is_the_text_when_content_is_null() -> None:
    adapter = get_provider("openai")
    body = json.loads(json.dumps(OPENAI_RESPONSE))
    body["choices"][0]["message"].update(content=None, refusal="I can't help with that.")
    response, _ = exchange(
        adapter.build_request(chat(), model="gpt-4o", api_key=Secret("k"), base_url=BASE), body=body
    )
    assert adapter.parse_response(response).text == "I can't help with that."


def test_openai_malformed_json_is_bad_response() -> None:
    adapter = get_provider("openai")
    response, _ = exchange(
        adapter.build_request(chat(), model="gpt-4o", api_key=Secret("k"), base_url=BASE),
        content=b'{"id": "chatcmpl-1", "choices": [',
        headers={"x-request-id": "req_9"},
    )
    with pytest.raises(errors.BadResponseError, match="not valid JSON") as info:
        adapter.parse_response(response)
    assert info.value.provider == "openai"
    assert info.value.request_id == "req_9"


@pytest.mark.parametrize(
    ("body", "missing"),
    [
        ({"id": "x", "model": "gpt-4o"}, "choices"),
        ({"id": "x", "choices": []}, "choices[0]"),
        ({"id": "x", "choices": [{"index": 0, "finish_reason": "stop"}]}, "message"),
    ],
)
def test_openai_missing_fields_are_named(body: dict[str, Any], missing: str) -> None:
    adapter = get_provider("openai")
    response, _ = exchange(
        adapter.build_request(chat(), model="gpt-4o", api_key=Secret("k"), base_url=BASE), body=body
    )
    with pytest.raises(errors.BadResponseError) as info:
        adapter.parse_response(response)
    assert f"`{missing}`" in str(info.value)
    assert info.value.missing == missing


def test_openai_missing_usage_is_none_not_zero() -> None:
    adapter = get_provider("openai")
    body = {k: v for k, v in OPENAI_RESPONSE.items() if k != "usage"}
    response, _ = exchange(
        adapter.build_request(chat(), model="gpt-4o", api_key=Secret("k"), base_url=BASE), body=body
    )
    assert adapter.parse_response(response).usage is None


OPENAI_STREAM_USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 3,
    "total_tokens": 15,
    "prompt_tokens_details": {"cached_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}


def test_openai_stream_with_final_usage_chunk() -> None:
    adapter = get_provider("openai")
    request = adapter.build_request(
        chat(stream=True), model="gpt-4o-mini", api_key=Secret("sk-x"), base_url=BASE
    )
    payload = sse(
        data(openai_chunk("")),
        data(openai_chunk("Hel")),
        data(openai_chunk("lo")),
        data(openai_chunk(finish="stop")),
        data(openai_chunk(usage=OPENAI_STREAM_USAGE, choices=False)),
        data("[DONE]"),
    )
    parser, deltas, _ = run_stream(adapter, request, payload)
    assert deltas == ["Hel", "lo"]
    assert parser.done is True
    result = parser.result()
    assert result.text == "Hello"
    assert result.model == "gpt-4o-mini-2024-07-18"
    assert result.finish_reason == "stop"
    assert result.request_id == "req_stream_1"
    assert result.usage == Usage(12, 3, 0, 0, 0)


@pytest.mark.parametrize("name", ["openai", "groq", "mistral", "openrouter"])
def test_content_filter_finish_is_a_refusal_streamed_or_not(name: str) -> None:
    """``finish_reason: content_filter`` (tests/corpus/openai/chat_content_filter_empty.json)
    is a refusal: the text up to the cut, or a line naming the filter when nothing came;
    openai-python's parse() raises ContentFilterFinishReasonError for it. Other finishes
    leave ``refusal`` None."""
    adapter = get_provider(name)
    stream_request = adapter.build_request(
        chat(stream=True), model="m", api_key=Secret("sk-x"), base_url=BASE
    )
    cut = sse(
        data(openai_chunk("Hel")),
        data(openai_chunk(finish="content_filter")),
        data(openai_chunk(usage=OPENAI_STREAM_USAGE, choices=False)),
        data("[DONE]"),
    )
    parser, _, _ = run_stream(adapter, stream_request, cut)
    assert parser.result().finish_reason == "content_filter"
    assert parser.result().refusal == "Hel"
    silent = sse(data(openai_chunk(finish="content_filter")), data("[DONE]"))
    parser, _, _ = run_stream(adapter, stream_request, silent)
    assert parser.result().refusal == (
        f"stopped by {display_name(name)}'s content filter (content_filter)"
    )
    done = sse(data(openai_chunk("Hi")), data(openai_chunk(finish="stop")), data("[DONE]"))
    assert run_stream(adapter, stream_request, done)[0].result().refusal is None

    request = adapter.build_request(chat(), model="m", api_key=Secret("sk-x"), base_url=BASE)
    body = json.loads(json.dumps(OPENAI_RESPONSE))
    body["choices"][0].update(finish_reason="content_filter")
    body["choices"][0]["message"].update(content="")
    response, _ = exchange(request, body=body)
    result = adapter.parse_response(response)
    assert (result.text, result.finish_reason) == ("", "content_filter")
    assert result.refusal == f"stopped by {display_name(name)}'s content filter (content_filter)"
    body["choices"][0].update(finish_reason="stop")
    assert adapter.parse_response(exchange(request, body=body)[0]).refusal is None


def test_openai_truncated_stream_is_not_done_and_has_no_usage() -> None:
    """A connection cut before the usage chunk: done False, usage None, text kept."""
    adapter = get_provider("openai")
    request = adapter.build_request(
        chat(stream=True), model="gpt-4o-mini", api_key=Secret("sk-x"), base_url=BASE
    )
    payload = sse(data(openai_chunk("Hel")), data(openai_chunk("lo"))) + b'data: {"id": "ch'
    parser, deltas, _ = run_stream(adapter, request, payload)
    assert deltas == ["Hel", "lo"]
    assert parser.done is False
    assert parser.result().usage is None
    assert parser.result().text == "Hello"


def test_openai_stream_malformed_event_is_bad_response() -> None:
    adapter = get_provider("openai")
    request = adapter.build_request(
        chat(stream=True), model="gpt-4o-mini", api_key=Secret("sk-x"), base_url=BASE
    )
    with pytest.raises(errors.BadResponseError, match="stream event"):
        run_stream(adapter, request, sse(data(openai_chunk("a")), "data: {not json"))


# --- OpenAI errors ----------------------------------------------------------------------------


def test_openai_401_echoing_a_masked_key_never_leaks_it(canary: str) -> None:
    """OpenAI's 401 quotes a partly masked key; the message has only our own hint."""
    echoed = canary[:8] + "*" * 20 + canary[-4:]
    body = {
        "error": {
            "message": f"Incorrect API key provided: {echoed}. You can find your "
            "API key at https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    err = map_status(
        get_provider("openai"), 401, body, key=canary, headers={"x-request-id": "req_401"}
    )
    assert isinstance(err, errors.AuthenticationError)
    assert err.provider == "openai" and err.status_code == 401
    assert err.code == "invalid_api_key" and err.request_id == "req_401"
    assert f"The OpenAI key …{canary[-4:]} was rejected (401)." in str(err)
    assert "`cencori-nb keys set openai`" in str(err)
    assert echoed not in str(err) and canary[:8] not in str(err)
    assert_no_leak(err, canary)


def test_any_provider_echoing_the_full_key_is_scrubbed(canary: str) -> None:
    for name in ("openai", "mistral", "anthropic", "google", "cencori"):
        body = {
            "error": {
                "message": f"bad key {canary} (and again: {canary})",
                "type": "authentication_error",
                "code": 401,
                "status": "UNAUTHENTICATED",
            },
            "code": "invalid_api_key",
        }
        err = map_status(get_provider(name), 401, body, key=canary)
        assert isinstance(err, errors.AuthenticationError), name
        assert_no_leak(err, canary)


def test_openai_429_rate_limit_with_retry_after() -> None:
    body = {
        "error": {
            "message": "Rate limit reached for gpt-4o-mini in organization org-x on "
            "requests per min (RPM): Limit 3, Used 3, Requested 1.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    err = map_status(
        get_provider("openai"), 429, body, headers={"retry-after-ms": "1500", "retry-after": "2"}
    )
    assert isinstance(err, errors.RateLimitError)
    assert err.retry_after == 1.5
    assert err.retryable is True
    assert "Retry in 1.5 s" in str(err)


def test_openai_insufficient_quota_is_a_rate_limit_that_waiting_does_not_fix() -> None:
    body = {
        "error": {
            "message": "You exceeded your current quota, please check your plan and "
            "billing details.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
    err = map_status(get_provider("openai"), 429, body)
    assert isinstance(err, errors.RateLimitError)
    assert err.retryable is False
    assert "billing" in str(err)


@pytest.mark.parametrize(
    ("status", "body", "cls", "code"),
    [
        (
            400,
            {
                "error": {
                    "message": "This model's maximum context length is 128000 tokens.",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            },
            errors.InvalidRequestError,
            "context_length_exceeded",
        ),
        (
            404,
            {
                "error": {
                    "message": "The model `gpt-9` does not exist or you do not have access to it.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "model_not_found",
                }
            },
            errors.InvalidRequestError,
            "model_not_found",
        ),
        (
            403,
            {
                "error": {
                    "message": "Country, region, or territory not supported",
                    "type": "request_forbidden",
                    "param": None,
                    "code": "unsupported_country_region_territory",
                }
            },
            errors.PermissionDeniedError,
            "unsupported_country_region_territory",
        ),
        (
            500,
            {
                "error": {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            },
            errors.ProviderUnavailableError,
            "server_error",
        ),
        (503, None, errors.ProviderUnavailableError, "provider_unavailable"),
        (408, None, errors.ProviderTimeoutError, "timeout"),
    ],
)
def test_openai_error_bodies(status: int, body: Any, cls: type, code: str) -> None:
    err = map_status(get_provider("openai"), status, body)
    assert type(err) is cls
    assert err.code == code
    assert err.status_code == status
    assert str(err) and err.hint  # says what to do next


def test_html_error_page_is_mapped_by_status_without_quoting_html() -> None:
    err = map_status(
        get_provider("openai"),
        502,
        content=b"<html><body>Bad gateway</body></html>",
        headers={"content-type": "text/html"},
    )
    assert isinstance(err, errors.ProviderUnavailableError)
    assert "<html>" not in str(err)


def _usage_before_the_inline_reads(raw: Any) -> Usage | None:
    """openai_usage as it was written with c.to_int and c.dig on every field (the reference
    its faster version must equal)."""
    from cencori_nb.providers import _common as c

    if not isinstance(raw, dict):
        return None
    prompt = c.to_int(raw.get("prompt_tokens"))
    completion = c.to_int(raw.get("completion_tokens"))
    cached = c.to_int(
        c.dig(raw, "prompt_tokens_details", "cached_tokens") or raw.get("prompt_cache_hit_tokens")
    )
    cache_write = c.to_int(c.dig(raw, "prompt_tokens_details", "cache_write_tokens"))
    reasoning = c.to_int(
        c.dig(raw, "completion_tokens_details", "reasoning_tokens") or raw.get("reasoning_tokens")
    )
    total = raw.get("total_tokens")
    output = completion
    if (
        reasoning
        and total is not None
        and c.to_int(total) == prompt + completion + reasoning
        and c.to_int(total) != prompt + completion
    ):
        output = completion + reasoning
    return Usage(prompt, output, cached, cache_write, reasoning,
                 c.to_int(c.dig(raw, "prompt_tokens_details", "image_tokens")))  # fmt: skip


_JUNK: list[Any] = [None, 0, 7, -3, True, False, 2.9, "12", "x", [], [5], {}, {"a": 1}]


@pytest.mark.parametrize("junk", _JUNK)
def test_openai_usage_reads_every_field_shape_as_before(junk: Any) -> None:
    """Each usage field (and each *_details object) holding an int, a bool, a float, a
    string, a list, an object or nothing gives the Usage the old reads gave."""
    from cencori_nb.providers.openai import openai_usage

    base: dict[str, Any] = {
        "prompt_tokens": 30,
        "completion_tokens": 9,
        "total_tokens": 39,
        "prompt_tokens_details": {"cached_tokens": 4, "image_tokens": 2},
        "completion_tokens_details": {"reasoning_tokens": 3},
    }
    shapes = [base, junk, {**base, "total_tokens": 42}]  # 42: reasoning beside completion
    for field in (*base, "prompt_cache_hit_tokens", "reasoning_tokens"):
        shapes.append({**base, field: junk})
    for details in ("prompt_tokens_details", "completion_tokens_details"):
        for field in ("cached_tokens", "cache_write_tokens", "image_tokens", "reasoning_tokens"):
            shapes.append({**base, details: {field: junk}})
    for raw in shapes:
        assert openai_usage(raw) == _usage_before_the_inline_reads(raw), raw


def test_flagged_prompt_is_an_unbilled_error_that_says_to_rephrase(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OpenAI's 400 invalid_prompt (tests/corpus/openai/error_400_invalid_prompt.json)
    through chat against the sandbox: InvalidRequestError whose hint says to rephrase (not
    "check the model name"), sent once, one error row that costs nothing."""
    import cencori_nb
    from cencori_nb import keys
    from cencori_nb.ledger import default_ledger
    from cencori_nb.sandbox.server import SandboxServer

    srv = SandboxServer(faults="prompt-blocked=1", seed=5)
    monkeypatch.setenv("CENCORI_NB_SANDBOX", srv.start_in_thread())
    try:
        keys.set("openai", "sk-proj-flagged" + "F" * 24 + "a1b2")
        with pytest.raises(errors.InvalidRequestError) as info:
            cencori_nb.chat("Say hello", model="gpt-4o-mini", route="byok", retries=3)
        assert info.value.code == "invalid_prompt"
        assert "rephrase it" in str(info.value) and "model name" not in str(info.value)
        assert srv.stats["requests"] == 1
        led = default_ledger()
        led.flush()
        rows = led.rows()
        assert [(r.status, r.error_code, r.cost_usd) for r in rows] == [
            ("error", "invalid_prompt", 0)
        ]
    finally:
        srv.stop()
