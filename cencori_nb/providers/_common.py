"""What every adapter shares: JSON bodies, the house error message, scrubbing.

Kept pure like the adapters themselves: functions of a response, a header or a string. The
error class table and the Retry-After parser live in :mod:`cencori_nb.transport` (one home
each: :func:`~cencori_nb.transport.error_class`, :func:`~cencori_nb.transport.retry_after`)
and are re-exported here for the adapters.

Error messages are built here so they read the same for every provider: what happened,
what the provider said (scrubbed of anything key-shaped, shortened), and what to do next.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, TypedDict

from ..errors import (
    AuthenticationError,
    BadResponseError,
    CencoriError,
    ConfigurationError,
    ErrorContext,
    InvalidRequestError,
    PermissionDeniedError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
)
from ..keystore.secret import Secret, key_hint
from ..redact import CREDENTIAL_HEADERS, MARKER, PROXY_CREDENTIAL_HEADERS, USER_MESSAGE
from ..text import decoded
from ..transport.errors import error_class
from ..transport.retry import retry_after, retryable_code
from ..types import ChatRequest, Usage
from .base import Provider, ProviderResult, StreamParser

if TYPE_CHECKING:
    import httpx2

__all__ = [
    "CONTEXT_HINT",
    "context_overflow",
    "AdapterStreamParser",
    "BaseStreamParser",
    "StreamContext",
    "Where",
    "as_list",
    "as_object",
    "body_with_extra",
    "build_error",
    "dig",
    "display_name",
    "error_class",
    "error_json",
    "error_text",
    "join_base",
    "json_request",
    "loads",
    "map_error_body",
    "quote",
    "raw_said",
    "retry_after",
    "retryable_code",
    "reject_reserved",
    "require",
    "response_json",
    "scrub",
    "sent_key",
    "stream_context",
    "to_decimal",
    "to_int",
]

MAX_QUOTED = 300  # characters of a provider's own error message we quote

# A prompt over the model's context window, in each provider's own words (recorded in
# tests/corpus): OpenAI's code context_length_exceeded says it by code; Anthropic's 400
# "prompt is too long: N tokens > M maximum", Gemini's 400 INVALID_ARGUMENT "The input token
# count (N) exceeds the maximum number of tokens allowed (M)" and xAI's "This model's
# maximum prompt length is M" say it only in the message.
_CONTEXT_OVERFLOW = re.compile(
    r"prompt is too long|input token count \(?\d+\)? exceeds the maximum"
    r"|maximum (?:prompt|context) length is",
    re.IGNORECASE,
)
CONTEXT_HINT = (
    "The prompt is longer than the model's context window: shorten it or use a model with "
    "a longer context."
)


def context_overflow(said: Any) -> bool:
    """Whether a provider's error message says the prompt is over the context window."""
    return isinstance(said, str) and _CONTEXT_OVERFLOW.search(said) is not None


REDACTED = MARKER


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without the given secrets, the registered ones, and anything that looks like
    a key (the :data:`~cencori_nb.redact.USER_MESSAGE` policy)."""
    return USER_MESSAGE.scrub(text, secrets)


def quote(text: Any, secrets: Iterable[str] = ()) -> str:
    """A provider's message made safe to show: scrubbed, one line, at most MAX_QUOTED chars."""
    s = " ".join(str(text).split())
    s = scrub(s, secrets)
    return s if len(s) <= MAX_QUOTED else s[: MAX_QUOTED - 1] + "…"


def display_name(provider: str) -> str:
    """``OpenAI``, ``Anthropic``… (``Cencori`` for the gateway)."""
    from ..catalog import PROVIDERS

    info = PROVIDERS.get(provider)
    if info is not None:
        return info.display_name
    return "Cencori" if provider == "cencori" else provider


class Where(TypedDict):
    """Which response a parse error is about: the context :func:`require` and
    :class:`~cencori_nb.errors.BadResponseError` take as keywords."""

    provider: str
    status_code: int | None
    request_id: str | None


