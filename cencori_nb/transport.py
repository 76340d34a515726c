"""The one shared HTTP client: pooling, timeouts, bounded retries, error mapping, log redaction.

Everything that goes over the network to a provider or to the Cencori gateway passes through
:func:`send` / :func:`asend`. This module is also the one place where ``httpx2`` exceptions
become :class:`~cencori_nb.errors.CencoriError` s (:func:`map_exception`, always with
``raise … from``), so no other module needs to know httpx2's exception tree.

- **Pooling**: one ``httpx2.Client`` per process (a forked child builds its own) and one
  ``httpx2.AsyncClient`` per event loop (an ``AsyncClient`` is bound to the loop that opened
  its connections; it is closed when that loop shuts down), keep-alive on, limits sized for
  about a hundred concurrent requests. Tests inject ``httpx2.MockTransport`` with
  :func:`set_transport`.
- **Timeouts**: connect 10 s, read 60 s (Cencori's per-attempt figure), write/pool 60 s.
- **Errors**: one table turns a status and the provider's error code into our error class
  (:func:`error_class`, used by every adapter), one parser reads every wait a server asks for
  (:func:`retry_after`: ``retry-after-ms``, ``Retry-After`` seconds or HTTP date, Cencori's
  ``retry_after_ms`` / ``retry_after``, Google's ``RetryInfo.retryDelay``).
- **Retries**: one policy, :func:`next_wait` (sans-I/O), used by chat, stream and batch: on
  429, 409, 5xx, timeouts and connection errors, at most ``retries`` more attempts (default
  3) with exponential backoff and full jitter, except that the server's own wait is honoured
  exactly and its ``x-should-retry: true|false`` overrides the status. A wait longer than
  :data:`MAX_RETRY_WAIT` is *not* slept through: the error is raised at once with its
  ``retry_after`` so the caller (a notebook user, the batch runner) decides. Never retried:
  400/401/402/403/404/422, credit and spend-cap errors, out-of-quota and no-price errors.
- **Clock**: the waits go through a :class:`Clock` (``sleep``, ``asleep``, ``time``,
  ``random``) that tests replace (``clock=`` argument or :func:`set_clock`), so retry tests
  run instantly and assert the exact waits.
- **Redaction**: :class:`RedactingFilter` is installed on the ``httpx2``, ``httpcore2``,
  ``httpx``, ``httpcore`` and ``cencori_nb`` loggers (and their known children, because a
  logger's filters do not apply to records propagated from its children; loggers created
  later are picked up at the next request). It scrubs key-shaped strings, every credential
  this process has used and every key of an opened key store (both registered with
  :mod:`cencori_nb.redact`, whose log-line policy this is) from the message, its
  arguments, and any formatted traceback, at every level.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import logging
import os
import random
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import redact
from .errors import (
    AuthenticationError,
    BadResponseError,
    CencoriError,
    ConfigurationError,
    CreditsExhaustedError,
    InvalidRequestError,
    PermissionDeniedError,
    PricingError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
    SpendCapReachedError,
)
from .redact import LOG_LINE, MARKER

if TYPE_CHECKING:
    import httpx2

__all__ = [
    "DEFAULT_RETRIES",
    "MAX_RETRY_WAIT",
    "PACED_MAX_WAIT",
    "PACED_RATE_LIMIT_RETRIES",
    "Clock",
    "RedactingFilter",
    "aiter_sse",
    "asend",
    "backoff_wait",
    "error_class",
    "error_for_status",
    "get_async_client",
    "get_client",
    "install_log_redaction",
    "is_retryable",
    "iter_sse",
    "map_exception",
    "next_wait",
    "register_secret",
    "retry_after",
    "retry_after_from_response",
    "retryable_code",
    "scrub",
    "send",
    "set_clock",
    "set_transport",
    "should_retry_header",
]

DEFAULT_RETRIES = 3  # Cencori's gateway retries three times too
BACKOFF_BASE = 0.5  # seconds; attempt n waits up to BASE * 2**n (full jitter)
MAX_RETRY_WAIT = 60.0  # never sleep longer than this for one retry
PACED_RATE_LIMIT_RETRIES = 20  # a self-pacing batch: 429s are pacing, not failure
PACED_MAX_WAIT = 120.0  # ... and it waits out a longer Retry-After, shared by all rows
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
MAX_CONNECTIONS = 128  # batch concurrency of ~100 plus headroom
MAX_KEEPALIVE = 100
KEEPALIVE_EXPIRY = 30.0
USER_AGENT = "cencori-nb/0.1.0"

# Statuses that are the caller's fault (or a money decision): retrying cannot help.
NEVER_RETRY_STATUS = frozenset({400, 401, 402, 403, 404, 422})

log = logging.getLogger("cencori_nb.transport")


# --------------------------------------------------------------------------- clock


class Clock:
    """Time as the retry loop sees it. Replace it in tests (see :func:`set_clock`)."""

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def time(self) -> float:
        """Wall-clock seconds since the epoch (for ``Retry-After`` HTTP dates)."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (managed-route pacing, :mod:`.pacing`)."""
        return time.monotonic()

    def random(self) -> float:
        """A uniform number in [0, 1) for the backoff jitter."""
        return random.random()  # noqa: S311 (jitter, not cryptography)


