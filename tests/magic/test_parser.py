"""The magic's line parser, key-shape refusal and output rendering (no IPython needed)."""

from __future__ import annotations

import json

import pytest

from cencori_nb.errors import ConfigurationError
from cencori_nb.magic.parser import (
    CellArgs,
    KeyInArgumentsError,
    LineArgs,
    MagicUsageError,
    looks_like_key,
    parse_cell_line,
    parse_line,
    redact,
)
from cencori_nb.magic.render import (
    StreamView,
    error_bundle,
    extract_code,
    render_completion,
)


def test_cell_line_full() -> None:
    """Every option lands in its typed field."""
    args = parse_cell_line(
        "gpt-4o --provider openai --route byok -s 'Be brief.' -t 0.2 "
        "--max-tokens 64 -f json -o reply --no-stream --no-cache "
        "--project acme --dry-run"
    )
    assert args == CellArgs(
        model="gpt-4o",
        provider="openai",
        route="byok",
        system="Be brief.",
        temperature=0.2,
        max_tokens=64,
        format="json",
        output="reply",
        stream=False,
        cache=False,
        project="acme",
        dry_run=True,
    )


def test_cell_line_empty_and_model_flag() -> None:
    """An empty line gives defaults; -m works like the positional model."""
    assert parse_cell_line("") == CellArgs()
    assert parse_cell_line("-m claude-haiku-4-5").model == "claude-haiku-4-5"
    assert parse_cell_line("openrouter/openai/gpt-4o-mini").model == "openrouter/openai/gpt-4o-mini"


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("-f yaml", "invalid choice"),
        ("--route cheapest", "invalid choice"),
        ("-t hot", "invalid float"),
        ("--max-tokens 0", "--max-tokens"),
        ("--bogus", "unrecognized arguments"),
        ("-o 1abc", "variable name"),
        ("a -m b", "two models"),
        ("-s 'unclosed", "quotes"),
        ("-t 3", "between 0 and 2"),
    ],
)
def test_cell_line_errors_are_usage_errors(line: str, fragment: str) -> None:
    """A bad line raises MagicUsageError (a CencoriError), never SystemExit."""
    with pytest.raises(MagicUsageError) as info:
        parse_cell_line(line)
    assert isinstance(info.value, ConfigurationError)
    assert fragment in str(info.value)


def test_line_subcommands() -> None:
    """Each subcommand parses into LineArgs."""
    assert parse_line("") == LineArgs(command="help")
    assert parse_line("help").command == "help"
    assert parse_line("setup --project acme") == LineArgs(command="setup", project="acme")
    assert parse_line("models anthropic") == LineArgs(command="models", provider="anthropic")
    assert parse_line("route gpt-4o --route managed") == LineArgs(
        command="route", model="gpt-4o", route="managed"
    )
    assert parse_line("usage --since 7d") == LineArgs(command="usage", since="7d")
    assert parse_line("use acme") == LineArgs(command="use", project="acme")
    assert parse_line("cache clear") == LineArgs(command="cache", action="clear")
    assert parse_line("sandbox on http://127.0.0.1:9") == LineArgs(
        command="sandbox", action="on", url="http://127.0.0.1:9"
    )
    assert parse_line("sandbox off") == LineArgs(command="sandbox", action="off")


@pytest.mark.parametrize(
    "line", ["frobnicate", "cache purge", "sandbox maybe", "use", "sandbox off http://x"]
)
def test_line_errors(line: str) -> None:
    with pytest.raises(MagicUsageError):
        parse_line(line)


KEYS = [
    "sk-proj-Abc123def456ghi789jkl012",
    "sk-ant-api03-abcdefghijklmnop1234",
    "csk_live_9f8e7d6c5b4a",
    "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStU",
    "gsk_abcdefghij0123456789",
    "xai-abcdefghij0123456789",
    "Zq7xW2vR9tL4pK8mN3bY6cH1aB5dE0fGhJ",
]


@pytest.mark.parametrize("key", KEYS)
def test_key_shaped_arguments_are_refused_without_echo(key: str) -> None:
    """A key anywhere on the line is refused; the message never contains it."""
    for parse, line in (
        (parse_line, f"setup {key}"),
        (parse_line, f"use {key}"),
        (parse_cell_line, f"gpt-4o --project {key}"),
        (parse_cell_line, f"-s 'my key is {key}'"),
    ):
        with pytest.raises(KeyInArgumentsError) as info:
            parse(line)
        message = str(info.value)
        assert key not in message and key[-12:] not in message
        assert "%cencori setup" in message and "cencori-nb keys set" in message
    assert key not in redact(f"x {key} y") and redact(f"x {key} y").startswith("x [redacted]")


