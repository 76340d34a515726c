"""The exception tree of cencori_nb.

Every failure a person can act on is a :class:`CencoriError`; callers catch the root.
Context travels as attributes (``provider``, ``status_code``, ``code``, ``path``…), never
only inside the message, and no message ever contains a secret.

::

    CencoriError
    ├── ConfigurationError            bad settings or arguments
    │   ├── UnknownProviderError      a provider name we do not know
    │   ├── ProviderNotConfiguredError neither a BYOK key nor a Cencori key for the provider
    │   ├── KeyInPromptError          a prompt holds an API key (never sent)
    │   │   └── KeyAsNameError        a stored key given as a model/project/provider name
    │   ├── SchemaError               a ``schema=`` that cannot become a JSON Schema
    │   └── BatchNotSupportedError    a provider (or route) with no Batch API
    ├── KeystoreError                 the encrypted key store (names the file)
    │   ├── WrongPassphraseError      the KEK does not open the data key
    │   ├── KeystoreCorruptError      tampered, truncated or emptied file
    │   └── KeyNotFoundError          no such record
    ├── RoutingError
    │   └── UnknownModelError         a model name no rule maps to a provider
    ├── ProviderError                 a provider (or the gateway) answered badly
    │   ├── AuthenticationError       401 / invalid or revoked key
    │   ├── PermissionDeniedError     403 other than credits (e.g. security_violation)
    │   ├── InvalidRequestError       400 / 404 / 422: the request itself is wrong
    │   ├── RateLimitError            429 (``retry_after`` in seconds when known)
    │   ├── ProviderTimeoutError      no answer in time
    │   ├── ProviderUnavailableError  5xx, connection refused or reset
    │   ├── BadResponseError          malformed JSON, broken or truncated stream
    │   │   └── SchemaMismatchError   a structured answer that does not match the schema
    │   └── RefusalError              the model refused to answer (a structured request)
    ├── PricingError                  no price for a model where one is required
    ├── CreditsError                  the Cencori credit wallet
    │   ├── CreditsExhaustedError     gateway 403 ``credit_balance_exhausted`` / local balance 0
    │   └── SpendCapReachedError      gateway 402 ``spend_cap_reached``
    ├── BudgetError                   local budgets and cost limits
    │   ├── BudgetExceededError       a project's hard cap would be passed
    │   └── CostLimitError            a batch estimate above ``max_cost_usd``
    │       └── CostConfirmationError one request above the confirmation threshold
    ├── RequestTooLargeError          a prompt larger than the model's context window
    ├── ImageError                    an image that cannot be sent (type, size, path)
    │   └── ModelTakesNoImagesError   an image for a model that reads only text
    ├── JobError                      a provider batch job: unknown id, damaged record,
    │                                 not finished yet, failed as a whole
    ├── LocalEnvironmentError         a local file, disk or input the user can fix
    │   │                             (from :func:`user_error`)
    │   └── UnsafeHomeError           a home owned by someone else, a symlink, or one inside
    └── LedgerError                   the usage ledger cannot record (names the file)
        ├── LedgerCorruptError        ``ledger.sqlite`` is not a readable database
        └── LedgerWriteError          recorded requests could not be committed (``pending``)
"""

from __future__ import annotations

import errno
import os
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, Unpack, cast

from .redact import remove_stored_keys

if TYPE_CHECKING:
    from .types import Completion

