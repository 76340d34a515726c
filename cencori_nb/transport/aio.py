"""aiohttp's client under httpx2's async API: the transport of the batch loop's ``AsyncClient``.

Why: on a batch (``map`` at concurrency 64 against a 50 ms server) httpx2's own async stack
(httpcore2, h11, anyio) took about 1.4 ms of client CPU a request on the shared machine;
the same ``httpx2.AsyncClient`` over this transport took about 0.5 ms, and aiohttp alone
0.3 ms (docs/benchmarks.md, "Batch"). Everything above the transport stays httpx2's: the
adapters build ``httpx2.Request`` objects, :func:`~cencori_nb.transport.asend` retries and
maps errors with the one table, the SSE reader iterates ``httpx2.Response``. This module is
a translation, not an HTTP implementation: aiohttp does the protocol.

What it keeps equal to httpx2's own transport (tests/transport/test_aio.py):

- the bytes on the wire: the request's headers exactly (aiohttp adds no ``User-Agent``,
  ``Accept`` or ``Accept-Encoding`` of its own), its body, no redirects followed, the
  response body undecoded (httpx2 decodes ``Content-Encoding`` itself);
- the request's timeouts (``request.extensions["timeout"]``: connect, read, pool);
- TLS verification with httpx2's default context, and proxies from the environment (read
  once, like httpx2; ``NO_PROXY`` honoured);
- failures as httpx2's exceptions (timeouts, connect errors, a peer that closes early,
  broken HTTP), so :func:`~cencori_nb.transport.map_exception` names them as before;
- streaming: the body is read as it arrives (an SSE stream is not buffered to its end).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx2

if TYPE_CHECKING:
    import aiohttp

__all__ = ["AiohttpSender", "AiohttpTransport"]

# aiohttp adds these unless told not to; httpx2's transport sends only the request's own.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding")


def _translate(exc: BaseException, request: httpx2.Request) -> BaseException:
    """The httpx2 exception httpx2's own transport raises for the same failure."""
    import aiohttp

    message = str(exc) or type(exc).__name__
    cls: type[httpx2.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        cls = httpx2.ConnectTimeout
    elif isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        cls = httpx2.ReadTimeout
    elif isinstance(exc, aiohttp.ClientConnectorError):
        cls = httpx2.ConnectError
    elif isinstance(
        exc,
        aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientResponseError,
    ):
        cls = httpx2.RemoteProtocolError
    elif isinstance(exc, aiohttp.ClientOSError | OSError):
        cls = httpx2.ReadError
    else:
        cls = httpx2.TransportError
    return cls(message, request=request)


def _client_errors() -> tuple[type[BaseException], ...]:
    import aiohttp

    return (aiohttp.ClientError, TimeoutError, OSError)


class _ResponseStream(httpx2.AsyncByteStream):
    """The response body as aiohttp receives it; closing releases the connection."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx2.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except _client_errors() as exc:
            raise _translate(exc, self._request) from exc

    async def read_all(self) -> bytes:
        """The whole body at once (aiohttp's own read), the connection released."""
        try:
            return await self._response.read()
        except _client_errors() as exc:
            raise _translate(exc, self._request) from exc
        finally:
            self._response.release()

    async def aclose(self) -> None:
        self._response.release()


class AiohttpSender:
    """Sends ``httpx2.Request`` objects straight on an :class:`AiohttpTransport`, without
    ``httpx2.AsyncClient.send``'s layers (its auth and redirect generators, hooks, cookie
    jar and stream wrappers: about a sixth of a batch request's client CPU against the
    sandbox, docs/benchmarks.md). What ``AsyncClient.send`` adds to our requests it adds
    too (:func:`~.direct.prepare`: timeouts, Basic auth from a URL), and it logs httpx2's
    INFO line. The transport belongs to the loop's ``AsyncClient``, which closes it."""

    def __init__(self, transport: AiohttpTransport, timeout: dict[str, float | None]) -> None:
        self._transport = transport
        self._timeout = {"timeout": dict(timeout)}

    async def send(self, request: httpx2.Request, *, stream: bool = False) -> httpx2.Response:
        """Send ``request``; the body is read unless ``stream`` (then the caller closes)."""
        from .direct import load, log_response, prepare

        prepare(request, self._timeout)
        response = await self._transport.handle_async_request(request)
        response.request = request
        if not stream:
            body_stream = response.stream
            try:
                if isinstance(body_stream, _ResponseStream) and (
                    "content-encoding" not in response.headers
                ):
                    load(response, await body_stream.read_all())
                else:
                    await response.aread()  # decoded by httpx2, as the client's responses
            except BaseException:
                await response.aclose()
                raise
        log_response(request, response)
        return response


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """An ``httpx2.AsyncBaseTransport`` that sends with one ``aiohttp.ClientSession``.

    The session (and its connection pool: ``max_connections``, idle connections kept
    ``keepalive_expiry`` seconds) is opened on the first request, on the running loop; like
    any ``AsyncClient`` the owner uses it on that loop only and closes it there.
    """

    def __init__(self, *, max_connections: int, keepalive_expiry: float) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[str, Any] = {}

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp
        from aiohttp.helpers import proxies_from_env

        from .pool import ssl_context

        # Proxies from the environment, read once as httpx2 reads them once per client (not
        # aiohttp's trust_env, which looks them up, and ~/.netrc, in a thread per request,
        # and would add netrc credentials beside our Authorization header).
        self._proxies = proxies_from_env()

        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            keepalive_timeout=self._keepalive_expiry,
            ssl=ssl_context(),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self._session

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        import aiohttp
        from yarl import URL

        session = self._session or self._open()
        timeout = request.extensions.get("timeout") or {}
        target = request.url
        if target.userinfo:
            # Credentials in the URL are in the Authorization header already (httpx2's
            # clients and AiohttpSender put them there); aiohttp refuses both at once.
            target = target.copy_with(userinfo=b"")
        url = URL(str(target), encoded=True)
        proxy = self._proxy_for(url)
        try:
            body = await request.aread()
            response = await session.request(
                request.method,
                url,
                proxy=proxy.proxy if proxy is not None else None,
                proxy_auth=proxy.proxy_auth if proxy is not None else None,
                headers=_headers(request),
                data=body or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        except _client_errors() as exc:
            raise _translate(exc, request) from exc
        return httpx2.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_ResponseStream(response, request),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": _reason(response)},
        )

    def _proxy_for(self, url: Any) -> Any:
        """The environment's proxy for ``url`` (None: direct), honouring ``NO_PROXY``; never
        for loopback (``egress.direct_to``: the proxy would get the key in plain http)."""
        if not self._proxies:
            return None
        from urllib.request import proxy_bypass

        from ..egress import direct_to

        info = self._proxies.get(url.scheme)
        if info is None or (url.host and (direct_to(url.host) or proxy_bypass(url.host))):
            return None
        return info

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
            await asyncio.sleep(0)  # let the connections' close callbacks run on this loop


def _headers(request: httpx2.Request) -> Any:
    """The request's headers as sent, in order (a multidict: a name may repeat)."""
    from multidict import CIMultiDict

    return CIMultiDict(
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers.raw
    )


def _reason(response: aiohttp.ClientResponse) -> bytes:
    return (response.reason or "").encode("latin-1", "replace")
