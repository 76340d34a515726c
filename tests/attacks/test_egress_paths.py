"""The paths a request takes after the URL check: environment proxies and the exceptions a
failed request leaves behind.

- A proxy named by the environment (``HTTP_PROXY``, ``ALL_PROXY``, either case) must never
  see a loopback request: a local server (LiteLLM, Ollama, a tunnel) gets the stored key in
  plain http, and through the proxy that key would cross to the proxy's host. The proxy
  here is a real recording HTTP server on 127.0.0.1 standing in for a remote one; the
  assertions are what it and the real destination RECEIVED, for every way of sending (the
  sync sender, a stream, the async client and the batch loop's aiohttp transport).
- A failed request's exception chain (``err.__cause__`` is httpx2's exception, which keeps
  its request) must not hand out the key: everything reachable from the error is searched.
"""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

import cencori_nb
from cencori_nb import keys, settings
from cencori_nb.egress import UnsafeURLError
from cencori_nb.errors import CencoriError
from cencori_nb.redact import MARKER
from cencori_nb.transport.clock import set_clock
from cencori_nb.transport.errors import map_exception
from tests.attacks.audit import Audit, reachable_texts
from tests.attacks.support import CANARIES, RecordingSandbox

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "google": "gemini-2.5-flash"}
PREFIXES = {"openai": "/openai/v1", "anthropic": "/anthropic", "google": "/google"}


