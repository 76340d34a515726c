"""The Cencori gateway adapter: headers, cost and served-by, both error shapes, 402s."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

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
    run_stream,
    sse,
)

# --- Cencori gateway ----------------------------------------------------------------------------

CENCORI_RESPONSE = {
    "id": "chatcmpl-cen-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    "content": "Hi!",
    "provider": "openai",
    "cost_usd": 0.0000033,
    "finish_reason": "stop",
}


def test_cencori_request_header_and_body(canary: str) -> None:
    adapter = get_provider("cencori")
    key = "csk_" + canary
    request = adapter.build_request(
        chat(system="S", temperature=0.1, max_tokens=99),
        model="gpt-4o-mini",
        api_key=Secret(key),
        base_url=BASE + "/",
    )
    _, rec = exchange(request, body=CENCORI_RESPONSE)
    assert str(rec.last.url) == BASE + "/api/ai/chat"
    assert rec.last.headers["CENCORI_API_KEY"] == key
    assert rec.body == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Say hello"}],
        "temperature": 0.1,
        "maxTokens": 99,
    }


def test_cencori_parse_response_cost_and_served_by() -> None:
    adapter = get_provider("cencori")
    response, _ = exchange(
        adapter.build_request(chat(), model="gpt-4o-mini", api_key=Secret("csk_x"), base_url=BASE),
        body=CENCORI_RESPONSE,
        headers={"X-Request-Id": "cen-req-1"},
    )
    result = adapter.parse_response(response)
    assert result.text == "Hi!"
    assert result.model == "gpt-4o-mini-2024-07-18"
    assert result.served_by == "openai"
    assert result.gateway_cost_usd == Decimal("0.0000033")
    assert isinstance(result.gateway_cost_usd, Decimal)
    assert result.finish_reason == "stop"
    assert result.request_id == "cen-req-1"
    assert result.usage == Usage(10, 5, 0, 0, 0)


def test_cencori_missing_content_is_named() -> None:
    adapter = get_provider("cencori")
    response, _ = exchange(
        adapter.build_request(chat(), model="gpt-4o-mini", api_key=Secret("csk_x"), base_url=BASE),
        body={"model": "gpt-4o-mini", "provider": "openai"},
    )
    with pytest.raises(errors.BadResponseError, match="`content`"):
        adapter.parse_response(response)


def test_cencori_stream_with_terminal_usage_chunk() -> None:
    adapter = get_provider("cencori")
    request = adapter.build_request(
        chat(stream=True), model="gpt-4o-mini", api_key=Secret("csk_x"), base_url=BASE
    )
    payload = sse(
        data({"delta": "Hel"}),
        data({"delta": "lo"}),
        data({"delta": "", "finish_reason": "stop"}),
        data(
            {
                "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
                "cost_usd": 0.0000021,
            }
        ),
        data("[DONE]"),
    )
    parser, deltas, rec = run_stream(adapter, request, payload)
    assert rec.body["stream"] is True
    assert deltas == ["Hel", "lo"]
    assert parser.done
    result = parser.result()
    assert result.finish_reason == "stop"
    assert result.usage == Usage(10, 2, 0, 0, 0)
    assert result.gateway_cost_usd == Decimal("0.0000021")


def test_cencori_stream_block_is_permission_denied() -> None:
    adapter = get_provider("cencori")
    request = adapter.build_request(
        chat(stream=True), model="gpt-4o-mini", api_key=Secret("csk_x"), base_url=BASE
    )
    with pytest.raises(errors.PermissionDeniedError, match="Response blocked"):
        run_stream(
            adapter, request, sse(data({"delta": "Hel"}), data({"error": "Response blocked"}))
        )


def test_cencori_stream_cut_before_usage() -> None:
    adapter = get_provider("cencori")
    request = adapter.build_request(
        chat(stream=True), model="gpt-4o-mini", api_key=Secret("csk_x"), base_url=BASE
    )
    parser, deltas, _ = run_stream(adapter, request, sse(data({"delta": "Hel"})))
    assert deltas == ["Hel"] and parser.done is False
    assert parser.result().usage is None and parser.result().gateway_cost_usd is None


def test_cencori_credit_balance_exhausted(canary: str) -> None:
    body = {
        "error": "Insufficient credits",
        "code": "credit_balance_exhausted",
        "message": "Your organization's credit balance is exhausted.",
        "balance": 0,
        "top_up_url": "https://cencori.com/dashboard/organizations/acme/billing",
    }
    err = map_status(
        get_provider("cencori"), 403, body, key="csk_" + canary, headers={"X-Request-Id": "cen-9"}
    )
    assert type(err) is errors.CreditsExhaustedError
    assert err.code == "credit_balance_exhausted"
    assert err.status_code == 403 and err.request_id == "cen-9"
    assert err.balance == Decimal(0)
    assert err.top_up_url == "https://cencori.com/dashboard/organizations/acme/billing"
    assert "wallet is empty" in str(err)
    assert "Top up at https://cencori.com/dashboard/organizations/acme/billing" in str(err)
    assert "BYOK" in str(err)
    assert_no_leak(err, canary)


def test_cencori_spend_cap_and_bare_402() -> None:
    body = {
        "error": "Spend cap reached",
        "code": "spend_cap_reached",
        "message": "Project spend cap reached.",
        "spend": {"current": 50.01, "cap": 50},
    }
    err = map_status(get_provider("cencori"), 402, body)
    assert type(err) is errors.SpendCapReachedError
    assert err.spend_current == Decimal("50.01") and err.spend_cap == Decimal(50)
    assert "$50.01 of $50.00" in str(err)
    bare = map_status(get_provider("cencori"), 402, {"error": "Payment required"})
    assert type(bare) is errors.SpendCapReachedError


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (401, "invalid_api_key", errors.AuthenticationError),
        (401, "missing_api_key", errors.AuthenticationError),
        (401, "provider_auth_error", errors.AuthenticationError),
        (429, "provider_rate_limited", errors.RateLimitError),
        (400, "provider_invalid_request", errors.InvalidRequestError),
        (404, "provider_model_not_found", errors.InvalidRequestError),
        (503, "pricing_unavailable", errors.PricingError),
        (403, "security_violation", errors.PermissionDeniedError),
        (503, "provider_unavailable", errors.ProviderUnavailableError),
        (502, "provider_error", errors.ProviderUnavailableError),
        (500, None, errors.ProviderUnavailableError),
    ],
)
def test_cencori_flat_error_codes(status: int, code: str | None, cls: type, canary: str) -> None:
    body: dict[str, Any] = {"error": "Something", "message": f"{code} happened"}
    if code:
        body["code"] = code
    err = map_status(get_provider("cencori"), status, body, key="csk_" + canary)
    assert type(err) is cls
    assert err.provider == "cencori" and err.status_code == status
    if code:
        assert err.code == code
    assert err.hint
    assert_no_leak(err, canary)


def test_cencori_invalid_key_message_names_the_cencori_key(canary: str) -> None:
    err = map_status(
        get_provider("cencori"),
        401,
        {"error": "Invalid API key", "code": "invalid_api_key"},
        key="csk_" + canary,
    )
    assert f"The Cencori key …{canary[-4:]} was rejected (401)." in str(err)
    assert "`cencori-nb keys set cencori`" in str(err)


def test_cencori_rate_limit_retry_after_header_or_body() -> None:
    body = {"error": "Rate limit exceeded", "code": "rate_limit_exceeded", "retry_after_ms": 2500}
    err = map_status(get_provider("cencori"), 429, body)
    assert isinstance(err, errors.RateLimitError) and err.retry_after == 2.5
    err = map_status(get_provider("cencori"), 429, body, headers={"Retry-After": "4"})
    assert err.retry_after == 4.0


def test_cencori_safety_400_with_reasons_is_permission_denied() -> None:
    err = map_status(
        get_provider("cencori"), 400, {"error": "Content safety violation", "reasons": ["pii"]}
    )
    assert isinstance(err, errors.PermissionDeniedError)
