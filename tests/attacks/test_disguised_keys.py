"""Attack: a key written so that it *shows* as the key without being spelled as one.

Markdown emphasis, code and strikethrough marks, inline HTML tags and comments, backslash
escapes, HTML character references and compatibility characters (fullwidth ``ｓｋ－…``,
mathematical letters) between or instead of a key's characters: JupyterLab renders each of
them as the key. Every surface the redactor guards must catch them: a provider's reply
(chat, stream, the magic's text/plain and text/html, the response cache), the save-time
scrubber (markdown cells, text/markdown, text/html and stream outputs), log lines and
tracebacks.

The judge is independent of cencori_nb.redact: :func:`reads` renders text as JupyterLab
would (Markdown with raw HTML, then the HTML's text with references decoded, then NFKC
and without invisible characters) and the key must not be in what it reads. Each disguise
is first checked to read as the key, so no test here can pass vacuously; ordinary text with
the same marks (``snake_case``, ``**bold**``, a table whose cells hold a prefix and digits)
must come through unchanged.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

import mistune
import pytest

import cencori_nb
from cencori_nb import keys, redact
from cencori_nb.redact import MARKER
from tests.attacks.support import LoopbackHandler

STORED = "sk-proj-disguiseStored" + "Q7m2Xr9Tz4Wn1Bh5Kd"  # the stored openai key
STORED_CSK = "csk_live_disguise" + "9Hd2Kq7Lm4Zx"  # a stored key holding "_"
SHAPED = "sk-proj-disguiseShaped" + "P3n8Vc1Rt6Yu2Io0Aa"  # never stored: its shape alone


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def _math_bold(text: str) -> str:
    """Mathematical bold letters and digits (U+1D400…): NFKC folds them to ASCII."""
    out = []
    for c in text:
        if "A" <= c <= "Z":
            out.append(chr(0x1D400 + ord(c) - ord("A")))
        elif "a" <= c <= "z":
            out.append(chr(0x1D41A + ord(c) - ord("a")))
        elif "0" <= c <= "9":
            out.append(chr(0x1D7CE + ord(c) - ord("0")))
        else:
            out.append(c)
    return "".join(out)


def _cut(key: str, left: str, right: str = "") -> str:
    """``key`` with ``left`` after its 11th and ``right`` after its 17th character."""
    return key[:11] + left + key[11:17] + right + key[17:]


def _underscore_emphasis(key: str) -> str:
    """``sk-_proj_-…`` shows ``sk-<em>proj</em>-…``: an ``_`` beside a ``-`` is emphasis.
    A key without two ``-`` has no such spelling (returned as it is: skipped)."""
    first = key.find("-")
    second = key.find("-", first + 1)
    if first < 0 or second < 0:
        return key
    return f"{key[: first + 1]}_{key[first + 1 : second]}_{key[second:]}"


# name → how the key is written. Each must read as the key (checked below).
DISGUISES: dict[str, Callable[[str], str]] = {
    "bold": lambda k: _cut(k, "**", "**"),
    "italic star": lambda k: _cut(k, "*", "*"),
    "bold-italic": lambda k: _cut(k, "***", "***"),
    "code span": lambda k: _cut(k, "`", "`"),
    "strikethrough": lambda k: _cut(k, "~~", "~~"),
    "html b": lambda k: _cut(k, "<b>", "</b>"),
    "html span with style": lambda k: _cut(
        k, '<span style="color:#c00;font-weight:bold">', "</span>"
    ),
    "html code and em": lambda k: _cut(k, "<code>", "</code><em>") + "</em>",
    "html comment": lambda k: _cut(k, "<!-- nothing to see -->"),
    "html tags upper case": lambda k: _cut(k, "<SPAN>", "</SPAN>"),
    "every character bold": lambda k: "".join(f"<b>{c}</b>" for c in k),
    "backslash escapes": lambda k: k.replace("-", "\\-").replace("_", "\\_"),
    "decimal reference": lambda k: f"&#{ord(k[0])};" + k[1:],
    "hex references": lambda k: "".join(f"&#x{ord(c):x};" for c in k),
    # &kfr; is a fraktur k (NFKC: k), &lowbar; an underscore
    "named references": lambda k: k.replace("k", "&kfr;").replace("_", "&lowbar;"),
    "fullwidth": _fullwidth,
    "fullwidth prefix only": lambda k: _fullwidth(k[:8]) + k[8:],
    "mathematical bold": _math_bold,
    "zero width as a reference": lambda k: _cut(k, "&#8203;", "&#x200b;"),
    "bold and zero width": lambda k: _cut(k, "<b>\u200b", "\u200b</b>"),
    "tag and fullwidth": lambda k: _fullwidth(k[:11]) + "<i>" + k[11:17] + "</i>" + k[17:],
    "underscore emphasis": lambda k: _underscore_emphasis(k),
}


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("p", "br", "div", "td", "th", "tr", "li", "pre"):
            self.parts.append("\n")  # a block starts a new line: no word runs across it


_MARKDOWN = mistune.create_markdown(escape=False, plugins=["strikethrough", "table"])


def reads(text: str, *, markdown: bool = True) -> str:
    """What a person reads where JupyterLab renders ``text`` (as Markdown, or as HTML)."""
    html = str(_MARKDOWN(text)) if markdown else text
    reader = _Reader()
    reader.feed(html)
    reader.close()
    shown = unicodedata.normalize("NFKC", "".join(reader.parts))
    return "".join(c for c in shown if unicodedata.category(c) not in ("Cf", "Cc") or c == "\n")


def _shows(text: str, key: str) -> bool:
    return key in reads(text) or key in reads(text, markdown=False)


KEYS = {"stored": STORED, "stored csk_": STORED_CSK}


@pytest.fixture(autouse=True)
def _stored() -> None:
    redact.register_secrets([STORED, STORED_CSK])


@pytest.mark.parametrize("key", list(KEYS.values()) + [SHAPED], ids=[*KEYS, "shaped"])
@pytest.mark.parametrize("disguise", list(DISGUISES), ids=list(DISGUISES))
def test_each_disguise_reads_as_the_key(disguise: str, key: str) -> None:
    """The judge: each disguise renders as the key (else the tests below prove nothing)."""
    written = DISGUISES[disguise](key)
    if written == key:
        pytest.skip("no such spelling of this key")
    assert _shows(f"Your key: {written} (keep it safe)", key), reads(written)


SURFACES: dict[str, Callable[[str], str]] = {
    "reply (remove_stored_keys)": redact.remove_stored_keys,
    "log line": redact.LOG_LINE.scrub,
    "user message": redact.USER_MESSAGE.scrub,
    "notebook": redact.NOTEBOOK.scrub,
}


@pytest.mark.parametrize("surface", list(SURFACES))
@pytest.mark.parametrize("key", list(KEYS), ids=list(KEYS))
@pytest.mark.parametrize("disguise", list(DISGUISES), ids=list(DISGUISES))
def test_a_disguised_stored_key_is_removed_by_every_policy(
    disguise: str, key: str, surface: str
) -> None:
    written = DISGUISES[disguise](KEYS[key])
    if written == KEYS[key]:
        pytest.skip("no such spelling of this key")
    text = f"Before. Your key: {written} (keep it safe). After."
    out = SURFACES[surface](text)
    assert not _shows(out, KEYS[key]), out
    assert MARKER in out
    assert out.startswith("Before. Your key: ") and out.endswith(" (keep it safe). After."), out


@pytest.mark.parametrize("surface", ["log line", "notebook"])
@pytest.mark.parametrize("disguise", list(DISGUISES), ids=list(DISGUISES))
def test_a_disguised_key_shape_is_removed(disguise: str, surface: str) -> None:
    """A key nobody stored, found by its shape: the notebook and log-line policies."""
    text = f"Before. {DISGUISES[disguise](SHAPED)} After."
    out = SURFACES[surface](text)
    assert not _shows(out, SHAPED), out
    assert out.startswith("Before. ") and out.endswith(" After."), out


# Ordinary text with the same marks: kept byte for byte by the reply scrub and the
# notebook policy (the ones that must not touch data).
ORDINARY = [
    "Use **bold**, *italic*, `code` and ~~struck~~ text; snake_case_name and __init__.",
    "pip install scikit-learn (sk-learn) and **sk-**learn",
    "<table><tr><td>sk-proj-</td><td>12345678901234567890abcd</td></tr></table>",
    "<p>sk-proj-</p><p>a1b2c3d4e5f6g7h8i9j0k1</p>",
    "Ｈｅｌｌｏ ｗｏｒｌｄ, ｓｋ－ｌｅａｒｎ, ½ and ™ stay as written; 日本語も。",
    "&lt;b&gt;sk-proj-&lt;/b&gt; is shown as a tag, 1 &lt; 2 &amp;&amp; 3 &gt; 2",
    "a * b * c, x_1 _y_ `z`, 2 ~ 3, C:\\path\\to\\file",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_marks_are_not_taken_for_a_key(text: str) -> None:
    assert redact.remove_stored_keys(text) == text
    assert redact.NOTEBOOK.scrub(text) == text
    assert not redact.holds_secret(text)


def test_an_underscore_between_letters_is_not_markup() -> None:
    """``sk-abc_def_ghi`` shows its underscores (CommonMark: intraword ``_`` is not
    emphasis): it is not the key ``sk-abcdefghi``; with the underscores beside a ``-`` it
    is emphasis, and the key shows."""
    key = "sk-proj-underscore" + "A1b2C3d4E5f6G7h8"
    redact.register_secret(key)
    literal = f"{key[:12]}_{key[12:16]}_{key[16:]}"
    assert not _shows(literal, key) and redact.remove_stored_keys(literal) == literal
    emphasis = f"{key[:12]}-_{key[12:16]}_-{key[16:]}"
    assert not _shows(emphasis, key)  # it shows sk-proj-unde-rsco-re…, not the key
    real = "sk-proj-realKey" + "A1b2-_C3d4E5f6G7h8"  # a real key may hold "-_"
    redact.register_secret(real)
    split = real[:10] + "**" + real[10:] + "**"
    assert _shows(split, real)
    out = redact.remove_stored_keys(f"x {split} y")
    assert MARKER in out and not _shows(out, real)


@pytest.mark.parametrize(
    "disguise", ["bold", "html span with style", "hex references", "fullwidth", "named references"]
)
def test_stream_redactor_any_split_of_a_disguised_key(disguise: str) -> None:
    """A disguised key cut anywhere into three pieces: what is shown is the whole reply
    with the key replaced, never a piece of it released early (a tag or reference cut in
    half is held back until it ends)."""
    written = DISGUISES[disguise](STORED_CSK)
    whole = f"a **b** {written} c <i>d</i> {STORED_CSK} e"
    expected = redact.remove_stored_keys(whole)
    assert expected.count(MARKER) == 2 and not _shows(expected, STORED_CSK)
    for i in range(len(whole) + 1):
        for j in range(i, len(whole) + 1, 5):
            r = redact.StreamRedactor()
            shown = r.feed(whole[:i]) + r.feed(whole[i:j]) + r.feed(whole[j:]) + r.close()
            assert shown == expected, (i, j)


# --------------------------------------------------------------------------- real surfaces


class _Echo(LoopbackHandler):
    """An OpenAI-compatible endpoint whose reply echoes the key it received, disguised."""

    disguise: Callable[[str], str] = staticmethod(lambda k: k)

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.request_body())
        key = self.headers.get("authorization", "").removeprefix("Bearer ")
        reply = f"Here it is: {type(self).disguise(key)} (done)"
        if body.get("stream"):
            events = [
                {
                    "id": "x",
                    "model": "m",
                    "choices": [{"index": 0, "delta": {"content": reply[i : i + 4]}}],
                }
                for i in range(0, len(reply), 4)
            ]
            events.append(
                {
                    "id": "x",
                    "model": "m",
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                }
            )
            events.append(
                {
                    "id": "x",
                    "model": "m",
                    "choices": [],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 7},
                }
            )
            data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            kind = "text/event-stream"
        else:
            data = json.dumps(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
                }
            )
            kind = "application/json"
        self.answer(200, kind, data.encode())


@pytest.fixture
def echo(loopback_openai: Any) -> type[_Echo]:
    """A loopback endpoint as the openai ``base_url`` (it receives the stored key)."""
    handler: type[_Echo] = loopback_openai(_Echo, STORED)
    return handler


@pytest.mark.parametrize(
    "disguise",
    [
        "bold",
        "html span with style",
        "code span",
        "hex references",
        "fullwidth",
        "underscore emphasis",
    ],
)
def test_a_reply_echoing_the_key_disguised(echo: type[_Echo], disguise: str, ipython: Any) -> None:
    """chat, stream (joined deltas and .text), the cache and the magic's outputs: the marker
    where the disguised key was, nothing that reads as the key."""
    from IPython.utils.capture import capture_output

    echo.disguise = staticmethod(DISGUISES[disguise])
    plain = cencori_nb.chat("tell me", model="gpt-4o-mini")
    with cencori_nb.stream("tell me", model="gpt-4o-mini", cache=False) as chunks:
        deltas = list(chunks)
    cached = cencori_nb.chat("tell me", model="gpt-4o-mini")
    assert cached.cached
    with capture_output() as cap:
        ipython.run_cell_magic("cencori", "-m gpt-4o-mini --no-cache", "tell me")
    seen = {
        "chat": plain.text,
        "stream deltas": "".join(deltas),
        "stream text": chunks.text,
        "cached": cached.text,
    }
    for output in cap.outputs:
        for mime, data in output.data.items():
            seen[f"magic {mime}"] = data if isinstance(data, str) else json.dumps(data)
    assert any(k.startswith("magic text/html") for k in seen)
    for where, text in seen.items():
        assert not _shows(text, STORED), (where, text)
        assert MARKER in text or MARKER in reads(text, markdown=False), (where, text)
    assert seen["chat"] == seen["stream deltas"] == "Here it is: [redacted] (done)"


def test_the_save_time_scrubber_removes_disguised_keys(tmp_path: Any) -> None:
    """A notebook saved through the real contents manager with every disguise (stored and
    shaped) in a markdown cell, text/markdown, text/html, text/plain and stream outputs:
    on disk, no string reads as either key."""
    import nbformat
    from jupyter_server.services.contents.largefilemanager import LargeFileManager

    from cencori_nb.jupyter import install

    keys.set("openai", STORED)
    root = tmp_path / "root"
    root.mkdir()
    manager = LargeFileManager(root_dir=str(root))
    assert install(manager, logging.getLogger("test.disguise"))
    lines = [f"{name}: {d(STORED)} and {d(SHAPED)}." for name, d in DISGUISES.items()]
    text = "\n\n".join(lines)
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell(text),
            nbformat.v4.new_code_cell(
                "print('x')",
                outputs=[
                    nbformat.v4.new_output("stream", name="stdout", text=text),
                    nbformat.v4.new_output(
                        "display_data",
                        data={
                            "text/markdown": text,
                            "text/html": f"<div>{text}</div>",
                            "text/plain": text,
                        },
                    ),
                ],
            ),
        ]
    )
    manager.save(
        {"type": "notebook", "format": "json", "content": json.loads(nbformat.writes(nb))},
        "d.ipynb",
    )
    saved = json.loads((root / "d.ipynb").read_text())
    strings = [saved["cells"][0]["source"], saved["cells"][1]["outputs"][0]["text"]]
    strings += list(saved["cells"][1]["outputs"][1]["data"].values())
    for s in strings:
        s = "".join(s) if isinstance(s, list) else s
        for key in (STORED, SHAPED):
            assert not _shows(s, key), s
        assert s.count(MARKER) >= len(DISGUISES)


def test_log_lines_and_tracebacks(ipython: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A log record and a traceback (IPython's, any mode) holding disguised keys."""
    from IPython.utils.capture import capture_output

    from cencori_nb.transport.logs import install_log_redaction

    install_log_redaction()
    written = " ".join(d(STORED) + " " + d(SHAPED) for d in DISGUISES.values())
    with caplog.at_level(logging.DEBUG, logger="cencori_nb.client"):
        logging.getLogger("cencori_nb.client").warning("the proxy said %s", written)
    assert caplog.records
    ipython.user_ns["written"] = written
    for mode in ("Context", "Verbose"):
        ipython.run_line_magic("xmode", mode)
        with capture_output() as cap:
            ipython.run_cell("raise ValueError(written)")
        out = cap.stdout + cap.stderr + repr([o.data for o in cap.outputs])
        for key in (STORED, SHAPED):
            assert not _shows(out, key) and not _shows(out.replace("\\n", "\n"), key), mode
    ipython.run_line_magic("xmode", "Context")
    ipython.user_ns.pop("written")
    for record in caplog.records:
        for key in (STORED, SHAPED):
            assert not _shows(record.getMessage(), key)


@pytest.mark.parametrize("surface", ["log line", "user message"])
def test_a_key_spelled_plainly_is_replaced_to_its_end(surface: str) -> None:
    """The view drops a key's trailing "_" (it sits beside a quote); the key spelled so
    in the text is still replaced whole by the policy's own pass, not up to that "_"."""
    for text in ('x "csk_live_Ab12Cd34_" y', "see `gsk_abc123def_` and"):
        out = SURFACES[surface](text)
        assert MARKER in out and "_" not in out.replace(MARKER, ""), out
