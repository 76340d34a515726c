"""The encrypted key store: round trips, modes, binding, damage, passphrases, rotation."""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cencori_nb import keys, keystore, state
from cencori_nb.errors import (
    CencoriError,
    ConfigurationError,
    KeyNotFoundError,
    KeystoreCorruptError,
    KeystoreError,
    UnknownProviderError,
    WrongPassphraseError,
)
from cencori_nb.keystore import crypto
from cencori_nb.keystore.kek import is_secure_backend
from cencori_nb.keystore.secret import Secret
from cencori_nb.keystore.store import KeyStore
from tests.keystore.support import FakeSecureKeyring

OPENAI = "sk-proj-" + "A1b2C3d4E5f6G7h8"
ANTHROPIC = "sk-ant-" + "Z9y8X7w6V5u4T3s2"
CSK = "csk_" + "live0123456789abcdef"


def _store_path(home: Path) -> Path:
    return home / "keystore.json"


def _fill() -> None:
    keys.set("openai", OPENAI, default_model="gpt-4o", make_default=True)
    keys.set("anthropic", ANTHROPIC, project="research", enabled=False)
    keys.set_cencori_key(CSK)


def _fresh() -> keystore.KeyStore:
    """A cold open, as a new process would do it."""
    state.reset("keystore")
    return keystore.default_store()


# --------------------------------------------------------------------------- round trip


def test_round_trip_through_a_cold_open(private_home: Path) -> None:
    """What is set comes back, with its flags, after the process cache is dropped."""
    _fill()
    store = _fresh()
    got = store.get("openai", "default")
    assert got is not None
    assert got.api_key.reveal() == OPENAI and got.enabled and got.default_model == "gpt-4o"
    ant = store.get("anthropic", "research")
    assert ant is not None and ant.api_key.reveal() == ANTHROPIC and not ant.enabled
    assert store.get("anthropic", "default") is None
    assert store.cencori_key("default") == Secret(CSK)
    assert store.cencori_key("research") is None
    assert store.project_default("default") == "openai"
    assert store.project_default("research") is None
    assert store.projects() == ["default", "research"]
    assert sorted(s.reveal() for s in store.all_secrets()) == sorted([OPENAI, ANTHROPIC, CSK])
    assert store.kek_source == "keyfile"


def test_status_rows_hold_hints_never_keys(private_home: Path) -> None:
    """status() rows: provider, enabled, key_hint, default_model, is_default."""
    _fill()
    rows = keys.status()
    assert [r.to_dict() for r in rows] == [
        {
            "provider": "cencori",
            "enabled": True,
            "key_hint": "…cdef",
            "default_model": None,
            "is_default": False,
        },
        {
            "provider": "openai",
            "enabled": True,
            "key_hint": "…G7h8",
            "default_model": "gpt-4o",
            "is_default": True,
        },
    ]
    text = repr(rows) + str(rows) + repr(_fresh().get("openai"))
    for secret in (OPENAI, CSK):
        assert secret not in text


def test_file_format_is_aes_gcm_envelope(private_home: Path) -> None:
    """JSON with version, KEK description, wrapped 32-byte DEK, 12-byte nonces per record."""
    _fill()
    doc = json.loads(_store_path(private_home).read_bytes())
    assert doc["format"] == "cencori-nb-keystore" and doc["version"] == 1
    assert doc["kek"]["source"] == "keyfile"
    assert len(base64.b64decode(doc["dek"]["nonce"])) == 12
    assert len(base64.b64decode(doc["dek"]["ciphertext"])) == 32 + 16  # 256-bit DEK + tag
    slots = [(r["project"], r["provider"]) for r in doc["records"]]
    assert slots == [
        ("default", "@project"),
        ("default", "cencori"),
        ("default", "openai"),
        ("research", "anthropic"),
    ]
    nonces = [r["nonce"] for r in doc["records"]] + [doc["dek"]["nonce"], doc["mac"]["nonce"]]
    assert len(set(nonces)) == len(nonces)
    key_file = private_home / doc["kek"]["file"]
    assert len(key_file.read_bytes()) == 32


