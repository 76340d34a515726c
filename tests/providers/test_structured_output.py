"""schema= in each adapter: the native form each provider is sent, and answers read back.

Request bodies are compared with what the official SDK sends for the same pydantic model
(captured with a mock transport): ``openai`` ``chat.completions.parse(response_format=…)``,
``anthropic`` ``messages.parse(output_format=…)``, ``google-genai`` ``generate_content``
with ``response_json_schema``. Replies come from the real-responses corpus
(``tests/corpus/*/structured_*.json``, sources in tests/corpus/README.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import httpx2
import pydantic
import pytest

from cencori_nb.errors import ConfigurationError
from cencori_nb.keystore.secret import Secret
from cencori_nb.providers import get_provider
from cencori_nb.providers.anthropic import has_structured_output
from cencori_nb.schemas import as_schema
from cencori_nb.types import ChatRequest

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
BASE = "http://127.0.0.1:9"


class Location(pydantic.BaseModel):
    city: str
    temperature: float
    units: Literal["c", "f"]
    note: str | None = None


def build(provider: str, model: str, *, stream: bool = False, **kw: Any) -> dict[str, Any]:
    request = ChatRequest.from_prompt(
        "What's the weather like in SF?", schema=as_schema(Location), stream=stream, **kw
    )
    http = get_provider(provider).build_request(
        request, model=model, api_key=Secret("sk-test-0000"), base_url=BASE
    )
    body: dict[str, Any] = json.loads(http.content)
    return body


def capture(call: Callable[[httpx2.Client], Any], reply: dict[str, Any]) -> dict[str, Any]:
    """The JSON body an SDK sent, through a MockTransport answering ``reply``."""
    seen: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        return httpx2.Response(200, json=reply)

    with httpx2.Client(transport=httpx2.MockTransport(handler)) as client:
        call(client)
    assert len(seen) == 1
    return seen[0]


OPENAI_REPLY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": '{"city":"SF","temperature":1,"units":"f","note":null}',
            },
            "finish_reason": "stop",
        }
    ],
}


def test_openai_body_equals_the_sdks_parse_request() -> None:
    """response_format is byte-for-byte what openai's chat.completions.parse sends."""
    import openai

    sdk = capture(
        lambda http: openai.OpenAI(
            api_key="sk-test", base_url=BASE, http_client=http, max_retries=0
        ).chat.completions.parse(
            model="gpt-4o",
            messages=[{"role": "user", "content": "What's the weather like in SF?"}],
            response_format=Location,
        ),
        OPENAI_REPLY,
    )
    ours = build("openai", "gpt-4o")
    assert ours["response_format"] == sdk["response_format"]
    assert ours["messages"] == sdk["messages"]


def test_anthropic_body_equals_the_sdks_parse_request() -> None:
    """output_config is what anthropic's messages.parse(output_format=…) sends."""
    import anthropic

    reply = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": '{"city":"SF","temperature":1,"units":"f"}'}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    sdk = capture(
        lambda http: anthropic.Anthropic(
            api_key="k", base_url=BASE, http_client=http, max_retries=0
        ).messages.parse(
            model="claude-sonnet-4-5",
            max_tokens=1024,
            messages=[{"role": "user", "content": "What's the weather like in SF?"}],
            output_format=Location,
        ),
        reply,
    )
    ours = build("anthropic", "claude-sonnet-4-5")
    assert ours["output_config"] == sdk["output_config"]
    assert "tools" not in ours


def test_google_body_equals_the_sdks_response_json_schema_request() -> None:
    """generationConfig is what google-genai sends for response_json_schema."""
    from google import genai

    reply = {
        "candidates": [
            {
                "content": {"parts": [{"text": "{}"}], "role": "model"},
                "finishReason": "STOP",
            }
        ]
    }
    sdk = capture(
        lambda http: genai.Client(
            api_key="k",
            http_options={"base_url": BASE, "api_version": "v1beta", "httpx_client": http},
        ).models.generate_content(
            model="gemini-2.5-flash",
            contents="What's the weather like in SF?",
            config={
                "response_mime_type": "application/json",
                "response_json_schema": Location.model_json_schema(),
            },
        ),
        reply,
    )
    ours = build("google", "gemini-2.5-flash")
    assert ours["generationConfig"] == sdk["generationConfig"]
    assert ours["contents"] == sdk["contents"]


def test_cencori_body_carries_response_format_as_its_docs_show() -> None:
    """Cencori's native door: responseFormat {type: json_schema, json_schema: {name, schema}}."""
    body = build("cencori", "gpt-4o")
    assert body["responseFormat"] == {
        "type": "json_schema",
        "json_schema": {
            "name": "Location",
            "schema": as_schema(Location).strict_json_schema(),
            "strict": True,
        },
    }


