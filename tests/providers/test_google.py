"""The Gemini adapter: the key only in a header, bodies, SSE, RPC statuses and quotas."""

from __future__ import annotations

from typing import Any

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
    run_stream,
    sse,
)

# --- Google -----------------------------------------------------------------------------------

GEMINI_RESPONSE = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "Thinking about it", "thought": True},
                    {"text": "Hello", "thoughtSignature": "CiQB"},
                    {"text": " world"},
                ],
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 1200,
        "candidatesTokenCount": 40,
        "totalTokenCount": 1290,
        "cachedContentTokenCount": 1024,
        "thoughtsTokenCount": 45,
        "toolUsePromptTokenCount": 5,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1200}],
    },
    "modelVersion": "gemini-2.5-flash-preview-09-2025",
    "responseId": "abc123resp",
}


def test_google_key_only_in_header_never_in_url(canary: str) -> None:
    adapter = get_provider("google")
    request = adapter.build_request(
        chat(
            system="Be brief.",
            max_tokens=100,
            temperature=0.3,
            extra={"generationConfig": {"topK": 3}, "safetySettings": []},
        ),
        model="gemini-2.5-flash",
        api_key=Secret(canary),
        base_url=BASE + "/google",
    )
    _, rec = exchange(request, body=GEMINI_RESPONSE)
    sent = rec.last
    assert str(sent.url) == BASE + "/google/v1beta/models/gemini-2.5-flash:generateContent"
    assert canary not in str(sent.url) and "key=" not in str(sent.url)
    assert sent.headers["x-goog-api-key"] == canary
    assert "authorization" not in sent.headers
    assert rec.body == {
        "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"maxOutputTokens": 100, "temperature": 0.3, "topK": 3},
        "safetySettings": [],
    }


def test_google_stream_url_and_roles(canary: str) -> None:
    adapter = get_provider("google")
    req = ChatRequest(
        (Message("user", "a"), Message("assistant", "b"), Message("user", "c")), stream=True
    )
    request = adapter.build_request(
        req, model="models/gemini-2.5-pro", api_key=Secret(canary), base_url=BASE
    )
    _, rec = exchange(request, body={})
    assert str(rec.last.url) == BASE + "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    assert canary not in str(rec.last.url)
    assert [c["role"] for c in rec.body["contents"]] == ["user", "model", "user"]
    assert "stream" not in rec.body


def test_google_parse_response_usage_and_model_version() -> None:
    adapter = get_provider("google")
    response, _ = exchange(
        adapter.build_request(
            chat(), model="gemini-2.5-flash", api_key=Secret("AIza-x"), base_url=BASE
        ),
        body=GEMINI_RESPONSE,
    )
    result = adapter.parse_response(response)
    assert result.text == "Hello world"
    assert result.model == "gemini-2.5-flash-preview-09-2025"
    assert result.finish_reason == "STOP"
    assert result.request_id == "abc123resp"
    assert result.usage == Usage(
        input_tokens=1205,
        output_tokens=85,
        cache_read_tokens=1024,
        cache_write_tokens=0,
        thinking_tokens=45,
    )


def test_google_blocked_prompt_is_permission_denied() -> None:
    adapter = get_provider("google")
    body = {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
        "modelVersion": "gemini-2.5-flash",
    }
    response, _ = exchange(
        adapter.build_request(
            chat(), model="gemini-2.5-flash", api_key=Secret("AIza-x"), base_url=BASE
        ),
        body=body,
    )
    with pytest.raises(errors.PermissionDeniedError, match="SAFETY"):
        adapter.parse_response(response)


def test_google_missing_candidates_is_named() -> None:
    adapter = get_provider("google")
    response, _ = exchange(
        adapter.build_request(
            chat(), model="gemini-2.5-flash", api_key=Secret("AIza-x"), base_url=BASE
        ),
        body={"modelVersion": "gemini-2.5-flash"},
    )
    with pytest.raises(errors.BadResponseError, match="`candidates`"):
        adapter.parse_response(response)