def test_changed_record_gets_a_fresh_nonce(private_home: Path) -> None:
    """Re-sealing after an edit never reuses the stored nonce."""
    keys.set("openai", OPENAI)
    before = {
        r["provider"]: r["nonce"]
        for r in json.loads(_store_path(private_home).read_bytes())["records"]
    }
    keys.disable("openai")
    after = {
        r["provider"]: r["nonce"]
        for r in json.loads(_store_path(private_home).read_bytes())["records"]
    }
    assert before["openai"] != after["openai"]


def test_modes_are_private_even_with_an_open_umask(private_home: Path) -> None:
    """Home 0700; store, backup, lock and key file 0600, whatever the umask."""
    old = os.umask(0)
    try:
        keys.set("openai", OPENAI)
        keys.set("groq", "gsk_" + "x" * 20)
    finally:
        os.umask(old)
    assert stat.S_IMODE(private_home.stat().st_mode) == 0o700
    names = sorted(p.name for p in private_home.iterdir())
    assert "keystore.json" in names and "keystore.bak" in names and "keystore.lock" in names
    assert any(n.endswith(".key") for n in names)
    for path in private_home.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_previous_generation_is_kept_as_backup(private_home: Path) -> None:
    """After two writes the .bak is the first generation and opens on its own."""
    keys.set("openai", OPENAI)
    keys.set("openai", "sk-proj-second-key-0002")
    bak = private_home / "keystore.bak"
    assert json.loads(bak.read_bytes())["generation"] == 1
    assert json.loads(_store_path(private_home).read_bytes())["generation"] == 2
    got = KeyStore(bak.with_suffix(".json").with_name("copy.json"))
    shutil.copy(bak, got.path)
    # the key file is found next to the copy because the header names a file in that dir
    opened = got.get("openai", "default")
    assert opened is not None and opened.api_key.reveal() == OPENAI


# --------------------------------------------------------------------------- binding


def _reseal_mac(store: keystore.KeyStore, doc: dict) -> bytes:
    """Recompute the file MAC with the real DEK, to test per-record binding on its own."""
    state = store._state
    assert state is not None
    body = {k: v for k, v in doc.items() if k != "mac"}
    mac = crypto.seal(state.dek, b"", crypto.mac_aad(body))
    return crypto.dump_document(
        {**body, "mac": {"nonce": crypto.b64e(mac.nonce), "tag": crypto.b64e(mac.ciphertext)}}
    )


@pytest.mark.parametrize("reseal", [False, True], ids=["file-mac", "record-aad"])
def test_swapped_records_fail(private_home: Path, reseal: bool) -> None:
    """Swapping two records' ciphertexts: KeystoreCorruptError, never the other key.

    With ``reseal`` the file MAC is recomputed with the real data key, so only the
    per-record associated data (project, provider) can catch it.
    """
    keys.set("openai", OPENAI)
    keys.set("anthropic", ANTHROPIC)
    store = _fresh()
    store.status()
    path = _store_path(private_home)
    doc = json.loads(path.read_bytes())
    a, b = (r for r in doc["records"] if r["provider"] in ("openai", "anthropic"))
    for field in ("nonce", "ciphertext"):
        a[field], b[field] = b[field], a[field]
    raw = _reseal_mac(store, doc) if reseal else crypto.dump_document(doc)
    path.write_bytes(raw)
    with pytest.raises(KeystoreCorruptError) as info:
        _fresh().get("openai", "default")
    assert info.value.path == path and str(path) in str(info.value)
    assert path.read_bytes() == raw


