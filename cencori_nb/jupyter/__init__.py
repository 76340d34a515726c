"""The cencori_nb Jupyter server extension: scrub secrets from notebooks on save.

Enabled by ``jupyter-config/jupyter_server_config.d/cencori_nb.json``, which installing the
package puts in ``<prefix>/etc/jupyter/jupyter_server_config.d/`` (also for an editable
install: hatchling installs shared data there too). Check with::

    jupyter server extension list     # cencori_nb.jupyter  enabled  OK

The extension registers :func:`~cencori_nb.jupyter.scrubber.pre_save_hook` (and
:func:`~cencori_nb.jupyter.scrubber.post_save_hook`, for chunked uploads) with the server's
contents manager. They are added next to any other hooks (a user's
``ContentsManager.pre_save_hook`` config runs first, then the registered hooks in order).
At startup it checks that it can read the key stores it scrubs and logs a WARNING for each
one it cannot (e.g. a passphrase store and no ``CENCORI_NB_PASSPHRASE``). The server's own
log (its request log prints every URL) gets the log-line scrubber of :mod:`cencori_nb.redact`.
"""

from __future__ import annotations

from typing import Any

from .scrubber import (
    MARKER,
    post_save_hook,
    pre_save_hook,
    scrub_notebook,
    scrub_text,
    store_problems,
)

__all__ = ["MARKER", "install", "post_save_hook", "pre_save_hook", "scrub_notebook", "scrub_text"]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "cencori_nb.jupyter"}]


def install(manager: Any, log: Any) -> bool:
    """Register the scrubber's hooks on a contents manager (once); warn on ``log`` about
    every key store it cannot read. Returns False if it was already installed."""
    if pre_save_hook in getattr(manager, "_pre_save_hooks", ()):
        return False
    manager.register_pre_save_hook(pre_save_hook)
    manager.register_post_save_hook(post_save_hook)
    for problem in store_problems():
        log.warning("cencori_nb: %s", problem)
    return True


# The server's own loggers: the request log prints every URL (a file name holding a key).
_SERVER_LOGGERS = ("tornado.access", "tornado.application", "tornado.general")


def _redact_server_logs(serverapp: Any) -> None:
    """Put the log-line scrubber (cencori_nb.redact.LOG_LINE) on the server's loggers."""
    import logging

    from ..transport.logs import RedactingFilter

    for logger in (serverapp.log, *map(logging.getLogger, _SERVER_LOGGERS)):
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Register the scrubber on the server's contents manager (once per manager) and scrub
    the server's own logs."""
    _redact_server_logs(serverapp)
    if install(serverapp.contents_manager, serverapp.log):
        serverapp.log.info(
            "cencori_nb: secret scrubber registered (keys are removed from notebooks on save)"
        )


# Name used by older notebook servers.
load_jupyter_server_extension = _load_jupyter_server_extension
