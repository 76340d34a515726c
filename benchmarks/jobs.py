"""Provider batch jobs (issue 16): submit and fetch at scale against the sandbox.

Run::

    .venv/bin/python benchmarks/jobs.py                       # 100,000 rows (~1-2 minutes)
    .venv/bin/python benchmarks/jobs.py --fetch-rows 1000000  # + peak memory on 1M rows

The sandbox runs in its own process (``python -m cencori_nb sandbox --batch-delay 0``);
each measurement runs in a fresh child process, so its peak RSS (``ru_maxrss``) is the
figure for that step alone, with the interpreter, pandas and the toolkit loaded (the
``baseline`` column: the same child doing nothing). Everything lives in a throwaway
``CENCORI_NB_HOME``.

(a) ``submit``: ``cencori_nb.submit`` of ``--rows`` prompts to OpenAI's Batch API (split in
    jobs of 50,000 rows): seconds and peak memory.
(b) ``fetch``: ``job.fetch()`` of those rows once the sandbox has finished them: every row
    parsed, settled at the batch price and written to the ledger and ``results.jsonl``:
    rows per second and peak memory.
(c) with ``--fetch-rows N``: the same fetch on a job of N rows (the goal: a million rows
    fetched in under 500 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(step: str, arg: str) -> dict[str, Any]:
    """One measured step in this (fresh) process."""
    import pandas  # noqa: F401

    import cencori_nb  # the toolkit, pandas and the HTTP stack, as a kernel would have them
    from cencori_nb.jobs import load_job

    if step == "baseline":
        return {"peak_mb": _peak_mb()}
    if step == "submit":
        n = int(arg)
        prompts = [f"Classify the sentiment of review number {i}: it was fine." for i in range(n)]
        t0 = time.perf_counter()
        job = cencori_nb.submit(prompts, model="gpt-4o-mini", max_tokens=16)
        seconds = time.perf_counter() - t0
        return {
            "job_id": job.id,
            "rows": n,
            "seconds": seconds,
            "parts": len(job.provider_job_ids),
            "peak_mb": _peak_mb(),
        }
    if step == "fetch":
        job = load_job(arg)
        t0 = time.perf_counter()
        while job.status().state == "running":  # the sandbox is still answering rows
            time.sleep(0.5)
        waited = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = job.fetch()
        seconds = time.perf_counter() - t0
        st = job.status(refresh=False)
        return {
            "rows": rows,
            "seconds": seconds,
            "rows_per_s": rows / seconds if seconds else None,
            "waited_for_provider_s": waited,
            "fetched": st.fetched,
            "peak_mb": _peak_mb(),
        }
    raise SystemExit(f"unknown step {step}")


def _run_child(env: dict[str, str], step: str, arg: str = "") -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", step, arg],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    if out.returncode != 0:
        raise SystemExit(f"{step} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--fetch-rows", type=int, default=0, help="also fetch a job this big")
    parser.add_argument("--child", nargs=2, metavar=("STEP", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return

    home = tempfile.mkdtemp(prefix="cencori-bench-jobs-")
    env = dict(os.environ)
    env.update(
        CENCORI_NB_HOME=os.path.join(home, "home"),
        PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    for name in ("CENCORI_NB_PASSPHRASE", "CENCORI_NB_PROJECT", "OPENAI_API_KEY"):
        env.pop(name, None)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cencori_nb", "sandbox", "--port", str(port), "--batch-delay", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()
        env["CENCORI_NB_SANDBOX"] = f"http://127.0.0.1:{port}"
        subprocess.run(
            [sys.executable, "-m", "cencori_nb", "keys", "set", "openai"],
            input="sk-sandbox-demo-openai\n",
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        base = _run_child(env, "baseline")
        print(f"baseline (interpreter + cencori_nb + pandas): peak {base['peak_mb']:.0f} MB")
        sub = _run_child(env, "submit", str(args.rows))
        print(
            f"(a) submit {sub['rows']:,} rows ({sub['parts']} provider jobs): "
            f"{sub['seconds']:.1f} s, peak {sub['peak_mb']:.0f} MB"
        )
        fet = _run_child(env, "fetch", sub["job_id"])
        print(
            f"(b) fetch {fet['rows']:,} rows: {fet['seconds']:.1f} s, "
            f"{fet['rows_per_s']:,.0f} rows/s, peak {fet['peak_mb']:.0f} MB "
            f"(waited {fet['waited_for_provider_s']:.0f} s for the sandbox to finish)"
        )
        if args.fetch_rows:
            big = _run_child(env, "submit", str(args.fetch_rows))
            print(
                f"(c) submit {big['rows']:,} rows: {big['seconds']:.1f} s, "
                f"peak {big['peak_mb']:.0f} MB"
            )
            fbig = _run_child(env, "fetch", big["job_id"])
            print(
                f"(c) fetch {fbig['rows']:,} rows: {fbig['seconds']:.1f} s, "
                f"{fbig['rows_per_s']:,.0f} rows/s, peak {fbig['peak_mb']:.0f} MB"
            )
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
