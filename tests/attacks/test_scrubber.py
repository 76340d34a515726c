"""Attacks on the save-time scrubber (issue 10.4), each saved through a real Jupyter contents
manager (jupyter_server's LargeFileManager, the class the server uses, with our hooks
installed the way the extension installs them).

For every attack the bytes on disk are searched for any form of the planted keys: verbatim,
hex, base64 at every alignment (also across line breaks), percent-encoded, LaTeX- or
JSON-escaped, HTML character references. The search decodes independently of
cencori_nb.redact, so a gap in the scrubber's decoding cannot hide itself. A saved notebook
must also still be valid (nbformat.validate).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from cencori_nb import state
from cencori_nb.jupyter import install
from cencori_nb.jupyter.scrubber import MARKER, WIDGET_STATE_MIME

# A stored key with no known shape (found by exact match only), with underscores so the
# LaTeX and percent-encoded forms differ from it; and a key-shaped key that is NOT stored
# (found by its shape only).
STORED = "plain_local_token_9f8e7d6c5b4a3210"
SHAPED = "csk_live_" + "Q3vN8pL2xR7tK5mW9bY4"
SECRETS = (STORED, SHAPED)


# --------------------------------------------------------------------------- the search


def _unescape(text: str) -> str:
    text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)
    text = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text)
    text = re.sub(r"\\([_\-#$%&{}])", r"\1", text)
    return html.unescape(urllib.parse.unquote(text))


def _variants(text: str) -> set[str]:
    folded = re.sub(r"[\r\n]", "", text)
    return {text, folded, _unescape(text), _unescape(folded)}


def _in_base64(text: str, raw: bytes) -> bool:
    for run in re.findall(r"[A-Za-z0-9+/_\-]{16,}", text):
        std = run.replace("-", "+").replace("_", "/")
        for offset in range(4):
            chunk = std[offset:]
            rem = len(chunk) % 4
            chunk = chunk[:-1] if rem == 1 else chunk + "=" * ((4 - rem) % 4)
            if raw in base64.b64decode(chunk):
                return True
    return False


def _leaks(text: str) -> list[str]:
    """Which secrets ``text`` holds, in any of the forms above."""
    found = []
    for secret in SECRETS:
        raw = secret.encode()
        for v in _variants(text):
            if (
                secret in v
                or raw.hex() in v.lower()
                or _in_base64(v, raw)
                or _in_base64(re.sub(r"\s", "", v), raw)
            ):
                found.append(secret)
                break
    return found


def _strings(node: Any) -> Iterator[str]:
    """Every string of a JSON document, keys included, and each list of strings joined."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        if node and all(isinstance(x, str) for x in node):
            yield "".join(node)
        for x in node:
            yield from _strings(x)


def _texts(nb: dict[str, Any]) -> Iterator[str]:
    """Every string of a notebook, and each cell's stream output text run together."""
    yield from _strings(nb)
    for cell in nb.get("cells", []):
        yield "".join(
            "".join(o["text"]) if isinstance(o.get("text"), list) else o["text"]
            for o in cell.get("outputs", [])
            if o.get("output_type") == "stream"
        )


def assert_nothing_leaked(data: bytes, *, notebook: bool) -> None:
    text = data.decode("utf-8")
    assert _leaks(text) == [], text[:2000]
    if notebook:
        for s in _texts(json.loads(text)):
            assert _leaks(s) == [], s[:500]
        nbformat.validate(nbformat.reads(text, as_version=4))


# --------------------------------------------------------------------------- the manager


@pytest.fixture
def cm(tmp_path: Path) -> Any:
    from jupyter_server.services.contents.largefilemanager import LargeFileManager

    from cencori_nb import keys

    keys.set("local", STORED)
    root = tmp_path / "root"
    root.mkdir()
    manager = LargeFileManager(root_dir=str(root))
    assert install(manager, logging.getLogger("test.attack"))
    manager.root = root
    return manager


def _save_nb(cm: Any, name: str, nb: dict[str, Any]) -> bytes:
    cm.save({"type": "notebook", "format": "json", "content": nb}, name)
    return (cm.root / name).read_bytes()


