"""The Cencori gateway doors: the official cencori SDK (native) and openai SDK (/v1)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import cencori
import httpx2
import openai
import pytest

from cencori_nb.sandbox import SandboxServer
from cencori_nb.sandbox.cencori import route_model
from cencori_nb.sandbox.common import BadRequest
from cencori_nb.sandbox.replies import count_tokens
from cencori_nb.sandbox.wallet import provider_cost

# one client for the module: building one per call costs an SSL context each time
HTTP = httpx2.Client(verify=False, timeout=10)
KEY = "csk_sandbox_test_Ab12"
MESSAGES = [{"role": "user", "content": "Compare BYOK and managed keys"}]


def native(url: str, body: dict, headers: dict | None = None) -> httpx2.Response:
    return HTTP.post(
        url + "/api/ai/chat", json=body, headers={"CENCORI_API_KEY": KEY, **(headers or {})}
    )


def test_sdk_chat_and_wallet_debit(sandbox):
    """cencori.Cencori().ai.chat works; cost_usd = provider cost x 1.5, debited exactly."""
    client = cencori.Cencori(api_key=KEY, base_url=sandbox.url)
    r = client.ai.chat(messages=MESSAGES, model="gpt-4o-mini", max_tokens=500)
    assert r.provider == "openai" and r.model == "gpt-4o-mini"
    assert r.content.startswith(
        "[sandbox reply from openai/gpt-4o-mini via cencori] You asked: "
        "'Compare BYOK and managed keys'."
    )
    assert r.usage.prompt_tokens == count_tokens(MESSAGES[0]["content"])
    assert r.usage.completion_tokens == count_tokens(r.content)
    assert r.finish_reason == "stop"
    charge = provider_cost(
        "openai", "gpt-4o-mini", r.usage.prompt_tokens, r.usage.completion_tokens
    ) * Decimal("1.5")
    assert Decimal(str(r.cost_usd)) == charge > 0
    assert sandbox.balance == Decimal("25") - charge
    seen = sandbox.stats["recent"][-1]
    assert seen["headers"]["cencori_api_key"] == "…Ab12"
    assert seen["json"]["maxTokens"] == 500


def test_sdk_default_model_is_gemini_flash(sandbox):
    """No model in the body → gemini-2.5-flash on google."""
    r = native(sandbox.url, {"messages": MESSAGES})
    body = r.json()
    assert body["model"] == "gemini-2.5-flash" and body["provider"] == "google"
    assert r.headers["X-Cencori-Cache"] == "MISS" and r.headers["X-Cache"] == "MISS"
    assert r.headers["X-Request-Id"].startswith("req_")
    # X-RateLimit-* come only with a 429 (addGatewayHeaders gets the limits only there)
    assert not any(h.lower().startswith("x-ratelimit") for h in r.headers)
    assert body["choices"][0]["message"]["content"] == body["content"]


def test_sdk_stream(sandbox):
    """chat_stream yields deltas, then the finish chunk; usage/cost line and [DONE] follow."""
    client = cencori.Cencori(api_key=KEY, base_url=sandbox.url)
    chunks = list(client.ai.chat_stream(messages=MESSAGES, model="claude-haiku-4-5"))
    text = "".join(c.delta for c in chunks)
    assert text.startswith("[sandbox reply from anthropic/claude-haiku-4-5 via cencori]")
    # the SDK also yields the usage/cost line as an empty chunk, after the finish chunk
    assert chunks[-2].finish_reason == "stop" and chunks[-2].delta == ""
    with HTTP.stream(
        "POST",
        sandbox.url + "/api/ai/chat",
        headers={"CENCORI_API_KEY": KEY},
        json={"messages": MESSAGES, "model": "claude-haiku-4-5", "stream": True},
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    metrics = json.loads(lines[-2][6:])
    assert metrics["usage"]["completion_tokens"] == count_tokens(text)
    expected = provider_cost(
        "anthropic",
        "claude-haiku-4-5",
        metrics["usage"]["prompt_tokens"],
        metrics["usage"]["completion_tokens"],
    ) * Decimal("1.5")
    assert Decimal(str(metrics["cost_usd"])) == expected
    assert all("delta" in json.loads(line[6:]) for line in lines[:-2])
    assert sandbox.balance == Decimal("25") - 2 * expected


def test_max_tokens_spellings(sandbox):
    a = native(sandbox.url, {"messages": MESSAGES, "model": "gpt-4o-mini", "maxTokens": 3})
    b = native(sandbox.url, {"messages": MESSAGES, "model": "gpt-4o-mini", "max_tokens": 4})
    assert a.json()["usage"]["completion_tokens"] == 3 and a.json()["finish_reason"] == "length"
    assert b.json()["usage"]["completion_tokens"] == 4


def test_bearer_key_accepted_and_missing_or_bad_key_is_401(sandbox):
    ok = HTTP.post(
        sandbox.url + "/api/ai/chat",
        json={"messages": MESSAGES},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert ok.status_code == 200
    missing = HTTP.post(sandbox.url + "/api/ai/chat", json={"messages": MESSAGES})
    assert missing.status_code == 401 and missing.json()["code"] == "missing_api_key"
    for bad in ("sk-not-a-cencori-key", "csk_revoked_0000"):
        r = native(sandbox.url, {"messages": MESSAGES}, {"CENCORI_API_KEY": bad})
        assert r.status_code == 401
        # the gateway's middleware sends no message with a key error (gateway-middleware.ts)
        assert r.json() == {"error": "Invalid API key", "code": "invalid_api_key"}
    with pytest.raises(cencori.AuthenticationError):
        cencori.Cencori(api_key="csk_revoked_1", base_url=sandbox.url).ai.chat(messages=MESSAGES)


def test_credit_exhaustion_is_403_with_balance(sandbox):
    """An empty wallet answers 403 credit_balance_exhausted and charges nothing."""
    sandbox.set_balance("0")
    r = native(sandbox.url, {"messages": MESSAGES})
    assert r.status_code == 403
    body = r.json()
    assert body["code"] == "credit_balance_exhausted"
    # the real top_up_url is relative (gateway-middleware.ts); clients must make it absolute
    assert body["balance"] == 0 and body["top_up_url"] == "/billing"
    assert body["error"] == "Credit balance exhausted"
    with pytest.raises(cencori.CencoriError) as info:
        cencori.Cencori(api_key=KEY, base_url=sandbox.url).ai.chat(messages=MESSAGES)
    assert info.value.status_code == 403 and info.value.message == "Credit balance exhausted"
    assert sandbox.balance == 0


def test_wallet_never_goes_negative(sandbox):
    sandbox.set_balance("0.0000001")
    assert native(sandbox.url, {"messages": MESSAGES}).status_code == 200
    assert sandbox.balance == 0
    assert native(sandbox.url, {"messages": MESSAGES}).status_code == 403


def test_spend_cap_fault_is_402(sandbox):
    r = native(sandbox.url, {"messages": MESSAGES}, {"X-Sandbox-Fault": "402"})
    assert r.status_code == 402 and r.json()["code"] == "spend_cap_reached"
    assert set(r.json()["spend"]) == {"current", "cap"}
    assert r.json()["upgrade_url"] == "/billing"


def test_rate_limit_has_retry_after_and_retry_after_ms():
    with SandboxServer(rpm=1) as url:
        assert native(url, {"messages": MESSAGES}).status_code == 200
        r = native(url, {"messages": MESSAGES})
    assert r.status_code == 429
    body = r.json()
    assert body["code"] == "rate_limit_exceeded"
    assert body["retry_after_ms"] == int(r.headers["Retry-After"]) * 1000
    assert body["message"] == "1 requests per minute allowed. Try again shortly."
    assert r.headers["X-RateLimit-Remaining"] == "0"
    assert int(r.headers["X-RateLimit-Reset"]) > 1_700_000_000_000  # Unix ms


def test_fault_and_failed_requests_do_not_debit(sandbox):
    native(sandbox.url, {"messages": MESSAGES}, {"X-Sandbox-Fault": "500"})
    native(sandbox.url, {"messages": MESSAGES}, {"X-Sandbox-Fault": "malformed"})
    assert sandbox.balance == Decimal("25")


def test_unknown_and_unpriced_models(sandbox):
    """Engine failures are {error: <code>, message} with no code field (ai-chat-handler.ts);
    the router's "cannot determine a provider" is a plain ProviderError, hence 502."""
    r = native(sandbox.url, {"messages": MESSAGES, "model": "mystery-model"})
    assert r.status_code == 502 and set(r.json()) == {"error", "message"}
    assert r.json()["error"] == "provider_error" and "provider/model" in r.json()["message"]
    r = native(sandbox.url, {"messages": MESSAGES, "model": "qwen-max"})
    assert r.status_code == 503 and r.json()["error"] == "pricing_unavailable"
    assert "code" not in r.json()
    assert r.json()["message"].startswith("Pricing is not configured for qwen/qwen-max")
    r = native(sandbox.url, {"messages": MESSAGES, "model": "gpt-does-not-exist"})
    assert r.status_code == 404 and r.json()["error"] == "provider_model_not_found"


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", ("openai", "gpt-4o")),
        ("o1-mini", ("openai", "o1-mini")),
        ("claude-sonnet-4-5", ("anthropic", "claude-sonnet-4-5")),
        ("gemini-2.5-pro", ("google", "gemini-2.5-pro")),
        ("codestral-latest", ("mistral", "codestral-latest")),
        ("llama-3.3-70b-versatile", ("groq", "llama-3.3-70b-versatile")),
        ("grok-3-mini", ("xai", "grok-3-mini")),
        ("deepseek-chat", ("deepseek", "deepseek-chat")),
        # Cencori's router tests "includes('llama')" before ":free" (router.ts), so this
        # OpenRouter id goes to Groq there; the sandbox copies the real order
        (
            "meta-llama/llama-3.3-70b-instruct:free",
            ("groq", "meta-llama/llama-3.3-70b-instruct:free"),
        ),
        ("nvidia/nemotron-nano-9b-v2:free", ("openrouter", "nvidia/nemotron-nano-9b-v2:free")),
        ("openai/gpt-oss-20b", ("groq", "openai/gpt-oss-20b")),
        ("sonar-pro", ("perplexity", "sonar-pro")),
        ("openai/gpt-4o-mini", ("openai", "gpt-4o-mini")),
    ],
)
def test_route_model_prefix_rules(model, expected):
    assert route_model(model) == expected


