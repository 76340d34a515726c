"""Which provider, which model, which route, which key, which URL — and why.

:func:`resolve` turns a :class:`~cencori_nb.types.ChatRequest` into a :class:`Decision`;
:func:`explain_route` does the same from plain arguments (``%cencori route``, the CLI).

Model → provider, as Cencori's router does it, in this order:

1. ``provider/model`` when the part before the first ``/`` is a known provider
   (``openrouter/meta-llama/llama-3.3-70b-instruct:free`` → openrouter, model
   ``meta-llama/llama-3.3-70b-instruct:free``);
2. an explicit ``provider=`` (``--provider``): it wins over an inferred split, so
   ``provider="openrouter", model="openai/gpt-4o-mini"`` sends that OpenRouter model id, and
   a leading ``"<provider>/"`` equal to it is dropped;
3. an exact model id from the catalog (``meta-llama/Llama-3.3-70B-Instruct-Turbo`` → together);
4. ``…:free`` → openrouter;
5. a fine-tuned id ``ft:<base>:…`` → the provider of its base model (``ft:gpt-4o-mini…``
   → openai, ``ft:open-mistral-7b…`` → mistral), sent as written;
6. name prefixes (``gpt-``, ``o1``/``o3``/``o4``, ``chatgpt-``, ``text-`` → openai;
   ``claude-`` → anthropic; ``gemini-`` → google; ``mistral-``/``codestral-``/
   ``open-mistral-``/``ministral-`` → mistral; ``llama…``/``mixtral-`` → groq; ``grok-`` → xai;
   ``deepseek-`` → deepseek);
7. otherwise :class:`~cencori_nb.errors.UnknownModelError` saying how to write
   ``provider/model``.

A BYOK model name that neither the price catalogue nor the provider's model list knows
gets an :class:`UnknownModelWarning` before sending, with difflib's closest names ("did you
mean 'gpt-4o-mini'?"); it is still sent, since providers add models faster than catalogues.

On the managed route the gateway decides who serves a model, so the decision's provider
(whose prices apply) comes from Cencori's own router, :func:`gateway_provider` (its
``lib/providers/router.ts``): ``llama…`` is Groq there even when written as an OpenRouter
``…:free`` id, and ``command-…``/``…sonar…``/``…qwen…``/``glm-…`` route there though no
BYOK provider here serves them. A name Cencori cannot place (``o3-mini``: its OpenAI
prefixes are ``gpt-``/``o1-``/``text-``/``davinci-``) is sent as ``provider/model``.

No model: the project default provider ("Set as project default") and its default model
(the key record's, else the catalog's); no default at all → ``gemini-2.5-flash`` through the
gateway when a Cencori key exists (Cencori's own default), else the only enabled BYOK
provider if there is exactly one, else a clear error.

A local OpenAI-compatible server (``provider="local"``) with no stored key routes BYOK with
an empty credential: no key header is sent (Ollama and vLLM need none).

Route ``auto``: an enabled BYOK key wins; else managed through Cencori with the project key;
else :class:`~cencori_nb.errors.ProviderNotConfiguredError` naming both fixes. ``byok`` and
``managed`` force the route and fail clearly. A BYOK decision carries a managed ``fallback``
only when the project allows it (``allow_fallback``, default off: no silent spend) and a
Cencori key exists; the client never uses it after a 401 (Cencori's rule).

Base URL and key (:mod:`cencori_nb.egress` holds the rules): ``sandbox_url`` + the
adapter's ``sandbox_prefix`` when a sandbox is set, and then the decision carries the
provider's demo key, never the stored one (``credential_source`` ``sandbox-demo:…``); else
``settings.base_urls[provider]`` (a remote host other than the provider's own needs
``settings.trusted_hosts``); else the adapter's ``default_base_url``. The ``why`` list says
which rule let the URL through.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from typing import Any

from . import egress, state
from .catalog import CENCORI, PROVIDERS, provider_info
from .errors import ConfigurationError, ProviderNotConfiguredError, UnknownModelError
from .keystore import default_store
from .keystore.secret import Secret
from .redact import register_secret
from .settings import Settings, load_settings
from .types import ChatRequest, Message

__all__ = [
    "GATEWAY_DEFAULT_MODEL",
    "Decision",
    "UnknownModelWarning",
    "destination",
    "explain_route",
    "gateway_provider",
    "model_suggestions",
    "provider_for_model",
    "resolve",
]

GATEWAY_DEFAULT_MODEL = "gemini-2.5-flash"  # Cencori's gateway default when none is set
LOCAL = "local"  # a local OpenAI-compatible server

_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-", "openai"),
    ("chatgpt-", "openai"),
    ("text-", "openai"),
    ("claude-", "anthropic"),
    ("gemini-", "google"),
    ("mistral-", "mistral"),
    ("codestral-", "mistral"),
    ("open-mistral-", "mistral"),
    ("open-mixtral-", "mistral"),
    ("ministral-", "mistral"),
    ("llama", "groq"),
    ("mixtral-", "groq"),
    ("grok-", "xai"),
    ("deepseek-", "deepseek"),
)
_O_SERIES = re.compile(r"^o[134](?:-|$)")  # o1, o1-mini, o3-mini, o4-mini …
_CATALOG_MODELS = {m.lower(): p.name for p in PROVIDERS.values() for m in p.models}
_FINE_TUNABLE = frozenset({"openai", "mistral"})  # providers whose fine-tunes are "ft:…"

# Cencori's router (lib/providers/router.ts in the public cencori/cencori repository), in
# its order and case-sensitive like it: overrides, prefixes/substrings, ":free", "p/model".
_GATEWAY_OVERRIDES = {
    "gpt-oss-120b": "cerebras",
    "openai/gpt-oss-120b": "groq",
    "openai/gpt-oss-20b": "groq",
    "qwen/qwen3-32b": "groq",
    "moonshotai/kimi-k2-instruct": "groq",
    "meta-llama/Llama-3.3-70B-Instruct": "huggingface",
}
_GATEWAY_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), name)
    for pattern, name in (
        (r"^(gpt-|o1-|text-|davinci-)", "openai"),
        (r"^claude-", "anthropic"),
        (r"^gemini-", "google"),
        (r"^(mistral-|codestral-|open-mistral-|open-mixtral-)", "mistral"),
        (r"llama|^mixtral-", "groq"),
        (r"^command-", "cohere"),
        (r"^grok-", "xai"),
        (r"^glm-", "zai"),
        (r"^deepseek-", "deepseek"),
        (r"sonar", "perplexity"),
        (r"qwen", "qwen"),
    )
)
_GATEWAY_SPLIT = frozenset(
    {*PROVIDERS, "cohere", "perplexity", "qwen", "zai", "cerebras", "huggingface"}
) - {LOCAL}


class UnknownModelWarning(UserWarning):
    """A BYOK model name neither the price catalogue nor the provider's list knows."""


