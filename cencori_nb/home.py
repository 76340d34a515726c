"""Per-user paths and file modes.

One function, :func:`home_dir`, says where everything lives: ``CENCORI_NB_HOME`` if set,
else platformdirs' user data dir for ``cencori-nb``. The directory is created 0700 and every
file in it 0600, with the mode given at creation (``os.open``/``mkdir`` with a mode under a
tight umask), so there is no window in which a secret file is readable by others.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

ENV_HOME = "CENCORI_NB_HOME"
DIR_MODE = 0o700
FILE_MODE = 0o600

__all__ = ["DIR_MODE", "ENV_HOME", "FILE_MODE", "atomic_write", "ensure_home", "home_dir",
           "open_private", "private_umask"]


_home_memo: tuple[str | None, Path] | None = None   # (CENCORI_NB_HOME value, resolved path)


def home_dir() -> Path:
    """Return the per-user home (not created).

    Memoised on the value of ``CENCORI_NB_HOME`` (it is read several times per request and
    building a ``Path`` is not free); changing the variable is noticed at the next call.
    """
    global _home_memo
    env = os.environ.get(ENV_HOME)
    memo = _home_memo
    if memo is not None and memo[0] == env:
        return memo[1]
    if env:
        path = Path(env).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir("cencori-nb", appauthor=False))
    _home_memo = (env, path)
    return path


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Temporarily set umask 077 so anything created meanwhile is private."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def ensure_home() -> Path:
    """Create the home with mode 0700 if needed and return it.

    An existing home with looser permissions is tightened (it may have been created by
    hand), because it will hold secrets.
    """
    path = home_dir()
    with private_umask():
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if os.name == "posix" and (path.stat().st_mode & 0o777) != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND) -> int:
    """Open (creating with 0600) and return a raw file descriptor."""
    with private_umask():
        return os.open(path, flags, FILE_MODE)


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, backup: Path | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Temp file in the same directory (0600 from creation) → write → fsync → optional hard
    link of the old file to ``backup`` → ``os.replace`` → fsync the directory. A crash at any
    point leaves either the old or the new file, never a torn one. Callers hold the lock.
    """
    directory = path.parent
    with private_umask():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if backup is not None and path.exists():
            # Keep the previous generation: a second name for the old inode, made atomically.
            btmp = backup.with_name(backup.name + ".tmp")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(btmp)
            os.link(path, btmp)
            os.replace(btmp, backup)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
