"""A lean HTTP/1.1 server core on ``asyncio.Protocol`` for the sandbox.

Why not a framework (or asyncio streams): the benchmarks push thousands of requests a
second through a machine that also runs the client, so the server does only what HTTP/1.1
needs here — keep-alive, ``Content-Length`` bodies (and chunked request bodies, should a
client send one), ``Transfer-Encoding: chunked`` for streamed answers, write flow control —
with no reader task, no per-read futures and one task per request. Requests on a
connection are answered in order, one at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl, unquote

__all__ = ["HttpError", "HttpProtocol", "Request", "Responder"]

MAX_HEAD = 64 * 1024
MAX_BODY = 32 * 1024 * 1024

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Site Overloaded",
}


class HttpError(Exception):
    """A request the server cannot parse; answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    """A parsed HTTP request (headers lower-cased, the whole body read)."""

    __slots__ = ("method", "target", "path", "query", "headers", "body", "http11", "_json")

    def __init__(self, method: str, target: str, headers: dict[str, str], http11: bool) -> None:
        self.method = method
        self.target = target
        path, _, qs = target.partition("?")
        self.path = unquote(path)
        self.query: dict[str, str] = dict(parse_qsl(qs)) if qs else {}
        self.headers = headers
        self.body = b""
        self.http11 = http11
        self._json: Any = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self) -> Any:
        """The body as JSON (parsed once); ``ValueError`` when it is not JSON."""
        if self._json is None:
            import json

            self._json = json.loads(self.body) if self.body else None
        return self._json

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        return "close" not in conn if self.http11 else "keep-alive" in conn


