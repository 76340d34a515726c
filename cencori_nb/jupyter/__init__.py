"""The cencori_nb Jupyter server extension: scrub secrets from notebooks on save.

Enabled by ``jupyter-config/jupyter_server_config.d/cencori_nb.json``, which installing the
package puts in ``<prefix>/etc/jupyter/jupyter_server_config.d/`` (also for an editable
install: hatchling installs shared data there too). Check with::

    jupyter server extension list     # cencori_nb.jupyter  enabled  OK

The extension registers :func:`~cencori_nb.jupyter.scrubber.pre_save_hook` with the server's
contents manager. It is added next to any other pre-save hook (a user's
``ContentsManager.pre_save_hook`` config runs first, then the registered hooks in order).
"""

from __future__ import annotations

from typing import Any

from .scrubber import MARKER, pre_save_hook, scrub_notebook, scrub_text

__all__ = ["MARKER", "pre_save_hook", "scrub_notebook", "scrub_text"]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "cencori_nb.jupyter"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Register the scrubber on the server's contents manager (once per manager)."""
    manager = serverapp.contents_manager
    if pre_save_hook in getattr(manager, "_pre_save_hooks", ()):
        return
    manager.register_pre_save_hook(pre_save_hook)
    serverapp.log.info("cencori_nb: secret scrubber registered (keys are removed from "
                       "notebooks on save)")


# Name used by older notebook servers.
load_jupyter_server_extension = _load_jupyter_server_extension
