"""The save-time scrubber as pure functions: patterns, the notebook walk, the hook contract."""

from __future__ import annotations

import copy
import json
import logging

import nbformat
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cencori_nb import redact, state
from cencori_nb.jupyter import scrubber
from cencori_nb.jupyter.scrubber import MARKER, pre_save_hook, scrub_notebook, scrub_text

GOOGLE = "AIza" + "SyB3xQ9vL2mN7pR4tW8yZ1cF6hJ0kD5gE2s"  # 39 chars, Google's shape
ANTHROPIC = "sk-ant-api03-" + "Qm7Zx2Lp9Vt4Rk8Wn3Yb6Hc1Jd5Fg0Se" + "-AA"
OPENAI_PROJ = "sk-proj-" + "Tr9Wq2Lm7Xz4Pk8Vb3Nc6Hd1Jf5Gs0Ae"
CENCORI = "csk_" + "live_8f3a9c2e7b1d4f6a"
BEARER_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dBjftJeZ4CVP"


@pytest.mark.parametrize(
    "secret",
    [
        GOOGLE,
        ANTHROPIC,
        OPENAI_PROJ,
        CENCORI,
        "sk-" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8s9T0u1V2w3X4",
        "gsk_" + "W8x2Lq9Zr4Tk7Vm3Pb6Nc1Hd5Jf",
        "xai-" + "Pp4Lw9Qz2Rx7Tk3Vm8Nb1Hc6Jd",
    ],
)
def test_key_shaped_secrets_are_replaced_in_text(secret: str) -> None:
    """Each provider's key shape is removed and the words around it survive."""
    text, n = scrub_text(f"key = '{secret}'  # mine")
    assert secret not in text
    assert text == f"key = '{MARKER}'  # mine"
    assert n == 1


def test_bearer_token_keeps_the_word_and_drops_the_token() -> None:
    text, n = scrub_text(f"Authorization: Bearer {BEARER_JWT}")
    assert text == f"Authorization: Bearer {MARKER}"
    assert n == 1


