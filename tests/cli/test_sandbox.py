"""``cencori-nb sandbox``: flags, the loopback guard, and a real run in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx2
import pytest

from cencori_nb.cli import main


def test_refuses_non_loopback_host(capsys):
    """A public bind needs --allow-remote; the message says how."""
    assert main(["sandbox", "--host", "0.0.0.0"]) == 1  # noqa: S104 (the case under test)
    err = capsys.readouterr().err
    assert "Refusing to listen on 0.0.0.0" in err and "--allow-remote" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--faults", "boom=0.5"], "unknown fault 'boom'"),
        (["--faults", "429=0.8,500=0.8"], "more than 1"),
        (["--rpm", "0"], "--rpm must be at least 1"),
        (["--latency-ms", "-5"], "cannot be negative"),
    ],
)
def test_bad_flags_are_plain_errors(capsys, args, words):
    assert main(["sandbox", *args]) == 1
    assert words in capsys.readouterr().err


def test_bad_balance_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sandbox", "--balance", "lots"])
    assert info.value.code == 2


def test_port_in_use_is_a_plain_error(capsys, sandbox):
    port = sandbox.url.rsplit(":", 1)[1]
    assert main(["sandbox", "--port", port]) == 1
    assert "--port" in capsys.readouterr().err


def test_serves_until_ctrl_c(tmp_path):
    """The command prints the URL and export line, answers, and exits 0 on SIGINT."""
    env = {**os.environ, "CENCORI_NB_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cencori_nb",
            "sandbox",
            "--latency-ms",
            "1",
            "--rpm",
            "100",
            "--balance",
            "7.5",
            "--seed",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        first = proc.stdout.readline()
        export = proc.stdout.readline().strip()
        assert first.startswith("cencori-nb sandbox listening on http://127.0.0.1:")
        assert "wallet $7.5" in first
        assert export.startswith("export CENCORI_NB_SANDBOX=http://127.0.0.1:")
        url = export.split("=", 1)[1]
        r = httpx2.post(
            url + "/api/ai/chat",
            headers={"CENCORI_API_KEY": "csk_cli_test_key"},
            json={"messages": [{"role": "user", "content": "hello from the CLI"}]},
        )
        assert r.status_code == 200 and "hello from the CLI" in r.json()["content"]
        # Cencori sends X-RateLimit-* only on a 429; the sandbox states its pace in stats
        assert "X-RateLimit-Limit" not in r.headers
        assert httpx2.get(url + "/_sandbox/stats").json()["rpm"] == 100
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "stopped" in err and "Traceback" not in err
