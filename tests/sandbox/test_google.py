"""The official google-genai SDK, unchanged, against the sandbox's Gemini door."""

from __future__ import annotations

import json

import httpx2
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from cencori_nb.sandbox.replies import count_tokens

# one client for the module: building one per call costs an SSL context each time
HTTP = httpx2.Client(verify=False, timeout=10)
KEY = "AIzaSandboxTestKey-Gm3k"
PROMPT = "Write a haiku about offline tests"


def make_client(sandbox, api_version: str | None = "v1beta", key: str = KEY) -> genai.Client:
    options: dict = {"base_url": sandbox.url + "/google"}
    if api_version:
        options["api_version"] = api_version
    return genai.Client(api_key=key, http_options=options)


def test_generate_content_v1beta(sandbox):
    """generate_content: text, finish reason, usageMetadata; key only in x-goog-api-key."""
    client = make_client(sandbox)  # keep a reference: a collected Client closes its pool
    r = client.models.generate_content(model="gemini-2.5-flash", contents=PROMPT)
    assert r.text.startswith(f"[sandbox reply from google/gemini-2.5-flash] You asked: '{PROMPT}'.")
    assert r.candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert r.usage_metadata.prompt_token_count == count_tokens(PROMPT)
    assert r.usage_metadata.candidates_token_count == count_tokens(r.text)
    # 2.5 Flash thinks by default: thinking tokens are part of the total (billed as output)
    thoughts = r.usage_metadata.thoughts_token_count
    assert thoughts > 0
    assert r.usage_metadata.total_token_count == (
        r.usage_metadata.prompt_token_count + r.usage_metadata.candidates_token_count + thoughts
    )
    assert r.model_version == "gemini-2.5-flash"
    seen = sandbox.stats["recent"][-1]
    assert seen["route"] == "/google/v1beta/models/{model}:generateContent"
    assert seen["headers"]["x-goog-api-key"] == "…Gm3k" and seen["query"] == {}


def test_generate_content_default_v1(sandbox):
    """The SDK's default API version (v1) is served too."""
    client = make_client(sandbox, api_version=None)
    r = client.models.generate_content(model="gemini-2.5-flash", contents=PROMPT)
    assert r.text.startswith("[sandbox reply from google/gemini-2.5-flash]")
    assert sandbox.stats["routes"] == {"/google/v1/models/{model}:generateContent": 1}


def test_system_instruction_and_max_output_tokens(sandbox):
    """Thinking off: maxOutputTokens cuts the answer itself."""
    client = make_client(sandbox)
    r = client.models.generate_content(
        model="gemini-2.5-flash",
        contents=PROMPT,
        config=genai_types.GenerateContentConfig(
            system_instruction="Be brief.",
            max_output_tokens=6,
            thinking_config=genai_types.ThinkingConfig(thinking_budget=0),
        ),
    )
    assert r.candidates[0].finish_reason == genai_types.FinishReason.MAX_TOKENS
    assert r.usage_metadata.candidates_token_count == 6
    assert r.usage_metadata.prompt_token_count == count_tokens(PROMPT) + count_tokens("Be brief.")


@pytest.mark.parametrize("stream", [False, True])
def test_max_output_tokens_caps_thinking_and_answer_together(sandbox, stream):
    """2.5 thinks by default, and maxOutputTokens caps thinking and answer together (as
    Google does; tests/corpus/google/generate_25pro_max_tokens_thinking_empty.json): a
    small cap is used up by thinking, MAX_TOKENS with no text and no
    candidates_token_count; a larger one leaves the answer what thinking did not use.
    (Until this session the sandbox counted them apart: 6 answer tokens and thinking on
    top, more output than the cap allows.)"""
    client = make_client(sandbox)
    for cap in (6, 200):
        config = genai_types.GenerateContentConfig(max_output_tokens=cap)
        if stream:
            chunks = list(
                client.models.generate_content_stream(
                    model="gemini-2.5-pro", contents=PROMPT, config=config
                )
            )
            r, text = chunks[-1], "".join(c.text or "" for c in chunks)
        else:
            r = client.models.generate_content(
                model="gemini-2.5-pro", contents=PROMPT, config=config
            )
            text = r.text or ""
        usage = r.usage_metadata
        spent = (usage.thoughts_token_count or 0) + (usage.candidates_token_count or 0)
        assert r.candidates[0].finish_reason == genai_types.FinishReason.MAX_TOKENS
        assert spent == cap
        if cap == 6:
            assert text == "" and usage.candidates_token_count is None
            assert r.candidates[0].content.parts is None
        else:
            assert usage.candidates_token_count == count_tokens(text) > 0