@pytest.mark.parametrize(
    "text",
    [
        "pip install sk-learn scikit-learn",
        "from sklearn import sk-learn-utils",
        "Bearer token authentication is described in RFC 6750",
        "the task-1234567890abcdefghijklmnop finished",
        "disk-0123456789abcdefghijklmnopq is full",
        "AIza is a prefix",
        "csk_ short",
        "cost per 1M tokens: $0.15 (gpt-4o-mini)",
        MARKER,
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    """No false positives on prose, package names and our own marker (idempotent)."""
    assert scrub_text(text) == (text, 0)


def test_exact_store_values_are_removed_whatever_their_shape(canary: str) -> None:
    """A stored key is removed even when it does not look like a key."""
    odd_key = "hunter2-local-server-pass"
    text, n = scrub_text(f"a={odd_key} b={canary} c={odd_key}", [odd_key, canary])
    assert odd_key not in text and canary not in text
    assert n == 3


def test_exact_values_shorter_than_eight_chars_are_ignored() -> None:
    """A silly 3-letter 'key' must not shred the notebook."""
    assert scrub_text("the cat sat", ["cat"]) == ("the cat sat", 0)


def _notebook_with(canary: str) -> dict:
    """A v4 notebook carrying the canary in every place a key can hide."""
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell(
        source=f'client = OpenAI(api_key="{canary}")\nprint(client.api_key)',
        outputs=[
            nbformat.v4.new_output("stream", name="stdout", text=f"{canary}\n"),
            nbformat.v4.new_output(
                "execute_result",
                execution_count=1,
                data={
                    "text/plain": f"'{canary}'",
                    "text/html": [f"<b>{canary}</b>", "<i>ok</i>"],
                    "application/json": {"headers": {"authorization": f"Bearer {canary}"}},
                },
            ),
            nbformat.v4.new_output(
                "error",
                ename="AuthenticationError",
                evalue=f"Incorrect API key provided: {canary}",
                traceback=[f"\x1b[0;31mcall(api_key='{canary}')\x1b[0m"],
            ),
        ],
        execution_count=1,
    )
    code.metadata["note"] = canary
    md = nbformat.v4.new_markdown_cell(f"Do not paste keys like `{canary}` here")
    nb.cells = [code, md]
    nb.metadata["secret_note"] = [canary]
    nb.metadata["widgets"] = {
        scrubber.WIDGET_STATE_MIME: {
            "version_major": 2,
            "version_minor": 0,
            "state": {
                "abc123": {
                    "model_name": "PasswordModel",
                    "model_module": "@jupyter-widgets/controls",
                    "model_module_version": "2.0.0",
                    "state": {"value": canary, "description": "API key"},
                }
            },
        }
    }
    return json.loads(nbformat.writes(nb))


def test_notebook_walk_removes_the_canary_everywhere(canary: str) -> None:
    """Sources, all output kinds and mime types, metadata and widget state are scrubbed."""
    nb = _notebook_with(canary)
    removed = scrub_notebook(nb, [canary])
    dumped = json.dumps(nb)
    assert canary not in dumped
    assert removed == 11
    nbformat.validate(nbformat.from_dict(nb))
    state = nb["metadata"]["widgets"][scrubber.WIDGET_STATE_MIME]["state"]["abc123"]["state"]
    assert state == {"value": MARKER, "description": "API key"}
    assert nb["cells"][0]["outputs"][2]["traceback"] == [
        f"\x1b[0;31mcall(api_key='{MARKER}')\x1b[0m"
    ]


def test_notebook_without_secrets_is_not_touched() -> None:
    """Nothing matched: same objects, same content (Jupyter then writes identical bytes)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import sklearn  # sk-learn",
            outputs=[nbformat.v4.new_output("stream", name="stdout", text="Bearer token docs\n")],
        )
    ]
    raw = json.loads(nbformat.writes(nb))
    before = copy.deepcopy(raw)
    cells_obj, source_obj = raw["cells"], raw["cells"][0]["source"]
    assert scrub_notebook(raw, ["not-in-this-notebook-123"]) == 0
    assert raw == before
    assert raw["cells"] is cells_obj and raw["cells"][0]["source"] is source_obj


def test_a_key_split_over_two_stream_outputs_is_caught(canary: str) -> None:
    """Printed piece by piece (a streamed reply), the key spans two outputs: they are merged
    and scrubbed; neighbouring outputs without a split secret stay as they were."""
    nb = nbformat.v4.new_notebook()
    out = [
        nbformat.v4.new_output("stream", name="stdout", text=t)
        for t in ("hello ", canary[:6], canary[6:] + " bye", "\nend")
    ]
    nb.cells = [nbformat.v4.new_code_cell("stream()", outputs=out)]
    raw = json.loads(nbformat.writes(nb))
    assert scrub_notebook(raw) == 1
    texts = ["".join(o["text"]) for o in raw["cells"][0]["outputs"]]
    assert texts == ["hello ", f"{MARKER} bye", "\nend"]
    nbformat.validate(nbformat.from_dict(raw))


def test_stored_keys_are_also_found_hex_and_base64_encoded(canary: str) -> None:
    """A Basic-auth header, a hex dump, an uploaded .env file (widget buffer) and an
    octet-stream output: every encoded form of a stored key goes, the rest stays."""
    import base64

    env_file = f"OPENAI_API_KEY={canary}\nDEBUG=1\n".encode()
    basic = base64.b64encode(f"user:{canary}".encode()).decode()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "upload",
            outputs=[
                nbformat.v4.new_output(
                    "stream",
                    name="stdout",
                    text=f"Authorization: Basic {basic}\n{env_file.hex()}\n",
                ),
                nbformat.v4.new_output(
                    "display_data",
                    data={
                        "application/octet-stream": base64.urlsafe_b64encode(env_file).decode(),
                        "text/plain": "<bytes>",
                    },
                ),
            ],
        )
    ]
    safe = base64.b64encode(b"harmless bytes").decode()
    nb.metadata["widgets"] = {
        scrubber.WIDGET_STATE_MIME: {
            "version_major": 2,
            "version_minor": 0,
            "state": {
                "up": {
                    "model_name": "FileUploadModel",
                    "model_module": "@jupyter-widgets/controls",
                    "model_module_version": "2.0.0",
                    "state": {
                        "value": [
                            {"name": ".env", "content": None},
                            {"name": "ok.txt", "content": None},
                        ]
                    },
                    "buffers": [
                        {
                            "encoding": "base64",
                            "path": ["value", 0, "content"],
                            "data": base64.b64encode(env_file).decode(),
                        },
                        {"encoding": "base64", "path": ["value", 1, "content"], "data": safe},
                    ],
                }
            },
        }
    }
    raw = json.loads(nbformat.writes(nb))
    removed = scrub_notebook(raw, [canary])
    dumped = json.dumps(raw)
    for form in scrubber.encoded_forms(canary):
        assert form not in dumped
    assert removed == 4
    model = raw["metadata"]["widgets"][scrubber.WIDGET_STATE_MIME]["state"]["up"]
    assert model["buffers"] == [
        {"encoding": "base64", "path": ["value", 1, "content"], "data": safe}
    ]
    nbformat.validate(nbformat.from_dict(raw))


def test_binary_payloads_get_only_the_exact_pass(canary: str) -> None:
    """Base64 images that happen to contain 'AIza…' are not corrupted."""
    fake_png = "iVBORw0KGgo" + GOOGLE + "AAAA"
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "plot()",
            outputs=[
                nbformat.v4.new_output(
                    "display_data", data={"image/png": fake_png, "text/plain": GOOGLE}
                )
            ],
        )
    ]
    raw = json.loads(nbformat.writes(nb))
    assert scrub_notebook(raw) == 1
    data = raw["cells"][0]["outputs"][0]["data"]
    assert data["image/png"] == fake_png
    assert "".join(data["text/plain"]) == MARKER


class _CM:
    """The part of a contents manager the hook uses: its logger."""

    def __init__(self) -> None:
        self.log = logging.getLogger("test.contents_manager")


def test_pre_save_hook_scrubs_and_logs_count_not_secret(
    canary: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = {"type": "notebook", "format": "json", "content": _notebook_with(canary)}
    with caplog.at_level(logging.WARNING, logger="test.contents_manager"):
        pre_save_hook(model=model, path="work/leaky.ipynb", contents_manager=_CM())
    assert canary not in json.dumps(model)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert "work/leaky.ipynb" in messages[0] and "removed" in messages[0]
    assert canary not in caplog.text


def test_pre_save_hook_scrubs_text_files_and_leaves_binary_ones(canary: str) -> None:
    """Text file models are scrubbed too (issue 10.4; this test used to assert they were
    ignored); a binary file's bytes are left alone."""
    model = {"type": "file", "format": "text", "content": f"KEY={canary}\n"}
    pre_save_hook(model=model, path="notes.txt", contents_manager=_CM())
    assert model["content"] == f"KEY={MARKER}\n"
    import base64

    blob = base64.b64encode(b"\x89PNG\xff\xfe" + canary.encode()).decode()
    model = {"type": "file", "format": "base64", "content": blob}
    pre_save_hook(model=model, path="image.png", contents_manager=_CM())
    assert model["content"] == blob


def test_pre_save_hook_refuses_a_model_it_cannot_read(caplog: pytest.LogCaptureFixture) -> None:
    """A model neither the scrubber nor its JSON-text fallback can read is refused (HTTP
    500), with both failures logged. (It used to be saved unchanged: every key in it.)"""
    from tornado.web import HTTPError

    class Exploding(dict):
        def items(self):  # type: ignore[override]
            raise RuntimeError("boom")

    model = {"type": "notebook", "content": Exploding(cells=[])}
    with caplog.at_level(logging.ERROR, logger="test.contents_manager"):
        with pytest.raises(HTTPError) as info:
            pre_save_hook(model=model, path="x.ipynb", contents_manager=_CM())
    assert info.value.status_code == 500
    assert "scrubber failed on x.ipynb" in caplog.text
    assert "refusing the save" in caplog.text


def test_stored_keys_are_scrubbed_through_the_keystore(canary: str) -> None:
    """Keys in the user's store are removed exactly, even without a key shape."""
    from cencori_nb import keys

    odd = "plain-local-token-without-shape"
    keys.set("local", odd)
    keys.set("openai", canary)
    assert set(scrubber.stored_secrets()) >= {odd, canary}
    model = {
        "type": "notebook",
        "content": json.loads(
            nbformat.writes(
                nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"token {odd}")])
            )
        ),
    }
    pre_save_hook(model=model, path="a.ipynb", contents_manager=_CM())
    assert "".join(model["content"]["cells"][0]["source"]) == f"token {MARKER}"


