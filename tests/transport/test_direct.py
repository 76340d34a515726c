"""The direct sender (httpcore2's pool without httpx2.Client's layers): the same bytes on the
wire, the same answers and the same failures as ``httpx2.Client.send``. Each case sends the
same ``httpx2.Request`` through both to a real loopback server and compares what the server
received and what the caller got."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import httpx2
import pytest

from cencori_nb import transport
from cencori_nb.transport import pool
from cencori_nb.transport.direct import DirectSender
from tests.transport.loopback import BODY, FAILURES, Handler, request_to


def _sender(timeout: float) -> DirectSender:
    return DirectSender(
        timeout=httpx2.Timeout(timeout, connect=2.0).as_dict(),
        max_connections=4,
        max_keepalive_connections=4,
        keepalive_expiry=5.0,
        ssl_context=pool.ssl_context(),
    )


def _both(request_for: Any, *, timeout: float = 5.0, stream: bool = False) -> list[Any]:
    """Send the same request with ``httpx2.Client.send`` (as the pool's client is built:
    no redirects) and with the direct sender; return both outcomes (a Response read to its
    end, with its chunks and their arrival times when streamed, or the exception raised)."""
    client = httpx2.Client(timeout=httpx2.Timeout(timeout, connect=2.0), follow_redirects=False)
    direct = _sender(timeout)
    out = []
    for sender in (client, direct):
        try:
            response = sender.send(request_for(), stream=stream)
            if stream:
                chunks = []
                started = time.monotonic()
                for chunk in response.iter_bytes():
                    chunks.append((time.monotonic() - started, chunk))
                response.close()
                out.append((response, chunks))
            else:
                out.append(response)
        except httpx2.HTTPError as exc:
            out.append(exc)
        finally:
            sender.close()
    return out


def test_same_bytes_on_the_wire_and_same_answer(server: str) -> None:
    """Method, path and query, every header and the body reach the server identical;
    status, headers (a repeated Set-Cookie too), body, version and reason come back
    identical, with ``response.request`` set."""
    Handler.seen.clear()
    client, direct = _both(
        lambda: request_to(server + "/ok?x=1&y=%2F", content=b'{"q":"\xc3\xa9"}')
    )
    assert len(Handler.seen) == 2
    a, b = Handler.seen
    assert (a["method"], a["path"], a["body"]) == (b["method"], b["path"], b["body"])
    assert a["path"] == "/ok?x=1&y=%2F" and a["body"] == b'{"q":"\xc3\xa9"}'
    assert a["headers"] == b["headers"]  # same names, values and order
    assert client.status_code == direct.status_code == 200
    assert client.content == direct.content == BODY
    assert list(client.headers.multi_items()) == list(direct.headers.multi_items())
    assert direct.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert client.http_version == direct.http_version == "HTTP/1.1"
    assert client.reason_phrase == direct.reason_phrase == "OK"
    assert direct.request.url == httpx2.URL(server + "/ok?x=1&y=%2F")
    assert direct.is_closed and direct.json() == {"ok": True}


def test_credentials_in_the_url_are_sent_as_the_client_sends_them(server: str) -> None:
    """``Client.send`` turns ``user:pass@`` into Basic auth; so does the direct sender
    (egress refuses such base URLs; a caller-built request still gets the same bytes)."""
    Handler.seen.clear()
    authority = server.replace("http://", "http://ana:s%3Acret@")
    client, direct = _both(lambda: request_to(authority + "/ok", headers={"Authorization": ""}))
    a, b = Handler.seen
    assert a["headers"] == b["headers"]
    assert ("authorization", "Basic YW5hOnM6Y3JldA==") in b["headers"]
    assert client.status_code == direct.status_code == 200


def test_a_multipart_upload_is_sent_as_the_client_sends_it(server: str) -> None:
    """A batch job's file upload (``files=``: a stream httpx2 has not read) reaches the
    server byte for byte as through the client, with its Content-Length."""
    Handler.seen.clear()
    data = b'{"custom_id":"r1"}\n' * 500

    def upload() -> httpx2.Request:
        return httpx2.Request(
            "POST",
            server + "/ok",
            headers={"Content-Type": "multipart/form-data; boundary=cencori-test-boundary"},
            data={"purpose": "batch"},
            files={"file": ("job.jsonl", data, "application/jsonl")},
        )

    assert not hasattr(upload(), "_content")  # unread: sent as a stream, not copied first
    client, direct = _both(upload)
    a, b = Handler.seen
    assert a["headers"] == b["headers"] and a["body"] == b["body"]
    assert data in b["body"] and b"cencori-test-boundary" in b["body"]
    assert ("content-length", str(len(b["body"]))) in b["headers"]
    assert client.status_code == direct.status_code == 200


def test_a_get_without_body_sends_no_body(server: str) -> None:
    Handler.seen.clear()
    client, direct = _both(lambda: request_to(server + "/ok", method="GET"))
    a, b = Handler.seen
    assert a["body"] == b["body"] == b""
    assert a["headers"] == b["headers"]
    assert client.status_code == direct.status_code == 200


def test_a_compressed_body_is_decoded_once(server: str) -> None:
    client, direct = _both(
        lambda: request_to(server + "/gzip", headers={"Accept-Encoding": "gzip"})
    )
    assert client.content == direct.content == BODY
    assert direct.headers["content-encoding"] == "gzip"


def test_redirects_are_not_followed(server: str) -> None:
    Handler.seen.clear()
    client, direct = _both(lambda: request_to(server + "/redirect"))
    assert client.status_code == direct.status_code == 302
    assert direct.headers["location"] == "/elsewhere"
    assert [s["path"] for s in Handler.seen] == ["/redirect", "/redirect"]


def test_an_error_status_is_an_answer_not_an_exception(server: str) -> None:
    client, direct = _both(lambda: request_to(server + "/status"))
    assert client.status_code == direct.status_code == 429
    assert direct.headers["retry-after"] == "7" and direct.content == BODY


def test_a_stream_arrives_as_it_is_sent(server: str) -> None:
    """SSE chunks are not buffered to the end of the body: the first arrives before the
    server sends the rest (it waits 0.3 s after the first)."""
    (client, client_chunks), (direct, direct_chunks) = _both(
        lambda: request_to(server + "/sse", headers={"Accept": "text/event-stream"}), stream=True
    )
    assert b"".join(c for _, c in client_chunks) == b"".join(c for _, c in direct_chunks)
    assert b"".join(c for _, c in direct_chunks) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert len(direct_chunks) > 1 and direct_chunks[0][0] < direct_chunks[-1][0]
    assert direct.is_closed


def test_closing_a_stream_unread_releases_its_connection(server: str) -> None:
    """A stream dropped after its first chunk gives its connection back: the pool is not
    exhausted by streams closed early (one connection allowed, three streams in a row)."""
    sender = DirectSender(
        timeout=httpx2.Timeout(2.0).as_dict(),
        max_connections=1,
        max_keepalive_connections=1,
        keepalive_expiry=5.0,
        ssl_context=pool.ssl_context(),
    )
    try:
        for _ in range(3):
            response = sender.send(
                request_to(server + "/sse", headers={"Accept": "text/event-stream"}), stream=True
            )
            assert next(response.iter_bytes()).startswith(b"data: 0")
            response.close()
        assert sender.send(request_to(server + "/ok")).content == BODY
    finally:
        sender.close()


@pytest.mark.parametrize(
    ("path", "timeout", "httpx_cls", "ours"),
    FAILURES,
)
def test_failures_are_httpx2_exceptions_named_by_the_one_table(
    server: str, path: str, timeout: float, httpx_cls: type[Exception], ours: type[Exception]
) -> None:
    """A peer that closes early, a read timeout, a reply that is not HTTP: the same httpx2
    exception class as the client raises, carrying the request, so transport.map_exception
    gives the same CencoriError."""
    client, direct = _both(lambda: request_to(server + path), timeout=timeout)
    assert isinstance(client, httpx_cls), client
    assert isinstance(direct, httpx_cls), direct
    assert direct.request.url == httpx2.URL(server + path)
    assert type(transport.map_exception(direct)) is type(transport.map_exception(client)) is ours


def test_a_peer_closing_mid_stream_is_an_httpx2_exception(server: str) -> None:
    sender = _sender(5.0)
    try:
        response = sender.send(request_to(server + "/truncate"), stream=True)
        with pytest.raises(httpx2.RemoteProtocolError) as info:
            response.read()
        assert info.value.request.url == httpx2.URL(server + "/truncate")
    finally:
        sender.close()


def test_connection_refused_is_a_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed on leaving: nothing listens there
    client, direct = _both(lambda: request_to(f"http://127.0.0.1:{port}/"))
    assert isinstance(client, httpx2.ConnectError) and isinstance(direct, httpx2.ConnectError)
    assert type(transport.map_exception(direct)) is type(transport.map_exception(client))


def test_a_request_keeps_its_own_timeout_and_gets_the_senders_otherwise(server: str) -> None:
    """Like ``Client.send``: a request built with a timeout keeps it (0.3 s: the slow
    answer times out although the sender allows 5 s); one without gets the sender's."""
    sender = _sender(5.0)
    try:
        request = request_to(server + "/slow")
        request.extensions["timeout"] = httpx2.Timeout(0.3).as_dict()
        with pytest.raises(httpx2.ReadTimeout):
            sender.send(request)
        bare = request_to(server + "/ok")
        assert "timeout" not in bare.extensions
        sender.send(bare)
        assert bare.extensions["timeout"] == httpx2.Timeout(5.0, connect=2.0).as_dict()
    finally:
        sender.close()