def as_object(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (an optional nested field)."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """``value`` if it is a JSON array, else an empty one (an optional nested field)."""
    return value if isinstance(value, list) else []


# --- numbers -------------------------------------------------------------------------------


def to_int(value: Any) -> int:
    """A token count from JSON (None, missing or junk → 0)."""
    if value is None or isinstance(value, bool):
        return 0
    try:
        return int(value)
    except (TypeError, ValueError, ArithmeticError):
        return 0


def to_decimal(value: Any) -> Decimal | None:
    """Money from JSON. Floats go through ``str`` so ``0.0011`` stays ``Decimal('0.0011')``."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


# --- JSON -------------------------------------------------------------------------------------

# One decoder for every body and stream event: ``json.loads(..., parse_float=…)`` would
# build a new decoder per call, which shows on streams of many small events.
_DECODER = json.JSONDecoder(parse_float=Decimal)
# (text, index) -> (value, end), StopIteration when no value starts there: the decoder's C
# scanner, which JSONDecoder.decode calls through two Python frames (not in typeshed)
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def _decode(data: str | bytes) -> Any:
    text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    # a hostile or broken reply's "\ud800": text no encoder takes (cencori_nb/text.py)
    return decoded(_DECODER.decode(text), text)


def loads(data: str | bytes, *, provider: str, what: str = "response") -> Any:
    """Parse JSON (floats as Decimal, so money keeps its digits) or raise BadResponseError."""
    try:
        return _decode(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadResponseError(
            f"{display_name(provider)} sent a {what} that is not valid JSON.",
            hint="Retry; if it keeps happening the provider (or a proxy in between) is "
            "returning something else, e.g. an HTML error page.",
            provider=provider,
        ) from exc


def response_json(
    response: httpx2.Response, *, provider: str, request_id: str | None = None
) -> dict[str, Any]:
    """The JSON object of a successful response, or BadResponseError."""
    try:
        content = response.content
    except Exception as exc:  # httpx2.ResponseNotRead: the caller forgot to read it
        raise BadResponseError(
            f"The {display_name(provider)} response body was not read.",
            provider=provider,
            status_code=response.status_code,
        ) from exc
    try:
        body = loads(content, provider=provider)
    except BadResponseError as exc:
        exc.status_code = response.status_code
        exc.request_id = request_id
        raise
    if not isinstance(body, dict):
        raise BadResponseError(
            f"{display_name(provider)} sent a JSON {type(body).__name__} where an object "
            "was expected.",
            provider=provider,
            status_code=response.status_code,
            request_id=request_id,
        )
    return body


def error_json(response: httpx2.Response) -> Any:
    """The JSON body of an error response, or None when it has none (or it is not JSON)."""
    try:
        content = response.content
    except Exception:  # an unread streamed response: map by status alone
        return None
    if not content:
        return None
    try:
        return _decode(content)
    except (ValueError, UnicodeDecodeError):
        return None


def error_text(response: httpx2.Response) -> str:
    """A short non-JSON error body (e.g. a proxy's HTML page) for the message."""
    try:
        return response.text[:MAX_QUOTED]
    except Exception:
        return ""


_MISSING = object()


def require(
    obj: Any,
    *path: str | int,
    provider: str,
    what: str = "response",
    status_code: int | None = None,
    request_id: str | None = None,
) -> Any:
    """``obj[path[0]][path[1]]…`` or BadResponseError naming the missing field."""
    cur = obj
    for i, key in enumerate(path):
        try:
            cur = cur[key]
        except (KeyError, IndexError, TypeError):
            cur = _MISSING
        if cur is _MISSING or cur is None:
            name = _dotted(path[: i + 1])
            raise BadResponseError(
                f"The {display_name(provider)} {what} has no `{name}`.",
                hint="The provider's format may have changed, or a proxy altered the reply; "
                "retry, and report it if it persists.",
                provider=provider,
                status_code=status_code,
                request_id=request_id,
                missing=name,
            )
    return cur


def _dotted(path: Iterable[str | int]) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
    return out


def dig(obj: Any, *path: str | int) -> Any:
    """``obj[a][b]…`` or None when any step is missing (for optional fields)."""
    cur = obj
    for key in path:
        try:
            cur = cur[key]
        except (KeyError, IndexError, TypeError):
            return None
    return cur


# --- requests ---------------------------------------------------------------------------------


def json_request(
    url: str,
    headers: Mapping[str, str],
    body: dict[str, Any],
    *,
    stream: bool,
    params: Mapping[str, str] | None = None,
) -> httpx2.Request:
    """A POST with a JSON body; ``Accept`` says whether we expect SSE."""
    import httpx2

    all_headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if stream else "application/json",
    }
    all_headers.update(headers)
    payload = json.dumps(
        body, ensure_ascii=False, separators=(",", ":"), default=_json_default
    ).encode("utf-8")
    parsed, host = _parsed_url(url, params)
    # The headers httpx2.Request(content=...) would end with, in its order (Host first,
    # Content-Length last), given at once: with stream= it does not re-parse and re-scan
    # them (a third of building a request). tests/providers/test_common.py checks the
    # result is the same request.
    raw = [("Host", host), *all_headers.items(), ("Content-Length", str(len(payload)))]
    request = httpx2.Request("POST", parsed, headers=raw, stream=httpx2.ByteStream(payload))
    request.read()  # .content is there, as for a request built with content=
    return request


# Parsed endpoint URLs: a notebook talks to a handful of endpoints, and parsing one
# (httpx2.URL: a regex, percent-encoding checks per character) was a tenth of the client
# CPU of building a request. httpx2.URL is immutable, so one parse serves every request.
_URLS: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[httpx2.URL, str]] = {}
_URLS_MAX = 256


