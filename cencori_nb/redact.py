"""The one home of secret scrubbing: what a key looks like, which keys we hold, how to blank
them out of text.

Every provider key we know has a recognisable prefix (``sk-``, ``sk-ant-``, ``sk-proj-``,
``sk-or-``, ``AIza``, ``csk_``, ``gsk_``, ``xai-``). :data:`KEY_PREFIXES` lists them and
:func:`key_pattern` builds a regex for them with the strictness a caller needs.

Three named policies say how strict each kind of output is; every caller uses one of them
and every match becomes the one :data:`MARKER`:

- :data:`LOG_LINE` (the log filter, error details): short bodies match (a log line may hold a
  truncated key), and ``Bearer …`` / ``key=…`` / ``x-api-key: …`` values go too;
- :data:`USER_MESSAGE` (a provider's error text, CLI and magic messages, IPython history):
  masked keys (``sk-proj-****abcd``), ``Bearer`` tokens, context values and any long
  token-like run (32+ characters) go, because a person reads these and nothing breaks;
- :data:`NOTEBOOK` (the save-time scrubber): must not corrupt an image or a word such as
  ``sk-learn``, so shapes need longer bodies containing a digit; in exchange it also finds
  the exact stored keys hex- or base64-encoded (any alignment, across line breaks),
  LaTeX-escaped (``csk\\_live…``), percent-encoded (``%5F``), JSON-escaped (``\\u005f``) or as
  HTML character references.

Exact stored values (which need not be key-shaped) are removed first by every policy.
Every policy, and :func:`remove_stored_keys` for replies, also finds a key split by
characters a reader does not see (zero-width and bidi characters, soft hyphens, terminal
escape sequences): the text is searched with them folded away, and only what that reveals
is replaced. They
come from the secrets registry: the key store calls :func:`register_secrets` whenever it
opens or writes a store, the router registers every credential it hands out, and callers may
pass more for one call. Nothing here imports the key store.

:class:`~cencori_nb.errors.KeyInPromptError` is raised by :func:`refuse_key_in_prompt`, the
one check for a key pasted into a prompt.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from . import state

__all__ = [
    "CONTEXT_PATTERN",
    "CREDENTIAL_HEADERS",
    "KEY_PREFIXES",
    "LOG_LINE",
    "MARKER",
    "NOTEBOOK",
    "PROXY_CREDENTIAL_HEADERS",
    "REDACTED",
    "USER_MESSAGE",
    "Policy",
    "StreamRedactor",
    "encoded_forms",
    "forget_response_credentials",
    "forget_sent_credentials",
    "key_pattern",
    "key_regex",
    "looks_like_key",
    "looks_like_secret",
    "masked_headers",
    "refuse_key_in_prompt",
    "register_secret",
    "register_secrets",
    "registered_secrets",
    "remove_stored_keys",
    "scrub",
    "scrub_context",
]

MARKER = "[redacted]"
REDACTED = MARKER  # older name, same marker

# Prefix → provider. Specific prefixes come before the generic ``sk-``.
KEY_PREFIXES: dict[str, str] = {
    "sk-ant-": "anthropic",
    "sk-proj-": "openai",
    "sk-svcacct-": "openai",
    "sk-admin-": "openai",
    "sk-or-": "openrouter",
    "sk-": "openai/deepseek",
    "AIza": "google",
    "csk_": "cencori",
    "gsk_": "groq",
    "xai-": "xai",
}

_BODY = r"[A-Za-z0-9_\-]"
_START = r"(?<![A-Za-z0-9_\-])"  # "task-runner" or "disk-…" never start a key
# A digit somewhere in the body (the lookahead stays inside the run of body characters).
_DIGIT_AHEAD = r"(?=[A-Za-z_\-]*[0-9])"


# The methods a compiled pattern lends a _LazyPattern once compiled: read from a slot, a
# call costs what the compiled pattern's does (a wrapper method added a Python call, about
# a third of a microsecond, to each of the stream redactor's checks of every delta).
_LENT = ("finditer", "match", "search", "sub", "subn")


class _LazyPattern:
    """A regex compiled on its first use. This module defines some 25 patterns; compiling
    them all at import cost ``import cencori_nb`` (and so ``%load_ext cencori_nb``) about
    40 ms, most of its load time (docs/benchmarks.md, "Extension load time"). Behaves as
    the compiled ``re.Pattern`` for every method and attribute."""

    __slots__ = ("__weakref__", "_compiled", "_flags", "_source", *_LENT)

    def __init__(self, source: str, flags: int = 0) -> None:
        self._source, self._flags = source, flags
        self._compiled: re.Pattern[str] | None = None

    def compiled(self) -> re.Pattern[str]:
        found = self._compiled
        if found is None:  # two threads may both compile: the same pattern either way
            found = re.compile(self._source, self._flags)
            for name in _LENT:
                setattr(self, name, getattr(found, name))
            self._compiled = found
        return found

    def __getattr__(self, name: str) -> Any:  # search… before compiling; pattern, fullmatch…
        if name.startswith("_"):  # _compiled unset (a copy being built), __deepcopy__, …
            raise AttributeError(name)
        return getattr(self.compiled(), name)

    def __reduce__(self) -> tuple[Any, ...]:  # a copy or a pickle compiles on its own use
        return (_LazyPattern, (self._source, self._flags))

    def __repr__(self) -> str:
        return f"re.compile({self._source!r}) (compiled on first use)"


def _lazy(source: str, flags: int = 0) -> re.Pattern[str]:
    """:class:`_LazyPattern`, typed as the pattern it stands for."""
    return cast("re.Pattern[str]", _LazyPattern(source, flags))


def key_regex(
    min_body: int | Mapping[str, int] = 6,
    *,
    require_digit: bool | Collection[str] = False,
    body: str | Mapping[str, str] = _BODY,
    start: str = _START,
) -> str:
    """The source of :func:`key_pattern`'s regex, to embed in a larger pattern.

    ``min_body`` is either one minimum for every prefix in :data:`KEY_PREFIXES`, or a
    mapping ``prefix → minimum`` naming exactly the prefixes to match (in that order; they
    need not be in :data:`KEY_PREFIXES`, e.g. a caller that also wants ``pk-``).
    ``require_digit`` is ``True``/``False`` for every prefix, or the prefixes whose body must
    hold a digit. ``body`` is the character class of a key body (one for all, or per prefix;
    unnamed prefixes get the default). ``start`` is what must hold just before the prefix
    (default: not after a body character; ``r"\b"`` or ``""`` for callers that want those).
    The regex has no capturing groups.
    """
    minimums = (
        dict(min_body) if isinstance(min_body, Mapping) else dict.fromkeys(KEY_PREFIXES, min_body)
    )
    alternatives = []
    for prefix, minimum in minimums.items():
        needs_digit = require_digit if isinstance(require_digit, bool) else prefix in require_digit
        chars = body.get(prefix, _BODY) if isinstance(body, Mapping) else body
        digit = _DIGIT_AHEAD if needs_digit else ""
        alternatives.append(f"{re.escape(prefix)}{digit}{chars}{{{minimum},}}")
    return f"{start}(?:{'|'.join(alternatives)})"


def key_pattern(
    min_body: int | Mapping[str, int] = 6,
    *,
    require_digit: bool | Collection[str] = False,
    body: str | Mapping[str, str] = _BODY,
    start: str = _START,
) -> re.Pattern[str]:
    """A regex matching any known key shape with at least ``min_body`` body characters.

    ``require_digit`` demands a digit in the body (random keys always have one; English
    words and package names rarely do), for callers that must avoid false positives.
    Every argument may also be given per prefix: see :func:`key_regex`.
    """
    return _lazy(key_regex(min_body, require_digit=require_digit, body=body, start=start))


_ANY_KEY = key_pattern()
# The request headers a credential travels in (every adapter's, the gateway's, a proxy's),
# lower case: the one list of them. ``cencori-api-key`` is the gateway's header as a proxy
# that rewrites ``_`` to ``-`` forwards it (the sandbox accepts both spellings).
# :data:`PROXY_CREDENTIAL_HEADERS` are the ones whose credential is a proxy's, not the
# provider key a message names (providers/_common.PROVIDER_KEY_HEADERS leaves them out).
PROXY_CREDENTIAL_HEADERS: tuple[str, ...] = ("proxy-authorization",)
CREDENTIAL_HEADERS: tuple[str, ...] = (
    "authorization",
    *PROXY_CREDENTIAL_HEADERS,
    "x-api-key",
    "x-goog-api-key",
    "api-key",
    "cencori_api_key",
    "cencori-api-key",
)
_HEADER_NAMES = "|".join(re.escape(name) for name in CREDENTIAL_HEADERS)
_NOT_MARKER = r"(?!\[redacted\]|\[secure\]|<redacted>|\*\*\*)"
# Credentials named by their context (the marker a scrub already left is not re-matched).
CONTEXT_PATTERN = _lazy(
    rf"""(?ix)
      (\bbearer\s+){_NOT_MARKER}[^\s'",;}}\]]+
    | ((?:\b|_)(?:api[_-]?)?key=){_NOT_MARKER}[^&\s'",;}}\]]+
    | ((?:{_HEADER_NAMES})
       ['"]?\s*[:=]\s*(?:b?['"])?){_NOT_MARKER}[^'"\s,;}}\]]+
    """
)


def masked_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` (name, value pairs) with every :data:`CREDENTIAL_HEADERS` value replaced
    by the marker: what a request kept for later (an exception's ``.request``) may hold."""
    return [
        (name, MARKER if name.lower() in CREDENTIAL_HEADERS else value) for name, value in headers
    ]


