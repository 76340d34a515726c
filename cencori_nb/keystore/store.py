"""The key store file: records, atomic writes, the cross-process lock, the in-process cache.

One JSON file, ``keystore.json`` in the per-user home (0600; the home is 0700)::

    {"format": "cencori-nb-keystore", "version": 1, "generation": 7,
     "kek": {"source": "passphrase" | "keyring" | "keyfile", …, "check": …},
     "dek": {"nonce": …, "ciphertext": …},          # the data key, wrapped by the KEK
     "records": [{"project": …, "provider": …, "nonce": …, "ciphertext": …}, …],
     "mac": {"nonce": …, "tag": …}}                 # AES-GCM tag over everything above

One record per (project, provider). A provider record seals ``{key, enabled,
default_model}``; the ``cencori`` record seals the managed project key; the ``@project``
record seals the project default provider. Every field that changes behaviour is inside a
ciphertext or covered by associated data; the MAC binds the record set and the generation.

Writing: take the ``keystore.lock`` file lock, re-read the file, change, write a temp file,
fsync, keep the old file as ``keystore.bak``, ``os.replace``, fsync the directory. A store
that does not open (wrong passphrase, damaged) is never written: every write goes through
the same load first.

Reading: the process keeps the opened store and compares the file's signature (inode,
mtime, ctime, size) with the one it read; another process's write changes it and the file
is read again. The signature comes from :class:`cencori_nb.state.FileWatch`: a ``stat`` at
most once a second, and at once after :func:`cencori_nb.state.recheck` (before a retry
after a 401, before "not configured"); this process's own writes are seen at once. The
unwrapped data key is cached per wrapped key, so the KDF runs once per process.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import state
from ..catalog import CENCORI, PROVIDERS, provider_info
from ..errors import (
    CencoriError,
    ConfigurationError,
    KeyNotFoundError,
    KeystoreCorruptError,
    KeystoreError,
    WrongPassphraseError,
)
from ..home import DIR_MODE, atomic_write, ensure_home, home_dir, private_umask
from ..redact import holds_secret, looks_like_key, register_secrets
from ..settings import current_project
from . import crypto, kek
from .secret import Secret

__all__ = [
    "PROJECT_SLOT",
    "STORE_FILE",
    "KeyStatus",
    "KeyStore",
    "ProviderKey",
    "clean_api_key",
    "clean_model",
    "clean_project",
    "clean_provider",
]

log = logging.getLogger("cencori_nb.keystore")

STORE_FILE = "keystore.json"
PROJECT_SLOT = "@project"  # the record holding project-level choices (default provider)
_DOC_FIELDS = {"format", "version", "generation", "kek", "dek", "records", "mac"}
_RECORD_FIELDS = {"project", "provider", "nonce", "ciphertext"}
_MAX_NAME = 200
# Errors a second read under the lock cannot cure (the environment is what is wrong).
_FINAL_CODES = frozenset(
    {
        "passphrase_required",
        "passphrase_empty",
        "passphrase_invalid",
        "keystore_locked",
        "keystore_unreadable",
        "keyring_unavailable",
    }
)

# wrapped-DEK fingerprint -> DEK. A wrapped key this process has opened once is not opened
# again (no second Argon2id), whichever KeyStore object reads it.
_dek_cache: dict[bytes, bytes] = {}
# Unwrapped keys do not depend on the home (a wrapped key opens to the same key anywhere):
# dropped only by a full reset (a fresh process, for tests).
state.on_reset("keystore.data_keys", _dek_cache.clear, env=())


# --------------------------------------------------------------------------- public values


@dataclass(frozen=True)
class ProviderKey:
    """A stored BYOK key. ``api_key`` is a :class:`Secret`; the repr shows only its hint."""

    provider: str
    api_key: Secret
    enabled: bool
    default_model: str | None

    @property
    def hint(self) -> str:
        return self.api_key.hint


@dataclass(frozen=True)
class KeyStatus:
    """One row of ``keys.status()``: what is stored, never the key."""

    provider: str
    enabled: bool
    key_hint: str
    default_model: str | None
    is_default: bool
    # Only on the row a write returns: the hint of the key it replaced (None if there was
    # none, or it was the same key) and notes on an unusual key shape. Not in to_dict().
    replaces: str | None = field(default=None, compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The ``keys list --json`` object."""
        return {
            "provider": self.provider,
            "enabled": self.enabled,
            "key_hint": self.key_hint,
            "default_model": self.default_model,
            "is_default": self.is_default,
        }


# --------------------------------------------------------------------------- validation


def clean_provider(provider: str, *, allow_cencori: bool = True) -> str:
    """The provider's canonical name (matched case-insensitively, so ``OpenAI`` is
    ``openai``), or :class:`UnknownProviderError` listing the known ones."""
    if not isinstance(provider, str):
        raise ConfigurationError("The provider name must be a string.")
    name = provider.strip().lower()
    if allow_cencori and name == CENCORI:
        return name
    if name in PROVIDERS:
        return name
    return provider_info(provider).name  # raises UnknownProviderError, naming what was typed


def clean_project(project: str) -> str:
    """A project name: non-empty printable text without surrounding spaces."""
    if not isinstance(project, str) or not project.strip():
        raise ConfigurationError(
            "The project name is empty.", hint="Pass project='name' or set CENCORI_NB_PROJECT."
        )
    if project != project.strip() or len(project) > _MAX_NAME or not project.isprintable():
        raise ConfigurationError(
            f"The project name {project!r} has surrounding spaces, control characters or is "
            f"longer than {_MAX_NAME} characters.",
            hint="Use a short plain name.",
        )
    if project == PROJECT_SLOT:
        raise ConfigurationError(f"{PROJECT_SLOT!r} is reserved.", hint="Use another name.")
    if looks_like_key(project) or holds_secret(project):  # a key pasted as the project
        raise ConfigurationError(
            "The project name looks like an API key; nothing was done.",
            hint="Give keys on stdin or in the key field; project names "
            "look like 'default' or 'research'.",
        )
    return project


