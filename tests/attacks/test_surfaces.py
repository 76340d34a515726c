"""Attacks on the surfaces past issue 10's list: what a hostile endpoint's reply can put on
disk, in a DataFrame, in an error, in an object's repr or pickle, and the file modes of
everything the toolkit writes in the home.

The endpoint is a real HTTP server on 127.0.0.1 (a loopback ``base_url`` needs no opt-in
and receives the stored key, as a local proxy would). It echoes the key it received inside
its reply, in the forms below, plain and streamed in three-character deltas (so the key is
split across deltas). A leak is the key in clear, base64 or hex anywhere we look
(tests/attacks/audit.py).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cencori_nb
from cencori_nb import errors, keys
from cencori_nb.redact import MARKER
from tests.attacks.audit import Audit
from tests.attacks.support import LoopbackHandler

# How a hostile reply carries the key it received ({k}).
ECHOES = {
    "bare": "{k}",
    "in a sentence": "Sure! Your key is {k}, keep it safe.",
    "twice": "{k} and again {k}",
    "glued to words": "prefix{k}suffix",
    "fenced code": "```\nOPENAI_API_KEY={k}\n```",
    "json value": '{{"api_key": "{k}"}}',
    "bearer header": "Authorization: Bearer {k}",
    "html attribute": '<img src=x alt="{k}">',
    "markdown link": "[docs](https://example.com/?key={k})",
    "across lines": "line one\n{k}\nline three",
}


class _Hostile(LoopbackHandler):
    """An OpenAI-compatible endpoint that puts the received key in its reply (or error)."""

    echo = "{k}"
    status = 200
    hide = ""  # slipped between every three characters of the key (invisible characters)

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.request_body())
        key = self.headers.get("authorization", "").removeprefix("Bearer ")
        if self.hide:
            key = self.hide.join(key[i : i + 3] for i in range(0, len(key), 3))
        reply = self.echo.format(k=key)
        if self.status != 200:
            self.answer(
                self.status,
                "application/json",
                json.dumps({"error": {"message": reply, "type": "invalid_request_error"}}).encode(),
            )
        elif body.get("stream"):
            events = [
                {
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "model": body["model"],
                    "choices": [{"index": 0, "delta": {"content": reply[i : i + 3]}}],
                }
                for i in range(0, len(reply), 3)
            ]
            events.append(
                {
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "model": body["model"],
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                }
            )
            events.append(
                {
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "model": body["model"],
                    "choices": [],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
                }
            )
            data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            self.answer(200, "text/event-stream", data.encode())
        else:
            self.answer(
                200,
                "application/json",
                json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 1,
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
                ).encode(),
            )


@pytest.fixture
def hostile(canary: str, loopback_openai: Any) -> type[_Hostile]:
    """A hostile endpoint as the openai ``base_url``; the canary is the stored openai key."""
    handler: type[_Hostile] = loopback_openai(_Hostile, canary)
    return handler


@pytest.fixture
def audit(canary: str) -> Audit:
    return Audit({"openai canary": canary})


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record of every logger at DEBUG (ours, httpx2/httpcore2, asyncio), formatted
    as a root handler would."""
    import logging

    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    for name in ("cencori_nb", "httpx2", "httpcore2", "httpx", "httpcore", "asyncio"):
        caplog.set_level(logging.DEBUG, logger=name)
    caplog.handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    yield caplog
    root.setLevel(old)


def _object_views(audit: Audit, where: str, obj: Any) -> None:
    """Every way a person or a library serialises an object: str, repr, vars, asdict,
    to_dict, copy, deepcopy, pickle."""
    audit.add(f"{where} str", str(obj))
    audit.add(f"{where} repr", repr(obj))
    audit.add(f"{where} vars", repr(getattr(obj, "__dict__", {})))
    if dataclasses.is_dataclass(obj):
        audit.add(f"{where} asdict", repr(dataclasses.asdict(obj)))
    if hasattr(obj, "to_dict"):
        audit.add(f"{where} to_dict", json.dumps(obj.to_dict(), default=str))
    audit.add(f"{where} copy", repr(copy.copy(obj)))
    audit.add(f"{where} deepcopy", repr(copy.deepcopy(obj)))
    audit.add(f"{where} pickle", pickle.dumps(obj))


