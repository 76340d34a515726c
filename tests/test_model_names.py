"""Model names as users type them: fine-tuned ids, typos, and Cencori's own routing.

- ``ft:<base>:…`` routes by its base model (OpenAI and Mistral fine-tunes), no prefix needed;
- a BYOK name neither the price catalogue nor the provider's model list knows is warned
  about before sending, with difflib's closest names;
- on the managed route the provider (whose prices apply) is the one Cencori's router picks.
"""

from __future__ import annotations

import warnings

import pytest

import cencori_nb
from cencori_nb import errors, keys, router
from cencori_nb.accounting import PricingWarning
from cencori_nb.router import UnknownModelWarning
from cencori_nb.sandbox.server import SandboxServer

OPENAI_KEY = "sk-test-names-" + "N" * 20 + "a1b2"
MISTRAL_KEY = "mistral-test-" + "M" * 24 + "c3d4"
CENCORI_KEY = "csk_live_names_" + "C" * 20 + "e5f6"  # a live key: test keys are free

OPENAI_FT = "ft:gpt-4o-mini-2024-07-18:acme-corp:support-bot:9xYz1AbC"
MISTRAL_FT = "ft:open-mistral-7b:587a6b29:20240514:7e773925"


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        (OPENAI_FT, "openai"),
        ("ft:gpt-4o-2024-08-06:org::abc", "openai"),
        ("ft:gpt-3.5-turbo-0125:personal::8abc", "openai"),
        (MISTRAL_FT, "mistral"),
        ("ft:mistral-small-latest:abc:20250101:ff00", "mistral"),
        ("ft:codestral-latest:abc:20250101:ff00", "mistral"),
    ],
)
def test_fine_tuned_ids_route_by_their_base(model: str, provider: str) -> None:
    got, wire, reason = router.provider_for_model(model)
    assert (got, wire) == (provider, model) and "fine-tuned" in reason


@pytest.mark.parametrize(
    "model",
    [
        "ft:",
        "ft::org::x",
        "ft:claude-haiku-4-5:org::x",
        "ft:gemini-2.5-flash:x",
        "ft:ft:gpt-4o-mini:x",
        "ft:totally-unknown:x",
    ],
)
def test_fine_tunes_of_unknown_or_untunable_bases_are_refused(model: str) -> None:
    with pytest.raises(errors.UnknownModelError) as info:
        router.provider_for_model(model)
    assert "fine-tuned" in str(info.value) and "provider=" in str(info.value)


@pytest.fixture
def byok(sandbox_env: SandboxServer) -> SandboxServer:
    keys.set("openai", OPENAI_KEY)
    keys.set("mistral", MISTRAL_KEY)
    return sandbox_env


def test_fine_tuned_model_is_sent_as_written_without_warning(byok: SandboxServer) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = cencori_nb.chat("hello fine-tune", model=OPENAI_FT, cache=False)
        m = cencori_nb.chat("bonjour", model=MISTRAL_FT, cache=False)
    assert (c.provider, m.provider) == ("openai", "mistral")
    sent = [r["json"]["model"] for r in byok.stats["recent"]]
    assert sent == [OPENAI_FT, MISTRAL_FT]
    assert byok.stats["recent"][1]["path"] == "/mistral/v1/chat/completions"


