"""Where the key-encryption key (KEK) comes from, in this order when a store is created:

1. ``CENCORI_NB_PASSPHRASE`` → Argon2id (m=19456 KiB, t=2, p=1, random 16-byte salt);
2. a *secure* OS keyring, when the optional ``keyring`` package is importable and its
   backend is a real credential store (never ``PlaintextKeyring``, the ``fail`` or ``null``
   backends, or anything from ``keyrings.alt``, which stores keys base64-encoded or with an
   unauthenticated cipher);
3. a random 32-byte key file (0600) next to the store.

The store file records which source wrapped its data key (the ``kek`` header), so a later
open uses the same one, and says clearly what is missing when it is not available. Each
source's material carries a random id, so rotating writes new material under a new name
before the old one is retired: a crash in between never strands the store.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import KeystoreCorruptError, KeystoreError, WrongPassphraseError
from ..home import FILE_MODE, private_umask
from ..redact import register_secret
from . import crypto
from .secret import Secret

__all__ = [
    "ENV_PASSPHRASE",
    "KEYRING_SERVICE",
    "Kek",
    "checked_passphrase",
    "is_secure_backend",
    "load_kek",
    "new_kek",
    "new_keyfile_kek",
    "new_keyring_kek",
    "new_passphrase_kek",
    "passphrase_from_env",
    "ref",
    "retire",
    "secure_keyring",
    "validate_header",
]

log = logging.getLogger("cencori_nb.keystore")

ENV_PASSPHRASE = "CENCORI_NB_PASSPHRASE"  # noqa: S105 (the variable name, not a secret)
KEYRING_SERVICE = "cencori-nb"
_ID_RE = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class Kek:
    """A KEK and its non-secret description (stored in the file)."""

    header: dict[str, Any]
    key: bytes

    def __repr__(self) -> str:  # never show the key
        return f"Kek(source={self.header.get('source')!r})"


def passphrase_from_env() -> Secret | None:
    """``CENCORI_NB_PASSPHRASE`` as a :class:`Secret` (a traceback printed with its frames'
    values then shows only ``…`` and four characters), or None when it is not set.

    Set but empty (or only whitespace) is a :class:`KeystoreError`, never "no passphrase":
    a store must not silently end up protected by a key file because a variable was blank.
    Text that is not valid UTF-8 (bytes the locale could not decode, which Python keeps as
    lone surrogates) is a :class:`KeystoreError` too, not a ``UnicodeEncodeError``.
    """
    value = os.environ.get(ENV_PASSPHRASE)
    if value is None:
        return None
    return checked_passphrase(Secret(value), ENV_PASSPHRASE)


def checked_passphrase(phrase: str | Secret, what: str = "The passphrase") -> Secret:
    """``phrase`` as a :class:`Secret` if it can protect a store, else a KeystoreError
    saying why (empty, or not valid UTF-8). The message never contains the passphrase."""
    secret = phrase if isinstance(phrase, Secret) else Secret(phrase)
    problem = _passphrase_problem(secret)
    if problem is None:
        # Scrubbed like a key from logs, messages, replies and saved notebooks: `%env` or
        # `os.environ` printed in a notebook would otherwise share it with the notebook.
        register_secret(secret)
        return secret
    code, detail, hint = problem
    raise KeystoreError(f"{what} {detail}", hint=hint, code=code)


def _passphrase_problem(secret: Secret) -> tuple[str, str, str] | None:
    """``(code, detail, hint)`` if ``secret`` is not a usable passphrase, else None (a
    helper that returns, so no raising frame holds the passphrase in clear)."""
    clear = secret.reveal()
    if not isinstance(clear, str):
        return ("passphrase_invalid", "must be text.", "Pass a str; nothing was changed.")
    if not clear.strip():
        return (
            "passphrase_empty",
            "is set but empty (or only whitespace).",
            f"Set it to your passphrase, or unset it (`unset {ENV_PASSPHRASE}`) to use "
            "a key file or the OS keyring; nothing was read or written.",
        )
    try:
        clear.encode("utf-8")
    except UnicodeEncodeError:
        return (
            "passphrase_invalid",
            "is not valid UTF-8 text (it holds bytes that the locale could not decode).",
            "Set it again from a UTF-8 terminal or file (check `locale`), using only "
            "text characters; nothing was read or written.",
        )
    return None


# --------------------------------------------------------------------------- keyring


def is_secure_backend(backend: Any) -> bool:
    """True only for a keyring backend that really protects what it stores.

    Refused: ``keyring.backends.fail`` / ``null``, anything from ``keyrings.alt``
    (``PlaintextKeyring`` writes base64, ``EncryptedKeyring`` is unauthenticated CFB),
    anything named plaintext, backends with priority below 1, and a chainer holding any of
    those.
    """
    if backend is None:
        return False
    cls = type(backend)
    module, name = cls.__module__ or "", cls.__name__
    if name == "ChainerBackend":
        members = list(getattr(backend, "backends", []) or [])
        return bool(members) and all(is_secure_backend(b) for b in members)
    if module.startswith("keyrings.alt") or module in (
        "keyring.backends.fail",
        "keyring.backends.null",
    ):
        return False
    if "plaintext" in name.lower() or "plaintext" in module.lower():
        return False
    try:
        priority = float(getattr(cls, "priority", 0))
    except Exception:  # a backend whose priority probe fails is not usable here
        return False
    return priority >= 1


def secure_keyring() -> Any | None:
    """The process's keyring backend if ``keyring`` is installed and the backend is secure."""
    try:
        import keyring
    except ImportError:
        return None
    try:
        backend = keyring.get_keyring()
    except Exception as exc:  # a broken keyring configuration: fall back, say why at debug
        log.debug("keyring unavailable: %s", type(exc).__name__)
        return None
    return backend if is_secure_backend(backend) else None