@pytest.mark.parametrize("reseal", [False, True], ids=["file-mac", "record-aad"])
def test_record_moved_to_another_slot_fails(private_home: Path, reseal: bool) -> None:
    """A record relabelled as another provider's or project's: KeystoreCorruptError."""
    keys.set("openai", OPENAI)
    store = _fresh()
    store.status()
    path = _store_path(private_home)
    for field, value in (("provider", "anthropic"), ("project", "other")):
        doc = json.loads(path.read_bytes())
        original = path.read_bytes()
        record = next(r for r in doc["records"] if r["provider"] == "openai")
        record[field] = value
        raw = _reseal_mac(store, doc) if reseal else crypto.dump_document(doc)
        path.write_bytes(raw)
        with pytest.raises(KeystoreCorruptError):
            _fresh().status()
        path.write_bytes(original)
        store = _fresh()
        store.status()


def test_rolled_back_record_fails(private_home: Path) -> None:
    """A record's older ciphertext pasted back from the backup: the file MAC catches it."""
    keys.set("openai", OPENAI)
    keys.set("openai", "sk-proj-newer-key-000000")
    path = _store_path(private_home)
    doc = json.loads(path.read_bytes())
    old = json.loads((private_home / "keystore.bak").read_bytes())
    doc["records"] = old["records"]
    path.write_bytes(crypto.dump_document(doc))
    with pytest.raises(KeystoreCorruptError):
        _fresh().get("openai")


def test_aad_binds_record_to_project_and_provider() -> None:
    """crypto level: a sealed record opens only in its own slot."""
    dek = crypto.new_key()
    sealed = crypto.seal_record(dek, "p", "openai", {"key": "k"})
    assert crypto.open_record(dek, "p", "openai", sealed) == {"key": "k"}
    for project, provider in (("p", "anthropic"), ("q", "openai")):
        with pytest.raises(crypto.InvalidTag):
            crypto.open_record(dek, project, provider, sealed)
    with pytest.raises(crypto.InvalidTag):
        crypto.open_record(crypto.new_key(), "p", "openai", sealed)


# --------------------------------------------------------------------------- damage


def _assert_refused(path: Path, damaged: bytes) -> KeystoreError:
    """Opening fails with a KeystoreError naming the file, and the bytes stay as they are."""
    path.write_bytes(damaged)
    state.reset("keystore")
    store = KeyStore(path)
    with pytest.raises(CencoriError) as info:
        store.get("openai", "default")
    err = info.value
    assert isinstance(err, KeystoreError), type(err)
    assert err.path == path and str(path) in str(err)
    assert path.read_bytes() == damaged
    return err


def test_every_flipped_byte_is_detected(private_home: Path) -> None:
    """Each byte of the file XOR 0x01 (and XOR 0x80): an error naming the file; and a write
    attempted on the damaged store is refused and leaves the bytes alone."""
    _fill()
    path = _store_path(private_home)
    good = path.read_bytes()
    bak = (private_home / "keystore.bak").read_bytes()
    for pos in range(len(good)):
        for mask in (0x01, 0x80):
            damaged = bytearray(good)
            damaged[pos] ^= mask
            err = _assert_refused(path, bytes(damaged))
            assert OPENAI not in str(err)
        if pos % 97 == 0:
            with pytest.raises(KeystoreError):
                KeyStore(path).set_key("groq", "gsk_" + "w" * 20, project="default")
            assert path.read_bytes() == bytes(damaged)
            assert (private_home / "keystore.bak").read_bytes() == bak
    path.write_bytes(good)
    assert _fresh().get("openai", "default") is not None


_GOOD: dict[Path, bytes] = {}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_byte_changes_are_detected(private_home: Path, data: st.DataObject) -> None:
    """Any byte replaced by any other value: never a key, always a KeystoreError."""
    path = _store_path(private_home)
    if path not in _GOOD:  # the home is shared by the examples of one test run
        _fill()
        _GOOD[path] = path.read_bytes()
    good = _GOOD[path]
    pos = data.draw(st.integers(0, len(good) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != good[pos]))
    damaged = bytearray(good)
    damaged[pos] = value
    _assert_refused(path, bytes(damaged))
    path.write_bytes(good)


