"""The exception tree of cencori_nb.

Every failure a person can act on is a :class:`CencoriError`; callers catch the root.
Context travels as attributes (``provider``, ``status_code``, ``code``, ``path``…), never
only inside the message, and no message ever contains a secret.

::

    CencoriError
    ├── ConfigurationError            bad settings or arguments
    │   ├── UnknownProviderError      a provider name we do not know
    │   ├── ProviderNotConfiguredError neither a BYOK key nor a Cencori key for the provider
    │   └── KeyInPromptError          a prompt holds an API key (never sent)
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
    │   └── BadResponseError          malformed JSON, broken or truncated stream
    ├── PricingError                  no price for a model where one is required
    ├── CreditsError                  the Cencori credit wallet
    │   ├── CreditsExhaustedError     gateway 403 ``credit_balance_exhausted`` / local balance 0
    │   └── SpendCapReachedError      gateway 402 ``spend_cap_reached``
    └── BudgetError                   local budgets and cost limits
        ├── BudgetExceededError       a project's hard cap would be passed
        └── CostLimitError            a batch estimate above ``max_cost_usd``
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "AuthenticationError",
    "BadResponseError",
    "BudgetError",
    "BudgetExceededError",
    "CencoriError",
    "ConfigurationError",
    "CostLimitError",
    "CreditsError",
    "CreditsExhaustedError",
    "InvalidRequestError",
    "KeyInPromptError",
    "KeyNotFoundError",
    "KeystoreCorruptError",
    "KeystoreError",
    "PermissionDeniedError",
    "PricingError",
    "ProviderError",
    "ProviderNotConfiguredError",
    "ProviderTimeoutError",
    "ProviderUnavailableError",
    "RateLimitError",
    "RoutingError",
    "SpendCapReachedError",
    "UnknownModelError",
    "UnknownProviderError",
    "WrongPassphraseError",
]


class CencoriError(Exception):
    """Root of every error cencori_nb raises on purpose.

    ``code`` is a short machine-readable slug (``"invalid_api_key"``…); ``hint`` says what
    to do next and is appended to ``str(err)``.
    """

    code: str = "cencori_error"

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None,
                 **context: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.hint = hint
        self.context = context
        for name, value in context.items():
            setattr(self, name, value)

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class ConfigurationError(CencoriError):
    code = "configuration_error"


class UnknownProviderError(ConfigurationError):
    code = "unknown_provider"


class ProviderNotConfiguredError(ConfigurationError):
    code = "provider_not_configured"


class KeyInPromptError(ConfigurationError):
    """The prompt holds an API key: sending it would hand it to the provider, and the reply
    might repeat it into the notebook. Raised by :func:`cencori_nb.redact.refuse_key_in_prompt`
    for every face (magic, client, CLI)."""

    code = "key_in_prompt"


class KeystoreError(CencoriError):
    """A key-store failure; ``path`` names the file involved."""

    code = "keystore_error"
    path: Path | None = None


class WrongPassphraseError(KeystoreError):
    code = "wrong_passphrase"


class KeystoreCorruptError(KeystoreError):
    code = "keystore_corrupt"


class KeyNotFoundError(KeystoreError):
    code = "key_not_found"


class RoutingError(CencoriError):
    code = "routing_error"


class UnknownModelError(RoutingError):
    code = "unknown_model"


class ProviderError(CencoriError):
    """A provider or the Cencori gateway failed the request.

    Attributes: ``provider``, ``status_code`` (or None), ``code``, ``request_id``,
    ``retry_after`` (seconds, or None).
    """

    code = "provider_error"
    provider: str | None = None
    status_code: int | None = None
    request_id: str | None = None
    retry_after: float | None = None
    retryable: bool = False


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


class PricingError(CencoriError):
    code = "pricing_unavailable"


class CreditsError(CencoriError):
    code = "credits_error"


class CreditsExhaustedError(CreditsError):
    code = "credit_balance_exhausted"


class SpendCapReachedError(CreditsError):
    code = "spend_cap_reached"


class BudgetError(CencoriError):
    code = "budget_error"


class BudgetExceededError(BudgetError):
    code = "budget_exceeded"


class CostLimitError(BudgetError):
    code = "cost_limit"
