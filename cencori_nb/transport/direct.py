"""httpx2's own engine without its client: sync requests straight onto httpcore2's pool.

Why: a ``chat`` spent more client CPU in ``httpx2.Client.send`` and the ``HTTPTransport``
under it (auth and redirect generators, event hooks, cookie extraction, the request log
line, httpx2's stream wrappers and content decoders layered per chunk) than in all of its
own bookkeeping; on this machine the same request sent straight on httpcore2's connection
pool took about 0.7x the client CPU of ``httpx2.Client.post`` (docs/benchmarks.md, "The
sync send path"). httpcore2 is what ``httpx2.HTTPTransport`` sends with: the bytes on the
wire, TLS and the connection pool are the same; this module is a translation, not an HTTP
implementation. The adapters still build ``httpx2.Request`` objects and read
``httpx2.Response`` objects.

What it keeps equal to ``httpx2.Client(...).send`` (tests/transport/test_direct.py):

- the request exactly as built (method, URL, headers in order, body): ``Client.send`` adds
  nothing to a request built outside the client but its timeouts, which are added here
  from the same values when the request carries none;
- no redirects followed (the pool's client has ``follow_redirects=False``), no cookies kept
  (the client's jar is only sent by ``Client.build_request``, which we never use);
- TLS verification with httpx2's default context (``SSL_CERT_FILE``/``SSL_CERT_DIR``
  honoured), the same pool limits and keep-alive expiry, HTTP/1.1;
- the response: status, headers as received, the body decoded by ``httpx2.Response``
  itself (``Content-Encoding``), ``response.request`` set, streamed bodies read as they
  arrive and the connection released on close;
- failures as httpx2's exceptions (the same httpcore2 → httpx2 mapping ``HTTPTransport``
  applies), so :func:`~cencori_nb.transport.map_exception` names them as before.

Proxies: when the environment names one (``HTTPS_PROXY`` …), :mod:`.pool` keeps the
``httpx2.Client`` (its proxy routing and ``NO_PROXY`` rules); so do tests that inject a
transport.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpcore2
import httpx2

__all__ = ["DirectSender", "load", "log_response", "prepare"]

# httpx2's logger and its INFO line per request, so a notebook that turned on
# logging.INFO to watch its requests (a common habit with httpx) still sees them; the
# redaction filter of .logs is on this logger like on every HTTP-stack logger.
_log = logging.getLogger("httpx2")


# httpcore2's exceptions and the httpx2 ones ``HTTPTransport`` raises for them, the most
# specific first (a ``ReadTimeout`` is also a ``TimeoutException``). This module is imported
# only when the sender is built, so httpcore2 is loaded by then anyway.
_PAIRS: tuple[tuple[type[BaseException], type[httpx2.TransportError]], ...] = (
    (httpcore2.ConnectTimeout, httpx2.ConnectTimeout),
    (httpcore2.ReadTimeout, httpx2.ReadTimeout),
    (httpcore2.WriteTimeout, httpx2.WriteTimeout),
    (httpcore2.PoolTimeout, httpx2.PoolTimeout),
    (httpcore2.TimeoutException, httpx2.TimeoutException),
    (httpcore2.ConnectError, httpx2.ConnectError),
    (httpcore2.ReadError, httpx2.ReadError),
    (httpcore2.WriteError, httpx2.WriteError),
    (httpcore2.NetworkError, httpx2.NetworkError),
    (httpcore2.ProxyError, httpx2.ProxyError),
    (httpcore2.UnsupportedProtocol, httpx2.UnsupportedProtocol),
    (httpcore2.RemoteProtocolError, httpx2.RemoteProtocolError),
    (httpcore2.LocalProtocolError, httpx2.LocalProtocolError),
    (httpcore2.ProtocolError, httpx2.ProtocolError),
)
_CORE_ERRORS: tuple[type[BaseException], ...] = tuple(core for core, _ours in _PAIRS)


def _translate(exc: BaseException, request: httpx2.Request) -> BaseException:
    """The httpx2 exception for an httpcore2 one (the exception itself if it is not one)."""
    for core, ours in _PAIRS:
        if isinstance(exc, core):
            return ours(str(exc), request=request)
    return exc


class _BodyStream(httpx2.SyncByteStream):
    """A streamed body as httpcore2 receives it; closing releases the connection."""

    def __init__(self, response: httpcore2.Response, request: httpx2.Request) -> None:
        self._response = response
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._response.iter_stream()
        except _CORE_ERRORS as exc:
            raise _translate(exc, self._request) from exc

    def close(self) -> None:
        self._response.close()


def prepare(request: httpx2.Request, timeout: dict[str, Any]) -> Any:
    """What ``httpx2.Client.send`` adds to a request built outside the client: the client's
    timeouts (``timeout``: ``{"timeout": {...}}``) when the request carries none, and Basic
    auth from credentials in its URL (egress refuses such base URLs; a caller-built
    request gets the same bytes either way). Returns the request's extensions."""
    url = request.url
    if url.userinfo:
        next(httpx2.BasicAuth(url.username, url.password).sync_auth_flow(request))
    extensions: Any = request.extensions
    if "timeout" not in extensions:
        extensions = {**extensions, **timeout}
        request.extensions = extensions
    return extensions


