"""The one retry policy, sans-I/O: whether to send again, and after how long.

:func:`next_wait` sleeps nothing and sends nothing, so :func:`~cencori_nb.transport.send`,
:func:`~cencori_nb.transport.asend`, the stream opener and the batch runner all obey the same
rule: on 429, 409, 5xx, timeouts and connection errors, at most ``retries`` more attempts
(default 3) with exponential backoff and full jitter, except that the server's own wait is
honoured exactly and its ``x-should-retry: true|false`` overrides the status. A wait longer
than :data:`MAX_RETRY_WAIT` is *not* slept through: the error is raised at once with its
``retry_after`` so the caller (a notebook user, the batch runner) decides. Never retried:
400/401/402/403/404/422, credit and spend-cap errors, out-of-quota and no-price errors.

:func:`retry_after` is the one parser of every wait a server asks for (``retry-after-ms``,
``Retry-After`` seconds or HTTP date, Cencori's ``retry_after_ms`` / ``retry_after``,
Google's ``RetryInfo.retryDelay``).
"""

from __future__ import annotations

import datetime
import email.utils
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import CencoriError, RateLimitError
from .clock import Clock, current_clock

if TYPE_CHECKING:
    import httpx2

__all__ = [
    "DEFAULT_RETRIES",
    "MAX_RETRY_WAIT",
    "PACED_MAX_WAIT",
    "PACED_RATE_LIMIT_RETRIES",
    "backoff_wait",
    "is_retryable",
    "next_wait",
    "retry_after",
    "retry_after_from_response",
    "retryable_code",
    "should_retry_header",
]

DEFAULT_RETRIES = 3  # Cencori's gateway retries three times too
BACKOFF_BASE = 0.5  # seconds; attempt n waits up to BASE * 2**n (full jitter)
MAX_RETRY_WAIT = 60.0  # never sleep longer than this for one retry
PACED_RATE_LIMIT_RETRIES = 20  # a self-pacing batch: 429s are pacing, not failure
PACED_MAX_WAIT = 120.0  # ... and it waits out a longer Retry-After, shared by all rows

# Statuses that are the caller's fault (or a money decision): retrying cannot help.
NEVER_RETRY_STATUS = frozenset({400, 401, 402, 403, 404, 422})

# Codes that waiting cannot fix although their class is normally retried.
_NOT_RETRYABLE_CODES = frozenset({"insufficient_quota", "pricing_unavailable"})


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
    draw = random() if random is not None else (clock or current_clock()).random()
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