__all__ = [
    "AuthenticationError",
    "BadResponseError",
    "BatchNotSupportedError",
    "BudgetError",
    "BudgetExceededError",
    "CencoriError",
    "ConfigurationError",
    "CostConfirmationError",
    "CostLimitError",
    "CreditsError",
    "CreditsExhaustedError",
    "ImageError",
    "InvalidRequestError",
    "JobError",
    "KeyAsNameError",
    "KeyInPromptError",
    "KeyNotFoundError",
    "KeystoreCorruptError",
    "KeystoreError",
    "LedgerCorruptError",
    "LedgerError",
    "LedgerWriteError",
    "LocalEnvironmentError",
    "ModelTakesNoImagesError",
    "PermissionDeniedError",
    "PricingError",
    "ProviderError",
    "ProviderNotConfiguredError",
    "ProviderTimeoutError",
    "ProviderUnavailableError",
    "RateLimitError",
    "RefusalError",
    "RequestTooLargeError",
    "RoutingError",
    "SchemaError",
    "SchemaMismatchError",
    "SpendCapReachedError",
    "UnknownModelError",
    "UnknownProviderError",
    "UnsafeHomeError",
    "WrongPassphraseError",
]


class ErrorContext(TypedDict, total=False):
    """Every context field an error can carry, with its type: the keyword arguments of
    :class:`CencoriError` (mypy checks each one at every ``raise``) and the attributes users
    read (``err.provider``, ``err.status_code``…).

    Each error class declares the fields it carries as annotated class attributes (default
    None), and only those may be passed to it; ``tests/test_errors.py`` holds this table and
    those declarations equal, so a new field is added in both places or neither.
    """

    # on every error (a response or a stream may set them on any class)
    retry_after: float | None
    should_retry: bool | None
    completion: Completion | None
    detail: str | None
    # who and what
    provider: str | None
    project: str | None
    route: str | None
    model: str | None
    source: str | None
    schema_name: str | None
    # a provider's answer
    status_code: int | None
    request_id: str | None
    retryable: bool
    rpc_status: str | None
    missing: str | None
    cause_code: str | None
    errors: str | None
    attempts: int
    refusal: str | None
    job_id: str | None
    # files (a settings, store or ledger file is a Path; LocalEnvironmentError names a str)
    path: Path | str | None
    key_file: Path | None
    backup: Path | None
    spill_path: Path | None
    errno: int | None
    generation: int | None
    seen: int | None
    reason: str | None
    pending: int
    # money
    balance: Decimal | None
    top_up_url: str | None
    spend_current: Decimal | None
    spend_cap: Decimal | None
    spent_usd: Decimal | None
    cap_usd: Decimal | None
    estimated_usd: Decimal | None
    estimate_usd: Decimal | None
    max_cost_usd: Decimal | None
    limit_usd: Decimal | None
    rows: int | None
    prompt_tokens: int | None
    context_window: int | None


_FIELDS_BY_CLASS: dict[type, frozenset[str]] = {}


def _declared_fields(cls: type) -> frozenset[str]:
    """The context fields ``cls`` declares (annotated class attributes along its MRO)."""
    fields = _FIELDS_BY_CLASS.get(cls)
    if fields is None:
        names: set[str] = set()
        for klass in cls.__mro__:
            names.update(vars(klass).get("__annotations__", {}))
        fields = _FIELDS_BY_CLASS[cls] = frozenset(names & ErrorContext.__annotations__.keys())
    return fields


class CencoriError(Exception):
    """Root of every error cencori_nb raises on purpose.

    ``code`` is a short machine-readable slug (``"invalid_api_key"``…); ``hint`` says what
    to do next and is appended to ``str(err)``.
    """

    code: str = "cencori_error"
    # Set on any error a response or a stream produced, whatever its class:
    retry_after: float | None = None  # seconds the server asked to wait, when it said
    should_retry: bool | None = None  # the server's own verdict (X-Should-Retry), if any
    completion: Completion | None = None  # what arrived before a stream broke
    detail: str | None = None  # an HTTP library failure: what it said, scrubbed

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        hint: str | None = None,
        **context: Unpack[ErrorContext],
    ) -> None:
        declared = _declared_fields(type(self))
        undeclared = context.keys() - declared
        if undeclared:  # a bug in the raise, not the user's input: fail loudly in tests
            raise TypeError(
                f"{type(self).__name__} has no context field {', '.join(sorted(undeclared))}"
            )
        # One rule for every error: a stored key the caller passed where a name was
        # expected (`route=`, a file name, a header) is never repeated, in the message, the
        # hint, `args` or a context attribute.
        message = remove_stored_keys(message)
        hint = None if hint is None else remove_stored_keys(hint)
        cleaned = {
            name: remove_stored_keys(value) if isinstance(value, str) else value
            for name, value in context.items()
        }
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.hint = hint
        self.context = cast(ErrorContext, cleaned)
        for name, value in cleaned.items():
            setattr(self, name, value)

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class ConfigurationError(CencoriError):
    code = "configuration_error"
    provider: str | None = None
    project: str | None = None
    route: str | None = None
    path: Path | None = None  # the settings or cache file at fault


