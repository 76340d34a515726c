"""Re-keying under attack and under faults (issue 10.3, 11.1, 13.4).

The attacker keeps an old copy of the store (a synced folder, a backup, a stolen laptop
image) together with the secret that opened it then (the old passphrase, the old key file,
the old keyring entry). After a passphrase change, a switch to a passphrase, or a rotation,
that copy and that secret must open nothing written afterwards, and putting the copy back
must be refused unless the user accepts it on purpose. Faults (full disk, quota, read-only
file system, permissions, file-size limit) must end in a KeystoreError naming the file,
with the store on disk unchanged. Every attack and fault tried is a test here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cencori_nb import keys, keystore, state
from cencori_nb.errors import (
    KeystoreCorruptError,
    KeystoreError,
    WrongPassphraseError,
)
from cencori_nb.keystore import crypto
from cencori_nb.keystore.store import KeyStore
from tests.attacks.support import run_limited
from tests.keystore.support import FakeSecureKeyring

OPENAI = "sk-proj-" + "A1b2C3d4E5f6G7h8"
ANTHROPIC = "sk-ant-" + "Z9y8X7w6V5u4T3s2"
LATER = "gsk_" + "written-after-the-change-0001"  # a key set after the re-keying
OLD_PHRASE, NEW_PHRASE = "old passphrase one", "new passphrase two"


def _path(home: Path) -> Path:
    return home / "keystore.json"


def _fresh() -> KeyStore:
    state.reset("keystore")
    return keystore.default_store()


def _doc(path: Path) -> dict:
    return json.loads(path.read_bytes())


def _dek_of(copy: Path, *, passphrase: str | None = None, ring: object = None) -> bytes:
    """The data key an attacker gets from an old copy and the old secret."""
    state.reset("keystore")
    store = KeyStore(copy, keyring_backend=ring)
    store._reload(passphrase=passphrase)
    assert store._state is not None
    return store._state.dek


def _assert_dek_opens_nothing(dek: bytes, path: Path) -> None:
    """No record of the store at ``path``, nor its MAC, opens with ``dek``."""
    doc = _doc(path)
    assert doc["records"]
    for entry in doc["records"]:
        with pytest.raises(crypto.InvalidTag):
            crypto.open_record(
                dek, entry["project"], entry["provider"], crypto.Sealed.from_json(entry)
            )
    body = {k: v for k, v in doc.items() if k != "mac"}
    mac = crypto.Sealed(crypto.b64d(doc["mac"]["nonce"]), crypto.b64d(doc["mac"]["tag"]))
    with pytest.raises(crypto.InvalidTag):
        crypto.open_sealed(dek, mac, crypto.mac_aad(body))


def _copy_store(home: Path, dest: Path) -> Path:
    """Copy the store and its key files (what an attacker with a backup of the home has)."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in home.iterdir():
        if item.name == "keystore.json" or item.suffix == ".key":
            shutil.copy2(item, dest / item.name)
    return dest / "keystore.json"


# --------------------------------------------------------------------------- re-keying


