"""The ``%cencori`` / ``%%cencori`` IPython magics (``%load_ext cencori_nb``).

A thin face over the same services the CLI uses: the cell magic parses its line into
:class:`~cencori_nb.magic.parser.CellArgs`, fills ``{placeholders}`` from the user namespace
(:mod:`~cencori_nb.magic.interpolate`), and calls :mod:`cencori_nb.client`; the line magic
dispatches subcommands (:mod:`~cencori_nb.magic.commands`).

Loading must stay cheap: this module imports only what IPython has already imported.
The client, the router, pandas, plotly and ipywidgets load when a magic first needs them.

Errors: a :class:`~cencori_nb.errors.CencoriError` becomes one ``cencori: <message>`` line
in the output (no traceback; the client has already recorded the failure in the ledger).
Any other exception propagates as usual; the tracebacks IPython renders pass through
:func:`cencori_nb.ipython_hygiene.guard_tracebacks` (keys become the marker).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display
from traitlets import Bool, Enum, Int, Unicode, validate

from ..errors import CencoriError, CostConfirmationError, user_error
from .interpolate import interpolate_parts
from .parser import (
    FORMATS,
    ROUTES,
    CellArgs,
    KeyInArgumentsError,
    KeyInPromptError,
    parse_cell_line,
)
from .render import Bundle, StreamView, error_bundle, notice_bundle, render_completion

if TYPE_CHECKING:
    from ..keystore.secret import Secret

__all__ = ["CencoriMagics", "load_ipython_extension", "unload_ipython_extension"]


def show(content: Bundle) -> None:
    """Display a raw MIME bundle."""
    display(content, raw=True)


@magics_class
class CencoriMagics(Magics):
    """``%cencori`` subcommands and the ``%%cencori`` prompt cell.

    Persistent defaults: ``%config CencoriMagics.default_model = "gpt-4o-mini"``.
    """

    default_model = Unicode(
        None, allow_none=True, help="Model used when a cell names none (else the project default)."
    ).tag(config=True)
    default_provider = Unicode(
        None, allow_none=True, help="Provider forced when a cell names none."
    ).tag(config=True)
    default_route = Enum(
        ROUTES,
        default_value="auto",
        help="auto (your key if set, else Cencori credits), byok or managed.",
    ).tag(config=True)
    default_format = Enum(FORMATS, default_value="markdown", help="How replies are shown.").tag(
        config=True
    )
    default_system = Unicode(
        None, allow_none=True, help="System prompt used when a cell gives none."
    ).tag(config=True)
    default_max_tokens = Int(
        None, allow_none=True, help="max_tokens used when a cell gives none."
    ).tag(config=True)
    stream = Bool(True, help="Stream replies into the output as they arrive.").tag(config=True)
    stream_throttle_ms = Int(
        80, help="Minimum time between two redraws of a streaming reply, in milliseconds."
    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.sandbox_server: Any = None  # a SandboxServer started by `%cencori sandbox on`

    @validate("stream_throttle_ms")
    def _check_throttle(self, proposal: Any) -> int:
        value = int(proposal["value"])
        if value < 0:
            raise ValueError("stream_throttle_ms must be ≥ 0")
        return value

    @validate("default_max_tokens")
    def _check_max_tokens(self, proposal: Any) -> int | None:
        value = proposal["value"]
        if value is not None and value <= 0:
            raise ValueError("default_max_tokens must be a positive integer")
        return value

    # ---------------------------------------------------------------- entry point
    @line_cell_magic
    def cencori(self, line: str, cell: str | None = None) -> Any:
        """``%cencori SUBCOMMAND`` (see ``%cencori help``) or ``%%cencori`` + a prompt."""
        try:
            if cell is None:
                from .commands import run_line

                return run_line(self, line)
            self.run_cell(line, cell)
        except (KeyInArgumentsError, KeyInPromptError) as exc:
            self.forget_key_shaped_input(stored_keys())
            show(error_bundle(str(exc)))
        except Exception as exc:
            # Ours, or what the machine caused (full disk, damaged database…): the same one
            # line the CLI gives; anything else is a bug and keeps its traceback.
            err = user_error(exc)
            if err is None:
                raise
            show(error_bundle(str(err)))
        return None

    # ---------------------------------------------------------------- the prompt cell
    def run_cell(self, line: str, cell: str) -> None:
        """Parse, interpolate, send (or dry-run) and render one ``%%cencori`` cell."""
        args = parse_cell_line(line)
        if args.help:
            from .commands import help_bundle

            show(help_bundle())
            return
        user_ns = self.shell.user_ns if self.shell is not None else {}
        # IPython hands the body over with its final newline; it is not part of the prompt.
        # A placeholder naming a figure or an image ({fig}) becomes an image part.
        parts = interpolate_parts(cell.rstrip("\n"), user_ns)
        prompt = "".join(p for p in parts if isinstance(p, str))
        if not prompt.strip() and len(parts) <= 1:
            raise _usage("the cell is empty: write the prompt below the %%cencori line.")
        from .parser import refuse_key_in_prompt

        refuse_key_in_prompt(prompt, stored_keys())
        fmt = args.format or self.default_format
        if args.unsafe_html and fmt != "html":
            raise _usage(
                "--unsafe-html only applies to -f html (other formats never show a reply's HTML)."
            )
        options = self._request_options(args)
        if args.schema is not None:
            options["schema"] = _schema_from(args.schema, user_ns)
            fmt = args.format or "json"
        message: str | list[Any] = prompt
        if any(not isinstance(p, str) for p in parts):
            from ..images import as_image

            message = [p if isinstance(p, str) else as_image(p) for p in parts]
        if args.dry_run:
            from .commands import dry_run

            dry_run(message, options)
            return
        try:
            completion, view = self._send(message, options, stream=args.stream and self.stream)
        except CostConfirmationError as exc:
            if not _confirmed(exc):
                raise
            accepted = exc.estimate_usd  # nothing was sent the first time
            completion, view = self._send(
                message, {**options, "max_cost_usd": accepted}, stream=args.stream and self.stream
            )
        if completion is None:
            return
        rendered = render_completion(
            completion.text, completion.footer(), fmt, unsafe_html=args.unsafe_html
        )
        if view is None:
            show(rendered.bundle)
        else:
            view.finish(rendered.bundle)  # the streamed text is replaced in place
        if rendered.error is not None:
            show(error_bundle(rendered.error))
        if args.output:
            user_ns[args.output] = completion
        if rendered.next_input is not None and self.shell is not None:
            self.shell.set_next_input(rendered.next_input, replace=False)

    def _request_options(self, args: CellArgs) -> dict[str, Any]:
        """Keyword arguments for ``client.chat``/``client.stream``: the cell, then defaults."""
        return {
            "model": args.model or self.default_model or None,
            "provider": args.provider or self.default_provider or None,
            "route": args.route or self.default_route,
            "system": args.system if args.system is not None else self.default_system,
            "temperature": args.temperature,
            "max_tokens": args.max_tokens or self.default_max_tokens,
            "project": args.project,
            "cache": args.cache,
            "max_cost_usd": args.max_cost,
        }

    def _send(
        self, prompt: str | list[Any], options: dict[str, Any], *, stream: bool
    ) -> tuple[Any, StreamView | None]:
        """Send the prompt: ``(completion, view)``, or ``(None, view)`` after showing an error
        in the streaming display. Errors before a display exists propagate to the caller."""
        from .. import client

        if not stream:
            return client.chat(prompt, **options), None
        # Opened before anything is shown: a refusal (too large, above the accepted cost)
        # is then a plain error line, or a question, not a half-drawn reply.
        opened = client.stream(prompt, **options)
        view = StreamView(
            lambda b: display(b, raw=True, display_id=True), throttle_ms=self.stream_throttle_ms
        )
        view.start()
        try:
            # The context manager releases the connection on an error or an interrupt.
            with opened as chunks:
                for delta in chunks:
                    view.feed(delta)
        except CencoriError as exc:
            view.finish(error_bundle(str(exc)))  # the error replaces the partial text
            return None, view
        except KeyboardInterrupt:
            # Keep what arrived, without the typing cursor; the interrupt goes on to IPython.
            view.finish(notice_bundle(f"interrupted; partial reply:\n{view.text}"))
            raise
        return chunks.completion, view

    # ---------------------------------------------------------------- history hygiene
    def forget_key_shaped_input(self, stored: Collection[Secret] = frozenset()) -> None:
        """Redact key-shaped text (and the ``stored`` key values) from the current input in
        IPython's history (see :func:`cencori_nb.ipython_hygiene.forget_in_history`)."""
        from ..ipython_hygiene import forget_in_history

        forget_in_history(self.shell, stored)