class UnknownProviderError(ConfigurationError):
    code = "unknown_provider"


class ProviderNotConfiguredError(ConfigurationError):
    code = "provider_not_configured"


class KeyInPromptError(ConfigurationError):
    """The prompt holds an API key: sending it would hand it to the provider, and the reply
    might repeat it into the notebook. Raised by :func:`cencori_nb.redact.refuse_key_in_prompt`
    for every face (magic, client, CLI)."""

    code = "key_in_prompt"


class KeyAsNameError(KeyInPromptError):
    """A stored key was given as a model, project or provider name: refused before it can
    reach an error message, the ledger, the cache, the settings or the store file."""

    code = "key_as_name"


class SchemaError(ConfigurationError):
    """``schema=`` is not a pydantic model, a dataclass, a ``TypedDict`` or a valid JSON
    Schema of an object; ``schema_name`` names what was given."""

    code = "invalid_schema"
    schema_name: str | None = None


class BatchNotSupportedError(ConfigurationError):
    """A provider batch job was asked of a provider or route that has no Batch API."""

    code = "batch_not_supported"


class KeystoreError(CencoriError):
    """A key-store failure; ``path`` names the file involved."""

    code = "keystore_error"
    path: Path | None = None
    key_file: Path | None = None  # the KEK file of a key-file store
    errno: int | None = None  # of the OSError behind it
    generation: int | None = None  # a rolled-back store: the file's generation…
    seen: int | None = None  # …and the newest this machine has seen


class WrongPassphraseError(KeystoreError):
    code = "wrong_passphrase"


class KeystoreCorruptError(KeystoreError):
    code = "keystore_corrupt"
    backup: Path | None = None


class KeyNotFoundError(KeystoreError):
    code = "key_not_found"
    provider: str | None = None
    project: str | None = None


class RoutingError(CencoriError):
    code = "routing_error"


class UnknownModelError(RoutingError):
    code = "unknown_model"
    model: str | None = None


class ProviderError(CencoriError):
    """A provider or the Cencori gateway failed the request.

    Attributes: ``provider``, ``status_code`` (or None), ``code``, ``request_id``,
    ``retry_after`` (seconds, or None).
    """

    code = "provider_error"
    provider: str | None = None
    status_code: int | None = None
    request_id: str | None = None
    retryable: bool = False
    rpc_status: str | None = None  # Google's RPC status (``RESOURCE_EXHAUSTED``…)


class AuthenticationError(ProviderError):
    code = "authentication_error"


class PermissionDeniedError(ProviderError):
    code = "permission_denied"


class InvalidRequestError(ProviderError):
    code = "invalid_request"


class RateLimitError(ProviderError):
    code = "rate_limited"
    retryable = True


class ProviderTimeoutError(ProviderError):
    code = "timeout"
    retryable = True


class ProviderUnavailableError(ProviderError):
    code = "provider_unavailable"
    retryable = True


class BadResponseError(ProviderError):
    code = "bad_response"
    missing: str | None = None  # the field the response lacked (``choices[0]``)
    cause_code: str | None = None  # a stream cut by another error: that error's code


