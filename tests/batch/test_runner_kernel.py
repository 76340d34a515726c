"""map() in a real ipykernel: inside its running event loop, with the progress widget, and
interrupted with the kernel's own interrupt (SIGINT), as the ■ button does.

The kernel shares this test's home and a private sandbox with latency, so requests can be
counted where they arrive.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

jupyter_client = pytest.importorskip("jupyter_client")

pytestmark = pytest.mark.slow

OPENAI_KEY = "sk-test-batch-kernel-0000000Bk77"


@pytest.fixture
def slow_sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from cencori_nb.sandbox.server import SandboxServer

    server = SandboxServer(latency_ms=200, seed=4)
    monkeypatch.setenv("CENCORI_NB_SANDBOX", server.start_in_thread())
    yield server
    server.stop()


@pytest.fixture
def kernel(private_home: Path, slow_sandbox: Any, tmp_path: Path) -> Iterator[Any]:
    from cencori_nb import keys

    keys.set("openai", OPENAI_KEY, default_model="gpt-4o-mini", make_default=True)
    env = {**os.environ, "IPYTHONDIR": str(tmp_path / "ipython")}
    km, kc = jupyter_client.manager.start_new_kernel(
        kernel_name="python3", env=env, startup_timeout=120
    )
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def send(kc: Any, code: str) -> str:
    return str(kc.execute(code))


def collect(kc: Any, msg_id: str, timeout: float = 60) -> tuple[list[dict[str, Any]], dict]:
    """IOPub messages of ``msg_id`` until idle, and its execute_reply."""
    messages = []
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no idle status in {timeout}s") from None
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
        messages.append(msg)
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return messages, reply


def run(kc: Any, code: str) -> tuple[list[dict[str, Any]], dict]:
    return collect(kc, send(kc, code))


def stdout(messages: list[dict[str, Any]]) -> str:
    return "".join(
        m["content"]["text"]
        for m in messages
        if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
    )


def test_map_in_kernel_shows_a_widget_and_survives_an_interrupt(
    kernel: Any, slow_sandbox: Any, private_home: Path
) -> None:
    """Inside the kernel's running loop map() works and displays an IntProgress widget; the
    kernel interrupt stops it with BatchInterrupted, `.partial` keeps the finished rows, and
    running the cell again sends only the missing rows (counted at the sandbox)."""
    km, kc = kernel
    _m, reply = run(
        kc, "import cencori_nb, pandas as pd\nprompts = [f'kernel row {i}' for i in range(16)]"
    )
    assert reply["content"]["status"] == "ok"

    cell = "out = cencori_nb.map(prompts, model='gpt-4o-mini', temperature=0.5, concurrency=2)"
    msg_id = send(kc, cell)
    deadline = time.monotonic() + 60
    while True:  # interrupt once four rows are finished (checkpoint lines)
        done = sum(
            len(p.read_text().splitlines()) for p in (private_home / "batches").glob("*.jsonl")
        )
        if done >= 4:
            break
        assert time.monotonic() < deadline, "the batch made no progress"
        time.sleep(0.02)
    km.interrupt_kernel()
    messages, reply = collect(kc, msg_id)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "BatchInterrupted"
    assert "run the same call again to send only the" in reply["content"]["evalue"]
    widgets = [
        m
        for m in messages
        if m["msg_type"] == "comm_open"
        and m["content"]["data"]["state"].get("_model_name") == "IntProgressModel"
    ]
    assert len(widgets) == 1
    updates = [
        m
        for m in messages
        if m["msg_type"] == "comm_msg" and m["content"]["data"].get("method") == "update"
    ]
    assert updates  # the bar moved, from the batch's thread

    messages, reply = run(
        kc,
        "import sys\npartial = sys.last_value.partial\n"
        "print(int(partial.error.isna().sum()), "
        "int((partial.error == 'interrupted').sum()))",
    )
    finished, interrupted = map(int, stdout(messages).split())
    assert finished >= 4 and finished + interrupted == 16
    time.sleep(0.5)  # requests cut off in flight reach the server
    before = slow_sandbox.stats["requests"]

    messages, reply = run(
        kc,
        cell.replace("concurrency=2", "concurrency=8, progress=False")
        + "\nprint(int(out.error.isna().sum()), int(out.cached.sum()))",
    )
    assert reply["content"]["status"] == "ok"
    ok, cached = map(int, stdout(messages).split())
    assert (ok, cached) == (16, finished)
    assert slow_sandbox.stats["requests"] - before == 16 - finished


def test_ctrl_c_in_a_script_stops_with_the_partial_result(
    private_home: Path, slow_sandbox: Any
) -> None:
    """A plain script: SIGINT during map() ends it with BatchInterrupted (the script stops),
    the stderr progress line says it was interrupted, `.partial` has the finished rows."""
    import signal
    import subprocess
    import sys

    from cencori_nb import keys

    keys.set("openai", OPENAI_KEY, default_model="gpt-4o-mini", make_default=True)
    script = (
        "import cencori_nb\n"
        "from cencori_nb.batch import BatchInterrupted\n"
        "try:\n"
        "    cencori_nb.map([f'script row {i}' for i in range(40)], model='gpt-4o-mini',\n"
        "                   temperature=0.5, concurrency=2)\n"
        "except BatchInterrupted as e:\n"
        "    print('partial', int(e.partial.error.isna().sum()), flush=True)\n"
        "    raise\n"
        "print('not reached')\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    deadline = time.monotonic() + 60
    while (
        sum(len(p.read_text().splitlines()) for p in (private_home / "batches").glob("*.jsonl")) < 2
    ):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "not reached" not in out
    partial = int(out.split()[1])
    assert 2 <= partial < 40
    assert "BatchInterrupted: Batch interrupted:" in err
    assert "interrupted: run the same call again to send only the missing rows" in err
