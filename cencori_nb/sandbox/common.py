"""What every sandbox door shares: the request pipeline, the exchange and the SSE writer.

A *door* is one wire format at one URL prefix (OpenAI at ``/openai/v1``, Anthropic at
``/anthropic``, …). Each door module subclasses :class:`Door` and supplies only what its
format decides: where the key is, how an error body looks, how a request is read and how
a reply is written. The order of checks is the same everywhere::

    injected error fault → key missing/revoked → rate limit → request body → unknown model
    (the provider's 404) → door checks (Cencori: price, wallet) → context window (the
    provider's "too long" 400) → latency → timeout fault → reply (truncate/malformed/
    stream-error)

What the real APIs do and the sandbox copies (each door's docstring has the details):
aliases answer with dated model ids (``gpt-4o`` → ``gpt-4o-2024-08-06``), a model the
provider does not know gets its real 404 body, a prompt over the model's context window its
real 400, and a ``stream-error`` fault ends a 200 stream with the provider's own error event.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

from .faults import ANSWER_FAULTS, ERROR_FAULTS
from .replies import Reply, exact_reply, make_reply, scripted
from .structured import answer

if TYPE_CHECKING:
    from .http import Request, Responder
    from .server import SandboxServer

__all__ = [
    "NOT_FOUND_MARK",
    "PROMPT_BLOCK_MARK",
    "BadRequest",
    "ChatCall",
    "Door",
    "Exchange",
    "SSEWriter",
    "StreamCut",
    "bearer",
    "dumps",
    "json_str",
    "key_hint",
    "text_of",
]

Headers = list[tuple[str, str]]

NOT_FOUND_MARK = "does-not-exist"  # a model id containing this gets each door's 404
# a last user message containing this is answered as the prompt-blocked fault (a batch row
# has no fault header: this is how tests block one row of a job)
PROMPT_BLOCK_MARK = "SANDBOX-BLOCK-PROMPT"

# injected error fault -> the logical error kind each door renders in its own format
FAULT_KINDS = {
    "401": "invalid_key",
    "402": "payment",
    "403": "permission",
    "429": "rate_limit",
    "500": "server",
    "503": "unavailable",
    "529": "overloaded",
}


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(obj: Any) -> str:
    """Compact JSON, non-ASCII kept (the bodies are UTF-8)."""
    return _ENCODER.encode(obj)


# a JSON string literal (the C encoder; streams call this once per token)
json_str: Callable[[str], str] = encode_basestring


def key_hint(key: str | None) -> str:
    """Cencori's key hint: ``…`` + last four characters (all masked for short keys)."""
    if not key:
        return "(none)"
    return "…" + key[-4:] if len(key) > 8 else "…"


def text_of(content: Any) -> str:
    """The text of a message content: a string, or a list of text parts/blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, list):
        return "\n".join(text_of(part) for part in content if part)
    return str(content)


def bearer(headers: dict[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, else ``None``."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def new_id(prefix: str, nbytes: int = 12) -> str:
    return prefix + os.urandom(nbytes).hex()


class BadRequest(Exception):
    """The request body is wrong; the door renders it as its 400 (or ``status``)."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int = 400,
        kind: str = "bad_request",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status
        self.kind = kind


class StreamCut(Exception):
    """A ``truncate`` fault closed the connection in the middle of a stream."""


@dataclass
class ChatCall:
    """One chat request, read from any wire format."""

    model: str  # the model id reported back to the client
    provider: str  # who "answers" and whose prices apply
    conversation: list[str]  # every message text, system first
    last_user: str  # the text echoed back
    max_tokens: int | None
    stream: bool
    include_usage: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    served: str = ""  # the model id the answer names (a dated id for an alias)
    first_user: str = ""  # a structured answer is filled from it (see .structured)
    schema: dict[str, Any] | None = None  # the JSON Schema the answer must match
    tool: str | None = None  # Anthropic without output_config: answer as this forced tool
    refused: bool = False  # the answer is the provider's refusal (see .structured)
    filtered: bool = False  # the provider's content filter stopped the answer (no text)
    prompt_blocked: bool = False  # the filter refused the prompt itself (no answer at all)
    images: list[Any] = field(default_factory=list)  # sandbox.images.SeenImage, in order

    @property
    def answered_model(self) -> str:
        return self.served or self.model

    def label(self, via: str | None = None) -> str:
        model = (
            self.model
            if self.model.startswith(self.provider + "/")
            else f"{self.provider}/{self.model}"
        )
        return model + (f" via {via}" if via else "")