def stored_keys() -> frozenset[Secret]:
    """Every stored key, as Secrets: to recognise (never to show) them in a prompt or in
    the history. Comparison happens inside ``Secret.__eq__``; nothing here reveals a key.

    A store that cannot be opened (e.g. no passphrase) gives no keys: shape checks still
    apply, and the client reports the store's own error when it needs a key.
    """
    from ..keystore import default_store

    try:
        return frozenset(default_store().all_secrets())
    except CencoriError:
        return frozenset()


def _confirmed(exc: CostConfirmationError) -> bool:
    """Ask in the notebook (the kernel's stdin) whether to send a request above the cost
    threshold. A kernel without stdin (nbval, papermill, a script) cannot ask: the error
    stands, and its hint says how to accept the cost (``--max-cost``)."""
    from IPython.core.error import StdinNotImplementedError

    try:
        answer = input(f"{exc.message} Send it? [y/N] ")
    except (StdinNotImplementedError, EOFError, OSError):
        return False
    return answer.strip().lower() in ("y", "yes")


def _schema_from(name: str, user_ns: dict[str, Any]) -> Any:
    """The schema ``--schema NAME`` names: a variable (``Invoice``) or an attribute of one
    (``models.Invoice``), checked now so a bad one fails before anything is sent."""
    from ..schemas import as_schema

    head, *rest = name.split(".")
    if head not in user_ns:
        raise _usage(
            f"--schema {name}: there is no variable {head!r} in this notebook; define the "
            "class (or the JSON Schema dict) in a cell above first."
        )
    value = user_ns[head]
    for part in rest:
        if not hasattr(value, part):
            raise _usage(f"--schema {name}: {head} has no attribute {part!r}.")
        value = getattr(value, part)
    return as_schema(value)


