"""Every piece of context an error is raised with is a declared, typed field of its class.

``CencoriError(message, **context)`` accepts any keyword, so nothing but this test stops a
raise from attaching a field that no class declares (and that type checkers, the docs and
callers reading ``err.<field>`` cannot know about). It reads every call of an error class in
the package, the way a reviewer would.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cencori_nb
from cencori_nb import errors

PACKAGE = Path(cencori_nb.__file__).parent
ERROR_CLASSES = {
    name: cls
    for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, errors.CencoriError)
}
CONSTRUCTOR_ARGS = {"code", "hint"}


def declared_fields(cls: type) -> set[str]:
    return {name for klass in cls.__mro__ for name in getattr(klass, "__annotations__", {})}


def context_keywords(source: str) -> list[tuple[int, str, str]]:
    """(line, error class, keyword) for each keyword of each call of an error class."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = (
            func.id
            if isinstance(func, ast.Name)
            else func.attr
            if isinstance(func, ast.Attribute)
            else None
        )
        if name in ERROR_CLASSES:
            found += [
                (node.lineno, name, kw.arg)
                for kw in node.keywords
                if kw.arg is not None and kw.arg not in CONSTRUCTOR_ARGS
            ]
    return found


def test_every_context_keyword_is_a_declared_field() -> None:
    undeclared = [
        f"{path.relative_to(PACKAGE.parent)}:{line} {name}({keyword}=…)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, name, keyword in context_keywords(path.read_text("utf-8"))
        if keyword not in declared_fields(ERROR_CLASSES[name])
    ]
    assert not undeclared, "declare these fields (with their types) in errors.py:\n" + "\n".join(
        undeclared
    )


@pytest.mark.parametrize(
    "source, expected",
    [
        (
            "raise errors.KeystoreError('m', hint='h', path=p, colour='red')",
            [(1, "KeystoreError", "path"), (1, "KeystoreError", "colour")],
        ),
        ("x = RateLimitError('m', retry_after=3, **ctx)", [(1, "RateLimitError", "retry_after")]),
        ("ValueError('m', path=p)", []),
    ],
)
def test_the_scan_finds_context_keywords(source: str, expected: list[tuple[int, str, str]]) -> None:
    assert context_keywords(source) == expected


def test_an_undeclared_keyword_is_caught() -> None:
    # the check itself can fail: "colour" is not a field of KeystoreError or its bases
    assert "colour" not in declared_fields(errors.KeystoreError)
    assert "path" in declared_fields(errors.KeystoreError)
    assert {"retry_after", "should_retry", "completion"} <= declared_fields(errors.CencoriError)
