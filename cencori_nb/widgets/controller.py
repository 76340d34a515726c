"""The providers panel's state and actions, without any widget.

The panel (:mod:`cencori_nb.widgets.panel`) is only a view: every button calls a method
here, and every method is a call into the services the CLI uses (``cencori_nb.keys``,
``cencori_nb.client``, ``cencori_nb.wallet``). Tests drive this object directly, and the
``%cencori providers`` table reuses :func:`provider_rows`. No ipywidgets import here.

Keys arrive as :class:`~cencori_nb.keystore.secret.Secret` (the panel wraps the password
field's value and empties the field before calling), so no clear key is kept on this object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..catalog import CENCORI, PROVIDERS, provider_info
from ..errors import ConfigurationError
from ..keystore.secret import Secret
from ..settings import current_project

__all__ = ["BADGES", "ProviderRow", "ProvidersController", "TestResult", "provider_rows"]

ENABLED, DISABLED, MANAGED, NOT_CONFIGURED = "Enabled", "Disabled", "Managed", "Not configured"
BADGES = (ENABLED, DISABLED, MANAGED, NOT_CONFIGURED)

TEST_PROMPT = "Reply with the single word OK."
TEST_MAX_TOKENS = 4  # the cheapest real call that still proves the key works


@dataclass(frozen=True)
class ProviderRow:
    """One provider as the Providers page shows it (no key, only its hint)."""

    provider: str
    display_name: str
    badge: str
    key_hint: str | None
    default_model: str | None
    is_default: bool
    models: tuple[str, ...]
    managed_available: bool = False  # a Cencori key would serve it when BYOK is off/absent

    @property
    def has_key(self) -> bool:
        return self.badge in (ENABLED, DISABLED)


@dataclass(frozen=True)
class TestResult:
    """The outcome of "Test key": ``ok`` and a message for the status line."""

    __test__ = False  # not a pytest class

    ok: bool
    message: str


def provider_rows(project: str | None = None) -> list[ProviderRow]:
    """Every catalog provider with its badge for ``project``.

    Enabled: a BYOK key, switched on. Disabled: a BYOK key, switched off. Managed: no BYOK
    key but the project has a Cencori key, so requests are served through Cencori credits.
    Not configured: neither.
    """
    from .. import keys

    statuses = {s.provider: s for s in keys.status(project)}
    managed = CENCORI in statuses and statuses[CENCORI].enabled
    rows = []
    for name, info in PROVIDERS.items():
        st = statuses.get(name)
        if st is not None:
            badge = ENABLED if st.enabled else DISABLED
        else:  # Cencori cannot serve a server on your machine (local): never Managed
            badge = MANAGED if managed and info.managed else NOT_CONFIGURED
        rows.append(
            ProviderRow(
                provider=name,
                display_name=info.display_name,
                badge=badge,
                key_hint=st.key_hint if st is not None else None,
                default_model=(
                    st.default_model if st is not None and st.default_model else info.default_model
                ),
                is_default=bool(st is not None and st.is_default),
                models=info.models,
                managed_available=managed and info.managed,
            )
        )
    return rows


class ProvidersController:
    """What the providers panel can do, for one project at a time."""

    def __init__(self, project: str | None = None) -> None:
        self.project = current_project(project)
        self.selected: str | None = None

    # ------------------------------------------------------------------ reading
    def projects(self) -> list[str]:
        """Projects with stored keys, plus the current one (sorted, no duplicates)."""
        from .. import keys

        return sorted({*keys.projects(), self.project})

    def rows(self) -> list[ProviderRow]:
        return provider_rows(self.project)

    def row(self, provider: str) -> ProviderRow:
        for r in self.rows():
            if r.provider == provider:
                return r
        provider_info(provider)  # raises UnknownProviderError with the known names
        raise AssertionError("unreachable")

    def cencori_hint(self) -> str | None:
        """The managed Cencori key's hint for this project, or None."""
        from .. import keys

        for s in keys.status(self.project):
            if s.provider == CENCORI:
                return str(s.key_hint)
        return None

    def credits(self) -> Any:
        """The wallet summary (balance, low-balance flag, top-ups, spend this month)."""
        from .. import wallet

        return wallet.credits()

    # ------------------------------------------------------------------ changing
    def set_project(self, project: str) -> None:
        self.project = current_project(project)
        self.selected = None

    def select(self, provider: str) -> ProviderRow:
        row = self.row(provider)
        self.selected = provider
        return row

    def save(
        self,
        provider: str,
        api_key: Secret | None,
        *,
        default_model: str | None,
        make_default: bool,
        force: bool = False,
    ) -> str:
        """Store the key (or, with no new key, the model/default choice for the stored one).

        A key that looks wrong (another provider's prefix, too short, a space inside) is
        refused unless ``force`` ("Save even if the key looks wrong"). Returns the status
        line text: the key saved, the key it replaced, and any note on its shape.
        """
        from .. import keys
        from ..keystore import default_store

        if api_key is None or not api_key:
            existing = default_store().get(provider, self.project)
            if existing is None:
                raise ConfigurationError(
                    f"Enter the {provider_info(provider).display_name} API key before saving.",
                    provider=provider,
                )
            api_key = existing.api_key
            enabled = existing.enabled
        else:
            enabled = True
        saved = keys.set(
            provider,
            api_key,
            project=self.project,
            default_model=default_model or None,
            make_default=make_default,
            enabled=enabled,
            force=force,
        )
        row = self.row(provider)
        return (
            f"Saved {row.display_name} key {row.key_hint} for project {self.project}"
            + (" (project default)" if row.is_default else "")
            + (f", replacing the key {saved.replaces}" if saved.replaces else "")
            + "."
            + "".join(f" {note}" for note in saved.notes)
        )

    def save_cencori_key(self, api_key: Secret | None, *, force: bool = False) -> str:
        """Store the managed Cencori project key (``csk_…``)."""
        from .. import keys

        if api_key is None or not api_key:
            raise ConfigurationError("Enter the Cencori project key (csk_…) before saving.")
        saved = keys.set_cencori_key(api_key, project=self.project, force=force)
        return (
            f"Saved the Cencori project key {self.cencori_hint()} for project "
            f"{self.project}"
            + (f", replacing the key {saved.replaces}" if saved.replaces else "")
            + "."
            + "".join(f" {note}" for note in saved.notes)
        )

    def remove_cencori_key(self) -> str:
        from .. import keys

        keys.remove(CENCORI, project=self.project)
        return f"Removed the Cencori project key of project {self.project}."

    def set_enabled(self, provider: str, enabled: bool) -> str:
        from .. import keys

        (keys.enable if enabled else keys.disable)(provider, project=self.project)
        name = provider_info(provider).display_name
        return f"{name} {'enabled' if enabled else 'disabled'} for project {self.project}."

    def remove(self, provider: str) -> str:
        from .. import keys

        keys.remove(provider, project=self.project)
        return f"Removed the {provider_info(provider).display_name} key of project {self.project}."

    def test_key(self, provider: str, model: str | None = None) -> TestResult:
        """A cheap real request over the BYOK route: success, or the provider's message."""
        from .. import client
        from ..errors import CencoriError

        model = model or self.row(provider).default_model
        try:
            completion = client.chat(
                TEST_PROMPT,
                model=model,
                provider=provider,
                route="byok",
                max_tokens=TEST_MAX_TOKENS,
                cache=False,
                project=self.project,
            )
        except CencoriError as exc:
            return TestResult(False, f"Key test failed: {exc}")
        if completion.credential_source.startswith("sandbox-demo:"):
            # The sandbox only ever gets demo keys: say so rather than vouch for the key.
            return TestResult(
                True,
                f"Sandbox answered with the {provider} demo key "
                f"({completion.model}); a real stored key is never sent "
                "to a sandbox, so it is not tested here.",
            )
        return TestResult(
            True,
            f"Key works: {completion.model} answered "
            f"({completion.input_tokens} in / "
            f"{completion.output_tokens} out tokens).",
        )
