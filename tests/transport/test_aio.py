"""The aiohttp transport under httpx2's API: the same bytes on the wire, the same answers and
the same failures (as httpx2 exceptions, so the one error table names them) as httpx2's own
transport. Each case sends the same ``httpx2.Request`` through both to a real loopback
server and compares what the server received and what the caller got."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx2
import pytest

from cencori_nb import transport
from cencori_nb.transport.aio import AiohttpTransport
from tests.transport.loopback import BODY, FAILURES, Handler, request_to


def _both(request_for: Any, *, timeout: float = 5.0, stream: bool = False) -> list[Any]:
    """Send the same request with httpx2's transport and with aiohttp's; return both
    outcomes (a Response read to its end, or the exception raised)."""

    async def one(aio: bool) -> Any:
        kw: dict[str, Any] = {"timeout": httpx2.Timeout(timeout, connect=2.0)}
        if aio:
            kw["transport"] = AiohttpTransport(max_connections=8, keepalive_expiry=5)
        async with httpx2.AsyncClient(**kw) as client:
            try:
                response = await client.send(request_for(), stream=stream)
                if stream:
                    chunks = []
                    started = time.monotonic()
                    async for chunk in response.aiter_bytes():
                        chunks.append((round(time.monotonic() - started, 1), chunk))
                    await response.aclose()
                    return response, chunks
                return response
            except httpx2.HTTPError as exc:
                return exc

    return [asyncio.run(one(False)), asyncio.run(one(True))]


def test_same_bytes_on_the_wire_and_same_answer(server: str) -> None:
    """Method, path and query, every header (none added: no User-Agent, Accept-Encoding)
    and the body reach the server identical; status, headers (a repeated Set-Cookie too)
    and body come back identical."""
    Handler.seen.clear()
    native, aio = _both(lambda: request_to(server + "/ok?x=1&y=%2F", content=b'{"q":"\xc3\xa9"}'))
    assert len(Handler.seen) == 2
    a, b = Handler.seen
    assert (a["method"], a["path"], a["body"]) == (b["method"], b["path"], b["body"])
    assert a["path"] == "/ok?x=1&y=%2F" and a["body"] == b'{"q":"\xc3\xa9"}'
    assert sorted(a["headers"]) == sorted(b["headers"])
    assert not any(k in ("user-agent", "accept-encoding") for k, _ in b["headers"])
    assert native.status_code == aio.status_code == 200
    assert native.content == aio.content == BODY
    assert native.headers.get_list("set-cookie") == aio.headers.get_list("set-cookie")
    assert native.http_version == aio.http_version == "HTTP/1.1"


def test_a_get_without_body_sends_no_body(server: str) -> None:
    Handler.seen.clear()
    native, aio = _both(lambda: request_to(server + "/ok", method="GET"))
    a, b = Handler.seen
    assert a["body"] == b["body"] == b""
    assert sorted(a["headers"]) == sorted(b["headers"])
    assert native.status_code == aio.status_code == 200


def test_a_compressed_body_is_decoded_once(server: str) -> None:
    native, aio = _both(lambda: request_to(server + "/gzip", headers={"Accept-Encoding": "gzip"}))
    assert native.content == aio.content == BODY
    assert aio.json() == {"ok": True}


def test_redirects_are_not_followed(server: str) -> None:
    native, aio = _both(lambda: request_to(server + "/redirect"))
    assert native.status_code == aio.status_code == 302
    assert aio.headers["location"] == "/elsewhere"


def test_an_error_status_is_an_answer_not_an_exception(server: str) -> None:
    native, aio = _both(lambda: request_to(server + "/status"))
    assert native.status_code == aio.status_code == 429
    assert aio.headers["retry-after"] == "7" and aio.content == BODY


def test_a_stream_arrives_as_it_is_sent(server: str) -> None:
    """SSE chunks are not buffered to the end of the body: the first arrives well before
    the last (the server waits 0.3 s after it)."""
    (native, native_chunks), (aio, aio_chunks) = _both(
        lambda: request_to(server + "/sse", headers={"Accept": "text/event-stream"}), stream=True
    )
    assert b"".join(c for _, c in native_chunks) == b"".join(c for _, c in aio_chunks)
    assert b"".join(c for _, c in aio_chunks) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert aio_chunks[0][0] < aio_chunks[-1][0]


@pytest.mark.parametrize(
    ("path", "timeout", "httpx_cls", "ours"),
    FAILURES,
)
def test_failures_are_httpx2_exceptions_named_by_the_one_table(
    server: str, path: str, timeout: float, httpx_cls: type[Exception], ours: type[Exception]
) -> None:
    """A peer that closes early, a read timeout, a reply that is not HTTP: the same httpx2
    exception class as httpx2's own transport raises, so transport.map_exception gives the
    same CencoriError."""
    native, aio = _both(lambda: request_to(server + path), timeout=timeout)
    assert isinstance(native, httpx_cls), native
    assert isinstance(aio, httpx_cls), aio
    assert aio.request.url == httpx2.URL(server + path)
    assert type(transport.map_exception(aio)) is type(transport.map_exception(native)) is ours


def test_connection_refused_is_a_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed on leaving: nothing listens there
    native, aio = _both(lambda: request_to(f"http://127.0.0.1:{port}/"))
    assert isinstance(native, httpx2.ConnectError) and isinstance(aio, httpx2.ConnectError)
    assert type(transport.map_exception(aio)) is type(transport.map_exception(native))


def test_aiohttp_serves_only_loops_registered_for_it() -> None:
    """The batch runner's private loop (registered, shut down at exit) gets aiohttp; any
    other loop keeps httpx2's own transport; an injected test transport wins over both."""

    async def grab(register: bool) -> Any:
        if register:
            transport.pool.use_aiohttp_on(asyncio.get_running_loop())
        return transport.get_async_client()._transport  # noqa: SLF001

    assert isinstance(asyncio.run(grab(True)), AiohttpTransport)
    assert isinstance(asyncio.run(grab(False)), httpx2.AsyncHTTPTransport)
    mock = httpx2.MockTransport(lambda request: httpx2.Response(200))
    transport.set_transport(async_transport=mock)
    try:
        assert asyncio.run(grab(True)) is mock
    finally:
        transport.set_transport(None)


