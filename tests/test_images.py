"""cencori_nb.images: what becomes an image part, and every way a bad one is refused.

Each attack is built here from real bytes (a real PNG, a real JPEG, a real symlink), and
each must give an ImageError with one actionable line that never quotes the file."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import pytest

from cencori_nb import errors, images
from cencori_nb.images import ImagePart, as_image, fit_for, image_tokens, sniff

PIL = pytest.importorskip("PIL.Image")


def png_bytes(
    width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    buf = io.BytesIO()
    PIL.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    PIL.new("RGB", (width, height), (10, 120, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims ``width`` × ``height`` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    # one compressed stream of zeros that would expand to the whole image
    idat = zlib.compress(b"\0" * 100_000, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


# --------------------------------------------------------------------------- accepted


def test_png_bytes_become_a_part_with_real_size_and_hash() -> None:
    """Raw PNG bytes: type from the signature, size from the header, sha256 of the bytes."""
    import hashlib

    data = png_bytes(64, 48)
    part = as_image(data)
    assert (part.mime, part.width, part.height) == ("image/png", 64, 48)
    assert part.data == data
    assert part.sha256 == hashlib.sha256(data).hexdigest()
    assert part.data_url().startswith("data:image/png;base64,iVBORw0KGgo")
    assert "sha256" in repr(part) and "iVBOR" not in repr(part)


def test_jpeg_gif_webp_are_recognised_by_their_bytes() -> None:
    """JPEG and WebP stay as they are; a GIF is sent as a PNG of its first frame."""
    assert as_image(jpeg_bytes(30, 20)).mime == "image/jpeg"
    assert (as_image(jpeg_bytes(30, 20)).width, as_image(jpeg_bytes(30, 20)).height) == (30, 20)
    buf = io.BytesIO()
    PIL.new("RGB", (33, 17)).save(buf, format="WEBP", lossless=True)
    webp = as_image(buf.getvalue())
    assert (webp.mime, webp.width, webp.height) == ("image/webp", 33, 17)
    buf = io.BytesIO()
    PIL.new("P", (12, 9)).save(buf, format="GIF")
    gif = as_image(buf.getvalue())
    assert (gif.mime, gif.width, gif.height) == ("image/png", 12, 9)
    assert "first GIF frame" in gif.source


def test_matplotlib_figure_and_axes() -> None:
    """A matplotlib figure renders to PNG at its own size (6.4 × 4.8 in at 100 dpi)."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 3, 2])
    try:
        part = as_image(fig)
        assert (part.mime, part.width, part.height) == ("image/png", 640, 480)
        assert as_image(ax).sha256 == part.sha256
    finally:
        plt.close(fig)


def test_pil_and_ipython_images(workdir: Path) -> None:
    """A PIL image is saved as PNG; an IPython Image gives its embedded bytes or its file."""
    from IPython.display import Image

    part = as_image(PIL.new("RGBA", (20, 10), (1, 2, 3, 4)))
    assert (part.mime, part.width, part.height) == ("image/png", 20, 10)
    data = jpeg_bytes(8, 8)
    assert as_image(Image(data=data)).data == data
    (workdir / "c.png").write_bytes(png_bytes(5, 6))
    assert as_image(Image(filename="c.png")).width == 5
    with pytest.raises(errors.ImageError, match="URL; nothing is downloaded"):
        as_image(Image(url="https://example.com/x.png"))


def test_a_path_inside_the_working_folder(workdir: Path) -> None:
    (workdir / "charts").mkdir()
    (workdir / "charts" / "a.png").write_bytes(png_bytes(10, 10))
    assert as_image(Path("charts/a.png")).width == 10


@pytest.mark.skipif(
    not any(os.path.exists(p) for p in ("/usr/bin/chromium", "/usr/bin/google-chrome")),
    reason="kaleido needs a Chrome or Chromium to render plotly figures",
)
def test_plotly_figure_renders_through_kaleido_and_chromium() -> None:
    """A real plotly figure, rendered headless by kaleido (Debian's chromium here)."""
    pytest.importorskip("kaleido")
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=["a", "b"], y=[3, 4]))
    fig.update_layout(width=300, height=200)
    part = as_image(fig)
    assert (part.mime, part.width, part.height) == ("image/png", 300, 200)


