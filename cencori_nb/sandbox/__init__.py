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
``{url}/openai/v1/files|batches``           OpenAI Files + Batches (JSONL, ``custom_id``)
``{url}/anthropic/v1/messages/batches``    Anthropic Message Batches
``{url}/google/v1beta/…:batchGenerateContent``  Gemini batch mode (``/batches/{id}``)
``{url}`` (``/api/ai/chat``, ``/v1/…``)    the Cencori gateway, native and OpenAI-compatible
``{url}/_sandbox/stats|config|reset|…``    controls for tests (key hints only, never keys);
                                           ``config`` states ``--rpm`` for client pacing;
                                           ``batches`` sets batch delay and faults
=========================================  ==============================================

Any non-empty key works; a key containing ``revoked`` gets the provider's bad-key answer
(401; Gemini and xAI answer 400); Cencori keys
must start with ``csk_``. A request header ``X-Sandbox-Fault: 401|402|403|429|500|503|529|
timeout|truncate|malformed|stream-error|invalid-json|refusal|content-filter|prompt-blocked``
injects one fault (``stream-error``: a 200 stream that ends with the provider's own error
event; ``invalid-json``: a structured answer cut mid-way; ``refusal``: the provider's own
refusal; ``content-filter``: ``finish_reason: content_filter`` with no text on the
OpenAI-style doors, the format's own refusal elsewhere; ``prompt-blocked``: Gemini's 200 with
``promptFeedback.blockReason``, no candidates and the prompt billed, OpenAI's 400
``invalid_prompt``, a refusal elsewhere);
a model the provider does not serve (or an
id containing ``does-not-exist``) gets its real 404, a prompt over the context window its
real 400. Answers follow the recorded real ones in ``tests/corpus`` (checked field by field
by ``tests/sandbox/test_fidelity.py``). Replies are deterministic in (seed, prompt), say
they come from the sandbox, and count tokens with one rule (:func:`replies.count_tokens`).
A last user message starting with ``SANDBOX-ECHO:`` is answered with exactly the rest of
the message, one starting with ``SANDBOX-ERROR:`` with a 400 carrying the rest as the
error message (tests use them to make a "model" or "provider" say something hostile); one
containing ``SANDBOX-BLOCK-PROMPT`` is answered as the ``prompt-blocked`` fault (how one row
of a batch job gets blocked).
A request with a schema (``response_format``, ``output_config``, a forced tool,
``responseJsonSchema``, ``responseFormat``) is answered with deterministic JSON matching it,
filled from the last user message (:mod:`.structured`, which also documents the
``SANDBOX-INVALID-JSON``, ``SANDBOX-WRONG-SHAPE`` and ``SANDBOX-REFUSE`` markers).

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