_clock: Clock = Clock()


def set_clock(clock: Clock | None) -> Clock:
    """Use ``clock`` for every retry wait from now on (None restores the real one).

    Returns the previous clock so a test can put it back.
    """
    global _clock
    previous = _clock
    _clock = clock if clock is not None else Clock()
    return previous


# --------------------------------------------------------------------------- redaction

# The log-line policy lives in cencori_nb.redact, with the registry of credentials to scrub
# (the key store registers every key it opens; the router every credential it hands out).
REDACTED = MARKER
register_secret = redact.register_secret


def scrub(text: str) -> str:
    """``text`` under the log-line policy: key shapes, context values and every registered
    credential replaced by the marker."""
    return LOG_LINE.scrub(text) if text else text


class RedactingFilter(logging.Filter):
    """Scrubs secrets from a log record before any handler formats it.

    The record's message is rendered once (``getMessage``) and replaced by its scrubbed text
    with no args, so an argument whose ``str`` reveals a key (``httpx2.URL`` with
    ``?key=``, a headers object) cannot slip through. A traceback is formatted and scrubbed
    into ``exc_text``, which formatters then use as is. This runs only for records a logger
    is enabled for, so it costs nothing when logging is off.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: keep its template only, scrubbed
            message = str(record.msg)
        record.msg = scrub(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


_FILTER = RedactingFilter()
# Filters on a logger do not see records propagated from its children, so every logger the
# HTTP stack actually uses is named here (from httpx2/httpcore2 sources).
_LOGGER_NAMES = (
    "httpx2",
    "httpx",
    *(
        f"{base}{suffix}"
        for base in ("httpcore2", "httpcore")
        for suffix in (
            "",
            ".connection",
            ".connection_pool",
            ".http11",
            ".http2",
            ".proxy",
            ".socks",
        )
    ),
    "cencori_nb",
    "cencori_nb.transport",
    "cencori_nb.client",
    "cencori_nb.router",
    "cencori_nb.cache",
)
_REDACTED_PREFIXES = ("httpx", "httpcore", "cencori_nb")


_loggers_seen = 0  # size of the logging registry at the last scan


def install_log_redaction() -> None:
    """Put the redacting filter on every HTTP-stack and cencori_nb logger (idempotent)."""
    global _loggers_seen
    names = set(_LOGGER_NAMES)
    registry = logging.root.manager.loggerDict
    for name in list(registry):
        if name.startswith(_REDACTED_PREFIXES):
            names.add(name)
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    _loggers_seen = len(registry)


def _ensure_redaction() -> None:
    """Rescan when loggers were created since the last scan (a len() on the hot path)."""
    if len(logging.root.manager.loggerDict) != _loggers_seen:
        install_log_redaction()


# --------------------------------------------------------------------------- clients

_lock = threading.Lock()
_client: httpx2.Client | None = None
_client_pid = 0
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx2.AsyncClient] = (
    weakref.WeakKeyDictionary()
)
_closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any]] = (
    weakref.WeakKeyDictionary()
)
_transport: Any = None  # an httpx2.BaseTransport injected by tests
_async_transport: Any = None  # an httpx2.AsyncBaseTransport injected by tests


ENV_TIMEOUT = "CENCORI_NB_TIMEOUT"


def read_timeout() -> float:
    """Seconds to wait for a provider's next bytes: ``CENCORI_NB_TIMEOUT`` if set (a slow
    local model wants more, a test of a hanging server less), else :data:`READ_TIMEOUT`."""
    raw = os.environ.get(ENV_TIMEOUT)
    if not raw:
        return READ_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        from .errors import ConfigurationError

        raise ConfigurationError(
            f"{ENV_TIMEOUT}={raw[:40]!r} is not a number of seconds.",
            hint="Set it to a value between 0 and 3600, or unset it.",
        )
    return value


def _client_options() -> dict[str, Any]:
    import httpx2

    return {
        "timeout": httpx2.Timeout(read_timeout(), connect=CONNECT_TIMEOUT),
        "limits": httpx2.Limits(
            max_connections=MAX_CONNECTIONS,
            max_keepalive_connections=MAX_KEEPALIVE,
            keepalive_expiry=KEEPALIVE_EXPIRY,
        ),
        "headers": {"user-agent": USER_AGENT},
        "follow_redirects": False,  # a redirect from an API is a wrong base URL, not a hop
    }


def get_client() -> httpx2.Client:
    """The process-wide pooled ``httpx2.Client`` (created on first use; a forked child gets
    its own, never the parent's sockets)."""
    client = _client
    if client is not None and _client_pid == os.getpid():
        return client
    return _make_client()


def _make_client() -> httpx2.Client:
    global _client, _client_pid
    import httpx2

    with _lock:
        if _client is None or _client_pid != os.getpid():
            install_log_redaction()
            _client = httpx2.Client(transport=_transport, **_client_options())
            _client_pid = os.getpid()
        return _client


def get_async_client() -> httpx2.AsyncClient:
    """The pooled ``httpx2.AsyncClient`` of the running event loop (one per loop).

    It is closed when its loop shuts down (``asyncio.run`` finalises async generators, and
    a small one per client closes it), so no connection outlives its loop.
    """
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        import httpx2

        install_log_redaction()
        client = httpx2.AsyncClient(transport=_async_transport, **_client_options())
        _async_clients[loop] = client
        closer = _close_with_loop(client)
        # The loop holds async generators weakly: keep the closer alive with the client.
        _closers[loop] = (closer, loop.create_task(_arm(closer)))
    return client


async def _close_with_loop(client: httpx2.AsyncClient) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await client.aclose()


async def _arm(closer: AsyncIterator[None]) -> None:
    await closer.__anext__()  # first step: the loop now tracks it and will aclose() it


def set_transport(transport: Any = None, *, async_transport: Any = None) -> None:
    """Route every request through these httpx2 transports (tests: ``MockTransport``).

    ``None`` restores the real network. The shared clients are dropped and rebuilt lazily.
    """
    global _transport, _async_transport
    _close_clients()
    _transport = transport
    _async_transport = async_transport


def _close_clients() -> None:
    global _client
    with _lock:
        client, _client = _client, None
    if client is not None:
        client.close()
    # Async clients belong to their loops, which close them on shutdown; forget them here
    # rather than awaiting a close on a foreign loop.
    _async_clients.clear()
    _closers.clear()


def _reset_for_tests() -> None:
    """Close the shared clients, forget injected transports, the clock and registered keys."""
    global _transport, _async_transport
    _close_clients()
    _transport = None
    _async_transport = None
    set_clock(None)
    redact._reset_for_tests()


# --------------------------------------------------------------------------- errors


def _request_url(exc: BaseException) -> httpx2.URL | None:
    """The URL of the request ``exc`` is about, when httpx2 attached one."""
    import httpx2

    if not isinstance(exc, httpx2.HTTPError):
        return None
    try:
        return exc.request.url
    except RuntimeError:  # httpx2: "The .request property has not been set."
        return None


def _where(exc: BaseException) -> str:
    """``host[:port]`` of the failed request (never the path or query: ``?key=`` lives there)."""
    url = _request_url(exc)
    if url is None:
        return "the provider"
    port = f":{url.port}" if url.port else ""
    return f"{url.host}{port}"


def _origin(exc: BaseException) -> str:
    """``'scheme://host[:port]'`` of the failed request, quoted (never its path or query),
    for messages about the URL itself; a URL with no host says so."""
    url = _request_url(exc)
    if url is None:
        return "of the provider"
    if not url.host:
        return f"{str(url)[:60]!r} (it has no host)"
    port = f":{url.port}" if url.port else ""
    return repr(f"{url.scheme}://{url.host}{port}")


def _exception_table() -> dict[type[BaseException], tuple[type[CencoriError], str, str | None]]:
    """httpx2 exception class → (our class, message template, hint). Every class is listed."""
    import httpx2

    retry_hint = "It was retried; try again later, or raise retries=."
    net_hint = (
        "Check your network and the base URL (CENCORI_NB_SANDBOX, base_urls in "
        "settings); the sandbox must be running if you use it."
    )
    bug_hint = "This is a bug in cencori_nb; please report it."
    return {
        httpx2.ConnectTimeout: (
            ProviderTimeoutError,
            "Could not connect to {where} within the connect timeout.",
            net_hint,
        ),
        httpx2.ReadTimeout: (ProviderTimeoutError, "{where} did not answer in time.", retry_hint),
        httpx2.WriteTimeout: (
            ProviderTimeoutError,
            "Sending the request to {where} timed out.",
            retry_hint,
        ),
        httpx2.PoolTimeout: (
            ProviderTimeoutError,
            "No free connection to {where} in time (too many requests at once).",
            "Lower the concurrency.",
        ),
        httpx2.TimeoutException: (
            ProviderTimeoutError,
            "The request to {where} timed out.",
            retry_hint,
        ),
        httpx2.ConnectError: (ProviderUnavailableError, "Could not connect to {where}.", net_hint),
        httpx2.ReadError: (
            ProviderUnavailableError,
            "The connection to {where} failed while reading the answer.",
            retry_hint,
        ),
        httpx2.WriteError: (
            ProviderUnavailableError,
            "The connection to {where} failed while sending the request.",
            retry_hint,
        ),
        httpx2.CloseError: (
            ProviderUnavailableError,
            "The connection to {where} failed while closing.",
            retry_hint,
        ),
        httpx2.NetworkError: (
            ProviderUnavailableError,
            "Network error talking to {where}.",
            net_hint,
        ),
        httpx2.RemoteProtocolError: (
            ProviderUnavailableError,
            "{where} broke the HTTP protocol or closed the connection early.",
            retry_hint,
        ),
        httpx2.LocalProtocolError: (
            InvalidRequestError,
            "The request to {where} could not be sent (an invalid header or body).",
            "Check the stored key for stray spaces or newlines (cencori-nb keys set PROVIDER).",
        ),
        httpx2.ProtocolError: (
            ProviderUnavailableError,
            "HTTP protocol error with {where}.",
            retry_hint,
        ),
        httpx2.ProxyError: (
            ProviderUnavailableError,
            "The proxy refused the request to {where}.",
            "Check HTTP_PROXY / HTTPS_PROXY / NO_PROXY.",
        ),
        httpx2.UnsupportedProtocol: (
            ConfigurationError,
            "The base URL {url} is not http:// or https://.",
            "Fix base_urls in settings or CENCORI_NB_SANDBOX.",
        ),
        httpx2.SSEError: (BadResponseError, "{where} sent a malformed event stream.", None),
        httpx2.TransportError: (
            ProviderUnavailableError,
            "Transport error talking to {where}.",
            retry_hint,
        ),
        httpx2.DecodingError: (
            BadResponseError,
            "{where} sent a body that could not be decoded.",
            None,
        ),
        httpx2.TooManyRedirects: (
            ConfigurationError,
            "{where} redirected too many times.",
            "Check the base URL.",
        ),
        httpx2.RequestError: (
            ProviderUnavailableError,
            "The request to {where} failed.",
            retry_hint,
        ),
        httpx2.HTTPStatusError: (ProviderError, "{where} answered with an error status.", None),
        httpx2.HTTPError: (ProviderError, "HTTP error talking to {where}.", None),
        httpx2.InvalidURL: (
            ConfigurationError,
            "A provider URL is not valid.",
            "Fix base_urls in settings or CENCORI_NB_SANDBOX.",
        ),
        httpx2.CookieConflict: (BadResponseError, "{where} set conflicting cookies.", None),
        httpx2.StreamConsumed: (
            BadResponseError,
            "The response stream was already read.",
            bug_hint,
        ),
        httpx2.StreamClosed: (
            BadResponseError,
            "The response stream was closed before it was read.",
            "Iterate a stream before closing it (or leaving its with-block).",
        ),
        httpx2.ResponseNotRead: (BadResponseError, "The response body was not read.", bug_hint),
        httpx2.RequestNotRead: (BadResponseError, "The request body was not read.", bug_hint),
        httpx2.StreamError: (BadResponseError, "Response stream error.", bug_hint),
    }


_TABLE: dict[type[BaseException], tuple[type[CencoriError], str, str | None]] | None = None
_HTTPX_ERRORS: tuple[type[BaseException], ...] = ()


def _table() -> dict[type[BaseException], tuple[type[CencoriError], str, str | None]]:
    global _TABLE, _HTTPX_ERRORS
    if _TABLE is None:
        import httpx2

        _TABLE = _exception_table()
        _HTTPX_ERRORS = (
            httpx2.HTTPError,
            httpx2.InvalidURL,
            httpx2.CookieConflict,
            httpx2.StreamError,
        )
    return _TABLE


def _errors() -> tuple[type[BaseException], ...]:
    if not _HTTPX_ERRORS:
        _table()
    return _HTTPX_ERRORS


def map_exception(exc: BaseException, *, provider: str | None = None) -> CencoriError:
    """The :class:`CencoriError` for an httpx2 exception (the caller raises it ``from exc``).

    Looks up the most specific class in the table along ``exc``'s MRO. The httpx2 message is
    kept as ``detail`` (scrubbed: h11 may quote a header value in it).
    """
    import httpx2

    if isinstance(exc, httpx2.HTTPStatusError):
        return error_for_status(exc.response, provider=provider)
    table = _table()
    for cls in type(exc).__mro__:
        entry = table.get(cls)
        if entry is not None:
            break
    else:
        entry = (ProviderError, "Unexpected HTTP failure talking to {where}.", None)
    err_cls, template, hint = entry
    detail = scrub(str(exc))[:300]
    message = template.format(where=_where(exc), url=_origin(exc))
    if detail:
        message = f"{message} ({type(exc).__name__}: {detail})"
    context: dict[str, Any] = {"detail": detail}
    if issubclass(err_cls, ProviderError):
        context["provider"] = provider
    return err_cls(message, hint=hint, **context)


# --------------------------------------------------------------------------- the error table

# The one status → error class table (every adapter and the generic mapper use it). 409 is a
# conflict the official SDKs retry (a lock or a concurrent change), so it is "unavailable".
_STATUS_ERRORS: dict[int, type[ProviderError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: PermissionDeniedError,
    403: PermissionDeniedError,
    404: InvalidRequestError,
    405: InvalidRequestError,
    408: ProviderTimeoutError,
    409: ProviderUnavailableError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    429: RateLimitError,
}

# Provider error codes that name the failure more precisely than the HTTP status (and decide
# the class even when there is no status: an error event inside a 200 stream). Sources: the
# OpenAI and Anthropic error docs, Google's AIP-193 RPC codes, Cencori's gateway source.
_PRECISE_CODES: dict[str, type[CencoriError]] = {
    # OpenAI-style error.code / error.type
    "invalid_api_key": AuthenticationError,
    "authentication_error": AuthenticationError,
    "permission_error": PermissionDeniedError,
    "permission_denied": PermissionDeniedError,
    "rate_limit_error": RateLimitError,
    "rate_limit_exceeded": RateLimitError,
    "insufficient_quota": RateLimitError,
    "context_length_exceeded": InvalidRequestError,
    "model_not_found": InvalidRequestError,
    "overloaded_error": ProviderUnavailableError,
    # Anthropic error.type
    "billing_error": PermissionDeniedError,
    "request_too_large": InvalidRequestError,
    "timeout_error": ProviderTimeoutError,
    # Google: ErrorInfo.reason and RPC status
    "API_KEY_INVALID": AuthenticationError,
    "API_KEY_EXPIRED": AuthenticationError,
    "UNAUTHENTICATED": AuthenticationError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "RESOURCE_EXHAUSTED": RateLimitError,
    "DEADLINE_EXCEEDED": ProviderTimeoutError,
    # Cencori's gateway (middleware `code`, or the engine's `error` string)
    "missing_api_key": AuthenticationError,
    "provider_auth_error": AuthenticationError,
    "credit_balance_exhausted": CreditsExhaustedError,
    "spend_cap_reached": SpendCapReachedError,
    "provider_rate_limited": RateLimitError,
    "provider_invalid_request": InvalidRequestError,
    "provider_model_not_found": InvalidRequestError,
    "provider_unavailable": ProviderUnavailableError,
    "provider_error": ProviderUnavailableError,
    "provider_timeout": ProviderTimeoutError,
    "internal_error": ProviderUnavailableError,
    "rate_limit_unavailable": ProviderUnavailableError,
    "pricing_unavailable": PricingError,
    "security_violation": PermissionDeniedError,
    "provider_content_filtered": PermissionDeniedError,
    "model_access_denied": PermissionDeniedError,
    "domain_not_allowed": PermissionDeniedError,
    "billing_frozen": PermissionDeniedError,
    "network_access_denied": PermissionDeniedError,
}

# Broad codes: they only decide when there is no HTTP status to go by (inside a stream).
_BROAD_CODES: dict[str, type[ProviderError]] = {
    "invalid_request_error": InvalidRequestError,
    "not_found_error": InvalidRequestError,
    "timeout": ProviderTimeoutError,
    "server_error": ProviderUnavailableError,
    "api_error": ProviderUnavailableError,
    "INVALID_ARGUMENT": InvalidRequestError,
    "FAILED_PRECONDITION": InvalidRequestError,
    "NOT_FOUND": InvalidRequestError,
    "OUT_OF_RANGE": InvalidRequestError,
    "UNAVAILABLE": ProviderUnavailableError,
    "INTERNAL": ProviderUnavailableError,
    "UNKNOWN": ProviderUnavailableError,
    "ABORTED": ProviderUnavailableError,
    "CANCELLED": ProviderUnavailableError,
}

# Codes that waiting cannot fix although their class is normally retried.
_NOT_RETRYABLE_CODES = frozenset({"insufficient_quota", "pricing_unavailable"})


def error_class(status: int | None, *codes: str | None) -> type[CencoriError]:
    """The error class for an HTTP ``status`` and the provider's error ``codes`` (most
    precise first). The one table: adapters and :func:`error_for_status` both use it.

    A precise code wins over the status (Google answers a bad key with 400
    ``API_KEY_INVALID``; Anthropic's 529 and 500 differ only in their type); a broad code
    (``invalid_request_error``, ``INTERNAL``…) only decides when there is no status.
    """
    for code in codes:
        if code and code in _PRECISE_CODES:
            return _PRECISE_CODES[code]
    if status is not None and status >= 400:
        if status in _STATUS_ERRORS:
            return _STATUS_ERRORS[status]
        return ProviderUnavailableError if status >= 500 else InvalidRequestError
    for code in codes:
        if code and code in _BROAD_CODES:
            return _BROAD_CODES[code]
    return ProviderUnavailableError


def retryable_code(code: str | None) -> bool | None:
    """False for codes no wait can fix (out of quota, no price); None: the class decides."""
    return False if code in _NOT_RETRYABLE_CODES else None


# --------------------------------------------------------------------------- retry hints


def _seconds(value: Any, per_second: float = 1.0) -> float | None:
    """A finite, non-negative number of seconds from a number or numeric string (``per_second``
    units make a second: 1000 for milliseconds), or None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if number != number or number in (float("inf"), float("-inf")):  # NaN, infinities
        return None
    return max(0.0, number / per_second)


def _duration(value: Any) -> float | None:
    """A protobuf duration (``"53s"``, ``"0.5s"``, ``"45.837906927s"``) in seconds."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)s\s*", value)
        return float(match.group(1)) if match else None
    return _seconds(value)


def retry_after(headers: Any = None, body: Any = None, *, now: float | None = None) -> float | None:
    """The server's requested wait in seconds, from every hint a provider sends, or None.

    The one Retry-After parser. In order (the OpenAI and Anthropic SDKs read the headers in
    this order too): ``retry-after-ms``; ``Retry-After`` as seconds or an HTTP date (relative
    to ``now``, epoch seconds); then the body: Cencori's ``retry_after_ms`` (top level or
    under ``error``), Cencori's engine ``retry_after`` (seconds), Google's
    ``google.rpc.RetryInfo.retryDelay`` (``"53s"``) in ``error.details``.
    """
    if headers is not None:
        wait = _seconds(headers.get("retry-after-ms"), 1000.0)
        if wait is not None:
            return wait
        value = headers.get("retry-after")
        if value:
            wait = _seconds(value)
            if wait is not None:
                return wait
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None:
                if when.tzinfo is None:
                    when = when.replace(tzinfo=datetime.UTC)
                current = time.time() if now is None else now
                return max(0.0, when.timestamp() - current)
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]  # Google's non-SSE stream endpoint wraps errors in an array
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    inner: dict[str, Any] = error if isinstance(error, dict) else {}
    for source in (body, inner):
        wait = _seconds(source.get("retry_after_ms"), 1000.0)
        if wait is not None:
            return wait
    for source in (body, inner):
        wait = _seconds(source.get("retry_after"))
        if wait is not None:
            return wait
    details = inner.get("details")
    if isinstance(details, list):
        for detail in details:
            if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
                wait = _duration(detail.get("retryDelay"))
                if wait is not None:
                    return wait
    return None


