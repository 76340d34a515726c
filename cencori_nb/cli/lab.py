"""``cencori-nb lab [jupyter lab args…]``: JupyterLab on the notebooks, offline if need be.

What it does, in order:

1. Picks the notebooks folder: ``notebooks/`` of the source checkout this package runs from;
   for an installed package without a checkout, ``<CENCORI_NB_HOME>/notebooks``, where the
   notebooks shipped with the package (``cencori_nb/_notebooks`` when the wheel bundles
   them) are copied once, never over a file you edited. ``--ServerApp.root_dir`` (or
   ``--notebook-dir``) among the Jupyter arguments wins.
2. Decides whether to run offline: when no key is configured for the current project and
   ``CENCORI_NB_SANDBOX`` is not set (or with ``--sandbox``), it starts a
   :class:`~cencori_nb.sandbox.SandboxServer` in this process, points the toolkit at it
   (``CENCORI_NB_SANDBOX`` in JupyterLab's environment, inherited by every kernel) and prints
   a banner saying replies are fake. The offline session uses its own home,
   ``<CENCORI_NB_HOME>/sandbox``, so demo keys, fake spend and the sandbox wallet never mix
   with your real store, ledger and credits. The save-time scrubber still reads the real
   store (``CENCORI_NB_SCRUB_HOMES``), so your real keys are scrubbed from notebooks too.
3. Runs ``python -m jupyterlab`` with the arguments given, adding ``--allow-root`` when run as
   root and ``--no-browser`` when there is no display or ``CI`` is set; makes sure the
   save-time scrubber (``cencori_nb.jupyter``) is loaded even if the Jupyter config that
   enables it was not installed (then it passes ``--ServerApp.jpserver_extensions``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CencoriError, ConfigurationError

__all__ = ["LabPlan", "keys_configured", "notebooks_dir", "plan", "register", "run"]

EXTENSION = "cencori_nb.jupyter"
ENV_SANDBOX = "CENCORI_NB_SANDBOX"
ENV_HOME = "CENCORI_NB_HOME"
_ROOT_DIR_FLAGS = (
    "--ServerApp.root_dir",
    "--notebook-dir",
    "--ServerApp.notebook_dir",
    "--NotebookApp.notebook_dir",
    "--root-dir",
)
_BROWSER_FLAGS = ("--no-browser", "--ServerApp.open_browser", "--browser", "--ServerApp.browser")


class _LabParser(argparse.ArgumentParser):
    """Keeps every argument it does not know, in order, for JupyterLab.

    ``argparse.REMAINDER`` cannot start with an option (``cencori-nb lab --port 9999`` would
    be a usage error), so the lab sub-parser hands unknown arguments through instead.
    """

    # typeshed declares three overloads (a TypeVar namespace); argparse calls this one with
    # a Namespace or None, which is all the lab parser is ever given.
    def parse_known_args(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        ns.jupyter_args = [*getattr(ns, "jupyter_args", []), *extras]
        return ns, []


def register(subparsers: Any) -> None:
    """Add ``lab`` to the ``cencori-nb`` command."""
    parser = subparsers.add_parser(
        "lab",
        allow_abbrev=False,
        usage="cencori-nb lab [-h] [--sandbox | --no-sandbox] [--dry-run] [jupyter lab args…]",
        help="start JupyterLab on the notebooks (an offline sandbox when no keys are set)",
        description="Start JupyterLab on the cencori_nb notebooks with the save-time secret "
        "scrubber. With no key configured, an offline sandbox answers every "
        "prompt (fake replies, no keys needed). Every argument this command does "
        "not know is passed to `jupyter lab` (e.g. --port 9999).",
    )
    parser.__class__ = _LabParser
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--sandbox",
        dest="sandbox",
        action="store_const",
        const=True,
        default=None,
        help="use the offline sandbox even if keys are configured",
    )
    mode.add_argument(
        "--no-sandbox",
        dest="sandbox",
        action="store_const",
        const=False,
        help="never start the sandbox (real providers only)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the jupyter command and environment changes, start nothing",
    )
    parser.set_defaults(handler=run, jupyter_args=[])


# --------------------------------------------------------------------------- decisions


def repo_root() -> Path | None:
    """The source checkout this package runs from (editable install), if any."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir():
        return root
    return None


