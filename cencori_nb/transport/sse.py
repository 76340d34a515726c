"""Server-sent events of a streamed response, with httpx2's errors translated to ours.

The events are the ones ``httpx2.EventSource`` yields for the same bytes (the same
``httpx2.ServerSentEvent`` objects, the same ``SSEError`` for a body that is not an event
stream or an event over the size limit); tests/transport/test_sse.py holds the two side by
side over random streams cut at random places. Why our own loop: ``EventSource`` reads
through ``iter_text``, ``iter_bytes`` and ``iter_raw`` with a decoder and a chunker each and
a method call per line, about 5 µs an event; a 20-chunk stream spent more CPU there than in
receiving its bytes. :class:`EventParser` does the same work in one loop per chunk (about
1 µs an event), for the sync and the async stream alike.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING

from .errors import httpx_errors, map_exception

if TYPE_CHECKING:
    import httpx2

__all__ = ["EventParser", "aiter_sse", "iter_sse"]

# httpx2's bound on one event (its DEFAULT_MAX_EVENT_SIZE_BYTES): a hostile or broken
# server that never ends an event must not grow our memory without limit.
MAX_EVENT_BYTES = 1024 * 1024


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class EventParser:
    """Bytes of an event stream in, ``httpx2.ServerSentEvent`` objects out, as
    ``httpx2.EventSource`` parses them: lines end at LF, CRLF or CR (also when a chunk ends
    between CR and LF); ``field: value`` with one leading space dropped; ``data`` lines
    joined with newlines; comments (``:``) skipped; ``id`` kept across events unless it
    holds NUL; ``retry`` only when it is an integer; an event is dispatched at a blank line
    if any field was set. Invalid UTF-8 becomes U+FFFD."""

    def __init__(
        self,
        encoding: str = "utf-8",
        max_event_bytes: int | None = MAX_EVENT_BYTES,
        *,
        request: httpx2.Request | None = None,
    ):
        self._decode = codecs.getincrementaldecoder(encoding)(errors="replace").decode
        self._max = max_event_bytes
        self._request = request  # named on the size-limit error, as EventSource names it
        self._tail = ""  # the start of a line not ended yet
        self._cr = False  # the last text ended with CR: a LF at the next start ends that line
        self._event = ""
        self._data: list[str] = []
        self._id = ""
        self._retry: int | None = None
        self._pending = False
        self._event_size = 0
        self.error: httpx2.SSEError | None = None  # set past the size limit: raise it

    def feed(self, chunk: bytes) -> list[httpx2.ServerSentEvent]:
        """The events that ``chunk`` completes. Past the size limit, :attr:`error` is set
        (an ``httpx2.SSEError``): the caller hands out the events returned, then raises it,
        the order in which ``EventSource`` yields and raises."""
        return self._text(self._decode(chunk))

    def close(self) -> list[httpx2.ServerSentEvent]:
        """The events the end of the stream completes (an unfinished line counts as ended,
        an event without its blank line is dropped, as ``EventSource`` does)."""
        events = self._text(self._decode(b"", True))
        if self.error is not None:
            return events
        tail = self._tail + ("\n" if self._cr else "")
        self._tail, self._cr = "", False
        return events + self._lines(tail.split("\n")) if tail else events

    def _text(self, text: str) -> list[httpx2.ServerSentEvent]:
        if not text or self.error is not None:
            return []
        if (
            text[:6] == "data: "
            and text[-2:] == "\n\n"
            and not (self._tail or self._cr or self._pending)
            and text.count("\n") == 2
            and "\r" not in text
        ):
            # One whole event of one data line, the way providers send each chunk: the
            # general loop below would give the same event, line by line.
            data = text[6:-2]
            if self._max is None or self._event_size + 6 + _size(data) <= self._max:
                import httpx2

                self._event_size = 0
                return [httpx2.ServerSentEvent("message", data, self._id, None)]
        if self._cr:
            text = "\r" + text
            self._cr = False
        if "\r" in text:
            if text.endswith("\r"):
                self._cr = True
                text = text[:-1]
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if "\n" not in text:
            self._tail += text
            events: list[httpx2.ServerSentEvent] = []
        else:
            lines = text.split("\n")
            lines[0] = self._tail + lines[0]
            self._tail = lines.pop()
            events = self._lines(lines)
        if self._max is not None and self.error is None and self._tail:
            self._check(_size(self._tail))  # the line still arriving counts too
        return events

    def _check(self, pending: int = 0) -> None:
        if self._max is not None and self._event_size + pending > self._max:
            import httpx2

            self.error = httpx2.SSEError(
                f"Server-sent event exceeded the {self._max} byte limit.", request=self._request
            )

    def _lines(self, lines: Iterable[str]) -> list[httpx2.ServerSentEvent]:
        import httpx2

        events = []
        for line in lines:
            if not line:
                self._event_size = 0
                if self._pending:
                    events.append(
                        httpx2.ServerSentEvent(
                            self._event or "message", "\n".join(self._data), self._id, self._retry
                        )
                    )
                    self._event, self._data, self._retry, self._pending = "", [], None, False
                continue
            if line[0] == ":":
                continue
            self._event_size += _size(line)
            if self._max is not None and self._event_size > self._max:
                self._check()
                break  # nothing after an error, as in EventSource
            name, _, value = line.partition(":")
            if value[:1] == " ":
                value = value[1:]
            if name == "data":
                self._data.append(value)
                self._pending = True
            elif name == "event":
                self._event = value
                self._pending = True
            elif name == "id":
                if "\0" not in value:
                    self._id = value
                    self._pending = True
            elif name == "retry":
                try:
                    self._retry = int(value)
                except ValueError:
                    pass
                else:
                    self._pending = True
        return events


def _parser_for(response: httpx2.Response) -> EventParser:
    """A parser for ``response``, after ``EventSource``'s content-type check."""
    import httpx2

    content_type = response.headers.get("content-type", "").partition(";")[0].strip()
    if content_type.lower() != "text/event-stream":
        raise httpx2.SSEError(
            f"Expected response with content type 'text/event-stream', got {content_type!r}.",
            request=response.request,
        )
    return EventParser(response.encoding or "utf-8", request=response.request)


