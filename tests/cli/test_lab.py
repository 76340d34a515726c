"""`cencori-nb lab`: argument pass-through, the offline decision, and a real start."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from cencori_nb.cli import build_parser, main
from cencori_nb.cli import lab as lab_cli
from tests.jupyter_procs import JupyterProcess, free_port, isolated_jupyter_env, server_args

REPO = Path(__file__).resolve().parents[2]


def _plan(args: list[str] | None = None, **kw: object) -> lab_cli.LabPlan:
    defaults: dict[str, object] = {
        "environ": {},
        "is_root": False,
        "has_display": True,
        "scrubber_config": True,
    }
    defaults.update(kw)
    return lab_cli.plan(args or [], **defaults)  # type: ignore[arg-type]


def test_jupyter_arguments_pass_through_in_order() -> None:
    """Options this command does not know go to JupyterLab, even first ones."""
    ns = build_parser().parse_args(
        ["lab", "--port", "9999", "--sandbox", "--ServerApp.token=abc", "extra.ipynb"]
    )
    assert ns.sandbox is True
    assert ns.jupyter_args == ["--port", "9999", "--ServerApp.token=abc", "extra.ipynb"]
    assert build_parser().parse_args(["lab"]).jupyter_args == []


def test_no_keys_means_offline_sandbox_with_its_own_home(private_home: Path) -> None:
    plan = _plan()
    assert plan.start_sandbox
    # the kernels use the sandbox home; the scrubber also reads the real one (issue 10.4)
    assert plan.env_changes == {
        "CENCORI_NB_HOME": str(private_home / "sandbox"),
        "CENCORI_NB_SCRUB_HOMES": str(private_home),
    }
    assert plan.argv[:3] == [sys.executable, "-m", "jupyterlab"]
    assert f"--ServerApp.root_dir={REPO / 'notebooks'}" in plan.argv


def test_a_running_sandbox_in_the_environment_is_used_as_is() -> None:
    plan = _plan(environ={"CENCORI_NB_SANDBOX": "http://127.0.0.1:1"})
    assert not plan.start_sandbox and plan.env_changes == {}


def test_configured_keys_mean_real_providers(canary: str) -> None:
    from cencori_nb import keys

    keys.set("openai", canary)
    plan = _plan()
    assert not plan.start_sandbox
    assert _plan(sandbox=True).start_sandbox  # --sandbox forces it anyway


def test_no_sandbox_conflicting_with_environment_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CENCORI_NB_SANDBOX", "http://127.0.0.1:9")
    assert main(["lab", "--no-sandbox", "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "CENCORI_NB_SANDBOX" in err and "Traceback" not in err


def test_a_key_on_the_command_line_is_refused_without_echo(
    canary: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lab", "--dry-run", f"--IdentityProvider.token={canary}"]) == 1
    captured = capsys.readouterr()
    assert "looks like an API key" in captured.err
    assert canary not in captured.err + captured.out


@pytest.mark.parametrize(
    ("kw", "args", "allow_root", "no_browser"),
    [
        ({"is_root": True}, [], True, False),
        ({"is_root": True}, ["--allow-root"], True, False),
        ({"environ": {"CI": "true"}}, [], False, True),
        ({"has_display": False}, [], False, True),
        ({"has_display": False}, ["--ServerApp.open_browser=True"], False, False),
        ({}, [], False, False),
    ],
)
def test_root_and_headless_flags(
    kw: dict, args: list[str], allow_root: bool, no_browser: bool
) -> None:
    argv = _plan(args, **kw).argv
    assert argv.count("--allow-root") == (1 if allow_root else 0)
    assert ("--no-browser" in argv) == no_browser


def test_an_explicit_root_dir_wins() -> None:
    argv = _plan(["--notebook-dir=/tmp/mine"]).argv
    assert not any(a.startswith("--ServerApp.root_dir") for a in argv)


def test_scrubber_is_forced_on_when_config_is_missing_and_warned_when_disabled() -> None:
    missing = _plan(scrubber_config=None)
    assert "--ServerApp.jpserver_extensions=cencori_nb.jupyter=True" in missing.argv
    disabled = _plan(scrubber_config=False)
    assert not any("jpserver_extensions" in a for a in disabled.argv)
    assert "scrubber" in disabled.notes[0] and "enable cencori_nb.jupyter" in disabled.notes[0]


def test_installed_config_enables_the_scrubber() -> None:
    """The venv's jupyter-config (shared data, also for the editable install) is seen."""
    assert lab_cli.extension_state() is True