def test_route_model_unknown():
    """o3-/o4- are not among Cencori's OpenAI prefixes (only gpt-, o1-, text-, davinci-)."""
    for model in ("unknownvendor/some-model", "o3-mini", "GPT-4o"):
        with pytest.raises(BadRequest) as info:
            route_model(model)
        assert info.value.status == 502 and info.value.code == "provider_error"


def test_openai_compatible_door_with_openai_sdk(sandbox):
    """/v1/chat/completions through the openai SDK, streaming with usage and cost_usd."""
    client = openai.OpenAI(base_url=sandbox.url + "/v1", api_key=KEY, max_retries=0)
    c = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert c.choices[0].message.content.startswith(
        "[sandbox reply from openai/gpt-4o-mini via cencori]"
    )
    assert c.model_extra["provider"] == "openai"
    cost = Decimal(str(c.model_extra["cost_usd"]))
    assert cost == provider_cost(
        "openai", "gpt-4o-mini", c.usage.prompt_tokens, c.usage.completion_tokens
    ) * Decimal("1.5")
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == c.usage.total_tokens
    assert sandbox.balance == Decimal("25") - 2 * cost
    assert "gpt-4o-mini" in [m.id for m in client.models.list()]


def test_openai_compatible_door_errors(sandbox):
    sandbox.set_balance(0)
    client = openai.OpenAI(base_url=sandbox.url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    # the middleware answers /v1 with the same flat body: no nested error for the SDK to read
    assert info.value.code is None and info.value.body == "Credit balance exhausted"
    assert info.value.response.json()["code"] == "credit_balance_exhausted"
    assert info.value.response.json()["top_up_url"] == "/billing"
    bad = openai.OpenAI(base_url=sandbox.url + "/v1", api_key="sk-openai-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth:
        bad.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert auth.value.response.json() == {"error": "Invalid API key", "code": "invalid_api_key"}
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"X-Sandbox-Fault": "429"}
        )
    assert limited.value.response.json()["retry_after_ms"] == 1000