class _RecordingProxy(http.server.BaseHTTPRequestHandler):
    """A forward proxy that records what it is asked for and refuses it (502)."""

    seen: list[tuple[str, dict[str, str], bytes]]

    def _record(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append((self.requestline, dict(self.headers), body))
        self.send_response(502)
        self.send_header("content-length", "0")
        self.end_headers()

    do_POST = do_GET = do_CONNECT = _record

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def _proxy() -> Iterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    seen: list[tuple[str, dict[str, str], bytes]] = []
    handler = type("Handler", (_RecordingProxy,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(
    _proxy: tuple[str, list[tuple[str, dict[str, str], bytes]]],
) -> tuple[str, list[tuple[str, dict[str, str], bytes]]]:
    _proxy[1].clear()
    return _proxy


class _NoSleep:
    """A transport clock whose retry waits pass at once."""

    def sleep(self, seconds: float) -> None:
        pass

    async def asleep(self, seconds: float) -> None:
        pass

    def time(self) -> float:
        import time

        return time.time()

    def random(self) -> float:
        return 0.5


@pytest.fixture
def no_sleep() -> Iterator[None]:
    previous = set_clock(_NoSleep())
    yield
    set_clock(previous)


def _send(how: str, model: str) -> None:
    if how == "chat":
        cencori_nb.chat("through a proxy?", model=model)
    elif how == "stream":
        with cencori_nb.stream("through a proxy?", model=model) as s:
            assert "".join(s)
    elif how == "achat":
        asyncio.run(cencori_nb.achat("through a proxy?", model=model))
    else:
        rows = cencori_nb.map(["one", "two"], model=model, progress=False)
        assert rows["error"].isna().all(), rows["error"].tolist()


# ============================================================ environment proxies


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
@pytest.mark.parametrize("how", ["chat", "stream", "achat", "map"])
def test_a_loopback_request_never_goes_through_an_environment_proxy(
    srv: RecordingSandbox,
    proxy: tuple[str, list[Any]],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    how: str,
) -> None:
    """A local server on a loopback base URL gets the stored key; the environment's proxy
    gets nothing (before: every request, ``Authorization: Bearer <key>`` in clear, and its
    502 reported as the provider being down)."""
    url, seen = proxy
    monkeypatch.setenv(variable, url)
    keys.set("openai", CANARIES["openai"])
    settings.update_settings(base_urls={"openai": f"{srv.url}/openai/v1"})
    _send(how, "gpt-4o-mini")
    assert seen == []
    assert set(srv.keys_received()) == {CANARIES["openai"]}


@pytest.mark.parametrize("host", ["localhost", "[::1]"])
def test_loopback_names_and_ipv6_bypass_the_proxy_too(
    srv: RecordingSandbox,
    proxy: tuple[str, list[Any]],
    monkeypatch: pytest.MonkeyPatch,
    no_sleep: None,
    host: str,
) -> None:
    """``localhost`` and ``[::1]`` are loopback for the egress rules, so for the proxy
    routing too. (The sandbox listens on 127.0.0.1 only: ``[::1]`` and possibly
    ``localhost`` cannot connect, which is fine; the proxy must still see nothing.)"""
    url, seen = proxy
    monkeypatch.setenv("ALL_PROXY", url)
    keys.set("openai", CANARIES["openai"])
    port = srv.url.rsplit(":", 1)[1] if srv.url else ""
    settings.update_settings(base_urls={"openai": f"http://{host}:{port}/openai/v1"})
    try:
        cencori_nb.chat("through a proxy?", model="gpt-4o-mini")
    except CencoriError:
        pass
    assert seen == []


def test_a_remote_https_destination_still_uses_the_proxy_without_the_key(
    proxy: tuple[str, list[Any]], monkeypatch: pytest.MonkeyPatch, no_sleep: None
) -> None:
    """Proxies still work for what they are for: a remote https host is reached through the
    proxy with ``CONNECT`` (the key would travel inside TLS, never to the proxy)."""
    url, seen = proxy
    monkeypatch.setenv("HTTPS_PROXY", url)
    keys.set("openai", CANARIES["openai"])
    settings.update_settings(base_urls={"openai": "https://gateway.proxied.example/v1"})
    settings.trust_host("openai", "gateway.proxied.example")
    with pytest.raises(CencoriError):
        cencori_nb.chat("through a proxy", model="gpt-4o-mini", retries=0)
    assert [line for line, _h, _b in seen] == ["CONNECT gateway.proxied.example:443 HTTP/1.1"]
    assert CANARIES["openai"] not in repr(seen)


# ============================================================ exception chains


@pytest.mark.parametrize("provider", sorted(MODELS))
@pytest.mark.parametrize("how", ["chat", "stream", "achat"])
def test_a_failed_request_leaves_no_key_reachable_from_the_error(
    provider: str, how: str, no_sleep: None
) -> None:
    """Nothing listens on the port: the error's ``__cause__`` is httpx2's ConnectError,
    which keeps its request. Its headers (``err.__cause__.request.headers``: httpx2 shows
    ``x-api-key`` and ``x-goog-api-key`` in clear) now hold the marker, not the key."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    keys.set(provider, CANARIES[provider])
    settings.update_settings(base_urls={provider: f"http://127.0.0.1:{port}{PREFIXES[provider]}"})
    with pytest.raises(CencoriError) as info:
        _send(how, MODELS[provider])
    err = info.value
    cause = err.__cause__
    assert isinstance(cause, httpx2.HTTPError)
    header = {"openai": "authorization", "anthropic": "x-api-key", "google": "x-goog-api-key"}
    assert cause.request.headers[header[provider]] == MARKER
    assert CANARIES[provider] not in repr(cause.request.headers)
    audit = Audit({provider: CANARIES[provider]})
    audit.add_exception(f"{provider} {how}", err)
    audit.assert_clean()


def test_the_request_a_retry_resends_keeps_its_key() -> None:
    """Masking happens on a copy: the request itself (sent again by a retry) is unchanged."""
    request = httpx2.Request(
        "POST", "https://api.anthropic.com/v1/messages", headers={"x-api-key": "sk-ant-k3y-abcdef"}
    )
    exc = httpx2.ConnectError("refused", request=request)
    err = map_exception(exc, provider="anthropic")
    assert request.headers["x-api-key"] == "sk-ant-k3y-abcdef"
    assert exc.request is not request and exc.request.headers["x-api-key"] == MARKER
    assert not any("k3y" in text for _path, text in reachable_texts(err))


# ============================================================ redirects


class _Redirecting(http.server.BaseHTTPRequestHandler):
    """Answers every request with ``status`` and a Location on another address (holding
    the key it received, in the path and the query)."""

    status = 307
    target = ""
    hits: list[str]

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("content-length") or 0))
        key = self.headers.get("authorization", "").removeprefix("Bearer ")
        self.hits.append(self.path)
        self.send_response(self.status)
        self.send_header("location", f"{self.target}/steal/{key}?key={key}")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("how", ["chat", "stream", "achat", "map"])
def test_a_redirect_is_one_clear_error_and_never_followed(
    proxy: tuple[str, list[Any]], no_sleep: None, status: int, how: str
) -> None:
    """A loopback base URL answering 3xx with a Location elsewhere (the recording server
    stands for the other address): nothing reaches it, the request is not retried, and the
    error says where it pointed without the path or query (which hold the key). Before: a
    BadResponseError 'not valid JSON', retried, that said nothing of the redirect."""
    target, seen = proxy
    hits: list[str] = []
    handler = type("Handler", (_Redirecting,), {"status": status, "target": target, "hits": hits})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        keys.set("openai", CANARIES["openai"])
        settings.update_settings(base_urls={"openai": f"http://127.0.0.1:{server.server_port}/v1"})
        if how == "map":
            rows = cencori_nb.map(["one"], model="gpt-4o-mini", progress=False, cache=False)
            message = str(rows["error"][0])
        else:
            with pytest.raises(UnsafeURLError) as info:
                _send(how, "gpt-4o-mini")
            message = f"{info.value} {info.value.hint}"
    finally:
        server.shutdown()
        server.server_close()
    assert seen == []
    assert len(hits) == 1  # not retried
    assert f"answered {status}, a redirect to {target};" in message
    assert CANARIES["openai"] not in message and "steal" not in message
