"""The %cencori / %%cencori magics in a real InteractiveShell, against the sandbox."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from cencori_nb import state
from cencori_nb.magic import CencoriMagics
from tests.magic.support import assert_one_error_line, last_request, magics_of, run, texts

OPENAI_KEY = "sk-test-openai-0000000000Ab12"
CENCORI_KEY = "csk_live_managed_00000Cd34"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def openai_key(sandbox_env: str) -> str:
    from cencori_nb import keys

    keys.set("openai", OPENAI_KEY, default_model="gpt-4o-mini", make_default=True)
    return OPENAI_KEY


def _restore_env_after_test(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Unset ``name`` now and restore its value after the test, even though the magic sets
    it behind monkeypatch's back (delenv of an unset variable records no undo)."""
    monkeypatch.setenv(name, "placeholder")
    monkeypatch.delenv(name)


# ----------------------------------------------------------------------------- loading
def test_load_twice_keeps_one_instance(shell: InteractiveShell) -> None:
    """%load_ext twice registers one CencoriMagics (one set of config traits)."""
    shell.run_line_magic("reload_ext", "cencori_nb")
    assert sum(isinstance(c, CencoriMagics) for c in shell.configurables) == 1
    assert shell.find_cell_magic("cencori") is not None


def test_unload_removes_the_magics(shell: InteractiveShell) -> None:
    """%unload_ext removes both magics and the configurable; loading again restores them."""
    shell.run_line_magic("unload_ext", "cencori_nb")
    try:
        assert shell.find_line_magic("cencori") is None
        assert shell.find_cell_magic("cencori") is None
        assert not any(isinstance(c, CencoriMagics) for c in shell.configurables)
    finally:
        shell.run_line_magic("load_ext", "cencori_nb")
    assert shell.find_cell_magic("cencori") is not None


def test_config_defaults(shell: InteractiveShell, openai_key: str, sandbox: Any) -> None:
    """%config CencoriMagics.* sets persistent defaults used by later cells."""
    run(shell, '%config CencoriMagics.default_model = "gpt-4o"')
    run(shell, '%config CencoriMagics.default_system = "Be terse."')
    run(shell, "%config CencoriMagics.default_format = 'text'")
    cap, _ = run(shell, "%%cencori --no-cache\nhello config")
    sent = last_request(sandbox)["json"]
    assert sent["model"] == "gpt-4o"
    assert sent["messages"][0] == {"role": "system", "content": "Be terse."}
    assert "text/html" in cap.outputs[-1].data and "<pre" in cap.outputs[-1].data["text/html"]


# ----------------------------------------------------------------------------- the cell
def test_markdown_stream_and_output_var(
    shell: InteractiveShell, openai_key: str, sandbox: Any
) -> None:
    """Default: streamed into one display, final markdown with a footer, -o stores it."""
    cap, result = run(shell, "%%cencori -o reply --no-cache\nWhat is a magic?")
    assert result.error_in_exec is None
    reply = shell.user_ns["reply"]
    assert type(reply).__name__ == "Completion" and reply.route == "byok"
    assert reply.text.startswith("[sandbox reply from")
    final = cap.outputs[-1].data
    # Markdown is rendered to sanitised HTML here; no text/markdown (JupyterLab would run
    # raw HTML inside it as trusted).
    assert "text/markdown" not in final
    assert "[sandbox reply from openai/gpt-4o-mini]" in final["text/html"]
    assert reply.footer() in final["text/plain"] and "BYOK" in final["text/plain"]
    assert all(t.endswith("▌") for t in texts(cap)[:-1])
    assert last_request(sandbox)["stream"] is True


def test_stream_throttle_bounds_redraws(shell: InteractiveShell, openai_key: str) -> None:
    """Throttle 0: one redraw per delta; a huge throttle: only the first and final draw."""
    magics = magics_of(shell)
    magics.stream_throttle_ms = 0
    cap, _ = run(shell, "%%cencori -o reply --no-cache\nCount the redraws please")
    deltas = shell.user_ns["reply"].output_tokens  # the sandbox sends one per token
    # A delta that could be the start of the stored key (a lone "s" of "sk-…") is held back
    # and drawn with the next one (redact.StreamRedactor), so a few deltas share a redraw.
    assert deltas - 3 <= len(cap.outputs) - 2 <= deltas
    magics.stream_throttle_ms = 10**9
    cap, _ = run(shell, "%%cencori --no-cache\nCount the redraws again")
    assert len(cap.outputs) == 2