_MARKERS = (MARKER, MARKER.encode())  # str, bytes
# cencori_nb and its HTTP stack: the objects forget_sent_credentials walks, and the frames
# ipython_hygiene.forget_keys_in_frames looks in (the one list of them)
HTTP_MODULES = ("cencori_nb", "httpx2", "httpcore2", "h11", "httpx", "httpcore")
# Objects shared past one call (pools, clients, connections, the ledger, the key store):
# not walked, so another thread's request in flight is never touched (and a Secret never
# opened). A response's byte stream ("PoolByteStream") is its own, and walked.
_SHARED = ("Pool", "Client", "Sender", "Connection", "Ledger", "Store", "Settings", "Secret")


def _names_a_credential(name: Any) -> bool:
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    return isinstance(name, str) and name.lower() in CREDENTIAL_HEADERS


def forget_sent_credentials(
    root: Any, *, stored_only: bool = False, max_depth: int = 8, max_objects: int = 20_000
) -> int:
    """Replace, in place, the value of every :data:`CREDENTIAL_HEADERS` header in the
    requests reachable from ``root`` (through containers and the attributes of cencori_nb
    and HTTP-stack objects: a response's request, a connection's pending request); return
    how many. With ``stored_only``, only values holding a registered credential
    (:func:`holds_secret`): a request the user built with their own token stays
    re-sendable.

    For requests that are over: what a failed call leaves in the frames ``%debug`` walks
    (``request.headers["authorization"]`` there held the key in clear). Header lists are
    recognised by their shape (name, value) / (raw name, name, value), as httpx2, httpcore2
    and h11 keep them. A :class:`~cencori_nb.keystore.secret.Secret` is not opened.
    """
    masked = 0
    seen: set[int] = set()
    todo: list[tuple[Any, int]] = [(root, 0)]
    while todo and len(seen) < max_objects:
        obj, depth = todo.pop()
        if id(obj) in seen or depth > max_depth or isinstance(obj, (str, bytes, int, float)):
            continue
        seen.add(id(obj))
        if isinstance(obj, list):
            for i, item in enumerate(obj):
                if isinstance(item, str | bytes | int | float):
                    continue
                if (
                    isinstance(item, tuple)
                    and len(item) in (2, 3)
                    and all(isinstance(part, str | bytes) for part in item)
                ):  # a header: (name, value) or (raw name, name, value)
                    if (
                        any(map(_names_a_credential, item[:-1]))
                        and item[-1] not in _MARKERS
                        and (not stored_only or _holds_stored(item[-1]))
                    ):
                        obj[i] = (*item[:-1], _MARKERS[isinstance(item[-1], bytes)])
                        masked += 1
                    continue
                todo.append((item, depth + 1))
            continue
        if isinstance(obj, tuple | set | frozenset):
            todo.extend((item, depth + 1) for item in obj)
            continue
        if isinstance(obj, dict):
            todo.extend((value, depth + 1) for value in obj.values())
            continue
        slots = _walk_plan(type(obj))
        if slots is None:
            continue
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            todo.extend((value, depth + 1) for value in attrs.values())
        for slot in slots:
            try:
                todo.append((getattr(obj, slot), depth + 1))
            except AttributeError:
                continue
    return masked


def forget_response_credentials(response: Any) -> int:
    """:func:`forget_sent_credentials` for a finished response, in constant time: only the
    requests it holds by name are masked (its httpx2 request; the request its byte stream
    keeps: cencori_nb's transports' ``_request``, httpcore2's in its pool stream), not its
    whole object graph (~60 us at every stream's end)."""
    requests = [getattr(response, "_request", None)]
    outer = getattr(response, "stream", None)
    # httpx2.Client wraps the transport's stream (BoundSyncStream._stream)
    for stream in (outer, getattr(outer, "_stream", None)):
        core = getattr(stream, "_response", None)  # cencori_nb.transport.direct: httpcore2's
        pools = (
            getattr(getattr(core, "stream", None), "_pool_request", None),
            getattr(getattr(stream, "_httpcore_stream", None), "_pool_request", None),  # httpx2's
        )
        requests += [
            getattr(stream, "_request", None),
            *(getattr(p, "request", None) for p in pools),
        ]
    masked = 0
    for request in {id(r): r for r in requests if r is not None}.values():
        headers = getattr(request, "headers", None)
        items = getattr(headers, "_list", headers)  # httpx2.Headers: (raw, lower, value)
        if not isinstance(items, list):  # (httpcore2 keeps a plain list of pairs)
            continue
        for i, item in enumerate(items):
            if (
                isinstance(item, tuple)
                and len(item) in (2, 3)
                and item[-1] not in _MARKERS
                and any(map(_names_a_credential, item[:-1]))
            ):
                items[i] = (*item[:-1], _MARKERS[isinstance(item[-1], bytes)])
                masked += 1
    return masked


def _holds_stored(value: str | bytes) -> bool:
    return holds_secret(value.decode("latin-1") if isinstance(value, bytes) else value)


_WALK_PLANS: dict[type, tuple[str, ...] | None] = {}


