"""cencori_nb: bring-your-own-key LLM prompting for Jupyter, with Cencori credits.

The public API is loaded lazily so ``import cencori_nb`` stays cheap: pandas, plotly,
ipywidgets and the HTTP stack load on first use.

>>> import cencori_nb
>>> cencori_nb.keys.set("openai", key)          # encrypted per-user store
>>> c = cencori_nb.chat("Say hi", model="gpt-4o-mini")
>>> c.text, c.route, c.provider_cost_usd
>>> cencori_nb.spend(by="day")                   # pandas
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import *  # noqa: F403  (the error tree is part of the public API)
from .errors import __all__ as _error_names

__version__ = "0.1.0"

# public name -> module that defines it (imported on first attribute access)
_LAZY: dict[str, str] = {
    "keys": "cencori_nb.keys",
    "Secret": "cencori_nb.keystore.secret",
    "ChatRequest": "cencori_nb.types",
    "Completion": "cencori_nb.types",
    "Message": "cencori_nb.types",
    "Usage": "cencori_nb.types",
    "image": "cencori_nb.images",
    "ImagePart": "cencori_nb.images",
    "chat": "cencori_nb.client",
    "stream": "cencori_nb.client",
    "achat": "cencori_nb.client",
    "astream": "cencori_nb.client",
    "explain_route": "cencori_nb.router",
    "map": "cencori_nb.batch",
    "amap": "cencori_nb.batch",
    "submit": "cencori_nb.jobs",
    "jobs": "cencori_nb.jobs",
    "load_job": "cencori_nb.jobs",
    "estimate_job": "cencori_nb.jobs",
    "BatchJob": "cencori_nb.jobs",
    "usage": "cencori_nb.reports",
    "spend": "cencori_nb.reports",
    "compare_costs": "cencori_nb.reports",
    "charts": "cencori_nb.charts",
    "wallet": "cencori_nb.wallet",
    "credits": "cencori_nb.wallet",
    "reconcile": "cencori_nb.wallet",
    "settings": "cencori_nb.settings",
    "setup": "cencori_nb.widgets",
    "sandbox": "cencori_nb.sandbox",
    "load_ipython_extension": "cencori_nb.magic",
    "unload_ipython_extension": "cencori_nb.magic",
}
# "jobs" is the package, made callable (cencori_nb.jobs() lists the jobs; see jobs/__init__)
_MODULES = {"keys", "charts", "wallet", "settings", "sandbox", "jobs"}

__all__ = sorted([*_LAZY, *_error_names, "__version__"])


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'cencori_nb' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if name in _MODULES else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


def _register_pandas_accessor() -> None:
    """``df.cencori`` / ``series.cencori`` exist as soon as both pandas and we are imported.

    Only when pandas is already loaded (importing it here would make ``import cencori_nb``
    heavy); otherwise the accessor is registered when :mod:`cencori_nb.batch` is first
    imported (``cencori_nb.map``, ``%load_ext cencori_nb``).
    """
    import sys

    if "pandas" in sys.modules and "cencori_nb.batch" not in sys.modules:
        importlib.import_module("cencori_nb.batch")


_register_pandas_accessor()


def _guard_ipython_tracebacks() -> None:
    """Inside a running IPython shell, keep keys out of its tracebacks (``%xmode Verbose``
    shows every frame's locals) even without ``%load_ext cencori_nb``."""
    import sys

    if "IPython" in sys.modules:
        from .ipython_hygiene import guard_running_shell

        guard_running_shell()


_guard_ipython_tracebacks()


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "cencori_nb.jupyter"}]
