"""Every notebook, Run All in a real JupyterLab, in headless Chromium: no errors, and
charts and tables that read right (issue 13.3).

One ``cencori-nb lab`` (no key configured, so with its offline sandbox) serves copies of
``notebooks/*.ipynb``; Debian's Chromium (``/usr/bin/chromium``, never a downloaded one)
opens each in turn, runs all cells and waits for the kernel to be idle. Then, per notebook:

* no cell has an error output, a traceback on stderr, or a ``cencori-error`` box;
* every plotly chart reads right: date axes tick dates (no ``23:59:59.9996``), money axes
  tick dollars (no ``µ``), a legend with entries where the chart has several traces;
* no output is wider than the notebook (a table that needs a horizontal scroll bar);
* a screenshot of the whole notebook, ``test-results/notebook-<name>.png``, and one per
  chart, ``test-results/notebook-<name>-chart-<i>.png``, to look at.

The notebooks share one ``CENCORI_NB_HOME`` and run in order, as a newcomer would run them.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.jupyter_procs import JupyterProcess, free_port, isolated_jupyter_env

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
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
WIDTH = 1400

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="/usr/bin/chromium is not installed (./dev test and CI install "
        "Debian's chromium; run `apt-get install chromium`)",
    ),
]

_KERNEL_IDLE = """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  return !!(w && w.sessionContext && w.sessionContext.session
            && w.sessionContext.session.kernel
            && w.sessionContext.session.kernel.status === 'idle'); }"""
# Done when every code cell has run and the kernel is idle; model-level errors end it early.
_DONE = """() => {
  const nb = window.jupyterapp.shell.currentWidget;
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
_TO_TOP = """() => { const nb = window.jupyterapp.shell.currentWidget;
  nb.content.activeCellIndex = 0;
  const outer = nb.node.querySelector('.jp-WindowedPanel-outer') || nb.content.node;
  outer.scrollTop = 0; return true; }"""
# What the page shows once everything has run and rendered.
_STATE = r"""() => {
  const nb = window.jupyterapp.shell.currentWidget;
  const panel = nb.content.node;
  const text = el => (el.textContent || '').trim();
  const stderr = [...panel.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
    .map(text).filter(t => /Traceback|Error/.test(t));
  const boxes = [...panel.querySelectorAll('.cencori-error')].map(text);
  const wide = [];
  for (const o of panel.querySelectorAll('.jp-OutputArea-output')) {
    if (o.scrollWidth > o.clientWidth + 1)
      wide.push({mime: o.getAttribute('data-mime-type'), scroll: o.scrollWidth,
                 client: o.clientWidth,
                 text: text(o.querySelector('thead') || o).replace(/\s+/g, ' ').slice(0, 120)});
  }
  const charts = [...panel.querySelectorAll('.js-plotly-plot')].map(p => {
    const layout = p.layout || {}, data = p.data || [];
    const axis = name => ({
      type: (p._fullLayout && p._fullLayout[name] && p._fullLayout[name].type) || null,
      title: (((layout[name] || {}).title) || {}).text || null,
      ticks: [...p.querySelectorAll('.' + name.replace('axis', '') + 'tick text')]
               .map(t => t.textContent)});
    return {title: ((layout.title || {}).text) || '',
            xaxis: axis('xaxis'), yaxis: axis('yaxis'),
            traces: data.map(t => ({name: t.name || null, type: t.type || 'scatter',
                                    showlegend: t.showlegend})),
            showlegend: (p._fullLayout || {}).showlegend,
            legend: [...p.querySelectorAll('.legend .legendtext')].map(t => t.textContent),
            width: p.getBoundingClientRect().width};
  });
  const tables = [...panel.querySelectorAll('.jp-OutputArea-output table')].map(t => ({
    head: [...t.querySelectorAll('thead th')].map(text),
    rows: [...t.querySelectorAll('tbody tr')].map(r => [...r.children].map(text))}));
  return {stderr, boxes, wide, charts, tables,
          outer: nb.node.querySelector('.jp-WindowedPanel-outer') ?
                 nb.node.querySelector('.jp-WindowedPanel-outer').scrollHeight :
                 panel.scrollHeight};
}"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterProcess]:
    """``cencori-nb lab`` on copies of every notebook, no keys, isolated Jupyter folders."""
    tmp = tmp_path_factory.mktemp("nblab")
    root = tmp / "root"
    root.mkdir()
    for nb in NOTEBOOKS:
        shutil.copy(nb, root / nb.name)
    env = isolated_jupyter_env(
        tmp / "jupyter",
        CENCORI_NB_HOME=str(tmp / "home"),
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
    server = JupyterProcess(argv, env=env, log_path=tmp / "lab.log", port=port, token=token)
    server.start(timeout=120)
    r = server.api(
        "PUT",
        "/lab/api/settings/@jupyterlab/apputils-extension:notification",
        json={"raw": json.dumps({"fetchNews": "false"})},
    )
    assert r.status_code == 204, r.text
    # Every cell rendered, not only those in view: the checks and screenshots see them all.
    r = server.api(
        "PUT",
        "/lab/api/settings/@jupyterlab/notebook-extension:tracker",
        json={"raw": json.dumps({"windowingMode": "none"})},
    )
    assert r.status_code == 204, r.text
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(lab: JupyterProcess) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, lab: JupyterProcess) -> Iterator[Any]:
    """A fresh tab per notebook; afterwards its kernel is shut down (one at a time)."""
    pg = browser.new_page(viewport={"width": WIDTH, "height": 1000})
    pg.set_default_timeout(60_000)
    try:
        yield pg
    finally:
        pg.close()
        for session in lab.api("GET", "/api/sessions").json():
            lab.api("DELETE", f"/api/sessions/{session['id']}")


def _wait(page: Any, js: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(js)
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for: {js[:80]}")


def _run_all(page: Any, lab: JupyterProcess, name: str) -> dict[str, Any]:
    """Open ``name``, Run All, wait, let every output render; the page's state."""
    # a workspace of its own: JupyterLab does not reopen the previous notebook beside it
    page.goto(f"{lab.url}/lab/workspaces/{Path(name).stem}/tree/{name}?token={lab.token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", state="attached")
    _wait(page, _KERNEL_IDLE)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    result = _wait(page, _DONE, timeout=240)
    assert result == {"errors": []}, (name, result)
    # A viewport as tall as the notebook: every cell is rendered (no windowing), and the
    # full-page screenshot shows all of it.
    height = 0
    for _ in range(5):  # windowed cells render as they come into view
        page.evaluate(_TO_TOP)
        time.sleep(1.0)
        new = page.evaluate(_STATE)["outer"]
        if new == height:
            break
        height = new
        page.set_viewport_size({"width": WIDTH, "height": min(height + 100, 30_000)})
    time.sleep(1.0)  # plotly and tables re-lay out for the new size
    page.evaluate(_TO_TOP)
    return page.evaluate(_STATE)  # type: ignore[no-any-return]


_MONEY = re.compile(r"\$|usd|cost|spend|charge|savings|credits", re.I)


def _check_chart(chart: dict[str, Any]) -> list[str]:
    """What is wrong with one chart, as sentences (empty: it reads right)."""
    bad = []
    x, y = chart["xaxis"], chart["yaxis"]
    for ax_name, ax in (("x", x), ("y", y)):
        for t in ax["ticks"]:
            if "µ" in t or re.search(r"\d[munpk]$", t.replace("$", "")):
                bad.append(f"{ax_name} tick {t!r} has an SI suffix")
        if ax["type"] == "date" and any(re.search(r"\d\d:\d\d", t) for t in ax["ticks"]):
            bad.append(f"{ax_name} date ticks show times: {ax['ticks']}")
    money_title = (y["title"] or "") + " " + chart["title"]
    if (
        _MONEY.search(y["title"] or "")
        and y["ticks"]
        and not all(t.lstrip("−-").startswith("$") for t in y["ticks"])
    ):
        bad.append(f"money axis {money_title!r} ticks are not dollars: {y['ticks']}")
    named = [t for t in chart["traces"] if t["name"] and t["showlegend"] is not False]
    if len(named) > 1 and len(chart["legend"]) < len(named):
        bad.append(f"{len(named)} named traces but legend {chart['legend']}")
    if "legend" in chart["title"].lower() and not chart["legend"]:
        bad.append("the title promises a legend; none shown")
    return bad


@pytest.mark.parametrize("notebook", [p.name for p in NOTEBOOKS], ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_reads_right_in_the_browser(
    lab: JupyterProcess, page: Any, notebook: str
) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    RESULTS.mkdir(exist_ok=True)
    stem = Path(notebook).stem
    try:
        state = _run_all(page, lab, notebook)
    except BaseException:
        page.screenshot(path=str(RESULTS / f"notebook-{stem}-failed.png"), full_page=True)
        shutil.copy(lab.log_path, RESULTS / f"notebook-{stem}.lab.log")
        raise
    (RESULTS / f"notebook-{stem}.json").write_text(json.dumps(state, indent=1))
    page.screenshot(path=str(RESULTS / f"notebook-{stem}.png"), full_page=True)
    for i, chart in enumerate(page.locator(".jp-Notebook .js-plotly-plot").all()):
        chart.screenshot(path=str(RESULTS / f"notebook-{stem}-chart-{i}.png"))
    outputs = page.locator(".jp-Notebook .jp-Cell-outputArea").filter(
        has=page.locator(".jp-OutputArea-output")
    )
    for i, out in enumerate(outputs.all()):  # each output at full size, to read
        # (a progress bar that has finished hides itself: nothing to see there)
        box = out.bounding_box() if out.is_visible() else None
        if box and box["height"] > 0:
            try:
                out.screenshot(
                    path=str(RESULTS / f"notebook-{stem}-out-{i:02d}.png"), timeout=5_000
                )
            except PlaywrightTimeout:
                if out.is_visible():
                    raise

    assert state["stderr"] == [], state["stderr"]
    assert state["boxes"] == [], state["boxes"]
    assert state["wide"] == [], state["wide"]
    problems = {i: _check_chart(c) for i, c in enumerate(state["charts"])}
    assert not any(problems.values()), (problems, state["charts"])
    for table in state["tables"]:
        for row in table["rows"]:
            for head, cell in zip(table["head"][1:] or [], row[1:], strict=False):
                missing = cell in ("", "NaN", "<NA>")  # e.g. a row never sent
                if re.search(r"count|requests|tokens", head, re.I) and not missing:
                    assert re.fullmatch(r"[\d,]+", cell), (head, cell, table["head"])