class SchemaMismatchError(BadResponseError):
    """A structured answer that is not JSON matching the requested schema, also after the
    one retry that quoted the validation error. ``errors`` says what did not match;
    ``completion`` is the (paid, recorded) answer, its text included."""

    code = "schema_mismatch"
    errors: str | None = None
    schema_name: str | None = None
    attempts: int = 1  # requests made for this answer (2 after the retry)


class RefusalError(ProviderError):
    """The model declined to answer (OpenAI ``refusal``, Anthropic ``stop_reason:
    refusal``, a Gemini safety block). ``refusal`` is what it said, when it said anything;
    the request is recorded and paid like any other (``completion``)."""

    code = "refusal"
    refusal: str | None = None


class PricingError(CencoriError):
    code = "pricing_unavailable"
    provider: str | None = None
    model: str | None = None
    status_code: int | None = None  # when the gateway refused to price it
    request_id: str | None = None


class CreditsError(CencoriError):
    code = "credits_error"
    provider: str | None = None
    status_code: int | None = None
    request_id: str | None = None


class CreditsExhaustedError(CreditsError):
    code = "credit_balance_exhausted"
    balance: Decimal | None = None
    top_up_url: str | None = None


class SpendCapReachedError(CreditsError):
    code = "spend_cap_reached"
    spend_current: Decimal | None = None
    spend_cap: Decimal | None = None


class BudgetError(CencoriError):
    code = "budget_error"


class BudgetExceededError(BudgetError):
    code = "budget_exceeded"
    project: str | None = None
    spent_usd: Decimal | None = None
    cap_usd: Decimal | None = None
    estimated_usd: Decimal | None = None


class CostLimitError(BudgetError):
    code = "cost_limit"
    estimate_usd: Decimal | None = None
    max_cost_usd: Decimal | None = None
    rows: int | None = None  # a batch: the rows it would send


class CostConfirmationError(CostLimitError):
    """One request's estimated maximum cost (``estimate_usd``) is above what was accepted
    (``limit_usd``: ``max_cost_usd``, else the ``confirm_above_usd`` setting). Nothing was
    sent; pass a higher ``max_cost_usd`` (``--yes`` in the CLI) to send it."""

    code = "cost_confirmation"
    limit_usd: Decimal | None = None
    model: str | None = None


class RequestTooLargeError(CencoriError):
    """The prompt (``prompt_tokens``, estimated) does not fit the model's context window
    (``context_window``); nothing was sent."""

    code = "request_too_large"
    prompt_tokens: int | None = None
    context_window: int | None = None
    model: str | None = None


class ImageError(CencoriError):
    """An image in a prompt that cannot be sent: not a PNG/JPEG/GIF/WebP (whatever its file
    name says), truncated, too large, a decompression bomb, or a path outside the working
    folder or inside the toolkit's home. ``source`` names what it came from; the message
    never quotes the file's contents. Nothing was sent."""

    code = "image_refused"
    source: str | None = None
    provider: str | None = None
    model: str | None = None


class ModelTakesNoImagesError(ImageError):
    """The prompt holds an image and the model (by the catalogue) reads only text, on a
    route that would not upgrade it. Nothing was sent."""

    code = "model_takes_no_images"


class JobError(CencoriError):
    """A provider batch job (``cencori_nb.submit``) cannot do what was asked: an unknown job
    id, a damaged job record, results asked before the job ended, a job the provider failed.
    ``job_id`` names it; ``path`` the job's record when that file is at fault."""

    code = "job_error"
    job_id: str | None = None
    path: Path | None = None  # the job's record file, when it is the one at fault


class LocalEnvironmentError(CencoriError):
    """Something on this machine that the user can fix: a full disk, a file they cannot
    read, a file where a folder should be, a damaged database, input that is not UTF-8.
    ``path`` names the file when it is known."""

    code = "local_environment"
    path: str | None = None


