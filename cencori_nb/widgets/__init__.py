"""The notebook panels. ``cencori_nb.setup()`` returns the providers panel.

ipywidgets is imported only when a panel is built, so importing this package (the
``%cencori providers`` table uses its controller) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .panel import ProvidersPanel

__all__ = ["setup"]


def setup(project: str | None = None) -> ProvidersPanel:
    """The providers panel for ``project`` (default: the current project).

    Mirrors Cencori's Providers page: pick a provider, paste its API key, choose a default
    model, Save. The password field is emptied as soon as it is read, so the key never stays
    in widget state (nor in a saved notebook).
    """
    from .controller import ProvidersController
    from .panel import ProvidersPanel

    return ProvidersPanel(ProvidersController(project))
