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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..redact import BEARER_TOKEN, MARKER, NOTEBOOK, NOTEBOOK_KEY_SHAPES, encoded_forms

__all__ = ["KEY_PATTERN", "MARKER", "Scrubber", "encoded_forms", "pre_save_hook",
           "scrub_notebook", "scrub_text", "stored_secrets"]

log = logging.getLogger(__name__)

# The notebook policy's key shapes (cencori_nb.redact.NOTEBOOK), for callers that only test.
KEY_PATTERN = NOTEBOOK_KEY_SHAPES
_BEARER = BEARER_TOKEN
MIN_EXACT_LENGTH = NOTEBOOK.min_secret   # shorter stored values would shred the notebook

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
        self._exact_re = NOTEBOOK.exact_regex(self.exact)

    def text(self, value: str, *, binary: bool = False) -> str:
        """Return ``value`` with secrets replaced (the same object when nothing matched)."""
        new, n = NOTEBOOK.subn(value, binary=binary, exact=self._exact_re)
        if n:
            self.count += n
            return new
        return value

    def _count(self, value: str) -> int:
        """How many secrets ``value`` holds (nothing is replaced or counted)."""
        return NOTEBOOK.subn(value, exact=self._exact_re)[1]

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
