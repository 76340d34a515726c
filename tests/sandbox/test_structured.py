"""Structured output in the sandbox, judged by the official SDKs, unchanged.

openai ``chat.completions.parse(response_format=Model)`` (also streamed), anthropic
``messages.parse(output_format=Model)`` and a forced tool call, google-genai
``response_json_schema`` and ``response_schema``; the faults that return invalid JSON and
that refuse; what the sandbox refuses as the real APIs do (a non-strict schema under
``strict``, a schema without the JSON MIME type).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Literal

import anthropic
import openai
import pydantic
import pytest
from google import genai

from cencori_nb.sandbox.structured import REFUSAL_TEXT, answer

OPENAI_KEY = "sk-sandboxtest-structured-Qx4F"
ANTHROPIC_KEY = "sk-ant-sandboxtest-structured-Qx4F"
GOOGLE_KEY = "AIza-sandboxtest-structured-Qx4F"

RECORD = (
    "Extract the invoice: 'ACME Tools Ltd billed us 1,234.50 EUR on 2025-03-01 "
    "for 3 items, paid by card.'"
)


class Invoice(pydantic.BaseModel):
    vendor: str
    total: float
    currency: Literal["EUR", "USD", "GBP"]
    issued: dt.date
    items: int
    paid: bool
    note: str | None = None


@pytest.fixture
def oai(sandbox: object) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=sandbox.url + "/openai/v1",  # type: ignore[attr-defined]
        api_key=OPENAI_KEY,
        max_retries=0,
    )


@pytest.fixture
def ant(sandbox: object) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=sandbox.url + "/anthropic",  # type: ignore[attr-defined]
        api_key=ANTHROPIC_KEY,
        max_retries=0,
    )


@pytest.fixture
def gem(sandbox: object) -> genai.Client:
    return genai.Client(
        api_key=GOOGLE_KEY,
        http_options={"base_url": sandbox.url + "/google", "api_version": "v1beta"},  # type: ignore[attr-defined]
    )


def fault(name: str) -> dict[str, str]:
    return {"X-Sandbox-Fault": name}


# --- OpenAI -----------------------------------------------------------------------------


def test_openai_parse_returns_the_model_filled_from_the_prompt(oai: openai.OpenAI) -> None:
    """chat.completions.parse: message.parsed is an Invoice, values taken from the record."""
    completion = oai.chat.completions.parse(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": RECORD}],
        response_format=Invoice,
    )
    message = completion.choices[0].message
    assert message.refusal is None
    invoice = message.parsed
    assert isinstance(invoice, Invoice)
    assert invoice.total == 1234.5 and invoice.items == 3
    assert invoice.currency == "EUR" and invoice.issued == dt.date(2025, 3, 1)
    assert invoice.vendor == "ACME Tools Ltd"  # the first name in it: a sandbox, not a model
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_openai_answer_is_deterministic(oai: openai.OpenAI) -> None:
    """The same request twice: the same JSON."""

    def ask() -> str | None:
        return (
            oai.chat.completions.parse(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "Any invoice, please."}],
                response_format=Invoice,
            )
            .choices[0]
            .message.content
        )

    assert ask() == ask()


def test_openai_stream_parse(oai: openai.OpenAI) -> None:
    """chat.completions.stream(response_format=…): the final completion is parsed."""
    with oai.chat.completions.stream(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": RECORD}],
        response_format=Invoice,
    ) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Invoice)


def test_openai_refusal_fault(oai: openai.OpenAI) -> None:
    """The refusal fault: content null, message.refusal set, parsed None (as OpenAI)."""
    completion = oai.chat.completions.parse(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": RECORD}],
        response_format=Invoice,
        extra_headers=fault("refusal"),
    )
    message = completion.choices[0].message
    assert message.refusal == REFUSAL_TEXT
    assert message.content is None and message.parsed is None


def test_openai_streamed_refusal(oai: openai.OpenAI) -> None:
    """Streamed, the refusal arrives as delta.refusal (the SDK's refusal.done event)."""
    with oai.chat.completions.stream(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "SANDBOX-REFUSE " + RECORD}],
        response_format=Invoice,
    ) as stream:
        events = [e for e in stream if e.type == "refusal.done"]
    assert [e.refusal for e in events] == [REFUSAL_TEXT]  # type: ignore[union-attr]


def test_openai_invalid_json_fault_fails_the_sdks_parse(oai: openai.OpenAI) -> None:
    """The invalid-json fault: the SDK's own parse rejects the answer."""
    with pytest.raises(pydantic.ValidationError):
        oai.chat.completions.parse(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": RECORD}],
            response_format=Invoice,
            extra_headers=fault("invalid-json"),
        )