def should_retry_header(headers: Any) -> bool | None:
    """The server's own verdict, ``x-should-retry: true|false`` (OpenAI, Anthropic), or None."""
    if headers is None:
        return None
    value = str(headers.get("x-should-retry") or "").strip().lower()
    return {"true": True, "false": False}.get(value)


def retry_after_from_response(
    response: httpx2.Response, *, now: float | None = None
) -> float | None:
    """:func:`retry_after` of a response's headers and (already read) JSON body."""
    try:
        body = response.json()
    except Exception:  # not read, not JSON: headers only
        body = None
    return retry_after(response.headers, body, now=now)


def error_for_status(response: httpx2.Response, *, provider: str | None = None) -> CencoriError:
    """A generic mapping of an error status, for responses no adapter mapped."""
    status = response.status_code
    where = response.request.url.host if response.request is not None else "the provider"
    request_id = response.headers.get("x-request-id")
    ctx: dict[str, Any] = {"provider": provider, "status_code": status, "request_id": request_id}
    cls = error_class(status)
    if status < 400:
        return ProviderError(f"{where} answered {status}.", **ctx)
    if cls is AuthenticationError:
        return AuthenticationError(
            f"{where} rejected the API key (401).",
            hint="Check or replace the key: cencori-nb keys set PROVIDER.",
            **ctx,
        )
    if cls is PermissionDeniedError:
        return PermissionDeniedError(f"{where} refused the request ({status}).", **ctx)
    if cls is InvalidRequestError and status < 500:
        if status not in _STATUS_ERRORS:  # an unlisted 4xx: say only what we know
            return ProviderError(f"{where} answered {status}.", **ctx)
        return InvalidRequestError(f"{where} rejected the request ({status}).", **ctx)
    if cls is RateLimitError:
        return RateLimitError(
            f"{where} is rate limiting requests (429).",
            retry_after=retry_after_from_response(response),
            **ctx,
        )
    if cls is ProviderTimeoutError:
        return ProviderTimeoutError(f"{where} timed out the request ({status}).", **ctx)
    return ProviderUnavailableError(f"{where} failed with {status}.", **ctx)