@dataclass(frozen=True, eq=False)
class Decision:
    """How one request will be sent. Holds the credential, but never shows it.

    ``route`` is ``"byok"`` or ``"managed"``; ``adapter`` is the wire format that will build
    the request (``"cencori"`` on the managed route); ``credential_source`` says where the key
    came from (``keystore:byok:openai``, ``keystore:managed:cencori``) and is what the ledger
    records; ``why`` lists each step of the reasoning in plain words.
    """

    provider: str
    model: str
    route: str
    credential: Secret = field(repr=False)
    credential_source: str
    base_url: str
    adapter: str
    why: list[str] = field(default_factory=list)
    fallback: Decision | None = None
    project: str = "default"
    model_requested: str | None = None
    # Whether the project had a soft budget or hard cap when this was decided (the client
    # only estimates a request's cost when one is set; the memo is dropped when config.json
    # changes, so this cannot go stale).
    budgeted: bool = field(default=False, repr=False)

    @property
    def key_hint(self) -> str:
        return self.credential.hint

    def __repr__(self) -> str:
        fb = f", fallback={self.fallback.route}:{self.fallback.adapter}" if self.fallback else ""
        return (
            f"Decision(provider={self.provider!r}, model={self.model!r}, "
            f"route={self.route!r}, key={self.key_hint!r}, "
            f"credential_source={self.credential_source!r}, base_url={self.base_url!r}, "
            f"adapter={self.adapter!r}, project={self.project!r}{fb})"
        )

    def __str__(self) -> str:
        lines = [
            f"{self.provider} · {self.model} · {self.route} (key {self.key_hint}, "
            f"{self.credential_source}) → {self.base_url}"
        ]
        lines += [f"  - {step}" for step in self.why]
        if self.fallback is not None:
            lines.append(
                f"  fallback: {self.fallback.route} via {self.fallback.adapter} "
                f"(key {self.fallback.key_hint})"
            )
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        rows = [
            ("provider", self.provider),
            ("model", self.model),
            ("route", self.route),
            ("key", self.key_hint),
            ("credential source", self.credential_source),
            ("base URL", self.base_url),
            ("adapter", self.adapter),
            ("project", self.project),
            (
                "fallback",
                f"{self.fallback.route} ({self.fallback.key_hint})" if self.fallback else "none",
            ),
        ]
        table = "| | |\n|---|---|\n" + "\n".join(f"| {k} | `{_md(v)}` |" for k, v in rows)
        why = "\n".join(f"- {_md(step)}" for step in self.why)
        return f"{table}\n\n**Why**\n\n{why}\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (key hint only)."""
        return {
            "provider": self.provider,
            "model": self.model,
            "route": self.route,
            "key_hint": self.key_hint,
            "credential_source": self.credential_source,
            "base_url": self.base_url,
            "adapter": self.adapter,
            "project": self.project,
            "why": list(self.why),
            "fallback": self.fallback.to_dict() if self.fallback else None,
        }