def test_map_runs_on_aiohttp() -> None:
    from cencori_nb.batch import runner

    loop = runner._batch_loop()  # noqa: SLF001
    got = asyncio.run_coroutine_threadsafe(_client_transport(), loop).result(30)
    assert isinstance(got, AiohttpTransport)


async def _client_transport() -> Any:
    return transport.get_async_client()._transport  # noqa: SLF001


_FOREIGN_LOOP_SCRIPT = """
import asyncio, os
from cencori_nb.sandbox import SandboxServer

os.environ["CENCORI_NB_SANDBOX"] = SandboxServer(latency_ms=0).start_in_thread()
import cencori_nb
from cencori_nb import keys

keys.set("openai", "sk-sandbox-demo-openai")
loop = asyncio.new_event_loop()  # the caller's own loop, never shut down properly
print(loop.run_until_complete(cencori_nb.achat("hi", model="gpt-4o-mini")).text[:7])
loop.close()
"""


def test_achat_on_a_loop_that_is_never_shut_down_leaves_stderr_clean(tmp_path: Any) -> None:
    """A loop dropped without shutdown_asyncgens (a kernel's, or new_event_loop() closed
    bare) keeps httpx2's transport, which stays silent at exit; an aiohttp session there
    printed "Unclosed client session"."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import cencori_nb

    script = tmp_path / "own_loop.py"
    script.write_text(_FOREIGN_LOOP_SCRIPT, encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(cencori_nb.__file__).parents[1]),
        "CENCORI_NB_HOME": str(tmp_path / "home"),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
    }
    out = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("[sandbo")
    assert out.stderr == ""


def test_closing_closes_the_session(server: str) -> None:
    """The loop's client closes its aiohttp session (and connections) on aclose."""

    async def go() -> Any:
        t = AiohttpTransport(max_connections=2, keepalive_expiry=5)
        async with httpx2.AsyncClient(transport=t) as client:
            await client.send(request_to(server + "/ok"))
            session = t._session
            assert session is not None and not session.closed
        return session

    assert asyncio.run(go()).closed