def parse_head(head: bytes) -> Request:
    """Parse a request line and headers (without the final blank line)."""
    try:
        text = head.decode("latin-1")
        request_line, *lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise HttpError(400, "malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise HttpError(400, "only HTTP/1.x is served")
    headers: dict[str, str] = {}
    for line in lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(400, "malformed header line")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return Request(method, target, headers, version == "HTTP/1.1")


def _chunked_body(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a complete chunked body from ``buf[start:]``: ``(body, end)`` or ``None``."""
    body = bytearray()
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError(400, "malformed chunk size") from None
        pos = eol + 2
        if size == 0:
            while True:  # trailers, then the blank line
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return bytes(body), eol + 2
                pos = eol + 2
        if len(body) + size > MAX_BODY:
            raise HttpError(413, "request body too large")
        if len(buf) < pos + size + 2:
            return None
        body += buf[pos : pos + size]
        pos += size + 2


_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


Handler = Callable[[Request, "Responder"], Awaitable[None]]


class HttpProtocol(asyncio.Protocol):
    """One client connection: parses requests and runs the handler for each, in order."""

    def __init__(self, handler: Handler, connections: set[HttpProtocol]) -> None:
        self._handler = handler
        self._connections = connections
        self._buf = bytearray()
        self._pending: tuple[Request, int] | None = None  # parsed head, body start
        self._busy = False
        self._eof = False
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.lost: asyncio.Future[None] | None = None  # done when the client is gone

    # --- asyncio callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a TCP server's always is
        self.transport = transport
        self.lost = asyncio.get_running_loop().create_future()
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
        self._wake_writers()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._busy:
            if len(self._buf) > MAX_HEAD + MAX_BODY and not self._reading_paused:
                self._reading_paused = True
                assert self.transport is not None
                self.transport.pause_reading()
            return
        self._next()

    def eof_received(self) -> bool | None:
        # The client stopped sending. Mid-answer, keep our side open to finish it (and
        # tell a held ``timeout`` request that the client is gone); otherwise close.
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
        if self._busy:
            self._eof = True
            return True
        return None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writers()

    # --- requests -----------------------------------------------------------------------
    def _next(self) -> None:
        """Start the next complete request in the buffer, if any."""
        if self.is_closing():
            return
        try:
            req = self._take_request()
        except HttpError as exc:
            self.plain_error(exc.status, exc.message)
            return
        if req is None:
            return
        self._busy = True
        resp = Responder(self, req.keep_alive)
        self.task = asyncio.get_running_loop().create_task(self._run(req, resp))

    def _take_request(self) -> Request | None:
        buf = self._buf
        if self._pending is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise HttpError(431, "request head too large")
                return None
            req = parse_head(bytes(buf[:end]))
            self._pending = (req, end + 4)
        req, start = self._pending
        if "chunked" in req.headers.get("transfer-encoding", "").lower():
            done = _chunked_body(buf, start)
            if done is None:
                return None
            req.body, end = done
        else:
            try:
                n = int(req.headers.get("content-length") or 0)
            except ValueError:
                raise HttpError(400, "bad Content-Length") from None
            if n < 0:
                raise HttpError(400, "bad Content-Length")
            if n > MAX_BODY:
                raise HttpError(413, "request body too large")
            end = start + n
            if len(buf) < end:
                return None
            req.body = bytes(buf[start:end])
        del buf[:end]
        self._pending = None
        return req

    async def _run(self, req: Request, resp: Responder) -> None:
        try:
            await self._handler(req, resp)
        finally:
            self._busy = False
            self.task = None
        if resp.closed or not resp.keep_alive or self._eof:
            resp.close()
            return
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        if self._buf:
            self._next()

    # --- writing ------------------------------------------------------------------------
    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def write(self, data: bytes) -> None:
        if not self.is_closing():
            assert self.transport is not None
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        if not self._write_paused or self.is_closing():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def _wake_writers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def plain_error(self, status: int, message: str) -> None:
        """Answer a request we could not parse, then close."""
        import json

        body = json.dumps(
            {"error": {"message": message, "type": "http_error"}, "sandbox": True}
        ).encode()
        self.write(
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nX-Sandbox: true\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        self.close()


class Responder:
    """Writes one response on a keep-alive connection (whole, streamed, cut or never)."""

    __slots__ = ("_conn", "keep_alive", "status", "started", "closed", "on_head")

    def __init__(self, conn: HttpProtocol, keep_alive: bool) -> None:
        self._conn = conn
        self.keep_alive = keep_alive
        self.status = 0
        self.started = False
        self.closed = False
        # called with the status just before the head is written, so counters are final
        # by the time a client can read the answer
        self.on_head: Callable[[int], None] | None = None

    def _head(
        self, status: int, headers: Iterable[tuple[str, str]], content_type: str, framing: str
    ) -> bytes:
        self.status = status
        self.started = True
        if self.on_head is not None:
            self.on_head(status)
        parts = [
            f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
            f"Date: {http_date()}\r\nServer: cencori-nb-sandbox\r\nX-Sandbox: true\r\n"
            f"Content-Type: {content_type}\r\n{framing}"
        ]
        for name, value in headers:
            parts.append(f"{name}: {value}\r\n")
        if not self.keep_alive:
            parts.append("Connection: close\r\n")
        parts.append("\r\n")
        return "".join(parts).encode("latin-1", "replace")

    def send(
        self,
        status: int,
        body: bytes,
        headers: Iterable[tuple[str, str]] = (),
        content_type: str = "application/json",
    ) -> None:
        head = self._head(status, headers, content_type, f"Content-Length: {len(body)}\r\n")
        self._conn.write(head + body)

    def send_cut(
        self, status: int, body: bytes, headers: list[tuple[str, str]], content_type: str
    ) -> None:
        """Announce the whole body, write half of it, then close (a cut response)."""
        head = self._head(status, headers, content_type, f"Content-Length: {len(body)}\r\n")
        self._conn.write(head + body[: len(body) // 2])
        self.close()

    def start_stream(self, status: int, headers: list[tuple[str, str]], content_type: str) -> None:
        self._conn.write(
            self._head(
                status,
                headers,
                content_type,
                "Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n",
            )
        )

    def write_chunk(self, data: bytes) -> None:
        if data and not self.closed:
            self._conn.write(b"%x\r\n%b\r\n" % (len(data), data))

    def end_stream(self) -> None:
        if not self.closed:
            self._conn.write(b"0\r\n\r\n")

    async def drain(self) -> None:
        if not self.closed:
            await self._conn.drain()

    def close(self) -> None:
        """Close the connection (whatever was written is flushed first)."""
        if not self.closed:
            self.closed = True
            self._conn.close()

    async def hold(self, seconds: float) -> None:
        """Answer nothing: wait until the client disconnects or ``seconds`` pass, then close."""
        lost = self._conn.lost
        if lost is not None:
            try:
                await asyncio.wait_for(asyncio.shield(lost), seconds)
            except TimeoutError:
                pass
        self.close()
