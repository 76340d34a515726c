"""Notebook 06 with a real kernel restart where it says "Restart the kernel here": the cells
after it pick the job up from the home alone (nbval runs the notebook without restarting)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.jupyter_procs import isolated_jupyter_env

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "06-batch-jobs-half-price.ipynb"

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]


def _run(kc, code: str) -> list[str]:
    """Execute ``code``; return its stream and result texts; fail on an error."""
    texts: list[str] = []
    errors: list[str] = []

    def hook(msg: dict) -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            texts.append(content["text"])
        elif kind in ("execute_result", "display_data"):
            texts.append(content["data"].get("text/plain", ""))
        elif kind == "error":
            errors.append("\n".join(content["traceback"]))

    reply = kc.execute_interactive(code, timeout=300, output_hook=hook)
    assert reply["content"]["status"] == "ok" and not errors, (code, errors)
    return texts


def test_notebook06_survives_a_kernel_restart(sandbox, tmp_path, monkeypatch):
    from jupyter_client.manager import KernelManager

    sandbox.batches.configure({"delay_s": 1})
    env = isolated_jupyter_env(
        tmp_path / "jupyter",
        CENCORI_NB_HOME=str(tmp_path / "home"),
        CENCORI_NB_SANDBOX=sandbox.url,
        PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
    )
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    restart_at = next(
        i for i, c in enumerate(cells) if "Restart the kernel here" in "".join(c["source"])
    )
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(NOTEBOOK.parent))
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        before = [c for c in cells[:restart_at] if c["cell_type"] == "code"]
        for cell in before:
            _run(kc, "".join(cell["source"]))
        assert _run(kc, "print(job.id)")  # the job exists in the first kernel
        kc.stop_channels()
        km.restart_kernel(now=True)
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        assert "NameError" in "".join(
            _run(kc, "try:\n    job\nexcept NameError as e:\n    print('NameError')")
        )
        outputs = []
        for cell in cells[restart_at:]:
            if cell["cell_type"] == "code":
                outputs.append("".join(_run(kc, "".join(cell["source"]))))
        text = "\n".join(outputs)
        assert "10000 rows; 0 errors" in text
        assert "saved $" in text and "recorded now: 0" in text
    finally:
        km.shutdown_kernel(now=True)
    from cencori_nb.ledger import Ledger

    led = Ledger(tmp_path / "home" / "ledger.sqlite")
    try:
        ok = led.query("SELECT COUNT(*) FROM requests WHERE status = 'ok'")[0][0]
    finally:
        led.close()
    assert ok == 10_000  # every row recorded once, across the restart