# --------------------------------------------------------------------------- creating KEKs


def new_passphrase_kek(passphrase: str | Secret) -> Kek:
    """A KEK derived from ``passphrase`` with a fresh salt (one Argon2id run)."""
    passphrase = checked_passphrase(passphrase)
    params = crypto.Argon2Params.fresh()
    return Kek(
        {"source": "passphrase", "kdf": params.to_json()}, crypto.derive_kek(passphrase, params)
    )


def new_keyring_kek(backend: Any) -> Kek:
    """A random KEK stored in the OS keyring under a fresh name."""
    key = crypto.new_key()
    username = f"keystore-kek-{secrets.token_hex(8)}"
    backend.set_password(KEYRING_SERVICE, username, base64.b64encode(key).decode("ascii"))
    return Kek({"source": "keyring", "service": KEYRING_SERVICE, "username": username}, key)


def new_keyfile_kek(store_path: Path) -> Kek:
    """A random KEK written to a new 0600 key file next to the store (fsynced)."""
    key = crypto.new_key()
    name = f"{store_path.stem}-{secrets.token_hex(8)}.key"
    path = store_path.parent / name
    with private_umask():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        try:
            if os.write(fd, key) != len(key):
                raise OSError(28, os.strerror(28), str(path))  # a short write: disk full
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        # (a full disk or a size limit: an empty or partial key file must not stay behind)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    if os.name == "posix":
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return Kek({"source": "keyfile", "file": name}, key)


def new_kek(store_path: Path, *, passphrase: str | Secret | None, backend: Any | None) -> Kek:
    """Choose the source for a new store (or a rotation) in the documented order."""
    if passphrase is not None:  # an empty one was refused by checked_passphrase
        return new_passphrase_kek(passphrase)
    if backend is not None:
        try:
            return new_keyring_kek(backend)
        except Exception as exc:  # keyring refused: a key file is the documented fallback
            log.warning(
                "OS keyring %s refused to store the key store's key (%s); using a "
                "key file instead.",
                type(backend).__name__,
                type(exc).__name__,
            )
    return new_keyfile_kek(store_path)


# --------------------------------------------------------------------------- reading KEKs


def validate_header(header: Any) -> None:
    """Raise ``ValueError`` unless ``header`` is a well-formed KEK description."""
    if not isinstance(header, dict):
        raise ValueError("kek header is not an object")
    source = header.get("source")
    fields = set(header) - {"check"}
    if source == "passphrase":
        if fields != {"source", "kdf"}:
            raise ValueError("unexpected passphrase header fields")
        crypto.Argon2Params.from_json(header["kdf"])
    elif source == "keyring":
        if fields != {"source", "service", "username"} or header["service"] != KEYRING_SERVICE:
            raise ValueError("unexpected keyring header fields")
        username = header["username"]
        if not (
            isinstance(username, str)
            and username.startswith("keystore-kek-")
            and _ID_RE.fullmatch(username.removeprefix("keystore-kek-"))
        ):
            raise ValueError("bad keyring entry name")
    elif source == "keyfile":
        if fields != {"source", "file"}:
            raise ValueError("unexpected key file header fields")
        name = header["file"]
        # only a plain name in the store's directory: a damaged header cannot point elsewhere
        if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_.-]+-[0-9a-f]{16}\.key", name)):
            raise ValueError("bad key file name")
    else:
        raise ValueError("unknown kek source")


