"""Remove API keys from a notebook before Jupyter writes it to disk.

Two kinds of secrets are removed from every string of the notebook JSON (cell sources,
outputs of every mime type, stream text, error tracebacks, cell and notebook metadata, the
saved widget state under ``metadata.widgets``):

1. every key held in the user's key store, matched exactly (the strongest guarantee: a key
   we stored never reaches a ``.ipynb``, whatever its shape), also hex- or base64-encoded
   (a printed Basic-auth header, an uploaded ``.env`` file in widget state); a saved widget
   buffer holding one is dropped;
2. key-shaped strings: ``sk-…``, ``sk-proj-…``, ``sk-ant-…``, ``sk-or-…``, ``AIza…``,
   ``csk_…``, ``gsk_…``, ``xai-…`` and ``Bearer …`` tokens. The patterns want a long body
   with a digit in it, so prose such as "sk-learn" or "Bearer token" is left alone.

Each match becomes :data:`MARKER`. A notebook with nothing to remove is not touched at all
(no string is reassigned), so Jupyter writes exactly the bytes it would have written without
the scrubber.

Binary payloads (base64 images, PDFs, widget buffers) only get the exact-value pass: a
random base64 run can look like ``AIza…`` by chance, and rewriting it would corrupt the image.

The functions here are pure; :mod:`cencori_nb.jupyter` wires :func:`pre_save_hook` into the
Jupyter server's contents manager.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..redact import key_pattern

__all__ = ["KEY_PATTERN", "MARKER", "Scrubber", "encoded_forms", "pre_save_hook",
           "scrub_notebook", "scrub_text", "stored_secrets"]

MARKER = "[REDACTED by cencori_nb]"

log = logging.getLogger(__name__)

# Key shapes (see cencori_nb.redact). The body must hold a digit, except after prefixes that
# only keys use: random keys always have one; English and package names (sk-learn) rarely do.
# Bodies are long so that words, hashes and base64 images are never cut.
_ONLY_KEYS_USE = ("sk-proj-", "sk-ant-", "sk-or-", "sk-svcacct-", "sk-admin-")
KEY_PATTERN = key_pattern(
    {**dict.fromkeys(_ONLY_KEYS_USE, 20),
     "sk-": 20,      # OpenAI legacy, DeepSeek, …
     "AIza": 30,     # Google API keys: AIza + 35 characters
     "csk_": 16,     # Cencori project keys (managed route)
     "gsk_": 20, "xai-": 20},
    require_digit={"sk-", "AIza", "csk_", "gsk_", "xai-"},
)
# "Bearer <token>": keep the word, drop the token (JWTs and opaque tokens: dots, slashes, =).
_BEARER = re.compile(r"(?<=Bearer )(?=[A-Za-z._~+/=\-]*[0-9])[A-Za-z0-9._~+/=\-]{20,}")

# Exact stored values shorter than this are ignored: replacing a 3-character "key" would
# shred the notebook, and no real provider key is that short.
MIN_EXACT_LENGTH = 8

# Output mime types whose payload is base64 (or otherwise not text a person reads).
_BINARY_MIME_PREFIXES = ("image/", "audio/", "video/", "application/pdf",
                         "application/octet-stream")
_TEXT_IMAGE_TYPES = ("image/svg+xml",)
WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"


def _is_binary_mime(mime: str) -> bool:
    return mime.startswith(_BINARY_MIME_PREFIXES) and mime not in _TEXT_IMAGE_TYPES


@dataclass
class Scrubber:
    """Replaces secrets in strings and counts how many it removed.

    ``exact`` are clear key values (from the key store); patterns always apply to text.
    """

    exact: tuple[str, ...] = ()
    count: int = 0

    def __post_init__(self) -> None:
        forms = {form for v in self.exact if len(v) >= MIN_EXACT_LENGTH
                 for form in encoded_forms(v)}
        self._exact_re = re.compile(_trie_pattern(forms)) if forms else None

    def text(self, value: str, *, binary: bool = False) -> str:
        """Return ``value`` with secrets replaced (the same object when nothing matched)."""
        if self._exact_re is not None:
            value = self._sub(self._exact_re, value)
        if not binary:
            value = self._sub(KEY_PATTERN, value)
            if "Bearer " in value:
                value = self._sub(_BEARER, value)
        return value

    def _count(self, value: str) -> int:
        """How many secrets ``value`` holds (nothing is replaced or counted)."""
        n = len(self._exact_re.findall(value)) if self._exact_re is not None else 0
        if self._exact_re is not None:
            value = self._exact_re.sub(MARKER, value)
        n += len(KEY_PATTERN.findall(value))
        return n + (len(_BEARER.findall(value)) if "Bearer " in value else 0)

    def join_split_streams(self, nb: dict[str, Any]) -> None:
        """Merge consecutive stream outputs of a cell when a secret spans their boundary.

        Kernels send printed text in pieces (a streamed reply arrives token by token).
        JupyterLab merges them before saving, but other clients may not; a key split over
        two outputs would then slip past a per-string scan. Untouched when nothing spans.
        """
        for cell in nb.get("cells") or ():
            outputs = cell.get("outputs") if isinstance(cell, dict) else None
            if not isinstance(outputs, list):
                continue
            i = 0
            while i < len(outputs) - 1:
                a, b = outputs[i], outputs[i + 1]
                if (isinstance(a, dict) and isinstance(b, dict)
                        and a.get("output_type") == b.get("output_type") == "stream"
                        and a.get("name") == b.get("name")):
                    ta, tb = _joined(a.get("text")), _joined(b.get("text"))
                    if self._count(ta + tb) > self._count(ta) + self._count(tb):
                        a["text"] = ta + tb
                        del outputs[i + 1]
                        continue
                i += 1

    def _sub(self, pattern: re.Pattern[str], value: str) -> str:
        new, n = pattern.subn(MARKER, value)
        if n:
            self.count += n
            return new
        return value

    def tree(self, node: Any, *, binary: bool = False) -> Any:
        """Scrub every string under ``node`` in place; return the (possibly new) node.

        Containers are mutated in place and only where a string actually changed.
        """
        if isinstance(node, str):
            return self.text(node, binary=binary)
        if isinstance(node, dict):
            self._drop_widget_buffers(node)
            for key, child in node.items():
                new = self.tree(child, binary=binary or self._binary_child(node, key))
                if new is not child:
                    node[key] = new
            return node
        if isinstance(node, list):
            for i, child in enumerate(node):
                new = self.tree(child, binary=binary)
                if new is not child:
                    node[i] = new
            return node
        return node

    def _drop_widget_buffers(self, model: dict[str, Any]) -> None:
        """Remove saved widget buffers whose bytes hold a stored key (a FileUpload of a
        ``.env`` file, say): rewriting base64 in place would leave a broken buffer."""
        buffers = model.get("buffers")
        if self._exact_re is None or not isinstance(buffers, list):
            return
        keep = [b for b in buffers if not (isinstance(b, dict) and isinstance(
            b.get("data"), str) and self._exact_re.search(b["data"]))]
        if len(keep) != len(buffers):
            self.count += len(buffers) - len(keep)
            model["buffers"] = keep

    @staticmethod
    def _binary_child(parent: dict[str, Any], key: Any) -> bool:
        """Whether ``parent[key]`` holds base64 data (output bundles, attachments, buffers)."""
        if not isinstance(key, str):
            return False
        if key == "buffers":          # widget state binary buffers
            return True
        return _is_binary_mime(key)   # output "data" and cell "attachments" bundles


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

    def build(node: dict[str, Any]) -> str:
        alternatives = [re.escape(ch) + build(child) for ch, child in node.items() if ch]
        if not alternatives:
            return ""
        ends_here = "" in node
        if len(alternatives) == 1 and not ends_here:
            return alternatives[0]
        group = "(?:" + "|".join(alternatives) + ")"
        return group + "?" if ends_here else group   # greedy: the longer word wins

    return build(trie)


def _base64_cores(raw: bytes, encode: Any) -> list[str]:
    """``raw`` base64-encoded as it appears inside a larger blob, for each of the three
    byte alignments: only the characters made of ``raw``'s own bits."""
    cores = []
    for offset in range(3):
        enc = encode(b"\0" * offset + raw).rstrip(b"=").decode()
        start = -(-8 * offset // 6)                  # first character of raw bits only
        end = (8 * (offset + len(raw))) // 6         # later ones mix in the next bytes
        if end - start >= MIN_EXACT_LENGTH:
            cores.append(enc[start:end])
    return cores


def encoded_forms(value: str) -> list[str]:
    """A stored key and the forms it takes when encoded: hex (both cases) and base64
    (standard and URL-safe, every alignment), e.g. in a Basic-auth header or an upload."""
    import base64

    raw = value.encode()
    return [value, raw.hex(), raw.hex().upper(),
            *_base64_cores(raw, base64.b64encode), *_base64_cores(raw, base64.urlsafe_b64encode)]


def _joined(text: Any) -> str:
    """nbformat text: a string or a list of strings."""
    if isinstance(text, list):
        return "".join(t for t in text if isinstance(t, str))
    return text if isinstance(text, str) else ""


def scrub_text(text: str, exact: Iterable[str] = ()) -> tuple[str, int]:
    """Return ``(scrubbed, removed)`` for one string."""
    s = Scrubber(tuple(exact))
    return s.text(text), s.count


def scrub_notebook(nb: dict[str, Any], exact: Iterable[str] = ()) -> int:
    """Scrub a notebook JSON dict in place; return how many secrets were removed.

    Walks cells (source, outputs, metadata, attachments) and the notebook metadata,
    which holds the saved widget state.
    """
    s = Scrubber(tuple(exact))
    s.join_split_streams(nb)
    s.tree(nb)
    return s.count


def stored_secrets() -> list[str]:
    """Every key in the user's store, in clear, or ``[]`` when the store cannot be opened.

    Never prompts: the key store opens itself from ``CENCORI_NB_PASSPHRASE``, the OS keyring
    or its key file; when none of those works (e.g. a passphrase store and no passphrase in
    the server's environment) the scrubber falls back to the patterns alone.
    """
    try:
        from .. import keystore

        store = keystore.default_store()
        return [s.reveal() for s in store.all_secrets()]
    except Exception as exc:  # noqa: BLE001 - the scrubber must never block a save
        log.debug("cencori_nb scrubber: key store not readable (%s); using key patterns only",
                  type(exc).__name__)
        return []


def pre_save_hook(model: dict[str, Any], path: str = "", contents_manager: Any = None,
                  **kwargs: Any) -> None:
    """Jupyter pre-save hook: scrub a notebook model in place before it is written.

    Never raises (a failure is logged and the save goes on) and never touches a model in
    which nothing was found.
    """
    logger = getattr(contents_manager, "log", None) or log
    try:
        if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
            return
        removed = scrub_notebook(model["content"], stored_secrets())
        if removed:
            logger.warning("cencori_nb: removed %d secret(s) from %s before saving "
                           "(replaced with %s)", removed, path or "notebook", MARKER)
    except Exception:  # noqa: BLE001 - a save must never fail because of the scrubber
        logger.error("cencori_nb: secret scrubber failed on %s; saving unchanged", path,
                     exc_info=True)