def clean_model(model: str | None) -> str | None:
    """A default model name (optional); surrounding spaces dropped, none inside."""
    if model is None:
        return None
    if not isinstance(model, str) or not model.strip():
        raise ConfigurationError(
            "The default model is empty.", hint="Leave it out, or name a model such as gpt-4o-mini."
        )
    model = model.strip()
    if looks_like_key(model) or holds_secret(model):  # shaped, or one of the stored keys
        # A key pasted into the model field: stored, it would be shown in clear everywhere a
        # default model is (keys list, the panel's dropdown, %cencori providers).
        raise ConfigurationError(
            "The default model looks like an API key; nothing was stored.",
            hint="Give the key on stdin or in the key field; model ids look like gpt-4o-mini.",
        )
    if any(ch.isspace() for ch in model) or not model.isprintable():
        raise ConfigurationError(
            f"The default model {model!r} contains spaces or control characters.",
            hint="Model ids look like gpt-4o-mini.",
        )
    return model


MIN_KEY_LENGTH = 12  # every real provider key is far longer; "hello" or "sk-abc" is a slip
_MAX_KEY_LENGTH = 512  # longer is possible (JWT-style tokens) but worth a warning
_USUAL_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
_FORCE_HINT = (
    'If it really is right, repeat with --force (force=True in Python, "Save even '
    'if the key looks wrong" in the panel).'
)


def clean_api_key(
    provider: str, api_key: str | Secret, *, force: bool = False, notes: list[str] | None = None
) -> Secret:
    """Validate and normalise an API key; the message never contains the key.

    Surrounding whitespace and line breaks (from copy-paste or ``echo key |``) are removed.
    Always refused: an empty key, control or non-ASCII characters (a line break inside a key
    would split a request header), and a Cencori project key that does not start with
    ``csk_``. Refused unless ``force``: a key carrying another provider's known prefix (an
    ``sk-ant-…`` key as the OpenAI key, a ``csk_…`` key as a provider key), a key shorter than
    :data:`MIN_KEY_LENGTH`, or a space inside it. Any other unusual shape (no usual prefix,
    unusual characters, very long) is stored with a note appended to ``notes`` (and logged as
    a warning). The prefixes come from :data:`cencori_nb.redact.KEY_PREFIXES`.
    """
    name = _key_name(provider)
    if isinstance(api_key, str):
        api_key = Secret(api_key)
    # The checks run in a helper that *returns* the problem: when the error is raised, no
    # frame in its traceback holds the key in clear (``%xmode Verbose``, ``--showlocals``
    # and error trackers print the locals of every frame they show).
    found: list[str] = []
    problem = _key_problem(provider, name, api_key, bool(force), found)
    if problem is not None:
        message, hint = problem
        raise ConfigurationError(message, hint=hint, code="bad_key_shape", provider=provider)
    for note in found:
        log.warning("%s", note)
    if notes is not None:
        notes.extend(found)
    return Secret(api_key.reveal().strip())


def _key_name(provider: str) -> str:
    if provider == CENCORI:
        return "Cencori project"
    info = PROVIDERS.get(provider)
    return info.display_name if info is not None else provider


def _prefix_owner(raw: str) -> tuple[str, list[str]] | None:
    """The longest known key prefix ``raw`` starts with and the providers that use it."""
    from ..redact import KEY_PREFIXES

    matches = [p for p in KEY_PREFIXES if raw.startswith(p)]
    if not matches:
        return None
    prefix = max(matches, key=len)
    return prefix, KEY_PREFIXES[prefix].split("/")


def _key_problem(
    provider: str, name: str, api_key: object, force: bool, notes: list[str]
) -> tuple[str, str | None] | None:
    """``(message, hint)`` saying why ``api_key`` (a Secret) is refused, or None; notes on
    shapes that are only unusual are appended to ``notes``."""
    raw = api_key.reveal() if isinstance(api_key, Secret) else api_key
    if not isinstance(raw, str):
        return (f"The {name} key must be text (a str or a Secret), not {type(raw).__name__}.", None)
    raw = raw.strip()
    if not raw:
        return f"The {name} key is empty.", "Paste the whole key; nothing was stored."
    if any(ch.isspace() and ch != " " for ch in raw):
        return (
            f"The {name} key contains a line break or a tab inside it.",
            "A key is one unbroken string: paste it again; nothing was stored.",
        )
    if any(not 0x20 <= ord(ch) <= 0x7E for ch in raw):
        return (
            f"The {name} key contains characters that are not printable ASCII.",
            "Paste it again from the provider's console; nothing was stored.",
        )
    if provider == CENCORI and not raw.startswith("csk_"):
        return (
            "A Cencori project key starts with 'csk_'.",
            "Copy it from the Cencori dashboard (Project → API keys); nothing was stored.",
        )
    refusals: list[str] = []
    if " " in raw:
        refusals.append("contains a space or a line break inside it (a key is one unbroken string)")
    if len(raw) < MIN_KEY_LENGTH and provider != "local":
        # (a local server's key is often a placeholder such as "ollama")
        refusals.append(
            f"is only {len(raw)} characters long (real keys are much longer: "
            "was only part of it pasted?)"
        )
    owner = _prefix_owner(raw)
    if owner is not None and provider != CENCORI:
        prefix, owners = owner
        if provider not in owners and not (provider == "local" and prefix == "sk-"):
            # "sk-" is also what local proxies (LiteLLM) hand out; anything more specific
            # is a real provider's key in the wrong slot
            whose = " or ".join(
                _key_name(o) if o in PROVIDERS or o == CENCORI else o for o in owners
            )
            where = (
                "cencori-nb keys set cencori"
                if owners == [CENCORI]
                else f"cencori-nb keys set {owners[0]}"
                if owners[0] in PROVIDERS
                else "the right provider"
            )
            # (the prefix itself is not quoted: the CLI blanks anything key-shaped in a
            # message, and "sk-ant-" quoted alone already looks like a key to it)
            refusals.append(f"starts with the prefix of {whose} keys (store it with `{where}`)")
    if refusals:
        if not force:
            return (
                f"The key given as the {name} key {'; and it '.join(refusals)}; nothing "
                "was stored.",
                _FORCE_HINT,
            )
        notes.append(f"The {name} key {'; and it '.join(refusals)}; stored anyway (forced).")
        return None
    usual = PROVIDERS[provider].key_prefix if provider in PROVIDERS else "csk_"
    if usual and not raw.startswith(usual) and owner is None:
        notes.append(
            f"The {name} key does not start with {usual!r}, the usual prefix; stored anyway."
        )
    if not set(raw) <= _USUAL_KEY_CHARS:
        notes.append(
            f"The {name} key contains characters keys rarely have (only letters, "
            "digits, '-', '_' and '.' are usual); stored anyway."
        )
    if len(raw) > _MAX_KEY_LENGTH:
        notes.append(
            f"The {name} key is {len(raw)} characters long, longer than keys "
            "usually are; stored anyway."
        )
    return None