def _nb(*cells: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    nb = json.loads(nbformat.writes(nbformat.v4.new_notebook()))
    nb["cells"] = list(cells)
    nb["metadata"].update(metadata)
    return nb


def _code(
    source: Any = "x", outputs: list[dict[str, Any]] | None = None, **fields: Any
) -> dict[str, Any]:
    cell = json.loads(json.dumps(nbformat.v4.new_code_cell("x", execution_count=1)))
    cell.update(source=source, outputs=outputs or [], **fields)
    return cell


def _md(source: Any) -> dict[str, Any]:
    cell = json.loads(json.dumps(nbformat.v4.new_markdown_cell("x")))
    cell["source"] = source
    return cell


def _stream(text: Any) -> dict[str, Any]:
    return {"output_type": "stream", "name": "stdout", "text": text}


def _display(data: dict[str, Any], metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"output_type": "display_data", "data": data, "metadata": metadata or {}}


def _b64(data: bytes, offset: int = 0) -> str:
    return base64.b64encode(b"u" * offset + data).decode()


def _mime(data: bytes) -> str:
    encoded = base64.b64encode(data).decode()
    return "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)) + "\n"


# --------------------------------------------------------------------------- the attacks


def _widget_state(state: dict[str, Any]) -> dict[str, Any]:
    return {WIDGET_STATE_MIME: {"version_major": 2, "version_minor": 0, "state": state}}


NOTEBOOK_ATTACKS: dict[str, Callable[[], dict[str, Any]]] = {
    # dict keys, not only values
    "key of an output's JSON data": lambda: _nb(
        _code(
            outputs=[
                _display(
                    {"application/json": {STORED: 1, SHAPED: {"nested": True}}, "text/plain": "{}"}
                )
            ]
        )
    ),
    "key of cell metadata": lambda: _nb(_code(metadata={STORED: "x", "tags": []})),
    "key nested in notebook metadata": lambda: _nb(custom={"a": {SHAPED: True, "b": 1}}),
    "key of output metadata": lambda: _nb(
        _code(outputs=[_display({"text/plain": "x"}, {STORED: {"isolated": True}})])
    ),
    "widget model id": lambda: _nb(
        widgets=_widget_state(
            {
                STORED: {
                    "model_name": "TextModel",
                    "model_module": "@jupyter-widgets/controls",
                    "model_module_version": "2.0.0",
                    "state": {},
                }
            }
        )
    ),
    "two keys that both become the marker": lambda: _nb(custom={STORED: 1, SHAPED: 2}),
    # cell ids (valid id characters: a key fits)
    "cell id is the stored key": lambda: _nb(_code(id=STORED)),
    "cell id is a key-shaped key": lambda: _nb(_code(id=SHAPED), _md("fine")),
    # split over the items of a multi-line list
    "source list split mid-key": lambda: _nb(
        _code(source=["k = '", STORED[:9], STORED[9:] + "'\n", "print(k)"])
    ),
    "stream text list split mid-key": lambda: _nb(
        _code(outputs=[_stream(["token: " + SHAPED[:12], SHAPED[12:] + "\n", "done\n"])])
    ),
    "traceback items split mid-key": lambda: _nb(
        _code(
            outputs=[
                {
                    "output_type": "error",
                    "ename": "E",
                    "evalue": "v",
                    "traceback": ["call(key='" + STORED[:5], STORED[5:] + "')"],
                }
            ]
        )
    ),
    "two stream outputs split mid-key": lambda: _nb(
        _code(outputs=[_stream("key " + STORED[:20]), _stream(STORED[20:] + "\n")])
    ),
    # encodings
    "MIME base64 (76-char lines) in text/plain": lambda: _nb(
        _code(
            outputs=[
                _display({"text/plain": _mime(b"x" * 70 + STORED.encode() + b" trailer " * 10)})
            ]
        )
    ),
    "base64 at alignment 0": lambda: _nb(
        _md("Authorization: Basic " + _b64(b"user:" + STORED.encode(), 0))
    ),
    "base64 at alignment 1": lambda: _nb(_md("blob " + _b64(STORED.encode(), 1))),
    "base64 at alignment 2": lambda: _nb(_md("blob " + _b64(STORED.encode(), 2))),
    "urlsafe base64 of the key": lambda: _nb(
        _md(base64.urlsafe_b64encode(b"\xfb\xff" + STORED.encode()).decode())
    ),
    "base64 with line breaks in an image/png payload": lambda: _nb(
        _code(
            outputs=[
                _display(
                    {
                        "image/png": _mime(
                            b"\x89PNG\r\n\x1a\n" + b"\0" * 50 + STORED.encode() + b"\0" * 40
                        ),
                        "text/plain": "<Figure>",
                    }
                )
            ]
        )
    ),
    "hex dump wrapped over lines": lambda: _nb(
        _code(
            outputs=[
                _stream(
                    "\n".join(
                        STORED.encode().hex()[i : i + 16] for i in range(0, 2 * len(STORED), 16)
                    )
                )
            ]
        )
    ),
    "upper-case hex": lambda: _nb(_md(STORED.encode().hex().upper())),
    "LaTeX-escaped underscores (stored key)": lambda: _nb(
        _md("$$\\text{" + STORED.replace("_", "\\_") + "}$$")
    ),
    "LaTeX-escaped underscores (key shape)": lambda: _nb(_md("Key: " + SHAPED.replace("_", "\\_"))),
    "percent-encoded underscores": lambda: _nb(
        _md("https://x.test/?k=" + STORED.replace("_", "%5F"))
    ),
    "fully percent-encoded": lambda: _nb(_md("".join(f"%{b:02X}" for b in STORED.encode()))),
    "JSON unicode escapes": lambda: _nb(
        _code(outputs=[_stream(json.dumps({"k": STORED}).replace("_", "\\u005f") + "\n")])
    ),
    "Python \\x escapes": lambda: _nb(_md(SHAPED.replace("_", "\\x5f"))),
    "HTML character references": lambda: _nb(
        _code(
            outputs=[
                _display(
                    {"text/html": "<b>" + STORED.replace("_", "&#95;") + "</b>", "text/plain": "x"}
                )
            ]
        )
    ),
    "attachment name": lambda: _nb(
        {
            **_md("![img](attachment:x.png)"),
            "attachments": {STORED + ".png": {"image/png": base64.b64encode(b"\x89PNG").decode()}},
        }
    ),
}


@pytest.mark.parametrize("attack", sorted(NOTEBOOK_ATTACKS))
def test_notebook_attack_leaves_no_form_of_the_key_on_disk(cm: Any, attack: str) -> None:
    nb = NOTEBOOK_ATTACKS[attack]()
    assert any(_leaks(s) for s in _texts(nb)), "the attack must plant a key"
    on_disk = _save_nb(cm, "attack.ipynb", nb)
    assert_nothing_leaked(on_disk, notebook=True)
    assert MARKER.encode() in on_disk or b'"id"' in on_disk


@pytest.mark.parametrize(
    "hider",
    ["\u200b", "\u00ad", "\ufeff", "\u2060", "\x1b[31m", "\x1b]8;;https://e.example\x1b\\"],
    ids=["zero-width space", "soft hyphen", "BOM", "word joiner", "ANSI colour", "OSC 8 link"],
)
def test_a_key_split_by_invisible_characters_is_not_saved(cm: Any, hider: str) -> None:
    """Both keys (stored, and key-shaped) with an invisible character or a terminal escape
    every few characters, in a stream, an HTML output and the source: rendered, each reads
    as the key. On disk, with those characters taken out (raw or JSON-escaped), no form of
    either key is left."""

    def hide(key: str) -> str:
        return hider.join(key[i : i + 4] for i in range(0, len(key), 4))

    nb = _nb(
        _code(
            source=f"token = '{hide(STORED)}'",
            outputs=[
                _stream(f"echo: {hide(SHAPED)} done\n"),
                _display({"text/html": f"<b>{hide(STORED)}</b>", "text/plain": hide(SHAPED)}),
            ],
        )
    )
    on_disk = _save_nb(cm, "hidden.ipynb", nb).decode()
    for form in sorted({hider, json.dumps(hider)[1:-1]}, key=len, reverse=True):
        on_disk = on_disk.replace(form, "")
    assert _leaks(on_disk) == []
    assert on_disk.count(MARKER) == 4


def test_two_keys_becoming_the_marker_keep_both_values(cm: Any) -> None:
    """Renamed keys never collide: no value is silently dropped."""
    saved = json.loads(_save_nb(cm, "a.ipynb", _nb(custom={STORED: 1, SHAPED: 2, "z": 3})))
    assert saved["metadata"]["custom"] == {MARKER: 1, f"{MARKER} 2": 2, "z": 3}


def test_scrubbed_cell_ids_are_fresh_valid_and_unique(cm: Any) -> None:
    saved = json.loads(
        _save_nb(cm, "ids.ipynb", _nb(_code(id=STORED), _code(id=SHAPED), _md("keep")))
    )
    ids = [c["id"] for c in saved["cells"]]
    assert len(set(ids)) == 3 and all(re.fullmatch(r"[a-zA-Z0-9_\-]{1,64}", i) for i in ids)


def test_a_split_source_is_re_split_into_lines(cm: Any) -> None:
    nb = _nb(_code(source=["k = '", STORED[:9], STORED[9:] + "'\n", "print(k)"]))
    saved = nbformat.reads(_save_nb(cm, "s.ipynb", nb).decode(), as_version=4)
    assert saved.cells[0].source == f"k = '{MARKER}'\nprint(k)"


# --------------------------------------------------------------------------- file models


def _notebook_text(secret: str) -> str:
    return nbformat.writes(
        nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"key = '{secret}'")])
    )