def test_proxies_from_the_environment_like_httpx2(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY routes a request through the proxy (the server sees the absolute URL),
    NO_PROXY exempts a host; read from the environment as httpx2 reads it."""
    monkeypatch.setenv("HTTP_PROXY", server)
    monkeypatch.setenv("NO_PROXY", "exempt.invalid")
    Handler.seen.clear()
    native, aio = _both(lambda: request_to("http://api.example.invalid/ok"))
    assert native.status_code == aio.status_code == 200
    assert [s["path"] for s in Handler.seen] == ["http://api.example.invalid/ok"] * 2
    native, aio = _both(lambda: request_to("http://exempt.invalid/ok"), timeout=2.0)
    assert isinstance(native, httpx2.ConnectError) and isinstance(aio, httpx2.ConnectError)


# --- the sender: the transport driven without httpx2.AsyncClient.send ------------------------


def _via_sender(request_for: Any, *, timeout: float = 5.0, max_connections: int = 8) -> list[Any]:
    """The same request through ``AsyncClient.send`` over aiohttp and through the
    :class:`AiohttpSender` over aiohttp; both outcomes (a Response read, or the exception)."""
    from cencori_nb.transport.aio import AiohttpSender

    async def one(direct: bool) -> Any:
        t = AiohttpTransport(max_connections=max_connections, keepalive_expiry=5)
        limits = httpx2.Timeout(timeout, connect=2.0)
        async with httpx2.AsyncClient(transport=t, timeout=limits) as client:
            sender: Any = AiohttpSender(t, limits.as_dict()) if direct else client
            try:
                return await sender.send(request_for())
            except httpx2.HTTPError as exc:
                return exc

    return [asyncio.run(one(False)), asyncio.run(one(True))]


def test_the_sender_sends_the_same_bytes_and_reads_the_same_answer(server: str) -> None:
    Handler.seen.clear()
    client, direct = _via_sender(
        lambda: request_to(server + "/ok?x=1", content=b'{"q":"\xc3\xa9"}', headers={"X-B": "2"})
    )
    a, b = Handler.seen
    assert (a["method"], a["path"], a["body"]) == (b["method"], b["path"], b["body"])
    assert sorted(a["headers"]) == sorted(b["headers"])
    assert client.status_code == direct.status_code == 200
    assert client.content == direct.content == BODY
    assert list(client.headers.multi_items()) == list(direct.headers.multi_items())
    assert direct.is_closed and direct.request.url == httpx2.URL(server + "/ok?x=1")
    assert direct.extensions["http_version"] == b"HTTP/1.1"


def test_the_sender_decodes_a_compressed_body_once(server: str) -> None:
    client, direct = _via_sender(
        lambda: request_to(server + "/gzip", headers={"Accept-Encoding": "gzip"})
    )
    assert client.content == direct.content == BODY


def test_the_sender_adds_the_clients_timeout_and_url_credentials(server: str) -> None:
    """What AsyncClient.send adds to a request built outside it: its timeout (0.3 s: the
    slow answer times out) and Basic auth from credentials in the URL."""
    client, direct = _via_sender(lambda: request_to(server + "/slow"), timeout=0.3)
    assert isinstance(client, httpx2.ReadTimeout) and isinstance(direct, httpx2.ReadTimeout)
    Handler.seen.clear()
    authority = server.replace("http://", "http://ana:s%3Acret@")
    _via_sender(lambda: request_to(authority + "/ok", headers={"Authorization": ""}))
    a, b = Handler.seen
    assert sorted(a["headers"]) == sorted(b["headers"])
    assert ("authorization", "Basic YW5hOnM6Y3JldA==") in b["headers"]


@pytest.mark.parametrize(
    ("path", "httpx_cls"),
    [("/truncate", httpx2.RemoteProtocolError), ("/garbage", httpx2.RemoteProtocolError)],
)
def test_the_sender_fails_with_the_clients_exceptions(
    server: str, path: str, httpx_cls: type[Exception]
) -> None:
    client, direct = _via_sender(lambda: request_to(server + path))
    assert isinstance(client, httpx_cls) and isinstance(direct, httpx_cls), (client, direct)
    assert type(transport.map_exception(direct)) is type(transport.map_exception(client))


def test_the_sender_gives_each_connection_back_after_reading(server: str) -> None:
    """One connection allowed, five requests in a row (each read to its end, one of them
    an error status): none waits for a connection that was not released."""
    from cencori_nb.transport.aio import AiohttpSender

    async def go() -> list[int]:
        t = AiohttpTransport(max_connections=1, keepalive_expiry=5)
        async with httpx2.AsyncClient(transport=t) as client:
            sender = AiohttpSender(t, httpx2.Timeout(2.0).as_dict())
            assert client is not None
            statuses = []
            for path in ("/ok", "/status", "/ok", "/gzip", "/ok"):
                statuses.append((await sender.send(request_to(server + path))).status_code)
            return statuses

    assert asyncio.run(go()) == [200, 429, 200, 200, 200]


def test_map_sends_with_the_aiohttp_sender() -> None:
    from cencori_nb.batch import runner
    from cencori_nb.transport.aio import AiohttpSender

    loop = runner._batch_loop()  # noqa: SLF001
    got = asyncio.run_coroutine_threadsafe(_sender_of_loop(), loop).result(30)
    assert isinstance(got, AiohttpSender)


async def _sender_of_loop() -> Any:
    return transport.pool.get_async_sender()