def test_truncated_and_emptied_files_are_refused(private_home: Path) -> None:
    """Every prefix of the file (including empty) and junk: KeystoreCorruptError."""
    _fill()
    path = _store_path(private_home)
    good = path.read_bytes()
    for length in range(len(good)):
        err = _assert_refused(path, good[:length])
        assert isinstance(err, KeystoreCorruptError)
        assert "keystore.bak" in str(err)  # says where the previous generation is
    for junk in (b"not json", b"\xff\xfe\x00", b"[]", b"{}", b"null", good + b"{}"):
        assert isinstance(_assert_refused(path, junk), KeystoreCorruptError)


def test_damaged_store_refuses_writes_and_backup_restores(private_home: Path) -> None:
    """A write on a damaged store fails, leaves it as it was; copying the .bak back is a
    rollback, refused until accepted on purpose (`keys rotate --accept-rollback`)."""
    keys.set("openai", OPENAI)
    keys.set("groq", "gsk_" + "g" * 20)
    path = _store_path(private_home)
    bak = private_home / "keystore.bak"
    path.write_bytes(path.read_bytes()[:-40])
    damaged, bak_bytes = path.read_bytes(), bak.read_bytes()
    state.reset("keystore")
    with pytest.raises(KeystoreCorruptError) as info:
        keys.set("anthropic", ANTHROPIC)
    assert str(bak) in str(info.value)
    assert path.read_bytes() == damaged and bak.read_bytes() == bak_bytes
    shutil.copy(bak, path)
    with pytest.raises(KeystoreError) as info:
        _fresh().get("openai", "default")
    assert info.value.code == "keystore_rollback" and "--accept-rollback" in str(info.value)
    assert keys.rotate(accept_rollback=True) == 1
    store = _fresh()
    assert store.get("openai", "default") is not None and store.get("groq", "default") is None


def test_missing_or_wrong_key_file(private_home: Path) -> None:
    """The key file gone: KeystoreError naming both; replaced: KeystoreCorruptError."""
    keys.set("openai", OPENAI)
    path = _store_path(private_home)
    key_file = private_home / json.loads(path.read_bytes())["kek"]["file"]
    saved = key_file.read_bytes()
    key_file.unlink()
    with pytest.raises(KeystoreError) as info:
        _fresh().status()
    assert info.value.code == "key_file_missing"
    assert str(path) in str(info.value) and str(key_file) in str(info.value)
    key_file.write_bytes(os.urandom(32))
    with pytest.raises(KeystoreCorruptError):
        _fresh().status()
    key_file.write_bytes(saved)
    assert _fresh().get("openai", "default") is not None


# --------------------------------------------------------------------------- passphrases


def test_passphrase_store_and_wrong_passphrase(
    private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CENCORI_NB_PASSPHRASE the DEK is wrapped by Argon2id; a wrong one is refused."""
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "correct horse battery staple")
    _fill()
    path = _store_path(private_home)
    doc = json.loads(path.read_bytes())
    assert doc["kek"]["source"] == "passphrase"
    kdf = doc["kek"]["kdf"]
    assert (kdf["name"], kdf["memory_cost"], kdf["iterations"], kdf["lanes"]) == (
        "argon2id",
        19456,
        2,
        1,
    )
    assert len(base64.b64decode(kdf["salt"])) == 16
    assert not list(private_home.glob("*.key"))
    before = path.read_bytes()

    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "correct horse battery stapler")
    with pytest.raises(WrongPassphraseError) as info:
        _fresh().get("openai", "default")
    assert info.value.path == path and str(path) in str(info.value)
    assert "CENCORI_NB_PASSPHRASE" in str(info.value)
    with pytest.raises(WrongPassphraseError):
        keys.set("groq", "gsk_" + "g" * 20)
    assert path.read_bytes() == before

    monkeypatch.delenv("CENCORI_NB_PASSPHRASE")
    with pytest.raises(WrongPassphraseError) as info:
        _fresh().status()
    assert info.value.code == "passphrase_required" and str(path) in str(info.value)

    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "correct horse battery staple")
    assert _fresh().get("openai", "default").api_key.reveal() == OPENAI  # type: ignore[union-attr]


def test_damaged_passphrase_header_is_detected(
    private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flips in the KDF parameters, salt, check value and wrapped DEK: a KeystoreError
    naming the file (a flipped wrapped DEK is told apart from a wrong passphrase)."""
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "pass phrase 1")
    keys.set("openai", OPENAI)
    path = _store_path(private_home)
    good = path.read_bytes()
    text = good.decode()
    targets = ['"memory_cost": 19456', '"salt": "', '"check": "', '"ciphertext": "']
    for target in targets:
        pos = text.index(target) + len(target) - 2 + (4 if target.endswith('"') else 1)
        damaged = bytearray(good)
        damaged[pos] ^= 0x01
        err = _assert_refused(path, bytes(damaged))
        if target == '"ciphertext": "':  # first ciphertext in the file is the wrapped DEK
            assert isinstance(err, KeystoreCorruptError)
    path.write_bytes(good)