BUNDLED_NOTEBOOKS = Path(__file__).resolve().parents[1] / "_notebooks"


def notebooks_dir(
    checkout: Path | None | str = "detect", bundled: Path = BUNDLED_NOTEBOOKS, *, write: bool = True
) -> Path:
    """Where JupyterLab opens: the checkout's ``notebooks/`` or the home's copy.

    ``checkout`` and ``bundled`` exist for tests; by default the checkout is detected.
    ``write=False`` (``--dry-run``) only names the folder: nothing is created or copied.
    """
    root = repo_root() if checkout == "detect" else checkout
    if root is not None:
        return Path(root) / "notebooks"
    from ..home import ensure_home, home_dir

    if not write:
        return home_dir() / "notebooks"
    target = ensure_home() / "notebooks"
    target.mkdir(exist_ok=True)
    if bundled.is_dir():
        for nb in sorted(bundled.glob("*.ipynb")):
            if not (target / nb.name).exists():  # never overwrite the user's edits
                shutil.copy2(nb, target / nb.name)
    return target


def keys_configured(project: str | None = None) -> bool:
    """Whether the key store holds any key (BYOK or Cencori) for the current project.

    A store that exists but cannot be opened here (e.g. passphrase-protected without
    ``CENCORI_NB_PASSPHRASE``) counts as configured: the kernel will ask, and we must not
    start a sandbox over real keys.
    """
    try:
        from .. import keys
    except ImportError:  # key store not installed in this build
        return False
    try:
        return bool(keys.status(project=project))
    except CencoriError:
        return True


def extension_state() -> bool | None:
    """True/False when Jupyter's config enables/disables the scrubber, None when silent."""
    from jupyter_core.paths import jupyter_config_path
    from jupyter_server.extension.config import ExtensionConfigManager

    manager = ExtensionConfigManager(read_config_path=jupyter_config_path())
    value = manager.get_jpserver_extensions().get(EXTENSION)
    return None if value is None else bool(value)


def _refuse_keys(args: Sequence[str]) -> None:
    """A key on the command line would be in the process list and Jupyter's log: refuse it
    (without repeating it)."""
    from ..jupyter.scrubber import KEY_PATTERN

    if any(KEY_PATTERN.search(a) for a in args):
        raise ConfigurationError(
            "Refused: an argument of `cencori-nb lab` looks like an API key. Keys are never "
            "taken from the command line (other users can read the process list, and "
            "Jupyter logs its arguments).",
            hint="Store it with `cencori-nb keys set PROVIDER` (it reads the key from a "
            "hidden prompt or stdin) or in the providers panel.",
        )


def _has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _has_flag(args: Sequence[str], flags: Sequence[str]) -> bool:
    return any(a == f or a.startswith(f + "=") for a in args for f in flags)


@dataclass
class LabPlan:
    """What ``cencori-nb lab`` will run: the command, the environment changes, the notes."""

    argv: list[str]
    env_changes: dict[str, str] = field(default_factory=dict)
    start_sandbox: bool = False
    notes: list[str] = field(default_factory=list)