def test_each_request_is_logged_like_httpx2_and_scrubbed(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The INFO line httpx2's client writes per request (a notebook at logging.INFO still
    sees its requests), on httpx2's logger, with a key in the URL redacted."""
    transport.install_log_redaction()
    canary = "sk-proj-" + "Q" * 40
    transport.register_secret(canary)
    caplog.set_level(logging.INFO, logger="httpx2")
    sender = _sender(5.0)
    try:
        sender.send(request_to(server + f"/ok?key={canary}"))
    finally:
        sender.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx2"]
    assert len(lines) == 1 and lines[0].startswith("HTTP Request: POST http://127.0.0.1:")
    assert lines[0].endswith('"HTTP/1.1 200 OK"')
    assert canary not in caplog.text


def test_the_pool_sends_directly_unless_a_proxy_or_a_test_transport_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No proxy in the environment: the direct sender. ``HTTPS_PROXY`` (or ``http_proxy``):
    the pool's ``httpx2.Client``, whose proxy routing honours ``NO_PROXY``. An injected
    test transport: the client over it."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    pool._close_clients()  # noqa: SLF001
    assert isinstance(transport.pool.get_sender(), DirectSender)
    for name in ("HTTPS_PROXY", "http_proxy"):
        monkeypatch.setenv(name, "http://proxy.invalid:3128")
        pool._close_clients()  # noqa: SLF001
        assert transport.pool.get_sender() is transport.get_client()
        monkeypatch.delenv(name)
    mock = httpx2.MockTransport(lambda request: httpx2.Response(204))
    transport.set_transport(mock)
    try:
        assert transport.pool.get_sender() is transport.get_client()
        assert transport.send(request_to("http://127.0.0.1:9/x")).status_code == 204
    finally:
        transport.set_transport(None)
    assert isinstance(transport.pool.get_sender(), DirectSender)