def _md(value: object) -> str:
    return str(value).replace("|", "\\|").replace("`", "'")


# --------------------------------------------------------------------------- model → provider


def provider_for_model(model: str, provider: str | None = None) -> tuple[str, str, str]:
    """``(provider, model id to send, reason)`` for a model name (see the module docstring)."""
    if provider is not None:
        provider_info(provider)  # UnknownProviderError listing the names
        if model.startswith(provider + "/"):
            model = model[len(provider) + 1 :]
        return provider, model, f"provider {provider!r} was given explicitly"
    head, sep, rest = model.partition("/")
    if sep and rest and head in PROVIDERS:
        return head, rest, f"model written as provider/model ({head}/…)"
    lower = model.lower()
    known = _CATALOG_MODELS.get(lower)
    if known is not None:
        name = provider_info(known).display_name
        article = "an" if name[:1].lower() in "aeio" else "a"
        return known, model, f"{model!r} is {article} {name} model in the catalog"
    if lower.endswith(":free"):
        return "openrouter", model, "':free' models are served by OpenRouter"
    if lower.startswith("ft:"):
        base = model[3:].split(":", 1)[0]
        try:
            owner = provider_for_model(base)[0] if base and not base.startswith("ft:") else None
        except UnknownModelError:
            owner = None
        if owner in _FINE_TUNABLE:
            return owner, model, f"fine-tuned {base!r} model → {owner}"
        raise UnknownModelError(
            f"No provider is known for the fine-tuned model {model!r}.",
            hint="Fine-tuned ids route by their base model (ft:gpt-4o-mini-…: OpenAI, "
            "ft:open-mistral-…: Mistral); otherwise pass provider=….",
            model=model,
        )
    if _O_SERIES.match(lower):
        return "openai", model, f"{model!r} is an OpenAI o-series model"
    for prefix, name in _PREFIXES:
        if lower.startswith(prefix):
            return name, model, f"model prefix {prefix!r} → {name}"
    raise UnknownModelError(
        f"No provider is known for model {model!r}.",
        hint="Write it as provider/model (e.g. 'openai/gpt-4o-mini', "
        "'openrouter/meta-llama/llama-3.3-70b-instruct:free') or pass provider=…; "
        "known providers: " + ", ".join(sorted(PROVIDERS)) + ".",
        model=model,
    )


