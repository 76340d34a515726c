"""The OpenAI-compatible family (OpenRouter, Groq, DeepSeek, xAI, Mistral, local servers)."""

from __future__ import annotations

from decimal import Decimal

import httpx2
import pytest

from cencori_nb import errors
from cencori_nb.keystore.secret import Secret
from cencori_nb.providers import get_provider
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

# --- OpenAI-compatible family ----------------------------------------------------------------


def test_compatible_uses_max_tokens_and_its_own_base(canary: str) -> None:
    adapter = get_provider("mistral")
    request = adapter.build_request(
        chat(max_tokens=50, stream=True),
        model="mistral-small-latest",
        api_key=Secret(canary),
        base_url=BASE + "/mistral/v1",
    )
    _, rec = exchange(request, body={})
    assert str(rec.last.url) == BASE + "/mistral/v1/chat/completions"
    assert rec.last.headers["authorization"] == f"Bearer {canary}"
    assert rec.body["max_tokens"] == 50
    assert "max_completion_tokens" not in rec.body
    assert "stream_options" not in rec.body  # Mistral's schema rejects unknown fields


def test_local_server_with_empty_key_sends_no_authorization() -> None:
    adapter = get_provider("local")
    request = adapter.build_request(
        chat(), model="llama3.2", api_key=Secret(""), base_url="http://127.0.0.1:11434/v1"
    )
    _, rec = exchange(request, body={})
    assert "authorization" not in rec.last.headers
    assert str(rec.last.url) == "http://127.0.0.1:11434/v1/chat/completions"


def test_openrouter_stream_with_comments_cost_and_usage_on_last_chunk() -> None:
    """``: OPENROUTER PROCESSING`` comments are skipped; usage.cost is kept as Decimal."""
    adapter = get_provider("openrouter")
    request = adapter.build_request(
        chat(stream=True), model="openai/gpt-4o-mini", api_key=Secret("sk-or-v1-x"), base_url=BASE
    )
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "total_tokens": 14,
        "cost": 0.0000095,
        "prompt_tokens_details": {"cached_tokens": 2},
    }
    payload = sse(
        ": OPENROUTER PROCESSING",
        ": OPENROUTER PROCESSING",
        data(openai_chunk("Hi")),
        data(openai_chunk(" you", finish="stop", usage=usage)),
        data("[DONE]"),
    )
    parser, deltas, rec = run_stream(adapter, request, payload)
    assert "stream_options" not in rec.body
    assert deltas == ["Hi", " you"]
    assert parser.done
    result = parser.result()
    assert result.usage == Usage(10, 4, 2, 0, 0)
    assert result.reported_cost_usd == Decimal("0.0000095")


def test_openrouter_error_inside_a_200_stream_is_mapped() -> None:
    adapter = get_provider("openrouter")
    request = adapter.build_request(
        chat(stream=True), model="openai/gpt-4o-mini", api_key=Secret("sk-or-v1-x"), base_url=BASE
    )
    err_chunk = {
        "id": "gen-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "openai/gpt-4o-mini",
        "provider": "OpenAI",
        "error": {"code": 502, "message": "Provider disconnected"},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    }
    with pytest.raises(errors.ProviderUnavailableError) as info:
        run_stream(adapter, request, sse(data(openai_chunk("Hi")), data(err_chunk)))
    assert info.value.status_code == 502
    assert "Provider disconnected" in str(info.value)


def test_openai_error_inside_a_stream_uses_the_error_type() -> None:
    adapter = get_provider("openai")
    request = adapter.build_request(
        chat(stream=True), model="gpt-4o-mini", api_key=Secret("sk-x"), base_url=BASE
    )
    frame = {
        "error": {
            "message": "Rate limit reached",
            "type": "rate_limit_error",
            "code": "rate_limit_exceeded",
        }
    }
    with pytest.raises(errors.RateLimitError):
        run_stream(adapter, request, sse(data(frame)))


def test_compatible_stream_without_usage_reports_none() -> None:
    adapter = get_provider("together")
    request = adapter.build_request(
        chat(stream=True), model="meta-llama/x", api_key=Secret("k"), base_url=BASE
    )
    parser, deltas, rec = run_stream(
        adapter,
        request,
        sse(data(openai_chunk("a")), data(openai_chunk("b", finish="stop")), data("[DONE]")),
    )
    assert rec.body["stream_options"] == {"include_usage": True}
    assert parser.done and deltas == ["a", "b"]
    assert parser.result().usage is None


