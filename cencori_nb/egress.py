"""Where a request that carries a key may go, and which key a sandbox gets.

The one home for the rules of issue 10.2 ("a stored key goes only to its provider's real
host"). The router asks :func:`destination` for every decision; ``%cencori sandbox on``
asks :func:`sandbox_endpoint` before switching.

URLs are parsed strictly (:func:`parse_url`) and then *rebuilt* from the parsed parts, so
the URL that is checked is the URL the transport connects to. Refused outright: anything
but ``http``/``https`` (the scheme is case-insensitive); user info (``http://api.openai.com@
evil.com`` goes to ``evil.com``); whitespace or control characters anywhere; a query or
fragment; backslashes; a non-ASCII host (write its ``xn--`` form, so the host you approve is
the one connected to); an unspecified address (``0.0.0.0``, ``::``); a host that is a number
but not a plain dotted quad (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``: the
resolver reads those as 127.0.0.1, ``ipaddress`` does not); an IPv6 zone id. One trailing dot
of a DNS name is dropped (``api.openai.com.`` is the same host).

*Loopback* means an IP address in 127.0.0.0/8 or ``::1`` (also IPv4-mapped), or exactly the
name ``localhost``. ``localhost.evil.com`` and ``127.0.0.1.nip.io`` are remote names.
A loopback request never goes through a proxy named by the environment (``HTTP_PROXY``,
``ALL_PROXY``): it would carry the key in plain http to the proxy's host, which is not this
machine. :data:`DIRECT_MOUNTS` says so to the HTTP clients (``transport/pool.py``).

The rules, applied to every request that carries a key (a local server with no stored key
carries none):

1. ``http://`` only to loopback. Over plain HTTP anyone on the path reads the key.
2. Sandbox mode (``CENCORI_NB_SANDBOX``, ``sandbox_url`` in ``config.json``, ``%cencori
   sandbox on URL``): the request carries the provider's fixed, clearly fake demo key
   (:data:`DEMO_KEYS`; ``csk_test_sandbox_demo`` for a Cencori *test* key, which keeps its
   free test mode), never a stored key. A stored key that is itself a demo key (the
   notebooks store ``sk-sandbox-demo-openai``; tests store variants such as
   ``sk-sandbox-demo-openai-revoked``, see :func:`is_demo_key`) is sent as it is, so the
   sandbox's key-dependent behaviours (a key containing ``revoked`` → 401, per-key rate
   limits) stay reachable. A sandbox URL that is not loopback is refused unless
   ``CENCORI_NB_SANDBOX_ALLOW_REMOTE`` (or ``sandbox_allow_remote`` in ``config.json``) names
   its host; then it still gets only demo keys, and only over https.
3. A custom base URL (``settings.base_urls``) on a host that is neither loopback nor the
   provider's own API host, for a provider whose request carries a stored key, needs
   ``settings.trusted_hosts[provider]`` to name that host (``cencori-nb`` never guesses that
   a proxy is yours). ``%cencori route`` shows which rule let the URL through.
"""

from __future__ import annotations

import ipaddress
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import ConfigurationError
from .keystore.secret import Secret

__all__ = [
    "DEMO_KEYS",
    "DIRECT_MOUNTS",
    "ENV_SANDBOX_ALLOW_REMOTE",
    "direct_to",
    "Destination",
    "Endpoint",
    "KeyInURLError",
    "UnsafeURLError",
    "destination",
    "is_demo_key",
    "parse_url",
    "refuse_key_in_url",
    "sandbox_credential",
    "sandbox_endpoint",
]

ENV_SANDBOX_ALLOW_REMOTE = "CENCORI_NB_SANDBOX_ALLOW_REMOTE"

# One fixed demo key per adapter, in that provider's usual form, so requests look right to
# the sandbox (and to a reader), and clearly fake ("sandbox-demo" in every one).
DEMO_KEYS: dict[str, str] = {
    "openai": "sk-sandbox-demo-openai",
    "anthropic": "sk-ant-sandbox-demo",
    "google": "AIzaSandbox-demo-google",
    "mistral": "sandbox-demo-mistral",
    "groq": "gsk_sandbox_demo",
    "xai": "xai-sandbox-demo",
    "deepseek": "sk-sandbox-demo-deepseek",
    "together": "sandbox-demo-together",
    "openrouter": "sk-or-sandbox-demo",
    "local": "sandbox-demo-local",
    "cencori": "csk_sandbox_demo",
}
# A Cencori test key (csk_test_…) is free at Cencori; its demo keeps that mode (the prefix
# is the key's kind, not its secret), so test-mode accounting works in the sandbox too.
CENCORI_TEST_PREFIX = "csk_test_"
DEMO_CENCORI_TEST_KEY = "csk_test_sandbox_demo"
_DEMO_VARIANT = re.compile(r"[-_][A-Za-z0-9_-]{1,48}")


