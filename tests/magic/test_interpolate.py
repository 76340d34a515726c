"""Prompt interpolation: placeholders filled from the namespace, pasted code left intact."""

from __future__ import annotations

import string
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from cencori_nb.magic.interpolate import interpolate

PASTED = """\
def f(rows):
    lookup = {"a": {"b": 1}, "c": [1, 2]}
    seen = {1, 2, 3}
    empty = {}
    name = "x"
    print(f"{name!r:>10} {lookup['a']} {{literal}}")
    return json.dumps({"k": rows})
"""


def test_simple_name_attr_and_index() -> None:
    """{name}, {name.attr}, {name[key]} and chains are filled from the namespace."""
    ns = {
        "topic": "Saturn",
        "cfg": SimpleNamespace(model="gpt-4o", tags=["a", "b"]),
        "d": {"k": "v", "two words": 2, 3: "three"},
    }
    assert interpolate("About {topic}.", ns) == "About Saturn."
    assert interpolate("{cfg.model} / {cfg.tags[1]} / {cfg.tags[-1]}", ns) == "gpt-4o / b / b"
    assert interpolate("{d[k]} {d['two words']} {d[\"k\"]} {d[3]}", ns) == "v 2 v three"


def test_in_and_out() -> None:
    """{In[n]} and {Out[n]} come from IPython's history objects in the namespace."""
    ns = {"In": ["", "x = 1", "x + 1"], "Out": {2: 2}}
    assert interpolate("cell: {In[1]} -> {Out[2]}", ns) == "cell: x = 1 -> 2"
    assert interpolate("{Out[9]}", ns) == "{Out[9]}"  # missing output: left as written


def test_unknown_names_and_failed_lookups_are_left_as_written() -> None:
    """Anything that does not resolve stays exactly as the user wrote it."""
    ns = {"d": {"k": 1}, "obj": SimpleNamespace(a=1), "items": [1]}
    for text in (
        "{missing}",
        "{d[nope]}",
        "{obj.b}",
        "{items[5]}",
        "{items[x]}",
        "{obj._private}",
        "{obj.__class__}",
        "{d.k}",
    ):
        assert interpolate(text, ns) == text


def test_pasted_python_is_left_intact() -> None:
    """Dict and set literals, an f-string and JSON survive byte for byte."""
    # Names that exist but appear in the code only in non-placeholder positions.
    ns = {"rows": [1], "name": "NOT USED", "json": "NOT USED", "seen": 0}
    # "{name!r:>10}" is not a placeholder; "{{literal}}" is an escape by the documented rule.
    out = interpolate(PASTED, ns)
    assert out == PASTED.replace("{{literal}}", "{literal}")
    assert (
        interpolate('{"model": "x", "n": [1, {"y": 2}]}', ns)
        == '{"model": "x", "n": [1, {"y": 2}]}'
    )


def test_escapes() -> None:
    """{{name}} is a literal {name}, even when name exists; lone }} or {{ stay."""
    ns = {"name": "N"}
    assert interpolate("{{name}} and {name}", ns) == "{name} and N"
    assert interpolate('{"a": {"b": {"c": 1}}}', ns) == '{"a": {"b": {"c": 1}}}'
    assert interpolate("{{", ns) == "{{"


def test_builtins_are_not_looked_up() -> None:
    """Only the given namespace counts: {print} is not a builtin function's repr."""
    assert interpolate("{print} {len}", {"__builtins__": __builtins__}) == "{print} {len}"


def test_no_expression_is_evaluated() -> None:
    """Calls, arithmetic and subscripts with expressions are not placeholders."""
    calls: list[int] = []

    class Boom:
        def __getitem__(self, key: object) -> str:
            calls.append(1)
            return "x"

    ns = {"b": Boom(), "x": 2}
    for text in ("{x + 1}", "{b[x + 1]}", "{__import__('os')}", "{b()}", "{x:>4}"):
        assert interpolate(text, ns) == text
    assert calls == []


def test_value_formatting_is_str() -> None:
    """Values are inserted with str(); a Secret shows only its hint."""
    from cencori_nb.keystore.secret import Secret

    ns = {"n": 3.5, "key": Secret("sk-live-abcdefghijklmnop1234")}
    assert interpolate("{n} {key}", ns) == "3.5 …1234"


_SAFE = st.text(alphabet=string.printable, max_size=200)


@given(_SAFE)
def test_text_without_known_names_is_unchanged_except_escapes(text: str) -> None:
    """With an empty namespace, only {{…}} escapes change the text."""
    out = interpolate(text, {})
    if "{{" not in text:
        assert out == text


@given(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True), _SAFE)
def test_defined_name_is_substituted(name: str, value: str) -> None:
    """A defined name is replaced by its value, wherever it stands."""
    assert interpolate("<{" + name + "}>", {name: value}) == f"<{value}>"


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=5), children, max_size=3)
        ),
        max_leaves=10,
    )
)
def test_json_documents_survive(doc: object) -> None:
    """Any JSON document (nested braces, quotes) comes out unchanged."""
    import json

    text = json.dumps(doc)
    assert interpolate(text, {"a": 1, "b": 2}) == text
