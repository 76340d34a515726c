"""The Gemini (Generative Language API) door under ``/google``.

``/{v1,v1beta}/models/{model}:generateContent`` and ``:streamGenerateContent`` — with
``?alt=sse`` a stream of ``data: {GenerateContentResponse}`` frames with no terminator,
each carrying ``usageMetadata`` (the prompt count and the output so far; the last frame
has the totals); without it one JSON array of those responses, as Google does. The key is
read from ``x-goog-api-key`` (``?key=`` also works, though no client of ours sends it).
Errors are Google RPC style ``{"error": {"code", "message", "status", "details"}}``.

As the real API does: an invalid key is **400** ``INVALID_ARGUMENT`` with an ``ErrorInfo``
whose reason is ``API_KEY_INVALID``; a 429 ``RESOURCE_EXHAUSTED`` has **no** ``Retry-After``
header, only a ``RetryInfo`` detail (``retryDelay: "Ns"``) and the "Please retry in Ns"
sentence; 2.5 Flash and Pro think by default, so their usage carries
``thoughtsTokenCount`` (billed as output) unless ``thinkingConfig.thinkingBudget`` is 0
(Flash-Lite does not think unless given a budget), and ``maxOutputTokens`` caps thinking
and answer together (thinking that fills it leaves a candidate with no parts,
``MAX_TOKENS``); an unknown model is 404 ``NOT_FOUND``;
a prompt over the context window is 400 ``INVALID_ARGUMENT``; the ``prompt-blocked`` fault
is a 200 with ``promptFeedback.blockReason`` and no candidates, the ``refusal`` (and
``content-filter``) fault a candidate stopped with ``finishReason: SAFETY`` and an empty
``content``; both count the prompt in ``usageMetadata`` and send no
``candidatesTokenCount``, as Google does.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .common import (
    NOT_FOUND_MARK,
    BadRequest,
    ChatCall,
    Door,
    Exchange,
    Headers,
    dumps,
    json_str,
    max_tokens_of,
    text_of,
)
from .images import find_images
from .models import context_window, is_known
from .openai import SANDBOX_TAG
from .replies import Reply
from .structured import google_schema

__all__ = ["GoogleDoor"]

_ERRORS: dict[str, tuple[int, str, str]] = {
    "missing_key": (
        403,
        "PERMISSION_DENIED",
        "Method doesn't allow unregistered callers "
        "(callers without established identity). Please use API Key or other form "
        "of API consumer identity to call this API.",
    ),
    "invalid_key": (400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
    "payment": (
        402,
        "FAILED_PRECONDITION",
        "Billing is not enabled or the prepaid balance is exhausted for this project.",
    ),
    "permission": (403, "PERMISSION_DENIED", "The caller does not have permission."),
    "not_found": (404, "NOT_FOUND", "The model is not found or is not supported."),
    "rate_limit": (
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check "
        "your plan and billing details. For more information on this error, head "
        "to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    ),
    "server": (500, "INTERNAL", "An internal error has occurred. Please retry."),
    "unavailable": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
    "overloaded": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
    "context": (
        400,
        "INVALID_ARGUMENT",
        "The input token count exceeds the maximum number of tokens allowed.",
    ),
    "bad_request": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
}


def _parts_text(content: Any) -> str:
    """Text of a Content (``{"parts": [{"text": …}]}``), a part list or a plain string."""
    if isinstance(content, dict) and "parts" in content:
        return text_of(content.get("parts"))
    return text_of(content)


class GoogleDoor(Door):
    name = "google"
    prompt_block = True  # promptFeedback.blockReason (the prompt-blocked fault)

    def api_key(self, req: Any) -> str | None:
        key = req.headers.get("x-goog-api-key") or req.query.get("key") or ""
        return key.strip() or None

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
        default_status, rpc_status, default_message = _ERRORS.get(kind, _ERRORS["server"])
        status = status or default_status
        details: list[dict[str, Any]] = []
        headers: Headers = [("x-request-id", ex.request_id)]
        text = (message or default_message) + SANDBOX_TAG
        if kind in ("invalid_key", "missing_key"):
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID" if kind == "invalid_key" else "CONSUMER_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            )
            if kind == "invalid_key":
                details.append(
                    {
                        "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                        "locale": "en-US",
                        "message": default_message,
                    }
                )
        if status == 429:
            # no Retry-After header: Gemini says when in the body only
            delay = retry_after or 1
            text = f"{text}\nPlease retry in {delay}s."
            details += [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/"
                            "generate_content_requests",
                            "quotaId": "GenerateRequestsPerMinutePerProject",
                        }
                    ],
                },
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [
                        {
                            "description": "Learn more about Gemini API quotas",
                            "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                        }
                    ],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay}s"},
            ]
        error: dict[str, Any] = {"code": status, "message": text, "status": rpc_status}
        if details:  # Google leaves "details" out when there are none
            error["details"] = details
        ex.send_json(status, {"error": error}, headers)

    def ok_headers(self, ex: Exchange) -> Headers:
        return [
            ("x-request-id", ex.request_id),
            ("server-timing", f"gfet4t7; dur={ex.elapsed_ms()}"),
        ]

    def parse(self, ex: Exchange) -> ChatCall:
        path = ex.req.path
        version = path.split("/")[2]
        model, _, verb = path.split("/models/", 1)[1].rpartition(":")
        try:
            body = ex.req.json()
        except ValueError:
            raise BadRequest("Invalid JSON payload received.") from None
        if not isinstance(body, dict):
            raise BadRequest("Invalid JSON payload received: expected an object.")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
        system = body.get("systemInstruction") or body.get("system_instruction")
        conversation = [_parts_text(system)] if system else []
        last_user = ""
        first_user: str | None = None
        for content in contents:
            if not isinstance(content, dict):
                raise BadRequest(
                    "* GenerateContentRequest.contents: each content must be an object with parts"
                )
            text = _parts_text(content)
            conversation.append(text)
            if content.get("role", "user") == "user":
                last_user = text
                first_user = text if first_user is None else first_user
        config = body.get("generationConfig") or body.get("generation_config") or {}
        limit = (
            config.get("maxOutputTokens", config.get("max_output_tokens"))
            if isinstance(config, dict)
            else None
        )
        max_tokens = max_tokens_of(limit, "generationConfig.maxOutputTokens")
        thinking = (
            config.get("thinkingConfig", config.get("thinking_config"))
            if isinstance(config, dict)
            else None
        )
        budget = None
        if isinstance(thinking, dict):
            budget = thinking.get("thinkingBudget", thinking.get("thinking_budget"))
        stream = verb == "streamGenerateContent"
        schema = _requested_schema(config if isinstance(config, dict) else {})
        return ChatCall(
            model=model,
            provider=self.name,
            conversation=conversation,
            last_user=last_user,
            first_user=first_user or "",
            max_tokens=max_tokens,
            stream=stream,
            schema=schema,
            images=find_images(contents, key="contents"),
            extra={
                "sse": ex.req.query.get("alt") == "sse",
                "version": version,
                "verb": verb,
                "thinking_budget": budget,
            },
        )

    def model_known(self, call: ChatCall) -> bool:
        return NOT_FOUND_MARK not in call.model and is_known(self.name, call.model)

    def not_found_message(self, call: ChatCall) -> str | None:
        return (
            f"models/{call.model} is not found for API version "
            f"{call.extra.get('version', 'v1beta')}, or is not supported for "
            f"{call.extra.get('verb', 'generateContent')}. Call ListModels to see the list "
            "of available models and their supported methods."
        )

    def context_window(self, call: ChatCall) -> int | None:
        return context_window(self.name, call.model)

    def context_message(self, call: ChatCall, tokens: int, window: int) -> str:
        return (
            f"The input token count ({tokens}) exceeds the maximum number of tokens "
            f"allowed ({window})."
        )

    def stream_error_frames(self, ex: Exchange) -> list[tuple[str | None, str]]:
        return [
            (
                None,
                dumps(
                    {
                        "error": {
                            "code": 503,
                            "message": "The model is overloaded. "
                            "Please try again later." + SANDBOX_TAG,
                            "status": "UNAVAILABLE",
                        }
                    }
                ),
            )
        ]

    @staticmethod
    def thoughts(call: ChatCall, reply: Reply) -> int:
        """Thinking tokens the model spends: 2.5 Flash and Pro think by default (a fixed,
        deterministic amount here), a ``thinkingBudget`` caps it, 0 turns it off; other
        models (and Flash-Lite without a budget) do not think."""
        budget = call.extra.get("thinking_budget")
        model = call.model
        thinks_by_default = model.startswith(
            ("gemini-2.5-flash", "gemini-2.5-pro")
        ) and not model.startswith("gemini-2.5-flash-lite")
        if budget is None:
            if not thinks_by_default:
                return 0
            budget = -1  # dynamic
        if not isinstance(budget, int) or isinstance(budget, bool) or budget == 0:
            return 0
        spent = 3 * reply.input_tokens + 2 * reply.output_tokens + 12
        return spent if budget < 0 else min(spent, budget)

    @staticmethod
    def _usage(reply: Reply, thoughts: int, output: int | None = None) -> dict[str, Any]:
        out = reply.output_tokens if output is None else output
        usage: dict[str, Any] = {"promptTokenCount": reply.input_tokens}
        if out:  # Google leaves the field out when nothing was answered (as recorded)
            usage["candidatesTokenCount"] = out
        usage["totalTokenCount"] = reply.input_tokens + out + thoughts
        if thoughts:  # Google only sends the field when the model thought
            usage["thoughtsTokenCount"] = thoughts
        usage["promptTokensDetails"] = [
            {"modality": "TEXT", "tokenCount": reply.input_tokens - reply.image_tokens}
        ]
        if reply.image_tokens:
            usage["promptTokensDetails"].append(
                {"modality": "IMAGE", "tokenCount": reply.image_tokens}
            )
        return usage

    @staticmethod
    def _prompt_usage(reply: Reply) -> dict[str, Any]:
        """The usage of an answer with no output (a blocked prompt, a filtered candidate):
        Google counts the prompt and sends no ``candidatesTokenCount`` at all."""
        return GoogleDoor._usage(reply, 0, output=0)

    @staticmethod
    def _within_max_output(call: ChatCall, reply: Reply, thoughts: int) -> tuple[Reply, int]:
        """``maxOutputTokens`` caps thinking and answer together (recorded: a 2.5 Pro answer
        with ``maxOutputTokens: 5`` is MAX_TOKENS with no text, only thoughts; measured
        sums land on the cap): the thinking comes first, the answer gets what is left."""
        limit = call.max_tokens
        if limit is None or not thoughts:
            return reply, thoughts
        thoughts = min(thoughts, limit)
        room = limit - thoughts
        if reply.output_tokens <= room:
            return reply, thoughts
        pieces = reply.pieces[:room]
        cut = replace(
            reply, text="".join(pieces), pieces=pieces, output_tokens=room, truncated=True
        )
        return cut, thoughts

    async def _send_one(self, ex: Exchange, call: ChatCall, body: dict[str, Any]) -> None:
        """A whole answer that is one response: a JSON body, a one-element array (a stream
        without ``alt=sse``) or a single SSE frame."""
        if not call.stream or not call.extra.get("sse"):
            ex.send_json(200, [body] if call.stream else body, self.ok_headers(ex))
            return
        sse = ex.sse(self.ok_headers(ex), content_frames=1, separator="\r\n\r\n")
        await sse.frame(dumps(body), content=True)
        await sse.close()

    async def respond(self, ex: Exchange, call: ChatCall, reply: Reply) -> None:
        if call.prompt_blocked:
            # tests/corpus/google/{generate,stream}_blocked_prompt_prohibited_content.json:
            # no candidates at all, the prompt counted (and billed), the same single
            # response whether streamed or not
            await self._send_one(
                ex,
                call,
                {
                    "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                    "usageMetadata": self._prompt_usage(reply),
                    "modelVersion": call.answered_model,
                    "responseId": ex.request_id[4:],
                },
            )
            return
        if call.refused:
            await self._respond_blocked(ex, call, reply)
            return
        reply, thoughts = self._within_max_output(call, reply, self.thoughts(call, reply))
        finish = "MAX_TOKENS" if reply.truncated else "STOP"
        response_id = ex.request_id[4:]
        if not reply.pieces:
            # the thinking used the whole budget: a candidate with no parts
            # (tests/corpus/google/generate_25pro_max_tokens_thinking_empty.json)
            await self._send_one(
                ex,
                call,
                {
                    "candidates": [
                        {"content": {"role": "model"}, "finishReason": finish, "index": 0}
                    ],
                    "usageMetadata": self._usage(reply, thoughts),
                    "modelVersion": call.answered_model,
                    "responseId": response_id,
                },
            )
            return
        if not call.stream:
            ex.send_json(
                200,
                {
                    "candidates": [
                        {
                            "content": {"parts": [{"text": reply.text}], "role": "model"},
                            "finishReason": finish,
                            "index": 0,
                        }
                    ],
                    "usageMetadata": self._usage(reply, thoughts),
                    "modelVersion": call.answered_model,
                    "responseId": response_id,
                },
                self.ok_headers(ex),
            )
            return
        tail = f',"modelVersion":{dumps(call.answered_model)},"responseId":"{response_id}"}}'
        last = len(reply.pieces) - 1
        frames = []
        for i, piece in enumerate(reply.pieces):
            candidate = (
                '{"candidates":[{"content":{"parts":[{"text":'
                + json_str(piece)
                + '}],"role":"model"}'
                + (f',"finishReason":"{finish}"' if i == last else "")
                + ',"index":0}]'
            )
            # every frame carries usage: the prompt, the thinking (done before the first
            # text) and the output so far; the last frame has the totals
            usage = ',"usageMetadata":' + dumps(self._usage(reply, thoughts, output=i + 1))
            frames.append(candidate + usage + tail)
        if not call.extra.get("sse"):
            # without alt=sse Google streams one JSON array of responses
            import json

            ex.send_json(200, [json.loads(f) for f in frames], self.ok_headers(ex))
            return
        sse = ex.sse(self.ok_headers(ex), content_frames=len(frames), separator="\r\n\r\n")
        for frame in frames:
            await sse.frame(frame, content=True)
        await sse.close()

    async def _respond_blocked(self, ex: Exchange, call: ChatCall, reply: Reply) -> None:
        """A refusal as Gemini gives it (tests/corpus/google/generate_25flash_safety_stop
        .json): a candidate stopped with ``finishReason: SAFETY``, an empty ``content``
        object, a rating per category with the one that stopped it ``blocked``, and usage
        counting only the prompt."""
        negligible = (
            "HARM_CATEGORY_DANGEROUS_CONTENT",
            "HARM_CATEGORY_HARASSMENT",
            "HARM_CATEGORY_SEXUALLY_EXPLICIT",
        )
        body = {
            "candidates": [
                {  # no "index" on a filtered candidate, as recorded
                    "content": {},
                    "finishReason": "SAFETY",
                    "safetyRatings": [
                        {
                            "blocked": True,
                            "category": "HARM_CATEGORY_HATE_SPEECH",
                            "probability": "LOW",
                        },
                        *({"category": c, "probability": "NEGLIGIBLE"} for c in negligible),
                    ],
                }
            ],
            "usageMetadata": self._prompt_usage(reply),
            "modelVersion": call.answered_model,
            "responseId": ex.request_id[4:],
        }
        await self._send_one(ex, call, body)


def _requested_schema(config: dict[str, Any]) -> dict[str, Any] | None:
    """``responseJsonSchema`` (JSON Schema) or ``responseSchema`` (Gemini's OpenAPI subset),
    in either spelling; Gemini refuses either without ``responseMimeType:
    application/json``."""
    schema = config.get("responseJsonSchema", config.get("response_json_schema"))
    legacy = config.get("responseSchema", config.get("response_schema"))
    if schema is None and legacy is None:
        return None
    mime = config.get("responseMimeType", config.get("response_mime_type"))
    if mime != "application/json":
        raise BadRequest(
            "* GenerateContentRequest.generation_config.response_mime_type: only "
            "application/json is supported with a response schema."
        )
    if schema is None:
        schema = google_schema(legacy) if isinstance(legacy, dict) else None
    if not isinstance(schema, dict):
        raise BadRequest("* GenerateContentRequest.generation_config.response_schema: invalid")
    return schema