def gateway_provider(model: str) -> str | None:
    """The provider Cencori's gateway routes ``model`` to (None: it cannot place it)."""
    override = _GATEWAY_OVERRIDES.get(model)
    if override:
        return override
    for pattern, name in _GATEWAY_RULES:
        if pattern.search(model):
            return name
    if model.endswith(":free"):
        return "openrouter"
    head, sep, rest = model.partition("/")
    if sep and rest and head in _GATEWAY_SPLIT:
        return head
    return None


def _gateway_model(provider: str, model: str, why: list[str]) -> tuple[str, str]:
    """``(provider whose prices apply, model name to send)`` on the managed route."""
    routed = gateway_provider(model)
    if routed is None:
        if provider == LOCAL:
            raise UnknownModelError(
                f"Cencori's gateway does not serve local models ({model!r}).",
                hint="Use route='byok' for a local server.",
                model=model,
            )
        why.append(f"Cencori's router cannot place {model!r}: sent as '{provider}/{model}'")
        return provider, f"{provider}/{model}"
    if routed != provider:
        why.append(
            f"Cencori routes {model!r} to {routed} (its own rules), so {routed}'s prices apply"
        )
    return routed, model


@functools.lru_cache(maxsize=64)
def _provider_models(provider: str) -> tuple[str, ...]:
    """Model ids the provider is known to serve: our catalog and the price catalogue's."""
    names = list(PROVIDERS[provider].models) if provider in PROVIDERS else []
    from .pricing import catalogue_models

    names += catalogue_models(provider)
    return tuple(dict.fromkeys(names))


def _model_known(provider: str, model: str) -> bool:
    if model.lower().startswith("ft:"):
        model = model[3:].split(":", 1)[0]
    if model.lower() in {m.lower() for m in _provider_models(provider)}:
        return True
    from .pricing import _lookup

    return _lookup(provider, model) is not None


def model_suggestions(provider: str, model: str, n: int = 3) -> list[str]:
    """The provider's model names closest to ``model`` (difflib), best first."""
    import difflib

    names = _provider_models(provider)
    lowered = {m.lower(): m for m in names}
    return [lowered[m] for m in difflib.get_close_matches(model.lower(), lowered, n=n, cutoff=0.6)]


def _warn_unknown_model(provider: str, model: str) -> None:
    """Warn before sending a BYOK model name nothing here knows (a typo, most often)."""
    if provider == LOCAL or _model_known(provider, model):
        return
    import warnings

    close = model_suggestions(provider, model)
    advice = (" Did you mean " + " or ".join(repr(m) for m in close) + "?") if close else ""
    warnings.warn(
        f"Model {model!r} is not in the price catalogue or {provider}'s model "
        f"list; it is sent as written and its cost will be unknown.{advice}",
        UnknownModelWarning,
        stacklevel=4,
    )


# --------------------------------------------------------------------------- resolution


def _store() -> Any:
    return default_store()