# --------------------------------------------------------------------------- the retry policy


def is_retryable(err: BaseException) -> bool:
    """Whether waiting and sending again can help (the server's ``x-should-retry`` first).

    Retried: rate limits, timeouts, 409, 5xx and connection failures, unless the error says
    otherwise (``retryable=False``: out of quota, a daily quota, no price). Never retried:
    400/401/402/403/404/422, credit and spend-cap errors.
    """
    verdict = getattr(err, "should_retry", None)
    if verdict is not None:
        return bool(verdict)
    if not getattr(err, "retryable", False):
        return False
    return getattr(err, "status_code", None) not in NEVER_RETRY_STATUS


def backoff_wait(
    attempt: int, clock: Clock | None = None, *, random: Callable[[], float] | None = None
) -> float:
    """Full-jitter exponential backoff for retry number ``attempt`` (0-based)."""
    draw = random() if random is not None else (clock or _clock).random()
    return min(MAX_RETRY_WAIT, BACKOFF_BASE * (2.0**attempt)) * draw


def next_wait(
    error: BaseException,
    response: httpx2.Response | None = None,
    attempt: int = 0,
    *,
    retries: int | None = None,
    pacing: bool = False,
    random: Callable[[], float] | None = None,
    now: float | None = None,
) -> float | None:
    """The retry policy: seconds to wait before sending again, or None to give up now.

    Sans-I/O: it sleeps nothing and sends nothing, so ``send``, ``asend``, the stream
    opener and the batch runner all obey the same rule. ``attempt`` counts the retries
    already made (0 after the first failure); ``retries`` bounds them (default
    :data:`DEFAULT_RETRIES`). The server's wait (any hint :func:`retry_after` reads, or the
    adapter's ``error.retry_after``) is honoured exactly; otherwise full-jitter backoff.
    A wait above :data:`MAX_RETRY_WAIT` is not slept through: None, and the error keeps
    its ``retry_after`` so the caller decides.

    ``pacing=True`` is for a batch that paces itself on rate limits (it shares the wait
    with every worker): a 429 is then pacing, not failure, so it gets up to
    :data:`PACED_RATE_LIMIT_RETRIES` retries and waits up to :data:`PACED_MAX_WAIT`.
    """
    bound = DEFAULT_RETRIES if retries is None else max(0, retries)
    limit = MAX_RETRY_WAIT
    if pacing and isinstance(error, RateLimitError):
        bound, limit = max(bound, PACED_RATE_LIMIT_RETRIES), PACED_MAX_WAIT
    if response is not None and getattr(error, "should_retry", None) is None:
        verdict = should_retry_header(response.headers)
        if verdict is not None and isinstance(error, CencoriError):
            error.should_retry = verdict
    if attempt >= bound or not is_retryable(error):
        return None
    wait = getattr(error, "retry_after", None)
    if response is not None:
        # Read again against the transport's clock: an HTTP-date Retry-After is relative
        # to "now", which the adapter (pure, no clock) could only take from the wall.
        hint = retry_after_from_response(response, now=now)
        if hint is not None:
            wait = hint
            if isinstance(error, CencoriError):
                error.retry_after = hint
    if wait is None:
        return backoff_wait(attempt, random=random)
    if wait > limit:
        return None
    return float(wait)


