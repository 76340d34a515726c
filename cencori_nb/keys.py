"""Manage your provider keys: ``cencori_nb.keys``.

>>> from cencori_nb import keys
>>> keys.set("openai", key, default_model="gpt-4o-mini", make_default=True)
>>> keys.set_cencori_key(csk_key)          # the managed route (Cencori credits)
>>> keys.status()                          # provider, enabled, key_hint, default_model, is_default

Keys are stored encrypted (AES-256-GCM) in the per-user home, never shown: every return value
carries at most the key hint (``…`` + last four characters). ``api_key`` may be a ``str`` or a
:class:`~cencori_nb.keystore.secret.Secret`. Surrounding whitespace and line breaks are
removed (copy-paste, ``echo key |``); whitespace inside a key, an empty key or an unknown
provider is a :class:`~cencori_nb.errors.ConfigurationError` and nothing is stored.
``project`` defaults to the current project (``CENCORI_NB_PROJECT`` or the settings file).
"""

from __future__ import annotations

from .keystore import default_store
from .keystore.secret import Secret
from .keystore.store import KeyStatus

__all__ = [
    "KeyStatus",
    "change_passphrase",
    "disable",
    "enable",
    "projects",
    "remove",
    "rotate",
    "set",
    "set_cencori_key",
    "set_default",
    "status",
]

_CENCORI = "cencori"


def set(
    provider: str,
    api_key: str | Secret,
    *,
    project: str | None = None,  # noqa: A001
    default_model: str | None = None,
    make_default: bool = False,
    enabled: bool = True,
    force: bool = False,
) -> KeyStatus:
    """Store ``provider``'s key for ``project`` (replacing any stored one).

    ``provider`` is matched case-insensitively (``"OpenAI"`` is ``"openai"``).
    ``default_model`` (optional) is the model used when none is named; ``None`` keeps the
    stored one. ``make_default=True`` makes this provider the project default ("Set as
    project default"). ``enabled=False`` stores it switched off. ``provider="cencori"``
    stores the managed Cencori project key (same as :func:`set_cencori_key`).

    A key that looks wrong is refused (``ConfigurationError``, code ``bad_key_shape``)
    unless ``force=True``: another provider's prefix (an ``sk-ant-…`` key as the OpenAI
    key), shorter than 12 characters, or a space inside. Other unusual shapes are stored
    with a warning. Returns the provider's :class:`KeyStatus` row; its ``replaces`` is the
    hint of the key it replaced, its ``notes`` the warnings.
    """
    api_key = _wrap(api_key)  # from here on no frame holds the key in clear (tracebacks)
    from .keystore.store import clean_provider

    provider = clean_provider(provider)
    if provider == _CENCORI:
        if default_model is not None or make_default:
            from .errors import ConfigurationError

            raise ConfigurationError(
                "The Cencori project key has no default model and cannot be the project "
                "default provider.",
                hint="Set those on a provider, e.g. keys.set('openai', …).",
            )
        row = set_cencori_key(api_key, project=project, force=force)
        if not enabled:
            import dataclasses

            row = dataclasses.replace(
                disable(_CENCORI, project=project), replaces=row.replaces, notes=row.notes
            )
        return row
    return default_store().set_key(
        provider,
        api_key,
        project=project,
        default_model=default_model,
        make_default=make_default,
        enabled=enabled,
        force=force,
    )


def set_cencori_key(
    api_key: str | Secret, *, project: str | None = None, force: bool = False
) -> KeyStatus:
    """Store the project's Cencori key (``csk_…``), used by the managed route. ``force``
    lets a short key through, never one without ``csk_``."""
    api_key = _wrap(api_key)
    return default_store().set_cencori_key(api_key, project=project, force=force)


def _wrap(api_key: str | Secret) -> str | Secret:
    """A ``str`` key as a :class:`Secret`, so that a traceback printed with the frames'
    values (``%xmode Verbose``) shows only its hint; anything else is left for the store's
    checks to refuse. The key is registered with :mod:`cencori_nb.redact` at once: the
    caller's frames still hold it in clear, and a write that fails (a full disk) would
    otherwise print it in a traceback before the store ever registered it."""
    wrapped = Secret(api_key) if isinstance(api_key, str) else api_key
    if isinstance(wrapped, Secret):
        from .redact import register_secret

        register_secret(wrapped.reveal().strip())
    return wrapped


def status(project: str | None = None) -> list[KeyStatus]:
    """One :class:`KeyStatus` per stored key of ``project`` (a ``cencori`` row for the
    managed key), sorted by provider. Never the key itself."""
    return default_store().status(project)


def enable(provider: str, *, project: str | None = None) -> KeyStatus:
    """Switch a stored key on (``KeyNotFoundError`` if none is stored)."""
    return default_store().set_enabled(provider, True, project=project)


def disable(provider: str, *, project: str | None = None) -> KeyStatus:
    """Switch a stored key off without deleting it; routing then skips it."""
    return default_store().set_enabled(provider, False, project=project)


def remove(provider: str, *, project: str | None = None) -> None:
    """Delete a stored key (``KeyNotFoundError`` if none is stored)."""
    default_store().remove(provider, project=project)


def set_default(provider: str, *, project: str | None = None) -> None:
    """Make a stored provider the project default."""
    default_store().set_default(provider, project=project)


def rotate(*, accept_rollback: bool = False) -> int:
    """New data key and KEK material; every record re-encrypted; nothing lost. With a
    passphrase store, ``CENCORI_NB_PASSPHRASE`` must hold the current passphrase (it gets a
    new salt, and stays the protection). ``accept_rollback=True`` accepts on purpose a store
    file older than the newest generation seen (a restored backup) and re-keys it as the
    newest. Returns the number of records re-encrypted."""
    return default_store().rotate(accept_rollback=accept_rollback)


def change_passphrase(
    new_or_old: str | Secret, new: str | Secret | None = None, *, old: str | Secret | None = None
) -> None:
    """Protect the store with a new passphrase: ``change_passphrase(new, old=…)`` (also
    ``change_passphrase(old, new)``). ``old`` defaults to ``CENCORI_NB_PASSPHRASE`` (or this
    process's already unlocked store); a key-file or keyring store switches to the
    passphrase. The old passphrase stops working. Set ``CENCORI_NB_PASSPHRASE`` to the new
    one before the next process starts."""
    # as Secrets at once, so no frame of a traceback shows a passphrase
    new_or_old, new, old = (
        _wrap(new_or_old),
        None if new is None else _wrap(new),
        None if old is None else _wrap(old),
    )
    if new is not None:  # the two-positional form of docs/contracts.md
        if old is not None:
            from .errors import ConfigurationError

            raise ConfigurationError("Give the old passphrase once (positionally or old=).")
        old, new = new_or_old, new
    else:
        new = new_or_old
    default_store().change_passphrase(new, old=old)


def projects() -> list[str]:
    """Projects with at least one stored key."""
    return default_store().projects()