def destination(
    adapter_name: str, provider: str, credential: Secret, settings: Any
) -> egress.Destination:
    """Base URL and the key actually sent, by the rules of :mod:`cencori_nb.egress`, for a
    request that does not go through :func:`resolve` (e.g. the gateway's Metrics API)."""
    from .providers import get_provider

    adapter = get_provider(adapter_name)
    default = adapter.default_base_url or (
        PROVIDERS[provider].base_url if provider in PROVIDERS else ""
    )
    configured = settings.base_urls.get(provider if adapter_name != CENCORI else CENCORI)
    if not settings.sandbox_url and not configured and not default:
        raise ConfigurationError(
            f"No base URL is known for {adapter_name!r}.",
            hint=f"Set one: cencori_nb.settings.update_settings(base_urls={{'{provider}': "
            "'http://host:port/v1'}}).",
            provider=provider,
        )
    return egress.destination(
        adapter=adapter_name,
        provider=provider,
        credential=credential,
        sandbox_url=settings.sandbox_url,
        sandbox_prefix=adapter.sandbox_prefix,
        configured=configured,
        default_url=default,
        trusted_hosts=settings.trusted_hosts,
        sandbox_allow_remote=egress.allowed_remote_sandbox_hosts(settings.sandbox_allow_remote),
    )


def _not_configured(provider: str, project: str, *, disabled: bool) -> ProviderNotConfiguredError:
    state = "its BYOK key is disabled" if disabled else "it has no BYOK key"
    fixes = (
        f"Enable it with `cencori-nb keys enable {provider}`"
        if disabled
        else f"Add your {provider} key with `cencori-nb keys set {provider}` "
        "(or `%cencori setup` in a notebook)"
    )
    return ProviderNotConfiguredError(
        f"Provider {provider!r} is not configured in project {project!r}: {state}, "
        "and no Cencori project key is set.",
        hint=f"{fixes}, or add a Cencori project key (csk_…) with `cencori-nb keys set "
        "cencori` to use managed keys paid from credits.",
        provider=provider,
        project=project,
    )


def _byok(
    provider: str,
    model: str,
    key: Secret,
    project: str,
    settings: Any,
    why: list[str],
    *,
    model_requested: str | None,
    fallback: Decision | None = None,
    source: str | None = None,
) -> Decision:
    dest = destination(provider, provider, key, settings)
    source = source or f"keystore:byok:{provider}"
    if settings.sandbox_url and dest.credential:
        source = f"sandbox-demo:byok:{provider}"
    return Decision(
        provider=provider,
        model=model,
        route="byok",
        credential=dest.credential,
        credential_source=source,
        base_url=dest.base_url,
        adapter=provider,
        why=[*why, f"base URL: {dest.why}"],
        fallback=fallback,
        project=project,
        model_requested=model_requested,
    )


def _managed(
    provider: str,
    model: str,
    cencori_key: Secret,
    project: str,
    settings: Any,
    why: list[str],
    *,
    model_requested: str | None,
) -> Decision:
    dest = destination(CENCORI, provider, cencori_key, settings)
    source = (
        f"sandbox-demo:managed:{CENCORI}" if settings.sandbox_url else f"keystore:managed:{CENCORI}"
    )
    return Decision(
        provider=provider,
        model=model,
        route="managed",
        credential=dest.credential,
        credential_source=source,
        base_url=dest.base_url,
        adapter=CENCORI,
        why=[*why, f"base URL: {dest.why}"],
        project=project,
        model_requested=model_requested,
    )


def _default_provider(
    store: Any, project: str, cencori_key: Secret | None, why: list[str]
) -> tuple[str, str]:
    default = store.project_default(project)
    if default:
        record = store.get(default, project)
        model = (
            record.default_model
            if record is not None and record.default_model
            else provider_info(default).default_model
        )
        why.append(
            f"no model given: project {project!r} default provider {default!r}, model {model!r}"
        )
        return default, model
    if cencori_key is not None:
        why.append(
            f"no model and no project default: Cencori's gateway default {GATEWAY_DEFAULT_MODEL!r}"
        )
        return "google", GATEWAY_DEFAULT_MODEL
    enabled = [
        name for name in PROVIDERS if (rec := store.get(name, project)) is not None and rec.enabled
    ]
    if len(enabled) == 1:
        record = store.get(enabled[0], project)
        model = record.default_model or provider_info(enabled[0]).default_model
        why.append(
            f"no model and no project default: {enabled[0]!r} is the only enabled "
            f"BYOK key, model {model!r}"
        )
        return enabled[0], model
    raise ConfigurationError(
        f"No model was given and project {project!r} has no default provider.",
        hint="Pass model=… (e.g. 'gpt-4o-mini'), or choose a default with `cencori-nb keys set "
        'PROVIDER --make-default` ("Set as project default" in `%cencori setup`).',
        project=project,
    )


