"""``%%cencori --schema NAME`` in a real InteractiveShell, against the sandbox."""

from __future__ import annotations

from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from tests.magic.support import assert_one_error_line, last_request, run

OPENAI_KEY = "sk-test-openai-schema-000000Ab12"

DEFINE = """
import pydantic, datetime
class Invoice(pydantic.BaseModel):
    vendor: str
    total: float
    issued: datetime.date
"""


@pytest.fixture
def openai_key(sandbox_env: str) -> str:
    from cencori_nb import keys

    keys.set("openai", OPENAI_KEY, default_model="gpt-4o-mini", make_default=True)
    return OPENAI_KEY


@pytest.mark.parametrize("stream", ["", " --no-stream"])
def test_schema_cell_parses_and_shows_json(
    shell: InteractiveShell, openai_key: str, sandbox: Any, stream: str
) -> None:
    """--schema Invoice: response_format sent, the reply shown as JSON, -o VAR.parsed."""
    run(shell, DEFINE)
    cap, result = run(
        shell,
        f"%%cencori --schema Invoice -o inv --no-cache{stream}\nAcme billed 12.50 on 2025-01-31.",
    )
    assert result.error_in_exec is None
    parsed = shell.user_ns["inv"].parsed
    assert type(parsed).__name__ == "Invoice" and parsed.total == 12.5
    sent = last_request(sandbox)["json"]
    assert sent["response_format"]["json_schema"]["name"] == "Invoice"
    final = cap.outputs[-1].data
    assert '"total"' in final["text/plain"] and "gpt-4o-mini" in final["text/plain"]


def test_schema_name_not_defined(shell: InteractiveShell, openai_key: str, sandbox: Any) -> None:
    """An unknown name: one error line, nothing sent."""
    cap, result = run(shell, "%%cencori --schema NoSuchModel\nhello")
    assert_one_error_line(cap, result, "--schema NoSuchModel", "no variable 'NoSuchModel'")
    assert sandbox.stats["requests"] == 0


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("--schema 'x; import os'", "needs the name of a variable"),
        ("--schema not_a_schema", "schema= takes a pydantic model"),
        ("--schema Invoice.nope", "Invoice has no attribute 'nope'"),
    ],
)
def test_bad_schema_argument(
    shell: InteractiveShell, openai_key: str, sandbox: Any, line: str, fragment: str
) -> None:
    """A name that is not an identifier, a value that is not a schema, a missing attribute:
    one error line each, nothing sent."""
    run(shell, DEFINE + "\nnot_a_schema = 3\n")
    cap, result = run(shell, f"%%cencori {line}\nhello")
    assert_one_error_line(cap, result, fragment)
    assert sandbox.stats["requests"] == 0


def test_refusal_is_one_error_line(shell: InteractiveShell, openai_key: str, sandbox: Any) -> None:
    run(shell, DEFINE)
    cap, result = run(shell, "%%cencori --schema Invoice --no-stream\nSANDBOX-REFUSE hello")
    assert_one_error_line(cap, result, "refused to answer with Invoice")