# --------------------------------------------------------------------------- internal state


@dataclass(frozen=True)
class _Record:
    """A decrypted record; ``sealed`` is its ciphertext on disk (None: seal on next write)."""

    key: Secret | None = None  # None only for the project slot
    enabled: bool = True
    default_model: str | None = None
    default_provider: str | None = None  # project slot only
    sealed: crypto.Sealed | None = field(default=None, repr=False)

    def fields(self, provider: str) -> dict[str, Any]:
        if provider == PROJECT_SLOT:
            return {"default_provider": self.default_provider}
        assert self.key is not None
        if provider == CENCORI:
            return {"key": self.key.reveal(), "enabled": self.enabled}
        return {
            "key": self.key.reveal(),
            "enabled": self.enabled,
            "default_model": self.default_model,
        }


@dataclass(frozen=True)
class _State:
    """One generation of the store, opened."""

    raw: bytes = field(repr=False)  # the file bytes (b"" for a store not yet written)
    generation: int
    kek_header: dict[str, Any]
    wrapped: crypto.Sealed = field(repr=False)
    dek: bytes = field(repr=False)
    records: dict[tuple[str, str], _Record]
    # ProviderKey objects handed out by get(), built once per generation (init=False: a
    # dataclasses.replace() starts with an empty one)
    views: dict[tuple[str, str], ProviderKey | None] = field(
        init=False, default_factory=dict, repr=False
    )


_Sig = tuple[int, int, int, int]


def _sig(st: os.stat_result) -> _Sig:
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def _dek_fingerprint(header: dict[str, Any], wrapped: crypto.Sealed) -> bytes:
    return hashlib.sha256(crypto.wrap_aad(header) + wrapped.nonce + wrapped.ciphertext).digest()


_AUTO: Any = object()


def _register(records: dict[tuple[str, str], _Record]) -> None:
    """Tell the scrubbers (:mod:`cencori_nb.redact`) every key this store holds, so logs,
    messages and saved notebooks blank them wherever they appear."""
    register_secrets(r.key for r in records.values() if r.key is not None)


# --------------------------------------------------------------------------- the store