def test_openai_content_filter_fault_fails_the_sdks_parse(oai: openai.OpenAI) -> None:
    """The content-filter fault: finish_reason content_filter and empty content (as in
    tests/corpus/openai/chat_content_filter_empty.json); the SDK's parse raises its own
    ContentFilterFinishReasonError, streamed or not, and create() shows the finish."""
    ask = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": RECORD}],
        "extra_headers": fault("content-filter"),
    }
    with pytest.raises(openai.ContentFilterFinishReasonError):
        oai.chat.completions.parse(**ask, response_format=Invoice)  # type: ignore[arg-type]
    with (
        pytest.raises(openai.ContentFilterFinishReasonError),
        oai.chat.completions.stream(**ask, response_format=Invoice) as stream,  # type: ignore[arg-type]
    ):
        list(stream)
    plain = oai.chat.completions.create(**ask)  # type: ignore[call-overload]
    assert plain.choices[0].finish_reason == "content_filter"
    assert plain.choices[0].message.content == ""
    assert plain.usage.completion_tokens == 0 and plain.usage.prompt_tokens > 0


def test_content_filter_fault_is_a_refusal_where_the_format_has_no_filter_finish(
    ant: anthropic.Anthropic, gem: genai.Client
) -> None:
    """Anthropic and Gemini have no content_filter finish: the fault answers their own
    refusal (stop_reason refusal; finishReason SAFETY)."""
    message = ant.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=1024,
        messages=[{"role": "user", "content": RECORD}],
        extra_headers=fault("content-filter"),
    )
    assert message.stop_reason == "refusal"
    response = gem.models.generate_content(
        model="gemini-2.5-flash",
        contents=RECORD,
        config={"http_options": {"headers": fault("content-filter")}},
    )
    assert response.candidates and response.candidates[0].finish_reason == "SAFETY"


def test_openai_refuses_a_non_strict_schema_under_strict(oai: openai.OpenAI) -> None:
    """strict with an object lacking additionalProperties:false: OpenAI's 400."""
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "x"}],
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "loose",
                    "strict": True,
                    "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                },
            },
        )
    assert "'additionalProperties' is required to be supplied and to be false" in str(info.value)


# --- Anthropic --------------------------------------------------------------------------


def test_anthropic_parse_output_config(ant: anthropic.Anthropic) -> None:
    """messages.parse(output_format=Invoice): parsed_output is an Invoice."""
    message = ant.messages.parse(
        model="claude-sonnet-4-5",
        max_tokens=1024,
        messages=[{"role": "user", "content": RECORD}],
        output_format=Invoice,
    )
    invoice = message.parsed_output
    assert isinstance(invoice, Invoice)
    assert invoice.total == 1234.5 and message.stop_reason == "end_turn"


def test_anthropic_forced_tool_call(ant: anthropic.Anthropic) -> None:
    """tools + tool_choice {type: tool}: one tool_use block whose input matches the schema."""
    schema = Invoice.model_json_schema()
    message = ant.messages.create(
        model="claude-3-5-haiku-latest",
        max_tokens=1024,
        messages=[{"role": "user", "content": RECORD}],
        tools=[{"name": "Invoice", "description": "the answer", "input_schema": schema}],
        tool_choice={"type": "tool", "name": "Invoice"},
    )
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use" and block.name == "Invoice"
    assert Invoice.model_validate(block.input).items == 3


def test_anthropic_forced_tool_call_streamed(ant: anthropic.Anthropic) -> None:
    """Streamed: input_json_delta pieces that the SDK assembles into the same input."""
    schema = Invoice.model_json_schema()
    with ant.messages.stream(
        model="claude-3-5-haiku-latest",
        max_tokens=1024,
        messages=[{"role": "user", "content": RECORD}],
        tools=[{"name": "Invoice", "description": "the answer", "input_schema": schema}],
        tool_choice={"type": "tool", "name": "Invoice"},
    ) as stream:
        final = stream.get_final_message()
    block = final.content[0]
    assert block.type == "tool_use"
    assert Invoice.model_validate(block.input).total == 1234.5


def test_anthropic_refusal(ant: anthropic.Anthropic) -> None:
    """The refusal fault: stop_reason refusal, as the SDK types it."""
    message = ant.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=1024,
        messages=[{"role": "user", "content": RECORD}],
        extra_headers=fault("refusal"),
    )
    assert message.stop_reason == "refusal"
    assert message.content == []
    # why, where the API and the SDK put it (RefusalStopDetails), also streamed
    assert message.stop_details is not None
    assert message.stop_details.type == "refusal"
    assert message.stop_details.explanation == REFUSAL_TEXT
    with ant.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=1024,
        messages=[{"role": "user", "content": RECORD}],
        extra_headers=fault("refusal"),
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "refusal"
    assert final.stop_details is not None and final.stop_details.explanation == REFUSAL_TEXT


