"""A message's text and images in each wire format's own shape (pure, no I/O).

A message without images stays a plain string everywhere (the request bodies of text
prompts do not change). With images, each image is first fitted to the provider's bounds
(:func:`cencori_nb.images.fit_for`), then:

- OpenAI Chat Completions and the compatible family: ``[{"type": "text", "text": …},
  {"type": "image_url", "image_url": {"url": "data:image/png;base64,…"}}]`` (what
  ``openai`` sends for ``ChatCompletionContentPartImageParam``);
- Cencori's native door: the same OpenAI parts (its ``chat-vision-router.ts`` detects
  ``image_url`` parts and answers with a vision model), fitted to the strictest provider
  rules (Anthropic's) since the gateway may answer with any provider's model;
- Anthropic Messages: ``{"type": "image", "source": {"type": "base64", "media_type": …,
  "data": …}}`` blocks beside ``{"type": "text", "text": …}`` blocks;
- Gemini: ``{"inlineData": {"mimeType": …, "data": …}}`` parts beside ``{"text": …}``.

Text parts that are only whitespace are left out (Anthropic refuses blank text blocks).
"""

from __future__ import annotations

from typing import Any

from ..images import ImagePart, fit_for
from ..types import Message

__all__ = ["anthropic_content", "google_parts", "openai_content"]


def _items(message: Message) -> list[str | ImagePart]:
    return [p for p in message.parts if not isinstance(p, str) or p.strip()]


def openai_content(message: Message, provider: str) -> str | list[dict[str, Any]]:
    """``content`` of an OpenAI-style message (``provider`` decides the size rules)."""
    if not message.parts:
        return message.content
    rules = "anthropic" if provider == "cencori" else provider
    return [
        {"type": "text", "text": p}
        if isinstance(p, str)
        else {"type": "image_url", "image_url": {"url": fit_for(p, rules).data_url()}}
        for p in _items(message)
    ]


def anthropic_content(message: Message) -> str | list[dict[str, Any]]:
    """``content`` of an Anthropic message."""
    if not message.parts:
        return message.content
    out: list[dict[str, Any]] = []
    for p in _items(message):
        if isinstance(p, str):
            out.append({"type": "text", "text": p})
        else:
            fitted = fit_for(p, "anthropic")
            out.append(
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": fitted.mime,
                        "data": fitted.base64(),
                    },
                }
            )
    return out


def google_parts(message: Message) -> list[dict[str, Any]]:
    """``parts`` of a Gemini ``Content``."""
    if not message.parts:
        return [{"text": message.content}]
    out: list[dict[str, Any]] = []
    for p in _items(message):
        if isinstance(p, str):
            out.append({"text": p})
        else:
            fitted = fit_for(p, "google")
            out.append({"inlineData": {"mimeType": fitted.mime, "data": fitted.base64()}})
    return out
