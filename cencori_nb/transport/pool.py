"""The pooled HTTP clients every request goes out on, their timeouts and limits.

- **Pooling**: one sync sender per process (a forked child builds its own): httpcore2's
  pool driven directly (:mod:`.direct`, the lighter half of httpx2), or an
  ``httpx2.Client`` when the environment names a proxy or a test injected a transport;
  one ``httpx2.Client`` per process for callers that want a client, and one
  ``httpx2.AsyncClient`` per event loop (an ``AsyncClient`` is bound to the loop that opened
  its connections; it is closed when that loop shuts down), keep-alive on, limits sized for
  about a hundred concurrent requests. On a loop registered with :func:`use_aiohttp_on`
  (the batch runner's private loop) the async client sends over aiohttp's (:mod:`.aio`),
  a third of the CPU a request of httpx2's own async stack; other loops keep httpx2's,
  because an aiohttp session left open when its loop is dropped without a shutdown (a
  kernel's loop, ``new_event_loop()`` never closed) prints "Unclosed client session" at
  exit, where httpx2's stays silent. Tests inject ``httpx2.MockTransport`` with
  :func:`set_transport`.
- **Timeouts**: connect 10 s, read 60 s (Cencori's per-attempt figure; ``CENCORI_NB_TIMEOUT``
  overrides it, also in a running process: the clients are registered with
  :mod:`cencori_nb.state` and rebuilt at the next call when it changes), write/pool 60 s.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from .. import state
from ..egress import DIRECT_MOUNTS
from ..errors import ConfigurationError
from .logs import install_log_redaction

if TYPE_CHECKING:
    import httpx2

__all__ = [
    "AsyncSender",
    "Sender",
    "get_async_client",
    "get_async_sender",
    "get_client",
    "get_sender",
    "read_timeout",
    "set_transport",
    "use_aiohttp_on",
]

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
MAX_CONNECTIONS = 128  # batch concurrency of ~100 plus headroom
MAX_KEEPALIVE = 100
KEEPALIVE_EXPIRY = 30.0
USER_AGENT = "cencori-nb/0.1.0"


class Sender(Protocol):
    """What :func:`~cencori_nb.transport.send` sends with: ``httpx2.Client.send``'s shape."""

    def send(self, request: httpx2.Request, *, stream: bool = False) -> httpx2.Response: ...

    def close(self) -> None: ...


class AsyncSender(Protocol):
    """What :func:`~cencori_nb.transport.asend` sends with: ``httpx2.AsyncClient.send``'s
    shape."""

    async def send(self, request: httpx2.Request, *, stream: bool = False) -> httpx2.Response: ...