@pytest.mark.parametrize("echo", list(ECHOES.values()), ids=list(ECHOES))
def test_a_reply_echoing_the_stored_key_never_carries_it(
    hostile: type[_Hostile],
    echo: str,
    canary: str,
    audit: Audit,
    private_home: Path,
    logs: pytest.LogCaptureFixture,
) -> None:
    """chat and stream: the Completion (and everything made of it: the response cache, the
    ledger, usage()) holds the marker where the key was, and the rest of the reply."""
    from cencori_nb.ledger import default_ledger

    hostile.echo = echo
    plain = cencori_nb.chat("tell me a secret", model="gpt-4o-mini")
    with cencori_nb.stream("tell me a secret, slowly", model="gpt-4o-mini") as chunks:
        for _ in chunks:
            pass
    for where, completion in (("chat", plain), ("stream", chunks.completion)):
        assert completion.text == echo.format(k=MARKER), where
        _object_views(audit, f"{where} Completion", completion)
    again = cencori_nb.chat("tell me a secret", model="gpt-4o-mini")
    assert again.cached and again.text == echo.format(k=MARKER)
    default_ledger().flush()
    audit.add("usage() csv", cencori_nb.usage().to_csv())
    assert "cache.sqlite" in {p.name for p in audit.add_home(private_home)}
    assert logs.records
    audit.add_log_records("DEBUG log", logs.records, logs.text)
    audit.assert_clean()


def test_map_rows_and_checkpoints_never_carry_an_echoed_key(
    hostile: type[_Hostile], canary: str, audit: Audit, private_home: Path
) -> None:
    """cencori_nb.map: the DataFrame (and its CSV/JSON exports), the checkpoint and cache."""
    hostile.echo = ECHOES["in a sentence"]
    df = cencori_nb.map([f"row {i}" for i in range(4)], model="gpt-4o-mini", progress=False)
    assert len(df) == 4
    assert all(MARKER in str(v) for v in df["text"])
    audit.add("map DataFrame csv", df.to_csv())
    audit.add("map DataFrame json", df.to_json())
    audit.add("map DataFrame pickle", pickle.dumps(df))
    audit.add_home(private_home)
    audit.assert_clean()


def test_cli_usage_exports_after_an_echoing_reply(
    hostile: type[_Hostile], canary: str, audit: Audit, private_home: Path
) -> None:
    """`cencori-nb usage --csv/--json` and `cencori-nb ask` against the hostile endpoint."""
    import os

    hostile.echo = ECHOES["json value"]
    env = dict(os.environ)
    asked = subprocess.run(
        [sys.executable, "-m", "cencori_nb", "ask", "--json", "tell me a secret"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert asked.returncode == 0, asked.stderr
    assert MARKER in asked.stdout
    audit.add("ask --json", asked.stdout + asked.stderr)
    for flag in ("--csv", "--json"):
        out = subprocess.run(
            [sys.executable, "-m", "cencori_nb", "usage", flag],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        audit.add(f"usage {flag}", out.stdout + out.stderr)
    audit.add_home(private_home)
    audit.assert_clean()


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500])
def test_a_provider_error_echoing_the_key(
    hostile: type[_Hostile], status: int, canary: str, audit: Audit, logs: pytest.LogCaptureFixture
) -> None:
    """The error's str, repr, args, attributes, cause chain, traceback (and its pickle)."""
    hostile.echo = ECHOES["in a sentence"]
    hostile.status = status
    with pytest.raises(errors.CencoriError) as caught:
        cencori_nb.chat("tell me a secret", model="gpt-4o-mini", retries=0, cache=False)
    audit.add_exception(f"HTTP {status}", caught.value)
    try:
        audit.add(f"HTTP {status} pickle", pickle.dumps(caught.value))
    except Exception as exc:  # noqa: BLE001 (an unpicklable error leaks nothing)
        audit.add_exception(f"HTTP {status} pickle refused", exc)
    audit.add_log_records("DEBUG log", logs.records, logs.text)
    audit.assert_clean()


def test_every_file_in_the_home_is_private(
    hostile: type[_Hostile], canary: str, private_home: Path
) -> None:
    """After chat, stream, map, a cache hit and usage(): every file the toolkit wrote
    (ledger and cache with their -wal/-shm, the in-flight journal, lock, generation and
    key files, config) is 0600 and every folder 0700, whatever the umask."""
    import os

    old = os.umask(0o022)
    try:
        cencori_nb.chat("one", model="gpt-4o-mini")
        cencori_nb.chat("one", model="gpt-4o-mini")
        with cencori_nb.stream("two", model="gpt-4o-mini", cache=False) as chunks:
            "".join(chunks)
        cencori_nb.map(["three", "four"], model="gpt-4o-mini", progress=False)
        cencori_nb.usage()
    finally:
        os.umask(old)
    seen = [private_home, *private_home.rglob("*")]
    names = {p.name for p in seen}
    assert {"ledger.sqlite-wal", "cache.sqlite", "keystore.json", "config.json"} <= names
    loose = [
        f"{p.relative_to(private_home)} {oct(stat.S_IMODE(p.stat().st_mode))}"
        for p in seen
        if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)
    ]
    assert not loose, loose


