"""The ``.cencori`` pandas accessors: ``df.cencori.prompt("Summarise: {text}")`` and
``series.cencori.prompt("Sentiment of: {}")``.

They exist as soon as both this package and pandas are imported, in either order: at once
when pandas is already loaded, otherwise right after pandas' own import finishes (whoever
imports it; ``map`` does while its first requests are in flight). Importing the package
does not import pandas itself: a script's first ``map`` would pay pandas' half-second
import before sending anything.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import TYPE_CHECKING, Any

from .cost import BatchEstimate, estimate
from .params import Prompt
from .runner import amap
from .runner import map as map_
from .templates import fill_series_template, fill_template, with_reasons

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CencoriFrameAccessor",
    "CencoriSeriesAccessor",
    "register_accessors",
    "register_when_pandas_loads",
]


class _Accessor:
    _obj: Any

    def _fill(self, template: str) -> tuple[list[Prompt], list[str | None]]:
        raise NotImplementedError

    def prompts(self, template: str) -> pd.Series:
        """The prompts the template makes, one per row (to look before sending)."""
        import pandas as pd

        prompts, _ = self._fill(template)
        return pd.Series(prompts, index=self._obj.index, name="prompt", dtype=object)

    def prompt(self, template: str, **kwargs: Any) -> pd.DataFrame:
        """Send the filled template for every row; see :func:`cencori_nb.map` for options.

        Returns one result row per input row, aligned with the input index; with
        ``schema=…``, one typed column per field of the answer (see :func:`cencori_nb.map`).
        """
        import pandas as pd

        prompts, reasons = self._fill(template)
        df = map_(pd.Series(prompts, index=self._obj.index, dtype=object), **kwargs)
        return with_reasons(df, reasons)

    async def aprompt(self, template: str, **kwargs: Any) -> pd.DataFrame:
        """The async twin of :meth:`prompt` (on the running loop)."""
        import pandas as pd

        prompts, reasons = self._fill(template)
        df = await amap(pd.Series(prompts, index=self._obj.index, dtype=object), **kwargs)
        return with_reasons(df, reasons)

    def estimate(self, template: str, **kwargs: Any) -> BatchEstimate:
        """What :meth:`prompt` would cost, without sending (see :func:`estimate`)."""
        prompts, _ = self._fill(template)
        return estimate([p for p in prompts if p is not None], **kwargs)


class CencoriFrameAccessor(_Accessor):
    """``df.cencori``: ``prompt("Summarise: {text}", model=…)`` fills from each row."""

    def __init__(self, obj: pd.DataFrame) -> None:
        self._obj = obj

    def _fill(self, template: str) -> tuple[list[Prompt], list[str | None]]:
        return fill_template(template, self._obj)


class CencoriSeriesAccessor(_Accessor):
    """``series.cencori``: ``prompt("Summarise: {}", model=…)`` fills from each value."""

    def __init__(self, obj: pd.Series) -> None:
        self._obj = obj

    def _fill(self, template: str = "{}") -> tuple[list[Prompt], list[str | None]]:
        return fill_series_template(template, self._obj.tolist())

    def prompt(self, template: str = "{}", **kwargs: Any) -> pd.DataFrame:
        return super().prompt(template, **kwargs)


def register_accessors() -> None:
    import warnings

    import pandas as pd

    with warnings.catch_warnings():
        # Re-importing this module (autoreload) re-registers our own accessor: not news.
        warnings.filterwarnings("ignore", message=".*cencori.*overriding", category=UserWarning)
        pd.api.extensions.register_dataframe_accessor("cencori")(CencoriFrameAccessor)
        pd.api.extensions.register_series_accessor("cencori")(CencoriSeriesAccessor)


def register_when_pandas_loads() -> None:
    """Register the accessors now if pandas is loaded, else once its import completes."""
    if "pandas" in sys.modules:
        register_accessors()
    elif not any(isinstance(f, _AfterPandasImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterPandasImport())


class _AfterPandasImport(importlib.abc.MetaPathFinder):
    """Finds pandas with the other finders, then registers the accessors when it has run."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "pandas":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # once: also when the import below fails
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        run = getattr(loader, "exec_module", None)
        if run is not None:

            def exec_module(module: Any) -> None:
                run(module)
                register_accessors()

            loader.exec_module = exec_module  # this spec's own loader instance
        return spec