FILE_ATTACKS: dict[str, tuple[str, Callable[[], dict[str, Any]], bool]] = {
    # JupyterLab's upload: a base64 file model, even for a notebook
    "uploaded .ipynb as a base64 file model": (
        "up.ipynb",
        lambda: {
            "type": "file",
            "format": "base64",
            "content": base64.b64encode(_notebook_text(STORED).encode()).decode(),
        },
        True,
    ),
    ".ipynb as a text file model": (
        "text.ipynb",
        lambda: {"type": "file", "format": "text", "content": _notebook_text(SHAPED)},
        True,
    ),
    ".ipynb with MIME-wrapped base64 content": (
        "wrapped.ipynb",
        lambda: {
            "type": "file",
            "format": "base64",
            "content": _mime(_notebook_text(STORED).encode()),
        },
        True,
    ),
    "a notebook under another name": (
        "backup.json",
        lambda: {"type": "file", "format": "text", "content": _notebook_text(STORED)},
        True,
    ),
    "a broken .ipynb (not JSON)": (
        "broken.ipynb",
        lambda: {"type": "file", "format": "text", "content": "{ not json " + STORED},
        False,
    ),
    "plain text file": (
        "notes.txt",
        lambda: {"type": "file", "format": "text", "content": f"OPENAI_KEY={SHAPED}\n"},
        False,
    ),
    "uploaded .env (base64 text)": (
        "prod.env",
        lambda: {
            "type": "file",
            "format": "base64",
            "content": base64.b64encode(f"TOKEN={STORED}\n".encode()).decode(),
        },
        False,
    ),
    "python file, key split by a LaTeX escape": (
        "cfg.py",
        lambda: {
            "type": "file",
            "format": "text",
            "content": "KEY = r'" + STORED.replace("_", "\\_") + "'\n",
        },
        False,
    ),
}


