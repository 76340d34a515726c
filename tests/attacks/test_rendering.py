"""Attack: a hostile reply (or provider error text) must never become markup in a notebook.

Each payload in tests/attacks/payloads.py is pushed through every display path: the
magic's markdown, text, html, code and json formats (streamed and not; every redraw),
``--unsafe-html`` refused without ``-f html``, footers, error lines (a provider's error
text through the real sandbox), the providers panel's status and hints, the batch
progress widget, ``Completion._repr_mimebundle_`` and the DataFrame ``map`` returns. The
"model" and the "provider" are the sandbox (a real HTTP server on 127.0.0.1), told to say
exactly the payload with its ``SANDBOX-ECHO:`` / ``SANDBOX-ERROR:`` conventions.

A bundle passes when it carries no ``text/markdown`` (JupyterLab runs HTML inside it as
trusted) and its ``text/html`` has no executable construct
(:func:`attack_payloads.executable_constructs`: no script-ish tags, handlers, non-http
URLs, styles with URLs, or TeX outside an element MathJax skips).
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import CapturedIO, capture_output

from cencori_nb.magic import CencoriMagics
from cencori_nb.magic.render import (
    error_bundle,
    notice_bundle,
    render_completion,
    streaming_bundle,
)
from tests.attacks.payloads import PAYLOADS, executable_constructs

OPENAI_KEY = "sk-test-render-0000000000Xs51"
IDS = [name for name, _text in PAYLOADS]
TEXTS = [text for _name, text in PAYLOADS]
ALL_IN_ONE = "\n\n".join(TEXTS)


def assert_inert(bundle: dict[str, Any], *, math: bool = True) -> None:
    """No text/markdown; text/html (if any) runs and loads nothing."""
    assert "text/markdown" not in bundle, "untrusted text must not be sent as text/markdown"
    fragment = bundle.get("text/html", "")
    assert executable_constructs(fragment, math=math) == [], fragment


# ----------------------------------------------------------------------------- the checker
@pytest.mark.parametrize("payload", TEXTS, ids=IDS)
def test_the_checker_flags_each_payload_rendered_naively(payload: str) -> None:
    """The audit can fail: each payload, as raw HTML or through a markdown renderer that
    keeps raw HTML (what JupyterLab does with text/markdown), is flagged."""
    import mistune

    naive = mistune.create_markdown(escape=False)
    assert executable_constructs(payload) or executable_constructs(str(naive(payload)))


# ----------------------------------------------------------------------------- render.py
@pytest.mark.parametrize("fmt", ["markdown", "text", "html", "code", "json"])
@pytest.mark.parametrize("payload", TEXTS, ids=IDS)
def test_render_completion_is_inert(payload: str, fmt: str) -> None:
    """Every format of the final reply, with the payload in the reply and in the footer."""
    rendered = render_completion(payload, f"model {payload} · BYOK", fmt)
    assert_inert(rendered.bundle)


@pytest.mark.parametrize("payload", TEXTS, ids=IDS)
def test_every_stream_prefix_is_inert(payload: str) -> None:
    """A streaming redraw shows a prefix of the reply: half a tag must be inert too."""
    for end in range(len(payload) + 1):
        assert_inert(streaming_bundle(payload[:end]))


@pytest.mark.parametrize("payload", TEXTS, ids=IDS)
def test_error_and_notice_lines_are_inert(payload: str) -> None:
    assert_inert(error_bundle(payload))
    assert_inert(notice_bundle(f"interrupted; partial reply:\n{payload}"))


def test_markdown_still_formats_and_shows_raw_html_as_text() -> None:
    """Neutralised, not destroyed: markdown formatting stays; raw HTML is shown as text."""
    out = render_completion(
        "**bold** and <img src=x onerror=alert(1)> and [safe](https://example.com)", "f", "markdown"
    ).bundle["text/html"]
    assert "<strong>bold</strong>" in out
    assert "&lt;img src=x onerror=alert(1)&gt;" in out
    assert '<a href="https://example.com" rel="noopener noreferrer nofollow">safe</a>' in out


def test_unsafe_html_is_the_only_way_to_raw_html() -> None:
    """``unsafe_html`` (the --unsafe-html flag) keeps the reply's HTML; nothing else does."""
    raw = '<img src=x onerror="window.__xss=1">'
    assert raw in render_completion(raw, "f", "html", unsafe_html=True).bundle["text/html"]
    for fmt in ("markdown", "text", "code", "json"):
        assert raw not in render_completion(raw, "f", fmt, unsafe_html=True).bundle.get(
            "text/html", ""
        )


