"""The official anthropic SDK (2.x), unchanged, against the sandbox's Messages door."""

from __future__ import annotations

import anthropic
import httpx2
import pytest

from cencori_nb.sandbox.replies import count_tokens

# one client for the module: building one per call costs an SSL context each time
HTTP = httpx2.Client(verify=False, timeout=10)
KEY = "sk-ant-sandboxtest-Qx4F"
PROMPT = "Explain BYOK in one paragraph"


@pytest.fixture
def client(sandbox) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sandbox.url + "/anthropic", api_key=KEY, max_retries=0)


def create(client: anthropic.Anthropic, **kw):
    return client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=kw.pop("max_tokens", 200),
        messages=[{"role": "user", "content": PROMPT}],
        **kw,
    )


def test_non_stream_message(client, sandbox):
    """A message with one text block, end_turn, and usage by the sandbox rule."""
    m = create(client, system="You are terse.")
    # Anthropic answers an alias with its dated id
    assert (
        m.type == "message" and m.role == "assistant" and m.model == ("claude-haiku-4-5-20251001")
    )
    text = m.content[0].text
    assert text.startswith(
        f"[sandbox reply from anthropic/claude-haiku-4-5] You asked: '{PROMPT}'."
    )
    assert m.stop_reason == "end_turn"
    assert m.usage.input_tokens == count_tokens(PROMPT) + count_tokens("You are terse.")
    assert m.usage.output_tokens == count_tokens(text)
    assert m.usage.cache_read_input_tokens == 0
    seen = sandbox.stats["recent"][-1]
    assert seen["headers"]["authorization"] == "Bearer …Qx4F"  # SDK 2.x sends Bearer
    assert seen["headers"]["anthropic-version"] == "2026-10-21"


def test_stream_text_and_final_usage(client):
    """messages.stream: text deltas join to the reply; the final message has usage."""
    with client.messages.stream(
        model="claude-haiku-4-5", max_tokens=200, messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == create(client).content[0].text
    assert final.content[0].text == text
    assert final.usage.output_tokens == count_tokens(text)
    assert final.usage.input_tokens == count_tokens(PROMPT)
    assert final.stop_reason == "end_turn"


def test_raw_event_sequence(sandbox):
    """Every event has its event: line, in the documented order, ping included."""
    with HTTP.stream(
        "POST",
        sandbox.url + "/anthropic/v1/messages",
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        json={
            "model": "claude-haiku-4-5",
            "max_tokens": 3,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
    ) as r:
        events = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
        assert r.headers["request-id"].startswith("req_")
    assert events == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_max_tokens_stop_reason(client):
    m = create(client, max_tokens=4)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 4


def test_x_api_key_header_is_accepted(sandbox):
    r = HTTP.post(
        sandbox.url + "/anthropic/v1/messages",
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        json={
            "model": "claude-haiku-4-5",
            "max_tokens": 10,
            "temperature": 0.2,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == 10


def test_sampling_params_refused_under_2026_10_21(sandbox):
    """As the real API: temperature is a 400 with the 2026-10-21 version header."""
    r = HTTP.post(
        sandbox.url + "/anthropic/v1/messages",
        headers={"x-api-key": KEY, "anthropic-version": "2026-10-21"},
        json={
            "model": "claude-haiku-4-5",
            "max_tokens": 10,
            "temperature": 0.2,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "temperature" in r.json()["error"]["message"]


def test_missing_version_or_max_tokens_is_400(sandbox):
    r = HTTP.post(
        sandbox.url + "/anthropic/v1/messages",
        headers={"x-api-key": KEY},
        json={
            "model": "claude-haiku-4-5",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert r.status_code == 400 and "anthropic-version" in r.json()["error"]["message"]
    r = HTTP.post(
        sandbox.url + "/anthropic/v1/messages",
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        json={"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]


def test_revoked_key_is_authentication_error(sandbox):
    bad = anthropic.Anthropic(
        base_url=sandbox.url + "/anthropic", api_key="sk-ant-revoked-9999", max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError) as info:
        create(bad)
    assert info.value.status_code == 401
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "authentication_error"
    assert info.value.request_id and info.value.request_id.startswith("req_")


def test_rate_limit_fault(client):
    with pytest.raises(anthropic.RateLimitError) as info:
        create(client, extra_headers={"X-Sandbox-Fault": "429"})
    headers = info.value.response.headers
    assert headers["retry-after"] == "1"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert info.value.body["error"]["type"] == "rate_limit_error"


def test_server_fault_maps_to_internal_server_error(client):
    with pytest.raises(anthropic.InternalServerError):
        create(client, extra_headers={"X-Sandbox-Fault": "500"})


def test_stream_truncate_fault_has_no_message_stop(client):
    """The connection drops mid-stream: some text arrived, then the transport error."""
    received: list[str] = []
    with pytest.raises(httpx2.RemoteProtocolError):
        with client.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=200,
            messages=[{"role": "user", "content": PROMPT}],
            extra_headers={"X-Sandbox-Fault": "truncate"},
        ) as stream:
            for text in stream.text_stream:
                received.append(text)
    assert received and "".join(received).startswith("[sandbox reply")


def test_overload_is_529_with_should_retry(client):
    """Anthropic's overload is 529 overloaded_error with x-should-retry: true (no 503)."""
    for fault in ("529", "503"):
        with pytest.raises(anthropic.APIStatusError) as info:
            create(client, extra_headers={"X-Sandbox-Fault": fault})
        assert info.value.status_code == 529
        assert info.value.response.headers["x-should-retry"] == "true"
        assert info.value.body["error"]["type"] == "overloaded_error"


def test_overload_can_arrive_after_a_200_as_an_error_event(client):
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=200,
            messages=[{"role": "user", "content": PROMPT}],
            extra_headers={"X-Sandbox-Fault": "stream-error"},
        ) as s:
            for _ in s.text_stream:
                pass
    assert "overloaded_error" in str(info.value.body) or "Overloaded" in str(info.value)


def test_unknown_model_and_over_long_prompt(client):
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(
            model="claude-imaginary-9", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body["error"]["message"].startswith("model: claude-imaginary-9")
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=10,
            messages=[{"role": "user", "content": "word " * 200_001}],
        )
    assert info.value.body["error"]["message"].startswith(
        "prompt is too long: 200001 tokens > 200000 maximum"
    )


def test_an_account_without_credit_is_a_400_as_the_api_answers_it(client):
    """The 402 fault (no credit): Anthropic answers a 400 invalid_request_error 'Your credit
    balance is too low…' (tests/corpus/anthropic/error_400_credit_balance_too_low.json),
    which the SDK raises as BadRequestError; not a 402 billing_error."""
    with pytest.raises(anthropic.BadRequestError) as info:
        create(client, extra_headers={"X-Sandbox-Fault": "402"})
    assert info.value.status_code == 400
    body = info.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith(
        "Your credit balance is too low to access the Anthropic API."
    )
