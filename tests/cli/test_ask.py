"""`cencori-nb ask` against the sandbox: streaming, stdin, --json shape, errors."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from typing import Any

import pytest

from cencori_nb import keys
from cencori_nb.cli import main
from cencori_nb.cli.ask import JSON_FIELDS

OPENAI_KEY = "sk-test-cli-" + "A" * 20 + "k1k1"
CENCORI_KEY = "csk_live_cli_" + "B" * 20 + "k2k2"


@pytest.fixture
def sbx(sandbox_env: Any) -> Any:
    keys.set("openai", OPENAI_KEY)
    keys.set_cencori_key(CENCORI_KEY)
    return sandbox_env


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str, *, tty: bool = False) -> None:
    stream = io.StringIO(text)
    stream.isatty = lambda: tty  # type: ignore[method-assign]
    monkeypatch.setattr("sys.stdin", stream)


def test_json_prints_one_object_with_the_documented_fields(
    sbx: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json: exactly the ten fields; money as decimal strings; then a cache hit."""
    assert main(["ask", "-m", "gpt-4o-mini", "--json", "Hello", "json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    obj = json.loads(out)
    assert list(obj) == list(JSON_FIELDS)
    assert "Hello json" in obj["text"]
    assert (obj["provider"], obj["route"], obj["cached"]) == ("openai", "byok", False)
    assert isinstance(obj["input_tokens"], int) and obj["output_tokens"] > 0
    assert isinstance(obj["provider_cost_usd"], str) and Decimal(obj["provider_cost_usd"]) > 0
    assert obj["credits_charged_usd"] == "0"
    assert obj["request_id"]
    assert main(["ask", "-m", "gpt-4o-mini", "--json", "Hello", "json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["cached"] is True and again["text"] == obj["text"]
    assert Decimal(again["provider_cost_usd"]) == 0
    assert sbx.stats["requests"] == 1


def test_streams_text_to_stdout_and_footer_to_stderr(
    sbx: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ask", "-m", "gpt-4o-mini", "Stream", "this"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("[sandbox reply from openai/gpt-4o-mini]")
    assert "Stream this" in captured.out
    assert "gpt-4o-mini-2024-07-18 · BYOK" in captured.err  # OpenAI names the snapshot
    assert sbx.stats["streams"] == 1


def test_prompt_from_stdin_and_options_reach_the_wire(
    sbx: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """stdin prompt, --system, --max-tokens, --temperature, --route managed, --no-stream."""
    _stdin(monkeypatch, "Piped prompt\n")
    code = main(
        [
            "ask",
            "-m",
            "gpt-4o-mini",
            "--route",
            "managed",
            "--system",
            "Be terse",
            "--max-tokens",
            "20",
            "--temperature",
            "0",
            "--no-stream",
            "--no-cache",
        ]
    )
    assert code == 0
    assert "Piped prompt" in capsys.readouterr().out
    sent = sbx.stats["recent"][-1]
    assert sent["path"] == "/api/ai/chat"
    body = sent["json"]
    assert body["messages"][0] == {"role": "system", "content": "Be terse"}
    assert body["messages"][1]["content"] == "Piped prompt\n"
    assert body["temperature"] == 0


def test_no_cache_sends_again(sbx: Any, capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(2):
        assert main(["ask", "-m", "gpt-4o-mini", "--json", "--no-cache", "same"]) == 0
    assert sbx.stats["requests"] == 2


def test_no_prompt_on_a_terminal_is_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _stdin(monkeypatch, "", tty=True)
    assert main(["ask", "-m", "gpt-4o-mini"]) == 1
    err = capsys.readouterr().err
    assert "No prompt given" in err and "Traceback" not in err


def test_not_configured_is_one_plain_line(
    sandbox_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ask", "-m", "claude-haiku-4-5", "hi"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cencori-nb: ") and err.count("\n") == 1
    assert "keys set anthropic" in err and "keys set cencori" in err


def test_bad_route_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["ask", "--route", "cheapest", "hi"])
    assert info.value.code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["ask", "--max-tokens", "{key}", "hi"],
        ["ask", "--temperature", "{key}", "hi"],
        ["ask", "--route", "{key}", "hi"],
    ],
)
def test_bad_option_values_are_not_echoed(
    argv: list[str], canary: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key pasted as an option value: usage error (2) that does not quote it."""
    with pytest.raises(SystemExit) as info:
        main([a.format(key=canary) for a in argv])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert canary not in captured.err and canary not in captured.out
    assert "expected" in captured.err