def log_response(request: httpx2.Request, response: httpx2.Response) -> None:
    """httpx2's INFO line per request (see ``_log``)."""
    if _log.isEnabledFor(logging.INFO):
        _log.info(
            'HTTP Request: %s %s "%s %d %s"',
            request.method,
            request.url,
            response.http_version,
            response.status_code,
            response.reason_phrase,
        )


def load(response: httpx2.Response, body: bytes) -> None:
    """Give ``response`` its body, read: what ``response.read()`` leaves behind.

    An identity-encoded body (every API answer we have seen) is the content as it is:
    ``read()`` would pass it through httpx2's decoder chain and byte chunker, a quarter of
    what receiving it cost. Anything with a ``Content-Encoding`` goes through ``read()``,
    which decodes it as the client's responses are decoded. (``_content`` is where
    ``Response.read`` keeps the body; tests/transport/test_direct.py compares the result
    with a client's response, so a change in httpx2 fails there, not in a notebook.)
    """
    if "content-encoding" in response.headers:
        response.read()
        return
    response._content = body  # noqa: SLF001
    response.is_stream_consumed = True
    response.is_closed = True


# A request's bytes held back until they are sent as one: past this, as they are written
# (a job's upload of many megabytes is not gathered in memory first).
MAX_HELD_BYTES = 64 * 1024


class _HeldWrites:
    """A connection's stream that holds a request's writes until its first read, then sends
    them with one call.

    httpcore2 writes the head of a request and its body separately: two system calls and,
    on loopback, two wake-ups of the server for one request. Held together they are one
    (about 0.05x raw httpx2's client CPU and 0.07x its wall time per chat against the
    sandbox; docs/benchmarks.md). HTTP/1.1 is write-everything-then-read, so nothing
    waits for bytes held here. A write error when they go out at the first read is
    dropped, as httpcore2 drops one while it sends a request: the read that follows gets
    the server's early answer or its close.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._timeout: float | None = None

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        self._held.append(buffer)
        self._held_bytes += len(buffer)
        self._timeout = timeout
        if self._held_bytes >= MAX_HELD_BYTES:
            self._send()

    def _send(self) -> None:
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        self._held_bytes = 0
        self._inner.write(data, self._timeout)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._held:
            try:
                self._send()
            except httpcore2.WriteError:
                pass  # read what the server said (httpcore2's own rule for write errors)
        data: bytes = self._inner.read(max_bytes, timeout)
        return data

    def close(self) -> None:
        self._held.clear()
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> _HeldWrites:
        if self._held:
            self._send()
        return _HeldWrites(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _HoldingBackend:
    """httpcore2's sync network backend, its streams wrapped in :class:`_HeldWrites`."""

    def __init__(self) -> None:
        self._inner = httpcore2.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> _HeldWrites:
        return _HeldWrites(
            self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> _HeldWrites:
        return _HeldWrites(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class DirectSender:
    """Sends ``httpx2.Request`` objects on one ``httpcore2.ConnectionPool``.

    ``timeout`` is httpx2's timeout dict (``connect``, ``read``, ``write``, ``pool``), used
    for a request that carries none, as ``httpx2.Client.send`` does; ``ssl_context`` the
    process's shared one (:func:`~cencori_nb.transport.pool.ssl_context`).
    """

    def __init__(
        self,
        *,
        timeout: dict[str, float | None],
        max_connections: int,
        max_keepalive_connections: int,
        keepalive_expiry: float,
        ssl_context: Any,
    ) -> None:
        self._timeout = {"timeout": dict(timeout)}
        self._pool = httpcore2.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=_HoldingBackend(),  # type: ignore[arg-type]
        )

    def send(self, request: httpx2.Request, *, stream: bool = False) -> httpx2.Response:
        """Send ``request``; the body is read unless ``stream`` (then the caller closes)."""
        url = request.url
        extensions = prepare(request, self._timeout)
        try:
            content: Any = request.content  # read already: every request json_request builds
        except httpx2.RequestNotRead:
            content = request.stream  # e.g. a job's multipart upload: sent as read, not copied
        core = httpcore2.Request(
            method=request.method,
            url=httpcore2.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=request.headers.raw,
            content=content,
            extensions=extensions,
        )
        try:
            answer = self._pool.handle_request(core)
            if not stream:
                try:
                    body = answer.read()
                finally:
                    answer.close()
        except _CORE_ERRORS as exc:
            raise _translate(exc, request) from exc
        response = httpx2.Response(
            answer.status,
            headers=answer.headers,
            stream=_BodyStream(answer, request) if stream else httpx2.ByteStream(body),
            request=request,
            extensions=answer.extensions,
        )
        if not stream:
            load(response, body)
        log_response(request, response)
        return response

    def close(self) -> None:
        self._pool.close()
