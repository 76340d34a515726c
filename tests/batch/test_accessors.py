"""The ``.cencori`` accessors and their templates: filled per row, aligned with the index,
bad templates refused before sending, registration when pandas is already loaded."""

from __future__ import annotations

import pandas as pd
import pytest

from cencori_nb.errors import ConfigurationError
from tests.batch.fakes import FakeAchat


def test_import_registers_accessor_when_pandas_is_loaded() -> None:
    """`import cencori_nb` after pandas gives df.cencori without touching cencori_nb.batch."""
    import subprocess
    import sys

    code = (
        "import pandas as pd, cencori_nb; "
        "print(pd.DataFrame({'t': ['x']}).cencori.prompts('Say {t}').tolist())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "['Say x']"


def test_dataframe_accessor_fills_template_and_aligns_with_index() -> None:
    """df.cencori.prompt fills {column} per row; results keep the (non-default) index."""
    df = pd.DataFrame(
        {"text": ["alpha", "beta", None], "lang": ["en", "fr", "de"]},
        index=pd.Index(["k1", "k2", "k3"], name="key"),
    )
    fake = FakeAchat()
    out = df.cencori.prompt("Summarise in {lang}: {text} {{ok}}", achat=fake, progress=False)
    assert list(out.index) == ["k1", "k2", "k3"] and out.index.name == "key"
    assert out.loc["k1", "prompt"] == "Summarise in en: alpha {ok}"
    assert out.loc["k2", "text"] == "echo: Summarise in fr: beta {ok}"
    assert out.loc["k3", "error"] == "not sent: empty value in column 'text'"
    assert len(fake.calls) == 2
    joined = df.join(out[["text"]].rename(columns={"text": "summary"}))
    assert joined.loc["k2", "summary"] == "echo: Summarise in fr: beta {ok}"


def test_dataframe_accessor_unknown_field_lists_columns() -> None:
    """A brace naming no column fails before sending, naming the columns."""
    df = pd.DataFrame({"text": ["a"], "title": ["t"]})
    with pytest.raises(ConfigurationError) as info:
        df.cencori.prompt("Summarise {body}", achat=FakeAchat(), progress=False)
    assert "{body}" in str(info.value) and "Columns: text, title" in str(info.value)
    assert "{{ and }}" in str(info.value)
    with pytest.raises(ConfigurationError, match="positional"):
        df.cencori.prompt("Summarise {}", achat=FakeAchat(), progress=False)
    with pytest.raises(ConfigurationError, match="names no column"):
        df.cencori.prompt("Summarise", achat=FakeAchat(), progress=False)


def test_dataframe_accessor_numeric_column_names() -> None:
    """{0} finds a column named 0 (format_map alone could not)."""
    df = pd.DataFrame({0: ["a", "b"]}, index=[5, 6])
    assert df.cencori.prompts("x={0}").tolist() == ["x=a", "x=b"]


def test_series_accessor_fills_value_and_aligns() -> None:
    """series.cencori.prompt('… {}') sends each value; index kept; named fields refused."""
    s = pd.Series(["good", "bad"], index=[100, 7], name="review")
    fake = FakeAchat()
    out = s.cencori.prompt("Sentiment of: {}", achat=fake, progress=False)
    assert list(out.index) == [100, 7]
    assert out.loc[7, "prompt"] == "Sentiment of: bad"
    assert s.cencori.prompt(achat=FakeAchat(), progress=False)["prompt"].tolist() == ["good", "bad"]
    with pytest.raises(ConfigurationError, match="Series has one value"):
        s.cencori.prompt("Sentiment of: {review}", achat=fake, progress=False)


def test_accessor_arrives_when_pandas_is_imported_after_the_package() -> None:
    """Importing cencori_nb.batch does not import pandas (a script's first map would pay
    for it before sending); the accessor is registered as soon as pandas is imported."""
    import subprocess
    import sys

    code = (
        "import sys, cencori_nb.batch; "
        "print('pandas' in sys.modules); "
        "import pandas as pd; "
        "print(pd.DataFrame({'t': ['x']}).cencori.prompts('Say {t}').tolist()); "
        "print(pd.Series(['y']).cencori.prompts('Say {}').tolist())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split("\n")[:3] == ["False", "['Say x']", "['Say y']"]
    assert out.stderr == ""
