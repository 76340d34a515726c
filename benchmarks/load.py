"""How much `import cencori_nb` and `%load_ext cencori_nb` add to an IPython start.

Each variant runs in a fresh subprocess (cold interpreter, warm OS file cache, bytecode
cached as an installed package has it: the children write and reuse ``.pyc`` files in a
private ``PYTHONPYCACHEPREFIX``, whatever ``PYTHONDONTWRITEBYTECODE`` says here; without
that every child compiled the package's source, ~35 ms that no user pays), and the variants
are interleaved round by round so machine noise hits them alike. We report the median wall
time of each and the difference against the bare IPython start measured in the same run,
and the in-process time of the step itself (wall and CPU). Goals: under 100 ms extra (issue
5); ``%load_ext cencori_nb`` under 30 ms in-process (issue 14.6). ``%load_ext`` of an empty
extension is IPython's own share of that step (its magic machinery loads on first use).

Each child also reports whether pandas, plotly, ipywidgets, httpx2 or cryptography were
imported: none of them may load with the extension.

    .venv/bin/python benchmarks/load.py [--rounds 15] [--anchors]

``--anchors`` adds `import openai` for scale. Numbers are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the children import this checkout's package
HEAVY = ("pandas", "plotly", "ipywidgets", "httpx2", "cryptography")

_SHELL = (
    "import time\n"
    "from IPython.core.interactiveshell import InteractiveShell\n"
    "shell = InteractiveShell.instance()\n"
    "t0, c0 = time.perf_counter(), time.process_time()\n"
)
_REPORT = (
    "step_ms = (time.perf_counter() - t0) * 1000\n"
    "cpu_ms = (time.process_time() - c0) * 1000\n"
    "import json, sys\n"
    f"report = {{m: m in sys.modules for m in {HEAVY!r}}}\n"
    "print(json.dumps({'heavy': report, 'step_ms': step_ms, 'cpu_ms': cpu_ms}))\n"
)
EMPTY_EXTENSION = "cencori_bench_empty_ext"

VARIANTS: dict[str, str] = {
    "bare IPython": _SHELL + _REPORT,
    "IPython + import cencori_nb": _SHELL + "import cencori_nb\n" + _REPORT,
    "IPython + %load_ext (empty ext)": _SHELL
    + f"shell.run_line_magic('load_ext', '{EMPTY_EXTENSION}')\n"
    + _REPORT,
    "IPython + %load_ext cencori_nb": _SHELL
    + "shell.run_line_magic('load_ext', 'cencori_nb')\n"
    + _REPORT,
}
ANCHORS: dict[str, str] = {"IPython + import openai": _SHELL + "import openai\n" + _REPORT}


def run_once(code: str, env: dict[str, str]) -> tuple[float, float, float, dict[str, bool]]:
    """One fresh interpreter running ``code``: wall time (s), the in-process wall and CPU
    time of the step after the shell exists (ms), and which heavy modules were loaded."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return elapsed, report["step_ms"], report["cpu_ms"], report["heavy"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--anchors", action="store_true", help="also time `import openai`")
    args = parser.parse_args()

    variants = dict(VARIANTS)
    if args.anchors:
        variants.update(ANCHORS)
    with tempfile.TemporaryDirectory() as tmp:
        # A private IPython dir and cencori home: no history file or key store of the user's.
        ext_dir = os.path.join(tmp, "ext")
        os.mkdir(ext_dir)
        with open(os.path.join(ext_dir, EMPTY_EXTENSION + ".py"), "w") as fh:
            fh.write("def load_ipython_extension(ipython):\n    pass\n")
        env = {
            **os.environ,
            "IPYTHONDIR": os.path.join(tmp, "ipython"),
            "CENCORI_NB_HOME": os.path.join(tmp, "home"),
            "PYTHONPYCACHEPREFIX": os.path.join(tmp, "pycache"),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), ext_dir, os.environ.get("PYTHONPATH")) if p
            ),
        }
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        for code in variants.values():  # one warm-up each (bytecode, page cache)
            run_once(code, env)
        times: dict[str, list[float]] = {name: [] for name in variants}
        steps: dict[str, list[float]] = {name: [] for name in variants}
        cpus: dict[str, list[float]] = {name: [] for name in variants}
        heavy: dict[str, dict[str, bool]] = {}
        for _ in range(args.rounds):
            for name, code in variants.items():
                elapsed, step_ms, cpu_ms, loaded = run_once(code, env)
                times[name].append(elapsed)
                steps[name].append(step_ms)
                cpus[name].append(cpu_ms)
                heavy[name] = loaded

    base = statistics.median(times["bare IPython"])
    print(
        f"{args.rounds} interleaved rounds, fresh interpreter each (Python "
        f"{sys.version.split()[0]}). 'wall' is the whole process; 'step' is the time of the "
        "import / %load_ext alone (wall and CPU), measured inside the process after the "
        "shell exists."
    )
    print(
        f"{'variant':32} {'wall ms':>8} {'extra ms':>9} {'ratio':>6} {'step ms':>8} "
        f"{'step CPU':>8}  heavy modules loaded"
    )
    for name, samples in times.items():
        med = statistics.median(samples)
        loaded = ", ".join(m for m, yes in heavy[name].items() if yes) or "none"
        print(
            f"{name:32} {med * 1000:8.1f} {(med - base) * 1000:9.1f} {med / base:6.2f} "
            f"{statistics.median(steps[name]):8.1f} {statistics.median(cpus[name]):8.1f}  {loaded}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