def _raw(response: httpx2.Response) -> bool:
    """Whether the body can be read as it arrived: an unread body without a
    ``Content-Encoding`` (else through httpx2's decoders, or its buffered content)."""
    return not response.is_stream_consumed and "content-encoding" not in response.headers


def iter_sse(
    response: httpx2.Response, *, provider: str | None = None
) -> Iterator[httpx2.ServerSentEvent]:
    """Server-sent events of a streamed response, with httpx2 errors mapped to ours."""
    errors = httpx_errors()
    try:
        parser = _parser_for(response)
        feed = parser.feed
        for chunk in response.iter_raw() if _raw(response) else response.iter_bytes():
            events = feed(chunk)
            if events:
                yield from events
            if parser.error is not None:
                raise parser.error
        yield from parser.close()
        if parser.error is not None:
            raise parser.error
    except errors as exc:
        raise map_exception(exc, provider=provider) from exc


async def aiter_sse(
    response: httpx2.Response, *, provider: str | None = None
) -> AsyncIterator[httpx2.ServerSentEvent]:
    """The async twin of :func:`iter_sse`."""
    errors = httpx_errors()
    try:
        parser = _parser_for(response)
        feed = parser.feed
        chunks = response.aiter_raw() if _raw(response) else response.aiter_bytes()
        async for chunk in chunks:
            for event in feed(chunk):
                yield event
            if parser.error is not None:
                raise parser.error
        for event in parser.close():
            yield event
        if parser.error is not None:
            raise parser.error
    except errors as exc:
        raise map_exception(exc, provider=provider) from exc
