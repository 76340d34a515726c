"""OpenAI Chat Completions, and the machinery the OpenAI-compatible family reuses.

Wire format (``POST {base}/chat/completions``, ``Authorization: Bearer``):

- request: ``model``, ``messages``, ``temperature``, ``max_completion_tokens`` (OpenAI's
  current name; ``max_tokens`` is deprecated for OpenAI and rejected by its o-series), and
  when streaming ``stream: true`` + ``stream_options.include_usage`` so a final chunk with
  ``choices: []`` carries the usage;
- usage: ``prompt_tokens`` already includes ``prompt_tokens_details.cached_tokens`` and
  ``completion_tokens`` already includes ``completion_tokens_details.reasoning_tokens``,
  which is our convention (see :mod:`cencori_nb.types`);
- errors: ``{"error": {"message", "type", "param", "code"}}``; request id in ``x-request-id``.

The class is parametrised (``max_tokens_field``, ``include_usage``…) so that
:mod:`.compatible` serves Mistral, Groq, xAI, DeepSeek, Together, OpenRouter and local
servers with the same code.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..catalog import PROVIDERS
from ..errors import (
    AuthenticationError,
    BadResponseError,
    CencoriError,
    InvalidRequestError,
)
from ..types import ChatRequest, Usage
from . import _common as c
from ._images import openai_content
from .base import Provider, ProviderResult, register

if TYPE_CHECKING:
    import httpx2

    from ..keystore.secret import Secret
    from ..schemas import Schema

__all__ = [
    "ChatCompletionsStreamParser",
    "OpenAIProvider",
    "content_text",
    "filtered_refusal",
    "openai_usage",
    "response_format",
]


def response_format(schema: Schema) -> dict[str, Any]:
    """``schema=`` as Chat Completions' ``response_format``: ``json_schema``, ``strict``.

    The same body ``client.chat.completions.parse(response_format=Model)`` sends (strict
    mode needs every property required and no additional ones; see
    :meth:`cencori_nb.schemas.Schema.strict_json_schema`).
    """
    return {
        "type": "json_schema",
        "json_schema": {
            "schema": schema.wire("strict"),
            "name": schema.name,
            "strict": True,
        },
    }


def openai_usage(raw: Any) -> Usage | None:
    """Our :class:`Usage` from an OpenAI-style ``usage`` object (None when absent).

    Handles the variations of the compatible family: DeepSeek's ``prompt_cache_hit_tokens``
    and providers (xAI) whose ``completion_tokens`` leave reasoning out; we detect the latter
    from their own ``total_tokens`` rather than from the provider's name.
    """
    if not isinstance(raw, dict):
        return None
    # Once per answer: a plain int is taken as it is, anything else goes through c.to_int
    # (None, junk, a float); a missing or non-object *_details reads as {} (c.dig's None).
    ptd = raw.get("prompt_tokens_details")
    ptd = ptd if isinstance(ptd, dict) else {}
    ctd = raw.get("completion_tokens_details")
    ctd = ctd if isinstance(ctd, dict) else {}
    v = raw.get("prompt_tokens")
    prompt = v if type(v) is int else c.to_int(v)
    v = raw.get("completion_tokens")
    completion = v if type(v) is int else c.to_int(v)
    v = ptd.get("cached_tokens") or raw.get("prompt_cache_hit_tokens")
    cached = v if type(v) is int else c.to_int(v)
    v = ptd.get("cache_write_tokens")
    cache_write = v if type(v) is int else c.to_int(v)
    v = ctd.get("reasoning_tokens") or raw.get("reasoning_tokens")
    reasoning = v if type(v) is int else c.to_int(v)
    v = ptd.get("image_tokens")
    image_tokens = v if type(v) is int else c.to_int(v)
    total = raw.get("total_tokens")
    output = completion
    if (
        reasoning
        and total is not None
        and c.to_int(total) == prompt + completion + reasoning
        and c.to_int(total) != prompt + completion
    ):
        output = completion + reasoning  # reasoning reported beside completion, not in it
    return Usage(
        input_tokens=prompt,
        output_tokens=output,
        cache_read_tokens=cached,
        cache_write_tokens=cache_write,
        thinking_tokens=reasoning,
        image_tokens=image_tokens,
    )


class OpenAIProvider(Provider):
    """The OpenAI Chat Completions wire format (and, parametrised, its compatible family)."""

    def __init__(
        self,
        name: str = "openai",
        *,
        sandbox_prefix: str | None = None,
        default_base_url: str | None = None,
        max_tokens_field: str = "max_completion_tokens",
        include_usage: bool = True,
        request_id_headers: tuple[str, ...] = ("x-request-id",),
    ) -> None:
        self.name = name
        self.sandbox_prefix = f"/{name}/v1" if sandbox_prefix is None else sandbox_prefix
        info = PROVIDERS.get(name)
        self.default_base_url = (
            default_base_url if default_base_url is not None else (info.base_url if info else "")
        )
        self.max_tokens_field = max_tokens_field
        self.include_usage = include_usage
        self.request_id_headers = request_id_headers

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # --- request ------------------------------------------------------------------------

    def build_request(
        self, request: ChatRequest, *, model: str, api_key: Secret, base_url: str
    ) -> httpx2.Request:
        """``POST {base_url}/chat/completions`` with a Bearer key (none if the key is empty)."""
        headers: dict[str, str] = {}
        key = api_key.reveal() if api_key is not None else ""
        if key:  # a local server (Ollama, vLLM) may need no key: then send no header at all
            headers["Authorization"] = f"Bearer {key}"
        body: dict[str, Any] = {
            "model": model,
            "messages": [
                {"role": m.role, "content": openai_content(m, self.name)} for m in request.messages
            ],
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body[self.max_tokens_field] = request.max_tokens
        if request.stream:
            body["stream"] = True
            if self.include_usage:
                body["stream_options"] = {"include_usage": True}
        if request.schema is not None:
            body["response_format"] = response_format(request.schema)
            c.body_with_extra(body, request, c.RESERVED_EXTRA | {"response_format"})
        else:
            c.body_with_extra(body, request)
        return c.json_request(
            c.join_base(base_url, "/chat/completions"), headers, body, stream=request.stream
        )

    # --- responses ----------------------------------------------------------------------

    def parse_response(self, response: httpx2.Response) -> ProviderResult:
        """Text, model, usage and finish reason of a ``chat.completion``."""
        rid = self.request_id(response)
        body = c.response_json(response, provider=self.name, request_id=rid)
        if body.get("error"):  # some compatible gateways answer 200 with an error object
            raise self.error_from_body(body, status=None, key=c.sent_key(response), request_id=rid)
        where: c.Where = {
            "provider": self.name,
            "status_code": response.status_code,
            "request_id": rid,
        }
        choice = c.require(body, "choices", 0, **where)
        message = c.require(choice, "message", **where) if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise BadResponseError(
                f"The {c.display_name(self.name)} response has no `choices[0].message` object.",
                missing="choices[0].message",
                **where,
            )
        text = content_text(message.get("content"))
        refusal = message.get("refusal")
        if text is None:  # a refusal, or only tool calls: no text to show
            text = refusal or ""
        usage_raw = body.get("usage")
        finish = choice.get("finish_reason")
        return ProviderResult(
            text=str(text),
            model=body.get("model") or None,
            usage=openai_usage(usage_raw),
            finish_reason=finish,
            request_id=rid or body.get("id"),
            reported_cost_usd=c.to_decimal(c.dig(usage_raw, "cost")),
            refusal=str(refusal)
            if isinstance(refusal, str)
            else filtered_refusal(finish, str(text), self.name),
        )

    def stream_parser(self, response: httpx2.Response | None = None) -> ChatCompletionsStreamParser:
        """A parser for ``chat.completion.chunk`` events ending with ``data: [DONE]``."""
        return ChatCompletionsStreamParser(self, **c.stream_context(self, response))

    # --- errors -------------------------------------------------------------------------

    def map_error(self, response: httpx2.Response) -> CencoriError:
        """The error for a >= 400 response (the one place this wire format's errors map)."""
        return c.map_error_body(self, response, c.error_json(response))

    def error_from_body(
        self,
        body: dict[str, Any],
        *,
        status: int | None,
        key: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> CencoriError:
        """Map ``{"error": {...}}`` (from an error response or inside a 200 stream).

        Also reads the compatible family's other shapes: Mistral's top-level ``message``
        (a validation ``detail`` list on 422) and ``type``; xAI's and Ollama's
        ``{"error": "text"}``.
        """
        err = body.get("error")
        if isinstance(err, dict):
            said = err.get("message")
            raw_code, err_type = err.get("code"), err.get("type")
        else:
            said = err if isinstance(err, str) else _detail_text(body.get("message"))
            raw_code, err_type = None, body.get("type")
        # OpenRouter puts the HTTP-like status in error.code (an int), also inside streams.
        if isinstance(raw_code, int) and not isinstance(raw_code, bool):
            status = status if status and status >= 400 else raw_code
            code = err_type if isinstance(err_type, str) else None
        else:
            code = str(raw_code) if raw_code else (err_type if isinstance(err_type, str) else None)
        cls = c.error_class(
            status if status and status >= 400 else None,
            code,
            err_type if isinstance(err_type, str) else None,
        )
        if code == "invalid_api_key" or (
            status == 400 and isinstance(said, str) and _BAD_KEY_400.search(said)
        ):
            # xAI answers a wrong key with 400 "Incorrect API key provided"; no code says so.
            cls = AuthenticationError
        hint: str | None = None
        retryable: bool | None = None
        if code == "insufficient_quota":
            # A 429 that waiting will not fix: the account has no quota or credit left.
            retryable = c.retryable_code(code)
            hint = (
                f"The {c.display_name(self.name)} account is out of quota or credit: "
                "check its plan and billing, or use another route."
            )
        elif code == "invalid_prompt":
            # OpenAI's safety check flagged the prompt before the model ran: a 400, not
            # billed, and the same prompt is flagged again (the SDK's BadRequestError)
            hint = (
                f"{c.display_name(self.name)}'s safety check flagged the prompt before the "
                "model ran (nothing was billed): rephrase it; sent again as is, it is "
                "flagged again."
            )
        elif code == "context_length_exceeded" or (
            cls is InvalidRequestError and c.context_overflow(said)
        ):
            hint = c.CONTEXT_HINT  # xAI says it only in words: "maximum prompt length is"
        elif cls is InvalidRequestError and status == 404:
            hint = (
                "Check the model name: the provider does not know it or this key cannot use it."
                if self.name != "local"
                else "Check the model name; an Ollama server needs it pulled first "
                "(`ollama pull MODEL`)."
            )
        return c.build_error(
            cls,
            provider=self.name,
            status=status,
            said=said,
            code=code,
            request_id=request_id,
            retry_after=retry_after,
            key=key,
            hint=hint,
            retryable=retryable,
        )


def content_text(content: Any) -> str | None:
    """The visible text of a message's ``content``: a string, or a list of content chunks.

    Mistral's reasoning models answer with a list of chunks, ``{"type": "thinking",
    "thinking": [...]}`` and ``{"type": "text", "text": "..."}`` (the mistralai SDK's
    ``ThinkChunk`` / ``TextChunk``); only the ``text`` chunks are the answer, the reasoning
    stays hidden. None when there is no content at all.
    """
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(chunk.get("text") or "")
            for chunk in content
            if isinstance(chunk, dict) and chunk.get("type") == "text"
        )
    return str(content)


def filtered_refusal(finish_reason: Any, text: str, provider: str) -> str | None:
    """The refusal a ``finish_reason: content_filter`` stands for, else None.

    The provider's filter stopped the answer (``content`` is then ``""``, or the text up to
    the cut): openai-python's ``chat.completions.parse()`` raises
    ``ContentFilterFinishReasonError`` for it instead of parsing, so it is a refusal, not
    an answer to validate (and retry, paid, to be filtered again).
    """
    if finish_reason != "content_filter":
        return None
    return text or f"stopped by {c.display_name(provider)}'s content filter (content_filter)"


_BAD_KEY_400 = re.compile(r"\b(?:incorrect|invalid) api key\b", re.IGNORECASE)


def _detail_text(message: Any) -> str | None:
    """Mistral's 422 ``message.detail`` (pydantic errors) as ``loc: msg; …``."""
    if isinstance(message, dict) and isinstance(message.get("detail"), list):
        parts = []
        for item in message["detail"][:3]:
            if isinstance(item, dict):
                loc = ".".join(str(x) for x in item.get("loc") or [] if x != "body")
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
        return "; ".join(parts) or None
    return message if isinstance(message, str) else None


class ChatCompletionsStreamParser(c.AdapterStreamParser):
    """``data: {chat.completion.chunk}`` … ``data: [DONE]``; usage on whichever chunk has it.

    Comment lines (OpenRouter's ``: OPENROUTER PROCESSING``) never reach ``feed``: httpx2's
    SSE decoder drops lines starting with ``:``; an event with empty data is ignored too.
    Usage may come on a final ``choices: []`` chunk (``include_usage``), on the last content
    chunk (Mistral, OpenRouter), under ``x_groq.usage`` (Groq), or not at all (None).
    """

    adapter: OpenAIProvider

    def result(self) -> ProviderResult:
        """The accumulated result; a ``content_filter`` finish is a refusal (see
        :func:`filtered_refusal`), whichever chunk carried it."""
        result = super().result()
        if result.refusal is None:
            result.refusal = filtered_refusal(result.finish_reason, result.text, self.provider)
        return result

    def complete(self) -> bool:
        """``data: [DONE]`` seen, or the finish chunk and the usage arrived before the server
        closed the stream. ``[DONE]`` is OpenAI's convention, not SSE's: compatible servers
        close without it after a whole answer and its usage (ik_llama.cpp#467,
        NousResearch/hermes-agent#90848, tempoxyz/mpp#975, GMI in
        Dstack-TEE/private-ai-gateway#114), and openai-python ends such a stream without
        error. Without usage the close may have cut the usage chunk: still a cut."""
        return self.done or (self.finish_reason is not None and self.usage is not None)

    def feed(self, event: httpx2.ServerSentEvent) -> str | None:
        data = event.data.strip()
        if self.done or not data:
            return None
        if data == "[DONE]":
            self.done = True
            return None
        chunk = self.json(event)
        if not isinstance(chunk, dict):
            raise BadResponseError(
                f"A {c.display_name(self.provider)} stream event is not a JSON object.",
                provider=self.provider,
                request_id=self.request_id,
            )
        if chunk.get("error"):  # an error after the 200 status was sent
            raise self.adapter.error_from_body(
                chunk, status=None, key=self.key, request_id=self.request_id
            )
        if chunk.get("model"):
            self.model = str(chunk["model"])
        if self.request_id is None and chunk.get("id"):
            self.request_id = str(chunk["id"])
        usage_raw = chunk.get("usage") or (
            c.dig(chunk, "x_groq", "usage") if "x_groq" in chunk else None  # no KeyError a chunk
        )
        if isinstance(usage_raw, dict):
            self.usage = openai_usage(usage_raw)
            cost = c.to_decimal(usage_raw.get("cost"))
            if cost is not None:
                self.reported_cost_usd = cost
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return None
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index")
            if index != 0 and c.to_int(index) != 0:  # the common 0 without a call
                continue
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if isinstance(delta.get("refusal"), str):
                    self.refusal = (self.refusal or "") + delta["refusal"]
                content = delta.get("content")
                if type(content) is str:  # the common delta: emit(), inline (once per event)
                    if content:
                        self.parts.append(content)
                        return content
                    return None
                return self.emit(content_text(content))
        return None


register(OpenAIProvider())
