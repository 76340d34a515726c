"""Deterministic sandbox replies and the one token-counting rule every door uses.

A reply is a pure function of the server seed, the provider/model label, the whole
conversation and ``max_tokens``: the same request to the same sandbox gives the same text,
a different seed (or prompt) a different one. Each reply says it came from the sandbox and
echoes the first words of the last user message, so nobody mistakes it for a real model.

Tokens are counted with one rule for prompts and replies alike: a run of word characters
or a single punctuation mark is one token (``\\w+|[^\\w\\s]``). A reply is cut into pieces of
exactly one token each (with the whitespace before it), so a stream has one delta per
output token and the deltas concatenate to the reply.

Scripted replies, for tests that need a model to say something exact (a hostile reply, a
hostile provider error): a last user message that starts with

- ``SANDBOX-ECHO:`` is answered with the rest of the message, verbatim (streamed one token
  per chunk like any reply; trailing whitespace is dropped);
- ``SANDBOX-ERROR:`` is answered with the door's own 400 error whose message is the rest
  of the message.

The convention lives only in the sandbox: a real provider receives the text as a prompt.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "ECHO_PREFIX",
    "ERROR_PREFIX",
    "FILLERS",
    "Reply",
    "count_tokens",
    "echo",
    "exact_reply",
    "make_reply",
    "scripted",
    "split_tokens",
]

ECHO_PREFIX = "SANDBOX-ECHO:"  # reply with exactly the rest of the message
ERROR_PREFIX = "SANDBOX-ERROR:"  # answer a 400 whose message is the rest of the message

_TOKEN = re.compile(r"\w+|[^\w\s]")
_PIECE = re.compile(r"\s*(?:\w+|[^\w\s])")

ECHO_WORDS = 8  # how many words of the last user message the reply repeats

# Filler sentences, picked and ordered by a hash of (seed, label, conversation).
FILLERS: tuple[str, ...] = (
    "No real model was called; this text is generated locally for testing.",
    "The sandbox counts tokens honestly, so longer prompts cost more.",
    "Every number in this answer is deterministic for a given seed.",
    "Streaming sends one token per chunk, in the provider's own wire format.",
    "Faults such as timeouts and rate limits can be injected on request.",
    "Prices come from the same public catalogue the real gateway uses.",
    "Nothing here leaves your machine, and no key is ever checked for real.",
    "A managed request is charged at the provider price plus fifty percent.",
    "Try another seed to get a different, equally meaningless paragraph.",
    "Latency, rate limits and credit balances are all configurable.",
    "This reply is safe to cache, log and compare in your notebooks.",
    "Summaries, translations and code reviews all get the same treatment here.",
    "Think of this as a mirror that only repeats your question politely.",
    "The sandbox keeps per-route and per-key counters for tests.",
    "Replace the sandbox URL with a real provider when you are ready.",
    "Tokens are words and punctuation marks, counted the same way everywhere.",
)


def count_tokens(text: str) -> int:
    """Tokens of ``text`` by the sandbox rule (a word or one punctuation mark each)."""
    return len(_TOKEN.findall(text)) if text else 0


def split_tokens(text: str) -> list[str]:
    """Cut ``text`` into one-token pieces (leading whitespace kept) that join back to it."""
    return _PIECE.findall(text)


def echo(prompt: str, words: int = ECHO_WORDS) -> str:
    """The first ``words`` words of ``prompt`` on one line, with ``…`` when there is more."""
    parts = prompt.split()
    head = " ".join(parts[:words])
    return head + (" …" if len(parts) > words else "")


@dataclass(frozen=True)
class Reply:
    """One generated answer: its text, one-token pieces and honest usage."""

    text: str
    pieces: tuple[str, ...]
    input_tokens: int
    output_tokens: int
    truncated: bool  # cut at max_tokens (finish reason "length" and friends)
    image_tokens: int = 0  # of input_tokens, the images' share (sandbox/images.py)


def make_reply(
    *, seed: int, label: str, conversation: Sequence[str], last_user: str, max_tokens: int | None
) -> Reply:
    """Build the reply for ``conversation`` (every message text, system included).

    ``label`` names who "answers" (e.g. ``openai/gpt-4o-mini``); ``last_user`` is the text
    echoed back; ``max_tokens`` cuts the reply (never below one token).
    """
    return _make_reply(seed, label, tuple(conversation), last_user, max_tokens)


@lru_cache(maxsize=4096)
def _make_reply(
    seed: int, label: str, conversation: tuple[str, ...], last_user: str, max_tokens: int | None
) -> Reply:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(str(seed).encode())
    digest.update(b"\x00" + label.encode("utf-8", "replace"))
    for text in conversation:
        digest.update(b"\x00" + text.encode("utf-8", "replace"))
    rng = random.Random(int.from_bytes(digest.digest(), "big"))  # noqa: S311 (not crypto)
    filler = rng.sample(FILLERS, k=rng.choice((2, 3)))
    asked = echo(last_user)
    asked_part = f"You asked: '{asked}'." if asked else "You sent no text."
    full = " ".join([f"[sandbox reply from {label}]", asked_part, *filler])
    pieces = split_tokens(full)
    truncated = max_tokens is not None and len(pieces) > max_tokens
    if truncated:
        pieces = pieces[: max(1, int(max_tokens or 1))]
    input_tokens = sum(count_tokens(t) for t in conversation)
    return Reply(
        text="".join(pieces),
        pieces=tuple(pieces),
        input_tokens=input_tokens,
        output_tokens=len(pieces),
        truncated=truncated,
    )


def scripted(last_user: str) -> tuple[str, str] | None:
    """``("echo", text)`` or ``("error", text)`` when the message asks for a scripted
    answer (see the module docstring), else None."""
    for kind, prefix in (("echo", ECHO_PREFIX), ("error", ERROR_PREFIX)):
        if last_user.startswith(prefix):
            return kind, last_user[len(prefix) :].lstrip(" ")
    return None


def exact_reply(text: str, *, conversation: Sequence[str], max_tokens: int | None) -> Reply:
    """A reply that is exactly ``text`` (cut at ``max_tokens`` like any other)."""
    pieces = split_tokens(text)
    if not pieces:
        pieces = ["(empty)"]
    truncated = max_tokens is not None and len(pieces) > max_tokens
    if truncated:
        pieces = pieces[: max(1, int(max_tokens or 1))]
    return Reply(
        text="".join(pieces),
        pieces=tuple(pieces),
        input_tokens=sum(count_tokens(t) for t in conversation),
        output_tokens=len(pieces),
        truncated=truncated,
    )
