"""The one error translation: httpx2 exceptions and HTTP statuses become CencoriErrors.

This is the only place where ``httpx2`` exceptions become
:class:`~cencori_nb.errors.CencoriError` s (:func:`map_exception`; callers raise ``from`` the
original), so no other module needs to know httpx2's exception tree. One table turns a
status and the provider's error code into our error class (:func:`error_class`, used by
every adapter); :func:`error_for_status` maps an error response no adapter mapped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import (
    AuthenticationError,
    BadResponseError,
    CencoriError,
    ConfigurationError,
    CreditsExhaustedError,
    ErrorContext,
    InvalidRequestError,
    PermissionDeniedError,
    PricingError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
    SpendCapReachedError,
)
from .logs import scrub
from .retry import retry_after_from_response

if TYPE_CHECKING:
    import httpx2

__all__ = ["error_class", "error_for_status", "map_exception", "redirect_error"]


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


def httpx_errors() -> tuple[type[BaseException], ...]:
    """The httpx2 exception roots :func:`map_exception` translates (what to ``except``)."""
    if not _HTTPX_ERRORS:
        _table()
    return _HTTPX_ERRORS


def map_exception(exc: BaseException, *, provider: str | None = None) -> CencoriError:
    """The :class:`CencoriError` for an httpx2 exception (the caller raises it ``from exc``).

    Looks up the most specific class in the table along ``exc``'s MRO. The httpx2 message is
    kept as ``detail`` (scrubbed: h11 may quote a header value in it).
    """
    try:
        return _map(exc, provider)
    finally:  # after the mapping, which may read the key to scrub it from the message
        _disarm(exc)


def _map(exc: BaseException, provider: str | None) -> CencoriError:
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
    context: ErrorContext = {"detail": detail}
    if issubclass(err_cls, ProviderError):
        context["provider"] = provider
    return err_cls(message, hint=hint, **context)


def _disarm(exc: BaseException) -> None:
    """Point every httpx2 exception in ``exc``'s chain at a copy of its request with the
    credential headers masked. The caller raises ``from exc``, so the chain outlives the
    call (``sys.last_value``, ``%debug``, an ``except … as err`` in a cell), and
    ``err.__cause__.request.headers`` would hand out the key (httpx2's repr masks only
    ``authorization``, not ``x-api-key`` or ``x-goog-api-key``). The request itself is not
    touched: a retry sends it again."""
    import httpx2

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, httpx2.HTTPError):
            request = current._request
            if request is not None:
                current.request = _masked(request)
            response = getattr(current, "response", None)
            if isinstance(response, httpx2.Response) and response._request is not None:
                response.request = _masked(response._request)
        current = current.__cause__ or current.__context__


def _masked(request: httpx2.Request) -> httpx2.Request:
    import httpx2

    from ..redact import masked_headers

    return httpx2.Request(
        request.method, request.url, headers=masked_headers(request.headers.multi_items())
    )


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


def redirect_error(response: httpx2.Response, *, provider: str | None = None) -> CencoriError:
    """The error for a 3xx answer: redirects are never followed (the request carries the
    key, and the address it points to was never checked by the egress rules), so the
    message says where it pointed (scheme, host and port only) and how to go there."""
    from ..egress import UnsafeURLError

    status = response.status_code
    url = response.request.url
    where = f"{url.host}:{url.port}" if url.port else url.host
    try:
        to = url.join(response.headers.get("location", ""))
        target = f"{to.scheme}://{to.host}{f':{to.port}' if to.port else ''}"
    except Exception:  # noqa: BLE001 - a malformed Location: say less
        target = "another address"
    target = scrub(target)[:120]
    err = UnsafeURLError(
        f"{where} answered {status}, a redirect to {target}; it was not followed, because "
        "your key would have gone along to an address the base URL rules never checked.",
        hint="If that is where the API lives, make it the base URL "
        "(cencori_nb.settings.update_settings(base_urls=...)); the usual rules then apply.",
    )
    err.should_retry = False
    return err


def error_for_status(response: httpx2.Response, *, provider: str | None = None) -> CencoriError:
    """A generic mapping of an error status, for responses no adapter mapped."""
    status = response.status_code
    where = response.request.url.host if response.request is not None else "the provider"
    request_id = response.headers.get("x-request-id")
    ctx: ErrorContext = {"provider": provider, "status_code": status, "request_id": request_id}
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
        ctx["retry_after"] = retry_after_from_response(response)
        return RateLimitError(f"{where} is rate limiting requests (429).", **ctx)
    if cls is ProviderTimeoutError:
        return ProviderTimeoutError(f"{where} timed out the request ({status}).", **ctx)
    return ProviderUnavailableError(f"{where} failed with {status}.", **ctx)
