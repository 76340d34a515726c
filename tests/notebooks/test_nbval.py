"""Every notebook in ``notebooks/`` runs top to bottom under nbval, offline.

Each notebook gets its own pytest process (``--nbval-lax``: outputs are compared only in
cells tagged ``nbval-check-output``, against the reference output stored in the notebook;
cells with varying output are tagged ``nbval-ignore-output``; an exception in any cell
fails), a fresh ``CENCORI_NB_HOME`` and a sandbox started here, so the kernels never see the
real home or a real provider. ``tools/refresh_notebook_outputs.py`` rewrites the references.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.jupyter_procs import isolated_jupyter_env

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]
CHECK_TAG = "nbval-check-output"


def _nbval(notebook: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one notebook under nbval in its own pytest process."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "--nbval-current-env",
            "--nbval-cell-timeout=120",
            "-p",
            "no:cacheprovider",
            "-q",
            "-o",
            "addopts=",
            str(notebook),
        ],
        cwd=notebook.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def notebook_sandbox() -> Iterator[str]:
    """A sandbox of our own (the shared one's wallet and counters are other tests')."""
    from cencori_nb.sandbox import SandboxServer

    server = SandboxServer()
    url = server.start_in_thread()
    yield url
    server.stop()


def test_notebooks_are_found() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert {
        "01-quickstart.ipynb",
        "02-provider-setup.ipynb",
        "03-byok-vs-managed-cost.ipynb",
    } <= names


def test_notebooks_folder_holds_only_notebooks() -> None:
    """It is what JupyterLab shows a newcomer and what the wheel ships: no test helpers."""
    others = [
        p.name
        for p in (REPO / "notebooks").iterdir()
        if p.suffix != ".ipynb" and p.name != ".ipynb_checkpoints"
    ]
    assert others == []


def test_quickstart_points_at_every_other_notebook() -> None:
    """Notebook 01's "Next" section lists each of the other notebooks."""
    nb = json.loads((REPO / "notebooks" / "01-quickstart.ipynb").read_text())
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    nxt = text[text.lower().rfind("next") :]
    for p in NOTEBOOKS:
        if not p.name.startswith("01-"):
            assert p.stem in nxt or p.name in nxt, p.name


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_clean(notebook: Path) -> None:
    """Only nbval's reference outputs (cells tagged nbval-check-output) are kept in git:
    plain text and tables, no widget state, nothing key-shaped."""
    from cencori_nb.jupyter.scrubber import scrub_text

    text = notebook.read_text()
    assert scrub_text(text) == (text, 0)
    nb = json.loads(text)
    assert "widgets" not in nb["metadata"]
    checked = 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        tags = cell["metadata"].get("tags", [])
        if CHECK_TAG in tags:
            checked += 1
            assert cell["outputs"] and cell["execution_count"], cell["source"]
            for out in cell["outputs"]:
                assert out["output_type"] in ("stream", "execute_result"), cell["source"]
                assert set(out.get("data", {})) <= {"text/plain", "text/html"}
        else:
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"]
    assert checked >= 1, "check at least one stable output per notebook"


def test_nbval_wiring_catches_a_changed_output(tmp_path: Path) -> None:
    """The flags used below do compare tagged cells: a wrong reference output fails."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(
        "print(1 + 1)",
        execution_count=1,
        outputs=[nbformat.v4.new_output("stream", name="stdout", text="3\n")],
    )
    cell.metadata["tags"] = [CHECK_TAG]
    nb.cells = [cell, nbformat.v4.new_code_cell("print('not checked')")]
    path = tmp_path / "wrong.ipynb"
    nbformat.write(nb, path)
    proc = _nbval(path, isolated_jupyter_env(tmp_path / "jupyter"))
    assert proc.returncode == 1
    assert "Cell outputs differ" in proc.stdout and "1 failed, 1 passed" in proc.stdout


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_under_nbval(notebook: Path, notebook_sandbox: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = isolated_jupyter_env(
        tmp_path / "jupyter",
        CENCORI_NB_HOME=str(home),
        CENCORI_NB_SANDBOX=notebook_sandbox,
        PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
    )
    for var in ("CENCORI_NB_PASSPHRASE", "CENCORI_NB_PROJECT"):
        env.pop(var, None)
    proc = _nbval(notebook, env)
    report = proc.stdout[-8000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, report
    assert " passed" in proc.stdout and "failed" not in proc.stdout, report
    # The kernels used the private home (the key store and ledger were created there).
    assert (home / "ledger.sqlite").is_file() or any(home.iterdir()), report