def _decide(model: str | None, provider: str | None, route: str, project: str | None) -> Decision:
    if route not in ("auto", "byok", "managed"):
        raise ConfigurationError(
            f"Unknown route {route!r}.", hint="Use 'auto', 'byok' or 'managed'.", route=route
        )
    settings = load_settings()
    project = project or settings.project
    store = _store()
    cencori_key: Secret | None = store.cencori_key(project)
    why: list[str] = []
    if model:
        try:
            provider, wire_model, reason = provider_for_model(model, provider)
        except UnknownModelError:
            # no BYOK provider here serves it, but Cencori's gateway may (command-…, sonar…)
            routed = gateway_provider(model) if provider is None and route != "byok" else None
            if routed is None or cencori_key is None:
                raise
            why.append(f"no BYOK provider serves {model!r}; Cencori routes it to {routed}")
            why.append(
                f"route {route}: managed through Cencori with the project key "
                f"({cencori_key.hint}), paid from credits"
            )
            register_secret(cencori_key)
            return _managed(
                routed, model, cencori_key, project, settings, why, model_requested=model
            )
        why.append(reason)
    elif provider:
        provider_info(provider)
        record = store.get(provider, project)
        wire_model = (
            record.default_model
            if record is not None and record.default_model
            else provider_info(provider).default_model
        )
        why.append(f"no model given: {provider!r} default model {wire_model!r}")
    else:
        provider, wire_model = _default_provider(store, project, cencori_key, why)
    managed_model = model or wire_model  # the gateway routes by the name the user wrote

    record = store.get(provider, project)
    byok_ok = record is not None and record.enabled
    if provider == LOCAL and record is None and route != "managed":
        # A local OpenAI-compatible server (Ollama, vLLM) usually needs no key: send none.
        why.append(
            "local server: no key stored, none sent (store one with `cencori-nb keys "
            "set local` if yours needs it)"
        )
        return _byok(
            LOCAL,
            wire_model,
            Secret(""),
            project,
            settings,
            why,
            model_requested=model,
            source="none:local",
        )
    if route == "byok" or (route == "auto" and byok_ok):
        if not byok_ok:
            disabled = record is not None
            raise ProviderNotConfiguredError(
                f"Route 'byok' was forced but the BYOK key for {provider!r} in project "
                f"{project!r} is {'disabled' if disabled else 'missing'}.",
                hint=(
                    f"Enable it with `cencori-nb keys enable {provider}`."
                    if disabled
                    else f"Add it with `cencori-nb keys set {provider}` (or `%cencori setup`)."
                ),
                provider=provider,
                project=project,
            )
        why.append(
            f"route {route}: BYOK key for {provider} is present and enabled "
            f"({record.api_key.hint}); you pay {provider} directly"
        )
        register_secret(record.api_key)
        allow = settings.for_project(project).allow_fallback
        fallback = None
        if route == "auto" and allow and cencori_key is not None:
            register_secret(cencori_key)
            fb_why = [
                "fallback after a BYOK failure (not after 401): managed through "
                "Cencori, paid from credits"
            ]
            fb_provider, fb_model = _gateway_model(provider, managed_model, fb_why)
            fallback = _managed(
                fb_provider, fb_model, cencori_key, project, settings, fb_why, model_requested=model
            )
            why.append("fallback to managed is enabled for this project (not after an invalid key)")
        elif route == "auto":
            why.append(
                "no fallback to managed ("
                + (
                    "project setting allow_fallback is off: no silent spend"
                    if not allow
                    else "no Cencori key"
                )
                + ")"
            )
        _warn_unknown_model(provider, wire_model)
        return _byok(
            provider,
            wire_model,
            record.api_key,
            project,
            settings,
            why,
            model_requested=model,
            fallback=fallback,
        )

    # managed: forced, or auto without a usable BYOK key
    if cencori_key is None:
        if route == "managed":
            raise ProviderNotConfiguredError(
                f"Route 'managed' was forced but project {project!r} has no Cencori project key.",
                hint="Add one (csk_…) with `cencori-nb keys set cencori`.",
                provider=provider,
                project=project,
            )
        raise _not_configured(provider, project, disabled=record is not None)
    if route == "auto":
        state = (
            f"the BYOK key for {provider} is disabled"
            if record
            else (f"no BYOK key for {provider}")
        )
        why.append(
            f"route auto: {state}; managed through Cencori with the project key "
            f"({cencori_key.hint}), paid from credits"
        )
    else:
        why.append(
            f"route managed was forced: Cencori project key ({cencori_key.hint}), paid from credits"
        )
    register_secret(cencori_key)
    provider, managed_model = _gateway_model(provider, managed_model, why)
    return _managed(
        provider, managed_model, cencori_key, project, settings, why, model_requested=model
    )