MapError = Callable[["httpx2.Response"], CencoriError]


def _status_error(
    response: httpx2.Response, map_error: MapError | None, provider: str | None
) -> CencoriError:
    err = (
        map_error(response)
        if map_error is not None
        else error_for_status(response, provider=provider)
    )
    verdict = should_retry_header(response.headers)
    if verdict is not None and getattr(err, "should_retry", None) is None:
        err.should_retry = verdict
    return err


def send(
    request: httpx2.Request,
    *,
    stream: bool = False,
    retries: int | None = None,
    clock: Clock | None = None,
    map_error: MapError | None = None,
    provider: str | None = None,
    client: httpx2.Client | None = None,
) -> httpx2.Response:
    """Send ``request`` on the shared client with bounded retries; return a 2xx/3xx response.

    ``stream=True`` returns the response unread (the caller iterates and closes it).
    ``map_error`` (an adapter's ``map_error``) turns an error response into our error; a
    response with status >= 400 is always read first so the mapper can look at the body.
    Raises a :class:`CencoriError` (``from`` the httpx2 exception for transport failures).
    """
    clock = clock or _clock
    attempts = 1 + (DEFAULT_RETRIES if retries is None else max(0, retries))  # for the log
    _ensure_redaction()
    http = client or get_client()
    errors = _HTTPX_ERRORS or _errors()
    attempt = 0
    while True:
        response: httpx2.Response | None = None
        try:
            response = http.send(request, stream=stream)
            if response.status_code < 400:
                return response
            if stream:
                response.read()
                response.close()
        except errors as exc:
            if response is not None:
                response.close()
            err = map_exception(exc, provider=provider)
            cause: BaseException | None = exc
            response = None
        else:
            err = _status_error(response, map_error, provider)
            cause = None
        wait = next_wait(
            err, response, attempt, retries=retries, random=clock.random, now=clock.time()
        )
        attempt += 1
        if wait is None:
            raise err from cause
        log.debug(
            "retrying after %.3fs (attempt %d of %d): %s", wait, attempt + 1, attempts, err.code
        )
        clock.sleep(wait)