def test_change_passphrase_keeps_records_and_retires_the_old(
    private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New passphrase opens everything; the old one opens neither the store nor its .bak."""
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "old passphrase")
    _fill()
    keys.change_passphrase("new passphrase")
    assert keys.status()[1].key_hint == "…G7h8"  # this process stays unlocked
    path = _store_path(private_home)
    with pytest.raises(WrongPassphraseError):
        _fresh().status()  # env still holds the old one
    for candidate in (path, private_home / "keystore.bak"):
        copy = private_home / "copy.json"
        shutil.copy(candidate, copy)
        state.reset("keystore")
        with pytest.raises(WrongPassphraseError):
            KeyStore(copy).status()
        copy.unlink()
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "new passphrase")
    store = _fresh()
    assert store.get("openai", "default").api_key.reveal() == OPENAI  # type: ignore[union-attr]
    assert store.get("anthropic", "research").api_key.reveal() == ANTHROPIC  # type: ignore
    assert store.cencori_key("default") == Secret(CSK)
    assert store.project_default("default") == "openai"


def test_change_passphrase_checks_old_and_takes_contract_form(
    private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explicit wrong ``old`` is refused; ``change_passphrase(old, new)`` also works."""
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "first")
    keys.set("openai", OPENAI)
    monkeypatch.delenv("CENCORI_NB_PASSPHRASE")
    state.reset("keystore")
    with pytest.raises(WrongPassphraseError):
        keys.change_passphrase("second", old="not it")
    keys.change_passphrase("first", "second")  # docs/contracts.md order: old, new
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "second")
    assert _fresh().get("openai", "default") is not None
    with pytest.raises(ConfigurationError):
        keys.change_passphrase("")


def test_change_passphrase_switches_a_key_file_store(
    private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key-file store becomes passphrase-protected and its key file is deleted."""
    keys.set("openai", OPENAI)
    assert list(private_home.glob("*.key"))
    keys.change_passphrase("now with a passphrase")
    assert not list(private_home.glob("*.key"))
    with pytest.raises(WrongPassphraseError):
        _fresh().status()
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "now with a passphrase")
    assert _fresh().kek_source == "passphrase"


def test_rotate_key_file_store(private_home: Path) -> None:
    """rotate(): every record kept, every ciphertext new, old key file deleted."""
    _fill()
    path = _store_path(private_home)
    before = json.loads(path.read_bytes())
    old_key_file = private_home / before["kek"]["file"]
    assert keys.rotate() == 4
    after = json.loads(path.read_bytes())
    assert after["kek"]["file"] != before["kek"]["file"] and not old_key_file.exists()
    assert [r["ciphertext"] for r in after["records"]] != [
        r["ciphertext"] for r in before["records"]
    ]
    assert not {r["ciphertext"] for r in after["records"]} & {
        r["ciphertext"] for r in before["records"]
    }
    assert (private_home / "keystore.bak").read_bytes() == path.read_bytes()
    store = _fresh()
    assert store.get("openai", "default").api_key.reveal() == OPENAI  # type: ignore[union-attr]
    assert store.get("anthropic", "research").api_key.reveal() == ANTHROPIC  # type: ignore
    assert store.cencori_key("default") == Secret(CSK)


def test_rotate_passphrase_store_needs_the_current_passphrase(
    private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rotate() with a passphrase: new salt and DEK; refused with a wrong passphrase."""
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "rotate me")
    _fill()
    path = _store_path(private_home)
    salt = json.loads(path.read_bytes())["kek"]["kdf"]["salt"]
    assert keys.rotate() == 4
    assert json.loads(path.read_bytes())["kek"]["kdf"]["salt"] != salt
    assert _fresh().get("anthropic", "research") is not None
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "not the passphrase")
    store = KeyStore(path)
    before = path.read_bytes()
    state.reset("keystore")
    with pytest.raises(WrongPassphraseError):
        store.rotate()
    assert path.read_bytes() == before