def plan(
    jupyter_args: Sequence[str],
    *,
    sandbox: bool | None = None,
    environ: dict[str, str] | None = None,
    is_root: bool | None = None,
    has_display: bool | None = None,
    scrubber_config: bool | None | str = "detect",
    dry_run: bool = False,
) -> LabPlan:
    """Decide the jupyter command and environment (pure apart from reading config/keys,
    and, unless ``dry_run``, copying the bundled notebooks into the home)."""
    environ = dict(os.environ if environ is None else environ)
    args = list(jupyter_args)
    _refuse_keys(args)
    if is_root is None:
        is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if has_display is None:
        has_display = _has_display()
    if scrubber_config == "detect":
        scrubber_config = extension_state()

    extra: list[str] = []
    notes: list[str] = []
    if not _has_flag(args, _ROOT_DIR_FLAGS):
        folder = notebooks_dir(write=not dry_run)
        extra.append(f"--ServerApp.root_dir={folder}")
        if not dry_run and not any(folder.glob("*.ipynb")):
            notes.append(
                f"{folder} has no notebooks yet (this installation bundles none); "
                "the walkthroughs are in the project's notebooks/ folder."
            )
    if is_root and "--allow-root" not in args:
        extra.append("--allow-root")
    if (_truthy(environ.get("CI")) or not has_display) and not _has_flag(args, _BROWSER_FLAGS):
        extra.append("--no-browser")
    if scrubber_config is None:
        extra.append(f"--ServerApp.jpserver_extensions={EXTENSION}=True")
    elif scrubber_config is False:
        notes.append(
            f"warning: the secret scrubber ({EXTENSION}) is disabled in your Jupyter "
            "config; keys printed in a notebook would be saved. Enable it with "
            f"`jupyter server extension enable {EXTENSION}`."
        )

    env_changes: dict[str, str] = {}
    start_sandbox = False
    if sandbox is None:
        start_sandbox = not environ.get(ENV_SANDBOX) and not keys_configured()
    elif sandbox:
        start_sandbox = True
    elif environ.get(ENV_SANDBOX):
        raise ConfigurationError(
            f"--no-sandbox was given but {ENV_SANDBOX} is set in your environment.",
            hint=f"Unset {ENV_SANDBOX} to talk to the real providers.",
        )
    if start_sandbox:
        from ..home import home_dir
        from ..jupyter.scrubber import ENV_SCRUB_HOMES

        env_changes[ENV_HOME] = str(home_dir() / "sandbox")
        # The kernels use the sandbox home, but a real key pasted into a notebook must
        # still be scrubbed: the scrubber also reads (only reads) the real home's store.
        env_changes[ENV_SCRUB_HOMES] = os.pathsep.join(
            p for p in (str(home_dir()), environ.get(ENV_SCRUB_HOMES, "")) if p
        )
    argv = [sys.executable, "-m", "jupyterlab", *extra, *args]
    return LabPlan(argv=argv, env_changes=env_changes, start_sandbox=start_sandbox, notes=notes)


# --------------------------------------------------------------------------- running


def _banner(url: str, home: str) -> str:
    line = "=" * 78
    return (
        f"{line}\n"
        f"  OFFLINE SANDBOX at {url} — replies are fake, no keys needed.\n"
        f"  No key is configured, so every provider (and the Cencori gateway) is served\n"
        f"  by a local sandbox. Demo keys, usage and credits of this session live in\n"
        f"  {home}\n"
        f"  (not your real store). For real providers: `cencori-nb keys set openai`\n"
        f"  (or `cencori-nb keys set cencori` for managed credits), then run\n"
        f"  `cencori-nb lab` again.\n"
        f"{line}"
    )


def run(args: argparse.Namespace) -> int:
    """Handler of ``cencori-nb lab``: start the sandbox if needed, then JupyterLab."""
    lab = plan(args.jupyter_args, sandbox=args.sandbox, dry_run=args.dry_run)
    for note in lab.notes:
        print(f"cencori-nb: {note}", file=sys.stderr)
    if args.dry_run:
        for name, value in lab.env_changes.items():
            print(f"{name}={value}")
        if lab.start_sandbox:
            print(f"{ENV_SANDBOX}=<url of the sandbox started here>")
        print(" ".join(lab.argv))
        return 0

    env = dict(os.environ, **lab.env_changes)
    server = None
    if lab.start_sandbox:
        from ..sandbox import SandboxServer

        server = SandboxServer()
        url = server.start_in_thread()
        env[ENV_SANDBOX] = url
        print(_banner(url, lab.env_changes[ENV_HOME]), flush=True)
    try:
        return _run_jupyter(lab.argv, env)
    finally:
        if server is not None:
            server.stop()


def _run_jupyter(argv: list[str], env: dict[str, str]) -> int:
    """Run JupyterLab as a child; this process stays alive to serve the sandbox thread.

    Ctrl-C reaches both processes (same terminal); JupyterLab asks whether to shut down, so
    this side just keeps waiting. SIGTERM sent to this process is passed on to JupyterLab.
    """
    proc = subprocess.Popen(argv, env=env)

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