def test_typo_warns_before_sending_with_a_suggestion(byok: SandboxServer) -> None:
    """As an error filter shows, the warning comes before any byte is sent."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownModelWarning)
        with pytest.raises(UnknownModelWarning) as info:
            cencori_nb.chat("hi", model="gpt-4o-mnii", cache=False)
    assert "Did you mean 'gpt-4o-mini'" in str(info.value)
    assert byok.stats["requests"] == 0


def test_typo_is_still_sent_and_gets_the_providers_404(byok: SandboxServer) -> None:
    keys.set("anthropic", "sk-ant-test-" + "A" * 30)
    with pytest.warns(UnknownModelWarning, match="claude") as record:
        with pytest.raises(errors.ProviderError) as info:
            cencori_nb.chat("hi", model="claude-hiaku-4-5", cache=False)
    assert len(record) == 1 and "Did you mean 'claude-haiku-4-5'" in str(record[0].message)
    assert info.value.status_code == 404 and byok.stats["requests"] == 1


def test_no_close_name_still_warns_without_a_guess(byok: SandboxServer) -> None:
    with pytest.warns(UnknownModelWarning) as record:
        with pytest.raises(errors.ProviderError):
            cencori_nb.chat("hi", model="gpt-zzzzzzzzzzzzzzzzzz", cache=False)
    text = str(record[0].message)
    assert "not in the price catalogue or openai's model list" in text
    assert "Did you mean" not in text


@pytest.mark.parametrize(
    "model", ["gpt-4o-mini", "gpt-4-turbo", "GPT-4o", "o3-mini", "gpt-4o-mini-2024-07-18"]
)
def test_known_names_do_not_warn(byok: SandboxServer, model: str) -> None:
    """Known from our catalogue or only from the price catalogue: no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownModelWarning)
        router.explain_route(model)


def test_local_and_managed_names_are_not_second_guessed(sandbox_env: SandboxServer) -> None:
    keys.set_cencori_key(CENCORI_KEY)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownModelWarning)
        router.explain_route("my-own-finetune", provider="local")
        assert router.explain_route("gpt-4o-mnii").route == "managed"


def test_suggestions_are_ranked_and_bounded() -> None:
    close = router.model_suggestions("openai", "gpt4o-mini")
    assert close[0] == "gpt-4o-mini" and len(close) <= 3
    assert router.model_suggestions("openai", "zzzz") == []


# --------------------------------------------------------------------------- managed routing


@pytest.fixture
def managed(sandbox_env: SandboxServer) -> SandboxServer:
    keys.set_cencori_key(CENCORI_KEY)
    return sandbox_env


@pytest.mark.parametrize(
    ("model", "provider", "sent"),
    [
        ("gpt-4o-mini", "openai", "gpt-4o-mini"),
        ("llama-3.3-70b-versatile", "groq", "llama-3.3-70b-versatile"),
        # OpenRouter's :free id contains "llama", which Cencori's router tests first
        (
            "meta-llama/llama-3.3-70b-instruct:free",
            "groq",
            "meta-llama/llama-3.3-70b-instruct:free",
        ),
        # no BYOK provider here serves these, Cencori does
        ("command-r-plus", "cohere", "command-r-plus"),
        ("sonar-pro", "perplexity", "sonar-pro"),
        # Cencori's OpenAI prefixes are gpt-/o1-/text-/davinci-: o3-mini goes as provider/model
        ("o3-mini", "openai", "openai/o3-mini"),
    ],
)
def test_managed_provider_is_cencoris_choice(
    managed: SandboxServer, model: str, provider: str, sent: str
) -> None:
    decision = router.explain_route(model)
    assert (decision.route, decision.provider, decision.model) == ("managed", provider, sent)


def test_byok_only_names_cencori_alone_serves_are_refused(managed: SandboxServer) -> None:
    with pytest.raises(errors.UnknownModelError):
        router.explain_route("command-r-plus", route="byok")


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("llama-3.3-70b-versatile", "groq"),
        ("command-r-plus", "cohere"),
        ("sonar-pro", "perplexity"),
        ("o3-mini", "openai"),
    ],
)
def test_managed_prices_are_known(managed: SandboxServer, model: str, provider: str) -> None:
    """The gateway serves and prices it; we price it at the same provider: never unknown."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", PricingWarning)
        c = cencori_nb.chat("price me", model=model, cache=False)
    assert c.route == "managed" and c.provider == provider
    assert c.provider_cost_usd is not None and c.provider_cost_usd > 0
    assert c.credits_charged_usd > 0