@pytest.mark.parametrize("attack", sorted(FILE_ATTACKS))
def test_file_model_attack_leaves_no_form_of_the_key_on_disk(cm: Any, attack: str) -> None:
    name, build, is_notebook = FILE_ATTACKS[attack]
    model = build()
    cm.save(model, name)
    on_disk = (cm.root / name).read_bytes()
    assert_nothing_leaked(on_disk, notebook=is_notebook)
    assert MARKER.encode() in on_disk


def test_binary_file_is_left_byte_identical(cm: Any) -> None:
    """Not text: not scanned (documented); the bytes are saved as sent."""
    blob = b"\x89PNG\r\n\x1a\n\xff\xfe" + bytes(range(256))
    cm.save(
        {"type": "file", "format": "base64", "content": base64.b64encode(blob).decode()}, "pic.png"
    )
    assert (cm.root / "pic.png").read_bytes() == blob


def test_clean_file_models_are_saved_unchanged(cm: Any) -> None:
    text = _notebook_text("nothing secret here")
    cm.save({"type": "file", "format": "text", "content": text}, "clean.ipynb")
    assert (cm.root / "clean.ipynb").read_text() == text


def test_chunked_upload_with_the_key_across_a_chunk_boundary(cm: Any) -> None:
    """JupyterLab uploads files over 15 MB in chunks; Jupyter runs pre-save hooks on the
    first chunk only. The file is scrubbed on disk after the last one, keeping its mode."""
    data = _notebook_text(STORED).encode()
    cut = data.index(STORED.encode()) + 7  # the key straddles chunks 1 and 2
    parts = [data[:cut], data[cut : cut + 40], data[cut + 40 :]]
    for number, part in zip((1, 2, -1), parts, strict=True):
        cm.save(
            {
                "type": "file",
                "format": "base64",
                "chunk": number,
                "content": base64.b64encode(part).decode(),
            },
            "big.ipynb",
        )
    on_disk = (cm.root / "big.ipynb").read_bytes()
    assert_nothing_leaked(on_disk, notebook=True)
    assert MARKER.encode() in on_disk
    # a normal save afterwards is not re-read from disk (its pre-save hook saw it all)
    cm.save({"type": "file", "format": "text", "content": "clean"}, "big.ipynb")


