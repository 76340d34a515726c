"""Helpers shared by the adapters: error classes by status and code, Retry-After, scrubbing,
extra parameters."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime

import httpx2
import pytest

from cencori_nb import errors, transport
from cencori_nb.keystore.secret import Secret
from cencori_nb.providers import _common, get_provider
from tests.providers.support import BASE, chat

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


@pytest.mark.parametrize(
    ("url", "headers", "stream", "params"),
    [
        (
            "http://127.0.0.1:8000/openai/v1/chat/completions",
            {"Authorization": "Bearer x"},
            False,
            None,
        ),
        (
            "https://generativelanguage.googleapis.com/v1beta/models/g:streamGenerateContent",
            {"x-goog-api-key": "k"},
            True,
            {"alt": "sse"},
        ),
        (
            "http://[::1]:9/v1/messages?beta=true",
            {"Content-Type": "application/json; x=1"},
            False,
            None,
        ),
        ("https://api.example.com/v1/a%2Fb", {"anthropic-version": "2023-06-01"}, True, None),
    ],
)
def test_json_request_is_the_request_httpx2_would_build(
    url: str, headers: dict[str, str], stream: bool, params: dict[str, str] | None
) -> None:
    """json_request gives httpx2 its final headers at once (Host first, Content-Length
    last) and reuses parsed URLs; the request is the one ``httpx2.Request(content=...)``
    builds from the same parts: method, URL, headers in order, body; built twice (the
    second from the URL cache) the same again."""
    body = {"model": "m", "messages": [{"role": "user", "content": "é ☃ \u2028"}], "n": 1.5}
    want_headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if stream else "application/json",
    }
    want_headers.update(headers)
    want = httpx2.Request(
        "POST",
        url,
        headers=want_headers,
        params=params,
        content=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
    )
    for _ in range(2):
        got = _common.json_request(url, headers, body, stream=stream, params=params)
        assert (got.method, got.url, got.content) == (want.method, want.url, want.content)
        assert got.headers.raw == want.headers.raw
        assert got.stream is not None and b"".join(got.stream) == want.content


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"a": 1.5}', {"a": Decimal("1.5")}),
        ('  {"a": [1, "b"]}\n', {"a": [1, "b"]}),  # whitespace around it: still one value
        ("[]", []),
        ('"text"', "text"),
    ],
)
def test_a_stream_event_is_parsed_as_json_with_decimal_floats(data: str, expected: object) -> None:
    parser = get_provider("openai").stream_parser()
    value = parser.json(httpx2.ServerSentEvent(data=data))
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("data", ["", "{", '{"a": 1} trailing', "{'a': 1}", "NaN x", '{"a":1}{}'])
def test_a_stream_event_that_is_not_one_json_value_is_a_bad_response(data: str) -> None:
    parser = get_provider("openai").stream_parser()
    with pytest.raises(errors.BadResponseError, match="stream event that is not valid JSON"):
        parser.json(httpx2.ServerSentEvent(data=data))


# --- which headers carry the provider key (one list: redact.CREDENTIAL_HEADERS) -------------

_SENT = "sk-proj-sentKey" + "0123456789Ab"


def _response_to(headers: dict[str, str]) -> httpx2.Response:
    return httpx2.Response(
        401, request=httpx2.Request("POST", "http://127.0.0.1:9/v1", headers=headers)
    )


@pytest.mark.parametrize("name", _common.PROVIDER_KEY_HEADERS)
def test_sent_key_reads_every_provider_key_header(name: str) -> None:
    """Each credential header a provider key travels in is read back (Authorization
    without its scheme), in any case; a request without one carried no key."""
    value = f"Bearer {_SENT}" if name == "authorization" else _SENT
    assert _common.sent_key(_response_to({name.upper(): value})) == _SENT
    assert _common.sent_key(_response_to({"content-type": "application/json"})) == ""


def test_the_provider_key_headers_are_the_credential_headers_but_a_proxys() -> None:
    """One list (redact.CREDENTIAL_HEADERS): the provider-key headers are all of it but
    Proxy-Authorization, whose credential is the proxy's: a request carrying only that sent
    no provider key ("no key was sent", not "the key …1234 was rejected")."""
    from cencori_nb.redact import CREDENTIAL_HEADERS, PROXY_CREDENTIAL_HEADERS

    assert set(_common.PROVIDER_KEY_HEADERS) == set(CREDENTIAL_HEADERS) - {"proxy-authorization"}
    assert PROXY_CREDENTIAL_HEADERS == ("proxy-authorization",)
    assert _common.PROVIDER_KEY_HEADERS[0] == "authorization"  # read first, as before
    assert _common.sent_key(_response_to({"Proxy-Authorization": f"Basic {_SENT}"})) == ""
    both = {"Proxy-Authorization": "Basic cHJveHk6cHc=", "x-api-key": _SENT}
    assert _common.sent_key(_response_to(both)) == _SENT


@pytest.mark.parametrize(
    ("said", "over"),
    [
        ("prompt is too long: 219898 tokens > 200000 maximum", True),  # Anthropic
        (
            "The input token count (3475108) exceeds the maximum number of tokens allowed "
            "(1048576).",
            True,
        ),  # Gemini
        ("This model's maximum prompt length is 131072 but the request contains 179111", True),
        ("This model's maximum context length is 65536 tokens. However, you requested", True),
        ('messages: roles must alternate between "user" and "assistant"', False),
        # max_tokens over the model's output limit is not a prompt over the window
        ("max_tokens: 100000 > 64000, which is the maximum allowed number of output", False),
        ("Request contains an invalid argument.", False),
        (None, False),
        (42, False),
    ],
)
def test_context_overflow_reads_each_providers_words(said: object, over: bool) -> None:
    from cencori_nb.providers._common import context_overflow

    assert context_overflow(said) is over
