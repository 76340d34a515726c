"""Non-secret settings: current project, sandbox URL, money policy, per-project budgets.

Stored as ``config.json`` in the per-user home (0600, atomic writes). Environment variables
win over the file:

- ``CENCORI_NB_PROJECT``: the current project (default ``"default"``);
- ``CENCORI_NB_SANDBOX``: base URL of a running sandbox (``http://127.0.0.1:PORT``); when
  set, every adapter talks to it instead of the real providers, with demo keys only
  (:mod:`cencori_nb.egress`);
- ``CENCORI_NB_SANDBOX_ALLOW_REMOTE``: host names a non-loopback sandbox may run on;
- ``CENCORI_NB_MEMBER``: who is making requests, written on every ledger row (else the
  ``member`` setting, else ``user@host``);
- ``CENCORI_NB_LEDGER_URL``: a PostgreSQL ledger shared by a team (else the URL saved by
  ``cencori-nb ledger use URL`` in its own 0600 file, see :mod:`cencori_nb.ledger_postgres`;
  else the SQLite ledger in the home).

Where keys may go (:mod:`cencori_nb.egress`): ``base_urls`` on a remote host other than the
provider's own needs that host in ``trusted_hosts[provider]`` (see :func:`trust_host`).

Secrets never live here; they live in the key store.

The file is read again when its signature changes; like the key store's, the signature is
looked at (``stat``) at most once a second, so an edit made by another process is noticed
up to a second late (:mod:`cencori_nb.state`, the one-second rule); this process's own
writes are seen at once.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from . import state
from .errors import ConfigurationError
from .home import atomic_write, ensure_home, home_dir

__all__ = [
    "ProjectSettings",
    "Settings",
    "config_path",
    "current_member",
    "current_project",
    "load_settings",
    "refuse_key_as_project",
    "sandbox_url",
    "save_settings",
    "trust_host",
    "update_project",
    "update_settings",
]

ENV_PROJECT = "CENCORI_NB_PROJECT"
ENV_SANDBOX = "CENCORI_NB_SANDBOX"
ENV_MEMBER = "CENCORI_NB_MEMBER"
DEFAULT_PROJECT = "default"
ByokPolicy = Literal["zero", "percent", "managed"]


@dataclass(frozen=True)
class ProjectSettings:
    """Per-project switches. Budgets are monthly, in USD."""

    allow_fallback: bool = False  # BYOK failure may fall back to managed (spends credits)
    soft_budget_usd: Decimal | None = None  # warnings at 50/80/100 %
    hard_cap_usd: Decimal | None = None  # refuse requests that would pass it


@dataclass(frozen=True)
class Settings:
    """All non-secret settings. Use :func:`load_settings` / :func:`update_settings`."""

    project: str = DEFAULT_PROJECT
    markup_pct: Decimal = Decimal(50)  # Cencori's published catalogue markup
    byok_policy: ByokPolicy = "zero"  # what a BYOK request costs the wallet
    byok_fee_pct: Decimal = Decimal(0)  # used when byok_policy == "percent"
    sandbox_url: str | None = None
    base_urls: dict[str, str] = field(default_factory=dict)  # e.g. {"ollama": "http://…/v1"}
    # provider → hosts (not its own) that may receive its stored key through base_urls
    trusted_hosts: dict[str, list[str]] = field(default_factory=dict)
    sandbox_allow_remote: list[str] = field(default_factory=list)  # remote sandbox hosts
    # requests per minute on the managed route (None: Cencori's 60, or a sandbox's own
    # --rpm; 0: no pacing); see cencori_nb.pacing
    managed_rpm: int | None = None
    projects: dict[str, ProjectSettings] = field(default_factory=dict)
    # Under a hard cap, the output tokens reserved for a request sent without max_tokens
    # (at most; less when the model's context window says so). See accounting.reserve.
    reserve_output_tokens: int = 1024
    # Models that may be sent under a hard cap although no price is known for them (they
    # are reserved at $0 and recorded "cost unknown"); every other unpriced model is refused.
    unpriced_models_allowed: list[str] = field(default_factory=list)
    # One request whose estimated maximum cost is above this is a decision, not an accident:
    # chat() refuses it unless max_cost_usd covers it, the magic and a terminal CLI ask.
    # None turns the question off.
    confirm_above_usd: Decimal | None = Decimal("0.10")
    # Who makes this machine's requests, as the team ledger names them (None: user@host).
    member: str | None = None

    def for_project(self, project: str | None = None) -> ProjectSettings:
        return self.projects.get(project or self.project, ProjectSettings())


# (home, config path, its watch): home_dir() is memoised, so its identity says "same home"
_config_memo: tuple[Path, Path, state.FileWatch] | None = None


def config_path() -> Path:
    return _config()[1]


def _config() -> tuple[Path, Path, state.FileWatch]:
    global _config_memo
    home = home_dir()
    memo = _config_memo
    if memo is not None and memo[0] is home:
        return memo
    path = home / "config.json"
    memo = _config_memo = (home, path, state.watch(path))
    return memo


def _decode(raw: dict[str, Any]) -> Settings:
    known = {f.name for f in fields(Settings)}
    data = {k: v for k, v in raw.items() if k in known}
    for key in ("markup_pct", "byok_fee_pct", "confirm_above_usd"):
        if data.get(key) is not None:
            data[key] = Decimal(str(data[key]))
    projects = {}
    for name, p in (data.pop("projects", None) or {}).items():
        projects[name] = ProjectSettings(
            allow_fallback=bool(p.get("allow_fallback", False)),
            soft_budget_usd=None
            if p.get("soft_budget_usd") is None
            else Decimal(str(p["soft_budget_usd"])),
            hard_cap_usd=None if p.get("hard_cap_usd") is None else Decimal(str(p["hard_cap_usd"])),
        )
    if "reserve_output_tokens" in data:
        try:
            data["reserve_output_tokens"] = int(data["reserve_output_tokens"])
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"reserve_output_tokens in {config_path()} must be a whole number of tokens."
            ) from None
        if data["reserve_output_tokens"] < 1:
            raise ConfigurationError(
                f"reserve_output_tokens in {config_path()} must be at least 1."
            )
    if "unpriced_models_allowed" in data:
        allowed = data["unpriced_models_allowed"] or []
        if isinstance(allowed, str) or not all(isinstance(m, str) for m in allowed):
            raise ConfigurationError(
                f"unpriced_models_allowed in {config_path()} must be a list of model ids."
            )
        data["unpriced_models_allowed"] = list(allowed)
    settings = Settings(projects=projects, **data)
    rpm = settings.managed_rpm
    if rpm is not None and (isinstance(rpm, bool) or not isinstance(rpm, int) or rpm < 0):
        raise ConfigurationError(
            f"managed_rpm {rpm!r} in {config_path()} is not a whole number of requests per "
            "minute (0 turns pacing off).",
            hint="Set it with cencori_nb.settings."
            "update_settings(managed_rpm=60), or delete the entry for the default.",
        )
    if settings.byok_policy not in ("zero", "percent", "managed"):
        raise ConfigurationError(
            f"byok_policy {settings.byok_policy!r} in {config_path()} is not one of "
            "zero, percent, managed."
        )
    return settings


def _encode(settings: Settings) -> bytes:
    def default(o: Any) -> Any:
        if isinstance(o, Decimal):
            return str(o)
        raise TypeError(type(o))

    return json.dumps(asdict(settings), default=default, indent=2, sort_keys=True).encode()


_cache: tuple[Path, Any, Settings] | None = None  # (path, file signature, its settings)
_DEFAULTS = Settings()  # returned while no config.json exists (one object: memo-friendly)
# load_settings() runs several times per request: memoise the env overlay on the file's
# Settings object (held here, so its identity cannot be reused) and the two env values.
_overlaid: tuple[Settings, str | None, str | None, Settings] | None = None


def _forget() -> None:
    global _cache, _overlaid
    _cache = _overlaid = None


state.on_reset("settings", _forget)


def _load_file() -> Settings:
    return _read_file()[0]


def _read_file() -> tuple[Settings, Any, state.FileWatch]:
    """The file's settings, its signature when read and its watch."""
    global _cache
    _home, path, watch = _config()
    try:
        sig = watch.signature()
    except OSError as exc:
        raise ConfigurationError(
            f"The settings file {path} cannot be read ({exc.strerror or type(exc).__name__}).",
            hint="Check its permissions, or delete it to return to the defaults.",
            path=path,
        ) from None
    if sig is None:
        return _DEFAULTS, None, watch
    cached = _cache
    if cached is not None and cached[0] is path and cached[1] == sig:
        return cached[2], sig, watch
    try:
        raw = json.loads(path.read_bytes())
    except ValueError as exc:  # also bytes that are not UTF-8
        raise ConfigurationError(
            f"The settings file {path} is not valid UTF-8 JSON ({str(exc)[:120]}).",
            hint="Fix it by hand or delete it to return to the defaults.",
            path=path,
        ) from None
    try:
        if not isinstance(raw, dict):
            raise TypeError(f"a JSON object is expected, not {type(raw).__name__}")
        settings = _decode(raw)
    except ConfigurationError:
        raise
    except (ValueError, TypeError, AttributeError, ArithmeticError) as exc:
        raise ConfigurationError(
            f"The settings file {path} holds values of the wrong shape ({str(exc)[:120]}).",
            hint="Fix it by hand or delete it to return to the defaults.",
            path=path,
        ) from None
    _cache = (path, sig, settings)
    return settings, sig, watch