def test_kdf_runs_once_per_process_and_other_writes_are_seen(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, state_clock: Callable[[float], None]
) -> None:
    """One Argon2id per process; a write by another process is noticed without another,
    once a second has passed (the one-second rule of cencori_nb.state)."""
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "once")
    keys.set("openai", OPENAI)
    state.reset("keystore")
    start = crypto.kdf_runs()
    store = keystore.default_store()
    for _ in range(200):
        assert store.get("openai", "default") is not None
        assert keystore.default_store() is store
    assert crypto.kdf_runs() == start + 1
    code = "from cencori_nb import keys; keys.set('groq', 'gsk_' + 'q' * 20, project='other')"
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ), timeout=60)
    assert store.get("groq", "other") is None  # within the second: not looked at yet
    state_clock(1.0)
    got = store.get("groq", "other")
    assert got is not None and got.api_key.reveal() == "gsk_" + "q" * 20
    assert crypto.kdf_runs() == start + 1


def test_two_store_objects_see_each_others_writes(private_home: Path) -> None:
    """A cached store reloads when the file changes under it (stat check)."""
    a = KeyStore(_store_path(private_home))
    b = KeyStore(_store_path(private_home))
    a.set_key("openai", OPENAI, project="default")
    assert b.get("openai", "default") is not None
    b.remove("openai", project="default")
    assert a.get("openai", "default") is None
    a.set_key("openai", "sk-proj-third-key-000003", project="default")
    assert b.get("openai", "default").api_key.reveal() == "sk-proj-third-key-000003"  # type: ignore


# --------------------------------------------------------------------------- keyring


def _named(module: str, name: str, priority: float = 5) -> object:
    cls = type(name, (), {"priority": priority})
    cls.__module__ = module
    return cls()


def test_insecure_keyring_backends_are_refused() -> None:
    """PlaintextKeyring, keyrings.alt, fail and null backends never hold the KEK."""
    assert not is_secure_backend(_named("keyrings.alt.file", "PlaintextKeyring", 0.5))
    assert not is_secure_backend(_named("keyrings.alt.file", "EncryptedKeyring", 1))
    assert not is_secure_backend(_named("keyring.backends.fail", "Keyring", 0))
    assert not is_secure_backend(_named("keyring.backends.null", "Keyring", -1))
    assert not is_secure_backend(_named("somewhere", "PlaintextKeyring", 5))
    assert not is_secure_backend(_named("somewhere", "LowPriority", 0.5))
    assert is_secure_backend(_named("keyring.backends.SecretService", "Keyring", 5))
    chain = _named("keyring.backends.chainer", "ChainerBackend")
    chain.backends = [
        _named("keyring.backends.SecretService", "Keyring"),  # type: ignore
        _named("keyrings.alt.file", "PlaintextKeyring", 0.5),
    ]
    assert not is_secure_backend(chain)
    assert not is_secure_backend(None)


