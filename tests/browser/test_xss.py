"""End to end in a real browser: JupyterLab, the providers panel, a prompt, a safe save.

``cencori-nb lab`` starts JupyterLab (with no key configured, so with its offline sandbox) on
a temporary copy of ``02-provider-setup.ipynb``; headless Chromium (Debian's, at
``/usr/bin/chromium``; never a downloaded one) then does what a person would:

1. runs the whole notebook;
2. enters a canary key for OpenAI in the panel, clicks Save and sees the badge turn
   "Enabled" (the password field is emptied);
3. runs a ``%%cencori`` cell and sees the streamed sandbox answer, now on the BYOK route;
4. types the canary in the panel again without saving, and pastes it in a cell (the two ways
   a key reaches a notebook: widget state and cell source);
5. turns on "Save Widget State Automatically" (Settings menu) and saves the notebook.

The ``.ipynb`` on disk (and every other file the run wrote) must not contain the canary.
On failure a screenshot and the server log are kept under ``test-results/``.

A second test opens a notebook whose replies (the sandbox's ``SANDBOX-ECHO:``) and provider
errors (``SANDBOX-ERROR:``) carry the classic XSS payloads of tests/attacks/payloads.py
through every display path, and checks that none runs, live and after save, close and
reopen; a deliberate trusted-HTML control proves that execution would be seen. Screenshots
of every output are written to ``test-results/xss-*.png``.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from cencori_nb.jupyter.scrubber import MARKER, WIDGET_STATE_MIME
from tests.jupyter_procs import JupyterProcess, free_port, isolated_jupyter_env

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = "02-provider-setup.ipynb"
RESULTS = REPO / "test-results"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDGETS_SETTINGS = "/lab/api/settings/@jupyter-widgets/jupyterlab-manager:plugin"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="/usr/bin/chromium is not installed (./dev test and CI install "
        "Debian's chromium; run `apt-get install chromium`)",
    ),
]

# JavaScript run in the page (JupyterLab started with --LabApp.expose_app_in_browser).
_NOTEBOOK_DONE = """() => {
  const nb = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!nb || !nb.content || !nb.sessionContext.session || !nb.sessionContext.session.kernel)
    return null;
  const cells = nb.content.widgets.filter(c => c.model.type === 'code');
  const errors = [];
  for (const c of cells)
    for (const o of c.model.outputs.toJSON())
      if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue);
  if (errors.length) return {errors};
  const done = cells.every(c => c.model.executionCount !== null)
    && nb.sessionContext.session.kernel.status === 'idle';
  return done ? {errors: []} : null;
}"""
_ADD_CELL = """([source, run]) => {
  const nb = window.jupyterapp.shell.currentWidget;
  const n = nb.content.model.cells.length;
  nb.content.model.sharedModel.insertCell(n, {cell_type: 'code', source});
  nb.content.activeCellIndex = n;
  if (run) return window.jupyterapp.commands.execute('notebook:run-cell');
}"""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[JupyterProcess]:
    """``cencori-nb lab`` on a copy of notebook 02, no keys, isolated Jupyter folders."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(REPO / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    env = isolated_jupyter_env(
        tmp_path / "jupyter",
        CENCORI_NB_HOME=str(tmp_path / "home"),
        PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
    )
    for var in ("CENCORI_NB_SANDBOX", "CENCORI_NB_PASSPHRASE", "CENCORI_NB_PROJECT"):
        env.pop(var, None)
    port, token = free_port(), secrets.token_hex(16)
    argv = [
        sys.executable,
        "-m",
        "cencori_nb",
        "lab",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        "--ServerApp.open_browser=False",
        "--LabApp.expose_app_in_browser=True",
    ]
    server = JupyterProcess(argv, env=env, log_path=tmp_path / "lab.log", port=port, token=token)
    server.root = root  # type: ignore[attr-defined]
    server.start(timeout=120)
    # No "get notified about Jupyter news?" toast over the notebook (and no fetch of news).
    r = server.api(
        "PUT",
        "/lab/api/settings/@jupyterlab/apputils-extension:notification",
        json={"raw": json.dumps({"fetchNews": "false"})},
    )
    assert r.status_code == 204, r.text
    try:
        yield server
    finally:
        server.stop()


