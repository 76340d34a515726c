"""The router: model → provider, project defaults, the route matrix, fallback, explanations."""

from __future__ import annotations

import pytest

from cencori_nb import errors, keys, router, settings
from cencori_nb.types import ChatRequest

OPENAI_KEY = "sk-test-openai-" + "A" * 20 + "wxyz"
CENCORI_KEY = "csk_live_" + "B" * 24 + "c5k9"


# --------------------------------------------------------------------------- model → provider


@pytest.mark.parametrize(
    "model, provider, wire_model",
    [
        ("gpt-4o-mini", "openai", "gpt-4o-mini"),
        ("o1", "openai", "o1"),
        ("o3-mini", "openai", "o3-mini"),
        ("o4-mini", "openai", "o4-mini"),
        ("chatgpt-4o-latest", "openai", "chatgpt-4o-latest"),
        ("text-embedding-3-small", "openai", "text-embedding-3-small"),
        ("claude-haiku-4-5", "anthropic", "claude-haiku-4-5"),
        ("gemini-2.5-flash", "google", "gemini-2.5-flash"),
        ("mistral-small-latest", "mistral", "mistral-small-latest"),
        ("codestral-latest", "mistral", "codestral-latest"),
        ("open-mistral-nemo", "mistral", "open-mistral-nemo"),
        ("ministral-8b-latest", "mistral", "ministral-8b-latest"),
        ("llama-3.3-70b-versatile", "groq", "llama-3.3-70b-versatile"),
        ("mixtral-8x7b-32768", "groq", "mixtral-8x7b-32768"),
        ("grok-3-mini", "xai", "grok-3-mini"),
        ("deepseek-chat", "deepseek", "deepseek-chat"),
        (
            "meta-llama/llama-3.3-70b-instruct:free",
            "openrouter",
            "meta-llama/llama-3.3-70b-instruct:free",
        ),
        (
            "openrouter/meta-llama/llama-3.3-70b-instruct:free",
            "openrouter",
            "meta-llama/llama-3.3-70b-instruct:free",
        ),
        ("anthropic/claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5"),
        (
            "together/meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "together",
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        ),
        (
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "together",
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        ),
        ("GPT-4o", "openai", "GPT-4o"),
    ],
)
def test_model_to_provider(model: str, provider: str, wire_model: str) -> None:
    """Cencori's order: provider/model, catalog ids, :free, prefixes."""
    got_provider, got_model, reason = router.provider_for_model(model)
    assert (got_provider, got_model) == (provider, wire_model)
    assert reason


def test_explicit_provider_wins_over_split() -> None:
    """provider= with an OpenRouter id containing '/' keeps the whole id."""
    assert router.provider_for_model("openai/gpt-4o-mini", "openrouter")[:2] == (
        "openrouter",
        "openai/gpt-4o-mini",
    )
    assert router.provider_for_model("openrouter/x/y", "openrouter")[:2] == ("openrouter", "x/y")
    assert router.provider_for_model("my-finetune", "local")[:2] == ("local", "my-finetune")


def test_unknown_model_error_says_how_to_write_it() -> None:
    """An unknown name: UnknownModelError naming provider/model and the providers."""
    with pytest.raises(errors.UnknownModelError) as info:
        router.provider_for_model("foo-9000")
    text = str(info.value)
    assert "provider/model" in text and "openai" in text and "anthropic" in text
    assert info.value.model == "foo-9000"
    # an unknown head before '/' is not a provider either
    with pytest.raises(errors.UnknownModelError):
        router.provider_for_model("acme/foo-9000")


def test_unknown_provider_argument() -> None:
    with pytest.raises(errors.UnknownProviderError):
        router.provider_for_model("gpt-4o", "nope")


# --------------------------------------------------------------------------- route matrix


def _setup(byok: str, cencori: bool, *, allow_fallback: bool = False) -> None:
    """byok: 'absent' | 'enabled' | 'disabled'."""
    if byok != "absent":
        keys.set("openai", OPENAI_KEY, enabled=(byok == "enabled"))
    if cencori:
        keys.set_cencori_key(CENCORI_KEY)
    if allow_fallback:
        settings.update_project("default", allow_fallback=True)


@pytest.mark.parametrize("byok", ["absent", "enabled", "disabled"])
@pytest.mark.parametrize("cencori", [False, True])
@pytest.mark.parametrize("route", ["auto", "byok", "managed"])
def test_route_matrix(byok: str, cencori: bool, route: str) -> None:
    """Every combination resolves to the documented route or fails with the documented error."""
    _setup(byok, cencori)
    expect: str | None
    if route == "auto":
        expect = "byok" if byok == "enabled" else ("managed" if cencori else None)
    elif route == "byok":
        expect = "byok" if byok == "enabled" else None
    else:
        expect = "managed" if cencori else None
    if expect is None:
        with pytest.raises(errors.ProviderNotConfiguredError) as info:
            router.explain_route("gpt-4o-mini", route=route)
        text = str(info.value)
        if route == "byok" and byok == "disabled":
            assert "disabled" in text and "keys enable openai" in text
        elif route == "byok":
            assert "keys set openai" in text
        elif route == "managed":
            assert "keys set cencori" in text
        else:  # auto with nothing usable: both fixes are named
            assert "keys set cencori" in text
            assert (
                ("keys enable openai" in text)
                if byok == "disabled"
                else ("keys set openai" in text and "%cencori setup" in text)
            )
        assert OPENAI_KEY not in text and CENCORI_KEY not in text
        return
    decision = router.explain_route("gpt-4o-mini", route=route)
    assert decision.route == expect
    assert decision.provider == "openai"
    if expect == "byok":
        assert decision.credential.reveal() == OPENAI_KEY
        assert decision.credential_source == "keystore:byok:openai"
        assert decision.adapter == "openai"
        assert decision.base_url == "https://api.openai.com/v1"
    else:
        assert decision.credential.reveal() == CENCORI_KEY
        assert decision.credential_source == "keystore:managed:cencori"
        assert decision.adapter == "cencori"
        assert decision.base_url == "https://cencori.com"
        assert decision.model == "gpt-4o-mini"
    assert decision.fallback is None  # fallback is off by default
    assert decision.why and any("route" in step for step in decision.why)


