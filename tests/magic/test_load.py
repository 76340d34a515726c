"""Loading the extension is cheap: no heavy module is imported by `%load_ext cencori_nb`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("pandas", "plotly", "ipywidgets", "httpx2", "cryptography")

_CHILD = f"""
import json, sys
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
before = {{m: m in sys.modules for m in {HEAVY!r}}}
shell.run_line_magic("load_ext", "cencori_nb")
after = {{m: m in sys.modules for m in {HEAVY!r}}}
print(json.dumps({{"before": before, "after": after,
                  "line": shell.find_line_magic("cencori") is not None,
                  "cell": shell.find_cell_magic("cencori") is not None}}))
"""


def test_load_ext_imports_no_heavy_module(tmp_path: Path) -> None:
    """In a fresh interpreter, %load_ext registers both magics and loads none of HEAVY."""
    env = {
        "PATH": "/usr/bin:/bin",
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "CENCORI_NB_HOME": str(tmp_path / "home"),
    }
    out = subprocess.run(
        [sys.executable, "-c", _CHILD],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["line"] and report["cell"]
    loaded = [m for m, yes in report["after"].items() if yes and not report["before"][m]]
    assert loaded == [], f"%load_ext cencori_nb imported {loaded}"


def test_magic_module_imports_no_heavy_module_or_service(tmp_path: Path) -> None:
    """Importing cencori_nb.magic pulls in neither heavy modules nor the client/keystore."""
    code = (
        "import json, sys; import cencori_nb.magic; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{HEAVY!r} or m in ('cencori_nb.client', 'cencori_nb.keys', "
        "'cencori_nb.keystore', 'cencori_nb.router', 'cencori_nb.widgets.panel'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "CENCORI_NB_HOME": str(tmp_path)},
    )
    assert json.loads(out.stdout) == []


_ACCESSOR_CHILD = """
import json, sys
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "cencori_nb")
before = "cencori_nb.batch" in sys.modules
shell.run_cell("import pandas as pd")
shell.run_cell("ok = hasattr(pd.DataFrame, 'cencori') and hasattr(pd.Series, 'cencori')")
print(json.dumps({"before": before, "ok": shell.user_ns["ok"]}))
"""


def test_accessor_appears_once_pandas_is_imported(tmp_path: Path) -> None:
    """After %load_ext, importing pandas in a cell makes df.cencori available, not before."""
    env = {
        "PATH": "/usr/bin:/bin",
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "CENCORI_NB_HOME": str(tmp_path / "home"),
    }
    out = subprocess.run(
        [sys.executable, "-c", _ACCESSOR_CHILD],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"before": False, "ok": True}