def test_old_copy_and_old_passphrase_open_nothing_written_after_a_change(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Copy the file, change the passphrase, set a new key: the old file + the old
    passphrase give a data key that opens no new record; the new file + the old
    passphrase (and the backup + the old passphrase) do not open."""
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", OLD_PHRASE)
    keys.set("openai", OPENAI)
    keys.set("anthropic", ANTHROPIC, project="research")
    old_copy = _copy_store(private_home, tmp_path / "attacker")
    old_dek = _dek_of(old_copy, passphrase=OLD_PHRASE)

    keys.change_passphrase(NEW_PHRASE)
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", NEW_PHRASE)
    keys.set("groq", LATER)
    path = _path(private_home)
    _assert_dek_opens_nothing(old_dek, path)
    _assert_dek_opens_nothing(old_dek, private_home / "keystore.bak")
    assert _dek_of(path, passphrase=NEW_PHRASE) != old_dek
    for candidate in (path, private_home / "keystore.bak"):
        state.reset("keystore")
        with pytest.raises(WrongPassphraseError):
            KeyStore(candidate)._reload(passphrase=OLD_PHRASE)
    store = _fresh()
    assert store.get("groq").api_key.reveal() == LATER  # type: ignore[union-attr]
    assert store.get("anthropic", "research").api_key.reveal() == ANTHROPIC  # type: ignore


def test_records_spliced_into_the_old_copy_do_not_open(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The attacker grafts the new records into the old file they can open: refused."""
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", OLD_PHRASE)
    keys.set("openai", OPENAI)
    old_copy = _copy_store(private_home, tmp_path / "attacker")
    keys.change_passphrase(NEW_PHRASE)
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", NEW_PHRASE)
    keys.set("groq", LATER)
    old, new = _doc(old_copy), _doc(_path(private_home))
    spliced = {**old, "records": new["records"]}
    old_copy.write_bytes(crypto.dump_document(spliced))
    state.reset("keystore")
    with pytest.raises(KeystoreCorruptError):
        KeyStore(old_copy)._reload(passphrase=OLD_PHRASE)


def test_switch_from_key_file_to_passphrase_rekeys(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Old store + old key file: its data key opens no record written after the switch;
    the key file itself is deleted."""
    keys.set("openai", OPENAI)
    old_copy = _copy_store(private_home, tmp_path / "attacker")
    old_dek = _dek_of(old_copy)
    key_file = private_home / _doc(_path(private_home))["kek"]["file"]
    keys.change_passphrase(NEW_PHRASE)
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", NEW_PHRASE)
    keys.set("groq", LATER)
    assert not key_file.exists() and not list(private_home.glob("*.key"))
    _assert_dek_opens_nothing(old_dek, _path(private_home))
    _assert_dek_opens_nothing(old_dek, private_home / "keystore.bak")


def test_switch_from_keyring_to_passphrase_rekeys(private_home: Path, tmp_path: Path) -> None:
    """Old store + old keyring entry: nothing new opens; the entry is deleted."""
    ring = FakeSecureKeyring()
    path = _path(private_home)
    store = KeyStore(path, keyring_backend=ring)
    store.set_key("openai", OPENAI, project="default")
    old_copy = _copy_store(private_home, tmp_path / "attacker")
    old_ring = FakeSecureKeyring()
    old_ring.items = dict(ring.items)
    old_dek = _dek_of(old_copy, ring=old_ring)
    store.change_passphrase(NEW_PHRASE)
    store.set_key("groq", LATER, project="default")
    assert ring.items == {}
    assert _doc(path)["kek"]["source"] == "passphrase"
    _assert_dek_opens_nothing(old_dek, path)


def test_passphrase_in_the_environment_switches_a_weaker_store_before_writing(
    private_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """CENCORI_NB_PASSPHRASE set on a key-file store: the next write switches it to the
    passphrase (new data key, key file deleted) instead of writing under the key file."""
    keys.set("openai", OPENAI)
    old_copy = _copy_store(private_home, tmp_path / "attacker")
    old_dek = _dek_of(old_copy)
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", NEW_PHRASE)
    state.reset("keystore")
    with caplog.at_level("WARNING", logger="cencori_nb.keystore"):
        keys.set("groq", LATER)
    assert "Switching the key store" in caplog.text
    path = _path(private_home)
    assert _doc(path)["kek"]["source"] == "passphrase"
    assert not list(private_home.glob("*.key"))
    _assert_dek_opens_nothing(old_dek, path)
    _assert_dek_opens_nothing(old_dek, private_home / "keystore.bak")
    assert _fresh().get("openai").api_key.reveal() == OPENAI  # type: ignore[union-attr]


def test_rotate_keeps_the_passphrase_and_switches_a_weaker_store(
    private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rotate on a passphrase store stays a passphrase store (no key file appears, the
    same passphrase opens it, a new data key); on a key-file store with the passphrase
    set, it switches."""
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", OLD_PHRASE)
    keys.set("openai", OPENAI)
    path = _path(private_home)
    dek = _dek_of(path, passphrase=OLD_PHRASE)
    assert keys.rotate() == 1
    assert _doc(path)["kek"]["source"] == "passphrase" and not list(private_home.glob("*.key"))
    _assert_dek_opens_nothing(dek, path)
    assert _fresh().get("openai") is not None

    other = private_home / "other.json"
    monkeypatch.delenv("CENCORI_NB_PASSPHRASE")
    KeyStore(other).set_key("openai", OPENAI, project="default")
    assert _doc(other)["kek"]["source"] == "keyfile"
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", OLD_PHRASE)
    assert KeyStore(other).rotate() == 1
    assert _doc(other)["kek"]["source"] == "passphrase"
    assert not list(private_home.glob("other-*.key"))


# --------------------------------------------------------------------------- rollback


def test_an_old_copy_put_back_is_refused_until_accepted(private_home: Path, tmp_path: Path) -> None:
    """Restoring an older generation: every read and write refuses with the way to accept
    it; nothing is written; accepting re-keys it as the newest generation."""
    keys.set("openai", OPENAI)
    old_copy = _copy_store(private_home, tmp_path / "attacker")
    keys.set("openai", "sk-proj-" + "replacement-key-0002")
    keys.rotate()
    path = _path(private_home)
    newest = _doc(path)["generation"]
    for item in old_copy.parent.iterdir():
        shutil.copy2(item, private_home / item.name)
    planted = path.read_bytes()
    for attempt in (
        lambda: _fresh().get("openai"),
        lambda: keys.set("groq", LATER),
        lambda: keys.status(),
        lambda: keys.rotate(),
        lambda: keys.change_passphrase(NEW_PHRASE),
    ):
        with pytest.raises(KeystoreError) as info:
            attempt()
        assert info.value.code == "keystore_rollback", info.value
        assert "--accept-rollback" in str(info.value) and str(path) in str(info.value)
        assert path.read_bytes() == planted
    assert keys.rotate(accept_rollback=True) == 1
    assert _doc(path)["generation"] == newest + 1
    assert _fresh().get("openai").api_key.reveal() == OPENAI  # type: ignore[union-attr]


def test_the_abandoned_newer_copy_is_refused_after_an_accepted_rollback(
    private_home: Path, tmp_path: Path
) -> None:
    """After accepting generation 1 back, the generation-3 copy someone kept is older than
    what was written since, so it is refused too."""
    keys.set("openai", OPENAI)
    gen1 = _copy_store(private_home, tmp_path / "gen1")
    keys.set("groq", LATER)
    keys.set("groq", LATER + "x")
    gen3 = _copy_store(private_home, tmp_path / "gen3")
    for item in gen1.parent.iterdir():
        shutil.copy2(item, private_home / item.name)
    keys.rotate(accept_rollback=True)
    for item in gen3.parent.iterdir():
        shutil.copy2(item, private_home / item.name)
    with pytest.raises(KeystoreError) as info:
        _fresh().status()
    assert info.value.code == "keystore_rollback"


def test_deleting_the_store_does_not_reset_the_generation(
    private_home: Path, tmp_path: Path
) -> None:
    """Delete the store, set keys again: generations continue past the old ones, so the
    old copy is still refused."""
    keys.set("openai", OPENAI)
    keys.set("groq", LATER)
    old_copy = _copy_store(private_home, tmp_path / "old")
    keys.set("openai", "sk-proj-" + "third-generation-003")
    _path(private_home).unlink()
    keys.set("anthropic", ANTHROPIC)
    assert _doc(_path(private_home))["generation"] == 4
    for item in old_copy.parent.iterdir():
        shutil.copy2(item, private_home / item.name)
    with pytest.raises(KeystoreError) as info:
        _fresh().status()
    assert info.value.code == "keystore_rollback"


def test_generation_record_damaged_or_missing(private_home: Path) -> None:
    """A damaged record is a clear error naming it; a deleted one is written again from
    the store's own generation on the next read."""
    keys.set("openai", OPENAI)
    record = private_home / "keystore.json.generation"
    assert json.loads(record.read_bytes()) == {"generation": 1}
    assert oct(record.stat().st_mode & 0o777) == "0o600"
    record.write_bytes(b"{not json")
    with pytest.raises(KeystoreCorruptError) as info:
        _fresh().status()
    assert str(record) in str(info.value) and "Delete" in str(info.value)
    record.unlink()
    assert _fresh().get("openai") is not None
    assert json.loads(record.read_bytes()) == {"generation": 1}


# --------------------------------------------------------------------------- passphrase input


@pytest.mark.parametrize("value", ["", "   ", "\t\n"], ids=["empty", "spaces", "whitespace"])
def test_empty_passphrase_is_refused_never_a_key_file_store(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """CENCORI_NB_PASSPHRASE set but blank: a KeystoreError, no store, no key file."""
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", value)
    with pytest.raises(KeystoreError) as info:
        keys.set("openai", OPENAI)
    assert info.value.code == "passphrase_empty" and "unset" in str(info.value)
    assert not _path(private_home).exists() and not list(private_home.glob("*.key"))
    with pytest.raises(KeystoreError):
        keys.change_passphrase(value or " ")


def test_passphrase_that_is_not_utf8_gets_a_clear_error(
    private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes the locale could not decode (lone surrogates in os.environ) or given to
    change_passphrase: a KeystoreError, never UnicodeEncodeError."""
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "caf\udce9 au lait")
    with pytest.raises(KeystoreError) as info:
        keys.set("openai", OPENAI)
    assert info.value.code == "passphrase_invalid" and "UTF-8" in str(info.value)
    assert not _path(private_home).exists()
    monkeypatch.delenv("CENCORI_NB_PASSPHRASE")
    keys.set("openai", OPENAI)
    with pytest.raises(KeystoreError) as info:
        keys.change_passphrase("bad \udcff bytes")
    assert info.value.code == "passphrase_invalid"
    assert _fresh().kek_source == "keyfile"


def test_non_utf8_passphrase_from_a_real_environment(private_home: Path) -> None:
    """The bytes really come from the process environment: one line, exit 1."""
    env = {k.encode(): v.encode() for k, v in os.environ.items()}
    env[b"CENCORI_NB_HOME"] = os.fsencode(private_home)
    env[b"CENCORI_NB_PASSPHRASE"] = b"caf\xe9-latin-1"
    env[b"LC_ALL"] = b"C.UTF-8"
    proc = subprocess.run(
        [sys.executable, "-m", "cencori_nb", "keys", "set", "openai"],
        input=OPENAI.encode(),
        capture_output=True,
        env=env,
        timeout=120,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1 and len(err.splitlines()) == 1, err
    assert "UTF-8" in err and "Traceback" not in err
    assert not _path(private_home).exists()


def test_wrong_passphrase_names_the_usual_causes(
    private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trailing whitespace is spotted (and whether the trimmed one opens); another
    shell is named; the backup is suggested only when it opens with that passphrase."""
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", OLD_PHRASE)
    keys.set("openai", OPENAI)
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", OLD_PHRASE + " \n")
    with pytest.raises(WrongPassphraseError) as info:
        _fresh().status()
    text = str(info.value)
    assert "space or line break at its start or end" in text and "remove it" in text
    assert "another shell" in text
    assert "keystore.bak" not in text  # no backup exists yet that opens with it

    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "entirely different")
    with pytest.raises(WrongPassphraseError) as info:
        _fresh().status()
    assert "keystore.bak" not in str(info.value) and "another shell" in str(info.value)

    # a damaged header on the current file (its check and wrapped key replaced by a
    # store under another passphrase): the backup, which opens, is suggested
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", OLD_PHRASE)
    keys.set("groq", LATER)  # the backup now holds generation 1
    path = _path(private_home)
    other = private_home / "other.json"
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "someone else")
    KeyStore(other).set_key("openai", OPENAI, project="default")
    doc, foreign = _doc(path), _doc(other)
    doc["kek"], doc["dek"] = foreign["kek"], foreign["dek"]
    path.write_bytes(crypto.dump_document(doc))
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", OLD_PHRASE)
    with pytest.raises(WrongPassphraseError) as info:
        _fresh().status()
    text = str(info.value)
    assert "The backup" in text and "keystore.bak" in text and "--accept-rollback" in text
    assert text.index("Usual causes") < text.index("The backup")
    assert OLD_PHRASE not in text


# --------------------------------------------------------------------------- write faults


def _snapshot(home: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(home.iterdir()) if p.is_file()}


@pytest.mark.parametrize(
    ("argv", "stdin", "passphrase"),
    [
        (["keys", "set", "groq"], LATER, None),
        (["keys", "rotate"], "", None),
        (["keys", "passphrase"], NEW_PHRASE + "\n", None),
        (["keys", "disable", "openai"], "", None),
        (["keys", "set", "groq"], LATER, OLD_PHRASE),
        (["keys", "passphrase"], f"{OLD_PHRASE}\n{NEW_PHRASE}\n", OLD_PHRASE),
    ],
    ids=[
        "set",
        "rotate",
        "switch-to-passphrase",
        "disable",
        "set-passphrase-store",
        "change-passphrase",
    ],
)
def test_file_size_limit_is_a_keystore_error_and_changes_nothing(
    private_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    stdin: str,
    passphrase: str | None,
) -> None:
    """RLIMIT_FSIZE below the store's size (EFBIG): exit 1, one line naming the file and
    what to do; every file in the home byte for byte as before (no temp, no new key file,
    no generation bump)."""
    if passphrase:
        monkeypatch.setenv("CENCORI_NB_PASSPHRASE", passphrase)
    keys.set("openai", OPENAI)
    keys.set("anthropic", ANTHROPIC)
    before = _snapshot(private_home)
    proc = run_limited(private_home, 300, argv, stdin)
    assert proc.returncode == 1, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "Could not write the key store" in proc.stderr
    assert str(_path(private_home)) in proc.stderr and "EFBIG" in proc.stderr
    assert "ulimit -f" in proc.stderr and "nothing was changed" in proc.stderr
    assert _snapshot(private_home) == before
    assert _fresh().get("openai").api_key.reveal() == OPENAI  # type: ignore[union-attr]


def test_file_size_limit_on_a_fresh_home_leaves_no_key_material(private_home: Path) -> None:
    """The very first write fails: no store, and the key file made for it is gone."""
    proc = run_limited(private_home, 300, ["keys", "set", "openai"], OPENAI)
    assert proc.returncode == 1 and "no store was created" in proc.stderr, proc.stderr
    assert not _path(private_home).exists()
    assert not list(private_home.glob("*.key")) and not list(private_home.glob(".*.tmp"))


@contextlib.contextmanager
def _read_only_dir(directory: Path) -> Iterator[None]:
    """Make ``directory`` refuse new files, for root too (the immutable attribute) or by
    its mode for an ordinary user."""
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True)
        if done.returncode != 0:
            pytest.skip("cannot make a directory immutable here")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        directory.chmod(0o500)
        try:
            yield
        finally:
            directory.chmod(0o700)


def test_read_only_directory_is_a_keystore_error(tmp_path: Path) -> None:
    """EACCES/EPERM creating the temp file: KeystoreError naming the directory; the store
    and its backup unchanged."""
    directory = tmp_path / "ro"
    store = KeyStore(directory / "keystore.json")
    store.set_key("openai", OPENAI, project="default")
    store.set_key("anthropic", ANTHROPIC, project="default")
    before = _snapshot(directory)
    with _read_only_dir(directory):
        for write in (
            lambda: store.set_key("groq", LATER, project="default"),
            store.rotate,
            lambda: store.change_passphrase(NEW_PHRASE),
        ):
            with pytest.raises(KeystoreError) as info:
                write()
            assert info.value.code == "keystore_write_failed"
            assert str(directory) in str(info.value) and "try again" in str(info.value)
            assert _snapshot(directory) == before
    state.reset("keystore")
    assert KeyStore(directory / "keystore.json").get("groq", "default") is None


@contextlib.contextmanager
def _tmpfs(mount: Path, size: str) -> Iterator[None]:
    mount.mkdir(parents=True, exist_ok=True)
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount)],
            capture_output=True,
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_a_keystore_error(tmp_path: Path) -> None:
    """ENOSPC on a tiny tmpfs: KeystoreError saying to free space; store unchanged."""
    mount = tmp_path / "small"
    with _tmpfs(mount, "64k"):
        store = KeyStore(mount / "keystore.json")
        store.set_key("openai", OPENAI, project="default")
        filler = mount / "filler"
        with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as fh:
            while True:
                fh.write(b"\0" * 1024)
        before = _snapshot(mount)
        for write in (
            lambda: store.set_key("groq", LATER * 20, project="default", force=True),
            store.rotate,
        ):
            with pytest.raises(KeystoreError) as info:
                write()
            assert "ENOSPC" in str(info.value) and "Free some space" in str(info.value)
            assert _snapshot(mount) == before
        filler.unlink()
        store.set_key("groq", LATER, project="default")  # works again once freed
        assert KeyStore(mount / "keystore.json").get("groq", "default") is not None


