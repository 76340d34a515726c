"""The provider adapter interface and registry.

An adapter is pure: it turns a :class:`ChatRequest` into an ``httpx2.Request`` and a
response (or a stream of server-sent events) into a :class:`ProviderResult`, and maps an
error response into the ``CencoriError`` tree. It never does I/O, never touches the key
store or the ledger. The client does the I/O through the shared transport.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..pricing import request_usage_problem
from ..types import ChatRequest, Usage

if TYPE_CHECKING:
    import httpx2

    from ..errors import CencoriError
    from ..keystore.secret import Secret

__all__ = ["Provider", "ProviderResult", "StreamParser", "get_provider", "register"]

_log = logging.getLogger("cencori_nb")
# the most a ledger row's 64-bit pico-USD holds (about $9.2 million)
_MAX_ROW_USD = Decimal(2**63 - 1) / 10**12


@dataclass(slots=True)
class ProviderResult:
    """What a provider said, normalised. ``usage`` is None when the provider sent none."""

    text: str
    model: str | None = None  # the model id the provider returned (bill on it)
    usage: Usage | None = None
    finish_reason: str | None = None
    request_id: str | None = None
    gateway_cost_usd: Decimal | None = None  # Cencori's cost_usd (managed route)
    served_by: str | None = None  # for the gateway: the provider that served it
    reported_cost_usd: Decimal | None = None  # a cost the provider itself reported
    #                                           (OpenRouter's usage.cost); informational
    gateway_cache: str | None = None  # Cencori's X-Cencori-Cache: HIT, SEMANTIC-HIT, MISS
    model_original: str | None = None  # X-Model-Original when the gateway swapped the model
    # The model declined (OpenAI ``refusal``, Anthropic ``stop_reason: refusal``, a Gemini
    # safety stop): what it said, "" when it said nothing; None when it did not refuse.
    refusal: str | None = None
    # An answer the provider billed that is no answer (a Gemini prompt blocked before the
    # model ran: ``promptFeedback.blockReason``, no candidates, the prompt tokens counted):
    # the client records and prices the usage like any answer, then raises this error with
    # the settled completion attached as ``.completion``. None for an ordinary answer.
    error: CencoriError | None = None

    def __post_init__(self) -> None:
        """Counts and costs no request can have are taken as not sent: every adapter, its
        stream parser and a batch job's result lines build their result here, so this is
        where a provider's usage enters. Priced, a negative count or cache reads past the
        input (:func:`cencori_nb.pricing.request_usage_problem`) cost less than nothing: a
        negative charge, money made from nothing, that the ledger would keep if the row
        were written at once but refuses as damage if the same row is replayed from the
        spill file or the journal; a count past any request's makes a price no row can
        hold (the row became its pre-send estimate, marked interrupted, while the answer
        showed the price). Without usage the client records the request as estimated,
        with tokens counted from its prompt and answer and a price of at least zero (fail
        closed). A gateway cost below zero, not a number or past what a row holds would
        be the wallet debit itself; without it the charge is the provider price with the
        markup."""
        if self.usage is not None:
            problem = request_usage_problem(self.usage)
            if problem is not None:
                _log.warning(
                    "cencori_nb: the provider's usage is impossible (%s); the request is"
                    " recorded with estimated tokens",
                    problem,
                )
                self.usage = None
        for name in ("gateway_cost_usd", "reported_cost_usd"):
            cost = getattr(self, name)
            if cost is not None and not (cost.is_finite() and 0 <= cost <= _MAX_ROW_USD):
                _log.warning(
                    "cencori_nb: the provider's %s is %s, which no request costs; it is ignored",
                    name,
                    cost,
                )
                setattr(self, name, None)

    def without_stored_keys(self) -> ProviderResult:
        """This result with every stored key removed from what the provider chose to say
        (text, model, request id, refusal): a hostile endpoint can echo the key it got into
        any of them, and each is kept (the model and id in the ledger, the text in a
        DataFrame, the cache, a batch job's results file)."""
        from ..redact import remove_stored_keys

        def clean(value: str | None) -> str | None:
            return None if value is None else remove_stored_keys(value)

        return replace(
            self,
            text=remove_stored_keys(self.text),
            model=clean(self.model),
            request_id=clean(self.request_id),
            refusal=clean(self.refusal),
            model_original=clean(self.model_original),
            served_by=clean(self.served_by),
        )


class StreamParser(ABC):
    """Consumes one stream's server-sent events; one instance per request."""

    done: bool = False  # True once the provider's terminal event was seen

    @abstractmethod
    def feed(self, event: httpx2.ServerSentEvent) -> str | None:
        """Take one event; return a text delta (or None). Raise ProviderError on an error event."""

    @abstractmethod
    def result(self) -> ProviderResult:
        """The accumulated result so far (usage None if it never arrived)."""

    def complete(self) -> bool:
        """Once the stream has ended: whether the answer arrived whole (else it was cut).
        By default, whether the provider's terminal event was seen (:attr:`done`)."""
        return self.done


class Provider(ABC):
    """One wire format. Subclasses set ``name`` and implement the abstract methods."""

    name: str = ""
    sandbox_prefix: str = ""  # path under the sandbox, e.g. "/openai/v1"
    default_base_url: str = ""  # the real API's base URL (catalog; Cencori's for it)
    request_id_headers: tuple[str, ...] = ()  # where the provider puts its request id

    def request_id(self, response: httpx2.Response) -> str | None:
        """The provider's request id from ``response``'s headers (None if it sent none)."""
        for header in self.request_id_headers:
            value = response.headers.get(header)
            if value:
                return value
        return None

    @abstractmethod
    def build_request(
        self, request: ChatRequest, *, model: str, api_key: Secret, base_url: str
    ) -> httpx2.Request:
        """The HTTP request for ``request`` (``stream`` decides streaming)."""

    @abstractmethod
    def parse_response(self, response: httpx2.Response) -> ProviderResult:
        """Parse a successful non-streaming response; raise BadResponseError if malformed."""

    @abstractmethod
    def stream_parser(self, response: httpx2.Response | None = None) -> StreamParser:
        """A fresh parser for one streaming response.

        ``response`` (optional) lets the parser take the request id from its headers.
        """

    @abstractmethod
    def map_error(self, response: httpx2.Response) -> CencoriError:
        """The error for a response with status >= 400: a ProviderError subclass, or for the
        gateway's credit codes CreditsExhaustedError / SpendCapReachedError."""

    @abstractmethod
    def error_from_body(
        self,
        body: dict[str, Any],
        *,
        status: int | None,
        key: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> CencoriError:
        """The error a decoded error ``body`` describes: from a response with ``status``
        >= 400, or (``status=None``) from a 200 body or a stream event carrying an error.

        ``key`` is the key that was sent (named by its hint, never quoted); ``retry_after``
        is the wait the response's headers asked for (None: the body alone may say).
        """


_REGISTRY: dict[str, Provider] = {}


def register(provider: Provider) -> Provider:
    _REGISTRY[provider.name] = provider
    return provider


_load_lock = threading.Lock()
_loaded = False


def get_provider(name: str) -> Provider:
    """The adapter registered for ``name`` (importing the built-in adapters on first use).

    The first load is done under a lock and only then marked done: a second thread must not
    see a half-filled registry (16 threads starting at once got ``KeyError: 'openai'``).
    """
    global _loaded
    if not _loaded:
        with _load_lock:
            if not _loaded:
                from . import load_builtin

                load_builtin()
                _loaded = True
    try:
        return _REGISTRY[name]
    except KeyError:
        from ..catalog import provider_info

        provider_info(name)  # raises UnknownProviderError with the list of names
        raise