class UnsafeHomeError(LocalEnvironmentError):
    """The per-user home cannot be trusted with secrets: it belongs to another user, it is
    a symlink, or a symlink sits inside it (it would send the ledger, cache or store
    elsewhere). Refused, never tightened and used."""

    code = "unsafe_home"


# errno → what a person can do about it (the message names the file before this).
_OS_HINTS: dict[int, str] = {
    errno.ENOSPC: "the disk is full: free some space and run the command again.",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f, or a full "
    "disk): free space or raise the limit and run again.",
    errno.EDQUOT: "your disk quota is used up: free some space and run again.",
    errno.EROFS: "the file system is read-only: point CENCORI_NB_HOME at a writable folder.",
    errno.EACCES: "permission denied: the file and its folder must be yours "
    "(folder 0700, files 0600); fix the owner or mode, or point "
    "CENCORI_NB_HOME elsewhere.",
    errno.EPERM: "operation not permitted: the file and its folder must be yours; fix the "
    "owner or mode, or point CENCORI_NB_HOME elsewhere.",
    errno.ENOTDIR: "a part of this path is a file, not a folder: CENCORI_NB_HOME must name "
    "a folder (or a path where one can be created).",
    errno.EISDIR: "a folder stands where a file is expected: move it aside and run again.",
    errno.ENOENT: "it does not exist: check the path (CENCORI_NB_HOME) and run again.",
    errno.ELOOP: "too many symbolic links: point CENCORI_NB_HOME at a real folder.",
    errno.ENAMETOOLONG: "the path is too long: use a shorter CENCORI_NB_HOME.",
}


def user_error(exc: BaseException) -> CencoriError | None:
    """What a face (the CLI, the magic, the panel) shows for ``exc`` as one line: the
    :class:`CencoriError` itself, or the one translation of a foreign error a user's machine
    can cause (``OSError``, ``sqlite3.Error``, ``UnicodeError``) into a
    :class:`LocalEnvironmentError`; ``None`` for anything else (a bug, which should stay a
    traceback).

    Modules that know more raise their own errors first (the key store, the ledger); this
    is the net under them, so nothing a user can cause ends in a traceback.
    """
    import sqlite3

    if isinstance(exc, CencoriError):
        return exc
    if isinstance(exc, UnicodeError):
        return LocalEnvironmentError(
            "The input holds bytes that are not valid UTF-8 (" + _short(exc) + ").",
            hint="Save or pipe the text as UTF-8 (e.g. iconv -t UTF-8) and run again.",
        )
    if isinstance(exc, sqlite3.DatabaseError):
        from .home import home_dir

        return LocalEnvironmentError(
            f"A database in {home_dir()} could not be used ({_short(exc)}).",
            hint="If another program holds it, close that and retry; if it is damaged, "
            "move ledger.sqlite (or cache.sqlite) aside and run again.",
        )
    if isinstance(exc, OSError):
        # os.fdopen and friends report a file descriptor number as the "filename".
        path = (
            os.fsdecode(exc.filename)
            if isinstance(exc.filename, str | bytes | os.PathLike)
            else None
        )
        where = f" {path}" if path is not None else ""
        what = exc.strerror or type(exc).__name__
        hint = _OS_HINTS.get(exc.errno or 0, "check the file and its folder, then run again.")
        return LocalEnvironmentError(
            f"Cannot use{where}: {what};", hint=hint, path=None if path is None else str(path)
        )
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


class LedgerError(CencoriError):
    """The usage ledger cannot record requests, so none is sent; ``path`` names the file."""

    code = "ledger_error"
    path: Path | None = None
    reason: str | None = None  # what SQLite said


class LedgerCorruptError(LedgerError):
    code = "ledger_corrupt"


class LedgerWriteError(LedgerError):
    """Rows this process recorded could not be committed to the ledger. ``pending`` rows
    wait in ``spill_path`` (written to the ledger on the next start or request)."""

    code = "ledger_write_failed"
    pending: int = 0
    spill_path: Path | None = None
