"""Every piece of context an error is raised with is a declared, typed field of its class.

``CencoriError(message, **context)`` takes the fields of :class:`~cencori_nb.errors.ErrorContext`
(mypy checks each raise in typed code against it) and, at run time, only those its class
declares. These tests hold the three in step: the ``ErrorContext`` table, the annotated
attributes of the classes (what callers read as ``err.<field>``), and every call of an error
class in the package, read the way a reviewer would (untyped code and untested paths too).
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


# --- the typed context ------------------------------------------------------------------------


def _type_name(annotation: object) -> str:
    return str(getattr(annotation, "__forward_arg__", annotation))


def test_the_context_table_equals_the_declared_attributes() -> None:
    """Each ErrorContext field is an attribute some class declares, with the same type (the
    table's ``path`` is the union of the classes' ``Path`` and ``str``), and the reverse."""
    table = {name: _type_name(t) for name, t in errors.ErrorContext.__annotations__.items()}
    declared: dict[str, set[str]] = {}
    for cls in ERROR_CLASSES.values():
        for name, annotation in vars(cls).get("__annotations__", {}).items():
            if name != "code":
                declared.setdefault(name, set()).add(_type_name(annotation))
    assert set(table) == set(declared)
    for name, types in declared.items():
        if len(types) == 1:
            assert table[name] == next(iter(types)), name
        else:
            members = {part.strip() for t in types for part in t.split("|")}
            assert {part.strip() for part in table[name].split("|")} == members, name


def test_declared_fields_become_attributes_and_the_typed_context() -> None:
    err = errors.RateLimitError(
        "slow down", provider="openai", status_code=429, request_id="req_1", retry_after=2.5
    )
    assert (err.provider, err.status_code, err.request_id, err.retry_after) == (
        "openai",
        429,
        "req_1",
        2.5,
    )
    assert err.context == {
        "provider": "openai",
        "status_code": 429,
        "request_id": "req_1",
        "retry_after": 2.5,
    }
    assert err.rpc_status is None and err.should_retry is None  # undeclared-by-call: defaults
    ledger = errors.LedgerWriteError("not written", pending=3, path=Path("/x/ledger.sqlite"))
    assert (ledger.pending, ledger.path, ledger.spill_path) == (3, Path("/x/ledger.sqlite"), None)


@pytest.mark.parametrize(
    "cls, field",
    [
        (errors.LedgerError, "provider"),  # a field of other classes, not of this one
        (errors.ProviderError, "status"),  # a slip for status_code
        (errors.KeystoreError, "colour"),
        (errors.CreditsExhaustedError, "spend_cap"),  # the spend-cap error's, not this one's
    ],
)
def test_an_undeclared_field_is_refused_when_raised(
    cls: type[errors.CencoriError], field: str
) -> None:
    with pytest.raises(TypeError, match=f"{cls.__name__} has no context field {field}"):
        cls("message", **{field: 1})  # type: ignore[misc]  # the slip under test


def test_a_stored_key_in_a_context_value_is_removed() -> None:
    """A registered credential passed where a name was expected never reaches an attribute,
    the typed context, the message or the hint."""
    from cencori_nb import redact

    stored = "sk-proj-" + "Zq7x" * 10
    redact.register_secret(stored)  # the key store registers every key it opens
    err = errors.ConfigurationError(f"bad route {stored}", route=stored, hint=f"not {stored}")
    assert stored not in str(err) and stored not in repr(err.args)
    assert err.route == redact.MARKER and err.context == {"route": redact.MARKER}
