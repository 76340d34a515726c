"""The OpenAI-compatible family: one class, one instance per provider.

What differs from OpenAI itself (see :mod:`.openai` for the shared format): every one of
them takes ``max_tokens`` (not ``max_completion_tokens``) and its base URL from the catalog.
How each reports usage in a stream, and whether we send ``stream_options.include_usage``:

- mistral: usage on the last chunk by default; its schema rejects unknown fields, so no
  ``stream_options``;
- groq: ``include_usage``; older responses put it under ``x_groq.usage`` (read too);
- xai: ``include_usage``; ``reasoning_tokens`` reported beside ``completion_tokens``
  (detected from ``total_tokens``);
- deepseek: ``include_usage``; cache hits as ``prompt_cache_hit_tokens``;
- together: ``include_usage``;
- openrouter: usage is always sent (the option is deprecated there) with ``usage.cost``;
  ``: OPENROUTER PROCESSING`` comment lines; errors inside a 200 stream;
- local (Ollama, vLLM, llama.cpp): ``include_usage``; the key may be empty.

Whatever we ask for, usage may still be missing from a stream (older servers, a cut
connection): the parser then reports ``usage=None`` and the client estimates. The ``local``
adapter sends no ``Authorization`` header when its key is empty (Ollama needs none).
"""

from __future__ import annotations

from ..catalog import PROVIDERS
from .base import register
from .openai import OpenAIProvider

__all__ = ["COMPATIBLE", "OpenAICompatibleProvider"]

# Providers that accept ``stream_options.include_usage`` (see the table above).
_INCLUDE_USAGE = {
    "groq": True,
    "xai": True,
    "deepseek": True,
    "together": True,
    "local": True,
    "mistral": False,
    "openrouter": False,
}

COMPATIBLE = ("mistral", "groq", "xai", "deepseek", "together", "openrouter", "local")


class OpenAICompatibleProvider(OpenAIProvider):
    """An OpenAI-compatible provider: ``max_tokens``, a different base URL, lenient usage."""

    def __init__(
        self, name: str, *, default_base_url: str | None = None, include_usage: bool | None = None
    ) -> None:
        super().__init__(
            name,
            sandbox_prefix=f"/{name}/v1",
            default_base_url=(
                default_base_url if default_base_url is not None else PROVIDERS[name].base_url
            ),
            max_tokens_field="max_tokens",
            include_usage=_INCLUDE_USAGE.get(name, False)
            if include_usage is None
            else include_usage,
            # Groq, Mistral, Together, DeepSeek: x-request-id; OpenRouter: its generation id.
            request_id_headers=("x-request-id", "request-id", "x-generation-id"),
        )


for _name in COMPATIBLE:
    register(OpenAICompatibleProvider(_name))