def test_unreadable_store_falls_back_to_patterns(
    monkeypatch: pytest.MonkeyPatch, canary: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A passphrase store without its passphrase: patterns still apply, nothing is raised."""
    from cencori_nb import keys

    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "correct horse battery staple")
    keys.set("openai", canary)
    keys.set("local", "shapeless-local-token")
    monkeypatch.delenv("CENCORI_NB_PASSPHRASE")
    state.reset("keystore")
    with caplog.at_level(logging.DEBUG, logger="cencori_nb.jupyter.scrubber"):
        assert scrubber.stored_secrets() == []
    assert "key patterns only" in caplog.text
    assert canary not in caplog.text
    model = {"type": "notebook", "content": _notebook_with(canary)}
    pre_save_hook(model=model, path="a.ipynb", contents_manager=_CM())
    assert canary not in json.dumps(model)


_KEY_CHARS = st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_PROSE = st.text(alphabet=st.sampled_from(" .,:;'\"()=\n\tabcXYZ"), max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.sampled_from(["sk-", "sk-ant-api03-", "sk-proj-", "csk_", "AIza"]),
    body=st.lists(_KEY_CHARS, min_size=35, max_size=60).map("".join),
    before=_PROSE,
    after=_PROSE,
)
def test_property_a_key_in_any_text_is_removed(
    prefix: str, body: str, before: str, after: str
) -> None:
    """Any key of a known shape, wherever it sits in prose, leaves nothing behind."""
    key = prefix + body[:-1] + "7"  # real keys carry digits
    out, n = scrub_text(f"{before} {key}\n{after}")
    assert key not in out and body[:20] not in out
    assert out == f"{before} {MARKER}\n{after}"
    assert n == 1


@settings(max_examples=200, deadline=None)
@given(
    words=st.lists(st.text(alphabet="ab.c", min_size=1, max_size=5), min_size=1, max_size=6),
    text=st.text(alphabet="ab.c x", max_size=60),
)
def test_property_trie_matches_like_longest_first_alternation(words: list[str], text: str) -> None:
    """The trie regex finds exactly what `longest|…|shortest` finds."""
    import re

    plain = re.compile("|".join(map(re.escape, sorted(set(words), key=len, reverse=True))))
    trie = re.compile(redact._trie_pattern(words))
    assert trie.findall(text) == plain.findall(text)
