"""An attacker's pass over the surfaces of issues 15-17: batch-job ids used as folder names,
a hostile Batch API echoing the stored key into every field it answers with, image paths
into the home or at things that are not files, a structured answer echoing the key, and a
PostgreSQL ledger URL's password. Each input is a case here; nothing may leak or trace back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest

import cencori_nb
from cencori_nb import keys, transport
from cencori_nb.errors import CencoriError, JobError
from cencori_nb.jobs import BatchJob, jobs, load_job
from cencori_nb.jobs.job import jobs_dir
from cencori_nb.ledger import default_ledger
from tests.attacks.audit import find
from tests.attacks.support import CANARIES
from tests.conftest import all_bytes_under

KEY = CANARIES["openai"]


# --------------------------------------------------------------------------- job ids


@pytest.mark.parametrize(
    "job_id",
    [
        "job_\x00x",  # NUL: ValueError from the file system layer
        "job_" + "a" * 300,  # too long for a file name: OSError
        "job_..",
        "job_/../../x",
        "../job_x",
        "/etc/passwd",
        "job_ok\n",
        "job_\\..\\x",
        "job_ x",
        5,
        None,
    ],
)
def test_a_job_id_that_is_not_one_is_a_job_error(job_id: Any, private_home: Path) -> None:
    with pytest.raises(JobError, match="is not a job id"):
        BatchJob.load(job_id)
    with pytest.raises(JobError):
        load_job(job_id)


@pytest.mark.parametrize(
    ("name", "make", "says"),
    [
        ("job_dir", lambda p: p.mkdir(), "cannot be read"),
        ("job_bytes", lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "damaged"),
        ("job_parts", lambda p: p.write_text('{"version": 1, "parts": 5}'), "damaged"),
        ("job_partsx", lambda p: p.write_text('{"version": 1, "parts": [1]}'), "damaged"),
    ],
)
def test_a_damaged_job_record_is_a_job_error_and_the_listing_goes_on(
    name: str, make: Any, says: str, private_home: Path
) -> None:
    """A job.json that is a folder, not UTF-8, or whose parts are not records: a JobError
    naming the file (never a traceback), and jobs() lists it as unreadable with the rest."""
    d = jobs_dir() / name
    d.mkdir()
    make(d / "job.json")
    with pytest.raises(JobError, match=says) as info:
        load_job(name)
    assert "garbage" not in str(info.value)  # the bytes are not quoted
    listing = jobs()
    assert listing.loc[0, "job_id"] == name
    assert listing.loc[0, "state"].startswith("unreadable")


def test_cli_jobs_status_with_a_traversal_id(
    private_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cencori_nb.cli import main

    for bad in ("../../etc/passwd", "job_\x00", "job_" + "b" * 400):
        assert main(["jobs", "status", bad]) != 0
        err = capsys.readouterr().err
        assert "is not a job id" in err and "Traceback" not in err


# --------------------------------------------------------------------------- a hostile Batch API


def _hostile_openai_batch(
    key: str, *, fail: bool = False, key_in_id: bool = False
) -> httpx2.MockTransport:
    """An OpenAI Batch API that puts the key it received into every field it answers with:
    the batch id, the status, a failure message, each row's text, model, id and error."""

    def completion(i: int) -> dict:
        return {
            "id": f"chatcmpl-{key}",
            "object": "chat.completion",
            "created": 1,
            "model": f"gpt-4o-mini {key}",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": f"row {i}: {key}"}}
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }

    lines = [
        json.dumps({"custom_id": "r0", "response": {"status_code": 200, "body": completion(0)}}),
        json.dumps(
            {
                "custom_id": "r1",
                "response": {
                    "status_code": 400,
                    "body": {"error": {"message": f"bad key {key}", "type": key, "code": key}},
                },
            }
        ),
        json.dumps({"custom_id": "r2", "response": None, "error": {"code": key, "message": key}}),
    ]
    bid = f"batch_{key}" if key_in_id else "batch_abc123"

    def handler(request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path.endswith("/files"):
            return httpx2.Response(200, json={"id": f"file-{key}", "object": "file"})
        if path.endswith("/batches") and request.method == "POST":
            return httpx2.Response(200, json={"id": bid, "object": "batch", "status": key})
        if "/batches/" in path:
            body = {
                "id": bid,
                "object": "batch",
                "status": "failed" if fail else "completed",
                "output_file_id": "file-out",
                "error_file_id": None,
                "request_counts": {"total": 3, "completed": 3, "failed": 0},
                "errors": {"data": [{"code": key, "message": f"nope {key}"}]},
            }
            return httpx2.Response(200, json=body)
        if path.endswith("/files/file-out/content"):
            return httpx2.Response(200, content="\n".join(lines).encode())
        return httpx2.Response(404, json={"error": {"message": key, "type": "invalid_request"}})

    return httpx2.MockTransport(handler)


@pytest.mark.parametrize("fail", [False, True])
def test_a_batch_api_echoing_the_key_leaves_it_nowhere(
    private_home: Path, fail: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every field of the answers (status, failure, row text, model, id, error code and
    message) holds the stored key: none of it reaches the job files, the DataFrame, its
    attrs, jobs(), the ledger or the terminal. Found leaking: row text (results.jsonl and the
    DataFrame), the completion id (the ledger's request_id), the failure (job.json)."""
    keys.set("openai", KEY)
    transport.set_transport(_hostile_openai_batch(KEY, fail=fail))
    try:
        job = cencori_nb.submit(["a", "b", "c"], model="gpt-4o-mini", max_tokens=5)
        shown = [repr(job), str(job.status()), job._repr_markdown_()]
        try:
            out = job.result(timeout=30, progress=False)
            shown.append(out.to_csv())
            shown.append(json.dumps(out.attrs, default=str))
        except CencoriError as exc:
            shown.append(str(exc))
        shown.append(jobs().to_csv())
        shown.append(repr(load_job(job.id)))
    finally:
        transport.set_transport(None)
    led = default_ledger()
    led.flush()
    rows = led.rows()
    assert len(rows) == 3
    shown.append(repr(rows))
    captured = capsys.readouterr()
    shown += [captured.out, captured.err]
    assert find("\n".join(shown), {"openai": KEY}) == []
    for path in private_home.rglob("*"):  # the store holds it encrypted; nothing else does
        if path.is_file():
            assert find(path.read_bytes(), {"openai": KEY}) == [], path
    if not fail:
        assert "row 0:" in out.loc[0, "text"]  # the answer kept, the key masked


def test_a_batch_id_holding_the_key_is_refused(private_home: Path) -> None:
    """The provider's job id is saved and listed and cannot be masked (it is needed to ask
    about the job): a submit whose id holds the key fails with BadResponseError."""
    from cencori_nb.errors import BadResponseError

    keys.set("openai", KEY)
    transport.set_transport(_hostile_openai_batch(KEY, key_in_id=True))
    try:
        with pytest.raises(BadResponseError, match="job id that holds"):
            cencori_nb.submit(["a", "b"], model="gpt-4o-mini", max_tokens=5)
    finally:
        transport.set_transport(None)
    assert find(all_bytes_under(jobs_dir()), {"openai": KEY}) == []
    assert find(jobs().to_csv(), {"openai": KEY}) == []


def test_a_live_answer_echoing_the_key_in_its_id_and_model(private_home: Path) -> None:
    """The live path's twin of the batch finding: the completion id and model a provider
    sends are kept in the ledger (request_id, model) and on the Completion."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = {
            "id": f"chatcmpl-{KEY}",
            "object": "chat.completion",
            "created": 1,
            "model": f"gpt-4o-mini-{KEY}",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
        return httpx2.Response(200, json=body)

    keys.set("openai", KEY)
    transport.set_transport(httpx2.MockTransport(handler))
    try:
        c = cencori_nb.chat("hello", model="gpt-4o-mini", max_tokens=5)
    finally:
        transport.set_transport(None)
    assert c.text == "hi"
    led = default_ledger()
    led.flush()
    assert find(repr(c) + c.request_id + c.model + repr(led.rows()), {"openai": KEY}) == []
    for path in private_home.rglob("*"):
        if path.is_file():
            assert find(path.read_bytes(), {"openai": KEY}) == [], path


# --------------------------------------------------------------------------- image paths


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buf, format="PNG")
    return buf.getvalue()


def test_image_paths_at_the_home_or_holding_the_key(workdir: Path, private_home: Path) -> None:
    """Paths an attacker (or a slip) might hand to image(): through /proc/self/fd, a
    hard link to the store, a text file or a file name holding the key, a NUL. Each is an
    ImageError; no message quotes the key or the file's bytes."""
    import os

    from cencori_nb.errors import ImageError
    from cencori_nb.images import as_image

    keys.set("openai", KEY)
    store = next(p for p in private_home.rglob("*") if p.is_file() and p.stat().st_size > 0)
    fd = os.open(store, os.O_RDONLY)
    try:
        os.link(store, workdir / "hard.png")
        (workdir / "note.png").write_text(f"my key is {KEY}")
        (workdir / f"{KEY}.png").write_bytes(_png())
        cases = {
            Path(f"/proc/self/fd/{fd}"): "cencori-nb home",
            Path("hard.png"): "not PNG",  # the store's bytes are no image; none quoted
            Path("note.png"): "it is text",
            Path(f"{KEY}.png"): None,  # an image: accepted, its name never shown
            Path("a\x00.png"): "No image file",  # was a bare ValueError
            Path(f"missing-{KEY}.png"): "No image file",
        }
        for path, says in cases.items():
            if says is None:
                part = as_image(path)
                assert find(repr(part) + part.describe(), {"openai": KEY}) == []
                continue
            with pytest.raises(ImageError, match=says) as info:
                as_image(path)
            text = str(info.value) + repr(info.value.args) + repr(vars(info.value))
            assert find(text, {"openai": KEY}) == [], path
            assert "my key is" not in text
    finally:
        os.close(fd)


def test_an_image_path_swapped_for_a_symlink_after_the_check_is_not_followed(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder check resolves the path, then the file is opened: a symlink swapped in
    between (here: the check is made to see the link's own path) is not followed."""
    from cencori_nb.errors import ImageError
    from cencori_nb.images import as_image

    outside = tmp_path / "secret.png"
    outside.write_bytes(_png())
    (workdir / "pic.png").symlink_to(outside)
    real_resolve = Path.resolve

    def resolve_before_the_swap(self: Path, strict: bool = False) -> Path:
        if self.name == "pic.png":
            return workdir / "pic.png"  # what the check saw: a file in the folder
        return real_resolve(self, strict=strict)

    monkeypatch.setattr(Path, "resolve", resolve_before_the_swap)
    with pytest.raises(ImageError, match="Cannot read"):
        as_image(Path("pic.png"))


# --------------------------------------------------------------------------- structured output

_ESCAPED = KEY.replace("c", "\\u0063", 1)  # JSON for the key that is not the key as text
_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def _answering(content: str, sent: list[bytes]) -> httpx2.MockTransport:
    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(request.content)
        body = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
        return httpx2.Response(200, json=body)

    return httpx2.MockTransport(handler)


@pytest.mark.parametrize(
    "content",
    [
        '{"name": "' + _ESCAPED + '", "age": 3}',  # valid: was in .parsed and the DataFrame
        '{"name": "n", "age": 3, "' + _ESCAPED + '": 1}',  # as a property name
        '{"name": "n", "age": "' + "y" * 130 + _ESCAPED + '"}',  # quoted by the validator
        '{"name": "' + KEY + '", "age": "x"}',  # in clear, invalid: error and retry prompt
        "not json " + KEY,
    ],
)
def test_a_structured_answer_spelling_the_key_with_escapes(
    private_home: Path, content: str
) -> None:
    """The reply's text has stored keys removed before it is parsed, but JSON escapes
    (\\u0063) spell the key only once decoded: the parsed value, the mismatch error, the
    retry prompt and map's DataFrame must not carry it (the parsed value did)."""
    keys.set("openai", KEY)
    sent: list[bytes] = []
    shown: list[str] = []
    transport.set_transport(_answering(content, sent))
    try:
        try:
            c = cencori_nb.chat("hello", model="gpt-4o-mini", schema=_SCHEMA, cache=False)
            shown += [repr(c.parsed), repr(c)]
        except CencoriError as exc:
            shown += [str(exc), repr(exc.args), repr(vars(exc))]
        df = cencori_nb.map(["a"], model="gpt-4o-mini", schema=_SCHEMA, progress=False)
        shown.append(df.to_csv())
    finally:
        transport.set_transport(None)
    blob = "\n".join(shown) + b"".join(sent).decode()
    assert find(blob, {"openai": KEY}) == []
    assert KEY[:16] not in blob  # not even a piece of it


def test_a_validation_message_never_cuts_a_key_in_half(private_home: Path) -> None:
    """Messages quoting the answer are clipped to 160 characters; a key cut by the clip
    would survive the error's own scrub, which matches whole keys only."""
    from cencori_nb.errors import SchemaMismatchError
    from cencori_nb.schemas import as_schema

    keys.set("openai", KEY)
    schema = as_schema(_SCHEMA)
    for pad in range(120, 160, 3):
        text = '{"name": "n", "age": "' + "y" * pad + KEY + '"}'
        with pytest.raises(SchemaMismatchError) as info:
            schema.parse(text)
        assert KEY[:12] not in str(info.value) + repr(info.value.errors), pad


# --------------------------------------------------------------------------- the team ledger URL

_PW = "Hunter2-" + "q7" * 6


@pytest.mark.parametrize(
    "shape",
    [
        "pct_bad",  # a percent escape libpq cannot decode: it quotes the token it choked on
        "pct_ok",  # an encoded '@' and ':' in the password
        "query",  # the password as ?password=
        "both",  # in the user part and in the query
        "sslpassword",  # the client key's passphrase as a query parameter
        "option",  # an unknown option after the password
    ],
)
def test_a_ledger_url_password_in_unusual_places_is_never_shown(
    shape: str, pg_cluster: Any, pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """The driver's own messages quote parts of the URL; whatever the password's shape,
    the error, its traceback, the ledger's repr and the CLI's output never show it."""
    import traceback

    from cencori_nb import state
    from cencori_nb.cli import main
    from cencori_nb.errors import ConfigurationError, LedgerError

    base = pg_url.split("://", 1)[1].split("@", 1)[1]  # host:port/db
    user = pg_url.split("://", 1)[1].split(":", 1)[0]
    url = {
        "pct_bad": f"postgresql://{user}:{_PW}%zz@{base}",
        "pct_ok": f"postgresql://{user}:{_PW}%40x%3A@{base}",
        "query": f"postgresql://{user}@{base}?password={_PW}",
        "both": f"postgresql://{user}:{_PW}@{base}?password={_PW}x",
        "sslpassword": f"postgresql://{user}:{_PW}@{base}?sslpassword={_PW}s",
        "option": f"postgresql://{user}:{_PW}@{base}?nosuchoption={_PW}o",
    }[shape]
    monkeypatch.setenv("CENCORI_NB_LEDGER_URL", url)
    state.reset()
    texts: list[str] = []
    try:
        led = default_ledger()
        texts.append(repr(led))
        led.rows()
    except (LedgerError, ConfigurationError) as exc:
        texts += [str(exc), repr(exc), repr(vars(exc)), *traceback.format_exception(exc)]
    main(["ledger"])
    main(["usage"])
    out = capsys.readouterr()
    texts += [out.out, out.err]
    blob = "\n".join(texts)
    assert _PW not in blob, blob[blob.find(_PW) - 80 : blob.find(_PW) + 40]
    state.reset()


@pytest.mark.parametrize("where", ["description", "title", "property", "enum", "pydantic"])
def test_a_schema_holding_a_stored_key_is_not_sent_or_saved(private_home: Path, where: str) -> None:
    """The schema goes out with every request (and into job.json and each JSONL row): a
    stored key in it is refused like one in a prompt, by chat, map and submit; nothing is
    sent and no job file holds it. Found sent and saved before."""
    from pydantic import Field, create_model

    from cencori_nb.errors import KeyInPromptError

    schema: Any = {
        "description": {
            "type": "object",
            "properties": {"a": {"type": "string", "description": "use " + KEY}},
        },
        "title": {"title": KEY, "type": "object", "properties": {"a": {"type": "string"}}},
        "property": {"type": "object", "properties": {KEY: {"type": "string"}}},
        "enum": {"type": "object", "properties": {"a": {"type": "string", "enum": ["x", KEY]}}},
        "pydantic": create_model("M", a=(str, Field(description=KEY))),
    }[where]
    keys.set("openai", KEY)
    sent: list[bytes] = []
    transport.set_transport(_answering('{"a": "x"}', sent))
    try:
        with pytest.raises(KeyInPromptError, match="schema") as info:
            cencori_nb.chat("hi", model="gpt-4o-mini", schema=schema, cache=False)
        assert find(str(info.value), {"openai": KEY}) == []
        df = cencori_nb.map(["a"], model="gpt-4o-mini", schema=schema, progress=False)
        assert find(df.to_csv(), {"openai": KEY}) == []
        with pytest.raises(KeyInPromptError):
            cencori_nb.submit(["a"], model="gpt-4o-mini", schema=schema, max_tokens=5)
    finally:
        transport.set_transport(None)
    assert sent == []
    assert find(all_bytes_under(jobs_dir()), {"openai": KEY}) == []