# The last answer of load_settings(), with the watch of the file it was read from and that
# file's signature then: while the signature is the same (looked at by the one-second rule;
# at once after this process's own save) and none of the variables it depends on changed
# (the registry drops it at the state.check() below), it is the answer. load_settings()
# runs a few times per request; this is a check of the environment and a signature.
_last: tuple[state.FileWatch, Any, Settings] | None = None


def _forget_last() -> None:
    global _last
    _last = None


state.on_reset("settings.last", _forget_last, env=(state.ENV_HOME, ENV_PROJECT, ENV_SANDBOX))


def load_settings() -> Settings:
    """The current settings, file values overridden by ``CENCORI_NB_PROJECT`` / ``_SANDBOX``."""
    state.check()
    last = _last
    if last is not None:
        try:
            if last[0].signature() == last[1]:
                return last[2]
        except OSError:
            pass  # the full read says what is wrong with the file
    return _load_settings()


def _load_settings() -> Settings:
    global _overlaid, _last
    base, sig, watch = _read_file()
    env_project = state.env(ENV_PROJECT)
    env_sandbox = state.env(ENV_SANDBOX)
    memo = _overlaid
    if memo is not None and memo[0] is base and memo[1] == env_project and memo[2] == env_sandbox:
        settings = memo[3]
    else:
        settings = base
        if env_project:
            settings = replace(settings, project=env_project)
        if env_sandbox:
            settings = replace(settings, sandbox_url=env_sandbox.rstrip("/"))
        _overlaid = (base, env_project, env_sandbox, settings)
    _last = (watch, sig, settings)
    return settings


