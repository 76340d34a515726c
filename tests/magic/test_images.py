"""``{fig}`` in a %%cencori cell: figures and images from the namespace become image parts,
sent in the provider's format, refused before sending when they cannot go."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from PIL import Image

from tests.magic.support import assert_one_error_line, last_request, run, texts

OPENAI_KEY = "sk-test-openai-images-000000Ab12"
GROQ_KEY = "gsk_images_magic_" + "0" * 20 + "Cd34"


@pytest.fixture
def openai_key(sandbox_env: Any) -> str:
    from cencori_nb import keys

    keys.set("openai", OPENAI_KEY, default_model="gpt-4o", make_default=True)
    return OPENAI_KEY


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "nb"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.bar(["a", "b", "c"], [3, 1, 2])
    return fig


def test_a_figure_in_the_prompt_is_sent_as_an_image(
    shell: InteractiveShell, openai_key: str, sandbox: Any
) -> None:
    """``{fig}`` becomes an image_url part between the text parts; the reply names the
    640×480 PNG and the footer shows the image tokens."""
    fig = _figure()
    shell.user_ns["fig"] = fig
    try:
        cap, result = run(shell, "%%cencori -o r --no-cache\nWhat does {fig} show? Be brief.")
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    assert result.error_in_exec is None
    content = last_request(sandbox)["json"]["messages"][0]["content"]
    assert [p["type"] for p in content] == ["text", "image_url", "text"]
    assert content[0]["text"] == "What does " and content[2]["text"] == " show? Be brief."
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,iVBOR")
    reply = shell.user_ns["r"]
    assert "Image 1: image/png 640x480" in reply.text
    assert reply.image_tokens == 85 + 170 * 2  # 640×480: two 512-px tiles
    assert f"({reply.image_tokens} image)" in "\n".join(texts(cap))


def test_a_path_is_an_image_and_a_string_stays_text(
    shell: InteractiveShell, openai_key: str, sandbox: Any, workdir: Path
) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), (9, 9, 9)).save(buf, format="PNG")
    (workdir / "chart.png").write_bytes(buf.getvalue())
    shell.user_ns["chart"] = Path("chart.png")
    shell.user_ns["name"] = "chart.png"
    run(shell, "%%cencori --no-cache --no-stream\nCompare {chart} with {name}")
    content = last_request(sandbox)["json"]["messages"][0]["content"]
    assert [p["type"] for p in content] == ["text", "image_url", "text"]
    assert content[2]["text"] == " with chart.png"


def test_a_text_only_model_is_refused_in_one_line(
    shell: InteractiveShell, sandbox_env: Any, sandbox: Any
) -> None:
    from cencori_nb import keys

    keys.set("groq", GROQ_KEY)
    shell.user_ns["img"] = Image.new("RGB", (10, 10))
    before = sandbox.stats["requests"]
    cap, result = run(shell, "%%cencori llama-3.3-70b-versatile\nDescribe {img}")
    assert_one_error_line(cap, result, "reads only text", "route='managed'")
    assert sandbox.stats["requests"] == before


def test_a_fake_png_is_refused_without_quoting_it(
    shell: InteractiveShell, openai_key: str, sandbox: Any, workdir: Path
) -> None:
    (workdir / "x.png").write_text("<svg><text>SECRET-TEXT</text></svg>")
    shell.user_ns["x"] = Path("x.png")
    before = sandbox.stats["requests"]
    cap, result = run(shell, "%%cencori\nDescribe {x}")
    line = assert_one_error_line(cap, result, "SVG")
    assert "SECRET" not in line and sandbox.stats["requests"] == before


def test_dry_run_counts_the_image(shell: InteractiveShell, openai_key: str, sandbox: Any) -> None:
    shell.user_ns["img"] = Image.new("RGB", (1024, 1024))
    before = sandbox.stats["requests"]
    cap, _ = run(shell, "%%cencori gpt-4o --dry-run --max-tokens 10\nDescribe {img}")
    joined = "\n".join(texts(cap))
    assert "(of which 765 for 1 image)" in joined
    assert sandbox.stats["requests"] == before