def test_plotly_without_kaleido_says_how(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plotly figure whose to_image cannot run is refused with the way to make it work."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=[1, 2], y=[3, 4]))

    def no_kaleido(*args: object, **kwargs: object) -> bytes:
        raise ValueError("Image export using the 'kaleido' engine requires the kaleido package")

    monkeypatch.setattr(type(fig), "to_image", no_kaleido)
    with pytest.raises(errors.ImageError) as info:
        as_image(fig)
    text = str(info.value)
    assert "kaleido" in text and "write_image" in text and "Chromium" in text


def test_a_plain_string_is_text_not_a_file(workdir: Path) -> None:
    """A str is never opened as a file (a prompt variable must not read the disk)."""
    (workdir / "a.png").write_bytes(png_bytes())
    assert not images.is_image_like("a.png")
    with pytest.raises(errors.ImageError, match="string is text"):
        as_image("a.png")


# --------------------------------------------------------------------------- attacks

SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><text>SECRET-CONTENT</text></svg>'
HTML = b"<!DOCTYPE html><html><body>SECRET-CONTENT<script>alert(1)</script></body></html>"


@pytest.mark.parametrize(
    ("data", "looks"),
    [
        (SVG, "SVG"),
        (HTML, "HTML"),
        (b"SECRET-CONTENT api_key=sk-abc\n", "text"),
        (b"%PDF-1.7 SECRET-CONTENT", "PDF"),
        (b"", "empty"),
        (os.urandom(64), "binary"),
    ],
)
def test_files_pretending_to_be_png_are_refused(workdir: Path, data: bytes, looks: str) -> None:
    """A file called .png whose bytes are SVG, HTML, text, PDF, nothing or noise: refused,
    the message says what it looks like and quotes none of it."""
    (workdir / "chart.png").write_bytes(data)
    with pytest.raises(errors.ImageError) as info:
        as_image(Path("chart.png"))
    message = str(info.value)
    assert looks.lower() in message.lower()
    assert "SECRET" not in message and "sk-abc" not in message and "script" not in message


def test_a_truncated_png_is_refused(workdir: Path) -> None:
    """Cut in the middle of its pixel data: the full decode catches it."""
    data = png_bytes(200, 200, (1, 2, 3))
    noisy = io.BytesIO()
    PIL.frombytes("RGB", (200, 200), os.urandom(200 * 200 * 3)).save(noisy, format="PNG")
    for cut in (noisy.getvalue()[: len(noisy.getvalue()) // 2], data[:30], data[:10]):
        with pytest.raises(errors.ImageError, match="truncated or corrupt"):
            as_image(cut)


def test_a_truncated_jpeg_is_refused() -> None:
    data = jpeg_bytes(120, 80)
    with pytest.raises(errors.ImageError, match="truncated or corrupt"):
        as_image(data[:40])


def test_a_decompression_bomb_is_refused_before_decoding() -> None:
    """A 100 kB PNG claiming 60,000 × 60,000 pixels: refused from its header."""
    bomb = bomb_png(60_000, 60_000)
    assert len(bomb) < 200_000
    with pytest.raises(errors.ImageError, match="decompression bomb"):
        as_image(bomb)
    with pytest.raises(errors.ImageError, match="megapixel"):
        as_image(bomb_png(10_000, 6_000))  # 60 MP, each side under the side limit


def test_a_zero_sized_image_is_refused() -> None:
    with pytest.raises(errors.ImageError, match="0×10"):
        as_image(bomb_png(0, 10))


def test_a_path_outside_the_working_folder_is_refused(workdir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(png_bytes())
    for path in (outside, Path("../elsewhere.png")):
        with pytest.raises(errors.ImageError, match="outside the working folder"):
            as_image(path)


def test_a_symlink_out_of_the_working_folder_is_refused(workdir: Path, tmp_path: Path) -> None:
    """A link inside the folder pointing out of it is judged by its target."""
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes())
    (workdir / "innocent.png").symlink_to(outside)
    with pytest.raises(errors.ImageError, match="symlink that points out of it"):
        as_image(Path("innocent.png"))
    # a link to a file inside the folder is fine
    (workdir / "real.png").write_bytes(png_bytes(7, 7))
    (workdir / "alias.png").symlink_to(workdir / "real.png")
    assert as_image(Path("alias.png")).width == 7


def test_the_key_store_is_never_read(
    workdir: Path, private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The toolkit's home (key store, ledger, cache) is refused even when it sits inside the
    working folder, directly or through a symlink; its bytes are never read into a message."""
    from cencori_nb import keys

    home = workdir / "home"
    monkeypatch.setenv("CENCORI_NB_HOME", str(home))
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "a passphrase for this test")
    keys.set("openai", "sk-test-" + "k" * 40)
    stores = [p for p in home.rglob("*") if p.is_file()]
    assert stores
    (workdir / "pic.png").symlink_to(stores[0])
    for path in (stores[0], Path("pic.png"), Path("home") / stores[0].name):
        with pytest.raises(errors.ImageError, match="cencori-nb home") as info:
            as_image(path)
        assert "kkkk" not in str(info.value)


def test_a_fifo_or_a_folder_is_not_read(workdir: Path) -> None:
    """A named pipe would block a read forever; a folder is no image."""
    os.mkfifo(workdir / "pipe.png")
    with pytest.raises(errors.ImageError, match="not a regular file"):
        as_image(Path("pipe.png"))
    (workdir / "dir.png").mkdir()
    with pytest.raises(errors.ImageError):
        as_image(Path("dir.png"))


def test_missing_files_and_loops(workdir: Path) -> None:
    with pytest.raises(errors.ImageError, match="No image file"):
        as_image(Path("nope.png"))
    (workdir / "a").symlink_to(workdir / "b")
    (workdir / "b").symlink_to(workdir / "a")
    with pytest.raises(errors.ImageError):
        as_image(Path("a"))


def test_a_huge_file_is_refused_before_it_is_read(workdir: Path) -> None:
    """Above 20 MB (sparse, so the test writes nothing): refused from its size."""
    with open(workdir / "big.png", "wb") as fh:
        fh.write(png_bytes())
        fh.truncate(images.MAX_FILE_BYTES + 10)
    with pytest.raises(errors.ImageError, match="above the 20.0 MB"):
        as_image(Path("big.png"))
    with pytest.raises(errors.ImageError, match="above the 20.0 MB"):
        as_image(png_bytes() + b"\0" * images.MAX_FILE_BYTES)


def test_other_objects_are_refused_with_the_list_of_what_works() -> None:
    with pytest.raises(errors.ImageError, match="matplotlib or plotly figure"):
        as_image(3.5)


def test_every_refusal_is_an_image_error_and_a_cencori_error() -> None:
    assert issubclass(errors.ImageError, errors.CencoriError)
    assert issubclass(errors.ModelTakesNoImagesError, errors.ImageError)


# --------------------------------------------------------------------------- per provider


def test_sniff_never_trusts_a_name() -> None:
    assert sniff(png_bytes()) == "image/png"
    assert sniff(jpeg_bytes()) == "image/jpeg"
    assert sniff(SVG) is None


def test_fit_scales_down_to_each_providers_bound() -> None:
    """3000×1000: OpenAI 2048 wide, Anthropic 1568, Gemini unchanged (≤ 3072)."""
    part = as_image(png_bytes(3000, 1000))
    assert (fit_for(part, "openai").width, fit_for(part, "openai").height) == (2048, 683)
    assert (fit_for(part, "anthropic").width, fit_for(part, "anthropic").height) == (1568, 523)
    assert fit_for(part, "google") is part
    assert fit_for(part, "mistral").width == 2048  # the compatible family follows OpenAI
    small = as_image(png_bytes(100, 100))
    assert fit_for(small, "anthropic") is small
    jpeg = as_image(jpeg_bytes(4000, 100))
    assert fit_for(jpeg, "anthropic").mime == "image/jpeg"


def test_more_bytes_than_one_gemini_request_takes_is_refused_before_sending() -> None:
    """Random pixels do not compress: two 2400×2400 noise PNGs (~17 MB each) fit Gemini's
    3072-px bound one by one, but not its 20 MB of inline data per request."""
    from cencori_nb.images import check_request
    from cencori_nb.types import ChatRequest

    def noise() -> bytes:
        buf = io.BytesIO()
        PIL.frombytes("RGB", (2400, 2400), os.urandom(2400 * 2400 * 3)).save(buf, format="PNG")
        return buf.getvalue()

    request = ChatRequest.from_prompt(["compare", noise(), noise()])
    with pytest.raises(errors.ImageError, match="above the 20.0 MB google takes in one request"):
        check_request(request, provider="google", model="gemini-2.5-flash", route="byok")
    with pytest.raises(errors.ImageError, match="one image per request"):
        check_request(request, provider="google", model="gemini-2.5-flash", route="managed")


@pytest.mark.parametrize(
    ("size", "provider", "model", "tokens", "basis"),
    [
        ((1024, 1024), "openai", "gpt-4o", 765, "OpenAI docs: 1024² high detail = 4 tiles"),
        ((2048, 4096), "openai", "gpt-4o", 1105, "OpenAI docs: 2048×4096 → 768×1536, 6 tiles"),
        ((1024, 1024), "openai", "gpt-4o-mini", 2833 + 5667 * 4, "gpt-4o-mini base/tile"),
        ((1024, 1024), "openai", "gpt-4.1-mini", 1659, "1024 patches × 1.62, rounded up"),
        ((1800, 2400), "openai", "gpt-4.1-mini", 2353, "OpenAI docs: 1452 patches × 1.62"),
        ((1000, 1000), "anthropic", "claude-sonnet-4-5", 1334, "1000×1000/750"),
        ((3000, 1000), "anthropic", "claude-sonnet-4-5", 1094, "scaled to 1568×523, /750"),
        ((300, 300), "google", "gemini-2.5-flash", 258, "both sides ≤ 384"),
        ((1000, 500), "google", "gemini-2.5-flash", 516, "2 tiles of 768"),
    ],
)
def test_image_tokens_follow_each_providers_documented_formula(
    size: tuple[int, int], provider: str, model: str, tokens: int, basis: str
) -> None:
    assert image_tokens(*size, provider, model) == tokens, basis


def test_estimates_against_real_recordings_of_one_image() -> None:
    """pydantic-ai recorded the same 3008×2000 PNG (plus one short question) sent to each
    provider (tests/corpus/*/…image_input.json). OpenAI's tile count and Anthropic's
    w×h/750 after its 1.15-megapixel scaling land on the billed counts; Gemini's documented
    768-px tiles give 12 × 258 where it billed 13 × 258 (3354): an estimate 8 % low, which is
    why the bill always uses the provider's usage."""
    import json

    corpus = Path(__file__).parent / "corpus"

    def usage(name: str) -> dict:
        return json.loads((corpus / name).read_text())["body"][
            "usage" if "gemini" not in name else "usageMetadata"
        ]

    openai = usage("openai/chat_gpt4o_image_input.json")["prompt_tokens"]
    est = image_tokens(3008, 2000, "openai", "gpt-4o")
    assert est == 1105 and 0 < openai - est < 60  # the rest: the question and message framing
    anthropic = usage("anthropic/messages_sonnet35_image_input.json")["input_tokens"]
    est = image_tokens(3008, 2000, "anthropic", "claude-3-5-sonnet-latest")
    assert abs(anthropic - est) / anthropic < 0.01
    details = json.loads((corpus / "google/generate_20flash_image_input.json").read_text())
    billed = next(
        d["tokenCount"]
        for d in details["body"]["usageMetadata"]["promptTokensDetails"]
        if d["modality"] == "IMAGE"
    )
    est = image_tokens(3008, 2000, "google", "gemini-2.0-flash")
    assert (billed, est) == (3354, 3096) and abs(billed - est) / billed < 0.10


def test_the_part_displays_as_the_image() -> None:
    bundle = as_image(png_bytes(4, 4))._repr_mimebundle_()
    assert bundle["image/png"].startswith("iVBOR")
    assert isinstance(as_image(png_bytes(4, 4)), ImagePart)


# --------------------------------------------------------------------------- through chat

GROQ_KEY = "gsk_images_test_" + "G" * 24 + "a1b2"
OPENAI_KEY = "sk-test-images-" + "O" * 24 + "c3d4"
CENCORI_KEY = "csk_live_images_" + "C" * 24 + "e5f6"


def _rows() -> list:
    from cencori_nb.ledger import default_ledger

    led = default_ledger()
    led.flush()
    return led.rows()


def test_a_text_only_model_is_refused_before_anything_is_sent(sandbox_env: object) -> None:
    """Groq's llama-3.3 reads only text: refused with the way out, no request, no row."""
    import cencori_nb
    from cencori_nb import keys

    keys.set("groq", GROQ_KEY)
    before = sandbox_env.stats["requests"]  # type: ignore[attr-defined]
    with pytest.raises(errors.ModelTakesNoImagesError) as info:
        cencori_nb.chat(["What is this?", png_bytes()], model="llama-3.3-70b-versatile")
    assert "reads only text" in str(info.value) and "route='managed'" in str(info.value)
    assert sandbox_env.stats["requests"] == before  # type: ignore[attr-defined]
    assert _rows() == []


def test_an_unknown_model_is_refused_too(sandbox_env: object) -> None:
    """Fail closed: a model the catalogue does not know is not sent an image."""
    import cencori_nb
    from cencori_nb import keys

    keys.set("openai", OPENAI_KEY)
    with pytest.raises(errors.ModelTakesNoImagesError, match="not known to read images"):
        with pytest.warns(UserWarning, match="not in the price catalogue"):
            cencori_nb.chat(["What is this?", png_bytes()], model="openai/my-finetune-x")


def test_image_tokens_are_estimated_recorded_and_shown(sandbox_env: object) -> None:
    """gpt-4o BYOK: the footer shows the images' share, the ledger row keeps it, and a
    different image with the same words is a different cache entry."""
    import cencori_nb
    from cencori_nb import keys

    keys.set("openai", OPENAI_KEY)
    first = cencori_nb.chat(["Describe", png_bytes(1024, 1024)], model="gpt-4o")
    assert first.image_tokens == 765  # 4 tiles: 85 + 4 × 170
    assert first.input_tokens > 765
    assert "(765 image)" in first.footer()
    (row,) = _rows()
    assert row.image_tokens == 765
    again = cencori_nb.chat(["Describe", png_bytes(1024, 1024)], model="gpt-4o")
    assert again.cached and again.text == first.text
    other = cencori_nb.chat(["Describe", png_bytes(1024, 1024, (0, 0, 0))], model="gpt-4o")
    assert not other.cached


def test_cencori_upgrades_a_text_model_and_the_footer_says_so(sandbox_env: object) -> None:
    """Managed route: the magic's refusal does not apply; the gateway answers with a vision
    model and X-Model-Upgraded / X-Model-Original, shown in the footer and stored."""
    import cencori_nb
    from cencori_nb import keys

    keys.set_cencori_key(CENCORI_KEY)
    c = cencori_nb.chat(["What is this?", png_bytes()], model="gpt-3.5-turbo", cache=False)
    assert c.route == "managed" and c.model_original == "gpt-3.5-turbo"
    assert "upgraded from gpt-3.5-turbo" in c.footer()
    (row,) = _rows()
    assert row.model_original == "gpt-3.5-turbo" and row.image_tokens > 0


def test_two_images_through_cencori_are_refused(sandbox_env: object) -> None:
    """The gateway keeps only the last image: refused rather than silently dropped."""
    import cencori_nb
    from cencori_nb import keys

    keys.set_cencori_key(CENCORI_KEY)
    with pytest.raises(errors.ImageError, match="one image per request; this one has 2"):
        cencori_nb.chat(["a", png_bytes(), "b", png_bytes(8, 8)], model="gpt-4o")
    assert _rows() == []


def test_images_only_in_user_messages(sandbox_env: object) -> None:
    import cencori_nb
    from cencori_nb import keys

    keys.set("openai", OPENAI_KEY)
    with pytest.raises(errors.ImageError, match="only be sent in user messages"):
        cencori_nb.chat(
            [
                {"role": "system", "content": ["look", png_bytes()]},
                {"role": "user", "content": "hi"},
            ],
            model="gpt-4o",
        )


def test_a_streamed_image_through_cencori_takes_the_vision_path(sandbox_env: object) -> None:
    """Streamed, the gateway's vision path answers in OpenAI chunks without usage: the text
    arrives, the upgrade is shown, and the tokens are estimated (and say so)."""
    import cencori_nb
    from cencori_nb import keys

    keys.set_cencori_key(CENCORI_KEY)
    data = png_bytes(64, 48)
    with cencori_nb.stream(["What is this?", data], model="gpt-3.5-turbo") as s:
        text = "".join(s)
    c = s.completion
    assert c is not None and text == c.text and "Image 1: image/png 64x48" in text
    assert c.model_original == "gpt-3.5-turbo" and c.estimated
    assert c.image_tokens == image_tokens(64, 48, "openai", "gpt-4o-mini") == 2833 + 5667
    assert "(estimated)" in c.footer() and "upgraded from gpt-3.5-turbo" in c.footer()


def test_an_image_carrying_a_stored_key_in_its_metadata_is_refused(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PNG text chunk holding a stored key would leave base64-encoded inside the request,
    where no prompt check looks: refused, the key named nowhere."""
    from PIL.PngImagePlugin import PngInfo

    from cencori_nb import keys

    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "a passphrase for this test")
    key = "sk-proj-imagemeta" + "Z9" * 20
    keys.set("openai", key)
    info = PngInfo()
    info.add_text("Comment", f"exported with OPENAI_API_KEY={key}")
    buf = io.BytesIO()
    PIL.new("RGB", (20, 20)).save(buf, format="PNG", pnginfo=info)
    (workdir / "meta.png").write_bytes(buf.getvalue())
    for value in (Path("meta.png"), buf.getvalue()):
        with pytest.raises(errors.ImageError, match="holds one of your stored API keys") as err:
            as_image(value)
        assert key not in str(err.value) and "Z9Z9" not in repr(err.value.args)
    plain = io.BytesIO()
    PIL.new("RGB", (20, 20)).save(plain, format="PNG")
    assert as_image(plain.getvalue()).width == 20


def test_a_key_in_an_image_is_caught_after_routing_too(
    sandbox_env: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a fresh process the store is opened by routing, after the image was read: the
    check runs again then, and nothing is sent."""
    from PIL.PngImagePlugin import PngInfo

    import cencori_nb
    from cencori_nb import keys, redact, state

    keys.set("openai", OPENAI_KEY)
    info = PngInfo()
    info.add_text("Comment", OPENAI_KEY)
    buf = io.BytesIO()
    PIL.new("RGB", (20, 20)).save(buf, format="PNG", pnginfo=info)
    state.reset("redact.secrets")  # as a new kernel: no key registered until routing
    assert not redact.registered_secrets()
    part = as_image(buf.getvalue())  # not known yet: accepted here
    before = sandbox_env.stats["requests"]  # type: ignore[attr-defined]
    with pytest.raises(errors.ImageError, match="stored API keys"):
        cencori_nb.chat(["Describe", part], model="gpt-4o")
    assert sandbox_env.stats["requests"] == before  # type: ignore[attr-defined]
    assert _rows() == []
