"""Batch jobs across real processes: a kernel killed (SIGKILL) between submit and fetch,
another process picks the job up; two processes fetching at once record each row once.
Also the ``cencori-nb jobs`` command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cencori_nb.ledger import default_ledger

ROOT = Path(__file__).resolve().parents[2]


def _env(sbx) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["CENCORI_NB_SANDBOX"] = sbx.url
    return env


def _cli(sbx, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cencori_nb", *args],
        env=_env(sbx),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


SUBMIT_AND_HANG = textwrap.dedent(
    """
    import sys, time
    import cencori_nb
    job = cencori_nb.submit([f"row {i}" for i in range(25)], model="gpt-4o-mini",
                            max_tokens=20, rows_per_job=10)
    print(job.id, flush=True)
    time.sleep(3600)   # a kernel that never fetches: killed with SIGKILL by the test
    """
)


def _ok_rows() -> int:
    led = default_ledger()
    led.flush()
    return int(led.query("SELECT COUNT(*) FROM requests WHERE status = 'ok'")[0][0])


def test_killed_between_submit_and_fetch_another_process_picks_up(sbx):
    """SIGKILL the submitting process; `cencori-nb jobs wait` in another process fetches
    every row; fetching again (twice, from two processes at once) records nothing more."""
    sbx.batches.configure({"delay_s": 60})
    proc = subprocess.Popen(
        [sys.executable, "-c", SUBMIT_AND_HANG],
        env=_env(sbx),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    job_id = proc.stdout.readline().strip()
    assert job_id.startswith("job_"), proc.stderr.read() if proc.poll() is not None else job_id
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    for job in sbx.batches.jobs.values():  # the provider finishes the work meanwhile
        job.delay_s = 0
    done = _cli(sbx, "jobs", "wait", job_id, "--json", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    st = json.loads(done.stdout)
    assert (st["state"], st["fetched"], st["rows"]) == ("fetched", 25, 25)
    assert _ok_rows() == 25
    both = [
        subprocess.Popen(
            [sys.executable, "-m", "cencori_nb", "jobs", "fetch", job_id, "--json"],
            env=_env(sbx),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in both]
    assert all(p.returncode == 0 for p in both), outs
    assert [json.loads(o)["recorded_now"] for o, _ in outs] == [0, 0]
    assert _ok_rows() == 25


def test_two_processes_fetch_a_fresh_job_at_once(sbx):
    """Two processes fetch the same ended job at the same moment: every row is recorded
    exactly once (the job lock, and the ledger's client ids), and both see 20 fetched."""
    import cencori_nb

    job = cencori_nb.submit([f"p{i}" for i in range(20)], model="claude-haiku-4-5", max_tokens=10)
    for pj in sbx.batches.jobs.values():
        pj.delay_s = 0
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cencori_nb", "jobs", "fetch", job.id, "--json"],
            env=_env(sbx),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    recorded = sorted(json.loads(o)["recorded_now"] for o, _ in outs)
    assert recorded == [0, 20]
    assert _ok_rows() == 20
    led = default_ledger()
    dup = led.query("SELECT client_id, COUNT(*) FROM requests GROUP BY 1 HAVING COUNT(*) > 1")
    assert dup == []
    assert job.status(refresh=False).fetched == 20


def test_cli_list_status_fetch_cancel(sbx, tmp_path):
    """The shell face: list, status, fetch --csv, cancel; a bad id is one plain line and
    exit code 1 (no traceback)."""
    import cencori_nb

    sbx.batches.configure({"delay_s": 60})
    job = cencori_nb.submit(["a", "b"], model="gemini-2.5-flash", max_tokens=5)
    listed = _cli(sbx, "jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [j["job_id"] for j in json.loads(listed.stdout)] == [job.id]
    st = _cli(sbx, "jobs", "status", job.id, "--json")
    assert json.loads(st.stdout)["state"] == "running"
    cancelled = _cli(sbx, "jobs", "cancel", job.id)
    assert cancelled.returncode == 0 and job.id in cancelled.stdout
    csv = tmp_path / "out.csv"
    fetched = _cli(sbx, "jobs", "fetch", job.id, "--csv", str(csv))
    assert fetched.returncode == 0, fetched.stderr
    assert "cancelled" in csv.read_text()
    bad = _cli(sbx, "jobs", "status", "job_doesnotexist00")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "No batch job" in bad.stderr


@pytest.mark.parametrize("args", [["jobs"], ["jobs", "status"]])
def test_cli_usage_errors(sbx, args):
    """A missing action or job id is a usage error (exit 2)."""
    assert _cli(sbx, *args).returncode == 2
