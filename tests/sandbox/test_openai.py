"""The official openai SDK, unchanged, against the sandbox's OpenAI and compatible doors."""

from __future__ import annotations

import json

import httpx2
import openai
import pytest

from cencori_nb.sandbox.replies import count_tokens
from cencori_nb.sandbox.wallet import provider_cost

# one client for the module: building one per call costs an SSL context each time
HTTP = httpx2.Client(verify=False, timeout=10)
KEY = "sk-proj-sandboxtest-Wx9Q"
PROMPT = "Summarise the history of Rome"


@pytest.fixture
def client(sandbox) -> openai.OpenAI:
    return openai.OpenAI(base_url=sandbox.url + "/openai/v1", api_key=KEY, max_retries=0)


def ask(client: openai.OpenAI, prompt: str = PROMPT, **kw):
    return client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], **kw
    )


def test_non_stream_completion(client, sandbox):
    """A chat.completion with the sandbox text, usage, and the key sent as Bearer."""
    c = ask(client)
    # OpenAI answers an alias with the dated snapshot it points at
    assert c.object == "chat.completion" and c.model == "gpt-4o-mini-2024-07-18"
    text = c.choices[0].message.content
    assert text.startswith(f"[sandbox reply from openai/gpt-4o-mini] You asked: '{PROMPT}'.")
    assert c.choices[0].finish_reason == "stop"
    assert c.usage.prompt_tokens == count_tokens(PROMPT)
    assert c.usage.completion_tokens == count_tokens(text)
    assert c.usage.prompt_tokens_details.cached_tokens == 0
    seen = sandbox.stats["recent"][-1]
    assert seen["headers"]["authorization"] == "Bearer …Wx9Q"
    assert seen["route"] == "/openai/v1/chat/completions"


def test_raw_response_headers(client):
    """x-request-id, x-ratelimit-* and the sandbox marker come with every answer."""
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-sandbox"] == "true"
    assert int(raw.headers["x-ratelimit-remaining-requests"]) >= 0
    assert raw.headers["x-ratelimit-limit-tokens"]
    assert raw.parse().id.startswith("chatcmpl-")