def _wait(page: object, js: str, arg: object = None, timeout: float = 120) -> object:
    """Poll ``js`` in the page until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(js, arg)  # type: ignore[attr-defined]
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for: {js[:80]}")


def _wait_for_file(path: Path, predicate: object, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace")
        if predicate(text):  # type: ignore[operator]
            return text
        time.sleep(0.25)
    raise AssertionError(f"{path.name} never reached the expected state:\n{text[:2000]}")


def test_panel_prompt_and_save_keep_the_canary_out_of_the_notebook(
    lab: JupyterProcess,
    tmp_path: Path,
    canary: str,
    request: pytest.FixtureRequest,
) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert "OFFLINE SANDBOX at http://127.0.0.1:" in lab.log()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            page.goto(f"{lab.url}/lab/tree/{NOTEBOOK}?token={lab.token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            _wait(
                page,
                "() => { const w = window.jupyterapp && window.jupyterapp.shell"
                ".currentWidget; return w && w.sessionContext && "
                "w.sessionContext.session && w.sessionContext.session.kernel && "
                "w.sessionContext.session.kernel.status === 'idle'; }",
            )

            # 1. Run the whole notebook.
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            result = _wait(page, _NOTEBOOK_DONE, timeout=180)
            assert result == {"errors": []}, result

            # 2. The panel: OpenAI is served "Managed" (the demo Cencori key) until we save
            #    our own key; then its badge says "Enabled" and the field is empty again.
            openai_row = page.locator(".widget-hbox").filter(
                has=page.get_by_role("button", name="OpenAI", exact=True)
            )
            expect(openai_row.locator(".cencori-badge")).to_have_text("Managed")
            page.get_by_role("button", name="OpenAI", exact=True).click()
            key_field = page.get_by_label("API key", exact=True)
            key_field.fill(canary)
            page.get_by_role("button", name="Save", exact=True).click()
            expect(openai_row.locator(".cencori-badge")).to_have_text("Enabled")
            expect(key_field).to_have_value("")

            # 3. A prompt: the streamed sandbox answer, on the BYOK route with that key.
            page.evaluate(
                _ADD_CELL, ["%%cencori gpt-4o-mini\nSay hello to the browser test.", True]
            )
            last_output = page.locator(".jp-Notebook .jp-Cell").last.locator(
                ".jp-OutputArea-output"
            )
            expect(last_output.first).to_contain_text(
                "sandbox reply from openai/gpt-4o-mini", timeout=60_000
            )
            expect(last_output.first).to_contain_text("BYOK")

            # 4. The two ways a key sneaks into a notebook: typed in the panel but not saved
            #    (widget state), and pasted into a cell (source).
            key_field.fill(canary)
            page.evaluate(_ADD_CELL, [f"# my key, do not commit: {canary}", False])

            # 5. Settings ▸ Save Widget State Automatically, then save the notebook.
            page.locator(".lm-MenuBar-item", has_text="Settings").click()
            page.get_by_text("Save Widget State Automatically").click()
            deadline = time.monotonic() + 30
            while (lab.api("GET", WIDGETS_SETTINGS).json().get("settings") or {}).get(
                "saveState"
            ) is not True:
                assert time.monotonic() < deadline, "saveState was not turned on"
                time.sleep(0.25)
            page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
            on_disk = _wait_for_file(
                lab.root / NOTEBOOK,  # type: ignore[attr-defined]
                lambda t: WIDGET_STATE_MIME in t and MARKER in t,
            )
        except BaseException:
            RESULTS.mkdir(exist_ok=True)
            stem = request.node.name
            page.screenshot(path=str(RESULTS / f"{stem}.png"), full_page=True)
            shutil.copy(lab.log_path, RESULTS / f"{stem}.lab.log")
            raise
        finally:
            browser.close()

    # The notebook on disk: no canary, valid, and the scrubber's marks where it was.
    assert canary not in on_disk
    nb = nbformat.reads(on_disk, as_version=4)
    nbformat.validate(nb)
    state = nb.metadata["widgets"][WIDGET_STATE_MIME]["state"]
    passwords = [
        m["state"].get("value") for m in state.values() if m.get("model_name") == "PasswordModel"
    ]
    assert MARKER in passwords, passwords
    assert nb.cells[-1].source == f"# my key, do not commit: {MARKER}"
    assert any("sandbox reply" in json.dumps(c.get("outputs", [])) for c in nb.cells)
    log = lab.log()
    assert f"from {NOTEBOOK} before saving" in log
    assert canary not in log
    # …nor anywhere else this run wrote: checkpoints, Jupyter/IPython folders, the home.
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and canary.encode() in p.read_bytes()]
    assert leaks == []


# ----------------------------------------------------------------------------- XSS
XSS_NOTEBOOK = "xss-replies.ipynb"
# Before any output renders: record every payload that runs (a dialog, or window.__xss set
# by the page or by a frame through parent.__xss).
_XSS_PROBE = """() => {
  window.__xss_log = window.__xss_log || [];
  for (const name of ['alert', 'confirm', 'prompt'])
    window[name] = (m) => { window.__xss_log.push(name + ':' + m); };
  return true;
}"""
_XSS_STATE = """() => {
  const outputs = [...document.querySelectorAll('.jp-OutputArea-output')];
  const bad = [];
  for (const o of outputs) {
    if (o.querySelector('.xss-control')) continue;      // the control, not a reply
    // the chart (plotly's renderer draws its saved PNG on reopen) and images are ours
    const mime = o.getAttribute('data-mime-type') || '';
    if (mime.includes('plotly') || mime.startsWith('image/')
        || o.classList.contains('jp-RenderedPlotly')) continue;
    for (const el of o.querySelectorAll('*')) {
      for (const a of el.getAttributeNames())
        if (a.startsWith('on')) bad.push(el.tagName + ' ' + a);
      if (['fixed', 'sticky'].includes(getComputedStyle(el).position))
        bad.push(el.tagName + ' position ' + getComputedStyle(el).position);
      for (const a of ['href', 'src', 'action', 'formaction', 'data', 'xlink:href'])
        if (el.hasAttribute(a) && !/^(https?:|mailto:)/i.test(el.getAttribute(a).trim()))
          bad.push(el.tagName + ' ' + a + '=' + el.getAttribute(a).slice(0, 40) + ' in '
                 + o.className + ' ' + el.parentElement.className);
      if (['SCRIPT', 'IFRAME', 'OBJECT', 'EMBED', 'FORM', 'BASE', 'META'].includes(el.tagName)
          && !el.closest('.jupyter-widgets'))
        bad.push(el.tagName);
    }
  }
  return {xss: window.__xss === undefined ? null : window.__xss,
          log: window.__xss_log || [], control: window.__control || 0,
          url: location.pathname, bad, outputs: outputs.length,
          // TeX typeset anywhere but inside a DataFrame's table (pandas' HTML, not ours:
          // there MathJax may typeset a reply's $…$, but runs nothing, see `bad`)
          math: [...document.querySelectorAll('.jp-OutputArea-output mjx-container')]
            .filter(m => !m.closest('table.dataframe')).map(m => m.outerHTML.slice(0, 200)),
          tableMath: document.querySelectorAll('table.dataframe mjx-container').length,
          chart: {x: [...document.querySelectorAll('.js-plotly-plot .xtick text')]
                    .map(t => t.textContent),
                  y: [...document.querySelectorAll('.js-plotly-plot .ytick text')]
                    .map(t => t.textContent),
                  legend: [...document.querySelectorAll('.js-plotly-plot .legend .legendtext')]
                    .map(t => t.textContent),
                  bars: [...document.querySelectorAll('.js-plotly-plot .bars path')]
                    .map(p => p.getBoundingClientRect().width)}};
}"""


def _xss_notebook() -> nbformat.NotebookNode:
    """The attack notebook: every display path fed the payloads by the sandbox."""
    from tests.attacks.payloads import PAYLOADS

    texts = [t for _n, t in PAYLOADS]
    cells = [
        "import json\nfrom decimal import Decimal\nimport cencori_nb\n%load_ext cencori_nb\n"
        # a demo key in the offline session's own home (as notebook 02 does)
        "cencori_nb.keys.set('openai', 'sk-' + 'sandbox-demo-xss', make_default=True,\n"
        "                    default_model='gpt-4o-mini')\n"
        f"PAYLOADS = json.loads({json.dumps(json.dumps(texts))})\n"
        "ALL = '\\n\\n'.join(PAYLOADS)",
        # a control: trusted HTML really runs in this page (so the probe can see execution)
        "from IPython.display import HTML\n"
        "HTML('<div class=\"xss-control\"><img src=x '\n"
        "     'onerror=\"window.__control = (window.__control || 0) + 1\"></div>')",
        "%%cencori gpt-4o-mini --no-cache\nSANDBOX-ECHO:{ALL}",
        "%%cencori gpt-4o-mini -f html --no-cache\nSANDBOX-ECHO:{ALL}",
        "%%cencori gpt-4o-mini -f text --no-stream --no-cache\nSANDBOX-ECHO:{ALL}",
        "%%cencori gpt-4o-mini --no-cache\nSANDBOX-ERROR:{ALL}",
        "frame = cencori_nb.map(['SANDBOX-ECHO:' + p for p in PAYLOADS]\n"
        "                       + ['SANDBOX-ERROR:' + p for p in PAYLOADS], model='gpt-4o-mini',\n"
        "                       cache=False)\n"
        "frame[['text', 'error']]",
        "from cencori_nb.batch.progress import WidgetProgress\n"
        "w = WidgetProgress(3)\n"
        "w.close(3, 1, Decimal('0.01'), note='stopped: ' + ALL)",
        "from cencori_nb.widgets import setup\npanel = setup()\n"
        "panel._say('Key test failed: ' + ALL, ok=False)\npanel",
        "reply = cencori_nb.chat('SANDBOX-ECHO:' + ALL, model='gpt-4o-mini', cache=False)\nreply",
        # issue 13.3: everything above is one day and one route; the chart must still read
        "%cencori usage",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


def _open_and_wait(page: object, lab: JupyterProcess, name: str) -> None:
    page.goto(f"{lab.url}/lab/tree/{name}?token={lab.token}")  # type: ignore[attr-defined]
    page.wait_for_selector(".jp-Notebook .jp-Cell")  # type: ignore[attr-defined]
    page.evaluate(_XSS_PROBE)  # type: ignore[attr-defined]
    _wait(
        page,
        "() => { const w = window.jupyterapp && window.jupyterapp.shell"
        ".currentWidget; return w && w.sessionContext && w.sessionContext.session "
        "&& w.sessionContext.session.kernel && "
        "w.sessionContext.session.kernel.status === 'idle'; }",
    )


def _poke(page: Any) -> None:
    """What a reader does: move over every output, scroll, focus (hover/focus payloads)."""
    for out in page.locator(".jp-OutputArea-output").all():
        out.scroll_into_view_if_needed()
        out.hover()
    for x, y in ((10, 10), (700, 500), (1390, 990)):
        page.mouse.move(x, y)
    page.keyboard.press("Tab")
    time.sleep(1.5)  # onerror/onload/animations/meta refresh have had their chance


def _screenshots(page: Any, stem: str) -> None:
    """One picture per output (JupyterLab scrolls inside the notebook, so a full-page
    screenshot shows only the viewport), under test-results/, to look at."""
    outputs = page.locator(".jp-Cell-outputArea").filter(has=page.locator(".jp-OutputArea-output"))
    for i, out in enumerate(outputs.all()):
        if out.is_visible():
            out.scroll_into_view_if_needed()
            out.screenshot(path=str(RESULTS / f"{stem}-{i:02d}.png"), timeout=10_000)


def test_hostile_replies_run_nothing_live_or_after_reopen(
    lab: JupyterProcess, request: pytest.FixtureRequest
) -> None:
    """A reply carrying the classic XSS payloads (tests/attacks/payloads.py), shown through
    every display path, runs none of them: live, and after save, close and reopen (when
    JupyterLab trusts the saved outputs). A control output proves execution is seen."""
    from playwright.sync_api import sync_playwright

    nbformat.write(_xss_notebook(), lab.root / XSS_NOTEBOOK)  # type: ignore[attr-defined]
    RESULTS.mkdir(exist_ok=True)
    dialogs: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        try:
            _open_and_wait(page, lab, XSS_NOTEBOOK)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            result = _wait(page, _NOTEBOOK_DONE, timeout=180)
            assert result == {"errors": []}, result
            _poke(page)
            live = page.evaluate(_XSS_STATE)
            _screenshots(page, "xss-live")

            page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
            _wait_for_file(
                lab.root / XSS_NOTEBOOK,  # type: ignore[attr-defined]
                lambda t: "frame[['text', 'error']]" in t and "cencori-reply" in t,
            )
            page.evaluate("() => window.jupyterapp.commands.execute('application:close-all')")
            page.goto("about:blank")
            _open_and_wait(page, lab, XSS_NOTEBOOK)
            page.wait_for_selector(".cencori-reply")
            _poke(page)
            reopened = page.evaluate(_XSS_STATE)
            _screenshots(page, "xss-reopened")
        except BaseException:
            page.screenshot(path=str(RESULTS / f"{request.node.name}.png"), full_page=True)
            shutil.copy(lab.log_path, RESULTS / f"{request.node.name}.lab.log")
            raise
        finally:
            browser.close()

    # The spend chart of one day, one route (every request above): dates, dollars, legend.
    assert live["chart"]["x"] and all(":" not in t for t in live["chart"]["x"]), live["chart"]
    assert all(t.startswith("$") and "µ" not in t for t in live["chart"]["y"]), live["chart"]
    assert live["chart"]["legend"] == ["BYOK (your provider account)"], live["chart"]
    assert live["chart"]["bars"] and min(live["chart"]["bars"]) > 100, live["chart"]  # a bar
    for state in (live, reopened):
        assert state["control"] >= 1, state  # trusted HTML does run here…
        assert state["xss"] is None and state["log"] == [], state  # …and no payload did
        assert state["bad"] == [] and state["math"] == [], state
        assert state["url"].endswith(XSS_NOTEBOOK), state  # no navigation
        assert state["outputs"] >= 11, state
    assert dialogs == []
    saved = (lab.root / XSS_NOTEBOOK).read_text()  # type: ignore[attr-defined]
    assert "window.__xss" in saved  # the replies were saved, as text