class Exchange:
    """One request/response on a connection, with the fault chosen for it."""

    __slots__ = (
        "server",
        "req",
        "resp",
        "route",
        "fault",
        "key",
        "hint",
        "request_id",
        "remaining",
        "model",
        "stream",
        "started",
        "on_complete",
        "door",
    )

    def __init__(
        self, server: SandboxServer, req: Request, resp: Responder, route: str, fault: str | None
    ) -> None:
        self.server = server
        self.req = req
        self.resp = resp
        self.route = route
        self.fault = fault
        self.key: str | None = None
        self.hint = "(none)"
        self.request_id = ""
        self.remaining = 0
        self.model: str | None = None
        self.stream = False
        self.started = time.perf_counter()
        self.door: Door | None = None
        # settles a complete answer (the gateway's debit) just before its last bytes are
        # written, so a client that has read the answer sees the new balance
        self.on_complete: Callable[[], None] | None = None

    def complete(self) -> None:
        if self.on_complete is not None:
            callback, self.on_complete = self.on_complete, None
            callback()

    @property
    def latency_s(self) -> float:
        return self.server.latency_ms / 1000.0

    async def delay(self) -> None:
        """Wait the configured latency (never blocks the loop)."""
        if self.server.latency_ms > 0:
            await asyncio.sleep(self.latency_s)

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    def send_json(
        self,
        status: int,
        obj: Any,
        headers: Iterable[tuple[str, str]] = (),
        content_type: str = "application/json",
    ) -> None:
        """Send a JSON body; on a 200 the ``malformed``/``truncate`` faults apply."""
        body = dumps(obj).encode()
        headers = list(headers)
        if self.fault is not None:
            headers.append(("X-Sandbox-Fault", self.fault))
        if status == 200 and self.fault == "malformed":
            self.resp.send(200, body[: max(1, len(body) // 2)], headers, content_type)
        elif status == 200 and self.fault == "truncate":
            self.resp.send_cut(200, body, headers, content_type)
        else:
            if status == 200:
                self.complete()
            self.resp.send(status, body, headers, content_type)

    def sse(
        self,
        headers: Headers,
        *,
        content_frames: int,
        content_type: str = "text/event-stream; charset=utf-8",
        separator: str = "\n\n",
    ) -> SSEWriter:
        headers = list(headers)
        if self.fault is not None:
            headers.append(("X-Sandbox-Fault", self.fault))
        self.resp.start_stream(200, headers, content_type)
        error_frames = None
        if self.fault == "stream-error" and self.door is not None:
            error_frames = self.door.stream_error_frames(self)
        return SSEWriter(
            self, content_frames=content_frames, separator=separator, error_frames=error_frames
        )

    async def hold(self) -> None:
        """The ``timeout`` fault: answer nothing until the client gives up (or the cap)."""
        self.server.record_timeout(self)
        await self.resp.hold(self.server.timeout_hold_s)


class SSEWriter:
    """Writes SSE frames as HTTP chunks; applies latency spread, truncate and malformed."""

    def __init__(
        self,
        ex: Exchange,
        *,
        content_frames: int,
        separator: str,
        error_frames: list[tuple[str | None, str]] | None = None,
    ) -> None:
        self._ex = ex
        self._resp = ex.resp
        self._sep = separator
        self._buf: list[str] = []
        self._content = 0
        self._error_frames = error_frames
        self._cut_after = (
            max(1, content_frames // 2)
            if (ex.fault == "truncate" or error_frames is not None)
            else None
        )
        self._malformed = ex.fault == "malformed"
        # "spread a little": 10 % of the latency again, spread over the content frames in
        # pauses of at least 1 ms (finer pauses only cost timers and syscalls)
        spread_total = ex.latency_s * 0.1
        pauses = min(max(1, content_frames), int(spread_total / 0.001))
        self._spread = spread_total / pauses if pauses > 0 else 0.0
        self._every = -(-max(1, content_frames) // pauses) if pauses > 0 else 0

    def comment(self, text: str) -> None:
        self._buf.append(f": {text}{self._sep}")

    async def frame(self, data: str, *, event: str | None = None, content: bool = False) -> None:
        if content:
            if self._malformed:
                data = data[: max(1, len(data) // 2)]
                self._malformed = False
            self._content += 1
        self._buf.append((f"event: {event}\n" if event else "") + f"data: {data}{self._sep}")
        if content and self._cut_after is not None and self._content >= self._cut_after:
            if self._error_frames is not None:
                # the provider's error event, then a clean end of the stream (the real APIs
                # close it properly: the status was 200, the body says what went wrong)
                for event, error in self._error_frames:
                    self._buf.append(
                        (f"event: {event}\n" if event else "") + f"data: {error}{self._sep}"
                    )
                await self.flush()
                self._resp.end_stream()
                await self._resp.drain()
                raise StreamCut
            await self.flush()
            self._resp.close()
            raise StreamCut
        if content and self._spread and self._content % self._every == 0:
            await self.flush()
            await asyncio.sleep(self._spread)

    async def flush(self) -> None:
        if self._buf:
            self._resp.write_chunk("".join(self._buf).encode())
            self._buf.clear()
        await self._resp.drain()

    async def close(self) -> None:
        self._ex.complete()
        if self._buf:
            self._resp.write_chunk("".join(self._buf).encode())
            self._buf.clear()
        self._resp.end_stream()
        await self._resp.drain()


class Door:
    """One wire format at one prefix. Subclasses fill in the format-specific parts."""

    name = "door"  # provider name (labels, pricing, stats)
    via: str | None = None  # "cencori" when a gateway answers for another provider
    # whether the format has a content-filter finish (OpenAI's finish_reason
    # content_filter); a door without one answers the content-filter fault as a refusal
    content_filter = False
    # whether the format blocks a prompt before the model runs with a 200 (Gemini's
    # promptFeedback.blockReason); a door without it answers the prompt-blocked fault with
    # its prompt_blocked_error, or else as a refusal
    prompt_block = False

    # --- the parts a door defines -------------------------------------------------------
    def api_key(self, req: Request) -> str | None:
        raise NotImplementedError

    def key_problem(self, key: str | None) -> str | None:
        """``"missing_key"`` / ``"invalid_key"`` or ``None`` when the key is acceptable."""
        if not key:
            return "missing_key"
        if "revoked" in key:
            return "invalid_key"
        return None

    def send_error(
        self,
        ex: Exchange,
        kind: str,
        message: str | None = None,
        *,
        status: int | None = None,
        retry_after: int | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        raise NotImplementedError

    def ok_headers(self, ex: Exchange) -> Headers:
        return []

    def handle_metrics(self, ex: Exchange) -> None:
        """Cencori's Metrics API: only the gateway's doors serve it (sandbox/cencori.py)."""
        raise NotImplementedError

    def parse(self, ex: Exchange) -> ChatCall:
        raise NotImplementedError

    def precheck(self, ex: Exchange, call: ChatCall) -> bool:
        """Door-specific checks after the body is read; send an error and return False."""
        return True

    async def respond(self, ex: Exchange, call: ChatCall, reply: Reply) -> None:
        raise NotImplementedError

    def settle(self, ex: Exchange, call: ChatCall, reply: Reply) -> None:
        """After a complete, unfaulted answer (the gateway debits its wallet here)."""

    def models(self) -> Iterable[tuple[str, str]]:
        """``(model id, owner)`` pairs for the models list."""
        return ()

    def model_known(self, call: ChatCall) -> bool:
        """Whether the provider serves ``call.model`` (else its 404); the test marker
        ``does-not-exist`` is never known."""
        return NOT_FOUND_MARK not in call.model

    def not_found_message(self, call: ChatCall) -> str | None:
        """The provider's own words for an unknown model (None: the door's default)."""
        return None

    def served_model(self, model: str) -> str:
        """The model id the answer reports: providers name the dated snapshot an alias
        points at (``gpt-4o`` → ``gpt-4o-2024-08-06``)."""
        return model

    def context_window(self, call: ChatCall) -> int | None:
        """The model's context window in tokens (None: not checked)."""
        return None

    def prompt_blocked_error(self) -> str | None:
        """The error kind this provider answers a prompt its safety check flags with,
        before the model runs (OpenAI's 400 ``invalid_prompt``); None: it has none."""
        return None

    def answer_early(self, ex: Exchange, call: ChatCall) -> bool:
        """Answer before the model "runs" (the gateway's cache); True when answered."""
        return False

    def context_message(self, call: ChatCall, tokens: int, window: int) -> str:
        """The provider's own words for a prompt over the context window."""
        return f"The prompt is {tokens} tokens, over the {window}-token context window."

    def stream_error_frames(self, ex: Exchange) -> list[tuple[str | None, str]]:
        """``(SSE event name, data)`` frames a provider ends a 200 stream with on an error."""
        return [
            (None, dumps({"error": {"message": "Internal server error", "type": "server_error"}}))
        ]

    # --- the shared pipeline ------------------------------------------------------------
    def _admit(self, ex: Exchange) -> bool:
        """Key and rate-limit checks shared by chat and models routes."""
        key = self.api_key(ex.req)
        ex.key = key
        ex.hint = key_hint(key)
        if ex.fault in ERROR_FAULTS:
            return False
        problem = self.key_problem(key)
        if problem:
            self.send_error(ex, problem)
            return False
        allowed, remaining, retry = ex.server.limiter.hit(key or "")
        ex.remaining = remaining
        if not allowed:
            self.send_error(ex, "rate_limit", retry_after=retry)
            return False
        return True

    async def handle_chat(self, ex: Exchange) -> None:
        ex.request_id = ex.server.new_request_id()
        if not self._admit(ex):
            if ex.fault in ERROR_FAULTS:
                await ex.delay()
                self.send_error(
                    ex, FAULT_KINDS[ex.fault], retry_after=1 if ex.fault == "429" else None
                )
            return
        try:
            call = self.parse(ex)
        except BadRequest as exc:
            self.send_error(
                ex, exc.kind, exc.message, status=exc.status, param=exc.param, code=exc.code
            )
            return
        ex.model = call.model
        ex.stream = call.stream
        ex.door = self
        if not self.model_known(call):
            self.send_error(ex, "not_found", self.not_found_message(call))
            return
        if not self.precheck(ex, call):
            return
        server = ex.server
        fault = ex.fault
        if fault == "content-filter" and not self.content_filter:
            fault = "refusal"  # a door without a content_filter finish: its own refusal
        if fault is None and PROMPT_BLOCK_MARK in call.last_user:
            fault = "prompt-blocked"
        if fault == "prompt-blocked" and not self.prompt_block:
            kind = self.prompt_blocked_error()
            if kind is not None:  # refused before the model ran: an error, nothing billed
                self.send_error(ex, kind)
                return
            fault = "refusal"  # a door without a prompt block: its own refusal
        script = scripted(call.last_user)
        if script is not None and script[0] == "error":
            self.send_error(ex, "bad_request", script[1])
            return
        structured = (
            answer(
                call.schema,
                seed=server.seed,
                label=call.label(self.via),
                conversation=call.conversation,
                first_user=call.first_user,
                last_user=call.last_user,
                fault=fault,
            )
            if script is None
            else None
        )
        if structured is not None:
            call.refused = structured.refused
            reply = exact_reply(
                structured.text, conversation=call.conversation, max_tokens=call.max_tokens
            )
        elif script is not None:
            reply = exact_reply(
                script[1], conversation=call.conversation, max_tokens=call.max_tokens
            )
        else:
            reply = make_reply(
                seed=server.seed,
                label=call.label(self.via),
                conversation=call.conversation,
                last_user=call.last_user,
                max_tokens=call.max_tokens,
            )
        if call.images:
            from .images import with_images

            reply = with_images(
                reply,
                call.images,
                provider=call.provider,
                model=call.model,
                max_tokens=call.max_tokens,
            )
        if fault in ("content-filter", "prompt-blocked"):
            # stopped by the filter before any text: nothing said, nothing billed as output
            # (tests/corpus/openai/chat_content_filter_empty.json), only the prompt
            # (tests/corpus/google/generate_blocked_prompt_prohibited_content.json)
            call.filtered = fault == "content-filter"
            call.prompt_blocked = fault == "prompt-blocked"
            reply = replace(reply, text="", pieces=(), output_tokens=0)
        window = self.context_window(call)
        if window is not None and reply.input_tokens > window:
            self.send_error(ex, "context", self.context_message(call, reply.input_tokens, window))
            return
        call.served = self.served_model(call.model)
        if self.answer_early(ex, call):
            return
        await ex.delay()
        if ex.fault == "timeout":
            await ex.hold()
            return
        if ex.fault is None or ex.fault in ANSWER_FAULTS:
            ex.on_complete = lambda: self.settle(ex, call, reply)
        try:
            await self.respond(ex, call, reply)
        except StreamCut:
            return

    async def handle_models(self, ex: Exchange) -> None:
        ex.request_id = new_id("req_")
        if not self._admit(ex):
            if ex.fault in ERROR_FAULTS:
                self.send_error(
                    ex, FAULT_KINDS[ex.fault], retry_after=1 if ex.fault == "429" else None
                )
            return
        if ex.fault == "timeout":
            await ex.hold()
            return
        created = 1_700_000_000
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": owner}
            for m, owner in self.models()
        ]
        ex.send_json(200, {"object": "list", "data": data}, self.ok_headers(ex))


def max_tokens_of(value: Any, param: str) -> int | None:
    """Validate an optional max-tokens field (a positive integer)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{param} must be a positive integer, got {value!r}", param=param)
    return value