def test_exact_cache_hit_is_free_and_labelled(sandbox):
    """The same non-streamed request within the hour: HIT, cost_usd 0, no debit."""
    body = {"messages": MESSAGES, "model": "gpt-4o-mini", "temperature": 0}
    first = native(sandbox.url, body)
    after_first = sandbox.balance
    assert first.headers["X-Cencori-Cache"] == "MISS" and after_first < Decimal("25")
    again = native(sandbox.url, body)
    assert again.headers["X-Cencori-Cache"] == "HIT" and again.headers["X-Cache"] == "HIT-EXACT"
    assert again.json()["cost_usd"] == 0 and again.json()["content"] == first.json()["content"]
    assert again.headers["X-Request-Id"] != first.headers["X-Request-Id"]
    assert sandbox.balance == after_first
    skipped = native(sandbox.url, body, {"X-Skip-Cache": "true"})
    assert "X-Cencori-Cache" not in skipped.headers and sandbox.balance < after_first
    # too warm to cache, a different prompt, or a stream: no cache at all / a MISS
    warm = native(sandbox.url, {**body, "temperature": 0.7})
    assert "X-Cencori-Cache" not in warm.headers
    other = native(sandbox.url, {**body, "messages": [{"role": "user", "content": "other"}]})
    assert other.headers["X-Cencori-Cache"] == "MISS"
    with HTTP.stream(
        "POST",
        sandbox.url + "/api/ai/chat",
        headers={"CENCORI_API_KEY": KEY},
        json={**body, "stream": True},
    ) as r:
        r.read()
    assert "X-Cencori-Cache" not in r.headers