def test_chunked_text_upload_of_a_plain_file(cm: Any) -> None:
    for number, part in ((1, f"A={STORED[:4]}"), (-1, f"{STORED[4:]}\n")):
        cm.save({"type": "file", "format": "text", "chunk": number, "content": part}, "upload.txt")
    assert_nothing_leaked((cm.root / "upload.txt").read_bytes(), notebook=False)


# --------------------------------------------------------------------------- stores


def test_unreadable_store_warns_at_startup_and_first_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A passphrase store and no passphrase: WARNING when installed and at the first save
    (not only DEBUG), never the key; key shapes are still removed."""
    from jupyter_server.services.contents.largefilemanager import LargeFileManager

    from cencori_nb import keys

    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "correct horse battery staple")
    keys.set("local", STORED)
    monkeypatch.delenv("CENCORI_NB_PASSPHRASE")
    state.reset("keystore")

    state.reset("redact")  # a fresh server process knows no keys
    root = tmp_path / "root"
    root.mkdir()
    manager = LargeFileManager(root_dir=str(root))
    logger = logging.getLogger("test.locked")
    with caplog.at_level(logging.DEBUG, logger="test.locked"):
        install(manager, logger)
        startup = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(startup) == 1 and "cannot read the key store" in startup[0].getMessage()
        assert "CENCORI_NB_PASSPHRASE" in startup[0].getMessage()
        caplog.clear()
        manager.save({"type": "notebook", "content": _nb(_md(SHAPED))}, "a.ipynb")
        first = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("cannot read the key store" in m for m in first)
        caplog.clear()
        manager.save({"type": "notebook", "content": _nb(_md("hi"))}, "b.ipynb")
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert STORED not in caplog.text
    assert SHAPED.encode() not in (root / "a.ipynb").read_bytes()


def test_sandbox_home_still_scrubs_the_real_stores_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_home: Path
) -> None:
    """`cencori-nb lab` in sandbox mode: the kernels (and the server) use the sandbox home,
    the scrubber also reads the real home's store, read-only."""
    from jupyter_server.services.contents.largefilemanager import LargeFileManager

    from cencori_nb import keys
    from cencori_nb.cli import lab as lab_cli

    keys.set("local", STORED)  # the real store
    real_store = private_home / "keystore.json"
    before = sorted(p.name for p in private_home.iterdir()), real_store.read_bytes()
    plan = lab_cli.plan(
        [], sandbox=True, environ={}, is_root=False, has_display=True, scrubber_config=True
    )
    for name, value in plan.env_changes.items():
        monkeypatch.setenv(name, value)
    state.reset("keystore")
    state.reset("redact")  # the server process starts afresh
    root = tmp_path / "root"
    root.mkdir()
    manager = LargeFileManager(root_dir=str(root))
    install(manager, logging.getLogger("test.sandbox"))
    manager.save({"type": "notebook", "content": _nb(_md(f"real key {STORED}"))}, "s.ipynb")
    assert_nothing_leaked((root / "s.ipynb").read_bytes(), notebook=True)
    after = sorted(p.name for p in private_home.iterdir()), real_store.read_bytes()
    assert after == before  # read-only: nothing written there


# --------------------------------------------------------------------------- more surfaces