@pytest.mark.parametrize(
    "text",
    [
        "gpt-4o-mini",
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "openrouter/meta-llama/llama-3.3-70b-instruct:free",
        "--since 30d --project my-long-project-name-for-tests",
        "claude-3-5-haiku-latest",
        "http://127.0.0.1:8765",
    ],
)
def test_ordinary_arguments_are_not_key_shaped(text: str) -> None:
    assert not looks_like_key(text)
    assert redact(text) == text


# ------------------------------------------------------------------------- rendering
def test_render_formats() -> None:
    """Each format gives the right MIME types, with the footer."""
    md = render_completion("**hi**", "m · BYOK", "markdown").bundle
    assert "text/markdown" not in md  # rendered here, sanitised (see safe_html)
    assert "<strong>hi</strong>" in md["text/html"] and "m · BYOK" in md["text/html"]
    assert md["text/plain"] == "**hi**\n\n[m · BYOK]"
    text = render_completion("<b>x</b>", "f", "text").bundle
    assert "&lt;b&gt;x&lt;/b&gt;" in text["text/html"]
    htm = render_completion("<b>x</b>", "f", "html").bundle
    assert "<b>x</b>" in htm["text/html"]
    code = render_completion("Here:\n```python\nprint(1)\n```\nDone.", "f", "code")
    assert code.next_input == "print(1)"
    assert "<code class='language-python'>print(1)</code>" in code.bundle["text/html"]
    js = render_completion('```json\n{"a": [1, 2]}\n```', "f", "json")
    assert js.error is None and js.bundle["application/json"] == {"a": [1, 2]}
    assert json.loads(js.bundle["text/plain"].split("\n\n[")[0]) == {"a": [1, 2]}


def test_render_invalid_json_is_one_error_line() -> None:
    bad = render_completion("not json at all", "f", "json")
    assert bad.error is not None and bad.error.startswith("the reply is not valid JSON")
    assert bad.bundle["text/plain"] == "not json at all\n\n[f]"  # raw text stays visible
    assert "application/json" not in bad.bundle


def test_extract_code_without_fence_is_whole_text() -> None:
    assert extract_code("x = 1\n") == ("x = 1", "")
    assert extract_code("```sql\nselect 1\n```") == ("select 1", "sql")


def test_error_bundle_is_one_line() -> None:
    b = error_bundle("Provider 'x' is not configured.")
    assert b["text/plain"] == "cencori: Provider 'x' is not configured."
    assert "cencori-error" in b["text/html"]


class _Handle:
    def __init__(self, log: list[dict[str, str]]) -> None:
        self.log = log

    def update(self, content: dict[str, str], raw: bool = False) -> None:
        self.log.append(content)


def test_stream_view_throttles_with_injected_clock() -> None:
    """Deltas closer than the throttle are batched; the final render always lands."""
    log: list[dict[str, str]] = []
    now = [0.0]

    def show(content: dict[str, str]) -> _Handle:
        log.append(content)
        return _Handle(log)

    view = StreamView(show, throttle_ms=100, clock=lambda: now[0])
    view.start()
    for i in range(10):  # 10 deltas, 30 ms apart: 270 ms → at most 3 redraws
        now[0] += 0.03
        view.feed(f"w{i} ")
    view.finish({"text/plain": "final"})
    assert view.text == "".join(f"w{i} " for i in range(10))
    assert log[0]["text/plain"] == " ▌"  # the empty display, shown at once
    redraws = log[1:-1]
    assert 1 <= len(redraws) <= 3
    assert all(r["text/plain"].endswith("▌") for r in redraws)
    assert log[-1] == {"text/plain": "final"}
    assert view.updates == len(log)


def test_key_in_prompt_known_shapes_and_stored_keys() -> None:
    """Known key shapes and exact stored keys are refused; hashes and prose are not."""
    from cencori_nb.keystore.secret import Secret
    from cencori_nb.magic.parser import KeyInPromptError, refuse_key_in_prompt

    stored = frozenset({Secret("plainkeywithoutprefix0042")})
    for prompt in (
        "use sk-proj-Abc123def456ghi789jkl012 here",
        'client = Mistral(api_key="plainkeywithoutprefix0042")',
        "the key plainkeywithoutprefix0042.",
    ):
        with pytest.raises(KeyInPromptError) as info:
            refuse_key_in_prompt(prompt, stored)
        assert "0042" not in str(info.value) and "Abc123" not in str(info.value)
    for prompt in (
        "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "plainkeywithoutprefix004",
        "Summarise {df} please",
        "sk-XXXX",
    ):
        refuse_key_in_prompt(prompt, stored)
    assert redact('k="plainkeywithoutprefix0042"', stored) == 'k="[redacted]"'