# --- Gemini -----------------------------------------------------------------------------


def test_gemini_response_json_schema(gem: genai.Client) -> None:
    """generate_content with response_json_schema: JSON text that validates."""
    response = gem.models.generate_content(
        model="gemini-2.5-flash",
        contents=RECORD,
        config={
            "response_mime_type": "application/json",
            "response_json_schema": Invoice.model_json_schema(),
        },
    )
    invoice = Invoice.model_validate_json(response.text or "")
    assert invoice.currency == "EUR" and invoice.issued == dt.date(2025, 3, 1)


def test_gemini_response_schema_parsed_by_the_sdk(gem: genai.Client) -> None:
    """response_schema=Invoice (Gemini's OpenAPI subset): the SDK's response.parsed."""
    response = gem.models.generate_content(
        model="gemini-2.5-flash",
        contents=RECORD,
        config={"response_mime_type": "application/json", "response_schema": Invoice},
    )
    assert isinstance(response.parsed, Invoice)
    assert response.parsed.items == 3


def test_gemini_safety_block(gem: genai.Client) -> None:
    """The refusal fault: finishReason SAFETY, no text."""
    response = gem.models.generate_content(
        model="gemini-2.5-flash",
        contents=RECORD,
        config={
            "response_mime_type": "application/json",
            "response_json_schema": Invoice.model_json_schema(),
            "http_options": {"headers": fault("refusal")},
        },
    )
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == "SAFETY"
    assert not response.text


def test_gemini_refuses_a_schema_without_the_json_mime_type(gem: genai.Client) -> None:
    """responseJsonSchema alone: Gemini's 400."""
    from google.genai import errors as gerrors

    with pytest.raises(gerrors.ClientError) as info:
        gem.models.generate_content(
            model="gemini-2.5-flash",
            contents=RECORD,
            config={"response_json_schema": Invoice.model_json_schema()},
        )
    assert info.value.code == 400


# --- the generator itself ---------------------------------------------------------------


def test_answer_fills_every_kind_and_is_seeded() -> None:
    """Every JSON type, nested objects, arrays, enums, refs; another seed, other values."""
    schema = {
        "type": "object",
        "$defs": {"Line": {"type": "object", "properties": {"sku": {"type": "string"}}}},
        "properties": {
            "n": {"type": "integer", "minimum": 5, "maximum": 9},
            "x": {"type": "number"},
            "ok": {"type": "boolean"},
            "when": {"type": "string", "format": "date-time"},
            "kind": {"enum": ["a", "b", "c"]},
            "lines": {"type": "array", "items": {"$ref": "#/$defs/Line"}, "minItems": 2},
            "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "nested": {"type": "object", "properties": {"deep": {"type": "integer"}}},
        },
    }

    def make(seed: int) -> dict[str, object]:
        out = answer(schema, seed=seed, label="t", conversation=["hi"], last_user="hi", fault=None)
        assert out is not None and not out.refused
        value: dict[str, object] = json.loads(out.text)
        return value

    import jsonschema

    first = make(1)
    jsonschema.validate(first, schema)
    assert 5 <= first["n"] <= 9  # type: ignore[operator]
    assert len(first["lines"]) >= 2  # type: ignore[arg-type]
    assert make(1) == first
    assert any(make(seed) != first for seed in range(2, 6))


def test_answer_markers() -> None:
    """SANDBOX-INVALID-JSON only in the last message; WRONG-SHAPE and REFUSE anywhere."""
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}

    def ask(conversation: list[str]) -> object:
        return answer(
            schema,
            seed=0,
            label="t",
            conversation=conversation,
            last_user=conversation[-1],
            fault=None,
        )

    bad = ask(["x SANDBOX-INVALID-JSON y"])
    assert bad is not None
    with pytest.raises(ValueError):
        json.loads(bad.text)  # type: ignore[attr-defined]
    retried = ask(["x SANDBOX-INVALID-JSON y", "{", "Fix it: not JSON."])
    assert json.loads(retried.text) == {"a": "Fix"}  # type: ignore[attr-defined]
    shape = ask(["SANDBOX-WRONG-SHAPE", "{}", "Fix it."])
    assert "a" not in json.loads(shape.text)  # type: ignore[attr-defined]
    refused = ask(["SANDBOX-REFUSE please", "again"])
    assert refused.refused  # type: ignore[attr-defined]
