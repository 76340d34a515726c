"""A home that others can reach: a synced folder, a copy restored under umask 022, a folder
made group- or world-writable.

The key file next to the store is the KEK: whoever reads both decrypts every stored key.
Found by the red team: a key file and store left 0644, or a home left 0755/0777, were used
as they were, for reading and for writing, and never made private again; and in a
world-writable home, a key file or store planted by another user was used (keys set
afterwards are sealed under a KEK that user holds). Each test sets the modes or owners on
real files (the suite runs as root in CI, so ``chown`` to another uid works; it is skipped
otherwise) and asserts the modes on disk, the error, and what the sandbox received.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from cencori_nb import errors, keys, settings, state
from cencori_nb.home import verify_home
from tests.attacks.support import CANARIES

KEY = CANARIES["openai"]


def _modes(home: Path) -> dict[str, int]:
    return {
        str(p.relative_to(home)) or ".": stat.S_IMODE(p.stat().st_mode)
        for p in [home, *home.rglob("*")]
    }


def _loosen(home: Path, file_mode: int, dir_mode: int) -> None:
    for p in home.rglob("*"):
        os.chmod(p, dir_mode if p.is_dir() else file_mode)
    os.chmod(home, dir_mode)


@pytest.mark.parametrize(
    ("file_mode", "dir_mode"), [(0o644, 0o755), (0o640, 0o750), (0o666, 0o777)]
)
@pytest.mark.parametrize("then", ["read", "write"])
def test_a_home_others_can_read_is_made_private_with_a_warning(
    private_home: Path,
    caplog: pytest.LogCaptureFixture,
    file_mode: int,
    dir_mode: int,
    then: str,
) -> None:
    keys.set("openai", KEY)
    key_files = list(private_home.glob("keystore-*.key"))
    assert key_files, "the key-file KEK is what this test is about"
    _loosen(private_home, file_mode, dir_mode)
    state.reset()  # a new process: it opens the store from disk
    with caplog.at_level(logging.WARNING, logger="cencori_nb"):
        if then == "read":
            assert [s.key_hint for s in keys.status()] == ["…" + KEY[-4:]]
        else:
            keys.set("anthropic", CANARIES["anthropic"])
    modes = _modes(private_home)
    loose = {
        name: oct(mode)
        for name, mode in modes.items()
        if mode != (0o700 if (private_home / name).is_dir() else 0o600)
    }
    assert loose == {}
    assert "made private" in caplog.text and key_files[0].name in caplog.text
    assert KEY not in caplog.text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs chown to another uid (root)")
@pytest.mark.parametrize("planted", ["keystore.json", "key file", "config.json", "batches"])
def test_a_file_planted_by_another_user_is_refused(
    private_home: Path, planted: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a home that was world-writable another user replaced a file: nothing is read
    from it or written under it; one clear UnsafeHomeError names it."""
    keys.set("openai", KEY)
    if planted == "key file":
        target = next(private_home.glob("keystore-*.key"))
    elif planted == "batches":
        target = private_home / "batches"
        target.mkdir(exist_ok=True)
    else:
        target = private_home / planted
        if not target.exists():
            settings.update_settings(trusted_hosts={})
    assert target.exists()
    before = target.stat()
    os.chown(target, 65534, 65534)
    state.reset()
    with pytest.raises(errors.UnsafeHomeError, match="belongs to another user") as info:
        keys.set("anthropic", CANARIES["anthropic"])
    assert str(target) in str(info.value)
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(before.st_mode)
    assert target.stat().st_uid == 65534  # not taken over either
    with pytest.raises(errors.UnsafeHomeError):
        keys.status()
    assert not any(
        CANARIES["anthropic"] in p.read_bytes().decode("latin-1")
        for p in private_home.rglob("*")
        if p.is_file()
    )


def test_verify_home_on_a_private_home_changes_nothing_and_says_nothing(
    private_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys.set("openai", KEY)
    before = {p: p.stat().st_mtime_ns for p in private_home.rglob("*")}
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        verify_home(private_home)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert {p: p.stat().st_mtime_ns for p in private_home.rglob("*")} == before