def test_stream_with_include_usage(client):
    """Deltas concatenate to the reply; a final usage chunk has empty choices."""
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    usage_chunks = [ch for ch in chunks if ch.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
    assert usage_chunks[0].choices == []
    assert usage_chunks[0].usage.completion_tokens == count_tokens(text)
    assert usage_chunks[0].usage.prompt_tokens == count_tokens(PROMPT)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    content_chunks = [ch for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(content_chunks) == usage_chunks[0].usage.completion_tokens
    assert text == ask(client).choices[0].message.content


def test_stream_without_include_usage_has_no_usage_chunk(client):
    chunks = list(ask(client, stream=True))
    assert all(ch.usage is None for ch in chunks)
    assert all(ch.choices for ch in chunks)


def test_max_completion_tokens_stream(client):
    """20 tokens asked, 20 content chunks, finish_reason length."""
    chunks = list(
        ask(client, stream=True, max_completion_tokens=20, stream_options={"include_usage": True})
    )
    content = [ch for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(content) == 20
    assert chunks[-1].usage.completion_tokens == 20
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"


def test_revoked_key_is_authentication_error(sandbox):
    bad = openai.OpenAI(
        base_url=sandbox.url + "/openai/v1", api_key="sk-revoked-0000abcd", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as info:
        ask(bad)
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    assert info.value.body["type"] == "invalid_request_error"
    assert "sk-revoked-0000abcd" not in str(info.value)
    assert info.value.request_id.startswith("req_")


def test_missing_key_is_401(sandbox):
    r = HTTP.post(
        sandbox.url + "/openai/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 401
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("fault", "exc", "status"),
    [
        ("429", openai.RateLimitError, 429),
        ("500", openai.InternalServerError, 500),
        ("503", openai.InternalServerError, 503),
        ("401", openai.AuthenticationError, 401),
        ("403", openai.PermissionDeniedError, 403),
    ],
)
def test_fault_header_errors(client, fault, exc, status):
    """X-Sandbox-Fault injects each provider error, which the SDK maps to its own type."""
    with pytest.raises(exc) as info:
        ask(client, extra_headers={"X-Sandbox-Fault": fault})
    assert info.value.status_code == status
    if status == 429:
        assert info.value.response.headers["retry-after"] == "1"
        assert info.value.code == "rate_limit_exceeded"
        assert info.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_bad_request_body(client):
    """A missing model or empty messages is a 400 naming the parameter."""
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert info.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError):
        ask(client, max_completion_tokens=0)


def test_unknown_model_marker_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(
            model="gpt-does-not-exist", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.code == "model_not_found"
    assert info.value.body["message"].startswith(
        "The model `gpt-does-not-exist` does not exist or you do not have access to it."
    )


def test_a_model_openai_does_not_serve_is_404_and_a_priced_one_works(client):
    """Unknown = neither listed nor priced in the public catalogue; any priced model works."""
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="gpt-17-turbo-max", messages=[{"role": "user", "content": "x"}]
        )
    c = client.chat.completions.create(
        model="gpt-4-turbo", messages=[{"role": "user", "content": "x"}]
    )
    assert c.model == "gpt-4-turbo"


def test_out_of_quota_is_429_insufficient_quota_without_retry_after(client):
    """OpenAI has no 402: an account without credit is a 429 that waiting does not fix."""
    with pytest.raises(openai.RateLimitError) as info:
        ask(client, extra_headers={"X-Sandbox-Fault": "402"})
    assert info.value.status_code == 429 and info.value.code == "insufficient_quota"
    assert info.value.body["type"] == "insufficient_quota"
    assert "retry-after" not in info.value.response.headers


def test_prompt_over_the_context_window(client):
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, "word " * 128_001)
    assert info.value.code == "context_length_exceeded"
    assert info.value.body["param"] == "messages"
    assert info.value.body["message"].startswith(
        "This model's maximum context length is 128000 tokens. However, your messages "
        "resulted in 128001 tokens."
    )


def test_stream_error_fault_is_an_error_line_after_200(client):
    stream = ask(client, stream=True, extra_headers={"X-Sandbox-Fault": "stream-error"})
    with pytest.raises(openai.APIError) as info:
        for _ in stream:
            pass
    assert "The server had an error" in info.value.message


def test_malformed_fault_breaks_the_sdk(client):
    with pytest.raises(json.JSONDecodeError):  # the SDK surfaces the decoder's error
        ask(client, extra_headers={"X-Sandbox-Fault": "malformed"})


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert "gpt-4o-mini" in ids


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("mistral", "mistral-small-latest"),
        ("groq", "llama-3.3-70b-versatile"),
        ("xai", "grok-3-mini"),
        ("deepseek", "deepseek-chat"),
        ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
        ("local", "llama3.2"),
    ],
)
def test_compatible_providers(sandbox, provider, model):
    """Each OpenAI-compatible provider answers under /<provider>/v1 in its own name."""
    client = openai.OpenAI(base_url=f"{sandbox.url}/{provider}/v1", api_key=KEY, max_retries=0)
    c = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}])
    assert c.choices[0].message.content.startswith(f"[sandbox reply from {provider}/{model}]")
    assert sandbox.stats["routes"] == {f"/{provider}/v1/chat/completions": 1}


def test_openrouter_stream_has_comment_and_cost(sandbox):
    """OpenRouter: ': OPENROUTER PROCESSING' comment, usage with cost even when not asked."""
    with HTTP.stream(
        "POST",
        sandbox.url + "/openrouter/v1/chat/completions",
        json={
            "model": "openai/gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "hello"}],
        },
        headers={"Authorization": f"Bearer {KEY}"},
    ) as r:
        lines = list(r.iter_lines())
    assert lines[0] == ": OPENROUTER PROCESSING"
    client = openai.OpenAI(base_url=sandbox.url + "/openrouter/v1", api_key=KEY, max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="openai/gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "hello"}]
        )
    )
    usage = chunks[-1].usage
    expected = provider_cost(
        "openrouter", "openai/gpt-4o-mini", usage.prompt_tokens, usage.completion_tokens
    )
    assert usage.model_extra["cost"] == pytest.approx(float(expected))
    assert expected > 0


