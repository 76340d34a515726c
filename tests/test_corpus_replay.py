"""Replay every recording in tests/corpus through the public API, from a real loopback server.

Each recording (see tests/corpus/README.md) is served verbatim by a small ``http.server``
on 127.0.0.1; ``cencori_nb.chat`` / ``cencori_nb.stream`` talk to it exactly as they talk to
the provider (the router's sandbox URL points at it). The expected values in each file come
from the official SDKs and the providers' docs, never from this project, so a failure here
means the adapter reads the provider differently from the provider's own client.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import cencori_nb
from cencori_nb import errors, keys

CORPUS = Path(__file__).parent / "corpus"
RECORDINGS = sorted(CORPUS.glob("*/*.json"))
# Each provider's key in its usual shape, so no key-shape check objects to it.
BYOK_KEYS = {"openai": "sk-proj-corpus" + "K" * 24 + "z9y8",
             "anthropic": "sk-ant-api03-corpus" + "K" * 24 + "z9y8",
             "google": "AIzaSyCorpus" + "K" * 24 + "z9y8",
             "mistral": "corpusMistral" + "K" * 20 + "z9y8",
             "groq": "gsk_corpus" + "K" * 24 + "z9y8",
             "xai": "xai-corpus" + "K" * 24 + "z9y8",
             "deepseek": "sk-corpusdeepseek" + "K" * 20 + "z9y8",
             "openrouter": "sk-or-v1-corpus" + "K" * 24 + "z9y8",
             "local": "local-corpus" + "K" * 20 + "z9y8"}
CENCORI_KEY = "csk_corpus_replay_" + "C" * 24 + "x7w6"
PROVIDERS = {"openai", "anthropic", "google", "mistral", "groq", "xai", "deepseek",
             "openrouter", "cencori", "local"}
# The transport sets these itself; a recorded value would contradict the body we send.
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding"}


def load(path: Path) -> dict[str, Any]:
    """One recording, checked for the fields every file must carry."""
    rec = json.loads(path.read_text(encoding="utf-8"))
    for field in ("_source", "provider", "kind", "status", "headers", "expect"):
        assert field in rec, f"{path.name}: no {field!r}"
    assert rec["provider"] in PROVIDERS, path.name
    assert rec["provider"] == path.parent.name, f"{path.name} is filed under the wrong provider"
    assert rec["kind"] in {"json", "sse", "error"}, path.name
    assert ("body" in rec) != ("body_text" in rec), f"{path.name}: exactly one of body/body_text"
    return rec


def body_bytes(rec: dict[str, Any]) -> bytes:
    if "body_text" in rec:
        return rec["body_text"].encode("utf-8")
    return json.dumps(rec["body"], ensure_ascii=False).encode("utf-8")


class ReplayServer:
    """A loopback HTTP server that answers every POST with the current recording."""

    def __init__(self) -> None:
        self.recording: dict[str, Any] | None = None
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                server.requests.append({"path": self.path, "headers": dict(self.headers),
                                        "json": json.loads(raw) if raw else None})
                rec = server.recording
                assert rec is not None
                payload = body_bytes(rec)
                self.send_response(rec["status"])
                for name, value in rec["headers"].items():
                    if name.lower() not in _HOP_HEADERS:
                        self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.send_header("connection", "close")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, rec: dict[str, Any]) -> None:
        self.recording = rec
        self.requests.clear()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def _server() -> Iterator[ReplayServer]:
    server = ReplayServer()
    yield server
    server.close()


@pytest.fixture
def replay(_server: ReplayServer, monkeypatch: pytest.MonkeyPatch) -> ReplayServer:
    """The replay server, with the router pointed at it and a key stored for every route."""
    monkeypatch.setenv("CENCORI_NB_SANDBOX", _server.url)
    for provider, key in BYOK_KEYS.items():
        keys.set(provider, key)
    keys.set_cencori_key(CENCORI_KEY)
    return _server


def call_kwargs(rec: dict[str, Any]) -> dict[str, Any]:
    """chat()/stream() arguments that route this recording to its provider's adapter."""
    req = rec.get("request", {})
    kwargs: dict[str, Any] = {"model": req.get("model"), "cache": False, "retries": 0}
    if rec["provider"] == "cencori":
        kwargs["route"] = "managed"
        if req.get("provider"):
            kwargs["provider"] = req["provider"]
    else:
        kwargs.update(route="byok", provider=rec["provider"])
    if req.get("max_tokens"):
        kwargs["max_tokens"] = req["max_tokens"]
    return kwargs