def test_no_stream_and_cache_footer(shell: InteractiveShell, openai_key: str, sandbox: Any) -> None:
    """--no-stream sends a plain request; the same prompt again is served from the cache."""
    before = sandbox.stats["requests"]
    cap1, _ = run(shell, "%%cencori --no-stream -o reply\nA cached question")
    assert sandbox.stats["requests"] == before + 1
    assert last_request(sandbox)["stream"] is False
    assert len(cap1.outputs) == 1
    cap2, _ = run(shell, "%%cencori --no-stream -o reply\nA cached question")
    assert sandbox.stats["requests"] == before + 1  # nothing sent the second time
    assert shell.user_ns["reply"].cached
    assert "cached" in cap2.outputs[-1].data["text/plain"]


@pytest.mark.parametrize("fmt", ["text", "html", "markdown"])
def test_formats(shell: InteractiveShell, openai_key: str, fmt: str) -> None:
    """Every format is plain text plus sanitised HTML, never text/markdown."""
    cap, _ = run(shell, f"%%cencori -f {fmt} -o reply --no-cache\nFormat {fmt}")
    final = cap.outputs[-1].data
    assert set(final) == {"text/plain", "text/html"}
    assert "[sandbox reply from openai/gpt-4o-mini]" in final["text/html"]


def test_unsafe_html_shows_the_reply_as_is_and_only_with_html(
    shell: InteractiveShell, openai_key: str
) -> None:
    """--unsafe-html (the user's explicit choice) skips the sanitiser for -f html only."""
    payload = "<b onclick='x()'>bold</b>"
    cap, _ = run(shell, f"%%cencori -f html --unsafe-html --no-cache\nSANDBOX-ECHO:{payload}")
    assert f"<div>{payload}</div>" in cap.outputs[-1].data["text/html"]
    cap, _ = run(shell, f"%%cencori -f html --no-cache\nSANDBOX-ECHO:{payload}")
    assert "onclick" not in cap.outputs[-1].data["text/html"]
    assert "<b>bold</b>" in cap.outputs[-1].data["text/html"]
    cap, _ = run(shell, f"%%cencori --unsafe-html --no-cache\nSANDBOX-ECHO:{payload}")
    assert texts(cap) == [
        "cencori: --unsafe-html only applies to -f html (other formats never show a reply's HTML)."
    ]


def test_code_format_puts_code_in_next_cell(shell: InteractiveShell, openai_key: str) -> None:
    """-f code: rendered as a code block, and the code is offered as the next cell."""
    cap, _ = run(shell, "%%cencori -f code -o reply --no-cache\nWrite code")
    text = shell.user_ns["reply"].text
    assert shell.rl_next_input == text  # the sandbox reply has no fence: all of it
    assert "<code class='language-python'>" in cap.outputs[-1].data["text/html"]


def test_json_format_invalid_reply_is_one_error_line(
    shell: InteractiveShell, openai_key: str
) -> None:
    """The sandbox never answers JSON: -f json shows one error line plus the raw text."""
    cap, result = run(shell, "%%cencori -f json --no-stream -o reply\nGive JSON")
    assert_one_error_line(cap, result, "not valid JSON")
    assert shell.user_ns["reply"].text in cap.outputs[0].data["text/plain"]
    assert "application/json" not in cap.outputs[0].data


def test_interpolation_reaches_the_provider(
    shell: InteractiveShell, openai_key: str, sandbox: Any
) -> None:
    """Names are filled from the namespace; pasted code with braces is sent intact."""
    shell.user_ns["topic"] = "Saturn"
    shell.user_ns["cfg"] = {"depth": 3}
    pasted = (
        'lookup = {"a": {"b": 1}}\nseen = {1, 2, 3}\n'
        'print(f"{name!r} {lookup[\'a\']}")\njson_doc = {"k": [1, {"z": 2}]}'
    )
    run(
        shell,
        "%%cencori --no-cache\nTell me about {topic} at depth {cfg[depth]}, "
        "not {undefined_thing}, literally {{topic}}.\n" + pasted,
    )
    sent = last_request(sandbox)["json"]["messages"][-1]["content"]
    assert sent == (
        "Tell me about Saturn at depth 3, not {undefined_thing}, literally {topic}.\n" + pasted
    )


