"""Per-user paths and file modes.

One function, :func:`home_dir`, says where everything lives: ``CENCORI_NB_HOME`` if set,
else platformdirs' user data dir for ``cencori-nb``. The directory is created 0700 and every
file in it 0600, with the mode given at creation (``os.open``/``mkdir`` with a mode under a
tight umask), so there is no window in which a secret file is readable by others.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .state import env as _env

ENV_HOME = "CENCORI_NB_HOME"
DIR_MODE = 0o700
FILE_MODE = 0o600

__all__ = [
    "DIR_MODE",
    "ENV_HOME",
    "FILE_MODE",
    "atomic_write",
    "ensure_home",
    "home_dir",
    "open_private",
    "private_umask",
    "verify_home",
]


_home_memo: tuple[str | None, Path] | None = None  # (CENCORI_NB_HOME value, resolved path)


def home_dir() -> Path:
    """Return the per-user home (not created).

    Memoised on the value of ``CENCORI_NB_HOME`` (it is read several times per request and
    building a ``Path`` is not free); changing the variable is noticed at the next call.
    """
    global _home_memo
    env = _env(ENV_HOME)
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
    """Create the home with mode 0700 if needed, check it (:func:`verify_home`), return it.

    An existing home of ours with looser permissions is tightened (it may have been created
    by hand), because it will hold secrets. One that is not ours, or a symlink, or that holds
    a symlink, is refused instead: tightening it would keep the secrets where someone else
    (or a synced folder) chose.
    """
    path = home_dir()
    with private_umask():
        try:
            path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except FileExistsError:  # a dangling symlink (or a file) where the home should be
            pass
    verify_home(path)
    if os.name == "posix" and (path.stat().st_mode & 0o777) != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def verify_home(path: Path | None = None) -> None:
    """Raise :class:`~cencori_nb.errors.UnsafeHomeError` unless the home is a real directory
    (not a symlink) owned by this user with no symlink anywhere inside it and nothing inside
    it owned by another user (in a home that was group- or world-writable, someone else's
    key file or store would have us seal keys under a KEK they hold).

    The home and everything in it that others may read or write is made private (0700 /
    0600) with a warning naming it: a synced folder, a copy restored from a backup or an
    ``unzip`` under umask 022 leaves the key file (the KEK) and the store readable by the
    group, which is all it takes to decrypt every stored key.

    Symlinks in the *parent* directories are fine (``/tmp`` is one on some systems); only the
    home itself and what it contains are checked, without following links.
    """
    from .errors import UnsafeHomeError

    path = home_dir() if path is None else path
    hint = (
        f"Point {ENV_HOME} at a folder of your own, or move the home aside and let "
        "cencori-nb create a fresh one."
    )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise UnsafeHomeError(
                f"The cencori-nb home {path} is a dangling symlink.", hint=hint, path=str(path)
            ) from None
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeHomeError(
            f"The cencori-nb home {path} is a symlink (to {os.readlink(path)}); a home that "
            "holds keys must be a real folder.",
            hint=hint,
            path=str(path),
        )
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeHomeError(
            f"The cencori-nb home {path} is not a folder.", hint=hint, path=str(path)
        )
    if os.name == "posix" and st.st_uid != os.geteuid():
        raise UnsafeHomeError(
            f"The cencori-nb home {path} belongs to another user (uid {st.st_uid}); its owner "
            "could read or swap your keys.",
            hint=hint,
            path=str(path),
        )
    loose: list[tuple[str, int, int]] = []  # (path, its mode, the private mode) for POSIX
    if os.name == "posix" and st.st_mode & 0o077:
        loose.append((str(path), st.st_mode, DIR_MODE))
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            entry = os.path.join(root, name)
            try:
                est = os.lstat(entry)
            except FileNotFoundError:  # removed meanwhile (a temp file, a lock)
                continue
            if stat.S_ISLNK(est.st_mode):
                raise UnsafeHomeError(
                    f"{entry} is a symlink (to {os.readlink(entry)}) inside the cencori-nb "
                    "home; it would send keys, the ledger or the cache elsewhere.",
                    hint=f"Remove it (rm {entry}); cencori-nb recreates what it needs.",
                    path=entry,
                )
            if os.name != "posix":
                continue
            if est.st_uid != os.geteuid():
                raise UnsafeHomeError(
                    f"{entry} inside the cencori-nb home belongs to another user (uid "
                    f"{est.st_uid}); it may have been planted to read or swap your keys.",
                    hint=f"Check it, remove it (rm -r {entry}) and rotate the keys stored in "
                    "this home if you do not know where it came from.",
                    path=entry,
                )
            if est.st_mode & 0o077:
                private = DIR_MODE if stat.S_ISDIR(est.st_mode) else FILE_MODE
                loose.append((entry, est.st_mode, private))
    if loose:
        _make_private(loose)


def _make_private(loose: list[tuple[str, int, int]]) -> None:
    """chmod each entry to its private mode and warn once, naming them (a reader may want
    to rotate keys that were readable by others)."""
    import logging

    for entry, _mode, private in loose:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(entry, private, follow_symlinks=False)
    shown = ", ".join(f"{entry} ({oct(stat.S_IMODE(mode))})" for entry, mode, _ in loose[:5])
    more = f" and {len(loose) - 5} more" if len(loose) > 5 else ""
    logging.getLogger("cencori_nb.home").warning(
        "cencori_nb: made private (0600 files, 0700 folders) what others could read or write "
        "in the cencori-nb home: %s%s. If anyone else could read the key file or the key "
        "store, rotate the keys stored there.",
        shown,
        more,
    )


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