class KeyStore:
    """The encrypted per-user key store. Use :func:`cencori_nb.keystore.default_store`.

    Reads (``get``, ``cencori_key``, ``project_default``, ``all_secrets``, ``projects``,
    ``status``) cost a dict lookup once the store is open, and a ``stat`` at most once a
    second (the module docstring says when sooner). Writes take the file lock and re-read
    the file inside it.
    """

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        keyring_backend: Any = _AUTO,
        lock_timeout: float = 30.0,
    ) -> None:
        self.path = Path(path) if path is not None else home_dir() / STORE_FILE
        self.backup_path = self.path.with_suffix(".bak")
        self.lock_path = self.path.with_suffix(".lock")
        # the newest generation seen, kept outside the store file (rollback detection)
        self.seen_path = self.path.with_name(self.path.name + ".generation")
        self._probing = True  # a wrong passphrase may try the backup (see _probe)
        self._keyring = keyring_backend  # _AUTO: look it up when first needed
        self._lock_timeout = lock_timeout
        self._mutex = threading.RLock()
        self._state: _State | None = None
        self._sig: _Sig | None = None
        self._watch = state.watch(self.path)  # shared by every KeyStore of this path
        self._warned = False

    def __repr__(self) -> str:
        return f"KeyStore({str(self.path)!r})"

    # ----------------------------------------------------------------------- reads

    def get(self, provider: str, project: str | None = None) -> ProviderKey | None:
        """The stored BYOK key of ``provider`` in ``project`` (enabled or not), or None."""
        state = self._snapshot()
        if state is None:
            return None
        slot = (self._project(project), provider)
        try:
            return state.views[slot]
        except KeyError:
            pass
        record = state.records.get(slot)
        view = None
        if (
            record is not None
            and record.key is not None
            and provider not in (CENCORI, PROJECT_SLOT)
        ):
            view = ProviderKey(provider, record.key, record.enabled, record.default_model)
        state.views[slot] = view
        return view

    def cencori_key(self, project: str | None = None) -> Secret | None:
        """The project's Cencori key (``csk_…``, the managed route); None if unset or
        disabled."""
        record = self._records().get((self._project(project), CENCORI))
        if record is None or not record.enabled:
            return None
        return record.key

    def project_default(self, project: str | None = None) -> str | None:
        """The provider marked "Set as project default", or None."""
        record = self._records().get((self._project(project), PROJECT_SLOT))
        return record.default_provider if record is not None else None

    def all_secrets(self) -> list[Secret]:
        """Every stored key of every project (for the save-time scrubber and log filter)."""
        return [r.key for r in self._records().values() if r.key is not None]

    def projects(self) -> list[str]:
        """Projects that have at least one record, sorted."""
        return sorted({p for (p, _), _r in self._records().items()})

    def status(self, project: str | None = None) -> list[KeyStatus]:
        """Rows for ``project`` sorted by provider; a ``cencori`` row if a managed key is set."""
        project = self._project(project)
        records = self._records()
        slot = records.get((project, PROJECT_SLOT))
        default = slot.default_provider if slot is not None else None
        rows = []
        for (proj, provider), record in sorted(records.items()):
            if proj != project or provider == PROJECT_SLOT or record.key is None:
                continue
            rows.append(
                KeyStatus(
                    provider,
                    record.enabled,
                    record.key.hint,
                    None if provider == CENCORI else record.default_model,
                    provider == default,
                )
            )
        return rows

    @property
    def kek_source(self) -> str | None:
        """``passphrase``, ``keyring`` or ``keyfile``; None while no store file exists."""
        state = self._snapshot()
        return state.kek_header["source"] if state is not None else None

    def signature(self) -> _Sig | None:
        """The store file's signature (None: no file), at most a second old: what a cache
        of answers derived from the store compares to know they still hold."""
        try:
            return self._watch.signature()
        except OSError as exc:
            raise self._unreadable(exc) from None

    def is_open(self) -> bool:
        """True once this process holds the opened (unlocked) store."""
        return self._state is not None

    # ----------------------------------------------------------------------- writes

    def set_key(
        self,
        provider: str,
        api_key: str | Secret,
        *,
        project: str | None = None,
        default_model: str | None = None,
        make_default: bool = False,
        enabled: bool = True,
        force: bool = False,
    ) -> KeyStatus:
        """Store (or replace) a BYOK key. ``default_model=None`` keeps the stored one.

        A key of the wrong shape (another provider's prefix, too short, a space inside) is
        refused unless ``force``; see :func:`clean_api_key`. The returned row's ``replaces``
        is the hint of the key this one replaced, ``notes`` what was unusual about it."""
        provider = clean_provider(provider, allow_cencori=False)
        project = self._project(project)
        notes: list[str] = []
        secret = clean_api_key(provider, api_key, force=force, notes=notes)
        model = clean_model(default_model)
        replaced: list[str] = []

        def change(records: dict[tuple[str, str], _Record]) -> None:
            old = records.get((project, provider))
            if old is not None and old.key is not None and old.key != secret:
                replaced.append(old.key.hint)
            keep_model = old.default_model if old is not None and model is None else model
            records[(project, provider)] = _Record(secret, bool(enabled), keep_model)
            if make_default:
                records[(project, PROJECT_SLOT)] = _Record(default_provider=provider)

        self._modify(change)
        log.debug("stored a %s key for project %r", provider, project)
        return replace(
            self._row(project, provider),
            replaces=replaced[0] if replaced else None,
            notes=tuple(notes),
        )

    def set_cencori_key(
        self, api_key: str | Secret, *, project: str | None = None, force: bool = False
    ) -> KeyStatus:
        """Store (or replace) the project's Cencori key (must start with ``csk_``; ``force``
        lets a short one or one with a space through, never one without ``csk_``)."""
        project = self._project(project)
        notes: list[str] = []
        secret = clean_api_key(CENCORI, api_key, force=force, notes=notes)
        replaced: list[str] = []

        def change(records: dict[tuple[str, str], _Record]) -> None:
            old = records.get((project, CENCORI))
            if old is not None and old.key is not None and old.key != secret:
                replaced.append(old.key.hint)
            records[(project, CENCORI)] = _Record(secret, True)

        self._modify(change)
        log.debug("stored the Cencori key for project %r", project)
        return replace(
            self._row(project, CENCORI),
            replaces=replaced[0] if replaced else None,
            notes=tuple(notes),
        )

    def set_enabled(self, provider: str, enabled: bool, *, project: str | None = None) -> KeyStatus:
        """Enable or disable a stored key (``cencori`` included) without removing it."""
        provider = clean_provider(provider)
        project = self._project(project)

        def change(records: dict[tuple[str, str], _Record]) -> None:
            old = records.get((project, provider))
            if old is None:
                raise self._not_found(provider, project)
            records[(project, provider)] = replace(old, enabled=bool(enabled), sealed=None)

        self._modify(change)
        return self._row(project, provider)

    def remove(self, provider: str, *, project: str | None = None) -> None:
        """Delete a stored key; if it was the project default, the project has none after."""
        provider = clean_provider(provider)
        project = self._project(project)

        def change(records: dict[tuple[str, str], _Record]) -> None:
            if records.pop((project, provider), None) is None:
                raise self._not_found(provider, project)
            slot = records.get((project, PROJECT_SLOT))
            if slot is not None and slot.default_provider == provider:
                del records[(project, PROJECT_SLOT)]

        self._modify(change)
        log.debug("removed the %s key of project %r", provider, project)

    def set_default(self, provider: str, *, project: str | None = None) -> None:
        """Mark a stored provider as the project default."""
        provider = clean_provider(provider, allow_cencori=False)
        project = self._project(project)

        def change(records: dict[tuple[str, str], _Record]) -> None:
            if (project, provider) not in records:
                raise self._not_found(provider, project)
            records[(project, PROJECT_SLOT)] = _Record(default_provider=provider)

        self._modify(change)

    def rotate(
        self, *, passphrase: str | Secret | None = None, accept_rollback: bool = False
    ) -> int:
        """New data key, every record sealed again, new KEK material (a new key file or
        keyring entry; a new salt for a passphrase, which must be the current one: rotating
        keeps passphrase protection). With ``CENCORI_NB_PASSPHRASE`` set, a key-file or
        keyring store switches to the passphrase. The backup is replaced by the new
        generation, so retired key material opens nothing.

        ``accept_rollback=True`` accepts, on purpose, a store file older than the newest
        generation this home has seen (a restored backup or copy): it is re-keyed and
        written as the newest generation. Returns the number of records re-encrypted (0 if
        there is no store yet)."""
        with self._writing():
            current = self._load_locked(accept_rollback=accept_rollback)
            if current is None:
                return 0
            if current.kek_header["source"] == "passphrase":
                phrase = (
                    kek.checked_passphrase(passphrase, "The passphrase given")
                    if passphrase is not None
                    else kek.passphrase_from_env()
                )
                self._verify_passphrase(current, phrase)
                assert phrase is not None
                new_kek = kek.new_passphrase_kek(phrase)
            else:
                new_kek = kek.new_kek(
                    self.path, passphrase=kek.passphrase_from_env(), backend=self._backend()
                )
            count = len(current.records)
            self._commit(
                current, self._rekeyed(current, new_kek, current.records), replace_backup=True
            )
        log.debug("rotated the key store: %d records re-encrypted", count)
        return count

    def change_passphrase(self, new: str | Secret, *, old: str | Secret | None = None) -> None:
        """Protect the store with ``new``: a new data key, every record sealed again, the
        data key wrapped by a KEK from ``new`` (fresh salt). ``old`` (default: the
        environment, or this process's open store) must open the store when it is
        passphrase-protected. Also switches a key-file or keyring store to the passphrase
        (its key material is deleted). The backup is replaced by the new generation, so an
        old copy of the store and the old secret open nothing written afterwards. This
        process stays unlocked; set ``CENCORI_NB_PASSPHRASE`` to the new passphrase for the
        next one."""
        if not isinstance(new, str | Secret) or not new:
            raise ConfigurationError(
                "The new passphrase is empty.",
                hint="Choose a long passphrase; nothing was changed.",
            )
        # as Secrets from here on: no frame of a traceback shows them
        new = kek.checked_passphrase(new, "The new passphrase")
        old = (
            kek.checked_passphrase(old, "The current passphrase given") if old is not None else None
        )
        with self._writing():
            # with ``old`` given, the load derives the KEK from it (no cache): a wrong
            # ``old`` is a WrongPassphraseError here
            current = self._load_locked(passphrase=old)
            new_kek = kek.new_passphrase_kek(new)
            if current is None:
                self._commit(None, self._new_state(new_kek), replace_backup=True)
                return
            self._commit(
                current, self._rekeyed(current, new_kek, current.records), replace_backup=True
            )
        log.debug("changed the key store passphrase: new data key, records re-encrypted")

    # ----------------------------------------------------------------------- helpers

    def _project(self, project: str | None) -> str:
        return clean_project(current_project(project))

    def _row(self, project: str, provider: str) -> KeyStatus:
        for row in self.status(project):
            if row.provider == provider:
                return row
        raise self._not_found(provider, project)  # pragma: no cover - just written

    def _not_found(self, provider: str, project: str) -> KeyNotFoundError:
        what = "Cencori project key" if provider == CENCORI else f"{provider} key"
        return KeyNotFoundError(
            f"No {what} is stored for project {project!r} in {self.path}.",
            hint=f"Add one with: cencori-nb keys set {provider} --project {project}",
            path=self.path,
            provider=provider,
            project=project,
        )

    def _backend(self) -> Any | None:
        if self._keyring is _AUTO:
            self._keyring = kek.secure_keyring()
        return self._keyring

    def _corrupt(self, detail: str) -> KeystoreCorruptError:
        if self.backup_path.exists():
            hint = (
                f"Restore the previous generation: move {self.path} aside, copy "
                f"{self.backup_path} to {self.path} and run `cencori-nb keys rotate "
                "--accept-rollback`. Or delete it and set your keys again. cencori-nb "
                "will not write to the store until then."
            )
        else:
            hint = (
                f"There is no backup ({self.backup_path}): delete {self.path} and set your "
                "keys again. cencori-nb will not write to the store until then."
            )
        return KeystoreCorruptError(
            f"The key store {self.path} is damaged or was changed outside cencori-nb "
            f"({detail}); no key was read from it.",
            hint=hint,
            path=self.path,
            backup=self.backup_path,
        )

    def _wrong_passphrase(self, phrase: Secret, explicit: bool) -> WrongPassphraseError:
        """The error for a passphrase that does not open the store: the usual causes first;
        the backup is suggested only if it really opens with this passphrase."""
        where = "The passphrase given" if explicit else f"{kek.ENV_PASSPHRASE}"
        clear = phrase.reveal()
        causes = []
        if clear != clear.strip():
            trimmed = Secret(clear.strip())
            if self._probe(self.path, trimmed):
                causes.append(
                    f"{where} has a space or line break at its start or end; "
                    "without it, it opens the store: remove it"
                )
            else:
                causes.append(
                    f"{where} has a space or line break at its start or end "
                    "(often pasted by mistake)"
                )
        del clear
        causes.append(
            "it was set in another shell or environment than the one the store "
            "was last changed from (a kernel or server started before you "
            "exported it, or `cencori-nb keys passphrase` run since)"
        )
        hint = (
            "Usual causes: " + "; or ".join(causes) + f". Set {kek.ENV_PASSPHRASE} to the "
            "passphrase the store was created with or last changed to."
        )
        if self._probe(self.backup_path, phrase):
            hint += (
                f" The backup {self.backup_path} does open with it: if the store's header "
                f"was damaged, copy the backup to {self.path} and run `cencori-nb keys "
                "rotate --accept-rollback`."
            )
        return WrongPassphraseError(
            f"{where} does not open the key store {self.path}.", hint=hint, path=self.path
        )

    def _probe(self, path: Path, phrase: Secret) -> bool:
        """Does the store file at ``path`` open with ``phrase``? (One Argon2id; never
        raises, never writes, never consults the generation record.)"""
        if not self._probing:
            return False
        try:
            raw = path.read_bytes()
            probe = KeyStore(path, keyring_backend=None)
            probe._probing = False  # a failing probe must not probe in turn
            probe._parse(raw, passphrase=phrase)
        except (OSError, CencoriError):
            return False
        return True

    # ----------------------------------------------------------------------- loading

    def _records(self) -> dict[tuple[str, str], _Record]:
        state = self._snapshot()
        return state.records if state is not None else {}

    def _snapshot(self) -> _State | None:
        """The current generation; a re-read only when the file's signature changed."""
        sig = self.signature()
        state = self._state
        if state is not None and sig == self._sig:
            return state
        with self._mutex:
            try:
                return self._reload()
            except KeystoreError as exc:
                if exc.code in _FINAL_CODES:
                    raise
                # Another process may be half-way through a rotation or a passphrase change
                # (the file we read names key material it has just retired, or the new
                # passphrase's generation is not written yet): wait for its lock, read again.
                try:
                    lock = self._locked()
                    lock.__enter__()
                except (KeystoreError, OSError):
                    raise exc from None
                try:
                    return self._load_locked()
                finally:
                    lock.__exit__(None, None, None)

    def _reload(
        self, *, passphrase: str | Secret | None = None, accept_rollback: bool = False
    ) -> _State | None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            self._state, self._sig = None, None
            self._watch.note(None)
            return None
        except OSError as exc:
            raise self._unreadable(exc) from None
        try:
            with os.fdopen(fd, "rb") as fh:
                sig = _sig(os.fstat(fh.fileno()))
                raw = fh.read()
        except OSError as exc:  # e.g. a folder where the file should be
            raise self._unreadable(exc) from None
        self._watch.note(sig)  # what was read is the freshest signature there is
        if self._state is not None and raw == self._state.raw and passphrase is None:
            self._sig = sig
            return self._state
        state = self._parse(raw, passphrase=passphrase)
        if not accept_rollback:
            self._check_generation(state.generation)
        self._state, self._sig = state, sig
        _register(state.records)
        log.debug(
            "opened key store %s: generation %d, %d records",
            self.path,
            state.generation,
            len(state.records),
        )
        return state

    # ----------------------------------------------------------------------- rollback

    def _seen_generation(self) -> int:
        """The newest generation of this store any process has written or read, as kept
        in the generation record next to it (0 if there is none)."""
        try:
            raw = self.seen_path.read_bytes()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise self._unreadable(exc, self.seen_path) from None
        try:
            doc = json.loads(raw)
            seen = doc["generation"]
            if set(doc) != {"generation"} or type(seen) is not int or seen < 0:
                raise ValueError
        except (ValueError, TypeError, KeyError):
            raise KeystoreCorruptError(
                f"The generation record {self.seen_path} of the key store {self.path} is damaged.",
                hint=f"Delete {self.seen_path}: cencori-nb then trusts the "
                "store's current generation and records it again.",
                path=self.path,
            ) from None
        return int(seen)

    def _check_generation(self, generation: int) -> None:
        """Refuse a store file older than the newest generation seen (a rolled-back copy
        could hold keys since replaced, under a data key or passphrase since retired)."""
        seen = self._seen_generation()
        if generation < seen:
            raise KeystoreError(
                f"The key store {self.path} holds generation {generation}, older than "
                f"generation {seen}, the newest this home has seen ({self.seen_path}): it was "
                "rolled back (restored from a backup or an old copy, or a sync conflict); no "
                "key was read from it.",
                hint="If you restored it on purpose, accept it with `cencori-nb keys rotate "
                "--accept-rollback` (Python: keys.rotate(accept_rollback=True)), which "
                "re-keys it as the newest generation. Otherwise put the newest copy back.",
                code="keystore_rollback",
                path=self.path,
                generation=generation,
                seen=seen,
            )
        if generation > seen:
            self._remember(generation, wait=False)

    def _remember(self, generation: int, *, wait: bool) -> None:
        """Raise the generation record to ``generation`` (never lower it). Writers call it
        under the lock after the store is written; readers that find a newer store than
        the record (written by an older cencori-nb, or the record deleted) only if the lock
        is free at once. Best effort: the record only protects, it never blocks a read."""
        try:
            if wait:
                self._write_seen(generation)
                return
            import filelock

            lock = filelock.FileLock(self.lock_path, timeout=0, mode=0o600)
            with private_umask():
                lock.acquire()
            try:
                self._write_seen(generation)
            finally:
                lock.release()
        except Exception as exc:  # busy lock (a writer records it), read-only home…
            log.debug("generation record not updated: %s", type(exc).__name__)

    def _write_seen(self, generation: int) -> None:
        try:
            seen = self._seen_generation()
        except KeystoreCorruptError:
            seen = 0  # a damaged record is replaced by the store's own generation
        if generation > seen:
            atomic_write(self.seen_path, json.dumps({"generation": generation}).encode() + b"\n")

    def _parse(self, raw: bytes, *, passphrase: str | Secret | None) -> _State:
        """Bytes → opened state, or a KeystoreError; never a partially trusted state."""
        if not raw:
            raise self._corrupt("the file is empty")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise self._corrupt("it is not valid JSON: truncated or damaged") from None
        if not isinstance(doc, dict) or doc.get("format") != crypto.FORMAT:
            raise self._corrupt("it is not a cencori-nb key store")
        if doc.get("version") != crypto.VERSION:
            raise self._corrupt(
                f"format version {doc.get('version')!r} is not one this "
                "cencori-nb reads: written by a newer version, or damaged"
            )
        if set(doc) != _DOC_FIELDS:
            raise self._corrupt("unexpected or missing fields")
        if crypto.dump_document(doc) != raw:
            raise self._corrupt("its bytes are not the ones cencori-nb wrote")
        try:
            generation = doc["generation"]
            if type(generation) is not int or generation < 1:
                raise ValueError("bad generation")
            header = doc["kek"]
            kek.validate_header(header)
            check = crypto.b64d(header.get("check"), size=16)
            wrapped = crypto.Sealed.from_json(doc["dek"])
            mac = doc["mac"]
            if not isinstance(mac, dict) or set(mac) != {"nonce", "tag"}:
                raise ValueError("bad mac")
            mac_sealed = crypto.Sealed(
                crypto.b64d(mac["nonce"], size=crypto.NONCE_BYTES),
                crypto.b64d(mac["tag"], size=crypto.TAG_BYTES),
            )
            entries = doc["records"]
            if not isinstance(entries, list):
                raise ValueError("records is not a list")
            sealed_records: dict[tuple[str, str], crypto.Sealed] = {}
            for entry in entries:
                if not isinstance(entry, dict) or set(entry) != _RECORD_FIELDS:
                    raise ValueError("bad record")
                slot = (entry["project"], entry["provider"])
                if not all(isinstance(s, str) for s in slot) or slot in sealed_records:
                    raise ValueError("bad or duplicate record slot")
                sealed_records[slot] = crypto.Sealed.from_json(entry)
        except (ValueError, KeyError, TypeError) as exc:
            raise self._corrupt(str(exc) or type(exc).__name__) from None

        dek = self._unwrap(header, wrapped, check, passphrase)
        body = {k: v for k, v in doc.items() if k != "mac"}
        try:
            crypto.open_sealed(dek, mac_sealed, crypto.mac_aad(body))
        except crypto.InvalidTag:
            raise self._corrupt("its authentication tag does not match") from None
        records = {}
        for (project, provider), sealed in sealed_records.items():
            try:
                fields = crypto.open_record(dek, project, provider, sealed)
                records[(project, provider)] = self._decode_record(provider, fields, sealed)
            except (crypto.InvalidTag, ValueError, KeyError, TypeError):
                raise self._corrupt(
                    f"the record of {provider!r} in project {project!r} does not open in its slot"
                ) from None
        return _State(raw, generation, header, wrapped, dek, records)

    @staticmethod
    def _decode_record(provider: str, fields: dict[str, Any], sealed: crypto.Sealed) -> _Record:
        if provider == PROJECT_SLOT:
            default = fields["default_provider"]
            if set(fields) != {"default_provider"} or not (
                default is None or isinstance(default, str)
            ):
                raise ValueError("bad project record")
            return _Record(default_provider=default, sealed=sealed)
        expected = (
            {"key", "enabled"} if provider == CENCORI else {"key", "enabled", "default_model"}
        )
        model = fields.get("default_model")
        if (
            set(fields) != expected
            or not isinstance(fields["key"], str)
            or type(fields["enabled"]) is not bool
            or not (model is None or isinstance(model, str))
        ):
            raise ValueError("bad record fields")
        return _Record(Secret(fields["key"]), fields["enabled"], model, sealed=sealed)

    def _unwrap(
        self,
        header: dict[str, Any],
        wrapped: crypto.Sealed,
        check: bytes,
        passphrase: str | Secret | None,
    ) -> bytes:
        fingerprint = _dek_fingerprint(header, wrapped)
        if passphrase is None:
            cached = _dek_cache.get(fingerprint)
            if cached is not None:
                return cached
        env_phrase = kek.passphrase_from_env()  # a blank or non-UTF-8 value is refused here
        if header["source"] != "passphrase" and env_phrase is not None and not self._warned:
            # someone expecting passphrase protection should learn it is not in force yet
            self._warned = True
            log.warning(
                "%s is set, but the key store %s is protected by its %s, not by a "
                "passphrase; the next change to it switches it to the passphrase "
                "(or run `cencori-nb keys passphrase` now).",
                kek.ENV_PASSPHRASE,
                self.path,
                header["source"],
            )
        backend = self._backend() if header["source"] == "keyring" else None
        phrase = None
        if header["source"] == "passphrase":
            phrase = (
                kek.checked_passphrase(passphrase, "The passphrase given")
                if passphrase is not None
                else env_phrase
            )
        kek_bytes = kek.load_kek(header, self.path, passphrase=phrase, backend=backend)
        try:
            dek = crypto.open_sealed(kek_bytes, wrapped, crypto.wrap_aad(header))
        except crypto.InvalidTag:
            matches = hmac.compare_digest(crypto.kek_check(kek_bytes), check)
            del kek_bytes  # key material: not for a traceback's frame values
            if matches:
                raise self._corrupt("the wrapped data key does not open") from None
            if phrase is not None:
                raise self._wrong_passphrase(phrase, passphrase is not None) from None
            raise self._corrupt(f"its {header['source']} key does not match it") from None
        if len(dek) != crypto.KEY_BYTES:
            raise self._corrupt("the data key has the wrong size")
        if self._probing:
            # (a probe, see _probe, proves a *candidate* passphrase; caching what it opened
            # would let the next read open the store without the passphrase it was given)
            _dek_cache[fingerprint] = dek
        return dek

    def _verify_passphrase(self, state: _State, passphrase: Secret | None) -> None:
        """Raise unless ``passphrase`` is the one that wraps ``state``'s data key now."""
        if not passphrase:
            raise WrongPassphraseError(
                f"The key store {self.path} is protected by a passphrase, but "
                f"{kek.ENV_PASSPHRASE} is not set.",
                hint=f"Set {kek.ENV_PASSPHRASE} to the current passphrase and try again.",
                code="passphrase_required",
                path=self.path,
            )
        key = kek.load_kek(state.kek_header, self.path, passphrase=passphrase, backend=None)
        try:
            crypto.open_sealed(key, state.wrapped, crypto.wrap_aad(state.kek_header))
        except crypto.InvalidTag:
            raise self._wrong_passphrase(passphrase, True) from None

    # ----------------------------------------------------------------------- writing

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The cross-process lock on a separate ``.lock`` file (the store's inode changes
        on every write, so it cannot carry the lock itself)."""
        import filelock

        if self.path.parent == home_dir():
            ensure_home()
        else:
            with private_umask():
                self.path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        lock = filelock.FileLock(self.lock_path, timeout=self._lock_timeout, mode=0o600)
        try:
            with private_umask():
                lock.acquire()
        except filelock.Timeout:
            raise KeystoreError(
                f"Another process has held the key store lock {self.lock_path} for over "
                f"{self._lock_timeout:g} s.",
                hint="Wait for it to finish and try again.",
                code="keystore_locked",
                path=self.path,
            ) from None
        try:
            yield
        finally:
            lock.release()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """The mutex and the lock for a write; an ``OSError`` on the way (full disk, quota,
        read-only file system, permissions, file-size limit) becomes a KeystoreError naming
        the file and what to do. A failed write leaves the store as it was."""
        try:
            with self._mutex, self._locked():
                yield
        except OSError as exc:
            raise self._write_failed(exc) from None

    def _write_failed(self, exc: OSError) -> KeystoreError:
        target = Path(exc.filename) if exc.filename else self.path
        reason = exc.strerror or type(exc).__name__
        name = errno.errorcode.get(exc.errno or 0, "")
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            todo = f"Free some space (or quota) on the disk holding {self.path.parent}"
        elif exc.errno == errno.EFBIG:
            todo = (
                "Raise the file-size limit of this process (`ulimit -f`) or free space "
                f"on the disk holding {self.path.parent}"
            )
        elif exc.errno == errno.EROFS:
            todo = (
                f"{self.path.parent} is on a read-only file system: remount it "
                "read-write, or point CENCORI_NB_HOME at a writable directory"
            )
        elif exc.errno in (errno.EACCES, errno.EPERM):
            todo = (
                f"Check that you own {self.path.parent} and can write to it (ls -ld), or "
                "point CENCORI_NB_HOME at a directory you own"
            )
        else:
            todo = f"Check the disk and the permissions of {self.path.parent}"
        state = self._state
        if state is not None:
            kept = f" it still holds generation {state.generation}"
        elif self.path.exists():
            kept = " the store file is as it was"
        else:
            kept = " no store was created"
        return KeystoreError(
            f"Could not write the key store {self.path}: {reason}"
            f"{f' ({name})' if name else ''} on {target}; nothing was changed:{kept}.",
            hint=f"{todo}, then try again.",
            code="keystore_write_failed",
            path=self.path,
            errno=exc.errno,
        )

    def _unreadable(self, exc: OSError, path: Path | None = None) -> KeystoreError:
        path = path or self.path
        return KeystoreError(
            f"Cannot read the key store file {path}: {exc.strerror or type(exc).__name__}.",
            hint=f"It must be a file you own (mode 0600): check it with `ls -l {path}`, move "
            "aside whatever else stands there, or point CENCORI_NB_HOME at your own home "
            "directory.",
            code="keystore_unreadable",
            path=self.path,
        )

    def _load_locked(
        self, *, passphrase: str | Secret | None = None, accept_rollback: bool = False
    ) -> _State | None:
        """Inside the lock: drop temp files of killed writers, then read the file afresh."""
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.backup_path.with_name(self.backup_path.name + ".tmp").unlink()
        return self._reload(passphrase=passphrase, accept_rollback=accept_rollback)

    def _modify(self, change: Callable[[dict[tuple[str, str], _Record]], None]) -> None:
        """Read-modify-write under the lock. ``change`` edits a copy of the records.

        With ``CENCORI_NB_PASSPHRASE`` set, a key-file or keyring store is switched to the
        passphrase in the same write (new data key, every record sealed again): nothing is
        ever written under weaker protection than the user asked for."""
        with self._writing():
            current = self._load_locked()
            phrase = kek.passphrase_from_env()
            if current is None:
                records: dict[tuple[str, str], _Record] = {}
                change(records)  # first: a refused change must not leave key material
                new_kek = kek.new_kek(self.path, passphrase=phrase, backend=self._backend())
                self._commit(None, replace(self._new_state(new_kek), records=records))
                return
            records = dict(current.records)
            change(records)
            if phrase is not None and current.kek_header["source"] != "passphrase":
                log.warning(
                    "Switching the key store %s from its %s to the passphrase in %s "
                    "(new data key, every record re-encrypted).",
                    self.path,
                    current.kek_header["source"],
                    kek.ENV_PASSPHRASE,
                )
                self._commit(
                    current,
                    self._rekeyed(current, kek.new_passphrase_kek(phrase), records),
                    replace_backup=True,
                )
                return
            self._commit(current, replace(current, records=records))

    def _new_state(self, new_kek: kek.Kek) -> _State:
        dek = crypto.new_key()
        empty = _State(b"", 0, {}, crypto.Sealed(b"", b""), dek, {})
        return self._wrapped_state(empty, new_kek, dek, {})

    def _rekeyed(
        self, base: _State, new_kek: kek.Kek, records: dict[tuple[str, str], _Record]
    ) -> _State:
        """``base`` under a fresh data key wrapped by ``new_kek``, every record to be sealed
        again: nothing the old data key or the old KEK opens is carried over."""
        return self._wrapped_state(
            base,
            new_kek,
            crypto.new_key(),
            {k: replace(r, sealed=None) for k, r in records.items()},
        )

    @staticmethod
    def _wrapped_state(
        base: _State, new_kek: kek.Kek, dek: bytes, records: dict[tuple[str, str], _Record]
    ) -> _State:
        header = {**new_kek.header, "check": crypto.b64e(crypto.kek_check(new_kek.key))}
        wrapped = crypto.seal(new_kek.key, dek, crypto.wrap_aad(header))
        _dek_cache[_dek_fingerprint(header, wrapped)] = dek
        return replace(base, kek_header=header, wrapped=wrapped, dek=dek, records=records)

    def _backup_ref(self) -> tuple[str, str] | None:
        try:
            header = json.loads(self.backup_path.read_bytes())["kek"]
            kek.validate_header(header)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return kek.ref(header)

    def _commit(self, old: _State | None, new: _State, *, replace_backup: bool = False) -> None:
        """Seal what changed, write the next generation atomically, retire unused KEKs.

        The generation is one past both the file's and the newest ever seen, so a store
        created again after a deletion, or a re-keyed restored backup, is never "older"
        than a copy someone kept. If writing fails, new key material is deleted again and
        the file on disk is the previous generation."""
        records = {}
        seals: dict[tuple[str, str], crypto.Sealed] = {}
        for (project, provider), record in new.records.items():
            seal = record.sealed
            if seal is None:
                seal = crypto.seal_record(new.dek, project, provider, record.fields(provider))
                record = replace(record, sealed=seal)
            records[(project, provider)] = record
            seals[(project, provider)] = seal
        try:
            seen = self._seen_generation()
        except KeystoreCorruptError:
            seen = 0
        generation = max(old.generation if old is not None else 0, seen) + 1
        body = {
            "format": crypto.FORMAT,
            "version": crypto.VERSION,
            "generation": generation,
            "kek": new.kek_header,
            "dek": new.wrapped.to_json(),
            "records": [
                {"project": p, "provider": v, **seals[p, v].to_json()} for p, v in sorted(seals)
            ],
        }
        mac = crypto.seal(new.dek, b"", crypto.mac_aad(body))
        raw = crypto.dump_document(
            {**body, "mac": {"nonce": crypto.b64e(mac.nonce), "tag": crypto.b64e(mac.ciphertext)}}
        )
        backup_before = self._backup_ref()
        old_ref = kek.ref(old.kek_header) if old is not None else backup_before
        new_ref = kek.ref(new.kek_header)
        backend = self._keyring if self._keyring is not _AUTO else None
        try:
            if replace_backup:
                self._write_twice(raw)
            else:
                atomic_write(self.path, raw, backup=self.backup_path)
        except BaseException:
            if new_ref is not None and new_ref not in (old_ref, backup_before):
                kek.retire(new_ref, self.path, backend)  # no file refers to it
            raise
        sig = self._watch.stat()  # every reader in this process sees this write at once
        self._state = replace(new, raw=raw, generation=generation, records=records)
        self._sig = sig
        _register(records)
        self._remember(generation, wait=True)
        # the backup now holds the previous generation (or the new one, when replaced)
        after = {new_ref, new_ref if replace_backup else old_ref}
        before = {backup_before, old_ref}
        for retired in before - after:
            if retired is not None:
                kek.retire(retired, self.path, backend)
        # key files left by a writer killed between making one and writing the store
        live = {name for kind, name in filter(None, after) if kind == "keyfile"}
        own = re.compile(re.escape(self.path.stem) + r"-[0-9a-f]{16}\.key")
        for path in self.path.parent.glob(f"{self.path.stem}-*.key"):
            if own.fullmatch(path.name) and path.name not in live:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _write_twice(self, raw: bytes) -> None:
        """Make ``raw`` both the store and its backup, writing the bytes once: a temp file
        (0600, fsynced) gets a second name for the backup, then both are renamed into
        place. Only the writing can run out of space, and it happens before anything is
        replaced; a rename never half-happens."""
        directory = self.path.parent
        btmp = self.backup_path.with_name(self.backup_path.name + ".tmp")
        with private_umask():
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(raw)
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileNotFoundError):
                os.unlink(btmp)
            os.link(tmp, btmp)
            os.replace(tmp, self.path)
        except BaseException:
            for leftover in (tmp, btmp):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
            raise
        os.replace(btmp, self.backup_path)
        if os.name == "posix":
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
