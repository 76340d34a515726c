"""A reply holding a lone surrogate (``"\\ud800"``: valid JSON, no UTF-8 encoder takes the
decoded text) from a real HTTP endpoint on 127.0.0.1. Before cencori_nb/text.py the answer
came back holding it: ``print(reply.text)`` raised UnicodeEncodeError, a map's DataFrame
could be neither printed, rendered as HTML (what a notebook shows) nor exported to CSV, a
stream's delta could not be printed, and a provider batch row could not be read. Now every
lone surrogate is U+FFFD where the JSON is decoded; a valid pair (an emoji escaped as two
halves) is kept."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx2
import pytest

import cencori_nb
from cencori_nb.ledger import default_ledger
from tests.attacks.support import LoopbackHandler

MODEL = "gpt-4o-mini"
KEY = "sk-hostile-text-" + "T" * 24 + "7e7e"
FFFD = "\ufffd"

# What the endpoint sends, escapes as on the wire: a lone high half, a lone low half, and
# a valid pair (U+1F600) that must survive.
TEXT_ON_WIRE = "hi \\ud800 there \\udfff and \\ud83d\\ude00"
TEXT_READ = f"hi {FFFD} there {FFFD} and \U0001f600"
ID_ON_WIRE = "chatcmpl-\\udbff-x"


def _on_wire(obj: dict[str, Any]) -> str:
    """``obj`` as JSON, its @ID@ and @TEXT@ markers replaced by the escapes above (json.dumps
    cannot write a lone surrogate's escape from a str that holds none)."""
    return json.dumps(obj).replace("@ID@", ID_ON_WIRE).replace("@TEXT@", TEXT_ON_WIRE)


def _reply() -> bytes:
    return _on_wire(
        {
            "id": "@ID@",
            "object": "chat.completion",
            "created": 1,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "@TEXT@"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
        }
    ).encode()


def _stream() -> bytes:
    def event(choices: list[Any], **extra: Any) -> str:
        chunk = {"id": "@ID@", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
        return f"data: {_on_wire({**chunk, 'choices': choices, **extra})}\n\n"

    pieces = ("hi \\ud800", " there", " \\ud83d\\ude00")
    events = [
        event([{"index": 0, "delta": {"content": "@P@"}}]).replace("@P@", piece) for piece in pieces
    ]
    events.append(event([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    events.append(event([], usage=usage))
    events.append("data: [DONE]\n\n")
    return "".join(events).encode()


class _Hostile(LoopbackHandler):
    """Answers every chat with the hostile text (a stream when asked for one)."""

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        streamed = bool(json.loads(self.request_body()).get("stream"))
        kind = "text/event-stream" if streamed else "application/json"
        self.answer(200, kind, _stream() if streamed else _reply())


@pytest.fixture
def endpoint(loopback_openai: Any) -> None:
    """The hostile endpoint as the openai ``base_url`` (a real server on 127.0.0.1)."""
    loopback_openai(_Hostile, KEY)


def _printable(text: str) -> None:
    """What print() to a UTF-8 terminal or a kernel's stream does with it."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    print(text, file=out)
    out.flush()


def test_a_chats_answer_and_id_can_be_printed(endpoint: None) -> None:
    reply = cencori_nb.chat("hello", model=MODEL, route="byok", cache=False)
    assert reply.text == TEXT_READ
    assert reply.request_id == f"chatcmpl-{FFFD}-x"
    _printable(reply.text)
    _printable(repr(reply))
    (row,) = default_ledger().rows()
    assert (row.status, row.input_tokens, row.output_tokens) == ("ok", 9, 7)
    assert row.request_id == f"chatcmpl-{FFFD}-x"


def test_a_streams_deltas_can_be_printed_as_they_arrive(endpoint: None) -> None:
    deltas = []
    with cencori_nb.stream("hello", model=MODEL, route="byok") as s:
        for delta in s:
            _printable(delta)
            deltas.append(delta)
    assert "".join(deltas) == f"hi {FFFD} there \U0001f600"
    assert s.completion is not None and s.completion.request_id == f"chatcmpl-{FFFD}-x"


def test_a_maps_table_prints_renders_and_exports(endpoint: None) -> None:
    df = cencori_nb.map(["a", "b"], model=MODEL, route="byok", cache=False, progress=False)
    assert list(df["text"]) == [TEXT_READ, TEXT_READ]
    assert df["error"].isna().all()
    _printable(df.to_string())
    df._repr_html_().encode("utf-8")  # what JupyterLab renders
    df.to_csv(index=False).encode("utf-8")
    json.dumps(df.to_dict(orient="records"), ensure_ascii=False, default=str).encode("utf-8")


def test_a_batch_result_line_is_read() -> None:
    """A provider batch's results file (OpenAI's JSONL shape) whose answer holds the
    hostile text: the line is read, its row's answer parsed with U+FFFD."""
    from types import SimpleNamespace

    from cencori_nb.jobs.wire import OpenAIBatches, _json, _line
    from cencori_nb.providers import get_provider

    line = json.dumps({"custom_id": "r0", "response": {"status_code": 200, "body": "@B@"}})
    line = line.replace('"@B@"', _reply().decode())
    item = _line(line)
    assert item is not None
    api = OpenAIBatches(get_provider("openai"))
    row = api._row(item)
    decision: Any = SimpleNamespace(base_url="http://127.0.0.1/v1")  # all parse_ok reads
    result = api.parse_ok(row.body, decision)
    assert result.text == TEXT_READ
    wire = httpx2.Response(
        200, content=_reply(), request=httpx2.Request("GET", "http://127.0.0.1/")
    )
    assert _json(wire, "openai")["choices"][0]["message"]["content"] == TEXT_READ


def test_a_structured_answer_and_a_json_display_hold_no_lone_surrogate() -> None:
    """The JSON inside an answer (``schema=``, ``%%cencori -f json``) is decoded again:
    its own "\\ud800" escapes follow the same rule."""
    from dataclasses import dataclass

    from cencori_nb.magic.render import _parse_json
    from cencori_nb.schemas import as_schema

    @dataclass
    class Person:
        name: str

    answer = '{"name": "ab\\ud800cd \\ud83d\\ude00"}'
    parsed = as_schema(Person).parse(answer)
    assert parsed == Person(name=f"ab{FFFD}cd \U0001f600")
    _printable(repr(parsed))
    shown = _parse_json("```json\n" + answer + "\n```")
    assert shown == {"name": f"ab{FFFD}cd \U0001f600"}
    _printable(json.dumps(shown, ensure_ascii=False))