def _walk_plan(kind: type) -> tuple[str, ...] | None:
    """The slots to walk in an object of ``kind`` (its ``__dict__`` too), or None when it
    is not walked (not ours or the HTTP stack's, or shared past one call)."""
    if kind in _WALK_PLANS:
        return _WALK_PLANS[kind]
    name = kind.__name__
    plan: tuple[str, ...] | None = None
    if (getattr(kind, "__module__", "") or "").startswith(HTTP_MODULES) and not (
        any(word in name for word in _SHARED) and "Stream" not in name
    ):
        plan = tuple(
            slot
            for cls in kind.__mro__
            for slot in getattr(cls, "__slots__", ()) or ()
            if isinstance(slot, str) and slot not in ("__dict__", "__weakref__")
        )
    if len(_WALK_PLANS) < 1024:  # types, not objects: a handful in practice
        _WALK_PLANS[kind] = plan
    return plan


def scrub_context(text: str, marker: str = MARKER) -> str:
    """Replace the values of ``Bearer …``, ``key=…`` and ``x-api-key: …`` with ``marker``,
    keeping the words that named them."""
    return CONTEXT_PATTERN.sub(lambda m: next((g for g in m.groups() if g), "") + marker, text)


# --------------------------------------------------------------------------- the registry

# Replaced, never mutated, so readers on other threads (the log filter) need no lock.
_registered: frozenset[str] = frozenset()
_registry_lock = threading.Lock()
# Nothing shorter is registered: blanking a 3-letter "key" would shred every message.
MIN_REGISTERED = 6


def _reveal(value: Any) -> str:
    return value.reveal() if hasattr(value, "reveal") else str(value)


def register_secrets(values: Iterable[Any]) -> None:
    """Scrub these credentials (``Secret`` s or strings) from every output from now on.

    The key store calls this with every key it opens or writes; the router with every
    credential it hands out. Registering is idempotent and cheap when nothing is new.
    """
    global _registered
    new = {raw for raw in map(_reveal, values) if len(raw) >= MIN_REGISTERED} - _registered
    if not new:
        return
    with _registry_lock:
        _registered = _registered | new


def register_secret(value: Any) -> None:
    """:func:`register_secrets` for one credential."""
    raw = _reveal(value)
    if raw not in _registered:  # the router hands out the same key with every request
        register_secrets((raw,))


def registered_secrets() -> frozenset[str]:
    """Every registered credential, in clear (for the policies; never print them)."""
    return _registered


def _forget() -> None:
    global _registered
    with _registry_lock:
        _registered = frozenset()


# Keys seen once stay scrubbed whatever the home: only a full reset (a fresh process, for
# tests) forgets them.
state.on_reset("redact.secrets", _forget, env=())


# --------------------------------------------------------------------------- encodings


