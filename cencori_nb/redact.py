"""What a key looks like, in one place, and how to blank it out of text.

Every provider key we know has a recognisable prefix (``sk-``, ``sk-ant-``, ``sk-proj-``,
``sk-or-``, ``AIza``, ``csk_``, ``gsk_``, ``xai-``). :data:`KEY_PREFIXES` lists them and
:func:`key_pattern` builds a regex for them with the strictness a caller needs:

- messages and logs (:func:`scrub`) want to miss nothing: short bodies match, and
  ``Bearer …`` / ``key=…`` / ``x-api-key: …`` values go too;
- the notebook scrubber must not corrupt an image or a word such as ``sk-learn``: it asks for
  longer bodies containing a digit.

Exact stored values (which need not be key-shaped) are removed first by every caller.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping

__all__ = ["CONTEXT_PATTERN", "KEY_PREFIXES", "REDACTED", "key_pattern", "key_regex",
           "looks_like_key", "scrub", "scrub_context"]

REDACTED = "[redacted]"

# Prefix → provider. Specific prefixes come before the generic ``sk-``.
KEY_PREFIXES: dict[str, str] = {
    "sk-ant-": "anthropic", "sk-proj-": "openai", "sk-svcacct-": "openai",
    "sk-admin-": "openai", "sk-or-": "openrouter", "sk-": "openai/deepseek",
    "AIza": "google", "csk_": "cencori", "gsk_": "groq", "xai-": "xai",
}

_BODY = r"[A-Za-z0-9_\-]"
_START = r"(?<![A-Za-z0-9_\-])"           # "task-runner" or "disk-…" never start a key
# A digit somewhere in the body (the lookahead stays inside the run of body characters).
_DIGIT_AHEAD = r"(?=[A-Za-z_\-]*[0-9])"


def key_regex(min_body: int | Mapping[str, int] = 6, *,
              require_digit: bool | Collection[str] = False,
              body: str | Mapping[str, str] = _BODY, start: str = _START) -> str:
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
    minimums = dict(min_body) if isinstance(min_body, Mapping) else dict.fromkeys(
        KEY_PREFIXES, min_body)
    alternatives = []
    for prefix, minimum in minimums.items():
        needs_digit = (require_digit if isinstance(require_digit, bool)
                       else prefix in require_digit)
        chars = body.get(prefix, _BODY) if isinstance(body, Mapping) else body
        digit = _DIGIT_AHEAD if needs_digit else ""
        alternatives.append(f"{re.escape(prefix)}{digit}{chars}{{{minimum},}}")
    return f"{start}(?:{'|'.join(alternatives)})"


def key_pattern(min_body: int | Mapping[str, int] = 6, *,
                require_digit: bool | Collection[str] = False,
                body: str | Mapping[str, str] = _BODY, start: str = _START) -> re.Pattern[str]:
    """A regex matching any known key shape with at least ``min_body`` body characters.

    ``require_digit`` demands a digit in the body (random keys always have one; English
    words and package names rarely do), for callers that must avoid false positives.
    Every argument may also be given per prefix: see :func:`key_regex`.
    """
    return re.compile(key_regex(min_body, require_digit=require_digit, body=body, start=start))


_ANY_KEY = key_pattern()
# Credentials named by their context (the marker a scrub already left is not re-matched).
CONTEXT_PATTERN = re.compile(
    r"""(?ix)
      (\bbearer\s+)[^\s'",;}\]]+
    | ((?:\b|_)(?:api[_-]?)?key=)[^&\s'",;}\]]+
    | ((?:x-api-key|x-goog-api-key|api-key|cencori_api_key|authorization)
       ['"]?\s*[:=]\s*(?:b?['"])?)(?!\[secure\]|<redacted>|\[redacted\]|\*\*\*)[^'"\s,;}\]]+
    """)


def scrub_context(text: str, marker: str = REDACTED) -> str:
    """Replace the values of ``Bearer …``, ``key=…`` and ``x-api-key: …`` with ``marker``,
    keeping the words that named them."""
    return CONTEXT_PATTERN.sub(
        lambda m: next((g for g in m.groups() if g), "") + marker, text)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without the given exact ``secrets`` and without anything key-shaped."""
    for secret in sorted((s for s in secrets if s and len(s) >= 6), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _ANY_KEY.sub(REDACTED, text)
    return scrub_context(text)


def looks_like_key(text: str) -> bool:
    """True if ``text`` contains something shaped like a provider key."""
    return _ANY_KEY.search(text) is not None
