"""Structured answers: JSON that matches the schema a request asked for.

Every door reads the schema from its own wire format (OpenAI ``response_format``,
Anthropic ``output_config.format`` or a forced tool, Gemini ``responseJsonSchema`` /
``responseSchema``, Cencori ``responseFormat``) and answers with :func:`answer`.

The JSON is deterministic: a pure function of the seed, the label, the conversation and the
schema. It "extracts" from the first user message where it can (the record, in an
extraction prompt; a retry's last message only says what to fix), so an extraction notebook
reads plausibly: numbers in the message fill ``number``/``integer`` fields in order, an enum
value named in the message is chosen, an ISO date (``2025-03-01``) fills date fields,
capitalised phrases fill strings; everything else comes from the seeded generator. Every
property is filled (optional ones too), so the answer always matches the schema.

Faults, for the code that reads answers (the conventions of :mod:`.replies` and
:mod:`.faults`):

- ``X-Sandbox-Fault: invalid-json`` (or ``--faults invalid-json=P``), or the marker
  ``SANDBOX-INVALID-JSON`` anywhere in the *last* user message: the answer is cut JSON,
  not parseable. A retry that quotes the error (a new last message) gets a valid answer.
- the marker ``SANDBOX-WRONG-SHAPE`` anywhere in any user message: valid JSON without the
  schema's required properties, every time (what a retry cannot fix).
- ``X-Sandbox-Fault: refusal`` (or ``--faults refusal=P``), or the marker
  ``SANDBOX-REFUSE`` anywhere in any user message: the provider's refusal (OpenAI
  ``message.refusal``, Anthropic ``stop_reason: refusal``, Gemini ``finishReason:
  SAFETY``), also for a request without a schema.

Markers are matched anywhere (not only at the start, unlike ``SANDBOX-ECHO:``) because an
extraction prompt is a template with the record inside it.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "INVALID_JSON_MARK",
    "REFUSAL_TEXT",
    "REFUSE_MARK",
    "WRONG_SHAPE_MARK",
    "Answer",
    "answer",
    "google_schema",
]

INVALID_JSON_MARK = "SANDBOX-INVALID-JSON"
WRONG_SHAPE_MARK = "SANDBOX-WRONG-SHAPE"
REFUSE_MARK = "SANDBOX-REFUSE"
REFUSAL_TEXT = "I'm sorry, but I can't help with that. (sandbox refusal)"

_NUMBER = re.compile(
    r"(?<![\w.])[-+]?\$?\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.])[-+]?\$?\d+(?:\.\d+)?"
)
_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_PHRASE = re.compile(r"\b[A-Z][\w&'.-]*(?:\s+(?:&\s+)?[A-Z][\w&'.-]*)*")
_MAX_DEPTH = 8
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Capitalised words that open a sentence or a greeting rather than name something.
_NOT_NAMES = frozenset(
    "a an and dear extract from hello hi invoice please re subject the this to".split()
)
_TOTALS = ("total", "amount", "sum", "due", "price")


@dataclass(frozen=True)
class Answer:
    """What to send: ``text`` (JSON, or the refusal's words) and whether it is a refusal."""

    text: str
    refused: bool


def answer(
    schema: dict[str, Any] | None,
    *,
    seed: int,
    label: str,
    conversation: Sequence[str],
    last_user: str,
    fault: str | None,
    first_user: str | None = None,
) -> Answer | None:
    """The structured answer (None: no schema and no refusal, answer as usual)."""
    users = "\n".join(conversation)
    if fault == "refusal" or REFUSE_MARK in users:
        return Answer(REFUSAL_TEXT, refused=True)
    if schema is None:
        return None
    rng = _rng(seed, label, conversation, schema)
    if WRONG_SHAPE_MARK in users:
        return Answer(json.dumps({"sandbox": "an object without the schema's fields"}), False)
    source = first_user if first_user else last_user
    for mark in (INVALID_JSON_MARK, WRONG_SHAPE_MARK, REFUSE_MARK):
        source = source.replace(mark, "")  # a marker is an instruction, not content
    value = _Filler(schema, rng, source).value(schema, "", 0)
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if fault == "invalid-json" or INVALID_JSON_MARK in last_user:
        text = text[: max(1, len(text) // 2)]  # cut mid-way: not JSON
    return Answer(text, refused=False)


def google_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Gemini's ``responseSchema`` (OpenAPI subset, ``STRING``/``OBJECT``… types) as JSON
    Schema, so one filler serves both of its fields."""

    def convert(node: Any) -> Any:
        if isinstance(node, list):
            return [convert(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: convert(v) for k, v in node.items()}
        t = out.get("type")
        if isinstance(t, str):
            out["type"] = t.lower()
        if out.pop("nullable", False) and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        return out

    converted: dict[str, Any] = convert(schema)
    return converted


def _rng(
    seed: int, label: str, conversation: Sequence[str], schema: dict[str, Any]
) -> random.Random:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{seed}\0{label}".encode())
    for text in conversation:
        digest.update(b"\0" + text.encode("utf-8", "replace"))
    digest.update(json.dumps(schema, sort_keys=True, default=str).encode())
    return random.Random(int.from_bytes(digest.digest(), "big"))  # noqa: S311 (not crypto)


class _Filler:
    """Fills a schema from the message's numbers, dates, enum words and phrases."""

    def __init__(self, root: dict[str, Any], rng: random.Random, message: str) -> None:
        self.root = root
        self.rng = rng
        self.message = message
        self.lower = message.lower()
        dates = list(_DATE.finditer(message))
        spans = [m.span() for m in dates]
        found = [
            m.group()
            for m in _NUMBER.finditer(message)
            if not any(a <= m.start() < b for a, b in spans)  # 2025-03-01 is a date
        ]
        # "480.00" is an amount even though it is whole; "12" is a count
        self.decimals = [n for raw in found if "." in raw and (n := _to_number(raw)) is not None]
        self.integers = [
            int(n) for raw in found if "." not in raw and (n := _to_number(raw)) is not None
        ]
        self.dates = [m.group() for m in dates]
        self.emails = _EMAIL.findall(message)
        phrases = [_name_part(m.group()) for m in _PHRASE.finditer(message)]
        named = [p for p in phrases if len(p) > 1]
        # names of several words ("ACME Tools Ltd") before single capitalised words
        self.phrases = [p for p in named if " " in p] + [p for p in named if " " not in p]
        self._phrase_at = 0

    def resolve(self, node: Any) -> dict[str, Any]:
        for _ in range(_MAX_DEPTH):
            if not isinstance(node, dict) or not isinstance(node.get("$ref"), str):
                break
            target: Any = self.root
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target.get(part) if isinstance(target, dict) else None
            node = target if isinstance(target, dict) else {}
        return node if isinstance(node, dict) else {}

    def value(self, node: Any, name: str, depth: int) -> Any:
        node = self.resolve(node)
        if depth > _MAX_DEPTH:
            return None
        if "const" in node:
            return node["const"]
        enum = node.get("enum")
        if isinstance(enum, list) and enum:
            named = [v for v in enum if isinstance(v, str) and v.lower() in self.lower]
            return named[0] if named else self.rng.choice(enum)
        for key in ("anyOf", "oneOf"):
            options = node.get(key)
            if isinstance(options, list) and options:
                real = [o for o in options if self.resolve(o).get("type") != "null"]
                if len(real) < len(options) and "email" in name.lower() and not self.emails:
                    return None  # optional, and the text has none: a model would say null
                return self.value((real or options)[0], name, depth + 1)
        if isinstance(node.get("allOf"), list) and node["allOf"]:
            return self.value(node["allOf"][0], name, depth + 1)
        kind = node.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            kind = kinds[0] if kinds else "null"
        if kind == "object" or (kind is None and "properties" in node):
            props = node.get("properties") or {}
            return {k: self.value(v, k, depth + 1) for k, v in props.items()}
        if kind == "array":
            low = int(node.get("minItems") or 1)
            high = int(node.get("maxItems") or max(low, 2))
            count = self.rng.randint(low, max(low, min(high, low + 1)))
            return [self.value(node.get("items") or {}, name, depth + 1) for _ in range(count)]
        if kind == "integer":
            whole = self._next(self.integers, None)
            return self._clamp(node, whole if whole is not None else self.rng.randint(1, 100))
        if kind == "number":
            if any(word in name.lower() for word in _TOTALS) and self.decimals:
                largest = max(self.decimals)
                self.decimals.remove(largest)
                return self._clamp(node, largest)
            found = self._next(self.decimals, None)
            if found is None:
                found = self._next(self.integers, None)
            return self._clamp(
                node, found if found is not None else round(self.rng.uniform(1, 1000), 2)
            )
        if kind == "boolean":
            said = _said(self.lower, name.lower())
            return said if said is not None else self.rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(node, name)

    @staticmethod
    def _next(queue: list[Any], default: Any) -> Any:
        return queue.pop(0) if queue else default

    @staticmethod
    def _clamp(node: dict[str, Any], number: Any) -> Any:
        low, high = node.get("minimum"), node.get("maximum")
        if isinstance(low, int | float) and number < low:
            number = low
        if isinstance(high, int | float) and number > high:
            number = high
        return number

    def _string(self, node: dict[str, Any], name: str) -> str:
        fmt = node.get("format")
        if fmt in ("date", "date-time"):
            day = self._next(self.dates, None) or (
                f"2025-{self.rng.randint(1, 12):02d}-{self.rng.randint(1, 28):02d}"
            )
            return day if fmt == "date" else f"{day}T00:00:00Z"
        if fmt == "email" or "email" in name.lower():
            return self.emails[0] if self.emails else f"{(name or 'someone').lower()}@example.com"
        if fmt == "uuid":
            return f"00000000-0000-4000-8000-{self.rng.getrandbits(48):012x}"
        if self.phrases:
            text = self.phrases[self._phrase_at % len(self.phrases)]
            self._phrase_at += 1
        else:
            text = f"sandbox {name or 'text'}"
        low, high = node.get("minLength"), node.get("maxLength")
        if isinstance(high, int):
            text = text[:high]
        if isinstance(low, int) and len(text) < low:
            text = text.ljust(low, ".")
        return text


def _to_number(raw: str) -> float | int | None:
    cleaned = raw.replace("$", "").replace(",", "")
    try:
        number = float(cleaned)
    except ValueError:
        return None
    return int(number) if number.is_integer() and "." not in cleaned else number


def _name_part(phrase: str) -> str:
    """A capitalised phrase without the greeting or verb it starts with ("From Initech")."""
    words = phrase.strip().split()
    while words and words[0].lower().strip(".,:") in _NOT_NAMES:
        words.pop(0)
    return " ".join(words)


def _said(text: str, name: str) -> bool | None:
    """Whether the text affirms a yes/no field by its name ("paid" / "not paid", "unpaid"),
    or None when it does not mention it."""
    if not name or not re.search(rf"{re.escape(name)}\b", text):  # "unpaid" mentions it
        return None
    negated = re.search(rf"\b(?:not|never|un)\s*(?:yet\s+)?{re.escape(name)}\b", text)
    return negated is None