def _base64_cores(raw: bytes, encode: Callable[[bytes], bytes], minimum: int) -> list[str]:
    """``raw`` base64-encoded as it appears inside a larger blob, for each of the three
    byte alignments: only the characters made of ``raw``'s own bits."""
    cores = []
    for offset in range(3):
        enc = encode(b"\0" * offset + raw).rstrip(b"=").decode()
        start = -(-8 * offset // 6)  # first character of raw bits only
        end = (8 * (offset + len(raw))) // 6  # later ones mix in the next bytes
        if end - start >= minimum:
            cores.append(enc[start:end])
    return cores


def encoded_forms(value: str, minimum: int = 8) -> list[str]:
    """A stored key and the forms it takes when encoded: hex (both cases) and base64
    (standard and URL-safe, every alignment), e.g. in a Basic-auth header or an upload.

    Escaped forms (``\\_``, ``%5F``, ``\\u005f``) are not listed: the notebook policy
    decodes the text instead, which also finds a key escaped only in places.
    """
    import base64

    raw = value.encode()
    return [
        value,
        raw.hex(),
        raw.hex().upper(),
        *_base64_cores(raw, base64.b64encode, minimum),
        *_base64_cores(raw, base64.urlsafe_b64encode, minimum),
    ]


def _trie_pattern(words: Iterable[str]) -> str:
    """One regex matching any of ``words`` (longest first), as a character trie.

    A plain ``a|b|c…`` alternation tries every word at every position; with each stored key
    in nine forms that made saving a large notebook several times slower. The trie tries
    one branch per character instead.
    """
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    # Built children first with an explicit stack, not by recursion: the trie is as deep as
    # the longest word, and a long token (a 1,500-character JWT stored as a key, its hex
    # form twice that) went past Python's recursion limit, so storing it and every scrub
    # after that raised RecursionError.
    built: dict[int, str] = {}
    todo: list[tuple[dict[str, Any], bool]] = [(trie, False)]
    while todo:
        node, children_built = todo.pop()
        if not children_built:
            todo.append((node, True))
            todo.extend((child, False) for ch, child in node.items() if ch)
            continue
        alternatives = [re.escape(ch) + built.pop(id(child)) for ch, child in node.items() if ch]
        ends_here = "" in node
        if not alternatives:
            text = ""
        elif len(alternatives) == 1 and not ends_here:
            text = alternatives[0]
        else:
            group = "(?:" + "|".join(alternatives) + ")"
            text = group + "?" if ends_here else group  # greedy: the longer word wins
        built[id(node)] = text
    return built[id(trie)]


@functools.lru_cache(maxsize=64)
def _exact_regex(secrets: frozenset[str], encoded: bool, minimum: int) -> re.Pattern[str] | None:
    words = {
        form
        for s in secrets
        if len(s) >= minimum
        for form in (encoded_forms(s, minimum) if encoded else (s,))
    }
    # and each as it reads (a key holding "-_" loses that "_" in the reader's view), so
    # the one regex finds the key in the text and in its view
    words |= {read for read in map(_as_read, words) if len(read) >= minimum}
    if not words:
        return None
    regex = re.compile(_trie_pattern(words))
    pairs = frozenset(word[i : i + 2] for word in words for i in range(len(word) - 1))
    _REACH[regex] = (max(map(len, words)), pairs)
    return regex


# --------------------------------------------------------------------------- decoded views
#
# A view is the text with one kind of folding applied (line breaks dropped, escapes
# decoded) plus, for each character of the view, where it came from. A match in the view is
# replaced in the original text over the span its characters came from.

_ESCAPES = _lazy(
    r"\\u(?P<u>[0-9A-Fa-f]{4})"  # JSON / Python: \u005f
    r"|\\x(?P<x>[0-9A-Fa-f]{2})"  # Python: \x5f
    r"|%(?P<pct>[0-9A-Fa-f]{2})"  # URL: %5F
    r"|&\#(?:[xX](?P<hx>[0-9A-Fa-f]{1,6})|(?P<dec>[0-9]{1,7}));"  # HTML: &#95; &#x5f;
    r"|\\(?P<tex>[_\-#$%&{}])"  # LaTeX: csk\_live
)
_LINE_BREAKS = _lazy(r"\r?\n|\r")
# --------------------------------------------------------------------------- the reader's view
#
# A key shows as the key without being spelled as one when what sits between its characters
# does not show, or shows as the key's own characters. The reader's view is the text as it
# reads once that is folded away, in this order:
#
# 1. what a reader does not see: format characters (zero-width space and joiners, soft
#    hyphen, word joiner, BOM, bidi controls), variation selectors, C0 controls other than
#    tab and line breaks, terminal escape sequences (CSI colours, OSC titles and links);
# 2. inline markup JupyterLab renders (text/markdown, text/html, a reply shown as
#    Markdown): inline HTML tags (``sk-abc<b>def</b>ghi``, ``<span style=…>``) and
#    comments, the ``*``, backtick and ``~`` marks of emphasis, code and strikethrough,
#    Markdown backslash escapes (``sk\-…``). Block tags (``<td>``, ``<p>``, ``<br>``) stay:
#    they break the line, so text on either side never reads as one word;
# 3. HTML character references (``&#115;``, ``&#x73;``, ``&hyphen;``);
# 4. compatibility characters, each by its NFKC form: fullwidth ``ｓｋ－…``, mathematical
#    letters, circled and superscript digits read as the letters and digits they fold to;
#    then (1) again, for a hidden character written as a reference;
# 5. ``_`` emphasis: a run of ``_`` beside a non-alphanumeric (``sk-abc-_def_-ghi`` shows
#    sk-abc-def-ghi). An ``_`` between two letters or digits stays: CommonMark shows it
#    (``sk-abc_def_ghi`` is that text, not sk-abcdefghi). Stored keys are folded the same
#    way before they are looked for in the view, so a key holding ``-_`` still matches.
#
# Every policy and the reply scrub look at the text this way too; only what the view
# reveals is replaced (an emoji's joiner, a colour, bold text elsewhere stay). The view is
# built with its index map only when a cheap fold (C-level substitutions) shows a hit.
_HIDDEN_CHARS = (
    "\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5"
    "\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0"
)
_HIDDEN_SOURCE = (
    "\x1b\\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves
    "|\x1b\\][^\x07\x1b]*(?:\x07|\x1b\\\\)"  # OSC: titles, hyperlinks
    f"|[{_HIDDEN_CHARS}]"
)
_HIDDEN = _lazy(f"(?:{_HIDDEN_SOURCE})+")
_ANY_HIDDEN = _lazy(f"[{_HIDDEN_CHARS}]")
_PARTIAL_ESCAPE = _lazy("\x1b(?:\\[[0-?]*[ -/]*|\\][^\x07\x1b]*\x1b?)?\\Z")
# HTML elements shown inline, in the flow of the text around them.
_INLINE_TAGS = (
    "a|abbr|b|bdi|bdo|big|cite|code|data|del|dfn|em|font|i|ins|kbd|mark|q|s|samp|small|span"
    "|strike|strong|sub|sup|time|tt|u|var|wbr"
)
_MARKUP_SOURCE = (
    r"<!--.*?-->"  # an HTML comment: shows nothing
    rf"|</?(?i:{_INLINE_TAGS})(?:\s[^<>]*)?/?>"  # an inline tag, attributes and all
    r"|\*[*`~]*|`[*`~]*|~[*`~]*"  # emphasis, code span, strikethrough marks
    r"|\\(?=[!-/:-@\[-`{-~])"  # a Markdown backslash escape: \- shows -
)
_MARKUP = _lazy(_MARKUP_SOURCE, re.DOTALL)
# a tag or reference cut by a delta's end: held back until its end arrives (a stream)
_PARTIAL_MARKUP = _lazy(r"(?:<(?:[A-Za-z/!][^<>]{0,300})?|&#?[A-Za-z0-9]{0,32}|\\)\Z")
# (not the everyday &amp; &lt; &gt; &quot; &apos; &nbsp;: none reads as a key character)
_REFERENCE = _lazy(
    r"&(?!(?:amp|lt|gt|quot|apos|nbsp);)"
    r"(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});"
)
# Every character whose NFKC form is made of key characters (A-Z a-z 0-9 _ -), as ranges
# (a few characters between them fold to something else: harmless, NFKC decides);
# tests/test_redact.py checks the class against the running Python's Unicode data.
_COMPATIBLE_SOURCE = (
    "[\u00aa-\u00ba\u0132\u0133\u017f\u01c7-\u01f3\u02b0-\u02e3\u1d2c-\u1dbb\u2070-\u20a8"
    "\u2102-\u217f\u2460-\u2473\u24b6-\u24ea\u2c7c\u2c7d\u3250-\u325f\u32b1-\u32cf"
    "\u3371-\u33ff\ua7f2-\ua7f4\ufb00-\ufb06\ufe33-\ufe63\uff0d-\uff5a\U000107a5"
    "\U0001d400-\U0001d6a3\U0001d7ce-\U0001d7ff\U0001f12b-\U0001f190\U0001fbf0-\U0001fbf9]"
)
_COMPATIBLE = _lazy(_COMPATIBLE_SOURCE)
# (?<![A-Za-z0-9])_+|_+(?![A-Za-z0-9]), spelled to start with a literal "_": every
# alternative of _MARKUP above starts with a literal too, so a search skips to the next
# candidate character in C instead of trying each alternative at every position (a 4 KB
# reply: 108 and 142 us a pass, now a few us)
_UNDERSCORE_MARK = _lazy(r"_(?:(?<![A-Za-z0-9]_)_*|_*(?![A-Za-z0-9]))")
# Where folding can make a key: something that folds away between two key characters
# (_JOINT; _NEAR_JOINT first, a one-class scan that rules most text out), a character
# reference other than the everyday ones, a compatibility character. Text without one
# reads as it is spelled (most replies: "**bold**" has a space on one side) and is not
# folded at all.
_FOLD_START = rf"[{_HIDDEN_CHARS}\x1b<*`~\\_]"  # the first character of anything that folds
_FOLDS_AWAY = rf"(?:{_HIDDEN_SOURCE}|{_MARKUP_SOURCE}|(?<=-)_+|_+(?=-))+"
_KEY_CHAR = r"[A-Za-z0-9_\-]"
# (an "_" between two letters or digits shows: it is no joint)
# (nor a mark run followed by a space or punctuation: the closing "*" of "*word* " or
# "`code`," is no joint, and each candidate costs a _JOINT.match)
_NEAR_JOINT = _lazy(
    rf"{_FOLD_START}(?<={_KEY_CHAR}.)(?!(?<=[A-Za-z0-9]_)[A-Za-z0-9])"
    r"""(?![*`~]*[ \t\r\n.,;:?)'"])""",
    re.DOTALL,
)
_JOINT = _lazy(rf"{_KEY_CHAR}(?={_FOLD_START}){_FOLDS_AWAY}(?={_KEY_CHAR})", re.DOTALL)


def _joints(text: str, pairs: frozenset[str] | None = None) -> Iterable[re.Match[str]]:
    """_JOINT's matches in ``text``, in order: tried only where _NEAR_JOINT finds a
    candidate (_JOINT.finditer tries every key character: ~70 us over a 4 KB reply).
    With ``pairs``, only the joints whose two characters are one of them, or an "_" (it
    may fold away too: then other characters meet)."""
    end = 0
    for near in _NEAR_JOINT.finditer(text):
        if near.start() - 1 < end:  # inside the joint before
            continue
        joint = _JOINT.match(text, near.start() - 1)
        if joint is not None:
            end = joint.end()
            if pairs is None or "_" in (pair := text[joint.start()] + text[end]) or pair in pairs:
                yield joint


_ODD_REFERENCE = _lazy(r"&(?!(?:amp|lt|gt|quot|apos|nbsp);)[#A-Za-z]")
# any character that may fold, or start a fold (one class: a stream piece without one
# reads as it is spelled, decided by one C-level scan)
_ANY_FOLDABLE = _lazy(rf"[{_HIDDEN_CHARS}\x1b<*`~\\_&{_COMPATIBLE_SOURCE[1:-1]}]")
# the last character of anything that folds away
_ENDS_OPEN = _lazy(rf"[{_HIDDEN_CHARS}*`~_\\>]\Z")


def _open_at_end(text: str) -> bool:
    """Whether a stream piece may end inside a disguise (a fold, a tag, a reference or an
    escape sequence cut by the delta's end): its other side may arrive next."""
    return (
        "\x1b" in text
        or _ENDS_OPEN.search(text, len(text) - 1) is not None
        or _PARTIAL_MARKUP.search(text) is not None
    )


def _may_fold_into_a_key(text: str, pairs: frozenset[str] | None = None) -> bool:
    """Whether the reader's view of ``text`` can hold a key its spelling does not (cheap
    scans only; a yes is confirmed by folding). ``pairs``: as in :func:`_fold_windows`."""
    return (
        (
            _NEAR_JOINT.search(text) is not None
            and next(iter(_joints(text, pairs)), None) is not None
        )
        or ("&" in text and _ODD_REFERENCE.search(text) is not None)
        or (not text.isascii() and _COMPATIBLE.search(text) is not None)
    )


def _drop(m: re.Match[str]) -> str:
    return ""


def _reference(m: re.Match[str]) -> str:
    import html.entities

    ref = m.group(0)
    if ref[1] != "#":
        return html.entities.html5.get(ref[1:], ref)
    code = int(ref[3:-1], 16) if ref[2] in "xX" else int(ref[2:-1])
    return chr(code) if code < 0x110000 and not 0xD800 <= code < 0xE000 else ref


def _compatible(m: re.Match[str]) -> str:
    import unicodedata

    return unicodedata.normalize("NFKC", m.group(0))


# (pattern, what a match reads as, whether the pass can apply to a text): in order.
_READER_PASSES: tuple[
    tuple[re.Pattern[str], Callable[[re.Match[str]], str], Callable[[str], bool]], ...
] = (
    (_HIDDEN, _drop, lambda t: _ANY_HIDDEN.search(t) is not None),
    (_MARKUP, _drop, lambda t: _MARKUP.search(t) is not None),
    (_REFERENCE, _reference, lambda t: "&" in t),
    (_COMPATIBLE, _compatible, lambda t: not t.isascii()),
    (_HIDDEN, _drop, lambda t: _ANY_HIDDEN.search(t) is not None),
    (_UNDERSCORE_MARK, _drop, lambda t: "_" in t),
)


def _read_quickly(text: str) -> str:
    """The reader's view without its index map (``text`` itself when nothing folds)."""
    for pattern, decode, applies in _READER_PASSES:
        if applies(text):
            text = pattern.sub("" if decode is _drop else decode, text)
    return text


def _reader_view(text: str) -> tuple[str, list[int], list[int]]:
    """``(view, starts, ends)`` of the reader's view: view character ``i`` came from
    ``text[starts[i]:ends[i]]`` (as :func:`_view`, through every pass)."""
    view = text
    starts = list(range(len(text)))
    ends = list(range(1, len(text) + 1))
    for pattern, decode, applies in _READER_PASSES:
        if not applies(view):
            continue
        view, s, e = _view(view, pattern, decode)
        starts = [starts[i] for i in s]
        ends = [ends[j - 1] for j in e]
    return view, starts, ends


def _as_read(secret: str) -> str:
    """``secret`` as it appears in the reader's view (only ``_`` emphasis folds a key)."""
    return _read_quickly(secret)


# The reach of each exact regex (_exact_regex): its longest word, so a window around a
# fold holds every key that fold can be part of, and the pairs of adjacent characters in
# its words: a fold between two characters that are no such pair is in no key. A key
# shape reaches _KEY_REACH, and any pair may be in one.
_REACH: weakref.WeakKeyDictionary[re.Pattern[str], tuple[int, frozenset[str]]] = (
    weakref.WeakKeyDictionary()
)
_KEY_RUN_BEFORE = _lazy(r"[A-Za-z0-9_\-]*\Z")
_KEY_RUN_AFTER = _lazy(r"[A-Za-z0-9_\-]*")


def _fold_windows(text: str, reach: int, pairs: frozenset[str] | None) -> list[list[int]]:
    """The parts of ``text`` where folding can reveal a key, merged: ``reach`` characters
    either side of each place something folds between key characters (_JOINT) that may
    be in a key (the two characters it joins are one of ``pairs``, or None for any), each
    odd character reference and each compatibility character, widened to whole runs of
    key characters. Between two such places a key is spelled as it reads, so a key
    revealed by folding lies inside one window when ``reach`` is at least its length."""
    anchors = [m.span() for m in _joints(text, pairs)]
    if "&" in text:
        anchors += [m.span() for m in _REFERENCE.finditer(text)]
    if not text.isascii():
        anchors += [m.span() for m in _COMPATIBLE.finditer(text)]
    if not anchors:
        return []
    windows: list[list[int]] = []
    for start, end in sorted(anchors):
        start, end = max(0, start - reach), end + reach
        if windows and start <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], end)
        else:
            windows.append([start, end])
    for window in windows:  # a window edge never cuts a run of key characters
        start, end = window
        before = _KEY_RUN_BEFORE.search(text, max(0, start - reach), start)
        window[0] = start if before is None else before.start()
        after = _KEY_RUN_AFTER.match(text, min(end, len(text)), end + reach)
        window[1] = min(end, len(text)) if after is None else after.end()
    return windows


