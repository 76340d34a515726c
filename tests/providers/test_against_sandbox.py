"""Every adapter against the sandbox over real HTTP on loopback: non-stream and stream
answers parse, and the sandbox's injected faults map to the right errors.

The adapters stay pure; these tests do the I/O themselves with a plain ``httpx2.Client`` so
that they exercise the adapters alone (the client and transport have their own tests).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx2
import pytest

from cencori_nb import errors
from cencori_nb.catalog import PROVIDERS
from cencori_nb.keystore.secret import Secret
from cencori_nb.providers import ProviderResult, get_provider
from cencori_nb.providers.base import StreamParser
from cencori_nb.sandbox.server import SandboxServer
from cencori_nb.types import ChatRequest

MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5",
    "google": "gemini-2.5-flash",
    "cencori": "gpt-4o-mini",
    **{
        name: info.default_model
        for name, info in PROVIDERS.items()
        if info.wire == "openai-compatible"
    },
}
ALL = sorted(MODELS)


def key_for(name: str, canary: str) -> str:
    return ("csk_" + canary) if name == "cencori" else canary


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    srv = SandboxServer(latency_ms=0, seed=11)
    srv.start_in_thread()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def sbx(server: SandboxServer) -> SandboxServer:
    server.reset()
    server.set_balance(Decimal(25))
    return server


def send(
    server: SandboxServer, name: str, request: ChatRequest, key: str, *, fault: str | None = None
) -> ProviderResult:
    """One non-streaming call: build, send, parse or map the error and raise it."""
    adapter = get_provider(name)
    req = adapter.build_request(
        request,
        model=MODELS[name],
        api_key=Secret(key),
        base_url=server.url + adapter.sandbox_prefix,
    )
    if fault:
        req.headers["X-Sandbox-Fault"] = fault
    with httpx2.Client(timeout=10) as client:
        response = client.send(req)
    if response.status_code >= 400:
        raise adapter.map_error(response)
    return adapter.parse_response(response)


def stream(
    server: SandboxServer, name: str, request: ChatRequest, key: str, *, fault: str | None = None
) -> tuple[StreamParser, list[str], bool]:
    """One streaming call; returns the parser, the deltas and whether the connection broke."""
    adapter = get_provider(name)
    req = adapter.build_request(
        request,
        model=MODELS[name],
        api_key=Secret(key),
        base_url=server.url + adapter.sandbox_prefix,
    )
    if fault:
        req.headers["X-Sandbox-Fault"] = fault
    deltas: list[str] = []
    broken = False
    with httpx2.Client(timeout=10) as client:
        response = client.send(req, stream=True)
        try:
            if response.status_code >= 400:
                response.read()
                raise adapter.map_error(response)
            parser = adapter.stream_parser(response)
            try:
                for event in httpx2.EventSource(response):
                    delta = parser.feed(event)
                    if delta:
                        deltas.append(delta)
            except httpx2.TransportError:  # the transport maps this; here we only note it
                broken = True
        finally:
            response.close()
    return parser, deltas, broken


@pytest.mark.parametrize("name", ALL)
def test_non_stream_answer_parses_with_usage(sbx: SandboxServer, name: str, canary: str) -> None:
    prompt = f"Tell me about {name} adapters please"
    result = send(
        sbx,
        name,
        # room for Gemini 2.5's thinking, which maxOutputTokens caps with the answer
        ChatRequest.from_prompt(prompt, system="Be brief.", max_tokens=400),
        key_for(name, canary),
    )
    assert "sandbox" in result.text.lower()
    assert result.model
    assert result.usage is not None
    assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0
    assert result.finish_reason
    if name == "cencori":
        assert result.gateway_cost_usd is not None and result.gateway_cost_usd > 0
        assert result.served_by == "openai"


# Real Mistral sends usage on the last stream chunk by default and answers 422
# (extra_forbidden) to stream_options, so the adapter does not ask; the sandbox does the same.
STREAM_CASES = ALL


@pytest.mark.parametrize("name", STREAM_CASES)
def test_stream_matches_the_non_stream_answer(sbx: SandboxServer, name: str, canary: str) -> None:
    """Same prompt and seed: the streamed text equals the whole reply; usage at the end."""
    request = ChatRequest.from_prompt("Stream a short answer about pandas", max_tokens=300)
    whole = send(sbx, name, request, key_for(name, canary))
    parser, deltas, broken = stream(
        sbx,
        name,
        ChatRequest.from_prompt("Stream a short answer about pandas", max_tokens=300, stream=True),
        key_for(name, canary),
    )
    assert not broken
    assert parser.done is True
    result = parser.result()
    assert len(deltas) > 1
    assert result.text == "".join(deltas) == whole.text
    assert result.usage == whole.usage
    if name == "cencori":
        # Cencori's native stream names no model (the client falls back to the one asked)
        assert result.gateway_cost_usd == whole.gateway_cost_usd
    else:
        assert result.model == whole.model


def recorded(server: SandboxServer, count: int = 1) -> list[dict[str, Any]]:
    """The server's ``recent`` entries once it has recorded ``count`` (it records just after
    the reply is written, so the client can be a moment ahead)."""
    for _ in range(200):
        recent = server.stats["recent"]
        if len(recent) >= count:
            return list(recent)
        time.sleep(0.01)
    return list(server.stats["recent"])


# The header each wire format authenticates with (the server saw it, masked in its stats).
AUTH_HEADER = {"anthropic": "x-api-key", "google": "x-goog-api-key", "cencori": "cencori_api_key"}


@pytest.mark.parametrize("name", ALL)
def test_the_server_received_the_key_in_its_header_only(
    sbx: SandboxServer, name: str, canary: str
) -> None:
    """Right route, right auth header (hint of our key), key nowhere in path/query/body."""
    send(sbx, name, ChatRequest.from_prompt("hi", max_tokens=5), key_for(name, canary))
    (seen,) = recorded(sbx)
    assert seen["status"] == "200"
    header = AUTH_HEADER.get(name, "authorization")
    assert seen["headers"][header].endswith(canary[-4:])
    assert seen["key"].endswith(canary[-4:])
    assert canary[-4:] not in seen["path"] and not seen["query"].get("key")
    assert canary not in repr(seen["json"])
    if name == "anthropic":
        assert seen["headers"]["anthropic-version"] == "2023-06-01"
    if name == "google":
        assert seen["path"].startswith("/google/v1beta/models/gemini-2.5-flash:")


@pytest.mark.parametrize("name", ALL)
def test_revoked_key_is_authentication_error(sbx: SandboxServer, name: str, canary: str) -> None:
    key = key_for(name, "revoked-" + canary)
    with pytest.raises(errors.AuthenticationError) as info:
        send(sbx, name, ChatRequest.from_prompt("hi"), key)
    err = info.value
    # Gemini (INVALID_ARGUMENT / API_KEY_INVALID) and xAI ("Incorrect API key provided")
    # say "bad key" with a 400, the others with a 401 (tests/corpus has each)
    assert err.provider == name and err.status_code == (400 if name in ("google", "xai") else 401)
    assert f"keys set {name}" in str(err)
    assert canary not in str(err) and canary not in repr(err)


@pytest.mark.parametrize("name", ALL)
def test_rate_limit_fault_carries_retry_after(sbx: SandboxServer, name: str, canary: str) -> None:
    with pytest.raises(errors.RateLimitError) as info:
        send(sbx, name, ChatRequest.from_prompt("hi"), key_for(name, canary), fault="429")
    assert info.value.status_code == 429
    assert info.value.retry_after is not None and info.value.retry_after >= 0


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("fault", ["500", "503"])
def test_server_faults_are_unavailable(
    sbx: SandboxServer, name: str, fault: str, canary: str
) -> None:
    with pytest.raises(errors.ProviderUnavailableError) as info:
        send(sbx, name, ChatRequest.from_prompt("hi"), key_for(name, canary), fault=fault)
    # Anthropic has no 503: its overload is 529 overloaded_error
    expected = 529 if (name, fault) == ("anthropic", "503") else int(fault)
    assert info.value.status_code == expected
    assert info.value.retryable


@pytest.mark.parametrize("name", ALL)
def test_malformed_body_is_bad_response(sbx: SandboxServer, name: str, canary: str) -> None:
    with pytest.raises(errors.BadResponseError):
        send(sbx, name, ChatRequest.from_prompt("hi"), key_for(name, canary), fault="malformed")


@pytest.mark.parametrize("name", ALL)
def test_malformed_stream_event_is_bad_response(sbx: SandboxServer, name: str, canary: str) -> None:
    with pytest.raises(errors.BadResponseError):
        stream(
            sbx,
            name,
            ChatRequest.from_prompt("a longer prompt to stream", stream=True),
            key_for(name, canary),
            fault="malformed",
        )


@pytest.mark.parametrize("name", ALL)
def test_truncated_stream_is_not_done_and_has_no_usage(
    sbx: SandboxServer, name: str, canary: str
) -> None:
    parser, deltas, _broken = stream(
        sbx,
        name,
        ChatRequest.from_prompt("Please write a few sentences about llamas", stream=True),
        key_for(name, canary),
        fault="truncate",
    )
    assert parser.done is False
    assert parser.result().usage is None
    assert parser.result().text == "".join(deltas)


def test_cencori_empty_wallet_is_credits_exhausted(sbx: SandboxServer, canary: str) -> None:
    sbx.set_balance(Decimal(0))
    with pytest.raises(errors.CreditsExhaustedError) as info:
        send(sbx, "cencori", ChatRequest.from_prompt("hi"), "csk_" + canary)
    err = info.value
    assert err.status_code == 403 and err.code == "credit_balance_exhausted"
    assert err.balance is not None and err.balance <= 0
    assert err.top_up_url
    assert "wallet is empty" in str(err)


def test_cencori_spend_cap_fault(sbx: SandboxServer, canary: str) -> None:
    with pytest.raises(errors.SpendCapReachedError) as info:
        send(sbx, "cencori", ChatRequest.from_prompt("hi"), "csk_" + canary, fault="402")
    assert info.value.status_code == 402


def test_cencori_unpriced_model_is_pricing_error(sbx: SandboxServer, canary: str) -> None:
    """A model the gateway can route but not price fails closed: 503 pricing_unavailable."""
    adapter = get_provider("cencori")
    req = adapter.build_request(
        ChatRequest.from_prompt("hi"),
        model="mistral-tiny-unpriced",
        api_key=Secret("csk_" + canary),
        base_url=sbx.url,
    )
    with httpx2.Client(timeout=10) as client:
        response = client.send(req)
    err = adapter.map_error(response)
    assert type(err) is errors.PricingError
    assert err.status_code == 503 and err.code == "pricing_unavailable"
    assert "BYOK" in str(err)


def test_cencori_unknown_model_is_invalid_request(sbx: SandboxServer, canary: str) -> None:
    adapter = get_provider("cencori")
    req = adapter.build_request(
        ChatRequest.from_prompt("hi"),
        model="nosuchmodel",
        api_key=Secret("csk_" + canary),
        base_url=sbx.url,
    )
    with httpx2.Client(timeout=10) as client:
        err = adapter.map_error(client.send(req))
    # Cencori's router cannot place it and throws a plain ProviderError: 502 provider_error
    assert err.status_code == 502 and err.code == "provider_error"
    assert "nosuchmodel" in str(err)