# ----------------------------------------------------------------------------- the magic
@pytest.fixture
def shell(ipython: InteractiveShell, sandbox_env: Any) -> Iterator[InteractiveShell]:
    """The shell with an OpenAI key in the sandbox and one redraw per streamed token."""
    from cencori_nb import keys

    keys.set("openai", OPENAI_KEY, default_model="gpt-4o-mini", make_default=True)
    magics = next(c for c in ipython.configurables if isinstance(c, CencoriMagics))
    magics.stream_throttle_ms = 0
    yield ipython
    magics.stream_throttle_ms = 80
    ipython.user_ns.pop("reply", None)


def run(shell: InteractiveShell, source: str) -> CapturedIO:
    with capture_output() as cap:
        result = shell.run_cell(source, store_history=False)
    assert result.error_in_exec is None and result.error_before_exec is None
    return cap


@pytest.mark.parametrize(
    "options", ["", "--no-stream", "-f html", "-f text", "-f code", "-f json --no-stream"]
)
def test_magic_shows_a_hostile_reply_as_data(shell: InteractiveShell, options: str) -> None:
    """The sandbox answers with every payload at once; every output of the cell (each
    stream redraw included) is inert, and the reply object keeps the text exactly."""
    cap = run(shell, f"%%cencori {options} --no-cache -o reply\nSANDBOX-ECHO:{ALL_IN_ONE}")
    assert shell.user_ns["reply"].text == ALL_IN_ONE.rstrip()
    if "--no-stream" not in options:
        assert len(cap.outputs) > 10  # the redraws are there, and each is checked
    for output in cap.outputs:
        assert_inert(output.data)


@pytest.mark.parametrize("payload", TEXTS, ids=IDS)
def test_magic_stream_redraws_per_payload(shell: InteractiveShell, payload: str) -> None:
    """One payload per reply, streamed one token per redraw (so every cut is seen)."""
    cap = run(shell, f"%%cencori --no-cache\nSANDBOX-ECHO:{payload}")
    assert len(cap.outputs) >= 2
    for output in cap.outputs:
        assert_inert(output.data)


@pytest.mark.parametrize("options", ["", "--no-stream"])
def test_provider_error_text_is_one_inert_line(shell: InteractiveShell, options: str) -> None:
    """A provider whose error message is hostile: one escaped ``cencori:`` line."""
    cap = run(shell, f"%%cencori {options} --no-cache\nSANDBOX-ERROR:{ALL_IN_ONE}")
    errors = [o.data for o in cap.outputs if "cencori-error" in o.data.get("text/html", "")]
    assert len(errors) == 1
    assert "window.__xss" in html.unescape(errors[0]["text/html"])  # shown, as text
    for output in cap.outputs:
        assert_inert(output.data)


def test_unsafe_html_without_html_format_is_refused(
    shell: InteractiveShell, sandbox_env: Any
) -> None:
    before = sandbox_env.stats["requests"]
    cap = run(shell, "%%cencori --unsafe-html --no-cache\nSANDBOX-ECHO:<b>x</b>")
    assert [o.data["text/plain"] for o in cap.outputs] == [
        "cencori: --unsafe-html only applies to -f html (other formats never show a reply's HTML)."
    ]
    assert sandbox_env.stats["requests"] == before  # refused before sending


@pytest.mark.parametrize("payload", TEXTS, ids=IDS)
def test_completion_repr_is_inert(payload: str) -> None:
    """A Completion left as a cell's Out (``reply`` on its own line)."""
    from cencori_nb.types import Completion

    c = Completion(
        text=payload,
        model=payload,
        provider="openai",
        route="byok",
        input_tokens=1,
        output_tokens=1,
        provider_cost_usd=Decimal(0),
    )
    assert_inert(c._repr_mimebundle_())


# ----------------------------------------------------------------------------- widgets
@pytest.mark.parametrize("payload", TEXTS, ids=IDS)
def test_panel_status_and_hints_are_inert(payload: str) -> None:
    """The providers panel's status line (which shows a provider's Test-key error) and
    its credits line (which shows an error's text)."""
    from cencori_nb.widgets import setup

    panel = setup()
    panel._say(payload, ok=False)
    assert executable_constructs(panel.status.value) == []
    assert html.escape(payload) in panel.status.value  # shown whole, as text
    panel._say(f"Key test failed: {payload}", ok=True)
    assert executable_constructs(panel.status.value) == []


def test_panel_test_key_shows_the_providers_hostile_model_name_as_text(sandbox_env: Any) -> None:
    """Test key over the real sandbox, the error path: the panel's line is inert."""
    from cencori_nb import keys
    from cencori_nb.widgets import setup

    keys.set("openai", "sk-sandbox-demo-openai-revoked")  # the sandbox only sees demo keys
    panel = setup()
    panel.select("openai")
    panel.test_key()
    assert "Key test failed" in panel.status.value
    assert executable_constructs(panel.status.value) == []