def _reader_spans(text: str, finders: tuple[re.Pattern[str], ...]) -> list[tuple[int, int]]:
    """Spans of ``text`` that match one of ``finders`` in the reader's view (none when
    nothing in ``text`` folds, or the folded text holds no match).

    Only the windows around what folds between key characters are folded (_fold_windows):
    a reply whose code holds ``a_b*2`` is not folded whole (4 KB: about 330 us a reply)."""
    if _ANY_FOLDABLE.search(text) is None or (
        _NEAR_JOINT.search(text) is None and "&" not in text and text.isascii()
    ):  # no anchor _fold_windows could find (an id's "req_8…"): it reads as it is spelled
        return []
    infos = [_REACH.get(f) for f in finders]
    reach = max((_KEY_REACH if info is None else info[0] for info in infos), default=0)
    pairs = None if None in infos else frozenset().union(*(info[1] for info in infos if info))
    spans = []
    for start, end in _fold_windows(text, reach, pairs):
        part = text[start:end]
        quick = _read_quickly(part)
        if quick is part or quick == part or not any(f.search(quick) for f in finders):
            continue
        view, starts, ends = _reader_view(part)
        for finder in finders:
            for m in finder.finditer(view):
                if m.end() > m.start():
                    first, last = start + starts[m.start()], start + ends[m.end() - 1]
                    # spelled so in the text: the caller's own pass replaces it, to its
                    # exact end (a key ending in "_" loses that "_" in the view, not in
                    # the text)
                    if text[first:last] != m.group(0):
                        spans.append((first, last))
    return spans


def _unescape_one(m: re.Match[str]) -> str:
    if m.group("tex") is not None:
        return m.group("tex")
    for name, base in (("u", 16), ("x", 16), ("pct", 16), ("hx", 16), ("dec", 10)):
        digits = m.group(name)
        if digits is not None:
            code = int(digits, base)
            return chr(code) if code < 0x110000 else m.group(0)
    return m.group(0)  # pragma: no cover - every alternative is named above


