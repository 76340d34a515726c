"""The one error translation: every httpx2 exception and error status to its CencoriError."""

from __future__ import annotations

import inspect

import httpx2
import pytest

from cencori_nb import errors, transport


def _req() -> httpx2.Request:
    return httpx2.Request("POST", "http://127.0.0.1:9/v1/chat", json={"x": 1})


def _httpx2_exception_classes() -> list[type[BaseException]]:
    return [
        obj
        for name in httpx2.__all__
        if inspect.isclass(obj := getattr(httpx2, name)) and issubclass(obj, BaseException)
    ]


def _instantiate(cls: type[BaseException]) -> BaseException:
    request = httpx2.Request("GET", "https://api.example.test:8443/v1/x?key=AIzaSyCANARYcanary123")
    if issubclass(cls, httpx2.HTTPStatusError):
        response = httpx2.Response(503, request=request)
        return cls("bad status", request=request, response=response)
    if issubclass(cls, httpx2.RequestError):
        return cls("failed sk-canary-Zq7xW2vR9tL4pK8mN3bY6cH1", request=request)
    if issubclass(cls, httpx2.HTTPError):
        exc = cls("failed")
        exc.request = request  # type: ignore[attr-defined]
        return exc
    if cls in (httpx2.InvalidURL, httpx2.CookieConflict):
        return cls("bad")
    if cls is httpx2.StreamError:
        return cls("stream")
    return cls()  # the StreamError subclasses take no message


EXPECTED = {
    "ConnectTimeout": errors.ProviderTimeoutError,
    "ReadTimeout": errors.ProviderTimeoutError,
    "WriteTimeout": errors.ProviderTimeoutError,
    "PoolTimeout": errors.ProviderTimeoutError,
    "TimeoutException": errors.ProviderTimeoutError,
    "ConnectError": errors.ProviderUnavailableError,
    "ReadError": errors.ProviderUnavailableError,
    "WriteError": errors.ProviderUnavailableError,
    "CloseError": errors.ProviderUnavailableError,
    "NetworkError": errors.ProviderUnavailableError,
    "RemoteProtocolError": errors.ProviderUnavailableError,
    "ProtocolError": errors.ProviderUnavailableError,
    "ProxyError": errors.ProviderUnavailableError,
    "TransportError": errors.ProviderUnavailableError,
    "RequestError": errors.ProviderUnavailableError,
    "LocalProtocolError": errors.InvalidRequestError,
    "UnsupportedProtocol": errors.ConfigurationError,
    "InvalidURL": errors.ConfigurationError,
    "TooManyRedirects": errors.ConfigurationError,
    "DecodingError": errors.BadResponseError,
    "SSEError": errors.BadResponseError,
    "CookieConflict": errors.BadResponseError,
    "StreamError": errors.BadResponseError,
    "StreamConsumed": errors.BadResponseError,
    "StreamClosed": errors.BadResponseError,
    "ResponseNotRead": errors.BadResponseError,
    "RequestNotRead": errors.BadResponseError,
    "HTTPStatusError": errors.ProviderUnavailableError,  # by status: 503
    "HTTPError": errors.ProviderError,
}


def test_every_httpx2_exception_class_is_mapped_explicitly() -> None:
    """Each exception class httpx2 exports has its own row in the table (none falls through)."""
    classes = _httpx2_exception_classes()
    assert len(classes) >= 28
    table = transport.errors._table()
    missing = [c.__name__ for c in classes if c not in table]
    assert missing == []


@pytest.mark.parametrize("cls", _httpx2_exception_classes(), ids=lambda c: c.__name__)
def test_each_httpx2_exception_maps_to_the_right_error(
    cls: type[BaseException], canary: str
) -> None:
    """The mapped class is the expected one, and no key from the httpx2 message survives."""
    exc = _instantiate(cls)
    err = transport.map_exception(exc, provider="openai")
    assert type(err) is EXPECTED[cls.__name__]
    assert canary not in str(err) and canary not in repr(err)
    assert "AIzaSyCANARY" not in str(err)
    assert isinstance(err, errors.CencoriError)


def test_retryable_flags_follow_the_mapping() -> None:
    """Timeouts and connection errors are retryable; protocol misuse and config are not."""
    req = _req()
    assert transport.map_exception(httpx2.ConnectError("x", request=req)).retryable
    assert transport.map_exception(httpx2.ReadTimeout("x", request=req)).retryable
    assert not getattr(
        transport.map_exception(httpx2.UnsupportedProtocol("x", request=req)), "retryable", False
    )
    assert not transport.map_exception(httpx2.LocalProtocolError("x", request=req)).retryable


def test_error_for_status_table() -> None:
    """The generic status mapping (used when no adapter mapper is given)."""
    req = _req()
    cases = {
        400: errors.InvalidRequestError,
        401: errors.AuthenticationError,
        403: errors.PermissionDeniedError,
        404: errors.InvalidRequestError,
        408: errors.ProviderTimeoutError,
        429: errors.RateLimitError,
        500: errors.ProviderUnavailableError,
        503: errors.ProviderUnavailableError,
        418: errors.ProviderError,
    }
    for status, cls in cases.items():
        err = transport.error_for_status(
            httpx2.Response(status, request=req, headers={"x-request-id": "r1"})
        )
        assert type(err) is cls, status
        assert err.status_code == status and err.request_id == "r1"