def test_not_configured_message_names_both_fixes() -> None:
    """Nothing configured: the error says `keys set <provider>` / `%cencori setup` and
    `keys set cencori`."""
    with pytest.raises(errors.ProviderNotConfiguredError) as info:
        router.explain_route("claude-haiku-4-5")
    text = str(info.value)
    assert "cencori-nb keys set anthropic" in text
    assert "%cencori setup" in text
    assert "cencori-nb keys set cencori" in text
    assert info.value.provider == "anthropic"


def test_fallback_only_when_project_allows_and_cencori_key() -> None:
    """allow_fallback + Cencori key → a managed fallback is attached to the BYOK decision."""
    _setup("enabled", True, allow_fallback=True)
    decision = router.explain_route("gpt-4o-mini")
    assert decision.route == "byok"
    assert decision.fallback is not None
    assert decision.fallback.route == "managed"
    assert decision.fallback.credential_source == "keystore:managed:cencori"
    assert decision.fallback.adapter == "cencori"
    # forcing byok means no fallback
    assert router.explain_route("gpt-4o-mini", route="byok").fallback is None


def test_no_fallback_without_cencori_key() -> None:
    _setup("enabled", False, allow_fallback=True)
    assert router.explain_route("gpt-4o-mini").fallback is None


# --------------------------------------------------------------------------- defaults and URLs


def test_project_default_provider_and_model() -> None:
    """No model: the project default provider and its record's default model."""
    keys.set(
        "anthropic", "sk-ant-test-" + "C" * 20, default_model="claude-sonnet-4-5", make_default=True
    )
    keys.set("openai", OPENAI_KEY)
    decision = router.explain_route()
    assert (decision.provider, decision.model, decision.route) == (
        "anthropic",
        "claude-sonnet-4-5",
        "byok",
    )
    assert any("default" in step for step in decision.why)


def test_project_default_without_model_uses_catalog_default() -> None:
    keys.set("openai", OPENAI_KEY, make_default=True)
    decision = router.explain_route()
    assert (decision.provider, decision.model) == ("openai", "gpt-4o-mini")


def test_no_default_with_cencori_key_uses_gateway_default() -> None:
    keys.set_cencori_key(CENCORI_KEY)
    decision = router.explain_route()
    assert decision.model == router.GATEWAY_DEFAULT_MODEL == "gemini-2.5-flash"
    assert decision.route == "managed"


def test_no_default_at_all_is_a_clear_error() -> None:
    with pytest.raises(errors.ConfigurationError, match="make-default"):
        router.explain_route()


def test_provider_without_model_uses_its_default_model() -> None:
    keys.set("openai", OPENAI_KEY, default_model="gpt-4.1-mini")
    assert router.explain_route(provider="openai").model == "gpt-4.1-mini"


def test_sandbox_url_and_settings_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sandbox URL + adapter prefix wins; else settings.base_urls; else the adapter default.

    (A loopback proxy: a remote http:// one is refused since issue 10, see
    test_attack_urls.py.)"""
    _setup("enabled", True)
    settings.update_settings(base_urls={"openai": "http://localhost:8080/v1/"})
    assert router.explain_route("gpt-4o-mini").base_url == "http://localhost:8080/v1"
    monkeypatch.setenv("CENCORI_NB_SANDBOX", "http://127.0.0.1:5555/")
    assert router.explain_route("gpt-4o-mini").base_url == "http://127.0.0.1:5555/openai/v1"
    assert router.explain_route("gpt-4o-mini", route="managed").base_url == (
        "http://127.0.0.1:5555"
    )
    assert router.explain_route("claude-haiku-4-5", route="managed").base_url == (
        "http://127.0.0.1:5555"
    )


def test_resolve_uses_the_request_fields() -> None:
    _setup("enabled", True)
    request = ChatRequest.from_prompt("hi", model="gpt-4o", route="managed")
    decision = router.resolve(request)
    assert decision.route == "managed" and decision.model_requested == "gpt-4o"


def test_bad_route_value() -> None:
    with pytest.raises(errors.ConfigurationError, match="auto"):
        router.explain_route("gpt-4o", route="cheapest")


# --------------------------------------------------------------------------- no key shown


def test_decision_shows_only_the_hint() -> None:
    """repr, str, markdown and to_dict show the key hint, never the key."""
    _setup("enabled", True, allow_fallback=True)
    decision = router.explain_route("gpt-4o-mini")
    for text in (
        repr(decision),
        str(decision),
        decision._repr_markdown_(),
        str(decision.to_dict()),
        f"{decision}",
    ):
        assert OPENAI_KEY not in text and CENCORI_KEY not in text
        assert "…wxyz" in text
    assert "…c5k9" in str(decision)  # the fallback's hint


def test_local_server_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """provider local without a stored key: BYOK with an empty credential (no header sent)."""
    settings.update_settings(base_urls={"local": "http://127.0.0.1:11434/v1"})
    decision = router.explain_route("llama3.2", provider="local")
    assert (decision.route, decision.credential_source) == ("byok", "none:local")
    assert decision.credential.reveal() == ""
    assert decision.base_url == "http://127.0.0.1:11434/v1"
    with pytest.raises(errors.ProviderNotConfiguredError):
        router.explain_route("llama3.2", provider="local", route="managed")