def test_compatible_providers_use_the_openai_form() -> None:
    """Mistral, Groq… get Chat Completions' response_format too."""
    assert build("mistral", "mistral-small-latest")["response_format"]["type"] == "json_schema"


@pytest.mark.parametrize(
    ("model", "native"),
    [
        ("claude-sonnet-4-5", True),
        ("claude-sonnet-4-5-20250929", True),
        ("claude-haiku-4-5", True),
        ("claude-opus-4-1", True),
        ("claude-opus-4-7", True),
        ("claude-sonnet-5", True),
        ("claude-opus-4-0", False),
        ("claude-opus-4-20250514", False),
        ("claude-sonnet-4-20250514", False),
        ("claude-3-5-haiku-latest", False),
        ("claude-3-7-sonnet-20250219", False),
        ("some-proxy-model", False),
    ],
)
def test_anthropic_native_structured_output_by_model(model: str, native: bool) -> None:
    """Opus 4.1+, Sonnet 4.5+, Haiku 4.5+ take output_config; older models a forced tool."""
    assert has_structured_output(model) is native
    body = build("anthropic", model)
    if native:
        assert "output_config" in body and "tools" not in body
    else:
        assert "output_config" not in body
        assert body["tool_choice"] == {"type": "tool", "name": "Location"}
        assert body["tools"][0]["name"] == "Location"
        assert body["tools"][0]["input_schema"] == as_schema(Location).anthropic_json_schema()


@pytest.mark.parametrize(
    ("provider", "model", "field"),
    [
        ("openai", "gpt-4o", "response_format"),
        ("cencori", "gpt-4o", "responseFormat"),
        ("anthropic", "claude-sonnet-4-5", "output_config"),
        ("anthropic", "claude-3-5-haiku-latest", "tool_choice"),
    ],
)
def test_extra_cannot_replace_the_schema_field(provider: str, model: str, field: str) -> None:
    """extra={field: …} beside schema= would send one shape and validate another: refused."""
    with pytest.raises(ConfigurationError, match=field):
        build(provider, model, extra={field: {"type": "text"}})


# --- replies -------------------------------------------------------------------------------


RECORDINGS = sorted(CORPUS.glob("*/*structured*.json"))


def response_of(rec: dict[str, Any]) -> httpx2.Response:
    body = json.dumps(rec["body"]).encode() if "body" in rec else rec["body_text"].encode("utf-8")
    return httpx2.Response(
        rec["status"],
        headers=rec["headers"],
        content=body,
        request=httpx2.Request("POST", BASE),
    )


def read(rec: dict[str, Any]) -> Any:
    adapter = get_provider(rec["provider"])
    response = response_of(rec)
    if rec["kind"] == "sse":
        parser = adapter.stream_parser(response)
        for line in rec["body_text"].split("\n\n"):
            if not line.strip():
                continue
            fields = dict(
                part.split(": ", 1) if ": " in part else (part.rstrip(":"), "")
                for part in line.strip().split("\n")
            )
            parser.feed(httpx2.ServerSentEvent(event=fields.get("event"), data=fields["data"]))
        return parser.result()
    return adapter.parse_response(response)


def test_the_corpus_has_structured_answers_from_each_native_form() -> None:
    """OpenAI, Anthropic and Gemini structured recordings, a refusal, and a cut answer."""
    recs = [json.loads(p.read_text()) for p in RECORDINGS]
    assert {r["provider"] for r in recs} >= {"openai", "anthropic", "google"}
    assert any("refusal" in r["expect"] for r in recs)
    assert any("schema_mismatch" in r["expect"] for r in recs)


@pytest.mark.parametrize("path", RECORDINGS, ids=[f"{p.parent.name}/{p.stem}" for p in RECORDINGS])
def test_recorded_structured_answers_are_read(path: Path) -> None:
    """Each recording: the adapter's text and refusal, and the value the schema reads."""
    from cencori_nb.errors import SchemaMismatchError

    rec = json.loads(path.read_text())
    expect = rec["expect"]
    result = read(rec)
    assert result.text == expect["text"]
    assert result.refusal == expect.get("refusal")
    schema = as_schema(rec["request"]["schema"])
    if "parsed" in expect:
        assert schema.parse(result.text) == expect["parsed"]
    if "schema_mismatch" in expect:
        with pytest.raises(SchemaMismatchError, match=expect["schema_mismatch"]):
            schema.parse(result.text)


