"""What we know about each provider that is not a wire format: names, models, defaults.

The key store uses the names (it must refuse unknown providers), the router the model
prefixes, the widgets the model lists for their dropdowns. Wire formats live in
``providers/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "CENCORI",
    "PROVIDERS",
    "ProviderInfo",
    "is_known_provider",
    "provider_info",
    "takes_images",
]

CENCORI = "cencori"  # the managed route's pseudo-provider (the Cencori project key)
# Where a person tops up the credit wallet: the gateway's own top_up_url ("/billing",
# relative to its site; docs/cencori.md) made absolute. The one copy of this address.
CENCORI_BILLING_URL = "https://cencori.com/billing"


@dataclass(frozen=True)
class ProviderInfo:
    name: str
    display_name: str
    wire: str  # "openai" | "anthropic" | "google" | "openai-compatible"
    default_model: str
    models: tuple[str, ...]
    key_prefix: str = ""  # typical key prefix, for a gentle warning only
    base_url: str = ""  # real API base URL (OpenAI-compatible ones end in /v1)
    managed: bool = True  # whether Cencori's gateway can serve it (not your localhost)


PROVIDERS: dict[str, ProviderInfo] = {
    p.name: p
    for p in (
        ProviderInfo(
            "openai",
            "OpenAI",
            "openai",
            "gpt-4o-mini",
            (
                "gpt-4o-mini",
                "gpt-4o",
                "gpt-4.1",
                "gpt-4.1-mini",
                "gpt-4.1-nano",
                "o3-mini",
                "o4-mini",
            ),
            "sk-",
            "https://api.openai.com/v1",
        ),
        ProviderInfo(
            "anthropic",
            "Anthropic",
            "anthropic",
            "claude-haiku-4-5",
            ("claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-1", "claude-3-5-haiku-latest"),
            "sk-ant-",
            "https://api.anthropic.com",
        ),
        ProviderInfo(
            "google",
            "Google Gemini",
            "google",
            "gemini-2.5-flash",
            ("gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.5-pro", "gemini-2.0-flash"),
            "AIza",
            "https://generativelanguage.googleapis.com",
        ),
        ProviderInfo(
            "mistral",
            "Mistral",
            "openai-compatible",
            "mistral-small-latest",
            (
                "mistral-small-latest",
                "mistral-large-latest",
                "codestral-latest",
                "open-mistral-nemo",
            ),
            "",
            "https://api.mistral.ai/v1",
        ),
        ProviderInfo(
            "groq",
            "Groq",
            "openai-compatible",
            "llama-3.3-70b-versatile",
            ("llama-3.3-70b-versatile", "llama-3.1-8b-instant", "mixtral-8x7b-32768"),
            "gsk_",
            "https://api.groq.com/openai/v1",
        ),
        ProviderInfo(
            "xai",
            "xAI",
            "openai-compatible",
            "grok-3-mini",
            ("grok-3-mini", "grok-3", "grok-4"),
            "xai-",
            "https://api.x.ai/v1",
        ),
        ProviderInfo(
            "deepseek",
            "DeepSeek",
            "openai-compatible",
            "deepseek-chat",
            ("deepseek-chat", "deepseek-reasoner"),
            "sk-",
            "https://api.deepseek.com/v1",
        ),
        ProviderInfo(
            "together",
            "Together AI",
            "openai-compatible",
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",
            ("meta-llama/Llama-3.3-70B-Instruct-Turbo",),
            "",
            "https://api.together.xyz/v1",
        ),
        ProviderInfo(
            "openrouter",
            "OpenRouter",
            "openai-compatible",
            "openai/gpt-4o-mini",
            (
                "openai/gpt-4o-mini",
                "anthropic/claude-3.5-haiku",
                "meta-llama/llama-3.3-70b-instruct:free",
            ),
            "sk-or-",
            "https://openrouter.ai/api/v1",
        ),
        ProviderInfo(
            "local",
            "Local OpenAI-compatible server",
            "openai-compatible",
            "llama3.2",
            ("llama3.2",),
            "",
            "http://127.0.0.1:11434/v1",
            managed=False,
        ),
    )
}


def is_known_provider(name: str) -> bool:
    return name in PROVIDERS or name == CENCORI


def provider_info(name: str) -> ProviderInfo:
    """Return the provider's info or raise :class:`UnknownProviderError` listing the names."""
    try:
        return PROVIDERS[name]
    except KeyError:
        from .errors import UnknownProviderError

        raise UnknownProviderError(
            f"Unknown provider {name!r}.",
            hint="Known providers: " + ", ".join(sorted(PROVIDERS)) + f" (and {CENCORI!r} for"
            " the managed Cencori project key).",
            provider=name,
        ) from None


# Which models read images, by the providers' own model pages (OpenAI "Models", Anthropic
# "Models overview", Gemini "Models", Mistral "Models", xAI "Models and pricing", Groq and
# Together model lists), as of 2026. ``_TEXT_ONLY`` names the known models that do not;
# a model in neither is unknown, and an image for it is refused (fail closed).
_VISION: dict[str, str] = {
    "openai": r"gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4\.5|gpt-4-turbo|gpt-4-vision|gpt-5|gpt-6"
    r"|o1(?!-mini|-preview)|o3(?!-mini)|o4",
    "anthropic": r"claude-3|claude-(opus|sonnet|haiku)",
    "google": r"gemini-(1\.5|2|3|exp)|gemini-\d+(\.\d+)?-(flash|pro)",
    "mistral": r"pixtral|mistral-(small|medium|large)|magistral",
    "groq": r"meta-llama/llama-4|llama-4|.*vision",
    "xai": r"grok-4|grok-2-vision|grok-.*vision",
    "together": r".*llama-4|.*vision|.*-vl",
    "local": r"llava|bakllava|moondream|.*vision|.*-vl|gemma3|llama3\.2-vision|minicpm-v",
}
_TEXT_ONLY: dict[str, str] = {
    "openai": r"gpt-3\.5|gpt-4($|-\d{4})|o1-mini|o1-preview|o3-mini|text-|davinci|babbage",
    "anthropic": r"claude-(2|instant)",
    "google": r"gemini-(1\.0-)?pro$|gemma",
    "mistral": r"codestral|open-mistral|open-mixtral|mistral-tiny|ministral|devstral",
    "groq": r"llama-3|mixtral|gemma|qwen|deepseek",
    "xai": r"grok-(1|2|3)(?!.*vision)",
    "deepseek": r".*",
    "together": r".*",
}


def takes_images(provider: str, model: str) -> bool | None:
    """Whether ``model`` on ``provider`` reads images: True, False, or None (unknown).

    OpenRouter's ``vendor/model`` ids follow the vendor's list (``openai/gpt-4o-mini``)."""
    name = model.strip().lower()
    if provider == "openrouter" and "/" in name:
        vendor, _, rest = name.partition("/")
        vendor = {"meta-llama": "together", "x-ai": "xai", "google": "google"}.get(vendor, vendor)
        if vendor in _VISION or vendor in _TEXT_ONLY:
            return takes_images(vendor, rest.removesuffix(":free"))
        return None
    name = name.removeprefix("models/")
    if provider in _VISION and re.match(_VISION[provider], name):
        return True
    if provider in _TEXT_ONLY and re.match(_TEXT_ONLY[provider], name):
        return False
    return None
