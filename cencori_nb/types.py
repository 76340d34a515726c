"""The values that flow through a request: what is asked, what came back, what it cost.

These are plain dataclasses shared by the client, the router, the providers, the ledger and
the faces (magic, widgets, CLI). They hold no secrets.

Token convention (the genai-prices one): ``input_tokens`` is the *total* prompt size,
including ``cache_read_tokens`` and ``cache_write_tokens``; ``output_tokens`` includes
``thinking_tokens``. Adapters normalise each provider's usage to this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .images import ImagePart
    from .schemas import Schema

__all__ = ["ChatRequest", "Completion", "Message", "Route", "Usage"]

Route = Literal["byok", "managed"]
RouteChoice = Literal["auto", "byok", "managed"]


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message: ``role`` is ``system``, ``user`` or ``assistant``.

    A message with images keeps its text and images in order in ``parts`` (``str`` and
    :class:`~cencori_nb.images.ImagePart` items); ``content`` is then its text alone (what
    the key checks and token estimates read). Build one with :meth:`from_parts`.
    """

    role: str
    content: str
    parts: tuple[str | ImagePart, ...] = ()

    @property
    def images(self) -> tuple[ImagePart, ...]:
        """The images in this message, in order."""
        if not self.parts:  # a text message (most): no generator to run
            return ()
        return tuple(p for p in self.parts if not isinstance(p, str))

    @classmethod
    def from_parts(cls, role: str, items: Sequence[Any]) -> Message:
        """A message from text and images in order: ``str`` items (or ``{"type": "text",
        "text": …}`` dicts) are text, anything else goes through
        :func:`cencori_nb.images.as_image` (an :class:`~cencori_nb.errors.ImageError` if it
        is not an image). Without images it is a plain text message."""
        from .images import as_image

        parts: list[str | ImagePart] = []
        for item in items:
            if isinstance(item, str):
                parts.append(item)
            elif isinstance(item, dict) and item.get("type") == "text":
                parts.append(str(item.get("text") or ""))
            else:
                parts.append(as_image(item))
        text = "".join(p for p in parts if isinstance(p, str))
        if all(isinstance(p, str) for p in parts):
            return cls(role, text)
        return cls(role, text, tuple(parts))


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A provider-neutral chat request. ``model`` may be None (project default)."""

    messages: tuple[Message, ...]
    model: str | None = None
    provider: str | None = None
    route: RouteChoice = "auto"
    temperature: float | None = None
    max_tokens: int | None = None
    stream: bool = False
    project: str | None = None
    cache: bool = True
    # The most this one request may cost you, as the caller accepted it (None: the
    # ``confirm_above_usd`` setting decides); see accounting.preflight.
    max_cost_usd: Decimal | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # schema=: the answer must be JSON of this shape; each adapter sends it in its
    # provider's native form (see cencori_nb.schemas), the client validates the answer.
    schema: Schema | None = None

    @classmethod
    def from_prompt(
        cls,
        prompt: str | Sequence[Any],
        *,
        system: str | None = None,
        **kwargs: Any,
    ) -> ChatRequest:
        """Build from a prompt string, a list of ``{"role", "content"}`` dicts (``content``
        a string, or a list of text and images), or a list of text and images that is one
        user message (``["What does this chart show?", fig]``)."""
        messages: list[Message] = []
        if system:
            messages.append(Message("system", system))
        if isinstance(prompt, str):
            messages.append(Message("user", prompt))
        elif prompt and not any(isinstance(i, (dict, Message)) for i in prompt):
            messages.append(Message.from_parts("user", list(prompt)))
        else:
            items: list[Any] = list(prompt)
            for item in items:
                if isinstance(item, Message):
                    messages.append(item)
                elif isinstance(item["content"], (list, tuple)):
                    messages.append(Message.from_parts(str(item["role"]), item["content"]))
                else:
                    messages.append(Message(str(item["role"]), str(item["content"])))
        return cls(messages=tuple(messages), **kwargs)

    @property
    def images(self) -> tuple[ImagePart, ...]:
        """Every image in the request's messages, in order."""
        found: tuple[ImagePart, ...] = ()
        for m in self.messages:  # asked several times per request: no generator, no call
            if m.parts:  # for a text message
                found += m.images
        return found