def test_dry_run_sends_nothing(shell: InteractiveShell, openai_key: str, sandbox: Any) -> None:
    """--dry-run shows the decision and an estimated cost; the sandbox sees no request."""
    before = sandbox.stats["requests"]
    cap, result = run(shell, "%%cencori gpt-4o --dry-run --max-tokens 100\nEstimate me")
    assert sandbox.stats["requests"] == before
    assert result.error_in_exec is None
    joined = "\n".join(texts(cap))
    assert "dry run — nothing was sent" in joined and "up to 100 output tokens" in joined
    assert "$" in joined and "BYOK" in joined
    assert "Decision(provider='openai', model='gpt-4o', route='byok'" in joined
    assert OPENAI_KEY not in joined


def test_dry_run_managed_shows_markup(
    shell: InteractiveShell, sandbox_env: str, sandbox: Any
) -> None:
    from cencori_nb import keys

    keys.set_cencori_key(CENCORI_KEY)
    before = sandbox.stats["requests"]
    cap, _ = run(shell, "%%cencori gpt-4o-mini --dry-run\nEstimate managed")
    assert sandbox.stats["requests"] == before
    joined = "\n".join(texts(cap))
    assert "route='managed'" in joined and "Cencori credits" in joined and "+50" in joined
    assert CENCORI_KEY not in joined


# ----------------------------------------------------------------------------- errors
def _ledger_rows() -> Any:
    from cencori_nb import reports

    return reports.usage()


def test_unknown_model(shell: InteractiveShell, openai_key: str) -> None:
    cap, result = run(shell, "%%cencori frobnicator-9\nhi")
    assert_one_error_line(cap, result, "frobnicator-9")


def test_provider_not_configured(shell: InteractiveShell, sandbox_env: str) -> None:
    cap, result = run(shell, "%%cencori claude-haiku-4-5\nhi")
    assert_one_error_line(cap, result, "not configured")


def test_revoked_key_401_is_one_line_and_recorded_once(
    shell: InteractiveShell, sandbox_env: str
) -> None:
    """A 401 from the provider: one line, no traceback, one failed row in the ledger."""
    from cencori_nb import keys

    keys.set("openai", "sk-sandbox-demo-openai-revoked")  # the sandbox's revoked demo key
    for flags in ("", "--no-stream"):
        cap, result = run(shell, f"%%cencori gpt-4o-mini --no-cache {flags}\nhi")
        line = assert_one_error_line(cap, result)
        assert "sk-sandbox-demo" not in line
        assert "openai" in line.lower()
    rows = _ledger_rows()
    failed = rows[rows["status"] == "error"]
    assert len(failed) == 2 and set(failed["route"]) == {"byok"}


def test_zero_credits_is_one_line(shell: InteractiveShell, sandbox_env: str, sandbox: Any) -> None:
    """The managed route with an empty sandbox wallet: the credits error, as one line."""
    from cencori_nb import keys

    keys.set_cencori_key(CENCORI_KEY)
    old = sandbox.balance
    sandbox.set_balance(0)
    try:
        cap, result = run(shell, "%%cencori gpt-4o-mini --no-cache --no-stream\nhi")
    finally:
        sandbox.set_balance(old)
    line = assert_one_error_line(cap, result)
    assert "credit" in line.lower()


def test_usage_error_is_one_line(shell: InteractiveShell) -> None:
    cap, result = run(shell, "%%cencori -f yaml\nhi")
    assert_one_error_line(cap, result, "invalid choice: 'yaml'")


def test_empty_cell_is_one_line(shell: InteractiveShell) -> None:
    cap, result = run(shell, "%%cencori\n   \n")
    assert_one_error_line(cap, result, "empty")