def test_a_new_read_timeout_builds_a_new_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    """``CENCORI_NB_TIMEOUT`` changed in a running process reaches the next request's
    sender (the registry resets the pool), as it reaches the clients."""
    monkeypatch.setenv("CENCORI_NB_TIMEOUT", "7")
    first = transport.pool.get_sender()
    assert isinstance(first, DirectSender)
    assert first._timeout["timeout"]["read"] == 7.0  # noqa: SLF001
    monkeypatch.setenv("CENCORI_NB_TIMEOUT", "9")
    second = transport.pool.get_sender()
    assert second is not first
    assert isinstance(second, DirectSender)
    assert second._timeout["timeout"]["read"] == 9.0  # noqa: SLF001


class _Socket:
    """A stand-in for httpcore2's socket stream: records each write (the system calls the
    connection makes), fails writes when told to, answers reads."""

    def __init__(self, *, fail_writes: bool = False) -> None:
        self.writes: list[tuple[bytes, float | None]] = []
        self.events: list[str] = []
        self.fail_writes = fail_writes
        self.closed = False

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.events.append("write")
        if self.fail_writes:
            import httpcore2

            raise httpcore2.WriteError("broken pipe")
        self.writes.append((bytes(buffer), timeout))

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.events.append("read")
        return b"HTTP/1.1 413 Payload Too Large\r\n\r\n"[:max_bytes]

    def close(self) -> None:
        self.closed = True

    def start_tls(self, *args: Any) -> _Socket:
        self.events.append("tls")
        return _Socket()

    def get_extra_info(self, info: str) -> Any:
        return f"info:{info}"


