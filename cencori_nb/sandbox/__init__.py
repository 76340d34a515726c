"""The offline sandbox: one local HTTP server speaking every provider's wire format.

Start it with ``cencori-nb sandbox`` or from Python::

    from cencori_nb.sandbox import SandboxServer
    url = SandboxServer(latency_ms=50).start_in_thread()

and point the toolkit at it (``CENCORI_NB_SANDBOX=url``) or an official SDK at a prefix:

=========================================  ==============================================
``{url}/openai/v1``                        OpenAI chat completions, models
``{url}/<p>/v1`` (mistral groq xai          the OpenAI-compatible family
deepseek together openrouter local)
``{url}/anthropic``                        Anthropic messages (``/v1/messages``)
``{url}/google``                           Gemini ``/v1`` and ``/v1beta`` generateContent,
                                           streamGenerateContent
``{url}`` (``/api/ai/chat``, ``/v1/…``)    the Cencori gateway, native and OpenAI-compatible
``{url}/_sandbox/stats|reset|balance``     controls for tests (key hints only, never keys)
=========================================  ==============================================

Any non-empty key works; a key containing ``revoked`` gets the provider's 401; Cencori keys
must start with ``csk_``. A request header ``X-Sandbox-Fault: 401|402|403|429|500|503|
timeout|truncate|malformed`` injects one fault; a model id containing ``does-not-exist``
gets the provider's 404. Replies are deterministic in (seed, prompt), say they come from
the sandbox, and count tokens with one rule (:func:`replies.count_tokens`).
A last user message starting with ``SANDBOX-ECHO:`` is answered with exactly the rest of
the message, one starting with ``SANDBOX-ERROR:`` with a 400 carrying the rest as the
error message (tests use them to make a "model" or "provider" say something hostile).

This module stays light: the server loads on first use of ``SandboxServer``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import SandboxServer

__all__ = ["SandboxServer"]


def __getattr__(name: str) -> Any:
    if name == "SandboxServer":
        from .server import SandboxServer

        return SandboxServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