def _view(
    text: str, pattern: re.Pattern[str], decode: Callable[[re.Match[str]], str]
) -> tuple[str, list[int], list[int]]:
    """``(view, starts, ends)``: ``text`` with every ``pattern`` match replaced by
    ``decode(match)``; view character ``i`` came from ``text[starts[i]:ends[i]]``."""
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    for m in pattern.finditer(text):
        for i in range(pos, m.start()):
            out.append(text[i])
            starts.append(i)
            ends.append(i + 1)
        for ch in decode(m):
            out.append(ch)
            starts.append(m.start())
            ends.append(m.end())
        pos = m.end()
    for i in range(pos, len(text)):
        out.append(text[i])
        starts.append(i)
        ends.append(i + 1)
    return "".join(out), starts, ends


def _spans_in_view(
    text: str,
    pattern: re.Pattern[str],
    decode: Callable[[re.Match[str]], str],
    finders: Iterable[re.Pattern[str]],
    quick: str | None = None,
) -> list[tuple[int, int]]:
    """Spans of ``text`` whose decoded view matches one of ``finders``. ``quick`` is the
    view already computed (without its index map), if the caller has a faster way."""
    if quick is None:
        quick = pattern.sub(decode, text)  # cheap test first: build the index map on a hit
    if quick == text or not any(f.search(quick) for f in finders):
        return []
    view, starts, ends = _view(text, pattern, decode)
    spans = []
    for finder in finders:
        for m in finder.finditer(view):
            if m.end() > m.start():
                spans.append((starts[m.start()], ends[m.end() - 1]))
    return spans


_KEY_REACH = 300  # no key is longer: a match touching an escape lies this close to it


def _escaped_hit(text: str, finders: tuple[re.Pattern[str], ...]) -> bool:
    """Whether decoding the escapes of ``text`` reveals a match; only the text around each
    escape is decoded and searched (a match not touching one was found without decoding)."""
    windows: list[list[int]] = []
    for m in _ESCAPES.finditer(text):
        start, end = max(0, m.start() - _KEY_REACH), m.end() + _KEY_REACH
        if windows and start <= windows[-1][1]:
            windows[-1][1] = end
        else:
            windows.append([start, end])
    for start, end in windows:
        decoded = _ESCAPES.sub(_unescape_one, text[start:end])
        if any(f.search(decoded) for f in finders):
            return True
    return False


def _replace_spans(text: str, spans: list[tuple[int, int]]) -> tuple[str, int]:
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, pos = [], 0
    for start, end in merged:
        out.append(text[pos:start])
        out.append(MARKER)
        pos = end
    out.append(text[pos:])
    return "".join(out), len(merged)


# Runs of base64 (either alphabet) or hex characters, line breaks allowed (MIME style), long
# enough to hold a key; one character class each, so scanning them is fast.
# (The lookbehinds make a failed attempt cost nothing inside a short run.)
_B64_RUN = _lazy(r"(?<![A-Za-z0-9+/_\-\r\n])[A-Za-z0-9+/_\-\r\n]{28,}={0,2}")
_HEX_RUN = _lazy(r"(?<![0-9a-fA-F\r\n])[0-9a-fA-F\r\n]{40,}")
# Every key shape starts with one of these: decoded bytes without one are skipped at once.
_ANY_PREFIX = _lazy("|".join(re.escape(p) for p in (*KEY_PREFIXES, "Bearer ")))


@functools.lru_cache(maxsize=1)
def _encoded_prefixes() -> re.Pattern[str]:
    """The prefixes, base64-encoded (both alphabets, every alignment: the characters made
    only of the prefix's bits) and hex-encoded: text holding none of these cannot hold an
    encoded key shape, and is not decoded at all."""
    import base64

    forms = set()
    for prefix in (*KEY_PREFIXES, "Bearer "):
        raw = prefix.encode()
        forms.update(_base64_cores(raw, base64.b64encode, 3))
        forms.update(_base64_cores(raw, base64.urlsafe_b64encode, 3))
        forms.update((raw.hex(), raw.hex().upper()))
    return re.compile(_trie_pattern(forms))