_lock = threading.Lock()
_client: httpx2.Client | None = None
_client_pid = 0
_sender: Sender | None = None
_sender_pid = 0
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx2.AsyncClient] = (
    weakref.WeakKeyDictionary()
)
_closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any]] = (
    weakref.WeakKeyDictionary()
)
_aiohttp_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_async_senders: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncSender] = (
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
        raise ConfigurationError(
            f"{ENV_TIMEOUT}={raw[:40]!r} is not a number of seconds.",
            hint="Set it to a value between 0 and 3600, or unset it.",
        )
    return value


def _default_ssl_context() -> Any:
    import httpcore2

    return httpcore2.default_ssl_context(_trust_env=True)


# The TLS context every connection verifies with: httpx2's default (SSL_CERT_FILE or
# SSL_CERT_DIR when set, else the system's CA store), built once per process and shared by
# the sync sender and the batch loop's aiohttp connector; loading the CA store is ~30 ms
# of CPU, paid once instead of once per client. Rebuilt when either variable changes.
_ssl = state.register(
    "transport.ssl_context", open=_default_ssl_context, env=("SSL_CERT_FILE", "SSL_CERT_DIR")
)


def ssl_context() -> Any:
    """The process's shared TLS context (``httpcore2.default_ssl_context``, as httpx2's)."""
    return _ssl.get()


def _timeout() -> httpx2.Timeout:
    import httpx2

    return httpx2.Timeout(read_timeout(), connect=CONNECT_TIMEOUT)


def _client_options() -> dict[str, Any]:
    import httpx2

    return {
        "timeout": _timeout(),
        "limits": httpx2.Limits(
            max_connections=MAX_CONNECTIONS,
            max_keepalive_connections=MAX_KEEPALIVE,
            keepalive_expiry=KEEPALIVE_EXPIRY,
        ),
        "headers": {"user-agent": USER_AGENT},
        "follow_redirects": False,  # a redirect from an API is a wrong base URL, not a hop
        # loopback never through an environment proxy (it would get the key in plain http)
        "mounts": dict.fromkeys(DIRECT_MOUNTS),
    }


def get_client() -> httpx2.Client:
    """The process-wide pooled ``httpx2.Client`` (created on first use; a forked child gets
    its own, never the parent's sockets)."""
    state.check()
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


def get_sender() -> Sender:
    """The process-wide sender of sync requests (created on first use, one per process).

    httpcore2's pool driven directly (:class:`~.direct.DirectSender`), unless the
    environment names a proxy (then the ``httpx2.Client`` of :func:`get_client`, whose
    proxy routing honours ``NO_PROXY``) or a test injected a transport (the same client
    over it).
    """
    state.check()
    sender = _sender
    if sender is not None and _sender_pid == os.getpid():
        return sender
    return _make_sender()


def _make_sender() -> Sender:
    global _sender, _sender_pid
    if _transport is not None or _proxy_in_environment():
        client: Sender = get_client()
        with _lock:
            _sender, _sender_pid = client, os.getpid()
        return client
    from .direct import DirectSender

    with _lock:
        if _sender is None or _sender_pid != os.getpid():
            install_log_redaction()
            _sender = DirectSender(
                timeout=_timeout().as_dict(),
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=MAX_KEEPALIVE,
                keepalive_expiry=KEEPALIVE_EXPIRY,
                ssl_context=ssl_context(),
            )
            _sender_pid = os.getpid()
        return _sender


def _proxy_in_environment() -> bool:
    """Whether the environment names a proxy httpx2 would use (``HTTP_PROXY``,
    ``HTTPS_PROXY``, ``ALL_PROXY`` in either case), read when the sender is built, as
    httpx2 reads it when a client is built."""
    from urllib.request import getproxies_environment

    return any(scheme != "no" and url for scheme, url in getproxies_environment().items())


def get_async_client() -> httpx2.AsyncClient:
    """The pooled ``httpx2.AsyncClient`` of the running event loop (one per loop).

    It is closed when its loop shuts down (``asyncio.run`` finalises async generators, and
    a small one per client closes it), so no connection outlives its loop.
    """
    state.check()
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        import httpx2

        install_log_redaction()
        transport = _async_transport
        if transport is None and loop in _aiohttp_loops:
            from .aio import AiohttpSender

            transport = _aiohttp_transport()
            # requests go straight onto the transport; the client owns and closes it
            _async_senders[loop] = AiohttpSender(transport, _timeout().as_dict())
        client = httpx2.AsyncClient(transport=transport, **_client_options())
        _async_clients[loop] = client
        closer = _close_with_loop(client)
        # The loop holds async generators weakly: keep the closer alive with the client.
        _closers[loop] = (closer, loop.create_task(_arm(closer)))
    return client


def get_async_sender() -> AsyncSender:
    """What the running loop's async requests go out with: on a loop registered with
    :func:`use_aiohttp_on`, the aiohttp transport driven directly (:class:`~.aio.
    AiohttpSender`); elsewhere the loop's ``httpx2.AsyncClient``."""
    client = get_async_client()
    sender = _async_senders.get(asyncio.get_running_loop())
    return client if sender is None else sender


def use_aiohttp_on(loop: asyncio.AbstractEventLoop) -> None:
    """Send ``loop``'s requests over aiohttp (:mod:`.aio`) from its next client on.

    Only for a loop whose owner shuts it down properly at the end (``shutdown_asyncgens``,
    which closes the loop's client): the batch runner's private loop does, at exit.
    """
    _aiohttp_loops.add(loop)


def _aiohttp_transport() -> Any:
    """aiohttp's client under httpx2's API (:mod:`.aio`): a third of httpx2's own client CPU
    a request, which is what a batch at concurrency 64 is bound by."""
    from .aio import AiohttpTransport

    return AiohttpTransport(max_connections=MAX_CONNECTIONS, keepalive_expiry=KEEPALIVE_EXPIRY)


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
    global _client, _sender
    with _lock:
        client, _client = _client, None
        sender, _sender = _sender, None
    if sender is not None and sender is not client and _sender_pid == os.getpid():
        sender.close()
    if client is not None:
        client.close()
    # Async clients belong to their loops, which close them on shutdown; forget them here
    # rather than awaiting a close on a foreign loop.
    _async_clients.clear()
    _async_senders.clear()
    _closers.clear()


# The clients are built with CENCORI_NB_TIMEOUT's read timeout: rebuilt when it changes,
# and with the shared TLS context: rebuilt when the CA variables change.
state.on_reset(
    "transport.clients", _close_clients, env=(ENV_TIMEOUT, "SSL_CERT_FILE", "SSL_CERT_DIR")
)
state.on_reset("transport.injected", set_transport, env=())  # tests' MockTransports