def test_the_magic_never_shows_an_echoed_key_live_or_final(
    hostile: type[_Hostile], canary: str, audit: Audit, ipython: Any
) -> None:
    """%%cencori streamed (every redraw, which the kernel sends as an update_display_data
    message) and not streamed: the key is redacted in what is drawn once it has arrived."""
    from IPython.utils.capture import capture_output

    from cencori_nb.magic.render import StreamView

    hostile.echo = ECHOES["fenced code"]
    drawn: list[Any] = []

    class Handle:
        def update(self, content: Any, raw: bool = False) -> None:
            drawn.append(content)

    view = StreamView(lambda content: drawn.append(content) or Handle(), throttle_ms=0)
    view.start()
    with cencori_nb.stream("tell me a secret", model="gpt-4o-mini", cache=False) as chunks:
        for delta in chunks:
            view.feed(delta)
    assert len(drawn) > 5
    audit.add("StreamView redraws", repr(drawn))
    shell = ipython
    for flags in ("", "--no-stream", "-f text", "-f json --no-stream"):
        with capture_output() as cap:
            shell.run_cell_magic("cencori", f"-m gpt-4o-mini {flags}".strip(), "tell me a secret")
        shown = repr([o.data for o in cap.outputs]) + cap.stdout + cap.stderr
        assert MARKER in shown or "[redacted]" in shown, (flags, shown[:500])
        audit.add(f"%%cencori {flags}", shown)
    audit.assert_clean()


@pytest.mark.parametrize(
    "echo",
    [ECHOES["bare"], ECHOES["twice"], ECHOES["glued to words"], ECHOES["across lines"]],
    ids=["bare", "twice", "glued", "across lines"],
)
def test_stream_deltas_never_carry_an_echoed_key(
    hostile: type[_Hostile], echo: str, canary: str, audit: Audit
) -> None:
    """What stream() and astream() yield to the caller (the key arrives split over
    three-character deltas): joined, it is the reply with the key redacted, nothing lost."""
    import asyncio

    hostile.echo = echo
    with cencori_nb.stream("tell me a secret", model="gpt-4o-mini", cache=False) as chunks:
        deltas = list(chunks)
        audit.add("stream .text", chunks.text)

    async def collect() -> list[str]:
        async with cencori_nb.astream(
            "tell me a secret", model="gpt-4o-mini", cache=False
        ) as stream:
            return [d async for d in stream]

    adeltas = asyncio.run(collect())
    for where, parts in (("stream", deltas), ("astream", adeltas)):
        assert "".join(parts) == echo.format(k=MARKER), where
        audit.add(f"{where} deltas", repr(parts))
    audit.assert_clean()


def test_stream_redactor_any_split(canary: str) -> None:
    """Every way of cutting a reply holding the key twice (and a near miss) into two or
    three pieces shows the same text as the whole reply redacted."""
    from cencori_nb import redact

    redact.register_secret(canary)
    whole = f"a {canary}b{canary[:-1]}x {canary}"
    expected = redact.remove_stored_keys(whole)
    assert canary not in expected and canary[:-1] in expected
    for i in range(len(whole) + 1):
        for j in range(i, len(whole) + 1, 7):
            r = redact.StreamRedactor()
            shown = r.feed(whole[:i]) + r.feed(whole[i:j]) + r.feed(whole[j:]) + r.close()
            assert shown == expected, (i, j)