def is_stream(rec: dict[str, Any]) -> bool:
    return bool(rec.get("request", {}).get("stream")) or rec["kind"] == "sse"


def ids(paths: list[Path]) -> list[str]:
    return [f"{p.parent.name}/{p.stem}" for p in paths]


# --------------------------------------------------------------------------- the corpus itself


@pytest.mark.parametrize("path", RECORDINGS, ids=ids(RECORDINGS))
def test_recording_names_its_source(path: Path) -> None:
    """Every file says where it came from: a repository path at a commit, or a URL."""
    source = load(path)["_source"]
    assert "http" in source or (" @ " in source and "/" in source), source


# --------------------------------------------------------------------------- replay


SUCCESS = [p for p in RECORDINGS if "error" not in load(p)["expect"]]
FAILURE = [p for p in RECORDINGS if "error" in load(p)["expect"]]

_USAGE = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
          "thinking_tokens")


@pytest.mark.parametrize("path", SUCCESS, ids=ids(SUCCESS))
def test_replay_success(path: Path, replay: ReplayServer) -> None:
    """Text, model, finish reason, request id and every token count as the SDKs read them."""
    rec = load(path)
    replay.serve(rec)
    expect = rec["expect"]
    if is_stream(rec):
        with cencori_nb.stream("Replay", **call_kwargs(rec)) as s:
            deltas = list(s)
        completion = s.completion
        assert completion is not None
        assert "".join(deltas) == expect["text"]
    else:
        completion = cencori_nb.chat("Replay", **call_kwargs(rec))
    assert len(replay.requests) == 1
    assert completion.text == expect["text"]
    assert completion.estimated is False, "usage was in the recording; nothing is estimated"
    for field in _USAGE:
        if field in expect:
            assert getattr(completion, field) == expect[field], field
    if "model" in expect:
        assert completion.model == expect["model"]
    if "finish_reason" in expect:
        assert completion.finish_reason == expect["finish_reason"]
    if "request_id" in expect:
        assert completion.request_id == expect["request_id"]
    if "gateway_cost_usd" in expect:
        assert completion.gateway_cost_usd == Decimal(expect["gateway_cost_usd"])


@pytest.mark.parametrize("path", FAILURE, ids=ids(FAILURE))
def test_replay_error(path: Path, replay: ReplayServer) -> None:
    """The error class, code, retry hint and context the SDKs and docs give this response."""
    rec = load(path)
    replay.serve(rec)
    expect = rec["expect"]
    cls = getattr(errors, expect["error"])
    parts: list[str] = []
    with pytest.raises(errors.CencoriError) as info:
        if is_stream(rec):
            with cencori_nb.stream("Replay", **call_kwargs(rec)) as s:
                for delta in s:
                    parts.append(delta)
        else:
            cencori_nb.chat("Replay", **call_kwargs(rec))
    err = info.value
    assert type(err) is cls, f"{type(err).__name__}: {err}"
    assert len(replay.requests) == 1, "retries=0: sent once"
    if "code" in expect:
        assert err.code == expect["code"]
    if "retry_after" in expect:
        assert getattr(err, "retry_after", None) == expect["retry_after"]
    if "retryable" in expect:
        from cencori_nb.transport import is_retryable

        assert is_retryable(err) is expect["retryable"]
    if "request_id" in expect:
        assert err.request_id == expect["request_id"]
    if "top_up_url" in expect:
        assert err.top_up_url == expect["top_up_url"]
        assert expect["top_up_url"] in str(err)
    if "partial_text" in expect:
        assert "".join(parts) == expect["partial_text"]
    if "blames_user_key" in expect:
        names_our_key = "x7w6" in str(err) or "Cencori key" in err.message.split(".")[0]
        assert names_our_key is expect["blames_user_key"], str(err)
    for key in (*BYOK_KEYS.values(), CENCORI_KEY):
        assert key not in str(err)
