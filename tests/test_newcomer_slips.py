"""Small slips a newcomer meets (issue 13.4), each kept out by a test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cencori_nb.cli import lab as lab_cli
from cencori_nb.router import provider_for_model


@pytest.mark.parametrize(
    ("model", "phrase"),
    [
        ("claude-haiku-4-5", "an Anthropic model"),
        ("gpt-4o-mini", "an OpenAI model"),
        ("gemini-2.5-flash", "a Google Gemini model"),
    ],
)
def test_route_reason_reads_as_english(model: str, phrase: str) -> None:
    """Not "a anthropic model": the display name with the right article."""
    assert phrase in provider_for_model(model)[2]


def test_dry_run_outside_a_checkout_creates_nothing(tmp_path: Path) -> None:
    """``notebooks_dir(write=False)`` names the home's folder without creating it or
    copying the bundled notebooks."""
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    (bundled / "01-quickstart.ipynb").write_text("{}")
    home = tmp_path / "home"
    import os

    os.environ["CENCORI_NB_HOME"] = str(home)  # private_home restores it afterwards
    target = lab_cli.notebooks_dir(checkout=None, bundled=bundled, write=False)
    assert target == home / "notebooks"
    assert not home.exists()


def test_lab_dry_run_writes_nothing(tmp_path: Path) -> None:
    """``cencori-nb lab --dry-run`` as a real process: exit 0 and the home is not created."""
    import os

    home = tmp_path / "never-created"
    env = {**os.environ, "CENCORI_NB_HOME": str(home)}
    env.pop("CENCORI_NB_SANDBOX", None)
    out = subprocess.run(
        [sys.executable, "-m", "cencori_nb", "lab", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "jupyterlab" in out.stdout
    assert not home.exists()