def _decodings(run: str, hexadecimal: bool) -> Iterable[str]:
    """``run`` decoded at each character alignment, as Latin-1 text (one char a byte)."""
    import base64
    import binascii

    clean = run.replace("\r", "").replace("\n", "").rstrip("=")
    if hexadecimal:
        for offset in (0, 1):
            body = clean[offset:]
            yield bytes.fromhex(body[: len(body) // 2 * 2]).decode("latin-1")
        return
    std = clean.replace("-", "+").replace("_", "/")
    for offset in range(4):
        body = std[offset:]
        body = body[: len(body) // 4 * 4]
        try:
            yield base64.b64decode(body).decode("latin-1")
        except (binascii.Error, ValueError):
            continue


def _encoded_runs_holding(text: str, shapes: Iterable[re.Pattern[str]]) -> list[tuple[int, int]]:
    """Spans of base64 or hex runs in ``text`` whose decoding holds one of ``shapes``."""
    spans: list[tuple[int, int]] = []
    prefixes = _encoded_prefixes()
    for pattern, hexadecimal in ((_B64_RUN, False), (_HEX_RUN, True)):
        for m in pattern.finditer(text):
            if not prefixes.search(m.group(0).replace("\r", "").replace("\n", "")):
                continue
            if any(
                _ANY_PREFIX.search(decoded) and any(shape.search(decoded) for shape in shapes)
                for decoded in _decodings(m.group(0), hexadecimal)
            ):
                spans.append((m.start(), m.end()))
    return spans


# --------------------------------------------------------------------------- policies

_LONG_TOKEN = _lazy(r"[A-Za-z0-9_\-+=]{32,}")


def _entropy_bits_per_char(token: str) -> float:
    counts = Counter(token)
    n = len(token)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _random_looking(token: str) -> bool:
    return (
        any(c.isdigit() for c in token)
        and any(c.isalpha() for c in token)
        and _entropy_bits_per_char(token) >= 3.5
    )


@dataclass(frozen=True)
class Policy:
    """How strict one kind of output is. Use :meth:`scrub`, :meth:`subn` or :meth:`finds`.

    ``shapes`` are substituted in order after the exact secrets; ``context`` also blanks the
    values of ``Bearer``/``key=``/``x-api-key:``; ``min_secret`` is the shortest exact value
    honoured; ``encoded`` adds the encoded and escaped forms of exact secrets (and decoded
    views of the text) as the notebook needs; ``decoded_shapes`` are looked for inside
    base64 and hex runs of the text (which are then replaced whole).
    """

    name: str
    shapes: tuple[re.Pattern[str], ...]
    min_secret: int
    context: bool = False
    encoded: bool = False
    decoded_shapes: tuple[re.Pattern[str], ...] = ()

    def exact_regex(self, secrets: Iterable[Any] = ()) -> re.Pattern[str] | None:
        """The regex of registered plus ``secrets`` (and their encoded forms if
        ``encoded``), or None when there are none long enough."""
        extra = frozenset(map(_reveal, secrets))
        return _exact_regex(_registered | extra, self.encoded, self.min_secret)

    def subn(
        self,
        text: str,
        secrets: Iterable[Any] = (),
        *,
        binary: bool = False,
        exact: re.Pattern[str] | None | bool = True,
    ) -> tuple[str, int]:
        """``(scrubbed, how many were replaced)``; ``text`` itself when nothing was.

        ``binary`` (base64 payloads) applies only the exact secrets: a random run of base64
        can look like ``AIza…`` by chance. ``exact`` may be a regex from
        :meth:`exact_regex` (to build it once for many strings).
        """
        if not text:
            return text, 0
        exact_re = self.exact_regex(secrets) if exact is True else exact or None
        count = 0
        if exact_re is not None:
            if self.encoded and ("\n" in text or "\r" in text):
                # Matched across line breaks (MIME base64, a wrapped hex dump or key), which
                # also finds every match that has none: one pass over the text.
                folded = text.replace("\r", "").replace("\n", "")
                spans = _spans_in_view(text, _LINE_BREAKS, lambda m: "", (exact_re,), folded)
                if spans:
                    text, n = _replace_spans(text, spans)
                    count += n
            else:
                text, n = exact_re.subn(MARKER, text)
                count += n
        if not binary:
            # the reader's view before the shapes: a shape matching the key's first part
            # (up to a tag) would leave the rest of it where the view no longer finds it
            spans = _reader_spans(text, (*((exact_re,) if exact_re else ()), *self.shapes))
            if spans:
                text, n = _replace_spans(text, spans)
                count += n
            for shape in self.shapes:
                text, n = shape.subn(MARKER, text)
                count += n
            if self.context:
                new = scrub_context(text)
                if new != text:
                    count += 1
                    text = new
        if self.encoded:
            text, n = self._views(text, exact_re, binary)
            count += n
        return text, count

    def _views(self, text: str, exact_re: re.Pattern[str] | None, binary: bool) -> tuple[str, int]:
        spans: list[tuple[int, int]] = []
        if not binary and ("\\" in text or "%" in text or "&#" in text):
            finders = (*((exact_re,) if exact_re is not None else ()), *self.shapes)
            if _escaped_hit(text, finders):
                spans += _spans_in_view(text, _ESCAPES, _unescape_one, finders)
        if not binary and self.decoded_shapes:
            # a key-shaped key that is not stored, base64- or hex-encoded (stored ones
            # are matched in their encoded forms above)
            spans += _encoded_runs_holding(text, self.decoded_shapes)
        if not spans:
            return text, 0
        return _replace_spans(text, spans)

    def encodes_a_key(self, text: str) -> bool:
        """Whether base64 or hex in ``text`` decodes to a key shape (``decoded_shapes``):
        for payloads that cannot be rewritten in place, such as widget buffers."""
        return bool(self.decoded_shapes) and bool(_encoded_runs_holding(text, self.decoded_shapes))

    def scrub(self, text: str, secrets: Iterable[Any] = ()) -> str:
        """``text`` with every secret this policy knows replaced by :data:`MARKER`."""
        return self.subn(text, secrets)[0]

    def finds(self, text: str, secrets: Iterable[Any] = ()) -> bool:
        """True if :meth:`scrub` would change ``text``."""
        return self.subn(text, secrets)[1] > 0


# Log lines: short bodies count (a log line may hold a truncated key); a key starts a token,
# so "task-runner" is not one.
LOG_LINE = Policy(
    "log line",
    (key_pattern(MIN_REGISTERED, start=r"(?<![A-Za-z0-9])"),),
    min_secret=MIN_REGISTERED,
    context=True,
)

# Messages a person reads (a provider's error text, CLI and magic errors, history): the known
# prefixes plus the ones a provider may echo (pk-/rk- OpenAI, cpk Cencori, the other
# separator), masked bodies keeping their "*", "." and "…" (OpenAI's 401 echoes
# "sk-proj-****…abcd"); Google's AIza anywhere in a word; any long token-like run that is not
# a path segment (a key in a URL path still has its prefix).
_MASKED_PREFIXES = (
    *(p for p in KEY_PREFIXES if p != "AIza"),
    "pk-",
    "rk-",
    "sk_",
    "csk-",
    "cpk_",
    "cpk-",
    "gsk-",
    "xai_",
)
USER_MESSAGE = Policy(
    "user message",
    (
        _lazy(
            "|".join(
                (
                    rf"\bBearer\s+{_NOT_MARKER}\S+",
                    key_regex(dict.fromkeys(_MASKED_PREFIXES, 4), body=r"[\w\-*.…]", start=r"\b"),
                    key_regex({"AIza": 8}, body=r"[\w\-]", start=""),
                    r"(?<![/\\.])\b[\w\-*]{32,}",  # not a path segment or a file's extension
                )
            )
        ),
    ),
    min_secret=4,
    context=True,
)

# Notebooks: bodies are long and (except after prefixes only keys use) hold a digit, so
# words, package names (sk-learn), hashes and base64 images are never cut.
_ONLY_KEYS_USE = ("sk-proj-", "sk-ant-", "sk-or-", "sk-svcacct-", "sk-admin-")
_NOTEBOOK_MINIMUMS = {
    **dict.fromkeys(_ONLY_KEYS_USE, 20),
    "sk-": 20,  # OpenAI legacy, DeepSeek, …
    "AIza": 30,  # Google API keys: AIza + 35 characters
    "csk_": 16,  # Cencori project keys (managed route)
    "gsk_": 20,
    "xai-": 20,
}
_NOTEBOOK_DIGIT = {"sk-", "AIza", "csk_", "gsk_", "xai-"}
NOTEBOOK_KEY_SHAPES = key_pattern(_NOTEBOOK_MINIMUMS, require_digit=_NOTEBOOK_DIGIT)
# "Bearer <token>": keep the word, drop the token (JWTs and opaque tokens: dots, slashes, =).
BEARER_TOKEN = _lazy(r"(?<=Bearer )(?=[A-Za-z._~+/=\-]*[0-9])[A-Za-z0-9._~+/=\-]{20,}")
NOTEBOOK = Policy(
    "notebook",
    (NOTEBOOK_KEY_SHAPES, BEARER_TOKEN),
    min_secret=8,
    encoded=True,
    # inside decoded base64/hex a key may follow any byte
    decoded_shapes=(key_pattern(_NOTEBOOK_MINIMUMS, require_digit=_NOTEBOOK_DIGIT, start=""),),
)

# What a prompt may not hold (refuse_key_in_prompt) and what a magic line may not hold
# (looks_like_secret): one pattern per shape. Long random tokens are allowed in prompts
# (hashes, base64), refused on magic lines.
PROMPT_KEY_SHAPES = tuple(
    key_pattern({prefix: minimum}, body={"gsk_": "[A-Za-z0-9]", "xai-": "[A-Za-z0-9]"}, start=r"\b")
    for prefix, minimum in {
        "sk-": 16,  # OpenAI, DeepSeek, sk-ant-, sk-or-, sk-proj-
        "csk_": 8,  # Cencori project keys
        "AIza": 20,  # Google
        "gsk_": 16,  # Groq
        "xai-": 16,  # xAI
    }.items()
)


def scrub(text: str, secrets: Iterable[Any] = ()) -> str:
    """``text`` under the :data:`LOG_LINE` policy (registered and given ``secrets``, key
    shapes, context values)."""
    return LOG_LINE.scrub(text, secrets)


def looks_like_key(text: str) -> bool:
    """True if ``text`` contains something shaped like a provider key."""
    return _ANY_KEY.search(text) is not None


def looks_like_secret(text: str) -> bool:
    """True if ``text`` contains a known key shape or a long high-entropy token.

    A long token counts when it has at least 32 key characters, mixes letters and digits
    and looks random (≥ 3.5 bits of entropy per character); model names such as
    ``meta-llama/Llama-3.3-70B-Instruct-Turbo`` are split on ``/`` and ``.`` and stay short.
    """
    return any(p.search(text) for p in PROMPT_KEY_SHAPES) or any(
        _random_looking(m.group(0)) for m in _LONG_TOKEN.finditer(text)
    )


def holds_secret(text: str, secrets: Iterable[Any] = ()) -> bool:
    """True if ``text`` holds a registered credential or one of ``secrets`` verbatim."""
    regex = _exact_regex(_registered | frozenset(map(_reveal, secrets)), False, MIN_REGISTERED)
    return regex is not None and (
        regex.search(text) is not None or bool(_reader_spans(text, (regex,)))
    )


def remove_stored_keys(text: str) -> str:
    """``text`` with every registered credential replaced by :data:`MARKER`: verbatim, or
    split by hidden characters (which would show it all the same).

    For a provider's reply: a hostile or compromised endpoint (a loopback proxy, a custom
    ``base_url``) can echo the key it received. The reply is kept byte for byte otherwise
    (no shape or entropy guesses: hashes and ``sk-learn`` in a reply are data), so only the
    exact stored values go, before the reply reaches the cache, a checkpoint, a DataFrame
    or a display.
    """
    regex = _exact_regex(_registered, False, MIN_REGISTERED)
    return text if regex is None else _remove_exact(text, regex)


def _remove_exact(text: str, regex: re.Pattern[str]) -> str:
    """``regex``'s matches replaced by the marker, also where hidden characters split one."""
    text = regex.sub(MARKER, text)
    spans = _reader_spans(text, (regex,))
    return _replace_spans(text, spans)[0] if spans else text


# A prefix trie nests one group per character of its longest word, and Python's regex
# compiler recurses per group: past about 450 it raised RecursionError, so registering a
# long key (a stored JWT) broke every stream after it. Keys longer than this are looked
# for by a scan instead (few keys are; the scan is a handful of str.find calls).
_TRIE_DEPTH = 300


class _KeyStarts:
    """Where, at the end of a text, a start of one of the registered keys begins (a prefix
    of at most the longest key's length minus one). One C-level search per delta for the
    usual keys, where comparing every tail with every key cost a stream ~40 Python-level
    checks per delta; a scan for keys longer than :data:`_TRIE_DEPTH`."""

    def __init__(self, usable: set[str]) -> None:
        self.longest = max(map(len, usable)) - 1
        short = [s for s in usable if len(s) <= _TRIE_DEPTH]
        starts = {s[:n] for s in short for n in range(1, min(len(s), self.longest) + 1)}
        self._regex = re.compile("(?:" + _trie_pattern(starts) + r")\Z") if starts else None
        self._long = tuple(sorted(s for s in usable if len(s) > _TRIE_DEPTH))

    def find(self, text: str) -> int | None:
        """The leftmost index from which the rest of ``text`` starts a key, or None."""
        best = None
        if self._regex is not None:
            found = self._regex.search(text, max(0, len(text) - self.longest))
            best = None if found is None else found.start()
        for key in self._long:
            stop = len(text) if best is None else best  # only a start left of it matters
            i = text.find(key[0], max(0, len(text) - len(key) + 1), stop)
            while i != -1:
                if key.startswith(text[i:]):
                    best = i
                    break
                i = text.find(key[0], i + 1, stop)
        return best


@functools.lru_cache(maxsize=8)
def _key_start_at_end(secrets: frozenset[str]) -> _KeyStarts | None:
    """The starts of ``secrets`` (and of each as it reads) to look for at a text's end;
    None when none is registered."""
    usable = {read for s in secrets for read in (s, _as_read(s)) if len(read) >= MIN_REGISTERED}
    return _KeyStarts(usable) if usable else None


class StreamRedactor:
    """:func:`remove_stored_keys` over a reply that arrives in pieces, for what is shown as
    it arrives (``cencori-nb ask``): a stored key split across deltas is still removed.

    :meth:`feed` returns what can be shown now; the tail of the text that could be the start
    of a stored key is held back until the next delta settles it; :meth:`close` returns
    the rest. The concatenation of everything returned is ``remove_stored_keys(whole)``.
    """

    def __init__(self) -> None:
        self._held = ""
        # the registered keys last seen, and their two regexes (rebuilt when a key is
        # registered mid-stream): one feed per delta, so no lookups per delta
        self._secrets: frozenset[str] | None = None
        self._exact: re.Pattern[str] | None = None
        self._tails: _KeyStarts | None = None
        self._pairs: frozenset[str] | None = None

    def feed(self, delta: str) -> str:
        if not delta:  # an event without text (usage, finish): what is held stays held
            return ""
        secrets = _registered
        if secrets is not self._secrets:
            self._exact = _exact_regex(secrets, False, MIN_REGISTERED)
            self._tails = _key_start_at_end(secrets)
            info = None if self._exact is None else _REACH.get(self._exact)
            self._pairs = None if info is None else info[1]
            self._secrets = secrets
        text = self._held + delta
        exact = self._exact
        if exact is not None:  # remove_stored_keys, inline
            text = exact.sub(MARKER, text)
        tails = self._tails
        if tails is None:
            self._held = ""
            return text
        if _ANY_FOLDABLE.search(text) is None or not (
            _may_fold_into_a_key(text, self._pairs) or _open_at_end(text)
        ):
            cut = tails.find(text)
        else:  # a key split by hidden characters or markup: look at the text as it reads
            if exact is not None:
                text = _remove_exact(text, exact)
            # an escape sequence, a tag or a reference cut by the delta's end is held back
            # whole: its rest may arrive next, and only then does it fold away
            pending = _PARTIAL_ESCAPE.search(text) or _PARTIAL_MARKUP.search(text)
            end = len(text) if pending is None else pending.start()
            view, starts, _ends = _reader_view(text[:end])
            at = tails.find(view)
            if at is not None:
                cut = starts[at]
            else:
                cut = None if pending is None else end
        if cut is None:
            self._held = ""
            return text
        # the leftmost match: the longest tail that could start a key is held back
        self._held = text[cut:]
        return text[:cut]

    def close(self) -> str:
        rest, self._held = remove_stored_keys(self._held), ""
        return rest


def refuse_key_in_prompt(prompt: str, secrets: Iterable[Any] = (), *, shapes: bool = True) -> None:
    """Raise :class:`~cencori_nb.errors.KeyInPromptError` if ``prompt`` holds a registered
    or given key (or, with ``shapes``, a known key shape: ``sk-…``, ``csk_…``, ``AIza…``).

    Long random-looking tokens alone are allowed: prompts legitimately carry hashes and
    base64. The message never repeats the key.
    """
    if (shapes and any(p.search(prompt) for p in PROMPT_KEY_SHAPES)) or holds_secret(
        prompt, secrets
    ):
        from .errors import KeyInPromptError  # here: errors imports this module

        raise KeyInPromptError(
            "Not sent: the prompt contains an API key. The provider would receive it and the "
            "reply could repeat it into the notebook.",
            hint="Replace it with a placeholder such as sk-XXXX; keys belong in "
            "`%cencori setup` or `cencori-nb keys set PROVIDER`.",
        )