# httpx2 mount patterns for the loopback destinations above: mapped to no proxy, so an
# environment proxy never sees a loopback request (plain http, carrying the stored key).
DIRECT_MOUNTS: tuple[str, ...] = ("all://127.0.0.0/8", "all://[::1]", "all://localhost")


def direct_to(host: str) -> bool:
    """Whether a request to ``host`` (as a URL carries it) must bypass an environment proxy:
    the loopback of the module docstring, as :data:`DIRECT_MOUNTS` says to httpx2 (for a
    transport that routes proxies itself, such as aiohttp's)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return _unmapped(ipaddress.ip_address(host)).is_loopback
    except ValueError:
        return False


def _unmapped(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) as the IPv4 address it names:
    loopback and 'any address' are judged on that."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class UnsafeURLError(ConfigurationError):
    """A URL a key must not be sent to (or one too ambiguous to judge)."""

    code = "unsafe_url"


class KeyInURLError(UnsafeURLError):
    """A URL (or host) that holds an API key: stored, key-shaped, or percent-encoded."""

    code = "key_in_url"


def refuse_key_in_url(raw: str, what: str = "base URL") -> None:
    """Raise :class:`KeyInURLError` if ``raw`` holds a stored key or a key shape, as is or
    percent-decoded. A key in a URL's path or host would be written to ``config.json``,
    shown by ``%cencori route`` and in every message that names the URL, and sent in the
    request line to whoever serves it; the message never repeats the URL."""
    from urllib.parse import unquote

    from .redact import NOTEBOOK_KEY_SHAPES, holds_secret

    for text in {raw, unquote(raw)}:
        if holds_secret(text) or NOTEBOOK_KEY_SHAPES.search(text):
            raise KeyInURLError(
                f"Refused the {what}: it holds an API key (not repeated here); nothing was "
                "sent or saved.",
                hint="Keys belong in the key store (cencori_nb.keys.set, `%cencori setup`); "
                "give the URL without the key.",
            )


# --------------------------------------------------------------------------- demo keys


def is_demo_key(provider: str, key: Secret) -> bool:
    """Whether ``key`` is ``provider``'s demo key or a variant of it (the demo key followed by
    ``-`` or ``_`` and up to 48 letters, digits, ``-`` or ``_``: ``sk-sandbox-demo-openai-
    revoked``, ``csk_sandbox_demo_2``). No real key has these forms."""
    value = key.reveal()
    demos = [DEMO_KEYS.get(provider)]
    if provider == "cencori":
        demos.append(DEMO_CENCORI_TEST_KEY)
    return any(
        demo is not None
        and (
            value == demo
            or (value.startswith(demo) and _DEMO_VARIANT.fullmatch(value, len(demo)) is not None)
        )
        for demo in demos
    )


def sandbox_credential(provider: str, stored: Secret) -> Secret:
    """The key a sandbox request for ``provider`` carries instead of ``stored``.

    Empty stays empty (a local server with no key gets no key header); a stored demo key
    (or variant) is sent as is; anything else is replaced by the fixed demo key.
    """
    if not stored or is_demo_key(provider, stored):
        return stored
    if provider == "cencori" and stored.reveal().startswith(CENCORI_TEST_PREFIX):
        return Secret(DEMO_CENCORI_TEST_KEY)
    return Secret(DEMO_KEYS.get(provider, "sandbox-demo-" + provider))


# --------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class Endpoint:
    """A parsed, checked base URL. ``url`` is rebuilt from the parts (what is connected)."""

    url: str
    scheme: str
    host: str  # lower-case ASCII; IPv6 without brackets
    port: int | None
    loopback: bool


_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")


def _shown(raw: str) -> str:
    """``raw`` fit to repeat in a message: user info, query and fragment (where a key could
    sit) cut out, and at most 120 characters."""
    head, sep, rest = raw.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            authority = "…@" + authority.rpartition("@")[2]
        raw = f"{head}://{authority}{slash}{path}"
    for mark in ("?", "#"):
        if mark in raw:
            raw = raw.partition(mark)[0] + mark + "…"
    return raw if len(raw) <= 120 else raw[:117] + "…"


def _refuse(what: str, raw: str, why: str, hint: str) -> UnsafeURLError:
    return UnsafeURLError(f"Refused {what} {_shown(raw)!r}: {why}.", hint=hint)


def parse_url(raw: str, *, what: str = "base URL") -> Endpoint:
    """Parse ``raw`` strictly (see the module docstring) or raise :class:`UnsafeURLError`."""
    if not isinstance(raw, str) or not raw:
        raise UnsafeURLError(f"The {what} is empty.", hint="Give an http(s):// URL.")
    refuse_key_in_url(raw, what)
    if any(
        ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp") for ch in raw
    ):
        raise _refuse(
            what,
            raw,
            "it contains whitespace or an invisible/control character",
            "Write the URL without spaces or line breaks.",
        )
    if "\\" in raw:
        raise _refuse(what, raw, "it contains a backslash", "Write the URL with '/' only.")
    try:
        parts = urlsplit(raw)
    except ValueError:
        raise _refuse(
            what,
            raw,
            "it is not a well-formed URL",
            "Write it like https://host/v1 or http://127.0.0.1:PORT.",
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not raw[len(scheme) :].startswith("://"):
        raise _refuse(
            what,
            raw,
            "it is not an http:// or https:// URL",
            "Write it like https://host/v1 or http://127.0.0.1:PORT.",
        )
    if "@" in parts.netloc:
        raise _refuse(
            what,
            raw,
            "it has user info before '@' (the request would go to "
            f"{parts.netloc.rpartition('@')[2][:60]!r})",
            "Remove 'user@' (credentials never belong in a base URL).",
        )
    if parts.query or parts.fragment or "?" in raw or "#" in raw:
        raise _refuse(
            what, raw, "it has a query or fragment", "Give just scheme://host[:port]/path."
        )
    netloc = parts.netloc
    if netloc.startswith("["):
        literal, close, after = netloc[1:].partition("]")
        if not close or (after and not after.startswith(":")):
            raise _refuse(
                what, raw, "its IPv6 address is malformed", "Write it like http://[::1]:PORT."
            )
        host_text = literal
    else:
        host_text = netloc.rpartition(":")[0] if ":" in netloc else netloc
    try:
        port = parts.port
    except ValueError:
        raise _refuse(
            what,
            raw,
            "its port is not a number from 1 to 65535",
            "Write it like http://127.0.0.1:8000.",
        ) from None
    if port == 0:
        raise _refuse(what, raw, "port 0 cannot be connected to", "Give the real port.")
    if not host_text:
        raise _refuse(what, raw, "it has no host", "Write it like https://host/v1.")
    if not host_text.isascii():
        raise _refuse(
            what,
            raw,
            "its host is not ASCII (a look-alike of another name is possible)",
            "Write the host in its punycode (xn--…) form.",
        )
    if "%" in host_text:
        raise _refuse(
            what,
            raw,
            "its host has a percent-escape or an IPv6 zone id",
            "Write the host plainly (and use a global or loopback address).",
        )
    host = host_text.lower()
    loopback = False
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is None and netloc.startswith("["):
        raise _refuse(
            what, raw, "its IPv6 address is malformed", "Write it like http://[::1]:PORT."
        )
    if ip is not None:
        ip = _unmapped(ip)
        if ip.is_unspecified:
            raise _refuse(
                what,
                raw,
                f"{host} means 'any address', not a host to send to",
                "Use 127.0.0.1 (or ::1) for this machine.",
            )
        loopback = ip.is_loopback
        if isinstance(ip, ipaddress.IPv4Address):
            host = shown_host = str(ip)
        else:
            host = ip.compressed
            shown_host = f"[{host}]"
    else:
        name = host[:-1] if host.endswith(".") else host
        labels = name.split(".")
        if _NUMERIC_LABEL.fullmatch(labels[-1]):
            raise _refuse(
                what,
                raw,
                "its host is a number in a form other than a plain "
                "dotted quad (resolvers read such forms as an IP address)",
                "Write the address as four decimal numbers, e.g. 127.0.0.1.",
            )
        if not all(_LABEL.fullmatch(label) for label in labels) or len(name) > 253:
            raise _refuse(
                what,
                raw,
                "its host is not a valid host name",
                "Use letters, digits, '-' and '.' only.",
            )
        host = shown_host = name
        loopback = name == "localhost"
    path = parts.path.rstrip("/")
    url = f"{scheme}://{shown_host}{'' if port is None else f':{port}'}{path}"
    return Endpoint(url=url, scheme=scheme, host=host, port=port, loopback=loopback)


def _host_name(text: str) -> str:
    """A host as written in an opt-in (``evil.com``, ``EVIL.COM.``, ``[::1]``) → its form in
    :attr:`Endpoint.host`; '' when it cannot be one."""
    text = text.strip()
    if not text:
        return ""
    try:
        return parse_url(f"https://{text}", what="host").host
    except UnsafeURLError:
        return ""


def sandbox_endpoint(url: str, *, allow_remote: Iterable[str] = ()) -> Endpoint:
    """Check a sandbox URL: loopback, or a remote host named in ``allow_remote`` (over https).

    Raises :class:`UnsafeURLError` saying how to opt in.
    """
    ep = parse_url(url, what="sandbox URL")
    if ep.loopback:
        return ep
    allowed = {_host_name(h) for h in allow_remote} - {""}
    if ep.host not in allowed:
        raise UnsafeURLError(
            f"Refused sandbox URL {ep.url}: {ep.host} is not this machine (loopback). A "
            "sandbox there would see every request.",
            hint=f"If you mean it, set {ENV_SANDBOX_ALLOW_REMOTE}={ep.host} (or `%cencori "
            "sandbox on URL --allow-remote`); requests to it still carry only demo "
            "keys, never your stored ones.",
        )
    if ep.scheme != "https":
        raise _http_refused(ep, "sandbox")
    return ep


def _http_refused(ep: Endpoint, whose: str) -> UnsafeURLError:
    return UnsafeURLError(
        f"Refused {ep.url}: a request carrying the {whose} key would cross the network in "
        f"plain http:// to {ep.host}, where anyone on the path can read it.",
        hint="Use https://, or reach the server through loopback (e.g. an SSH tunnel to "
        "127.0.0.1).",
    )


@dataclass(frozen=True)
class Destination:
    """Where one decision sends its request, with which key, and why that is allowed."""

    base_url: str
    credential: Secret
    why: str


def destination(
    *,
    adapter: str,
    provider: str,
    credential: Secret,
    sandbox_url: str | None,
    sandbox_prefix: str,
    configured: str | None,
    default_url: str,
    trusted_hosts: Mapping[str, Iterable[str]],
    sandbox_allow_remote: Iterable[str] = (),
) -> Destination:
    """Apply the rules of the module docstring to one request.

    ``adapter`` is the wire format (``cencori`` on the managed route) and names the key;
    ``configured`` is ``settings.base_urls``' entry; ``default_url`` the provider's real API.
    """
    if sandbox_url:
        ep = sandbox_endpoint(sandbox_url, allow_remote=sandbox_allow_remote)
        key = sandbox_credential(adapter, credential)
        demo = (
            "no key"
            if not key
            else f"the stored demo key {key.hint}"
            if key is credential
            else f"the demo key {key.hint}"
        )
        where = "loopback" if ep.loopback else f"remote, allowed by {ENV_SANDBOX_ALLOW_REMOTE}"
        return Destination(
            ep.url + sandbox_prefix,
            key,
            f"sandbox at {ep.url} ({where}); it gets {demo}, never a stored key",
        )
    if not configured:
        ep = parse_url(default_url, what=f"{provider} default URL")
        _check_http(ep, credential, adapter)
        return Destination(
            ep.url,
            credential,
            "the provider's public API"
            if not ep.loopback
            else "the provider's default address on this machine",
        )
    ep = parse_url(configured, what=f"base_urls[{provider!r}]")
    _check_http(ep, credential, adapter)
    if ep.loopback:
        return Destination(
            ep.url, credential, "base URL from settings.base_urls (loopback: no opt-in needed)"
        )
    if not credential:
        return Destination(ep.url, credential, "base URL from settings.base_urls (no key is sent)")
    own = parse_url(default_url, what=f"{provider} default URL").host if default_url else ""
    if ep.host == own:
        return Destination(
            ep.url,
            credential,
            f"base URL from settings.base_urls ({ep.host} is {provider}'s own host)",
        )
    trusted = {_host_name(h) for h in trusted_hosts.get(adapter, ())} - {""}
    if ep.host not in trusted:
        raise UnsafeURLError(
            f"Refused base_urls[{provider!r}] = {ep.url}: your stored {adapter} key would go "
            f"to {ep.host}, which is not {adapter}'s own host ({own}).",
            hint=f"If {ep.host} is yours (a proxy, a gateway), say so: cencori_nb.settings."
            f"trust_host({adapter!r}, {ep.host!r}). Otherwise remove the base URL.",
        )
    return Destination(
        ep.url,
        credential,
        f"base URL from settings.base_urls; {ep.host} receives your {adapter} "
        f"key because settings.trusted_hosts[{adapter!r}] names it",
    )


def _check_http(ep: Endpoint, credential: Secret, adapter: str) -> None:
    if credential and ep.scheme == "http" and not ep.loopback:
        raise _http_refused(ep, f"stored {adapter}")


def allowed_remote_sandbox_hosts(config_value: Iterable[str] | str | None) -> list[str]:
    """The hosts a remote sandbox may be on: the env variable's, then ``config.json``'s."""
    hosts: list[str] = []
    env = os.environ.get(ENV_SANDBOX_ALLOW_REMOTE)
    if env:
        hosts += [h for h in env.split(",") if h.strip()]
    if isinstance(config_value, str):
        hosts.append(config_value)
    elif config_value:
        hosts += list(config_value)
    return hosts
