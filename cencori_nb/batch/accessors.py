"""The ``.cencori`` pandas accessors: ``df.cencori.prompt("Summarise: {text}")`` and
``series.cencori.prompt("Sentiment of: {}")``, registered when this package is imported."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cost import BatchEstimate, estimate
from .params import Prompt
from .runner import amap
from .runner import map as map_
from .templates import fill_series_template, fill_template, with_reasons

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CencoriFrameAccessor", "CencoriSeriesAccessor", "register_accessors"]


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