def test_keyring_kek_source(private_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a secure keyring the KEK lives there (no key file); rotation replaces the entry;
    without the keyring the store says so; a passphrase still wins over the keyring."""
    ring = FakeSecureKeyring()
    path = _store_path(private_home)
    store = KeyStore(path, keyring_backend=ring)
    store.set_key("openai", OPENAI, project="default")
    assert store.kek_source == "keyring" and not list(private_home.glob("*.key"))
    (entry,) = ring.items
    assert entry[0] == "cencori-nb"
    store.rotate()
    (entry2,) = ring.items
    assert entry2 != entry
    state.reset("keystore")
    assert KeyStore(path, keyring_backend=ring).get("openai", "default") is not None
    state.reset("keystore")  # a new process, where no keyring is reachable
    with pytest.raises(KeystoreError) as info:
        KeyStore(path, keyring_backend=None).status("default")
    assert info.value.code == "keyring_unavailable" and str(path) in str(info.value)

    other = private_home / "other.json"
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "phrase wins")
    KeyStore(other, keyring_backend=ring).set_key("openai", OPENAI, project="default")
    assert json.loads(other.read_bytes())["kek"]["source"] == "passphrase"


def test_default_store_uses_no_keyring_in_tests(private_home: Path) -> None:
    """The test env's null keyring backend is refused: a key file is used."""
    keys.set("openai", OPENAI)
    assert keystore.default_store().kek_source == "keyfile"


# --------------------------------------------------------------------------- API behaviour


def test_bad_input_is_refused_and_nothing_stored(private_home: Path) -> None:
    """Unknown providers, empty keys, inner whitespace and bad Cencori keys."""
    with pytest.raises(UnknownProviderError) as info:
        keys.set("openia", OPENAI)
    assert "openai" in str(info.value)
    for bad in ("", "   ", "\n\n", "\t"):
        with pytest.raises(ConfigurationError, match="empty"):
            keys.set("openai", bad)
    for bad in ("sk-proj-abc def", "sk-proj-abc\ndef", "sk-proj-abc\tdef", "sk-é-abcdef12"):
        with pytest.raises(ConfigurationError) as info:
            keys.set("openai", bad)
        assert bad.strip() not in str(info.value)
    with pytest.raises(ConfigurationError, match="csk_"):
        keys.set_cencori_key("sk-not-a-cencori-key")
    with pytest.raises(ConfigurationError):
        keys.set("openai", OPENAI, default_model="gpt 4o")
    with pytest.raises(ConfigurationError):
        keys.set("openai", OPENAI, project=" padded ")
    assert not _store_path(private_home).exists()
    assert not list(private_home.glob("*.key"))


def test_surrounding_whitespace_is_trimmed_and_secret_accepted(private_home: Path) -> None:
    """Copy-paste whitespace around a key is dropped; a Secret is accepted as the key."""
    keys.set("openai", f"  {OPENAI}\r\n")
    keys.set("anthropic", Secret(ANTHROPIC + "\n"))
    store = _fresh()
    assert store.get("openai", "default").api_key.reveal() == OPENAI  # type: ignore[union-attr]
    assert store.get("anthropic", "default").api_key.reveal() == ANTHROPIC  # type: ignore


def test_enable_disable_remove_default(private_home: Path) -> None:
    """Flags and the project default behave as the Providers page does."""
    keys.set("openai", OPENAI, default_model="gpt-4o-mini", make_default=True)
    keys.set("anthropic", ANTHROPIC)
    assert keys.disable("openai").enabled is False
    assert keys.enable("openai").enabled is True
    keys.set("openai", "sk-proj-replaced-0000001")  # default_model kept
    row = next(r for r in keys.status() if r.provider == "openai")
    assert row.default_model == "gpt-4o-mini" and row.is_default
    keys.set("anthropic", ANTHROPIC, make_default=True)
    assert [r.provider for r in keys.status() if r.is_default] == ["anthropic"]
    keys.remove("anthropic")
    assert keystore.default_store().project_default() is None
    with pytest.raises(KeyNotFoundError) as info:
        keys.remove("anthropic")
    assert "keys set anthropic" in str(info.value)
    with pytest.raises(KeyNotFoundError):
        keys.enable("groq")
    keys.set("cencori", CSK)
    keys.disable("cencori")
    assert keystore.default_store().cencori_key() is None
    assert next(r for r in keys.status() if r.provider == "cencori").enabled is False
    keys.enable("cencori")
    assert keystore.default_store().cencori_key() == Secret(CSK)


def test_project_comes_from_settings(private_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """project=None means settings.current_project() (CENCORI_NB_PROJECT here)."""
    monkeypatch.setenv("CENCORI_NB_PROJECT", "team-x")
    keys.set("openai", OPENAI)
    assert keys.projects() == ["team-x"]
    assert keystore.default_store().get("openai") is not None
    assert keys.status("default") == []


def test_secret_never_shows_itself() -> None:
    """repr, str, f-string, format and pickle of a Secret reveal nothing."""
    s = Secret(OPENAI)
    # the old formatting styles on purpose: each goes through a different dunder
    for text in (
        repr(s),
        str(s),
        f"{s}",
        f"{s!r}",
        "{}".format(s),  # noqa: UP032
        "%s" % s,  # noqa: UP031
        f"{s:>20}",
    ):
        assert OPENAI not in text and "G7h8" in text
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(TypeError):
        pickle.dumps([s])
    assert s.reveal() == OPENAI and s == Secret(OPENAI) and s != Secret(ANTHROPIC)
    assert Secret("short").hint == "…"


def test_store_objects_do_not_show_keys(private_home: Path) -> None:
    """repr of the store, its state, records and rows never holds a key or the DEK."""
    _fill()
    store = keystore.default_store()
    store.status()
    text = repr(store) + repr(store._state) + repr(store.get("openai"))
    assert OPENAI not in text and CSK not in text
    assert store._state is not None and repr(store._state.dek) not in text


def test_importing_the_keystore_and_cli_stays_light() -> None:
    """``cencori_nb.keystore`` and the CLI parser load neither cryptography nor filelock."""
    code = (
        "import sys, cencori_nb.keystore, cencori_nb.cli; cencori_nb.cli.build_parser(); "
        "print(sorted(m for m in ('cryptography', 'filelock', 'cencori_nb.keystore.store') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "[]"


def test_opening_the_store_registers_its_keys_with_redact(private_home: Path) -> None:
    """The store tells cencori_nb.redact its keys when it opens or writes them, and not
    before (the scrubbers never reach into the store)."""
    from cencori_nb import redact

    keys.set("openai", OPENAI)
    assert OPENAI in redact.registered_secrets()  # written → registered
    state.reset("keystore")
    state.reset("redact")
    keystore.default_store()
    assert OPENAI not in redact.registered_secrets()  # created but not yet opened
    keystore.default_store().status()
    assert OPENAI in redact.registered_secrets()  # opened → registered
    assert redact.LOG_LINE.scrub(f"x {OPENAI} y") == f"x {redact.MARKER} y"


def test_foreign_key_files_are_left_alone(private_home: Path) -> None:
    """Key-file clean-up only touches this store's own key files."""
    private_home.mkdir(parents=True, exist_ok=True)
    foreign = private_home / "keystore-extra-0123456789abcdef.key"
    foreign.write_bytes(os.urandom(32))
    keys.set("openai", OPENAI)
    keys.rotate()
    assert foreign.exists()


def test_passphrase_set_on_a_key_file_store_is_flagged(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A passphrase in the environment does not silently pretend to protect a key-file store."""
    keys.set("openai", OPENAI)
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "too late")
    with caplog.at_level("WARNING", logger="cencori_nb.keystore"):
        assert _fresh().get("openai", "default") is not None
    assert "keys passphrase" in caplog.text and "key" + "file" in caplog.text