def test_groq_usage_under_x_groq() -> None:
    adapter = get_provider("groq")
    request = adapter.build_request(
        chat(stream=True), model="llama-3.3-70b-versatile", api_key=Secret("gsk_x"), base_url=BASE
    )
    last = openai_chunk(finish="stop")
    last["x_groq"] = {
        "id": "req_01",
        "usage": {
            "prompt_tokens": 9,
            "completion_tokens": 2,
            "total_tokens": 11,
            "queue_time": 0.01,
        },
    }
    parser, _, _ = run_stream(
        adapter, request, sse(data(openai_chunk("ok")), data(last), data("[DONE]"))
    )
    assert parser.result().usage == Usage(9, 2, 0, 0, 0)


def test_deepseek_cache_hits_and_xai_reasoning_outside_completion() -> None:
    """DeepSeek's prompt_cache_hit_tokens are cache reads; xAI's reasoning is added."""
    from cencori_nb.providers.openai import openai_usage

    deepseek = {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "total_tokens": 120,
        "prompt_cache_hit_tokens": 64,
        "prompt_cache_miss_tokens": 36,
    }
    assert openai_usage(deepseek) == Usage(100, 20, 64, 0, 0)
    xai = {
        "prompt_tokens": 37,
        "completion_tokens": 530,
        "total_tokens": 1386,
        "completion_tokens_details": {"reasoning_tokens": 819},
    }
    assert openai_usage(xai) == Usage(37, 1349, 0, 0, 819)
    openai_style = {
        "prompt_tokens": 37,
        "completion_tokens": 530,
        "total_tokens": 567,
        "completion_tokens_details": {"reasoning_tokens": 400},
    }
    assert openai_usage(openai_style) == Usage(37, 530, 0, 0, 400)


def test_openrouter_402_is_the_providers_billing_not_our_wallet() -> None:
    body = {
        "error": {
            "code": 402,
            "message": "Insufficient credits. Add more using https://openrouter.ai/credits",
        }
    }
    err = map_status(get_provider("openrouter"), 402, body)
    assert isinstance(err, errors.PermissionDeniedError)
    assert not isinstance(err, errors.CreditsError)
    assert "OpenRouter" in str(err)


def test_mistral_422_validation_detail_is_quoted_readably() -> None:
    body = {
        "object": "error",
        "message": {
            "detail": [
                {
                    "type": "extra_forbidden",
                    "loc": ["body", "stream_options", "include_usage"],
                    "msg": "Extra inputs are not permitted",
                    "input": True,
                }
            ]
        },
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    err = map_status(get_provider("mistral"), 422, body)
    assert type(err) is errors.InvalidRequestError
    assert err.code == "invalid_request_error"
    assert "stream_options.include_usage: Extra inputs are not permitted" in str(err)


def test_xai_wrong_key_400_is_authentication(canary: str) -> None:
    """xAI answers a wrong key with 400 and a sentence; it is still an auth failure."""
    masked = canary[:2] + "***" + canary[-2:]
    body = {
        "code": "Client specified an invalid argument",
        "error": f"Incorrect API key provided: {masked}. You can obtain an API key from "
        "https://console.x.ai.",
    }
    err = map_status(get_provider("xai"), 400, body, key=canary)
    assert type(err) is errors.AuthenticationError
    assert "`cencori-nb keys set xai`" in str(err)
    assert_no_leak(err, canary)


def test_ollama_model_not_pulled_hint() -> None:
    err = map_status(
        get_provider("local"),
        404,
        {"error": 'model "llama3.2" not found, try pulling it first'},
        key="",
    )
    assert type(err) is errors.InvalidRequestError
    assert "ollama pull" in str(err)
    assert "llama3.2" in str(err)


def test_map_error_on_an_unread_stream_or_a_bare_response() -> None:
    """The transport reads error bodies first, but a mapper must not crash if it did not."""
    adapter = get_provider("openai")
    unread = httpx2.Response(
        429,
        headers={"retry-after": "3"},
        stream=httpx2.ByteStream(b'{"error": {"message": "slow"}}'),
    )
    err = adapter.map_error(unread)
    assert type(err) is errors.RateLimitError and err.retry_after == 3.0
    bare = httpx2.Response(401, json={"error": {"message": "no", "code": "invalid_api_key"}})
    err = adapter.map_error(bare)  # no .request: no key hint, still clear
    assert type(err) is errors.AuthenticationError
    assert "The OpenAI key was rejected (401)." in str(err)
    assert "keys set openai" in str(err)


def test_local_server_refusing_a_missing_key_says_none_was_sent() -> None:
    err = map_status(get_provider("local"), 401, {"error": "unauthorized"}, key="")
    assert type(err) is errors.AuthenticationError
    assert "no key was sent" in str(err)
    assert "`cencori-nb keys set local`" in str(err)
