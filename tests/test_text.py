"""cencori_nb/text.py: a lone surrogate, the text no encoder takes, becomes U+FFFD."""

from __future__ import annotations

import json

import pytest

from cencori_nb.text import (
    REPLACEMENT,
    clean_text,
    decoded,
    may_escape_surrogates,
    without_lone_surrogates,
)


@pytest.mark.parametrize(
    ("raw", "escapes"),
    [
        ('{"a": "\\ud800"}', True),
        ('{"a": "\\uDFFF"}', True),
        ('{"a": "\\ud83d\\ude00"}', True),  # a pair: looked at, kept
        ('{"a": "\\u00e9\\u4e2d"}', False),
        ('{"a": "caf\u00e9"}', False),
        ('{"a": 1}', False),
    ],
)
def test_only_json_escaping_a_surrogate_is_walked(raw: str, escapes: bool) -> None:
    assert may_escape_surrogates(raw) is escapes


def test_lone_surrogates_become_replacement_characters_pairs_stay() -> None:
    raw = '{"id": "x\\ud800y", "\\udc00k": ["\\ud83d\\ude00", {"b": "\\udfff", "n": 1}]}'
    value = without_lone_surrogates(json.loads(raw))
    assert value == {
        "id": f"x{REPLACEMENT}y",
        f"{REPLACEMENT}k": ["\U0001f600", {"b": REPLACEMENT, "n": 1}],
    }
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # every text encodes now


def test_a_clean_value_is_returned_as_it_is() -> None:
    value = json.loads('{"a": ["b", {"c": "d\u00e9"}], "n": null}')
    assert without_lone_surrogates(value) is value
    assert value == {"a": ["b", {"c": "d\u00e9"}], "n": None}
    text = "plain"
    assert without_lone_surrogates(text) is text


def test_nesting_as_deep_as_the_decoder_allows_is_walked_without_recursion() -> None:
    depth = 900
    value = without_lone_surrogates(json.loads("[" * depth + '"\\ud800"' + "]" * depth))
    for _ in range(depth):
        value = value[0]
    assert value == REPLACEMENT


def test_decoded_walks_only_json_that_escapes_a_surrogate() -> None:
    raw = '{"a": "\\ud800"}'
    assert decoded(json.loads(raw), raw) == {"a": REPLACEMENT}
    # a str holding a lone surrogate that the raw text does not escape is not looked for
    odd = {"a": "\ud800"}
    assert decoded(odd, '{"a": 1}') is odd


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("plain", "plain"),
        ("nul\x00here", "nul\ufffdhere"),
        ("caf\u00e9 \ud800 \x00", "caf\u00e9 \ufffd \ufffd"),
        ("\U0001f600", "\U0001f600"),
    ],
)
def test_stored_text_has_no_lone_surrogate_and_no_nul(text: str, stored: str) -> None:
    assert clean_text(text) == stored
    stored.encode("utf-8")