@pytest.mark.parametrize("payload", TEXTS, ids=IDS)
def test_progress_widget_is_inert(payload: str) -> None:
    """The batch progress line carries a provider's error text in its note."""
    from cencori_nb.batch.progress import WidgetProgress

    w = WidgetProgress(3, display=False, min_interval_s=0)
    w.update(1, 1, Decimal("0.01"), note=f"stopped: {payload} $5")
    assert executable_constructs(w.label.value) == []
    w.close(3, 2, Decimal("0.02"), note=f"stopped: {payload}")
    assert executable_constructs(w.label.value) == []
    assert w.text.endswith(payload)  # the text itself is kept, as data


# ----------------------------------------------------------------------------- DataFrames
def _frame_html(frame: Any) -> str:
    """pandas' own ``<style scoped>`` header removed (it is ours, not the reply's)."""
    out = frame._repr_html_()
    head, sep, rest = out.partition("</style>")
    assert sep and "<table" not in head
    return rest


def test_map_frame_html_is_inert(sandbox_env: Any) -> None:
    """``map`` over the sandbox: replies and provider error texts land in the frame; its
    notebook HTML shows them as text."""
    import cencori_nb
    from cencori_nb import keys

    keys.set("openai", OPENAI_KEY, default_model="gpt-4o-mini", make_default=True)
    prompts = [f"SANDBOX-ECHO:{t}" for t in TEXTS] + [f"SANDBOX-ERROR:{t}" for t in TEXTS]
    frame = cencori_nb.map(prompts, progress=False, cache=False)
    assert list(frame["text"][: len(TEXTS)]) == [t.rstrip() for t in TEXTS]
    assert frame["error"][len(TEXTS) :].notna().all()
    # pandas' HTML has no MathJax guard (a DataFrame is not ours to wrap): TeX is not checked
    # here; the browser test checks that nothing runs.
    assert executable_constructs(_frame_html(frame), math=False) == []


def test_line_magic_tables_keep_dollars_away_from_mathjax(shell: InteractiveShell) -> None:
    """Tables and summaries with several dollar amounts (usage, credits) sit in an element
    MathJax skips, or "$0.01 … $0.02" would be typeset as a formula."""
    from cencori_nb import wallet

    wallet.top_up(Decimal("3"))  # low balance: more dollar amounts
    run(shell, "%%cencori gpt-4o-mini --no-stream --no-cache\nSANDBOX-ECHO:$x$ costs $1")
    for line in ("%cencori usage", "%cencori credits", "%cencori providers", "%cencori models"):
        cap = run(shell, line)
        table = cap.outputs[0].data  # (usage then shows plotly's own chart)
        assert "<table>" in table["text/html"], line
        assert_inert(table)


# ----------------------------------------------------------------------------- the sandbox
DOORS = [
    ("openai", "gpt-4o-mini", "byok"),
    ("anthropic", "claude-haiku-4-5", "byok"),
    ("google", "gemini-2.5-flash", "byok"),
    ("openai", "gpt-4o-mini", "managed"),
]


@pytest.mark.parametrize("provider, model, route", DOORS, ids=[f"{p}-{r}" for p, _m, r in DOORS])
@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
def test_sandbox_scripted_replies_through_every_door(
    sandbox_env: Any, provider: str, model: str, route: str, stream: bool
) -> None:
    """SANDBOX-ECHO: answers exactly the rest of the message and SANDBOX-ERROR: a 400
    carrying it, in each wire format (OpenAI, Anthropic, Gemini, the Cencori gateway), so
    the attack tests reach every parser, not only OpenAI's."""
    import cencori_nb
    from cencori_nb import keys
    from cencori_nb.errors import CencoriError

    keys.set("openai", OPENAI_KEY)
    keys.set("anthropic", "sk-ant-test-render-00000000000Rr01")
    keys.set("google", "AIza" + "TestRender0000000000000000000000Gg1")
    keys.set_cencori_key("csk_test_render_000000000Mm01")
    hostile = TEXTS[0] + "\n\n" + TEXTS[3]
    opts: dict[str, Any] = {"model": model, "provider": provider, "route": route, "cache": False}
    if stream:
        with cencori_nb.stream("SANDBOX-ECHO:" + hostile, **opts) as chunks:
            assert "".join(chunks) == hostile
        text = chunks.completion.text
    else:
        text = cencori_nb.chat("SANDBOX-ECHO:" + hostile, **opts).text
    assert text == hostile
    with pytest.raises(CencoriError) as err:
        cencori_nb.chat("SANDBOX-ERROR:" + hostile, **opts)
    assert "window.__xss=1" in str(err.value)  # the provider's own words…
    assert_inert(error_bundle(str(err.value)))  # …shown as one inert line
