"""Attack: after a failing call, the key must not be readable from the frames the exception
keeps alive: IPython's ``%debug`` (pdb post-mortem), ``%tb`` under ``%xmode Verbose``,
``sys.last_traceback`` / ``sys.last_value``, ``traceback`` with ``capture_locals=True``.

The endpoint is a real HTTP server on 127.0.0.1 (a loopback ``base_url`` receives the
stored key, as a local proxy would) that rejects the key (401), fails (500) or cuts its
answer short; the calls run in a real IPython ``InteractiveShell`` with cencori_nb loaded.
A leak is the key in clear, base64 or hex (tests/attacks/audit.py) in anything a debugger
hands a user from those frames: each local and everything reachable from it through
attributes and containers (``request.headers["authorization"]``), on the whole
cause/context chain.
"""

from __future__ import annotations

import io
import json
import sys
import traceback
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import pytest
from IPython.utils.capture import capture_output

from tests.attacks.audit import Audit, reachable_texts
from tests.attacks.support import LoopbackHandler

KEY = "sk-proj-debugCanary" + "Vq7Lm2Xr9Tz4Wn1Bh"


class _Failing(LoopbackHandler):
    """An OpenAI-compatible endpoint that fails every request the way ``mode`` says."""

    mode = "401"

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.request_body()
        if self.mode == "ok":  # a short stream that completes
            chunk = {"id": "x", "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
            last = {
                "id": "x",
                "model": "m",
                "choices": [],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            }
            done = {
                "id": "x",
                "model": "m",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
            data = "".join(f"data: {json.dumps(e)}\n\n" for e in (chunk, done, last))
            data += "data: [DONE]\n\n"
            self.answer(200, "text/event-stream", data.encode())
            return
        if self.mode == "cut":  # headers promise a body that never comes
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", "500")
            self.end_headers()
            self.wfile.write(b'{"id": "x", "choi')
            self.wfile.flush()
            self.connection.close()
            return
        data = b'{"error": {"message": "no", "type": "invalid_request_error"}}'
        self.answer(int(self.mode), "application/json", data)


@pytest.fixture
def failing(ipython: Any, loopback_openai: Any) -> Iterator[type[_Failing]]:
    try:
        yield loopback_openai(_Failing, KEY)
    finally:
        ipython.run_line_magic("xmode", "Context")


def _tracebacks(exc: BaseException) -> Iterator[TracebackType]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if e.__traceback__ is not None:
            yield e.__traceback__
        todo += [e.__cause__, e.__context__]


def _frames_reach(audit: Audit, exc: BaseException) -> int:
    """Every local of every frame on ``exc``'s chain, and what it reaches; the number of
    frames seen."""
    frames = 0
    for tb in _tracebacks(exc):
        for frame, _line in traceback.walk_tb(tb):
            frames += 1
            where = f"{frame.f_code.co_filename}:{frame.f_code.co_name}"
            if "/tests/" in frame.f_code.co_filename:
                continue
            for name, value in frame.f_locals.items():
                for path, text in reachable_texts(value, max_depth=6):
                    audit.add(f"frame {where} local {name}: {path}", text)
    return frames


CALLS = {
    "chat": "cencori_nb.chat('hi', model='gpt-4o-mini', cache=False, retries=0)",
    "stream": (
        "with cencori_nb.stream('hi', model='gpt-4o-mini', cache=False, retries=0) as s:\n"
        "    list(s)"
    ),
    "achat": (
        "import asyncio\n"
        "asyncio.run(cencori_nb.achat('hi', model='gpt-4o-mini', cache=False, retries=0))"
    ),
}


@pytest.mark.parametrize("mode", ["401", "500", "cut"])
@pytest.mark.parametrize("call", list(CALLS))
def test_post_mortem_frames_hold_no_key(
    ipython: Any, failing: type[_Failing], mode: str, call: str
) -> None:
    failing.mode = mode
    audit = Audit({"stored openai key": KEY})
    sys.last_value = None
    with capture_output() as cap:
        ipython.run_cell("import cencori_nb\n" + CALLS[call], store_history=False)
        exc = sys.last_value
        assert isinstance(exc, Exception), "the call must fail"
        ipython.run_line_magic("xmode", "Verbose")
        ipython.run_line_magic("tb", "")
        commands = "".join("pp locals()\nup\n" for _ in range(30)) + "q\n"
        stdin = sys.stdin
        sys.stdin = io.StringIO(commands)
        try:
            ipython.run_line_magic("debug", "")
        finally:
            sys.stdin = stdin
    audit.add("cell output", cap.stdout + cap.stderr + repr([o.data for o in cap.outputs]))
    audit.add(
        "capture_locals",
        "".join(traceback.TracebackException.from_exception(exc, capture_locals=True).format()),
    )
    assert _frames_reach(audit, exc) > 3
    assert "pp locals()" not in cap.stdout or "request" in cap.stdout  # the debugger ran
    audit.assert_clean()


@pytest.mark.parametrize("mode", ["ok", "cut"])
def test_a_finished_stream_object_holds_no_key(failing: type[_Failing], mode: str) -> None:
    """The stream object a notebook keeps after the call (``s`` below), completed or cut
    (a refused one raises before there is an object): nothing reachable from it holds the
    key (its response's request was sent)."""
    import cencori_nb

    failing.mode = mode
    audit = Audit({"stored openai key": KEY})
    s = cencori_nb.stream("hi", model="gpt-4o-mini", cache=False, retries=0)
    try:
        with s:
            assert "".join(s) == "hi"
    except cencori_nb.errors.CencoriError:
        assert mode != "ok"
    for path, text in reachable_texts(s, max_depth=10):
        audit.add(f"stream object {path}", text)
    audit.assert_clean()