def test_cache_can_be_turned_off_and_is_reset():
    with SandboxServer(gateway_cache=False) as url:
        body = {"messages": MESSAGES, "model": "gpt-4o-mini"}
        assert "X-Cencori-Cache" not in native(url, body).headers
    server = SandboxServer()
    url = server.start_in_thread()
    try:
        native(url, {"messages": MESSAGES})
        server.reset()
        assert native(url, {"messages": MESSAGES}).headers["X-Cencori-Cache"] == "MISS"
    finally:
        server.stop()


def test_image_to_a_model_without_vision_is_upgraded(sandbox):
    """chat-vision-router.ts: the answer comes from the vision model, with both headers.
    (A real 2×2 PNG: the sandbox now opens what it is sent, as a vision model must.)"""
    png = (
        "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQED"
        "asKb6QAAAABJRU5ErkJggg=="
    )
    image = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png}},
            ],
        }
    ]
    r = native(sandbox.url, {"messages": image, "model": "gpt-3.5-turbo"})
    assert r.status_code == 200
    assert r.headers["X-Model-Upgraded"] == "true"
    assert r.headers["X-Model-Original"] == "gpt-3.5-turbo"
    assert r.json()["model"] == "gpt-4o-mini"
    plain = native(sandbox.url, {"messages": image, "model": "gpt-4o"})
    assert "X-Model-Upgraded" not in plain.headers and plain.json()["model"] == "gpt-4o"


def test_v1_engine_errors_are_nested_and_middleware_flat(sandbox):
    r = HTTP.post(
        sandbox.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "qwen-max", "messages": MESSAGES},
    )
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "pricing_unavailable"
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = HTTP.post(
        sandbox.url + "/v1/chat/completions",
        headers={"Authorization": "Bearer csk_revoked_x"},
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
    )
    assert r.json() == {"error": "Invalid API key", "code": "invalid_api_key"}


def test_stream_error_fault_ends_with_the_gateway_error_line(sandbox):
    with HTTP.stream(
        "POST",
        sandbox.url + "/api/ai/chat",
        headers={"CENCORI_API_KEY": KEY, "X-Sandbox-Fault": "stream-error"},
        json={"messages": MESSAGES, "stream": True},
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.status_code == 200
    assert json.loads(lines[-1][6:])["error"].startswith("Provider stream failed")
    assert "data: [DONE]" not in lines and sandbox.balance == Decimal("25")


def test_exhausted_credits_through_the_client_name_the_absolute_billing_page(
    sandbox_env: Any,
) -> None:
    """The sandbox sends the real, relative ``/billing``; the one message that says how to
    pay shows Cencori's page, not "/billing"."""
    import cencori_nb
    from cencori_nb import errors, keys

    keys.set_cencori_key("csk_live_billing_" + "K" * 20 + "b1l1")
    sandbox_env.set_balance("0")
    with pytest.raises(errors.CreditsExhaustedError) as info:
        cencori_nb.chat("hello", model="gpt-4o-mini", route="managed")
    assert "https://cencori.com/billing" in str(info.value)
