"""Remove API keys from notebooks (and text files) before Jupyter writes them to disk.

Two kinds of secrets are removed from every string of the notebook JSON, keys of JSON
objects included (cell sources, outputs of every mime type, stream text, error tracebacks,
cell ids, cell and notebook metadata, the saved widget state under ``metadata.widgets``):

1. every key held in the user's key stores, matched exactly (the strongest guarantee: a key
   we stored never reaches a ``.ipynb``, whatever its shape), also hex- or base64-encoded at
   any alignment and across line breaks (a printed Basic-auth header, MIME-style base64, an
   uploaded ``.env`` file in widget state), and escaped (``\\_`` as LaTeX and Markdown write
   it, ``%5F``, ``\\u005f``, ``&#95;``); a saved widget buffer holding one is dropped;
2. key-shaped strings: ``sk-…``, ``sk-proj-…``, ``sk-ant-…``, ``sk-or-…``, ``AIza…``,
   ``csk_…``, ``gsk_…``, ``xai-…`` and ``Bearer …`` tokens, also escaped. The patterns want
   a long body with a digit in it, so prose such as "sk-learn" or "Bearer token" is left
   alone.

These are the :data:`~cencori_nb.redact.NOTEBOOK` policy of :mod:`cencori_nb.redact`. Each
match becomes :data:`MARKER`. A list of strings (nbformat's multi-line form of a source or an
output) is also scanned joined, so a key split over two items is found; the list is then
re-split into lines. A cell id holding a key gets a fresh valid id. A notebook with nothing
to remove is not touched at all (no string is reassigned), so Jupyter writes exactly the
bytes it would have written without the scrubber.

Binary payloads (base64 images, PDFs, widget buffers) only get the exact-value pass: a
random base64 run can look like ``AIza…`` by chance, and rewriting it would corrupt the image.

What is saved: notebook models; file models whose name ends in ``.ipynb`` (JupyterLab's
upload sends a base64 ``file`` model), scrubbed as notebooks; other file models whose
content is text (``format: text``, or base64 that decodes as UTF-8), scrubbed as text. A
chunked upload (files over 15 MB) is checked on disk after its last chunk
(:func:`post_save_hook`), because Jupyter runs pre-save hooks on its first chunk only.

The stores read are the current home's and those of the homes listed in
``CENCORI_NB_SCRUB_HOMES`` (``cencori-nb lab`` in sandbox mode lists the real home there, so
the real keys are scrubbed while the kernel uses the sandbox home). A store that cannot be
opened is reported as a WARNING at startup and at the first save.

:mod:`cencori_nb.jupyter` wires :func:`pre_save_hook` and :func:`post_save_hook` into the
Jupyter server's contents manager.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import state
from ..redact import BEARER_TOKEN, MARKER, NOTEBOOK, NOTEBOOK_KEY_SHAPES, encoded_forms

__all__ = [
    "ENV_SCRUB_HOMES",
    "KEY_PATTERN",
    "MARKER",
    "Scrubber",
    "encoded_forms",
    "post_save_hook",
    "pre_save_hook",
    "scrub_file_model",
    "scrub_notebook",
    "scrub_text",
    "stored_secrets",
]

log = logging.getLogger(__name__)

# The notebook policy's key shapes (cencori_nb.redact.NOTEBOOK), for callers that only test.
KEY_PATTERN = NOTEBOOK_KEY_SHAPES
_BEARER = BEARER_TOKEN
MIN_EXACT_LENGTH = NOTEBOOK.min_secret  # shorter stored values would shred the notebook
# Homes (os.pathsep-separated) whose key stores are read besides the current home's.
ENV_SCRUB_HOMES = "CENCORI_NB_SCRUB_HOMES"

# Output mime types whose payload is base64 (or otherwise not text a person reads).
_BINARY_MIME_PREFIXES = (
    "image/",
    "audio/",
    "video/",
    "application/pdf",
    "application/octet-stream",
)
_TEXT_IMAGE_TYPES = ("image/svg+xml",)
WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
# nbformat 4.5: ^[a-zA-Z0-9-_]+$, 1 to 64 characters
_CELL_ID = re.compile(r"[a-zA-Z0-9_\-]{1,64}")


def _is_binary_mime(mime: str) -> bool:
    return mime.startswith(_BINARY_MIME_PREFIXES) and mime not in _TEXT_IMAGE_TYPES


@dataclass
class Scrubber:
    """Replaces secrets in strings and counts how many it removed.

    ``exact`` are clear key values (the key stores' keys are registered with
    :mod:`cencori_nb.redact` anyway); patterns always apply to text.
    """

    exact: tuple[str, ...] = ()
    count: int = 0
    _exact_re: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._exact_re = NOTEBOOK.exact_regex(self.exact)

    def text(self, value: str, *, binary: bool = False) -> str:
        """Return ``value`` with secrets replaced (the same object when nothing matched)."""
        new, n = NOTEBOOK.subn(value, binary=binary, exact=self._exact_re)
        if n:
            self.count += n
            return new
        return value

    def _count(self, value: str, *, binary: bool = False) -> int:
        """How many secrets ``value`` holds (nothing is replaced or counted)."""
        return NOTEBOOK.subn(value, binary=binary, exact=self._exact_re)[1]

    def join_split_streams(self, nb: dict[str, Any]) -> None:
        """Merge consecutive stream outputs of a cell when a secret spans their boundary.

        Kernels send printed text in pieces (a streamed reply arrives token by token).
        JupyterLab merges them before saving, but other clients may not; a key split over
        two outputs would then slip past a per-string scan. Untouched when nothing spans.
        """
        cells = nb.get("cells")
        for cell in cells if isinstance(cells, list) else ():
            outputs = cell.get("outputs") if isinstance(cell, dict) else None
            if not isinstance(outputs, list):
                continue
            i = 0
            while i < len(outputs) - 1:
                a, b = outputs[i], outputs[i + 1]
                if (
                    isinstance(a, dict)
                    and isinstance(b, dict)
                    and a.get("output_type") == b.get("output_type") == "stream"
                    and a.get("name") == b.get("name")
                ):
                    ta, tb = _joined(a.get("text")), _joined(b.get("text"))
                    if self._count(ta + tb) > self._count(ta) + self._count(tb):
                        a["text"] = ta + tb
                        del outputs[i + 1]
                        continue
                i += 1

    def tree(self, node: Any, *, binary: bool = False) -> Any:
        """Scrub every string under ``node`` in place, keys of objects included; return the
        (possibly new) node.

        Containers are mutated in place and only where a string actually changed.
        """
        if isinstance(node, str):
            return self.text(node, binary=binary)
        if isinstance(node, dict):
            self._drop_widget_buffers(node)
            renamed = False
            for key, child in node.items():
                new = self.tree(child, binary=binary or self._binary_child(node, key))
                if new is not child:
                    node[key] = new
                if isinstance(key, str) and self.text(key) is not key:
                    renamed = True
            if renamed:
                self._rename_keys(node)
            return node
        if isinstance(node, list):
            if len(node) > 1 and all(isinstance(child, str) for child in node):
                return self._lines(node, binary=binary)
            for i, child in enumerate(node):
                new = self.tree(child, binary=binary)
                if new is not child:
                    node[i] = new
            return node
        return node

    def _rename_keys(self, node: dict[str, Any]) -> None:
        """Rebuild ``node`` (same order) with scrubbed keys; two keys that become the same
        text get ``" 2"``, ``" 3"``… so no value is lost."""
        items = list(node.items())
        node.clear()
        for key, value in items:
            new = NOTEBOOK.subn(key, exact=self._exact_re)[0] if isinstance(key, str) else key
            candidate, n = new, 1
            while candidate in node:
                n += 1
                candidate = f"{new} {n}"
            node[candidate] = value

    def _lines(self, node: list[str], *, binary: bool) -> list[str]:
        """A list of strings (nbformat's multi-line text): each item, then the joined text,
        so a key split over items is found too. Then re-split into lines (still a valid
        multi-line string), only when something spanned the items."""
        for i, child in enumerate(node):
            new = self.text(child, binary=binary)
            if new is not child:
                node[i] = new
        joined = "".join(node)
        if self._count(joined, binary=binary):
            node[:] = self.text(joined, binary=binary).splitlines(keepends=True) or [""]
        return node

    def _drop_widget_buffers(self, model: dict[str, Any]) -> None:
        """Remove saved widget buffers whose bytes hold a stored key or a key shape (a
        FileUpload of a ``.env`` file, say): rewriting base64 in place would leave a broken
        buffer."""
        buffers = model.get("buffers")
        if not isinstance(buffers, list):
            return
        keep = [
            b
            for b in buffers
            if not (
                isinstance(b, dict)
                and isinstance(b.get("data"), str)
                and (self._count(b["data"], binary=True) or NOTEBOOK.encodes_a_key(b["data"]))
            )
        ]
        if len(keep) != len(buffers):
            self.count += len(buffers) - len(keep)
            model["buffers"] = keep

    @staticmethod
    def _binary_child(parent: dict[str, Any], key: Any) -> bool:
        """Whether ``parent[key]`` holds base64 data (output bundles, attachments, buffers)."""
        if not isinstance(key, str):
            return False
        if key == "buffers":  # widget state binary buffers
            return True
        return _is_binary_mime(key)  # output "data" and cell "attachments" bundles


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

    Walks cells (id, source, outputs, metadata, attachments) and the notebook metadata,
    which holds the saved widget state. A cell id that held a secret gets a fresh one
    (the marker is not a valid id).
    """
    s = Scrubber(tuple(exact))
    s.join_split_streams(nb)
    found = nb.get("cells")
    cells: list[Any] = found if isinstance(found, list) else []
    ids = [c.get("id") if isinstance(c, dict) else None for c in cells]
    s.tree(nb)
    if s.count:
        taken = {c.get("id") for c in cells if isinstance(c, dict) and isinstance(c.get("id"), str)}
        for cell, before in zip(cells, ids, strict=False):
            if isinstance(cell, dict) and isinstance(cell.get("id"), str) and cell["id"] != before:
                new = uuid.uuid4().hex[:8]
                while new in taken:
                    new = uuid.uuid4().hex[:8]
                taken.add(new)
                cell["id"] = new
    return s.count


# --------------------------------------------------------------------------- file models

_NOTEBOOK_SUFFIX = ".ipynb"


def _scrub_document(text: str, path: str, exact: tuple[str, ...]) -> tuple[str, int]:
    """A file's text: a notebook (``.ipynb``, or JSON that is one) is scrubbed as one and
    written back in nbformat's layout; anything else as plain text."""
    looks_nb = path.lower().endswith(_NOTEBOOK_SUFFIX)
    if looks_nb or text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and (looks_nb or "cells" in doc and "nbformat" in doc):
            removed = scrub_notebook(doc, exact)
            if not removed:
                return text, 0
            # nbformat's own layout (nbformat.writes): indent 1, sorted keys, unicode kept
            return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n", removed
    s = Scrubber(exact)
    new = s.text(text)
    return new, s.count


def scrub_file_model(model: dict[str, Any], path: str, exact: Iterable[str] = ()) -> int:
    """Scrub a contents-API model that is not a parsed notebook, in place; return the count.

    ``format: text`` content and ``format: base64`` content that decodes as UTF-8 are
    scrubbed (as a notebook when the name ends in ``.ipynb`` or the JSON is one); binary
    content is left alone. The content is rewritten only when something was removed.
    """
    content = model.get("content")
    if not isinstance(content, str):
        return 0
    fmt = model.get("format")
    exact = tuple(exact)
    if fmt == "base64":
        try:
            raw = base64.b64decode("".join(content.split()), validate=True)
            text = raw.decode("utf-8")
        except (binascii.Error, ValueError):
            return 0  # binary (or not base64 at all): not scanned
        new, removed = _scrub_document(text, path, exact)
        if removed:
            model["content"] = base64.b64encode(new.encode("utf-8")).decode("ascii")
        return removed
    new, removed = _scrub_document(content, path, exact)
    if removed:
        model["content"] = new
    return removed


# --------------------------------------------------------------------------- key stores

_warn_lock = threading.Lock()
_warned_on_save = False


def _store_paths() -> list[Path]:
    """The current home's store and those of :data:`ENV_SCRUB_HOMES`, each once."""
    from ..home import home_dir
    from ..keystore.store import STORE_FILE

    homes = [home_dir()]
    for entry in os.environ.get(ENV_SCRUB_HOMES, "").split(os.pathsep):
        if entry.strip():
            homes.append(Path(entry.strip()).expanduser())
    paths: list[Path] = []
    for home in homes:
        path = home / STORE_FILE
        if path not in paths:
            paths.append(path)
    return paths


_extra_stores: dict[Path, Any] = {}


def _open(path: Path) -> Any:
    """The store at ``path``: the process's default one for the current home, else a
    read-only handle of our own (only reads are ever called on it)."""
    from .. import keystore

    default = keystore.default_store()
    if default.path == path:
        return default
    store = _extra_stores.get(path)
    if store is None:
        store = _extra_stores[path] = keystore.KeyStore(path)
    return store


def store_problems() -> list[str]:
    """One line per key store the scrubber should read but cannot (no secrets in them)."""
    problems = []
    for path in _store_paths():
        try:
            _open(path).all_secrets()
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            problems.append(_problem(path, exc))
    return problems


def _problem(path: Path, exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    reason = f"{type(exc).__name__}{f' ({code})' if code else ''}"
    hint = (
        " Start Jupyter with CENCORI_NB_PASSPHRASE set to scrub them exactly."
        if code in ("passphrase_required", "wrong_passphrase")
        else ""
    )
    return (
        f"the secret scrubber cannot read the key store {path}: {reason}; your stored "
        f"keys are removed from notebooks only if they have a known key shape (key "
        f"patterns only).{hint}"
    )


def stored_secrets(logger: logging.Logger | None = None, *, warn: bool = False) -> list[str]:
    """Every key of the stores to scrub, in clear; a store that cannot be opened adds none.

    Never prompts: a key store opens itself from ``CENCORI_NB_PASSPHRASE``, the OS keyring
    or its key file; when none of those works (e.g. a passphrase store and no passphrase in
    the server's environment) the scrubber falls back to the patterns for that store, and
    says so on ``logger`` (WARNING when ``warn``, else DEBUG).
    """
    logger = logger or log
    # A save reads every store as it is now: the one-second rule is for requests, and a
    # key another kernel stored a moment ago must not reach the notebook file.
    state.recheck()
    secrets: list[str] = []
    for path in _store_paths():
        try:
            secrets += [s.reveal() for s in _open(path).all_secrets()]
        except Exception as exc:  # noqa: BLE001 - the scrubber must never block a save
            logger.log(
                logging.WARNING if warn else logging.DEBUG, "cencori_nb: %s", _problem(path, exc)
            )
    return secrets


def _secrets_for_save(logger: logging.Logger) -> list[str]:
    """:func:`stored_secrets`, warning about an unreadable store at the first save only."""
    global _warned_on_save
    with _warn_lock:
        first, _warned_on_save = not _warned_on_save, True
    return stored_secrets(logger, warn=first)


# --------------------------------------------------------------------------- hooks

# Per contents manager: API path → True when its pre-save hook saw the whole content.
_SEEN = "_cencori_nb_pre_saved"


def _seen(contents_manager: Any) -> dict[str, bool]:
    return contents_manager.__dict__.setdefault(_SEEN, {})


def pre_save_hook(
    model: dict[str, Any], path: str = "", contents_manager: Any = None, **kwargs: Any
) -> None:
    """Jupyter pre-save hook: scrub a notebook or text file model in place before it is
    written.

    Refuses (HTTP 400) a file whose name holds a key; otherwise never raises (a failure
    is logged and the save goes on) and never touches a model in which nothing was found.
    """
    logger = getattr(contents_manager, "log", None) or log
    _refuse_key_in_name(path)
    try:
        kind, content = model.get("type"), model.get("content")
        chunked = model.get("chunk") is not None
        if contents_manager is not None:
            # Jupyter runs pre-save hooks on the first chunk of a chunked upload only and
            # appends the others unseen: that file is checked on disk after its last chunk.
            _seen(contents_manager)[path.strip("/")] = not chunked
        if chunked:
            return
        if kind == "notebook" and isinstance(content, dict):
            removed = scrub_notebook(content, _secrets_for_save(logger))
        elif kind in ("notebook", "file") and isinstance(content, str):
            removed = scrub_file_model(model, path, _secrets_for_save(logger))
        else:
            return
        if removed:
            logger.warning(
                "cencori_nb: removed %d secret(s) from %s before saving (replaced with %s)",
                removed,
                path or "notebook",
                MARKER,
            )
    except Exception:  # noqa: BLE001 - a bug (or a malformed model) here: fall back
        logger.error(
            "cencori_nb: secret scrubber failed on %s; scrubbing its JSON text instead",
            path,
            exc_info=True,
        )
        _scrub_serialised(model, path, logger)


def _scrub_serialised(model: dict[str, Any], path: str, logger: logging.Logger) -> None:
    """The fallback when the structured scrub failed: the model's content as JSON text
    through the notebook policy, parsed back. Saving unchanged would write every key the
    notebook holds; if this fails too (the replacement broke the JSON), the save is refused
    (HTTP 500: nothing is written, the notebook stays open in the browser)."""
    try:
        content = model.get("content")
        if isinstance(content, str):
            text, removed = Scrubber(tuple(_secrets_for_save(logger))).text(content), 0
            if text != content:
                model["content"], removed = text, 1
        else:
            raw = json.dumps(content, ensure_ascii=False)
            new, removed = NOTEBOOK.subn(raw, _secrets_for_save(logger))
            if removed:
                model["content"] = json.loads(new)
        if removed:
            logger.warning("cencori_nb: removed secrets from %s before saving", path)
    except Exception:  # noqa: BLE001 - refused below, the reason is logged
        logger.error("cencori_nb: could not scrub %s; refusing the save", path, exc_info=True)
        from tornado.web import HTTPError

        raise HTTPError(
            500,
            "cencori_nb refused to save: its secret scrubber could not check this file "
            "(see the server log). Nothing was written.",
        ) from None


def _refuse_key_in_name(path: str) -> None:
    """A file whose name holds a key would put it on disk (and in every listing): refuse
    the save with a 400 the user sees, never repeating the name."""
    try:
        holds = NOTEBOOK.finds(path)
    except Exception:  # noqa: BLE001 - only a refusal may stop a save, never a bug here
        return
    if holds:
        from tornado.web import HTTPError

        raise HTTPError(
            400,
            "cencori_nb refused to save: the file name looks like it "
            "contains an API key. Save it under another name.",
        )


def post_save_hook(
    model: dict[str, Any], os_path: str = "", contents_manager: Any = None, **kwargs: Any
) -> None:
    """Jupyter post-save hook: a file whose content the pre-save hook did not see whole (a
    chunked upload, after its last chunk) is scrubbed on disk, rewritten atomically with
    its mode kept, only if something was found. Other saves are not read again."""
    logger = getattr(contents_manager, "log", None) or log
    path = str((model or {}).get("path", "")).strip("/")
    if contents_manager is None or not os_path or (model or {}).get("type") == "directory":
        return
    if _seen(contents_manager).pop(path, False):
        return  # scrubbed before it was written
    with contextlib.suppress(Exception):
        if NOTEBOOK.finds(path):
            # Chunks after a refused first one are appended anyway (Jupyter creates the
            # file): a name holding a key must not stay on disk.
            Path(os_path).unlink(missing_ok=True)
            logger.warning("cencori_nb: removed an uploaded file whose name holds an API key")
            return
    try:
        target = Path(os_path)
        raw = target.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return  # binary: not scanned
        new, removed = _scrub_document(text, path, tuple(_secrets_for_save(logger)))
        if removed:
            _replace_keeping_mode(target, new.encode("utf-8"))
            logger.warning(
                "cencori_nb: removed %d secret(s) from %s after its upload (replaced with %s)",
                removed,
                path,
                MARKER,
            )
    except Exception:  # noqa: BLE001 - the upload itself has succeeded
        logger.error("cencori_nb: secret scrubber failed on the uploaded %s", path, exc_info=True)


def _replace_keeping_mode(target: Path, data: bytes) -> None:
    import stat
    import tempfile

    mode = stat.S_IMODE(target.stat().st_mode)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _forget() -> None:
    """Forget the extra stores opened and the first-save warning."""
    global _warned_on_save
    _extra_stores.clear()
    _warned_on_save = False


# Stores are kept by path (the homes are read from the environment at each save): only a
# full reset, a fresh process for tests, forgets them.
state.on_reset("scrubber", _forget, env=())