def _parsed_url(url: str, params: Mapping[str, str] | None) -> tuple[httpx2.URL, str]:
    """``url`` (with ``params``) parsed, and its Host header value."""
    import httpx2

    key = (url, tuple(params.items()) if params else ())
    found = _URLS.get(key)
    if found is None:
        parsed = httpx2.URL(url, params=params) if params else httpx2.URL(url)
        found = (parsed, parsed.netloc.decode("ascii"))
        if len(_URLS) >= _URLS_MAX:
            _URLS.clear()  # a process that builds many URLs (base_url per call) stays bounded
        _URLS[key] = found
    return found


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


RESERVED_EXTRA = frozenset({"model", "messages", "stream"})


def reject_reserved(extra: Mapping[str, Any], reserved: Iterable[str] = RESERVED_EXTRA) -> None:
    """Refuse ``extra`` keys that decide what is sent and how the answer is read.

    Overriding the model, the messages or streaming through ``extra`` would break parsing,
    so it is an error rather than a surprise.
    """
    clash = sorted(set(extra) & set(reserved))
    if clash:
        raise ConfigurationError(
            f"ChatRequest.extra may not set {', '.join(map(repr, clash))}.",
            hint="Pass the model, the messages and stream= as the request's own arguments.",
        )


def body_with_extra(
    body: dict[str, Any], request: ChatRequest, reserved: Iterable[str] = RESERVED_EXTRA
) -> dict[str, Any]:
    """``body`` updated with ``request.extra`` (provider-specific parameters pass through)."""
    reject_reserved(request.extra, reserved)
    body.update(request.extra)
    return body