def test_read_only_file_system_is_a_keystore_error(tmp_path: Path) -> None:
    """EROFS (a tmpfs remounted read-only): KeystoreError naming it; store unchanged."""
    mount = tmp_path / "ro-fs"
    with _tmpfs(mount, "1m"):
        store = KeyStore(mount / "keystore.json")
        store.set_key("openai", OPENAI, project="default")
        before = _snapshot(mount)
        if (
            subprocess.run(
                ["mount", "-o", "remount,ro", str(mount)], capture_output=True
            ).returncode
            != 0
        ):
            pytest.skip("cannot remount read-only here")
        with pytest.raises(KeystoreError) as info:
            store.set_key("groq", LATER, project="default")
        assert "EROFS" in str(info.value) and "read-only file system" in str(info.value)
        assert _snapshot(mount) == before
        state.reset("keystore")  # reading still works
        assert KeyStore(mount / "keystore.json").get("openai", "default") is not None


# --------------------------------------------------------------------------- processes

_READER = """
import pathlib, sys
from cencori_nb import state
from cencori_nb.keystore.store import KeyStore
path, done, expected = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
reads = 0
print("ready", flush=True)
while not done.exists() or reads < 5:
    state.reset("keystore")            # a cold open each time, as a new process does
    got = KeyStore(path).get("openai", "default")
    assert got is not None and got.api_key.reveal() == expected, got
    reads += 1
print(reads, flush=True)
"""

