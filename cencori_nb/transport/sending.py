"""Sending a request: the shared client, the retry policy and the error table, together.

Everything that goes over the network to a provider or to the Cencori gateway passes through
:func:`send` / :func:`asend`: the pooled client (:mod:`.pool`) sends it, an error status or
an httpx2 exception becomes a :class:`~cencori_nb.errors.CencoriError` (:mod:`.errors`, or
the adapter's ``map_error``), and :func:`~cencori_nb.transport.retry.next_wait` decides
whether and when to send again; the waits go through the :class:`~.clock.Clock`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import CencoriError
from .clock import Clock, current_clock
from .errors import error_for_status, httpx_errors, map_exception, redirect_error
from .logs import _ensure_redaction
from .pool import AsyncSender, Sender, get_async_sender, get_sender
from .retry import DEFAULT_RETRIES, next_wait, should_retry_header

if TYPE_CHECKING:
    import httpx2

__all__ = ["MapError", "asend", "send"]

# The package's logger (one name for the redaction filter and for users' logging config).
log = logging.getLogger("cencori_nb.transport")


MapError = Callable[["httpx2.Response"], CencoriError]


def _status_error(
    response: httpx2.Response, map_error: MapError | None, provider: str | None
) -> CencoriError:
    if response.status_code < 400:  # a redirect: never followed (it would carry the key)
        return redirect_error(response, provider=provider)
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
    client: Sender | None = None,
) -> httpx2.Response:
    """Send ``request`` on the shared sender with bounded retries; return a 2xx response (a
    redirect is an error, never followed).

    ``stream=True`` returns the response unread (the caller iterates and closes it).
    ``map_error`` (an adapter's ``map_error``) turns an error response into our error; a
    response with status >= 400 is always read first so the mapper can look at the body.
    Raises a :class:`CencoriError` (``from`` the httpx2 exception for transport failures).
    """
    clock = clock or current_clock()
    attempts = 1 + (DEFAULT_RETRIES if retries is None else max(0, retries))  # for the log
    _ensure_redaction()
    http = client or get_sender()
    errors = httpx_errors()
    attempt = 0
    while True:
        response: httpx2.Response | None = None
        try:
            response = http.send(request, stream=stream)
            if response.status_code < 300:
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
    client: AsyncSender | None = None,
) -> httpx2.Response:
    """The async twin of :func:`send`, on the running loop's shared sender."""
    clock = clock or current_clock()
    attempts = 1 + (DEFAULT_RETRIES if retries is None else max(0, retries))  # for the log
    _ensure_redaction()
    http = client or get_async_sender()
    errors = httpx_errors()
    attempt = 0
    while True:
        response: httpx2.Response | None = None
        try:
            response = await http.send(request, stream=stream)
            if response.status_code < 300:
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