def test_a_requests_head_and_body_go_out_in_one_write_at_the_first_read() -> None:
    """httpcore2 writes a request's head and body separately; the connection's stream
    holds them and sends them with one call when the answer is first read (with the
    write's timeout), then reads."""
    from cencori_nb.transport.direct import _HeldWrites

    sock = _Socket()
    stream = _HeldWrites(sock)
    stream.write(b"POST /v1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n", timeout=3.0)
    stream.write(b"{}", timeout=3.0)
    stream.write(b"", timeout=3.0)  # h11's end of message for a sized body
    assert sock.events == []
    assert stream.read(1024, timeout=9.0).startswith(b"HTTP/1.1 413")
    assert sock.events == ["write", "read"]
    assert sock.writes == [(b"POST /v1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 3.0)]
    stream.read(1024)  # nothing held: a plain read
    assert sock.events == ["write", "read", "read"]
    assert stream.get_extra_info("is_readable") == "info:is_readable"


def test_a_large_upload_goes_out_as_it_is_written() -> None:
    from cencori_nb.transport.direct import MAX_HELD_BYTES, _HeldWrites

    sock = _Socket()
    stream = _HeldWrites(sock)
    stream.write(b"head\r\n\r\n")
    stream.write(b"x" * MAX_HELD_BYTES)  # past the bound: sent now, with the head
    assert [len(w) for w, _ in sock.writes] == [8 + MAX_HELD_BYTES]
    stream.write(b"tail")
    stream.read(10)
    assert [w for w, _ in sock.writes][1] == b"tail"


def test_a_write_error_when_sending_is_dropped_and_the_answer_read() -> None:
    """The server closed its side while we sent (it may have answered early, e.g. 413):
    as httpcore2 does for a write error while sending a request, the error is dropped and
    the answer read; the held bytes are gone, not sent again."""
    from cencori_nb.transport.direct import _HeldWrites

    sock = _Socket(fail_writes=True)
    stream = _HeldWrites(sock)
    stream.write(b"POST / HTTP/1.1\r\n\r\n")
    assert stream.read(1024).startswith(b"HTTP/1.1 413")
    assert sock.events == ["write", "read"]
    stream.read(1024)
    assert sock.events == ["write", "read", "read"]


def test_tls_starts_after_what_is_held_and_its_stream_holds_too() -> None:
    from cencori_nb.transport.direct import _HeldWrites

    sock = _Socket()
    stream = _HeldWrites(sock)
    stream.write(b"CONNECT api.example.com:443 HTTP/1.1\r\n\r\n")
    tls = stream.start_tls(object(), "api.example.com", 5.0)
    assert sock.events == ["write", "tls"]
    assert isinstance(tls, _HeldWrites)
    tls.write(b"GET / HTTP/1.1\r\n\r\n")
    assert tls.read(5) == b"HTTP/"
    stream.close()
    assert sock.closed


def test_the_senders_connections_send_each_request_in_one_write(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: every request the direct sender makes (a POST with a body, a GET) leaves
    its connection in one write of head and body together."""
    from cencori_nb.transport import direct

    writes: list[bytes] = []
    real = direct._HeldWrites._send

    def counting(self: Any) -> None:
        writes.append(b"".join(self._held))
        real(self)

    monkeypatch.setattr(direct._HeldWrites, "_send", counting)
    sender = _sender(5.0)
    try:
        assert sender.send(request_to(server + "/ok", content=b'{"q":1}')).content == BODY
        assert sender.send(request_to(server + "/ok", method="GET")).status_code == 200
    finally:
        sender.close()
    assert len(writes) == 2
    assert writes[0].startswith(b"POST /ok HTTP/1.1\r\n") and writes[0].endswith(b'\r\n\r\n{"q":1}')
    assert writes[1].startswith(b"GET /ok HTTP/1.1\r\n") and writes[1].endswith(b"\r\n\r\n")


def test_one_tls_context_serves_the_sender_and_the_batch_loop(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading the CA store is done once per process: the sync sender and the aiohttp
    connector of map's loop verify with the same context; SSL_CERT_FILE changed in a
    running process gives the next request a new context built from that file, and a new
    sender with it."""
    import asyncio
    import ssl

    from cencori_nb.transport.aio import AiohttpTransport

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    shared = pool.ssl_context()
    assert isinstance(shared, ssl.SSLContext) and shared.verify_mode == ssl.CERT_REQUIRED
    sender = pool.get_sender()
    assert isinstance(sender, DirectSender)
    assert sender._pool._ssl_context is shared  # noqa: SLF001

    async def connector_context() -> Any:
        t = AiohttpTransport(max_connections=2, keepalive_expiry=5)
        session = t._open()  # noqa: SLF001
        try:
            return session.connector._ssl  # type: ignore[union-attr]  # noqa: SLF001
        finally:
            await t.aclose()

    assert asyncio.run(connector_context()) is shared
    cafile = ssl.get_default_verify_paths().openssl_cafile
    if not os.path.isfile(cafile):
        pytest.skip("no system CA file to point SSL_CERT_FILE at")
    monkeypatch.setenv("SSL_CERT_FILE", cafile)
    assert pool.ssl_context() is not shared
    assert pool.get_sender() is not sender
