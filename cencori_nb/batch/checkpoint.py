"""The checkpoint: the finished rows of one batch, so a re-run sends only the missing ones.

A row is identified by a hash of its prompt and the batch's parameters (:func:`row_key`), a
batch by the hash of all its rows (:func:`batch_id`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from .params import Prompt

__all__ = ["CHECKPOINT_MAX_AGE_S", "Checkpoint", "batch_id", "from_json", "row_key"]

CHECKPOINT_MAX_AGE_S = 7 * 24 * 3600


def row_key(prompt: Prompt, params_fp: str) -> str:
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, default=str)
    return hashlib.sha256(f"{params_fp}\x00{text}".encode()).hexdigest()[:32]


def batch_id(keys: Sequence[str | None], params_fp: str) -> str:
    h = hashlib.sha256(params_fp.encode())
    for k in keys:
        h.update(b"\x00" + (k or "-").encode())
    return h.hexdigest()[:24]


class Checkpoint:
    """Finished rows of one batch, as JSON lines in ``<home>/batches/<batch_id>.jsonl`` (0600).

    Appended as rows finish (one write + flush each; a torn last line after a crash is
    ignored on load). Only successful rows are written: failed rows are what a re-run
    should try again.
    """

    def __init__(self, batch_id: str, directory: Path | None = None) -> None:
        from ..home import ensure_home

        self.directory = directory if directory is not None else ensure_home() / "batches"
        self.path = self.directory / f"{batch_id}.jsonl"
        self._fh: Any = None

    def load(self) -> dict[int, dict[str, Any]]:
        """``{position: row}`` of the rows finished by earlier runs of this batch."""
        rows: dict[int, dict[str, Any]] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return rows
        for line in text.splitlines():
            try:
                record = json.loads(line)
                rows[int(record["pos"])] = record
            except (ValueError, KeyError, TypeError):
                continue  # a torn or foreign line: that row is simply sent again
        return rows

    def append(self, pos: int, key: str, row: dict[str, Any]) -> None:
        if self._fh is None:
            from ..home import open_private, private_umask

            with private_umask():
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fh = os.fdopen(open_private(self.path), "a", encoding="utf-8")
            if _cut_short(self.path):
                # an earlier run died (or the disk filled) mid-line: end that line, so only
                # its row is sent again, not this run's first row too (glued onto it)
                self._fh.write("\n")
        record = {"pos": pos, "key": key, **{k: _jsonable(v) for k, v in row.items()}}
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def delete(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def prune(self, max_age_s: float = CHECKPOINT_MAX_AGE_S) -> None:
        """Remove other batches' checkpoints older than ``max_age_s`` (abandoned re-runs)."""
        cutoff = time.time() - max_age_s
        with contextlib.suppress(OSError):
            for p in self.directory.glob("*.jsonl"):
                with contextlib.suppress(OSError):
                    if p != self.path and p.stat().st_mtime < cutoff:
                        p.unlink()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return {"$dec": str(value)}
    return value


def from_json(value: Any) -> Any:
    if isinstance(value, dict) and "$dec" in value:
        return Decimal(value["$dec"])
    return value


def _cut_short(path: Path) -> bool:
    """Whether ``path`` ends inside a line (its last byte is not a newline)."""
    with path.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if not size:
            return False
        fh.seek(size - 1)
        return fh.read(1) != b"\n"
