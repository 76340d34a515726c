"""Provider adapters: one module per wire format, registered in :mod:`.base`."""

from __future__ import annotations

from .base import Provider, ProviderResult, StreamParser, get_provider, register

__all__ = ["Provider", "ProviderResult", "StreamParser", "get_provider", "load_builtin", "register"]


def load_builtin() -> None:
    """Import the built-in adapters so they register themselves."""
    from . import anthropic, cencori, compatible, google, openai  # noqa: F401