def _gemini_frame(
    text: str, *, finish: str | None = None, usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    return {
        "candidates": [cand],
        "usageMetadata": usage or {"promptTokenCount": 8, "totalTokenCount": 8},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "r-1",
    }


def test_google_stream_ends_on_finish_reason_with_final_usage() -> None:
    adapter = get_provider("google")
    request = adapter.build_request(
        chat(stream=True), model="gemini-2.5-flash", api_key=Secret("AIza-x"), base_url=BASE
    )
    final = {
        "promptTokenCount": 8,
        "candidatesTokenCount": 20,
        "thoughtsTokenCount": 32,
        "totalTokenCount": 60,
    }
    parser, deltas, _ = run_stream(
        adapter,
        request,
        sse(data(_gemini_frame("The")), data(_gemini_frame(" end.", finish="STOP", usage=final))),
    )
    assert deltas == ["The", " end."]
    assert parser.done
    result = parser.result()
    assert result.model == "gemini-2.5-flash"
    assert result.finish_reason == "STOP"
    assert result.usage == Usage(8, 52, 0, 0, 32)


def test_google_truncated_stream_has_no_usage() -> None:
    adapter = get_provider("google")
    request = adapter.build_request(
        chat(stream=True), model="gemini-2.5-flash", api_key=Secret("AIza-x"), base_url=BASE
    )
    parser, deltas, _ = run_stream(
        adapter, request, sse(data(_gemini_frame("The")), data(_gemini_frame(" mid")))
    )
    assert deltas == ["The", " mid"]
    assert parser.done is False
    assert parser.result().usage is None


def test_google_error_frame_in_stream() -> None:
    adapter = get_provider("google")
    request = adapter.build_request(
        chat(stream=True), model="gemini-2.5-flash", api_key=Secret("AIza-x"), base_url=BASE
    )
    frame = {
        "error": {
            "code": 503,
            "message": "The model is overloaded. Please try again later.",
            "status": "UNAVAILABLE",
        }
    }
    with pytest.raises(errors.ProviderUnavailableError) as info:
        run_stream(adapter, request, sse(data(_gemini_frame("a")), data(frame)))
    assert info.value.status_code == 503


def test_google_invalid_key_400_is_authentication(canary: str) -> None:
    body = {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                },
                {
                    "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                    "locale": "en-US",
                    "message": "API key not valid.",
                },
            ],
        }
    }
    err = map_status(get_provider("google"), 400, body, key=canary)
    assert isinstance(err, errors.AuthenticationError)
    assert err.code == "api_key_invalid"
    assert "`cencori-nb keys set google`" in str(err)
    assert_no_leak(err, canary)


def test_google_resource_exhausted_with_retry_info() -> None:
    body = {
        "error": {
            "code": 429,
            "message": "You exceeded your current quota.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/"
                            "generate_content_free_tier_requests",
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                            "quotaValue": "10",
                        }
                    ],
                },
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [
                        {"description": "Learn more", "url": "https://ai.google.dev/rate-limits"}
                    ],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "34s"},
            ],
        }
    }
    err = map_status(get_provider("google"), 429, body)
    assert isinstance(err, errors.RateLimitError)
    assert err.retry_after == 34.0
    assert err.retryable is True
    assert err.code == "resource_exhausted"


def test_google_daily_quota_is_not_retryable() -> None:
    body = {
        "error": {
            "code": 429,
            "message": "Quota exceeded.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}
                    ],
                }
            ],
        }
    }
    err = map_status(get_provider("google"), 429, body)
    assert isinstance(err, errors.RateLimitError)
    assert err.retryable is False
    assert "daily" in str(err)


@pytest.mark.parametrize(
    ("status", "rpc", "cls"),
    [
        (403, "PERMISSION_DENIED", errors.PermissionDeniedError),
        (401, "UNAUTHENTICATED", errors.AuthenticationError),
        (404, "NOT_FOUND", errors.InvalidRequestError),
        (400, "FAILED_PRECONDITION", errors.InvalidRequestError),
        (500, "INTERNAL", errors.ProviderUnavailableError),
        (504, "DEADLINE_EXCEEDED", errors.ProviderTimeoutError),
    ],
)
def test_google_rpc_statuses(status: int, rpc: str, cls: type) -> None:
    body = [{"error": {"code": status, "message": rpc.lower(), "status": rpc}}]  # array form
    err = map_status(get_provider("google"), status, body)
    assert type(err) is cls
    assert err.rpc_status == rpc