@pytest.mark.parametrize(
    ("model", "budget", "thinks"),
    [
        ("gemini-2.5-flash", None, True),
        ("gemini-2.5-pro", None, True),
        ("gemini-2.5-flash", 0, False),
        ("gemini-2.5-flash-lite", None, False),
        ("gemini-2.5-flash-lite", 512, True),
        ("gemini-2.0-flash", None, False),
    ],
)
def test_thinking_tokens_by_model_and_budget(sandbox, model, budget, thinks):
    """2.5 Flash and Pro think unless the budget is 0; Flash-Lite only with a budget."""
    client = make_client(sandbox)
    config = genai_types.GenerateContentConfig(
        thinking_config=None
        if budget is None
        else genai_types.ThinkingConfig(thinking_budget=budget)
    )
    r = client.models.generate_content(model=model, contents=PROMPT, config=config)
    thoughts = r.usage_metadata.thoughts_token_count
    assert (thoughts or 0) > 0 if thinks else thoughts is None
    if budget:
        assert thoughts <= budget


@pytest.mark.parametrize("api_version", ["v1beta", None])
def test_stream_usage_on_last_frame(sandbox, api_version):
    """streamGenerateContent?alt=sse: text joins to the reply; every frame carries usage
    (the output so far), the last one the totals."""
    client = make_client(sandbox, api_version=api_version)
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents=PROMPT))
    text = "".join(c.text or "" for c in chunks)
    whole = client.models.generate_content(model="gemini-2.5-flash", contents=PROMPT).text
    assert text == whole
    counts = [c.usage_metadata.candidates_token_count for c in chunks]
    assert counts == sorted(counts) and counts[0] >= 1
    assert {c.usage_metadata.prompt_token_count for c in chunks} == {count_tokens(PROMPT)}
    assert len({c.usage_metadata.thoughts_token_count for c in chunks}) == 1
    assert chunks[-1].usage_metadata.candidates_token_count == count_tokens(text)
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert sandbox.stats["recent"][0]["query"] == {"alt": "sse"}


def test_stream_without_alt_sse_is_a_json_array(sandbox):
    r = HTTP.post(
        sandbox.url + "/google/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        headers={"x-goog-api-key": KEY},
        json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
    )
    frames = json.loads(r.text)
    assert isinstance(frames, list) and len(frames) > 1
    assert all("usageMetadata" in frame for frame in frames)


def test_key_query_parameter_also_works_and_is_masked(sandbox):
    r = HTTP.post(
        sandbox.url + f"/google/v1beta/models/gemini-2.5-flash:generateContent?key={KEY}",
        json={"contents": [{"parts": [{"text": "hi"}]}]},
    )
    assert r.status_code == 200
    assert KEY not in json.dumps(sandbox.stats)


def test_revoked_key_is_400_api_key_invalid(sandbox):
    """Gemini answers a bad key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID."""
    client = make_client(sandbox, key="AIza-revoked-key-0000")
    with pytest.raises(genai_errors.ClientError) as info:
        client.models.generate_content(model="gemini-2.5-flash", contents=PROMPT)
    assert info.value.code == 400
    assert info.value.status == "INVALID_ARGUMENT"
    details = info.value.details["error"]["details"]
    assert details[0]["reason"] == "API_KEY_INVALID"
    assert details[1]["@type"] == "type.googleapis.com/google.rpc.LocalizedMessage"


def test_missing_key_is_403_permission_denied(sandbox):
    r = HTTP.post(
        sandbox.url + "/google/v1beta/models/gemini-2.5-flash:generateContent",
        json={"contents": [{"parts": [{"text": "hi"}]}]},
    )
    assert r.status_code == 403 and r.json()["error"]["status"] == "PERMISSION_DENIED"


def test_rate_limit_fault_has_retry_info(sandbox):
    client = make_client(sandbox)
    with pytest.raises(genai_errors.ClientError) as info:
        client.models.generate_content(
            model="gemini-2.5-flash",
            contents=PROMPT,
            config=genai_types.GenerateContentConfig(
                http_options=genai_types.HttpOptions(headers={"X-Sandbox-Fault": "429"})
            ),
        )
    assert info.value.code == 429 and info.value.status == "RESOURCE_EXHAUSTED"
    details = info.value.details["error"]["details"]
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"} in details
    assert "Please retry in 1s." in info.value.details["error"]["message"]
    # Gemini sends no Retry-After header: the wait is only in the body
    r = HTTP.post(
        sandbox.url + "/google/v1beta/models/gemini-2.5-flash:generateContent",
        headers={"x-goog-api-key": KEY, "X-Sandbox-Fault": "429"},
        json={"contents": [{"parts": [{"text": "hi"}]}]},
    )
    assert r.status_code == 429 and "retry-after" not in r.headers