# (model, provider, route, project) → (state token, Decision). A decision is reused while
# the state it was computed from is unchanged: the settings (the object load_settings()
# returns changes with config.json and with CENCORI_NB_PROJECT / _SANDBOX) and the key
# store file's signature (a stat at most once a second: the one-second rule of
# cencori_nb.state). A change of any CENCORI_NB_* variable clears the memo (registered
# below). Resolving again costs several store lookups and a base-URL computation (per-call
# overhead matters: see benchmarks/overhead.py).
_memo: dict[tuple[Any, ...], tuple[tuple[Any, ...], Decision]] = {}
_MEMO_MAX = 256
state.on_reset("router.memo", _memo.clear, env=state.ALL)


def _state_token(settings: Settings | None = None) -> tuple[Any, ...]:
    return (settings or load_settings(), _store().signature())


def resolve(request: ChatRequest, settings: Settings | None = None) -> Decision:
    """The :class:`Decision` for ``request`` (its model, provider, route and project).

    ``settings``: the current settings when the caller has just read them (the client
    reads them once per request), else they are read here.

    Before a request is refused as not configured (no key, no default provider), the key
    store and the settings are looked at afresh (:func:`cencori_nb.state.recheck`): another
    process may have added the key less than a second ago.
    """
    state.check()
    key = (request.model, request.provider, request.route, request.project)
    token = _state_token(settings)
    hit = _memo.get(key)
    if hit is not None and hit[0] == token:
        decision = hit[1]
        register_secret(decision.credential)  # cheap; the registry may have been reset
        return decision
    try:
        decision = _decide(request.model, request.provider, request.route, request.project)
    except ConfigurationError:
        state.recheck()
        fresh = _state_token()
        if fresh == token:
            raise
        token = fresh
        decision = _decide(request.model, request.provider, request.route, request.project)
    budgets = token[0].for_project(decision.project)
    if budgets.soft_budget_usd is not None or budgets.hard_cap_usd is not None:
        fallback = decision.fallback
        decision = replace(
            decision,
            budgeted=True,
            fallback=None if fallback is None else replace(fallback, budgeted=True),
        )
    if len(_memo) >= _MEMO_MAX:
        _memo.clear()
    _memo[key] = (token, decision)
    return decision


def explain_route(
    model: str | None = None,
    *,
    provider: str | None = None,
    route: str = "auto",
    project: str | None = None,
) -> Decision:
    """Where a request with these arguments would go, and why (shows only the key hint)."""
    # ``route`` is the caller's string, as chat() takes it; resolve() refuses anything but
    # the three routes with a ConfigurationError (what a user who typed one gets).
    return resolve(
        ChatRequest(
            messages=(Message("user", ""),),
            model=model,
            provider=provider,
            route=route,  # type: ignore[arg-type]  # checked by resolve()
            project=project,
        )
    )
