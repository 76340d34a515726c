"""Refresh the reference outputs nbval checks, and clear every other output.

The notebooks are kept in git without outputs, except the cells tagged
``nbval-check-output``: their stored output is what nbval compares a fresh run against (a
cell without a stored output is never compared). After editing a notebook, run::

    .venv/bin/python tools/refresh_notebook_outputs.py            # all notebooks
    .venv/bin/python tools/refresh_notebook_outputs.py 03-*.ipynb  # some

Each notebook runs offline (a temporary ``CENCORI_NB_HOME`` and a sandbox started here, never
your real keys). Review the diff before committing: a checked output is a promise.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# The notebooks folder holds only notebooks (it is what JupyterLab shows and the wheel ships).
HERE = Path(__file__).resolve().parents[1] / "notebooks"
CHECK_TAG = "nbval-check-output"


def refresh(path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
    ).execute()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if CHECK_TAG not in cell.metadata.get("tags", []):
            cell.outputs, cell.execution_count = [], None
        else:
            cell.outputs = _merge_streams(cell.outputs)
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    nbformat.write(nb, path)
    print(f"refreshed {path.name}")


def _merge_streams(outputs: list) -> list:
    """Join consecutive writes to the same stream (how a person sees them; stable diffs)."""
    merged: list = []
    for out in outputs:
        prev = merged[-1] if merged else None
        if (
            out.output_type == "stream"
            and prev is not None
            and prev.output_type == "stream"
            and prev.name == out.name
        ):
            prev.text += out.text
        else:
            merged.append(out)
    return merged


def main(argv: list[str]) -> int:
    from cencori_nb.sandbox import SandboxServer

    os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
    server = SandboxServer()
    os.environ["CENCORI_NB_SANDBOX"] = server.start_in_thread()
    try:
        for pattern in argv or ["*.ipynb"]:
            for path in sorted(HERE.glob(Path(pattern).name)):
                # A fresh home per notebook, as in the tests: each runs alone.
                with tempfile.TemporaryDirectory(prefix="cencori-nb-refresh-") as home:
                    os.environ["CENCORI_NB_HOME"] = home
                    os.environ["IPYTHONDIR"] = str(Path(home) / "ipython")
                    refresh(path)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
