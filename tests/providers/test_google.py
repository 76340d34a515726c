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


def _blocked(reason: str, **feedback: str) -> dict[str, Any]:
    return {
        "promptFeedback": {"blockReason": reason, **feedback},
        "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "blk-1",
    }


@pytest.mark.parametrize("reason", ["SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "OTHER"])
def test_google_blocked_prompt_is_a_billed_refusal(reason: str) -> None:
    """A prompt blocked before the model ran (200, promptFeedback.blockReason, no
    candidates) is not raised by the adapter: the prompt tokens are billed, so the result
    carries the usage for the client to record and the RefusalError to raise after.
    (Until this session it raised PermissionDeniedError here and the billed prompt went
    unrecorded.)"""
    adapter = get_provider("google")
    response, _ = exchange(
        adapter.build_request(
            chat(), model="gemini-2.5-flash", api_key=Secret("AIza-x"), base_url=BASE
        ),
        body=_blocked(reason),
    )
    result = adapter.parse_response(response)
    assert result.text == ""
    assert result.usage == Usage(8, 0, 0, 0, 0)
    assert result.model == "gemini-2.5-flash"
    assert result.request_id == "blk-1"
    assert isinstance(result.error, errors.RefusalError)
    assert result.error.code == "prompt_blocked"
    assert reason in str(result.error)
    assert "8 prompt tokens were billed" in str(result.error)
    assert "Rephrase the prompt" in str(result.error)
    assert result.refusal == f"prompt blocked ({reason})"


def test_google_blocked_prompt_quotes_the_reason_message_without_the_key(canary: str) -> None:
    """blockReasonMessage (Vertex and Model Armor send one) is quoted, one line, with the
    key the request carried scrubbed out of it, as every provider message is."""
    adapter = get_provider("google")
    response, _ = exchange(
        adapter.build_request(
            chat(), model="gemini-2.5-flash", api_key=Secret(canary), base_url=BASE
        ),
        body=_blocked("MODEL_ARMOR", blockReasonMessage=f"The prompt\nviolated {canary} filters"),
    )
    err = adapter.parse_response(response).error
    assert err is not None
    assert "Google said: The prompt violated" in str(err)
    assert_no_leak(err, canary)


def test_google_reads_the_sent_key_only_for_a_blocked_prompt(
    canary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key the request carried is looked up (to keep it out of a blocked prompt's
    message) only when the prompt was blocked, not on every Gemini 200."""
    from cencori_nb.providers import _common

    adapter = get_provider("google")
    calls: list[object] = []
    lookup = _common.sent_key

    def counting(response: Any) -> str | None:
        calls.append(response)
        return lookup(response)

    monkeypatch.setattr(_common, "sent_key", counting)
    request = adapter.build_request(
        chat(), model="gemini-2.5-flash", api_key=Secret(canary), base_url=BASE
    )
    response, _ = exchange(request, body=GEMINI_RESPONSE)
    assert adapter.parse_response(response).text
    assert calls == []
    response, _ = exchange(request, body=_blocked("OTHER", blockReasonMessage=f"no {canary}"))
    err = adapter.parse_response(response).error
    assert err is not None and calls == [response]
    assert_no_leak(err, canary)


def test_google_candidates_beside_prompt_feedback_are_an_answer() -> None:
    """promptFeedback with candidates is only feedback (no blockReason applies)."""
    adapter = get_provider("google")
    body = {**_gemini_frame("Fine.", finish="STOP"), "promptFeedback": {"blockReason": "OTHER"}}
    response, _ = exchange(
        adapter.build_request(
            chat(), model="gemini-2.5-flash", api_key=Secret("AIza-x"), base_url=BASE
        ),
        body=body,
    )
    result = adapter.parse_response(response)
    assert (result.text, result.error) == ("Fine.", None)


def test_google_blocked_prompt_stream_is_one_complete_frame() -> None:
    """The streamed block is one frame with no finishReason: it ends the stream (done, so
    not "cut"), with the billed usage and the error for the client to raise."""
    adapter = get_provider("google")
    request = adapter.build_request(
        chat(stream=True), model="gemini-2.5-flash", api_key=Secret("AIza-x"), base_url=BASE
    )
    parser, deltas, _ = run_stream(adapter, request, sse(data(_blocked("PROHIBITED_CONTENT"))))
    assert deltas == []
    assert parser.done and parser.complete()
    result = parser.result()
    assert result.usage == Usage(8, 0, 0, 0, 0)
    assert isinstance(result.error, errors.RefusalError)
    assert result.request_id == "req_stream_1"  # the header's id, as for every frame


@pytest.mark.parametrize(
    "finish", ["SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII"]
)
def test_google_filtered_candidate_is_an_empty_refused_answer(finish: str) -> None:
    """A candidate a filter stopped: ``content: {}`` (no parts, no role), usage without
    candidatesTokenCount. An answer with no text, the prompt billed, ``refusal`` set."""
    adapter = get_provider("google")
    body = {
        "candidates": [{"content": {}, "finishReason": finish, "index": 0}],
        "usageMetadata": {"promptTokenCount": 14, "totalTokenCount": 14},
        "modelVersion": "gemini-2.5-flash",
    }
    response, _ = exchange(
        adapter.build_request(
            chat(), model="gemini-2.5-flash", api_key=Secret("AIza-x"), base_url=BASE
        ),
        body=body,
    )
    result = adapter.parse_response(response)
    assert (result.text, result.finish_reason, result.error) == ("", finish, None)
    assert result.usage == Usage(14, 0, 0, 0, 0)
    assert result.refusal == f"stopped by Google's content filter ({finish})"


@pytest.mark.parametrize("finish", ["MALFORMED_FUNCTION_CALL", "OTHER", "MAX_TOKENS"])
def test_google_other_stops_are_not_refusals(finish: str) -> None:
    adapter = get_provider("google")
    body = {
        "candidates": [{"content": {}, "finishReason": finish, "index": 0}],
        "usageMetadata": {"promptTokenCount": 14, "totalTokenCount": 14},
    }
    response, _ = exchange(
        adapter.build_request(
            chat(), model="gemini-2.5-flash", api_key=Secret("AIza-x"), base_url=BASE
        ),
        body=body,
    )
    result = adapter.parse_response(response)
    assert (result.refusal, result.finish_reason) == (None, finish)


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


# --- blocks end to end: the billed prompt reaches the ledger --------------------------------

GEMINI_KEY = "AIzaSyBlockedPrompt" + "K" * 16 + "b7c6"


@pytest.fixture
def blocking_sandbox(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A sandbox that blocks every prompt (the prompt-blocked fault), keyed for Google."""
    from cencori_nb import keys
    from cencori_nb.sandbox.server import SandboxServer

    srv = SandboxServer(faults="prompt-blocked=1", seed=3)
    monkeypatch.setenv("CENCORI_NB_SANDBOX", srv.start_in_thread())
    keys.set("google", GEMINI_KEY)
    yield srv
    srv.stop()


def _ledger_rows() -> list[Any]:
    from cencori_nb.ledger import default_ledger

    led = default_ledger()
    led.flush()
    return led.rows()


def _assert_billed_block(err: errors.RefusalError, sandbox: Any) -> None:
    assert err.code == "prompt_blocked"
    assert "PROHIBITED_CONTENT" in str(err) and "blocked again" in str(err)
    done = err.completion
    assert done is not None and done.text == "" and not done.estimated
    assert done.input_tokens > 0 and done.output_tokens == 0
    assert done.provider_cost_usd is not None and done.provider_cost_usd > 0
    rows = _ledger_rows()
    assert len(rows) == 1, rows  # one paid row, not an error row beside it
    assert rows[0].status != "error"
    assert rows[0].input_tokens == done.input_tokens
    assert rows[0].provider_cost_usd == done.provider_cost_usd
    assert sandbox.stats["requests"] == 1  # never retried: it would be blocked, and paid, again
    assert GEMINI_KEY not in str(err)


def test_chat_blocked_prompt_is_recorded_then_raised(blocking_sandbox: Any) -> None:
    import cencori_nb

    with pytest.raises(errors.RefusalError) as info:
        cencori_nb.chat("Say hello", model="gemini-2.5-flash", route="byok", retries=3)
    _assert_billed_block(info.value, blocking_sandbox)


def test_achat_blocked_prompt_is_recorded_then_raised(blocking_sandbox: Any) -> None:
    import asyncio

    import cencori_nb

    async def ask() -> Any:
        return await cencori_nb.achat("Say hello", model="gemini-2.5-flash", route="byok")

    with pytest.raises(errors.RefusalError) as info:
        asyncio.run(ask())
    _assert_billed_block(info.value, blocking_sandbox)


def test_stream_blocked_prompt_is_recorded_then_raised(blocking_sandbox: Any) -> None:
    """The one-frame blocked stream: no text, complete (not "cut"), the usage recorded."""
    import cencori_nb

    got: list[str] = []
    with pytest.raises(errors.RefusalError) as info:
        with cencori_nb.stream("Say hello", model="gemini-2.5-flash", route="byok") as s:
            got.extend(s)
    assert got == []
    _assert_billed_block(info.value, blocking_sandbox)


def test_blocked_prompt_is_not_cached(blocking_sandbox: Any) -> None:
    """A deterministic blocked request is sent (and paid) each time it is asked: an answer
    that is no answer is never served from the cache."""
    import cencori_nb

    for _ in range(2):
        with pytest.raises(errors.RefusalError):
            cencori_nb.chat("Same words", model="gemini-2.5-flash", route="byok", temperature=0)
    assert blocking_sandbox.stats["requests"] == 2
    assert cencori_nb.cache.stats()["entries"] == 0


def test_filtered_candidate_is_an_empty_answer_and_a_schema_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SAFETY-stopped candidate: without schema= an empty answer, finish_reason SAFETY,
    the prompt billed; with schema= a RefusalError carrying that paid completion, sent
    once (not retried as a schema mismatch)."""
    import cencori_nb
    from cencori_nb import keys
    from cencori_nb.sandbox.server import SandboxServer

    srv = SandboxServer(faults="content-filter=1", seed=3)
    monkeypatch.setenv("CENCORI_NB_SANDBOX", srv.start_in_thread())
    try:
        keys.set("google", GEMINI_KEY)
        c = cencori_nb.chat("Say hello", model="gemini-2.5-flash", route="byok", cache=False)
        assert (c.text, c.finish_reason, c.output_tokens) == ("", "SAFETY", 0)
        assert c.input_tokens > 0 and c.provider_cost_usd and c.provider_cost_usd > 0
        schema = {"type": "object", "properties": {"city": {"type": "string"}}}
        with pytest.raises(errors.RefusalError, match="content filter") as info:
            cencori_nb.chat("Say hello", model="gemini-2.5-flash", route="byok", schema=schema)
        assert info.value.completion is not None
        assert srv.stats["requests"] == 2
    finally:
        srv.stop()


def test_map_row_blocked_before_the_model_ran_is_paid_and_shown(blocking_sandbox: Any) -> None:
    """map(): the blocked prompt is that row's error, and the row still carries what the
    billed prompt cost (as a refusal's row does), recorded once in the ledger."""
    import cencori_nb

    out = cencori_nb.map(["Say hello"], model="gemini-2.5-flash", route="byok")
    row = out.iloc[0]
    assert "PROHIBITED_CONTENT" in row["error"]
    done = _ledger_rows()
    assert len(done) == 1 and done[0].input_tokens > 0 and done[0].status != "error"
    assert row["cost_usd"] == done[0].cost_usd
    assert blocking_sandbox.stats["requests"] == 1


def test_astream_blocked_prompt_is_recorded_then_raised(blocking_sandbox: Any) -> None:
    import asyncio

    import cencori_nb

    async def read() -> list[str]:
        got: list[str] = []
        async with cencori_nb.astream("Say hello", model="gemini-2.5-flash", route="byok") as s:
            async for delta in s:
                got.append(delta)
        return got

    with pytest.raises(errors.RefusalError) as info:
        asyncio.run(read())
    _assert_billed_block(info.value, blocking_sandbox)
