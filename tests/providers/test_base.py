"""The adapter registry, and what holds for every adapter: no key in a repr or an error,
malformed stream events are bad responses, and every method an adapter implements is declared
on :class:`~cencori_nb.providers.base.Provider` with the same parameters (so code typed
against ``Provider`` reaches nothing mypy cannot see)."""

from __future__ import annotations

import inspect
from typing import Any

import httpx2
import pytest

from cencori_nb import errors
from cencori_nb.catalog import PROVIDERS
from cencori_nb.keystore.secret import Secret
from cencori_nb.providers import get_provider, load_builtin
from cencori_nb.providers.base import _REGISTRY, Provider, ProviderResult, StreamParser
from tests.providers.support import BASE, assert_no_leak, chat, exchange, map_status

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


# --- the interface ---------------------------------------------------------------------------


def _public_callables(cls: type) -> dict[str, Any]:
    """Public callables ``cls`` defines below Provider (its own and its adapter bases')."""
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__[: cls.__mro__.index(Provider)]):
        for name, value in vars(klass).items():
            if not name.startswith("_") and callable(value):
                found[name] = value
    return found


def _shape(function: Any) -> list[tuple[str, Any, bool]]:
    """Each parameter's name, kind and whether it has a default (annotations aside)."""
    return [
        (p.name, p.kind, p.default is not inspect.Parameter.empty)
        for p in inspect.signature(function).parameters.values()
    ]


def drift(cls: type) -> list[str]:
    """What ``cls`` implements that Provider does not declare, or declares otherwise."""
    problems = []
    for name, function in sorted(_public_callables(cls).items()):
        declared = getattr(Provider, name, None)
        if declared is None:
            problems.append(f"{cls.__name__}.{name} is not declared on Provider")
        elif _shape(function) != _shape(declared):
            problems.append(f"{cls.__name__}.{name}{inspect.signature(function)} differs")
    return problems


ADAPTER_NAMES = sorted({"cencori", *PROVIDERS})


@pytest.mark.parametrize("name", ADAPTER_NAMES)
def test_every_adapter_method_is_declared_on_provider(name: str) -> None:
    adapter = get_provider(name)
    assert isinstance(adapter, Provider)
    assert adapter.name and adapter.default_base_url.startswith(("https://", "http://")), name
    assert drift(type(adapter)) == []


def test_the_check_catches_an_undeclared_method_and_a_changed_signature() -> None:
    adapter_cls = type(get_provider("openai"))

    class Drifted(adapter_cls):  # type: ignore[valid-type,misc]  # a dynamic base on purpose
        def upload_batch(self, rows: list[str]) -> None:  # not on Provider
            pass

        def map_error(self, response: httpx2.Response, extra: int) -> Any:  # a new parameter
            return None

    assert drift(Drifted) == [
        "Drifted.map_error(self, response: 'httpx2.Response', extra: 'int') -> 'Any' differs",
        "Drifted.upload_batch is not declared on Provider",
    ]


def test_an_adapter_without_error_from_body_cannot_exist() -> None:
    """The abstract methods are the contract: leaving one out fails at construction (and mypy
    reports the instantiation of an abstract class)."""

    class Partial(Provider):
        def build_request(self, *args: Any, **kwargs: Any) -> httpx2.Request:
            raise NotImplementedError

        def parse_response(self, response: httpx2.Response) -> ProviderResult:
            raise NotImplementedError

        def stream_parser(self, response: httpx2.Response | None = None) -> StreamParser:
            raise NotImplementedError

        def map_error(self, response: httpx2.Response) -> Any:
            raise NotImplementedError

    with pytest.raises(TypeError, match="error_from_body"):
        Partial()  # type: ignore[abstract]  # the omission under test


@pytest.mark.parametrize("name", ADAPTER_NAMES)
def test_every_stream_parser_keeps_to_the_stream_parser_interface(name: str) -> None:
    parser = get_provider(name).stream_parser(None)
    assert isinstance(parser, StreamParser)
    for method in ("feed", "result"):
        assert _shape(getattr(type(parser), method)) == _shape(getattr(StreamParser, method))
    assert parser.done is False and parser.result().text == ""


# --- impossible usage and cost --------------------------------------------------------------