def _usage(message: str) -> CencoriError:
    from .parser import MagicUsageError

    return MagicUsageError(message)


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%cencori`` and ``%%cencori`` (called by ``%load_ext cencori_nb``)."""
    for existing in ipython.configurables:
        if isinstance(existing, CencoriMagics):  # loaded twice: keep one instance
            return
    ipython.register_magics(CencoriMagics(shell=ipython))
    from ..ipython_hygiene import guard_tracebacks

    guard_tracebacks(ipython)  # %xmode Verbose shows frame locals: keep keys out of them
    _register_accessor_when_pandas_loads(ipython)


def _register_accessor_when_pandas_loads(ipython: Any) -> None:
    """Make ``df.cencori`` available once the user imports pandas, without importing it now.

    Loading the extension must stay cheap, so the accessor is registered after the first
    cell that leaves pandas in ``sys.modules`` (or at once if it already is).
    """
    import cencori_nb

    cencori_nb._register_pandas_accessor()
    if "cencori_nb.batch" in sys.modules:
        return

    def after_cell(*_args: Any) -> None:
        if "pandas" in sys.modules:
            cencori_nb._register_pandas_accessor()
            ipython.events.unregister("post_run_cell", after_cell)

    ipython.events.register("post_run_cell", after_cell)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the magics and stop a sandbox the magic started."""
    for existing in list(ipython.configurables):
        if isinstance(existing, CencoriMagics):
            if existing.sandbox_server is not None:
                existing.sandbox_server.stop()
                existing.sandbox_server = None
                os.environ.pop("CENCORI_NB_SANDBOX", None)
            ipython.configurables.remove(existing)
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("cencori", None)