def join_base(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + path


# --- responses: credential, retry hints -----------------------------------------

# The headers that carry the provider's own key: every credential header (the one list,
# redact.CREDENTIAL_HEADERS) but a proxy's (Proxy-Authorization is the proxy's credential,
# not the key a "key …1234 was rejected" message names). ``authorization`` is read first,
# without its scheme.
PROVIDER_KEY_HEADERS: tuple[str, ...] = tuple(
    name for name in CREDENTIAL_HEADERS if name not in PROXY_CREDENTIAL_HEADERS
)


def sent_key(response: httpx2.Response) -> str | None:
    """The credential the request carried, to show its hint and to scrub it from messages.

    ``""`` when the request carried none (a local server without a key); None when the
    response has no request to look at.
    """
    try:
        headers = response.request.headers
    except RuntimeError:  # a Response built without its request (tests, odd callers)
        return None
    for name in PROVIDER_KEY_HEADERS:
        value = headers.get(name)
        if value:
            if name == "authorization" and " " in value:  # "Bearer sk-…": the key alone
                return value.split(" ", 1)[1]
            return value
    return ""


# --- the error tree -----------------------------------------------------------------------------


def build_error(
    cls: type[CencoriError],
    *,
    provider: str,
    status: int | None,
    said: str | None = None,
    code: str | None = None,
    request_id: str | None = None,
    retry_after: float | None = None,
    key: str | None = None,
    hint: str | None = None,
    retryable: bool | None = None,
    headline: str | None = None,
    rpc_status: str | None = None,
) -> CencoriError:
    """A CencoriError with the house message: what happened, what the provider said, what next.

    ``said`` is the provider's own message (scrubbed here); ``key`` is the credential the
    request carried (used for its ``…1234`` hint and scrubbed from ``said``); a ``headline``
    (``headline``) replaces the first sentence when the class's usual one would mislead.
    """
    name = display_name(provider)
    secrets = [key] if key else []
    where = f" ({status})" if status else ""
    quoted = quote(said, secrets) if said else ""
    if quoted and quoted[-1] not in ".!?…":
        quoted += "."
    tail = f" {name} said: {quoted}" if quoted else ""
    if issubclass(cls, AuthenticationError):
        if key == "":
            what = f"{name} refused the request{where}: no key was sent."
            default_hint = f"Set one with `cencori-nb keys set {provider}`."
        else:
            what = (
                f"The {name} key {key_hint(key)} was rejected{where}."
                if key
                else f"The {name} key was rejected{where}."
            )
            default_hint = f"Check it or set a new one with `cencori-nb keys set {provider}`."
    elif issubclass(cls, RateLimitError):
        what = f"{name} rate limit reached{where}."
        default_hint = (
            f"Retry in {retry_after:g} s, or send fewer requests at once."
            if retry_after is not None
            else "Wait a little and retry, or send fewer requests at once."
        )
    elif issubclass(cls, PermissionDeniedError):
        what = f"{name} refused the request{where}."
        default_hint = (
            f"The key was accepted but may not do this: check the {name} "
            "account's permissions, billing and content policy."
        )
    elif issubclass(cls, ProviderTimeoutError):
        what = f"{name} timed out{where}."
        default_hint = "Retry; if it keeps happening, shorten the request or raise the timeout."
    elif issubclass(cls, ProviderUnavailableError):
        what = f"{name} is unavailable{where}."
        default_hint = (
            f"The problem is on {name}'s side: retry later, or use another provider or route."
        )
    elif issubclass(cls, InvalidRequestError):
        what = f"{name} rejected the request as invalid{where}."
        default_hint = "Check the model name and the request parameters."
    else:
        what = f"{name} failed the request{where}."
        default_hint = None
    if headline:
        what = headline
    context: ErrorContext = {
        "provider": provider,
        "status_code": status,
        "request_id": request_id,
        "retry_after": retry_after,
    }
    if rpc_status is not None:
        context["rpc_status"] = rpc_status
    if retryable is not None:
        context["retryable"] = retryable
    return cls(what + tail, code=code, hint=hint or default_hint, **context)


def raw_said(response: httpx2.Response) -> str | None:
    """What a non-JSON error response said: its text, unless it is an HTML page (a proxy's)."""
    if "html" in response.headers.get("content-type", ""):
        return None
    return error_text(response)


def map_error_body(adapter: Provider, response: httpx2.Response, body: Any) -> CencoriError:
    """The error for a >= 400 response whose decoded ``body`` the adapter maps itself.

    Not a JSON object: the class follows the status and the message quotes the raw text.
    Otherwise ``adapter.error_from_body(body, status=, key=, request_id=, retry_after=)``.
    """
    key = sent_key(response)
    request_id = adapter.request_id(response)
    wait = retry_after(response.headers, body)
    if not isinstance(body, dict):
        return build_error(
            error_class(response.status_code),
            provider=adapter.name,
            status=response.status_code,
            said=raw_said(response),
            request_id=request_id,
            retry_after=wait,
            key=key,
        )
    return adapter.error_from_body(
        body, status=response.status_code, key=key, request_id=request_id, retry_after=wait
    )


class StreamContext(TypedDict):
    """What a stream parser knows of its response before the first event."""

    request_id: str | None
    key: str | None  # the key the request carried (scrubbed from in-stream error messages)


def stream_context(adapter: Provider, response: httpx2.Response | None) -> StreamContext:
    """``request_id`` and ``key`` for an adapter's stream parser (both None without a response)."""
    if response is None:
        return {"request_id": None, "key": None}
    return {"request_id": adapter.request_id(response), "key": sent_key(response)}


# --- streams ------------------------------------------------------------------------------------


class BaseStreamParser(StreamParser):
    """Accumulates text, model, finish reason and usage; subclasses implement ``feed``."""

    def __init__(self, provider: str, request_id: str | None = None) -> None:
        self.provider = provider
        self.done = False
        self.parts: list[str] = []
        self.model: str | None = None
        self.usage: Usage | None = None
        self._impossible: Usage | None = None  # self.usage, found impossible by result()
        self.finish_reason: str | None = None
        self.request_id = request_id
        self.served_by: str | None = None
        self.gateway_cost_usd: Decimal | None = None
        self.reported_cost_usd: Decimal | None = None
        self.refusal: str | None = None

    def json(self, event: httpx2.ServerSentEvent) -> Any:
        data = event.data
        try:  # once per event: the decoder's C scanner straight away
            value, end = _SCAN(data, 0)
            if end == len(data):
                return decoded(value, data)  # as _decode: no lone surrogate gets out
        except (StopIteration, ValueError, TypeError):
            pass
        # not one bare JSON value: what loads says (whitespace around it, or its error)
        return loads(data, provider=self.provider, what="stream event")

    def emit(self, text: Any) -> str | None:
        if isinstance(text, str) and text:
            self.parts.append(text)
            return text
        return None

    def result(self) -> ProviderResult:
        usage = self.usage
        if usage is not None and usage is self._impossible:
            usage = None  # an earlier result() dropped it and said so: once per stream
        result = ProviderResult(
            text="".join(self.parts),
            model=self.model,
            usage=usage,
            finish_reason=self.finish_reason,
            request_id=self.request_id,
            gateway_cost_usd=self.gateway_cost_usd,
            served_by=self.served_by,
            reported_cost_usd=self.reported_cost_usd,
            refusal=self.refusal,
        )
        if usage is not None and result.usage is None:  # impossible (ProviderResult)
            self._impossible = usage
        # a cost no request has is dropped (ProviderResult) and said so once
        self.gateway_cost_usd = result.gateway_cost_usd
        self.reported_cost_usd = result.reported_cost_usd
        return result


class AdapterStreamParser(BaseStreamParser):
    """A stream parser that maps in-stream errors through its adapter's ``error_from_body``,
    scrubbing the ``key`` the request carried from the message."""

    adapter: Provider

    def __init__(
        self, adapter: Provider, *, request_id: str | None = None, key: str | None = None
    ) -> None:
        super().__init__(adapter.name, request_id)
        self.adapter = adapter
        # kept sealed: the parser lives as long as the stream object a notebook holds (and
        # the frames a failed stream leaves to %debug), where a clear key could be read
        self._key: Secret | str | None = Secret(key) if key else key

    @property
    def key(self) -> str | None:
        """The key the request carried ("" none, None unknown), opened for the one message
        that scrubs it."""
        return self._key.reveal() if isinstance(self._key, Secret) else self._key