def save_settings(settings: Settings) -> None:
    global _cache
    ensure_home()
    _home, path, watch = _config()
    atomic_write(path, _encode(settings))
    _cache = None
    watch.stat()  # seen at once by this process


def refuse_key_as_project(name: object) -> None:
    """A stored key (or a key-shaped string) must never become a project name on disk."""
    from .errors import KeyAsNameError
    from .redact import holds_secret, looks_like_key

    if isinstance(name, str) and (holds_secret(name) or looks_like_key(name)):
        raise KeyAsNameError(
            "The project name is one of your API keys (or shaped like one); nothing was saved.",
            hint="Project names look like 'default'.",
        )


def update_settings(**changes: Any) -> Settings:
    """Change top-level settings in the file and return the new settings."""
    refuse_key_as_project(changes.get("project"))
    _refuse_keys_in_urls(changes)
    current = _load_file()
    new = replace(current, **changes)
    _decode(json.loads(_encode(new)))  # validate before writing
    save_settings(new)
    return load_settings()


def _refuse_keys_in_urls(changes: dict[str, Any]) -> None:
    """A base URL, sandbox URL or trusted host holding a key is refused before it is written
    (:func:`cencori_nb.egress.refuse_key_in_url`); other URL problems are judged at use."""
    from .egress import refuse_key_in_url

    if isinstance(changes.get("sandbox_url"), str):
        refuse_key_in_url(changes["sandbox_url"], "sandbox URL")
    for url in (changes.get("base_urls") or {}).values():
        if isinstance(url, str):
            refuse_key_in_url(url, "base URL")
    for hosts in (changes.get("trusted_hosts") or {}).values():
        for host in hosts if isinstance(hosts, list | tuple) else ():
            if isinstance(host, str):
                refuse_key_in_url(host, "trusted host")


