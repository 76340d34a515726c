"""The providers panel in a real JupyterLab, driven by headless Chromium.

The unit tests (tests/widgets/test_panel.py) prove the kernel side; this one proves the browser
side: after Save the password box in the page is empty, and a notebook saved with
"Save widget state" on holds the widget state but not the key. The save-time scrubber is
switched off here, so the panel alone is what keeps the key out of the file.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api

from tests.jupyter_procs import JupyterProcess, isolated_jupyter_env

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "panel",
            "metadata": {},
            "outputs": [],
            "source": "import cencori_nb\ncencori_nb.setup()",
        }
    ],
    "metadata": {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine")
def test_panel_save_in_jupyterlab_leaves_no_key(
    tmp_path: Path, private_home: Path, canary: str
) -> None:
    """Type a key in the panel, Save, save the notebook with widget state: no key on disk."""
    base = tmp_path / "lab"
    root = base / "root"
    root.mkdir(parents=True)
    env = isolated_jupyter_env(
        base,
        CENCORI_NB_HOME=str(private_home),
        PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
    )
    for var in ("CENCORI_NB_PASSPHRASE", "CENCORI_NB_SANDBOX", "CENCORI_NB_PROJECT"):
        env.pop(var, None)
    (Path(env["JUPYTER_CONFIG_DIR"]) / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"cencori_nb.jupyter": False}}})
    )
    settings = (
        Path(env["JUPYTERLAB_SETTINGS_DIR"])
        / "@jupyter-widgets"
        / "jupyterlab-manager"
        / "plugin.jupyterlab-settings"
    )
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"saveState": True}))  # the risky setting, on purpose
    (root / "panel.ipynb").write_text(json.dumps(NOTEBOOK))

    server = JupyterProcess.server(root, base, app="jupyterlab", env=env, name="lab")
    server.start(timeout=120)
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = browser.new_page()
                page.goto(f"{server.url}/lab/tree/panel.ipynb?token={server.token}")
                page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
                _run_first_cell(page)
                page.get_by_role("button", name="OpenAI", exact=True).click(timeout=60_000)
                key_box = page.locator("input[type=password]").first
                key_box.fill(canary)
                page.get_by_role("button", name="Save", exact=True).click()
                sync_api.expect(page.get_by_text("Saved OpenAI key")).to_be_visible(timeout=60_000)
                assert key_box.input_value() == ""
                assert page.get_by_text("…" + canary[-4:]).first.is_visible()
                page.keyboard.press("Control+s")
                saved = _wait_for_widget_state(root / "panel.ipynb")
            finally:
                browser.close()
    finally:
        server.stop()

    assert "application/vnd.jupyter.widget-state+json" in saved["metadata"]["widgets"]
    text = json.dumps(saved)
    assert "PasswordModel" in text  # the field's state was saved …
    assert canary not in text  # … without the key
    from cencori_nb import keys

    [row] = keys.status()
    assert (row.provider, row.key_hint) == ("openai", "…" + canary[-4:])


def _run_first_cell(page: Any) -> None:
    """Run the panel cell once the kernel is idle (retrying: a busy machine is slow)."""
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
    for attempt in range(3):
        page.locator(".jp-Notebook .jp-Cell .cm-content").first.click()
        page.keyboard.press("Control+Enter")  # run in place, no new cell
        try:
            page.locator(".widget-button").first.wait_for(timeout=40_000)
            return
        except sync_api.TimeoutError:
            page.screenshot(path=str(_SHOTS / f"cencori-panel-attempt-{attempt}.png"))
    raise AssertionError(f"the panel cell rendered no widget (screenshots in {_SHOTS})")


_SHOTS = Path("/tmp")


def _wait_for_widget_state(path: Path, timeout: float = 60) -> dict:
    """The notebook file once JupyterLab has saved it with widget state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            nb = json.loads(path.read_text())
        except json.JSONDecodeError:  # read while the server was writing it: look again
            time.sleep(0.2)
            continue
        if nb.get("metadata", {}).get("widgets"):
            return nb
        time.sleep(0.5)
    raise AssertionError(f"{path} was not saved with widget state in {timeout}s")