def ref(header: dict[str, Any]) -> tuple[str, str] | None:
    """The identity of a header's key material (for retiring it), or None for passphrases."""
    source = header.get("source")
    if source == "keyfile":
        return ("keyfile", str(header.get("file")))
    if source == "keyring":
        return ("keyring", str(header.get("username")))
    return None


def load_kek(
    header: dict[str, Any],
    store_path: Path,
    *,
    passphrase: str | Secret | None,
    backend: Any | None,
) -> bytes:
    """The KEK a (validated) header describes. ``passphrase`` overrides the environment."""
    source = header["source"]
    if source == "passphrase":
        phrase = passphrase if passphrase is not None else passphrase_from_env()
        if not phrase:
            raise WrongPassphraseError(
                f"The key store {store_path} is protected by a passphrase, but "
                f"{ENV_PASSPHRASE} is not set.",
                hint=f"Set {ENV_PASSPHRASE} to its passphrase in the environment of this "
                "shell or kernel, then try again.",
                code="passphrase_required",
                path=store_path,
            )
        phrase = checked_passphrase(
            phrase, "The passphrase given" if passphrase is not None else ENV_PASSPHRASE
        )
        return crypto.derive_kek(phrase, crypto.Argon2Params.from_json(header["kdf"]))
    if source == "keyfile":
        file_name: str = header["file"]  # validate_header checked: a plain name, a str
        key_path = store_path.parent / file_name
        try:
            data = key_path.read_bytes()
        except FileNotFoundError:
            raise KeystoreError(
                f"The key store {store_path} is locked by the key file {key_path}, which is "
                "missing.",
                hint=f"Restore {key_path} from a backup. Without it the stored keys cannot be "
                f"read: delete {store_path} and set your keys again.",
                code="key_file_missing",
                path=store_path,
                key_file=key_path,
            ) from None
        if len(data) != crypto.KEY_BYTES:
            raise KeystoreCorruptError(
                f"The key file {key_path} of the key store {store_path} is damaged "
                f"({len(data)} bytes instead of {crypto.KEY_BYTES}).",
                hint=f"Restore {key_path} from a backup, or delete {store_path} and set your "
                "keys again.",
                path=store_path,
                key_file=key_path,
            )
        return data
    # keyring
    username = header["username"]
    if backend is None:
        raise KeystoreError(
            f"The key store {store_path} is locked by a key in the OS keyring "
            f"({KEYRING_SERVICE}/{username}), and no secure keyring is reachable from this "
            "process.",
            hint="Run where that keyring is unlocked (same user session), or delete "
            f"{store_path} and set your keys again.",
            code="keyring_unavailable",
            path=store_path,
        )
    try:
        stored = backend.get_password(KEYRING_SERVICE, username)
    except Exception as exc:
        raise KeystoreError(
            f"The OS keyring did not give the key of the key store {store_path} "
            f"({type(exc).__name__}).",
            hint="Unlock the keyring (e.g. log in to the desktop session) and try again.",
            code="keyring_unavailable",
            path=store_path,
        ) from None
    if stored is None:
        raise KeystoreError(
            f"The key store {store_path} is locked by the OS keyring entry "
            f"{KEYRING_SERVICE}/{username}, which is missing.",
            hint=f"Restore that keyring entry, or delete {store_path} and set your keys again.",
            code="keyring_entry_missing",
            path=store_path,
        )
    try:
        key = base64.b64decode(stored.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        key = b""
    if len(key) != crypto.KEY_BYTES:
        raise KeystoreCorruptError(
            f"The OS keyring entry {KEYRING_SERVICE}/{username} of the key store "
            f"{store_path} is damaged.",
            hint=f"Delete {store_path} and set your keys again.",
            path=store_path,
        )
    return key


def retire(header_ref: tuple[str, str], store_path: Path, backend: Any | None) -> None:
    """Delete key material no store generation refers to any more (best effort)."""
    kind, name = header_ref
    if kind == "keyfile":
        with contextlib.suppress(FileNotFoundError):
            (store_path.parent / name).unlink()
    elif kind == "keyring" and backend is not None:
        try:
            backend.delete_password(KEYRING_SERVICE, name)
        except Exception as exc:  # already gone, or keyring locked: nothing depends on it
            log.debug("could not delete keyring entry: %s", type(exc).__name__)
