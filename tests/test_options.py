"""The one options object: what each public function builds once and passes down."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError
from decimal import Decimal

import pytest

from cencori_nb.errors import ConfigurationError
from cencori_nb.options import ChatOptions, parse_max_cost
from cencori_nb.types import Message


def test_request_carries_every_option() -> None:
    opts = ChatOptions(
        model="gpt-4o-mini",
        provider="openai",
        route="byok",
        system="Be brief",
        temperature=0.2,
        max_tokens=12,
        project="p1",
        cache=False,
        retries=1,
        max_cost_usd=Decimal("0.5"),
    )
    req = opts.request("hello", stream=True)
    assert req.messages == (Message("system", "Be brief"), Message("user", "hello"))
    assert (req.model, req.provider, req.route) == ("gpt-4o-mini", "openai", "byok")
    assert (req.temperature, req.max_tokens, req.project) == (0.2, 12, "p1")
    assert req.cache is False and req.stream is True and req.max_cost_usd == Decimal("0.5")


def test_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        ChatOptions().model = "x"  # type: ignore[misc]


def test_fingerprint_is_the_one_checkpoints_were_written_with() -> None:
    """A batch's identity must not change under a checkpoint written by an earlier version:
    the same seven options, as sorted JSON; cache, retries and the limit are not part of it."""
    opts = ChatOptions(model="m", route="byok", temperature=0.3, cache=False, retries=0)
    expected = json.dumps(
        {
            "model": "m",
            "provider": None,
            "route": "byok",
            "system": None,
            "temperature": 0.3,
            "max_tokens": None,
            "project": None,
        },
        sort_keys=True,
    )
    assert opts.fingerprint() == expected
    limited = ChatOptions(model="m", route="byok", temperature=0.3, max_cost_usd=Decimal(1))
    assert limited.fingerprint() == expected


def test_an_option_added_later_counts_only_when_set() -> None:
    """A field added later (schema=, images…) reaches achat and the fingerprint only when
    set, so an injected achat that does not know it and old checkpoints keep working; the
    schema counts by its content, not by the Python object."""
    from cencori_nb.schemas import as_schema

    plain = ChatOptions(model="m")
    assert "schema" not in plain.call_kwargs()
    shape = {"type": "object", "properties": {"a": {"type": "string"}}}
    shaped = ChatOptions(model="m", schema=as_schema(shape))
    assert shaped.call_kwargs()["schema"] is shaped.schema
    assert shaped.fingerprint() != plain.fingerprint()
    same = ChatOptions(model="m", schema=as_schema(dict(shape)))
    assert same.fingerprint() == shaped.fingerprint()
    other = ChatOptions(model="m", schema=as_schema({**shape, "required": ["a"]}))
    assert other.fingerprint() != shaped.fingerprint()


def test_call_kwargs_always_name_the_core_options() -> None:
    assert ChatOptions().call_kwargs() == {
        "model": None,
        "provider": None,
        "route": "auto",
        "system": None,
        "temperature": None,
        "max_tokens": None,
        "project": None,
        "cache": True,
        "retries": None,
    }


@pytest.mark.parametrize("bad", ["abc", "-0.01", "nan", "inf", "1e-13", "", None.__class__])
def test_parse_max_cost_refuses_what_is_not_an_amount(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="max_cost_usd"):
        parse_max_cost(bad)  # type: ignore[arg-type]


def test_parse_max_cost_reads_amounts() -> None:
    assert parse_max_cost(None) is None
    assert parse_max_cost(0) == Decimal(0)
    assert parse_max_cost("0.25") == Decimal("0.25")
    assert parse_max_cost(1.5) == Decimal("1.5")