def test_server_fault_is_server_error(sandbox):
    r = HTTP.post(
        sandbox.url + "/google/v1beta/models/gemini-2.5-flash:generateContent",
        headers={"x-goog-api-key": KEY, "X-Sandbox-Fault": "503"},
        json={"contents": [{"parts": [{"text": "hi"}]}]},
    )
    assert r.status_code == 503
    assert r.json()["error"] | {"message": ""} == {
        "code": 503,
        "message": "",
        "status": "UNAVAILABLE",
    }


def test_empty_contents_is_invalid_argument(sandbox):
    r = HTTP.post(
        sandbox.url + "/google/v1beta/models/gemini-2.5-flash:generateContent",
        headers={"x-goog-api-key": KEY},
        json={"contents": []},
    )
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_unknown_model_and_over_long_prompt(sandbox):
    """The real 404 (with its ListModels advice) and the real context-window 400."""
    url = sandbox.url + "/google/v1beta/models/{}:generateContent"
    r = HTTP.post(
        url.format("gemini-9-ultra"),
        headers={"x-goog-api-key": KEY},
        json={"contents": [{"parts": [{"text": "hi"}]}]},
    )
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
    assert r.json()["error"]["message"].startswith(
        "models/gemini-9-ultra is not found for API version v1beta, or is not supported for "
        "generateContent. Call ListModels"
    )
    long = "word " * 1_048_577
    r = HTTP.post(
        url.format("gemini-2.5-flash"),
        headers={"x-goog-api-key": KEY},
        json={"contents": [{"parts": [{"text": long}]}]},
    )
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert r.json()["error"]["message"].startswith(
        "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576)."
    )


def test_stream_error_fault_is_an_error_frame(sandbox):
    with HTTP.stream(
        "POST",
        sandbox.url + "/google/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        headers={"x-goog-api-key": KEY, "X-Sandbox-Fault": "stream-error"},
        json={"contents": [{"parts": [{"text": "hi"}]}]},
    ) as r:
        frames = [json.loads(line[6:]) for line in r.iter_lines() if line]
    assert r.status_code == 200 and "candidates" in frames[0]
    assert frames[-1]["error"]["status"] == "UNAVAILABLE"


def _faulted(fault: str) -> genai_types.GenerateContentConfig:
    return genai_types.GenerateContentConfig(
        http_options=genai_types.HttpOptions(headers={"X-Sandbox-Fault": fault})
    )


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_blocked_fault_reads_as_google_sdk_block(sandbox, stream):
    """The prompt-blocked fault, read by google-genai as it reads Google's: no candidates,
    no text, prompt_feedback.block_reason PROHIBITED_CONTENT, the prompt counted in
    usage_metadata and no candidates_token_count (tests/corpus/google/*blocked_prompt*)."""
    client = make_client(sandbox)
    config = _faulted("prompt-blocked")
    if stream:
        chunks = list(
            client.models.generate_content_stream(
                model="gemini-2.5-flash", contents=PROMPT, config=config
            )
        )
        assert len(chunks) == 1
        r = chunks[0]
    else:
        r = client.models.generate_content(model="gemini-2.5-flash", contents=PROMPT, config=config)
    assert r.candidates is None
    assert r.text is None
    assert r.prompt_feedback.block_reason == genai_types.BlockedReason.PROHIBITED_CONTENT
    assert r.usage_metadata.prompt_token_count == count_tokens(PROMPT)
    assert r.usage_metadata.candidates_token_count is None
    assert r.usage_metadata.total_token_count == count_tokens(PROMPT)


@pytest.mark.parametrize("fault", ["refusal", "content-filter"])
def test_refusal_fault_is_a_safety_stopped_candidate(sandbox, fault):
    """A filtered candidate as google-genai reads it: finish_reason SAFETY, an empty
    Content (no parts), text None, a blocked rating; only the prompt in usage."""
    client = make_client(sandbox)
    r = client.models.generate_content(
        model="gemini-2.5-flash", contents=PROMPT, config=_faulted(fault)
    )
    candidate = r.candidates[0]
    assert candidate.finish_reason == genai_types.FinishReason.SAFETY
    assert candidate.content.parts is None
    assert r.text is None
    assert any(rating.blocked for rating in candidate.safety_ratings)
    assert r.usage_metadata.prompt_token_count == count_tokens(PROMPT)
    assert r.usage_metadata.candidates_token_count is None
    assert r.prompt_feedback is None