# What a reader does not see, slipped into an echoed key: the key still shows (a notebook
# renders none of these; a terminal draws colours and links, not the escapes).
HIDERS = {
    "zero-width space": "\u200b",
    "zero-width joiner": "\u200d",
    "soft hyphen": "\u00ad",
    "word joiner": "\u2060",
    "BOM": "\ufeff",
    "bidi override and pop": "\u202e\u202c",
    "ANSI reset": "\x1b[0m",
    "ANSI colour": "\x1b[1;31m",
    "OSC 8 link": "\x1b]8;;https://e.example\x07",
    "NUL": "\x00",
}


def _folded(data: str | bytes, hider: str) -> str:
    """``data`` as a reader sees it: the hider gone, also JSON- or repr-escaped."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    escaped = {json.dumps(hider)[1:-1], repr(hider)[1:-1], hider}
    for form in sorted(escaped, key=len, reverse=True):
        text = text.replace(form, "")
    return text


@pytest.mark.parametrize("hider", list(HIDERS.values()), ids=list(HIDERS))
def test_a_reply_hiding_the_echoed_key_behind_invisible_characters(
    hostile: type[_Hostile], hider: str, canary: str, private_home: Path, ipython: Any
) -> None:
    """chat, stream (joined deltas and .text), the response cache and the magic's output:
    the marker where the disguised key was, the rest of the reply unchanged (before: the
    key, readable, everywhere, since only its exact spelling was looked for)."""
    from IPython.utils.capture import capture_output

    hostile.echo, hostile.hide = ECHOES["in a sentence"], hider
    expected = ECHOES["in a sentence"].format(k=MARKER)
    audit = Audit({"openai canary": canary})
    plain = cencori_nb.chat("tell me a secret", model="gpt-4o-mini")
    with cencori_nb.stream("tell me a secret", model="gpt-4o-mini", cache=False) as chunks:
        deltas = list(chunks)
    assert plain.text == expected
    assert "".join(deltas) == expected and chunks.text == expected
    assert cencori_nb.chat("tell me a secret", model="gpt-4o-mini").cached
    with capture_output() as cap:
        ipython.run_cell_magic("cencori", "-m gpt-4o-mini --no-cache", "tell me a secret")
    shown = repr([o.data for o in cap.outputs]) + cap.stdout + cap.stderr
    assert MARKER in shown
    for where, data in (
        ("chat", repr(plain)),
        ("deltas", repr(deltas)),
        ("magic", shown),
        *((f"file {p.name}", p.read_bytes()) for p in private_home.rglob("*") if p.is_file()),
    ):
        audit.add(where, _folded(data, hider))
    audit.assert_clean()


@pytest.mark.parametrize("hider", ["\u200b", "\x1b[0m"], ids=["zero-width", "ANSI"])
def test_stream_redactor_any_split_with_hidden_characters(canary: str, hider: str) -> None:
    """A key disguised by hidden characters, cut anywhere into three pieces: what is shown
    is the whole reply with the key replaced, never a piece of it released early."""
    from cencori_nb import redact

    redact.register_secret(canary)
    disguised = hider.join(canary[i : i + 3] for i in range(0, len(canary), 3))
    whole = f"a {disguised}\u200db {canary} c"
    expected = redact.remove_stored_keys(whole)
    assert expected == f"a {MARKER}\u200db {MARKER} c"
    for i in range(len(whole) + 1):
        for j in range(i, len(whole) + 1, 5):
            r = redact.StreamRedactor()
            shown = r.feed(whole[:i]) + r.feed(whole[i:j]) + r.feed(whole[j:]) + r.close()
            assert shown == expected, (i, j)


def test_cli_ask_streamed_into_a_pipe(hostile: type[_Hostile], canary: str, audit: Audit) -> None:
    """`cencori-nb ask PROMPT > file`: the streamed reply goes byte for byte, but a stored
    key it echoes does not."""
    import os

    hostile.echo = ECHOES["fenced code"]
    asked = subprocess.run(
        [sys.executable, "-m", "cencori_nb", "ask", "tell me a secret"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.rstrip("\n") == ECHOES["fenced code"].format(k=MARKER)
    audit.add("ask stdout", asked.stdout)
    audit.add("ask stderr", asked.stderr)
    audit.assert_clean()


PASSPHRASE = "velvet-otter-91-staircase"  # a planted passphrase (word-like, not key-shaped)


@pytest.mark.parametrize(
    "output",
    [
        "CENCORI_NB_PASSPHRASE={p}\n",  # %env / !env
        "environ({{'CENCORI_NB_PASSPHRASE': '{p}', 'HOME': '/root'}})",  # print(os.environ)
        "passphrase: {p}",  # a reply or a print
    ],
    ids=["env", "os.environ", "print"],
)
def test_a_notebook_printing_the_passphrase_is_saved_without_it(
    monkeypatch: pytest.MonkeyPatch, canary: str, output: str
) -> None:
    """The passphrase that protects the store is a secret like a key: a notebook that
    printed the environment is saved without it (it was saved as is)."""
    from cencori_nb.jupyter.scrubber import pre_save_hook

    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", PASSPHRASE)
    keys.set("openai", canary)
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [
            {
                "cell_type": "code",
                "id": "c1",
                "metadata": {},
                "execution_count": 1,
                "source": "%env",
                "outputs": [
                    {
                        "output_type": "stream",
                        "name": "stdout",
                        "text": [output.format(p=PASSPHRASE)],
                    }
                ],
            }
        ],
    }
    model = {"type": "notebook", "format": "json", "content": nb}
    pre_save_hook(model, path="env.ipynb", contents_manager=None)
    saved = json.dumps(model["content"])
    assert MARKER in saved
    audit = Audit({"passphrase": PASSPHRASE, "openai canary": canary})
    audit.add("saved notebook", saved)
    audit.assert_clean()


def test_a_reply_echoing_the_passphrase_is_redacted(
    hostile: type[_Hostile], monkeypatch: pytest.MonkeyPatch, private_home: Path
) -> None:
    """A reply that happens to carry the passphrase (e.g. an agent that read the
    environment) shows the marker instead, and the cache holds none of it."""
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", PASSPHRASE)
    keys.set("openai", CANARY_FOR_PASSPHRASE, default_model="gpt-4o-mini", make_default=True)
    hostile.echo = "the env says CENCORI_NB_PASSPHRASE=" + PASSPHRASE + " (and {k})"
    done = cencori_nb.chat("what is in the environment?", model="gpt-4o-mini")
    assert done.text == f"the env says CENCORI_NB_PASSPHRASE={MARKER} (and {MARKER})"
    audit = Audit({"passphrase": PASSPHRASE})
    audit.add("reply", done.text)
    audit.add_home(private_home)
    audit.assert_clean()


CANARY_FOR_PASSPHRASE = "sk-canary-" + "Pp4sS7pHr4s3Kk2Jj9Hh1Gg"


PLAIN_KEY = "plainsecretvalue" + "12345678"  # a stored key with no known shape


@pytest.mark.parametrize(
    "call",
    [
        lambda k: cencori_nb.chat("hi", model="gpt-4o-mini", route=k),
        lambda k: cencori_nb.chat("hi", model="gpt-4o-mini", max_cost_usd=k),
        lambda k: cencori_nb.chat("hi", model="gpt-4o-mini", temperature=k),
        lambda k: keys.set(k, "another-value-1234567"),
        lambda k: keys.enable(k),
        lambda k: cencori_nb.usage(since=k),
    ],
    ids=["route", "max_cost_usd", "temperature", "keys.set provider", "keys.enable", "usage since"],
)
@pytest.mark.parametrize("which", ["shaped", "plain"])
def test_an_error_never_repeats_a_stored_key_passed_as_an_argument(
    call: Any, which: str, canary: str
) -> None:
    """A stored key pasted into the wrong argument: the error (message, hint, args,
    attributes, traceback, cause chain) names the problem without repeating it. `route=`
    repeated it ("Unknown route 'sk-…'")."""
    keys.set("openai", canary, default_model="gpt-4o-mini", make_default=True)
    keys.set("together", PLAIN_KEY)
    key = canary if which == "shaped" else PLAIN_KEY
    with pytest.raises((errors.CencoriError, ValueError, TypeError)) as caught:
        call(key)
    audit = Audit({"openai canary": canary, "plain key": PLAIN_KEY})
    # The error's own surfaces along its shown cause/context chain. (Frame locals in a
    # traceback hold the argument the caller passed, as in any library; not audited here.)
    err: BaseException | None = caught.value
    while err is not None:
        audit.add("str", str(err))
        audit.add("repr", repr(err))
        audit.add("args", repr(err.args))
        audit.add(
            "attributes", repr({k: v for k, v in vars(err).items() if not k.startswith("__")})
        )
        # as Python shows it: a context raised `from None` is not part of the error's story
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    audit.assert_clean()