def test_anthropic_forced_tool_answer_is_the_tool_input() -> None:
    """An older model answers through the forced tool: its input becomes the JSON text."""
    reply = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-20241022",
        "content": [
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "Location",
                "input": {"city": "SF", "temperature": 61.5, "units": "f"},
            }
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 400, "output_tokens": 40},
    }
    result = get_provider("anthropic").parse_response(
        httpx2.Response(200, json=reply, request=httpx2.Request("POST", BASE))
    )
    assert as_schema(Location).parse(result.text) == Location(
        city="SF", temperature=61.5, units="f"
    )
    assert result.refusal is None


def test_anthropic_refusal_stop_reason() -> None:
    """stop_reason: refusal (Anthropic's documented value) sets the refusal."""
    reply = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [],
        "stop_reason": "refusal",
        "usage": {"input_tokens": 20, "output_tokens": 1},
    }
    result = get_provider("anthropic").parse_response(
        httpx2.Response(200, json=reply, request=httpx2.Request("POST", BASE))
    )
    assert result.refusal == ""


@pytest.mark.parametrize(
    ("stop_details", "said"),
    [
        ({"type": "refusal", "category": "cyber", "explanation": "declined"}, "declined"),
        ({"type": "refusal", "category": "bio", "explanation": None}, "declined (bio)"),
        ({"type": "refusal", "category": None, "explanation": None}, "Hello.."),
        ({"type": "refusal", "category": None, "explanation": "  "}, "Hello.."),
        (None, "Hello.."),
        ("junk", "Hello.."),
    ],
)
def test_anthropic_refusal_says_why_from_stop_details(stop_details: Any, said: str) -> None:
    """The reason for stop_reason refusal is stop_details (the anthropic SDK's
    RefusalStopDetails: category, explanation; either may be null), not the text: the docs'
    refusal example has content 'Hello..' and "no additional refusal message". Read from the
    message and, streamed, from message_delta's delta, as the SDK types both."""
    reply = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Hello.."}],
        "stop_reason": "refusal",
        "stop_details": stop_details,
        "usage": {"input_tokens": 20, "output_tokens": 3},
    }
    adapter = get_provider("anthropic")
    result = adapter.parse_response(
        httpx2.Response(200, json=reply, request=httpx2.Request("POST", BASE))
    )
    assert (result.text, result.refusal) == ("Hello..", said)

    events = [
        ("message_start", {"type": "message_start", "message": {**reply, "content": []}}),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hello.."},
            },
        ),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": "refusal",
                    "stop_sequence": None,
                    "stop_details": stop_details,
                },
                "usage": {"output_tokens": 3},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    parser = adapter.stream_parser()
    for name, data in events:
        parser.feed(httpx2.ServerSentEvent(name, json.dumps(data), "", None))
    assert parser.result().refusal == said


def test_gemini_safety_stop_is_a_refusal() -> None:
    """finishReason SAFETY on the candidate: a refusal naming the filter."""
    reply = {
        "candidates": [{"content": {"parts": [], "role": "model"}, "finishReason": "SAFETY"}],
        "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 5},
    }
    result = get_provider("google").parse_response(
        httpx2.Response(200, json=reply, request=httpx2.Request("POST", BASE))
    )
    assert result.refusal == "stopped by Google's content filter (SAFETY)"


@pytest.mark.parametrize(
    ("finish", "hint"),
    [
        ("model_context_window_exceeded", "context window"),
        ("max_tokens", "raise max_tokens"),
        ("length", "raise max_tokens"),
        ("MAX_TOKENS", "raise max_tokens"),
    ],
)
def test_a_cut_answer_is_not_retried_and_says_which_limit(finish: str, hint: str) -> None:
    """A schema= answer cut by a limit is not sent again: Anthropic's
    stop_reason model_context_window_exceeded (the SDK's StopReason) too, where a retry,
    longer by the cut answer and the fix, would be cut again and paid; the hint names the
    limit that cut it."""
    import dataclasses

    from cencori_nb import errors
    from cencori_nb.client import _read_structured, _retry_request
    from cencori_nb.types import Completion

    request = dataclasses.replace(ChatRequest.from_prompt("Where?"), schema=as_schema(Location))
    cut = Completion(
        text='{"city": "S', model="m", provider="anthropic", route="byok", finish_reason=finish
    )
    with pytest.raises(errors.SchemaMismatchError) as info:
        _read_structured(request, cut, None)
    assert hint in (info.value.hint or "")
    assert _retry_request(request, info.value) is None