def update_project(project: str | None = None, **changes: Any) -> ProjectSettings:
    """Change one project's settings (``allow_fallback``, ``soft_budget_usd``, ``hard_cap_usd``)."""
    current = _load_file()
    name = project or load_settings().project
    refuse_key_as_project(name)
    proj = replace(current.projects.get(name, ProjectSettings()), **changes)
    save_settings(replace(current, projects={**current.projects, name: proj}))
    return proj


def trust_host(provider: str, host: str) -> Settings:
    """Allow ``host`` to receive ``provider``'s stored key through ``base_urls`` (an explicit
    opt-in, e.g. for your own proxy; loopback hosts need none)."""
    from .catalog import provider_info
    from .egress import KeyInURLError, UnsafeURLError, parse_url

    if provider != "cencori":
        provider_info(provider)
    try:
        name = parse_url(f"https://{host.strip()}", what="host").host
    except KeyInURLError:
        raise
    except UnsafeURLError:
        raise ConfigurationError(
            f"{host!r} is not a host name.", hint="Give just the host, e.g. 'proxy.example.com'."
        ) from None
    current = _load_file()
    hosts = [h for h in current.trusted_hosts.get(provider, []) if h != name] + [name]
    return update_settings(trusted_hosts={**current.trusted_hosts, provider: hosts})


def current_project(explicit: str | None = None) -> str:
    """The project to act on: the explicit one, else ``CENCORI_NB_PROJECT``, else the file's."""
    if explicit:
        return explicit
    return load_settings().project


_member_memo: tuple[str | None, Settings, str] | None = None


def current_member(settings: Settings | None = None) -> str:
    """Who is making requests, as written on each ledger row: ``CENCORI_NB_MEMBER``, else
    the ``member`` setting, else the OS user and host (``ana@laptop``). ``settings``: the
    current ones when the caller has them already (:func:`load_settings` by default)."""
    global _member_memo
    env = state.env(ENV_MEMBER)
    if settings is None:
        settings = load_settings()
    memo = _member_memo
    if memo is not None and memo[0] == env and memo[1] is settings:
        return memo[2]
    name = (env or settings.member or "").strip()
    if name:
        refuse_key_as_member(name)
    else:
        import getpass
        import socket

        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # a container uid with no passwd entry
            user = f"uid{os.getuid()}"
        name = f"{user}@{socket.gethostname()}"
    _member_memo = (env, settings, name)
    return name


def refuse_key_as_member(name: str) -> None:
    """A member name goes on every row of a shared ledger: never a key, or key-shaped."""
    from .errors import KeyAsNameError
    from .redact import holds_secret, looks_like_key

    if holds_secret(name) or looks_like_key(name) or len(name) > 200:
        raise KeyAsNameError(
            "The member name (CENCORI_NB_MEMBER or the member setting) is one of your API "
            "keys, shaped like one, or longer than 200 characters; nothing was sent.",
            hint="Use a person's name or email, e.g. CENCORI_NB_MEMBER=ana@example.org.",
        )


def sandbox_url() -> str | None:
    """Base URL of the sandbox every adapter should use, or None for the real providers."""
    return load_settings().sandbox_url