def test_key_shaped_argument_refused_and_scrubbed_from_history(
    shell: InteractiveShell, canary: str
) -> None:
    """A key on the magic line is refused, never echoed, and redacted from the history."""
    for source in (f"%cencori use {canary}", f"%%cencori -s {canary}\nhi"):
        cap, result = run(shell, source)
        line = assert_one_error_line(cap, result, "%cencori setup", "cencori-nb keys set")
        assert canary not in cap.stdout + cap.stderr + "".join(str(o.data) for o in cap.outputs)
        assert canary not in line
    hm = shell.history_manager
    assert not any(canary in s for s in hm.input_hist_raw + hm.input_hist_parsed)
    assert not any(canary in str(v) for k, v in shell.user_ns.items() if k.startswith("_i"))
    hm.writeout_cache()
    rows = hm.db.execute("SELECT source, source_raw FROM history").fetchall()
    assert rows and not any(canary in (a or "") + (b or "") for a, b in rows)


def test_other_exceptions_propagate(shell: InteractiveShell) -> None:
    """Only CencoriErrors become one line: a user object failing in str() raises as usual."""

    class Broken:
        def __str__(self) -> str:
            raise ZeroDivisionError("user bug")

    shell.user_ns["table"] = Broken()
    _cap, result = run(shell, "%%cencori --dry-run\nlook at {table}")
    assert isinstance(result.error_in_exec, ZeroDivisionError)


def test_no_exception_handler_installed(shell: InteractiveShell) -> None:
    """Loading the extension installs no custom exception handler."""
    assert shell.custom_exceptions == ()


def test_key_in_prompt_is_not_sent(
    shell: InteractiveShell, openai_key: str, sandbox: Any, canary: str
) -> None:
    """A key-shaped or stored key in the prompt: nothing sent, one line, history redacted."""
    from cencori_nb import keys

    stored = "mistralplainkey0000000000Tt31"  # no known prefix: caught as stored
    keys.set("mistral", stored)
    for body in (f"why does {canary} fail?", f"my key is {stored}"):
        cap, result = run(shell, f"%%cencori --no-cache\n{body}")
        line = assert_one_error_line(cap, result, "Not sent", "sk-XXXX")
        assert canary not in line and stored not in line
    assert sandbox.stats["requests"] == 0
    assert not any(canary in s or stored in s for s in shell.history_manager.input_hist_raw)
    digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    cap, result = run(shell, f"%%cencori --dry-run\nhash {digest}")
    assert result.error_in_exec is None and "dry run" in texts(cap)[-1]  # hashes are fine


# ----------------------------------------------------------------------------- subcommands
def test_help(shell: InteractiveShell) -> None:
    for source in ("%cencori", "%cencori help", "%cencori -h", "%%cencori -h\nignored"):
        cap, _ = run(shell, source)
        assert "%%cencori [MODEL]" in texts(cap)[0]


def test_unknown_subcommand(shell: InteractiveShell) -> None:
    cap, result = run(shell, "%cencori frobnicate")
    assert_one_error_line(cap, result, "unknown subcommand 'frobnicate'")


def test_providers_table_shows_hints_only(shell: InteractiveShell, openai_key: str) -> None:
    from cencori_nb import keys

    keys.set_cencori_key(CENCORI_KEY)
    cap, _ = run(shell, "%cencori providers")
    table = texts(cap)[0]
    lines = {ln.split("  ")[0]: ln for ln in table.splitlines()}
    assert "Enabled" in lines["OpenAI"] and "…Ab12" in lines["OpenAI"]
    assert "yes" in lines["OpenAI"]  # project default
    assert "Managed" in lines["Anthropic"]
    assert OPENAI_KEY not in table and CENCORI_KEY not in table


def test_models(shell: InteractiveShell) -> None:
    cap, _ = run(shell, "%cencori models anthropic")
    out = texts(cap)[0]
    assert "claude-haiku-4-5" in out and "gpt-4o" not in out
    cap, result = run(shell, "%cencori models nosuch")
    assert_one_error_line(cap, result, "Unknown provider 'nosuch'")


