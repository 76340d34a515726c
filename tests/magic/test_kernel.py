"""The magic in a real ipykernel: what a notebook front end actually receives.

A kernel is started with jupyter_client and sent cells; we read its IOPub messages. This
checks what the InteractiveShell tests cannot: a stream is ONE display (one
``display_data`` with a transient ``display_id``, then ``update_display_data`` for it), and
``-f code`` asks the front end for a new cell (the ``set_next_input`` payload).
"""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jupyter_client
import pytest

pytestmark = pytest.mark.slow

OPENAI_KEY = "sk-test-kernel-000000000Kk42"


@pytest.fixture
def kernel(private_home: Path, sandbox_env: Any, tmp_path: Path) -> Iterator[Any]:
    """A python3 kernel sharing this test's home and sandbox, with the extension loaded."""
    from cencori_nb import keys

    keys.set("openai", OPENAI_KEY, default_model="gpt-4o-mini", make_default=True)
    env = {**os.environ, "IPYTHONDIR": str(tmp_path / "ipython")}
    km, kc = jupyter_client.manager.start_new_kernel(
        kernel_name="python3", env=env, startup_timeout=120
    )
    try:
        execute(kc, "%load_ext cencori_nb")
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def execute(kc: Any, code: str, timeout: float = 60) -> tuple[list[dict[str, Any]], dict]:
    """Run ``code``; return its IOPub messages (until idle) and the execute_reply."""
    msg_id = kc.execute(code)
    messages = []
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no idle status for {code!r} in {timeout}s") from None
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
        messages.append(msg)
    while True:  # skip replies to earlier requests (e.g. the startup kernel_info)
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return messages, reply


def test_stream_is_one_display_updated_in_place(kernel: Any, sandbox: Any) -> None:
    """First a display_data with a display_id, then only updates of that id; no errors."""
    messages, reply = execute(kernel, "%config CencoriMagics.stream_throttle_ms = 0\n")
    messages, reply = execute(kernel, "%%cencori --no-cache -o reply\nStream into one display")
    assert reply["content"]["status"] == "ok"
    kinds = [m["msg_type"] for m in messages if m["msg_type"] != "status"]
    assert "error" not in kinds
    displays = [m for m in messages if m["msg_type"] == "display_data"]
    updates = [m for m in messages if m["msg_type"] == "update_display_data"]
    assert len(displays) == 1
    display_id = displays[0]["content"]["transient"]["display_id"]
    assert updates and {u["content"]["transient"]["display_id"] for u in updates} == {display_id}
    final = updates[-1]["content"]["data"]
    assert "text/markdown" not in final  # replies are sanitised HTML (safe_html)
    assert "[sandbox reply from openai/gpt-4o-mini]" in final["text/html"]
    assert "BYOK" in final["text/plain"]
    assert sandbox.stats["streams"] == 1
    # throttle 0: one redraw per delta (sandbox: one delta per output token) + the final one
    _m, reply = execute(kernel, "print(reply.output_tokens)")
    tokens = int(next(m for m in _m if m["msg_type"] == "stream")["content"]["text"])
    assert len(updates) == tokens + 1


def test_code_format_asks_for_a_new_cell(kernel: Any) -> None:
    messages, reply = execute(kernel, "%%cencori -f code --no-stream --no-cache\nWrite code")
    payloads = reply["content"].get("payload", [])
    [next_input] = [p for p in payloads if p["source"] == "set_next_input"]
    assert next_input["text"].startswith("[sandbox reply from")
    assert next_input["replace"] is False


def test_error_is_one_line_without_traceback(kernel: Any) -> None:
    """An unconfigured provider: status ok, no 'error' message, one cencori: line."""
    messages, reply = execute(kernel, "%%cencori claude-haiku-4-5 --no-stream\nhi")
    assert reply["content"]["status"] == "ok"
    assert not [m for m in messages if m["msg_type"] == "error"]
    shown = [
        m["content"]["data"]["text/plain"]
        for m in messages
        if m["msg_type"] in ("display_data", "update_display_data")
    ]
    assert len(shown) == 1 and shown[0].startswith("cencori: ") and "not configured" in shown[0]
    assert OPENAI_KEY not in str(messages)
