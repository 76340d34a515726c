"""Token estimates for when no usage is available (dry runs, batch estimates, cut streams).

Offline and dependency-free: tokenizers download their vocabularies at first use, which
this toolkit must not do. The estimate is about 4 characters a token for English prose and
code (OpenAI's published rule of thumb), counted so that short texts are not zero.
Whenever a provider reports usage, that is used instead and nothing is estimated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["estimate_messages_tokens", "estimate_tokens"]

_WORDS = re.compile(r"\w+|[^\w\s]", re.UNICODE)

MESSAGE_OVERHEAD = 4  # role and separators per chat message, as OpenAI's cookbook counts


def estimate_tokens(text: str) -> int:
    """Estimated tokens of ``text``: the larger of chars/4 and 3/4 of the word+symbol count."""
    if not text:
        return 0
    by_chars = (len(text) + 3) // 4
    by_words = (len(_WORDS.findall(text)) * 3 + 3) // 4
    return max(1, by_chars, by_words)


def estimate_messages_tokens(contents: Iterable[str]) -> int:
    """Estimated prompt tokens of a list of message contents, with per-message overhead."""
    return sum(estimate_tokens(c) + MESSAGE_OVERHEAD for c in contents) + 3
