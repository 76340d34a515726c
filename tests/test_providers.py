"""Provider adapters: the exact request each builds, parsing of real-shaped bodies and SSE
sequences, and every error body mapped to the right class without leaking the key.

Requests go through ``httpx2.Client(transport=MockTransport(handler))`` so the assertions are
on what a server would have received, and responses come back as real ``httpx2.Response``s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

import httpx2
import pytest

from cencori_nb import errors, transport
from cencori_nb.catalog import PROVIDERS
from cencori_nb.keystore.secret import Secret
from cencori_nb.providers import _common, get_provider, load_builtin
from cencori_nb.providers.base import _REGISTRY, Provider, StreamParser
from cencori_nb.types import ChatRequest, Message, Usage

BASE = "http://upstream.test"

# --- helpers ---------------------------------------------------------------------------------


class Recorder:
    """A MockTransport handler that records each request and answers with ``reply``."""

    def __init__(self, reply: Callable[[httpx2.Request], httpx2.Response]) -> None:
        self.reply = reply
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        request.read()
        self.requests.append(request)
        return self.reply(request)

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(self.requests[-1].content)

    @property
    def last(self) -> httpx2.Request:
        return self.requests[-1]


def exchange(
    request: httpx2.Request,
    *,
    status: int = 200,
    body: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[httpx2.Response, Recorder]:
    """Send ``request`` through a MockTransport that answers with the given response."""
    if content is None:
        content = b"" if body is None else json.dumps(body).encode()
    hdrs = {"content-type": "application/json", **(headers or {})}
    rec = Recorder(lambda _r: httpx2.Response(status, headers=hdrs, content=content))
    with httpx2.Client(transport=httpx2.MockTransport(rec)) as client:
        response = client.send(request)
        response.read()
    return response, rec


def sse(*frames: str) -> bytes:
    """Server-sent events from raw frames (each frame already has its ``data:``/``event:``)."""
    return "".join(f + "\n\n" for f in frames).encode()


def data(obj: Any) -> str:
    return "data: " + (obj if isinstance(obj, str) else json.dumps(obj))


def named(kind: str, obj: Any) -> str:
    return f"event: {kind}\n" + data(obj)


def run_stream(
    provider: Provider, request: httpx2.Request, payload: bytes
) -> tuple[StreamParser, list[str], Recorder]:
    """Stream ``payload`` as a ``text/event-stream`` reply; feed every event to the parser."""
    rec = Recorder(
        lambda _r: httpx2.Response(
            200,
            headers={
                "content-type": "text/event-stream",
                "x-request-id": "req_stream_1",
                "request-id": "req_stream_1",
            },
            content=payload,
        )
    )
    deltas: list[str] = []
    with httpx2.Client(transport=httpx2.MockTransport(rec)) as client:
        response = client.send(request, stream=True)
        parser = provider.stream_parser(response)
        try:
            for event in httpx2.EventSource(response):
                delta = parser.feed(event)
                if delta:
                    deltas.append(delta)
        finally:
            response.close()
    return parser, deltas, rec


def chat(prompt: str = "Say hello", **kw: Any) -> ChatRequest:
    return ChatRequest.from_prompt(prompt, **kw)


def assert_no_leak(err: BaseException, *secrets: str) -> None:
    """No secret (nor its first 12 characters) in the message, the repr or any attribute."""
    texts = [str(err), repr(err), repr(err.args)]
    texts += [repr(v) for v in vars(err).values()]
    for secret in secrets:
        for text in texts:
            assert secret not in text
            assert secret[:12] not in text


def map_status(
    provider: Provider,
    status: int,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    key: str = "sk-test-key-0000aaaa",
    content: bytes | None = None,
) -> errors.CencoriError:
    """The error ``provider.map_error`` makes of a real error response to its own request."""
    request = provider.build_request(chat(), model="m-1", api_key=Secret(key), base_url=BASE)
    response, _ = exchange(request, status=status, body=body, headers=headers, content=content)
    return provider.map_error(response)


@pytest.fixture(autouse=True)
def _builtins() -> None:
    load_builtin()


# --- registry -------------------------------------------------------------------------------


def test_every_catalog_provider_and_the_gateway_have_an_adapter() -> None:
    """load_builtin registers one adapter per catalog provider, plus cencori."""
    assert set(_REGISTRY) == set(PROVIDERS) | {"cencori"}
    for name, adapter in _REGISTRY.items():
        assert adapter.name == name
        assert isinstance(adapter, Provider)


@pytest.mark.parametrize(
    ("name", "prefix", "base"),
    [
        ("openai", "/openai/v1", "https://api.openai.com/v1"),
        ("anthropic", "/anthropic", "https://api.anthropic.com"),
        ("google", "/google", "https://generativelanguage.googleapis.com"),
        ("mistral", "/mistral/v1", "https://api.mistral.ai/v1"),
        ("groq", "/groq/v1", "https://api.groq.com/openai/v1"),
        ("openrouter", "/openrouter/v1", "https://openrouter.ai/api/v1"),
        ("local", "/local/v1", "http://127.0.0.1:11434/v1"),
        ("cencori", "", "https://cencori.com"),
    ],
)
def test_sandbox_prefix_and_default_base_url(name: str, prefix: str, base: str) -> None:
    """Each adapter says where it lives under the sandbox and on the real internet."""
    adapter = get_provider(name)
    assert adapter.sandbox_prefix == prefix
    assert adapter.default_base_url == base


def test_unknown_provider_is_a_clear_error() -> None:
    with pytest.raises(errors.UnknownProviderError):
        get_provider("nosuch")


# --- shared helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.InvalidRequestError),
        (404, errors.InvalidRequestError),
        (422, errors.InvalidRequestError),
        (401, errors.AuthenticationError),
        (403, errors.PermissionDeniedError),
        (408, errors.ProviderTimeoutError),
        (409, errors.ProviderUnavailableError),
        (429, errors.RateLimitError),
        (500, errors.ProviderUnavailableError),
        (503, errors.ProviderUnavailableError),
        (529, errors.ProviderUnavailableError),
        (418, errors.InvalidRequestError),
    ],
)
def test_error_class_for_status(status: int, cls: type) -> None:
    """The one status table (409 is a conflict the SDKs retry, so it is 'unavailable')."""
    assert _common.error_class(status) is cls
    assert transport.error_class(status) is cls


@pytest.mark.parametrize(
    ("status", "codes", "cls"),
    [
        (
            400,
            ("API_KEY_INVALID", "INVALID_ARGUMENT"),
            errors.AuthenticationError,
        ),  # Google bad key
        (400, ("INVALID_ARGUMENT",), errors.InvalidRequestError),
        (500, ("overloaded_error",), errors.ProviderUnavailableError),
        (401, (None, "invalid_request_error"), errors.AuthenticationError),  # status beats broad
        (None, ("invalid_request_error",), errors.InvalidRequestError),  # in-stream: type decides
        (None, (None,), errors.ProviderUnavailableError),
        (503, ("pricing_unavailable",), errors.PricingError),
        (401, ("provider_auth_error",), errors.AuthenticationError),
        (403, ("credit_balance_exhausted",), errors.CreditsExhaustedError),
        (429, ("insufficient_quota",), errors.RateLimitError),
    ],
)
def test_error_class_codes(status: int | None, codes: tuple[str | None, ...], cls: type) -> None:
    """A precise code beats the status; a broad one only decides without a status."""
    assert transport.error_class(status, *codes) is cls


def test_retry_after_seconds_ms_and_http_date() -> None:
    """retry-after-ms wins; Retry-After is seconds or an HTTP date relative to now."""
    now = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
    h = httpx2.Headers
    parse = transport.retry_after
    assert parse(h({"retry-after": "7"})) == 7.0
    assert parse(h({"retry-after": "1.5"})) == 1.5
    assert parse(h({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse(h({"retry-after": date}), now=now.timestamp()) == 30.0
    past = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert parse(h({"retry-after": past}), now=now.timestamp()) == 0.0
    assert parse(h({"retry-after": "soon"})) is None
    assert parse(h({"retry-after": "nan"})) is None
    assert parse(h({"retry-after-ms": "-5"})) == 0.0
    assert parse(h({})) is None


@pytest.mark.parametrize(
    ("delay", "seconds"),
    [
        ("34s", 34.0),
        ("0.500s", 0.5),
        ("45.837906927s", 45.837906927),
        (12, 12.0),
        ("later", None),
        (None, None),
        ("1m30s", None),
    ],
)
def test_retry_after_reads_gemini_retry_info(delay: object, seconds: float | None) -> None:
    """google.rpc.RetryInfo.retryDelay is a protobuf duration (decimal seconds + 's')."""
    body = {
        "error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}],
        }
    }
    assert transport.retry_after(httpx2.Headers(), body) == seconds


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-" + "A1b2" * 12,
        "sk-ant-api03-" + "Zz9_" * 10,
        "AIzaSyD" + "x" * 32,
        "csk_live_" + "q" * 30,
        "gsk_" + "M" * 40,
        "sk-or-v1-" + "f" * 60,
        "sk-proj-**********************************abcd",
        "Bearer abc.def.ghi",
        "x" * 40,
    ],
)
def test_scrub_removes_key_shaped_substrings(secret: str) -> None:
    out = _common.scrub(f"Incorrect API key provided: {secret}. See the docs.")
    assert secret not in out
    assert "[redacted]" in out
    assert out.startswith("Incorrect API key provided:")


def test_scrub_keeps_ordinary_text() -> None:
    text = "The model `gpt-4o-mini` does not exist or you do not have access to it (task-42)."
    assert _common.scrub(text) == text


def test_extra_params_pass_through_but_cannot_replace_the_model() -> None:
    """ChatRequest.extra reaches the body; model/messages/stream through extra is an error."""
    adapter = get_provider("openai")
    req = adapter.build_request(
        chat(extra={"seed": 7, "top_p": 0.5}),
        model="gpt-4o-mini",
        api_key=Secret("sk-x"),
        base_url=BASE,
    )
    body = json.loads(req.content)
    assert body["seed"] == 7 and body["top_p"] == 0.5
    with pytest.raises(errors.ConfigurationError, match="'stream'"):
        adapter.build_request(
            chat(extra={"stream": True}), model="gpt-4o-mini", api_key=Secret("sk-x"), base_url=BASE
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


def _openai_chunk(
    content: str | None = None,
    *,
    finish: str | None = None,
    usage: dict[str, Any] | None = None,
    choices: bool = True,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [],
        "usage": usage,
    }
    if choices:
        delta = {} if content is None else {"content": content}
        chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return chunk


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
        data(_openai_chunk("")),
        data(_openai_chunk("Hel")),
        data(_openai_chunk("lo")),
        data(_openai_chunk(finish="stop")),
        data(_openai_chunk(usage=OPENAI_STREAM_USAGE, choices=False)),
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


def test_openai_truncated_stream_is_not_done_and_has_no_usage() -> None:
    """A connection cut before the usage chunk: done False, usage None, text kept."""
    adapter = get_provider("openai")
    request = adapter.build_request(
        chat(stream=True), model="gpt-4o-mini", api_key=Secret("sk-x"), base_url=BASE
    )
    payload = sse(data(_openai_chunk("Hel")), data(_openai_chunk("lo"))) + b'data: {"id": "ch'
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
        run_stream(adapter, request, sse(data(_openai_chunk("a")), "data: {not json"))


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
        data(_openai_chunk("Hi")),
        data(_openai_chunk(" you", finish="stop", usage=usage)),
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
        run_stream(adapter, request, sse(data(_openai_chunk("Hi")), data(err_chunk)))
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
        sse(data(_openai_chunk("a")), data(_openai_chunk("b", finish="stop")), data("[DONE]")),
    )
    assert rec.body["stream_options"] == {"include_usage": True}
    assert parser.done and deltas == ["a", "b"]
    assert parser.result().usage is None


def test_groq_usage_under_x_groq() -> None:
    adapter = get_provider("groq")
    request = adapter.build_request(
        chat(stream=True), model="llama-3.3-70b-versatile", api_key=Secret("gsk_x"), base_url=BASE
    )
    last = _openai_chunk(finish="stop")
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
        adapter, request, sse(data(_openai_chunk("ok")), data(last), data("[DONE]"))
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


# --- Anthropic --------------------------------------------------------------------------------

ANTHROPIC_RESPONSE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "thinking", "thinking": "Let me think.", "signature": "EqQB"},
        {"type": "text", "text": "Hello"},
        {"type": "text", "text": ", world"},
    ],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 50,
        "cache_creation_input_tokens": 1000,
        "cache_read_input_tokens": 2000,
        "output_tokens": 503,
        "output_tokens_details": {"thinking_tokens": 480},
        "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 0},
        "service_tier": "standard",
    },
}


def test_anthropic_request_headers_and_body(canary: str) -> None:
    """x-api-key, the pinned version, system top-level, default max_tokens 1024."""
    adapter = get_provider("anthropic")
    messages = [
        Message("system", "Be brief."),
        Message("system", "Use French."),
        Message("user", "Hi"),
        Message("assistant", "Salut"),
        Message("user", "Again"),
    ]
    request = adapter.build_request(
        ChatRequest(tuple(messages), temperature=0.5),
        model="claude-haiku-4-5",
        api_key=Secret(canary),
        base_url=BASE + "/anthropic",
    )
    _, rec = exchange(request, body=ANTHROPIC_RESPONSE)
    sent = rec.last
    assert str(sent.url) == BASE + "/anthropic/v1/messages"
    assert sent.headers["x-api-key"] == canary
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert rec.body == {
        "model": "claude-haiku-4-5",
        "max_tokens": 1024,
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Salut"},
            {"role": "user", "content": "Again"},
        ],
        "system": "Be brief.\n\nUse French.",
        "temperature": 0.5,
    }


def test_anthropic_parse_response_totals_input_with_cache_tokens() -> None:
    adapter = get_provider("anthropic")
    request = adapter.build_request(
        chat(max_tokens=10), model="claude-sonnet-4-5", api_key=Secret("sk-ant-x"), base_url=BASE
    )
    response, rec = exchange(
        request, body=ANTHROPIC_RESPONSE, headers={"request-id": "req_011CSHoEeqs5C35K2UUqR7Fy"}
    )
    assert rec.body["max_tokens"] == 10
    result = adapter.parse_response(response)
    assert result.text == "Hello, world"  # thinking block left out
    assert result.model == "claude-sonnet-4-5-20250929"
    assert result.finish_reason == "end_turn"
    assert result.request_id == "req_011CSHoEeqs5C35K2UUqR7Fy"
    assert result.usage == Usage(
        input_tokens=3050,
        output_tokens=503,
        cache_read_tokens=2000,
        cache_write_tokens=1000,
        thinking_tokens=480,
    )


def test_anthropic_missing_usage_is_named() -> None:
    adapter = get_provider("anthropic")
    body = {k: v for k, v in ANTHROPIC_RESPONSE.items() if k != "usage"}
    response, _ = exchange(
        adapter.build_request(chat(), model="claude-x", api_key=Secret("k"), base_url=BASE),
        body=body,
    )
    with pytest.raises(errors.BadResponseError, match="`usage`"):
        adapter.parse_response(response)


def _anthropic_events(*, cut_after: str | None = None, extra: Iterable[str] = ()) -> bytes:
    frames = [
        named(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "claude-haiku-4-5-20251001",
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 25,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 100,
                        "output_tokens": 1,
                    },
                },
            },
        ),
        named(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        named("ping", {"type": "ping"}),
        named(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hello"},
            },
        ),
        *extra,
        named(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "!"},
            },
        ),
        named("content_block_stop", {"type": "content_block_stop", "index": 0}),
        named(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 15},
            },
        ),
        named("message_stop", {"type": "message_stop"}),
    ]
    if cut_after is not None:
        frames = frames[: [i for i, f in enumerate(frames) if cut_after in f][0] + 1]
    return sse(*frames)


def test_anthropic_stream_full_sequence() -> None:
    adapter = get_provider("anthropic")
    request = adapter.build_request(
        chat(stream=True), model="claude-haiku-4-5", api_key=Secret("sk-ant-x"), base_url=BASE
    )
    parser, deltas, rec = run_stream(adapter, request, _anthropic_events())
    assert rec.body["stream"] is True
    assert deltas == ["Hello", "!"]
    assert parser.done
    result = parser.result()
    assert result.model == "claude-haiku-4-5-20251001"
    assert result.finish_reason == "end_turn"
    assert result.request_id == "req_stream_1"
    # input from message_start (25 + 100 cache read), output from the cumulative delta
    assert result.usage == Usage(125, 15, 100, 0, 0)


def test_anthropic_stream_thinking_deltas_are_not_text_and_unnamed_events_parse() -> None:
    """thinking_delta is not shown; events without an ``event:`` line use their data type."""
    adapter = get_provider("anthropic")
    request = adapter.build_request(
        chat(stream=True), model="claude-sonnet-4-5", api_key=Secret("sk-ant-x"), base_url=BASE
    )
    thinking = data(
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Hmm, let me see"},
        }
    )
    payload = _anthropic_events(extra=[thinking]).replace(b"event: message_stop\n", b"")
    parser, deltas, _ = run_stream(adapter, request, payload)
    assert deltas == ["Hello", "!"]
    assert parser.done is True  # message_stop recognised from its data alone


def test_anthropic_stream_cut_before_message_delta_has_no_usage() -> None:
    adapter = get_provider("anthropic")
    request = adapter.build_request(
        chat(stream=True), model="claude-haiku-4-5", api_key=Secret("sk-ant-x"), base_url=BASE
    )
    parser, deltas, _ = run_stream(
        adapter, request, _anthropic_events(cut_after="content_block_stop")
    )
    assert deltas == ["Hello", "!"]
    assert parser.done is False
    assert parser.result().usage is None


def test_anthropic_error_event_mid_stream() -> None:
    adapter = get_provider("anthropic")
    request = adapter.build_request(
        chat(stream=True), model="claude-haiku-4-5", api_key=Secret("sk-ant-x"), base_url=BASE
    )
    error = named(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    with pytest.raises(errors.ProviderUnavailableError, match="Overloaded") as info:
        run_stream(adapter, request, _anthropic_events(extra=[error]))
    assert info.value.code == "overloaded_error"


@pytest.mark.parametrize(
    ("status", "etype", "cls"),
    [
        (400, "invalid_request_error", errors.InvalidRequestError),
        (401, "authentication_error", errors.AuthenticationError),
        (402, "billing_error", errors.PermissionDeniedError),
        (403, "permission_error", errors.PermissionDeniedError),
        (404, "not_found_error", errors.InvalidRequestError),
        (413, "request_too_large", errors.InvalidRequestError),
        (429, "rate_limit_error", errors.RateLimitError),
        (500, "api_error", errors.ProviderUnavailableError),
        (504, "timeout_error", errors.ProviderTimeoutError),
        (529, "overloaded_error", errors.ProviderUnavailableError),
    ],
)
def test_anthropic_error_bodies(status: int, etype: str, cls: type, canary: str) -> None:
    body = {
        "type": "error",
        "error": {"type": etype, "message": f"{etype} happened"},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }
    err = map_status(
        get_provider("anthropic"),
        status,
        body,
        key=canary,
        headers={"retry-after": "12"} if status == 429 else None,
    )
    assert type(err) is cls
    assert err.code == etype
    assert err.status_code == status
    assert err.request_id == "req_011CSHoEeqs5C35K2UUqR7Fy"
    if status == 429:
        assert err.retry_after == 12.0
    assert_no_leak(err, canary)


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


# --- leaks across every adapter -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(PROVIDERS) | {"cencori"}))
def test_no_adapter_repr_or_error_shows_the_key(name: str, canary: str) -> None:
    """The key is in the header the server needs and nowhere else we produce."""
    adapter = get_provider(name)
    request = adapter.build_request(chat(), model="m", api_key=Secret(canary), base_url=BASE)
    assert canary not in str(request.url)
    assert canary not in request.content.decode()
    assert canary not in repr(adapter) and canary not in repr(request)
    for status in (400, 401, 403, 404, 429, 500, 503):
        err = map_status(
            adapter,
            status,
            {"error": {"message": f"key {canary} bad"}, "message": canary},
            key=canary,
        )
        assert_no_leak(err, canary)


def test_a_key_of_no_known_shape_is_still_scrubbed_when_echoed() -> None:
    """A local server's free-form key matches no pattern; the sent key itself is removed."""
    key = "hunter2-local-pw"
    err = map_status(
        get_provider("local"), 401, {"error": {"message": f"bad token {key}"}}, key=key
    )
    assert key not in str(err)
    assert "[redacted]" in str(err)


@pytest.mark.parametrize("name", ["openai", "mistral", "anthropic", "google", "cencori"])
def test_stream_event_that_is_json_but_not_an_object_is_a_bad_response(name: str) -> None:
    """A frame like `data: [1, 2]` or `data: 42` is BadResponseError naming the provider."""
    load_builtin()
    parser = get_provider(name).stream_parser()
    event = httpx2.ServerSentEvent(event="message", data="42")
    with pytest.raises(errors.BadResponseError) as err:
        parser.feed(event)
    assert err.value.provider == name
    assert "not a JSON object" in str(err.value)