def test_route(shell: InteractiveShell, openai_key: str) -> None:
    cap, _ = run(shell, "%cencori route gpt-4o")
    out = cap.outputs[0].data
    assert "route='byok'" in out["text/plain"] and "openai" in out["text/markdown"]
    assert OPENAI_KEY not in str(out)


def test_usage_summary_and_chart(shell: InteractiveShell, openai_key: str) -> None:
    """After requests, usage shows a summary by provider and route (not the 22-column
    ledger) with whole-number counts and dollars, then a plotly figure."""
    cap, _ = run(shell, "%cencori usage --since 7d")
    assert "no requests recorded since 7d" in texts(cap)[0]
    run(shell, "%%cencori --no-stream --no-cache\nfor usage")
    run(shell, "%%cencori --no-stream --no-cache\nfor usage again")
    cap, _ = run(shell, "%cencori usage --since 7d")
    summary = cap.outputs[0].data
    lines = summary["text/plain"].splitlines()
    assert lines[0].startswith("Usage since 7d — project default")
    assert lines[1].split() == [
        "provider",
        "route",
        "requests",
        "errors",
        "cached",
        "input",
        "tokens",
        "output",
        "tokens",
        "cost",
    ]
    row = lines[2].split()
    assert row[:5] == ["openai", "BYOK", "2", "0", "0"] and row[-1].startswith("$0.0")
    assert all(cell.replace(",", "").isdigit() for cell in row[2:7])  # whole numbers
    assert len(lines) == 3  # one provider and route: no total line
    assert "request_id" not in summary["text/html"] and "<table>" in summary["text/html"]
    assert any("application/vnd.plotly.v1+json" in o.data for o in cap.outputs[1:])