@dataclass(slots=True)
class Usage:
    """Token counts of one request (see the module docstring for the convention)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    thinking_tokens: int = 0
    image_tokens: int = 0  # of input_tokens, the images' share (when the provider says)
    # Of cache_write_tokens, those written to Anthropic's 1-hour cache
    # (usage.cache_creation.ephemeral_1h_input_tokens): billed at their own, higher rate
    # (2x base input, against 1.25x for the 5-minute cache).
    cache_write_1h_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


# Completion fields left out of to_dict (the cache): the parsed value is the user's type, read
# again from the text; earlier attempts belong to the request that made them, not to a hit.
_NOT_STORED = frozenset({"parsed", "earlier_cost_usd"})


@dataclass(slots=True)
class Completion:
    """The result of one chat request, with its route and what it cost.

    ``provider_cost_usd`` is what the provider's list price says the tokens cost (what a
    BYOK user pays the provider); ``credits_charged_usd`` is what the Cencori wallet was
    charged (managed charge, or the BYOK policy fee). ``cost_usd`` is what the request cost
    you, set once when it is settled (:func:`cencori_nb.accounting.cost_of`: credits charged
    for managed, provider price plus any BYOK fee for BYOK, 0 for a cache hit or a test key;
    None while unsettled or when no price is known); every view shows that value.
    ``test_mode`` is True when a Cencori test key (``csk_test_…``) was used: free, never
    debited. ``estimated`` is True when usage was missing (a cut stream) and tokens were
    estimated from the text.

    Cencori's receipts on the managed route: ``request_id`` is the gateway's
    ``X-Request-Id`` (quote it to Cencori's support), ``gateway_cache`` its
    ``X-Cencori-Cache`` (``HIT``/``SEMANTIC-HIT`` answers cost nothing), and
    ``model_original`` the model asked for when the gateway answered with another
    (``X-Model-Upgraded``: a vision model for an image).
    """

    text: str
    model: str
    provider: str
    route: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    thinking_tokens: int = 0
    provider_cost_usd: Decimal | None = None
    credits_charged_usd: Decimal = Decimal(0)
    cached: bool = False
    request_id: str = ""
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    finish_reason: str | None = None
    estimated: bool = False
    model_requested: str | None = None
    credential_source: str = ""
    project: str = "default"
    gateway_cost_usd: Decimal | None = None
    price_version: str | None = None
    cost_usd: Decimal | None = None
    test_mode: bool = False
    # The id this toolkit gave the request: its ledger row is unique on it (the provider's
    # request_id need not be unique). Set when the answer is recorded.
    client_id: str = ""
    # The answer stopped part way (a cut stream, an interrupt): recorded as ``interrupted``
    # with estimated tokens.
    interrupted: bool = False
    gateway_cache: str | None = None  # Cencori's X-Cencori-Cache: HIT, SEMANTIC-HIT, MISS
    model_original: str | None = None  # the model asked for, when the gateway upgraded it
    # schema=: the answer read into the schema's type (a pydantic or dataclass instance, or
    # a dict for a TypedDict or a JSON Schema); None for a plain request.
    parsed: Any = None
    # What earlier attempts of this answer cost (a schema= answer retried once after it did
    # not match): each attempt has its own ledger row; this is only what the faces add up.
    earlier_cost_usd: Decimal = Decimal(0)
    # Of input_tokens, the images' share: as the provider reported it (OpenAI
    # prompt_tokens_details.image_tokens, Gemini's IMAGE modality), else by the provider's
    # documented formula (Anthropic reports none). Priced like the rest of the input.
    image_tokens: int = 0
    # Of cache_write_tokens, the 1-hour cache writes (see Usage); priced at their own rate.
    cache_write_1h_tokens: int = 0

    @property
    def usage(self) -> Usage:
        return Usage(
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.thinking_tokens,
            self.image_tokens,
            self.cache_write_1h_tokens,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (Decimals as strings, so no precision is lost).

        ``parsed`` is left out: it is the user's type, not JSON, and is read again from
        ``text`` (a cached structured answer is parsed when it is served).
        """
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_STORED}
        for k, v in out.items():
            if isinstance(v, Decimal):
                out[k] = str(v)
        return out

    def footer(self) -> str:
        """``model · route · tokens · cost`` (or ``cached``), as the magic shows it."""
        if self.cached:
            return f"{self.model} · cached · {self.input_tokens}+{self.output_tokens} tokens · $0"
        route = "BYOK" if self.route == "byok" else "managed"
        if self.test_mode:
            route += " · test mode (free)"
        cost = self.cost_usd
        cost_s = "cost unknown" if cost is None else f"${cost:.6f}"
        est = " (estimated)" if self.estimated else ""
        receipts = ""
        if self.model_original:
            receipts += f" · upgraded from {self.model_original}"
        if self.gateway_cache in ("HIT", "SEMANTIC-HIT"):
            receipts += f" · Cencori cache {self.gateway_cache}"
        if self.earlier_cost_usd:
            receipts += f" · retried once to match the schema (+${self.earlier_cost_usd:.6f})"
        if self.route == "managed" and self.request_id:
            receipts += f" · request {self.request_id}"
        return (
            f"{self.model} · {route} · {self.input_tokens} in"
            + (f" ({self.image_tokens} image)" if self.image_tokens else "")
            + f" / {self.output_tokens} out"
            f" · {cost_s}{est}{receipts}"
        )

    def __str__(self) -> str:
        return self.text

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        from .safe_html import text_html

        return {
            "text/plain": f"{self.text}\n\n[{self.footer()}]",
            # The reply is data, shown as text (see cencori_nb.safe_html).
            "text/html": (
                text_html(self.text, style="white-space:pre-wrap")
                + text_html(self.footer(), style="opacity:.6;font-size:85%")
            ),
        }