_ROTATOR = """
import pathlib, sys
from cencori_nb import keys
done, rounds, phrase = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for i in range(rounds):
    keys.rotate()
    if phrase:
        keys.change_passphrase(phrase, old=phrase)     # same text: new salt, new data key
done.touch()
print("rotated", rounds, flush=True)
"""


@pytest.mark.parametrize("phrase", ["", "shared phrase"], ids=["keyfile", "passphrase"])
def test_readers_never_fail_while_another_process_rekeys(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, phrase: str
) -> None:
    """Two reader processes open the store cold, again and again, while a third rotates
    (and changes the passphrase): no read fails (a reader that read a generation whose key
    file was just retired waits for the lock and reads the next)."""
    if phrase:
        monkeypatch.setenv("CENCORI_NB_PASSPHRASE", phrase)
    keys.set("openai", OPENAI)
    done = tmp_path / "done"
    env = dict(os.environ, CENCORI_NB_HOME=str(private_home))
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", _READER, str(_path(private_home)), str(done), OPENAI],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for reader in readers:
            assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
        rotator = subprocess.run(
            [sys.executable, "-c", _ROTATOR, str(done), "25" if not phrase else "8", phrase],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert rotator.returncode == 0, rotator.stderr
        for reader in readers:
            out, err = reader.communicate(timeout=300)
            assert reader.returncode == 0, err
            assert int(out.split()[-1]) >= 5
    finally:
        for reader in readers:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
    generation = _doc(_path(private_home))["generation"]
    assert generation > 20 if not phrase else generation > 15
    assert _fresh().get("openai").api_key.reveal() == OPENAI  # type: ignore[union-attr]


def test_a_reader_waits_for_a_writer_holding_the_lock(
    private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader whose first read fails because the key file it names was just retired takes
    the lock (here held by "another writer" for a moment) and reads the next generation."""
    import filelock

    keys.set("openai", OPENAI)
    path = _path(private_home)
    stale = path.read_bytes()
    keys.rotate()  # retires the key file ``stale`` names
    fresh_bytes = path.read_bytes()
    reader = KeyStore(path)
    real_read = Path.read_bytes
    served = []

    def racing_open(fd_path: object, flags: int, *a: object) -> int:
        # the first read sees the stale generation, as if read just before the rotation
        if not served and Path(str(fd_path)) == path:
            served.append(1)
            tmp = private_home / "stale-view"
            tmp.write_bytes(stale)
            return real_open(tmp, flags, *a)
        return real_open(fd_path, flags, *a)

    real_open = os.open
    monkeypatch.setattr(os, "open", racing_open)
    lock = filelock.FileLock(private_home / "keystore.lock", thread_local=False)
    lock.acquire()
    released = []

    def release_soon() -> None:
        time.sleep(0.2)
        released.append(1)
        lock.release()

    import threading

    state.reset("keystore")
    threading.Thread(target=release_soon).start()
    got = reader.get("openai", "default")
    assert released and served
    assert got is not None and got.api_key.reveal() == OPENAI
    assert path.read_bytes() == fresh_bytes and real_read(path) == fresh_bytes


_SLOW_CHANGER = """
import pathlib, sys, time
from cencori_nb import keys
from cencori_nb.keystore import kek
marker, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
old, new = sys.argv[3], sys.argv[4]
real = kek.new_passphrase_kek

def held(phrase):            # inside the lock, before the new generation is written
    marker.touch()
    while not go.exists():
        time.sleep(0.01)
    return real(phrase)

kek.new_passphrase_kek = held
keys.change_passphrase(new, old=old)
print("changed", flush=True)
"""


def test_a_reader_with_the_new_passphrase_waits_for_the_change(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Another process is changing the passphrase (it holds the lock, the file is still the
    old generation). A reader with the old passphrase reads the previous generation; a
    reader that already has the new one fails its first read, waits for the lock, and
    reads the new generation: neither fails."""
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", OLD_PHRASE)
    keys.set("openai", OPENAI)
    marker, go = tmp_path / "holding", tmp_path / "go"
    env = dict(os.environ, CENCORI_NB_HOME=str(private_home))
    writer = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CHANGER, str(marker), str(go), OLD_PHRASE, NEW_PHRASE],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(6000):
            if marker.exists() or writer.poll() is not None:
                break
            time.sleep(0.01)
        assert marker.exists(), writer.communicate(timeout=30)
        # the old passphrase still reads the previous generation meanwhile
        assert _fresh().get("openai").api_key.reveal() == OPENAI  # type: ignore[union-attr]
        # the new one: the first read fails; the retry lets the writer go, then waits
        real_locked = KeyStore._locked
        retried = []

        def locked_after_letting_go(self: KeyStore):  # type: ignore[no-untyped-def]
            retried.append(1)
            go.touch()
            return real_locked(self)

        monkeypatch.setattr(KeyStore, "_locked", locked_after_letting_go)
        monkeypatch.setenv("CENCORI_NB_PASSPHRASE", NEW_PHRASE)
        got = _fresh().get("openai")
        assert retried and got is not None and got.api_key.reveal() == OPENAI
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0 and "changed" in out, err
    finally:
        go.touch()
        if writer.poll() is None:
            writer.kill()
        writer.wait()