async def asend(
    request: httpx2.Request,
    *,
    stream: bool = False,
    retries: int | None = None,
    clock: Clock | None = None,
    map_error: MapError | None = None,
    provider: str | None = None,
    client: httpx2.AsyncClient | None = None,
) -> httpx2.Response:
    """The async twin of :func:`send`, on the running loop's shared ``AsyncClient``."""
    clock = clock or _clock
    attempts = 1 + (DEFAULT_RETRIES if retries is None else max(0, retries))  # for the log
    _ensure_redaction()
    http = client or get_async_client()
    errors = _HTTPX_ERRORS or _errors()
    attempt = 0
    while True:
        response: httpx2.Response | None = None
        try:
            response = await http.send(request, stream=stream)
            if response.status_code < 400:
                return response
            if stream:
                await response.aread()
                await response.aclose()
        except errors as exc:
            if response is not None:
                await response.aclose()
            err = map_exception(exc, provider=provider)
            cause: BaseException | None = exc
            response = None
        else:
            err = _status_error(response, map_error, provider)
            cause = None
        wait = next_wait(
            err, response, attempt, retries=retries, random=clock.random, now=clock.time()
        )
        attempt += 1
        if wait is None:
            raise err from cause
        log.debug(
            "retrying after %.3fs (attempt %d of %d): %s", wait, attempt + 1, attempts, err.code
        )
        await clock.asleep(wait)


def iter_sse(
    response: httpx2.Response, *, provider: str | None = None
) -> Iterator[httpx2.ServerSentEvent]:
    """Server-sent events of a streamed response, with httpx2 errors mapped to ours."""
    import httpx2

    errors = _HTTPX_ERRORS or _errors()
    events = iter(httpx2.EventSource(response))
    while True:
        try:
            event = next(events)
        except StopIteration:
            return
        except errors as exc:
            raise map_exception(exc, provider=provider) from exc
        yield event


async def aiter_sse(
    response: httpx2.Response, *, provider: str | None = None
) -> AsyncIterator[httpx2.ServerSentEvent]:
    """The async twin of :func:`iter_sse`."""
    import httpx2

    errors = _HTTPX_ERRORS or _errors()
    events = httpx2.EventSource(response).__aiter__()
    while True:
        try:
            event = await events.__anext__()
        except StopAsyncIteration:
            return
        except errors as exc:
            raise map_exception(exc, provider=provider) from exc
        yield event


install_log_redaction()