def _reply(provider: str, model: str, body: dict[str, Any]) -> ProviderResult:
    adapter = get_provider(provider)
    request = adapter.build_request(chat(), model=model, api_key=Secret("sk-x-1234"), base_url=BASE)
    response, _ = exchange(request, body=body)
    return adapter.parse_response(response)


def _openai(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "c",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": usage,
    }


def _anthropic(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "m",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": usage,
    }


def _gemini(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
        "usageMetadata": usage,
    }


# (provider, model, body): each usage is one no request has
IMPOSSIBLE = {
    "openai negative prompt": (
        "openai",
        "gpt-4o-mini",
        _openai({"prompt_tokens": -100000, "completion_tokens": 3}),
    ),
    "openai cached past the prompt": (
        "openai",
        "gpt-4o-mini",
        _openai(
            {
                "prompt_tokens": 10,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 11},
            }
        ),
    ),
    "anthropic negative cache write": (
        "anthropic",
        "claude-sonnet-4-5",
        _anthropic({"input_tokens": 5, "output_tokens": 3, "cache_creation_input_tokens": -900000}),
    ),
    "anthropic negative output": (
        "anthropic",
        "claude-sonnet-4-5",
        _anthropic({"input_tokens": 5, "output_tokens": -3}),
    ),
    "gemini negative prompt": (
        "google",
        "gemini-2.5-flash",
        _gemini({"promptTokenCount": -7, "candidatesTokenCount": 3}),
    ),
    "gemini cached past the prompt": (
        "google",
        "gemini-2.5-flash",
        _gemini({"promptTokenCount": 7, "candidatesTokenCount": 3, "cachedContentTokenCount": 8}),
    ),
    "anthropic past any request": (
        "anthropic",
        "claude-sonnet-4-5",
        _anthropic({"input_tokens": 10**9 + 1, "output_tokens": 3}),
    ),
    "gemini negative thoughts": (
        "google",
        "gemini-2.5-flash",
        _gemini({"promptTokenCount": 7, "candidatesTokenCount": 3, "thoughtsTokenCount": -9}),
    ),
}


@pytest.mark.parametrize("case", sorted(IMPOSSIBLE))
def test_an_impossible_usage_is_taken_as_not_sent(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Counts no request has (pricing.usage_problem), in each wire format: the result
    has no usage (the client then records estimated tokens) and a warning names the
    field. The answer itself is kept."""
    provider, model, body = IMPOSSIBLE[case]
    with caplog.at_level("WARNING", logger="cencori_nb"):
        result = _reply(provider, model, body)
    assert result.text == "hi" and result.usage is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert "usage is impossible" in line and "_tokens" in line


def test_a_possible_usage_is_kept_as_sent() -> None:
    """The edges that are possible: every input token read from the cache, zero output;
    a billion tokens."""
    big = _reply("openai", "gpt-4o-mini", _openai({"prompt_tokens": 10**9, "completion_tokens": 1}))
    assert big.usage is not None and big.usage.input_tokens == 10**9
    result = _reply(
        "openai",
        "gpt-4o-mini",
        _openai(
            {
                "prompt_tokens": 10,
                "completion_tokens": 0,
                "prompt_tokens_details": {"cached_tokens": 10},
            }
        ),
    )
    assert result.usage is not None
    assert (result.usage.input_tokens, result.usage.cache_read_tokens) == (10, 10)


@pytest.mark.parametrize("cost", ["-0.5", "NaN", "sNaN", "Infinity", "-Infinity", "1e13"])
def test_a_cost_no_request_has_is_dropped(cost: str, caplog: pytest.LogCaptureFixture) -> None:
    """A gateway's cost_usd (the managed wallet's debit) or a provider's reported cost
    below zero, not a finite number or past what a ledger row holds is taken as not sent;
    zero is kept."""
    from decimal import Decimal

    with caplog.at_level("WARNING", logger="cencori_nb"):
        result = ProviderResult(
            "x", gateway_cost_usd=Decimal(cost), reported_cost_usd=Decimal(cost)
        )
    assert (result.gateway_cost_usd, result.reported_cost_usd) == (None, None)
    assert len(caplog.records) == 2
    kept = ProviderResult("x", gateway_cost_usd=Decimal(0), reported_cost_usd=Decimal("0.01"))
    assert (kept.gateway_cost_usd, kept.reported_cost_usd) == (Decimal(0), Decimal("0.01"))