def test_openrouter_error_has_integer_code(sandbox):
    client = openai.OpenAI(
        base_url=sandbox.url + "/openrouter/v1", api_key="sk-or-revoked-1", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body["code"] == 401


@pytest.mark.asyncio
async def test_async_client_streams(sandbox):
    """The async SDK client works too (same server, other event loop)."""
    client = openai.AsyncOpenAI(base_url=sandbox.url + "/openai/v1", api_key=KEY, max_retries=0)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    await client.close()
    assert text.startswith("[sandbox reply from openai/gpt-4o-mini]")


def test_mistral_stream_usage_on_last_chunk_and_no_stream_options(sandbox):
    """Mistral: usage comes on the finishing chunk unasked; stream_options is a 422."""
    client = openai.OpenAI(base_url=sandbox.url + "/mistral/v1", api_key=KEY, max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="mistral-small-latest",
            stream=True,
            messages=[{"role": "user", "content": "hello"}],
        )
    )
    assert chunks[-1].choices[0].finish_reason == "stop"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert chunks[-1].usage.completion_tokens == count_tokens(text)
    assert all(ch.usage is None for ch in chunks[:-1])
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(
            model="mistral-small-latest",
            stream=True,
            messages=[{"role": "user", "content": "hello"}],
            stream_options={"include_usage": True},
        )
    assert info.value.code == "extra_forbidden"


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_blocked_fault_is_invalid_prompt(client, sandbox, stream):
    """The prompt-blocked fault on OpenAI: 400 invalid_prompt before the model runs, as
    OpenAI refuses a flagged prompt (tests/corpus/openai/error_400_invalid_prompt.json);
    the SDK raises BadRequestError with that code, for a stream too (nothing streamed)."""
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, stream=stream, extra_headers={"X-Sandbox-Fault": "prompt-blocked"})
    assert info.value.code == "invalid_prompt"
    assert info.value.type == "invalid_request_error"
    assert info.value.body["message"].startswith("Invalid prompt: your prompt was flagged")
    assert sandbox.stats["requests"] == 1


def test_prompt_blocked_fault_on_a_compatible_door_is_its_refusal(sandbox):
    """Groq has no invalid_prompt: the fault is answered as the door's own refusal (200)."""
    groq = openai.OpenAI(base_url=sandbox.url + "/groq/v1", api_key=KEY, max_retries=0)
    c = groq.chat.completions.create(
        model="llama-3.3-70b-versatile",
        messages=[{"role": "user", "content": PROMPT}],
        extra_headers={"X-Sandbox-Fault": "prompt-blocked"},
    )
    assert c.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stream", [False, True])
def test_max_completion_tokens_caps_reasoning_and_answer_together(client, stream):
    """A reasoning model's max_completion_tokens bounds reasoning and visible output
    together (OpenAI's API reference): a small cap is spent reasoning (content "",
    finish_reason length, completion_tokens == reasoning_tokens == the cap); a larger one
    leaves the answer what reasoning did not use. (The sandbox counted them apart until
    this session: completion_tokens could pass the cap the request set.)"""
    for cap in (20, 500):
        kw = {"model": "o3-mini", "max_completion_tokens": cap}
        if stream:
            chunks = list(
                client.chat.completions.create(
                    messages=[{"role": "user", "content": PROMPT}],
                    stream=True,
                    stream_options={"include_usage": True},
                    **kw,
                )
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = next(
                c.choices[0].finish_reason
                for c in chunks
                if c.choices and c.choices[0].finish_reason
            )
            usage = chunks[-1].usage
        else:
            c = client.chat.completions.create(messages=[{"role": "user", "content": PROMPT}], **kw)
            text, finish, usage = c.choices[0].message.content, c.choices[0].finish_reason, c.usage
        reasoning = usage.completion_tokens_details.reasoning_tokens
        assert usage.completion_tokens <= cap
        assert usage.completion_tokens == reasoning + count_tokens(text)
        if cap == 20:
            assert (text, finish, reasoning) == ("", "length", 20)
        else:
            assert text and reasoning > 0
