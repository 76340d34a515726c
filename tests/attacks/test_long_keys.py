"""A long token stored as a key (a JWT from a gateway or an OAuth access token: hundreds to
a few thousand characters; the store accepts keys over 512 characters with a note).

The exact-value scrubber builds one regex of every stored key in its encoded forms (hex is
twice as long as the key) as a character trie; built recursively, a key of ~250 characters
took the save-time scrubber past Python's recursion limit, and the scrubber, which must
never block a save, then saved the notebook UNCHANGED, key and all. Over ~490 characters
``keys.set`` itself raised RecursionError (a traceback) and every later scrub in the process
failed. Each test here runs the real parts: the key store, the router against the recording
sandbox on loopback, jupyter_server's contents manager with our hooks installed.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import string
from pathlib import Path
from typing import Any

import nbformat
import pytest

import cencori_nb
from cencori_nb import keys, redact, settings
from cencori_nb.jupyter import install
from tests.attacks.audit import find
from tests.attacks.support import RecordingSandbox

_ALPHABET = string.ascii_letters + string.digits + "-_"


def _token(length: int, seed: int) -> str:
    """A JWT-shaped token of ``length`` characters (header.payload.signature)."""
    rng = random.Random(seed)
    body = "".join(rng.choice(_ALPHABET) for _ in range(length - 5))
    third = len(body) // 3
    return f"eyJ{body[:third]}.{body[third : 2 * third]}.{body[2 * third :]}"[:length]


LENGTHS = [300, 1500, 4000]


@pytest.fixture
def cm(tmp_path: Path) -> Any:
    from jupyter_server.services.contents.largefilemanager import LargeFileManager

    root = tmp_path / "root"
    root.mkdir()
    manager = LargeFileManager(root_dir=str(root))
    assert install(manager, logging.getLogger("test.long_keys"))
    manager.root = root
    return manager


@pytest.mark.parametrize("length", LENGTHS)
def test_a_long_token_is_stored_and_sent(length: int, srv: RecordingSandbox) -> None:
    token = _token(length, length)
    status = keys.set("local", token)
    assert status.key_hint == "…" + token[-4:]
    settings.update_settings(base_urls={"local": f"{srv.url}/openai/v1"})
    cencori_nb.chat("hello", model="gpt-4o-mini", provider="local")
    assert srv.keys_received() == [token]


@pytest.mark.parametrize("length", LENGTHS)
def test_every_policy_scrubs_a_long_stored_token(length: int) -> None:
    token = _token(length, length + 1)
    keys.set("local", token)
    text = f"said: {token} and {token.encode().hex()} and {base64.b64encode(token.encode())!r}"
    for policy in (redact.LOG_LINE, redact.USER_MESSAGE, redact.NOTEBOOK):
        assert token not in policy.scrub(text)
    assert find(redact.NOTEBOOK.scrub(text), {"token": token}) == []


@pytest.mark.parametrize("length", LENGTHS)
def test_a_notebook_holding_a_long_stored_token_is_saved_without_it(
    length: int, cm: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The key printed in an output, hex-encoded in another, base64 in a PNG-like blob:
    the bytes on disk hold none of them (before: 'secret scrubber failed …; saving
    unchanged' and the key on disk in clear)."""
    token = _token(length, length + 2)
    keys.set("local", token)
    nb = json.loads(nbformat.writes(nbformat.v4.new_notebook()))
    cell = json.loads(json.dumps(nbformat.v4.new_code_cell("print(key)", execution_count=1)))
    cell["outputs"] = [
        {"output_type": "stream", "name": "stdout", "text": f"key={token}\n"},
        {
            "output_type": "execute_result",
            "execution_count": 1,
            "metadata": {},
            "data": {"text/plain": repr(token.encode().hex())},
        },
    ]
    nb["cells"] = [cell]
    with caplog.at_level(logging.WARNING):
        cm.save({"type": "notebook", "format": "json", "content": nb}, "long.ipynb")
    data = (cm.root / "long.ipynb").read_bytes()
    assert find(data, {"token": token}) == []
    assert "scrubber failed" not in caplog.text
    nbformat.validate(nbformat.reads(data.decode(), as_version=4))