def test_base64_and_hex_of_a_key_shape_that_is_not_stored(cm: Any) -> None:
    """A key nobody stored, base64- (any alignment, MIME-wrapped) or hex-encoded in text."""
    cells = [_md("Authorization: Basic " + _b64(b"me:" + SHAPED.encode(), off)) for off in range(3)]
    cells.append(_code(outputs=[_stream(_mime(b"x" * 61 + SHAPED.encode() + b"\n" * 30))]))
    cells.append(_md("hex: " + SHAPED.encode().hex()))
    on_disk = _save_nb(cm, "encoded.ipynb", _nb(*cells))
    assert_nothing_leaked(on_disk, notebook=True)


def test_widget_buffer_holding_a_key_shape_is_dropped(cm: Any) -> None:
    """A FileUpload of a .env with a key nobody stored: its saved buffer is dropped."""
    state = {
        "m1": {
            "model_name": "FileUploadModel",
            "model_module": "@jupyter-widgets/controls",
            "model_module_version": "2.0.0",
            "state": {"value": []},
            "buffers": [
                {
                    "encoding": "base64",
                    "path": ["value", 0, "content"],
                    "data": _b64(f"KEY={SHAPED}\n".encode()),
                }
            ],
        }
    }
    on_disk = _save_nb(cm, "upload.ipynb", _nb(widgets=_widget_state(state)))
    assert_nothing_leaked(on_disk, notebook=True)
    saved = json.loads(on_disk)
    assert saved["metadata"]["widgets"][WIDGET_STATE_MIME]["state"]["m1"]["buffers"] == []


@pytest.mark.parametrize("name", [f"{SHAPED}.ipynb", f"notes/{STORED}/a.txt", f"{STORED}.ipynb"])
def test_a_file_name_holding_a_key_is_refused(cm: Any, name: str) -> None:
    """The name itself would be on disk: the save is refused with a 400 that never repeats
    it, and nothing is written."""
    from tornado.web import HTTPError

    (cm.root / name).parent.mkdir(parents=True, exist_ok=True)  # the folder exists
    with pytest.raises(HTTPError) as info:
        cm.save({"type": "file", "format": "text", "content": "hello"}, name)
    assert info.value.status_code == 400 and "refused" in str(info.value)
    assert STORED not in str(info.value) and SHAPED not in str(info.value)
    assert not any(p.is_file() for p in cm.root.rglob("*"))


def test_chunks_sent_after_a_refused_first_chunk_leave_no_file(cm: Any) -> None:
    """A client that keeps sending chunks after chunk 1 was refused for its name: Jupyter
    appends them to a new file; it is removed after the last chunk."""
    from tornado.web import HTTPError

    name = f"{SHAPED}.txt"
    with pytest.raises(HTTPError):
        cm.save({"type": "file", "format": "text", "chunk": 1, "content": "a"}, name)
    for number in (2, -1):
        cm.save({"type": "file", "format": "text", "chunk": number, "content": "b"}, name)
    assert not any(SHAPED in p.name for p in cm.root.rglob("*"))


# --------------------------------------------------------------------------- fail closed


def test_a_scrubber_failure_falls_back_to_the_json_text(
    cm: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Any bug in the structured scrub (injected here): the notebook is scrubbed as JSON
    text instead; it used to be saved unchanged."""
    from cencori_nb.jupyter import scrubber

    def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("a bug in the scrubber")

    monkeypatch.setattr(scrubber, "scrub_notebook", broken)
    nb = _nb(_code(outputs=[_stream(f"key {STORED}\n")]), _md(f"and {SHAPED}"))
    with caplog.at_level(logging.WARNING):
        data = _save_nb(cm, "fallback.ipynb", nb)
    assert_nothing_leaked(data, notebook=True)
    assert data.count(MARKER.encode()) == 2
    assert "scrubbing its JSON text instead" in caplog.text


def test_when_the_fallback_fails_too_the_save_is_refused(
    cm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tornado.web import HTTPError

    from cencori_nb.jupyter import scrubber

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the scrubber")

    class BrokenPolicy:
        subn = exact_regex = broken

    monkeypatch.setattr(scrubber, "scrub_notebook", broken)
    monkeypatch.setattr(scrubber, "NOTEBOOK", BrokenPolicy())
    nb = _nb(_code(outputs=[_stream(f"key {STORED}\n")]))
    with pytest.raises(HTTPError) as info:
        cm.save({"type": "notebook", "format": "json", "content": nb}, "refused.ipynb")
    assert info.value.status_code == 500 and STORED not in str(info.value)
    assert not (cm.root / "refused.ipynb").exists()