def test_installed_package_copies_bundled_notebooks_once(
    private_home: Path, tmp_path: Path
) -> None:
    """Without a checkout, notebooks go to the home, never over a file the user edited."""
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    (bundled / "01-quickstart.ipynb").write_text("v1")
    (bundled / "02-provider-setup.ipynb").write_text("v1")
    target = lab_cli.notebooks_dir(checkout=None, bundled=bundled)
    assert target == private_home / "notebooks"
    (target / "01-quickstart.ipynb").write_text("edited")
    (bundled / "02-provider-setup.ipynb").write_text("v2")
    lab_cli.notebooks_dir(checkout=None, bundled=bundled)
    assert (target / "01-quickstart.ipynb").read_text() == "edited"
    assert (target / "02-provider-setup.ipynb").read_text() == "v1"
    assert lab_cli.notebooks_dir() == REPO / "notebooks"  # this checkout
    assert not any("has no notebooks" in n for n in _plan().notes)


def test_dry_run_prints_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "--dry-run", "--port", "9999"]) == 0
    out = capsys.readouterr().out
    assert "CENCORI_NB_SANDBOX=" in out
    assert out.strip().splitlines()[-1].endswith("--port 9999")


@pytest.mark.slow
def test_lab_starts_offline_with_banner_scrubber_and_sandbox(tmp_path: Path) -> None:
    """The README's first command with no keys: JupyterLab up, sandbox answering, scrubber on;
    SIGTERM to `cencori-nb lab` ends JupyterLab too."""
    port, token = free_port(), secrets.token_hex(8)
    root = tmp_path / "root"
    root.mkdir()
    env = isolated_jupyter_env(
        tmp_path / "jupyter",
        CENCORI_NB_HOME=str(tmp_path / "home"),
        PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
    )
    env.pop("CENCORI_NB_SANDBOX", None)
    log_path = tmp_path / "lab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cencori_nb",
                "lab",
                f"--port={port}",
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={root}",
                "--ServerApp.open_browser=False",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            try:
                if (
                    httpx2.get(
                        f"http://127.0.0.1:{port}/api/status",
                        headers={"Authorization": f"token {token}"},
                    ).status_code
                    == 200
                ):
                    break
            except httpx2.HTTPError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("JupyterLab did not start:\n" + log_path.read_text())
        text = log_path.read_text()
        m = re.search(r"OFFLINE SANDBOX at (http://127\.0\.0\.1:\d+) — replies are fake", text)
        assert m, text
        assert "secret scrubber registered" in text
        assert (
            httpx2.get(
                m.group(1) + "/v1/models", headers={"Authorization": "Bearer csk_sandbox_demo_0000"}
            ).status_code
            == 200
        )
        proc.send_signal(signal.SIGTERM)  # only our child; it forwards to Jupyter
        assert proc.wait(timeout=30) is not None
        with pytest.raises(httpx2.HTTPError):
            httpx2.get(f"http://127.0.0.1:{port}/api/status", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_lab_in_sandbox_mode_still_scrubs_the_real_stored_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cencori-nb lab --sandbox`: kernels use the sandbox home, yet a REAL stored key (no
    key shape, so only an exact match finds it) pasted into a notebook never reaches disk,
    and the real store is only read (issue 10.4)."""
    import json

    import nbformat

    from cencori_nb import keys

    real_home = tmp_path / "home"
    real_key = "real-shapeless-token-" + secrets.token_hex(8)
    env = isolated_jupyter_env(
        tmp_path / "jupyter",
        CENCORI_NB_HOME=str(real_home),
        PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
    )
    for name in ("CENCORI_NB_SANDBOX", "CENCORI_NB_PASSPHRASE", "CENCORI_NB_SCRUB_HOMES"):
        env.pop(name, None)
    monkeypatch.setenv("CENCORI_NB_HOME", str(real_home))
    keys.set("local", real_key)
    store = real_home / "keystore.json"
    before = store.read_bytes()
    root = tmp_path / "root"
    root.mkdir()
    port, token = free_port(), secrets.token_hex(8)
    lab = JupyterProcess(
        [sys.executable, "-m", "cencori_nb", "lab", "--sandbox", *server_args(root, port, token)],
        env=env,
        log_path=tmp_path / "lab.log",
        port=port,
        token=token,
    )
    lab.start()
    try:
        assert "OFFLINE SANDBOX" in lab.log()
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"k={real_key}")])
        r = lab.api(
            "PUT",
            "/api/contents/real.ipynb",
            json={"type": "notebook", "content": json.loads(nbformat.writes(nb))},
        )
        assert r.status_code in (200, 201), r.text
        on_disk = (root / "real.ipynb").read_text()
        assert real_key not in on_disk and "[redacted]" in on_disk
        assert store.read_bytes() == before
        assert real_key not in lab.log()
    finally:
        lab.stop()