def test_usage_team_groups_by_member(
    shell: InteractiveShell, openai_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """usage --team: one line per member who spent (largest first) and a total line."""
    monkeypatch.setenv("CENCORI_NB_MEMBER", "ana@lab")
    run(shell, "%%cencori --no-stream --no-cache\nana asks")
    monkeypatch.setenv("CENCORI_NB_MEMBER", "bo@lab")
    run(shell, "%%cencori --no-stream --no-cache\nbo asks a longer question than ana did")
    run(shell, "%%cencori --no-stream --no-cache\nbo asks again")
    cap, _ = run(shell, "%cencori usage --team")
    lines = cap.outputs[0].data["text/plain"].splitlines()
    assert lines[0].startswith("Spend by member — every project")
    assert [line.split()[:2] for line in lines[2:]] == [
        ["bo@lab", "2"],
        ["ana@lab", "1"],
        ["total", "3"],
    ]


def test_credits(shell: InteractiveShell) -> None:
    from cencori_nb import wallet

    wallet.top_up(Decimal("12.50"))
    cap, _ = run(shell, "%cencori credits")
    assert "Balance: $12.50" in texts(cap)[0]


def test_use_project(shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    """use PROJECT sets the project for this kernel (in-process env)."""
    _restore_env_after_test(monkeypatch, "CENCORI_NB_PROJECT")
    from cencori_nb import keys

    keys.set("openai", OPENAI_KEY, project="acme")
    cap, _ = run(shell, "%cencori use acme")
    assert os.environ["CENCORI_NB_PROJECT"] == "acme"
    cap, _ = run(shell, "%cencori providers")
    assert "project acme" in texts(cap)[0] and "…Ab12" in texts(cap)[0]
    cap, result = run(shell, "%cencori use 'bad name!'")
    assert_one_error_line(cap, result, "not a project name")


def test_cache_clear(shell: InteractiveShell, openai_key: str) -> None:
    run(shell, "%%cencori --no-stream\ncache me")
    cap, _ = run(shell, "%cencori cache clear")
    assert "1 cached reply removed" in texts(cap)[0]
    cap, _ = run(shell, "%cencori cache clear")
    assert "0 cached replies removed" in texts(cap)[0]


def test_sandbox_on_and_off(shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    """sandbox on starts a server in a thread and points this kernel at it; off undoes it."""
    _restore_env_after_test(monkeypatch, "CENCORI_NB_SANDBOX")
    from cencori_nb import keys

    keys.set("openai", OPENAI_KEY)
    cap, _ = run(shell, "%cencori sandbox on")
    server = magics_of(shell).sandbox_server
    assert server is not None and os.environ["CENCORI_NB_SANDBOX"] == server.url.rstrip("/")
    run(shell, "%%cencori gpt-4o-mini --no-stream --no-cache -o reply\nvia the magic sandbox")
    assert server.stats["requests"] == 1
    assert shell.user_ns["reply"].text.startswith("[sandbox reply")
    cap, _ = run(shell, "%cencori sandbox off")
    assert "CENCORI_NB_SANDBOX" not in os.environ and magics_of(shell).sandbox_server is None
    assert "real providers" in texts(cap)[0]
    cap, _ = run(shell, "%cencori sandbox on http://127.0.0.1:9")
    assert os.environ["CENCORI_NB_SANDBOX"] == "http://127.0.0.1:9"


def test_setup_displays_the_panel(shell: InteractiveShell) -> None:
    cap, result = run(shell, "%cencori setup")
    assert result.error_in_exec is None
    assert "application/vnd.jupyter.widget-view+json" in cap.outputs[0].data


def test_history_file_is_private_to_the_test(ipython: InteractiveShell, tmp_path: Path) -> None:
    """Guard: these tests never write the user's real IPython history."""
    assert str(ipython.history_manager.hist_file) != str(
        Path.home() / ".ipython/profile_default/history.sqlite"
    )


def test_key_refusal_with_a_locked_store(
    shell: InteractiveShell, canary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A passphrase store opened without its passphrase: the refusal is still one line."""
    from cencori_nb import keys

    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "correct horse battery staple")
    keys.set("openai", OPENAI_KEY)
    monkeypatch.delenv("CENCORI_NB_PASSPHRASE")
    state.reset("keystore")
    cap, result = run(shell, f"%cencori use {canary}")
    assert_one_error_line(cap, result, "looks like it contains an API key")


# ----------------------------------------------------------------------------- costly cells
def test_costly_cell_asks_in_the_notebook(
    shell: InteractiveShell, openai_key: str, sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the $0.10 threshold the cell asks (the kernel's stdin); "n" sends nothing and
    leaves one error line, "y" sends once; --max-cost accepts upfront without a question."""
    from cencori_nb import keys

    keys.set("anthropic", "sk-ant-test-magic-" + "Q" * 24 + "z9y8")
    asked: list[str] = []
    answers = iter(["n", "y"])

    def fake_input(question: str = "") -> str:
        asked.append(question)
        return next(answers)

    monkeypatch.setattr("builtins.input", fake_input)
    cell = "%%cencori claude-opus-4-1 --max-tokens 4000 --no-stream\nWrite a long essay"
    cap, result = run(shell, cell)
    assert_one_error_line(cap, result, "may cost up to $0.30", "--max-cost")
    assert len(asked) == 1 and asked[0].endswith("Send it? [y/N] ")
    assert sandbox.stats["requests"] == 0
    cap, result = run(shell, cell)
    assert result.error_in_exec is None and sandbox.stats["requests"] == 1
    assert len(asked) == 2
    cap, result = run(shell, cell.replace("--no-stream", "--max-cost 0.5 --no-cache"))
    assert result.error_in_exec is None and sandbox.stats["requests"] == 2
    assert len(asked) == 2  # no question this time


def test_costly_cell_without_stdin_is_one_error_line(
    shell: InteractiveShell, openai_key: str, sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel that cannot ask (nbval, papermill): the refusal stands, streaming or not."""
    from IPython.core.error import StdinNotImplementedError

    from cencori_nb import keys

    keys.set("anthropic", "sk-ant-test-magic-" + "Q" * 24 + "z9y8")

    def no_stdin(question: str = "") -> str:
        raise StdinNotImplementedError(
            "raw_input was called, but this frontend does not support input requests."
        )

    monkeypatch.setattr("builtins.input", no_stdin)
    for flags in ("--no-stream", ""):
        cap, result = run(
            shell, f"%%cencori claude-opus-4-1 --max-tokens 4000 {flags}\nWrite a long essay"
        )
        assert_one_error_line(cap, result, "nothing was sent")
    assert sandbox.stats["requests"] == 0
