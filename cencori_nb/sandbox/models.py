"""What the sandbox knows about models: who serves them, their dated ids, context windows.

The real APIs answer an alias with the dated snapshot it points at (a request for
``gpt-4o`` comes back as ``gpt-4o-2024-08-06``, ``claude-haiku-4-5`` as
``claude-haiku-4-5-20251001``); a model the provider does not serve gets its 404; a prompt
over the model's context window gets its 400. The sandbox copies all three from the tables
here. A model counts as known when it is listed below (as an alias or a dated id) or when
the public price catalogue (genai-prices, the same one the gateway door charges from) has a
price for it at that provider, so any real, priced model works without being listed.

Sources: the providers' model pages and API references (OpenAI "Models", Anthropic "Models
overview", Google "Gemini models", Mistral, Groq, xAI and DeepSeek model lists), read
2026-08; the dated ids are the ones each API returns for the alias.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["ALIASES", "CONTEXT_WINDOWS", "MODELS", "context_window", "dated", "is_known"]

# models each door lists at /models (and the gateway door's catalogue is built from)
MODELS: dict[str, tuple[str, ...]] = {
    "openai": (
        "gpt-4o-mini",
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "o3-mini",
        "o4-mini",
    ),
    "anthropic": (
        "claude-haiku-4-5",
        "claude-sonnet-4-5",
        "claude-opus-4-1",
        "claude-3-5-haiku-latest",
    ),
    "google": ("gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.5-pro", "gemini-2.0-flash"),
    "mistral": (
        "mistral-small-latest",
        "mistral-large-latest",
        "codestral-latest",
        "open-mistral-nemo",
    ),
    "groq": ("llama-3.3-70b-versatile", "llama-3.1-8b-instant", "mixtral-8x7b-32768"),
    "xai": ("grok-3-mini", "grok-3", "grok-4"),
    "deepseek": ("deepseek-chat", "deepseek-reasoner"),
    "together": ("meta-llama/Llama-3.3-70B-Instruct-Turbo",),
    "openrouter": (
        "openai/gpt-4o-mini",
        "anthropic/claude-3.5-haiku",
        "meta-llama/llama-3.3-70b-instruct:free",
    ),
    "local": ("llama3.2",),
}

# alias -> the dated id the provider's answer names (Gemini, Mistral, Groq, xAI and
# DeepSeek answer with the id as requested)
ALIASES: dict[str, dict[str, str]] = {
    "openai": {
        "gpt-4o": "gpt-4o-2024-08-06",
        "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
        "gpt-4.1": "gpt-4.1-2025-04-14",
        "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
        "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
        "o1": "o1-2024-12-17",
        "o3": "o3-2025-04-16",
        "o3-mini": "o3-mini-2025-01-31",
        "o4-mini": "o4-mini-2025-04-16",
        "gpt-5": "gpt-5-2025-08-07",
        "gpt-5-mini": "gpt-5-mini-2025-08-07",
        "gpt-5-nano": "gpt-5-nano-2025-08-07",
        "gpt-3.5-turbo": "gpt-3.5-turbo-0125",
    },
    "anthropic": {
        "claude-haiku-4-5": "claude-haiku-4-5-20251001",
        "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
        "claude-opus-4-1": "claude-opus-4-1-20250805",
        "claude-sonnet-4-0": "claude-sonnet-4-20250514",
        "claude-opus-4-0": "claude-opus-4-20250514",
        "claude-3-7-sonnet-latest": "claude-3-7-sonnet-20250219",
        "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022",
        "claude-3-5-sonnet-latest": "claude-3-5-sonnet-20241022",
        "claude-3-opus-latest": "claude-3-opus-20240229",
    },
    "xai": {"grok-4": "grok-4-0709", "grok-4-latest": "grok-4-0709"},
}

# (provider, model prefix) -> context window in tokens; the longest matching prefix wins
CONTEXT_WINDOWS: dict[str, tuple[tuple[str, int], ...]] = {
    "openai": (
        ("gpt-4o", 128_000),
        ("gpt-4.1", 1_047_576),
        ("o1", 200_000),
        ("o3", 200_000),
        ("o4", 200_000),
        ("gpt-5", 400_000),
        ("gpt-3.5-turbo", 16_385),
        ("ft:gpt-4o", 128_000),
    ),
    "anthropic": (("claude-", 200_000),),
    "google": (("gemini-", 1_048_576),),
    "mistral": (("mistral-", 128_000), ("codestral-", 256_000), ("open-mistral-", 128_000)),
    "groq": (("llama-", 131_072), ("mixtral-", 32_768)),
    "xai": (("grok-3", 131_072), ("grok-4", 256_000)),
    "deepseek": (("deepseek-", 128_000),),
}


def dated(provider: str, model: str) -> str:
    """The id the provider's answer names for ``model`` (dated for an alias)."""
    return ALIASES.get(provider, {}).get(model, model)


def context_window(provider: str, model: str) -> int | None:
    """``model``'s context window at ``provider`` (None: unknown, not checked)."""
    best: tuple[int, int] | None = None
    for prefix, window in CONTEXT_WINDOWS.get(provider, ()):
        if model.startswith(prefix) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), window)
    return None if best is None else best[1]


@lru_cache(maxsize=1024)
def is_known(provider: str, model: str) -> bool:
    """Whether ``provider`` serves ``model``: listed, an alias or dated id, a fine-tune of a
    listed model, or priced in the public catalogue. A local server serves anything, and
    OpenRouter any ``vendor/model`` id (it lists hundreds; the catalogue prices few)."""
    if model != model.strip() or not model:
        return False  # "claude-… " with a stray space is not a model (Anthropic: 404)
    if provider == "local" or (provider == "openrouter" and "/" in model):
        return True
    aliases = ALIASES.get(provider, {})
    if model in MODELS.get(provider, ()) or model in aliases or model in aliases.values():
        return True
    if model.startswith("ft:"):  # ft:<base>:<org>:<suffix>:<id> — known if the base is
        base = model[3:].split(":", 1)[0]
        return bool(base) and is_known(provider, base)
    from .wallet import provider_cost

    return provider_cost(provider, model, 1, 1) is not None
